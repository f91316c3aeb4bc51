"""The one place where the versions of the stack's external pieces are pinned.

``pyproject.toml`` pins ``apache-flink`` to :data:`FLINK_VERSION` (a unit test keeps the two
equal). The Maven coordinates below were checked to exist on Maven Central; the connector line
``5.0.0-2.2`` is the Kafka connector release built for Flink 2.2.
"""

FLINK_VERSION = "2.2.1"
KAFKA_CONNECTOR_ARTIFACT = "org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2"
KAFKA_BROKER_ARTIFACT = "org.apache.kafka:kafka_2.13:4.1.1"
#: The zstd codec of Kafka's Java client, which the connector jar leaves out (Flink's own jars
#: bring lz4 and snappy; gzip is in the JDK). Without it on the TaskManagers' classpath, one
#: record from a producer that compresses with zstd fails the job's sources at every restart.
ZSTD_JNI_ARTIFACT = "com.github.luben:zstd-jni:1.5.6-10"
