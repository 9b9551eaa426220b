"""
Tests for L{chat.wire.jsondialect}: the JSON dialect, wire-compatible with the
classic C++ cluster chat server (PROTOCOL.md 3).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chat.core import rules
from chat.wire.dialect import Rejected
from chat.core.errors import (
    AccountInUse, AlreadyLoggedIn, BadRequest, ChatError, Conflict,
    Forbidden, InvalidValue, LineTooLong, NameTaken, NotFound, NotLoggedIn,
    RateLimited, Unavailable, WrongCredentials,
)
from chat.wire.jsondialect import CLASSIC, JSON, JSONDialect
from chat.core.messages import (
    AddFriend, AddGroup, Chat, ChatEvent, ChatSent, CreateGroup, Friend,
    FriendAdded, FriendList, Friends, Group, GroupChat, GroupChatSent,
    GroupCreated, GroupJoined, GroupList, Groups, LoggedIn, LoggedOut, Login,
    Logout, Member, Ping, Pong, Register, Registered, Request,
)

INT_FIELD_WRONG_TYPES: list[Any] = [True, False, 2.0, "2", None, [2], {"a": 2}]
"""JSON values an int field must refuse: booleans, floats, strings, ..."""

STR_FIELD_WRONG_TYPES: list[Any] = [1, 1.5, True, None, ["x"], {"x": 1}]
"""JSON values a string field must refuse."""


MSGIDS: dict[type, int] = {
    Login: 1, Logout: 3, Register: 4, Chat: 6, AddFriend: 7,
    CreateGroup: 8, AddGroup: 9, GroupChat: 10, Ping: 12, FriendList: 14,
    GroupList: 16,
}
"""The msgid of each request type, written out from PROTOCOL.md 3.1."""


def line(obj: Any) -> bytes:
    """A client message: C{obj} as compact JSON, terminator removed."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def parseLine(data: bytes) -> dict[str, Any]:
    """
    One server line: must be a single JSON object ending in exactly one
    C{\\n}.
    """
    assert data.endswith(b"\n"), data
    assert data.count(b"\n") == 1, data
    obj = json.loads(data.decode("utf-8"))
    assert type(obj) is dict, data
    return obj


