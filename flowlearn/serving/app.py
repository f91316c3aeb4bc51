"""The predictor's HTTP API (KServe V1, and the Open Inference Protocol V2 over REST) over
replicas that follow Redis.

Requests never wait on Redis or Kafka: a :class:`~flowlearn.serving.replica.Follower`
thread keeps the weights up to date in memory, and the prediction log hands records to
librdkafka's bounded queue. A request reads one ``Served`` reference and scores with it.
One process serves here; flowlearn.serving.workers runs several on one port.
See docs/predictor.md for the API, the flags and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from flowlearn.conf import PredictorConf, Settings
from flowlearn.contracts.redis_contract import Keys, redis_client
from flowlearn.core.bandits import event_seed
from flowlearn.core.features import FeatureError, vectorize
from flowlearn.core.model_types import model_type
from flowlearn.serving.auth import (
    GUARD,
    Guard,
    reload_on_sighup,
    reload_tokens,
    require_token,
    server_ssl_context,
)
from flowlearn.serving.baseline import load_baseline
from flowlearn.serving.metrics import Metrics, ModelState
from flowlearn.serving.openapi import OPENAPI
from flowlearn.serving.prediction_log import (
    Batch,
    PredictionLog,
    ProducerFactory,
    Shadow,
    confluent_producer,
    fresh_id,
    producer_config,
)
from flowlearn.serving.replica import BLOCK_MS, Follower, ModelReplica, Served, Version
from flowlearn.serving.scoring import class_labels, explainer, feature_bytes, served_rows
from flowlearn.serving.v2 import (
    BINARY_HEADER,
    EXTENSIONS,
    Refused,
    choice_tensors,
    inline_binary,
    model_metadata,
    output_tensors,
    parse_infer,
)

log = logging.getLogger("flowlearn.serving")

ONLINE, BASELINE = "online", "baseline"
#: The ``route`` label of the request metrics: V1 predict, list and describe; V2 infer
#: (versioned or not) and model metadata, over REST and over gRPC.
ROUTES = (
    "predict",
    "explain",
    "choose",
    "models",
    "model",
    "infer",
    "metadata",
    "grpc_infer",
    "grpc_metadata",
)
#: The server metadata of ``GET /v2``.
SERVER_NAME, SERVER_VERSION = "flowlearn-predictor", "1"
#: A request whose feature matrix has more values than this is scored on a worker thread,
#: so that the event loop goes on answering the others meanwhile.
OFF_LOOP_VALUES = 1 << 20
#: Bound on reading a request body: a slow client cannot hold a handler longer.
READ_TIMEOUT_S = 5.0
#: Bound on stopping the follower and flushing the prediction log at shutdown.
SHUTDOWN_TIMEOUT_S = 5.0


class Predictor:
    """What the handlers share: settings, the follower, the log, the baselines, metrics."""

    def __init__(
        self,
        settings: Settings,
        follower: Follower,
        metrics: Metrics,
        prediction_log: PredictionLog | None,
        baselines: Mapping[str, Version],
        ab_fraction: float,
    ) -> None:
        self.settings = settings
        self.follower = follower
        self.metrics = metrics
        self.log = prediction_log
        self.baselines = dict(baselines)
        self.ab_fraction = ab_fraction
        self._latency = {route: metrics.latency.labels(route) for route in ROUTES}
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: Any) -> Any:
        """``metric.labels(*labels)`` (each label as text), cached: a labels() call costs
        microseconds, and every request counts itself and its model's predictions."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*map(str, labels))
        return found

    def done(self, route: str, status: int | str, started: float) -> None:
        """Count a request and its latency; ``status``: the HTTP status, or a gRPC status
        code's name."""
        self.child(self.metrics.requests, route, status).inc()
        self._latency[route].observe(time.perf_counter() - started)

    def model_ids(self) -> list[str]:
        return sorted(
            set(self.follower.replicas) | (set(self.baselines) - set(self.follower.deleted))
        )

    def missing(self, model_id: str, replica: ModelReplica | None) -> str | None:
        """Why ``model_id`` (whose replica the caller looked up once) answers 404, or None.

        A deleted model is gone even where a baseline could answer for it: deleting a model
        means the predictor forgets it.
        """
        if replica is not None:
            return None
        if model_id in self.follower.deleted:
            return f"model '{model_id}' was deleted"
        return None if model_id in self.baselines else f"model '{model_id}' not found"

    def describe(self, model_id: str) -> dict[str, Any]:
        """A model's state as GET /v1/models/{m} shows it."""
        replica = self.follower.replicas.get(model_id)
        served = replica.served if replica is not None else None
        baseline = self.baselines.get(model_id)
        variants = ([ONLINE] if replica is not None else []) + ([BASELINE] if baseline else [])
        degraded = not self.follower.redis_ok
        if served is None:
            if baseline is None:
                return {
                    "name": model_id,
                    "ready": False,
                    "state": "loading",
                    "variants": variants,
                    "degraded": degraded,
                }
            return {
                "name": model_id,
                "ready": True,
                "state": "fallback",
                "version": baseline.version,
                "epoch": baseline.epoch,
                "spec": baseline.spec,
                "variants": variants,
                "degraded": degraded,
            }
        age = self.age_s(served.latest)
        stale = age > self.settings.predictor.stale_after_s
        state = "degraded" if degraded else "stale" if stale else "ready"
        return {
            "name": model_id,
            "ready": True,
            "state": state,
            "version": served.version.version,
            "epoch": served.version.epoch,
            "latest_version": served.latest.version,
            "age_s": round(age, 3),
            "spec": served.version.spec,
            "pinned": served.pin,
            "pin_missing": served.pin_missing,
            "stale": stale,
            "degraded": degraded,
            "variants": variants,
        }

    @staticmethod
    def age_s(version: Version) -> float:
        return max(0.0, time.time() - version.published_ms / 1000)

    def model_states(self) -> Iterator[ModelState]:
        """The served models, as the per-model gauges of ``/metrics`` show them."""
        # list(): the follower thread may add a model meanwhile (a C-level copy is atomic).
        for model_id, replica in list(self.follower.replicas.items()):
            served = replica.served
            if served is None:
                continue
            age = self.age_s(served.latest)
            yield ModelState(
                model_id,
                served.version.version,
                served.latest.version,
                served.version.epoch,
                age,
                age > self.settings.predictor.stale_after_s,
                served.pin_missing,
            )


