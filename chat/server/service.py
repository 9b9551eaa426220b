"""
The chat's rules as one service: the checks every request passes, then
the handler of its domain.

L{ChatService} builds the parts (the session registry, the router, the
user directory and the handlers for accounts, messaging and social) and
dispatches each request to one of them, after the checks PROTOCOL.md 3.1
puts first, in its order: a chat or friend request to yourself (100), a
login for everything but the anonymous requests (102), a request's C{id}
that must be yours (103); then a chat's rate limit (106, PROTOCOL.md 6).  It never touches a transport
and never runs SQL; the parts each say what they own.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Optional, Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from chat.cluster.bus import IMessageBus
from chat.cluster.presence import Lease
from chat.core.errors import (
    Forbidden, InvalidValue, NotLoggedIn, Unavailable,
)
from chat.core.messages import (
    ANONYMOUS_REQUESTS, AddFriend, AddGroup, Chat, ChatEvent, CreateGroup,
    FriendList, GroupChat, GroupList, Login, Logout, Ping, Pong, Register,
    Reply, Request,
)
from chat.limits import DEFAULT_TRUSTED_NETS, MemoryCounters, TrustedNets
from chat.ops.counters import Counters, NoCounters
from chat.passwords import Passwords
from chat.server.accounts import Accounts
from chat.server.admission import Admission
from chat.server.messaging import Messaging, serverTime
from chat.server.routing import LAPSED, Router
from chat.server.session import Answer, IChatService, ISession
from chat.server.sessions import SessionRegistry
from chat.server.social import Social
from chat.server.users import Directory
from chat.storage.store import Store

Handler = Callable[[ISession, Any], Answer]


def _deferred(
        handler: Callable[[ISession, Any], Coroutine[Any, Any, Reply]]
) -> Handler:
    """An C{async def} handler, at the boundary: its coroutine as a
    Deferred."""
    return lambda session, request: ensureDeferred(handler(session, request))


def _toYourself(session: ISession, request: Request) -> bool:
    """Whether C{request} chats to or befriends its own sender."""
    if isinstance(request, Chat):
        target = request.to
    elif isinstance(request, AddFriend):
        target = request.friend
    else:
        return False
    return session.userId is not None and target in (
        session.userId, session.userName)


@implementer(IChatService)
class ChatService:
    """
    @ivar sessions: the sessions logged in on this node.
    @ivar router: where messages go.
    @ivar counters: what this node counts for its metrics
        (L{chat.ops.counters}); e.g. a rate limit that refuses a request
        calls C{counters.limited(name)}.
    """

    def __init__(self, store: Store, bus: IMessageBus, passwords: Passwords,
                 nodeId: str, lease: Optional[Lease] = None,
                 clock: Callable[[], str] = serverTime,
                 scheduler: Optional[IReactorTime] = None,
                 counters: Counters = NoCounters(),
                 admission: Optional[Admission] = None) -> None:
        """
        @param admission: the rate limits; by default those of a node on
            its own, with their default settings.
        """
        if scheduler is None:
            from twisted.internet import reactor as scheduler
        assert scheduler is not None
        self.nodeId = nodeId
        self.counters = counters
        self._admission = admission or Admission(
            MemoryCounters(scheduler),
            TrustedNets.fromString(DEFAULT_TRUSTED_NETS), scheduler,
            metrics=counters)
        self._lease = lease or Lease(clock=scheduler)
        self.sessions = SessionRegistry(store, bus, self._lease, nodeId)
        self.router = Router(store, bus, self.sessions, self._lease,
                             scheduler, counters)
        directory = Directory(store)
        accounts = Accounts(store, passwords, self.sessions, self.router,
                            directory, self._admission)
        messaging = Messaging(store, directory, self.router, clock)
        social = Social(store, directory)
        self._handlers: dict[type, Handler] = {
            Login: _deferred(accounts.login),
            Logout: _deferred(accounts.logout),
            Register: _deferred(accounts.register),
            Chat: messaging.chat,
            GroupChat: _deferred(messaging.groupChat),
            AddFriend: _deferred(social.addFriend),
            FriendList: _deferred(social.friendList),
            CreateGroup: _deferred(social.createGroup),
            AddGroup: _deferred(social.addGroup),
            GroupList: _deferred(social.groupList),
            Ping: lambda session, request: Pong(),
        }

    def handle(self, session: ISession, request: Request) -> Answer:
        if _toYourself(session, request):
            raise InvalidValue("that is you")
        if session.userId is None and not isinstance(
                request, ANONYMOUS_REQUESTS):
            raise NotLoggedIn("log in first")
        if not (isinstance(request, Ping) or self._lease.holds()):
            # The lease lapsed: the session may have been taken over by
            # another node meanwhile (PROTOCOL.md section 6).
            raise Unavailable(LAPSED)
        claimed = getattr(request, "claimedId", None)
        if claimed is not None and claimed != session.userId:
            raise Forbidden("the request's id is not yours")
        if isinstance(request, (Chat, GroupChat)):
            self._admission.chat(session)
        return self._handlers[type(request)](session, request)

    def sessionEnded(self, session: ISession) -> Deferred[None]:
        return self.sessions.forget(session)

    def storeUndelivered(
            self, messages: Sequence[tuple[int, ChatEvent]]) -> Deferred[None]:
        return self.router.storeEventually(list(messages), inFront=True)

    def loginAnswered(self, userId: int) -> None:
        self.router.drains.loginAnswered(userId)

    def backlogReadable(self, session: ISession) -> None:
        if session.userId is not None:
            self.router.backlogReadable(session.userId)

    def shutdown(self, reason: str) -> None:
        """
        This node is stopping: every session is told C{reason} and closed.
        """
        self.sessions.closeAll(reason)

    def settled(self) -> Deferred[None]:
        """Fires once no message is being stored."""
        return self.router.settled()
