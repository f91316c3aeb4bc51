"""Python workers that start in milliseconds: a pool process, one per TaskManager host, that
has imported what every PyFlink worker imports and forks a worker for each launch.

PyFlink starts each slot's Python worker as ``<python.executable> -m
pyflink.fn_execution.beam.beam_boot ARGS``, and each start imports the same modules (Beam's SDK
harness, PyFlink's operations and coders, gRPC, protobuf, numpy: about 1.2 CPU-seconds). After
a TaskManager is lost, every worker of the job's new slots does that at once, on the cores
that are restoring the job; on two cores that was the largest part of a recovery.

With ``python.executable`` set to a launcher script (:func:`write_launcher`, which runs this
file as ``python -I -S python_worker_pool.py launch ARGS``) a launch hands its arguments,
environment, working directory and standard streams to the pool over a Unix socket
(``FLOWLEARN_WORKER_POOL``). The pool forks a child that runs the module with them, exactly as
the interpreter would have, and the launcher waits for the child and exits with its status; a
SIGTERM to the launcher (Flink stopping the worker) is passed on to the child, and a launcher
that dies takes its child with it. Without a pool (no socket, no answer) the launcher execs the
interpreter itself: the slow start, never a failed one.

Only installed packages are preloaded. The job's own code (``-pyfs``, the PYTHONPATH Flink
gives the worker) is imported by each child, so a new submission never runs an old build.

This file imports only the standard library at the top: the launcher runs it without
site-packages, in about 20 ms.

Example (what the local stack does)::

    python jobs/python_worker_pool.py serve --socket /run/flowlearn/worker-pool.sock &
    # TaskManagers: FLOWLEARN_WORKER_POOL=/run/flowlearn/worker-pool.sock,
    # python.executable: the script write_launcher() wrote
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import NoReturn

#: The environment variable that names the pool's socket (the TaskManagers' environment).
POOL_SOCKET_ENV = "FLOWLEARN_WORKER_POOL"

#: Imported once by the pool, before it forks: the modules every PyFlink worker imports (the
#: SDK harness pulls in Beam, gRPC and protobuf) and the libraries the job's operators import
#: (MLflow's client in the training worker, which registers checkpoints). None of them starts
#: a thread on import. A module that is not installed is skipped.
PRELOAD = (
    "pyflink.fn_execution.beam.beam_sdk_worker_main",
    "pyflink.fn_execution.beam.beam_operations",
    "pyflink.fn_execution.beam.beam_coders",
    "pyflink.datastream",
    "numpy",
    "redis",
    "mlflow.tracking",
)

#: Beam's state sampler times each step of a bundle (counters Flink never reads) on a thread
#: that sleeps between samples, starting at 1/100 of this period and growing to it; the end of
#: every bundle joins that thread, so it waits out the current sleep (Beam's default: up to
#: 200 ms, about 6 ms for a bundle of 50 ms), and the TaskManager waits for the bundle's end.
#: At 2 ms the join waits about 1 ms, for a sampling thread that wakes 500 times a second
#: while a bundle runs.
STATE_SAMPLING_PERIOD_MS = 2

#: A launch's request and the pool's replies: a 4-byte length and a JSON body (request), an
#: 8-byte signed pid, then an 8-byte signed exit code (128 + N for signal N, as a shell says).
_LENGTH = struct.Struct("!I")
_NUMBER = struct.Struct("!q")
#: How long a launcher waits for the pool to take its launch before it starts the interpreter
#: itself (and how long the pool waits for a launch's request).
_ANSWER_TIMEOUT_S = 5.0


def _log(message: str) -> None:
    print(f"[python-worker-pool] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- launcher


def launch(args: list[str]) -> NoReturn:
    """Run ``python ARGS`` through the pool when ``ARGS`` runs a module (``-m NAME ...``) and the
    pool answers; otherwise exec the interpreter with ``ARGS`` unchanged."""
    path = os.environ.get(POOL_SOCKET_ENV, "")
    if len(args) < 2 or args[0] != "-m" or not path:
        _exec_interpreter(args)
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(_ANSWER_TIMEOUT_S)
        conn.connect(path)
        body = json.dumps({"args": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        message = _LENGTH.pack(len(body)) + body
        sent = socket.send_fds(conn, [message], [0, 1, 2])
        conn.sendall(message[sent:])
    except OSError as e:
        _log(f"pool at {path} did not answer ({e}); starting the interpreter itself")
        _exec_interpreter(args)
    # Sent: the pool may have forked the worker already, so from here on no second one is
    # ever started; a pool that fails now fails this launch.
    conn.settimeout(None)
    try:
        pid = _NUMBER.unpack(_read_exactly(conn, _NUMBER.size))[0]
    except OSError as e:
        _log(f"the pool at {path} took the launch but gave no worker ({e})")
        os._exit(1)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        code = _NUMBER.unpack(_read_exactly(conn, _NUMBER.size))[0]
    except OSError as e:
        _log(f"lost the pool while worker {pid} ran ({e})")
        code = 1
    os._exit(int(code))


def _exec_interpreter(args: list[str]) -> NoReturn:
    os.execv(sys.executable, [sys.executable, *args])


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other end closed the connection")
        data += chunk
    return data


def write_launcher(path: Path, python: str) -> Path:
    """Write the executable script to give as ``python.executable``: it runs this file's
    launcher with ``python`` (the workers' interpreter), isolated from the environment's
    Python settings and site-packages, so that it starts in milliseconds."""
    script = Path(__file__).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f'#!/bin/sh\nexec "{python}" -I -S "{script}" launch "$@"\n')
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------- pool


def serve(socket_path: Path) -> None:
    """Preload the workers' modules, then fork a worker for each launch until SIGTERM."""
    started = time.monotonic()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as e:
            _log(f"not preloaded: {name} ({e})")
    _shorten_state_sampling()
    if threading.active_count() > 1:
        # A fork copies only the calling thread: a lock another thread held stays held.
        _log(f"{threading.active_count()} threads after the preload; forks may hang")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stop = False

    def on_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    selector.register(wake_read, selectors.EVENT_READ, None)
    children: dict[int, socket.socket] = {}
    _log(f"ready on {socket_path} ({time.monotonic() - started:.1f} s of preloading)")
    try:
        while not stop:
            for key, _ in selector.select():
                if key.fileobj is listener:
                    _accept(listener, selector, children, (wake_read, wake_write))
                elif key.fileobj == wake_read:
                    while True:
                        try:
                            if not os.read(wake_read, 512):
                                break
                        except BlockingIOError:
                            break
                    _reap(selector, children)
                else:
                    # A launcher's connection is readable only when it closes: it died, so
                    # its worker goes too (the launcher would have passed a SIGTERM on).
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    selector.unregister(conn)
                    _kill(key.data)
    finally:
        for pid in children:
            _kill(pid)
        socket_path.unlink(missing_ok=True)


def _shorten_state_sampling() -> None:
    """Make the state samplers Beam creates (one per bundle processor) sample every
    :data:`STATE_SAMPLING_PERIOD_MS`: their period is a default argument, bound when Beam's
    module was imported."""
    try:
        from apache_beam.runners.worker import statesampler
    except ImportError:
        return
    init = statesampler.StateSampler.__init__
    if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
        init.__defaults__ = (STATE_SAMPLING_PERIOD_MS,)
    else:  # not the signature this was written for: leave Beam as it is
        _log(f"Beam's state sampler takes {init.__defaults__}: its period left as it is")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _accept(
    listener: socket.socket,
    selector: selectors.BaseSelector,
    children: dict[int, socket.socket],
    wake: tuple[int, int],
) -> None:
    conn, _ = listener.accept()
    conn.settimeout(_ANSWER_TIMEOUT_S)
    fds: list[int] = []
    try:
        head, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        if len(fds) != 3 or len(head) < _LENGTH.size:
            raise ValueError("a launch sends its three standard streams with its request")
        size = _LENGTH.unpack(head[: _LENGTH.size])[0]
        body = head[_LENGTH.size :]
        if len(body) < size:
            body += _read_exactly(conn, size - len(body))
        request = json.loads(body)
    except (OSError, ValueError) as e:
        _log(f"refused a launch: {e}")
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_worker(request, fds, [listener, *children.values()], wake)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    with contextlib.suppress(OSError):
        conn.sendall(_NUMBER.pack(pid))
    conn.settimeout(None)
    selector.register(conn, selectors.EVENT_READ, pid)


def _reap(selector: selectors.BaseSelector, children: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            conn.sendall(_NUMBER.pack(code if code >= 0 else 128 - code))
        with contextlib.suppress(KeyError):  # its launcher had gone already
            selector.unregister(conn)
        conn.close()


def _run_worker(
    request: dict[str, object],
    fds: list[int],
    inherited: list[socket.socket],
    wake: tuple[int, int],
) -> NoReturn:
    """In the forked child: become ``python ARGS`` as the launcher was asked to run."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for sock in inherited:
            sock.close()
        for fd in wake:
            os.close(fd)
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        args = [str(a) for a in request["args"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in request["env"].items()}  # type: ignore[attr-defined]
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update(env)
        # As `python -m` would: the working directory first, then PYTHONPATH (the job's code),
        # without the pool's own folder; and no flowlearn module of the pool's, should one
        # have been imported, in front of the job's own.
        here = str(Path(__file__).resolve().parent)
        extra = [os.getcwd(), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        sys.path[:] = extra + [p for p in sys.path if p != here]
        for name in [m for m in sys.modules if m.partition(".")[0] == "flowlearn"]:
            del sys.modules[name]
        module, sys.argv = args[1], [args[1], *args[2:]]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        launch(argv[1:])
    parser = argparse.ArgumentParser(prog="python_worker_pool.py")
    sub = parser.add_subparsers(dest="command", required=True)
    # Run as a file, not with -m: the pool must not import flowlearn, whose modules the
    # workers take from the job's own code.
    serve_cmd = sub.add_parser("serve", help="run the pool (one per TaskManager host)")
    serve_cmd.add_argument("--socket", type=Path, required=True, help="the socket to listen on")
    launcher_cmd = sub.add_parser("write-launcher", help="write the python.executable script")
    launcher_cmd.add_argument("path", type=Path)
    launcher_cmd.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.socket)
    else:
        print(write_launcher(args.path, args.python))


if __name__ == "__main__":
    main()
