"""The local Prometheus: its scrape configuration (Flink's reporters, the predictor) and its
process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flowlearn.conf import ConfigError, Settings
from flowlearn.conf.tokens import ADMIN, read_tokens
from flowlearn.devstack.processes import (
    debian_binary,
    port_open,
    require_free_port,
    running_pid,
    start_process,
    wait_for,
)


def predictor_scrape(settings: Settings, conf_dir: Path) -> dict[str, Any]:
    """The predictor's scrape job: with its first admin token (written to a file of
    Prometheus's own) when it asks for tokens, over HTTPS when it serves TLS."""
    p = settings.predictor
    job: dict[str, Any] = {
        "job_name": "predictor",
        "metrics_path": "/metrics",
        "static_configs": [{"targets": [f"{p.host}:{p.port}"]}],
    }
    if p.auth_required:
        admin = [t for t in read_tokens(p) if t.scope == ADMIN]
        if not admin:
            raise ConfigError(
                "predictor.tokens_file / predictor.tokens: the local Prometheus scrapes the "
                "predictor's /metrics with an admin token, and none is configured"
            )
        token_file = conf_dir / "predictor-token"
        token_file.unlink(missing_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(admin[0].value)
        job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    if p.tls:
        # Prometheus (Go) trusts a certificate of its ca_file as it is: a self-signed one too.
        job["scheme"] = "https"
        job["tls_config"] = {"ca_file": p.tls_cert_file}
    return job


def start_prometheus(settings: Settings) -> None:
    if running_pid(settings, "prometheus"):
        return
    p = settings.prometheus
    require_free_port(p.host, p.port, "prometheus.port")
    binary = debian_binary("prometheus", "prometheus")
    conf_dir = settings.stack.home / "prometheus"
    conf_dir.mkdir(parents=True, exist_ok=True)
    flink_targets = [f"127.0.0.1:{port}" for port in settings.flink.prometheus_port_list()]
    config = {
        "global": {
            "scrape_interval": f"{p.scrape_interval_s}s",
            "evaluation_interval": f"{p.scrape_interval_s}s",
        },
        "scrape_configs": [
            # One reporter port per Flink process, taken in start order from the range.
            {"job_name": "flink", "static_configs": [{"targets": flink_targets}]},
            predictor_scrape(settings, conf_dir),
        ],
    }
    config_file = conf_dir / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    start_process(
        settings,
        "prometheus",
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={settings.stack.data / 'prometheus'}",
            f"--web.listen-address={p.host}:{p.port}",
            "--storage.tsdb.retention.time=7d",
        ],
    )
    wait_for(
        "Prometheus", lambda: port_open(p.host, p.port), 60, settings.stack.logs / "prometheus.out"
    )
