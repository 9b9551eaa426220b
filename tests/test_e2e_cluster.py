"""
End-to-end tests of a cluster: real C{twistd -n chat} nodes sharing a
MariaDB database and a private redis-server, behind a real HAProxy running
the reference haproxy.cfg (PROXY v2, leastconn, ping/PONG health checks).

They check PROTOCOL.md 5 from the outside: a message between users on
different nodes is delivered live, and one whose recipient logs out while
it is in flight is stored, never lost and never delivered twice (proved by
sequence numbers).  The fault tests (a node killed, Redis or the database
restarted, a node stopped) are in L{tests.test_e2e_faults}, which reuses
the helpers here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Sequence

from twisted.trial import unittest

from tests.harness import (
    ROOT, ChatNode, HAProxy, LineClient, RedisServer, SharedMariaDBDatabase,
)

PASSWORD = "pw"

MSG = re.compile(r"^MSG (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\d+) (\S+): (.*)$")
GROUPMSG = re.compile(
    r"^GROUPMSG (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\d+) (\d+) (\S+): (.*)$")
LOGGED_IN = re.compile(
    r"^OK logged in: id (\d+), name (\S+), (\d+) offline messages?$")
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


class ClusterMixin:
    """
    Starting a cluster and talking to it, for L{unittest.SynchronousTestCase}
    subclasses.

    @ivar nodes: the chat nodes, C{n1}, C{n2}, ... (index 0, 1, ...).
    @ivar proxy: the HAProxy in front of them.
    """

    nodes: list[ChatNode]
    proxy: HAProxy

    def startCluster(self, count: int, db: Any = None, redis: Any = None,
                     extraArgs: Sequence[str] = ()) -> None:
        """
        C{count} nodes on a database of this test's own (on the machine's
        MariaDB unless C{db} is given), a private Redis, and HAProxy in
        front of them with every node UP.
        """
        self.db = db if db is not None else SharedMariaDBDatabase(self)
        self.redis = redis if redis is not None else RedisServer(self)
        self.nodes = [
            ChatNode(self, db=self.db, redis=self.redis, nodeId=f"n{i}",
                     haproxy=True, extraArgs=extraArgs)
            for i in range(1, count + 1)]
        self.proxy = HAProxy(self, self.nodes)
        for server in self.proxy.servers:
            self.proxy.waitForStatus(server, "UP")

    # Where a client landed --------------------------------------------

    def nodeOf(self, client: LineClient, name: str, userId: int,
               timeout: float = 5.0) -> int:
        """
        The index of the node on which C{client}, connected through HAProxy,
        logged in as C{name}: the node logs the real client address, which
        HAProxy passes on in its PROXY v2 header.
        """
        port = client.sock.getsockname()[1]
        needle = f" 127.0.0.1:{port}: {name} (id {userId}) logged in"
        deadline = time.monotonic() + timeout
        while True:
            found = [i for i, node in enumerate(self.nodes)
                     if needle in node.log()]
            if found:
                self.assertEqual(len(found), 1, f"{name} on several nodes")
                return found[0]
            if time.monotonic() > deadline:
                self.fail(f"no node logged {needle!r}")
            time.sleep(0.05)

    def spreadOver(self, count: int, dialects: Sequence[str],
                   names: Sequence[str]) -> list[tuple[LineClient, int]]:
        """
        Register and log in C{names} through HAProxy, each on its own
        connection kept open, and check that leastconn put them on
        C{count} different nodes.  Returns C{(client, userId)} pairs.
        """
        users = []
        for dialect, name in zip(dialects, names):
            client = self.proxy.client()
            if dialect == "text":
                userId = textRegisterLogin(self, client, name)
            else:
                userId = jsonRegisterLogin(
                    self, client, name, classic=dialect == "classic")
            users.append((client, userId))
        where = [self.nodeOf(c, n, u) for (c, u), n in zip(users, names)]
        self.assertEqual(len(set(where)), count,
                         f"leastconn should spread {names} over {count} "
                         f"nodes, got nodes {where}")
        return users


# Talking -----------------------------------------------------------------

def textRegister(testCase: Any, client: LineClient, name: str) -> int:
    reply = client.command(f"register {name} {PASSWORD}")
    match = re.match(rf"^OK registered: id (\d+), name {re.escape(name)}$",
                     reply)
    testCase.assertIsNotNone(match, reply)
    return int(match.group(1))


def textLogin(testCase: Any, client: LineClient, user: Any,
              timeout: float | None = None) -> tuple[int, list[str]]:
    """Log in; returns the id and the offline message lines that follow."""
    reply = client.command(f"login {user} {PASSWORD}", timeout)
    match = LOGGED_IN.match(reply)
    testCase.assertIsNotNone(match, reply)
    offline = [client.readText(timeout) for _ in range(int(match.group(3)))]
    return int(match.group(1)), offline


def textRegisterLogin(testCase: Any, client: LineClient, name: str) -> int:
    userId = textRegister(testCase, client, name)
    testCase.assertEqual(textLogin(testCase, client, name), (userId, []))
    return userId


def jsonRegister(testCase: Any, client: LineClient, name: str,
                 classic: bool = False) -> int:
    reply = client.request({"msgid": 4, "name": name, "password": PASSWORD},
                           classic)
    testCase.assertEqual((reply["msgid"], reply["errno"]), (5, 0), reply)
    return reply["id"]


def jsonLogin(testCase: Any, client: LineClient, userId: int,
              classic: bool = False, timeout: float | None = None) -> dict:
    reply = client.request({"msgid": 1, "id": userId, "password": PASSWORD},
                           classic, timeout)
    testCase.assertEqual((reply["msgid"], reply["errno"]), (2, 0), reply)
    testCase.assertEqual(reply["id"], userId)
    return reply


def jsonRegisterLogin(testCase: Any, client: LineClient, name: str,
                      classic: bool = False) -> int:
    userId = jsonRegister(testCase, client, name, classic)
    reply = jsonLogin(testCase, client, userId, classic)
    testCase.assertEqual(reply["offlinemsg"], [])
    return userId


def offlineEvents(loginAck: dict) -> list[dict]:
    """The offline messages of a JSON login ack, each decoded once more."""
    return [json.loads(s) for s in loginAck["offlinemsg"]]


def jsonChat(toId: int, text: str) -> dict:
    return {"msgid": 6, "toid": toId, "msg": text}


def seqsOf(texts: Iterable[str], prefix: str) -> list[int]:
    """The sequence numbers of the texts C{"<prefix> <n>"}, in order."""
    out = []
    for text in texts:
        word, _, number = text.partition(" ")
        if word == prefix:
            out.append(int(number))
    return out


def textEventTexts(lines: Iterable[str]) -> list[str]:
    texts = []
    for line in lines:
        match = MSG.match(line) or GROUPMSG.match(line)
        if match is None:
            raise AssertionError(f"not a chat event: {line!r}")
        texts.append(match.groups()[-1])
    return texts


def readTextEvents(client: LineClient, count: int,
                   timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    return [client.readText(max(deadline - time.monotonic(), 0.001))
            for _ in range(count)]


def assertExactlyOnce(testCase: Any, seqs: Sequence[int],
                      expected: Iterable[int], what: str) -> None:
    """Every expected sequence number once: none lost, none twice."""
    expected = sorted(expected)
    counts: dict[int, int] = {}
    for s in seqs:
        counts[s] = counts.get(s, 0) + 1
    twice = sorted(s for s, n in counts.items() if n > 1)
    lost = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    testCase.assertEqual((lost, twice, extra), ([], [], []),
                         f"{what}: lost, delivered twice, unexpected")


# Tests -------------------------------------------------------------------

class CrossNodeChatTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    Chat between users on different nodes, through HAProxy, in both
    dialects.
    """

    def setUp(self) -> None:
        self.startCluster(3)

    def test_textOneToOne(self) -> None:
        """
        Two telnet users that HAProxy put on different nodes chat live, by
        name and by id, also in the classic colon form.
        """
        (alice, aliceId), (bob, bobId) = self.spreadOver(
            2, ["text", "text"], ["alice", "bob"])
        self.assertEqual(alice.command("chat bob hello from node A"),
                         "OK delivered")
        match = MSG.match(bob.readText())
        self.assertIsNotNone(match)
        self.assertEqual(match.group(2, 3, 4),
                         (str(aliceId), "alice", "hello from node A"))
        self.assertEqual(bob.command(f"chat:{aliceId}:back: at you"),
                         "OK delivered")
        match = MSG.match(alice.readText())
        self.assertEqual(match.group(2, 3, 4),
                         (str(bobId), "bob", "back: at you"))
        self.assertEqual(alice.command("addfriend bob"),
                         f"OK friend added: id {bobId}, name bob")
        alice.sendLine("friends")
        self.assertEqual(alice.readList()[1], [f"  {bobId} bob online"])
        alice.expectNothing(0.2)
        bob.expectNothing(0.2)

    def test_jsonOneToOne(self) -> None:
        """
        JSON users on different nodes: ACK delivery "online", the event as
        the classic server pushes it (server's id, name and time), and a
        classic (NUL-terminated, ACK-less) client on the other end.
        """
        (carol, carolId), (dave, daveId) = self.spreadOver(
            2, ["json", "classic"], ["carol", "dave"])
        reply = carol.request({**jsonChat(daveId, "hi dave"), "id": carolId,
                               "name": "forged", "time": "1999-01-01 00:00:00"})
        self.assertEqual(reply, {"msgid": 11, "req": 6, "errno": 0,
                                 "delivery": "online"})
        event = dave.readJSON()
        self.assertEqual({k: v for k, v in event.items() if k != "time"},
                         {"msgid": 6, "id": carolId, "name": "carol",
                          "toid": daveId, "msg": "hi dave"})
        self.assertRegex(event["time"], TIME)
        self.assertNotEqual(event["time"], "1999-01-01 00:00:00")
        # The classic client gets no ACK for a chat that succeeded.
        dave.sendJSON({**jsonChat(carolId, "hi carol"), "id": daveId},
                      classic=True)
        event = carol.readJSON()
        self.assertEqual((event["msgid"], event["id"], event["toid"],
                          event["msg"]), (6, daveId, carolId, "hi carol"))
        dave.expectNothing(0.3)
        carol.expectNothing(0.1)

    def test_mixedDialects(self) -> None:
        """
        Each recipient gets a message in its own dialect, whatever the
        sender's, across nodes.
        """
        (alice, aliceId), (carol, carolId) = self.spreadOver(
            2, ["text", "json"], ["alice", "carol"])
        self.assertEqual(alice.command(f"chat {carolId} to json"),
                         "OK delivered")
        event = carol.readJSON()
        self.assertEqual((event["msgid"], event["id"], event["name"],
                          event["msg"]), (6, aliceId, "alice", "to json"))
        reply = carol.request(jsonChat(aliceId, "to text\tand tab"))
        self.assertEqual(reply["delivery"], "online")
        match = MSG.match(alice.readText())
        self.assertEqual(match.group(2, 3, 4),
                         (str(carolId), "carol", "to text\tand tab"))

    def test_groupChatOverThreeNodes(self) -> None:
        """
        A group with members on three nodes and one logged out: the ACK
        counts two online and one offline, the live members get it in
        their dialects at once, the absent one at its next login.
        """
        (alice, aliceId), (bob, bobId), (carol, carolId) = self.spreadOver(
            3, ["text", "json", "text"], ["alice", "bob", "carol"])
        dave = self.proxy.client()
        daveId = jsonRegister(self, dave, "dave")
        dave.close()

        reply = alice.command("creategroup tea Tea time")
        match = re.match(r"^OK group created: id (\d+), name tea$", reply)
        self.assertIsNotNone(match, reply)
        groupId = int(match.group(1))
        self.assertEqual(bob.request({"msgid": 9, "groupid": groupId}),
                         {"msgid": 11, "req": 9, "errno": 0,
                          "groupid": groupId})
        self.assertEqual(carol.command(f"addgroup {groupId}"),
                         f"OK joined group {groupId}")
        # dave joins, then is offline.
        dave = self.proxy.client()
        jsonLogin(self, dave, daveId)
        self.assertEqual(dave.request({"msgid": 9, "groupid": groupId})
                         ["errno"], 0)
        self.assertEqual(dave.request({"msgid": 3})["errno"], 0)

        self.assertEqual(alice.command(f"groupchat {groupId} kettle on"),
                         "OK sent: 2 online, 1 offline")
        event = bob.readJSON()
        self.assertEqual((event["msgid"], event["id"], event["name"],
                          event["groupid"], event["msg"]),
                         (10, aliceId, "alice", groupId, "kettle on"))
        match = GROUPMSG.match(carol.readText())
        self.assertEqual(match.group(2, 3, 4, 5),
                         (str(groupId), str(aliceId), "alice", "kettle on"))

        reply = bob.request({"msgid": 10, "groupid": groupId,
                             "msg": "two cups"})
        self.assertEqual(reply, {"msgid": 11, "req": 10, "errno": 0,
                                 "online": 2, "offline": 1})
        self.assertEqual(GROUPMSG.match(alice.readText()).group(3, 5),
                         (str(bobId), "two cups"))
        self.assertEqual(GROUPMSG.match(carol.readText()).group(3, 5),
                         (str(bobId), "two cups"))

        # Groups list: the three live members online, dave offline.
        carol.sendLine("groups")
        _, lines = carol.readList()
        self.assertEqual(lines, [
            f"  {groupId} tea: Tea time",
            f"    {aliceId} alice online creator",
            f"    {bobId} bob online normal",
            f"    {carolId} carol online normal",
            f"    {daveId} dave offline normal"])

        reply = jsonLogin(self, dave, daveId)
        self.assertEqual(
            [(e["msgid"], e["groupid"], e["id"], e["msg"])
             for e in offlineEvents(reply)],
            [(10, groupId, aliceId, "kettle on"),
             (10, groupId, bobId, "two cups")])
        # Now all four are online, on three or more connections' nodes.
        self.assertEqual(carol.command(f"g {groupId} all here"),
                         "OK sent: 3 online, 0 offline")
        for client in (bob, dave):
            self.assertEqual(client.readJSON()["msg"], "all here")
        self.assertEqual(textEventTexts([alice.readText()]), ["all here"])
        for client in (alice, bob, carol, dave):
            client.expectNothing(0.1)


class LogoutRaceTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    PROTOCOL.md 5: a message in flight when its recipient logs out is
    stored, not dropped; and none is delivered twice.
    """

    BURST = 2000

    def setUp(self) -> None:
        self.startCluster(2)

    def test_logoutDuringBurst(self) -> None:
        """
        Alice on node 1 pipelines 2000 numbered messages to Bob on node 2,
        who logs out and straight back in twice in the middle of the burst.
        Every number ends up delivered live or in a login's offline
        messages, exactly once.
        """
        alice, bob = self.nodes[0].client(), self.nodes[1].client()
        aliceId = jsonRegisterLogin(self, alice, "alice")
        bobId = jsonRegisterLogin(self, bob, "bob")

        burst = b"".join(
            json.dumps(jsonChat(bobId, f"seq {i}")).encode() + b"\n"
            for i in range(self.BURST))
        sender = threading.Thread(target=alice.send, args=(burst,))
        sender.start()
        self.addCleanup(sender.join, 30)

        live: list[int] = []
        stored: list[int] = []

        def event(obj: dict) -> int:
            self.assertEqual((obj["msgid"], obj["id"], obj["toid"]),
                             (6, aliceId, bobId), obj)
            return seqsOf([obj["msg"]], "seq")[0]

        for logoutAfter in (40, 600):
            while len(live) + len(stored) < logoutAfter:
                live.append(event(bob.readJSON(10)))
            bob.sendJSON({"msgid": 3})
            while (obj := bob.readJSON(10))["msgid"] != 11:
                live.append(event(obj))
            self.assertEqual(obj, {"msgid": 11, "req": 3, "errno": 0})
            # Logged out: nothing more on this connection until the next
            # login's ack, which carries what was stored meanwhile.
            ack = jsonLogin(self, bob, bobId, timeout=10)
            stored.extend(event(e) for e in offlineEvents(ack))

        sender.join(30)
        self.assertFalse(sender.is_alive(), "alice could not send the burst")
        acks = [alice.readJSON(15) for _ in range(self.BURST)]
        for ack in acks:
            self.assertEqual((ack["msgid"], ack["req"], ack["errno"]),
                             (11, 6, 0), ack)
        deliveries = {d: sum(a["delivery"] == d for a in acks)
                      for d in ("online", "offline")}
        # Bob logged out while the burst was running, not after it: some
        # messages were stored, by Alice's node (ACK "offline": nobody
        # took them) or by Bob's (taken after his logout), and handed
        # over by his next login.
        self.assertGreater(deliveries["offline"] + len(stored), 0,
                           deliveries)

        # The rest arrives live (messages stored while Bob was logged in
        # are poked to his node and drained into his connection).
        deadline = time.monotonic() + 15
        while len(set(live) | set(stored)) < self.BURST and \
                time.monotonic() < deadline:
            try:
                live.append(event(bob.readJSON(
                    max(deadline - time.monotonic(), 0.01))))
            except AssertionError:
                break
        bob.expectNothing(0.3)
        # Collect anything still stored, with one more logout and login.
        self.assertEqual(bob.request({"msgid": 3})["errno"], 0)
        leftover = [event(e) for e in offlineEvents(jsonLogin(self, bob, bobId))]
        assertExactlyOnce(self, live + stored + leftover, range(self.BURST),
                          f"{len(live)} live, {len(stored)} at re-logins, "
                          f"{len(leftover)} at the last login")
        self.assertEqual(leftover, [], "stored while Bob was logged in, "
                         "but not pushed to him")
        # Until Bob's first logout every message went live through his
        # channel, in Alice's order.  (Later, a message stored in the race
        # and pushed by a drain may come after newer live ones: the
        # protocol orders only the offline messages of a login.)
        self.assertEqual(live[:40], list(range(40)))


class RefusedConfigurationTests(unittest.SynchronousTestCase):
    """
    Nodes that share one SQLite file are not a cluster (DESIGN.md 7).
    """

    def test_sqliteWithRedisRefused(self) -> None:
        """
        C{--redis} with a C{sqlite:} database: a non-zero exit, one line on
        stderr saying why, and no database file created.
        """
        redis = RedisServer(self)
        directory = self.mktemp()
        os.makedirs(directory)
        dbPath = os.path.join(directory, "chat.sqlite3")
        result = subprocess.run(
            [sys.executable, "-c",
             "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logfile=-", "chat", "--port", "tcp:0",
             "--db", f"sqlite:{dbPath}", "--redis", redis.url],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, b"")
        lines = result.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("mysql://", lines[0])
        self.assertIn("--redis", lines[0])
        self.assertNotIn("Traceback", lines[0])
        self.assertFalse(os.path.exists(dbPath))
