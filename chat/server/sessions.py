"""
The registry of the sessions logged in on this node: one way in (a claim)
and one way out (forget).

A user has at most one live session in the cluster.  A claim makes this
node the holder in the database (atomically: a new row, or the takeover
of a row whose node's lease expired), registers the session here and
subscribes to the user's channel.  Forgetting undoes each of those, always
the same way, whether the user logged out, the connection closed, another
node took the session over or the node is stopping.

This module owns the registry and those two paths; it never pushes a
message (the router does) and never decides whether a login may happen
(the accounts handler does).
"""

from __future__ import annotations

from typing import Mapping, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from chat.cluster.bus import IMessageBus
from chat.cluster.presence import ILocalSessions, Lease
from chat.core.errors import AccountInUse
from chat.logs import logFailure
from chat.server.session import ISession
from chat.storage.store import Store

TAKEN_OVER = "your account logged in on another server"


@implementer(ILocalSessions)
class SessionRegistry:
    """
    The sessions of this node, by user id.
    """

    _log = Logger()

    def __init__(self, store: Store, bus: IMessageBus, lease: Lease,
                 nodeId: str) -> None:
        self._store = store
        self._bus = bus
        self._lease = lease
        self._nodeId = nodeId
        self._sessions: dict[int, ISession] = {}
        self._claiming: set[int] = set()

    def get(self, userId: int) -> Optional[ISession]:
        """The live session of C{userId} on this node, if any."""
        return self._sessions.get(userId)

    def __contains__(self, userId: int) -> bool:
        return userId in self._sessions

    def userIds(self) -> list[int]:
        return list(self._sessions)

    def count(self) -> int:
        return len(self._sessions)

    def snapshot(self) -> Mapping[int, ISession]:
        return dict(self._sessions)

    async def claim(self, session: ISession, userId: int,
                    userName: str) -> None:
        """
        Make C{session} the live session of the user, here and in the
        database, and subscribe to the user's channel.

        Registered before subscribing: from then on, every message for the
        user reaches the session (held by the protocol until the login
        reply is written) or the offline store.

        @raise AccountInUse: the user has a live session, here or on a
            node whose lease holds.
        """
        if userId in self._sessions or userId in self._claiming:
            raise AccountInUse("this account is logged in elsewhere")
        self._claiming.add(userId)
        try:
            claimed = await self._store.claimSession(
                userId, self._nodeId, self._lease.takeoverAfter())
        finally:
            self._claiming.discard(userId)
        if not claimed:
            raise AccountInUse("this account is logged in elsewhere")
        session.userId, session.userName = userId, userName
        self._sessions[userId] = session
        try:
            await self._bus.subscribe(userId)
        except Exception as e:
            # The bus renews its subscriptions when it reconnects, and the
            # router drains for every session then; meanwhile messages for
            # this user are stored.  The login still succeeds.
            self._log.warn("subscribing user {userId} failed: {error}",
                           userId=userId, error=e)

    def forget(self, session: ISession, release: bool = True) -> Deferred[None]:
        """
        Forget C{session} here, unsubscribe from its user's channel and,
        with C{release}, delete its row, so that messages for the user are
        stored from now on.  Fires once the database no longer holds the
        session (errors are logged: the lease ends a row left behind).
        """
        userId = session.userId
        session.userId = session.userName = None
        if userId is None or self._sessions.get(userId) is not session:
            return succeed(None)
        del self._sessions[userId]
        self._bus.unsubscribe(userId).addErrback(logFailure(
            self._log, "unsubscribing user {userId}", userId=userId))
        if not release:
            return succeed(None)
        return self._store.releaseSession(userId, self._nodeId).addCallbacks(
            lambda _: None, logFailure(
                self._log, "releasing the session of user {userId}",
                userId=userId))

    def closeTakenOver(self, before: Mapping[int, object],
                       owned: set[int]) -> None:
        """
        Close every session of the snapshot C{before} still here that the
        database no longer gives this node (C{owned}, asked after the
        snapshot).  Sessions that logged in after the snapshot are not
        judged: the answer may predate their claim.  Their rows belong to
        the other node now, so they are not deleted.
        """
        for userId, session in before.items():
            if userId not in owned and self._sessions.get(userId) is session:
                self._log.info("user {userId} was taken over by another "
                               "server", userId=userId)
                self._closeSession(self._sessions[userId], TAKEN_OVER)

    def close(self, userId: int, reason: str) -> None:
        """
        End C{userId}'s session here (a drain, an operator's kick): forget
        it, and once its row is released tell its client C{reason} and
        close it, so that the client, reconnecting at once, finds its
        account free on any node.  (Meanwhile, a request on it is
        answered as not logged in, and nothing is delivered to it but
        what it had queued, which is stored when it closes.)
        """
        session = self._sessions.get(userId)
        if session is not None:
            self.forget(session).addBoth(
                lambda _: session.disconnect(reason))

    def closeAll(self, reason: str) -> None:
        """
        This node is stopping: forget every session, telling each client
        why, and close it.  (Their rows go with the node's lease, in one
        statement.)
        """
        for session in list(self._sessions.values()):
            self._closeSession(session, reason)

    def _closeSession(self, session: ISession, reason: str) -> None:
        # Told first, while it still knows its user: what waits in its
        # output is stored for that user.
        session.disconnect(reason)
        self.forget(session, release=False)
