"""Flink-free training step of one model: prequential score, safety gates, update, version.

The trainer operator holds this object's state in Flink managed state (as codec bytes and
two counters) and calls :meth:`ModelTrainer.train_batch` on each mini-batch, which

1. tests: scores the batch with the current weights (per-sample losses and, for
   classifiers, 0/1 errors), the prequential view that evaluation and drift detection see;
2. with a replay buffer (``replay_size > 0``), mixes ``round(replay_fraction x batch size)``
   past samples into the training batch, against forgetting;
3. trains: one gradient step, its norm clipped to ``clip_grad_norm`` by the model;
4. gates: non-finite inputs, gradients or weights reject the batch, and so does, with a
   holdout (``holdout_size > 0``), an update that raises the mean loss on recently seen
   samples by more than ``holdout_margin``. A rejected update leaves the model exactly as
   it was, so a restarted job that replays the same batches makes the same decisions;
5. makes a new version of an applied batch (the update count) and counts its samples.

Everything is deterministic given the batches and the spec's ``seed``, and the whole state
(model, holdout, reservoir, random generator) serialises through :mod:`flowlearn.core.codec`.

>>> import numpy as np
>>> t = ModelTrainer.create("m", {"type": "logistic", "n_features": 2, "learning_rate": 0.1})
>>> r = t.train_batch(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 0.0]))
>>> r.version.version, r.version.samples_applied, t.version
(1, 2, 1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowlearn.core import codec, model_types, optim
from flowlearn.core.bandits import ContextualBandit
from flowlearn.core.model_types import model_type
from flowlearn.core.pipeline import (
    FeatureTransform,
    FeedbackPipeline,
    Pipeline,
    TargetScaler,
    remap_columns,
    take_columns,
)
from flowlearn.core.sparse import Rows, SparseRows, as_dense, concat_rows, replace_rows
from flowlearn.core.spec import (
    ModelSpec,
    bandit_params,
    default_columns,
    learning_rates,
    pipeline_scale,
    target_scaled,
    tree_params,
)

#: A full snapshot rides along with every version while the weights stay under this size.
SNAPSHOT_EVERY_VERSION_BYTES = 64 * 1024
#: Larger models rewrite the snapshot every this many versions (the delta stream keeps more).
SNAPSHOT_INTERVAL = 100
#: The holdout gate waits for min(holdout_size, this) samples: a mean loss over a handful
#: of samples is too noisy to veto an update on.
HOLDOUT_MIN_SAMPLES = 32
#: A young model's batch holds at most 1/RAMP_FRACTION of the samples it has learnt (at
#: least one, at most the spec's batch size), so its first versions come after 1, 2, 3...
#: samples instead of a whole batch, and what it serves early is never far behind what it
#: has seen; batches of 64 from 1,024 samples on (docs/learning.md).
RAMP_FRACTION = 16

#: Keys a spec given as a plain dict leaves out take :class:`ModelSpec`'s defaults.
_SPEC_DEFAULTS: dict[str, Any] = ModelSpec().as_dict()

#: Marks the trainer's own state layout; bytes without it hold a model's state only (the
#: layout of earlier releases, still written when there is no holdout and no replay).
_STATE_FORMAT_KEY = "trainer_state"
_STATE_FORMAT = 1
_MODEL_PREFIX = "model."


Model = Pipeline


def ramp_size(samples_learnt: int, batch_size: int) -> int:
    """The size of the next batch of a model that has learnt ``samples_learnt`` samples:
    ``batch_size``, or less while the model is young: the largest power of two at most
    ``samples_learnt / RAMP_FRACTION`` (at least 1). A young model's batches are then
    powers of two that start where a batch of their size would, so a stream sent in
    records of ``batch_size`` (a power of two) is cut at its records' boundaries, as a
    grown model's is."""
    young = max(1, samples_learnt // RAMP_FRACTION)
    return min(batch_size, 1 << (young.bit_length() - 1))


def batch_plan(n_samples: int, batch_size: int, samples_learnt: int = 0) -> list[int]:
    """The sizes of the batches the job cuts ``n_samples`` samples into, the last one
    partial, for a model that has learnt ``samples_learnt`` so far (and rejects none).

    >>> plan = batch_plan(1100, 64)
    >>> plan[:3], plan[-3:], len(plan), sum(plan)
    ([1, 1, 1], [32, 64, 12], 114, 1100)
    >>> batch_plan(130, 64, samples_learnt=2000)
    [64, 64, 2]
    """
    sizes: list[int] = []
    done = 0
    while done < n_samples:
        size = min(ramp_size(samples_learnt + done, batch_size), n_samples - done)
        sizes.append(size)
        done += size
    return sizes


def _with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {**_SPEC_DEFAULTS, **spec}


def build_model(spec: Mapping[str, Any], scale: str | None = None) -> Model:
    """A fresh model behind its feature pipeline, for a model spec (:meth:`ModelSpec.as_dict`,
    or a dict with some of its keys: the others take ModelSpec's defaults); ``scale``
    overrides the spec's scaling."""
    s = _with_defaults(spec)
    n_features = int(s["n_features"])
    names = tuple(s["feature_names"])
    features = FeatureTransform(
        n_features,
        scale=scale or pipeline_scale(s),  # type: ignore[arg-type]
        defaults=default_columns(s["feature_defaults"], names, n_features),
        clip=float(s["clip"]),
        names=names,
    )
    learner = _build_learner(s)
    if model_type(s["type"]).bandit:
        return FeedbackPipeline(features, learner)
    return Pipeline(features, learner, TargetScaler() if target_scaled(s) else None)


def _build_learner(s: Mapping[str, Any]) -> model_types.Model:
    """The model itself (what the pipeline feeds)."""
    kind = model_type(s["type"])
    if kind.bandit:
        return ContextualBandit(int(s["n_features"]), **bandit_params(s))
    if kind.tree:
        return kind.build_tree(
            int(s["n_features"]), int(s["n_classes"]), seed=int(s["seed"]), **tree_params(s)
        )
    make_optimizer = optim.SPEC_OPTIMIZERS.get(s["optimizer"])
    if make_optimizer is None:
        raise ValueError(
            f"unknown optimizer {s['optimizer']!r}; known: {sorted(optim.SPEC_OPTIMIZERS)}"
        )
    clip = float(s["clip_grad_norm"])
    return kind.build(
        int(s["n_features"]),
        int(s["n_classes"]),
        [make_optimizer(lr) for lr in learning_rates(s)],
        l1=float(s["l1"]),
        l2=float(s["l2"]),
        clip_grad_norm=clip if clip > 0 else None,  # 0 turns clipping off
        seed=int(s["seed"]),
        batch_size=int(s["batch_size"]),
    )


def published_spec(model: Model, spec: Mapping[str, Any]) -> str:
    """The spec published with each version of ``model`` (built from ``spec``), as JSON:
    what a predictor needs to rebuild the model and its pipeline, and to read a request's
    features as the job does."""
    s = _with_defaults(spec)
    return json.dumps(
        {
            **model.spec(),
            # The spec's own name: a self-tuning type's model says its members' type.
            "type": s["type"],
            "features": s["features"],
            "hash_seed": int(s["hash_seed"]),
            "feature_names": list(s["feature_names"]),
            "class_names": list(s["class_names"]),
            "missing": s["missing"],
        },
        sort_keys=True,
    )


@dataclass(frozen=True)
class ModelVersion:
    """One published version as the trainer hands it to the publisher.

    ``delta`` overwrites the weights of ``base_version`` into this version's;
    ``weights`` is the full vector, present when a snapshot must be (re)written.
    """

    model_id: str
    version: int
    base_version: int
    samples_applied: int
    spec_json: str
    delta: bytes
    weights: bytes | None


@dataclass(frozen=True)
class BatchResult:
    """What one batch did: the new version (None if rejected, with the reason in
    ``rejected``) and what the test step saw before training: per-sample losses and, for
    classifiers, 0/1 errors (None when the test step could not run). ``grad_norm`` is the
    training gradient's norm before clipping (None when no gradient was computed) and
    ``clipped`` says whether ``clip_grad_norm`` cut it."""

    version: ModelVersion | None
    prequential_loss: float
    rejected: str | None = None
    losses: np.ndarray | None = None
    errors: np.ndarray | None = None
    grad_norm: float | None = None
    clipped: bool = False


def _check_samples(X: Rows, y: np.ndarray, n_features: int, what: str) -> None:
    if X.ndim != 2 or X.shape[1] != n_features or y.shape != (X.shape[0],):
        raise codec.CodecError(
            f"corrupt trainer state: {what} samples of shapes {X.shape} and {y.shape} for "
            f"{n_features} features"
        )


class _Holdout:
    """The last ``size`` samples seen, oldest first: a FIFO kept as two float64 arrays (in
    arrival order, so a loss over it sums in the same order after a restore); its rows are
    sparse once sparse rows (a hashed model's) came."""

    def __init__(self, size: int, n_features: int) -> None:
        self.size = size
        self.X: Rows = np.empty((0, n_features))
        self.y = np.empty(0)

    def push(self, X: Rows, y: np.ndarray) -> None:
        n_new = min(len(y), self.size)
        n_old = min(len(self.y), self.size - n_new)
        self.X = concat_rows([self.X[len(self.y) - n_old :], X[len(y) - n_new :]])
        self.y = np.concatenate([self.y[len(self.y) - n_old :], y[len(y) - n_new :]])

    def mean_loss(self, model: Model) -> float:
        return float(np.mean(model.loss_many(self.X, self.y)))

    def load(self, X: Rows, y: np.ndarray) -> None:
        _check_samples(X, y, self.X.shape[1], "holdout")
        # The newest ones, should the spec's holdout_size have shrunk since the save.
        self.X, self.y = X[-self.size :], y[-self.size :]


class _Reservoir:
    """A uniform sample of at most ``size`` of all samples offered so far (Algorithm R),
    drawn with its own seeded generator so that a run is reproducible; its rows are sparse
    once sparse rows came."""

    def __init__(self, size: int, n_features: int, seed: int) -> None:
        self.size = size
        self.X: Rows = np.empty((0, n_features))
        self.y = np.empty(0)
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def mix(self, X: Rows, y: np.ndarray, k: int) -> tuple[Rows, np.ndarray]:
        """``X, y`` followed by ``k`` reservoir samples drawn without replacement (all of
        them while the reservoir holds fewer)."""
        k = min(k, len(self.y))
        if k == 0:
            return X, y
        idx = self.rng.choice(len(self.y), size=k, replace=False)
        return concat_rows([X, self.X[idx]]), np.concatenate([y, self.y[idx]])

    def offer(self, X: Rows, y: np.ndarray) -> None:
        n = len(y)
        fill = max(0, min(n, self.size - len(self.y)))
        if fill:
            self.X = concat_rows([self.X, X[:fill]])
            self.y = np.concatenate([self.y, y[:fill]])
        if fill < n:
            # Sample number t (0-based over all offers) takes a random slot j in [0, t]
            # and stays if j < size, evicting that slot's sample.
            t = self.seen + np.arange(fill, n)
            slots = self.rng.integers(0, t + 1)
            hit = np.flatnonzero(slots < self.size)
            # A slot drawn twice in one batch keeps the later sample, as one-by-one would.
            last_slots, first_from_end = np.unique(slots[hit][::-1], return_index=True)
            src = fill + hit[::-1][first_from_end]
            self.X = replace_rows(self.X, last_slots, X[src])
            self.y[last_slots] = y[src]
        self.seen += n

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "rng": self.rng.bit_generator.state}

    def load(self, X: Rows, y: np.ndarray, state: Mapping[str, Any]) -> None:
        _check_samples(X, y, self.X.shape[1], "replay")
        # The first ``size`` slots, should the spec's replay_size have shrunk since the save.
        self.X, self.y = X[: self.size], y[: self.size]
        self.seen = int(state["seen"])
        self.rng.bit_generator.state = state["rng"]


