"""
End-to-end tests of one chat node: a real C{twistd -n chat} process, talked
to over real sockets as clients would, checking the bytes of PROTOCOL.md.

The suite runs twice, through L{SingleNodeTests}: on the default SQLite
file (L{SQLiteTests}) and on a database of its own on the machine's MariaDB
(L{MariaDBTests}).  Each test starts its own node (a fraction of a second),
so tests share nothing.  L{CommandLineTests} checks how twistd fails on bad
option values.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.trial import unittest

from tests.harness import ROOT, ChatNode, LineClient, SharedMariaDBDatabase

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
CLASSIC_TIME = "2024-01-01 12:00:00"
WRONG_CREDENTIALS = "id or password is invalid!"
ACCOUNT_IN_USE = "this account is using, input another!"
CONNECTION_LOGGED_IN = "this connection is already logged in"
TEXT_REPLY = re.compile(r"^(OK|ERR|PONG|MSG|GROUPMSG|NOTICE)\b|^  ")


class Client(LineClient):
    """
    A L{LineClient} that keeps everything the server sent (to check that
    no traceback ever reaches a client) and can read a line with its
    terminator, to check the exact bytes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received = bytearray()
        super().__init__(*args, **kwargs)

    def _receive(self, timeout: float) -> None:
        before = len(self._buffer)
        super()._receive(timeout)
        self.received += self._buffer[before:]

    def readRawLine(self, timeout: float | None = None) -> bytes:
        """The next server line, terminator included."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (end := self._buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if self.closed or remaining <= 0:
                raise AssertionError(f"no line from server; partial data: {bytes(self._buffer)!r}")
            self._receive(remaining)
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return line


def idIn(reply: str) -> int:
    """The C{id N} of a text reply such as C{OK registered: id 3, name bob}."""
    match = re.search(r"\bid (\d+)\b", reply)
    if match is None:
        raise AssertionError(f"no id in {reply!r}")
    return int(match.group(1))


def recentServerTime(value: str) -> bool:
    """A C{YYYY-MM-DD HH:MM:SS} local time within a minute of now."""
    if not re.fullmatch(TIME, value):
        return False
    return abs(time.mktime(time.strptime(value, "%Y-%m-%d %H:%M:%S")) - time.time()) < 60


class SingleNodeTests:
    """
    The suite, mixed into a trial test case with L{makeDatabase}.
    """

    def makeDatabase(self) -> Any:
        """The node's C{--db}: None for the default SQLite file."""
        raise NotImplementedError

    def setUp(self) -> None:
        self.node = ChatNode(self, db=self.makeDatabase())
        self.clients: list[Client] = []
        self.addCleanup(self.checkNoTracebacks)

    def checkNoTracebacks(self) -> None:
        """No client ever saw a traceback, and the node logged none."""
        for client in self.clients:
            self.assertNotIn(b"Traceback", bytes(client.received))
        log = self.node.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)

    # Helpers ------------------------------------------------------------

    def client(self) -> Client:
        client = Client(*self.node.address, timeout=5.0)
        self.addCleanup(client.close)
        self.clients.append(client)
        return client

    def register(self, name: str, password: str = "pw") -> int:
        """Register C{name} on a connection of its own; its id."""
        client = self.client()
        reply = client.command(f"register {name} {password}")
        self.assertTrue(reply.startswith("OK registered: "), reply)
        client.close()
        return idIn(reply)

    def textUser(self, name: str, password: str = "pw") -> tuple[Client, int]:
        """A new text connection with C{name} registered and logged in."""
        client = self.client()
        reply = client.command(f"register {name} {password}")
        self.assertTrue(reply.startswith("OK registered: "), reply)
        userId = idIn(reply)
        self.assertEqual(client.command(f"login {name} {password}"),
                         f"OK logged in: id {userId}, name {name}, 0 offline messages")
        return client, userId

    def jsonUser(self, name: str, password: str = "pw",
                 classic: bool = False) -> tuple[Client, int]:
        """A new JSON connection (classic: NUL-terminated) with C{name} logged in."""
        client = self.client()
        ack = client.request({"msgid": 4, "name": name, "password": password}, classic)
        self.assertEqual(ack["errno"], 0, ack)
        userId = ack["id"]
        ack = client.request({"msgid": 1, "id": userId, "password": password}, classic)
        self.assertEqual(ack["errno"], 0, ack)
        return client, userId

    def assertServing(self) -> None:
        """A fresh connection still gets PONG, in both dialects."""
        probe = self.client()
        self.assertEqual(probe.command("ping"), "PONG")
        probe = self.client()
        self.assertEqual(probe.request({"msgid": 12}), {"msgid": 13})

    def assertJSONError(self, reply: Any, req: int | None, errno: int) -> None:
        self.assertEqual(set(reply), {"msgid", "req", "errno", "errmsg"}, reply)
        self.assertEqual((reply["msgid"], reply["req"], reply["errno"]), (11, req, errno), reply)
        self.assertIsInstance(reply["errmsg"], str)
        self.assertTrue(reply["errmsg"], reply)

    def assertTextError(self, reply: str, errno: int) -> None:
        self.assertRegex(reply, rf"^ERR {errno} \S")

    def assertChatEvent(self, event: Any, fromId: int, fromName: str, msg: str,
                        toId: int | None = None, groupId: int | None = None) -> None:
        """A pushed ONE_CHAT_MSG / GROUP_CHAT_MSG, exactly, stamped by the server."""
        if groupId is None:
            expected = {"msgid": 6, "id": fromId, "name": fromName, "toid": toId, "msg": msg}
        else:
            expected = {"msgid": 10, "id": fromId, "name": fromName, "groupid": groupId,
                        "msg": msg}
        self.assertEqual(set(event), set(expected) | {"time"}, event)
        self.assertEqual({k: event[k] for k in expected}, expected)
        self.assertTrue(recentServerTime(event["time"]), event)

    def assertMSG(self, line: str, fromId: int, fromName: str, text: str) -> None:
        match = re.fullmatch(rf"MSG ({TIME}) {fromId} {re.escape(fromName)}: (.*)", line)
        self.assertIsNotNone(match, line)
        self.assertTrue(recentServerTime(match.group(1)), line)
        self.assertEqual(match.group(2), text)

    def assertGROUPMSG(self, line: str, groupId: int, fromId: int, fromName: str,
                       text: str) -> None:
        match = re.fullmatch(
            rf"GROUPMSG ({TIME}) {groupId} {fromId} {re.escape(fromName)}: (.*)", line)
        self.assertIsNotNone(match, line)
        self.assertTrue(recentServerTime(match.group(1)), line)
        self.assertEqual(match.group(2), text)

    # PROTOCOL.md 6: the classic client's bytes -------------------------

    def test_classicRegisterAndLogin(self) -> None:
        """REG_MSG and LOGIN_MSG exactly as the classic client sends them."""
        alice = self.client()
        alice.send(b'{"msgid":4,"name":"alice1","password":"pa"}\x00')
        line = alice.readRawLine()
        self.assertTrue(line.endswith(b"}\n") and line.count(b"\n") == 1, line)
        ack = json.loads(line)
        self.assertEqual(set(ack), {"msgid", "errno", "id"})
        self.assertEqual((ack["msgid"], ack["errno"]), (5, 0))
        aliceId = ack["id"]
        self.assertIsInstance(aliceId, int)

        alice.send(b'{"msgid":1,"id":%d,"password":"pa"}\x00' % aliceId)
        line = alice.readRawLine()
        self.assertTrue(line.endswith(b"}\n"), line)
        self.assertEqual(json.loads(line), {
            "msgid": 2, "errno": 0, "id": aliceId, "name": "alice1",
            "friends": [], "groups": [], "offlinemsg": []})
        alice.expectNothing(0.2)

        # Failed logins: the classic acks, to the letter.
        other = self.client()
        for request in [b'{"msgid":1,"id":%d,"password":"wrong"}\x00' % aliceId,
                        b'{"msgid":1,"id":%d,"password":"pa"}\x00' % (aliceId + 1000),
                        b'{"msgid":1,"name":"nobody","password":"pa"}\x00']:
            other.send(request)
            self.assertEqual(json.loads(other.readRawLine()),
                             {"msgid": 2, "errno": 1, "errmsg": WRONG_CREDENTIALS})
        other.send(b'{"msgid":1,"id":%d,"password":"pa"}\x00' % aliceId)
        self.assertEqual(json.loads(other.readRawLine()),
                         {"msgid": 2, "errno": 2, "errmsg": ACCOUNT_IN_USE})
        # Login by name (extension); id wins over name.
        alice.send(b'{"msgid":3,"id":%d}\x00' % aliceId)
        alice.expectNothing(0.2)
        other.send(b'{"msgid":1,"id":%d,"name":"nobody","password":"pa"}\x00' % aliceId)
        self.assertEqual(json.loads(other.readRawLine())["errno"], 0)
        # A taken name: REG_MSG_ACK errno 1 with an errmsg.
        other.send(b'{"msgid":4,"name":"alice1","password":"pa"}\x00')
        ack = json.loads(other.readRawLine())
        self.assertEqual(set(ack), {"msgid", "errno", "errmsg"})
        self.assertEqual((ack["msgid"], ack["errno"]), (5, 1))

    def test_classicChatAndLogout(self) -> None:
        """
        ONE_CHAT_MSG is pushed with the server's own name and time; classic
        mode acks no success (not even LOGINOUT) but every failure; a
        message stored while logged out comes back as a JSON string.
        """
        alice, aliceId = self.jsonUser("alice1", "pa", classic=True)
        bob, bobId = self.jsonUser("bob1", "pa", classic=True)
        alice.send(b'{"msgid":6,"id":%d,"name":"alice1","toid":%d,"msg":"hello bob",'
                   b'"time":"2024-01-01 12:00:00"}\x00' % (aliceId, bobId))
        line = bob.readRawLine()
        self.assertTrue(line.endswith(b"}\n"), line)
        event = json.loads(line)
        self.assertChatEvent(event, aliceId, "alice1", "hello bob", toId=bobId)
        self.assertNotEqual(event["time"], CLASSIC_TIME)
        # A lying name is ignored too.
        alice.send(b'{"msgid":6,"id":%d,"name":"mallory","toid":%d,"msg":"2",'
                   b'"time":"x"}\x00' % (aliceId, bobId))
        self.assertChatEvent(bob.readJSON(), aliceId, "alice1", "2", toId=bobId)
        alice.expectNothing(0.2)

        bob.send(b'{"msgid":3,"id":%d}\x00' % bobId)
        bob.expectNothing(0.3)
        alice.send(b'{"msgid":6,"id":%d,"name":"alice1","toid":%d,"msg":"are you there?",'
                   b'"time":"2024-01-01 12:00:01"}\x00' % (aliceId, bobId))
        alice.expectNothing(0.2)
        # A failure is answered, classic or not.
        alice.send(b'{"msgid":6,"id":%d,"name":"alice1","toid":%d,"msg":"x",'
                   b'"time":"2024-01-01 12:00:01"}\x00' % (aliceId, bobId + 1000))
        self.assertJSONError(alice.readJSON(), 6, 104)

        bob.send(b'{"msgid":1,"id":%d,"password":"pa"}\x00' % bobId)
        ack = json.loads(bob.readRawLine())
        self.assertEqual(set(ack), {"msgid", "errno", "id", "name", "friends", "groups",
                                    "offlinemsg"})
        self.assertEqual((ack["msgid"], ack["errno"], ack["id"], ack["name"]),
                         (2, 0, bobId, "bob1"))
        self.assertEqual((ack["friends"], ack["groups"]), ([], []))
        [stored] = ack["offlinemsg"]
        self.assertIsInstance(stored, str)
        event = json.loads(stored)
        self.assertChatEvent(event, aliceId, "alice1", "are you there?", toId=bobId)
        self.assertNotEqual(event["time"], "2024-01-01 12:00:01")
        bob.expectNothing(0.2)
        # Requests only this server knows are answered in classic mode too.
        bob.send(b'{"msgid":12}\x00')
        self.assertEqual(bob.readRawLine(), b'{"msgid":13}\n')
        bob.send(b'{"msgid":14}\x00')
        self.assertEqual(bob.readJSON(), {"msgid": 15, "friends": []})
        bob.send(b'{"msgid":16}\x00')
        self.assertEqual(bob.readJSON(), {"msgid": 17, "groups": []})

    def test_classicFriendsAndGroups(self) -> None:
        """
        ADD_FRIEND, CREATE_GROUP, ADD_GROUP and GROUP_CHAT in classic mode:
        silent on success; the login ack carries friends and groups as
        JSON-encoded strings, members again as strings.
        """
        gb, gbId = self.jsonUser("gb", "pa", classic=True)
        other, otherId = self.jsonUser("other", "pa", classic=True)
        other.send(b'{"msgid":7,"id":%d,"friendid":%d}\x00' % (otherId, gbId))
        gb.send(b'{"msgid":8,"id":%d,"groupname":"g1","groupdesc":"first"}\x00' % gbId)
        other.expectNothing(0.2)
        gb.expectNothing(0.1)
        gb.send(b'{"msgid":16}\x00')
        [group] = gb.readJSON()["groups"]
        groupId = group["id"]
        other.send(b'{"msgid":9,"id":%d,"groupid":%d}\x00' % (otherId, groupId))
        other.expectNothing(0.2)
        # The classic example bytes, with this run's ids.
        gb.send(b'{"msgid":10,"id":%d,"name":"gb","groupid":%d,"msg":"hi all",'
                b'"time":"2024-01-01 12:00:02"}\x00' % (gbId, groupId))
        self.assertChatEvent(json.loads(other.readRawLine()), gbId, "gb", "hi all",
                             groupId=groupId)
        gb.expectNothing(0.2)
        # Failures are acked: joining twice, a missing group, a friend twice.
        other.send(b'{"msgid":9,"id":%d,"groupid":%d}\x00' % (otherId, groupId))
        self.assertJSONError(other.readJSON(), 9, 105)
        other.send(b'{"msgid":9,"id":%d,"groupid":%d}\x00' % (otherId, groupId + 1000))
        self.assertJSONError(other.readJSON(), 9, 104)
        other.send(b'{"msgid":7,"id":%d,"friendid":%d}\x00' % (otherId, gbId))
        self.assertJSONError(other.readJSON(), 7, 105)

        other.send(b'{"msgid":3,"id":%d}\x00' % otherId)
        other.expectNothing(0.2)
        other.send(b'{"msgid":1,"id":%d,"password":"pa"}\x00' % otherId)
        ack = json.loads(other.readRawLine())
        self.assertEqual(ack["offlinemsg"], [])
        [friend] = ack["friends"]
        self.assertIsInstance(friend, str)
        self.assertEqual(json.loads(friend), {"id": gbId, "name": "gb", "state": "online"})
        [group] = ack["groups"]
        self.assertIsInstance(group, str)
        group = json.loads(group)
        self.assertEqual(set(group), {"id", "groupname", "groupdesc", "users"})
        self.assertEqual((group["id"], group["groupname"], group["groupdesc"]),
                         (groupId, "g1", "first"))
        for user in group["users"]:
            self.assertIsInstance(user, str)
        users = sorted((json.loads(u) for u in group["users"]), key=lambda u: u["id"])
        self.assertEqual(users, sorted([
            {"id": gbId, "name": "gb", "state": "online", "role": "creator"},
            {"id": otherId, "name": "other", "state": "online", "role": "normal"}],
            key=lambda u: u["id"]))

    # Framing (PROTOCOL.md 1) --------------------------------------------

    def test_twoMessagesInOneWrite(self) -> None:
        text = self.client()
        text.send(b"ping\r\nping\r\n")
        self.assertEqual([text.readRawLine(), text.readRawLine()], [b"PONG\r\n"] * 2)
        classic = self.client()
        classic.send(b'{"msgid":12}\x00{"msgid":12}\x00')
        self.assertEqual([classic.readRawLine(), classic.readRawLine()], [b'{"msgid":13}\n'] * 2)
        plain = self.client()
        plain.send(b'{"msgid":4,"name":"zed","password":"pw"}\n{"msgid":1,"name":"zed",'
                   b'"password":"pw"}\n{"msgid":14}\n')
        self.assertEqual(plain.readJSON(), {"msgid": 5, "errno": 0, "id": 1})
        self.assertEqual(plain.readJSON()["msgid"], 2)
        self.assertEqual(plain.readJSON(), {"msgid": 15, "friends": []})
        plain.expectNothing(0.2)

    def test_oneMessageByteByByte(self) -> None:
        """A message split across many writes, one byte each."""
        def trickle(client: Client, data: bytes) -> None:
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(data)):
                client.send(data[i:i + 1])
                if i % 8 == 0:
                    time.sleep(0.001)

        text = self.client()
        trickle(text, "register 张三 pw\r\nping\r\n".encode())
        self.assertEqual(text.readRawLine(), "OK registered: id 1, name 张三\r\n".encode())
        self.assertEqual(text.readRawLine(), b"PONG\r\n")
        classic = self.client()
        trickle(classic, '{"msgid":1,"name":"张三","password":"pw"}\x00'.encode())
        ack = classic.readJSON()
        self.assertEqual((ack["errno"], ack["id"], ack["name"]), (0, 1, "张三"))
        trickle(classic, b'{"msgid":12}\x00')
        self.assertEqual(classic.readRawLine(), b'{"msgid":13}\n')

    def test_terminators(self) -> None:
        """LF, CRLF, NUL and CR NUL each end a message, in both dialects."""
        for terminator in [b"\n", b"\r\n", b"\0", b"\r\0"]:
            text = self.client()
            text.send(b"ping" + terminator + b"PiNg" + terminator)
            self.assertEqual(text.readRawLine(), b"PONG\r\n")
            self.assertEqual(text.readRawLine(), b"PONG\r\n")
            jsonClient = self.client()
            jsonClient.send(b'{"msgid":12}' + terminator + b' {"msgid":12}' + terminator)
            self.assertEqual(jsonClient.readRawLine(), b'{"msgid":13}\n')
            self.assertEqual(jsonClient.readRawLine(), b'{"msgid":13}\n')

    def test_blankLinesIgnored(self) -> None:
        """Blank messages get no reply and do not choose the dialect."""
        text = self.client()
        text.expectNothing(0.2)  # no greeting: the classic client expects none
        text.send(b"\r\n\n  \t\r\n\0\r\0")
        text.expectNothing(0.3)
        text.send(b"ping\n\n\n  \nping\n")
        self.assertEqual([text.readRawLine(), text.readRawLine()], [b"PONG\r\n"] * 2)
        text.expectNothing(0.2)
        jsonClient = self.client()
        jsonClient.send(b"\n \t\r\n\0")
        jsonClient.expectNothing(0.2)
        jsonClient.send(b'  {"msgid":12}\n\n\t\n{"msgid":12}\n')
        self.assertEqual([jsonClient.readRawLine(), jsonClient.readRawLine()],
                         [b'{"msgid":13}\n'] * 2)
        jsonClient.expectNothing(0.2)

    def test_lineAtTheLimit(self) -> None:
        """C{--max-line} bytes before the terminator (a CR is part of it) are fine."""
        text = self.client()
        text.send(b"ping" + b" " * (65536 - 4) + b"\r\n")
        self.assertEqual(text.readRawLine(), b"PONG\r\n")
        jsonClient = self.client()
        body = b'{"msgid":12}'
        jsonClient.send(body + b" " * (65536 - len(body)) + b"\n")
        self.assertEqual(jsonClient.readRawLine(), b'{"msgid":13}\n')
        # The CR of a CRLF split from its LF is still part of the terminator.
        split = self.client()
        split.send(b"ping" + b" " * (65536 - 4) + b"\r")
        split.expectNothing(0.2)
        split.send(b"\n")
        self.assertEqual(split.readRawLine(), b"PONG\r\n")

    def test_pipelinedBurst(self) -> None:
        """Thousands of requests in one go are all answered, in order."""
        client = self.client()
        client.send(b"register a pw\nlogin a pw\n" + b"ping\nfriends\n" * 1500 + b"groups\n")
        self.assertRegex(client.readText(), "^OK registered")
        self.assertRegex(client.readText(), "^OK logged in")
        for _ in range(1500):
            self.assertEqual(client.readText(), "PONG")
            self.assertEqual(client.readText(), "OK 0 friends")
        self.assertRegex(client.readText(), "^OK 0 ")
        client.expectNothing(0.2)

    def test_overlongLine(self) -> None:
        """More than C{--max-line} bytes: 101 in the dialect, then the connection closes."""
        cases = [
            (b"", b"x" * 65537, "text"),                       # no terminator at all
            (b"", b"chat 1 " + b"y" * 65600 + b"\r\n", "text"),
            (b"ping\n", b"{" + b"z" * 65536 + b"\n", "text"),  # the dialect is fixed
            (b"", b'{"msgid":6,"msg":"' + b"w" * 70000, "json"),
            (b"", b" " * 100 + b"{" + b"v" * 65536, "json"),
            (b'{"msgid":12}\n', b"u" * 65537 + b"\n", "json"),
        ]
        for before, data, dialect in cases:
            client = self.client()
            client.send(before)
            if before:
                self.assertIn(client.readRawLine(), (b"PONG\r\n", b'{"msgid":13}\n'))
            client.send(data)
            rest = client.readUntilClosed()
            if dialect == "text":
                self.assertRegex(rest, rb"\AERR 101 [^\r\n]+\r\n\Z")
            else:
                self.assertTrue(rest.endswith(b"\n") and rest.count(b"\n") == 1, rest)
                self.assertJSONError(json.loads(rest), None, 101)
        self.assertIn("longer than 65536 bytes", self.node.log())
        self.assertServing()

    def test_invalidUTF8(self) -> None:
        text, _ = self.textUser("alice")
        text.send(b"chat alice caf\xe9\r\n")
        self.assertTextError(text.readText(), 100)
        text.send(b"\xff\xfe\r\n")
        self.assertTextError(text.readText(), 100)
        self.assertEqual(text.command("ping"), "PONG")
        first = self.client()
        first.send(b"\xc3\x28 hello\n")  # invalid UTF-8 as the first message: text
        self.assertTextError(first.readText(), 100)
        self.assertEqual(first.command("ping"), "PONG")
        jsonFirst = self.client()
        jsonFirst.send(b'{"msgid":12,"x":"\xff"}\n')  # the first byte is {: JSON
        self.assertJSONError(jsonFirst.readJSON(), None, 100)
        self.assertEqual(jsonFirst.request({"msgid": 12}), {"msgid": 13})
        self.assertServing()

    # Both dialects together ---------------------------------------------

    def test_textAndJSONChat(self) -> None:
        """A telnet user and a JSON client chat both ways, 1:1 and in a group."""
        alice, aliceId = self.textUser("alice")
        bob, bobId = self.jsonUser("bob")

        self.assertEqual(alice.command("chat bob  hi  bob, with: colons "), "OK delivered")
        self.assertChatEvent(bob.readJSON(), aliceId, "alice", "hi  bob, with: colons",
                             toId=bobId)
        self.assertEqual(alice.command(f"chat:{bobId}:colon form: kept"), "OK delivered")
        self.assertChatEvent(bob.readJSON(), aliceId, "alice", "colon form: kept", toId=bobId)
        self.assertEqual(
            bob.request({"msgid": 6, "id": bobId, "toid": aliceId, "msg": "hello\talice",
                         "name": "x", "time": CLASSIC_TIME}),
            {"msgid": 11, "req": 6, "errno": 0, "delivery": "online"})
        self.assertMSG(alice.readText(), bobId, "bob", "hello\talice")

        reply = alice.command("creategroup tea Tea time: all welcome")
        self.assertRegex(reply, r"^OK group created: id \d+, name tea$")
        groupId = idIn(reply)
        self.assertEqual(bob.request({"msgid": 9, "groupid": groupId}),
                         {"msgid": 11, "req": 9, "errno": 0, "groupid": groupId})
        self.assertEqual(bob.request({"msgid": 10, "groupid": groupId, "msg": "kettle on"}),
                         {"msgid": 11, "req": 10, "errno": 0, "online": 1, "offline": 0})
        self.assertGROUPMSG(alice.readText(), groupId, bobId, "bob", "kettle on")
        self.assertEqual(alice.command(f"groupchat {groupId} cups out"),
                         "OK sent: 1 online, 0 offline")
        self.assertChatEvent(bob.readJSON(), aliceId, "alice", "cups out", groupId=groupId)
        self.assertEqual(alice.command(f"g {groupId} biscuits"), "OK sent: 1 online, 0 offline")
        self.assertChatEvent(bob.readJSON(), aliceId, "alice", "biscuits", groupId=groupId)
        ack = bob.request({"msgid": 8, "groupname": "coffee", "groupdesc": "beans"})
        self.assertEqual(set(ack), {"msgid", "req", "errno", "groupid"})
        self.assertEqual((ack["msgid"], ack["req"], ack["errno"]), (11, 8, 0))
        self.assertEqual(alice.command(f"join {ack['groupid']}"),
                         f"OK joined group {ack['groupid']}")
        bob.expectNothing(0.1)
        alice.expectNothing(0.1)
        # The node's log says who registered and logged in, from where.
        log = self.node.log()
        for name, userId in [("alice", aliceId), ("bob", bobId)]:
            self.assertRegex(log, rf"127\.0\.0\.1:\d+: registered {name} \(id {userId}\)")
            self.assertRegex(log, rf"127\.0\.0\.1:\d+: {name} \(id {userId}\) logged in")

    def test_friendsAndGroupsListings(self) -> None:
        """friends / groups and FRIEND_LIST / GROUP_LIST, with online and offline states."""
        alice, aliceId = self.textUser("alice")
        bob, bobId = self.jsonUser("bob")
        carolId = self.register("carol")

        self.assertEqual(alice.command("friends"), "OK 0 friends")
        self.assertEqual(alice.command("addfriend bob"), f"OK friend added: id {bobId}, name bob")
        self.assertEqual(alice.command(f"addfriend {carolId}"),
                         f"OK friend added: id {carolId}, name carol")
        alice.sendLine("friends")
        header, lines = alice.readList()
        self.assertEqual(header, "OK 2 friends")
        self.assertEqual(sorted(lines), sorted([f"  {bobId} bob online",
                                                f"  {carolId} carol offline"]))
        self.assertEqual(bob.request({"msgid": 7, "friendid": aliceId}),
                         {"msgid": 11, "req": 7, "errno": 0, "friendid": aliceId})
        self.assertEqual(bob.request({"msgid": 14}), {"msgid": 15, "friends": [
            {"id": aliceId, "name": "alice", "state": "online"}]})

        groupId = idIn(alice.command("creategroup tea Tea time"))
        self.assertEqual(bob.request({"msgid": 9, "groupid": groupId})["errno"], 0)
        alice.sendLine("groups")
        header, lines = alice.readList()
        self.assertRegex(header, r"^OK 3 ")
        self.assertEqual(lines[0], f"  {groupId} tea: Tea time")
        self.assertEqual(sorted(lines[1:]), sorted([f"    {aliceId} alice online creator",
                                                    f"    {bobId} bob online normal"]))
        reply = bob.request({"msgid": 16})
        self.assertEqual(reply["msgid"], 17)
        [group] = reply["groups"]
        self.assertEqual(set(group), {"id", "groupname", "groupdesc", "users"})
        self.assertEqual((group["id"], group["groupname"], group["groupdesc"]),
                         (groupId, "tea", "Tea time"))
        self.assertEqual(sorted(group["users"], key=lambda u: u["id"]), sorted([
            {"id": aliceId, "name": "alice", "state": "online", "role": "creator"},
            {"id": bobId, "name": "bob", "state": "online", "role": "normal"}],
            key=lambda u: u["id"]))

        # Bob logs out (JSON, connection kept), alice quits: states follow.
        self.assertEqual(bob.request({"msgid": 3}), {"msgid": 11, "req": 3, "errno": 0})
        alice.sendLine("friends")
        self.assertEqual(sorted(alice.readList()[1]), sorted([f"  {bobId} bob offline",
                                                              f"  {carolId} carol offline"]))
        alice.sendLine("groups")
        self.assertIn(f"    {bobId} bob offline normal", alice.readList()[1])
        self.assertEqual(alice.command("quit"), "OK bye")
        alice.readUntilClosed()
        ack = bob.request({"msgid": 1, "name": "bob", "password": "pw"})
        self.assertEqual([json.loads(f) for f in ack["friends"]],
                         [{"id": aliceId, "name": "alice", "state": "offline"}])
        [group] = [json.loads(g) for g in ack["groups"]]
        self.assertIn({"id": aliceId, "name": "alice", "state": "offline", "role": "creator"},
                      [json.loads(u) for u in group["users"]])
        self.assertEqual(bob.request({"msgid": 14})["friends"],
                         [{"id": aliceId, "name": "alice", "state": "offline"}])

    def test_offlineRightAfterLogout(self) -> None:
        """
        Once a logout is answered, others see the user offline (the
        session is gone from the database too, not only from this node).
        """
        alice, _ = self.textUser("alice")
        bob, bobId = self.jsonUser("bob")
        self.assertEqual(alice.command("addfriend bob"), f"OK friend added: id {bobId}, name bob")
        self.assertEqual(bob.request({"msgid": 3}), {"msgid": 11, "req": 3, "errno": 0})
        text = self.client()
        for k in range(20):
            if k % 2:
                self.assertEqual(bob.request({"msgid": 1, "id": bobId, "password": "pw"})["errno"],
                                 0)
                self.assertEqual(bob.request({"msgid": 3}), {"msgid": 11, "req": 3, "errno": 0})
            else:
                self.assertRegex(text.command("login bob pw"), "^OK logged in")
                self.assertEqual(text.command("logout"), "OK logged out")
            alice.sendLine("friends")
            self.assertEqual(alice.readList()[1], [f"  {bobId} bob offline"], f"round {k}")

    # Offline messages ---------------------------------------------------

    def test_offlineMessagesText(self) -> None:
        """Stored messages come after the login OK, once, oldest first."""
        alice, aliceId = self.textUser("alice")
        bob, bobId = self.textUser("bob")
        groupId = idIn(alice.command("creategroup tea"))
        self.assertEqual(bob.command(f"addgroup {groupId}"), f"OK joined group {groupId}")
        self.assertEqual(bob.command("logout"), "OK logged out")
        self.assertEqual(alice.command("chat bob one"), "OK stored for offline delivery")
        self.assertEqual(alice.command(f"groupchat {groupId} two"), "OK sent: 0 online, 1 offline")
        self.assertEqual(alice.command(f"chat {bobId} three"), "OK stored for offline delivery")
        jsonAlice = self.client()  # the same account can't be live twice: a JSON sender
        self.assertEqual(alice.command("loginout"), "OK logged out")
        jsonAlice.request({"msgid": 1, "id": aliceId, "password": "pw"})
        self.assertEqual(jsonAlice.request({"msgid": 6, "toid": bobId, "msg": "four"}),
                         {"msgid": 11, "req": 6, "errno": 0, "delivery": "offline"})

        self.assertEqual(bob.command("login bob pw"),
                         f"OK logged in: id {bobId}, name bob, 4 offline messages")
        self.assertMSG(bob.readText(), aliceId, "alice", "one")
        self.assertGROUPMSG(bob.readText(), groupId, aliceId, "alice", "two")
        self.assertMSG(bob.readText(), aliceId, "alice", "three")
        self.assertMSG(bob.readText(), aliceId, "alice", "four")
        self.assertEqual(bob.command("ping"), "PONG")
        self.assertEqual(bob.command("logout"), "OK logged out")
        self.assertEqual(bob.command("login bob pw"),
                         f"OK logged in: id {bobId}, name bob, 0 offline messages")
        self.assertEqual(bob.command("ping"), "PONG")
        # One stored message says "message", not "messages".
        self.assertEqual(bob.command("logout"), "OK logged out")
        self.assertEqual(jsonAlice.request({"msgid": 6, "toid": bobId, "msg": "five"})["delivery"],
                         "offline")
        self.assertEqual(bob.command("login bob pw"),
                         f"OK logged in: id {bobId}, name bob, 1 offline message")
        self.assertMSG(bob.readText(), aliceId, "alice", "five")

    def test_offlineMessagesJSON(self) -> None:
        """Stored messages come in the login ack's offlinemsg, once, oldest first."""
        alice, aliceId = self.textUser("alice")
        bobId = self.register("bob")
        groupId = idIn(alice.command("creategroup tea"))
        bob = self.client()
        bob.request({"msgid": 1, "id": bobId, "password": "pw"})
        bob.request({"msgid": 9, "groupid": groupId})
        self.assertEqual(bob.request({"msgid": 3, "id": bobId}),
                         {"msgid": 11, "req": 3, "errno": 0})
        texts = [f"offline {i}" for i in range(5)]
        for i, text in enumerate(texts):
            command = f"g {groupId} {text}" if i == 2 else f"chat bob {text}"
            self.assertRegex(alice.command(command), "^OK (stored|sent: 0 online, 1 offline)")

        ack = bob.request({"msgid": 1, "id": bobId, "password": "pw"})
        self.assertEqual(ack["errno"], 0)
        self.assertTrue(all(isinstance(s, str) for s in ack["offlinemsg"]), ack)
        events = [json.loads(s) for s in ack["offlinemsg"]]
        self.assertEqual(len(events), 5, events)
        for i, (event, text) in enumerate(zip(events, texts)):
            if i == 2:
                self.assertChatEvent(event, aliceId, "alice", text, groupId=groupId)
            else:
                self.assertChatEvent(event, aliceId, "alice", text, toId=bobId)
        bob.expectNothing(0.2)
        bob.request({"msgid": 3})
        ack = bob.request({"msgid": 1, "name": "bob", "password": "pw"})
        self.assertEqual(ack["offlinemsg"], [])
        # Live again: the next message is pushed.
        self.assertEqual(alice.command("chat bob live"), "OK delivered")
        self.assertChatEvent(bob.readJSON(), aliceId, "alice", "live", toId=bobId)

    def test_chatRacingLoginDeliveredOnce(self) -> None:
        """
        A chat sent while its recipient logs in arrives exactly once, in
        the offline part of the login reply or live after it; one sent
        while the recipient logs out arrives exactly once, live before the
        logout reply or at the next login.
        """
        alice, aliceId = self.textUser("alice")
        bobId = self.register("bob")
        seen: Counter[str] = Counter()

        def note(text: str) -> None:
            seen[text] += 1

        rounds = 50
        for k in range(rounds):
            bob = self.client()
            useJSON = k % 2 == 1
            login = (b'{"msgid":1,"id":%d,"password":"pw"}\n' % bobId if useJSON
                     else b"login bob pw\r\n")
            chat = f"chat {bobId} m{k}\r\n".encode()
            delay = (k % 5) * 0.0007
            if k % 3 == 0:
                alice.send(chat)
                time.sleep(delay)
                bob.send(login)
            else:
                bob.send(login)
                time.sleep(delay)
                alice.send(chat)
            self.assertIn(alice.readText(), ("OK delivered", "OK stored for offline delivery"))
            if useJSON:
                ack = bob.readJSON()
                self.assertEqual((ack["msgid"], ack["errno"]), (2, 0), ack)
                for stored in ack["offlinemsg"]:
                    note(json.loads(stored)["msg"])
            else:
                header = bob.readText()
                match = re.fullmatch(rf"OK logged in: id {bobId}, name bob, (\d+) offline "
                                     r"messages?", header)
                self.assertIsNotNone(match, header)
                for _ in range(int(match.group(1))):
                    line = bob.readText()
                    self.assertTrue(line.startswith("MSG "), line)
                    note(line.rsplit(": ", 1)[1])
            while not seen[f"m{k}"]:
                if useJSON:
                    event = bob.readJSON()
                    self.assertEqual(event["msgid"], 6, event)
                    note(event["msg"])
                else:
                    line = bob.readText()
                    self.assertTrue(line.startswith("MSG "), line)
                    note(line.rsplit(": ", 1)[1])
            # Log out while alice sends n<k>: whatever comes before the
            # logout reply counts, the rest must be at the next login.
            logout = b'{"msgid":3}\n' if useJSON else b"logout\r\n"
            chat = f"chat {bobId} n{k}\r\n".encode()
            if k % 4 < 2:
                bob.send(logout)
                time.sleep(delay)
                alice.send(chat)
            else:
                alice.send(chat)
                time.sleep(delay)
                bob.send(logout)
            while True:
                if useJSON:
                    reply = bob.readJSON()
                    if reply.get("msgid") == 11:
                        self.assertEqual(reply, {"msgid": 11, "req": 3, "errno": 0})
                        break
                    note(reply["msg"])
                else:
                    line = bob.readText()
                    if line.startswith("OK"):
                        self.assertEqual(line, "OK logged out")
                        break
                    note(line.rsplit(": ", 1)[1])
            self.assertIn(alice.readText(), ("OK delivered", "OK stored for offline delivery"))
            bob.close()
        final = self.client()
        header = final.command("login bob pw")
        match = re.fullmatch(rf"OK logged in: id {bobId}, name bob, (\d+) offline messages?",
                             header)
        self.assertIsNotNone(match, header)
        for _ in range(int(match.group(1))):
            note(final.readText().rsplit(": ", 1)[1])
        final.expectNothing(0.2)
        self.assertEqual(seen, Counter({f"{kind}{k}": 1 for k in range(rounds)
                                        for kind in "mn"}))

    # Bad input ----------------------------------------------------------

    def test_badJSON(self) -> None:
        """Not JSON, not an object, unknown msgid, bad msgid: ACK 11 errno 100."""
        client = self.client()
        client.send(b"{nope\n")
        self.assertJSONError(client.readJSON(), None, 100)
        for line, req in [(b"[1, 2]", None), (b'"a string"', None), (b"3", None),
                          (b"null", None), (b"{}", None), (b'{"msgid":"12"}', None),
                          (b'{"msgid":true}', None), (b'{"msgid":12.0}', None),
                          (b'{"msgid":null}', None), (b'{"msgid":999}', 999),
                          (b'{"msgid":-1}', -1), (b'{"msgid":2}', 2), (b'{"msgid":13}', 13),
                          (b'{"msgid":12', None), (b'{"msgid":12}}', None)]:
            client.send(line + b"\n")
            self.assertJSONError(client.readJSON(), req, 100)
        self.assertEqual(client.request({"msgid": 12, "id": "ignored"}), {"msgid": 13})
        self.assertServing()

    def test_badText(self) -> None:
        """Unknown commands and wrong argument counts: ERR 100."""
        client, _ = self.textUser("alice")
        for line in ["frobnicate", "register onlyname", "register a b c", "friends extra",
                     "login", "chat", "chat bob", "addfriend", "addfriend a b",
                     "creategroup", "addgroup", "addgroup notanumber", "groupchat 1",
                     "groupchat x hello", "ping now", "chat:", "chat:bob"]:
            self.assertTextError(client.command(line), 100)
        self.assertEqual(client.command("PING"), "PONG")
        client.sendLine("help")
        self.assertTrue(client.readList()[1])
        self.assertIn("unknown command", self.node.log())
        self.assertServing()

    def test_mistypedFields(self) -> None:
        """An int field takes a JSON integer only; a string field a string."""
        alice, aliceId = self.jsonUser("alice")
        bobId = self.register("bob")
        groupId = alice.request({"msgid": 8, "groupname": "g"})["groupid"]
        for bad in [True, float(bobId), str(bobId), None, [bobId]]:
            self.assertJSONError(alice.request({"msgid": 6, "toid": bad, "msg": "x"}), 6, 100)
            self.assertJSONError(alice.request({"msgid": 7, "friendid": bad}), 7, 100)
            self.assertJSONError(alice.request({"msgid": 9, "groupid": bad}), 9, 100)
            self.assertJSONError(alice.request({"msgid": 10, "groupid": bad, "msg": "x"}), 10, 100)
            self.assertJSONError(alice.request({"msgid": 6, "toid": bobId, "msg": "x", "id": bad}),
                                 6, 100)
        for bad in [1, True, None, ["x"], {"a": 1}]:
            self.assertJSONError(alice.request({"msgid": 6, "toid": bobId, "msg": bad}), 6, 100)
            self.assertJSONError(alice.request({"msgid": 8, "groupname": bad}), 8, 100)
            self.assertJSONError(alice.request({"msgid": 10, "groupid": groupId, "msg": bad}),
                                 10, 100)
        for missing in [{"msgid": 6, "msg": "x"}, {"msgid": 6, "toid": bobId},
                        {"msgid": 7}, {"msgid": 8}, {"msgid": 9}, {"msgid": 10, "msg": "x"},
                        {"msgid": 10, "groupid": groupId}]:
            self.assertJSONError(alice.request(missing), missing["msgid"], 100)
        # Outside the rules: empty or control characters.
        self.assertJSONError(alice.request({"msgid": 6, "toid": bobId, "msg": ""}), 6, 100)
        self.assertJSONError(alice.request({"msgid": 6, "toid": bobId, "msg": "a\nb"}), 6, 100)
        self.assertJSONError(alice.request({"msgid": 8, "groupname": "two words"}), 8, 100)
        # Login and register: ACK 11 errno 100 when malformed.
        other = self.client()
        for request in [{"msgid": 1, "id": True, "password": "pw"},
                        {"msgid": 1, "id": float(aliceId), "password": "pw"},
                        {"msgid": 1, "id": str(aliceId), "password": "pw"},
                        {"msgid": 1, "id": aliceId},
                        {"msgid": 1, "password": "pw"},
                        {"msgid": 1, "id": aliceId, "password": 5},
                        {"msgid": 4, "name": 5, "password": "pw"},
                        {"msgid": 4, "name": "carol"}]:
            self.assertJSONError(other.request(request), request["msgid"], 100)
        # Well formed but outside the rules: REG_MSG_ACK errno 1.
        for name, password in [("1abc", "pw"), ("a b", "pw"), ("", "pw"), ("carol", "p w"),
                               ("carol", ""), ("x" * 33, "pw")]:
            ack = other.request({"msgid": 4, "name": name, "password": password})
            self.assertEqual((ack["msgid"], ack["errno"]), (5, 1), ack)
            self.assertIsInstance(ack["errmsg"], str)
        self.assertEqual(alice.request({"msgid": 12}), {"msgid": 13})
        self.assertServing()

    def test_notLoggedIn(self) -> None:
        """Everything but register, login, ping (and help/quit) needs a login: 102."""
        aliceId = self.register("alice")
        text = self.client()
        for line in ["chat alice hi", "addfriend alice", "friends", "creategroup g",
                     "addgroup 1", "groups", "groupchat 1 hi", "logout"]:
            self.assertTextError(text.command(line), 102)
        jsonClient = self.client()
        for request in [{"msgid": 6, "toid": aliceId, "msg": "hi"},
                        {"msgid": 7, "friendid": aliceId}, {"msgid": 8, "groupname": "g"},
                        {"msgid": 9, "groupid": 1}, {"msgid": 10, "groupid": 1, "msg": "x"},
                        {"msgid": 14}, {"msgid": 16}, {"msgid": 3}]:
            self.assertJSONError(jsonClient.request(request), request["msgid"], 102)
        classic = self.client()
        classic.send(b'{"msgid":6,"id":1,"name":"x","toid":1,"msg":"hi","time":"x"}\x00')
        self.assertJSONError(classic.readJSON(), 6, 102)
        self.assertEqual(text.command("ping"), "PONG")
        self.assertServing()

    def test_impersonation(self) -> None:
        """An C{id} that is not the logged-in user's: 103, classic or not
        (unless the request is also to yourself: 100 comes first)."""
        alice, aliceId = self.jsonUser("alice")
        bob, bobId = self.jsonUser("bob")
        groupId = bob.request({"msgid": 8, "groupname": "g"})["groupid"]
        self.assertJSONError(alice.request(
            {"msgid": 6, "id": bobId, "toid": aliceId, "msg": "hi"}), 6, 100)
        for request in [{"msgid": 6, "id": bobId, "toid": bobId, "msg": "hi"},
                        {"msgid": 7, "id": bobId, "friendid": bobId},
                        {"msgid": 8, "id": bobId, "groupname": "mine"},
                        {"msgid": 9, "id": bobId, "groupid": groupId},
                        {"msgid": 10, "id": bobId, "groupid": groupId, "msg": "x"},
                        {"msgid": 14, "id": bobId}, {"msgid": 16, "id": bobId},
                        {"msgid": 3, "id": bobId}]:
            self.assertJSONError(alice.request(request), request["msgid"], 103)
        bob.expectNothing(0.2)
        # Still logged in as alice: her own id is fine, and PING's id is ignored.
        self.assertEqual(alice.request({"msgid": 14, "id": aliceId}), {"msgid": 15, "friends": []})
        self.assertEqual(alice.request({"msgid": 12, "id": bobId}), {"msgid": 13})
        classic, _ = self.jsonUser("carol", classic=True)
        classic.send(b'{"msgid":6,"id":%d,"name":"bob","toid":%d,"msg":"hi","time":"x"}\x00'
                     % (bobId, aliceId))
        self.assertJSONError(classic.readJSON(), 6, 103)
        alice.expectNothing(0.2)
        self.assertServing()

    def test_notFoundAndForbidden(self) -> None:
        """Missing users and groups: 104; a group you are not in: 103."""
        text, textId = self.textUser("alice")
        jsonClient, jsonId = self.jsonUser("bob")
        groupId = idIn(text.command("creategroup g"))
        self.assertTextError(text.command("chat nobody hi"), 104)
        self.assertTextError(text.command("chat 9999 hi"), 104)
        self.assertTextError(text.command("chat 99999999999999999999999 hi"), 104)
        self.assertTextError(text.command("addfriend nobody"), 104)
        self.assertTextError(text.command("addgroup 9999"), 104)
        self.assertTextError(text.command("groupchat 9999 hi"), 104)
        for request in [{"msgid": 6, "toid": 9999, "msg": "x"}, {"msgid": 6, "toid": 0, "msg": "x"},
                        {"msgid": 6, "toid": -5, "msg": "x"},
                        {"msgid": 6, "toid": 2 ** 70, "msg": "x"},
                        {"msgid": 6, "toid": -(2 ** 70), "msg": "x"},
                        {"msgid": 7, "friendid": 2 ** 64}, {"msgid": 9, "groupid": 2 ** 63},
                        {"msgid": 7, "friendid": 9999}, {"msgid": 9, "groupid": 9999},
                        {"msgid": 10, "groupid": 9999, "msg": "x"}]:
            self.assertJSONError(jsonClient.request(request), request["msgid"], 104)
        self.assertJSONError(jsonClient.request({"msgid": 10, "groupid": groupId, "msg": "x"}),
                             10, 103)
        self.assertEqual(jsonClient.request({"msgid": 9, "groupid": groupId})["errno"], 0)
        self.assertEqual(jsonClient.request({"msgid": 10, "groupid": groupId, "msg": "x"})["errno"], 0)
        self.assertGROUPMSG(text.readText(), groupId, jsonId, "bob", "x")
        outsider, _ = self.textUser("carol")
        self.assertTextError(outsider.command(f"groupchat {groupId} let me in"), 103)
        text.expectNothing(0.1)
        self.assertServing()

    def test_conflictsAndSelf(self) -> None:
        """A friend twice, a member twice, a taken name: 105; yourself: 100."""
        text, textId = self.textUser("alice")
        jsonClient, jsonId = self.jsonUser("bob")
        self.assertEqual(text.command("addfriend bob"), f"OK friend added: id {jsonId}, name bob")
        self.assertTextError(text.command("addfriend bob"), 105)
        self.assertTextError(text.command(f"addfriend {jsonId}"), 105)
        self.assertTextError(text.command("addfriend alice"), 100)
        self.assertTextError(text.command(f"addfriend {textId}"), 100)
        self.assertTextError(text.command("chat alice me"), 100)
        self.assertEqual(jsonClient.request({"msgid": 7, "friendid": textId})["errno"], 0)
        self.assertJSONError(jsonClient.request({"msgid": 7, "friendid": textId}), 7, 105)
        self.assertJSONError(jsonClient.request({"msgid": 7, "friendid": jsonId}), 7, 100)
        self.assertJSONError(jsonClient.request({"msgid": 6, "toid": jsonId, "msg": "me"}), 6, 100)
        groupId = idIn(text.command("creategroup g"))
        self.assertTextError(text.command(f"addgroup {groupId}"), 105)
        self.assertTextError(text.command("creategroup g"), 105)
        self.assertJSONError(jsonClient.request({"msgid": 8, "groupname": "g"}), 8, 105)
        self.assertTextError(text.command("register bob pw"), 105)
        self.assertEqual(text.command("ping"), "PONG")
        self.assertServing()

    def test_loginTwice(self) -> None:
        """
        A login on a logged-in connection is refused as such before its
        credentials are looked at; an account live elsewhere is refused.
        """
        text, textId = self.textUser("alice")
        jsonClient, jsonId = self.jsonUser("bob")
        classic, classicId = self.jsonUser("carol", classic=True)
        for line in ["login alice pw", "login alice wrong", "login bob pw", "login nobody x"]:
            self.assertTextError(text.command(line), 105)
        for request in [{"msgid": 1, "id": jsonId, "password": "pw"},
                        {"msgid": 1, "id": jsonId, "password": "wrong"},
                        {"msgid": 1, "id": textId, "password": "pw"},
                        {"msgid": 1, "name": "nobody", "password": "x"}]:
            self.assertEqual(jsonClient.request(request),
                             {"msgid": 2, "errno": 2, "errmsg": CONNECTION_LOGGED_IN})
            self.assertEqual(classic.request(request, classic=True),
                             {"msgid": 2, "errno": 2, "errmsg": CONNECTION_LOGGED_IN})
        # 100 comes before 105.
        self.assertTextError(text.command("login alice"), 100)
        self.assertJSONError(jsonClient.request({"msgid": 1, "id": "x", "password": "pw"}),
                             1, 100)
        # Live elsewhere.
        elsewhere = self.client()
        self.assertTextError(elsewhere.command("login alice pw"), 105)
        self.assertTextError(elsewhere.command("login alice wrong"), 103)
        self.assertTextError(elsewhere.command(f"login {textId} pw"), 105)
        elsewhere2 = self.client()
        self.assertEqual(elsewhere2.request({"msgid": 1, "id": jsonId, "password": "pw"}),
                         {"msgid": 2, "errno": 2, "errmsg": ACCOUNT_IN_USE})
        self.assertEqual(elsewhere2.request({"msgid": 1, "name": "alice", "password": "pw"}),
                         {"msgid": 2, "errno": 2, "errmsg": ACCOUNT_IN_USE})
        # The sessions that hold the accounts are untouched.
        self.assertEqual(text.command("chat bob still me"), "OK delivered")
        self.assertChatEvent(jsonClient.readJSON(), textId, "alice", "still me", toId=jsonId)
        # Once the account is free, the other connection gets it.
        self.assertEqual(text.command("logout"), "OK logged out")
        self.assertRegex(elsewhere.command("login alice pw"), f"^OK logged in: id {textId},")
        self.assertServing()

    def test_errorPrecedence(self) -> None:
        """100, then 102, then 103 (not you), 104, 103 (not a member), 105."""
        aliceId = self.register("alice")
        anonymous = self.client()
        # 100 before 102.
        self.assertJSONError(anonymous.request({"msgid": 6, "toid": "2", "msg": "x"}), 6, 100)
        self.assertJSONError(anonymous.request({"msgid": 99}), 99, 100)
        anonymous.send(b"{nope\n")
        self.assertJSONError(anonymous.readJSON(), None, 100)
        anonymousText = self.client()
        self.assertTextError(anonymousText.command("chat alice"), 100)
        self.assertTextError(anonymousText.command("bogus"), 100)
        self.assertTextError(anonymousText.command("addgroup x"), 100)
        # 102 before 103 and 104.
        self.assertJSONError(anonymous.request({"msgid": 6, "id": 77, "toid": 9999, "msg": "x"}),
                             6, 102)
        # 103 (not you) before 104.
        bob, bobId = self.jsonUser("bob")
        self.assertJSONError(bob.request({"msgid": 6, "id": aliceId, "toid": 9999, "msg": "x"}),
                             6, 103)
        self.assertJSONError(bob.request({"msgid": 10, "id": aliceId, "groupid": 9999,
                                          "msg": "x"}), 10, 103)
        # 104 before 103 (not a member): a missing group is not found.
        self.assertJSONError(bob.request({"msgid": 10, "groupid": 9999, "msg": "x"}), 10, 104)
        # 103 before 105: joining as someone else a group one is already in.
        groupId = bob.request({"msgid": 8, "groupname": "g"})["groupid"]
        self.assertJSONError(bob.request({"msgid": 9, "id": aliceId, "groupid": groupId}), 9, 103)
        self.assertJSONError(bob.request({"msgid": 9, "groupid": groupId}), 9, 105)
        # 100 before 103: a malformed request with someone else's id.
        self.assertJSONError(bob.request({"msgid": 6, "id": aliceId, "toid": True, "msg": "x"}),
                             6, 100)
        self.assertServing()

    def test_limits(self) -> None:
        """The lengths and characters of PROTOCOL.md 3.3, at and past each limit."""
        alice, aliceId = self.textUser("alice")
        bob, bobId = self.jsonUser("bob")
        self.assertEqual(alice.command("chat bob " + "字" * 4000), "OK delivered")
        self.assertEqual(bob.readJSON()["msg"], "字" * 4000)
        self.assertTextError(alice.command("chat bob " + "x" * 4001), 100)
        self.assertJSONError(bob.request({"msgid": 6, "toid": aliceId, "msg": "x" * 4001}), 6, 100)
        for control in ["\x1b[31m", "\x7f", "\x85", "\x00"]:
            self.assertJSONError(bob.request({"msgid": 6, "toid": aliceId, "msg": f"a{control}b"}),
                                 6, 100)
        alice.send(b"chat bob a\x1bb\r\n")
        self.assertTextError(alice.readText(), 100)
        self.assertRegex(alice.command("creategroup " + "g" * 50 + " " + "d" * 200), "^OK group")
        self.assertTextError(alice.command("creategroup " + "h" * 51), 100)
        self.assertTextError(alice.command("creategroup h " + "d" * 201), 100)
        self.assertJSONError(bob.request({"msgid": 8, "groupname": "a:b"}), 8, 100)
        self.assertRegex(alice.command("register " + "n" * 32 + " " + "p" * 128), "^OK registered")
        self.assertTextError(alice.command("register " + "m" * 33 + " pw"), 100)
        self.assertTextError(alice.command("register carol " + "p" * 129), 100)
        self.assertEqual(bob.request({"msgid": 4, "name": "carol", "password": "p" * 129})["errno"], 1)
        self.assertEqual(bob.request({"msgid": 4, "name": "c\u0301", "password": "pw"})["errno"], 1)
        # Hangul fillers are letters to Unicode but render as nothing: not in a name.
        self.assertTextError(alice.command("register \u3164\u3164 pw"), 100)
        ack = bob.request({"msgid": 4, "name": "\u3164\u3164", "password": "pw"})
        self.assertEqual((ack["msgid"], ack["errno"]), (5, 1), ack)
        self.assertIn("U+3164", ack["errmsg"])
        # Neither side lost its session over it.
        self.assertEqual(alice.command("chat bob still here"), "OK delivered")
        self.assertEqual(bob.readJSON()["msg"], "still here")

    def test_colonFormAndHelp(self) -> None:
        """The classic client's menu commands, and help's list reply."""
        alice, aliceId = self.textUser("alice")
        bob, bobId = self.textUser("bob")
        self.assertEqual(alice.command(f"addfriend:{bobId}"), f"OK friend added: id {bobId}, name bob")
        groupId = idIn(alice.command("creategroup:tea:a: b:c"))
        self.assertEqual(bob.command(f"addgroup:{groupId}"), f"OK joined group {groupId}")
        bob.sendLine("groups")
        self.assertEqual(bob.readList()[1][0], f"  {groupId} tea: a: b:c")
        self.assertEqual(alice.command(f"groupchat:{groupId}:x: y"), "OK sent: 1 online, 0 offline")
        self.assertGROUPMSG(bob.readText(), groupId, aliceId, "alice", "x: y")
        self.assertEqual(bob.command(f"CHAT:{aliceId}:hi"), "OK delivered")
        self.assertMSG(alice.readText(), bobId, "bob", "hi")
        self.assertEqual(bob.command("loginout"), "OK logged out")
        bob.sendLine("help")
        header, lines = bob.readList()
        self.assertGreater(len(lines), 10)
        for line in lines:
            self.assertTrue(line.startswith("  "), line)
        self.assertIn("chat", "\n".join(lines))
        self.assertEqual(bob.command("ping"), "PONG")

    def test_classicModeIsChosenByTheFirstMessage(self) -> None:
        """A connection is classic when its first request ends in NUL, for good."""
        aliceId = self.register("alice")
        bobId = self.register("bob")
        plain = self.client()
        self.assertEqual(plain.request({"msgid": 1, "id": aliceId, "password": "pw"})["errno"], 0)
        plain.sendJSON({"msgid": 6, "toid": bobId, "msg": "1"}, classic=True)
        self.assertEqual(plain.readJSON(), {"msgid": 11, "req": 6, "errno": 0,
                                            "delivery": "offline"})
        classic = self.client()
        self.assertEqual(classic.request({"msgid": 1, "id": bobId, "password": "pw"},
                                         classic=True)["errno"], 0)
        classic.sendJSON({"msgid": 6, "toid": aliceId, "msg": "2"})
        classic.expectNothing(0.3)
        self.assertChatEvent(plain.readJSON(), bobId, "bob", "2", toId=aliceId)
        # A REG_MSG on a logged-in connection only creates the account.
        self.assertEqual(set(classic.request({"msgid": 4, "name": "carol", "password": "pw"},
                                             classic=True)), {"msgid", "errno", "id"})
        classic.sendJSON({"msgid": 14}, classic=True)
        self.assertEqual(classic.readJSON(), {"msgid": 15, "friends": []})

    def test_concurrentLoginsOneWins(self) -> None:
        """Logins to one account racing on two connections: exactly one succeeds."""
        bobId = self.register("bob")
        for k in range(10):
            first, second = self.client(), self.client()
            first.send(b"login bob pw\r\n")
            second.send(b'{"msgid":1,"id":%d,"password":"pw"}\n' % bobId)
            textReply, jsonReply = first.readText(), second.readJSON()
            outcomes = (textReply.startswith("OK logged in"), jsonReply["errno"] == 0)
            self.assertEqual(sum(outcomes), 1, (textReply, jsonReply))
            if outcomes[0]:
                self.assertEqual(jsonReply, {"msgid": 2, "errno": 2, "errmsg": ACCOUNT_IN_USE})
                self.assertEqual(first.command("logout"), "OK logged out")
            else:
                self.assertTextError(textReply, 105)
                self.assertEqual(second.request({"msgid": 3})["errno"], 0)
            first.close()
            second.close()

    def test_shutdownNotice(self) -> None:
        """A stopping node tells every client in its dialect, then closes."""
        text, _ = self.textUser("alice")
        jsonClient, _ = self.jsonUser("bob")
        anonymous = self.client()
        self.assertEqual(anonymous.command("ping"), "PONG")
        self.node.stop()
        self.assertRegex(text.readUntilClosed(), rb"\ANOTICE [^\r\n]+\r\n\Z")
        self.assertRegex(anonymous.readUntilClosed(), rb"\ANOTICE [^\r\n]+\r\n\Z")
        line = jsonClient.readUntilClosed()
        self.assertTrue(line.endswith(b"\n") and line.count(b"\n") == 1, line)
        notice = json.loads(line)
        self.assertEqual(set(notice), {"msgid", "msg"})
        self.assertEqual(notice["msgid"], 18)

    # UTF-8 --------------------------------------------------------------

    def test_unicode(self) -> None:
        """Chinese names, emoji in messages and descriptions, live and offline."""
        zhang, zhangId = self.textUser("张三")
        emoji, emojiId = self.jsonUser("Ünïcode")
        reply = zhang.command("creategroup 茶话会 喝茶 ☕🍰 tab\there")
        self.assertEqual(reply, f"OK group created: id {idIn(reply)}, name 茶话会")
        groupId = idIn(reply)
        self.assertEqual(emoji.request({"msgid": 9, "groupid": groupId})["errno"], 0)

        self.assertEqual(zhang.command("chat Ünïcode 你好 👋🏽"), "OK delivered")
        self.assertChatEvent(emoji.readJSON(), zhangId, "张三", "你好 👋🏽", toId=emojiId)
        # The JSON client may escape (surrogate pairs included) or not.
        emoji.send(b'{"msgid":6,"toid":%d,"msg":"\\u4f60\\u597d \\ud83d\\ude00 \xf0\x9f\x8e\x89"}\n'
                   % zhangId)
        self.assertEqual(emoji.readJSON()["delivery"], "online")
        self.assertMSG(zhang.readText(), emojiId, "Ünïcode", "你好 😀 🎉")
        self.assertEqual(emoji.request({"msgid": 10, "groupid": groupId, "msg": "群聊 🍵"})["online"], 1)
        self.assertGROUPMSG(zhang.readText(), groupId, emojiId, "Ünïcode", "群聊 🍵")

        zhang.sendLine("groups")
        header, lines = zhang.readList()
        self.assertEqual(lines[0], f"  {groupId} 茶话会: 喝茶 ☕🍰 tab\there")
        [group] = emoji.request({"msgid": 16})["groups"]
        self.assertEqual((group["groupname"], group["groupdesc"]), ("茶话会", "喝茶 ☕🍰 tab\there"))
        groupId2 = emoji.request({"msgid": 8, "groupname": "🎉派对", "groupdesc": "🎂 生日"})["groupid"]
        self.assertEqual(zhang.command(f"addgroup {groupId2}"), f"OK joined group {groupId2}")
        zhang.sendLine("groups")
        self.assertIn(f"  {groupId2} 🎉派对: 🎂 生日", zhang.readList()[1])

        # Offline, both ways, and logins by a Chinese name.
        self.assertEqual(zhang.command("logout"), "OK logged out")
        self.assertEqual(emoji.request({"msgid": 6, "toid": zhangId, "msg": "离线 🌙"})["delivery"],
                         "offline")
        self.assertEqual(emoji.request({"msgid": 10, "groupid": groupId, "msg": "🍵 凉了"})["offline"], 1)
        self.assertEqual(zhang.command("login 张三 pw"),
                         f"OK logged in: id {zhangId}, name 张三, 2 offline messages")
        self.assertMSG(zhang.readText(), emojiId, "Ünïcode", "离线 🌙")
        self.assertGROUPMSG(zhang.readText(), groupId, emojiId, "Ünïcode", "🍵 凉了")
        self.assertEqual(zhang.command("quit"), "OK bye")
        zhang.readUntilClosed()
        self.assertEqual(emoji.request({"msgid": 6, "toid": zhangId, "msg": "再见 👋"})["delivery"],
                         "offline")
        jsonZhang = self.client()
        ack = jsonZhang.request({"msgid": 1, "name": "张三", "password": "pw"})
        self.assertEqual((ack["errno"], ack["id"], ack["name"]), (0, zhangId, "张三"))
        [stored] = ack["offlinemsg"]
        self.assertChatEvent(json.loads(stored), emojiId, "Ünïcode", "再见 👋", toId=zhangId)
        groups = sorted((json.loads(g) for g in ack["groups"]), key=lambda g: g["id"])
        self.assertEqual([(g["groupname"], g["groupdesc"]) for g in groups],
                         [("茶话会", "喝茶 ☕🍰 tab\there"), ("🎉派对", "🎂 生日")])
        # A differently cased name looks alike, so it is taken (PROTOCOL.md 3.3).
        self.assertTextError(self.client().command("register ünïcode pw"), 105)
        self.assertTextError(self.client().command("register Ünïcode pw"), 105)
        # Logins compare exactly, case included (MariaDB's default collations
        # would find alice for Alice).
        aliceId = self.register("alice")
        self.assertTextError(self.client().command("register Alice pw"), 105)
        self.assertTextError(self.client().command("login Alice pw"), 103)
        self.assertEqual(self.client().command("login alice pw"),
                         f"OK logged in: id {aliceId}, name alice, 0 offline messages")
        for name in ["🎂派对", "🎉派對", "tea", "Tea", "TEA"]:
            ack = emoji.request({"msgid": 8, "groupname": name})
            self.assertEqual((ack["msgid"], ack["errno"]), (11, 0), (name, ack))

    def test_lookAlikeNames(self) -> None:
        """
        Once alice exists, a name that looks like it (capital, Cyrillic а,
        fullwidth ａ, mathematical bold 𝐚) is taken in both dialects:
        REG_MSG_ACK errno 1, text ERR 105 (PROTOCOL.md 3.3), and no account
        is made.  alice logs in by her exact name in both dialects.  (Nine
        registrations: within PROTOCOL.md 6's ten a minute from one address.)
        """
        aliceId = self.register("alice")
        text, jsonClient = self.client(), self.client()
        for name in ["Alice", "\u0430lice", "\uff41lice", "\U0001d41alice"]:
            self.assertTextError(text.command(f"register {name} pw"), 105)
            ack = jsonClient.request({"msgid": 4, "name": name, "password": "pw"})
            self.assertEqual(set(ack), {"msgid", "errno", "errmsg"}, (name, ack))
            self.assertEqual((ack["msgid"], ack["errno"]), (5, 1), (name, ack))
            self.assertTextError(text.command(f"login {name} pw"), 103)
        self.assertEqual(text.command("login alice pw"),
                         f"OK logged in: id {aliceId}, name alice, 0 offline messages")
        self.assertEqual(text.command("logout"), "OK logged out")
        ack = jsonClient.request({"msgid": 1, "name": "alice", "password": "pw"})
        self.assertEqual((ack["msgid"], ack["errno"], ack["id"], ack["name"]),
                         (2, 0, aliceId, "alice"))


