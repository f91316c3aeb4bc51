"""Several predictor processes on one port: a master and its workers.

One Python process serves on one core at most (the interpreter's lock), so
``predictor.workers`` processes (``--workers``; 0: one per CPU this process may run on)
serve the port together. The master binds one socket per worker, all with ``SO_REUSEPORT``,
so that the kernel spreads new connections evenly over those that listen, and hands each
worker its socket. A worker listens only once its follower has loaded every model (or
:data:`READY_WAIT_S` passed: Redis down, say): until then the kernel gives its connections to
the workers that listen, so a worker starting (again) answers no 503 for lack of weights.
Each worker is a whole predictor (:func:`flowlearn.serving.app.make_app`): its own Redis
follower, its own prediction log.

The master

- checks that nothing listens on the port (and on ``predictor.grpc_port``, which each worker
  binds itself, with ``SO_REUSEPORT`` too, when it listens on HTTP) before binding
  (``SO_REUSEPORT`` would otherwise let a second predictor share the port silently) and
  fails naming the setting;
- forwards SIGTERM and SIGINT to the workers as SIGTERM, waits for them to drain (each
  bounds its own shutdown; the master gives up after :data:`DRAIN_TIMEOUT_S` and kills),
  and exits 0 when they all stopped cleanly;
- starts a worker again when one exits unexpectedly, after a backoff that grows while it
  keeps failing (:data:`RESTART_MIN_S` .. :data:`RESTART_MAX_S`), logged and counted
  (``flowlearn_predictor_worker_restarts_total``); a worker that fails before it is ready
  at the first start, or :data:`MAX_START_FAILURES` times in a row later, stops them all
  and the master exits 1: a bad configuration is an error, not a respawn loop;
- turns prometheus-client's multiprocess mode on for the workers (a directory of its own,
  removed at exit), so that ``/metrics`` on any of them answers for all
  (flowlearn.serving.metrics).

A worker is ``python -m flowlearn.serving.workers``: its stdin is a pipe from the master that
first carries its :class:`WorkerSpec` (JSON, length first), then nothing; its end (the
master died, even by SIGKILL) makes the worker stop as on SIGTERM. It writes one byte on its
status pipe once it is ready; the pipe's end tells the master it exited.

Example: ``python -m flowlearn.serving --workers 4`` (or ``[predictor] workers = 4``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from flowlearn.conf import ConfigError, Settings, settings_from_dict
from flowlearn.serving.app import PREDICTOR, is_ready, make_app, run, serve_app
from flowlearn.serving.metrics import MULTIPROC_DIR

log = logging.getLogger("flowlearn.serving.workers")

#: The longest a worker waits for its follower to load every model before it listens.
READY_WAIT_S = 10.0
#: The master's bound on the workers' drain: each bounds its own steps to 5 s (requests in
#: flight, the follower, the prediction log's flush).
DRAIN_TIMEOUT_S = 20.0
#: Backoff before starting a worker again, doubling while it keeps failing.
RESTART_MIN_S, RESTART_MAX_S = 0.5, 30.0
#: A worker up this long since it was ready resets its slot's backoff.
STABLE_S = 60.0
#: Workers of one slot failing before they are ready this many times in a row: give up.
MAX_START_FAILURES = 5
#: How long a worker may take to be ready (its imports, loading its baselines).
START_TIMEOUT_S = 60.0
#: What stops the master (and, forwarded as SIGTERM, the workers).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Log format of the workers: which process said it matters.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [worker %(process)d] %(message)s"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: a cpuset-limited container's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(setting: int) -> int:
    """``predictor.workers`` (or ``--workers``) resolved: 0 is one per CPU."""
    return setting or available_cpus()


def serve(
    settings: Settings,
    *,
    workers: int,
    baselines: Mapping[str, Path] | None = None,
    ab_fraction: float = 0.0,
    log_predictions: bool = True,
) -> int:
    """Serve with ``workers`` processes (0: one per CPU) until SIGTERM or SIGINT; returns
    the exit status. One worker is the predictor in this very process, no master."""
    count = worker_count(workers)
    if count == 1:
        run(settings, baselines=baselines, ab_fraction=ab_fraction, log_predictions=log_predictions)
        return 0
    spec = WorkerSpec(
        settings.to_dict(),
        {m: str(path) for m, path in (baselines or {}).items()},
        ab_fraction,
        log_predictions,
    )
    return Master(settings, count, spec).run()


@dataclass
class WorkerSpec:
    """What a worker is told on its stdin (JSON): the settings and the run's options."""

    settings: dict[str, Any]
    baselines: dict[str, str]
    ab_fraction: float
    log_predictions: bool
    #: Its listening sockets' file descriptors, and its status pipe's.
    sockets: list[int] = field(default_factory=list)
    status_fd: int = -1
    #: Started again after a worker of its slot exited: it counts one restart.
    restarted: bool = False


