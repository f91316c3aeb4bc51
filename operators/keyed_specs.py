"""The spec of the current key's model in a keyed operator (trainer, drift, checkpoint):
``conf/``'s, unless a ``create`` or ``delete`` gave the model a runtime entry
(:mod:`flowlearn.contracts.spec`), then with the live changes of its ``update`` commands.
Both are kept in the operator's keyed state, so they survive restarts.

The entries follow the same rule here as in the parsers' broadcast state
(:func:`flowlearn.contracts.spec.create_applies`), so that both agree on which records fit a
model; the live changes touch no field a record depends on, so the parsers ignore them.
"""

from __future__ import annotations

import json
from typing import Any

from pyflink.datastream import RuntimeContext

from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core.spec import ModelSpec
from flowlearn.state import descriptors


class KeyedSpecs:
    """Specs by model id, read through the current key's state and cached; make one in a
    keyed operator's ``open``."""

    def __init__(self, specs: ModelSpecs, runtime_context: RuntimeContext) -> None:
        self.specs = specs
        self.entry = runtime_context.get_state(descriptors.RUNTIME_SPEC)
        self.changes = runtime_context.get_state(descriptors.LIVE_CHANGES)
        self._cache: dict[str, ModelSpec | None] = {}

    def model_spec(self, model_id: str) -> ModelSpec | None:
        """The current key's spec; None when the model is unknown and the policy says DLQ."""
        if model_id not in self._cache:
            spec = self.specs.model_spec(model_id, self.entry.value())
            changes = self.live_changes()
            if spec is not None and changes:  # checked when they came (updated_entry)
                spec = self.specs.read({**spec.as_dict(), **changes}, f"changes of {model_id}")
            self._cache[model_id] = spec
        return self._cache[model_id]

    def spec_of(self, model_id: str) -> ModelSpec:
        """:meth:`model_spec`, else the defaults."""
        return self.model_spec(model_id) or self.specs.defaults

    def runtime_entry(self) -> str | None:
        return self.entry.value()

    def live_changes(self) -> dict[str, Any]:
        saved = self.changes.value()
        return dict(json.loads(saved)) if saved else {}

    def set_entry(self, model_id: str, entry: str) -> None:
        """The current key's model was created (its spec's entry) or deleted (DELETED): its
        live changes go with what it was."""
        self.entry.update(entry)
        self.changes.clear()
        self._cache.pop(model_id, None)

    def adopt(self, model_id: str, entry: str) -> None:
        """The current key's model, trained under the spec of ``entry`` without an entry so
        far, gets it (its live changes stay: the model goes on as it was)."""
        self.entry.update(entry)
        self._cache.pop(model_id, None)

    def set_changes(self, model_id: str, changes: dict[str, Any]) -> None:
        """The current key's model's live changes, all of them so far."""
        self.changes.update(json.dumps(changes, sort_keys=True))
        self._cache.pop(model_id, None)

    def follow(self, model_id: str, kind: str, spec: str) -> None:
        """What the trainer's lifecycle row (``Evaluated`` of kind "create", "update" or
        "delete") says of the current key's model: its new entry, or its live changes."""
        if kind == "update":
            self.set_changes(model_id, json.loads(spec))
        else:
            self.set_entry(model_id, spec)