class DecodeRequestTests(SynchronousTestCase):
    """
    Every request msgid of PROTOCOL.md 3.1 decodes to its request value
    when its fields are right.
    """

    def test_loginById(self) -> None:
        """LOGIN_MSG (1) with an integer C{id}."""
        self.assertEqual(
            JSON.decode(line({"msgid": 1, "id": 22, "password": "pa"})),
            Login(22, "pa"))

    def test_loginByName(self) -> None:
        """The extension: LOGIN_MSG with a C{name} instead of an C{id}."""
        self.assertEqual(
            JSON.decode(line({"msgid": 1, "name": "张三", "password": "pa"})),
            Login("张三", "pa"))

    def test_loginIdWins(self) -> None:
        """When both C{id} and C{name} are given, C{id} wins."""
        self.assertEqual(
            JSON.decode(line({"msgid": 1, "name": "alice", "id": 3,
                              "password": "pa"})),
            Login(3, "pa"))

    def test_loginNameIsNotAnId(self) -> None:
        """
        An id-shaped C{name} stays a name: only C{id} names an id in JSON.
        """
        self.assertEqual(
            JSON.decode(line({"msgid": 1, "name": "22", "password": "p"})),
            Login("22", "p"))

    def test_logout(self) -> None:
        """LOGINOUT_MSG (3), with and without the optional C{id}."""
        self.assertEqual(JSON.decode(line({"msgid": 3})), Logout(None))
        self.assertEqual(JSON.decode(line({"msgid": 3, "id": 23})),
                         Logout(23))

    def test_register(self) -> None:
        """REG_MSG (4); an C{id} in it is ignored."""
        self.assertEqual(
            JSON.decode(line({"msgid": 4, "name": "alice1",
                              "password": "pa"})),
            Register("alice1", "pa"))
        self.assertEqual(
            JSON.decode(line({"msgid": 4, "name": "alice1", "password": "pa",
                              "id": "whatever"})),
            Register("alice1", "pa"))

    def test_oneChat(self) -> None:
        """
        ONE_CHAT_MSG (6) exactly as the classic client sends it: its C{id}
        becomes the claimed id, its C{name} and C{time} are ignored.
        """
        self.assertEqual(
            JSON.decode(b'{"msgid":6,"id":22,"name":"alice1","toid":23,'
                        b'"msg":"hello bob","time":"2024-01-01 12:00:00"}'),
            Chat(23, "hello bob", 22))

    def test_oneChatWithoutId(self) -> None:
        """The C{id} of ONE_CHAT_MSG is optional."""
        self.assertEqual(
            JSON.decode(line({"msgid": 6, "toid": 2, "msg": "hi\tthere"})),
            Chat(2, "hi\tthere", None))

    def test_clientNameAndTimeIgnored(self) -> None:
        """
        The server ignores a client's C{name} and C{time}, whatever their
        type.
        """
        self.assertEqual(
            JSON.decode(line({"msgid": 6, "toid": 2, "msg": "x",
                              "name": 5, "time": None})),
            Chat(2, "x", None))

    def test_addFriend(self) -> None:
        """ADD_FRIEND_MSG (7), with and without the classic C{id}."""
        self.assertEqual(JSON.decode(line({"msgid": 7, "friendid": 5})),
                         AddFriend(5, None))
        self.assertEqual(
            JSON.decode(line({"msgid": 7, "id": 1, "friendid": 5})),
            AddFriend(5, 1))

    def test_createGroup(self) -> None:
        """CREATE_GROUP_MSG (8); C{groupdesc} is optional, default empty."""
        self.assertEqual(
            JSON.decode(line({"msgid": 8, "id": 1, "groupname": "dev",
                              "groupdesc": "the dev: team"})),
            CreateGroup("dev", "the dev: team", 1))
        self.assertEqual(
            JSON.decode(line({"msgid": 8, "groupname": "dev"})),
            CreateGroup("dev", "", None))

    def test_addGroup(self) -> None:
        """ADD_GROUP_MSG (9)."""
        self.assertEqual(
            JSON.decode(line({"msgid": 9, "id": 1, "groupid": 3})),
            AddGroup(3, 1))

    def test_groupChat(self) -> None:
        """GROUP_CHAT_MSG (10) exactly as the classic client sends it."""
        self.assertEqual(
            JSON.decode(b'{"msgid":10,"id":25,"name":"gb","groupid":2,'
                        b'"msg":"hi all","time":"2024-01-01 12:00:02"}'),
            GroupChat(2, "hi all", 25))

    def test_ping(self) -> None:
        """PING (12); an C{id} in it is ignored, even a mistyped one."""
        self.assertEqual(JSON.decode(line({"msgid": 12})), Ping())
        self.assertEqual(JSON.decode(line({"msgid": 12, "id": "x"})), Ping())

    def test_lists(self) -> None:
        """FRIEND_LIST (14) and GROUP_LIST (16) take no fields."""
        self.assertEqual(JSON.decode(line({"msgid": 14})), FriendList())
        self.assertEqual(JSON.decode(line({"msgid": 16})), GroupList())

    def test_listsWithId(self) -> None:
        """
        FRIEND_LIST and GROUP_LIST carry their C{id}, which the service
        checks against the logged-in user (103).
        """
        self.assertEqual(JSON.decode(line({"msgid": 14, "id": 1})),
                         FriendList(1))
        self.assertEqual(JSON.decode(line({"msgid": 16, "id": 1})),
                         GroupList(1))

    def test_extraFieldsIgnored(self) -> None:
        """Unknown extra fields are ignored."""
        self.assertEqual(
            JSON.decode(line({"msgid": 9, "groupid": 3, "zzz": [1, {}]})),
            AddGroup(3, None))

    def test_whitespaceAroundObject(self) -> None:
        """JSON whitespace around and inside the object is allowed."""
        self.assertEqual(JSON.decode(b'  { "msgid" : 12 }  '), Ping())

    def test_hugeIdsNameNoRow(self) -> None:
        """
        An integer id larger than any BIGINT (JSON allows up to 2**64 - 1
        here) comes back as C{MAX_ID + 1}, as in the text dialect, which
        the service reports as not found.
        """
        big = 2**64 - 1
        self.assertEqual(
            JSON.decode(line({"msgid": 6, "toid": big, "msg": "x"})),
            Chat(rules.MAX_ID + 1, "x", None))
        self.assertEqual(
            JSON.decode(line({"msgid": 1, "id": big, "password": "p"})),
            Login(rules.MAX_ID + 1, "p"))
        self.assertEqual(
            JSON.decode(line({"msgid": 9, "groupid": rules.MAX_ID})),
            AddGroup(rules.MAX_ID, None))


