"""The local stack's Prometheus scrapes the predictor as the predictor asks to be called."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from flowlearn.conf import ConfigError, load_settings
from flowlearn.devstack.prometheus_server import predictor_scrape

ADMIN = "admin-0123456789abcdef0123456789abcdef"


def test_loopback_without_tokens_is_scraped_as_before(tmp_path: Path) -> None:
    job = predictor_scrape(load_settings(env={}), tmp_path)
    assert job == {
        "job_name": "predictor",
        "metrics_path": "/metrics",
        "static_configs": [{"targets": ["127.0.0.1:8080"]}],
    }


def test_tokens_and_tls_reach_the_scrape_job(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read-only-token-0123456789 read\n{ADMIN} admin\n")
    tokens.chmod(0o600)
    cert = tmp_path / "predictor.crt"
    cert.write_text("not checked here\n")
    env = {
        "FLOWLEARN__PREDICTOR__TOKENS_FILE": str(tokens),
        "FLOWLEARN__PREDICTOR__TLS_CERT_FILE": str(cert),
        "FLOWLEARN__PREDICTOR__TLS_KEY_FILE": str(cert),
    }
    conf_dir = tmp_path / "prometheus"
    conf_dir.mkdir()
    job = predictor_scrape(load_settings(env=env), conf_dir)
    credentials = Path(job["authorization"]["credentials_file"])
    assert job["authorization"]["type"] == "Bearer"
    assert credentials.read_text() == ADMIN  # the admin token, not the file's first
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert job["scheme"] == "https" and job["tls_config"] == {"ca_file": str(cert)}
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    job.pop("tls_config")  # promtool would read the certificate
    config = conf_dir / "prometheus.yml"
    config.write_text(json.dumps({"scrape_configs": [job]}))
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_no_admin_token_is_an_error_naming_the_settings(tmp_path: Path) -> None:
    env = {"FLOWLEARN__PREDICTOR__TOKENS": "read-only-token-0123456789 read"}
    with pytest.raises(ConfigError, match="admin token"):
        predictor_scrape(load_settings(env=env), tmp_path)
