"""
Unit tests of L{chat.ops}: the counters and their histograms, the
Prometheus exposition, the metered service, the HTTP endpoints, the drain
and the operators' orders, with Twisted's test helpers (Clock,
DummyRequest) and, where the database matters, a real L{Store} on a
temporary SQLite file.
"""

from __future__ import annotations

from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from chat.core.errors import NotFound, Unavailable
from chat.core.messages import Chat, ChatSent, Ping, Pong
from chat.ops.counters import Counters, Histogram, NoCounters
from chat.ops.drain import DRAINING, Drain
from chat.ops.metered import MeteredService, requestName
from chat.ops.metrics import Connection, NodeGauges, NodeMetrics
from chat.ops.orders import KICKED, OrderPoller
from chat.ops.web import Readiness, opsSite
from chat.passwords import Passwords
from chat.server.service import ChatService
from chat.storage.store import Store
from tests.test_service import NODE, FakeSession, ServiceTestCase


def samples(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def gauges(connections: list[Connection] = [], redisUp: Any = None) -> NodeGauges:
    return NodeGauges(connections=lambda: connections, passwordChecks=lambda: 3,
                      leaseAge=lambda: 0.25, redisUp=redisUp)


class HistogramTests(SynchronousTestCase):
    def test_buckets(self) -> None:
        """An observation counts in the first bucket whose bound is not
        below it (Prometheus's le), and every later one cumulatively."""
        h = Histogram((0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 2.0):
            h.observe(value)
        self.assertEqual(h.cumulative(), [("0.1", 2), ("1.0", 3), ("+Inf", 4)])
        self.assertAlmostEqual(h.total, 2.65)


class ExpositionTests(SynchronousTestCase):
    def test_counters(self) -> None:
        """What was counted is what a scrape reads, under the documented names."""
        counters = Counters()
        counters.request("chat", "ok", 0.001)
        counters.request("chat", "104", 0.002)
        counters.routed("local", 2)
        counters.routed("stored")
        counters.published("taken", 3)
        counters.stored(4)
        counters.delivered(5)
        counters.limited("chat")
        counters.database(0.02)
        got = samples(NodeMetrics(counters, gauges()))
        self.assertEqual(got["chat_requests_total", (("request", "chat"), ("result", "ok"))], 1)
        self.assertEqual(got["chat_requests_total", (("request", "chat"), ("result", "104"))], 1)
        self.assertEqual(got["chat_request_seconds_count", (("request", "chat"),)], 2)
        self.assertEqual(got["chat_messages_total", (("path", "local"),)], 2)
        self.assertEqual(got["chat_messages_total", (("path", "remote"),)], 0)
        self.assertEqual(got["chat_messages_total", (("path", "stored"),)], 1)
        self.assertEqual(got["chat_publish_total", (("outcome", "taken"),)], 3)
        self.assertEqual(got["chat_publish_total", (("outcome", "uncertain"),)], 0)
        self.assertEqual(got["chat_offline_stored_total", ()], 4)
        self.assertEqual(got["chat_offline_delivered_total", ()], 5)
        self.assertEqual(got["chat_rate_limited_total", (("limit", "chat"),)], 1)
        self.assertEqual(got["chat_db_seconds_count", ()], 1)
        self.assertEqual(got["chat_db_seconds_bucket", (("le", "0.025"),)], 1)
        self.assertEqual(got["chat_db_seconds_bucket", (("le", "0.01"),)], 0)
        self.assertEqual(got["chat_password_checks_waiting", ()], 3)
        self.assertEqual(got["chat_lease_age_seconds", ()], 0.25)
        self.assertNotIn(("chat_redis_up", ()), got)
        # The library's process metrics, from the node's own registry.
        self.assertIn(("process_resident_memory_bytes", ()), got)

    def test_gaugesAtScrapeTime(self) -> None:
        """Connections and sessions by dialect, buffered bytes summed, Redis
        read from the bus: all asked when scraped, not kept."""
        connections = [Connection("text", True, 10), Connection("text", False, 0),
                       Connection("classic", True, 5), Connection(None, False, 0)]
        up = [True]
        metrics = NodeMetrics(Counters(), gauges(connections, lambda: up[0]))
        got = samples(metrics)
        self.assertEqual(got["chat_connections", (("dialect", "text"),)], 2)
        self.assertEqual(got["chat_connections", (("dialect", "classic"),)], 1)
        self.assertEqual(got["chat_connections", (("dialect", "none"),)], 1)
        self.assertEqual(got["chat_sessions", (("dialect", "text"),)], 1)
        self.assertEqual(got["chat_sessions", (("dialect", "json"),)], 0)
        self.assertEqual(got["chat_output_buffered_bytes", ()], 15)
        self.assertEqual(got["chat_redis_up", ()], 1)
        connections.pop(0)
        up[0] = False
        got = samples(metrics)
        self.assertEqual(got["chat_connections", (("dialect", "text"),)], 1)
        self.assertEqual(got["chat_redis_up", ()], 0)

    def test_registriesApart(self) -> None:
        """Two nodes' metrics in one process do not collide (no global registry)."""
        one, two = Counters(), Counters()
        one.routed("local")
        self.assertEqual(samples(NodeMetrics(one, gauges()))["chat_messages_total", (("path", "local"),)], 1)
        self.assertEqual(samples(NodeMetrics(two, gauges()))["chat_messages_total", (("path", "local"),)], 0)

    def test_noCounters(self) -> None:
        """Without --metrics nothing is counted."""
        counters = NoCounters()
        counters.request("chat", "ok", 1.0)
        counters.routed("local")
        counters.database(1.0)
        self.assertEqual((counters.requests, counters.messages["local"],
                          counters.dbSeconds.counts[-1]), ({}, 0, 0))


class FakeService:
    """An IChatService whose answers the test chooses."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def handle(self, session: Any, request: Any) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class MeteredServiceTests(SynchronousTestCase):
    def test_names(self) -> None:
        self.assertEqual(requestName(Chat(2, "hi")), "chat")
        self.assertEqual(requestName(Ping()), "ping")

    def counted(self, answer: Any) -> dict[tuple[str, str], int]:
        counters = Counters()
        service = MeteredService(FakeService(answer), counters)  # type: ignore[arg-type]
        try:
            result = service.handle(FakeSession(), Chat(2, "hi"))  # type: ignore[arg-type]
        except Exception:
            pass
        else:
            if isinstance(result, Deferred):
                result.addErrback(lambda f: None)
        self.assertEqual(counters.meters["chat"].seconds.counts[-1], 0)
        self.assertEqual(sum(counters.meters["chat"].seconds.counts), 1)
        return counters.requests

    def test_results(self) -> None:
        """ok for an answer, now or later; the errno for a refusal, raised or
        failed; 107 for a bug."""
        self.assertEqual(self.counted(ChatSent("online")), {("chat", "ok"): 1})
        self.assertEqual(self.counted(succeed(ChatSent("online"))), {("chat", "ok"): 1})
        self.assertEqual(self.counted(NotFound("no")), {("chat", "104"): 1})
        self.assertEqual(self.counted(fail(Unavailable("db"))), {("chat", "107"): 1})
        self.assertEqual(self.counted(ZeroDivisionError()), {("chat", "107"): 1})

    def test_pending(self) -> None:
        """A request still waiting is not counted yet."""
        counters = Counters()
        d: Deferred[Any] = Deferred()
        MeteredService(FakeService(d), counters).handle(  # type: ignore[arg-type]
            FakeSession(), Ping())  # type: ignore[arg-type]
        self.assertEqual(counters.requests, {})
        d.callback(Pong())
        self.assertEqual(counters.requests, {("ping", "ok"): 1})


def get(site: Any, path: bytes) -> DummyRequest:
    """Render C{path} of C{site} as twisted.web would."""
    request = DummyRequest(path.strip(b"/").split(b"/"))
    resource = site.getResourceFor(request)
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
        request.finish()
    return request


class WebTests(SynchronousTestCase):
    def site(self, ping: Any = lambda: succeed(None), draining: Optional[str] = None,
             redisUp: Any = None) -> Any:
        self.clock = Clock()
        self.draining = draining
        readiness = Readiness(ping, lambda: self.draining, redisUp)
        return opsSite(NodeMetrics(Counters(), gauges()), readiness, self.clock)

    def test_metrics(self) -> None:
        request = get(self.site(), b"/metrics")
        self.assertEqual(request.responseCode or 200, 200)
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])
        self.assertIn(b"chat_connections{dialect=\"text\"} 0.0", b"".join(request.written))

    def test_health(self) -> None:
        request = get(self.site(ping=lambda: Deferred()), b"/health")
        self.assertEqual((request.responseCode, b"".join(request.written)), (200, b"ok\n"))

    def test_ready(self) -> None:
        request = get(self.site(redisUp=lambda: True), b"/ready")
        self.assertEqual((request.responseCode, b"".join(request.written)), (200, b"ready\n"))

    def test_notReady(self) -> None:
        """Draining, Redis down, a database that fails or does not answer in
        time: 503, with the reason as the body."""
        site = self.site(draining="SIGUSR1")
        request = get(site, b"/ready")
        self.assertEqual((request.responseCode, b"".join(request.written)),
                         (503, b"draining: SIGUSR1\n"))
        request = get(self.site(redisUp=lambda: False), b"/ready")
        self.assertEqual((request.responseCode, b"".join(request.written)),
                         (503, b"Redis is unreachable\n"))
        request = get(self.site(ping=lambda: fail(Unavailable("down"))), b"/ready")
        self.assertEqual(request.responseCode, 503)
        self.assertIn(b"database does not answer", b"".join(request.written))
        site = self.site(ping=lambda: Deferred())
        request = get(site, b"/ready")
        self.assertEqual(request.written, [])
        self.clock.advance(2.0)
        self.assertEqual(request.responseCode, 503)


class FakeRegistry:
    def __init__(self, userIds: list[int]) -> None:
        self.users = list(userIds)
        self.closed: list[tuple[int, str]] = []

    def userIds(self) -> list[int]:
        return list(self.users)

    def count(self) -> int:
        return len(self.users)

    def close(self, userId: int, reason: str) -> None:
        self.users.remove(userId)
        self.closed.append((userId, reason))

    def __contains__(self, userId: int) -> bool:
        return userId in self.users


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = FakeRegistry(list(range(100)))
        self.stopped: list[bool] = []
        self.drain = Drain(self.registry, self.clock, rate=200.0, grace=1.0,
                           stop=lambda: self.stopped.append(True))

    def test_paced(self) -> None:
        """Not ready at once; nobody closed during the grace; then 200 a
        second (10 a tick of 50 ms), each told to reconnect; the node stops
        once none is left."""
        self.assertIsNone(self.drain.reason)
        self.drain.start("SIGUSR1")
        self.assertEqual(self.drain.reason, "SIGUSR1")
        self.clock.advance(0.99)
        self.assertEqual(self.registry.closed, [])
        self.clock.advance(0.01)
        self.assertEqual(len(self.registry.closed), 10)
        self.assertEqual({reason for _, reason in self.registry.closed}, {DRAINING})
        self.clock.advance(0.05)
        self.assertEqual(len(self.registry.closed), 20)
        self.clock.pump([0.05] * 8)
        self.assertEqual(len(self.registry.closed), 100)
        self.assertEqual(self.stopped, [])
        self.clock.advance(0.05)
        self.assertEqual(self.stopped, [True])

    def test_once(self) -> None:
        """A second order while draining changes nothing."""
        self.drain.start("SIGUSR1")
        self.drain.start("chatctl drain")
        self.assertEqual(self.drain.reason, "SIGUSR1")
        self.clock.pump([1.0] + [0.05] * 11)
        self.assertEqual(self.stopped, [True])

    def test_lateLogins(self) -> None:
        """A session that logs in during the drain is moved off too."""
        self.drain.start("SIGUSR1")
        self.clock.pump([1.0] + [0.05] * 5)
        self.registry.users.append(500)
        self.clock.pump([0.05] * 10)
        self.assertIn((500, DRAINING), self.registry.closed)
        self.assertEqual(self.stopped, [True])


class CountedServiceTests(ServiceTestCase):
    """The router and the store count what they do, over a real Store."""

    def setUp(self) -> None:
        super().setUp()
        self.counters = Counters()
        self.store = Store(self.database, self.counters)
        self.service = ChatService(
            self.store, self.bus, Passwords(timeCost=1, memoryKiB=8), NODE,
            self.lease, clock=lambda: "2024-01-01 12:00:00", counters=self.counters)

    async def test_localAndStored(self) -> None:
        """A chat to a local session is one local copy; one to a logged-out
        user one stored copy, one row stored, taken at the next login."""
        alice, bob = await self.register("alice"), await self.register("bob")
        aliceSession, _ = await self.login(alice)
        bobSession, _ = await self.login(bob)
        await self.call(aliceSession, Chat(bob, "hi"))
        self.assertEqual(self.counters.messages, {"local": 1, "remote": 0, "stored": 0})
        await self.service.sessionEnded(bobSession)
        await self.call(aliceSession, Chat(bob, "later"))
        self.assertEqual(self.counters.messages, {"local": 1, "remote": 0, "stored": 1})
        await self.settle()
        self.assertEqual(self.counters.offlineStored, 1)
        self.assertEqual(self.counters.offlineDelivered, 0)
        _, reply = await self.login(bob)
        self.assertEqual([e.text for e in reply.offline], ["later"])
        self.assertEqual(self.counters.offlineDelivered, 1)
        # One node's bus: the copy for logged-out bob was published first
        # (the directory did not know he was offline), and nobody took it.
        self.assertEqual(self.counters.publishes,
                         {"taken": 0, "nobody": 1, "failed": 0, "uncertain": 0})


class OrderTests(ServiceTestCase):
    """chatctl's orders, as the node reads them from the database."""

    async def test_kickAndDrain(self) -> None:
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        clock = Clock()
        registry = FakeRegistry([alice])
        drain = Drain(registry, clock, grace=0.0, stop=lambda: None)
        poller = OrderPoller(self.store, NODE, registry, drain, clock)  # type: ignore[arg-type]
        await poller.poll()
        self.assertEqual((registry.closed, drain.reason), ([], None))
        await self.pool.runOperation(
            "INSERT INTO kicks (user_id, node_id) VALUES (?, ?)", (alice, NODE))
        await self.pool.runOperation(
            "INSERT INTO kicks (user_id, node_id) VALUES (?, ?)", (999, NODE))
        await poller.poll()
        self.assertEqual(registry.closed, [(alice, KICKED)])
        self.assertEqual(await self.pool.runQuery("SELECT * FROM kicks"), [])
        await self.pool.runOperation(
            "UPDATE nodes SET draining = 1 WHERE node_id = ?", (NODE,))
        await poller.poll()
        self.assertEqual(drain.reason, "chatctl drain")

    def test_restartForgetsOrders(self) -> None:
        """A node that starts again under its id is not draining, and the
        kicks meant for its earlier run's sessions are gone."""
        self.database.runBlocking(lambda cursor: (
            cursor.execute("UPDATE nodes SET draining = 1 WHERE node_id = ?", (NODE,)),
            cursor.execute("INSERT INTO kicks (user_id, node_id) VALUES (1, ?)", (NODE,))))
        self.store.prepare(NODE)
        self.assertEqual(self.database.runBlocking(lambda cursor: (
            cursor.execute("SELECT draining FROM nodes WHERE node_id = ?", (NODE,)),
            cursor.fetchall(), cursor.execute("SELECT * FROM kicks"),
            cursor.fetchall())[1::2]), ([(0,)], []))
