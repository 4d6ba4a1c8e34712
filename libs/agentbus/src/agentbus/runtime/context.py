"""What a task handler gets besides its input: ``TaskContext``.

A handler is ``async def fn(ctx: TaskContext, input) -> output``. The context names
the task and the attempt, carries the agent's connection, and lets the handler work
with other tasks:

* **Subtasks.** ``await ctx.submit(capability, input)`` queues a child task: its
  ``parent_id`` is this task, the scheduler appends it to this task's ``children``,
  and it inherits this task's tenant, priority and deadline unless told otherwise.
  Child ids derive from this task's id and the submission order, so a retried handler
  that submits the same children in the same order re-attaches to those its previous
  attempt submitted instead of duplicating the work. Cancelling this task cancels
  its children, recursively.
* **Waiting.** ``wait_all`` (every child, in the order given), ``wait_first`` (the
  first to finish) and ``as_completed`` (each as it finishes) follow the records
  without polling (``Client.wait_many``).
* **Approval gates.** ``decision = await ctx.request_approval(summary, options=...)``
  waits for a person's decision without holding the agent's slot or the task's
  timeout clock (``agentbus.runtime.approvals``), and survives a restart of the agent.
* **Hand-off.** ``return await ctx.handoff(capability)`` passes the work to another
  capability: a new task with this task's input (unless another is given), metadata,
  tenant, priority, deadline and parent is queued, this task's record points at it
  (``handoff_to``) and ends ``succeeded`` with the ``Handoff`` as output, and
  ``Client.wait`` on this task follows the pointer to the final result.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from agentbus.bus import Bus
from agentbus.client import Client
from agentbus.messages import ApprovalDecision, CancelReply, SubmitReply, Task, TaskRecord, utcnow
from agentbus.messaging.sending import Messaging
from agentbus.runtime.approvals import Parking, request_approval
from agentbus.state import StateThread, task_state

if TYPE_CHECKING:  # imported on first use: not on an agent's start-up path
    from agentbus.events import Events
    from agentbus.traces import Traces

_IDS = uuid.UUID("5b0f4a52-8c1e-4a57-9a43-6d0d6f3c2a11")
"""Namespace of the derived (uuid5) ids of subtasks and hand-offs."""
_LONG_S = 7 * 24 * 3600.0


def derived_id(task_id: str, what: str) -> str:
    """A stable task id derived from ``task_id`` and ``what`` (32 hex characters)."""
    return uuid.uuid5(_IDS, f"{task_id}/{what}").hex


class Handoff(msgspec.Struct, frozen=True, kw_only=True):
    """A handler's output when it handed its task off (``TaskContext.handoff``)."""

    handoff_to: str
    """Id of the task that took the work over."""
    capability: str


TaskRef = str | TaskRecord | SubmitReply
"""A task named by its id, its record, or the reply of its submit."""


def _task_id(ref: TaskRef) -> str:
    if isinstance(ref, str):
        return ref
    return ref.task.task_id if isinstance(ref, SubmitReply) else ref.task_id


