"""Benchmark of the predictor (issue #6), load generated on loopback by wrk.

In one run, against one redis-server started here on a free port:

- (a) the predictor (``python -m flowlearn.serving``): single-instance requests/s with p50,
  p95 and p99; batched predictions/s with 100 instances a request;
- (b) a hello-world endpoint of the same framework (aiohttp + uvloop): the ceiling;
- (c) a naive predictor reading the weights from Redis on every request: the floor;
- delta-to-served latency: time from a version's publication to the predictor serving it.

Usage: ``python bench/bench_predictor.py [--quick] [--duration S] [--connections N]``.
Needs redis-server and wrk on PATH (``apt-get install -y redis-server wrk``). Everything it
starts is stopped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
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

HELLO = """
import sys, uvloop
from aiohttp import web

async def hello(request):
    await request.read()
    return web.json_response({"predictions": [0.5]})

app = web.Application()
app.router.add_post("/v1/models/{model}:predict", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
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
    argv: list[str], what: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    progress(f"started {what} (pid {proc.pid})")
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        progress(f"stopped {what}")


def wrk(url: str, body: str, duration: int, connections: int, tmp: Path) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT % body)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about 30 s in all)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    duration = args.duration or (3 if args.quick else 10)
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench_predictor: {tool} is not on PATH (apt-get install -y {tool})")

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-predictor-")))
        redis_port = free_port()
        stack.enter_context(
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

        ports = {name: free_port() for name in ("predictor", "hello", "naive")}
        env = dict(
            os.environ,
            FLOWLEARN__REDIS__PORT=str(redis_port),
            FLOWLEARN__REDIS__PASSWORD=PASSWORD,
            FLOWLEARN__REDIS__PREFIX=PREFIX,
            FLOWLEARN__PREDICTOR__PORT=str(ports["predictor"]),
            FLOWLEARN__PREDICTOR__HOST="127.0.0.1",
            PYTHONPATH=str(ROOT),
        )
        servers = {
            "predictor": stack.enter_context(
                process([sys.executable, "-m", "flowlearn.serving", "--no-log"], "predictor", env)
            ),
            "hello": stack.enter_context(
                process(
                    [sys.executable, "-c", HELLO, str(ports["hello"])], "hello-world aiohttp", env
                )
            ),
            "naive": stack.enter_context(
                process(
                    [
                        sys.executable,
                        "-c",
                        NAIVE,
                        str(ports["naive"]),
                        str(redis_port),
                        PASSWORD,
                        Keys(PREFIX).snapshot(MODEL),
                    ],
                    "naive predictor",
                    env,
                )
            ),
        }
        base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        wait_http(f"{base['predictor']}/readyz", "predictor", servers["predictor"])
        for name in ("hello", "naive"):
            # A GET on a POST route answers 405: enough to know the server is up.
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", ports[name]), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or servers[name].poll() is not None:
                        raise RuntimeError(f"{name} did not start") from None
                    time.sleep(0.05)

        row = [round(float(x), 3) for x in np.random.default_rng(2).normal(size=N_FEATURES)]
        single = json.dumps({"instances": [row]})
        batch = json.dumps({"instances": [row] * 100})
        path = f"/v1/models/{MODEL}:predict"
        results: dict[str, dict[str, float]] = {}
        for name, label in (
            ("hello", "(b) hello-world aiohttp (ceiling)"),
            ("predictor", "(a) predictor, 1 instance a request"),
            ("naive", "(c) naive: Redis read per request (floor)"),
        ):
            progress(f"wrk {duration}s, {args.connections} connections: {label}")
            results[name] = wrk(base[name] + path, single, duration, args.connections, tmp)
        progress(f"wrk {duration}s: predictor, 100 instances a request")
        results["batch"] = wrk(base["predictor"] + path, batch, duration, args.connections, tmp)

        count = 20 if args.quick else 100
        progress(f"delta-to-served latency over {count} versions")
        latencies = delta_to_served(base["predictor"], client, publisher, weights, 2, count)
        client.close()

    print(
        f"\npredictor benchmark: wrk -t1 -c{args.connections}, {duration}s a run, loopback, "
        f"{os.cpu_count()} CPUs, logistic model with {N_FEATURES} dense features"
    )
    print(f"{'endpoint':44} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, label in (
        ("predictor", "(a) predictor, 1 instance"),
        ("hello", "(b) hello-world aiohttp (ceiling)"),
        ("naive", "(c) naive, Redis per request (floor)"),
        ("batch", "(a) predictor, 100 instances a request"),
    ):
        r = results[name]
        print(
            f"{label:44} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} "
            f"{r['p99_ms']:8.2f} {r['errors']:7.0f}"
        )
    print(f"batched predictions/s (100 a request): {results['batch']['rps'] * 100:,.0f}")
    print(
        f"predictor / ceiling: {results['predictor']['rps'] / results['hello']['rps']:.2f}; "
        f"predictor / floor: {results['predictor']['rps'] / results['naive']['rps']:.2f}"
    )
    q = statistics.quantiles(latencies, n=20)
    print(
        f"delta-to-served latency over {count} versions: p50 {statistics.median(latencies):.2f}"
        f" ms, p95 {q[18]:.2f} ms (includes the HTTP polling that observes it)"
    )


if __name__ == "__main__":
    main()
