"""
Our own connection to Redis for commands: PUBLISH on the chat's hot path,
and whatever else a node asks of Redis (rate limit counters, pings).

txredisapi's command path costs two Deferreds and a DeferredQueue round
per command; PUBLISH is once per message sent across nodes, and with
txredisapi's path it was most of the sending node's time (a 20-pair cross
flood went from 15,600 to 53,600 msgs/s without it; the sending node's CPU
at 8,000 msgs/s from 46 % to 38 %).  So commands go out here, pipelined:
each reply answers the oldest command still waiting, one FIFO of
callbacks, and a batch of commands costs one write and one Deferred.
Replies are parsed by L{chat.cluster.resp}.

This module owns one link and its reconnection (Twisted's
L{ClientService}, with a short backoff: Redis restarting should cost
seconds); it knows no channel and no chat message.  Subscribing stays
with txredisapi's subscriber (L{chat.cluster.redisbus}).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional, Sequence, cast

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IProtocol, IReactorTime, IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from chat.cluster.resp import Argument, RESPReader, encodeCommand

RECONNECT_MAX_DELAY = 1.0
"""Seconds between reconnection attempts at most."""

Reply = Any
"""A parsed reply: int, bytes, str, None, a list of those, or a
C{txredisapi.ResponseError} (or C{ConnectionError} for a lost link)."""


class _Replies:
    """The replies of one pipelined batch, fired together once all came."""

    __slots__ = ("deferred", "_replies", "_count")

    def __init__(self, count: int) -> None:
        self.deferred: Deferred[list[Reply]] = Deferred()
        self._replies: list[Reply] = []
        self._count = count

    def add(self, reply: Reply) -> None:
        self._replies.append(reply)
        if len(self._replies) == self._count:
            self.deferred.callback(self._replies)


class RedisConnection(Protocol):
    """
    One connection to Redis that runs commands pipelined.

    @ivar lastProgress: when the link last showed progress (data arrived,
        or a command was sent while none was waiting), by the client's
        clock; the bus's watchdog judges a stalled link by it.
    """

    _log = Logger()

    def __init__(self, client: "RedisClient") -> None:
        self._client = client
        self._reader = RESPReader()
        self._waiting: deque[Callable[[Reply], None]] = deque()
        self.lastProgress = 0.0

    def command(self, *args: Argument) -> Deferred[Reply]:
        """
        Run one command: fires with its reply, or fails with the error
        Redis answered or with C{txredisapi.ConnectionError} when the link
        is lost first.
        """
        d: Deferred[Reply] = Deferred()

        def replied(reply: Reply) -> None:
            if isinstance(reply, Exception):
                d.errback(Failure(reply))
            else:
                d.callback(reply)

        self._send((args,), replied)
        return d

    def pipeline(self,
                 commands: Sequence[Sequence[Argument]]) -> Deferred[list[Reply]]:
        """
        Run C{commands} in one write.  Fires with one reply per command,
        in order, errors as values (a lost link answers each command still
        waiting with C{txredisapi.ConnectionError}); never fails.
        """
        if not commands:
            return succeed([])
        replies = _Replies(len(commands))
        self._send(commands, replies.add)
        return replies.deferred

    def _send(self, commands: Sequence[Sequence[Argument]],
              callback: Callable[[Reply], None]) -> None:
        if not self._waiting:
            self.lastProgress = self._client.clock.seconds()
        self._waiting.extend([callback] * len(commands))
        self.transport.write(  # type: ignore[union-attr] # only called while connected
            b"".join([encodeCommand(*c) for c in commands]))

    def prepared(self) -> None:
        """
        Ready for use: tell the client.  (Called through the proxy that
        L{ClientService} wraps around a connection, so that the client
        holds the connection itself.)
        """
        self._client.usable(self)

    def outstanding(self) -> bool:
        """Whether replies are awaited."""
        return bool(self._waiting)

    def ping(self) -> Deferred[Reply]:
        return self.command("PING")

    def abort(self) -> None:
        """Drop the link at once (the commands waiting fail)."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined] # TCP transports provide it

    def dataReceived(self, data: bytes) -> None:
        self.lastProgress = self._client.clock.seconds()
        try:
            replies = self._reader.feed(data)
        except (txredisapi.InvalidResponse, ValueError) as e:
            self._log.error("garbled reply from Redis: {error}", error=e)
            self.abort()
            return
        waiting = self._waiting
        for reply in replies:
            if not waiting:
                self._log.error("a reply from Redis that no command asked "
                                "for: {reply!r}", reply=reply)
                self.abort()
                return
            waiting.popleft()(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        lost = txredisapi.ConnectionError("Lost connection")
        waiting, self._waiting = self._waiting, deque()
        for callback in waiting:
            callback(lost)
        self._client.connectionLost(self)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, client: "RedisClient") -> None:
        self._client = client

    def buildProtocol(self, addr: object) -> RedisConnection:
        return RedisConnection(self._client)


class RedisClient(Service):
    """
    Keeps one L{RedisConnection} up while running, selecting the database
    on every connect before the connection is used.

    @ivar connection: the usable connection, or L{None} while there is
        none.
    @ivar clock: the reactor's clock.
    """

    def __init__(self, reactor: IReactorTime, endpoint: IStreamClientEndpoint,
                 dbid: Optional[int], ready: Callable[[RedisConnection], None],
                 lost: Callable[[RedisConnection], None]) -> None:
        self.clock = reactor
        self._endpoint = endpoint
        self._dbid = dbid
        self._ready = ready
        self._lost = lost
        self.connection: Optional[RedisConnection] = None
        self._service: Optional[ClientService] = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._service = ClientService(
            self._endpoint, _ConnectionFactory(self), clock=self.clock,
            retryPolicy=backoffPolicy(initialDelay=0.2,
                                      maxDelay=RECONNECT_MAX_DELAY),
            prepareConnection=self._prepare)
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        service, self._service = self._service, None
        if service is None:
            return succeed(None)
        stopped: Deferred[None] = service.stopService()
        return stopped

    def _prepare(self, proxy: IProtocol) -> Deferred[None]:
        """Select the database, then hand the connection out."""
        # ClientService hands over a proxy of the connection, which
        # forwards every attribute to it.
        connection = cast(RedisConnection, proxy)
        if self._dbid is None:
            connection.prepared()
            return succeed(None)
        return connection.command("SELECT", self._dbid).addCallback(
            lambda _: connection.prepared())

    def usable(self, connection: RedisConnection) -> None:
        self.connection = connection
        self._ready(connection)

    def connectionLost(self, connection: RedisConnection) -> None:
        if connection is self.connection:
            self.connection = None
            self._lost(connection)

    def command(self, *args: Argument) -> Deferred[Reply]:
        """L{RedisConnection.command} on the current connection; fails at
        once while there is none."""
        connection = self.connection
        if connection is None:
            return fail(txredisapi.ConnectionError("Redis is unreachable"))
        return connection.command(*args)
