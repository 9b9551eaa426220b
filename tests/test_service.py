"""
Tests for L{chat.server.service.ChatService}: the business rules and the routing
of DESIGN.md section 3, over a real L{Store} on a temporary SQLite file and
an in-process L{LocalBus}.

adbapi runs its queries in threads, so these tests run on trial's real
reactor and wait on Deferreds.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from chat.cluster.localbus import LocalBus
from chat.cluster.presence import Lease
from chat.core.errors import (
    AccountInUse, AlreadyLoggedIn, ChatError, Conflict, Forbidden,
    InvalidValue, NameTaken, NotFound, NotLoggedIn, WrongCredentials,
)
from chat.core.messages import (
    AddFriend, AddGroup, Chat, ChatEvent, ChatSent, CreateGroup, Friend,
    FriendAdded, FriendList, Friends, Group, GroupChat, GroupChatSent,
    GroupCreated, GroupJoined, GroupList, Groups, LoggedIn, LoggedOut, Login,
    Logout, Member, Ping, Pong, Register, Registered, Request,
)
from chat.passwords import Passwords
from chat.server.protocol import ChatFactory, ConnectionLimits
from chat.core.rules import MAX_ID
from chat.server.service import ChatService
from chat.storage.pool import openDatabase
from chat.storage.store import OfflineMessage, Store

NODE = "node-test"
TIME = "2024-01-01 12:00:00"
"""The service's clock in these tests, so events compare exactly."""


class FakeSession:
    """
    A client connection as the service sees it, recording what it is
    sent.
    """

    def __init__(self, peer: str = "127.0.0.1:1") -> None:
        self.userId: Optional[int] = None
        self.userName: Optional[str] = None
        self.peer = peer
        self.address = peer.rpartition(":")[0]
        self.events: list[ChatEvent] = []
        self.notices: list[str] = []
        self.disconnected: list[str] = []

    def deliver(self, event: ChatEvent) -> bool:
        self.events.append(event)
        return True

    def deliverStored(self, event: ChatEvent) -> None:
        self.events.append(event)

    def room(self) -> int:
        return 1 << 20

    def backlog(self) -> None:
        pass

    def notice(self, text: str) -> None:
        self.notices.append(text)

    def disconnect(self, reason: str) -> None:
        self.disconnected.append(reason)

    @property
    def texts(self) -> list[str]:
        """The texts of the chat messages this session got, in order."""
        return [event.text for event in self.events]


