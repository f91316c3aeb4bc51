"""The trainer's memory of sample event ids (flowlearn.core.dedupe.SeenIds)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowlearn.core.dedupe import SeenIds

WINDOW = 1000

#: A stream of steps: add (id, ts), seal (the buffer was trained), restart (rebuilt from
#: what state would hold).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcdefgh"), st.integers(0, 5000)),
        st.tuples(st.just("seal")),
        st.tuples(st.just("restart")),
    ),
    max_size=60,
)


class StateMirror:
    """What the trainer writes to Flink state: the sealed batches and the buffered ids."""

    def __init__(self) -> None:
        self.batches: dict[int, tuple[int, list[str]]] = {}
        self.buffered: list[tuple[str, int]] = []


def run(ops, restarts: bool) -> list[bool]:
    seen, state, accepted = SeenIds(WINDOW), StateMirror(), []
    for op in ops:
        if op[0] == "add":
            ok = seen.add(op[1], op[2])
            accepted.append(ok)
            if ok:
                state.buffered.append((op[1], op[2]))
        elif op[0] == "seal":
            sealed = seen.seal()
            if sealed is not None:
                seq, ts, ids, expired = sealed
                state.batches[seq] = (ts, list(ids))
                for s in expired:
                    del state.batches[s]
            state.buffered.clear()
        elif restarts:
            seen = SeenIds(WINDOW, state.batches, state.buffered)
    return accepted


@given(steps)
def test_a_restart_changes_nothing(ops):
    assert run(ops, restarts=True) == run(ops, restarts=False)


@given(steps)
def test_an_id_is_accepted_again_only_after_its_batch_left_the_window(ops):
    seen = SeenIds(WINDOW)
    pending: dict[str, int] = {}
    sealed_at: dict[str, int] = {}  # id -> its batch's newest ts
    newest = None
    for op in ops:
        if op[0] == "add":
            _, event_id, ts = op
            ok = seen.add(event_id, ts)
            in_window = event_id in sealed_at and sealed_at[event_id] >= newest - WINDOW
            assert ok == (event_id not in pending and not in_window)
            if ok:
                pending[event_id] = ts
                sealed_at.pop(event_id, None)
        elif op[0] == "seal" and pending:
            batch_ts = max(pending.values())
            newest = batch_ts if newest is None else max(newest, batch_ts)
            sealed_at.update(dict.fromkeys(pending, batch_ts))
            pending.clear()
            seen.seal()
    assert len(seen) == len(pending) + sum(
        1 for ts in sealed_at.values() if ts >= (newest or 0) - WINDOW
    )
