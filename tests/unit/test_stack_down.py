"""``flowlearn down`` stops what the stack started, an orphaned TaskManager included."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from flowlearn.conf import load_settings
from flowlearn.devstack import stack
from flowlearn.devstack.processes import (
    pid_file,
    running_pid,
    start_process,
    stop_process,
    terminate,
)


@pytest.mark.parametrize("orphan_name", ["taskmanager-child", "taskmanager-spare"])
def test_down_stops_a_taskmanager_whose_supervisor_was_killed(
    tmp_path: Path, orphan_name: str
) -> None:
    """A SIGKILLed supervisor leaves its child (the TaskManager JVM), or its spare, running;
    ``down`` used to stop only the supervisor's pid, and the orphan outlived the stack."""
    settings = load_settings(env={"FLOWLEARN__STACK__HOME": str(tmp_path / "home")})
    settings.stack.run.mkdir(parents=True)
    env = {**os.environ, "FLOWLEARN_HOME": str(settings.stack.home)}
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        pid_file(settings, orphan_name).write_text(f"{orphan.pid}\n")
        assert running_pid(settings, orphan_name) == orphan.pid
        assert stack.down(settings) == [orphan_name]
        deadline = time.monotonic() + 10
        while orphan.poll() is None:
            assert time.monotonic() < deadline, "the orphan is still running"
            time.sleep(0.05)
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()


def test_status_names_a_taskmanagers_supervisor_child_and_spare(tmp_path: Path) -> None:
    """``pids`` stays [supervisor, child] (scripts take the JVM as the last one); a waiting
    spare JVM is ``spare_pid``."""
    settings = load_settings(env={"FLOWLEARN__STACK__HOME": str(tmp_path / "home")})
    settings.stack.run.mkdir(parents=True)
    env = {**os.environ, "FLOWLEARN_HOME": str(settings.stack.home)}
    sleepers = {
        name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
        for name in ("taskmanager", "taskmanager-child", "taskmanager-spare")
    }
    try:
        for name, process in sleepers.items():
            pid_file(settings, name).write_text(f"{process.pid}\n")
        shown = stack.component_status(settings)["taskmanager"]
        assert shown["pids"] == [sleepers["taskmanager"].pid, sleepers["taskmanager-child"].pid]
        assert shown["spare_pid"] == sleepers["taskmanager-spare"].pid
        sleepers["taskmanager-spare"].kill()
        sleepers["taskmanager-spare"].wait()
        assert "spare_pid" not in stack.component_status(settings)["taskmanager"]
    finally:
        for process in sleepers.values():
            process.kill()
            process.wait()


#: A child that ignores SIGTERM (a JVM stuck in garbage collection does) and leaves a
#: grandchild in its process group (a TaskManager's Python worker); prints the grandchild's
#: pid.
STUBBORN = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "g = subprocess.Popen(['sleep', '60']); print(g.pid, flush=True); time.sleep(60)"
)


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def supervised(*args: str, env: dict[str, str] | None = None) -> Iterator[Supervisor]:
    """``python -m flowlearn.devstack.supervise ARGS`` and the lines it prints (its log and
    its children's output); stopped at the end (SIGTERM, which stops its child too; SIGKILL
    if that takes over 15 s), whatever happened."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flowlearn.devstack.supervise", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        yield Supervisor(process, iter(process.stdout.readline, ""))
    finally:
        terminate(process, 15)


class Supervisor(NamedTuple):
    process: subprocess.Popen[str]
    lines: Iterator[str]


#: Whether this kernel schedules sessions as groups (autogroup), each with a nice value.
AUTOGROUP = Path("/proc/self/autogroup").exists()


def scheduled_nice(pid: int) -> tuple[int, int | None]:
    """A process's nice value and its session's autogroup's (None without autogroup)."""
    autogroup = None
    if AUTOGROUP:
        autogroup = int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    return os.getpriority(os.PRIO_PROCESS, pid), autogroup


def at_nice(nice: int) -> tuple[int, int | None]:
    """What :func:`scheduled_nice` gives for a process started at ``nice`` from here (a
    nicer test run keeps its own value)."""
    expected = max(nice, os.getpriority(os.PRIO_PROCESS, 0))
    return expected, expected if AUTOGROUP else None


