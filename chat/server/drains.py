"""
Offline messages into live sessions, in order.

A user's stored messages are drained (read and deleted in one
transaction) at its login, when a poke says more were stored, when the bus
comes back after an outage, and when a slow reader has read its backlog.
While a drain is under way, live events for that user wait behind it, so
the session sees them after the older stored ones; and a drain waits for
the stores in flight for that user, so it never overtakes a row about to
be committed.  Stored copies of messages this node has delivered already
are dropped (L{chat.cluster.dedup.DeliveredRecently}).

This module owns the drains and the order around them; it never decides
where a new message goes (the router does).
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.cluster.dedup import DeliveredRecently
from chat.core.messages import ChatEvent
from chat.logs import logFailure
from chat.server.offline import Message, OfflineWriter
from chat.server.sessions import SessionRegistry
from chat.storage.store import Store


class _Drain:
    """
    A drain of one user's offline messages under way: the live events
    that wait for it, and whether another drain was asked for meanwhile.
    """

    __slots__ = ("held", "again")

    def __init__(self) -> None:
        self.held: list[ChatEvent] = []
        self.again = False


class Drains:
    _log = Logger()

    def __init__(self, store: Store, writer: OfflineWriter,
                 sessions: SessionRegistry, delivered: DeliveredRecently,
                 storeEventually: Callable[[list[Message]], Deferred[None]]
                 ) -> None:
        self._store = store
        self._writer = writer
        self._sessions = sessions
        self._delivered = delivered
        self._storeEventually = storeEventually
        self._draining: dict[int, _Drain] = {}

    def hold(self, userId: int, event: ChatEvent) -> bool:
        """
        Keep a live C{event} behind the drain under way for the user, if
        there is one; whether there is.
        """
        drain = self._draining.get(userId)
        if drain is None:
            return False
        drain.held.append(event)
        return True

    def forLogin(self, userId: int) -> Deferred[list[ChatEvent]]:
        """
        Take a user's offline messages for its login reply (the protocol
        holds live events until that reply is written).
        """
        return self._writer.afterWrites(userId).addCallback(
            lambda _: self._store.drainOffline(userId)).addCallback(
            self._undelivered, userId)

    def _undelivered(self, events: list[ChatEvent],
                     userId: int) -> list[ChatEvent]:
        delivered = self._delivered
        return [e for e in events if e.messageId is None
                or (userId, e.messageId) not in delivered]

    def drainInto(self, userId: int) -> Deferred[None]:
        """
        Push a live session's offline messages to it, oldest first.

        A poke arrives ahead of the sender's next message, which may well
        be published live while the drain's query runs; so until the
        drained messages are pushed, live events for the user wait behind
        them, and the session sees the sender's order.  A poke during a
        drain asks for one more drain after it.
        """
        drain = self._draining.get(userId)
        if drain is not None:
            drain.again = True
            return succeed(None)
        drain = self._draining[userId] = _Drain()
        return self._drainOnce(userId, drain)

    def _drainOnce(self, userId: int, drain: _Drain) -> Deferred[None]:
        def push(events: list[ChatEvent]) -> Optional[Deferred[None]]:
            events = self._undelivered(events, userId) + drain.held
            drain.held = []
            session = self._sessions.get(userId)
            refused = 0 if session is None else next(
                (i for i, e in enumerate(events) if not session.deliver(e)),
                None)
            if refused is not None:
                # Logged out during the drain, or a slow reader whose
                # output is full again: the rest goes back, in order, and
                # the session asks again once it can take more.
                del self._draining[userId]
                rest = events[refused:]
                return self._storeEventually(
                    [(userId, e) for e in rest]) if rest else None
            if drain.again:
                drain.again = False
                return self._drainOnce(userId, drain)
            del self._draining[userId]
            return None

        def failed(failure: Failure) -> Failure:
            push([])  # release what waited; the next poke or login drains
            return failure

        d = self._writer.afterWrites(userId).addCallback(
            lambda _: self._store.drainOffline(userId))
        return d.addCallbacks(push, failed).addErrback(logFailure(
            self._log, "draining offline messages of user {userId}",
            userId=userId))
