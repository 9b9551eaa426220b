"""
Errbacks that log, and JSON logs for operators.

C{Logger.failure} takes its format first, so it cannot be passed to
C{addErrback} as it is; these build the errback.  Expected outages (Redis
or the database away) are warnings with the error's message; anything
else is a bug and is logged with its traceback.  Log events carry their
values as fields (C{userId}, C{peer}, ...), never only formatted text.

With C{twistd --logger chat.logs.jsonLog chat ...} every event is written
to standard output as one JSON object per line (Twisted's
L{jsonFileLogObserver}), its fields included, and each carries the
C{node} it came from, so that a log collector can search a cluster's
logs by user, peer and node without parsing text.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from twisted.logger import (
    ILogObserver, Logger, LogEvent, formatEvent, jsonFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.core.errors import Unavailable

_context: dict[str, str] = {}
"""Fields every event gets: C{node}, once the node knows its id."""


def setNode(nodeId: str) -> None:
    """
    This process is node C{nodeId}: say so in every event.  (twistd builds
    the service, which calls this, before it starts logging.)
    """
    _context["node"] = nodeId


@implementer(ILogObserver)
class WithContext:
    """
    An observer that adds the process's fields to each event (and, with
    C{text}, the event's message formatted, as C{text}: a JSON line is
    then readable by itself), then hands it on.
    """

    def __init__(self, observer: ILogObserver, text: bool = False) -> None:
        self._observer = observer
        self._text = text

    def __call__(self, event: LogEvent) -> None:
        for key, value in _context.items():
            event.setdefault(key, value)
        if self._text:
            event.setdefault("text", formatEvent(event))
        self._observer(event)


def jsonLog() -> ILogObserver:
    """
    The observer factory for C{twistd --logger chat.logs.jsonLog}: JSON
    lines on standard output, each with the node's id.  Plain lines (no
    RFC 7464 record separator), so that C{jq} and log shippers read them
    as they are.
    """
    return WithContext(jsonFileLogObserver(sys.stdout, recordSeparator=""),
                       text=True)


def logFailure(log: Logger, format: str,
               **kwargs: Any) -> Callable[[Failure], None]:
    """
    An errback that logs C{format} (which may use C{{error}}) and consumes
    the failure: a warning for an outage, a critical with the traceback
    for anything unexpected.
    """
    def errback(failure: Failure) -> None:
        if failure.check(Unavailable, ConnectionError, OSError) or \
                type(failure.value).__module__ == "txredisapi":
            log.warn(format + ": {error}", error=failure.value, **kwargs)
        else:
            log.failure(format, failure, **kwargs)

    return errback
