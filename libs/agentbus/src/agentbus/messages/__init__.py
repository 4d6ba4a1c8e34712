"""The wire contract: every payload on the bus, as tagged, frozen msgspec Structs.

Every message is JSON with a ``"type"`` member naming its class, so ``nats sub`` and
``nats kv get`` show readable payloads and a reader can dispatch on the type. Rules
(msgspec's schema-evolution guide): new fields get defaults, a field's type never
changes, unknown fields are ignored by readers. Times are RFC 3339 UTC strings.
``docs/protocol.md`` says which message goes on which subject; the JSON Schema in
``libs/agentbus/schema/messages.json`` is generated from this module.
"""

from __future__ import annotations

import msgspec

from agentbus.messages import approvals as _approvals
from agentbus.messages import checkpoint as _checkpoint
from agentbus.messages import common as _common
from agentbus.messages import control as _control
from agentbus.messages import events as _events
from agentbus.messages import fleet as _fleet
from agentbus.messages import messaging as _messaging
from agentbus.messages import registry as _registry
from agentbus.messages import secrets as _secrets
from agentbus.messages import services as _services
from agentbus.messages import tasks as _tasks
from agentbus.messages import tokens as _tokens
from agentbus.messages import topics as _topics
from agentbus.messages import traces as _traces
from agentbus.messages.approvals import (
    ApprovalDecision,
    ApprovalId,
    ApprovalRecord,
    ApprovalReply,
    ApprovalsReply,
    ApprovalStatus,
    DecideApproval,
    GetApproval,
    ListApprovals,
    RequestApproval,
)
from agentbus.messages.checkpoint import (
    Checkpoint,
    CheckpointHead,
    CheckpointId,
    CheckpointIndex,
    CheckpointOrigin,
    CheckpointReply,
    CheckpointsDeleted,
    CheckpointsReply,
    CheckpointWrites,
    DeleteCheckpoints,
    DeleteThread,
    ForkCheckpoint,
    GetCheckpoint,
    ListCheckpoints,
    ListOwners,
    ListThreads,
    OwnersReply,
    PendingWrite,
    PruneCheckpoints,
    PutCheckpoint,
    PutWrites,
    Retention,
    ThreadInfo,
    ThreadsReply,
    WritesReply,
)
from agentbus.messages.common import (
    NULL,
    TERMINAL_STATUSES,
    Backoff,
    BlobRef,
    ErrorInfo,
    Message,
    RestartPolicy,
    RuntimeKind,
    TaskStatus,
    Token,
    utcnow,
)
from agentbus.messages.control import (
    CancelNotice,
    CancelReply,
    CancelTask,
    TasksReady,
)
from agentbus.messages.events import (
    AgentEvent,
    ApprovalEvent,
    DuplicateEvent,
    ErrorEvent,
    NodeEvent,
    ReplicaEvent,
    TaskEvent,
)
from agentbus.messages.fleet import (
    CrashLoop,
    DeleteDeployment,
    Deploy,
    Deployment,
    DeploymentChange,
    DeployReply,
    GetNodeStatus,
    HealthCheck,
    Limits,
    ListPlacements,
    LogLine,
    NodeStatusReply,
    Placement,
    PlacementEvent,
    PlacementKind,
    PlacementsReply,
    ReplicaState,
    ReplicaStatus,
    Resources,
    ScaleDeployment,
    UnplacedReplica,
)
from agentbus.messages.messaging import (
    MessageReceipt,
    ReceiptOutcome,
    SendOutcome,
    SendReceipt,
)
from agentbus.messages.registry import (
    AgentInfo,
    AgentsReply,
    ListAgents,
    ListNodes,
    NodeInfo,
    NodesReply,
)
from agentbus.messages.secrets import KeyId, SealedSecret, SecretsPublicKey
from agentbus.messages.services import (
    GetHealth,
    HealthReply,
)
from agentbus.messages.tasks import (
    AgentReport,
    Attempt,
    DeadTask,
    GetTask,
    ListTasks,
    ResubmitTask,
    SubmitReply,
    SubmitTask,
    SubmitTasks,
    SubmitTasksReply,
    Task,
    TaskRecord,
    TaskReply,
    TaskResult,
    TasksReply,
    TaskStarted,
)
from agentbus.messages.tokens import ApiToken, Scope
from agentbus.messages.topics import EventReceipt, Subscription, SubscriptionMode
from agentbus.messages.traces import TraceClaim, TraceKind

