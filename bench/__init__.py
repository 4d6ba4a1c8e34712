"""Benchmarks: ``just bench tasks|fleet|state [--json FILE]`` (figures, not timed tests)."""