@dataclass(frozen=True, slots=True)
class TaskContext(Messaging):
    """What a handler gets besides its input.

    Attributes:
        task: the task message (id, capability, metadata, ...).
        attempt: delivery number of this attempt, from 1.
        agent_id: id of the agent running the handler.
        bus: the agent's connection.
        client: a ``Client`` on that connection (submit subtasks, read records).

    ``send``, ``broadcast`` and ``ask`` (``agentbus.messaging``) send as this agent.
    """

    task: Task
    attempt: int
    agent_id: str
    bus: Bus
    client: Client
    _submitted: list[int] = field(default_factory=lambda: [0], repr=False)
    _checkpoint: list[StateThread] = field(default_factory=list, repr=False)
    started_at: datetime = field(default_factory=utcnow)
    """When this attempt started."""
    _parking: Parking = field(default_factory=Parking, repr=False)
    _approvals: list[int] = field(default_factory=lambda: [0], repr=False)

    @property
    def message_source(self) -> str:
        """This agent's id: what the messages the handler sends say as their source."""
        return self.agent_id

    @property
    def message_sender(self) -> str:
        """This agent's id: the sender token of the subjects its handler sends on."""
        return self.agent_id

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.task.task_id

    @property
    def checkpoint(self) -> StateThread:
        """This task's progress checkpoints (``agentbus.state.StateThread``).

        ``load``, ``save``, ``update``; a redelivered attempt on any agent of the
        capability finds what an earlier attempt saved.
        """
        if not self._checkpoint:
            self._checkpoint.append(task_state(self.bus, self.task.capability, self.task_id))
        return self._checkpoint[0]

    @property
    def traces(self) -> Traces:
        """Stigmergy traces on the agent's connection (``agentbus.traces``, shared)."""
        from agentbus.traces import Traces

        return Traces.of(self.bus)

    @property
    def events(self) -> Events:
        """Publish events on topics as this agent (``agentbus.events.Events``)."""
        from agentbus.events import Events

        return Events(self.bus, source=self.agent_id)

    # -- subtasks ---------------------------------------------------------------------
    async def submit(
        self, capability: str, input: Any = None, *, task_id: str | None = None, **options: Any
    ) -> TaskRecord:
        """Submit a subtask of this task and return its record.

        ``options`` are those of ``Client.build_task``; ``tenant`` and ``priority`` default
        to this task's. ``task_id`` defaults to an id derived from this task's id and
        the number of subtasks submitted so far by this attempt.

        Raises:
            ConflictError: this task has ended (e.g. it was cancelled).
            ContractError, UnavailableError, RequestTimeoutError: as ``Client.submit``.
        """
        n = self._submitted[0]
        self._submitted[0] = n + 1
        options.setdefault("tenant", self.task.tenant)
        options.setdefault("priority", self.task.priority)
        request = await self.client.build_task(
            capability,
            input,
            task_id=task_id or derived_id(self.task_id, f"sub/{n}"),
            parent_id=self.task_id,
            **options,
        )
        if self.task.deadline is not None and request.deadline is None:
            request = msgspec.structs.replace(request, deadline=self.task.deadline)
        return await self.client.submit_request(request)

    async def wait_all(
        self, tasks: Iterable[TaskRef], *, timeout_s: float = _LONG_S
    ) -> list[TaskRecord]:
        """Wait until every task has ended; their final records, in the order given.

        Raises:
            RequestTimeoutError: some had not ended within ``timeout_s`` seconds.
        """
        return await self.client.wait_all([_task_id(t) for t in tasks], timeout_s=timeout_s)

    async def wait_first(
        self, tasks: Iterable[TaskRef], *, timeout_s: float = _LONG_S
    ) -> TaskRecord:
        """Wait until one of the tasks has ended; its final record.

        Raises:
            RequestTimeoutError: none had ended within ``timeout_s`` seconds.
        """
        return await self.client.wait_first([_task_id(t) for t in tasks], timeout_s=timeout_s)

    def as_completed(
        self, tasks: Iterable[TaskRef], *, timeout_s: float = _LONG_S
    ) -> AsyncIterator[TaskRecord]:
        """Each task's final record as it ends (``async for``).

        Raises:
            RequestTimeoutError: some had not ended within ``timeout_s`` seconds.
        """
        return self.client.wait_many([_task_id(t) for t in tasks], timeout_s=timeout_s)

    async def cancel(self, task: TaskRef, *, recursive: bool = True) -> CancelReply:
        """Cancel a task (typically a subtask of this one) and, by default, its subtree.

        Raises:
            NotFoundError: no such task.
        """
        return await self.client.cancel(_task_id(task), recursive=recursive)

    # -- approval gates ---------------------------------------------------------------
    async def request_approval(
        self,
        summary: str,
        *,
        options: Sequence[str] = ("approve", "deny"),
        timeout_s: float | None = None,
        default: str | None = None,
    ) -> ApprovalDecision:
        """Ask a person to choose one of ``options``; wait for and return the decision.

        The request shows in ``agentbus approvals list`` and ``GET /v1/approvals``; a
        token with scope ``approvals:decide`` (or an operator) decides it. After
        ``timeout_s`` seconds undecided it takes ``default`` (``decided_by`` is
        ``timeout``). While waiting the task holds no concurrency slot and its
        ``timeout_s`` clock stops; its lease is renewed. The n-th call of a handler
        names the same request in every attempt: a handler run again after a crash
        or restart finds the request (and its decision) made by the earlier attempt,
        so make what comes before the gate repeatable (or checkpoint it).

        Returns:
            ``ApprovalDecision``: ``option``, ``comment``, ``decided_by``
            (``token:<name>/<id>``, ``cli:<user>`` or ``timeout``), ``decided_at``.

        Raises:
            ContractError: no options, repeated options, a ``timeout_s`` without a
                ``default``, or a ``default`` not among ``options``.
            ForbiddenError: this attempt no longer holds the task (it was delivered
                again to another agent).
            ConflictError: the task has ended (e.g. cancelled).
        """
        index = self._approvals[0]
        self._approvals[0] = index + 1
        return await request_approval(
            self,
            summary,
            options=options,
            timeout_s=timeout_s,
            default=default,
            index=index,
            started_at=self.started_at,
            parking=self._parking,
        )

    # -- hand-off ---------------------------------------------------------------------
    async def handoff(
        self,
        capability: str,
        input: Any = msgspec.UNSET,
        *,
        metadata: dict[str, str] | None = None,
        **options: Any,
    ) -> Handoff:
        """Queue a task of ``capability`` that takes this task's work over.

        Return the result from the handler (``return await ctx.handoff(...)``). The
        new task gets ``input`` (default: this task's input), this task's metadata
        updated with ``metadata``, and this task's tenant, priority, deadline, parent,
        ``max_attempts`` and ``timeout_s`` unless ``options`` say otherwise. Its id
        is derived from this task's id and ``capability``: a retried handler hands off
        to the same task.

        Raises:
            ConflictError: this task already handed off to another capability, or ended.
            ContractError, UnavailableError, RequestTimeoutError: as ``Client.submit``.
        """
        task = self.task
        for name in ("tenant", "priority", "max_attempts", "timeout_s", "parent_id"):
            options.setdefault(name, getattr(task, name))
        request = await self.client.build_task(
            capability,
            None if input is msgspec.UNSET else input,
            task_id=derived_id(self.task_id, f"handoff/{capability}"),
            metadata={**task.metadata, **(metadata or {})},
            **options,
        )
        changes: dict[str, Any] = {"handoff_from": self.task_id}
        if input is msgspec.UNSET:
            changes.update(input=task.input, input_ref=task.input_ref)
        if task.deadline is not None and request.deadline is None:
            changes["deadline"] = task.deadline
        if task.backoff is not None and request.backoff is None:
            changes["backoff"] = task.backoff
        record = await self.client.submit_request(msgspec.structs.replace(request, **changes))
        return Handoff(handoff_to=record.task_id, capability=capability)
