"""
PNG charts of a benchmark run, drawn with matplotlib's Agg backend (no
display needed), from the same L{ScenarioResult}s the Markdown report is
rendered from, so they can be drawn again from a run's JSON:

    python -m bench.run --plot DIR ...            # while running
    python -m bench.report RUN.json --plot DIR    # later, from the JSON

Every point is the median over the runs (and, for rate steps, over the
measurements of that rate), with a band from the smallest to the largest,
as the report gives them.  matplotlib is imported only when a chart is
drawn: the benchmark itself does not need it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from .scenarios import ScenarioResult
from .stats import Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Series = tuple[list[float], list[Summary]]
"""x values and, for each, the summary of the y values measured there."""

_LABELS = {"node": "this server", "relay": "bare relay"}
"""The detail tables' labels (L{bench.scenarios}), as the legends say them."""


def _series(points: Sequence[tuple[float, Any]]) -> Series:
    """The L{Summary} of the numbers among the values at each x, in x order."""
    byX: dict[float, list[float]] = {}
    for x, value in points:
        if isinstance(value, (int, float)):
            byX.setdefault(float(x), []).append(value)
    xs = sorted(byX)
    return xs, [Summary.of(byX[x]) for x in xs]


def stepSeries(result: ScenarioResult, label: str, metric: str) -> Series:
    """
    C{metric} against the offered rate, from the rows of the detail tables
    titled C{label: steps of run N} (the rate steps of every run).
    """
    return _series([(row["offered msgs/s"], row.get(metric))
                    for title, rows in result.details if title.startswith(f"{label}: steps")
                    for row in rows])


def runSeries(points: Sequence[tuple[float, Sequence[dict[str, Any]], str]]) -> Series:
    """
    One metric against some size: for each C{(x, runs, metric)}, the
    summary of C{metric} over C{runs}; points without a value are left out.
    """
    return _series([(x, run.get(metric)) for x, runs, metric in points for run in runs])


def _draw(axes: "Axes", series: Series, label: str, style: str = "-") -> bool:
    """The medians as a line, min to max as a band; False if there is nothing."""
    points = [(x, y.median, y.low, y.high) for x, y in zip(*series)
              if y.median is not None and y.low is not None and y.high is not None]
    if not points:
        return False
    xs, medians, lows, highs = (list(column) for column in zip(*points))
    line, = axes.plot(xs, medians, style, marker="o", markersize=3, label=label)
    axes.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
    return True


def _limit(axes: "Axes", result: ScenarioResult) -> None:
    """The p99 limit a step must stay under, when the scenario states it."""
    limit = result.settings.get("p99 limit ms")
    if isinstance(limit, (int, float)):
        axes.axhline(limit, color="grey", linestyle=":", linewidth=1,
                     label=f"p99 limit {limit:g} ms")


def _rateAxes(axes: "Axes", result: ScenarioResult, metrics: Sequence[str],
              ylabel: str) -> bool:
    """One scenario's rate steps: C{metrics} of the server and of the relay."""
    drawn = False
    for label, style in (("node", "-"), ("relay", "--")):
        for metric in metrics:
            name = _LABELS[label] if len(metrics) == 1 else \
                f"{_LABELS[label]} {metric.replace(' ms', '')}"
            drawn |= _draw(axes, stepSeries(result, label, metric), name, style)
    if not drawn:
        return False
    if metrics[-1].endswith("ms"):
        _limit(axes, result)
    axes.set_title(result.key)
    axes.set_xlabel("offered msgs/s")
    axes.set_ylabel(ylabel)
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="x-small")
    return True


def _figure(path: Path, title: str, panels: Sequence[Callable[["Axes"], bool]]
            ) -> Optional[Path]:
    """
    A figure of side-by-side panels, each drawn by a function that says
    whether it had data; written to C{path} only if one had.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5),
                                   squeeze=False)
    drawn = [panel(ax) for panel, ax in zip(panels, axes[0])]
    for ax, ok in zip(axes[0], drawn):
        if not ok:
            ax.set_visible(False)
    if any(drawn):
        figure.suptitle(title)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)
    return path if any(drawn) else None


def _byKey(results: Sequence[ScenarioResult]) -> dict[str, ScenarioResult]:
    return {r.key: r for r in results}


def _ratePanels(results: Sequence[ScenarioResult], keys: Sequence[str], metrics: Sequence[str],
                ylabel: str) -> list[Callable[["Axes"], bool]]:
    """One panel per scenario of C{keys} that the results have."""
    found = _byKey(results)
    return [partial(_rateAxes, result=found[k], metrics=metrics, ylabel=ylabel)
            for k in keys if k in found]


def _fanoutAxes(axes: "Axes", results: Sequence[ScenarioResult]) -> bool:
    """Completion time of a group message (p50 and max) against the group size."""
    groups = sorted((int(r.key.split("-", 1)[1]), r) for r in results
                    if r.key.startswith("fanout-") and r.key.split("-", 1)[1].isdigit())
    drawn = False
    for which, style in (("runs", "-"), ("baseline", "--")):
        name = "this server" if which == "runs" else "bare relay"
        for metric in ("completion p50 ms", "completion max ms"):
            drawn |= _draw(axes, runSeries([(size, getattr(r, which), metric)
                                            for size, r in groups]),
                           f"{name} {metric.replace('completion ', '').replace(' ms', '')}",
                           style)
    if drawn:
        axes.set_xlabel("group members")
        axes.set_ylabel("ms until the last member has it")
        axes.set_xscale("log")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="x-small")
    return drawn


def _rssAxes(axes: "Axes", results: Sequence[ScenarioResult]) -> bool:
    """The node's RSS against the idle logged-in connections it holds."""
    result = _byKey(results).get("connections")
    if result is None:
        return False
    counts = sorted({int(k.split(" ", 1)[0]) for run in result.runs for k in run
                     if k.endswith(" held: RSS MiB")})
    points = [(0.0, result.runs, "RSS before MiB")] + [
        (float(n), result.runs, f"{n} held: RSS MiB") for n in counts]
    if not _draw(axes, runSeries(points), "node RSS"):
        return False
    axes.set_xlabel("idle logged-in connections")
    axes.set_ylabel("RSS MiB")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="x-small")
    return True


def render(results: Sequence[ScenarioResult], directory: Path) -> list[tuple[str, Path]]:
    """
    Write every chart the results have data for into C{directory};
    returns (caption, path) of each written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    latency = ("p50 ms", "p99 ms")
    charts: list[tuple[str, str, list[Callable[["Axes"], bool]]]] = [
        ("users-latency.png", "Many users pattern: latency against offered rate",
         _ratePanels(results, ("users-local", "users-cross"), latency, "latency ms")),
        ("users-cpu.png", "Many users pattern: server CPU per delivered message",
         _ratePanels(results, ("users-local", "users-cross"), ("CPU µs/msg server",),
                     "CPU µs per message")),
        ("batched-latency.png", "Batched (pipelined) pattern: saturation steps",
         _ratePanels(results, ("saturation-local", "saturation-cross"), latency,
                     "latency ms")),
        ("fanout.png", "Group fan-out: completion time by group size",
         [partial(_fanoutAxes, results=results)]),
        ("rss.png", "Memory against connections (one node)",
         [partial(_rssAxes, results=results)]),
    ]
    written = []
    for name, title, panels in charts:
        if panels and _figure(directory / name, title, panels) is not None:
            written.append((title, directory / name))
    return written

