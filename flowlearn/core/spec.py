"""The model spec: what the trainer builds for one model id, with its validation.

A spec is written as a table in the configuration (``[model_defaults]``, ``[models.ID]``;
:mod:`flowlearn.contracts.spec` reads it from the settings) or as a plain dict, and travels
with every published version as JSON.

>>> ModelSpec(type="softmax", n_features=4, n_classes=3).validate("models.m")
>>> ModelSpec(type="tree").validate("m")
Traceback (most recent call last):
...
flowlearn.core.spec.SpecError: m.type: unknown model type 'tree'; known: linear, logistic, softmax
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from flowlearn.core.model_types import model_type
from flowlearn.core.monitoring import ALL_DETECTORS
from flowlearn.core.optim import SPEC_OPTIMIZERS


class SpecError(ValueError):
    """A spec field has a value the model cannot be built with; the message names it."""


def _check_positive(where: str, value: float) -> None:
    if value <= 0:
        raise SpecError(f"{where} must be > 0, got {value}")


@dataclass(frozen=True)
class ModelSpec:
    """What the trainer builds for one model id.

    ``features = "dense"`` takes lists of ``n_features`` numbers; ``"hashed"`` takes
    ``{name: value}`` maps hashed into ``n_features`` columns with ``hash_seed``.
    """

    type: str = "logistic"
    n_features: int = 10
    features: Literal["dense", "hashed"] = "dense"
    hash_seed: int = 0
    n_classes: int = 2
    #: One of :data:`flowlearn.core.optim.SPEC_OPTIMIZERS`.
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    l1: float = 0.0
    l2: float = 0.0
    #: Safety gate: the batch gradient's L2 norm is clipped to this (0: no clipping).
    clip_grad_norm: float = 0.0
    #: Mini-batch size of this model (0: ``job.batch_size``).
    batch_size: int = 0
    #: Drift detectors watching this model (a subset of ALL_DETECTORS).
    detectors: tuple[str, ...] = ALL_DETECTORS
    #: Holdout gate: the last ``holdout_size`` samples are held out of training; an update
    #: that raises their mean loss by more than ``holdout_margin`` is rejected (0: off).
    holdout_size: int = 0
    holdout_margin: float = 0.05
    #: Replay buffer: a reservoir sample of ``replay_size`` past samples, of which
    #: ``replay_fraction`` x batch size are mixed into every batch (0: off).
    replay_size: int = 0
    replay_fraction: float = 0.25
    #: Seeds the replay reservoir (training is deterministic given the input order).
    seed: int = 0
    #: On an error or loss drift alarm: "none" (alert only) or "reset" the model.
    drift_action: Literal["none", "reset"] = "none"
    #: Roll back automatically when the live model degrades (``job.rollback_*``).
    auto_rollback: bool = True

    def as_dict(self) -> dict[str, Any]:
        spec = dataclasses.asdict(self)
        spec["detectors"] = list(self.detectors)
        return spec

    def validate(self, where: str) -> None:
        try:
            kind = model_type(self.type)
        except ValueError as exc:
            raise SpecError(f"{where}.type: {exc}") from None
        if self.optimizer not in SPEC_OPTIMIZERS:
            raise SpecError(
                f"{where}.optimizer: {self.optimizer!r} is not one of {tuple(SPEC_OPTIMIZERS)}"
            )
        _check_positive(f"{where}.n_features", self.n_features)
        if kind.multiclass and self.n_classes < 2:
            raise SpecError(f"{where}.n_classes: a {self.type} model needs >= 2 classes")
        _check_positive(f"{where}.learning_rate", self.learning_rate)
        for name in (
            "l1",
            "l2",
            "clip_grad_norm",
            "batch_size",
            "holdout_size",
            "replay_size",
            "holdout_margin",
        ):
            if getattr(self, name) < 0:
                raise SpecError(f"{where}.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 < self.replay_fraction <= 1:
            raise SpecError(
                f"{where}.replay_fraction: must be in (0, 1], got {self.replay_fraction}"
            )
        unknown = set(self.detectors) - set(ALL_DETECTORS)
        if unknown:
            raise SpecError(
                f"{where}.detectors: unknown {sorted(unknown)}; known: {list(ALL_DETECTORS)}"
            )
