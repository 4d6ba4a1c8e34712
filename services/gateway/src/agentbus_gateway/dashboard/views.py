"""What the dashboard's fragments show, read from the gateway's API (``api.Api``).

Each function returns the template context of one fragment: the API answers
(``Fetched``, whose ``state`` the templates turn into "not available in this
gateway", "your token lacks the scope" or an error line) and the shapes built from
them. Nothing here invents data: a section whose route is missing says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from agentbus_gateway.dashboard.api import Api, Fetched

OVERVIEW = "/v1/overview"
SUBTASK_WALK_MAX = 50
"""Most subtasks the task page fetches one by one when ``/subtasks`` is not served."""
TRACE_KINDS_SHOWN = 12
STRONGEST_SHOWN = 10
VERSIONS = "/v1/checkpoints/{owner}/threads/{thread}/versions"
ORIGIN_LOOKUP_MAX = 1000
"""Most versions of a fork's source thread searched for the version it started from."""


async def overview(api: Api) -> dict[str, Any]:
    """The overview: ``GET /v1/overview``.

    Without that route: what nodes, agents and the dead-letter index give (``partial``:
    no queue depth, no task rate).
    """
    if api.has(OVERVIEW):
        got = await api.get(OVERVIEW)
        return {"fetched": got, "view": got.body if got.ok else None, "partial": False}
    nodes = await api.get("/v1/nodes")
    agents = await api.get("/v1/agents")
    dead = await api.get("/v1/tasks", status="dead", limit=1)
    failed = next((f for f in (nodes, agents) if not f.ok), None)
    if failed is not None:
        return {"fetched": failed, "view": None, "partial": True}
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    loose: list[dict[str, Any]] = []
    for agent in agents.body.get("agents", []):
        row = {
            "deployment": agent.get("deployment") or agent.get("name"),
            "replica": agent.get("replica"),
            "agent_id": agent["agent_id"],
            "state": agent.get("status", "ready"),
            "node_id": agent.get("node_id"),
            "started_at": agent.get("started_at"),
            "restarts": None,
            "cpu_cores": None,
            "memory_bytes": None,
        }
        (by_node[row["node_id"]] if row["node_id"] else loose).append(row)
    cards = [
        {"node": node, "replicas": by_node.pop(node["node_id"], []), "reachable": True}
        for node in nodes.body.get("nodes", [])
    ]
    loose += [row for rows in by_node.values() for row in rows]
    view = {
        "nodes": cards,
        "unassigned": loose,
        "queues": None,
        "dead_letters": dead.body.get("total") if dead.ok else None,
        "tasks": None,
    }
    return {"fetched": nodes, "view": view, "partial": True}


async def task_rows(api: Api, *, status: str, capability: str, tenant: str) -> dict[str, Any]:
    """One page of ``GET /v1/tasks`` (tenant also checked here: older gateways ignore it)."""
    got = await api.get(
        "/v1/tasks", status=status or "any", capability=capability, tenant=tenant, limit=100
    )
    tasks = got.body.get("tasks", []) if got.ok else []
    if tenant:
        tasks = [t for t in tasks if t.get("tenant") == tenant]
    return {"fetched": got, "tasks": tasks, "total": got.body.get("total") if got.ok else 0}


async def task_detail(api: Api, task_id: str) -> dict[str, Any]:
    """A task's record and its subtask tree (``/subtasks``, else its children walked)."""
    got = await api.get("/v1/tasks/{task_id}", task_id)
    task = got.body if got.ok else None
    tree: list[dict[str, Any]] = []
    truncated = False
    if task is not None and task.get("children"):
        sub = await api.get("/v1/tasks/{task_id}/subtasks", task_id)
        if sub.ok:
            tree = [t for t in sub.body.get("tasks", []) if t.get("task_id") != task_id]
            truncated = bool(sub.body.get("truncated"))
        else:
            tree, truncated = await _walk_children(api, task)
    return {"fetched": got, "task": task, "subtasks": tree, "subtasks_truncated": truncated}


