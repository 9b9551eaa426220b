"""
End-to-end tests of no loss between nodes and of fencing (PROTOCOL.md
sections 5 and 6; DESIGN.md 5c): whatever Redis does to a subscription
(CLIENT KILL TYPE pubsub, a paused node past the pubsub output buffer
limit) and a node killed during a group chat, every message whose PUBLISH
was counted is delivered or stored; and a node paused past its lease acts
for none of the sessions it lost.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import threading
import time
from typing import Any, Callable

from twisted.trial import unittest

from tests.harness import LineClient
from tests.test_e2e_cluster import (
    ClusterMixin, jsonChat, jsonLogin, jsonRegister, jsonRegisterLogin,
    offlineEvents,
)
from tests.test_e2e_overload import flood, parseNumbered

LEASE_SECONDS = 10.0


class Listener(threading.Thread):
    """
    Reads the chat events of many JSON clients in one thread, until
    stopped: C{texts[i]} are client i's, in arrival order.
    """

    def __init__(self, clients: list[LineClient]) -> None:
        super().__init__(daemon=True)
        self.clients = clients
        self.texts: list[list[str]] = [[] for _ in clients]
        self.lock = threading.Lock()
        self.running = True
        self.lastArrival = time.monotonic()

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        buffers = []
        for i, client in enumerate(self.clients):
            buffers.append(bytearray(client._buffer))
            client.sock.setblocking(False)
            selector.register(client.sock, selectors.EVENT_READ, i)
        for i in range(len(self.clients)):
            self._lines(i, buffers[i])
        while self.running:
            for key, _ in selector.select(0.2):
                i = key.data
                try:
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                except (BlockingIOError, ConnectionError):
                    continue
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                buffers[i] += data
                self._lines(i, buffers[i])

    def _lines(self, i: int, buffer: bytearray) -> None:
        while (end := buffer.find(b"\n")) >= 0:
            line = json.loads(bytes(buffer[:end]))
            del buffer[:end + 1]
            if line.get("msgid") in (6, 10):
                with self.lock:
                    self.texts[i].append(line["msg"])
                    self.lastArrival = time.monotonic()

    def quietFor(self, seconds: float, timeout: float,
                 done: Callable[[], bool] = lambda: False) -> None:
        """Wait until C{done()} or nothing arrived for C{seconds}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done() and \
                time.monotonic() - self.lastArrival < seconds:
            time.sleep(0.1)

    def stop(self) -> None:
        self.running = False
        self.join(10)


def missingOf(texts: list[str], sender: int, count: int) -> list[int]:
    """The sequence numbers of C{sender} that C{texts} lack."""
    seen = {seq for s, seq in map(parseNumbered, texts) if s == sender}
    return sorted(set(range(count)) - seen)


class SubscriptionLossTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    Senders on node 1, recipients on node 2, and Redis dropping node 2's
    subscription under the flood.  (A lease of 30 s, so that a node may
    stay frozen until Redis has dropped it however slow this machine is,
    without losing its lease: that case is the takeover test's.)
    """

    def setUp(self) -> None:
        self.startCluster(2, extraArgs=["--lease", "30"])

    def pairs(self, count: int) -> tuple[list[LineClient], list[int],
                                         list[LineClient]]:
        senders, recipientIds, recipients = [], [], []
        for i in range(count):
            sender = self.nodes[0].client(timeout=60)
            jsonRegisterLogin(self, sender, f"sender{i}")
            recipient = self.nodes[1].client(timeout=30)
            recipientIds.append(jsonRegisterLogin(self, recipient, f"to{i}"))
            senders.append(sender)
            recipients.append(recipient)
        return senders, recipientIds, recipients

    def assertNoneMissing(self, listener: Listener, count: int,
                          perSender: int) -> None:
        listener.quietFor(6, 60, lambda: all(
            len(set(t)) >= perSender for t in listener.texts))
        listener.stop()
        for i in range(count):
            self.assertEqual(missingOf(listener.texts[i], i, perSender), [],
                             f"recipient {i} lacks messages")

    def test_clientKillPubsub(self) -> None:
        """
        CLIENT KILL TYPE pubsub ten times during the flood: every message
        delivered or stored (and then pushed: the recipients stay logged
        in), duplicates allowed, none missing.
        """
        count, perSender = 5, 2000
        senders, recipientIds, recipients = self.pairs(count)
        listener = Listener(recipients)
        listener.start()
        kills: list[Any] = []

        def killer() -> None:
            for _ in range(10):
                time.sleep(0.3)
                kills.append(self.redis.command(
                    "CLIENT", "KILL", "TYPE", "pubsub"))

        thread = threading.Thread(target=killer)
        thread.start()
        flood(senders, recipientIds, perSender, size=100)
        thread.join(30)
        self.assertEqual(len(kills), 10)
        self.assertGreater(sum(kills), 0)
        self.assertNoneMissing(listener, count, perSender)

    def test_pausedPastTheBufferLimit(self) -> None:
        """
        The receiving node SIGSTOPped while about 45 MB are published to
        it, past Redis's 32 MB pubsub output buffer limit (Redis drops its
        subscription), then SIGCONTed: every message delivered or stored,
        none missing.
        """
        count, perSender = 15, 1500
        senders, recipientIds, recipients = self.pairs(count)
        listener = Listener(recipients)
        listener.start()
        pid = self.nodes[1].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        dropped: list[bool] = []

        def resume() -> None:
            # Until Redis has dropped the frozen node's subscriber, but
            # within the lease (the node must not lose it meanwhile).
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline and not dropped:
                if self.pubsubClients() < 2:
                    dropped.append(True)
                time.sleep(0.05)
            os.kill(pid, signal.SIGCONT)

        thread = threading.Thread(target=resume)
        thread.start()
        flood(senders, recipientIds, perSender, size=3000)
        thread.join(30)
        self.assertEqual(dropped, [True], "Redis never dropped the frozen "
                         "node's subscriber")
        self.assertNoneMissing(listener, count, perSender)

    def pubsubClients(self) -> int:
        listing = self.redis.command("CLIENT", "LIST", "TYPE", "pubsub")
        return len([l for l in listing.splitlines() if l.strip()])


class NodeKilledDuringGroupChatTests(ClusterMixin,
                                     unittest.SynchronousTestCase):
    """
    kill -9 of one node of three during a group chat to 200 members.
    """

    MEMBERS = 200
    MESSAGES = 100

    def setUp(self) -> None:
        self.startCluster(3)

    def test_killDuringGroupChat(self) -> None:
        """
        The members on the surviving nodes get every message (duplicates
        counted, none missing).  The killed node's members log in again
        elsewhere and find the rest stored: what they miss is at most what
        the killed node had already taken from Redis or written to their
        sockets, right at the kill.
        """
        sender = self.nodes[0].client(timeout=30)
        senderId = jsonRegisterLogin(self, sender, "sender")
        reply = sender.request({"msgid": 8, "groupname": "big"})
        groupId = reply["groupid"]
        members, memberIds, where = [], [], []
        for i in range(self.MEMBERS):
            node = i % 3
            client = self.nodes[node].client(timeout=30)
            memberIds.append(jsonRegisterLogin(self, client, f"m{i}"))
            self.assertEqual(client.request(
                {"msgid": 9, "groupid": groupId})["errno"], 0)
            members.append(client)
            where.append(node)
        listener = Listener(members)
        listener.start()
        sentAt: list[float] = []
        killedAt = 0.0
        victim = self.nodes[2]
        for seq in range(self.MESSAGES):
            if seq == self.MESSAGES // 2:
                victim.kill()
                killedAt = time.monotonic()
            sentAt.append(time.monotonic())
            sender.sendJSON({"msgid": 10, "groupid": groupId,
                             "msg": f"s0:{seq}:group"})
            ack = sender.readJSON(30)
            self.assertEqual((ack["msgid"], ack["errno"]), (11, 0), ack)
            time.sleep(0.05)
        listener.quietFor(5, 30)
        listener.stop()
        for i, node in enumerate(where):
            if node != 2:
                self.assertEqual(missingOf(listener.texts[i], 0,
                                           self.MESSAGES), [],
                                 f"member {i} on node {node + 1}")
        # The killed node's members, back on node 1 once its lease is over.
        for i, node in enumerate(where):
            if node != 2:
                continue
            before = listener.texts[i]
            reply = self.loginElsewhere(memberIds[i])
            after = [e["msg"] for e in offlineEvents(reply)]
            missing = missingOf(before + after, 0, self.MESSAGES)
            # Only around the kill: sent within half a second before it.
            self.assertTrue(all(
                killedAt - 0.5 <= sentAt[seq] <= killedAt + 0.1
                for seq in missing),
                f"member {i} lacks {missing}")
            self.assertLessEqual(len(missing), 5)

    def loginElsewhere(self, userId: int) -> dict[str, Any]:
        deadline = time.monotonic() + LEASE_SECONDS + 10
        while True:
            client = self.nodes[0].client(timeout=10)
            reply = client.request(
                {"msgid": 1, "id": userId, "password": "pw"})
            if reply.get("errno") == 0:
                # The rest of a long backlog follows as events.
                return reply
            self.assertEqual(reply.get("errno"), 2, reply)
            self.assertLess(time.monotonic(), deadline, reply)
            client.close()
            time.sleep(0.5)


class PausedNodeTakeoverTests(ClusterMixin, unittest.SynchronousTestCase):
    """
    A node frozen past its lease: the user logs in again elsewhere; the
    frozen node, resumed, carries out none of the old session's queued
    requests and delivers nothing to it.
    """

    def setUp(self) -> None:
        self.startCluster(3)

    def test_pausedNodeActsForNobody(self) -> None:
        friend = self.nodes[1].client(timeout=10)
        friendId = jsonRegisterLogin(self, friend, "friend")
        old = self.nodes[0].client(timeout=10)
        userId = jsonRegisterLogin(self, old, "user")
        pid = self.nodes[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        pausedAt = time.monotonic()
        # Queued in the frozen node's socket: they must never happen.
        for i in range(5):
            old.sendJSON(jsonChat(friendId, f"queued {i}"))
        new = self.loginWhileFrozen(userId)
        for i in range(2):
            reply = friend.request(jsonChat(userId, f"for the new {i}"))
            self.assertEqual((reply["errno"], reply["delivery"]),
                             (0, "online"), reply)
        self.assertEqual([new.readJSON()["msg"] for _ in range(2)],
                         ["for the new 0", "for the new 1"])
        time.sleep(max(0.0, pausedAt + 14 - time.monotonic()))
        os.kill(pid, signal.SIGCONT)
        # The old session: refusals (107) for its queued chats, then the
        # notice, then the end; never a chat event.
        lines = []
        while True:
            try:
                lines.append(old.readJSON(15))
            except AssertionError:
                self.assertTrue(old.closed, lines)
                break
        self.assertEqual([l for l in lines if l.get("msgid") in (6, 10)], [])
        self.assertTrue(all(l.get("msgid") == 18 or l.get("errno") == 107
                            for l in lines), lines)
        self.assertIn(18, [l.get("msgid") for l in lines])
        # The friend got none of the queued chats; the new session works.
        friend.expectNothing(2.0)
        reply = new.request(jsonChat(friendId, "from the new"))
        self.assertEqual((reply["errno"], reply["delivery"]), (0, "online"))
        self.assertEqual(friend.readJSON()["msg"], "from the new")

    def loginWhileFrozen(self, userId: int) -> LineClient:
        """Log in on node 3 as soon as the frozen node's lease is over."""
        deadline = time.monotonic() + LEASE_SECONDS + 10
        while True:
            client = self.nodes[2].client(timeout=10)
            reply = client.request(
                {"msgid": 1, "id": userId, "password": "pw"})
            if reply.get("errno") == 0:
                return client
            self.assertEqual(reply.get("errno"), 2, reply)
            self.assertLess(time.monotonic(), deadline, reply)
            client.close()
            time.sleep(0.5)
