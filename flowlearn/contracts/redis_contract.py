"""Redis keys and records (docs/architecture.md, "Redis"), shared by the publisher and readers.

Keys (``prefix`` defaults to ``fl:``)::

    {prefix}models                 set     model ids
    {prefix}deleted                hash    model id -> deletion time (ms since epoch)
    {prefix}epoch                  string  counter: each publisher (re)start takes the next epoch
    {prefix}model:{m}:snapshot     hash    epoch, version, samples_applied, codec, spec, weights, ts
    {prefix}model:{m}:deltas       stream  epoch, version, base_version, codec, delta, ts
    {prefix}model:{m}:pin          string  a version the predictor must serve
    {prefix}model:{m}:pinned       hash    that version's weights, as a snapshot (samples_applied 0)

Delta entries carry the explicit stream id ``{epoch}-{version}``: ids then grow with the
epoch and, within it, the version, and a retried write of the same version is refused by
Redis as a duplicate, so writes are idempotent.

A deleted model's keys are removed and its id moves from ``models`` to ``deleted`` in one
transaction: a reader then tells a deleted model (forget it) from one that is merely missing
(Redis may have lost its data: keep serving it). Publishing the id again moves it back.
"""

from __future__ import annotations

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


class Publisher:
    """Writes versions to Redis under one epoch, idempotently.

    >>> # publisher = Publisher(redis.Redis(...), Keys("fl:"), maxlen=1000)
    >>> # publisher.publish(model_version)
    """

    def __init__(self, client: redis.Redis, keys: Keys, maxlen: int) -> None:
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        # A new epoch for every (re)start: every reader sees a lineage change.
        self.epoch = int(client.incr(keys.epoch))

    def publish(self, mv: ModelVersion) -> bool:
        """Write ``mv``; returns False when this exact entry was already written (a retry)."""
        ts = now_ms()
        pipe = self.client.pipeline(transaction=True)
        if mv.weights is not None:
            pipe.hset(
                self.keys.snapshot(mv.model_id),
                mapping={
                    "epoch": self.epoch,
                    "version": mv.version,
                    "samples_applied": mv.samples_applied,
                    "codec": codec.CODEC_NAME,
                    "spec": mv.spec_json,
                    "weights": mv.weights,
                    "ts": ts,
                },
            )
        pipe.sadd(self.keys.models, mv.model_id)
        # A model created again after a delete is live again.
        pipe.hdel(self.keys.deleted, mv.model_id)
        pipe.xadd(
            self.keys.deltas(mv.model_id),
            {
                "epoch": self.epoch,
                "version": mv.version,
                "base_version": mv.base_version,
                "codec": codec.CODEC_NAME,
                "delta": mv.delta,
                "ts": ts,
            },
            id=delta_stream_id(self.epoch, mv.version),
            maxlen=self.maxlen,
            approximate=True,
        )
        try:
            pipe.execute()
        except redis.ResponseError as exc:
            # The explicit id makes a rewrite of the same (epoch, version) a no-op.
            if "equal or smaller" in str(exc):
                return False
            raise
        return True

    def pin(self, model_id: str, version: int, spec_json: str, weights: bytes) -> None:
        """Predictors serve ``version`` of ``model_id`` (``weights``: its codec array bytes,
        ``spec_json`` its spec) for as long as the pin lasts. The weights are written with
        it, so that a predictor that never held the version, or holds it no more, serves it
        all the same."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self.keys.pinned(model_id),
            mapping={
                "epoch": self.epoch,
                "version": version,
                "samples_applied": 0,
                "codec": codec.CODEC_NAME,
                "spec": spec_json,
                "weights": weights,
                "ts": now_ms(),
            },
        )
        pipe.set(self.keys.pin(model_id), version)
        pipe.execute()

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
