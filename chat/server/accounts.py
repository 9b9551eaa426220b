"""
Accounts and logins: register, log in, log out.

A login is admitted among the bounded password checks, refused while its
account or address is locked after failures, checks the password (off the
reactor thread), claims the session through the registry, and only then
takes the offline messages, so that every message for the user reaches
the new session or the store.  This module owns those steps and their
order; it never touches a connection and never routes a message.
"""

from __future__ import annotations

from twisted.logger import Logger

from chat.core.errors import AccountInUse, AlreadyLoggedIn, WrongCredentials
from chat.core.messages import (
    LoggedIn, LoggedOut, Login, Logout, Register, Registered,
)
from chat.passwords import Passwords
from chat.server.admission import Admission
from chat.server.routing import Router
from chat.server.session import ISession
from chat.server.sessions import SessionRegistry
from chat.server.users import Directory
from chat.storage.store import Store


class Accounts:
    _log = Logger()

    def __init__(self, store: Store, passwords: Passwords,
                 sessions: SessionRegistry, router: Router,
                 directory: Directory, admission: Admission) -> None:
        self._store = store
        self._admission = admission
        self._passwords = passwords
        self._sessions = sessions
        self._router = router
        self._directory = directory

    async def register(self, session: ISession,
                       request: Register) -> Registered:
        await self._admission.register(session)
        with self._admission.checkingPassword(self._passwords,
                                              session) as suspect:
            encoded = await self._passwords.hash(request.password, suspect)
        userId = await self._store.createUser(request.name, encoded)
        self._directory.remember(userId, request.name)
        self._log.info("{peer}: registered {userName} (id {userId})",
                       peer=session.peer, userName=request.name,
                       userId=userId)
        return Registered(userId, request.name)

    async def login(self, session: ISession, request: Login) -> LoggedIn:
        if session.userId is not None:
            raise AlreadyLoggedIn("this connection is already logged in")
        with self._admission.checkingPassword(self._passwords,
                                              session) as suspect:
            user = await self._directory.account(request.user)
            # An unknown account costs a hash check too, so that the
            # answer's timing does not tell which accounts exist.
            matches = await self._admission.login(
                session, str(user.id if user is not None else request.user),
                lambda: self._passwords.verify(
                    user.passwordHash if user is not None else None,
                    request.password, suspect))
        if user is None or not matches:
            raise WrongCredentials("wrong id or password")
        if user.id in self._sessions:
            raise AccountInUse("this account is logged in elsewhere")
        drains = self._router.drains
        drains.beginLogin(user.id)
        try:
            await self._sessions.claim(session, user.id, user.name)
            self._directory.remember(user.id, user.name)
            friends = await self._store.friendsOf(user.id)
            groups = await self._store.groupsOf(user.id)
            # Last: once taken, the offline messages exist only in the
            # reply.
            offline = await drains.takeForLogin(user.id)
        except BaseException:
            self._sessions.forget(session)
            drains.abandonLogin(user.id)
            raise
        return LoggedIn(user.id, user.name, friends, groups, offline)

    async def logout(self, session: ISession, request: Logout) -> LoggedOut:
        # Answered once the database has let the session go (or failed
        # to, which is logged: the lease ends it then), so that after the
        # reply the user shows offline and may log in on another server.
        await self._sessions.forget(session)
        return LoggedOut()
