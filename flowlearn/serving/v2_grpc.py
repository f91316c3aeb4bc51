"""The Open Inference Protocol (KServe V2) over gRPC: ``inference.GRPCInferenceService``
(flowlearn/serving/protocol/grpc_predict_v2.proto), beside the HTTP API.

With ``predictor.grpc_port`` set, every predictor process (each worker) serves it on the
asyncio loop of its HTTP server (grpc.aio, uvloop included), from the moment it listens on
HTTP to its shutdown, drained like HTTP. A request is only translated: its tensors (typed
``contents``, or ``raw_input_contents`` read as the REST binary extension reads its bytes)
become the REST form of an inference request, which
:func:`flowlearn.serving.app.v2_answer` reads, checks, scores, logs and counts exactly as it
does a REST one; the answer goes back typed as it came (``contents`` in, ``contents`` out;
raw in, raw out), with the gRPC status codes KServe and Triton use:

>>> STATUS[400].name, STATUS[404].name, STATUS[503].name, STATUS[401].name
('INVALID_ARGUMENT', 'NOT_FOUND', 'UNAVAILABLE', 'UNAUTHENTICATED')

Tokens: ``authorization: Bearer TOKEN`` metadata, read as the HTTP header is
(:meth:`flowlearn.serving.auth.Guard.check`); ServerLive and ServerReady are open, like
``/v2/health/*``; no RPC here is an admin one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from flowlearn.conf import ConfigError, PredictorConf
from flowlearn.serving.app import (
    PREDICTOR,
    SERVER_NAME,
    SERVER_VERSION,
    SHUTDOWN_TIMEOUT_S,
    Predictor,
    is_ready,
    v2_answer,
    v2_target,
)
from flowlearn.serving.auth import GUARD, Guard
from flowlearn.serving.protocol import grpc_predict_v2_pb2 as pb
from flowlearn.serving.protocol.grpc_predict_v2_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)
from flowlearn.serving.v2 import Refused, binary_bytes, binary_elements, model_metadata

log = logging.getLogger("flowlearn.serving.grpc")

#: The gRPC status of each refusal's HTTP status.
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
#: The field of ``InferTensorContents`` holding a datatype's elements.
CONTENTS = {
    "FP64": "fp64_contents",
    "FP32": "fp32_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "BYTES": "bytes_contents",
}
#: The ``route`` label of the request metrics for the counted RPCs (the REST routes'
#: ``infer`` and ``metadata``); their ``status`` is the gRPC status code's name.
INFER_ROUTE, METADATA_ROUTE = "grpc_infer", "grpc_metadata"


def request_body(request: pb.ModelInferRequest) -> dict[str, Any]:
    """A gRPC inference request in the REST form :func:`~flowlearn.serving.app.v2_answer`
    reads: each input's elements, flat, in ``data``. Raises Refused (400) for elements that
    are not where the protocol puts them; what the tensors hold is checked there.

    >>> tensor = pb.ModelInferRequest.InferInputTensor(
    ...     name="input-0", datatype="FP64", shape=[1, 2],
    ...     contents=pb.InferTensorContents(fp64_contents=[0.5, -1.0]))
    >>> request_body(pb.ModelInferRequest(model_name="m", inputs=[tensor]))["inputs"]
    [{'name': 'input-0', 'datatype': 'FP64', 'shape': [1, 2], 'data': [0.5, -1.0]}]
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise Refused(
            400,
            f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs "
            "(give every input's elements there, or none)",
        )
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if raw:
            if tensor.HasField("contents"):
                raise Refused(400, f"{where}: elements in both contents and raw_input_contents")
            item["data"] = binary_elements(raw[i], item, where)
        else:
            item["data"] = _contents(tensor, where)
        inputs.append(item)
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": output.name} for output in request.outputs]
    return body


def _contents(tensor: pb.ModelInferRequest.InferInputTensor, where: str) -> list[Any]:
    """A tensor's elements from the ``contents`` field of its datatype (none for a datatype
    not taken here, which the request's reading refuses by name)."""
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        return []
    values = list(getattr(tensor.contents, field))
    if field != "bytes_contents":
        return values
    try:
        return [v.decode() for v in values]
    except UnicodeDecodeError:
        raise Refused(400, f"{where}: a BYTES element is not UTF-8") from None


def response_message(result: Mapping[str, Any], raw: bool) -> pb.ModelInferResponse:
    """The gRPC form of a V2 inference response (as :func:`v2_answer` gives it): outputs in
    ``raw_output_contents`` when ``raw``, else in their typed ``contents``."""
    response = pb.ModelInferResponse(
        model_name=result["model_name"], model_version=result["model_version"], id=result["id"]
    )
    for key, value in result["parameters"].items():
        _set_parameter(response.parameters[key], value)
    for tensor in result["outputs"]:
        datatype = tensor["datatype"]
        output = response.outputs.add(name=tensor["name"], datatype=datatype, shape=tensor["shape"])
        if raw:
            response.raw_output_contents.append(binary_bytes(tensor["data"], datatype))
        elif datatype == "BYTES":
            output.contents.bytes_contents.extend(v.encode() for v in tensor["data"])
        else:
            getattr(output.contents, CONTENTS[datatype]).extend(tensor["data"])
    return response


