"""
Real processes for end-to-end tests (DESIGN.md 6): chat nodes, redis-server,
mariadbd, haproxy, each on a free port of 127.0.0.1 with its own temp dir,
and blocking line clients to talk to them as a user would.

Everything is synchronous, so trial tests call it from plain test methods:

    node = ChatNode(self)
    client = node.client()
    self.assertEqual(client.command("ping"), "PONG")

Each service starts in its constructor and registers its C{cleanup} with
C{testCase.addCleanup}, so cleanups run in reverse order of creation (HAProxy
before the nodes behind it, nodes before their database). A process left over
by a crashed test run is killed at interpreter exit and, on Linux, by the
kernel when the test process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar
from unittest import SkipTest, TestCase

ROOT = Path(__file__).resolve().parent.parent
"""The checkout root: the nodes run from here, so they use this code."""
HAPROXY_CFG = ROOT / "haproxy.cfg"
_LISTENING = re.compile(rb"listening on (\S+):(\d+)")
_T = TypeVar("_T")

_running: set["_Process"] = set()
_sharedDatabases: set["SharedMariaDBDatabase"] = set()


@atexit.register
def _cleanupAtExit() -> None:
    """Safety net for processes and databases whose test never cleaned up."""
    for process in list(_running):
        process.kill()
    for database in list(_sharedDatabases):
        database.cleanup()


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _dieWithParent() -> None:
    """
    In the child, before exec: ask the kernel for SIGKILL when our parent
    thread dies, so even a SIGKILLed test run leaves no servers behind.
    """
    _prctl(1, signal.SIGKILL)  # 1 == PR_SET_PDEATHSIG


def _missing(testCase: TestCase, reason: str) -> NoReturn:
    """Skip, or fail under CHAT_REQUIRE_SERVICES=1 (CI never passes by skipping)."""
    if os.environ.get("CHAT_REQUIRE_SERVICES") == "1":
        testCase.fail(f"{reason} (and CHAT_REQUIRE_SERVICES=1)")
    raise SkipTest(reason)


def requireProgram(testCase: TestCase, name: str) -> str:
    """
    Return the path of program C{name}, else skip (or fail, see L{_missing}).
    The sbin directories are searched too: mariadbd and haproxy live there and
    are often not on an ordinary user's PATH.
    """
    path = os.environ.get("PATH", os.defpath) + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        _missing(testCase, f"{name} is not installed (needed by this test)")
    return found


def _ephemeralRange() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def freePort() -> int:
    """
    A port of 127.0.0.1 that nobody listens on right now, chosen at random
    below the kernel's ephemeral range. Why not bind to port 0: that port
    comes from the ephemeral range, and a service we kill and restart on
    the same port (Redis, MariaDB) could meanwhile see it taken as the
    source port of some outgoing connection, even of a connection to itself
    (TCP self-connect, when a node reconnects to the dead port).
    """
    low = _ephemeralRange()[0]
    if low > 20000 + 1000:
        for _ in range(100):
            port = 20000 + secrets.randbelow(low - 20000)
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _workDirectory(testCase: TestCase, name: str) -> tuple[Path, bool]:
    """
    A directory for one service's files and log. Under trial it is inside
    _trial_temp (kept after the run for post-mortems, wiped by the next one);
    returns whether we must remove it ourselves.
    """
    mktemp = getattr(testCase, "mktemp", None)
    if mktemp is None:
        return Path(tempfile.mkdtemp(prefix=f"chat-{name}-")), True
    path = Path(os.path.abspath(mktemp())) / name
    path.mkdir(parents=True)
    return path, False


class _Process:
    """
    One child process, output and errors in C{self.logPath}. Unix sockets
    go into a short /tmp directory: paths under _trial_temp can exceed the
    108-byte limit of a socket address.
    """

    name = "process"
    stopTimeout = 10.0

    def __init__(self, testCase: TestCase) -> None:
        self.testCase = testCase
        self.process: subprocess.Popen[bytes] | None = None
        self.directory, self._removeDirectory = _workDirectory(testCase, self.name)
        self.socketDirectory = Path(tempfile.mkdtemp(prefix="chat-sock-"))
        self.logPath = self.directory / f"{self.name}.log"
        testCase.addCleanup(self.cleanup)

    def _spawn(self, argv: Sequence[str], **kwargs: Any) -> int:
        """Start C{argv}; return the log offset where this run's output begins."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with open(self.logPath, "ab") as log:
            offset = log.tell()
            log.write(f"=== {' '.join(argv)}\n".encode())
            log.flush()
            deathSignal = _prctl is not None and threading.current_thread() is threading.main_thread()
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_dieWithParent if deathSignal else None, **kwargs,
            )
        _running.add(self)
        return offset

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log(self, offset: int = 0) -> str:
        """The process's output so far (all runs, or from C{offset})."""
        with open(self.logPath, "rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def _fail(self, message: str) -> NoReturn:
        self.testCase.fail(f"{self.name}: {message}\n--- log tail ({self.logPath}):\n{self._tail()}")

    def _waitFor(self, check: Callable[[], _T | None], timeout: float, what: str) -> _T:
        """Poll C{check} until it returns something true; fail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if not self.running:
                self._fail(f"exited with status {self.process.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                self.kill()
                self._fail(f"no {what} within {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """
        Ask politely (SIGTERM), wait, then SIGKILL. Returns the exit status;
        twistd re-raises the signal after a clean shutdown, so C{-15} is its
        normal status here.
        """
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(self.stopTimeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _running.discard(self)
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests (no shutdown code runs)."""
        if self.running:
            self.process.kill()
            self.process.wait()
        _running.discard(self)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.socketDirectory, ignore_errors=True)
        if self._removeDirectory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _url(value: Any) -> str | None:
    """Accept a URL string or anything with a C{url} (RedisServer, databases)."""
    return getattr(value, "url", value)


