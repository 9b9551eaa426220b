"""
Tests for L{chat.server.protocol.ChatProtocol}: framing on a real connection
object, the choice of dialect, the order of replies, the holding of events
during a login, and what happens on errors (PROTOCOL.md 1, 2, 3.2, 4).

Most tests drive the protocol over a L{StringTransport} with a fake
service whose answers the test controls, so they run without a reactor.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from chat.core.errors import (
    AccountInUse, Forbidden, NotFound, NotLoggedIn, WrongCredentials,
)
from chat.core.messages import (
    Chat, ChatEvent, ChatSent, CreateGroup, Friend, GroupCreated, LoggedIn,
    LoggedOut, Login, Logout, Ping, Pong, Register, Registered, Request,
)
from chat.server.protocol import (
    DEFAULT_LOGIN_TIMEOUT, ChatFactory, ChatProtocol, ConnectionLimits,
)

MAX = 64
"""The --max-line of the protocols under test: small, to test the limit."""

EVENT = ChatEvent(2, "bob", "hi there", "2024-01-01 12:00:00", toId=1)
"""A one-to-one message from bob (2) to alice (1)."""

OFFLINE = ChatEvent(3, "carol", "stored", "2024-01-01 11:00:00", toId=1)
"""A message that waited in the offline store for alice."""


class FakeService:
    """
    Stands in for L{ChatService}: records what the protocol asks and
    answers with C{answers[type(request)]}, a reply, an exception to
    raise, or a callable C{(session, request) -> reply or Deferred}.

    A login answered with L{LoggedIn} sets the session's user, as the real
    service does.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.ended: list[Any] = []
        self.undelivered: list[list[tuple[int, ChatEvent]]] = []
        self.readable: list[Any] = []
        self.answeredLogins: list[int] = []
        self.answers: dict[type, Any] = {
            Ping: Pong(),
            Chat: ChatSent(online=True),
            Logout: LoggedOut(),
            CreateGroup: GroupCreated(5, "dev"),
            Register: Registered(7, "alice"),
            Login: self.loggedIn,
        }

    def loggedIn(self, session: Any, request: Login,
                 offline: tuple[ChatEvent, ...] = ()) -> LoggedIn:
        session.userId, session.userName = 1, "alice"
        return LoggedIn(1, "alice", (Friend(2, "bob", True),), (), offline)

    def handle(self, session: Any, request: Request) -> Any:
        self.requests.append(request)
        answer = self.answers[type(request)]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(session, request)
        return answer

    def sessionEnded(self, session: Any) -> Deferred[None]:
        """Like the real one: fires once the session is released."""
        self.ended.append(session)
        session.userId = session.userName = None
        return succeed(None)

    def storeUndelivered(self, messages: list[tuple[int, ChatEvent]]
                         ) -> Deferred[None]:
        self.undelivered.append(list(messages))
        return succeed(None)

    def backlogReadable(self, session: Any) -> None:
        self.readable.append(session)

    def loginAnswered(self, userId: int) -> None:
        self.answeredLogins.append(userId)

    def shutdown(self, reason: str) -> None:
        pass

    def settled(self) -> Deferred[None]:
        return succeed(None)


def connectWithClock(service: Any, maxLength: int = MAX) -> tuple[
        ChatProtocol, StringTransport, Clock]:
    """
    A protocol from the real factory, connected to a StringTransport, and
    the Clock it runs on (a classic connection paces its writes by it).
    """
    clock = Clock()
    factory = ChatFactory(service, ConnectionLimits(maxLine=maxLength), clock)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def connect(service: Any, maxLength: int = MAX) -> tuple[
        ChatProtocol, StringTransport]:
    """L{connectWithClock}, for connections that do not pace."""
    protocol, transport, _ = connectWithClock(service, maxLength)
    return protocol, transport


