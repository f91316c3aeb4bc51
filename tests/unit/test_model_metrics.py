"""Per-model metrics stay bounded however many models a job holds."""

from __future__ import annotations

from flowlearn.conf import load_settings
from flowlearn.operators.model_metrics import OTHER_MODELS, ModelMetrics
from tests.unit.flink_stand_ins import Group


def test_the_first_models_and_the_named_ones_are_labelled_the_rest_add_up():
    job = load_settings(
        env={"FLOWLEARN__JOB__MODEL_METRICS_LIMIT": "2", "FLOWLEARN__JOB__MODEL_METRICS": "vip"}
    ).job
    group = Group()
    metrics = ModelMetrics(group, ("samples",), job)
    for model_id in [f"m{i}" for i in range(1000)] + ["vip"]:
        metrics.inc(model_id, "samples", 3)
        metrics.gauge(model_id, "version", lambda: 1)
    labels = {value for (_, value) in group.groups}
    assert labels == {"m0", "m1", "vip", OTHER_MODELS}
    assert group.groups[("model", OTHER_MODELS)].metrics["samples"].count == 998 * 3
    assert group.groups[("model", "vip")].metrics["samples"].count == 3
    assert not metrics.is_labelled("m5") and metrics.is_labelled("m1")