def test_a_component_started_at_a_nice_value_runs_its_session_at_it(tmp_path: Path) -> None:
    """The TaskManager and the Python worker pool ran at nice 10 in sessions of their own,
    and took as much CPU as the predictor: between sessions autogroup scheduling weighs the
    session's nice, not the process's."""
    settings = load_settings(env={"FLOWLEARN__STACK__HOME": str(tmp_path / "home")})
    pid = start_process(
        settings, "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], nice=7
    )
    try:
        assert scheduled_nice(pid) == at_nice(7)
    finally:
        assert stop_process(settings, "sleeper")


def test_the_supervisor_runs_its_child_and_the_childs_session_at_its_nice(
    tmp_path: Path,
) -> None:
    """--nice, for the TaskManager (its spares and replacements: the tests below)."""
    child = [
        sys.executable,
        "-c",
        "import os, time; print(os.getpid(), flush=True); time.sleep(60)",
    ]
    with supervised("--pid-file", str(tmp_path / "child.pid"), "--nice", "7", "--", *child) as (
        _,
        lines,
    ):
        pid = int(next(line for line in lines if line.strip().isdigit()))
        assert scheduled_nice(pid) == at_nice(7)


def test_the_supervisor_kills_a_child_that_ignores_sigterm_and_its_group(tmp_path: Path) -> None:
    """It waited on the child for ever: ``down`` then killed the supervisor, and the
    TaskManager's Python workers outlived the stack."""
    child_pid = tmp_path / "child.pid"
    with supervised(
        "--pid-file", str(child_pid), "--grace-s", "1", "--", sys.executable, "-c", STUBBORN
    ) as (supervisor, lines):
        grandchild = int(next(line for line in lines if line.strip().isdigit()))  # not a log
        child = int(child_pid.read_text())
        supervisor.terminate()
        assert supervisor.wait(15) == 0
        assert _gone(child, 5) and _gone(grandchild, 5)


