"""
The subscribed connection to Redis: txredisapi's subscriber protocol,
which matches SUBSCRIBE replies to requests and tells messages apart.

Overridden, its public protocol methods only: C{dataReceived}, to parse a
whole read at once (L{chat.cluster.resp}: on the receiving node at 8,000
msgs/s, 59 % of a core before, 25 % after); and C{connectionMade},
C{connectionLost} and C{messageReceived}, to tell its listener.  It keeps
its own count of outstanding requests for the bus's watchdog instead of
reading txredisapi's reply queue.

This module owns that one link; it never interprets a channel or a
message (its listener, the Redis bus, does).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import txredisapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from chat.cluster.redisclient import RECONNECT_MAX_DELAY
from chat.cluster.resp import RESPReader


class ISubscriberListener(Interface):
    """Who hears what the subscribed connection hears."""

    clock: IReactorTime

    def subscriberReady(subscriber: "Subscriber") -> Optional[Deferred[None]]:
        """Connected (and its database selected): subscribe."""

    def subscriberLost(subscriber: "Subscriber") -> None:
        """The connection is gone; every subscription with it."""

    def messageReceived(channel: bytes, message: bytes) -> None:
        """A message published to a channel subscribed here."""


class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc] # txredisapi is untyped
    """
    @ivar listener: set by the factory.
    @ivar lastProgress: when the link last showed progress (data arrived,
        or a request was sent while none was outstanding).
    """

    _log = Logger()
    listener: ISubscriberListener
    lastProgress = 0.0
    _outstanding = 0
    _reader: Optional[RESPReader] = None

    def connectionMade(self) -> Deferred[Any]:
        d: Deferred[Any] = super().connectionMade()
        return d.addCallback(lambda _: self.listener.subscriberReady(self))

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self.lastProgress = self.listener.clock.seconds()
        if self._reader is None:
            self._reader = RESPReader()
        try:
            replies = self._reader.feed(data)
        except (txredisapi.InvalidResponse, ValueError) as e:
            self._log.error("garbled reply from Redis: {error}", error=e)
            self.abort()
            return
        for reply in replies:
            self.replyReceived(reply)

    def messageReceived(self, pattern: Any, channel: bytes,
                        message: bytes) -> None:
        self.listener.messageReceived(channel, message)

    def connectionLost(self, why: Failure) -> None:
        self.listener.subscriberLost(self)
        super().connectionLost(why)

    def request(self, command: str, channel: bytes) -> Deferred[Any]:
        """
        C{subscribe} or C{unsubscribe} one channel; fails if the link is
        lost first (the bus's watchdog drops a stalled link, so it never
        waits forever).
        """
        method = self.subscribe if command == "subscribe" else self.unsubscribe
        return self._tracked(method, [channel])

    def ping(self) -> Deferred[Any]:
        return self._tracked(super().ping)

    def _tracked(self, send: Callable[..., Deferred[Any]],
                 *args: Any) -> Deferred[Any]:
        """Call C{send(*args)}, counting the command it sends as
        outstanding until answered."""
        if not self._outstanding:
            self.lastProgress = self.listener.clock.seconds()
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


class SubscriberFactory(txredisapi.RedisFactory):  # type: ignore[misc] # txredisapi is untyped
    """txredisapi's factory, building L{Subscriber}s that know their
    listener."""

    protocol = Subscriber
    # Redis restarting should cost seconds, not txredisapi's default 10 s
    # backoff ceiling.
    initialDelay = 0.2
    maxDelay = RECONNECT_MAX_DELAY

    def __init__(self, listener: ISubscriberListener,
                 dbid: Optional[int]) -> None:
        super().__init__(None, dbid, 1, isLazy=True, charset=None,
                         convertNumbers=True)
        self._listener = listener

    def buildProtocol(self, addr: Any) -> Subscriber:
        protocol: Subscriber = super().buildProtocol(addr)
        protocol.listener = self._listener
        return protocol
