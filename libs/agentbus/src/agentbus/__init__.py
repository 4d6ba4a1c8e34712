"""agentbus: run fleets of AI agents in containers, cooperating over NATS JetStream.

The public surface: ``Agent`` and ``TaskContext`` (the agent runtime), ``Client``
(submit and wait for tasks), ``Bus`` (the connection), the messages of the wire
contract in ``agentbus.messages`` and the errors in ``agentbus.errors``.
"""

__version__ = "0.1.0"
