"""
Proof of arrival between nodes (PROTOCOL.md section 5; DESIGN.md 5c).

PUBLISH counts a subscriber as soon as Redis has queued the copy for it,
not when that node has it: a node can die after Redis counted it, Redis
can drop a subscriber it counted (its output buffer past
C{client-output-buffer-limit pubsub}, C{CLIENT KILL TYPE pubsub}, a
network drop), and Redis itself can die with copies still queued.  So
every node numbers what it publishes, each receiving node acknowledges
what it has taken responsibility for (delivered to a live connection, or
stored) to the publishing node, batched every L{ACK_SECONDS}, and the
publisher stores, as an uncertain copy, whatever Redis counted that has
not been acknowledged by as many nodes within L{UNACKED_SECONDS}.  The
copies are recognised at the drain by their message ids
(L{chat.cluster.dedup}): a rare duplicate, never a loss.

This module holds the publish numbers, the two ledgers, the clock that
decides what is overdue (L{Proofs}) and the wire form of an
acknowledgement; it does no I/O: the Redis bus sends and receives, and
the receiver it is handed stores.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from chat.cluster.bus import PublishOutcome
from chat.core.messages import ChatEvent

ACK_SECONDS = 0.1
"""How often a receiving node acknowledges what it has taken."""
UNACKED_SECONDS = 3.0
"""How long a publisher waits for the proof before storing a copy."""
MAX_UNACKED_BYTES = 64 << 20
"""The most a publisher keeps waiting for proof; past it, the oldest are
stored at once."""
STOP_ACK_SECONDS = 0.5
"""How long a stopping node waits for the last acknowledgements of what it
published, before it stores the rest as uncertain copies."""

Uncertain = list[tuple[int, ChatEvent]]
"""C{(userId, event)}s that Redis counted but no node acknowledged."""


class _Published:
    __slots__ = ("deadline", "userId", "event", "missing")

    def __init__(self, deadline: float, userId: int, event: ChatEvent,
                 missing: int) -> None:
        self.deadline = deadline
        self.userId = userId
        self.event = event
        self.missing = missing


class Unacknowledged:
    """
    The publisher's ledger: what Redis counted, by publish number, with
    how many acknowledgements are still missing.  Publish numbers grow
    with time, so the oldest entries are always first.

    @ivar bytes: the size of the events waiting, for the bound.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, _Published] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def published(self, seq: int, userId: int, event: ChatEvent, count: int,
                  now: float) -> None:
        """Redis counted C{count} subscribers for publish C{seq}."""
        self._waiting[seq] = _Published(now + UNACKED_SECONDS, userId, event,
                                        count)
        self.bytes += len(event.toJSON())

    def acknowledged(self, seqs: Iterable[int]) -> None:
        """One node has taken each of these publishes."""
        waiting = self._waiting
        for seq in seqs:
            entry = waiting.get(seq)
            if entry is None:
                continue  # settled already, or stored as overdue
            entry.missing -= 1
            if entry.missing <= 0:
                del waiting[seq]
                self._forget(entry)

    def overdue(self, now: float) -> list[tuple[int, ChatEvent]]:
        """
        Whatever has waited too long for its proof (or must go to keep
        the ledger within its bound), oldest first, forgotten here.
        """
        waiting = self._waiting
        late: list[tuple[int, ChatEvent]] = []
        while waiting:
            seq = next(iter(waiting))
            entry = waiting[seq]
            if entry.deadline > now and self.bytes <= MAX_UNACKED_BYTES:
                break
            del waiting[seq]
            late.append(self._forget(entry))
        return late

    def takeAll(self) -> list[tuple[int, ChatEvent]]:
        """Everything still waiting, oldest first (a stopping node)."""
        entries = list(self._waiting.values())
        self._waiting = {}
        return [self._forget(entry) for entry in entries]

    def _forget(self, entry: _Published) -> tuple[int, ChatEvent]:
        self.bytes -= len(entry.event.toJSON())
        return entry.userId, entry.event


class PendingAcks:
    """
    The receiver's ledger: what it has taken since its last
    acknowledgement, by publishing node.
    """

    def __init__(self) -> None:
        self._bySender: dict[bytes, list[int]] = {}

    def add(self, sender: bytes, seq: int) -> None:
        seqs = self._bySender.get(sender)
        if seqs is None:
            self._bySender[sender] = [seq]
        else:
            seqs.append(seq)

    def take(self) -> dict[bytes, list[int]]:
        bySender, self._bySender = self._bySender, {}
        return bySender


