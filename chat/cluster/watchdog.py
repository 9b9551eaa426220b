"""
The watch over the links to Redis: a link that has commands outstanding
and on which nothing has arrived for L{COMMAND_TIMEOUT} is dropped, which
fails those commands (a publish whose outcome is thus unknown is stored:
a rare duplicate beats a loss), and an idle link is pinged every
L{PING_SECONDS} so that a dead one is found before it is needed.

This module owns that judgement only; it never reconnects a link (a
dropped link's own client does) nor reads what crosses one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

COMMAND_TIMEOUT = 2.0
PING_SECONDS = 2.0
WATCH_SECONDS = 0.5
"""How often the links are looked at."""


class Link(Protocol):
    """What the watchdog needs of a link."""

    lastProgress: float

    def outstanding(self) -> bool: ...

    def ping(self) -> Deferred[Any]: ...

    def abort(self) -> None: ...


class Watchdog:
    """
    Looks at the links C{links} returns each time it is asked to (every
    L{WATCH_SECONDS}).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime,
                 links: Callable[[], Iterable[Link]]) -> None:
        self._clock = clock
        self._links = links

    def check(self) -> None:
        """
        Drop stalled links (their outstanding commands fail and they are
        rebuilt), and ping idle ones.
        """
        now = self._clock.seconds()
        for link in self._links():
            silent = now - link.lastProgress
            if link.outstanding() and silent > COMMAND_TIMEOUT:
                self._log.warn("Redis link silent for {s} s; reconnecting",
                               s=COMMAND_TIMEOUT)
                link.abort()
            elif not link.outstanding() and silent > PING_SECONDS:
                # A lost link is reported by itself.
                link.ping().addErrback(lambda f: None)
