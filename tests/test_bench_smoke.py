"""
Seconds-long smoke runs of the benchmark (bench/), so that it cannot rot:
chat-local with 5 pairs for 1 s (and the relay baseline beside it) and a
group fan-out of 10 members; the many-users pattern (users-local) at
two tiny rate steps; and a login storm of 20 users, against a real node
the benchmark starts itself.
They check that a report is written and that every message is accounted
for; they assert nothing about speed (the benchmark reports, tests check).
And the charts, drawn from a small made-up run's JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from typing import Any

from twisted.trial import unittest

from tests.harness import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def runBench(case: unittest.SynchronousTestCase, module: str, *args: str
             ) -> subprocess.CompletedProcess[str]:
    """Run C{python -m MODULE ARGS} from the checkout root; fail the test on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    case.assertEqual(run.returncode, 0, f"{module} failed:\n{run.stderr[-3000:]}")
    return run


def tempDirectory(case: unittest.SynchronousTestCase) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="chat-bench-smoke-"))
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


class BenchSmokeTests(unittest.SynchronousTestCase):

    def test_quickRun(self) -> None:
        """
        C{python -m bench.run --quick} writes a Markdown report and its JSON
        twin; every message of chat-local and of the fan-out arrived live,
        none lost, no scenario failed.  A tiny --ports-per-address makes
        the generator use source addresses 127.0.0.2 and up as well.
        """
        out = tempDirectory(self) / "report.md"
        runBench(self, "bench.run", "--quick",
                 "--scenarios", "chat-local,fanout", "--fanout-on", "single",
                 "--pairs", "5", "--duration", "1", "--group-sizes", "10",
                 "--ports-per-address", "8", "--out", str(out))
        report = out.read_text()
        self.assertIn("chat-local", report)
        self.assertIn("group fan-out, 10 members", report)
        data = json.loads(out.with_suffix(".json").read_text())
        results = {r["key"]: r for r in data["results"]}
        self.assertEqual(set(results), {"chat-local", "fanout-10"})
        for key, result in results.items():
            self.assertIsNone(result["error"], f"{key}: {result['error']}")
            self.assertEqual(len(result["runs"]), 1, key)
            for run in result["runs"] + result["baseline"]:
                self.assertEqual(run["lost"], 0, f"{key}: {run}")
                self.assertEqual(run["duplicates"], 0, f"{key}: {run}")
        chat = results["chat-local"]["runs"][0]
        self.assertEqual(chat["sent"], 200)  # 200 msgs/s for 1 s
        self.assertEqual(chat["stored offline"], 0)
        fan = results["fanout-10"]["runs"][0]
        self.assertEqual(fan["messages complete"], 3)  # each reached all 9 others

    def test_instructionCounts(self) -> None:
        """
        users-instructions reads callgrind_control's per-thread counts
        (what it printed here for a process with two threads) and sums
        them; output without a count is an error, not zero.
        """
        from bench.instructions import parseInstructions
        printed = ("PID 30019: python -c import time\n\n  Totals:         Ir \n"
                   "   Th 1  121,881,796 \n   Th 2       5,004 \n")
        self.assertEqual(parseInstructions(printed), 121_886_800)
        self.assertRaises(RuntimeError, parseInstructions, "PID 1: gone\n")

    def test_slowAndClassicReaders(self) -> None:
        """
        slow-readers with 3 never-reading recipients each sent 1.2 MB
        (past --max-output): the node stored what did not fit and every
        message reached its reader once, in order, once it read; and
        classic-receive: every message reached the classic reader, at
        most two in a read with another.
        """
        out = tempDirectory(self) / "report.md"
        runBench(self, "bench.run", "--quick",
                 "--scenarios", "slow-readers,classic-receive", "--out", str(out))
        data = json.loads(out.with_suffix(".json").read_text())
        results = {r["key"]: r for r in data["results"]}
        self.assertEqual(set(results), {"slow-readers", "classic-receive"})
        for key, result in results.items():
            self.assertIsNone(result["error"], f"{key}: {result['error']}")
        slow = results["slow-readers"]["runs"][0]
        self.assertEqual(slow["ACK online"] + slow["ACK offline"], 3 * 400)
        self.assertGreater(slow["ACK offline"], 0)
        self.assertEqual((slow["lost"], slow["duplicates"], slow["out of order"],
                          slow["bystanders lost"]), (0, 0, 0, 0))
        classic = results["classic-receive"]["runs"][0]
        self.assertEqual((classic["received"], classic["lost"]), (100, 0))
        # Pacing is best effort (PROTOCOL.md 7): the bound of the classic
        # end-to-end test, at most 2 merged reads.
        self.assertLessEqual(classic["reads with more than one object"], 2)

    def test_manyUsers(self) -> None:
        """
        users-local at two tiny open-loop steps, against a node and the
        relay: no step failed or lost anything, and every message of every
        step is accounted for: delivered live once (none stored, none
        twice) and answered with a success ACK (JSON lines framing), with
        no error reply.  The report leads with the many-users part.
        """
        out = tempDirectory(self) / "report.md"
        runBench(self, "bench.run", "--quick", "--scenarios", "users-local",
                 "--users-pairs", "6", "--users-rates", "60,120", "--users-step", "1",
                 "--out", str(out))
        data = json.loads(out.with_suffix(".json").read_text())
        [result] = data["results"]
        self.assertEqual(result["key"], "users-local")
        self.assertIsNone(result["error"], result["error"])
        for run in result["runs"] + result["baseline"]:
            self.assertEqual((run["lost"], run["error replies"]), (0, 0), run)
            self.assertEqual(run["sustained msgs/s"], 120, run)
        steps = [row for _, rows in result["details"] for row in rows]
        self.assertEqual(len(steps), 4)  # two steps, of the node and of the relay
        for row in steps:
            self.assertGreater(row["sent"], 0, row)
            self.assertEqual((row["lost"], row["duplicates"], row["error replies"]),
                             (0, 0, 0), row)
            self.assertEqual(row["ACKs"], row["sent"], row)
        self.assertIn("## Many users pattern", out.read_text())

    def test_loginStorm(self) -> None:
        """
        login-storm with 20 users (and 20 attackers in part 2): every user
        got in in both parts, each of its answers is counted by kind (a
        success each; any refusal, 106 from a node with the limits, was
        retried), every attack was refused, and the report has the times
        and the table.  The node runs at the server's default password
        cost, as the scenario always does: 20 users cost a few seconds of
        hashing, so there was no reason to make the smoke run cheaper than
        the real one.  It asserts nothing about speed.
        """
        out = tempDirectory(self) / "report.md"
        runBench(self, "bench.run", "--quick", "--scenarios", "login-storm",
                 "--storm-users", "20", "--out", str(out))
        data = json.loads(out.with_suffix(".json").read_text())
        [result] = data["results"]
        self.assertEqual(result["key"], "login-storm")
        self.assertIsNone(result["error"], result["error"])
        [run] = result["runs"]
        for part in ("part 1: ", "part 2: "):
            self.assertEqual((run[part + "users in"], run[part + "users never in"]),
                             (20, 0), run)
            self.assertEqual(run[part + "answers errno 0"], 20, run)
            self.assertGreater(run[part + "all in s"], 0, run)
            self.assertGreater(run[part + "answer max ms"], 0, run)
            self.assertGreater(run[part + "CPU % node1"], 0, run)
            self.assertGreater(run[part + "RSS peak MiB"], 0, run)
        self.assertEqual(run["part 2: attackers"], 20)
        self.assertGreater(run["part 2: attacks answered"], 0, run)
        self.assertEqual(run["part 2: attacks errno 0"], 0, run)
        self.assertEqual(run["part 2: attacks answered"],
                         run["part 2: attacks errno 1"] + run["part 2: attacks errno 106"]
                         + run["part 2: attacks after 30 s"], run)
        self.assertGreater(run["part 2 / part 1: all in"], 0, run)
        self.assertGreater(run["part 2 / part 1: CPU node1"], 0, run)
        report = out.read_text()
        self.assertIn("### login storm: 20 users", report)
        self.assertIn("| part 1: all in s |", report)
        self.assertIn("| login-storm | part 2 / part 1: all in |", report)


