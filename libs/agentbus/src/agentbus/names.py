"""Every subject, stream, consumer, KV bucket and Object Store name on the bus.

All names derive from one prefix (default ``agentbus``) so that several fleets, or
several tests, can share one nats-server without seeing each other. See
``docs/protocol.md`` for the table a non-Python agent implements against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentbus import _id_rules, _topic_names
from agentbus.errors import ContractError

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
BANDS = 10
"""Priority bands per capability: a task's ``priority`` 0 (default, lowest) .. 9."""
# Topics of agent events (``agentbus._topic_names``, re-exported here).
TOPIC_PARTITIONS = _topic_names.TOPIC_PARTITIONS
TOPIC_RE = _topic_names.TOPIC_RE
TOPIC_MAX_TOKENS = _topic_names.TOPIC_MAX_TOKENS
TOPIC_PARTS = _topic_names.TOPIC_PARTS
check_topic = _topic_names.check_topic
check_topic_pattern = _topic_names.check_topic_pattern
fnv1a_32 = _topic_names.fnv1a_32
topic_part = _topic_names.topic_part
# Identifier rules (``agentbus._id_rules``, re-exported here).
check_token = _id_rules.check_token
check_task_id = _id_rules.check_task_id
replica_agent_id = _id_rules.replica_agent_id
replica_agent_id_pattern = _id_rules.replica_agent_id_pattern
escape_token = _id_rules.escape_token
TOKEN_SAFE_BYTES = _id_rules.TOKEN_SAFE_BYTES


