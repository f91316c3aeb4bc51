"""Keep one child process running: restart it when it dies, as a cluster's resource manager
brings a lost TaskManager back. ``flowlearn up`` runs the TaskManager under it.

    python -m flowlearn.devstack.supervise --pid-file run/taskmanager-child.pid -- CMD ARGS...

SIGTERM or SIGINT stops the child (SIGTERM, then SIGKILL after ``--grace-s``, also when the
child ignores SIGTERM: a JVM stuck in garbage collection does) and exits.
A child that ran for a while (``--healthy-after-s``, 15 s) is restarted at once: it started
fine and something killed it, and a recovery waits for the new one. One that keeps dying
soon after starting is restarted after 1 s, then 2, 4... up to 30 s.

With ``--nice N`` the child runs at nice N, and so does the session it leads
(``processes.lower_priority``: where the kernel schedules sessions as groups, a process's
own nice does not lower it below other sessions).

With ``--replay-exec``, a child that ran ``--healthy-after-s`` is restarted as the program it
had become: a launcher script that ``exec``s its real program (Flink's taskmanager.sh runs
two JVMs, for its configuration and memory flags, before the TaskManager's own: ~2 s of a
recovery on two cores) is run once; its replacements start from the same argv,
environment, working directory and niceness. A child that dies sooner is started from
``CMD`` again, and so is one whose program cannot be started again.

With ``--spare ORIGINAL=SPARE`` as well, a spare is started beside a child that ran
``--healthy-after-s``: the program it had become, with the argument ``ORIGINAL`` (a
TaskManager's main class) replaced by ``SPARE`` (``dev.flowlearn.flink.SpareTaskManager``),
and a ``-Dlog.file=`` argument numbered, so that two JVMs never write (or roll over) one
log file. The spare starts, gets ready and waits for a line on its standard input; when the
child dies the supervisor writes ``start`` there and the spare is the new child at once,
without the seconds a JVM takes to start (a new spare follows once it has run
``--healthy-after-s``). A spare that died meanwhile is replaced as without one; the end of
its standard input (the supervisor stopping, or killed) ends it.

The child runs in a process group of its own, and whatever is left of that group when it
ends is killed: a TaskManager killed with SIGKILL would otherwise leave its Python workers
behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from flowlearn.devstack.processes import lower_priority, write_pid

GRACE_S = 20.0
MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: A child that lived this long got past its start-up: it is restarted at once and the
#: back-off starts again (a TaskManager JVM registers within ~10 s on two loaded cores).
HEALTHY_AFTER_S = 15.0


def log(msg: str) -> None:
    # One write of the whole line: the child writes to the same file, and print() writes
    # the text and its newline apart when output is unbuffered (PYTHONUNBUFFERED), so a
    # child's line could land between them.
    sys.stdout.write(f"[supervise] {time.strftime('%H:%M:%S')} {msg}\n")
    sys.stdout.flush()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass(frozen=True)
class Exec:
    """What a running process is now, after any ``exec``: enough to start it again."""

    executable: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    nice: int

    @classmethod
    def of(cls, pid: int) -> Exec | None:
        """The process ``pid`` as Linux's /proc shows it; None if it is gone or unreadable."""
        proc = Path(f"/proc/{pid}")
        try:
            argv = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            pairs = proc.joinpath("environ").read_bytes().rstrip(b"\0").split(b"\0")
            executable = os.readlink(proc / "exe")
            cwd = os.readlink(proc / "cwd")
            nice = os.getpriority(os.PRIO_PROCESS, pid)
        except OSError:
            return None
        env = dict(os.fsdecode(pair).split("=", 1) for pair in pairs if b"=" in pair)
        return cls(executable, [os.fsdecode(a) for a in argv], env, cwd, nice)

    def start(self, stdin: int | None = None) -> subprocess.Popen[bytes]:
        nice = self.nice
        return subprocess.Popen(
            self.argv,
            executable=self.executable,
            env=self.env,
            cwd=self.cwd,
            stdin=stdin,
            start_new_session=True,
            preexec_fn=lambda: lower_priority(nice),
        )

    def swapped(self, old: str, new: str) -> Exec:
        """The same program with the argument ``old`` replaced by ``new``."""
        return replace(self, argv=[new if a == old else a for a in self.argv])

    def numbered_log(self, number: int) -> Exec:
        """The same program writing its log (a ``-Dlog.file=`` argument) to a file of its
        own: ``<name>.<number><suffix>``, the number in place of a spare's before it.

        >>> program = Exec("java", ["java", "-Dlog.file=/logs/tm.log", "Main"], {}, "/", 0)
        >>> program.numbered_log(1).argv[1], program.numbered_log(1).numbered_log(2).argv[1]
        ('-Dlog.file=/logs/tm.1.log', '-Dlog.file=/logs/tm.2.log')
        """
        argv = []
        for arg in self.argv:
            if arg.startswith(LOG_FILE_ARG):
                path = Path(arg.removeprefix(LOG_FILE_ARG))
                name = re.sub(r"\.\d+$", "", path.stem)
                arg = f"{LOG_FILE_ARG}{path.with_name(f'{name}.{number}{path.suffix}')}"
            argv.append(arg)
        return replace(self, argv=argv)


