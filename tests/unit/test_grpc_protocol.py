"""The committed gRPC code is what grpcio-tools generates from the committed ``.proto``
(``make proto`` after an edit), and it loads beside another library's code for the same
protocol (Triton's client) in one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flowlearn.serving.protocol import generate


def test_the_committed_code_is_what_the_proto_generates(tmp_path: Path) -> None:
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTO.with_name(fresh.name)
        assert fresh.read_text() == committed.read_text(), (
            f"{committed.relative_to(generate.ROOT)} differs from what "
            f"{generate.PROTO.name} generates: run `make proto` and commit the result"
        )


def test_the_wire_names_and_numbers_are_the_protocols() -> None:
    from flowlearn.serving.protocol import grpc_predict_v2_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    fields = {f.name: f.number for f in pb.ModelInferRequest.DESCRIPTOR.fields}
    assert fields == {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    }
    contents = {f.name: f.number for f in pb.InferTensorContents.DESCRIPTOR.fields}
    assert contents["fp32_contents"] == 6 and contents["fp64_contents"] == 7


def test_it_loads_beside_tritonclients_messages_of_the_same_names() -> None:
    # A process of its own: the test session may hold either module already.
    code = (
        "import tritonclient.grpc.service_pb2 as triton\n"
        "from flowlearn.serving.protocol import grpc_predict_v2_pb2 as ours\n"
        "m = ours.ModelInferRequest(model_name='m', raw_input_contents=[b'x'])\n"
        "t = triton.ModelInferRequest.FromString(m.SerializeToString())\n"
        "assert (t.model_name, list(t.raw_input_contents)) == ('m', [b'x'])\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
