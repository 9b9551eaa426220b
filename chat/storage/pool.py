"""
The database connection: which database a C{--db} URL names, how its SQL
differs, and how a unit of work is run on it.

This module owns the connection pool and the rules for failures: a
dropped MySQL connection is retried once (adbapi's reconnect does not
retry the query that found the connection dead), a transaction MySQL
chose as a deadlock victim is run again, and any other database failure
becomes L{Unavailable} (error 107).  It knows no table: the statements are
in L{chat.storage.store} and the schema in L{chat.storage.schema}.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import unquote, urlsplit

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.core.errors import ChatError, Unavailable

_log = Logger()

_T = TypeVar("_T")
Interaction = Callable[..., _T]
"""A function of a DB-API cursor (and arguments) run on a pool thread."""


@attrs.frozen
class SQLDialect:
    """
    What differs between the databases.

    @ivar now: an SQL expression for the database clock, in seconds since
        the epoch, so that every server compares leases by one clock.
    @ivar begin: the statement that opens an explicit transaction, or
        L{None} where the driver opens one implicitly.
    @ivar useIndex: how to name the index a query must use (C{{}} for its
        name): InnoDB, seeing few rows, may scan the whole table for a
        user's messages, and so lock, in a drain, the rows of others.
    """

    name: str
    schemaFile: str
    now: str
    insertIgnore: str
    begin: Optional[str]
    forUpdate: str
    useIndex: str
    integrityErrors: tuple[type[Exception], ...]
    databaseErrors: tuple[type[Exception], ...]
    placeholder: str = "?"

    def sql(self, statement: str) -> str:
        """C{statement}, written with C{?} placeholders, for this driver."""
        if self.placeholder == "?":
            return statement
        return statement.replace("?", self.placeholder)


SQLITE = SQLDialect(
    name="sqlite",
    schemaFile="sqlite.sql",
    now="((julianday('now') - 2440587.5) * 86400.0)",
    insertIgnore="INSERT OR IGNORE",
    begin=None,
    forUpdate="",
    useIndex=" INDEXED BY {}",
    integrityErrors=(sqlite3.IntegrityError,),
    databaseErrors=(sqlite3.Error,),
)


def _sqliteConnected(connection: sqlite3.Connection) -> None:
    """
    WAL lets readers proceed during a write; synchronous=NORMAL keeps WAL
    crash-safe for the database while sparing an fsync per commit.
    """
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")


def mysqlDialect() -> SQLDialect:
    import pymysql

    return SQLDialect(
        name="mysql",
        schemaFile="mysql.sql",
        now="UNIX_TIMESTAMP(NOW(6))",
        insertIgnore="INSERT IGNORE",
        begin="START TRANSACTION",
        forUpdate=" FOR UPDATE",
        useIndex=" FORCE INDEX ({})",
        integrityErrors=(pymysql.err.IntegrityError,),
        databaseErrors=(pymysql.err.Error,),
        placeholder="%s",
    )


_RECONNECT_CODES = {2006, 2013, 2014, 2055}
"""MySQL client errors that mean the connection died under the query."""
_RETRY_CODES = {1205, 1213}
"""MySQL's lock wait timeout and deadlock: the transaction may be retried."""
_PREPARE_ATTEMPTS = 5
_DEADLOCK = 1213
_LOCK_RETRIES = 3
"""How many times a transaction that lost a deadlock is run again."""


def errorCode(error: Optional[BaseException]) -> object:
    """The driver's error number of C{error}, if it has one."""
    args = getattr(error, "args", ())
    return args[0] if args else None


def _connectionDied(failure: Failure) -> bool:
    if failure.check(ConnectionLost):
        return True
    value = failure.value
    name = type(value).__name__
    code = errorCode(value)
    return name == "InterfaceError" or (
        name == "OperationalError" and (code is None or
                                        code in _RECONNECT_CODES))


def _ignore(seconds: float) -> None:
    pass


class BadDatabaseURL(ValueError):
    """The --db value cannot be understood."""


def sqlitePath(url: str) -> str:
    """The file a C{sqlite:PATH} URL names."""
    path = url[len("sqlite:"):]
    if not path:
        raise BadDatabaseURL("sqlite: needs a file name, as sqlite:PATH")
    return path


def mysqlParameters(url: str) -> dict[str, Any]:
    """
    pymysql's C{connect} arguments for a
    C{mysql://USER:PASSWORD@HOST:PORT/DBNAME} URL (the node's pool and
    C{chatctl} alike).
    """
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    if not parts.hostname or not database:
        raise BadDatabaseURL("expected mysql://USER:PASSWORD@HOST:PORT/DBNAME")
    try:
        port = parts.port or 3306
    except ValueError as e:
        raise BadDatabaseURL(f"bad port in {url!r}: {e}") from None
    from pymysql.constants import CLIENT

    return dict(host=parts.hostname, port=port,
                user=unquote(parts.username or "root"),
                password=unquote(parts.password or ""), database=database,
                charset="utf8mb4", autocommit=True,
                client_flag=CLIENT.FOUND_ROWS, connect_timeout=5)


def _sqlitePool(url: str) -> adbapi.ConnectionPool:
    path = sqlitePath(url)
    # One connection: SQLite serialises writers anyway, and a single
    # connection makes each interaction (the offline drain) atomic.
    return adbapi.ConnectionPool(
        "sqlite3", path, check_same_thread=False, cp_min=1, cp_max=1,
        cp_openfun=_sqliteConnected)


