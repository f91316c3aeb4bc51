"""Model specs from the settings: the ``[model_defaults]`` and ``[models.ID]`` tables read
as :class:`flowlearn.core.spec.ModelSpec` and validated, with errors that name the setting.

>>> from flowlearn.conf import load_settings
>>> specs = ModelSpecs(load_settings(env={}))
>>> specs.spec_of("demo").n_features
10
>>> specs.spec_of("demo").batch_size  # 0 in the spec: job.batch_size
64
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from flowlearn.conf import ConfigError, Settings
from flowlearn.conf.loader import build_table
from flowlearn.core.spec import LIVE_FIELDS, ModelSpec, SpecError, model_id_problem
from flowlearn.core.training import ModelTrainer


def read_spec(table: Mapping[str, Any], where: str) -> ModelSpec:
    """One spec table, typed and validated (:class:`ConfigError` naming ``where.field``);
    a table that names its features (classes) and not their number has ``n_features``
    (``n_classes``) = the names'."""
    if "feature_names" in table and "n_features" not in table:
        names = table["feature_names"]
        table = {**table, "n_features": len(names) if isinstance(names, list | tuple) else 0}
    names = table.get("class_names")
    if isinstance(names, list | tuple) and "n_classes" not in table:
        table = {**table, "n_classes": len(names)}
    spec: ModelSpec = build_table(ModelSpec, table, where)
    try:
        spec.validate(where)
    except SpecError as exc:
        raise ConfigError(str(exc)) from None
    return spec


#: A model's runtime entry after ``delete``: the model is unknown again (its records follow
#: ``job.unknown_model_policy``), whatever ``conf/`` says of it.
DELETED = ""


def create_applies(entry: str | None, created: str) -> bool | None:
    """Whether a ``create`` giving the runtime entry ``created`` applies to a model whose
    runtime entry is ``entry``: True, or None when the model already has this spec, or
    False when it has another. One rule for the trainer and the parsers, on what both see
    alike (the entries, in the order of the model's commands): a model without a live entry
    (never created, or deleted) takes the new spec, whatever it trained under ``conf/``.

    Fields an entry lacks count as their defaults: an entry stored before a version of
    flowlearn added a spec field is the same spec as a ``create`` of that version that
    leaves the field at its default.

    >>> create_applies(None, "{}"), create_applies("{}", "{}"), create_applies('{"a": 1}', "{}")
    (True, None, False)
    >>> create_applies('{"type": "logistic"}', '{"type": "logistic", "n_actions": 0}')
    """
    if not entry:  # None, or DELETED
        return True
    return None if entry == created or _filled(entry) == _filled(created) else False


def _filled(entry: str) -> dict[str, Any]:
    """A runtime entry's spec with the fields it lacks at their defaults."""
    return {**ModelSpec().as_dict(), **json.loads(entry)}


