"""The caller's side: ``Client`` submits, waits for, lists and cancels tasks.

It also manages deployments and reads the registry.

- ``_client``: ``Client`` itself: tasks (submit, wait, list, cancel, resubmit);
- ``fleet``: its registry and fleet calls (agents, nodes, deployments, placements);
- ``waits``: waiting for one task (its record's republish) or many (task events);
- ``history``: a task's history from its events;
- ``_batching``: concurrent submits coalesced into batch requests.
"""

from agentbus.client._client import Client, new_task_id

__all__ = ["Client", "new_task_id"]
