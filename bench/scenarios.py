"""
The scenarios of issues 4 and 12, each starting the deployment it needs,
measuring C{settings.runs} runs and returning a L{ScenarioResult}.

Two load patterns: the many-users pattern (C{users-*}, the headline), in
which every sender has an open-loop schedule of its own and writes each
message on its own (L{LoadGen.openLoop}); and the batched (pipelined)
pattern of the other chat scenarios, in which a worker writes each
connection's due messages in one write every 2 ms (L{LoadGen.chat}), so a
server reads many messages at once and pays its per-read costs rarely.

Every scenario counts losses the same way: a message is delivered live,
or found in the offline store when its recipient logs in again at the
end (L{LoadGen.checkOffline}); anything else is lost.  Every scenario
reads the nodes' logs afterwards and reports problem lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .deploy import (
    Deployment, Owner, cluster, readRSS, relay, singleNode,
)
from .loadgen import LoadGen, User, workersFor
from .stats import CpuMeter, latencySummary, percentile


@dataclass
class Settings:
    """Sizes and durations of a benchmark run (see C{python -m bench.run --help})."""

    root: Optional[Path] = None
    workers: int = 2
    runs: int = 3
    baseline: bool = True
    pairs: int = 100
    rate: float = 2000.0
    duration: float = 5.0
    warmup: float = 0.5
    pad: int = 32
    tick: float = 0.002
    metrics: bool = False
    """Run every node with C{--metrics} (the metrics-* scenarios compare
    both regardless)."""
    scrapeInterval: float = 1.0
    """Seconds between two scrapes of /metrics while a metrics-* run
    measures a node with metrics on."""
    drainTimeout: float = 30.0
    satStart: float = 1000.0
    satMax: float = 200000.0
    satStepDuration: float = 3.0
    satBisect: int = 3
    satConfirm: int = 1
    p99LimitMs: float = 50.0
    groupSizes: tuple[int, ...] = (100, 1000)
    groupMessages: int = 10
    groupBurst: int = 10
    loginConcurrency: int = 32
    loginAccounts: int = 64
    loginDuration: float = 15.0
    loginSerialDuration: float = 3.0
    connections: tuple[int, ...] = (5000, 10000, 19000)
    rttCount: int = 200
    portsPerAddress: int = 25000
    haproxy: bool = False
    usersPairs: int = 500
    usersRates: tuple[float, ...] = (1000, 2500, 5000, 7500, 10000, 15000, 20000,
                                     30000, 40000)
    usersStepDuration: float = 4.0
    usersRefRate: float = 5000.0
    usersArrivals: str = "poisson"
    usersClassic: bool = False
    usersColdRate: float = 1000.0
    usersColdDuration: float = 5.0
    slowReaders: int = 100
    slowSenders: int = 10
    slowPerReader: int = 70
    classicMessages: int = 2000
    instrPairs: int = 100
    instrRate: float = 100.0
    instrDuration: float = 10.0
    stormUsers: int = 1000
    """login-storm: users (and, in part 2, attackers); issue 9's figure is
    5,000, 8 to 14 minutes a part on 2 cores at the default cost."""
    stormBackoff: float = 0.5
    stormJitter: float = 0.5
    stormDeadline: float = 3600.0

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["root"] = str(self.root) if self.root else "this checkout"
        return out


@dataclass
class ScenarioResult:
    """
    One scenario's numbers: one dict of metrics per run (and per baseline
    run, measured in the same run of the benchmark), detail tables, notes.
    """

    key: str
    title: str
    deployment: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    baseline: list[dict[str, Any]] = field(default_factory=list)
    baselineLabel: str = ""
    ratioKeys: list[str] = field(default_factory=list)
    details: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: Optional[str] = None
    seconds: float = 0.0


# Helpers ------------------------------------------------------------------


def _newLoadGen(settings: Settings, workers: Optional[int] = None) -> LoadGen:
    return LoadGen(workers or settings.workers, portsPerAddress=settings.portsPerAddress)


def _pairs(lg: LoadGen, count: int, senderAt: tuple[str, int],
           recipientAt: tuple[str, int], classic: bool = True) -> list[tuple[User, User]]:
    """
    C{count} senders and their recipients, registered and logged in.  A
    pair's two ends live in different processes when there are several,
    so every message crosses from one process to another.
    """
    senders = lg.addUsers(count, senderAt, tag="s", classic=classic)
    recipients = lg.addUsers(count, recipientAt, tag="r", classic=classic)
    for i, (s, r) in enumerate(zip(senders, recipients)):
        s.worker = i % lg.workerCount
        r.worker = (i + 1) % lg.workerCount
    lg.setUp(senders + recipients)
    return list(zip(senders, recipients))


def _pids(dep: Deployment, lg: LoadGen) -> dict[str, int]:
    pids = dict(dep.pids())
    pids.update({f"gen{i}": pid for i, pid in enumerate(lg.pids)})
    return pids


_MACHINE = ("machine", "other processes", "steal")


def _cpuMetrics(cpu: dict[str, float]) -> dict[str, float]:
    """Servers one by one, the generator's processes summed, then the machine."""
    out = {f"CPU % {name}": value for name, value in cpu.items()
           if not name.startswith("gen") and name not in _MACHINE}
    out["CPU % generator"] = round(sum(v for k, v in cpu.items() if k.startswith("gen")), 1)
    out.update({f"CPU % {name}": cpu[name] for name in _MACHINE if name in cpu})
    return out


