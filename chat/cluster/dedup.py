"""
The identity of messages across the cluster, and the recognition of the
copies that PROTOCOL.md section 5 allows ("a rare duplicate is
acceptable, a loss is not").

A message gets its id when it first leaves the node that accepted it (to
the bus or the offline store); every copy keeps it.  A copy stored because
its delivery was uncertain is then recognised, at the drain, on the node
where the original arrived.  This module holds no message and does no
I/O; the router asks it.
"""

from __future__ import annotations

import os
from collections import deque

Delivery = tuple[int, bytes]
"""A recipient's user id and a message id: one copy of a message (a group
message has one id for all its recipients)."""

REMEMBER_SECONDS = 10.0
"""How long a node remembers what it delivered from the bus: longer than
a publisher waits for the proof of arrival before it stores a copy
(L{chat.cluster.acks.UNACKED_SECONDS}), and the drain of that copy."""
SUSPECT_SECONDS = 300.0
"""How long a node whose subscription was interrupted remembers the
messages it had just received, to recognise stored copies of them."""


class MessageIds:
    """
    Cluster-unique message ids: a random token per process and a counter,
    in ASCII (they are stored in a text column and framed on the bus).
    """

    __slots__ = ("_token", "_count")

    def __init__(self) -> None:
        self._token = os.urandom(6).hex().encode("ascii")
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return b"%s.%x" % (self._token, self._count)


class DeliveredRecently:
    """
    The ids of the messages from the bus that this node delivered to a
    live session lately.

    A publisher stores a copy of what no node acknowledged in time
    (L{chat.cluster.acks}); when it was delivered here after all (the
    acknowledgement was lost, or late) it would come twice.  So this node
    remembers what it delivered for L{REMEMBER_SECONDS}, and when its own
    subscription is interrupted it keeps those ids for L{SUSPECT_SECONDS},
    long enough for the stored copies to be drained and recognised.

    Only deliveries count, each to its recipient: a message that arrived
    for a user who had just logged out is stored with its id, and must not
    be taken for a copy of itself when that user's drain finds it; nor may
    a group message delivered to one member hide the copy stored for
    another.
    """

    def __init__(self) -> None:
        self._recent: deque[tuple[float, Delivery]] = deque()
        self._recentIds: set[Delivery] = set()
        self._kept: deque[tuple[float, set[Delivery]]] = deque()

    def add(self, delivery: Delivery, now: float) -> None:
        recent = self._recent
        recent.append((now, delivery))
        self._recentIds.add(delivery)
        while recent[0][0] < now - REMEMBER_SECONDS:
            self._recentIds.discard(recent.popleft()[1])

    def discard(self, delivery: Delivery) -> None:
        """
        C{delivery} did not happen after all (its session closed before
        writing it): its stored copy is the message now.
        """
        self._recentIds.discard(delivery)
        for _, ids in self._kept:
            ids.discard(delivery)

    def keepRecent(self, now: float) -> None:
        """The subscription was interrupted: keep what arrived lately for
        longer."""
        while self._kept and self._kept[0][0] < now:
            self._kept.popleft()
        if self._recentIds:
            self._kept.append((now + SUSPECT_SECONDS, self._recentIds))
        self._recent, self._recentIds = deque(), set()

    def __contains__(self, delivery: Delivery) -> bool:
        return delivery in self._recentIds or any(
            delivery in ids for _, ids in self._kept)
