"""Compare three stigmergy-trace designs on a real nats-server (the measurement behind
``docs/architecture.md``, "Stigmergy traces").

``uv run python -m bench.traces_designs [--json FILE]`` starts its own nats-server and runs,
for each design:

- **contention**: ``tasks`` concurrent depositors x ``per_task`` deposits of 1.0 on ``hot``
  locations, half-life huge (no decay): deposits/s, and deposits lost (expected total
  minus the stored one);
- **decay accuracy**: deposits of random amounts at random times over ``accuracy_s``
  seconds with a short half-life, the strength sampled every 0.25 s and compared with the
  analytical ``sum a_i * 2^(-(t - t_i)/half_life)``: the largest relative error.

Designs (NATS_NOTES.md §2, the founders' brief):

- ``counter+evaporator``: a JetStream counter per (location, kind) holding the strength
  in fixed point; an evaporator reads every counter each ``tick_s`` and publishes
  ``Nats-Incr: -v*(1 - 2^(-dt/h))``.
- ``kv+cas``: a KV entry ``{strength, updated_at}``; a deposit reads, decays, adds and
  writes back with compare-and-set, retrying on conflict. ``kv-no-cas`` is the same
  without the compare (what naive code does): it shows what CAS protects against.
- ``epoch-counter``: a JetStream counter per (kind, epoch, location) holding
  ``sum a_i * 2^((t_i - t0)/h)`` in fixed point, ``t0`` = the epoch's start: deposits are
  plain commuting increments, a read decays the sum analytically, no writer besides the
  depositors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

from bench.common import Report, console
from tests._harness.nats_server import NatsServer

SCALE = 1_000_000
NO_DECAY_H = 1e12


class Design:
    """One design: ``deposit(loc, amount, t)`` and ``strength(loc, now)``."""

    name = ""

    def __init__(self, js: JetStreamContext, half_life_s: float, uid: str) -> None:
        self.js, self.h, self.uid = js, half_life_s, uid
        self.retries = 0

    async def setup(self) -> None:
        """Create the stream or bucket."""

    async def deposit(self, loc: str, amount: float, t: float) -> None:
        """Add ``amount`` at wall-clock time ``t`` (Unix seconds)."""
        raise NotImplementedError

    async def strength(self, loc: str, now: float) -> float:
        """The strength of ``loc`` at ``now``."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop background work."""


class CounterEvaporator(Design):
    name = "counter+evaporator"
    tick_s = 1.0

    async def setup(self) -> None:
        self.stream = f"EV_{self.uid}"
        await self.js.add_stream(
            StreamConfig(
                name=self.stream,
                subjects=[f"ev{self.uid}.>"],
                allow_msg_counter=True,
                allow_direct=True,
                max_msgs_per_subject=1,
                storage=StorageType.FILE,
            )
        )
        self.locs: set[str] = set()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._evaporate())

    async def _evaporate(self) -> None:
        last = time.time()
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), self.tick_s)
            except TimeoutError:
                pass
            now = time.time()
            keep = 2 ** (-(now - last) / self.h)
            last = now
            for loc in list(self.locs):
                v = await self._value(loc)
                if dec := round(v * (1 - keep)):
                    await self.js.publish(self._subject(loc), b"", headers={"Nats-Incr": f"-{dec}"})

    def _subject(self, loc: str) -> str:
        return f"ev{self.uid}.{loc}"

    async def _value(self, loc: str) -> int:
        try:
            m = await self.js.get_msg(self.stream, subject=self._subject(loc), direct=True)
        except nats.js.errors.NotFoundError:
            return 0
        return int(json.loads(m.data or b"{}")["val"])

    async def deposit(self, loc: str, amount: float, t: float) -> None:
        self.locs.add(loc)
        await self.js.publish(
            self._subject(loc), b"", headers={"Nats-Incr": f"+{round(amount * SCALE)}"}
        )

    async def strength(self, loc: str, now: float) -> float:
        return await self._value(loc) / SCALE

    async def close(self) -> None:
        self.stop.set()
        await self.task


class KvCas(Design):
    name = "kv+cas"
    cas = True

    async def setup(self) -> None:
        self.kv = await self.js.create_key_value(
            KeyValueConfig(f"kv{self.uid}{int(self.cas)}", history=1)
        )

    async def deposit(self, loc: str, amount: float, t: float) -> None:
        while True:
            try:
                e = await self.kv.get(loc)
                s, u = json.loads(e.value or b"[0, 0]")
                rev = e.revision
            except nats.js.errors.KeyNotFoundError:
                s, u, rev = 0.0, t, 0
            value = json.dumps([s * 2 ** (-(t - u) / self.h) + amount, t]).encode()
            if not self.cas:
                await self.kv.put(loc, value)
                return
            try:
                await self.kv.update(loc, value, last=rev)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                self.retries += 1

    async def strength(self, loc: str, now: float) -> float:
        try:
            s, u = json.loads((await self.kv.get(loc)).value or b"[0, 0]")
        except nats.js.errors.KeyNotFoundError:
            return 0.0
        return float(s * 2 ** (-(now - u) / self.h))


class KvNoCas(KvCas):
    name = "kv-no-cas"
    cas = False