def _cpuPerMessage(used: dict[str, float], delivered: int) -> dict[str, Optional[float]]:
    """
    CPU time per delivered message, µs: the server's processes summed (the
    node, both nodes, or the relay), each node when there are several,
    Redis, MariaDB, and the generator's processes summed.  Why per message:
    unlike CPU %, it does not grow with the offered rate, so it compares
    deployments, and a node with the relay, at whatever rate each ran.
    """
    def per(seconds: float) -> Optional[float]:
        return round(seconds * 1e6 / delivered, 1) if delivered else None

    nodes = {k: v for k, v in used.items() if k.startswith("node")}
    out = {"CPU µs/msg server": per(sum(nodes.values()))}
    if len(nodes) > 1:
        out.update({f"CPU µs/msg {k}": per(v) for k, v in nodes.items()})
    out.update({f"CPU µs/msg {k}": per(used[k]) for k in ("redis", "mariadbd", "haproxy")
                if k in used})
    out["CPU µs/msg generator"] = per(sum(v for k, v in used.items() if k.startswith("gen")))
    return out


def measureChat(lg: LoadGen, pairs: Sequence[tuple[User, User]], settings: Settings,
                dep: Deployment, rate: float, duration: float, pattern: str = "batched",
                warmup: Optional[float] = None) -> dict[str, Any]:
    """
    One step of one-to-one chats at C{rate}, in the batched (pipelined)
    or the many-users (C{"users"}) pattern: the metrics of one run.
    Latencies count from C{warmup} seconds in (default C{settings.warmup}).

    delivered msgs/s is the messages delivered live divided by the time
    from the first send to the last arrival, so a server that falls behind
    shows its real rate, not the offered one.
    """
    warmup = settings.warmup if warmup is None else warmup
    meter = CpuMeter(_pids(dep, lg)).start()
    if pattern == "users":
        step, result, start = lg.openLoop(pairs, rate, duration, warmup=warmup,
                                          pad=settings.pad, arrivals=settings.usersArrivals,
                                          drainTimeout=settings.drainTimeout)
    else:
        step, result, start = lg.chat(pairs, rate, duration, warmup=warmup,
                                      pad=settings.pad, tick=settings.tick,
                                      drainTimeout=settings.drainTimeout)
    elapsed = max(1e-9, ((result.lastArrival or time.monotonic_ns()) - start) / 1e9)
    # the lead-in before the first send is idle: divide by the time since it
    cpu = meter.stop(wall=(time.monotonic_ns() - start) / 1e9)
    lg.checkOffline([r for _, r in pairs], step, result)
    lg.broadcast("dropStep", step=step)
    metrics: dict[str, Any] = {
        "offered msgs/s": round(rate),
        "delivered msgs/s": round(result.live / elapsed, 1),
        "sent": result.sent,
        "lost": result.lost,
        "stored offline": result.offline,
        "duplicates": result.dups,
    }
    metrics.update(latencySummary(result.latencies))
    metrics.update(_cpuMetrics(cpu))
    metrics.update(_cpuPerMessage(meter.used, result.live))
    metrics["generator lag ms"] = round(result.maxLag / 1e6, 1)
    if pattern == "users":
        lagP99 = percentile(result.lags, 0.99)
        metrics["generator lag p99 ms"] = None if lagP99 is None else round(lagP99 / 1000, 2)
        metrics["ACKs"] = result.acks
        metrics["error replies"] = result.errorReplies
    return metrics


def _holds(metrics: dict[str, Any], settings: Settings) -> tuple[bool, str]:
    """Whether a saturation step held: nothing lost and p99 within the limit."""
    if metrics["lost"] > 0:
        return False, f"{metrics['lost']} lost"
    p99 = metrics.get("p99 ms")
    if p99 is None:
        return False, "nothing arrived"
    if p99 > settings.p99LimitMs:
        return False, f"p99 {p99:.1f} ms > {settings.p99LimitMs:g} ms"
    return True, "held"


_SATURATION_ROW = ("delivered msgs/s", "lost", "p50 ms", "p99 ms", "generator lag ms")
"""The columns of a saturation step's row, besides the CPU % ones."""

_USERS_ROW = ("sent", "delivered msgs/s", "lost", "duplicates", "ACKs", "error replies",
              "p50 ms", "p99 ms", "max ms", "generator lag p99 ms", "generator lag ms")
"""
The columns of a many-users step's row, besides the CPU ones: the counts
first, so that a reader (and the smoke test) sees every message accounted
for, ACKs included.
"""


