"""Kafka sources and sinks of the training job, configured from conf/."""
