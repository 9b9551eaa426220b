"""
The rate limits of PROTOCOL.md section 6, as policy over counters.

This module owns the chat token bucket, the failed-login lock-out, the
registration limit, the trusted networks, and the counters they keep:
L{ILimitCounters}, held in this process by L{MemoryCounters} or shared by
a cluster through Redis by L{RedisCounters}.  It never answers a client,
never reads a clock other than the one it is given, and never blocks: the
policies only decide, the callers reply errno 106.

Exactly what the limits do (where PROTOCOL.md leaves a choice):

  - Chat (L{TokenBucket}, one per session): a bucket of C{burst} tokens,
    full when the session starts, refilled at C{rate} tokens a second up to
    C{burst}; each chat or group chat takes one, and one that finds none is
    refused.  C{rate} 0 turns the limit off.

  - Failed logins (L{LoginThrottle}), counted separately per account and
    client address, and per client address over all accounts:
      - failures are counted in fixed windows of 60 s, each starting at the
        first failure after the previous window ended (Redis C{INCR} with
        C{PEXPIRE});
      - the failure that brings a window's count to the threshold (the 5th
        for an account from one address, the 50th from one address) locks
        the key for 60 s;
      - while a key is locked, logins it covers are refused at once,
        without a password check; a refused login is not a failure and
        does not lengthen the lock;
      - after a lock, the key remembers how many locks it has had (its
        strikes) until 15 minutes after the last lock ended.  Each failure
        while it remembers is a further failure: it locks at once, for
        twice the previous lock, at most 15 minutes.  So the 5th failure
        locks 60 s; one failure after that lock ends locks 120 s, the next
        240 s, then 480 s, then 900 s, and 900 s for every failure after
        that.  Fifteen minutes without a failure after a lock has ended,
        the key is forgotten and again needs 5 (or 50) failures;
      - a successful login clears the account-and-address key (count,
        lock and strikes).  It does not clear the address key, or anyone
        holding one account could reset the count summed over accounts;
      - a trusted address (L{TrustedNets}) is neither counted nor locked
        per address, but its account-and-address keys are.
    Two consequences of fixed windows: up to 4 failures at the end of one
    window and 4 at the start of the next do not lock (8 within a moment,
    but at most 4 a minute on average); and logins already past the check
    when the lock lands still get their password check, so a burst of
    concurrent attempts (at most C{--max-pending-logins}) can all be
    checked.

  - Registrations (L{RegistrationThrottle}): at most 10 in a fixed window
    of 60 s per client address, the window starting at the first
    registration after the previous one ended; each attempt that reaches
    the check counts, refused or not, and a trusted address is not
    counted.  (Across a window boundary up to 20 can pass within a moment;
    never more than 10 in one window.)

Keys are built by L{limitKey}: kind, normalised address and account, each
escaped, so no two different triples share a key.
"""

from __future__ import annotations

import math
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from chat.core.errors import RateLimited

DEFAULT_CHAT_RATE = 200.0
"""C{--chat-rate}: chat messages a second per session; 0 is unlimited."""

DEFAULT_CHAT_BURST = 2000
"""C{--chat-burst}: the most chat messages a session may send at once."""

DEFAULT_TRUSTED_NETS = "127.0.0.0/8,::1"
"""C{--trusted-net}: local tools and load tests are not throttled."""

REGISTRATIONS_PER_WINDOW = 10
REGISTRATION_WINDOW = 60.0

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class LoginsLocked(RateLimited):
    """
    Logins for this account from this address, or from this address at
    all, are locked after failures: the JSON C{errmsg} and text C{ERR 106}
    text of PROTOCOL.md 6.

    @ivar retryIn: whole seconds until the lock ends, at least 1.
    """

    def __init__(self, seconds: float) -> None:
        self.retryIn = max(1, math.ceil(seconds))
        super().__init__(f"too many failed logins; retry in {self.retryIn} s")


class TooManyRegistrations(RateLimited):
    """This address registered 10 accounts within the last window."""

    def __init__(self) -> None:
        super().__init__("too many registrations; retry later")


# --- Client addresses and trusted networks ---------------------------------


