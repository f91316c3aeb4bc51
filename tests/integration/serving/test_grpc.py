"""The Open Inference Protocol over gRPC (``predictor.grpc_port``) against a client no one
here wrote, Triton's ``tritonclient.grpc``, and flowlearn's own stub for typed ``contents``
(Triton's client sends raw bytes only): two workers of ``python -m flowlearn.serving``
sharing the gRPC port, bearer tokens on, answering what REST V2 answers, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from flowlearn.contracts.redis_contract import Keys
from flowlearn.serving.protocol import grpc_predict_v2_pb2 as pb
from flowlearn.serving.protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from .conftest import RedisServer, Trainer, free_port, wait_for
from .test_choose import trained as trained_bandit
from .test_conformance import X, served, trained
from .test_main import start_predictor

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

READ_TOKEN = "read-token-for-grpc-tests-0123456789"
ADMIN_TOKEN = "admin-token-for-grpc-tests-0123456789"
READ = {"authorization": f"Bearer {READ_TOKEN}"}
KINDS = ("logistic", "softmax", "linear")


class Predictor:
    """A running predictor: its process, REST url and gRPC target."""

    def __init__(self, proc: subprocess.Popen[str], url: str, target: str) -> None:
        self.proc, self.url, self.target = proc, url, target
        self.grpc_port = int(target.rsplit(":", 1)[1])

    def triton(self) -> Any:
        return grpcclient.InferenceServerClient(self.target)

    def rest_infer(self, model: str, body: Any, version: str | None = None) -> tuple[int, Any]:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": READ["authorization"]},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def predictor(
    serving_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Predictor, dict[str, tuple[str, np.ndarray]]]]:
    """Two workers serving three trained models and a bandit, with gRPC and tokens on."""
    prefix = "grpc:"
    client = serving_redis.client()
    models = {kind: trained(kind) for kind in KINDS}
    for kind, (spec, weights) in models.items():
        Trainer(client, Keys(prefix), kind, size=len(weights), spec=spec).publish(weights)
    bandit = trained_bandit(n_actions=3)
    weights = bandit.model.weights_vector()
    Trainer(client, Keys(prefix), "b", size=len(weights), spec=bandit.published_spec).publish(
        weights
    )
    grpc_port = free_port()
    conf = f"""workers = 2
