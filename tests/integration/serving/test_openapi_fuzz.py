"""Fuzzing the predictor's HTTP API from its own OpenAPI document (schemathesis).

The predictor runs for real (aiohttp on a free loopback port, a real redis-server fed by the
trainer-side Publisher); schemathesis draws requests from ``flowlearn.serving.openapi`` (the
document the app serves at ``/openapi.json``): bodies that fit the schema and bodies that do
not, for models of every kind and state, and for unknown ones. Each answer must be
documented (status, content type, body schema), never a 5xx other than the documented 503s,
and a schema-valid request that the model can read must be answered 200. Afterwards the
server still answers and every served prediction reached the prediction log.

The examples are derandomized (fixed) so CI is stable; the file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from flowlearn.contracts.redis_contract import Keys
from flowlearn.serving.app import make_app
from flowlearn.serving.baseline import write_baseline
from flowlearn.serving.openapi import OPENAPI

from .conftest import RedisServer, Trainer, wait_for

SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
OPERATIONS = {
    f"{method.upper()} {path}": SCHEMA[path][method.upper()]
    for path, methods in OPENAPI["paths"].items()
    for method in methods
}
PREDICT = "POST /v1/models/{model}:predict"
INFER = "POST /v2/models/{model}/infer"
INFER_VERSION = "POST /v2/models/{model}/versions/{version}/infer"
#: The operations that score (their bodies are fuzzed with invalid data too).
SCORING = {PREDICT, INFER, INFER_VERSION}


def spec(
    kind: str, n_features: int, features: str = "dense", classes: list[int] | None = None
) -> dict[str, Any]:
    return {
        "type": kind,
        "n_features": n_features,
        "features": features,
        "hash_seed": 0,
        "intercept": True,
        "classes": classes if kind == "softmax" else ([0, 1] if kind == "logistic" else None),
    }


# Online models of every kind, their weights (coef then intercepts), and a model without.
ONLINE: dict[str, tuple[dict[str, Any], list[float]]] = {
    "dense": (spec("logistic", 3), [1.0, -1.0, 0.5, 0.25]),
    "hashed": (spec("logistic", 4, "hashed"), [0.5, -2.0, 1.5, 3.0, -0.1]),
    "soft": (spec("softmax", 2, classes=[0, 1, 2]), [1.0, 0.0, -1.0, 0.5, 2.0, -0.5, 0, 0, 0]),
    "lin": (spec("linear", 2, "hashed"), [3.0, -2.0, 0.5]),
}
LOADING = "loading"  # in the models set, never published: 503 until it has weights
BASELINES = {  # a shadow beside "dense" (and its A/B variant), and a baseline-only model
    "dense": (spec("logistic", 3), [0.0, 0.0, 0.0, 2.0]),
    "only": (spec("linear", 1), [2.0, 1.0]),
}
MODELS = [*ONLINE, LOADING, "only", "nope"]
# The documented 5xx: a known model with no weights yet, and readiness while it loads.
DOCUMENTED_5XX = {
    **{
        (label, LOADING): 503
        for label in (
            PREDICT,
            "POST /v1/models/{model}:explain",
            "POST /v1/models/{model}:choose",
            INFER,
            INFER_VERSION,
            "GET /v2/models/{model}",
            "GET /v2/models/{model}/ready",
        )
    },
    ("GET /readyz", None): 503,
    ("GET /v2/health/ready", None): 503,
}


class Producer:
    """The prediction log's Kafka producer (confluent-kafka's calls), recording what it is
    given, every record delivered; ``factory`` is the log's producer_factory."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.lock = threading.Lock()

    def factory(self, _config: dict[str, Any]) -> Producer:
        return self

    def produce(self, topic: str, *, value: bytes, key: bytes) -> None:
        with self.lock:
            self.sent.append(value)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self) -> None:
        pass

    def __len__(self) -> int:
        return 0


