"""
Unit tests for L{chat.cluster.dedup}: message ids, the memory of
deliveries and of publishes still uncertain.
"""

from twisted.trial.unittest import SynchronousTestCase

from chat.cluster.dedup import (
    REMEMBER_SECONDS, SUSPECT_SECONDS, DeliveredRecently, MessageIds,
)


class DeliveredRecentlyTests(SynchronousTestCase):
    """
    Ids received lately are remembered for a moment, and for much longer
    once the subscriber has lost Redis.
    """

    def test_forgottenAfterAWhile(self) -> None:
        seen = DeliveredRecently()
        seen.add((1, b"a"), 0.0)
        self.assertIn((1, b"a"), seen)
        seen.add((1, b"b"), REMEMBER_SECONDS + 1)
        self.assertNotIn((1, b"a"), seen)
        self.assertIn((1, b"b"), seen)

    def test_keptAfterLinkLoss(self) -> None:
        seen = DeliveredRecently()
        seen.add((1, b"a"), 0.0)
        seen.keepRecent(1.0)
        seen.add((1, b"b"), 100.0)
        self.assertIn((1, b"a"), seen)
        seen.keepRecent(SUSPECT_SECONDS + 2)
        self.assertNotIn((1, b"a"), seen)
        self.assertIn((1, b"b"), seen)

    def test_perRecipient(self) -> None:
        """A delivery is one message to one recipient."""
        seen = DeliveredRecently()
        seen.add((1, b"a"), 0.0)
        self.assertNotIn((2, b"a"), seen)

    def test_discard(self) -> None:
        """A delivery taken back is forgotten, also once kept for longer."""
        seen = DeliveredRecently()
        seen.add((1, b"a"), 0.0)
        seen.add((1, b"b"), 0.0)
        seen.discard((1, b"a"))
        self.assertNotIn((1, b"a"), seen)
        seen.keepRecent(1.0)
        seen.discard((1, b"b"))
        self.assertNotIn((1, b"b"), seen)


class MessageIdsTests(SynchronousTestCase):
    def test_unique(self) -> None:
        """Ids differ within a process and between two generators."""
        one, two = MessageIds(), MessageIds()
        ids = {one.next() for _ in range(1000)} | {two.next() for _ in range(1000)}
        self.assertEqual(len(ids), 2000)
        self.assertTrue(all(i.isascii() and len(i) <= 40 for i in ids))
