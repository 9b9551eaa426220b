"""
The tables: created when missing, and brought up to date when a database
made by an earlier version lacks something.

The schema itself is the top-level C{schema/} directory (C{sqlite.sql},
C{mysql.sql}), read as package data; each of its statements is idempotent.
A migration here changes an existing database in place and keeps every
row.  This module runs only before the reactor starts, on the calling
thread; it never runs a query of the chat itself.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable

from twisted.logger import Logger

from chat.core.names import nameSkeleton
from chat.storage.pool import SQLDialect, errorCode

_log = Logger()

_DUPLICATE_COLUMN = 1060
"""MySQL: another node starting at the same moment added the column."""
_DUPLICATE_INDEX = 1061
"""MySQL: ... or the index."""


def _schemaStatements(dialect: SQLDialect) -> list[str]:
    script = resources.files("chat").joinpath(
        "schema", dialect.schemaFile).read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def _hasColumn(cursor: Any, dialect: SQLDialect, table: str,
               column: str) -> bool:
    if dialect.name == "sqlite":
        cursor.execute(f"PRAGMA table_info({table})")
        return any(row[1] == column for row in cursor.fetchall())
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = %s"
        " AND column_name = %s", (table, column))
    return bool(cursor.fetchone()[0])


def _addColumn(cursor: Any, dialect: SQLDialect, table: str, column: str,
               definition: dict[str, str]) -> bool:
    """
    Add C{column} to C{table} unless it is there; whether this call added
    it.  C{definition} gives its type by dialect name.
    """
    if _hasColumn(cursor, dialect, table, column):
        return False
    try:
        cursor.execute(f"ALTER TABLE {table} ADD COLUMN {column} "
                       f"{definition[dialect.name]}")
    except dialect.databaseErrors as e:
        if errorCode(e) == _DUPLICATE_COLUMN:
            return False
        raise
    return True


def _offlineMessageIds(cursor: Any, dialect: SQLDialect) -> None:
    """
    Message ids in their own column.  Before, a copy stored because its
    delivery was uncertain kept the Redis bus's framing in its payload
    (C{#<id> <event JSON>}); those rows are split into id and event.
    """
    if not _addColumn(cursor, dialect, "offline_messages", "msg_id", {
            "sqlite": "TEXT",
            "mysql": "VARCHAR(40) CHARACTER SET ascii NULL"}):
        return
    q = dialect.sql
    cursor.execute(q("SELECT id, payload FROM offline_messages"
                     " WHERE payload LIKE ?"), ("#%",))
    framed = cursor.fetchall()
    for rowId, payload in framed:
        messageId, event = payload[1:].split(" ", 1)
        cursor.execute(q("UPDATE offline_messages SET msg_id = ?, payload = ?"
                         " WHERE id = ?"), (messageId, event, rowId))
    _log.info("database migrated: offline messages have a message id column "
              "({n} framed rows split)", n=len(framed))


def _offlineSortKeys(cursor: Any, dialect: SQLDialect) -> None:
    """
    Offline messages ordered by (sort_key, id), so that messages put back
    after a connection died go in front of the newer ones.
    """
    _addColumn(cursor, dialect, "offline_messages", "sort_key", {
        "sqlite": "INTEGER NOT NULL DEFAULT 0",
        "mysql": "BIGINT NOT NULL DEFAULT 0"})
    _addIndex(cursor, dialect, "offline_messages", "offline_messages_in_order",
              "user_id, sort_key, id")


def _addIndex(cursor: Any, dialect: SQLDialect, table: str, name: str,
              columns: str, unique: bool = False) -> None:
    kind = "UNIQUE INDEX" if unique else "INDEX"
    if dialect.name == "sqlite":
        cursor.execute(f"CREATE {kind} IF NOT EXISTS {name} ON {table} "
                       f"({columns})")
        return
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.statistics"
        " WHERE table_schema = DATABASE() AND table_name = %s"
        " AND index_name = %s", (table, name))
    if not cursor.fetchone()[0]:
        try:
            cursor.execute(f"ALTER TABLE {table} ADD {kind} {name} ({columns})")
        except dialect.databaseErrors as e:
            if errorCode(e) != _DUPLICATE_INDEX:
                raise


def _nodeDraining(cursor: Any, dialect: SQLDialect) -> None:
    """
    A node's C{draining} flag, which C{chatctl drain} sets and the node
    reads (L{chat.ops.orders}).
    """
    if _addColumn(cursor, dialect, "nodes", "draining", {
            "sqlite": "INTEGER NOT NULL DEFAULT 0",
            "mysql": "TINYINT NOT NULL DEFAULT 0"}):
        _log.info("database migrated: nodes have a draining flag")


def _userSkeletons(cursor: Any, dialect: SQLDialect) -> None:
    """
    Every user's look-alike key (L{nameSkeleton}, PROTOCOL.md 3.3) in
    C{users.skeleton}, under the unique index C{users_by_skeleton}, which
    is what refuses a look-alike registration (L{chat.storage.store}).

    Accounts without a key get theirs here, oldest first: all of them the
    first time, and later those that a node of an older version registered
    during a rolling upgrade.  So this runs at every start; once done it
    costs one index look-up.

    Accounts registered before the rule may already look alike.  All are
    kept, and the database decides between them as it does between two
    registrations: each key is written by an C{UPDATE} under the unique
    index, so the account that holds the key (the older one, in a first
    migration) keeps it, and the other's key stays C{NULL}, which a unique
    index allows any number of times, on SQLite and MySQL/MariaDB alike.
    That account still logs in by its exact name, and its look-alikes are
    refused all the same, by the key the other account holds.  Each start
    reports such a pair with a warning naming both accounts, until an
    operator renames one of them; nothing is renamed automatically, since
    a name is how people know each other.
    """
    _addColumn(cursor, dialect, "users", "skeleton", {
        "sqlite": "TEXT",
        "mysql": "VARBINARY(1024) NULL"})
    _addIndex(cursor, dialect, "users", "users_by_skeleton", "skeleton",
              unique=True)
    q = dialect.sql
    cursor.execute("SELECT id, name FROM users WHERE skeleton IS NULL"
                   " ORDER BY id")
    keyless = cursor.fetchall()
    alike = 0
    for userId, name in keyless:
        skeleton = nameSkeleton(name)
        try:
            cursor.execute(q("UPDATE users SET skeleton = ? WHERE id = ?"),
                           (skeleton, userId))
        except dialect.integrityErrors:
            alike += 1
            cursor.execute(q("SELECT id, name FROM users WHERE skeleton = ?"),
                           (skeleton,))
            holderId, holder = cursor.fetchone()
            _log.warn(
                "users {name!r} (id {userId}) and {holder!r} (id {holderId})"
                " look alike; both are kept, {name!r} without a look-alike"
                " key, until one of them is renamed",
                name=name, userId=userId, holder=holder, holderId=holderId)
    if len(keyless) > alike:
        _log.info("database migrated: {n} users given their look-alike key",
                  n=len(keyless) - alike)


MIGRATIONS: tuple[Callable[[Any, SQLDialect], None], ...] = (
    _offlineMessageIds,
    _offlineSortKeys,
    _nodeDraining,
    _userSkeletons,
)
"""Every migration, oldest first; each finds out itself whether it is due."""


def applySchema(cursor: Any, dialect: SQLDialect) -> None:
    """
    Create the missing tables, then run every migration that is due.
    """
    for statement in _schemaStatements(dialect):
        cursor.execute(statement)
    for migration in MIGRATIONS:
        migration(cursor, dialect)
