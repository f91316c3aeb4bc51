"""Versioned, self-describing binary encoding of arrays, state bundles and overwrite deltas.

Everything that crosses a process boundary (Redis snapshots and deltas, Flink state, MLflow
artifacts) goes through this module; pickle never does.

Every payload starts with a fixed header::

    magic  b"FLC"   3 bytes
    version         1 byte   (CODEC_VERSION)
    kind            1 byte   (array, state bundle or delta)

followed by the kind's body. An array body is ``dtype code (1 byte), ndim (1 byte),
shape (ndim x uint64 LE)`` then the raw little-endian C-order data, so a round trip is
bit-exact (NaN payloads and signed zeros included).

>>> import numpy as np
>>> w = np.array([0.5, -0.0, 3.0])
>>> bool((decode_array(encode_array(w)).view(np.uint64) == w.view(np.uint64)).all())
True
>>> idx, vals = decode_delta(encode_delta(np.array([2]), np.array([7.0])))
>>> idx.tolist(), vals.tolist()
([2], [7.0])
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

MAGIC = b"FLC"
CODEC_VERSION = 1
#: The value stored in Redis' ``codec`` fields: names the format and its version.
CODEC_NAME = f"flc{CODEC_VERSION}"

_KIND_ARRAY = 1
_KIND_STATE = 2
_KIND_DELTA = 3
_KIND_NAMES = {_KIND_ARRAY: "array", _KIND_STATE: "state", _KIND_DELTA: "delta"}

# Stable on-the-wire codes: never renumber, only append.
_DTYPE_CODES: dict[str, int] = {
    "float64": 1,
    "float32": 2,
    "int64": 3,
    "int32": 4,
    "uint8": 5,
    "uint64": 6,
    "bool": 7,
}
_CODE_DTYPES = {code: np.dtype(name).newbyteorder("<") for name, code in _DTYPE_CODES.items()}
#: The codes by little-endian dtype: what every array of this machine's arrays has, looked up
#: without ``dtype.name``, which builds a string each time (a few us an array, on the
#: trainer's hot path).
_LITTLE_CODES = {dtype: code for code, dtype in _CODE_DTYPES.items()}

_HEADER = struct.Struct("<3sBB")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class CodecError(ValueError):
    """A payload that is not ours, of an unknown codec version, or corrupt."""


class Delta(NamedTuple):
    """Coordinates to overwrite: ``weights[indices] = values`` (never a difference)."""

    indices: np.ndarray
    values: np.ndarray


def _header(kind: int) -> bytes:
    return _HEADER.pack(MAGIC, CODEC_VERSION, kind)


def _array_body(a: np.ndarray) -> bytes:
    arr = np.asarray(a)
    code = _LITTLE_CODES.get(arr.dtype)
    if code is None:
        code = _DTYPE_CODES.get(arr.dtype.name)
        if code is None:
            raise CodecError(f"unsupported dtype {arr.dtype}; supported: {sorted(_DTYPE_CODES)}")
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.ndim > 255:
        raise CodecError(f"too many dimensions: {arr.ndim}")
    # tobytes() is C order whatever the layout; the dtype is little-endian by now.
    return bytes((code, arr.ndim)) + struct.pack(f"<{arr.ndim}Q", *arr.shape) + arr.tobytes()


class _Reader:
    """Bounds-checked cursor over a payload; every short read is a CodecError."""

    def __init__(self, payload: bytes | bytearray | memoryview) -> None:
        self.buf = memoryview(payload)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CodecError(
                f"corrupt payload: needs {n} bytes at offset {self.pos}, has {len(self.buf)}"
            )
        chunk = self.buf[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def header(self, expected_kind: int) -> None:
        magic, version, kind = _HEADER.unpack(self.take(_HEADER.size))
        if magic != MAGIC:
            raise CodecError(f"not a flowlearn codec payload (magic {bytes(magic)!r})")
        if version != CODEC_VERSION:
            raise CodecError(
                f"unknown codec version {version}; this build reads version {CODEC_VERSION}"
            )
        if kind != expected_kind:
            raise CodecError(
                f"expected a {_KIND_NAMES[expected_kind]} payload, got "
                f"{_KIND_NAMES.get(kind, f'kind {kind}')}"
            )

    def array(self) -> np.ndarray:
        code, ndim = self.take(2)
        dtype = _CODE_DTYPES.get(code)
        if dtype is None:
            raise CodecError(f"corrupt payload: unknown dtype code {code}")
        shape = tuple(_U64.unpack(self.take(8))[0] for _ in range(ndim))
        # Exact (Python int): a uint64 product wraps around, and a claimed 2**64-element
        # shape would then pass the length check below. take() refuses any count that the
        # payload does not hold, before anything is allocated.
        count = math.prod(shape)
        raw = self.take(count * dtype.itemsize)
        try:
            # Copy so the result owns writable memory in native byte order.
            return (
                np.frombuffer(raw, dtype=dtype)
                .astype(dtype.newbyteorder("="), copy=True)
                .reshape(shape)
            )
        except ValueError as exc:  # more dimensions than numpy has, or one it cannot index
            raise CodecError(f"corrupt payload: bad array shape ({exc})") from exc

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise CodecError(f"corrupt payload: {len(self.buf) - self.pos} trailing bytes")


def encode_array(a: np.ndarray) -> bytes:
    """Encode one array (dtype and shape included)."""
    return _header(_KIND_ARRAY) + _array_body(a)


def decode_array(payload: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode what :func:`encode_array` wrote; raises :class:`CodecError` otherwise."""
    reader = _Reader(payload)
    reader.header(_KIND_ARRAY)
    arr = reader.array()
    reader.end()
    return arr