class ServiceTestCase(TestCase):
    """
    A service over a fresh SQLite file, with helpers to register users and
    log them in.
    """

    def setUp(self) -> None:
        path = self.mktemp() + ".sqlite3"
        self.database = openDatabase("sqlite:" + path)
        self.pool = self.database.pool
        self.store = Store(self.database)
        self.store.prepare(NODE)
        self.addCleanup(self.pool.close)
        # Runs before the pool closes: SQLite's one pool thread runs
        # queries in order, so this waits for the fire-and-forget ones
        # (session releases, stores) that a test left behind.
        self.addCleanup(self.settle)
        self.bus = self.makeBus()
        self.lease = self.makeLease()
        self.service = ChatService(
            self.store, self.bus, Passwords(timeCost=1, memoryKiB=8), NODE,
            self.lease, clock=lambda: TIME)

    def makeBus(self) -> LocalBus:
        return LocalBus()

    def makeLease(self) -> Lease:
        return Lease()

    def call(self, session: Any, request: Request) -> Deferred[Any]:
        """The service's answer to C{request}, always as a Deferred."""
        return maybeDeferred(self.service.handle, session, request)

    async def fails(self, error: type[ChatError], session: Any,
                    request: Request) -> ChatError:
        """
        C{request} must fail with exactly C{error} (not a subclass or a
        base: several outcomes share an errno but not a meaning).
        """
        try:
            reply = await self.call(session, request)
        except ChatError as e:
            self.assertIs(type(e), error, f"{e!r} for {request!r}")
            return e
        self.fail(f"{request!r} answered {reply!r}, expected {error.__name__}")

    async def register(self, name: str, password: str = "pw") -> int:
        reply = await self.call(FakeSession(), Register(name, password))
        self.assertEqual(reply, Registered(reply.userId, name))
        return reply.userId

    async def login(self, user: int | str,
                    password: str = "pw") -> tuple[FakeSession, LoggedIn]:
        session = FakeSession()
        reply = await self.call(session, Login(user, password))
        self.assertIsInstance(reply, LoggedIn)
        # As the protocol does once the reply is written.
        self.service.loginAnswered(reply.userId)
        return session, reply

    async def sessionNode(self, userId: int) -> Optional[str]:
        """The node the database says holds C{userId}'s session."""
        rows = await self.pool.runQuery(
            "SELECT node_id FROM sessions WHERE user_id = ?", (userId,))
        return rows[0][0] if rows else None

    async def settle(self) -> None:
        """
        Wait for the queries already queued: SQLite's one pool thread runs
        them in order, so one more query finishes after all of them.
        """
        await self.store.userById(0)

    async def eventually(self, predicate: Callable[[], bool],
                         timeout: float = 5.0) -> None:
        """Wait, on the real reactor, until C{predicate()} holds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("timed out waiting")
            await deferLater(reactor, 0.005, lambda: None)


class AccountTests(ServiceTestCase):
    """Register and log in (PROTOCOL.md 3.1, 3.3)."""

    async def test_registerAndLoginById(self) -> None:
        """
        A new account logs in by id, gets its name and three empty lists,
        and is registered as a session here and in the database.
        """
        alice = await self.register("alice")
        session, reply = await self.login(alice)
        self.assertEqual(reply, LoggedIn(alice, "alice", (), (), ()))
        self.assertEqual((session.userId, session.userName), (alice, "alice"))
        self.assertIs(self.service.sessions.get(alice), session)
        self.assertEqual(await self.sessionNode(alice), NODE)

    async def test_loginByName(self) -> None:
        """The LOGIN_MSG extension and the text login name the user."""
        alice = await self.register("alice")
        session, reply = await self.login("alice")
        self.assertEqual(reply.userId, alice)

    async def test_namesExact(self) -> None:
        """
        A name that looks like an existing one is taken (PROTOCOL.md 3.3):
        once alice exists, Alice is NameTaken.  Logins compare exactly,
        case included: logging in as ALICE finds nobody.
        """
        alice = await self.register("alice", "one")
        await self.fails(NameTaken, FakeSession(), Register("Alice", "two"))
        session, reply = await self.login("alice", "one")
        self.assertEqual(reply.userId, alice)
        await self.fails(WrongCredentials, FakeSession(), Login("ALICE", "one"))

    async def test_wrongPassword(self) -> None:
        """A wrong password is WrongCredentials and logs nobody in."""
        alice = await self.register("alice")
        session = FakeSession()
        await self.fails(WrongCredentials, session, Login(alice, "nope"))
        await self.fails(WrongCredentials, session, Login("alice", "nope"))
        self.assertIsNone(session.userId)
        self.assertEqual(self.service.sessions.count(), 0)
        self.assertIsNone(await self.sessionNode(alice))

    async def test_unknownUser(self) -> None:
        """
        An unknown id or name is the same WrongCredentials as a wrong
        password, so that accounts cannot be probed; ids no row can have
        (0, negative, beyond BIGINT) too.
        """
        await self.register("alice")
        for user in (999, 0, -1, MAX_ID + 1, "bob"):
            await self.fails(WrongCredentials, FakeSession(), Login(user, "pw"))

    async def test_alreadyLoggedIn(self) -> None:
        """
        A login on a connection already logged in is refused as such,
        before its credentials are looked at (a wrong password, another
        account, it does not matter).
        """
        alice = await self.register("alice")
        bob = await self.register("bob")
        session, _ = await self.login(alice)
        await self.fails(AlreadyLoggedIn, session, Login(alice, "pw"))
        await self.fails(AlreadyLoggedIn, session, Login(bob, "pw"))
        await self.fails(AlreadyLoggedIn, session, Login("nobody", "bad"))
        self.assertEqual(session.userId, alice)

    async def test_accountInUse(self) -> None:
        """
        An account live in another session is AccountInUse; the live
        session is left alone.
        """
        alice = await self.register("alice")
        first, _ = await self.login(alice)
        second = FakeSession()
        await self.fails(AccountInUse, second, Login("alice", "pw"))
        self.assertIsNone(second.userId)
        self.assertIs(self.service.sessions.get(alice), first)
        self.assertEqual(first.disconnected, [])

    async def test_concurrentLogins(self) -> None:
        """
        Two logins of one account at once: exactly one wins, the other is
        AccountInUse (the claim is atomic, not read-then-write).
        """
        alice = await self.register("alice")
        sessions = [FakeSession(), FakeSession()]
        outcomes = []
        for result in [self.call(s, Login(alice, "pw")) for s in sessions]:
            try:
                outcomes.append(await result)
            except AccountInUse as e:
                outcomes.append(e)
        self.assertEqual(sorted(type(o).__name__ for o in outcomes),
                         ["AccountInUse", "LoggedIn"])
        self.assertEqual(sum(s.userId == alice for s in sessions), 1)

    async def test_loginAgainAfterLogout(self) -> None:
        """Logging out frees the account for the next login, here or anywhere."""
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        self.assertEqual(await self.call(session, Logout()), LoggedOut())
        self.assertIsNone(session.userId)
        self.assertNotIn(alice, self.service.sessions)
        await self.settle()
        self.assertIsNone(await self.sessionNode(alice))
        other, _ = await self.login(alice)
        self.assertIs(self.service.sessions.get(alice), other)

    async def test_nameTaken(self) -> None:
        """Registering a name that exists is NameTaken."""
        await self.register("alice")
        await self.fails(NameTaken, FakeSession(), Register("alice", "pw2"))

    async def test_registerWhileLoggedIn(self) -> None:
        """REG_MSG only creates the account; it works on a logged-in session."""
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        reply = await self.call(session, Register("bob", "pw"))
        self.assertIsInstance(reply, Registered)
        self.assertEqual(session.userId, alice)

    async def test_passwordNotStored(self) -> None:
        """The database keeps a salted hash, never the password itself."""
        await self.register("alice", "hunter2")
        await self.register("bob", "hunter2")
        rows = await self.pool.runQuery("SELECT password FROM users")
        hashes = [row[0] for row in rows]
        self.assertEqual(len(set(hashes)), 2)
        for encoded in hashes:
            self.assertNotIn("hunter2", encoded)


class AccessTests(ServiceTestCase):
    """Login first; identity from the login, never the request (3.1)."""

    async def test_notLoggedIn(self) -> None:
        """Every request but LOGIN, REG and PING needs a login."""
        session = FakeSession()
        for request in (Chat(1, "hi"), AddFriend(1), CreateGroup("g"),
                        AddGroup(1), GroupChat(1, "hi"), FriendList(),
                        GroupList(), Logout()):
            await self.fails(NotLoggedIn, session, request)

    async def test_pingAnonymous(self) -> None:
        """PING works before login (load balancer health checks)."""
        self.assertEqual(await self.call(FakeSession(), Ping()), Pong())

    async def test_claimedIdMismatch(self) -> None:
        """An id in the request that is not the logged-in user is Forbidden."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        session, _ = await self.login(alice)
        for request in (Chat(bob, "hi", claimedId=bob),
                        AddFriend(bob, claimedId=bob),
                        CreateGroup("g", "", claimedId=bob),
                        AddGroup(1, claimedId=bob),
                        GroupChat(1, "hi", claimedId=bob),
                        Logout(claimedId=bob)):
            await self.fails(Forbidden, session, request)
        self.assertEqual(session.userId, alice)

    async def test_claimedIdMatching(self) -> None:
        """The classic client's own id in the request is fine."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        session, _ = await self.login(alice)
        reply = await self.call(session, Chat(bob, "hi", claimedId=alice))
        self.assertEqual(reply, ChatSent(online=False))

    async def test_notLoggedInBeforeForbidden(self) -> None:
        """102 wins over 103: an anonymous request with any id is 102."""
        await self.fails(NotLoggedIn, FakeSession(), Chat(1, "hi", claimedId=5))

    async def test_forbiddenBeforeNotFound(self) -> None:
        """103 (the id is not you) wins over 104 (no such user or group)."""
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        await self.fails(Forbidden, session, Chat(999, "hi", claimedId=7))
        await self.fails(Forbidden, session, GroupChat(999, "hi", claimedId=7))
        await self.fails(Forbidden, session, AddGroup(999, claimedId=7))

    async def test_notFoundBeforeNotMember(self) -> None:
        """104 (no such group) wins over 103 (not a member of it)."""
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        await self.fails(NotFound, session, GroupChat(999, "hi"))

    async def test_forbiddenBeforeConflict(self) -> None:
        """103 wins over 105: a duplicate friend with someone else's id."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        session, _ = await self.login(alice)
        await self.call(session, AddFriend(bob))
        await self.fails(Forbidden, session, AddFriend(bob, claimedId=bob))
        await self.fails(Conflict, session, AddFriend(bob))


