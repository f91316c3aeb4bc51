"""A registered version as an MLflow pyfunc model, scored by the predictor's own code.

The registry (:mod:`flowlearn.registry.mlflow_store`) saves every version as a pyfunc
model whose ``loader_module`` is this module: its data folder holds the version's weights
(codec bytes) and published spec (JSON), nothing pickled. MLflow calls
:func:`_load_pyfunc` with that folder; :meth:`VersionModel.predict` reads the features as the
predictor does (:func:`flowlearn.serving.scoring.served_rows`), scores them with the predictor's
scorer (:func:`flowlearn.serving.scoring.scorer`) and names the classes as the predictor's
``labels`` do, so ``mlflow models serve -m models:/flowlearn-demo/3`` answers what the
predictor answers for that version, bit for bit.

Input: a pandas DataFrame whose columns are the spec's ``feature_names`` (or any
``{name: value}`` columns for a hashed model; an empty cell is an absent feature), a list
of such maps, or, for a dense model without names, rows of ``n_features`` numbers (an
array, or lists). Output: the predictor's ``predictions`` (an array: ``(n,)`` scores, or
``(n, k)`` class probabilities); for a classifier whose spec names its classes, a DataFrame
of ``prediction`` (that row) and ``label``.

>>> import numpy as np, pandas as pd
>>> model = VersionModel({"type": "logistic", "n_features": 2, "intercept": True,
...                       "feature_names": ["a", "b"], "class_names": ["no", "yes"]},
...                      np.array([1.0, -1.0, 0.0]))
>>> model.predict(pd.DataFrame({"a": [0.0, 3.0], "b": [0.0, 0.0]}))
   prediction label
0    0.500000    no
1    0.952574   yes
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowlearn.core.codec import decode_array
from flowlearn.registry.mlflow_store import SPEC_ARTIFACT, WEIGHTS_ARTIFACT
from flowlearn.serving.scoring import class_labels, scorer, served_rows

__all__ = ["VersionModel"]


def _load_pyfunc(data_path: str) -> VersionModel:
    """MLflow's entry point: the model in the data folder ``data_path``."""
    folder = Path(data_path)
    spec = json.loads((folder / SPEC_ARTIFACT).read_text())
    return VersionModel(spec, decode_array((folder / WEIGHTS_ARTIFACT).read_bytes()))


class VersionModel:
    """One version's scorer, answering MLflow's ``predict``."""

    def __init__(self, spec: Mapping[str, Any], weights: np.ndarray) -> None:
        self.spec = spec
        self.score = scorer(spec, weights)

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The predictor's scores for ``model_input`` (see the module's docstring).

        Raises :class:`flowlearn.core.features.FeatureError` (a ValueError) for features the
        model cannot read, ValueError for a score that is not finite, as the predictor
        refuses both."""
        import pandas as pd  # MLflow's own dependency; the predictor does not need it

        scores = self.score(served_rows(self._rows(model_input, pd), self.spec))
        bad = np.flatnonzero(~np.isfinite(scores.reshape(len(scores), -1)).all(axis=1))
        if bad.size:
            raise ValueError(
                f"instances[{bad[0]}]: the score is not a finite number (feature values too "
                "large for this model)"
            )
        labels = class_labels(self.spec, scores)
        if labels is None:
            return scores
        return pd.DataFrame({"prediction": scores.tolist(), "label": labels})

    def _rows(self, model_input: Any, pd: Any) -> list[Any]:
        """The instances as the predictor reads them: lists of numbers or name maps."""
        if isinstance(model_input, pd.DataFrame):
            if self.spec.get("features", "dense") == "dense" and not self.spec.get("feature_names"):
                return model_input.to_numpy(dtype=np.float64).tolist()
            # A record without a column's value has NaN there: that feature is absent.
            return [
                {k: v for k, v in record.items() if not _absent(v)}
                for record in model_input.to_dict(orient="records")
            ]
        if isinstance(model_input, np.ndarray):
            return model_input.tolist()
        if isinstance(model_input, Mapping):
            return [dict(model_input)]
        return list(model_input)


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
