"""
A live fuzz test: hypothesis throws random bytes, random text commands and
random JSON requests at one real C{twistd -n chat} node over several
connections at once, and checks that

- every line a fuzzed connection receives is one well-formed line in that
  connection's dialect (PROTOCOL.md 2): text lines end in CRLF and start
  with OK, ERR, PONG, MSG, GROUPMSG, NOTICE or two spaces; JSON lines end
  in LF and are JSON objects; no traceback ever;
- the node answers every request (a sentinel sent last is answered) unless
  it closed the connection;
- after each example, well-formed clients on connections of their own
  still get PONG.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import time

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial import unittest

from tests.harness import ChatNode

MAX_LINE = 512
"""The node's --max-line, small so that random input is often overlong."""
USERS = ["fuzz1", "fuzz2", "fuzz3"]
SENTINEL_MSGID = 424242
TEXT_LINE = re.compile(r"(OK|ERR \d{3}|PONG|MSG|GROUPMSG|NOTICE)( .*)?|  .*", re.S)


# Strategies -----------------------------------------------------------------

terminators = st.sampled_from([b"\n", b"\r\n", b"\0", b"\r\0", b"", b"\n\n"])

words = st.sampled_from([
    "help", "register", "login", "logout", "loginout", "chat", "addfriend", "friends",
    "creategroup", "addgroup", "join", "groups", "groupchat", "g", "ping", "PING", "Chat",
    "quit", "nonsense", "{", "{}"])
arguments = st.one_of(
    st.sampled_from(USERS + ["1", "2", "3", "4", "0", "-1", "99999999999999999999999", "pw",
                             "张三", "😀", "g1", "", ":"]),
    st.text(max_size=20))
separators = st.sampled_from([" ", "\t", "  ", ":"])


@st.composite
def textLines(draw: st.DrawFn) -> bytes:
    word = draw(words)
    args = draw(st.lists(arguments, max_size=4))
    parts = [word]
    for arg in args:
        parts += [draw(separators), arg]
    text = "".join(parts)
    return draw(st.sampled_from(["", " ", "\t"])).encode() + text.encode(
        "utf-8", "surrogatepass") + draw(terminators)


jsonValues = st.one_of(
    st.integers(-3, 6), st.integers(), st.sampled_from(USERS + ["pw", "g1"]),
    st.text(max_size=20), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 5), max_size=3), st.dictionaries(st.text(max_size=3),
                                                               st.integers(), max_size=2))
msgids = st.one_of(st.integers(1, 18), st.integers(-3, 40), st.integers(),
                   st.sampled_from([True, 2.0, "6", None])).filter(
                       lambda m: m != SENTINEL_MSGID)
fieldNames = st.sampled_from(["id", "toid", "msg", "name", "password", "friendid", "groupid",
                              "groupname", "groupdesc", "time", "x"])


