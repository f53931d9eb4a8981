"""
Tests for the benchmark harness (C{bench/harness.py}): its parsing, arithmetic and table,
and one tiny real run, so the harness cannot rot. No speed target is asserted here: the
targets live in the benchmark (C{python bench/run.py}), not in the test suite.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import harness  # noqa: E402

sys.path.remove(BENCH)


def loadRun():
    """
    C{bench/run.py} as a module (it is a script: not importable by name).
    """
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(BENCH, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if BENCH in sys.path:  # run.py puts bench/ first on the path, for harness
        sys.path.remove(BENCH)
    return module


def figure(value, errors=0):
    return {"value": value, "errors": errors, "error_kinds": {}}


def rounds():
    """
    Two synthetic rounds: portserver at 0.9× then 1.0× bare Twisted on connections,
    xinetd at a quarter; memory and status figures for the idle-connection scenario.
    """
    def hold(portserver, twisted):
        return {"portserver": {"held": 10000, "errors": 0, "bytes_per_connection": portserver,
                               "snapshot_ms": 0.5, "api_connections_ms": 400.0,
                               "status_cli_ms": 900.0, "registry_matches": True},
                "twisted": {"held": 10000, "errors": 0, "bytes_per_connection": twisted}}
    return [
        {"scenarios": {"connect": {"portserver": figure(900.0), "twisted": figure(1000.0),
                                   "xinetd": figure(250.0, errors=2)},
                       "bulk-echo": {"portserver": figure(1000.0), "twisted": figure(1000.0)}},
         "hold": hold(1200.0, 1000.0), "services": {1: figure(900.0), 10: figure(810.0)},
         "failures": []},
        {"scenarios": {"connect": {"portserver": figure(1100.0), "twisted": figure(1100.0),
                                   "xinetd": figure(200.0)}},
         "hold": hold(1400.0, 1000.0), "services": {1: figure(1000.0), 10: figure(950.0)},
         "failures": []},
    ]


class ParsingTests(SynchronousTestCase):
    """
    The loadgen's and the status service's outputs are read strictly.
    """

    def test_resultLine(self):
        """
        The result is the last line that is a JSON object with the result's keys; other
        lines (notes, stray JSON) are skipped.
        """
        text = ('loadgen: note: something\n{"other": 1}\n'
                '{"mode":"connect","ops":10,"seconds":1.0,"rate":10.0,"errors":0}\nbye\n')
        self.assertEqual(harness.parseResult(text)["ops"], 10)

    def test_noResultLine(self):
        """
        Output without a result line is an error quoting the output's end.
        """
        error = self.assertRaises(harness.LoadgenError, harness.parseResult, "crashed\n")
        self.assertIn("crashed", str(error))

    def test_serverTiming(self):
        """
        A C{Server-Timing} header becomes names and milliseconds.
        """
        self.assertEqual(harness.parseServerTiming("snapshot;dur=0.412, dicts;dur=12.5, "
                                                   "encode;dur=30"),
                         {"snapshot": 0.412, "dicts": 12.5, "encode": 30.0})
        self.assertEqual(harness.parseServerTiming(""), {})


class AggregateTests(SynchronousTestCase):
    """
    Medians over rounds, ratios to bare Twisted from the same round, and the targets.
    """

    def test_mediansAndRatios(self):
        """
        Each figure is the median over rounds; each ratio is the median of the per-round
        ratios (0.9 and 1.0 give 0.95), not the ratio of medians; errors add up.
        """
        table = harness.aggregate(rounds())
        connect = table["scenarios"]["connect"]
        self.assertEqual(connect["portserver"]["value"], 1000.0)
        self.assertAlmostEqual(connect["portserver"]["ratio"], 0.95)
        self.assertEqual(connect["xinetd"]["errors"], 2)
        self.assertEqual(table["scenarios"]["bulk-echo"]["portserver"]["rounds"], 1)
        self.assertAlmostEqual(table["hold"]["portserver"]["memory_ratio"], 1.3)
        self.assertAlmostEqual(table["services"][10]["ratio"], (0.9 + 0.95) / 2)

    def test_goals(self):
        """
        Each target is met, not met, or not measured, with the measured figure.
        """
        goals = {g.text: g for g in harness.goals(harness.aggregate(rounds()))}
        connect = "portserver ≥ 1.2× bare Twisted on connection rate (registry and " \
                  "connection log on)"
        self.assertIsNotNone(goals[connect].met)
        self.assertFalse(goals[connect].met)
        self.assertIsNone(goals["portserver ≥ 1.5× bare Twisted on request rate (64 B, 100 "
                                "connections)"].met)
        self.assertTrue(goals["portserver ≥ 1× bare Twisted on bulk echo MB/s"].met)
        self.assertFalse(goals["memory per idle connection ≤ 1.10× bare Twisted"].met)
        self.assertTrue(goals["registry snapshot under 50 ms at 10,000"].met)
        xinetd = goals["connection rate ≥ 4× xinetd's internal echo"]
        self.assertTrue(xinetd.met)
        self.assertEqual(xinetd.detail, "4.4×")

    def test_markdown(self):
        """
        The table has a column per target present, a row per scenario measured, the
        idle-connection and services tables, and every target's verdict.
        """
        info = {"cores": 2, "cpu": "test CPU", "kernel": "6.0", "python": "3.11",
                "twisted": "26", "uvloop": None, "pinning": "none"}
        text = harness.markdownTable(harness.aggregate(rounds()), harness.Settings(rounds=2),
                                     info)
        lines = text.splitlines()
        header = next(line for line in lines if line.startswith("| scenario"))
        self.assertEqual(header, "| scenario | portserver | bare Twisted | xinetd (internal) |")
        connect = next(line for line in lines if line.startswith("| connections/s"))
        self.assertIn("1,000/s (0.95×)", connect)
        self.assertIn("⚠ 2 errors", connect)
        self.assertIn("| portserver | 10,000 | 0 | 1.27 KiB (1.30×) | 0.5 ms | 400.0 ms | "
                      "900.0 ms |", lines)
        self.assertIn("| memory per idle connection ≤ 1.10× bare Twisted | **not met** | "
                      "1.30× |", lines)
        self.assertIn("| 10 | 880/s (0.93×) |", lines)


class WorkersScenarioTests(SynchronousTestCase):
    """
    The C{workers} scenario: ratios to C{workers: 1} in the same round, its table and
    its target.
    """

    def rounds(self):
        one, two = (t.name for t in harness.WORKERS_TARGETS[:2])
        return [{"workers": {one: {"request-64": {"value": 100.0, "errors": 0}},
                             two: {"request-64": {"value": 150.0, "errors": 0,
                                                  "cpu_us": 9.0, "busy": 0.8}}}},
                {"workers": {one: {"request-64": {"value": 200.0, "errors": 0}},
                             two: {"request-64": {"value": 260.0, "errors": 1,
                                                  "cpu_us": 11.0, "busy": 0.9}}}}]

    def test_ratiosToOneWorker(self):
        """
        Each target's ratio is the median of its per-round ratios to C{workers: 1}
        (1.5 and 1.3 give 1.4), and the target is met at 1.4.
        """
        table = harness.aggregate([{"scenarios": {}, "hold": {}, "services": {}, **r}
                                   for r in self.rounds()])
        two = table["workers"][harness.WORKERS_TARGETS[1].name]["request-64"]
        self.assertEqual((two["value"], two["errors"]), (205.0, 1))
        self.assertAlmostEqual(two["ratio"], 1.4)
        goal = next(g for g in harness.goals(table) if g.text.startswith("workers: 2"))
        self.assertEqual((goal.met, goal.detail), (True, "1.40×"))

    def test_table(self):
        """
        The Markdown has a row per workers target measured, with its ratio, the
        server's CPU per request and how busy the machine was (medians).
        """
        table = harness.aggregate([{"scenarios": {}, "hold": {}, "services": {}, **r}
                                   for r in self.rounds()])
        info = {"cores": 2, "cpu": "test CPU", "kernel": "6.0", "python": "3.11",
                "twisted": "26", "uvloop": None, "pinning": "none"}
        lines = harness.markdownTable(table, harness.Settings(rounds=2), info).splitlines()
        self.assertIn("| portserver, workers: 2 | — | 205/s (1.40×) ⚠ 1 errors | 10.0 µs | "
                      "85% |", lines)


class ServerCPUTests(SynchronousTestCase):
    """
    The CPU time of a server's processes, children included.
    """

    def test_childrenCounted(self):
        """
        A server whose child burns CPU is charged for it: its tree's CPU time grows
        past what the idle parent alone used.
        """
        import subprocess
        import sys

        parent = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, "
             "'-c', 'import time\\nend = time.process_time() + 0.3\\n"
             "while time.process_time() < end: pass\\nprint(1, flush=True)\\n"
             "import sys; sys.stdin.read()'])"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.addCleanup(parent.wait)
        self.addCleanup(parent.stdin.close)
        self.assertEqual(parent.stdout.readline(), b"1\n")
        running = harness.Running(parent, {}, "")
        self.assertGreaterEqual(harness.serverCPU(running), 0.25)


class TinyRunTests(SynchronousTestCase):
    """
    A real run, as small as it gets: the C load generator compiled, portserver and bare
    Twisted started on loopback, every kind of scenario measured once.
    """

    def test_tinyRun(self):
        """
        Two targets, three scenarios, 40 idle connections and 1-2 services, in a few
        seconds: every figure is there, with no errors, and the registry lists exactly
        the held connections; the Markdown and JSON are written. Each scenario is
        measured on both targets before the next one (back to back, so that their ratio
        is not taken minutes apart).
        """
        if shutil.which(os.environ.get("CC", "cc")) is None:
            raise SkipTest("no C compiler to build the load generator")
        out = self.mktemp()
        settings = harness.Settings(rounds=1, duration=0.2, warmup=0.05, connections=40,
                                    targets=["portserver", "twisted"],
                                    scenarios=["connect", "udp", "hold", "services"],
                                    serviceCounts=(1, 2))
        reported = []
        result = harness.run(settings, out, drawChart=False, report=reported.append)
        [round] = result["rounds"]
        self.assertEqual(round["failures"], [], reported)
        measured = [line.split()[:2] for line in reported
                    if line.split()[1:2] in (["connect"], ["udp"])]
        self.assertEqual([scenario for _, scenario in measured],
                         ["connect", "connect", "udp", "udp"], reported)
        for scenario in ("connect", "udp"):
            for target in ("portserver", "twisted"):
                entry = result["table"]["scenarios"][scenario][target]
                self.assertGreater(entry["value"], 0, (scenario, target))
                self.assertEqual(entry["errors"], 0, (scenario, target))
        held = result["table"]["hold"]["portserver"]
        self.assertEqual((held["held"], held["errors"], held["registry_matches"]),
                         (40, 0, True))
        self.assertIsNotNone(held["snapshot_ms"])
        self.assertEqual(sorted(result["table"]["services"]), [1, 2])
        with open(os.path.join(out, "results.md")) as f:
            self.assertIn("| scenario | portserver | bare Twisted |", f.read())
        with open(os.path.join(out, "results.json")) as f:
            self.assertEqual(json.load(f)["settings"]["connections"], 40)


class RunTests(SynchronousTestCase):
    """
    C{bench/run.py}: where a run writes its results.
    """

    def setUp(self):
        self.run = loadRun()
        self.written = []
        self.patch(self.run.harness, "run", lambda settings, out, drawChart: (
            self.written.append((out, settings)) or {"markdown": "| table |"}))
        self.patch(sys, "stdout", io.StringIO())

    def test_quickRunWritesApart(self):
        """
        C{--quick} writes to C{bench/results/quick/}, never to C{bench/results/} where
        the full run's published results are.
        """
        self.assertEqual(self.run.main(["--quick", "--no-chart"]), 0)
        [(out, settings)] = self.written
        self.assertEqual(out, os.path.join(BENCH, "results", "quick"))
        self.assertNotEqual(os.path.abspath(out), os.path.join(BENCH, "results"))
        self.assertEqual((settings.rounds, settings.duration), (2, 0.5))
        self.assertIn(f"wrote {out}/results.md", sys.stdout.getvalue())

    def test_fullRunWritesPublished(self):
        """
        A full run writes to C{bench/results/}.
        """
        self.assertEqual(self.run.main(["--no-chart"]), 0)
        [(out, settings)] = self.written
        self.assertEqual(out, os.path.join(BENCH, "results"))
        self.assertEqual((settings.rounds, settings.duration), (5, 2.0))

    def test_outGiven(self):
        """
        C{--out} wins, quick or not.
        """
        for argv in (["--out", "somewhere"], ["--quick", "--out", "somewhere"]):
            self.assertEqual(self.run.outputDirectory(self.run.makeParser().parse_args(argv)),
                             "somewhere")


class HTTPScenarioTests(SynchronousTestCase):
    """
    C{bench/http_static.py}: reading the clients' output and writing the table.
    """

    def setUp(self):
        import importlib.util
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "bench", "http_static.py")
        spec = importlib.util.spec_from_file_location("http_static", path)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)

    def test_parseClients(self):
        """
        wrk's and ab's requests per second are read; ab with failed requests is an
        error, not a figure.
        """
        self.assertEqual(self.module.parseWrk("Requests/sec:   3149.69\nTransfer/sec: 1MB"),
                         3149.69)
        self.assertEqual(self.module.parseAb("Failed requests:        0\n"
                                             "Requests per second:    3590.39 [#/sec] (mean)"),
                         3590.39)
        self.assertRaises(ValueError, self.module.parseAb,
                          "Failed requests:        3\nRequests per second:    10 [#/sec]")
        self.assertRaises(ValueError, self.module.parseWrk, "nothing")

    def test_tableRatiosToTwistdWeb(self):
        """
        The table gives each server's median per client and its ratio to twistd web.
        """
        text = self.module.table({("portserver", "wrk"): [90, 100, 110],
                                  ("twistd web", "wrk"): [200, 200, 200]}, 3, 1.0)
        self.assertIn("| portserver | 100/s (0.50x) |", text)
        self.assertIn("| twistd web | 200/s (1.00x) |", text)
