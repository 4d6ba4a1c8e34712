"""Prometheus metrics of the registry, on the registry passed to ``serve``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class RegistryMetrics:
    """Gauges of the live view and counters of joins and losses."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.agents = Gauge(
            "agentbus_registry_agents",
            "Live agents, by status (ready, busy, stopping).",
            ["status"],
            registry=registry,
        )
        self.nodes = Gauge(
            "agentbus_registry_nodes",
            "Live nodes.",
            registry=registry,
        )
        self.joins = Counter(
            "agentbus_registry_joins_total",
            "Agents and nodes that joined, by entity (agent or node).",
            ["entity"],
            registry=registry,
        )
        self.departures = Counter(
            "agentbus_registry_departures_total",
            "Agents and nodes that left (deleted) or were lost (expired), by entity and kind.",
            ["entity", "kind"],
            registry=registry,
        )
        self.duplicates = Counter(
            "agentbus_registry_duplicates_total",
            "Ids heartbeated by two live instances at once (one DuplicateEvent each), by entity.",
            ["entity"],
            registry=registry,
        )