def _tryRate(measure: Callable[[float], dict[str, Any]], rate: float, settings: Settings,
             steps: list[dict[str, Any]], columns: Sequence[str]) -> tuple[bool, dict[str, Any]]:
    """
    Measure one offered rate and add its row to C{steps}; fires with
    whether it held and its metrics.  A p99 failure is measured again
    (C{satConfirm} times) before it counts, because on a shared machine one
    stall of another tenant's 100 ms is enough to spoil the p99 of a 3 s
    step.  A loss is never given a second chance.
    """
    rate = float(round(rate))
    for attempt in range(1 + settings.satConfirm):
        metrics = measure(rate)
        ok, why = _holds(metrics, settings)
        lag = metrics.get("generator lag p99 ms")
        if lag is not None and lag > settings.p99LimitMs / 10:
            why += f"; generator late (lag p99 {lag:.1f} ms)"
        steps.append({"offered msgs/s": rate, "outcome": why + (" (again)" if attempt else ""),
                      **{k: metrics[k] for k in columns if k in metrics},
                      **{k: v for k, v in metrics.items() if k.startswith("CPU ")}})
        time.sleep(0.5)  # let the server settle between steps
        if ok or metrics["lost"] > 0:
            break
    return ok, metrics


def saturate(lg: LoadGen, pairs: Sequence[tuple[User, User]], settings: Settings,
             dep: Deployment) -> tuple[Optional[float], Optional[float], list[dict[str, Any]]]:
    """
    Step the offered rate up until a step does not hold: double from
    C{satStart}, then bisect C{satBisect} times between the last rate that
    held and the first that did not.  Fires with (held, failed, steps).
    """
    steps: list[dict[str, Any]] = []

    def tryRate(rate: float) -> bool:
        return _tryRate(lambda r: measureChat(lg, pairs, settings, dep, r,
                                              settings.satStepDuration),
                        rate, settings, steps, _SATURATION_ROW)[0]

    held: Optional[float] = None
    failed: Optional[float] = None
    rate = settings.satStart
    while rate <= settings.satMax:
        if tryRate(rate):
            held = rate
            if failed is not None:
                break
            rate *= 2
        else:
            failed = rate
            if held is not None:
                break
            rate /= 2
            if rate < settings.satStart / 16:
                return None, failed, steps
    for _ in range(settings.satBisect if held is not None and failed is not None else 0):
        middle = float(round((held + failed) / 2))
        if tryRate(middle):
            held = middle
        else:
            failed = middle
    return held, failed, steps


def ladder(lg: LoadGen, pairs: Sequence[tuple[User, User]], settings: Settings,
           dep: Deployment) -> tuple[Optional[float], Optional[float], list[dict[str, Any]],
                                     dict[float, dict[str, Any]]]:
    """
    The many-users pattern's open-loop rate steps (C{usersRates}), in
    order, until one does not hold (p99 over the limit, or a loss).  Fires
    with the last rate that held, the first that did not, the steps' rows
    and each measured rate's metrics.
    """
    steps: list[dict[str, Any]] = []
    measured: dict[float, dict[str, Any]] = {}
    held: Optional[float] = None
    for rate in settings.usersRates:
        ok, measured[float(rate)] = _tryRate(
            lambda r: measureChat(lg, pairs, settings, dep, r, settings.usersStepDuration,
                                  pattern="users"),
            rate, settings, steps, _USERS_ROW)
        if not ok:
            return held, float(rate), steps, measured
        held = float(rate)
    return held, None, steps, measured


def _notes(lg: LoadGen, deps: Sequence[Deployment]) -> list[str]:
    """Server log problems and what the generator saw go wrong."""
    notes: list[str] = []
    for dep in deps:
        notes.extend(f"{dep.label}: {p}" for p in dep.problems())
    for workerId, stats in lg.workerStats().items():
        bad = {k: v for k, v in stats["counters"].items() if v}
        if bad:
            notes.append(f"generator process {workerId}: {bad}")
        if stats["errors"]:
            notes.append(f"generator process {workerId}: error replies {stats['errors']}")
        if stats["notices"]:
            notes.append(f"generator process {workerId}: notices {stats['notices']}")
    return notes


def _deploy(owner: Owner, settings: Settings, cross: bool, viaHAProxy: bool = False,
            metrics: Optional[bool] = None
            ) -> tuple[Deployment, tuple[str, int], tuple[str, int]]:
    """
    The deployment of a chat scenario and where its senders and recipients
    connect: one node (both there), two nodes (senders on A, recipients on
    B), or HAProxy in front of two (both through it).  C{metrics}: with or
    without C{--metrics} (default C{settings.metrics}).
    """
    metered = settings.metrics if metrics is None else metrics
    if cross or viaHAProxy:
        dep = cluster(owner, root=settings.root, haproxy=viaHAProxy, metrics=metered)
        if viaHAProxy:
            return dep, dep.proxyAddress, dep.proxyAddress
        return dep, dep.address(0), dep.address(1)
    dep = singleNode(owner, root=settings.root, metrics=metered)
    return dep, dep.address(0), dep.address(0)


