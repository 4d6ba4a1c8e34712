"""Checkpoint requests go to their owner's subject; a request for another owner is 403."""

from __future__ import annotations

import msgspec
import pytest

from agentbus.errors import ForbiddenError, NotFoundError
from agentbus.messages import (
    CheckpointReply,
    ErrorEvent,
    ForkCheckpoint,
    GetCheckpoint,
    PutCheckpoint,
)
from agentbus.state.checkpoints import CheckpointClient
from tests._harness.checkpoint import Service

pytestmark = pytest.mark.nats


async def test_a_request_for_another_owner_is_refused_with_403(
    svc: Service, client: CheckpointClient
) -> None:
    bus = svc.bus
    stored = await client.put("t", b"agent-1's", parent_id=None)
    errors = await bus.nc.subscribe(bus.names.event_subject("error", "checkpoint"))
    # mallory may request only on its own subject, and asks for agent-1's data
    mine = bus.names.owner_endpoint("checkpoint", "get", "mallory")
    with pytest.raises(ForbiddenError, match="agent-1"):
        await bus.request(mine, GetCheckpoint(agent_id="agent-1", thread_id="t"), CheckpointReply)
    put = bus.names.owner_endpoint("checkpoint", "put", "mallory")
    overwrite = PutCheckpoint(
        agent_id="agent-1", thread_id="t", data=b"forged", parent_id=stored.checkpoint_id
    )
    with pytest.raises(ForbiddenError):
        await bus.request(put, overwrite, CheckpointReply)
    event = msgspec.json.decode((await errors.next_msg(timeout=5)).data, type=ErrorEvent)
    assert (event.service, event.subject) == ("checkpoint", mine)
    await errors.unsubscribe()
    labels = {"service": "checkpoint", "endpoint": "get", "outcome": "403"}
    assert svc.metric("agentbus_service_requests_total", labels) == 1
    # nothing changed, and the owner's own requests still work
    assert (await client.get("t")).checkpoint_id == stored.checkpoint_id
    assert (await client.get("t")).data == b"agent-1's"


async def test_the_client_requests_on_its_owner_subject(svc: Service) -> None:
    odd = svc.client("owner with.dots/and spaces")
    await odd.put("t", b"x", parent_id=None)
    subject = svc.bus.names.owner_endpoint("checkpoint", "get", "owner with.dots/and spaces")
    assert subject.endswith(".get.owner=20with=2Edots=2Fand=20spaces")
    request = GetCheckpoint(agent_id="owner with.dots/and spaces", thread_id="t")
    assert (await svc.bus.request(subject, request, CheckpointReply)).checkpoint.thread_id == "t"


async def test_a_fork_is_checked_against_its_source_owner(
    svc: Service, client: CheckpointClient
) -> None:
    await client.put("t", b"x", parent_id=None)
    fork = ForkCheckpoint(agent_id="agent-1", thread_id="t", new_thread_id="t2")
    other = svc.bus.names.owner_endpoint("checkpoint", "fork", "mallory")
    with pytest.raises(ForbiddenError):
        await svc.bus.request(other, fork, CheckpointReply)
    with pytest.raises(NotFoundError):
        await client.get("t2")
