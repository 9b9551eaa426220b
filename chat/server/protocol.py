"""
One client connection: framing, dialect, the order of replies, and the
session of the user logged in on it.

The protocol turns bytes into requests through its dialect, hands them to
the service one at a time (so replies keep the order of the requests) and
writes what comes back; to the service it is an L{ISession}.  It owns the
connection's state and what is written to it; it never runs SQL and knows
no business rule.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any, Optional, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.core.errors import ChatError, LineTooLong, Unavailable
from chat.core.messages import (
    Bye, ChatEvent, Help, HelpText, LoggedIn, Login, Quit, Reply, Request,
)
from chat.logs import logFailure
from chat.server.session import IChatService, ISession
from chat.wire.dialect import IDialect, Rejected
from chat.wire.framing import MessageSplitter, MessageTooLong
from chat.wire.jsondialect import CLASSIC, JSON
from chat.wire.textdialect import TEXT

_BLANK = b" \t"
_PAUSE_AT = 64
"""Queued requests at which the connection stops reading, for backpressure."""

Queued = Union[bytes, MessageTooLong]
"""A client message waiting to be handled, or the overlong one that ends
the connection."""


def chooseDialect(firstMessage: bytes, endedInNUL: bool) -> IDialect:
    """
    The dialect a connection's first non-blank message selects.
    """
    if firstMessage.lstrip(_BLANK).startswith(b"{"):
        return CLASSIC if endedInNUL else JSON
    return TEXT


@implementer(ISession)
class ChatProtocol(Protocol):
    """
    A client connection, and the session of the user logged in on it.

    @ivar userId: the logged-in user, or L{None}.
    @ivar userName: that user's name.
    """

    _log = Logger()

    userId: Optional[int] = None
    userName: Optional[str] = None

    def __init__(self, service: IChatService, maxLength: int,
                 connections: set["ChatProtocol"]) -> None:
        self._service = service
        self._connections = connections
        self._splitter = MessageSplitter(maxLength)
        self._dialect: Optional[IDialect] = None
        self._queue: deque[Queued] = deque()
        self._busy = False
        self._paused = False
        self._closing = False
        self._held: Optional[list[ChatEvent]] = None

    def _transport(self) -> ITransport:
        transport = self.transport
        assert transport is not None, "connected"
        return transport

    @property
    def peer(self) -> str:
        """
        The client's address.  Behind HAProxy it is known only once the
        PROXY header has arrived, so it is asked for when needed.
        """
        address = self._transport().getPeer()
        return f"{getattr(address, 'host', address)}:" \
            f"{getattr(address, 'port', '')}"

    # Connection life --------------------------------------------------

    def connectionMade(self) -> None:
        enableKeepAlive(self._transport())
        self._connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connections.discard(self)
        self._closing = True
        self._queue.clear()
        self._endSession()

    def _endSession(self) -> None:
        if self.userId is not None:
            self._service.sessionEnded(self)

    def _close(self) -> None:
        """
        Stop reading and close after what was written; the session ends
        now, so messages for this user are routed elsewhere (stored) rather
        than into a closing connection.
        """
        self._closing = True
        self._endSession()
        self._transport().loseConnection()

    # Input ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            for message, endedInNUL in self._splitter.feed(data):
                if not message.strip(_BLANK):
                    continue
                if self._dialect is None:
                    self._dialect = chooseDialect(message, endedInNUL)
                self._queue.append(message)
        except MessageTooLong as tooLong:
            if self._dialect is None:
                self._dialect = chooseDialect(tooLong.head, False)
            self._queue.append(tooLong)
        self._runQueue()

    def _runQueue(self) -> None:
        """
        Handle queued messages in order, stopping at the first that waits
        on a Deferred; its reply restarts the queue.
        """
        while self._queue and not self._busy and not self._closing:
            item = self._queue.popleft()
            if isinstance(item, MessageTooLong):
                self._tooLong()
                return
            self._handle(item)
        if self._closing:
            return
        if len(self._queue) >= _PAUSE_AT and not self._paused:
            self._paused = True
            self._transport().pauseProducing()  # type: ignore[attr-defined] # TCP transports provide it
        elif self._paused and len(self._queue) < _PAUSE_AT // 2:
            self._paused = False
            self._transport().resumeProducing()  # type: ignore[attr-defined] # TCP transports provide it

    def _tooLong(self) -> None:
        error = LineTooLong(
            f"message longer than {self._splitter.maxLength} bytes")
        self._log.info("{peer}: {error}; closing", peer=self.peer,
                       error=error.message)
        self.sendError(None, error)
        self._close()

    def _spoken(self) -> IDialect:
        """The connection's dialect, known once a message has arrived."""
        dialect = self._dialect
        assert dialect is not None, "a message has arrived"
        return dialect

    def _handle(self, message: bytes) -> None:
        request = self._spoken().decode(message)
        if isinstance(request, Rejected):
            self._log.debug("{peer}: rejected: {error}", peer=self.peer,
                            error=request.error.message)
            self.sendError(request.context, request.error)
            return
        if isinstance(request, Help):
            self._replied(HelpText(), request)
            return
        if isinstance(request, Quit):
            # Like a logout, answered once the database has let the
            # session go, so the user may log in elsewhere right after.
            self._busy = True
            self._service.sessionEnded(self).addBoth(self._bye, request)
            return
        if isinstance(request, Login):
            self._held = []
        try:
            result = self._service.handle(self, request)
        except Exception:
            self._failed(Failure(), request)
            return
        if isinstance(result, Deferred):
            self._busy = True
            result.addCallbacks(self._replied, self._failed,
                                callbackArgs=(request,),
                                errbackArgs=(request,))
            result.addErrback(logFailure(
                self._log, "answering {request}", request=request))
            result.addBoth(self._resume)
        else:
            self._replied(result, request)

    def _bye(self, _: object, request: Quit) -> None:
        self._replied(Bye(), request)
        self._close()

    def _resume(self, _: object) -> None:
        self._busy = False
        self._runQueue()

    # Output -----------------------------------------------------------

    def _replied(self, reply: Reply, request: Request) -> None:
        if self._closing:
            if isinstance(reply, LoggedIn):
                self._loginAbandoned(reply)
            return
        data = self._spoken().encodeReply(request, reply)
        if data is not None:
            self._transport().write(data)
        if isinstance(reply, LoggedIn):
            self._log.info("{peer}: {userName} (id {userId}) logged in",
                           peer=self.peer, userName=reply.name,
                           userId=reply.userId)
        self._releaseHeld()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(ChatError):
            error = failure.value
            assert isinstance(error, ChatError)
        else:
            self._log.failure("handling {request} from {peer}", failure,
                              request=request, peer=self.peer)
            error = Unavailable("internal error; retry")
        self.sendError(request, error)
        self._releaseHeld()

    def sendError(self, context: Any, error: ChatError) -> None:
        if not self._closing:
            self._transport().write(self._spoken().encodeError(context, error))

    def _releaseHeld(self) -> None:
        """
        Write the events that arrived while a login was being answered, in
        their order, now that the login reply is out.
        """
        held, self._held = self._held, None
        if held and not self._closing:
            encode = self._spoken().encodeEvent
            self._transport().write(b"".join(encode(e) for e in held))

    def _loginAbandoned(self, reply: LoggedIn) -> None:
        """
        The connection closed while its login was being answered, after
        the service had registered the session: end that session, or the
        account stays in use and its messages go into a dead connection,
        and hand back for storing the offline messages the login drained
        and the events held for it.
        """
        held, self._held = self._held or [], None
        self._endSession()
        events = [*reply.offline, *held]
        if events:
            self._service.storeUndelivered(reply.userId, events)

    # The session, as the service sees it (ISession) -------------------

    def deliver(self, event: ChatEvent) -> None:
        """
        Push a chat message to this client (held back while a login reply
        is pending, so that it never overtakes the offline messages).
        """
        if self._held is not None:
            self._held.append(event)
        elif not self._closing:
            self._transport().write(self._spoken().encodeEvent(event))

    def notice(self, text: str) -> None:
        if self._dialect is not None and not self._closing:
            self._transport().write(self._dialect.encodeNotice(text))

    def disconnect(self, reason: str) -> None:
        """
        Tell the client why, then close the connection.  The service has
        already forgotten this session.
        """
        self.notice(reason)
        self._closing = True
        self._transport().loseConnection()


def enableKeepAlive(transport: object) -> None:
    """
    Turn on TCP keepalive, tuned so that a client that vanished without
    closing (power loss, cable pulled) is noticed within about 90 seconds:
    60 s idle, then 3 probes 10 s apart.
    """
    try:
        sock = transport.getHandle()  # type: ignore[attr-defined] # TCP transports provide it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except (AttributeError, OSError):
        pass  # not a TCP socket (tests, UNIX sockets): nothing to tune


class ChatFactory(Factory):
    """
    Builds a L{ChatProtocol} per connection, and keeps the open ones so
    that a shutdown can tell every client why it is being disconnected.
    """

    protocol = ChatProtocol
    noisy = False

    def __init__(self, service: IChatService, maxLength: int) -> None:
        self.service = service
        self.maxLength = maxLength
        self.connections: set[ChatProtocol] = set()

    def buildProtocol(self, addr: Optional[IAddress]) -> ChatProtocol:
        return ChatProtocol(self.service, self.maxLength, self.connections)

    def closeAll(self, reason: str) -> None:
        """
        End every session (so messages for those users are stored from
        now on), then send every client C{reason} and close it.
        """
        self.service.shutdown(reason)
        for connection in list(self.connections):
            connection.disconnect(reason)
