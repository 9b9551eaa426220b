"""
Cross-server delivery: how a message reaches a user whose connection is on
another server.

Every server subscribes, for each of its logged-in users, to that user's
channel.  Publishing to a channel answers how many servers received the
message: zero means nobody holds the user (stale state, a dead server, a
logout in flight), and the sender then stores the message instead.  A
"poke" tells whichever server holds a user to drain that user's offline
messages.

One process needs no broker: L{LocalBus} is the in-process bus.  The Redis
bus lives in L{chat.cluster.redisbus}.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from chat.core.messages import ChatEvent

PublishOutcome = Union[int, Failure]
"""How many servers took a message, or why publishing failed."""


class IBusReceiver(Interface):
    """
    What a bus calls when something arrives for a local user.
    """

    def eventArrived(userId: int, event: ChatEvent) -> Deferred | None:
        """
        A chat message for C{userId} from another server.  When the user
        has no session here any more, the message is stored: then a
        L{Deferred} that fires once it is (a stopping bus waits for it).
        """

    def pokeArrived(userId: int) -> None:
        """C{userId} has new offline messages."""

    def deliveryUncertain(messages: Sequence[tuple[int, bytes]]) -> None:
        """
        These C{(userId, payload)} messages were counted as taken by a
        subscriber, but the bus went away before it could be sure they
        were handed over: store them (a duplicate beats a loss).
        """

    def busReconnected() -> None:
        """
        The bus was down and is subscribed again: messages meant for local
        users may have gone to the offline store meanwhile.
        """


class IMessageBus(Interface):
    def setReceiver(receiver: IBusReceiver) -> None:
        """Where arriving messages go.  Called once, before any subscribe."""

    def subscribe(userId: int) -> Deferred:
        """
        Receive C{userId}'s messages here, from now on and after every
        reconnect, until L{unsubscribe}.  Fires when the broker confirmed
        (or failed; the subscription is still renewed on reconnect).
        """

    def unsubscribe(userId: int) -> Deferred:
        """Stop receiving C{userId}'s messages."""

    def publish(
            targets: Sequence[tuple[int, ChatEvent]],
    ) -> Deferred:
        """
        Send each event to its user's channel, in one batch (pipelined).
        Fires with a list of L{PublishOutcome}, one per target, in order;
        never fails as a whole.
        """

    def publishOne(userId: int, event: ChatEvent) -> Deferred:
        """
        L{publish} for one target, the one-to-one chat's hot path: fires
        with the count, or fails.
        """

    def unframeStored(payload: bytes) -> Optional[bytes]:
        """
        The event JSON of a stored message, or L{None} for a copy stored
        because its delivery was uncertain (see L{IBusReceiver.
        deliveryUncertain}) whose original this node is known to have
        received.
        """

    def poke(userIds: Iterable[int]) -> Deferred:
        """
        Tell whoever holds these users to drain their offline messages.
        Best effort: fires when sent; failures are logged, not raised.
        """


@implementer(IMessageBus)
class LocalBus:
    """
    The bus of a single server: channels are just the local subscriptions.

    In one process a user's session is found locally first, so this bus
    only sees the moments when a user is subscribed but not yet (or no
    longer) registered as a session, and hands those straight back to the
    receiver.
    """

    def __init__(self) -> None:
        self._receiver: IBusReceiver | None = None
        self._subscribed: set[int] = set()

    def setReceiver(self, receiver: IBusReceiver) -> None:
        self._receiver = receiver

    def subscribe(self, userId: int) -> Deferred:
        self._subscribed.add(userId)
        return succeed(None)

    def unsubscribe(self, userId: int) -> Deferred:
        self._subscribed.discard(userId)
        return succeed(None)

    def publish(self, targets: Sequence[tuple[int, ChatEvent]]) -> Deferred:
        outcomes: list[PublishOutcome] = []
        for userId, event in targets:
            if userId in self._subscribed and self._receiver is not None:
                self._receiver.eventArrived(userId, event)
                outcomes.append(1)
            else:
                outcomes.append(0)
        return succeed(outcomes)

    def publishOne(self, userId: int, event: ChatEvent) -> Deferred:
        return self.publish([(userId, event)]).addCallback(lambda o: o[0])

    def unframeStored(self, payload: bytes) -> Optional[bytes]:
        return payload  # nothing here is ever uncertain

    def poke(self, userIds: Iterable[int]) -> Deferred:
        if self._receiver is not None:
            for userId in userIds:
                if userId in self._subscribed:
                    self._receiver.pokeArrived(userId)
        return succeed(None)
