"""
Unit tests for L{chat.cluster.acks}: the publisher's and the receiver's
ledgers of proof of arrival, and the wire form of an acknowledgement.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from chat.cluster import acks
from chat.cluster.acks import (
    UNACKED_SECONDS, PendingAcks, Unacknowledged, decodeSeqs, encodeSeqs,
)
from chat.core.messages import ChatEvent


def event(text: str) -> ChatEvent:
    return ChatEvent(1, "alice", text, "2024-01-01 12:00:00", toId=2)


class UnacknowledgedTests(SynchronousTestCase):
    def test_settledByAsManyAcksAsCounted(self) -> None:
        """
        A publish Redis counted for two subscribers is settled by two
        acknowledgements, not one.
        """
        ledger = Unacknowledged()
        ledger.published(1, 2, event("a"), 2, now=0.0)
        ledger.acknowledged([1])
        self.assertEqual(len(ledger), 1)
        ledger.acknowledged([1])
        self.assertEqual(len(ledger), 0)
        self.assertEqual(ledger.bytes, 0)

    def test_overdue(self) -> None:
        """
        What was not acknowledged within UNACKED_SECONDS is handed out,
        oldest first, once; an acknowledgement that comes later is
        ignored.
        """
        ledger = Unacknowledged()
        first, second, third = event("1"), event("2"), event("3")
        ledger.published(1, 2, first, 1, now=0.0)
        ledger.published(2, 3, second, 1, now=0.5)
        ledger.published(3, 4, third, 1, now=1.0)
        ledger.acknowledged([2])
        self.assertEqual(ledger.overdue(UNACKED_SECONDS - 0.1), [])
        self.assertEqual(ledger.overdue(UNACKED_SECONDS + 1.0),
                         [(2, first), (4, third)])
        ledger.acknowledged([1, 3])
        self.assertEqual(ledger.overdue(100.0), [])

    def test_boundedInBytes(self) -> None:
        """Past its byte bound the oldest go at once, whatever the time."""
        self.patch(acks, "MAX_UNACKED_BYTES", 3 * len(event("x").toJSON()))
        ledger = Unacknowledged()
        for seq in range(1, 6):
            ledger.published(seq, seq, event("x"), 1, now=0.0)
        self.assertEqual([u for u, _ in ledger.overdue(0.0)], [1, 2])
        self.assertEqual(len(ledger), 3)

    def test_takeAll(self) -> None:
        ledger = Unacknowledged()
        ledger.published(7, 2, event("a"), 1, now=0.0)
        self.assertEqual([u for u, _ in ledger.takeAll()], [2])
        self.assertEqual((len(ledger), ledger.bytes), (0, 0))


class PendingAcksTests(SynchronousTestCase):
    def test_bySender(self) -> None:
        pending = PendingAcks()
        pending.add(b"n1", 1)
        pending.add(b"n2", 5)
        pending.add(b"n1", 2)
        self.assertEqual(pending.take(), {b"n1": [1, 2], b"n2": [5]})
        self.assertEqual(pending.take(), {})


class WireTests(SynchronousTestCase):
    def test_ranges(self) -> None:
        self.assertEqual(encodeSeqs([3, 1, 2, 10, 12, 13]), b"1-3,a,c-d")
        self.assertEqual(decodeSeqs(b"1-3,a,c-d"), [1, 2, 3, 10, 12, 13])

    @given(st.sets(st.integers(min_value=1, max_value=10**9), min_size=1,
                   max_size=200))
    def test_roundTrip(self, seqs: set[int]) -> None:
        self.assertEqual(decodeSeqs(encodeSeqs(seqs)), sorted(seqs))

    def test_garbage(self) -> None:
        for bad in (b"", b"x", b"5-1", b"1-99999999"):
            with self.assertRaises(ValueError):
                decodeSeqs(bad)
