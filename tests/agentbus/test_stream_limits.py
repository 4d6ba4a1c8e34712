"""Events, logs, results and topics streams get the size and age limits of the bus settings."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from agentbus.bus import Bus
from agentbus.settings import BusSettings

pytestmark = pytest.mark.nats

MIB = 1024 * 1024


async def _limits(bus: Bus, stream: str) -> tuple[float, int]:
    config = (await bus.js.stream_info(stream)).config
    assert config.max_age is not None and config.max_bytes is not None
    return config.max_age, config.max_bytes


async def test_defaults_bound_every_unbounded_stream(bus: Bus) -> None:
    n = bus.names
    for stream in (n.events_stream, n.logs_stream, n.results_stream, n.topics_stream):
        max_age_s, max_bytes = await _limits(bus, stream)
        assert max_age_s > 0, stream
        assert max_bytes > 0, stream


async def test_limits_are_applied_on_create_and_updated_on_existing_streams(
    bus_settings: BusSettings,
) -> None:
    first = await Bus.connect(bus_settings, name="test-limits")
    try:
        await first.ensure()  # created with the defaults
    finally:
        await first.close()
    wanted = {
        "events": (3600.0, 8 * MIB),
        "logs": (600.0, 4 * MIB),
        "results": (7200.0, 16 * MIB),
        "topics": (1800.0, 2 * MIB),
    }
    settings = bus_settings.model_copy(
        update={
            f"{name}_{field}": value
            for name, (age_s, size) in wanted.items()
            for field, value in (("max_age_s", age_s), ("max_bytes", size))
        }
    )
    bus = await Bus.connect(settings, name="test-limits")
    try:
        await bus.ensure()
        n = bus.names
        streams = {
            "events": n.events_stream,
            "logs": n.logs_stream,
            "results": n.results_stream,
            "topics": n.topics_stream,
        }
        for name, stream in streams.items():
            assert await _limits(bus, stream) == pytest.approx(wanted[name]), name
        # 0 means no limit
        unlimited = settings.model_copy(update={"events_max_age_s": 0.0, "events_max_bytes": 0})
        bus.settings = unlimited
        await bus.ensure()
        assert await _limits(bus, n.events_stream) == (0.0, -1)
    finally:
        await bus.close()


async def test_streams_made_without_limits_get_them(bus_settings: BusSettings) -> None:
    """A results stream made by an older version (no limits, discard old) is updated."""
    bus = await Bus.connect(bus_settings, name="test-limits")
    try:
        n = bus.names
        await bus.js.add_stream(
            StreamConfig(
                name=n.results_stream,
                subjects=[n.results_all()],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
        await bus.ensure()
        config = (await bus.js.stream_info(n.results_stream)).config
        assert (config.max_age, config.max_bytes, config.discard) == (
            bus_settings.results_max_age_s,
            bus_settings.results_max_bytes,
            DiscardPolicy.NEW,
        )
    finally:
        await bus.close()
