"""
Where a message goes: a local push, a publish, or the offline store
(DESIGN.md section 3), and the order a session sees.

One path, L{Router.route}, serves one recipient and many: each recipient
is pushed to its session on this node (a slow reader's full output
refuses it: stored); else, unless the database has just said it is
offline, published, and a publish that no server took (count 0) or whose
outcome is unknown is stored, with every recipient the database called
offline, in one multi-row INSERT, then poked.  The router also receives
what the bus brings (L{IBusReceiver}), names every message that leaves
this node (L{chat.cluster.dedup}), and acts for nobody while this node's
lease does not hold (PROTOCOL.md section 6): routing is refused, and what
arrives waits until the lease is confirmed.

This module owns where a message goes; the order around drains is
L{chat.server.drains}', the order of stores L{chat.server.offline}'s; it
never checks a request (the handlers do) and never runs SQL.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.cluster.bus import IBusReceiver, IMessageBus, PublishOutcome
from chat.cluster.dedup import DeliveredRecently, MessageIds
from chat.cluster.presence import Lease
from chat.core.errors import Unavailable
from chat.core.messages import ChatEvent
from chat.logs import logFailure
from chat.ops.counters import Counters, NoCounters
from chat.server.drains import Drains
from chat.server.offline import Message, OfflineWriter
from chat.server.session import ISession
from chat.server.sessions import SessionRegistry
from chat.storage.store import Store

STORE_ATTEMPTS = 60
"""How many times, a second apart, an accepted message is offered to an
unavailable database before it is given up (and logged as lost)."""
MAX_HELD = 100_000
"""Arrivals kept in memory while the lease does not hold; beyond, they
are stored at once."""
LAPSED = "this server lost touch with the cluster for a moment; retry"

Recipient = tuple[int, Optional[bool]]
"""A user id and what the database says of its state (L{None}: not
asked)."""
Stored = Union[int, "Deferred[int]"]
"""How many copies of a routed message were stored, or a Deferred firing
with it once they are (nothing to wait for when every copy was pushed
here)."""


def _nothing() -> None:
    pass


def _taken(outcome: PublishOutcome) -> bool:
    return isinstance(outcome, int) and outcome > 0


def _outcomeName(outcome: PublishOutcome) -> str:
    """The C{chat_publish_total} label of a publish's outcome."""
    if isinstance(outcome, int):
        return "taken" if outcome > 0 else "nobody"
    return "failed"


