"""
Tests for L{chat.cluster.redisclient}: our own pipelined command
connection to Redis (unit tests over a StringTransport and a Clock), and
the client that keeps one up, against a real redis-server.
"""

from __future__ import annotations

import time
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chat.cluster.redisclient import RedisClient, RedisConnection
from tests.harness import RedisServer


class FakeClient:
    """What a connection needs of its client: a clock, and an ear for
    its loss."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.usableConnections: list[RedisConnection] = []
        self.lost: list[RedisConnection] = []

    def usable(self, connection: RedisConnection) -> None:
        self.usableConnections.append(connection)

    def connectionLost(self, connection: RedisConnection) -> None:
        self.lost.append(connection)


def results(d: Deferred[Any]) -> list[Any]:
    """
    What C{d} has fired with so far (a one-element list), or []; a result
    is passed on, a failure consumed.
    """
    fired: list[Any] = []

    def record(result: Any) -> Any:
        fired.append(result)
        return None if isinstance(result, Failure) else result

    d.addBoth(record)
    return fired


class RedisConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client = FakeClient()
        self.connection = RedisConnection(self.client)  # type: ignore[arg-type] # a fake client
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)

    def test_command(self) -> None:
        """A command is written in RESP; its reply fires its Deferred."""
        d = self.connection.command("PUBLISH", b"chat:user:7", "hé")
        self.assertEqual(
            self.transport.value(),
            b"*3\r\n$7\r\nPUBLISH\r\n$11\r\nchat:user:7\r\n$3\r\nh\xc3\xa9\r\n")
        self.assertEqual(results(d), [])
        self.connection.dataReceived(b":2\r\n")
        self.assertEqual(results(d), [2])

    def test_errorReply(self) -> None:
        """An error reply fails the command's Deferred with it."""
        d = self.connection.command("INCR", "k")
        self.connection.dataReceived(b"-ERR not an integer\r\n")
        [failure] = results(d)
        self.assertIsInstance(failure, Failure)
        failure.trap(txredisapi.ResponseError)
        self.assertEqual(failure.value.args, ("not an integer",))

    def test_pipeline(self) -> None:
        """
        A batch is one write and one Deferred, which fires once every
        reply came, in order, errors as values; replies may be cut
        anywhere.
        """
        d = self.connection.pipeline([("PUBLISH", "a", "x"),
                                      ("PUBLISH", "b", "x"),
                                      ("GET", "c")])
        self.assertEqual(self.transport.value().count(b"PUBLISH"), 2)
        self.connection.dataReceived(b":1\r\n:")
        self.assertEqual(results(d), [])
        self.connection.dataReceived(b"0\r\n-WRONGTYPE no\r\n")
        [[one, zero, error]] = results(d)
        self.assertEqual((one, zero), (1, 0))
        self.assertIsInstance(error, txredisapi.ResponseError)

    def test_emptyPipeline(self) -> None:
        self.assertEqual(results(self.connection.pipeline([])), [[]])
        self.assertEqual(self.transport.value(), b"")

    def test_repliesInCommandOrder(self) -> None:
        """Each reply answers the oldest command waiting."""
        first = self.connection.command("GET", "a")
        batch = self.connection.pipeline([("GET", "b")])
        last = self.connection.command("GET", "c")
        self.connection.dataReceived(b"$1\r\nA\r\n$1\r\nB\r\n$-1\r\n")
        self.assertEqual((results(first), results(batch), results(last)),
                         ([b"A"], [[b"B"]], [None]))

    def test_connectionLost(self) -> None:
        """
        Losing the link fails every command waiting with ConnectionError
        (a batch gets it as values) and tells the client.
        """
        single = self.connection.command("GET", "a")
        batch = self.connection.pipeline([("GET", "b"), ("GET", "c")])
        self.connection.connectionLost(Failure(ConnectionError("gone")))
        [failure] = results(single)
        failure.trap(txredisapi.ConnectionError)
        [[b, c]] = results(batch)
        self.assertIsInstance(b, txredisapi.ConnectionError)
        self.assertIsInstance(c, txredisapi.ConnectionError)
        self.assertEqual(self.client.lost, [self.connection])

    def test_progress(self) -> None:
        """
        The watchdog's inputs: a command sent on an idle link, and any data
        arriving, are progress; a command sent while others wait is not.
        """
        self.client.clock.advance(5)
        self.connection.command("GET", "a")
        self.assertEqual(self.connection.lastProgress, 5)
        self.assertTrue(self.connection.outstanding())
        self.client.clock.advance(3)
        self.connection.command("GET", "b")
        self.assertEqual(self.connection.lastProgress, 5)
        self.connection.dataReceived(b"$-1\r\n")
        self.assertEqual(self.connection.lastProgress, 8)
        self.connection.dataReceived(b"$-1\r\n")
        self.assertFalse(self.connection.outstanding())

    def test_garbled(self) -> None:
        """A stream that is not RESP drops the link."""
        self.connection.command("GET", "a")
        self.connection.dataReceived(b"?what\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_unaskedReply(self) -> None:
        """A reply no command asked for means the stream is out of step:
        the link is dropped."""
        self.connection.dataReceived(b"+OK\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_prepared(self) -> None:
        self.connection.prepared()
        self.assertEqual(self.client.usableConnections, [self.connection])


class RedisClientTests(TestCase):
    """The client against a real redis-server, restarted under it."""

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.ready: list[RedisConnection] = []
        self.lost: list[RedisConnection] = []
        self.client = RedisClient(
            reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", self.redis.port),
            3, self.ready.append, self.lost.append)
        self.client.startService()
        self.addCleanup(self.client.stopService)

    async def eventually(self, predicate: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("timed out waiting")
            await deferLater(reactor, 0.02, lambda: None)

    async def test_selectsTheDatabase(self) -> None:
        """Commands run in the database the URL names."""
        await self.eventually(lambda: self.ready)
        self.assertEqual(await self.client.command("SET", "k", "v"), "OK")
        self.assertEqual(self.redis.command("SELECT", 3), b"OK")
        self.assertIsNone(self.redis.command("GET", "k"))  # fresh connection: db 0

    async def test_reconnects(self) -> None:
        """
        While Redis is down a command fails at once; once it is back the
        client reconnects by itself (and selects the database again).
        """
        await self.eventually(lambda: self.ready)
        self.redis.stop()
        await self.eventually(lambda: self.lost)
        self.assertIsNone(self.client.connection)
        with self.assertRaises(txredisapi.ConnectionError):
            await self.client.command("PING")
        self.redis.start()
        await self.eventually(lambda: len(self.ready) == 2)
        self.assertEqual(await self.client.command("INCR", "n"), 1)
