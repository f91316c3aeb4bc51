"""Bearer tokens and TLS of the predictor (flowlearn.serving.auth), on the real app.

The app follows a Redis that is not there (nothing listens on its port): the guard answers
before any handler, and the handlers that do run answer from memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from flowlearn.cli.main import TOKEN_VARIABLE, predictor_token
from flowlearn.conf import ConfigError, Settings, load_settings
from flowlearn.conf.tokens import read_tokens
from flowlearn.serving import client
from flowlearn.serving.app import make_app
from flowlearn.serving.auth import ADMIN_ROUTES, OPEN_ROUTES, server_ssl_context
from flowlearn.serving.openapi import OPENAPI
from tests.ports import free_ports

ADMIN = "admin-0123456789abcdef0123456789abcdef"
READER = "read-0123456789abcdef0123456789abcdef"
ROTATED = "rotated-admin-fedcba9876543210fedcba98"


def tokens_file(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "predictor-tokens"
    path.write_text(text)
    path.chmod(mode)
    return path


def settings_with(**predictor: Any) -> Settings:
    redis_port, kafka_port = free_ports(2)
    env = {
        "FLOWLEARN__REDIS__PORT": str(redis_port),  # nothing listens: Redis is "down"
        "FLOWLEARN__KAFKA__PORT": str(kafka_port),
    }
    env |= {f"FLOWLEARN__PREDICTOR__{k.upper()}": str(v) for k, v in predictor.items()}
    return load_settings(env=env)


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tokens_file(tmp_path, f"# predictor tokens\n{ADMIN} admin\n\n{READER}   read  # CI\n")


Scenario = Callable[[TestClient], Awaitable[None]]


def serve(settings: Settings, scenario: Scenario) -> None:
    async def main() -> None:
        app = make_app(settings, log_predictions=False)
        async with TestClient(TestServer(app)) as http:
            await scenario(http)

    asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def routes(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, route, a path that matches it) for every route of the app but HEAD."""
    found = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        canonical = route.resource.canonical
        found.append((route.method, canonical, re.sub(r"\{\w+\}", "x", canonical)))
    return found


def test_every_route_but_the_health_probes_refuses_a_request_without_a_valid_token(token_path):
    settings = settings_with(tokens_file=token_path)

    async def scenario(http: TestClient) -> None:
        all_routes = routes(http.app)
        protected = [r for r in all_routes if r[1] not in OPEN_ROUTES]
        # Every route the app has, present or future, is checked here.
        assert len(protected) >= 12 and {r[1] for r in all_routes} >= OPEN_ROUTES
        for method, route, path in protected:
            for headers, error in (
                ({}, None),
                (bearer("not-a-token-of-this-predictor"), "invalid_token"),
                ({"Authorization": f"Basic {ADMIN}"}, None),  # not the bearer scheme
                ({"Authorization": "Bearer "}, None),
            ):
                resp = await http.request(method, path, headers=headers, json={"instances": []})
                assert resp.status == 401, (method, route, headers)
                challenge = resp.headers["WWW-Authenticate"]
                assert challenge.startswith("Bearer realm=")
                assert (error is None) == ("error=" not in challenge)
                assert "error" in await resp.json()
        # A path no route matches is refused too: nothing says what exists.
        assert (await http.get("/v1/nothing-here")).status == 401
        for method, route, path in all_routes:
            if route in OPEN_ROUTES:
                resp = await http.request(method, path)
                assert resp.status in (200, 503), route  # 503: Redis is down, not ready

    serve(settings, scenario)


def test_read_tokens_are_refused_on_admin_routes_and_admin_tokens_open_everything(token_path):
    settings = settings_with(tokens_file=token_path)

    async def scenario(http: TestClient) -> None:
        admin_routes = [r for r in routes(http.app) if r[1] in ADMIN_ROUTES]
        assert {r[1] for r in admin_routes} == ADMIN_ROUTES
        for method, route, path in admin_routes:
            resp = await http.request(method, path, headers=bearer(READER))
            assert resp.status == 403, route
            assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
            assert (await http.request(method, path, headers=bearer(ADMIN))).status == 200
        for token in (READER, ADMIN):
            resp = await http.get("/v1/models", headers=bearer(token))
            assert resp.status == 200 and await resp.json() == {"models": []}
            resp = await http.get("/v1/models/m", headers=bearer(token))
            assert resp.status == 404  # past the guard: the handler answers
        reloaded = await http.post("/v1/admin/reload", headers=bearer(ADMIN))
        assert await reloaded.json() == {"required": True, "tokens": {"admin": 1, "read": 1}}
        text = await (await http.get("/metrics", headers=bearer(ADMIN))).text()
        assert 'flowlearn_predictor_auth_refused_total{reason="scope"} 2.0' in text

    serve(settings, scenario)


