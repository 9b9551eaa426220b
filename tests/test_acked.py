"""
Tests for L{chat.server.acked}: the ledger of what a TCP peer has
acknowledged, over real loopback sockets.
"""

from __future__ import annotations

import socket
import time

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from chat.server.acked import AckTracker, bytesAcked, plainSocket


class AckTrackerTests(SynchronousTestCase):
    def setUp(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.peer = socket.socket()
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.peer.connect(listener.getsockname())
        self.sock, _ = listener.accept()
        listener.close()
        self.addCleanup(self.peer.close)
        self.addCleanup(self.sock.close)
        start = bytesAcked(self.sock)
        if start is None:
            raise SkipTest("TCP_INFO has no tcpi_bytes_acked here")
        self.tracker: AckTracker[str] = AckTracker(self.sock, start)

    def write(self, name: str, size: int) -> None:
        data = b"x" * size
        self.sock.setblocking(False)
        sent = 0
        try:
            while sent < size:
                sent += self.sock.send(data[sent:])
        except BlockingIOError:
            pass
        self.tracker.written(sent, name)

    def test_acknowledgedForgotten(self) -> None:
        """What the peer acknowledged leaves the ledger."""
        self.write("a", 100)
        self.write("b", 100)
        time.sleep(0.05)
        self.tracker.settle()
        self.assertTrue(self.tracker.allAcked())
        self.assertEqual(self.tracker.unacknowledged(), [])

    def test_notReadNotAcknowledged(self) -> None:
        """
        A peer that does not read acknowledges only what fits its window;
        the rest is handed back, oldest first.
        """
        for i in range(100):
            self.write(str(i), 3000)
        time.sleep(0.05)
        self.tracker.settle()
        self.assertFalse(self.tracker.allAcked())
        left = self.tracker.unacknowledged()
        self.assertGreater(len(left), 50)
        self.assertEqual(left, [str(i) for i in range(100 - len(left), 100)])

    def test_notForOtherTransports(self) -> None:
        """No socket (or TLS): nothing is tracked."""
        self.assertIsNone(plainSocket(StringTransport()))
        self.assertIsNone(AckTracker.forSocket(None))
