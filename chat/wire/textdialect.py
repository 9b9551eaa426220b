"""
The text dialect, for people at a telnet or nc prompt (PROTOCOL.md 4).

A command is a word and its arguments separated by spaces or tabs; the
final argument of C{chat}, C{groupchat} and C{creategroup} runs to the end
of the line.  The classic client's colon form (C{chat:2:hello}) is read
too.  Every command is answered by one C{OK ...} or C{ERR <errno> ...} line
(C{ping} by C{PONG}); list replies say how many indented lines follow.
This module owns the text words; it never does I/O.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import attrs
from zope.interface import implementer

from chat.core import rules
from chat.wire.dialect import Decoded, IDialect, Rejected
from chat.core.errors import BadRequest, ChatError
from chat.core.messages import (
    AddFriend, AddGroup, Bye, Chat, ChatEvent, ChatSent, CreateGroup,
    FriendAdded, FriendList, Friends, GroupChat, GroupChatSent, GroupCreated,
    GroupJoined, GroupList, Groups, Help, HelpText, LoggedIn, LoggedOut,
    Login, Logout, Ping, Pong, Quit, Register, Registered, Reply, Request,
    UserRef,
)

_SEPARATORS = re.compile(r"[ \t]+")
_COLON_FORM = re.compile(r"([A-Za-z]+):")


def _loginRef(arg: str) -> UserRef:
    """
    Whom a login names: any name is only compared with the accounts, so
    one outside the rules is just wrong credentials.
    """
    return rules.parseId(arg) if rules.isIdShaped(arg) else arg


def _userRef(arg: str) -> UserRef:
    """
    The user a request names: an id, or a name within the rules (a name
    outside them is error 100, which comes before 104, PROTOCOL.md 3.1).
    """
    return rules.parseId(arg) if rules.isIdShaped(arg) else (
        rules.checkUserName(arg))


def _groupId(arg: str) -> int:
    if not rules.isIdShaped(arg):
        raise BadRequest("a group is named by its numeric id")
    return rules.parseId(arg)


@attrs.frozen
class _Command:
    """
    One text command: how many arguments it takes, whether its last one
    runs to the end of the line, and how they become a request.
    """

    usage: str
    summary: str
    least: int
    most: int
    build: Callable[..., Request]
    restOfLine: bool = False


_COMMANDS: dict[str, _Command] = {
    "help": _Command("help", "this list", 0, 0, Help),
    "register": _Command(
        "register NAME PASSWORD", "create an account", 2, 2,
        lambda name, password: Register(
            rules.checkUserName(name), rules.checkPassword(password))),
    "login": _Command(
        "login ID-OR-NAME PASSWORD", "log in; offline messages follow", 2, 2,
        lambda user, password: Login(_loginRef(user), password)),
    "logout": _Command("logout", "log out, keep the connection", 0, 0,
                       Logout),
    "chat": _Command(
        "chat USER TEXT", "send a message to a user (id or name)", 2, 2,
        lambda user, text: Chat(_userRef(user), rules.checkText(text)),
        restOfLine=True),
    "addfriend": _Command(
        "addfriend USER", "add a user to your friends", 1, 1,
        lambda user: AddFriend(_userRef(user))),
    "friends": _Command("friends", "list your friends", 0, 0, FriendList),
    "creategroup": _Command(
        "creategroup NAME [DESCRIPTION]", "create a group", 1, 2,
        lambda name, description="": CreateGroup(
            rules.checkGroupName(name), rules.checkDescription(description)),
        restOfLine=True),
    "addgroup": _Command(
        "addgroup GROUPID", "join a group", 1, 1,
        lambda group: AddGroup(_groupId(group))),
    "groups": _Command("groups", "list your groups and their members", 0, 0,
                       GroupList),
    "groupchat": _Command(
        "groupchat GROUPID TEXT", "send a message to a group", 2, 2,
        lambda group, text: GroupChat(_groupId(group), rules.checkText(text)),
        restOfLine=True),
    "ping": _Command("ping", "answers PONG", 0, 0, Ping),
    "quit": _Command("quit", "close the connection", 0, 0, Quit),
}
_ALIASES = {"loginout": "logout", "join": "addgroup", "g": "groupchat"}

_HELP_LINES = [
    f"  {c.usage:<32} {c.summary}" for c in _COMMANDS.values()
] + ["  (aliases: loginout = logout, join = addgroup, g = groupchat;"
     " the colon form chat:ID:TEXT works too)"]


def _splitArguments(command: _Command, rest: str, colon: bool) -> list[str]:
    """
    The arguments of one command line, after its command word.
    """
    if colon:
        if not rest and command.most == 0:
            return []
        args = [p.strip(" \t") for p in rest.split(
            ":", max(command.most - 1, 0))]
        if len(args) > command.least and args[-1] == "":
            args.pop()  # an optional final argument left empty: creategroup:g:
        return args
    if not rest:
        return []
    if command.restOfLine:
        return _SEPARATORS.split(rest, command.most - 1)
    return _SEPARATORS.split(rest)


def parseCommand(line: str) -> Request:
    """
    One text line (already stripped, not blank) to a request.

    @raise BadRequest: an unknown command, or the wrong number of arguments.
    @raise InvalidValue: an argument breaks the rules of PROTOCOL.md 3.3.
    """
    colon = _COLON_FORM.match(line)
    if colon and colon.group(1).lower() in {*_COMMANDS, *_ALIASES}:
        word, rest, isColon = colon.group(1), line[colon.end():], True
    else:
        word, *tail = _SEPARATORS.split(line, 1)
        rest, isColon = (tail[0] if tail else ""), False
    word = word.lower()
    command = _COMMANDS.get(_ALIASES.get(word, word))
    if command is None:
        raise BadRequest(f"unknown command {word!r}; try help")
    args = _splitArguments(command, rest, isColon)
    if not command.least <= len(args) <= command.most or "" in args:
        raise BadRequest(f"usage: {command.usage}")
    return command.build(*args)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _oneLine(text: str) -> str:
    """
    C{text} with its control characters but tab escaped as C{\\xNN}, so
    that a message which echoes what a client sent (an error naming an
    unknown user) is still one line and carries no terminal escape.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _ok(text: str) -> bytes:
    return f"OK {text}\r\n".encode("utf-8")


