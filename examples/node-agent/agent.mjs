// An agentbus agent in Node.js, written from docs/protocol.md and the JSON Schema
// libs/agentbus/schema/messages.json alone. It serves capability `upper`: the input
// is a JSON string, the output that string upper-cased; the input {"fail": "why"}
// gives a failed result (ErrorInfo{error_type: "ValueError", message: "why"}).
//
//   AGENTBUS_NATS_URL=nats://127.0.0.1:4222 AGENTBUS_PREFIX=agentbus node agent.mjs
import { AckPolicy, connect, JSONCodec, nanos } from "nats";
import { createHash, randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";

// -- protocol.md "Writing an agent" 1. Identity ----------------------------------
const env = process.env;
const PREFIX = env.AGENTBUS_PREFIX || "agentbus"; // "Conventions", Prefix: <p>
const P = PREFIX.toUpperCase(); // <P>
const AGENT_ID = env.AGENTBUS_AGENT_ID || `node-upper-${randomBytes(4).toString("hex")}`;
const DEPLOYMENT = env.AGENTBUS_AGENT_DEPLOYMENT || null;
const REPLICA = env.AGENTBUS_AGENT_REPLICA ? Number(env.AGENTBUS_AGENT_REPLICA) : null;
const MAX_CONCURRENCY = Math.max(1, Number(env.AGENTBUS_AGENT_MAX_CONCURRENCY) || 1);
const LEASE_MS = 1000 * Number(env.AGENTBUS_AGENT_LEASE_S || 30); // "Environment defaults"
const INLINE_LIMIT = 64 * 1024; // "Conventions", Large values: over 64 KiB -> Object Store
const STOP_GRACE_MS = 1000 * Number(env.AGENTBUS_AGENT_STOP_GRACE_S || 10); // "Stopping"
const VERSION = "0.1.0";

class TaskError extends Error {
  constructor(errorType, message) {
    super(message);
    this.errorType = errorType;
  }
}

// The work, by capability. A thrown error becomes a failed TaskResult.
const HANDLERS = {
  upper(input) {
    if (typeof input === "string") return input.toUpperCase();
    if (input && typeof input === "object" && "fail" in input) {
      throw new TaskError("ValueError", String(input.fail));
    }
    throw new TaskError("TypeError", `upper expects a JSON string, got ${JSON.stringify(input)}`);
  },
};
const wanted = (env.AGENTBUS_AGENT_CAPABILITIES || "upper").split(",").map((c) => c.trim());
const CAPABILITIES = wanted.filter((c) => c && c in HANDLERS);
for (const c of wanted.filter((c) => c && !(c in HANDLERS))) log(`no handler for '${c}'`);
if (CAPABILITIES.length === 0) throw new Error("no capability to serve");

const jc = JSONCodec();
const now = () => new Date().toISOString(); // "Conventions": RFC 3339, UTC
const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const oneLine = (s) => String(s).split("\n")[0].slice(0, 500);
function log(line) {
  process.stderr.write(`${now()} agent ${AGENT_ID}: ${line}\n`);
}

const nc = await connect({ servers: env.AGENTBUS_NATS_URL || "nats://127.0.0.1:4222", name: AGENT_ID });
const js = nc.jetstream();
const jsm = await nc.jetstreamManager();
const inFlight = new Map(); // task_id -> JsMsg being handled
let stopping = false;
const startedAt = now();

// Wait for a bus object the services create (the doc does not say who creates what).
async function until(what, fn) {
  for (let i = 0; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (i === 30) throw new Error(`${what}: ${err.message}`);
      await sleep(1000);
    }
  }
}

// -- 2. Heartbeat: AgentInfo at key <agent_id> in KV <p>_agents every 2 s -------------
const agents = await until(`KV ${PREFIX}_agents`, () =>
  js.views.kv(`${PREFIX}_agents`, { bindOnly: true }),
);
function agentInfo() {
  const busy = inFlight.size >= MAX_CONCURRENCY;
  return {
    type: "AgentInfo",
    agent_id: AGENT_ID,
    name: "node-upper", // "AgentInfo": the agent program's name, the same for every replica
    capabilities: CAPABILITIES,
    started_at: startedAt,
    heartbeat_at: now(),
    hostname: hostname(),
    pid: process.pid,
    node_id: env.AGENTBUS_AGENT_NODE_ID || null,
    deployment: DEPLOYMENT,
    replica: REPLICA,
    max_concurrency: MAX_CONCURRENCY,
    in_flight: inFlight.size,
    status: stopping ? "stopping" : busy ? "busy" : "ready",
    version: VERSION,
  };
}
const beat = () => agents.put(AGENT_ID, jc.encode(agentInfo())).catch((e) => log(`heartbeat: ${e}`));
await beat();
const heartbeat = setInterval(beat, 2000);

