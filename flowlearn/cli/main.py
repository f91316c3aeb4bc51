"""The ``flowlearn`` command line: the local stack, the job, the demo stream, predictions.

flowlearn up | down | status [--json] | submit | produce | predict | run
flowlearn versions | savepoint | savepoints | rescale | rollback | pin | unpin | train-batch
flowlearn models create | update | delete | list
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from flowlearn.conf import ConfigError, Settings, load_settings
from flowlearn.conf.tokens import read_tokens
from flowlearn.contracts.records import control_record
from flowlearn.contracts.spec import ModelSpecs
from flowlearn.devstack import jobctl, processes, stack
from flowlearn.devstack.lifecycle import LifecycleError
from flowlearn.evaluation.batch import BatchDataError
from flowlearn.registry.mlflow_store import RegistryError


def status_dict(settings: Settings) -> dict[str, Any]:
    """The ``flowlearn status --json`` document (docs/architecture.md, "CLI")."""
    components = stack.component_status(settings)
    job = jobctl.find_job(settings) if components["jobmanager"]["state"] == "running" else None
    return {
        "components": components,
        "job": {
            "id": job.id if job else None,
            "state": job.state if job else "NONE",
            "web_ui": settings.flink.web_ui,
        },
        "predictor": {"url": settings.predictor.url},
        "models": (
            jobctl.published_models(settings) if components["redis"]["state"] == "running" else {}
        ),
    }


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    status = status_dict(settings)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for name, comp in status["components"].items():
        pids = ",".join(map(str, comp["pids"])) or "-"
        print(f"{name:12s} {comp['state']:8s} pid {pids:8s} {comp['url'] or ''}")
    job = status["job"]
    print(f"{'job':12s} {job['state']:8s} {job['id'] or '-'}  {job['web_ui']}")
    for model_id, m in status["models"].items():
        print(
            f"model {model_id}: version {m['version']} epoch {m['epoch']} "
            f"samples_applied {m['samples_applied']}"
        )
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    steps = stack.up(settings, args.config)
    total = sum(s.seconds for s in steps)
    print(f"stack up in {total:.1f}s: " + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in steps))
    print(
        f"Flink web UI: {settings.flink.web_ui}\nPredictor:    {settings.predictor.url}\n"
        f"Prometheus:   {settings.prometheus.url}"
    )
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    job = jobctl.find_job(settings) if processes.running_pid(settings, "jobmanager") else None
    if job is not None and job.state == "RUNNING":
        try:
            path = jobctl.stop_with_savepoint(settings, job)
            print(f"job {job.id} stopped with savepoint {path} (the next submit resumes it)")
        except (jobctl.JobError, OSError, KeyError) as exc:
            print(
                f"warning: stop-with-savepoint failed ({exc}); the next submit resumes from "
                f"the last savepoint or starts fresh",
                file=sys.stderr,
            )
    stopped = stack.down(settings)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    job = jobctl.submit(
        settings, from_savepoint=args.from_savepoint, fresh=args.fresh, job_sources=args.job_src
    )
    print(f"job {job.id} RUNNING in {time.monotonic() - t0:.1f}s")
    print(f"Flink web UI: {settings.flink.web_ui}/#/job/running/{job.id}/overview")
    return 0


def cmd_rescale(settings: Settings, args: argparse.Namespace) -> int:
    print(f"rescaling to parallelism {args.parallelism}: stop with a savepoint, resubmit ...")
    report = jobctl.rescale(settings, args.parallelism)
    print(
        f"job {report.stopped_job} stopped with savepoint {report.savepoint}; job "
        f"{report.new_job} RUNNING at parallelism {report.parallelism} "
        f"({report.seconds:.1f}s)"
    )
    if args.parallelism != settings.flink.parallelism:
        print(
            f"note: flink.parallelism is {settings.flink.parallelism} in the configuration; "
            f"the next `flowlearn submit` runs at that unless you change it"
        )
    return 0


def _producer_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "produce",
        "--model",
        args.model,
        "--rate",
        str(args.rate),
        "--seed",
        str(args.seed),
        "--n-features",
        str(args.n_features),
        "--label-delay-ms",
        str(args.label_delay_ms),
    ]
    if args.count is not None:
        argv += ["--count", str(args.count)]
    if args.drift_at:
        argv += ["--drift-at", ",".join(map(str, args.drift_at))]
    if args.drift_every:
        argv += ["--drift-every", str(args.drift_every)]
    if args.bulk:
        argv += ["--bulk", str(args.bulk)]
    return argv


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    if args.background:
        argv = [sys.executable, "-m", "flowlearn.cli", *_producer_argv(args)]
        if args.config:
            argv[3:3] = ["--config", str(args.config)]
        processes.stop_process(settings, "producer")
        pid = processes.start_process(settings, "producer", argv)
        print(f"producer started (pid {pid}); log {settings.stack.logs / 'producer.out'}")
        return 0
    from flowlearn.devstack.producer import produce

    sent = produce(
        settings.kafka,
        settings.kafka.topics,
        model_id=args.model,
        count=args.count,
        rate=args.rate,
        seed=args.seed,
        n_features=args.n_features,
        drift_at=args.drift_at,
        drift_every=args.drift_every,
        label_delay_ms=args.label_delay_ms,
        bulk=args.bulk,
    )
    print(f"produced {sent} samples for model {args.model!r}")
    return 0


#: The environment variable the CLI takes the predictor's bearer token from.
TOKEN_VARIABLE = "FLOWLEARN_TOKEN"


def predictor_token(settings: Settings, flag: str | None) -> str | None:
    """The bearer token to call the predictor with: ``--token``, else ``$FLOWLEARN_TOKEN``,
    else (when the predictor asks for one) the first of its configured tokens."""
    if flag:
        return flag
    if os.environ.get(TOKEN_VARIABLE):
        return os.environ[TOKEN_VARIABLE]
    if not settings.predictor.auth_required:
        return None
    tokens = read_tokens(settings.predictor)
    return tokens[0].value if tokens else None


def cmd_predict(settings: Settings, args: argparse.Namespace) -> int:
    from flowlearn.serving.client import predict

    instances = json.loads(args.instances)
    if not isinstance(instances, list):
        instances = [instances]
    p = settings.predictor
    answer = predict(
        p.url,
        args.model,
        instances,
        timeout=5.0,
        token=predictor_token(settings, args.token),
        ca_file=p.tls_cert_file or None,
    )
    print(json.dumps(answer, indent=2))
    # The client reports an HTTP error (or an unreachable predictor) with a "status" key.
    return 1 if "status" in answer else 0


#: ``--epoch`` of the commands that name a version.
EPOCH_HELP = (
    "the epoch the version was seen in (a predictor's answer says it): refused when that "
    "epoch's version of this number may differ from the job's now (made again after a failover)"
)


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    """Model-level (a control command; the trainer republishes the old weights as a new
    version) or job-level (stop with a savepoint, resubmit from an earlier one)."""
    if args.savepoint or args.before:
        return _rollback_job(settings, args)
    if args.model is None or args.to_version is None:
        raise jobctl.JobError("rollback needs --model and --to-version, or --savepoint/--before")
    _check_lineage(settings, args.model, args.epoch, args.to_version)
    _send_control(
        settings, args.model, "rollback", {"version": args.to_version}, reason=args.reason
    )
    print(
        f"rollback of {args.model!r} to version {args.to_version} sent; the trainer publishes "
        f"it as a new version and reports on {settings.kafka.topics.alerts}"
    )
    return 0


def _parse_time(text: str) -> int:
    """ISO 8601 (``2026-11-22T21:30``, local time unless an offset is given) or epoch ms."""
    from datetime import datetime

    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError as exc:
        raise jobctl.JobError(f"--before {text!r}: not an ISO 8601 time or epoch ms") from exc


def _rollback_job(settings: Settings, args: argparse.Namespace) -> int:
    path = args.savepoint or jobctl.savepoint_before(settings, _parse_time(args.before))["path"]
    before = jobctl.published_models(settings)
    report = jobctl.rollback_to_savepoint(settings, path)
    print(f"stopped job {report.stopped_job} (savepoint {report.savepoint_taken})")
    print(f"job {report.new_job} runs from {report.restored_from}")
    for step, seconds in report.steps:
        print(f"  {step}: {seconds:.1f}s")
    print(f"  total: {sum(s for _, s in report.steps):.1f}s")
    after = jobctl.published_models(settings)
    for model_id, m in before.items():
        print(
            f"model {model_id}: was version {m['version']} epoch {m['epoch']}; the new epoch "
            f"republishes from the savepoint (now: {after.get(model_id, 'not yet')})"
        )
    return 0


def cmd_savepoint(settings: Settings, args: argparse.Namespace) -> int:
    job = jobctl.find_job(settings)
    if job is None:
        raise jobctl.JobError("no running job to take a savepoint of")
    t0 = time.monotonic()
    entry = jobctl.trigger_savepoint(settings, job, reason=args.reason or "manual")
    print(f"savepoint {entry['path']} of job {job.id} in {time.monotonic() - t0:.1f}s")
    for model_id, m in entry["models"].items():
        print(f"  model {model_id}: version {m['version']} epoch {m['epoch']}")
    return 0


def cmd_savepoints(settings: Settings, args: argparse.Namespace) -> int:
    entries = jobctl.read_savepoints(settings)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no savepoints recorded (flowlearn savepoint, or flowlearn down, takes one)")
    for e in entries:
        models = ", ".join(
            f"{m} v{v['version']}/e{v['epoch']}" for m, v in e.get("models", {}).items()
        )
        print(f"{e['time']}  {e['reason']:<24} {e['path']}  {models}")
    return 0


def cmd_versions(settings: Settings, args: argparse.Namespace) -> int:
    from flowlearn.registry.mlflow_store import Registry

    registry = Registry.from_settings(settings)
    versions = registry.versions(args.model)
    live = jobctl.published_models(settings).get(args.model)
    if args.json:
        print(
            json.dumps(
                {
                    "model_id": args.model,
                    "live": live,
                    "versions": [dataclasses.asdict(v) for v in versions],
                },
                indent=2,
            )
        )
        return 0
    if live:
        print(
            f"live: version {live['version']} epoch {live['epoch']} "
            f"samples_applied {live['samples_applied']}"
        )
    if not versions:
        print(f"no registered versions of {args.model!r} in {registry.model_name(args.model)}")
    for v in versions:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created_ms / 1000))
        metrics = " ".join(f"{k}={val:.4f}" for k, val in sorted(v.metrics.items()))
        print(
            f"{v.kind:<8} v{v.version:<6} {when}  samples {v.samples_applied:<8} {metrics}  "
            f"{v.model_uri}  {v.link}"
        )
    return 0


def cmd_train_batch(settings: Settings, args: argparse.Namespace) -> int:
    """A batch baseline from a Parquet file: trained, registered in MLflow, written as the
    predictor's baseline file, and optionally the online model's new starting point."""
    from flowlearn.evaluation.batch import train_and_register_baseline

    done = train_and_register_baseline(
        settings,
        args.model,
        args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        out=args.out,
    )
    result, version = done.result, done.version
    print(
        f"trained on {result.n_train} of {done.rows} rows in {done.train_seconds:.1f}s: "
        + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    )
    print(f"registered baseline {version} of {args.model!r}: {done.entry.link}")
    out = done.baseline_file
    print(
        f"baseline file {out}: serve it beside the online model with\n"
        f"  [predictor.baselines]\n  {json.dumps(args.model)} = {json.dumps(str(out))}"
    )
    if args.warm_start:
        _send_control(settings, args.model, "warm_start", {"version": version})
        print(
            f"warm start sent: the trainer of {args.model!r} continues from baseline "
            f"{version} as a new version (alert on {settings.kafka.topics.alerts})"
        )
    return 0


def _check_lineage(settings: Settings, model_id: str, epoch: int | None, version: int) -> None:
    """With ``--epoch``: refuse a version number whose weights in that epoch may differ from
    the job's version of that number now (made again after a failover)."""
    if epoch is None:
        return
    from flowlearn.contracts.redis_contract import Keys, lineage_problem, redis_client

    client = redis_client(settings.redis)
    try:
        problem = lineage_problem(client, Keys(settings.redis.prefix), model_id, epoch, version)
    finally:
        client.close()
    if problem:
        raise jobctl.JobError(problem)


