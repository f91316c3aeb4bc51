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
from collections.abc import Mapping
from typing import Any

from flowlearn.conf import ConfigError, Settings
from flowlearn.conf.loader import build_table
from flowlearn.core.spec import ModelSpec, SpecError


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


class ModelSpecs:
    """The specs a configuration gives its models; built once per process (operators build
    it in ``open``), it raises :class:`ConfigError` for the first bad spec."""

    def __init__(self, settings: Settings) -> None:
        self.policy = settings.job.unknown_model_policy

        def read(table: Mapping[str, Any], where: str) -> ModelSpec:
            # A spec's batch_size 0 is the job's: resolved here, once, so that every
            # reader (the trainer cutting batches, a published spec) sees the same number.
            spec = read_spec(table, where)
            return dataclasses.replace(spec, batch_size=spec.batch_size or settings.job.batch_size)

        self.defaults = read(settings.model_defaults, "model_defaults")
        self.models = {
            model_id: read(table, f"models.{model_id}")
            for model_id, table in settings.models.items()
        }
        self._dicts: dict[str, dict[str, Any]] | None = None
        self._default_dict: dict[str, Any] | None = None

    def model_spec(self, model_id: str) -> ModelSpec | None:
        """The spec for ``model_id``; None when unknown and the policy says DLQ."""
        if model_id in self.models:
            return self.models[model_id]
        return self.defaults if self.policy == "create" else None

    def spec_of(self, model_id: str) -> ModelSpec:
        """The spec a model trains with: its own, else the defaults (a model that the "dlq"
        policy refuses never gets this far)."""
        return self.model_spec(model_id) or self.defaults

    def dict_of(self, model_id: str) -> dict[str, Any] | None:
        """:meth:`model_spec` as a dict, made once (the parsers ask for every record)."""
        if self._dicts is None:
            self._dicts = {m: s.as_dict() for m, s in self.models.items()}
            self._default_dict = self.defaults.as_dict() if self.policy == "create" else None
        return self._dicts.get(model_id, self._default_dict)
