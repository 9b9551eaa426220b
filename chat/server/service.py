"""
The business rules: accounts, sessions, chat, friends, groups and routing.

The service never touches a transport.  A session is anything with the
L{ISession} methods (the protocol, in practice); the service keeps the
registry of the sessions on this server, asks the store for what is
shared, and routes messages as DESIGN.md section 3 says: a local push,
else a publish whose count proves a live session elsewhere, else the
offline store followed by a poke.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from chat.cluster.bus import IBusReceiver, IMessageBus
from chat.core.errors import (
    AccountInUse, AlreadyLoggedIn, Forbidden, InvalidValue, NotFound,
    NotLoggedIn, Unavailable, WrongCredentials,
)
from chat.logs import logFailure
from chat.core.messages import (
    ANONYMOUS_REQUESTS, AddFriend, AddGroup, Chat, ChatEvent, ChatSent,
    CreateGroup, FriendAdded, FriendList, Friends, GroupChat, GroupChatSent,
    GroupCreated, GroupJoined, GroupList, Groups, LoggedIn, LoggedOut, Login,
    Logout, Ping, Pong, Register, Registered, Reply, Request, UserRef,
)
from chat.passwords import Passwords
from chat.core.rules import MAX_ID
from chat.storage.store import Store

DEFAULT_LEASE_SECONDS = 10.0
NO_TAKEOVER_LEASE = 1e12
"""A lease that no node outlives: a claim made with it takes over only this
node's own session rows and those of nodes that have no lease at all."""
STORE_ATTEMPTS = 60
"""How many times, a second apart, an accepted message is offered to an
unavailable database before it is given up (and logged as lost)."""


class ISession(Interface):
    """
    A client connection as the service sees it.
    """

    userId = Attribute("The logged-in user's id, or None; set by the service.")
    userName = Attribute("The logged-in user's name; set by the service.")
    peer = Attribute("The client's address, for logs.")

    def deliver(event: ChatEvent) -> None:
        """Push a chat message to the client."""

    def notice(text: str) -> None:
        """Push a server notice to the client."""

    def disconnect(reason: str) -> None:
        """Send C{reason} as a notice, then close the connection."""


_lastSecond: list[Any] = [None, ""]


def serverTime() -> str:
    """
    The server's local time, as the classic events carry it; formatted
    once a second, not once a message.
    """
    now = int(time.time())
    if _lastSecond[0] != now:
        _lastSecond[0] = now
        _lastSecond[1] = time.strftime("%Y-%m-%d %H:%M:%S",
                                       time.localtime(now))
    return _lastSecond[1]


def _validId(value: int) -> bool:
    return 0 < value <= MAX_ID


class _Drain:
    """
    A drain of one user's offline messages under way: the live events
    that wait for it, and whether another drain was asked for meanwhile.
    """

    __slots__ = ("held", "again")

    def __init__(self) -> None:
        self.held: list[ChatEvent] = []
        self.again = False

    def append(self, event: ChatEvent) -> None:
        self.held.append(event)


_DELIVERED = ChatSent(online=True)
_STORED = ChatSent(online=False)