def _send_control(
    settings: Settings, model_id: str, command: str, args: dict[str, Any], reason: str = ""
) -> None:
    import getpass

    from flowlearn.devstack.producer import send_raw

    record = control_record(
        model_id,
        command,
        {**args, **({"reason": reason} if reason else {})},
        source=f"cli:{getpass.getuser()}",
    )
    send_raw(settings.kafka, settings.kafka.topics.control, [record.encode()], key=model_id)


def cmd_pin(settings: Settings, args: argparse.Namespace) -> int:
    """Serving-side rollback: every predictor serves this version while training goes on.
    A control command, so it keeps its order among the model's other commands."""
    import getpass

    from flowlearn.devstack import lifecycle

    model_id = _checked_model_id(args.model)
    if args.command == "pin":
        _check_lineage(settings, model_id, args.epoch, args.version)
    command_args = {} if args.command == "unpin" else {"version": args.version}
    answer = lifecycle.send_and_wait(
        settings,
        model_id,
        args.command,
        command_args,
        f"cli:{getpass.getuser()}",
        timeout_s=args.wait_s,
    )
    if not answer.ok:
        print(f"flowlearn: {args.command} {model_id!r} refused: {answer.reason}", file=sys.stderr)
        return 1
    if args.command == "unpin":
        print(f"model {model_id!r} unpinned: predictors follow the latest version")
    else:
        print(
            f"model {model_id!r} pinned to version {args.version}: predictors serve it "
            "while it is among their recent versions (see the response's flags)"
        )
    return 0


