"""
Tests of the end-to-end harness itself, against real redis-server, mariadbd
and haproxy, with a small Twisted line server standing in for the chat node
(so they pass before, and independently of, the chat server).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from unittest import SkipTest, mock

from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.trial import unittest

from tests import harness
from tests.harness.process import _ephemeralRange
from tests.harness import (
    ChatNode, HAProxy, LineClient, OwnMariaDB, RedisServer, SharedMariaDBDatabase,
    freePort, proxyV2Header, renderHAProxyConfig, requireProgram,
)

FAKE_NODE = r"""
import sys
from twisted.internet import endpoints, protocol, reactor
from twisted.protocols.basic import LineReceiver

class Fake(LineReceiver):
    def lineReceived(self, line):
        if line.strip() == b"ping":
            self.sendLine(b"PONG")
        elif line == b"whoami":
            peer = self.transport.getPeer()
            self.sendLine(f"{sys.argv[2]} {peer.host} {peer.port}".encode())

def listening(port):
    host = port.getHost()
    print(f"Chat server listening on {host.host}:{host.port}", flush=True)
    if len(sys.argv) > 3:
        from twisted.web import resource, server
        root = resource.Resource()
        ready = resource.Resource()
        ready.render_GET = lambda request: b"ready\n"
        root.putChild(b"ready", ready)
        web = endpoints.serverFromString(reactor, sys.argv[3]).listen(server.Site(root))
        web.addCallback(lambda p: print(
            f"readiness on http://{p.getHost().host}:{p.getHost().port}", flush=True))

d = endpoints.serverFromString(reactor, sys.argv[1]).listen(protocol.Factory.forProtocol(Fake))
d.addCallbacks(listening, lambda f: (f.printTraceback(), reactor.stop()))
reactor.run()
"""


class FakeNode(ChatNode):
    """A ChatNode whose process is a tiny Twisted server that logs the same
    line: it answers ping/PONG and `whoami` with its id and the peer it sees
    (behind haproxy: the address from the PROXY v2 header)."""

    def argv(self) -> list[str]:
        return [sys.executable, "-c", FAKE_NODE, self.endpoint(), self.nodeId or "fake",
                *([self.metricsEndpoint()] if self.metrics else [])]


def scriptedServer(testCase: unittest.TestCase, script: list[bytes | float]) -> tuple[str, int]:
    """A one-connection server that sends bytes / sleeps as scripted, then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    testCase.addCleanup(listener.close)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            for step in script:
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    connection.sendall(step)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    testCase.addCleanup(thread.join, 5)
    return listener.getsockname()


