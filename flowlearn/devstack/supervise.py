"""Keep one child process running: restart it when it dies, as a cluster's resource manager
brings a lost TaskManager back. ``flowlearn up`` runs the TaskManager under it.

    python -m flowlearn.devstack.supervise --pid-file run/taskmanager-child.pid -- CMD ARGS...

SIGTERM or SIGINT stops the child (SIGTERM, then SIGKILL after ``--grace-s``, also when the
child ignores SIGTERM: a JVM stuck in garbage collection does) and exits.
Restarts back off from 1 s to 30 s while the child keeps dying within a minute of starting.

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
#: A child that lived this long resets the back-off.
HEALTHY_AFTER_S = 60.0


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
    backoff = MIN_BACKOFF_S
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
        backoff = MIN_BACKOFF_S if lived > HEALTHY_AFTER_S else min(backoff * 2, MAX_BACKOFF_S)
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
