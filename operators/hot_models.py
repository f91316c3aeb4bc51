"""Per-model objects kept in Python memory for the models handled last, in a keyed operator.

Flink state is the record of every model; the operators' dicts of models, trainers,
monitors and ledgers are caches of it, rebuilt from state when a model is next handled. A
job of thousands of models with little traffic each then costs state, not Python memory:
each cache holds the last ``job.hot_models`` models handled (and those with their own
metrics, whose gauges read the caches).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class HotModels:
    """Drops the cache entries of the least recently handled model beyond ``limit``.

    >>> trainers, seen = {"a": 1, "b": 2}, {"a": 3, "b": 4}
    >>> hot = HotModels(1, lambda model_id: False, (trainers, seen))
    >>> hot.touch("a"); hot.touch("b")
    >>> trainers, seen
    ({'b': 2}, {'b': 4})
    """

    def __init__(
        self,
        limit: int,
        always_kept: Callable[[str], bool],
        caches: tuple[dict[str, Any], ...],
    ) -> None:
        self.limit = limit
        self.always_kept = always_kept
        self.caches = caches
        #: Models whose entries may be dropped, the least recently handled first.
        self.recency: OrderedDict[str, None] = OrderedDict()

    def touch(self, model_id: str) -> None:
        """``model_id`` is being handled: its entries stay, those of the model handled
        longest ago beyond the limit go."""
        if self.always_kept(model_id):
            return
        recency = self.recency
        if model_id in recency:
            recency.move_to_end(model_id)
            return
        recency[model_id] = None
        if len(recency) > self.limit:
            cold, _ = recency.popitem(last=False)
            for cache in self.caches:
                cache.pop(cold, None)
