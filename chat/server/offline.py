"""
Writing offline messages in order, one batch per user at a time.

Several parts of the node store messages for one user at nearly the same
moment: a sender whose copy found no session, the bus bringing messages
for a user who just logged out, a slow reader's overflow, a closing
connection's queue.  On MySQL the pool runs several INSERTs at once, and
two of them for one user could commit in either order.  So for each user
at most one INSERT is in flight; what comes meanwhile waits, in arrival
order, and goes in the next one (one multi-row INSERT for whatever
gathered).  Every batch is then poked, so that a session of the user on
any node drains it.

This module owns that order; it never decides whether a message should be
stored (the router does).
"""

from __future__ import annotations

from typing import Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from chat.cluster.bus import IMessageBus
from chat.core.messages import ChatEvent
from chat.storage.store import OfflineMessage, Store

Message = tuple[int, ChatEvent]
"""A recipient's user id and the event stored for it."""


class _Join:
    """One caller's wait for the batches its messages went into."""

    __slots__ = ("deferred", "parts", "_failure")

    def __init__(self) -> None:
        self.deferred: Deferred[None] = Deferred()
        self.parts = 0
        self._failure: Optional[Failure] = None

    def done(self, failure: Optional[Failure]) -> None:
        if failure is not None and self._failure is None:
            self._failure = failure
        self.parts -= 1
        if self.parts == 0:
            if self._failure is not None:
                self.deferred.errback(self._failure)
            else:
                self.deferred.callback(None)


class _Batch:
    """Messages to store in one INSERT, and the callers waiting for it."""

    __slots__ = ("messages", "joins")

    def __init__(self) -> None:
        self.messages: list[OfflineMessage] = []
        self.joins: list[_Join] = []

    def add(self, message: OfflineMessage, join: _Join) -> None:
        self.messages.append(message)
        if not self.joins or self.joins[-1] is not join:
            self.joins.append(join)
            join.parts += 1


class OfflineWriter:
    def __init__(self, store: Store, bus: IMessageBus) -> None:
        self._store = store
        self._bus = bus
        self._writing: dict[int, Optional[_Batch]] = {}
        """For each user with an INSERT in flight, what waits behind it."""
        self._idle: list[Deferred[None]] = []
        self._afterWrites: dict[int, list[Deferred[None]]] = {}

    def store(self, messages: Sequence[Message],
              inFront: bool = False) -> Deferred[None]:
        """
        Store C{messages} after whatever is being stored for their users,
        then poke; C{inFront}, before whatever is stored for them already
        (they were taken for a connection that died before writing them,
        so they are older).  Fires once all of them are stored (or fails
        with the store's error: L{chat.core.errors.Unavailable}).
        """
        join = _Join()
        now = _Batch()
        writing = self._writing
        # All of a user's messages of this call in one INSERT: those put in
        # front must get one sort key.
        idle = {userId for userId, _ in messages if userId not in writing}
        for userId in idle:
            writing[userId] = None
        for userId, event in messages:
            message = OfflineMessage(userId, event, inFront)
            if userId in idle:
                now.add(message, join)
                continue
            waiting = writing[userId]
            if waiting is None:
                waiting = writing[userId] = _Batch()
            waiting.add(message, join)
        if now.messages:
            self._insert(now)
        if join.parts == 0:
            join.deferred.callback(None)
        return join.deferred

    def _insert(self, batch: _Batch) -> None:
        users = {message.userId for message in batch.messages}
        d = self._store.storeOffline(batch.messages)
        d.addCallback(lambda _: self._bus.poke(users))
        d.addBoth(self._written, batch, users)

    def _written(self, result: object, batch: _Batch, users: set[int]) -> None:
        """
        The INSERT of C{batch} is over: tell its callers, and start the
        next INSERT, of whatever waited behind it.
        """
        failure = result if isinstance(result, Failure) else None
        for join in batch.joins:
            join.done(failure)
        following = _Batch()
        for userId in users:
            waiting = self._writing.pop(userId)
            if waiting is not None:
                self._writing[userId] = None
                following.messages.extend(waiting.messages)
                following.joins.extend(waiting.joins)
            else:
                for d in self._afterWrites.pop(userId, ()):
                    d.callback(None)
        if following.messages:
            self._insert(following)
        elif not self._writing:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def afterWrites(self, userId: int) -> Deferred[None]:
        """
        Fires once nothing is being stored for C{userId} (at once when
        nothing is): a drain waits for it, or it would overtake rows about
        to be committed with live events that are younger.
        """
        if userId not in self._writing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._afterWrites.setdefault(userId, []).append(d)
        return d

    def idle(self) -> Deferred[None]:
        """Fires once nothing is being stored (a stopping node waits)."""
        if not self._writing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d
