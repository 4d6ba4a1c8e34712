// An agentbus agent in Node.js, written from docs/protocol.md and the JSON Schema
// libs/agentbus/schema/messages.json alone. It serves capability `upper`: the input
// is a JSON string, the output that string upper-cased; the input {"fail": "why"}
// fails fatally (ErrorInfo{error_type: "ValueError", message: "why"}); the input
// {"flaky": n, "text": "..."} fails retryably on its first n attempts, then succeeds.
// Events between agents: after each `upper` task it publishes `text.uppercased` (key:
// the text), and its shared subscription `notes` (pattern `notes.>`) answers each
// note `{"text": "..."}` with an event `text.noted` carrying the text upper-cased.
//
//   AGENTBUS_NATS_URL=nats://127.0.0.1:4222 AGENTBUS_PREFIX=agentbus node agent.mjs
//
// With authentication on, give it credentials minted for its agent id and deployment
// (a supervisor does; by hand: `agentbus auth agent <id> --deployment <name>`) in
// AGENTBUS_CREDS_FILE, with AGENTBUS_AGENT_ID and AGENTBUS_AGENT_DEPLOYMENT to match.
import { AckPolicy, connect, credsAuthenticator, DeliverPolicy, headers, JSONCodec, nanos } from "nats";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
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
const NAME = "node-upper"; // "AgentInfo": the agent program's name, the same for every replica
const OWNER = DEPLOYMENT || NAME; // "Events between agents": shared consumers' owner
const EVENTS_PULL_MS = 1000 * Number(env.AGENTBUS_AGENT_EVENTS_PULL_S || 10);
const CREDS_FILE = env.AGENTBUS_CREDS_FILE || null; // "Permissions": minted for this agent

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
    if (typeof input === "string") return input.toUpperCase(); // then `text.uppercased`
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

// -- "Permissions": credentials, the reply prefix, and consumers we may only bind -------
function fatal(line) {
  log(line);
  process.exit(1);
}
// The reply prefix the creds' user may subscribe to (`_INBOX_<kind>_<name>`, the first
// `_INBOX_*.>` its JWT allows), as the Python Bus reads it; null: nats.js's default.
function credsInboxPrefix(text) {
  const jwt = /-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------/.exec(text)?.[1];
  let claims;
  try {
    claims = JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
  } catch {
    fatal(`${CREDS_FILE} is not a NATS creds file (no user JWT)`);
  }
  const reply = (claims.nats?.sub?.allow ?? []).find((s) => s.startsWith("_INBOX_") && s.endsWith(".>"));
  return reply ? reply.slice(0, -2) : null;
}
function connectOptions() {
  const options = { servers: env.AGENTBUS_NATS_URL || "nats://127.0.0.1:4222", name: AGENT_ID };
  if (!CREDS_FILE) return options;
  let text;
  try {
    text = readFileSync(CREDS_FILE, "utf8");
  } catch (err) {
    fatal(`cannot read credentials AGENTBUS_CREDS_FILE=${CREDS_FILE}: ${err.message}`);
  }
  const inboxPrefix = credsInboxPrefix(text);
  const mine = `_INBOX_agent_${AGENT_ID}`;
  if (inboxPrefix?.startsWith("_INBOX_agent_") && inboxPrefix !== mine) {
    fatal(`${CREDS_FILE} was minted for agent ${inboxPrefix.slice(13)}, not AGENTBUS_AGENT_ID=${AGENT_ID}`);
  }
  // A function: nats.js calls it at every (re)connect, so renewed creds are picked up.
  const authenticator = credsAuthenticator(() => readFileSync(CREDS_FILE));
  return { ...options, authenticator, ...(inboxPrefix ? { inboxPrefix } : {}) };
}

const nc = await connect(connectOptions()).catch((err) => fatal(`connect: ${err.message}`));
(async () => { // connection changes, e.g. a reconnect after the credentials expired
  for await (const s of nc.status()) {
    if (["disconnect", "reconnect", "error"].includes(s.type)) log(`connection ${s.type}: ${s.data}`);
  }
})();
const js = nc.jetstream();
const jsm = CREDS_FILE ? null : await nc.jetstreamManager(); // creates consumers: no creds only
const inFlight = new Map(); // task_id -> JsMsg being handled
let stopping = false;
const startedAt = now();