class RejectTests(SynchronousTestCase):
    """
    What the decoder refuses, and the ACK 11 errno 100 that answers it.
    """

    def assertRejected(self, data: bytes, req: Any) -> dict[str, Any]:
        """
        C{data} is rejected as a bad request, answered with ACK 11 whose
        C{req} is C{req}; return the ACK.
        """
        result = JSON.decode(data)
        self.assertIsInstance(result, Rejected)
        self.assertIsInstance(result.error, BadRequest)
        self.assertEqual(result.error.errno, 100)
        ack = parseLine(JSON.encodeError(result.context, result.error))
        self.assertEqual(ack["msgid"], 11)
        self.assertIs(type(ack["req"]), type(req))
        self.assertEqual(ack["req"], req)
        self.assertEqual(ack["errno"], 100)
        self.assertIsInstance(ack["errmsg"], str)
        self.assertTrue(ack["errmsg"])
        return ack

    def test_notJSON(self) -> None:
        """Text that is not JSON, or truncated JSON, is error 100, req null."""
        for data in [b"login alice pw", b"{", b'{"msgid":1', b"{'msgid':1}",
                     b'{"msgid":1,}', b"{msgid:1}", b"{} {}", b"NaN"]:
            self.assertRejected(data, None)

    def test_notAnObject(self) -> None:
        """A JSON value other than an object is error 100, req null."""
        for data in [b"[]", b"[1,2]", b'"msgid"', b"12", b"null", b"true"]:
            self.assertRejected(data, None)

    def test_invalidUTF8(self) -> None:
        """Invalid UTF-8 is error 100 with req null, never a crash."""
        for data in [b'{"msgid":6,"toid":2,"msg":"\xff"}',
                     b'{"msgid":12}\xc3',
                     b'{"msgid":6,"toid":2,"msg":"\xed\xa0\x80"}',
                     b'{"msgid":6,"toid":2,"msg":"\xc0\xaf"}']:
            self.assertRejected(data, None)

    def test_loneSurrogateEscape(self) -> None:
        """
        A C{\\ud800} escape names no character and could not be encoded
        back into UTF-8: it is refused.
        """
        self.assertRejected(b'{"msgid":6,"toid":2,"msg":"a\\ud800"}', None)

    def test_msgidNotAnInteger(self) -> None:
        """
        A C{msgid} that is missing or not a JSON integer gets ACK 11 with
        C{req} null.
        """
        for msgid in [True, False, 1.0, 6.0, "6", None, [6]]:
            self.assertRejected(line({"msgid": msgid, "toid": 2,
                                      "msg": "x"}), None)
        self.assertRejected(line({"toid": 2, "msg": "x"}), None)
        self.assertRejected(b"{}", None)

    def test_unknownMsgid(self) -> None:
        """
        An integer msgid that is no request (including the server's own
        reply msgids) gets ACK 11 with that msgid as C{req}.
        """
        for msgid in [0, -1, 2, 5, 11, 13, 15, 17, 18, 19, 1000, 2**63]:
            self.assertRejected(line({"msgid": msgid}), msgid)

    def test_intFieldsStrict(self) -> None:
        """
        Every int field takes a JSON integer only: C{true}, C{2.0}, C{"2"}
        and null are error 100 with the request's msgid as C{req}.
        """
        valid: dict[int, dict[str, Any]] = {
            1: {"id": 2, "password": "p"},
            6: {"toid": 2, "msg": "x", "id": 1},
            7: {"friendid": 2, "id": 1},
            9: {"groupid": 2, "id": 1},
            10: {"groupid": 2, "msg": "x", "id": 1},
            3: {"id": 1},
            8: {"groupname": "g", "id": 1},
            14: {"id": 1},
            16: {"id": 1},
        }
        for msgid, fields in valid.items():
            # The valid form decodes, so each failure below is the type's.
            self.assertNotIsInstance(
                JSON.decode(line({"msgid": msgid, **fields})), Rejected)
            for key, value in fields.items():
                if type(value) is not int:
                    continue
                for wrong in INT_FIELD_WRONG_TYPES:
                    self.assertRejected(
                        line({"msgid": msgid, **fields, key: wrong}), msgid)

    def test_strFieldsStrict(self) -> None:
        """Every string field takes a JSON string only."""
        valid: dict[int, dict[str, Any]] = {
            1: {"id": 2, "password": "p"},
            4: {"name": "alice", "password": "p"},
            6: {"toid": 2, "msg": "x"},
            8: {"groupname": "g", "groupdesc": "d"},
            10: {"groupid": 2, "msg": "x"},
        }
        for msgid, fields in valid.items():
            self.assertNotIsInstance(
                JSON.decode(line({"msgid": msgid, **fields})), Rejected)
            for key, value in fields.items():
                if type(value) is not str:
                    continue
                for wrong in STR_FIELD_WRONG_TYPES:
                    self.assertRejected(
                        line({"msgid": msgid, **fields, key: wrong}), msgid)

    def test_loginNameStrict(self) -> None:
        """The extension's C{name} in LOGIN_MSG must be a string."""
        self.assertRejected(line({"msgid": 1, "name": 22, "password": "p"}),
                            1)

    def test_loginMistypedIdWinsOverName(self) -> None:
        """
        C{id} wins over C{name} also when it is mistyped: the request is
        malformed rather than a login by name.
        """
        self.assertRejected(
            line({"msgid": 1, "id": "22", "name": "alice", "password": "p"}),
            1)

    def test_missingFields(self) -> None:
        """Each required field, left out, is error 100 with req the msgid."""
        required: dict[int, dict[str, Any]] = {
            1: {"id": 2, "password": "p"},
            4: {"name": "alice", "password": "p"},
            6: {"toid": 2, "msg": "x"},
            7: {"friendid": 2},
            8: {"groupname": "g"},
            9: {"groupid": 2},
            10: {"groupid": 2, "msg": "x"},
        }
        for msgid, fields in required.items():
            for key in fields:
                rest = {k: v for k, v in fields.items() if k != key}
                self.assertRejected(line({"msgid": msgid, **rest}), msgid)
        self.assertRejected(line({"msgid": 1, "password": "p"}), 1)

    def test_invalidValuesOutsideRegister(self) -> None:
        """
        A text or group name outside the rules is ACK 11 errno 100 with
        the msgid as C{req}.
        """
        for obj in [{"msgid": 6, "toid": 2, "msg": ""},
                    {"msgid": 6, "toid": 2, "msg": "a\nb"},
                    {"msgid": 6, "toid": 2, "msg": "x" * 4001},
                    {"msgid": 10, "groupid": 2, "msg": "\x1b[2J"},
                    {"msgid": 8, "groupname": "a b"},
                    {"msgid": 8, "groupname": "a:b"},
                    {"msgid": 8, "groupname": "g", "groupdesc": "a\rb"},
                    {"msgid": 8, "groupname": "g", "groupdesc": "x" * 201}]:
            self.assertRejected(line(obj), obj["msgid"])

    def test_registerMissingOrMistyped(self) -> None:
        """
        REG_MSG with a missing or mistyped field is ACK 11 errno 100, not
        REG_MSG_ACK.
        """
        self.assertRejected(line({"msgid": 4, "password": "p"}), 4)
        self.assertRejected(line({"msgid": 4, "name": "alice"}), 4)
        self.assertRejected(line({"msgid": 4, "name": 5, "password": "p"}),
                            4)

    def test_registerInvalidValue(self) -> None:
        """
        A well-formed REG_MSG whose name or password breaks the rules is
        answered by REG_MSG_ACK errno 1 with an C{errmsg}.
        """
        for name, password in [("1alice", "p"), ("a" * 33, "p"),
                               ("a b", "p"), ("", "p"), ("alice", "a b"),
                               ("alice", ""), ("alice", "x" * 129)]:
            result = JSON.decode(line({"msgid": 4, "name": name,
                                       "password": password}))
            self.assertIsInstance(result, Rejected)
            self.assertIsInstance(result.error, InvalidValue)
            ack = parseLine(JSON.encodeError(result.context, result.error))
            self.assertEqual(set(ack), {"msgid", "errno", "errmsg"})
            self.assertEqual((ack["msgid"], ack["errno"]), (5, 1))
            self.assertTrue(ack["errmsg"])