PREDICTOR = web.AppKey("predictor", Predictor)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(p: Predictor, route: str, status: int, message: str, started: float) -> web.Response:
    p.done(route, status, started)
    return _json({"error": message}, status)


def _split(instances: Sequence[Any]) -> tuple[list[Any], list[str | None]]:
    """Instances -> (feature rows, event ids): an instance is features or a wrapper map.
    Raises Refused (400) for an event id that is not a string."""
    rows: list[Any] = []
    event_ids: list[str | None] = []
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and "features" in instance:
            event_id = instance.get("event_id")
            if event_id is not None and not isinstance(event_id, str):
                raise Refused(400, f"instances[{i}].event_id: expected a string")
            rows.append(instance["features"])
            event_ids.append(event_id)
        else:
            rows.append(instance)
            event_ids.append(None)
    return rows, event_ids


def _labels(spec: Mapping[str, Any], scores: np.ndarray) -> dict[str, list[str]]:
    """``{"labels": [...]}``: the predicted classes by name, when the spec names them."""
    labels = class_labels(spec, scores)
    return {} if labels is None else {"labels": labels}


def _same_features(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("features", "n_features", "hash_seed", "feature_names", "missing")
    return all(a.get(k) == b.get(k) for k in keys)


def _to_baseline(event_ids: list[str | None], fraction: float) -> bool:
    """A/B split: by the first event id when given (stable per event), else at random."""
    if fraction <= 0.0:
        return False
    first = event_ids[0]
    draw = (zlib.crc32(first.encode()) / 2**32) if first is not None else random.random()
    return draw < fraction


@dataclass(frozen=True, eq=False)
class Answer:
    """How a request was answered: the version and variant that scored, the scores (one
    row per instance; ``predictions``: the same as lists, what V1 answers and the log
    records), the shadow, the flags, and the event ids (None: the log is off)."""

    version: Version
    variant: str
    scores: np.ndarray
    predictions: list[Any]
    shadow: Shadow | None
    flags: dict[str, Any]
    event_ids: list[str] | None


def lookup(p: Predictor, model_id: str) -> tuple[Served | None, Version | None]:
    """The served version and the baseline of a model that can answer; else Refused
    (404: unknown or deleted; 503: known, no weights yet)."""
    replica = p.follower.replicas.get(model_id)
    missing = p.missing(model_id, replica)
    if missing is not None:
        raise Refused(404, missing)
    served = replica.served if replica is not None else None
    baseline = p.baselines.get(model_id)
    if served is None and baseline is None:
        raise Refused(503, f"model '{model_id}' has no weights loaded yet")
    return served, baseline


def answer(
    p: Predictor,
    model_id: str,
    served: Served | None,
    baseline: Version | None,
    rows: list[Any],
    event_ids: list[str | None],
    row_name: Callable[[int], str] = "instances[{}]".format,
    split: bool = True,
) -> Answer:
    """Score ``rows`` (features as V1 instances hold them) as the predictor serves them: the
    variant (A/B split unless ``split`` is False), the shadow, the flags, the metrics and the
    prediction log. Both protocols answer through here. Raises Refused (400) for features the
    model cannot read or a score that is not finite."""
    limits = p.settings.predictor
    try:
        if served is None:
            assert baseline is not None
            primary, primary_name, other = baseline, BASELINE, None
        elif split and baseline is not None and _to_baseline(event_ids, p.ab_fraction):
            primary, primary_name, other = baseline, BASELINE, served.version
        else:
            primary, primary_name, other = served.version, ONLINE, baseline
        if primary.choose is not None:
            raise Refused(
                400,
                f"model '{model_id}' is a contextual_bandit: it chooses actions "
                f"(POST /v1/models/{model_id}:choose), it does not predict",
            )
        matrix = feature_bytes(rows, primary.spec)
        if matrix > limits.max_matrix_bytes:
            raise Refused(
                413,
                f"{len(rows)} instances of {primary.spec['n_features']} features take "
                f"{matrix / 2**20:,.0f} MiB to score, more than predictor.max_matrix_bytes "
                f"({limits.max_matrix_bytes / 2**20:,.0f} MiB): send fewer instances a request",
            )
        unknown = p.child(p.metrics.unknown_features, model_id)
        X = served_rows(rows, primary.spec, lambda _name: unknown.inc())
    except FeatureError as exc:
        raise Refused(400, str(exc)) from None
    scores = primary.score(X)
    # Finite features can still overflow a linear score (softmax then gives NaN); JSON has
    # no such numbers (orjson would write null), and the documented answer is numbers.
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores.reshape(len(rows), -1)).all(axis=1))
        raise Refused(
            400,
            f"{row_name(int(bad[0]))}: the score is not a finite "
            f"number (feature values too large for this model)",
        )
    predictions = scores.tolist()
    shadow = None
    if other is not None:
        try:
            X_other = (
                X if _same_features(primary.spec, other.spec) else served_rows(rows, other.spec)
            )
        except FeatureError:
            pass  # a shadow that cannot read these features must not fail the request
        else:
            shadow = Shadow(
                ONLINE if primary_name == BASELINE else BASELINE,
                other.version,
                other.score(X_other).tolist(),
            )
    flags = served_flags(p, model_id, served)
    p.child(p.metrics.predictions, model_id, primary_name).inc(len(rows))
    ids = None
    if p.log is not None:
        ids = [e if e is not None else fresh_id() for e in event_ids]
        log_answer(p, model_id, ids, rows, predictions, primary, primary_name, shadow)
    return Answer(primary, primary_name, scores, predictions, shadow, flags, ids)