class LiveServer:
    """The predictor app served by aiohttp on a free loopback port, in its own thread."""

    def __init__(self, app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="predictor", daemon=True)
        self.runner = web.AppRunner(app, access_log=None)
        self.url = ""

    def _run(self, coro: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self._run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self._run(site.start())
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        try:
            self._run(self.runner.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Predictor:
    def __init__(self, url: str, producer: Producer, session: requests.Session) -> None:
        self.url, self.producer, self.session = url, producer, session
        self.served = 0  # instances answered 200: each must reach the prediction log
        self.fuzzed: set[str] = set()  # the fuzz tests that ran


@pytest.fixture(scope="module")
def predictor(
    serving_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Predictor]:
    prefix = "fuzz:"
    client = serving_redis.client()
    keys = Keys(prefix)
    for model_id, (model_spec, weights) in ONLINE.items():
        Trainer(client, keys, model_id, size=len(weights), spec=json.dumps(model_spec)).publish(
            np.array(weights)
        )
    client.sadd(keys.models, LOADING)
    folder = tmp_path_factory.mktemp("baselines")
    for model_id, (model_spec, weights) in BASELINES.items():
        write_baseline(folder / f"{model_id}.flc", model_spec, np.array(weights), version=7)
    producer = Producer()
    app = make_app(
        serving_redis.settings(prefix),
        baselines={m: folder / f"{m}.flc" for m in BASELINES},
        ab_fraction=0.3,
        producer_factory=producer.factory,
    )
    server = LiveServer(app)
    server.start()
    session = requests.Session()
    try:

        def ready(model_id: str) -> bool:
            answer = session.get(f"{server.url}/v1/models/{model_id}", timeout=5).json()
            return bool(answer.get("state") == "ready")

        for model_id in ONLINE:
            wait_for(f"{model_id} to load", partial(ready, model_id))
        yield Predictor(server.url, producer, session)
    finally:
        session.close()
        server.stop()
        for model_id in [*ONLINE, LOADING]:
            client.delete(keys.snapshot(model_id), keys.deltas(model_id))
        client.delete(keys.models, keys.epoch)
        client.close()


def with_model(op: Any, mode: GenerationMode, model: str) -> st.SearchStrategy[Any]:
    return op.as_strategy(mode, path_parameters={"model": model})


def case_strategy(mode: GenerationMode) -> st.SearchStrategy[Any]:
    """Requests of ``mode`` for every operation: a path's model drawn among the known ones
    (so predictions are made) or left to schemathesis (unknown, odd names)."""
    known, anyname = [], []
    for label, op in OPERATIONS.items():
        if mode is GenerationMode.NEGATIVE and label not in SCORING:
            continue  # only the request body can be invalid: paths are any string
        if "{model}" in op.path:
            known.append(st.sampled_from(MODELS).flatmap(partial(with_model, op, mode)))
        anyname.append(op.as_strategy(mode))
    return st.one_of(*known, st.one_of(anyname))


def model_spec_of(model: str) -> dict[str, Any]:
    return (ONLINE.get(model) or BASELINES[model])[0]


NUMBERS = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70)


def instances_for(model_spec: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
    """Instances that fit the schema and the model: the right count of numbers (any
    magnitude, so scores may overflow), or maps of numbers and strings; some wrapped."""
    n = model_spec["n_features"]
    features = (
        st.lists(NUMBERS, min_size=n, max_size=n)
        if model_spec["features"] == "dense"
        else st.dictionaries(st.text(max_size=10), NUMBERS | st.text(max_size=10), max_size=6)
    )
    instance = features | st.fixed_dictionaries(
        {"features": features}, optional={"event_id": st.text(max_size=20)}
    )
    return st.lists(instance, min_size=1, max_size=5)


def readable_requests() -> st.SearchStrategy[Any]:
    """Predict requests schemathesis would rarely draw: bodies each model can read."""
    op = OPERATIONS[PREDICT]
    return st.sampled_from(sorted({*ONLINE, *BASELINES})).flatmap(
        lambda m: instances_for(model_spec_of(m)).flatmap(
            lambda instances: op.as_strategy(
                GenerationMode.POSITIVE, path_parameters={"model": m}, body={"instances": instances}
            )
        )
    )


#: The version each model serves (the trainer published 1; the baselines are version 7).
VERSIONS = {**{m: "1" for m in ONLINE}, "only": "7"}


def tensor_for(model_spec: dict[str, Any], rows: list[Any]) -> dict[str, Any]:
    """A V2 feature tensor of ``rows``: dense numbers flat or nested, or JSON objects."""
    n = len(rows)
    if model_spec["features"] == "dense":
        return {"name": "input-0", "shape": [n, model_spec["n_features"]], "datatype": "FP64"}
    return {
        "name": "input-0",
        "shape": [n],
        "datatype": "BYTES",
        "data": [json.dumps(r) for r in rows],
    }


SMALL = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-(2**40), 2**40)


def v2_requests() -> st.SearchStrategy[Any]:
    """Inference requests every model can read (with values that cannot overflow a score),
    to the unversioned path or the served version's, some with event ids."""

    def request(model: str, draw: Any) -> Any:
        model_spec = model_spec_of(model)
        n = model_spec["n_features"]
        dense = model_spec["features"] == "dense"
        row = (
            st.lists(SMALL, min_size=n, max_size=n)
            if dense
            else st.dictionaries(st.text(max_size=10), SMALL | st.text(max_size=10), max_size=6)
        )
        rows = draw(st.lists(row, min_size=1, max_size=5))
        tensor = tensor_for(model_spec, rows)
        if dense:
            nested = draw(st.booleans())
            tensor["data"] = rows if nested else [x for r in rows for x in r]
        inputs = [tensor]
        if draw(st.booleans()):
            ids = draw(st.lists(st.text(max_size=10), min_size=len(rows), max_size=len(rows)))
            inputs.append(
                {"name": "event_id", "shape": [len(rows)], "datatype": "BYTES", "data": ids}
            )
        body: dict[str, Any] = {"inputs": inputs}
        if draw(st.booleans()):
            body["id"] = draw(st.text(max_size=10))
        if draw(st.booleans()):
            body["outputs"] = [{"name": "predict"}]
        if draw(st.booleans()):
            return OPERATIONS[INFER_VERSION].Case(
                path_parameters={"model": model, "version": VERSIONS[model]},
                body=body,
                media_type="application/json",
            )
        return OPERATIONS[INFER].Case(
            path_parameters={"model": model}, body=body, media_type="application/json"
        )

    @st.composite
    def cases(draw: Any) -> Any:
        return request(draw(st.sampled_from(sorted(VERSIONS))), draw)

    return cases()


def features_of(instance: Any) -> Any:
    """An instance's features, as the predictor reads them (a wrapper map or the features)."""
    return (
        instance["features"] if isinstance(instance, dict) and "features" in instance else instance
    )


def readable(model_spec: dict[str, Any], features: Any) -> bool:
    """Features the model can take, with values small enough that no score overflows."""

    def small(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, int | float) and abs(v) < 1e300

    if model_spec["features"] == "dense":
        return (
            isinstance(features, list)
            and len(features) == model_spec["n_features"]
            and all(small(v) for v in features)
        )
    return isinstance(features, dict) and all(
        isinstance(v, str) or small(v) for v in features.values()
    )


def must_be_accepted(model: str, body: Any) -> bool:
    """A schema-valid request the model can read must be answered 200."""
    model_spec = (ONLINE.get(model) or BASELINES.get(model) or (None, None))[0]
    if model_spec is None or not isinstance(body, dict):
        return False
    instances = body.get("instances")
    if not isinstance(instances, list) or not 1 <= len(instances) <= 1000:
        return False
    if any(
        isinstance(i, dict) and "features" in i and not isinstance(i.get("event_id", ""), str)
        for i in instances
    ):
        return False
    return all(readable(model_spec, features_of(i)) for i in instances)


CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def exercise(predictor: Predictor, case: Any) -> Any:
    response = case.call(base_url=predictor.url, session=predictor.session, timeout=10)
    label = case.operation.label
    model = case.path_parameters.get("model") if case.path_parameters else None
    if response.status_code >= 500:
        documented = DOCUMENTED_5XX.get((label, model))
        assert response.status_code == documented, (
            f"{label} model={model!r}: {response.status_code} {response.text[:300]}"
        )
    mode = case.meta.generation.mode if case.meta is not None else GenerationMode.POSITIVE
    case.validate_response(
        response,
        checks=CHECKS
        + ([checks.negative_data_rejection] if mode is GenerationMode.NEGATIVE else []),
    )
    if (
        label == PREDICT
        and mode is GenerationMode.POSITIVE
        and model is not None
        and must_be_accepted(model, case.body)
    ):
        assert response.status_code == 200, (
            f"valid request refused: {response.status_code} {response.text[:300]}"
        )
    if label == PREDICT and response.status_code == 200:
        answer = response.json()
        # KServe's two spellings of the rows: instances, or inputs.
        n = len(case.body["instances"] if "instances" in case.body else case.body["inputs"])
        assert len(answer["predictions"]) == n == len(answer["event_ids"])
        for p in answer["predictions"]:
            for x in p if isinstance(p, list) else [p]:
                assert isinstance(x, float) and math.isfinite(x), answer["predictions"]
        predictor.served += n
    if label in (INFER, INFER_VERSION) and response.status_code == 200:
        answer = response.json()
        n = answer["outputs"][0]["shape"][0]
        for output in answer["outputs"]:
            assert output["shape"][0] == n
            if output["datatype"] == "FP64":
                assert all(math.isfinite(x) for x in output["data"]), output
        predictor.served += n
    return response


FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


@settings(FUZZ, max_examples=150)
@given(case=case_strategy(GenerationMode.POSITIVE))
def test_schema_valid_requests(predictor: Predictor, case: Any) -> None:
    exercise(predictor, case)
    predictor.fuzzed.add("valid")


@settings(FUZZ, max_examples=120)
@given(case=readable_requests())
def test_requests_each_model_can_read(predictor: Predictor, case: Any) -> None:
    exercise(predictor, case)
    predictor.fuzzed.add("readable")


@settings(FUZZ, max_examples=80)
@given(case=v2_requests())
def test_v2_requests_each_model_can_read(predictor: Predictor, case: Any) -> None:
    response = exercise(predictor, case)
    assert response.status_code == 200, f"valid request refused: {response.text[:300]}"
    predictor.fuzzed.add("v2")


@settings(FUZZ, max_examples=100)
@given(case=case_strategy(GenerationMode.NEGATIVE))
def test_schema_invalid_requests_are_refused(predictor: Predictor, case: Any) -> None:
    exercise(predictor, case)
    predictor.fuzzed.add("invalid")


@pytest.mark.parametrize(
    "model, instances, status",
    [
        ("lin", [{"a": 1e308}], 400),  # 3.0 x 1e308 overflows: the answer was [null]
        ("lin", [{"a": 1.0}, {"b": -1e308}], 400),
        ("soft", [[1e308, 1e308]], 400),  # two infinite logits make softmax NaN
        ("soft", [[1e308, 0.0]], 200),  # one dominates: probabilities 1, 0, 0
        ("dense", [[1e308, -1e308, 1e308]], 200),  # a logistic score saturates: finite
    ],
)
def test_overflowing_scores_are_refused_not_nulled(
    predictor: Predictor, model: str, instances: list[Any], status: int
) -> None:
    """Found by the fuzzing: a linear or softmax score of large finite features is not
    finite, and the predictor answered 200 with null predictions, which the documented
    schema does not allow."""
    case = OPERATIONS[PREDICT].Case(
        path_parameters={"model": model},
        body={"instances": instances},
        media_type="application/json",
    )
    response = exercise(predictor, case)
    assert response.status_code == status, response.text


def test_served_document_is_the_fuzzed_one(predictor: Predictor) -> None:
    assert predictor.session.get(f"{predictor.url}/openapi.json", timeout=5).json() == OPENAPI


def test_server_is_up_and_every_prediction_was_logged(predictor: Predictor) -> None:
    """Runs after the fuzzing (file order): the server still answers correctly, and every
    instance it answered went to the prediction log, none lost silently."""
    s = predictor.session
    assert s.get(f"{predictor.url}/healthz", timeout=5).status_code == 200
    answer = s.post(
        f"{predictor.url}/v1/models/dense:predict",
        json={"instances": [{"features": [0.0, 0.0, 0.0], "event_id": "x"}]},
        timeout=5,
    ).json()
    assert answer["predictions"][0] in (
        pytest.approx(1 / (1 + math.exp(-0.25))),
        pytest.approx(1 / (1 + math.exp(-2.0))),
    )
    predictor.served += 1
    if predictor.fuzzed == {"valid", "readable", "v2", "invalid"}:
        assert predictor.served > 100, "the fuzzing made too few predictions to mean much"
    wait_for(
        "every served prediction in the log",
        lambda: len(predictor.producer.sent) == predictor.served,
    )
    time.sleep(0.2)
    assert len(predictor.producer.sent) == predictor.served