class EncodeErrorTests(SynchronousTestCase):
    """
    L{JSONDialect.encodeError}: the classic login and register acks, and
    ACK 11 for everything else.
    """

    def test_wrongCredentials(self) -> None:
        """Exactly the classic server's failure ack."""
        self.assertEqual(
            parseLine(JSON.encodeError(Login(1, "x"),
                                       WrongCredentials("no"))),
            {"msgid": 2, "errno": 1, "errmsg": "id or password is invalid!"})

    def test_accountInUse(self) -> None:
        """Exactly the classic server's ack for an account live elsewhere."""
        self.assertEqual(
            parseLine(JSON.encodeError(Login("bob", "x"),
                                       AccountInUse("busy"))),
            {"msgid": 2, "errno": 2,
             "errmsg": "this account is using, input another!"})

    def test_connectionAlreadyLoggedIn(self) -> None:
        """A second login on one connection: errno 2, its own message."""
        self.assertEqual(
            parseLine(JSON.encodeError(Login(1, "x"),
                                       AlreadyLoggedIn("again"))),
            {"msgid": 2, "errno": 2,
             "errmsg": "this connection is already logged in"})

    def test_loginUnavailable(self) -> None:
        """A database outage during login is LOGIN_MSG_ACK errno 107."""
        ack = parseLine(JSON.encodeError(Login(1, "x"),
                                         Unavailable("db down")))
        self.assertEqual((ack["msgid"], ack["errno"], ack["errmsg"]),
                         (2, 107, "db down"))

    def test_loginByContextInt(self) -> None:
        """
        The classic acks also come out when the context is the bare msgid
        (a L{Rejected}'s context) rather than the request.
        """
        self.assertEqual(
            parseLine(JSON.encodeError(1, WrongCredentials("no")))["msgid"],
            2)

    def test_loginMalformed(self) -> None:
        """A malformed LOGIN_MSG is ACK 11 errno 100, not LOGIN_MSG_ACK."""
        ack = parseLine(JSON.encodeError(1, BadRequest("missing")))
        self.assertEqual((ack["msgid"], ack["req"], ack["errno"]),
                         (11, 1, 100))

    def test_registerFailures(self) -> None:
        """
        A taken name is REG_MSG_ACK errno 1; a database outage is
        REG_MSG_ACK errno 107; both carry an C{errmsg}.
        """
        self.assertEqual(
            parseLine(JSON.encodeError(Register("alice", "p"),
                                       NameTaken("taken"))),
            {"msgid": 5, "errno": 1, "errmsg": "taken"})
        self.assertEqual(
            parseLine(JSON.encodeError(Register("alice", "p"),
                                       Unavailable("down"))),
            {"msgid": 5, "errno": 107, "errmsg": "down"})

    def test_ackForOtherRequests(self) -> None:
        """
        Failures of other requests are ACK 11 with the request's msgid,
        the error's errno and its message.
        """
        cases: list[tuple[Request, ChatError, int, int]] = [
            (Chat(2, "x"), NotLoggedIn("log in first"), 6, 102),
            (Chat(2, "x", 9), Forbidden("not you"), 6, 103),
            (AddFriend(2), NotFound("no such user"), 7, 104),
            (AddFriend(2), Conflict("already"), 7, 105),
            (CreateGroup("g"), NameTaken("taken"), 8, 105),
            (AddGroup(3), NotFound("no group"), 9, 104),
            (GroupChat(3, "x"), Forbidden("not a member"), 10, 103),
            (GroupChat(3, "x"), RateLimited("slow down"), 10, 106),
            (Logout(), Unavailable("down"), 3, 107),
            (FriendList(), NotLoggedIn("log in first"), 14, 102),
            (GroupList(), Unavailable("down"), 16, 107),
        ]
        for request, error, req, errno in cases:
            self.assertEqual(
                parseLine(JSON.encodeError(request, error)),
                {"msgid": 11, "req": req, "errno": errno,
                 "errmsg": error.message})

    def test_lineTooLong(self) -> None:
        """An overlong message has no request: ACK 11 errno 101, req null."""
        self.assertEqual(
            parseLine(JSON.encodeError(None, LineTooLong("too long"))),
            {"msgid": 11, "req": None, "errno": 101, "errmsg": "too long"})

    def test_classicSameErrors(self) -> None:
        """Classic mode answers failures exactly as the plain dialect."""
        for context, error in [(Chat(2, "x"), NotFound("no")),
                               (Login(1, "x"), WrongCredentials("no")),
                               (None, BadRequest("bad")),
                               (Logout(), NotLoggedIn("no"))]:
            self.assertEqual(CLASSIC.encodeError(context, error),
                             JSON.encodeError(context, error))


