"""
users-instructions: the user-space instructions a node executes per
delivered message under the many-users pattern, against the bare relay,
counted by callgrind.

Why instructions: this machine is shared and has no hardware counters
(perf reports them unsupported), so CPU seconds per message move by tens
of percent between runs for reasons unrelated to the code.  callgrind
counts the instructions a process executes whatever else runs, so the
same code under the same load gives the same count, and a ratio of two
counts is a ratio of work.  What it does not see is the kernel: the
system calls (a node's send and recv, which a profile puts near half of
its busy time) cost the same for the node and the relay, one recv and two
sends per message each, so the CPU seconds ratio lies between 1 and this
one.  Under callgrind a process runs about fifty times slower, so the
rate is low (default 100 msgs/s over 100 pairs): the count per message
is what matters, not the rate.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any, Optional

from .deploy import BenchNode, Deployment, Owner, RelayNode, singleNode
from .scenarios import ScenarioResult, Settings, _guard, _newLoadGen, _pairs, measureChat

_THREAD = re.compile(r"^\s*Th\s+\d+\s+([\d,]+)\s*$", re.M)
"""A thread's line of C{callgrind_control -e Ir}: C{Th 1   121,881,796}."""


def _underCallgrind(argv: list[str]) -> list[str]:
    """C{argv} run by callgrind, instrumented from the start, writing no file."""
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            "--dump-line=no", *argv]


class CallgrindNode(BenchNode):
    """A chat node run under callgrind."""

    def argv(self) -> list[str]:
        return _underCallgrind(super().argv())


class CallgrindRelay(RelayNode):
    """The bare relay run under callgrind."""

    def argv(self) -> list[str]:
        return _underCallgrind(super().argv())


def _control(pid: int, *args: str) -> str:
    return subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True,
                          text=True, timeout=60, check=True).stdout


def instructionsNow(pid: int) -> int:
    """
    The instructions callgrind counted in C{pid} since its last zeroing,
    summed over its threads (the database's and the password hashes' work
    runs in Twisted's thread pool).
    """
    return parseInstructions(_control(pid, "-e", "Ir"))


def parseInstructions(text: str) -> int:
    """The sum of the thread counts in C{callgrind_control -e Ir}'s output."""
    counts = _THREAD.findall(text)
    if not counts:
        raise RuntimeError(f"callgrind_control printed no Ir count: {text!r}")
    return sum(int(count.replace(",", "")) for count in counts)


def _measure(lg: Any, pairs: Any, settings: Settings, dep: Deployment) -> dict[str, Any]:
    """One window: counters zeroed, the many-users pattern, counters read."""
    pid = dep.nodes[0].pid
    assert pid is not None
    _control(pid, "-z")
    metrics = measureChat(lg, pairs, settings, dep, settings.instrRate,
                          settings.instrDuration, pattern="users", warmup=0.0)
    count = instructionsNow(pid)
    delivered = metrics["sent"] - metrics["lost"] - metrics["stored offline"]
    return {"delivered": delivered, "lost": metrics["lost"],
            "instructions per msg (thousands)": round(count / max(1, delivered) / 1000, 1)}


def usersInstructions(settings: Settings) -> ScenarioResult:
    """The users-instructions scenario (see the module docstring)."""
    result = ScenarioResult("users-instructions", "many users: user-space instructions "
                            "per delivered message (callgrind)")
    result.settings = {"pairs": settings.instrPairs, "rate msgs/s": settings.instrRate,
                       "measured s": settings.instrDuration,
                       "framing": "JSON lines, ACK per chat",
                       "reactor": BenchNode.reactor or "twistd's default"}
    result.ratioKeys = ["instructions per msg (thousands)"]

    def body() -> None:
        with Owner() as owner:
            node = CallgrindNode(owner, root=settings.root, timeout=300)
            dep = Deployment(owner, [node], label="one node, SQLite, under callgrind")
            result.deployment = dep.label
            base: Optional[Deployment] = None
            if settings.baseline:
                base = Deployment(owner, [CallgrindRelay(owner, timeout=300)],
                                  label="bare Twisted relay (orjson), under callgrind")
                result.baselineLabel = base.label
            with _newLoadGen(settings) as lg:
                pairs = _pairs(lg, settings.instrPairs, dep.address(0), dep.address(0),
                               classic=False)
                basePairs = _pairs(lg, settings.instrPairs, base.address(0), base.address(0),
                                   classic=False) if base else None
                # a first window warms caches (users known, code paths taken)
                _measure(lg, pairs, settings, dep)
                if base and basePairs:
                    _measure(lg, basePairs, settings, base)
                for _ in range(settings.runs):
                    result.runs.append(_measure(lg, pairs, settings, dep))
                    if base and basePairs:
                        result.baseline.append(_measure(lg, basePairs, settings, base))

    return _guard(result, body)