// With credentials an agent may not create or update consumers: whoever minted them
// provisioned ours (docs/protocol.md "Permissions"), so bind it or stop with the reason.
async function bindOnly(stream, name) {
  try {
    return await js.consumers.get(stream, name);
  } catch (err) {
    fatal(`consumer ${name} on ${stream}: ${err.message}; with AGENTBUS_CREDS_FILE the agent `
      + `only binds its consumers, whoever mints its credentials creates them from its deployment `
      + `(AGENTBUS_AGENT_DEPLOYMENT=${DEPLOYMENT ?? "unset"}): \`agentbus auth agent ${AGENT_ID} --deployment `
      + `${DEPLOYMENT || "<name>"}\` for an agent started by hand`);
  }
}

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
    name: NAME,
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
// (with credentials: bind the one provisioned for us)
const consumers = {};
for (const cap of CAPABILITIES) {
  if (CREDS_FILE) {
    consumers[cap] = await bindOnly(`${P}_TASKS`, `cap-${cap}`);
    continue;
  }
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
  await putObject(bucket, name, bytes);
  const ref = { type: "BlobRef", bucket, name, size_bytes: bytes.length, sha256: sha256(bytes) };
  return { output: null, output_ref: ref };
}

// "Large values": written without rollup headers (the buckets refuse them, and nats.js's
// putBlob sends one): the chunks of 128 KiB on $O.<bucket>.C.<nuid>, then the meta JSON
// on $O.<bucket>.M.<base64url(name), padded>, every publish acked.
const CHUNK_BYTES = 128 * 1024;
const b64url = (bytes) => Buffer.from(bytes).toString("base64").replaceAll("+", "-").replaceAll("/", "_");
async function putObject(bucket, name, bytes) {
  const nuid = randomBytes(11).toString("hex");
  const acks = [];
  for (let at = 0; at < bytes.length; at += CHUNK_BYTES) {
    acks.push(js.publish(`$O.${bucket}.C.${nuid}`, bytes.subarray(at, at + CHUNK_BYTES)));
  }
  await Promise.all(acks);
  const digest = createHash("sha256").update(bytes).digest();
  const meta = {
    name, bucket, nuid, size: bytes.length, chunks: acks.length, mtime: new Date().toISOString(),
    digest: `SHA-256=${b64url(digest)}`, deleted: false, options: { max_chunk_size: CHUNK_BYTES },
  };
  await js.publish(`$O.${bucket}.M.${b64url(new TextEncoder().encode(name))}`, new TextEncoder().encode(JSON.stringify(meta)));
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

// "Poison input": a message that cannot be handled is termed (by the caller) and reported.
async function reportBad(subject, reason) {
  const event = { type: "ErrorEvent", service: `agent:${AGENT_ID}`, subject, reason, at: now() };
  await js.publish(`${PREFIX}.events.error.agent.${AGENT_ID}`, jc.encode(event));
  log(reason);
}

// -- 4. Handle one message ------------------------------------------------------------
async function handle(cap, msg) {
  let task;
  try { // 4.1 decode as Task; a poison message is termed and reported, never retried
    task = jc.decode(msg.data);
    if (task?.type !== "Task" || typeof task.task_id !== "string") throw new Error("not a Task");
  } catch (err) {
    msg.term();
    return reportBad(msg.subject, `undecodable task from agent ${AGENT_ID}: ${oneLine(err.message)}`);
  }
  const { task_id } = task;
  const attempt = msg.info.redeliveryCount; // 4.2 attempt = num_delivered
  const results = `${PREFIX}.results.${cap}.${AGENT_ID}`; // reports carry our own id
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
      if (cap === "upper" && typeof input === "string") await publishUppercased(task_id, input, output);
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

// -- "Events between agents": publish on <p>.topics.<topic>.<part>, subscribe ---------
const TE = new TextEncoder();
const TOPIC_PARTITIONS = 8; // a constant of the contract
const TOPIC_MAX_TOKENS = 8;
const TOPIC_PARTS = ["_", ...Array.from({ length: TOPIC_PARTITIONS }, (_, n) => `k${n}`)];
const KEYLESS_MAX_ACK_PENDING = 10000;
function fnv1a32(bytes) { // FNV-1a, 32 bits; `>>> 0` keeps it unsigned
  let h = 2166136261;
  for (const b of bytes) h = Math.imul(h ^ b, 16777619) >>> 0;
  return h;
}
// the partition token: `_` without key, k<N> with N = fnv1a_32(UTF-8 of the key) % 8
const topicPart = (key) => (key === null ? "_" : `k${fnv1a32(TE.encode(key)) % TOPIC_PARTITIONS}`);
const topicOf = (subject) => subject.split(".").slice(2, -1).join("."); // <p>.topics.<topic>.<part>
function isEventKey(text) { // 1-1024 bytes, no CR/LF, and no edge blanks (headers trim them)
  const size = TE.encode(text).length;
  return size >= 1 && size <= 1024 && !/[\r\n]/.test(text) && text.trim() === text;
}

// Publish `payload` (a JSON object: type name `dict`) on `topic`; its stream sequence.
async function publishEvent(topic, payload, { key = null, eventId }) {
  const h = headers();
  h.set("Nats-Msg-Id", eventId); // a publish repeated within 2 min is stored once
  h.set("Agentbus-Event-Type", "dict");
  if (key !== null) h.set("Agentbus-Event-Key", key);
  h.set("Agentbus-Source", AGENT_ID);
  const subject = `${PREFIX}.topics.${topic}.${topicPart(key)}`;
  return (await js.publish(subject, jc.encode(payload), { headers: h })).seq;
}

// After each `upper` task: key = the text (keyless when it cannot be a key), event id =
// the task id, so a task redelivered after the publish does not publish it twice.
async function publishUppercased(taskId, text, output) {
  const payload = { task_id: taskId, input: text, output };
  await publishEvent("text.uppercased", payload, { key: isEventKey(text) ? text : null, eventId: taskId });
}

// The subscription: a note {"text": "..."} is answered by `text.noted` under the same
// key, with an event id derived from the note's (a note handled twice answers once).
async function onNote(note, ev) {
  if (typeof note?.text !== "string") {
    throw new TaskError("TypeError", `a note needs a "text" string, got ${JSON.stringify(note)}`);
  }
  const payload = { event_id: ev.eventId, topic: ev.topic, text: note.text.toUpperCase() };
  await publishEvent("text.noted", payload, { key: ev.key, eventId: `noted-${sha256(ev.eventId).slice(0, 32)}` });
}
const SUBSCRIPTIONS = [{ pattern: "notes.>", name: "notes", maxDeliveries: 5, handler: onNote }];

// One filter per partition; a final `>` is expanded so that the part stays last.
function topicFilters(pattern, part) {
  const tokens = pattern.split(".");
  if (tokens.at(-1) !== ">") return [`${PREFIX}.topics.${pattern}.${part}`];
  const head = tokens.slice(0, -1);
  return Array.from({ length: TOPIC_MAX_TOKENS - head.length }, (_, n) =>
    [PREFIX, "topics", ...head, ...Array(n + 1).fill("*"), part].join("."),
  );
}
function topicConsumerConfig(sub, part) { // shared mode: topic-<deployment>-<name>[-k<N>]
  const base = `topic-${OWNER}-${sub.name}`;
  const name = part === "_" ? base : `${base}-${part}`;
  return {
    name,
    durable_name: name,
    filter_subjects: topicFilters(sub.pattern, part),
    ack_policy: AckPolicy.Explicit,
    ack_wait: nanos(LEASE_MS),
    max_deliver: sub.maxDeliveries + 1, // a backstop: we term first
    max_ack_pending: part === "_" ? KEYLESS_MAX_ACK_PENDING : 1, // the partition rule
    deliver_policy: DeliverPolicy.New, // start `new`
    metadata: {
      agentbus_pattern: sub.pattern,
      agentbus_mode: "shared",
      agentbus_owner: OWNER,
      agentbus_subscription: sub.name,
      agentbus_part: part,
    },
  };
}
async function bindTopicConsumer(config) {
  const stream = `${P}_TOPICS`;
  if (CREDS_FILE) return bindOnly(stream, config.name);
  try {
    await jsm.consumers.add(stream, config);
  } catch (err) { // it exists with another start: keep its position, update the rest
    const current = (await jsm.consumers.info(stream, config.name)).config;
    const { deliver_policy, opt_start_seq, opt_start_time } = current;
    await jsm.consumers.add(stream, { ...config, deliver_policy, opt_start_seq, opt_start_time });
  }
  return js.consumers.get(stream, config.name);
}

// Handle one event: decode, run, ack; retry (nak with the task backoff) or term and report.
async function handleEvent(sub, msg) {
  const delivery = msg.info.redeliveryCount; // num_delivered
  const topic = topicOf(msg.subject);
  const bad = (why) => {
    msg.term();
    return reportBad(msg.subject, `subscription '${sub.name}': ${why}`);
  };
  if (delivery > sub.maxDeliveries) {
    return bad(`event on '${topic}' delivered ${delivery} times: the handler never finished`);
  }
  let payload;
  try {
    payload = jc.decode(msg.data);
  } catch (err) {
    return bad(`event payload does not decode: ${oneLine(err.message)}`);
  }
  const h = msg.headers;
  const ev = {
    topic,
    key: h?.get("Agentbus-Event-Key") || null,
    eventId: h?.get("Nats-Msg-Id") || "",
    source: h?.get("Agentbus-Source") || "",
    seq: msg.seq,
    delivery,
  };
  const renew = setInterval(() => msg.working(), LEASE_MS / 3);
  try {
    await sub.handler(payload, ev);
  } catch (err) {
    const retryable = err.retryable ?? true;
    const kind = `${err.errorType || err.name}: ${oneLine(err.message)}`;
    if (retryable && delivery < sub.maxDeliveries) {
      msg.nak(Math.round(1000 * backoffS(null, delivery)));
      return log(`event on '${topic}' delivery ${delivery} failed, retrying: ${kind}`);
    }
    const why = retryable ? `delivery ${delivery} was the last` : "not retryable";
    return bad(`event handler failed (${why}): ${kind}`);
  } finally {
    clearInterval(renew);
  }
  msg.ack();
}

// One pull loop per consumer, one event at a time (k<N> consumers allow one anyway).
const eventsInFlight = new Map(); // JsMsg -> its handling
async function eventLoop(sub, part, consumer) {
  while (!stopping) {
    const msg = await consumer.next({ expires: EVENTS_PULL_MS }).catch(async (err) => {
      if (!stopping) log(`event pull ${sub.name}/${part}: ${err.message}`);
      await sleep(1000);
      return null;
    });
    if (!msg) continue;
    if (stopping) { msg.nak(); break; } // arrived after SIGTERM: let a peer take it
    const handling = handleEvent(sub, msg).catch((err) => {
      log(`event handling failed, left for redelivery: ${err.message}`);
      msg.nak();
    });
    eventsInFlight.set(msg, handling);
    await handling;
    eventsInFlight.delete(msg);
  }
}
for (const sub of SUBSCRIPTIONS) {
  for (const part of TOPIC_PARTS) {
    const config = topicConsumerConfig(sub, part);
    const consumer = await until(`stream ${P}_TOPICS`, () => bindTopicConsumer(config));
    eventLoop(sub, part, consumer);
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
log(`ready: capabilities ${CAPABILITIES.join(",")}, subscriptions ${SUBSCRIPTIONS.map((s) => s.pattern)} prefix ${PREFIX}`);

// -- 5. Stop: stop pulling, finish or nak in-flight tasks, delete the key, exit 0 ----
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: stopping`);
  await beat(); // status "stopping" until the key is deleted
  await Promise.race([Promise.all([...workers, ...eventsInFlight.values()]), sleep(STOP_GRACE_MS)]);
  for (const msg of [...inFlight.values(), ...eventsInFlight.keys()]) msg.nak(); // past the grace
  clearInterval(heartbeat);
  await agents.delete(AGENT_ID).catch((e) => log(`delete registry key: ${e}`));
  await nc.drain();
  process.exit(0);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
