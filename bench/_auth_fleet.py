"""The agentbus row of ``just bench tasks`` with NATS auth on: the server and the identities.

A fresh operator (``agentbus auth init`` in the run's temp dir) and a nats-server whose
configuration adds that directory's ``server.conf``. Every participant connects as
itself, as in production:

- the scheduler with its service creds (``creds/scheduler.creds``);
- the agent with creds minted by ``mint_agent`` from its deployment (what a supervisor
  does), after an operator connection made the fleet and provisioned its consumers;
- the caller with the gateway's service creds: the identity that submits and waits on
  behalf of every HTTP caller, with a least-privilege allow-list (operator creds,
  ``>``, would hide the cost of matching a long one).

``compare`` reports the row against the agentbus row of the same rounds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agentbus.auth import nats_jwt
from agentbus.auth.authority import AuthDir, Authority, init_auth, write_secret
from agentbus.auth.provision import mint_agent, provision_agent
from agentbus.bus import Bus
from agentbus.messages import Deployment
from agentbus.settings import BusSettings
from bench._loops import Run, compare_rows
from bench.common import Report
from tests._harness.nats_server import NatsServer

AGENT_ID = "bench-echo-0"
DEPLOYMENT = Deployment(name="echo", capabilities=["echo"])
CALLER_IDENTITY = "gateway"
AGENT_CREDS_TTL_S = 24 * 3600.0
"""Longer than any run: expiry is not what is measured (a JWT's size does not depend on it)."""


@dataclass(frozen=True)
class Identities:
    """The creds file of each participant of the row."""

    scheduler: Path
    agent: Path
    caller: Path

    def sizes(self) -> dict[str, tuple[int, int, int]]:
        """Per participant: (user JWT bytes, publish allow entries, subscribe allow entries)."""
        out = {}
        for who, path in (
            ("scheduler", self.scheduler),
            ("agent", self.agent),
            ("caller", self.caller),
        ):
            jwt = _user_jwt(path)
            claims = nats_jwt.decode(jwt)["nats"]
            out[who] = (
                len(jwt.encode()),
                len(claims["pub"].get("allow", [])),
                len(claims["sub"].get("allow", [])),
            )
        return out


def _user_jwt(creds: Path) -> str:
    lines = creds.read_text().splitlines()
    return lines[lines.index("-----BEGIN NATS USER JWT-----") + 1].strip()


@contextlib.contextmanager
def auth_nats_server(root: Path, prefix: str) -> Iterator[tuple[NatsServer, AuthDir]]:
    """A nats-server (file storage under ``root``) trusting a new operator made in ``root``."""
    auth = init_auth(root / "auth", prefix=prefix)
    with NatsServer(root / "js", config=auth.server_conf.read_text()) as server:
        yield server, auth


async def provision(url: str, auth: AuthDir, prefix: str) -> Identities:
    """Make the fleet and the agent's consumers as the operator; mint the agent's creds."""
    operator = await Bus.connect(
        BusSettings(nats_url=url, prefix=prefix, creds_file=auth.creds("operator")),
        name="bench-operator",
    )
    try:
        await operator.ensure()
        await provision_agent(operator, DEPLOYMENT, AGENT_ID)
        creds = mint_agent(Authority(auth), operator, DEPLOYMENT, AGENT_ID, ttl_s=AGENT_CREDS_TTL_S)
    finally:
        await operator.close()
    agent = auth.creds(f"agent-{AGENT_ID}")
    write_secret(agent, creds.creds_text())
    return Identities(auth.creds("scheduler"), agent, auth.creds(CALLER_IDENTITY))


def record_identities(identities: Identities, rep: Report) -> None:
    """Add each participant's JWT size and allow-list lengths to ``rep`` and print them."""
    rows = []
    for who, (jwt_bytes, pub, sub) in identities.sizes().items():
        rep.add(f"agentbus_auth_{who}_jwt_size_bytes", jwt_bytes)
        rep.add(f"agentbus_auth_{who}_publish_allow_count", pub)
        rep.add(f"agentbus_auth_{who}_subscribe_allow_count", sub)
        rows.append([who, jwt_bytes, pub, sub])
    rep.table(
        f"identities of the auth row (caller: {CALLER_IDENTITY} creds)",
        ["participant", "user JWT bytes", "publish allows", "subscribe allows"],
        rows,
    )


def compare(on: dict[int, list[Run]], off: dict[int, list[Run]], rep: Report) -> None:
    """Auth on / auth off, per level and measure (``bench._loops.compare_rows``).

    Figures: ``agentbus_auth_vs_agentbus_inflight<N><measure>_ratio`` (and ``_min``,
    ``_max`` over the rounds), where the throughput's measure is empty, e.g.
    ``agentbus_auth_vs_agentbus_inflight64_ratio``, ``..._inflight64_p99_latency_ratio``.
    """
    ratios = compare_rows(
        on,
        off,
        rep,
        key="agentbus_auth_vs_agentbus",
        labels=("on", "off"),
        title="auth on vs off (median over rounds; ratio: median of the per-round on/off ratios)",
    )
    targets: list[list[object]] = []
    for level, ratio in ratios.items():
        cost = 1 - ratio
        met = "yes" if cost < 0.05 else "NO"
        targets.append([f"auth cost in tasks/s at {level} < 5 %", f"{cost:.1%}", met])
    rep.table("targets (issue 12)", ["target", "measured", "met"], targets)
