"""One contract, checked over every estimator, metric and detector (like River's checks):
determinism, clone, codec round trip, empty batches, NaN/Inf and shape errors."""

from __future__ import annotations

import numpy as np
import pytest

from flowlearn.core import codec, linear, model_types

from .conftest import (
    BANDITS,
    DETECTORS,
    ESTIMATORS,
    METRICS,
    OTHERS,
    REGRESSORS,
    detector_stream,
    make_batch,
    metric_batch,
)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def predict_inputs(name: str, X: np.ndarray) -> tuple[np.ndarray, ...]:
    """What ``predict_many`` takes: the contexts and, for a bandit with action features,
    five candidate actions per context."""
    if name in BANDITS and name.endswith("-adf"):
        return X, np.random.default_rng(2).normal(size=(len(X), 5, 2))
    return (X,)


def train(name: str, model, seed: int = 0, n_batches: int = 5):
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        model.learn_many(*make_batch(name, rng))
    return model


# ----------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("name", ESTIMATORS)
class TestEstimatorContract:
    def test_deterministic(self, name):
        a = train(name, ESTIMATORS[name]())
        b = train(name, ESTIMATORS[name]())
        assert same_bits(a.weights_vector(), b.weights_vector())
        assert not np.all(a.weights_vector() == 0)

    def test_learn_many_returns_self(self, name):
        model = ESTIMATORS[name]()
        assert model.learn_many(*make_batch(name, np.random.default_rng(0))) is model

    def test_clone_is_fresh_with_same_params(self, name):
        model = train(name, ESTIMATORS[name]())
        twin = model.clone()
        assert type(twin) is type(model)
        assert twin.state_dict()[1]["params"] == model.state_dict()[1]["params"]
        assert same_bits(twin.weights_vector(), ESTIMATORS[name]().weights_vector())  # untrained
        if hasattr(model, "optimizer"):  # tree models have none
            assert twin.optimizer is not model.optimizer
        # A clone trained like the original ends identical to it.
        assert same_bits(train(name, twin).weights_vector(), model.weights_vector())

    def test_codec_round_trip_continues_identically(self, name):
        rng = np.random.default_rng(1)
        model = ESTIMATORS[name]()
        for _ in range(3):
            model.learn_many(*make_batch(name, rng))
        restored = linear.from_bytes(linear.to_bytes(model))
        assert type(restored) is type(model)
        assert same_bits(restored.weights_vector(), model.weights_vector())
        # Optimizer state (moments, step count) came along: the next steps agree bit for bit.
        for _ in range(3):
            batch = make_batch(name, rng)
            model.learn_many(*batch)
            restored.learn_many(*batch)
        assert same_bits(restored.weights_vector(), model.weights_vector())

    def test_load_state_dict_through_codec(self, name):
        model = train(name, ESTIMATORS[name]())
        arrays, meta = codec.decode_state(codec.encode_state(*model.state_dict()))
        other = ESTIMATORS[name]()
        other.load_state_dict(arrays, meta)
        assert same_bits(other.weights_vector(), model.weights_vector())
        assert other.last_grad_norm == model.last_grad_norm

    def test_empty_batch_is_a_no_op(self, name):
        model = train(name, ESTIMATORS[name](), n_batches=1)
        before = model.state_dict()
        X, y, *rest = make_batch(name, np.random.default_rng(0), n=0)
        model.learn_many(X, y, *rest)
        after = model.state_dict()
        assert before[1] == after[1]
        assert all(same_bits(before[0][k], after[0][k]) for k in before[0])
        assert model.predict_many(*predict_inputs(name, np.empty((0, 4)))).shape == (0,)

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_inputs_raise(self, name, bad):
        model = ESTIMATORS[name]()
        X, y, *rest = make_batch(name, np.random.default_rng(0), n=4)
        X[2, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinity"):
            model.learn_many(X, y, *rest)
        with pytest.raises(ValueError, match="NaN or infinity"):
            model.predict_many(X)
        assert same_bits(model.weights_vector(), ESTIMATORS[name]().weights_vector())

    def test_non_finite_labels_raise(self, name):
        X, y, *rest = make_batch(name, np.random.default_rng(0), n=4)
        y = y.astype(np.float64)
        y[0] = np.nan
        with pytest.raises(ValueError):
            ESTIMATORS[name]().learn_many(X, y, *rest)

    def test_wrong_shapes_name_the_expected_shape(self, name):
        model = ESTIMATORS[name]()
        X, y, *rest = make_batch(name, np.random.default_rng(0), n=4)
        with pytest.raises(ValueError, match=r"\(n, 4\)"):
            model.learn_many(X[:, :3], y, *rest)
        with pytest.raises(ValueError, match=r"\(n, 4\)"):
            model.predict_many(X[0])
        with pytest.raises(ValueError, match=r"\(4,( 2)?\)"):  # labels; or action features
            model.learn_many(X, y[:3], *rest)

    def test_spec_and_weights_rebuild_a_servable_twin(self, name):
        model = train(name, ESTIMATORS[name]())
        served = model_types.from_spec(model.spec(), model.weights_vector())
        X, *_ = make_batch(name, np.random.default_rng(9))
        if name in BANDITS:
            args = predict_inputs(name, X)
            assert np.array_equal(served.predict_many(*args), model.predict_many(*args))
            seeds = np.arange(len(X))
            mine, theirs = (
                model.choose_many(*args, seeds=seeds),
                served.choose_many(*args, seeds=seeds),
            )
            assert all(same_bits(a, b) for a, b in zip(mine, theirs, strict=True))
            return
        assert np.array_equal(served.predict_many(X), model.predict_many(X))
        if name not in REGRESSORS:
            assert np.array_equal(served.predict_proba_many(X), model.predict_proba_many(X))

    def test_weights_vector_is_a_copy(self, name):
        model = train(name, ESTIMATORS[name](), n_batches=1)
        v = model.weights_vector()
        v[:] = 123.0
        assert not np.any(model.weights_vector() == 123.0)


@pytest.mark.parametrize("name", [name for name in ESTIMATORS if name not in BANDITS])
def test_test_many_is_loss_many_and_predict_many(name):
    # The trainer's test step scores a batch once: the same bits as the two calls.
    model = train(name, ESTIMATORS[name]())
    X, y = make_batch(name, np.random.default_rng(9))
    losses, predicted = model.test_many(X, y)
    assert same_bits(losses, model.loss_many(X, y))
    assert same_bits(predicted, model.predict_many(X))


# ----------------------------------------------------------------------------- detectors


@pytest.mark.parametrize("name", DETECTORS)
class TestDetectorContract:
    def test_detects_the_jump_and_is_deterministic(self, name):
        stream = detector_stream(np.random.default_rng(0))
        a = DETECTORS[name]().update_many(stream)
        b = DETECTORS[name]().update_many(stream)
        assert a.dtype == bool and a.shape == stream.shape
        assert np.array_equal(a, b)
        assert a.any(), "the rate jump must be detected"

    def test_update_and_update_many_agree(self, name):
        stream = detector_stream(np.random.default_rng(1))
        det = DETECTORS[name]()
        flags = [det.update(x) for x in stream]
        assert np.array_equal(flags, DETECTORS[name]().update_many(stream))
        assert det.n_seen == len(stream) and det.n_detections == sum(flags)

    def test_update_many_in_any_chunks_equals_one_by_one_state_included(self, name):
        stream = detector_stream(np.random.default_rng(3))
        one_by_one, chunked = DETECTORS[name](), DETECTORS[name]()
        flags = [one_by_one.update(x) for x in stream]
        cuts = np.sort(np.random.default_rng(4).choice(len(stream), 40, replace=False))
        chunk_flags = np.concatenate([chunked.update_many(part) for part in np.split(stream, cuts)])
        assert np.array_equal(flags, chunk_flags)
        assert linear.to_bytes(chunked) == linear.to_bytes(one_by_one)

    def test_reports_statistic_and_change_point(self, name):
        det = DETECTORS[name]()
        assert det.change_point is None
        flags = det.update_many(detector_stream(np.random.default_rng(2)))
        first = int(np.argmax(flags))
        det2 = DETECTORS[name]()
        det2.update_many(detector_stream(np.random.default_rng(2))[: first + 1])
        assert det2.drift_detected
        assert isinstance(det2.statistic, float) and np.isfinite(det2.statistic)
        assert det2.change_point is not None and 0 <= det2.change_point <= first

    def test_codec_round_trip_continues_identically(self, name):
        stream = detector_stream(np.random.default_rng(3))
        for cut in (0, 100, 301, 450):
            det = DETECTORS[name]()
            det.update_many(stream[:cut])
            restored = linear.from_bytes(linear.to_bytes(det))
            assert type(restored) is type(det)
            assert np.array_equal(restored.update_many(stream[cut:]), det.update_many(stream[cut:]))
            assert restored.change_point == det.change_point
            assert restored.statistic == det.statistic

    def test_clone_is_fresh(self, name):
        det = DETECTORS[name]()
        stream = detector_stream(np.random.default_rng(4))
        det.update_many(stream)
        twin = det.clone()
        assert twin.n_seen == 0 and twin.change_point is None
        assert np.array_equal(twin.update_many(stream), DETECTORS[name]().update_many(stream))

    def test_empty_batch_is_a_no_op(self, name):
        det = DETECTORS[name]()
        det.update_many([0.0, 1.0])
        before = det.state_dict()[1]
        assert det.update_many([]).shape == (0,)
        assert det.state_dict()[1] == before

    @pytest.mark.parametrize("bad", [np.nan, np.inf, "x", None])
    def test_bad_values_raise(self, name, bad):
        det = DETECTORS[name]()
        with pytest.raises(ValueError):
            det.update(bad)
        with pytest.raises(ValueError):
            det.update_many([0.0, bad])
        assert det.n_seen == 0

    def test_wrong_shape_raises(self, name):
        with pytest.raises(ValueError, match=r"\(n,\)"):
            DETECTORS[name]().update_many(np.zeros((2, 2)))


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("name", METRICS)
class TestMetricContract:
    def test_round_trip_clone_and_empty(self, name):
        rng = np.random.default_rng(0)
        metric = METRICS[name]()
        assert np.isnan(metric.get())
        for _ in range(3):
            metric.update_many(*metric_batch(metric, rng))
        value = metric.get()
        assert np.isfinite(value)
        restored = linear.from_bytes(linear.to_bytes(metric))
        assert restored.get() == value
        batch = metric_batch(metric, rng)
        assert restored.update_many(*batch).get() == metric.update_many(*batch).get()
        assert metric.update_many([], []).get() == metric.get()
        assert np.isnan(metric.clone().get())

    def test_bad_inputs_raise(self, name):
        metric = METRICS[name]()
        with pytest.raises(ValueError, match="NaN or infinity"):
            metric.update_many([1.0, 0.0], [np.nan, 0.0])
        with pytest.raises(ValueError, match=r"\(n,\)"):
            metric.update_many([1.0, 0.0], [1.0])


# ----------------------------------------------------------------------------- the rest


@pytest.mark.parametrize("name", OTHERS)
def test_preprocessors_round_trip_and_clone(name):
    obj = OTHERS[name]()
    X = np.random.default_rng(0).normal(size=(10, 16))
    if name == "feature transform":
        obj.learn_many(X)
        restored = linear.from_bytes(linear.to_bytes(obj))
        assert np.array_equal(restored.transform_many(X), obj.transform_many(X))
        assert obj.clone().count.tolist() == [0.0] * 16
    else:
        restored = linear.from_bytes(linear.to_bytes(obj))
        rows = [{"a": 1.5, "b": "u"}, {}]
        assert np.array_equal(restored.transform_many(rows), obj.transform_many(rows))
        assert repr(obj.clone()) == repr(obj)


def test_from_bytes_refuses_unknown_classes():
    payload = codec.encode_state({}, {"class": "os.system", "params": {}})
    with pytest.raises(codec.CodecError, match="unknown class"):
        linear.from_bytes(payload)
    with pytest.raises(TypeError):
        linear.to_bytes(object())  # type: ignore[arg-type]


def test_load_state_dict_refuses_another_class():
    arrays, meta = ESTIMATORS["softmax"]().state_dict()
    with pytest.raises(ValueError, match="cannot load"):
        ESTIMATORS["linear"]().load_state_dict(arrays, meta)
