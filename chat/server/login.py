"""
One connection's login as its output sees it: the reply to a login, which
no event may overtake, and the deadline by which the connection must be
logged in (PROTOCOL.md 6).

A L{LoginGate} holds the connection's output while a login is being
answered and releases it behind the login reply and the offline messages
that did not fit in it, then tells the service the login is answered; it
ends the session that a login answered to a closed connection opened, and
hands back for storing what that login brought; and it keeps the login
timeout's timer, on the connection's clock.  It never decides what a login
answers (the service does), never writes anything but the login's reply,
and closes nothing itself (it tells the protocol that the deadline
passed).
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chat.core.messages import LoggedIn, Request
from chat.server.output import OutputQueue
from chat.server.session import IChatService
from chat.wire.dialect import IDialect


class LoginGate:
    """
    @ivar answering: whether a login request is being answered (the output
        is held meanwhile).
    """

    def __init__(self, service: IChatService, output: OutputQueue,
                 clock: IReactorTime, timeout: float,
                 expired: Callable[[], None],
                 ended: Callable[[], None]) -> None:
        """
        @param timeout: how long the connection may stay without a login.
        @param expired: called when it stayed so, and no login being
            answered may still save it.
        @param ended: ends the connection's session.
        """
        self.answering = False
        self._service = service
        self._output = output
        self._clock = clock
        self._timeout = timeout
        self._expired = expired
        self._ended = ended
        self._timer: Optional[IDelayedCall] = None
        self._overdue = False

    # The deadline -------------------------------------------------------

    def expect(self) -> None:
        """
        Not logged in from now on (a connect, a logout): the connection
        must log in within the timeout, whatever it sends meanwhile (failed
        logins included).
        """
        self.cancel()
        self._timer = self._clock.callLater(self._timeout, self._passed)

    def cancel(self) -> None:
        """Logged in, or the connection is gone: no deadline."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._overdue = False

    def _passed(self) -> None:
        """
        The deadline has passed; a login being answered decides
        (L{refused}).
        """
        self._timer = None
        if self.answering:
            self._overdue = True
        else:
            self._expired()

    def refused(self) -> None:
        """A login was refused: past the deadline, that ends it."""
        if self._overdue:
            self._expired()

    # A login being answered ---------------------------------------------

    def begin(self) -> None:
        """A login request is being answered: hold the output."""
        self.answering = True
        self._output.hold()

    def succeeded(self, dialect: IDialect, request: Request,
                  reply: LoggedIn) -> None:
        """
        Write the login reply, then the offline messages that did not fit
        in it (a classic ack holds at most 1024 bytes), then the events
        held while it was pending; the deadline is met.
        """
        fitted, rest = dialect.fitLogin(reply)
        self.answering = False
        self.cancel()
        self._output.release(dialect.encodeReply(request, fitted), [
            (dialect.encodeEvent(e), (reply.userId, e)) for e in rest])
        self._service.loginAnswered(reply.userId)

    def release(self, reply: Optional[bytes]) -> bool:
        """
        Write C{reply} ahead of the events held if it answers a login (an
        error), and say whether it did.
        """
        if not self.end():
            return False
        self._output.release(reply)
        return True

    def end(self) -> bool:
        """No login is being answered from now on: whether one was."""
        answering, self.answering = self.answering, False
        return answering

    def abandoned(self, reply: LoggedIn) -> None:
        """
        The connection closed while its login was being answered, after
        the service had registered the session: end that session, or the
        account stays in use and its messages go into a dead connection,
        and hand back for storing the offline messages the login drained
        and the events held for it, in that order.
        """
        self.answering = False
        events = [*((reply.userId, e) for e in reply.offline),
                  *self._output.takeUndelivered()]
        self._ended()
        if events:
            self._service.storeUndelivered(events)
        self._service.loginAnswered(reply.userId)
