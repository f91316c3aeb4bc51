from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from flowlearn.core import preprocessing

ROW = {"country": "fr", "age": 31.5, "premium": True, "n": 3}


def test_hasher_is_stable_across_processes():
    code = (
        "from flowlearn.core.preprocessing import FeatureHasher;"
        f"i, v = FeatureHasher(1024, seed=7).transform_one({ROW!r});"
        "print(i.tolist(), v.tolist())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1
    i, v = preprocessing.FeatureHasher(1024, seed=7).transform_one(ROW)
    assert outs.pop() == f"{i.tolist()} {v.tolist()}\n"


def test_hasher_pins_its_layout():
    # Changing the hash silently would scramble every published model: pin a few buckets.
    i, v = preprocessing.FeatureHasher(2**20, seed=0).transform_one({"a": 1.0, "b": "x"})
    assert (i.tolist(), v.tolist()) == ([408796, 549228], [-1.0, 1.0])


def test_hasher_values_and_signs():
    h = preprocessing.FeatureHasher(2**20, seed=1)
    hu = preprocessing.FeatureHasher(2**20, seed=1, alternate_sign=False)
    i, v = h.transform_one({"n": 2.5, "flag": False, "s": "a"})
    iu, vu = hu.transform_one({"n": 2.5, "flag": False, "s": "a"})
    assert i.dtype == np.int64 and v.dtype == np.float64
    assert np.array_equal(i, iu)
    assert sorted(np.abs(v).tolist()) == [0.0, 1.0, 2.5]
    assert np.all(vu >= 0)
    # "name=value" is the token of a string feature.
    assert np.array_equal(h.transform_one({"s": "a"})[0], h.transform_one({"s=a": 1})[0])
    other = preprocessing.FeatureHasher(2**20, seed=2)
    assert other.transform_one(ROW)[0].tolist() != h.transform_one(ROW)[0].tolist()


def test_collisions_add_up():
    h = preprocessing.FeatureHasher(1, alternate_sign=False)
    i, v = h.transform_one({"a": 1.0, "b": 2.0, "c": "x"})
    assert i.tolist() == [0] and v.tolist() == [4.0]
    assert h.transform_many([{"a": 1.0, "b": 2.0}]).tolist() == [[3.0]]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1], {"x": 1}, b"raw"])
def test_bad_values_name_the_field(value: Any):
    h = preprocessing.FeatureHasher(8)
    with pytest.raises(ValueError, match="'price'"):
        h.transform_one({"ok": 1.0, "price": value})
    with pytest.raises(ValueError, match="'price'"):
        h.transform_many([{"ok": 1.0}, {"price": value}])


def test_bad_maps_and_names():
    h = preprocessing.FeatureHasher(8)
    with pytest.raises(ValueError, match="map"):
        h.transform_many([[1.0, 2.0]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="names must be strings"):
        h.transform_one({1: 2.0})  # type: ignore[dict-item]


def test_missing_features_take_defaults():
    h = preprocessing.FeatureHasher(64, defaults={"device": "unknown", "age": 30.0})
    full = h.transform_many([{"device": "unknown", "age": 30.0}])
    assert np.array_equal(h.transform_many([{}]), full)
    assert np.array_equal(h.transform_many([{"device": None, "age": None}]), full)
    assert not np.array_equal(h.transform_many([{"device": "ios"}]), full)
    assert preprocessing.FeatureHasher(8).transform_many([{"x": None}]).tolist() == [[0.0] * 8]
    with pytest.raises(ValueError, match="'bad'"):
        preprocessing.FeatureHasher(8, defaults={"bad": float("nan")})


def test_spec_round_trip_and_dense_sparse_agree():
    h = preprocessing.FeatureHasher(32, seed=5, alternate_sign=False, defaults={"z": 1})
    twin = preprocessing.FeatureHasher.from_spec(h.spec())
    assert h.spec()["type"] == "hashed" and twin.spec() == h.spec()
    rows: list[dict[str, Any]] = [ROW, {"other": "v"}, {}]
    dense = twin.transform_many(rows)
    assert dense.shape == (3, 32) and dense.dtype == np.float64
    for row, line in zip(rows, h.transform_many(rows), strict=True):
        i, v = h.transform_one(row)
        expected = np.zeros(32)
        expected[i] = v
        assert np.array_equal(line, expected)
    assert h.transform_many([]).shape == (0, 32)


def test_the_token_cache_is_bounded_in_characters_not_only_entries():
    """#23: 65,536 cached tokens of long names could keep megabytes; the cache is also
    bounded by its tokens' characters, and hashing is the same before and after it clears."""
    from flowlearn.core import preprocessing

    hasher = preprocessing.FeatureHasher(n_features=1024)
    name = "x" * 100_000
    first = [hasher.transform_one({f"{name}{i}": "v"}) for i in range(100)]
    assert hasher._cache_chars <= preprocessing._CACHE_CHARS
    assert len(hasher._cache) < 100  # it cleared on the way: 100 tokens of 100 KB each
    again = [hasher.transform_one({f"{name}{i}": "v"}) for i in range(100)]
    for (i1, v1), (i2, v2) in zip(first, again, strict=True):
        assert i1.tolist() == i2.tolist() and v1.tolist() == v2.tolist()
