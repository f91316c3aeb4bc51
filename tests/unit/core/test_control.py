"""fl.control commands on a trainer, without Flink: what each does and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from flowlearn.core import codec
from flowlearn.core.control import (
    CONTROL_COMMANDS,
    LIFECYCLE_COMMANDS,
    NO_KEPT_WEIGHTS,
    apply_command,
    no_baseline,
)
from flowlearn.core.training import ModelTrainer


class Kept:
    def __init__(self, kept: dict[int, np.ndarray]) -> None:
        self.kept = {v: codec.encode_array(w) for v, w in kept.items()}

    def weights(self, version: int) -> bytes | None:
        return self.kept.get(version)

    def versions(self) -> list[int]:
        return sorted(self.kept)


def trained(batches: int = 3) -> tuple[ModelTrainer, dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    trainer = ModelTrainer.create("m", {"type": "logistic", "n_features": 3, "learning_rate": 0.5})
    history = {}
    for _ in range(batches):
        X = rng.normal(size=(16, 3))
        trainer.train_batch(X, (X[:, 0] > 0).astype(float))
        history[trainer.version] = trainer.model.weights_vector().copy()
    return trainer, history


def test_rollback_restores_a_kept_version_bit_for_bit_as_a_new_version() -> None:
    trainer, history = trained()
    out = apply_command(trainer, "rollback", {"version": 1}, "cli", Kept(history), no_baseline)
    assert out.ok and out.alert_kind == "rollback" and out.eval_kind == "rollback"
    assert out.new_version is not None and out.new_version.version == 4
    assert out.detail == {
        "command": "rollback",
        "args": {"version": 1},
        "source": "cli",
        "ok": True,
        "from_version": 3,
        "new_version": 4,
    }
    assert trainer.model.weights_vector().tobytes() == history[1].tobytes()


def test_rollback_to_a_version_not_kept_changes_nothing() -> None:
    trainer, history = trained()
    before = trainer.state_bytes()
    out = apply_command(trainer, "rollback", {"version": 9}, "cli", Kept(history), no_baseline)
    assert not out.ok and out.new_version is None
    assert out.detail["reason"] == "version 9 is not among the kept versions [1, 2, 3]"
    assert trainer.state_bytes() == before and trainer.version == 3


def test_warm_start_takes_a_baseline_of_the_right_shape_only() -> None:
    trainer, _ = trained()
    size = trainer.model.weights_vector().size  # weights, then the pipeline's statistics
    baseline = np.linspace(0.1, 0.4, size)
    out = apply_command(
        trainer, "warm_start", {"version": 2}, "cli", NO_KEPT_WEIGHTS, lambda version: baseline
    )
    assert out.ok and out.eval_kind == "warm_start"
    assert trainer.model.weights_vector().tolist() == baseline.tolist()
    refused = apply_command(
        trainer, "warm_start", {"version": 2}, "cli", NO_KEPT_WEIGHTS, lambda version: np.zeros(7)
    )
    assert refused.detail["reason"] == f"baseline has 7 weights, the model {size}"
    missing = apply_command(
        trainer, "warm_start", {"version": 2}, "cli", NO_KEPT_WEIGHTS, no_baseline
    )
    assert not missing.ok and "no registry" in missing.detail["reason"]


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf")])
def test_a_learning_rate_must_be_positive_and_finite(rate: float) -> None:
    trainer, _ = trained()
    out = apply_command(
        trainer, "set_learning_rate", {"learning_rate": rate}, "cli", NO_KEPT_WEIGHTS, no_baseline
    )
    assert not out.ok and "positive" in out.detail["reason"]


def test_pause_resume_republish_reset() -> None:
    trainer, _ = trained()
    pause = apply_command(trainer, "pause", {}, "cli", NO_KEPT_WEIGHTS, no_baseline)
    assert (pause.paused, pause.flush) == (True, False)
    resume = apply_command(trainer, "resume", {}, "cli", NO_KEPT_WEIGHTS, no_baseline)
    assert (resume.paused, resume.flush) == (False, True)
    again = apply_command(trainer, "republish", {}, "cli", NO_KEPT_WEIGHTS, no_baseline)
    assert again.republish is not None and again.republish.version == trainer.version == 3
    assert again.new_version is None
    reset = apply_command(trainer, "reset", {}, "drift:adwin", NO_KEPT_WEIGHTS, no_baseline)
    assert reset.new_version is not None and reset.new_version.version == 4
    assert not trainer.model.weights_vector().any()


def test_pin_takes_a_kept_or_the_current_versions_weights_and_unpin_clears_it() -> None:
    trainer, history = trained()
    before = trainer.state_bytes()
    pin = apply_command(trainer, "pin", {"version": 2}, "cli", Kept(history), no_baseline)
    assert pin.ok and (pin.pin, pin.detail["pinned"]) == (2, 2)
    assert codec.decode_array(pin.pin_weights).tobytes() == history[2].tobytes()
    assert pin.new_version is None and trainer.state_bytes() == before
    current = apply_command(trainer, "pin", {"version": 3}, "cli", NO_KEPT_WEIGHTS, no_baseline)
    assert current.ok and codec.decode_array(current.pin_weights).tobytes() == (
        trainer.model.weights_vector().tobytes()
    )
    gone = apply_command(trainer, "pin", {"version": 2}, "cli", NO_KEPT_WEIGHTS, no_baseline)
    assert gone.pin is None and gone.detail["reason"] == (
        "version 2 is neither the current one (3) nor among the kept versions []"
    )
    unpin = apply_command(trainer, "unpin", {}, "cli", NO_KEPT_WEIGHTS, no_baseline)
    assert unpin.ok and unpin.pin == 0


@pytest.mark.parametrize("command", ["pin", "rollback", "warm_start"])
@pytest.mark.parametrize("version", [0, -1, 2.5, 1e19, 2.0**63])
def test_a_version_argument_is_a_whole_number_in_range(command: str, version: float) -> None:
    # 1e19 passes the parser (a finite number) but is no 64-bit state key: refused here.
    trainer, history = trained()
    before = trainer.state_bytes()
    out = apply_command(trainer, command, {"version": version}, "cli", Kept(history), no_baseline)
    assert not out.ok and "a whole number from 1" in out.detail["reason"]
    assert out.pin is None and out.new_version is None and trainer.state_bytes() == before


def test_every_command_the_parser_accepts_is_carried_out() -> None:
    # create and delete change the operator's state, not only the model: its tests have them.
    for command, needs in CONTROL_COMMANDS.items():
        if command in LIFECYCLE_COMMANDS:
            continue
        trainer, history = trained()
        args = {name: 1 for name in needs}
        out = apply_command(
            trainer, command, args, "test", Kept(history), lambda v, first=history[1]: first
        )
        assert out.ok, (command, out.detail)
