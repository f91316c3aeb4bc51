"""The commands of ``fl.control`` and what each does to one model's trainer, as plain
Python: the trainer operator supplies the kept weights and the registry's baseline, then
stores and emits what the :class:`Outcome` says.

>>> from flowlearn.core.training import ModelTrainer
>>> trainer = ModelTrainer.create("m", {"type": "logistic", "n_features": 2})
>>> out = apply_command(trainer, "reset", {}, "cli", NO_KEPT_WEIGHTS, no_baseline)
>>> out.ok, out.alert_kind, out.detail["new_version"], out.eval_kind
(True, 'control', 1, 'reset')
>>> apply_command(trainer, "rollback", {"version": 7}, "cli", NO_KEPT_WEIGHTS,
...               no_baseline).detail["reason"]
'version 7 is not among the kept versions []'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from flowlearn.core import codec
from flowlearn.core.training import ModelTrainer, ModelVersion

#: Control commands the trainer understands, with the numeric arguments each requires.
CONTROL_COMMANDS: dict[str, tuple[str, ...]] = {
    "rollback": ("version",),
    "reset": (),
    "set_learning_rate": ("learning_rate",),
    "pause": (),
    "resume": (),
    # Publish the current version again as a full snapshot (under the running epoch): after
    # a resubmission from a savepoint, so that predictors reload before new data arrives.
    "republish": (),
    # Continue from a registered batch baseline (`flowlearn train-batch --warm-start`).
    "warm_start": ("version",),
    # Serving-side rollback: predictors serve one version while training goes on (the
    # publisher writes the pin to Redis), until `unpin`.
    "pin": ("version",),
    "unpin": (),
    # A model's lifecycle (docs/models.md): the spec travels in args.spec (create) or the
    # changed fields in args.changes (update, with args.reset true for fields that make
    # another model); the trainer operator carries them out itself (they change its state,
    # not only the model's).
    "create": (),
    "update": (),
    "delete": (),
}
#: The commands that change a model's spec: the trainer and the monitoring operators see them.
LIFECYCLE_COMMANDS = ("create", "update", "delete")


def changes_shape(command: str, args: Mapping[str, Any]) -> bool:
    """Whether ``command`` changes which records fit a model, so that the parsers must
    follow it too: a ``create``, a ``delete``, an ``update`` with ``reset`` (a plain update
    changes only fields that no record depends on)."""
    return command in ("create", "delete") or (command == "update" and args.get("reset") is True)


class KeptWeights(Protocol):
    """The weights a trainer kept for rollbacks (``flowlearn.core.retention``)."""

    def weights(self, version: int) -> bytes | None:
        """Codec array bytes of ``version``, None when it is not kept."""
        ...

    def versions(self) -> list[int]:
        """Every kept version, ascending."""
        ...


class _NoKeptWeights:
    def weights(self, version: int) -> bytes | None:
        return None

    def versions(self) -> list[int]:
        return []


NO_KEPT_WEIGHTS: KeptWeights = _NoKeptWeights()


def no_baseline(version: int) -> np.ndarray:
    raise ValueError("no registry to load a baseline from")


@dataclass(frozen=True)
class Outcome:
    """What a command did. ``detail`` is the alert's (with ``ok``, and ``reason`` when it
    was refused); ``new_version`` is a version to emit (its evaluation kind
    ``eval_kind``), ``republish`` one to publish again; ``paused`` the pause flag to store;
    ``flush`` asks the operator to train what waits in the buffer; ``pin`` is the version
    the predictors are to serve from now on (0: the latest again), None to leave it, and
    ``pin_weights`` its weights (codec array bytes)."""

    alert_kind: str
    detail: dict[str, Any]
    new_version: ModelVersion | None = None
    eval_kind: str = ""
    republish: ModelVersion | None = None
    paused: bool | None = None
    flush: bool = False
    pin: int | None = None
    pin_weights: bytes = b""

    @property
    def ok(self) -> bool:
        return bool(self.detail.get("ok"))


def command_detail(command: str, args: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The start of every answer's alert detail: what was asked, by whom. The answer adds
    ``ok`` and, when it was refused, the ``reason``."""
    return {"command": command, "args": dict(args), "source": source}


