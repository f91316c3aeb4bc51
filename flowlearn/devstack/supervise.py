"""Keep one child process running: restart it when it dies, as a cluster's resource manager
brings a lost TaskManager back. ``flowlearn up`` runs the TaskManager under it.

    python -m flowlearn.devstack.supervise --pid-file run/taskmanager-child.pid -- CMD ARGS...

SIGTERM or SIGINT stops the child (SIGTERM, then SIGKILL after ``--grace-s``, also when the
child ignores SIGTERM: a JVM stuck in garbage collection does) and exits.
A child that ran for a while (``HEALTHY_AFTER_S``) is restarted at once: it started fine and
something killed it, and a recovery waits for the new one. One that keeps dying soon after
starting is restarted after 1 s, then 2, 4... up to 30 s.

The child runs in a process group of its own, and whatever is left of that group when it
ends is killed: a TaskManager killed with SIGKILL would otherwise leave its Python workers
behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

GRACE_S = 20.0
MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: A child that lived this long got past its start-up: it is restarted at once and the
#: back-off starts again (a TaskManager JVM registers within ~10 s on two loaded cores).
HEALTHY_AFTER_S = 15.0


def log(msg: str) -> None:
    print(f"[supervise] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait(child: subprocess.Popen[bytes], stopping: Callable[[], bool], grace_s: float) -> int:
    """The child's exit status; once ``stopping``, it gets ``grace_s`` to exit, then SIGKILL."""
    kill_at: float | None = None
    while True:
        try:
            return child.wait(0.2)
        except subprocess.TimeoutExpired:
            if not stopping():
                continue
            if kill_at is None:
                kill_at = time.monotonic() + grace_s
            elif time.monotonic() > kill_at:
                child.kill()


def next_backoff(backoff: float, lived: float) -> float:
    """Seconds to wait before restarting a child that lived ``lived`` seconds, after waiting
    ``backoff`` before starting it.

    >>> [next_backoff(b, 2.0) for b in (0.0, 1.0, 16.0, 30.0)], next_backoff(30.0, 60.0)
    ([1.0, 2.0, 30.0, 30.0], 0.0)
    """
    if lived > HEALTHY_AFTER_S:
        return 0.0
    return min(max(backoff * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)


def supervise(cmd: list[str], pid_file: Path, grace_s: float = GRACE_S) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 0.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(cmd, start_new_session=True)
        pid_file.write_text(f"{child.pid}\n")
        log(f"started pid {child.pid}: {' '.join(cmd)}")
        code = _wait(child, lambda: stopping, grace_s)
        _kill_group(child.pid)
        if stopping:
            break
        lived = time.monotonic() - started
        backoff = next_backoff(backoff, lived)
        log(f"pid {child.pid} exited with {code} after {lived:.0f}s; restarting in {backoff:.0f}s")
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
    if child is not None:
        _wait(child, lambda: True, grace_s)
        _kill_group(child.pid)
    pid_file.unlink(missing_ok=True)
    log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pid-file", type=Path, required=True, help="where the current child's pid is written"
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=GRACE_S,
        help=f"seconds a stopping child gets after SIGTERM before SIGKILL (default {GRACE_S:g})",
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("a command to supervise is required after --")
    return supervise(cmd, args.pid_file, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