class ChatTests(ServiceTestCase):
    """One-to-one messages: live, stored, and delivered once, in order."""

    async def setUpUsers(self) -> None:
        self.alice = await self.register("alice")
        self.bob = await self.register("bob")
        self.aliceSession, _ = await self.login(self.alice)

    async def test_toSelf(self) -> None:
        """Chatting to yourself, by id or by name, is error 100."""
        await self.setUpUsers()
        await self.fails(InvalidValue, self.aliceSession, Chat(self.alice, "x"))
        await self.fails(InvalidValue, self.aliceSession, Chat("alice", "x"))

    async def test_toSelfBeforeForbidden(self) -> None:
        """
        To yourself with someone else's C{id}: 100 comes before 103
        (PROTOCOL.md 3.1), for chats and friend requests alike.
        """
        await self.setUpUsers()
        await self.fails(InvalidValue, self.aliceSession,
                         Chat(self.alice, "x", claimedId=self.bob))
        await self.fails(InvalidValue, self.aliceSession,
                         AddFriend(self.alice, claimedId=self.bob))
        await self.fails(Forbidden, self.aliceSession,
                         Chat(self.bob, "x", claimedId=self.bob))

    async def test_toMissing(self) -> None:
        """A user that does not exist, by id or name, is NotFound."""
        await self.setUpUsers()
        for to in (999, 0, -5, MAX_ID + 1, "nobody"):
            await self.fails(NotFound, self.aliceSession, Chat(to, "x"))

    async def test_online(self) -> None:
        """
        A message to a user logged in here is pushed to that session at
        once, stamped by the server with the sender's id and name and the
        server's time; the sender gets nothing.
        """
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        reply = await self.call(self.aliceSession, Chat(self.bob, "hello"))
        self.assertEqual(reply, ChatSent(online=True))
        [event] = bobSession.events
        self.assertEqual(
            (event.senderId, event.senderName, event.text, event.time,
             event.toId, event.groupId),
            (self.alice, "alice", "hello", TIME, self.bob, None))
        self.assertEqual(self.aliceSession.events, [])

    async def test_onlineByName(self) -> None:
        """The text dialect names the recipient; the same delivery."""
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        reply = await self.call(self.aliceSession, Chat("bob", "hello"))
        self.assertEqual(reply, ChatSent(online=True))
        self.assertEqual(bobSession.texts, ["hello"])

    async def test_offlineThenLogin(self) -> None:
        """
        Messages to an offline user are stored, then come with the next
        login, oldest first, and only with that one.
        """
        await self.setUpUsers()
        for text in ("one", "two", "three"):
            reply = await self.call(self.aliceSession, Chat(self.bob, text))
            self.assertEqual(reply, ChatSent(online=False))
        bobSession, loggedIn = await self.login(self.bob)
        self.assertEqual([e.text for e in loggedIn.offline],
                         ["one", "two", "three"])
        self.assertEqual(
            [(e.senderId, e.senderName, e.toId, e.time)
             for e in loggedIn.offline],
            [(self.alice, "alice", self.bob, TIME)] * 3)
        self.assertEqual(bobSession.events, [])
        await self.call(bobSession, Logout())
        _, again = await self.login(self.bob)
        self.assertEqual(again.offline, ())

    async def test_offlineFromSeveralSenders(self) -> None:
        """The offline order is the order the server accepted them in."""
        await self.setUpUsers()
        carol = await self.register("carol")
        carolSession, _ = await self.login(carol)
        await self.call(self.aliceSession, Chat(self.bob, "a1"))
        await self.call(carolSession, Chat(self.bob, "c1"))
        await self.call(self.aliceSession, Chat(self.bob, "a2"))
        _, loggedIn = await self.login(self.bob)
        self.assertEqual([(e.senderName, e.text) for e in loggedIn.offline],
                         [("alice", "a1"), ("carol", "c1"), ("alice", "a2")])

    async def test_afterLogout(self) -> None:
        """Once the recipient logged out, messages are stored, not pushed."""
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        await self.call(self.aliceSession, Chat(self.bob, "live"))
        await self.call(bobSession, Logout())
        reply = await self.call(self.aliceSession, Chat(self.bob, "later"))
        self.assertEqual(reply, ChatSent(online=False))
        self.assertEqual(bobSession.texts, ["live"])
        _, loggedIn = await self.login(self.bob)
        self.assertEqual([e.text for e in loggedIn.offline], ["later"])

    async def test_afterConnectionLost(self) -> None:
        """A closed connection (sessionEnded) is the same as a logout."""
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        self.service.sessionEnded(bobSession)
        self.assertIsNone(bobSession.userId)
        reply = await self.call(self.aliceSession, Chat("bob", "later"))
        self.assertEqual(reply, ChatSent(online=False))
        self.assertEqual(bobSession.events, [])

    async def test_senderLoggedOut(self) -> None:
        """After a logout the sender can no longer chat."""
        await self.setUpUsers()
        await self.call(self.aliceSession, Logout())
        await self.fails(NotLoggedIn, self.aliceSession, Chat(self.bob, "x"))

    async def test_inFlightAfterLogout(self) -> None:
        """
        A message arriving from the bus for a user who logged out meanwhile
        is stored, not dropped (DESIGN.md 3).
        """
        await self.setUpUsers()
        event = ChatEvent(self.alice, "alice", "in flight", TIME,
                          toId=self.bob)
        self.service.router.eventArrived(self.bob, event)
        await self.settle()
        _, loggedIn = await self.login(self.bob)
        self.assertEqual([e.text for e in loggedIn.offline], ["in flight"])

    async def test_inFlightWithIdAfterLogout(self) -> None:
        """
        A message from the bus (it has a message id) stored because its
        recipient logged out is not taken, at that recipient's next login,
        for a copy of a message delivered here.
        """
        await self.setUpUsers()
        event = ChatEvent(self.alice, "alice", "in flight", TIME,
                          toId=self.bob, messageId=b"n1.1")
        self.service.router.eventArrived(self.bob, event)
        await self.settle()
        _, loggedIn = await self.login(self.bob)
        self.assertEqual([e.text for e in loggedIn.offline], ["in flight"])

    async def test_copyOfDeliveredDropped(self) -> None:
        """
        A stored copy of a message this node delivered from the bus (the
        uncertain copy a publisher stores when Redis dies) is dropped at
        the recipient's drain; a copy of the same group message stored for
        another member is not.
        """
        await self.setUpUsers()
        carol = await self.register("carol")
        bobSession, _ = await self.login(self.bob)
        event = ChatEvent(self.alice, "alice", "to the group", TIME,
                          groupId=1, messageId=b"n1.7")
        self.service.router.eventArrived(self.bob, event)
        self.assertEqual(bobSession.texts, ["to the group"])
        await self.store.storeOffline([OfflineMessage(self.bob, event),
                                       OfflineMessage(carol, event)])
        await self.service.router.drains.drainInto(self.bob)
        self.assertEqual(bobSession.texts, ["to the group"])
        _, loggedIn = await self.login(carol)
        self.assertEqual([e.text for e in loggedIn.offline], ["to the group"])

    async def test_pokeDrainsIntoLiveSession(self) -> None:
        """
        A poke for a user with a live session here drains that user's
        offline messages into it, oldest first, and only once.
        """
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        stored = [ChatEvent(self.alice, "alice", text, TIME, toId=self.bob)
                  for text in ("first", "second")]
        await self.store.storeOffline(
            [OfflineMessage(self.bob, e) for e in stored])
        await self.bus.poke([self.bob])
        await self.eventually(lambda: len(bobSession.events) == 2)
        self.assertEqual(bobSession.texts, ["first", "second"])
        await self.service.router.drains.drainInto(self.bob)
        self.assertEqual(bobSession.texts, ["first", "second"])
        self.assertEqual((await self.store.takeOffline(self.bob)).events, ())

    async def test_liveEventWaitsForDrain(self) -> None:
        """
        A live message that arrives while a poke's drain is under way is
        pushed after the drained (older) messages, so the session sees
        the sender's order: the sender stored message 1 and poked, then
        published message 2 live.
        """
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        first = ChatEvent(self.alice, "alice", "1", TIME, toId=self.bob)
        second = ChatEvent(self.alice, "alice", "2", TIME, toId=self.bob)
        await self.store.storeOffline([OfflineMessage(self.bob, first)])
        draining = self.service.router.drains.drainInto(self.bob)
        self.service.router.eventArrived(self.bob, second)
        self.assertEqual(bobSession.texts, [])
        await draining
        self.assertEqual(bobSession.texts, ["1", "2"])
        # Once the drain is over, live events go straight through.
        self.service.router.eventArrived(self.bob, ChatEvent(
            self.alice, "alice", "3", TIME, toId=self.bob))
        self.assertEqual(bobSession.texts, ["1", "2", "3"])

    async def test_liveEventStoredIfLoggedOutDuringDrain(self) -> None:
        """
        A live message waiting for a drain whose session then ends is
        stored with the drained ones, in order.
        """
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        first = ChatEvent(self.alice, "alice", "1", TIME, toId=self.bob)
        second = ChatEvent(self.alice, "alice", "2", TIME, toId=self.bob)
        await self.store.storeOffline([OfflineMessage(self.bob, first)])
        draining = self.service.router.drains.drainInto(self.bob)
        self.service.router.eventArrived(self.bob, second)
        self.service.sessionEnded(bobSession)
        await draining
        stored = (await self.store.takeOffline(self.bob)).events
        self.assertEqual([e.text for e in stored],
                         ["1", "2"])
        self.assertEqual(bobSession.texts, [])

    async def test_busReconnectedDrains(self) -> None:
        """
        After the bus comes back, every live session gets what was stored
        for it meanwhile.
        """
        await self.setUpUsers()
        bobSession, _ = await self.login(self.bob)
        event = ChatEvent(self.alice, "alice", "while down", TIME,
                          toId=self.bob)
        await self.store.storeOffline([OfflineMessage(self.bob, event)])
        self.service.router.busReconnected()
        await self.eventually(lambda: bobSession.texts == ["while down"])

    async def test_offlineEventsUnchanged(self) -> None:
        """
        A stored message comes back exactly as it would have been pushed:
        the same classic JSON bytes.
        """
        await self.setUpUsers()
        await self.call(self.aliceSession, Chat(self.bob, 'quote " and \\'))
        _, loggedIn = await self.login(self.bob)
        [stored] = loggedIn.offline
        fresh = ChatEvent(self.alice, "alice", 'quote " and \\', TIME,
                          toId=self.bob)
        self.assertEqual(stored.toJSON(), fresh.toJSON())


