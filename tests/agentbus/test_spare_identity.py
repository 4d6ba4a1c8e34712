"""A warm spare's side of the hand-over: it waits on its FIFO, takes only ``AGENTBUS_*``
strings, and exits with ``EXIT_NO_IDENTITY`` when the claim is abandoned."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentbus.runtime.spare import (
    EXIT_NO_IDENTITY,
    IDENTITY_FIFO,
    READY_FIFO,
    SPARE_DIR_ENV,
    IdentityError,
    parse_identity,
)

SPARE = (
    "from agentbus.runtime.spare import take_identity\n"
    "import os\n"
    "print(take_identity(), os.environ.get('AGENTBUS_AGENT_ID'), "
    f"'{SPARE_DIR_ENV}' in os.environ, flush=True)\n"
)


def test_identity_is_an_object_of_agentbus_strings() -> None:
    assert parse_identity(b'{"AGENTBUS_AGENT_ID": "a-1"}') == {"AGENTBUS_AGENT_ID": "a-1"}
    for bad in (b"[1]", b"{}", b"nope", b'{"PATH": "/x"}', b'{"AGENTBUS_AGENT_REPLICA": 1}'):
        with pytest.raises(IdentityError):
            parse_identity(bad)


def spare(folder: Path) -> subprocess.Popen[str]:
    """A spare process over ``folder``, whose two FIFOs are made here."""
    os.mkfifo(folder / IDENTITY_FIFO)
    os.mkfifo(folder / READY_FIFO)
    env = {**os.environ, SPARE_DIR_ENV: str(folder)}
    env.pop("AGENTBUS_AGENT_ID", None)
    return subprocess.Popen(
        [sys.executable, "-c", SPARE], env=env, stdout=subprocess.PIPE, text=True
    )


def open_for_writing(fifo: Path, timeout_s: float = 20.0) -> int:
    """Open ``fifo`` for writing once the spare reads it (as the supervisor does)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: the spare is still importing
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_a_spare_says_it_is_ready_then_takes_the_identity_written(tmp_path: Path) -> None:
    process = spare(tmp_path)
    ready = os.open(tmp_path / READY_FIFO, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert select.select([ready], [], [], 20)[0] == [ready]
        assert os.read(ready, 16) == b"r"
    finally:
        os.close(ready)
    fd = open_for_writing(tmp_path / IDENTITY_FIFO)
    os.write(fd, json.dumps({"AGENTBUS_AGENT_ID": "warm-3"}).encode())
    os.close(fd)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert out.split() == ["True", "warm-3", "False"]


def test_an_abandoned_claim_ends_the_spare(tmp_path: Path) -> None:
    process = spare(tmp_path)
    os.close(
        open_for_writing(tmp_path / IDENTITY_FIFO)
    )  # opened, nothing written: the claim failed
    process.communicate(timeout=20)
    assert process.returncode == EXIT_NO_IDENTITY


def test_not_a_spare_without_the_fifo_setting() -> None:
    env = {k: v for k, v in os.environ.items() if k != SPARE_DIR_ENV}
    env["AGENTBUS_AGENT_ID"] = "cold-0"
    out = subprocess.run(
        [sys.executable, "-c", SPARE], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "cold-0", "False"]
