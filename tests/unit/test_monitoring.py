import numpy as np

from flowlearn.core.monitoring import DriftMonitor, chunk_starts


def stream(seed, n_batches=60, change_at=30):
    rng = np.random.default_rng(seed)
    for b in range(n_batches):
        rate, loss = (0.1, 0.3) if b < change_at else (0.5, 0.9)
        yield (
            (rng.random(64) < rate) * 1.0,
            rng.normal(loss, 0.1, 64).clip(0),
            rng.normal(size=(64, 3)),
        )


def alarms(monitor, batches):
    return [(i, a) for i, batch in enumerate(batches) for a in monitor.update(*batch)]


def test_a_change_is_found_after_it_happens_and_not_before():
    found = alarms(DriftMonitor.create({"type": "logistic"}, 3), stream(1))
    performance = [(i, a) for i, a in found if a.signal in ("error", "loss")]
    assert performance and min(i for i, _ in performance) >= 30
    assert {a.detector for _, a in performance} >= {"adwin", "page_hinkley"}


def test_state_round_trip_mid_stream_changes_nothing():
    batches = list(stream(2))
    straight = alarms(DriftMonitor.create({"type": "logistic"}, 3), batches)
    first = DriftMonitor.create({"type": "logistic"}, 3)
    head = alarms(first, batches[:25])
    resumed = DriftMonitor.from_bytes(first.to_bytes())
    tail = [(i + 25, a) for i, a in alarms(resumed, batches[25:])]
    assert head + tail == straight


def test_regression_models_have_no_error_detectors():
    names = DriftMonitor.create({"type": "linear"}, 2).detectors
    assert not any("error" in n for n in names) and "page_hinkley|loss" in names


def test_adwin_alarms_say_whether_the_error_rose_or_fell():
    rng = np.random.default_rng(5)
    monitor = DriftMonitor.create({"type": "logistic", "detectors": ["adwin"]}, n_features=1)

    def run(rates):
        found = []
        for rate in rates:
            found += monitor.update(
                (rng.random(64) < rate) * 1.0, rng.random(64), rng.normal(size=(64, 1))
            )
        return found

    learning = run(np.linspace(0.5, 0.1, 60))  # a model getting better
    assert learning and all(a.direction == "down" and not a.degraded for a in learning)
    run([0.1] * 40)
    rise = run([0.45] * 20)  # then a concept change
    assert rise and rise[0].direction == "up" and rise[0].degraded
    restored = DriftMonitor.from_bytes(monitor.to_bytes())
    assert restored.error_history.tobytes() == monitor.error_history.tobytes()


def test_after_a_restart_a_young_model_raises_no_alarm_where_the_old_detectors_would():
    spec = {"type": "logistic"}
    rng = np.random.default_rng(7)

    def batch(rate):
        return (
            (rng.random(64) < rate) * 1.0,
            rng.normal(rate, 0.05, 64).clip(0),
            rng.normal(size=(64, 2)),
        )

    good = [batch(0.08) for _ in range(60)]
    young = [batch(rate) for rate in np.linspace(0.45, 0.1, 30)]  # a reset model learning
    kept = DriftMonitor.create(spec, 2)
    alarms(kept, good)
    features = {n: d for n, d in kept.detectors.items() if "feature" in n}
    restarted = DriftMonitor.from_bytes(kept.to_bytes()).restarted(spec)
    assert any(a.degraded for _, a in alarms(kept, young))
    assert not any(a.degraded for _, a in alarms(restarted, young))
    # The feature detectors kept their windows; the performance ones are new.
    fresh = DriftMonitor.create(spec, 0)
    for name, det in restarted.detectors.items():
        if name in features:
            assert det.n_seen == features[name].n_seen > 0
        else:
            assert name in fresh.detectors


def test_the_loss_signal_is_the_same_however_small_the_batches():
    """A young model's batches of 1, 2, 4... samples: Page-Hinkley and the error history
    see means over chunks of at least SIGNAL_CHUNK samples, as with batches of 64."""
    spec = {"type": "logistic", "detectors": ["page_hinkley", "adwin"]}
    whole, small = DriftMonitor.create(spec, 0), DriftMonitor.create(spec, 0)
    sizes = []
    for errors, losses, _ in stream(3, n_batches=40):
        whole.update(errors, losses, np.zeros((64, 0)))
        for start, size in ((0, 1), (1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32)):
            part = slice(start, start + size)
            small.update(errors[part], losses[part], np.zeros((size, 0)))
            sizes.append(size)
    ph_whole, ph_small = whole.detectors["page_hinkley|loss"], small.detectors["page_hinkley|loss"]
    # The same means (up to the order of their sums), in order: the same Page-Hinkley.
    np.testing.assert_allclose(
        ph_small.state_dict()[0]["fields"], ph_whole.state_dict()[0]["fields"], rtol=1e-12
    )
    assert ph_small.n_seen == ph_whole.n_seen == 40 == len(chunk_starts(sizes))
    assert chunk_starts(sizes) == list(range(0, 7 * 40, 7))  # a chunk starts at each 1
    assert ph_small.n_detections == ph_whole.n_detections
    np.testing.assert_allclose(small.error_history, whole.error_history, rtol=1e-12)
    restored = DriftMonitor.from_bytes(small.to_bytes())
    assert restored.pending.tolist() == small.pending.tolist() == [0.0, 0.0, 0.0]
