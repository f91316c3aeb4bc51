"""``python -m flowlearn.serving`` as an operator runs it: configured from conf/, answering
the client ``flowlearn predict`` uses, and stopping cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from flowlearn.contracts.redis_contract import Keys
from flowlearn.serving.client import predict, tls_context

from .conftest import RedisServer, Trainer, free_port, launch, predictor_config, wait_for


def ready(url: str, context: ssl.SSLContext | None = None) -> bool:
    # The V2 readiness route: /readyz's condition, and open whatever predictor.auth says.
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1, context=context) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_predictor(
    redis_server: RedisServer,
    prefix: str,
    tmp_path: Path,
    predictor_conf: str = "",
    tls_ca: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """``python -m flowlearn.serving`` from a config file, once ready: (process, url);
    with ``tls_ca``, the CA of its TLS certificate, over https."""
    port = free_port()
    config = predictor_config(redis_server, prefix, tmp_path, port, predictor_conf)
    url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{port}"
    context = tls_context(str(tls_ca)) if tls_ca else None
    proc = launch(config, "--no-log")
    try:
        wait_for(
            "the predictor to be ready",
            lambda: proc.poll() is None and ready(url, context),
            30,
        )
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runs_from_a_config_file_and_stops_gracefully(
    serving_redis: RedisServer, prefix, tmp_path, sig
):
    client = serving_redis.client()
    trainer = Trainer(client, Keys(prefix), "m")
    trainer.publish(np.array([1.0, 0.0, 0.0, 0.0]))
    proc, url = start_predictor(serving_redis, prefix, tmp_path)
    try:
        answer = predict(url, "m", [[1, 0, 0]], timeout=5)
        assert answer["model_version"] == 1 and answer["predictions"][0] > 0.7
        assert predict(url, "nope", [[1, 0, 0]])["status"] == 404
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        client.close()
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


def test_the_client_reports_an_unreachable_predictor():
    answer = predict(f"http://127.0.0.1:{free_port()}", "m", [[1]], timeout=1)
    assert answer["status"] is None and "unreachable" in answer["error"]


def test_a_client_trickling_its_headers_is_cut_off(serving_redis: RedisServer, prefix, tmp_path):
    """Slowloris: a connection that keeps sending header bytes but never ends its headers
    is closed after ``predictor.idle_timeout_s``, while other clients are answered."""
    client = serving_redis.client()
    Trainer(client, Keys(prefix), "m").publish(np.array([1.0, 0.0, 0.0, 0.0]))
    proc, url = start_predictor(serving_redis, prefix, tmp_path, "idle_timeout_s = 1.0")
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n")
            opened = time.monotonic()
            closed_after = None
            # A header line every 0.2 s: far inside any per-read timeout, never the end.
            for i in range(50):
                try:
                    slow.sendall(f"X-Slow-{i}: y\r\n".encode())
                    slow.settimeout(0.2)
                    if slow.recv(1024) == b"":
                        closed_after = time.monotonic() - opened
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - opened
                    break
            assert predict(url, "m", [[1, 0, 0]], timeout=5)["model_version"] == 1
        assert closed_after is not None, "the trickling connection was never closed"
        assert 0.8 <= closed_after <= 3.0, closed_after
    finally:
        proc.kill()
        proc.communicate()
        client.close()


def test_tls_and_tokens_as_an_operator_runs_them(
    serving_redis: RedisServer, prefix, tmp_path, test_ca
):
    """HTTPS with a CA-issued certificate, a tokens file rotated with SIGHUP, and no token
    in anything the process writes."""
    cert, key = test_ca.issue("predictor")
    admin, reader, rotated = (f"{name}-token-0123456789abcdef" for name in ("a", "r", "n"))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{admin} admin\n{reader} read\n")
    tokens.chmod(0o600)
    client = serving_redis.client()
    Trainer(client, Keys(prefix), "m").publish(np.array([1.0, 0.0, 0.0, 0.0]))
    conf = f'tokens_file = "{tokens}"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"'
    proc, url = start_predictor(serving_redis, prefix, tmp_path, conf, tls_ca=test_ca.cert)
    try:
        ca = str(test_ca.cert)
        assert predict(url, "m", [[1, 0, 0]], token=reader, ca_file=ca)["model_version"] == 1
        assert predict(url, "m", [[1, 0, 0]], ca_file=ca)["status"] == 401
        tokens.write_text(f"{rotated} read\n")
        proc.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            """Every worker (the master forwards SIGHUP to each) took the new file: ten
            requests of each token, on new connections spread over the workers."""
            return all(
                "model_version" in predict(url, "m", [[1, 0, 0]], token=rotated, ca_file=ca)
                and predict(url, "m", [[1, 0, 0]], token=reader, ca_file=ca)["status"] == 401
                for _ in range(10)
            )

        wait_for("SIGHUP to reload the tokens in every worker", reloaded)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        client.close()
    assert proc.returncode == 0, out
    assert f"predictor on {url} " in out  # https: predictor.url says so
    assert "bearer tokens required; loaded: 1 admin, 1 read" in out
    assert "loaded: 1 read" in out
    for token in (admin, reader, rotated):
        assert token not in out