encoder = msgspec.json.Encoder()
encode = encoder.encode
decode_report = msgspec.json.Decoder(AgentReport).decode
decode_task = msgspec.json.Decoder(Task).decode
decode_record = msgspec.json.Decoder(TaskRecord).decode

ALL_MESSAGES: tuple[type[Message], ...] = (
    *_common.MESSAGES,
    *_tasks.MESSAGES,
    *_control.MESSAGES,
    *_events.MESSAGES,
    *_registry.MESSAGES,
    *_fleet.MESSAGES,
    *_secrets.MESSAGES,
    *_checkpoint.MESSAGES,
    *_services.MESSAGES,
    *_traces.MESSAGES,
    *_messaging.MESSAGES,
    *_topics.MESSAGES,
    *_tokens.MESSAGES,
    *_approvals.MESSAGES,
)

__all__ = [
    "ALL_MESSAGES",
    "NULL",
    "TERMINAL_STATUSES",
    "AgentEvent",
    "AgentInfo",
    "AgentReport",
    "AgentsReply",
    "ApiToken",
    "ApprovalDecision",
    "ApprovalEvent",
    "ApprovalId",
    "ApprovalRecord",
    "ApprovalReply",
    "ApprovalStatus",
    "ApprovalsReply",
    "Attempt",
    "Backoff",
    "BlobRef",
    "CancelNotice",
    "CancelReply",
    "CancelTask",
    "Checkpoint",
    "CheckpointHead",
    "CheckpointId",
    "CheckpointIndex",
    "CheckpointOrigin",
    "CheckpointReply",
    "CheckpointWrites",
    "CheckpointsDeleted",
    "CheckpointsReply",
    "CrashLoop",
    "DeadTask",
    "DecideApproval",
    "DeleteCheckpoints",
    "DeleteDeployment",
    "DeleteThread",
    "Deploy",
    "DeployReply",
    "Deployment",
    "DeploymentChange",
    "DuplicateEvent",
    "ErrorEvent",
    "ErrorInfo",
    "EventReceipt",
    "ForkCheckpoint",
    "GetApproval",
    "GetCheckpoint",
    "GetHealth",
    "GetNodeStatus",
    "GetTask",
    "HealthCheck",
    "HealthReply",
    "KeyId",
    "Limits",
    "ListAgents",
    "ListApprovals",
    "ListCheckpoints",
    "ListNodes",
    "ListOwners",
    "ListPlacements",
    "ListTasks",
    "ListThreads",
    "LogLine",
    "Message",
    "MessageReceipt",
    "NodeEvent",
    "NodeInfo",
    "NodeStatusReply",
    "NodesReply",
    "OwnersReply",
    "PendingWrite",
    "Placement",
    "PlacementEvent",
    "PlacementKind",
    "PlacementsReply",
    "PruneCheckpoints",
    "PutCheckpoint",
    "PutWrites",
    "ReceiptOutcome",
    "ReplicaEvent",
    "ReplicaState",
    "ReplicaStatus",
    "RequestApproval",
    "Resources",
    "RestartPolicy",
    "ResubmitTask",
    "Retention",
    "RuntimeKind",
    "ScaleDeployment",
    "Scope",
    "SealedSecret",
    "SecretsPublicKey",
    "SendOutcome",
    "SendReceipt",
    "SubmitReply",
    "SubmitTask",
    "SubmitTasks",
    "SubmitTasksReply",
    "Subscription",
    "SubscriptionMode",
    "Task",
    "TaskEvent",
    "TaskRecord",
    "TaskReply",
    "TaskResult",
    "TaskStarted",
    "TaskStatus",
    "TasksReady",
    "TasksReply",
    "ThreadInfo",
    "ThreadsReply",
    "Token",
    "TraceClaim",
    "TraceKind",
    "UnplacedReplica",
    "WritesReply",
    "decode_record",
    "decode_report",
    "decode_task",
    "encode",
    "encoder",
    "utcnow",
]
