"""Durable consumers an agent reads: created by the agent, or provisioned for it.

An agent without credentials (or with an operator's) creates or updates its
consumers itself. An agent running with credentials minted for it
(``Bus.provisioned``) may not create consumers: whoever minted them (its supervisor,
or ``agentbus auth agent``) made them from the deployment (``agentbus.auth.provision``),
and the agent only checks that they exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.api import ConsumerConfig

from agentbus.errors import UnavailableError

if TYPE_CHECKING:
    from agentbus.bus.connection import Bus


async def ensure_consumer(bus: Bus, stream: str, config: ConsumerConfig) -> None:
    """Create or update durable ``config`` on ``stream``; provisioned: check it exists.

    Raises:
        UnavailableError: provisioned, and the consumer does not exist (the deployment
            does not declare what the agent reads, or nobody provisioned it).
        nats.js.errors.Error: the server refused the consumer.
    """
    assert config.durable_name is not None
    if not bus.provisioned:
        await bus.js.add_consumer(stream, config)
        return
    await check_consumer(bus, stream, config.durable_name)


async def check_consumer(bus: Bus, stream: str, name: str) -> None:
    """Check that consumer ``name`` of ``stream`` exists.

    Raises:
        UnavailableError: it does not.
    """
    try:
        await bus.js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError as exc:
        raise UnavailableError(
            f"consumer {name!r} of {stream} does not exist, and this agent's credentials "
            "may not create it: declare the capability or subscription in the "
            "deployment, whose supervisor provisions it (docs/operations.md, "
            '"Authentication")'
        ) from exc
