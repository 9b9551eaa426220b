"""
What readers that cannot keep up cost a node and everybody else on it.

slow-readers (PROTOCOL.md 6, issue 8): recipients with a 4 KiB receive
buffer that never read are flooded with messages of 3,000 characters, far
past C{--max-output} each, while a population of bystanders chats in the
many-users pattern.  It reports the node's memory against the bound the
design promises (readers x --max-output), the bystanders' latency during
the flood against the same bystanders just before it, and, once the slow
readers read everything and log in again, how many messages were lost,
repeated or out of order (all must be 0).

classic-receive (PROTOCOL.md 7, issue 10): the highest rate one classic
connection receives at, now that each object leaves in a write of its own
once the previous one has left, and how many of its reads held more than
one object (the classic client's 1024-byte C{recv} parsed as one object).

Both drive their special clients with blocking sockets from this process
(L{tests.harness.LineClient}); the bystanders come from the load generator.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from typing import Any, Optional

from tests.harness import LineClient, collectChats

from .deploy import Owner, readRSS, singleNode
from .scenarios import (
    ScenarioResult, Settings, _guard, _newLoadGen, _pairs, measureChat,
)
from .stats import RSSWatch

PASSWORD = "bench-password"
RECEIVE_BUFFER = 4096
TEXT_SIZE = 3000
WINDOW = 50
"""Requests a flooding sender keeps in flight ahead of their ACKs."""
CLASSIC_TEXT = 40
"""Characters of a classic-receive message: an event well within 1024 bytes."""
DEFAULT_MAX_OUTPUT_MIB = 1.0
"""The node's --max-output (its default), for the memory bound reported."""


def _name(tag: str) -> str:
    return f"{tag}{uuid.uuid4().hex[:10]}"


def _login(client: LineClient, name: str, classic: bool = False) -> int:
    """Register C{name} and log it in on C{client}; its id."""
    reply = client.request({"msgid": 4, "name": name, "password": PASSWORD}, classic)
    if reply.get("errno") != 0:
        raise RuntimeError(f"registration refused: {reply}")
    userId = int(reply["id"])
    reply = client.request({"msgid": 1, "id": userId, "password": PASSWORD}, classic)
    if reply.get("errno") != 0:
        raise RuntimeError(f"login refused: {reply}")
    return userId


def _numbered(sender: int, seq: int, size: int = TEXT_SIZE) -> str:
    head = f"{sender}:{seq}:"
    return head + "x" * (size - len(head))


class _Flood(threading.Thread):
    """
    One sender: C{perTarget} numbered messages to each of C{targets},
    round robin, keeping L{WINDOW} requests in flight; counts its ACKs by
    delivery.
    """

    def __init__(self, index: int, client: LineClient, targets: list[int],
                 perTarget: int, size: int = TEXT_SIZE) -> None:
        super().__init__(daemon=True)
        self.index, self.client = index, client
        self.targets, self.perTarget, self.size = targets, perTarget, size
        self.deliveries: dict[str, int] = {}
        self.error: Optional[BaseException] = None

    def requests(self) -> list[bytes]:
        return [json.dumps({"msgid": 6, "toid": target,
                            "msg": _numbered(self.index, seq, self.size)}).encode() + b"\n"
                for seq in range(self.perTarget) for target in self.targets]

    def run(self) -> None:
        try:
            requests = self.requests()
            for start in range(0, len(requests), WINDOW):
                batch = requests[start:start + WINDOW]
                self.client.send(b"".join(batch))
                for _ in batch:
                    ack = self.client.readJSON(120)
                    if (ack.get("msgid"), ack.get("errno")) != (11, 0):
                        raise RuntimeError(f"chat refused: {ack}")
                    delivery = ack.get("delivery", "?")
                    self.deliveries[delivery] = self.deliveries.get(delivery, 0) + 1
        except BaseException as e:
            self.error = e


