"""Deployments: the ``deploy``, ``scale``, ``delete`` and ``placements`` endpoints.

Any scheduler instance answers them. Specs are stored in KV ``<p>_deployments``
(``scale`` with compare-and-set on the spec's revision); the instance then has them
placed: the holder of the placement lease places at once (``placer.Placer``), any
other waits (``deploy_wait_s``) until its mirror shows the holder's placements.
Replies carry the placements and unplaced replicas as this instance's mirrors show
them (``fleet_state.FleetState``).
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger

from agentbus.errors import ConflictError, NotFoundError, SpecError, SpecIssue, UnavailableError
from agentbus.fleet.spec import validate_deployment
from agentbus.messages import (
    DeleteDeployment,
    Deploy,
    Deployment,
    DeploymentChange,
    DeployReply,
    ListPlacements,
    PlacementsReply,
    ScaleDeployment,
    encode,
)
from agentbus.names import check_token
from agentbus.traces.kinds import load_or_create_kind
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.fleet.placer import Placer
from agentbus_scheduler.fleet.state import FleetState

_WAIT_POLL_S = 0.05
_SCALE_ATTEMPTS = 5


class Fleet:
    """The deployment endpoints, over the fleet state and the placement loop."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.ctx = ctx
        self.state = FleetState(ctx)
        self.placer = Placer(ctx, self.state)

    async def start(self) -> None:
        """Start mirroring the fleet state."""
        await self.state.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Run the placement loop until ``stop`` (``Placer.run``)."""
        await self.placer.run(stop)

    async def close(self) -> None:
        """Stop mirroring the fleet state."""
        await self.state.close()

    def _reply(self, deployment: Deployment, change: DeploymentChange) -> DeployReply:
        return DeployReply(
            deployment=deployment,
            placements=self.state.placements_of(deployment.name),
            unplaced=self.state.unplaced_of(deployment.name),
            change=change,
        )

    async def _settle(self, name: str) -> None:
        """Place ``name`` now (lease holder), or wait until the holder has placed it."""
        if self.placer.lease.held:
            await self.placer.place_once()
            return
        self.state.dirty.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.settings.deploy_wait_s
        prefix = f"{name}."
        while loop.time() < deadline:
            plan = self.state.plan()
            pending = [k for k in (*plan.to_put, *plan.to_delete) if k.startswith(prefix)]
            if not pending:
                return
            await asyncio.sleep(_WAIT_POLL_S)
        logger.warning("placement not settled in time (no lease holder?)", deployment=name)

    # -- handlers -------------------------------------------------------------------------
    async def deploy(self, request: Deploy) -> DeployReply:
        """Store a deployment spec, have it placed and reply with its placements.

        Creates the deployment's trace kinds that do not exist yet.

        Raises:
            ContractError: invalid spec.
            UnavailableError: fleet state not loaded, or a KV write failed.
        """
        deployment = request.deployment
        validate_deployment(deployment)
        await self.state.wait_ready()
        old = self.state.deployments.values.get(deployment.name)
        change: DeploymentChange = (
            "created" if old is None else ("unchanged" if old == deployment else "updated")
        )
        kv = await self.ctx.bus.kv(self.ctx.bus.names.deployments_bucket)
        try:
            # Replicas with minted credentials may not create trace streams.
            for kind in deployment.trace_kinds:
                await load_or_create_kind(self.ctx.bus, kind)
            if change != "unchanged":
                revision = await kv.put(deployment.name, encode(deployment))
                self.state.deployments.apply(deployment.name, revision, deployment)
            await self._settle(deployment.name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not store deployment: {exc!r}") from exc
        logger.info(
            "deployment stored",
            deployment=deployment.name,
            change=change,
            replicas=deployment.replicas,
        )
        return self._reply(deployment, change)

    async def scale(self, request: ScaleDeployment) -> DeployReply:
        """Set ``replicas`` of a stored deployment (compare-and-set on its revision).

        Raises:
            NotFoundError: no deployment of that name.
            ConflictError: the spec kept changing under the compare-and-set.
            UnavailableError: fleet state not loaded, or a KV write failed.
        """
        check_token("deployment name", request.name)
        await self.state.wait_ready()
        kv = await self.ctx.bus.kv(self.ctx.bus.names.deployments_bucket)
        try:
            for _ in range(_SCALE_ATTEMPTS):
                try:
                    entry = await kv.get(request.name)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    raise NotFoundError(f"deployment {request.name!r} not found") from None
                old = _stored_spec(request.name, entry.value)
                new = msgspec.structs.replace(old, replicas=request.replicas)
                if new == old:
                    await self._settle(old.name)
                    return self._reply(old, "unchanged")
                try:
                    revision = await kv.update(request.name, encode(new), last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                self.state.deployments.apply(request.name, revision, new)
                await self._settle(new.name)
                logger.info("deployment scaled", deployment=new.name, replicas=new.replicas)
                return self._reply(new, "updated")
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not scale deployment: {exc!r}") from exc
        raise ConflictError(f"deployment {request.name!r} changed {_SCALE_ATTEMPTS} times")

    async def delete(self, request: DeleteDeployment) -> DeployReply:
        """Delete a deployment and its placements; reply with the deleted spec.

        Raises:
            NotFoundError: no deployment of that name.
            UnavailableError: fleet state not loaded, or a KV write failed.
        """
        check_token("deployment name", request.name)
        await self.state.wait_ready()
        deployment = self.state.deployments.values.get(request.name)
        if deployment is None:
            raise NotFoundError(f"deployment {request.name!r} not found")
        kv = await self.ctx.bus.kv(self.ctx.bus.names.deployments_bucket)
        try:
            await kv.delete(request.name)
            self.state.deployments.forget(request.name)
            await self._settle(request.name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise UnavailableError(f"could not delete deployment: {exc!r}") from exc
        logger.info("deployment deleted", deployment=request.name)
        return self._reply(deployment, "deleted")

    async def list_placements(self, request: ListPlacements) -> PlacementsReply:
        """Placements and unplaced replicas of one deployment, or of all.

        Raises:
            UnavailableError: fleet state not loaded.
        """
        await self.state.wait_ready()
        return PlacementsReply(
            placements=self.state.placements_of(request.deployment),
            unplaced=self.state.unplaced_of(request.deployment),
        )


def _stored_spec(name: str, value: bytes | None) -> Deployment:
    """Decode the stored spec of deployment ``name``.

    Raises:
        SpecError: the stored value is not a valid ``Deployment`` (written by something
            other than the scheduler): delete and re-apply the deployment.
    """
    try:
        return msgspec.json.decode(value or b"", type=Deployment)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        issue = SpecIssue(name, f"the stored spec does not decode ({exc}); delete and re-apply it")
        raise SpecError(f"deployment {name!r}", [issue], one_line=True) from None
