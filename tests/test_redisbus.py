"""
Unit tests for the pure parts of the Redis bus: the reply reader and the
memory of received message ids.  (The bus itself is tested end to end
against real redis-server processes in test_e2e_cluster and
test_e2e_faults.)
"""

import txredisapi
from twisted.trial.unittest import SynchronousTestCase

from chat.cluster.dedup import SUSPECT_SECONDS, UNCERTAIN_SECONDS, DeliveredRecently
from chat.cluster.resp import RESPReader

STREAM = (b"*3\r\n$7\r\nmessage\r\n$11\r\nchat:user:7\r\n$5\r\nhello\r\n"
          b":5\r\n+OK\r\n-ERR wrong\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n$-1\r\n")
REPLIES = [[b"message", b"chat:user:7", b"hello"], 5, "OK",
           txredisapi.ResponseError("wrong"), [b"pong", b""], None]


class RESPReaderTests(SynchronousTestCase):
    """
    Replies come out whole and in txredisapi's shapes, however the stream
    is cut.
    """

    def assertReplies(self, replies: list) -> None:
        self.assertEqual(len(replies), len(REPLIES))
        for got, expected in zip(replies, REPLIES):
            if isinstance(expected, Exception):
                self.assertIsInstance(got, type(expected))
                self.assertEqual(got.args, expected.args)
            else:
                self.assertEqual(got, expected)

    def test_wholeStream(self) -> None:
        self.assertReplies(RESPReader().feed(STREAM))

    def test_byteByByte(self) -> None:
        reader = RESPReader()
        replies = []
        for i in range(len(STREAM)):
            replies += reader.feed(STREAM[i:i + 1])
        self.assertReplies(replies)

    def test_bulkContainingCRLF(self) -> None:
        """A bulk string is read by its length, not up to a CRLF."""
        reader = RESPReader()
        self.assertEqual(reader.feed(b"$4\r\na\r\nb\r\n"), [b"a\r\nb"])

    def test_garbage(self) -> None:
        with self.assertRaises(txredisapi.InvalidResponse):
            RESPReader().feed(b"?what\r\n")


class DeliveredRecentlyTests(SynchronousTestCase):
    """
    Ids received lately are remembered for a moment, and for much longer
    once the subscriber has lost Redis.
    """

    def test_forgottenAfterAWhile(self) -> None:
        seen = DeliveredRecently()
        seen.add((1, b"a"), 0.0)
        self.assertIn((1, b"a"), seen)
        seen.add((1, b"b"), UNCERTAIN_SECONDS + 2)
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
