"""
Who may do what now: the rate limits of PROTOCOL.md 6 applied to
sessions.

L{Admission} holds each session's chat bucket, the failed-login lock-out
and the registration limit over the node's counters (shared through
Redis in a cluster: L{SharedCounters}), and counts every refusal for the
metrics (the bound on password checks' included).  It decides and raises
the errno 106 errors; it never answers a
client and never checks a password itself.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator, Sequence, TypeVar
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chat.core.errors import RateLimited
from chat.limits import (
    DEFAULT_CHAT_BURST, DEFAULT_CHAT_RATE, ILimitCounters, LockRule,
    LoginThrottle, LoginsLocked, MemoryCounters, RegistrationThrottle,
    TokenBucket, TooManyRegistrations, TrustedNets, normalizeAddress,
)
from chat.ops.counters import Counters, NoCounters
from chat.passwords import Passwords, ServerBusy
from chat.server.session import ISession

_T = TypeVar("_T")
SUSPECT_SECONDS = 900.0
"""How long an address that failed a login has its password checks
queued behind the others' (the lock-out's memory of strikes)."""
SUSPECTS_KEPT = 100_000
SHARED_TIMEOUT = 1.0
"""Seconds a shared counter may take before this node's own is used."""


class TooManyMessages(RateLimited):
    """The session sent more than its chat bucket holds."""

    def __init__(self) -> None:
        super().__init__("too many messages; slow down")


@implementer(ILimitCounters)
class SharedCounters:
    """
    Counters shared by the cluster (C{shared}, in Redis), or this node's
    own (C{local}) for as long as the shared ones do not answer within
    L{SHARED_TIMEOUT}: a Redis outage must not stop logins (PROTOCOL.md 5
    keeps the chat up through it), and the limits then hold per node.
    """

    _log = Logger()

    def __init__(self, shared: ILimitCounters, local: ILimitCounters,
                 clock: IReactorTime) -> None:
        self._shared = shared
        self._local = local
        self._clock = clock
        self._failing = False

    def _either(self, call: Callable[[ILimitCounters], Deferred[_T]]
                ) -> Deferred[_T]:
        d = call(self._shared).addTimeout(SHARED_TIMEOUT, self._clock)

        def worked(result: _T) -> _T:
            if self._failing:
                self._failing = False
                self._log.info("rate limit counters: shared again")
            return result

        def failed(reason: object) -> Deferred[_T]:
            if not self._failing:
                self._failing = True
                self._log.warn("rate limit counters: the shared ones "
                               "failed ({reason}); counting on this node",
                               reason=reason)
            return call(self._local)

        return d.addCallbacks(worked, failed)

    def hit(self, key: str, window: float) -> Deferred[int]:
        return self._either(lambda counters: counters.hit(key, window))

    def strike(self, key: str, rule: LockRule) -> Deferred[float]:
        return self._either(lambda counters: counters.strike(key, rule))

    def lockedFor(self, keys: Sequence[str]) -> Deferred[float]:
        return self._either(lambda counters: counters.lockedFor(keys))

    def clear(self, key: str) -> Deferred[None]:
        return self._either(lambda counters: counters.clear(key))


class Admission:
    """
    The limits one node applies (PROTOCOL.md 6), with their refusals
    counted as C{chat_rate_limited_total{limit=...}}.

    It also remembers, on this node only, which addresses failed a login
    within L{SUSPECT_SECONDS}: their password checks are suspect
    (L{Passwords.admitted}), so that an attack spread over many addresses,
    each allowed its 5 failures by the lock-out, waits behind the logins
    of everybody else instead of taking their turn.  (Measured with the
    login storm benchmark, 1,000 users and 1,000 attacking addresses:
    before, the users were all in after 11.9 times as long as without the
    attack.)  This only orders work; it refuses nothing.
    """

    def __init__(self, counters: ILimitCounters, trusted: TrustedNets,
                 clock: IReactorTime, chatRate: float = DEFAULT_CHAT_RATE,
                 chatBurst: int = DEFAULT_CHAT_BURST,
                 metrics: Counters = NoCounters()) -> None:
        self._clock = clock
        self._chatRate = chatRate
        self._chatBurst = chatBurst
        self._trusted = trusted
        self._failedAt: OrderedDict[str, float] = OrderedDict()
        self._logins = LoginThrottle(counters, trusted)
        self._registrations = RegistrationThrottle(counters, trusted)
        self._metrics = metrics
        self._buckets: WeakKeyDictionary[ISession, TokenBucket] = \
            WeakKeyDictionary()

    def chat(self, session: ISession) -> None:
        """
        One chat or group chat from C{session}: take its token.

        @raise TooManyMessages: the bucket is empty; nothing is sent.
        """
        if not self._chatRate:
            return
        bucket = self._buckets.get(session)
        if bucket is None:
            bucket = self._buckets[session] = TokenBucket(
                self._clock, self._chatRate, self._chatBurst)
        if not bucket.take():
            self._metrics.limited("chat")
            raise TooManyMessages()

    def _suspect(self, address: str) -> bool:
        """Whether C{address} failed a login here not long ago."""
        failed = self._failedAt.get(normalizeAddress(address))
        return failed is not None and \
            self._clock.seconds() - failed < SUSPECT_SECONDS

    def _failed(self, address: str) -> None:
        if self._trusted.isTrusted(address):
            return
        key = normalizeAddress(address)
        self._failedAt.pop(key, None)
        self._failedAt[key] = self._clock.seconds()
        while len(self._failedAt) > SUSPECTS_KEPT:
            self._failedAt.popitem(last=False)

    @contextmanager
    def checkingPassword(self, passwords: Passwords,
                         session: ISession) -> Iterator[bool]:
        """
        L{Passwords.admitted} for a request of C{session}, with its
        refusals counted; gives whether its password work is suspect.

        @raise ServerBusy: too many logins wait for a password check.
        """
        suspect = self._suspect(session.address)
        try:
            with passwords.admitted(suspect):
                yield suspect
        except ServerBusy:
            self._metrics.limited("pending-logins")
            raise

    async def login(self, session: ISession, account: str,
                    checkPassword: Callable[[], Awaitable[bool]]) -> bool:
        """
        The outcome of C{checkPassword} for a login into C{account} (the
        account's id as text, or the name given when there is none),
        recorded against the client's address.

        @raise LoginsLocked: that login is locked; no password was checked.
        """
        try:
            matches = await self._logins.guard(account, session.address,
                                               checkPassword)
        except LoginsLocked:
            self._metrics.limited("login")
            raise
        if not matches:
            self._failed(session.address)
        return matches

    async def register(self, session: ISession) -> None:
        """
        Count one registration from the client's address.

        @raise TooManyRegistrations: that address is over its limit.
        """
        try:
            await self._registrations.check(session.address)
        except TooManyRegistrations:
            self._metrics.limited("register")
            raise