def jsonLines(transport: StringTransport) -> list[dict[str, Any]]:
    """
    What the server wrote, as JSON objects: one per line, each line ending
    in exactly LF (and no CR).
    """
    data = transport.value()
    if not data:
        return []
    assert data.endswith(b"\n") and b"\r" not in data, data
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def textLines(transport: StringTransport) -> list[str]:
    """What the server wrote, as text lines: each must end in CRLF."""
    data = transport.value()
    if not data:
        return []
    assert data.endswith(b"\r\n"), data
    lines = data.decode("utf-8").split("\r\n")[:-1]
    for line in lines:
        assert "\n" not in line and "\r" not in line, data
    return lines


class DialectChoiceTests(SynchronousTestCase):
    """The first non-blank message fixes the dialect (PROTOCOL.md 2)."""

    def setUp(self) -> None:
        self.service = FakeService()
        self.protocol, self.transport = connect(self.service)

    def test_nothingOnConnect(self) -> None:
        """The classic client expects no greeting."""
        self.assertEqual(self.transport.value(), b"")

    def test_json(self) -> None:
        """A first message starting with '{' selects JSON."""
        self.protocol.dataReceived(b'{"msgid":12}\n')
        self.assertEqual(jsonLines(self.transport), [{"msgid": 13}])

    def test_jsonAfterSpaces(self) -> None:
        """Leading spaces and tabs do not count: the first non-space byte does."""
        self.protocol.dataReceived(b' \t {"msgid":12}\n')
        self.assertEqual(jsonLines(self.transport), [{"msgid": 13}])

    def test_text(self) -> None:
        """Anything else selects text, whose lines end in CRLF."""
        self.protocol.dataReceived(b"ping\n")
        self.assertEqual(textLines(self.transport), ["PONG"])

    def test_blankLinesBeforeFirst(self) -> None:
        """
        Blank and whitespace-only messages before the first real one are
        ignored and choose nothing.
        """
        self.protocol.dataReceived(b"\n\r\n \t\n\0\r\0   \n")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.service.requests, [])
        self.protocol.dataReceived(b'{"msgid":12}\n')
        self.assertEqual(jsonLines(self.transport), [{"msgid": 13}])

    def test_blankLinesLater(self) -> None:
        """Blank lines between requests get no reply at all."""
        self.protocol.dataReceived(b"ping\r\n\r\n  \r\n\t\r\nping\r\n")
        self.assertEqual(textLines(self.transport), ["PONG", "PONG"])

    def test_fixedForTheConnection(self) -> None:
        """
        Once text, a JSON-looking message is a (bad) text command, answered
        in text.
        """
        self.protocol.dataReceived(b"ping\n")
        self.protocol.dataReceived(b'{"msgid":12}\n')
        lines = textLines(self.transport)
        self.assertEqual(lines[0], "PONG")
        self.assertTrue(lines[1].startswith("ERR 100 "), lines)

    def test_jsonFixedToo(self) -> None:
        """Once JSON, a text command is malformed JSON, answered as ACK 11."""
        self.protocol.dataReceived(b'{"msgid":12}\n')
        self.protocol.dataReceived(b"ping\n")
        self.assertEqual(jsonLines(self.transport)[1]["errno"], 100)

    def test_invalidFirstMessageStillChooses(self) -> None:
        """
        A first message that starts with '{' but is not JSON selects JSON
        all the same, and is answered with 100 there.
        """
        self.protocol.dataReceived(b"{not json\n")
        [reply] = jsonLines(self.transport)
        self.assertEqual((reply["msgid"], reply["req"], reply["errno"]),
                         (11, None, 100))
        self.assertTrue(reply["errmsg"])


