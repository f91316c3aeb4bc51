"""The Python worker pool: a launch through it runs the module as the interpreter would (the
arguments, environment, working directory, PYTHONPATH first, standard streams, exit status),
signals reach the worker, a dead launcher takes its worker along, and without a pool the
launcher starts the interpreter itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowlearn.jobs import python_worker_pool

#: The module the launches run: it reports what a worker would see.
PROBE = """
import json, os, sys, time
preloaded = "numpy" in sys.modules
import flowlearn
from apache_beam.runners.worker.statesampler import StateSampler
print(json.dumps({
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "marker": os.environ.get("MARKER"),
    "path": sys.path[:2],
    "flowlearn": getattr(flowlearn, "WHOSE", "the pool's"),
    "parent": os.getppid(),
    "preloaded": preloaded,
    # What a bundle processor's state sampler gets (Beam passes no period).
    "sampling_ms": StateSampler("probe", None).sampling_period_ms,
}), flush=True)
print("on stderr", file=sys.stderr, flush=True)
if "--wait" in sys.argv:
    print("waiting", flush=True)
    time.sleep(60)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def _wait_until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def pool(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    folder = tmp_path_factory.mktemp("pool")
    socket_path = folder / "pool.sock"
    process = subprocess.Popen(
        [sys.executable, str(python_worker_pool.__file__), "serve", "--socket", str(socket_path)],
        stderr=subprocess.PIPE,
    )
    _wait_until(socket_path.exists, 60, "the pool's socket")
    yield process, socket_path
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture()
def job(tmp_path: Path) -> tuple[Path, Path]:
    """A launcher script and a PYTHONPATH folder holding the probe and a flowlearn of the
    job's own (a worker must import the job's flowlearn, never one the pool holds)."""
    code = tmp_path / "job-src"
    (code / "flowlearn").mkdir(parents=True)
    (code / "flowlearn" / "__init__.py").write_text('WHOSE = "the job\'s"\n')
    (code / "probe.py").write_text(PROBE)
    launcher = python_worker_pool.write_launcher(tmp_path / "bin" / "python-worker", sys.executable)
    return launcher, code


def _launch(
    launcher: Path, code: Path, socket_path: Path | None, *args: str, **env: str
) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(code), "MARKER": "m-1", **env}
    environment.pop(python_worker_pool.POOL_SOCKET_ENV, None)
    if socket_path is not None:
        environment[python_worker_pool.POOL_SOCKET_ENV] = str(socket_path)
    return subprocess.Popen(
        [str(launcher), *args],
        cwd=code.parent,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(out: str) -> dict[str, object]:
    import json

    return json.loads(out.splitlines()[0])  # type: ignore[no-any-return]


def test_a_launch_through_the_pool_runs_the_module_as_the_interpreter_would(pool, job) -> None:  # type: ignore[no-untyped-def]
    process, socket_path = pool
    launcher, code = job
    run = _launch(launcher, code, socket_path, "-m", "probe", "a", "--b=c", EXIT_CODE="3")
    out, err = run.communicate(timeout=30)
    assert run.returncode == 3
    report = _report(out)
    assert report["argv"] == ["a", "--b=c"]
    assert report["cwd"] == str(code.parent)
    assert report["marker"] == "m-1"
    assert report["path"] == [str(code.parent), str(code)]
    assert report["flowlearn"] == "the job's"
    # Forked from the pool, with its preloaded modules.
    assert report["parent"] == process.pid
    assert report["preloaded"] is True
    assert report["sampling_ms"] == python_worker_pool.STATE_SAMPLING_PERIOD_MS
    assert "on stderr" in err


def test_without_a_pool_the_launcher_starts_the_interpreter_itself(job, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    launcher, code = job
    for socket_path in (None, tmp_path / "no-pool.sock"):
        run = _launch(launcher, code, socket_path, "-m", "probe", "x", EXIT_CODE="4")
        out, err = run.communicate(timeout=60)
        assert run.returncode == 4
        report = _report(out)
        assert report["argv"] == ["x"]
        assert report["flowlearn"] == "the job's"
        assert report["preloaded"] is False
        assert "on stderr" in err
    # Anything but `-m MODULE` goes to the interpreter too (Flink runs only -m).
    run = _launch(launcher, code, tmp_path / "no-pool.sock", "-c", "print(6 * 7)")
    assert run.communicate(timeout=60)[0].strip() == "42"


def _pool_children(pool_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pool_pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_sigterm_to_the_launcher_reaches_the_worker(pool, job) -> None:  # type: ignore[no-untyped-def]
    process, socket_path = pool
    launcher, code = job
    run = _launch(launcher, code, socket_path, "-m", "probe", "--wait")
    assert run.stdout is not None
    _report(run.stdout.readline())
    assert run.stdout.readline().strip() == "waiting"
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=30)
    assert run.returncode == 128 + signal.SIGTERM
    _wait_until(lambda: not _pool_children(process.pid), 10, "the worker gone")


def test_a_killed_launcher_takes_its_worker_along(pool, job) -> None:  # type: ignore[no-untyped-def]
    process, socket_path = pool
    launcher, code = job
    run = _launch(launcher, code, socket_path, "-m", "probe", "--wait")
    assert run.stdout is not None
    report = _report(run.stdout.readline())
    assert report["parent"] == process.pid
    assert _pool_children(process.pid)
    run.kill()
    run.communicate(timeout=30)
    _wait_until(lambda: not _pool_children(process.pid), 10, "the worker gone")
    # The pool serves the next launch as before.
    again = _launch(launcher, code, socket_path, "-m", "probe")
    assert _report(again.communicate(timeout=30)[0])["parent"] == process.pid


def test_the_preloaded_modules_start_no_thread() -> None:
    """A fork copies only the calling thread: a lock another thread held would stay held in
    every worker. The pool's preload must leave the interpreter with its main thread alone."""
    code = (
        "import importlib, threading, sys\n"
        f"for name in {python_worker_pool.PRELOAD!r}:\n"
        "    importlib.import_module(name)\n"
        "print(threading.active_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