def _canConnect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


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

    def client(self, timeout: float = 5.0, proxyHeader: bytes | None = None) -> "LineClient":
        """A connected L{LineClient}, closed at cleanup. On a C{haproxy=True} node
        it sends a PROXY v2 header first (a default one unless given)."""
        if self.haproxy and proxyHeader is None:
            proxyHeader = proxyV2Header(("127.0.0.1", 40000), self.address)
        client = LineClient(self.host, self.port, timeout, proxyHeader=proxyHeader)
        self.testCase.addCleanup(client.close)
        return client


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


class _MySQLAccess:
    """Shared helpers: a pymysql connection to C{self.database} for assertions."""

    host = "127.0.0.1"
    port = 3306
    database = ""

    @property
    def url(self) -> str:
        return f"mysql://root:@{self.host}:{self.port}/{self.database}"

    def connect(self, database: str | None = None) -> Any:
        import pymysql
        return pymysql.connect(host=self.host, port=self.port, user="root", password="",
                               database=self.database if database is None else database,
                               charset="utf8mb4", autocommit=True, connect_timeout=3)

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh connection; return all rows."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            connection.close()


class SharedMariaDBDatabase(_MySQLAccess):
    """
    A uniquely named database on the machine's MariaDB (127.0.0.1:3306, root
    without password), dropped at cleanup. Only ever creates and drops its
    own database there: the server itself is shared, never restarted.
    """

    def __init__(self, testCase: TestCase, prefix: str = "chattest") -> None:
        self.database = f"{prefix}_{secrets.token_hex(6)}"
        try:
            import pymysql
        except ImportError:
            _missing(testCase, "pymysql is not installed")
        try:
            connection = self.connect(database="")
        except pymysql.err.MySQLError as e:
            _missing(testCase, f"no MariaDB at {self.host}:{self.port} as root: {e}")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
        finally:
            connection.close()
        _sharedDatabases.add(self)
        testCase.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        if self not in _sharedDatabases:
            return
        _sharedDatabases.discard(self)
        connection = self.connect(database="")
        try:
            with connection.cursor() as cursor:
                # Never hang the run on a metadata lock some leftover
                # connection holds: fail the cleanup instead.
                cursor.execute("SET SESSION lock_wait_timeout = 10")
                cursor.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        finally:
            connection.close()


