"""
Password hashing with argon2id, always off the reactor thread.

A slow, salted, memory-hard hash is the point: it takes tens of
milliseconds of CPU, which would stall every connection if run on the
reactor, so each hash and check runs in the reactor's thread pool.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

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

    def hash(self, password: str) -> Deferred:
        """Fires with the encoded hash (salt and parameters included)."""
        return deferToThread(self._hasher.hash, password)

    def verify(self, encoded: str, password: str) -> Deferred:
        """Fires with whether C{password} matches C{encoded}."""
        return deferToThread(self._check, encoded, password)

    def _check(self, encoded: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except (VerificationError, InvalidHashError):
            return False
