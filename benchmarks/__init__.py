"""Benchmark scripts: speed is measured here, against a baseline run in the same invocation."""
