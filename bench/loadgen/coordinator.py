"""
The coordinator side of the load generator: it spawns the worker processes,
decides which process holds which client and from which source address it
connects, and turns the scenarios' verbs (register, log in, chat at a rate,
send to a group) into commands for the workers.

It runs in the main process and is synchronous on purpose: the scenarios
are sequences of phases, and every time-critical loop runs in the workers.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Iterable, Optional, Sequence


DEFAULT_PORTS_PER_ADDRESS = 25000
"""
Connections per source address before moving to the next one (127.0.0.1,
then 127.0.0.2, ...).  The ephemeral range here is 32768-60999 (28,232
ports per address and destination); 25,000 leaves room for TIME_WAIT
leftovers of connections closed earlier in the run.
"""

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
"""The directory holding the bench package: the workers import it from there."""

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _dieWithParent() -> None:
    """In a worker, before exec: SIGKILL when the coordinator dies."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


FD_MARGIN = 200
"""Descriptors a worker keeps free for its pipe, loop and libraries."""


class LoadGenError(Exception):
    """A worker failed a command, or a phase could not be completed."""


@dataclass
class User:
    """
    One simulated client.  C{slot} numbers it for the whole run (and picks
    its source address); C{worker} is the process that holds its
    connection.  A C{classic} client ends its requests in NUL, as the
    classic client does (no ACK for what succeeds); any other in C{"\n"}
    (an ACK 11 for every request).
    """

    slot: int
    name: str
    worker: int
    address: tuple[str, int]
    password: str
    uid: Optional[int] = None
    source: str = "127.0.0.1"
    classic: bool = True
    proxyHeader: bytes = b""
    """Written first on every connection: a PROXY v2 header naming the
    client address a node behind C{haproxy:} sees (empty: none)."""


@dataclass
class StepResult:
    """What all the processes saw of one step."""

    sent: int = 0
    live: int = 0
    offline: int = 0
    dups: int = 0
    latencies: list[int] = field(default_factory=list)
    firstArrival: int = 0
    lastArrival: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)
    maxLag: int = 0
    lags: list[int] = field(default_factory=list)
    acks: int = 0
    acksOffline: int = 0
    errorReplies: int = 0

    @property
    def lost(self) -> int:
        return self.sent - self.live - self.offline


@dataclass
class StormResult:
    """
    What every process saw of one login storm (L{LoadGen.loginStorm}):
    answers by role (C{"user"}, C{"attacker"}) and kind (C{"errno N"},
    late, lost, ...), the latency of each answer (µs, sorted), when each
    user got in (monotonic ns, sorted) and how often the server's closing
    a connection made a client connect again.
    """

    users: int
    attackers: int
    start: int
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies: dict[str, list[int]] = field(default_factory=dict)
    inAt: list[int] = field(default_factory=list)
    reconnects: dict[str, int] = field(default_factory=dict)

    def secondsUntil(self, fraction: float) -> Optional[float]:
        """
        Seconds from the start until C{fraction} of the users were in; None
        if they never were.
        """
        needed = max(1, math.ceil(fraction * self.users))
        if len(self.inAt) < needed:
            return None
        return (self.inAt[needed - 1] - self.start) / 1e9


