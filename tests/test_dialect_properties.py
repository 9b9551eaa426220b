"""
Property-based tests of the codecs: whatever a client sends, decoding
never raises and an error reply is one well-formed line; whatever a valid
chat event holds, it encodes to one line and back.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chat.core import rules
from chat.wire.dialect import IDialect, Rejected
from chat.core.errors import InvalidValue, NotFound
from chat.wire.jsondialect import CLASSIC, JSON
from chat.core.messages import (
    ChatEvent, Chat, CreateGroup, GroupChat, Register,
)
from chat.wire.textdialect import TEXT

SETTINGS = settings(max_examples=200, deadline=None)

# Client messages ---------------------------------------------------------

WORDS = ["help", "register", "login", "logout", "loginout", "chat",
         "addfriend", "friends", "creategroup", "addgroup", "join", "groups",
         "groupchat", "g", "ping", "quit", "CHAT", "Login"]

textLines = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda word, sep, rest: word + sep + rest,
        st.sampled_from(WORDS),
        st.sampled_from([" ", "\t", ":", "  ", " \t"]),
        st.text(max_size=60)),
    st.builds(
        lambda word, args: " ".join([word, *args]),
        st.sampled_from(WORDS),
        st.lists(st.one_of(st.from_regex(r"[0-9]{1,25}", fullmatch=True),
                           st.text(min_size=1, max_size=10)), max_size=4)),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
"""Text lines, mostly near real commands; may hold lone surrogates."""

jsonScalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
jsonValues = st.recursive(
    jsonScalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner,
                                            max_size=3)),
    max_leaves=8)
REQUEST_MSGIDS = [1, 3, 4, 6, 7, 8, 9, 10, 12, 14, 16]
INT_FIELDS = ["id", "toid", "friendid", "groupid"]
STR_FIELDS = ["name", "password", "msg", "groupname", "groupdesc", "time"]

fieldValues = st.fixed_dictionaries({}, optional={
    **{key: st.one_of(st.integers(-5, 2**64 - 1), jsonScalars)
       for key in INT_FIELDS},
    **{key: st.one_of(st.text(max_size=40), jsonScalars)
       for key in STR_FIELDS},
})

requestObjects = st.builds(
    lambda msgid, fields: {"msgid": msgid, **fields},
    st.integers(0, 9).flatmap(
        lambda roll: st.sampled_from(REQUEST_MSGIDS) if roll < 7
        else st.one_of(st.integers(-1, 20), jsonScalars)),
    fieldValues)
"""
JSON objects that look like requests: mostly real msgids, fields of the
right type or of a random one.
"""

jsonLines = st.one_of(
    requestObjects.map(lambda o: json.dumps(o).encode()),
    requestObjects.map(
        lambda o: json.dumps(o, ensure_ascii=False).encode(
            "utf-8", "surrogatepass")),
    jsonValues.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).map(lambda b: b'{"msgid":6,"msg":"' + b + b'"}'),
)
"""JSON client messages, including invalid UTF-8 and lone surrogates."""

anyLines = st.one_of(st.binary(max_size=200), textLines, jsonLines)


class DecodeNeverRaisesTests(SynchronousTestCase):
    """
    Any client message decodes to a request or a L{Rejected}, and a
    rejection is answered with exactly one valid line in the dialect.
    """

    def checkDialect(self, dialect: IDialect, line: bytes) -> Any:
        """
        Decode C{line}; for a rejection check the error reply's framing
        and return it as text, else return the request.
        """
        result = dialect.decode(line)
        if not isinstance(result, Rejected):
            self.assertNotIsInstance(result, Exception)
            checkRulesHold(result)
            return result
        data = dialect.encodeError(result.context, result.error)
        self.assertIsInstance(data, bytes)
        text = data.decode("utf-8")
        terminator = "\r\n" if dialect is TEXT else "\n"
        self.assertTrue(text.endswith(terminator), data)
        body = text[:-len(terminator)]
        self.assertNotIn("\n", body)
        self.assertNotIn("\r", body)
        return body

    @SETTINGS
    @given(anyLines)
    def test_text(self, line: bytes) -> None:
        """The text dialect rejects with one C{ERR <errno> ...} line."""
        body = self.checkDialect(TEXT, line)
        if isinstance(body, str):
            self.assertRegex(body, r"^ERR 1\d\d \S")

    @SETTINGS
    @given(anyLines)
    def test_json(self, line: bytes) -> None:
        """The JSON dialects reject with one JSON object line."""
        for dialect in [JSON, CLASSIC]:
            body = self.checkDialect(dialect, line)
            if isinstance(body, str):
                checkJSONError(self, line, body)

    @SETTINGS
    @given(jsonLines)
    def test_jsonShaped(self, line: bytes) -> None:
        """As L{test_json}, on messages that are mostly JSON requests."""
        body = self.checkDialect(JSON, line)
        if isinstance(body, str):
            checkJSONError(self, line, body)

    @SETTINGS
    @given(textLines)
    def test_textShaped(self, line: bytes) -> None:
        """As L{test_text}, on lines that are mostly commands."""
        body = self.checkDialect(TEXT, line)
        if isinstance(body, str):
            self.assertRegex(body, r"^ERR 1\d\d \S")


class MessageFramingTests(SynchronousTestCase):
    """
    Error and notice texts come from the service too, and may echo what a
    client sent: whatever they hold, each is still one line.
    """

    @SETTINGS
    @given(st.text(max_size=100))
    def test_textOneLine(self, message: str) -> None:
        """C{ERR} and C{NOTICE} lines hold no stray CR or LF."""
        for data in [TEXT.encodeError(None, NotFound(message)),
                     TEXT.encodeNotice(message)]:
            self.assertTrue(data.endswith(b"\r\n"))
            self.assertEqual(data.count(b"\n"), 1)
            self.assertEqual(data.count(b"\r"), 1)

    @SETTINGS
    @given(st.text(max_size=100))
    def test_jsonOneLine(self, message: str) -> None:
        """ACK 11 and NOTICE objects carry the text on one line."""
        for data in [JSON.encodeError(Chat(2, "x"), NotFound(message)),
                     JSON.encodeNotice(message)]:
            self.assertTrue(data.endswith(b"\n"))
            self.assertEqual(data.count(b"\n"), 1)
            obj = json.loads(data)
            self.assertEqual(obj.get("errmsg", obj.get("msg")), message)


def checkJSONError(case: SynchronousTestCase, line: bytes, body: str) -> None:
    """
    A JSON error reply: an object with msgid 11 (with C{req} the request's
    integer msgid, else null), or a classic LOGIN_MSG_ACK / REG_MSG_ACK,
    always with a non-zero errno and an errmsg.
    """
    reply = json.loads(body)
    case.assertIs(type(reply), dict)
    case.assertIn(reply["msgid"], (11, 2, 5))
    case.assertIs(type(reply["errno"]), int)
    case.assertNotEqual(reply["errno"], 0)
    case.assertIsInstance(reply["errmsg"], str)
    if reply["msgid"] != 11:
        return
    try:
        request = json.loads(line)
    except ValueError:
        request = None
    msgid = request.get("msgid") if type(request) is dict else None
    case.assertEqual(reply["req"], msgid if type(msgid) is int else None)


def checkRulesHold(request: Any) -> None:
    """
    Whatever a dialect accepts obeys PROTOCOL.md 3.3 (each check raises
    if not), so the service never sees a text that breaks a line.
    """
    if isinstance(request, (Chat, GroupChat)):
        rules.checkText(request.text)
    elif isinstance(request, CreateGroup):
        rules.checkGroupName(request.name)
        rules.checkDescription(request.description)
    elif isinstance(request, Register):
        rules.checkUserName(request.name)
        rules.checkPassword(request.password)
    for name in ["to", "friend", "groupId", "claimedId", "user"]:
        value = getattr(request, name, None)
        if type(value) is int:
            assert value <= rules.MAX_ID + 1, request


# Events ------------------------------------------------------------------

LETTERS = ("Lu", "Ll", "Lt", "Lm", "Lo")


def _isValidName(name: str) -> bool:
    """Letters that render as nothing (Hangul fillers) are refused."""
    try:
        return rules.checkUserName(name) == name
    except InvalidValue:
        return False


userNames = st.builds(
    lambda first, rest: first + rest,
    st.characters(whitelist_categories=LETTERS),
    st.text(st.one_of(st.characters(whitelist_categories=LETTERS),
                      st.sampled_from("0123456789_.-")), max_size=31),
).filter(_isValidName)
chatTexts = st.text(
    st.one_of(st.characters(blacklist_categories=("Cc", "Cs")),
              st.just("\t")),
    min_size=1, max_size=300)
ids = st.integers(1, rules.MAX_ID)
times = st.datetimes().map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S"))

events = st.builds(
    lambda sender, name, text, time, target, group: ChatEvent(
        sender, name, text, time,
        toId=None if group else target, groupId=target if group else None),
    ids, userNames, chatTexts, times, ids, st.booleans())


class EventRoundTripTests(SynchronousTestCase):
    """Valid events survive the JSON form and render as one text line."""

    @SETTINGS
    @given(chatTexts)
    def test_generatedTextsAreValid(self, text: str) -> None:
        """The generator only makes texts that the rules accept."""
        self.assertEqual(rules.checkText(text), text)

    @SETTINGS
    @given(events)
    def test_jsonRoundTrip(self, event: ChatEvent) -> None:
        """
        L{ChatEvent.fromJSON} of L{ChatEvent.toJSON} gives back the same
        fields and bytes; the JSON holds no line break and is the classic
        object.
        """
        data = event.toJSON()
        self.assertNotIn(b"\n", data)
        self.assertNotIn(b"\r", data)
        again = ChatEvent.fromJSON(data)
        self.assertEqual(
            (again.senderId, again.senderName, again.text, again.time,
             again.toId, again.groupId),
            (event.senderId, event.senderName, event.text, event.time,
             event.toId, event.groupId))
        rebuilt = ChatEvent(again.senderId, again.senderName, again.text,
                            again.time, toId=again.toId,
                            groupId=again.groupId)
        self.assertEqual(rebuilt.toJSON(), data)
        self.assertEqual(JSON.encodeEvent(event), data + b"\n")
        obj = json.loads(data)
        self.assertEqual(obj["msgid"], 6 if event.groupId is None else 10)

    @SETTINGS
    @given(events)
    def test_textLine(self, event: ChatEvent) -> None:
        """
        The text line is one line of UTF-8 ending in CRLF, with the text
        verbatim after C{<name>: }.
        """
        data = TEXT.encodeEvent(event)
        self.assertTrue(data.endswith(b"\r\n"))
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(data.count(b"\r"), 1)
        line = data.decode("utf-8")[:-2]
        keyword = "MSG" if event.groupId is None else "GROUPMSG"
        self.assertTrue(line.startswith(keyword + " " + event.time + " "))
        self.assertTrue(line.endswith(f" {event.senderName}: {event.text}"))
