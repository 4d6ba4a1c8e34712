"""Prometheus metrics of the scheduler, on the registry passed to ``serve``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SchedulerMetrics:
    """Counters and gauges of task admission, result application and placement."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.submitted = Counter(
            "agentbus_scheduler_tasks_submitted_total",
            "Tasks submitted, by outcome (created, or existing for an idempotent repeat).",
            ["outcome"],
            registry=registry,
        )
        self.results_applied = Counter(
            "agentbus_scheduler_results_applied_total",
            "Agent reports applied to task records, by resulting status.",
            ["status"],
            registry=registry,
        )
        self.duplicate_results = Counter(
            "agentbus_scheduler_duplicate_results_total",
            "Task results dropped because the task was already terminal (first wins).",
            registry=registry,
        )
        self.reports_refused = Counter(
            "agentbus_scheduler_reports_refused_total",
            "Agent reports refused as not attributable, by reason: subject (not "
            "<p>.results.<capability>.<agent_id>), agent (payload agent_id is not the "
            "subject's), capability (not the task's), attempt (another agent runs it).",
            ["reason"],
            registry=registry,
        )
        self.orphan_reports = Counter(
            "agentbus_scheduler_orphan_reports_total",
            "Agent reports for a task id that has no record; acked and dropped.",
            registry=registry,
        )
        self.record_conflicts = Counter(
            "agentbus_scheduler_record_write_conflicts_total",
            "Task record updates that lost a compare-and-set race and were re-applied.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "agentbus_scheduler_dead_letters_total",
            "Tasks that ended dead, by who found them: agent (attempts exhausted), "
            "advisory (JetStream max deliveries), sweep (stuck message found by a sweep).",
            ["source"],
            registry=registry,
        )
        self.resubmitted = Counter(
            "agentbus_scheduler_tasks_resubmitted_total",
            "Ended tasks resubmitted as new tasks.",
            registry=registry,
        )
        self.sweeps = Counter(
            "agentbus_scheduler_sweeps_total",
            "Work-stream sweeps run (only by the holder of the scheduler-sweeps lease).",
            registry=registry,
        )
        self.swept_messages = Counter(
            "agentbus_scheduler_swept_messages_total",
            "Work-stream messages deleted by the sweeps and dead-letter moves, by reason "
            "(expired, dead, finished: the task had already ended).",
            ["reason"],
            registry=registry,
        )
        self.healed = Counter(
            "agentbus_scheduler_tasks_healed_total",
            "Queued tasks whose work-stream message was missing (admission interrupted "
            "between the record write and the publish), published again by the sweeps.",
            registry=registry,
        )
        self.unserved = Gauge(
            "agentbus_scheduler_tasks_unserved",
            "Tasks waiting on the work stream for a capability no live agent serves "
            "(set by the scheduler-sweeps lease holder each sweep).",
            ["capability"],
            registry=registry,
        )
        self.unserved_warnings = Counter(
            "agentbus_scheduler_unserved_warnings_total",
            "task.unserved events published: a task waited longer than unserved_warn_s "
            "for a capability no live agent serves.",
            registry=registry,
        )
        self.sweep_lease_held = Gauge(
            "agentbus_scheduler_sweep_lease_held",
            "1 while this instance holds the scheduler-sweeps lease, else 0.",
            registry=registry,
        )
        self.cancelled = Counter(
            "agentbus_scheduler_tasks_cancelled_total",
            "Tasks moved to cancelled by cancel requests (subtasks included).",
            registry=registry,
        )
        self.placement_passes = Counter(
            "agentbus_scheduler_placement_passes_total",
            "Placement computations run.",
            registry=registry,
        )
        self.placement_pass_failures = Counter(
            "agentbus_scheduler_placement_pass_failures_total",
            "Placement passes that failed (retried within a short backoff).",
            registry=registry,
        )
        self.placement_writes = Counter(
            "agentbus_scheduler_placement_writes_total",
            "Placement KV writes, by operation (put or delete).",
            ["op"],
            registry=registry,
        )
        self.unplaced = Gauge(
            "agentbus_scheduler_unplaced_replicas",
            "Replicas that no live eligible node with room could take (set by the lease holder).",
            registry=registry,
        )
        self.placement_conflicts = Counter(
            "agentbus_scheduler_placement_write_conflicts_total",
            "Placement writes refused by compare-and-set (a stale view; re-placed next pass).",
            registry=registry,
        )
        self.placement_lease_held = Gauge(
            "agentbus_scheduler_placement_lease_held",
            "1 while this instance holds the placement lease and places, else 0.",
            registry=registry,
        )
