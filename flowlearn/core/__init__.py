"""The learning core: models, optimizers, features, metrics, drift detectors, the codec,
the training step and the version rules. numpy and the standard library only (no Flink,
no Redis, no Kafka): docs/architecture.md."""
