"""
Tests for L{chat.storage.store}'s accounts: a name that looks like an
existing user's is taken (PROTOCOL.md 3.3), decided by the database's
unique index, on SQLite and on MariaDB; logins still find the exact name.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredList
from twisted.trial.unittest import TestCase

from chat.core.errors import NameTaken
from chat.core.names import nameSkeleton
from chat.core.rules import MAX_USER_NAME, checkUserName
from chat.storage.pool import openDatabase
from chat.storage.store import Store
from tests.harness import SharedMariaDBDatabase

LOOK_ALIKES = ["alice", "Alice", "\u0430lice", "\uff41lice", "\U0001d41alice"]
"""PROTOCOL.md 3.3's examples: plain, capital, Cyrillic а, fullwidth ａ and
mathematical bold 𝐚."""

LONGEST_KEY = "\ufdfa" * MAX_USER_NAME
"""The name with the longest look-alike key: U+FDFA, one Arabic letter,
has the longest key of any letter (18 characters, 30 bytes of UTF-8)."""


class AccountStoreMixin:
    """
    Mixed into a TestCase for each database below, with L{url} naming a
    fresh database.
    """

    assertEqual: Any
    assertNotEqual: Any
    assertIsNone: Any
    assertFailure: Any
    addCleanup: Any

    def url(self) -> str:
        raise NotImplementedError

    def openStore(self, url: str, nodeId: str = "n1") -> Store:
        database = openDatabase(url)
        self.addCleanup(database.close)
        store = Store(database)
        store.prepare(nodeId)
        return store

    async def test_lookAlikeTaken(self) -> None:
        """
        Once C{alice} exists, each of its look-alikes, and C{alice} itself,
        is L{NameTaken}; none is stored.  A different name is not.
        """
        store = self.openStore(self.url())
        aliceId = await store.createUser(LOOK_ALIKES[0], "h")
        for name in LOOK_ALIKES:
            await self.assertFailure(store.createUser(name, "h"), NameTaken)
        self.assertNotEqual(await store.createUser("bob", "h"), aliceId)
        for name in LOOK_ALIKES[1:]:
            self.assertIsNone(await store.userByName(name))

    async def test_exactNameLogin(self) -> None:
        """
        A user is found by the exact name registered, not by a look-alike
        of it: C{Аlice} (Cyrillic) registered first is the account; C{Alice}
        and C{alice} find nobody.
        """
        store = self.openStore(self.url())
        cyrillic = "\u0410lice"
        userId = await store.createUser(cyrillic, "h")
        user = await store.userByName(cyrillic)
        self.assertEqual((user.id, user.name, user.passwordHash),
                         (userId, cyrillic, "h"))
        for name in "Alice", "alice":
            self.assertIsNone(await store.userByName(name))

    async def test_longestKeyFits(self) -> None:
        """
        A valid name whose key is the longest possible is stored: the
        column holds any name's key.
        """
        checkUserName(LONGEST_KEY)
        self.assertEqual(len(nameSkeleton(LONGEST_KEY).encode("utf-8")),
                         30 * MAX_USER_NAME)
        store = self.openStore(self.url())
        userId = await store.createUser(LONGEST_KEY, "h")
        self.assertEqual((await store.userByName(LONGEST_KEY)).id, userId)

    async def test_raceOneWins(self) -> None:
        """
        Two nodes registering C{alice} and C{аlice} (Cyrillic) at the same
        time, each through its own connections: exactly one succeeds.
        """
        url = self.url()
        one, other = self.openStore(url, "n1"), self.openStore(url, "n2")
        results = await DeferredList(
            [one.createUser("alice", "h"), other.createUser("\u0430lice", "h")],
            consumeErrors=True)
        outcomes = sorted(
            "created" if ok else type(result.value).__name__
            for ok, result in results)
        self.assertEqual(outcomes, ["NameTaken", "created"])


class SQLiteAccountTests(AccountStoreMixin, TestCase):
    def url(self) -> str:
        return "sqlite:" + self.mktemp() + ".sqlite3"


class MariaDBAccountTests(AccountStoreMixin, TestCase):
    def url(self) -> str:
        return SharedMariaDBDatabase(self).url
