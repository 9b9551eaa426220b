"""
Tests for L{chat.cluster.presence.Presence}: the node's lease renewal and the
ownership check that comes with it (DESIGN.md 4).

The renewal loop runs on a L{Clock}, so the test decides when a renewal
happens; the store is real (SQLite in a temp file), so its queries run on
adbapi's threads and the tests wait for them on the real reactor.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from chat.core.errors import Unavailable
from chat.cluster.presence import PURGE_EVERY, Presence
from tests.test_service import NODE, ServiceTestCase


class PresenceTests(ServiceTestCase):
    """A Presence over the service of L{ServiceTestCase}, on a Clock."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.presence = Presence(self.store, NODE, self.lease,
                                 self.service.sessions, self.clock,
                                 interval=1.0)
        self.logged: list[dict[str, Any]] = []
        self.presence._log = Logger(  # type: ignore[misc]
            namespace="chat.cluster.presence", observer=self.logged.append)
        self.checks: list[tuple[dict[int, Any], set[int]]] = []
        check = self.service.sessions.closeTakenOver

        def spy(before: dict[int, Any], owned: set[int]) -> None:
            self.checks.append((dict(before), set(owned)))
            check(before, owned)

        self.service.sessions.closeTakenOver = spy  # type: ignore[method-assign]
        self.renewals: list[str] = []
        renewLease = self.store.renewLease

        def countRenewals(nodeId: str,
                          purgeAfter: Optional[float]) -> Deferred[Any]:
            self.renewals.append(nodeId)
            return renewLease(nodeId, purgeAfter)

        self.store.renewLease = countRenewals  # type: ignore[method-assign]
        self.presence.startService()
        self.addCleanup(self.stopPresence)

    async def stopPresence(self) -> None:
        if self.presence.running:
            await self.presence.stopService()

    async def tick(self) -> None:
        """
        One renewal interval passes; wait until that renewal is done (it
        may have queued a second query, to read the session list).
        """
        self.clock.advance(self.presence.interval)
        await self.settle()
        await self.settle()

    async def lastSeen(self, node: str) -> Optional[float]:
        rows = await self.pool.runQuery(
            "SELECT last_seen FROM nodes WHERE node_id = ?", (node,))
        return rows[0][0] if rows else None

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.logged if e["log_level"] == LogLevel.warn]

    async def test_notAtStart(self) -> None:
        """The first renewal comes one interval after start, not at once."""
        self.assertEqual(self.renewals, [])
        await self.tick()
        self.assertEqual(self.renewals, [NODE])

    async def test_renewsLease(self) -> None:
        """Each renewal stamps this node's lease with the database clock."""
        await self.pool.runOperation(
            "UPDATE nodes SET last_seen = 0 WHERE node_id = ?", (NODE,))
        await self.tick()
        self.assertGreater(await self.lastSeen(NODE), 1e9)

    async def test_recreatesLostLease(self) -> None:
        """A lease row that vanished (cleared by hand, say) is added again."""
        await self.pool.runOperation("DELETE FROM nodes")
        await self.tick()
        self.assertIsNotNone(await self.lastSeen(NODE))

    async def test_checksOwnership(self) -> None:
        """
        Each renewal asks the service to check its sessions against what
        the database says this node holds, and a session another node took
        over is closed with a notice.
        """
        alice = await self.register("alice")
        bob = await self.register("bob")
        aliceSession, _ = await self.login(alice)
        bobSession, _ = await self.login(bob)
        await self.pool.runOperation(
            "UPDATE sessions SET node_id = 'other' WHERE user_id = ?",
            (alice,))
        await self.tick()
        [(before, owned)] = self.checks
        self.assertEqual(set(before), {alice, bob})
        self.assertEqual(owned, {bob})
        self.assertEqual(len(aliceSession.disconnected), 1)
        self.assertIsNone(aliceSession.userId)
        self.assertEqual(bobSession.disconnected, [])
        self.assertEqual(set(self.service.sessions.userIds()), {bob})

    async def test_keepsRenewing(self) -> None:
        """Renewal goes on, interval after interval."""
        for _ in range(3):
            await self.tick()
        self.assertEqual(self.renewals, [NODE] * 3)

    async def test_noListReadWhileCountsAgree(self) -> None:
        """
        While the database counts as many sessions for this node as there
        are here, a renewal does not read and compare the whole list (with
        thousands of sessions that would stall every connection each
        second); nobody is disconnected.
        """
        sessions = [(await self.login(await self.register(name)))[0]
                    for name in ("alice", "bob")]
        for _ in range(3):
            await self.tick()
        self.assertEqual(self.checks, [])
        self.assertEqual([s.disconnected for s in sessions], [[], []])

    async def test_failureLoggedOnceAndRenewalContinues(self) -> None:
        """
        While the database is down, each renewal fails: the first failure
        is logged as a warning, the rest are not, no session is judged on
        a missing answer, and the loop keeps trying; once renewal works
        again that is logged, and a new outage is reported anew.
        """
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        renewLease = self.store.renewLease
        calls: list[str] = []
        down = [True]

        def flaky(nodeId: str, purgeAfter: Optional[float]) -> Deferred[Any]:
            calls.append(nodeId)
            if down[0]:
                return fail(Unavailable("database unavailable"))
            return renewLease(nodeId, purgeAfter)

        self.store.renewLease = flaky  # type: ignore[method-assign]
        for _ in range(4):
            await self.tick()
        self.assertEqual(len(calls), 4)
        self.assertEqual(len(self.warnings()), 1)
        self.assertEqual(self.checks, [])
        self.assertEqual(session.disconnected, [])

        down[0] = False
        await self.tick()
        self.assertEqual(len(calls), 5)
        self.assertTrue(any("again" in e["log_format"] for e in self.logged
                            if e["log_level"] == LogLevel.info))
        self.assertEqual(session.disconnected, [])

        down[0] = True
        await self.tick()
        await self.tick()
        self.assertEqual(len(self.warnings()), 2)
        self.assertEqual(len(calls), 7)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_purgesDeadNodes(self) -> None:
        """
        Every PURGE_EVERY renewals, the sessions of nodes silent for longer
        than the lease are ended, so those users show offline.
        """
        alice = await self.register("alice")
        await self.pool.runOperation(
            "INSERT INTO nodes (node_id, last_seen) VALUES ('dead', 0)")
        self.assertTrue(await self.store.claimSession(alice, "dead", 10))
        for _ in range(PURGE_EVERY - 1):
            await self.tick()
        self.assertEqual(await self.sessionNode(alice), "dead")
        await self.tick()
        self.assertIsNone(await self.sessionNode(alice))

    async def test_purgeSparesLiveNodes(self) -> None:
        """The purge leaves the sessions of nodes whose lease is fresh."""
        alice = await self.register("alice")
        await self.store.renewLease("live", None)
        self.assertTrue(await self.store.claimSession(alice, "live", 10))
        for _ in range(PURGE_EVERY):
            await self.tick()
        self.assertEqual(await self.sessionNode(alice), "live")

    async def test_stop(self) -> None:
        """
        Stopping ends the loop and clears this node's lease and sessions,
        so its users show offline at once rather than after the lease.
        """
        alice = await self.register("alice")
        await self.login(alice)
        await self.presence.stopService()
        self.assertIsNone(await self.lastSeen(NODE))
        self.assertIsNone(await self.sessionNode(alice))
        self.clock.advance(10)
        await self.settle()
        self.assertEqual(self.checks, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
