"""
Small statistics: percentiles of sorted samples, the median/min/max summary
the report gives for every number, and CPU use of processes over a step.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

from .deploy import cpuSeconds, readRSS


def percentile(sortedValues: Sequence[float], fraction: float) -> Optional[float]:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sortedValues:
        return None
    rank = max(0, min(len(sortedValues) - 1, int(round(fraction * len(sortedValues) + 0.5)) - 1))
    return sortedValues[rank]


def latencySummary(sortedMicros: Sequence[int], prefix: str = "") -> dict[str, Optional[float]]:
    """p50/p95/p99/max of microsecond samples, in milliseconds."""
    def ms(value: Optional[float]) -> Optional[float]:
        return None if value is None else value / 1000.0

    return {
        f"{prefix}p50 ms": ms(percentile(sortedMicros, 0.50)),
        f"{prefix}p95 ms": ms(percentile(sortedMicros, 0.95)),
        f"{prefix}p99 ms": ms(percentile(sortedMicros, 0.99)),
        f"{prefix}max ms": ms(sortedMicros[-1] if sortedMicros else None),
    }


@dataclass
class Summary:
    """The median of the runs, with the smallest and largest."""

    median: Optional[float]
    low: Optional[float]
    high: Optional[float]
    count: int

    @classmethod
    def of(cls, values: Iterable[Optional[float]]) -> "Summary":
        present = [v for v in values if v is not None]
        if not present:
            return cls(None, None, None, 0)
        return cls(statistics.median(present), min(present), max(present), len(present))


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Summary]:
    """Per metric (in first-seen order), the L{Summary} over the runs."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    return {k: Summary.of(run.get(k) for run in runs
                          if isinstance(run.get(k), (int, float)) or run.get(k) is None)
            for k in keys}


def machineTicks() -> tuple[int, int, int]:
    """
    From /proc/stat: (busy, steal, total) clock ticks of all CPUs since boot.
    Busy excludes idle and iowait; steal is time the hypervisor gave away.
    """
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return 0, 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


@dataclass
class CpuMeter:
    """
    CPU use of named processes between C{start} and C{stop}, as % of one
    core, and of the whole machine: what every process used (100 per busy
    core), how much of it was not ours (other work on a shared machine),
    and the hypervisor's steal.  After C{stop}, C{used} holds each
    process's CPU seconds, for costs per message.
    """

    pids: Mapping[str, int]
    used: dict[str, float] = field(default_factory=dict)
    _start: dict[str, Optional[float]] = field(default_factory=dict)
    _wall: float = 0.0
    _machine: tuple[int, int, int] = (0, 0, 0)

    def start(self) -> "CpuMeter":
        self._start = {name: cpuSeconds(pid) for name, pid in self.pids.items()}
        self._machine = machineTicks()
        self._wall = time.monotonic()
        return self

    def stop(self, wall: Optional[float] = None) -> dict[str, float]:
        """
        The percentages; C{wall} (seconds) overrides the elapsed time as
        the divisor, for a measurement whose first part was an idle lead-in.
        """
        wall = max(1e-9, wall if wall is not None else time.monotonic() - self._wall)
        out = {}
        self.used = {}
        for name, pid in self.pids.items():
            before, after = self._start[name], cpuSeconds(pid)
            if before is not None and after is not None and after >= before:
                self.used[name] = after - before
                out[name] = round(100.0 * (after - before) / wall, 1)
        busy, steal, total = (b - a for a, b in zip(self._machine, machineTicks()))
        if total > 0:
            ticks = os.sysconf("SC_CLK_TCK")
            out["machine"] = round(100.0 * busy / ticks / wall, 1)
            out["other processes"] = round(max(0.0, out["machine"] - sum(
                v for k, v in out.items() if k != "machine")), 1)
            out["steal"] = round(100.0 * steal / ticks / wall, 1)
        return out


class RSSWatch(threading.Thread):
    """
    The peak resident memory (KiB) of process C{pid} until stopped, read
    every 50 ms: a burst's peak is gone by the time it is over.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = readRSS(pid)
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, readRSS(self.pid))
            time.sleep(0.05)

    def stop(self) -> int:
        self.running = False
        self.join(5)
        return self.peak
