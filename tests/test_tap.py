"""
Tests for L{portserver.tap}: the options of C{twistd portserver} and the service they make.
"""

import io
import json
import os
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from portserver import tap
from portserver.plugins import Discovery, DuplicateProtocolError
from portserver.server import PortServer
from tests.support import PROVIDERS, PortReactor

BAD = """\
services:
  - name: echo
    protocol: echo
    port: 0
  - name: echo2
    protocol: echo
    interface: 127.0.0.1
    colour: blue
"""


class OptionsTests(SynchronousTestCase):
    """
    L{tap.Options} checks everything in C{postOptions} and reports without tracebacks.
    """

    def options(self, *argv, discover=None):
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        options = tap.Options(
            stdout=self.stdout, stderr=self.stderr,
            discover=discover or (lambda: Discovery(dict(PROVIDERS), {})))
        options.parseOptions(list(argv))
        return options

    def configFile(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def exitCode(self, *argv, **kwargs):
        return self.assertRaises(SystemExit, self.options, *argv, **kwargs).code

    def test_checkValidPrintsPlanAndExitsZero(self):
        """
        C{--check} on a valid config prints the port plan (well-known and actual port,
        privileged or not) and exits 0 without building a service.
        """
        self.assertEqual(self.exitCode("--check", "--port-offset", "10000"), 0)
        out = self.stdout.getvalue()
        self.assertIn("SERVICE", out)
        self.assertIn("10007 (from 7)", out)
        self.assertIn("configuration is valid", out)
        self.assertEqual(out.count("\nchargen "), 2)

    def test_checkInvalidReportsAllAndExitsOne(self):
        """
        C{--check} on an invalid config prints every error with file:line:column and the
        service, on stderr, and exits 1.
        """
        path = self.configFile(BAD)
        self.assertEqual(self.exitCode("--check", "--config", path), 1)
        err = self.stderr.getvalue()
        self.assertIn("2 configuration errors", err)
        self.assertIn(f"{path}:4:11: service 'echo': 'port' 0 is outside 1-65535", err)
        self.assertIn(f"{path}:8:5: service 'echo2': unknown key 'colour'", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.stdout.getvalue(), "")

    def test_invalidConfigStopsNormalStartToo(self):
        """
        Without C{--check}, an invalid config still exits 1 before any service exists.
        """
        self.assertEqual(self.exitCode("--config", self.configFile(BAD)), 1)
        self.assertIn("configuration error", self.stderr.getvalue())

    def test_twistdPreflightFailureIsOneMessage(self):
        """
        Run by twistd, a plan whose ports cannot be bound stops in C{postOptions}, on
        stderr, before twistd forks or starts its log: one line per listener, then each
        remedy once, exit 1.
        """
        failures = [f"cannot listen for service 'echo': echo/{t} 127.0.0.1:7: "
                    "[Errno 13] Permission denied\n  REMEDY" for t in ("tcp", "udp")]
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        options = tap.Options(stdout=self.stdout, stderr=self.stderr,
                              discover=lambda: Discovery(dict(PROVIDERS), {}),
                              preflight=lambda listeners: failures)
        options.parent = {"pidfile": None}
        self.assertEqual(self.assertRaises(SystemExit, options.parseOptions, []).code, 1)
        self.assertEqual(self.stderr.getvalue().splitlines(), [
            "portserver: cannot listen for service 'echo': echo/tcp 127.0.0.1:7: "
            "[Errno 13] Permission denied",
            "cannot listen for service 'echo': echo/udp 127.0.0.1:7: "
            "[Errno 13] Permission denied",
            "  REMEDY"])

    def test_noPreflightOutsideTwistd(self):
        """
        Parsed outside twistd (no parent options), nothing is bound or probed.
        """
        probed = []
        options = tap.Options(stdout=io.StringIO(), stderr=io.StringIO(),
                              discover=lambda: Discovery(dict(PROVIDERS), {}),
                              preflight=probed.append)
        options.parseOptions([])
        self.assertEqual(probed, [])

    def test_checkWarnsWhenPrivilegedPortsCannotBeBound(self):
        """
        C{--check} by a user who may not bind privileged ports warns once, naming the
        ports and the remedies, and still exits 0 for a valid config; a user who may
        gets no warning.
        """
        for able, warned in ((False, True), (True, False)):
            self.stdout, self.stderr = io.StringIO(), io.StringIO()
            options = tap.Options(stdout=self.stdout, stderr=self.stderr,
                                  discover=lambda: Discovery(dict(PROVIDERS), {}),
                                  canBindPrivileged=lambda: able)
            code = self.assertRaises(SystemExit, options.parseOptions, ["--check"]).code
            self.assertEqual(code, 0)
            out = self.stdout.getvalue()
            self.assertEqual("privileged port(s) (7, 9, 13, 17, 19, 37; below" in out,
                             warned)
            self.assertEqual(out.count("setcap"), int(warned))
            self.assertIn("configuration is valid", out)

    def test_missingConfigFile(self):
        """
        A config path that does not exist is one line naming it and the reason, without
        a made-up position in it.
        """
        missing = os.path.abspath(self.mktemp())
        self.assertEqual(self.exitCode("--config", missing), 1)
        self.assertEqual(self.stderr.getvalue(), f"portserver: {missing}: cannot read the "
                                                 "config file: No such file or directory\n")
        self.assertNotIn(":1:1", self.stderr.getvalue())

    def test_listProtocols(self):
        """
        C{--list-protocols} prints each protocol's name, port, transports and description,
        and exits 0.
        """
        self.assertEqual(self.exitCode("--list-protocols"), 0)
        lines = self.stdout.getvalue().splitlines()
        self.assertEqual(lines[0].split()[:3], ["NAME", "PORT", "TRANSPORTS"])
        self.assertEqual([l.split()[0] for l in lines[1:]],
                         ["echo", "discard", "daytime", "qotd", "chargen", "time"])
        self.assertIn("RFC 862", lines[1])

    def test_duplicateProtocolsStopStartup(self):
        """
        Two plugins with one name stop start-up with the discovery's message.
        """
        def discover():
            raise DuplicateProtocolError("protocol 'echo' is provided twice: by a.x and by b.y")
        self.assertEqual(self.exitCode("--check", discover=discover), 1)
        self.assertIn("by a.x and by b.y", self.stderr.getvalue())

    def test_portOffsetRange(self):
        """
        A negative or too large C{--port-offset} is a usage error.
        """
        self.assertRaises(usage.UsageError, self.options, "--port-offset", "-1")
        self.assertRaises(usage.UsageError, self.options, "--port-offset", "64512")

    def test_defaultConfigIsBundled(self):
        """
        Without C{--config}, the bundled C{etc/portserver.yaml} is planned.
        """
        options = self.options()
        self.assertEqual(os.path.basename(options["config"]), "portserver.yaml")
        self.assertEqual(options["config"], tap.bundledConfigPath())
        self.assertEqual(len(options["plan"].listeners), 12)

    def test_makeServiceUsesInjectedReactor(self):
        """
        C{makeService} builds a tree holding a L{PortServer} of the plan, on the reactor
        given.
        """
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        reactor = PortReactor()
        service = tap.makeService(self.options("--port-offset", "20000"), reactor=reactor)
        self.assertIsInstance(service.getServiceNamed("portserver"), PortServer)
        service.privilegedStartService()
        self.assertIn((20007, "127.0.0.1"), [(p, i) for p, _, _, i in reactor.tcpServers])


class ExceptHookTests(SynchronousTestCase):
    """
    The hook C{makeService} installs shows a start-up failure as its message alone.
    """

    def test_startupErrorIsAMessage(self):
        """
        A L{StartupError} reaching the top is logged as one critical event,
        "portserver: <message>" (not a "[stderr#error]" line per line, nor a traceback);
        other exceptions go to the previous hook.
        """
        from twisted.logger import LogLevel, formatEvent, globalLogPublisher

        from portserver.startup import StartupError

        seen, events = [], []
        hook = tap._startupExceptHook(lambda *args: seen.append(args[0]))
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        hook(StartupError, StartupError("cannot listen for service 'echo'\n  remedy"), None)
        self.assertEqual([(e["log_level"], formatEvent(e)) for e in events],
                         [(LogLevel.critical,
                           "portserver: cannot listen for service 'echo'\n  remedy")])
        hook(KeyError, KeyError("x"), None)
        self.assertEqual(seen, [KeyError])


class ServiceTreeTests(SynchronousTestCase):
    """
    The tree C{makeService} builds: SIGHUP taken first, the runtime file written last.
    """

    def options(self, pidfile=None):
        options = tap.Options(stdout=io.StringIO(), stderr=io.StringIO(),
                              discover=lambda: Discovery(dict(PROVIDERS), {}))
        options.parseOptions(["--port-offset", "20000"])
        if pidfile is not None:
            options.parent = {"pidfile": pidfile}  # as twistd's ServerOptions would be
        return options

    def test_reloadSignalFirst(self):
        """
        The C{reload-signal} service comes first, so it takes SIGHUP before any other
        service binds a port; on an injected reactor it leaves the process's signals
        alone. Without a pid file there is no runtime file.
        """
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        tree = tap.makeService(self.options(), reactor=PortReactor())
        names = [s.name for s in tree]
        self.assertEqual(names[0], "reload-signal")
        self.assertNotIn("runtime-file", names)
        self.assertIsNone(tree.getServiceNamed("reload-signal")._install)

    def test_runtimeFileBesideThePidFile(self):
        """
        Run by twistd with a pid file, the tree ends with the C{runtime-file} service,
        which writes the pid, the absolute config path and the status service's actual
        URL beside the pid file once started, and removes the file when stopped.
        """
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        pidfile = os.path.join(directory, "twistd.pid")
        reactor = PortReactor()
        tree = tap.makeService(self.options(pidfile), reactor=reactor)
        self.assertEqual([s.name for s in tree][-2:], ["status", "runtime-file"])
        tree.privilegedStartService()
        tree.startService()
        path = os.path.join(directory, "twistd.portserver.json")
        with open(path) as f:
            content = json.load(f)
        self.assertEqual(content, {"pid": os.getpid(), "config": tap.bundledConfigPath(),
                                   "status_url": "http://127.0.0.1:8790",
                                   "pidfile": pidfile})
        tree.stopService()
        self.assertFalse(os.path.exists(path))

    def test_twistdPidfile(self):
        """
        L{tap.twistdPidfile} is the parent (twistd) options' C{pidfile}, or L{None}
        for C{--pidfile=}, for options with no parent, and for a plain dict.
        """
        options = self.options("run/x.pid")
        self.assertEqual(tap.twistdPidfile(options), os.path.abspath("run/x.pid"))
        self.assertIsNone(tap.twistdPidfile(self.options("")))
        self.assertIsNone(tap.twistdPidfile(self.options()))
        self.assertIsNone(tap.twistdPidfile({"plan": None}))


class HandOverTests(SynchronousTestCase):
    """
    Under C{--uid}/C{--gid}, twistd's own files are given to the user it drops to.
    """

    def test_filesGivenAndUnwritableDirectoryWarned(self):
        """
        The log and pid files that exist are given to the uid and gid (missing ones
        skipped), before the drop; a directory the user cannot write is a warning
        naming it.
        """
        from twisted.logger import capturedLogs
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        os.chmod(directory, 0o755)
        logfile, pidfile = (os.path.join(directory, n) for n in ("twistd.log", "twistd.pid"))
        for path in (logfile, pidfile):
            with open(path, "w"):
                pass
        calls = []
        handOver = tap.HandOver([logfile, pidfile, os.path.join(directory, "gone")],
                                os.stat(directory).st_uid + 4242, 4242,
                                chown=lambda *args: calls.append(args))
        with capturedLogs() as events:
            handOver.privilegedStartService()
        uid = os.stat(directory).st_uid + 4242
        self.assertEqual(calls, [(logfile, uid, 4242), (pidfile, uid, 4242)])
        warned = [e for e in events if "is not writable by uid" in e.get("log_format", "")]
        self.assertEqual([e["path"] for e in warned], [logfile, pidfile])

    def test_twistdFiles(self):
        """
        The files are twistd's log file (not C{-}) and pid file, as absolute paths.
        """
        class Options(dict):
            parent = {"logfile": "twistd.log", "pidfile": "twistd.pid", "syslog": False}
        self.assertEqual(tap.twistdFiles(Options()),
                         [os.path.abspath("twistd.log"), os.path.abspath("twistd.pid")])
        Options.parent = {"logfile": "-", "pidfile": "", "syslog": False}
        self.assertEqual(tap.twistdFiles(Options()), [])
