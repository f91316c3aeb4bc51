"""State descriptors of the training job.

Names and types are part of the savepoint format: change them only with a migration. Every
value is typed (primitive arrays and longs), never a pickled Python object.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any, NamedTuple

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
    and raw bytes (kept for the DLQ).

    In ``join-entries-v4`` an entry is kept as bytes (:meth:`packed`): one byte array is
    all PyFlink's state writes encode, where a row of three lists cost it a field and a
    boxed number each, on both sides (``bench/bench_join.py``).

    >>> entry = JoinEntry(1, 1000, [0.5, 1.5], 0, 0.0, b"", [], [])
    >>> JoinEntry.unpacked(entry.packed()) == entry
    True
    """

    flags: int
    event_ts: int
    features: list[float]
    label_ts: int
    label: float
    raw: bytes
    indices: list[int]
    offsets: list[int]

    def packed(self) -> bytes:
        """The entry as ``join-entries-v4`` keeps it, little-endian: the header
        (:data:`JOIN_ENTRY_HEADER`: flags, event time, label time, label, and how many
        features, indices and offsets), the features (float64), indices (int32), offsets
        (int64), then the raw bytes."""
        header = JOIN_ENTRY_HEADER.pack(
            self.flags,
            self.event_ts,
            self.label_ts,
            self.label,
            len(self.features),
            len(self.indices),
            len(self.offsets),
        )
        return b"".join(
            (
                header,
                _little_endian("d", self.features),
                _little_endian("i", self.indices),
                _little_endian("q", self.offsets),
                self.raw,
            )
        )

    @classmethod
    def unpacked(cls, data: bytes) -> JoinEntry:
        """The entry :meth:`packed` gave ``data`` for."""
        flags, event_ts, label_ts, label, n_features, n_indices, n_offsets = (
            JOIN_ENTRY_HEADER.unpack_from(data)
        )
        at = JOIN_ENTRY_HEADER.size
        columns: list[list[Any]] = []
        for typecode, n in (("d", n_features), ("i", n_indices), ("q", n_offsets)):
            values, at = _from_little_endian(typecode, data, at, n)
            columns.append(values)
        features, indices, offsets = columns
        return cls(flags, event_ts, features, label_ts, label, bytes(data[at:]), indices, offsets)

    @staticmethod
    def head(data: bytes) -> tuple[int, int, int, float]:
        """``flags``, ``event_ts``, ``label_ts`` and ``label`` of a packed entry, read from
        its header alone."""
        flags, event_ts, label_ts, label = JOIN_ENTRY_HEADER.unpack_from(data)[:4]
        return flags, event_ts, label_ts, label


#: The header of a packed :class:`JoinEntry`: flags (int32), event time, label time (int64),
#: label (float64), and the number of features, indices and offsets (int32).
JOIN_ENTRY_HEADER = struct.Struct("<iqqdiii")


def _little_endian(typecode: str, values: list[Any]) -> bytes:
    packed = array(typecode, values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _from_little_endian(typecode: str, data: bytes, at: int, n: int) -> tuple[list[Any], int]:
    """The ``n`` values :func:`_little_endian` wrote at offset ``at`` of ``data``, and the
    offset after them."""
    values = array(typecode)
    end = at + n * values.itemsize
    values.frombytes(data[at:end])
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist(), end


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


#: Label join, keyed by model id: event id -> JoinEntry, packed (:meth:`JoinEntry.packed`).
JOIN_ENTRIES = MapStateDescriptor("join-entries-v4", Types.STRING(), _BYTES)
#: The entries of older savepoints, as rows: read once after a restore and moved to
#: JOIN_ENTRIES.
JOIN_ENTRY_TYPE_V3 = row_type(
    JoinEntry,
    [Types.INT(), Types.LONG(), _FLOATS, Types.LONG(), Types.DOUBLE(), _BYTES, _INTS, _LONGS],
)
JOIN_ENTRIES_V3 = MapStateDescriptor("join-entries-v3", Types.STRING(), JOIN_ENTRY_TYPE_V3)
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
