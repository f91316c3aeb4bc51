"""``flowlearn replay FILE``: the training job's graph on a bounded file, at full speed, on a
local Flink MiniCluster, and the evaluation data for a report (docs/evaluation.md).

The file holds labelled samples: JSON lines of ``fl.samples`` records, or Parquet in the
layout of :mod:`flowlearn.evaluation.batch` (``features``, ``label``, optional ``model_id`` and
``ts``).
Its records go, as bytes, through :func:`flowlearn.jobs.online_learning.build_pipeline` (parsing,
DLQ,
trainer, drift and checkpoint operators) with Kafka and Redis switched off, and the run
collects the trainer's prequential rows (``PipelineStreams.evaluated``), the versions, the
alerts, the dead letters and the commands the job would send to itself.

Differences from a live run, on purpose:

- Batches are cut by size only (and the last, partial one at the end of the input): the
  processing-time latency bound (``job.batch_timeout_ms``) is off, so a replay is
  deterministic and its final weights are those of training the same batches directly.
- The adaptation loop is open: a drift reset or an automatic rollback goes to ``fl.control``
  in a live job and comes back to the trainer through Kafka; a replay has no Kafka, so it
  records those commands (the report marks them) without applying them.
- Checkpoints are registered only when ``registry_dir`` is given, in a store there, never
  in the live registry.

This module imports pyflink when :func:`replay` runs, not before.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowlearn.conf import Settings
from flowlearn.contracts.records import (
    RecordError,
    first_sample_shape,
    is_bulk,
    parse_sample,
    parse_sample_batch,
)
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.core import codec
from flowlearn.core.sparse import as_dense
from flowlearn.devstack.jars import operators_jar
from flowlearn.evaluation.baselines import BatchBaseline, batch_baseline, fixed_baseline
from flowlearn.evaluation.builders import build_replay, ledger_checkpoints
from flowlearn.evaluation.data import EvalRow, EvaluationData, EvaluationError, Side
from flowlearn.evaluation.recorded import dlq_model
from flowlearn.jobs.local import run_job

#: The replay's latency bound on a partial batch (a day: never, in practice).
REPLAY_BATCH_TIMEOUT_MS = 86_400_000


@dataclass(frozen=True)
class BaselineOptions:
    """The batch baseline to compare with: trained on the first ``train`` samples (a count,
    or a share of the model's samples when below 1) and refit on all samples so far every
    ``retrain_every`` samples (0: never); or, with ``registered_version``, a baseline
    registered in MLflow (``flowlearn train-batch``) scoring every sample. ``None``: none."""

    train: float = 0.25
    retrain_every: int = 0
    registered_version: int | None = None
    epochs: int = 3
    batch_size: int = 64
    seed: int = 0


@dataclass
class ReplayResult:
    """Evaluation data and final weights per model, and what the run itself produced."""

    data: dict[str, EvaluationData]
    weights: dict[str, np.ndarray]
    dlq: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    adaptations: list[dict[str, Any]]
    seconds: float
    records: int
    registry_uri: str = ""
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- input


def read_records(path: Path, model_id: str | None = None) -> list[bytes]:
    """The file's records as the bytes a Kafka source would give (``fl.samples`` JSON).

    JSON lines: every non-blank line as it is (a bad one goes to the DLQ as on Kafka),
    only those of ``model_id`` when given (lines that are not JSON objects are kept).
    Parquet: a JSON sample per row; ``model_id`` (else "demo") where the file has none.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: no such file")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return _parquet_records(path, model_id)
    out = []
    with path.open("rb") as fh:
        for line in fh:
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            if model_id is not None and _model_of(raw) not in (None, model_id):
                continue
            out.append(raw)
    return out


def _model_of(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return str(obj.get("model_id")) if isinstance(obj, dict) else None


def _parquet_records(path: Path, model_id: str | None) -> list[bytes]:
    from flowlearn.evaluation.batch import BatchDataError, read_samples_table

    try:
        table = read_samples_table(path)
    except BatchDataError as exc:
        raise EvaluationError(str(exc)) from exc
    columns = table.to_pydict()
    n = table.num_rows
    ids = columns.get("model_id") or [model_id or "demo"] * n
    ts = columns.get("ts") or list(range(n))
    out = []
    for i in range(n):
        if model_id is not None and ids[i] != model_id:
            continue
        out.append(
            json.dumps(
                {
                    "model_id": ids[i],
                    "ts": ts[i],
                    "features": columns["features"][i],
                    "label": columns["label"][i],
                }
            ).encode()
        )
    return out


def write_demo(
    path: Path,
    n: int,
    drift_at: Sequence[int] = (),
    seed: int = 0,
    model_id: str = "demo",
    n_features: int = 10,
    start_ts: int = 1_700_000_000_000,
) -> Path:
    """A drifting synthetic stream (:class:`flowlearn.devstack.producer.DriftingStream`) as JSON
    lines,
    one sample a millisecond."""
    from flowlearn.devstack.producer import DriftingStream

    stream = DriftingStream(
        n_features=n_features, seed=seed, drift_at=tuple(drift_at), model_id=model_id
    )
    path = Path(path)
    with path.open("w") as fh:
        for start in range(0, n, 10_000):
            for rec in stream.take(min(10_000, n - start), start_ts + start):
                fh.write(json.dumps(rec) + "\n")
    return path


@dataclass
class _Valid:
    """A model's samples that parse, in input order (the order its trainer sees them): rows
    as the trainer takes them (a contextual bandit's feedback rows are wider than its
    ``n_features``: the action and the propensity follow the context)."""

    X: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)

    def arrays(self, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.y:
            return np.zeros((0, n_features)), np.zeros(0)
        return np.concatenate(self.X), np.concatenate(self.y).astype(np.float64)


def with_inferred_specs(records: Sequence[bytes], settings: Settings) -> Settings:
    """``settings`` with a ``[models.ID]`` table for each model of ``records`` that the
    ``"infer"`` or ``"create"`` policy would create from its first record (``settings`` as
    they are under "dlq"). A replay has no Kafka to send the job's creates back through: it
    gives the job the specs the live job would have created."""
    policy = settings.job.unknown_model_policy
    if policy == "dlq":
        return settings
    specs = ModelSpecs(settings)
    inferred: dict[str, dict[str, Any]] = {}
    for raw in records:
        shape = first_sample_shape(raw)
        if shape is None or shape[0] in settings.models or shape[0] in inferred:
            continue
        if policy == "create":
            inferred[shape[0]] = specs.defaults.as_dict()
            continue
        entry = specs.inferred_entry(shape[1])
        if entry is not None:
            inferred[shape[0]] = json.loads(entry)
    if not inferred:
        return settings
    return dataclasses.replace(settings, models={**settings.models, **inferred})


def valid_samples(records: Sequence[bytes], settings: Settings) -> dict[str, _Valid]:
    """What the job's sample parser accepts, per model, in order (same parsing code), under
    ``settings`` (with the specs the "infer" policy gives: :func:`with_inferred_specs`)."""
    spec_for = ModelSpecs(settings).dict_of
    out: dict[str, _Valid] = {}
    for raw in records:
        try:
            if is_bulk(raw):
                b = parse_sample_batch(raw, spec_for)
                model_id, X, y = b.model_id, b.features, b.labels
            else:
                s = parse_sample(raw, spec_for)
                # A hashed model's sparse row, dense: the report's baseline takes matrices.
                X = as_dense(s.features).reshape(1, -1)
                model_id, y = s.model_id, np.array([s.label])
        except RecordError:
            continue
        v = out.setdefault(model_id, _Valid())
        labels = np.asarray(y, dtype=np.float64)
        v.X.append(np.asarray(X, dtype=np.float64).reshape(len(labels), -1))
        v.y.append(labels)
    return out


def replay_settings(settings: Settings, tracking_uri: str | None) -> Settings:
    """``settings`` for a replay: size-cut batches only, checkpoints registered in
    ``tracking_uri`` (None: not registered)."""
    return dataclasses.replace(
        settings,
        job=dataclasses.replace(settings.job, batch_timeout_ms=REPLAY_BATCH_TIMEOUT_MS),
        mlflow=dataclasses.replace(
            settings.mlflow, tracking_uri=tracking_uri or "", enabled=tracking_uri is not None
        ),
    )


def final_weights(versions: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """The last version's weights: the newest full snapshot with the later deltas on it."""
    ordered = sorted(versions, key=lambda v: v["version"])
    last = max((i for i, v in enumerate(ordered) if v["weights"]), default=None)
    if last is None:
        return None
    weights = codec.decode_array(bytes.fromhex(ordered[last]["weights"])).copy()
    for v in ordered[last + 1 :]:
        codec.apply_delta(weights, codec.decode_delta(bytes.fromhex(v["delta"])))
    return weights


def published_spec(settings: Settings, model_id: str) -> dict[str, Any]:
    """The spec the trainer publishes with every version of ``model_id`` under ``settings``
    (a version's ``spec_json``, which the replay's version records leave out): with
    :attr:`ReplayResult.weights`, what :func:`flowlearn.core.model_types.from_spec` serves."""
    from flowlearn.core.training import ModelTrainer

    spec = ModelSpecs(settings).spec_of(model_id).as_dict()
    return dict(json.loads(ModelTrainer.create(model_id, spec).current_version().spec_json))


# ---------------------------------------------------------------------------- replay


def replay(
    path: Path,
    settings: Settings,
    model_id: str | None = None,
    *,
    baseline: BaselineOptions | None = BaselineOptions(),
    registry_dir: Path | None = None,
) -> ReplayResult:
    """Run the job on the file and build each model's :class:`EvaluationData` (only
    ``model_id``'s when given). See the module docstring for what differs from live."""
    records = read_records(path, model_id)
    if not records:
        raise EvaluationError(
            f"{path}: no records" + (f" of model {model_id!r}" if model_id else "")
        )
    settings = with_inferred_specs(records, settings)
    t0 = time.monotonic()
    # Registrations run on the checkpoint operator's own thread, which a bounded run can
    # outlive: without a registry directory of the caller's, nothing is registered.
    uri = None
    if registry_dir is not None:
        Path(registry_dir).mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{Path(registry_dir).absolute() / 'mlflow.db'}"
    out = run_job(records, replay_settings(settings, uri), operators_jar(settings))
    seconds = time.monotonic() - t0
    valid = valid_samples(records, settings)
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for r in out:
        by_tag.setdefault(r["tag"], []).append(r)
    alerts = [r["record"] for r in by_tag.get("alert", [])]
    dlq = [r["record"] for r in by_tag.get("dlq", [])]
    controls = [r["record"] for r in by_tag.get("control", [])]
    result = ReplayResult(
        {},
        {},
        dlq,
        alerts,
        controls,
        seconds,
        len(records),
        uri or "",
    )
    models = sorted({r["model_id"] for r in by_tag.get("version", [])} | set(valid))
    for m in models:
        if model_id is not None and m != model_id:
            continue
        spec = ModelSpecs(settings).spec_of(m).as_dict()
        versions = [r for r in by_tag.get("version", []) if r["model_id"] == m]
        weights = final_weights(versions)
        if weights is not None:
            result.weights[m] = weights
        X, y = valid.get(m, _Valid()).arrays(int(spec["n_features"]))
        notes = [
            f"replayed {len(records)} records of {Path(path).name} in {seconds:.1f} s "
            f"on a local Flink MiniCluster; batches of "
            f"{spec.get('batch_size') or settings.job.batch_size} cut by size only"
        ]
        model_controls = [c for c in controls if c.get("model_id") == m]
        if model_controls:
            notes.append(
                f"{len(model_controls)} command(s) the job sent itself through "
                f"fl.control ({', '.join(sorted({c['command'] for c in model_controls}))}"
                f") are marked but not applied: a replay has no Kafka loop"
            )
        side, name = _baseline(baseline, spec, X, y, m, settings, notes)
        rows = [
            EvalRow(r["version"], r["kind"], r["applied"], r["errors"], r["losses"])
            for r in by_tag.get("eval", [])
            if r["model_id"] == m
        ]
        # Dead letters and input records of this model; those that name no model (not
        # JSON, say) count for every model of the file.
        model_dlq = [d for d in dlq if dlq_model(d) in (m, None)]
        n_input = sum(1 for r in records if _model_of(r) in (m, None))
        if len(models) > 1 and any(dlq_model(d) is None for d in dlq):
            notes.append("dead letters that name no model are counted for every model")
        data = build_replay(
            m,
            str(spec.get("type", "logistic")),
            len(y),
            rows,
            [a for a in alerts if a.get("model_id") == m],
            model_dlq,
            input_records=n_input,
            baseline=side,
            baseline_name=name,
            source=f"replay of {path}",
            adaptations=model_controls,
            final_weights=weights,
            notes=notes,
        )
        # The checkpoints' windowed metrics, as the checkpoint operator registers them (its
        # own ledger on the same rows; the replay's store may miss the last registrations,
        # which a bounded run can end before).
        ends = {v.version: v.t for v in data.versions}
        cps = ledger_checkpoints(rows, settings.job.checkpoint_every_versions, ends)
        result.data[m] = dataclasses.replace(data, checkpoints=tuple(cps))
    return result


def _baseline(
    options: BaselineOptions | None,
    spec: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    model_id: str,
    settings: Settings,
    notes: list[str],
) -> tuple[BatchBaseline | Side | None, str]:
    if options is None or not len(y):
        return None, ""
    if options.registered_version is not None:
        from flowlearn.core.training import build_model
        from flowlearn.registry.mlflow_store import Registry

        registry = Registry.from_settings(settings)
        weights = codec.decode_array(
            registry.load_weights(model_id, options.registered_version, kind="baseline")
        )
        model = build_model(spec)
        if weights.shape != model.weights_vector().shape:
            raise EvaluationError(
                f"baseline {options.registered_version} of {model_id!r} has "
                f"{weights.size} weights, the model "
                f"{model.weights_vector().size}"
            )
        model.set_weights_vector(weights)
        return (
            fixed_baseline(model, X, y),
            f"registered baseline {options.registered_version} ({registry.tracking_uri})",
        )
    train = round(options.train * len(y)) if options.train < 1 else int(options.train)
    train = min(train, len(y))
    if train < 2:
        notes.append(f"no batch baseline: {len(y)} samples are too few to train one")
        return None, ""
    return batch_baseline(
        spec, X, y, train, options.retrain_every, options.epochs, options.batch_size, options.seed
    ), ""
