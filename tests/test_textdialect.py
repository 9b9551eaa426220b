"""
Tests for L{chat.wire.textdialect}: the text dialect for telnet and nc
(PROTOCOL.md 4).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chat.core import rules
from chat.wire.dialect import Rejected
from chat.core.errors import (
    AccountInUse, AlreadyLoggedIn, BadRequest, ChatError, Forbidden,
    InvalidValue, LineTooLong, NameTaken, NotFound, NotLoggedIn, RateLimited,
    Unavailable, WrongCredentials,
)
from chat.core.messages import (
    AddFriend, AddGroup, Bye, Chat, ChatEvent, ChatSent, CreateGroup, Friend,
    FriendAdded, FriendList, Friends, Group, GroupChat, GroupChatSent,
    GroupCreated, GroupJoined, GroupList, Groups, Help, HelpText, LoggedIn,
    LoggedOut, Login, Logout, Member, Ping, Pong, Quit, Register, Registered,
)
from chat.wire.textdialect import TEXT


def lines(data: bytes) -> list[str]:
    """
    Server output as its lines: every line must end in CRLF and hold no
    other line break.
    """
    assert data.endswith(b"\r\n"), data
    text = data.decode("utf-8")
    parts = text.split("\r\n")[:-1]
    for part in parts:
        assert "\n" not in part and "\r" not in part, data
    return parts


class DecodeTests(SynchronousTestCase):
    """Each command, in its plain form, becomes its request."""

    def assertDecodes(self, line: bytes, expected: Any) -> None:
        self.assertEqual(TEXT.decode(line), expected)

    def test_commands(self) -> None:
        """Every command of the table in PROTOCOL.md 4."""
        self.assertDecodes(b"help", Help())
        self.assertDecodes(b"register alice pw", Register("alice", "pw"))
        self.assertDecodes(b"login alice pw", Login("alice", "pw"))
        self.assertDecodes(b"login 22 pw", Login(22, "pw"))
        self.assertDecodes(b"logout", Logout())
        self.assertDecodes(b"chat bob hello", Chat("bob", "hello"))
        self.assertDecodes(b"chat 2 hello", Chat(2, "hello"))
        self.assertDecodes(b"addfriend 2", AddFriend(2))
        self.assertDecodes(b"addfriend bob", AddFriend("bob"))
        self.assertDecodes(b"friends", FriendList())
        self.assertDecodes(b"creategroup dev", CreateGroup("dev", ""))
        self.assertDecodes(b"creategroup dev the team",
                           CreateGroup("dev", "the team"))
        self.assertDecodes(b"addgroup 3", AddGroup(3))
        self.assertDecodes(b"groups", GroupList())
        self.assertDecodes(b"groupchat 3 hi all", GroupChat(3, "hi all"))
        self.assertDecodes(b"ping", Ping())
        self.assertDecodes(b"quit", Quit())

    def test_unicode(self) -> None:
        """UTF-8 names and texts come through as text."""
        self.assertDecodes("register 张三 密码".encode(),
                           Register("张三", "密码"))
        self.assertDecodes("chat 张三 你好 😀".encode(),
                           Chat("张三", "你好 😀"))

    def test_caseInsensitive(self) -> None:
        """Command words are case-insensitive; arguments keep their case."""
        self.assertDecodes(b"PING", Ping())
        self.assertDecodes(b"Ping", Ping())
        self.assertDecodes(b"LOGIN Alice Pw", Login("Alice", "Pw"))
        self.assertDecodes(b"ChAt Bob Hi", Chat("Bob", "Hi"))
        self.assertDecodes(b"QUIT", Quit())
        self.assertDecodes(b"G 3 x", GroupChat(3, "x"))

    def test_aliases(self) -> None:
        """C{loginout}, C{join} and C{g} are aliases."""
        self.assertDecodes(b"loginout", Logout())
        self.assertDecodes(b"join 3", AddGroup(3))
        self.assertDecodes(b"g 3 hi there", GroupChat(3, "hi there"))
        self.assertDecodes(b"LoginOut", Logout())

    def test_separators(self) -> None:
        """
        Arguments are separated by runs of spaces or tabs; spaces around
        the line are dropped.
        """
        self.assertDecodes(b"login \t alice\t\tpw", Login("alice", "pw"))
        self.assertDecodes(b"  ping \t", Ping())
        self.assertDecodes(b"\tchat  2   hi", Chat(2, "hi"))

    def test_finalArgumentKeepsInnerSpaces(self) -> None:
        """
        The final argument of chat, groupchat and creategroup runs to the
        end of the line with its inner spaces and tabs kept.
        """
        self.assertDecodes(b"chat 2 hello   big\tworld",
                           Chat(2, "hello   big\tworld"))
        self.assertDecodes(b"groupchat 3  a  b  c ", GroupChat(3, "a  b  c"))
        self.assertDecodes(b"creategroup dev  for  all:  of us",
                           CreateGroup("dev", "for  all:  of us"))
        self.assertDecodes(b"chat 2 chat 3 x", Chat(2, "chat 3 x"))

    def test_idOrName(self) -> None:
        """
        An all-digits USER is an id (leading zeros ignored, a huge one
        beyond any row), anything else a name.
        """
        self.assertDecodes(b"chat 007 x", Chat(7, "x"))
        self.assertDecodes(b"chat a7 x", Chat("a7", "x"))
        self.assertDecodes(b"addfriend " + b"9" * 30,
                           AddFriend(rules.MAX_ID + 1))
        self.assertDecodes(b"login 99999999999999999999 pw",
                           Login(rules.MAX_ID + 1, "pw"))

    def test_userNameOutsideRules(self) -> None:
        """
        A USER of chat or addfriend that is neither an id nor a name
        within the rules is error 100 (which comes before 104), not looked
        up; among them the colon form's C{addfriend:2:3}.
        """
        for line in [b"chat bad! hi", b"chat 1a hi", b"chat a\rb hi",
                     b"chat a\x1bb hi", b"addfriend " + b"a" * 33,
                     b"addfriend:2:3", b"chat:a!:hi"]:
            result = TEXT.decode(line)
            self.assertIsInstance(result, Rejected, repr(line))
            self.assertIsInstance(result.error, InvalidValue)
            self.assertEqual(result.error.errno, 100)

    def test_loginNameNotChecked(self) -> None:
        """
        A login by a name outside the rules is left to the credentials
        check: no account has that name, so it is a wrong login (103).
        """
        self.assertDecodes(b"login bad! pw", Login("bad!", "pw"))

    def test_loginPasswordNotChecked(self) -> None:
        """
        A login's password is taken as sent: a wrong one is a credentials
        failure (103), not a malformed request.
        """
        self.assertDecodes(b"login alice p:w!", Login("alice", "p:w!"))


class ColonFormTests(SynchronousTestCase):
    """The classic client's colon form, split at its first colons only."""

    def assertDecodes(self, line: bytes, expected: Any) -> None:
        self.assertEqual(TEXT.decode(line), expected)

    def test_protocolExamples(self) -> None:
        """The five examples of PROTOCOL.md 4."""
        self.assertDecodes(b"chat:2:hello there", Chat(2, "hello there"))
        self.assertDecodes(b"addfriend:2", AddFriend(2))
        self.assertDecodes(b"creategroup:name:desc",
                           CreateGroup("name", "desc"))
        self.assertDecodes(b"addgroup:3", AddGroup(3))
        self.assertDecodes(b"groupchat:3:hi", GroupChat(3, "hi"))

    def test_finalArgumentKeepsColons(self) -> None:
        """Only the first colons split: the text may hold more."""
        self.assertDecodes(b"chat:2:see: 10:30 ok",
                           Chat(2, "see: 10:30 ok"))
        self.assertDecodes(b"groupchat:3:a:b:c", GroupChat(3, "a:b:c"))
        self.assertDecodes(b"creategroup:dev:time: 9:00",
                           CreateGroup("dev", "time: 9:00"))
        self.assertDecodes(b"login:alice:p:w", Login("alice", "p:w"))

    def test_caseAndAliases(self) -> None:
        """The colon form takes any case and the aliases."""
        self.assertDecodes(b"CHAT:2:x", Chat(2, "x"))
        self.assertDecodes(b"g:3:hi", GroupChat(3, "hi"))
        self.assertDecodes(b"join:3", AddGroup(3))
        self.assertDecodes(b"LOGINOUT:", Logout())

    def test_optionalDescription(self) -> None:
        """
        C{creategroup:NAME} without a description is fine, and so is
        C{creategroup:NAME:} with an empty one (the classic client sends
        that when its user gives none).
        """
        self.assertDecodes(b"creategroup:dev", CreateGroup("dev", ""))
        self.assertDecodes(b"creategroup:dev:", CreateGroup("dev", ""))

    def test_plainFormWithColonInside(self) -> None:
        """
        A plain command whose arguments hold colons is not colon form.
        """
        self.assertDecodes(b"chat 2 re: lunch", Chat(2, "re: lunch"))

    def test_colonFormWrongCounts(self) -> None:
        """Too few parts, or an empty one, is error 100."""
        for line in [b"chat:2", b"chat::hi", b"chat:", b"groupchat:3",
                     b"addgroup:", b"creategroup:", b"help:x", b"ping:x"]:
            result = TEXT.decode(line)
            self.assertIsInstance(result, Rejected, repr(line))
            self.assertEqual(result.error.errno, 100)


