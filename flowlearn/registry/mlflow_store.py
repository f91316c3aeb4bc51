"""The MLflow model registry, seen through flowlearn's eyes: versions of weights.

Each registered model is ``{name_prefix}{model id}``. One :meth:`Registry.register` call makes
one MLflow run in the experiment ``flowlearn`` (metrics; params; the artifact ``model``) and
one model version whose source is that artifact: an MLflow pyfunc model (``MLmodel``, a
signature from the spec, pip requirements) whose data are the version's weights
(``weights.flc``, the codec bytes) and spec (``spec.json``), nothing pickled. Its loader,
:mod:`flowlearn.serving.mlflow_pyfunc`, scores through the predictor's code, so
``mlflow models serve -m models:/flowlearn-demo/3`` answers as the predictor does.
The model version carries everything :class:`RegisteredVersion` needs as ``flowlearn.*``
tags, so listing versions is one paginated search and never opens a run.

A ``kind`` tells the online job's versions (``"online"``) from batch-trained baselines
(``"baseline"``); flowlearn's ``version`` (the update count) is only unique within one
``(model id, kind)``. Registering is idempotent on ``(model id, kind, version, weights)``.

The job registers with ``live=True``: the alias ``live`` then points at the version (the
job's newest registered version, or the checkpoint an automatic rollback restored), and the
alias ``best`` at the online version of lowest :data:`BEST_METRIC`. With ``keep_versions``
set, each online registration deletes the online versions beyond the last ``keep_versions``
except those holding an alias and those tagged ``flowlearn.keep`` (set on a rollback's
target and on every version that held ``best``; set it yourself to keep a version).

With a local store (``sqlite:///...``, the default, or a ``file:`` store) the folder holding
the store is created and artifacts land beside it (``<folder>/artifacts``), never in the
working directory; writers on one host are serialised by a lock file in that folder, so two
processes can register into one SQLite store. A server (``http(s)://``) keeps its own
artifact locations. Prefer SQLite to ``file:``: MLflow 3 opens file stores only with
``MLFLOW_ALLOW_FILE_STORE=true``, and its file model registry reads versions through the
process's default tracking store, which creates ``mlflow.db`` in the working directory.

mlflow is imported on first use (it takes about a second), so importing this module is cheap.

>>> import tempfile, numpy as np
>>> from flowlearn.core.codec import decode_array, encode_array
>>> tmp = tempfile.TemporaryDirectory()
>>> reg = Registry(f"sqlite:///{tmp.name}/mlflow.db")
>>> w = encode_array(np.array([0.5, -1.0]))
>>> spec = '{"type": "logistic", "n_features": 1, "intercept": true}'
>>> v = reg.register("demo", 3, w, spec, 120, {"windowed_loss": 0.4}, live=True)
>>> v.version, v.registry_version, v.kind, v.metrics, v.model_uri
(3, 1, 'online', {'windowed_loss': 0.4}, 'models:/flowlearn-demo/1')
>>> sorted(reg.aliases("demo"))
['best', 'live']
>>> decode_array(reg.load_weights("demo", 3)).tolist()
[0.5, -1.0]
>>> [x.version for x in reg.versions("demo")]
[3]
>>> tmp.cleanup()
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from flowlearn.conf import Settings

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = ["BEST", "KEEP_TAG", "LIVE", "RegisteredVersion", "Registry", "RegistryError", "mask_uri"]

EXPERIMENT = "flowlearn"
WEIGHTS_ARTIFACT = "weights.flc"
SPEC_ARTIFACT = "spec.json"
#: The run's artifact folder holding the MLflow model (the model version's source).
MODEL_ARTIFACT = "model"
#: The module MLflow loads a version with (``_load_pyfunc``); named, not imported: the
#: registry sits below the serving code in the layers.
PYFUNC_LOADER = "flowlearn.serving.mlflow_pyfunc"
#: The model's data folder (weights and spec) inside the run's artifacts.
_DATA_PATH = f"{MODEL_ARTIFACT}/data/version"
#: The alias of the version the job serves: its newest registered one, or the checkpoint an
#: automatic rollback restored.
LIVE = "live"
#: The alias of the online version with the lowest :data:`BEST_METRIC`.
BEST = "best"
#: The metric ``best`` minimises: the mean prequential (test-then-train) loss of the
#: samples a checkpoint's versions scored (:meth:`flowlearn.core.checkpointing.Checkpoint
#: .metrics`), the one figure comparable across a model's checkpoints.
BEST_METRIC = "windowed_loss"

_TAG = "flowlearn."
_METRIC_TAG = f"{_TAG}metric."
_SKIPPED_TAG = f"{_TAG}skipped_metrics"
#: A version tagged so is never deleted by retention; the value says why.
KEEP_TAG = f"{_TAG}keep"
#: Marks a version that is an MLflow model; one registered before (no tag) has its weights
#: and spec at its run's root.
_MODEL_TAG = f"{_TAG}mlflow_model"
_KIND_RE = re.compile(r"[A-Za-z0-9_.-]+")
_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key|auth|sig", re.IGNORECASE)
_PAGE_SIZE = 1000
_LOCKED_RETRIES = (0.05, 0.2, 0.5, 1.0)  # seconds slept before each retry of a locked SQLite
_LOCK_TIMEOUT_S = 60.0  # waiting longer than this for the writers' lock file is an error

_T = TypeVar("_T")


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the (masked) tracking URI.
    ``permanent``: the registry refused the request itself (an invalid parameter), so trying
    again cannot help; otherwise it may (a server down, a locked store)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


#: MLflow error codes that refuse the request itself: the same request fails again.
_PERMANENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"})


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered version of a model's weights."""

    model_id: str
    #: flowlearn's model version (the update count).
    version: int
    #: MLflow's model version number (increases with every registration of the model).
    registry_version: int
    #: ``"online"`` (from the job) or ``"baseline"`` (batch-trained).
    kind: str
    run_id: str
    samples_applied: int
    epoch: int | None
    metrics: dict[str, float]
    created_ms: int
    weights_sha256: str
    #: The run in the MLflow UI: a URL for a server, ``<tracking uri>#/experiments/<id>/runs/
    #: <run id>`` for a local store (open it with ``mlflow ui --backend-store-uri``).
    link: str
    #: The MLflow model (``models:/<name>/<registry version>``, for ``mlflow models serve``
    #: and ``mlflow.pyfunc.load_model``); empty for a version registered before flowlearn
    #: registered MLflow models.
    model_uri: str = ""


