"""The embedded stack runs the archiver, on its own identity, when given a database."""

from __future__ import annotations

import pytest

from agentbus.bus import Bus
from agentbus.embedded import SERVICES, EmbeddedStack, ping_services
from tests._harness.archiver import archived_seqs, query, stream_seqs
from tests._harness.polling import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_an_embedded_stack_with_a_database_archives_its_events(
    audit_database_url: str,
) -> None:
    stack = EmbeddedStack(
        runtime="process", prefix="e2eaudit", audit_database_url=audit_database_url
    )
    async with stack:
        assert set(stack.pids) == {"nats-server", *SERVICES, "archiver"}
        bus = await Bus.connect(stack.settings)
        try:
            assert "archiver" in await ping_services(bus.nc, prefix="e2eaudit")

            async def everything_archived() -> bool:
                want = await stream_seqs(bus)
                return bool(want) and await archived_seqs(audit_database_url) == want

            await eventually(everything_archived, timeout_s=30, what="the stack's events")
        finally:
            await bus.close()
    kinds = await query(audit_database_url, "SELECT DISTINCT entity, kind FROM events")
    assert ("node", "joined") in kinds  # the supervisor's node joined the fleet
