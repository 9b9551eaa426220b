"""
Tests for fencing (PROTOCOL.md section 6, "A node that lost its lease acts
for nobody"): the L{Lease} on a Clock, and a service whose lease lapses
under a L{Presence} that renews it on the same Clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chat.cluster.presence import HOLD_FRACTION, Lease, Presence
from chat.core.errors import Unavailable
from chat.core.messages import Chat, ChatEvent, ChatSent, Login, Ping, Pong
from tests.test_service import NODE, TIME, FakeSession, ServiceTestCase

SECONDS = 10.0
HOLDS = SECONDS * HOLD_FRACTION


class LeaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lease = Lease(SECONDS, self.clock)
        self.confirmed: list[bool] = []
        self.lease.onConfirmed(lambda: self.confirmed.append(True))

    def test_holdsForAFraction(self) -> None:
        """
        A lease holds, by this node's clock, for a fraction of its period:
        another node may take over only after the whole period by the
        database's.
        """
        self.clock.advance(HOLDS - 0.01)
        self.assertTrue(self.lease.holds())
        self.clock.advance(0.02)
        self.assertFalse(self.lease.holds())

    def test_renewalExtendsFromItsSending(self) -> None:
        self.clock.advance(5)
        self.assertTrue(self.lease.renewed(sentAt=4.0))
        self.clock.advance(HOLDS - 1.5)
        self.assertTrue(self.lease.holds())
        self.clock.advance(1)
        self.assertFalse(self.lease.holds())

    def test_afterALapseOnlyConfirmation(self) -> None:
        """
        A renewal after a lapse does not make the lease hold: only the
        check of the sessions that follows it does, once.
        """
        self.clock.advance(HOLDS + 1)
        self.assertFalse(self.lease.renewed(sentAt=self.clock.seconds()))
        self.assertFalse(self.lease.holds())
        self.lease.confirm()
        self.assertTrue(self.lease.holds())
        self.lease.confirm()
        self.assertEqual(self.confirmed, [True])


class LapseTests(ServiceTestCase):
    """A service whose lease lapses, and the renewal that mends it."""

    def makeLease(self) -> Lease:
        self.clock = Clock()
        return Lease(SECONDS, self.clock)

    def setUp(self) -> None:
        super().setUp()
        self.presence = Presence(self.store, NODE, self.lease,
                                 self.service.sessions, self.clock,
                                 interval=1.0)

    async def renew(self) -> None:
        await self.presence.renew()

    async def test_requestsRefusedWhileLapsed(self) -> None:
        """
        While the lease does not hold, every request but PING is refused
        with 107 and nothing is delivered; after the renewal and the check
        of sessions, requests work again.
        """
        alice = await self.register("alice")
        bob = await self.register("bob")
        aliceSession, _ = await self.login(alice)
        bobSession, _ = await self.login(bob)
        self.clock.advance(HOLDS + 1)
        await self.fails(Unavailable, aliceSession, Chat(bob, "paused"))
        self.assertEqual(await self.call(aliceSession, Ping()), Pong())
        self.assertEqual(bobSession.events, [])
        await self.renew()
        self.assertTrue(self.lease.holds())
        self.assertEqual(await self.call(aliceSession, Chat(bob, "back")),
                         ChatSent(online=True))
        # (Behind the drain that the confirmation starts for every
        # session.)
        await self.eventually(lambda: bobSession.texts == ["back"])

    async def test_arrivalsWaitForConfirmation(self) -> None:
        """
        What the bus brings while the lease does not hold waits; once the
        renewal has confirmed the sessions, it goes to those still here,
        and to the store for those another node took over meanwhile.
        """
        alice = await self.register("alice")
        bob = await self.register("bob")
        carol = await self.register("carol")
        bobSession, _ = await self.login(bob)
        carolSession, _ = await self.login(carol)
        self.clock.advance(HOLDS + 1)
        router = self.service.router
        forBob = router.eventArrived(bob, ChatEvent(
            alice, "alice", "to bob", TIME, toId=bob, messageId=b"n.1"))
        forCarol = router.eventArrived(carol, ChatEvent(
            alice, "alice", "to carol", TIME, toId=carol, messageId=b"n.2"))
        self.assertIsNotNone(forBob)
        self.assertEqual((bobSession.events, carolSession.events), ([], []))
        await self.pool.runOperation(
            "UPDATE sessions SET node_id = 'other' WHERE user_id = ?",
            (carol,))
        await self.renew()
        await forBob
        await forCarol
        self.assertEqual(bobSession.texts, ["to bob"])
        self.assertEqual(carolSession.events, [])
        self.assertEqual(len(carolSession.disconnected), 1)
        self.assertEqual(
            [e.text for e in (await self.store.takeOffline(carol)).events],
            ["to carol"])

    async def test_routingRefusedWhileLapsed(self) -> None:
        """A request already under way when the lease lapses routes
        nothing: it fails with 107."""
        bob = await self.register("bob")
        await self.login(bob)
        self.clock.advance(HOLDS + 1)
        with self.assertRaises(Unavailable):
            self.service.router.route(
                [(bob, None)], ChatEvent(1, "x", "late", TIME, toId=bob))

    async def test_loginRefusedWhileLapsed(self) -> None:
        await self.register("alice")
        self.clock.advance(HOLDS + 1)
        await self.fails(Unavailable, FakeSession(), Login("alice", "pw"))
