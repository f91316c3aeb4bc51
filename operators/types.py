"""Typed records flowing between the job's operators (never pickled objects).

Each kind is a NamedTuple (``flowlearn.state.rows``): read a row with ``Kind._make(row)``,
write one with ``to_row(Kind(...))``; the Flink type beside it takes its field names from
the NamedTuple, so a field is added in one place.
"""

from __future__ import annotations

from typing import NamedTuple

from pyflink.common import Row, Types

from flowlearn.core.training import ModelVersion
from flowlearn.state.rows import row_type, to_row

_FLOATS = Types.PRIMITIVE_ARRAY(Types.DOUBLE())
_INTS = Types.PRIMITIVE_ARRAY(Types.INT())
_LONGS = Types.PRIMITIVE_ARRAY(Types.LONG())
_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())


class Samples(NamedTuple):
    """Parsed, validated, labelled samples of one model: n labels and their features, either
    n x n_features values (row-major, flat; ``indices`` and ``offsets`` empty) or, for a
    hashed model, sparse rows: ``features`` the stored values, ``indices`` their columns,
    ``offsets`` the n + 1 row offsets (:func:`flowlearn.core.sparse.to_fields`); ts is the
    latest event time among them. The per-record cost is paid
    once for all: a bulk record is one row, and so are the JSON samples of one model within
    a bundle of records (``job.input_bundle_records``). ``event_ids`` holds one id per
    sample ("" for a sample without) when any JSON sample had one (the trainer drops a
    sample whose id it has seen), else nothing: bulk records, and pairs from the label join,
    which deduplicates them itself."""

    model_id: str
    ts: int
    features: list[float]
    labels: list[float]
    event_ids: list[str]
    indices: list[int]
    offsets: list[int]


class SamplesBuilder:
    """Samples of one model gathered into one :class:`Samples` row: dense rows of one width,
    or a hashed model's sparse rows (values, their columns, row offsets). Rows that fit
    neither (:meth:`fits`) go into a row of their own.

    >>> samples = SamplesBuilder("m", sparse=False)
    >>> samples.add_row(1000, [0.5, 1.5], [], 1.0)
    >>> samples.add_row(900, [2.0, 3.0], [], 0.0)
    >>> Samples._make(samples.row()[1]).features, samples.fits(False, 3)
    ([0.5, 1.5, 2.0, 3.0], False)
    """

    __slots__ = ("event_ids", "features", "indices", "labels", "model_id", "offsets", "ts", "width")

    def __init__(self, model_id: str, sparse: bool) -> None:
        self.model_id = model_id
        self.ts = -(1 << 62)
        self.features: list[float] = []
        self.labels: list[float] = []
        self.event_ids: list[str] = []
        self.indices: list[int] = []
        #: The rows' offsets into ``features`` (sparse rows only; dense rows have none).
        self.offsets: list[int] = [0] if sparse else []
        #: The dense rows' number of values (None until the first).
        self.width: int | None = None

    @property
    def sparse(self) -> bool:
        return bool(self.offsets)

    def fits(self, sparse: bool, width: int) -> bool:
        """Whether a row (sparse, or dense of ``width`` values) can join these."""
        return sparse if self.sparse else not sparse and self.width in (None, width)

    def add_dense_rows(
        self, values: list[float], labels: list[float], event_ids: list[str], ts: int
    ) -> None:
        """Dense rows of one width (``values`` row-major; "" for a row without id)."""
        self.width = len(values) // len(labels)
        self.ts = max(self.ts, ts)
        self.features.extend(values)
        self.labels.extend(labels)
        self.event_ids.extend(event_ids)

    def add_row(
        self, ts: int, values: list[float], indices: list[int], label: float, event_id: str = ""
    ) -> None:
        """One sample: a dense row's values, or a sparse row's values and columns."""
        self.ts = max(self.ts, ts)
        self.features.extend(values)
        if self.offsets:
            self.indices.extend(indices)
            self.offsets.append(len(self.features))
        else:
            self.width = len(values)
        self.labels.append(label)
        self.event_ids.append(event_id)

    def row(self) -> Row:
        """The keyed row (``KEYED_SAMPLE_TYPE``)."""
        return keyed(
            Samples(
                self.model_id,
                self.ts,
                self.features,
                self.labels,
                self.event_ids if any(self.event_ids) else [],
                self.indices,
                self.offsets,
            )
        )


SAMPLE_TYPE = row_type(
    Samples,
    [
        Types.STRING(),
        Types.LONG(),
        _FLOATS,
        _FLOATS,
        Types.BASIC_ARRAY(Types.STRING()),
        _INTS,
        _LONGS,
    ],
)

