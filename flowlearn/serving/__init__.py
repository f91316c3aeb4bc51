"""The predictor: follows models in Redis and serves them over HTTP (docs/predictor.md).

``python -m flowlearn.serving [--config FILE]`` runs it; :func:`run` is the same from code.
"""

from flowlearn.serving.app import make_app, run

__all__ = ["make_app", "run"]