class EpochCounter(Design):
    name = "epoch-counter"
    epoch_half_lives = 16

    async def setup(self) -> None:
        self.stream = f"EP_{self.uid}"
        self.epoch_s = self.epoch_half_lives * self.h
        await self.js.add_stream(
            StreamConfig(
                name=self.stream,
                subjects=[f"ep{self.uid}.>"],
                allow_msg_counter=True,
                allow_direct=True,
                max_msgs_per_subject=1,
                storage=StorageType.FILE,
            )
        )

    async def deposit(self, loc: str, amount: float, t: float) -> None:
        epoch = math.floor(t / self.epoch_s)
        inc = round(amount * SCALE * 2 ** ((t - epoch * self.epoch_s) / self.h))
        await self.js.publish(f"ep{self.uid}.{epoch}.{loc}", b"", headers={"Nats-Incr": f"+{inc}"})

    async def strength(self, loc: str, now: float) -> float:
        epoch = math.floor(now / self.epoch_s)
        total = 0.0
        for e in (epoch - 1, epoch):
            try:
                m = await self.js.get_msg(
                    self.stream, subject=f"ep{self.uid}.{e}.{loc}", direct=True
                )
            except nats.js.errors.NotFoundError:
                continue
            v = int(json.loads(m.data or b"{}")["val"])
            total += v / SCALE * 2 ** (-(now - e * self.epoch_s) / self.h)
        return total


DESIGNS: list[type[Design]] = [CounterEvaporator, KvCas, KvNoCas, EpochCounter]


async def bounded(n: int, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``jobs`` with at most ``n`` at once."""
    it = iter(jobs)

    async def worker() -> None:
        for job in it:
            await job()

    await asyncio.gather(*(worker() for _ in range(n)))


async def contention(
    js: JetStreamContext, cls: type[Design], tasks: int, per_task: int, hot: int, uid: str
) -> dict[str, float]:
    d = cls(js, NO_DECAY_H, uid)
    await d.setup()
    try:
        locs = [f"hot{i}" for i in range(hot)]

        async def depositor(i: int) -> None:
            for j in range(per_task):
                await d.deposit(locs[(i + j) % hot], 1.0, time.time())

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(depositor(i) for i in range(tasks))), 300)
        elapsed = time.perf_counter() - start
        now = time.time()
        stored = sum([await d.strength(loc, now) for loc in locs])
        n = tasks * per_task
        return {
            "deposits_per_s": n / elapsed,
            "lost_count": round(n - stored),
            "cas_retries_count": d.retries,
        }
    finally:
        await d.close()


async def accuracy(
    js: JetStreamContext, cls: type[Design], half_life_s: float, duration_s: float, uid: str
) -> float:
    d = cls(js, half_life_s, uid)
    await d.setup()
    rng = random.Random(7)
    deposits: list[tuple[str, float, float]] = []
    worst = 0.0
    stop = asyncio.Event()
    lock = asyncio.Lock()  # a read sees every deposit recorded so far, and only those

    async def depositor() -> None:
        while not stop.is_set():
            async with lock:
                loc, amount, t = f"loc{rng.randrange(3)}", rng.uniform(0.5, 5.0), time.time()
                await d.deposit(loc, amount, t)
                deposits.append((loc, amount, t))
            await asyncio.sleep(rng.uniform(0.0, 0.2))

    try:
        runners = [asyncio.create_task(depositor()) for _ in range(4)]
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            await asyncio.sleep(0.25)
            async with lock:
                now = time.time()
                for loc in ("loc0", "loc1", "loc2"):
                    got = await d.strength(loc, now)
                    want = sum(
                        a * 2 ** (-(now - t) / half_life_s) for lo, a, t in deposits if lo == loc
                    )
                    if want > 0.1:
                        worst = max(worst, abs(got - want) / want)
        stop.set()
        await asyncio.gather(*runners)
    finally:
        await d.close()
    return worst


async def main(args: argparse.Namespace) -> None:
    report = Report("traces designs")
    with NatsServer() as srv:
        nc: NatsClient = await nats.connect(srv.client_url)
        js = nc.jetstream(timeout=30)
        report.print_header(**{"nats-server": nc.connected_server_version.__str__()})
        rows = []
        for cls in DESIGNS:
            key = cls.name.replace("+", "_").replace("-", "_")
            console.print(f"{cls.name}: contention")
            c = await contention(js, cls, args.tasks, args.per_task, args.hot, uid=f"c{key[:6]}")
            console.print(f"{cls.name}: decay accuracy")
            err = await accuracy(js, cls, args.half_life_s, args.accuracy_s, uid=f"a{key[:6]}")
            for k, v in c.items():
                report.add(f"{key}_{k}", round(v, 1))
            report.add(f"{key}_decay_max_error_ratio", round(err, 5))
            rows.append(
                [
                    cls.name,
                    c["deposits_per_s"],
                    int(c["lost_count"]),
                    int(c["cas_retries_count"]),
                    f"{err:.2%}",
                ]
            )
        await nc.close()
    report.table(
        f"{args.tasks} tasks x {args.per_task} deposits on {args.hot} hot locations; "
        f"decay: half-life {args.half_life_s} s over {args.accuracy_s} s",
        ["design", "deposits/s", "lost", "CAS retries", "max decay error"],
        rows,
    )
    report.write_json(args.json)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--per-task", type=int, default=200)
    p.add_argument("--hot", type=int, default=4)
    p.add_argument("--half-life-s", type=float, default=5.0)
    p.add_argument("--accuracy-s", type=float, default=10.0)
    p.add_argument("--json", type=Path, default=None)
    asyncio.run(main(p.parse_args()))


if __name__ == "__main__":
    cli()
