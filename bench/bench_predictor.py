"""Benchmark of the predictor (issues #6 and "serving in the ecosystem's own terms"), load
generated on loopback by wrk.

In one run, against one redis-server started here on a free port, for each worker count
(``--workers 1 2``) and each prediction log mode (off; on with ``--kafka HOST:PORT``):

- (a) the predictor (``python -m flowlearn.serving --workers N``): single-instance
  requests/s with p50, p95 and p99, as V1 (``:predict``) and V2 (``/infer``) requests;
  batched predictions/s with 100 instances a request (V1); with the log off, single-instance
  V2 ``ModelInfer`` calls over gRPC from a Python grpc.aio client (:func:`grpc_rate`: the
  client, one process on the same cores, bounds that rate well below wrk's);
- (b) a hello-world endpoint of the same framework (aiohttp + uvloop) with the same number of
  processes on the same port by ``SO_REUSEPORT``, as the predictor's workers: the ceiling,
  and the predictor's rate as a share of it;
- (c) once, a naive predictor reading the weights from Redis on every request: the floor;
- delta-to-served latency (the first configuration): from a version's publication to the
  predictor serving it.

With the log on, the predictor sends every prediction to the broker's events topic (a broker
the bench starts itself, as the local stack does, unless ``--kafka`` names one with the
events topic; ``FLOWLEARN__KAFKA__*`` variables give its security settings) and the report
shows how many records were acknowledged and dropped: a log that drops is cheap for the
wrong reason. The log's cost is reported as the predictor's CPU time per request with the
log on over off, and as the rate's loss. Where there are more CPUs than a row's server
processes, the servers (predictor, hello-world, naive) run on CPUs of their own, and wrk,
Redis, the broker and this script on the others, as a broker and a load generator would on
machines of their own; else everything shares every CPU, and the rate's loss also counts
the broker's work. Before the measured runs, a log-on run that is not counted warms the
bench's own broker up (its JIT compiler works through a fresh broker's first minute of
traffic). Runs here differ by about 5% from one to the next, as much as the cost
to be shown, so the single-instance runs alternate between log off and on (``--rounds``,
a fresh predictor each) and the report gives the median of each round's cost and their
range; the table shows each figure's median over the rounds.

Usage: ``python bench/bench_predictor.py [--quick] [--duration S] [--connections N]
[--workers 1 2] [--kafka HOST:PORT | --no-log] [--rounds N] [--wrk-threads N]``. Needs
redis-server and wrk on PATH (``apt-get install -y redis-server wrk``), and Java for its own
broker. Everything it starts is stopped at the end, also on errors and Ctrl-C. wrk, the
servers and Redis share the cores where there are no more than the servers' processes:
there the rates measure contention as much as the predictor (the CPU time per request
less so).

``--running [CONNECTIONS...]`` measures the local stack's predictor instead, as it serves
beside the job, the demo stream and the prediction log (``make run``; the issue's target
there: at least 3,000 single-instance requests a second at p95 <= 10 ms). It starts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowlearn.contracts.redis_contract import Keys, ModelVersion, Publisher  # noqa: E402
from flowlearn.core import codec  # noqa: E402
from flowlearn.devstack.processes import terminate  # noqa: E402

PASSWORD = "bench-password"
PREFIX = "bench:"
MODEL = "bench"
N_FEATURES = 10
SPEC = json.dumps(
    {
        "type": "logistic",
        "n_features": N_FEATURES,
        "classes": [0, 1],
        "intercept": True,
        "features": "dense",
        "hash_seed": 0,
    }
)

# The same work as the predictor minus the follower: what "reading Redis per request" costs.
NAIVE = """
import json, sys
import numpy as np, redis.asyncio as aioredis, uvloop
from aiohttp import web
from flowlearn.core import codec
from flowlearn.core.features import vectorize

port, redis_port, password, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
r = aioredis.Redis(host="127.0.0.1", port=redis_port, password=password)

async def predict(request):
    body = await request.json()
    snap = await r.hgetall(key)
    spec = json.loads(snap[b"spec"])
    w = codec.decode_array(snap[b"weights"])
    X = vectorize(body["instances"], spec)
    d = spec["n_features"]
    p = 1.0 / (1.0 + np.exp(-(X @ w[:d] + w[d])))
    return web.json_response({"predictions": p.tolist(), "model_version": int(snap[b"version"])})