class TerminatorTests(SynchronousTestCase):
    """Every terminator of PROTOCOL.md 1 works on a connection."""

    def test_each(self) -> None:
        """LF, CRLF, NUL and CR NUL each end a text command."""
        for end in (b"\n", b"\r\n", b"\0", b"\r\0"):
            protocol, transport = connect(FakeService())
            protocol.dataReceived(b"ping" + end)
            self.assertEqual(textLines(transport), ["PONG"], end)

    def test_twoInOneRead(self) -> None:
        """Two messages in one read are both answered, in order."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"ping\r\nregister alice secret\r\n")
        self.assertEqual(textLines(transport), [
            "PONG", "OK registered: id 7, name alice"])
        self.assertEqual(service.requests,
                         [Ping(), Register("alice", "secret")])

    def test_splitAcrossReads(self) -> None:
        """A message cut into single bytes is answered once, when complete."""
        service = FakeService()
        protocol, transport = connect(service)
        message = b'{"msgid":4,"name":"alice","password":"secret"}\r\n'
        for i in range(len(message) - 1):
            protocol.dataReceived(message[i:i + 1])
            self.assertEqual(transport.value(), b"")
        protocol.dataReceived(message[-1:])
        self.assertEqual(jsonLines(transport),
                         [{"msgid": 5, "errno": 0, "id": 7}])


class ClassicModeTests(SynchronousTestCase):
    """
    A JSON connection whose first message ends in NUL is a classic
    client's: no ACK 11 for success, ACK 11 for failure (PROTOCOL.md 3.2).
    """

    def setUp(self) -> None:
        self.service = FakeService()
        self.protocol, self.transport, self.clock = connectWithClock(
            self.service)

    def paced(self) -> None:
        """Let the pacing of a classic connection write what waits."""
        for _ in range(20):
            self.clock.advance(0.002)

    def login(self, end: bytes) -> None:
        self.protocol.dataReceived(
            b'{"msgid":1,"id":1,"password":"pw"}' + end)
        self.assertEqual(jsonLines(self.transport)[0]["msgid"], 2)
        self.transport.clear()
        self.paced()

    def test_successSilent(self) -> None:
        """A chat that succeeded gets no reply at all."""
        self.login(b"\0")
        self.protocol.dataReceived(b'{"msgid":6,"toid":2,"msg":"hi"}\0')
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.service.requests[-1], Chat(2, "hi"))

    def test_failureAnswered(self) -> None:
        """A refused chat is still answered with ACK 11 and its errno."""
        self.login(b"\0")
        self.service.answers[Chat] = NotFound("no user with id 9")
        self.protocol.dataReceived(b'{"msgid":6,"toid":9,"msg":"hi"}\0')
        self.assertEqual(jsonLines(self.transport), [
            {"msgid": 11, "req": 6, "errno": 104,
             "errmsg": "no user with id 9"}])

    def test_malformedAnswered(self) -> None:
        """A malformed request is answered too (error 100)."""
        self.login(b"\0")
        self.protocol.dataReceived(b'{"msgid":6,"toid":"2","msg":"hi"}\0')
        reply = jsonLines(self.transport)
        self.assertEqual((reply[0]["msgid"], reply[0]["req"],
                          reply[0]["errno"]), (11, 6, 100))

    def test_extensionsAnswered(self) -> None:
        """PING, which only this server knows, is still answered."""
        self.login(b"\0")
        self.protocol.dataReceived(b'{"msgid":12}\0')
        self.assertEqual(jsonLines(self.transport), [{"msgid": 13}])

    def test_lfIsNotClassic(self) -> None:
        """A JSON connection that started with LF gets its success ACKs..."""
        self.login(b"\n")
        self.protocol.dataReceived(b'{"msgid":6,"toid":2,"msg":"hi"}\0')
        self.assertEqual(jsonLines(self.transport), [
            {"msgid": 11, "req": 6, "errno": 0, "delivery": "online"}])

    def test_decidedByFirstMessage(self) -> None:
        """...and a classic one stays classic after a message ending in LF."""
        self.login(b"\0")
        self.protocol.dataReceived(b'{"msgid":6,"toid":2,"msg":"hi"}\n')
        self.assertEqual(self.transport.value(), b"")

    def test_textEndingInNUL(self) -> None:
        """A text first message ending in NUL is just text."""
        self.protocol.dataReceived(b"ping\0")
        self.assertEqual(textLines(self.transport), ["PONG"])


class LimitTests(SynchronousTestCase):
    """
    A message over --max-line gets 101 in the connection's dialect, then
    the connection closes (PROTOCOL.md 1).
    """

    def test_exactlyMaxWithCRLF(self) -> None:
        """MAX bytes before CRLF is fine: the CR is the terminator's."""
        protocol, transport = connect(FakeService())
        protocol.dataReceived(b"ping".ljust(MAX) + b"\r\n")
        self.assertEqual(textLines(transport), ["PONG"])
        self.assertFalse(transport.disconnecting)

    def test_exactlyMaxCRLFInTwoReads(self) -> None:
        """...also when the LF comes in a later read than the CR."""
        protocol, transport = connect(FakeService())
        protocol.dataReceived(b"ping".ljust(MAX) + b"\r")
        protocol.dataReceived(b"\n")
        self.assertEqual(textLines(transport), ["PONG"])
        self.assertFalse(transport.disconnecting)

    def test_onePastMaxText(self) -> None:
        """
        MAX + 1 bytes before CRLF is overlong, even as a first message:
        ERR 101 in text, then the connection closes.
        """
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"ping".ljust(MAX + 1) + b"\r\n")
        lines = textLines(transport)
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("ERR 101 "), lines)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(service.requests, [])

    def test_overlongFirstJSON(self) -> None:
        """An overlong first message that starts with '{' is answered in JSON."""
        protocol, transport = connect(FakeService())
        protocol.dataReceived(b'  {"msgid":12,"x":"' + b"y" * MAX)
        [reply] = jsonLines(transport)
        self.assertEqual((reply["msgid"], reply["req"], reply["errno"]),
                         (11, None, 101))
        self.assertTrue(transport.disconnecting)

    def test_overlongFirstJSONManySpaces(self) -> None:
        """
        ...however many spaces come before the '{' (more than the 64
        bytes the splitter once kept of an overlong message).
        """
        protocol, transport = connect(FakeService(), maxLength=200)
        protocol.dataReceived(b" " * 100 + b'{"msgid":12,"x":"' + b"y" * 200)
        self.assertEqual(jsonLines(transport)[0]["errno"], 101)

    def test_overlongWithoutTerminator(self) -> None:
        """
        Overlong as soon as more than MAX bytes arrive without a
        terminator: the server does not wait for the end of the line.
        """
        protocol, transport = connect(FakeService())
        protocol.dataReceived(b"chat bob ")
        protocol.dataReceived(b"x" * MAX)
        self.assertTrue(textLines(transport)[0].startswith("ERR 101 "))
        self.assertTrue(transport.disconnecting)

    def test_overlongLaterInDialect(self) -> None:
        """
        An overlong message on a JSON connection is answered in JSON, after
        the replies to the messages before it in the same read.
        """
        protocol, transport = connect(FakeService())
        protocol.dataReceived(
            b'{"msgid":12}\nping ' + b"x" * MAX + b"\n" + b'{"msgid":12}\n')
        replies = jsonLines(transport)
        self.assertEqual(replies[0], {"msgid": 13})
        self.assertEqual(replies[1]["errno"], 101)
        self.assertEqual(len(replies), 2)
        self.assertTrue(transport.disconnecting)

    def test_nothingReadAfterOverlong(self) -> None:
        """Once closing, further bytes are ignored: no more replies."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"x" * (MAX + 1))
        transport.clear()
        protocol.dataReceived(b"ping\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(service.requests, [])

    def test_overlongWaitsForEarlierReply(self) -> None:
        """
        An overlong message behind a request still being answered is
        refused only after that answer, keeping the reply order.
        """
        service = FakeService()
        pending: Deferred[ChatSent] = Deferred()
        service.answers[Chat] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b"chat bob hello\r\n" + b"x" * (MAX + 1))
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        pending.callback(ChatSent(online=False))
        lines = textLines(transport)
        self.assertEqual(lines[0], "OK stored for offline delivery")
        self.assertTrue(lines[1].startswith("ERR 101 "), lines)
        self.assertTrue(transport.disconnecting)

    def test_overlongEndsSession(self) -> None:
        """Closing for an overlong message ends the session at once."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\n")
        protocol.dataReceived(b"x" * (MAX + 1))
        self.assertEqual(service.ended, [protocol])


