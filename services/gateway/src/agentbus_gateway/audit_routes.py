"""``GET /v1/audit/events``: the audit trail (PostgreSQL, filled by the archiver) over HTTP.

Three questions, one per request, answered by ``agentbus.audit.queries``:
``approvals=true`` (who approved or denied what; ``task_id``, ``since``, ``until``
narrow it), ``task_id`` (every event of one task), ``agent_id`` (what one agent did
in ``[since, until)``). Needs ``tasks:read`` (task inputs, outputs, approval comments).

The database is ``AuditSettings.database_url`` (env ``AGENTBUS_AUDIT_DATABASE_URL``);
each request opens one connection and closes it. Without a database, without
psycopg, or when the database fails, the answer is 503 ``unavailable`` with the
reason, logged and counted in ``agentbus_gateway_audit_failures_total{reason}``
(``not_configured``, ``unreachable``, ``query``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import get
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import QueryParameter
from loguru import logger

from agentbus.audit import EventRow
from agentbus.audit.queries import (
    DEFAULT_LIMIT,
    agent_events,
    approval_events,
    connect,
    task_events,
)
from agentbus.errors import ContractError, UnavailableError
from agentbus.messages.common import TASK_ID_PATTERN
from agentbus_gateway.auth import needs
from agentbus_gateway.models import TOKEN_PATTERN
from agentbus_gateway.routes import Ctx, GatewayContext, error_responses

AuditView = Literal["approvals", "task", "agent"]
DATE_TIME = OpenAPIFormat.DATE_TIME
MAX_CONNECTIONS = 4
"""Audit queries running at once (each on a connection of its own); others wait."""
_CONNECTIONS = asyncio.Semaphore(MAX_CONNECTIONS)
NOT_CONFIGURED = (
    "no audit database configured: set AGENTBUS_AUDIT_DATABASE_URL on the gateway "
    "(e.g. postgresql://agentbus@postgres:5432/agentbus, the archiver's database)"
)
"""The 503 message of a gateway without an audit database."""


class AuditEvent(msgspec.Struct, kw_only=True):
    """One archived event (a row of ``events``, ``docs/operations.md`` "Audit trail")."""

    seq: int
    """Its sequence in the events stream."""
    time: datetime
    """When the stream stored it (UTC)."""
    subject: str
    entity: str
    """Subject token after ``events``: ``task``, ``approval``, ``agent``, ``replica`` ..."""
    kind: str
    """The token after ``entity``: a task's status, ``requested``, ``decided`` ..."""
    task_id: str | None
    agent_id: str | None
    deployment: str | None
    capability: str | None
    payload: Any
    """The event's JSON payload (a string for a payload that was not JSON)."""


class AuditEventList(msgspec.Struct, kw_only=True):
    """``GET /v1/audit/events``: the events of one question, oldest first."""

    view: AuditView
    events: list[AuditEvent]
    truncated: bool
    """More events matched than ``limit``."""


def audit_event(row: EventRow) -> AuditEvent:
    """The HTTP shape of ``row`` (its payload decoded)."""
    return AuditEvent(**{**dataclasses.asdict(row), "payload": msgspec.json.decode(row.payload)})


def _time(name: str, value: str | None) -> datetime | None:
    """``value`` as an RFC 3339 time (a bare number is not one: no Unix timestamps).

    Raises:
        ContractError: not an RFC 3339 date-time (400 naming ``name``).
    """
    if value is None:
        return None
    try:
        return msgspec.convert(value, datetime)
    except msgspec.ValidationError as exc:
        raise ContractError(f"{name}: not an RFC 3339 date-time: {exc}") from exc


def _utc(when: datetime | None) -> datetime | None:
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def _view(approvals: bool, task_id: str | None, agent_id: str | None) -> AuditView:
    """Which question the parameters ask.

    Raises:
        ContractError: none, or both ``task_id`` and ``agent_id`` without ``approvals``.
    """
    if approvals:
        if agent_id is not None:
            raise ContractError("agent_id: approvals are filtered by task_id only")
        return "approvals"
    if task_id is not None and agent_id is not None:
        raise ContractError("task_id and agent_id: ask for one task or one agent")
    if task_id is not None:
        return "task"
    if agent_id is not None:
        return "agent"
    raise ContractError("name a task_id, an agent_id, or approvals=true")