def _mysqlPool(url: str) -> adbapi.ConnectionPool:
    return adbapi.ConnectionPool(
        "pymysql", **mysqlParameters(url),
        # READ COMMITTED: a drain's locking read locks the rows it takes,
        # not the gaps around them, so that the stores other nodes make
        # for the same user meanwhile do not deadlock with it (under
        # REPEATABLE READ they did, many times a second in a flood).
        init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        read_timeout=15, write_timeout=15,
        cp_reconnect=True, cp_min=2, cp_max=8, cp_noisy=False)


def openDatabase(url: str) -> "Database":
    """
    The database a C{--db} URL names: C{sqlite:PATH} or
    C{mysql://USER:PASSWORD@HOST:PORT/DBNAME}.  Nothing is connected yet.

    @raise BadDatabaseURL: the URL names neither.
    """
    if url.startswith("sqlite:"):
        return Database(_sqlitePool(url), SQLITE)
    if url.startswith("mysql://"):
        return Database(_mysqlPool(url), mysqlDialect())
    raise BadDatabaseURL(
        f"unknown database URL {url!r}: use sqlite:PATH or "
        "mysql://USER:PASSWORD@HOST:PORT/DBNAME")


class Database:
    """
    A connection pool and its dialect; runs units of work in transactions
    on the pool's threads, with the retries the module docstring lists.

    @ivar dialect: the SQL differences of this database.
    """

    def __init__(self, pool: adbapi.ConnectionPool,
                 dialect: SQLDialect) -> None:
        self.pool = pool
        self.dialect = dialect
        self.observe: Callable[[float], None] = _ignore
        """Told how many seconds each unit of work took (the node's
        metrics), retries and the wait for a pool thread included."""

    def run(self, interaction: Interaction[_T], *args: Any) -> Deferred[_T]:
        """
        Run C{interaction(cursor, *args)} in a transaction on a pool
        thread.  Fails with L{Unavailable} when the database cannot be
        used, or with the driver's integrity error (see L{mapIntegrity}).
        """
        d: Deferred[_T] = self.pool.runInteraction(
            self._transaction, interaction, *args)

        def retry(failure: Failure) -> Any:
            if _connectionDied(failure):
                return self.pool.runInteraction(
                    self._transaction, interaction, *args)
            return failure

        d.addErrback(retry)
        for _ in range(_LOCK_RETRIES):
            d.addErrback(self._retryDeadlock, interaction, args)
        d.addErrback(self._unavailable)
        if self.observe is not _ignore:
            started = time.perf_counter()
            observe = self.observe

            def timed(result: Any) -> Any:
                observe(time.perf_counter() - started)
                return result

            d.addBoth(timed)
        return d

    def _retryDeadlock(self, failure: Failure, interaction: Interaction[Any],
                       args: tuple[Any, ...]) -> Any:
        """
        Run the transaction again when MySQL chose it as a deadlock victim:
        it was rolled back whole (adbapi rolls back on any error), and
        InnoDB expects the client to retry.  Deadlocks are ordinary under
        load (a drain's locking read against a concurrent store for the
        same user), not an unavailable database.  (A lock wait timeout,
        after 50 s, is not retried: that database is in trouble.)
        """
        if failure.check(*self.dialect.databaseErrors) and \
                errorCode(failure.value) == _DEADLOCK:
            _log.info("retrying {work} after: {error}",
                      work=getattr(interaction, "__qualname__", interaction),
                      error=failure.value)
            return self.pool.runInteraction(
                self._transaction, interaction, *args)
        return failure

    def _transaction(self, cursor: Any, interaction: Interaction[_T],
                     *args: Any) -> _T:
        if self.dialect.begin is not None:
            cursor.execute(self.dialect.begin)
        return interaction(cursor, *args)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(*self.dialect.databaseErrors, ConnectionLost,
                         adbapi.ConnectionLost) and \
                not failure.check(*self.dialect.integrityErrors):
            _log.warn("database unavailable: {error}", error=failure.value)
            raise Unavailable("database unavailable; nothing was changed, "
                              "retry") from None
        return failure

    def query(self, statement: str,
              *params: Any) -> Deferred[list[tuple[Any, ...]]]:
        """Fires with every row C{statement} selects."""
        def fetch(cursor: Any) -> list[tuple[Any, ...]]:
            cursor.execute(statement, params)
            return list(cursor.fetchall())

        return self.run(fetch)

    def execute(self, statement: str, *params: Any) -> Deferred[int]:
        """Fires with the number of rows the statement changed."""
        def execute(cursor: Any) -> int:
            cursor.execute(statement, params)
            return int(cursor.rowcount)

        return self.run(execute)

    def mapIntegrity(self, d: Deferred[_T], error: ChatError) -> Deferred[_T]:
        """
        C{d}, failing with C{error} instead of the driver's integrity error
        (a unique key or primary key that already holds the row).
        """
        def mapped(failure: Failure) -> Failure:
            failure.trap(*self.dialect.integrityErrors)
            raise error

        return d.addErrback(mapped)

    def runBlocking(self, interaction: Interaction[_T], *args: Any) -> _T:
        """
        Before the reactor runs, on the calling thread: run
        C{interaction(cursor, *args)} in one transaction on a connection
        of its own, and commit it.

        Nodes of a cluster starting together on a new database create the
        same tables at once; MySQL may pick one of them as a deadlock
        victim, and that one is run again.

        @raise Exception: the driver's error, when the database cannot be
            used.
        """
        for attempt in range(_PREPARE_ATTEMPTS):
            connection = self.pool.connect()
            try:
                result = self._transaction(connection.cursor(), interaction,
                                           *args)
                connection.commit()
                return result
            except Exception as e:
                if errorCode(e) not in _RETRY_CODES or \
                        attempt == _PREPARE_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
            finally:
                self.pool.disconnect(connection)
        raise AssertionError("unreachable: the last attempt raises")

    def close(self) -> None:
        """Close every connection of the pool."""
        self.pool.close()
