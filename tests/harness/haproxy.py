"""L{HAProxy} running the reference haproxy.cfg in front of test nodes."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Any, Sequence
from unittest import TestCase

from .client import LineClient
from .process import ROOT, _Process, freePort, requireProgram

HAPROXY_CFG = ROOT / "haproxy.cfg"


def _canConnect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class HAProxy(_Process):
    """
    HAProxy running the top-level haproxy.cfg, with the bind line moved to a
    free port, the server lines replaced by C{nodes} (named node1...), the
    stats socket moved into a private directory and the check interval
    shortened. So the tests exercise the reference config itself.
    """

    name = "haproxy"

    def __init__(self, testCase: TestCase, nodes: Sequence[Any], *,
                 checkInterval: str = "500ms", maxconn: int | None = None,
                 template: Path = HAPROXY_CFG) -> None:
        super().__init__(testCase)
        self.binary = requireProgram(testCase, "haproxy")
        self.port = freePort()
        self.statsSocket = self.socketDirectory / "stats.sock"
        servers = [(f"node{i}", *_address(node), getattr(node, "metricsPort", None))
                   for i, node in enumerate(nodes, 1)]
        self.servers = [name for name, *_ in servers]
        text = template.read_text()
        self.backend = re.search(r"^\s*backend\s+(\S+)", text, re.M).group(1)
        self.configPath = self.directory / "haproxy.cfg"
        self.configPath.write_text(renderHAProxyConfig(
            text, port=self.port, servers=servers, statsSocket=self.statsSocket,
            checkInterval=checkInterval, maxconn=maxconn))
        check = subprocess.run([self.binary, "-c", "-f", str(self.configPath)],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if check.returncode != 0:
            testCase.fail(f"haproxy -c rejects {self.configPath}:\n"
                          f"{(check.stdout + check.stderr).decode(errors='replace')}")
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def start(self) -> None:
        self._spawn([self.binary, "-db", "-f", str(self.configPath)])
        self._waitFor(lambda: self.statsSocket.exists() and _canConnect(*self.address),
                      10, "listening socket")

    def client(self, timeout: float = 5.0) -> "LineClient":
        """A L{LineClient} through HAProxy, closed at cleanup."""
        client = LineClient(*self.address, timeout=timeout)
        self.testCase.addCleanup(client.close)
        return client

    def command(self, line: str) -> str:
        """One command on the admin stats socket; returns HAProxy's answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.statsSocket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def setServerState(self, server: str, state: str) -> None:
        """Put a node in C{ready}, C{drain} (no new connections) or C{maint}."""
        if state not in ("ready", "drain", "maint"):
            raise ValueError(state)
        answer = self.command(f"set server {self.backend}/{server} state {state}").strip()
        if answer:
            self.testCase.fail(f"haproxy refused state {state} for {server}: {answer}")

    def serverStatus(self) -> dict[str, str]:
        """
        Each node's status from C{show stat}: UP, DOWN, DRAIN, MAINT, or a
        transition such as C{UP 1/2}, which is also what a server shows
        before its first check has run.
        """
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == self.backend and row["svname"] in self.servers}

    def waitForStatus(self, server: str, status: str = "UP", timeout: float = 10) -> None:
        """Wait until the health checks put C{server} in exactly C{status} (e.g. UP, DOWN)."""
        self._waitFor(lambda: self.serverStatus().get(server) == status,
                      timeout, f"status {status} of {server}")


def _address(node: Any) -> tuple[str, int]:
    return tuple(getattr(node, "address", node))


def renderHAProxyConfig(template: str, *, port: int,
                        servers: Sequence[tuple[Any, ...]],
                        statsSocket: Path,
                        checkInterval: str | None = None,
                        maxconn: int | None = None) -> str:
    """
    The reference config with the test's port, servers and stats socket. The
    first C{server} line's options (send-proxy-v2 check ...) apply to all,
    but for its C{check port}: each server's own metrics port (the fourth
    item of its tuple), which serves the /ready its check asks for.
    """
    out = []
    serversDone = False
    for line in template.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        words = line.split()
        keyword = words[0] if words else ""
        if keyword == "stats" and words[1:2] == ["socket"]:
            line = f"{indent}stats socket {statsSocket} " + " ".join(words[3:])
        elif keyword == "bind":
            line = f"{indent}bind 127.0.0.1:{port}"
        elif keyword == "server":
            if serversDone:
                continue
            serversDone = True
            options = " ".join(words[3:])
            for name, host, p, *check in servers:
                out.append(f"{indent}server {name} {host}:{p} " + (
                    re.sub(r"\bport \d+", f"port {check[0]}", options)
                    if check and check[0] else options))
            continue
        elif keyword == "default-server" and checkInterval:
            line = re.sub(r"\binter\s+\S+", f"inter {checkInterval}", line)
        elif keyword == "maxconn" and maxconn:
            line = f"{indent}maxconn {maxconn}"
        out.append(line)
    return "\n".join(out) + "\n"