def test_down_kills_what_is_left_of_a_taskmanagers_process_group(tmp_path: Path) -> None:
    settings = load_settings(env={"FLOWLEARN__STACK__HOME": str(tmp_path / "home")})
    settings.stack.run.mkdir(parents=True)
    env = {**os.environ, "FLOWLEARN_HOME": str(settings.stack.home)}
    child = subprocess.Popen(
        [sys.executable, "-c", STUBBORN.replace("signal.SIG_IGN", "signal.SIG_DFL")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        pid_file(settings, "taskmanager-child").write_text(f"{child.pid}\n")
        assert stack.down(settings) == ["taskmanager-child"]
        assert _gone(grandchild, 5), "the TaskManager's Python worker is still running"
    finally:
        child.kill()
        child.wait()


#: A launcher that counts its runs in the file named by argv[1], then execs into a program
#: that prints its pid and sleeps (a TaskManager's taskmanager.sh and its JVM).
LAUNCHER = (
    'echo run >> "$1"; exec "$2" -c "import os, time; print(os.getpid(), flush=True); '
    'time.sleep(60)" replayed-argument'
)


def test_the_supervisor_restarts_a_healthy_child_as_the_program_it_exec_d_into(
    tmp_path: Path,
) -> None:
    """With --replay-exec a child that ran past --healthy-after-s is restarted at once, as
    what it became (argv, environment, niceness), without running its launcher again."""
    runs = tmp_path / "runs"
    child_pid = tmp_path / "child.pid"
    command = ["--pid-file", str(child_pid), "--replay-exec", "--healthy-after-s", "0.5", "--",
               "nice", "-n", "3", "sh", "-c", LAUNCHER, "launcher", str(runs),
               sys.executable]  # fmt: skip
    # Its log and the children's pids.
    with supervised(*command, env={**os.environ, "MARK": "kept"}) as (_, lines):
        first = int(next(line for line in lines if line.strip().isdigit()))
        next(line for line in lines if "a replacement would start from there" in line)
        os.kill(first, 9)
        second = int(next(line for line in lines if line.strip().isdigit()))
        assert second != first
        assert runs.read_text() == "run\n"  # the launcher ran once
        proc = Path(f"/proc/{second}")
        assert proc.joinpath("cmdline").read_bytes().split(b"\0")[-2] == b"replayed-argument"
        assert b"MARK=kept" in proc.joinpath("environ").read_bytes().split(b"\0")
        assert scheduled_nice(second) == at_nice(os.getpriority(os.PRIO_PROCESS, 0) + 3)
        assert int(child_pid.read_text()) == second


def test_the_supervisor_falls_back_to_its_command_when_the_program_is_gone(
    tmp_path: Path,
) -> None:
    """A remembered program that cannot be started again (upgraded away) is not fatal: the
    replacement comes from the supervised command, launcher and all."""
    runs = tmp_path / "runs"
    program = tmp_path / "sleep"
    shutil.copy("/bin/sleep", program)
    command = ["--pid-file", str(tmp_path / "child.pid"), "--replay-exec", "--healthy-after-s",
               "0.5", "--", "sh", "-c", 'echo run >> "$1"; exec "$2" 60', "launcher", str(runs),
               str(program)]  # fmt: skip
    with supervised(*command) as (_, lines):
        remembered = next(line for line in lines if "a replacement would start from" in line)
        program.unlink()
        os.kill(int(remembered.split("pid ")[1].split()[0]), 9)
        next(line for line in lines if "could not start" in line)
        next(line for line in lines if "started pid" in line)
        deadline = time.monotonic() + 10
        while runs.read_text() != "run\nrun\n":
            assert time.monotonic() < deadline, "the launcher did not run again"
            time.sleep(0.05)


#: A child that prints its pid and sleeps ("live"), or a spare of it ("spare"): prints
#: "ready" and its pid, waits for "start" on its standard input, then is the child.
PROGRAM = """
import os, sys, time
if sys.argv[1] == "spare":
    print("ready", os.getpid(), flush=True)
    if sys.stdin.readline() != "start\\n":
        sys.exit(0)
print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_the_supervisor_keeps_a_spare_that_takes_over_when_the_child_dies(tmp_path: Path) -> None:
    """With --spare a healthy child gets a spare (its program, ORIGINAL replaced by SPARE,
    its log file numbered), which becomes the child the moment the child dies; stopping
    the supervisor ends the spare that follows it."""
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    child_pid = tmp_path / "child.pid"
    spare_pid = tmp_path / "spare.pid"
    command = ["--pid-file", str(child_pid), "--replay-exec", "--healthy-after-s", "0.5",
               "--spare", "live=spare", "--spare-pid-file", str(spare_pid), "--nice", "7", "--",
               sys.executable, str(program), "live",
               f"-Dlog.file={tmp_path / 'tm.log'}"]  # fmt: skip
    with supervised(*command) as (supervisor, lines):

        def next_spare(log_file: str) -> int:
            """The next spare's pid, once it is ready, checked to run as a spare should."""
            pid = int(next(line for line in lines if line.startswith("ready")).split()[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert argv[2:4] == [b"spare", f"-Dlog.file={tmp_path / log_file}".encode()]
            assert scheduled_nice(pid) == at_nice(7)
            deadline = time.monotonic() + 10
            while not spare_pid.exists() or int(spare_pid.read_text()) != pid:
                assert time.monotonic() < deadline, "the spare's pid file does not name it"
                time.sleep(0.05)
            return pid

        first = int(next(line for line in lines if line.strip().isdigit()))
        spare = next_spare("tm.1.log")
        os.kill(first, 9)
        assert int(next(line for line in lines if line.strip().isdigit())) == spare
        deadline = time.monotonic() + 10
        while int(child_pid.read_text()) != spare:
            assert time.monotonic() < deadline, "the spare is not the child"
            time.sleep(0.05)
        # The new child, healthy in turn, gets a spare of its own, its log numbered anew.
        follower = next_spare("tm.2.log")
        supervisor.terminate()
        assert supervisor.wait(15) == 0
        assert _gone(spare, 5) and _gone(follower, 5) and not spare_pid.exists()