@implementer(IBusReceiver)
class Router:
    """
    @ivar drains: the drains of offline messages into live sessions.
    """

    _log = Logger()

    def __init__(self, store: Store, bus: IMessageBus,
                 sessions: SessionRegistry, lease: Lease,
                 clock: IReactorTime,
                 counters: Counters = NoCounters()) -> None:
        self._bus = bus
        self._counters = counters
        self._sessions = sessions
        self._lease = lease
        self._clock = clock
        self._ids = MessageIds()
        self._delivered = DeliveredRecently()
        self._writer = OfflineWriter(store, bus)
        self.drains = Drains(store, self._writer, sessions, self._delivered,
                             self.storeEventually)
        self._held: list[tuple[int, ChatEvent, Deferred[None]]] = []
        lease.onConfirmed(self._leaseConfirmed)
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

        @raise Unavailable: this node's lease does not hold; nothing was
            done.
        """
        if not self._lease.holds():
            raise Unavailable(LAPSED)
        remote: list[int] = []
        offline: list[int] = []
        for userId, online in recipients:
            session = self._sessions.get(userId)
            if session is not None:
                if self._push(userId, session, event):
                    self._counters.routed("local")
                else:
                    offline.append(userId)
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
        counters = self._counters
        for outcome in outcomes:
            counters.published(_outcomeName(outcome))
        counters.routed("remote", len(remote) + len(offline) - len(stored))
        if stored:
            return self._storeCopies(stored, event)
        return 0

    def _push(self, userId: int, session: ISession, event: ChatEvent) -> bool:
        """
        Hand C{event} to a local session, unless that user's offline
        messages are being drained: then it waits for them, since they
        are older.  Whether the session took it (a slow reader's full
        output refuses it).
        """
        return self.drains.hold(userId, event) or session.deliver(event)

    def _storeCopies(self, userIds: list[int],
                     event: ChatEvent) -> Deferred[int]:
        self._counters.routed("stored", len(userIds))
        return self._storeNamed([(u, event) for u in userIds]).addCallback(
            lambda _: len(userIds))

    def _name(self, event: ChatEvent) -> None:
        """Give C{event} its message id, as it leaves this node."""
        if event.messageId is None:
            event.messageId = self._ids.next()

    def _storeNamed(self, messages: list[Message],
                    inFront: bool = False) -> Deferred[None]:
        for _, event in messages:
            self._name(event)
        return self._writer.store(messages, inFront)

    def storeEventually(self, messages: list[Message], inFront: bool = False,
                        attempt: int = 1) -> Deferred[None]:
        """
        Store messages that this node has already accepted and that
        nobody else holds (they came off the bus, out of a drain, or out
        of a closed connection; C{inFront}, see L{OfflineWriter.store}):
        while the database is unavailable, retry every second for a while
        rather than lose them at once.

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
                return later.addCallback(lambda _: self.storeEventually(
                    messages, inFront, attempt + 1))
            return fail(failure)

        d = self._storeNamed(messages, inFront).addErrback(retry)
        if attempt == 1:
            d.addErrback(logFailure(
                self._log, "storing {count} messages for user(s) {ids}; "
                "they are lost", count=len(messages),
                ids=sorted({u for u, _ in messages})))
        return d

    def settled(self) -> Deferred[None]:
        """Fires once no message is being stored (a stopping node waits)."""
        return self._writer.idle()

    def backlogReadable(self, userId: int) -> None:
        """A slow reader has read its backlog: push it what was stored."""
        if self._lease.holds():
            self.drains.drainInto(userId)

    # Arrivals from the bus (IBusReceiver) ------------------------------

    def eventArrived(self, userId: int,
                     event: ChatEvent) -> Optional[Deferred[None]]:
        if not self._lease.holds():
            return self._holdArrival(userId, event)
        return self._arrive(userId, event)

    def _arrive(self, userId: int,
                event: ChatEvent) -> Optional[Deferred[None]]:
        session = self._sessions.get(userId)
        if session is not None and self._push(userId, session, event):
            if event.messageId is not None:
                self._delivered.add((userId, event.messageId),
                                    self._clock.seconds())
            return None
        # The user logged out while the message was in flight, or reads
        # too slowly: store it.
        return self.storeEventually([(userId, event)])

    def _holdArrival(self, userId: int, event: ChatEvent) -> Deferred[None]:
        """
        Keep what arrives while the lease does not hold: the session it is
        for may have been taken over meanwhile, and no user may have two
        sessions that both receive.
        """
        if len(self._held) >= MAX_HELD:
            return self.storeEventually([(userId, event)])
        d: Deferred[None] = Deferred()
        self._held.append((userId, event, d))
        return d

    def _leaseConfirmed(self) -> None:
        """
        The lease holds again and every session still here is this
        node's: hand them what arrived meanwhile (the rest is stored), and
        drain what was stored for them.
        """
        held, self._held = self._held, []
        for userId, event, d in held:
            storing = self._arrive(userId, event)
            if storing is None:
                d.callback(None)
            else:
                storing.chainDeferred(d)
        self.busReconnected()

    def pokeArrived(self, userId: int) -> None:
        if userId in self._sessions and self._lease.holds():
            self.drains.drainInto(userId)

    def deliveryUncertain(self,
                          messages: Sequence[Message]) -> Deferred[None]:
        self._counters.published("uncertain", len(messages))
        return self.storeEventually(list(messages))

    def busInterrupted(self) -> None:
        self._delivered.keepRecent(self._clock.seconds())

    def busReconnected(self) -> None:
        for userId in self._sessions.userIds():
            self.drains.drainInto(userId)
