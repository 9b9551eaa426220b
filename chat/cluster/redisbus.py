"""
The cluster's bus: Redis publish/subscribe through txredisapi.

Each user has a channel, C{chat:user:<id>}, as in the classic server; the
node holding the user's session subscribes to it.  A message is the
classic JSON event; a poke is the word C{poke}.  PUBLISH answers how many
subscribers got the message, which is what the service needs to know
(see L{chat.cluster.bus}).

txredisapi does not resubscribe by itself and waits forever for a reply
while Redis is down, so this module:

 - subscribes on one connection and publishes on another (a subscribed
   connection can do nothing else);
 - renews every subscription whenever the subscriber connects, one
   SUBSCRIBE per channel so each reply is matched to its request, and only
   then tells the service, which drains the offline messages stored while
   the bus was down;
 - fails a publish at once while the publisher is disconnected (the
   service then stores the message);
 - watches both links: a connection with commands outstanding on which
   nothing has arrived for L{COMMAND_TIMEOUT} is dropped, which fails
   those commands (a publish whose outcome is thus unknown is stored: a
   rare duplicate beats a loss), and an idle link is pinged every
   L{PING_SECONDS} so that a dead one is found before it is needed.
   A link that is merely slow (replies queued behind a flood of messages)
   keeps delivering data, and is kept.  One watchdog serves every
   command, rather than a timer per command.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Iterable, Optional, Sequence
from urllib.parse import urlsplit

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.cluster.bus import IBusReceiver, IMessageBus, PublishOutcome
from chat.core.messages import ChatEvent
from chat.cluster.resp import RESPReader

COMMAND_TIMEOUT = 2.0
PING_SECONDS = 2.0
WATCH_SECONDS = 0.5
RECONNECT_MAX_DELAY = 1.0
STOP_SECONDS = 5.0
"""How long a stopping bus waits for the messages still on their way to it,
and for the service to store them, before it disconnects."""
RECENT_SECONDS = 2.0
"""How long a message counted as taken by a subscriber is still kept, in
case Redis dies before sending it on."""
SUSPECT_SECONDS = 300.0
"""How long a node whose subscriber lost Redis remembers the messages it
had just received, to recognise stored copies of them."""
CHANNEL_PREFIX = b"chat:user:"
POKE = b"poke"


def channelOf(userId: int) -> bytes:
    return b"%s%d" % (CHANNEL_PREFIX, userId)


class _LinkMixin:
    """
    What both bus connections add to txredisapi's protocols: replies are
    parsed by L{RESPReader} (a whole read at once), and the link's last
    sign of progress is kept for the watchdog: data arriving, or a
    command sent when none was outstanding.
    """

    bus: "RedisBus"
    lastProgress = 0.0
    _reader: Optional[RESPReader] = None

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred:
        if not self.replyQueue.waiting:  # type: ignore[attr-defined]
            self.lastProgress = self.bus._reactor.seconds()
        return super().execute_command(  # type: ignore[misc]
            *args, **kwargs)

    def outstanding(self) -> bool:
        """Whether replies are awaited."""
        return bool(self.replyQueue.waiting)  # type: ignore[attr-defined]

    def isStalled(self, now: float) -> bool:
        """Commands are outstanding and nothing has come for too long."""
        return self.outstanding() and (
            now - self.lastProgress > COMMAND_TIMEOUT)

    def dataReceived(self, data: bytes, *args: Any) -> None:
        self.lastProgress = self.bus._reactor.seconds()
        if self._reader is None:
            self._reader = RESPReader()
        try:
            replies = self._reader.feed(data)
        except (txredisapi.InvalidResponse, ValueError) as e:
            self.bus._log.error("garbled reply from Redis: {error}", error=e)
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        for reply in replies:
            self.replyReceived(reply)  # type: ignore[attr-defined]


class _Publisher(_LinkMixin, txredisapi.RedisProtocol):
    """
    The publishing connection; tells the bus when it is usable.

    PUBLISH, the one command of the chat hot path, bypasses txredisapi's
    per-command machinery (two Deferreds and a DeferredQueue round each):
    L{publish} writes the command itself and queues a callback.  Replies
    come back in command order, so one FIFO, C{_order}, says for each
    reply whether it is a publish's (its callback) or a txredisapi
    command's (L{None}: handed to txredisapi as usual).
    """

    def connectionMade(self) -> Deferred:
        self._order: deque[Optional[Callable[[Any], None]]] = deque()
        d = super().connectionMade()
        d.addCallback(lambda _: self.bus._publisherReady(self))
        return d

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred:
        self._order.append(None)
        return super().execute_command(*args, **kwargs)

    def publish(self, channel: bytes, message: bytes,  # type: ignore
                callback: Callable[[Any], None]) -> None:
        """
        Send PUBLISH; C{callback} gets the count, a ResponseError, or a
        ConnectionError if the link is lost first.
        """
        if not self._order:
            self.lastProgress = self.bus._reactor.seconds()
        self._order.append(callback)
        self.transport.write(  # type: ignore[attr-defined]
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(channel), channel, len(message), message))

    def replyReceived(self, reply: Any) -> None:
        callback = self._order.popleft() if self._order else None
        if callback is None:
            super().replyReceived(reply)
        else:
            callback(reply)

    def outstanding(self) -> bool:
        return bool(self._order)

    def connectionLost(self, why: Failure) -> None:
        self.bus._connectionLost(self)
        lost = txredisapi.ConnectionError("Lost connection")
        order, self._order = self._order, deque()
        for callback in order:
            if callback is not None:
                callback(lost)
        super().connectionLost(why)


class _Subscriber(_LinkMixin, txredisapi.SubscriberProtocol):
    """The subscribed connection; hands each message to the bus."""

    def connectionMade(self) -> Deferred:
        d = super().connectionMade()
        d.addCallback(lambda _: self.bus._subscriberReady(self))
        return d

    def messageReceived(self, pattern: Any, channel: bytes,
                        message: bytes) -> None:
        self.bus._messageReceived(channel, message)

    def connectionLost(self, why: Failure) -> None:
        self.bus._connectionLost(self)
        super().connectionLost(why)


def _published(connection: _Publisher, channel: bytes,
               message: bytes) -> Deferred:
    """PUBLISH on C{connection}: fires with the count, or fails."""
    d: Deferred = Deferred()

    def replied(reply: Any) -> None:
        if isinstance(reply, int):
            d.callback(reply)
        else:
            d.errback(reply if isinstance(reply, Exception) else
                      txredisapi.ResponseError(repr(reply)))

    connection.publish(channel, message, replied)
    return d


def _factory(protocol: type, dbid: Optional[int],
             bus: "RedisBus") -> txredisapi.RedisFactory:
    factory = txredisapi.RedisFactory(
        None, dbid, 1, isLazy=True, charset=None, convertNumbers=True)
    factory.protocol = type(protocol.__name__, (protocol,), {"bus": bus})
    # Redis restarting should cost seconds, not txredisapi's default 10 s
    # backoff ceiling.
    factory.initialDelay = 0.2
    factory.maxDelay = RECONNECT_MAX_DELAY
    return factory


class SeenMessages:
    """
    The ids of the messages this node received from the bus lately.

    A node whose publisher lost Redis stores the messages it published in
    the last L{RECENT_SECONDS}, since Redis may have died before sending
    them on; those that did arrive here would then come twice.  So this
    node remembers what it received over that span, and when its own
    subscriber loses Redis it keeps those ids for L{SUSPECT_SECONDS}, long
    enough for the stored copies to be drained and recognised.
    """

    def __init__(self) -> None:
        self._recent: deque[tuple[float, bytes]] = deque()
        self._recentIds: set[bytes] = set()
        self._kept: deque[tuple[float, set[bytes]]] = deque()

    def add(self, messageId: bytes, now: float) -> None:
        recent = self._recent
        recent.append((now, messageId))
        self._recentIds.add(messageId)
        while recent[0][0] < now - RECENT_SECONDS - 1:
            self._recentIds.discard(recent.popleft()[1])

    def keepRecent(self, now: float) -> None:
        """The subscriber lost Redis: keep what arrived lately for longer."""
        while self._kept and self._kept[0][0] < now:
            self._kept.popleft()
        if self._recentIds:
            self._kept.append((now + SUSPECT_SECONDS, self._recentIds))
        self._recent, self._recentIds = deque(), set()

    def __contains__(self, messageId: bytes) -> bool:
        return messageId in self._recentIds or any(
            messageId in ids for _, ids in self._kept)


@implementer(IMessageBus)
class RedisBus(Service):
    _log = Logger()

    def __init__(self, host: str, port: int, dbid: Optional[int],
                 reactor: Any) -> None:
        self._host, self._port, self._dbid = host, port, dbid
        self._reactor = reactor
        self._receiver: Optional[IBusReceiver] = None
        self._wanted: set[int] = set()
        self._publisher: Optional[_Publisher] = None
        self._subscriber: Optional[_Subscriber] = None
        self._factories: list[txredisapi.RedisFactory] = []
        self._watchdog: Optional[LoopingCall] = None
        self._everConnected = False
        self._unpoked: set[int] = set()
        self._recent: deque[tuple[float, int, bytes]] = deque()
        self._token = os.urandom(6).hex().encode() + b"-"
        self._sent = 0
        self._seen = SeenMessages()
        self._storing: set[Deferred] = set()

    @classmethod
    def fromURL(cls, url: str, reactor: Any) -> "RedisBus":
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
        super().startService()
        endpoint = TCP4ClientEndpoint(self._reactor, self._host, self._port,
                                      timeout=COMMAND_TIMEOUT)
        for protocol in (_Publisher, _Subscriber):
            factory = _factory(protocol, self._dbid, self)
            factory.startConnecting(endpoint)
            self._factories.append(factory)
        self._watchdog = LoopingCall(self._watch)
        self._watchdog.clock = self._reactor
        self._watchdog.start(WATCH_SECONDS, now=False)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()

        def disconnect(_: Any) -> Deferred:
            factories, self._factories = self._factories, []
            return DeferredList([f.disconnect() for f in factories],
                                consumeErrors=True)

        return self._drainSubscriber().addBoth(disconnect)

    def _drainSubscriber(self) -> Deferred:
        """
        Before a clean stop, once the service has let its sessions go:
        unsubscribe from every channel and wait until Redis confirms, so
        that every message it sent here first (each one a PUBLISH counted
        as taken by this node) has been handed to the service; then wait
        until the service has stored those.  Messages published later find
        no subscriber here, and their senders store them.  Closing the
        link at once would drop whatever was still unread in it.
        """
        wanted, self._wanted = sorted(self._wanted), set()
        subscriber = self._subscriber
        d = DeferredList([
            self._command(subscriber, "unsubscribe", [channelOf(u)])
            for u in (wanted if subscriber is not None else ())],
            consumeErrors=True)
        d.addCallback(lambda _: DeferredList(list(self._storing),
                                             consumeErrors=True))
        # Bounded, without cancelling: the commands and stores may still
        # complete while the links close.
        finished = Deferred()

        def timedOut() -> None:
            self._log.warn("stopping: gave up waiting after {s} s for the "
                           "messages on their way here", s=STOP_SECONDS)
            finished.callback(None)

        timer = self._reactor.callLater(STOP_SECONDS, timedOut)

        def drained(_: Any) -> None:
            if timer.active():
                timer.cancel()
                finished.callback(None)

        d.addBoth(drained)
        return finished

    # Connections --------------------------------------------------------

    def _command(self, connection: Any, method: str, *args: Any) -> Deferred:
        """
        Send a command; its Deferred fails if the link is lost first (the
        watchdog drops a stalled link, so it never waits forever).
        """
        try:
            return getattr(connection, method)(*args)
        except txredisapi.ConnectionError as e:
            return fail(e)

    def _watch(self) -> None:
        """
        Drop stalled links (their outstanding commands fail and they are
        rebuilt), and ping idle ones.
        """
        now = self._reactor.seconds()
        for connection in (self._publisher, self._subscriber):
            if connection is None or connection.transport is None:
                continue
            if connection.isStalled(now):
                self._log.warn("Redis link silent for {s} s; reconnecting",
                               s=COMMAND_TIMEOUT)
                connection.transport.abortConnection()
            elif not connection.outstanding() and \
                    now - connection.lastProgress > PING_SECONDS:
                self._command(connection, "ping").addErrback(
                    lambda f: None)  # a lost link is reported by itself

    def _publisherReady(self, connection: _Publisher) -> None:
        self._log.info("Redis publisher connected to {host}:{port}",
                       host=self._host, port=self._port)
        self._publisher = connection
        if self._unpoked:
            # Pokes lost while Redis was away: a node that drained when its
            # subscriber came back may have done so before we stored these.
            unpoked, self._unpoked = self._unpoked, set()
            self.poke(unpoked)

    def _subscriberReady(self, connection: _Subscriber) -> Deferred:
        self._subscriber = connection
        wanted = sorted(self._wanted)
        self._log.info("Redis subscriber connected; renewing {n} "
                       "subscriptions", n=len(wanted))
        d = DeferredList([
            self._command(connection, "subscribe", [channelOf(u)])
            for u in wanted], consumeErrors=True)

        def renewed(results: list[tuple[bool, Any]]) -> None:
            if not all(ok for ok, _ in results):
                return  # the connection was dropped; the next one retries
            if self._everConnected and self._receiver is not None:
                self._receiver.busReconnected()
            self._everConnected = True

        return d.addCallback(renewed)

    def _connectionLost(self, connection: Any) -> None:
        if connection is self._publisher:
            self._publisher = None
            self._log.warn("Redis publisher connection lost")
            self._recentUncertain()
        elif connection is self._subscriber:
            self._subscriber = None
            self._log.warn("Redis subscriber connection lost")
            self._seen.keepRecent(self._reactor.seconds())

    # Subscriptions ------------------------------------------------------

    def subscribe(self, userId: int) -> Deferred:
        self._wanted.add(userId)
        if self._subscriber is None:
            return fail(txredisapi.ConnectionError("Redis is unreachable"))
        return self._command(self._subscriber, "subscribe",
                             [channelOf(userId)])

    def unsubscribe(self, userId: int) -> Deferred:
        self._wanted.discard(userId)
        if self._subscriber is None:
            return succeed(None)  # nothing to undo: renewal skips it
        return self._command(self._subscriber, "unsubscribe",
                             [channelOf(userId)])

    def _messageReceived(self, channel: bytes, message: bytes) -> None:
        receiver = self._receiver
        if receiver is None or not channel.startswith(CHANNEL_PREFIX):
            return
        try:
            userId = int(channel[len(CHANNEL_PREFIX):])
            if message == POKE:
                receiver.pokeArrived(userId)
                return
            messageId, json = message[1:].split(b" ", 1)
            self._seen.add(messageId, self._reactor.seconds())
            storing = receiver.eventArrived(userId, ChatEvent.fromJSON(json))
            if isinstance(storing, Deferred):
                # Its session is gone and it is being stored; a stop waits.
                self._storing.add(storing)
                storing.addBoth(self._stored, storing)
        except Exception:
            self._log.failure("handling a bus message on {channel!r}",
                              channel=channel)

    def _stored(self, result: Any, storing: Deferred) -> Any:
        self._storing.discard(storing)
        return result

    def unframeStored(self, payload: bytes) -> Optional[bytes]:
        if not payload.startswith(b"#"):
            return payload
        messageId, json = payload[1:].split(b" ", 1)
        return None if messageId in self._seen else json

    # Publishing ---------------------------------------------------------

    def publish(self, targets: Sequence[tuple[int, ChatEvent]]) -> Deferred:
        framed = [(userId, self._frame(event)) for userId, event in targets]

        def remember(outcomes: list[PublishOutcome]) -> list[PublishOutcome]:
            for (userId, message), outcome in zip(framed, outcomes):
                if isinstance(outcome, int) and outcome > 0:
                    self._remember(userId, message)
            return outcomes

        return self._publishAll(
            [(channelOf(u), m) for u, m in framed]).addCallback(remember)

    def _frame(self, event: ChatEvent) -> bytes:
        """
        A chat message as the bus carries it: C{#<id> <event JSON>}, the
        id unique in the cluster, so that a copy stored because its
        delivery was uncertain can be recognised where the original did
        arrive.
        """
        self._sent += 1
        return b"#%s%x %s" % (self._token, self._sent, event.toJSON())

    def _remember(self, userId: int, message: bytes) -> None:
        """
        Keep a message Redis counted as taken for L{RECENT_SECONDS}: until
        the subscriber has read it from Redis, a Redis crash loses it.
        """
        now = self._reactor.seconds()
        recent = self._recent
        recent.append((now, userId, message))
        while recent[0][0] < now - RECENT_SECONDS:
            recent.popleft()

    def _recentUncertain(self) -> None:
        """
        The publisher's link is gone while running: Redis may have died
        with recent messages still queued for their subscribers, though it
        had counted them as taken.  Have the service store them (a
        duplicate, for those that did arrive, beats a loss: PROTOCOL.md
        section 5).
        """
        now = self._reactor.seconds()
        recent, self._recent = self._recent, deque()
        uncertain = [(u, m) for t, u, m in recent
                     if t >= now - RECENT_SECONDS]
        if uncertain and self.running and self._receiver is not None:
            self._log.warn("storing the {n} messages published in the last "
                           "{s} s, whose delivery Redis may not have "
                           "finished", n=len(uncertain), s=RECENT_SECONDS)
            self._receiver.deliveryUncertain(uncertain)

    def poke(self, userIds: Iterable[int]) -> Deferred:
        users = list(userIds)

        def retryLater(outcomes: list[PublishOutcome]) -> None:
            for userId, outcome in zip(users, outcomes):
                if isinstance(outcome, Failure):
                    # Poked again once the publisher is back.
                    self._unpoked.add(userId)

        return self._publishAll(
            [(channelOf(u), POKE) for u in users]).addCallback(retryLater)

    def _publishAll(self, messages: list[tuple[bytes, bytes]]) -> Deferred:
        """
        Write every PUBLISH at once (pipelined) and fire with each count
        or failure, in order.  One deadline covers the batch: past it,
        every outcome not yet known is a failure (the caller stores).
        """
        connection = self._publisher
        if connection is None:
            unreachable = Failure(
                txredisapi.ConnectionError("Redis is unreachable"))
            return succeed([unreachable] * len(messages))
        batch = DeferredList([
            _published(connection, channel, payload)
            for channel, payload in messages], consumeErrors=True)

        def outcomes(results: Any) -> list[PublishOutcome]:
            if isinstance(results, Failure):
                return [results] * len(messages)
            return [value if ok and isinstance(value, int) else (
                value if isinstance(value, Failure) else Failure(
                    txredisapi.ResponseError(repr(value))))
                for ok, value in results]

        return batch.addBoth(outcomes)

    def publishOne(self, userId: int, event: ChatEvent) -> Deferred:
        connection = self._publisher
        if connection is None:
            return fail(txredisapi.ConnectionError("Redis is unreachable"))
        message = self._frame(event)

        def remember(count: int) -> int:
            if count > 0:
                self._remember(userId, message)
            return count

        return _published(connection, channelOf(userId), message).addCallback(
            remember)
