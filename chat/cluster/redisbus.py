"""
The cluster's bus: Redis publish/subscribe.

Each user has a channel, C{chat:user:<id>}, as in the classic server; the
node holding the user's session subscribes to it.  A chat message on the
wire is C{#<message id> <event JSON>}; a poke is the word C{poke}.
PUBLISH answers how many subscribers got the message, which is what the
router needs to know (see L{chat.cluster.bus}).

This module owns the two links to Redis and what crosses them; it never
decides where a message goes (the router does) and never stores one (it
hands it back to the receiver):

 - it subscribes on one connection, txredisapi's subscriber protocol, and
   publishes on another, our own L{chat.cluster.redisclient} (a
   subscribed connection can do nothing else);
 - txredisapi does not resubscribe by itself: every subscription is
   renewed whenever the subscriber connects, one SUBSCRIBE per channel so
   each reply is matched to its request, and only then is the receiver
   told, which drains the offline messages stored while the bus was down;
 - a publish fails at once while the publisher is disconnected (the router
   then stores the message);
 - one watchdog watches both links: a link with commands outstanding on
   which nothing has arrived for L{COMMAND_TIMEOUT} is dropped, which
   fails those commands (a publish whose outcome is thus unknown is
   stored: a rare duplicate beats a loss), and an idle link is pinged
   every L{PING_SECONDS} so that a dead one is found before it is needed.
   A link that is merely slow (replies queued behind a flood of messages)
   keeps delivering data, and is kept;
 - messages Redis counted as taken stay uncertain for
   L{chat.cluster.dedup.UNCERTAIN_SECONDS}: if the publisher's link drops
   meanwhile, Redis may have died before sending them on, and they are
   handed back to be stored as uncertain copies.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence
from urllib.parse import urlsplit

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred, DeferredList, fail, succeed,
)
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.cluster.bus import IBusReceiver, IMessageBus, PublishOutcome
from chat.cluster.dedup import UNCERTAIN_SECONDS, CountedPublishes
from chat.cluster.redisclient import (
    RECONNECT_MAX_DELAY, RedisClient, RedisConnection, Reply,
)
from chat.cluster.resp import RESPReader
from chat.core.messages import ChatEvent

COMMAND_TIMEOUT = 2.0
PING_SECONDS = 2.0
WATCH_SECONDS = 0.5
STOP_SECONDS = 5.0
"""How long a stopping bus waits for the messages still on their way to it,
and for the receiver to store them, before it disconnects."""
CHANNEL_PREFIX = b"chat:user:"
POKE = b"poke"


def channelOf(userId: int) -> bytes:
    return b"%s%d" % (CHANNEL_PREFIX, userId)


def frame(event: ChatEvent) -> bytes:
    """A chat message as the bus carries it: its id, then its JSON."""
    assert event.messageId is not None, "the router names every message"
    return b"#%s %s" % (event.messageId, event.toJSON())


def unframe(message: bytes) -> ChatEvent:
    """The event of a L{frame}d message, with its id."""
    messageId, json = message[1:].split(b" ", 1)
    return ChatEvent.fromJSON(json, messageId)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc] # txredisapi is untyped
    """
    The subscribed connection: txredisapi's subscriber, which matches
    SUBSCRIBE replies to requests and tells messages apart.

    Overridden, its public protocol methods only: C{dataReceived}, to
    parse a whole read at once (L{chat.cluster.resp}: the receiving node's
    CPU at 8,000 msgs/s went from 59 % to 25 % of a core); and
    C{connectionMade}, C{connectionLost} and C{messageReceived}, to tell
    the bus.  It keeps its own count of outstanding requests for the
    watchdog instead of reading txredisapi's reply queue.

    @ivar bus: set by the factory.
    """

    bus: "RedisBus"
    lastProgress = 0.0
    _outstanding = 0
    _reader: Optional[RESPReader] = None

    def connectionMade(self) -> Deferred[Any]:
        d: Deferred[Any] = super().connectionMade()
        return d.addCallback(lambda _: self.bus._subscriberReady(self))

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self.lastProgress = self.bus.clock.seconds()
        if self._reader is None:
            self._reader = RESPReader()
        try:
            replies = self._reader.feed(data)
        except (txredisapi.InvalidResponse, ValueError) as e:
            self.bus._log.error("garbled reply from Redis: {error}", error=e)
            self.abort()
            return
        for reply in replies:
            self.replyReceived(reply)

    def messageReceived(self, pattern: Any, channel: bytes,
                        message: bytes) -> None:
        self.bus._messageReceived(channel, message)

    def connectionLost(self, why: Failure) -> None:
        self.bus._subscriberLost(self)
        super().connectionLost(why)

    def request(self, command: str, userId: int) -> Deferred[Any]:
        """
        C{subscribe} or C{unsubscribe} one user's channel; fails if the
        link is lost first (the watchdog drops a stalled link, so it never
        waits forever).
        """
        method = self.subscribe if command == "subscribe" else self.unsubscribe
        return self._tracked(method, [channelOf(userId)])

    def ping(self) -> Deferred[Any]:
        return self._tracked(super().ping)

    def _tracked(self, send: Callable[..., Deferred[Any]],
                 *args: Any) -> Deferred[Any]:
        """Call C{send(*args)}, counting the command it sends as
        outstanding until answered."""
        if not self._outstanding:
            self.lastProgress = self.bus.clock.seconds()
        try:
            d = send(*args)
        except txredisapi.ConnectionError as e:
            return fail(e)
        self._outstanding += 1

        def answered(result: Any) -> Any:
            self._outstanding -= 1
            return result

        return d.addBoth(answered)

    def outstanding(self) -> bool:
        return self._outstanding > 0

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


class _SubscriberFactory(txredisapi.RedisFactory):  # type: ignore[misc] # txredisapi is untyped
    """txredisapi's factory, building L{_Subscriber}s that know the bus."""

    protocol = _Subscriber
    # Redis restarting should cost seconds, not txredisapi's default 10 s
    # backoff ceiling.
    initialDelay = 0.2
    maxDelay = RECONNECT_MAX_DELAY

    def __init__(self, bus: "RedisBus", dbid: Optional[int]) -> None:
        super().__init__(None, dbid, 1, isLazy=True, charset=None,
                         convertNumbers=True)
        self._bus = bus

    def buildProtocol(self, addr: Any) -> _Subscriber:
        protocol: _Subscriber = super().buildProtocol(addr)
        protocol.bus = self._bus
        return protocol


