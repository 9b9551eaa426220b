"""
Tests for L{chat.storage.schema}: a database made by an earlier version is
migrated in place and keeps every row, on SQLite and on MariaDB.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from chat.core.errors import NameTaken
from chat.core.messages import ChatEvent
from chat.core.names import nameSkeleton
from chat.storage.pool import Database, openDatabase
from chat.storage.store import OfflineMessage, Store
from tests.harness import SharedMariaDBDatabase

OLD_TABLES_SQLITE = {
    "offline_messages": """
CREATE TABLE offline_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    payload TEXT NOT NULL
)""",
    "users": """
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL
)""",
}
OLD_TABLES_MYSQL = {
    "offline_messages": """
CREATE TABLE offline_messages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    payload MEDIUMTEXT NOT NULL,
    KEY offline_messages_by_user (user_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "users": """
CREATE TABLE users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    password VARCHAR(255) NOT NULL,
    UNIQUE KEY users_by_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
}
"""The tables as the version before each migration made them."""

PLAIN = ChatEvent(1, "alice", "stored by a single node", "2024-01-01 12:00:00",
                  toId=2)
FRAMED = ChatEvent(1, "alice", "an uncertain copy", "2024-01-01 12:00:01",
                   toId=2)


OLD_USERS = [
    (1, "alice", "hash-1"), (2, "bob", "hash-2"), (3, "Alice", "hash-3"),
    (4, "张三", "hash-4"), (5, "b0b", "hash-5"), (6, "\u0430lice", "hash-6")]
"""Accounts from before look-alikes were refused: C{Alice} and Cyrillic
C{аlice} look like C{alice}, C{b0b} (a zero) like C{bob}."""
LOOK_ALIKES = {3: 1, 5: 2, 6: 1}
"""Which earlier account each look-alike of L{OLD_USERS} resembles."""


class MigrationMixin:
    """
    Runs against C{self.openOld(table, columns, rows)}: a database holding
    only the old C{table}, with C{rows} in its C{columns}.  Mixed into a
    TestCase for each database below.
    """

    assertEqual: Any
    assertIsNone: Any
    assertIn: Any
    assertFailure: Any

    def openOld(self, table: str, columns: Sequence[str],
                rows: Sequence[tuple[Any, ...]]) -> Database:
        raise NotImplementedError

    async def test_offlineMessageIds(self) -> None:
        """
        offline_messages gains its msg_id column; a row a Redis node stored
        framed (C{#<id> <json>}) is split into id and event, a plain row is
        kept as it was, in order; a second start changes nothing.
        """
        database = self.openOld("offline_messages", ("user_id", "payload"), [
            (2, PLAIN.toJSON().decode()),
            (2, "#ab12.7 " + FRAMED.toJSON().decode())])
        store = Store(database)
        store.prepare("n1")
        events = (await store.takeOffline(2)).events
        self.assertEqual(
            [(e.text, e.messageId) for e in events],
            [(PLAIN.text, None), (FRAMED.text, b"ab12.7")])
        await store.storeOffline([OfflineMessage(2, FRAMED)])
        store.prepare("n1")
        [again] = (await store.takeOffline(2)).events
        self.assertEqual(again.text, FRAMED.text)

    async def test_userSkeletons(self) -> None:
        """
        users gains its look-alike key and the unique index on it: every
        account is kept as it was; each gets its key but a look-alike of an
        older one, whose key stays NULL and which is reported, with the
        account it resembles, at every start.  Look-alikes of either are
        refused from then on; each still logs in by its exact name.
        """
        database = self.openOld("users", ("id", "name", "password"),
                                OLD_USERS)
        store = Store(database)
        for _ in range(2):
            with capturedLogs() as events:
                store.prepare("n1")
            warnings = [formatEvent(e) for e in events
                        if e.get("log_level") == LogLevel.warn]
            self.assertEqual(len(warnings), len(LOOK_ALIKES), warnings)
            for warning, (later, earlier) in zip(warnings,
                                                 LOOK_ALIKES.items()):
                for userId in later, earlier:
                    name = OLD_USERS[userId - 1][1]
                    self.assertIn(f"{name!r} (id {userId})", warning)
        rows = await database.query(
            "SELECT id, name, password, skeleton FROM users ORDER BY id")
        self.assertEqual([row[:3] for row in rows], OLD_USERS)
        for userId, name, _, skeleton in rows:
            if userId in LOOK_ALIKES:
                self.assertIsNone(skeleton)
            else:
                self.assertEqual(_text(skeleton), nameSkeleton(name))
        for lookAlike in ["ALICE", "\uff41lice", "B0B", "bob"]:
            await self.assertFailure(store.createUser(lookAlike, "h"),
                                     NameTaken)
        for userId, name, password in OLD_USERS:
            user = await store.userByName(name)
            self.assertEqual((user.id, user.passwordHash), (userId, password))
        newId = await store.createUser("carol", "h")
        [[skeleton]] = await database.query(
            database.dialect.sql("SELECT skeleton FROM users WHERE id = ?"),
            newId)
        self.assertEqual(_text(skeleton), "carol")


def _text(skeleton: str | bytes) -> str:
    """A stored key as text: MySQL's VARBINARY column reads as bytes."""
    return skeleton.decode("utf-8") if isinstance(skeleton, bytes) \
        else skeleton


def _insert(table: str, columns: Sequence[str], placeholder: str) -> str:
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            f"({', '.join([placeholder] * len(columns))})")


class SQLiteMigrationTests(MigrationMixin, TestCase):
    def openOld(self, table: str, columns: Sequence[str],
                rows: Sequence[tuple[Any, ...]]) -> Database:
        path = self.mktemp() + ".sqlite3"
        with sqlite3.connect(path) as connection:
            connection.execute(OLD_TABLES_SQLITE[table])
            connection.executemany(_insert(table, columns, "?"), rows)
        database = openDatabase("sqlite:" + path)
        self.addCleanup(database.close)
        return database


class MariaDBMigrationTests(MigrationMixin, TestCase):
    def openOld(self, table: str, columns: Sequence[str],
                rows: Sequence[tuple[Any, ...]]) -> Database:
        shared = SharedMariaDBDatabase(self)
        connection = shared.connect()
        try:
            cursor = connection.cursor()
            cursor.execute(OLD_TABLES_MYSQL[table])
            cursor.executemany(_insert(table, columns, "%s"), rows)
            connection.commit()
        finally:
            connection.close()
        database = openDatabase(shared.url)
        self.addCleanup(database.close)
        return database