class BasicsTests(unittest.SynchronousTestCase):
    def test_freePort(self) -> None:
        """The port is bindable and below the ephemeral range (no self-connects)."""
        port = freePort()
        self.assertLess(port, _ephemeralRange()[0])
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

    def test_requireProgramMissing(self) -> None:
        """A missing program skips, or fails under CHAT_REQUIRE_SERVICES=1."""
        with mock.patch.dict(os.environ, {"CHAT_REQUIRE_SERVICES": ""}):
            self.assertRaises(SkipTest, requireProgram, self, "no-such-program-xyz")
        with mock.patch.dict(os.environ, {"CHAT_REQUIRE_SERVICES": "1"}):
            self.assertRaises(self.failureException, requireProgram, self, "no-such-program-xyz")

    def test_requireProgramFound(self) -> None:
        self.assertTrue(os.path.isabs(requireProgram(self, "sh")))

    def test_proxyV2Header(self) -> None:
        """Twisted's own parser reads our header as HAProxy's."""
        info = V2Parser.parse(proxyV2Header(("10.1.2.3", 4567), ("127.0.0.1", 8000)))
        self.assertEqual((info.source.host, info.source.port), ("10.1.2.3", 4567))
        self.assertEqual((info.destination.host, info.destination.port), ("127.0.0.1", 8000))
        self.assertIsNone(V2Parser.parse(proxyV2Header(None)).source)

    def test_renderReferenceConfig(self) -> None:
        """The test config keeps the reference's checks and swaps only what it must."""
        text = renderHAProxyConfig(
            harness.HAPROXY_CFG.read_text(), port=12345,
            servers=[("node1", "127.0.0.1", 1111, 1112), ("node2", "127.0.0.1", 2222, 2223)],
            statsSocket="/tmp/x/stats.sock", checkInterval="500ms", maxconn=100)
        lines = [line.strip() for line in text.splitlines()]
        self.assertIn("bind 127.0.0.1:12345", lines)
        self.assertIn("server node1 127.0.0.1:1111 send-proxy-v2 check port 1112", lines)
        self.assertIn("server node2 127.0.0.1:2222 send-proxy-v2 check port 2223", lines)
        self.assertEqual(sum(line.startswith("server ") for line in lines), 2)
        self.assertIn("stats socket /tmp/x/stats.sock mode 600 level admin", lines)
        self.assertIn("maxconn 100", lines)
        for line in ["balance leastconn", "option httpchk GET /ready",
                     "http-check expect status 200"]:
            self.assertIn(line, lines)
        self.assertTrue(any(line.startswith("default-server inter 500ms") for line in lines))

    def test_referenceConfigValid(self) -> None:
        """haproxy -c accepts the top-level haproxy.cfg as it is."""
        import subprocess
        haproxy = requireProgram(self, "haproxy")
        result = subprocess.run([haproxy, "-c", "-f", str(harness.HAPROXY_CFG)],
                                capture_output=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


class LineClientTests(unittest.SynchronousTestCase):
    def test_lines(self) -> None:
        """Lines split across reads or packed into one come out whole and in order."""
        host, port = scriptedServer(self, [b"PO", 0.1, b"NG\r\n{\"a\":1}\n", b"OK 2 things\r\n  a\r\n  b\r\n"])
        with LineClient(host, port) as client:
            self.assertEqual(client.readLine(), b"PONG")
            self.assertEqual(client.readJSON(), {"a": 1})
            self.assertEqual(client.readList(), ("OK 2 things", ["  a", "  b"]))
            self.assertEqual(client.readUntilClosed(), b"")

    def test_expectNothing(self) -> None:
        host, port = scriptedServer(self, [0.5, b"late\n", 2.0])
        with LineClient(host, port) as client:
            client.expectNothing(0.2)
            self.assertRaises(AssertionError, client.expectNothing, 1.0)
            self.assertEqual(client.readLine(), b"late")

    def test_timeoutAndClose(self) -> None:
        """A missing reply is a test failure that shows the partial data."""
        host, port = scriptedServer(self, [b"part", 0.5])
        with LineClient(host, port) as client:
            error = self.assertRaises(AssertionError, client.readLine, 0.1)
            self.assertIn("b'part'", str(error))
            error = self.assertRaises(AssertionError, client.readLine, 2.0)
            self.assertIn("closed", str(error))

    def test_send(self) -> None:
        """sendLine and sendJSON frame as the protocol says."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with LineClient(*listener.getsockname()) as client:
            server, _ = listener.accept()
            with server:
                client.sendLine("héllo")
                client.sendJSON({"msgid": 12})
                client.sendJSON({"msg": "张三"}, classic=True)
                client.close()
                data = b""
                while chunk := server.recv(1000):
                    data += chunk
        self.assertEqual(data, 'héllo\r\n{"msgid":12}\n{"msg":"张三"}\0'.encode())


class ProcessTests(unittest.SynchronousTestCase):
    def test_chatNodeLifecycle(self) -> None:
        """Readiness from the log line; kill and restart on the same port."""
        node = FakeNode(self, nodeId="n1")
        self.assertEqual(node.address[0], "127.0.0.1")
        self.assertEqual(node.client().command("ping"), "PONG")
        port = node.port
        node.kill()
        self.assertFalse(node.running)
        node.start()
        self.assertEqual(node.port, port)
        self.assertEqual(node.client().command("ping"), "PONG")
        self.assertEqual(node.stop(), 0)
        self.assertIn("listening on", node.log())

    def test_chatNodeEarlyExit(self) -> None:
        """A node that dies at start fails the test with its log, quickly."""
        started = time.monotonic()
        error = self.assertRaises(self.failureException, ChatNode, self,
                                  extraArgs=["--no-such-option"])
        self.assertIn("exited with status", str(error))
        self.assertLess(time.monotonic() - started, 15)

    def test_haproxyNode(self) -> None:
        """haproxy=True: the node reads PROXY v2, and client() sends one."""
        node = FakeNode(self, haproxy=True, nodeId="n1")
        header = proxyV2Header(("10.9.8.7", 1234), node.address)
        self.assertEqual(node.client(proxyHeader=header).command("whoami"), "n1 10.9.8.7 1234")

    def test_redis(self) -> None:
        """PING, and restart on the same port after stop and after kill."""
        redis = RedisServer(self)
        self.assertTrue(redis.url.startswith("redis://127.0.0.1:"))
        self.assertEqual(redis.command("SET", "k", "v"), b"OK")
        self.assertEqual(redis.command("GET", "k"), b"v")
        redis.stop()
        self.assertFalse(redis.ping())
        redis.start()
        self.assertTrue(redis.ping())
        self.assertIsNone(redis.command("GET", "k"))  # nothing persisted
        redis.kill()
        redis.start()
        self.assertEqual(redis.command("PUBSUB", "NUMSUB", "c"), [b"c", 0])
        self.assertIn(str(redis.port), redis.url)

    def test_sharedMariaDB(self) -> None:
        """A private database on the shared server, dropped at cleanup."""
        db = SharedMariaDBDatabase(self)
        self.assertTrue(db.url.endswith(f"@127.0.0.1:3306/{db.database}"))
        db.query("CREATE TABLE t (name VARCHAR(10))")
        db.query("INSERT INTO t VALUES (%s)", ["张三"])
        self.assertEqual(db.query("SELECT name FROM t"), [("张三",)])
        db.cleanup()
        db.cleanup()  # idempotent: the registered cleanup runs again
        connection = db.connect(database="")
        self.addCleanup(connection.close)
        with connection.cursor() as cursor:
            cursor.execute("SHOW DATABASES LIKE %s", [db.database])
            self.assertEqual(cursor.fetchall(), ())

    def test_ownMariaDB(self) -> None:
        """A private mariadbd keeps committed rows across a kill and a stop."""
        db = OwnMariaDB(self)
        self.assertEqual(db.url, f"mysql://root:@127.0.0.1:{db.port}/chat")
        db.query("CREATE TABLE t (n INT) ENGINE=InnoDB")
        db.query("INSERT INTO t VALUES (1)")
        db.kill()
        db.start()
        db.query("INSERT INTO t VALUES (2)")
        self.assertEqual(db.stop(), 0)
        db.start()
        self.assertEqual(db.query("SELECT n FROM t ORDER BY n"), [(1,), (2,)])


class HAProxyTests(unittest.SynchronousTestCase):
    def test_proxyAndChecks(self) -> None:
        """
        Through the generated config: health checks pass against a haproxy:
        endpoint (so they carry PROXY v2), the node sees the client's real
        address, drain/ready/maint work, and a killed node goes DOWN.
        """
        nodes = [FakeNode(self, haproxy=True, nodeId=f"n{i}") for i in (1, 2)]
        proxy = HAProxy(self, nodes)
        proxy.waitForStatus("node1", "UP")
        proxy.waitForStatus("node2", "UP")

        client = proxy.client()
        reply = client.command("whoami").split()
        self.assertEqual(reply[1:], ["127.0.0.1", str(client.sock.getsockname()[1])])

        proxy.setServerState("node1", "drain")
        self.assertEqual(proxy.serverStatus()["node1"], "DRAIN")
        self.assertEqual({proxy.client().command("whoami").split()[0] for _ in range(3)}, {"n2"})
        proxy.setServerState("node1", "ready")
        proxy.setServerState("node2", "maint")
        self.assertEqual(proxy.serverStatus()["node2"], "MAINT")
        self.assertEqual(proxy.client().command("whoami").split()[0], "n1")
        proxy.setServerState("node2", "ready")

        nodes[0].kill()
        proxy.waitForStatus("node1", "DOWN", timeout=5)
        nodes[0].start()
        proxy.waitForStatus("node1", "UP", timeout=5)
        self.assertRaises(ValueError, proxy.setServerState, "node1", "bogus")
