"""Submitting, finding and stopping the training job on the Flink session cluster."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowlearn.conf import Settings
from flowlearn.conf.settings import SLOT_GROUPS
from flowlearn.contracts.records import control_record
from flowlearn.contracts.redis_contract import redis_client
from flowlearn.devstack import flink_cluster, jars, processes

#: The package shipped with the job (its one import root): a cluster's workers need nothing
#: of the project installed, only its dependencies.
JOB_PACKAGES = ("flowlearn",)
JOB_ENTRY = "flowlearn/jobs/online_learning.py"


class JobError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobInfo:
    id: str
    name: str
    state: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise JobError(f"package {name!r} is not importable; run `make install` first")
    return Path(spec.origin).resolve().parent


def stage_job_sources(settings: Settings) -> Path:
    """Copy the job's packages into one folder for ``-pyfs``.

    Flink puts a ``-pyfs`` folder itself on the workers' PYTHONPATH, so the packages must sit
    inside a folder of their own (the project root would ship the venv and the stack home).
    """
    target = settings.stack.run / "job-src"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in JOB_PACKAGES:
        shutil.copytree(
            _package_dir(name),
            target / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "java"),
        )
    return target


def find_job(settings: Settings) -> JobInfo | None:
    """The newest job of this name that is not in a terminal state, or None."""
    try:
        jobs = flink_cluster.flink_rest(settings, "/jobs/overview").get("jobs", [])
    except (OSError, urllib.error.URLError, ValueError):
        return None
    live = [
        j
        for j in jobs
        if j.get("name") == settings.job.name
        and j.get("state") not in ("FINISHED", "CANCELED", "FAILED")
    ]
    if not live:
        return None
    newest = max(live, key=lambda j: j.get("start-time", 0))
    return JobInfo(newest["jid"], newest["name"], newest["state"])


def wait_job_state(settings: Settings, job_id: str, states: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        try:
            state = flink_cluster.flink_rest(settings, f"/jobs/{job_id}")["state"]
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            state = "UNKNOWN"
        if state in states:
            return state
        if state in ("FAILED", "CANCELED", "FINISHED") and state not in states:
            raise JobError(f"job {job_id} ended {state}; see {settings.stack.logs}")
        time.sleep(0.5)
    raise JobError(
        f"job {job_id} not {'/'.join(sorted(states))} within {timeout_s:.0f}s (last state {state})"
    )


def _all_tasks_running(settings: Settings, job_id: str) -> bool:
    try:
        detail = flink_cluster.flink_rest(settings, f"/jobs/{job_id}")
    except (OSError, urllib.error.URLError, ValueError):
        return False
    vertices = detail.get("vertices", [])
    return bool(vertices) and all(v.get("status") == "RUNNING" for v in vertices)


def published_models(settings: Settings) -> dict[str, dict[str, int]]:
    """The published models' ``version``, ``epoch`` and ``samples_applied`` from Redis;
    empty when Redis cannot be reached."""
    import redis

    from flowlearn.contracts.redis_contract import Keys, model_versions

    client = redis_client(settings.redis)
    try:
        return model_versions(client, Keys(settings.redis.prefix))
    except redis.RedisError:
        return {}
    finally:
        client.close()


def savepoint_manifest(settings: Settings) -> Path:
    return settings.stack.home / "savepoints.json"


def read_savepoints(settings: Settings) -> list[dict[str, Any]]:
    path = savepoint_manifest(settings)
    return json.loads(path.read_text()) if path.exists() else []


def record_savepoint(settings: Settings, entry: dict[str, Any]) -> None:
    entries = [*read_savepoints(settings), entry]
    savepoint_manifest(settings).write_text(json.dumps(entries, indent=2))


def submit(
    settings: Settings,
    from_savepoint: str | None = None,
    fresh: bool = False,
    timeout_s: float = 180.0,
    job_sources: Path | None = None,
) -> JobInfo:
    """Submit the job with ``flink run -d``; resumes from the last recorded savepoint unless
    ``fresh`` or an explicit ``from_savepoint``. Waits until every task is RUNNING.

    ``job_sources`` is a folder holding the job's packages (:data:`JOB_PACKAGES`), for
    example another build of the job; by default they are staged from this checkout."""
    existing = find_job(settings)
    if existing is not None:
        raise JobError(
            f"job {existing.id} is already {existing.state}; stop it first "
            f"(flowlearn down, or flowlearn rollback --savepoint ...)"
        )
    if from_savepoint is None and not fresh:
        recorded = read_savepoints(settings)
        if recorded:
            from_savepoint = recorded[-1]["path"]
    settings_file = settings.stack.run / "job-settings.json"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings.to_dict()))
    settings_file.chmod(0o600)  # holds the Redis password
    connector = jars.kafka_connector_jar(settings)
    operators_jar = jars.operators_jar(settings)
    sources = job_sources or stage_job_sources(settings)
    if not (sources / JOB_ENTRY).exists():
        raise JobError(f"{sources} does not hold the job ({JOB_ENTRY} is missing)")
    cmd = [
        "bash",
        str(flink_cluster.flink_home() / "bin" / "flink"),
        "run",
        "-d",
        # The job's parallelism is the settings' (a rescale is a submission from a
        # savepoint with another flink.parallelism), whatever the cluster's default.
        "-p",
        str(settings.flink.parallelism),
        # Job-level settings travel with the job, whatever the cluster's own config says.
        f"-Dpython.fn-execution.bundle.size={settings.flink.python_bundle_size}",
        f"-Dpython.fn-execution.bundle.time={settings.flink.python_bundle_time_ms}",
        # -j, not pipeline.jars: the Python client needs the connector's classes too.
        "-j",
        str(connector),
        "-py",
        str(sources / JOB_ENTRY),
        "-pyfs",
        str(sources),
        "-pyexec",
        flink_cluster.python_worker_executable(settings),
        "-pyclientexec",
        sys.executable,
    ]
    if from_savepoint:
        cmd += ["-s", from_savepoint]
        processes.log(f"resuming from savepoint {from_savepoint}")
    cmd += ["--settings", str(settings_file), "--operators-jar", str(operators_jar)]
    env = flink_cluster.flink_env(settings)
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**env, "PATH": env["PATH"]}, timeout=timeout_s
    )
    out = result.stdout + result.stderr
    (settings.stack.logs / "submit.out").write_text(out)
    match = re.search(r"JobID ([0-9a-f]{32})", out)
    if result.returncode != 0 or not match:
        tail = " | ".join(out.strip().splitlines()[-4:])
        raise JobError(f"flink run failed (see {settings.stack.logs / 'submit.out'}): {tail}")
    job_id = match.group(1)
    wait_job_state(settings, job_id, {"RUNNING"}, timeout_s)
    processes.wait_for(
        "job tasks",
        lambda: _all_tasks_running(settings, job_id),
        timeout_s,
        settings.stack.logs / "submit.out",
    )
    return JobInfo(job_id, settings.job.name, "RUNNING")


def cancel(settings: Settings, job: JobInfo, timeout_s: float = 60.0) -> None:
    """Cancel ``job`` without a savepoint (its retained checkpoint stays)."""
    flink_cluster.flink_rest(settings, f"/jobs/{job.id}?mode=cancel", method="PATCH")
    wait_job_state(settings, job.id, {"CANCELED"}, timeout_s)


def _savepoint_dir(settings: Settings) -> str:
    return f"file://{settings.stack.data / 'flink' / 'savepoints'}"


def _await_savepoint(
    settings: Settings, job: JobInfo, request_id: str, what: str, timeout_s: float
) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = flink_cluster.flink_rest(settings, f"/jobs/{job.id}/savepoints/{request_id}")
        if status["status"]["id"] == "COMPLETED":
            operation = status.get("operation", {})
            if "failure-cause" in operation:
                cause = operation["failure-cause"]
                raise JobError(
                    f"{what} failed: {cause.get('class')}: "
                    f"{str(cause.get('stack-trace', '')).splitlines()[:1]}"
                )
            return str(operation["location"])
        time.sleep(0.5)
    raise JobError(f"{what} of job {job.id} did not finish within {timeout_s:.0f}s")


def _record(settings: Settings, path: str, job: JobInfo, reason: str) -> dict[str, Any]:
    entry = {
        "path": path,
        "job_id": job.id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "time_ms": int(time.time() * 1000),
        "reason": reason,
        # What Redis holds right after the savepoint: the versions it contains, or a
        # batch or two later (the job runs on while the savepoint completes).
        "models": published_models(settings),
    }
    record_savepoint(settings, entry)
    return entry


def trigger_savepoint(
    settings: Settings, job: JobInfo, reason: str = "manual", timeout_s: float = 120.0
) -> dict[str, Any]:
    """Take a savepoint of the running ``job``, wait for it, record it in the manifest."""
    trigger = flink_cluster.flink_rest(
        settings,
        f"/jobs/{job.id}/savepoints",
        method="POST",
        body={"target-directory": _savepoint_dir(settings), "cancel-job": False},
    )
    path = _await_savepoint(settings, job, trigger["request-id"], "savepoint", timeout_s)
    return _record(settings, path, job, reason)


def stop_with_savepoint(
    settings: Settings, job: JobInfo, timeout_s: float = 120.0, reason: str = "stop"
) -> str:
    """Stop ``job`` with a savepoint (drained of nothing: it resumes where it stopped)."""
    trigger = flink_cluster.flink_rest(
        settings,
        f"/jobs/{job.id}/stop",
        method="POST",
        body={"targetDirectory": _savepoint_dir(settings), "drain": False},
    )
    path = _await_savepoint(settings, job, trigger["request-id"], "stop-with-savepoint", timeout_s)
    _record(settings, path, job, reason)
    return path


def savepoint_before(settings: Settings, when_ms: int) -> dict[str, Any]:
    """The newest recorded savepoint taken before ``when_ms``."""
    earlier = [e for e in read_savepoints(settings) if e.get("time_ms", 0) < when_ms]
    if not earlier:
        raise JobError(f"no recorded savepoint before {when_ms} (see `flowlearn savepoints`)")
    return max(earlier, key=lambda e: e["time_ms"])


@dataclass(frozen=True)
class RollbackReport:
    stopped_job: str
    savepoint_taken: str
    restored_from: str
    new_job: str
    steps: list[tuple[str, float]]


def rollback_to_savepoint(settings: Settings, path: str) -> RollbackReport:
    """Job-level rollback: stop the running job with a savepoint, resubmit from ``path``.

    Should the resubmission fail, the job is resubmitted from the savepoint just taken (the
    state it was stopped in), so something always runs; the error then says so.
    """
    if not path.startswith("file:") and not Path(path).exists():
        raise JobError(f"savepoint {path} does not exist")
    steps: list[tuple[str, float]] = []
    t0 = time.monotonic()
    job = find_job(settings)
    if job is None:
        raise JobError("no running job to roll back; use `flowlearn submit --from-savepoint`")
    taken = stop_with_savepoint(settings, job, reason=f"before rollback to {path}")
    steps.append(("stop with savepoint", time.monotonic() - t0))
    t1 = time.monotonic()
    new = _submit_or_go_back(settings, path, settings, taken, f"rollback to {path}")
    steps.append(("submit from savepoint, all tasks running", time.monotonic() - t1))
    t2 = time.monotonic()
    republish(settings, list(published_models(settings)))
    steps.append(("republish request sent", time.monotonic() - t2))
    return RollbackReport(job.id, taken, path, new.id, steps)


def _submit_or_go_back(
    target: Settings, path: str, settings: Settings, taken: str, what: str
) -> JobInfo:
    """Submit the job under ``target`` from savepoint ``path``; should that fail, submit it
    as it ran (``settings``) from ``taken``, the savepoint it was just stopped with, so that
    something always runs, and raise a JobError saying so."""
    try:
        return submit(target, from_savepoint=path)
    except JobError as exc:
        processes.log(f"{what} failed ({exc}); going back to {taken}")
        submit(settings, from_savepoint=taken)
        raise JobError(
            f"{what} failed: {exc}; the job runs again as it was, from the savepoint it was "
            f"stopped with ({taken})"
        ) from exc


def with_parallelism(settings: Settings, parallelism: int) -> Settings:
    """``settings`` with another ``flink.parallelism``, validated (ConfigError naming the
    setting when the stack's slots cannot hold it)."""
    flink = dataclasses.replace(settings.flink, parallelism=parallelism)
    flink.validate()
    return dataclasses.replace(settings, flink=flink)


@dataclass(frozen=True)
class RescaleReport:
    stopped_job: str
    savepoint: str
    new_job: str
    parallelism: int
    seconds: float


def rescale(settings: Settings, parallelism: int) -> RescaleReport:
    """Stop the running job with a savepoint and resubmit it from that savepoint at
    ``parallelism``: every model's state, version and sample count go on where they
    stopped, its key groups spread over the new subtasks (within ``flink.max_parallelism``).

    Checked before anything stops: the setting, and the cluster's slots. Should the new
    submission fail, the job is resubmitted at its old parallelism from the same savepoint,
    and the error says so.
    """
    target = with_parallelism(settings, parallelism)
    job = find_job(settings)
    if job is None or job.state != "RUNNING":
        raise JobError("no running job to rescale; use `flowlearn submit`")
    needed = SLOT_GROUPS * parallelism
    slots = int(flink_cluster.flink_rest(settings, "/overview").get("slots-total", 0))
    if slots < needed:
        raise JobError(
            f"parallelism {parallelism} needs {needed} task slots, the cluster has {slots} "
            "(more flink.taskmanagers or flink.taskmanager_slots, then flowlearn down/up)"
        )
    t0 = time.monotonic()
    taken = stop_with_savepoint(settings, job, reason=f"rescale to parallelism {parallelism}")
    new = _submit_or_go_back(
        target, taken, settings, taken, f"rescale to parallelism {parallelism}"
    )
    return RescaleReport(job.id, taken, new.id, parallelism, time.monotonic() - t0)


def republish(settings: Settings, model_ids: list[str]) -> None:
    """Ask the trainer to publish each model's current (restored) version under the new
    epoch, so that predictors reload now rather than at the next trained batch."""
    from flowlearn.devstack.producer import send_raw

    for model_id in model_ids:
        record = control_record(model_id, "republish", {}, source="cli:rollback")
        send_raw(settings.kafka, settings.kafka.topics.control, [record.encode()], key=model_id)
