"""
Who is online where: this node's lease and the ownership of its sessions.

Each node renews a lease (a row in the C{nodes} table, stamped by the
database clock) about every second.  A login that finds its user "online"
on a node whose lease has expired takes the session over (see
L{chat.storage.store.Store.claimSession}).  The lease lives in the
database rather than in Redis because Redis here keeps nothing on disk:
after a Redis restart every lease would vanish at once and logins would
take over the sessions of live nodes.  And while the database is
unreachable, no login can take anything over, which is the rule DESIGN.md
section 4 asks for; nor for a lease period after this node last failed to
renew its own lease: the database was unreachable (for this node at
least, most likely for all), and until every live node has renewed since,
their leases look expired too.  Logins are then refused (errno 2) rather
than handed a live node's session, and no purge runs.

On each renewal the node also learns how many sessions the database says
are its own, and when that disagrees with the local count it has the
local sessions that another node took over (while this one was paused or
cut off) closed.

This module owns the lease and its schedule; it never touches a session
itself: the server's registry (L{ILocalSessions}) does.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from chat.logs import logFailure
from chat.storage.store import Store

DEFAULT_LEASE_SECONDS = 10.0
RENEW_SECONDS = 1.0
PURGE_EVERY = 5
"""Renewals between two purges of the sessions of dead nodes."""
HOLD_FRACTION = 0.8
"""The part of the lease period this node counts on, by its own clock."""
NO_TAKEOVER_LEASE = 1e12
"""A lease that no node outlives: a claim made with it takes over only this
node's own session rows and those of nodes that have no lease at all."""


class ILocalSessions(Interface):
    """The sessions logged in on this node, as the lease sees them."""

    def count() -> int:
        """How many there are."""

    def snapshot() -> Mapping[int, object]:
        """The sessions now, by user id."""

    def closeTakenOver(before: Mapping[int, object], owned: set[int]) -> None:
        """
        The database, asked after the snapshot C{before} was taken, says
        this node holds the sessions of C{owned}: close every session of
        the snapshot still here that another node has taken over.
        """


class Lease:
    """
    This node's lease, as this node knows it.

    A lease is a promise to act only while it holds (PROTOCOL.md section
    6, "A node that lost its lease acts for nobody").  It holds for
    L{HOLD_FRACTION} of the lease period after the last renewal that the
    database accepted was sent, by this node's clock: another node takes
    a session over only after the whole period by the database's clock,
    so the margin covers the two clocks' drift and the renewal's own
    latency.  Once it has lapsed (the node was paused, starved of CPU or
    cut off from the database) it holds again only after a renewal and a
    check of every session this node has: then L{confirm}.

    @ivar seconds: how long a node may stay silent before its sessions
        may be taken over.
    @ivar trusted: whether an expired lease proves its node dead; false
        for a lease period after this node failed to renew its own.
    """

    def __init__(self, seconds: float = DEFAULT_LEASE_SECONDS,
                 clock: Optional[IReactorTime] = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        assert clock is not None
        self.seconds = seconds
        self.trusted = True
        self._clock = clock
        self._confirmed = True
        self._holdsUntil = clock.seconds() + seconds * HOLD_FRACTION
        self.renewedAt = clock.seconds()
        """When the last accepted renewal was sent, by this node's clock
        (at first: the node's registration)."""
        self._observers: list[Callable[[], None]] = []

    def takeoverAfter(self) -> float:
        """The lease age past which a login may take a session over."""
        return self.seconds if self.trusted else NO_TAKEOVER_LEASE

    def holds(self) -> bool:
        """Whether this node may act for its sessions now."""
        if self._clock.seconds() < self._holdsUntil:
            return self._confirmed
        self._confirmed = False
        return False

    def renewed(self, sentAt: float) -> bool:
        """
        A renewal sent at C{sentAt} was accepted.  Whether the lease held
        until now (else the sessions must be checked, then L{confirm}).
        """
        held = self.holds()
        self.renewedAt = max(self.renewedAt, sentAt)
        self._holdsUntil = max(self._holdsUntil,
                               sentAt + self.seconds * HOLD_FRACTION)
        return held

    def age(self) -> float:
        """Seconds since the last accepted renewal was sent."""
        return self._clock.seconds() - self.renewedAt

    def confirm(self) -> None:
        """Every session still here is this node's: act again."""
        if not self._confirmed:
            self._confirmed = True
            for observer in list(self._observers):
                observer()

    def onConfirmed(self, observer: Callable[[], None]) -> None:
        """Call C{observer} whenever the lease holds again after a lapse."""
        self._observers.append(observer)


class Presence(Service):
    """
    Renews this node's lease and checks its sessions, every L{interval}
    seconds, while running; clears the node's rows when stopped.
    """

    _log = Logger()

    def __init__(self, store: Store, nodeId: str, lease: Lease,
                 sessions: ILocalSessions, reactor: IReactorTime,
                 interval: float = RENEW_SECONDS) -> None:
        self._store = store
        self._nodeId = nodeId
        self._lease = lease
        self._sessions = sessions
        self._reactor = reactor
        self.interval = interval
        self._loop: Optional[LoopingCall] = None
        self._renewals = 0
        self._failing = False
        self._lastFailure: Optional[float] = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._loop = LoopingCall(self.renew)
        self._loop.clock = self._reactor
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._store.stopNode(self._nodeId).addErrback(logFailure(
            self._log, "clearing this node's sessions"))

    def renew(self) -> Deferred[None]:
        """
        One renewal: the lease, then the ownership check.  A failure is
        logged once per outage and otherwise ignored; the next tick
        retries.
        """
        lease = self._lease
        self._renewals += 1
        purge = (lease.seconds if self._renewals % PURGE_EVERY == 0
                 and lease.trusted else None)
        localCount = self._sessions.count()
        sentAt = self._reactor.seconds()
        d = self._store.renewLease(self._nodeId, purge)

        def renewed(count: int) -> Optional[Deferred[None]]:
            if self._failing:
                self._log.info("lease renewed again")
                self._failing = False
            lease.trusted = self._lastFailure is None or (
                self._reactor.seconds() - self._lastFailure >= lease.seconds)
            if not lease.renewed(sentAt):
                self._log.warn("this node's lease had lapsed; checking its "
                               "{n} sessions before acting for them again",
                               n=self._sessions.count())
                return self._checkOwnership().addCallback(
                    lambda _: lease.confirm())
            if count == localCount == self._sessions.count():
                return None
            return self._checkOwnership()

        def failed(failure: Failure) -> None:
            self._lastFailure = self._reactor.seconds()
            lease.trusted = False
            if not self._failing:
                self._log.warn("cannot renew this node's lease: {error}",
                               error=failure.value)
                self._failing = True

        # A failed ownership check is treated like a failed renewal: the
        # loop goes on either way.
        checked: Deferred[None] = d.addCallback(renewed)
        return checked.addErrback(failed)

    def _checkOwnership(self) -> Deferred[None]:
        """
        Compare this node's sessions with what the database holds for it,
        and have those another node took over closed.

        Every local session has its row, so as long as the database counts
        as many rows for this node as there are local sessions, none was
        taken over and a renewal skips this (unless the lease had lapsed):
        with thousands of sessions, reading and comparing them all every
        second would stall every connection for milliseconds.  (A takeover
        hidden by a login or logout in flight shows at a later renewal.)
        """
        before = self._sessions.snapshot()
        return self._store.sessionsOn(self._nodeId).addCallback(
            lambda owned: self._sessions.closeTakenOver(before, owned))