class SQLiteTests(SingleNodeTests, unittest.SynchronousTestCase):
    """The suite on the default SQLite file."""

    def makeDatabase(self) -> Any:
        return None


class MariaDBTests(SingleNodeTests, unittest.SynchronousTestCase):
    """The suite on a database of its own on the machine's MariaDB."""

    def makeDatabase(self) -> Any:
        return SharedMariaDBDatabase(self)


class CommandLineTests(unittest.SynchronousTestCase):
    """A bad option value ends twistd with one clear line on stderr."""

    def runTwistd(self, directory: str, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logfile=-", "chat", "--port", "tcp:0:interface=127.0.0.1",
             "--db", f"sqlite:{directory}/chat.sqlite3", *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)

    def test_badOptions(self) -> None:
        cases = [
            (["--db", "nonsense:x"], "nonsense:x"),
            (["--port", "nonsense"], "nonsense"),
            (["--max-line", "0"], "max-line"),
            (["--max-line", "many"], "max-line"),
            (["--password-time", "-1"], "password-time"),
            (["--db", "mysql://root:@127.0.0.1:1/x"], "127.0.0.1:1"),
            (["--redis", "nonsense"], "nonsense"),
            (["--no-such-option"], "no-such-option"),
            (["--trusted-net", "10.0.0.1/8"], "10.0.0.1/8"),
            (["--trusted-net", "nowhere"], "nowhere"),
            (["--chat-rate", "-1"], "chat-rate"),
            (["--chat-burst", "0"], "chat-burst"),
            (["--max-pending-logins", "0"], "max-pending-logins"),
            (["--login-timeout", "soon"], "login-timeout"),
        ]
        directories = [self.mktemp() for _ in cases]
        for directory in directories:
            os.makedirs(directory)
        with ThreadPoolExecutor(len(cases)) as pool:
            results = list(pool.map(self.runTwistd, directories, [args for args, _ in cases]))
        for (args, mentioned), result in zip(cases, results):
            stderr = result.stderr.decode("utf-8", "replace")
            stdout = result.stdout.decode("utf-8", "replace")
            where = f"twistd chat {' '.join(args)}: status {result.returncode}\n" \
                    f"stderr: {stderr!r}\nstdout: {stdout[-2000:]!r}"
            self.assertNotEqual(result.returncode, 0, where)
            self.assertNotIn("Traceback", stderr + stdout, where)
            lines = [line for line in stderr.splitlines() if line.strip()]
            self.assertEqual(len(lines), 1, where)
            self.assertIn(mentioned, lines[0], where)
            self.assertNotIn("listening on", stdout, where)