def mask_uri(uri: str) -> str:
    """``uri`` with its password and secret-looking query values replaced by ``***``.

    >>> mask_uri("https://ann:s3cret@mlflow.example:5000/?token=abc&x=1")
    'https://ann:***@mlflow.example:5000/?token=***&x=1'
    """
    parts = urlsplit(uri)
    masked = uri
    if parts.password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        masked = masked.replace(parts.netloc, f"{userinfo.partition(':')[0]}:***@{host}", 1)
    if parts.query:
        query = "&".join(
            f"{key}=***" if sep and _SECRET_QUERY_KEY.search(key) else f"{key}{sep}{value}"
            for key, sep, value in (item.partition("=") for item in parts.query.split("&"))
        )
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def _secrets(uri: str) -> list[str]:
    """The secret strings in ``uri`` (raw and decoded), longest first, for masking messages."""
    parts = urlsplit(uri)
    found = [parts.password or ""]
    for key, _, value in (item.partition("=") for item in parts.query.split("&")):
        if _SECRET_QUERY_KEY.search(key):
            found.append(value)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def _local_store(uri: str) -> tuple[str, Path] | None:
    """For a local store, ``(uri with an absolute path, path of the DB file or store folder)``.

    None for a server. A relative path is resolved against the current directory now, so a
    later ``chdir`` does not move the store.
    """
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        rest = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        path_text, sep, query = rest.partition("?")
        if path_text in ("", ":memory:"):
            raise ValueError(f"an in-memory SQLite store cannot hold a registry: {uri!r}")
        path = Path(path_text).expanduser().absolute()
        return f"sqlite:///{path}{sep}{query}", path
    if parts.scheme == "file" or (parts.scheme == "" and not parts.netloc):
        path = Path(unquote(parts.path) if parts.scheme else uri).expanduser().absolute()
        return path.as_uri(), path
    return None


def _filter_literal(value: str) -> str:
    """``value`` quoted for an MLflow search filter (it has no escape sequences)."""
    for quote_char in ("'", '"'):
        if quote_char not in value:
            return f"{quote_char}{value}{quote_char}"
    raise ValueError(f"a model id cannot hold both kinds of quotes: {value!r}")


