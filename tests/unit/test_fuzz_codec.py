"""Fuzzing the binary codec: any bytes decode or raise CodecError, round trips are bit-exact.

Every payload that reaches a decoder came from another process (Redis, Flink state, MLflow),
so a corrupt one must fail as :class:`~flowlearn.core.codec.CodecError` alone: the callers catch
that type and nothing else. The examples are derandomized (fixed per test) so CI is stable;
``@example`` pins the payloads that once escaped as another exception.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowlearn.core import codec

FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ROUND_TRIP = settings(max_examples=150, deadline=None, derandomize=True, database=None)

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "array": codec.decode_array,
    "state": codec.decode_state,
    "delta": codec.decode_delta,
}
KINDS = {"array": 1, "state": 2, "delta": 3}
# dtype code -> the unsigned type of the same width, to draw arbitrary bit patterns.
DTYPES = [np.float64, np.float32, np.int64, np.int32, np.uint8, np.uint64, np.bool_]


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def header(kind: int) -> bytes:
    return b"FLC\x01" + bytes([kind])


def array_head(code: int, *shape: int) -> bytes:
    return bytes([code, len(shape)]) + b"".join(u64(n) for n in shape)


# Headers that claim absurd sizes: each must be refused before anything is allocated.
SHAPE_BOMBS = [
    header(1) + array_head(1, 2**60),
    header(1) + array_head(1, 2**64 - 1),
    header(1) + array_head(1, 2**32, 2**32),  # the product wraps to 0 in uint64
    header(1) + array_head(1, 2**33, 2**31) + b"\0" * 8,  # wraps to 0, with stray data
    header(1) + array_head(1, 0, 2**64 - 1),  # no elements, an impossible dimension
    header(1) + array_head(5, *([1] * 200)) + b"\0",  # more dimensions than numpy has
    header(3) + array_head(3, 2**61) + array_head(1, 2**61),
    header(2) + u32(2) + b"{}" + u32(2**32 - 1),  # claims four billion arrays
    header(2) + u32(2**32 - 1) + b"{}",  # metadata longer than the payload
]


def assert_decodes_or_codec_error(decode: Callable[[bytes], Any], payload: bytes) -> None:
    """The contract: a value, or CodecError with a message, and never another exception."""
    try:
        decode(payload)
    except codec.CodecError as exc:
        assert str(exc), "a CodecError must say what is wrong"


# -- any bytes -------------------------------------------------------------------------------


@FUZZ
@given(kind=st.sampled_from(sorted(DECODERS)), payload=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_codec_error(kind: str, payload: bytes) -> None:
    assert_decodes_or_codec_error(DECODERS[kind], payload)


@st.composite
def headed_payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid header (so decoding goes past the magic) and a body that is mostly junk."""
    kind = draw(st.sampled_from(sorted(DECODERS)))
    dims = draw(st.lists(st.one_of(st.integers(0, 4), st.integers(0, 2**64 - 1)), max_size=4))
    array = array_head(draw(st.integers(0, 9)), *dims) + draw(st.binary(max_size=64))
    if kind == "state":
        meta = draw(
            st.sampled_from(
                [
                    b"{}",
                    b'{"a": 1}',
                    b"[]",
                    b"{",
                    b"\xff",
                    b"1" * 5000,
                    b"[" * 5000,
                    b'{"x": ' + b"[" * 3000,
                ]
            )
        )
        body = (
            u32(draw(st.sampled_from([len(meta), len(meta) + 1, 2**32 - 1])))
            + meta
            + u32(draw(st.integers(0, 3)))
            + u32(draw(st.integers(0, 8)))
            + draw(st.sampled_from([b"w", b"\xff\xfe", b""]))
            + array
        )
    elif kind == "delta":
        body = array + draw(st.binary(max_size=40))
    else:
        body = array
    return kind, header(KINDS[kind]) + draw(st.one_of(st.just(body), st.binary(max_size=80)))


@FUZZ
@given(headed_payloads())
@example(("array", SHAPE_BOMBS[2]))
@example(("array", SHAPE_BOMBS[4]))
@example(("array", SHAPE_BOMBS[5]))
@example(("state", header(2) + u32(10_000) + b"[" * 10_000))  # nested too deep for json
@example(("state", header(2) + u32(5000) + b"1" * 5000))  # beyond int's digit limit
def test_structured_junk_raises_only_codec_error(case: tuple[str, bytes]) -> None:
    kind, payload = case
    assert_decodes_or_codec_error(DECODERS[kind], payload)


@st.composite
def valid_payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(DECODERS)))
    a = draw(hnp.arrays(np.float64, st.integers(0, 6)))
    if kind == "array":
        return kind, codec.encode_array(a)
    if kind == "delta":
        return kind, codec.encode_delta(np.arange(a.size), a)
    return kind, codec.encode_state({"w": a, "n": np.arange(3)}, {"class": "X", "t": 1})


@FUZZ
@given(valid_payloads(), st.data())
def test_mutated_valid_payloads_raise_only_codec_error(
    case: tuple[str, bytes], data: st.DataObject
) -> None:
    """Flipped, overwritten, cut or extended bytes of real payloads."""
    kind, payload = case
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "extend"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = data.draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x40]))
        elif op == "cut":
            del buf[pos:]
        else:
            buf += data.draw(st.binary(min_size=1, max_size=16))
    assert_decodes_or_codec_error(DECODERS[kind], bytes(buf))


