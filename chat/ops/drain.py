"""
Draining a node before maintenance: stop being ready, move the users off
a few at a time, then exit.

A drain starts on SIGUSR1 or on the order C{chatctl drain NODE} leaves in
the database (L{chat.ops.orders}).  From then on C{/ready} answers 503,
so the load balancer stops sending this node new connections.  After a
grace period (long enough for the load balancer's health checks to notice)
the sessions are closed at C{--drain-rate} per second, each with a
C{NOTICE} asking its client to reconnect, which then lands on another
node: so the cluster's users do not all reconnect in the same second, as
they do after SIGTERM.  A session closed here loses nothing: what its
connection had queued is stored as offline messages and its row is
released at once, so its next login, anywhere, finds them.  Sessions that
log in here during the drain are closed the same way.  Once the node holds
no session, it stops the way SIGTERM stops it (what is left: connections
that never logged in).

This module owns the drain's schedule; closing a session is the
registry's, stopping the process the reactor's.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Optional, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import (
    IReactorCore, IReactorFromThreads, IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

DEFAULT_DRAIN_RATE = 200.0
"""Sessions closed per second."""
DEFAULT_DRAIN_GRACE = 5.0
"""Seconds between the start of a drain and its first closed session: the
reference haproxy.cfg needs two failed checks, 2 s apart, to take a node
out of rotation."""
TICK_SECONDS = 0.05
DRAINING = "this server is going down for maintenance; please reconnect"


class Sessions(Protocol):
    """What a drain needs of the session registry."""

    def userIds(self) -> list[int]: ...

    def count(self) -> int: ...

    def close(self, userId: int, reason: str) -> None: ...


class Drain(Service):
    """
    This node's drain.

    @ivar reason: why this node is draining, or L{None} while it is not.
    """

    _log = Logger()

    def __init__(self, sessions: Sessions, reactor: Any,
                 rate: float = DEFAULT_DRAIN_RATE,
                 grace: float = DEFAULT_DRAIN_GRACE,
                 stop: Optional[Callable[[], None]] = None) -> None:
        self._sessions = sessions
        self._reactor: IReactorTime = reactor
        self._fromSignal: IReactorFromThreads = reactor
        self._rate = rate
        self._grace = grace
        self._stop = stop if stop is not None else \
            IReactorCore(reactor).stop
        self._loop: Optional[LoopingCall] = None
        self._credit = 0.0
        self.reason: Optional[str] = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        try:
            signal.signal(signal.SIGUSR1, self._signalled)
        except ValueError:
            pass  # not the main thread (tests): no signal

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _signalled(self, number: int, frame: object) -> None:
        # A signal handler runs between two bytecodes of whatever the
        # reactor was doing: the drain starts from the reactor instead
        # (callFromThread also wakes it, as Twisted's own SIGTERM does).
        self._fromSignal.callFromThread(self.start, "SIGUSR1")

    def start(self, reason: str) -> None:
        """Start draining (a second order while draining changes nothing)."""
        if self.reason is not None:
            return
        self.reason = reason
        self._log.warn("draining ({reason}): not ready any more; closing "
                       "{n} sessions at {rate}/s in {grace} s",
                       reason=reason, n=self._sessions.count(),
                       rate=self._rate, grace=self._grace)
        self._reactor.callLater(self._grace, self._begin)

    def _begin(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(TICK_SECONDS, now=True)

    def _tick(self) -> None:
        self._credit = min(self._credit + self._rate * TICK_SECONDS,
                           max(self._rate * TICK_SECONDS, 1.0))
        userIds = self._sessions.userIds()
        if not userIds:
            assert self._loop is not None
            self._loop.stop()
            self._log.warn("drained: no session left; stopping")
            self._stop()
            return
        for userId in userIds[:int(self._credit)]:
            self._sessions.close(userId, DRAINING)
            self._credit -= 1
