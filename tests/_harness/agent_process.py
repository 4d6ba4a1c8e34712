"""An agent module run as its own process against a test's bus: started, then reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agentbus.bus import Bus

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def agent_process(
    bus: Bus, module: str, agent_id: str, out_dir: Path, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m module`` as agent ``agent_id`` on ``bus``'s server and prefix.

    ``env`` adds or overrides variables (``AGENTBUS_AGENT_*`` settings, the module's
    own); output goes to ``out_dir/<agent_id>.out``. At the end: SIGTERM, then SIGKILL
    after 20 s, and the process is reaped.
    """
    full = {
        **os.environ,
        "AGENTBUS_AGENT_ID": agent_id,
        "AGENTBUS_NATS_URL": bus.settings.nats_url,
        "AGENTBUS_PREFIX": bus.names.prefix,
        **env,
    }
    with (out_dir / f"{agent_id}.out").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
