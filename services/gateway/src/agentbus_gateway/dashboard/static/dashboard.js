// agentbus dashboard: the two live views htmx's SSE extension does not cover.
// A task's events and a replica's log lines arrive as JSON over Server-Sent Events;
// each is appended as text (never as markup). Everything else is htmx attributes.
"use strict";

const TASK_KINDS = ["queued", "running", "succeeded", "failed", "cancelled", "expired", "dead"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "expired", "dead"]);
const MAX_LOG_LINES = 2000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setState(container, state, text) {
  const badge = container.closest("section")?.querySelector("[data-events-state]");
  if (badge) {
    badge.dataset.eventsState = state;
    badge.textContent = text;
  }
}

// Follow one task: history, then live, until its terminal event (the server ends
// the stream there; a later reconnect gets 204 and the browser stops).
function followTaskEvents(list) {
  const source = new EventSource(list.dataset.taskEvents, { withCredentials: true });
  const refresh = document.querySelector(list.dataset.refresh);
  source.onopen = () => setState(list, "live", "live");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) setState(list, "ended", "ended");
    else setState(list, "reconnecting", "reconnecting");
  };
  for (const status of TASK_KINDS) {
    source.addEventListener(`task.${status}`, (event) => {
      let data = {};
      try { data = JSON.parse(event.data); } catch (_) { /* shown raw below */ }
      const item = el("li", `ev ev-${status}`);
      item.dataset.kind = event.type;
      item.dataset.seq = event.lastEventId;
      item.append(el("span", `badge s-${status}`, status));
      item.append(el("time", "muted small", (data.at || "").replace("T", " ").slice(0, 19)));
      const parts = [];
      if (data.attempt) parts.push(`attempt ${data.attempt}`);
      if (data.agent_id) parts.push(`on ${data.agent_id}`);
      if (data.reason) parts.push(data.reason);
      if (data.error) parts.push(`${data.error.code || "error"}: ${data.error.message || ""}`);
      item.append(el("span", "small", parts.join(" · ") || data.capability || ""));
      list.append(item);
      if (refresh && window.htmx) window.htmx.trigger(refresh, "refresh");
      if (TERMINAL.has(status)) {
        source.close();
        setState(list, "ended", "ended");
      }
    });
  }
  source.addEventListener("error", (event) => {
    if (event.data) list.append(el("li", "ev ev-error", `stream ended: ${event.data}`));
  });
}

// Follow a replica's output (GET /v1/logs/{agent_id}: history, then live).
function followLog(pre) {
  const source = new EventSource(pre.dataset.logStream, { withCredentials: true });
  source.onopen = () => setState(pre, "live", "live");
  source.onerror = () => setState(pre, "reconnecting", "reconnecting");
  const append = (event) => {
    let line = event.data;
    try {
      const data = JSON.parse(event.data);
      const at = (data.at || "").replace("T", " ").slice(11, 19);
      line = `${at} ${data.stream === "stderr" ? "!" : " "} ${data.line ?? ""}`;
    } catch (_) { /* plain text line */ }
    const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(document.createTextNode(`${line}\n`));
    while (pre.childNodes.length > MAX_LOG_LINES) pre.firstChild.remove();
    if (follow) pre.scrollTop = pre.scrollHeight;
  };
  source.addEventListener("log", append);
  source.onmessage = append;
}

// The "live" marker of pages updated through htmx's SSE extension.
function markLive(event, state) {
  const root = event.target.closest?.(".sse-root") || event.target;
  const page = root.closest("main")?.querySelector(".page-head .live");
  if (page) page.dataset.state = state;
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-task-events]").forEach(followTaskEvents);
  document.querySelectorAll("[data-log-stream]").forEach(followLog);
  document.body.addEventListener("htmx:sseOpen", (e) => markLive(e, "live"));
  document.body.addEventListener("htmx:sseError", (e) => markLive(e, "down"));
});
