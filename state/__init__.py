"""Flink state descriptors as named constants: a renamed state cannot be restored."""
