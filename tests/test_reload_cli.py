"""
Tests for C{portserver reload}: the pid file, the check that its pid is a live
portserver, the signal, and the outcome read from the status service (with fakes for
C{kill}, C{fetch}, the clock, C{sleep} and the C{/proc} command-line reader).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from portserver import __version__
from portserver.runtime import commandLine
from portserver.status import cli
from portserver.status.cli import TOKEN_ENV, FetchError
from tests.support import freePort
from tests.test_twistd import DEADLINE, ROOT, stopProcess, waitForLine

URL = "http://127.0.0.1:8790"

#: How twistd's portserver looks in /proc/PID/cmdline, started by the console script.
TWISTD = ["/usr/bin/python3", "/venv/bin/twistd", "-n", "portserver", "-c", "my.yaml"]


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


def summary(applied=0, rejected=0, last=None, pid=4242):
    return {"reloads": {"applied": applied, "rejected": rejected}, "last_reload": last,
            "pid": pid}


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
        self.commandLines = {4242: TWISTD}

    def kill(self, pid, number):
        if pid not in self.commandLines:
            raise ProcessLookupError(pid)
        if number != 0:  # 0 only asks whether the process exists
            self.killed.append((pid, number))

    def readCommandLine(self, pid):
        """
        A fake L{portserver.runtime.commandLine} over C{self.commandLines}.
        """
        if pid not in self.commandLines:
            raise ProcessLookupError(pid)
        return self.commandLines[pid]

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.clock[0] += seconds

    def reload(self, status, *extra, kill=None):
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(cli, "runReload", _withFakes(kill or self.kill, self.sleep))
        where = [] if "--config" in extra else ["--url", URL]
        code = cli.main(["reload", "--pidfile", self.pidfile, *where, *extra],
                        stdout=stdout, stderr=stderr, fetch=status,
                        now=lambda: self.clock[0], readCommandLine=self.readCommandLine)
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
        With no status service answering, the signal is still sent (the command line
        showed a portserver), and the command says the outcome is unknown, with the
        distinct exit status L{cli.EXIT_UNCONFIRMED} (3), never 0.
        """
        code, out, err = self.reload(Status(down=True))
        self.assertEqual((code, cli.EXIT_UNCONFIRMED), (3, 3))
        self.assertEqual(self.killed, [(4242, signal.SIGHUP)])
        self.assertEqual(err, f"portserver reload: sent SIGHUP to portserver (pid 4242), "
                              f"but no status service answers at {URL} (Connection "
                              "refused): the outcome is unknown; see the server's log\n")

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
        self.assertEqual(code, cli.EXIT_UNCONFIRMED)
        self.assertIn("reported no reload within 2s: the outcome is unknown; see the "
                      "server's log", err)
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
        A process that ends between the check and the signal is reported as a stale
        pid file (exit 1).
        """
        def kill(pid, number):
            raise ProcessLookupError(pid)
        code, out, err = self.reload(Status(summary()), kill=kill)
        self.assertEqual(code, 1)
        self.assertIn("stale pid file", err)
        self.assertIn("pid 4242 is not running", err)

    def test_deadPid(self):
        """
        A pid file naming no process: one line naming the pid file and the pid, exit 1,
        no signal, and the status service is not even asked.
        """
        self.commandLines = {}
        status = Status(summary())
        code, out, err = self.reload(status)
        self.assertEqual((code, out, self.killed, status.asked), (1, "", [], []))
        self.assertEqual(err, f"portserver reload: stale pid file {self.pidfile}: pid 4242 "
                              "is not running (portserver stopped without removing it?); "
                              "nothing was signalled\n")

    def test_pidOfAnotherProgram(self):
        """
        A pid that now belongs to another program (a reused pid): exit 1, no signal, and
        the message says what runs there.
        """
        self.commandLines = {4242: ["sleep", "100"]}
        code, out, err = self.reload(Status(summary(pid=77)))
        self.assertEqual((code, self.killed), (1, []))
        self.assertEqual(err, f"portserver reload: stale pid file {self.pidfile}: pid 4242 "
                              "is not portserver but 'sleep 100'; nothing was signalled\n")

    def test_commandLineUnreadableButStatusConfirms(self):
        """
        Where the command line cannot be read (no /proc, another user's process), the
        pid the status service reports confirms it: the signal is sent.
        """
        self.commandLines = {4242: None}
        outcome = {"result": "applied", "generation": 2, "errors": []}
        code, out, err = self.reload(Status(summary(), summary(applied=1, last=outcome)))
        self.assertEqual((code, self.killed), (0, [(4242, signal.SIGHUP)]))

    def test_commandLineUnreadableAndNoConfirmation(self):
        """
        An unreadable command line and no status service to confirm the pid: nothing is
        sent, exit 1, and the message says why.
        """
        self.commandLines = {4242: None}
        code, out, err = self.reload(Status(down=True))
        self.assertEqual((code, self.killed), (1, []))
        self.assertIn("cannot check that pid 4242", err)
        self.assertIn("nothing was signalled", err)

    def test_statusServiceOfAnotherServer(self):
        """
        A status service reporting another pid belongs to another portserver: its
        outcome would say nothing about this one, so nothing is sent (exit 1).
        """
        code, out, err = self.reload(Status(summary(pid=999)))
        self.assertEqual((code, self.killed), (1, []))
        self.assertIn(f"the status service at {URL} is portserver pid 999, not pid 4242",
                      err)

    def test_runtimeFileFindsStatusService(self):
        """
        Without C{--url} or C{--config}, the runtime file beside the pid file names the
        server's status service (here on a port no config says), and its config.
        """
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write("status: {listen: 'tcp:1:interface=127.0.0.1'}\n")
        with open(self.pidfile + ".portserver.json", "w") as f:
            json.dump({"pid": 4242, "config": config,
                       "status_url": "http://127.0.0.1:40001", "pidfile": self.pidfile}, f)
        outcome = {"result": "applied", "generation": 2, "errors": []}
        status = Status(summary(), summary(applied=1, last=outcome))
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(cli, "runReload", _withFakes(self.kill, self.sleep))
        code = cli.main(["reload", "--pidfile", self.pidfile], stdout=stdout, stderr=stderr,
                        fetch=status, now=lambda: self.clock[0], environ={},
                        readCommandLine=self.readCommandLine)
        self.assertEqual((code, stderr.getvalue()), (0, ""))
        self.assertEqual(status.asked, ["http://127.0.0.1:40001/api/summary"] * 2)


class ProcessStateTests(SynchronousTestCase):
    """
    L{cli.processState} tells a live portserver from a dead pid and another program,
    from a command line read (here: by a fake) from C{/proc/PID/cmdline}.
    """

    def state(self, argv, alive=True):
        def read(pid):
            if isinstance(argv, BaseException):
                raise argv
            return argv

        def kill(pid, number):
            if not alive:
                raise ProcessLookupError(pid)
        return cli.processState(12, read, kill)[0]

    def test_portserverLaunchers(self):
        """
        twistd's portserver however started: the console script, a versioned script,
        C{python -m twisted} (twist), and a C{python -c} program running twistd.
        """
        for argv in (["/venv/bin/python3", "/venv/bin/twistd", "-n", "portserver"],
                     ["twistd", "--pidfile", "x.pid", "portserver", "-c", "my.yaml"],
                     ["/usr/bin/twistd3", "portserver"],
                     ["python3", "-m", "twisted", "portserver"],
                     ["python3", "-c", "from twisted.scripts.twistd import run; run()",
                      "-n", "portserver"]):
            self.assertEqual(self.state(argv), cli.PORTSERVER, argv)

    def test_otherPrograms(self):
        """
        Another program, twistd running another plugin, and the portserver CLI itself
        (not a server) are L{cli.OTHER}; so is a zombie's empty command line.
        """
        for argv in (["sleep", "100"], ["/venv/bin/twistd", "-n", "web"],
                     ["/venv/bin/python3", "/venv/bin/portserver", "reload"],
                     ["python3", "portserver"], []):
            self.assertEqual(self.state(argv), cli.OTHER, argv)

    def test_goneAndUnknown(self):
        """
        No such process is L{cli.GONE}; an unreadable command line is L{cli.UNKNOWN}
        for a live process and L{cli.GONE} for a dead one.
        """
        self.assertEqual(self.state(ProcessLookupError(12)), cli.GONE)
        self.assertEqual(self.state(None), cli.UNKNOWN)
        self.assertEqual(self.state(None, alive=False), cli.GONE)


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


class RealProcessTests(SynchronousTestCase):
    """
    C{portserver status} and C{portserver reload} against real processes: a real
    C{twistd -n portserver -c custom.yaml} in a directory of its own, and pid files that
    name a C{sleep} or a dead process.
    """

    def cli(self, *argv, cwd):
        """
        Run C{portserver ARGV} (this checkout's code) in C{cwd}; return its exit status,
        stdout and stderr.
        """
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", TOKEN_ENV)}
        env["PYTHONPATH"] = ROOT
        done = subprocess.run([sys.executable, "-m", "portserver.status.cli", *argv],
                              cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=DEADLINE, stdin=subprocess.DEVNULL)
        return done.returncode, done.stdout, done.stderr

    def stop(self, process):
        stopProcess(process, DEADLINE)

    def test_statusAndReloadFindTheServerOfTheirDirectory(self):
        """
        In the directory where twistd runs with its default pid file and a custom
        config whose status service listens on a port chosen at bind time, C{portserver
        status} and C{portserver reload} (no C{-c}, no C{--url}) reach that server; the
        runtime file goes when the server stops.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "custom.yaml")
        port = freePort()
        with open(config, "w") as f:
            f.write("status:\n  listen: tcp:0:interface=127.0.0.1\n"
                    f"services:\n  - name: echo\n    protocol: echo\n    port: {port}\n"
                    "    interface: 127.0.0.1\n    transports: [tcp]\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = ROOT
        server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--logfile=-", "portserver", "-c", "custom.yaml"],
            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        self.addCleanup(self.stop, server)
        waitForLine(server, "portserver ready")
        runtimeFile = os.path.join(directory, "twistd.portserver.json")
        with open(runtimeFile) as f:
            runtime = json.load(f)
        self.assertEqual((runtime["pid"], runtime["config"]), (server.pid, config))

        code, out, err = self.cli("status", cwd=directory)
        self.assertEqual((code, err), (0, ""))
        title = out.splitlines()[0]
        self.assertTrue(title.startswith(f"portserver {__version__} at "
                                         f"{runtime['status_url']}, config "), title)
        self.assertTrue(title.endswith("custom.yaml"), title)
        self.assertIn(f"127.0.0.1:{port}", out)

        code, out, err = self.cli("reload", cwd=directory)
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("reloaded: generation 2 is in force"), out)

        server.send_signal(signal.SIGTERM)
        self.assertEqual(server.wait(DEADLINE), 0)
        self.assertFalse(os.path.exists(runtimeFile))
        self.assertFalse(os.path.exists(os.path.join(directory, "twistd.pid")))

    def pidfile(self, pid) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f"{pid}\n")
        return path

    def reload(self, pidfile):
        stdout, stderr = io.StringIO(), io.StringIO()
        code = cli.main(["reload", "--pidfile", pidfile, "--url", "http://127.0.0.1:1"],
                        stdout=stdout, stderr=stderr, environ={})
        return code, stdout.getvalue(), stderr.getvalue()

    def test_pidOfSleep(self):
        """
        A pid file naming a live C{sleep}: exit 1, and no signal: the C{sleep} (whose
        default action on SIGHUP is to end) lives on until this test ends it with
        SIGTERM; had SIGHUP been sent, it would have died of that signal first.
        """
        sleeper = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
        self.addCleanup(self.stop, sleeper)
        # Until exec completes, /proc/PID/cmdline is the forked Python's, or empty.
        end = time.monotonic() + DEADLINE
        while commandLine(sleeper.pid) != ["sleep", "60"]:
            self.assertLess(time.monotonic(), end, "sleep did not start")
            time.sleep(0.001)
        path = self.pidfile(sleeper.pid)
        code, out, err = self.reload(path)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"portserver reload: stale pid file {path}: pid {sleeper.pid} "
                              "is not portserver but 'sleep 60'; nothing was signalled\n")
        self.assertIsNone(sleeper.poll())
        sleeper.send_signal(signal.SIGTERM)
        self.assertEqual(sleeper.wait(DEADLINE), -signal.SIGTERM)

    def test_deadPid(self):
        """
        A pid file naming a process that has ended: exit 1, one line naming the pid
        file and the pid.
        """
        ended = subprocess.Popen(["true"], stdin=subprocess.DEVNULL)
        ended.wait(DEADLINE)
        path = self.pidfile(ended.pid)
        code, out, err = self.reload(path)
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"stale pid file {path}: pid {ended.pid} is not running", err)
