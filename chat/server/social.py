"""
Friends and groups: adding friends, creating and joining groups, and the
two lists.

Friendship is one-directional, as in the classic server.  This module
owns those rules; it never sends a message (group chat is
L{chat.server.messaging}'s).
"""

from __future__ import annotations

from chat.core.errors import NotFound
from chat.core.messages import (
    AddFriend, AddGroup, CreateGroup, FriendAdded, FriendList, Friends,
    GroupCreated, GroupJoined, GroupList, Groups,
)
from chat.server.session import ISession, identity
from chat.server.users import Directory, validId
from chat.storage.store import Store


class Social:
    def __init__(self, store: Store, directory: Directory) -> None:
        self._store = store
        self._directory = directory

    async def addFriend(self, session: ISession,
                        request: AddFriend) -> FriendAdded:
        me, _ = identity(session)
        friendId, name, _ = await self._directory.other(request.friend)
        await self._store.addFriend(me, friendId)
        return FriendAdded(friendId, name)

    async def friendList(self, session: ISession,
                         request: FriendList) -> Friends:
        me, _ = identity(session)
        return Friends(await self._store.friendsOf(me))

    async def createGroup(self, session: ISession,
                          request: CreateGroup) -> GroupCreated:
        me, _ = identity(session)
        groupId = await self._store.createGroup(
            me, request.name, request.description)
        return GroupCreated(groupId, request.name)

    async def addGroup(self, session: ISession,
                       request: AddGroup) -> GroupJoined:
        me, _ = identity(session)
        if not (validId(request.groupId) and
                await self._store.groupExists(request.groupId)):
            raise NotFound(f"no group with id {request.groupId}")
        await self._store.joinGroup(request.groupId, me)
        return GroupJoined(request.groupId)

    async def groupList(self, session: ISession,
                        request: GroupList) -> Groups:
        me, _ = identity(session)
        return Groups(await self._store.groupsOf(me))
