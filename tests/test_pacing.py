"""
Tests for classic mode on the wire (PROTOCOL.md section 7): the L{Pacer}
and a paced L{OutputQueue} on a Clock, and the classic login ack that fits
the classic client's 1024-byte read.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from chat.core.messages import ChatEvent, Friend, LoggedIn, Login
from chat.server.output import OutputQueue
from chat.server.pacing import SPACING, Pacer
from chat.wire.jsondialect import CLASSIC, CLASSIC_READ, JSON


def event(text: str, to: int = 2) -> ChatEvent:
    return ChatEvent(1, "alice", text, "2024-01-01 12:00:00", toId=to)


class RecordingTransport(StringTransport):
    """Keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class FakeAcks:
    """An ack tracker whose peer acknowledges when the test says."""

    def __init__(self) -> None:
        self.acked = True
        self.settled = 0

    def settle(self) -> None:
        self.settled += 1

    def allAcked(self) -> bool:
        return self.acked


class PacerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.acks = FakeAcks()
        self.woken: list[bool] = []
        self.pacer = Pacer(self.clock, self.acks,  # type: ignore[arg-type]
                           lambda: self.woken.append(True))

    def test_spacing(self) -> None:
        self.assertTrue(self.pacer.ready())
        self.pacer.sent()
        self.assertFalse(self.pacer.ready())
        self.clock.advance(SPACING)
        self.assertTrue(self.pacer.ready())

    def test_waitsForTheAcknowledgement(self) -> None:
        """Spaced enough but not acknowledged: not yet."""
        self.pacer.sent()
        self.acks.acked = False
        self.clock.advance(1.0)
        self.assertFalse(self.pacer.ready())
        self.acks.acked = True
        self.assertTrue(self.pacer.ready())

    def test_wakesOnce(self) -> None:
        self.pacer.sent()
        self.pacer.wait()
        self.pacer.wait()
        self.clock.advance(SPACING)
        self.assertEqual(self.woken, [True])
        self.pacer.wait()
        self.pacer.stop()
        self.clock.advance(1)
        self.assertEqual(self.woken, [True])


class PacedOutputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport()
        self.output = OutputQueue(self.transport, self.clock, limit=1 << 20)
        self.output.pace()

    def test_oneObjectPerWrite(self) -> None:
        """
        Replies and events queued together go out one per write, at
        least SPACING apart, in order.
        """
        self.output.write(b"reply\n")
        self.output.offer(b"e1\n", event("1"), 2)
        self.output.offer(b"e2\n", event("2"), 2)
        self.assertEqual(self.transport.writes, [b"reply\n"])
        self.clock.advance(SPACING)
        self.assertEqual(self.transport.writes, [b"reply\n", b"e1\n"])
        self.clock.advance(SPACING)
        self.assertEqual(self.transport.writes, [b"reply\n", b"e1\n", b"e2\n"])
        self.assertEqual(self.output.queuedBytes, 0)

    def test_countsTowardTheLimit(self) -> None:
        """What waits for its turn is bounded like any output."""
        output = OutputQueue(RecordingTransport(), self.clock, limit=10)
        output.pace()
        # each costs its bytes and its one-character text
        self.assertTrue(output.offer(b"1234", event("1"), 2))  # written
        self.assertTrue(output.offer(b"1234", event("2"), 2))  # waits
        self.assertTrue(output.offer(b"1234", event("3"), 2))  # waits
        self.assertFalse(output.offer(b"1", event("4"), 2))
        self.assertTrue(output.overflowed)

    def test_releaseAfterLogin(self) -> None:
        """
        The login ack, then the offline messages that did not fit, then
        the events held meanwhile: each alone.
        """
        self.output.hold()
        self.output.offer(b"live\n", event("live"), 2)
        self.output.release(b"ack\n", [(b"o1\n", (2, event("o1"))),
                                       (b"o2\n", (2, event("o2")))])
        for _ in range(5):
            self.clock.advance(SPACING)
        self.assertEqual(self.transport.writes,
                         [b"ack\n", b"o1\n", b"o2\n", b"live\n"])


class ClassicLoginAckTests(SynchronousTestCase):
    def offline(self, count: int) -> tuple[ChatEvent, ...]:
        return tuple(event(f"stored message number {i}") for i in range(count))

    def test_fitsTheRead(self) -> None:
        """
        With 30 stored messages the classic ack carries the oldest that
        fit in 1024 bytes; the rest come after it, oldest first.
        """
        reply = LoggedIn(2, "bob", (Friend(1, "alice", True),), (),
                         self.offline(30))
        fitted, rest = CLASSIC.fitLogin(reply)
        data = CLASSIC.encodeReply(Login(2, "pw"), fitted)
        assert data is not None
        self.assertLessEqual(len(data), CLASSIC_READ)
        self.assertGreater(len(fitted.offline), 0)
        self.assertEqual(fitted.offline + rest, reply.offline)
        # One more would not have fitted.
        more = LoggedIn(2, "bob", reply.friends, (),
                        reply.offline[:len(fitted.offline) + 1])
        longer = CLASSIC.encodeReply(Login(2, "pw"), more)
        assert longer is not None
        self.assertGreater(len(longer), CLASSIC_READ)
        parsed = json.loads(data)
        self.assertEqual(len(parsed["offlinemsg"]), len(fitted.offline))

    def test_notCut(self) -> None:
        """Non-classic JSON and few messages: the ack carries them all."""
        reply = LoggedIn(2, "bob", (), (), self.offline(30))
        self.assertEqual(JSON.fitLogin(reply), (reply, ()))
        few = LoggedIn(2, "bob", (), (), self.offline(2))
        self.assertEqual(CLASSIC.fitLogin(few), (few, ()))

    def test_longFriendListWhole(self) -> None:
        """
        A friend list too long for 1024 bytes goes whole (the classic
        client's own limit), with no offline message in the ack.
        """
        friends = tuple(Friend(i, f"friend{i:03d}", False) for i in range(40))
        reply = LoggedIn(2, "bob", friends, (), self.offline(3))
        fitted, rest = CLASSIC.fitLogin(reply)
        self.assertEqual((fitted.friends, fitted.offline, rest),
                         (friends, (), reply.offline))
