"""
End-to-end tests of classic mode on the wire (PROTOCOL.md section 7),
with a client that reads exactly as the classic C++ client does: each
recv() of at most 1024 bytes parsed as one JSON object.
"""

from __future__ import annotations

import json
import socket
import threading
import time

from twisted.trial import unittest

from tests.harness import ChatNode
from tests.test_e2e_cluster import PASSWORD, jsonChat, jsonRegister, jsonRegisterLogin

CLASSIC_READ = 1024


class ClassicReader(threading.Thread):
    """
    A socket read as the classic client reads it: every recv(1024) is one
    result; a result that does not parse as exactly one object is what
    would have crashed the classic client.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.reads: list[bytes] = []
        self.running = True

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                data = self.sock.recv(CLASSIC_READ)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            self.reads.append(data)

    def objects(self) -> list[dict]:
        """Every object received, in order, however they were read."""
        joined = b"".join(self.reads)
        return [json.loads(line) for line in joined.split(b"\n") if line]

    def merged(self) -> int:
        """How many reads held more than one object (or part of one)."""
        bad = 0
        for data in self.reads:
            try:
                json.loads(data)
            except ValueError:
                bad += 1
        return bad

    def stop(self) -> None:
        self.running = False
        self.join(5)


def classicSocket(node: ChatNode) -> socket.socket:
    sock = socket.create_connection(node.address, timeout=10)
    return sock


def classicRequest(sock: socket.socket, obj: dict) -> None:
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\0")


class ClassicClientTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.node = ChatNode(self)

    def classicUser(self, name: str) -> tuple[int, socket.socket]:
        userId = jsonRegister(self, self.node.client(), name)
        sock = classicSocket(self.node)
        self.addCleanup(sock.close)
        return userId, sock

    def test_twoSendersAtOnce(self) -> None:
        """
        Two senders synchronised by a barrier send 100 messages each at
        50 per second to one classic user: all 200 arrive, and at most 2
        reads hold two objects.
        """
        userId, sock = self.classicUser("classic")
        classicRequest(sock, {"msgid": 1, "id": userId, "password": PASSWORD})
        reader = ClassicReader(sock)
        reader.start()
        senders = []
        for i in range(2):
            client = self.node.client(timeout=10)
            jsonRegisterLogin(self, client, f"sender{i}")
            senders.append(client)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def send(index: int) -> None:
            try:
                client = senders[index]
                barrier.wait(10)
                start = time.monotonic()
                for seq in range(100):
                    time.sleep(max(0.0, start + seq / 50 - time.monotonic()))
                    reply = client.request(jsonChat(userId, f"{index}:{seq}"))
                    assert reply["errno"] == 0, reply
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(errors, [])
        deadline = time.monotonic() + 10
        while len(reader.objects()) < 201 and time.monotonic() < deadline:
            time.sleep(0.05)
        reader.stop()
        objects = reader.objects()
        self.assertEqual(objects[0]["msgid"], 2)
        texts = [o["msg"] for o in objects[1:] if o.get("msgid") == 6]
        self.assertEqual(sorted(texts), sorted(
            f"{i}:{seq}" for i in range(2) for seq in range(100)))
        self.assertLessEqual(reader.merged(), 2)

    def test_loginWithStoredMessagesWhileStreamed(self) -> None:
        """
        A classic user with 30 stored messages logs in while another user
        streams to it: the first read is the login ack alone, at most 1024
        bytes; all 30 stored messages arrive once, in order, before the
        live ones.
        """
        userId, sock = self.classicUser("classic")
        sender = self.node.client(timeout=10)
        jsonRegisterLogin(self, sender, "sender")
        for seq in range(30):
            reply = sender.request(jsonChat(userId, f"stored {seq}"))
            self.assertEqual(reply["delivery"], "offline")
        streaming = True

        def stream() -> None:
            seq = 0
            while streaming:
                sender.request(jsonChat(userId, f"live {seq}"))
                seq += 1
                time.sleep(0.005)

        thread = threading.Thread(target=stream)
        thread.start()
        try:
            time.sleep(0.2)
            classicRequest(sock, {"msgid": 1, "id": userId,
                                  "password": PASSWORD})
            reader = ClassicReader(sock)
            reader.start()
            time.sleep(2)
        finally:
            streaming = False
            thread.join(10)
        time.sleep(0.5)
        reader.stop()
        first = reader.reads[0]
        self.assertLessEqual(len(first), CLASSIC_READ)
        ack = json.loads(first)
        self.assertEqual((ack["msgid"], ack["errno"]), (2, 0))
        texts = [json.loads(m)["msg"] for m in ack["offlinemsg"]] + [
            o["msg"] for o in reader.objects()[1:] if o.get("msgid") == 6]
        stored = [t for t in texts if t.startswith("stored ")]
        self.assertEqual(stored, [f"stored {i}" for i in range(30)])
        lastStored = max(i for i, t in enumerate(texts) if t.startswith("stored "))
        firstLive = min(i for i, t in enumerate(texts) if t.startswith("live "))
        self.assertLess(lastStored, firstLive)
        self.assertLessEqual(reader.merged(), 2)