app = web.Application()
app.router.add_post("/v1/models/{model}:predict", predict)
web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""

# One process of N on the port (reuse_port: SO_REUSEPORT, as the predictor's workers).
HELLO = """
import os, sys, uvloop
from aiohttp import web

async def hello(request):
    await request.read()
    return web.json_response({"predictions": [0.5]})

async def healthz(request):
    return web.json_response({"status": "ok", "pid": os.getpid()})

app = web.Application()
app.router.add_post("/v1/models/{model}:predict", hello)
app.router.add_post("/v2/models/{model}/infer", hello)
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            reuse_port=True, loop=uvloop.new_event_loop())
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%s
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  io.write(string.format("BENCH %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def progress(message: str) -> None:
    print(f"[bench_predictor] {message}", file=sys.stderr, flush=True)


def wait_redis(client: redis.Redis, timeout_s: float = 20.0) -> None:
    """Until a just-started redis-server answers ``client``'s PING (ConnectionError past
    the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, what: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not answering at {url} after {timeout_s}s")


@contextmanager
def process(
    argv: list[str], what: str, env: dict[str, str] | None = None, cpus: set[int] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running (on ``cpus`` only, it and its children, when given) until the end of
    the ``with`` block."""
    if cpus is not None:  # taskset (util-linux) execs argv: the pid stays argv's
        argv = ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus))), *argv]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress(f"started {what} (pid {proc.pid})")
    try:
        yield proc
    finally:
        terminate(proc, 10)
        progress(f"stopped {what}")


def server_cpus(workers: int, cpus: set[int]) -> tuple[set[int], set[int]] | None:
    """Of ``cpus``, those for ``workers`` server processes and those for the rest (wrk,
    Redis, the broker, this script), when there are enough to keep them apart; else None."""
    ordered = sorted(cpus)
    if len(ordered) <= workers:
        return None
    return set(ordered[:workers]), set(ordered[workers:])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` (and those it makes later) on ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except ProcessLookupError:
            continue  # ended meanwhile


def wait_workers(url: str, count: int, what: str, timeout_s: float = 60) -> None:
    """Until ``count`` distinct processes answered ``url``/healthz (each a new connection:
    the kernel spreads them over the processes that listen)."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(pids) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {len(pids)} of {count} processes answer")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                pids.add(json.loads(resp.read())["pid"])
        except OSError:
            time.sleep(0.05)


