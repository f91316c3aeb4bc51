"""The model spec: what the trainer builds for one model id, with its validation.

A spec is written as a table in the configuration (``[model_defaults]``, ``[models.ID]``;
:mod:`flowlearn.contracts.spec` reads it from the settings) or as a plain dict, and travels
with every published version as JSON.

>>> ModelSpec(type="softmax", n_features=4, n_classes=3).validate("models.m")
>>> ModelSpec(type="tree").validate("m")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
flowlearn.core.spec.SpecError: m.type: unknown model type 'tree'; known: auto_linear, ..., softmax
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flowlearn.core.bandits import ContextualBandit
from flowlearn.core.ensemble import DEFAULT_RATE_FACTORS
from flowlearn.core.model_types import model_type
from flowlearn.core.monitoring import ALL_DETECTORS
from flowlearn.core.optim import SPEC_OPTIMIZERS


class SpecError(ValueError):
    """A spec field has a value the model cannot be built with; the message names it."""


#: A model id goes into Redis keys, MLflow model names, metric labels and file names: 1 to
#: :data:`MODEL_ID_MAX` of these characters, nothing that needs escaping anywhere.
MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
MODEL_ID_MAX = 200


def model_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a model id, or None when it can.

    >>> model_id_problem("fraud-eu.v2") is None
    True
    >>> model_id_problem("fraud eu")
    "'fraud eu' has characters outside [A-Za-z0-9._-]"
    """
    if not isinstance(value, str):
        return f"a model id is a string, got {type(value).__name__}"
    if not value:
        return "a model id cannot be empty"
    if MODEL_ID_PATTERN.fullmatch(value) is None:
        shown = value[:60].encode("ascii", "backslashreplace").decode("ascii")
        return f"{shown!r} has characters outside [A-Za-z0-9._-]"
    if len(value) > MODEL_ID_MAX:  # ASCII by now: as many bytes as characters
        return f"a model id has at most {MODEL_ID_MAX} characters, got {len(value)}"
    return None


#: The spec fields a running model can change (the ``update`` command): how it trains and how
#: it is watched. The others (its type, its features, its pipeline) make another model: a
#: record that fits the one need not fit the other, and the weights would not carry over.
LIVE_FIELDS = frozenset(
    {
        "learning_rate",
        "batch_size",
        "detectors",
        "drift_action",
        "auto_rollback",
        "holdout_size",
        "holdout_margin",
        "replay_size",
        "replay_fraction",
    }
)


def _check_positive(where: str, value: float) -> None:
    if value <= 0:
        raise SpecError(f"{where} must be > 0, got {value}")