def _save_pyfunc(
    model_dir: Path, scratch: Path, weights: bytes, spec_json: str, spec: Mapping[str, Any]
) -> None:
    """Save one version as an MLflow pyfunc model in ``model_dir``: its weights and spec as
    the data that :data:`PYFUNC_LOADER` loads, the signature, the pip requirements."""
    import mlflow.pyfunc

    data = scratch / Path(_DATA_PATH).name
    data.mkdir()
    (data / WEIGHTS_ARTIFACT).write_bytes(weights)
    (data / SPEC_ARTIFACT).write_text(spec_json)
    with warnings.catch_warnings():
        # An input example would make MLflow load and run the model here, in the job.
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        mlflow.pyfunc.save_model(
            str(model_dir),
            loader_module=PYFUNC_LOADER,
            data_path=str(data),
            signature=_signature(spec),
            # Given, not inferred: inferring loads the model in a subprocess (seconds).
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    """What loading a version needs: flowlearn (numpy and mlflow come with it)."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy as np

    try:
        flowlearn = f"flowlearn=={version('flowlearn')}"
    except PackageNotFoundError:  # run from a source tree
        flowlearn = "flowlearn"
    return [flowlearn, f"numpy=={np.__version__}"]


def _signature(spec: Mapping[str, Any]) -> Any:
    """The MLflow signature of what :data:`PYFUNC_LOADER`'s ``predict`` takes and answers
    for a model of ``spec`` (a :class:`mlflow.models.ModelSignature`): the named feature
    columns (optional where missing values are imputed), or a float64 ``(n, n_features)``
    tensor for a dense model without names; no input schema for a hashed model (any
    ``{name: value}`` columns). Out: the scores, with a ``label`` column when the spec
    names its classes."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema, TensorSpec

    from flowlearn.core.model_types import MODEL_TYPES

    inputs = None
    names = spec.get("feature_names") or []
    if spec.get("features", "dense") == "dense":
        if names:
            required = spec.get("missing") != "impute"
            # Any, not double: MLflow refuses an all-int column for a double one, and the
            # predictor takes ints; the features are checked as by the predictor anyway.
            inputs = Schema([ColSpec(AnyType(), str(n), required=required) for n in names])
        elif "n_features" in spec:
            inputs = Schema([TensorSpec(np.dtype(np.float64), (-1, int(spec["n_features"])))])
    kind = MODEL_TYPES.get(spec.get("type", ""))
    multiclass = kind is not None and kind.multiclass
    if kind is not None and kind.classifier and spec.get("class_names"):
        score = ColSpec(Array("double") if multiclass else "double", "prediction")
        outputs = Schema([score, ColSpec("string", "label")])
    else:
        width = len(spec.get("classes") or ()) if multiclass else 0
        outputs = Schema([TensorSpec(np.dtype(np.float64), (-1, width) if width else (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _is_locked(exc: BaseException) -> bool:
    return "database is locked" in f"{exc} {exc.__cause__}"


class Registry:
    """Registers and reads versions of model weights in an MLflow tracking store.

    ``tracking_uri`` is ``sqlite:///path/mlflow.db`` (local, the default in
    ``flowlearn.conf.settings.MlflowConf``), a ``file:`` store or an ``http(s)://`` server.
    ``keep_versions`` > 0 turns retention on (see the module's docstring; 0 keeps every
    version). Nothing is opened until the first call. One instance may be shared by threads.
    """

    def __init__(
        self, tracking_uri: str, name_prefix: str = "flowlearn-", keep_versions: int = 0
    ) -> None:
        if not tracking_uri:
            raise ValueError("tracking_uri must not be empty")
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int):
            raise ValueError(f"keep_versions must be an int, got {keep_versions!r}")
        if keep_versions < 0:
            raise ValueError(f"keep_versions must be >= 0, got {keep_versions}")
        self._keep_versions = keep_versions
        local = _local_store(tracking_uri)
        self._uri = local[0] if local else tracking_uri.rstrip("/")
        #: The SQLite file or ``file:`` store folder; None for a server.
        self._store_path: Path | None = local[1] if local else None
        self._prefix = name_prefix
        self._masked_uri = mask_uri(self._uri)
        self._secrets = _secrets(self._uri)
        self._open_lock = threading.Lock()
        self._mlflow: MlflowClient | None = None
        self._experiment_id = ""
        self._known_models: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry the settings name (``mlflow.tracking_uri``, else the local store)."""
        m = settings.mlflow
        return cls(m.resolved_tracking_uri(settings.stack), m.name_prefix, m.keep_versions)

    @property
    def tracking_uri(self) -> str:
        """The tracking URI with any password masked (safe to print)."""
        return self._masked_uri

    def model_name(self, model_id: str) -> str:
        """The registered model's name: ``{name_prefix}{model_id}``."""
        return f"{self._prefix}{model_id}"

    # -- writing -----------------------------------------------------------------------------

    def register(
        self,
        model_id: str,
        version: int,
        weights: bytes,
        spec_json: str,
        samples_applied: int,
        metrics: Mapping[str, float],
        *,
        epoch: int | None = None,
        kind: str = "online",
        tags: Mapping[str, str] | None = None,
        live: bool = False,
        restored: bool = False,
    ) -> RegisteredVersion:
        """Register ``weights`` (:func:`flowlearn.core.codec.encode_array` bytes) as ``version``.

        Registering the same ``(model_id, kind, version)`` with the same weights again
        returns the existing entry and creates nothing; with different weights it makes a new
        entry, which :meth:`get` then returns. Non-finite metrics are not logged; the tag
        ``flowlearn.skipped_metrics`` names them. ``tags`` go on the run and the model version
        (keys starting with ``flowlearn.`` are reserved).

        ``live``: the version is the one the job now serves; the alias ``live`` moves to it.
        ``restored``: an automatic rollback restored it (``live`` too, and retention keeps it
        for good). Every online registration then moves ``best`` if the version beats it,
        and applies retention.
        """
        from flowlearn.core.codec import CodecError, decode_array

        self._check_kind(kind)
        for name, value in (("version", version), ("samples_applied", samples_applied)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        try:
            decode_array(weights)
        except CodecError as exc:
            raise ValueError(f"weights are not flowlearn codec array bytes: {exc}") from exc
        try:
            spec = json.loads(spec_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"spec_json is not JSON: {exc}") from exc
        if not isinstance(spec, dict):
            raise ValueError("spec_json must hold a JSON object")
        if (live or restored) and kind != "online":
            raise ValueError(f"only online versions are served, not {kind} ones")
        extra = dict(tags or {})
        reserved = sorted(k for k in extra if k.startswith(_TAG))
        if reserved:
            raise ValueError(f"tag keys starting with {_TAG!r} are reserved: {reserved}")

        weights = bytes(weights)
        sha = hashlib.sha256(weights).hexdigest()
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
        skipped = sorted(set(metrics) - set(finite))
        fields = {
            "model_id": model_id,
            "version": str(version),
            "kind": kind,
            "samples_applied": str(samples_applied),
            "weights_sha256": sha,
        }
        if epoch is not None:
            fields["epoch"] = str(int(epoch))
        mv_tags = {f"{_TAG}{k}": v for k, v in fields.items()}
        mv_tags.update({f"{_METRIC_TAG}{k}": repr(v) for k, v in finite.items()})
        if skipped:
            mv_tags[_SKIPPED_TAG] = ",".join(skipped)
        mv_tags.update(extra)
        mv_tags[_MODEL_TAG] = "pyfunc"

        client = self._client()
        name = self.model_name(model_id)
        with self._writers_lock():
            same = [e for e in self._search(model_id, kind, version) if e.weights_sha256 == sha]
            if same:
                entry = same[-1]
            else:
                self._ensure_model(client, name)
                with tempfile.TemporaryDirectory(prefix="flowlearn-registry-") as folder:
                    model_dir = Path(folder, MODEL_ARTIFACT)
                    _save_pyfunc(model_dir, Path(folder), weights, spec_json, spec)
                    run_id, artifact_uri = self._log_run(
                        client,
                        f"{model_id}-{kind}-v{version}",
                        fields,
                        finite,
                        mv_tags,
                        version,
                        model_dir,
                    )
                mv = self._call(
                    "create model version",
                    client.create_model_version,
                    name,
                    f"{artifact_uri}/{MODEL_ARTIFACT}",
                    run_id=run_id,
                    tags=mv_tags,
                    await_creation_for=0,
                )
                entry = self._entry(mv)
            if kind == "online":
                self._maintain(client, entry, live or restored, restored)
        return entry

    def _maintain(
        self, client: MlflowClient, entry: RegisteredVersion, live: bool, restored: bool
    ) -> None:
        """After an online registration: the aliases, then retention (writers' lock held)."""
        name = self.model_name(entry.model_id)
        number = str(entry.registry_version)
        if restored:
            self._keep(client, name, number, "rollback target")
        if live:
            self._call(f"set alias {LIVE}", client.set_registered_model_alias, name, LIVE, number)
        aliases = self._aliases(client, name)
        score = entry.metrics.get(BEST_METRIC)
        if score is not None and aliases.get(BEST) != entry.registry_version:
            best: float | None = None
            if BEST in aliases:
                holder = self._call(
                    f"read alias {BEST}", client.get_model_version, name, str(aliases[BEST])
                )
                held = holder.tags.get(f"{_METRIC_TAG}{BEST_METRIC}")
                best = None if held is None else float(held)
            if best is None or score < best:
                self._call(
                    f"set alias {BEST}", client.set_registered_model_alias, name, BEST, number
                )
                # A version that held best stays: the natural target of a later rollback.
                self._keep(client, name, number, "held best")
                aliases[BEST] = entry.registry_version
        if self._keep_versions:
            self._retain(client, entry.model_id, set(aliases.values()))

    def _keep(self, client: MlflowClient, name: str, number: str, reason: str) -> None:
        self._call(
            "tag model version", client.set_model_version_tag, name, number, KEEP_TAG, reason
        )

    def _retain(self, client: MlflowClient, model_id: str, held: set[int]) -> None:
        """Delete the online versions beyond the last ``keep_versions`` registered, except
        those holding an alias (``held``) or tagged :data:`KEEP_TAG`, and their runs."""
        name = self.model_name(model_id)
        online = sorted(
            self._model_versions(model_id, "online", None), key=lambda mv: int(mv.version)
        )
        for mv in online[: -self._keep_versions]:
            if int(mv.version) in held or KEEP_TAG in mv.tags:
                continue
            self._call("delete model version", client.delete_model_version, name, mv.version)
            if mv.run_id:
                self._call("delete run", client.delete_run, mv.run_id)

    def _aliases(self, client: MlflowClient, name: str) -> dict[str, int]:
        """``{alias: MLflow version number}`` of the registered model ``name`` ({} if none)."""
        from mlflow.exceptions import MlflowException

        def read() -> dict[str, int]:
            try:
                model = client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return {}
                raise
            return {alias: int(v) for alias, v in model.aliases.items()}

        return self._call("read aliases", read)

    def _log_run(
        self,
        client: MlflowClient,
        run_name: str,
        params: Mapping[str, str],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        step: int,
        model_dir: Path,
    ) -> tuple[str, str]:
        """Create a finished run holding the version's model (``model_dir``, logged as
        :data:`MODEL_ARTIFACT`); returns ``(run id, artifact URI)``."""
        from mlflow.entities import Metric, Param

        run = self._call(
            "create run",
            client.create_run,
            self._experiment_id,
            tags=dict(tags),
            run_name=run_name,
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        try:
            self._call(
                "log metrics and params",
                client.log_batch,
                run_id,
                metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in params.items()],
            )
            self._call(
                "log artifacts", client.log_artifacts, run_id, str(model_dir), MODEL_ARTIFACT
            )
            self._call("finish run", client.set_terminated, run_id, "FINISHED")
        except RegistryError:
            with suppress(Exception):  # the first error is the one to report
                client.set_terminated(run_id, "FAILED")
            raise
        return run_id, run.info.artifact_uri

    def _ensure_model(self, client: MlflowClient, name: str) -> None:
        """Create the registered model ``name`` unless it exists."""
        if name in self._known_models:
            return

        def create() -> None:
            from mlflow.exceptions import MlflowException

            try:
                client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

        self._call("create registered model", create)
        self._known_models.add(name)

    def describe_model(self, model_id: str, spec: Mapping[str, Any], source: str) -> None:
        """Record a created model's spec: the registered model (made if need be) gets the
        spec as its description (JSON) and its shape as tags, so that the registry tells
        what each model is before it has a version."""
        client = self._client()
        name = self.model_name(model_id)
        with self._writers_lock():
            self._ensure_model(client, name)
            self._call(
                "describe registered model",
                client.update_registered_model,
                name,
                description=json.dumps(dict(spec), sort_keys=True),
            )
            for key in ("type", "features", "n_features", "n_classes"):
                if key in spec:
                    self._call(
                        "tag registered model",
                        client.set_registered_model_tag,
                        name,
                        f"flowlearn.{key}",
                        str(spec[key]),
                    )
            self._call(
                "tag registered model",
                client.set_registered_model_tag,
                name,
                "flowlearn.created_by",
                source,
            )

    def delete_model(self, model_id: str) -> bool:
        """Delete the registered model and all its versions; False when there was none."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        name = self.model_name(model_id)

        def delete() -> bool:
            try:
                client.delete_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return False
                raise
            return True

        with self._writers_lock():
            deleted = self._call("delete registered model", delete)
        self._known_models.discard(name)
        return deleted

    # -- reading -----------------------------------------------------------------------------

    def versions(self, model_id: str, kind: str | None = None) -> list[RegisteredVersion]:
        """All registered versions of ``model_id`` (of one ``kind`` if given), ascending by
        ``(kind, version)``; entries of one version in registration order."""
        if kind is not None:
            self._check_kind(kind)
        return self._search(model_id, kind, None)

    def get(self, model_id: str, version: int, kind: str = "online") -> RegisteredVersion | None:
        """The newest entry for ``(model_id, kind, version)``, or None."""
        self._check_kind(kind)
        found = self._search(model_id, kind, version)
        return found[-1] if found else None

    def latest_baseline(self, model_id: str) -> RegisteredVersion | None:
        """The baseline with the highest version (its newest entry), or None."""
        found = self._search(model_id, "baseline", None)
        return found[-1] if found else None

    def aliases(self, model_id: str) -> dict[str, int]:
        """The model's aliases (:data:`LIVE`, :data:`BEST`, any set by hand): ``{alias:
        MLflow version number}``, for ``models:/{name}@{alias}``."""
        return self._aliases(self._client(), self.model_name(model_id))

    def load_weights(self, model_id: str, version: int, kind: str = "online") -> bytes:
        """The codec bytes of a registered version, checked against their SHA-256.

        Raises :class:`RegistryError` when the version or its artifact is missing, or when
        the bytes do not match the registered digest.
        """
        entry = self._require(model_id, version, kind)
        weights = self._download(entry, WEIGHTS_ARTIFACT)
        digest = hashlib.sha256(weights).hexdigest()
        if digest != entry.weights_sha256:
            raise RegistryError(
                f"load weights from {self._masked_uri}: {WEIGHTS_ARTIFACT} of "
                f"{self.model_name(model_id)} {kind} v{version} (run {entry.run_id}) has "
                f"sha256 {digest}, registered {entry.weights_sha256}"
            )
        return weights

    def load_spec(self, model_id: str, version: int, kind: str = "online") -> dict[str, Any]:
        """The model spec registered with a version (the ``spec_json`` object)."""
        entry = self._require(model_id, version, kind)
        raw = self._download(entry, SPEC_ARTIFACT)
        try:
            spec = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(
                f"load spec from {self._masked_uri}: run {entry.run_id}: {exc}"
            ) from exc
        if not isinstance(spec, dict):
            raise RegistryError(
                f"load spec from {self._masked_uri}: run {entry.run_id}: not a JSON object"
            )
        return spec

    def _require(self, model_id: str, version: int, kind: str) -> RegisteredVersion:
        entry = self.get(model_id, version, kind)
        if entry is None:
            raise RegistryError(
                f"{self._masked_uri}: no {kind} version {version} of "
                f"{self.model_name(model_id)} is registered"
            )
        return entry

    def _download(self, entry: RegisteredVersion, artifact: str) -> bytes:
        client = self._client()
        if entry.model_uri:
            artifact = f"{_DATA_PATH}/{artifact}"
        with tempfile.TemporaryDirectory(prefix="flowlearn-registry-") as folder:
            path = self._call(
                f"download {artifact} of run {entry.run_id}",
                client.download_artifacts,
                entry.run_id,
                artifact,
                folder,
            )
            return Path(path).read_bytes()

    def _search(
        self, model_id: str, kind: str | None, version: int | None
    ) -> list[RegisteredVersion]:
        """flowlearn's model versions matching the arguments, sorted as :meth:`versions`."""
        found = [self._entry(mv) for mv in self._model_versions(model_id, kind, version)]
        return sorted(found, key=lambda e: (e.kind, e.version, e.registry_version))

    def _model_versions(
        self, model_id: str, kind: str | None, version: int | None
    ) -> list[ModelVersion]:
        """The MLflow model versions flowlearn registered matching the arguments."""
        client = self._client()
        clauses = [f"name = {_filter_literal(self.model_name(model_id))}"]
        if kind is not None:
            clauses.append(f"tags.`{_TAG}kind` = '{kind}'")
        if version is not None:
            clauses.append(f"tags.`{_TAG}version` = '{int(version)}'")
        query = " and ".join(clauses)
        found: list[ModelVersion] = []
        token: str | None = None
        while True:
            page = self._call(
                "search model versions",
                client.search_model_versions,
                query,
                max_results=_PAGE_SIZE,
                page_token=token,
            )
            found += [mv for mv in page if f"{_TAG}version" in mv.tags]
            token = page.token
            if not token:
                break
        return found

    def _entry(self, mv: ModelVersion) -> RegisteredVersion:
        tags = mv.tags
        epoch = tags.get(f"{_TAG}epoch")
        run_id = mv.run_id or ""  # always set for versions registered here
        return RegisteredVersion(
            model_id=tags[f"{_TAG}model_id"],
            version=int(tags[f"{_TAG}version"]),
            registry_version=int(mv.version),
            kind=tags[f"{_TAG}kind"],
            run_id=run_id,
            samples_applied=int(tags[f"{_TAG}samples_applied"]),
            epoch=None if epoch is None else int(epoch),
            metrics={
                k[len(_METRIC_TAG) :]: float(v)
                for k, v in tags.items()
                if k.startswith(_METRIC_TAG)
            },
            created_ms=int(mv.creation_timestamp),
            weights_sha256=tags[f"{_TAG}weights_sha256"],
            link=self._link(run_id),
            model_uri=f"models:/{mv.name}/{mv.version}" if _MODEL_TAG in tags else "",
        )

    def _link(self, run_id: str) -> str:
        base = self._masked_uri if self._store_path else f"{self._masked_uri}/"
        return f"{base}#/experiments/{self._experiment_id}/runs/{run_id}"

    # -- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def _check_kind(kind: str) -> None:
        if not _KIND_RE.fullmatch(kind):
            raise ValueError(f"kind must match {_KIND_RE.pattern}, got {kind!r}")

    def _client(self) -> MlflowClient:
        """The MLflow client; the first call opens the store and the ``flowlearn`` experiment."""
        with self._open_lock:
            if self._mlflow is None:
                if self._store_path is not None:
                    self._store_path.parent.mkdir(parents=True, exist_ok=True)
                with self._writers_lock():
                    from mlflow.tracking import MlflowClient

                    client = self._call(
                        "open the store",
                        MlflowClient,
                        tracking_uri=self._uri,
                        registry_uri=self._uri,
                    )
                    self._experiment_id = self._call(
                        f"open experiment {EXPERIMENT!r}", self._experiment, client
                    )
                self._mlflow = client
            return self._mlflow

    def _experiment(self, client: MlflowClient) -> str:
        """The id of the ``flowlearn`` experiment, created (or restored) if need be."""
        from mlflow.exceptions import MlflowException

        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            location = None
            if self._store_path is not None:
                location = (self._store_path.parent / "artifacts").as_uri()
            try:
                return client.create_experiment(EXPERIMENT, artifact_location=location)
            except MlflowException:  # created meanwhile by another process
                exp = client.get_experiment_by_name(EXPERIMENT)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)

    def _writers_lock(self) -> AbstractContextManager[None]:
        """Excludes other writers of a local store on this host (a no-op for a server)."""
        if self._store_path is None:
            return nullcontext()
        return self._lock_file(self._store_path.parent / f".{self._store_path.name}.lock")

    @contextmanager
    def _lock_file(self, path: Path) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"{self._masked_uri}: another writer held {path} for more than "
                            f"{_LOCK_TIMEOUT_S:.0f} s"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _call(self, operation: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)``, retrying a locked SQLite database briefly; any error
        becomes a :class:`RegistryError` naming the operation and the masked URI."""
        retries = iter(_LOCKED_RETRIES)
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                delay = next(retries, None) if _is_locked(exc) else None
                if delay is not None:
                    time.sleep(delay)
                    continue
                message = f"{type(exc).__name__}: {exc}"
                for secret in self._secrets:
                    message = message.replace(secret, "***").replace(quote(secret), "***")
                code = getattr(exc, "error_code", None)
                error = RegistryError(
                    f"{operation} on {self._masked_uri} failed: {message}",
                    permanent=code in _PERMANENT_ERRORS,
                )
                # The original exception may quote the secret: keep it out of tracebacks.
                raise error from (None if self._secrets else exc)
