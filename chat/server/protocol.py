"""
One client connection: framing, dialect, the order of replies, and the
session of the user logged in on it.

The protocol turns bytes into requests through its dialect, hands them to
the service one at a time (so replies keep the order of the requests) and
writes what comes back through its L{OutputQueue}; to the service it is an
L{ISession}.  Events that the queue could not write when the session ends
go back to the service to be stored.  It owns the connection's state; it
never runs SQL and knows no business rule.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any, Optional, Union

import attrs
from twisted.internet.defer import Deferred
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
from chat.logs import logFailure
from chat.server.output import (
    DEFAULT_MAX_OUTPUT, DEFAULT_STALL_TIMEOUT, OutputQueue,
)
from chat.server.session import IChatService, ISession
from chat.wire.dialect import IDialect, Rejected
from chat.wire.framing import MessageSplitter, MessageTooLong
from chat.wire.jsondialect import CLASSIC, JSON
from chat.wire.textdialect import TEXT

_BLANK = b" \t"
_PAUSE_AT = 64
"""Queued requests at which the connection stops reading, for backpressure."""
DEFAULT_LOGIN_TIMEOUT = 60.0
"""C{--login-timeout}."""
LOGIN_TIMEOUT_NOTICE = "login timeout"
CLOSE_SECONDS = 10.0
"""How long a closing connection may take to read what it was sent last
(a notice, a reply) before it is dropped."""

Queued = Union[bytes, MessageTooLong]
"""A client message waiting to be handled, or the overlong one that ends
the connection."""


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

    def __init__(self, service: IChatService, limits: ConnectionLimits,
                 clock: IReactorTime, connections: set["ChatProtocol"]) -> None:
        self._service = service
        self._limits = limits
        self._clock = clock
        self._connections = connections
        self._splitter = MessageSplitter(limits.maxLine)
        self._dialect: Optional[IDialect] = None
        self._queue: deque[Queued] = deque()
        self._output: Optional[OutputQueue] = None
        self._busy = False
        self._paused = False
        self._closing = False
        self._loggingIn = False
        self._closeTimer: Optional[IDelayedCall] = None
        self._loginTimer: Optional[IDelayedCall] = None
        self._loginOverdue = False

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
        """
        The client's address.  Behind HAProxy it is known only once the
        PROXY header has arrived, so it is asked for when needed.
        """
        address = self._transport().getPeer()
        return f"{getattr(address, 'host', address)}:" \
            f"{getattr(address, 'port', '')}"

    @property
    def address(self) -> str:
        """The client's IP address (see L{peer}); a UNIX socket's path."""
        address = self._transport().getPeer()
        return str(getattr(address, "host", None) or
                   getattr(address, "name", None) or address)

    @property
    def dialect(self) -> Optional[IDialect]:
        """The connection's dialect, once its first message arrived."""
        return self._dialect

    def outputBytes(self) -> int:
        """Bytes waiting here to be written to the client."""
        return self._output.queuedBytes if self._output is not None else 0

    # Connection life --------------------------------------------------

    def connectionMade(self) -> None:
        transport = self._transport()
        enableKeepAlive(transport)
        self._output = OutputQueue(
            transport, self._clock, self._limits.maxOutput,
            self._limits.stallTimeout, readable=self._backlogReadable,
            stalled=self._stalled)
        self._connections.add(self)
        self._awaitLogin()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connections.discard(self)
        self._closing = True
        self._queue.clear()
        for timer in (self._closeTimer, self._loginTimer):
            if timer is not None and timer.active():
                timer.cancel()
        if not self._loggingIn:
            # (A login in flight stores them with its offline messages,
            # which are older: see _loginAbandoned.)
            self._storeQueued(lost=True)
        self._endSession()

    def _storeQueued(self, lost: bool = False) -> None:
        """
        Hand back for storing the events this connection queued but never
        wrote (and, once C{lost}, those its client never acknowledged):
        they are lost with the connection otherwise.
        """
        if self._output is None:
            return
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
        self._closing = True
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
        self._transport().abortConnection()  # type: ignore[attr-defined] # TCP transports provide it

    def _awaitLogin(self) -> None:
        """
        Not logged in from now on: close the connection if it stays so
        for the login timeout (PROTOCOL.md 6), whatever it sends meanwhile
        (failed logins included).
        """
        self._loggedIn()
        self._loginTimer = self._clock.callLater(
            self._limits.loginTimeout, self._loginTimedOut)

    def _loggedIn(self) -> None:
        if self._loginTimer is not None and self._loginTimer.active():
            self._loginTimer.cancel()
        self._loginTimer = None
        self._loginOverdue = False

    def _loginTimedOut(self) -> None:
        """
        The login timeout has passed; a login being answered decides
        (L{_loginFailed}).
        """
        self._loginTimer = None
        if self._loggingIn:
            self._loginOverdue = True
        else:
            self._closeForLogin()

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
        self._closing = True
        self._storeQueued()
        self._endSession()
        self._abort()

    # Input ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            for message, endedInNUL in self._splitter.feed(data):
                if not message.strip(_BLANK):
                    continue
                if self._dialect is None:
                    self._speak(chooseDialect(message, endedInNUL))
                self._queue.append(message)
        except MessageTooLong as tooLong:
            if self._dialect is None:
                self._speak(chooseDialect(tooLong.head, False))
            self._queue.append(tooLong)
        self._runQueue()

    def _speak(self, dialect: IDialect) -> None:
        """
        The first message fixed the dialect.  A classic client's connection
        gets one object per segment (PROTOCOL.md section 7): no Nagle
        delay, and paced writes.
        """
        self._dialect = dialect
        if dialect is CLASSIC:
            self._out().pace()
            try:
                self._transport().setTcpNoDelay(True)  # type: ignore[attr-defined] # TCP transports provide it
            except (AttributeError, OSError):
                pass  # not TCP (tests)

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
                       userId=self.userId,
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
                            userId=self.userId,
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
            self._storeQueued()
            self._service.sessionEnded(self).addBoth(self._bye, request)
            return
        if isinstance(request, Login):
            # No event may overtake the login reply and the offline
            # messages it brings.
            self._loggingIn = True
            self._out().hold()
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
        if isinstance(reply, LoggedIn):
            self._answerLogin(request, reply)
            return
        if isinstance(reply, LoggedOut):
            self._awaitLogin()
        self._answer(self._spoken().encodeReply(request, reply))

    def _answerLogin(self, request: Request, reply: LoggedIn) -> None:
        """
        The login reply, then the offline messages that did not fit in it
        (a classic ack holds at most 1024 bytes), then the events held
        while it was pending.
        """
        dialect = self._spoken()
        fitted, rest = dialect.fitLogin(reply)
        self._loggingIn = False
        self._loggedIn()
        self._out().release(dialect.encodeReply(request, fitted), [
            (dialect.encodeEvent(e), (reply.userId, e)) for e in rest])
        self._log.info("{peer}: {userName} (id {userId}) logged in",
                       peer=self.peer, userName=reply.name,
                       userId=reply.userId)
        self._service.loginAnswered(reply.userId)

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
            if self._loggingIn:
                self._loggingIn = False
                self._storeQueued()
            return
        self._answer(self._spoken().encodeError(request, error))
        if self._loginOverdue and isinstance(request, Login):
            self._closeForLogin()

    def _answer(self, data: Optional[bytes]) -> None:
        """
        Write a reply; the reply to a login goes out ahead of the events
        held while it was pending.
        """
        if self._loggingIn:
            self._loggingIn = False
            self._out().release(data)
        elif data is not None:
            self._out().write(data)

    def sendError(self, context: Any, error: ChatError) -> None:
        if not self._closing:
            self._out().write(self._spoken().encodeError(context, error))

    def _loginAbandoned(self, reply: LoggedIn) -> None:
        """
        The connection closed while its login was being answered, after
        the service had registered the session: end that session, or the
        account stays in use and its messages go into a dead connection,
        and hand back for storing the offline messages the login drained
        and the events held for it, in that order.
        """
        self._loggingIn = False
        events = [*((reply.userId, e) for e in reply.offline),
                  *self._out().takeUndelivered()]
        self._endSession()
        if events:
            self._service.storeUndelivered(events)
        self._service.loginAnswered(reply.userId)

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
        if self._dialect is not None and not self._closing:
            self._out().write(self._dialect.encodeNotice(text))

    def disconnect(self, reason: str) -> None:
        """
        Tell the client why, then close the connection; the events still
        waiting here are stored (with the offline messages of a login in
        flight, which are older: see L{_loginAbandoned}).  The service
        forgets the session right after.
        """
        if self._closing or self._output is None:
            return
        if not self._loggingIn:
            self._storeQueued()
        self._closing = True
        self._closeSoon(self._dialect.encodeNotice(reason)
                        if self._dialect is not None else None)


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