class LoadGen:
    """
    A set of worker processes and the users they simulate.

    @param workers: the number of processes; connections are spread evenly
        over them, and every process keeps under its open-file limit.
    @param prefix: the start of every user name of this run (unique per
        run, so runs never collide in a database).
    """

    def __init__(self, workers: int = 2, prefix: Optional[str] = None,
                 portsPerAddress: int = DEFAULT_PORTS_PER_ADDRESS,
                 password: str = "bench-pw", useUvloop: bool = True) -> None:
        self.workerCount = max(1, workers)
        self.prefix = prefix or f"b{secrets.token_hex(4)}_"
        self.portsPerAddress = portsPerAddress
        self.password = password
        self.useUvloop = useUvloop
        self.users: list[User] = []
        self._slots = itertools.count()
        self._steps = itertools.count(1)
        self._calls = itertools.count(1)
        self._pipes: list[Connection] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._replies: dict[int, tuple[bool, Any]] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.loopName = "?"
        self._start()

    # Processes -----------------------------------------------------------

    def _start(self) -> None:
        """
        Start the workers as fresh interpreters (C{python -m
        bench.loadgen}), each talking over its end of a socketpair.
        Why not multiprocessing's spawn: it re-runs the parent's main
        module in the child, which for a script that starts servers would
        start them again; and fork would copy a Twisted reactor or trial's
        state into the workers.
        """
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
        for workerId in range(self.workerCount):
            parentSock, childSock = socket.socketpair()
            argv = [sys.executable, "-m", "bench.loadgen", str(childSock.fileno()),
                    str(workerId), "uvloop" if self.useUvloop else "asyncio"]
            process = subprocess.Popen(argv, pass_fds=[childSock.fileno()], env=env,
                                       cwd=str(_PACKAGE_ROOT), stdin=subprocess.DEVNULL,
                                       preexec_fn=_dieWithParent)
            childSock.close()
            self._pipes.append(Connection(parentSock.detach()))
            self._processes.append(process)
        for workerId, pipe in enumerate(self._pipes):
            if not pipe.poll(60):
                raise LoadGenError(f"load generator process {workerId} did not start")
            _, _, loopName = pipe.recv()
            self.loopName = loopName

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def close(self) -> None:
        """Close every connection and end the processes."""
        for pipe in self._pipes:
            try:
                pipe.send((0, "exit", {}))
            except (OSError, BrokenPipeError):
                pass
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in self._pipes:
            pipe.close()
        self._pipes.clear()

    def __enter__(self) -> "LoadGen":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Calls -------------------------------------------------------------------

    def _send(self, workerId: int, command: str, /, **kwargs: Any) -> int:
        callId = next(self._calls)
        self._pipes[workerId].send((callId, command, kwargs))
        return callId

    def _pump(self, timeout: Optional[float]) -> bool:
        """
        Read whatever the workers sent within C{timeout}; False if nothing.
        Events get the id of the worker that sent them.
        """
        ready = wait(self._pipes, timeout)
        for workerId, pipe in enumerate(self._pipes):
            if pipe not in ready:
                continue
            while pipe.poll():
                try:
                    message = pipe.recv()
                except EOFError:
                    raise LoadGenError("a load generator process died")
                if message[0] == "reply":
                    _, callId, ok, result = message
                    self._replies[callId] = (ok, result)
                elif message[0] == "event":
                    self.events.append((message[1], dict(message[2], worker=workerId)))
        return bool(ready)

    def _gather(self, calls: dict[Any, int], timeout: float = 600) -> dict[Any, Any]:
        deadline = time.monotonic() + timeout
        pending = set(calls.values())
        while pending - self._replies.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadGenError(f"workers did not answer within {timeout:g} s")
            self._pump(min(remaining, 1.0))
            for workerId, process in enumerate(self._processes):
                if process.poll() is not None:
                    raise LoadGenError(f"load generator process {workerId} died "
                                       f"(exit {process.returncode})")
        results = {}
        for key, callId in calls.items():
            ok, result = self._replies.pop(callId)
            if not ok:
                raise LoadGenError(f"worker {key}: {result}")
            results[key] = result
        return results

    def call(self, workerId: int, command: str, /, *, waitAtMost: float = 600,
             **kwargs: Any) -> Any:
        """Run C{command} on one worker; fires with its result."""
        return self._gather({workerId: self._send(workerId, command, **kwargs)},
                            waitAtMost)[workerId]

    def broadcast(self, command: str, perWorker: Optional[dict[int, dict[str, Any]]] = None,
                  /, *, waitAtMost: float = 600, **common: Any) -> dict[int, Any]:
        """Run a command on the workers in C{perWorker} (default: all) at once."""
        targets = perWorker if perWorker is not None else {w: {} for w in range(self.workerCount)}
        calls = {w: self._send(w, command, **common, **kwargs) for w, kwargs in targets.items()}
        return self._gather(calls, waitAtMost)

    # Users --------------------------------------------------------------------

    def addUsers(self, count: int, address: tuple[str, int],
                 workers: Optional[Sequence[int]] = None, tag: str = "u",
                 classic: bool = True) -> list[User]:
        """
        C{count} new users to connect to C{address}, dealt round robin over
        C{workers} (default all), with the framing C{classic} chooses.  The
        source address moves on every C{portsPerAddress} slots: 127.0.0.1,
        127.0.0.2, ...
        """
        pool = list(workers) if workers is not None else list(range(self.workerCount))
        made = []
        for i in range(count):
            slot = next(self._slots)
            source = f"127.0.0.{1 + slot // self.portsPerAddress}"
            user = User(slot, f"{self.prefix}{tag}{slot}", pool[i % len(pool)],
                        address, self.password, source=source, classic=classic)
            made.append(user)
        self.users.extend(made)
        self._checkFileLimit()
        return made

    def _checkFileLimit(self) -> None:
        """Refuse a plan that would push a worker past its open-file limit."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FD_MARGIN
        perWorker: dict[int, int] = {}
        for user in self.users:
            perWorker[user.worker] = perWorker.get(user.worker, 0) + 1
        worst = max(perWorker.values(), default=0)
        if worst > limit:
            raise LoadGenError(
                f"{worst} connections in one process exceed its open-file limit "
                f"({limit + FD_MARGIN}); use more workers")

    @staticmethod
    def _byWorker(users: Iterable[User]) -> dict[int, list[User]]:
        grouped: dict[int, list[User]] = {}
        for user in users:
            grouped.setdefault(user.worker, []).append(user)
        return grouped

    def connect(self, users: Sequence[User], concurrency: int = 200) -> None:
        results = self.broadcast("connect", {
            w: {"items": [(u.slot, u.address[0], u.address[1], u.source, u.classic,
                           u.proxyHeader) for u in group],
                "concurrency": concurrency}
            for w, group in self._byWorker(users).items()})
        failed = sum(r["failedCount"] for r in results.values())
        if failed:
            examples = [f for r in results.values() for f in r["failed"]][:5]
            raise LoadGenError(f"{failed} of {len(users)} connections failed: {examples}")

    def disconnect(self, users: Sequence[User]) -> None:
        self.broadcast("close", {w: {"slots": [u.slot for u in group]}
                                 for w, group in self._byWorker(users).items()})

    def register(self, users: Sequence[User], via: Optional[Sequence[User]] = None,
                 depth: int = 8, retry: Sequence[int] = (106, 107), timeout: float = 120
                 ) -> int:
        """
        Register C{users} through the protocol (REG_MSG), each on its own
        connection, or spread over the connections of C{via} (which must
        be in the same processes as the users they register).  A refusal
        whose errno is in C{retry} (by default 106 and 107: nothing was done,
        retry later) is sent again a second or so later,
        within C{timeout} seconds.  Fires with the number of retries.
        """
        items: dict[int, list[tuple[int, int, str, str]]] = {}
        if via is None:
            for user in users:
                items.setdefault(user.worker, []).append(
                    (user.slot, user.slot, user.name, user.password))
        else:
            viaByWorker = self._byWorker(via)
            counters = {w: itertools.cycle(group) for w, group in viaByWorker.items()}
            for user in users:
                if user.worker not in counters:
                    raise LoadGenError("no registering connection in that process")
                registrar = next(counters[user.worker])
                items.setdefault(user.worker, []).append(
                    (registrar.slot, user.slot, user.name, user.password))
        results = self.broadcast("register", {
            w: {"items": i, "depth": depth, "retry": tuple(retry), "timeout": timeout}
            for w, i in items.items()}, waitAtMost=timeout + 600)
        bySlot = {u.slot: u for u in users}
        failed = 0
        examples: list[Any] = []
        for result in results.values():
            for slot, uid in result["ids"].items():
                bySlot[int(slot)].uid = uid
            failed += result["failedCount"]
            examples.extend(result["failed"].values())
        if failed:
            raise LoadGenError(f"{failed} registrations failed: {examples[:5]}")
        return sum(r.get("retries", 0) for r in results.values())

    def login(self, users: Sequence[User], concurrency: int = 100) -> list[int]:
        """Log each user in on its connection; fires with login latencies (µs)."""
        results = self.broadcast("login", {
            w: {"items": [(u.slot, u.uid, u.name, u.password) for u in group],
                "concurrency": concurrency}
            for w, group in self._byWorker(users).items()})
        failed = sum(r["failedCount"] for r in results.values())
        if failed:
            examples = [f for r in results.values() for f in r["failed"].values()][:5]
            raise LoadGenError(f"{failed} of {len(users)} logins failed: {examples}")
        return _latencies(r["latencies"] for r in results.values())

    def setUp(self, users: Sequence[User], concurrency: int = 100) -> None:
        """Connect, register and log in."""
        self.connect(users)
        self.register(users)
        self.login(users, concurrency)

    # Steps ----------------------------------------------------------------------

    def newStep(self, windowStart: int = 0,
                groupExpect: Optional[dict[int, int]] = None) -> int:
        """
        A fresh step number, announced to every worker before any of its
        messages is sent.  C{groupExpect}: per worker, how many of its users
        must receive each group message for it to count as done there.
        """
        step = next(self._steps)
        self.broadcast("beginStep", {
            w: {"step": step, "windowStart": windowStart,
                "groupExpect": (groupExpect or {}).get(w) if groupExpect is not None else None}
            for w in range(self.workerCount)})
        return step

    def chat(self, pairs: Sequence[tuple[User, User]], rate: float, duration: float,
             warmup: float = 0.0, pad: int = 0, tick: float = 0.002,
             drainTimeout: float = 30.0) -> tuple[int, StepResult, int]:
        """
        The batched (pipelined) pattern: every sender of C{pairs} chats to
        its recipient, at C{rate} messages/s in total, for C{duration}
        seconds, each worker writing a connection's due messages in one
        write every C{tick}; then wait until every message has arrived (or
        none arrives for a while).  Latencies count from C{warmup} seconds
        into the step.  Fires with C{(step, result, startNs)}; call
        L{checkOffline} before reading the loss.
        """
        return self._step("chat", pairs, rate, duration, warmup, drainTimeout,
                          lead=0.3, pad=pad, tick=tick)

    def openLoop(self, pairs: Sequence[tuple[User, User]], rate: float, duration: float,
                 warmup: float = 0.0, pad: int = 0, arrivals: str = "poisson",
                 drainTimeout: float = 30.0) -> tuple[int, StepResult, int]:
        """
        The many-users pattern: each sender of C{pairs} on its own open-loop
        schedule at C{rate / len(pairs)} messages/s, every message in a
        write of its own (the worker's C{openLoop}); otherwise as L{chat}.
        C{result.lags} holds every message's lateness (µs) against its
        schedule.  A longer lead-in than L{chat}'s: the workers compute the
        schedules before the start.
        """
        return self._step("openLoop", pairs, rate, duration, warmup, drainTimeout,
                          lead=0.5, pad=pad, arrivals=arrivals)

    def _step(self, command: str, pairs: Sequence[tuple[User, User]], rate: float,
              duration: float, warmup: float, drainTimeout: float, lead: float,
              **extra: Any) -> tuple[int, StepResult, int]:
        """
        One measurement step of one-to-one chats: every worker runs
        C{command} for its senders at its share of C{rate}, starting
        C{lead} seconds from now so that all are ready; then wait for the
        messages, and for the ACK of each on non-classic connections.
        """
        start = time.monotonic_ns() + int(lead * 1e9)
        before = self.broadcast("replyCounts")
        step = self.newStep(windowStart=start + int(warmup * 1e9))
        plans: dict[int, list[tuple[int, int]]] = {}
        for sender, recipient in pairs:
            plans.setdefault(sender.worker, []).append((sender.slot, recipient.uid))
        total = len(pairs)
        calls = {w: self._send(w, command, step=step, plan=plan,
                               rate=rate * len(plan) / total, start=start,
                               duration=duration, **extra)
                 for w, plan in plans.items()}
        sendResults = self._gather(calls, timeout=duration + 600)
        sent = sum(r["sent"] for r in sendResults.values())
        acksWanted = sent if not all(s.classic for s, _ in pairs) else 0
        after = self.waitForArrivals(step, sent, drainTimeout, acks=acksWanted, before=before)
        result = self.stepResult(step)
        result.sent = sent
        result.maxLag = max(r["maxLag"] for r in sendResults.values())
        result.lags = _latencies(r.get("lags", b"") for r in sendResults.values())
        for key in ("acks", "acksOffline", "errorReplies"):
            setattr(result, key, sum(after[w][key] - before[w][key] for w in after))
        return step, result, start

    def waitForArrivals(self, step: int, expected: int, idleTimeout: float,
                        acks: int = 0, before: Optional[dict[int, Any]] = None
                        ) -> dict[int, Any]:
        """
        Poll until C{expected} messages of C{step} have arrived and C{acks}
        success ACKs more than in C{before} (the workers' C{replyCounts}
        earlier), or nothing has moved for C{idleTimeout} seconds.  Fires
        with the workers' last status.
        """
        last, lastChange = -1, time.monotonic()
        base = sum(s["acks"] for s in (before or {}).values())
        while True:
            statuses = self.broadcast("stepStatus", step=step)
            count = sum(s["live"] + s["offline"] for s in statuses.values())
            acked = sum(s["acks"] for s in statuses.values()) - base
            progress = count + min(acked, acks)
            if progress >= expected + acks:
                return statuses
            if progress != last:
                last, lastChange = progress, time.monotonic()
            elif time.monotonic() - lastChange > idleTimeout:
                return statuses
            time.sleep(0.05)

    def stepResult(self, step: int, drop: bool = False) -> StepResult:
        results = self.broadcast("stepResult", step=step)
        merged = StepResult()
        for r in results.values():
            merged.live += r["live"]
            merged.offline += r["offline"]
            merged.dups += r["dups"]
            if r["firstArrival"]:
                merged.firstArrival = min(merged.firstArrival or r["firstArrival"],
                                          r["firstArrival"])
            merged.lastArrival = max(merged.lastArrival, r["lastArrival"])
            for key, (count, last, sent) in (r["groups"] or {}).items():
                entry = merged.groups.setdefault(key, [0, 0, sent])
                entry[0] += count
                entry[1] = max(entry[1], last)
        merged.latencies = _latencies(r["latencies"] for r in results.values())
        if drop:
            self.broadcast("dropStep", step=step)
        return merged

    def checkOffline(self, recipients: Sequence[User], step: int, result: StepResult,
                     settle: float = 0.3) -> None:
        """
        The final check of a step that lost messages live: close the
        recipients' connections, log them in again and count the
        messages their login acks carry from the offline store; then
        C{result} holds the step's true loss.  Recipients end up logged in
        again, so the set-up survives.
        """
        if result.lost <= 0:
            return
        self.disconnect(recipients)
        time.sleep(settle)  # the server ends the sessions (and stores what arrives)
        self.connect(recipients)
        self.login(recipients)
        after = self.stepResult(step)
        result.offline = after.offline
        result.dups = after.dups

    # Groups --------------------------------------------------------------------

    def createGroup(self, owner: User, name: str, description: str = "bench") -> int:
        return int(self.call(owner.worker, "createGroup", slot=owner.slot,
                             name=name, description=description))

    def joinGroup(self, users: Sequence[User], groupId: int) -> None:
        results = self.broadcast("joinGroup", {
            w: {"slots": [u.slot for u in group], "groupId": groupId}
            for w, group in self._byWorker(users).items()})
        failed = sum(r["failedCount"] for r in results.values())
        if failed:
            raise LoadGenError(f"{failed} group joins failed: "
                               f"{[r['failed'] for r in results.values()][:3]}")

    def groupMessages(self, sender: User, groupId: int, members: Sequence[User],
                      count: int, burst: bool, pad: int = 0,
                      timeout: float = 30.0) -> tuple[int, StepResult]:
        """
        Send C{count} messages to a group whose other C{members} are all
        online: one at a time, each after the previous one reached every
        member (C{burst=False}), or all in one write (C{burst=True}).
        Fires with C{(step, result)}; C{result.groups} has, per message,
        C{[arrivals, lastArrivalNs, sentNs]}.
        """
        expect: dict[int, int] = {}
        for member in members:
            expect[member.worker] = expect.get(member.worker, 0) + 1
        step = self.newStep(groupExpect={w: expect.get(w, 0) for w in range(self.workerCount)})
        workersWithMembers = {w for w, n in expect.items() if n}
        self.events.clear()
        sentTotal = 0
        batches = [count] if burst else [1] * count
        for batch in batches:
            reply = self.call(sender.worker, "groupSend", step=step, slot=sender.slot,
                              groupId=groupId, count=batch, pad=pad)
            sentTotal += batch
            wanted = {(s, w) for s in reply["seqs"] for w in workersWithMembers}
            self._awaitGroupDone(step, sender.slot, wanted, timeout)
        result = self.stepResult(step, drop=False)
        result.sent = sentTotal * len(members)
        return step, result

    def _awaitGroupDone(self, step: int, senderSlot: int, wanted: set[tuple[int, int]],
                        timeout: float) -> None:
        """Wait until every (seq, worker) of C{wanted} has reported 'groupdone'."""
        deadline = time.monotonic() + timeout
        while True:
            for kind, fields in self.events:
                if kind == "groupdone" and fields["step"] == step \
                        and fields["sender"] == senderSlot:
                    wanted.discard((fields["seq"], fields["worker"]))
            self.events.clear()
            remaining = deadline - time.monotonic()
            if not wanted or remaining <= 0:
                return
            self._pump(min(1.0, remaining))

    # Round trips and logins --------------------------------------------------

    def roundTrips(self, a: User, b: User, count: int, gap: float = 0.01) -> tuple[list[int], int]:
        """
        Round-trip times (µs) of C{count} chats from C{a} to C{b}, which
        answers each at once; and how many got no answer in time.
        """
        self.call(b.worker, "setEcho", slot=b.slot, toUid=a.uid)
        step = self.newStep()
        reply = self.call(a.worker, "roundTrips", step=step, slot=a.slot,
                          toUid=b.uid, count=count, gap=gap)
        self.call(b.worker, "setEcho", slot=b.slot, toUid=None)
        # a's arrivals are the echoes; b's are the originals.
        latencies = _latencies([self.call(a.worker, "stepResult", step=step)["latencies"]])
        self.broadcast("dropStep", step=step)
        return latencies, reply["timeouts"]

    def loginLoop(self, clients: Sequence[User], accounts: Sequence[User],
                  duration: float) -> tuple[list[int], dict[str, int], float]:
        """
        Closed-loop logins: each of C{clients} (connected, not logged in)
        logs in as one account after another of its share of C{accounts},
        logging out after each ack, for C{duration} seconds.  Fires with
        the latencies (µs), failures, and the measured duration.
        """
        shares: dict[int, list[tuple[int, str]]] = {c.slot: [] for c in clients}
        order = [c.slot for c in clients]
        for i, account in enumerate(accounts):
            shares[order[i % len(order)]].append((account.uid, account.password))
        start = time.monotonic_ns() + 200_000_000
        results = self.broadcast("loginLoop", {
            w: {"items": [(c.slot, shares[c.slot]) for c in group],
                "start": start, "duration": duration}
            for w, group in self._byWorker(clients).items()}, waitAtMost=duration + 300)
        elapsed = (time.monotonic_ns() - start) / 1e9
        failed: dict[str, int] = {}
        for r in results.values():
            for key, n in r["failed"].items():
                failed[key] = failed.get(key, 0) + n
        return _latencies(r["latencies"] for r in results.values()), failed, elapsed

    def loginStorm(self, users: Sequence[User], attackers: Sequence[tuple[User, int]] = (),
                   backoff: float = 0.5, jitter: float = 0.5, answerTimeout: float = 30.0,
                   deadline: float = 1800.0, lead: float = 0.5) -> "StormResult":
        """
        Every one of C{users} (connected, registered, not logged in) logs
        in at once, retrying after 106 or 107 until in; meanwhile each
        C{(attacker, targetUid)} tries C{targetUid} with the attacker's
        (wrong) password over and over, until every user is in (or
        C{deadline} seconds have passed, which also ends the users' tries).
        The workers start together C{lead} seconds from now; each writes
        its users' and attackers' first logins in turn, one of each, so
        that the attacks are mixed in rather than queued behind the users.
        """
        start = time.monotonic_ns() + int(lead * 1e9)
        mine: dict[int, list[tuple[int, int, str, bool]]] = {}
        theirs: dict[int, list[tuple[int, int, str, bool]]] = {}
        for user in users:
            assert user.uid is not None, f"{user.name} is not registered"
            mine.setdefault(user.worker, []).append(
                (user.slot, user.uid, user.password, False))
        for attacker, target in attackers:
            theirs.setdefault(attacker.worker, []).append(
                (attacker.slot, target, attacker.password, True))
        items = {w: [item for pair in itertools.zip_longest(mine.get(w, []), theirs.get(w, []))
                     for item in pair if item is not None]
                 for w in sorted(mine.keys() | theirs.keys())}
        calls = {w: self._send(w, "loginStorm", items=todo, start=start, backoff=backoff,
                               jitter=jitter, answerTimeout=answerTimeout)
                 for w, todo in items.items()}
        giveUp = start + int(deadline * 1e9)
        allIn = 0
        while time.monotonic_ns() < giveUp:
            time.sleep(0.1)
            statuses = self.broadcast("stormStatus", {w: {} for w in calls})
            if sum(s["in"] for s in statuses.values()) >= len(users):
                allIn = time.monotonic_ns()
                break
        self.broadcast("stormStop", {w: {} for w in calls}, everyone=not allIn)
        replies = self._gather(calls, timeout=answerTimeout + 600)
        result = StormResult(users=len(users), attackers=len(attackers), start=start)
        for reply in replies.values():
            for role, tally in reply["answers"].items():
                mine = result.answers.setdefault(role, {})
                for kind, count in tally.items():
                    mine[kind] = mine.get(kind, 0) + count
            for role, count in reply["reconnects"].items():
                result.reconnects[role] = result.reconnects.get(role, 0) + count
        for role in ("user", "attacker"):
            result.latencies[role] = _latencies(r["latencies"][role] for r in replies.values())
        result.inAt = _latencies(r["inAt"] for r in replies.values())
        return result

    def workerStats(self) -> dict[int, Any]:
        return self.broadcast("stats")


def _latencies(chunks: Iterable[bytes]) -> list[int]:
    values = array("q")
    for chunk in chunks:
        values.frombytes(chunk)
    return sorted(values)


def workersFor(connections: int, minimum: int) -> int:
    """Enough processes that none holds more than 9,000 connections."""
    return max(minimum, math.ceil(connections / 9000))
