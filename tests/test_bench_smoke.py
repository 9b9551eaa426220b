"""
A seconds-long smoke run of the benchmark (bench/), so that it cannot rot:
chat-local with 5 pairs for 1 s (and the relay baseline beside it) and a
group fan-out of 10 members, against a real node the benchmark starts
itself.  It checks that a report is written and that nothing was lost;
it asserts nothing about speed (the benchmark reports, tests check).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

from tests.harness import ROOT


class BenchSmokeTests(unittest.SynchronousTestCase):

    def test_quickRun(self) -> None:
        """
        C{python -m bench.run --quick} writes a Markdown report and its JSON
        twin; every message of chat-local and of the fan-out arrived live,
        none lost, no scenario failed.  A tiny --ports-per-address makes
        the generator use source addresses 127.0.0.2 and up as well.
        """
        directory = Path(tempfile.mkdtemp(prefix="chat-bench-smoke-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        out = directory / "report.md"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        run = subprocess.run(
            [sys.executable, "-m", "bench.run", "--quick",
             "--scenarios", "chat-local,fanout", "--fanout-on", "single",
             "--pairs", "5", "--duration", "1", "--group-sizes", "10",
             "--ports-per-address", "8", "--out", str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, f"bench.run failed:\n{run.stderr[-3000:]}")
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
