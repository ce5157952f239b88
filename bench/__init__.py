"""Benchmark harness: the service under load beside the ceilings of the same machine."""
