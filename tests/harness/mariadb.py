"""
Databases for the nodes' C{--db}: L{SharedMariaDBDatabase}, a database of
its own on the machine's MariaDB, and L{OwnMariaDB}, a private server that
tests may kill and restart.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from typing import Any
from unittest import TestCase

from .process import skipOrFail, _Process, freePort, requireProgram, safetyNet


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
            skipOrFail(testCase, "pymysql is not installed")
        try:
            connection = self.connect(database="")
        except pymysql.err.MySQLError as e:
            skipOrFail(testCase, f"no MariaDB at {self.host}:{self.port} as root: {e}")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
        finally:
            connection.close()
        safetyNet.add(self)
        testCase.addCleanup(self.cleanup)

    def emergencyCleanup(self) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        if self not in safetyNet:
            return
        safetyNet.discard(self)
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
