"""Hooks for the MiniCluster tier."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def stop_leftover_flush_threads() -> Iterator[None]:
    """Once a module's jobs have ended, stop the periodic flush threads PyFlink's loopback
    harness leaves in this process: one per output stream of every job, each waking every
    second. By the end of this tier there were over a thousand, and every test that ran after
    it in the same process waited on them for the interpreter's lock (a fresh-clone CI run's
    pytest took 31 minutes instead of 17)."""
    yield
    from pyflink.fn_execution.utils.operation_utils import PeriodicThread

    leftovers = [t for t in threading.enumerate() if isinstance(t, PeriodicThread)]
    for thread in leftovers:
        thread.cancel()
    for thread in leftovers:
        thread.join(timeout=5)
