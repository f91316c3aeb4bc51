"""Reading the configuration: typed tables from TOML and the environment.

>>> from flowlearn.conf import load_settings
>>> s = load_settings(env={})
>>> s.kafka.bootstrap
'127.0.0.1:9092'
>>> load_settings(env={"FLOWLEARN__REDIS__PORT": "6400"}).redis.port
6400

Layers, later ones winning: ``defaults.toml`` beside this file, the TOML file named by
``FLOWLEARN_CONFIG`` (or passed as ``path``), then ``FLOWLEARN__SECTION__KEY`` variables.
A setting that another tool has its own variable for takes that variable when no layer set
it (:data:`FOREIGN_VARIABLES`: ``MLFLOW_TRACKING_URI``, as MLflow's clients read it).

>>> load_settings(env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"}).mlflow.tracking_uri
'http://mlflow:5000'
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from flowlearn.conf.settings import ConfigError, Settings

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
ENV_PREFIX = "FLOWLEARN__"
#: Other tools' variables for a setting: (section, key) by variable. The setting's own
#: layers win; the variable fills it where they left it empty.
FOREIGN_VARIABLES = {"MLFLOW_TRACKING_URI": ("mlflow", "tracking_uri")}


def _project_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def build_table(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, converting and checking each field's type
    (``where`` names the table in errors: ``models.fraud.learning_rate: cannot read ...``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {
        key: _convert(hints[key], value, f"{where}.{key}" if where else key)
        for key, value in data.items()
    }
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:  # a table read by another layer (model specs): kept as written
        return value
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build_table(hint, value, where)  # type: ignore[arg-type]
    if origin is dict:
        _, value_type = get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table")
        return {str(k): _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:  # tuple[str, ...]: a TOML list, or a comma-separated variable
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: expected a list")
        args = get_args(hint)
        if Ellipsis not in args:  # tuple[float, float]: so many items, each of its type
            if len(items) != len(args):
                raise ConfigError(f"{where}: expected a list of {len(args)}, got {len(items)}")
            return tuple(
                _convert(t, v, f"{where}[{i}]")
                for i, (t, v) in enumerate(zip(args, items, strict=True))
            )
        return tuple(str(item).strip() for item in items if str(item).strip())
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {get_args(hint)}")
        return value
    try:
        if hint is bool:
            if isinstance(value, str):  # from an environment variable
                return value.strip().lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if hint is Path:
            path = Path(os.path.expanduser(str(value)))
            return path if path.is_absolute() else _project_root() / path
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read {value!r} as {hint.__name__}") from exc
    raise ConfigError(f"{where}: unsupported setting type {hint}")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path}: {exc}") from exc


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load, merge and validate the configuration (see the module docstring)."""
    env = os.environ if env is None else env
    data = _read_toml(DEFAULTS_FILE)
    override = path or env.get("FLOWLEARN_CONFIG")
    if override:
        data = _merge(data, _read_toml(Path(override)))
    data = _merge(data, _env_layer(env))
    for variable, (section, key) in FOREIGN_VARIABLES.items():
        if env.get(variable) and not data.get(section, {}).get(key):
            data = _merge(data, {section: {key: env[variable]}})
    settings: Settings = build_table(Settings, data, "")
    return settings.validate()


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """Rebuild settings from :meth:`Settings.to_dict` (how a submitted job gets its config)."""
    settings: Settings = build_table(Settings, data, "")
    return settings.validate()