class RejectTests(SynchronousTestCase):
    """What the text decoder refuses: all error 100."""

    def assertRejected(self, line: bytes) -> ChatError:
        result = TEXT.decode(line)
        self.assertIsInstance(result, Rejected, repr(line))
        self.assertIsInstance(result.error, BadRequest)
        self.assertEqual(result.error.errno, 100)
        [reply] = lines(TEXT.encodeError(result.context, result.error))
        self.assertTrue(reply.startswith("ERR 100 "), reply)
        return result.error

    def test_unknownCommand(self) -> None:
        """An unknown word, or JSON-looking text, is error 100."""
        for line in [b"hello", b"msg 2 hi", b"{}", b"pingg", b"p ing",
                     b"http://example.com/"]:
            self.assertRejected(line)

    def test_wrongArgumentCounts(self) -> None:
        """
        Too many or too few arguments are error 100 for every command
        (except that a final argument takes the rest of the line).
        """
        for line in [b"help me", b"register alice", b"register a b c",
                     b"login", b"login alice", b"login alice pw extra",
                     b"logout now", b"loginout x", b"chat", b"chat 2",
                     b"addfriend", b"addfriend 2 3", b"friends all",
                     b"creategroup", b"addgroup", b"addgroup 3 4",
                     b"join", b"groups x", b"groupchat", b"groupchat 3",
                     b"g 3", b"ping pong", b"quit now"]:
            self.assertRejected(line)

    def test_invalidUTF8(self) -> None:
        """Invalid UTF-8 is error 100, never a crash."""
        for line in [b"chat 2 \xff", b"\xc3", b"ping \xed\xa0\x80",
                     b"chat 2 \xc0\xaf"]:
            self.assertRejected(line)

    def test_groupIdMustBeNumeric(self) -> None:
        """A group is named by its id: a word there is error 100."""
        for line in [b"addgroup dev", b"groupchat dev hi", b"join -1",
                     b"g 3a hi"]:
            self.assertRejected(line)

    def test_valuesOutsideRules(self) -> None:
        """
        Values outside PROTOCOL.md 3.3 are error 100 in the text dialect.
        """
        for line in [b"register 1alice pw", b"register " + b"a" * 33 + b" p",
                     b"register alice:x pw", b"creategroup a:b",
                     b"creategroup g " + b"x" * 201,
                     b"chat 2 " + b"x" * 4001, b"chat 2 a\x1bb",
                     b"chat 2 a\rb", b"creategroup g a\x00b"]:
            self.assertIsInstance(self.assertRejected(line), InvalidValue)

    def test_blank(self) -> None:
        """
        A blank line (which the protocol never hands over) still decodes
        to a rejection rather than an exception.
        """
        self.assertRejected(b"")
        self.assertRejected(b" \t ")


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
EMPTY = Group(5, "quiet", "", ())