@dataclass(frozen=True, slots=True)
class Names:
    """Names of every NATS object agentbus uses, derived from ``prefix``.

    Attributes:
        prefix: lowercase ``[a-z][a-z0-9_]*``; ``agentbus`` by default.
    """

    prefix: str = "agentbus"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ContractError(f"prefix {self.prefix!r} must match {_PREFIX_RE.pattern}")

    # -- streams ------------------------------------------------------------------
    @property
    def tasks_stream(self) -> str:
        """WorkQueue stream holding queued tasks, subjects ``<p>.tasks.<capability>``."""
        return f"{self.prefix.upper()}_TASKS"

    @property
    def results_stream(self) -> str:
        """WorkQueue stream of agent reports, subjects ``<p>.results.<capability>.<agent_id>``."""
        return f"{self.prefix.upper()}_RESULTS"

    @property
    def events_stream(self) -> str:
        """Limits stream of events, subjects ``<p>.events.<entity>.<kind>``."""
        return f"{self.prefix.upper()}_EVENTS"

    @property
    def logs_stream(self) -> str:
        """Limits stream of container output, subjects ``<p>.logs.<agent_id>``."""
        return f"{self.prefix.upper()}_LOGS"

    @property
    def topics_stream(self) -> str:
        """Limits stream of agent events on topics, subjects ``<p>.topics.>``."""
        return f"{self.prefix.upper()}_TOPICS"

    # -- subjects -----------------------------------------------------------------
    def topic_subject(self, topic: str, key: str | None = None) -> str:
        """Subject an event on ``topic`` is published on: ``<p>.topics.<topic>.<part>``.

        ``<part>`` is ``topic_part(key)``: ``_`` without key, ``k<N>`` with one.
        """
        return f"{self.prefix}.topics.{topic}.{topic_part(key)}"

    def topic_filters(self, pattern: str, part: str | None = None) -> list[str]:
        """Filter subjects of subscription ``pattern`` (``agentbus._topic_names.topic_filters``)."""
        return _topic_names.topic_filters(self.prefix, pattern, part)

    def topics_all(self) -> str:
        """Wildcard over every topic subject."""
        return f"{self.prefix}.topics.>"

    def task_subject(self, capability: str, band: int = 0) -> str:
        """Subject a task for ``capability`` with priority ``band`` is published on.

        Band 0 is ``<p>.tasks.<capability>``, band N > 0 ``<p>.tasks.<capability>.p<N>``.
        """
        return f"{self.prefix}.tasks.{capability}" + (f".p{band}" if band else "")

    def result_subject(self, capability: str, agent_id: str) -> str:
        """Subject agent ``agent_id`` reports progress and results for ``capability`` on.

        ``<p>.results.<capability>.<agent_id>``: the reporting agent's own id, so NATS
        permissions can hold an agent to its own reports; the scheduler refuses a
        report whose ``agent_id`` is not the subject's.
        """
        return f"{self.prefix}.results.{capability}.{agent_id}"

    def capability_results(self, capability: str) -> str:
        """Wildcard over the reports of every agent for ``capability``."""
        return f"{self.prefix}.results.{capability}.*"

    def event_subject(self, entity: str, kind: str) -> str:
        """Subject of an event, e.g. ``agentbus.events.agent.joined``."""
        return f"{self.prefix}.events.{entity}.{kind}"

    def agent_error_subject(self, agent_id: str) -> str:
        """Subject of agent ``agent_id``'s ``ErrorEvent``s: ``<p>.events.error.agent.<id>``."""
        return f"{self.prefix}.events.error.agent.{agent_id}"

    def task_event_subject(self, status: str, task_id: str) -> str:
        """Subject of a ``TaskEvent``: ``<p>.events.task.<status>.<task_id>``."""
        return f"{self.prefix}.events.task.{status}.{task_id}"

    def task_history(self, task_id: str) -> str:
        """Filter over one task's events (its history): ``<p>.events.task.*.<task_id>``."""
        return f"{self.prefix}.events.task.*.{task_id}"

    def task_record_subject(self, task_id: str) -> str:
        """Core-NATS subject a task record is republished on once stored.

        KV ``<p>_tasks`` republishes every stored write (``$KV.<p>_tasks.<id>``) here,
        so a waiter hears only writes the store accepted.
        """
        return f"{self.prefix}.records.task.{task_id}"

    def task_records_all(self) -> str:
        """Every task record's republish subject: ``<p>.records.task.>``."""
        return f"{self.prefix}.records.task.>"

    def log_subject(self, agent_id: str) -> str:
        """Subject the supervisor ships an agent's container output on."""
        return f"{self.prefix}.logs.{agent_id}"

    def ready_subject(self, capability: str) -> str:
        """Core-NATS subject of ``TasksReady`` notices for ``capability``.

        Agents listen in queue group ``agentbus.bus.notices.READY_QUEUE``, only while they
        have a free slot: each notice wakes one agent.
        """
        return f"{self.prefix}.control.ready.{capability}"

    def backlog_subject(self, capability: str) -> str:
        """Core-NATS subject of ``TasksReady`` notices no free agent heard (every agent)."""
        return f"{self.prefix}.control.backlog.{capability}"

    def cancel_subject(self) -> str:
        """Core-NATS subject of ``CancelNotice``s, heard by every agent."""
        return f"{self.prefix}.control.cancel"

    def tasks_all(self) -> str:
        """Wildcard over every task subject."""
        return f"{self.prefix}.tasks.>"

    def results_all(self) -> str:
        """Wildcard over every result subject."""
        return f"{self.prefix}.results.>"

    def events_all(self, entity: str | None = None) -> str:
        """Wildcard over every event subject, or those of one ``entity``."""
        return f"{self.prefix}.events.{entity}.>" if entity else f"{self.prefix}.events.>"

    def logs_all(self) -> str:
        """Wildcard over every log subject."""
        return f"{self.prefix}.logs.>"

    # -- consumers ----------------------------------------------------------------
    @staticmethod
    def task_consumer(capability: str, band: int = 0) -> str:
        """Durable pull consumer of one band, shared by every agent with ``capability``.

        Band 0 is ``cap-<capability>``, band N > 0 ``cap-<capability>-p<N>``.
        """
        return f"cap-{capability}" + (f"-p{band}" if band else "")

    RESULTS_CONSUMER = "scheduler-results"
    DEAD_LETTERS_CONSUMER = "scheduler-dead-letters"
    """Durable consumer of ``<P>_TASK_ADVISORIES``, pulled by the sweeps lease holder."""

    @property
    def task_advisories_stream(self) -> str:
        """Limits stream keeping JetStream's MAX_DELIVERIES advisories of ``<P>_TASKS``.

        A message that hits a consumer's ``max_deliver`` stays in a WorkQueue stream;
        the advisory (kept here even while no scheduler runs) names its sequence.
        """
        return f"{self.prefix.upper()}_TASK_ADVISORIES"

    def max_deliveries_advisories(self) -> str:
        """Subject of the MAX_DELIVERIES advisories of every ``<P>_TASKS`` consumer."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.tasks_stream}.*"

    # -- KV buckets and object store ----------------------------------------------
    @property
    def tasks_bucket(self) -> str:
        """KV of task records, key = task id; single writer: the scheduler."""
        return f"{self.prefix}_tasks"

    @property
    def agents_bucket(self) -> str:
        """KV of live agents, key = agent id; heartbeat puts, entries expire by TTL."""
        return f"{self.prefix}_agents"

    @property
    def nodes_bucket(self) -> str:
        """KV of live nodes, key = node id; heartbeat puts, entries expire by TTL."""
        return f"{self.prefix}_nodes"

    @property
    def deployments_bucket(self) -> str:
        """KV of deployment specs, key = deployment name."""
        return f"{self.prefix}_deployments"

    @property
    def placements_bucket(self) -> str:
        """KV of replica placements, key = ``<deployment>.<replica>``, value = node."""
        return f"{self.prefix}_placements"

    @property
    def secrets_keys_bucket(self) -> str:
        """KV of the fleet's secrets public key (``SecretsPublicKey``, key ``public``)."""
        return f"{self.prefix}_secrets_keys"

    SECRETS_PUBLIC_KEY_ENTRY = "public"
    """Key of the published ``SecretsPublicKey`` in ``secrets_keys_bucket``."""

    @property
    def checkpoints_bucket(self) -> str:
        """KV of agent checkpoints (layout in ``agentbus_checkpoint.keys``)."""
        return f"{self.prefix}_checkpoints"

    @property
    def checkpoint_blobs_bucket(self) -> str:
        """Object Store of checkpoint data over the inline limit; no TTL (retention prunes)."""
        return f"{self.prefix}_checkpoint_blobs"

    @property
    def dead_tasks_bucket(self) -> str:
        """KV index of dead tasks, key ``<capability>.<task_id>``, value ``DeadTask``."""
        return f"{self.prefix}_dead_tasks"

    @property
    def leases_bucket(self) -> str:
        """KV of singleton leases (key = duty name), entries expire by per-message TTL."""
        return f"{self.prefix}_leases"

    @property
    def tokens_bucket(self) -> str:
        """KV of gateway API tokens (``ApiToken``, hashed), key = token id."""
        return f"{self.prefix}_tokens"

    @property
    def approvals_bucket(self) -> str:
        """KV of approval requests (``ApprovalRecord``), key ``<capability>.<approval_id>``.

        Single writer: the scheduler (``docs/decisions/0009-approvals.md``).
        """
        return f"{self.prefix}_approvals"

    @staticmethod
    def approval_key(capability: str, approval_id: str) -> str:
        """Key of one approval in ``approvals_bucket``: ``<capability>.<approval_id>``."""
        return f"{capability}.{approval_id}"

    def approval_event_subject(self, kind: str, approval_id: str) -> str:
        """Subject of an ``ApprovalEvent``: ``<p>.events.approval.<kind>.<approval_id>``."""
        return f"{self.prefix}.events.approval.{kind}.{approval_id}"

    @property
    def blobs_bucket(self) -> str:
        """Object Store for values larger than the inline limit."""
        return f"{self.prefix}_blobs"

    # -- stigmergy traces (agentbus.traces) ------------------------------------------
    def trace_stream(self, kind: str) -> str:
        """Counter stream of one trace kind: ``<P>_TRACES_<KIND>``."""
        return f"{self.prefix.upper()}_TRACES_{kind.upper()}"

    def trace_subject(self, kind: str, epoch: int, location_key: str) -> str:
        """Counter of ``kind`` at a location in one epoch: ``<p>.traces.<kind>.<epoch>.<key>``.

        ``location_key`` is ``encode_location(location)`` (one or more tokens).
        """
        return f"{self.prefix}.traces.{kind}.{epoch}.{location_key}"

    def traces_all(self, kind: str | None = None) -> str:
        """Wildcard over every trace subject, or those of one ``kind``."""
        return f"{self.prefix}.traces.{kind}.>" if kind else f"{self.prefix}.traces.>"

    @property
    def trace_claims_bucket(self) -> str:
        """KV of trace claims, key = ``encode_location(location)``, per-message TTL."""
        return f"{self.prefix}_trace_claims"

    # -- direct messages, broadcast and ask (agentbus.messaging) --------------------
    @property
    def inbox_stream(self) -> str:
        """WorkQueue stream of direct messages (per-message TTL) and their receipts."""
        return f"{self.prefix.upper()}_INBOX"

    CLIENT_SENDER = "_client"
    """Sender token of a message sent by a client that is not an agent (no agent id
    starts with ``_``, so it names no agent)."""

    def inbox_subject(self, agent_id: str, sender: str = CLIENT_SENDER) -> str:
        """Subject of a direct message to ``agent_id``: ``<p>.inbox.<agent_id>.<sender>``.

        ``sender``: the sending agent's id (the receiver checks ``Agentbus-Source``
        against it), or ``CLIENT_SENDER``.
        """
        return f"{self.prefix}.inbox.{agent_id}.{sender}"

    def inbox_filter(self, agent_id: str) -> str:
        """Every direct message to ``agent_id``: ``<p>.inbox.<agent_id>.*``."""
        return f"{self.prefix}.inbox.{agent_id}.*"

    def inbox_receipt_subject(self, agent_id: str, message_id: str) -> str:
        """The receipt agent ``agent_id`` stores: ``<p>.inbox.receipts.<agent_id>.<id>``."""
        return f"{self.prefix}.inbox.receipts.{agent_id}.{message_id}"

    def inbox_all(self) -> str:
        """Every subject of the inbox stream: ``<p>.inbox.>``."""
        return f"{self.prefix}.inbox.>"

    @staticmethod
    def inbox_consumer(agent_id: str) -> str:
        """Durable pull consumer of one agent's inbox: ``inbox-<agent_id>``."""
        return f"inbox-{agent_id}"

    def broadcast_subject(self, capability: str, sender: str = CLIENT_SENDER) -> str:
        """Core-NATS broadcast to ``capability``: ``<p>.broadcast.<capability>.<sender>``."""
        return f"{self.prefix}.broadcast.{capability}.{sender}"

    def broadcast_filter(self, capability: str) -> str:
        """Every broadcast to ``capability``: ``<p>.broadcast.<capability>.*``."""
        return f"{self.prefix}.broadcast.{capability}.*"

    def ask_subject(self, capability: str) -> str:
        """Request subject of ``ask`` for ``capability``, queue group ``ASK_QUEUE``."""
        return f"{self.prefix}.agents.ask.{capability}"

    ASK_QUEUE = "ask"

    # -- service endpoints (nats.micro, request/reply) -----------------------------
    def endpoint(self, service: str, verb: str) -> str:
        """Request subject of a service endpoint: ``<p>.<service>.<verb>``."""
        return f"{self.prefix}.{service}.{verb}"

    def owner_endpoint(self, service: str, verb: str, owner: str) -> str:
        """Request subject of an endpoint for one owner: ``<p>.<service>.<verb>.<owner>``.

        ``<owner>`` is ``escape_token(owner)`` (an agent id stays as it is): NATS
        permissions can allow a client the requests for its own owners only, and the
        service refuses (403) a request whose payload names another owner.
        """
        return f"{self.prefix}.{service}.{verb}.{escape_token(owner)}"
