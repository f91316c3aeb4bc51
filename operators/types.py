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
    """An event (kind "e": features, label NaN) or a label (kind "l": label and the record's
    raw bytes, kept for the DLQ should it come late), on its way to the label join. An
    event's features are one row as :class:`Samples` carries rows (a hashed model's: sparse,
    ``offsets`` ``[0, len(features)]``)."""

    kind: str
    model_id: str
    event_id: str
    ts: int
    features: list[float]
    label: float
    raw: bytes
    indices: list[int]
    offsets: list[int]


FEEDBACK_TYPE = row_type(
    Feedback,
    [
        Types.STRING(),
        Types.STRING(),
        Types.STRING(),
        Types.LONG(),
        _FLOATS,
        Types.DOUBLE(),
        _BYTES,
        _INTS,
        _LONGS,
    ],
)

#: A feedback row with its model id in front (the pair a keyed Python operator takes).
KEYED_FEEDBACK_TYPE = Types.ROW([Types.STRING(), FEEDBACK_TYPE])

#: What the events and labels parsers emit: the (model id, row) pair and its event time
#: (``ts``), for the job's Java timestamp assigner
#: (``flowlearn.jobs.interop.event_time_in_java``).
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
