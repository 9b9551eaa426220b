"""
End-to-end tests of operating a cluster (issue 11): real C{twistd -n chat}
nodes with C{--metrics}, a private Redis, MariaDB (the machine's, or a
private C{mariadbd} that the test stops), a real HAProxy on its own ports,
and C{chatctl} run as a separate process.

 - the counters of C{/metrics} move by exactly the traffic sent, on one
   node and across two;
 - C{/ready} turns 503 while the node's database is stopped, 200 again
   after, while C{/health} stays 200;
 - SIGUSR1 drains a node: not ready, its users told to reconnect, exit;
 - C{chatctl drain} of a node behind HAProxy while 200 users chat through
   it: HAProxy takes it out within 5 s, every user ends up on the other
   node, and none of 2,000 messages is lost;
 - every C{chatctl} command against a real cluster, bad input included.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from prometheus_client.parser import text_string_to_metric_families
from twisted.python import log
from twisted.trial import unittest

from tests.harness import (
    ROOT, ChatNode, LineClient, OwnMariaDB, RedisServer, SharedMariaDBDatabase, freePort,
)
from tests.test_e2e_cluster import (
    PASSWORD, ClusterMixin, MSG, LOGGED_IN, textRegister, textRegisterLogin,
)


class Scrape:
    """One scrape of a node's /metrics."""

    def __init__(self, node: ChatNode) -> None:
        status, body = node.http("/metrics")
        if status != 200:
            raise AssertionError(f"/metrics answered {status}: {body}")
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                self.values[sample.name, frozenset(sample.labels.items())] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)


def moved(before: Scrape, after: Scrape, names: Sequence[tuple[str, dict[str, str]]]) -> dict[str, float]:
    """How much each named sample moved between two scrapes."""
    return {f"{name}{labels or ''}": after(name, **labels) - before(name, **labels)
            for name, labels in names}


COUNTED = [
    ("chat_requests_total", {"request": "chat", "result": "ok"}),
    ("chat_requests_total", {"request": "chat", "result": "104"}),
    ("chat_messages_total", {"path": "local"}),
    ("chat_messages_total", {"path": "remote"}),
    ("chat_messages_total", {"path": "stored"}),
    ("chat_publish_total", {"outcome": "taken"}),
    ("chat_offline_stored_total", {}),
    ("chat_offline_delivered_total", {}),
]