class EncodeReplyTests(SynchronousTestCase):
    """Replies: one C{OK} line first, list replies counted."""

    def assertListing(self, data: bytes) -> list[str]:
        """
        C{data} is C{OK <n> ...} followed by exactly n lines, each starting
        with two spaces; return those n lines.
        """
        head, *body = lines(data)
        match = re.match(r"OK (\d+)( |$)", head)
        self.assertIsNotNone(match, head)
        assert match is not None
        self.assertEqual(int(match.group(1)), len(body))
        for line in body:
            self.assertTrue(line.startswith("  "), line)
        return body

    def test_singleLineReplies(self) -> None:
        """
        Every non-list reply is exactly one C{OK ...} line.
        """
        for request, reply in [
                (Register("alice", "p"), Registered(7, "alice")),
                (Logout(), LoggedOut()),
                (Chat(2, "x"), ChatSent(True)),
                (Chat(2, "x"), ChatSent(False)),
                (AddFriend(2), FriendAdded(2, "bob")),
                (CreateGroup("g"), GroupCreated(8, "g")),
                (AddGroup(3), GroupJoined(3)),
                (GroupChat(3, "x"), GroupChatSent(1, 2)),
                (Quit(), Bye())]:
            [line] = lines(TEXT.encodeReply(request, reply))
            self.assertTrue(line.startswith("OK "), line)

    def test_idInReplies(self) -> None:
        """
        The replies to register, login and creategroup contain C{id <ID>}.
        """
        for request, reply, ident in [
                (Register("alice", "p"), Registered(7, "alice"), 7),
                (Login("alice", "p"), LoggedIn(7, "alice", (), (), ()), 7),
                (CreateGroup("g"), GroupCreated(81, "g"), 81)]:
            [line] = lines(TEXT.encodeReply(request, reply))
            self.assertTrue(re.search(rf"\bid {ident}\b", line), line)

    def test_loginThenOfflineMessages(self) -> None:
        """
        After C{OK} to a login come the offline messages as C{MSG} and
        C{GROUPMSG} lines, oldest first.
        """
        events = (event("first"), event("second", True))
        data = TEXT.encodeReply(Login(23, "p"),
                                LoggedIn(23, "bob1", (), (), events))
        head, *rest = lines(data)
        self.assertTrue(head.startswith("OK "))
        self.assertEqual(rest, [
            "MSG 2024-01-01 12:00:00 22 alice1: first",
            "GROUPMSG 2024-01-01 12:00:02 2 22 alice1: second"])

    def test_pong(self) -> None:
        """C{ping} is answered by the line C{PONG} (HAProxy expects it)."""
        self.assertEqual(TEXT.encodeReply(Ping(), Pong()), b"PONG\r\n")

    def test_bye(self) -> None:
        """C{quit} answers C{OK bye}."""
        self.assertEqual(TEXT.encodeReply(Quit(), Bye()), b"OK bye\r\n")

    def test_help(self) -> None:
        """
        C{help} is a counted list that mentions every command word.
        """
        body = self.assertListing(TEXT.encodeReply(Help(), HelpText()))
        text = "\n".join(body)
        for word in ["help", "register", "login", "logout", "chat",
                     "addfriend", "friends", "creategroup", "addgroup",
                     "groups", "groupchat", "ping", "quit"]:
            self.assertIn(word, text)

    def test_friends(self) -> None:
        """
        C{friends}: one line C{  <id> <name> <online|offline>} each.
        """
        body = self.assertListing(
            TEXT.encodeReply(FriendList(), Friends((ALICE, BOB))))
        self.assertEqual(body, ["  22 alice1 online", "  23 bob1 offline"])
        self.assertEqual(
            self.assertListing(TEXT.encodeReply(FriendList(), Friends(()))),
            [])

    def test_groups(self) -> None:
        """
        C{groups}: per group C{  <id> <name>: <description>}, then one
        C{    <id> <name> <state> <role>} per member, all counted in n.
        """
        body = self.assertListing(
            TEXT.encodeReply(GroupList(), Groups((DEV, EMPTY))))
        self.assertEqual(body, [
            "  2 dev: the team",
            "    22 alice1 online creator",
            "    23 bob1 offline normal",
            "  5 quiet: "])
        self.assertEqual(
            self.assertListing(TEXT.encodeReply(GroupList(), Groups(()))),
            [])


