"""Redis keys and records (docs/architecture.md, "Redis"), shared by the publisher and readers.

Keys (``prefix`` defaults to ``fl:``)::

    {prefix}models                 set     model ids
    {prefix}deleted                hash    model id -> deletion time (ms since epoch)
    {prefix}epoch                  string  the last epoch a publisher (re)start took
    {prefix}model:{m}:snapshot     hash    epoch, version, samples_applied, codec, spec, weights, ts
    {prefix}model:{m}:deltas       stream  epoch, version, base_version, codec, delta, ts
    {prefix}model:{m}:pin          string  a version the predictor must serve
    {prefix}model:{m}:pinned       hash    that version's weights, as a snapshot (samples_applied 0)

Delta entries carry the explicit stream id ``{epoch}-{version}``: ids then grow with the
epoch and, within it, the version. A version is written by one Lua script that refuses one
older than the model's newest (a zombie writer of an old epoch) and tells a retry of a write
that landed; epochs follow the clock, so they keep growing when Redis loses its counter.

A deleted model's keys are removed and its id moves from ``models`` to ``deleted`` in one
transaction: a reader then tells a deleted model (forget it) from one that is merely missing
(Redis may have lost its data: keep serving it). Publishing the id again moves it back.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from flowlearn.conf import RedisConf
from flowlearn.contracts.records import now_ms
from flowlearn.core import codec
from flowlearn.core.training import ModelVersion


def redis_client(
    conf: RedisConf, timeout_s: float = 2.0, connect_timeout_s: float | None = None
) -> redis.Redis:
    """A ``redis.Redis`` client for the server ``conf`` names, user and TLS included.
    ``timeout_s`` bounds each command (it must outlast a blocking XREAD),
    ``connect_timeout_s`` (default ``timeout_s``) the connection."""
    tls: dict[str, Any] = {}
    if conf.tls:
        tls = {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_ca_certs": conf.tls_ca_file or None,
            "ssl_certfile": conf.tls_cert_file or None,
            "ssl_keyfile": conf.tls_key_file or None,
        }
    return redis.Redis(
        host=conf.host,
        port=conf.port,
        username=conf.username or None,
        password=conf.password or None,
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s or timeout_s,
        **tls,
    )


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "fl:"

    @property
    def models(self) -> str:
        return f"{self.prefix}models"

    @property
    def deleted(self) -> str:
        return f"{self.prefix}deleted"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    def snapshot(self, model_id: str) -> str:
        return f"{self.prefix}model:{model_id}:snapshot"

    def deltas(self, model_id: str) -> str:
        return f"{self.prefix}model:{model_id}:deltas"

    def pin(self, model_id: str) -> str:
        return f"{self.prefix}model:{model_id}:pin"

    def pinned(self, model_id: str) -> str:
        return f"{self.prefix}model:{model_id}:pinned"


def delta_stream_id(epoch: int, version: int) -> str:
    return f"{epoch}-{version}"


@dataclass(frozen=True)
class Snapshot:
    """A decoded ``snapshot`` hash: complete weights of one version."""

    epoch: int
    version: int
    samples_applied: int
    spec: dict[str, Any]
    weights: np.ndarray
    ts: int

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> Snapshot:
        codec_name = fields[b"codec"].decode()
        if codec_name != codec.CODEC_NAME:
            raise codec.CodecError(f"snapshot codec {codec_name!r}, expected {codec.CODEC_NAME}")
        return cls(
            epoch=int(fields[b"epoch"]),
            version=int(fields[b"version"]),
            samples_applied=int(fields[b"samples_applied"]),
            spec=json.loads(fields[b"spec"]),
            weights=codec.decode_array(fields[b"weights"]),
            ts=int(fields[b"ts"]),
        )


@dataclass(frozen=True)
class DeltaEntry:
    """A decoded entry of the ``deltas`` stream."""

    stream_id: bytes
    epoch: int
    version: int
    base_version: int
    delta: codec.Delta
    ts: int

    @classmethod
    def from_entry(cls, stream_id: bytes, fields: dict[bytes, bytes]) -> DeltaEntry:
        codec_name = fields[b"codec"].decode()
        if codec_name != codec.CODEC_NAME:
            raise codec.CodecError(f"delta codec {codec_name!r}, expected {codec.CODEC_NAME}")
        return cls(
            stream_id=stream_id,
            epoch=int(fields[b"epoch"]),
            version=int(fields[b"version"]),
            base_version=int(fields[b"base_version"]),
            delta=codec.decode_delta(fields[b"delta"]),
            ts=int(fields[b"ts"]),
        )


def read_snapshot(client: redis.Redis, keys: Keys, model_id: str) -> Snapshot | None:
    fields = client.hgetall(keys.snapshot(model_id))
    return Snapshot.from_hash(fields) if fields else None


def read_pinned(client: redis.Redis, keys: Keys, model_id: str) -> Snapshot | None:
    """The weights of the model's pinned version (None: no pin, or none written with it)."""
    fields = client.hgetall(keys.pinned(model_id))
    return Snapshot.from_hash(fields) if fields else None


