"""agentbus scheduler service: task admission, task records and replica placement."""

from agentbus_scheduler.fleet.placement import PlacementPlan, place
from agentbus_scheduler.service import serve
from agentbus_scheduler.settings import SchedulerSettings

__all__ = ["PlacementPlan", "SchedulerSettings", "place", "serve"]