class OwnMariaDB(_MySQLAccess, _Process):
    """
    A private mariadbd with its own data directory, for tests that stop,
    kill and restart the database. C{url} names database C{chat} in it.

    Options: C{--no-defaults} must come first (else /etc/mysql and ~/.my.cnf
    are read); C{--user=root} is required when running as root; the
    install's C{--auth-root-authentication-method=normal} gives root an
    empty password usable over TCP, so no C{--skip-grant-tables}; small
    InnoDB sizes keep it at about 20 MB and half a second to install.
    C{innodb_flush_log_at_trx_commit=2} still writes the log at each commit,
    so a SIGKILL of mariadbd loses nothing (only an OS crash would).
    """

    name = "mariadb"
    stopTimeout = 30.0
    _sizing = ["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"]

    def __init__(self, testCase: TestCase, database: str = "chat") -> None:
        _Process.__init__(self, testCase)
        self.mariadbd = requireProgram(testCase, "mariadbd")
        installDB = requireProgram(testCase, "mariadb-install-db")
        self.port = freePort()
        self.database = database
        self.dataDirectory = self.directory / "data"
        self.socketPath = self.socketDirectory / "mariadb.sock"
        user = ["--user=root"] if os.geteuid() == 0 else []
        with open(self.logPath, "ab") as log:
            result = subprocess.run(
                [installDB, "--no-defaults", "--auth-root-authentication-method=normal",
                 "--skip-test-db", f"--datadir={self.dataDirectory}", *user, *self._sizing],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120)
        if result.returncode != 0:
            self._fail(f"mariadb-install-db exited with status {result.returncode}")
        self.start()
        connection = self.connect(database="")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
        finally:
            connection.close()

    def start(self) -> None:
        """Start (or restart after stop/kill, with crash recovery) on the same port."""
        user = ["--user=root"] if os.geteuid() == 0 else []
        self._spawn([self.mariadbd, "--no-defaults", f"--datadir={self.dataDirectory}",
                     f"--socket={self.socketPath}", f"--port={self.port}",
                     "--bind-address=127.0.0.1", *user, "--skip-name-resolve",
                     f"--pid-file={self.directory / 'mariadbd.pid'}",
                     f"--tmpdir={self.directory}",
                     # the machine's server has these (Debian's config):
                     "--character-set-server=utf8mb4",
                     "--collation-server=utf8mb4_general_ci",
                     "--innodb-flush-log-at-trx-commit=2", *self._sizing])
        self._waitFor(self._accepting, 60, "login as root")

    def _accepting(self) -> bool:
        try:
            self.connect(database="").close()
            return True
        except Exception:
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
        servers = [(f"node{i}", *_address(node)) for i, node in enumerate(nodes, 1)]
        self.servers = [name for name, _, _ in servers]
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
                        servers: Sequence[tuple[str, str, int]], statsSocket: Path,
                        checkInterval: str | None = None,
                        maxconn: int | None = None) -> str:
    """
    The reference config with the test's port, servers and stats socket. The
    first C{server} line's options (send-proxy-v2 check ...) apply to all.
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
            out.extend(f"{indent}server {name} {host}:{p} " + " ".join(words[3:])
                       for name, host, p in servers)
            continue
        elif keyword == "default-server" and checkInterval:
            line = re.sub(r"\binter\s+\S+", f"inter {checkInterval}", line)
        elif keyword == "maxconn" and maxconn:
            line = f"{indent}maxconn {maxconn}"
        out.append(line)
    return "\n".join(out) + "\n"


def proxyV2Header(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """
    A PROXY protocol v2 header, as HAProxy's send-proxy-v2 writes it, to
    talk to a C{haproxy:} node directly. C{source=None} gives the LOCAL
    header that HAProxy's health checks send.
    """
    prefix = b"\r\n\r\n\x00\r\nQUIT\n"
    if source is None:
        return prefix + b"\x20\x00\x00\x00"
    destination = destination or ("127.0.0.1", 8000)
    body = (socket.inet_aton(source[0]) + socket.inet_aton(destination[0])
            + struct.pack("!HH", source[1], destination[1]))
    return prefix + b"\x21\x11" + struct.pack("!H", len(body)) + body


class LineClient:
    """
    A blocking client for both dialects. Bytes read past a line stay in an
    internal buffer for the next read. Read errors are AssertionErrors so a
    missing reply is a test failure, not an error.
    """

    def __init__(self, host: str, port: int, timeout: float = 5.0,
                 proxyHeader: bytes | None = None) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = bytearray()
        self.closed = False
        """True once the server closed the connection (EOF or reset)."""
        if proxyHeader:
            self.send(proxyHeader)

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def sendLine(self, text: str) -> None:
        self.send(text.encode("utf-8") + b"\r\n")

    def sendJSON(self, obj: Any, classic: bool = False) -> None:
        """Compact UTF-8 JSON like the classic client, ending in NUL when C{classic}."""
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send(data + (b"\0" if classic else b"\n"))

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if data:
            self._buffer += data
        else:
            self.closed = True

    def readLine(self, timeout: float | None = None) -> bytes:
        """The next server line, without its \\n or \\r\\n."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (end := self._buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if self.closed or remaining <= 0:
                why = "connection closed" if self.closed else "timed out"
                raise AssertionError(f"no line from server ({why}); "
                                     f"partial data: {bytes(self._buffer)!r}")
            self._receive(remaining)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def readText(self, timeout: float | None = None) -> str:
        return self.readLine(timeout).decode("utf-8")

    def readJSON(self, timeout: float | None = None) -> Any:
        line = self.readLine(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise AssertionError(f"server line is not JSON: {line!r}") from None

    def command(self, text: str, timeout: float | None = None) -> str:
        """Send a text-dialect line, return the next line (mind pushed events)."""
        self.sendLine(text)
        return self.readText(timeout)

    def request(self, obj: Any, classic: bool = False, timeout: float | None = None) -> Any:
        """Send a JSON request, return the next JSON line (mind pushed events)."""
        self.sendJSON(obj, classic)
        return self.readJSON(timeout)

    def readList(self, timeout: float | None = None) -> tuple[str, list[str]]:
        """A text list reply: C{OK <n> ...} then n lines. Returns (header, lines)."""
        header = self.readText(timeout)
        words = header.split()
        if len(words) < 2 or words[0] != "OK" or not words[1].isdigit():
            raise AssertionError(f"not a list reply: {header!r}")
        return header, [self.readText(timeout) for _ in range(int(words[1]))]

    def expectNothing(self, seconds: float = 0.5) -> None:
        """Assert that the server sends nothing (and does not close) for C{seconds}."""
        deadline = time.monotonic() + seconds
        while not self._buffer and not self.closed and time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())
        if self._buffer:
            raise AssertionError(f"unexpected data from server: {bytes(self._buffer)!r}")
        if self.closed:
            raise AssertionError("server closed the connection")

    def readUntilClosed(self, timeout: float | None = None) -> bytes:
        """Everything until the server closes the connection (fails on timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"server did not close; got {bytes(self._buffer)!r}")
            self._receive(remaining)
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def close(self) -> None:
        self.sock.close()
