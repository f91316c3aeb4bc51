import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flowlearn.core import codec

FLOAT_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
    elements={"allow_nan": True, "allow_infinity": True},
)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=100, deadline=None)
@given(FLOAT_ARRAYS)
def test_array_round_trip_is_bit_exact(a):
    assert same_bits(codec.decode_array(codec.encode_array(a)), a)


def test_signed_zero_and_nan_payload_survive():
    a = np.array([-0.0, np.nan, 0.0])
    a.view(np.uint64)[1] |= 0xDEAD  # a NaN with a payload
    assert same_bits(codec.decode_array(codec.encode_array(a)), a)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 50), elements={"allow_nan": False}), st.data())
def test_delta_turns_old_into_new_exactly(old, data):
    new = old.copy()
    idx = data.draw(st.lists(st.integers(0, old.size - 1), max_size=10))
    new[idx] = data.draw(hnp.arrays(np.float64, len(idx)))
    replica = old.copy()
    codec.apply_delta(replica, codec.decode_delta(codec.make_delta(old, new)))
    assert same_bits(replica, new)


def test_delta_holds_only_changed_coordinates():
    old = np.zeros(5)
    new = old.copy()
    new[3] = 2.5
    d = codec.decode_delta(codec.make_delta(old, new))
    assert d.indices.tolist() == [3] and d.values.tolist() == [2.5]


def test_state_round_trip():
    arrays = {"w": np.arange(6.0).reshape(2, 3), "n": np.array([3], dtype=np.int64)}
    meta = {"class": "LogisticRegression", "lr": 0.1}
    got_arrays, got_meta = codec.decode_state(codec.encode_state(arrays, meta))
    assert got_meta == meta
    assert set(got_arrays) == set(arrays)
    for k in arrays:
        assert same_bits(got_arrays[k], arrays[k])


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "corrupt"),
        (b"XYZ\x01\x01", "not a flowlearn codec payload"),
        (b"FLC\x09\x01", "unknown codec version 9"),
        (codec.encode_array(np.ones(3))[:-1], "corrupt"),
        (codec.encode_array(np.ones(3)) + b"\x00", "trailing"),
        (codec.encode_delta(np.array([1]), np.array([1.0])), "expected a array payload"),
    ],
)
def test_bad_payloads_raise_codec_error(payload, message):
    with pytest.raises(codec.CodecError, match=message):
        codec.decode_array(payload)


def test_out_of_range_delta_is_refused():
    with pytest.raises(codec.CodecError, match="out of range"):
        codec.apply_delta(np.zeros(2), codec.Delta(np.array([5]), np.array([1.0])))


def test_unsupported_dtype_is_refused():
    with pytest.raises(codec.CodecError, match="unsupported dtype"):
        codec.encode_array(np.array(["a"]))
