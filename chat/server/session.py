"""
The two sides of the line between a connection and the chat's rules.

A connection (L{chat.server.protocol.ChatProtocol}) is an L{ISession} to
the service: something messages can be pushed to and that can be told to
go away.  The service is an L{IChatService} to the connection: something
that carries out requests.  Neither side sees more of the other; this
module holds only the two interfaces.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from chat.core.errors import NotLoggedIn
from chat.core.messages import ChatEvent, Reply, Request

Answer = Union[Reply, "Deferred[Any]"]
"""A request's reply, or a Deferred firing with it (a local chat needs no
Deferred at all).  (Deferred is invariant, so the Deferred of one kind of
reply is no Deferred[Reply] to mypy: hence Any.)"""


class ISession(Interface):
    """
    A client connection as the service sees it.
    """

    userId: Optional[int] = Attribute(
        "The logged-in user's id, or None; set by the session registry.")
    userName: Optional[str] = Attribute(
        "The logged-in user's name; set by the session registry.")
    peer: str = Attribute("The client's address and port, for logs.")
    address: str = Attribute(
        "The client's IP address, which the rate limits count against: "
        "behind HAProxy the real client's, from its PROXY header.")

    def deliver(event: ChatEvent) -> bool:
        """
        Push a chat message to the client: whether the session took it (a
        slow reader whose output is full refuses it, and every later one
        until it has read its backlog; the router stores what is refused).
        """

    def room() -> int:
        """
        How many bytes of events the session would take now: 0 while it
        refuses them.
        """

    def deliverStored(event: ChatEvent) -> None:
        """
        Push a message taken from the offline store, sized by L{room}:
        never refused.
        """

    def backlog() -> None:
        """
        Refuse events from now on, until the client has read what waits
        for it (then L{IChatService.backlogReadable}): its stored messages
        are older than anything live.
        """

    def notice(text: str) -> None:
        """Push a server notice to the client."""

    def disconnect(reason: str) -> None:
        """Send C{reason} as a notice, then close the connection."""


class IChatService(Interface):
    """
    The chat's rules as a connection sees them.
    """

    def handle(session: ISession, request: Request) -> Answer:
        """
        Carry out one request for C{session}.

        @raise chat.core.errors.ChatError: (or fail with it) when the
            request is refused.
        """

    def sessionEnded(session: ISession) -> Deferred[None]:
        """
        C{session} logged out or its connection closed: forget it.  Fires
        once the database no longer holds the session.
        """

    def storeUndelivered(
            messages: Sequence[tuple[int, ChatEvent]]) -> Deferred[None]:
        """
        C{(userId, event)}s handed to a session that could not write
        them: store them again, in order, for each user's next login.
        """

    def loginAnswered(userId: int) -> None:
        """
        The reply to C{userId}'s login is written (or the connection
        closed first): the rest of its offline messages, and the live
        events that waited, may follow.
        """

    def backlogReadable(session: ISession) -> None:
        """
        C{session} refused events and has since read what was waiting:
        push it what was stored meanwhile.
        """

    def shutdown(reason: str) -> None:
        """
        This node is stopping: every session is told C{reason} and closed.
        """

    def settled() -> Deferred[None]:
        """Fires once no message is being stored (a stopping node waits)."""


def identity(session: ISession) -> tuple[int, str]:
    """
    The id and name of the user logged in on C{session}.

    @raise NotLoggedIn: nobody is (the dispatcher has checked already;
        this keeps handlers honest about it).
    """
    userId, userName = session.userId, session.userName
    if userId is None or userName is None:
        raise NotLoggedIn("log in first")
    return userId, userName
