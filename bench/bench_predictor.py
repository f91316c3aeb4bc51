"""Predictor throughput and freshness, against a ceiling and a floor in the same run.

Load comes from wrk (Debian's package, installed when missing) on loopback:

- flowlearn predictor: ``python -m flowlearn.serving`` following a model in Redis;
- ceiling: a hello-world aiohttp endpoint (same framework, same loop, no work);
- floor: a naive predictor that reads the model's snapshot from Redis on every request.

Also: batched predictions/s (100 instances a request) and delta-to-served latency (a new
version written to Redis until the predictor serves it), p50/p95.

    python bench/bench_predictor.py [--quick] [--duration 10]

It starts its own redis-server and servers on free ports and stops them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import redis

from flowlearn import codec
from flowlearn.redis_contract import Keys, ModelVersion, Publisher

PASSWORD = "bench"
SPEC = json.dumps({"type": "logistic", "n_features": 10, "classes": [0, 1], "intercept": True,
                   "features": "dense", "hash_seed": 0})
INSTANCE = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0]

HELLO = """
import uvloop
from aiohttp import web
async def hello(request):
    await request.read()
    return web.json_response({"hello": "world"})
app = web.Application()
app.router.add_post("/v1/models/m:predict", hello)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), access_log=None,
            print=None)
"""

NAIVE = """
import sys, uvloop, numpy as np, redis.asyncio as aioredis
from aiohttp import web
from flowlearn import codec
client = aioredis.Redis(host="127.0.0.1", port=int(sys.argv[2]), password=sys.argv[3])
async def predict(request):
    body = await request.json()
    fields = await client.hgetall("fl:model:m:snapshot")  # every request: the floor
    w = codec.decode_array(fields[b"weights"])
    X = np.asarray(body["instances"], dtype=np.float64)
    p = 1 / (1 + np.exp(-(X @ w[:-1] + w[-1])))
    return web.json_response({"predictions": p.tolist(), "model_version": int(fields[b"version"])})
app = web.Application()
app.router.add_post("/v1/models/m:predict", predict)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("%s"):read("*a")
done = function(summary, latency, requests)
  for _, p in pairs({50, 95, 99}) do
    io.write(string.format("P%%d %%d\\n", p, latency:percentile(p)))
  end
end
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout_s:.0f}s")


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None and os.geteuid() == 0:
        log(f"installing {package} ...")
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False,
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which(binary)
    if path is None:
        raise SystemExit(f"{binary} not found: apt-get install -y {package}")
    return path


@contextmanager
def process(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def wrk(url: str, body: dict, duration: int, connections: int = 32) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_text(json.dumps(body))
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT % body_file)
        out = subprocess.run([need("wrk", "wrk"), "-t1", f"-c{connections}", f"-d{duration}s",
                              "-s", str(script), url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    pct = {int(p): int(us) / 1000 for p, us in re.findall(r"P(\d+) (\d+)", out)}
    return {"rps": rps, "p50": pct[50], "p95": pct[95], "p99": pct[99],
            "errors": int(non2xx.group(1)) if non2xx else 0}


def delta_to_served(client: redis.Redis, publisher: Publisher, port: int, start: int,
                    rounds: int) -> list[float]:
    """Publish a version, poll the predictor until it serves it; milliseconds each."""
    weights = np.zeros(11)
    url = f"http://127.0.0.1:{port}/v1/models/m"
    out = []
    for version in range(start, start + rounds):
        before = weights.copy()
        weights[version % 11] = version
        mv = ModelVersion("m", version, version - 1, version, SPEC,
                          codec.make_delta(before, weights), None)
        t0 = time.perf_counter()
        publisher.publish(mv)
        while json.loads(urllib.request.urlopen(url, timeout=5).read())["version"] != version:
            time.sleep(0.0005)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="3-second runs")
    args = parser.parse_args()
    duration = 3 if args.quick else args.duration
    redis_port, ours, hello, naive = (free_port() for _ in range(4))
    with tempfile.TemporaryDirectory() as data, process(
            [need("redis-server", "redis-server"), "--port", str(redis_port), "--bind",
             "127.0.0.1", "--requirepass", PASSWORD, "--save", "", "--dir", data], redis_port):
        client = redis.Redis(host="127.0.0.1", port=redis_port, password=PASSWORD)
        publisher = Publisher(client, Keys("fl:"), 1000)
        weights = np.linspace(-1, 1, 11)
        publisher.publish(ModelVersion("m", 1, 0, 1, SPEC,
                                       codec.make_delta(np.zeros(11), weights),
                                       codec.encode_array(weights)))
        env = {"FLOWLEARN__REDIS__PORT": str(redis_port), "FLOWLEARN__REDIS__PASSWORD": PASSWORD,
               "FLOWLEARN__PREDICTOR__PORT": str(ours)}
        one = {"instances": [INSTANCE]}
        hundred = {"instances": [INSTANCE] * 100}
        results = {}
        with process([sys.executable, "-m", "flowlearn.serving"], ours, env):
            deadline = time.monotonic() + 30
            while b'"version": 1' not in urllib.request.urlopen(
                    f"http://127.0.0.1:{ours}/v1/models/m", timeout=5).read():
                if time.monotonic() > deadline:
                    raise SystemExit("the predictor did not load the model")
                time.sleep(0.05)
            log(f"flowlearn predictor, {duration}s ...")
            results["flowlearn predictor"] = wrk(
                f"http://127.0.0.1:{ours}/v1/models/m:predict", one, duration)
            log("batched, 100 instances a request ...")
            results["flowlearn, 100 instances/request"] = wrk(
                f"http://127.0.0.1:{ours}/v1/models/m:predict", hundred, duration)
            log("delta-to-served latency ...")
            latencies = delta_to_served(client, publisher, ours, 2, 20 if args.quick else 100)
        with process([sys.executable, "-c", HELLO, str(hello)], hello):
            log("hello-world aiohttp (ceiling) ...")
            results["ceiling: hello-world aiohttp"] = wrk(
                f"http://127.0.0.1:{hello}/v1/models/m:predict", one, duration)
        with process([sys.executable, "-c", NAIVE, str(naive), str(redis_port), PASSWORD],
                     naive):
            log("naive Redis-per-request predictor (floor) ...")
            results["floor: Redis read per request"] = wrk(
                f"http://127.0.0.1:{naive}/v1/models/m:predict", one, duration)
    print(f"\nPredictor, one process, wrk -t1 -c32, {duration}s each, loopback, 2 cores")
    print(f"  {'':36s} {'req/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'non-2xx':>8s}")
    for name, r in results.items():
        print(f"  {name:36s} {r['rps']:>9,.0f} {r['p50']:>8.2f} {r['p95']:>8.2f} "
              f"{r['p99']:>8.2f} {r['errors']:>8d}")
    ours_rps = results["flowlearn predictor"]["rps"]
    batched = results["flowlearn, 100 instances/request"]["rps"] * 100
    ceiling = results["ceiling: hello-world aiohttp"]["rps"]
    floor = results["floor: Redis read per request"]["rps"]
    print(f"  batched predictions/s: {batched:,.0f}")
    print(f"  ratios: ours / ceiling {ours_rps / ceiling:.2f}, ours / floor {ours_rps / floor:.2f}")
    lat = np.array(latencies)
    print(f"  delta-to-served: p50 {np.percentile(lat, 50):.1f} ms, p95 "
          f"{np.percentile(lat, 95):.1f} ms ({len(lat)} versions)")


if __name__ == "__main__":
    main()
