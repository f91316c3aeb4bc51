"""Bit-exact replicas of published models, following Redis (docs/architecture.md, "Redis").

A :class:`ModelReplica` holds the newest version of one model it could build, and a few
recent ones for pins (:class:`Kept`: little memory, a scoring model only for the one
served). A :class:`Follower` keeps every model of the ``models`` set up to date: it loads a
snapshot, then reads the delta stream from the snapshot's id onwards
(blocking ``XREAD``). For each entry, with ``(e, v)`` the held epoch and version:

- an entry of an older epoch, or of epoch ``e`` with version ``<= v``, is already included:
  skipped;
- an entry of epoch ``e`` whose ``base_version`` is ``v`` is applied;
- anything else (a newer epoch, or a gap) reloads the snapshot; if the snapshot does not
  make the entry fit either, the entry is skipped and counted, and the held version stays.

Each refresh (about every second, and first thing after Redis comes back) also reads the
snapshot headers: a snapshot ahead of the replica is loaded, and a snapshot that went
missing or moved backwards means Redis lost its data — the replica then keeps serving what
it holds but applies nothing more until it can load the new lineage's snapshot.

A model in the ``deleted`` hash was deleted on purpose, unlike one that merely went missing:
its replica is dropped, and it is served again only once it is published again.

A new version's weights are built completely, made read-only, and only then published by
one reference assignment (``replica.served``), so a request sees exactly one published
version, never a mix; the follower thread is the only writer.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from flowlearn.contracts.redis_contract import (
    DeltaEntry,
    Keys,
    Snapshot,
    delta_stream_id,
    read_snapshot,
)
from flowlearn.core import codec
from flowlearn.serving.metrics import Metrics
from flowlearn.serving.scoring import Chooser, Scorer, served_functions

log = logging.getLogger("flowlearn.serving.replica")

#: Recent versions kept per model, so that a pin to one of them is served from memory.
HISTORY = 16
#: Stream entries read per stream and call.
READ_COUNT = 1000
#: Blocking read time of XREAD (ms); bounds how late a new model or a pin is noticed.
BLOCK_MS = 1000
#: Reconnection backoff (seconds) while Redis is unreachable.
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0


@dataclass(frozen=True, eq=False)
class Version:
    """One published version, ready to score; never mutated (its weights are read-only)."""

    epoch: int
    version: int
    spec: Mapping[str, Any]
    weights: np.ndarray
    published_ms: int
    score: Scorer
    #: A contextual bandit's choosing function (None: the model predicts, it does not choose).
    choose: Chooser | None = None

    @classmethod
    def build(
        cls,
        epoch: int,
        version: int,
        spec: Mapping[str, Any],
        weights: np.ndarray,
        published_ms: int,
    ) -> Version:
        """Freeze ``weights`` (owned by the new version) and bind the scorer to them."""
        weights.setflags(write=False)
        score, choose = served_functions(spec, weights)
        return cls(epoch, version, spec, weights, published_ms, score, choose)

    @classmethod
    def of_snapshot(cls, snap: Snapshot) -> Version:
        """The version a snapshot hash holds (its weights copied: the array becomes ours)."""
        weights = snap.weights.astype(np.float64, copy=True).reshape(-1)
        return cls.build(snap.epoch, snap.version, snap.spec, weights, snap.ts)


@dataclass(frozen=True, eq=False)
class Kept:
    """A version kept for pins, in little memory: no scoring model (it would cost more than
    the weights: its own copy, the pipeline's arrays), and its weights either whole
    (``indices`` None: the newest version, or one of another shape or spec than the next),
    or as the coordinates where they differ from the next newer version's, with their
    values here (an *undo*: a version changes few coordinates of a large model)."""

    epoch: int
    version: int
    spec: Mapping[str, Any]
    published_ms: int
    weights: np.ndarray
    indices: np.ndarray | None = None

    @classmethod
    def of(cls, version: Version) -> Kept:
        return cls(
            version.epoch, version.version, version.spec, version.published_ms, version.weights
        )

    def undone_by(self, newer: Kept) -> Kept:
        """This version as an undo of ``newer``, when both have the same spec and shape."""
        if self.indices is not None or newer.spec != self.spec:
            return self
        try:
            indices = codec.changed_indices(newer.weights, self.weights)
        except ValueError:  # another shape
            return self
        values = self.weights[indices]
        values.setflags(write=False)
        return dataclasses.replace(self, weights=values, indices=indices)

    def weights_from(self, newer: np.ndarray) -> np.ndarray:
        """Its weights, given the next newer version's."""
        if self.indices is None:
            return self.weights
        weights = newer.copy()
        weights[self.indices] = self.weights
        weights.setflags(write=False)
        return weights


@dataclass(frozen=True, eq=False)
class Served:
    """What a request scores with: one version, plus how it was chosen."""

    version: Version
    latest: Version
    pin: int | None
    pin_missing: bool


class Offer(enum.Enum):
    """What a replica did with a stream entry."""

    SKIPPED = "skipped"
    APPLIED = "applied"
    RELOAD = "reload"


def _position(stream_id: bytes) -> tuple[int, int]:
    epoch, _, version = stream_id.partition(b"-")
    return int(epoch), int(version)


class ModelReplica:
    """The versions of one model this process holds and where it is in the delta stream."""

    def __init__(self, model_id: str, history: int = HISTORY) -> None:
        self.model_id = model_id
        #: Newest version held; what a request scores with, unless a pin says otherwise.
        self.latest: Version | None = None
        #: The one reference a request reads: swapped whole, never modified.
        self.served: Served | None = None
        #: Stream id ``(epoch, version)`` read up to.
        self.position = (0, 0)
        #: ``(epoch, version, ts)`` of the newest snapshot header seen in Redis.
        self.snapshot_seen: tuple[int, int, int] | None = None
        #: Set when Redis no longer has the model: the next snapshot starts a new lineage.
        self.lost = False
        #: The latest versions held, the newest last (``latest`` itself included).
        self._history: OrderedDict[tuple[int, int], Kept] = OrderedDict()
        self._keep = history
        self._pin: int | None = None
        #: The pinned version, ready to score, while a pin chooses an older version; held for
        #: as long as the pin lasts, even once newer versions push it out of the history.
        self._pinned: Version | None = None
        #: The pin whose weights were last asked of Redis (``{prefix}model:{m}:pinned``).
        self.pinned_asked: int | None = None

    def load(self, snap: Snapshot, reset: bool = False) -> bool:
        """Adopt a snapshot if it is newer than what is held; True when adopted.

        ``reset`` adopts a snapshot of an older epoch: only Redis losing its data (and a
        publisher whose clock is behind the lost lineage's) produces one.
        """
        held = self.latest
        if (
            held is not None
            and not reset
            and (snap.epoch, snap.version) <= (held.epoch, held.version)
        ):
            return False
        if reset:
            self._history.clear()
            self.lost = False
        self.snapshot_seen = (snap.epoch, snap.version, snap.ts)
        self._hold(Version.of_snapshot(snap))
        self.position = (
            (snap.epoch, snap.version) if reset else max(self.position, (snap.epoch, snap.version))
        )
        return True

    def check_snapshot(self, header: tuple[int, int, int] | None) -> str | None:
        """Given the snapshot's ``(epoch, version, ts)`` now in Redis (None: missing), the
        reason to reload it, or None.

        Within an epoch snapshots only move forward, and epochs only grow, so a changed
        snapshot older than what is held means Redis lost its data (and the new lineage's
        epoch, from a clock behind, is older): the old lineage must not be continued
        ("reset").
        """
        held = self.latest
        seen, self.snapshot_seen = self.snapshot_seen, header or self.snapshot_seen
        if header is None:
            self.lost = held is not None
            return None
        if held is None:
            return "start"
        snap = header[:2]
        if (
            self.lost
            or snap[0] < held.epoch
            or (header != seen and snap < (held.epoch, held.version))
        ):
            return "reset"
        if snap > (held.epoch, held.version):
            # Normally the stream gets there first; this catches a replica whose stream
            # position was trimmed away entirely.
            return "epoch" if snap[0] > held.epoch else "behind"
        return None

    def offer(self, entry: DeltaEntry) -> Offer:
        """Skip, apply, or ask for a snapshot reload (see the module docstring)."""
        held = self.latest
        if held is None or self.lost:
            return Offer.RELOAD
        if (entry.epoch, entry.version) <= (held.epoch, held.version):
            return Offer.SKIPPED
        if entry.epoch != held.epoch or entry.base_version != held.version:
            return Offer.RELOAD
        weights = held.weights.copy()  # copy-on-write: the served array is never touched
        try:
            codec.apply_delta(weights, entry.delta)
        except codec.CodecError:
            return Offer.RELOAD
        self._hold(Version.build(held.epoch, entry.version, held.spec, weights, entry.ts))
        return Offer.APPLIED

    def set_pin(self, pin: int | None) -> None:
        if pin != self._pin:
            self._pin = pin
            self.pinned_asked = None
            self._resolve()

    def _hold(self, version: Version) -> None:
        key = (version.epoch, version.version)
        if key in self._history:  # never seen: keys grow; an undo chain must not break
            self._history.clear()
        kept = Kept.of(version)
        if self._history:
            newest, previous = next(reversed(self._history.items()))
            self._history[newest] = previous.undone_by(kept)
        self._history[key] = kept
        while len(self._history) > self._keep:
            self._history.popitem(last=False)
        self.latest = version
        self._resolve()

    def _resolve(self) -> None:
        latest = self.latest
        if latest is None:
            return
        if self._pin is None:
            self.served = Served(latest, latest, None, False)
            return
        # Within an epoch a version names one set of weights, and a new epoch replays the
        # same ones (docs/architecture.md, "Redis"), so the newest epoch holding the pinned version
        # will do.
        pinned = [key for key in self._history if key[1] == self._pin]
        if not pinned:
            held = self._pinned
            if held is not None and held.version == self._pin:
                self.served = Served(held, latest, self._pin, False)
                return
            self._pinned = None
            self.served = Served(latest, latest, self._pin, True)
            return
        key = max(pinned)
        if key == (latest.epoch, latest.version):
            chosen = latest
        elif self._pinned is not None and (self._pinned.epoch, self._pinned.version) == key:
            chosen = self._pinned
        else:  # built once per pinned version, not per request
            chosen = self._rebuild(key)
        self._pinned = chosen if chosen is not latest else None
        self.served = Served(chosen, latest, self._pin, False)

    def wants_pinned(self) -> bool:
        """Whether the pinned version is missing and its weights not yet asked of Redis."""
        served = self.served
        return (
            served is not None
            and served.pin_missing
            and self._pin is not None
            and self.pinned_asked != self._pin
        )

    def adopt_pinned(self, snap: Snapshot | None) -> None:
        """The pinned version's weights as Redis has them (None: it has none): served
        while the pin names that version."""
        self.pinned_asked = self._pin
        if snap is None or snap.version != self._pin:
            return
        self._pinned = Version.of_snapshot(snap)
        self._resolve()

    def _rebuild(self, key: tuple[int, int]) -> Version:
        """A kept version, ready to score: its weights undone from the newest's."""
        weights = self.latest.weights if self.latest is not None else np.empty(0)
        for at, kept in reversed(self._history.items()):
            weights = kept.weights_from(weights)
            if at == key:
                return Version.build(
                    kept.epoch, kept.version, kept.spec, weights, kept.published_ms
                )
        raise KeyError(key)


class Follower:
    """Keeps a :class:`ModelReplica` of every model in Redis up to date.

    :meth:`run` is the loop of the follower thread; :meth:`sync` does the same work once,
    without blocking (tests drive it step by step). Only this object writes to replicas.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        metrics: Metrics,
        history: int = HISTORY,
        refresh_s: float = 1.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.replicas: dict[str, ModelReplica] = {}
        #: True while the last Redis call succeeded.
        self.redis_ok = False
        #: True once the models set has been read: only then is "every model loaded" known.
        self.models_known = False
        #: Deleted models (no replica) -> deletion time in ms; replaced whole, never modified,
        #: so a request reads one consistent mapping.
        self.deleted: Mapping[str, int] = {}
        self._history = history
        self._refresh_s = refresh_s
        self._last_refresh = float("-inf")
        self._stream_models: dict[bytes, str] = {}
        self._stop = threading.Event()

    # ------------------------------------------------------------------ one round

    def refresh(self) -> None:
        """Re-read the models set, the deleted models, each model's snapshot header, and the
        pins."""
        # No MULTI: a predictor may log in as a read-only user (docs/security.md). In this
        # order, a delete between the two reads shows the model in neither (missing: kept, as
        # before the delete) and a publish shows it in both (listed wins, as after it).
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.deleted)
        pipe.smembers(self.keys.models)
        deletions, members = pipe.execute()
        listed = {raw.decode() for raw in members}
        for model_id in sorted(listed - self.replicas.keys()):
            self.replicas[model_id] = ModelReplica(model_id, self._history)
            self._stream_models[self.keys.deltas(model_id).encode()] = model_id
        deleted: dict[str, int] = {}
        for key, raw in deletions.items():
            if (model_id := key.decode()) not in listed:
                deleted[model_id] = self._parse_deleted(model_id, raw)
        # The new mapping before the replicas go: a request that finds no replica then finds
        # the model here (and a re-created one has its replica before it leaves the mapping).
        self.deleted = deleted
        for model_id in deleted.keys() & self.replicas.keys():
            del self.replicas[model_id]
            del self._stream_models[self.keys.deltas(model_id).encode()]
            log.info("%s: deleted; no longer served", model_id)
        # Every other model held, listed or not: a model missing from Redis may mean lost data.
        models = sorted(self.replicas)
        pipe = self.client.pipeline(transaction=False)
        for model_id in models:
            pipe.hmget(self.keys.snapshot(model_id), "epoch", "version", "ts")
            pipe.get(self.keys.pin(model_id))
        answers = pipe.execute()
        for i, model_id in enumerate(models):
            replica = self.replicas[model_id]
            header, pin = answers[2 * i], answers[2 * i + 1]
            reason = replica.check_snapshot(
                None if None in header else (int(header[0]), int(header[1]), int(header[2]))
            )
            if reason is not None:
                self._reload(replica, reason)
            replica.set_pin(self._parse_pin(model_id, pin))
        self._fetch_pinned([m for m in models if self.replicas[m].wants_pinned()])
        self.models_known = True
        self._last_refresh = time.monotonic()

    def poll(self, block_ms: int | None) -> int:
        """Read and handle the entries after each replica's position; how many were read."""
        streams: dict[bytes | str, bytes | str] = {
            self.keys.deltas(m): delta_stream_id(*r.position)
            for m, r in self.replicas.items()
            if r.latest is not None
        }
        if not streams:
            return 0
        count = 0
        for stream, entries in self.client.xread(streams, count=READ_COUNT, block=block_ms) or []:
            replica = self.replicas[self._stream_models[stream]]
            for stream_id, fields in entries:
                self._handle(replica, stream_id, fields)
                count += 1
        return count

    def sync(self) -> None:
        """Refresh, then read until every stream is drained (non-blocking)."""
        self.refresh()
        while self.poll(None):
            pass

    # ------------------------------------------------------------------ the thread

    def run(self) -> None:
        """Follow until :meth:`stop`; Redis errors are logged and retried, never raised."""
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                if time.monotonic() - self._last_refresh >= self._refresh_s:
                    self.refresh()
                self._set_redis_ok(True)
                backoff = BACKOFF_MIN_S
                if not any(r.latest is not None for r in self.replicas.values()):
                    self._stop.wait(self._refresh_s)
                    continue
                self.poll(BLOCK_MS)
            except redis.RedisError as exc:
                if self._stop.is_set():
                    break
                if self.redis_ok:
                    log.warning("Redis unreachable (%s): serving the last good weights", exc)
                self._set_redis_ok(False)
                # Redis may come back without its data: look at the snapshots before
                # reading any stream entry (see ModelReplica.check_snapshot).
                self._last_refresh = float("-inf")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except Exception:  # a bug must not stop the models from being served
                if self._stop.is_set():
                    break  # stop() closed the socket under a read: any error may surface
                log.exception("follower error; retrying")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def stop(self) -> None:
        """Make :meth:`run` return promptly, even from inside a blocking read."""
        self._stop.set()
        # Closing the sockets wakes a blocked XREAD at once instead of after BLOCK_MS.
        self.client.connection_pool.disconnect()

    # ------------------------------------------------------------------ helpers

    def _set_redis_ok(self, ok: bool) -> None:
        if ok != self.redis_ok:
            if ok:
                log.info("Redis reachable")
            self.redis_ok = ok
            self.metrics.redis_up.set(1 if ok else 0)

    def _handle(self, replica: ModelReplica, stream_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            entry = DeltaEntry.from_entry(stream_id, fields)
        except (codec.CodecError, KeyError, ValueError) as exc:
            log.warning("%s: unusable stream entry %s: %s", replica.model_id, stream_id, exc)
            self.metrics.stream_errors.labels(replica.model_id, "bad_entry").inc()
        else:
            outcome = replica.offer(entry)
            if outcome is Offer.RELOAD:
                held = replica.latest
                self._reload(
                    replica,
                    "reset"
                    if replica.lost
                    else "epoch"
                    if held and entry.epoch != held.epoch
                    else "gap",
                )
                outcome = replica.offer(entry)
            if outcome is Offer.APPLIED:
                self.metrics.deltas_applied.labels(replica.model_id).inc()
            elif outcome is Offer.RELOAD:
                # Not buildable even from the snapshot (e.g. trimmed past it): keep the held
                # version; a later snapshot will move the replica on.
                self.metrics.stream_errors.labels(replica.model_id, "gap").inc()
        replica.position = max(replica.position, _position(stream_id))

    def _reload(self, replica: ModelReplica, reason: str) -> None:
        try:
            snap = read_snapshot(self.client, self.keys, replica.model_id)
            loaded = snap is not None and replica.load(snap, reset=reason == "reset")
        except (codec.CodecError, KeyError, ValueError) as exc:
            log.warning("%s: unusable snapshot: %s", replica.model_id, exc)
            self.metrics.stream_errors.labels(replica.model_id, "bad_snapshot").inc()
            return
        if loaded:
            self.metrics.reloads.labels(replica.model_id, reason).inc()

    def _fetch_pinned(self, model_ids: list[str]) -> None:
        """The weights of pinned versions that replicas do not hold (once per pin)."""
        if not model_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for model_id in model_ids:
            pipe.hgetall(self.keys.pinned(model_id))
        for model_id, fields in zip(model_ids, pipe.execute(), strict=True):
            replica = self.replicas[model_id]
            try:
                replica.adopt_pinned(Snapshot.from_hash(fields) if fields else None)
            except (codec.CodecError, KeyError, ValueError) as exc:
                log.warning("%s: the pinned version's weights are unusable (%s)", model_id, exc)
                self.metrics.stream_errors.labels(model_id, "bad_pinned").inc()
                replica.adopt_pinned(None)

    def _parse_deleted(self, model_id: str, raw: bytes) -> int:
        """The deletion time; an unreadable one still deletes the model (membership says
        so), recorded as 0 rather than stopping every refresh."""
        try:
            return int(raw)
        except ValueError:
            log.warning("%s: deletion time %r is not a number; taken as 0", model_id, raw)
            self.metrics.stream_errors.labels(model_id, "bad_deleted").inc()
            return 0

    def _parse_pin(self, model_id: str, raw: bytes | None) -> int | None:
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            log.warning("%s: pin %r is not a version number; ignored", model_id, raw)
            self.metrics.stream_errors.labels(model_id, "bad_pin").inc()
            return None