def chatctl(*args: str, db: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """C{chatctl --db DB ARGS}, as its own process, run from this checkout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "chat.ops.chatctl", "--db", db, *args],
                          cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def waitFor(testCase: Any, check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            testCase.fail(f"no {what} within {timeout:g} s")
        time.sleep(0.05)


def exchange(testCase: Any, sender: Any, receiver: Any, receiverName: str,
             count: int) -> None:
    """C{count} numbered chats, each answered and read by the receiver."""
    for i in range(count):
        testCase.assertIn(sender.command(f"chat {receiverName} n {i}"),
                          ("OK delivered",))
        match = MSG.match(receiver.readText())
        testCase.assertEqual(match.group(4), f"n {i}")


class SingleNodeMetricsTests(unittest.SynchronousTestCase):
    def test_countersMoveByTheTraffic(self) -> None:
        """
        On one node: 25 chats between two telnet users, one to a nobody
        (104), and one stored for a logged-out user and taken at its login,
        move the counters by exactly that; the gauges show two text
        sessions, then one.
        """
        node = ChatNode(self)
        alice, bob = node.client(), node.client()
        textRegisterLogin(self, alice, "alice")
        bobId = textRegisterLogin(self, bob, "bob")
        before = Scrape(node)
        self.assertEqual(before("chat_sessions", dialect="text"), 2)
        self.assertEqual(before("chat_connections", dialect="text"), 2)
        self.assertEqual(Scrape(node)("chat_lease_age_seconds") < 3, True)
        exchange(self, alice, bob, "bob", 25)
        self.assertRegex(alice.command("chat nobody hi"), r"^ERR 104 ")
        self.assertEqual(bob.command("logout"), "OK logged out")
        self.assertEqual(alice.command("chat bob later"), "OK stored for offline delivery")
        during = Scrape(node)
        self.assertEqual(during("chat_sessions", dialect="text"), 1)
        self.assertEqual(bob.command(f"login bob {PASSWORD}"),
                         "OK logged in: id %d, name bob, 1 offline message" % bobId)
        bob.readText()
        after = Scrape(node)
        self.assertEqual(moved(before, after, COUNTED), {
            "chat_requests_total{'request': 'chat', 'result': 'ok'}": 26,
            "chat_requests_total{'request': 'chat', 'result': '104'}": 1,
            "chat_messages_total{'path': 'local'}": 25,
            "chat_messages_total{'path': 'remote'}": 0,
            "chat_messages_total{'path': 'stored'}": 1,
            "chat_publish_total{'outcome': 'taken'}": 0,
            "chat_offline_stored_total": 1,
            "chat_offline_delivered_total": 1,
        })
        self.assertEqual(after("chat_request_seconds_count", request="chat")
                         - before("chat_request_seconds_count", request="chat"), 27)
        self.assertEqual(after("chat_requests_total", request="login", result="ok")
                         - before("chat_requests_total", request="login", result="ok"), 1)
        self.assertGreater(after("chat_db_seconds_count"), before("chat_db_seconds_count"))
        self.assertGreater(after("process_resident_memory_bytes"), 0)
        self.assertEqual(node.http("/health"), (200, "ok\n"))
        self.assertEqual(node.http("/ready"), (200, "ready\n"))
        # No Redis, no chat_redis_up.
        self.assertNotIn(("chat_redis_up", frozenset()), after.values)

    def test_metricsPortTaken(self) -> None:
        """A --metrics port that cannot be had ends twistd with one line
        saying so and a non-zero exit, as a --port does (once twistd logs,
        it writes stderr into its log)."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            result = subprocess.run(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "--logfile=-", "chat", "--port", "tcp:0:interface=127.0.0.1",
                 "--db", f"sqlite:{directory}/chat.sqlite3",
                 "--metrics", f"tcp:{port}:interface=127.0.0.1"],
                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(output.count(f"chat: cannot listen on --metrics tcp:{port}"), 1, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("readiness on", output)

    def test_sigusr1Drains(self) -> None:
        """
        SIGUSR1: /ready answers 503 with the reason at once, then every
        session is told to reconnect and closed, and the node exits by
        itself, cleanly.
        """
        node = ChatNode(self, extraArgs=["--drain-grace", "0.5"])
        alice, bob = node.client(), node.client()
        textRegisterLogin(self, alice, "alice")
        textRegisterLogin(self, bob, "bob")
        os.kill(node.pid, signal.SIGUSR1)
        status = waitFor(self, lambda: (lambda s: s if s[0] == 503 else None)(node.http("/ready")),
                         2, "503 from /ready")
        self.assertEqual(status, (503, "draining: SIGUSR1\n"))
        notice = "NOTICE this server is going down for maintenance; please reconnect\r\n"
        self.assertEqual(alice.readUntilClosed(10).decode(), notice)
        self.assertEqual(bob.readUntilClosed(10).decode(), notice)
        node.process.wait(10)
        self.assertEqual(node.process.returncode, 0, node.log()[-2000:])


class JSONLogTests(unittest.SynchronousTestCase):
    def test_jsonLogs(self) -> None:
        """
        The README's command, C{twistd -n --logger chat.logs.jsonLog chat},
        writes one JSON object per line on standard output, every one with
        the node's id, and the events of a user's connection with its
        peer and user id as fields.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        logPath = os.path.join(directory, "node.jsonl")
        port = freePort()
        with open(logPath, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "--logger", "chat.logs.jsonLog", "chat",
                 "--port", f"tcp:{port}:interface=127.0.0.1", "--node-id", "jn1",
                 "--db", f"sqlite:{directory}/chat.sqlite3",
                 "--password-time", "1", "--password-memory", "64"],
                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))

        def events() -> list[dict[str, Any]]:
            with open(logPath, encoding="utf-8") as log:
                return [json.loads(line) for line in log if line.strip()]

        waitFor(self, lambda: any("listening" in e.get("log_format", "") for e in events()),
                20, "listening event")
        with LineClient("127.0.0.1", port) as alice:
            aliceId = textRegisterLogin(self, alice, "alice")
            peer = "127.0.0.1:%d" % alice.sock.getsockname()[1]
        login = waitFor(self, lambda: [e for e in events() if "logged in" in e.get("log_format", "")],
                        10, "login event")[0]
        self.assertEqual((login["userId"], login["userName"], login["peer"], login["node"],
                          login["text"]),
                         (aliceId, "alice", peer, "jn1", f"{peer}: alice (id {aliceId}) logged in"))
        process.terminate()
        process.wait(10)
        self.assertEqual({e.get("node") for e in events()}, {"jn1"})


class ReadinessTests(unittest.SynchronousTestCase):
    def test_readyFollowsTheDatabase(self) -> None:
        """
        A node on a private mariadbd: ready; the database stopped: /ready
        503 naming the database, /health still 200; started again: 200.
        """
        db = OwnMariaDB(self)
        node = ChatNode(self, db=db)
        self.assertEqual(node.http("/ready"), (200, "ready\n"))
        db.stop()
        status, body = waitFor(self, lambda: (lambda s: s if s[0] == 503 else None)(node.http("/ready")),
                               10, "503 from /ready")
        self.assertIn("database does not answer", body)
        self.assertEqual(node.http("/health"), (200, "ok\n"))
        db.start()
        waitFor(self, lambda: node.http("/ready") == (200, "ready\n"), 20, "200 from /ready")


class ClusterOpsTests(ClusterMixin, unittest.SynchronousTestCase):
    """Two nodes on a shared MariaDB database and a private Redis."""

    def setUp(self) -> None:
        self.db = SharedMariaDBDatabase(self)
        self.redis = RedisServer(self)
        self.nodes = [ChatNode(self, db=self.db, redis=self.redis, nodeId=f"n{i}")
                      for i in (1, 2)]

    def test_crossNodeCounters(self) -> None:
        """
        20 chats from a user on n1 to one on n2: on n1, 20 requests, 20
        copies taken by another node through Redis, none local or stored;
        Redis is up on both.
        """
        alice, bob = self.nodes[0].client(), self.nodes[1].client()
        textRegisterLogin(self, alice, "alice")
        textRegisterLogin(self, bob, "bob")
        before = [Scrape(n) for n in self.nodes]
        exchange(self, alice, bob, "bob", 20)
        after = [Scrape(n) for n in self.nodes]
        self.assertEqual(moved(before[0], after[0], COUNTED), {
            "chat_requests_total{'request': 'chat', 'result': 'ok'}": 20,
            "chat_requests_total{'request': 'chat', 'result': '104'}": 0,
            "chat_messages_total{'path': 'local'}": 0,
            "chat_messages_total{'path': 'remote'}": 20,
            "chat_messages_total{'path': 'stored'}": 0,
            "chat_publish_total{'outcome': 'taken'}": 20,
            "chat_offline_stored_total": 0,
            "chat_offline_delivered_total": 0,
        })
        # n2 routed nothing: it only handed the arrivals to bob.
        self.assertEqual(set(moved(before[1], after[1], COUNTED).values()), {0})
        for scrape in after:
            self.assertEqual(scrape("chat_redis_up"), 1)
            self.assertEqual(scrape("chat_sessions", dialect="text"), 1)

    def test_chatctl(self) -> None:
        """
        nodes, online, user, kick and drain against the running cluster,
        in text and JSON, and one clear line and a non-zero exit for an
        unknown node or user, a user not online, and a database that is
        down.
        """
        db = self.db.url
        alice, bob = self.nodes[0].client(), self.nodes[1].client()
        aliceId = textRegisterLogin(self, alice, "alice")
        bobId = textRegisterLogin(self, bob, "bob")
        textRegister(self, alice, "carol")
        self.assertRegex(alice.command("addfriend bob"), "^OK friend added")
        self.assertRegex(alice.command("creategroup tea"), "^OK group created")
        self.assertEqual(alice.command("chat carol are you there"),
                         "OK stored for offline delivery")

        result = chatctl("--json", "nodes", db=db)
        self.assertEqual(result.returncode, 0, result.stderr)
        nodes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
        self.assertEqual(set(nodes), {"n1", "n2"})
        self.assertEqual([nodes["n1"]["sessions"], nodes["n2"]["sessions"]], [1, 1])
        self.assertLess(nodes["n1"]["age_seconds"], 5)
        self.assertFalse(nodes["n1"]["draining"])
        text = chatctl("--redis", self.redis.url, "nodes", db=db)
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertRegex(text.stdout, r"(?m)^n1 +\S+ \S+ +[\d.]+s +1  serving$")
        self.assertIn("redis: up", text.stdout)

        result = chatctl("--json", "online", db=db)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([(u["id"], u["name"], u["node"]) for u in json.loads(result.stdout)],
                         [(aliceId, "alice", "n1"), (bobId, "bob", "n2")])
        self.assertRegex(chatctl("online", db=db).stdout, rf"(?m)^ +{bobId} bob +n2 +since ")

        result = chatctl("--json", "user", "alice", db=db)
        self.assertEqual(result.returncode, 0, result.stderr)
        user = json.loads(result.stdout)
        self.assertEqual((user["id"], user["name"], user["online"], user["friends"],
                          [g["name"] for g in user["groups"]], user["stored_messages"]),
                         (aliceId, "alice", "n1", [{"id": bobId, "name": "bob"}], ["tea"], 0))
        self.assertIn("stored messages 1", chatctl("user", "carol", db=db).stdout)
        self.assertIn("name bob", chatctl("user", str(bobId), db=db).stdout)

        # kick: bob's session ends on n2, with a notice; he may log in again.
        result = chatctl("kick", "bob", db=db)
        self.assertEqual((result.returncode, result.stdout.strip()),
                         (0, f"kicked bob (id {bobId}) off n2"), result.stderr)
        self.assertEqual(bob.readUntilClosed(5).decode(),
                         "NOTICE an operator ended your session\r\n")
        bob = self.nodes[0].client()
        self.assertRegex(bob.command(f"login bob {PASSWORD}"), LOGGED_IN)

        for args, error in [
                (["kick", "nobody"], "chatctl: no such user: nobody"),
                (["kick", "carol"], "chatctl: carol (id %d) is not online" % (aliceId + 2)),
                (["user", "9999"], "chatctl: no such user: 9999"),
                (["drain", "n9"], "chatctl: no such node: n9")]:
            result = chatctl(*args, db=db)
            self.assertEqual((result.returncode, result.stdout, result.stderr.strip()),
                             (1, "", error), args)
        result = chatctl("nodes", db="mysql://root:@127.0.0.1:1/nothing")
        self.assertEqual(result.returncode, 3)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertRegex(result.stderr, r"^chatctl: cannot reach the database mysql://")
        result = chatctl("nodes", db="postgres://x")
        self.assertEqual(result.returncode, 1)
        self.assertIn("unknown database URL", result.stderr)

        # drain: n2 (now empty) stops being ready and exits.
        result = chatctl("--json", "drain", "n2", db=db)
        self.assertEqual(json.loads(result.stdout), {"node": "n2", "draining": True})
        waitFor(self, lambda: self.nodes[1].process.poll() is not None, 15, "exit of n2")
        self.assertEqual(self.nodes[1].process.returncode, 0)
        self.assertEqual([n["node"] for n in json.loads(
            chatctl("--json", "nodes", db=db).stdout)["nodes"]], ["n1"])


class _User:
    """One chat user of the drain test: a non-blocking text connection
    through HAProxy that logs in again whenever it is closed."""

    def __init__(self, name: str, address: tuple[str, int]) -> None:
        self.name = name
        self.address = address
        self.sock: Optional[socket.socket] = None
        self.buffer = b""
        self.state = "closed"
        self.offline = 0
        self.outbox: list[tuple[int, str]] = []
        self.pending: Optional[tuple[int, str]] = None
        self.reconnects = 0
        self.notices: list[str] = []

    def connect(self, selector: selectors.BaseSelector) -> None:
        self.sock = socket.create_connection(self.address, timeout=5)
        self.sock.setblocking(False)
        self.buffer = b""
        selector.register(self.sock, selectors.EVENT_READ, self)
        self.send(f"login {self.name} {PASSWORD}")
        self.state = "login"

    def send(self, line: str) -> None:
        assert self.sock is not None
        self.sock.setblocking(True)
        self.sock.sendall(line.encode() + b"\r\n")
        self.sock.setblocking(False)


class DrainBehindHAProxyTests(ClusterMixin, unittest.SynchronousTestCase):
    USERS = 200
    MESSAGES = 2000

    def setUp(self) -> None:
        self.startCluster(2, extraArgs=["--drain-grace", "1.5"])

    def test_drainWhileChatting(self) -> None:
        """
        200 users chat through HAProxy, 2,000 numbered messages at about
        500 a second; meanwhile C{chatctl drain n1}.  HAProxy marks n1
        down within 5 s; n1 moves its users off and exits; every user,
        reconnecting through HAProxy, ends on n2; every message the
        server accepted is received (live or at a login), none lost.  (A
        message whose connection closed before its answer is sent again,
        so it may arrive twice, never zero times.)
        """
        names = [f"u{i}" for i in range(self.USERS)]
        registrar = self.proxy.client()
        for name in names:
            textRegister(self, registrar, name)
        registrar.close()
        selector = selectors.DefaultSelector()
        self.addCleanup(selector.close)
        users = [_User(name, self.proxy.address) for name in names]
        rng = random.Random(11)
        for seq in range(self.MESSAGES):
            sender = users[seq % self.USERS]
            sender.outbox.append((seq, rng.choice([n for n in names if n != sender.name])))
        received: dict[int, int] = {}
        resent: set[int] = set()

        def handle(user: _User, line: str) -> None:
            if user.state == "login":
                match = LOGGED_IN.match(line)
                self.assertIsNotNone(match, f"{user.name}: {line}")
                user.offline = int(match.group(3))
                user.state = "offline" if user.offline else "ready"
                return
            match = MSG.match(line)
            if match is not None:
                word, _, number = match.group(4).partition(" ")
                self.assertEqual(word, "m")
                received[int(number)] = received.get(int(number), 0) + 1
                if user.state == "offline":
                    user.offline -= 1
                    if not user.offline:
                        user.state = "ready"
                return
            if line.startswith("NOTICE "):
                user.notices.append(line)
            elif line in ("OK delivered", "OK stored for offline delivery"):
                user.pending = None
            elif line.startswith(("ERR 102", "ERR 107")) and user.pending is not None:
                # Not carried out (the session was ending, or the node
                # could not act): send it again.
                resent.add(user.pending[0])
                user.outbox.insert(0, user.pending)
                user.pending = None
            else:
                self.fail(f"{user.name}: unexpected {line!r}")

        def closed(user: _User) -> None:
            selector.unregister(user.sock)
            user.sock.close()
            if user.pending is not None:
                resent.add(user.pending[0])
                user.outbox.insert(0, user.pending)
                user.pending = None
            user.reconnects += 1
            user.connect(selector)

        def pump(seconds: float) -> None:
            for key, _ in selector.select(seconds):
                user = key.data
                try:
                    data = user.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionError:
                    data = b""
                if not data:
                    closed(user)
                    continue
                user.buffer += data
                *lines, user.buffer = user.buffer.split(b"\n")
                for line in lines:
                    handle(user, line.rstrip(b"\r").decode())

        for user in users:
            user.connect(selector)
        waitFor(self, lambda: pump(0.05) or all(u.state == "ready" for u in users),
                30, "every user logged in")
        onFirst = sum(1 for n in self.db.query("SELECT node_id FROM sessions") if n[0] == "n1")
        self.assertGreater(onFirst, 50, "leastconn should have put many users on n1")

        started = time.monotonic()
        drainedAt: Optional[float] = None
        sent = 0
        ordered = False
        deadline = started + 60
        while time.monotonic() < deadline:
            now = time.monotonic()
            if not ordered and now - started > 0.5:
                result = chatctl("drain", "n1", db=self.db.url)
                self.assertEqual(result.returncode, 0, result.stderr)
                ordered, orderedAt = True, time.monotonic()
            if ordered and drainedAt is None and \
                    self.proxy.serverStatus().get("node1", "").startswith(("DOWN", "DRAIN", "MAINT")):
                drainedAt = time.monotonic() - orderedAt
            # About 500 messages a second over the whole run.
            budget = int((now - started) * 500) - sent
            for user in users:
                if budget <= 0:
                    break
                if user.state == "ready" and user.pending is None and user.outbox:
                    user.pending = user.outbox.pop(0)
                    user.send(f"chat {user.pending[1]} m {user.pending[0]}")
                    sent += 1
                    budget -= 1
            pump(0.01)
            if len(received) == self.MESSAGES and not any(
                    u.outbox or u.pending for u in users) and \
                    self.nodes[0].process.poll() is not None:
                break
        self.assertIsNotNone(drainedAt, "HAProxy never took node1 out")
        self.assertLess(drainedAt, 5.0)
        self.assertIsNotNone(self.nodes[0].process.poll(), "n1 did not exit once drained")
        self.assertEqual(self.nodes[0].process.returncode, 0)
        lost = sorted(set(range(self.MESSAGES)) - set(received))
        twice = sorted(s for s, n in received.items() if n > 1)
        log.msg(f"drain: {onFirst} users on n1, HAProxy took it out after "
                f"{drainedAt:.2f} s, n1 exited; {len(received)} of {self.MESSAGES} "
                f"received, {len(resent)} sent again, {len(twice)} twice")
        self.assertEqual(lost, [], f"{len(lost)} lost of {self.MESSAGES}")
        self.assertEqual(set(twice) - resent, set(), "delivered twice but sent once")
        # Every user is logged in again, on n2.
        waitFor(self, lambda: pump(0.05) or all(u.state == "ready" for u in users),
                10, "every user logged in again")
        nodes = self.db.query("SELECT node_id, COUNT(*) FROM sessions GROUP BY node_id")
        self.assertEqual([tuple(n) for n in nodes], [("n2", self.USERS)])
        movedUsers = [u for u in users if u.reconnects]
        self.assertEqual(len(movedUsers), onFirst)
        self.assertTrue(all(u.notices for u in movedUsers))