def syntheticRun() -> dict[str, Any]:
    """
    A made-up run's JSON with every kind of data the charts draw: rate
    steps of both patterns (server and relay), fan-out by group size, RSS
    by connections.
    """
    def steps(base: float) -> list[dict[str, Any]]:
        return [{"offered msgs/s": rate, "outcome": "held", "p50 ms": base * i,
                 "p99 ms": base * i * 4, "CPU µs/msg server": 100.0 / i}
                for i, rate in enumerate((1000.0, 2500.0, 5000.0), start=1)]

    def result(key: str, **fields: Any) -> dict[str, Any]:
        return {"key": key, "title": key, **fields}

    stepped = {"settings": {"p99 limit ms": 50.0},
               "details": [["node: steps of run 1", steps(1.0)],
                           ["node: steps of run 2", steps(1.5)],
                           ["relay: steps of run 1", steps(0.5)]]}
    return {"machine": {}, "settings": {}, "command": "", "results": [
        result("users-local", **stepped), result("users-cross", **stepped),
        result("saturation-local", **stepped),
        result("fanout-100", runs=[{"completion p50 ms": 3.0, "completion max ms": 5.0}],
               baseline=[{"completion p50 ms": 1.0, "completion max ms": 2.0}]),
        result("fanout-1000", runs=[{"completion p50 ms": 30.0, "completion max ms": 50.0}]),
        result("connections", runs=[
            {"RSS before MiB": 40.0, "100 held: RSS MiB": 45.0, "200 held: RSS MiB": 50.0},
            {"RSS before MiB": 41.0, "100 held: RSS MiB": 46.0, "200 held: RSS MiB": 52.0}]),
    ]}


class BenchPlotTests(unittest.SynchronousTestCase):

    def test_plotsFromJSON(self) -> None:
        """
        C{python -m bench.report RUN.json --plot DIR --out R.md} draws every
        chart the run has data for as a valid PNG, without running
        anything, and the report shows them.
        """
        directory = tempDirectory(self)
        source = directory / "run.json"
        source.write_text(json.dumps(syntheticRun()))
        runBench(self, "bench.report", str(source), "--plot", str(directory / "plots"),
                 "--out", str(directory / "report.md"))
        names = {"users-latency.png", "users-cpu.png", "batched-latency.png",
                 "fanout.png", "rss.png"}
        self.assertEqual({p.name for p in (directory / "plots").iterdir()}, names)
        for name in names:
            self.assertTrue((directory / "plots" / name).read_bytes().startswith(PNG_SIGNATURE),
                            name)
        report = (directory / "report.md").read_text()
        self.assertIn("](plots/users-latency.png)", report)