@dataclass(frozen=True)
class ModelSpec:
    """What the trainer builds for one model id.

    ``features = "dense"`` takes lists of ``n_features`` numbers, or ``{name: value}`` maps
    when ``feature_names`` names the columns; ``"hashed"`` takes ``{name: value}`` maps
    hashed into ``n_features`` columns with ``hash_seed`` (a string value is a one-hot
    token ``name=value``). The feature pipeline (:mod:`flowlearn.core.pipeline`) then fills
    missing values, scales and clips, on statistics learnt from the training data.
    """

    type: str = "logistic"
    n_features: int = 10
    features: Literal["dense", "hashed"] = "dense"
    hash_seed: int = 0
    #: Names of a dense model's columns, in order (``n_features`` is their number): records
    #: may then give ``features`` as a ``{name: value}`` map. Unknown names are counted.
    feature_names: tuple[str, ...] = ()
    #: "auto": "standard" for dense features, "rms" for hashed ones; or "standard", "rms",
    #: "none" (:mod:`flowlearn.core.pipeline`).
    scale: Literal["auto", "standard", "rms", "none"] = "auto"
    #: A missing dense feature (absent from a map, or null): "impute" takes its value from
    #: ``feature_defaults``, else the running mean; "dlq" sends the record to the dead letters.
    missing: Literal["impute", "dlq"] = "impute"
    #: Values for missing features, by name (or by column index for unnamed columns).
    feature_defaults: dict[str, float] = field(default_factory=dict)
    #: Scaled values are cut to ``[-clip, clip]`` (an outlier guard; 0: off).
    clip: float = 0.0
    #: A regression model's target: "auto" (standardised for regression), "standard" or
    #: "none" (learnt as it is).
    target_scale: Literal["auto", "standard", "none"] = "auto"
    n_classes: int = 2
    #: Names of a classifier's classes, in order (``n_classes`` is their number): labels may
    #: then be given by name, and the predictor answers with the predicted class's name.
    class_names: tuple[str, ...] = ()
    #: One of :data:`flowlearn.core.optim.SPEC_OPTIMIZERS`.
    optimizer: str = "sgd"
    #: 0: the measured default of the optimizer for the model's task
    #: (:func:`default_learning_rate`).
    learning_rate: float = 0.0
    #: A self-tuning type's (``auto_*``) members' learning rates; empty: the learning
    #: rate (or its default) times :data:`flowlearn.core.ensemble.DEFAULT_RATE_FACTORS`.
    learning_rates: tuple[float, ...] = ()
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
    # A tree type's parameters (:mod:`flowlearn.core.trees`; docs/models.md). 0 takes the
    # type's default, which differs between a single tree and a forest's trees.
    #: Trees of a ``random_forest`` (default 10).
    n_trees: int = 0
    #: Weight a leaf sees between two split attempts (tree 200, forest 50).
    grace_period: int = 0
    #: The Hoeffding bound's delta: a split is taken when its gain beats the runner-up's
    #: by the bound at this confidence (tree 1e-7, forest 0.01).
    split_confidence: float = 0.0
    #: Split anyway once the bound is below this (the two best are tied; default 0.05).
    tie_threshold: float = 0.0
    #: Deepest a tree grows (0: only ``max_nodes`` bounds it).
    max_depth: int = 0
    #: Nodes per tree, the memory bound: a full tree's leaves stop splitting (tree 1023,
    #: forest 255).
    max_nodes: int = 0
    #: Features a leaf considers for its split (tree: all; forest: sqrt(n_features)).
    max_features: int = 0
    #: A forest's online bagging: each sample weighs Poisson(poisson_lambda) in each tree
    #: (default 6).
    poisson_lambda: float = 0.0
    #: A leaf's prediction: "nba" (naive Bayes while it beats the majority class, the
    #: default) or "mc" (the majority class); "": the default.
    leaf_prediction: Literal["", "nba", "mc"] = ""
    # A contextual bandit's parameters (:mod:`flowlearn.core.bandits`; docs/bandits.md).
    #: How it chooses: "thompson", "linucb" or "epsilon_greedy".
    policy: Literal["thompson", "linucb", "epsilon_greedy"] = "thompson"
    #: Listed actions (a regression each); or 0, with ``n_action_features``.
    n_actions: int = 0
    #: Features of an action given per request (one shared regression); or 0.
    n_action_features: int = 0
    #: LinUCB's bonus, in posterior standard deviations of the mean reward.
    alpha: float = 1.0
    #: Share of uniformly random choices mixed into the policy (0: the policy's default,
    #: 0.05 for epsilon_greedy, none for the others).
    epsilon: float = 0.0
    #: The prior's precision (in units of the noise's).
    prior_precision: float = 1.0
    #: The reward's noise variance (0: estimated from the residuals, per action).
    noise_variance: float = 0.0
    #: Thompson's posterior draws per choice (its propensity is their winners' share).
    propensity_draws: int = 256
    #: ``[lo, hi]``: rewards outside are refused.
    reward_range: tuple[float, float] = (0.0, 1.0)
    #: Feedback with a smaller propensity is refused.
    min_propensity: float = 0.001

    def as_dict(self) -> dict[str, Any]:
        spec = dataclasses.asdict(self)
        spec["detectors"] = list(self.detectors)
        spec["learning_rates"] = list(self.learning_rates)
        spec["feature_names"] = list(self.feature_names)
        spec["class_names"] = list(self.class_names)
        spec["reward_range"] = list(self.reward_range)
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
        # Before anything is built (the bandit's and the tree's checks below build one).
        self._validate_size(where, kind.bandit, kind.multiclass)
        if self.class_names:
            n_classes = self.n_classes if kind.multiclass else 2
            if not kind.classifier:
                raise SpecError(f"{where}.class_names: a {self.type} model has no classes")
            if len(self.class_names) != n_classes or len(set(self.class_names)) != n_classes:
                raise SpecError(
                    f"{where}.class_names: {n_classes} unique names needed, got "
                    f"{list(self.class_names)}"
                )
        if not (self.learning_rate >= 0 and math.isfinite(self.learning_rate)):
            raise SpecError(
                f"{where}.learning_rate: must be > 0 (or 0: the default), got {self.learning_rate}"
            )
        if self.learning_rates:
            if not kind.self_tuning:
                raise SpecError(
                    f"{where}.learning_rates: only a self-tuning type (auto_*) trains at "
                    f"several rates; a {self.type} model has learning_rate"
                )
            try:
                rates = [float(lr) for lr in self.learning_rates]
            except ValueError:
                rates = [math.nan]
            if not all(lr > 0 and math.isfinite(lr) for lr in rates):
                raise SpecError(
                    f"{where}.learning_rates: must all be > 0, got {list(self.learning_rates)}"
                )
        self._validate_model_params(where, kind.tree, kind.bandit)
        if self.target_scale == "standard" and kind.task != "regression":
            raise SpecError(f"{where}.target_scale: only a regression model scales its target")
        if self.target_scale == "standard" and kind.tree:
            raise SpecError(
                f"{where}.target_scale: a {self.type} averages raw targets in its leaves (a "
                "scale that moves with the stream would mix units); leave it auto or none"
            )
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
        if self.feature_names:
            if self.features != "dense":
                raise SpecError(f"{where}.feature_names: only a dense model names its columns")
            if len(self.feature_names) != self.n_features:
                raise SpecError(
                    f"{where}.feature_names: {len(self.feature_names)} names for "
                    f"n_features = {self.n_features}"
                )
            if len(set(self.feature_names)) != len(self.feature_names):
                raise SpecError(f"{where}.feature_names: names must be unique")
        try:
            default_columns(self.feature_defaults, self.feature_names, self.n_features)
        except ValueError as exc:
            raise SpecError(f"{where}.feature_defaults: {exc}") from None
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise SpecError(f"{where}.clip: must be a finite number >= 0, got {self.clip}")
        unknown = set(self.detectors) - set(ALL_DETECTORS)
        if unknown:
            raise SpecError(
                f"{where}.detectors: unknown {sorted(unknown)}; known: {list(ALL_DETECTORS)}"
            )

    def _validate_size(self, where: str, bandit: bool, multiclass: bool) -> None:
        """The memory bound: the numbers the model's weights vector would hold, about,
        at most :data:`MAX_MODEL_WEIGHTS` (a linear model keeps three statistics a feature
        beside its weights; a bandit two matrices of its row's width squared an action)."""
        if bandit:
            width = self.n_features + max(self.n_action_features, 0) + 1
            size = 2 * width * width * max(self.n_actions, 1)
            name = "n_actions" if self.n_actions > width else "n_features"
        else:
            size = self.n_features * ((self.n_classes if multiclass else 1) + 3)
            name = "n_classes" if multiclass and self.n_classes > self.n_features else "n_features"
        if size > MAX_MODEL_WEIGHTS:
            raise SpecError(
                f"{where}.{name}: a {self.type} model of this size would hold more than "
                f"{MAX_MODEL_WEIGHTS:,} numbers ({MAX_MODEL_WEIGHTS * 8 // 2**20} MiB), the "
                "most a model may"
            )

    def _validate_model_params(self, where: str, tree: bool, bandit: bool) -> None:
        """A tree type takes tree parameters, a bandit its own, a linear type optimizer
        settings, and none the others' (a setting the model would ignore is a mistake worth
        naming)."""
        optimizer_fields = ("learning_rate", "learning_rates", "l1", "l2", "clip_grad_norm")
        family = "tree" if tree else "bandit" if bandit else "linear"
        ignored = {
            "tree": (*optimizer_fields, *BANDIT_FIELDS),
            "bandit": (*optimizer_fields, *TREE_FIELDS),
            "linear": (*TREE_FIELDS, *BANDIT_FIELDS),
        }[family]
        defaults = ModelSpec()
        for name in ignored:
            if getattr(self, name) != getattr(defaults, name):
                raise SpecError(f"{where}.{name}: a {self.type} model ({family}) has no {name}")
        if self.optimizer != defaults.optimizer and (tree or bandit):
            raise SpecError(f"{where}.optimizer: a {self.type} model ({family}) has no optimizer")
        if bandit:
            self._validate_bandit(where)
            return
        for name in TREE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):  # a choice, its values checked by the type
                continue
            if not (value >= 0 and math.isfinite(value)):
                raise SpecError(
                    f"{where}.{name}: must be >= 0 (0: the type's default), got {value}"
                )
        if self.split_confidence >= 1:
            raise SpecError(
                f"{where}.split_confidence: must be in (0, 1), got {self.split_confidence}"
            )
        if self.max_features > self.n_features:
            raise SpecError(
                f"{where}.max_features: at most n_features = {self.n_features}, "
                f"got {self.max_features}"
            )
        if self.n_trees and self.type != "random_forest":
            raise SpecError(f"{where}.n_trees: only a random_forest has several trees")
        if self.poisson_lambda and self.type != "random_forest":
            raise SpecError(f"{where}.poisson_lambda: only a random_forest bags its samples")
        if tree:
            self._validate_tree(where)

    def _validate_bandit(self, where: str) -> None:
        """The bandit's own checks (a parameter's range, one form of actions), naming the
        field."""
        try:
            ContextualBandit(self.n_features, **bandit_params(self.as_dict()))
        except ValueError as exc:
            name = next((f for f in BANDIT_FIELDS if str(exc).startswith(f)), "n_actions")
            raise SpecError(f"{where}.{name}: {exc}") from None

    def _validate_tree(self, where: str) -> None:
        """The tree's own checks (a parameter's range, an odd ``max_nodes``), and the
        memory bound: hashed features with every feature per leaf would not fit."""
        params = tree_params(self.as_dict())
        try:
            tree = model_type(self.type).build_tree(self.n_features, self.n_classes, **params)
        except ValueError as exc:
            name = next((f for f in TREE_FIELDS if f in str(exc)), "type")
            raise SpecError(f"{where}.{name}: {exc}") from None
        if tree.max_observer_bytes > MAX_TREE_OBSERVER_BYTES:
            raise SpecError(
                f"{where}.max_features: a {self.type} of {self.n_features} features could "
                f"hold {tree.max_observer_bytes / 2**20:,.0f} MiB of split statistics, more "
                f"than {MAX_TREE_OBSERVER_BYTES // 2**20} MiB: set max_features (the features "
                "a leaf considers) or a smaller max_nodes"
            )