def _guard(result: ScenarioResult, body: Callable[[], None]) -> ScenarioResult:
    """Run a scenario body; a failure becomes the result's error, not a crash."""
    began = time.monotonic()
    try:
        body()
    except Exception as e:
        result.error = f"{type(e).__name__}: {e}"
        result.notes.append(traceback.format_exc(limit=6))
    result.seconds = round(time.monotonic() - began, 1)
    return result


# 0: the many-users pattern (the headline) ------------------------------------------


def _usersSettings(settings: Settings) -> dict[str, Any]:
    """What the report states about a many-users scenario's load."""
    return {"users": 2 * settings.usersPairs, "senders": settings.usersPairs,
            "arrivals": settings.usersArrivals,
            "framing": "classic (NUL)" if settings.usersClassic else "JSON lines, ACK per chat",
            "text bytes": 26 + settings.pad}


def _atRef(settings: Settings) -> str:
    """The prefix of the metrics taken at the reference rate."""
    return f"at {settings.usersRefRate:g}/s: "


_AT_REF = ("p50 ms", "p99 ms", "max ms", "CPU µs/msg server", "CPU µs/msg node1",
           "CPU µs/msg node2", "CPU µs/msg redis", "CPU µs/msg mariadbd",
           "CPU µs/msg generator", "CPU % generator", "generator lag p99 ms")
"""What a many-users run reports of its step at the reference rate."""


def _usersRun(lg: LoadGen, pairs: Sequence[tuple[User, User]], settings: Settings,
              dep: Deployment, result: ScenarioResult, label: str) -> dict[str, Any]:
    """
    One run of the rate steps against C{dep}: its metrics (the sustained
    rate, and the step at the reference rate), its steps as a detail table.
    """
    held, failed, steps, measured = ladder(lg, pairs, settings, dep)
    number = sum(1 for title, _ in result.details if title.startswith(label)) + 1
    result.details.append((f"{label}: steps of run {number}", steps))
    metrics: dict[str, Any] = {"sustained msgs/s": held, "first failing msgs/s": failed}
    ref = measured.get(float(settings.usersRefRate), {})
    metrics.update({_atRef(settings) + k: ref.get(k) for k in _AT_REF if k in ref})
    heldSteps = [m for rate, m in measured.items() if held is not None and rate <= held]
    metrics["lost"] = sum(m["lost"] for m in measured.values())
    metrics["error replies"] = sum(m.get("error replies") or 0 for m in measured.values())
    metrics["worst generator lag p99 ms (held steps)"] = max(
        (m["generator lag p99 ms"] for m in heldSteps
         if m.get("generator lag p99 ms") is not None), default=None)
    return metrics


def users(settings: Settings, cross: bool = False) -> ScenarioResult:
    """
    users-local (one node) or users-cross (senders on node A, recipients on
    node B): the many-users pattern stepped through C{usersRates} until a
    step fails, and the relay baseline stepped the same way with the same
    users' pattern, run by run, so the ratios come from one run.
    """
    key = "users-cross" if cross else "users-local"
    result = ScenarioResult(key, "many users" + (
        ": senders on node A, recipients on node B" if cross else ": pairs on one node") +
        ", open-loop rate steps")
    result.settings = {**_usersSettings(settings),
                       "steps msgs/s": ", ".join(f"{r:g}" for r in settings.usersRates),
                       "step s": settings.usersStepDuration, "warm-up s": settings.warmup,
                       "p99 limit ms": settings.p99LimitMs,
                       "p99 failures re-measured": settings.satConfirm}
    ref = _atRef(settings)
    result.ratioKeys = ["sustained msgs/s", ref + "p50 ms", ref + "p99 ms",
                        ref + "CPU µs/msg server"]

    def body() -> None:
        with Owner() as owner:
            dep, senderAt, recipientAt = _deploy(owner, settings, cross)
            result.deployment = dep.label
            base = relay(owner) if settings.baseline else None
            with _newLoadGen(settings) as lg:
                pairs = _pairs(lg, settings.usersPairs, senderAt, recipientAt,
                               classic=settings.usersClassic)
                basePairs = _pairs(lg, settings.usersPairs, base.address(), base.address(),
                                   classic=settings.usersClassic) if base else None
                result.baselineLabel = base.label if base else ""
                for _ in range(settings.runs):
                    result.runs.append(_usersRun(lg, pairs, settings, dep, result, "node"))
                    if base and basePairs:
                        result.baseline.append(_usersRun(lg, basePairs, settings, base,
                                                         result, "relay"))
                result.notes.extend(_notes(lg, [dep] + ([base] if base else [])))

    return _guard(result, body)


_COLD = ("p50 ms", "p99 ms", "max ms", "lost", "CPU µs/msg server", "generator lag p99 ms")
"""What the cold-start scenario reports of a step."""