def _readEverything(reader: LineClient, userId: int, address: tuple[str, int],
                    expected: int) -> tuple[list[str], int]:
    """
    A slow reader's messages: what it reads now on its connection, then
    what its next login brings (stored ones); also how many came at login.
    """
    texts: list[str] = []
    collectChats(reader, texts, lambda: len(texts) >= expected, quiet=10, timeout=600)
    reader.sendJSON({"msgid": 3})
    reader.close()
    again = LineClient(*address, timeout=60)
    try:
        reply = again.request({"msgid": 1, "id": userId, "password": PASSWORD})
        stored = [json.loads(s)["msg"] for s in reply.get("offlinemsg", [])]
        texts.extend(stored)
        collectChats(again, texts, lambda: len(texts) >= expected, quiet=5, timeout=600)
    finally:
        again.close()
    return texts, len(stored)


def _tally(texts: list[str], senders: int, perTarget: int) -> dict[str, int]:
    """Lost, repeated and out-of-order messages of one reader."""
    seqs: dict[int, list[int]] = {}
    for text in texts:
        sender, seq, _ = text.split(":", 2)
        seqs.setdefault(int(sender), []).append(int(seq))
    lost = duplicates = disorder = 0
    for sender in range(senders):
        got = seqs.get(sender, [])
        lost += len(set(range(perTarget)) - set(got))
        duplicates += len(got) - len(set(got))
        disorder += sum(1 for a, b in zip(got, got[1:]) if b <= a)
    return {"lost": lost, "duplicates": duplicates, "out of order": disorder}


