"""Event ids of one model's labelled samples (``fl.samples`` records that carry an
``event_id``), so that a sample sent twice is trained once. Flink-free; the trainer keeps one
:class:`SeenIds` per model and stores its sealed batches in map state.

Ids are kept while their sample's event time is within ``window_ms`` of the newest sample
seen for the model. An id arrives *pending* (its sample waits in the trainer's buffer; the
buffer's state row carries the id); when the buffer is trained, :meth:`SeenIds.seal` turns
the pending ids into one batch for the state, and returns the batches that fell out of the
window, to be removed from it. One state write per trained batch, none per sample.

>>> seen = SeenIds(window_ms=1000)
>>> seen.add("a", ts=5000), seen.add("a", ts=5001)
(True, False)
>>> seen.seal()
(0, 5000, ['a'], [])
>>> seen.add("b", ts=7000), seen.seal()
(True, (1, 7000, ['b'], [0]))
>>> seen.add("a", ts=7001)  # batch 0 left the window: "a" is new again
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class SeenIds:
    def __init__(
        self,
        window_ms: int,
        batches: Mapping[int, tuple[int, list[str]]] | None = None,
        pending: Iterable[tuple[str, int]] = (),
    ) -> None:
        """``batches`` (sequence number -> (newest event time, ids)) and ``pending``
        ((id, event time) of the buffered samples) are what state holds after a restart."""
        self.window_ms = window_ms
        self.batches = {seq: (ts, list(ids)) for seq, (ts, ids) in (batches or {}).items()}
        self.ids: set[str] = {i for _, ids in self.batches.values() for i in ids}
        self.newest = max((ts for ts, _ in self.batches.values()), default=-(1 << 62))
        self.next_seq = max(self.batches, default=-1) + 1
        self.pending: list[str] = []
        self.pending_newest = -(1 << 62)
        for event_id, ts in pending:
            self.add(event_id, ts)

    def add(self, event_id: str, ts: int) -> bool:
        """Record ``event_id``; False when it was seen already (a duplicate)."""
        if event_id in self.ids:
            return False
        self.ids.add(event_id)
        self.pending.append(event_id)
        self.pending_newest = max(self.pending_newest, ts)
        return True

    def seal(self) -> tuple[int, int, list[str], list[int]] | None:
        """After the buffer was trained: ``(sequence number, newest event time, ids,
        expired sequence numbers)`` to write to state, or None when nothing is pending."""
        if not self.pending:
            return None
        seq, ts, ids = self.next_seq, self.pending_newest, self.pending
        self.batches[seq] = (ts, ids)
        self.next_seq += 1
        self.pending, self.pending_newest = [], -(1 << 62)
        self.newest = max(self.newest, ts)
        horizon = self.newest - self.window_ms
        expired = [s for s, (batch_ts, _) in self.batches.items() if batch_ts < horizon]
        for s in expired:
            self.ids.difference_update(self.batches.pop(s)[1])
        return seq, ts, ids, expired

    def __len__(self) -> int:
        return len(self.ids)
