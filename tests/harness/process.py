"""
The common part: finding programs, free ports, and L{_Process}, one child
process with a log file, a temp dir and a guaranteed end.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TypeVar
from unittest import SkipTest, TestCase

ROOT = Path(__file__).resolve().parent.parent.parent
"""The checkout root: the nodes run from here, so they use this code."""
_T = TypeVar("_T")

safetyNet: set[Any] = set()
"""Things to undo at interpreter exit if no cleanup did: each has C{emergencyCleanup()}."""


@atexit.register
def _cleanupAtExit() -> None:
    """Safety net for processes and databases whose test never cleaned up."""
    for thing in list(safetyNet):
        thing.emergencyCleanup()


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


def skipOrFail(testCase: TestCase, reason: str) -> NoReturn:
    """Skip, or fail under CHAT_REQUIRE_SERVICES=1 (CI never passes by skipping)."""
    if os.environ.get("CHAT_REQUIRE_SERVICES") == "1":
        testCase.fail(f"{reason} (and CHAT_REQUIRE_SERVICES=1)")
    raise SkipTest(reason)


def requireProgram(testCase: TestCase, name: str) -> str:
    """
    Return the path of program C{name}, else skip (or fail, see L{skipOrFail}).
    The sbin directories are searched too: mariadbd and haproxy live there and
    are often not on an ordinary user's PATH.
    """
    path = os.environ.get("PATH", os.defpath) + ":/usr/local/sbin:/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        skipOrFail(testCase, f"{name} is not installed (needed by this test)")
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
        safetyNet.add(self)
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
        safetyNet.discard(self)
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests (no shutdown code runs)."""
        if self.running:
            self.process.kill()
            self.process.wait()
        safetyNet.discard(self)

    def emergencyCleanup(self) -> None:
        self.kill()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.socketDirectory, ignore_errors=True)
        if self._removeDirectory:
            shutil.rmtree(self.directory, ignore_errors=True)
