"""
Unit tests for L{chat.cluster.resp}, Redis's wire format.  (The bus itself
is tested end to end against real redis-server processes in
test_e2e_cluster and test_e2e_faults.)
"""

import txredisapi
from twisted.trial.unittest import SynchronousTestCase

from chat.cluster.resp import RESPReader, encodeCommand

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




class EncodeCommandTests(SynchronousTestCase):
    def test_arguments(self) -> None:
        """Bytes as they are, str as UTF-8, int in decimal."""
        self.assertEqual(encodeCommand("SET", b"k\r\n", "é", 12),
                         b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n"
                         b"$2\r\n\xc3\xa9\r\n$2\r\n12\r\n")

    def test_readBack(self) -> None:
        """What is encoded reads back as the same bulk strings."""
        self.assertEqual(RESPReader().feed(encodeCommand("PUBLISH", "c", b"m")),
                         [[b"PUBLISH", b"c", b"m"]])
