"""The versions a trainer keeps for rollbacks: the rule, against a plain model of it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowlearn.core.retention import Retention


@given(
    keep=st.integers(1, 30),
    every=st.integers(1, 20),
    checkpoints=st.integers(1, 10),
    made=st.integers(0, 400),
)
def test_the_last_versions_and_the_last_checkpoints_are_kept(keep, every, checkpoints, made):
    kept = Retention(keep, every, checkpoints).kept(range(1, made + 1))
    assert kept.recent == list(range(max(1, made - keep + 1), made + 1))
    all_checkpoints = [v for v in range(1, made + 1) if v % every == 0]
    assert kept.checkpoints == all_checkpoints[-checkpoints:]