def _restartAndMeasure(lg: LoadGen, pairs: Sequence[tuple[User, User]], settings: Settings,
                       dep: Deployment, node: Any, where: str) -> dict[str, Any]:
    """
    Stop C{node} and start it afresh; its users log in again; then at once
    the many-users pattern at C{usersColdRate} for C{usersColdDuration}
    seconds, every message counted (no warm-up); then the same again, the
    node now warm, for the contrast.
    """
    senders = [s for s, _ in pairs if s.address == node.address]
    recipients = [r for _, r in pairs if r.address == node.address]
    lg.disconnect(recipients + senders)
    node.stop()
    node.start()  # on the same port
    lg.connect(recipients + senders)
    lg.login(recipients)  # first, so that the first messages find them online
    lg.login(senders)
    metrics: dict[str, Any] = {}
    for phase in ("cold", "warm"):
        step = measureChat(lg, pairs, settings, dep, settings.usersColdRate,
                           settings.usersColdDuration, pattern="users", warmup=0.0)
        metrics.update({f"{where} {phase}: {k}": step.get(k) for k in _COLD})
    return metrics


def usersColdStart(settings: Settings) -> ScenarioResult:
    """
    users-coldstart: latency over the first seconds after a node starts.
    local: the one node is restarted, every user logs in again, and the
    senders start at once.  cross: node A (the senders') is restarted while
    the recipients stay on node B, so its first messages go to recipients
    it has never seen.  No relay here: it keeps its accounts in memory, so
    a fresh one would be a different set-up, not a cold one.
    """
    result = ScenarioResult("users-coldstart", "many users: the first seconds after a node starts")
    result.settings = {**_usersSettings(settings), "rate msgs/s": settings.usersColdRate,
                       "measured s": settings.usersColdDuration}
    result.ratioKeys = []

    def body() -> None:
        for cross, where in ((False, "local"), (True, "cross")):
            with Owner() as owner:
                dep, senderAt, recipientAt = _deploy(owner, settings, cross)
                result.deployment += ("; " if result.deployment else "") + f"{where}: {dep.label}"
                with _newLoadGen(settings) as lg:
                    pairs = _pairs(lg, settings.usersPairs, senderAt, recipientAt,
                                   classic=settings.usersClassic)
                    for run in range(settings.runs):
                        metrics = _restartAndMeasure(lg, pairs, settings, dep, dep.nodes[0], where)
                        if run < len(result.runs):
                            result.runs[run].update(metrics)
                        else:
                            result.runs.append(metrics)
                    result.notes.extend(_notes(lg, [dep]))

    return _guard(result, body)


# 1 and 2: chat at a fixed rate ----------------------------------------------------


def chatFixed(settings: Settings, cross: bool = False, viaHAProxy: bool = False) -> ScenarioResult:
    """
    chat-local: N pairs on one node; chat-cross: every sender on node A and
    its recipient on node B (2 nodes, Redis, MariaDB); chat-haproxy: every
    client through HAProxy to the 2 nodes (leastconn decides where).  The
    relay baseline runs interleaved, run by run, at the same rate, and each
    run's ratio is taken against the baseline run next to it.
    """
    key = "chat-haproxy" if viaHAProxy else "chat-cross" if cross else "chat-local"
    result = ScenarioResult(key, {
        "chat-local": "1. chat-local, batched (pipelined) pattern: pairs on one node, "
                      "fixed total rate",
        "chat-cross": "2. chat-cross, batched (pipelined) pattern: senders on node A, "
                      "recipients on node B",
        "chat-haproxy": "chat through HAProxy, batched (pipelined) pattern: pairs spread "
                        "over 2 nodes by leastconn",
    }[key])
    result.settings = {"pairs": settings.pairs, "rate msgs/s": settings.rate,
                       "duration s": settings.duration, "warm-up s": settings.warmup,
                       "text bytes": 26 + settings.pad}
    result.ratioKeys = ["delivered msgs/s", "p50 ms", "p99 ms"]

    def body() -> None:
        with Owner() as owner:
            dep, senderAt, recipientAt = _deploy(owner, settings, cross, viaHAProxy)
            result.deployment = dep.label
            base = relay(owner) if settings.baseline else None
            with _newLoadGen(settings) as lg:
                pairs = _pairs(lg, settings.pairs, senderAt, recipientAt, classic=False)
                basePairs = _pairs(lg, settings.pairs, base.address(), base.address(),
                                   classic=False) if base else None
                result.baselineLabel = base.label if base else ""
                for _ in range(settings.runs):
                    result.runs.append(measureChat(lg, pairs, settings, dep,
                                                   settings.rate, settings.duration))
                    if basePairs:
                        result.baseline.append(measureChat(lg, basePairs, settings, base,
                                                           settings.rate, settings.duration))
                result.notes.extend(_notes(lg, [dep] + ([base] if base else [])))

    return _guard(result, body)


