"""Evaluation: prequential data, statistics, the batch baseline, the report and replay."""