#: The fields of a snapshot hash that say which version it holds (not its weights: they can
#: be megabytes a model).
HEADER_FIELDS = ("version", "epoch", "samples_applied", "spec")


def model_headers(
    client: redis.Redis, keys: Keys, model_ids: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The ``version``, ``epoch``, ``samples_applied`` and ``spec`` of each published model
    (of ``model_ids``, default every model of the ``models`` set), in one round trip."""
    if model_ids is None:
        model_ids = sorted(raw.decode() for raw in client.smembers(keys.models))
    model_ids = list(model_ids)
    pipe = client.pipeline(transaction=False)
    for model_id in model_ids:
        pipe.hmget(keys.snapshot(model_id), *HEADER_FIELDS)
    headers = {}
    for model_id, (version, epoch, applied, spec) in zip(model_ids, pipe.execute(), strict=True):
        if version is not None and epoch is not None and applied is not None and spec is not None:
            headers[model_id] = {
                "version": int(version),
                "epoch": int(epoch),
                "samples_applied": int(applied),
                "spec": json.loads(spec),
            }
    return headers


def model_versions(client: redis.Redis, keys: Keys) -> dict[str, dict[str, int]]:
    """Every published model's ``version``, ``epoch`` and ``samples_applied`` (what
    ``flowlearn status`` shows and a savepoint's manifest records)."""
    return {
        model_id: {name: header[name] for name in ("version", "epoch", "samples_applied")}
        for model_id, header in model_headers(client, keys).items()
    }


def lineage_problem(
    client: redis.Redis, keys: Keys, model_id: str, epoch: int, version: int
) -> str:
    """Why version ``version`` of epoch ``epoch`` may hold other weights than the job's
    version of that number now, or "" when it holds the same.

    After a failover the job restores a checkpoint and makes the versions after it again,
    and a batch closed by the timeout may be cut differently: a version number names the
    same weights in two epochs only up to the version each later epoch was restored at (the
    base of its first delta). The delta stream tells those bases, as long as it still holds
    ``epoch``'s entries.

    >>> # lineage_problem(client, Keys("fl:"), "demo", 1796545252120, 400)
    """
    header = model_headers(client, keys, [model_id]).get(model_id)
    if header is None:
        return f"model {model_id!r} has no published version"
    current = int(header["epoch"])
    if epoch == current:
        return ""
    if epoch > current:
        return f"epoch {epoch} is newer than model {model_id!r}'s current epoch {current}"
    # (epoch, base version) of each entry, oldest first (the ids say the epoch).
    entries = [
        (int(stream_id.split(b"-")[0]), int(fields[b"base_version"]))
        for stream_id, fields in client.xrange(keys.deltas(model_id))
    ]
    if not entries or entries[0][0] > epoch:
        return (
            f"the delta stream of {model_id!r} no longer reaches back to epoch {epoch}: "
            f"cannot tell whether its version {version} is the current epoch {current}'s"
        )
    if all(e != epoch for e, _ in entries):
        return f"model {model_id!r} has no version of epoch {epoch}"
    # The restore point of each later epoch: its first entry's base version.
    restored = [
        base for (before, _), (e, base) in itertools.pairwise(entries) if e != before and e > epoch
    ]
    if restored and version > min(restored):
        return (
            f"version {version} of epoch {epoch} was made again after a restore at version "
            f"{min(restored)}, and may differ from the current epoch {current}'s: name epoch "
            f"{current}, or a version up to {min(restored)}"
        )
    return ""


#: Takes a publisher's epoch: at least the caller's clock in milliseconds (``ARGV[1]``) and
#: more than any epoch taken before from this Redis (the counter, ``KEYS[1]``). The clock keeps
#: epochs growing when Redis has lost its data (the counter starts again from nothing); the
#: counter keeps them growing when two publishers start in the same millisecond or a clock
#: steps back. Numbers are compared as Lua doubles: exact below 2^53 (year 287,000 in ms).
_NEW_EPOCH = """
local epoch = math.max(tonumber(ARGV[1]), redis.call('INCR', KEYS[1]))
redis.call('SET', KEYS[1], string.format('%d', epoch))
return epoch
"""

#: Whether ``(a_epoch, a_version)`` is older than ``(b_epoch, b_version)``; the numbers are
#: decimal strings, compared by length then text so that versions beyond 2^53 stay exact.
_OLDER = """
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function older(ae, av, be, bv)
  if ae ~= be then return less(ae, be) end
  return less(av, bv)
end
-- The newest (epoch, version) written for the model: its stream's last id or its
-- snapshot's, whichever is newer (nil, nil: nothing, Redis lost it or the model is new).
local function head(snapshot, deltas)
  local he, hv
  local last = redis.call('XREVRANGE', deltas, '+', '-', 'COUNT', 1)
  if #last > 0 then
    he, hv = string.match(last[1][1], '^(%d+)-(%d+)$')
  end
  local snap = redis.call('HMGET', snapshot, 'epoch', 'version')
  if snap[1] and snap[2] and (not he or older(he, hv, snap[1], snap[2])) then
    he, hv = snap[1], snap[2]
  end
  return he, hv
end
"""

#: Publishes one version: KEYS snapshot, models, deleted, deltas; ARGV epoch, version,
#: base_version, samples_applied, codec, spec, weights ("" with has_weights 0), has_weights,
#: delta, ts, maxlen, model id. Returns 1 when written, 0 when this very entry is there
#: already (a retry), -1 when refused: the model holds a newer (epoch, version), so the
#: caller is a writer of an old epoch (a zombie after a failover) and nothing is changed.
_PUBLISH = (
    _OLDER
    + """
local epoch, version = ARGV[1], ARGV[2]
local id = epoch .. '-' .. version
if #redis.call('XRANGE', KEYS[4], id, id) > 0 then return 0 end
local he, hv = head(KEYS[1], KEYS[4])
if he and not older(he, hv, epoch, version) then return -1 end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'version', version, 'samples_applied', ARGV[4],
             'codec', ARGV[5], 'spec', ARGV[6], 'weights', ARGV[7], 'ts', ARGV[10])
end
redis.call('SADD', KEYS[2], ARGV[12])
-- A model created again after a delete is live again.
redis.call('HDEL', KEYS[3], ARGV[12])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[11], id, 'epoch', epoch, 'version', version,
           'base_version', ARGV[3], 'codec', ARGV[5], 'delta', ARGV[9], 'ts', ARGV[10])
return 1
"""
)

#: Pins a version: KEYS snapshot, deltas, pin, pinned; ARGV epoch, version, codec, spec,
#: weights, ts. Returns 1, or -1 (nothing written) when the model's newest version is of a
#: newer epoch than the caller's.
_PIN = (
    _OLDER
    + """
local he = head(KEYS[1], KEYS[2])
if he and less(ARGV[1], he) then return -1 end
redis.call('HSET', KEYS[4], 'epoch', ARGV[1], 'version', ARGV[2], 'samples_applied', 0,
           'codec', ARGV[3], 'spec', ARGV[4], 'weights', ARGV[5], 'ts', ARGV[6])
redis.call('SET', KEYS[3], ARGV[2])
return 1
"""
)


class PublishOutcome(enum.Enum):
    """What :meth:`Publisher.publish` did with a version."""

    WRITTEN = 1
    #: This exact (epoch, version) was there already: a retry of a write that had landed.
    ALREADY_WRITTEN = 0
    #: The model holds a newer (epoch, version): the writer is of an old epoch (a zombie
    #: after a failover); nothing was written.
    REFUSED = -1


class Publisher:
    """Writes versions to Redis under one epoch, idempotently and fenced: a version older
    than what the model holds, by (epoch, version), is refused, so a writer left over from
    before a failover can never roll a model back.

    >>> # publisher = Publisher(redis.Redis(...), Keys("fl:"), maxlen=1000)
    >>> # publisher.publish(model_version)
    """

    def __init__(self, client: redis.Redis, keys: Keys, maxlen: int) -> None:
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self._publish = client.register_script(_PUBLISH)
        self._pin = client.register_script(_PIN)
        # A new epoch for every (re)start, newer than every earlier one: every reader sees a
        # lineage change, and the fence refuses whatever an older epoch still writes.
        self.epoch = int(client.register_script(_NEW_EPOCH)(keys=[keys.epoch], args=[now_ms()]))

    def publish(self, mv: ModelVersion) -> PublishOutcome:
        """Write ``mv`` (one script: nothing or all of it is written)."""
        result = self._publish(
            keys=[
                self.keys.snapshot(mv.model_id),
                self.keys.models,
                self.keys.deleted,
                self.keys.deltas(mv.model_id),
            ],
            args=[
                self.epoch,
                mv.version,
                mv.base_version,
                mv.samples_applied,
                codec.CODEC_NAME,
                mv.spec_json,
                mv.weights or b"",
                0 if mv.weights is None else 1,
                mv.delta,
                now_ms(),
                self.maxlen,
                mv.model_id,
            ],
        )
        return PublishOutcome(int(result))

    def pin(self, model_id: str, version: int, spec_json: str, weights: bytes) -> bool:
        """Predictors serve ``version`` of ``model_id`` (``weights``: its codec array bytes,
        ``spec_json`` its spec) for as long as the pin lasts. The weights are written with
        it, so that a predictor that never held the version, or holds it no more, serves it
        all the same. False: refused, the model holds a version of a newer epoch."""
        result = self._pin(
            keys=[
                self.keys.snapshot(model_id),
                self.keys.deltas(model_id),
                self.keys.pin(model_id),
                self.keys.pinned(model_id),
            ],
            args=[self.epoch, version, codec.CODEC_NAME, spec_json, weights, now_ms()],
        )
        return int(result) == 1

    def unpin(self, model_id: str) -> None:
        """Predictors serve the latest version of ``model_id`` again."""
        self.client.delete(self.keys.pin(model_id), self.keys.pinned(model_id))

    def delete(self, model_id: str) -> None:
        """Remove ``model_id``'s keys and record when it was deleted; idempotent (a retry
        only moves the recorded time on).

        One transaction, so a reader never sees the model listed without its keys, nor
        gone from ``models`` without the ``deleted`` entry that says it was on purpose.
        """
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(
            self.keys.snapshot(model_id),
            self.keys.deltas(model_id),
            self.keys.pin(model_id),
            self.keys.pinned(model_id),
        )
        pipe.srem(self.keys.models, model_id)
        pipe.hset(self.keys.deleted, model_id, now_ms())
        pipe.execute()
