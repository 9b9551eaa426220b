"""
One client connection, and the session of the user logged in on it.

The protocol hands each request its L{RequestQueue} decoded (one at a time,
so replies keep the order of the requests) to the service, and writes
what comes back through its L{OutputQueue}, the reply to a login through
its L{LoginGate}; to the service it is an L{ISession}.  It ends the
session and the connection: events that the output could not write when
the session ends go back to the service to be stored.  It owns the
connection's state; it never runs SQL and knows no business rule.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.internet.interfaces import (
    IAddress, IDelayedCall, IReactorTime, ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.core.errors import ChatError, LineTooLong, Unavailable
from chat.core.messages import (
    Bye, ChatEvent, Help, HelpText, LoggedIn, LoggedOut, Login, Quit, Reply,
    Request,
)
from chat.server.login import LoginGate
from chat.server.output import (
    DEFAULT_MAX_OUTPUT, DEFAULT_STALL_TIMEOUT, OutputQueue,
)
from chat.server.reading import RequestQueue
from chat.server.session import Answer, IChatService, ISession
from chat.server.tcp import (
    abort, disableNagle, enableKeepAlive, hostOf, peerOf,
)
from chat.wire.dialect import IDialect, Rejected
from chat.wire.jsondialect import CLASSIC

DEFAULT_LOGIN_TIMEOUT = 60.0
"""C{--login-timeout}."""
LOGIN_TIMEOUT_NOTICE = "login timeout"
CLOSE_SECONDS = 10.0
"""How long a closing connection may take to read what it was sent last
(a notice, a reply) before it is dropped."""


@attrs.frozen
class ConnectionLimits:
    """
    What one connection may cost (PROTOCOL.md sections 1 and 6).

    @ivar maxLine: the longest client message, in bytes.
    @ivar maxOutput: the most bytes of events waiting to be written.
    @ivar stallTimeout: how long a connection may stay over C{maxOutput}.
    @ivar loginTimeout: how long a connection may stay without a login
        (from its connect or its logout).
    """

    maxLine: int = 65536
    maxOutput: int = DEFAULT_MAX_OUTPUT
    stallTimeout: float = DEFAULT_STALL_TIMEOUT
    loginTimeout: float = DEFAULT_LOGIN_TIMEOUT


@implementer(ISession)
class ChatProtocol(Protocol):
    """
    A client connection, and the session of the user logged in on it.

    What it reads is its L{RequestQueue}'s to split and queue, what it
    writes its L{OutputQueue}'s to send, and the login's holding of the
    output and its deadline its L{LoginGate}'s (all three made once
    connected); it handles the requests and replies in between, and ends
    the session and the connection.

    @ivar userId: the logged-in user, or L{None}.
    @ivar userName: that user's name.
    """

    _log = Logger()

    userId: Optional[int] = None
    userName: Optional[str] = None
    _requests: RequestQueue
    _login: LoginGate

    def __init__(self, service: IChatService, limits: ConnectionLimits,
                 clock: IReactorTime, connections: set["ChatProtocol"]) -> None:
        self._service = service
        self._limits = limits
        self._clock = clock
        self._connections = connections
        self._output: Optional[OutputQueue] = None
        self._closing = False
        self._closeTimer: Optional[IDelayedCall] = None

    def _transport(self) -> ITransport:
        transport = self.transport
        assert transport is not None, "connected"
        return transport

    def _out(self) -> OutputQueue:
        output = self._output
        assert output is not None, "connected"
        return output

    @property
    def peer(self) -> str:
        """The client's address and port (L{peerOf})."""
        return peerOf(self._transport())

    @property
    def address(self) -> str:
        """The client's IP address (L{hostOf})."""
        return hostOf(self._transport())

    @property
    def dialect(self) -> Optional[IDialect]:
        """The connection's dialect, once its first message arrived."""
        return self._requests.dialect

    def outputBytes(self) -> int:
        """Bytes waiting here to be written to the client."""
        return self._output.queuedBytes if self._output is not None else 0

    # Connection life --------------------------------------------------

    def connectionMade(self) -> None:
        transport = self._transport()
        enableKeepAlive(transport)
        output = self._output = OutputQueue(
            transport, self._clock, self._limits.maxOutput,
            self._limits.stallTimeout, readable=self._backlogReadable,
            stalled=self._stalled)
        self._requests = RequestQueue(
            transport,  # type: ignore[arg-type] # TCP transports are push producers
            self._limits.maxLine, spoken=self._speak, handle=self._handle,
            replied=self._replied, failed=self._failed,
            rejected=self._rejected, tooLong=self._tooLong)
        self._login = LoginGate(self._service, output, self._clock,
                                self._limits.loginTimeout,
                                expired=self._closeForLogin,
                                ended=self._endSession)
        self._connections.add(self)
        self._login.expect()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connections.discard(self)
        self._stopReading()
        self._login.cancel()
        if self._closeTimer is not None and self._closeTimer.active():
            self._closeTimer.cancel()
        if not self._login.answering:
            # (A login in flight stores them with its offline messages,
            # which are older: see LoginGate.abandoned.)
            self._storeQueued(lost=True)
        self._endSession()

    def _stopReading(self) -> None:
        """The connection is closing: nothing it sends is handled now."""
        self._closing = True
        self._requests.stop()

    def _storeQueued(self, lost: bool = False) -> None:
        """
        Hand back for storing the events this connection queued but never
        wrote (and, once C{lost}, those its client never acknowledged):
        they are lost with the connection otherwise.
        """
        output = self._out()
        events = output.takeUndelivered() if lost else output.takeEvents()
        if events:
            self._service.storeUndelivered(events)

    def _endSession(self) -> None:
        if self.userId is not None:
            self._service.sessionEnded(self)

    def _close(self) -> None:
        """
        Stop reading and close after what was written; the session ends
        now, so messages for this user are routed elsewhere (stored) rather
        than into a closing connection, and so are the events still
        waiting here.
        """
        self._stopReading()
        self._storeQueued()
        self._endSession()
        self._closeSoon()

    def _closeSoon(self, last: Optional[bytes] = None) -> None:
        """Write C{last}, close once the output is written, or drop the
        connection if the client does not read it in time."""
        self._out().close(last)
        if self._closeTimer is None:
            self._closeTimer = self._clock.callLater(
                CLOSE_SECONDS, self._abort)

    def _abort(self) -> None:
        abort(self._transport())

    def _closeForLogin(self) -> None:
        self._log.info("{peer}: not logged in for {s} s; closing",
                       peer=self.peer, s=self._limits.loginTimeout)
        self.disconnect(LOGIN_TIMEOUT_NOTICE)

    def _backlogReadable(self) -> None:
        if not self._closing:
            self._service.backlogReadable(self)

    def _stalled(self) -> None:
        self._log.info("{peer}: output over its limit for {s} s; closing",
                       peer=self.peer, userId=self.userId,
                       s=self._limits.stallTimeout)
        self._stopReading()
        self._storeQueued()
        self._endSession()
        self._abort()

    # Requests -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._requests.feed(data)

    def _speak(self, dialect: IDialect) -> None:
        """
        The first message fixed the dialect.  A classic client's connection
        gets one object per segment (PROTOCOL.md section 7): no Nagle
        delay, and paced writes.
        """
        if dialect is CLASSIC:
            self._out().pace()
            disableNagle(self._transport())

    def _tooLong(self) -> None:
        error = LineTooLong(f"message longer than {self._limits.maxLine} bytes")
        self._log.info("{peer}: {error}; closing", peer=self.peer,
                       userId=self.userId,
                       error=error.message)
        self.sendError(None, error)
        self._close()

    def _rejected(self, request: Rejected) -> None:
        self._log.debug("{peer}: rejected: {error}", peer=self.peer,
                        userId=self.userId, error=request.error.message)
        self.sendError(request.context, request.error)

    def _spoken(self) -> IDialect:
        """The connection's dialect, known once a message has arrived."""
        dialect = self._requests.dialect
        assert dialect is not None, "a message has arrived"
        return dialect

    def _handle(self, request: Request) -> Answer:
        if isinstance(request, Help):
            return HelpText()
        if isinstance(request, Quit):
            # Like a logout, answered once the database has let the
            # session go, so the user may log in elsewhere right after.
            self._storeQueued()
            return self._service.sessionEnded(self).addBoth(lambda _: Bye())
        if isinstance(request, Login):
            # No event may overtake the login reply and the offline
            # messages it brings.
            self._login.begin()
        return self._service.handle(self, request)

    # Replies ------------------------------------------------------------

    def _replied(self, reply: Reply, request: Request) -> None:
        if self._closing:
            if isinstance(reply, LoggedIn):
                self._login.abandoned(reply)
        elif isinstance(reply, LoggedIn):
            self._login.succeeded(self._spoken(), request, reply)
            self._log.info("{peer}: {userName} (id {userId}) logged in",
                           peer=self.peer, userName=reply.name,
                           userId=reply.userId)
        else:
            if isinstance(reply, LoggedOut):
                self._login.expect()
            self._answer(self._spoken().encodeReply(request, reply))
        if isinstance(reply, Bye):
            self._close()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(ChatError):
            error = failure.value
            assert isinstance(error, ChatError)
        else:
            self._log.failure("handling {request} from {peer}", failure,
                              request=request, peer=self.peer,
                              userId=self.userId)
            error = Unavailable("internal error; retry")
        if self._closing:
            if self._login.end():
                self._storeQueued()
            return
        self._answer(self._spoken().encodeError(request, error))
        if isinstance(request, Login):
            self._login.refused()

    def _answer(self, data: Optional[bytes]) -> None:
        """
        Write a reply; the reply to a login goes out ahead of the events
        held while it was pending.
        """
        if not self._login.release(data) and data is not None:
            self._out().write(data)

    def sendError(self, context: Any, error: ChatError) -> None:
        if not self._closing:
            self._out().write(self._spoken().encodeError(context, error))

    # The session, as the service sees it (ISession) -------------------

    def deliver(self, event: ChatEvent) -> bool:
        """
        Push a chat message to this client: written, or queued (held back
        while a login reply is pending, so that it never overtakes the
        offline messages), or refused when the output is full.
        """
        userId = self.userId
        if self._closing or userId is None:
            return False
        return self._out().offer(self._spoken().encodeEvent(event), event,
                                 userId)

    def deliverStored(self, event: ChatEvent) -> None:
        userId = self.userId
        if not self._closing and userId is not None:
            self._out().offer(self._spoken().encodeEvent(event), event,
                              userId, force=True)

    def room(self) -> int:
        return 0 if self._closing else self._out().room()

    def backlog(self) -> None:
        self._out().backlog()

    def notice(self, text: str) -> None:
        dialect = self.dialect
        if dialect is not None and not self._closing:
            self._out().write(dialect.encodeNotice(text))

    def disconnect(self, reason: str) -> None:
        """
        Tell the client why, then close the connection; the events still
        waiting here are stored (with the offline messages of a login in
        flight, which are older: see L{LoginGate.abandoned}).  The service
        forgets the session right after.
        """
        if self._closing or self._output is None:
            return
        if not self._login.answering:
            self._storeQueued()
        dialect = self.dialect
        self._stopReading()
        self._closeSoon(dialect.encodeNotice(reason)
                        if dialect is not None else None)


class ChatFactory(Factory):
    """
    Builds a L{ChatProtocol} per connection, and keeps the open ones so
    that a shutdown can tell every client why it is being disconnected.
    """

    protocol = ChatProtocol
    noisy = False

    def __init__(self, service: IChatService,
                 limits: ConnectionLimits = ConnectionLimits(),
                 clock: Optional[IReactorTime] = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        assert clock is not None
        self.service = service
        self.limits = limits
        self.clock = clock
        self.connections: set[ChatProtocol] = set()

    def buildProtocol(self, addr: Optional[IAddress]) -> ChatProtocol:
        return ChatProtocol(self.service, self.limits, self.clock,
                            self.connections)

    def closeAll(self, reason: str) -> None:
        """
        End every session (so messages for those users are stored from
        now on), then send every client C{reason} and close it.
        """
        self.service.shutdown(reason)
        for connection in list(self.connections):
            connection.disconnect(reason)
