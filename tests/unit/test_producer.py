"""The demo producer (``flowlearn produce``), with Kafka's producer replaced by a recorder."""

from __future__ import annotations

import json
import sys
import types
from typing import Any, ClassVar

import pytest

from flowlearn.conf import load_settings
from flowlearn.devstack.producer import produce


class RecordingProducer:
    """kafka-python's ``KafkaProducer``, as far as ``produce`` uses it: what it sent."""

    sent: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, **_options: Any) -> None:
        pass

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> None:
        self.sent.append((topic, json.loads(value)))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    RecordingProducer.sent = []
    monkeypatch.setitem(
        sys.modules, "kafka", types.SimpleNamespace(KafkaProducer=RecordingProducer)
    )
    return RecordingProducer.sent


def test_two_runs_with_one_seed_send_the_same_samples_under_new_event_ids(
    recorded: list[tuple[str, dict[str, Any]]],
) -> None:
    """Event ids were the model, the seed and the index: `make stop` then `make run` sent
    the last run's ids again, and the job dropped every sample as a duplicate until the
    ids passed the last run's (its label window, 10 minutes)."""
    settings = load_settings(env={})
    for _ in range(2):
        produce(settings.kafka, settings.kafka.topics, count=5, rate=1e6, quiet=True)
    first, second = recorded[:5], recorded[5:]
    assert [r["features"] for _, r in first] == [r["features"] for _, r in second]
    assert [r["label"] for _, r in first] == [r["label"] for _, r in second]
    ids = [r["event_id"] for _, r in recorded]
    assert len(set(ids)) == 10
    assert all(i.startswith("demo-0-") for i in ids)
