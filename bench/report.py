"""
The Markdown report (and its JSON twin): the machine, the versions, the
settings, and for each scenario every metric as the median of the runs with
the smallest and largest, plus ratios against the baseline measured in the
same run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

from .scenarios import ScenarioResult, Settings
from .stats import Summary, summarise


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machineInfo(settings: Settings, serverCode: dict[str, str]) -> dict[str, Any]:
    """What a reader needs to compare this report with another."""
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "CPU": model,
        "memory": memory,
        "kernel": platform.release(),
        "open files (ulimit -n)": "/".join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE))),
        "ephemeral ports": Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else "?",
        "Python": platform.python_version(),
        "Twisted": _version("twisted"),
        "orjson": _version("orjson"),
        "uvloop (generator)": _version("uvloop"),
        "redis-server": _command(["redis-server", "--version"]),
        "MariaDB": _command(["mariadbd", "--version"], sbin=True),
        "HAProxy": _command(["haproxy", "-v"], sbin=True).splitlines()[0] if settings.haproxy else "not used",
        **serverCode,
    }


def _command(argv: list[str], sbin: bool = False) -> str:
    env = dict(os.environ)
    if sbin:
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin:/usr/local/sbin"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=env)
        return (out.stdout or out.stderr).strip()[:120]
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value == int(value) and abs(value) >= 100:
            return f"{int(value):,}"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cell(summary: Summary) -> str:
    if summary.count == 0:
        return "–"
    if summary.count == 1 or summary.low == summary.high:
        return _fmt(summary.median)
    return f"{_fmt(summary.median)} ({_fmt(summary.low)} – {_fmt(summary.high)})"


def _ratios(result: ScenarioResult) -> dict[str, Summary]:
    """
    Per ratio metric: node / baseline, run by run when the runs were
    interleaved (same count), else median over median.
    """
    out: dict[str, Summary] = {}
    for key in result.ratioKeys:
        pairs = [(r.get(key), b.get(key)) for r, b in zip(result.runs, result.baseline)]
        values = [a / b for a, b in pairs if isinstance(a, (int, float)) and
                  isinstance(b, (int, float)) and b]
        if values:
            out[key] = Summary.of(values)
    return out


def _table(rows: Sequence[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    return lines


PARTS = {
    "users": ("Many users pattern (headline)",
              "Each sender has its own open-loop schedule (Poisson by default) at "
              "rate / senders and writes every message in a write of its own "
              "(TCP_NODELAY: one message per segment), at its scheduled time whatever "
              "the server does; latency counts from that scheduled time, so a server "
              "that falls behind shows its queueing (no coordinated omission). This is "
              "how a population of people loads a server: one read and one write per "
              "message. *CPU µs/msg* is the CPU time of the process(es) over the step "
              "divided by the messages delivered; *generator lag* is how late the "
              "generator wrote messages against their schedule (it is part of the "
              "latency: when it grows, the generator, not the server, is the limit). "
              "*sustained* is the highest step with p99 within the limit and nothing lost."),
    "batched": ("Batched (pipelined) pattern",
                "Every 2 ms a generator process writes each connection's due messages in "
                "one write, so the server reads many messages at once and pays its per-read "
                "and per-write costs rarely: a pipelining client, not a population of users. "
                "Its rates are far above what the many users pattern reaches."),
    "other": ("Other scenarios", ""),
}
"""The report's parts, in order: title and what a reader must know first."""


def patternOf(key: str) -> str:
    """Which part of the report a scenario belongs to (L{PARTS})."""
    if key.startswith("users-"):
        return "users"
    if key.startswith(("chat-", "saturation-")):
        return "batched"
    return "other"


def byPart(results: Sequence[ScenarioResult]) -> list[ScenarioResult]:
    """The results in the order of the report's parts, run order within each."""
    return sorted(results, key=lambda r: list(PARTS).index(patternOf(r.key)))