def _spec_table(args: argparse.Namespace) -> dict[str, Any]:
    """The spec of ``models create`` (``--spec``'s TOML table, then the flags over it), or
    the changes of ``models update`` (the flags)."""
    import tomllib

    table: dict[str, Any] = {}
    if getattr(args, "spec", None) is not None:
        try:
            table = tomllib.loads(args.spec.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--spec {args.spec}: {exc}") from None
    flags = {
        name: getattr(args, name, None)
        for name in ("type", "features", "n_features", "n_classes", "learning_rate", "batch_size")
    }
    for name in ("feature_names", "class_names"):
        listed = getattr(args, name, None)
        flags[name] = listed.split(",") if listed else None
    table.update({key: value for key, value in flags.items() if value is not None})
    for assignment in args.set:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: a string
        table[key.strip()] = value
    return table


def _add_shape_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The flags of the fields that make a model's shape (``models create``, and
    ``models update --reset``)."""
    parser.add_argument(
        "--type",
        default=None,
        help=prefix
        + "logistic, softmax, linear, auto_logistic ..., hoeffding_tree, random_forest, "
        "hoeffding_tree_regressor, contextual_bandit",
    )
    parser.add_argument("--features", choices=("dense", "hashed"), default=None)
    parser.add_argument("--n-features", type=int, default=None)
    parser.add_argument("--n-classes", type=int, default=None)
    parser.add_argument("--feature-names", default=None, help="comma-separated column names")
    parser.add_argument("--class-names", default=None, help="comma-separated class labels")


def _checked_model_id(model_id: str) -> str:
    from flowlearn.core.spec import model_id_problem

    problem = model_id_problem(model_id)
    if problem is not None:
        raise ConfigError(f"--model: {problem}")
    return model_id


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    """``models create | update | delete | list``: a model's lifecycle while the job runs."""
    import getpass

    from flowlearn.devstack import lifecycle

    if args.action == "list":
        models = lifecycle.served_models(settings)
        if args.json:
            print(json.dumps(models, indent=2))
            return 0
        print(f"{'model':24s} {'type':14s} {'features':8s} {'n':>8s} {'version':>8s} samples")
        for model_id, m in models.items():
            spec = m["spec"]
            print(
                f"{model_id:24s} {spec.get('type', '?'):14s} {spec.get('features', '?'):8s} "
                f"{spec.get('n_features', 0):8d} {m['version']:8d} {m['samples_applied']}"
            )
        return 0
    model_id = _checked_model_id(args.model)
    source = f"cli:{getpass.getuser()}"
    command_args: dict[str, Any] = {}
    specs = ModelSpecs(settings)
    if args.action == "create":
        command_args = {"spec": json.loads(specs.runtime_entry(_spec_table(args), "spec"))}
        published = lifecycle.served_models(settings, [model_id]).get(model_id)
        if published is not None and not args.replace:
            raise ConfigError(
                f"model {model_id!r} exists (version {published['version']}); a create "
                "replaces a model that was not made by `models create` (its state is lost): "
                "add --replace, or `flowlearn models delete` it first"
            )
    elif args.action == "update":
        changes = _spec_table(args)
        if not changes:
            raise ConfigError("models update: nothing to change (--set KEY=VALUE, ...)")
        # The job checks them on the model's own spec; these checks catch a typo early.
        if args.reset:
            specs.check_field_names(changes, "changes")
        else:
            specs.updated_entry(specs.defaults, changes)
        command_args = {"changes": changes, "reset": args.reset}
    answer = lifecycle.send_and_wait(
        settings, model_id, args.action, command_args, source, timeout_s=args.wait_s
    )
    if not answer.ok:
        print(f"flowlearn: {args.action} {model_id!r} refused: {answer.reason}", file=sys.stderr)
        return 1
    if args.action == "create":
        existed = " (it existed with this spec)" if answer.detail.get("existed") else ""
        if "replaced_version" in answer.detail:
            existed = f" (replacing its version {answer.detail['replaced_version']})"
        said = f"model {model_id!r} created{existed}: served from now on"
    elif args.action == "update" and args.reset:
        said = (
            f"model {model_id!r} reset under its new spec: version "
            f"{answer.detail['new_version']}, untrained, served from now on"
        )
    elif args.action == "update":
        said = f"model {model_id!r} updated: version {answer.detail['new_version']} records it"
    else:
        said = f"model {model_id!r} deleted: Redis and the predictors forget it"
    print(said + _record_in_registry(settings, args, model_id, answer.detail, source))
    return 0


