"""
Where a message goes: a local push, a publish, or the offline store
(DESIGN.md section 3), and the order a session sees.

One path, L{Router.route}, serves one recipient and many: each recipient
is pushed to its session on this node; else, unless the database has
just said it is offline, published, and a publish that no server took
(count 0) or whose outcome is unknown is stored, with every recipient the
database called offline, in one multi-row INSERT, then poked.  The router
also receives what the bus brings (L{IBusReceiver}), drains offline
messages into live sessions, names every message that leaves this node
(L{chat.cluster.dedup}) and drops the stored copies of messages it has
delivered already.

This module owns delivery and ordering; it never checks a request (the
handlers do) and never runs SQL itself (the store does).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.cluster.bus import IBusReceiver, IMessageBus, PublishOutcome
from chat.cluster.dedup import DeliveredRecently, MessageIds
from chat.core.errors import Unavailable
from chat.core.messages import ChatEvent
from chat.logs import logFailure
from chat.server.session import ISession
from chat.server.sessions import SessionRegistry
from chat.storage.store import Store

STORE_ATTEMPTS = 60
"""How many times, a second apart, an accepted message is offered to an
unavailable database before it is given up (and logged as lost)."""

Recipient = tuple[int, Optional[bool]]
"""A user id and what the database says of its state (L{None}: not
asked)."""
Stored = Union[int, "Deferred[int]"]
"""How many copies of a routed message were stored, or a Deferred firing
with it once they are (nothing to wait for when every copy was pushed
here)."""


class _Drain:
    """
    A drain of one user's offline messages under way: the live events
    that wait for it, and whether another drain was asked for meanwhile.
    """

    __slots__ = ("held", "again")

    def __init__(self) -> None:
        self.held: list[ChatEvent] = []
        self.again = False


def _nothing() -> None:
    pass


def _taken(outcome: PublishOutcome) -> bool:
    return isinstance(outcome, int) and outcome > 0


@implementer(IBusReceiver)
class Router:
    _log = Logger()

    def __init__(self, store: Store, bus: IMessageBus,
                 sessions: SessionRegistry, clock: IReactorTime) -> None:
        self._store = store
        self._bus = bus
        self._sessions = sessions
        self._clock = clock
        self._ids = MessageIds()
        self._delivered = DeliveredRecently()
        self._draining: dict[int, _Drain] = {}
        bus.setReceiver(self)

    # Routing ------------------------------------------------------------

    def route(self, recipients: Sequence[Recipient],
              event: ChatEvent) -> Stored:
        """
        Deliver C{event} to each recipient; see the module docstring.

        Why publishing without asking the database keeps every guarantee:
        the publish count is the proof of a live session elsewhere, and
        store-then-poke closes the race with a login elsewhere (that
        login's drain sees the row, or its subscription sees the poke).
        The database's answer only saves a publish for a user it knows to
        be offline.

        A plain Deferred chain, not a coroutine, and no Deferred at all
        when every recipient is local: this is the chat's hot path, run
        once per message.
        """
        remote: list[int] = []
        offline: list[int] = []
        for userId, online in recipients:
            session = self._sessions.get(userId)
            if session is not None:
                self._push(userId, session, event)
            elif online is False:
                offline.append(userId)
            else:
                remote.append(userId)
        if remote:
            self._name(event)
            return self._bus.publish(remote, event).addCallback(
                self._published, remote, offline, event)
        if offline:
            return self._storeCopies(offline, event)
        return 0

    def _published(self, outcomes: list[PublishOutcome], remote: list[int],
                   offline: list[int], event: ChatEvent) -> Stored:
        # Nobody took it (stale state, a dead server, a logout in flight)
        # or we cannot tell: store, never drop.
        stored = offline + [userId for userId, outcome in zip(remote, outcomes)
                            if not _taken(outcome)]
        if stored:
            return self._storeCopies(stored, event)
        return 0

    def _storeCopies(self, userIds: list[int], event: ChatEvent) -> Deferred[int]:
        return self._storeAndPoke([(u, event) for u in userIds]).addCallback(
            lambda _: len(userIds))

    def _name(self, event: ChatEvent) -> None:
        """Give C{event} its message id, as it leaves this node."""
        if event.messageId is None:
            event.messageId = self._ids.next()

    def _storeAndPoke(self, messages: list[tuple[int, ChatEvent]]
                      ) -> Deferred[None]:
        """
        Store messages offline, then poke their recipients, so that one
        who is logging in on some server right now drains them too.
        """
        for _, event in messages:
            self._name(event)

        def poke(_: None) -> None:
            self._bus.poke({userId for userId, _ in messages})

        return self._store.storeOffline(messages).addCallback(poke)

    def storeEventually(self, messages: list[tuple[int, ChatEvent]],
                        attempt: int = 1) -> Deferred[None]:
        """
        Store and poke messages that this node has already accepted and
        that nobody else holds (they came off the bus, out of a drain, or
        out of a closed connection): while the database is unavailable,
        retry every second for a while rather than lose them at once.

        A message stored here was not delivered, whatever was believed
        before, so it is no longer taken for a copy of a delivered one.
        """
        if attempt == 1:
            for userId, event in messages:
                if event.messageId is not None:
                    self._delivered.discard((userId, event.messageId))

        def retry(failure: Failure) -> Deferred[None]:
            if failure.check(Unavailable) and attempt < STORE_ATTEMPTS:
                later: Deferred[None] = deferLater(self._clock, 1.0, _nothing)
                return later.addCallback(
                    lambda _: self.storeEventually(messages, attempt + 1))
            return fail(failure)

        d = self._storeAndPoke(messages).addErrback(retry)
        if attempt == 1:
            d.addErrback(logFailure(
                self._log, "storing {count} messages for user(s) {ids}; "
                "they are lost", count=len(messages),
                ids=sorted({u for u, _ in messages})))
        return d

    # Local delivery and ordering ---------------------------------------

    def _push(self, userId: int, session: ISession, event: ChatEvent) -> None:
        """
        Hand C{event} to a local session, unless that user's offline
        messages are being drained: then it waits for them, since they
        are older (see L{drainInto}).
        """
        drain = self._draining.get(userId)
        if drain is not None:
            drain.held.append(event)
        else:
            self._deliver(userId, session, event)

    def _deliver(self, userId: int, session: ISession,
                 event: ChatEvent) -> None:
        messageId = event.messageId
        if messageId is not None:
            self._delivered.add((userId, messageId), self._clock.seconds())
        session.deliver(event)

    def offlineFor(self, userId: int) -> Deferred[list[ChatEvent]]:
        """
        Take a user's offline messages for its login reply, less stored
        copies of messages this node has delivered already.
        """
        return self._store.drainOffline(userId).addCallback(
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
            if session is None:
                del self._draining[userId]
                if events:
                    # Logged out during the drain: put them back.
                    return self.storeEventually([(userId, e) for e in events])
                return None
            for event in events:
                self._deliver(userId, session, event)
            if drain.again:
                drain.again = False
                return self._drainOnce(userId, drain)
            del self._draining[userId]
            return None

        def failed(failure: Failure) -> Failure:
            push([])  # release what waited; the next poke or login drains
            return failure

        return self._store.drainOffline(userId).addCallbacks(
            push, failed).addErrback(logFailure(
                self._log, "draining offline messages of user {userId}",
                userId=userId))

    # Arrivals from the bus (IBusReceiver) ------------------------------

    def eventArrived(self, userId: int,
                     event: ChatEvent) -> Optional[Deferred[None]]:
        session = self._sessions.get(userId)
        if session is not None:
            self._push(userId, session, event)
            return None
        # The user logged out while the message was in flight: store it.
        return self.storeEventually([(userId, event)])

    def pokeArrived(self, userId: int) -> None:
        if userId in self._sessions:
            self.drainInto(userId)

    def deliveryUncertain(self,
                          messages: Sequence[tuple[int, ChatEvent]]) -> None:
        self.storeEventually(list(messages))

    def busInterrupted(self) -> None:
        self._delivered.keepRecent(self._clock.seconds())

    def busReconnected(self) -> None:
        for userId in self._sessions.userIds():
            self.drainInto(userId)
