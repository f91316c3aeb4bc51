"""The local Redis server: its login lines and its process."""

from __future__ import annotations

from flowlearn.conf import Settings
from flowlearn.devstack.processes import (
    StackError,
    debian_binary,
    port_open,
    require_free_port,
    running_pid,
    start_process,
    wait_for,
)


def redis_auth_lines(username: str, password: str, prefix: str) -> list[str]:
    """redis.conf lines for the configured login: the default user's password, or an ACL
    user limited to the prefix's keys and without the dangerous commands (FLUSHALL,
    CONFIG, KEYS, ...) while the default user is off.

    >>> redis_auth_lines("fl", "pw", "fl:")
    ['user default off', 'user fl on >pw resetkeys ~fl:* resetchannels +@all -@dangerous']
    """
    if not username:
        return [f"requirepass {password}"]
    return [
        "user default off",
        f"user {username} on >{password} resetkeys ~{prefix}* resetchannels +@all -@dangerous",
    ]


def start_redis(settings: Settings) -> None:
    if running_pid(settings, "redis"):
        return
    r = settings.redis
    if r.tls:
        raise StackError(
            "the local stack runs Redis without TLS: set redis.tls = false, or "
            "point redis.host at a Redis server that has TLS"
        )
    require_free_port(r.host, r.port, "redis.port")
    server = debian_binary("redis-server", "redis-server")
    data = settings.stack.data / "redis"
    data.mkdir(parents=True, exist_ok=True)
    conf_file = settings.stack.home / "redis" / "redis.conf"
    conf_file.parent.mkdir(parents=True, exist_ok=True)
    conf_file.write_text(
        "\n".join(
            [
                f"bind {r.host}",
                f"port {r.port}",
                "protected-mode yes",
                *redis_auth_lines(r.username, r.password, r.prefix),
                f"dir {data}",
                "daemonize no",
                # Keep the config path in the process title: running_pid() recognises it.
                'proc-title-template "{title} {listen-addr} {config-file}"',
                "save 60 1000",
                "appendonly no",
                "",
            ]
        )
    )
    conf_file.chmod(0o600)  # it holds the password
    start_process(settings, "redis", [server, str(conf_file)])
    wait_for("Redis", lambda: port_open(r.host, r.port), 30, settings.stack.logs / "redis.out")
