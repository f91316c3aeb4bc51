"""Checkpoint versions of one model, their windowed metrics, and the automatic-rollback rule
(Flink-free; the checkpoint operator holds a :class:`CheckpointLedger` in managed state).

Every ``every``-th version is a *checkpoint*: the trainer keeps its weights, and the ledger
keeps its metrics -- the prequential loss and error of the samples scored by the versions
from it up to the next checkpoint (a checkpoint's "windowed metrics"). Beside that the ledger
keeps the live model's loss over the last ``window_samples`` samples.

Automatic rollback: when the live loss is worse than the best recent checkpoint's by more
than ``margin`` (relative), at least ``min_samples`` samples after the last change of the
model (start, rollback, reset) and ``cooldown_versions`` after the last automatic rollback,
the ledger asks for a rollback to that checkpoint. The rollback is then *evaluated*: if over
the next ``min_samples`` samples the restored lineage does no better than the degraded model
did, the data changed rather than the model broke (concept drift), so the checkpoints up to
the restored one are retired as rollback targets and learning goes on from there. A
``reset`` retires every older checkpoint for the same reason. One rollback is therefore the
most a concept change can cost.

>>> ledger = CheckpointLedger(every=2, window_samples=4, min_samples=4, margin=0.1,
...                           cooldown_versions=1)
>>> for v in range(1, 7):     # version v was scored with version v - 1's weights
...     _ = ledger.observe(v, "train", n=2, loss_sum=0.2, error_sum=0.0, now_ms=v)
>>> [c.version for c in ledger.checkpoints()]
[2, 4, 6]
>>> ledger.observe(7, "train", n=2, loss_sum=3.0, error_sum=2.0, now_ms=7)
[Rollback(to_version=4, live_loss=0.8, best_loss=0.1, window_samples=4)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.core import codec

#: Columns of the checkpoint table (float64 rows; versions and counts are exact below 2**53).
_COLUMNS = (
    "version",
    "samples_applied",
    "ts_ms",
    "n",
    "loss_sum",
    "error_sum",
    "registered",
    "chosen",
    "retired",
)
_C = {name: i for i, name in enumerate(_COLUMNS)}


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint version and the metrics of the samples its lineage scored."""

    version: int
    samples_applied: int
    ts_ms: int
    n: int
    loss: float  # mean prequential loss (NaN before any sample)
    error: float  # mean 0/1 error (NaN for regression or before any sample)
    registered: bool
    retired: bool

    def metrics(self) -> dict[str, float]:
        out = {"windowed_loss": self.loss, "window_samples": float(self.n)}
        if self.error == self.error:  # not NaN
            out["windowed_error"] = self.error
            out["windowed_accuracy"] = 1.0 - self.error
        return out


@dataclass(frozen=True)
class Register:
    """Register this checkpoint in the model registry (its interval has closed)."""

    version: int


@dataclass(frozen=True)
class Rollback:
    """Restore checkpoint ``to_version``: the live loss is worse than its by the margin."""

    to_version: int
    live_loss: float
    best_loss: float
    window_samples: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "to_version": self.to_version,
            "live_loss": self.live_loss,
            "best_loss": self.best_loss,
            "window_samples": self.window_samples,
        }


@dataclass(frozen=True)
class Retired:
    """Checkpoints no longer offered as rollback targets, and why."""

    versions: tuple[int, ...]
    reason: str


Decision = Register | Rollback | Retired


