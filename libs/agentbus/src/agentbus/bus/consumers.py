"""Consumers: an agent's durables (its own or provisioned) and counting by filter.

``count_matching`` tells how many messages match a filter without reading them.

An agent without credentials (or with an operator's) creates or updates its
consumers itself. An agent running with credentials minted for it
(``Bus.provisioned``) may not create consumers: whoever minted them (its supervisor,
or ``agentbus auth agent``) made them from the deployment (``agentbus.auth.provision``),
and the agent only checks that they exist.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

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


async def count_matching(
    bus: Bus,
    stream: str,
    filters: Sequence[str],
    *,
    start_seq: int | None = None,
    start_time: datetime | None = None,
) -> int:
    """How many messages of ``stream`` match ``filters`` from a start on (none: all).

    Reads no message: makes an ephemeral consumer starting at ``start_seq`` (or the
    first message stored at or after ``start_time``), takes its ``num_pending`` and
    deletes it. Two requests.

    Raises:
        UnavailableError: no such stream, or NATS failed.
    """
    config = ConsumerConfig(
        name=f"count-{uuid.uuid4().hex}",
        ack_policy=AckPolicy.NONE,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=5.0,
    )
    if len(filters) == 1:
        config.filter_subject = filters[0]
    else:
        config.filter_subjects = list(filters)
    if start_seq is not None:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, start_seq
    elif start_time is not None:
        config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, start_time
    try:
        info = await bus.js.add_consumer(stream, config)
    except nats.js.errors.NotFoundError as exc:
        raise UnavailableError(f"stream {stream} does not exist") from exc
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        raise UnavailableError(f"cannot read stream {stream}: {exc!r}") from exc
    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
        await bus.js.delete_consumer(stream, str(config.name))
    return info.num_pending or 0