#: What the samples parser and the label join emit: the model id, then the Samples row (the
#: pair a keyed Python operator takes; ``flowlearn.jobs.interop.keyed_in_java``).
KEYED_SAMPLE_TYPE = Types.ROW([Types.STRING(), SAMPLE_TYPE])


class Feedback(NamedTuple):
    """Events (kind "e") or labels (kind "l") of one model from one bundle of records, in
    their order, on their way to the label join: one row for all of them, so that the join
    is called once a bundle and model, not once a record (in PyFlink a call costs more than
    the join's work for one record). Build one with :class:`FeedbackBuilder`.

    Record ``i`` is ``event_ids[i]`` at ``ts[i]``. An event's features are
    ``features[offsets[i]:offsets[i + 1]]``: one row as :class:`Samples` carries rows, dense,
    or when ``sparse`` a hashed model's (``indices``, the same slice, its columns). A label's
    value is ``labels[i]``; its record's bytes, kept for the DLQ, are
    ``raw[raw_offsets[i]:raw_offsets[i + 1]]``."""

    kind: str
    model_id: str
    event_ids: list[str]
    ts: list[int]
    features: list[float]
    indices: list[int]
    offsets: list[int]
    sparse: bool
    labels: list[float]
    raw: bytes
    raw_offsets: list[int]

    def event_row(self, i: int) -> tuple[list[float], list[int], list[int]]:
        """Event ``i``'s row as :class:`Samples` fields: values, columns and row offsets
        (the last two empty for a dense row)."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        values = self.features[lo:hi]  # a slice: a list of its own already
        if not self.sparse:
            return values, [], []
        return values, self.indices[lo:hi], [0, hi - lo]

    def raw_of(self, i: int) -> bytes:
        """Label ``i``'s record, as it came."""
        return bytes(self.raw[self.raw_offsets[i] : self.raw_offsets[i + 1]])


FEEDBACK_TYPE = row_type(
    Feedback,
    [
        Types.STRING(),
        Types.STRING(),
        Types.BASIC_ARRAY(Types.STRING()),
        _LONGS,
        _FLOATS,
        _INTS,
        _LONGS,
        Types.BOOLEAN(),
        _FLOATS,
        _BYTES,
        _LONGS,
    ],
)


class FeedbackBuilder:
    """Events or labels of one model gathered into one :class:`Feedback` row.

    >>> events = FeedbackBuilder("e", "m", sparse=False)
    >>> events.add_event("e1", 1000, [0.5, 1.5])
    >>> events.add_event("e2", 900, [2.0, 3.0])
    >>> row = events.build()
    >>> row.ts, row.event_row(1)
    ([1000, 900], ([2.0, 3.0], [], []))
    """

    __slots__ = (
        "event_ids",
        "features",
        "indices",
        "kind",
        "labels",
        "model_id",
        "offsets",
        "raw",
        "raw_offsets",
        "sparse",
        "ts",
    )

    def __init__(self, kind: str, model_id: str, sparse: bool = False) -> None:
        self.kind, self.model_id, self.sparse = kind, model_id, sparse
        self.event_ids: list[str] = []
        self.ts: list[int] = []
        self.features: list[float] = []
        self.indices: list[int] = []
        self.offsets: list[int] = [0] if kind == "e" else []
        self.labels: list[float] = []
        self.raw = bytearray()
        self.raw_offsets: list[int] = [0] if kind == "l" else []

    def add_event(
        self, event_id: str, ts: int, values: list[float], indices: list[int] | None = None
    ) -> None:
        """An event's row: dense ``values``, or a sparse row's values and ``indices``."""
        self.event_ids.append(event_id)
        self.ts.append(ts)
        self.features.extend(values)
        if self.sparse:
            self.indices.extend(indices or ())
        self.offsets.append(len(self.features))

    def add_dense_events(
        self, event_ids: list[str], ts: list[int], values: list[float], width: int
    ) -> None:
        """Dense events of ``width`` values each (``values`` row-major)."""
        self.event_ids.extend(event_ids)
        self.ts.extend(ts)
        start = len(self.features)
        self.features.extend(values)
        self.offsets.extend(start + width * (k + 1) for k in range(len(ts)))

    def add_label(self, event_id: str, ts: int, label: float, raw: bytes) -> None:
        self.event_ids.append(event_id)
        self.ts.append(ts)
        self.labels.append(label)
        self.raw += raw
        self.raw_offsets.append(len(self.raw))

    def build(self) -> Feedback:
        return Feedback(
            self.kind,
            self.model_id,
            self.event_ids,
            self.ts,
            self.features,
            self.indices,
            self.offsets,
            self.sparse,
            self.labels,
            bytes(self.raw),
            self.raw_offsets,
        )


