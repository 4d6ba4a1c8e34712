"""An agent process for the inbox tests: appends each direct message to a file.

Run as ``python -m tests.agentbus._mail_agent`` with ``AGENTBUS_AGENT_ID``,
``AGENTBUS_NATS_URL``, ``AGENTBUS_PREFIX`` and ``AGENTBUS_TEST_MAIL_LOG`` (the file).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from agentbus.messages import encode
from agentbus.messaging import MessageContext
from agentbus.runtime import Agent

agent = Agent("mail")


@agent.on_message
async def heard(ctx: MessageContext, payload: Any) -> None:
    line = encode({"id": ctx.message_id, "kind": ctx.kind, "payload": payload}) + b"\n"
    await asyncio.to_thread(_append, Path(os.environ["AGENTBUS_TEST_MAIL_LOG"]), line)


def _append(path: Path, line: bytes) -> None:
    with path.open("ab") as out:
        out.write(line)


if __name__ == "__main__":
    agent.main()