def event(text: str = "hi", group: bool = False) -> ChatEvent:
    """A chat event from user 22, alice1."""
    if group:
        return ChatEvent(22, "alice1", text, "2024-01-01 12:00:02",
                         groupId=2)
    return ChatEvent(22, "alice1", text, "2024-01-01 12:00:00", toId=23)


ALICE = Friend(22, "alice1", True)
BOB = Friend(23, "bob1", False)
DEV = Group(2, "dev", "the team", (Member(22, "alice1", True, "creator"),
                                   Member(23, "bob1", False, "normal")))


class EncodeReplyTests(SynchronousTestCase):
    """L{JSONDialect.encodeReply}: classic acks and ACK 11 successes."""

    def test_loginAck(self) -> None:
        """
        The login ack carries id and name, and its three arrays hold
        JSON-encoded strings that the classic client decodes a second
        time; a group's users are strings again.
        """
        reply = LoggedIn(23, "bob1", (ALICE,), (DEV,),
                         (event("are you there?"), event("all", True)))
        ack = parseLine(JSON.encodeReply(Login(23, "p"), reply))
        self.assertEqual(
            set(ack), {"msgid", "errno", "id", "name", "friends", "groups",
                       "offlinemsg"})
        self.assertEqual((ack["msgid"], ack["errno"], ack["id"], ack["name"]),
                         (2, 0, 23, "bob1"))
        for key in ["friends", "groups", "offlinemsg"]:
            for element in ack[key]:
                self.assertIsInstance(element, str)
        self.assertEqual([json.loads(f) for f in ack["friends"]],
                         [{"id": 22, "name": "alice1", "state": "online"}])
        [group] = [json.loads(g) for g in ack["groups"]]
        self.assertEqual(set(group), {"id", "groupname", "groupdesc",
                                      "users"})
        self.assertEqual((group["id"], group["groupname"],
                          group["groupdesc"]), (2, "dev", "the team"))
        for user in group["users"]:
            self.assertIsInstance(user, str)
        self.assertEqual(
            [json.loads(u) for u in group["users"]],
            [{"id": 22, "name": "alice1", "state": "online",
              "role": "creator"},
             {"id": 23, "name": "bob1", "state": "offline",
              "role": "normal"}])
        self.assertEqual(
            [json.loads(m) for m in ack["offlinemsg"]],
            [{"msgid": 6, "id": 22, "name": "alice1", "toid": 23,
              "msg": "are you there?", "time": "2024-01-01 12:00:00"},
             {"msgid": 10, "id": 22, "name": "alice1", "groupid": 2,
              "msg": "all", "time": "2024-01-01 12:00:02"}])

    def test_loginAckOfflineExactlyAsPushed(self) -> None:
        """
        Each offline message is the event JSON exactly as it would have
        been pushed, oldest first.
        """
        events = (event("first"), event("second", True), event("third"))
        ack = parseLine(JSON.encodeReply(
            Login(23, "p"), LoggedIn(23, "bob1", (), (), events)))
        self.assertEqual(
            [m.encode("utf-8") + b"\n" for m in ack["offlinemsg"]],
            [JSON.encodeEvent(e) for e in events])

    def test_loginAckEmptyArraysPresent(self) -> None:
        """The three arrays are always present, even when empty."""
        for dialect in [JSON, CLASSIC]:
            ack = parseLine(dialect.encodeReply(
                Login(1, "p"), LoggedIn(1, "a", (), (), ())))
            self.assertEqual(ack, {"msgid": 2, "errno": 0, "id": 1,
                                   "name": "a", "friends": [], "groups": [],
                                   "offlinemsg": []})

    def test_registerAck(self) -> None:
        """REG_MSG_ACK success is C{{"msgid":5,"errno":0,"id":7}}."""
        for dialect in [JSON, CLASSIC]:
            self.assertEqual(
                parseLine(dialect.encodeReply(Register("alice", "p"),
                                              Registered(7, "alice"))),
                {"msgid": 5, "errno": 0, "id": 7})

    def test_successAcks(self) -> None:
        """
        ACK 11 for each request the classic server answers with silence,
        with the extra fields of PROTOCOL.md 3.2.
        """
        cases: list[tuple[Request, Any, dict[str, Any]]] = [
            (Logout(), LoggedOut(), {}),
            (Chat(2, "x"), ChatSent(True), {"delivery": "online"}),
            (Chat(2, "x"), ChatSent(False), {"delivery": "offline"}),
            (AddFriend(5), FriendAdded(5, "bob"), {"friendid": 5}),
            (CreateGroup("g"), GroupCreated(8, "g"), {"groupid": 8}),
            (AddGroup(3), GroupJoined(3), {"groupid": 3}),
            (GroupChat(3, "x"), GroupChatSent(2, 5),
             {"online": 2, "offline": 5}),
        ]
        for request, reply, extra in cases:
            self.assertEqual(
                parseLine(JSON.encodeReply(request, reply)),
                {"msgid": 11, "req": MSGIDS[type(request)], "errno": 0,
                 **extra})

    def test_classicSuppressesSuccessAcks(self) -> None:
        """
        Classic mode sends no ACK 11 for a success: the classic client
        would read two objects in one C{recv()} and abort.
        """
        for request, reply in [
                (Logout(), LoggedOut()), (Chat(2, "x"), ChatSent(True)),
                (AddFriend(5), FriendAdded(5, "b")),
                (CreateGroup("g"), GroupCreated(8, "g")),
                (AddGroup(3), GroupJoined(3)),
                (GroupChat(3, "x"), GroupChatSent(1, 1))]:
            self.assertIsNone(CLASSIC.encodeReply(request, reply))
            self.assertIsNotNone(JSON.encodeReply(request, reply))

    def test_classicStillAnswersExtensions(self) -> None:
        """
        Requests only this server knows (PING, FRIEND_LIST, GROUP_LIST)
        are answered in classic mode too, identically.
        """
        for request, reply in [(Ping(), Pong()),
                               (FriendList(), Friends((ALICE,))),
                               (GroupList(), Groups((DEV,)))]:
            data = CLASSIC.encodeReply(request, reply)
            self.assertIsNotNone(data)
            self.assertEqual(data, JSON.encodeReply(request, reply))

    def test_classicFlag(self) -> None:
        """The two shared instances differ only in their classic flag."""
        self.assertFalse(JSON.classic)
        self.assertTrue(CLASSIC.classic)
        self.assertIsInstance(CLASSIC, JSONDialect)

    def test_pong(self) -> None:
        """PONG is C{{"msgid":13}} and nothing else."""
        self.assertEqual(parseLine(JSON.encodeReply(Ping(), Pong())),
                         {"msgid": 13})

    def test_friendList(self) -> None:
        """FRIEND_LIST_ACK (15) holds plain objects, not strings."""
        self.assertEqual(
            parseLine(JSON.encodeReply(FriendList(),
                                       Friends((ALICE, BOB)))),
            {"msgid": 15, "friends": [
                {"id": 22, "name": "alice1", "state": "online"},
                {"id": 23, "name": "bob1", "state": "offline"}]})
        self.assertEqual(
            parseLine(JSON.encodeReply(FriendList(), Friends(()))),
            {"msgid": 15, "friends": []})

    def test_groupList(self) -> None:
        """GROUP_LIST_ACK (17) holds plain objects, users included."""
        self.assertEqual(
            parseLine(JSON.encodeReply(GroupList(), Groups((DEV,)))),
            {"msgid": 17, "groups": [{
                "id": 2, "groupname": "dev", "groupdesc": "the team",
                "users": [
                    {"id": 22, "name": "alice1", "state": "online",
                     "role": "creator"},
                    {"id": 23, "name": "bob1", "state": "offline",
                     "role": "normal"}]}]})


