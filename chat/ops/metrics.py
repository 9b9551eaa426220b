"""
The node's metrics in the Prometheus text format, read at scrape time.

Everything is computed when Prometheus asks: the counters
(L{chat.ops.counters}) are copied out of their dicts, and the gauges
(connections, sessions, buffered output, password checks waiting, Redis,
the lease) are asked of their owners through the small L{NodeGauges}.  So
serving costs nothing between scrapes.  Each node has a registry of its
own (never the library's global one), with the library's process and
platform collectors beside the chat's, so that tests and several nodes
in one process never collide.

This module owns the metric names and their help texts; it counts
nothing itself.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import attrs
from prometheus_client import (
    CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)
from prometheus_client.registry import Collector

from chat.ops.counters import Counters, Histogram

DIALECTS = ("text", "json", "classic")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@attrs.frozen
class Connection:
    """What a scrape needs of one client connection."""

    dialect: Optional[str]
    """C{text}, C{json} or C{classic}; L{None} before the first message."""
    loggedIn: bool
    outputBytes: int


@attrs.frozen
class NodeGauges:
    """
    Where the gauges come from, each asked at scrape time.

    @ivar connections: the open client connections.
    @ivar passwordChecks: password hashes and checks waiting or running.
    @ivar redisUp: whether both links to Redis are up; L{None} for a node
        without Redis (then there is no C{chat_redis_up}).
    @ivar leaseAge: seconds since this node's lease was last renewed.
    """

    connections: Callable[[], Iterable[Connection]]
    passwordChecks: Callable[[], int]
    leaseAge: Callable[[], float]
    redisUp: Optional[Callable[[], bool]] = None


def _histogram(name: str, documentation: str, label: Optional[str],
               histograms: dict[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        name, documentation, labels=[label] if label else None)
    for value, histogram in sorted(histograms.items()):
        family.add_metric([value] if label else [], histogram.cumulative(),
                          histogram.total)
    return family


class ChatCollector(Collector):
    """The chat's own metrics, from the counters and the gauges."""

    def __init__(self, counters: Counters, gauges: NodeGauges) -> None:
        self._counters = counters
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        yield from self._connectionGauges()
        c = self._counters
        requests = CounterMetricFamily(
            "chat_requests", "Requests answered, by request and result "
            "(ok, or the error number).", labels=["request", "result"])
        for (request, result), n in sorted(c.requests.items()):
            requests.add_metric([request, result], n)
        yield requests
        yield _histogram("chat_request_seconds",
                         "Seconds from a request to its answer.", "request",
                         {name: m.seconds for name, m in c.meters.items()})
        messages = CounterMetricFamily(
            "chat_messages", "Copies of chat messages by path: local "
            "(pushed here), remote (taken by another node), stored "
            "(offline).", labels=["path"])
        for path, n in c.messages.items():
            messages.add_metric([path], n)
        yield messages
        publishes = CounterMetricFamily(
            "chat_publish", "Copies published to Redis, by outcome.",
            labels=["outcome"])
        for outcome, n in c.publishes.items():
            publishes.add_metric([outcome], n)
        yield publishes
        yield CounterMetricFamily(
            "chat_offline_stored", "Rows written to the offline store.",
            value=c.offlineStored)
        yield CounterMetricFamily(
            "chat_offline_delivered",
            "Rows taken from the offline store for a session.",
            value=c.offlineDelivered)
        limited = CounterMetricFamily(
            "chat_rate_limited", "Requests refused by a rate limit.",
            labels=["limit"])
        for limit, n in sorted(c.rateLimited.items()):
            limited.add_metric([limit], n)
        yield limited
        yield _histogram("chat_db_seconds",
                         "Seconds per unit of work on the database, "
                         "waiting for a pool thread included.", None,
                         {"": c.dbSeconds})
        g = self._gauges
        yield GaugeMetricFamily(
            "chat_password_checks_waiting",
            "Password hashes and checks waiting for or running on a "
            "thread.", value=g.passwordChecks())
        yield GaugeMetricFamily(
            "chat_lease_age_seconds",
            "Seconds since this node's lease was last renewed.",
            value=g.leaseAge())
        if g.redisUp is not None:
            yield GaugeMetricFamily(
                "chat_redis_up", "1 while both links to Redis are up.",
                value=int(g.redisUp()))

    def _connectionGauges(self) -> Iterator[Metric]:
        connections = dict.fromkeys(DIALECTS, 0)
        sessions = dict.fromkeys(DIALECTS, 0)
        unknown, buffered = 0, 0
        for connection in self._gauges.connections():
            buffered += connection.outputBytes
            if connection.dialect is None:
                unknown += 1
                continue
            connections[connection.dialect] += 1
            if connection.loggedIn:
                sessions[connection.dialect] += 1
        family = GaugeMetricFamily(
            "chat_connections", "Open client connections, by dialect "
            "(none: no message yet).", labels=["dialect"])
        for dialect, n in (*connections.items(), ("none", unknown)):
            family.add_metric([dialect], n)
        yield family
        family = GaugeMetricFamily(
            "chat_sessions", "Logged-in sessions, by dialect.",
            labels=["dialect"])
        for dialect, n in sessions.items():
            family.add_metric([dialect], n)
        yield family
        yield GaugeMetricFamily(
            "chat_output_buffered_bytes",
            "Bytes waiting in this node to be written to clients, summed "
            "over connections.", value=buffered)


class NodeMetrics:
    """
    One node's registry: the chat's collector and the library's process,
    platform and garbage collector metrics.
    """

    def __init__(self, counters: Counters, gauges: NodeGauges) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ChatCollector(counters, gauges))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def render(self) -> bytes:
        """The text exposition of every metric now."""
        return generate_latest(self.registry)
