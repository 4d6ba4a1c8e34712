"""The scheduler service: task admission, result application and replica placement.

Endpoints (``nats.micro`` service ``scheduler``, subjects ``<p>.scheduler.<verb>``):

=============  ================  ==================  ===============================
verb           request           reply               errors
=============  ================  ==================  ===============================
submit         SubmitTask        SubmitReply         400, 409, 503
submit_batch   SubmitTasks       SubmitTasksReply    400, 409, 503
get            GetTask           TaskReply           400, 404
cancel         CancelTask        CancelReply         400, 404, 503
deploy         Deploy            DeployReply         400, 503
scale          ScaleDeployment   DeployReply         400, 404, 409, 503
delete         DeleteDeployment  DeployReply         400, 404, 503
placements     ListPlacements    PlacementsReply     400, 503
list           ListTasks         TasksReply          400
resubmit       ResubmitTask      SubmitReply         400, 404, 409, 503
=============  ================  ==================  ===============================

Approvals (``agentbus_scheduler.tasks.approvals``): ``approval_request.<agent_id>``
(``RequestApproval``; 400, 403, 404, 409), ``approval_decide`` (``DecideApproval``;
400, 404, 409), ``approval_get`` (``GetApproval``; 404) and ``approval_list``
(``ListApprovals``; 503 before the approvals are loaded), all replying
``ApprovalReply`` / ``ApprovalsReply``.

Background work: the results consumer (``scheduler-results`` on ``<P>_RESULTS``) and
the placement loop (KV ``<p>_deployments`` + ``<p>_nodes`` → ``<p>_placements``), run
only by the instance holding the KV lease ``scheduler-placement``; the dead-letter
moves and work-stream sweeps (``sweeps.Sweeper``), only by the holder of the lease
``scheduler-sweeps``.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger
from prometheus_client import CollectorRegistry

from agentbus.bus import Bus
from agentbus.bus.contract import owned_parts
from agentbus.messages import (
    CancelTask,
    DecideApproval,
    DeleteDeployment,
    Deploy,
    GetApproval,
    GetTask,
    ListApprovals,
    ListPlacements,
    ListTasks,
    RequestApproval,
    ResubmitTask,
    ScaleDeployment,
    SubmitTask,
    SubmitTasks,
)
from agentbus.service import MicroService, ServiceMetrics
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.fleet.deployments import Fleet
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.settings import SchedulerSettings
from agentbus_scheduler.tasks.admission import Admission
from agentbus_scheduler.tasks.approvals import Approvals
from agentbus_scheduler.tasks.cancel import Canceller
from agentbus_scheduler.tasks.deadletters import DeadLetters
from agentbus_scheduler.tasks.listing import TaskListing
from agentbus_scheduler.tasks.records import Records
from agentbus_scheduler.tasks.results import ResultsConsumer
from agentbus_scheduler.tasks.sweeps import Sweeper
from agentbus_scheduler.tasks.unserved import LiveAgents

SERVICE = "scheduler"


async def serve(
    bus: Bus, stop: asyncio.Event, settings: SchedulerSettings, registry: CollectorRegistry
) -> None:
    """Run the scheduler on ``bus`` until ``stop`` is set, then clean up.

    Creates the streams and buckets of the contract if missing (``bus.ensure()``; with
    credentials, only the parts the scheduler owns).
    """
    await bus.ensure(owned_parts(bus.settings, SERVICE))
    service_metrics = ServiceMetrics(SERVICE, registry)
    metrics = SchedulerMetrics(registry)
    records = Records(bus, metrics)  # one record cache for admission, results, cancels
    ctx = SchedulerContext(bus, settings, metrics, service_metrics, records)
    agents = LiveAgents(ctx)
    await agents.start()
    admission = Admission(
        bus, metrics, concurrency=settings.submit_concurrency, records=records, agents=agents
    )
    dead_letters = DeadLetters(ctx, admission=admission)
    results = ResultsConsumer(ctx, dead_letters=dead_letters)
    sweeper = Sweeper(ctx, dead_letters=dead_letters, agents=agents)
    await dead_letters.setup()
    fleet = Fleet(ctx)
    await results.setup()
    await fleet.start()

    micro = MicroService(bus, SERVICE, service_metrics, description="agentbus tasks and placement")
    await micro.start()
    await micro.endpoint("submit", SubmitTask, admission.submit)
    await micro.endpoint("submit_batch", SubmitTasks, admission.submit_batch)
    await micro.endpoint("get", GetTask, admission.get)
    await micro.endpoint("cancel", CancelTask, Canceller(ctx).cancel)
    await micro.endpoint("deploy", Deploy, fleet.deploy)
    await micro.endpoint("delete", DeleteDeployment, fleet.delete)
    await micro.endpoint("scale", ScaleDeployment, fleet.scale)
    await micro.endpoint("placements", ListPlacements, fleet.list_placements)
    await micro.endpoint("list", ListTasks, TaskListing(ctx, dead_letters).list)
    await micro.endpoint("resubmit", ResubmitTask, dead_letters.resubmit)
    approvals = Approvals(ctx)
    await micro.endpoint(
        "approval_request", RequestApproval, approvals.request, owner=lambda r: r.agent_id
    )
    await micro.endpoint("approval_decide", DecideApproval, approvals.decide)
    await micro.endpoint("approval_get", GetApproval, approvals.get)
    await micro.endpoint("approval_list", ListApprovals, approvals.list)

    loops = [
        asyncio.create_task(results.run(stop), name="scheduler results"),
        asyncio.create_task(fleet.run(stop), name="scheduler placement"),
        asyncio.create_task(sweeper.run(stop), name="scheduler sweeps"),
        asyncio.create_task(approvals.run(stop), name="scheduler approvals"),
    ]
    logger.info("scheduler ready", prefix=bus.names.prefix)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await micro.stop()
        done, pending = await asyncio.wait(loops, timeout=settings.results_fetch_timeout_s + 2.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                logger.opt(exception=exc).error("scheduler loop failed", loop=task.get_name())
        await results.close()
        await approvals.close()
        await dead_letters.close()
        await fleet.close()
        await agents.close()
        await admission.ready.close()
        logger.info("scheduler stopped")
