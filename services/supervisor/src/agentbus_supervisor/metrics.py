"""Prometheus metrics of the supervisor, on the registry given to ``serve``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SupervisorMetrics:
    """Every metric the supervisor records (names ``agentbus_supervisor_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = Gauge(
            "agentbus_supervisor_replicas", "Replicas this node supervises.", registry=registry
        )
        self.starts = Counter(
            "agentbus_supervisor_replica_starts_total",
            "Replica starts, by outcome (started, spare, adopted, failed).",
            ["outcome"],
            registry=registry,
        )
        self.warm_spares = Gauge(
            "agentbus_supervisor_warm_spares",
            "Warm spares started and waiting for an identity (Deployment.warm_spares).",
            registry=registry,
        )
        self.spare_claims = Counter(
            "agentbus_supervisor_spare_claims_total",
            "Replica starts that tried a warm spare, by outcome (claimed, none, failed).",
            ["outcome"],
            registry=registry,
        )
        self.spare_exits = Counter(
            "agentbus_supervisor_spare_exits_total",
            "Warm spares that ended before they were claimed.",
            registry=registry,
        )
        self.exits = Counter(
            "agentbus_supervisor_replica_exits_total",
            "Replica ends, by cause (exit, oom, unhealthy, heartbeat).",
            ["cause"],
            registry=registry,
        )
        self.restarts = Counter(
            "agentbus_supervisor_replica_restarts_total",
            "Restarts scheduled by the restart policy, by cause.",
            ["cause"],
            registry=registry,
        )
        self.crash_loops = Counter(
            "agentbus_supervisor_crash_loops_total",
            "Times a replica entered the crash-loop state.",
            registry=registry,
        )
        self.health_failures = Counter(
            "agentbus_supervisor_health_check_failures_total",
            "Health check runs that failed (non-zero exit, timeout or error).",
            registry=registry,
        )
        self.watch_restarts = Counter(
            "agentbus_supervisor_watch_restarts_total",
            "KV watches started again after an error or a reconnect, by bucket.",
            ["bucket"],
            registry=registry,
        )
        self.secret_failures = Counter(
            "agentbus_supervisor_secret_failures_total",
            "Replicas not started because a secret env value did not open, by cause "
            "(key-mismatch, corrupted).",
            ["cause"],
            registry=registry,
        )
        self.secrets_key_mismatch = Gauge(
            "agentbus_supervisor_secrets_key_mismatch",
            "1 while the published secrets key is one this supervisor does not hold.",
            registry=registry,
        )
        self.fenced = Gauge(
            "agentbus_supervisor_fenced",
            "1 while the node is fenced (heartbeat failing too long; replicas stopped).",
            registry=registry,
        )
        self.fences = Counter(
            "agentbus_supervisor_fences_total",
            "Times the node fenced itself.",
            registry=registry,
        )
        self.heartbeat_failures = Counter(
            "agentbus_supervisor_heartbeat_failures_total",
            "Node heartbeat puts that failed or timed out.",
            registry=registry,
        )
        self.log_lines = Counter(
            "agentbus_supervisor_log_lines_total",
            "Output lines shipped to the logs stream.",
            registry=registry,
        )
        self.log_errors = Counter(
            "agentbus_supervisor_log_errors_total",
            "Output lines that could not be published.",
            registry=registry,
        )
        self.usage_failures = Counter(
            "agentbus_supervisor_usage_sample_failures_total",
            "Measurements of a running replica's CPU and memory that failed.",
            registry=registry,
        )
