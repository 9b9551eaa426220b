"""
Chat and group chat: checking who a message may go to, stamping it, and
handing it to the router.

The one-to-one chat is the hot path: a recipient known to exist needs no
database at all (pushed here if local, without a Deferred, else
published, and stored only when no server took it); otherwise one query
finds the user and what the database says of its state.  This module
owns those checks and the event's stamp (sender, server time); where the
message goes is the router's business.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Union

from twisted.internet.defer import Deferred, ensureDeferred

from chat.core.errors import Forbidden, NotFound
from chat.core.messages import Chat, ChatEvent, ChatSent, GroupChat, GroupChatSent
from chat.server.routing import Router, Stored
from chat.server.session import ISession, identity
from chat.server.users import Directory, validId
from chat.storage.store import Store

_DELIVERED = ChatSent(online=True)
_STORED = ChatSent(online=False)

_lastSecond: list[object] = [None, ""]


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
    return str(_lastSecond[1])


def _chatSent(stored: int) -> ChatSent:
    return _STORED if stored else _DELIVERED


class Messaging:
    def __init__(self, store: Store, directory: Directory, router: Router,
                 clock: Callable[[], str] = serverTime) -> None:
        self._store = store
        self._directory = directory
        self._router = router
        self._clock = clock

    def _event(self, session: ISession, text: str, toId: Optional[int] = None,
               groupId: Optional[int] = None) -> ChatEvent:
        senderId, senderName = identity(session)
        return ChatEvent(senderId, senderName, text, self._clock(),
                         toId=toId, groupId=groupId)

    def chat(self, session: ISession,
             request: Chat) -> Union[ChatSent, Deferred[ChatSent]]:
        userId = self._directory.knownId(request.to)
        if userId is not None:
            event = self._event(session, request.text, toId=userId)
            return self._chatRouted(self._router.route(((userId, None),),
                                                       event))
        return ensureDeferred(self._chatLookedUp(session, request))

    async def _chatLookedUp(self, session: ISession, request: Chat) -> ChatSent:
        userId, _, online = await self._directory.other(request.to)
        event = self._event(session, request.text, toId=userId)
        routed = self._chatRouted(self._router.route(((userId, online),),
                                                     event))
        return await routed if isinstance(routed, Deferred) else routed

    @staticmethod
    def _chatRouted(stored: Stored) -> Union[ChatSent, Deferred[ChatSent]]:
        if isinstance(stored, int):
            return _chatSent(stored)
        return stored.addCallback(_chatSent)

    async def groupChat(self, session: ISession,
                        request: GroupChat) -> GroupChatSent:
        me, _ = identity(session)
        members = await self._membersOf(me, request.groupId)
        event = self._event(session, request.text, groupId=request.groupId)
        others = [(u, online) for u, online in members if u != me]
        routed = self._router.route(others, event)
        stored = await routed if isinstance(routed, Deferred) else routed
        return GroupChatSent(len(others) - stored, stored)

    async def _membersOf(self, userId: int,
                         groupId: int) -> list[tuple[int, bool]]:
        members = await self._store.groupMembers(groupId) if validId(
            groupId) else []
        if not members:
            raise NotFound(f"no group with id {groupId}")
        if not any(u == userId for u, _ in members):
            raise Forbidden(f"you are not a member of group {groupId}")
        return members