def encode_state(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """Encode named arrays plus JSON-serialisable metadata (an estimator's full state)."""
    try:
        meta_bytes = json.dumps(dict(meta), sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise CodecError(f"state metadata is not JSON-serialisable: {exc}") from exc
    parts = [_header(_KIND_STATE), _U32.pack(len(meta_bytes)), meta_bytes, _U32.pack(len(arrays))]
    for name in sorted(arrays):
        name_bytes = name.encode()
        parts += [_U32.pack(len(name_bytes)), name_bytes, _array_body(arrays[name])]
    return b"".join(parts)


def decode_state(
    payload: bytes | bytearray | memoryview,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode what :func:`encode_state` wrote into ``(arrays, meta)``."""
    reader = _Reader(payload)
    reader.header(_KIND_STATE)
    (meta_len,) = _U32.unpack(reader.take(4))
    try:
        meta = json.loads(bytes(reader.take(meta_len)))
    except (ValueError, RecursionError) as exc:  # ValueError: also int's digit limit
        raise CodecError(f"corrupt payload: bad state metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise CodecError("corrupt payload: state metadata is not an object")
    (count,) = _U32.unpack(reader.take(4))
    arrays: dict[str, np.ndarray] = {}
    for _ in range(count):
        (name_len,) = _U32.unpack(reader.take(4))
        try:
            name = bytes(reader.take(name_len)).decode()
        except UnicodeDecodeError as exc:
            raise CodecError("corrupt payload: array name is not UTF-8") from exc
        arrays[name] = reader.array()
    reader.end()
    return arrays, meta


def encode_delta(indices: np.ndarray, values: np.ndarray) -> bytes:
    """Encode an overwrite delta: flat ``indices`` and the ``values`` they now hold."""
    idx = np.asarray(indices, dtype=np.int64)
    vals = np.asarray(values)
    if idx.ndim != 1 or vals.ndim != 1 or idx.shape != vals.shape:
        raise CodecError(
            f"delta needs 1-d indices and values of one length, got {idx.shape} and {vals.shape}"
        )
    return _header(_KIND_DELTA) + _array_body(idx) + _array_body(vals)


def decode_delta(payload: bytes | bytearray | memoryview) -> Delta:
    """Decode what :func:`encode_delta` wrote."""
    reader = _Reader(payload)
    reader.header(_KIND_DELTA)
    idx = reader.array()
    vals = reader.array()
    reader.end()
    if idx.dtype != np.int64 or idx.ndim != 1 or vals.ndim != 1 or idx.shape != vals.shape:
        raise CodecError("corrupt payload: delta indices and values do not match")
    return Delta(idx, vals)


def changed_indices(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Flat indices where ``new`` differs from ``old`` bit for bit (NaN and -0.0 aware)."""
    a = np.ascontiguousarray(old).reshape(-1)
    b = np.ascontiguousarray(new).reshape(-1)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"cannot diff {a.dtype}{a.shape} against {b.dtype}{b.shape}")
    unsigned = np.dtype(f"u{a.dtype.itemsize}")
    return np.flatnonzero(a.view(unsigned) != b.view(unsigned)).astype(np.int64, copy=False)


def make_delta(old: np.ndarray, new: np.ndarray) -> bytes:
    """The overwrite delta that turns ``old`` into ``new`` exactly."""
    idx = changed_indices(old, new)
    return encode_delta(idx, np.ascontiguousarray(new).reshape(-1)[idx])


def apply_delta(weights: np.ndarray, delta: Delta) -> None:
    """Overwrite ``weights`` (flat, in place) with the delta's coordinates."""
    if delta.indices.size and (delta.indices.min() < 0 or delta.indices.max() >= weights.size):
        raise CodecError(f"delta index out of range for weights of size {weights.size}")
    # np.put indexes the C-order flattening in place whatever the layout; reshape(-1) of a
    # non-contiguous array would be a copy, and the write would be lost.
    np.put(weights, delta.indices, delta.values)