#: How a JVM is told its log file (Flink's log4j configuration reads it).
LOG_FILE_ARG = "-Dlog.file="
#: What a spare waits for on its standard input before it becomes the child.
SPARE_START = b"start\n"


class Spare:
    """A spare of the child (see the module docstring): started, ready, waiting; its pid in
    ``pid_file`` (if given) until it takes over or stops."""

    def __init__(self, program: Exec, pid_file: Path | None) -> None:
        self.process = program.start(stdin=subprocess.PIPE)
        self.pid_file = pid_file
        if pid_file is not None:
            write_pid(pid_file, self.process.pid)

    def _forget(self) -> None:
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def take_over(self) -> subprocess.Popen[bytes] | None:
        """The spare, told to start as the child; None if it is gone."""
        self._forget()
        stdin = self.process.stdin
        assert stdin is not None
        if self.process.poll() is not None:
            return None
        try:
            stdin.write(SPARE_START)
            stdin.close()
        except OSError:  # it died just now
            return None
        return self.process

    def stop(self, grace_s: float) -> None:
        """End it: its standard input closed (it exits), killed if it lingers."""
        self._forget()
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        _wait(self.process, lambda: True, grace_s)
        _kill_group(self.process.pid)


def _wait(
    child: subprocess.Popen[bytes],
    stopping: Callable[[], bool],
    grace_s: float,
    on_healthy: Callable[[], None] | None = None,
    healthy_after_s: float = HEALTHY_AFTER_S,
) -> int:
    """The child's exit status; once ``stopping``, it gets ``grace_s`` to exit, then SIGKILL.
    ``on_healthy`` is called once, when the child has lived ``healthy_after_s``."""
    kill_at: float | None = None
    healthy_at = time.monotonic() + healthy_after_s
    while True:
        try:
            return child.wait(0.2)
        except subprocess.TimeoutExpired:
            if on_healthy is not None and time.monotonic() >= healthy_at:
                on_healthy()
                on_healthy = None
            if not stopping():
                continue
            if kill_at is None:
                kill_at = time.monotonic() + grace_s
            elif time.monotonic() > kill_at:
                child.kill()


