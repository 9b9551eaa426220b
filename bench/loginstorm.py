"""
login-storm (issue 9): every user logging in at once at the server's
default password cost, then the same again with as many wrong-password
attempts mixed in from other client addresses.

Why a node behind a PROXY v2 listener (C{haproxy:tcp:...}), with the
clients writing the header themselves: the failed-login limits of
PROTOCOL.md 6 are per client address, and the generator's real source
addresses are all loopback ones, which C{--trusted-net} exempts by
default.  The header gives every real user and every attacker an address
of its own, outside 127.0.0.0/8 (real users 10.1.x.y, the attackers of
run R 10.(2+R).x.y), so the limits apply as they would in production.
Both parts use the same listener, so they differ only in the attack.
The accounts are registered first, untimed, from 127.0.0.1 (trusted,
so the registration limit does not slow the set-up), retrying after 106
or 107.

Part 1: all users log in at once, each on its own connection (JSON
lines), each retrying after 106 (busy, rate limited), 107 (unavailable)
or 2 (its session, closed under it, not yet ended) 0.5 to 1 s later,
until in.  Part 2: the same, while each attacker tries one real user's id
with a wrong password, again and again with the same pause, until every
user is in.  Reported per part: the time until every user was in (and
half of them), the slowest answer (request to reply), answers by errno,
the node's CPU and peak RSS; for part 2 also the attackers' answers and
the time-to-all-in over part 1's.

JSON dialect errnos: 1 is the wrong-credentials answer (the text
dialect's 103) and 2 the live-elsewhere one (105).  The server of this
revision may not send 106 at all (before --max-pending-logins and the
failed-login limits); the scenario works either way, and its settings line
says which kind of node it measured.
"""

from __future__ import annotations

import random
import time
from typing import Any, Optional, Sequence

from tests.harness import proxyV2Header

from .deploy import Deployment, Owner, cpuSeconds, nodeHasOption, readRSS, singleNode
from .loadgen import LoadGen, StormResult, User, workersFor
from .scenarios import (
    ScenarioResult, Settings, _cpuMetrics, _guard, _newLoadGen, _notes, _pids, passwordCost,
)
from .stats import CpuMeter, RSSWatch, latencySummary

ANSWER_TIMEOUT = 30.0
"""Seconds within which PROTOCOL.md 6 promises every login an answer."""

KINDS = ("errno 0", "errno 1", "errno 2", "errno 106", "errno 107",
         f"after {ANSWER_TIMEOUT:g} s")
"""Answer kinds always reported (0 when none came), so runs line up."""

REGISTRARS_PER_WORKER = 8
"""Connections per generator process that register the accounts, 4 deep
each: enough to keep the node's hash threads busy, few enough that every
registration is answered in seconds."""


def fakeAddress(block: int, index: int) -> str:
    """
    The client address the PROXY header gives client C{index}:
    10.BLOCK.x.y, never loopback, so no default --trusted-net covers it.
    """
    n = index + 1
    if n > 0xFFFE:
        raise ValueError("at most 65,534 clients per address block")
    return f"10.{block}.{n >> 8}.{n & 0xFF}"


def _behind(users: Sequence[User], address: tuple[str, int], block: Optional[int]) -> None:
    """
    Give each of C{users} a PROXY v2 header: from its own fake address in
    C{block}, or, with C{block} None, from 127.0.0.1 (trusted).
    """
    for i, user in enumerate(users):
        source = "127.0.0.1" if block is None else fakeAddress(block, i)
        user.proxyHeader = proxyV2Header((source, 1024 + user.slot % 60000), address)


def waitQuiet(pid: int, below: float = 15.0, timeout: float = 600.0) -> float:
    """
    Wait until node C{pid} uses less than C{below} % of a core over half a
    second (it may still be checking the passwords of logins whose clients
    left), so that a part does not pay for the one before; fires with the
    seconds waited.
    """
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        before = cpuSeconds(pid)
        time.sleep(0.5)
        after = cpuSeconds(pid)
        if before is None or after is None or (after - before) * 200 < below:
            break
    return time.monotonic() - began


def _answers(prefix: str, tally: dict[str, int]) -> dict[str, int]:
    """Answers by kind: L{KINDS} first (zeros included), then any other seen."""
    kinds = list(KINDS) + sorted(k for k in tally if k not in KINDS)
    return {f"{prefix}{kind}": tally.get(kind, 0) for kind in kinds}