def _parseAddress(address: str) -> IPAddress | None:
    """
    The IP address C{address} names, an IPv4-mapped IPv6 address as the
    IPv4 address it maps (a dual-stack socket reports IPv4 clients so), or
    L{None} for anything that is not an IP address.
    """
    try:
        parsed = ip_address(address)
    except ValueError:
        return None
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def normalizeAddress(address: str) -> str:
    """
    One spelling per client address, so that C{::ffff:10.0.0.1},
    C{10.0.0.1} and C{0:0::ffff:a00:1} share their counters.  Something
    that is not an IP address (a UNIX socket's path) is kept as it is.
    """
    parsed = _parseAddress(address)
    return address if parsed is None else parsed.compressed


def parseTrustedNets(value: str) -> list[IPNetwork]:
    """
    The networks of a C{--trusted-net} value: comma-separated addresses
    or networks, e.g. C{"127.0.0.0/8,::1"}; an empty (or blank) value
    trusts none.

    @raise ValueError: with a message naming the bad entry, for an empty
        entry, a network with host bits set (and what was probably meant)
        or anything that is not an address or network.
    """
    if not value.strip():
        return []
    networks: list[IPNetwork] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            raise ValueError(
                f"trusted networks {value!r}: an empty entry between commas")
        try:
            networks.append(ip_network(entry))
        except ValueError:
            try:
                meant = ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted network {entry!r} is not an IP address or a"
                    " network such as 10.0.0.0/8 or fd00::/8") from None
            raise ValueError(
                f"trusted network {entry!r} has host bits set; did you mean"
                f" {meant}?") from None
    return networks


class TrustedNets:
    """
    The client addresses exempt from the per-address limits: local tools
    and load tests (PROTOCOL.md 6, C{--trusted-net}).
    """

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self._networks = tuple(networks)

    @classmethod
    def fromString(cls, value: str) -> TrustedNets:
        """Parse a C{--trusted-net} value; see L{parseTrustedNets}."""
        return cls(parseTrustedNets(value))

    def isTrusted(self, address: str) -> bool:
        """
        Whether C{address} lies in one of the networks; an IPv4-mapped
        IPv6 address counts as its IPv4 address, and something that is
        not an IP address is never trusted.
        """
        parsed = _parseAddress(address)
        if parsed is None:
            return False
        return any(parsed in network for network in self._networks
                   if network.version == parsed.version)


# --- The chat limit ---------------------------------------------------------


class _Seconds(Protocol):
    """What L{TokenBucket} needs of a clock: C{IReactorTime.seconds}."""

    def seconds(self) -> float: ...


class TokenBucket:
    """
    One session's chat limit: C{burst} messages at once, C{rate} a second
    on average (PROTOCOL.md 6).  Lives with its session, so it needs no
    sweep.
    """

    def __init__(self, clock: _Seconds, rate: float = DEFAULT_CHAT_RATE,
                 burst: int = DEFAULT_CHAT_BURST) -> None:
        """
        @param rate: tokens added a second; 0 means unlimited.
        @param burst: the most tokens held; the bucket starts full.
        @raise ValueError: for a negative rate, or a burst below 1 with a
            rate (no message could ever pass).
        """
        if rate < 0:
            raise ValueError(f"chat rate {rate} is negative")
        if rate and burst < 1:
            raise ValueError(f"chat burst {burst} is below 1")
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self) -> bool:
        """Whether one more message may go now; takes its token if so."""
        if not self._rate:
            return True
        now = self._clock.seconds()
        # A clock set back must not take tokens away.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


# --- Counters ---------------------------------------------------------------


@attrs.frozen
class LockRule:
    """
    When failures lock a key, and for how long (the module docstring says
    exactly how).

    @ivar threshold: failures within one window that lock.
    @ivar window: seconds of one counting window.
    @ivar firstLock: seconds of the first lock; each further failure
        doubles it.
    @ivar longestLock: the cap on a lock.
    @ivar quiet: seconds after a lock has ended until its strikes are
        forgotten.
    """

    threshold: int
    window: float = 60.0
    firstLock: float = 60.0
    longestLock: float = 900.0
    quiet: float = 900.0

    def lockSeconds(self, strikes: int) -> float:
        """The length of the lock that the C{strikes}-th strike sets."""
        # The exponent is bounded so that a huge strike count stays a float.
        return min(self.firstLock * 2.0 ** min(strikes - 1, 64),
                   self.longestLock)


