"""The Client checks ids before they become a subject, a KV key or a request.

A task id of 5,000 characters in a KV get or a subscription makes nats-server close
the connection for good ("maximum control line exceeded"); the Client raises a
``ContractError`` instead and its connection stays up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.errors import ContractError

pytestmark = pytest.mark.nats

LONG = "a" * 5000

CALLS: dict[str, Callable[[Client], Awaitable[Any]]] = {
    "get": lambda c: c.get(LONG),
    "get dotted": lambda c: c.get("a.b"),
    "wait": lambda c: c.wait(LONG, timeout_s=1),
    "wait_all": lambda c: c.wait_all(["ok", LONG], timeout_s=1),
    "wait_first": lambda c: c.wait_first([LONG], timeout_s=1),
    "history": lambda c: c.history(LONG),
    "cancel": lambda c: c.cancel(LONG),
    "resubmit": lambda c: c.resubmit(LONG),
    "resubmit new id": lambda c: c.resubmit("ok", new_task_id="a b"),
    "submit task id": lambda c: c.submit("echo", task_id=LONG),
    "submit parent": lambda c: c.submit("echo", parent_id=LONG),
    "agents": lambda c: c.agents(LONG),
    "delete deployment": lambda c: c.delete_deployment(LONG),
    "scale": lambda c: c.scale(LONG, 1),
    "placements": lambda c: c.placements(LONG),
    "node status": lambda c: c.node_status("n.*"),
    "dead tasks": lambda c: c.dead_tasks(LONG),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_bad_id_raises_contract_error_and_the_connection_stays(bus: Bus, call: str) -> None:
    client = Client(bus)
    with pytest.raises(ContractError):
        await CALLS[call](client)
    await bus.nc.flush(timeout=2)
    assert bus.nc.is_connected


def test_a_capability_cannot_take_the_name_of_a_priority_band() -> None:
    from agentbus.errors import ContractError
    from agentbus.names import check_token

    with pytest.raises(ContractError, match="priority"):
        check_token("capability", "x-p1")
    assert check_token("capability", "x-p10") == "x-p10"  # bands are 1-9
    assert check_token("deployment name", "x-p1") == "x-p1"
