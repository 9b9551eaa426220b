"""
The errors a request can fail with, one class per distinct outcome.

Each carries the protocol's error number (PROTOCOL.md 3.4).  The codecs
turn them into the dialect's reply; the classic login and register acks
need to tell some of them apart, so those outcomes have classes of their
own even where they share a number.  Nothing here knows a dialect's words.
"""

from __future__ import annotations


class ChatError(Exception):
    """
    A request failed in a way the client is told about.

    @ivar errno: the protocol error number.
    @ivar message: a short human explanation, one line.
    """

    errno: int = 100

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ChatError):
    """Malformed: not JSON, unknown command, a missing or mistyped field."""

    errno = 100


class InvalidValue(BadRequest):
    """
    Well formed, but a value breaks the rules of PROTOCOL.md 3.3.

    Kept apart from L{BadRequest} because a classic REG_MSG answers it with
    REG_MSG_ACK errno 1 rather than ACK 11.
    """


class LineTooLong(ChatError):
    """A client message longer than C{--max-line}; the connection closes."""

    errno = 101


class NotLoggedIn(ChatError):
    errno = 102


class Forbidden(ChatError):
    """The request's C{id} is not you, or you are not a group member."""

    errno = 103


class WrongCredentials(Forbidden):
    """No such account, or the wrong password."""


class NotFound(ChatError):
    errno = 104


class Conflict(ChatError):
    errno = 105


class AccountInUse(Conflict):
    """The account has a live session on some server of the cluster."""


class AlreadyLoggedIn(Conflict):
    """This connection is logged in already."""


class NameTaken(Conflict):
    """A user or group name that exists already."""


class RateLimited(ChatError):
    errno = 106


class Unavailable(ChatError):
    """
    The database or the message bus is down.  Nothing was lost; the client
    may retry.
    """

    errno = 107