def renderMarkdown(results: Sequence[ScenarioResult], settings: Settings,
                   machine: dict[str, Any], title: str, preamble: str = "",
                   command: str = "", plots: Sequence[tuple[str, str]] = ()) -> str:
    """
    The report.  C{plots}: (caption, path relative to the report) of
    charts to show under the summary.
    """
    out = [f"# {title}", ""]
    if preamble:
        out += [preamble.strip(), ""]
    out += ["## Machine and versions", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine.items()]
    out += ["", f"Command: `{command}`" if command else "", ""]
    out += ["Every number is the median of the runs, with the smallest and largest "
            "in brackets. Latencies are from the send time written inside the message "
            "to its arrival at the recipient; \"lost\" counts messages neither delivered "
            "live nor found in the offline store when the recipient logged in again. "
            "CPU % is per process, 100 = one core busy. See bench/README.md for what "
            "each number means.", ""]
    results = byPart(results)
    out += ["## Summary", ""] + _summaryTable(results) + [""]
    if plots:
        out += ["## Charts", ""] + [f"![{caption}]({path})" for caption, path in plots] + [""]
    part = None
    for result in results:
        if patternOf(result.key) != part:
            part = patternOf(result.key)
            heading, text = PARTS[part]
            out += [f"## {heading}", ""] + ([text, ""] if text else [])
        out += [f"### {result.title}", ""]
        out.append(f"Deployment: {result.deployment or '?'}; {len(result.runs)} runs; "
                   f"took {result.seconds:g} s.  Settings: " +
                   ", ".join(f"{k} {v}" for k, v in result.settings.items()) + ".")
        out.append("")
        if result.error:
            out += [f"**The scenario failed:** `{result.error}`", ""]
        summary = summarise(result.runs)
        base = summarise(result.baseline) if result.baseline else {}
        ratios = _ratios(result)
        header = "| metric | this server |"
        rule = "|---|---|"
        if base:
            header += f" baseline: {result.baselineLabel} | ratio (server / baseline) |"
            rule += "---|---|"
        if summary:
            out += [header, rule]
            for key, value in summary.items():
                row = f"| {key} | {_cell(value)} |"
                if base:
                    row += f" {_cell(base[key]) if key in base else ''} |"
                    row += f" {_cell(ratios[key]) if key in ratios else ''} |"
                out.append(row)
            out.append("")
        for title, rows in result.details:
            out += [f"<details><summary>{title}</summary>", ""] + _table(rows) + ["", "</details>", ""]
        if result.notes:
            out += ["Notes:", ""] + [f"- {_oneLine(n)}" for n in result.notes] + [""]
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"


def _oneLine(text: str) -> str:
    text = text.strip()
    if "\n" in text:
        return "\n\n  ```\n" + "\n".join("  " + l for l in text.splitlines()) + "\n  ```"
    return text.replace("|", "\\|")


_HEADLINES = {
    "chat-local": ["delivered msgs/s", "p50 ms", "p99 ms", "lost"],
    "chat-cross": ["delivered msgs/s", "p50 ms", "p99 ms", "lost"],
    "chat-haproxy": ["delivered msgs/s", "p50 ms", "p99 ms", "lost"],
    "saturation-local": ["sustained msgs/s", "at half: p99 ms"],
    "saturation-cross": ["sustained msgs/s", "at half: p99 ms"],
    "login": ["logins/s", "p50 ms", "p99 ms", "alone: p50 ms"],
    "login-storm": ["part 1: all in s", "part 1: answer max ms", "part 1: users never in",
                    "part 2: all in s", "part 2: answer max ms", "part 2: users never in",
                    "part 2 / part 1: all in", "part 2 / part 1: CPU node1",
                    "part 2: attacks errno 106"],
    "users-instructions": ["instructions per msg (thousands)", "lost"],
}

_USERS_AT_REF = ("p50 ms", "p99 ms", "CPU µs/msg server", "CPU µs/msg redis")
"""Headlines of a many-users scenario, of its step at the reference rate."""