def apply_command(
    trainer: ModelTrainer,
    command: str,
    args: Mapping[str, Any],
    source: str,
    kept: KeptWeights,
    baseline: Callable[[int], np.ndarray],
) -> Outcome:
    """Carry out ``command`` (validated by the record parser: a known command with its
    numeric arguments) on ``trainer``. A refused command changes nothing."""
    kind = "rollback" if command == "rollback" else "control"
    detail = command_detail(command, args, source)

    def refused(reason: str) -> Outcome:
        return Outcome(kind, {**detail, "ok": False, "reason": reason})

    if command in ("rollback", "warm_start", "pin"):
        problem = _version_problem(args["version"], command == "warm_start")
        if problem:
            return refused(problem)
    if command == "rollback":
        target = int(args["version"])
        weights = kept.weights(target)
        if weights is None:
            return refused(f"version {target} is not among the kept versions {kept.versions()}")
        if problem := _shape_problem(trainer, target, weights):
            return refused(problem)
        mv = trainer.restore_weights(codec.decode_array(weights))
        return Outcome(
            kind,
            {**detail, "ok": True, "from_version": mv.base_version, "new_version": mv.version},
            mv,
            "rollback",
        )
    if command == "reset":
        mv = trainer.reset()
        return Outcome(kind, {**detail, "ok": True, "new_version": mv.version}, mv, "reset")
    if command == "set_learning_rate":
        try:
            trainer.set_learning_rate(float(args["learning_rate"]))
        except ValueError as exc:
            return refused(str(exc))
        return Outcome(kind, {**detail, "ok": True})
    if command == "warm_start":
        try:
            weights_of_baseline = baseline(int(args["version"]))
            size = trainer.model.weights_vector().size
            if weights_of_baseline.shape != (size,):
                raise ValueError(
                    f"baseline has {weights_of_baseline.size} weights, the model {size}"
                )
        except (ValueError, RuntimeError) as exc:  # RegistryError, CodecError included
            return refused(str(exc))
        mv = trainer.restore_weights(weights_of_baseline)
        return Outcome(kind, {**detail, "ok": True, "new_version": mv.version}, mv, "warm_start")
    if command == "republish":
        mv = trainer.current_version()
        return Outcome(kind, {**detail, "ok": True, "version": mv.version}, republish=mv)
    if command == "pin":
        # The weights go with the pin: predictors serve them for as long as it lasts.
        target = int(args["version"])
        if target == trainer.version:
            weights = codec.encode_array(trainer.model.weights_vector())
        elif (kept_weights := kept.weights(target)) is not None:
            if problem := _shape_problem(trainer, target, kept_weights):
                return refused(problem)
            weights = kept_weights
        else:
            return refused(
                f"version {target} is neither the current one ({trainer.version}) nor among "
                f"the kept versions {kept.versions()}"
            )
        return Outcome(
            kind, {**detail, "ok": True, "pinned": target}, pin=target, pin_weights=weights
        )
    if command == "unpin":
        return Outcome(kind, {**detail, "ok": True}, pin=0)
    if command in ("pause", "resume"):
        return Outcome(
            kind, {**detail, "ok": True}, paused=command == "pause", flush=command == "resume"
        )
    return refused(f"'{command}' is not one of {sorted(CONTROL_COMMANDS)}")


#: Versions are 64-bit in state and Redis; a larger number names no version.
MAX_VERSION = (1 << 62) - 1


def _shape_problem(trainer: ModelTrainer, version: int, weights: bytes) -> str:
    """Why kept ``weights`` of ``version`` cannot be the model's now (they are of the shape
    it had before a reset changed it), or ""."""
    size, expected = codec.decode_array(weights).size, trainer.model.weights_vector().size
    if size != expected:
        return (
            f"version {version} has {size} weights, the model {expected}: it was kept from "
            "before a reset changed the model's type or shape"
        )
    return ""


def _version_problem(value: float, registry_version: bool) -> str:
    """Why ``value`` (a finite number, checked by the parser) names no version, or ""."""
    if value != int(value) or not 1 <= value <= MAX_VERSION:
        what = "a registered baseline's version" if registry_version else "a model version"
        return f"{value!r} is not {what}: a whole number from 1"
    return ""
