"""State descriptors of the training job.

Names and types are part of the savepoint format: change them only with a migration. Every
value is typed (primitive arrays and longs), never a pickled Python object.
"""

from typing import NamedTuple

from pyflink.common import Types
from pyflink.datastream.state import (
    ListStateDescriptor,
    MapStateDescriptor,
    ValueStateDescriptor,
)

from flowlearn.state.rows import row_type

_FLOATS = Types.PRIMITIVE_ARRAY(Types.DOUBLE())
_INTS = Types.PRIMITIVE_ARRAY(Types.INT())
_LONGS = Types.PRIMITIVE_ARRAY(Types.LONG())
_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())


class BufferedSamples(NamedTuple):
    """Buffered samples as they arrived: latest event time, features, labels, event ids
    (none, or one per label, "" for a sample without), and the column indices and row
    offsets of a hashed model's sparse rows (empty for dense rows; see
    ``operators.types.Samples``)."""

    ts: int
    features: list[float]
    labels: list[float]
    event_ids: list[str]
    indices: list[int]
    offsets: list[int]


BUFFERED_SAMPLE_TYPE = row_type(
    BufferedSamples,
    [Types.LONG(), _FLOATS, _FLOATS, Types.BASIC_ARRAY(Types.STRING()), _INTS, _LONGS],
)


class BufferedSamplesV3(NamedTuple):
    """A ``batch-buffer-v3`` row (dense features only, from before hashed rows were kept
    sparse): read once after a restore and moved to BATCH_BUFFER."""

    ts: int
    features: list[float]
    labels: list[float]
    event_ids: list[str]

    def upgraded(self) -> BufferedSamples:
        return BufferedSamples(self.ts, self.features, self.labels, self.event_ids, [], [])


BUFFERED_SAMPLE_TYPE_V3 = row_type(
    BufferedSamplesV3, [Types.LONG(), _FLOATS, _FLOATS, Types.BASIC_ARRAY(Types.STRING())]
)


class BufferedSamplesV2(NamedTuple):
    """A ``batch-buffer-v2`` row (one event id or "" a row, from before samples were
    bundled): read once after a restore and moved to BATCH_BUFFER."""

    ts: int
    features: list[float]
    labels: list[float]
    event_id: str

    def upgraded(self) -> BufferedSamples:
        ids = [self.event_id] if self.event_id else []
        return BufferedSamples(self.ts, self.features, self.labels, ids, [], [])


BUFFERED_SAMPLE_TYPE_V2 = row_type(
    BufferedSamplesV2, [Types.LONG(), _FLOATS, _FLOATS, Types.STRING()]
)


class BufferedSamplesV1(NamedTuple):
    """A ``batch-buffer-v1`` row (from before event ids were kept), moved like v2's."""

    ts: int
    features: list[float]
    labels: list[float]

    def upgraded(self) -> BufferedSamples:
        return BufferedSamples(self.ts, self.features, self.labels, [], [], [])


BUFFERED_SAMPLE_TYPE_V1 = row_type(BufferedSamplesV1, [Types.LONG(), _FLOATS, _FLOATS])

#: The model's full state (weights and optimizer), as ``flowlearn.core.codec`` state bytes.
MODEL_STATE = ValueStateDescriptor("model-state-v1", Types.PRIMITIVE_ARRAY(Types.BYTE()))
#: The update count: the version of the weights in MODEL_STATE.
MODEL_VERSION = ValueStateDescriptor("model-version-v1", Types.LONG())
#: Samples trained into MODEL_STATE (exactly-once: equals distinct samples after recovery).
SAMPLES_APPLIED = ValueStateDescriptor("samples-applied-v1", Types.LONG())
#: The weights (``flowlearn.core.codec`` array bytes) of the last ``job.keep_versions`` versions.
RECENT_VERSIONS = MapStateDescriptor(
    "recent-versions-v1", Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE())
)
#: The weights of the last ``job.keep_checkpoints`` checkpoint versions (every
#: ``job.checkpoint_every_versions``-th), kept beside RECENT_VERSIONS for longer rollbacks.
CHECKPOINT_VERSIONS = MapStateDescriptor(
    "checkpoint-versions-v1", Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE())
)
#: The runtime entry of a model (``flowlearn.contracts.spec``: its spec as JSON after a
#: ``create``, "" after a ``delete``); absent for a model that ``conf/`` alone describes.
#: The trainer, drift and checkpoint operators each keep it for their key.
RUNTIME_SPEC = ValueStateDescriptor("runtime-spec-v1", Types.STRING())
#: The live changes of a model's ``update`` commands (a JSON object of spec fields, all of
#: them so far) over the spec its runtime entry or ``conf/`` gives; trainer, drift and
#: checkpoint operators.
LIVE_CHANGES = ValueStateDescriptor("live-changes-v1", Types.STRING())
#: The same entries for every model, in the broadcast state of the parsers (which are not
#: keyed): model id -> runtime entry.
RUNTIME_SPECS = MapStateDescriptor("runtime-specs-v1", Types.STRING(), Types.STRING())
#: True while a ``pause`` command holds training (samples keep buffering).
PAUSED = ValueStateDescriptor("paused-v1", Types.BOOLEAN())
#: Samples waiting for the next mini-batch.
BATCH_BUFFER = ListStateDescriptor("batch-buffer-v4", BUFFERED_SAMPLE_TYPE)
BATCH_BUFFER_V3 = ListStateDescriptor("batch-buffer-v3", BUFFERED_SAMPLE_TYPE_V3)
BATCH_BUFFER_V2 = ListStateDescriptor("batch-buffer-v2", BUFFERED_SAMPLE_TYPE_V2)
BATCH_BUFFER_V1 = ListStateDescriptor("batch-buffer-v1", BUFFERED_SAMPLE_TYPE_V1)


