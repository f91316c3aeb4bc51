"""The MLflow model registry, seen through flowlearn's eyes: versions of weights."""
