"""The bundles of ``fl.samples`` records that the Java ``SampleBundler`` (operators/java)
makes, and of ``fl.events`` and ``fl.labels`` records that its ``EventBundler`` and
``LabelBundler`` make: the raw records, as every bundle carries them, and the JSON records
it could decode, column by column, so that the parser checks and gathers them as arrays (an
event's label is NaN, a label's features none).

Its class comment holds the layout; :func:`read` is the one reader of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The first bytes of a decoded bundle (a bundle of raw records only starts with a record's
#: length, whose first byte is below 0x80).
MAGIC = b"\xfeFL1"

_HEADER_FIELDS = 6


@dataclass(frozen=True)
class DecodedBundle:
    """The records of a bundle, and the samples decoded from some of them (their rows, in
    record order: ``record_index[i]`` is the record that sample ``i`` came from)."""

    raw: bytes
    #: Where each record's frame starts in ``raw`` (n_records + 1 entries).
    record_starts: np.ndarray
    ts: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    record_index: np.ndarray
    model_id_index: np.ndarray
    #: Each sample's features are ``features[feature_starts[i]:feature_starts[i + 1]]``.
    feature_starts: np.ndarray
    #: Each sample's event id is these bytes of ``event_ids`` (empty: none).
    event_id_starts: np.ndarray
    event_ids: bytes
    model_ids: list[str]

    @property
    def n_records(self) -> int:
        return len(self.record_starts) - 1

    def record(self, i: int) -> bytes:
        """Record ``i``'s raw bytes, as Kafka gave them."""
        return self.raw[int(self.record_starts[i]) + 4 : int(self.record_starts[i + 1])]


def is_decoded(bundle: bytes) -> bool:
    return bundle[:4] == MAGIC


def read(bundle: bytes) -> DecodedBundle:
    """A decoded bundle's columns (views of ``bundle``, not copies); ValueError if it is cut
    short."""
    if not is_decoded(bundle):
        raise ValueError("not a decoded bundle")
    raw_size = int.from_bytes(bundle[4:8], "little")
    at = 8 + ((raw_size + 7) & ~7)

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal at
        out = np.frombuffer(bundle, dtype=dtype, count=count, offset=at)
        at += out.nbytes
        return out

    n_records, n, n_ids, n_values, event_id_bytes, _ = take("<i4", _HEADER_FIELDS).tolist()
    ts = take("<i8", n)
    labels = take("<f8", n)
    features = take("<f8", n_values)
    record_starts = take("<i4", n_records + 1)
    record_index = take("<i4", n)
    model_id_index = take("<i4", n)
    feature_starts = take("<i4", n + 1)
    event_id_starts = take("<i4", n + 1)
    event_ids = bundle[at : at + event_id_bytes]
    at += event_id_bytes
    model_ids = []
    for _ in range(n_ids):
        size = int.from_bytes(bundle[at : at + 4], "little")
        model_ids.append(bundle[at + 4 : at + 4 + size].decode("ascii"))
        at += 4 + size
    if at != len(bundle):
        raise ValueError(f"decoded bundle of {len(bundle)} bytes, its layout says {at}")
    return DecodedBundle(
        raw=bundle[8 : 8 + raw_size],
        record_starts=record_starts,
        ts=ts,
        labels=labels,
        features=features,
        record_index=record_index,
        model_id_index=model_id_index,
        feature_starts=feature_starts,
        event_id_starts=event_id_starts,
        event_ids=event_ids,
        model_ids=model_ids,
    )
