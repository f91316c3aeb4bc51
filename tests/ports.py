"""Free TCP ports for the servers tests start."""

from __future__ import annotations

import socket


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports nothing listens on now. Every socket stays bound until all are
    chosen: ports chosen one at a time can come back the same once the first is closed (a
    settings test once got one port for Redis and Kafka, and failed validation)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    (port,) = free_ports(1, host)
    return port