class GroupTests(ServiceTestCase):
    """Groups: create, join, chat, with the counts of GROUP_CHAT's ACK."""

    async def setUpGroup(self) -> None:
        """alice creates "dev"; bob (online) and carol (offline) join."""
        self.alice = await self.register("alice")
        self.bob = await self.register("bob")
        self.carol = await self.register("carol")
        self.aliceSession, _ = await self.login(self.alice)
        self.bobSession, _ = await self.login(self.bob)
        carolSession, _ = await self.login(self.carol)
        created = await self.call(self.aliceSession,
                                  CreateGroup("dev", "the developers"))
        self.assertIsInstance(created, GroupCreated)
        self.assertEqual(created.name, "dev")
        self.group = created.groupId
        for session in (self.bobSession, carolSession):
            self.assertEqual(await self.call(session, AddGroup(self.group)),
                             GroupJoined(self.group))
        await self.call(carolSession, Logout())

    async def test_groupChatCounts(self) -> None:
        """
        A group message reaches every member but the sender: live ones
        pushed, offline ones stored, and the reply counts each.
        """
        await self.setUpGroup()
        reply = await self.call(self.aliceSession, GroupChat(self.group, "hi"))
        self.assertEqual(reply, GroupChatSent(online=1, offline=1))
        [event] = self.bobSession.events
        self.assertEqual(
            (event.senderId, event.senderName, event.groupId, event.text,
             event.time),
            (self.alice, "alice", self.group, "hi", TIME))
        self.assertEqual(self.aliceSession.events, [])
        _, loggedIn = await self.login(self.carol)
        self.assertEqual([(e.groupId, e.text) for e in loggedIn.offline],
                         [(self.group, "hi")])

    async def test_groupOfOne(self) -> None:
        """A group with only the sender: nobody to tell, no error."""
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        created = await self.call(session, CreateGroup("solo"))
        reply = await self.call(session, GroupChat(created.groupId, "echo"))
        self.assertEqual(reply, GroupChatSent(online=0, offline=0))
        self.assertEqual(session.events, [])

    async def test_duplicateName(self) -> None:
        """A group name that exists is NameTaken."""
        await self.setUpGroup()
        await self.fails(NameTaken, self.bobSession, CreateGroup("dev"))

    async def test_duplicateJoin(self) -> None:
        """Joining twice (the creator too) is a Conflict."""
        await self.setUpGroup()
        await self.fails(Conflict, self.bobSession, AddGroup(self.group))
        await self.fails(Conflict, self.aliceSession, AddGroup(self.group))

    async def test_joinMissing(self) -> None:
        """A group that does not exist cannot be joined."""
        await self.setUpGroup()
        for group in (999, 0, MAX_ID + 1):
            await self.fails(NotFound, self.bobSession, AddGroup(group))

    async def test_nonMember(self) -> None:
        """Only members may send to a group: nothing is delivered."""
        await self.setUpGroup()
        dave = await self.register("dave")
        daveSession, _ = await self.login(dave)
        await self.fails(Forbidden, daveSession, GroupChat(self.group, "hi"))
        self.assertEqual(self.bobSession.events, [])

    async def test_missingGroupChat(self) -> None:
        """A message to a group that does not exist is NotFound."""
        await self.setUpGroup()
        for group in (999, 0, MAX_ID + 1):
            await self.fails(NotFound, self.aliceSession,
                             GroupChat(group, "hi"))

    async def test_groupList(self) -> None:
        """
        The group listing: each group with its members, their roles, and
        their state (carol is offline).
        """
        await self.setUpGroup()
        reply = await self.call(self.bobSession, GroupList())
        self.assertEqual(reply, Groups((Group(
            self.group, "dev", "the developers", (
                Member(self.alice, "alice", True, "creator"),
                Member(self.bob, "bob", True, "normal"),
                Member(self.carol, "carol", False, "normal"))),)))

    async def test_groupsInLogin(self) -> None:
        """The login reply carries the same groups."""
        await self.setUpGroup()
        _, loggedIn = await self.login(self.carol)
        [group] = loggedIn.groups
        self.assertEqual((group.id, group.name, group.description),
                         (self.group, "dev", "the developers"))
        self.assertEqual([(m.name, m.online, m.role) for m in group.members],
                         [("alice", True, "creator"), ("bob", True, "normal"),
                          ("carol", True, "normal")])

    async def test_groupListEmpty(self) -> None:
        """Someone in no group gets an empty listing."""
        dave = await self.register("dave")
        session, _ = await self.login(dave)
        self.assertEqual(await self.call(session, GroupList()), Groups(()))


