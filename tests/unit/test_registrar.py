"""The checkpoint operator's background registrar: a registration that fails for a while
does not hold up the others; one the registry refuses for good is reported, once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from flowlearn.conf import load_settings
from flowlearn.operators import checkpoint
from flowlearn.operators.checkpoint import Registrar, Registration
from flowlearn.registry import mlflow_store
from flowlearn.registry.mlflow_store import RegistryError


class FakeRegistry:
    """Model "down" fails as a server that is down would, "bad" as MLflow refusing the
    request, "value" with a ValueError (a bad registration); the others succeed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.options: dict[tuple[str, int], dict[str, Any]] = {}

    def register(self, model_id: str, version: int, *args: Any, **kwargs: Any) -> None:
        self.calls.append((model_id, version))
        self.options[model_id, version] = kwargs
        if model_id == "down":
            raise RegistryError("create run on http://mlflow failed: connection refused")
        if model_id == "bad":
            raise RegistryError("create registered model failed: bad name", permanent=True)
        if model_id == "value":
            raise ValueError("weights are not flowlearn codec array bytes")


def job(model_id: str, version: int = 1, restored: bool = False) -> Registration:
    return Registration(model_id, version, b"", "{}", 1, {}, restored)


def until(condition: Any, deadline_s: float = 10.0) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met within the deadline")


@pytest.fixture
def registrar(monkeypatch: pytest.MonkeyPatch) -> Any:
    fake = FakeRegistry()
    monkeypatch.setattr(mlflow_store.Registry, "from_settings", classmethod(lambda cls, s: fake))
    r = Registrar(load_settings(env={}))
    yield r, fake
    r.stop(drain_s=0.0)


def test_a_registration_that_keeps_failing_does_not_hold_up_the_others(registrar) -> None:
    r, fake = registrar
    r.submit(job("down"))
    r.submit(job("ok"))
    assert until(lambda: r.confirmed("ok")) == [1]  # long before the retry period
    assert fake.calls[:2] == [("down", 1), ("ok", 1)]
    assert r.delayed and r.delayed[0][1].model_id == "down"
    assert r.confirmed("down") == [] and r.refused("down") == []
    assert r.delayed[0][0] - time.monotonic() > checkpoint.RETRY_AFTER_S - 5


@pytest.mark.parametrize("model_id", ["bad", "value"])
def test_a_refused_registration_is_reported_once_and_not_retried(registrar, model_id) -> None:
    r, fake = registrar
    r.submit(job(model_id, 3))
    r.submit(job("ok"))
    until(lambda: r.confirmed("ok"))
    (refusal,) = r.refused(model_id)
    assert refusal[0] == 3 and refusal[1]
    assert r.refused(model_id) == [] and not r.delayed
    assert fake.calls.count((model_id, 3)) == 1


def test_the_job_registers_the_version_it_serves(registrar) -> None:
    """Every registration moves MLflow's ``live`` alias; a rollback's target is marked
    restored (kept by retention)."""
    r, fake = registrar
    r.submit(job("ok", 5))
    r.submit(job("ok", 3, restored=True))
    until(lambda: len(fake.calls) == 2)
    assert fake.options["ok", 5] == {"live": True, "restored": False}
    assert fake.options["ok", 3] == {"live": True, "restored": True}
