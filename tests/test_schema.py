"""
Tests for L{chat.storage.schema}: a database made by an earlier version is
migrated in place and keeps every row, on SQLite and on MariaDB.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.trial.unittest import TestCase

from chat.core.messages import ChatEvent
from chat.storage.pool import Database, openDatabase
from chat.storage.store import OfflineMessage, Store
from tests.harness import SharedMariaDBDatabase

OLD_OFFLINE_SQLITE = """
CREATE TABLE offline_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    payload TEXT NOT NULL
)"""
OLD_OFFLINE_MYSQL = """
CREATE TABLE offline_messages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    payload MEDIUMTEXT NOT NULL,
    KEY offline_messages_by_user (user_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

PLAIN = ChatEvent(1, "alice", "stored by a single node", "2024-01-01 12:00:00",
                  toId=2)
FRAMED = ChatEvent(1, "alice", "an uncertain copy", "2024-01-01 12:00:01",
                   toId=2)


class MigrationMixin:
    """
    Runs against C{self.openOld()}: a database holding the old table.
    Mixed into a TestCase for each database below.
    """

    assertEqual: Any

    def openOld(self) -> Database:
        raise NotImplementedError

    async def test_offlineMessageIds(self) -> None:
        """
        offline_messages gains its msg_id column; a row a Redis node stored
        framed (C{#<id> <json>}) is split into id and event, a plain row is
        kept as it was, in order; a second start changes nothing.
        """
        database = self.openOld()
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


def _oldRows(placeholder: str) -> tuple[str, list[tuple[Any, ...]]]:
    sql = ("INSERT INTO offline_messages (user_id, payload) VALUES "
           f"({placeholder}, {placeholder})")
    return sql, [(2, PLAIN.toJSON().decode()),
                 (2, "#ab12.7 " + FRAMED.toJSON().decode())]


class SQLiteMigrationTests(MigrationMixin, TestCase):
    def openOld(self) -> Database:
        path = self.mktemp() + ".sqlite3"
        with sqlite3.connect(path) as connection:
            connection.execute(OLD_OFFLINE_SQLITE)
            connection.executemany(*_oldRows("?"))
        database = openDatabase("sqlite:" + path)
        self.addCleanup(database.close)
        return database


class MariaDBMigrationTests(MigrationMixin, TestCase):
    def openOld(self) -> Database:
        shared = SharedMariaDBDatabase(self)
        connection = shared.connect()
        try:
            cursor = connection.cursor()
            cursor.execute(OLD_OFFLINE_MYSQL)
            cursor.executemany(*_oldRows("%s"))
            connection.commit()
        finally:
            connection.close()
        database = openDatabase(shared.url)
        self.addCleanup(database.close)
        return database
