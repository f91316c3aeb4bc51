"""Regenerate the Python code of ``grpc_predict_v2.proto``: ``make proto`` (or
``python -m flowlearn.serving.protocol.generate``), after an edit of the ``.proto``.

The code is grpcio-tools' (the dev extra pins the version whose output is committed: its
runtime check accepts the grpcio that apache-beam allows), committed rather than generated
at install: installing needs no code generator, and a review sees what changed.
tests/unit/test_grpc_protocol.py regenerates it and fails while the committed files differ.

One change to protoc's output: the messages go to a descriptor pool of their own, not
protobuf's default one. Triton's and KServe's clients generate the same protocol under the
same names (``inference.ModelInferRequest``), and the default pool refuses a name twice:
with a pool of their own, flowlearn's messages and theirs load in one process (a client's,
the tests').
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO = Path(__file__).resolve().with_name("grpc_predict_v2.proto")
#: The folder holding the ``flowlearn`` package: protoc names the generated modules from it.
ROOT = PROTO.parents[3]
#: What protoc writes, and what this module writes instead.
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("
#: The generated files, beside the ``.proto``.
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Write the generated files under ``out`` (at their package path: ``out`` = the
    repository root replaces the committed ones); returns their paths."""
    from grpc_tools import protoc  # the dev extra's: only this module needs it

    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit status {code})")
    folder = out / PROTO.parent.relative_to(ROOT)
    messages = folder / GENERATED[0]
    text = messages.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise RuntimeError(f"{messages}: protoc's output changed: {DEFAULT_POOL!r} not found once")
    messages.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
    return [folder / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(ROOT):
        print(path.relative_to(ROOT), file=sys.stderr)