def _state(online: bool) -> str:
    return "online" if online else "offline"


def _listing(summary: str, lines: list[str]) -> bytes:
    body = "".join(f"{line}\r\n" for line in lines)
    return f"OK {len(lines)} {summary}\r\n{body}".encode("utf-8")


def _loggedIn(reply: LoggedIn) -> bytes:
    count = len(reply.offline)
    head = _ok(f"logged in: id {reply.userId}, name {reply.name}, "
               f"{count} offline message{'' if count == 1 else 's'}")
    return head + b"".join(e.toTextLine() for e in reply.offline)


def _groups(reply: Groups) -> bytes:
    lines = []
    for group in reply.groups:
        lines.append(f"  {group.id} {group.name}: {group.description}")
        lines.extend(
            f"    {m.id} {m.name} {_state(m.online)} {m.role}"
            for m in group.members)
    return _listing(f"lines: {len(reply.groups)} groups", lines)


_REPLIES: dict[type, Callable[[Any], bytes]] = {
    LoggedIn: _loggedIn,
    Registered: lambda r: _ok(f"registered: id {r.userId}, name {r.name}"),
    LoggedOut: lambda r: _ok("logged out"),
    ChatSent: lambda r: _ok(
        "delivered" if r.online else "stored for offline delivery"),
    FriendAdded: lambda r: _ok(f"friend added: id {r.friendId}, "
                               f"name {r.name}"),
    GroupCreated: lambda r: _ok(f"group created: id {r.groupId}, "
                                f"name {r.name}"),
    GroupJoined: lambda r: _ok(f"joined group {r.groupId}"),
    GroupChatSent: lambda r: _ok(
        f"sent: {r.online} online, {r.offline} offline"),
    Pong: lambda r: b"PONG\r\n",
    Friends: lambda r: _listing("friends", [
        f"  {f.id} {f.name} {_state(f.online)}" for f in r.friends]),
    Groups: _groups,
    HelpText: lambda r: _listing("commands", _HELP_LINES),
    Bye: lambda r: _ok("bye"),
}


@implementer(IDialect)
class TextDialect:
    def decode(self, line: bytes) -> Decoded:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(BadRequest("invalid UTF-8"))
        try:
            return parseCommand(text.strip(" \t"))
        except BadRequest as e:
            return Rejected(e)

    def fitLogin(self, reply: LoggedIn) -> tuple[LoggedIn, tuple[ChatEvent, ...]]:
        return reply, ()

    def encodeReply(self, request: Request, reply: Reply) -> Optional[bytes]:
        return _REPLIES[type(reply)](reply)

    def encodeError(self, context: Any, error: ChatError) -> bytes:
        return f"ERR {error.errno} {_oneLine(error.message)}\r\n".encode(
            "utf-8")

    def encodeEvent(self, event: ChatEvent) -> bytes:
        return event.toTextLine()

    def encodeNotice(self, text: str) -> bytes:
        return f"NOTICE {_oneLine(text)}\r\n".encode("utf-8")


TEXT = TextDialect()
