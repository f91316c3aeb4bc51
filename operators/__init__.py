"""Thin Flink adapters around the flowlearn core: state and plumbing here, math there."""