#: The flags of an answer (:func:`served_flags`).
FLAG_KEYS = ("age_s", "stale", "degraded", "fallback", "pinned", "pin_missing")


def log_answer(
    p: Predictor,
    model_id: str,
    event_ids: list[str],
    rows: list[Any],
    scores: list[Any],
    version: Version,
    variant: str,
    shadow: Shadow | None,
    choices: list[dict[str, Any]] | None = None,
) -> None:
    """Hand an answer to the prediction log: a record per row (``choices``: a bandit's)."""
    assert p.log is not None
    now_ms = time.time_ns() // 1_000_000
    p.log.offer(
        Batch(
            model_id,
            now_ms,
            event_ids,
            rows,
            scores,
            version.version,
            version.epoch,
            variant,
            shadow,
            choices,
        )
    )


def served_flags(p: Predictor, model_id: str, served: Served | None) -> dict[str, Any]:
    """The flags of an answer by ``served`` (None: by the baseline alone), each raised
    flag counted in ``flowlearn_predictor_fallbacks_total``."""
    degraded = not p.follower.redis_ok
    if served is None:
        p.child(p.metrics.fallbacks, model_id, BASELINE).inc()
        return {
            "stale": False,
            "degraded": degraded,
            "fallback": True,
            "pinned": None,
            "pin_missing": False,
        }
    age = p.age_s(served.latest)
    stale = age > p.settings.predictor.stale_after_s
    # A raised flag is rare: each is counted where it is found, and an answer with none
    # (the usual one) builds nothing more than its flags.
    if stale:
        p.child(p.metrics.fallbacks, model_id, "stale").inc()
    if degraded:
        p.child(p.metrics.fallbacks, model_id, "degraded").inc()
    if served.pin_missing:
        p.child(p.metrics.fallbacks, model_id, "pin_missing").inc()
    return {
        "age_s": round(age, 3),
        "stale": stale,
        "degraded": degraded,
        "fallback": False,
        "pinned": served.pin,
        "pin_missing": served.pin_missing,
    }


def matrix_bytes(n_rows: int, spec: Mapping[str, Any]) -> int:
    """What ``n_rows`` instances of a model of this spec take as a dense matrix."""
    return n_rows * int(spec["n_features"]) * 8


