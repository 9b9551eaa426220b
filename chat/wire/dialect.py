"""
What a dialect is: the pure translation between one connection's bytes and
the values of L{chat.core.messages}.

A dialect never does I/O.  The protocol hands it a complete client message
(terminator removed) and writes whatever bytes it returns.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import attrs
from zope.interface import Interface

from chat.core.errors import ChatError
from chat.core.messages import ChatEvent, LoggedIn, Reply, Request


@attrs.frozen
class Rejected:
    """
    A client message that could not become a request.

    @ivar error: why.
    @ivar context: what the dialect needs to address the error reply (the
        JSON dialect keeps the request's msgid here).
    """

    error: ChatError
    context: Any = None


Decoded = Union[Request, Rejected]


class IDialect(Interface):
    """
    One wire dialect.  Implementations are stateless and shared by all
    connections that speak them.
    """

    def decode(line: bytes) -> Decoded:
        """
        Turn one client message into a request, or a L{Rejected} saying why
        not.  Never raises.
        """

    def fitLogin(reply: LoggedIn) -> tuple[LoggedIn, tuple[ChatEvent, ...]]:
        """
        The login reply as this dialect sends it, and the offline messages
        that do not fit in it (to be pushed right after it, as ordinary
        events, before any live one).
        """

    def encodeReply(request: Request, reply: Reply) -> Optional[bytes]:
        """
        The bytes answering C{request} with C{reply}, or L{None} where the
        dialect answers success with silence.
        """

    def encodeError(context: Any, error: ChatError) -> bytes:
        """
        The bytes of an error reply.  C{context} is the failed request, or
        the L{Rejected.context} when there was none.
        """

    def encodeEvent(event: ChatEvent) -> bytes:
        """A pushed chat message."""

    def encodeNotice(text: str) -> bytes:
        """A pushed server notice."""
