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
from chat.passwords import Passwords, ServerBusy, _Slots
from chat.server.admission import (
    SHARED_TIMEOUT, SUSPECT_SECONDS, Admission, SharedCounters,
    TooManyMessages,
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
        session = Session()
        with self.admission.checkingPassword(passwords, session):
            with self.admission.checkingPassword(passwords, session):
                self.assertEqual(passwords.waiting, 2)
                with self.assertRaises(ServerBusy):
                    with self.admission.checkingPassword(passwords, session):
                        pass
            with self.admission.checkingPassword(passwords, session):
                self.assertEqual(passwords.waiting, 2)
        self.assertEqual(passwords.waiting, 0)
        self.assertEqual(self.metrics.rateLimited, {"pending-logins": 1})

    def test_suspectAfterFailure(self) -> None:
        """
        An address whose login failed is suspect for 15 minutes; others
        and trusted addresses are not.
        """
        passwords = Passwords(1, 8, reactor=self.clock)
        failing, other = Session("10.0.0.9"), Session("10.0.0.8")

        def suspect(session: Session) -> bool:
            with self.admission.checkingPassword(passwords, session) as it:
                return it

        self.assertFalse(suspect(failing))
        self.successResultOf(Deferred.fromCoroutine(self.admission.login(
            failing, "1", lambda: succeed(False))))
        self.assertEqual((suspect(failing), suspect(other)), (True, False))
        self.clock.advance(SUSPECT_SECONDS)
        self.assertFalse(suspect(failing))
        trusting = Admission(MemoryCounters(self.clock),
                             TrustedNets.fromString("10.0.0.0/8"), self.clock)
        self.successResultOf(Deferred.fromCoroutine(trusting.login(
            failing, "1", lambda: succeed(False))))
        with trusting.checkingPassword(passwords, failing) as it:
            self.assertFalse(it)


class SuspectPasswordChecksTests(SynchronousTestCase):
    """Suspect checks wait behind the others and hold half the places."""

    def test_halfThePlaces(self) -> None:
        passwords = Passwords(1, 8, maxPending=4, reactor=Clock())
        with passwords.admitted(True), passwords.admitted(True):
            self.assertRaises(ServerBusy, passwords.admitted(True).__enter__)
            with passwords.admitted(False), passwords.admitted(False):
                self.assertRaises(ServerBusy,
                                  passwords.admitted(False).__enter__)
        with passwords.admitted(True):
            pass

    def test_urgentFirst(self) -> None:
        """A freed thread goes to the oldest waiter that is not suspect."""
        slots = _Slots(1)
        order: list[str] = []
        self.successResultOf(slots.acquire(False))
        for name, suspect in (("s1", True), ("u1", False), ("s2", True),
                              ("u2", False)):
            slots.acquire(suspect).addCallback(lambda _, n=name: order.append(n))
        given = slots.acquire(True)
        given.cancel()
        self.failureResultOf(given)
        for _ in range(5):
            slots.release()
        self.assertEqual(order, ["u1", "u2", "s1", "s2"])
        self.successResultOf(slots.acquire(True))
        self.assertNoResult(slots.acquire(False))