async def answer_off_loop(
    p: Predictor,
    model_id: str,
    served: Served | None,
    baseline: Version | None,
    rows: list[Any],
    *args: Any,
    **kwargs: Any,
) -> Answer:
    """:func:`answer`, on a worker thread when the request's features take more than
    :data:`OFF_LOOP_VALUES` x 8 bytes (the event loop answers other requests meanwhile)."""
    current = served.version if served is not None else baseline
    assert current is not None
    if feature_bytes(rows, current.spec) // 8 > OFF_LOOP_VALUES:
        return await asyncio.to_thread(answer, p, model_id, served, baseline, rows, *args, **kwargs)
    return answer(p, model_id, served, baseline, rows, *args, **kwargs)


async def read_body(request: web.Request, limits: PredictorConf) -> bytes:
    """The request's body, within the size and time bounds; else Refused."""
    if (request.content_length or 0) > limits.max_body_bytes:
        raise Refused(413, f"body larger than {limits.max_body_bytes} bytes")
    try:
        if request.content.is_eof():  # it all came with the headers: nothing to wait for
            return await request.read()
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, f"body larger than {limits.max_body_bytes} bytes") from None
    except TimeoutError:
        raise Refused(408, "request body not received in time") from None


async def read_json(request: web.Request, limits: PredictorConf) -> Any:
    """The request's JSON body (:func:`read_body`); else Refused."""
    raw = await read_body(request, limits)
    try:
        return orjson.loads(raw)
    except ValueError:
        raise Refused(400, "body is not JSON") from None


def _v1_instances(body: Any, limits: PredictorConf) -> tuple[list[Any], list[str | None]]:
    """A V1 body's feature rows and event ids (:func:`_v1_list`). Raises Refused (400,
    413)."""
    return _split(_v1_list(body, limits))


def _v1_list(body: Any, limits: PredictorConf) -> list[Any]:
    """A V1 body's instances: ``{"instances": [...]}`` or, as KServe also takes it,
    ``{"inputs": [...]}``. Raises Refused (400, 413)."""
    key = "instances"
    if isinstance(body, dict) and "inputs" in body:
        if "instances" in body:
            raise Refused(400, "give instances or inputs, not both")
        key = "inputs"
    instances = body.get(key) if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise Refused(400, f"{key}: expected a non-empty list")
    if len(instances) > limits.max_instances:
        raise Refused(
            413, f"{key}: at most {limits.max_instances} per request, got {len(instances)}"
        )
    return instances


async def predict(request: web.Request) -> web.Response:
    """KServe V1 ``:predict``: ``{"instances": [...]}`` or, as KServe also takes it,
    ``{"inputs": [...]}`` (the same rows under the other key)."""
    started = time.perf_counter()
    p = request.app[PREDICTOR]
    limits = p.settings.predictor
    model_id = request.match_info["model"]
    try:
        served, baseline = lookup(p, model_id)
        body = await read_json(request, limits)
        rows, event_ids = _v1_instances(body, limits)
        done = await answer_off_loop(p, model_id, served, baseline, rows, event_ids)
    except Refused as exc:
        return _error(p, "predict", exc.status, exc.message, started)
    primary = done.version
    result: dict[str, Any] = {
        "predictions": done.predictions,
        **_labels(primary.spec, done.scores),
        "model_version": primary.version,
        "epoch": primary.epoch,
        "variant": done.variant,
    }
    if done.shadow is not None:
        result["shadow"] = {
            "variant": done.shadow.variant,
            "model_version": done.shadow.model_version,
            "predictions": done.shadow.scores,
        }
    result.update(done.flags)
    if done.event_ids is not None:
        result["event_ids"] = done.event_ids
    p.done("predict", 200, started)
    return _json(result)


def _choose_instances(
    body: Any, limits: PredictorConf, n_action_features: int
) -> tuple[list[Any], list[str | None], list[Any] | None]:
    """A ``:choose`` body's contexts, event ids and (a bandit with action features) each
    instance's candidate actions: ``{"instances": [context | {"features": context,
    "event_id": ..., "actions": [[...], ...]}]}``. Raises Refused (400, 413)."""
    instances = _v1_list(body, limits)
    rows, event_ids = _split(instances)
    if not n_action_features:
        return rows, event_ids, None
    candidates: list[Any] = []
    for i, instance in enumerate(instances):
        actions = instance.get("actions") if isinstance(instance, dict) else None
        if not (
            isinstance(actions, list)
            and actions
            and all(isinstance(a, list) and len(a) == n_action_features for a in actions)
        ):
            raise Refused(
                400,
                f"instances[{i}].actions: expected the candidate actions, a non-empty list "
                f"of {n_action_features} numbers each (wrap the context as "
                '{"features": ..., "actions": [...]})',
            )
        candidates.append(actions)
    return rows, event_ids, candidates