def slowReaders(settings: Settings) -> ScenarioResult:
    """The slow-readers scenario (see the module docstring)."""
    readers, senders, perTarget = (settings.slowReaders, settings.slowSenders,
                                   settings.slowPerReader)
    result = ScenarioResult("slow-readers", f"{readers} recipients that never read, "
                            "flooded while others chat (many-users pattern)")
    result.settings = {"never-reading recipients": readers,
                       "receive buffer bytes": RECEIVE_BUFFER,
                       "flooding senders": senders,
                       "messages per recipient": senders * perTarget,
                       "text chars": TEXT_SIZE,
                       "bystander pairs": settings.pairs,
                       "bystander rate msgs/s": settings.rate,
                       "bystander step s": settings.duration}
    result.ratioKeys = []

    def oneRun(dep: Any, lg: Any, bystanders: Any) -> dict[str, Any]:
        address = dep.address(0)
        pid = dep.nodes[0].pid
        slow = [LineClient(*address, timeout=30, receiveBuffer=RECEIVE_BUFFER)
                for _ in range(readers)]
        slowIds = [_login(c, _name("slow")) for c in slow]
        floods = []
        for i in range(senders):
            client = LineClient(*address, timeout=120)
            _login(client, _name("flood"))
            floods.append(_Flood(i, client, slowIds, perTarget))
        quiet = measureChat(lg, bystanders, settings, dep, settings.rate,
                            settings.duration, pattern="users")
        time.sleep(1.0)
        before = readRSS(pid)
        watch = RSSWatch(pid)
        watch.start()
        began = time.monotonic()
        for flood in floods:
            flood.start()
        time.sleep(1.0)
        during = measureChat(lg, bystanders, settings, dep, settings.rate,
                             settings.duration, pattern="users")
        for flood in floods:
            flood.join(600)
        floodSeconds = time.monotonic() - began
        peak = watch.stop()
        errors = [f.error for f in floods if f.error is not None]
        if errors:
            raise RuntimeError(f"a flooding sender failed: {errors[0]!r}")
        deliveries: dict[str, int] = {}
        for flood in floods:
            for key, count in flood.deliveries.items():
                deliveries[key] = deliveries.get(key, 0) + count
            flood.client.close()
        tallies: list[dict[str, int]] = []
        storedAtLogin = [0]

        def drain(reader: LineClient, userId: int) -> None:
            texts, stored = _readEverything(reader, userId, address, senders * perTarget)
            tallies.append(_tally(texts, senders, perTarget))
            storedAtLogin[0] += stored

        threads = [threading.Thread(target=drain, args=pair, daemon=True)
                   for pair in zip(slow, slowIds)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        metrics: dict[str, Any] = {
            "flood s": round(floodSeconds, 1),
            "ACK online": deliveries.get("online", 0),
            "ACK offline": deliveries.get("offline", 0),
            "RSS before MiB": round(before / 1024, 1),
            "RSS growth MiB": round((peak - before) / 1024, 1),
            "bound MiB (readers x max-output)": readers * DEFAULT_MAX_OUTPUT_MIB,
            "quiet: p50 ms": quiet.get("p50 ms"), "quiet: p99 ms": quiet.get("p99 ms"),
            "flood: p50 ms": during.get("p50 ms"), "flood: p99 ms": during.get("p99 ms"),
            "flood: p99 / quiet p99": (round(during["p99 ms"] / quiet["p99 ms"], 2)
                                       if quiet.get("p99 ms") and during.get("p99 ms")
                                       else None),
            "bystanders lost": quiet["lost"] + during["lost"],
            "readers answered": len(tallies),
            "stored messages at re-login": storedAtLogin[0],
        }
        for key in ("lost", "duplicates", "out of order"):
            metrics[key] = sum(t[key] for t in tallies) + (
                (readers - len(tallies)) * senders * perTarget if key == "lost" else 0)
        return metrics

    def body() -> None:
        with Owner() as owner:
            dep = singleNode(owner, root=settings.root)
            result.deployment = dep.label
            with _newLoadGen(settings) as lg:
                bystanders = _pairs(lg, settings.pairs, dep.address(0), dep.address(0),
                                    classic=False)
                for _ in range(settings.runs):
                    result.runs.append(oneRun(dep, lg, bystanders))

    return _guard(result, body)


class _ClassicReader(threading.Thread):
    """
    Reads as the classic client does: C{recv(1024)}, each result parsed as
    one JSON object.  Counts the chat events (whatever the reads), the
    reads that are not exactly one object (those the classic client dies
    on), and notes when the first and the last read came.
    """

    def __init__(self, sock: socket.socket, expected: int) -> None:
        super().__init__(daemon=True)
        self.sock, self.expected = sock, expected
        self.events = self.merged = 0
        self.first = self.last = 0.0

    def run(self) -> None:
        self.sock.settimeout(10)
        pending = b""
        while self.events < self.expected:
            try:
                data = self.sock.recv(1024)
            except OSError:
                return
            if not data:
                return
            try:
                json.loads(data)
            except ValueError:
                self.merged += 1
            now = time.monotonic()
            self.first = self.first or now
            self.last = now
            *lines, pending = (pending + data).split(b"\n")
            self.events += sum(1 for line in lines if json.loads(line).get("msgid") == 6)


def classicReceive(settings: Settings) -> ScenarioResult:
    """The classic-receive scenario (see the module docstring)."""
    count = settings.classicMessages
    result = ScenarioResult("classic-receive", "one classic connection receiving "
                            "as fast as it can")
    result.settings = {"messages": count, "senders": 2,
                       "framing of the senders": "JSON lines",
                       "reader": "recv(1024), one object per read"}
    result.ratioKeys = []

    def oneRun(address: tuple[str, int]) -> dict[str, Any]:
        recipient = LineClient(*address, timeout=30)
        recipientId = _login(recipient, _name("classic"), classic=True)
        senders = []
        for i in range(2):
            client = LineClient(*address, timeout=60)
            _login(client, _name("csend"))
            senders.append(_Flood(i, client, [recipientId], count // 2, size=CLASSIC_TEXT))
        # the login ack, already read by _login, is not counted
        reader = _ClassicReader(recipient.sock, 2 * (count // 2))
        reader.start()
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(600)
        reader.join(600)
        for client in [recipient] + [s.client for s in senders]:
            client.close()
        seconds = max(1e-9, reader.last - reader.first)
        return {"received": reader.events,
                "msgs/s received": round(reader.events / seconds, 1),
                "reads with more than one object": reader.merged,
                "lost": 2 * (count // 2) - reader.events}

    def body() -> None:
        with Owner() as owner:
            dep = singleNode(owner, root=settings.root)
            result.deployment = dep.label
            for _ in range(settings.runs):
                result.runs.append(oneRun(dep.address(0)))

    return _guard(result, body)
