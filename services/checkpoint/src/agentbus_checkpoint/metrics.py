"""Prometheus metrics of the checkpoint service, on the registry passed to ``serve``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class CheckpointMetrics:
    """Counters of stored and deleted checkpoints, pending writes, conflicts, corruption."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.puts = Counter(
            "agentbus_checkpoint_puts_total",
            "Checkpoints stored, by where the data went (inline or blob).",
            ["storage"],
            registry=registry,
        )
        self.put_bytes = Counter(
            "agentbus_checkpoint_put_bytes_total",
            "Bytes of checkpoint data stored.",
            registry=registry,
        )
        self.writes = Counter(
            "agentbus_checkpoint_writes_total",
            "Pending writes received (put_writes).",
            registry=registry,
        )
        self.deleted = Counter(
            "agentbus_checkpoint_deleted_total",
            "Checkpoint versions deleted, by reason (retention or delete).",
            ["reason"],
            registry=registry,
        )
        self.orphans_deleted = Counter(
            "agentbus_checkpoint_orphans_deleted_total",
            "Uploaded objects no version references, deleted: by the sweep once older than "
            "the grace, or at once when their put was refused (reason sweep or refused).",
            ["reason"],
            registry=registry,
        )
        self.conflicts = Counter(
            "agentbus_checkpoint_conflicts_total",
            "Puts refused because parent_id was not the thread's latest checkpoint.",
            registry=registry,
        )
        self.corrupted = Counter(
            "agentbus_checkpoint_corrupted_total",
            "Reads that found a record or blob failing to decode or its SHA-256 check.",
            registry=registry,
        )
