// An agentbus agent in Node.js, written from docs/protocol.md and the JSON Schema
// libs/agentbus/schema/messages.json alone. It serves capability `upper`: the input
// is a JSON string, the output that string upper-cased; the input {"fail": "why"}
// fails fatally (ErrorInfo{error_type: "ValueError", message: "why"}); the input
// {"flaky": n, "text": "..."} fails retryably on its first n attempts, then succeeds.
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

// "Retries": an error is retryable unless it says otherwise; bad input is fatal.
class TaskError extends Error {
  constructor(errorType, message, retryable = false) {
    super(message);
    this.errorType = errorType;
    this.retryable = retryable;
  }
}

// The work, by capability. A thrown error becomes a failed (or dead) TaskResult.
const HANDLERS = {
  upper(input, { attempt }) {
    if (typeof input === "string") return input.toUpperCase();
    if (input && typeof input === "object" && "fail" in input) {
      throw new TaskError("ValueError", String(input.fail));
    }
    if (input && typeof input === "object" && "flaky" in input) {
      if (attempt <= input.flaky) throw new TaskError("FlakyError", `attempt ${attempt} failed`, true);
      return String(input.text).toUpperCase();
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
    max_deliver: 101, // the safety backstop above every task's max_attempts
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

// -- "Retries, deadlines and dead letters": what a failed attempt leads to -------------
function backoffS(policy, n) { // retry n >= 1; "equal jitter"
  const p = { initial_s: 1, factor: 2, max_s: 60, jitter: 0.5, ...(policy || {}) };
  const d = Math.min(p.max_s, p.initial_s * p.factor ** (n - 1));
  return d * (1 - p.jitter) + Math.random() * d * p.jitter;
}
function errorInfo(err, retryable) {
  const error_type = err.errorType || err.name || "Error";
  return { type: "ErrorInfo", error_type, message: oneLine(err.message), retryable };
}
function decide(task, attempt, err) { // -> {status, error, retry_in_s?}
  const retryable = err.retryable ?? !(err instanceof SyntaxError); // other errors: retry
  const error = errorInfo(err, retryable);
  if (!retryable) return { status: "failed", error };
  if (attempt >= (task.max_attempts ?? 3)) return { status: "dead", error };
  const delay = backoffS(task.backoff, attempt);
  if (task.deadline && Date.now() + 1000 * delay >= Date.parse(task.deadline)) {
    return { status: "expired", error };
  }
  return { status: "failed", error, retry_in_s: delay };
}
function preflight(task, attempt) { // ends the task before it starts, or null
  if (task.deadline && Date.parse(task.deadline) <= Date.now()) {
    const message = `deadline ${task.deadline} passed before attempt ${attempt}`;
    return { status: "expired", error: errorInfo(new TaskError("DeadlineExceeded", message), false) };
  }
  if (attempt > (task.max_attempts ?? 3)) {
    const message = `delivery ${attempt} exceeds max_attempts ${task.max_attempts ?? 3}`;
    return { status: "dead", error: errorInfo(new TaskError("AttemptsExhausted", message), true) };
  }
  return null;
}
function withTimeout(promise, timeoutS) {
  if (!timeoutS) return promise;
  let timer;
  const timeout = new Promise((_, reject) => {
    const message = `handler cancelled after the task's timeout of ${timeoutS} s`;
    timer = setTimeout(() => reject(new TaskError("TaskTimeoutError", message, true)), 1000 * timeoutS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
function settle(msg, outcome) { // ack a success, nak a retry with its delay, term the rest
  if (outcome.status === "succeeded") msg.ack();
  else if (outcome.retry_in_s !== undefined) msg.nak(Math.round(1000 * outcome.retry_in_s));
  else msg.term();
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
  const early = preflight(task, attempt); // past the deadline, or out of attempts
  if (early) {
    const result = { type: "TaskResult", task_id, agent_id: AGENT_ID, attempt, started_at, finished_at: now(), ...early };
    await js.publish(results, jc.encode(result));
    msg.term();
    return log(`task ${task_id} attempt ${attempt}: ${early.status} before start`);
  }
  inFlight.set(task_id, msg);
  try {
    // 4.3 TaskStarted, JetStream publish (awaiting the ack)
    await js.publish(results, jc.encode({ type: "TaskStarted", task_id, agent_id: AGENT_ID, attempt, started_at }));
    const renew = setInterval(() => msg.working(), LEASE_MS / 3); // 4.4 +WPI every lease/3
    let outcome;
    try { // 4.5 resolve the input and run the work (under timeout_s)
      const input = await resolveInput(task);
      const output = await withTimeout(Promise.resolve().then(() => HANDLERS[cap](input, { attempt })), task.timeout_s);
      outcome = { status: "succeeded", ...(await packOutput(task_id, output)) };
    } catch (err) {
      outcome = decide(task, attempt, err);
    } finally {
      clearInterval(renew);
    }
    // 4.6 TaskResult; 4.7 settle the message only once its publish is acknowledged
    const result = { type: "TaskResult", task_id, agent_id: AGENT_ID, attempt, started_at, finished_at: now(), ...outcome };
    await js.publish(results, jc.encode(result));
    settle(msg, outcome);
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
