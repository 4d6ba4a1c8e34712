"""Trace deposits under contention: 10,000 concurrent deposits over 10 hot locations.

Part of ``just bench state`` (``bench.state`` calls ``run_traces_bench``); alone:
``uv run python -m bench.traces_bench [--nats-url URL] [--json FILE]`` (without a URL
it starts its own nats-server). Figures (flat keys, units in the names):

- ``traces_deposits_per_s``: deposits confirmed per second, all 10,000 in flight at once;
- ``traces_lost_count``: deposits missing from the sensed totals (must be 0);
- ``traces_deposit_p50_ms`` / ``_p99_ms``: latency of one deposit under that load;
- ``traces_sense_p50_ms``: ``sense`` of one location (two direct gets) when idle;
- ``traces_strongest_1000_locations_ms``: ranking 1,000 locations of a kind.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

from agentbus.bus import Bus
from agentbus.messages import TraceKind
from agentbus.settings import BusSettings
from agentbus.traces import Traces
from bench.common import Report, console, percentile, versions

DEPOSITS = 10_000
HOT_LOCATIONS = 10
HALF_LIFE_S = 1e7
"""So long that the 10,000 unit deposits must sum to 10,000 (decay < 1e-5 of it)."""


async def run_traces_bench(report: Report, nats_url: str) -> None:
    """Run the trace figures against ``nats_url`` and add them to ``report``.

    A lost deposit is reported (``traces_lost_count`` > 0, printed in red), not
    raised, so the other figures of ``just bench state`` are still written.
    """
    prefix = f"bt{uuid.uuid4().hex[:8]}"
    bus = await Bus.connect(BusSettings(nats_url=nats_url, prefix=prefix, request_timeout_s=30))
    try:
        await bus.ensure()
        traces = Traces(bus, kinds=[TraceKind(kind="bench", half_life_s=HALF_LIFE_S)])
        await traces.kind("bench")
        hot = [f"bench/hot/{i}.py" for i in range(HOT_LOCATIONS)]
        latencies_ms: list[float] = []

        async def one(i: int) -> None:
            t = time.perf_counter()
            await traces.deposit(hot[i % HOT_LOCATIONS], "bench", 1.0)
            latencies_ms.append((time.perf_counter() - t) * 1000)

        console.print(f"traces: {DEPOSITS:,} concurrent deposits over {HOT_LOCATIONS} locations")
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(DEPOSITS)))
        elapsed = time.perf_counter() - start
        sensed = [await traces.strength(loc, "bench") for loc in hot]
        lost = DEPOSITS - round(sum(sensed))
        report.add("traces_deposits_count", DEPOSITS)
        report.add("traces_hot_locations_count", HOT_LOCATIONS)
        report.add("traces_deposits_per_s", round(DEPOSITS / elapsed, 1))
        report.add("traces_lost_count", lost)
        report.add("traces_deposit_p50_ms", round(percentile(latencies_ms, 50), 2))
        report.add("traces_deposit_p99_ms", round(percentile(latencies_ms, 99), 2))

        sense_ms = []
        for i in range(200):
            t = time.perf_counter()
            await traces.sense(hot[i % HOT_LOCATIONS], kinds=["bench"])
            sense_ms.append((time.perf_counter() - t) * 1000)
        report.add("traces_sense_p50_ms", round(percentile(sense_ms, 50), 2))
        report.add("traces_sense_p99_ms", round(percentile(sense_ms, 99), 2))

        spread = [f"bench/spread/{i:04d}.py" for i in range(1000)]
        await asyncio.gather(
            *(traces.deposit(loc, "bench", 1.0 + i % 7) for i, loc in enumerate(spread))
        )
        t = time.perf_counter()
        ranked = await traces.strongest("bench", "bench/spread/", n=10)
        report.add("traces_strongest_1000_locations_ms", round((time.perf_counter() - t) * 1000, 1))
        assert len(ranked) == 10
        report.table(
            f"traces: {DEPOSITS:,} concurrent deposits, {HOT_LOCATIONS} hot locations",
            ["figure", "value"],
            [[k, v] for k, v in report.figures.items() if k.startswith("traces_")],
        )
        if lost:
            console.print(f"[bold red]{lost} trace deposits lost[/bold red]")
    finally:
        for kind in ("bench",):
            try:
                await bus.js.delete_stream(bus.names.trace_stream(kind))
            except Exception as exc:  # cleanup only
                console.print(f"could not delete the bench stream: {exc!r}")
        await bus.close()


async def _main(nats_url: str | None, json_path: Path | None) -> None:
    report = Report("traces")
    report.print_header(**versions("nats-py", "agentbus"))
    if nats_url:
        await run_traces_bench(report, nats_url)
    else:
        from tests._harness.nats_server import NatsServer

        with NatsServer() as srv:
            await run_traces_bench(report, srv.client_url)
    report.write_json(json_path)
    if report.figures.get("traces_lost_count"):
        raise SystemExit(1)


def main() -> None:
    """``python -m bench.traces_bench``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nats-url", help="Use this server (default: start one).")
    parser.add_argument("--json", type=Path, help="Write every figure to this file.")
    args = parser.parse_args()
    asyncio.run(_main(args.nats_url, args.json))


if __name__ == "__main__":
    main()