def choose_rows(
    p: Predictor,
    model_id: str,
    served: Served,
    rows: list[Any],
    event_ids: list[str | None],
    candidates: list[Any] | None,
) -> dict[str, Any]:
    """A contextual bandit's choice for each context (and its candidates), each from the
    seed of its event id (a new id when none was sent), logged with its action and
    propensity; the answer of ``:choose``. Raises Refused (400) for contexts or
    candidates the model cannot read."""
    version = served.version
    spec = version.spec
    assert version.choose is not None
    try:
        X = vectorize(rows, spec)
    except FeatureError as exc:
        raise Refused(400, str(exc)) from None
    ids = [e if e is not None else fresh_id() for e in event_ids]
    seeds = np.array([event_seed(e, int(spec.get("seed", 0))) for e in ids], dtype=np.int64)
    n = len(rows)
    actions = np.empty(n, dtype=np.int64)
    propensities = np.empty(n)
    probabilities: list[list[float]] = [[] for _ in range(n)]
    # Requests with the same number of candidates choose together (a listed-actions
    # bandit's all do); each choice depends on its own context and seed only.
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(0 if candidates is None else len(candidates[i]), []).append(i)
    for members in groups.values():
        index = np.array(members)
        given = None
        if candidates is not None:
            given = np.array([candidates[i] for i in members], dtype=np.float64)
            if not np.isfinite(given).all():
                raise Refused(400, "actions: the candidates' features must be finite numbers")
        choice = version.choose(X[index], given, seeds=seeds[index])
        actions[index] = choice.actions
        propensities[index] = choice.propensities
        for j, i in enumerate(members):
            probabilities[i] = choice.probabilities[j].tolist()
    flags = served_flags(p, model_id, served)
    p.child(p.metrics.predictions, model_id, ONLINE).inc(n)
    chosen = [
        {
            "action": int(a) if candidates is None else candidates[i][int(a)],
            "propensity": float(q),
        }
        for i, (a, q) in enumerate(zip(actions.tolist(), propensities.tolist(), strict=True))
    ]
    if p.log is not None:
        log_answer(p, model_id, ids, rows, probabilities, version, ONLINE, None, chosen)
    return {
        "choices": [
            {"action": int(a), "propensity": float(q), "probabilities": probabilities[i]}
            for i, (a, q) in enumerate(zip(actions.tolist(), propensities.tolist(), strict=True))
        ],
        "event_ids": ids,
        "model_version": version.version,
        "epoch": version.epoch,
        "logged": p.log is not None,
        **flags,
    }


async def choose(request: web.Request) -> web.Response:
    """``:choose``: a contextual bandit's actions for contexts (docs/bandits.md)."""
    started = time.perf_counter()
    p = request.app[PREDICTOR]
    limits = p.settings.predictor
    model_id = request.match_info["model"]
    try:
        served, baseline = lookup(p, model_id)
        version = served.version if served is not None else baseline
        assert version is not None
        if served is None or served.version.choose is None:
            raise Refused(
                400,
                f"model '{model_id}' is a {version.spec['type']} model: it predicts "
                f"(POST /v1/models/{model_id}:predict); :choose is a contextual_bandit's",
            )
        body = await read_json(request, limits)
        n_action_features = int(served.version.spec.get("n_action_features") or 0)
        rows, event_ids, candidates = _choose_instances(body, limits, n_action_features)
        result = await asyncio.to_thread(
            choose_rows, p, model_id, served, rows, event_ids, candidates
        )
    except Refused as exc:
        return _error(p, "choose", exc.status, exc.message, started)
    p.done("choose", 200, started)
    return _json(result)


#: What a linear model's raw score is, by task (what the contributions add up to).
RAW_SCORE = {"binary": "logit", "multiclass": "class_scores", "regression": "value"}


