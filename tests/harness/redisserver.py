"""L{RedisServer}: a private redis-server, and a minimal client for checks."""

from __future__ import annotations

import socket
from typing import Any
from unittest import TestCase

from .process import _Process, freePort, requireProgram


class RedisError(Exception):
    """An error reply from Redis."""


class RedisServer(_Process):
    """A private redis-server without persistence; restartable on its port."""

    name = "redis"

    def __init__(self, testCase: TestCase) -> None:
        super().__init__(testCase)
        self.binary = requireProgram(testCase, "redis-server")
        self.port = freePort()
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart after stop/kill) on the same port, empty."""
        self._spawn([self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                     "--daemonize", "no", "--logfile", ""])
        self._waitFor(self.ping, 10, "answer to PING")

    def ping(self) -> bool:
        try:
            return self.command("PING") == b"PONG"
        except (OSError, RedisError):
            return False

    def command(self, *args: str | bytes | int) -> Any:
        """
        Run one command on a fresh connection and return the decoded reply
        (bytes, int, list or None), e.g. C{command("PUBSUB", "NUMSUB", ch)}
        or, as a fault, C{command("CLIENT", "KILL", "TYPE", "pubsub")}.
        """
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        request = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(self.address, timeout=5) as sock:
            sock.sendall(request)
            return _readRESP(sock.makefile("rb"))


def _readRESP(reader: Any) -> Any:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("connection closed by Redis")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        return None if body == b"-1" else reader.read(int(body) + 2)[:-2]
    if kind == b"*":
        return None if body == b"-1" else [_readRESP(reader) for _ in range(int(body))]
    raise OSError(f"unexpected Redis reply {line!r}")
