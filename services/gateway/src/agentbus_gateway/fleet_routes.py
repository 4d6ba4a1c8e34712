"""The fleet over HTTP: ``GET /v1/overview``, ``GET /v1/deployments[/{name}]``, scale.

Read through the library's views (``agentbus.fleet.view.fleet_view``: deployment
specs, placements, node statuses, registry) and ``agentbus_gateway.fleet_stats``
(queue depth, throughput); scaling is the scheduler's ``scale`` request, as
``agentbus scale`` sends it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

from litestar import get, post
from litestar.params import JSONBody

from agentbus.errors import NotFoundError
from agentbus.fleet.view import FleetView, ReplicaView, fleet_view
from agentbus.messages import NodeInfo, PlacementsReply, utcnow
from agentbus_gateway.auth import needs
from agentbus_gateway.fleet_models import (
    DeploymentList,
    DeploymentPath,
    DeploymentView,
    NodeCard,
    Overview,
    ScaleBody,
    ScaleView,
    summary,
)
from agentbus_gateway.fleet_stats import queue_depths, task_rate
from agentbus_gateway.routes import BODY_REFUSALS, Ctx, error_responses


def _node_cards(view: FleetView, nodes: dict[str, NodeInfo]) -> list[NodeCard]:
    by_node: defaultdict[str, list[ReplicaView]] = defaultdict(list)
    for row in view.replicas:
        if row.node_id is not None:
            by_node[row.node_id].append(row)
    cards = []
    for node_id, info in sorted(nodes.items()):
        rows = by_node.get(node_id, [])
        desired = [r for r in rows if r.desired]
        specs = [view.deployments.get(r.deployment) for r in desired]
        cards.append(
            NodeCard(
                node=info,
                replicas=rows,
                placed=len(desired),
                cpus=sum(d.resources.cpus for d in specs if d is not None),
                memory_bytes=sum(d.resources.memory_bytes for d in specs if d is not None),
                reachable=node_id not in view.unreachable,
            )
        )
    return cards


@get(
    "/v1/overview",
    summary="Fleet overview",
    description=(
        "Live nodes with their replicas (state, restarts; CPU and memory as declared by "
        "the deployments), replicas on no live node, queue depth per capability and "
        "priority band (pending and in flight), the dead-letter count, and the tasks "
        "that ended in the last 60 s (terminal task events on the events stream)."
    ),
    responses=error_responses(503, 504),
    tags=["fleet"],
    **needs("fleet:read"),
)
async def overview(ctx: Ctx) -> Overview:
    """The fleet summary (``Overview``)."""
    client = ctx.client
    view, nodes, queues, dead, rate = await asyncio.gather(
        fleet_view(client),
        client.bucket_values(client.names.nodes_bucket, NodeInfo),
        queue_depths(ctx.bus),
        client.list_tasks("dead", limit=1),
        task_rate(ctx.bus),
    )
    return Overview(
        at=utcnow(),
        nodes=_node_cards(view, nodes),
        unassigned=[r for r in view.replicas if r.node_id is None or r.node_id not in nodes],
        queues=queues,
        dead_letters=dead.total,
        tasks=rate,
    )


def _deployment_views(view: FleetView, placed: PlacementsReply) -> list[DeploymentView]:
    running: Counter[str] = Counter(
        r.deployment for r in view.replicas if r.desired and r.state == "running"
    )
    out = []
    for name, spec in sorted(view.deployments.items()):
        out.append(
            DeploymentView(
                spec=summary(spec),
                replicas_wanted=spec.replicas,
                replicas_running=running[name],
                placements=[p for p in placed.placements if p.deployment == name],
                unplaced=[u for u in placed.unplaced if u.deployment == name],
                replicas=[r for r in view.replicas if r.deployment == name],
            )
        )
    return out


@get(
    "/v1/deployments",
    summary="List deployments",
    description=(
        "Every deployment: its spec (env values left out), replicas wanted and running, "
        "placements (replica -> node), unplaced replicas with the reason, and one row "
        "per replica as `agentbus ps` shows it."
    ),
    responses=error_responses(503, 504),
    tags=["fleet"],
    **needs("fleet:read"),
)
async def list_deployments(ctx: Ctx) -> DeploymentList:
    """Every deployment (``DeploymentView``), sorted by name."""
    view, placed = await asyncio.gather(fleet_view(ctx.client), ctx.client.placements())
    return DeploymentList(deployments=_deployment_views(view, placed))


@get(
    "/v1/deployments/{name:str}",
    summary="Get a deployment",
    description="One deployment, as in the list. 404 unknown deployment.",
    responses=error_responses(404, 503, 504),
    tags=["fleet"],
    **needs("fleet:read"),
)
async def get_deployment(name: DeploymentPath, ctx: Ctx) -> DeploymentView:
    """Deployment ``name``.

    Raises:
        NotFoundError: no such deployment (404).
    """
    view, placed = await asyncio.gather(fleet_view(ctx.client, name), ctx.client.placements(name))
    found = _deployment_views(view, placed)
    if not found:  # replicas still running, the spec already deleted
        raise NotFoundError(f"deployment {name!r} not found")
    return found[0]


@post(
    "/v1/deployments/{name:str}/scale",
    status_code=200,
    summary="Scale a deployment",
    description=(
        "Sets the replica count (0-1000) through the scheduler, like `agentbus scale`; "
        "the other fields of the spec stay as stored. Answers with the stored spec and "
        "the placements right after the change (replicas start as their nodes notice). "
        "404 unknown deployment; 409 the spec kept changing concurrently."
    ),
    responses=error_responses(404, 409, *BODY_REFUSALS, 503, 504),
    tags=["fleet"],
    **needs("fleet:admin"),
)
async def scale_deployment(name: DeploymentPath, data: JSONBody[ScaleBody], ctx: Ctx) -> ScaleView:
    """Scale deployment ``name`` to ``data.replicas``."""
    reply = await ctx.client.scale(name, data.replicas)
    return ScaleView(
        spec=summary(reply.deployment),
        placements=reply.placements,
        unplaced=reply.unplaced,
        change=reply.change,
    )


FLEET_ROUTES = [overview, list_deployments, get_deployment, scale_deployment]
