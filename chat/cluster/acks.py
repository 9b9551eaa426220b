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

This module holds the two ledgers and the wire form of an
acknowledgement; it does no I/O (the Redis bus sends and receives).
"""

from __future__ import annotations

from typing import Iterable

from chat.core.messages import ChatEvent

ACK_SECONDS = 0.1
"""How often a receiving node acknowledges what it has taken."""
UNACKED_SECONDS = 3.0
"""How long a publisher waits for the proof before storing a copy."""
MAX_UNACKED_BYTES = 64 << 20
"""The most a publisher keeps waiting for proof; past it, the oldest are
stored at once."""


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
