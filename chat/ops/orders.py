"""
Orders an operator leaves for a node in the database (C{chatctl drain},
C{chatctl kick}), and this node carrying them out.

The database is where every node already looks (its lease) and the one
place C{chatctl} can reach without Redis, in one node or a cluster: so
C{chatctl} writes an order (a node's C{draining} flag, a row of
C{kicks}) and the node holding it reads its orders every second.  One
small indexed read per second per node; a kick or drain takes effect
within about a second.

This module owns the polling and the reading of orders; the drain is
L{chat.ops.drain}'s and closing a session the registry's.
"""

from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chat.logs import logFailure
from chat.ops.drain import Drain
from chat.server.sessions import SessionRegistry
from chat.storage.store import Orders, Store

POLL_SECONDS = 1.0
KICKED = "an operator ended your session"


class OrderPoller(Service):
    _log = Logger()

    def __init__(self, store: Store, nodeId: str, sessions: SessionRegistry,
                 drain: Drain, reactor: IReactorTime,
                 interval: float = POLL_SECONDS) -> None:
        self._store = store
        self._nodeId = nodeId
        self._sessions = sessions
        self._drain = drain
        self._reactor = reactor
        self._interval = interval
        self._loop: Optional[LoopingCall] = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call] # unannotated in Twisted
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def poll(self) -> Deferred[None]:
        """Read this node's orders once and carry them out."""
        return self._store.takeOrders(self._nodeId).addCallbacks(
            self._carryOut, logFailure(self._log, "reading operator orders"))

    def _carryOut(self, orders: Orders) -> None:
        for userId in orders.kicks:
            if userId in self._sessions:
                self._log.info("user {userId} kicked by an operator",
                               userId=userId, node=self._nodeId)
                self._sessions.close(userId, KICKED)
        if orders.draining:
            self._drain.start("chatctl drain")


