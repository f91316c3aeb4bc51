"""The drift operator's cooldown over a restart, outside Flink (stand-in keyed state): a
model reset by a drift alarm is not reset again within ``job.drift_cooldown_versions``,
even when the job restarted in between."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowlearn.conf import load_settings
from flowlearn.core.monitoring import DriftAlarm
from flowlearn.operators import drift as drift_operator
from flowlearn.operators.drift import CONTROL_OUT_TAG, DriftOperator
from flowlearn.operators.types import Evaluated
from flowlearn.state.rows import to_row
from tests.unit.flink_stand_ins import KeyedState

COOLDOWN = 10


class AlwaysDegraded:
    """A monitor that sees the error rise on every batch."""

    @classmethod
    def create(cls, *args: Any) -> AlwaysDegraded:
        return cls()

    @classmethod
    def from_bytes(cls, payload: bytes) -> AlwaysDegraded:
        return cls()

    def update(self, *args: Any) -> list[DriftAlarm]:
        return [DriftAlarm("adwin", "error", 1.0, None, "up")]

    def to_bytes(self) -> bytes:
        return b"monitor"


@pytest.fixture
def degraded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_operator, "DriftMonitor", AlwaysDegraded)


def started(state: KeyedState) -> DriftOperator:
    operator = DriftOperator(
        load_settings(
            env={
                "FLOWLEARN__MODEL_DEFAULTS__DRIFT_ACTION": "reset",
                "FLOWLEARN__JOB__DRIFT_COOLDOWN_VERSIONS": str(COOLDOWN),
            }
        )
    )
    operator.open(state)
    return operator


def resets(operator: DriftOperator, version: int) -> list[dict[str, Any]]:
    row = to_row(Evaluated("m", version, "train", version * 10, [1.0], [2.0], [0.5], 1, b"", ""))
    return [
        json.loads(out[1])
        for out in operator.process_element(row, None)
        if isinstance(out, tuple) and out[0] is CONTROL_OUT_TAG
    ]


def test_a_restart_does_not_shorten_the_cooldown(degraded: None) -> None:
    state = KeyedState()
    operator = started(state)
    (reset,) = resets(operator, 1)
    assert reset["command"] == "reset" and reset["source"] == "drift:adwin"
    assert resets(operator, 2) == []

    restarted = started(state)  # the worker's memory is gone, the state is not
    assert all(resets(restarted, v) == [] for v in range(3, 1 + COOLDOWN))
    assert [r["command"] for r in resets(restarted, 1 + COOLDOWN)] == ["reset"]
    assert state.states["drift-last-adapted-v1"].value() == 1 + COOLDOWN