def headlineKeys(key: str, metrics: Sequence[str]) -> list[str]:
    """
    The numbers of scenario C{key} that the summary (and bench.compare)
    show, out of the C{metrics} its runs have.  Why some are found by
    pattern: their names carry a size or rate that the settings choose.
    """
    if key in _HEADLINES:
        return _HEADLINES[key]
    if key.startswith("fanout"):
        return ["completion p50 ms", "completion max ms", "burst deliveries/s", "lost"]
    if key == "connections":
        return [m for m in metrics if "RSS MiB" in m or "KiB per connection" in m
                or "RTT p99" in m]
    if key == "users-coldstart":
        return [m for m in metrics if m.endswith(("cold: p99 ms", "warm: p99 ms", ": lost"))]
    if key.startswith("users-"):
        return ["sustained msgs/s"] + [m for m in metrics if m.startswith("at ") and
                                       m.endswith(_USERS_AT_REF)] + ["lost"]
    return list(metrics)


def _summaryTable(results: Sequence[ScenarioResult]) -> list[str]:
    """The headline numbers of every scenario on one screen."""
    lines = ["| scenario | number | median (min – max) | vs baseline |", "|---|---|---|---|"]
    for result in results:
        summary = summarise(result.runs)
        ratios = _ratios(result)
        keys = headlineKeys(result.key, list(summary))
        if result.error:
            lines.append(f"| {result.key} | failed | {_oneLine(result.error)[:200]} | |")
        for key in keys:
            if key in summary:
                ratio = _cell(ratios[key]) if key in ratios else ""
                lines.append(f"| {result.key} | {key} | {_cell(summary[key])} | {ratio} |")
    return lines


def writeJSON(path: Path, results: Sequence[ScenarioResult], settings: Settings,
              machine: dict[str, Any], command: str = "") -> None:
    path.write_text(json.dumps({"machine": machine, "settings": settings.public(),
                                "command": command,
                                "results": [asdict(r) for r in results]}, indent=1, default=str))


def loadJSON(path: Path) -> tuple[list[ScenarioResult], dict[str, Any], dict[str, Any]]:
    """A report's JSON twin back into results, settings and machine."""
    data = json.loads(path.read_text())
    results = []
    for raw in data["results"]:
        raw["details"] = [tuple(d) for d in raw.get("details", [])]
        results.append(ScenarioResult(**raw))
    return results, data["settings"], data["machine"]


def drawPlots(results: Sequence[ScenarioResult], directory: Path,
              report: Optional[Path]) -> list[tuple[str, str]]:
    """
    Write the charts (L{bench.plots}) into C{directory}; returns their
    captions and paths relative to the C{report} that will show them.
    """
    from .plots import render

    base = report.parent if report is not None else Path.cwd()
    return [(caption, os.path.relpath(path, base)) for caption, path in
            render(results, directory)]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    Render a report again from its JSON, e.g. with a new preamble, and/or
    draw its charts, without running anything: C{python -m bench.report
    RUN.json [--out REPORT.md] [--plot DIR] [--title T] [--preamble-file
    P.md] [--command C]}.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("json", type=Path)
    parser.add_argument("--out", type=Path, help="the Markdown report to write")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG charts into DIR")
    parser.add_argument("--title", default="Benchmarks")
    parser.add_argument("--preamble-file", type=Path)
    parser.add_argument("--command", default="")
    options = parser.parse_args(argv)
    if options.out is None and options.plot is None:
        parser.error("give --out, --plot or both")
    results, settings, machine = loadJSON(options.json)
    plots = drawPlots(results, options.plot, options.out) if options.plot else []
    for caption, path in plots:
        print(f"bench.report: {options.plot / Path(path).name}: {caption}")
    if options.out is None:
        return
    preamble = options.preamble_file.read_text() if options.preamble_file else ""
    command = options.command or json.loads(options.json.read_text()).get("command", "")
    options.out.write_text(renderMarkdown(results, Settings(), machine, options.title,
                                          preamble, command, plots))


if __name__ == "__main__":
    main()