class EventTests(SynchronousTestCase):
    """Pushed events and notices in JSON."""

    def test_oneChatEvent(self) -> None:
        """A one-to-one message is msgid 6 with exactly the classic keys."""
        self.assertEqual(
            parseLine(JSON.encodeEvent(event("hello bob"))),
            {"msgid": 6, "id": 22, "name": "alice1", "toid": 23,
             "msg": "hello bob", "time": "2024-01-01 12:00:00"})

    def test_groupChatEvent(self) -> None:
        """A group message is msgid 10 with exactly the classic keys."""
        self.assertEqual(
            parseLine(JSON.encodeEvent(event("hi all", True))),
            {"msgid": 10, "id": 22, "name": "alice1", "groupid": 2,
             "msg": "hi all", "time": "2024-01-01 12:00:02"})

    def test_eventTabAndUnicode(self) -> None:
        """
        A tab and non-ASCII text survive, escaped or raw, on one line.
        """
        self.assertEqual(
            parseLine(JSON.encodeEvent(event("a\tb 张三 😀")))["msg"],
            "a\tb 张三 😀")

    def test_classicEventsSame(self) -> None:
        """Classic mode pushes the same event bytes."""
        self.assertEqual(CLASSIC.encodeEvent(event()),
                         JSON.encodeEvent(event()))

    def test_notice(self) -> None:
        """A server notice is msgid 18 with the text in C{msg}."""
        self.assertEqual(parseLine(JSON.encodeNotice("server shutting down")),
                         {"msgid": 18, "msg": "server shutting down"})
