"""Parse and validate raw Kafka records; bad ones go to the DLQ side output with a reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, ProcessFunction, RuntimeContext

from conf import Settings
from flowlearn.records import RecordError, dlq_record, parse_sample

#: Dead-letter records (JSON strings in DESIGN's ``fl.dlq`` format).
DLQ_TAG = OutputTag("dlq", Types.STRING())


class ParseSamples(ProcessFunction):
    """``fl.samples`` bytes -> ``SAMPLE_TYPE`` rows; anything unusable -> :data:`DLQ_TAG`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.source_topic = settings.kafka.topics.samples

    def open(self, runtime_context: RuntimeContext) -> None:
        group = runtime_context.get_metrics_group()
        self.parsed = group.counter("samples_parsed")
        self.dead = group.counter("samples_dlq")
        specs = {m: s.as_dict() for m, s in self.settings.models.items()}
        default = (self.settings.model_defaults.as_dict()
                   if self.settings.job.unknown_model_policy == "create" else None)
        self.spec_for = lambda model_id: specs.get(model_id, default)

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Any]:
        raw = bytes(value)
        try:
            sample = parse_sample(raw, self.spec_for)
        except RecordError as exc:
            self.dead.inc()
            yield DLQ_TAG, dlq_record(self.source_topic, exc.reason, raw,
                                      time.time_ns() // 1_000_000, exc.message)
            return
        self.parsed.inc()
        yield Row(sample.model_id, sample.ts, sample.features.tolist(), sample.label)