def next_backoff(backoff: float, lived: float, healthy_after_s: float = HEALTHY_AFTER_S) -> float:
    """Seconds to wait before restarting a child that lived ``lived`` seconds, after waiting
    ``backoff`` before starting it.

    >>> [next_backoff(b, 2.0) for b in (0.0, 1.0, 16.0, 30.0)], next_backoff(30.0, 60.0)
    ([1.0, 2.0, 30.0, 30.0], 0.0)
    """
    if lived > healthy_after_s:
        return 0.0
    return min(max(backoff * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)


def supervise(
    cmd: list[str],
    pid_file: Path,
    grace_s: float = GRACE_S,
    replay_exec: bool = False,
    healthy_after_s: float = HEALTHY_AFTER_S,
    spare_main: tuple[str, str] | None = None,
    spare_pid_file: Path | None = None,
    nice: int = 0,
) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None
    replay: Exec | None = None
    spare: Spare | None = None
    spares = 0

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
        child = None
        if spare is not None and backoff == 0.0:
            child = spare.take_over()
            if child is not None:
                log(f"spare pid {child.pid} takes over")
            else:
                log(f"spare pid {spare.process.pid} is gone; the replacement starts as without one")
            spare = None
        if child is None and replay is not None:
            try:
                child = replay.start()
                log(f"started pid {child.pid} as its predecessor ran: {replay.argv[0]} ...")
            except OSError as exc:  # e.g. the program was upgraded away meanwhile
                log(f"could not start {replay.executable} again ({exc}); starting {cmd[0]}")
        if child is None:
            child = subprocess.Popen(
                cmd, start_new_session=True, preexec_fn=lambda: lower_priority(nice)
            )
            log(f"started pid {child.pid}: {' '.join(cmd)}")
        write_pid(pid_file, child.pid)

        def remember(pid: int = child.pid) -> None:
            nonlocal replay, spare, spares
            replay = Exec.of(pid)
            if replay is None:
                return
            if spare_main is not None:
                original, spare_class = spare_main
                replay = replay.swapped(spare_class, original)  # a spare that took over
                if spare is None:
                    spares += 1
                    program = replay.swapped(original, spare_class).numbered_log(spares)
                    try:
                        spare = Spare(program, spare_pid_file)
                        log(f"spare pid {spare.process.pid} started, waiting to take over")
                    except OSError as exc:
                        log(f"could not start a spare ({exc})")
            log(f"pid {pid} runs {replay.executable}: a replacement would start from there")

        # Started from CMD again unless this one lives long enough to be remembered.
        replay = None
        code = _wait(
            child, lambda: stopping, grace_s, remember if replay_exec else None, healthy_after_s
        )
        _kill_group(child.pid)
        if stopping:
            break
        lived = time.monotonic() - started
        backoff = next_backoff(backoff, lived, healthy_after_s)
        log(f"pid {child.pid} exited with {code} after {lived:.0f}s; restarting in {backoff:.0f}s")
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
    if spare is not None:
        spare.stop(grace_s)
    if child is not None:
        _wait(child, lambda: True, grace_s)
        _kill_group(child.pid)
    pid_file.unlink(missing_ok=True)
    log("stopped")
    return 0


def _spare_main(value: str) -> tuple[str, str]:
    original, sep, spare = value.partition("=")
    if not (sep and original and spare):
        raise argparse.ArgumentTypeError(f"expected ORIGINAL=SPARE, got {value!r}")
    return original, spare


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
    parser.add_argument(
        "--replay-exec",
        action="store_true",
        help="restart a child that ran a while as the program it exec'd into (see above)",
    )
    parser.add_argument(
        "--spare",
        type=_spare_main,
        metavar="ORIGINAL=SPARE",
        help="with --replay-exec: keep a spare of a healthy child, its argument ORIGINAL "
        "replaced by SPARE, to take over at once (see above)",
    )
    parser.add_argument(
        "--spare-pid-file", type=Path, help="where the current spare's pid is written"
    )
    parser.add_argument(
        "--healthy-after-s",
        type=float,
        default=HEALTHY_AFTER_S,
        help=f"seconds after which a child counts as started fine (default {HEALTHY_AFTER_S:g})",
    )
    parser.add_argument(
        "--nice",
        type=int,
        choices=range(20),
        default=0,
        metavar="0-19",
        help="the child's nice value, also its session's (processes.lower_priority); "
        "spares and replacements keep the one their predecessor ran at (default 0)",
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("a command to supervise is required after --")
    if args.spare and not args.replay_exec:
        parser.error("--spare needs --replay-exec")
    return supervise(
        cmd,
        args.pid_file,
        args.grace_s,
        args.replay_exec,
        args.healthy_after_s,
        args.spare,
        args.spare_pid_file,
        args.nice,
    )


if __name__ == "__main__":
    sys.exit(main())