class FriendTests(ServiceTestCase):
    """One-way friendships (PROTOCOL.md 5)."""

    async def setUpUsers(self) -> None:
        self.alice = await self.register("alice")
        self.bob = await self.register("bob")
        self.carol = await self.register("carol")
        self.aliceSession, _ = await self.login(self.alice)

    async def test_add(self) -> None:
        """Adding a friend, by id or name, answers the friend's id and name."""
        await self.setUpUsers()
        self.assertEqual(await self.call(self.aliceSession, AddFriend(self.bob)),
                         FriendAdded(self.bob, "bob"))
        self.assertEqual(await self.call(self.aliceSession, AddFriend("carol")),
                         FriendAdded(self.carol, "carol"))

    async def test_duplicate(self) -> None:
        """A friend twice is a Conflict, whether named by id or name."""
        await self.setUpUsers()
        await self.call(self.aliceSession, AddFriend(self.bob))
        await self.fails(Conflict, self.aliceSession, AddFriend(self.bob))
        await self.fails(Conflict, self.aliceSession, AddFriend("bob"))

    async def test_self(self) -> None:
        """Yourself is error 100."""
        await self.setUpUsers()
        await self.fails(InvalidValue, self.aliceSession, AddFriend(self.alice))
        await self.fails(InvalidValue, self.aliceSession, AddFriend("alice"))

    async def test_missing(self) -> None:
        """A user that does not exist is NotFound."""
        await self.setUpUsers()
        for friend in (999, 0, MAX_ID + 1, "nobody"):
            await self.fails(NotFound, self.aliceSession, AddFriend(friend))

    async def test_oneWay(self) -> None:
        """alice adding bob puts bob on alice's list, not alice on bob's."""
        await self.setUpUsers()
        await self.call(self.aliceSession, AddFriend(self.bob))
        bobSession, loggedIn = await self.login(self.bob)
        self.assertEqual(loggedIn.friends, ())
        self.assertEqual(await self.call(bobSession, FriendList()), Friends(()))
        await self.call(bobSession, AddFriend(self.alice))

    async def test_listWithStates(self) -> None:
        """
        The friend listing says who is online, by id order, in the listing
        and in the login reply.
        """
        await self.setUpUsers()
        await self.call(self.aliceSession, AddFriend(self.carol))
        await self.call(self.aliceSession, AddFriend(self.bob))
        await self.login(self.bob)
        expected = (Friend(self.bob, "bob", True),
                    Friend(self.carol, "carol", False))
        self.assertEqual(await self.call(self.aliceSession, FriendList()),
                         Friends(expected))
        await self.call(self.aliceSession, Logout())
        _, loggedIn = await self.login(self.alice)
        self.assertEqual(loggedIn.friends, expected)


