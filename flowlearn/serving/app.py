"""The predictor's HTTP API (KServe V1 style) over replicas that follow Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import numpy as np
import redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from conf import Settings
from flowlearn.features import FeatureError, vectorize
from flowlearn.redis_contract import Keys
from flowlearn.serving.replica import ModelReplica, sync

log = logging.getLogger("flowlearn.serving")

REQUESTS = Counter("flowlearn_predictor_requests", "Requests by route and status",
                   ["route", "status"])
LATENCY = Histogram("flowlearn_predictor_request_seconds", "Predict latency",
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))
MODEL_VERSION = Gauge("flowlearn_predictor_model_version", "Served version", ["model"])
MODEL_AGE = Gauge("flowlearn_predictor_model_age_seconds", "Age of the served version",
                  ["model"])
REDIS_UP = Gauge("flowlearn_predictor_redis_up", "1 while Redis answers")

REPLICAS = web.AppKey("replicas", dict)
SETTINGS = web.AppKey("settings", Settings)


def _follow(settings: Settings, replicas: dict[str, ModelReplica], stop: Any) -> None:
    """Blocking follower (run in a thread): model list, snapshots, then XREAD BLOCK."""
    r = settings.redis
    client = redis.Redis(host=r.host, port=r.port, password=r.password or None,
                         socket_timeout=5, socket_connect_timeout=2)
    keys = Keys(r.prefix)
    last_scan = 0.0
    while not stop.is_set():
        try:
            if time.monotonic() - last_scan > 1.0:
                for raw in client.smembers(keys.models):
                    model_id = raw.decode()
                    replica = replicas.setdefault(model_id, ModelReplica(model_id))
                    sync(client, keys, replica)
                last_scan = time.monotonic()
            streams = {keys.deltas(m): rep.last_id for m, rep in replicas.items()}
            REDIS_UP.set(1)
            if not streams:
                stop.wait(0.5)
                continue
            for stream, _entries in client.xread(streams, block=1000, count=1000) or []:
                model_id = stream.decode()[len(keys.prefix) + len("model:"):-len(":deltas")]
                sync(client, keys, replicas[model_id])
        except redis.RedisError as exc:
            REDIS_UP.set(0)
            log.warning("Redis: %s; serving the last weights", exc)
            stop.wait(1.0)
    client.close()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def _describe(model_id: str, replica: ModelReplica, settings: Settings) -> dict[str, Any]:
    served = replica.served
    if served is None:
        return {"name": model_id, "ready": False}
    age = max(0.0, time.time() - served.published_ms / 1000)
    return {"name": model_id, "ready": True, "version": served.version,
            "epoch": served.epoch, "age_s": round(age, 3), "spec": served.spec,
            "stale": age > settings.predictor.stale_after_s}


async def list_models(request: web.Request) -> web.Response:
    replicas = request.app[REPLICAS]
    settings = request.app[SETTINGS]
    return _json({"models": [_describe(m, r, settings) for m, r in sorted(replicas.items())]})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    replica = request.app[REPLICAS].get(model_id)
    if replica is None:
        return _json({"error": f"model '{model_id}' not found"}, 404)
    return _json(_describe(model_id, replica, request.app[SETTINGS]))


async def predict(request: web.Request) -> web.Response:
    started = time.perf_counter()
    settings = request.app[SETTINGS]
    model_id = request.match_info["model"]
    replica = request.app[REPLICAS].get(model_id)
    served = replica.served if replica else None
    if served is None:
        REQUESTS.labels("predict", "404").inc()
        return _json({"error": f"model '{model_id}' not found"}, 404)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        REQUESTS.labels("predict", "400").inc()
        return _json({"error": "body is not JSON"}, 400)
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        REQUESTS.labels("predict", "400").inc()
        return _json({"error": "'instances' must be a non-empty list"}, 400)
    if len(instances) > settings.predictor.max_instances:
        REQUESTS.labels("predict", "413").inc()
        return _json({"error": f"at most {settings.predictor.max_instances} instances"}, 413)
    rows = [i["features"] if isinstance(i, dict) and "features" in i else i for i in instances]
    try:
        X = vectorize(rows, served.spec)
    except FeatureError as exc:
        REQUESTS.labels("predict", "400").inc()
        return _json({"error": str(exc)}, 400)
    model = served.model
    scores = (model.predict_many(X) if served.spec.get("type") == "linear"
              else model.predict_proba_many(X))
    age = max(0.0, time.time() - served.published_ms / 1000)
    REQUESTS.labels("predict", "200").inc()
    LATENCY.observe(time.perf_counter() - started)
    return _json({"predictions": np.asarray(scores).tolist(), "model_version": served.version,
                  "epoch": served.epoch, "stale": age > settings.predictor.stale_after_s})


async def healthz(_request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    replicas = request.app[REPLICAS]
    ready = bool(replicas) and all(r.served is not None for r in replicas.values())
    return _json({"ready": ready}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    for model_id, replica in request.app[REPLICAS].items():
        if replica.served is not None:
            MODEL_VERSION.labels(model_id).set(replica.served.version)
            MODEL_AGE.labels(model_id).set(time.time() - replica.served.published_ms / 1000)
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.predictor.max_body_bytes)
    app[SETTINGS] = settings
    app[REPLICAS] = {}
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/models/{model}:predict", predict)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

    async def follow(app: web.Application) -> Any:
        import threading

        stop = threading.Event()
        task = asyncio.get_running_loop().run_in_executor(
            None, _follow, settings, app[REPLICAS], stop)
        yield
        stop.set()
        with contextlib.suppress(Exception):
            await task

    app.cleanup_ctx.append(follow)
    return app
