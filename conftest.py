"""Hooks for the whole test session (``pytest tests flowlearn``)."""

from __future__ import annotations

import os
import sys

import pytest

_finished: list[pytest.Session] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    _finished.append(session)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with the session's exit status once its report is out, skipping the garbage
    collection of the interpreter's teardown: the MiniCluster tests leave PyFlink's loopback
    harness (a py4j gateway and Beam's threads; tests/minicluster/conftest.py stops the
    thousand flush threads among them) in this process, and a fresh-clone CI run spun 28
    minutes in pytest's final ``gc.collect()`` after every test had passed."""
    if not _finished:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(_finished[-1].exitstatus))