def explain_rows(version: Version, rows: list[Any], limits: PredictorConf) -> dict[str, Any]:
    """KServe V1 ``:explain`` of ``rows`` by ``version``: each feature's share of each
    row's raw score (the logit, the class scores, the predicted value), the base they add
    to, and the score. Raises Refused (400: not a linear model or unreadable features; 413)."""
    spec = version.spec
    kind = model_type(spec.get("type"))
    try:
        explain = explainer(spec, version.weights)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    k = len(spec.get("classes") or ()) if kind.multiclass else 1
    need = matrix_bytes(len(rows), spec) * (k + 1)
    if need > limits.max_matrix_bytes:
        raise Refused(
            413,
            f"explaining {len(rows)} instances takes {need / 2**20:,.0f} MiB, more than "
            f"predictor.max_matrix_bytes ({limits.max_matrix_bytes / 2**20:,.0f} MiB)",
        )
    try:
        X = vectorize(rows, spec)
    except FeatureError as exc:
        raise Refused(400, str(exc)) from None
    c = explain(X)
    scores = c.per_feature.sum(axis=1) + c.base
    if not (np.isfinite(scores).all() and np.isfinite(c.per_feature).all()):
        raise Refused(400, "a contribution is not a finite number (feature values too large)")
    if k == 1:  # one score: plain numbers, not lists of one
        per_feature, base, score = c.per_feature[:, :, 0], c.base[0], scores[:, 0]
    else:
        per_feature, base, score = c.per_feature, c.base, scores
    result: dict[str, Any] = {
        "explanations": [
            {"contributions": row, "score": s}
            for row, s in zip(per_feature.tolist(), score.tolist(), strict=True)
        ],
        "base": np.asarray(base).tolist(),
        "output": RAW_SCORE[kind.task],
        "model_version": version.version,
        "epoch": version.epoch,
    }
    if spec.get("feature_names"):
        result["feature_names"] = list(spec["feature_names"])
    return result


async def explain(request: web.Request) -> web.Response:
    """KServe V1 ``:explain``: the online model's per-feature contributions (linear models);
    not logged as predictions."""
    started = time.perf_counter()
    p = request.app[PREDICTOR]
    limits = p.settings.predictor
    model_id = request.match_info["model"]
    try:
        served, _baseline = lookup(p, model_id)
        if served is None:
            raise Refused(
                404, f"model {model_id!r} is served by its baseline only: nothing to explain"
            )
        body = await read_json(request, limits)
        rows, _event_ids = _v1_instances(body, limits)
        result = await asyncio.to_thread(explain_rows, served.version, rows, limits)
    except Refused as exc:
        return _error(p, "explain", exc.status, exc.message, started)
    p.done("explain", 200, started)
    return _json(result)


async def list_models(request: web.Request) -> web.Response:
    """KServe V1: ``{"models": [name, ...]}``; with ``?detail=true``, each model as
    ``GET /v1/models/{m}`` describes it."""
    started = time.perf_counter()
    p = request.app[PREDICTOR]
    detail = request.query.get("detail", "false").lower()
    if detail not in ("true", "false", "1", "0"):
        return _error(p, "models", 400, "detail: expected true or false", started)
    if detail in ("true", "1"):
        result = _json({"models": [p.describe(m) for m in p.model_ids()]})
    else:
        result = _json({"models": p.model_ids()})
    p.done("models", 200, started)
    return result


async def get_model(request: web.Request) -> web.Response:
    started = time.perf_counter()
    p = request.app[PREDICTOR]
    model_id = request.match_info["model"]
    missing = p.missing(model_id, p.follower.replicas.get(model_id))
    if missing is not None:
        return _error(p, "model", 404, missing, started)
    p.done("model", 200, started)
    return _json(p.describe(model_id))


async def healthz(_request: web.Request) -> web.Response:
    """200 while the process runs; ``pid`` tells the workers of one port apart."""
    return _json({"status": "ok", "pid": os.getpid()})


def _waiting(p: Predictor) -> list[str]:
    """Models known but not yet loaded (nor answered by a baseline)."""
    # list(): the follower thread may add a model meanwhile (a C-level copy is atomic).
    return sorted(
        m for m, r in list(p.follower.replicas.items()) if r.served is None and m not in p.baselines
    )


def is_ready(p: Predictor) -> bool:
    """The condition of /readyz: the models set was read and every model has weights (or a
    baseline)."""
    return p.follower.models_known and not _waiting(p)


async def readyz(request: web.Request) -> web.Response:
    p = request.app[PREDICTOR]
    waiting = _waiting(p)
    ready = p.follower.models_known and not waiting
    return _json(
        {"ready": ready, "loading": waiting, "redis": p.follower.redis_ok},
        200 if ready else 503,
    )


# ---------------------------------------------------------------- Open Inference Protocol (V2)


async def v2_live(_request: web.Request) -> web.Response:
    return _json({"live": True})


async def v2_ready(request: web.Request) -> web.Response:
    """Ready on the condition of /readyz: the models set was read and every model loaded."""
    ready = is_ready(request.app[PREDICTOR])
    return _json({"ready": ready}, 200 if ready else 503)


async def v2_server(_request: web.Request) -> web.Response:
    return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


async def v2_model_ready(request: web.Request) -> web.Response:
    p = request.app[PREDICTOR]
    model_id = request.match_info["model"]
    try:
        lookup(p, model_id)
    except Refused as exc:
        if exc.status == 404:
            return _json({"error": exc.message}, 404)
        return _json({"name": model_id, "ready": False}, 503)
    return _json({"name": model_id, "ready": True})