class InvalidUTF8Tests(SynchronousTestCase):
    """Invalid UTF-8 is error 100 in the dialect, never a crash."""

    def test_text(self) -> None:
        """A text line with a bad byte is ERR 100; the connection stays."""
        protocol, transport = connect(FakeService())
        protocol.dataReceived(b"chat bob caf\xe9\r\nping\r\n")
        lines = textLines(transport)
        self.assertTrue(lines[0].startswith("ERR 100 "), lines)
        self.assertEqual(lines[1], "PONG")
        self.assertFalse(transport.disconnecting)

    def test_textFirstByte(self) -> None:
        """A first message that is invalid from its first byte is text."""
        protocol, transport = connect(FakeService())
        protocol.dataReceived(b"\xff\xfe{\n")
        self.assertTrue(textLines(transport)[0].startswith("ERR 100 "))

    def test_json(self) -> None:
        """A JSON message with a bad byte is ACK 11 errno 100."""
        protocol, transport = connect(FakeService())
        protocol.dataReceived(
            b'{"msgid":6,"toid":2,"msg":"caf\xe9"}\n{"msgid":12}\n')
        replies = jsonLines(transport)
        self.assertEqual((replies[0]["msgid"], replies[0]["errno"]), (11, 100))
        self.assertEqual(replies[1], {"msgid": 13})

    def test_utf8Kept(self) -> None:
        """Valid multi-byte UTF-8 reaches the service intact."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived("chat 张三 你好 😀\r\n".encode("utf-8"))
        self.assertEqual(service.requests, [Chat("张三", "你好 😀")])


class OrderTests(SynchronousTestCase):
    """Replies come in request order; events never overtake a login reply."""

    def test_laterRequestWaits(self) -> None:
        """
        A request behind one whose answer is pending is not even handed to
        the service yet, so its reply cannot overtake.
        """
        service = FakeService()
        pending: Deferred[ChatSent] = Deferred()
        service.answers[Chat] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b"chat bob hi\r\nping\r\nping\r\n")
        self.assertEqual(service.requests, [Chat("bob", "hi")])
        self.assertEqual(transport.value(), b"")
        pending.callback(ChatSent(online=True))
        self.assertEqual(textLines(transport),
                         ["OK delivered", "PONG", "PONG"])

    def test_laterFailureWaits(self) -> None:
        """A failing answer keeps the order too, and restarts the queue."""
        service = FakeService()
        pending: Deferred[ChatSent] = Deferred()
        service.answers[Chat] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(
            b'{"msgid":6,"toid":2,"msg":"a"}\n{"msgid":12}\n')
        pending.errback(Forbidden("no"))
        self.assertEqual(jsonLines(transport), [
            {"msgid": 11, "req": 6, "errno": 103, "errmsg": "no"},
            {"msgid": 13}])

    def test_eventsHeldDuringLogin(self) -> None:
        """
        An event pushed while the login is being answered comes after the
        login ack (which carries the offline messages), not before.
        """
        service = FakeService()
        pending: Deferred[LoggedIn] = Deferred()
        service.answers[Login] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b'{"msgid":1,"id":1,"password":"pw"}\n')
        service.loggedIn(protocol, Login(1, "pw"))  # registered, as the service does
        protocol.deliver(EVENT)
        self.assertEqual(transport.value(), b"")
        pending.callback(service.loggedIn(protocol, Login(1, "pw"), (OFFLINE,)))
        ack, event = jsonLines(transport)
        self.assertEqual((ack["msgid"], ack["errno"]), (2, 0))
        self.assertEqual([json.loads(m)["msg"] for m in ack["offlinemsg"]],
                         ["stored"])
        self.assertEqual(event["msg"], "hi there")

    def test_eventsHeldDuringTextLogin(self) -> None:
        """
        In text, the OK line, then the offline MSG lines, then live events.
        """
        service = FakeService()
        pending: Deferred[LoggedIn] = Deferred()
        service.answers[Login] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\n")
        service.loggedIn(protocol, Login(1, "pw"))  # registered, as the service does
        protocol.deliver(EVENT)
        protocol.deliver(ChatEvent(2, "bob", "second", "2024-01-01 12:00:01",
                                   toId=1))
        pending.callback(service.loggedIn(protocol, Login(1, "pw"), (OFFLINE,)))
        lines = textLines(transport)
        self.assertTrue(lines[0].startswith("OK logged in"), lines)
        self.assertEqual(lines[1:], [
            "MSG 2024-01-01 11:00:00 3 carol: stored",
            "MSG 2024-01-01 12:00:00 2 bob: hi there",
            "MSG 2024-01-01 12:00:01 2 bob: second"])

    def test_eventsReleasedAfterFailedLogin(self) -> None:
        """
        Events held during a login that then fails are still written, after
        the error: nothing held is dropped.
        """
        service = FakeService()
        pending: Deferred[LoggedIn] = Deferred()
        service.answers[Login] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\n")
        service.loggedIn(protocol, Login(1, "pw"))  # registered, as the service does
        protocol.deliver(EVENT)
        pending.errback(AccountInUse("in use"))
        lines = textLines(transport)
        self.assertEqual(lines[0], "ERR 105 in use")
        self.assertEqual(lines[1], "MSG 2024-01-01 12:00:00 2 bob: hi there")

    def test_eventsNotHeldOtherwise(self) -> None:
        """Outside a login, an event is written at once, between replies."""
        service = FakeService()
        pending: Deferred[ChatSent] = Deferred()
        service.answers[Chat] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\nchat bob x\r\n")
        transport.clear()
        protocol.deliver(EVENT)
        self.assertEqual(textLines(transport),
                         ["MSG 2024-01-01 12:00:00 2 bob: hi there"])


class UnexpectedErrorTests(SynchronousTestCase):
    """
    A bug in the service is logged, and the client gets an error line, never
    a traceback.
    """

    def assertNoTraceback(self, data: bytes) -> None:
        for word in (b"Traceback", b"secret", b"RuntimeError", b"File "):
            self.assertNotIn(word, data)

    def test_raisedText(self) -> None:
        """handle() raising: ERR 107 in text; the connection goes on."""
        service = FakeService()
        service.answers[Chat] = RuntimeError("secret internals")
        protocol, transport = connect(service)
        protocol.dataReceived(b"chat bob hi\r\nping\r\n")
        lines = textLines(transport)
        self.assertTrue(lines[0].startswith("ERR 107 "), lines)
        self.assertEqual(lines[1], "PONG")
        self.assertNoTraceback(transport.value())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failedJSON(self) -> None:
        """A Deferred failing with a non-chat error: ACK 11 errno 107."""
        service = FakeService()
        service.answers[Chat] = lambda session, request: _failed(
            RuntimeError("secret internals"))
        protocol, transport = connect(service)
        protocol.dataReceived(b'{"msgid":6,"toid":2,"msg":"a"}\n')
        [reply] = jsonLines(transport)
        self.assertEqual((reply["msgid"], reply["req"], reply["errno"]),
                         (11, 6, 107))
        self.assertNoTraceback(transport.value())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_loginRaised(self) -> None:
        """A login that blows up is a LOGIN_MSG_ACK with an errno, no crash."""
        service = FakeService()
        service.answers[Login] = KeyError("secret internals")
        protocol, transport = connect(service)
        protocol.dataReceived(b'{"msgid":1,"id":1,"password":"pw"}\0')
        [reply] = jsonLines(transport)
        self.assertEqual(reply["msgid"], 2)
        self.assertNotEqual(reply["errno"], 0)
        self.assertNoTraceback(transport.value())
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertIsNone(protocol.userId)


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d


class SessionTests(SynchronousTestCase):
    """The protocol tells the service when its session ends."""

    def test_connectionLost(self) -> None:
        """A logged-in connection that drops ends its session."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\n")
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(service.ended, [protocol])

    def test_anonymousConnectionLost(self) -> None:
        """A connection that never logged in has no session to end."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"ping\r\n")
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(service.ended, [])

    def test_quit(self) -> None:
        """quit answers OK bye, ends the session and closes."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\nquit\r\nping\r\n")
        lines = textLines(transport)
        self.assertEqual(lines[-1], "OK bye")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(service.ended, [protocol])
        self.assertNotIn("PONG", lines)

    def test_help(self) -> None:
        """help is answered by the protocol itself, not the service."""
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b"help\r\n")
        lines = textLines(transport)
        self.assertTrue(lines[0].startswith("OK "))
        self.assertEqual(service.requests, [])

    def test_disconnect(self) -> None:
        """
        The service's disconnect sends the reason as a NOTICE in the
        dialect, then closes, and nothing more is written.
        """
        service = FakeService()
        protocol, transport = connect(service)
        protocol.dataReceived(b'{"msgid":1,"id":1,"password":"pw"}\n')
        transport.clear()
        protocol.disconnect("taken over")
        protocol.deliver(EVENT)
        self.assertEqual(jsonLines(transport),
                         [{"msgid": 18, "msg": "taken over"}])
        self.assertTrue(transport.disconnecting)

    def test_serviceErrorsInDialect(self) -> None:
        """Refusals from the service are the dialect's error replies."""
        service = FakeService()
        service.answers[Chat] = NotLoggedIn("log in first")
        protocol, transport = connect(service)
        protocol.dataReceived(b"chat bob hi\r\n")
        self.assertEqual(textLines(transport), ["ERR 102 log in first"])

    def test_malformedBeforeNotLoggedIn(self) -> None:
        """
        100 wins over 102 (PROTOCOL.md 3.1): a malformed request on an
        anonymous connection is refused as malformed, and never reaches
        the service.
        """
        service = FakeService()
        service.answers[Chat] = NotLoggedIn("log in first")
        protocol, transport = connect(service)
        protocol.dataReceived(b'{"msgid":6,"toid":"2","msg":"hi"}\n'
                              b'{"msgid":6,"toid":2,"msg":"hi"}\n')
        self.assertEqual([r["errno"] for r in jsonLines(transport)],
                         [100, 102])
        self.assertEqual(service.requests, [Chat(2, "hi")])

    def test_closedDuringLogin(self) -> None:
        """
        A connection that drops while its login is being answered must not
        stay registered: the service added the session, so the protocol
        ends it when the reply comes back to a closed connection
        (otherwise the account stays "in use" and messages for it go into
        a dead connection).
        """
        service = FakeService()
        pending: Deferred[LoggedIn] = Deferred()
        service.answers[Login] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\n")
        protocol.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(service.ended, [])
        pending.callback(service.loggedIn(protocol, Login(1, "pw")))
        self.assertEqual(service.ended, [protocol])
        self.assertIsNone(protocol.userId)
        self.assertEqual(service.undelivered, [])
        self.assertEqual(transport.value(), b"")

    def test_closedDuringLoginKeepsMessages(self) -> None:
        """
        The offline messages that login drained, and the events pushed to
        the session while it was being answered, were never written: they
        go back to the service to be stored, in order, not dropped.
        """
        service = FakeService()
        pending: Deferred[LoggedIn] = Deferred()
        service.answers[Login] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b'{"msgid":1,"id":1,"password":"pw"}\0')
        service.loggedIn(protocol, Login(1, "pw"))  # registered meanwhile
        self.assertTrue(protocol.deliver(EVENT))  # held for the reply
        protocol.connectionLost(Failure(ConnectionError("gone")))
        # Once closed, an event is refused, so the router stores it.
        self.assertFalse(protocol.deliver(EVENT))
        pending.callback(service.loggedIn(protocol, Login(1, "pw"), (OFFLINE,)))
        self.assertEqual(service.undelivered, [[(1, OFFLINE), (1, EVENT)]])
        self.assertIn(protocol, service.ended)
        self.assertEqual(transport.value(), b"")

    def test_disconnectedDuringLogin(self) -> None:
        """
        A session the service dropped during its login (a shutdown, a
        takeover) hands back the login's offline messages too; the
        service already ended it.
        """
        service = FakeService()
        pending: Deferred[LoggedIn] = Deferred()
        service.answers[Login] = lambda session, request: pending
        protocol, transport = connect(service)
        protocol.dataReceived(b"login alice pw\r\n")
        protocol.userId = protocol.userName = None  # as service.shutdown does
        protocol.disconnect("the server is shutting down")
        reply = service.loggedIn(protocol, Login(1, "pw"), (OFFLINE,))
        protocol.userId = None  # the service forgot it before the reply
        pending.callback(reply)
        self.assertEqual(service.undelivered, [[(1, OFFLINE)]])
        self.assertEqual(textLines(transport),
                         ["NOTICE the server is shutting down"])


