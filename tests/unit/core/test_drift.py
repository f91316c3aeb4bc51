"""Detectors against River on streams with known change points, and their own properties."""

from __future__ import annotations

import numpy as np
import pytest
from river import drift as river_drift

from flowlearn.core import drift
from flowlearn.core.linear import from_bytes, to_bytes

CHANGES = (1000, 2000, 3500)


def stream(seed: int, kind: str) -> np.ndarray:
    """4500 values, the mean shifting at each of CHANGES."""
    rng = np.random.default_rng(seed)
    levels = np.repeat([0.2, 0.6, 0.3, 0.7], np.diff([0, *CHANGES, 4500]))
    if kind == "bernoulli":
        return (rng.random(4500) < levels).astype(np.float64)
    return levels + rng.normal(scale=0.2, size=4500)


def river_detections(det, xs) -> list[int]:
    hits = []
    for i, x in enumerate(xs.tolist()):
        det.update(x)
        if det.drift_detected:
            hits.append(i)
    return hits


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
@pytest.mark.parametrize(
    "ours,theirs",
    [
        (drift.ADWIN, river_drift.ADWIN),
        (lambda: drift.ADWIN(delta=0.05, clock=1), lambda: river_drift.ADWIN(0.05, clock=1)),
        (
            lambda: drift.PageHinkley(threshold=10.0),
            lambda: river_drift.PageHinkley(threshold=10.0),
        ),
        (
            lambda: drift.PageHinkley(threshold=5.0, mode="up"),
            lambda: river_drift.PageHinkley(threshold=5.0, mode="up"),
        ),
    ],
    ids=["adwin", "adwin-clock1", "page-hinkley", "page-hinkley-up"],
)
def test_same_change_points_as_river(ours, theirs, kind, seed):
    xs = stream(seed, kind)
    mine = np.flatnonzero(ours().update_many(xs)).tolist()
    assert mine == river_detections(theirs(), xs)


@pytest.mark.parametrize("seed", range(5))
def test_ddm_matches_river(seed):
    xs = stream(seed, "bernoulli")
    det, ref = drift.DDM(), river_drift.binary.DDM()
    for i, x in enumerate(xs.tolist()):
        det.update(x)
        ref.update(x)
        assert (det.drift_detected, det.warning_detected) == (
            ref.drift_detected,
            ref.warning_detected,
        ), i


@pytest.mark.parametrize("seed", range(3))
def test_adwin_change_point_estimates_are_close(seed):
    det = drift.ADWIN()
    estimates = [int(det.change_point or 0) for x in stream(seed, "gaussian") if det.update(x)]
    for change in CHANGES:
        assert min(abs(e - change) for e in estimates) <= 64


def test_page_hinkley_change_point_is_where_the_sum_turned():
    det = drift.PageHinkley(threshold=10.0)
    last = 0
    for i, x in enumerate(stream(0, "gaussian")):
        if det.update(x):
            assert det.change_point is not None and last <= det.change_point <= i
            last = i + 1
    assert det.n_detections == len(CHANGES)


def test_adwin_memory_is_logarithmic():
    det = drift.ADWIN()
    det.update_many(np.random.default_rng(0).random(50_000))
    assert det.width > 40_000
    n_buckets = sum(len(row) for row in det._totals)
    assert n_buckets <= (det.max_buckets + 1) * np.log2(det.width)
    assert det.estimation == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("make", [drift.PSI, drift.KS])
def test_distribution_tests(make):
    rng = np.random.default_rng(5)
    quiet = rng.normal(size=6000)
    assert not make().update_many(quiet).any(), "false alarm on a stationary stream"
    shifted = np.concatenate([rng.normal(size=2000), rng.normal(loc=1.0, size=2000)])
    det = make()
    hits = np.flatnonzero(det.update_many(shifted))
    assert len(hits) >= 1 and 2000 <= hits[0] < 2300
    first = make()
    first.update_many(shifted[: hits[0] + 1])
    assert first.change_point is not None and abs(first.change_point - 2000) <= 30
    assert first.statistic > 0


@pytest.mark.parametrize("make", [drift.PSI, drift.KS])
def test_a_young_distribution_test_holds_only_its_values_and_resumes_exactly(make):
    """Before its reference is complete a test holds the values so far, no window (a
    model with little traffic must not cost two windows a feature); restored at any point,
    it goes on as if never stopped."""
    rng = np.random.default_rng(8)
    xs = np.concatenate([rng.normal(size=1500), rng.normal(loc=1.5, size=1500)])
    young = make()
    young.update_many(xs[:40])
    assert young.state_dict()[0]["window"].size == 0
    for cut in (40, 499, 500, 1700):
        whole, parts = make(), make()
        expected = whole.update_many(xs)
        first = parts.update_many(xs[:cut])
        restored = from_bytes(to_bytes(parts))
        again = np.concatenate([first, restored.update_many(xs[cut:])])
        assert again.tolist() == expected.tolist() and expected.any()
        assert to_bytes(restored) == to_bytes(whole)


def test_ks_detects_a_change_of_shape_with_equal_mean():
    rng = np.random.default_rng(6)
    xs = np.concatenate([rng.normal(size=2000), rng.choice([-1.0, 1.0], size=1000)])
    assert drift.KS().update_many(xs)[2000:].any()


def test_detector_restarts_after_a_detection():
    det = drift.PageHinkley(threshold=5.0)
    flags = det.update_many(stream(1, "gaussian"))
    assert flags.sum() >= 2
    assert det.n_detections == flags.sum()


def test_bad_parameters():
    for make in (
        lambda: drift.ADWIN(delta=0),
        lambda: drift.PageHinkley(mode="sideways"),
        lambda: drift.DDM(warning_threshold=4.0),
        lambda: drift.PSI(n_bins=1),
        lambda: drift.KS(alpha=2.0),
        lambda: drift.KS(window_size=1),
    ):
        with pytest.raises(ValueError):
            make()


def test_adwin_without_a_grace_period_tests_from_its_second_value():
    """A one-value window has no cut: tested every value with no grace period, ADWIN took
    log(log(1)) and raised ValueError on its first value."""
    det = drift.ADWIN(grace_period=0, clock=1)
    flags = det.update_many(np.r_[np.zeros(200), np.ones(200)])
    assert not flags[:200].any() and flags[200:].any()
