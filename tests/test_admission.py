"""
Unit tests of L{chat.server.admission} (the rate limits applied to
sessions) and of the bound on waiting password checks in
L{chat.passwords}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from chat.limits import MemoryCounters, RedisCounters, TrustedNets
from chat.ops.counters import Counters
from chat.passwords import Passwords, ServerBusy
from chat.server.admission import (
    SHARED_TIMEOUT, Admission, SharedCounters, TooManyMessages,
)
from tests.test_limits import FakeRedis


class Session:
    """A session as the limits see it: an address."""

    def __init__(self, address: str = "10.0.0.1") -> None:
        self.address = address


class HangingRedis:
    """A Redis that never answers."""

    def command(self, *args: bytes | str | int) -> Deferred[Any]:
        return Deferred()


class SharedCountersTests(SynchronousTestCase):
    """The shared counters, or the node's own while they fail."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.local = MemoryCounters(self.clock)

    def test_shared(self) -> None:
        """While Redis answers, its counts are the ones used."""
        counters = SharedCounters(RedisCounters(FakeRedis(7)), self.local,
                                  self.clock)
        self.assertEqual(self.successResultOf(counters.hit("k", 60)), 7)
        self.assertEqual(self.successResultOf(self.local.hit("k", 60)), 1)

    def test_failing(self) -> None:
        """A failed command is counted on this node instead."""
        counters = SharedCounters(
            RedisCounters(FakeRedis(ConnectionError("down"))), self.local,
            self.clock)
        self.assertEqual(self.successResultOf(counters.hit("k", 60)), 1)
        self.assertEqual(self.successResultOf(self.local.hit("k", 60)), 2)

    def test_hanging(self) -> None:
        """A command that does not answer in time is counted here too."""
        counters = SharedCounters(RedisCounters(HangingRedis()), self.local,
                                  self.clock)
        d = counters.hit("k", 60)
        self.assertNoResult(d)
        self.clock.advance(SHARED_TIMEOUT)
        self.assertEqual(self.successResultOf(d), 1)


class AdmissionTests(SynchronousTestCase):
    """Refusals raise errno 106 errors and are counted for the metrics."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Counters()
        self.admission = Admission(
            MemoryCounters(self.clock), TrustedNets.fromString(""),
            self.clock, chatRate=1, chatBurst=2, metrics=self.metrics)

    def test_chatBucket(self) -> None:
        """A burst of 2, then one a second, per session."""
        session, other = Session(), Session()
        self.admission.chat(session)
        self.admission.chat(session)
        self.assertRaises(TooManyMessages, self.admission.chat, session)
        self.admission.chat(other)
        self.clock.advance(1)
        self.admission.chat(session)
        self.assertEqual(self.metrics.rateLimited, {"chat": 1})

    def test_chatUnlimited(self) -> None:
        """A rate of 0 is no limit."""
        admission = Admission(MemoryCounters(self.clock),
                              TrustedNets.fromString(""), self.clock,
                              chatRate=0)
        for _ in range(10_000):
            admission.chat(Session())

    def test_loginLocked(self) -> None:
        """After 5 failures the check is not even run, and it is counted."""
        checks: list[bool] = []

        def check() -> Deferred[bool]:
            checks.append(False)
            return succeed(False)

        for _ in range(5):
            self.assertFalse(self.successResultOf(Deferred.fromCoroutine(
                self.admission.login(Session(), "1", check))))
        failure = self.failureResultOf(Deferred.fromCoroutine(
            self.admission.login(Session(), "1", check)))
        self.assertEqual(failure.value.errno, 106)
        self.assertEqual(len(checks), 5)
        self.assertEqual(self.metrics.rateLimited, {"login": 1})

    def test_passwordChecksBounded(self) -> None:
        """
        At most C{maxPending} requests wait for a password check; more
        are refused at once, and counted.
        """
        passwords = Passwords(1, 8, maxPending=2, reactor=self.clock)
        with self.admission.checkingPassword(passwords):
            with self.admission.checkingPassword(passwords):
                self.assertEqual(passwords.waiting, 2)
                with self.assertRaises(ServerBusy):
                    with self.admission.checkingPassword(passwords):
                        pass
            with self.admission.checkingPassword(passwords):
                self.assertEqual(passwords.waiting, 2)
        self.assertEqual(passwords.waiting, 0)
        self.assertEqual(self.metrics.rateLimited, {"pending-logins": 1})

