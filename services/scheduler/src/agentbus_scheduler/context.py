"""What the parts of one scheduler instance share, and how they turn a message away."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.msg import Msg

from agentbus.bus import Bus
from agentbus.service import ServiceMetrics, report_bad_message
from agentbus_scheduler.metrics import SchedulerMetrics
from agentbus_scheduler.settings import SchedulerSettings
from agentbus_scheduler.tasks.records import Records


@dataclass(frozen=True, slots=True)
class SchedulerContext:
    """The connection, settings, metrics and task records of one scheduler instance.

    Built once by ``service.serve`` and handed to every part (results, sweeps, dead
    letters, cancellation, fleet).

    Attributes:
        bus: the connection.
        settings: the scheduler's settings.
        metrics: the scheduler's own metrics.
        service_metrics: the metrics every service exports (requests, bad messages).
        records: the task records and their cache (one per instance).
    """

    bus: Bus
    settings: SchedulerSettings
    metrics: SchedulerMetrics
    service_metrics: ServiceMetrics
    records: Records

    async def reject(self, msg: Msg, *, source: str, reason: str) -> None:
        """Report JetStream message ``msg`` as bad and terminate it (never redelivered).

        Logged, counted in ``agentbus_bad_messages_total{service, source}`` and
        published as an ``ErrorEvent`` (``report_bad_message``).

        Raises:
            nats.errors.Error: the terminate did not reach the server (the message
                is redelivered after its AckWait and rejected again).
        """
        await report_bad_message(
            self.bus, self.service_metrics, source=source, subject=msg.subject, reason=reason
        )
        await msg.term()