def _record_in_registry(
    settings: Settings,
    args: argparse.Namespace,
    model_id: str,
    detail: dict[str, Any],
    source: str,
) -> str:
    """The registry's part of a lifecycle command the job carried out: a created or updated
    model's spec as its registered model's description and tags, a deleted model's entry
    removed (unless ``--keep-registry``). What was done, as a phrase to print."""
    if not settings.mlflow.enabled or getattr(args, "keep_registry", False):
        return ""
    from flowlearn.registry.mlflow_store import Registry

    registry = Registry.from_settings(settings)
    name = registry.model_name(model_id)
    try:
        if args.action == "delete":
            return f"; {name} deleted from MLflow" if registry.delete_model(model_id) else ""
        # An update's answer has the spec it made; a create's args have the spec it took.
        registry.describe_model(model_id, detail.get("spec") or detail["args"]["spec"], source)
    except RegistryError as exc:  # the job did its part: say what is left to do
        return f"; MLflow not updated: {exc}"
    return f"; spec recorded in MLflow as {name}"


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """``make run``: the stack, the job (resumed if it was stopped), the demo producer."""
    t0 = time.monotonic()
    steps = stack.up(settings, args.config)
    job = jobctl.find_job(settings)
    if job is None:
        job = jobctl.submit(settings)
    if not processes.running_pid(settings, "producer"):
        args.background = True
        cmd_produce(settings, args)
    print(
        f"\nready in {time.monotonic() - t0:.1f}s ("
        + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in steps)
        + ")"
    )
    print(f"Flink web UI: {settings.flink.web_ui}/#/job/running/{job.id}/overview")
    print(f"Predictor:    {settings.predictor.url}/v1/models/{args.model}")
    print(f"Prometheus:   {settings.prometheus.url}")
    print(
        f"Try:          flowlearn predict --model {args.model} "
        f"--instances '[{[0.5] * args.n_features}]'"
    )
    print("Stop with:    make stop")
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """An evaluation report of a live model from what the system recorded: alerts, dead
    letters, MLflow checkpoints, the prediction log joined with labels (docs/evaluation.md);
    for a contextual bandit, the off-policy evaluation of its logged choices
    (docs/bandits.md)."""
    from flowlearn.evaluation import bandit_report
    from flowlearn.evaluation.data import EvaluationError
    from flowlearn.evaluation.recorded import live_data, parse_time, read_recorded
    from flowlearn.evaluation.report import default_out, render

    try:
        since = parse_time(args.since) if args.since else None
        recorded = read_recorded(settings, args.model, since)
        out = args.out or default_out(settings.stack.home, f"{args.model}-live")
        if recorded.spec.type == bandit_report.BANDIT_TYPE:
            log = bandit_report.bandit_log(recorded)
            bandit_files = bandit_report.render(log, out, window=args.window)
            notes, lines, index = log.notes, list(bandit_files.lines), bandit_files.index
        else:
            data = live_data(settings, recorded)
            files = render(data, out, window=args.window, tolerance=args.tolerance)
            notes, lines, index = list(data.notes), files.headline.lines(), files.index
    except EvaluationError as exc:
        print(f"flowlearn: error: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    for line in lines:
        print(line)
    print(f"report: {index.resolve()}")
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """The job graph on a bounded file at full speed (a local Flink MiniCluster), compared
    with a batch baseline, and the same report as `flowlearn report` (docs/evaluation.md)."""
    from flowlearn.evaluation.data import EvaluationError
    from flowlearn.evaluation.replay import BaselineOptions, replay, write_demo
    from flowlearn.evaluation.report import default_out, render, safe_name

    try:
        if args.demo:
            drift_at = args.drift_at or [args.demo // 2]
            write_demo(
                args.file,
                args.demo,
                drift_at=drift_at,
                seed=args.seed,
                model_id=args.model or "demo",
            )
            print(f"wrote {args.demo} samples of a stream drifting at {drift_at} to {args.file}")
        baseline = (
            None
            if args.no_baseline
            else BaselineOptions(
                train=args.baseline_train,
                retrain_every=args.retrain_every,
                registered_version=args.baseline_version,
            )
        )
        result = replay(
            args.file, settings, args.model, baseline=baseline, registry_dir=args.registry
        )
        print(
            f"replayed {result.records} records in {result.seconds:.1f}s; "
            f"{len(result.dlq)} dead-lettered"
        )
        out = args.out or default_out(settings.stack.home, f"replay-{args.file.stem}")
        for model_id, data in result.data.items():
            folder = out if len(result.data) == 1 else out / safe_name(model_id)
            files = render(data, folder, window=args.window, tolerance=args.tolerance)
            print(f"model {model_id!r} ({data.baseline_name or 'no baseline'}):")
            for line in files.headline.lines():
                print(f"  {line}")
            print(f"  report: {files.index.resolve()}")
    except EvaluationError as exc:
        print(f"flowlearn: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_producer_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
    """Producer options; ``demo`` sets `make run`'s defaults (drift, delayed labels)."""
    p.add_argument("--model", default="demo", help="model id (default: demo)")
    p.add_argument("--count", type=int, default=None, help="samples to send (default: forever)")
    p.add_argument("--rate", type=float, default=200.0, help="samples per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-features", type=int, default=10)
    p.add_argument(
        "--drift-at",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[],
        help="comma-separated sample indices where the concept changes",
    )
    p.add_argument(
        "--drift-every",
        type=int,
        default=20_000 if demo else 0,
        help="also change the concept every N samples (0: never)",
    )
    p.add_argument(
        "--bulk",
        type=int,
        default=0,
        help="send bulk records (Arrow IPC) of N samples each (0: JSON)",
    )
    p.add_argument(
        "--label-delay-ms",
        type=int,
        default=2_000 if demo else 0,
        help="0: labelled samples to fl.samples; >0: events now, labels later (joined by the job)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowlearn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="a TOML file overriding conf/defaults.toml"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start Kafka, Redis, Flink and the predictor").set_defaults(
        func=cmd_up
    )
    sub.add_parser(
        "down", help="stop the job with a savepoint, then everything up started"
    ).set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="components, job and models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("submit", help="submit the training job (flink run -d)")
    p.add_argument("--from-savepoint", default=None, help="resume from this savepoint")
    p.add_argument("--fresh", action="store_true", help="ignore recorded savepoints")
    p.add_argument(
        "--job-src",
        type=Path,
        default=None,
        help="a folder with the job's packages (another build of the job; "
        "default: staged from this checkout)",
    )
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser(
        "rescale",
        help="stop the job with a savepoint and resubmit it from there at another parallelism",
    )
    p.add_argument("--parallelism", type=int, required=True, help="the new parallelism")
    p.set_defaults(func=cmd_rescale)
    p = sub.add_parser("produce", help="send a synthetic drifting stream to Kafka")
    _add_producer_options(p)
    p.add_argument("--background", action="store_true", help="run as a stack component")
    p.set_defaults(func=cmd_produce)
    p = sub.add_parser(
        "rollback",
        help="a model to an earlier version (--model, --to-version), or the job to "
        "a savepoint (--savepoint PATH or --before TIME)",
    )
    p.add_argument("--model")
    p.add_argument("--to-version", type=int)
    p.add_argument("--epoch", type=int, help=EPOCH_HELP)
    p.add_argument("--reason", default="", help="recorded in the rollback alert")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--savepoint", help="resume the job from this savepoint")
    where.add_argument(
        "--before", help="resume from the newest savepoint before this time (ISO 8601 or epoch ms)"
    )
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("savepoint", help="take a savepoint of the running job and record it")
    p.add_argument("--reason", default="", help="kept in the manifest")
    p.set_defaults(func=cmd_savepoint)
    p = sub.add_parser("savepoints", help="recorded savepoints with their models' versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_savepoints)
    p = sub.add_parser("versions", help="a model's registered versions (MLflow) and metrics")
    p.add_argument("--model", default="demo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser(
        "train-batch",
        help="train a batch baseline from a Parquet file, "
        "register it in MLflow, optionally warm-start",
    )
    p.add_argument("--model", default="demo")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="Parquet: features (list), label, optional model_id",
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="baseline file for the predictor (default: <stack home>/baselines/)",
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="the online model continues from this baseline (a control command)",
    )
    p.set_defaults(func=cmd_train_batch)
    for name, help_text in (
        ("pin", "make the predictors serve one version of a model"),
        ("unpin", "let the predictors follow the latest version again"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", required=True)
        if name == "pin":
            p.add_argument("--version", type=int, required=True)
            p.add_argument("--epoch", type=int, help=EPOCH_HELP)
        p.add_argument(
            "--wait-s", type=float, default=60.0, help="how long to wait for the job's answer"
        )
        p.set_defaults(func=cmd_pin)
    p = sub.add_parser("models", help="create, update, delete and list models while the job runs")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("create", help="a new model, its spec validated and held by the job")
    a.add_argument("--model", required=True, help="[A-Za-z0-9._-], up to 200 characters")
    a.add_argument("--spec", type=Path, default=None, help="a TOML file: the spec table")
    _add_shape_options(a)
    a.add_argument("--learning-rate", type=float, default=None)
    a.add_argument("--batch-size", type=int, default=None)
    a.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any spec field (TOML)"
    )
    a.add_argument(
        "--replace",
        action="store_true",
        help="replace a model of this id that is already served (conf/ or defaults)",
    )
    a = actions.add_parser(
        "update", help="change a running model's live fields (a new version records it)"
    )
    a.add_argument("--model", required=True)
    a.add_argument("--learning-rate", type=float, default=None)
    a.add_argument("--batch-size", type=int, default=None)
    a.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a live field (TOML): detectors, drift_action, auto_rollback, holdout_size ...; "
        "any spec field with --reset",
    )
    a.add_argument(
        "--reset",
        action="store_true",
        help="change any field (type, features ...): the model starts again, untrained, at "
        "its next version",
    )
    _add_shape_options(a, "with --reset: ")
    a = actions.add_parser("delete", help="drop a model's state, Redis keys and registry entry")
    a.add_argument("--model", required=True)
    a.add_argument(
        "--keep-registry", action="store_true", help="keep its registered versions in MLflow"
    )
    for name in ("create", "update", "delete"):
        a = actions.choices[name]
        a.add_argument(
            "--wait-s", type=float, default=60.0, help="how long to wait for the job's answer"
        )
    a = actions.add_parser("list", help="the models in Redis, with their specs")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("predict", help="ask the predictor")
    p.add_argument("--model", default="demo")
    p.add_argument("--instances", required=True, help="JSON: one instance or a list of them")
    p.add_argument(
        "--token",
        default=None,
        help=f"bearer token (default: ${TOKEN_VARIABLE}, else the first of "
        "predictor.tokens_file / predictor.tokens; the variable keeps it out of process lists)",
    )
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("run", help="up + submit + demo producer (what `make run` does)")
    _add_producer_options(p, demo=True)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "report",
        help="evaluation report of a model (HTML and PNG plots): "
        "online model vs baseline, drift, versions, label "
        "delay, dead letters, from what the system recorded; for a contextual bandit, "
        "the off-policy evaluation of its logged choices",
    )
    p.add_argument("--model", default="demo")
    p.add_argument(
        "--since", default=None, help="only what happened from this time (ISO 8601 or epoch ms)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for index.html and the plots (default: <stack home>/reports/<model>-live)",
    )
    p.add_argument("--window", type=int, default=500, help="samples per window (default 500)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="recovered: windowed accuracy back within this of the level before "
        "the drift (default 0.05)",
    )
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "replay",
        help="run the job graph on a file of samples (JSON lines or "
        "Parquet) at full speed and write the report",
    )
    p.add_argument(
        "file",
        type=Path,
        help="fl.samples JSON lines, or Parquet (features, label, optional model_id and ts)",
    )
    p.add_argument("--model", default=None, help="only this model (default: every model)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default: <stack home>/reports/replay-<file name>)",
    )
    p.add_argument("--window", type=int, default=500, help="samples per window (default 500)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="recovered: windowed accuracy back within this of the level before "
        "the drift (default 0.05)",
    )
    p.add_argument(
        "--baseline-train",
        type=float,
        default=0.25,
        help="the batch baseline is trained on the first N samples, or this share "
        "of them when below 1 (default 0.25)",
    )
    p.add_argument(
        "--retrain-every",
        type=int,
        default=0,
        help="refit the batch baseline on all samples so far every N samples "
        "(default 0: trained once)",
    )
    p.add_argument(
        "--baseline-version",
        type=int,
        default=None,
        help="compare with this registered baseline (flowlearn train-batch) "
        "instead of training one",
    )
    p.add_argument("--no-baseline", action="store_true", help="no baseline")
    p.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="register the replay's checkpoints in an MLflow store in this folder "
        "(default: none registered)",
    )
    p.add_argument(
        "--demo",
        type=int,
        default=0,
        metavar="N",
        help="first write a synthetic drifting stream of N samples to FILE",
    )
    p.add_argument(
        "--drift-at",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[],
        help="with --demo: where the concept changes (default: N/2)",
    )
    p.add_argument("--seed", type=int, default=0, help="with --demo: the stream's seed")
    p.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        ModelSpecs(settings)  # a bad model spec fails every command, naming the setting
        return int(args.func(settings, args))
    except (
        ConfigError,
        processes.StackError,
        jobctl.JobError,
        RegistryError,
        BatchDataError,
        LifecycleError,
    ) as exc:
        print(f"flowlearn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
