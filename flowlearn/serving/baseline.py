"""A fixed baseline model read from a file: the second variant for shadow and A/B serving.

The file is one codec state bundle (:func:`flowlearn.core.codec.encode_state`, no pickle): the
array ``weights`` (the flat weights vector, laid out as a published snapshot's) and the
metadata ``{"spec": {...}, "version": n}``, ``spec`` as in a snapshot's ``spec`` field.
``version`` names the baseline in responses and in the prediction log (0 when absent).

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "m.flc"
>>> write_baseline(path, {"type": "linear", "n_features": 1, "intercept": True},
...                np.array([2.0, 1.0]), version=7)
>>> b = load_baseline(path)
>>> b.version, b.score(np.array([[3.0]])).tolist()
(7, [7.0])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowlearn.core import codec
from flowlearn.serving.replica import Version


def write_baseline(
    path: Path, spec: Mapping[str, Any], weights: np.ndarray, version: int = 0
) -> None:
    """Write a baseline file (for example from a batch-trained model's weights vector)."""
    path.write_bytes(
        codec.encode_state(
            {"weights": np.asarray(weights, dtype=np.float64).reshape(-1)},
            {"spec": dict(spec), "version": int(version)},
        )
    )


def load_baseline(path: Path) -> Version:
    """Read a baseline file; raises CodecError or ValueError naming what is wrong."""
    arrays, meta = codec.decode_state(path.read_bytes())
    if "weights" not in arrays or not isinstance(meta.get("spec"), dict):
        raise ValueError(f"{path}: a baseline needs the array 'weights' and the metadata 'spec'")
    weights = arrays["weights"].astype(np.float64, copy=False).reshape(-1)
    return Version.build(
        0, int(meta.get("version", 0)), meta["spec"], weights, int(path.stat().st_mtime * 1000)
    )
