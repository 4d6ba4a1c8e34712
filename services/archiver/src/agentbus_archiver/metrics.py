"""Prometheus metrics of the archiver, on the registry passed to ``serve``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ArchiverMetrics:
    """What the archiver wrote, skipped, retried and deleted."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.archived = Counter(
            "agentbus_archiver_events_archived_total",
            "Events inserted into the audit table.",
            registry=registry,
        )
        self.duplicates = Counter(
            "agentbus_archiver_events_duplicate_total",
            "Events delivered again that the table already held (skipped by seq).",
            registry=registry,
        )
        self.batches = Counter(
            "agentbus_archiver_batches_total",
            "Batches committed (one transaction each).",
            registry=registry,
        )
        self.database_errors = Counter(
            "agentbus_archiver_database_errors_total",
            "Failed database operations (each is retried with backoff), by operation.",
            ["operation"],
            registry=registry,
        )
        self.database_up = Gauge(
            "agentbus_archiver_database_up",
            "1 while the last database operation succeeded, else 0.",
            registry=registry,
        )
        self.last_seq = Gauge(
            "agentbus_archiver_last_seq",
            "Highest stream sequence committed by this process.",
            registry=registry,
        )
        self.commit_duration = Histogram(
            "agentbus_archiver_commit_duration_seconds",
            "Time to write and commit one batch.",
            registry=registry,
        )
        self.retention_deleted = Counter(
            "agentbus_archiver_retention_deleted_total",
            "Rows deleted by the retention sweep.",
            registry=registry,
        )
