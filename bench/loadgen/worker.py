"""
One load generator process: an asyncio loop (uvloop when installed) holding
many client connections, driven by commands from the coordinator over a pipe.

Why a process of its own: Python runs one thread at a time, so the only way
for the generator not to be the limit is to spread its connections over
processes, each with a loop that does nothing but write pre-formatted
requests and scan replies.  Why asyncio Protocols and not streams: a
Protocol's C{data_received} sees each read whole, so a read holding fifty
events is scanned with one regular expression call instead of fifty
C{readline}s.

Every request is one compact JSON object followed by its connection's
terminator.  By default that is one NUL byte, exactly as the classic client
sends it, so the server treats the connection as a classic one (no ACK for
a request that succeeds).  A connection opened with C{classic=False} ends
its requests in C{"\n"} instead and gets an ACK 11 for every request; the
generator counts the ones that succeed (L{Worker.acks}) and counts any
other as an error reply.

The many-users pattern (L{Worker.cmd_openLoop}) gives every sender its own
open-loop schedule and writes each message on its own, at its scheduled
time whatever the server does, stamped with that scheduled time: a server
that falls behind shows as latency, not as a generator that waits for it
(coordinated omission).

Chat texts carry a marker, C{bm|STEP|SENDER|SEQ|SENT_NS|}, that names the
measurement step, the sending slot, a per-sender sequence number and the
sender's C{time.monotonic_ns()} (CLOCK_MONOTONIC is one clock for every
process on the machine), so a recipient in any process can compute the
latency, and duplicates and losses are counted per sender and sequence.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import re
import resource
import socket
import struct
import time
import traceback
from array import array
from collections import deque
from typing import Any, Callable, Iterable, Optional

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # the server needs orjson, but the generator can do without
    import json

    _loads = json.loads

MARKER = re.compile(rb"bm\|(\d+)\|(\d+)\|(\d+)\|(\d+)\|")
"""The marker inside every benchmark chat text (see the module docstring)."""

_REPLY_TO = {1: 2, 4: 5, 12: 13, 14: 15, 16: 17}
"""Requests that a classic connection always gets a reply to: msgid -> reply msgid."""

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
"""
Linux: when binding a source address before connect, pick the port at
connect time, per destination; without it, bind() reserves a port for the
address whatever the destination, and 127.0.0.2 would run out as fast as
127.0.0.1.
"""


def serverTimeString() -> bytes:
    """The C{time} field the classic client sends (the server ignores it)."""
    return time.strftime("%Y-%m-%d %H:%M:%S").encode()


class StepStats:
    """
    What this process received for one measurement step.

    @ivar latencies: microseconds from send to live arrival, of the messages
        sent at or after C{windowStart} (earlier ones are warm-up).
    @ivar groups: for group steps, per (sender, seq): [arrivals here, last
        arrival ns, send ns].
    """

    __slots__ = ("live", "offline", "dups", "latencies", "windowStart",
                 "firstArrival", "lastArrival", "groupExpect", "groups",
                 "waiter")

    def __init__(self, windowStart: int = 0,
                 groupExpect: Optional[int] = None) -> None:
        self.live = 0
        self.offline = 0
        self.dups = 0
        self.latencies = array("q")
        self.windowStart = windowStart
        self.firstArrival = 0
        self.lastArrival = 0
        self.groupExpect = groupExpect
        self.groups: Optional[dict[tuple[int, int], list[int]]] = (
            {} if groupExpect is not None else None)
        self.waiter: Optional[asyncio.Future] = None


class UserSlot:
    """
    A client as the generator knows it, across reconnections: who it is
    logged in as, its sequence counter and what it has already received
    (for duplicates).
    """

    __slots__ = ("slot", "uid", "name", "seq", "seen", "conn", "echoTo", "dial")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.uid: Optional[int] = None
        self.name = b""
        self.seq = 0
        self.seen: dict[int, bytearray] = {}
        self.conn: Optional[Conn] = None
        self.echoTo: Optional[int] = None
        self.dial: Optional[tuple[str, int, str, bool, bytes]] = None
        """How it last connected (host, port, source, classic, preamble),
        so that a login storm can connect it again after the server closed
        it."""


class RequestFailed(Exception):
    """A request that expects a reply got an error, or no reply."""


class Conn(asyncio.Protocol):
    """
    One TCP connection to a chat server (or the relay baseline).

    Replies come in the order of the requests (PROTOCOL.md 1), but a classic
    connection gets none for a request that succeeds; so only requests that
    always get an answer (L{_REPLY_TO}) wait for one, and an ACK 11 for any
    other request is counted as an error rather than matched to a waiter.
    """

    def __init__(self, worker: "Worker", user: UserSlot, end: bytes = b"\0") -> None:
        self.worker = worker
        self.user = user
        self.end = end
        self.transport: Optional[asyncio.Transport] = None
        self.buf = bytearray()
        self.waiters: deque[tuple[int, asyncio.Future]] = deque()
        self.errors: list[dict[str, Any]] = []
        self.closing = False
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    # asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.closing:
            self.worker.counters["disconnects"] += 1
        for _, waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(RequestFailed("connection lost"))
        self.waiters.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf
        if buf:
            buf += data
            end = buf.rfind(b"\n")
            if end < 0:
                return
            chunk = bytes(buf[:end + 1])
            del buf[:end + 1]
        else:
            end = data.rfind(b"\n")
            if end < 0:
                buf += data
                return
            if end + 1 < len(data):
                buf += data[end + 1:]
                chunk = data[:end + 1]
            else:
                chunk = data
        found = MARKER.findall(chunk)
        # Fast path: every line is one benchmark event.  A login ack holds
        # several markers on one line, so it always takes the slow path.
        if found and len(found) == chunk.count(b"\n") and \
                b"offlinemsg" not in chunk:
            self.worker.received(self.user, found, now, True)
        elif not found and not self.waiters and self._onlyAcks(chunk):
            pass
        else:
            for line in chunk.split(b"\n"):
                if line.strip():
                    self._line(line, now)

    def _onlyAcks(self, chunk: bytes) -> bool:
        """
        Fast path of a sender on a non-classic connection: if every line of
        C{chunk} is a successful ACK 11 (as the server's orjson writes it),
        count them without parsing and say so; else leave it to L{_line}.
        """
        lines = chunk.count(b"\n")
        if chunk.count(b'{"msgid":11,') != lines or chunk.count(b'"errno":0') != lines:
            return False
        acks = self.worker.acks
        acks["ok"] += lines
        acks["offline"] += chunk.count(b'"delivery":"offline"')
        return True

    # Lines --------------------------------------------------------------

    def _line(self, line: bytes, now: int) -> None:
        try:
            obj = _loads(line)
            msgid = obj["msgid"]
        except Exception:
            self.worker.counters["unparsable"] += 1
            return
        if msgid in (6, 10):
            found = MARKER.findall(str(obj.get("msg", "")).encode())
            if found:
                self.worker.received(self.user, found, now, True)
            else:
                self.worker.counters["foreign"] += 1
            return
        if msgid == 2:
            for payload in obj.get("offlinemsg") or ():
                found = MARKER.findall(str(payload).encode())
                if found:
                    self.worker.received(self.user, found, now, False)
        if msgid == 18:
            self.worker.counters["notices"] += 1
            self.worker.notices.append(str(obj.get("msg")))
            return
        if msgid == 11:
            req = obj.get("req")
            if self.waiters and self.waiters[0][0] == req:
                self._resolve(obj)
                return
            if obj.get("errno") == 0:  # a non-classic connection's success ACK
                self.worker.acks["ok"] += 1
                if obj.get("delivery") == "offline":
                    self.worker.acks["offline"] += 1
                return
            self.errors.append(obj)
            key = f"req {req} errno {obj.get('errno')}"
            self.worker.errors[key] = self.worker.errors.get(key, 0) + 1
            return
        if self.waiters and _REPLY_TO.get(self.waiters[0][0]) == msgid:
            self._resolve(obj)
        else:
            self.worker.counters["unexpected"] += 1

    def _resolve(self, obj: dict[str, Any]) -> None:
        _, waiter = self.waiters.popleft()
        if not waiter.done():
            waiter.set_result(obj)

    # Requests -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write pre-encoded requests (each already ending in L{end})."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def tell(self, body: bytes) -> None:
        """Send one request's JSON C{body}, adding this connection's terminator."""
        self.send(body + self.end)

    def request(self, msgid: int, body: bytes) -> asyncio.Future:
        """
        Send one request that always gets a reply; the future fires with the
        reply object.  C{body} is the request's JSON, without terminator.
        """
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append((msgid, waiter))
        self.tell(body)
        return waiter

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def schedule(senders: int, perSender: float, duration: float, start: int,
             arrivals: str, rng: random.Random) -> tuple[array, array]:
    """
    The send times (monotonic ns, sorted) of C{senders} independent senders
    at C{perSender} messages/s each for C{duration} seconds from C{start},
    and which sender sends at each.  C{arrivals} is C{"poisson"}
    (exponential gaps: together the senders are a Poisson stream, bursts
    and lulls included, as a population of people is) or C{"even"} (each
    sender evenly spaced, with a random phase).  Computed before the step
    starts, so sending costs no arithmetic of this kind.
    """
    events: list[tuple[int, int]] = []
    span = duration * 1e9
    gap = 1e9 / perSender
    for sender in range(senders):
        if arrivals == "poisson":
            t = rng.expovariate(1.0) * gap
            while t < span:
                events.append((start + int(t), sender))
                t += rng.expovariate(1.0) * gap
        elif arrivals == "even":
            t = rng.random() * gap
            while t < span:
                events.append((start + int(t), sender))
                t += gap
        else:
            raise ValueError(f"unknown arrivals {arrivals!r}")
    events.sort()
    return array("q", (t for t, _ in events)), array("l", (k for _, k in events))


def _discard(data: bytes) -> None:
    """Where a sender without a connection writes: its messages count as lost."""


def _jsonString(text: str) -> bytes:
    """A JSON string literal for names and passwords we chose ourselves."""
    import json

    return json.dumps(text, ensure_ascii=False).encode()


LOGIN_RETRY = (2, 106, 107)
"""
Login refusals after which a real user of a login storm tries again: 106
(busy, or rate limited) and 107 (unavailable) say that nothing was done,
and 2 (live elsewhere) is what a user whose earlier connection was closed
under it sees until the node has ended that session.  Anything else (1,
wrong password; 100) would not change on a retry.
"""


class Storm:
    """
    One login storm's tallies in this process (L{Worker.cmd_loginStorm}):
    answers by role (C{"user"}, C{"attacker"}) and kind (C{"errno N"}, late,
    lost), each answer's latency, when each user got in.  C{stopAttack}
    ends the attackers' loops, C{stopAll} everybody's (the deadline).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stopAttack: asyncio.Future = loop.create_future()
        self.stopAll: asyncio.Future = loop.create_future()
        self.usersIn = 0
        self.inAt = array("q")
        self.answers: dict[str, dict[str, int]] = {"user": {}, "attacker": {}}
        self.latencies = {"user": array("q"), "attacker": array("q")}
        self.reconnects = {"user": 0, "attacker": 0}

    def count(self, role: str, kind: str) -> None:
        tally = self.answers[role]
        tally[kind] = tally.get(kind, 0) + 1

    def stop(self, everyone: bool) -> None:
        for future in ([self.stopAttack, self.stopAll] if everyone else [self.stopAttack]):
            if not future.done():
                future.set_result(None)

    def result(self) -> dict[str, Any]:
        return {"answers": self.answers, "reconnects": self.reconnects,
                "latencies": {k: v.tobytes() for k, v in self.latencies.items()},
                "inAt": self.inAt.tobytes()}


class Worker:
    """
    The loop's state: slots by number, per-step statistics, counters, and
    the command dispatcher.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 workerId: int) -> None:
        self.reader = reader
        self.writer = writer
        self.workerId = workerId
        self.loop = asyncio.get_running_loop()
        self.slots: dict[int, UserSlot] = {}
        self.steps: dict[int, StepStats] = {}
        self.counters: dict[str, int] = {
            "disconnects": 0, "unparsable": 0, "foreign": 0, "notices": 0,
            "unexpected": 0, "connectFailures": 0}
        self.errors: dict[str, int] = {}
        self.acks: dict[str, int] = {"ok": 0, "offline": 0}
        self.notices: list[str] = []
        self.storm: Optional[Storm] = None
        self.done = asyncio.Event()

    # Receiving ------------------------------------------------------------

    def step(self, step: int) -> StepStats:
        stats = self.steps.get(step)
        if stats is None:
            stats = self.steps[step] = StepStats()
        return stats

    def received(self, user: UserSlot, found: Iterable[tuple[bytes, ...]],
                 now: int, live: bool) -> None:
        """
        Account for benchmark messages that reached C{user}, live or from
        the offline store at login.  Hot path: keep it flat.
        """
        steps = self.steps
        seen = user.seen
        for s, snd, sq, t in found:
            step = int(s)
            sender = int(snd)
            seq = int(sq)
            sent = int(t)
            stats = steps.get(step)
            if stats is None:
                stats = self.step(step)
            bits = seen.get(sender)
            if bits is None:
                bits = seen[sender] = bytearray(max(256, seq * 2))
            elif seq >= len(bits):
                bits.extend(bytes(seq * 2 - len(bits) + 256))
            if bits[seq]:
                stats.dups += 1
                continue
            bits[seq] = 1
            if live:
                stats.live += 1
                if sent >= stats.windowStart:
                    stats.latencies.append((now - sent) // 1000)
                if not stats.firstArrival:
                    stats.firstArrival = now
                stats.lastArrival = now
            else:
                stats.offline += 1
            groups = stats.groups
            if groups is not None:
                entry = groups.get((sender, seq))
                if entry is None:
                    entry = groups[(sender, seq)] = [0, 0, sent]
                entry[0] += 1
                if now > entry[1]:
                    entry[1] = now
                if entry[0] == stats.groupExpect:
                    self.event("groupdone", step=step, sender=sender, seq=seq,
                               sent=sent, last=entry[1])
            if user.echoTo is not None and live:
                self._echo(user, step, sent)
            waiter = stats.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _echo(self, user: UserSlot, step: int, sent: int) -> None:
        """Answer at once, keeping the original send time: a round trip."""
        if user.conn is not None:
            user.conn.send(self._chatBytes(user, user.echoTo, step, sent, b"",
                                           serverTimeString(), user.conn.end))

    def event(self, kind: str, **fields: Any) -> None:
        """Tell the coordinator something it did not ask for (a group done)."""
        self.send(("event", kind, fields))

    def send(self, message: Any) -> None:
        """
        Queue a message for the coordinator, framed as
        multiprocessing.connection does (so its blocking Connection reads
        it).  Why not Connection.send here: the loop made the socket
        non-blocking, and a large result would fail with EAGAIN.
        """
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) > 0x7FFFFFFF:
            header = struct.pack("!i", -1) + struct.pack("!Q", len(payload))
        else:
            header = struct.pack("!i", len(payload))
        self.writer.write(header + payload)

    # Requests' bytes -------------------------------------------------------

    @staticmethod
    def _chatTemplate(user: UserSlot, toUid: int, step: int, pad: bytes,
                      timeString: bytes, end: bytes) -> bytes:
        """
        A one-to-one chat from C{user} with everything filled in but the
        sequence number and the send time: C{template % (seq, sentNs)}.
        """
        head = (b'{"msgid":6,"id":%d,"name":%s,"toid":%d,"msg":"bm|%d|%d|' % (
            user.uid, user.name, toUid, step, user.slot)).replace(b"%", b"%%")
        tail = (b'%s","time":"%s"}' % (pad, timeString) + end).replace(b"%", b"%%")
        return head + b"%d|%d|" + tail

    @classmethod
    def _chatBytes(cls, user: UserSlot, toUid: int, step: int, sent: int,
                   pad: bytes, timeString: bytes, end: bytes) -> bytes:
        user.seq += 1
        return cls._chatTemplate(user, toUid, step, pad, timeString, end) % (
            user.seq, sent)

    @staticmethod
    def _groupBytes(user: UserSlot, groupId: int, step: int, sent: int,
                    pad: bytes, timeString: bytes, end: bytes) -> bytes:
        user.seq += 1
        return (b'{"msgid":10,"id":%d,"name":%s,"groupid":%d,'
                b'"msg":"bm|%d|%d|%d|%d|%s","time":"%s"}' % (
                    user.uid, user.name, groupId, step, user.slot, user.seq,
                    sent, pad, timeString)) + end

    # Commands ---------------------------------------------------------------

    def slot(self, number: int) -> UserSlot:
        user = self.slots.get(number)
        if user is None:
            user = self.slots[number] = UserSlot(number)
        return user

    def conn(self, number: int) -> Conn:
        conn = self.slots[number].conn
        if conn is None:
            raise RequestFailed(f"slot {number} is not connected")
        return conn

    async def dial(self, user: UserSlot, host: str, port: int, source: str,
                   classic: bool, preamble: bytes = b"") -> Conn:
        """
        Connect C{user} to C{host:port} from C{source} (bound explicitly,
        with IP_BIND_ADDRESS_NO_PORT, so the coordinator decides when to
        move on to 127.0.0.2, ...) and write C{preamble} first: a PROXY v2
        header for a node behind C{haproxy:}, which names the client
        address the node must see.  A classic connection ends its requests
        in NUL, any other in C{"\n"}.
        """
        user.dial = (host, port, source, classic, preamble)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            await asyncio.wait_for(self.loop.sock_connect(sock, (host, port)), 30)
            _, conn = await self.loop.create_connection(
                lambda: Conn(self, user, b"\0" if classic else b"\n"), sock=sock)
        except BaseException:
            sock.close()
            raise
        if preamble:
            conn.send(preamble)
        user.conn = conn  # type: ignore[assignment]
        return conn  # type: ignore[return-value]

    async def cmd_connect(self, items: list[tuple[int, str, int, str, bool, bytes]],
                          concurrency: int = 200) -> dict[str, Any]:
        """
        Open a connection for each C{(slot, host, port, sourceAddress,
        classic, preamble)} (see L{dial}).
        """
        limit = asyncio.Semaphore(concurrency)
        failed: list[tuple[int, str]] = []

        async def one(number: int, *how: Any) -> None:
            async with limit:
                try:
                    await self.dial(self.slot(number), *how)
                except Exception as e:
                    self.counters["connectFailures"] += 1
                    failed.append((number, f"{type(e).__name__}: {e}"))

        await asyncio.gather(*(one(*item) for item in items))
        return {"ok": len(items) - len(failed), "failed": failed[:20],
                "failedCount": len(failed)}

    async def cmd_close(self, slots: list[int]) -> int:
        """Close these slots' connections and wait until they are gone."""
        waits = []
        for number in slots:
            user = self.slots.get(number)
            if user is not None and user.conn is not None:
                user.conn.close()
                waits.append(user.conn.lost)
                user.conn = None
        if waits:
            await asyncio.wait(waits, timeout=30)
        return len(waits)

    async def cmd_register(self, items: list[tuple[int, int, str, str]],
                           depth: int = 8, timeout: float = 120,
                           retry: tuple[int, ...] = (), pause: float = 1.0
                           ) -> dict[str, Any]:
        """
        Register C{(viaSlot, slot, name, password)}: each through the
        connection of C{viaSlot}, up to C{depth} in flight per connection.
        A refusal whose errno is in C{retry} (106 busy or rate limited, 107
        unavailable: nothing was done) is sent again after C{pause} to 1.5
        x C{pause} seconds, until another answer or C{timeout}.  Fires with
        C{{"ids": {slot: uid}, "failed": {slot: reply}, "retries": n}}.
        """
        byConn: dict[int, list[tuple[int, str, str]]] = {}
        for via, number, name, password in items:
            byConn.setdefault(via, []).append((number, name, password))
        ids: dict[int, int] = {}
        failed: dict[int, Any] = {}
        retries = [0]
        giveUp = time.monotonic() + timeout

        async def through(via: int, todo: list[tuple[int, str, str]]) -> None:
            conn = self.conn(via)
            window: deque[tuple[tuple[int, str, str], asyncio.Future]] = deque()
            again: list[tuple[int, str, str]] = []

            async def settle() -> None:
                item, waiter = window.popleft()
                number, name, _ = item
                try:
                    reply = await asyncio.wait_for(waiter, timeout)
                except Exception as e:
                    failed[number] = repr(e)
                    return
                if reply.get("errno") == 0:
                    ids[number] = reply["id"]
                    user = self.slot(number)
                    user.uid, user.name = reply["id"], _jsonString(name)
                elif reply.get("errno") in retry and time.monotonic() < giveUp:
                    again.append(item)
                else:
                    failed[number] = reply

            while todo:
                for item in todo:
                    number, name, password = item
                    body = b'{"msgid":4,"name":%s,"password":%s}' % (
                        _jsonString(name), _jsonString(password))
                    window.append((item, conn.request(4, body)))
                    if len(window) >= depth:
                        await settle()
                while window:
                    await settle()
                todo, again = again, []
                if todo:
                    retries[0] += len(todo)
                    await asyncio.sleep(pause * (1 + random.random() / 2))

        await asyncio.gather(*(through(via, todo)
                               for via, todo in byConn.items()))
        return {"ids": ids, "failed": dict(list(failed.items())[:20]),
                "failedCount": len(failed), "retries": retries[0]}

    async def cmd_login(self, items: list[tuple[int, int, str, str]],
                        concurrency: int = 200, timeout: float = 120
                        ) -> dict[str, Any]:
        """
        Log each C{(slot, uid, name, password)} in on its own connection,
        sending it again a moment after an errno 106 or 107 (the node was
        busy or unavailable: nothing was done), as a client should, within
        C{timeout}.  Offline messages in the acks are accounted as such.
        Fires with the number logged in, failures, and login latencies
        (microseconds, from the first attempt).
        """
        limit = asyncio.Semaphore(concurrency)
        failed: dict[int, Any] = {}
        latencies = array("q")

        async def one(number: int, uid: int, name: str, password: str) -> None:
            user = self.slot(number)
            async with limit:
                try:
                    conn = self.conn(number)
                    body = b'{"msgid":1,"id":%d,"password":%s}' % (
                        uid, _jsonString(password))
                    started = time.monotonic_ns()
                    giveUp = time.monotonic() + timeout
                    while True:
                        reply = await asyncio.wait_for(conn.request(1, body),
                                                       timeout)
                        if reply.get("errno") not in (106, 107) or \
                                time.monotonic() > giveUp:
                            break
                        await asyncio.sleep(0.2 + random.random() * 0.3)
                    latencies.append((time.monotonic_ns() - started) // 1000)
                except Exception as e:
                    failed[number] = repr(e)
                    return
                if reply.get("errno") == 0:
                    user.uid, user.name = uid, _jsonString(name)
                else:
                    failed[number] = reply

        await asyncio.gather(*(one(*item) for item in items))
        return {"ok": len(items) - len(failed), "failedCount": len(failed),
                "failed": dict(list(failed.items())[:20]),
                "latencies": latencies.tobytes()}

    async def cmd_loginLoop(self, items: list[tuple[int, list[tuple[int, str]]]],
                            start: int, duration: float,
                            timeout: float = 120) -> dict[str, Any]:
        """
        Closed loop of logins: each C{(slot, [(uid, password), ...])}
        connection logs in as its next user, waits for the ack, logs out
        (LOGINOUT_MSG, answered with silence, handled in order) and goes on
        until C{duration} seconds after C{start} (monotonic ns).
        """
        latencies = array("q")
        failed: dict[str, int] = {}
        end = start + int(duration * 1e9)
        await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))

        async def loop(number: int, accounts: list[tuple[int, str]]) -> None:
            conn = self.conn(number)
            i = 0
            while time.monotonic_ns() < end:
                uid, password = accounts[i % len(accounts)]
                i += 1
                body = b'{"msgid":1,"id":%d,"password":%s}' % (
                    uid, _jsonString(password))
                started = time.monotonic_ns()
                try:
                    reply = await asyncio.wait_for(conn.request(1, body),
                                                   timeout)
                except Exception as e:
                    key = type(e).__name__
                    failed[key] = failed.get(key, 0) + 1
                    return
                if reply.get("errno") != 0:
                    key = f"errno {reply.get('errno')}"
                    failed[key] = failed.get(key, 0) + 1
                    continue
                latencies.append((time.monotonic_ns() - started) // 1000)
                conn.tell(b'{"msgid":3,"id":%d}' % uid)

        await asyncio.gather(*(loop(*item) for item in items))
        return {"latencies": latencies.tobytes(), "failed": failed}

    async def cmd_loginStorm(self, items: list[tuple[int, int, str, bool]],
                             start: int, backoff: float = 0.5, jitter: float = 0.5,
                             answerTimeout: float = 30.0) -> dict[str, Any]:
        """
        A login storm: at C{start} (monotonic ns) every C{(slot, uid,
        password, attacker)} sends its LOGIN_MSG at once, on its own
        connection (already open; opened again when the server closes it).

        A real user retries after a refusal of L{LOGIN_RETRY}, C{backoff}
        plus up to C{jitter} seconds later, until it is in or
        L{cmd_stormStop} says so.  An attacker logs in with its wrong
        password again and again, with the same pause after each answer,
        until it is stopped.  Why each waits for its answer however long it
        takes: the classic client does, and so the answers tell the
        server's latency, not a client's time-out policy; an answer later
        than C{answerTimeout} (PROTOCOL.md 6 promises 30 s) counts as late
        instead of by its errno.  Fires with L{Storm.result}.
        """
        storm = self.storm = Storm(self.loop)
        await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
        await asyncio.gather(*(self._stormer(storm, *item, backoff=backoff, jitter=jitter,
                                             answerTimeout=answerTimeout)
                               for item in items))
        return storm.result()

    async def _stormer(self, storm: Storm, number: int, uid: int, password: str,
                       attacker: bool, backoff: float, jitter: float,
                       answerTimeout: float) -> None:
        """One real user's or attacker's part of L{cmd_loginStorm}."""
        role = "attacker" if attacker else "user"
        stop = storm.stopAttack if attacker else storm.stopAll
        user = self.slots[number]
        body = b'{"msgid":1,"id":%d,"password":%s}' % (uid, _jsonString(password))
        late = int(answerTimeout * 1e9)

        async def pause() -> None:
            await asyncio.wait((stop,), timeout=backoff + random.random() * jitter)

        while not stop.done():
            conn = user.conn
            if conn is None or conn.lost.done():
                if user.dial is None:
                    raise RequestFailed(f"slot {number} was never connected")
                try:
                    conn = await self.dial(user, *user.dial)
                except Exception:
                    storm.count(role, "connect failed")
                    await pause()
                    continue
                storm.reconnects[role] += 1
            sent = time.monotonic_ns()
            waiter = conn.request(1, body)
            await asyncio.wait((waiter, stop), return_when=asyncio.FIRST_COMPLETED)
            now = time.monotonic_ns()
            if not waiter.done():
                waiter.cancel()  # its answer, if any, is ignored
                storm.count(role, "unanswered at the stop")
                return
            if waiter.exception() is not None:
                storm.count(role, "connection lost")
                await pause()
                continue
            errno = waiter.result().get("errno")
            storm.latencies[role].append((now - sent) // 1000)
            storm.count(role, f"after {answerTimeout:g} s" if now - sent > late
                        else f"errno {errno}")
            if not attacker:
                if errno == 0:
                    storm.usersIn += 1
                    storm.inAt.append(now)
                    return
                if errno not in LOGIN_RETRY:
                    storm.count(role, "gave up")
                    return
            await pause()

    def cmd_stormStatus(self) -> dict[str, int]:
        """How many real users of the current login storm are in."""
        return {"in": self.storm.usersIn if self.storm is not None else 0}

    def cmd_stormStop(self, everyone: bool = False) -> None:
        """End the storm's attackers (and, with C{everyone}, its users too)."""
        if self.storm is not None:
            self.storm.stop(everyone)

    def cmd_beginStep(self, step: int, windowStart: int = 0,
                      groupExpect: Optional[int] = None) -> None:
        """Start counting arrivals of C{step}."""
        self.steps[step] = StepStats(windowStart, groupExpect)

    def _templates(self, step: int, plan: list[tuple[int, int]], pad: int
                   ) -> tuple[list[UserSlot], list[bytes]]:
        """
        The senders of C{plan} and, for each, its chat with everything but
        the sequence number and send time filled in, so that sending costs
        one C{%} per message and no JSON encoding.
        """
        users = [self.slots[number] for number, _ in plan]
        padding, timeString = b"x" * pad, serverTimeString()
        templates = [self._chatTemplate(user, toUid, step, padding, timeString,
                                        user.conn.end if user.conn else b"\0")
                     for user, (_, toUid) in zip(users, plan)]
        return users, templates

    async def cmd_chat(self, step: int, plan: list[tuple[int, int]],
                       rate: float, start: int, duration: float,
                       pad: int = 0, tick: float = 0.002) -> dict[str, Any]:
        """
        Send one-to-one chats from each C{(slot, recipientUid)} of C{plan},
        round robin, at C{rate} messages/s in total for this process, from
        C{start} (monotonic ns) for C{duration} seconds.

        Paced by batches against the clock, never by per-message sleeps:
        every tick sends whatever the clock says is due by now, so a late
        tick is made up by a bigger batch and the offered rate holds as long
        as the process keeps up.  Each connection gets its due messages in
        one write.  Fires with the number sent and the worst lag behind the
        schedule (ns) that a batch was sent with.
        """
        if not plan or rate <= 0:
            return {"sent": 0, "maxLag": 0}
        users, templates = self._templates(step, plan, pad)
        total = int(rate * duration)
        sent = 0
        index = 0
        count = len(users)
        maxLag = 0
        await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
        perNs = rate / 1e9
        while sent < total:
            now = time.monotonic_ns()
            due = min(total, int((now - start) * perNs)) - sent
            if due > 0:
                lag = now - start - int(sent / perNs)
                if lag > maxLag:
                    maxLag = lag
                batches: dict[int, list[bytes]] = {}
                for _ in range(due):
                    user = users[index]
                    user.seq += 1
                    part = templates[index] % (user.seq, now)
                    batch = batches.get(index)
                    if batch is None:
                        batches[index] = [part]
                    else:
                        batch.append(part)
                    index += 1
                    if index == count:
                        index = 0
                for number, parts in batches.items():
                    conn = users[number].conn
                    if conn is not None:
                        conn.send(b"".join(parts))
                sent += due
            if sent < total:
                await asyncio.sleep(tick)
        return {"sent": sent, "maxLag": maxLag}

    async def cmd_openLoop(self, step: int, plan: list[tuple[int, int]],
                           rate: float, start: int, duration: float,
                           pad: int = 0, arrivals: str = "poisson",
                           tick: float = 0.001) -> dict[str, Any]:
        """
        The many-users pattern: each sender of C{plan} chats to its
        recipient on a schedule of its own (L{schedule}) at C{rate /
        len(plan)} messages/s, from C{start} (monotonic ns) for C{duration}
        seconds; open loop, so replies and a slow server change nothing.

        Each message is one C{transport.write} (one TCP segment, as the
        sockets have TCP_NODELAY), written as soon as its time has come and
        stamped with its scheduled time, not the time it was written: when
        this loop or the server falls behind, the lateness counts as
        latency.  Fires with the number sent, and the lag of every message
        (write time minus scheduled time, µs) to show whether the generator
        kept up.  The schedule's random numbers are seeded by the step and
        this worker, so a run can be repeated exactly.

        Why it never sleeps less than C{tick}: the loop's timers have a
        resolution of 1 ms (uvloop rounds a shorter delay to 0), so a
        sleep until a message 0.3 ms away spins, about 140,000 empty
        wake-ups a second, burning the core the server needs.  Messages
        that fall due within one tick are still written one by one, up to
        a tick late, and that lateness is in their latency and their lag.
        """
        if not plan or rate <= 0:
            return {"sent": 0, "maxLag": 0, "lags": b""}
        users, templates = self._templates(step, plan, pad)
        writes = [u.conn.send if u.conn is not None else _discard for u in users]
        seqs = [u.seq for u in users]
        times, who = schedule(len(plan), rate / len(plan), duration, start,
                              arrivals, random.Random(step * 1000 + self.workerId))
        lags = array("q")
        clock = time.monotonic_ns
        i, total = 0, len(times)
        while i < total:
            now = clock()
            while i < total and times[i] <= now:
                k = who[i]
                seqs[k] += 1
                writes[k](templates[k] % (seqs[k], times[i]))
                lags.append((now - times[i]) // 1000)
                i += 1
                now = clock()
            if i < total:
                await asyncio.sleep(max(tick, (times[i] - now) / 1e9))
        for user, seq in zip(users, seqs):
            user.seq = seq
        return {"sent": total, "maxLag": max(lags, default=0) * 1000,
                "lags": lags.tobytes()}

    async def cmd_groupSend(self, step: int, slot: int, groupId: int,
                            count: int = 1, pad: int = 0) -> dict[str, Any]:
        """Send C{count} group messages at once (one write); fires with their send time."""
        user = self.slots[slot]
        now = time.monotonic_ns()
        timeString = serverTimeString()
        first = user.seq + 1
        conn = self.conn(slot)
        data = b"".join(self._groupBytes(user, groupId, step, now, b"x" * pad,
                                         timeString, conn.end) for _ in range(count))
        conn.send(data)
        return {"sent": now, "seqs": list(range(first, user.seq + 1))}

    async def cmd_createGroup(self, slot: int, name: str,
                              description: str) -> int:
        """
        Create a group and fire with its id.  A classic connection gets no
        reply to CREATE_GROUP_MSG when it works, so the id is read from a
        GROUP_LIST that follows it (answered after it, in order).
        """
        conn = self.conn(slot)
        conn.errors.clear()
        conn.tell(b'{"msgid":8,"id":%d,"groupname":%s,"groupdesc":%s}' % (
            self.slots[slot].uid, _jsonString(name), _jsonString(description)))
        reply = await asyncio.wait_for(conn.request(16, b'{"msgid":16}'), 60)
        for group in reply.get("groups", []):
            if group.get("groupname") == name:
                return int(group["id"])
        raise RequestFailed(f"group {name} not created: {conn.errors}")

    async def cmd_joinGroup(self, slots: list[int], groupId: int,
                            concurrency: int = 100) -> dict[str, Any]:
        """
        Join C{groupId} from each slot; a PING after the silent
        ADD_GROUP_MSG tells when it has been handled.
        """
        limit = asyncio.Semaphore(concurrency)
        failed: dict[int, Any] = {}

        async def one(number: int) -> None:
            async with limit:
                conn = self.conn(number)
                conn.errors.clear()
                conn.tell(b'{"msgid":9,"id":%d,"groupid":%d}' % (
                    self.slots[number].uid, groupId))
                try:
                    await asyncio.wait_for(conn.request(12, b'{"msgid":12}'), 60)
                except Exception as e:
                    failed[number] = repr(e)
                    return
                if conn.errors:
                    failed[number] = conn.errors[-1]

        await asyncio.gather(*(one(n) for n in slots))
        return {"failedCount": len(failed),
                "failed": dict(list(failed.items())[:20])}

    def cmd_setEcho(self, slot: int, toUid: Optional[int]) -> None:
        """Make C{slot} answer every benchmark message at once (round trips)."""
        self.slot(slot).echoTo = toUid

    async def cmd_roundTrips(self, step: int, slot: int, toUid: int,
                             count: int, gap: float = 0.01,
                             timeout: float = 10) -> dict[str, Any]:
        """
        Send C{count} chats to an echoing user, one at a time, waiting for
        each answer; the step's latencies are then the round-trip times.
        """
        user = self.slots[slot]
        stats = self.step(step)
        lost = 0
        for _ in range(count):
            before = stats.live
            stats.waiter = self.loop.create_future()
            now = time.monotonic_ns()
            conn = self.conn(slot)
            conn.send(self._chatBytes(user, toUid, step, now, b"",
                                      serverTimeString(), conn.end))
            try:
                while stats.live == before:
                    await asyncio.wait_for(stats.waiter, timeout)
                    if stats.live == before:
                        stats.waiter = self.loop.create_future()
            except asyncio.TimeoutError:
                lost += 1
            stats.waiter = None
            await asyncio.sleep(gap)
        return {"timeouts": lost}

    def cmd_replyCounts(self) -> dict[str, int]:
        """Success ACKs (and how many said "offline") and error replies so far."""
        return {"acks": self.acks["ok"], "acksOffline": self.acks["offline"],
                "errorReplies": sum(self.errors.values())}

    def cmd_stepStatus(self, step: int) -> dict[str, int]:
        """Progress of C{step}, with L{cmd_replyCounts}."""
        stats = self.step(step)
        return {"live": stats.live, "offline": stats.offline,
                "dups": stats.dups, **self.cmd_replyCounts()}

    def cmd_stepResult(self, step: int) -> dict[str, Any]:
        """Everything about C{step}; latencies as the bytes of an array('q')."""
        stats = self.step(step)
        return {
            "live": stats.live, "offline": stats.offline, "dups": stats.dups,
            "latencies": stats.latencies.tobytes(),
            "firstArrival": stats.firstArrival,
            "lastArrival": stats.lastArrival,
            "groups": ({f"{k[0]}:{k[1]}": v for k, v in stats.groups.items()}
                       if stats.groups is not None else None),
        }

    def cmd_dropStep(self, step: int) -> None:
        self.steps.pop(step, None)

    def cmd_stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"pid": os.getpid(), "counters": dict(self.counters),
                "errors": dict(self.errors), "acks": dict(self.acks),
                "notices": self.notices[-10:],
                "cpu": usage.ru_utime + usage.ru_stime,
                "maxRSSKiB": usage.ru_maxrss,
                "connections": sum(1 for u in self.slots.values()
                                   if u.conn is not None)}

    def cmd_exit(self) -> None:
        for user in self.slots.values():
            if user.conn is not None:
                user.conn.close()
        self.done.set()

    # Dispatch -------------------------------------------------------------

    async def serve(self) -> None:
        """Read C{(callId, name, kwargs)} commands; each runs as a task."""
        try:
            while not self.done.is_set():
                header = await self.reader.readexactly(4)
                (size,) = struct.unpack("!i", header)
                if size == -1:
                    (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
                callId, name, kwargs = pickle.loads(await self.reader.readexactly(size))
                self.loop.create_task(self.run(callId, name, kwargs))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.done.set()  # the coordinator went away

    async def run(self, callId: int, name: str, kwargs: dict[str, Any]) -> None:
        try:
            result = getattr(self, f"cmd_{name}")(**kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            self.send(("reply", callId, True, result))
        except Exception as e:
            self.send(("reply", callId, False,
                       f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        await self.writer.drain()


def _raiseFileLimit() -> None:
    """Use the hard open-file limit: each connection is one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(fd: int, workerId: int, useUvloop: bool = True) -> None:
    """A worker process's life: serve commands on socket C{fd} until told to exit."""
    _raiseFileLimit()

    async def serve() -> None:
        sock = socket.socket(fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        worker = Worker(reader, writer, workerId)
        worker.send(("ready", workerId, loopName()))
        reading = asyncio.get_running_loop().create_task(worker.serve())
        await worker.done.wait()
        await writer.drain()
        reading.cancel()
        await asyncio.sleep(0.05)

    if useUvloop:
        try:
            import uvloop

            uvloop.run(serve())
            return
        except ImportError:
            pass
    asyncio.run(serve())


def loopName() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"