def _set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):  # before int: a bool is an int
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def _tensors(
    tensors: list[dict[str, Any]],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=t["name"], datatype=t["datatype"], shape=t["shape"]
        )
        for t in tensors
    ]


class InferenceService(GRPCInferenceServiceServicer):
    """The six RPCs of the core protocol, over the predictor's state; the others of the full
    service answer UNIMPLEMENTED."""

    def __init__(self, predictor: Predictor, guard: Guard) -> None:
        self.p = predictor
        self.guard = guard

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        """Abort (UNAUTHENTICATED, PERMISSION_DENIED) unless the call's token opens it."""
        if not self.guard.required:
            return
        authorization = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                authorization = value
        refusal = self.guard.check(authorization)
        if refusal is not None:
            await context.abort(STATUS[refusal.status], refusal.message)

    async def _refuse(
        self, context: grpc.aio.ServicerContext, route: str, exc: Refused, started: float
    ) -> None:
        code = STATUS.get(exc.status, grpc.StatusCode.INTERNAL)
        self.p.done(route, code.name, started)
        await context.abort(code, exc.message)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=is_ready(self.p))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        await self._authorize(context)
        # No extension: binary_tensor_data is REST's (gRPC has raw contents of its own).
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        await self._authorize(context)
        try:
            v2_target(self.p, request.name, request.version or None)
        except Refused as exc:
            if exc.status == 404:
                await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        started = time.perf_counter()
        await self._authorize(context)
        try:
            _served, _baseline, current = v2_target(self.p, request.name, request.version or None)
        except Refused as exc:
            await self._refuse(context, METADATA_ROUTE, exc, started)
            raise  # not reached: abort raises
        meta = model_metadata(request.name, current.version, current.spec, self.p.log is not None)
        self.p.done(METADATA_ROUTE, grpc.StatusCode.OK.name, started)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=_tensors(meta["inputs"]),
            outputs=_tensors(meta["outputs"]),
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        await self._authorize(context)
        model_id, wanted = request.model_name, request.model_version or None
        try:
            target = v2_target(self.p, model_id, wanted)
            body = request_body(request)
            result = await v2_answer(self.p, model_id, target, body, split=wanted is None)
            response = response_message(result, raw=bool(request.raw_input_contents))
        except Refused as exc:
            await self._refuse(context, INFER_ROUTE, exc, started)
            raise  # not reached: abort raises
        self.p.done(INFER_ROUTE, grpc.StatusCode.OK.name, started)
        return response


def server_credentials(conf: PredictorConf) -> grpc.ServerCredentials:
    """TLS with ``predictor.tls_cert_file`` and ``tls_key_file`` (the HTTP server's)."""
    try:
        key = Path(conf.tls_key_file).read_bytes()
        chain = Path(conf.tls_cert_file).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"predictor.tls_cert_file {conf.tls_cert_file} and predictor.tls_key_file "
            f"{conf.tls_key_file}: cannot serve gRPC over TLS with them ({exc})"
        ) from None
    return grpc.ssl_server_credentials([(key, chain)])


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC reads it (an IPv6 host in brackets).

    >>> address("::1", 8081), address("0.0.0.0", 8081)
    ('[::1]:8081', '0.0.0.0:8081')
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_server(
    predictor: Predictor, guard: Guard, conf: PredictorConf, *, share_port: bool
) -> grpc.aio.Server:
    """The gRPC server on ``predictor.grpc_port``, started on the running loop;
    ``share_port``: with ``SO_REUSEPORT``, as every worker of one predictor binds it (the
    kernel spreads connections over them; the master checked that nothing else has it)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", int(share_port)),
            # The same bound as an HTTP body's.
            ("grpc.max_receive_message_length", conf.max_body_bytes),
        ]
    )
    add_GRPCInferenceServiceServicer_to_server(InferenceService(predictor, guard), server)
    where = address(conf.host, conf.grpc_port)
    try:
        if conf.tls:
            server.add_secure_port(where, server_credentials(conf))
        else:
            server.add_insecure_port(where)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise ConfigError(f"predictor.grpc_port: cannot listen on {where} ({exc})") from None
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s%s", where, " over TLS" if conf.tls else "")
    return server


def serve_grpc(app: web.Application, *, share_port: bool) -> None:
    """Serve gRPC with ``app``: started after its other startup hooks (a worker's wait for
    its models: gRPC listens when HTTP does), stopped at its shutdown, in-flight calls
    given :data:`~flowlearn.serving.app.SHUTDOWN_TIMEOUT_S` to finish."""
    servers: list[grpc.aio.Server] = []

    async def start(app: web.Application) -> None:
        conf = app[PREDICTOR].settings.predictor
        servers.append(await start_server(app[PREDICTOR], app[GUARD], conf, share_port=share_port))

    async def stop(_app: web.Application) -> None:
        for server in servers:
            await server.stop(SHUTDOWN_TIMEOUT_S)

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
