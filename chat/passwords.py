"""
Password hashing with argon2id, off the reactor thread and bounded.

A slow, salted, memory-hard hash is the point: it takes tens of
milliseconds of CPU, which would stall every connection if run on the
reactor.  So each hash and check runs on a thread of this module's own
pool, at most one per core at once, at a lower CPU priority than the
reactor: a burst of logins then waits for the hash instead of starving
the reactor (before this bound, 5,000 logins at once at the default cost
kept the reactor from renewing the node's lease, and 4,829 of them were
answered 107).  How many may wait is bounded too (PROTOCOL.md 6: at most
C{--max-pending-logins}, and each answered within 30 s): beyond the bound
a request is refused with L{ServerBusy} at once, and one that waited
L{WAIT_LIMIT} seconds for a thread is refused so.  A check the caller
marks as suspect (its account or address failed recently) waits behind
every other one and may hold at most half of the pending places, so that
an attack from many addresses, each allowed its few failures, takes what
CPU the real users leave rather than their turn.  This module owns the
hash, its cost and those bounds; it never sees an account.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from chat.core.errors import RateLimited

_T = TypeVar("_T")
DEFAULT_TIME_COST = 3
DEFAULT_MEMORY_KIB = 65536
DEFAULT_MAX_PENDING = 128
"""C{--max-pending-logins}."""
WAIT_LIMIT = 20.0
"""Seconds a request may wait for a hashing thread before it is refused:
with the database's share, every login is answered within 30 s."""
NICENESS = 5
"""How much lower than the reactor's the hashing threads' priority is."""


class ServerBusy(RateLimited):
    """Too many logins wait for a password check (PROTOCOL.md 6)."""

    def __init__(self) -> None:
        super().__init__("server busy; retry later")


class _HashingThreads(ThreadPool):
    """
    A pool of daemon threads at a lower priority: a pool nobody stopped
    (a test's) must not keep the process from exiting, and a hash must
    never take the CPU from the reactor.
    """

    def threadFactory(self, *args: Any, **kwargs: Any) -> threading.Thread:  # type: ignore[override] # ThreadPool calls it like the Thread class it defaults to
        return threading.Thread(*args, daemon=True, **kwargs)


class _Slots:
    """
    The hashing threads as a count of free ones, handed on release to the
    oldest waiter that is not suspect, else to the oldest suspect one.
    """

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiting: tuple[deque[Deferred[None]], deque[Deferred[None]]] = (
            deque(), deque())

    def acquire(self, suspect: bool) -> Deferred[None]:
        """Fires once a thread is this caller's; cancelling gives up."""
        if self._free:
            self._free -= 1
            return succeed(None)
        queue = self._waiting[suspect]
        waiter: Deferred[None] = Deferred(queue.remove)
        queue.append(waiter)
        return waiter

    def release(self) -> None:
        for queue in self._waiting:
            if queue:
                queue.popleft().callback(None)
                return
        self._free += 1


_lowered = threading.local()


def _atLowPriority(work: Callable[..., _T], *args: Any) -> _T:
    """Run C{work} after lowering this thread's priority, once per
    thread (Linux schedules threads one by one; elsewhere it is a no-op)."""
    if not getattr(_lowered, "done", False):
        _lowered.done = True
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
        except (AttributeError, OSError):
            pass
    return work(*args)


class Passwords:
    """
    Hashes and checks passwords at a configurable cost (tests and
    benchmarks lower it; production keeps argon2-cffi's defaults).

    @ivar waiting: hashes and checks admitted and not yet done (waiting
        for, or running on, a thread).
    """

    def __init__(self, timeCost: int = DEFAULT_TIME_COST,
                 memoryKiB: int = DEFAULT_MEMORY_KIB,
                 maxPending: int = DEFAULT_MAX_PENDING,
                 threads: Optional[int] = None,
                 reactor: Optional[IReactorTime] = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        assert reactor is not None
        self._reactor = reactor
        self._hasher = PasswordHasher(
            time_cost=timeCost, memory_cost=memoryKiB, parallelism=1)
        self._unknown = self._hasher.hash("no account has this password")
        self._maxPending = maxPending
        count = threads or os.cpu_count() or 1
        self._threads = _HashingThreads(0, count, "passwords")
        self._slots = _Slots(count)
        self._started = False
        self.waiting = 0
        self._suspects = 0

    @contextmanager
    def admitted(self, suspect: bool = False) -> Iterator[None]:
        """
        Count the request run inside as one that waits for a password
        check (a login from its lookup to its answer), or refuse it.

        @raise ServerBusy: C{maxPending} requests wait already, or half
            of them are C{suspect} and so is this one.
        """
        if self.waiting >= self._maxPending or (
                suspect and self._suspects >= self._maxPending // 2):
            raise ServerBusy()
        self.waiting += 1
        self._suspects += int(suspect)
        try:
            yield
        finally:
            self.waiting -= 1
            self._suspects -= int(suspect)

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._threads.start()
            reactor = self._reactor
            if IReactorThreads.providedBy(reactor):
                reactor.addSystemEventTrigger(  # type: ignore[attr-defined] # every threaded reactor has it
                    "during", "shutdown", self._threads.stop)

    async def _offThread(self, suspect: bool, work: Callable[..., _T],
                         *args: Any) -> _T:
        """
        C{work(*args)} on a hashing thread, once one is free (for a
        C{suspect} caller: once no other waits).

        @raise ServerBusy: no thread was free within L{WAIT_LIMIT} s.
        """
        self._start()
        slot = self._slots.acquire(suspect).addTimeout(
            WAIT_LIMIT, self._reactor)
        try:
            await slot
        except TimeoutError:
            raise ServerBusy()
        try:
            return await deferToThreadPool(
                self._reactor, self._threads,  # type: ignore[arg-type] # every reactor here provides IReactorFromThreads
                _atLowPriority, work, *args)
        finally:
            self._slots.release()

    async def hash(self, password: str, suspect: bool = False) -> str:
        """
        The encoded hash (salt and parameters included).  Call it inside
        L{admitted}, with the same C{suspect}.
        """
        return await self._offThread(suspect, self._hasher.hash, password)

    async def verify(self, encoded: Optional[str], password: str,
                     suspect: bool = False) -> bool:
        """
        Whether C{password} matches C{encoded}.  With no C{encoded} (no
        such account) it checks against a stand-in hash and returns
        C{False}, taking as long as a real check.  Call it inside
        L{admitted}, with the same C{suspect}.
        """
        if encoded is None:
            await self._offThread(suspect, self._check, self._unknown,
                                  password)
            return False
        return await self._offThread(suspect, self._check, encoded, password)

    def _check(self, encoded: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False
