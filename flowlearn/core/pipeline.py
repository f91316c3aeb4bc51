"""The feature pipeline of a model: missing values filled, columns scaled and clipped, on
running statistics learnt from training data only, then the model.

One implementation serves the trainer and the predictor. The statistics the transform needs
are a flat float64 vector published with the model's weights (:meth:`Pipeline.weights_vector`
is the model's weights followed by them), so a replica that applies a version's snapshot and
deltas holds the trained transform exactly, and its scores equal the trainer's bit for bit.

Steps, in order (``FeatureTransform``):

1. **missing values** (NaN in the matrix: an absent named feature, a JSON ``null``) take the
   feature's declared default, else the column's running mean: never a silent zero;
2. **scaling**: ``"standard"`` (dense models) maps ``x`` to ``(x - mean) / std``, as River's
   ``StandardScaler``; ``"rms"`` (hashed models) divides a column by the root mean square of
   its non-zero values, which keeps the matrix sparse and leaves one-hot columns (values
   ±1) as they are; ``"none"`` leaves values unscaled;
3. **clipping** (``clip > 0``): scaled values beyond ``±clip`` are cut to it (an outlier guard);
4. **the target** of a regression model is standardised too (:class:`TargetScaler`), and
   predictions mapped back to its units.

>>> import numpy as np
>>> from flowlearn.core import linear
>>> p = Pipeline(FeatureTransform(2), linear.LogisticRegression(2))
>>> X = np.array([[1.0, 10.0], [3.0, np.nan]])
>>> p.learn_many(X, np.array([0, 1])).features.transform_many(X).tolist()
[[-1.0, 0.0], [1.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from flowlearn.core.sparse import Rows, SparseRows, as_dense, bin_sums
from flowlearn.core.validation import Arrays, Meta, Stateful, StateMismatch, check_array

if TYPE_CHECKING:  # linear imports this module
    from flowlearn.core.linear import Contributions

__all__ = ["SCALINGS", "FeatureTransform", "Pipeline", "TargetScaler", "remap_columns"]

Scaling = Literal["standard", "rms", "none"]
#: The scalings a spec names (``scale = "auto"`` picks "standard" for dense features and
#: "rms" for hashed ones).
SCALINGS: tuple[str, ...] = ("standard", "rms", "none")

#: A column whose standard deviation is below this share of its typical magnitude is
#: constant (its variance is rounding noise, some 1e-16 of the magnitude): it maps to 0
#: instead of amplified noise. A spread of 1 around 1e9 is real.
_RELATIVE_STD_FLOOR = 1e-12


class FeatureTransform(Stateful):
    """Missing-value filling, scaling and clipping of ``n_features`` columns.

    Its learnt state is three float64 vectors: the per-column count of observed values,
    their mean and their sum of squared deviations (Chan et al.'s pairwise update, accurate
    where ``E[x^2] - E[x]^2`` would cancel). "Observed" means not NaN (and, for ``"rms"``,
    not zero: a hashed column is mostly absent zeros).

    Parameters
    ----------
    n_features
        Number of columns.
    scale
        ``"standard"``, ``"rms"`` or ``"none"`` (see the module docstring).
    defaults
        ``{column: value}`` for missing values; other columns take their running mean.
    clip
        Cut scaled values to ``[-clip, clip]`` (0: off).
    names
        The columns' feature names (for messages, metrics and column mapping on a spec change).
    """

    def __init__(
        self,
        n_features: int,
        scale: Scaling = "standard",
        defaults: Mapping[int, float] | None = None,
        clip: float = 0.0,
        names: Sequence[str] = (),
    ) -> None:
        if int(n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if scale not in SCALINGS:
            raise ValueError(f"scale must be one of {SCALINGS}, got {scale!r}")
        if not clip >= 0:
            raise ValueError(f"clip must be >= 0, got {clip}")
        self.n_features = int(n_features)
        self.scale: Scaling = scale
        self.clip = float(clip)
        self.names = tuple(names)
        if self.names and len(self.names) != self.n_features:
            raise ValueError(f"{len(self.names)} feature names for {self.n_features} columns")
        self.defaults = {int(c): float(v) for c, v in (defaults or {}).items()}
        for col, value in self.defaults.items():
            if not 0 <= col < self.n_features or not np.isfinite(value):
                raise ValueError(
                    f"default {value!r} for column {col}: not a finite value of a column"
                )
        self._default_cols = np.array(sorted(self.defaults), dtype=np.int64)
        self._default_values = np.array([self.defaults[c] for c in sorted(self.defaults)])
        #: [count (d), mean (d), m2 (d)]: the published statistics, in one vector.
        self._stats = np.zeros(3 * self.n_features)
        #: Missing values seen per column in training data (not published: not needed to serve).
        self.missing = np.zeros(self.n_features, dtype=np.int64)
        self._refresh()

    # ------------------------------------------------------------------ statistics

    @property
    def count(self) -> np.ndarray:
        return self._stats[: self.n_features].copy()

    @property
    def mean(self) -> np.ndarray:
        return self._stats[self.n_features : 2 * self.n_features].copy()

    @property
    def var(self) -> np.ndarray:
        """Variance of the observed values per column (0 where none were seen)."""
        d = self.n_features
        n, m2 = self._stats[:d], self._stats[2 * d :]
        return np.divide(m2, n, out=np.zeros(d), where=n > 0)

    def vector(self) -> np.ndarray:
        """A copy of the statistics the transform needs, as published with the weights."""
        return self._stats.copy()

    def set_vector(self, v: np.ndarray) -> None:
        if v.shape != self._stats.shape:
            raise ValueError(
                f"pipeline statistics must have shape {self._stats.shape}, got {v.shape}"
            )
        self._stats[:] = v
        self._refresh()

    def _refresh(self) -> None:
        """Derive the transform's fill values and scale factors from the statistics (the same
        operations in the trainer and the predictor, so the same bits)."""
        d = self.n_features
        n, mean, m2 = self._stats[:d], self._stats[d : 2 * d], self._stats[2 * d :]
        self._center = mean if self.scale == "standard" else None
        if self.scale == "none":
            self._factor = None
        else:
            var = np.divide(m2, n, out=np.zeros(d), where=n > 0)
            if self.scale == "rms":
                spread = np.sqrt(var + mean * mean)
                floor = 0.0
            else:
                spread = np.sqrt(var)
                floor = _RELATIVE_STD_FLOOR * (1.0 + np.abs(mean))
            self._factor = np.divide(1.0, spread, out=np.zeros(d), where=spread > floor)
        fill = mean.copy()
        fill[self._default_cols] = self._default_values
        self._fill = fill

    def take_statistics(self, old: FeatureTransform, source: np.ndarray) -> None:
        """Adopt ``old``'s statistics over new columns (``source``: for each column, the
        old one it was, or -1 for a new feature, which starts with none)."""
        d_old = old.n_features
        self._stats = np.concatenate(
            [take_columns(part, source, 0.0) for part in old._stats.reshape(3, d_old)]
        )
        self.missing = take_columns(old.missing, source, 0.0).astype(np.int64)
        self._refresh()

    @property
    def keeps_zeros(self) -> bool:
        """Whether the transform maps 0 to 0 ("rms", "none"), so that sparse rows stay
        sparse through it (hashed rows have no missing values to fill)."""
        return self.scale != "standard"

    def learn_many(self, X: Rows) -> Self:
        """Merge a batch's observed values into the running statistics."""
        if isinstance(X, SparseRows):
            return self._learn_sparse(X)
        X, has_missing = self._check(X)
        if len(X) == 0:
            return self
        d = self.n_features
        if not has_missing and self.scale != "rms" and X.flags.c_contiguous:
            # Every value observed: the general case below without its masks (the same
            # operations on the same values, so the same bits).
            nb = np.full(d, float(len(X)))
            mb = X.sum(axis=0) / nb
            dev = X - mb
        else:
            observed = ~np.isnan(X)
            self.missing += (~observed).sum(axis=0)
            if self.scale == "rms":
                observed &= X != 0.0
            nb = observed.sum(axis=0).astype(np.float64)
            values = np.where(observed, X, 0.0)
            mb = np.divide(values.sum(axis=0), nb, out=np.zeros(d), where=nb > 0)
            dev = np.where(observed, X - mb, 0.0)
        m2b = np.einsum("ij,ij->j", dev, dev)
        self._merge(nb, mb, m2b)
        return self

    def _learn_sparse(self, X: SparseRows) -> Self:
        """:meth:`learn_many` of sparse rows, from their stored entries only: an absent
        entry is a 0 (with "rms", not observed; otherwise an observed 0)."""
        if X.width != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {X.shape}")
        if len(X) == 0:
            return self
        d = self.n_features
        cols, values = X.indices, X.values
        if self.scale == "rms":
            observed = values != 0.0
            cols, values = cols[observed], values[observed]
            nb = bin_sums(cols, np.ones(len(cols)), d)
        else:
            nb = np.full(d, float(len(X)))
        mb = np.divide(bin_sums(cols, values, d), nb, out=np.zeros(d), where=nb > 0)
        dev = values - mb[cols]
        m2b = bin_sums(cols, dev * dev, d)
        if self.scale != "rms":  # the zeros not stored are observed too: each deviates by -mean
            zeros = nb - bin_sums(cols, np.ones(len(cols)), d)
            m2b += zeros * mb * mb
        self._merge(nb, mb, m2b)
        return self

    def _merge(self, nb: np.ndarray, mb: np.ndarray, m2b: np.ndarray) -> None:
        """Merge a batch's per-column counts, means and sums of squared deviations."""
        d = self.n_features
        n, mean, m2 = self._stats[:d], self._stats[d : 2 * d], self._stats[2 * d :]
        total = n + nb
        delta = mb - mean
        share = np.divide(nb, total, out=np.zeros(d), where=total > 0)
        mean += delta * share
        m2 += m2b + delta * delta * n * share
        n[:] = total
        self._refresh()

    # ------------------------------------------------------------------ transform

    def transform_many(self, X: Rows) -> Any:
        """The model's input: a new finite float64 matrix (``X`` is left as it is); sparse
        rows give sparse rows (:attr:`keeps_zeros` scalings only: ValueError otherwise)."""
        if isinstance(X, SparseRows):
            return self._transform_sparse(X)
        X, has_missing = self._check(X)
        Z = np.array(X)  # a copy in X's layout
        if has_missing:
            rows, cols = np.nonzero(np.isnan(Z))
            Z[rows, cols] = self._fill[cols]
        if self._center is not None:
            Z -= self._center
        if self._factor is not None:
            Z *= self._factor
        if self.clip:
            np.clip(Z, -self.clip, self.clip, out=Z)
        return Z

    def _transform_sparse(self, X: SparseRows) -> SparseRows:
        """Scaling and clipping of each stored value (no missing values to fill)."""
        if X.width != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {X.shape}")
        if not self.keeps_zeros:
            raise ValueError(f"{self.scale!r} scaling does not keep sparse rows sparse")
        values = X.values.copy()
        if self._factor is not None:
            values *= self._factor[X.indices]
        if self.clip:
            np.clip(values, -self.clip, self.clip, out=values)
        return X.with_values(values)

    def _check(self, X: Any) -> tuple[np.ndarray, bool]:
        """``X`` as a float64 matrix without infinity, and whether it has missing values."""
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {arr.shape}")
        # One reduction for the common case: NaN and infinity propagate into the sum (an
        # overflow of huge finite values only sends it to the exact tests).
        if math.isfinite(arr.sum()):
            return arr, False
        if np.isinf(arr).any():
            raise ValueError("X contains infinity (a missing value is NaN)")
        return arr, bool(np.isnan(arr).any())

    # ------------------------------------------------------------------ spec and state

    def spec(self) -> dict[str, Any]:
        """JSON-able configuration; with :meth:`vector` it rebuilds the transform exactly."""
        return {
            "scale": self.scale,
            "defaults": {str(c): v for c, v in sorted(self.defaults.items())},
            "clip": self.clip,
            "names": list(self.names),
        }

    @classmethod
    def from_spec(cls, n_features: int, spec: Mapping[str, Any]) -> Self:
        return cls(
            n_features,
            scale=spec.get("scale", "standard"),
            defaults={int(c): float(v) for c, v in (spec.get("defaults") or {}).items()},
            clip=float(spec.get("clip", 0.0)),
            names=tuple(spec.get("names") or ()),
        )

    def _params(self) -> dict[str, Any]:
        return {"n_features": self.n_features, **self.spec()}

    @classmethod
    def _from_params(cls, params: Mapping[str, Any]) -> Self:
        return cls.from_spec(int(params["n_features"]), params)

    def _state(self) -> tuple[Arrays, Meta]:
        return {"stats": self._stats, "missing": self.missing.astype(np.float64)}, {}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._stats = check_array(arrays, "stats", self._stats.shape)
        self.missing = check_array(arrays, "missing", (self.n_features,)).astype(np.int64)
        self._refresh()