class TakeoverTests(ServiceTestCase):
    """
    A session held by a node whose lease expired is taken over; one held by
    a live node is not (DESIGN.md 4).
    """

    async def test_deadNode(self) -> None:
        """A session row of a node last seen long ago does not block a login."""
        alice = await self.register("alice")
        await self.pool.runOperation(
            "INSERT INTO nodes (node_id, last_seen) VALUES ('dead', 0)")
        self.assertTrue(await self.store.claimSession(alice, "dead", 10))
        session, _ = await self.login(alice)
        self.assertEqual(session.userId, alice)
        self.assertEqual(await self.sessionNode(alice), NODE)

    async def test_vanishedNode(self) -> None:
        """A session row of a node with no lease at all is taken over too."""
        alice = await self.register("alice")
        self.assertTrue(await self.store.claimSession(alice, "gone", 10))
        await self.login(alice)
        self.assertEqual(await self.sessionNode(alice), NODE)

    async def test_liveNode(self) -> None:
        """A session on a node that renewed its lease just now is refused."""
        alice = await self.register("alice")
        await self.store.renewLease("live", None)
        self.assertTrue(await self.store.claimSession(alice, "live", 10))
        await self.fails(AccountInUse, FakeSession(), Login(alice, "pw"))
        self.assertEqual(await self.sessionNode(alice), "live")
        self.assertNotIn(alice, self.service.sessions)

    async def test_shortLease(self) -> None:
        """With a short lease, a node silent for longer than it loses out."""
        self.lease.seconds = 0.05
        alice = await self.register("alice")
        await self.store.renewLease("slow", None)
        self.assertTrue(await self.store.claimSession(alice, "slow", 10))
        await deferLater(reactor, 0.1, lambda: None)
        await self.login(alice)
        self.assertEqual(await self.sessionNode(alice), NODE)

    async def test_ownLeftover(self) -> None:
        """
        A row of this very node without a session here (left by a failed
        release) does not block the user's next login.
        """
        alice = await self.register("alice")
        self.assertTrue(await self.store.claimSession(alice, NODE, 10))
        await self.login(alice)

    async def test_checkOwnership(self) -> None:
        """
        A session the database gives to another node is closed here with a
        notice and forgotten; messages for that user no longer go into it.
        Sessions still ours are left alone.
        """
        alice = await self.register("alice")
        bob = await self.register("bob")
        aliceSession, _ = await self.login(alice)
        bobSession, _ = await self.login(bob)
        before = self.service.sessions.snapshot()
        await self.pool.runOperation(
            "UPDATE sessions SET node_id = 'other' WHERE user_id = ?",
            (alice,))
        self.assertEqual(await self.store.renewLease(NODE, None), 1)
        owned = await self.store.sessionsOn(NODE)
        self.assertEqual(owned, {bob})
        self.service.sessions.closeTakenOver(before, owned)
        self.assertEqual(len(aliceSession.disconnected), 1)
        self.assertIsNone(aliceSession.userId)
        self.assertNotIn(alice, self.service.sessions)
        self.assertEqual(bobSession.disconnected, [])
        self.assertIs(self.service.sessions.get(bob), bobSession)
        reply = await self.call(bobSession, Chat(alice, "where are you"))
        self.assertEqual(reply, ChatSent(online=False))
        self.assertEqual(aliceSession.events, [])
        self.assertEqual(await self.sessionNode(alice), "other")

    async def test_checkOwnershipSparesNewSessions(self) -> None:
        """
        A session that logged in after the snapshot is not judged by an
        answer that may predate its claim.
        """
        alice = await self.register("alice")
        before = self.service.sessions.snapshot()
        owned = await self.store.sessionsOn(NODE)
        session, _ = await self.login(alice)
        self.service.sessions.closeTakenOver(before, owned)
        self.assertEqual(session.disconnected, [])
        self.assertIs(self.service.sessions.get(alice), session)

    async def test_checkOwnershipReplacedSession(self) -> None:
        """
        A snapshot entry whose user has since logged out and in again on a
        new session is not the same session: the new one is left alone.
        """
        alice = await self.register("alice")
        old, _ = await self.login(alice)
        before = self.service.sessions.snapshot()
        owned = await self.store.sessionsOn(NODE)
        await self.call(old, Logout())
        new, _ = await self.login(alice)
        self.service.sessions.closeTakenOver(before, set())
        self.assertEqual(new.disconnected, [])
        self.assertIs(self.service.sessions.get(alice), new)
        self.assertEqual(owned, {alice})