def _partMetrics(prefix: str, storm: StormResult, cpu: dict[str, float],
                 nodeSeconds: Optional[float], rssBefore: int, rssPeak: int
                 ) -> dict[str, Any]:
    """One part's numbers, each named with C{prefix} ("part 1: ")."""
    def seconds(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(value, 2)

    metrics: dict[str, Any] = {
        f"{prefix}users in": len(storm.inAt),
        f"{prefix}users never in": storm.users - len(storm.inAt),
        f"{prefix}all in s": seconds(storm.secondsUntil(1.0)),
        f"{prefix}half in s": seconds(storm.secondsUntil(0.5)),
    }
    metrics.update(latencySummary(storm.latencies.get("user", []), f"{prefix}answer "))
    metrics.update(_answers(f"{prefix}answers ", storm.answers.get("user", {})))
    metrics[f"{prefix}reconnects"] = storm.reconnects.get("user", 0)
    if storm.attackers:
        attacks = storm.answers.get("attacker", {})
        metrics[f"{prefix}attackers"] = storm.attackers
        metrics[f"{prefix}attacks answered"] = len(storm.latencies.get("attacker", []))
        metrics.update(_answers(f"{prefix}attacks ", attacks))
        metrics.update(latencySummary(storm.latencies.get("attacker", []),
                                      f"{prefix}attack answer "))
        metrics[f"{prefix}attack reconnects"] = storm.reconnects.get("attacker", 0)
    metrics.update({f"{prefix}{k}": v for k, v in _cpuMetrics(cpu).items()})
    metrics[f"{prefix}CPU s node1"] = None if nodeSeconds is None else round(nodeSeconds, 1)
    metrics[f"{prefix}RSS before MiB"] = round(rssBefore / 1024, 1)
    metrics[f"{prefix}RSS peak MiB"] = round(rssPeak / 1024, 1)
    return metrics


def _part(lg: LoadGen, dep: Deployment, settings: Settings, prefix: str,
          users: Sequence[User], attackers: Sequence[tuple[User, int]] = ()
          ) -> dict[str, Any]:
    """
    One storm: connect everybody (untimed), then all log in at once;
    measured from the first login to the last user in.  Everybody is
    disconnected afterwards, so the next part starts with nobody logged in.
    """
    pid = dep.nodes[0].pid
    assert pid is not None
    waitQuiet(pid)
    clients = list(users) + [a for a, _ in attackers]
    lg.connect(clients, concurrency=200)
    before = readRSS(pid)
    watch = RSSWatch(pid)
    watch.start()
    meter = CpuMeter(_pids(dep, lg)).start()
    storm = lg.loginStorm(users, attackers, backoff=settings.stormBackoff,
                          jitter=settings.stormJitter, answerTimeout=ANSWER_TIMEOUT,
                          deadline=settings.stormDeadline)
    # from the first login, not from the lead-in before it
    cpu = meter.stop(wall=(time.monotonic_ns() - storm.start) / 1e9)
    peak = watch.stop()
    lg.disconnect(clients)
    return _partMetrics(prefix, storm, cpu, meter.used.get("node1"), before, peak)


def loginStorm(settings: Settings) -> ScenarioResult:
    """The login-storm scenario (see the module docstring)."""
    count = settings.stormUsers
    result = ScenarioResult("login-storm", f"login storm: {count:,} users at once at the "
                            "default password cost, then with as many wrong-password "
                            "attackers")
    result.settings = {
        "users": count, "attackers (part 2)": count,
        "retry pause s": f"{settings.stormBackoff:g} + up to {settings.stormJitter:g}",
        "deadline s": settings.stormDeadline,
        "node has --max-pending-logins": nodeHasOption("max-pending-logins", settings.root),
        **passwordCost(settings.root)}
    result.ratioKeys = []

    def body() -> None:
        with Owner() as owner:
            # The set-up registers from a few connections that never log
            # in, for longer than the login timeout would let them stay.
            longer = (["--login-timeout", str(settings.stormDeadline)]
                      if nodeHasOption("login-timeout", settings.root) else [])
            dep = singleNode(owner, root=settings.root, defaultCost=True, haproxy=True,
                             extraArgs=longer)
            result.settings["node --login-timeout s"] = longer[1] if longer else "none"
            result.deployment = dep.label + ", default password cost"
            address = dep.address(0)
            registrars = REGISTRARS_PER_WORKER * settings.workers
            workers = workersFor(2 * count + registrars, settings.workers)
            with _newLoadGen(settings, workers) as lg:
                users = lg.addUsers(count, address, tag="u", classic=False)
                _behind(users, address, block=1)
                via = lg.addUsers(REGISTRARS_PER_WORKER * lg.workerCount, address,
                                  tag="reg", classic=False)
                _behind(via, address, block=None)
                lg.connect(via)
                began = time.monotonic()
                retries = lg.register(users, via=via, depth=4, retry=(106, 107),
                                      timeout=settings.stormDeadline)
                result.settings["registration s (set-up)"] = round(time.monotonic() - began, 1)
                result.settings["registrations retried"] = retries
                lg.disconnect(via)
                for run in range(settings.runs):
                    metrics = _part(lg, dep, settings, "part 1: ", users)
                    attackers = lg.addUsers(count, address, tag="x", classic=False)
                    _behind(attackers, address, block=2 + run % 250)
                    pick = random.Random(run)
                    for attacker in attackers:
                        attacker.password = f"wrong-{attacker.slot}"
                    targets = [(a, int(pick.choice(users).uid or 0)) for a in attackers]
                    metrics.update(_part(lg, dep, settings, "part 2: ", users, targets))
                    # Why the CPU ratio beside the time ratio: on a shared
                    # machine the node's share of the cores moves between
                    # parts, and its CPU seconds move far less than its time.
                    for what, ratio in (("all in s", "all in"), ("CPU s node1", "CPU node1")):
                        alone, attacked = metrics[f"part 1: {what}"], metrics[f"part 2: {what}"]
                        metrics[f"part 2 / part 1: {ratio}"] = (
                            round(attacked / alone, 2) if alone and attacked else None)
                    result.runs.append(metrics)
                result.notes.extend(_notes(lg, [dep]))

    return _guard(result, body)