ACCOUNT_RULE = LockRule(threshold=5)
"""Failed logins for one account from one address (PROTOCOL.md 6)."""

ADDRESS_RULE = LockRule(threshold=50)
"""Failed logins from one address, summed over accounts (PROTOCOL.md 6)."""


def _escape(part: str) -> str:
    return (part.replace("%", "%25").replace(":", "%3A")
            .replace("{", "%7B").replace("}", "%7D"))


def limitKey(kind: str, *parts: str) -> str:
    """
    The counter key of C{kind} for C{parts}: joined with C{:} after
    escaping C{% : { }}, so that different parts never give one key (an
    IPv6 address holds colons) and the key can stand inside a Redis hash
    tag.
    """
    return ":".join([kind, *map(_escape, parts)])


class ILimitCounters(Interface):
    """
    Counters with expiry, shared by whoever shares the object: one node
    (L{MemoryCounters}) or every node of a cluster (L{RedisCounters}).
    Each call is one atomic step (one round trip to Redis).  A key is an
    opaque string from L{limitKey}; L{hit} and L{strike} keep separate
    state only in that they are used with different keys.
    """

    def hit(key: str, window: float) -> Deferred[int]:
        """
        Count one event; fire with the count in the current window of
        C{window} seconds, which starts at the first event after the
        previous window ended.
        """

    def strike(key: str, rule: LockRule) -> Deferred[float]:
        """
        Count one failure under C{rule}; lock C{key} as the rule says; fire
        with the seconds of the lock this failure set, or 0 if it set none.
        """

    def lockedFor(keys: Sequence[str]) -> Deferred[float]:
        """Fire with the longest remaining lock of C{keys}, 0 if none."""

    def clear(key: str) -> Deferred[None]:
        """Forget C{key}: its count, its lock and its strikes."""


@attrs.define
class _Record:
    """What L{MemoryCounters} keeps for one key; times on its clock."""

    count: int = 0
    windowEnds: float = 0.0
    lockEnds: float = 0.0
    strikes: int = 0
    forgetAt: float = 0.0

    def expires(self) -> float:
        return max(self.windowEnds, self.lockEnds, self.forgetAt)


@implementer(ILimitCounters)
class MemoryCounters:
    """
    L{ILimitCounters} in this process, for a single node.

    Memory stays bounded: expired keys are dropped by a sweep at most once
    every C{sweepInterval} seconds, run by whichever call comes first after
    that (no timer), and beyond C{maxKeys} keys the one updated least
    recently is dropped, even if it is still counting.  That forgets a
    lock early only under a flood of distinct keys, which the per-address
    limit already slows.
    """

    def __init__(self, clock: IReactorTime, maxKeys: int = 100_000,
                 sweepInterval: float = 60.0) -> None:
        if maxKeys < 1:
            raise ValueError(f"maxKeys {maxKeys} is below 1")
        self._clock = clock
        self._maxKeys = maxKeys
        self._sweepInterval = sweepInterval
        self._nextSweep = clock.seconds() + sweepInterval
        # Ordered by last update: the first key is the one to drop.
        self._records: dict[str, _Record] = {}

    def __len__(self) -> int:
        """How many keys are held, expired or not."""
        return len(self._records)

    def _now(self) -> float:
        now = self._clock.seconds()
        if now >= self._nextSweep:
            self._nextSweep = now + self._sweepInterval
            for key in [key for key, record in self._records.items()
                        if record.expires() <= now]:
                del self._records[key]
        return now

    def _update(self, key: str, now: float) -> _Record:
        """C{key}'s live record, created if need be, moved to the end."""
        record = self._records.pop(key, None)
        if record is None or record.expires() <= now:
            record = _Record()
        self._records[key] = record
        while len(self._records) > self._maxKeys:
            del self._records[next(iter(self._records))]
        return record

    def _count(self, record: _Record, window: float, now: float) -> int:
        if record.windowEnds <= now:
            record.count = 0
            record.windowEnds = now + window
        record.count += 1
        return record.count

    def hit(self, key: str, window: float) -> Deferred[int]:
        now = self._now()
        return succeed(self._count(self._update(key, now), window, now))

    def strike(self, key: str, rule: LockRule) -> Deferred[float]:
        now = self._now()
        record = self._update(key, now)
        count = self._count(record, rule.window, now)
        if record.forgetAt <= now:
            record.strikes = 0
        if not record.strikes and count < rule.threshold:
            return succeed(0.0)
        record.strikes += 1
        seconds = rule.lockSeconds(record.strikes)
        record.lockEnds = now + seconds
        record.forgetAt = record.lockEnds + rule.quiet
        return succeed(seconds)

    def lockedFor(self, keys: Sequence[str]) -> Deferred[float]:
        now = self._now()
        ends = [record.lockEnds for record in map(self._records.get, keys)
                if record is not None]
        return succeed(max([0.0, *(end - now for end in ends)]))

    def clear(self, key: str) -> Deferred[None]:
        self._records.pop(key, None)
        return succeed(None)