class TargetScaler(Stateful):
    """Running standardisation of a regression target: the model learns ``(y - mean) /
    std`` and its predictions are mapped back, so a target of any scale and offset needs no
    tuned learning rate and the first predictions start at the running mean. Its
    statistics (count, mean, sum of squared deviations: three floats) are published.

    >>> t = TargetScaler().learn_many(np.array([10.0, 14.0]))
    >>> t.transform(np.array([14.0])).tolist(), t.inverse(np.array([1.0])).tolist()
    ([1.0], [14.0])
    """

    def __init__(self) -> None:
        self._stats = np.zeros(3)
        self._refresh()

    def vector(self) -> np.ndarray:
        return self._stats.copy()

    def set_vector(self, v: np.ndarray) -> None:
        if v.shape != (3,):
            raise ValueError(f"target statistics must have shape (3,), got {v.shape}")
        self._stats[:] = v
        self._refresh()

    def _refresh(self) -> None:
        n, mean, m2 = (float(x) for x in self._stats)
        std = float(np.sqrt(m2 / n)) if n > 0 else 0.0
        # A constant target so far (or none): centre only.
        self._scale = std if std > _RELATIVE_STD_FLOOR * (1.0 + abs(mean)) else 1.0
        self._mean = mean

    def learn_many(self, y: np.ndarray) -> Self:
        y = np.asarray(y, dtype=np.float64)
        nb = float(len(y))
        if nb == 0:
            return self
        mb = float(y.mean())
        dev = y - mb
        m2b = float(dev @ dev)
        n, mean, m2 = (float(x) for x in self._stats)
        total = n + nb
        delta = mb - mean
        self._stats[:] = (
            total,
            mean + delta * (nb / total),
            m2 + m2b + delta * delta * n * nb / total,
        )
        self._refresh()
        return self

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self._mean) / self._scale

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self._scale + self._mean

    @property
    def scale(self) -> float:
        """What :meth:`inverse` multiplies by."""
        return self._scale

    def _params(self) -> dict[str, Any]:
        return {}

    def _state(self) -> tuple[Arrays, Meta]:
        return {"stats": self._stats}, {}

    def _load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self._stats = check_array(arrays, "stats", (3,))
        self._refresh()


