"""The jars of the local stack: Maven downloads (the Kafka broker, the Flink Kafka connector,
the zstd codec of its client) and the job's Java operators, built against this Flink."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from flowlearn.conf import Settings, versions
from flowlearn.devstack.flink_cluster import flink_home
from flowlearn.devstack.processes import StackError, log, require_tool

#: The one script that fetches jars, shared with the job image's build (flink-docker/).
FETCH_JARS = Path(__file__).resolve().parents[2] / "flink-docker" / "fetch-jars.sh"


def fetch_jars(settings: Settings, label: str, constant: str, transitive: bool) -> Path:
    """Fetch the artifact named by ``flowlearn.conf.versions.<constant>`` (and, if ``transitive``,
    its
    runtime dependencies) into ``jars/<label>``, once."""
    target = settings.stack.jars / label
    require_tool("mvn", "install Maven (apt-get install -y maven) to fetch the jars")
    if not (target / ".complete").exists():
        log(f"fetching {getattr(versions, constant)} with Maven into {target} ...")
    cmd = [
        "bash",
        str(FETCH_JARS),
        "--artifact",
        constant,
        *(["--transitive"] if transitive else []),
        str(target),
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise StackError(f"fetching {constant} failed: {lines[-1]}")
    return target


def _fetched_jar(settings: Settings, label: str, constant: str) -> Path:
    """The one jar of the artifact ``constant`` names, fetched alone into ``jars/<label>``."""
    folder = fetch_jars(settings, label, constant, False)
    artifact = getattr(versions, constant).split(":")[1]
    jars = sorted(folder.glob(f"{artifact}-*.jar"))
    if not jars:
        raise StackError(f"no {artifact} jar in {folder}; delete it and run again")
    return jars[0]


def kafka_connector_jar(settings: Settings) -> Path:
    return _fetched_jar(settings, "flink-kafka", "KAFKA_CONNECTOR_ARTIFACT")


def zstd_jni_jar(settings: Settings) -> Path:
    """zstd-jni (``ZSTD_JNI_ARTIFACT``), for the TaskManagers' ``lib/``: the codec the Kafka
    connector's client decompresses zstd records with (one JNI library per JVM, so in
    ``lib/`` and not with each job)."""
    return _fetched_jar(settings, "zstd-jni", "ZSTD_JNI_ARTIFACT")


#: Builds the job's Java operators (``operators/java``), shared with the job image's build.
BUILD_OPERATORS_JAR = FETCH_JARS.parent / "build-operators-jar.sh"
OPERATORS_JAVA = FETCH_JARS.parent.parent / "operators" / "java"


def operators_jar(settings: Settings) -> Path:
    """The jar of the job's Java operators, compiled against this Flink into
    ``jars/flowlearn-operators`` once per version of their sources (a second or two)."""
    digest = hashlib.sha256()
    sources = sorted(path for path in OPERATORS_JAVA.rglob("*") if path.is_file())
    for path in [*sources, BUILD_OPERATORS_JAR]:
        digest.update(path.relative_to(OPERATORS_JAVA.parent.parent).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(versions.FLINK_VERSION.encode())
    folder = settings.stack.jars / "flowlearn-operators"
    target = folder / f"operators-{digest.hexdigest()[:16]}.jar"
    if target.exists():
        return target
    require_tool("javac", "install a JDK 17 (apt-get install -y openjdk-17-jdk-headless)")
    result = subprocess.run(
        ["bash", str(BUILD_OPERATORS_JAR), str(flink_home() / "lib"), str(target)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StackError(f"building the operators jar failed:\n{result.stderr.strip()}")
    for old in folder.glob("operators-*.jar"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def taskmanager_agent_jar(settings: Settings) -> Path:
    """The operators jar under a name that stays: the TaskManagers' ``-javaagent:``
    (PythonRunnerWarmup), which a TaskManager's replacement starts with again, while the
    job's own copy is renamed with every change of its sources."""
    built = operators_jar(settings)
    target = settings.stack.jars / "taskmanager-agent.jar"
    if not target.exists() or target.read_bytes() != built.read_bytes():
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(built, tmp)
        tmp.replace(target)  # a running TaskManager keeps the file it opened
    return target
