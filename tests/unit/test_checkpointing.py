import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlearn.core.checkpointing import CheckpointLedger, Register, Retired, Rollback


def ledger(**kw):
    args = dict(
        every=5,
        keep=4,
        window_samples=100,
        margin=0.2,
        min_samples=100,
        cooldown_versions=10,
        register_interval_ms=0,
    )
    return CheckpointLedger(**{**args, **kw})


def feed(lg, versions, loss, n=20, error=0.1, start_ms=0):
    """Train versions (each scored by the one before) with a constant per-sample loss."""
    out = []
    for v in versions:
        out += lg.observe(
            v,
            "train",
            n=n,
            loss_sum=loss * n,
            error_sum=error * n,
            samples_applied=v * n,
            now_ms=start_ms + v,
        )
    return out


def test_a_checkpoint_measures_the_samples_its_lineage_scored():
    lg = ledger()
    feed(lg, range(1, 6), 0.5)  # v5 is the first checkpoint
    feed(lg, range(6, 11), 0.3)  # scored by v5..v9: checkpoint 5's interval
    feed(lg, range(11, 13), 0.7)  # scored by v10, v11: checkpoint 10's
    c5, c10 = lg.get(5), lg.get(10)
    assert (c5.n, c5.samples_applied) == (100, 100)
    assert c5.loss == pytest.approx(0.3) and c5.error == pytest.approx(0.1)
    assert c10.n == 40 and c10.loss == pytest.approx(0.7)
    assert c5.metrics()["windowed_accuracy"] == pytest.approx(0.9)


def test_closed_checkpoints_are_registered_at_most_once_per_interval():
    lg = ledger(register_interval_ms=10)
    decisions = feed(lg, range(1, 31), 0.5)
    # Closed at v10 (5), v15 (10, too soon: 5 ms later), v20 (15), v25 (20: too soon), v30.
    assert [d.version for d in decisions if isinstance(d, Register)] == [5, 15, 25]
    assert lg.pending_registrations() == [15, 25]  # chosen, unconfirmed, still kept
    lg.mark_registered(15)
    lg.abandon_registration(25)  # the registry refused it for good: not submitted again
    assert lg.pending_registrations() == []
    assert [c.registered for c in lg.checkpoints() if c.version in (15, 25)] == [True, False]


def test_steady_learning_never_rolls_back():
    lg = ledger()
    losses = 0.7 * np.exp(-np.arange(200) / 50) + 0.2
    decisions = []
    for v, loss in enumerate(losses, start=1):
        decisions += feed(lg, [v], float(loss))
    assert not [d for d in decisions if isinstance(d, Rollback)]


def test_degradation_rolls_back_to_the_best_recent_checkpoint_once_per_cooldown():
    lg = ledger()
    feed(lg, range(1, 21), 0.3)
    decisions = feed(lg, range(21, 26), 1.5)
    rollbacks = [d for d in decisions if isinstance(d, Rollback)]
    assert len(rollbacks) == 1
    assert rollbacks[0].to_version == 15  # the latest closed checkpoint with the best loss
    assert rollbacks[0].best_loss == pytest.approx(0.3) and rollbacks[0].live_loss > 0.36
    assert 15 in lg.pending_registrations()  # a rollback target gets registered


def test_a_rollback_that_helps_keeps_the_checkpoints():
    lg = ledger()
    feed(lg, range(1, 21), 0.3)
    feed(lg, range(21, 24), 1.5)
    assert lg.observe(24, "rollback") == []
    decisions = feed(lg, range(25, 40), 0.3)
    assert not [d for d in decisions if isinstance(d, Retired)]
    assert not any(c.retired for c in lg.checkpoints())


def test_a_rollback_that_does_not_help_retires_the_old_concept():
    lg = ledger()
    feed(lg, range(1, 21), 0.3)
    rollback = next(d for d in feed(lg, range(21, 24), 1.5) if isinstance(d, Rollback))
    lg.observe(24, "rollback")
    decisions = feed(lg, range(25, 60), 1.4)  # the new data stays as hard: a concept change
    retired = [d for d in decisions if isinstance(d, Retired)]
    assert len(retired) == 1 and rollback.to_version in retired[0].versions
    assert not [d for d in decisions if isinstance(d, Rollback)]  # no second rollback to it


def test_a_reset_retires_earlier_checkpoints():
    lg = ledger()
    feed(lg, range(1, 21), 0.3)
    decisions = lg.observe(21, "reset")
    assert [d.versions for d in decisions if isinstance(d, Retired)] == [(5, 10, 15, 20)]
    assert not [d for d in feed(lg, range(22, 40), 0.9) if isinstance(d, Rollback)]


def test_a_rollback_that_never_comes_does_not_block_the_next_one():
    lg = ledger()
    feed(lg, range(1, 21), 0.3)
    first = [d for d in feed(lg, range(21, 24), 1.5) if isinstance(d, Rollback)]
    later = [d for d in feed(lg, range(24, 40), 1.5) if isinstance(d, Rollback)]
    assert len(first) == 1 and len(later) == 1  # after the cooldown, asked again


def test_no_rollback_when_disabled():
    lg = ledger(auto_rollback=False)
    feed(lg, range(1, 21), 0.3)
    assert not [d for d in feed(lg, range(21, 40), 2.0) if isinstance(d, Rollback)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["train", "train", "train", "rollback", "reset"]),
            st.integers(1, 40),
            st.floats(0.0, 3.0),
        ),
        max_size=80,
    ),
    st.integers(0, 80),
)
def test_state_round_trip_at_any_point_changes_nothing(steps, cut):
    def run(round_trip_at):
        lg, out = ledger(), []
        for i, (kind, n, loss) in enumerate(steps, start=1):
            if i == round_trip_at:
                lg = ledger().load_bytes(lg.to_bytes())
            out += lg.observe(
                i,
                kind,
                n=n if kind == "train" else 0,
                loss_sum=loss * n,
                error_sum=0.0,
                samples_applied=i,
                now_ms=i,
            )
        return out, lg.to_bytes()

    assert run(-1) == run(cut)


def test_windowed_loss_covers_the_last_window_of_samples():
    lg = ledger(window_samples=50)
    feed(lg, range(1, 11), 1.0)
    feed(lg, range(11, 14), 0.0)  # 60 samples at loss 0
    loss, n = lg.live_loss()
    assert loss == 0.0 and 50 <= n < 70
    assert math.isnan(ledger().live_loss()[0])
