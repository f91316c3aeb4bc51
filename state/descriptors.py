"""State descriptors of the training job.

Names and types are part of the savepoint format: change them only with a migration. Every
value is typed (primitive arrays and longs), never a pickled Python object.
"""

from pyflink.common import Types
from pyflink.datastream.state import (
    ListStateDescriptor,
    MapStateDescriptor,
    ValueStateDescriptor,
)

#: Buffered samples as they arrived: latest event time, flat features, labels, event ids
#: (none, or one per label, "" for a sample without; see SAMPLE_TYPE).
BUFFERED_SAMPLE_TYPE = Types.ROW_NAMED(
    ["ts", "features", "labels", "event_ids"],
    [Types.LONG(), Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.PRIMITIVE_ARRAY(Types.DOUBLE()),
     Types.BASIC_ARRAY(Types.STRING())],
)
#: The rows of older buffers, read once after a restore and moved to BATCH_BUFFER:
#: ``batch-buffer-v2`` (one event id or "" a row, from before samples were bundled) and
#: ``batch-buffer-v1`` (from before event ids were kept).
BUFFERED_SAMPLE_TYPE_V2 = Types.ROW_NAMED(
    ["ts", "features", "labels", "event_id"],
    [Types.LONG(), Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.PRIMITIVE_ARRAY(Types.DOUBLE()),
     Types.STRING()],
)
BUFFERED_SAMPLE_TYPE_V1 = Types.ROW_NAMED(
    ["ts", "features", "labels"],
    [Types.LONG(), Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.PRIMITIVE_ARRAY(Types.DOUBLE())],
)

#: The model's full state (weights and optimizer), as ``flowlearn.core.codec`` state bytes.
MODEL_STATE = ValueStateDescriptor("model-state-v1", Types.PRIMITIVE_ARRAY(Types.BYTE()))
#: The update count: the version of the weights in MODEL_STATE.
MODEL_VERSION = ValueStateDescriptor("model-version-v1", Types.LONG())
#: Samples trained into MODEL_STATE (exactly-once: equals distinct samples after recovery).
SAMPLES_APPLIED = ValueStateDescriptor("samples-applied-v1", Types.LONG())
#: The weights (``flowlearn.core.codec`` array bytes) of the last ``job.keep_versions`` versions.
RECENT_VERSIONS = MapStateDescriptor(
    "recent-versions-v1", Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE()))
#: The weights of the last ``job.keep_checkpoints`` checkpoint versions (every
#: ``job.checkpoint_every_versions``-th), kept beside RECENT_VERSIONS for longer rollbacks.
CHECKPOINT_VERSIONS = MapStateDescriptor(
    "checkpoint-versions-v1", Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE()))
#: True while a ``pause`` command holds training (samples keep buffering).
PAUSED = ValueStateDescriptor("paused-v1", Types.BOOLEAN())
#: Samples waiting for the next mini-batch.
BATCH_BUFFER = ListStateDescriptor("batch-buffer-v3", BUFFERED_SAMPLE_TYPE)
BATCH_BUFFER_V2 = ListStateDescriptor("batch-buffer-v2", BUFFERED_SAMPLE_TYPE_V2)
BATCH_BUFFER_V1 = ListStateDescriptor("batch-buffer-v1", BUFFERED_SAMPLE_TYPE_V1)
#: Event ids of trained samples (flowlearn.core.dedupe.SeenIds), one entry per trained buffer:
#: sequence number -> (the newest event time among them, the ids).
SEEN_SAMPLE_IDS = MapStateDescriptor(
    "seen-sample-ids-v1", Types.LONG(),
    Types.ROW_NAMED(["ts", "ids"], [Types.LONG(), Types.BASIC_ARRAY(Types.STRING())]))

#: Label join, keyed by model id: the entries of the model's event ids that wait for their
#: other half, or that were paired and keep duplicates out until their window has passed.
#: Value: ``flags`` (flowlearn.operators.label_join: event, label, paired), the event's time and
#: features, the label's time, value and raw bytes (kept for the DLQ).
JOIN_ENTRY_TYPE = Types.ROW_NAMED(
    ["flags", "event_ts", "features", "label_ts", "label", "raw"],
    [Types.INT(), Types.LONG(), Types.PRIMITIVE_ARRAY(Types.DOUBLE()), Types.LONG(),
     Types.DOUBLE(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
JOIN_ENTRIES = MapStateDescriptor("join-entries-v2", Types.STRING(), JOIN_ENTRY_TYPE)

#: The checkpoint operator's ledger of one model (``flowlearn.core.checkpointing`` bytes) and
#: the weights of its kept checkpoints (codec array bytes by version), to register them.
CHECKPOINT_LEDGER = ValueStateDescriptor(
    "checkpoint-ledger-v1", Types.PRIMITIVE_ARRAY(Types.BYTE()))
CHECKPOINT_WEIGHTS = MapStateDescriptor(
    "checkpoint-weights-v1", Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE()))

#: The drift operator's detectors of one model (``flowlearn.core.monitoring`` bytes).
DRIFT_MONITOR = ValueStateDescriptor("drift-monitor-v1", Types.PRIMITIVE_ARRAY(Types.BYTE()))