class SeenBatch(NamedTuple):
    """Event ids of one trained buffer (flowlearn.core.dedupe.SeenIds): the newest event time
    among them, the ids."""

    ts: int
    ids: list[str]


#: Event ids of trained samples, one entry per trained buffer: sequence number -> SeenBatch.
SEEN_SAMPLE_IDS = MapStateDescriptor(
    "seen-sample-ids-v1",
    Types.LONG(),
    row_type(SeenBatch, [Types.LONG(), Types.BASIC_ARRAY(Types.STRING())]),
)


class JoinEntry(NamedTuple):
    """Label join: the entry of one event id that waits for its other half, or that was
    paired and keeps duplicates out until its window has passed: ``flags``
    (flowlearn.operators.label_join: event, label, paired), the event's time and features
    (a hashed model's: the sparse row's values, ``indices`` their columns and ``offsets``
    ``[0, n]``; a dense row: its values, no indices or offsets), the label's time, value
    and raw bytes (kept for the DLQ)."""

    flags: int
    event_ts: int
    features: list[float]
    label_ts: int
    label: float
    raw: bytes
    indices: list[int]
    offsets: list[int]


class JoinEntryV2(NamedTuple):
    """A ``join-entries-v2`` entry (dense features only): read once after a restore and
    moved to JOIN_ENTRIES."""

    flags: int
    event_ts: int
    features: list[float]
    label_ts: int
    label: float
    raw: bytes

    def upgraded(self) -> JoinEntry:
        return JoinEntry(*self, [], [])


#: Label join, keyed by model id: event id -> JoinEntry.
JOIN_ENTRY_TYPE = row_type(
    JoinEntry,
    [Types.INT(), Types.LONG(), _FLOATS, Types.LONG(), Types.DOUBLE(), _BYTES, _INTS, _LONGS],
)
JOIN_ENTRIES = MapStateDescriptor("join-entries-v3", Types.STRING(), JOIN_ENTRY_TYPE)
JOIN_ENTRY_TYPE_V2 = row_type(
    JoinEntryV2, [Types.INT(), Types.LONG(), _FLOATS, Types.LONG(), Types.DOUBLE(), _BYTES]
)
JOIN_ENTRIES_V2 = MapStateDescriptor("join-entries-v2", Types.STRING(), JOIN_ENTRY_TYPE_V2)

#: The checkpoint operator's ledger of one model (``flowlearn.core.checkpointing`` bytes) and
#: the weights of its kept checkpoints (codec array bytes by version), to register them.
CHECKPOINT_LEDGER = ValueStateDescriptor(
    "checkpoint-ledger-v1", Types.PRIMITIVE_ARRAY(Types.BYTE())
)
CHECKPOINT_WEIGHTS = MapStateDescriptor(
    "checkpoint-weights-v1", Types.LONG(), Types.PRIMITIVE_ARRAY(Types.BYTE())
)

#: The drift operator's detectors of one model (``flowlearn.core.monitoring`` bytes).
DRIFT_MONITOR = ValueStateDescriptor("drift-monitor-v1", Types.PRIMITIVE_ARRAY(Types.BYTE()))
#: The version at which the drift operator last adapted the model (its cooldown counts from
#: there); kept in state so that a restart does not reset a model twice within a cooldown.
DRIFT_LAST_ADAPTED = ValueStateDescriptor("drift-last-adapted-v1", Types.LONG())