grpc_port = {grpc_port}
auth = "on"
tokens = ["{ADMIN_TOKEN} admin", "{READ_TOKEN} read"]
"""
    proc, url = start_predictor(serving_redis, prefix, tmp_path_factory.mktemp("grpc"), conf)
    p = Predictor(proc, url, f"127.0.0.1:{grpc_port}")
    triton = p.triton()

    def all_ready() -> bool:
        # One channel keeps one connection, to one worker: each worker's gRPC server starts
        # once its models are in, so both listening and this one answering say both hold them.
        if len(listeners(grpc_port)) < 2:
            return False
        try:
            return all(
                triton.is_model_ready(m, headers=READ) for m in (*KINDS, "b") for _ in range(4)
            )
        except InferenceServerException:
            return False

    try:
        wait_for("both workers to serve every model over gRPC", all_ready, 30)
        yield p, models
    finally:
        triton.close()
        proc.terminate()
        try:
            proc.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        client.close()


def triton_input(rows: np.ndarray, dtype: str) -> Any:
    tensor = grpcclient.InferInput("input-0", list(rows.shape), dtype)
    tensor.set_data_from_numpy(rows.astype(np.float32 if dtype == "FP32" else np.float64))
    return tensor


def expected_scores(models: dict[str, tuple[str, np.ndarray]], kind: str, x: np.ndarray) -> Any:
    model = served(models, kind)
    if kind == "linear":
        return model.predict_many(x)
    proba = model.predict_proba_many(x)
    return np.stack([1.0 - proba, proba], axis=1) if kind == "logistic" else proba


@pytest.mark.parametrize("dtype", ["FP64", "FP32"])
def test_tritonclient_infers_what_the_trainer_predicts(predictor, dtype):
    p, models = predictor
    triton = p.triton()
    try:
        assert triton.is_server_live() and triton.is_server_ready()
        assert triton.get_server_metadata(headers=READ).name == "flowlearn-predictor"
        rows = X[-5:].astype(np.float32 if dtype == "FP32" else np.float64)
        for kind in KINDS:
            meta = triton.get_model_metadata(kind, headers=READ)
            assert meta.name == kind and list(meta.versions) == ["1"]
            assert meta.platform == "flowlearn"
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
                ("input-0", "FP64", [-1, 3])
            ]
            wanted = "predict" if kind == "linear" else "proba"
            result = triton.infer(
                kind,
                inputs=[triton_input(rows, dtype)],
                outputs=[grpcclient.InferRequestedOutput(wanted)],
                headers=READ,
            )
            # FP32 rows are read as the float64 values they hold: the same scores as those.
            expected = expected_scores(models, kind, rows.astype(np.float64))
            np.testing.assert_array_equal(result.as_numpy(wanted), expected)
            response = result.get_response()
            assert response.model_version == "1"
            assert [o.name for o in response.outputs] == [wanted]
            assert response.parameters["variant"].string_param == "online"
            assert response.parameters["epoch"].int64_param >= 0
            assert response.parameters["stale"].bool_param is False
    finally:
        triton.close()


def grpc_request(kind: str, rows: np.ndarray, dtype: str, version: str = "") -> Any:
    """A ModelInferRequest with its elements in typed ``contents`` (Triton's client sends
    raw bytes only)."""
    field = "fp32_contents" if dtype == "FP32" else "fp64_contents"
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0",
        datatype=dtype,
        shape=list(rows.shape),
        contents=pb.InferTensorContents(**{field: rows.reshape(-1).tolist()}),
    )
    return pb.ModelInferRequest(model_name=kind, model_version=version, inputs=[tensor])


@pytest.mark.parametrize("dtype", ["FP64", "FP32"])
def test_grpc_answers_are_the_rest_answers_bit_for_bit(predictor, dtype):
    """The same rows over REST V2 (JSON numbers) and over gRPC (raw bytes, typed contents):
    the same float64 scores, bit for bit."""
    p, _models = predictor
    rows = X[:7] * 1.1  # many digits: nothing rounds on the way
    if dtype == "FP32":
        rows = rows.astype(np.float32)
    triton = p.triton()
    channel = grpc.insecure_channel(p.target)
    stub = GRPCInferenceServiceStub(channel)
    try:
        for kind in KINDS:
            body = {
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": list(rows.shape),
                        "datatype": dtype,
                        # JSON numbers: FP32 rows as the float64 values they hold.
                        "data": rows.astype(np.float64).reshape(-1).tolist(),
                    }
                ]
            }
            status, rest = p.rest_infer(kind, body)
            assert status == 200, rest
            result = triton.infer(kind, inputs=[triton_input(rows, dtype)], headers=READ)
            contents = stub.ModelInfer(
                grpc_request(kind, rows, dtype), metadata=tuple(READ.items())
            )
            assert not contents.raw_output_contents  # contents in, contents out
            for output in rest["outputs"]:
                name, datatype = output["name"], output["datatype"]
                numpy_type = np.int64 if datatype == "INT64" else np.float64
                from_rest = np.asarray(output["data"], dtype=numpy_type).reshape(output["shape"])
                raw = result.as_numpy(name)
                assert raw.dtype == numpy_type and raw.shape == from_rest.shape
                assert raw.tobytes() == from_rest.tobytes(), (kind, name)
                (typed,) = (o for o in contents.outputs if o.name == name)
                values = (
                    typed.contents.int64_contents
                    if datatype == "INT64"
                    else typed.contents.fp64_contents
                )
                assert list(typed.shape) == output["shape"]
                assert np.asarray(values, dtype=numpy_type).tobytes() == from_rest.tobytes()
    finally:
        channel.close()
        triton.close()


def test_versions_unknown_models_and_bad_tensors_get_the_protocols_codes(predictor):
    p, _models = predictor
    triton = p.triton()
    rows = X[:2]
    try:
        result = triton.infer(
            "linear", inputs=[triton_input(rows, "FP64")], model_version="1", headers=READ
        )
        assert result.get_response().model_version == "1"
        assert triton.is_model_ready("linear", model_version="1", headers=READ)
        for call in (
            lambda: triton.infer(
                "linear", inputs=[triton_input(rows, "FP64")], model_version="2", headers=READ
            ),
            lambda: triton.get_model_metadata("linear", model_version="2", headers=READ),
        ):
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert raised.value.status() == "StatusCode.NOT_FOUND"
            assert "version '2' is not served here; version 1 is" in raised.value.message()
        for call in (
            lambda: triton.infer("nope", inputs=[triton_input(rows, "FP64")], headers=READ),
            lambda: triton.get_model_metadata("nope", headers=READ),
            lambda: triton.is_model_ready("nope", headers=READ),
        ):
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert raised.value.status() == "StatusCode.NOT_FOUND"
            assert "model 'nope' not found" in raised.value.message()
        # Two features for a model of three: the message REST gives, as INVALID_ARGUMENT.
        with pytest.raises(InferenceServerException) as raised:
            triton.infer("linear", inputs=[triton_input(X[:2, :2], "FP64")], headers=READ)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "inputs[0].shape: expected [n, 3], got [2, 2]" in raised.value.message()
        # A shape that is not the data's.
        channel = grpc.insecure_channel(p.target)
        try:
            request = grpc_request("linear", rows, "FP64")
            request.inputs[0].shape[:] = [3, 3]
            with pytest.raises(grpc.RpcError) as failed:
                GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=tuple(READ.items()))
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "shape [3, 3] holds 9 elements, data has 6" in failed.value.details()
        finally:
            channel.close()
    finally:
        triton.close()


def test_tokens_open_the_calls_as_they_open_http_routes(predictor):
    p, _models = predictor
    triton = p.triton()
    rows = X[:1]
    try:
        # The health calls are open, like /v2/health/*.
        assert triton.is_server_live() and triton.is_server_ready()
        for headers, message in (
            (None, "needs an Authorization: Bearer token"),
            ({"authorization": "Bearer not-a-token-of-this-predictor"}, "not valid"),
            ({"authorization": f"Basic {READ_TOKEN}"}, "needs an Authorization: Bearer"),
        ):
            for call in (
                lambda h=headers: triton.infer("linear", [triton_input(rows, "FP64")], headers=h),
                lambda h=headers: triton.get_model_metadata("linear", headers=h),
                lambda h=headers: triton.get_server_metadata(headers=h),
            ):
                with pytest.raises(InferenceServerException) as raised:
                    call()
                assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
                assert message in raised.value.message()
        # No gRPC call needs an admin token: a read token opens them all, an admin one too.
        for token in (READ_TOKEN, ADMIN_TOKEN):
            headers = {"authorization": f"Bearer {token}"}
            assert triton.infer("linear", [triton_input(rows, "FP64")], headers=headers)
            assert triton.get_model_metadata("linear", headers=headers).name == "linear"
            assert triton.is_model_ready("linear", headers=headers)
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{p.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ),
            timeout=5,
        ) as resp:
            text = resp.read().decode()
        # Counted beside the REST routes (both workers' counts, whichever answered).
        assert 'flowlearn_predictor_requests_total{route="grpc_infer",status="OK"}' in text
        assert 'flowlearn_predictor_requests_total{route="grpc_metadata",status="OK"}' in text
        assert 'flowlearn_predictor_auth_refused_total{reason="missing"}' in text
    finally:
        triton.close()


def test_a_bandit_chooses_over_grpc_as_over_rest(predictor):
    """The V2 form of :choose: the same actions and propensities for the same event ids."""
    p, _models = predictor
    contexts = X[:4]
    ids = [f"event-{i}" for i in range(len(contexts))]
    triton = p.triton()
    try:
        event_ids = grpcclient.InferInput("event_id", [len(ids)], "BYTES")
        event_ids.set_data_from_numpy(np.array([i.encode() for i in ids], dtype=np.object_))
        result = triton.infer("b", inputs=[triton_input(contexts, "FP64"), event_ids], headers=READ)
        body = {
            "inputs": [
                {"name": "input-0", "shape": [4, 3], "datatype": "FP64", "data": contexts.tolist()},
                {"name": "event_id", "shape": [4], "datatype": "BYTES", "data": ids},
            ]
        }
        status, rest = p.rest_infer("b", body)
        assert status == 200, rest
        for output in rest["outputs"]:
            got = result.as_numpy(output["name"])
            if output["datatype"] == "BYTES":
                assert [v.decode() for v in got] == output["data"] == ids
            else:
                expected = np.asarray(output["data"]).reshape(output["shape"])
                assert got.tobytes() == expected.astype(got.dtype).tobytes(), output["name"]
    finally:
        triton.close()


def listeners(port: int) -> set[int]:
    """The processes with a socket listening on ``port``, from /proc (grpc may listen on
    127.0.0.1 as an IPv4-mapped IPv6 address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # gone, or not ours to look at
            continue
        if inodes & set(fds):
            pids.add(int(entry.name))
    return pids


def test_both_workers_listen_on_the_grpc_port(predictor):
    p, _models = predictor
    pids = listeners(p.grpc_port)
    assert len(pids) == 2 and p.proc.pid not in pids
    children = Path(f"/proc/{p.proc.pid}/task/{p.proc.pid}/children").read_text().split()
    assert pids == {int(c) for c in children}


def test_one_process_serves_grpc_over_tls_and_stops_cleanly(
    serving_redis: RedisServer, prefix, tmp_path, test_ca
):
    """One process (no workers): gRPC over TLS with the HTTP certificate, plain text
    refused, and SIGTERM stopping both servers with exit status 0."""
    cert, key = test_ca.issue("predictor-grpc")
    client = serving_redis.client()
    Trainer(client, Keys(prefix), "m").publish(np.array([1.0, 0.5, 0.0, -0.5]))
    grpc_port = free_port()
    conf = f'workers = 1\ngrpc_port = {grpc_port}\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"'
    proc, _url = start_predictor(serving_redis, prefix, tmp_path, conf, tls_ca=test_ca.cert)
    target = f"127.0.0.1:{grpc_port}"
    try:
        triton = grpcclient.InferenceServerClient(
            target, ssl=True, root_certificates=str(test_ca.cert)
        )
        try:
            wait_for("the model over gRPC", lambda: triton.is_model_ready("m"), 30)
            result = triton.infer("m", inputs=[triton_input(np.array([[1.0, 2.0, 3.0]]), "FP64")])
            assert result.as_numpy("proba").shape == (1, 2)
        finally:
            triton.close()
        plain = grpcclient.InferenceServerClient(target)
        try:
            with pytest.raises(InferenceServerException) as raised:
                plain.is_server_live()
            assert raised.value.status() == "StatusCode.UNAVAILABLE"
        finally:
            plain.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=25)
        client.close()
    assert proc.returncode == 0, out
    assert f"gRPC (Open Inference Protocol) on 127.0.0.1:{grpc_port} over TLS" in out
