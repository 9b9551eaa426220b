"""
Tests for L{chat.limits}: the rate limits of PROTOCOL.md section 6, on a
L{Clock}, and L{RedisCounters} against a fake command executor and a real
redis-server.
"""

from __future__ import annotations

import time
from ipaddress import ip_network
from typing import Any, Callable, Coroutine, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from chat.core.errors import RateLimited
from chat.limits import (
    ACCOUNT_RULE,
    ILimitCounters,
    LockRule,
    LoginsLocked,
    LoginThrottle,
    MemoryCounters,
    RedisCounters,
    RegistrationThrottle,
    TokenBucket,
    TooManyRegistrations,
    TrustedNets,
    limitKey,
    normalizeAddress,
    parseTrustedNets,
)
from tests.harness import RedisServer

T = TypeVar("T")

ATTACKER = "203.0.113.7"
ELSEWHERE = "198.51.100.2"


def run(case: SynchronousTestCase, coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that finishes at once (fired Deferreds)."""
    return case.successResultOf(ensureDeferred(coroutine))


class TokenBucketTests(SynchronousTestCase):
    """L{TokenBucket}: the per-session chat limit."""

    def setUp(self) -> None:
        self.clock = Clock()

    def takeAll(self, bucket: TokenBucket, most: int = 10_000) -> int:
        taken = 0
        while taken < most and bucket.take():
            taken += 1
        return taken

    def test_burst(self) -> None:
        """A new bucket is full: the default burst of 2000 goes at once."""
        bucket = TokenBucket(self.clock)
        self.assertEqual(self.takeAll(bucket), 2000)
        self.assertFalse(bucket.take())

    def test_refill(self) -> None:
        """Tokens come back at the rate: 200 a second by default."""
        bucket = TokenBucket(self.clock)
        self.takeAll(bucket)
        self.clock.advance(0.5)
        self.assertEqual(self.takeAll(bucket), 100)
        self.clock.advance(0.004)
        self.assertFalse(bucket.take())
        self.clock.advance(0.001)
        self.assertTrue(bucket.take())

    def test_refillCappedAtBurst(self) -> None:
        """A long silence refills the bucket only up to its burst."""
        bucket = TokenBucket(self.clock, rate=10, burst=5)
        self.takeAll(bucket)
        self.clock.advance(3600)
        self.assertEqual(self.takeAll(bucket), 5)

    def test_rateZeroUnlimited(self) -> None:
        """C{--chat-rate 0} turns the limit off."""
        bucket = TokenBucket(self.clock, rate=0, burst=0)
        self.assertEqual(self.takeAll(bucket), 10_000)

    def test_clockBack(self) -> None:
        """A clock set back takes no tokens away and adds none."""
        self.clock.advance(100)
        bucket = TokenBucket(self.clock, rate=1, burst=2)
        self.assertTrue(bucket.take())
        self.clock.rightNow = 50
        self.assertTrue(bucket.take())
        self.assertFalse(bucket.take())

    def test_badSettings(self) -> None:
        """A negative rate, or a burst below 1 with a rate, is refused."""
        self.assertRaises(ValueError, TokenBucket, self.clock, rate=-1)
        self.assertRaises(ValueError, TokenBucket, self.clock, rate=1, burst=0)


class TrustedNetTests(SynchronousTestCase):
    """L{parseTrustedNets}, L{TrustedNets} and L{normalizeAddress}."""

    def test_default(self) -> None:
        self.assertEqual(parseTrustedNets("127.0.0.0/8,::1"),
                         [ip_network("127.0.0.0/8"), ip_network("::1")])

    def test_spacesAndEmpty(self) -> None:
        """Spaces around entries are fine; an empty value trusts none."""
        self.assertEqual(parseTrustedNets(" 10.0.0.0/8 , fd00::/8 "),
                         [ip_network("10.0.0.0/8"), ip_network("fd00::/8")])
        self.assertEqual(parseTrustedNets(""), [])
        self.assertEqual(parseTrustedNets("  "), [])

    def assertBad(self, value: str, *words: str) -> None:
        error = self.assertRaises(ValueError, parseTrustedNets, value)
        for word in words:
            self.assertIn(word, str(error))

    def test_errors(self) -> None:
        """Each bad entry is named, with what is wrong with it."""
        self.assertBad("127.0.0.1/8", "'127.0.0.1/8'", "host bits",
                       "did you mean 127.0.0.0/8")
        self.assertBad("127.0.0.0/8,localhost", "'localhost'",
                       "not an IP address")
        self.assertBad("10.0.0.0/33", "'10.0.0.0/33'")
        self.assertBad("10.0.0.0/8,,::1", "empty entry")
        self.assertBad("10.0.0.0/8,", "empty entry")

    def test_isTrusted(self) -> None:
        """
        Addresses inside the networks are trusted, IPv4-mapped IPv6 ones
        as their IPv4 address; others, and non-addresses, are not.
        """
        trusted = TrustedNets.fromString("127.0.0.0/8,::1,10.1.0.0/16")
        for address in ["127.0.0.1", "127.200.0.9", "::1", "10.1.2.3",
                        "::ffff:127.0.0.1", "::ffff:10.1.0.1"]:
            self.assertTrue(trusted.isTrusted(address), address)
        for address in ["10.2.0.1", "::2", "::ffff:10.2.0.1", "", "unix",
                        "/tmp/chat.sock", "127.0.0.1:80"]:
            self.assertFalse(trusted.isTrusted(address), address)

    def test_emptyTrustsNone(self) -> None:
        self.assertFalse(TrustedNets.fromString("").isTrusted("127.0.0.1"))

    def test_normalizeAddress(self) -> None:
        """One spelling per address, so that counters are shared."""
        self.assertEqual(normalizeAddress("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(normalizeAddress("2001:DB8:0:0::1"), "2001:db8::1")
        self.assertEqual(normalizeAddress("not an address"), "not an address")

    def test_limitKeyUnambiguous(self) -> None:
        """
        Colons in addresses and names cannot make two keys collide, and
        braces cannot break a Redis hash tag.
        """
        self.assertNotEqual(limitKey("login", "::1", "a"),
                            limitKey("login", ":", ":1:a"))
        self.assertNotIn("{", limitKey("login", "{x}", "}"))


class PasswordCheck:
    """A fake password check that counts its calls."""

    def __init__(self, correct: bool = False) -> None:
        self.correct = correct
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.correct


class LoginThrottleTests(SynchronousTestCase):
    """
    L{LoginThrottle} over L{MemoryCounters} on a L{Clock}: the lock-out
    sequence of PROTOCOL.md 6, as the module docstring pins it down.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(
            MemoryCounters(self.clock),
            TrustedNets.fromString("127.0.0.0/8,::1"))

    def attempt(self, account: str = "7", address: str = ATTACKER,
                correct: bool = False) -> bool:
        """One login; whether it went through the password check."""
        check = PasswordCheck(correct)
        d = ensureDeferred(self.throttle.guard(account, address, check))
        d.addCallbacks(lambda _: True, lambda f: f.trap(LoginsLocked) and False)
        checked: bool = self.successResultOf(d)
        self.assertEqual(check.calls, int(checked))
        return checked

    def failLogins(self, times: int, account: str = "7",
             address: str = ATTACKER) -> None:
        for _ in range(times):
            self.assertTrue(self.attempt(account, address))

    def lockedFor(self, account: str = "7", address: str = ATTACKER) -> float:
        return run(self, self.throttle.lockedFor(account, address))

    def test_lockAfterFiveFailures(self) -> None:
        """
        Four failures lock nothing; the fifth locks for 60 s, and the
        next login is refused without a password check.
        """
        self.failLogins(4)
        self.assertEqual(self.lockedFor(), 0)
        self.failLogins(1)
        self.assertEqual(self.lockedFor(), 60)
        self.assertFalse(self.attempt())
        self.assertFalse(self.attempt(correct=True))

    def test_refusal(self) -> None:
        """The refusal is errno 106 with PROTOCOL.md's text."""
        self.failLogins(5)
        self.clock.advance(20)
        error = self.failureResultOf(ensureDeferred(self.throttle.guard(
            "7", ATTACKER, PasswordCheck())), LoginsLocked).value
        self.assertIsInstance(error, RateLimited)
        self.assertEqual(error.errno, 106)
        self.assertEqual(error.retryIn, 40)
        self.assertEqual(error.message, "too many failed logins; retry in 40 s")

    def test_refusalsDoNotLengthen(self) -> None:
        """Logins refused during a lock are not failures."""
        self.failLogins(5)
        for _ in range(100):
            self.clock.advance(0.5)
            self.attempt()
        self.clock.advance(10)
        self.assertEqual(self.lockedFor(), 0)

    def test_doubling(self) -> None:
        """
        Each failure after a lock has ended locks at once for twice as
        long: 120, 240, 480 s, then 900 s (15 minutes) at most.
        """
        self.failLogins(5)
        for expected in [120, 240, 480, 900, 900, 900]:
            self.clock.advance(self.lockedFor())
            self.assertTrue(self.attempt())
            self.assertEqual(self.lockedFor(), expected)

    def test_forgottenAfterQuiet(self) -> None:
        """
        Fifteen minutes without a failure after a lock has ended, the
        account is forgotten: again four failures lock nothing.
        """
        self.failLogins(5)
        self.clock.advance(60 + 900)
        self.failLogins(4)
        self.assertEqual(self.lockedFor(), 0)
        self.failLogins(1)
        self.assertEqual(self.lockedFor(), 60)

    def test_rememberedDuringQuiet(self) -> None:
        """Just before the quiet period ends, one failure still locks."""
        self.failLogins(5)
        self.clock.advance(60 + 899)
        self.failLogins(1)
        self.assertEqual(self.lockedFor(), 120)

    def test_successClears(self) -> None:
        """
        A successful login clears the count and the strikes: four more
        failures lock nothing, and neither does one after an old lock.
        """
        self.failLogins(4)
        self.assertTrue(self.attempt(correct=True))
        self.failLogins(4)
        self.assertEqual(self.lockedFor(), 0)
        self.failLogins(1)
        self.clock.advance(60)
        self.assertTrue(self.attempt(correct=True))
        self.failLogins(1)
        self.assertEqual(self.lockedFor(), 0)

    def test_fixedWindow(self) -> None:
        """
        Failures are counted in fixed windows of 60 s from the first: four
        at the end of one and four in the next lock nothing.
        """
        self.failLogins(1)
        self.clock.advance(59)
        self.failLogins(3)
        self.clock.advance(1)
        self.failLogins(4)
        self.assertEqual(self.lockedFor(), 0)

    def test_othersUnaffected(self) -> None:
        """
        A locked account from one address leaves that account from other
        addresses, and other accounts from that address, alone.
        """
        self.failLogins(5)
        self.assertTrue(self.attempt(account="8"))
        self.assertTrue(self.attempt(address=ELSEWHERE, correct=True))

    def test_mappedAddressShared(self) -> None:
        """An IPv4-mapped IPv6 address is the same client address."""
        self.failLogins(3)
        self.failLogins(2, address="::ffff:" + ATTACKER)
        self.assertEqual(self.lockedFor(), 60)

    def test_addressLimit(self) -> None:
        """
        Fifty failures from one address over any accounts lock that
        address for every account, for 60 s, then doubling; other
        addresses are not affected.
        """
        for account in range(49):
            self.failLogins(1, account=str(account))
        self.assertTrue(self.attempt(account="fresh", correct=True))
        self.failLogins(1, account="49")
        self.assertEqual(self.lockedFor("another"), 60)
        self.assertFalse(self.attempt(account="another", correct=True))
        self.assertTrue(self.attempt(account="another", address=ELSEWHERE))
        self.clock.advance(60)
        self.failLogins(1, account="another")
        self.assertEqual(self.lockedFor("yet another"), 120)

    def test_successKeepsAddressCount(self) -> None:
        """
        A success clears only its account's failures, not the count over
        accounts: else one real account would reset it.
        """
        for account in range(49):
            self.failLogins(1, account=str(account))
        self.assertTrue(self.attempt(account="mine", correct=True))
        self.failLogins(1, account="49")
        self.assertEqual(self.lockedFor("mine"), 60)

    def test_trustedExemptPerAddress(self) -> None:
        """
        A trusted address is not limited over accounts, but each of its
        accounts still is.
        """
        for address in ["127.0.0.1", "::1", "::ffff:127.0.0.1"]:
            for account in range(100):
                self.failLogins(1, account=f"{address}/{account}", address=address)
            self.assertTrue(self.attempt(account="fresh", address=address,
                                         correct=True))
            victim = f"victim of {address}"
            self.failLogins(5, account=victim, address=address)
            self.assertFalse(self.attempt(account=victim, address=address))

    def test_checkErrorRecordsNothing(self) -> None:
        """
        A password check that fails with an error (the database is down)
        is not a failed login.
        """
        async def broken() -> bool:
            raise ConnectionError("database down")

        for _ in range(10):
            self.failureResultOf(ensureDeferred(
                self.throttle.guard("7", ATTACKER, broken)), ConnectionError)
        self.assertEqual(self.lockedFor(), 0)

    def test_failedReturnsLock(self) -> None:
        """L{LoginThrottle.failed} tells the lock it set, for the log."""
        results = [run(self, self.throttle.failed("7", ATTACKER))
                   for _ in range(5)]
        self.assertEqual(results, [0, 0, 0, 0, 60])


class RegistrationThrottleTests(SynchronousTestCase):
    """L{RegistrationThrottle}: at most 10 a minute per address."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = RegistrationThrottle(
            MemoryCounters(self.clock), TrustedNets.fromString("::1"))

    def allowed(self, address: str = ATTACKER, times: int = 1) -> list[bool]:
        return [run(self, self.throttle.allow(address)) for _ in range(times)]

    def test_tenAMinute(self) -> None:
        """Ten pass, the eleventh does not; the next window starts anew."""
        self.assertEqual(self.allowed(times=10), [True] * 10)
        self.assertEqual(self.allowed(times=2), [False] * 2)
        self.clock.advance(59.9)
        self.assertEqual(self.allowed(), [False])
        self.clock.advance(0.1)
        self.assertEqual(self.allowed(times=11), [True] * 10 + [False])

    def test_otherAddresses(self) -> None:
        self.allowed(times=11)
        self.assertEqual(self.allowed(ELSEWHERE), [True])

    def test_trusted(self) -> None:
        self.assertEqual(self.allowed("::1", times=100), [True] * 100)
        self.assertEqual(self.allowed("127.0.0.1", times=11)[-1], False)

    def test_check(self) -> None:
        """L{RegistrationThrottle.check} raises errno 106."""
        self.allowed(times=10)
        error = self.failureResultOf(
            ensureDeferred(self.throttle.check(ATTACKER)),
            TooManyRegistrations).value
        self.assertEqual(error.errno, 106)


class MemoryBoundTests(SynchronousTestCase):
    """L{MemoryCounters} keeps memory bounded, however many keys come."""

    def test_sweep(self) -> None:
        """Expired keys go with the first call a sweep interval later."""
        clock = Clock()
        counters = MemoryCounters(clock, sweepInterval=60)
        for n in range(10_000):
            counters.hit(f"k{n}", 30)
        counters.strike("locked", LockRule(threshold=1))
        self.assertEqual(len(counters), 10_001)
        clock.advance(61)
        counters.hit("new", 30)
        # Left: "new", and "locked", whose strikes are remembered for the
        # quiet period after its lock.
        self.assertEqual(len(counters), 2)
        self.assertEqual(self.successResultOf(counters.lockedFor(["locked"])),
                         0)
        clock.advance(900)
        counters.hit("new", 30)
        self.assertEqual(len(counters), 1)

    def test_maxKeys(self) -> None:
        """
        Beyond C{maxKeys}, the key updated least recently is dropped; a key
        just counted again is kept.
        """
        clock = Clock()
        counters = MemoryCounters(clock, maxKeys=100)
        counters.hit("old", 3600)
        for n in range(1000):
            counters.hit(f"k{n}", 3600)
            counters.hit("old", 3600)
        self.assertEqual(len(counters), 100)
        self.assertEqual(self.successResultOf(counters.hit("old", 3600)), 1002)
        self.assertEqual(self.successResultOf(counters.hit("k0", 3600)), 1)


class CountersContract:
    """
    What every L{ILimitCounters} does, without waiting: run against
    L{MemoryCounters} and against L{RedisCounters} on a real redis-server.
    """

    counters: Any
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    successResultOf: Callable[..., Any]
    failureResultOf: Callable[..., Any]

    rule = LockRule(threshold=3, window=60, firstLock=60, longestLock=200,
                    quiet=900)

    def assertNear(self, value: float, expected: float, within: float) -> None:
        """Redis's clock runs on between the script and the check."""
        self.assertTrue(abs(value - expected) <= within, (value, expected))

    def result(self, d: Deferred[T]) -> T:
        value: T = self.successResultOf(d)
        return value

    def test_interface(self) -> None:
        verifyObject(ILimitCounters, self.counters)

    def test_hit(self) -> None:
        """Counts per key."""
        self.assertEqual([self.result(self.counters.hit("a", 60))
                          for _ in range(3)], [1, 2, 3])
        self.assertEqual(self.result(self.counters.hit("b", 60)), 1)

    def test_strike(self) -> None:
        """
        Below the threshold nothing locks; at it the first lock; every
        further failure doubles it, up to the longest.
        """
        locks = [self.result(self.counters.strike("k", self.rule))
                 for _ in range(6)]
        self.assertEqual(locks, [0, 0, 60, 120, 200, 200])
        self.assertNear(
            self.result(self.counters.lockedFor(["k"])), 200, 1)

    def test_lockedFor(self) -> None:
        """The longest lock among the keys; 0 for none or unknown keys."""
        self.assertEqual(self.result(self.counters.lockedFor([])), 0)
        self.assertEqual(self.result(self.counters.lockedFor(["x", "y"])), 0)
        for _ in range(3):
            self.counters.strike("short", self.rule)
        for _ in range(4):
            self.counters.strike("long", self.rule)
        self.assertNear(self.result(
            self.counters.lockedFor(["x", "short", "long"])), 120, 1)

    def test_clear(self) -> None:
        """A cleared key starts from nothing."""
        for _ in range(4):
            self.counters.strike("k", self.rule)
        self.assertEqual(self.result(self.counters.clear("k")), None)
        self.assertEqual(self.result(self.counters.lockedFor(["k"])), 0)
        self.assertEqual(self.result(self.counters.strike("k", self.rule)), 0)

    def test_throttle(self) -> None:
        """L{LoginThrottle} works over these counters."""
        throttle = LoginThrottle(self.counters, TrustedNets())
        for _ in range(5):
            self.result(ensureDeferred(
                throttle.guard("alice", ATTACKER, PasswordCheck())))
        check = PasswordCheck(True)
        self.failureResultOf(ensureDeferred(
            throttle.guard("alice", ATTACKER, check)), LoginsLocked)
        self.assertEqual(check.calls, 0)


class MemoryCountersContractTests(CountersContract, SynchronousTestCase):
    def setUp(self) -> None:
        self.counters = MemoryCounters(Clock())


class FakeRedis:
    """Records commands and answers each with the next scripted reply."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.commands: list[tuple[Any, ...]] = []

    def command(self, *args: bytes | str | int) -> Deferred[Any]:
        self.commands.append(args)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            return fail(reply)
        return succeed(reply)


class RedisCountersFakeTests(SynchronousTestCase):
    """
    L{RedisCounters} sends one command per call, with the keys and
    arguments its scripts expect, and reads the replies right.
    """

    def test_hit(self) -> None:
        redis = FakeRedis(3)
        counters = RedisCounters(redis)
        self.assertEqual(self.successResultOf(
            counters.hit("register:10.0.0.1", 60)), 3)
        [(verb, script, numkeys, key, window)] = redis.commands
        self.assertEqual((verb, numkeys, key, window),
                         (b"EVAL", 1, b"chat:limit:{register:10.0.0.1}:n",
                          60000))
        self.assertIn(b"INCR", script)

    def test_strike(self) -> None:
        redis = FakeRedis(0, 120000)
        counters = RedisCounters(redis, prefix="test:")
        self.assertEqual(self.successResultOf(
            counters.strike("k", ACCOUNT_RULE)), 0)
        self.assertEqual(self.successResultOf(
            counters.strike("k", ACCOUNT_RULE)), 120)
        verb, _, numkeys, *rest = redis.commands[0]
        self.assertEqual((verb, numkeys), (b"EVAL", 3))
        self.assertEqual(rest, [b"test:{k}:n", b"test:{k}:lock",
                                b"test:{k}:strikes",
                                60000, 5, 60000, 900000, 900000])

    def test_lockedFor(self) -> None:
        """Milliseconds come back as seconds; a missing key (-2) as 0."""
        redis = FakeRedis(1500, -2)
        counters = RedisCounters(redis)
        self.assertEqual(self.successResultOf(
            counters.lockedFor(["a", "b:c"])), 1.5)
        self.assertEqual(self.successResultOf(counters.lockedFor(["a"])), 0)
        self.assertEqual(redis.commands[0][2:], (
            2, b"chat:limit:{a}:lock", b"chat:limit:{b:c}:lock"))

    def test_clear(self) -> None:
        redis = FakeRedis(2)
        self.assertIsNone(self.successResultOf(RedisCounters(redis).clear("k")))
        self.assertEqual(redis.commands, [(
            b"DEL", b"chat:limit:{k}:n", b"chat:limit:{k}:lock",
            b"chat:limit:{k}:strikes")])

    def test_unicodeKey(self) -> None:
        """Keys are UTF-8: account names can be any script."""
        redis = FakeRedis(1)
        RedisCounters(redis).hit("login:10.0.0.1:张三", 60)
        self.assertEqual(redis.commands[0][3],
                         "chat:limit:{login:10.0.0.1:张三}:n".encode())

    def test_errorPropagates(self) -> None:
        """A failed command fails the call; the caller decides."""
        counters = RedisCounters(FakeRedis(ConnectionError("redis down")))
        self.failureResultOf(counters.hit("k", 60), ConnectionError)


class BlockingRedis:
    """The harness's blocking client as a L{chat.limits.RedisCommands}."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def command(self, *args: bytes | str | int) -> Deferred[Any]:
        return maybeDeferred(self.server.command, *args)


class RedisCountersRealTests(CountersContract, SynchronousTestCase):
    """The Lua scripts of L{RedisCounters} on a real redis-server."""

    def setUp(self) -> None:
        self.server = RedisServer(self)
        self.counters = RedisCounters(BlockingRedis(self.server))

    def test_expiries(self) -> None:
        """
        Redis expires windows, locks and strikes by itself: the count's
        window, the lock, and the strikes a quiet period after the lock.
        """
        for _ in range(3):
            self.counters.strike("k", self.rule)
        pttl = {suffix: self.server.command("PTTL", f"chat:limit:{{k}}:{suffix}")
                for suffix in ["n", "lock", "strikes"]}
        self.assertNear(pttl["n"], 60000, 1000)
        self.assertNear(pttl["lock"], 60000, 1000)
        self.assertNear(pttl["strikes"], 960000, 1000)

    def test_timeline(self) -> None:
        """
        With a fast rule (in tenths of seconds): a lock ends; a failure
        within the quiet period doubles (capped); after the quiet period
        the key is forgotten.
        """
        rule = LockRule(threshold=2, window=0.5, firstLock=0.2,
                        longestLock=0.3, quiet=1.0)
        locks = [self.result(self.counters.strike("t", rule))
                 for _ in range(2)]
        self.assertEqual(locks, [0, 0.2])
        time.sleep(0.25)
        self.assertEqual(self.result(self.counters.lockedFor(["t"])), 0)
        self.assertEqual(self.result(self.counters.strike("t", rule)), 0.3)
        time.sleep(0.3 + 1.0 + 0.1)
        self.assertEqual(self.result(self.counters.strike("t", rule)), 0)