@implementer(IMessageBus)
class RedisBus(Service):
    """
    @ivar clock: the reactor's clock, for the watchdog and the uncertain
        window.
    """

    _log = Logger()

    def __init__(self, host: str, port: int, dbid: Optional[int],
                 reactor: IReactorTime) -> None:
        self.clock = reactor
        self._dbid = dbid
        self._endpoint = TCP4ClientEndpoint(reactor, host, port,
                                            timeout=COMMAND_TIMEOUT)
        self._where = f"{host}:{port}"
        self._receiver: Optional[IBusReceiver] = None
        self._wanted: set[int] = set()
        self._publisher = RedisClient(reactor, self._endpoint, dbid,
                                      self._publisherReady,
                                      self._publisherLost)
        self._subscriber: Optional[_Subscriber] = None
        self._subscriberFactory: Optional[_SubscriberFactory] = None
        self._watchdog: Optional[LoopingCall] = None
        self._everConnected = False
        self._unpoked: set[int] = set()
        self._counted = CountedPublishes()
        self._storing: set[Deferred[None]] = set()
        self._unsubscribing: set[Deferred[Any]] = set()

    @classmethod
    def fromURL(cls, url: str, reactor: IReactorTime) -> "RedisBus":
        """A bus for C{redis://HOST:PORT[/DB]}."""
        parts = urlsplit(url)
        path = parts.path.strip("/")
        dbid = int(path) if path else None
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, dbid,
                   reactor)

    def setReceiver(self, receiver: IBusReceiver) -> None:
        self._receiver = receiver

    # Service ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._publisher.startService()
        self._subscriberFactory = _SubscriberFactory(self, self._dbid)
        self._subscriberFactory.startConnecting(self._endpoint)
        self._watchdog = LoopingCall(self._watch)
        self._watchdog.clock = self.clock
        self._watchdog.start(WATCH_SECONDS, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()

        def disconnect(_: object) -> Deferred[Any]:
            factory, self._subscriberFactory = self._subscriberFactory, None
            return DeferredList([
                self._publisher.stopService(),
                factory.disconnect() if factory is not None else succeed(None),
            ], consumeErrors=True)

        return self._drainSubscriber().addBoth(disconnect).addCallback(
            lambda _: None)

    def _drainSubscriber(self) -> Deferred[None]:
        """
        Before a clean stop, once the server has let its sessions go (and
        so unsubscribed them): unsubscribe from whatever channel is left
        and wait until Redis confirms every unsubscription, so that every
        message it sent here first (each one a PUBLISH counted as taken by
        this node) has been handed to the receiver; then wait until the
        receiver has stored those.  Messages published later find no
        subscriber here, and their senders store them.  Closing the link
        at once would drop whatever was still unread in it.
        """
        for userId in sorted(self._wanted):
            self.unsubscribe(userId)
        d = DeferredList(list(self._unsubscribing), consumeErrors=True)
        d.addCallback(lambda _: DeferredList(list(self._storing),
                                             consumeErrors=True))
        # Bounded, without cancelling: the commands and stores may still
        # complete while the links close.
        finished: Deferred[None] = Deferred()

        def timedOut() -> None:
            self._log.warn("stopping: gave up waiting after {s} s for the "
                           "messages on their way here", s=STOP_SECONDS)
            finished.callback(None)

        timer = self.clock.callLater(STOP_SECONDS, timedOut)

        def drained(_: object) -> None:
            if timer.active():
                timer.cancel()
                finished.callback(None)

        d.addBoth(drained)
        return finished

    # Links --------------------------------------------------------------

    def _links(self) -> list[_Subscriber | RedisConnection]:
        return [link for link in (self._publisher.connection,
                                  self._subscriber) if link is not None]

    def _watch(self) -> None:
        """
        Drop stalled links (their outstanding commands fail and they are
        rebuilt), and ping idle ones.
        """
        now = self.clock.seconds()
        for link in self._links():
            silent = now - link.lastProgress
            if link.outstanding() and silent > COMMAND_TIMEOUT:
                self._log.warn("Redis link silent for {s} s; reconnecting",
                               s=COMMAND_TIMEOUT)
                link.abort()
            elif not link.outstanding() and silent > PING_SECONDS:
                # A lost link is reported by itself.
                link.ping().addErrback(lambda f: None)

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
        self._countedUncertain()

    def _subscriberReady(self, connection: _Subscriber) -> Deferred[None]:
        self._subscriber = connection
        wanted = sorted(self._wanted)
        self._log.info("Redis subscriber connected; renewing {n} "
                       "subscriptions", n=len(wanted))
        d = DeferredList([connection.request("subscribe", u) for u in wanted],
                         consumeErrors=True)

        def renewed(results: list[tuple[bool, Any]]) -> None:
            if not all(ok for ok, _ in results):
                return  # the connection was dropped; the next one retries
            if self._everConnected and self._receiver is not None:
                self._receiver.busReconnected()
            self._everConnected = True

        return d.addCallback(renewed)

    def _subscriberLost(self, connection: _Subscriber) -> None:
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
        return self._subscriber.request("subscribe", userId)

    def unsubscribe(self, userId: int) -> Deferred[object]:
        self._wanted.discard(userId)
        if self._subscriber is None:
            return succeed(None)  # nothing to undo: renewal skips it
        d = self._subscriber.request("unsubscribe", userId)
        # A stop waits for every unsubscription Redis has not confirmed.
        self._unsubscribing.add(d)
        d.addBoth(self._settled, self._unsubscribing, d)
        return d

    def _messageReceived(self, channel: bytes, message: bytes) -> None:
        receiver = self._receiver
        if receiver is None or not channel.startswith(CHANNEL_PREFIX):
            return
        try:
            userId = int(channel[len(CHANNEL_PREFIX):])
            if message == POKE:
                receiver.pokeArrived(userId)
                return
            storing = receiver.eventArrived(userId, unframe(message))
            if storing is not None:
                # Its session is gone and it is being stored; a stop waits.
                self._storing.add(storing)
                storing.addBoth(self._settled, self._storing, storing)
        except Exception:
            self._log.failure("handling a bus message on {channel!r}",
                              channel=channel)

    @staticmethod
    def _settled(result: object, pending: set[Any], d: Deferred[Any]) -> object:
        pending.discard(d)
        return result

    # Publishing ---------------------------------------------------------

    def publish(self, userIds: Sequence[int],
                event: ChatEvent) -> Deferred[list[PublishOutcome]]:
        message = frame(event)

        def counted(outcomes: list[PublishOutcome]) -> list[PublishOutcome]:
            now = self.clock.seconds()
            for userId, outcome in zip(userIds, outcomes):
                if isinstance(outcome, int) and outcome > 0:
                    self._counted.add(now, userId, event)
            return outcomes

        return self._publishAll(
            [channelOf(u) for u in userIds], message).addCallback(counted)

    def _countedUncertain(self) -> None:
        """
        The publisher's link is gone while running: Redis may have died
        with recent messages still queued for their subscribers, though it
        had counted them as taken.  Have the receiver store them (a
        duplicate, for those that did arrive, beats a loss: PROTOCOL.md
        section 5).
        """
        uncertain = self._counted.takeUncertain(self.clock.seconds())
        if uncertain and self.running and self._receiver is not None:
            self._log.warn("storing the {n} messages published in the last "
                           "{s} s, whose delivery Redis may not have "
                           "finished", n=len(uncertain), s=UNCERTAIN_SECONDS)
            self._receiver.deliveryUncertain(uncertain)

    def poke(self, userIds: Iterable[int]) -> Deferred[None]:
        users = list(userIds)

        def retryLater(outcomes: list[PublishOutcome]) -> None:
            for userId, outcome in zip(users, outcomes):
                if isinstance(outcome, Failure):
                    # Poked again once the publisher is back.
                    self._unpoked.add(userId)

        return self._publishAll(
            [channelOf(u) for u in users], POKE).addCallback(retryLater)

    def _publishAll(self, channels: list[bytes],
                    message: bytes) -> Deferred[list[PublishOutcome]]:
        """
        PUBLISH C{message} to every channel at once (pipelined) and fire
        with each count or failure, in order.
        """
        connection = self._publisher.connection
        if connection is None:
            unreachable = Failure(
                txredisapi.ConnectionError("Redis is unreachable"))
            return succeed([unreachable] * len(channels))
        return connection.pipeline(
            [(b"PUBLISH", c, message) for c in channels]).addCallback(
                _outcomes)


def _outcomes(replies: list[Reply]) -> list[PublishOutcome]:
    return [reply if isinstance(reply, int) else Failure(
        reply if isinstance(reply, Exception) else
        txredisapi.ResponseError(repr(reply))) for reply in replies]