class EncodeErrorTests(SynchronousTestCase):
    """Error replies are C{ERR <errno> <text>}, one line."""

    def test_errnos(self) -> None:
        """Each error class gives its own errno from PROTOCOL.md 3.4."""
        cases: list[tuple[ChatError, int]] = [
            (BadRequest("bad"), 100), (InvalidValue("bad name"), 100),
            (LineTooLong("too long"), 101), (NotLoggedIn("log in"), 102),
            (Forbidden("not you"), 103), (WrongCredentials("wrong"), 103),
            (NotFound("no such user"), 104), (NameTaken("taken"), 105),
            (AccountInUse("busy"), 105), (AlreadyLoggedIn("again"), 105),
            (RateLimited("slow"), 106), (Unavailable("down"), 107)]
        for error, errno in cases:
            self.assertEqual(
                TEXT.encodeError(Chat(2, "x"), error),
                f"ERR {errno} {error.message}\r\n".encode())

    def test_noContext(self) -> None:
        """An error with no request (an overlong line) is still one line."""
        self.assertEqual(TEXT.encodeError(None, LineTooLong("too long")),
                         b"ERR 101 too long\r\n")

    def test_unknownWordEscaped(self) -> None:
        """
        An unknown command echoed in the error cannot break the line, even
        when it holds a carriage return or a Unicode line separator.
        """
        for line in ["foo\rbar", "foo\x1bbar", "foo\u2028bar",
                     "foo\x85bar"]:
            result = TEXT.decode(line.encode("utf-8"))
            assert isinstance(result, Rejected)
            [reply] = lines(TEXT.encodeError(None, result.error))
            self.assertNotIn("\u2028", reply)
            self.assertNotIn("\x85", reply)


    def test_messageControlCharactersEscaped(self) -> None:
        """
        An error message that echoes client input (a service's "no user
        named ...") has its control characters escaped, tab kept, so the
        reply stays one line and sends no terminal escape.
        """
        self.assertEqual(
            TEXT.encodeError(None, NotFound("no user a\rb\x1b[2J\tc\x85")),
            b"ERR 104 no user a\\x0db\\x1b[2J\tc\\x85\r\n")


