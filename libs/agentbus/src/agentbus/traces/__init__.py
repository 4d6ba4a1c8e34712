"""Stigmergy traces: marks on named locations that add up and decay.

- ``_traces``: ``Traces``: deposit, sense, strongest, claim, watch;
- ``kinds``: one counter stream per kind, its half-life, floor and forgetting time;
- ``claims``: short exclusive claims on a location (KV with per-message TTL);
- ``watch``: deposits as they happen;
- ``locations``: locations as subject tokens and KV keys, reversibly;
- ``_math``: the decay arithmetic (a rolling epoch, so deposits are plain increments).
"""

from agentbus.traces._traces import TraceChange, Traces

__all__ = ["TraceChange", "Traces"]