class BackpressureTests(SynchronousTestCase):
    """Many queued requests pause reading; draining them resumes it."""

    def test_pauseAndResume(self) -> None:
        """
        With an answer pending, a flood of pipelined requests pauses the
        transport; once answered, the queue drains and reading resumes.
        """
        service = FakeService()
        pending: Deferred[ChatSent] = Deferred()
        service.answers[Chat] = lambda session, request: pending
        protocol, transport = connect(service, maxLength=1 << 16)
        protocol.dataReceived(b"chat bob hi\r\n" + b"ping\r\n" * 200)
        self.assertEqual(transport.producerState, "paused")
        pending.callback(ChatSent(online=True))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(textLines(transport).count("PONG"), 200)


class LoginTimeoutTests(SynchronousTestCase):
    """
    A connection without a login is closed after C{loginTimeout}, counted
    from the connect or the logout, whatever it sends meanwhile
    (PROTOCOL.md 6).
    """

    def setUp(self) -> None:
        self.service = FakeService()
        self.protocol, self.transport, self.clock = connectWithClock(
            self.service)

    def test_noDialect(self) -> None:
        """Nothing sent: closed with no notice (no dialect is known)."""
        self.clock.advance(DEFAULT_LOGIN_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)

    def test_pingsDoNotHelp(self) -> None:
        """Pings all along: closed on time, told why in its dialect."""
        for _ in range(5):
            self.protocol.dataReceived(b'{"msgid":12}\n')
            self.clock.advance(DEFAULT_LOGIN_TIMEOUT / 5)
        self.assertEqual(jsonLines(self.transport)[-1],
                         {"msgid": 18, "msg": "login timeout"})
        self.assertTrue(self.transport.disconnecting)

    def test_loginStopsIt(self) -> None:
        """A login ends the count; its logout starts it again."""
        self.protocol.dataReceived(b"login alice pw\r\n")
        self.clock.advance(DEFAULT_LOGIN_TIMEOUT * 2)
        self.assertFalse(self.transport.disconnecting)
        self.protocol.dataReceived(b"logout\r\n")
        self.clock.advance(DEFAULT_LOGIN_TIMEOUT)
        self.assertTrue(self.transport.value().endswith(
            b"NOTICE login timeout\r\n"), self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_failedLoginsDoNotHelp(self) -> None:
        """A wrong password does not start the count again."""
        self.service.answers[Login] = WrongCredentials("wrong id or password")
        self.clock.advance(DEFAULT_LOGIN_TIMEOUT - 1)
        self.protocol.dataReceived(b"login alice nope\r\n")
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_loginInFlightDecides(self) -> None:
        """
        The timeout passes while a login is being answered: a success
        keeps the connection, a failure closes it right after its answer.
        """
        for outcome in (LoggedIn(1, "alice", (), (), ()),
                        WrongCredentials("wrong id or password")):
            self.setUp()
            pending: Deferred[Any] = Deferred()
            self.service.answers[Login] = lambda session, request: pending
            self.protocol.dataReceived(b"login alice pw\r\n")
            self.clock.advance(DEFAULT_LOGIN_TIMEOUT)
            self.assertFalse(self.transport.disconnecting)
            if isinstance(outcome, LoggedIn):
                self.protocol.userId = 1
                pending.callback(outcome)
                self.assertFalse(self.transport.disconnecting)
            else:
                pending.errback(outcome)
                self.assertIn(b"ERR 103", self.transport.value())
                self.assertTrue(self.transport.disconnecting)