class PortInUse(ConfigError):
    """Something already listens on ``predictor.host:port`` (or ``grpc_port``)."""


class Port:
    """``host:port``'s addresses (one per address family it resolves to), checked free;
    ``setting`` names the port in the error."""

    def __init__(self, host: str, port: int, setting: str = "predictor.port") -> None:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.addresses = list(dict.fromkeys((family, addr) for family, _, _, _, addr in infos))
        for family, address in self.addresses:
            # Without SO_REUSEPORT this bind fails on any listener, a reuse-port one included.
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise PortInUse(
                        f"{setting}: cannot listen on {host}:{port} ({exc.strerror}); "
                        f"another predictor, or another program, has it"
                    ) from None

    def bind(self) -> list[socket.socket]:
        """A socket per address, bound with ``SO_REUSEPORT``; its worker makes it listen."""
        sockets: list[socket.socket] = []
        try:
            for family, address in self.addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return sockets


@dataclass
class Slot:
    """One worker's place: its sockets, its process and its history."""

    index: int
    sockets: list[socket.socket]
    proc: subprocess.Popen[bytes] | None = None
    status: int = -1  # the status pipe's read end
    started: float = 0.0
    ready_at: float | None = None
    #: When to start a worker again (None: not waiting to).
    restart_at: float | None = None
    #: Workers of this slot that failed in a row (reset once one stays up STABLE_S).
    failures: int = 0


