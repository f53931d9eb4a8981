"""
Tests for C{portserver reload}: the pid file, the signal, and the outcome read from the
status service (with fakes for C{kill}, C{fetch}, the clock and C{sleep}).
"""

from __future__ import annotations

import io
import os
import signal

from twisted.trial.unittest import SynchronousTestCase

from portserver.status import cli
from portserver.status.cli import FetchError

URL = "http://127.0.0.1:8790"


class Status:
    """
    A fake status service: C{/api/summary} answers from C{self.summaries} in turn (the
    last one for ever); C{down} makes every request fail.
    """

    def __init__(self, *summaries, down=False):
        self.summaries = list(summaries)
        self.down = down
        self.asked = []

    def __call__(self, url, **kwargs):
        self.asked.append(url)
        if self.down:
            raise FetchError("Connection refused")
        if len(self.summaries) > 1:
            return self.summaries.pop(0)
        return self.summaries[0]


def summary(applied=0, rejected=0, last=None):
    return {"reloads": {"applied": applied, "rejected": rejected}, "last_reload": last}


class ReloadCommandTests(SynchronousTestCase):
    """
    C{portserver reload} signals the server and reports what became of it.
    """

    def setUp(self):
        self.pidfile = os.path.abspath(self.mktemp())
        with open(self.pidfile, "w") as f:
            f.write("4242\n")
        self.killed = []
        self.slept = []
        self.clock = [1000.0]

    def kill(self, pid, number):
        self.killed.append((pid, number))

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.clock[0] += seconds

    def reload(self, status, *extra, kill=None):
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(cli, "runReload", _withFakes(kill or self.kill, self.sleep))
        code = cli.main(["reload", "--pidfile", self.pidfile, "--url", URL, *extra],
                        stdout=stdout, stderr=stderr, fetch=status,
                        now=lambda: self.clock[0])
        return code, stdout.getvalue(), stderr.getvalue()

    def test_applied(self):
        """
        The pid file's process gets SIGHUP; once the status service's reload count goes
        up, the applied outcome is printed, with what changed, and the exit status is 0.
        """
        outcome = {"result": "applied", "generation": 2, "added": ["daytime/tcp x:13"],
                   "removed": [], "changed": ["echo/tcp x:7"], "unchanged": 1,
                   "denied": 1, "warnings": ["status.listen changed"], "errors": []}
        status = Status(summary(), summary(), summary(applied=1, last=outcome))
        code, out, err = self.reload(status)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.killed, [(4242, signal.SIGHUP)])
        self.assertEqual(out, "reloaded: generation 2 is in force: 1 listener(s) added, "
                              "0 removed, 1 changed, 1 unchanged\n"
                              "  1 connection(s) closed by the new access rules\n"
                              "  added: daytime/tcp x:13\n  changed: echo/tcp x:7\n"
                              "  warning: status.listen changed\n")
        self.assertEqual(status.asked, [f"{URL}/api/summary"] * 3)

    def test_rejected(self):
        """
        A rejected reload prints every error and exits 1.
        """
        outcome = {"result": "rejected", "generation": 1,
                   "errors": ["/etc/p.yaml:3:9: service 'x': bad", "/etc/p.yaml:9:1: worse"]}
        code, out, err = self.reload(Status(summary(applied=2), summary(applied=2, rejected=1,
                                                                     last=outcome)))
        self.assertEqual(code, 1)
        self.assertEqual(out, "reload rejected: generation 1 stays in force; 2 error(s):\n"
                              "  /etc/p.yaml:3:9: service 'x': bad\n"
                              "  /etc/p.yaml:9:1: worse\n")

    def test_noStatusService(self):
        """
        With no status service answering, the signal is still sent and the command says
        the outcome is in the server's log (exit 0).
        """
        code, out, err = self.reload(Status(down=True))
        self.assertEqual(code, 0)
        self.assertEqual(self.killed, [(4242, signal.SIGHUP)])
        self.assertIn(f"sent SIGHUP to portserver (pid 4242) (no status service answers at "
                      f"{URL}); the outcome is in its log", out)

    def test_noWait(self):
        """
        C{--no-wait} sends the signal and asks nothing.
        """
        status = Status(summary())
        code, out, err = self.reload(status, "--no-wait")
        self.assertEqual((code, status.asked), (0, []))
        self.assertEqual(self.killed, [(4242, signal.SIGHUP)])

    def test_timeout(self):
        """
        No outcome within C{--timeout} is an error (exit 1) that points at the log; the
        wait polls, it does not spin.
        """
        code, out, err = self.reload(Status(summary()), "--timeout", "2")
        self.assertEqual(code, 1)
        self.assertIn("reported no reload within 2s; see the server's log", err)
        self.assertAlmostEqual(sum(self.slept), 2.0)
        self.assertTrue(all(s >= 0.1 for s in self.slept))

    def test_missingPidFile(self):
        """
        A missing pid file is a one-line error that says how to name it; nothing is
        signalled.
        """
        os.remove(self.pidfile)
        code, out, err = self.reload(Status(summary()))
        self.assertEqual(code, 1)
        self.assertIn(f"portserver reload: no pid file at {self.pidfile}", err)
        self.assertIn("--pidfile", err)
        self.assertEqual(self.killed, [])

    def test_garbagePidFile(self):
        """
        A pid file that holds no process id is reported as such.
        """
        with open(self.pidfile, "w") as f:
            f.write("not a pid")
        code, out, err = self.reload(Status(summary()))
        self.assertEqual(code, 1)
        self.assertIn("holds no process id ('not a pid')", err)

    def test_staleProcess(self):
        """
        A pid of no process is reported as a stale pid file.
        """
        def kill(pid, number):
            raise ProcessLookupError(pid)
        code, out, err = self.reload(Status(summary()), kill=kill)
        self.assertEqual(code, 1)
        self.assertIn("no process 4242", err)
        self.assertIn("stale", err)


def _withFakes(kill, sleep):
    real = cli.runReload

    def runReload(args, stdout, fetch, now):
        return real(args, stdout, fetch, now, kill=kill, sleep=sleep)
    return runReload


class SummaryLineTests(SynchronousTestCase):
    """
    C{portserver status} shows the config generation and the last reload's result.
    """

    def test_generationAndLastReload(self):
        """
        The summary has a line with the generation and, after a rejected reload, its
        error count; servers that report no generation get no such line.
        """
        lines = cli.renderSummary({"config_generation": 3, "last_reload": {
            "result": "rejected", "errors": ["a", "b"]}})
        self.assertIn("config generation 3; last reload rejected (2 error(s): see "
                      "`portserver reload` or the log)", lines)
        lines = cli.renderSummary({"config_generation": 1, "last_reload": None})
        self.assertIn("config generation 1", lines)
        self.assertFalse(any("generation" in l for l in cli.renderSummary({})))