class RedisCommands(Protocol):
    """
    What L{RedisCounters} needs of a Redis client: one command, its RESP
    reply (int, bytes, None or a list) when it comes, an error reply as a
    failure.
    """

    def command(self, *args: bytes | str | int) -> Deferred[Any]: ...


_HIT_SCRIPT = b"""
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""
"""INCR with the window's expiry set by the first event, atomically."""

_STRIKE_SCRIPT = b"""
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local strikes = tonumber(redis.call('GET', KEYS[3]) or 0)
if strikes == 0 and n < tonumber(ARGV[2]) then
  return 0
end
strikes = strikes + 1
local lock = math.floor(math.min(
  tonumber(ARGV[3]) * 2 ^ math.min(strikes - 1, 64), tonumber(ARGV[4])))
redis.call('SET', KEYS[2], strikes, 'PX', lock)
redis.call('SET', KEYS[3], strikes, 'PX', lock + tonumber(ARGV[5]))
return lock
"""
"""L{MemoryCounters.strike} in Lua: KEYS count, lock, strikes; ARGV window,
threshold, first lock, longest lock, quiet (milliseconds)."""

_LOCKED_SCRIPT = b"""
local most = 0
for _, key in ipairs(KEYS) do
  local left = redis.call('PTTL', key)
  if left > most then most = left end
end
return most
"""
"""The longest remaining lock of KEYS in milliseconds (PTTL < 0: none)."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@implementer(ILimitCounters)
class RedisCounters:
    """
    L{ILimitCounters} in Redis, shared by every node of a cluster
    (DESIGN.md 5c).  Each call is one C{EVAL} (or one C{DEL}): one round
    trip, atomic in Redis.  Expiry is Redis's own (C{PEXPIRE}, C{SET PX}),
    so keys vanish by themselves and the nodes' clocks do not matter.

    A key C{k} is stored as C{<prefix>{k}:n} (count), C{...:lock} and
    C{...:strikes}; the hash tag keeps the three in one Redis Cluster
    slot, as a script's keys must be.  A failed command fails the
    L{Deferred}; what a login does then is the caller's choice.
    """

    def __init__(self, redis: RedisCommands,
                 prefix: str = "chat:limit:") -> None:
        self._redis = redis
        self._prefix = prefix

    def _keys(self, key: str) -> tuple[bytes, bytes, bytes]:
        base = f"{self._prefix}{{{key}}}:".encode()
        return base + b"n", base + b"lock", base + b"strikes"

    def _eval(self, script: bytes, keys: Sequence[bytes],
              *args: int) -> Deferred[int]:
        d = self._redis.command(b"EVAL", script, len(keys), *keys, *args)
        return d.addCallback(int)

    def hit(self, key: str, window: float) -> Deferred[int]:
        count, _, _ = self._keys(key)
        return self._eval(_HIT_SCRIPT, [count], _ms(window))

    def strike(self, key: str, rule: LockRule) -> Deferred[float]:
        d = self._eval(
            _STRIKE_SCRIPT, self._keys(key), _ms(rule.window),
            rule.threshold, _ms(rule.firstLock), _ms(rule.longestLock),
            _ms(rule.quiet))
        return d.addCallback(lambda ms: ms / 1000)

    def lockedFor(self, keys: Sequence[str]) -> Deferred[float]:
        d = self._eval(_LOCKED_SCRIPT, [self._keys(key)[1] for key in keys])
        return d.addCallback(lambda ms: max(0, ms) / 1000)

    def clear(self, key: str) -> Deferred[None]:
        d = self._redis.command(b"DEL", *self._keys(key))
        return d.addCallback(lambda _: None)


# --- Policies ---------------------------------------------------------------


class LoginThrottle:
    """
    The failed-login lock-out of PROTOCOL.md 6 (exactly as the module
    docstring says), over any L{ILimitCounters}.

    C{account} is whatever names the account being logged into, the same
    in every dialect and on every node (the account's id as text, once
    the id or name given is resolved); C{address} is the client's real
    address (from the PROXY header behind HAProxy).
    """

    def __init__(self, counters: ILimitCounters, trusted: TrustedNets,
                 accountRule: LockRule = ACCOUNT_RULE,
                 addressRule: LockRule = ADDRESS_RULE) -> None:
        self._counters = counters
        self._trusted = trusted
        self._accountRule = accountRule
        self._addressRule = addressRule

    def _accountKey(self, account: str, address: str) -> str:
        return limitKey("login", normalizeAddress(address), account)

    def _addressKey(self, address: str) -> str | None:
        """The per-address key, or L{None} for a trusted address."""
        if self._trusted.isTrusted(address):
            return None
        return limitKey("loginaddr", normalizeAddress(address))

    async def lockedFor(self, account: str, address: str) -> float:
        """
        The seconds until a login for C{account} from C{address} may be
        tried again, 0 if it may be tried now.
        """
        keys = [self._accountKey(account, address)]
        addressKey = self._addressKey(address)
        if addressKey is not None:
            keys.append(addressKey)
        return await self._counters.lockedFor(keys)

    async def failed(self, account: str, address: str) -> float:
        """
        A password check for C{account} from C{address} failed; return the
        longest lock this set, 0 if none (for the log).
        """
        locks = [self._counters.strike(
            self._accountKey(account, address), self._accountRule)]
        addressKey = self._addressKey(address)
        if addressKey is not None:
            locks.append(self._counters.strike(addressKey, self._addressRule))
        # Both calls are in flight together: one round trip's wait.
        return max([await lock for lock in locks])

    async def succeeded(self, account: str, address: str) -> None:
        """A login succeeded: forget this account's failures from here."""
        await self._counters.clear(self._accountKey(account, address))

    async def guard(self, account: str, address: str,
                    checkPassword: Callable[[], Awaitable[bool]]) -> bool:
        """
        Run C{checkPassword} unless the login is locked, record its
        outcome, and return it.  An exception from C{checkPassword} (the
        database is down) records nothing and propagates.

        @raise LoginsLocked: the login is locked; C{checkPassword} was not
            called.
        """
        remaining = await self.lockedFor(account, address)
        if remaining > 0:
            raise LoginsLocked(remaining)
        if await checkPassword():
            await self.succeeded(account, address)
            return True
        await self.failed(account, address)
        return False


class RegistrationThrottle:
    """
    At most C{perWindow} registrations per client address in a fixed
    window of C{window} seconds (PROTOCOL.md 6: 10 a minute); trusted
    addresses are not counted.
    """

    def __init__(self, counters: ILimitCounters, trusted: TrustedNets,
                 perWindow: int = REGISTRATIONS_PER_WINDOW,
                 window: float = REGISTRATION_WINDOW) -> None:
        self._counters = counters
        self._trusted = trusted
        self._perWindow = perWindow
        self._window = window

    async def allow(self, address: str) -> bool:
        """Count one registration from C{address}; whether it may go on."""
        if self._trusted.isTrusted(address):
            return True
        count = await self._counters.hit(
            limitKey("register", normalizeAddress(address)), self._window)
        return count <= self._perWindow

    async def check(self, address: str) -> None:
        """
        L{allow}, as the error the service answers with.

        @raise TooManyRegistrations: C{address} is over its limit.
        """
        if not await self.allow(address):
            raise TooManyRegistrations()