class _Scraper:
    """
    Scrapes every node's /metrics every C{interval} seconds in a thread,
    as Prometheus would (more often than its usual 15 s), so that a
    measured run with metrics on pays for its scrapes too.
    """

    def __init__(self, dep: Deployment, interval: float) -> None:
        self._nodes = [n for n in dep.nodes if n.metricsPort]
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.scrapes = 0

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for node in self._nodes:
                if node.http("/metrics")[0] == 200:
                    self.scrapes += 1

    def __enter__(self) -> "_Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def metricsOverhead(settings: Settings, cross: bool = False) -> ScenarioResult:
    """
    metrics-local and metrics-cross: chat-local or chat-cross against
    nodes with C{--metrics} (scraped every C{scrapeInterval} s) and, as the
    baseline, the same deployment without it, both up at once and
    measured run by run in turn, so each run's ratio compares two runs of
    the same minute.
    """
    key = "metrics-cross" if cross else "metrics-local"
    what = "chat-cross" if cross else "chat-local"
    result = ScenarioResult(key, f"metrics overhead: {what} with --metrics (scraped) "
                                 "against without")
    result.settings = {"pairs": settings.pairs, "rate msgs/s": settings.rate,
                       "duration s": settings.duration, "warm-up s": settings.warmup,
                       "text bytes": 26 + settings.pad,
                       "scrape every s": settings.scrapeInterval}
    result.ratioKeys = ["delivered msgs/s", "p50 ms", "p99 ms", "CPU µs/msg server"]

    def body() -> None:
        with Owner() as owner:
            on, onSenders, onRecipients = _deploy(owner, settings, cross, metrics=True)
            off, offSenders, offRecipients = _deploy(owner, settings, cross, metrics=False)
            result.deployment = f"{on.label}, with --metrics"
            result.baselineLabel = f"{off.label}, without --metrics"
            with _newLoadGen(settings) as lg:
                onPairs = _pairs(lg, settings.pairs, onSenders, onRecipients)
                offPairs = _pairs(lg, settings.pairs, offSenders, offRecipients)
                for _ in range(settings.runs):
                    result.baseline.append(measureChat(lg, offPairs, settings, off,
                                                       settings.rate, settings.duration))
                    with _Scraper(on, settings.scrapeInterval) as scraper:
                        run = measureChat(lg, onPairs, settings, on, settings.rate,
                                          settings.duration)
                    run["scrapes"] = scraper.scrapes
                    result.runs.append(run)
                result.notes.extend(_notes(lg, [on, off]))

    return _guard(result, body)


# 3: saturation ------------------------------------------------------------------------


def saturation(settings: Settings, cross: bool = False) -> ScenarioResult:
    """
    3. saturation for chat-local or chat-cross: the last offered rate at
    which nothing was lost and p99 stayed within the limit; then, at half
    that rate, the latency (the issue's target: p99 < 5 ms there).  The
    relay baseline is stepped the same way, after the node's runs.
    """
    key = "saturation-cross" if cross else "saturation-local"
    result = ScenarioResult(key, f"3. saturation ({'chat-cross' if cross else 'chat-local'}), "
                                 "batched (pipelined) pattern")
    result.settings = {"pairs": settings.pairs, "first rate msgs/s": settings.satStart,
                       "step s": settings.satStepDuration, "bisections": settings.satBisect,
                       "p99 failures re-measured": settings.satConfirm,
                       "p99 limit ms": settings.p99LimitMs,
                       "half-rate step s": settings.duration}
    result.ratioKeys = ["sustained msgs/s"]

    def one(lg: LoadGen, pairs: Sequence[tuple[User, User]], dep: Deployment,
            label: str) -> dict[str, Any]:
        held, failed, steps = saturate(lg, pairs, settings, dep)
        number = sum(1 for title, _ in result.details if title.startswith(label)) + 1
        result.details.append((f"{label}: steps of run {number}", steps))
        metrics: dict[str, Any] = {"sustained msgs/s": held, "first failing msgs/s": failed}
        if held:
            half = measureChat(lg, pairs, settings, dep, held / 2, settings.duration)
            metrics.update({f"at half: {k}": v for k, v in half.items()
                            if k in ("offered msgs/s", "lost", "p50 ms", "p95 ms", "p99 ms")})
        return metrics

    def body() -> None:
        with Owner() as owner:
            dep, senderAt, recipientAt = _deploy(owner, settings, cross)
            result.deployment = dep.label
            with _newLoadGen(settings) as lg:
                pairs = _pairs(lg, settings.pairs, senderAt, recipientAt, classic=False)
                for _ in range(settings.runs):
                    result.runs.append(one(lg, pairs, dep, "node"))
                result.notes.extend(_notes(lg, [dep]))
            if settings.baseline:
                base = relay(owner)
                result.baselineLabel = base.label
                with _newLoadGen(settings) as lg:
                    pairs = _pairs(lg, settings.pairs, base.address(), base.address(), classic=False)
                    for _ in range(settings.runs):
                        result.baseline.append(one(lg, pairs, base, "relay"))
                    result.notes.extend(_notes(lg, [base]))

    return _guard(result, body)


# 4: group fan-out -------------------------------------------------------------------


