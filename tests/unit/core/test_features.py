"""Dense feature validation (flowlearn.core.features.check_dense_row): the fast path for plain
lists of numbers gives exactly what the element-by-element check gives."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowlearn.core.features import FeatureError, check_dense_row

N = 4

json_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)


def reference(row: Any) -> list[float] | str:
    """The rule, written out: a list of N ints or floats (not bools), each finite."""
    if not isinstance(row, list) or len(row) != N:
        return "error"
    out = []
    for v in row:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return "error"
        try:
            f = float(v)
        except OverflowError:
            return "error"
        if not math.isfinite(f):
            return "error"
        out.append(f)
    return out


def checked(row: Any) -> list[float] | str:
    try:
        return check_dense_row(row, N)
    except FeatureError:
        return "error"


@given(
    st.one_of(
        st.lists(json_values, min_size=N - 1, max_size=N + 1),
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=N, max_size=N),
    )
)
def test_the_result_is_the_rule(row):
    assert checked(row) == reference(row)


@pytest.mark.parametrize(
    "row, message",
    [
        ([1.0, 2.0, True, 3.0], r"features\[2\]: expected a number, got bool"),
        ([1.0, 10**400, 2.0, 3.0], r"features\[1\]: not a finite number \(too large\)"),
        ([1.0, 2.0, 3.0, float("nan")], r"features\[3\]: not a finite number \(nan\)"),
        ([1.0, 2.0], "expected 4 values, got 2"),
    ],
)
def test_errors_name_the_offending_value(row, message):
    with pytest.raises(FeatureError, match=message):
        check_dense_row(row, N)
