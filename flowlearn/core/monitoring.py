"""Drift monitoring of one model's prequential stream (Flink-free; the drift operator holds it
in managed state as codec bytes).

Error-rate detectors watch what the trainer's test step saw: ADWIN and DDM the 0/1 errors
(classifiers), Page-Hinkley the mean loss of every :data:`SIGNAL_CHUNK` samples or more (a
batch, or consecutive small batches of a young model: per-sample log losses are
heavy-tailed enough to trip it while a fresh model is still learning; its change point is
then counted in chunks). Feature-distribution tests (PSI and KS against a reference window)
watch the first ``n_features_monitored`` features.

>>> import numpy as np
>>> m = DriftMonitor.create({"type": "logistic"}, n_features=2)
>>> rng = np.random.default_rng(0)
>>> def batches(error_rate, loss):
...     return [m.update((rng.random(50) < error_rate) * 1.0, rng.normal(loss, 0.1, 50),
...                      rng.normal(size=(50, 2))) for _ in range(20)]
>>> before, after = batches(0.1, 0.3), batches(0.6, 1.0)
>>> [a for b in before for a in b]
[]
>>> {"adwin", "page_hinkley"} <= {a.detector for b in after for a in b}
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.core import codec, drift
from flowlearn.core.linear import from_bytes, to_bytes
from flowlearn.core.model_types import model_type

#: Features watched by PSI and KS by default (the first ones): each costs two windows of
#: state and a per-value update, and a hashed model has too many to test all.
N_FEATURES_MONITORED = 3


#: Detector names a model spec may list (``flowlearn.conf.ModelSpec.detectors``).
ALL_DETECTORS = ("adwin", "ddm", "page_hinkley", "psi", "ks")

#: ADWIN is two-sided: it also fires when a model gets better (while it learns). The mean
#: error of the last RECENT_BATCHES chunks against that of the HISTORY_BATCHES before them
#: tells a rise ("up", a degradation worth adapting to) from a fall ("down").
RECENT_BATCHES = 3
HISTORY_BATCHES = 20
#: Page-Hinkley's loss and the error history take means over at least this many samples,
#: whatever the batches: a young model's batches of one or two samples would make them
#: noise (Page-Hinkley's threshold is for means of 64 log losses).
SIGNAL_CHUNK = 64

#: PSI and KS compare the current window with the reference every this many values.
FEATURE_TEST_EVERY = 100


def chunk_starts(batch_sizes: Sequence[int]) -> list[int]:
    """For batches of these sizes fed to a monitor in order, the index of the first batch of
    each chunk it closes: where a loss alarm's change point (counted in chunks) falls.

    >>> chunk_starts([1, 1, 62, 64, 30, 40, 1])
    [0, 3, 4]
    """
    starts: list[int] = []
    pending = first = 0
    for i, n in enumerate(batch_sizes):
        if pending == 0:
            first = i
        pending += n
        if pending >= SIGNAL_CHUNK:  # the rule of DriftMonitor._chunk
            starts.append(first)
            pending = 0
    return starts


@dataclass(frozen=True)
class DriftAlarm:
    """One detection: which detector, on what, its statistic and change-point estimate."""

    detector: str
    signal: str  # "error", "loss" or "feature[i]"
    statistic: float
    change_point: int | None
    #: "up" (the error or loss rose: the model degraded), "down" (it fell), or "" for a
    #: change in a feature's distribution.
    direction: str = ""

    @property
    def degraded(self) -> bool:
        """A rise of the error or the loss: what adaptation reacts to."""
        return self.direction == "up"

    def as_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "signal": self.signal,
            "statistic": self.statistic,
            "change_point": self.change_point,
            "direction": self.direction,
        }


class DriftMonitor:
    """The detectors of one model, by name."""

    def __init__(
        self,
        detectors: dict[str, drift.DriftDetector],
        error_history: np.ndarray | None = None,
        pending: np.ndarray | None = None,
    ) -> None:
        self.detectors = detectors
        #: Mean error of the last chunks, oldest first (for the direction of an alarm).
        self.error_history = (
            np.zeros(0)
            if error_history is None
            else error_history[-(RECENT_BATCHES + HISTORY_BATCHES) :]
        )
        #: Samples scored since the last chunk closed: count, loss sum, error sum.
        self.pending = np.zeros(3) if pending is None else np.asarray(pending, dtype=np.float64)

    @classmethod
    def create(
        cls, spec: dict[str, Any], n_features: int, n_features_monitored: int = N_FEATURES_MONITORED
    ) -> DriftMonitor:
        """The detectors the spec names (``detectors``; all of them by default)."""
        wanted = set(spec.get("detectors", ALL_DETECTORS))
        unknown = wanted - set(ALL_DETECTORS)
        if unknown:
            raise ValueError(
                f"unknown drift detectors {sorted(unknown)}; known: {list(ALL_DETECTORS)}"
            )
        detectors: dict[str, drift.DriftDetector] = {}
        if "page_hinkley" in wanted:
            # On chunk means: a rise of the loss only (it falls while a model learns), after
            # 10 chunks, by a cumulative excess of 1 (a jump of 0.3 in mean log loss is
            # seen within about 4 chunks).
            detectors["page_hinkley|loss"] = drift.PageHinkley(
                min_instances=10, threshold=1.0, mode="up"
            )
        if model_type(spec.get("type", "logistic")).classifier:  # 0/1 errors exist
            if "adwin" in wanted:
                detectors["adwin|error"] = drift.ADWIN()
            if "ddm" in wanted:
                # DDM's minimum of p + s is noise over its first few dozen errors: wait.
                detectors["ddm|error"] = drift.DDM(warm_start=300)
        for i in range(min(n_features, n_features_monitored)):
            # Tested every FEATURE_TEST_EVERY values rather than every 10: a window of 500
            # moves little in between, and the KS test dominated the monitor's cost.
            if "psi" in wanted:
                detectors[f"psi|feature[{i}]"] = drift.PSI(clock=FEATURE_TEST_EVERY)
            if "ks" in wanted:
                detectors[f"ks|feature[{i}]"] = drift.KS(clock=FEATURE_TEST_EVERY)
        return cls(detectors)

    def restarted(self, spec: dict[str, Any]) -> DriftMonitor:
        """The monitor for new weights (a reset, a rollback): the error and loss detectors
        start afresh, the feature detectors keep their windows (the inputs did not change).

        Kept, the error detectors would compare the new weights' errors with the old ones':
        a reset model, young and worse for a while, raised another alarm, hence another
        reset, one after the other.
        """
        fresh = DriftMonitor.create(spec, 0)
        fresh.detectors.update(
            {name: det for name, det in self.detectors.items() if "|feature[" in name}
        )
        return fresh

    def update(self, errors: np.ndarray, losses: np.ndarray, X: np.ndarray) -> list[DriftAlarm]:
        """Feed one scored batch (in order); the detections it caused."""
        alarms = []
        chunk_loss = self._chunk(errors, losses)
        for name, detector in self.detectors.items():
            kind, signal = name.split("|")
            if signal == "error":
                values = errors
            elif signal == "loss":
                values = chunk_loss
            else:
                values = X[:, int(signal[len("feature[") : -1])]
                # A missing value (NaN, filled by the model's pipeline) is no drift signal.
                values = values[~np.isnan(values)]
            if len(values) and detector.update_many(values).any():
                alarms.append(
                    DriftAlarm(
                        kind,
                        signal,
                        float(detector.statistic),
                        detector.change_point,
                        self._direction(kind, signal),
                    )
                )
        return alarms

    def _chunk(self, errors: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """Add a batch to the open chunk; the chunk's mean loss once it holds SIGNAL_CHUNK
        samples (and its mean error joins the history), else nothing."""
        n = len(losses)
        self.pending += (n, float(losses.sum()) if n else 0.0, float(errors.sum()))
        count, loss_sum, error_sum = self.pending
        if count < SIGNAL_CHUNK:
            return np.zeros(0)
        self.pending = np.zeros(3)
        if len(errors):
            self.error_history = np.append(self.error_history, error_sum / count)[
                -(RECENT_BATCHES + HISTORY_BATCHES) :
            ]
        return np.array([loss_sum / count])

    def _direction(self, kind: str, signal: str) -> str:
        if signal.startswith("feature"):
            return ""
        if kind != "adwin":
            return "up"  # DDM and Page-Hinkley ("up" mode) only detect rises
        history = self.error_history
        if len(history) <= RECENT_BATCHES:
            return "up"
        recent = history[-RECENT_BATCHES:].mean()
        return "up" if recent > history[:-RECENT_BATCHES].mean() else "down"

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            name: np.frombuffer(to_bytes(det), dtype=np.uint8)
            for name, det in self.detectors.items()
        }
        arrays["error_history"] = self.error_history
        arrays["pending"] = self.pending
        return codec.encode_state(arrays, {"class": "DriftMonitor"})

    @classmethod
    def from_bytes(cls, payload: bytes) -> DriftMonitor:
        arrays, meta = codec.decode_state(payload)
        if meta.get("class") != "DriftMonitor":
            raise codec.CodecError(f"not a DriftMonitor state: {meta.get('class')!r}")
        history = arrays.pop("error_history", None)
        # Saved before chunks (every batch was one): nothing pending.
        pending = arrays.pop("pending", None)
        detectors = {}
        for name, raw in arrays.items():
            det = from_bytes(raw.tobytes())
            if not isinstance(det, drift.DriftDetector):
                raise codec.CodecError(f"{name}: not a drift detector")
            detectors[name] = det
        return cls(detectors, history, pending)