def _groupRun(lg: LoadGen, sender: User, groupId: int, others: Sequence[User],
              settings: Settings) -> dict[str, Any]:
    """
    One run: C{groupMessages} messages one at a time (each completes before
    the next is sent) for the completion time, then C{groupBurst} messages
    in one write for deliveries/s.
    """
    metrics: dict[str, Any] = {}
    step, seq = lg.groupMessages(sender, groupId, others, settings.groupMessages, burst=False)
    lg.checkOffline(others, step, seq)
    completions = sorted(
        (last - sent) / 1e6 for count, last, sent in seq.groups.values() if count == len(others))
    metrics["messages complete"] = len(completions)
    metrics["completion p50 ms"] = percentile(completions, 0.5)
    metrics["completion max ms"] = completions[-1] if completions else None
    lg.broadcast("dropStep", step=step)
    step, burst = lg.groupMessages(sender, groupId, others, settings.groupBurst, burst=True)
    lg.checkOffline(others, step, burst)
    if burst.groups:
        first = min(sent for _, _, sent in burst.groups.values())
        last = max(lastArrival for _, lastArrival, _ in burst.groups.values())
        metrics["burst deliveries/s"] = round(burst.live / max(1e-9, (last - first) / 1e9))
        metrics["burst complete ms"] = round((last - first) / 1e6, 1)
    metrics["lost"] = seq.lost + burst.lost
    metrics["stored offline"] = seq.offline + burst.offline
    metrics["duplicates"] = seq.dups + burst.dups
    lg.broadcast("dropStep", step=step)
    return metrics


def fanout(settings: Settings, size: int, cross: bool = True) -> ScenarioResult:
    """
    4. group fan-out: one sender (on node A) and C{size} - 1 other online
    members, half on node A and half on node B.  Completion time is from
    the send until the last member has the message.
    """
    result = ScenarioResult(f"fanout-{size}", f"4. group fan-out, {size} members")
    result.settings = {"members (sender included)": size,
                       "sequential messages per run": settings.groupMessages,
                       "burst messages per run": settings.groupBurst}
    result.ratioKeys = ["completion p50 ms", "burst deliveries/s"]

    def setUpGroup(lg: LoadGen, dep: Deployment, twoNodes: bool) -> tuple[User, int, list[User]]:
        half = size // 2
        onA = lg.addUsers(size - half, dep.address(0), tag="g")
        onB = lg.addUsers(half, dep.address(1 if twoNodes else 0), tag="g")
        members = onA + onB
        lg.setUp(members)
        sender, others = members[0], members[1:]
        groupId = lg.createGroup(sender, f"{lg.prefix}g{size}")
        lg.joinGroup(others, groupId)
        return sender, groupId, others

    def body() -> None:
        with Owner() as owner:
            dep = cluster(owner, root=settings.root) if cross else singleNode(owner, root=settings.root)
            result.deployment = dep.label + ("" if cross else " (all members on the one node)")
            base = relay(owner) if settings.baseline else None
            workers = workersFor(size * 2, settings.workers)
            with _newLoadGen(settings, workers) as lg:
                sender, groupId, others = setUpGroup(lg, dep, cross)
                if base:
                    result.baselineLabel = base.label
                    bSender, bGroup, bOthers = setUpGroup(lg, base, False)
                for _ in range(settings.runs):
                    meter = CpuMeter(_pids(dep, lg)).start()
                    metrics = _groupRun(lg, sender, groupId, others, settings)
                    metrics.update(_cpuMetrics(meter.stop()))
                    result.runs.append(metrics)
                    if base:
                        result.baseline.append(_groupRun(lg, bSender, bGroup, bOthers, settings))
                result.notes.extend(_notes(lg, [dep] + ([base] if base else [])))

    return _guard(result, body)


# 5: login ------------------------------------------------------------------------------


def passwordCost(root: Optional[Path]) -> dict[str, Any]:
    """
    The server's default argon2id cost, read from the code the node runs,
    and how long one hash takes on this machine in a process of its own.
    """
    from tests.harness.process import ROOT

    code = ("import time, statistics\n"
            "from argon2 import PasswordHasher\n"
            "from chat.passwords import DEFAULT_TIME_COST as t, DEFAULT_MEMORY_KIB as m\n"
            "h = PasswordHasher(time_cost=t, memory_cost=m, parallelism=1)\n"
            "s = []\n"
            "for _ in range(5):\n"
            "    a = time.perf_counter(); h.hash('bench-pw'); s.append(time.perf_counter() - a)\n"
            "print(t, m, statistics.median(s) * 1000)\n")
    where = str(root or ROOT)
    out = subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=where), timeout=120)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    t, m, ms = out.stdout.split()
    return {"time cost (passes)": int(t), "memory KiB": int(m), "parallelism": 1,
            "one hash, one core, ms": round(float(ms), 1)}


