"""Redis logins from configuration against a real redis-server: an ACL user (the local
stack's own rules) and TLS with a CA of the test's own."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flowlearn.conf import RedisConf
from flowlearn.contracts.redis_contract import redis_client
from flowlearn.devstack.redis_server import redis_auth_lines

from .conftest import free_port, wait_for


def start_server(conf_lines: list[str], data: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (apt-get install -y redis-server)")
    conf = data / "redis.conf"
    conf.write_text(
        "\n".join(["bind 127.0.0.1", 'save ""', "appendonly no", f"dir {data}", *conf_lines, ""])
    )
    return subprocess.Popen(
        [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


def answering(conf: RedisConf, proc: subprocess.Popen[bytes]) -> None:
    def ping() -> bool:
        assert proc.poll() is None, "redis-server exited"
        try:
            return bool(redis_client(conf).ping())
        except redis.ConnectionError:
            return False

    wait_for("redis-server to answer", ping, 20)


@pytest.fixture
def acl_server(tmp_path) -> Iterator[RedisConf]:
    port = free_port()
    conf = RedisConf(port=port, username="flowlearn", password="acl-secret", prefix="fl:")
    proc = start_server(
        [f"port {port}", *redis_auth_lines(conf.username, conf.password, conf.prefix)], tmp_path
    )
    try:
        answering(conf, proc)
        yield conf
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_acl_user_works_within_its_prefix_and_nothing_else_gets_in(acl_server):
    client = redis_client(acl_server)
    client.set("fl:probe", b"1")
    assert client.get("fl:probe") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:probe", b"1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
    # The default user is off: the password alone no longer logs in.
    default = RedisConf(port=acl_server.port, password=acl_server.password)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(default).ping()
    wrong = RedisConf(port=acl_server.port, username="flowlearn", password="wrong")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(wrong).ping()


def test_the_publisher_and_a_reader_work_as_the_acl_user(acl_server):
    import numpy as np

    from flowlearn.contracts.redis_contract import Keys, ModelVersion, Publisher, read_snapshot
    from flowlearn.core import codec

    keys = Keys(acl_server.prefix)
    weights = np.arange(4.0)
    published = Publisher(redis_client(acl_server), keys, 100).publish(
        ModelVersion(
            model_id="m",
            version=1,
            base_version=0,
            samples_applied=8,
            spec_json="{}",
            delta=codec.make_delta(np.zeros(4), weights),
            weights=codec.encode_array(weights),
        )
    )
    assert published
    snapshot = read_snapshot(redis_client(acl_server), keys, "m")
    assert snapshot is not None and snapshot.weights.tolist() == weights.tolist()


@pytest.fixture
def tls_server(tmp_path, test_ca) -> Iterator[tuple[RedisConf, Path]]:
    cert, key = test_ca.issue("redis")
    ca = test_ca.cert
    port = free_port()
    conf = RedisConf(port=port, password="tls-secret", tls=True, tls_ca_file=str(ca))
    proc = start_server(
        [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {cert}",
            f"tls-key-file {key}",
            f"tls-ca-cert-file {ca}",
            "tls-auth-clients no",
            f"requirepass {conf.password}",
        ],
        tmp_path,
    )
    try:
        answering(conf, proc)
        yield conf, ca
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_verified_against_the_configured_ca(tls_server):
    conf, _ = tls_server
    client = redis_client(conf)
    client.set("fl:tls", b"yes")
    assert client.get("fl:tls") == b"yes"
    assert conf.url == f"rediss://127.0.0.1:{conf.port}/0"
    # Without TLS the server does not answer; without our CA its certificate is refused.
    with pytest.raises(redis.ConnectionError):
        redis_client(RedisConf(port=conf.port, password=conf.password), 1).ping()
    with pytest.raises(redis.ConnectionError):
        redis_client(RedisConf(port=conf.port, password=conf.password, tls=True), 2).ping()