#: A feedback row with its model id in front (the pair a keyed Python operator takes).
KEYED_FEEDBACK_TYPE = Types.ROW([Types.STRING(), FEEDBACK_TYPE])

#: What the events and labels parsers emit: the (model id, row) pair and its event time,
#: the latest ``ts`` of its records, for the job's Java timestamp assigner
#: (``flowlearn.jobs.interop.event_time_in_java``). The watermark then moves as it would
#: record by record: it is emitted periodically, never between the records of one bundle.
TIMED_FEEDBACK_TYPE = Types.TUPLE([KEYED_FEEDBACK_TYPE, Types.LONG()])


class ControlCommand(NamedTuple):
    """A control command for one model (``args`` as a JSON object string)."""

    model_id: str
    command: str
    args: str
    ts: int
    source: str


CONTROL_TYPE = row_type(
    ControlCommand, [Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(), Types.STRING()]
)


class Evaluated(NamedTuple):
    """One new version as the monitoring operators see it: ``kind`` is "train" (a trained
    batch, with what the test step saw: 0/1 errors (empty for regression), per-sample losses
    and the monitored features, n x n_monitored, flat), "rollback", "reset" or "warm_start"
    (no samples). ``weights`` (codec array bytes) and ``spec`` are set on checkpoint
    versions only. Three kinds are a model's lifecycle: "create" (version 1,
    ``spec`` the model's runtime entry, no weights), "update" (a new version, ``spec`` its
    live changes so far, a JSON object; no weights) and "delete" (version 0): the monitoring
    operators keep them, or forget the model."""

    model_id: str
    version: int
    kind: str
    samples_applied: int
    errors: list[float]
    losses: list[float]
    features: list[float]
    n_monitored: int
    weights: bytes
    spec: str


EVAL_TYPE = row_type(
    Evaluated,
    [
        Types.STRING(),
        Types.LONG(),
        Types.STRING(),
        Types.LONG(),
        _FLOATS,
        _FLOATS,
        _FLOATS,
        Types.INT(),
        _BYTES,
        Types.STRING(),
    ],
)


class Version(NamedTuple):
    """What the trainer hands the publisher: a new model version (``action`` "publish";
    ``weights`` is empty when only the delta is to be published), a model's deletion, or
    its pin (``version`` the pinned one, 0 for none)."""

    model_id: str
    version: int
    base_version: int
    samples_applied: int
    spec: str
    delta: bytes
    weights: bytes
    action: str

    @classmethod
    def deletion(cls, model_id: str) -> Version:
        return cls(model_id, 0, 0, 0, "", b"", b"", "delete")

    @classmethod
    def pinning(cls, model_id: str, version: int, spec: str = "", weights: bytes = b"") -> Version:
        """Predictors are to serve ``version`` of ``model_id`` (its spec and weights); 0:
        its latest again."""
        return cls(model_id, version, 0, 0, spec, b"", weights, "pin")

    @classmethod
    def of(cls, mv: ModelVersion) -> Version:
        return cls(
            mv.model_id,
            mv.version,
            mv.base_version,
            mv.samples_applied,
            mv.spec_json,
            mv.delta,
            mv.weights or b"",
            "publish",
        )

    def model_version(self) -> ModelVersion:
        return ModelVersion(
            self.model_id,
            self.version,
            self.base_version,
            self.samples_applied,
            self.spec,
            bytes(self.delta),
            bytes(self.weights) or None,
        )


VERSION_TYPE = row_type(
    Version,
    [
        Types.STRING(),
        Types.LONG(),
        Types.LONG(),
        Types.LONG(),
        Types.STRING(),
        _BYTES,
        _BYTES,
        Types.STRING(),
    ],
)


class Published(NamedTuple):
    """What the publisher confirms it wrote to Redis."""

    model_id: str
    epoch: int
    version: int
    samples_applied: int


PUBLISHED_TYPE = row_type(Published, [Types.STRING(), Types.LONG(), Types.LONG(), Types.LONG()])


def keyed(record: Samples | Feedback) -> Row:
    """The (model id, row) pair a keyed operator takes (``KEYED_SAMPLE_TYPE``,
    ``KEYED_FEEDBACK_TYPE``)."""
    return Row(record.model_id, to_row(record))