def login(settings: Settings) -> ScenarioResult:
    """
    5. login at the server's default password cost: logins/s and latency
    with C{loginConcurrency} clients in a closed loop (log in, ack, log
    out, next account), and the latency of one client alone.
    """
    result = ScenarioResult("login", "5. login at the default password cost")
    cost = passwordCost(settings.root)
    result.settings = {"concurrent clients": settings.loginConcurrency,
                       "accounts": settings.loginAccounts,
                       "duration s": settings.loginDuration,
                       "alone duration s": settings.loginSerialDuration, **cost}

    def body() -> None:
        with Owner() as owner:
            dep = singleNode(owner, root=settings.root, defaultCost=True)
            result.deployment = dep.label + ", default password cost"
            with _newLoadGen(settings) as lg:
                clients = lg.addUsers(settings.loginConcurrency, dep.address(0), tag="c")
                accounts = lg.addUsers(settings.loginAccounts, dep.address(0), tag="a")
                lg.connect(clients)
                began = time.monotonic()
                lg.register(accounts, via=clients, depth=4)
                registrations = len(accounts) / (time.monotonic() - began)
                for _ in range(settings.runs):
                    metrics: dict[str, Any] = {}
                    alone, failedAlone, _ = lg.loginLoop(clients[:1], accounts,
                                                         settings.loginSerialDuration)
                    metrics.update(latencySummary(alone, "alone: "))
                    meter = CpuMeter(_pids(dep, lg)).start()
                    latencies, failed, elapsed = lg.loginLoop(clients, accounts,
                                                              settings.loginDuration)
                    cpu = meter.stop()
                    metrics["logins/s"] = round(len(latencies) / elapsed, 1)
                    metrics.update(latencySummary(latencies))
                    metrics["failed logins"] = sum(failed.values()) + sum(failedAlone.values())
                    metrics.update(_cpuMetrics(cpu))
                    metrics["registrations/s (set-up)"] = round(registrations, 1)
                    if failed or failedAlone:
                        result.notes.append(f"failed logins: {failed} {failedAlone}")
                    result.runs.append(metrics)
                result.notes.extend(_notes(lg, [dep]))

    return _guard(result, body)


# 6: connections -----------------------------------------------------------------------


def connections(settings: Settings) -> ScenarioResult:
    """
    6. N logged-in idle connections on one node: the node's RSS
    (/proc/PID/status VmRSS) before any client and with N held, the cost
    per connection, and the round-trip time of a chat between two other
    users while they are held.  Every run starts a fresh node on the same
    SQLite file (users registered once, under one node id, so the node
    clears its old sessions at start).
    """
    counts = sorted(settings.connections)
    result = ScenarioResult("connections", "6. idle logged-in connections on one node")
    result.settings = {"connections": ", ".join(map(str, counts)),
                       "round trips per measurement": settings.rttCount}
    result.ratioKeys = []
    directory = Path(tempfile.mkdtemp(prefix="chat-bench-conn-"))
    db = f"sqlite:{directory}/chat.sqlite3"

    def body() -> None:
        top = counts[-1]
        workers = workersFor(top + 2, settings.workers)
        with _newLoadGen(settings, workers) as lg:
            with Owner() as owner:
                dep = singleNode(owner, root=settings.root, db=db, nodeId="bench-connections")
                result.deployment = dep.label
                users = lg.addUsers(top, dep.address(0), tag="i")
                a, b = lg.addUsers(2, dep.address(0), tag="p")
                b.worker = (a.worker + 1) % lg.workerCount
                registrars = lg.addUsers(20 * lg.workerCount, dep.address(0), tag="reg")
                lg.connect(registrars)
                began = time.monotonic()
                lg.register(users + [a, b], via=registrars, depth=16)
                result.settings["registration s (set-up)"] = round(time.monotonic() - began, 1)
                lg.disconnect(registrars)
            for _ in range(settings.runs):
                with Owner() as owner:
                    dep = singleNode(owner, root=settings.root, db=db, nodeId="bench-connections")
                    for user in users + [a, b]:
                        user.address = dep.address(0)
                    pid = dep.nodes[0].pid
                    assert pid is not None
                    lg.connect([a, b])
                    lg.login([a, b])
                    time.sleep(1.0)
                    before = readRSS(pid)
                    rtt, lost = lg.roundTrips(a, b, settings.rttCount)
                    metrics: dict[str, Any] = {"RSS before MiB": round(before / 1024, 1)}
                    metrics.update({f"0 held: RTT {k}": v for k, v in
                                    latencySummary(rtt).items() if "p95" not in k})
                    held = 0
                    for count in counts:
                        batch = users[held:count]
                        began = time.monotonic()
                        lg.connect(batch, concurrency=500)
                        lg.login(batch, concurrency=200)
                        rate = len(batch) / (time.monotonic() - began)
                        held = count
                        time.sleep(1.0)
                        rss = readRSS(pid)
                        rtt, lost = lg.roundTrips(a, b, settings.rttCount)
                        metrics[f"{count} held: RSS MiB"] = round(rss / 1024, 1)
                        metrics[f"{count} held: KiB per connection"] = round((rss - before) / count, 2)
                        metrics.update({f"{count} held: RTT {k}": v for k, v in
                                        latencySummary(rtt).items() if "p95" not in k})
                        metrics[f"{count} held: connect+login /s"] = round(rate, 1)
                        if lost:
                            result.notes.append(f"{lost} round trips timed out with {count} held")
                    result.runs.append(metrics)
                    lg.disconnect(users[:held] + [a, b])
                    result.notes.extend(f"{dep.label}: {p}" for p in dep.problems())
            result.notes.extend(n for n in _notes(lg, []) if n not in result.notes)

    try:
        return _guard(result, body)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