class Proofs:
    """
    One node's proof of arrival, both ways: it numbers what the node
    publishes and keeps what Redis counted until as many nodes have
    acknowledged it, and it keeps what the node took from other nodes
    until it has acknowledged that.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime,
                 uncertain: Callable[[Uncertain],
                                     Optional[Deferred[None]]]) -> None:
        """
        @param uncertain: stores what no node acknowledged in time; fires
            once stored.
        """
        self._clock = clock
        self._uncertain = uncertain
        self._seq = 0
        self._unacked = Unacknowledged()
        self._pendingAcks = PendingAcks()

    # What this node publishes -------------------------------------------

    def numbered(self, count: int) -> range:
        """The publish numbers of the next C{count} publishes."""
        first = self._seq + 1
        self._seq += count
        return range(first, first + count)

    def counted(self, outcomes: list[PublishOutcome], seqs: range,
                userIds: Sequence[int],
                event: ChatEvent) -> list[PublishOutcome]:
        """
        Redis answered the publishes C{seqs} of C{event} to C{userIds}:
        what it counted as taken waits for its proof.
        """
        now = self._clock.seconds()
        for seq, userId, outcome in zip(seqs, userIds, outcomes):
            if isinstance(outcome, int) and outcome > 0:
                self._unacked.published(seq, userId, event, outcome, now)
        return outcomes

    def acknowledged(self, seqs: bytes) -> None:
        """
        A node acknowledged the publishes C{seqs} (L{encodeSeqs}'s form).

        @raise ValueError: not that form.
        """
        self._unacked.acknowledged(decodeSeqs(seqs))

    def settle(self) -> None:
        """
        Every L{ACK_SECONDS}: store what nobody acknowledged in time (or
        what the bound on the ledger no longer keeps).
        """
        overdue = self._unacked.overdue(self._clock.seconds())
        if overdue:
            self._log.warn("storing {n} messages that Redis counted but no "
                           "node acknowledged", n=len(overdue))
            self._uncertain(overdue)

    def storeAll(self) -> Deferred[None]:
        """
        Before a clean stop: give the nodes that took this node's last
        messages L{STOP_ACK_SECONDS} to acknowledge them, then store what
        is still unproven.  Fires once it is stored.
        """
        def store(_: object) -> Optional[Deferred[None]]:
            uncertain = self._unacked.takeAll()
            return self._uncertain(uncertain) if uncertain else None

        wait: Deferred[None] = deferLater(self._clock, STOP_ACK_SECONDS,
                                          lambda: None) \
            if len(self._unacked) else succeed(None)
        return wait.addCallback(store)

    # What this node takes -----------------------------------------------

    def took(self, sender: bytes, seq: int) -> None:
        """
        This node delivered, or stored, publish C{seq} of node C{sender}:
        to be acknowledged.
        """
        self._pendingAcks.add(sender, seq)

    def owed(self) -> dict[bytes, bytes]:
        """
        The acknowledgements to send now, by publishing node, in
        L{encodeSeqs}'s form.
        """
        return {sender: encodeSeqs(seqs)
                for sender, seqs in self._pendingAcks.take().items()}


def encodeSeqs(seqs: Iterable[int]) -> bytes:
    """
    Publish numbers as ranges of hex, C{a-f,10,12-14}: a receiver taking
    most of one publisher's messages acknowledges a run in a few bytes.
    """
    ordered = sorted(set(seqs))
    parts: list[bytes] = []
    start = previous = None
    for seq in ordered:
        if previous is not None and seq == previous + 1:
            previous = seq
            continue
        if start is not None and previous is not None:
            parts.append(_range(start, previous))
        start = previous = seq
    if start is not None and previous is not None:
        parts.append(_range(start, previous))
    return b",".join(parts)


def _range(start: int, end: int) -> bytes:
    return b"%x" % start if start == end else b"%x-%x" % (start, end)


def decodeSeqs(data: bytes) -> list[int]:
    """
    The publish numbers of L{encodeSeqs}'s bytes.

    @raise ValueError: not that form.
    """
    seqs: list[int] = []
    for part in data.split(b","):
        start, _, end = part.partition(b"-")
        first = int(start, 16)
        last = int(end, 16) if end else first
        if last < first or last - first > 1_000_000:
            raise ValueError(f"bad range {part!r}")
        seqs.extend(range(first, last + 1))
    return seqs
