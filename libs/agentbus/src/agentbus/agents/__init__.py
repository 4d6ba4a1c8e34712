"""Agents shipped with agentbus: ``echo`` (tests, benchmarks) and ``reviewer`` (the demo)."""
