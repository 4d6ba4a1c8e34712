"""The Celery side of ``bench.tasks``: one no-op task, Redis broker and result backend.

The worker runs as ``celery -A bench._celery_app worker --pool solo --concurrency 1``
with ``BENCH_REDIS_URL`` set by the bench. Settings are Celery's defaults except JSON
only and no retry noise at start-up.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("agentbus_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


def _noop(value: Any) -> Any:
    """Return ``value`` unchanged."""
    return value


noop = app.task(name="bench.noop")(_noop)  # celery is untyped: the task is Any