#: The most numbers a model's weights may hold (float64: 1 GiB, half of what one state value,
#: a Java array, can take). The job keeps the model whole in its state: a spec beyond it
#: would fail the job on every replay of the record that made it.
MAX_MODEL_WEIGHTS = 1 << 27

#: The most a tree model's split statistics may take (every leaf still splitting).
MAX_TREE_OBSERVER_BYTES = 64 * 2**20

#: A tree type's parameters (spec fields named as the tree classes' constructor arguments).
TREE_FIELDS = (
    "n_trees",
    "grace_period",
    "split_confidence",
    "tie_threshold",
    "max_depth",
    "max_nodes",
    "max_features",
    "poisson_lambda",
    "leaf_prediction",
)


#: A contextual bandit's parameters (spec fields named as
#: :class:`~flowlearn.core.bandits.ContextualBandit`'s constructor arguments).
BANDIT_FIELDS = (
    "policy",
    "n_actions",
    "n_action_features",
    "alpha",
    "epsilon",
    "prior_precision",
    "noise_variance",
    "propensity_draws",
    "reward_range",
    "min_propensity",
)


def bandit_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A bandit spec's (dict, every key) constructor arguments besides ``n_features``:
    ``epsilon`` 0 takes the policy's default.

    >>> params = bandit_params({**ModelSpec(n_actions=3).as_dict(), "seed": 4})
    >>> params["n_actions"], params["epsilon"], params["seed"]
    (3, None, 4)
    """
    params = {name: spec[name] for name in BANDIT_FIELDS}
    params["epsilon"] = float(spec["epsilon"]) or None
    params["seed"] = int(spec["seed"])
    return params


def tree_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The tree parameters a spec (dict) sets, as constructor arguments: those it leaves at
    0 take the type's default.

    >>> tree_params({"type": "random_forest", "n_trees": 3, "grace_period": 0})
    {'n_trees': 3}
    """
    return {name: spec[name] for name in TREE_FIELDS if spec.get(name)}