@st.composite
def jsonLines(draw: st.DrawFn) -> bytes:
    request = {"msgid": draw(msgids)}
    request.update(draw(st.dictionaries(fieldNames, jsonValues, max_size=5)))
    if draw(st.booleans()):
        del request["msgid"]
        request = {"msgid": draw(msgids), **request}
    text = json.dumps(request, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return text.encode("utf-8", "surrogatepass") + draw(terminators)


TEXT_REQUESTS = (
    [f"login {u} pw" for u in USERS] + [f"chat {u} hello there" for u in USERS]
    + ["chat 1 hi", "chat 99 hi", "chat nobody hi", "addfriend fuzz1", "addfriend 2",
       "addfriend nobody", "friends", "creategroup g1 fuzz", "creategroup g2",
       "addgroup 1", "addgroup 2", "addgroup 99", "groups", "groupchat 1 all",
       "g 2 all", "groupchat 99 x", "logout", "ping", "help", "chat:2:colon", "login x"])
JSON_REQUESTS = (
    [{"msgid": 1, "name": u, "password": "pw"} for u in USERS]
    + [{"msgid": 1, "id": i, "password": "pw"} for i in (1, 2, 3, 99)]
    + [{"msgid": 6, "toid": i, "msg": "hi"} for i in (1, 2, 3, 99)]
    + [{"msgid": 6, "id": 2, "toid": 1, "msg": "hi", "name": "x", "time": "x"},
       {"msgid": 7, "friendid": 2}, {"msgid": 7, "friendid": 99},
       {"msgid": 8, "groupname": "g1", "groupdesc": "fuzz"}, {"msgid": 8, "groupname": "g3"},
       {"msgid": 9, "groupid": 1}, {"msgid": 9, "groupid": 99},
       {"msgid": 10, "groupid": 1, "msg": "all"}, {"msgid": 10, "groupid": 99, "msg": "x"},
       {"msgid": 3}, {"msgid": 12}, {"msgid": 14}, {"msgid": 16}, {"msgid": 4, "name": "fuzz1",
                                                                  "password": "pw"}])
validRequests = {
    "text": st.sampled_from([f"{r}\r\n".encode() for r in TEXT_REQUESTS]),
    "json": st.sampled_from([json.dumps(r).encode() + b"\n" for r in JSON_REQUESTS]),
    "classic": st.sampled_from([json.dumps(r).encode() + b"\0" for r in JSON_REQUESTS]),
}
"""Well-formed requests of each dialect, which succeed or fail for a reason."""

junk = st.one_of(st.binary(max_size=MAX_LINE + 80), textLines(), jsonLines(),
                 st.binary(min_size=MAX_LINE - 2, max_size=MAX_LINE + 3))
"""Raw bytes (some about the size of --max-line) and random lines of both dialects."""


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """
    Writes to three connections, interleaved.  Each connection mostly
    speaks one dialect (text, JSON or classic JSON) and may first log in as
    its own user, so that sessions, chats between them (pushed events),
    friends and groups happen between the junk.
    """
    dialects = [draw(st.sampled_from(["text", "json", "classic"])) for _ in USERS]
    script = []
    for index, (user, dialect) in enumerate(zip(USERS, dialects)):
        if draw(st.sampled_from([True, True, True, False])):
            login = ({"text": f"login {user} pw\r\n".encode()}.get(dialect) or json.dumps(
                {"msgid": 1, "name": user, "password": "pw"}).encode()
                + (b"\0" if dialect == "classic" else b"\n"))
            script.append((index, login))
    for _ in range(draw(st.integers(5, 25))):
        index = draw(st.integers(0, 2))
        piece = draw(st.one_of(validRequests[dialects[index]], validRequests[dialects[index]],
                               junk))
        script.append((index, piece))
    return script


# The model of a connection's dialect (PROTOCOL.md 1 and 2) -----------------

def expectedDialect(stream: bytes) -> str | None:
    """
    The dialect that C{stream} fixes: that of its first non-blank message
    (C{{} first: JSON), or of its first overlong one; None while undecided.
    """
    position = 0
    while True:
        match = re.compile(rb"[\n\0]").search(stream, position)
        if match is None:
            rest = stream[position:]
            if len(rest) > MAX_LINE and not (len(rest) == MAX_LINE + 1 and rest.endswith(b"\r")):
                return "json" if rest.lstrip(b" \t").startswith(b"{") else "text"
            return None
        line = stream[position:match.start()]
        position = match.end()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE or line.strip(b" \t"):
            return "json" if line.lstrip(b" \t").startswith(b"{") else "text"


class FuzzedConnection:
    """A raw connection: what was sent, what came back, whether it ended."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sent = bytearray()
        self.received = bytearray()
        self.closed = False
        self.reset = False

    def send(self, data: bytes) -> None:
        """Send, unless the server has closed; what it sent first is still read."""
        self.sent += data
        if self.closed or self.reset:
            return
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.reset = True

    def receive(self, timeout: float) -> None:
        if self.closed:
            return
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        except ConnectionResetError:
            self.closed = self.reset = True
            return
        if data:
            self.received += data
        else:
            self.closed = True

    def close(self) -> None:
        self.sock.close()


class FuzzTests(unittest.SynchronousTestCase):

    def test_randomInputKeepsServing(self) -> None:
        node = ChatNode(self, extraArgs=["--max-line", str(MAX_LINE)])
        textProbe, jsonProbe = node.client(), node.client()
        for user in USERS:
            self.assertTrue(textProbe.command(f"register {user} pw").startswith("OK"))
        self.assertEqual(textProbe.command("ping"), "PONG")
        self.assertEqual(jsonProbe.request({"msgid": 12}), {"msgid": 13})
        examples = []

        @settings(max_examples=100, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(scripts(), st.booleans())
        def example(script: list[tuple[int, bytes]], textSentinel: bool) -> None:
            examples.append(script)
            connections = [FuzzedConnection(node.address) for _ in range(3)]
            try:
                for index, data in script:
                    connections[index].send(data)
                for connection in connections:
                    if connection.sent:
                        self.finish(connection, textSentinel)
            finally:
                for connection in connections:
                    connection.close()
            self.assertEqual(textProbe.command("ping"), "PONG")
            self.assertEqual(jsonProbe.request({"msgid": 12}), {"msgid": 13})

        started = time.monotonic()
        example()
        self.assertGreater(len(examples), 50)
        log = node.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
        self.assertLess(time.monotonic() - started, 60)

    def finish(self, connection: FuzzedConnection, textSentinel: bool) -> None:
        """
        Send a sentinel request in the connection's dialect, read until its
        answer (or until the server closes), and check every line.
        """
        dialect = expectedDialect(bytes(connection.sent) + b"\n")
        if dialect is None:
            dialect = "text" if textSentinel else "json"
        nonce = secrets.token_hex(6)
        if dialect == "text":
            connection.send(f"\nsentinel-{nonce}\r\n".encode())
        else:
            connection.send(b'\n{"msgid":%d,"nonce":"%s"}\n' % (SENTINEL_MSGID, nonce.encode()))
        deadline = time.monotonic() + 10
        answered = False
        while not answered and not connection.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail(f"no answer to the sentinel; sent {bytes(connection.sent)!r}, "
                          f"got {bytes(connection.received)!r}")
            connection.receive(remaining)
            answered = self.checkLines(connection, dialect, nonce)
        data = bytes(connection.received)
        self.assertNotIn(b"Traceback", data)
        terminator = b"\r\n" if dialect == "text" else b"\n"
        if data and not data.endswith(terminator) and not connection.reset:
            self.fail(f"unfinished line at the end: {data[-200:]!r} (sent {bytes(connection.sent)!r})")

    def checkLines(self, connection: FuzzedConnection, dialect: str, nonce: str) -> bool:
        """Check the complete lines received so far; whether the sentinel was answered."""
        data = bytes(connection.received)
        context = f"\nsent: {bytes(connection.sent)!r}\nreceived: {data!r}"
        answered = False
        if dialect == "text":
            lines = data.split(b"\r\n")[:-1]
            for line in lines:
                self.assertNotIn(b"\n", line, context)
                self.assertNotIn(b"\r", line, context)
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    self.fail(f"text line not UTF-8: {line!r}{context}")
                self.assertTrue(TEXT_LINE.fullmatch(text), f"bad text line {text!r}{context}")
                answered = answered or (text.startswith("ERR 100 ") and nonce in text)
        else:
            lines = data.split(b"\n")[:-1]
            for line in lines:
                self.assertFalse(line.endswith(b"\r"), context)
                try:
                    obj = json.loads(line.decode("utf-8"))
                except ValueError:
                    self.fail(f"JSON line does not parse: {line!r}{context}")
                self.assertIsInstance(obj, dict, context)
                self.assertIs(type(obj.get("msgid")), int, context)
                answered = answered or (obj.get("req") == SENTINEL_MSGID and obj["errno"] == 100)
        return answered
