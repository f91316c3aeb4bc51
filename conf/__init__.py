"""Typed configuration of flowlearn: the only place endpoints, ports and paths are defined."""

from flowlearn.conf.loader import load_settings, settings_from_dict
from flowlearn.conf.settings import (
    ConfigError,
    FlinkConf,
    JobConf,
    KafkaConf,
    MlflowConf,
    PredictorConf,
    PrometheusConf,
    RedisConf,
    Settings,
    StackConf,
    TopicsConf,
)

__all__ = [
    "ConfigError",
    "FlinkConf",
    "JobConf",
    "KafkaConf",
    "MlflowConf",
    "PredictorConf",
    "PrometheusConf",
    "RedisConf",
    "Settings",
    "StackConf",
    "TopicsConf",
    "load_settings",
    "settings_from_dict",
]