def default_columns(
    defaults: Mapping[str, float], names: Sequence[str], n_features: int
) -> dict[int, float]:
    """``feature_defaults`` by column: keys are feature names, or column indices of unnamed
    columns; ValueError names a key that is neither, or a value that is not finite.

    >>> default_columns({"age": 40.0}, ["city_size", "age"], 2)
    {1: 40.0}
    """
    columns = {name: i for i, name in enumerate(names)}
    out: dict[int, float] = {}
    for key, value in defaults.items():
        col = columns.get(key)
        if col is None and not names and key.isdigit() and int(key) < n_features:
            col = int(key)
        if col is None:
            raise ValueError(f"{key!r} is not a feature of this model")
        if not math.isfinite(float(value)):
            raise ValueError(f"{key!r}: not a finite number ({value})")
        out[col] = float(value)
    return out


def pipeline_scale(spec: Mapping[str, Any]) -> str:
    """The scaling a spec (dict) asks for, "auto" resolved by its feature kind."""
    scale = str(spec.get("scale", "auto"))
    if scale == "auto":
        if model_type(spec.get("type", "logistic")).tree:
            return "none"  # a split's threshold is the same test on any monotone scale
        return "rms" if spec.get("features") == "hashed" else "standard"
    return scale


#: The default learning rate per optimizer and task, chosen on public streams (River's
#: synthetic generators and datasets, batches of 64 cut as the job cuts them, on
#: standardised features, a grid of rates against River's default pipeline;
#: docs/learning.md). A rate is the step of a full batch (:mod:`flowlearn.core.linear`);
#: the regression rates assume the standardised target (``target_scale``).
DEFAULT_LEARNING_RATES: dict[str, dict[str, float]] = {
    "sgd": {"binary": 0.5, "multiclass": 0.5, "regression": 0.1},
    "adagrad": {"binary": 0.3, "multiclass": 0.3, "regression": 0.1},
    "adam": {"binary": 0.03, "multiclass": 0.03, "regression": 0.01},
    "ftrl": {"binary": 1.0, "multiclass": 1.0, "regression": 0.3},
}


