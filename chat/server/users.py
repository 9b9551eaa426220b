"""
Who exists: finding the user a request names, by id or by name.

Accounts are never renamed or deleted, so once a user is known to exist
its id and name never go stale, and the chat path can skip the database
for every message but the first to each recipient.  This module owns that
cache and the lookups behind it; it never decides whether a request is
allowed.
"""

from __future__ import annotations

from typing import Optional

from chat.core.errors import NotFound
from chat.core.messages import UserRef
from chat.core.rules import MAX_ID
from chat.storage.store import Store, UserRow


def validId(value: int) -> bool:
    """Whether C{value} can name a row at all."""
    return 0 < value <= MAX_ID


class KnownUsers:
    """
    Ids and names of users known to exist.  Only bounded: it simply
    starts afresh when full.
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


class Directory:
    """
    Finds users, through L{KnownUsers} where it can.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._known = KnownUsers()

    def remember(self, userId: int, name: str) -> None:
        self._known.remember(userId, name)

    def knownId(self, ref: UserRef) -> Optional[int]:
        """
        The id of the user C{ref} names, if that user is known to exist;
        no database involved.
        """
        if isinstance(ref, str):
            return self._known.idOf(ref)
        return ref if self._known.nameOf(ref) is not None else None

    async def account(self, ref: UserRef) -> Optional[UserRow]:
        """The account C{ref} names, with its password hash, if any."""
        if isinstance(ref, int):
            if not validId(ref):
                return None
            return await self._store.userById(ref)
        return await self._store.userByName(ref)

    async def other(self, ref: UserRef) -> tuple[int, str, bool]:
        """
        C{(id, name, online)} of the existing user C{ref} names (someone
        other than the sender: the service refuses a request to yourself
        first); C{online} is what the database says.

        @raise NotFound: no such user.
        """
        if isinstance(ref, str):
            userId = self._known.idOf(ref)
            if userId is None:
                user = await self._store.userByName(ref)
                if user is None:
                    raise NotFound(f"no user named {ref}")
                userId = user.id
        else:
            userId = ref
        state = await self._store.userState(userId) if validId(
            userId) else None
        if state is None:
            raise NotFound(f"no user with id {userId}")
        name, online = state
        self._known.remember(userId, name)
        return userId, name, online
