"""Harness code shared by the tests and benchmarks: services in-process, polling, fakes."""