class EventTests(SynchronousTestCase):
    """Pushed events and notices: one line each, with CRLF."""

    def test_msg(self) -> None:
        """C{MSG <time> <from-id> <from-name>: <text>}."""
        self.assertEqual(
            TEXT.encodeEvent(event("hello  bob: hi\tthere")),
            b"MSG 2024-01-01 12:00:00 22 alice1: hello  bob: hi\tthere\r\n")

    def test_groupMsg(self) -> None:
        """C{GROUPMSG <time> <group-id> <from-id> <from-name>: <text>}."""
        self.assertEqual(
            TEXT.encodeEvent(event("hi all", True)),
            b"GROUPMSG 2024-01-01 12:00:02 2 22 alice1: hi all\r\n")

    def test_unicode(self) -> None:
        """Non-ASCII names and texts go out as UTF-8."""
        self.assertEqual(
            TEXT.encodeEvent(ChatEvent(3, "张三", "你好", "2024-01-01 00:00:00",
                                       toId=4)),
            "MSG 2024-01-01 00:00:00 3 张三: 你好\r\n".encode())

    def test_notice(self) -> None:
        """C{NOTICE <text>}."""
        self.assertEqual(TEXT.encodeNotice("server shutting down"),
                         b"NOTICE server shutting down\r\n")

    def test_noticeOneLine(self) -> None:
        """A notice with a line break is escaped onto one line."""
        self.assertEqual(TEXT.encodeNotice("going\r\ndown"),
                         b"NOTICE going\\x0d\\x0adown\r\n")
