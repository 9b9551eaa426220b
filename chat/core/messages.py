"""
The vocabulary shared by both dialects, the service and the bus.

Requests are what a client asks for, replies what the service answers,
events what is pushed to a recipient.  The codecs translate bytes to and
from these values; the service never sees a dialect.  This module owns
those values and the one encoding of an event (its classic JSON); it never
does I/O.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import attrs
import orjson

Role = Literal["creator", "normal"]
UserRef = Union[int, str]
"""A user named by id or, in the text dialect and LOGIN_MSG, by name."""


# Requests -----------------------------------------------------------------


@attrs.frozen
class Login:
    user: UserRef
    password: str = attrs.field(repr=False)  # never in a log line


@attrs.frozen
class Logout:
    claimedId: Optional[int] = None


@attrs.frozen
class Register:
    name: str
    password: str = attrs.field(repr=False)  # never in a log line


@attrs.frozen
class Chat:
    to: UserRef
    text: str
    claimedId: Optional[int] = None


@attrs.frozen
class AddFriend:
    friend: UserRef
    claimedId: Optional[int] = None


@attrs.frozen
class CreateGroup:
    name: str
    description: str = ""
    claimedId: Optional[int] = None


@attrs.frozen
class AddGroup:
    groupId: int
    claimedId: Optional[int] = None


@attrs.frozen
class GroupChat:
    groupId: int
    text: str
    claimedId: Optional[int] = None


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class FriendList:
    claimedId: Optional[int] = None


@attrs.frozen
class GroupList:
    claimedId: Optional[int] = None


@attrs.frozen
class Help:
    """Text dialect only."""


@attrs.frozen
class Quit:
    """Text dialect only."""


Request = Union[
    Login, Logout, Register, Chat, AddFriend, CreateGroup, AddGroup,
    GroupChat, Ping, FriendList, GroupList, Help, Quit,
]

ANONYMOUS_REQUESTS = (Login, Register, Ping, Help, Quit)
"""Requests that do not need a login."""


# Listings -----------------------------------------------------------------


@attrs.frozen
class Friend:
    id: int
    name: str
    online: bool


@attrs.frozen
class Member:
    id: int
    name: str
    online: bool
    role: Role


@attrs.frozen
class Group:
    id: int
    name: str
    description: str
    members: tuple[Member, ...]


# Events -------------------------------------------------------------------


@attrs.define(slots=True, eq=False)
class ChatEvent:
    """
    A chat message on its way to one recipient, or to a group's members.

    The classic JSON form is the canonical encoding: it is what the bus
    carries, what the offline store keeps and what a JSON client receives,
    so an event is encoded once however many recipients it has.  The text
    line is likewise rendered once, on first use.

    @ivar group_id: the group for a group message, else L{None}.
    @ivar to_id: the recipient of a one-to-one message (for a group message
        the recipient is implied by the membership, and this is L{None}).
    """

    senderId: int
    senderName: str
    text: str
    time: str
    toId: Optional[int] = None
    groupId: Optional[int] = None
    messageId: Optional[bytes] = None
    _json: Optional[bytes] = attrs.field(default=None, repr=False)
    _textLine: Optional[bytes] = attrs.field(default=None, repr=False)

    def toJSON(self) -> bytes:
        """
        The classic event object, without a line terminator.
        """
        if self._json is None:
            if self.groupId is None:
                self._json = orjson.dumps({
                    "msgid": 6, "id": self.senderId,
                    "name": self.senderName, "toid": self.toId,
                    "msg": self.text, "time": self.time,
                })
            else:
                self._json = orjson.dumps({
                    "msgid": 10, "id": self.senderId,
                    "name": self.senderName, "groupid": self.groupId,
                    "msg": self.text, "time": self.time,
                })
        return self._json

    def heldBytes(self) -> int:
        """
        About how much memory the event itself holds: its text and the
        encodings it keeps.  A queue that bounds its memory counts this
        besides the bytes it writes, which are one copy more.
        """
        return (len(self.text) + len(self._json or b"")
                + len(self._textLine or b""))

    def toTextLine(self) -> bytes:
        """
        The text dialect's event line, with its CRLF.
        """
        if self._textLine is None:
            if self.groupId is None:
                line = (
                    f"MSG {self.time} {self.senderId} "
                    f"{self.senderName}: {self.text}\r\n"
                )
            else:
                line = (
                    f"GROUPMSG {self.time} {self.groupId} {self.senderId} "
                    f"{self.senderName}: {self.text}\r\n"
                )
            self._textLine = line.encode("utf-8")
        return self._textLine

    @classmethod
    def fromJSON(cls, data: bytes,
                 messageId: Optional[bytes] = None) -> "ChatEvent":
        """
        Rebuild an event from L{toJSON}'s bytes (from the bus or the
        offline store), keeping those bytes for reuse.
        """
        obj = orjson.loads(data)
        if obj["msgid"] == 6:
            event = cls(obj["id"], obj["name"], obj["msg"], obj["time"],
                        toId=obj["toid"])
        else:
            event = cls(obj["id"], obj["name"], obj["msg"], obj["time"],
                        groupId=obj["groupid"])
        event.messageId = messageId
        event._json = bytes(data)
        return event


# Replies ------------------------------------------------------------------


@attrs.frozen
class LoggedIn:
    userId: int
    name: str
    friends: tuple[Friend, ...]
    groups: tuple[Group, ...]
    offline: tuple[ChatEvent, ...]


@attrs.frozen
class Registered:
    userId: int
    name: str


@attrs.frozen
class LoggedOut:
    pass


@attrs.frozen
class ChatSent:
    online: bool


@attrs.frozen
class FriendAdded:
    friendId: int
    name: str


@attrs.frozen
class GroupCreated:
    groupId: int
    name: str


@attrs.frozen
class GroupJoined:
    groupId: int


@attrs.frozen
class GroupChatSent:
    online: int
    offline: int


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class Friends:
    friends: tuple[Friend, ...]


@attrs.frozen
class Groups:
    groups: tuple[Group, ...]


@attrs.frozen
class HelpText:
    """The answer to L{Help}; the text dialect knows the words."""


@attrs.frozen
class Bye:
    """The answer to L{Quit}; the connection closes after it."""


Reply = Union[
    LoggedIn, Registered, LoggedOut, ChatSent, FriendAdded, GroupCreated,
    GroupJoined, GroupChatSent, Pong, Friends, Groups, HelpText, Bye,
]
