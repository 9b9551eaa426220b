"""
Tests for L{chat.server.output.OutputQueue}: one connection's bounded
output, over a StringTransport and a Clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chat.core.messages import ChatEvent
from chat.server.output import OutputQueue

LIMIT = 100


def event(text: str) -> ChatEvent:
    return ChatEvent(1, "alice", text, "2024-01-01 12:00:00", toId=2)


class OutputQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.transport = StringTransport()
        self.clock = Clock()
        self.readable: list[bool] = []
        self.stalled: list[bool] = []
        self.output = OutputQueue(
            self.transport, self.clock, limit=LIMIT, stallTimeout=120,
            readable=lambda: self.readable.append(True),
            stalled=lambda: self.stalled.append(True))

    def test_registeredAsStreamingProducer(self) -> None:
        self.assertIs(self.transport.producer, self.output)
        self.assertTrue(self.transport.streaming)

    def test_writesAtOnceWhileOpen(self) -> None:
        """Nothing waits while Twisted has not paused the queue."""
        self.assertTrue(self.output.offer(b"e1", event("1"), 2))
        self.output.write(b"r1")
        self.assertEqual(self.transport.value(), b"e1r1")
        self.assertEqual(self.output.queuedBytes, 0)

    def test_boundedWhilePaused(self) -> None:
        """
        Paused, events wait up to the limit; the one that would pass it
        is refused, and so is every later one, however small; replies are
        never refused.
        """
        self.output.pauseProducing()
        # each event costs its bytes and its one-character text
        self.assertTrue(self.output.offer(b"x" * 59, event("1"), 2))
        self.assertTrue(self.output.offer(b"y" * 39, event("2"), 2))
        self.assertFalse(self.output.offer(b"z", event("3"), 2))
        self.assertTrue(self.output.overflowed)
        self.assertFalse(self.output.offer(b"w", event("4"), 2))
        self.output.write(b"reply")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.output.queuedBytes, 105)
        self.assertEqual(self.output.room(), 0)

    def test_resumeWritesInOrderThenReadable(self) -> None:
        """
        Resumed, what waited is written in order; once below a quarter of
        the limit, a backlog becomes readable (once).
        """
        self.output.pauseProducing()
        self.output.offer(b"a" * 60, event("1"), 2)
        self.output.write(b"r")
        self.output.offer(b"b" * 50, event("2"), 2)
        self.assertEqual(self.readable, [])
        self.output.resumeProducing()
        self.assertEqual(self.transport.value(), b"a" * 60 + b"r")
        self.assertEqual(self.readable, [True])
        self.assertFalse(self.output.overflowed)
        self.assertTrue(self.output.offer(b"c", event("3"), 2))

    def test_stillOverAQuarter(self) -> None:
        """A resume that leaves more than a quarter waiting (the transport
        paused again) keeps refusing."""
        self.output.pauseProducing()
        for i in range(5):
            self.output.offer(b"%02d" % i + b"." * 18, event(str(i)), 2)
        self.output.offer(b"!" * 30, event("over"), 2)
        # Pause again after the first write, as Twisted does when its
        # buffer passes its size.
        write = self.transport.write
        self.transport.write = lambda data: (  # type: ignore[method-assign]
            write(data), self.output.pauseProducing())
        self.output.resumeProducing()
        self.assertTrue(self.output.overflowed)
        self.assertEqual(self.readable, [])

    def test_stallTimeout(self) -> None:
        """Over the limit for the stall timeout: stalled; not before."""
        self.output.pauseProducing()
        self.output.offer(b"x" * 101, event("1"), 2)
        self.clock.advance(119)
        self.assertEqual(self.stalled, [])
        self.clock.advance(1)
        self.assertEqual(self.stalled, [True])

    def test_stallTimerCancelledWhenReadable(self) -> None:
        self.output.pauseProducing()
        self.output.offer(b"x" * 101, event("1"), 2)
        self.output.resumeProducing()
        self.clock.advance(200)
        self.assertEqual(self.stalled, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_holdAndRelease(self) -> None:
        """
        Held (a login reply pending), events wait; the reply goes out
        first, then they do.
        """
        self.output.hold()
        self.output.offer(b"e1", event("1"), 2)
        self.output.offer(b"e2", event("2"), 2)
        self.assertEqual(self.transport.value(), b"")
        self.output.release(b"reply")
        self.assertEqual(self.transport.value(), b"replye1e2")

    def test_takeEvents(self) -> None:
        """
        The events that waited, with their users, in order; replies stay
        and are still written.
        """
        self.output.pauseProducing()
        one, two = event("1"), event("2")
        self.output.offer(b"e1", one, 2)
        self.output.write(b"r")
        self.output.offer(b"e2", two, 3)
        self.assertEqual(self.output.takeEvents(), [(2, one), (3, two)])
        self.assertEqual(self.output.queuedBytes, 1)
        self.output.resumeProducing()
        self.assertEqual(self.transport.value(), b"r")

    def test_forcedOverTheLimit(self) -> None:
        """A drained event, sized by room(), is taken even past the limit."""
        self.output.pauseProducing()
        self.output.offer(b"x" * 89, event("1"), 2)
        self.assertEqual(self.output.room(), 10)
        self.assertTrue(self.output.offer(b"y" * 49, event("2"), 2,
                                          force=True))
        self.assertEqual(self.output.queuedBytes, 140)

    def test_eventMemoryCounts(self) -> None:
        """
        What an event holds (its text, its cached encodings) counts with
        the bytes to write: the limit bounds memory, not only the wire.
        """
        self.output.pauseProducing()
        held = event("t" * 30)
        cost = 20 + 30
        self.assertTrue(self.output.offer(b"e" * 20, held, 2))
        self.assertEqual(self.output.queuedBytes, cost)
        self.assertEqual(self.output.room(), LIMIT - cost)

    def test_backlog(self) -> None:
        """A backlog declared refuses live events until readable."""
        self.output.pauseProducing()
        self.output.offer(b"x" * 10, event("1"), 2)
        self.output.backlog()
        self.assertFalse(self.output.offer(b"y", event("2"), 2))
        self.output.resumeProducing()
        self.assertEqual(self.readable, [True])

    def test_closeAfterFlush(self) -> None:
        """
        A close waits for what is queued, then unregisters the producer
        (else Twisted would not close) and closes.
        """
        self.output.pauseProducing()
        self.output.write(b"bye")
        self.output.close()
        self.assertFalse(self.transport.disconnecting)
        self.output.resumeProducing()
        self.assertEqual(self.transport.value(), b"bye")
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)

    def test_closeWhileHolding(self) -> None:
        """
        Closing while a login reply is pending writes the last notice at
        once; the held events stay to be stored.
        """
        self.output.hold()
        held = event("1")
        self.output.offer(b"e1", held, 2)
        self.output.close(b"NOTICE bye")
        self.assertEqual(self.transport.value(), b"NOTICE bye")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.output.takeEvents(), [(2, held)])