async def v2_model(request: web.Request) -> web.Response:
    started = time.perf_counter()
    p = request.app[PREDICTOR]
    model_id = request.match_info["model"]
    try:
        served, baseline = lookup(p, model_id)
    except Refused as exc:
        return _error(p, "metadata", exc.status, exc.message, started)
    version = served.version if served is not None else baseline
    assert version is not None
    p.done("metadata", 200, started)
    return _json(model_metadata(model_id, version.version, version.spec, p.log is not None))


def v2_target(
    p: Predictor, model_id: str, wanted: str | None
) -> tuple[Served | None, Version | None, Version]:
    """What answers a V2 request for ``model_id`` (``wanted``: the version asked for, None
    for any): the served version, the baseline, and the one whose spec reads the request.
    Raises Refused: 404 unknown or deleted, or ``wanted`` not the version served now (the
    pinned one while a pin holds); 503 no weights yet."""
    served, baseline = lookup(p, model_id)
    current = served.version if served is not None else baseline
    assert current is not None
    if wanted is not None and wanted != str(current.version):
        raise Refused(
            404,
            f"model '{model_id}' version {wanted!r} is not served here; "
            f"version {current.version} is",
        )
    return served, baseline, current


async def v2_answer(
    p: Predictor,
    model_id: str,
    target: tuple[Served | None, Version | None, Version],
    body: Any,
    split: bool = True,
) -> dict[str, Any]:
    """The V2 inference response (as JSON) to ``body``, an inference request whose tensors
    hold their elements in ``data`` (the REST body, binary inputs read in; or a gRPC
    request, translated): read by flowlearn.serving.v2, scored by :func:`answer` (a
    contextual bandit: :func:`choose_rows`). Both transports answer through here. ``split``
    False (a version was asked for) never sends it to the A/B baseline. Raises Refused."""
    served, baseline, current = target
    limits = p.settings.predictor
    logged = p.log is not None
    request_ = parse_infer(body, current.spec, limits.max_instances, model_id, logged)
    request_id = request_.id if request_.id is not None else fresh_id()
    if current.choose is not None and served is not None:
        # A contextual bandit: the V2 form of :choose.
        chosen = await asyncio.to_thread(
            choose_rows,
            p,
            model_id,
            served,
            request_.rows,
            request_.event_ids,
            request_.candidates,
        )
        return {
            "model_name": model_id,
            "model_version": str(chosen["model_version"]),
            "id": request_id,
            "parameters": {
                "epoch": chosen["epoch"],
                "logged": chosen["logged"],
                **{k: chosen[k] for k in FLAG_KEYS if chosen.get(k) is not None},
            },
            "outputs": choice_tensors(chosen, request_.outputs),
        }
    done = await answer_off_loop(
        p,
        model_id,
        served,
        baseline,
        request_.rows,
        request_.event_ids,
        row_name="row {}".format,
        split=split,
    )
    outputs = output_tensors(done.version.spec, done.scores, done.event_ids, request_.outputs)
    parameters: dict[str, Any] = {
        "epoch": done.version.epoch,
        "variant": done.variant,
        **{k: v for k, v in done.flags.items() if v is not None},
    }
    if done.shadow is not None:
        parameters["shadow_variant"] = done.shadow.variant
        parameters["shadow_model_version"] = done.shadow.model_version
    return {
        "model_name": model_id,
        "model_version": str(done.version.version),
        "id": request_id,
        "parameters": parameters,
        "outputs": outputs,
    }


async def infer(request: web.Request) -> web.Response:
    """V2 ``infer`` over REST: :func:`v2_target`, the body (binary inputs read in), then
    :func:`v2_answer`.

    ``/versions/{version}/infer`` is answered only by the version served now: it is never
    sent to the A/B baseline, and another version is a 404.
    """
    started = time.perf_counter()
    p = request.app[PREDICTOR]
    model_id = request.match_info["model"]
    wanted = request.match_info.get("version")
    try:
        target = v2_target(p, model_id, wanted)
        raw = await read_body(request, p.settings.predictor)
        body = inline_binary(raw, request.headers.get(BINARY_HEADER))
        result = await v2_answer(p, model_id, target, body, split=wanted is None)
    except Refused as exc:
        return _error(p, "infer", exc.status, exc.message, started)
    p.done("infer", 200, started)
    return _json(result)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[PREDICTOR].metrics.exposition(),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def openapi(_request: web.Request) -> web.Response:
    return _json(OPENAPI)