class ModelTrainer:
    """One model's weights, version counter and applied-sample counter, plus the optional
    holdout FIFO and replay reservoir that the spec asks for.

    Holdout gate (``holdout_size > 0``): before a batch's update is kept, the mean loss on
    the last ``holdout_size`` samples seen (from earlier batches) is computed with the
    weights before and after it; if it rises by more than ``holdout_margin`` the update is
    rejected and the weights and optimizer state are restored bit for bit. The gate waits
    until the holdout holds ``min(holdout_size, HOLDOUT_MIN_SAMPLES)`` samples. The batch's
    samples then join the holdout whether the update was accepted or rejected: a poisoned
    batch is outvoted by the rest of the holdout, while under a genuine concept change the
    holdout fills with the new concept within about ``holdout_size`` samples and updates
    towards it pass again (a gate that only learnt from accepted batches would lock the
    model to the old concept forever). Batches rejected for non-finite values never join.

    Replay (``replay_size > 0``): a reservoir sample of applied batches' samples, of which
    ``round(replay_fraction x batch size)`` join each training step. They are not scored
    (the test step covers the new batch only) and not counted in ``samples_applied``.
    """

    def __init__(
        self,
        model_id: str,
        spec: Mapping[str, Any],
        model: Model,
        version: int,
        samples_applied: int,
    ) -> None:
        self.model_id = model_id
        self.spec = dict(spec)
        self.model = model
        self.version = version
        self.samples_applied = samples_applied
        s = _with_defaults(spec)
        self.batch_size = int(s["batch_size"])
        self._classifier = model_type(s["type"]).classifier
        self._published_spec = self._publishable_spec()
        holdout_size, replay_size = int(s["holdout_size"]), int(s["replay_size"])
        self._holdout = _Holdout(holdout_size, model.sample_width) if holdout_size > 0 else None
        self._holdout_margin = float(s["holdout_margin"])
        self._holdout_min = min(holdout_size, HOLDOUT_MIN_SAMPLES)
        self._replay = (
            _Reservoir(replay_size, model.sample_width, int(s["seed"])) if replay_size > 0 else None
        )
        self._replay_fraction = float(s["replay_fraction"])
        # Set on construction, i.e. after every (re)start: the first version a (re)started
        # job publishes carries a full snapshot (docs/architecture.md: a new epoch starts with one).
        self._needs_snapshot = True
        # The model's weights vector as of the last version this trainer made (None: read
        # it from the model): the next batch's "before", without building it again.
        self._weights: np.ndarray | None = None

    def _publishable_spec(self) -> str:
        return published_spec(self.model, self.spec)

    @classmethod
    def create(cls, model_id: str, spec: Mapping[str, Any]) -> ModelTrainer:
        return cls(model_id, spec, build_model(spec), 0, 0)

    @classmethod
    def restore(
        cls,
        model_id: str,
        spec: Mapping[str, Any],
        state: bytes,
        version: int,
        samples_applied: int,
    ) -> ModelTrainer:
        """The trainer that :meth:`state_bytes` saved; also reads the model-only bytes of
        earlier releases (its holdout and reservoir then start empty).

        The model comes back as saved, its optimizer, penalties and clipping included (its
        optimizer state only fits the optimizer that made it); the spec decides whether
        there is a holdout and a reservoir, and one it no longer asks for is dropped.
        """
        arrays, meta = codec.decode_state(state)
        if _STATE_FORMAT_KEY in meta:
            if meta[_STATE_FORMAT_KEY] != _STATE_FORMAT:
                raise codec.CodecError(
                    f"unknown trainer state format {meta[_STATE_FORMAT_KEY]!r}; this build "
                    f"reads {_STATE_FORMAT}"
                )
            model_arrays = {
                k[len(_MODEL_PREFIX) :]: v for k, v in arrays.items() if k.startswith(_MODEL_PREFIX)
            }
            model_meta = meta.get("model", {})
        else:
            model_arrays, model_meta = arrays, meta
        names = list(_with_defaults(spec)["feature_names"])
        source = None
        try:
            if model_meta.get("class") == Pipeline.__name__:
                model = build_model(spec)
                saved_names = list(model_meta["features"]["params"]["names"])
                saved_n = int(model_meta["features"]["params"]["n_features"])
                if saved_n != model.n_features and not (saved_names and names):
                    # The spec's feature count changed (conf/ edited) with no names to move
                    # the columns by: the model comes back in the shape it was saved in,
                    # and a reset gives it the spec's.
                    model = build_model(
                        {
                            **spec,
                            "feature_names": saved_names,
                            "n_features": saved_n,
                            "feature_defaults": {},
                        }
                    )
                    model.load_state_dict(model_arrays, model_meta)
                elif saved_names and names and saved_names != names:
                    # The spec renamed, added or dropped features: the model as saved,
                    # then moved to the new columns.
                    source = remap_columns(saved_names, names)
                    saved = build_model(
                        {
                            **spec,
                            "feature_names": saved_names,
                            "n_features": len(saved_names),
                            "feature_defaults": {},
                        }
                    )
                    saved.load_state_dict(model_arrays, model_meta)
                    model.adopt(saved, source)
                else:
                    model.load_state_dict(model_arrays, model_meta)
            else:
                # Saved before models had a feature pipeline: the weights fit raw features,
                # so the model keeps them unscaled (a reset adopts the spec's scaling), and
                # it is no young model.
                model = build_model(spec, scale="none")
                model.model.load_state_dict(model_arrays, model_meta)
                model.samples_learnt = samples_applied
        except (KeyError, TypeError) as exc:
            raise codec.CodecError(f"corrupt trainer state: {exc!r}") from exc
        trainer = cls(model_id, spec, model, version, samples_applied)

        def columns(part: str) -> Rows:
            X = _saved_rows(arrays, part, model.sample_width)
            # Kept samples of features that a spec change added are missing values (named
            # columns: dense models only).
            return X if source is None else take_columns(as_dense(X), source, math.nan, axis=1)

        try:
            if trainer._holdout is not None and "holdout.y" in arrays:
                trainer._holdout.load(columns("holdout"), arrays["holdout.y"])
            if trainer._replay is not None and "replay" in meta:
                trainer._replay.load(columns("replay"), arrays["replay.y"], meta["replay"])
        except (KeyError, TypeError, ValueError) as exc:
            raise codec.CodecError(f"corrupt trainer state: {exc!r}") from exc
        return trainer

    def state_bytes(self) -> bytes:
        """Codec bytes of everything :meth:`restore` needs besides the two counters.

        Layout: without holdout and replay, the model's own state (as earlier releases
        wrote it, so that they can still read a default deployment's checkpoints).
        Otherwise arrays ``model.*`` (the model's), ``holdout.X``/``holdout.y`` (oldest
        first) and ``replay.X``/``replay.y`` (reservoir slots), and meta
        (sparse rows, a hashed model's, as ``<part>.offsets``, ``.indices`` and
        ``.values`` in place of ``<part>.X``)
        ``{"trainer_state": 1, "model": <model meta>, "replay": {"seen", "rng"}}``, where
        ``rng`` is the numpy bit generator's state; each section only when enabled.
        """
        model_arrays, model_meta = self.model.state_dict()
        if self._holdout is None and self._replay is None:
            return codec.encode_state(model_arrays, model_meta)
        arrays = {f"{_MODEL_PREFIX}{k}": v for k, v in model_arrays.items()}
        meta: dict[str, Any] = {_STATE_FORMAT_KEY: _STATE_FORMAT, "model": model_meta}
        if self._holdout is not None:
            arrays.update(_rows_arrays("holdout", self._holdout.X))
            arrays["holdout.y"] = self._holdout.y
        if self._replay is not None:
            arrays.update(_rows_arrays("replay", self._replay.X))
            arrays["replay.y"] = self._replay.y
            meta["replay"] = self._replay.state()
        return codec.encode_state(arrays, meta)

    def next_batch_size(self) -> int:
        """How many samples the next batch takes (:func:`ramp_size`). Read again after
        every batch, so the cut depends on the samples' order only, never on how they were
        bundled."""
        if self.batch_size <= 0:
            raise ValueError("a trainer whose spec has batch_size 0 cuts no batches itself")
        return ramp_size(self.model.samples_learnt, self.batch_size)

    def train_samples(self, X: Rows, y: np.ndarray) -> list[BatchResult]:
        """Train samples in order, cut into batches as the job cuts them
        (:meth:`next_batch_size`), the last one partial: what the job does with the same
        samples when its input ends."""
        results = []
        start = 0
        while start < len(y):
            end = min(len(y), start + self.next_batch_size())
            results.append(self.train_batch(X[start:end], y[start:end]))
            start = end
        return results

    def train_batch(self, X: Rows, y: np.ndarray) -> BatchResult:
        """Test then train on one batch (a dense matrix, or a hashed model's sparse rows);
        returns the version it made, or why not."""
        if len(X) == 0:
            return BatchResult(None, float("nan"), "empty")
        model = self.model
        before = self._weights if self._weights is not None else model.weights_vector()
        # Cleared until this batch's version is made: a rejected batch may leave the
        # model (its feature statistics) changed.
        self._weights = None
        holdout, replay = self._holdout, self._replay
        gate = holdout if holdout is not None and len(holdout.y) >= self._holdout_min else None
        losses = errors = None
        loss = float("nan")
        try:
            losses, predicted = model.test_many(X, y, predict=self._classifier)
            loss = float(np.mean(losses))
            if predicted is not None:
                errors = (predicted != y).astype(np.float64)
            if holdout is not None or replay is not None:
                # Validated by the test step; these are kept, so float64 arrays of our own.
                if not isinstance(X, SparseRows):
                    X = np.asarray(X, dtype=np.float64)
                y = np.asarray(y, dtype=np.float64)
            X_fit, y_fit = X, y
            if replay is not None:
                X_fit, y_fit = replay.mix(X, y, round(self._replay_fraction * len(y)))
            saved = None if gate is None else _copy_state(model)
            holdout_before = 0.0 if gate is None else gate.mean_loss(model)
            # The statistics learn from the new samples only (replayed ones were counted).
            model.observe(X, y)
            model.fit(X_fit, y_fit)
        except ValueError as exc:  # non-finite input or gradient: the model is untouched
            return BatchResult(None, loss, f"rejected: {exc}", losses, errors)
        grad_norm = model.last_grad_norm
        clipped = model.clip_grad_norm is not None and grad_norm > model.clip_grad_norm
        after = model.weights_vector()
        if not np.all(np.isfinite(after)):
            # Safety gate: never publish or keep non-finite weights.
            self._undo(before, saved)
            return BatchResult(None, loss, "non_finite_weights", losses, errors, grad_norm, clipped)
        rejected = None
        if gate is not None:
            increase = gate.mean_loss(model) - holdout_before
            if not increase <= self._holdout_margin:  # a NaN increase is rejected too
                self._undo(before, saved)
                rejected = f"holdout: loss {increase:+.3f} > margin {self._holdout_margin:g}"
        if holdout is not None:
            holdout.push(X, y)
        if rejected is not None:
            return BatchResult(None, loss, rejected, losses, errors, grad_norm, clipped)
        if replay is not None:
            replay.offer(X, y)
        return BatchResult(
            self._new_version(before, after, len(X)), loss, None, losses, errors, grad_norm, clipped
        )

    @property
    def published_spec(self) -> str:
        """The spec JSON its versions are published with."""
        return self._published_spec

    def current_version(self) -> ModelVersion:
        """The current version again, as a full snapshot with an empty delta (a republish:
        nothing changes, readers of a new epoch get the weights)."""
        weights = self.model.weights_vector()
        return ModelVersion(
            model_id=self.model_id,
            version=self.version,
            base_version=self.version,
            samples_applied=self.samples_applied,
            spec_json=self._published_spec,
            delta=codec.make_delta(weights, weights),
            weights=codec.encode_array(weights),
        )

    def restore_weights(self, weights: np.ndarray) -> ModelVersion:
        """A new version whose weights equal ``weights`` bit for bit (a rollback); the
        optimizer keeps its state."""
        before = self.model.weights_vector()
        self.model.set_weights_vector(weights)
        return self._new_version(before, self.model.weights_vector(), 0)

    def reset(self) -> ModelVersion:
        """A new version holding a freshly initialised model (optimizer state too).

        The holdout and replay buffers stay: they hold recent and past data, not weights,
        and the fresh model needs both (the gate's yardstick, the memory against
        forgetting) as much as the old one did; the replay generator keeps its sequence
        too, so a reset run stays reproducible.
        """
        before = self.model.weights_vector()
        self.model = build_model(self.spec)
        self._published_spec = self._publishable_spec()
        after = self.model.weights_vector()
        if after.shape != before.shape:
            # The spec's shape changed since the model trained (conf/ edited): the buffers
            # hold samples of the old shape, so they go too.
            fresh = ModelTrainer(
                self.model_id, self.spec, self.model, self.version, self.samples_applied
            )
            self._holdout, self._replay = fresh._holdout, fresh._replay
            return self._whole_version(after)
        return self._new_version(before, after, 0)

    @classmethod
    def replacing(
        cls, model_id: str, spec: Mapping[str, Any], version: int, samples_applied: int
    ) -> tuple[ModelTrainer, ModelVersion]:
        """A trainer of ``spec``'s untrained model that goes on from ``version`` and
        ``samples_applied`` (of a model of another type or shape, which it replaces), and
        its first version, published whole (:meth:`_whole_version`)."""
        trainer = cls(model_id, spec, build_model(spec), version, samples_applied)
        return trainer, trainer._whole_version(trainer.model.weights_vector())

    def _whole_version(self, weights: np.ndarray) -> ModelVersion:
        """A new version whose weights are no difference from the last one's (another
        shape): its delta has no base (``base_version`` 0) and overwrites every coordinate,
        and it carries the weights, so a replica loads it whole."""
        self.version += 1
        self._needs_snapshot = False
        self._weights = weights
        return ModelVersion(
            model_id=self.model_id,
            version=self.version,
            base_version=0,
            samples_applied=self.samples_applied,
            spec_json=self._published_spec,
            delta=codec.encode_delta(np.arange(weights.size), weights),
            weights=codec.encode_array(weights),
        )

    def set_learning_rate(self, lr: float) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {lr}")
        self._weights = None
        self.model.set_learning_rate(lr)

    def _undo(
        self, weights: np.ndarray, saved: tuple[dict[str, np.ndarray], dict[str, Any]] | None
    ) -> None:
        """Take back a candidate update: the whole model state when it was saved (gated
        batches), else the weights only (the optimizer state then keeps the step)."""
        if saved is None:
            self.model.set_weights_vector(weights)
        else:
            self.model.load_state_dict(*saved)

    def _new_version(self, before: np.ndarray, after: np.ndarray, n_samples: int) -> ModelVersion:
        base = self.version
        self.version += 1
        self.samples_applied += n_samples
        self._weights = after
        snapshot = (
            self._needs_snapshot
            or after.nbytes <= SNAPSHOT_EVERY_VERSION_BYTES
            or self.version % SNAPSHOT_INTERVAL == 0
        )
        self._needs_snapshot = False
        return ModelVersion(
            model_id=self.model_id,
            version=self.version,
            base_version=base,
            samples_applied=self.samples_applied,
            spec_json=self._published_spec,
            delta=codec.make_delta(before, after),
            weights=codec.encode_array(after) if snapshot else None,
        )


def _rows_arrays(part: str, X: Rows) -> dict[str, np.ndarray]:
    """Kept rows as state arrays: ``<part>.X`` dense, or sparse rows' three arrays."""
    if isinstance(X, SparseRows):
        return {
            f"{part}.offsets": X.offsets,
            f"{part}.indices": X.indices,
            f"{part}.values": X.values,
        }
    return {f"{part}.X": X}


def _saved_rows(arrays: Mapping[str, np.ndarray], part: str, width: int) -> Rows:
    """The rows :func:`_rows_arrays` saved."""
    if f"{part}.values" in arrays:
        return SparseRows(
            arrays[f"{part}.offsets"], arrays[f"{part}.indices"], arrays[f"{part}.values"], width
        )
    return arrays[f"{part}.X"]


def _copy_state(model: Model) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The model's full state (weights, optimizer buffers and counters), detached from the
    live arrays that ``state_dict`` hands out, for an exact :meth:`load_state_dict` later."""
    arrays, meta = model.state_dict()
    return {k: v.copy() for k, v in arrays.items()}, meta
