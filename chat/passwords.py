"""
Password hashing with argon2id, always off the reactor thread.

A slow, salted, memory-hard hash is the point: it takes tens of
milliseconds of CPU, which would stall every connection if run on the
reactor, so each hash and check runs in the reactor's thread pool.  This
module owns the hash and its cost; it never sees an account.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

_T = TypeVar("_T")
DEFAULT_TIME_COST = 3
DEFAULT_MEMORY_KIB = 65536


class Passwords:
    """
    Hashes and checks passwords at a configurable cost (tests and
    benchmarks lower it; production keeps argon2-cffi's defaults).
    """

    def __init__(self, timeCost: int = DEFAULT_TIME_COST,
                 memoryKiB: int = DEFAULT_MEMORY_KIB) -> None:
        self._hasher = PasswordHasher(
            time_cost=timeCost, memory_cost=memoryKiB, parallelism=1)
        self._unknown = self._hasher.hash("no account has this password")
        self.waiting = 0
        """Hashes and checks waiting for, or running on, a thread."""

    def _offThread(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        self.waiting += 1

        def done(result: Any) -> Any:
            self.waiting -= 1
            return result

        d: Deferred[_T] = deferToThread(work, *args)
        return d.addBoth(done)

    def hash(self, password: str) -> Deferred[str]:
        """Fires with the encoded hash (salt and parameters included)."""
        return self._offThread(self._hasher.hash, password)

    def verify(self, encoded: Optional[str], password: str) -> Deferred[bool]:
        """
        Fires with whether C{password} matches C{encoded}.  With no
        C{encoded} (no such account) it checks against a stand-in hash and
        fires with C{False}, taking as long as a real check.
        """
        if encoded is None:
            return self._offThread(self._check, self._unknown, password
                                   ).addCallback(lambda _: False)
        return self._offThread(self._check, encoded, password)

    def _check(self, encoded: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False