@get(
    "/v1/audit/events",
    summary="Query the audit trail",
    description=(
        "Archived events (PostgreSQL, filled by the archiver), oldest first: "
        "`approvals=true` approval requests and decisions (who chose which option, "
        "when, with which comment; `task_id`, `since`, `until` narrow them), else "
        "`task_id` every event of one task, else `agent_id` the events naming one "
        "agent in [`since`, `until`). 400 none of them, or task_id with agent_id; "
        "503 no audit database configured, or it is unreachable."
    ),
    responses=error_responses(400, 503),
    tags=["audit"],
    **needs("tasks:read"),
)
async def audit_events(
    ctx: Ctx,
    approvals: Annotated[
        bool, QueryParameter(description="Approval requests and decisions")
    ] = False,
    task_id: Annotated[
        str | None, QueryParameter(pattern=TASK_ID_PATTERN, description="One task's events")
    ] = None,
    agent_id: Annotated[
        str | None,
        QueryParameter(pattern=TOKEN_PATTERN, description="One agent's events (d-r)"),
    ] = None,
    since: Annotated[
        str | None,
        QueryParameter(format=DATE_TIME, description="From this time on (RFC 3339; UTC if naive)"),
    ] = None,
    until: Annotated[
        str | None,
        QueryParameter(format=DATE_TIME, description="Before this time (RFC 3339; UTC if naive)"),
    ] = None,
    limit: Annotated[
        int, QueryParameter(ge=1, le=DEFAULT_LIMIT, description="Most events")
    ] = DEFAULT_LIMIT,
) -> AuditEventList:
    """The events ``approvals``, ``task_id`` or ``agent_id`` ask for.

    Raises:
        ContractError: no question, or two (400).
        UnavailableError: no database configured, psycopg missing, or the database
            refused or failed (503).
    """
    view = _view(approvals, task_id, agent_id)
    start, end = _utc(_time("since", since)), _utc(_time("until", until))
    if ctx.audit.database_url is None:
        ctx.metrics.audit_failures.labels("not_configured").inc()
        logger.warning("audit query without a database", view=view)
        raise UnavailableError(NOT_CONFIGURED)
    async with _CONNECTIONS:
        return await _answer(ctx, view, task_id, agent_id, start, end, limit)


async def _answer(
    ctx: GatewayContext,
    view: AuditView,
    task_id: str | None,
    agent_id: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> AuditEventList:
    """One query on a connection of its own.

    Raises:
        UnavailableError: with a generic reason; the log has the database's own message
            (it may name hosts, roles and SQL).
    """
    failures = ctx.metrics.audit_failures
    try:
        conn = await connect(ctx.audit)
    except (ContractError, UnavailableError) as exc:  # psycopg missing, database down
        failures.labels("unreachable").inc()
        logger.warning("audit database unavailable", view=view, error=str(exc))
        raise UnavailableError("audit database unreachable (see the gateway's log)") from exc
    import psycopg  # present: connect succeeded

    try:
        if view == "approvals":
            rows = await approval_events(
                conn, since=start, until=end, task_id=task_id, limit=limit + 1
            )
        elif view == "task":
            assert task_id is not None
            rows = await task_events(conn, task_id, limit=limit + 1)
        else:
            assert agent_id is not None
            rows = await agent_events(conn, agent_id, since=start, until=end, limit=limit + 1)
    except psycopg.Error as exc:
        failures.labels("query").inc()
        logger.warning("audit query failed", view=view, error=str(exc).strip())
        raise UnavailableError("audit query failed (see the gateway's log)") from exc
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return AuditEventList(
        view=view, events=[audit_event(r) for r in rows[:limit]], truncated=len(rows) > limit
    )


AUDIT_ROUTES = [audit_events]
