"""Flink jobs: entry points submitted with `flink run`."""