def metric(url: str, name: str) -> float:
    """The sum of a metric's samples named ``name`` on ``url``/metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


@contextmanager
def own_broker(tmp: Path) -> Iterator[tuple[str, int]]:
    """A Kafka broker with the job's topics, started as the local stack starts one (its
    jars cached in ``.flowlearn-bench-predictor/jars``), on free ports; yields HOST:PORT and
    its pid, and stops it at the end."""
    from flowlearn.conf import load_settings
    from flowlearn.devstack.kafka_broker import create_topics, start_kafka
    from flowlearn.devstack.processes import running_pid, stop_process

    home = ROOT / ".flowlearn-bench-predictor"
    for child in home.iterdir() if home.exists() else ():
        if child.name != "jars":  # an earlier run's broker data: start clean
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    config = tmp / "broker.toml"
    config.write_text(
        f'[stack]\nhome = "{home}"\n[kafka]\nport = {free_port()}\n'
        f"controller_port = {free_port()}\npartitions = 1\n"
    )
    settings = load_settings(config, env={})
    progress(f"starting a Kafka broker on port {settings.kafka.port} for the log-on runs")
    try:
        start_kafka(settings)
        create_topics(settings)
        pid = running_pid(settings, "kafka")
        assert pid is not None, "the broker started and has no pid"
        yield f"{settings.kafka.host}:{settings.kafka.port}", pid
    finally:
        stop_process(settings, "kafka")
        progress("stopped the Kafka broker")


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` and their living
    descendants (a predictor's workers are its master's children), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo, seen = list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            # Fields after the command's closing parenthesis; utime and stime are the 12th
            # and 13th of them (proc(5): fields 14 and 15).
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return total


def wrk(
    url: str,
    body: str,
    duration: int,
    connections: int,
    threads: int,
    tmp: Path,
    server_pids: list[int],
    token: str | None = None,
) -> dict[str, float]:
    """wrk's figures for ``url``, and the CPU time the server processes spent per request
    (``cpu_us``): what the server's own work costs, whatever else shares the cores.
    ``token`` goes as ``Authorization: Bearer``."""
    script = tmp / "post.lua"
    header = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    script.write_text(WRK_SCRIPT % (header, body))
    cpu_before = tree_cpu_s(server_pids)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu_s = tree_cpu_s(server_pids) - cpu_before
    match = re.search(r"^BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, micros, p50, p95, p99, errors = (int(x) for x in match.groups())
    return {
        "rps": requests / (micros / 1e6),
        "p50_ms": p50 / 1000,
        "p95_ms": p95 / 1000,
        "p99_ms": p99 / 1000,
        "errors": errors,
        "cpu_us": cpu_s / max(requests, 1) * 1e6,
    }


def publish(
    client: redis.Redis,
    publisher: Publisher,
    version: int,
    old: np.ndarray,
    new: np.ndarray,
    snapshot: bool,
) -> None:
    publisher.publish(
        ModelVersion(
            MODEL,
            version,
            version - 1,
            version,
            SPEC,
            codec.make_delta(old, new),
            codec.encode_array(new) if snapshot else None,
        )
    )


def delta_to_served(
    predictor_url: str,
    client: redis.Redis,
    publisher: Publisher,
    weights: np.ndarray,
    first_version: int,
    count: int,
) -> list[float]:
    """Publish ``count`` versions; for each, poll the model until it is served (ms)."""
    rng = np.random.default_rng(1)
    latencies = []
    for i in range(count):
        version = first_version + i
        new = weights.copy()
        new[rng.integers(0, weights.size)] = rng.normal()
        started = time.perf_counter()
        publish(client, publisher, version, weights, new, snapshot=False)
        weights = new
        while True:
            with urllib.request.urlopen(f"{predictor_url}/v1/models/{MODEL}", timeout=2) as resp:
                if json.loads(resp.read())["version"] == version:
                    break
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)  # let the follower go back to its blocking read
    return latencies


def sequential_latency(
    version: ModelVersion, path: str, bodies: list[str], n: int, tmp: Path
) -> tuple[list[float], dict[str, object]]:
    """Publish ``version`` to a redis-server started here, start one predictor worker on it
    and time ``n`` requests to ``path`` (after a warm-up of up to 200) sent one after the
    other on one keep-alive loopback connection, each with the next of ``bodies``: the
    round trips (ms) and the last answer."""
    import http.client

    with tempfile.TemporaryDirectory(prefix="redis-", dir=tmp) as redis_dir:
        redis_port = free_port()
        redis_argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
        redis_argv += ["--requirepass", PASSWORD, "--save", "", "--appendonly", "no"]
        with process([*redis_argv, "--dir", redis_dir], "redis-server"):
            client = redis.Redis(host="127.0.0.1", port=redis_port, password=PASSWORD)
            wait_redis(client)
            Publisher(client, Keys(PREFIX), maxlen=1000).publish(version)
            client.close()
            port = free_port()
            env = dict(
                os.environ,
                FLOWLEARN__REDIS__PORT=str(redis_port),
                FLOWLEARN__REDIS__PASSWORD=PASSWORD,
                FLOWLEARN__REDIS__PREFIX=PREFIX,
                FLOWLEARN__PREDICTOR__PORT=str(port),
                FLOWLEARN__PREDICTOR__HOST="127.0.0.1",
                FLOWLEARN__PREDICTOR__WORKERS="1",
                PYTHONPATH=str(Path(__file__).resolve().parents[1]),
            )
            argv = [sys.executable, "-m", "flowlearn.serving", "--no-log"]
            with process(argv, "predictor", env) as predictor:
                wait_http(f"http://127.0.0.1:{port}/readyz", "predictor", predictor)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                headers = {"Content-Type": "application/json"}
                warm = min(200, n)
                ms: list[float] = []
                for i in range(warm + n):
                    t = time.perf_counter()
                    conn.request("POST", path, bodies[i % len(bodies)], headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"predictor answered {resp.status}: {payload[:300]!r}")
                    if i >= warm:
                        ms.append((time.perf_counter() - t) * 1000)
                conn.close()
    return ms, json.loads(payload)


def grpc_rate(
    target: str, row: list[float], duration_s: float, server_pids: list[int]
) -> dict[str, float]:
    """ModelInfer of one FP64 row (raw_input_contents, as Triton's client sends it) against
    ``target`` for ``duration_s``: :data:`GRPC_CHANNELS` channels (a connection each, which
    the kernel spreads over the workers) with :data:`GRPC_IN_FLIGHT` calls in flight each;
    the rate and latency percentiles, as :func:`wrk` reports them, and the server's CPU time
    per call (its 20 warm-up calls a channel included)."""
    import asyncio

    import grpc

    from flowlearn.serving.protocol import grpc_predict_v2_pb2 as pb
    from flowlearn.serving.protocol.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP64", shape=[1, len(row)]
    )
    request = pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor], raw_input_contents=[np.asarray(row, "<f8").tobytes()]
    )
    ms: list[float] = []
    errors = 0

    async def caller(stub: GRPCInferenceServiceStub, until: float) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            t = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=5)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            ms.append((time.perf_counter() - t) * 1000)

    async def run() -> float:
        channels = [grpc.aio.insecure_channel(target) for _ in range(GRPC_CHANNELS)]
        stubs = [GRPCInferenceServiceStub(c) for c in channels]
        for stub in stubs:  # connected and warm before the clock starts
            for _ in range(20):
                await stub.ModelInfer(request, timeout=5)
        started = time.perf_counter()
        until = started + duration_s
        await asyncio.gather(*(caller(s, until) for s in stubs for _ in range(GRPC_IN_FLIGHT)))
        elapsed = time.perf_counter() - started
        for channel in channels:
            await channel.close()
        return elapsed

    cpu_before = tree_cpu_s(server_pids)
    elapsed = asyncio.run(run())
    cpu_s = tree_cpu_s(server_pids) - cpu_before
    q = statistics.quantiles(ms, n=100)
    return {
        "rps": len(ms) / elapsed,
        "p50_ms": statistics.median(ms),
        "p95_ms": q[94],
        "p99_ms": q[98],
        "errors": float(errors),
        "cpu_us": cpu_s / max(len(ms), 1) * 1e6,
    }


#: The gRPC client's channels, and calls in flight on each.
GRPC_CHANNELS, GRPC_IN_FLIGHT = 4, 8


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over ``runs``."""
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def spread(values: list[float]) -> str:
    """``values`` (fractions) in the order they came, as percentages."""
    return ", ".join(f"{v:+.1%}" for v in values)


#: The issue's target for the local stack's predictor under `make run`: at least this many
#: single-instance requests a second at a p95 of at most this many milliseconds.
RUNNING_TARGET = (3000, 10.0)


def measure_running(model: str, connections: list[int], duration: int, threads: int) -> None:
    """``--running``: the local stack's predictor as it serves (``make run``: the job, the
    demo stream and the prediction log on the same cores), single-instance V1 requests of
    the model's own width at each connection count; the settings (conf/, FLOWLEARN__*) give
    its URL and token, as for ``flowlearn predict``."""
    from flowlearn.cli.main import predictor_token
    from flowlearn.conf import load_settings

    settings = load_settings()
    url = settings.predictor.url
    token = predictor_token(settings, None)
    request = urllib.request.Request(f"{url}/v1/models/{model}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            described = json.loads(answer.read())
    except OSError as exc:
        sys.exit(f"bench_predictor: no model {model!r} served at {url} ({exc}); `make run` first")
    if not described.get("ready"):
        sys.exit(f"bench_predictor: model {model!r} at {url} is not ready: {described}")
    row = [0.5] * int(described["spec"]["n_features"])
    body = json.dumps({"instances": [row]})
    rate, p95_ms = RUNNING_TARGET
    print(
        f"\nThe running predictor at {url}, model {model!r} (log: whatever the stack "
        f"configures), single-instance V1 requests, {duration} s a run, wrk -t{threads}:"
    )
    print(f"{'connections':>12} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} target")
    meeting = []
    with tempfile.TemporaryDirectory(prefix="bench-predictor-") as tmp:
        for c in connections:
            progress(f"wrk {duration}s, {c} connections: {url}")
            r = wrk(
                f"{url}/v1/models/{model}:predict", body, duration, c, threads, Path(tmp), [], token
            )
            met = r["rps"] >= rate and r["p95_ms"] <= p95_ms and not r["errors"]
            if met:
                meeting.append(c)
            print(
                f"{c:>12} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {'met' if met else 'missed'}"
                + (f" ({r['errors']:.0f} errors)" if r["errors"] else "")
            )
    # wrk keeps every connection busy: more connections, a higher rate and longer queues.
    print(
        f"target: >= {rate:,} req/s at p95 <= {p95_ms:g} ms: "
        + (f"met with {meeting} connections" if meeting else "MISSED at every connection count")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (3 s each)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads (-t)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure"
    )
    parser.add_argument(
        "--kafka",
        default=None,
        metavar="HOST:PORT",
        help="a broker with the events topic for the log-on runs (default: the bench starts "
        "a local one of its own, as the local stack does)",
    )
    parser.add_argument(
        "--no-log", action="store_true", help="skip the runs with the prediction log on"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="single-instance runs alternating log off and on, a fresh predictor each "
        "(default 3; 2 with --quick)",
    )
    parser.add_argument(
        "--running",
        nargs="*",
        type=int,
        metavar="CONNECTIONS",
        help="measure the local stack's running predictor instead (`make run`), at these "
        "connection counts (default 8 32); nothing is started",
    )
    parser.add_argument("--model", default="demo", help="the model --running asks for")
    args = parser.parse_args()
    duration = args.duration or (3 if args.quick else 10)
    if args.running is not None:
        measure_running(args.model, args.running or [8, 32], duration, args.wrk_threads)
        return
    rounds = args.rounds or (2 if args.quick else 3)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_predictor: {tool} is not on PATH (apt-get install -y {tool})")
    log_modes = [False] if args.no_log else [False, True]

    def measure(url: str, body: str, server_pids: list[int]) -> dict[str, float]:
        return wrk(url, body, duration, args.connections, args.wrk_threads, tmp, server_pids)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-predictor-")))
        redis_port = free_port()
        redis_proc = stack.enter_context(
            process(
                [
                    "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--requirepass",
                    PASSWORD,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
                "redis-server",
            )
        )
        client = redis.Redis(host="127.0.0.1", port=redis_port, password=PASSWORD)
        wait_redis(client)
        publisher = Publisher(client, Keys(PREFIX), maxlen=1000)
        weights = np.random.default_rng(0).normal(size=N_FEATURES + 1)
        publish(client, publisher, 1, np.zeros_like(weights), weights, snapshot=True)
        env = dict(
            os.environ,
            FLOWLEARN__REDIS__PORT=str(redis_port),
            FLOWLEARN__REDIS__PASSWORD=PASSWORD,
            FLOWLEARN__REDIS__PREFIX=PREFIX,
            FLOWLEARN__PREDICTOR__HOST="127.0.0.1",
            PYTHONPATH=str(ROOT),
        )
        all_cpus = os.sched_getaffinity(0)
        #: The processes that are neither wrk nor a server: kept off the servers' CPUs.
        helpers = [os.getpid(), redis_proc.pid]
        if not args.no_log:
            if args.kafka:
                broker = args.kafka
            else:
                broker, broker_pid = stack.enter_context(own_broker(tmp))
                helpers.append(broker_pid)
            host, _, kafka_port = broker.rpartition(":")
            env.update(FLOWLEARN__KAFKA__HOST=host, FLOWLEARN__KAFKA__PORT=kafka_port)

        def place(workers: int) -> set[int] | None:
            """Keep wrk, Redis, the broker and this script off the CPUs of ``workers``
            servers when there are CPUs enough (returns the servers' CPUs), else let them
            all share every CPU (returns None). On shared cores the broker's work (and its
            JIT compiler's, on a fresh broker) slows the predictor beside it: that is not
            the log's cost to the predictor, which the log-on rows are to show."""
            # From the CPUs the bench started with: this script is itself pinned by now.
            split = server_cpus(workers, all_cpus)
            for pid in helpers:
                pin(pid, split[1] if split else all_cpus)
            placement[workers] = (
                f"the servers on CPU {', '.join(map(str, sorted(split[0])))}; wrk, Redis"
                f"{'' if args.no_log else ' and the broker'} on the others"
                if split
                else "every process on every CPU"
            )
            return split[0] if split else None

        #: workers -> where the processes ran, for the report.
        placement: dict[int, str] = {}

        row = [round(float(x), 3) for x in np.random.default_rng(2).normal(size=N_FEATURES)]
        bodies = {
            "V1": (f"/v1/models/{MODEL}:predict", json.dumps({"instances": [row]})),
            "V2": (
                f"/v2/models/{MODEL}/infer",
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "input-0",
                                "shape": [1, N_FEATURES],
                                "datatype": "FP64",
                                "data": row,
                            }
                        ]
                    }
                ),
            ),
        }
        batch = json.dumps({"instances": [row] * 100})
        #: (workers, log on, what) -> wrk's numbers, a run each round (batch, gRPC and hello:
        #: the first round's only); what: V1, V2, batch, gRPC, hello.
        results: dict[tuple[int, bool, str], list[dict[str, float]]] = {}
        #: (workers, log on) -> (records acknowledged, dropped).
        logged: dict[tuple[int, bool], tuple[float, float]] = {}
        latencies: list[float] = []
        naive: dict[str, float] = {}

        @contextmanager
        def predictor(
            workers: int, log_on: bool, what: str
        ) -> Iterator[tuple[str, int, list[int]]]:
            """A predictor of ``workers`` processes on the servers' CPUs (:func:`place`):
            its base URL, gRPC port and pid, once it answers from every worker."""
            port, grpc_port = free_port(), free_port()
            argv = [sys.executable, "-m", "flowlearn.serving", "--workers", str(workers)]
            with process(
                argv + ([] if log_on else ["--no-log"]),
                what,
                dict(
                    env,
                    FLOWLEARN__PREDICTOR__PORT=str(port),
                    FLOWLEARN__PREDICTOR__GRPC_PORT=str(grpc_port),
                ),
                place(workers),
            ) as proc:
                base = f"http://127.0.0.1:{port}"
                wait_http(f"{base}/readyz", what, proc)
                wait_workers(base, workers, what)
                yield base, grpc_port, [proc.pid]

        if not args.no_log and not args.kafka:
            # A broker that has just started compiles its produce path (HotSpot's JIT) over
            # its first minute of traffic, on the cores the first log-on runs would use: a
            # production broker is past that. So the bench sends it one untimed run first.
            what = "predictor, log on, warming the broker up"
            with predictor(args.workers[0], True, what) as (base, _, pids):
                progress(f"wrk {duration}s: {what} (not counted)")
                measure(base + bodies["V1"][0], bodies["V1"][1], pids)
        for workers in args.workers:
            with ExitStack() as hello_stack:
                port = free_port()
                cpus = place(workers)
                hellos = [
                    hello_stack.enter_context(
                        process(
                            [sys.executable, "-c", HELLO, str(port)],
                            f"hello-world {i + 1}",
                            env,
                            cpus,
                        )
                    ).pid
                    for i in range(workers)
                ]
                base = f"http://127.0.0.1:{port}"
                wait_workers(base, workers, "hello-world")
                progress(f"wrk {duration}s, {args.connections} connections: hello-world x{workers}")
                results[(workers, False, "hello")] = [
                    measure(base + bodies["V1"][0], bodies["V1"][1], hellos)
                ]
            for round_, log_on in itertools.product(range(rounds), log_modes):
                first = round_ == 0
                what = (
                    f"predictor x{workers}, log {'on' if log_on else 'off'}, "
                    f"round {round_ + 1}/{rounds}"
                )
                with predictor(workers, log_on, what) as (base, grpc_port, pids):
                    for shape, (path, body) in bodies.items():
                        progress(f"wrk {duration}s: {what}, {shape}, 1 instance a request")
                        results.setdefault((workers, log_on, shape), []).append(
                            measure(base + path, body, pids)
                        )
                    if not first:
                        continue
                    progress(f"wrk {duration}s: {what}, 100 instances a request")
                    results[(workers, log_on, "batch")] = [
                        measure(base + bodies["V1"][0], batch, pids)
                    ]
                    if not log_on:
                        progress(f"gRPC ModelInfer {duration}s: {what}, 1 instance a call")
                        results[(workers, log_on, "gRPC")] = [
                            grpc_rate(f"127.0.0.1:{grpc_port}", row, duration, pids)
                        ]
                    if log_on:
                        logged[(workers, log_on)] = (
                            metric(base, "flowlearn_predictor_log_sent_total"),
                            metric(base, "flowlearn_predictor_log_dropped_total"),
                        )
                    if not latencies:
                        count = 20 if args.quick else 100
                        progress(f"delta-to-served latency over {count} versions ({what})")
                        latencies = delta_to_served(base, client, publisher, weights, 2, count)
        naive_port = free_port()
        with process(
            [
                sys.executable,
                "-c",
                NAIVE,
                str(naive_port),
                str(redis_port),
                PASSWORD,
                Keys(PREFIX).snapshot(MODEL),
            ],
            "naive predictor",
            env,
            place(1),
        ) as proc:
            deadline = time.monotonic() + 30
            while True:  # a GET on a POST route answers 405: enough to know it is up
                try:
                    with socket.create_connection(("127.0.0.1", naive_port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the naive predictor did not start") from None
                    time.sleep(0.05)
            progress(f"wrk {duration}s: naive predictor (Redis read per request)")
            naive = measure(
                f"http://127.0.0.1:{naive_port}{bodies['V1'][0]}", bodies["V1"][1], [proc.pid]
            )
        client.close()

    print(
        f"\npredictor benchmark: wrk -t{args.wrk_threads} -c{args.connections}, {duration}s a "
        f"run, loopback, {len(all_cpus)} CPUs; logistic model with {N_FEATURES} dense features"
    )
    for workers, where in placement.items():
        print(f"{workers} worker(s): {where}")
    print(
        "CPU us/req: CPU time of the server's processes per request (its own work, whatever "
        "else shares the cores); 'hello CPU /': the hello-world's CPU per request over this "
        "row's, the rate it would reach relative to hello-world on cores of its own"
    )
    print(
        f"{'workers':>7} {'log':>4} {'request':>12} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'errors':>7} {'/ hello':>8} {'CPU us/req':>11} {'hello CPU /':>12}"
    )
    medians = {key: median_run(runs) for key, runs in results.items()}
    for (workers, log_on, shape), r in medians.items():
        hello = medians[(workers, False, "hello")]
        label = {"hello": "hello-world", "batch": "V1 x100", "gRPC": "gRPC x1 (py)"}.get(
            shape, f"{shape} x1"
        )
        print(
            f"{workers:7d} {('on' if log_on else 'off') if shape != 'hello' else '':>4} "
            f"{label:>12} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} "
            f"{r['p99_ms']:8.2f} {r['errors']:7.0f} "
            + (f"{r['rps'] / hello['rps']:8.2f}" if shape in bodies else f"{'':8}")
            + f" {r['cpu_us']:11.1f} "
            + (f"{hello['cpu_us'] / r['cpu_us']:12.2f}" if shape in bodies else "")
        )
    print(
        f"{1:7d} {'':>4} {'naive V1 x1':>12} {naive['rps']:9.0f} {naive['p50_ms']:8.2f} "
        f"{naive['p95_ms']:8.2f} {naive['p99_ms']:8.2f} {naive['errors']:7.0f} {'':8} "
        f"{naive['cpu_us']:11.1f}"
    )
    for workers in args.workers:
        r = medians[(workers, False, "batch")]
        print(f"batched predictions/s, {workers} worker(s), 100 a request: {r['rps'] * 100:,.0f}")
        if not args.no_log:
            sent, dropped = logged[(workers, True)]
            for shape in bodies:
                offs, ons = results[(workers, False, shape)], results[(workers, True, shape)]
                # Where the broker shares the servers' cores, the rate's loss counts its work
                # too; the CPU per request is the log's cost to the predictor alone, what
                # its rate loses on cores of its own. Each round's off and on runs are a
                # pair, run one after the other.
                cpu = [on["cpu_us"] / off["cpu_us"] - 1 for off, on in zip(offs, ons, strict=True)]
                rate = [1 - on["rps"] / off["rps"] for off, on in zip(offs, ons, strict=True)]
                print(
                    f"log on costs {statistics.median(cpu):.1%} more of the predictor's CPU "
                    f"per {shape} request (target <= 10%; rounds {spread(cpu)}), "
                    f"{statistics.median(rate):.1%} of the rate on this machine "
                    f"({spread(rate)}), with {workers} worker(s)"
                )
            print(f"  log records acknowledged {sent:,.0f}, dropped {dropped:,.0f}")
    if 2 in args.workers:
        r, hello = medians[(2, False, "V1")], medians[(2, False, "hello")]
        print(
            f"2 workers, V1, log off: {r['rps']:,.0f} req/s (target >= 20,000), p95 "
            f"{r['p95_ms']:.2f} ms (target <= 5), {r['rps'] / hello['rps']:.2f} of hello-world "
            f"(target >= 0.8)"
        )
    q = statistics.quantiles(latencies, n=20)
    print(
        f"delta-to-served latency over {len(latencies)} versions: p50 "
        f"{statistics.median(latencies):.2f} ms, p95 {q[18]:.2f} ms (includes the HTTP polling "
        f"that observes it)"
    )


if __name__ == "__main__":
    main()