class UnicodeTests(ServiceTestCase):
    """Chinese names and emoji survive every path, live and stored."""

    async def test_roundTrip(self) -> None:
        """
        张三 and 李四 register, log in by name, and exchange emoji live and
        offline; a group named and described in them lists intact.
        """
        zhang = await self.register("张三", "密码🔑")
        li = await self.register("李四")
        zhangSession, loggedIn = await self.login("张三", "密码🔑")
        self.assertEqual((loggedIn.userId, loggedIn.name), (zhang, "张三"))
        text = "你好 😀👍🏽 — ok\tтест"
        self.assertEqual(await self.call(zhangSession, Chat("李四", text)),
                         ChatSent(online=False))
        liSession, liLogin = await self.login("李四")
        [stored] = liLogin.offline
        self.assertEqual((stored.senderName, stored.text), ("张三", text))
        self.assertEqual(await self.call(zhangSession, Chat(li, "🎉")),
                         ChatSent(online=True))
        self.assertEqual([(e.senderName, e.text) for e in liSession.events],
                         [("张三", "🎉")])
        created = await self.call(zhangSession,
                                  CreateGroup("讨论组🎉", "描述 😀\t说明"))
        await self.call(liSession, AddGroup(created.groupId))
        self.assertEqual(await self.call(zhangSession, AddFriend("李四")),
                         FriendAdded(li, "李四"))
        groups = await self.call(liSession, GroupList())
        [group] = groups.groups
        self.assertEqual((group.name, group.description),
                         ("讨论组🎉", "描述 😀\t说明"))
        self.assertEqual([m.name for m in group.members], ["张三", "李四"])
        await self.call(liSession, Logout())
        reply = await self.call(zhangSession,
                                GroupChat(created.groupId, "群消息 🚀"))
        self.assertEqual(reply, GroupChatSent(online=0, offline=1))
        _, again = await self.login(li)
        self.assertEqual([(e.senderName, e.text) for e in again.offline],
                         [("张三", "群消息 🚀")])
        friends = await self.call(zhangSession, FriendList())
        self.assertEqual(friends, Friends((Friend(li, "李四", True),)))


class ScriptedBus(LocalBus):
    """
    A LocalBus that records what is published and poked, and can answer
    publishes as a cluster would: C{outcomes[userId]} is how many servers
    took that user's message (or a Failure: Redis down, timed out).
    """

    def __init__(self) -> None:
        super().__init__()
        self.published: list[list[tuple[int, ChatEvent]]] = []
        self.poked: list[set[int]] = []
        self.outcomes: dict[int, Any] = {}

    def publish(self, userIds: Any, event: ChatEvent) -> Deferred[Any]:
        self.published.append([(u, event) for u in userIds])
        local = super().publish(
            [u for u in userIds if u not in self.outcomes], event)
        results = iter(local.result)
        return succeed([self.outcomes[userId] if userId in self.outcomes
                        else next(results) for userId in userIds])

    def poke(self, userIds: Any) -> Deferred[None]:
        self.poked.append(set(userIds))
        return super().poke(userIds)


class RoutingTests(ServiceTestCase):
    """
    DESIGN.md 3: a user online on another server (by the database) gets a
    publish, whose count decides; zero or an unknown outcome means the
    message is stored and poked, never dropped.
    """

    bus: ScriptedBus

    def makeBus(self) -> ScriptedBus:
        return ScriptedBus()

    async def setUpCluster(self) -> None:
        """alice here; bob holds a session on the live node "other"."""
        self.alice = await self.register("alice")
        self.bob = await self.register("bob")
        self.aliceSession, _ = await self.login(self.alice)
        await self.store.renewLease("other", None)
        self.assertTrue(await self.store.claimSession(self.bob, "other", 10))

    async def storedFor(self, userId: int) -> list[str]:
        return [e.text for e in (await self.store.takeOffline(userId)).events]

    async def test_publishTaken(self) -> None:
        """A publish that a server took is an online delivery; nothing stored."""
        await self.setUpCluster()
        self.bus.outcomes[self.bob] = 1
        reply = await self.call(self.aliceSession, Chat(self.bob, "hi"))
        self.assertEqual(reply, ChatSent(online=True))
        [[(userId, event)]] = self.bus.published
        self.assertEqual((userId, event.text, event.senderName),
                         (self.bob, "hi", "alice"))
        self.assertEqual(await self.storedFor(self.bob), [])
        self.assertEqual(self.bus.poked, [])

    async def test_publishNobody(self) -> None:
        """
        A publish nobody took (the database was stale: that server died)
        is stored, then poked.
        """
        await self.setUpCluster()
        self.bus.outcomes[self.bob] = 0
        reply = await self.call(self.aliceSession, Chat(self.bob, "hi"))
        self.assertEqual(reply, ChatSent(online=False))
        self.assertEqual(await self.storedFor(self.bob), ["hi"])
        self.assertEqual(self.bus.poked, [{self.bob}])

    async def test_publishFailed(self) -> None:
        """
        A publish whose outcome is unknown (Redis down, a timeout) is
        stored too: a rare duplicate is acceptable, a loss is not.
        """
        await self.setUpCluster()
        self.bus.outcomes[self.bob] = Failure(TimeoutError("redis"))
        reply = await self.call(self.aliceSession, Chat(self.bob, "hi"))
        self.assertEqual(reply, ChatSent(online=False))
        self.assertEqual(await self.storedFor(self.bob), ["hi"])

    async def test_offlineNotPublished(self) -> None:
        """
        A user the database knows to be offline is stored and poked
        without a publish.
        """
        # Created behind the service's back, so it does not know her.
        carol = await self.store.createUser("carol", "no hash")
        alice = await self.register("alice")
        session, _ = await self.login(alice)
        reply = await self.call(session, Chat(carol, "hi"))
        self.assertEqual(reply, ChatSent(online=False))
        self.assertEqual(self.bus.published, [])
        self.assertEqual(self.bus.poked, [{carol}])
        self.assertEqual(await self.storedFor(carol), ["hi"])

    async def test_groupMixed(self) -> None:
        """
        A group message to members local, remote (taken), remote (stale)
        and offline: one batch of publishes for the two remote ones, the
        stale and offline copies stored in one go and poked, and the
        counts say 2 online, 2 offline.
        """
        await self.setUpCluster()
        carol = await self.register("carol")
        dave = await self.register("dave")
        erin = await self.register("erin")
        carolSession, _ = await self.login(carol)
        self.assertTrue(await self.store.claimSession(dave, "other", 10))
        self.bus.outcomes.update({self.bob: 1, dave: 0})
        created = await self.call(self.aliceSession, CreateGroup("mixed"))
        group = created.groupId
        for member in (self.bob, carol, dave, erin):
            await self.pool.runOperation(
                "INSERT INTO group_members (group_id, user_id, role)"
                " VALUES (?, ?, 'normal')", (group, member))
        reply = await self.call(self.aliceSession, GroupChat(group, "all"))
        self.assertEqual(reply, GroupChatSent(online=2, offline=2))
        self.assertEqual(carolSession.texts, ["all"])
        self.assertEqual(len(self.bus.published), 1)
        self.assertEqual(sorted(u for u, _ in self.bus.published[0]),
                         sorted([self.bob, dave]))
        self.assertEqual(self.bus.poked, [{dave, erin}])
        self.assertEqual(await self.storedFor(dave), ["all"])
        self.assertEqual(await self.storedFor(erin), ["all"])
        self.assertEqual(await self.storedFor(self.bob), [])


