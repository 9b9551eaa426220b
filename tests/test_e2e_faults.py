"""
End-to-end fault tests of a cluster (DESIGN.md 4 and 6, PROTOCOL.md 5):
a node killed with SIGKILL, Redis stopped and restarted, the database
stopped and restarted, a node stopped with SIGTERM.  Each test kills and
restarts only processes it started itself (its own redis-server, its own
mariadbd), never the machine's shared services, and checks by sequence
number that every message accepted was delivered live or stored, once.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from typing import Any, Callable

from twisted.trial import unittest

from tests.harness import LineClient, OwnMariaDB
from tests.test_e2e_cluster import (
    GROUPMSG, LOGGED_IN, MSG, PASSWORD, ClusterMixin, assertExactlyOnce,
    jsonChat, jsonLogin, jsonRegisterLogin, offlineEvents, seqsOf,
    textEventTexts, textLogin, textRegisterLogin,
)

LEASE_SECONDS = 10.0
"""The default --lease, which these tests do not lower."""
RECOVERY_SECONDS = 15.0


def textCommand(client: LineClient, line: str, events: list[str],
                timeout: float | None = None) -> str:
    """
    Send a text command and return its reply, putting the chat events that
    arrive before it into C{events} (as their texts).
    """
    client.sendLine(line)
    while True:
        reply = client.readText(timeout)
        if MSG.match(reply) or GROUPMSG.match(reply):
            events.extend(textEventTexts([reply]))
        else:
            return reply


def jsonRequest(client: LineClient, request: dict, events: list[str],
                timeout: float | None = None) -> dict:
    """The JSON twin of L{textCommand}."""
    client.sendJSON(request)
    while True:
        reply = client.readJSON(timeout)
        if reply.get("msgid") in (6, 10):
            events.append(reply["msg"])
        else:
            return reply


def _collect(client: LineClient, events: list[str],
             done: Callable[[], bool], timeout: float,
             read: Callable[[float], Any],
             texts: Callable[[Any], list[str]]) -> None:
    """
    Read chat events into C{events} until C{done()} or C{timeout}: C{read}
    waits up to the given seconds for one line (a timeout is an
    AssertionError), C{texts} returns the chat texts it carries.
    """
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            line = read(min(remaining, 0.5))
        except AssertionError:
            if client.closed:
                raise
            continue
        events.extend(texts(line))


def collectText(client: LineClient, events: list[str],
                done: Callable[[], bool], timeout: float) -> None:
    """L{_collect} from a text-dialect client (MSG and GROUPMSG lines)."""
    _collect(client, events, done, timeout, client.readText,
             lambda line: textEventTexts([line]))


def _chatText(event: dict[str, Any]) -> list[str]:
    if event.get("msgid") not in (6, 10):
        raise AssertionError(f"not a chat event: {event!r}")
    return [event["msg"]]


def collectJSON(client: LineClient, events: list[str],
                done: Callable[[], bool], timeout: float) -> None:
    """L{_collect} from a JSON client (msgid 6 and 10 events only)."""
    _collect(client, events, done, timeout, client.readJSON, _chatText)


def hasAll(events: list[str], prefix: str, count: int) -> Callable[[], bool]:
    return lambda: set(range(count)) <= set(seqsOf(events, prefix))


class Burst:
    """
    C{count} numbered one-to-one messages (C{"seq <n>"}), pipelined by
    C{sender} to C{toId} from a thread, so that the test can break
    something while they are in flight.
    """

    def __init__(self, testCase: Any, sender: LineClient, toId: int,
                 count: int) -> None:
        self.testCase, self.sender, self.count = testCase, sender, count
        data = b"".join(json.dumps(jsonChat(toId, f"seq {i}")).encode()
                        + b"\n" for i in range(count))
        self.thread = threading.Thread(target=sender.send, args=(data,))
        self.thread.start()
        testCase.addCleanup(self.thread.join, 30)

    def acks(self) -> dict[int, str]:
        """Each message's ACK delivery, once all are answered."""
        self.thread.join(30)
        self.testCase.assertFalse(self.thread.is_alive(),
                                  "could not send the burst")
        deliveries = {}
        for i in range(self.count):
            ack = self.sender.readJSON(20)
            self.testCase.assertEqual(
                (ack["msgid"], ack["req"], ack["errno"]), (11, 6, 0), ack)
            deliveries[i] = ack["delivery"]
        return deliveries

    def check(self, received: list[int], deliveries: dict[int, str]) -> None:
        """L{checkCounts} for this burst."""
        self.checkCounts(self.testCase, self.count, received, deliveries)

    @staticmethod
    def checkCounts(testCase: Any, count: int, received: list[int],
                    deliveries: dict[int, str]) -> None:
        """
        None of C{count} lost; and a copy twice only of a message whose
        sender stored it after a publish with an unknown outcome (ACK
        "offline"), the rare duplicate PROTOCOL.md 5 allows.  One that a
        server took (ACK "online") arrives exactly once.
        """
        counts: dict[int, int] = {}
        for s in received:
            counts[s] = counts.get(s, 0) + 1
        lost = sorted(set(range(count)) - set(counts))
        badTwice = sorted(s for s, n in counts.items()
                          if n > 2 or (n == 2 and deliveries[s] != "offline"))
        testCase.assertEqual(
            (lost, badTwice), ([], []),
            "lost; delivered twice though taken once (ACKs of the lost: "
            f"{[deliveries[s] for s in lost]})")


class NodeKilledTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    kill -9 of a node: its users may log in elsewhere once its lease has
    expired, and what was sent to them meanwhile waits in the offline
    store.
    """

    def setUp(self) -> None:
        self.startCluster(2)

    def test_killedNodesUsersLogInElsewhere(self) -> None:
        (alice, aliceId), (bob, bobId) = self.spreadOver(
            2, ["text", "text"], ["alice", "bob"])
        victim = self.nodeOf(bob, "bob", bobId)
        carol = self.nodes[victim].client()
        carolId = jsonRegisterLogin(self, carol, "carol")
        self.assertEqual(alice.command("chat bob before"), "OK delivered")
        self.assertEqual(textEventTexts([bob.readText()]), ["before"])

        self.nodes[victim].kill()
        killedAt = time.monotonic()
        # "After the kill" as Redis sees it: the dead node's subscriptions
        # are gone (a message Redis had already handed to the dead process
        # would have gone with it, PROTOCOL.md 5).
        for userId in (bobId, carolId):
            self.waitUntil(lambda: self.redis.command(
                "PUBSUB", "NUMSUB", f"chat:user:{userId}")[1] == 0, 5,
                f"no subscriber for user {userId}")

        for i in range(10):
            self.assertEqual(alice.command(f"chat bob k {i}"),
                             "OK stored for offline delivery")
            self.assertEqual(alice.command(f"chat {carolId} k {i}"),
                             "OK stored for offline delivery")

        bobOffline = carolAck = None
        refusals = {"bob": 0, "carol": 0}
        while bobOffline is None or carolAck is None:
            elapsed = time.monotonic() - killedAt
            self.assertLess(elapsed, RECOVERY_SECONDS,
                            f"no login within {RECOVERY_SECONDS} s of the "
                            f"kill; refused {refusals}")
            if bobOffline is None:
                reply, client = self.attempt(
                    lambda c: c.command(f"login bob {PASSWORD}", 3))
                if reply is None:
                    pass
                elif reply.startswith("ERR 105 "):
                    refusals["bob"] += 1
                    self.assertLess(elapsed, LEASE_SECONDS + 1, reply)
                else:
                    match = LOGGED_IN.match(reply)
                    self.assertIsNotNone(match, reply)
                    bobOffline = [client.readText()
                                  for _ in range(int(match.group(3)))]
                    bob = client
            if carolAck is None:
                reply, client = self.attempt(lambda c: c.request(
                    {"msgid": 1, "id": carolId, "password": PASSWORD},
                    timeout=3))
                if reply is None:
                    pass
                elif reply.get("errno") == 2:
                    refusals["carol"] += 1
                    self.assertLess(elapsed, LEASE_SECONDS + 1, reply)
                else:
                    self.assertEqual((reply["msgid"], reply["errno"]),
                                     (2, 0), reply)
                    carolAck = reply
                    carol = client
            time.sleep(0.3)

        # The lease was honoured: the first tries, right after the kill,
        # were refused rather than taking over a session too early.
        self.assertGreater(refusals["bob"], 0)
        self.assertGreater(refusals["carol"], 0)
        self.assertEqual(
            seqsOf(textEventTexts(bobOffline), "k"), list(range(10)))
        self.assertEqual(
            seqsOf([e["msg"] for e in offlineEvents(carolAck)], "k"),
            list(range(10)))
        self.assertEqual({e["id"] for e in offlineEvents(carolAck)},
                         {aliceId})
        # Live again, on the surviving node.
        self.assertEqual(self.nodeOf(bob, "bob", bobId), 1 - victim)
        self.assertEqual(alice.command("chat bob after"), "OK delivered")
        self.assertEqual(textEventTexts([bob.readText()]), ["after"])
        self.assertEqual(alice.command(f"chat {carolId} after"),
                         "OK delivered")
        self.assertEqual(carol.readJSON()["msg"], "after")

    def attempt(self, action: Callable[[LineClient], Any]
                ) -> tuple[Any, LineClient]:
        """
        C{action} on a fresh connection through HAProxy; C{(None, client)}
        when the connection failed (HAProxy not yet aware of the kill).
        """
        try:
            client = self.proxy.client(timeout=3)
            return action(client), client
        except (AssertionError, OSError):
            return None, None

    def waitUntil(self, check: Callable[[], bool], timeout: float,
                  what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"no {what} within {timeout} s")
            time.sleep(0.05)


class RedisRestartTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    Redis stopped and started again on its port, empty: cross-node messages
    are stored meanwhile, and pushed to their still logged-in recipients
    once the bus is back; live delivery resumes on its own.
    """

    def setUp(self) -> None:
        self.startCluster(2)

    def test_redisRestart(self) -> None:
        (alice, aliceId), (bob, bobId) = self.spreadOver(
            2, ["text", "json"], ["alice", "bob"])
        bobNode = self.nodeOf(bob, "bob", bobId)
        reply = alice.command("creategroup g")
        groupId = int(re.match(r"^OK group created: id (\d+),", reply)[1])
        self.assertEqual(
            bob.request({"msgid": 9, "groupid": groupId})["errno"], 0)
        self.assertEqual(alice.command("chat bob before"), "OK delivered")
        self.assertEqual(bob.readJSON()["msg"], "before")

        self.redis.stop()
        aliceGot: list[str] = []
        bobGot: list[str] = []
        carolGot: list[str] = []
        # A login while Redis is down works; carol is on bob's node.
        carol = self.nodes[bobNode].client()
        carolId = textRegisterLogin(self, carol, "carol")
        for i in range(5):
            self.assertEqual(textCommand(alice, f"chat bob r {i}", aliceGot),
                             "OK stored for offline delivery")
        self.assertEqual(textCommand(alice, f"g {groupId} r 5", aliceGot),
                         "OK sent: 0 online, 1 offline")
        for i in range(3):
            self.assertEqual(textCommand(alice, f"chat carol c {i}", aliceGot),
                             "OK stored for offline delivery")
            reply = jsonRequest(bob, jsonChat(aliceId, f"b {i}"), bobGot)
            self.assertEqual(reply, {"msgid": 11, "req": 6, "errno": 0,
                                     "delivery": "offline"})
        for client in (alice, bob, carol):
            client.expectNothing(0.3)
        self.assertEqual((aliceGot, bobGot, carolGot), ([], [], []))

        self.redis.start()
        restartedAt = time.monotonic()
        # Live delivery resumes, each way, within the deadline; what was
        # stored meanwhile is pushed to the recipients without a login.
        probes = {"p": 0, "q": 0, "s": 0}

        def untilDelivered(send: Callable[[int], bool], prefix: str) -> None:
            while True:
                self.assertLess(time.monotonic() - restartedAt,
                                RECOVERY_SECONDS,
                                f"live delivery ({prefix}) did not resume")
                n = probes[prefix]
                probes[prefix] += 1
                if send(n):
                    return
                time.sleep(0.3)

        def aliceToBob(n: int) -> bool:
            reply = textCommand(alice, f"chat bob p {n}", aliceGot)
            self.assertIn(reply, ("OK delivered",
                                  "OK stored for offline delivery"))
            return reply == "OK delivered"

        def bobToAlice(n: int) -> bool:
            reply = jsonRequest(bob, jsonChat(aliceId, f"q {n}"), bobGot)
            self.assertEqual(reply["errno"], 0, reply)
            return reply["delivery"] == "online"

        def aliceToCarol(n: int) -> bool:
            reply = textCommand(alice, f"chat {carolId} s {n}", aliceGot)
            self.assertIn(reply, ("OK delivered",
                                  "OK stored for offline delivery"))
            return reply == "OK delivered"

        untilDelivered(aliceToBob, "p")
        untilDelivered(bobToAlice, "q")
        untilDelivered(aliceToCarol, "s")

        def complete() -> bool:
            return (hasAll(bobGot, "r", 6)() and hasAll(bobGot, "p",
                                                        probes["p"])()
                    and hasAll(aliceGot, "b", 3)()
                    and hasAll(aliceGot, "q", probes["q"])()
                    and hasAll(carolGot, "c", 3)()
                    and hasAll(carolGot, "s", probes["s"])())

        deadline = restartedAt + RECOVERY_SECONDS
        while not complete() and time.monotonic() < deadline:
            collectJSON(bob, bobGot, complete, 0.2)
            collectText(alice, aliceGot, complete, 0.2)
            collectText(carol, carolGot, complete, 0.2)
        for client in (alice, bob, carol):
            client.expectNothing(0.3)
        assertExactlyOnce(self, seqsOf(bobGot, "r"), range(6), "bob, outage")
        assertExactlyOnce(self, seqsOf(bobGot, "p"), range(probes["p"]),
                          "bob, probes")
        assertExactlyOnce(self, seqsOf(aliceGot, "b"), range(3),
                          "alice, outage")
        assertExactlyOnce(self, seqsOf(aliceGot, "q"), range(probes["q"]),
                          "alice, probes")
        assertExactlyOnce(self, seqsOf(carolGot, "c"), range(3),
                          "carol, outage")
        assertExactlyOnce(self, seqsOf(carolGot, "s"), range(probes["s"]),
                          "carol, probes")
        # Stored ones come oldest first.
        self.assertEqual(seqsOf(bobGot, "r"), list(range(6)))
        self.assertEqual(seqsOf(carolGot, "c"), list(range(3)))
        # Nothing left behind for a later login.
        self.assertEqual(self.db.query(
            "SELECT COUNT(*) FROM offline_messages"), [(0,)])

    def burstThroughRedisFault(
            self, breakRedis: Callable[[], None]) -> tuple[list[int],
                                                           dict[int, str]]:
        """
        Alice on node 1 pipelines 2000 numbered messages to Bob on node 2;
        once 50 have arrived, C{breakRedis()} and Redis is started again.
        Bob, still logged in, collects until every number has come (or the
        recovery time is up).  Returns the numbers Bob received and each
        message's ACK delivery.
        """
        alice, bob = self.nodes[0].client(), self.nodes[1].client()
        jsonRegisterLogin(self, alice, "alice")
        bobId = jsonRegisterLogin(self, bob, "bob")
        burst = Burst(self, alice, bobId, 2000)
        received: list[str] = []
        collectJSON(bob, received, lambda: len(received) >= 50, 10)
        breakRedis()
        self.redis.start()
        deliveries = burst.acks()
        collectJSON(bob, received, hasAll(received, "seq", 2000),
                    RECOVERY_SECONDS)
        bob.expectNothing(0.5)
        return seqsOf(received, "seq"), deliveries

    def test_redisRestartDuringBurst(self) -> None:
        """
        Redis is stopped and started again while 2000 messages from Alice
        on node 1 to Bob on node 2 are in flight: each one reaches Bob,
        still logged in, without a new login.
        """
        seqs, deliveries = self.burstThroughRedisFault(self.redis.stop)
        self.assertGreater(list(deliveries.values()).count("offline"), 0,
                           "Redis stopped after the burst, not during it")
        Burst.checkCounts(self, 2000, seqs, deliveries)

    def test_redisKilledDuringBurst(self) -> None:
        """
        Redis is killed (SIGKILL, no goodbye) while 2000 messages from
        Alice on node 1 to Bob on node 2 are in flight, then started again.
        Redis counts a subscriber as soon as it queues a copy, so messages
        it had counted but not yet sent die with it; the sender stores
        what it published in the last moments, and Bob's node recognises
        the stored copies of those it did receive.  None is lost, and only
        a message whose sender stored it may arrive twice.
        """
        seqs, _ = self.burstThroughRedisFault(self.redis.kill)
        self.assertEqual(sorted(set(range(2000)) - set(seqs)), [], "lost")
        self.assertEqual(
            [n for n in set(seqs) if seqs.count(n) > 2], [],
            "delivered more than twice")


class DatabaseRestartTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    The database stopped and started again: error 107 for what needs it
    meanwhile, normal service once it is back, without restarting a node.
    """

    def setUp(self) -> None:
        self.startCluster(2, db=OwnMariaDB(self))

    def test_databaseRestart(self) -> None:
        (alice, aliceId), (bob, bobId) = self.spreadOver(
            2, ["text", "json"], ["alice", "bob"])
        bobNode = self.nodeOf(bob, "bob", bobId)
        carol = self.nodes[bobNode].client()
        carolId = textRegisterLogin(self, carol, "carol")
        self.assertEqual(alice.command("addfriend bob"),
                         f"OK friend added: id {bobId}, name bob")
        self.assertEqual(bob.request({"msgid": 7, "friendid": aliceId})
                         ["errno"], 0)
        reply = alice.command("creategroup g")
        groupId = int(re.match(r"^OK group created: id (\d+),", reply)[1])
        self.assertEqual(
            bob.request({"msgid": 9, "groupid": groupId})["errno"], 0)
        self.assertEqual(carol.command(f"join {groupId}"),
                         f"OK joined group {groupId}")
        self.assertEqual(alice.command("chat bob before"), "OK delivered")
        self.assertEqual(bob.readJSON()["msg"], "before")
        self.assertEqual(alice.command("chat carol before"), "OK delivered")
        self.assertEqual(textEventTexts([carol.readText()]), ["before"])
        self.assertEqual(carol.command("logout"), "OK logged out")

        self.db.stop()
        # What needs the database is refused with 107, and not half done.
        self.assertRegex(alice.command("chat carol during"), r"^ERR 107 ")
        self.assertRegex(alice.command(f"g {groupId} during"), r"^ERR 107 ")
        self.assertRegex(alice.command("friends"), r"^ERR 107 ")
        self.assertEqual(alice.command("ping"), "PONG")
        for request in (jsonChat(999999, "during"),
                        {"msgid": 10, "groupid": groupId, "msg": "during"},
                        {"msgid": 14}, {"msgid": 16},
                        {"msgid": 7, "friendid": carolId}):
            reply = bob.request(request)
            self.assertEqual((reply["msgid"], reply["req"], reply["errno"]),
                             (11, request["msgid"], 107), reply)
        self.assertRegex(carol.command(f"login carol {PASSWORD}"),
                         r"^ERR 107 ")
        self.assertRegex(carol.command(f"register dave {PASSWORD}"),
                         r"^ERR 107 ")
        newcomer = self.proxy.client()
        reply = newcomer.request(
            {"msgid": 1, "id": bobId, "password": PASSWORD})
        self.assertEqual((reply["msgid"], reply["errno"]), (2, 107), reply)
        reply = newcomer.request(
            {"msgid": 4, "name": "dave", "password": PASSWORD})
        self.assertEqual((reply["msgid"], reply["errno"]), (5, 107), reply)
        # A chat that needs no database (a known recipient, live on the
        # other node) may still go through; if it is accepted it arrives.
        reply = alice.command("chat bob during")
        if reply == "OK delivered":
            self.assertEqual(bob.readJSON()["msg"], "during")
        else:
            self.assertRegex(reply, r"^ERR 107 ")
        # Nobody was disconnected or sent anything.
        for client in (alice, bob, carol, newcomer):
            client.expectNothing(0.2)

        self.db.start()
        restartedAt = time.monotonic()
        while True:
            self.assertLess(time.monotonic() - restartedAt, RECOVERY_SECONDS,
                            "no normal service after the database returned")
            alice.sendLine("friends")
            reply = alice.readText()
            if not reply.startswith("ERR 107 "):
                self.assertEqual(reply, "OK 1 friends")
                self.assertEqual(alice.readText(), f"  {bobId} bob online")
                break
            time.sleep(0.3)
        # Everything works again, on both nodes, with nobody logged out;
        # what was refused with 107 was not stored either.
        self.assertEqual(alice.command("chat carol after"),
                         "OK stored for offline delivery")
        _, offline = textLogin(self, carol, "carol")
        self.assertEqual(textEventTexts(offline), ["after"])
        reply = bob.request({"msgid": 10, "groupid": groupId, "msg": "g1"})
        self.assertEqual((reply["errno"], reply["online"], reply["offline"]),
                         (0, 2, 0), reply)
        self.assertEqual(textEventTexts([alice.readText()]), ["g1"])
        self.assertEqual(textEventTexts([carol.readText()]), ["g1"])
        daveId = jsonRegisterLogin(self, newcomer, "dave")
        reply = newcomer.request(jsonChat(bobId, "from dave"))
        self.assertEqual(reply["delivery"], "online", reply)
        self.assertEqual(bob.readJSON()["id"], daveId)
        self.assertEqual(bob.request({"msgid": 14})["friends"],
                         [{"id": aliceId, "name": "alice",
                           "state": "online"}])
        for client in (alice, bob, carol, newcomer):
            client.expectNothing(0.3)

    def test_outageLongerThanLease(self) -> None:
        """
        After an outage longer than the lease, every lease in the database
        looks expired until its node renews it: live nodes must not be
        taken for dead then.  A login racing the database's return is
        refused (105), not handed the session of a live node, and no purge
        ends the sessions of the other node.
        """
        (alice, aliceId), (bob, bobId) = self.spreadOver(
            2, ["text", "text"], ["alice", "bob"])
        other = self.nodes[self.nodeOf(alice, "alice", aliceId)].client()
        self.db.stop()
        time.sleep(LEASE_SECONDS + 1)
        starter = threading.Thread(target=self.db.start)
        starter.start()
        self.addCleanup(starter.join, 60)
        deadline = time.monotonic() + 60
        while (reply := other.command(f"login bob {PASSWORD}")
               ).startswith("ERR 107 ") and time.monotonic() < deadline:
            time.sleep(0.01)
        starter.join(60)
        self.assertRegex(reply, r"^ERR 105 ",
                         "a live node's session was taken over")
        # A purge period later, both still hold their sessions.
        alice.expectNothing(5)
        for client in (bob, other):
            client.expectNothing(0.1)
        self.assertEqual(alice.command("chat bob still here"), "OK delivered")
        self.assertEqual(textEventTexts([bob.readText()]), ["still here"])
        self.assertEqual(sorted(self.db.query(
            "SELECT user_id FROM sessions")), [(aliceId,), (bobId,)])


class NodeStoppedTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    SIGTERM of a node: its clients are told and closed, only its sessions
    are cleared, and its users may log in elsewhere at once.
    """

    def setUp(self) -> None:
        self.startCluster(2)

    def test_sigterm(self) -> None:
        stopping, staying = self.nodes
        alice, carol, idle = (stopping.client() for _ in range(3))
        bob, dave = staying.client(), staying.client()
        aliceId = textRegisterLogin(self, alice, "alice")
        carolId = jsonRegisterLogin(self, carol, "carol")
        bobId = textRegisterLogin(self, bob, "bob")
        daveId = jsonRegisterLogin(self, dave, "dave")
        self.assertEqual(idle.command("ping"), "PONG")
        for name in ("alice", "carol", "dave"):
            self.assertRegex(bob.command(f"addfriend {name}"),
                             r"^OK friend added")
        self.assertEqual(dave.request({"msgid": 7, "friendid": bobId})
                         ["errno"], 0)

        status = stopping.stop()
        self.assertIn(status, (0, -signal.SIGTERM),
                      "the node did not stop cleanly on SIGTERM")
        notice = "the server is shutting down; please reconnect"
        self.assertEqual(alice.readUntilClosed().decode(),
                         f"NOTICE {notice}\r\n")
        self.assertEqual(idle.readUntilClosed().decode(),
                         f"NOTICE {notice}\r\n")
        self.assertEqual(json.loads(carol.readUntilClosed()),
                         {"msgid": 18, "msg": notice})

        # Only the stopped node's sessions are gone.
        self.assertEqual(sorted(self.db.query(
            "SELECT user_id, node_id FROM sessions")),
            sorted([(bobId, "n2"), (daveId, "n2")]))
        bob.sendLine("friends")
        self.assertEqual(bob.readList()[1], [
            f"  {aliceId} alice offline", f"  {carolId} carol offline",
            f"  {daveId} dave online"])
        self.assertEqual(dave.request({"msgid": 14})["friends"],
                         [{"id": bobId, "name": "bob", "state": "online"}])
        self.assertEqual(bob.command("chat alice while away"),
                         "OK stored for offline delivery")
        self.assertEqual(bob.command("chat dave still here"),
                         "OK delivered")
        self.assertEqual(dave.readJSON()["msg"], "still here")

        # Their users log in elsewhere at once, the first try.
        alice = self.proxy.client()
        _, offline = textLogin(self, alice, "alice")
        self.assertEqual(textEventTexts(offline), ["while away"])
        self.assertEqual(self.nodeOf(alice, "alice", aliceId), 1)
        carol = staying.client()
        jsonLogin(self, carol, carolId)
        self.assertEqual(bob.command("chat alice welcome back"),
                         "OK delivered")
        self.assertEqual(textEventTexts([alice.readText()]),
                         ["welcome back"])
        self.assertEqual(dave.request(jsonChat(carolId, "hi"))["delivery"],
                         "online")
        self.assertEqual(carol.readJSON()["msg"], "hi")

    def test_sigtermDuringBurst(self) -> None:
        """
        A node is stopped while 2000 messages to its user Bob are in flight
        from Alice on the other node: whatever the stopping node had taken
        but not written to Bob is stored, not dropped, so Bob, logging in
        again on the other node, has every one exactly once.
        """
        stopping, staying = self.nodes
        alice, bob = staying.client(), stopping.client()
        jsonRegisterLogin(self, alice, "alice")
        bobId = jsonRegisterLogin(self, bob, "bob")
        burst = Burst(self, alice, bobId, 2000)
        received: list[str] = []
        collectJSON(bob, received, lambda: len(received) >= 50, 10)
        stopping.stop()
        lines = bob.readUntilClosed(10).splitlines()
        self.assertEqual(json.loads(lines[-1])["msgid"], 18, lines[-1:])
        for line in lines[:-1]:
            event = json.loads(line)
            self.assertEqual(event["msgid"], 6, event)
            received.append(event["msg"])
        deliveries = burst.acks()
        self.assertGreater(list(deliveries.values()).count("offline"), 0,
                           "the node stopped after the burst, not during it")
        bob = staying.client()
        ack = jsonLogin(self, bob, bobId)
        received.extend(e["msg"] for e in offlineEvents(ack))
        collectJSON(bob, received, hasAll(received, "seq", 2000), 5)
        bob.expectNothing(0.3)
        burst.check(seqsOf(received, "seq"), deliveries)
        assertExactlyOnce(self, seqsOf(received, "seq"), range(2000),
                          "bob, across the stop")
