"""Processes of the local stack: pid files, starting and stopping, ports, waiting, the tools
they need, and the one error and log line every part of the stack uses."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flowlearn.conf import Settings


class StackError(RuntimeError):
    """A one-line, actionable reason why the stack cannot do what was asked."""


def log(msg: str) -> None:
    print(f"[flowlearn] {msg}", file=sys.stderr, flush=True)


def pid_file(settings: Settings, name: str) -> Path:
    return settings.stack.run / f"{name}.pid"


def child_pid_file(settings: Settings, name: str) -> Path:
    """Where a supervised component's supervisor writes its current child's pid."""
    return settings.stack.run / f"{name}-child.pid"


def spare_pid_file(settings: Settings, name: str) -> Path:
    """Where a supervised component's supervisor writes its spare's pid while it has one."""
    return settings.stack.run / f"{name}-spare.pid"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _environ(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
        )
    except OSError:
        return ""


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of component ``name`` if its pid file names a live process of this stack."""
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # A recycled pid belongs to someone else: only trust it if the process still carries
    # this stack's home in its command line or in the environment we started it with.
    if _is_zombie(pid):
        return None
    marker = str(settings.stack.home)
    if marker in _cmdline(pid) or f"FLOWLEARN_HOME={marker}" in _environ(pid):
        return pid
    return None


def write_pid(pid_file: Path, pid: int) -> None:
    """Write ``pid`` to ``pid_file`` whole: a reader never sees the file empty or half written
    (``write_text`` truncates first, and ``flowlearn down`` or a test may read it then)."""
    partial = pid_file.with_name(f".{pid_file.name}.partial")
    partial.write_text(f"{pid}\n")
    os.replace(partial, pid_file)


def lower_priority(nice: int) -> None:
    """Run the calling process, and the session it leads, at ``nice`` (0-19): the
    ``preexec_fn`` of a child started in a session of its own (``start_new_session``).

    With autogroup scheduling (Linux's ``/proc/sys/kernel/sched_autogroup_enabled``, on in
    most distributions' kernels) each session is a scheduling group: sessions share the CPU
    by their autogroups' nice values, and a process's own nice orders it only among its
    session's processes. A TaskManager at nice 10 in a session of its own still took as
    much CPU as the predictor's workers at 0. Without autogroup the process's nice alone
    applies (the write fails, and is not needed). A process already nicer (started under
    ``nice``) keeps its value: only a privileged one may lower it.
    """
    nice = max(nice, os.getpriority(os.PRIO_PROCESS, 0))
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


def start_process(
    settings: Settings,
    name: str,
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    nice: int = 0,
) -> int:
    """Start component ``name`` in a session of its own (at ``nice``: :func:`lower_priority`),
    its output to its log, its pid to its pid file; returns the pid."""
    settings.stack.logs.mkdir(parents=True, exist_ok=True)
    settings.stack.run.mkdir(parents=True, exist_ok=True)
    out = (settings.stack.logs / f"{name}.out").open("ab")
    proc = subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {}), "FLOWLEARN_HOME": str(settings.stack.home)},
        cwd=cwd,
        start_new_session=True,  # survives the CLI; a Ctrl-C in the shell does not reach it
        preexec_fn=(lambda: lower_priority(nice)) if nice else None,
    )
    out.close()
    write_pid(pid_file(settings, name), proc.pid)
    return proc.pid


def stop_process(
    settings: Settings, name: str, timeout_s: float = 30.0, group: bool = False
) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns True if something was stopped. ``group``: the
    process leads a process group of its own (a supervised TaskManager), and what is left of
    the group when it ends is killed too (its Python workers: a JVM killed with SIGKILL
    takes none of its children with it)."""
    pid = running_pid(settings, name)
    pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        group = group and os.getpgid(pid) == pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            break
        time.sleep(0.2)
    else:
        log(f"{name} (pid {pid}) did not stop within {timeout_s:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return True


def terminate(process: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM a process this one started; SIGKILL it if it has not ended within
    ``grace_s``. Returns once it is reaped."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def require_free_port(host: str, port: int, setting: str) -> None:
    if port_open(host, port):
        env_name = "FLOWLEARN__" + setting.upper().replace(".", "__")
        raise StackError(
            f"port {port} ({setting}) is already taken by another process: stop it, "
            f"or choose another port with {env_name}=..."
        )


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise StackError(f"{what} did not come up within {timeout_s:.0f}s; see {logfile}")


def require_tool(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(f"'{tool}' is not on PATH: {hint}")
    return path


def require_java() -> str:
    return require_tool("java", "install a JDK 17 (apt-get install -y openjdk-17-jre-headless)")


def debian_binary(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` first when missing (as root)."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {package} with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL
        )
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, text=True
        )
        path = shutil.which(binary)
        if result.returncode == 0 and path:
            # Debian may start its own service on install; ours runs on our port, by our pid.
            subprocess.run(["service", package, "stop"], capture_output=True)
            return path
        raise StackError(f"apt-get install {package} failed: {result.stderr.strip()[-300:]}")
    raise StackError(f"{binary} is not on PATH: install it (apt-get install -y {package})")
