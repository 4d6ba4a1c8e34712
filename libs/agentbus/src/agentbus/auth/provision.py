"""Credentials and consumers for one agent replica, derived from its deployment.

An agent with minted credentials may not create streams or consumers
(``agentbus.auth.agent_grants.agent_permissions``), so whoever mints them (the
replica's supervisor, or ``agentbus auth agent`` for an agent started by hand) first
creates what the deployment declares: the task consumers of its capabilities (every
priority band), its inbox consumer and the consumers of its named subscriptions (the
scheduler creates its trace kinds when the deployment is stored). The configurations
are the ones the runtime would make itself.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from agentbus.auth.agent_grants import AgentGrant, agent_permissions
from agentbus.auth.authority import Authority, Credentials
from agentbus.bus import Bus
from agentbus.errors import ContractError
from agentbus.events.routes import subscription_plan
from agentbus.messages import Deployment
from agentbus.messaging.inbox import inbox_consumer_config
from agentbus.names import BANDS, check_topic_pattern
from agentbus.runtime.delivery import task_consumer_config
from agentbus.settings import AgentSettings

REPLICA_CREDS_TTL_S = 3600.0
"""Default lifetime of a replica's credentials; its supervisor renews them at half."""


def agent_grant(deployment: Deployment, agent_id: str) -> AgentGrant:
    """What replica ``agent_id`` of ``deployment`` may do.

    Raises:
        ContractError: a ``publishes`` pattern is not a valid topic pattern.
    """
    for pattern in deployment.publishes:
        check_topic_pattern(pattern)
    return AgentGrant(
        agent_id=agent_id,
        capabilities=tuple(deployment.capabilities),
        deployment=deployment.name,
        publishes=tuple(deployment.publishes),
        subscriptions={s.name: s.mode for s in deployment.subscriptions if s.name},
        trace_kinds=tuple(k.kind for k in deployment.trace_kinds),
        asks=tuple(deployment.asks),
    )


def mint_agent(
    authority: Authority,
    bus: Bus,
    deployment: Deployment,
    agent_id: str,
    *,
    ttl_s: float = REPLICA_CREDS_TTL_S,
) -> Credentials:
    """Mint credentials for replica ``agent_id`` of ``deployment``, valid ``ttl_s`` s.

    Raises:
        ContractError: the deployment declares an invalid topic pattern.
    """
    grant = agent_grant(deployment, agent_id)
    return authority.mint(
        f"agent-{agent_id}",
        agent_permissions(bus.names, grant),
        expires_in_s=ttl_s,
        tags=(f"deployment:{deployment.name}",),
    )


async def provision_agent(
    bus: Bus,
    deployment: Deployment,
    agent_id: str,
    settings: AgentSettings | None = None,
) -> None:
    """Create the consumers replica ``agent_id`` reads, if missing.

    (Its trace kinds are the scheduler's to create, when the deployment is stored.)

    ``settings``: the agent's lease and inbox options (defaults: ``AgentSettings``
    read from the deployment's ``env``). Subscriptions without a ``name`` are skipped
    (their consumer names come from the handler's function name, unknown here).

    Raises:
        ContractError: the deployment declares an invalid topic pattern.
        nats.js.errors.Error: the server refused a consumer or stream.
    """
    names = bus.names
    s = settings or _agent_settings(deployment)
    # At once, not one after another: after a server's loss each request may wait for
    # its consumer's new leader, and a replica's start waits for all of them.
    creates = [
        bus.js.add_consumer(
            names.tasks_stream, task_consumer_config(names, capability, band, lease_s=s.lease_s)
        )
        for capability in deployment.capabilities
        for band in range(BANDS)
    ]
    inbox = inbox_consumer_config(names, agent_id, s, bus.settings.inbox_max_age_s)
    creates.append(bus.js.add_consumer(names.inbox_stream, inbox))
    await asyncio.gather(*creates)
    for subscription in deployment.subscriptions:
        if subscription.name is None:
            logger.warning(
                "subscription without a name not provisioned",
                deployment=deployment.name,
                pattern=subscription.pattern,
            )
            continue
        owner = deployment.name if subscription.mode == "shared" else agent_id
        for consumer in subscription_plan(names, subscription, owner=owner, ack_wait_s=s.lease_s):
            try:
                await bus.js.add_consumer(names.topics_stream, consumer.config)
            except Exception as exc:  # exists with another start: bound as it is
                if "can not be updated" not in str(exc) and "10148" not in str(exc):
                    raise


def _agent_settings(deployment: Deployment) -> AgentSettings:
    """The agent settings the deployment's ``env`` gives its replicas."""
    prefix = "AGENTBUS_AGENT_"
    fields = {
        k[len(prefix) :].lower(): v
        for k, v in deployment.env.items()
        if isinstance(v, str) and k.startswith(prefix)
    }
    known = {k: v for k, v in fields.items() if k in AgentSettings.model_fields}
    try:
        return AgentSettings.model_validate(known)
    except ValueError as exc:
        raise ContractError(f"deployment {deployment.name!r}: bad agent env: {exc}") from exc
