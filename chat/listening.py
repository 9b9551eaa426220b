"""
Listening on an endpoint before the reactor runs, or not starting at all.

A node listens in C{privilegedStartService} (as root, if need be), so a
port that cannot be had ends twistd with one clear line and a non-zero
exit rather than a node that runs without it.  This module owns that one
step; what is served is the caller's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.python.failure import Failure


def listenNow(reactor: Any, description: str, factory: IProtocolFactory,
              option: str) -> IListeningPort:
    """
    Listen on C{description} at once.

    @raise SystemExit: it cannot be listened on (C{option} names the
        option that gave it, for the message).
    """
    endpoint = serverFromString(reactor, description)
    # The reactor is not running yet, but listening is synchronous for the
    # endpoints a node uses (tcp, ssl, haproxy), so the outcome is there
    # at once.
    result: list[Any] = []
    endpoint.listen(factory).addBoth(result.append)
    outcome = result[0] if result else None
    if not IListeningPort.providedBy(outcome):
        reason = outcome.value if isinstance(outcome, Failure) else outcome
        raise SystemExit(f"chat: cannot listen on {option} {description}: "
                         f"{reason}")
    port: IListeningPort = outcome
    return port
