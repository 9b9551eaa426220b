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

from typing import Callable, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.cluster.dedup import DeliveredRecently
from chat.core.errors import AccountInUse
from chat.core.messages import ChatEvent
from chat.logs import logFailure
from chat.server.offline import Message, OfflineWriter
from chat.server.session import ISession
from chat.server.sessions import SessionRegistry
from chat.storage.store import OfflineBatch, Store


LOGIN_BYTES = 256 << 10
"""How much of a user's offline messages its login reply carries at most;
the rest follows as ordinary events, before any live one."""
MIN_ROOM = 16 << 10
"""A session with less room than this is drained later, once it has read
more (it refuses live events meanwhile: they are younger)."""


class _Drain:
    """
    A drain of one user's offline messages under way: the live events
    that wait for it, whether another drain was asked for meanwhile, and
    whether the login reply it began with is still to be written.
    """

    __slots__ = ("held", "again", "login")

    def __init__(self, login: bool = False) -> None:
        self.held: list[ChatEvent] = []
        self.again = False
        self.login = login


class Drains:
    _log = Logger()

    def __init__(self, store: Store, writer: OfflineWriter,
                 sessions: SessionRegistry, delivered: DeliveredRecently,
                 storeEventually: Callable[[list[Message], bool],
                                           Deferred[None]]) -> None:
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

    def beginLogin(self, userId: int) -> None:
        """
        A login of the user is about to claim its session: from now until
        L{loginAnswered} (or L{abandonLogin}) live events wait, and no
        other drain runs, so that the login reply carries the oldest
        messages and nothing overtakes them.

        @raise AccountInUse: a drain for a session of the user is still
            under way here.
        """
        if userId in self._draining:
            raise AccountInUse("this account is logged in elsewhere")
        self._draining[userId] = _Drain(login=True)

    def takeForLogin(self, userId: int) -> Deferred[tuple[ChatEvent, ...]]:
        """
        Take the oldest of a user's offline messages for its login reply;
        the rest follows once it is written.
        """
        drain = self._draining[userId]

        def taken(batch: OfflineBatch) -> tuple[ChatEvent, ...]:
            drain.again = drain.again or batch.more
            return self._undelivered(batch.events, userId)

        return self._writer.afterWrites(userId).addCallback(
            lambda _: self._store.takeOffline(userId, LOGIN_BYTES)
        ).addCallback(taken)

    def abandonLogin(self, userId: int) -> None:
        """The login failed: whatever waited goes to the store."""
        drain = self._draining.get(userId)
        if drain is not None and drain.login:
            self._end(userId, drain, None)

    def loginAnswered(self, userId: int) -> None:
        """The login reply is out (or its connection closed): go on."""
        drain = self._draining.get(userId)
        if drain is not None and drain.login:
            drain.login = False
            if drain.again:
                drain.again = False
                self._drainOnce(userId, drain)
            else:
                self._end(userId, drain, self._sessions.get(userId))

    def _undelivered(self, events: Sequence[ChatEvent],
                     userId: int) -> tuple[ChatEvent, ...]:
        delivered = self._delivered
        return tuple(e for e in events if e.messageId is None
                     or (userId, e.messageId) not in delivered)

    def drainInto(self, userId: int) -> Deferred[None]:
        """
        Push a live session's offline messages to it, oldest first, as
        many as it has room for.

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
        session = self._sessions.get(userId)
        if session is None or session.room() < MIN_ROOM:
            if session is not None:
                session.backlog()  # it asks again once it has read more
            return self._end(userId, drain, session)

        def push(batch: OfflineBatch) -> Optional[Deferred[None]]:
            events = self._undelivered(batch.events, userId)
            now = self._sessions.get(userId)
            if now is None:
                # Logged out meanwhile: back where they were taken from,
                # in front of the user's other stored messages.
                self._storeEventually([(userId, e) for e in events], True)
                return self._end(userId, drain, None)
            for event in events:
                now.deliverStored(event)
            if batch.more or drain.again:
                drain.again = False
                return self._drainOnce(userId, drain)
            return self._end(userId, drain, now)

        def failed(failure: Failure) -> Failure:
            # Release what waited; the next poke or login drains.
            self._end(userId, drain, self._sessions.get(userId))
            return failure

        d = self._writer.afterWrites(userId).addCallback(
            lambda _: self._store.takeOffline(userId, session.room()))
        return d.addCallbacks(push, failed).addErrback(logFailure(
            self._log, "draining offline messages of user {userId}",
            userId=userId))

    def _end(self, userId: int, drain: _Drain,
             session: Optional[ISession]) -> Deferred[None]:
        """
        The drain is over: the live events that waited go to the session,
        until it refuses one (a slow reader): that one and the rest go
        back to the store, in order, after the stored messages.
        """
        if self._draining.get(userId) is drain:
            del self._draining[userId]
        events = drain.held
        drain.held = []
        refused = 0 if session is None else next(
            (i for i, e in enumerate(events) if not session.deliver(e)), None)
        if refused is None or not events[refused:]:
            return succeed(None)
        return self._storeEventually(
            [(userId, e) for e in events[refused:]], False)
