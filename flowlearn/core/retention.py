"""Which versions' weights a trainer keeps, so that a rollback needs no restart: the last
``keep_versions`` versions, and the last ``keep_checkpoints`` checkpoint versions (every
``checkpoint_every``-th version) for rollbacks further back.

>>> r = Retention(keep_versions=3, checkpoint_every=10, keep_checkpoints=2)
>>> kept = r.kept(range(1, 46))
>>> kept.recent, kept.checkpoints
([43, 44, 45], [30, 40])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Kept:
    recent: list[int]
    checkpoints: list[int]


@dataclass(frozen=True)
class Retention:
    keep_versions: int
    checkpoint_every: int
    keep_checkpoints: int

    def is_checkpoint(self, version: int) -> bool:
        return version % self.checkpoint_every == 0

    def recent_dropped_by(self, version: int) -> int:
        """The recent version to forget once ``version`` is kept."""
        return version - self.keep_versions

    def checkpoint_dropped_by(self, version: int) -> int:
        """The checkpoint version to forget once checkpoint ``version`` is kept."""
        return version - self.keep_checkpoints * self.checkpoint_every

    def kept(self, versions: Iterable[int]) -> Kept:
        """What is kept after ``versions`` were made in this order (the rule, applied)."""
        recent: set[int] = set()
        checkpoints: set[int] = set()
        for v in versions:
            recent.add(v)
            recent.discard(self.recent_dropped_by(v))
            if self.is_checkpoint(v):
                checkpoints.add(v)
                checkpoints.discard(self.checkpoint_dropped_by(v))
        return Kept(sorted(recent), sorted(checkpoints))
