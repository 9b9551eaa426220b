"""
What a message bus is: how a message reaches a user whose connection is on
another server.

Every server subscribes, for each of its logged-in users, to that user's
channel.  Publishing to a channel answers how many servers received the
message: zero means nobody holds the user (stale state, a dead server, a
logout in flight), and the sender then stores the message instead.  A
"poke" tells whichever server holds a user to drain that user's offline
messages.

This module only declares the two sides; L{chat.cluster.localbus} is the
bus of one process and L{chat.cluster.redisbus} the cluster's.  A bus
carries events with their message ids and never decides where a message
goes: the router does.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Interface

from chat.core.messages import ChatEvent

PublishOutcome = Union[int, Failure]
"""How many servers took a message, or why publishing failed."""


class IBusReceiver(Interface):
    """
    What a bus calls when something arrives for a local user.
    """

    def eventArrived(userId: int, event: ChatEvent) -> Optional[Deferred[None]]:
        """
        A chat message for C{userId} from another server.  When the user
        has no session here any more, the message is stored: then a
        L{Deferred} that fires once it is (a stopping bus waits for it).
        """

    def pokeArrived(userId: int) -> None:
        """C{userId} has new offline messages."""

    def deliveryUncertain(
            messages: Sequence[tuple[int, ChatEvent]]) -> Deferred[None]:
        """
        These C{(userId, event)} messages were counted as taken by a
        subscriber, but no proof came that they were delivered or stored
        there: store them (a duplicate beats a loss).  Fires once they
        are.
        """

    def busInterrupted() -> None:
        """
        This node's subscription was lost.  Messages received just before
        may have been stored by their senders as uncertain copies too.
        """

    def busReconnected() -> None:
        """
        The bus was down and is subscribed again: messages meant for local
        users may have gone to the offline store meanwhile.
        """


class IMessageBus(Interface):
    def setReceiver(receiver: IBusReceiver) -> None:
        """Where arriving messages go.  Called once, before any subscribe."""

    def subscribe(userId: int) -> Deferred[object]:
        """
        Receive C{userId}'s messages here, from now on and after every
        reconnect, until L{unsubscribe}.  Fires when the broker confirmed
        (or failed; the subscription is still renewed on reconnect).
        """

    def unsubscribe(userId: int) -> Deferred[object]:
        """Stop receiving C{userId}'s messages."""

    def publish(userIds: Sequence[int],
                event: ChatEvent) -> Deferred[list[PublishOutcome]]:
        """
        Send C{event} to each user's channel, in one batch (pipelined).
        The event has its message id.  Fires with one L{PublishOutcome}
        per user, in order; never fails as a whole.
        """

    def poke(userIds: Iterable[int]) -> Deferred[None]:
        """
        Tell whoever holds these users to drain their offline messages.
        Best effort: fires when sent; failures are logged, not raised.
        """
