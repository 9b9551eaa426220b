"""
Run the benchmark scenarios against deployments this command starts itself,
and write a Markdown report (plus the raw numbers as JSON).

    python -m bench.run --out docs/BENCHMARKS.md              # everything
    python -m bench.run --quick --out /tmp/smoke.md           # seconds
    python -m bench.run --scenarios chat-local,saturation-local --runs 5
    python -m bench.run --commit HEAD --out docs/BENCHMARKS.md
    python -m bench.run --scenarios users-local --plot /tmp/plots
    python -m bench.run --scenarios metrics-local,metrics-cross   # --metrics on vs off

The many-users scenarios (users-*) run first and lead the report; the
batched (pipelined) ones follow.

With C{--commit}, the nodes run a frozen copy of that commit (git archive),
so work going on in the checkout meanwhile cannot leak into the numbers;
without it they run the checkout as it is (the report says whether chat/
had uncommitted changes).

Exit status 0 when every scenario ran and lost nothing, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tests.harness.process import ROOT

from .deploy import BenchNode
from .report import _git, drawPlots, machineInfo, patternOf, renderMarkdown, writeJSON
from .instructions import usersInstructions
from .loginstorm import loginStorm
from .overload import classicReceive, slowReaders
from .scenarios import (
    ScenarioResult, Settings, chatFixed, connections, fanout, login, metricsOverhead,
    saturation, users, usersColdStart,
)

ALL = ["users-local", "users-cross", "users-coldstart", "users-instructions",
       "chat-local", "chat-cross", "saturation-local", "saturation-cross", "fanout",
       "login", "login-storm", "connections", "slow-readers", "classic-receive",
       "metrics-local", "metrics-cross"]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="bench-report.md", help="the Markdown report")
    p.add_argument("--json", default=None, help="raw numbers (default: --out with .json)")
    p.add_argument("--scenarios", default=",".join(ALL),
                   help=f"comma-separated, from {','.join(ALL + ['chat-haproxy'])}")
    p.add_argument("--quick", action="store_true",
                   help="a seconds-long smoke run: tiny sizes, one run")
    p.add_argument("--commit", default=None,
                   help="run the nodes on a frozen copy of this commit (e.g. HEAD)")
    p.add_argument("--server-root", default=None, type=Path,
                   help="run the nodes from this directory instead")
    p.add_argument("--reactor", default=None,
                   help="twistd --reactor for the nodes (e.g. uvloop; default twistd's)")
    p.add_argument("--title", default="Benchmarks")
    p.add_argument("--preamble", default="", help="Markdown placed under the title")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--no-baseline", action="store_true", help="skip the relay baseline")
    p.add_argument("--haproxy", action="store_true",
                   help="also run chat through HAProxy in front of 2 nodes")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--rate", type=float, default=2000, help="chat-local/cross msgs/s")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per chat run")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--pad", type=int, default=32, help="extra bytes per chat text")
    p.add_argument("--sat-start", type=float, default=1000)
    p.add_argument("--sat-max", type=float, default=200000)
    p.add_argument("--sat-step", type=float, default=3.0, help="seconds per step")
    p.add_argument("--sat-bisect", type=int, default=3)
    p.add_argument("--sat-confirm", type=int, default=1,
                   help="times a step that failed on p99 alone is measured again")
    p.add_argument("--p99-limit", type=float, default=50.0, help="ms")
    p.add_argument("--group-sizes", type=_ints, default=(100, 1000))
    p.add_argument("--group-messages", type=int, default=10)
    p.add_argument("--group-burst", type=int, default=10)
    p.add_argument("--fanout-on", choices=["cluster", "single"], default="cluster")
    p.add_argument("--login-concurrency", type=int, default=32)
    p.add_argument("--login-accounts", type=int, default=64)
    p.add_argument("--login-duration", type=float, default=15.0)
    p.add_argument("--connections", type=_ints, default=(5000, 10000, 19000))
    p.add_argument("--rtt-count", type=int, default=200)
    p.add_argument("--ports-per-address", type=int, default=25000,
                   help="connections per source address before the next 127.0.0.N")
    users = p.add_argument_group("the many-users pattern (users-*)")
    users.add_argument("--users-pairs", type=int, default=500,
                       help="senders (each with its own recipient)")
    users.add_argument("--users-rates", type=_floats,
                       default=(1000, 2500, 5000, 7500, 10000, 15000, 20000, 30000, 40000),
                       help="open-loop total rates stepped through until one fails")
    users.add_argument("--users-step", type=float, default=4.0, help="seconds per step")
    users.add_argument("--users-ref-rate", type=float, default=5000,
                       help="the step whose latency and CPU per message lead the report")
    users.add_argument("--users-arrivals", choices=["poisson", "even"], default="poisson",
                       help="each sender's schedule: Poisson, or evenly spaced, random phase")
    users.add_argument("--users-classic", action="store_true",
                       help="classic NUL framing (no ACKs) instead of JSON lines")
    users.add_argument("--users-cold-rate", type=float, default=1000,
                       help="users-coldstart: msgs/s right after the node starts")
    users.add_argument("--users-cold-duration", type=float, default=5.0,
                       help="users-coldstart: seconds measured from the first message")
    p.add_argument("--metrics", action="store_true",
                   help="run every node with --metrics (metrics-local and "
                   "metrics-cross compare with and without in any case)")
    p.add_argument("--scrape-interval", type=float, default=1.0,
                   help="metrics-*: seconds between two scrapes of /metrics")
    slow = p.add_argument_group("readers that cannot keep up (slow-readers, classic-receive)")
    slow.add_argument("--slow-readers", type=int, default=100,
                      help="slow-readers: recipients that never read (4 KiB receive buffer)")
    slow.add_argument("--slow-senders", type=int, default=10,
                      help="slow-readers: senders flooding every one of them")
    slow.add_argument("--slow-per-reader", type=int, default=70,
                      help="slow-readers: messages of 3,000 chars each sender sends each reader")
    slow.add_argument("--classic-messages", type=int, default=2000,
                      help="classic-receive: messages sent to the one classic reader")
    instr = p.add_argument_group("instructions per message under callgrind (users-instructions)")
    instr.add_argument("--instr-pairs", type=int, default=100)
    instr.add_argument("--instr-rate", type=float, default=100.0,
                       help="msgs/s (callgrind runs a process ~50x slower)")
    instr.add_argument("--instr-duration", type=float, default=10.0, help="seconds per window")
    storm = p.add_argument_group("everybody logging in at once (login-storm)")
    storm.add_argument("--storm-users", type=int, default=1000,
                       help="users, and attackers in part 2 (issue 9: 5000, "
                       "8-14 min a part on 2 cores)")
    storm.add_argument("--storm-backoff", type=float, default=0.5,
                       help="seconds a client waits after an answer before it tries again")
    storm.add_argument("--storm-jitter", type=float, default=0.5,
                       help="up to this many seconds more, at random")
    storm.add_argument("--storm-deadline", type=float, default=3600.0,
                       help="seconds after which a part gives up on the users not in")
    p.add_argument("--plot", type=Path, default=None, metavar="DIR",
                   help="also write PNG charts (matplotlib) into DIR")
    return p


def settingsFrom(options: argparse.Namespace, root: Optional[Path]) -> Settings:
    s = Settings(
        root=root, workers=options.workers, runs=options.runs,
        baseline=not options.no_baseline, pairs=options.pairs, rate=options.rate,
        duration=options.duration, warmup=options.warmup, pad=options.pad,
        satStart=options.sat_start, satMax=options.sat_max,
        satStepDuration=options.sat_step, satBisect=options.sat_bisect,
        satConfirm=options.sat_confirm,
        p99LimitMs=options.p99_limit, groupSizes=options.group_sizes,
        groupMessages=options.group_messages, groupBurst=options.group_burst,
        loginConcurrency=options.login_concurrency,
        loginAccounts=options.login_accounts, loginDuration=options.login_duration,
        connections=options.connections, rttCount=options.rtt_count,
        portsPerAddress=options.ports_per_address, haproxy=options.haproxy,
        usersPairs=options.users_pairs, usersRates=options.users_rates,
        usersStepDuration=options.users_step, usersRefRate=options.users_ref_rate,
        usersArrivals=options.users_arrivals, usersClassic=options.users_classic,
        usersColdRate=options.users_cold_rate,
        usersColdDuration=options.users_cold_duration,
        slowReaders=options.slow_readers, slowSenders=options.slow_senders,
        slowPerReader=options.slow_per_reader, classicMessages=options.classic_messages,
        instrPairs=options.instr_pairs, instrRate=options.instr_rate,
        instrDuration=options.instr_duration, metrics=options.metrics,
        scrapeInterval=options.scrape_interval, stormUsers=options.storm_users,
        stormBackoff=options.storm_backoff, stormJitter=options.storm_jitter,
        stormDeadline=options.storm_deadline)
    if options.quick:
        defaults = parser().parse_args([])

        def small(name: str, value: Any) -> None:
            # --quick shrinks only what was not given explicitly
            if getattr(options, name) == getattr(defaults, name):
                setattr(s, {"sat_start": "satStart", "sat_max": "satMax",
                            "sat_step": "satStepDuration", "sat_bisect": "satBisect",
                            "sat_confirm": "satConfirm",
                            "group_sizes": "groupSizes", "group_messages": "groupMessages",
                            "group_burst": "groupBurst",
                            "login_concurrency": "loginConcurrency",
                            "login_accounts": "loginAccounts",
                            "login_duration": "loginDuration",
                            "rtt_count": "rttCount", "users_pairs": "usersPairs",
                            "users_rates": "usersRates", "users_step": "usersStepDuration",
                            "users_ref_rate": "usersRefRate",
                            "users_cold_rate": "usersColdRate",
                            "users_cold_duration": "usersColdDuration",
                            "slow_readers": "slowReaders", "slow_senders": "slowSenders",
                            "slow_per_reader": "slowPerReader",
                            "classic_messages": "classicMessages",
                            "instr_pairs": "instrPairs", "instr_rate": "instrRate",
                            "instr_duration": "instrDuration",
                            "storm_users": "stormUsers"}.get(name, name), value)

        for name, value in [("runs", 1), ("pairs", 5), ("rate", 200), ("duration", 1.0),
                            ("warmup", 0.2), ("sat_start", 200), ("sat_max", 400),
                            ("sat_step", 0.5), ("sat_bisect", 0), ("sat_confirm", 0),
                            ("group_sizes", (10,)),
                            ("group_messages", 3), ("group_burst", 3),
                            ("login_concurrency", 2), ("login_accounts", 4),
                            ("login_duration", 1.0), ("connections", (20, 40)),
                            ("rtt_count", 10), ("users_pairs", 10),
                            ("users_rates", (100.0, 200.0)), ("users_step", 1.0),
                            ("users_ref_rate", 200.0), ("users_cold_rate", 100.0),
                            ("users_cold_duration", 1.0), ("slow_readers", 3),
                            ("slow_senders", 2), ("slow_per_reader", 200),
                            ("classic_messages", 100), ("instr_pairs", 5),
                            ("instr_rate", 20.0), ("instr_duration", 1.0),
                            ("storm_users", 20)]:
            small(name, value)
        s.loginSerialDuration = 0.5
        s.drainTimeout = 5.0
    return s


def frozenCopy(commit: str) -> tuple[Path, str]:
    """Extract C{commit} into a temporary directory; returns it and the full hash."""
    full = _git(ROOT, "rev-parse", commit)
    if not full:
        raise SystemExit(f"bench: unknown commit {commit!r}")
    directory = Path(tempfile.mkdtemp(prefix=f"chat-bench-{full[:10]}-"))
    archive = subprocess.run(["git", "archive", full], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
    return directory, full


def scenarioPlan(names: Sequence[str], settings: Settings, fanoutOn: str
                 ) -> list[tuple[str, Callable[[], ScenarioResult]]]:
    plan: list[tuple[str, Callable[[], ScenarioResult]]] = []
    for name in names:
        if name == "users-local":
            plan.append((name, lambda: users(settings)))
        elif name == "users-cross":
            plan.append((name, lambda: users(settings, cross=True)))
        elif name == "users-coldstart":
            plan.append((name, lambda: usersColdStart(settings)))
        elif name == "users-instructions":
            plan.append((name, lambda: usersInstructions(settings)))
        elif name == "chat-local":
            plan.append((name, lambda: chatFixed(settings)))
        elif name == "chat-cross":
            plan.append((name, lambda: chatFixed(settings, cross=True)))
        elif name == "chat-haproxy":
            plan.append((name, lambda: chatFixed(settings, viaHAProxy=True)))
        elif name == "saturation-local":
            plan.append((name, lambda: saturation(settings)))
        elif name == "saturation-cross":
            plan.append((name, lambda: saturation(settings, cross=True)))
        elif name == "fanout":
            for size in settings.groupSizes:
                plan.append((f"fanout-{size}",
                             lambda size=size: fanout(settings, size, cross=fanoutOn == "cluster")))
        elif name == "login":
            plan.append((name, lambda: login(settings)))
        elif name == "login-storm":
            plan.append((name, lambda: loginStorm(settings)))
        elif name == "connections":
            plan.append((name, lambda: connections(settings)))
        elif name == "slow-readers":
            plan.append((name, lambda: slowReaders(settings)))
        elif name == "classic-receive":
            plan.append((name, lambda: classicReceive(settings)))
        elif name == "metrics-local":
            plan.append((name, lambda: metricsOverhead(settings)))
        elif name == "metrics-cross":
            plan.append((name, lambda: metricsOverhead(settings, cross=True)))
        else:
            raise SystemExit(f"bench: unknown scenario {name!r}; choose from {ALL}")
    return plan


def lostIn(result: ScenarioResult) -> int:
    """Messages lost in any run: every "lost" metric, "at half: lost" and the like included."""
    return sum(int(value or 0) for run in result.runs + result.baseline
               for key, value in run.items() if key == "lost" or key.endswith(": lost"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parser().parse_args(argv)
    names = [n.strip() for n in options.scenarios.split(",") if n.strip()]
    if options.haproxy and "chat-haproxy" not in names:
        names.append("chat-haproxy")
    # the many-users scenarios lead the report, so they run first
    names.sort(key=lambda name: patternOf(name) != "users")
    frozen: Optional[Path] = None
    if options.commit:
        frozen, commit = frozenCopy(options.commit)
        root: Optional[Path] = frozen
        code = {"server code": f"commit {commit} (frozen copy)"}
    else:
        root = options.server_root
        where = root or ROOT
        commit = _git(where, "rev-parse", "HEAD") or "?"
        dirty = _git(where, "status", "--porcelain", "--", "chat", "twisted", "schema")
        code = {"server code": f"{where} at commit {commit}" +
                (" with uncommitted changes in chat/" if dirty else "")}
    if options.reactor:
        BenchNode.reactor = options.reactor
        code["reactor"] = options.reactor
    settings = settingsFrom(options, root)
    out = Path(options.out)
    jsonPath = Path(options.json) if options.json else out.with_suffix(".json")
    machine = machineInfo(settings, code)
    results: list[ScenarioResult] = []
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    began = time.monotonic()
    try:
        for name, run in scenarioPlan(names, settings, options.fanout_on):
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            result = run()
            results.append(result)
            state = f"failed: {result.error}" if result.error else "done"
            print(f"bench: {name} {state} in {result.seconds:g} s", file=sys.stderr, flush=True)
            # write as we go: a long run that dies still leaves a report
            out.write_text(renderMarkdown(results, settings, machine, options.title,
                                          options.preamble, command))
            writeJSON(jsonPath, results, settings, machine, command)
    finally:
        if frozen is not None:
            shutil.rmtree(frozen, ignore_errors=True)
    if options.plot is not None:
        plots = drawPlots(results, options.plot, out)
        out.write_text(renderMarkdown(results, settings, machine, options.title,
                                      options.preamble, command, plots))
        print(f"bench: {len(plots)} charts in {options.plot}", file=sys.stderr)
    print(f"bench: report in {out} ({time.monotonic() - began:.0f} s)", file=sys.stderr)
    failed = [r.key for r in results if r.error]
    lost = {r.key: lostIn(r) for r in results if lostIn(r)}
    if failed or lost:
        print(f"bench: failed {failed}, lost {lost}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