def test_reload_and_sighup_pick_up_a_rotated_file_and_a_bad_one_changes_nothing(token_path):
    settings = settings_with(tokens_file=token_path)

    async def scenario(http: TestClient) -> None:
        tokens_file(token_path.parent, f"{ROTATED} admin\n{READER} read\n")
        # Until the reload the old tokens hold.
        assert (await http.get("/metrics", headers=bearer(ROTATED))).status == 401
        resp = await http.post("/v1/admin/reload", headers=bearer(ADMIN))
        assert resp.status == 200
        assert (await resp.json())["tokens"] == {"admin": 1, "read": 1}
        assert (await http.get("/metrics", headers=bearer(ADMIN))).status == 401
        assert (await http.get("/metrics", headers=bearer(ROTATED))).status == 200

        tokens_file(token_path.parent, f"{ADMIN} superuser\n")
        resp = await http.post("/v1/admin/reload", headers=bearer(ROTATED))
        assert resp.status == 500
        message = (await resp.json())["error"]
        assert "line 1" in message and "previous tokens stay" in message
        assert ADMIN not in message
        assert (await http.get("/metrics", headers=bearer(ROTATED))).status == 200

        tokens_file(token_path.parent, f"{ADMIN} admin\n")
        # The app's handler, not the default action (which would end the test run).
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 5
        while (await http.get("/metrics", headers=bearer(ADMIN))).status != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload the tokens"
            await asyncio.sleep(0.01)
        assert (await http.get("/metrics", headers=bearer(ROTATED))).status == 401

    serve(settings, scenario)


def test_auth_is_on_by_default_beyond_loopback_and_off_on_loopback(token_path):
    async def open_to_all(http: TestClient) -> None:
        assert (await http.get("/v1/models")).status == 200
        assert (await http.get("/metrics")).status == 200

    async def closed(http: TestClient) -> None:
        assert (await http.get("/v1/models")).status == 401
        assert (await http.get("/v1/models", headers=bearer(READER))).status == 200

    serve(settings_with(), open_to_all)  # 127.0.0.1, no token configured
    serve(settings_with(host="localhost"), open_to_all)
    # The test server listens on loopback whatever the settings say: the guard follows them.
    serve(settings_with(host="0.0.0.0", tokens_file=token_path), closed)
    serve(settings_with(host="::", tokens=f"{READER} read"), closed)
    # Configured tokens are asked for on loopback too, unless auth is off.
    serve(settings_with(tokens_file=token_path), closed)
    serve(settings_with(host="0.0.0.0", auth="off", tokens_file=token_path), open_to_all)
    with pytest.raises(
        ConfigError, match=r"predictor\.host '0\.0\.0\.0' is not loopback.*tokens_file"
    ):
        settings_with(host="0.0.0.0")
    with pytest.raises(ConfigError, match=r'predictor\.auth is "on".*predictor\.tokens_file'):
        settings_with(auth="on")
    empty = tokens_file(token_path.parent, "# every token revoked\n")
    with pytest.raises(ConfigError, match="hold no token"):
        make_app(settings_with(tokens_file=empty), log_predictions=False)


@pytest.mark.parametrize(
    "text, mode, message",
    [
        (f"{ADMIN}\n", 0o600, "line 1: expected 'TOKEN SCOPE'"),
        (f"# c\n{ADMIN} root\n", 0o600, "line 2: expected 'TOKEN SCOPE'"),
        (f"{ADMIN} admin extra\n", 0o600, "line 1: expected"),
        ("short admin\n", 0o600, "line 1: expected 'TOKEN SCOPE': a token of at least 16"),
        (f"{ADMIN}\u00e9 read\n", 0o600, "line 1: expected"),
        (f"{ADMIN} admin\n{ADMIN} read\n", 0o600, "line 2: the same token as"),
        (f"{ADMIN} admin\n", 0o644, "readable by every user (mode 0644); chmod 600"),
    ],
)
def test_a_bad_tokens_file_names_the_file_and_line_never_the_token(tmp_path, text, mode, message):
    path = tokens_file(tmp_path, text, mode)
    settings = settings_with(tokens_file=path)
    with pytest.raises(ConfigError) as refused:
        read_tokens(settings.predictor)
    assert message in str(refused.value) and "predictor.tokens_file" in str(refused.value)
    assert ADMIN not in str(refused.value)
    with pytest.raises(ConfigError):  # and the predictor does not start with it
        make_app(settings, log_predictions=False)