// -- 3. Bind: create-or-update the durable pull consumer cap-<capability> -------------
const consumers = {};
for (const cap of CAPABILITIES) {
  const config = {
    durable_name: `cap-${cap}`,
    filter_subject: `${PREFIX}.tasks.${cap}`,
    ack_policy: AckPolicy.Explicit,
    ack_wait: nanos(LEASE_MS),
    max_ack_pending: -1, // "Consumer config": exactly these fields
  };
  await until(`stream ${P}_TASKS`, () => jsm.consumers.add(`${P}_TASKS`, config, "")); // "" = create or update
  consumers[cap] = await js.consumers.get(`${P}_TASKS`, `cap-${cap}`);
}

// -- "Conventions", Large values: inputs/outputs over 64 KiB live in <p>_blobs --------
async function resolveInput(task) {
  const ref = task.input_ref;
  if (!ref) return task.input ?? null;
  const data = await (await js.views.os(ref.bucket)).getBlob(ref.name);
  if (data === null) throw new TaskError("LookupError", `no object ${ref.bucket}/${ref.name}`);
  if (sha256(data) !== ref.sha256) throw new TaskError("ValueError", `SHA-256 mismatch on ${ref.name}`);
  return JSON.parse(new TextDecoder().decode(data));
}
async function packOutput(taskId, output) {
  const bytes = new TextEncoder().encode(JSON.stringify(output ?? null));
  if (bytes.length <= INLINE_LIMIT) return { output: output ?? null };
  const bucket = `${PREFIX}_blobs`;
  const name = `tasks/${taskId}/output`;
  await (await js.views.os(bucket)).putBlob({ name }, bytes);
  const ref = { type: "BlobRef", bucket, name, size_bytes: bytes.length, sha256: sha256(bytes) };
  return { output: null, output_ref: ref };
}

// -- 4. Handle one message ------------------------------------------------------------
async function handle(cap, msg) {
  let task;
  try { // 4.1 decode as Task; a poison message is termed and reported, never retried
    task = jc.decode(msg.data);
    if (task?.type !== "Task" || typeof task.task_id !== "string") throw new Error("not a Task");
  } catch (err) {
    msg.term();
    const reason = `undecodable task from agent ${AGENT_ID}: ${oneLine(err.message)}`;
    const event = { type: "ErrorEvent", service: "agent", subject: msg.subject, reason, at: now() };
    await js.publish(`${PREFIX}.events.error.agent`, jc.encode(event));
    return log(reason);
  }
  const { task_id } = task;
  const attempt = msg.info.redeliveryCount; // 4.2 attempt = num_delivered
  const results = `${PREFIX}.results.${cap}`;
  const started_at = now();
  inFlight.set(task_id, msg);
  try {
    // 4.3 TaskStarted, JetStream publish (awaiting the ack)
    await js.publish(results, jc.encode({ type: "TaskStarted", task_id, agent_id: AGENT_ID, attempt, started_at }));
    const renew = setInterval(() => msg.working(), LEASE_MS / 3); // 4.4 +WPI every lease/3
    let outcome;
    try { // 4.5 resolve the input and run the work
      outcome = { status: "succeeded", ...(await packOutput(task_id, await HANDLERS[cap](await resolveInput(task)))) };
    } catch (err) {
      const error_type = err.errorType || err.name || "Error";
      outcome = { status: "failed", error: { type: "ErrorInfo", error_type, message: oneLine(err.message), retryable: false } };
    } finally {
      clearInterval(renew);
    }
    // 4.6 TaskResult; 4.7 ack only once its publish is acknowledged
    const result = { type: "TaskResult", task_id, agent_id: AGENT_ID, attempt, started_at, finished_at: now(), ...outcome };
    await js.publish(results, jc.encode(result));
    msg.ack();
    log(`task ${task_id} attempt ${attempt}: ${outcome.status}`);
  } finally {
    inFlight.delete(task_id);
  }
}

// Pull: one loop per free slot, so we never hold more messages than slots (step 3).
async function worker() {
  while (!stopping) {
    for (const cap of CAPABILITIES) {
      const msg = await consumers[cap].next({ expires: 1000 }).catch(() => null);
      if (!msg) continue;
      if (stopping) { msg.nak(); break; } // arrived after SIGTERM: let another agent take it
      await handle(cap, msg).catch((err) => {
        log(`handling failed, task left for redelivery: ${err.message}`);
        msg.nak();
      });
    }
  }
}
const workers = Array.from({ length: MAX_CONCURRENCY }, worker);
log(`ready: capabilities ${CAPABILITIES.join(",")} prefix ${PREFIX}`);

// -- 5. Stop: stop pulling, finish or nak in-flight tasks, delete the key, exit 0 ----
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: stopping`);
  await beat(); // status "stopping" until the key is deleted
  await Promise.race([Promise.all(workers), sleep(STOP_GRACE_MS)]);
  for (const msg of inFlight.values()) msg.nak(); // could not finish within the grace
  clearInterval(heartbeat);
  await agents.delete(AGENT_ID).catch((e) => log(`delete registry key: ${e}`));
  await nc.drain();
  process.exit(0);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
