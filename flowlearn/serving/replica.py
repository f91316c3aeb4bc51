"""Bit-exact replicas of published models, following Redis (DESIGN: Redis contract).

A replica loads a model's snapshot, then applies the entries of its delta stream: an entry
of the held epoch whose ``base_version`` is the held version is applied; an entry of another
epoch, or a gap, makes the replica reload the snapshot. New weights are built completely
before they replace the served ones (one reference swap), so a request always scores with
the weights of exactly one published version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from flowlearn import codec, linear
from flowlearn.redis_contract import DeltaEntry, Keys, Snapshot, read_snapshot


@dataclass(frozen=True)
class Served:
    """One published version, ready to score: never mutated after construction."""

    epoch: int
    version: int
    samples_applied: int
    spec: dict[str, Any]
    weights: np.ndarray
    model: Any
    published_ms: int
    loaded_at: float

    @classmethod
    def build(cls, epoch: int, version: int, samples_applied: int, spec: dict[str, Any],
              weights: np.ndarray, published_ms: int) -> Served:
        weights.setflags(write=False)
        return cls(epoch, version, samples_applied, spec, weights,
                   linear.from_spec(spec, weights), published_ms, time.time())


class ModelReplica:
    """The served version of one model and the stream position it has read to."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.served: Served | None = None
        self.last_id = b"0-0"
        self.reloads = 0

    def load(self, snap: Snapshot) -> None:
        self.served = Served.build(snap.epoch, snap.version, snap.samples_applied, snap.spec,
                                   snap.weights.copy(), snap.ts)
        self.reloads += 1

    def apply(self, entry: DeltaEntry) -> bool:
        """Apply one stream entry; False when the replica must reload the snapshot."""
        self.last_id = entry.stream_id
        served = self.served
        if served is None:
            return False
        if entry.epoch == served.epoch and entry.version <= served.version:
            return True  # already included (read before the snapshot was taken)
        if entry.epoch != served.epoch or entry.base_version != served.version:
            return False
        weights = served.weights.copy()
        codec.apply_delta(weights, entry.delta)
        self.served = Served.build(served.epoch, entry.version,
                                   served.samples_applied, served.spec, weights, entry.ts)
        return True


def sync(client: redis.Redis, keys: Keys, replica: ModelReplica) -> None:
    """Bring one replica up to date: snapshot if needed, then every stream entry after it."""
    if replica.served is None:
        snap = read_snapshot(client, keys, replica.model_id)
        if snap is None:
            return
        replica.load(snap)
        replica.last_id = b"0-0"
    for stream_id, fields in client.xrange(keys.deltas(replica.model_id),
                                           min=_after(replica.last_id)):
        if not replica.apply(DeltaEntry.from_entry(stream_id, fields)):
            snap = read_snapshot(client, keys, replica.model_id)
            if snap is not None:
                replica.load(snap)
            replica.last_id = stream_id


def _after(stream_id: bytes) -> str:
    """XRANGE's lower bound just after ``stream_id`` (exclusive), or the stream's start."""
    return "(" + stream_id.decode() if stream_id != b"0-0" else "-"
