"""Stigmergy traces against a real nats-server: exact sums, decay, ranking, watch, claims."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator

import pytest

from agentbus.bus import Bus
from agentbus.errors import ConflictError, ContractError
from agentbus.messages import TraceKind
from agentbus.traces import TraceChange, Traces
from agentbus.traces.locations import encode_location
from tests._harness.polling import eventually

pytestmark = pytest.mark.timeout(90)


def analytic(deposits: list[tuple[float, float]], now: float, half_life_s: float) -> float:
    """``sum a * 2^(-(now - t)/half_life)`` over ``[(a, t)]``."""
    return sum(a * 2 ** (-(now - t) / half_life_s) for a, t in deposits)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingClock:
    """Wall-clock time that remembers its last reading (the time a read decayed to)."""

    last = 0.0

    def __call__(self) -> float:
        self.last = time.time()
        return self.last


async def test_concurrent_deposits_are_never_lost(bus: Bus) -> None:
    """20 depositors x 200 deposits on 4 hot locations: every deposit counts."""
    clock = RecordingClock()
    traces = Traces(
        bus,
        clock=clock,
        kinds=[TraceKind(kind="hot", half_life_s=30.0), TraceKind(kind="tally", half_life_s=1e7)],
    )
    hot = [f"hot/spot {i}.py" for i in range(4)]
    made: dict[str, list[tuple[float, float]]] = {loc: [] for loc in hot}
    await traces.kind("hot")  # known before the first deposit, whose time is noted here
    await traces.kind("tally")

    async def depositor(i: int) -> None:
        for j in range(200):
            loc, amount = hot[(i + j) % 4], 1.0 + (j % 3)
            made[loc].append((amount, time.time()))
            await traces.deposit(loc, "hot", amount)
            await traces.deposit(loc, "tally", 1.0)

    await asyncio.gather(*(depositor(i) for i in range(20)))
    for loc in hot:
        sensed = await traces.sense(loc, kinds=["hot", "tally"])
        now = clock.last  # the instant the read decayed the sums to
        # no decay to speak of: the total is the count
        assert round(sensed["tally"]) == len(made[loc]) == 1000
        assert abs(sensed["tally"] - 1000) < 0.05
        want = analytic(made[loc], now, 30.0)
        assert abs(sensed["hot"] - want) / want < 0.01, (loc, sensed["hot"], want)
        assert abs(sensed["hot"] - want) / want < 1e-4  # in fact exact up to clock reads


async def test_decay_is_exact_across_epochs(bus: Bus) -> None:
    """Deposits at chosen times spanning three epochs, read at chosen times."""
    clock = FakeClock(1_000_000.0)
    traces = Traces(bus, clock=clock, kinds=[TraceKind(kind="decay", half_life_s=10.0)])
    k = await traces.kind("decay")
    assert k.epoch_s == 160.0
    assert k.forget_after_s == 160.0
    start = math.floor(clock.t / 160.0) * 160.0 + 150.0  # 10 s before an epoch ends
    deposits = []
    for offset, amount in [(0.0, 8.0), (9.9, 2.5), (10.1, 4.0), (25.0, 1.0)]:
        clock.t = start + offset
        await traces.deposit("x", "decay", amount)
        deposits.append((amount, clock.t))
    for later in (0.0, 1.0, 5.0, 10.0, 33.3, 80.0):
        clock.t = start + 25.0 + later
        got = await traces.strength("x", "decay")
        want = analytic(deposits, clock.t, 10.0)
        assert abs(got - want) / want < 0.01, (later, got, want)
        assert abs(got - want) / want < 1e-5


async def test_decay_in_real_time(bus: Bus) -> None:
    clock = RecordingClock()
    traces = Traces(bus, clock=clock, kinds=[TraceKind(kind="fast", half_life_s=1.0)])
    await traces.kind("fast")
    await traces.deposit("spot", "fast", 8.0)
    t0 = clock.last  # the deposit's time
    first = await traces.strength("spot", "fast")
    assert first == pytest.approx(8.0 * 2 ** (-(clock.last - t0)), rel=0.01)
    await asyncio.sleep(1.5)
    got = await traces.strength("spot", "fast")
    assert clock.last - t0 >= 1.5
    assert got == pytest.approx(8.0 * 2 ** (-(clock.last - t0)), rel=0.01)
    assert got < 0.5 * first


async def test_strongest_under_a_prefix(bus: Bus) -> None:
    traces = Traces(bus, half_life_s=1e6)  # no decay to speak of
    for loc, amount in [
        ("src/a.py", 5),
        ("src/b.py", 3),
        ("src/sub/c.py", 4),
        ("docs/x.md", 10),
        ("srcx/y.py", 7),
        ("src/a.py", 1),
    ]:
        await traces.deposit(loc, "todo", amount)
    await traces.deposit("src/a.py", "other", 100)

    def names(ranked: list[tuple[str, float]]) -> list[str]:
        return [loc for loc, _ in ranked]

    ranked = await traces.strongest("todo", "src/", n=10)
    assert names(ranked) == ["src/a.py", "src/sub/c.py", "src/b.py"]
    assert ranked[0][1] == pytest.approx(6.0, rel=1e-3)
    assert names(await traces.strongest("todo", "src", n=10)) == [
        "srcx/y.py",
        "src/a.py",
        "src/sub/c.py",
        "src/b.py",
    ]
    assert names(await traces.strongest("todo", "src/s", n=10)) == ["src/sub/c.py"]
    assert names(await traces.strongest("todo", n=2)) == ["docs/x.md", "srcx/y.py"]
    assert await traces.strongest("todo", "nothing/") == []


async def collect(traces: Traces, pattern: str, into: list[TraceChange], **kw: object) -> None:
    async for change in traces.watch(pattern, **kw):  # type: ignore[arg-type]
        into.append(change)


@pytest.fixture
async def watching(bus: Bus) -> AsyncIterator[tuple[Traces, list[TraceChange]]]:
    traces = Traces(bus, half_life_s=1e6, kinds_refresh_s=0.5)
    await traces.deposit("src/ready", "mark", 1)  # the kind exists before the watch
    changes: list[TraceChange] = []
    task = asyncio.create_task(collect(traces, "src/*", changes))

    async def live() -> bool:  # deposits until the watch reports one
        await traces.deposit("src/ready", "mark", 1)
        await asyncio.sleep(0.2)
        return any(c.location == "src/ready" for c in changes)

    await eventually(live, timeout_s=20, what="watch running")
    yield traces, changes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_watch_reports_live_deposits(watching: tuple[Traces, list[TraceChange]]) -> None:
    traces, changes = watching
    changes.clear()
    await traces.deposit("src/a.py", "mark", 2)
    await traces.deposit("docs/b.md", "mark", 5)  # does not match src/*
    await traces.deposit("src/a.py", "mark", 3)
    await traces.deposit("src/new kind.py", "brand-new", 7)  # a kind made while watching

    def seen() -> list[TraceChange] | None:
        got = [c for c in changes if c.location != "src/ready"]
        return got if len(got) >= 3 else None

    got = await eventually(seen, timeout_s=20, what="three changes")
    assert all(c.location.startswith("src/") for c in changes)
    mine = [c for c in got if c.location == "src/a.py"]
    assert [c.amount for c in mine] == [2.0, 3.0]
    assert mine[0].strength == pytest.approx(2.0, rel=1e-3)
    assert mine[1].strength == pytest.approx(5.0, rel=1e-3)
    new = [c for c in got if c.kind == "brand-new"]
    assert len(new) == 1
    assert new[0].strength == pytest.approx(7.0, rel=1e-3)
    assert abs(new[0].at.timestamp() - time.time()) < 30


async def test_claims_are_exclusive_and_expire(bus: Bus) -> None:
    traces = Traces(bus)
    loc = "work/item 1.py"
    got = await asyncio.gather(*(traces.claim(loc, 3, holder=f"h{i}") for i in range(10)))
    winners = [c for c in got if c is not None]
    assert len(winners) == 1
    held = await traces.claimed(loc)
    assert held is not None
    assert held.holder == winners[0].holder
    assert held.location == loc
    assert await traces.claim(loc, 5) is None
    # renewing keeps it past its TTL
    for _ in range(6):  # 3.6 s > the 3 s TTL
        await asyncio.sleep(0.6)
        assert await winners[0].renew()
        assert await traces.claim(loc, 5) is None
    # not renewed: it expires and someone else gets it
    taken = await eventually(
        lambda: traces.claim(loc, 5, holder="late"), timeout_s=15, what="claim after expiry"
    )
    assert (await traces.claimed(loc)).holder == "late"  # type: ignore[union-attr]
    assert not await winners[0].release()  # lapsed: it cannot release the new holder
    assert not await winners[0].renew()
    assert (await traces.claimed(loc)).holder == "late"  # type: ignore[union-attr]
    async with taken:
        pass
    assert await traces.claimed(loc) is None
    again = await traces.claim(loc, 5)
    assert again is not None
    assert await again.release()


async def test_cold_traces_are_forgotten(bus: Bus) -> None:
    traces = Traces(bus)
    await traces.define("cold", half_life_s=0.25, floor=0.05, forget_after_s=2.0)
    await traces.deposit("a/cold.py", "cold", 1.0)
    await traces.deposit("a/warm.py", "cold", 1.0)
    assert set(await traces.sense("a/cold.py")) >= {"cold"}
    await asyncio.sleep(1.2)  # 2^-4.8 < 0.05: below the floor
    assert "cold" not in await traces.sense("a/cold.py")
    assert await traces.strongest("cold", "a/") == []
    stream = bus.names.trace_stream("cold")

    async def dropped() -> bool:  # the server forgets counters untouched for 2 s
        info = await bus.js.stream_info(stream, subjects_filter=">")
        return not info.state.subjects

    await eventually(dropped, timeout_s=15, what="counters dropped by max_age")
    await traces.deposit("a/warm.py", "cold", 1.0)  # a forgotten trace starts afresh
    assert 0.0 < await traces.strength("a/warm.py", "cold") <= 1.0 + 1e-6
    info = await bus.js.stream_info(stream, subjects_filter=">")
    assert len(info.state.subjects or {}) == 1


async def test_kinds_are_defined_once(bus: Bus) -> None:
    traces = Traces(bus)
    k = await traces.define("review", half_life_s=60.0)
    assert k.half_life_s == 60.0
    assert await traces.define("review", half_life_s=60.0) == k
    with pytest.raises(ConflictError):
        await traces.define("review", half_life_s=30.0)
    # another instance with other defaults uses the stored configuration
    other = Traces(bus, half_life_s=5.0, kinds=[TraceKind(kind="review", half_life_s=1.0)])
    assert (await other.kind("review")).half_life_s == 60.0
    assert [x.kind for x in await other.kinds()] == ["review"]
    info = await bus.js.stream_info(bus.names.trace_stream("review"))
    assert '"half_life_s":60.0' in (info.config.metadata or {})["agentbus.trace_kind"]


# 1e-12: below the resolution 1/scale at any time of an epoch (a deposit late in an epoch
# is scaled up by as much as 2^16, which lifted 1e-9 over it)
@pytest.mark.parametrize("amount", [0.0, -1.0, math.nan, math.inf, 1e-12])
async def test_bad_deposits_are_refused(bus: Bus, amount: float) -> None:
    with pytest.raises(ContractError):
        await Traces(bus).deposit("x", "k", amount)


async def test_bad_kinds_and_claims_are_refused(bus: Bus) -> None:
    traces = Traces(bus)
    with pytest.raises(ContractError):
        await traces.deposit("x", "Bad Kind", 1)
    with pytest.raises(ContractError):
        await traces.define("k", half_life_s=-1)
    with pytest.raises(ContractError):
        await traces.define("k", half_life_s=1, forget_after_s=1000)  # > 4 epochs
    with pytest.raises(ContractError):
        await traces.claim("x", 0)
    with pytest.raises(ContractError):
        await traces.sense("")


async def test_stored_layout_is_readable_raw(bus: Bus) -> None:
    """What `nats stream get` shows: the documented subject, value and headers."""
    clock = FakeClock(1_000_000.0)
    traces = Traces(bus, clock=clock, kinds=[TraceKind(kind="raw", half_life_s=100.0)])
    await traces.deposit("dir/file.py", "raw", 2.0)
    epoch = math.floor(clock.t / 1600.0)
    subject = f"{bus.names.prefix}.traces.raw.{epoch}.{encode_location('dir/file.py')}"
    msg = await bus.js.get_msg(bus.names.trace_stream("raw"), subject=subject)
    assert msg.data is not None
    assert msg.data.startswith(b'{"val":"')
    value = int(json.loads(msg.data)["val"])
    assert value == round(2.0 * 1e6 * 2 ** ((clock.t - epoch * 1600.0) / 100.0))
    assert msg.headers is not None
    assert msg.headers["Agentbus-Trace-Amount"] == "2.0"
    assert float(msg.headers["Agentbus-Trace-At"]) == clock.t


async def test_the_protocol_doc_example(bus: Bus) -> None:
    """docs/protocol.md, "Traces": the worked example holds."""
    clock = FakeClock(1763713800.0)
    traces = Traces(bus, clock=clock, kinds=[TraceKind(kind="found_todo", half_life_s=3600.0)])
    await traces.deposit("src/app.py", "found_todo", 3)
    subject = f"{bus.names.prefix}.traces.found_todo.30620.src.app=2Epy"
    msg = await bus.js.get_msg(bus.names.trace_stream("found_todo"), subject=subject)
    assert msg.data == b'{"val":"4242641"}'
    assert msg.headers is not None
    assert msg.headers["Nats-Incr"] == "+4242641"
    clock.t = 1763717400.0
    assert await traces.strength("src/app.py", "found_todo") == pytest.approx(1.5, abs=1e-6)


async def test_strongest_needs_a_positive_n(bus: Bus) -> None:
    with pytest.raises(ContractError):
        await Traces(bus).strongest("k", n=0)
