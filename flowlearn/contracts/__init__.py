"""The wire contracts: records on the Kafka topics, the Redis keys and records, the model
spec (docs/architecture.md)."""