class ProtocolLoginRaceTests(ServiceTestCase):
    """
    The real protocol over the real service: a connection that closes
    while its login is in flight.
    """

    async def test_closedDuringLogin(self) -> None:
        """
        The account is free again afterwards, and the offline message the
        abandoned login drained is stored again for the next login rather
        than lost.
        """
        alice = await self.register("alice")
        bob = await self.register("bob")
        aliceSession, _ = await self.login(alice)
        await self.call(aliceSession, Chat(bob, "while you were away"))

        answered: Deferred[None] = Deferred()
        handle = self.service.handle

        def watch(session: Any, request: Request) -> Any:
            result = handle(session, request)
            if isinstance(request, Login):
                self.service.handle = handle  # type: ignore[method-assign]
                # Runs after the protocol's own callbacks on the result.
                reactor.callLater(0, result.addBoth,
                                  lambda _: answered.callback(None))
            return result

        self.service.handle = watch  # type: ignore[method-assign]
        protocol = ChatFactory(self.service, ConnectionLimits(maxLine=1024)).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"login bob pw\r\n")
        protocol.connectionLost(Failure(ConnectionError("gone")))
        await answered
        self.assertEqual(transport.value(), b"")
        self.assertNotIn(bob, self.service.sessions)
        await self.settle()
        _, loggedIn = await self.login(bob)
        self.assertEqual([e.text for e in loggedIn.offline],
                         ["while you were away"])


class SlowSession(FakeSession):
    """
    A session whose output takes C{capacity} events, then refuses every
    event until L{read} (as a slow reader's OutputQueue does).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.refusing = False

    def deliver(self, event: ChatEvent) -> bool:
        if self.refusing or len(self.events) >= self.capacity:
            self.refusing = True
            return False
        return super().deliver(event)

    def room(self) -> int:
        return 0 if self.refusing else 1 << 20

    def backlog(self) -> None:
        self.refusing = True

    def read(self) -> None:
        """The client read all: it takes events again."""
        self.refusing = False
        self.capacity = 1 << 30


class SlowReaderTests(ServiceTestCase):
    """
    PROTOCOL.md section 6: what a slow reader's output refuses is stored,
    in order, and pushed back once it has read its backlog, before live
    delivery resumes.
    """

    async def test_overflowStoredThenPushedInOrder(self) -> None:
        alice = await self.register("alice")
        bob = await self.register("bob")
        aliceSession, _ = await self.login(alice)
        bobSession = SlowSession(capacity=2)
        reply = await self.call(bobSession, Login(bob, "pw"))
        self.service.loginAnswered(reply.userId)
        acks = [await self.call(aliceSession, Chat(bob, str(i)))
                for i in range(5)]
        self.assertEqual(acks, [ChatSent(online=True)] * 2 +
                         [ChatSent(online=False)] * 3)
        # From the bus too: stored behind the others.
        arrived = self.service.router.eventArrived(bob, ChatEvent(
            alice, "alice", "5", TIME, toId=bob, messageId=b"n.5"))
        self.assertIsNotNone(arrived)
        await arrived
        self.assertEqual(bobSession.texts, ["0", "1"])
        bobSession.read()
        self.service.backlogReadable(bobSession)
        await self.eventually(lambda: len(bobSession.texts) == 6)
        self.assertEqual(await self.call(aliceSession, Chat(bob, "6")),
                         ChatSent(online=True))
        self.assertEqual(bobSession.texts, [str(i) for i in range(7)])


class OfflineStoreTests(ServiceTestCase):
    """The offline store's order and its bounded takes."""

    def events(self, *texts: str) -> list[ChatEvent]:
        return [ChatEvent(1, "alice", t, TIME, toId=2) for t in texts]

    async def taken(self, maxBytes: Optional[int] = None) -> tuple[list[str], bool]:
        batch = await self.store.takeOffline(2, maxBytes)
        return [e.text for e in batch.events], batch.more

    async def test_inFront(self) -> None:
        """
        Messages put back in front go before everything stored for the
        user, in their own order, and before earlier ones put back too.
        """
        a, b, c, d, e = self.events("a", "b", "c", "d", "e")
        await self.store.storeOffline([OfflineMessage(2, c), OfflineMessage(2, d)])
        await self.store.storeOffline([OfflineMessage(2, a, True),
                                       OfflineMessage(2, b, True),
                                       OfflineMessage(3, e)])
        self.assertEqual(await self.taken(), (["a", "b", "c", "d"], False))

    async def test_boundedTake(self) -> None:
        """
        A take hands out no more than maxBytes (but always one), oldest
        first, says whether more are left, and deletes only what it took.
        """
        big = [ChatEvent(1, "alice", t * 100, TIME, toId=2) for t in "xyz"]
        await self.store.storeOffline([OfflineMessage(2, e) for e in big])
        size = len(big[0].toJSON())
        self.assertEqual(await self.taken(size + 10), (["x" * 100], True))
        self.assertEqual(await self.taken(1), (["y" * 100], True))
        self.assertEqual(await self.taken(), (["z" * 100], False))
        self.assertEqual(await self.taken(), ([], False))
