"""
Classic mode on the wire (PROTOCOL.md section 7): one JSON object per
TCP segment, and the next only once the client's TCP stack has
acknowledged the previous one and at least 2 ms have passed.

The classic client parses each C{recv()} as exactly one object and
aborts when two arrive together; Twisted writes all that is queued in one
system call.  So a classic connection's output asks this gate before each
write, and the gate wakes it when the next may go.  Whether the previous
one was acknowledged is the ack tracker's count (L{chat.server.acked});
where there is none (not Linux, not plain TCP), only the spacing applies.

This module owns the timing of one connection's writes; it never holds
what waits (the output queue does).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chat.server.acked import AckTracker

SPACING = 0.002
"""The least time between two writes of a classic connection."""
POLL = 0.001
"""How often an unacknowledged write is looked at again."""


class Pacer:
    def __init__(self, clock: IReactorTime, acks: Optional[AckTracker[Any]],
                 wake: Callable[[], None], spacing: float = SPACING) -> None:
        self._clock = clock
        self._acks = acks
        self._wake = wake
        self._spacing = spacing
        self._last = -spacing
        self._timer: Optional[IDelayedCall] = None

    def ready(self) -> bool:
        """Whether the next object may be written now."""
        if self._clock.seconds() - self._last < self._spacing:
            return False
        acks = self._acks
        if acks is None:
            return True
        acks.settle()
        return acks.allAcked()

    def sent(self) -> None:
        """An object was written."""
        self._last = self._clock.seconds()

    def wait(self) -> None:
        """Wake the output once the next object may (probably) go."""
        if self._timer is not None:
            return
        delay = max(POLL, self._last + self._spacing - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._woken)

    def _woken(self) -> None:
        self._timer = None
        self._wake()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