class CheckpointLedger:
    """Checkpoints and the live window of one model. ``observe`` is called once per version
    in version order; ``kind`` is ``"train"`` (a trained batch, scored by ``version - 1``),
    ``"rollback"``, ``"reset"`` or ``"warm_start"`` (no samples)."""

    def __init__(
        self,
        every: int = 50,
        keep: int = 20,
        window_samples: int = 2000,
        margin: float = 0.1,
        min_samples: int = 1000,
        cooldown_versions: int = 100,
        auto_rollback: bool = True,
        register_interval_ms: int = 0,
    ) -> None:
        self.every = every
        self.keep = keep
        self.window_samples = window_samples
        self.margin = margin
        self.min_samples = min_samples
        self.cooldown_versions = cooldown_versions
        self.auto_rollback = auto_rollback
        self.register_interval_ms = register_interval_ms
        #: The published spec (JSON) that registered versions carry.
        self.spec_json = ""
        self._table = np.zeros((0, len(_COLUMNS)))
        # The live window as per-batch sums: rows of (n, loss_sum, error_sum).
        self._window = np.zeros((0, 3))
        self.since_change = 0
        self.last_rollback_version = -(1 << 62)
        self.last_register_ms = -(1 << 62)
        # A rollback under evaluation: the degraded loss it must beat, the restored version,
        # the version that decided it, and whether the trainer has carried it out (the
        # samples scored between the decision and the rollback do not count).
        self._evaluating: tuple[float, int, int, bool] | None = None
        self._evaluation_sums = np.zeros(2)  # n, loss_sum since the rollback

    # ------------------------------------------------------------------ reading

    def checkpoints(self) -> list[Checkpoint]:
        return [self._checkpoint(row) for row in self._table]

    def get(self, version: int) -> Checkpoint | None:
        i = self._index(version)
        return None if i is None else self._checkpoint(self._table[i])

    def live_loss(self) -> tuple[float, int]:
        """Mean loss over the live window, and how many samples it covers."""
        n = int(self._window[:, 0].sum())
        return (float(self._window[:, 1].sum() / n) if n else float("nan")), n

    def is_checkpoint(self, version: int) -> bool:
        return version % self.every == 0

    # ------------------------------------------------------------------ updating

    def observe(
        self,
        version: int,
        kind: str,
        *,
        n: int = 0,
        loss_sum: float = 0.0,
        error_sum: float = 0.0,
        samples_applied: int = 0,
        now_ms: int = 0,
    ) -> list[Decision]:
        """Account for one new version; the decisions it leads to."""
        decisions: list[Decision] = []
        if kind == "train" and n:
            open_row = self._open_row(version - 1)
            if open_row is not None:
                self._table[open_row, _C["n"]] += n
                self._table[open_row, _C["loss_sum"]] += loss_sum
                self._table[open_row, _C["error_sum"]] += error_sum
            self._add_to_window(n, loss_sum, error_sum)
            self.since_change += n
            if self._evaluating is not None:
                decisions.extend(self._evaluate(version, n, loss_sum))
        elif kind in ("rollback", "reset", "warm_start"):
            self._window = np.zeros((0, 3))
            self.since_change = 0
            if kind == "rollback" and self._evaluating is not None:
                degraded, target, decided_at, _ = self._evaluating
                self._evaluating = (degraded, target, decided_at, True)
                self._evaluation_sums = np.zeros(2)
            if kind != "rollback":
                decisions.extend(
                    self._retire(
                        lambda v: v < version, f"{kind}: earlier checkpoints are another lineage"
                    )
                )
                self._evaluating = None
        if self.is_checkpoint(version):
            decisions.extend(self._close(version, now_ms))
            self._open(version, samples_applied, now_ms)
        if kind == "train":
            decisions.extend(self._check_rollback(version))
        return decisions

    def mark_registered(self, version: int) -> None:
        i = self._index(version)
        if i is not None:
            self._table[i, _C["registered"]] = 1.0

    def abandon_registration(self, version: int) -> None:
        """The registry refused this checkpoint for good (a permanent error): it is no longer
        pending, so a restart does not submit it again."""
        i = self._index(version)
        if i is not None:
            self._table[i, _C["chosen"]] = 0.0

    def choose(self, version: int) -> bool:
        """Mark a checkpoint for registration (a rollback target must be registered);
        False if it is unknown."""
        i = self._index(version)
        if i is None:
            return False
        self._table[i, _C["chosen"]] = 1.0
        return True

    def pending_registrations(self) -> list[int]:
        """Chosen checkpoints not yet confirmed registered (re-queued after a restart)."""
        t = self._table
        return [
            int(v)
            for v in t[(t[:, _C["chosen"]] == 1) & (t[:, _C["registered"]] == 0), _C["version"]]
        ]

    # ------------------------------------------------------------------ internals

    def _index(self, version: int) -> int | None:
        hits = np.flatnonzero(self._table[:, _C["version"]] == version)
        return int(hits[0]) if hits.size else None

    def _open_row(self, scored_by: int) -> int | None:
        """The row of the latest checkpoint at or before ``scored_by`` (its interval)."""
        if not self._table.shape[0]:
            return None
        versions = self._table[:, _C["version"]]
        candidates = np.flatnonzero(versions <= scored_by)
        return int(candidates[-1]) if candidates.size else None

    def _checkpoint(self, row: np.ndarray) -> Checkpoint:
        n = int(row[_C["n"]])
        return Checkpoint(
            version=int(row[_C["version"]]),
            samples_applied=int(row[_C["samples_applied"]]),
            ts_ms=int(row[_C["ts_ms"]]),
            n=n,
            loss=float(row[_C["loss_sum"]] / n) if n else float("nan"),
            error=float(row[_C["error_sum"]] / n) if n else float("nan"),
            registered=bool(row[_C["registered"]]),
            retired=bool(row[_C["retired"]]),
        )

    def _add_to_window(self, n: int, loss_sum: float, error_sum: float) -> None:
        self._window = np.vstack([self._window, [n, loss_sum, error_sum]])
        # Drop whole batches from the front while the rest still covers the window.
        while self._window.shape[0] > 1 and self._window[1:, 0].sum() >= self.window_samples:
            self._window = self._window[1:]

    def _open(self, version: int, samples_applied: int, now_ms: int) -> None:
        if self._index(version) is not None:
            return  # a replayed version after recovery
        row = np.zeros(len(_COLUMNS))
        row[[_C["version"], _C["samples_applied"], _C["ts_ms"]]] = (
            version,
            samples_applied,
            now_ms,
        )
        self._table = np.vstack([self._table, row])[-self.keep :]

    def _close(self, version: int, now_ms: int) -> list[Decision]:
        """The previous checkpoint's interval ends at ``version``: maybe register it."""
        previous = self._open_row(version - 1)
        if previous is None:
            return []
        row = self._table[previous]
        if row[_C["chosen"]] or now_ms - self.last_register_ms < self.register_interval_ms:
            return []
        row[_C["chosen"]] = 1.0
        self.last_register_ms = now_ms
        return [Register(int(row[_C["version"]]))]

    def _candidates(self) -> np.ndarray:
        """Rows that may be rolled back to: closed (a later checkpoint exists), not retired,
        and measured on at least half a window."""
        t = self._table[:-1]
        ok = (t[:, _C["retired"]] == 0) & (
            t[:, _C["n"]] >= min(self.min_samples, self.window_samples) / 2
        )
        return t[ok]

    def _check_rollback(self, version: int) -> list[Decision]:
        if not self.auto_rollback or self._evaluating is not None:
            return []
        if (
            self.since_change < self.min_samples
            or version - self.last_rollback_version < self.cooldown_versions
        ):
            return []
        live, n = self.live_loss()
        candidates = self._candidates()
        if not candidates.shape[0] or not np.isfinite(live):
            return []
        losses = candidates[:, _C["loss_sum"]] / candidates[:, _C["n"]]
        # The most recent of equally good checkpoints: it lost the least recent learning.
        best = len(losses) - 1 - int(np.argmin(losses[::-1]))
        if not live > losses[best] * (1.0 + self.margin):
            return []
        target = int(candidates[best, _C["version"]])
        self.last_rollback_version = version
        self._evaluating = (live, target, version, False)
        self._evaluation_sums = np.zeros(2)
        self.choose(target)
        return [Rollback(target, live, float(losses[best]), n)]

    def _evaluate(self, version: int, n: int, loss_sum: float) -> list[Decision]:
        assert self._evaluating is not None
        degraded, restored, decided_at, started = self._evaluating
        if not started:
            if version - decided_at >= self.cooldown_versions:
                self._evaluating = None  # the rollback never came (e.g. it was refused)
            return []
        self._evaluation_sums += (n, loss_sum)
        if self._evaluation_sums[0] < self.min_samples:
            return []
        self._evaluating = None
        after = self._evaluation_sums[1] / self._evaluation_sums[0]
        if after * (1.0 + self.margin) < degraded:
            return []  # the rollback helped: the model had broken
        return self._retire(
            lambda v: v <= restored,
            f"rollback to {restored} did not help (loss {after:.4f} vs "
            f"{degraded:.4f} before): the data changed",
        )

    def _retire(self, which: Any, reason: str) -> list[Decision]:
        t = self._table
        hit = [
            i
            for i in range(t.shape[0])
            if not t[i, _C["retired"]] and which(int(t[i, _C["version"]]))
        ]
        if not hit:
            return []
        t[hit, _C["retired"]] = 1.0
        return [Retired(tuple(int(t[i, _C["version"]]) for i in hit), reason)]

    # ------------------------------------------------------------------ state

    def to_bytes(self) -> bytes:
        meta = {
            "class": "CheckpointLedger",
            "since_change": self.since_change,
            "last_rollback_version": self.last_rollback_version,
            "last_register_ms": self.last_register_ms,
            "evaluating": list(self._evaluating) if self._evaluating else None,
            "spec_json": self.spec_json,
        }
        return codec.encode_state(
            {"table": self._table, "window": self._window, "evaluation": self._evaluation_sums},
            meta,
        )

    def load_bytes(self, payload: bytes) -> CheckpointLedger:
        """Restore the state written by :meth:`to_bytes` into this (configured) ledger."""
        arrays, meta = codec.decode_state(payload)
        if meta.get("class") != "CheckpointLedger":
            raise codec.CodecError(f"not a CheckpointLedger state: {meta.get('class')!r}")
        self._table = arrays["table"].reshape(-1, len(_COLUMNS))[-self.keep :]
        self._window = arrays["window"].reshape(-1, 3)
        self._evaluation_sums = arrays["evaluation"]
        self.since_change = int(meta["since_change"])
        self.last_rollback_version = int(meta["last_rollback_version"])
        self.last_register_ms = int(meta["last_register_ms"])
        self.spec_json = str(meta.get("spec_json", ""))
        evaluating = meta.get("evaluating")
        self._evaluating = (
            (float(evaluating[0]), int(evaluating[1]), int(evaluating[2]), bool(evaluating[3]))
            if evaluating
            else None
        )
        return self