class Master:
    """Starts, watches and stops the workers; see the module docstring."""

    def __init__(self, settings: Settings, count: int, spec: WorkerSpec) -> None:
        self.settings = settings
        self.count = count
        self.spec = spec
        self.stopping = False
        self.slots: list[Slot] = []
        self.selector = selectors.DefaultSelector()
        self.ever_ready = False
        #: When the master last took a SIGHUP (monotonic; None: never).
        self.sighup_at: float | None = None
        self.metrics_dir = ""
        #: Checked free here: a port in use fails before anything starts.
        self.port = Port(settings.predictor.host, settings.predictor.port)
        if settings.predictor.grpc_port:
            # Each worker binds it itself, with SO_REUSEPORT (grpc takes no socket): checked
            # here, once, like the HTTP port.
            Port(settings.predictor.host, settings.predictor.grpc_port, "predictor.grpc_port")
        #: Every worker stopped by _stop_all exited 0.
        self.clean = True

    def run(self) -> int:
        self.slots = [Slot(i, self.port.bind()) for i in range(self.count)]
        self.metrics_dir = tempfile.mkdtemp(prefix="flowlearn-predictor-metrics-")
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        # SIGHUP re-reads the bearer tokens: every worker guards its own requests.
        handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._forward_sighup)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        try:
            for slot in self.slots:
                self._start(slot)
            code = self._supervise(wake_r)
        finally:  # also on an exception: no worker outlives the master's intent
            self._stop_all()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            self.selector.close()
            os.close(wake_r)
            os.close(wake_w)
            for slot in self.slots:
                for sock in slot.sockets:
                    sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return code if self.clean else 1

    def _forward_sighup(self, _signum: int, _frame: Any) -> None:
        """To every ready worker; one still starting gets it when it is ready
        (:meth:`_on_ready`): until its app takes SIGHUP (it does before it says it is
        ready), the signal's default action would end it, while it imports its modules."""
        self.sighup_at = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.ready_at is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGHUP)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stopping = True

    def _start(self, slot: Slot, restarted: bool = False) -> None:
        if restarted:
            # A fresh socket: the dead worker's, listening, would hold new connections until
            # its replacement is ready; not listening yet, it leaves them to the others.
            for sock in slot.sockets:
                sock.close()
            slot.sockets = self.port.bind()
        status_r, status_w = os.pipe()
        fds = [sock.fileno() for sock in slot.sockets]
        spec = WorkerSpec(
            self.spec.settings,
            self.spec.baselines,
            self.spec.ab_fraction,
            self.spec.log_predictions,
            fds,
            status_w,
            restarted,
        )
        env = dict(os.environ, **{MULTIPROC_DIR: self.metrics_dir})
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flowlearn.serving.workers"],
                stdin=subprocess.PIPE,
                pass_fds=[*fds, status_w],
                env=env,
                # Its own session: a terminal's Ctrl-C reaches the master only, which stops
                # the workers once (a second signal would cut a worker's drain short).
                start_new_session=True,
            )
        except OSError:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        assert proc.stdin is not None
        message = json.dumps(spec.__dict__).encode()
        # A worker that died at once shows as its status pipe's end, below.
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(len(message).to_bytes(8, "big") + message)
            proc.stdin.flush()  # and it stays open: its end tells the worker the master is gone
        slot.proc, slot.status = proc, status_r
        slot.started, slot.ready_at, slot.restart_at = time.monotonic(), None, None
        self.selector.register(status_r, selectors.EVENT_READ, slot)
        log.info("worker %d started (pid %d)", slot.index, proc.pid)

    def _supervise(self, wake_r: int) -> int:
        while not self.stopping:
            now = time.monotonic()
            deadlines = [s.restart_at for s in self.slots if s.restart_at is not None]
            deadlines += [
                s.started + START_TIMEOUT_S
                for s in self.slots
                if s.proc is not None and s.ready_at is None
            ]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            for key, _ in self.selector.select(timeout):
                if key.data is None:  # a signal woke us: its handler has run
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                    continue
                slot = key.data
                if os.read(slot.status, 1):
                    slot.ready_at = time.monotonic()
                    self._on_ready(slot)
                else:
                    code = self._reap(slot)
                    if not self.stopping and not self._exited(slot, code):
                        return 1
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and now >= slot.restart_at and not self.stopping:
                    self._start(slot, restarted=True)
                elif (
                    slot.proc is not None
                    and slot.ready_at is None
                    and now - slot.started > START_TIMEOUT_S
                ):
                    log.error(
                        "worker %d (pid %d) not ready after %.0fs: stopping it",
                        slot.index,
                        slot.proc.pid,
                        START_TIMEOUT_S,
                    )
                    slot.proc.kill()
                    slot.proc.wait()  # at once; its status pipe's end reports the exit
        return 0

    def _on_ready(self, slot: Slot) -> None:
        assert slot.proc is not None
        log.info("worker %d ready (pid %d)", slot.index, slot.proc.pid)
        if self.sighup_at is not None and self.sighup_at >= slot.started:
            slot.proc.send_signal(signal.SIGHUP)  # taken while it started
        if not self.ever_ready and all(s.ready_at is not None for s in self.slots):
            self.ever_ready = True
            pids = ", ".join(str(s.proc.pid) for s in self.slots if s.proc is not None)
            url = self.settings.predictor.url
            log.info("predictor on %s: %d workers (pids %s)", url, self.count, pids)

    def _reap(self, slot: Slot) -> int:
        """The exit status of the slot's worker, whose status pipe just ended."""
        assert slot.proc is not None
        self.selector.unregister(slot.status)
        os.close(slot.status)
        try:
            code = slot.proc.wait(5.0)
        except subprocess.TimeoutExpired:  # it closed the pipe but lingers: done for anyway
            slot.proc.kill()
            code = slot.proc.wait()
        self._close_stdin(slot.proc)
        mark_process_dead(slot.proc.pid, self.metrics_dir)  # its live gauges go
        slot.proc = None
        return code

    def _exited(self, slot: Slot, code: int) -> bool:
        """Schedule the slot's restart after its worker exited unexpectedly with ``code``;
        False: give up (it fails at start)."""
        now = time.monotonic()
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        if slot.ready_at is None:
            slot.failures += 1
            if not self.ever_ready or slot.failures >= MAX_START_FAILURES:
                log.error(
                    "worker %d %s before it was ready%s: stopping (see its log above)",
                    slot.index,
                    how,
                    "" if not self.ever_ready else f", {slot.failures} times in a row",
                )
                return False
        else:
            if now - slot.ready_at >= STABLE_S:
                slot.failures = 0
            slot.failures += 1
        delay = min(RESTART_MIN_S * 2 ** (slot.failures - 1), RESTART_MAX_S)
        log.warning("worker %d %s; starting it again in %.1fs", slot.index, how, delay)
        slot.restart_at = now + delay
        return True

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for their drain (bounded), kill the stragglers."""
        live = [s for s in self.slots if s.proc is not None]
        for slot in live:
            assert slot.proc is not None
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        failed = False
        for slot in live:
            assert slot.proc is not None
            try:
                code = slot.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) still draining: killed", slot.index, slot.proc.pid)
                slot.proc.kill()
                code = slot.proc.wait()
            # Stopped by SIGTERM before it was ready (importing, say): it had nothing to drain.
            early = code == -signal.SIGTERM and slot.ready_at is None
            failed = failed or (code != 0 and not early)
            self._close_stdin(slot.proc)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(slot.status)
            os.close(slot.status)
            slot.proc = None
        if live:
            log.info("workers stopped%s", " (not all cleanly)" if failed else "")
        self.clean = not failed

    @staticmethod
    def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


# ------------------------------------------------------------------------------- the worker


def _read_spec() -> WorkerSpec:
    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(0, n - len(data))
            if not chunk:
                raise SystemExit("flowlearn.serving.workers: the master went away")
            data += chunk
        return data

    size = int.from_bytes(read(8), "big")
    return WorkerSpec(**json.loads(read(size)))


def _watch_master() -> None:
    """Stop as on SIGTERM when the master's end of stdin closes (the master died)."""
    while os.read(0, 512):
        pass
    log.warning("the master is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> None:
    """A worker: serve the sockets the master gave, as its spec says."""
    # SIGHUP's default action ends a process: until the app takes it (and then reads the
    # tokens once more), it is ignored. The master sends it to ready workers only (before
    # this line runs, a worker is still importing its modules).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    spec = _read_spec()
    settings = settings_from_dict(spec.settings)
    sockets = [socket.socket(fileno=fd) for fd in spec.sockets]
    for fd in [*spec.sockets, spec.status_fd]:
        os.set_inheritable(fd, False)  # nothing this worker might start gets them
    threading.Thread(target=_watch_master, name="master-watch", daemon=True).start()
    app = make_app(
        settings,
        baselines={m: Path(path) for m, path in spec.baselines.items()},
        ab_fraction=spec.ab_fraction,
        log_predictions=spec.log_predictions,
    )
    if spec.restarted:
        app[PREDICTOR].metrics.worker_restarts.inc()

    async def listen_when_ready(app: web.Application) -> None:
        # The startup hooks run before aiohttp's site makes the sockets listen.
        p, deadline = app[PREDICTOR], time.monotonic() + READY_WAIT_S
        while not is_ready(p) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        os.write(spec.status_fd, b"r")  # and the pipe stays open until this process ends

    app.on_startup.append(listen_when_ready)
    serve_app(app, settings, sockets=sockets)


if __name__ == "__main__":
    worker_main()