def test_settings_errors_name_the_setting(tmp_path, token_path):
    with pytest.raises(ConfigError, match=re.escape("predictor.tokens_file: no such file")):
        settings_with(tokens_file=tmp_path / "missing")
    with pytest.raises(
        ConfigError, match=re.escape("predictor.tls_cert_file and predictor.tls_key_file")
    ):
        settings_with(tls_cert_file=token_path)
    with pytest.raises(ConfigError, match=re.escape("predictor.tls_key_file: no such file")):
        settings_with(tls_cert_file=token_path, tls_key_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match=re.escape("predictor.auth: 'maybe' is not one of")):
        settings_with(auth="maybe")
    with pytest.raises(ConfigError, match=re.escape("predictor.tokens entry 2: expected")):
        read_tokens(settings_with(tokens=f"{ADMIN} admin,{READER}").predictor)
    # Not a certificate: the predictor refuses to start, naming both settings.
    bad = settings_with(tls_cert_file=token_path, tls_key_file=token_path)
    with pytest.raises(ConfigError, match=r"predictor\.tls_cert_file .* cannot serve TLS"):
        server_ssl_context(bad.predictor)
    assert READER not in repr(settings_with(tokens=f"{READER} read"))


def test_tokens_never_reach_the_logs_the_answers_or_the_metrics(token_path, caplog):
    settings = settings_with(tokens_file=token_path)
    near_miss = ADMIN[:-1] + "x"
    seen: list[str] = []

    async def scenario(http: TestClient) -> None:
        for token in (near_miss, READER, ADMIN):
            for method, _route, path in routes(http.app):
                resp = await http.request(method, path, headers=bearer(token), json={})
                seen.append(await resp.text())
                seen.append(str(resp.headers))
        tokens_file(token_path.parent, f"{ADMIN} nope\n")
        seen.append(await (await http.post("/v1/admin/reload", headers=bearer(ADMIN))).text())

    caplog.set_level(logging.DEBUG)
    serve(settings, scenario)
    assert "bearer tokens required; loaded: 1 admin, 1 read" in caplog.text
    assert "not reloaded" in caplog.text
    everything = caplog.text + "".join(seen)
    for token in (ADMIN, READER, near_miss):
        assert token not in everything


def openssl_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    cert, key = directory / "predictor.crt", directory / "predictor.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=flowlearn predictor", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    key.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return cert, key


def test_tls_with_a_self_signed_certificate_and_the_client_sending_its_token(tmp_path, token_path):
    cert, key = openssl_certificate(tmp_path)
    settings = settings_with(tokens_file=token_path, tls_cert_file=cert, tls_key_file=key)
    p = settings.predictor
    assert p.url.startswith("https://") and p.tls

    async def main() -> None:
        server = TestServer(make_app(settings, log_predictions=False))
        await server.start_server(ssl=server_ssl_context(p))
        try:
            url = str(server.make_url("")).rstrip("/")
            assert url.startswith("https://127.0.0.1:")

            def ask(**options: Any) -> dict[str, Any]:
                return client.predict(url, "m", [[1.0, 2.0]], timeout=5.0, **options)

            # Past TLS and the guard: the handler says the model is unknown.
            answer = await asyncio.to_thread(ask, token=READER, ca_file=str(cert))
            assert answer == {"error": "model 'm' not found", "status": 404}
            answer = await asyncio.to_thread(ask, ca_file=str(cert))
            assert answer["status"] == 401 and "Bearer" in answer["error"]
            # The system's CAs alone do not vouch for a self-signed certificate.
            answer = await asyncio.to_thread(ask, token=READER)
            assert answer["status"] is None and "CERTIFICATE_VERIFY_FAILED" in answer["error"]
            plain = url.replace("https://", "http://")
            answer = await asyncio.to_thread(client.predict, plain, "m", [[1.0]], 5.0, token=READER)
            assert answer["status"] != 404  # no plain HTTP on a TLS port
        finally:
            await server.close()

    asyncio.run(main())


def test_the_cli_takes_the_flag_then_the_variable_then_the_first_configured_token(
    token_path, monkeypatch
):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    settings = settings_with(tokens_file=token_path)
    assert predictor_token(settings, None) == ADMIN  # the file's first
    monkeypatch.setenv(TOKEN_VARIABLE, READER)
    assert predictor_token(settings, None) == READER
    assert predictor_token(settings, "from-the-flag") == "from-the-flag"
    monkeypatch.delenv(TOKEN_VARIABLE)
    assert predictor_token(settings_with(), None) is None  # loopback, no token configured


def test_the_openapi_document_declares_the_bearer_scheme():
    assert OPENAPI["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert OPENAPI["security"] == [{"bearer": []}]
    for path, operations in OPENAPI["paths"].items():
        for operation in operations.values():
            if path in OPEN_ROUTES:
                assert operation["security"] == [] and "401" not in operation["responses"]
            else:
                assert "401" in operation["responses"], path
                assert ("403" in operation["responses"]) == (path in ADMIN_ROUTES), path
    assert "/v1/admin/reload" in OPENAPI["paths"]
