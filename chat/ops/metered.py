"""
The chat service, timed and counted: every request's name, result and
duration go to the node's counters.

A wrapper around the service rather than lines inside it, so that the
service's dispatch stays as it is and a node without C{--metrics} does
not even pay for the timing.  A request's result is C{ok} or the error
number it failed with (PROTOCOL.md 3.4); the duration runs from the
request's dispatch to its answer, the password check and the database
included.

This module owns that bookkeeping only; every call is the service's.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from chat.core.errors import ChatError
from chat.core.messages import ChatEvent, Request
from chat.ops.counters import Counters, RequestMeter
from chat.server.session import Answer, IChatService, ISession

def requestName(request: object) -> str:
    """The label of a request: its class name in lower case (C{chat},
    C{groupchat}, C{login}, ...)."""
    return type(request).__name__.lower()


def resultOf(error: BaseException) -> str:
    """The label of a failure: the error number, or 107 for a bug (what
    the client is answered then)."""
    return str(error.errno) if isinstance(error, ChatError) else "107"


@implementer(IChatService)
class MeteredService:
    def __init__(self, service: IChatService, counters: Counters) -> None:
        self._service = service
        self._counters = counters
        self._meters: dict[type, RequestMeter] = {}

    def handle(self, session: ISession, request: Request) -> Answer:
        started = perf_counter()
        meter = self._meters.get(type(request))
        if meter is None:
            meter = self._meters[type(request)] = self._counters.meter(
                requestName(request))
        try:
            answer = self._service.handle(session, request)
        except BaseException as e:
            meter.done(resultOf(e), perf_counter() - started)
            raise
        if not isinstance(answer, Deferred):
            meter.done("ok", perf_counter() - started)
            return answer

        def done(result: Any) -> Any:
            outcome = resultOf(result.value or Exception()) \
                if isinstance(result, Failure) else "ok"
            meter.done(outcome, perf_counter() - started)
            return result

        return answer.addBoth(done)

    def sessionEnded(self, session: ISession) -> Deferred[None]:
        return self._service.sessionEnded(session)

    def storeUndelivered(
            self, messages: Sequence[tuple[int, ChatEvent]]) -> Deferred[None]:
        return self._service.storeUndelivered(messages)

    def loginAnswered(self, userId: int) -> None:
        self._service.loginAnswered(userId)

    def backlogReadable(self, session: ISession) -> None:
        self._service.backlogReadable(session)

    def shutdown(self, reason: str) -> None:
        self._service.shutdown(reason)

    def settled(self) -> Deferred[None]:
        return self._service.settled()
