"""
The chat's queries: accounts, friends, groups, offline messages, sessions
and node leases.

Every statement is parameterised and written once, for both databases
(L{chat.storage.pool.SQLDialect} carries the differences).  This module
owns the SQL and turns rows into the values of L{chat.core.messages}; it
never decides anything (who may log in, where a message goes): that is
the server's.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import attrs
from twisted.internet.defer import Deferred

from chat.core.errors import Conflict, NameTaken
from chat.core.messages import ChatEvent, Friend, Group, Member
from chat.core.names import nameSkeleton
from chat.ops.counters import Counters, NoCounters
from chat.storage.pool import Database
from chat.storage.schema import applySchema


@attrs.frozen
class UserRow:
    id: int
    name: str
    passwordHash: str


TAKE_ROWS = 500
"""The most offline messages one take hands out."""


@attrs.frozen
class OfflineBatch:
    """
    Offline messages taken, oldest first, and whether more are left.
    """

    events: tuple[ChatEvent, ...]
    more: bool


@attrs.frozen
class _Statements:
    """Every statement of the store, for one dialect."""

    userById: str
    userByName: str
    createUser: str
    userState: str
    addFriend: str
    friendsOf: str
    createGroup: str
    addMember: str
    groupExists: str
    groupMembers: str
    groupsOf: str
    membersOfGroupsOf: str
    storeOffline: str
    frontKey: str
    pendingOffline: str
    deleteOffline: str
    insertSession: str
    takeOverSession: str
    releaseSession: str
    sessionsOn: str
    countSessionsOn: str
    clearSessionsOn: str
    forgetNode: str
    addNode: str
    renewNode: str
    purgeDeadSessions: str
    nodeDraining: str
    kicksFor: str
    forgetKicks: str


def _statements(db: Database) -> _Statements:
    d = db.dialect
    q, now = d.sql, d.now
    return _Statements(
        userById=q("SELECT id, name, password FROM users WHERE id = ?"),
        userByName=q("SELECT id, name, password FROM users WHERE name = ?"),
        createUser=q(
            "INSERT INTO users (name, skeleton, password) VALUES (?, ?, ?)"),
        userState=q(
            "SELECT u.name, s.node_id FROM users u LEFT JOIN sessions s"
            " ON s.user_id = u.id WHERE u.id = ?"),
        addFriend=q("INSERT INTO friends (user_id, friend_id) VALUES (?, ?)"),
        friendsOf=q(
            "SELECT u.id, u.name, s.node_id FROM friends f"
            " JOIN users u ON u.id = f.friend_id"
            " LEFT JOIN sessions s ON s.user_id = u.id"
            " WHERE f.user_id = ? ORDER BY u.id"),
        createGroup=q(
            "INSERT INTO chat_groups (name, description, creator_id)"
            " VALUES (?, ?, ?)"),
        addMember=q(
            "INSERT INTO group_members (group_id, user_id, role)"
            " VALUES (?, ?, ?)"),
        groupExists=q("SELECT 1 FROM chat_groups WHERE id = ?"),
        groupMembers=q(
            "SELECT m.user_id, s.node_id FROM group_members m"
            " LEFT JOIN sessions s ON s.user_id = m.user_id"
            " WHERE m.group_id = ?"),
        groupsOf=q(
            "SELECT g.id, g.name, g.description FROM group_members m"
            " JOIN chat_groups g ON g.id = m.group_id"
            " WHERE m.user_id = ? ORDER BY g.id"),
        membersOfGroupsOf=q(
            "SELECT m.group_id, u.id, u.name, m.role, s.node_id"
            " FROM group_members mine"
            " JOIN group_members m ON m.group_id = mine.group_id"
            " JOIN users u ON u.id = m.user_id"
            " LEFT JOIN sessions s ON s.user_id = u.id"
            " WHERE mine.user_id = ? ORDER BY m.group_id, u.id"),
        storeOffline=q(
            "INSERT INTO offline_messages (user_id, msg_id, sort_key, payload)"
            " VALUES (?, ?, ?, ?)"),
        frontKey=q(
            "SELECT COALESCE(MIN(sort_key), 0) - 1 FROM offline_messages"
            " WHERE user_id = ?"),
        pendingOffline=q(
            "SELECT id, msg_id, sort_key, payload FROM offline_messages"
            + d.useIndex.format("offline_messages_in_order") +
            " WHERE user_id = ? ORDER BY sort_key, id LIMIT ?" + d.forUpdate),
        deleteOffline=q("DELETE FROM offline_messages WHERE id = ?"),
        insertSession=q(
            f"{d.insertIgnore} INTO sessions (user_id, node_id, since)"
            f" VALUES (?, ?, {now})"),
        takeOverSession=q(
            f"UPDATE sessions SET node_id = ?, since = {now}"
            " WHERE user_id = ? AND (node_id = ? OR NOT EXISTS ("
            " SELECT 1 FROM nodes n WHERE n.node_id = sessions.node_id"
            f" AND n.last_seen >= {now} - ?))"),
        releaseSession=q(
            "DELETE FROM sessions WHERE user_id = ? AND node_id = ?"),
        sessionsOn=q("SELECT user_id FROM sessions WHERE node_id = ?"),
        countSessionsOn=q("SELECT COUNT(*) FROM sessions WHERE node_id = ?"),
        clearSessionsOn=q("DELETE FROM sessions WHERE node_id = ?"),
        forgetNode=q("DELETE FROM nodes WHERE node_id = ?"),
        addNode=q(f"INSERT INTO nodes (node_id, last_seen) VALUES (?, {now})"),
        renewNode=q(f"UPDATE nodes SET last_seen = {now} WHERE node_id = ?"),
        purgeDeadSessions=q(
            "DELETE FROM sessions WHERE node_id NOT IN ("
            f" SELECT node_id FROM nodes WHERE last_seen >= {now} - ?)"),
        nodeDraining=q("SELECT draining FROM nodes WHERE node_id = ?"),
        kicksFor=q("SELECT user_id FROM kicks WHERE node_id = ?"),
        forgetKicks=q("DELETE FROM kicks WHERE node_id = ?"),
    )


def _firstUser(rows: list[tuple[Any, ...]]) -> Optional[UserRow]:
    return UserRow(*rows[0]) if rows else None


class OfflineMessage(NamedTuple):
    """
    A message to store: for whom, what, and whether it goes in front of
    the user's stored messages (it was taken for a connection that died
    before writing it, so it is older than all of them).
    """

    userId: int
    event: ChatEvent
    inFront: bool = False


def _offlineRow(message: OfflineMessage, sortKey: int) -> tuple[Any, ...]:
    messageId = message.event.messageId
    return (message.userId,
            None if messageId is None else messageId.decode("ascii"),
            sortKey, message.event.toJSON().decode("utf-8"))


@attrs.frozen
class Orders:
    """What an operator asked of a node (L{chat.ops.orders})."""

    draining: bool
    kicks: tuple[int, ...]


class Store:
    """
    The chat's tables.  Every method but L{prepare} returns a
    L{Deferred}, failing with L{chat.core.errors.Unavailable} when the
    database cannot be used.
    """

    def __init__(self, database: Database,
                 counters: Counters = NoCounters()) -> None:
        self._db = database
        self._sql = _statements(database)
        self._counters = counters

    def prepare(self, nodeId: str) -> None:
        """
        Before the reactor runs, on the calling thread: check that the
        database answers, create the tables that are missing (migrating
        an older database), and register this node (L{_startNode}), so
        that nothing is served until all that is done and a bad database
        is reported at once.

        @raise Exception: the driver's error, when the database cannot be
            used.
        """
        def prepare(cursor: Any) -> None:
            applySchema(cursor, self._db.dialect)
            self._startNode(cursor, nodeId)

        self._db.runBlocking(prepare)

    # Accounts -----------------------------------------------------------

    def userById(self, userId: int) -> Deferred[Optional[UserRow]]:
        return self._db.query(self._sql.userById, userId).addCallback(
            _firstUser)

    def userByName(self, name: str) -> Deferred[Optional[UserRow]]:
        return self._db.query(self._sql.userByName, name).addCallback(
            _firstUser)

    def createUser(self, name: str, passwordHash: str) -> Deferred[int]:
        """
        Fires with the new id; fails with L{NameTaken} when the name, or
        its look-alike key (L{nameSkeleton}), is another user's
        (PROTOCOL.md 3.3).

        The unique indexes on both decide, in this one C{INSERT}, not a
        look-up before it: two nodes registering C{alice} and C{Аlice} at
        once cannot both succeed.  The key is computed on the pool thread,
        so that its Unicode work (and, the first time, the loading of the
        confusables table) stays off the reactor.
        """
        insert = self._sql.createUser

        def interaction(cursor: Any) -> int:
            cursor.execute(insert, (name, nameSkeleton(name), passwordHash))
            return int(cursor.lastrowid)

        return self._db.mapIntegrity(
            self._db.run(interaction),
            NameTaken(f"the name {name} is taken, or looks like one that is"))

    def userState(self, userId: int) -> Deferred[Optional[tuple[str, bool]]]:
        """
        Fires with C{(name, online)} for an existing user, else L{None}.
        """
        return self._db.query(self._sql.userState, userId).addCallback(
            lambda rows: (rows[0][0], rows[0][1] is not None) if rows else None)

    # Friends ------------------------------------------------------------

    def addFriend(self, userId: int, friendId: int) -> Deferred[int]:
        return self._db.mapIntegrity(
            self._db.execute(self._sql.addFriend, userId, friendId),
            Conflict(f"{friendId} is already your friend"))

    def friendsOf(self, userId: int) -> Deferred[tuple[Friend, ...]]:
        """Fires with a tuple of L{Friend}, by id."""
        return self._db.query(self._sql.friendsOf, userId).addCallback(
            lambda rows: tuple(Friend(r[0], r[1], r[2] is not None)
                               for r in rows))

    # Groups -------------------------------------------------------------

    def createGroup(self, creatorId: int, name: str,
                    description: str) -> Deferred[int]:
        """Fires with the new group's id; fails with L{NameTaken}."""
        create, add = self._sql.createGroup, self._sql.addMember

        def interaction(cursor: Any) -> int:
            cursor.execute(create, (name, description, creatorId))
            groupId = int(cursor.lastrowid)
            cursor.execute(add, (groupId, creatorId, "creator"))
            return groupId

        return self._db.mapIntegrity(
            self._db.run(interaction),
            NameTaken(f"a group named {name} exists"))

    def groupExists(self, groupId: int) -> Deferred[bool]:
        return self._db.query(self._sql.groupExists, groupId).addCallback(bool)

    def joinGroup(self, groupId: int, userId: int) -> Deferred[int]:
        return self._db.mapIntegrity(
            self._db.execute(self._sql.addMember, groupId, userId, "normal"),
            Conflict(f"you are already a member of group {groupId}"))

    def groupMembers(self, groupId: int) -> Deferred[list[tuple[int, bool]]]:
        """
        Fires with C{[(userId, online)]} for every member; empty when there
        is no such group (a group always has its creator).
        """
        return self._db.query(self._sql.groupMembers, groupId).addCallback(
            lambda rows: [(r[0], r[1] is not None) for r in rows])

    def groupsOf(self, userId: int) -> Deferred[tuple[Group, ...]]:
        """Fires with a tuple of L{Group}, with members, by id."""
        groupsSQL, membersSQL = self._sql.groupsOf, self._sql.membersOfGroupsOf

        def interaction(cursor: Any) -> tuple[Group, ...]:
            cursor.execute(groupsSQL, (userId,))
            groups = cursor.fetchall()
            cursor.execute(membersSQL, (userId,))
            members: dict[int, list[Member]] = {}
            for groupId, memberId, name, role, node in cursor.fetchall():
                members.setdefault(groupId, []).append(
                    Member(memberId, name, node is not None, role))
            return tuple(Group(g[0], g[1], g[2], tuple(members.get(g[0], ())))
                         for g in groups)

        return self._db.run(interaction)

    # Offline messages ---------------------------------------------------

    def storeOffline(self,
                     messages: Sequence[OfflineMessage]) -> Deferred[None]:
        """
        Keep messages for their recipients' next login, with their
        message ids, in one transaction.  Those C{inFront} go before
        everything stored for their user (in their own order).
        """
        insert, frontKey = self._sql.storeOffline, self._sql.frontKey
        front = {m.userId for m in messages if m.inFront}

        def interaction(cursor: Any) -> None:
            keys = {}
            for userId in front:
                cursor.execute(frontKey, (userId,))
                keys[userId] = int(cursor.fetchone()[0])
            cursor.executemany(insert, [
                _offlineRow(m, keys[m.userId] if m.inFront else 0)
                for m in messages])

        stored = self._counters.stored
        return self._db.run(interaction).addCallback(
            lambda _: stored(len(messages)))

    def takeOffline(self, userId: int,
                    maxBytes: Optional[int] = None) -> Deferred[OfflineBatch]:
        """
        Take a user's oldest offline messages: at most L{TAKE_ROWS}, and
        no more than C{maxBytes} of them (but at least one, so that a
        drain always advances).  Read and delete in one transaction (rows
        locked on MySQL), so two concurrent drains never hand out the
        same message.
        """
        select, delete = self._sql.pendingOffline, self._sql.deleteOffline

        def interaction(cursor: Any) -> OfflineBatch:
            cursor.execute(select, (userId, TAKE_ROWS + 1))
            rows = cursor.fetchall()
            taken, size = 0, 0
            for row in rows[:TAKE_ROWS]:
                size += len(row[3])
                if taken and maxBytes is not None and size > maxBytes:
                    break
                taken += 1
            if taken:
                # Row by row, by primary key: a range over (sort_key, id),
                # or a long IN list, made InnoDB scan, and lock, other
                # users' rows too, and drains of two users deadlocked.
                cursor.executemany(delete, [(row[0],) for row in rows[:taken]])
            return OfflineBatch(tuple(ChatEvent.fromJSON(
                payload.encode("utf-8"),
                None if messageId is None else messageId.encode("ascii"))
                for _, messageId, _, payload in rows[:taken]),
                more=taken < len(rows))

        def count(batch: OfflineBatch) -> OfflineBatch:
            self._counters.delivered(len(batch.events))
            return batch

        return self._db.run(interaction).addCallback(count)

    # Sessions and leases -----------------------------------------------

    def claimSession(self, userId: int, nodeId: str,
                     leaseSeconds: float) -> Deferred[bool]:
        """
        Make C{nodeId} the holder of C{userId}'s session, atomically: a new
        row, or a takeover of a row whose node's lease is older than
        C{leaseSeconds} (or that this node itself left behind).  Fires with
        whether it worked.
        """
        insert, takeOver = self._sql.insertSession, self._sql.takeOverSession

        def interaction(cursor: Any) -> bool:
            cursor.execute(insert, (userId, nodeId))
            if cursor.rowcount == 1:
                return True
            cursor.execute(takeOver, (nodeId, userId, nodeId, leaseSeconds))
            return bool(cursor.rowcount == 1)

        return self._db.run(interaction)

    def releaseSession(self, userId: int, nodeId: str) -> Deferred[int]:
        return self._db.execute(self._sql.releaseSession, userId, nodeId)

    def _startNode(self, cursor: Any, nodeId: str) -> None:
        """
        Register a starting node: forget whatever sessions an earlier run
        under the same id left behind, and the kicks meant for them, and
        take a fresh lease (not draining).
        """
        cursor.execute(self._sql.clearSessionsOn, (nodeId,))
        cursor.execute(self._sql.forgetKicks, (nodeId,))
        cursor.execute(self._sql.forgetNode, (nodeId,))
        cursor.execute(self._sql.addNode, (nodeId,))

    def renewLease(self, nodeId: str,
                   purgeAfter: Optional[float]) -> Deferred[int]:
        """
        Renew this node's lease and fire with the number of sessions the
        database says this node holds.  With C{purgeAfter}, also end the
        sessions of nodes silent for that many seconds.
        """
        sql = self._sql

        def interaction(cursor: Any) -> int:
            cursor.execute(sql.renewNode, (nodeId,))
            if cursor.rowcount == 0:
                cursor.execute(sql.addNode, (nodeId,))
            if purgeAfter is not None:
                cursor.execute(sql.purgeDeadSessions, (purgeAfter,))
            cursor.execute(sql.countSessionsOn, (nodeId,))
            return int(cursor.fetchone()[0])

        return self._db.run(interaction)

    def sessionsOn(self, nodeId: str) -> Deferred[set[int]]:
        """Fires with the set of user ids whose sessions C{nodeId} holds."""
        return self._db.query(self._sql.sessionsOn, nodeId).addCallback(
            lambda rows: {row[0] for row in rows})

    def stopNode(self, nodeId: str) -> Deferred[None]:
        """A node shutting down cleanly: its sessions and lease go."""
        sql = self._sql

        def interaction(cursor: Any) -> None:
            cursor.execute(sql.clearSessionsOn, (nodeId,))
            cursor.execute(sql.forgetNode, (nodeId,))

        return self._db.run(interaction)

    # Operators' orders and checks ---------------------------------------

    def takeOrders(self, nodeId: str) -> Deferred[Orders]:
        """
        Fire with what operators asked of C{nodeId}: whether to drain, and
        whose sessions to end (those orders are taken: read and deleted
        in one transaction).
        """
        sql = self._sql

        def interaction(cursor: Any) -> Orders:
            cursor.execute(sql.nodeDraining, (nodeId,))
            row = cursor.fetchone()
            cursor.execute(sql.kicksFor, (nodeId,))
            kicks = tuple(int(r[0]) for r in cursor.fetchall())
            if kicks:
                cursor.execute(sql.forgetKicks, (nodeId,))
            return Orders(bool(row and row[0]), kicks)

        return self._db.run(interaction)

    def ping(self) -> Deferred[object]:
        """A trivial query: fails when the database does not answer."""
        return self._db.query("SELECT 1").addCallback(lambda _: None)