class Pipeline(Stateful):
    """A :class:`FeatureTransform` in front of a model, with the model's interface: the
    trainer and the predictor treat it as the model (raw features in, NaN for missing).

    ``learn_many`` updates the statistics with the batch, then takes the model's step on
    the batch transformed with them; the trainer calls the two halves (:meth:`observe`,
    :meth:`fit`) itself when it mixes replayed samples into a step, which must not count
    twice in the statistics.
    """

    def __init__(
        self, features: FeatureTransform, model: Any, target: TargetScaler | None = None
    ) -> None:
        if features.n_features != model.n_features:
            raise ValueError(
                f"a pipeline of {features.n_features} columns cannot feed a model of "
                f"{model.n_features} features"
            )
        self.features = features
        self.model = model
        #: Standardises a regression model's target (None: the model learns ``y`` as it is).
        self.target = target
        #: Training samples this pipeline has learnt from (since it was built: a reset
        #: starts again at 0); the trainer sizes a young model's batches by it.
        self.samples_learnt = 0

    # The attributes the trainer reads on any model.
    @property
    def n_features(self) -> int:
        return int(self.model.n_features)

    @property
    def sample_width(self) -> int:
        """Values of one training sample's row: its features (:class:`FeedbackPipeline`:
        more)."""
        return self.n_features

    def set_learning_rate(self, lr: float) -> None:
        self.model.set_learning_rate(lr)

    @property
    def last_grad_norm(self) -> float:
        return float(self.model.last_grad_norm)

    @property
    def clip_grad_norm(self) -> float | None:
        return self.model.clip_grad_norm

    def adopt(self, saved: Pipeline, source: np.ndarray) -> None:
        """Take over what ``saved`` learnt, its columns renamed into this pipeline's
        (``source``: :func:`remap_columns` of the two name lists): each kept feature's
        coefficients, optimizer buffers and statistics move to its new column, a new
        feature starts at weight 0 with no statistics. The model comes as it was saved
        (its optimizer, penalties, members); this pipeline's configuration (clip,
        defaults) applies."""
        self.features.take_statistics(saved.features, source)
        self.model = saved.model.with_columns(source)
        if self.target is not None and saved.target is not None:
            self.target.set_vector(saved.target.vector())
        self.samples_learnt = saved.samples_learnt

    @property
    def takes_sparse(self) -> bool:
        """Whether sparse rows (a hashed model's) are learnt and scored sparse: a model that
        takes them (the linear types) behind a scaling that keeps zeros zero. Otherwise
        they are made dense first (trees, bandits, "standard" scaling), batch by batch."""
        return self.features.keeps_zeros and getattr(self.model, "takes_sparse", False)

    def _rows(self, X: Any) -> Any:
        """``X`` as this pipeline computes on it (:attr:`takes_sparse`)."""
        return X if self.takes_sparse else as_dense(X)

    def observe(self, X: Rows, y: Any) -> None:
        """Learn the statistics of a batch of training data."""
        self.features.learn_many(self._rows(X))
        if self.target is not None:
            self.target.learn_many(y)
        self.samples_learnt += len(X)

    def fit(self, X: Rows, y: Any) -> Self:
        """The model's step on a batch, transformed with the current statistics."""
        if self.target is not None:
            y = self.target.transform(y)
        self.model.learn_many(self.features.transform_many(self._rows(X)), y)
        return self

    def learn_many(self, X: Rows, y: Any) -> Self:
        self.observe(X, y)
        return self.fit(X, y)

    def loss_many(self, X: Rows, y: Any) -> np.ndarray:
        return self.test_many(X, y, predict=False)[0]

    def test_many(
        self, X: Rows, y: Any, predict: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The trainer's test step on a batch: :meth:`loss_many` and, when ``predict``,
        :meth:`predict_many` (None otherwise), the features transformed once."""
        if self.target is not None:  # the squared error in the target's own units
            predicted = self.predict_many(X)
            error = predicted - np.asarray(y, dtype=np.float64)
            return error * error, predicted if predict else None
        Z = self.features.transform_many(self._rows(X))
        if not predict:
            return self.model.loss_many(Z, y), None
        losses, predicted = self.model.test_many(Z, y)
        return losses, predicted

    def predict_many(self, X: Rows) -> np.ndarray:
        out = self.model.predict_many(self.features.transform_many(self._rows(X)))
        return out if self.target is None else self.target.inverse(out)

    def predict_proba_many(self, X: Rows) -> np.ndarray:
        return self.model.predict_proba_many(self.features.transform_many(self._rows(X)))

    def contributions_many(self, X: Rows) -> Contributions:
        """The linear model's ``contributions_many`` of the transformed features (filled,
        centred, scaled, clipped: what the model saw), in the target's own units when the
        target is scaled. AttributeError for a model that is not linear."""
        explain = self.model.contributions_many
        c = explain(self.features.transform_many(as_dense(X)))
        if self.target is None:
            return c
        # The prediction is ``score * scale + mean``: each share scales, the mean joins the base.
        return c._replace(
            per_feature=c.per_feature * self.target.scale, base=self.target.inverse(c.base)
        )

    def weights_vector(self) -> np.ndarray:
        """The model's serving parameters, then the pipeline's statistics: the features'
        (3 x n_features), then the target's (3) when it is scaled."""
        parts = [self.model.weights_vector(), self.features.vector()]
        if self.target is not None:
            parts.append(self.target.vector())
        return np.concatenate(parts)

    def set_weights_vector(self, v: np.ndarray) -> None:
        n_target = 0 if self.target is None else 3
        n_model = len(v) - 3 * self.features.n_features - n_target
        if n_model < 0:
            raise ValueError(f"weights vector of {len(v)} values is too short for the pipeline")
        self.model.set_weights_vector(v[:n_model])
        end = len(v) - n_target
        self.features.set_vector(np.asarray(v[n_model:end], dtype=np.float64))
        if self.target is not None:
            self.target.set_vector(np.asarray(v[end:], dtype=np.float64))

    def spec(self) -> dict[str, Any]:
        config = {**self.features.spec(), "target": "none" if self.target is None else "standard"}
        return {**self.model.spec(), "pipeline": config}

    def _params(self) -> dict[str, Any]:
        return {"features": self.features._params(), "model": self.model._params()}

    def state_dict(self) -> tuple[Arrays, Meta]:
        model_arrays, model_meta = self.model.state_dict()
        feature_arrays, feature_meta = self.features.state_dict()
        arrays = {f"model.{k}": v for k, v in model_arrays.items()}
        arrays.update({f"features.{k}": v for k, v in feature_arrays.items()})
        meta = {
            "class": Pipeline.__name__,  # one state layout for every pipeline
            "model": model_meta,
            "features": feature_meta,
            "samples_learnt": self.samples_learnt,
        }
        if self.target is not None:
            arrays["target.stats"] = self.target.vector()
        return arrays, meta

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` saved into this pipeline: the model as it was saved
        (optimizer included), the feature statistics into this pipeline's configuration
        (a spec's new clip or defaults take effect; its columns must be the saved ones)."""
        if meta.get("class") != Pipeline.__name__:
            raise StateMismatch(f"state of a {meta.get('class')!r} cannot load into a Pipeline")
        try:
            self.model.load_state_dict(*split_state(arrays, meta, "model"))
            self.features._load_state(*split_state(arrays, meta, "features"))
            self.samples_learnt = int(meta["samples_learnt"])
            if self.target is not None:
                # A pipeline saved without target scaling starts its statistics empty.
                stats = arrays.get("target.stats")
                self.target.set_vector(np.zeros(3) if stats is None else np.asarray(stats))
        except KeyError as exc:
            raise ValueError(f"corrupt Pipeline state: {exc!r}") from exc


class FeedbackPipeline(Pipeline):
    """A contextual bandit (:mod:`flowlearn.core.bandits`) behind its feature pipeline,
    trained on *feedback rows*: the context's ``n_features`` values, then the chosen action
    (its index, or its ``n_action_features`` features), then the propensity it was chosen
    with; the label is the reward. That is how a bandit's samples travel through the job
    (:func:`flowlearn.contracts.records.parse_event` appends the action and propensity of
    the choice to the context), so the trainer, its buffers and its state handle them as any
    model's rows. Only the context is filled, scaled and clipped by the pipeline.

    >>> from flowlearn.core.bandits import ContextualBandit
    >>> p = FeedbackPipeline(FeatureTransform(2), ContextualBandit(2, n_actions=3))
    >>> rows = np.array([[0.5, 1.0, 2.0, 0.25], [1.5, -1.0, 0.0, 0.5]])
    >>> p.sample_width, p.learn_many(rows, np.array([1.0, 0.0])).samples_learnt
    (4, 2)
    """

    @property
    def sample_width(self) -> int:
        return self.n_features + (self.model.n_action_features or 1) + 1

    def split_feedback(self, X: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feedback rows (dense, or sparse: a hashed context's) as (contexts, chosen
        actions, propensities), dense."""
        rows = np.asarray(as_dense(X), dtype=np.float64)
        width = self.sample_width
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(
                f"feedback rows must have shape (n, {width}): {self.n_features} context "
                f"values, the action, the propensity; got {rows.shape}"
            )
        d, n_action = self.n_features, self.model.n_action_features
        actions = rows[:, d : d + n_action] if n_action else rows[:, d]
        return rows[:, :d], actions, rows[:, -1]

    def observe(self, X: Rows, y: Any) -> None:
        contexts, _, _ = self.split_feedback(X)
        super().observe(contexts, y)

    def fit(self, X: Rows, y: Any) -> Self:
        contexts, actions, propensities = self.split_feedback(X)
        self.model.learn_many(self.features.transform_many(contexts), actions, y, propensities)
        return self

    def test_many(
        self, X: Rows, y: Any, predict: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The trainer's test step: :meth:`loss_many` and, when ``predict``,
        :meth:`predict_many`."""
        return self.loss_many(X, y), self.predict_many(X) if predict else None

    def loss_many(self, X: Rows, y: Any) -> np.ndarray:
        """Squared error of the posterior mean reward of each row's chosen action."""
        contexts, actions, _ = self.split_feedback(X)
        return self.model.loss_many(self.features.transform_many(contexts), actions, y)

    def predict_many(self, X: Rows) -> np.ndarray:
        """The posterior mean reward of each row's chosen action."""
        contexts, actions, _ = self.split_feedback(X)
        return self.model.taken_mean_rewards(self.features.transform_many(contexts), actions)

    def choose_many(self, contexts: Rows, actions: Any = None, *, seeds: Any) -> Any:
        """The bandit's :meth:`~flowlearn.core.bandits.ContextualBandit.choose_many` for
        raw contexts (filled, scaled and clipped first)."""
        Z = self.features.transform_many(as_dense(contexts))
        return self.model.choose_many(Z, actions, seeds=seeds)

    def adopt(self, saved: Pipeline, source: np.ndarray) -> None:
        raise ValueError("a contextual bandit's features cannot be renamed: create it again")


def statistics_size(n_features: int, config: Mapping[str, Any]) -> int:
    """How many floats of a published weights vector are a pipeline's statistics (its
    published ``config``: :meth:`Pipeline.spec`'s ``"pipeline"``)."""
    return 3 * n_features + (3 if config.get("target") == "standard" else 0)


def servable(
    n_features: int, config: Mapping[str, Any], statistics: np.ndarray
) -> tuple[FeatureTransform, TargetScaler | None]:
    """The transform and target scaler of a published version, from its ``config`` and
    the statistics at the end of its weights vector."""
    if statistics.shape != (statistics_size(n_features, config),):
        raise ValueError(
            f"pipeline statistics of shape {statistics.shape} for {n_features} features"
        )
    features = FeatureTransform.from_spec(n_features, config)
    features.set_vector(np.asarray(statistics[: 3 * n_features], dtype=np.float64))
    target = None
    if config.get("target") == "standard":
        target = TargetScaler()
        target.set_vector(np.asarray(statistics[3 * n_features :], dtype=np.float64))
    return features, target


def split_state(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], part: str
) -> tuple[dict[str, np.ndarray], Any]:
    """The arrays and meta of one part ("model" or "features") of a pipeline's state."""
    prefix = f"{part}."
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}, meta[part]


def remap_columns(old: Sequence[str], new: Sequence[str]) -> np.ndarray:
    """For each new column, the old column of the same feature name (-1: a new feature).

    >>> remap_columns(["a", "b"], ["b", "c", "a"]).tolist()
    [1, -1, 0]
    """
    where = {name: i for i, name in enumerate(old)}
    return np.array([where.get(name, -1) for name in new], dtype=np.int64)


def take_columns(a: np.ndarray, source: np.ndarray, fill: float, axis: int = 0) -> np.ndarray:
    """``a`` with its rows (or, ``axis=1``, columns) rearranged by :func:`remap_columns`'s
    ``source``; new ones filled with ``fill``."""
    moved = np.moveaxis(a, axis, 0)
    out = np.full((len(source), *moved.shape[1:]), fill, dtype=np.float64)
    keep = source >= 0
    out[keep] = moved[source[keep]]
    return np.moveaxis(out, 0, axis)
