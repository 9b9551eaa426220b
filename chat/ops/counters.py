"""
What a node counts while it serves, as plain numbers on the reactor
thread.

The hot path (a chat routed, a request answered) only adds to an int in
a dict or a list: no lock, no label lookup, no library call, so counting
costs tens of nanoseconds per message.  Nothing here knows Prometheus:
L{chat.ops.metrics} reads these numbers when it is scraped.  A node
started without C{--metrics} gets L{NoCounters}, whose methods do nothing,
so the benchmark can compare the two.

This module owns the numbers and the small interface the server calls;
it never decides anything and never exports anything.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

REQUEST_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0)
"""Seconds: a local chat takes tens of microseconds, a login with its
password check tens of milliseconds, a stalled database seconds."""
DB_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 15.0)
"""Seconds of one unit of work on the database, queueing for a pool
thread included."""
PATHS = ("local", "remote", "stored")
PUBLISH_OUTCOMES = ("taken", "nobody", "failed", "uncertain")


class Histogram:
    """
    Observations counted into fixed buckets: each observation is one
    bisect and two additions.

    @ivar bounds: the upper bounds of the buckets, ascending (the last
        bucket, past them, is +Inf).
    @ivar counts: how many observations fell into each bucket (not
        cumulative: L{cumulative} is what Prometheus wants).
    @ivar total: the sum of the observations.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """C{(le, count)} pairs as a Prometheus histogram gives them."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"),
                                self.counts):
            running += count
            out.append((bound, running))
        return out


class RequestMeter:
    """
    The count and durations of one kind of request: the metered service
    keeps one per request class, so that answering a request costs a dict
    increment and an observation, with no key built.

    @ivar results: answered requests by result (C{ok} or the error
        number).
    @ivar seconds: how long they took.
    """

    __slots__ = ("results", "seconds")

    def __init__(self) -> None:
        self.results: dict[str, int] = {}
        self.seconds = Histogram(REQUEST_BUCKETS)

    def done(self, result: str, seconds: float) -> None:
        results = self.results
        results[result] = results.get(result, 0) + 1
        self.seconds.observe(seconds)


class _NoMeter(RequestMeter):
    def done(self, result: str, seconds: float) -> None:
        pass


class Counters:
    """
    The node's counters.

    @ivar meters: the L{RequestMeter} of each request name (C{chat},
        C{login}, ...).
    @ivar messages: deliveries by path: C{local} (pushed to a session of
        this node), C{remote} (published, and a node took it), C{stored}
        (written to the offline store by the router).
    @ivar publishes: published copies by outcome: C{taken} (Redis
        counted a subscriber), C{nobody} (count 0), C{failed} (Redis
        unreachable or an error), C{uncertain} (counted, but no node
        acknowledged it, so stored as well).
    @ivar offlineStored: rows written to the offline store, for any
        reason (a router's copy, an overflow, a closed connection).
    @ivar offlineDelivered: rows taken out of the offline store for a
        session (a login's, or a drain's).
    @ivar rateLimited: requests refused by a rate limit, by limit.
    @ivar dbSeconds: how long units of work on the database took.
    """

    def __init__(self) -> None:
        self.meters: dict[str, RequestMeter] = {}
        self.messages = dict.fromkeys(PATHS, 0)
        self.publishes = dict.fromkeys(PUBLISH_OUTCOMES, 0)
        self.offlineStored = 0
        self.offlineDelivered = 0
        self.rateLimited: dict[str, int] = {}
        self.dbSeconds = Histogram(DB_BUCKETS)

    def meter(self, request: str) -> RequestMeter:
        """The meter of requests named C{request}, made on first use."""
        meter = self.meters.get(request)
        if meter is None:
            meter = self.meters[request] = RequestMeter()
        return meter

    def request(self, request: str, result: str, seconds: float) -> None:
        """A request C{request} was answered with C{result}."""
        self.meter(request).done(result, seconds)

    @property
    def requests(self) -> dict[tuple[str, str], int]:
        """Answered requests by C{(request, result)}."""
        return {(name, result): n for name, meter in self.meters.items()
                for result, n in meter.results.items()}

    def routed(self, path: str, count: int = 1) -> None:
        """C{count} copies of a message went down C{path}."""
        self.messages[path] += count

    def published(self, outcome: str, count: int = 1) -> None:
        self.publishes[outcome] += count

    def stored(self, count: int) -> None:
        self.offlineStored += count

    def delivered(self, count: int) -> None:
        self.offlineDelivered += count

    def limited(self, limit: str) -> None:
        """
        A request was refused by the rate limit C{limit} (C{chat},
        C{login}, C{register}, C{pending-logins}, ...).
        """
        self.rateLimited[limit] = self.rateLimited.get(limit, 0) + 1

    def database(self, seconds: float) -> None:
        self.dbSeconds.observe(seconds)


class NoCounters(Counters):
    """The counters of a node without C{--metrics}: nothing is counted."""

    def meter(self, request: str) -> RequestMeter:
        return _NO_METER

    def routed(self, path: str, count: int = 1) -> None:
        pass

    def published(self, outcome: str, count: int = 1) -> None:
        pass

    def stored(self, count: int) -> None:
        pass

    def delivered(self, count: int) -> None:
        pass

    def limited(self, limit: str) -> None:
        pass

    def database(self, seconds: float) -> None:
        pass


_NO_METER = _NoMeter()
