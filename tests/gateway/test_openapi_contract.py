"""The HTTP API against its own OpenAPI document, by property-based testing (schemathesis).

Schemathesis reads ``/openapi.json`` from a real gateway and sends generated requests,
valid and invalid, to every operation; each response must not be a 5xx, must have a
documented status, content type, headers and body schema, and invalid input must be
refused. Requests carry a token with every scope. The gateway, the scheduler and the
registry run in-process on a thread of their own (schemathesis calls over HTTP
synchronously), against the session nats-server; so does the checkpoint service. The
gateway reads an audit trail on the session PostgreSQL (its schema applied, no rows).
Bounded: a few dozen examples per operation.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agentbus.audit import AuditSettings
from agentbus.audit.queries import connect
from agentbus.audit.schema import apply_migrations
from agentbus.bus import Bus
from agentbus.settings import BusSettings
from agentbus_registry.service import serve as serve_registry
from agentbus_registry.settings import RegistrySettings
from tests._harness.checkpoint import running_checkpoint
from tests._harness.gateway import start_gateway, stop_gateway
from tests._harness.postgres import PostgresServer
from tests._harness.services import running_scheduler

pytestmark = [pytest.mark.nats, pytest.mark.timeout(180)]

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
STARTUP_TIMEOUT_S = 30.0
MAX_EXAMPLES = 20
"""Per operation and generation mode: 400 requests in all, about 20 s here."""


class Stack(threading.Thread):
    """Scheduler, registry and gateway on one bus, in an event loop on this thread."""

    def __init__(self, nats_url: str, audit_database_url: str) -> None:
        super().__init__(name="contract-stack", daemon=True)
        self.bus_settings = BusSettings(
            nats_url=nats_url, prefix=f"t{uuid.uuid4().hex[:10]}", request_timeout_s=5.0
        )
        self.audit_database_url = audit_database_url
        self.base_url = ""
        self.headers: dict[str, str] = {}
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._halt = asyncio.Event()
        bus = await Bus.connect(self.bus_settings, name="contract")
        async with AsyncExitStack() as stack:
            stack.push_async_callback(bus.close)
            await bus.ensure()
            await stack.enter_async_context(running_scheduler(bus))
            await stack.enter_async_context(running_checkpoint(bus))
            registry_stop = asyncio.Event()
            registry = asyncio.create_task(
                serve_registry(bus, registry_stop, RegistrySettings(), CollectorRegistry())
            )
            # every scope, and a rate limit the generated requests stay under
            # event streams end after a second (a valid one would follow forever)
            audit = AuditSettings(database_url=SecretStr(self.audit_database_url))
            async with await connect(audit) as conn:
                await apply_migrations(conn)
            gw = await start_gateway(
                bus,
                audit=audit,
                max_wait_s=0.2,
                rate_limit_requests=100_000,
                sse_max_duration_s=1.0,
            )
            self.base_url = str(gw.http.base_url).rstrip("/")
            self.headers = {"Authorization": gw.http.headers["authorization"]}
            self.ready.set()
            await self._halt.wait()
            await stop_gateway(gw)
            registry_stop.set()
            await asyncio.wait_for(registry, 15)

    def stop(self) -> None:
        if self._loop is not None and self._halt is not None:
            self._loop.call_soon_threadsafe(self._halt.set)
        self.join(30)


@pytest.fixture(scope="module")
def contract_stack(nats_url: str, postgres: PostgresServer) -> Iterator[Stack]:
    stack = Stack(nats_url, postgres.create_database())
    stack.start()
    assert stack.ready.wait(STARTUP_TIMEOUT_S), "the gateway stack did not start"
    if stack.error is not None:
        raise stack.error
    yield stack
    stack.stop()
    assert not stack.is_alive(), "the gateway stack did not stop"


@pytest.fixture(scope="module")
def api_schema(contract_stack: Stack) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{contract_stack.base_url}/openapi.json")
    # The token is the test's (every request carries it), not generated: a generated
    # or removed Authorization would only ever meet the 401 of tests/gateway/test_auth.py.
    schema.config.generation.update(with_security_parameters=False)
    return schema


OPERATIONS = [
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{task_id}"),
    ("GET", "/v1/tasks/{task_id}/output"),
    ("POST", "/v1/tasks/{task_id}/cancel"),
    ("POST", "/v1/tasks/{task_id}/resubmit"),
    ("POST", "/v1/tasks/wait"),
    ("POST", "/v1/events/{topic}"),
    ("GET", "/v1/tasks/{task_id}/events"),
    ("GET", "/v1/events"),
    ("GET", "/v1/agents"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/approvals"),
    ("GET", "/v1/approvals/{approval_id}"),
    ("POST", "/v1/approvals/{approval_id}/decision"),
    ("GET", "/healthz"),
    ("GET", "/v1/tasks/{task_id}/subtasks"),
    ("GET", "/v1/overview"),
    ("GET", "/v1/deployments"),
    ("GET", "/v1/deployments/{name}"),
    ("POST", "/v1/deployments/{name}/scale"),
    ("GET", "/v1/checkpoints/owners"),
    ("GET", "/v1/checkpoints/{owner}/threads"),
    ("GET", "/v1/checkpoints/{owner}/threads/{thread}/versions"),
    ("POST", "/v1/checkpoints/{owner}/threads/{thread}/fork"),
    ("GET", "/v1/traces/kinds"),
    ("GET", "/v1/traces/{kind}/strongest"),
    ("GET", "/v1/logs/{agent_id}"),
    ("GET", "/v1/audit/events"),
]
NO_INPUT = {
    ("GET", "/v1/nodes"),
    ("GET", "/healthz"),
    ("GET", "/v1/overview"),
    ("GET", "/v1/deployments"),
    ("GET", "/v1/traces/kinds"),
}
"""Operations without parameters or body: there is no invalid input to generate."""
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in schemathesis.GenerationMode
    if not (mode is schemathesis.GenerationMode.NEGATIVE and (method, path) in NO_INPUT)
]


def test_every_operation_is_covered(api_schema: schemathesis.BaseSchema) -> None:
    documented = set()
    for result in api_schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        documented.add((result.ok().method.upper(), result.ok().path))
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_api_follows_its_openapi_document(
    contract_stack: Stack,
    api_schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    mode: schemathesis.GenerationMode,
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(checks=CHECKS, timeout=10, headers=contract_stack.headers)

    check()
