"""The local Prometheus: its scrape configuration (Flink's reporters, the predictor) and its
process."""

from __future__ import annotations

import json

from flowlearn.conf import Settings
from flowlearn.devstack.processes import (
    debian_binary,
    port_open,
    require_free_port,
    running_pid,
    start_process,
    wait_for,
)


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
            {
                "job_name": "predictor",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [f"{settings.predictor.host}:{settings.predictor.port}"]}
                ],
            },
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