class ModelSpecs:
    """The specs a configuration gives its models; built once per process (operators build
    it in ``open``), it raises :class:`ConfigError` for the first bad spec or model id.

    A model created at runtime (the ``create`` command) has a *runtime entry*: its spec as
    JSON (:meth:`runtime_entry`), or :data:`DELETED` once deleted. The job keeps these in
    its state; every lookup takes the model's entry (None: it has none) and the entry wins
    over ``conf/``.
    """

    def __init__(self, settings: Settings) -> None:
        self.policy = settings.job.unknown_model_policy
        self.job_batch_size = settings.job.batch_size
        for model_id in settings.models:
            problem = model_id_problem(model_id)
            if problem is not None:
                raise ConfigError(f"models.{model_id}: {problem}")
        self.defaults = self.read(settings.model_defaults, "model_defaults")
        self.models = {
            model_id: self.read(table, f"models.{model_id}")
            for model_id, table in settings.models.items()
        }
        self._dicts: dict[str, dict[str, Any]] | None = None
        self._default_dict: dict[str, Any] | None = None

    def read(self, table: Mapping[str, Any], where: str) -> ModelSpec:
        """A spec table as the job trains it: validated (:func:`read_spec`), its
        ``batch_size`` 0 resolved to ``job.batch_size`` here, once, so that every reader
        (the trainer cutting batches, a published spec) sees the same number."""
        spec = read_spec(table, where)
        return dataclasses.replace(spec, batch_size=spec.batch_size or self.job_batch_size)

    def runtime_entry(self, table: Mapping[str, Any], where: str = "spec") -> str:
        """The runtime entry of a model created with spec ``table`` (:class:`ConfigError`
        naming ``where.field`` when it is not a valid spec).

        >>> from flowlearn.conf import load_settings
        >>> specs = ModelSpecs(load_settings(env={}))
        >>> entry = specs.runtime_entry({"type": "linear", "n_features": 3})
        >>> specs.spec_of("m", entry).n_features, specs.spec_of("m", entry).batch_size
        (3, 64)
        >>> specs.runtime_entry({"n_features": -3})
        Traceback (most recent call last):
        ...
        flowlearn.conf.settings.ConfigError: spec.n_features must be > 0, got -3
        """
        spec = self.read(table, where).as_dict()
        # The door through which a record's spec comes in (create, update, inferred): what
        # validates and still cannot be built or saved (a learning rate that the self-tuning
        # grid takes past float64, an infinite l2) would fail the trainer on every replay.
        try:
            ModelTrainer.create("spec-check", spec).state_bytes()
        except (ValueError, TypeError, ArithmeticError) as exc:  # CodecError included
            raise ConfigError(f"{where}: no model can be built from it: {exc}") from None
        return json.dumps(spec, sort_keys=True)

    def inferred_entry(self, features: Any) -> str | None:
        """The runtime entry ``job.unknown_model_policy = "infer"`` gives a new model whose
        first record has ``features``: ``[model_defaults]`` with, for dense features, the
        list's length or the map's names (in their order); None when the features show no
        shape (an empty list, a value of another kind).

        >>> from flowlearn.conf import load_settings
        >>> specs = ModelSpecs(load_settings(env={}))
        >>> spec = specs.spec_of("m", specs.inferred_entry({"age": 41, "spend": 9.5}))
        >>> spec.n_features, spec.feature_names
        (2, ('age', 'spend'))
        >>> specs.spec_of("m", specs.inferred_entry([0.5] * 8)).n_features
        8
        """
        table = self.defaults.as_dict()
        if self.defaults.features == "dense":
            if isinstance(features, list) and features:
                names: list[str] = []
            elif isinstance(features, dict) and features:
                names = [str(name) for name in features]
            else:
                return None
            n = len(names) or len(features)
            table.update(n_features=n, feature_names=names, feature_defaults={})
        try:
            return self.runtime_entry(table, "inferred spec")
        except ConfigError:
            return None

    def updated_entry(
        self, current: ModelSpec, changes: Mapping[str, Any], where: str = "changes"
    ) -> str:
        """The runtime entry of a model of spec ``current`` after ``changes``: only
        :data:`flowlearn.core.spec.LIVE_FIELDS` may change (:class:`ConfigError` naming the
        field otherwise, or when the result is not a valid spec).

        >>> from flowlearn.conf import load_settings
        >>> specs = ModelSpecs(load_settings(env={}))
        >>> entry = specs.updated_entry(specs.defaults, {"learning_rate": 0.2})
        >>> specs.spec_of("m", entry).learning_rate
        0.2
        >>> specs.updated_entry(specs.defaults, {"n_features": 4})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        flowlearn.conf.settings.ConfigError: changes.n_features: cannot change while the ...
        """
        for name in changes:
            if name not in LIVE_FIELDS:
                raise ConfigError(
                    f"{where}.{name}: cannot change while the model runs (an update with "
                    f"reset starts it again under the new spec); live fields: "
                    f"{', '.join(sorted(LIVE_FIELDS))}"
                )
        return self.runtime_entry({**current.as_dict(), **changes}, where)

    def reset_entry(
        self,
        model_id: str,
        runtime: str | None,
        changes: Mapping[str, Any],
        live: Mapping[str, Any] | None = None,
    ) -> str | None:
        """The runtime entry of ``model_id`` after an ``update`` with ``reset``: its spec
        (from its runtime entry ``runtime`` and its ``live`` changes) with ``changes``, any
        field included; None when the model has no spec (:meth:`model_spec`).
        :class:`ConfigError` names the field when the result is not a valid spec.

        The parsers call it without ``live`` (they keep no live changes): live fields are
        valid on their own, so both get the same shape and the same verdict.

        >>> from flowlearn.conf import load_settings
        >>> specs = ModelSpecs(load_settings(env={}))
        >>> entry = specs.reset_entry("demo", None, {"feature_names": ["a", "b"]})
        >>> specs.spec_of("demo", entry).n_features  # a count that names gave follows them
        2
        """
        spec = self.model_spec(model_id, runtime)
        if spec is None:
            return None
        table = {**spec.as_dict(), **(live or {}), **changes}
        # Fields that follow from others unless given: the count from the names, the
        # names (and defaults by name) dropped with a new shape or kind of features.
        for derived, source in (("n_features", "feature_names"), ("n_classes", "class_names")):
            if source in changes and derived not in changes:
                del table[derived]
        if ("n_features" in changes or "features" in changes) and "feature_names" not in changes:
            table["feature_names"] = []
            if "feature_defaults" not in changes:
                table["feature_defaults"] = {}
        if ("n_classes" in changes or "type" in changes) and "class_names" not in changes:
            table["class_names"] = []
        return self.runtime_entry(table, "changes")

    def check_field_names(self, changes: Mapping[str, Any], where: str) -> None:
        """:class:`ConfigError` for the first name in ``changes`` that is no spec field."""
        known = {f.name for f in dataclasses.fields(ModelSpec)}
        for name in changes:
            if name not in known:
                raise ConfigError(f"{where}.{name}: not a spec field; known: {sorted(known)}")

    def model_spec(self, model_id: str, runtime: str | None = None) -> ModelSpec | None:
        """The spec for ``model_id`` given its runtime entry; None when it is unknown and
        the policy says DLQ."""
        if runtime:
            return self.read(json.loads(runtime), f"runtime spec of {model_id}")
        if runtime is None and model_id in self.models:
            return self.models[model_id]
        # "infer": none until the model's first record has fixed one (inferred_entry).
        return self.defaults if self.policy == "create" else None

    def spec_of(self, model_id: str, runtime: str | None = None) -> ModelSpec:
        """The spec a model trains with: :meth:`model_spec`, else the defaults (a model
        that the "dlq" policy refuses never gets this far)."""
        return self.model_spec(model_id, runtime) or self.defaults

    def dict_of(self, model_id: str) -> dict[str, Any] | None:
        """:meth:`model_spec` of a model without a runtime entry as a dict, made once (the
        parsers ask for every record)."""
        if self._dicts is None:
            self._dicts = {m: s.as_dict() for m, s in self.models.items()}
            self._default_dict = self.defaults.as_dict() if self.policy == "create" else None
        return self._dicts.get(model_id, self._default_dict)
