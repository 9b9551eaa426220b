"""
The bus of a single server: channels are just the local subscriptions.

In one process a user's session is found locally first, so this bus only
sees the moments when a user is subscribed but not yet (or no longer)
registered as a session, and hands those straight back to the receiver.
It never loses its subscriptions, so it never reports an interruption.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chat.cluster.bus import IBusReceiver, IMessageBus, PublishOutcome
from chat.core.messages import ChatEvent


@implementer(IMessageBus)
class LocalBus:
    def __init__(self) -> None:
        self._receiver: Optional[IBusReceiver] = None
        self._subscribed: set[int] = set()

    def setReceiver(self, receiver: IBusReceiver) -> None:
        self._receiver = receiver

    def subscribe(self, userId: int) -> Deferred[object]:
        self._subscribed.add(userId)
        return succeed(None)

    def unsubscribe(self, userId: int) -> Deferred[object]:
        self._subscribed.discard(userId)
        return succeed(None)

    def publish(self, userIds: Sequence[int],
                event: ChatEvent) -> Deferred[list[PublishOutcome]]:
        outcomes: list[PublishOutcome] = []
        for userId in userIds:
            if userId in self._subscribed and self._receiver is not None:
                self._receiver.eventArrived(userId, event)
                outcomes.append(1)
            else:
                outcomes.append(0)
        return succeed(outcomes)

    def poke(self, userIds: Iterable[int]) -> Deferred[None]:
        if self._receiver is not None:
            for userId in userIds:
                if userId in self._subscribed:
                    self._receiver.pokeArrived(userId)
        return succeed(None)
