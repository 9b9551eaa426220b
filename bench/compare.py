"""
A before/after table from two runs' JSON (what C{bench.run} writes next to
its report): for every headline number of every scenario both ran, the
median of each run and after/before.

    python -m bench.compare bench/results/before.json after.json [--out table.md]

Why the baseline ratio column too: this machine is shared and noisy, so an
absolute number can move between two runs for reasons that have nothing to
do with the change; the ratio against the relay measured in the same run
moves much less, and when both columns agree the change is real.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from .report import _fmt, headlineKeys
from .stats import Summary, summarise


def _medians(result: dict[str, Any], which: str) -> dict[str, Summary]:
    return summarise(result.get(which) or [])


def _ratio(after: Optional[float], before: Optional[float]) -> str:
    if after is None or before is None or before == 0:
        return ""
    return f"{after / before:.2f}x"


def compare(before: dict[str, Any], after: dict[str, Any], labels: tuple[str, str]) -> str:
    old = {r["key"]: r for r in before["results"]}
    new = {r["key"]: r for r in after["results"]}
    lines = [f"| scenario | number | {labels[0]} | {labels[1]} | after / before "
             "| vs baseline before | vs baseline after |",
             "|---|---|---|---|---|---|---|"]
    for key, result in new.items():
        if key not in old:
            continue
        a, b = _medians(result, "runs"), _medians(old[key], "runs")
        aBase, bBase = _medians(result, "baseline"), _medians(old[key], "baseline")
        for metric in headlineKeys(key, list(a)):
            if metric not in a and metric not in b:
                continue
            am = a[metric].median if metric in a else None
            bm = b[metric].median if metric in b else None
            vsBefore = _ratio(bm, bBase[metric].median if metric in bBase else None)
            vsAfter = _ratio(am, aBase[metric].median if metric in aBase else None)
            lines.append(f"| {key} | {metric} | {_fmt(bm)} | {_fmt(am)} | {_ratio(am, bm)} "
                         f"| {vsBefore} | {vsAfter} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--labels", default="before,after")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args(argv)
    labels = tuple(options.labels.split(",", 1))
    table = compare(json.loads(options.before.read_text()),
                    json.loads(options.after.read_text()), labels)  # type: ignore[arg-type]
    if options.out:
        options.out.write_text(table)
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
