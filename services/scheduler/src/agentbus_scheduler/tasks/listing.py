"""The ``list`` endpoint: one page of task records by status, capability, parent, tenant.

``dead`` tasks (without a parent or tenant filter) come from the dead-letter index
(``DeadLetters.list_dead``, newest first; the cursor is an offset). Every other
status is a bounded read of KV ``<p>_tasks`` in write order (``agentbus.kv.replay.scan``): at most
``list_max_records`` records per request, resumed from the revision in the cursor.
"""

from __future__ import annotations

from loguru import logger

from agentbus.errors import ContractError
from agentbus.kv.replay import scan
from agentbus.messages import ListTasks, TaskRecord, TasksReply
from agentbus_scheduler.context import SchedulerContext
from agentbus_scheduler.tasks.deadletters import DeadLetters


def cursor_number(cursor: str | None) -> int:
    """The number a cursor holds (0 for None).

    Raises:
        ContractError: not a cursor this endpoint gave out.
    """
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19:
        raise ContractError(f"cursor {cursor!r} is not one a task listing returned")
    return int(cursor)


class TaskListing:
    """Serves ``ListTasks``."""

    def __init__(self, ctx: SchedulerContext, dead_letters: DeadLetters) -> None:
        self.ctx = ctx
        self.dead_letters = dead_letters

    async def list(self, request: ListTasks) -> TasksReply:
        """One page of the tasks ``request`` asks for (see ``ListTasks``).

        Raises:
            ContractError: the cursor is not one a listing returned.
        """
        offset = cursor_number(request.cursor)
        if request.status == "dead" and request.parent_id is None and request.tenant is None:
            return await self.dead_letters.list_dead(request, offset=offset)
        status, capability, parent = request.status, request.capability, request.parent_id
        tenant = request.tenant

        def wanted(record: TaskRecord) -> bool:
            return (
                (status is None or record.status == status)
                and (capability is None or record.capability == capability)
                and (parent is None or record.parent_id == parent)
                and (tenant is None or record.tenant == tenant)
            )

        def bad(key: str) -> None:
            logger.warning("task record does not decode", task_id=key)

        bus, most = self.ctx.bus, self.ctx.settings.list_max_records
        page = await scan(
            bus.js,
            bus.names.tasks_bucket,
            TaskRecord,
            after=offset,
            keep=wanted,
            limit=request.limit,
            max_entries=most,
            on_bad=bad,
        )
        tasks = [record for _, _, record in page.entries]
        after = None if page.after is None else str(page.after)
        return TasksReply(tasks=tasks, total=len(tasks), next_cursor=after)
