"""
Tests for L{chat.server.offline.OfflineWriter}: stores for one user commit
in order, one INSERT in flight per user, what comes meanwhile batched.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chat.core.errors import Unavailable
from chat.core.messages import ChatEvent
from chat.server.offline import OfflineWriter


class FakeStore:
    """storeOffline calls, each answered when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[int, str]], Deferred[None]]] = []

    def storeOffline(self, messages: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.calls.append(([(m.userId, m.event.text) for m in messages], d))
        return d


class FakeBus:
    def __init__(self) -> None:
        self.poked: list[set[int]] = []

    def poke(self, userIds: Any) -> None:
        self.poked.append(set(userIds))


def event(text: str) -> ChatEvent:
    return ChatEvent(1, "alice", text, "2024-01-01 12:00:00", toId=2)


def fired(d: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


class OfflineWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.bus = FakeBus()
        self.writer = OfflineWriter(self.store, self.bus)  # type: ignore[arg-type]

    def test_onePerUserInFlight(self) -> None:
        """
        A second store for a user waits for the first; what gathers
        meanwhile goes in one INSERT, in order; other users are not held
        up.
        """
        first = fired(self.writer.store([(2, event("a"))]))
        second = fired(self.writer.store([(2, event("b")), (3, event("x"))]))
        third = fired(self.writer.store([(2, event("c"))]))
        self.assertEqual([c for c, _ in self.store.calls],
                         [[(2, "a")], [(3, "x")]])
        self.store.calls[1][1].callback(None)
        self.assertEqual(second, [])  # its part for user 2 is still waiting
        self.store.calls[0][1].callback(None)
        self.assertEqual(first, [None])
        self.assertEqual(self.store.calls[2][0], [(2, "b"), (2, "c")])
        self.store.calls[2][1].callback(None)
        self.assertEqual((second, third), ([None], [None]))
        self.assertEqual(self.bus.poked, [{3}, {2}, {2}])

    def test_failurePassedOn(self) -> None:
        """A failed INSERT fails its callers; the next batch still runs."""
        first = fired(self.writer.store([(2, event("a"))]))
        second = fired(self.writer.store([(2, event("b"))]))
        self.store.calls[0][1].errback(Unavailable("down"))
        self.assertIsInstance(first[0], Failure)
        first[0].trap(Unavailable)
        self.store.calls[1][1].callback(None)
        self.assertEqual(second, [None])

    def test_afterWritesAndIdle(self) -> None:
        """A drain waits for the writes of its user; a stop for all."""
        self.assertEqual(fired(self.writer.afterWrites(2)), [None])
        self.writer.store([(2, event("a"))])
        self.writer.store([(2, event("b"))])
        after, idle = fired(self.writer.afterWrites(2)), fired(
            self.writer.idle())
        self.store.calls[0][1].callback(None)
        self.assertEqual(after, [])
        self.store.calls[1][1].callback(None)
        self.assertEqual((after, idle), ([None], [None]))

    def test_nothingToStore(self) -> None:
        self.assertEqual(fired(self.writer.store([])), [None])
        self.assertEqual(self.store.calls, [])

    def test_oneCallOneInsertPerIdleUser(self) -> None:
        """
        The messages of one call for a user with nothing in flight go in
        one INSERT (messages put in front must share their sort key).
        """
        self.writer.store([(2, event("a")), (2, event("b")), (3, event("c"))],
                          inFront=True)
        self.assertEqual([c for c, _ in self.store.calls],
                         [[(2, "a"), (2, "b"), (3, "c")]])
