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
              columns: str) -> None:
    if dialect.name == "sqlite":
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} "
                       f"({columns})")
        return
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.statistics"
        " WHERE table_schema = DATABASE() AND table_name = %s"
        " AND index_name = %s", (table, name))
    if not cursor.fetchone()[0]:
        try:
            cursor.execute(f"ALTER TABLE {table} ADD INDEX {name} ({columns})")
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


MIGRATIONS: tuple[Callable[[Any, SQLDialect], None], ...] = (
    _offlineMessageIds,
    _offlineSortKeys,
    _nodeDraining,
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
