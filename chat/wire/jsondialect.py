"""
The JSON dialect, wire-compatible with the classic C++ cluster chat server.

Requests are JSON objects keyed by C{msgid} (PROTOCOL.md 3.1); replies are
the classic acks, plus ACK 11 for what the classic server answers with
silence.  A classic client (one that ends its first request with NUL) gets
no ACK 11 for a success, since it reads every C{recv()} as one object.
This module owns the JSON words; it never does I/O, and how a classic
connection is paced is the protocol's.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import attrs
import orjson
from zope.interface import implementer

from chat.core import rules
from chat.wire.dialect import Decoded, IDialect, Rejected
from chat.core.errors import (
    AccountInUse, AlreadyLoggedIn, BadRequest, ChatError, InvalidValue,
    NameTaken, RateLimited, Unavailable, WrongCredentials,
)
from chat.core.messages import (
    AddFriend, AddGroup, Chat, ChatEvent, ChatSent, CreateGroup, Friend,
    FriendAdded, FriendList, Friends, Group, GroupChat, GroupChatSent,
    GroupCreated, GroupJoined, GroupList, Groups, LoggedIn, LoggedOut, Login,
    Logout, Member, Ping, Pong, Register, Registered, Reply, Request,
)

LOGIN_MSG = 1
LOGIN_MSG_ACK = 2
LOGINOUT_MSG = 3
REG_MSG = 4
REG_MSG_ACK = 5
ONE_CHAT_MSG = 6
ADD_FRIEND_MSG = 7
CREATE_GROUP_MSG = 8
ADD_GROUP_MSG = 9
GROUP_CHAT_MSG = 10
ACK = 11
PING = 12
PONG = 13
FRIEND_LIST = 14
FRIEND_LIST_ACK = 15
GROUP_LIST = 16
GROUP_LIST_ACK = 17
NOTICE = 18

CLASSIC_READ = 1024
"""The classic client's receive buffer: one recv() of at most this many
bytes is parsed as one object."""

WRONG_CREDENTIALS = "id or password is invalid!"
ACCOUNT_IN_USE = "this account is using, input another!"
CONNECTION_LOGGED_IN = "this connection is already logged in"

_MISSING = object()


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    """
    A required field of exactly C{kind} (a bool is not an int).

    Every int field names a user or a group, so an integer too large for
    any row comes back as C{MAX_ID + 1}, as L{rules.parseId} does in the
    text dialect (the service reports it as not found).
    """
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        raise BadRequest(f"missing field {key!r}")
    if type(value) is not kind:
        if kind is int and type(value) is float and abs(value) >= 2.0**63:
            raise _WideInteger(key)
        raise BadRequest(f"field {key!r} must be {_KIND_NAMES[kind]}")
    if type(value) is int and value > rules.MAX_ID:
        return rules.MAX_ID + 1
    return value


def _optional(obj: dict[str, Any], key: str, kind: type) -> Any:
    if key not in obj:
        return None
    return _field(obj, key, kind)


_KIND_NAMES = {int: "an integer", str: "a string"}


class _WideInteger(Exception):
    """
    An int field came out of orjson as a float of 2**63 or more: orjson
    reads an integer beyond 64 bits as a float, so it may have been one.
    """


def _login(obj: dict[str, Any]) -> Request:
    password = _field(obj, "password", str)
    if "id" in obj:
        return Login(_field(obj, "id", int), password)
    if "name" in obj:
        return Login(_field(obj, "name", str), password)
    raise BadRequest("missing field 'id'")


def _register(obj: dict[str, Any]) -> Request:
    name = _field(obj, "name", str)
    password = _field(obj, "password", str)
    return Register(rules.checkUserName(name), rules.checkPassword(password))


def _chat(obj: dict[str, Any]) -> Request:
    return Chat(_field(obj, "toid", int), rules.checkText(
        _field(obj, "msg", str)), _optional(obj, "id", int))


def _createGroup(obj: dict[str, Any]) -> Request:
    claimed = _optional(obj, "id", int)
    name = rules.checkGroupName(_field(obj, "groupname", str))
    description = _optional(obj, "groupdesc", str) or ""
    return CreateGroup(name, rules.checkDescription(description), claimed)


def _groupChat(obj: dict[str, Any]) -> Request:
    return GroupChat(_field(obj, "groupid", int), rules.checkText(
        _field(obj, "msg", str)), _optional(obj, "id", int))


_PARSERS: dict[int, Callable[[dict[str, Any]], Request]] = {
    LOGIN_MSG: _login,
    LOGINOUT_MSG: lambda obj: Logout(_optional(obj, "id", int)),
    REG_MSG: _register,
    ONE_CHAT_MSG: _chat,
    ADD_FRIEND_MSG: lambda obj: AddFriend(
        _field(obj, "friendid", int), _optional(obj, "id", int)),
    CREATE_GROUP_MSG: _createGroup,
    ADD_GROUP_MSG: lambda obj: AddGroup(
        _field(obj, "groupid", int), _optional(obj, "id", int)),
    GROUP_CHAT_MSG: _groupChat,
    PING: lambda obj: Ping(),
    FRIEND_LIST: lambda obj: FriendList(_optional(obj, "id", int)),
    GROUP_LIST: lambda obj: GroupList(_optional(obj, "id", int)),
}

_MSGIDS: dict[type, int] = {
    Login: LOGIN_MSG, Logout: LOGINOUT_MSG, Register: REG_MSG,
    Chat: ONE_CHAT_MSG, AddFriend: ADD_FRIEND_MSG,
    CreateGroup: CREATE_GROUP_MSG, AddGroup: ADD_GROUP_MSG,
    GroupChat: GROUP_CHAT_MSG, Ping: PING, FriendList: FRIEND_LIST,
    GroupList: GROUP_LIST,
}


def _dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _friendObject(friend: Friend) -> dict[str, Any]:
    return {"id": friend.id, "name": friend.name,
            "state": "online" if friend.online else "offline"}


def _memberObject(member: Member) -> dict[str, Any]:
    return {"id": member.id, "name": member.name,
            "state": "online" if member.online else "offline",
            "role": member.role}


def _groupObject(group: Group, nested: bool) -> dict[str, Any]:
    """
    A group; C{nested} gives the login ack's form, whose members are
    themselves JSON-encoded strings.
    """
    members = [_memberObject(m) for m in group.members]
    return {
        "id": group.id, "groupname": group.name,
        "groupdesc": group.description,
        "users": [orjson.dumps(m).decode() for m in members]
        if nested else members,
    }


def _loginAck(reply: LoggedIn) -> bytes:
    return _dumps({
        "msgid": LOGIN_MSG_ACK, "errno": 0, "id": reply.userId,
        "name": reply.name,
        "friends": [orjson.dumps(_friendObject(f)).decode()
                    for f in reply.friends],
        "groups": [orjson.dumps(_groupObject(g, True)).decode()
                   for g in reply.groups],
        "offlinemsg": [e.toJSON().decode() for e in reply.offline],
    })


def _ack(request: Request, **fields: Any) -> bytes:
    return _dumps({"msgid": ACK, "req": _MSGIDS[type(request)], "errno": 0,
                   **fields})


@implementer(IDialect)
class JSONDialect:
    """
    @ivar classic: whether this is a classic client's connection, which is
        sent no ACK 11 for a request that succeeded.
    """

    def __init__(self, classic: bool) -> None:
        self.classic = classic

    def decode(self, line: bytes) -> Decoded:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return Rejected(BadRequest("not valid JSON in UTF-8"), None)
        if type(obj) is not dict:
            return Rejected(BadRequest("a request is a JSON object"), None)
        msgid = obj.get("msgid")
        if type(msgid) is not int:
            return Rejected(
                BadRequest("'msgid' must be an integer"), None)
        parse = _PARSERS.get(msgid)
        if parse is None:
            return Rejected(BadRequest(f"unknown msgid {msgid}"), msgid)
        try:
            return parse(obj)
        except BadRequest as e:
            return Rejected(e, msgid)
        except _WideInteger:
            pass
        # Rare: the standard library keeps an integer beyond 64 bits an
        # int (orjson has already found the line valid JSON), so it is a
        # JSON integer naming no row, as PROTOCOL.md 3.1 wants.
        try:
            return parse(json.loads(line))
        except BadRequest as e:
            return Rejected(e, msgid)
        except _WideInteger as e:  # a float after all, such as 1e30
            return Rejected(BadRequest(
                f"field {e.args[0]!r} must be an integer"), msgid)
        except ValueError:  # more digits than int() takes (4300)
            return Rejected(BadRequest("a number with too many digits"), msgid)

    def fitLogin(self, reply: LoggedIn) -> tuple[LoggedIn, tuple[ChatEvent, ...]]:
        """
        On a classic connection the ack is at most L{CLASSIC_READ} bytes
        (the classic client reads it into a buffer of that size): as many
        offline messages as fit, oldest first (PROTOCOL.md section 7).
        Friends and groups are never cut: past the limit with them alone,
        the ack goes whole, with no offline message.
        """
        if not self.classic or not reply.offline:
            return reply, ()
        size = len(_loginAck(attrs.evolve(reply, offline=())))
        fits = 0
        for event in reply.offline:
            # An element: the event JSON as a JSON string, and its comma.
            size += len(orjson.dumps(event.toJSON().decode())) + 1
            if size > CLASSIC_READ:
                break
            fits += 1
        if fits == len(reply.offline):
            return reply, ()
        return (attrs.evolve(reply, offline=reply.offline[:fits]),
                reply.offline[fits:])

    def encodeReply(self, request: Request, reply: Reply) -> Optional[bytes]:
        if isinstance(reply, LoggedIn):
            return _loginAck(reply)
        if isinstance(reply, Registered):
            return _dumps({"msgid": REG_MSG_ACK, "errno": 0,
                           "id": reply.userId})
        if isinstance(reply, Pong):
            return b'{"msgid":13}\n'
        if isinstance(reply, Friends):
            return _dumps({"msgid": FRIEND_LIST_ACK, "friends": [
                _friendObject(f) for f in reply.friends]})
        if isinstance(reply, Groups):
            return _dumps({"msgid": GROUP_LIST_ACK, "groups": [
                _groupObject(g, False) for g in reply.groups]})
        if self.classic:
            return None
        if isinstance(reply, ChatSent):
            return _ack(request,
                        delivery="online" if reply.online else "offline")
        if isinstance(reply, FriendAdded):
            return _ack(request, friendid=reply.friendId)
        if isinstance(reply, (GroupCreated, GroupJoined)):
            return _ack(request, groupid=reply.groupId)
        if isinstance(reply, GroupChatSent):
            return _ack(request, online=reply.online, offline=reply.offline)
        assert isinstance(reply, LoggedOut), reply
        return _ack(request)

    def encodeError(self, context: Any, error: ChatError) -> bytes:
        msgid = context if context is None or type(context) is int else (
            _MSGIDS[type(context)])
        if msgid == LOGIN_MSG and type(error) is not BadRequest:
            return _dumps({"msgid": LOGIN_MSG_ACK,
                           **_loginFailure(error)})
        if msgid == REG_MSG and isinstance(error, (InvalidValue, NameTaken)):
            return _dumps({"msgid": REG_MSG_ACK, "errno": 1,
                           "errmsg": error.message})
        if msgid == REG_MSG and isinstance(error, (RateLimited, Unavailable)):
            return _dumps({"msgid": REG_MSG_ACK, "errno": error.errno,
                           "errmsg": error.message})
        return _dumps({"msgid": ACK, "req": msgid, "errno": error.errno,
                       "errmsg": error.message})

    def encodeEvent(self, event: ChatEvent) -> bytes:
        return event.toJSON() + b"\n"

    def encodeNotice(self, text: str) -> bytes:
        return _dumps({"msgid": NOTICE, "msg": text})



def _loginFailure(error: ChatError) -> dict[str, Any]:
    """
    The classic LOGIN_MSG_ACK fields for a failed login.
    """
    if isinstance(error, WrongCredentials):
        return {"errno": 1, "errmsg": WRONG_CREDENTIALS}
    if isinstance(error, AccountInUse):
        return {"errno": 2, "errmsg": ACCOUNT_IN_USE}
    if isinstance(error, AlreadyLoggedIn):
        return {"errno": 2, "errmsg": CONNECTION_LOGGED_IN}
    return {"errno": error.errno, "errmsg": error.message}


JSON = JSONDialect(classic=False)
CLASSIC = JSONDialect(classic=True)
