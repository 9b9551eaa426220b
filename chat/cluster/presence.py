"""
Who is online where: this node's lease and the ownership of its sessions.

Each node renews a lease (a row in the C{nodes} table, stamped by the
database clock) about every second.  A login that finds its user "online"
on a node whose lease has expired takes the session over (see
L{chat.storage.store.Store.claimSession}).  The lease lives in the database rather
than in Redis because Redis here keeps nothing on disk: after a Redis
restart every lease would vanish at once and logins would take over the
sessions of live nodes.  And while the database is unreachable, no login
can take anything over, which is the rule DESIGN.md section 4 asks for;
nor for a lease period after this node last failed to renew its own lease:
the database was unreachable (for this node at least, most likely for
all), and until every live node has renewed since, their leases look
expired too.  Logins are then refused (errno 2) rather than handed a live
node's session, and no purge runs.

On each renewal the node also learns which sessions the database says are
its own, and closes any local one that another node took over while this
one was paused or cut off.
"""

from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chat.logs import logFailure
from chat.server.service import ChatService

RENEW_SECONDS = 1.0
PURGE_EVERY = 5
"""Renewals between two purges of the sessions of dead nodes."""


class Presence(Service):
    """
    Renews this node's lease and checks its sessions, every L{interval}
    seconds, while running.
    """

    _log = Logger()

    def __init__(self, chat: ChatService, reactor: IReactorTime,
                 interval: float = RENEW_SECONDS) -> None:
        self._chat = chat
        self._reactor = reactor
        self.interval = interval
        self._loop: Optional[LoopingCall] = None
        self._renewals = 0
        self._failing = False
        self._lastFailure: Optional[float] = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.renew)
        self._loop.clock = self._reactor
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        chat = self._chat
        return chat.store.stopNode(chat.nodeId).addErrback(logFailure(
            self._log, "clearing this node's sessions"))

    def renew(self) -> Deferred:
        """
        One renewal: the lease, then the ownership check.  A failure is
        logged once per outage and otherwise ignored; the next tick
        retries.
        """
        chat = self._chat
        self._renewals += 1
        purge = (chat.leaseSeconds if self._renewals % PURGE_EVERY == 0
                 and chat.leasesTrusted else None)
        localCount = len(chat.sessions)
        d = chat.store.renewLease(chat.nodeId, purge)

        def renewed(count: int) -> Optional[Deferred]:
            if self._failing:
                self._log.info("lease renewed again")
                self._failing = False
            chat.leasesTrusted = self._lastFailure is None or (
                self._reactor.seconds() - self._lastFailure
                >= chat.leaseSeconds)
            if count == localCount == len(chat.sessions):
                return None
            return self._checkOwnership()

        def failed(failure: object) -> None:
            self._lastFailure = self._reactor.seconds()
            chat.leasesTrusted = False
            if not self._failing:
                self._log.warn("cannot renew this node's lease: {error}",
                               error=getattr(failure, "value", failure))
                self._failing = True

        return d.addCallbacks(renewed, failed)

    def _checkOwnership(self) -> Deferred:
        """
        Compare this node's sessions with what the database holds for it,
        and close those another node took over.

        Every local session has its row, so as long as the database counts
        as many rows for this node as there are local sessions, none was
        taken over and the renewal skips this: with thousands of sessions,
        reading and comparing them all every second would stall every
        connection for milliseconds.  (A takeover hidden by a login or
        logout in flight shows at a later renewal.)
        """
        chat = self._chat
        before = dict(chat.sessions)
        return chat.store.sessionsOn(chat.nodeId).addCallback(
            lambda owned: chat.checkOwnership(before, owned))