async def _walk_children(api: Api, root: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Depth-first subtasks of ``root`` (``depth`` 1: its children).

    At most ``SUBTASK_WALK_MAX``; the flag says whether more were left out.
    """
    out: list[dict[str, Any]] = []
    stack = [(child, 1) for child in reversed(root.get("children", []))]
    while stack:
        if len(out) >= SUBTASK_WALK_MAX:
            return out, True
        task_id, depth = stack.pop()
        got = await api.get("/v1/tasks/{task_id}", task_id)
        if not got.ok:
            out.append({"task_id": task_id, "depth": depth, "status": "unknown"})
            continue
        out.append({**got.body, "depth": depth})
        stack += [(child, depth + 1) for child in reversed(got.body.get("children", []))]
    return out, False


async def deployments(api: Api) -> dict[str, Any]:
    """``GET /v1/deployments``."""
    got = await api.get("/v1/deployments")
    return {"fetched": got, "deployments": got.body.get("deployments", []) if got.ok else []}


async def agents(api: Api) -> dict[str, Any]:
    """``GET /v1/agents``, grouped by capability (an agent shows under each of its own)."""
    got = await api.get("/v1/agents")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for agent in got.body.get("agents", []) if got.ok else []:
        for capability in agent.get("capabilities") or ["(none)"]:
            groups[capability].append(agent)
    return {"fetched": got, "groups": sorted(groups.items())}


async def checkpoints(
    api: Api, owner: str | None, thread: str | None, namespace: str = ""
) -> dict[str, Any]:
    """Owners; an owner's threads; or the versions of a thread in ``namespace``."""
    if owner is None:
        got = await api.get("/v1/checkpoints/owners")
        return {"fetched": got, "owners": got.body.get("owners", []) if got.ok else []}
    if thread is None:
        got = await api.get("/v1/checkpoints/{owner}/threads", owner)
        return {"fetched": got, "threads": got.body.get("threads", []) if got.ok else []}
    got = await api.get(VERSIONS, owner, thread, namespace=namespace or None)
    versions = got.body.get("versions", []) if got.ok else []
    return {"fetched": got, "versions": [await _with_origin_version(api, v) for v in versions]}


async def _with_origin_version(api: Api, version: dict[str, Any]) -> dict[str, Any]:
    """``version`` plus ``origin_version``: the number of the version it was forked from.

    ``forked_from`` names the source by checkpoint id only; the number is looked up in
    the newest ``ORIGIN_LOOKUP_MAX`` versions of the source thread (None past them, or
    when the source is gone).
    """
    origin = version.get("forked_from")
    if not origin or not origin.get("agent_id") or not origin.get("thread_id"):
        return version
    got = await api.get(
        VERSIONS,
        origin["agent_id"],
        origin["thread_id"],
        namespace=origin.get("namespace", ""),
        limit=ORIGIN_LOOKUP_MAX,
    )
    wanted = origin.get("checkpoint_id")
    source: list[dict[str, Any]] = got.body.get("versions", []) if got.ok else []
    number = next((v.get("version") for v in source if v.get("checkpoint_id") == wanted), None)
    return {**version, "origin_version": number}


async def traces(api: Api) -> dict[str, Any]:
    """Every trace kind with its strongest locations."""
    got = await api.get("/v1/traces/kinds")
    kinds: list[dict[str, Any]] = []
    for kind in (got.body.get("kinds", []) if got.ok else [])[:TRACE_KINDS_SHOWN]:
        top = await api.get("/v1/traces/{kind}/strongest", kind["kind"], limit=STRONGEST_SHOWN)
        kinds.append({"kind": kind, "fetched": top, "locations": _locations(top)})
    return {"fetched": got, "kinds": kinds}


def _locations(got: Fetched) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = got.body.get("locations", []) if got.ok else []
    peak = max((float(r.get("strength", 0)) for r in rows), default=0.0) or 1.0
    return [{**r, "share": float(r.get("strength", 0)) / peak} for r in rows]


async def approvals(api: Api) -> dict[str, Any]:
    """Pending approvals, then the latest decided ones."""
    pending = await api.get("/v1/approvals", status="pending")
    decided = await api.get("/v1/approvals", status="decided", limit=20)
    return {
        "fetched": pending,
        "pending": pending.body.get("approvals", []) if pending.ok else [],
        "decided": decided.body.get("approvals", []) if decided.ok else [],
    }


AUDIT = "/v1/audit/events"
AUDIT_VIEWS = ("approvals", "task", "agent")
PAYLOAD_LINE_CHARS = 80
"""Characters of an event's payload shown on its row before it is opened."""


def _rfc3339(value: str) -> str | None:
    """A ``datetime-local`` value (``2025-01-31T09:30``, taken as UTC) in RFC 3339.

    Raises:
        ValueError: not a date and time.
    """
    if not value:
        return None
    when = datetime.fromisoformat(value)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _audit_row(event: dict[str, Any]) -> dict[str, Any]:
    """An event of ``GET /v1/audit/events`` with its payload's one-line summary."""
    payload = event.get("payload")
    line = json.dumps(payload, ensure_ascii=False)
    if len(line) > PAYLOAD_LINE_CHARS:
        line = line[: PAYLOAD_LINE_CHARS - 1] + "…"
    fields = payload if isinstance(payload, dict) else {}
    return {**event, "payload_line": line, "fields": fields}


async def audit(
    api: Api, *, view: str, task: str, agent: str, since: str, until: str
) -> dict[str, Any]:
    """One question to the audit trail: ``approvals``, one ``task``'s or one ``agent``'s.

    ``since``/``until`` are ``datetime-local`` values (UTC). No call is made while
    the task or agent id is still empty (``asked`` false).
    """
    base: dict[str, Any] = {"fetched": None, "events": [], "truncated": False, "bad_time": ""}
    try:
        start, end = _rfc3339(since), _rfc3339(until)
    except ValueError as exc:
        return {**base, "asked": False, "bad_time": str(exc)}
    if view == "task":
        params: dict[str, Any] = {"task_id": task}
    elif view == "agent":
        params = {"agent_id": agent, "since": start, "until": end}
    else:
        params = {"approvals": "true", "task_id": task or None, "since": start, "until": end}
    if (view == "task" and not task) or (view == "agent" and not agent):
        return {**base, "asked": False}
    got = await api.get(AUDIT, **params)
    events = [_audit_row(e) for e in got.body.get("events", [])] if got.ok else []
    truncated = bool(got.body.get("truncated")) if got.ok else False
    return {**base, "asked": True, "fetched": got, "events": events, "truncated": truncated}