def make_app(
    settings: Settings,
    *,
    baselines: Mapping[str, Path] | None = None,
    ab_fraction: float = 0.0,
    log_predictions: bool = True,
    producer_factory: ProducerFactory = confluent_producer,
) -> web.Application:
    """The predictor app; the follower and log threads run between startup and cleanup.

    ``baselines`` maps model ids to baseline files (see :mod:`flowlearn.serving.baseline`),
    scored beside the online model; ``ab_fraction`` of requests are answered by the
    baseline instead (0: shadow only). ``producer_factory`` replaces the Kafka producer of
    the prediction log (tests); ``log_predictions=False`` turns the log off.
    """
    if not 0.0 <= ab_fraction <= 1.0:
        raise ValueError(f"ab_fraction must be within [0, 1], got {ab_fraction}")
    loaded = {m: load_baseline(path) for m, path in (baselines or {}).items()}
    metrics_ = Metrics()
    guard = Guard(settings.predictor, metrics_.auth_refused)  # first: a bad token file stops here
    r = settings.redis
    # The socket timeout must outlast a blocking XREAD, or every quiet second is an error.
    client = redis_client(r, timeout_s=BLOCK_MS / 1000 + 2.0, connect_timeout_s=2.0)
    follower = Follower(client, Keys(r.prefix), metrics_)
    prediction_log = None
    if log_predictions:
        prediction_log = PredictionLog(
            settings.kafka.topics.events,
            producer_config(settings.kafka, settings.predictor),
            metrics_,
            producer_factory,
        )
    # Without tokens required (a predictor bound to loopback, by default) the token check
    # would pass every request: it is left out, a middleware's cost to each request saved.
    app = web.Application(
        client_max_size=settings.predictor.max_body_bytes,
        middlewares=[require_token] if guard.required else [],
    )
    app[GUARD] = guard
    predictor = Predictor(settings, follower, metrics_, prediction_log, loaded, ab_fraction)
    metrics_.watch_models(predictor.model_states)
    app[PREDICTOR] = predictor
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/models/{model}:predict", predict)
    app.router.add_post("/v1/models/{model}:explain", explain)
    app.router.add_post("/v1/models/{model}:choose", choose)
    app.router.add_get("/v2", v2_server)
    app.router.add_get("/v2/health/live", v2_live)
    app.router.add_get("/v2/health/ready", v2_ready)
    app.router.add_get("/v2/models/{model}", v2_model)
    app.router.add_get("/v2/models/{model}/ready", v2_model_ready)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", infer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/v1/admin/reload", reload_tokens)

    async def background(_app: web.Application) -> AsyncIterator[None]:
        thread = threading.Thread(target=follower.run, name="redis-follower", daemon=True)
        thread.start()
        if prediction_log is not None:
            prediction_log.start()
        yield
        follower.stop()
        await asyncio.to_thread(thread.join, SHUTDOWN_TIMEOUT_S)
        client.close()
        if prediction_log is not None:
            await asyncio.to_thread(prediction_log.close, SHUTDOWN_TIMEOUT_S)

    app.cleanup_ctx.append(background)
    app.cleanup_ctx.append(reload_on_sighup)
    return app


def run(
    settings: Settings,
    *,
    baselines: Mapping[str, Path] | None = None,
    ab_fraction: float = 0.0,
    log_predictions: bool = True,
) -> None:
    """Serve in this process until SIGTERM or SIGINT, then stop gracefully (one worker:
    :func:`flowlearn.serving.workers.serve` runs several)."""
    app = make_app(
        settings, baselines=baselines, ab_fraction=ab_fraction, log_predictions=log_predictions
    )
    serve_app(app, settings)


def serve_app(
    app: web.Application,
    settings: Settings,
    *,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Run ``app`` until SIGTERM or SIGINT, then stop gracefully (uvloop when available):
    on ``sockets``, listening already (a worker's), else on ``predictor.host:port``; over
    TLS when ``predictor.tls_cert_file`` is set; with gRPC on ``predictor.grpc_port``
    when it is set (flowlearn.serving.v2_grpc)."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        log.info("uvloop is not installed; using asyncio's event loop")
    p = settings.predictor
    log.info(
        "predictor on %s (Redis %s, prefix %r)", p.url, settings.redis.url, settings.redis.prefix
    )
    if p.grpc_port:
        # Imported only then: it builds on this module, and a predictor without gRPC never
        # loads grpc.
        from flowlearn.serving.v2_grpc import serve_grpc

        serve_grpc(app, share_port=sockets is not None)
    # aiohttp's keep-alive timer starts when a connection opens and again after each answer,
    # and partial headers do not reset it: it is the header timeout too.
    web.run_app(
        app,
        host=None if sockets else p.host,
        port=None if sockets else p.port,
        sock=sockets,
        access_log=None,
        loop=loop,
        keepalive_timeout=p.idle_timeout_s,
        ssl_context=server_ssl_context(p),
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=None,
    )