@pytest.mark.parametrize("payload", SHAPE_BOMBS, ids=range(len(SHAPE_BOMBS)))
def test_shape_bombs_are_refused_before_allocating(payload: bytes) -> None:
    kind = {1: "array", 2: "state", 3: "delta"}[payload[4]]
    tracemalloc.start()
    try:
        with pytest.raises(codec.CodecError):
            DECODERS[kind](payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a {len(payload)}-byte payload peaked at {peak} bytes"


# -- round trips -----------------------------------------------------------------------------


@st.composite
def any_arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of every supported dtype with arbitrary bit patterns (NaN payloads, -0.0,
    subnormals, infinities), any shape (0-d and empty included), any memory layout."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if dtype.kind == "f":
        bits = draw(hnp.arrays(np.dtype(f"u{dtype.itemsize}"), shape))
        a = bits.view(dtype)
    else:
        a = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["c", "fortran", "reversed", "big-endian"]))
    if layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "reversed" and a.ndim:
        a = a[::-1]
    elif layout == "big-endian":
        a = a.astype(a.dtype.newbyteorder(">"))
    return a


def same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal dtype (native order), shape and bytes."""
    want = np.asarray(want, dtype=want.dtype.newbyteorder("=")).copy(order="C")
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


@ROUND_TRIP
@given(any_arrays())
@example(np.array([-0.0, 5e-324, -5e-324, np.inf, -np.inf]))
@example(np.array([0x7FF0000000000001, 0xFFF8DEADBEEF0001], dtype=np.uint64).view(np.float64))
@example(np.array([0x7F800001, 0xFFC0BEEF, 0x00000001], dtype=np.uint32).view(np.float32))
def test_array_round_trip_is_bit_exact(a: np.ndarray) -> None:
    got = codec.decode_array(codec.encode_array(a))
    assert same_bits(got, a)
    assert got.flags.writeable and got.flags.c_contiguous


NAMES = st.text(st.characters(codec="utf-8"), max_size=12)
META = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@ROUND_TRIP
@given(
    st.dictionaries(NAMES, any_arrays(), max_size=4),
    st.dictionaries(st.text(max_size=8), META, max_size=5),
)
def test_state_round_trip_is_exact(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    got_arrays, got_meta = codec.decode_state(codec.encode_state(arrays, meta))
    assert got_meta == json.loads(json.dumps(meta))
    assert sorted(got_arrays) == sorted(arrays)
    for name, a in arrays.items():
        assert same_bits(got_arrays[name], a)


@ROUND_TRIP
@given(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_state_metadata_must_be_finite_json(bad: float) -> None:
    with pytest.raises(codec.CodecError):
        codec.encode_state({}, {"x": bad})


@st.composite
def weight_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """``old`` and ``new`` float weights, arbitrary bits, a few coordinates changed."""
    dtype = np.dtype(draw(st.sampled_from([np.float64, np.float32])))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8))
    unsigned = np.dtype(f"u{dtype.itemsize}")
    old = draw(hnp.arrays(unsigned, shape)).view(dtype)
    new = old.copy()
    flat = new.reshape(-1)
    for i in draw(st.lists(st.integers(0, flat.size - 1), max_size=flat.size)):
        flat[i : i + 1].view(unsigned)[0] = draw(
            st.sampled_from([0, 1 << (dtype.itemsize * 8 - 1), int(np.iinfo(unsigned).max)])
            | st.integers(0, int(np.iinfo(unsigned).max))
        )
    return old, new


@ROUND_TRIP
@given(weight_pairs(), st.sampled_from(["c", "fortran"]))
def test_delta_applies_exactly(pair: tuple[np.ndarray, np.ndarray], layout: str) -> None:
    old, new = pair
    payload = codec.make_delta(old, new)
    delta = codec.decode_delta(payload)
    unsigned = np.dtype(f"u{old.dtype.itemsize}")
    differs = old.reshape(-1).view(unsigned) != new.reshape(-1).view(unsigned)
    assert delta.indices.tolist() == np.flatnonzero(differs).tolist()
    replica = np.asfortranarray(old) if layout == "fortran" else old.copy()
    codec.apply_delta(replica, delta)
    assert replica.shape == new.shape and replica.dtype == new.dtype
    assert replica.tobytes(order="C") == new.tobytes()


@ROUND_TRIP
@given(
    hnp.arrays(np.int64, st.integers(0, 6), elements=st.integers(-(2**63), 2**63 - 1)), st.data()
)
def test_delta_round_trip_and_bounds(indices: np.ndarray, data: st.DataObject) -> None:
    values = data.draw(hnp.arrays(np.float64, indices.size))
    delta = codec.decode_delta(codec.encode_delta(indices, values))
    assert delta.indices.tolist() == indices.tolist()
    assert delta.values.tobytes() == values.tobytes()
    weights = np.zeros(data.draw(st.integers(1, 6)))
    in_range = bool(((indices >= 0) & (indices < weights.size)).all())
    if in_range:
        codec.apply_delta(weights, delta)
        if len(set(indices.tolist())) == indices.size:
            assert weights[indices].tobytes() == values.tobytes()
    else:
        before = weights.tobytes()
        with pytest.raises(codec.CodecError):
            codec.apply_delta(weights, delta)
        assert weights.tobytes() == before, "a refused delta must leave the weights alone"
