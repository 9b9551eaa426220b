"""
The cluster's bus: Redis publish/subscribe, with proof of arrival.

Each user has a channel, C{chat:user:<id>}, as in the classic server; the
node holding the user's session subscribes to it.  Each node also has a
channel of its own, C{chat:node:<token>}, where the nodes that took its
messages acknowledge them (L{chat.cluster.acks}).  On the wire a chat
message is C{#<token>.<publish number> <message id> <event JSON>}, an
acknowledgement C{ack <publish numbers>}, a poke the word C{poke}.

This module owns the two links to Redis and what crosses them; it never
decides where a message goes (the router does) and never stores one (it
hands it back to the receiver):

 - it subscribes on one connection, txredisapi's subscriber
   (L{chat.cluster.subscriber}), and publishes on another, our own
   L{chat.cluster.redisclient} (a subscribed connection can do nothing
   else);
 - txredisapi does not resubscribe by itself: every subscription is
   renewed whenever the subscriber connects, one SUBSCRIBE per channel so
   each reply is matched to its request, and only then is the receiver
   told, which drains the offline messages stored while the bus was down;
 - a publish fails at once while the publisher is disconnected (the router
   then stores the message);
 - one watchdog (L{chat.cluster.watchdog}) watches both links, dropping
   stalled ones and pinging idle ones;
 - what Redis counted but no node acknowledged within
   L{chat.cluster.acks.UNACKED_SECONDS} is handed back to be stored as
   uncertain copies: whatever Redis, a killed node or a dropped
   subscription did with it.  The bus sends and receives the
   acknowledgements; their bookkeeping is L{chat.cluster.acks.Proofs}'s.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import urlsplit

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.cluster.acks import ACK_SECONDS, Proofs, Uncertain
from chat.cluster.bus import IBusReceiver, IMessageBus, PublishOutcome
from chat.cluster.redisclient import RedisClient, RedisConnection, Reply
from chat.cluster.subscriber import (
    ISubscriberListener, Subscriber, SubscriberFactory,
)
from chat.cluster.watchdog import (
    COMMAND_TIMEOUT, WATCH_SECONDS, Link, Watchdog,
)
from chat.core.messages import ChatEvent

STOP_SECONDS = 5.0
"""How long a stopping bus waits for the messages still on their way to it,
and for the receiver to store them, before it disconnects."""
USER_PREFIX = b"chat:user:"
NODE_PREFIX = b"chat:node:"
POKE = b"poke"
ACK = b"ack "


def channelOf(userId: int) -> bytes:
    return b"%s%d" % (USER_PREFIX, userId)


def frame(sender: bytes, seq: int, event: ChatEvent) -> bytes:
    """A chat message as the bus carries it: who published it under which
    number, its id, then its JSON."""
    assert event.messageId is not None, "the router names every message"
    return b"#%s.%x %s %s" % (sender, seq, event.messageId, event.toJSON())


def unframe(message: bytes) -> tuple[bytes, int, ChatEvent]:
    """The sender, publish number and event of a L{frame}d message."""
    origin, messageId, json = message[1:].split(b" ", 2)
    sender, seq = origin.split(b".")
    return sender, int(seq, 16), ChatEvent.fromJSON(json, messageId)


_log = Logger()


def _within(clock: IReactorTime, d: Deferred[Any],
            what: str) -> Deferred[None]:
    """
    C{d}, bounded by L{STOP_SECONDS} without cancelling it: the commands
    and stores of a stopping bus may still complete while the links close.
    """
    finished: Deferred[None] = Deferred()

    def timedOut() -> None:
        _log.warn("stopping: gave up waiting after {s} s for {what}",
                  s=STOP_SECONDS, what=what)
        finished.callback(None)

    timer = clock.callLater(STOP_SECONDS, timedOut)

    def done(_: object) -> None:
        if timer.active():
            timer.cancel()
            finished.callback(None)

    d.addBoth(done)
    return finished


class _Pending:
    """Deferreds that a stopping bus waits for, each kept until it fires."""

    def __init__(self) -> None:
        self._waiting: set[Deferred[Any]] = set()

    def add(self, d: Deferred[Any]) -> None:
        self._waiting.add(d)

        def settled(result: object) -> object:
            self._waiting.discard(d)
            return result

        d.addBoth(settled)

    def settled(self) -> Deferred[Any]:
        """Fires once every Deferred kept now has fired."""
        return DeferredList(list(self._waiting), consumeErrors=True)


@implementer(IMessageBus, ISubscriberListener)
class RedisBus(Service):
    """
    @ivar clock: the reactor's clock.
    """

    _log = Logger()

    def __init__(self, host: str, port: int, dbid: Optional[int],
                 reactor: IReactorTime) -> None:
        self.clock = reactor
        self._dbid = dbid
        self._endpoint = TCP4ClientEndpoint(reactor, host, port,
                                            timeout=COMMAND_TIMEOUT)
        self._where = f"{host}:{port}"
        self._token = os.urandom(6).hex().encode("ascii")
        self._ackChannel = NODE_PREFIX + self._token
        self._receiver: Optional[IBusReceiver] = None
        self._wanted: set[int] = set()
        self._publisher = RedisClient(reactor, self._endpoint, dbid,
                                      self._publisherReady,
                                      self._publisherLost)
        self._subscriber: Optional[Subscriber] = None
        self._subscriberFactory: Optional[SubscriberFactory] = None
        self._loops: list[LoopingCall] = []
        self._watchdog = Watchdog(reactor, self._links)
        self._everConnected = False
        self._unpoked: set[int] = set()
        self._proofs = Proofs(reactor, self._uncertain)
        self._storing = _Pending()
        self._unsubscribing = _Pending()

    @classmethod
    def fromURL(cls, url: str, reactor: IReactorTime) -> "RedisBus":
        """A bus for C{redis://HOST:PORT[/DB]}."""
        parts = urlsplit(url)
        path = parts.path.strip("/")
        dbid = int(path) if path else None
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, dbid,
                   reactor)

    @property
    def commands(self) -> RedisClient:
        """
        Where other parts send their own commands (the rate limits'
        counters): the publisher's connection, which is up whenever the
        bus can publish.
        """
        return self._publisher

    def setReceiver(self, receiver: IBusReceiver) -> None:
        self._receiver = receiver

    # Service ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._publisher.startService()
        self._subscriberFactory = SubscriberFactory(self, self._dbid)
        self._subscriberFactory.startConnecting(self._endpoint)
        for interval, work in ((WATCH_SECONDS, self._watchdog.check),
                               (ACK_SECONDS, self._settleAcks)):
            loop = LoopingCall(work)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()

        def disconnect(_: object) -> Deferred[Any]:
            factory, self._subscriberFactory = self._subscriberFactory, None
            return DeferredList([
                self._publisher.stopService(),
                factory.disconnect() if factory is not None else succeed(None),
            ], consumeErrors=True)

        d = _within(self.clock, self._drainSubscriber(),
                    "the messages on their way here")
        d.addCallback(lambda _: _within(self.clock, self._proofs.storeAll(),
                                        "the messages published"))
        return d.addCallback(disconnect).addCallback(lambda _: None)

    def _drainSubscriber(self) -> Deferred[Any]:
        """
        Before a clean stop, once the server has let its sessions go (and
        so unsubscribed them): unsubscribe from whatever user channel is
        left and wait until Redis confirms every unsubscription, so that
        every message it sent here first (each one a PUBLISH counted as
        taken by this node) has been handed to the receiver; then wait
        until the receiver has stored those, and acknowledge them.
        Messages published later find no subscriber here, and their
        senders store them.  Closing the link at once would drop whatever
        was still unread in it.
        """
        for userId in sorted(self._wanted):
            self.unsubscribe(userId)
        d = self._unsubscribing.settled()
        d.addCallback(lambda _: self._storing.settled())
        return d.addCallback(lambda _: self._sendAcks())

    def connected(self) -> bool:
        """Whether both links to Redis are up (the node's readiness)."""
        return self._publisher.connection is not None and \
            self._subscriber is not None

    # Links --------------------------------------------------------------

    def _links(self) -> list[Link]:
        return [link for link in (self._publisher.connection,
                                  self._subscriber) if link is not None]

    def _publisherReady(self, connection: RedisConnection) -> None:
        self._log.info("Redis publisher connected to {where}",
                       where=self._where)
        if self._unpoked:
            # Pokes lost while Redis was away: a node that drained when its
            # subscriber came back may have done so before we stored these.
            unpoked, self._unpoked = self._unpoked, set()
            self.poke(unpoked)

    def _publisherLost(self, connection: RedisConnection) -> None:
        self._log.warn("Redis publisher connection lost")

    def subscriberReady(self, connection: Subscriber) -> Deferred[None]:
        self._subscriber = connection
        wanted = sorted(self._wanted)
        self._log.info("Redis subscriber connected; renewing {n} "
                       "subscriptions", n=len(wanted))
        d = DeferredList(
            [connection.request("subscribe", self._ackChannel)] +
            [connection.request("subscribe", channelOf(u)) for u in wanted],
            consumeErrors=True)

        def renewed(results: list[tuple[bool, Any]]) -> None:
            if not all(ok for ok, _ in results):
                return  # the connection was dropped; the next one retries
            if self._everConnected and self._receiver is not None:
                self._receiver.busReconnected()
            self._everConnected = True

        return d.addCallback(renewed)

    def subscriberLost(self, connection: Subscriber) -> None:
        if connection is self._subscriber:
            self._subscriber = None
            self._log.warn("Redis subscriber connection lost")
            if self._receiver is not None:
                self._receiver.busInterrupted()

    # Subscriptions ------------------------------------------------------

    def subscribe(self, userId: int) -> Deferred[object]:
        self._wanted.add(userId)
        if self._subscriber is None:
            return fail(txredisapi.ConnectionError("Redis is unreachable"))
        return self._subscriber.request("subscribe", channelOf(userId))

    def unsubscribe(self, userId: int) -> Deferred[object]:
        self._wanted.discard(userId)
        if self._subscriber is None:
            return succeed(None)  # nothing to undo: renewal skips it
        d = self._subscriber.request("unsubscribe", channelOf(userId))
        # A stop waits for every unsubscription Redis has not confirmed.
        self._unsubscribing.add(d)
        return d

    # Arrivals -----------------------------------------------------------

    def messageReceived(self, channel: bytes, message: bytes) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        try:
            if channel == self._ackChannel:
                if message.startswith(ACK):
                    self._proofs.acknowledged(message[len(ACK):])
            elif channel.startswith(USER_PREFIX):
                userId = int(channel[len(USER_PREFIX):])
                if message == POKE:
                    receiver.pokeArrived(userId)
                else:
                    self._eventArrived(receiver, userId, message)
        except Exception:
            self._log.failure("handling a bus message on {channel!r}",
                              channel=channel)

    def _eventArrived(self, receiver: IBusReceiver, userId: int,
                      message: bytes) -> None:
        """
        Hand the event over; acknowledge it once it is delivered, or
        stored.
        """
        sender, seq, event = unframe(message)
        storing = receiver.eventArrived(userId, event)
        if storing is None:
            self._proofs.took(sender, seq)
            return
        # Its session is gone (or waits, or reads too slowly) and it is
        # being stored; a stop waits for that.
        self._storing.add(storing)
        storing.addCallback(lambda _: self._proofs.took(sender, seq))

    def _settleAcks(self) -> None:
        """
        Every L{ACK_SECONDS}: acknowledge what this node took, and store
        what this node published that nobody acknowledged in time.
        """
        self._sendAcks()
        self._proofs.settle()

    def _uncertain(self, messages: Uncertain) -> Optional[Deferred[None]]:
        if self._receiver is None:
            return None
        return self._receiver.deliveryUncertain(messages)

    def _sendAcks(self) -> None:
        connection = self._publisher.connection
        if connection is None:
            return  # their publishers store them: a duplicate, no loss
        acks = self._proofs.owed()
        if acks:
            connection.pipeline([
                (b"PUBLISH", NODE_PREFIX + sender, ACK + seqs)
                for sender, seqs in acks.items()])

    # Publishing ---------------------------------------------------------

    def publish(self, userIds: Sequence[int],
                event: ChatEvent) -> Deferred[list[PublishOutcome]]:
        seqs = self._proofs.numbered(len(userIds))
        token = self._token
        return self._publishAll([
            (channelOf(userId), frame(token, seq, event))
            for seq, userId in zip(seqs, userIds)]).addCallback(
                self._proofs.counted, seqs, userIds, event)

    def poke(self, userIds: Iterable[int]) -> Deferred[None]:
        users = list(userIds)

        def retryLater(outcomes: list[PublishOutcome]) -> None:
            for userId, outcome in zip(users, outcomes):
                if isinstance(outcome, Failure):
                    # Poked again once the publisher is back.
                    self._unpoked.add(userId)

        return self._publishAll(
            [(channelOf(u), POKE) for u in users]).addCallback(retryLater)

    def _publishAll(self, messages: list[tuple[bytes, bytes]]
                    ) -> Deferred[list[PublishOutcome]]:
        """
        PUBLISH each C{(channel, message)} at once (pipelined) and fire
        with each count or failure, in order.
        """
        connection = self._publisher.connection
        if connection is None:
            unreachable = Failure(
                txredisapi.ConnectionError("Redis is unreachable"))
            return succeed([unreachable] * len(messages))
        return connection.pipeline(
            [(b"PUBLISH", c, m) for c, m in messages]).addCallback(_outcomes)


def _outcomes(replies: list[Reply]) -> list[PublishOutcome]:
    return [reply if isinstance(reply, int) else Failure(
        reply if isinstance(reply, Exception) else
        txredisapi.ResponseError(repr(reply))) for reply in replies]