class KnownUsers:
    """
    Ids and names of users known to exist, so that the chat path can skip
    the database.  Accounts are never renamed or deleted, so an entry
    never goes stale; the cache is only bounded, and simply starts afresh
    when full.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._names: dict[int, str] = {}
        self._ids: dict[str, int] = {}

    def remember(self, userId: int, name: str) -> None:
        if len(self._names) >= self._capacity:
            self._names.clear()
            self._ids.clear()
        self._names[userId] = name
        self._ids[name] = userId

    def nameOf(self, userId: int) -> Optional[str]:
        return self._names.get(userId)

    def idOf(self, name: str) -> Optional[int]:
        return self._ids.get(name)


@implementer(IBusReceiver)
class ChatService:
    """
    @ivar nodeId: this server's name in the cluster.
    @ivar sessions: the sessions logged in on this server, by user id.
    """

    _log = Logger()

    def __init__(self, store: Store, bus: IMessageBus, passwords: Passwords,
                 nodeId: str, leaseSeconds: float = DEFAULT_LEASE_SECONDS,
                 clock: Callable[[], str] = serverTime,
                 scheduler: Optional[IReactorTime] = None) -> None:
        if scheduler is None:
            from twisted.internet import reactor as scheduler
        self._scheduler = scheduler
        self.store = store
        self.bus = bus
        self.passwords = passwords
        self.nodeId = nodeId
        self.leaseSeconds = leaseSeconds
        self.leasesTrusted = True
        """Whether an expired lease proves its node dead; see
        L{chat.cluster.presence.Presence}, which clears it after a database outage."""
        self.sessions: dict[int, Any] = {}
        self._draining: dict[int, _Drain] = {}
        self.users = KnownUsers()
        self._claiming: set[int] = set()
        self._clock = clock
        bus.setReceiver(self)
        self._handlers: dict[type, Callable[[Any, Any], Any]] = {
            Login: self._login,
            Logout: self._logout,
            Register: self._register,
            Chat: self._chat,
            AddFriend: self._addFriend,
            CreateGroup: self._createGroup,
            AddGroup: self._addGroup,
            GroupChat: self._groupChat,
            Ping: lambda session, request: Pong(),
            FriendList: self._friendList,
            GroupList: self._groupList,
        }

    # Entry point ----------------------------------------------------------

    def handle(self, session: Any, request: Request) -> Reply | Deferred:
        """
        Carry out one request for C{session}: a reply, or a L{Deferred}
        firing with one.

        @raise ChatError: (or fail with it) when the request is refused.
        """
        if session.userId is None and not isinstance(
                request, ANONYMOUS_REQUESTS):
            raise NotLoggedIn("log in first")
        claimed = getattr(request, "claimed_id", None)
        if claimed is not None and claimed != session.userId:
            raise Forbidden("the request's id is not yours")
        return self._handlers[type(request)](session, request)

    # Accounts and sessions ---------------------------------------------

    def _register(self, session: Any, request: Register) -> Deferred:
        async def register() -> Registered:
            encoded = await self.passwords.hash(request.password)
            userId = await self.store.createUser(request.name, encoded)
            self.users.remember(userId, request.name)
            self._log.info("{peer}: registered {name} (id {id})",
                           peer=session.peer, name=request.name, id=userId)
            return Registered(userId, request.name)

        return ensureDeferred(register())

    def _login(self, session: Any, request: Login) -> Deferred:
        if session.userId is not None:
            raise AlreadyLoggedIn("this connection is already logged in")
        return ensureDeferred(self._loginAsync(session, request))

    async def _loginAsync(self, session: Any, request: Login) -> LoggedIn:
        user = await self._findUser(request.user)
        # An unknown account costs a hash check too, so that the answer's
        # timing does not tell which accounts exist.
        matches = await self.passwords.verify(
            user.passwordHash if user is not None else None,
            request.password)
        if user is None or not matches:
            raise WrongCredentials("wrong id or password")
        if user.id in self.sessions or user.id in self._claiming:
            raise AccountInUse("this account is logged in elsewhere")
        self._claiming.add(user.id)
        try:
            claimed = await self.store.claimSession(
                user.id, self.nodeId, self.leaseSeconds
                if self.leasesTrusted else NO_TAKEOVER_LEASE)
        finally:
            self._claiming.discard(user.id)
        if not claimed:
            raise AccountInUse("this account is logged in elsewhere")
        # Registered before subscribing and draining: from here on, every
        # message for this user reaches the session (held by the protocol
        # until the login reply is written) or the offline store.
        session.userId, session.userName = user.id, user.name
        self.users.remember(user.id, user.name)
        self.sessions[user.id] = session
        try:
            await self._subscribe(user.id)
            offline = await self.store.drainOffline(user.id)
            friends = await self.store.friendsOf(user.id)
            groups = await self.store.groupsOf(user.id)
        except BaseException:
            if self.sessions.get(user.id) is session:
                self.sessionEnded(session)
            raise
        return LoggedIn(user.id, user.name, friends, groups,
                        tuple(self._storedEvents(offline)))

    def _findUser(self, ref: UserRef) -> Deferred:
        if isinstance(ref, int):
            if not _validId(ref):
                return succeed(None)
            return self.store.userById(ref)
        return self.store.userByName(ref)

    async def _subscribe(self, userId: int) -> None:
        try:
            await self.bus.subscribe(userId)
        except Exception as e:
            # The bus renews its subscriptions when it reconnects, and
            # drains for every session then; meanwhile messages for this
            # user are stored.  The login still succeeds.
            self._log.warn("subscribing user {id} failed: {error}",
                           id=userId, error=e)

    def _logout(self, session: Any, request: Logout) -> Deferred:
        # Answered once the database has let the session go (or failed
        # to, which is logged: the lease ends it then), so that after the
        # reply the user shows offline and may log in on another server.
        return self.sessionEnded(session).addCallback(lambda _: LoggedOut())

    def sessionEnded(self, session: Any) -> Deferred:
        """
        C{session} logged out or its connection closed: forget it here,
        then everywhere.  Messages that arrive for the user from now on
        are stored.  Fires when the database no longer holds the session.
        """
        userId = session.userId
        session.userId = session.userName = None
        if userId is None or self.sessions.get(userId) is not session:
            return succeed(None)
        del self.sessions[userId]
        self.bus.unsubscribe(userId).addErrback(logFailure(
            self._log, "unsubscribing user {id}", id=userId))
        return self.store.releaseSession(userId, self.nodeId).addErrback(
            logFailure(self._log, "releasing the session of user {id}",
                       id=userId))

    # Chat ---------------------------------------------------------------

    def _recipient(self, sender: int, ref: UserRef) -> Deferred:
        """
        Fires with C{(id, name, online)} of an existing user other than
        the sender; C{online} is what the database says.
        """
        async def find() -> tuple[int, str, bool]:
            if isinstance(ref, str):
                userId = self.users.idOf(ref)
                if userId is None:
                    user = await self.store.userByName(ref)
                    if user is None:
                        raise NotFound(f"no user named {ref}")
                    userId = user.id
            else:
                userId = ref
            if userId == sender:
                raise InvalidValue("that is you")
            state = await self.store.userState(userId) if _validId(
                userId) else None
            if state is None:
                raise NotFound(f"no user with id {userId}")
            self.users.remember(userId, state[0])
            return (userId, *state)

        return ensureDeferred(find())

    def _chat(self, session: Any, request: Chat) -> ChatSent | Deferred:
        """
        The hot path.  A recipient known to exist needs no database at
        all: pushed here if local (no Deferred either), else published,
        and stored only when no server took it.  Otherwise one query finds
        the user and what the database says of its state.
        """
        to = request.to
        userId = self.users.idOf(to) if isinstance(to, str) else to
        if userId is not None and userId != session.userId and \
                self.users.nameOf(userId) is not None:
            event = ChatEvent(session.userId, session.userName, request.text,
                              self._clock(), to_id=userId)
            local = self.sessions.get(userId)
            if local is not None:
                self._push(userId, local, event)
                return _DELIVERED
            return self._publishOne(userId, event)

        async def chat() -> ChatSent:
            userId, _, online = await self._recipient(session.userId, to)
            event = ChatEvent(session.userId, session.userName, request.text,
                              self._clock(), to_id=userId)
            return await self._chatTo(userId, online, event)

        return ensureDeferred(chat())

    def _publishOne(self, userId: int, event: ChatEvent) -> Deferred:
        """
        L{route} for one recipient not on this node, without coroutines:
        published, and stored and poked when no server took it.
        """
        def published(count: Any) -> Any:
            if isinstance(count, int) and count > 0:
                return _DELIVERED
            return self._storeAndPoke([(userId, event.toJSON())]).addCallback(
                lambda _: _STORED)

        return self.bus.publishOne(userId, event).addBoth(published)

    async def _chatTo(self, userId: int, online: Optional[bool],
                      event: ChatEvent) -> ChatSent:
        stored = await self.route([(userId, online)], event)
        return _STORED if stored else _DELIVERED

    async def route(self, recipients: Sequence[tuple[int, Optional[bool]]],
                    event: ChatEvent) -> list[int]:
        """
        Deliver C{event} to each C{(userId, onlineByDatabase)} recipient,
        where C{onlineByDatabase} is L{None} when the database was not
        asked.  A recipient is pushed to its local session; else, unless
        the database said it is offline, published, and a publish that no
        server took (count 0) or whose outcome is unknown is stored; the
        rest is stored too.  Every stored copy is then poked.  Fires with
        the ids whose copy was stored.

        Why publishing without asking the database keeps every guarantee:
        the publish count is the proof of a live session elsewhere, and
        store-then-poke closes the race with a login elsewhere (that
        login's drain sees the row, or its subscription sees the poke).
        The database's answer only saves a publish for a user it knows to
        be offline.
        """
        remote: list[tuple[int, ChatEvent]] = []
        stored: list[int] = []
        for userId, online in recipients:
            session = self.sessions.get(userId)
            if session is not None:
                self._push(userId, session, event)
            elif online is False:
                stored.append(userId)
            else:
                remote.append((userId, event))
        if remote:
            outcomes = await self.bus.publish(remote)
            for (userId, _), outcome in zip(remote, outcomes):
                if isinstance(outcome, Failure) or outcome == 0:
                    # Nobody took it (stale state, a dead server, a logout
                    # in flight) or we cannot tell: store, never drop.
                    stored.append(userId)
        if stored:
            payload = event.toJSON()
            await self._storeAndPoke([(u, payload) for u in stored])
        return stored

    def _storeAndPoke(self, messages: list[tuple[int, bytes]]) -> Deferred:
        """
        Store messages offline, then poke their recipients, so that one
        who is logging in on some server right now drains them too.
        """
        def poke(_: None) -> None:
            self.bus.poke({userId for userId, _ in messages})

        return self.store.storeOffline(messages).addCallback(poke)

    def _groupChat(self, session: Any, request: GroupChat) -> Deferred:
        async def groupChat() -> GroupChatSent:
            members = await self._membersOf(session.userId, request.group_id)
            event = ChatEvent(session.userId, session.userName, request.text,
                              self._clock(), group_id=request.group_id)
            others = [(u, online) for u, online in members
                      if u != session.userId]
            stored = await self.route(others, event)
            return GroupChatSent(len(others) - len(stored), len(stored))

        return ensureDeferred(groupChat())

    async def _membersOf(self, userId: int,
                         groupId: int) -> list[tuple[int, bool]]:
        members = await self.store.groupMembers(groupId) if _validId(
            groupId) else []
        if not members:
            raise NotFound(f"no group with id {groupId}")
        if not any(u == userId for u, _ in members):
            raise Forbidden(f"you are not a member of group {groupId}")
        return members

    # Friends and groups --------------------------------------------------

    def _addFriend(self, session: Any, request: AddFriend) -> Deferred:
        async def addFriend() -> FriendAdded:
            friendId, name, _ = await self._recipient(
                session.userId, request.friend)
            await self.store.addFriend(session.userId, friendId)
            return FriendAdded(friendId, name)

        return ensureDeferred(addFriend())

    def _friendList(self, session: Any, request: FriendList) -> Deferred:
        return self.store.friendsOf(session.userId).addCallback(Friends)

    def _createGroup(self, session: Any, request: CreateGroup) -> Deferred:
        return self.store.createGroup(
            session.userId, request.name, request.description).addCallback(
                lambda groupId: GroupCreated(groupId, request.name))

    def _addGroup(self, session: Any, request: AddGroup) -> Deferred:
        async def addGroup() -> GroupJoined:
            if not (_validId(request.group_id) and
                    await self.store.groupExists(request.group_id)):
                raise NotFound(f"no group with id {request.group_id}")
            await self.store.joinGroup(request.group_id, session.userId)
            return GroupJoined(request.group_id)

        return ensureDeferred(addGroup())

    def _groupList(self, session: Any, request: GroupList) -> Deferred:
        return self.store.groupsOf(session.userId).addCallback(Groups)

    # Arrivals from the bus -------------------------------------------------

    def eventArrived(self, userId: int,
                     event: ChatEvent) -> Optional[Deferred]:
        session = self.sessions.get(userId)
        if session is not None:
            self._push(userId, session, event)
            return None
        # The user logged out while the message was in flight: store it.
        return self._storeEventually([(userId, event.toJSON())])

    def storeUndelivered(self, userId: int,
                         events: Sequence[ChatEvent]) -> Deferred:
        """
        Messages handed to a session that could not write them (its
        connection closed before its login reply went out): store them
        again, in order, for the user's next login.
        """
        return self._storeEventually(
            [(userId, event.toJSON()) for event in events])

    def _storeEventually(self, messages: list[tuple[int, bytes]],
                         attempt: int = 1) -> Deferred:
        """
        Store and poke messages that this server has already accepted and
        that nobody else holds (they came off the bus, or out of a drain):
        while the database is unavailable, retry every second for a while
        rather than lose them at once.
        """
        def retry(failure: Failure) -> Any:
            if failure.check(Unavailable) and attempt < STORE_ATTEMPTS:
                return deferLater(self._scheduler, 1.0, self._storeEventually,
                                  messages, attempt + 1)
            return failure

        d = self._storeAndPoke(messages).addErrback(retry)
        if attempt == 1:
            d.addErrback(logFailure(
                self._log, "storing {count} messages for user(s) {ids}; "
                "they are lost", count=len(messages),
                ids=sorted({u for u, _ in messages})))
        return d

    def deliveryUncertain(self, messages: Sequence[tuple[int, bytes]]
                          ) -> None:
        self._storeEventually(list(messages))

    def pokeArrived(self, userId: int) -> None:
        if userId in self.sessions:
            self.drainInto(userId)

    def busReconnected(self) -> None:
        for userId in list(self.sessions):
            self.drainInto(userId)

    def _storedEvents(self, payloads: list[bytes]) -> list[ChatEvent]:
        """
        The events of drained offline messages, less stored copies of
        messages this node is known to have delivered live already.
        """
        events = []
        for payload in payloads:
            json = self.bus.unframeStored(payload)
            if json is not None:
                events.append(ChatEvent.fromJSON(json))
        return events

    def _push(self, userId: int, session: Any, event: ChatEvent) -> None:
        """
        Hand C{event} to a local session, unless that user's offline
        messages are being drained: then it waits for them, since they
        are older (see L{drainInto}).
        """
        drain = self._draining.get(userId)
        if drain is not None:
            drain.append(event)
        else:
            session.deliver(event)

    def drainInto(self, userId: int) -> Deferred:
        """
        Push a live session's offline messages to it, oldest first.

        A poke arrives ahead of the sender's next message, which may well
        be published live while the drain's query runs; so until the
        drained messages are pushed, live events for the user wait behind
        them, and the session sees the sender's order.  A poke during a
        drain asks for one more drain after it.
        """
        drain = self._draining.get(userId)
        if drain is not None:
            drain.again = True
            return succeed(None)
        drain = self._draining[userId] = _Drain()
        return self._drainOnce(userId, drain)

    def _drainOnce(self, userId: int, drain: "_Drain") -> Deferred:
        def push(payloads: list[bytes]) -> Optional[Deferred]:
            events = self._storedEvents(payloads) + drain.held
            drain.held = []
            session = self.sessions.get(userId)
            if session is None:
                del self._draining[userId]
                if events:
                    # Logged out during the drain: put them back.
                    return self._storeEventually(
                        [(userId, e.toJSON()) for e in events])
                return None
            for event in events:
                session.deliver(event)
            if drain.again:
                drain.again = False
                return self._drainOnce(userId, drain)
            del self._draining[userId]
            return None

        def failed(failure: Failure) -> Failure:
            push([])  # release what waited; the next poke or login drains
            return failure

        return self.store.drainOffline(userId).addCallbacks(
            push, failed).addErrback(logFailure(
                self._log, "draining offline messages of user {id}",
                id=userId))

    # Presence ------------------------------------------------------------

    def checkOwnership(self, before: dict[int, Any], owned: set[int]) -> None:
        """
        The database, asked after the snapshot C{before} of this node's
        sessions was taken, says this node holds the sessions in C{owned}.
        Close every session of the snapshot still here that another node
        has taken over meanwhile.  (Sessions that logged in after the
        snapshot are not judged: the answer may predate their claim.)
        """
        for userId, session in before.items():
            if userId not in owned and self.sessions.get(userId) is session:
                self._log.info("user {id} was taken over by another server",
                               id=userId)
                del self.sessions[userId]
                session.userId = session.userName = None
                self.bus.unsubscribe(userId)
                session.disconnect(
                    "your account logged in on another server")

    def shutdown(self, reason: str) -> None:
        """
        This server is stopping: forget every local session, telling each
        client why, and close it.  (The node's rows go with its lease.)
        """
        for userId, session in list(self.sessions.items()):
            del self.sessions[userId]
            session.userId = session.userName = None
            session.disconnect(reason)

