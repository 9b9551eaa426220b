"""
The deployments the benchmark starts itself: one node, two nodes with their
own redis-server and a MariaDB database, HAProxy in front, and the bare
Twisted relay baseline.

Why reuse tests/harness: it already starts every one of these on free ports,
waits until each is ready and guarantees the processes end (even when the
benchmark is killed).  Its classes want a TestCase only for C{addCleanup}
and C{fail}; L{Owner} stands in for one outside trial.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tests.harness import ChatNode, HAProxy, RedisServer, SharedMariaDBDatabase
from tests.harness.process import ROOT



class DeploymentError(Exception):
    """A service did not start (the message holds its log tail)."""


class Owner:
    """
    Stands in for the TestCase the harness expects: collects cleanups and
    runs them in reverse order, and turns C{fail} into an exception.
    """

    def __init__(self) -> None:
        self._cleanups: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def addCleanup(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._cleanups.append((function, args, kwargs))

    def fail(self, message: str) -> None:
        raise DeploymentError(message)

    def cleanup(self) -> None:
        while self._cleanups:
            function, args, kwargs = self._cleanups.pop()
            try:
                function(*args, **kwargs)
            except Exception as e:  # a cleanup must not hide the others
                print(f"bench: cleanup {function!r} failed: {e}", file=sys.stderr)

    def __enter__(self) -> "Owner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class BenchNode(ChatNode):
    """
    A C{twistd -n chat} node for benchmarks.

    @param root: the directory whose code the node runs (default this
        checkout); the full benchmark runs a frozen copy of a commit so that
        edits made meanwhile in the working tree do not leak into a run.
    @param defaultCost: keep the server's default password cost (the login
        scenario) instead of the cheap one every other scenario uses.
    @param metrics: run with C{--metrics} (off by default, unlike the
        tests' nodes: the benchmark measures the node as shipped, and
        compares the two in the chat-*-metrics scenarios).
    """

    reactor: Optional[str] = None
    """twistd's --reactor for every node of the run (C{bench.run --reactor});
    None for twistd's default."""

    def __init__(self, owner: Any, *, root: Optional[Path] = None,
                 defaultCost: bool = False, metrics: bool = False,
                 **kwargs: Any) -> None:
        self.root = Path(root or ROOT)
        self.defaultCost = defaultCost
        super().__init__(owner, metrics=metrics, **kwargs)

    def argv(self) -> list[str]:
        argv = super().argv()
        if nodeHasOption("chat-rate", self.root):
            # The benchmark measures what a node carries, not its chat
            # limit (a batched sender may pass 200 messages a second).
            argv += ["--chat-rate", "0"]
        if self.reactor is not None:
            argv.insert(argv.index("chat"), f"--reactor={self.reactor}")
        if self.defaultCost:
            i = argv.index("--password-time")
            del argv[i:i + 4]  # --password-time 1 --password-memory 64
        return argv

    def problems(self) -> list[str]:
        """Lines of the node's log that suggest a server problem."""
        return logProblems(self.log())


class RelayNode(BenchNode):
    """The bare Twisted relay baseline (L{bench.relay}) in place of a node."""

    name = "relay"

    def __init__(self, owner: Any, *, codec: str = "orjson", **kwargs: Any) -> None:
        self.codec = codec
        super().__init__(owner, root=ROOT, **kwargs)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bench.relay", "--port", str(self.port),
                "--codec", self.codec]


_PROBLEM = re.compile(r"Traceback|Unhandled|CRITICAL|\berror\b|lost\b", re.I)


def logProblems(text: str, limit: int = 20) -> list[str]:
    """Distinct problem lines of a log (timestamps stripped), at most C{limit}."""
    seen: dict[str, int] = {}
    for line in text.splitlines():
        if _PROBLEM.search(line):
            key = re.sub(r"^\S+ \S+ ", "", line)[:300]
            key = re.sub(r"\d+", "N", key)
            seen[key] = seen.get(key, 0) + 1
    return [f"{n} x {line}" for line, n in list(seen.items())[:limit]]


