"""L{ChatNode}: one C{twistd -n chat} process."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Sequence
from unittest import TestCase

from .client import LineClient, proxyV2Header
from .process import ROOT, _Process

_LISTENING = re.compile(rb"listening on (\S+):(\d+)")


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
    """

    name = "chat"

    def __init__(self, testCase: TestCase, *, db: Any = None, redis: Any = None,
                 nodeId: str | None = None, haproxy: bool = False,
                 extraArgs: Sequence[str] = (), port: int = 0,
                 timeout: float = 20.0) -> None:
        super().__init__(testCase)
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
        return argv + self.extraArgs

    def start(self) -> None:
        """Start (or restart after stop/kill, on the same port)."""
        pythonPath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONPATH=pythonPath, PYTHONUNBUFFERED="1")
        offset = self._spawn(self.argv(), cwd=ROOT, env=env)

        def listening() -> re.Match[bytes] | None:
            return _LISTENING.search(self.log(offset).encode())

        match = self._waitFor(listening, self.timeout, "'listening on HOST:PORT' line")
        self.host, self.port = match.group(1).decode(), int(match.group(2))

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
