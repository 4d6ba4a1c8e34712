"""The registry and fleet calls of ``Client``: agents, nodes, deployments, placements."""

from __future__ import annotations

from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors

from agentbus.bus import Bus
from agentbus.errors import ContractError, SecretsKeyMissingError, UnavailableError
from agentbus.kv.replay import replay
from agentbus.messages import (
    AgentInfo,
    AgentsReply,
    DeleteDeployment,
    Deploy,
    Deployment,
    DeployReply,
    GetNodeStatus,
    ListAgents,
    ListNodes,
    ListPlacements,
    NodeInfo,
    NodesReply,
    NodeStatusReply,
    PlacementsReply,
    ScaleDeployment,
    SecretsPublicKey,
)
from agentbus.names import Names, check_token

S = TypeVar("S", bound=msgspec.Struct)


class FleetCalls:
    """Requests to the registry and the scheduler's fleet endpoints (mixed into ``Client``)."""

    bus: Bus
    names: Names

    async def agents(self, capability: str | None = None) -> list[AgentInfo]:
        """Live agents (optionally only those with ``capability``), from the registry.

        Raises:
            ContractError: ``capability`` is not a valid token.
        """
        if capability is not None:
            check_token("capability", capability)
        reply = await self.bus.request(
            self.names.endpoint("registry", "agents"),
            ListAgents(capability=capability),
            AgentsReply,
        )
        return reply.agents

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes, from the registry."""
        reply = await self.bus.request(
            self.names.endpoint("registry", "nodes"), ListNodes(), NodesReply
        )
        return reply.nodes

    async def deploy(self, deployment: Deployment) -> DeployReply:
        """Create or update a deployment; the scheduler places its replicas."""
        return await self.bus.request(
            self.names.endpoint("scheduler", "deploy"), Deploy(deployment=deployment), DeployReply
        )

    async def delete_deployment(self, name: str) -> DeployReply:
        """Delete a deployment; its replicas are stopped by their supervisors.

        Raises:
            ContractError: ``name`` is not a valid token.
        """
        check_token("deployment name", name)
        return await self.bus.request(
            self.names.endpoint("scheduler", "delete"), DeleteDeployment(name=name), DeployReply
        )

    async def scale(self, name: str, replicas: int) -> DeployReply:
        """Set the replica count of deployment ``name`` (other fields stay as stored).

        Raises:
            ContractError: ``name`` is not a valid token.
            NotFoundError: no such deployment.
            ConflictError: the spec kept changing under the scheduler's compare-and-set.
        """
        check_token("deployment name", name)
        return await self.bus.request(
            self.names.endpoint("scheduler", "scale"),
            ScaleDeployment(name=name, replicas=replicas),
            DeployReply,
        )

    async def placements(self, deployment: str | None = None) -> PlacementsReply:
        """Placements and unplaced replicas (with reasons) of one deployment, or all.

        Raises:
            ContractError: ``deployment`` is not a valid token.
        """
        if deployment is not None:
            check_token("deployment name", deployment)
        return await self.bus.request(
            self.names.endpoint("scheduler", "placements"),
            ListPlacements(deployment=deployment),
            PlacementsReply,
        )

    async def deployments(self) -> dict[str, Deployment]:
        """Stored deployment specs by name (read from KV ``<p>_deployments``)."""
        return await self.bucket_values(self.names.deployments_bucket, Deployment)

    async def secrets_public_key(self) -> SecretsPublicKey:
        """The fleet's secrets public key, as a supervisor published it.

        Read from KV ``<p>_secrets_keys``, key ``public``; ``agentbus.fleet.secrets``
        seals secret env values to it.

        Raises:
            SecretsKeyMissingError: no supervisor has published one.
            ContractError: the stored entry does not decode.
            UnavailableError: the bucket does not exist or NATS failed.
        """
        bucket = self.names.secrets_keys_bucket
        kv = await self.bus.kv(bucket)
        try:
            entry = await kv.get(Names.SECRETS_PUBLIC_KEY_ENTRY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise SecretsKeyMissingError(bucket) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"cannot read KV {bucket!r}: {exc!r}") from exc
        if not entry.value:
            raise SecretsKeyMissingError(bucket)
        try:
            return msgspec.json.decode(entry.value, type=SecretsPublicKey)
        except msgspec.DecodeError as exc:
            raise ContractError(
                f"KV {bucket!r} entry {Names.SECRETS_PUBLIC_KEY_ENTRY!r} is not a key: {exc}"
            ) from exc

    async def node_status(self, node_id: str, *, timeout_s: float | None = None) -> NodeStatusReply:
        """What node ``node_id``'s supervisor runs (``<p>.supervisor.<node_id>.status``).

        Raises:
            ContractError: ``node_id`` is not a valid token.
            UnavailableError: no supervisor of that node answers.
            RequestTimeoutError: no reply within ``timeout_s`` (default from settings).
        """
        check_token("node id", node_id)
        return await self.bus.request(
            f"{self.names.prefix}.supervisor.{node_id}.status",
            GetNodeStatus(),
            NodeStatusReply,
            timeout_s=timeout_s,
        )

    async def bucket_values(self, bucket: str, type_: type[S]) -> dict[str, S]:
        """Every current entry of KV ``bucket`` decoded as ``type_``, by key.

        One watch replay (not ``keys()`` plus a get per key, which can end early under
        concurrent writes, nats.py #995); entries that do not decode are skipped.

        Raises:
            UnavailableError: the bucket does not exist.
        """
        return await replay(await self.bus.kv(bucket), type_)
