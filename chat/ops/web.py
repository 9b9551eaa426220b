"""
The node's HTTP endpoints for operators and load balancers, on
C{--metrics}: C{/metrics} (Prometheus), C{/health} (liveness) and
C{/ready} (readiness).

C{/health} answers 200 from the reactor thread itself, so it fails
exactly when the reactor is stuck or the process is gone.  C{/ready}
answers 200 only while this node should be given new users: the database
answers a query within L{READY_TIMEOUT}, Redis (in a cluster) is
connected, and the node is not draining; otherwise 503 with the reason
as the body, which is what HAProxy's C{option httpchk GET /ready} reads.

This module owns the HTTP side only; what it reports is asked of the
parts that know (L{Readiness}'s callables, L{NodeMetrics}).
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chat.ops.metrics import CONTENT_TYPE, NodeMetrics

READY_TIMEOUT = 2.0
"""Seconds the database gets to answer a readiness check: HAProxy's
check has its own timeout, and a database that slow is not ready."""


@attrs.frozen
class Readiness:
    """
    What makes this node ready.

    @ivar pingDatabase: a trivial query; fails when the database does not
        answer.
    @ivar redisUp: whether the links to Redis are up; L{None} for a node
        without Redis.
    @ivar draining: the reason this node is draining, or L{None}.
    """

    pingDatabase: Callable[[], "Deferred[object]"]
    draining: Callable[[], Optional[str]]
    redisUp: Optional[Callable[[], bool]] = None

    def check(self, clock: IReactorTime) -> "Deferred[Optional[str]]":
        """Fires with L{None} when ready, else with why not."""
        draining = self.draining()
        redisUp = self.redisUp

        def answered(_: object) -> Optional[str]:
            if draining is not None:
                return f"draining: {draining}"
            if redisUp is not None and not redisUp():
                return "Redis is unreachable"
            return None

        def failed(failure: Failure) -> str:
            return f"the database does not answer: {failure.getErrorMessage()}"

        d = self.pingDatabase()
        d.addTimeout(READY_TIMEOUT, clock)
        return d.addCallbacks(answered, failed)


def _plain(request: Request, code: int, body: bytes,
           contentType: bytes = b"text/plain; charset=utf-8") -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", contentType)
    request.setHeader(b"cache-control", b"no-store")
    return body


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, metrics: NodeMetrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        return _plain(request, 200, self._metrics.render(),
                      CONTENT_TYPE.encode("ascii"))


class _Health(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call] # unannotated in Twisted

    def render_GET(self, request: Request) -> bytes:
        return _plain(request, 200, b"ok\n")


class _Ready(Resource):
    isLeaf = True

    def __init__(self, readiness: Readiness, clock: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._readiness = readiness
        self._clock = clock

    def render_GET(self, request: Request) -> object:
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)

        def answer(reason: Optional[str]) -> None:
            if gone:
                return  # the checker went away
            if reason is None:
                request.write(_plain(request, 200, b"ready\n"))
            else:
                request.write(_plain(request, 503,
                                     reason.encode("utf-8") + b"\n"))
            request.finish()

        self._readiness.check(self._clock).addCallback(answer)
        return NOT_DONE_YET


def opsSite(metrics: NodeMetrics, readiness: Readiness,
            clock: IReactorTime) -> Site:
    """The C{--metrics} site: /metrics, /health and /ready."""
    root = Resource()
    root.putChild(b"metrics", _Metrics(metrics))
    root.putChild(b"health", _Health())
    root.putChild(b"ready", _Ready(readiness, clock))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
