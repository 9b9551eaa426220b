"""L{ChatNode}: one C{twistd -n chat} process."""

from __future__ import annotations

import http.client
import os
import re
import sys
from typing import Any, Callable, Sequence
from unittest import TestCase

from .client import LineClient, proxyV2Header
from .process import ROOT, _Process

_LISTENING = re.compile(rb"listening on (\S+):(\d+)")
_METRICS = re.compile(rb"readiness on http://(\S+):(\d+)")


def _url(value: Any) -> str | None:
    """Accept a URL string or anything with a C{url} (RedisServer, databases)."""
    return getattr(value, "url", value)


class ChatNode(_Process):
    """
    A C{twistd -n chat} process. It listens on port 0 and says where in its
    log (C{Chat server listening on HOST:PORT}), so nodes never race for
    ports. Passwords are hashed with tiny costs to keep tests fast.

    @param db: C{--db} URL or a database object; default a SQLite file in
        the node's directory.
    @param redis: C{--redis} URL or a L{RedisServer}; default none (one node).
    @param haproxy: listen with C{haproxy:tcp:...}, expecting PROXY v2.
    @param metrics: serve /metrics, /health and /ready (C{--metrics}) on a
        port of its own, C{metricsPort}: HAProxy's health checks ask
        /ready there.
    """

    name = "chat"

    def __init__(self, testCase: TestCase, *, db: Any = None, redis: Any = None,
                 nodeId: str | None = None, haproxy: bool = False,
                 extraArgs: Sequence[str] = (), port: int = 0,
                 timeout: float = 20.0, metrics: bool = True) -> None:
        super().__init__(testCase)
        self.metrics = metrics
        self.metricsPort: int | None = None
        if not hasattr(self, "root"):
            self.root = ROOT
        self.db = _url(db) or f"sqlite:{self.directory}/chat.sqlite3"
        self.redis = _url(redis)
        self.nodeId = nodeId
        self.haproxy = haproxy
        self.extraArgs = list(extraArgs)
        self.timeout = timeout
        self.host = "127.0.0.1"
        self.port = port
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def endpoint(self) -> str:
        """C{--port}; after the first start the port is fixed (HAProxy knows it)."""
        return f"{'haproxy:' if self.haproxy else ''}tcp:{self.port}:interface=127.0.0.1"

    def metricsEndpoint(self) -> str:
        """C{--metrics}; like the chat port, fixed after the first start."""
        return f"tcp:{self.metricsPort or 0}:interface=127.0.0.1"

    def argv(self) -> list[str]:
        """The command line (tests of the harness override it with a fake server)."""
        # `python -m twisted` is `twist`, and twisted.scripts.twistd has no
        # __main__ guard: run twistd with this very interpreter like this.
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile=-", "chat", "--port", self.endpoint(),
                "--db", self.db, "--password-time", "1", "--password-memory", "64"]
        if self.redis:
            argv += ["--redis", self.redis]
        if self.nodeId:
            argv += ["--node-id", self.nodeId]
        if self.metrics:
            argv += ["--metrics", self.metricsEndpoint()]
        return argv + self.extraArgs

    def start(self) -> None:
        """Start (or restart after stop/kill, on the same ports), from
        C{self.root} (this checkout unless a subclass says otherwise)."""
        pythonPath = os.pathsep.join(filter(None, [str(self.root), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=pythonPath, PYTHONUNBUFFERED="1")
        offset = self._spawn(self.argv(), cwd=self.root, env=env)

        def found(pattern: re.Pattern[bytes]) -> Callable[[], re.Match[bytes] | None]:
            return lambda: pattern.search(self.log(offset).encode())

        match = self._waitFor(found(_LISTENING), self.timeout, "'listening on HOST:PORT' line")
        self.host, self.port = match.group(1).decode(), int(match.group(2))
        if self.metrics:
            match = self._waitFor(found(_METRICS), self.timeout, "'readiness on http://...' line")
            self.metricsPort = int(match.group(2))

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET C{path} on the metrics port: the status and the body."""
        connection = http.client.HTTPConnection(self.host, self.metricsPort, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8")
        finally:
            connection.close()

    def client(self, timeout: float = 5.0, proxyHeader: bytes | None = None,
               receiveBuffer: int | None = None) -> "LineClient":
        """A connected L{LineClient}, closed at cleanup. On a C{haproxy=True} node
        it sends a PROXY v2 header first (a default one unless given)."""
        if self.haproxy and proxyHeader is None:
            proxyHeader = proxyV2Header(("127.0.0.1", 40000), self.address)
        client = LineClient(self.host, self.port, timeout, proxyHeader=proxyHeader,
                            receiveBuffer=receiveBuffer)
        self.testCase.addCleanup(client.close)
        return client
