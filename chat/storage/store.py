"""
All SQL: accounts, friends, groups, offline messages, sessions and node
leases, over L{twisted.enterprise.adbapi}.

One class serves SQLite (the embedded default) and MySQL/MariaDB; an
L{SQLDialect} carries the few places where they differ.  Every statement is
parameterised.  Database failures become L{Unavailable} (error 107); a
dropped MySQL connection is retried once, since adbapi's reconnect does
not retry the query that found the connection dead.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Optional, Sequence
from urllib.parse import unquote, urlsplit

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.core.errors import Conflict, NameTaken, Unavailable
from chat.core.messages import Friend, Group, Member

_log = Logger()

SCHEMA_DIR = __file__.rsplit("/", 2)[0] + "/schema"


@attrs.frozen
class UserRow:
    id: int
    name: str
    passwordHash: str


@attrs.frozen
class SQLDialect:
    """
    What differs between the databases.

    @ivar now: an SQL expression for the database clock, in seconds since
        the epoch, so that every server compares leases by one clock.
    @ivar begin: the statement that opens an explicit transaction, or
        L{None} where the driver opens one implicitly.
    """

    name: str
    schemaFile: str
    now: str
    insertIgnore: str
    begin: Optional[str]
    forUpdate: str
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


def _mysqlDialect() -> SQLDialect:
    import pymysql

    return SQLDialect(
        name="mysql",
        schemaFile="mysql.sql",
        now="UNIX_TIMESTAMP(NOW(6))",
        insertIgnore="INSERT IGNORE",
        begin="START TRANSACTION",
        forUpdate=" FOR UPDATE",
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


def _errorCode(error: Exception) -> object:
    args = getattr(error, "args", ())
    return args[0] if args else None


def _connectionDied(failure: Failure) -> bool:
    if failure.check(ConnectionLost):
        return True
    value = failure.value
    args = getattr(value, "args", ())
    return type(value).__name__ in ("OperationalError", "InterfaceError") and (
        not args or args[0] in _RECONNECT_CODES or
        type(value).__name__ == "InterfaceError")


class BadDatabaseURL(ValueError):
    """The --db value cannot be understood."""


def openPool(url: str) -> tuple[adbapi.ConnectionPool, SQLDialect]:
    """
    A connection pool and its dialect for a C{--db} URL:
    C{sqlite:PATH} or C{mysql://USER:PASSWORD@HOST:PORT/DBNAME}.
    """
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if not path:
            raise BadDatabaseURL("sqlite: needs a file name, as sqlite:PATH")
        # One connection: SQLite serialises writers anyway, and a single
        # connection makes each interaction (the offline drain) atomic.
        pool = adbapi.ConnectionPool(
            "sqlite3", path, check_same_thread=False, cp_min=1, cp_max=1,
            cp_openfun=_sqliteConnected)
        return pool, SQLITE
    if url.startswith("mysql://"):
        parts = urlsplit(url)
        database = parts.path.lstrip("/")
        if not parts.hostname or not database:
            raise BadDatabaseURL(
                "expected mysql://USER:PASSWORD@HOST:PORT/DBNAME")
        try:
            port = parts.port or 3306
        except ValueError as e:
            raise BadDatabaseURL(f"bad port in {url!r}: {e}") from None
        from pymysql.constants import CLIENT

        pool = adbapi.ConnectionPool(
            "pymysql", host=parts.hostname, port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""), database=database,
            charset="utf8mb4", autocommit=True,
            client_flag=CLIENT.FOUND_ROWS,
            connect_timeout=5, read_timeout=15, write_timeout=15,
            cp_reconnect=True, cp_min=2, cp_max=8, cp_noisy=False)
        return pool, _mysqlDialect()
    raise BadDatabaseURL(
        f"unknown database URL {url!r}: use sqlite:PATH or "
        "mysql://USER:PASSWORD@HOST:PORT/DBNAME")


class Store:
    """
    The chat's tables.  Every method returns a L{Deferred}.
    """

    def __init__(self, pool: adbapi.ConnectionPool,
                 dialect: SQLDialect) -> None:
        self._pool = pool
        self._dialect = dialect
        q = dialect.sql
        now = dialect.now
        self._sql = {
            "userById": q("SELECT id, name, password FROM users WHERE id = ?"),
            "userByName": q(
                "SELECT id, name, password FROM users WHERE name = ?"),
            "createUser": q("INSERT INTO users (name, password) VALUES (?, ?)"),
            "userState": q(
                "SELECT u.name, s.node_id FROM users u LEFT JOIN sessions s"
                " ON s.user_id = u.id WHERE u.id = ?"),
            "addFriend": q(
                "INSERT INTO friends (user_id, friend_id) VALUES (?, ?)"),
            "friendsOf": q(
                "SELECT u.id, u.name, s.node_id FROM friends f"
                " JOIN users u ON u.id = f.friend_id"
                " LEFT JOIN sessions s ON s.user_id = u.id"
                " WHERE f.user_id = ? ORDER BY u.id"),
            "createGroup": q(
                "INSERT INTO chat_groups (name, description, creator_id)"
                " VALUES (?, ?, ?)"),
            "addMember": q(
                "INSERT INTO group_members (group_id, user_id, role)"
                " VALUES (?, ?, ?)"),
            "groupExists": q("SELECT 1 FROM chat_groups WHERE id = ?"),
            "groupMembers": q(
                "SELECT m.user_id, s.node_id FROM group_members m"
                " LEFT JOIN sessions s ON s.user_id = m.user_id"
                " WHERE m.group_id = ?"),
            "groupsOf": q(
                "SELECT g.id, g.name, g.description FROM group_members m"
                " JOIN chat_groups g ON g.id = m.group_id"
                " WHERE m.user_id = ? ORDER BY g.id"),
            "membersOfGroupsOf": q(
                "SELECT m.group_id, u.id, u.name, m.role, s.node_id"
                " FROM group_members mine"
                " JOIN group_members m ON m.group_id = mine.group_id"
                " JOIN users u ON u.id = m.user_id"
                " LEFT JOIN sessions s ON s.user_id = u.id"
                " WHERE mine.user_id = ? ORDER BY m.group_id, u.id"),
            "storeOffline": q(
                "INSERT INTO offline_messages (user_id, payload) VALUES (?, ?)"),
            "pendingOffline": q(
                "SELECT id, payload FROM offline_messages WHERE user_id = ?"
                " ORDER BY id" + dialect.forUpdate),
            "deleteOffline": q(
                "DELETE FROM offline_messages WHERE user_id = ? AND id <= ?"),
            "insertSession": q(
                f"{dialect.insertIgnore} INTO sessions (user_id, node_id, since)"
                f" VALUES (?, ?, {now})"),
            "takeOverSession": q(
                f"UPDATE sessions SET node_id = ?, since = {now}"
                " WHERE user_id = ? AND (node_id = ? OR NOT EXISTS ("
                " SELECT 1 FROM nodes n WHERE n.node_id = sessions.node_id"
                f" AND n.last_seen >= {now} - ?))"),
            "releaseSession": q(
                "DELETE FROM sessions WHERE user_id = ? AND node_id = ?"),
            "sessionsOn": q("SELECT user_id FROM sessions WHERE node_id = ?"),
            "countSessionsOn": q(
                "SELECT COUNT(*) FROM sessions WHERE node_id = ?"),
            "clearSessionsOn": q("DELETE FROM sessions WHERE node_id = ?"),
            "forgetNode": q("DELETE FROM nodes WHERE node_id = ?"),
            "addNode": q(
                f"INSERT INTO nodes (node_id, last_seen) VALUES (?, {now})"),
            "renewNode": q(
                f"UPDATE nodes SET last_seen = {now} WHERE node_id = ?"),
            "purgeDeadSessions": q(
                "DELETE FROM sessions WHERE node_id NOT IN ("
                f" SELECT node_id FROM nodes WHERE last_seen >= {now} - ?)"),
        }

    # Running statements -------------------------------------------------

    def _run(self, interaction: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run C{interaction(cursor, *args)} in a transaction on a pool
        thread, retrying once when the connection died under it, and turn
        database failures into L{Unavailable}.
        """
        d = self._pool.runInteraction(self._transaction, interaction, *args)

        def retry(failure: Failure) -> Any:
            if _connectionDied(failure):
                return self._pool.runInteraction(
                    self._transaction, interaction, *args)
            return failure

        d.addErrback(retry)
        for _ in range(_LOCK_RETRIES):
            d.addErrback(self._retryDeadlock, interaction, args)
        d.addErrback(self._unavailable)
        return d

    def _retryDeadlock(self, failure: Failure,
                       interaction: Callable[..., Any],
                       args: tuple[Any, ...]) -> Any:
        """
        Run the transaction again when MySQL chose it as a deadlock victim:
        it was rolled back whole (adbapi rolls back on any error), and
        InnoDB expects the client to retry.  Deadlocks are ordinary under
        load (a drain's locking read against a concurrent store for the
        same user), not an unavailable database.  (A lock wait timeout,
        after 50 s, is not retried: that database is in trouble.)
        """
        if failure.check(*self._dialect.databaseErrors) and \
                _errorCode(failure.value) == _DEADLOCK:
            _log.info("retrying a transaction after: {error}",
                      error=failure.value)
            return self._pool.runInteraction(
                self._transaction, interaction, *args)
        return failure

    def _transaction(self, cursor: Any, interaction: Callable[..., Any],
                     *args: Any) -> Any:
        if self._dialect.begin is not None:
            cursor.execute(self._dialect.begin)
        return interaction(cursor, *args)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(*self._dialect.databaseErrors, ConnectionLost,
                         adbapi.ConnectionLost):
            if failure.check(*self._dialect.integrityErrors):
                return failure
            _log.warn("database unavailable: {error}", error=failure.value)
            raise Unavailable("database unavailable; nothing was changed, "
                              "retry") from None
        return failure

    def _query(self, name: str, *params: Any) -> Deferred:
        statement = self._sql[name]

        def fetch(cursor: Any) -> list[tuple[Any, ...]]:
            cursor.execute(statement, params)
            return cursor.fetchall()

        return self._run(fetch)

    def _execute(self, name: str, *params: Any) -> Deferred:
        """Fires with the number of rows the statement changed."""
        statement = self._sql[name]

        def execute(cursor: Any) -> int:
            cursor.execute(statement, params)
            return cursor.rowcount

        return self._run(execute)

    def _insert(self, name: str, *params: Any) -> Deferred:
        """Fires with the id of the new row."""
        statement = self._sql[name]

        def insert(cursor: Any) -> int:
            cursor.execute(statement, params)
            return cursor.lastrowid

        return self._run(insert)

    def _mapIntegrity(self, d: Deferred, error: Exception) -> Deferred:
        def mapped(failure: Failure) -> Failure:
            failure.trap(*self._dialect.integrityErrors)
            raise error

        return d.addErrback(mapped)

    # Start ---------------------------------------------------------------

    def prepare(self, nodeId: str) -> None:
        """
        Before the reactor runs, on the calling thread: check that the
        database answers, create the tables that are missing, and register
        this node (L{startNode}), so that nothing is served until all
        that is done and a bad database is reported at once.

        @raise Exception: the driver's error, when the database cannot be
            used.
        """
        with open(f"{SCHEMA_DIR}/{self._dialect.schemaFile}",
                  encoding="utf-8") as f:
            script = f.read()
        statements = [
            s.strip() for s in _stripComments(script).split(";") if s.strip()]
        for attempt in range(_PREPARE_ATTEMPTS):
            connection = self._pool.connect()
            try:
                cursor = connection.cursor()
                for statement in statements:
                    cursor.execute(statement)
                self._transaction(cursor, self._startNode, nodeId)
                connection.commit()
                return
            except Exception as e:
                # Nodes of a cluster starting together on a new database
                # create the same tables at once; MySQL may pick one of
                # them as a deadlock victim.  Try that one again.
                if _errorCode(e) not in _RETRY_CODES or \
                        attempt == _PREPARE_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
            finally:
                self._pool.disconnect(connection)

    # Accounts -----------------------------------------------------------

    def userById(self, userId: int) -> Deferred:
        """Fires with a L{UserRow} or L{None}."""
        return self._query("userById", userId).addCallback(_firstUser)

    def userByName(self, name: str) -> Deferred:
        return self._query("userByName", name).addCallback(_firstUser)

    def createUser(self, name: str, passwordHash: str) -> Deferred:
        """Fires with the new id; fails with L{NameTaken}."""
        return self._mapIntegrity(
            self._insert("createUser", name, passwordHash),
            NameTaken(f"the name {name} is taken"))

    def userState(self, userId: int) -> Deferred:
        """
        Fires with C{(name, online)} for an existing user, else L{None}.
        """
        return self._query("userState", userId).addCallback(
            lambda rows: (rows[0][0], rows[0][1] is not None) if rows else None)

    # Friends ------------------------------------------------------------

    def addFriend(self, userId: int, friendId: int) -> Deferred:
        return self._mapIntegrity(
            self._execute("addFriend", userId, friendId),
            Conflict(f"{friendId} is already your friend"))

    def friendsOf(self, userId: int) -> Deferred:
        """Fires with a tuple of L{Friend}, by id."""
        return self._query("friendsOf", userId).addCallback(
            lambda rows: tuple(Friend(r[0], r[1], r[2] is not None)
                               for r in rows))

    # Groups -------------------------------------------------------------

    def createGroup(self, creatorId: int, name: str,
                    description: str) -> Deferred:
        """Fires with the new group's id; fails with L{NameTaken}."""
        create, add = self._sql["createGroup"], self._sql["addMember"]

        def interaction(cursor: Any) -> int:
            cursor.execute(create, (name, description, creatorId))
            groupId = cursor.lastrowid
            cursor.execute(add, (groupId, creatorId, "creator"))
            return groupId

        return self._mapIntegrity(
            self._run(interaction),
            NameTaken(f"a group named {name} exists"))

    def groupExists(self, groupId: int) -> Deferred:
        return self._query("groupExists", groupId).addCallback(bool)

    def joinGroup(self, groupId: int, userId: int) -> Deferred:
        return self._mapIntegrity(
            self._execute("addMember", groupId, userId, "normal"),
            Conflict(f"you are already a member of group {groupId}"))

    def groupMembers(self, groupId: int) -> Deferred:
        """
        Fires with C{[(userId, online)]} for every member; empty when there
        is no such group (a group always has its creator).
        """
        return self._query("groupMembers", groupId).addCallback(
            lambda rows: [(r[0], r[1] is not None) for r in rows])

    def groupsOf(self, userId: int) -> Deferred:
        """Fires with a tuple of L{Group}, with members, by id."""
        groupsSQL = self._sql["groupsOf"]
        membersSQL = self._sql["membersOfGroupsOf"]

        def interaction(cursor: Any) -> tuple[Group, ...]:
            cursor.execute(groupsSQL, (userId,))
            groups = cursor.fetchall()
            cursor.execute(membersSQL, (userId,))
            members: dict[int, list[Member]] = {}
            for groupId, memberId, name, role, node in cursor.fetchall():
                members.setdefault(groupId, []).append(
                    Member(memberId, name, node is not None, role))
            return tuple(Group(g[0], g[1], g[2], tuple(members.get(g[0], ())))
                         for g in groups)

        return self._run(interaction)

    # Offline messages ---------------------------------------------------

    def storeOffline(self, messages: Sequence[tuple[int, bytes]]) -> Deferred:
        """
        Keep C{(userId, payload)} messages for their recipients' next
        login, in one statement.
        """
        statement = self._sql["storeOffline"]
        rows = [(userId, payload.decode("utf-8"))
                for userId, payload in messages]

        def interaction(cursor: Any) -> None:
            cursor.executemany(statement, rows)

        return self._run(interaction)

    def drainOffline(self, userId: int) -> Deferred:
        """
        Take a user's offline messages, oldest first: read and delete in one
        transaction (rows locked on MySQL), so two concurrent drains never
        hand out the same message.  Fires with a list of payload bytes.
        """
        select, delete = self._sql["pendingOffline"], self._sql["deleteOffline"]

        def interaction(cursor: Any) -> list[bytes]:
            cursor.execute(select, (userId,))
            rows = cursor.fetchall()
            if rows:
                cursor.execute(delete, (userId, rows[-1][0]))
            return [payload.encode("utf-8") for _, payload in rows]

        return self._run(interaction)

    # Sessions and leases -----------------------------------------------

    def claimSession(self, userId: int, nodeId: str,
                     leaseSeconds: float) -> Deferred:
        """
        Make C{nodeId} the holder of C{userId}'s session, atomically: a new
        row, or a takeover of a row whose node's lease has expired (or that
        this node itself left behind).  Fires with whether it worked.
        """
        insert = self._sql["insertSession"]
        takeOver = self._sql["takeOverSession"]

        def interaction(cursor: Any) -> bool:
            cursor.execute(insert, (userId, nodeId))
            if cursor.rowcount == 1:
                return True
            cursor.execute(takeOver, (nodeId, userId, nodeId, leaseSeconds))
            return cursor.rowcount == 1

        return self._run(interaction)

    def releaseSession(self, userId: int, nodeId: str) -> Deferred:
        return self._execute("releaseSession", userId, nodeId)

    def _startNode(self, cursor: Any, nodeId: str) -> None:
        """
        Register a starting node: forget whatever sessions an earlier run
        under the same id left behind, and take a fresh lease.
        """
        cursor.execute(self._sql["clearSessionsOn"], (nodeId,))
        cursor.execute(self._sql["forgetNode"], (nodeId,))
        cursor.execute(self._sql["addNode"], (nodeId,))

    def renewLease(self, nodeId: str, purgeAfter: Optional[float]) -> Deferred:
        """
        Renew this node's lease and fire with the number of sessions the
        database says this node holds.  With C{purgeAfter}, also end the
        sessions of nodes silent for that many seconds.
        """
        sql = self._sql

        def interaction(cursor: Any) -> int:
            cursor.execute(sql["renewNode"], (nodeId,))
            if cursor.rowcount == 0:
                cursor.execute(sql["addNode"], (nodeId,))
            if purgeAfter is not None:
                cursor.execute(sql["purgeDeadSessions"], (purgeAfter,))
            cursor.execute(sql["countSessionsOn"], (nodeId,))
            return cursor.fetchone()[0]

        return self._run(interaction)

    def sessionsOn(self, nodeId: str) -> Deferred:
        """Fires with the set of user ids whose sessions C{nodeId} holds."""
        return self._query("sessionsOn", nodeId).addCallback(
            lambda rows: {row[0] for row in rows})

    def stopNode(self, nodeId: str) -> Deferred:
        """A node shutting down cleanly: its sessions and lease go."""
        sql = self._sql

        def interaction(cursor: Any) -> None:
            cursor.execute(sql["clearSessionsOn"], (nodeId,))
            cursor.execute(sql["forgetNode"], (nodeId,))

        return self._run(interaction)


def _firstUser(rows: list[tuple[Any, ...]]) -> Optional[UserRow]:
    return UserRow(*rows[0]) if rows else None


def _stripComments(script: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in script.splitlines())