class Deployment:
    """
    What a scenario runs against.

    @ivar nodes: the chat nodes (one, or two sharing Redis and MariaDB).
    @ivar entry: the address clients connect to for node C{i}, or HAProxy.
    """

    def __init__(self, owner: Owner, nodes: Sequence[BenchNode],
                 redis: Optional[RedisServer] = None, database: Any = None,
                 haproxy: Optional[HAProxy] = None, label: str = "") -> None:
        self.owner = owner
        self.nodes = list(nodes)
        self.redis = redis
        self.database = database
        self.haproxy = haproxy
        self.label = label

    def address(self, i: int = 0) -> tuple[str, int]:
        return self.nodes[i].address

    @property
    def proxyAddress(self) -> tuple[str, int]:
        assert self.haproxy is not None
        return self.haproxy.address

    def pids(self) -> dict[str, int]:
        """Server-side processes whose CPU the report shows."""
        pids = {f"node{i + 1}": n.pid for i, n in enumerate(self.nodes) if n.pid}
        if self.redis is not None and self.redis.pid:
            pids["redis"] = self.redis.pid
        if self.haproxy is not None and self.haproxy.pid:
            pids["haproxy"] = self.haproxy.pid
        mariadb = self.databasePid()
        if mariadb:
            pids["mariadbd"] = mariadb
        return pids

    def databasePid(self) -> Optional[int]:
        """
        The pid of the MariaDB server holding our database, from its own
        C{@@pid_file}: other sessions on the machine may run private
        mariadbd processes too, so the name alone does not tell.
        """
        if self.database is None:
            return None
        if not hasattr(self, "_databasePid"):
            self._databasePid: Optional[int] = None
            try:
                pidFile = self.database.query("SELECT @@pid_file")[0][0]
                self._databasePid = int(Path(pidFile).read_text().split()[0])
            except Exception:
                self._databasePid = findProcess("mariadbd")
        return self._databasePid

    def problems(self) -> list[str]:
        found = []
        for i, node in enumerate(self.nodes):
            found.extend(f"node{i + 1}: {p}" for p in node.problems())
        return found


def findProcess(name: str) -> Optional[int]:
    """The pid of a process called C{name} (the machine's mariadbd), if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    return int(entry.name)
            except OSError:
                continue
    return None


def singleNode(owner: Owner, root: Optional[Path] = None, defaultCost: bool = False,
               db: Optional[str] = None, nodeId: Optional[str] = None,
               metrics: bool = False, haproxy: bool = False,
               extraArgs: Sequence[str] = ()) -> Deployment:
    """
    One node on its own SQLite file: the default deployment.  With
    C{haproxy} it listens on C{haproxy:tcp:...}, so every client must open
    with a PROXY v2 header, and the node takes the client address from it
    (a benchmark can then play clients from many addresses).
    """
    node = BenchNode(owner, root=root, defaultCost=defaultCost, db=db, nodeId=nodeId,
                     metrics=metrics, haproxy=haproxy, extraArgs=extraArgs)
    label = "one node, SQLite" + (", PROXY v2 listener" if haproxy else "")
    return Deployment(owner, [node], label=label)


@functools.lru_cache(maxsize=None)
def nodeHasOption(option: str, root: Optional[Path] = None) -> bool:
    """
    Whether the node code in C{root} (default this checkout) knows
    C{--option}, from C{twistd chat --help}: a scenario that wants an
    option of a newer revision asks instead of assuming, since a run may
    be of an older commit (C{bench.run --commit}).
    """
    where = str(root or ROOT)
    out = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "chat", "--help"], cwd=where, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=where))
    return f"--{option}=" in out.stdout or f"--{option} " in out.stdout


def cluster(owner: Owner, root: Optional[Path] = None, nodes: int = 2,
            haproxy: bool = False, metrics: bool = False) -> Deployment:
    """
    C{nodes} nodes, a private redis-server and a database of their own on
    the machine's MariaDB; optionally HAProxy (the reference config) in
    front, with the nodes then expecting PROXY v2 (and serving /ready for
    its health checks: C{--metrics} is then on).
    """
    database = SharedMariaDBDatabase(owner, prefix="chatbench")
    redis = RedisServer(owner)
    members = [BenchNode(owner, root=root, db=database, redis=redis,
                         nodeId=f"bench{i + 1}", haproxy=haproxy,
                         metrics=metrics or haproxy)
               for i in range(nodes)]
    proxy = HAProxy(owner, members) if haproxy else None
    if proxy is not None:
        for name in proxy.servers:
            proxy.waitForStatus(name, "UP", timeout=20)
    label = f"{nodes} nodes, Redis, MariaDB" + (", HAProxy" if haproxy else "")
    return Deployment(owner, members, redis=redis, database=database,
                      haproxy=proxy, label=label)


def relay(owner: Owner, codec: str = "orjson") -> Deployment:
    return Deployment(owner, [RelayNode(owner, codec=codec)],
                      label=f"bare Twisted relay ({codec})")


def readRSS(pid: int) -> int:
    """VmRSS of C{pid}, in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")


def cpuSeconds(pid: int) -> Optional[float]:
    """User plus system CPU time of C{pid} (all its threads), in seconds; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
