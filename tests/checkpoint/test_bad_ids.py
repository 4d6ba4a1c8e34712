"""Ids whose escaped key would not fit a NATS protocol line get a 400.

Each id may have 256 characters, but a character outside ``[A-Za-z0-9_-]`` is
escaped as ``=HH`` per UTF-8 byte: 256 emoji are 3,072 key characters, and an agent
id plus a thread id of them made a subject over nats-server's 4 KiB control line,
which closes the service's connection for good. The service runs as a process.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from agentbus.bus import Bus
from agentbus.errors import ContractError, NotFoundError
from agentbus.messages import (
    CheckpointReply,
    CheckpointsDeleted,
    CheckpointsReply,
    DeleteThread,
    ForkCheckpoint,
    GetCheckpoint,
    ListCheckpoints,
    ListThreads,
    Message,
    PruneCheckpoints,
    PutCheckpoint,
    ThreadsReply,
)
from tests._harness.polling import answers, eventually
from tests._harness.services import spawn_service

pytestmark = [pytest.mark.nats, pytest.mark.slow]

WIDE = "\U0001f600" * 256  # 256 characters, 3,072 once escaped


@pytest.fixture
async def checkpoint_process(bus: Bus, tmp_path: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    log = tmp_path / "checkpoint.log"
    proc = spawn_service("checkpoint", bus.settings.nats_url, bus.names.prefix, log)
    get = bus.names.owner_endpoint("checkpoint", "get", "a")
    try:
        await eventually(
            lambda: answers(
                lambda: bus.request(
                    get, GetCheckpoint(agent_id="a", thread_id="t"), CheckpointReply
                )
            ),
            what="checkpoint answers",
        )
        yield proc
    finally:
        proc.terminate()
        proc.wait(20)


BAD: list[tuple[str, Message, type[Message]]] = [
    ("get", GetCheckpoint(agent_id=WIDE, thread_id=WIDE), CheckpointReply),
    ("list", ListCheckpoints(agent_id=WIDE, thread_id=WIDE), CheckpointsReply),
    ("put", PutCheckpoint(agent_id=WIDE, thread_id=WIDE, data=b"x"), CheckpointReply),
    ("delete", DeleteThread(agent_id=WIDE, thread_id=WIDE), CheckpointsDeleted),
    ("prune", PruneCheckpoints(agent_id=WIDE, thread_id=WIDE), CheckpointsDeleted),
    (
        "fork",
        ForkCheckpoint(agent_id="a", thread_id="t", new_agent_id=WIDE, new_thread_id=WIDE),
        CheckpointReply,
    ),
]


@pytest.mark.timeout(90)
async def test_wide_ids_get_400_and_the_service_keeps_serving(
    bus: Bus, checkpoint_process: subprocess.Popen[bytes]
) -> None:
    put = bus.names.owner_endpoint("checkpoint", "put", "a")
    await bus.request(put, PutCheckpoint(agent_id="a", thread_id="t", data=b"x"), CheckpointReply)
    for verb, request, reply in BAD:
        owner = msgspec.structs.asdict(request)["agent_id"]
        with pytest.raises(ContractError, match="as a key"):
            await bus.request(bus.names.owner_endpoint("checkpoint", verb, owner), request, reply)
    threads = await bus.request(  # an agent id alone fits: no error, nothing found
        bus.names.owner_endpoint("checkpoint", "threads", WIDE),
        ListThreads(agent_id=WIDE),
        ThreadsReply,
    )
    assert threads.threads == []
    with pytest.raises(NotFoundError):
        await bus.request(
            bus.names.owner_endpoint("checkpoint", "get", "a"),
            GetCheckpoint(agent_id="a", thread_id="t2"),
            CheckpointReply,
        )
    assert checkpoint_process.poll() is None