def default_learning_rate(type_name: str, optimizer: str) -> float:
    """The learning rate a spec with ``learning_rate = 0`` trains with.

    >>> default_learning_rate("logistic", "sgd")
    0.5
    """
    return DEFAULT_LEARNING_RATES[optimizer][model_type(type_name).task]


def learning_rates(spec: Mapping[str, Any]) -> list[float]:
    """The learning rate of each member a spec (dict with every key) trains: one for a plain
    type; for a self-tuning one its ``learning_rates``, else the learning rate (or its
    default) times :data:`~flowlearn.core.ensemble.DEFAULT_RATE_FACTORS`.

    >>> learning_rates({"type": "auto_logistic", "optimizer": "sgd", "learning_rate": 0.0,
    ...                 "learning_rates": []})
    [0.125, 0.25, 0.5, 1.0, 2.0]
    """
    rate = float(spec["learning_rate"]) or default_learning_rate(spec["type"], spec["optimizer"])
    if not model_type(spec["type"]).self_tuning:
        return [rate]
    return [float(r) for r in spec["learning_rates"]] or [rate * f for f in DEFAULT_RATE_FACTORS]


def target_scaled(spec: Mapping[str, Any]) -> bool:
    """Whether a spec (dict) standardises its target ("auto": a linear regression model
    does; a tree's leaves average raw targets, which a scale moving with the stream would
    mix)."""
    scale = spec.get("target_scale", "auto")
    if scale == "auto":
        kind = model_type(spec.get("type", "logistic"))
        return kind.task == "regression" and not kind.tree
    return bool(scale == "standard")
