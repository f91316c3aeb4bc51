"""Stand-ins for what Flink hands a Python operator (keyed state, metrics, timers), so that
operators run outside Flink in unit tests: one model, so one key."""

from __future__ import annotations

from typing import Any


class Metric:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, n: int = 1) -> None:
        self.count += n

    def dec(self, n: int = 1) -> None:
        self.count -= n


class Group:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.groups: dict[tuple[str, str], Group] = {}
        self.gauges: dict[str, Any] = {}

    def counter(self, name: str) -> Metric:
        return self.metrics.setdefault(name, Metric())

    def gauge(self, name: str, read: Any) -> None:
        self.gauges[name] = read

    def read_gauges(self) -> dict[str, int]:
        """Every gauge of this group and the groups under it, read as PyFlink reads them
        at the end of each bundle (an exception there fails the job)."""
        values = {name: read() for name, read in self.gauges.items()}
        for (key, value), group in self.groups.items():
            values |= {f"{key}.{value}.{k}": v for k, v in group.read_gauges().items()}
        return values

    def add_group(self, key: str, value: str) -> Group:
        return self.groups.setdefault((key, value), Group())


class ValueState:
    def __init__(self) -> None:
        self.v: Any = None

    def value(self) -> Any:
        return self.v

    def update(self, v: Any) -> None:
        self.v = v

    def clear(self) -> None:
        self.v = None


class ListState:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def get(self) -> list[Any]:
        return list(self.rows)

    def add(self, row: Any) -> None:
        self.rows.append(row)

    def add_all(self, rows: list[Any]) -> None:
        self.rows.extend(rows)

    def update(self, rows: list[Any]) -> None:
        self.rows = list(rows)

    def clear(self) -> None:
        self.rows = []


class MapState(dict):
    def put(self, k: Any, v: Any) -> None:
        self[k] = v

    def put_all(self, entries: Any) -> None:
        # As PyFlink's does (pyflink/fn_execution/state_impl.py): it iterates its argument
        # as (key, value) pairs, so a dict, which its signature names, fails to unpack.
        for key, value in entries:
            self[key] = value

    def remove(self, k: Any) -> None:
        del self[k]

    def contains(self, k: Any) -> bool:
        return k in self


class KeyedState:
    """What Flink keeps for the model between runs: states by descriptor name."""

    def __init__(self) -> None:
        self.states: dict[str, Any] = {}
        self.group = Group()

    def _get(self, descriptor: Any, kind: type) -> Any:
        return self.states.setdefault(descriptor.name, kind())

    def get_state(self, d: Any) -> ValueState:
        return self._get(d, ValueState)

    def get_list_state(self, d: Any) -> ListState:
        return self._get(d, ListState)

    def get_map_state(self, d: Any) -> MapState:
        return self._get(d, MapState)

    def get_metrics_group(self) -> Group:
        return self.group


class Timers:
    def current_processing_time(self) -> int:
        return 0

    def current_watermark(self) -> int:
        return -(1 << 62)

    def register_processing_time_timer(self, t: int) -> None:
        pass

    def register_event_time_timer(self, t: int) -> None:
        pass

    def delete_processing_time_timer(self, t: int) -> None:
        pass


class Context:
    def timer_service(self) -> Timers:
        return Timers()
