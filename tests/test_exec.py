"""
Tests for L{portserver.protocols.execute}, the C{exec} protocol: option checks, the
protocol against a fake reactor, and real programs behind a real listener.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from types import SimpleNamespace

import attrs

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from portserver.config import parseConfig
from portserver.interfaces import IPortProtocol
from portserver.limits import LIMITS_SCHEMA, Limits
from portserver.options import OptionsError, checkOptions
from portserver.protocols import execute as module
from portserver.protocols.execute import (
    CHILD_FDS,
    CONNECTION_VARIABLES,
    DEFAULT_PATH,
    PrivilegeError,
    StderrBudget,
    StderrLines,
    execute,
)
from portserver.protocols.process_group import ProgramGroups
from portserver.server import PortServer
from portserver.startup import StartupError
from tests.support import makePlan, spec

DEADLINE = 10  # seconds a real program may take on a loaded machine
PROVIDERS = {execute.name: execute}
HOST = IPv4Address("TCP", "10.0.0.1", 8023)
PEER = IPv4Address("TCP", "192.0.2.7", 40001)
CAT = ["/bin/cat"]


def problemsOf(test, options) -> dict:
    """
    The problems C{exec} finds in C{options}, as C{{option: message}}.
    """
    error = test.assertRaises(OptionsError, execute.validateOptions, options)
    return {p.option: p.message for p in error.problems}


def executableFile(test, name="prog", mode=0o755) -> str:
    """
    A new file C{name} in a new directory, with permissions C{mode}.
    """
    directory = test.mktemp()
    os.mkdir(directory)
    path = os.path.abspath(os.path.join(directory, name))
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, mode)
    return path


# -- a fake process for a fake reactor ---------------------------------------------------


@implementer(IProcessTransport)
class FakeProcess:
    """
    The L{IProcessTransport} side of a spawned program, recording what it is asked.
    """

    def __init__(self, proto, pid=4242, reactor=None):
        self.pid = pid
        self.reactor = reactor
        self.proto = proto
        self.written = []
        self.closed = set()
        self.producer = None
        self.streaming = None
        self.paused = False
        self.exited = False
        proto.makeConnection(self)

    # what ExecProtocol uses
    def write(self, data):
        self.written.append(data)

    def writeSequence(self, data):
        self.written.extend(data)

    def closeStdin(self):
        self.closeChildFD(0)

    def closeStdout(self):
        self.closeChildFD(1)

    def closeStderr(self):
        self.closeChildFD(2)

    def closeChildFD(self, descriptor):
        self.closed.add(descriptor)

    def writeToChild(self, childFD, data):
        self.written.append(data)

    def loseConnection(self):
        self.closed.update({0, 1, 2})

    def signalProcess(self, signalID):
        raise AssertionError("exec signals the program's group, never the program alone")

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def registerProducer(self, producer, streaming):
        assert self.producer is None, "a producer is registered already"
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self):
        self.producer = self.streaming = None

    def getPeer(self):
        return object()

    def getHost(self):
        return object()

    # what a test drives
    @property
    def signals(self):
        """
        The names of the signals sent to this program's process group (not the C{0} of
        a check).
        """
        return [signal.Signals(number).name[3:]
                for pgid, number in self.reactor.signalled if pgid == self.pid and number]

    def exit(self, reason, leftovers=0):
        """
        The program exits with C{reason}, leaving C{leftovers} processes it started in
        its group; its pipes close, as Twisted reports it.
        """
        self.exited = True
        self.reactor.members[self.pid] = leftovers
        self.proto.processExited(Failure(reason))
        for fd in (0, 1, 2):
            self.proto.childConnectionLost(fd)
        self.proto.processEnded(Failure(reason))


class ProcessReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that is also the factory's spawner (the
    L{portserver.protocols.process_group.SessionSpawner} interface): it records
    C{spawn} calls and answers with a L{FakeProcess} (or raises C{self.spawnError}), and
    records C{killpg} calls, raising L{ProcessLookupError} for a group with no member
    left (C{members}: pgid -> processes in it; C{SIGKILL} empties it).
    """

    def __init__(self):
        super().__init__()
        self.spawned = []
        self.spawnError = None
        self.signalled = []
        self.members = {}
        self.ungrouped = set()  # pids not yet in a group of their own (before setsid)
        self.nextPid = 4242

    def spawn(self, reactor, processProtocol, executable, args, env, path, uid, gid,
              childFDs):
        assert reactor is self
        if self.spawnError is not None:
            raise self.spawnError
        pid, self.nextPid = self.nextPid, self.nextPid + 1
        self.members[pid] = 1
        process = FakeProcess(processProtocol, pid, self)
        self.spawned.append(SimpleNamespace(
            protocol=processProtocol, executable=executable, args=list(args),
            env=dict(env), path=path, uid=uid, gid=gid, childFDs=childFDs,
            process=process))
        return process

    def killpg(self, pgid, number):
        self.signalled.append((pgid, number))
        if not self.members.get(pgid) or pgid in self.ungrouped:
            raise ProcessLookupError(3, "No such process")
        if number == signal.SIGKILL:
            self.members[pgid] = 0

    def kill(self, pid, number):
        self.signalled.append((-pid, number))  # negative: the program alone
        if not self.members.get(pid):
            raise ProcessLookupError(3, "No such process")


def service(options, name="svc"):
    """
    A stand-in for a configured service: the builder reads C{name} and C{options}.
    """
    return SimpleNamespace(name=name, options=execute.validateOptions(options))


class Transport(StringTransport):
    """
    A L{StringTransport} that can half-close, as a TCP connection's (or a Tracker's) can.
    """

    writeClosed = False

    def loseWriteConnection(self):
        self.writeClosed = True


def hasIPv6Loopback() -> bool:
    """
    Whether a socket can be bound on ::1 here.
    """
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def connect(options=None, reactor=None, host=HOST, peer=PEER):
    """
    Build the C{exec} factory on a L{ProcessReactor} and connect one protocol to a
    L{StringTransport} from C{peer} to C{host}.

    @return: C{(reactor, protocol, transport)}.
    """
    reactor = reactor or ProcessReactor()
    factory = execute.buildFactory(service(options or {"argv": CAT}), reactor)
    factory.spawner = reactor
    protocol = factory.buildProtocol(peer)
    transport = Transport(hostAddress=host, peerAddress=peer)
    protocol.makeConnection(transport)
    return reactor, protocol, transport


class ProviderTests(SynchronousTestCase):
    """
    The C{exec} provider's declaration.
    """

    def test_declaration(self):
        """
        C{exec} is a TCP-only L{IPortProtocol} plugin on unprivileged port 8023.
        """
        verifyObject(IPortProtocol, execute)
        verifyObject(IPlugin, execute)
        self.assertEqual(execute.name, "exec")
        self.assertEqual(execute.wellKnownPort, 8023)
        self.assertEqual(execute.transports, frozenset({"tcp"}))
        self.assertTrue(execute.description)


class OptionTests(SynchronousTestCase):
    """
    C{exec}'s options are checked, each problem naming its option.
    """

    def test_defaults(self):
        """
        With only C{argv}, the defaults are filled in and the program is resolved to
        its absolute path.
        """
        options = execute.validateOptions({"argv": CAT})
        self.assertEqual(options, {
            "argv": CAT, "executable": "/bin/cat", "env": {}, "user": None,
            "group": None, "cwd": None, "kill_grace": 5, "eof_grace": 10,
            "local_host": None})

    def test_revalidate(self):
        """
        Checked options pass the check again unchanged (C{executable} is an option).
        """
        options = execute.validateOptions({"argv": ["cat", "-u"]})
        self.assertEqual(execute.validateOptions(options), options)

    def test_argvRequired(self):
        """
        C{argv} is required.
        """
        self.assertIn("is required", problemsOf(self, {})["argv"])

    def test_argvNotEmpty(self):
        """
        An empty C{argv}, or an empty program name, is refused.
        """
        self.assertIn("argv", problemsOf(self, {"argv": []}))
        self.assertIn("argv", problemsOf(self, {"argv": [""]}))

    def test_argvNotAString(self):
        """
        C{argv} is a list, never a shell command string; and each item is a string.
        """
        self.assertIn("must be a list", problemsOf(self, {"argv": "/bin/cat -u"})["argv"])
        self.assertIn("item 2", problemsOf(self, {"argv": ["/bin/sleep", 5]})["argv"])

    def test_missingProgram(self):
        """
        An absolute program that does not exist is refused, naming it.
        """
        message = problemsOf(self, {"argv": ["/nonexistent/program"]})["argv"]
        self.assertIn("'/nonexistent/program' does not exist", message)

    def test_nonExecutableProgram(self):
        """
        A file without execute permission is refused, and so is a directory.
        """
        path = executableFile(self, mode=0o644)
        self.assertIn("is not an executable file", problemsOf(self, {"argv": [path]})["argv"])
        self.assertIn("is not an executable file",
                      problemsOf(self, {"argv": [os.path.dirname(path)]})["argv"])

    def test_relativePathRefused(self):
        """
        A program path with a slash that is not absolute is refused: it would depend on
        the directory the server was started in.
        """
        self.assertIn("absolute path", problemsOf(self, {"argv": ["bin/prog"]})["argv"])

    def test_bareNameOnDefaultPath(self):
        """
        A bare program name is looked up on the default C{PATH}.
        """
        options = execute.validateOptions({"argv": ["sh", "-c", "true"]})
        self.assertTrue(os.path.isabs(options["executable"]))
        self.assertEqual(os.path.basename(options["executable"]), "sh")
        self.assertEqual(options["argv"], ["sh", "-c", "true"])

    def test_bareNameOnConfiguredPath(self):
        """
        A bare program name is looked up on the C{PATH} that C{env} gives the program,
        not on the server's.
        """
        path = executableFile(self, name="portserver-test-prog")
        options = execute.validateOptions(
            {"argv": ["portserver-test-prog"], "env": {"PATH": os.path.dirname(path)}})
        self.assertEqual(options["executable"], path)

    def test_bareNameNotFound(self):
        """
        A bare name found nowhere on the C{PATH} is refused, naming the C{PATH}.
        """
        message = problemsOf(self, {"argv": ["no-such-program-for-portserver"]})["argv"]
        self.assertIn("no executable 'no-such-program-for-portserver'", message)
        self.assertIn(DEFAULT_PATH, message)

    def test_executable(self):
        """
        C{executable} runs another file than C{argv[0]} names, as inetd's server-program
        field does; it is checked like the program.
        """
        options = execute.validateOptions({"argv": ["-sh"], "executable": "/bin/sh"})
        self.assertEqual((options["executable"], options["argv"]), ("/bin/sh", ["-sh"]))
        self.assertIn("executable", problemsOf(
            self, {"argv": ["x"], "executable": "/nonexistent/sh"}))

    def test_badUser(self):
        """
        A user or group that does not exist on this host is refused.
        """
        self.assertIn("no user", problemsOf(
            self, {"argv": CAT, "user": "no-such-user-for-portserver"})["user"])
        self.assertIn("no group", problemsOf(
            self, {"argv": CAT, "group": "no-such-group-for-portserver"})["group"])
        self.assertIn("user", problemsOf(self, {"argv": CAT, "user": -1}))
        self.assertIn("user", problemsOf(self, {"argv": CAT, "user": True}))

    def test_goodUser(self):
        """
        A user and group are accepted by name or number.
        """
        nobody = pwd.getpwnam("nobody")
        self.patch(os, "geteuid", lambda: 0)
        self.patch(os, "getegid", lambda: 0)
        execute.validateOptions({"argv": CAT, "user": "nobody", "group": nobody.pw_gid})
        execute.validateOptions({"argv": CAT, "user": nobody.pw_uid})

    def test_badKillGrace(self):
        """
        C{kill_grace} is a finite number of seconds, 0 or more.
        """
        for value in (-1, "soon", True, float("nan"), float("inf")):
            self.assertIn("kill_grace", problemsOf(self, {"argv": CAT, "kill_grace": value}),
                          value)
        self.assertEqual(
            execute.validateOptions({"argv": CAT, "kill_grace": 0.5})["kill_grace"], 0.5)

    def test_env(self):
        """
        C{env} maps names to strings, and may not set a per-connection variable.
        """
        self.assertIn("string", problemsOf(
            self, {"argv": CAT, "env": {"DEBUG": 1}})["env"])
        self.assertIn("set by portserver", problemsOf(
            self, {"argv": CAT, "env": {"TCPREMOTEIP": "1.2.3.4"}})["env"])
        self.assertIn("local_host", problemsOf(
            self, {"argv": CAT, "env": {"TCPLOCALHOST": "x"}})["env"])
        self.assertIn("env", problemsOf(self, {"argv": CAT, "env": {"A=B": "c"}}))

    def test_cwd(self):
        """
        C{cwd} is an existing directory, given as an absolute path.
        """
        self.assertIn("not a directory", problemsOf(
            self, {"argv": CAT, "cwd": "/nonexistent/dir"})["cwd"])
        self.assertIn("absolute", problemsOf(self, {"argv": CAT, "cwd": "tmp"})["cwd"])
        self.assertEqual(execute.validateOptions({"argv": CAT, "cwd": "/"})["cwd"], "/")

    def test_everyProblem(self):
        """
        Every problem of the options taken one by one is reported at once: an unknown
        option, a bad C{env}, a bad C{argv} and a missing C{executable} together.
        """
        problems = problemsOf(self, {"argv": ["/bin/sleep", 5], "env": {"X": 1},
                                     "executable": "/nonexistent/x", "shell": "yes"})
        self.assertEqual(set(problems), {"argv", "env", "executable", "shell"})

    def test_everyProblemBetweenOptions(self):
        """
        Once each option is fine on its own, the problems between options are reported
        together: a program not found on the C{PATH} that C{env} gives, and a C{group}
        without a C{user}.
        """
        problems = problemsOf(self, {"argv": ["no-such-program-for-portserver"],
                                     "env": {"PATH": "/nonexistent"}, "group": 0})
        self.assertEqual(set(problems), {"argv", "group"})
        self.assertIn("on PATH /nonexistent", problems["argv"])

    def test_notAMapping(self):
        """
        Options that are not a mapping are refused as a whole.
        """
        self.assertEqual(problemsOf(self, ["argv"]), {None: "options must be a mapping"})


class CredentialTests(SynchronousTestCase):
    """
    Running the program as another user or group.
    """

    def setUp(self):
        self.nobody = pwd.getpwnam("nobody")

    def asUid(self, uid, gid=None):
        self.patch(os, "geteuid", lambda: uid)
        self.patch(os, "getegid", lambda: uid if gid is None else gid)

    def test_userAndPrimaryGroup(self):
        """
        As root, C{user} alone runs the program as the user and the user's primary group.
        """
        self.asUid(0)
        reactor, protocol, transport = connect({"argv": CAT, "user": "nobody"})
        spawned = reactor.spawned[0]
        self.assertEqual((spawned.uid, spawned.gid),
                         (self.nobody.pw_uid, self.nobody.pw_gid))

    def test_group(self):
        """
        C{group} overrides the user's primary group.
        """
        self.asUid(0)
        reactor, protocol, transport = connect({"argv": CAT, "user": "nobody", "group": 0})
        self.assertEqual((reactor.spawned[0].uid, reactor.spawned[0].gid),
                         (self.nobody.pw_uid, 0))

    def test_groupNeedsUser(self):
        """
        C{group} alone is refused: the group is switched only together with the user.
        """
        self.assertIn("needs a user", problemsOf(self, {"argv": CAT, "group": 0})["group"])

    def test_onlyGroupWouldChange(self):
        """
        As root, C{user: root} with another group is refused when building (Twisted's
        child would warn, maybe onto the program's stdout); with root's group it is no
        switch at all.
        """
        self.asUid(0)
        self.assertIn("only its group", problemsOf(
            self, {"argv": CAT, "user": "root", "group": self.nobody.pw_gid})["user"])
        reactor, protocol, transport = connect({"argv": CAT, "user": "root", "group": 0})
        self.assertEqual((reactor.spawned[0].uid, reactor.spawned[0].gid), (None, None))

    def test_noUser(self):
        """
        Without C{user} and C{group}, no uid or gid is given: the program runs as the
        server does.
        """
        reactor, protocol, transport = connect()
        self.assertEqual((reactor.spawned[0].uid, reactor.spawned[0].gid), (None, None))

    def test_otherUserNotRoot(self):
        """
        A process that is not root refuses a service that runs as another user when
        checking the options (C{--check}, a reload after C{twistd --uid}), and refuses
        to build it from options checked as root, with a message saying why.
        """
        self.asUid(0)
        checked = service({"argv": CAT, "user": "nobody"})
        self.asUid(1000)
        message = problemsOf(self, {"argv": CAT, "user": "nobody"})["user"]
        self.assertIn(f"uid {self.nobody.pw_uid}", message)
        self.assertIn("not root", message)
        error = self.assertRaises(
            PrivilegeError, execute.buildFactory, checked, ProcessReactor())
        self.assertIn("not root", str(error))

    def test_configErrorLocated(self):
        """
        Through the config loader, a C{user} a non-root server cannot switch to is a
        located error naming the file, line, service and option.
        """
        self.asUid(1000)
        _, _, _, _, problems = parseConfig(
            "services:\n"
            "  - name: asnobody\n"
            "    protocol: exec\n"
            "    options: {argv: [/bin/cat], user: nobody}\n", "x.yaml", PROVIDERS)
        [problem] = [str(p) for p in problems]
        self.assertIn("x.yaml:", problem)
        self.assertIn("'asnobody'", problem)
        self.assertIn("'user'", problem)
        self.assertIn("not root", problem)

    def test_droppedBeforeRunning(self):
        """
        Built as root, then dropped to another uid before the reactor runs (C{twistd
        --uid}): once running, an error naming the service is logged at once, not only
        at each connection.
        """
        self.asUid(0)
        reactor = ProcessReactor()
        execute.buildFactory(service({"argv": CAT, "user": "nobody"}, name="drop"),
                             reactor)
        self.asUid(1000)
        with capturedLogs() as events:
            reactor.run()
        [event] = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(event["service"], "drop")
        self.assertIn("not root", event["error"])

    def test_sameUserNotRoot(self):
        """
        A server already running as the configured user and group needs no switch: no
        uid or gid is given (Twisted would try to become root first).
        """
        self.asUid(self.nobody.pw_uid, self.nobody.pw_gid)
        reactor, protocol, transport = connect({"argv": CAT, "user": "nobody"})
        self.assertEqual((reactor.spawned[0].uid, reactor.spawned[0].gid), (None, None))

    def test_privilegesDroppedAfterBuild(self):
        """
        Built as root, then running as another user (C{twistd --uid}): a connection is
        closed and the reason logged, and nothing is spawned.
        """
        self.asUid(0)
        reactor = ProcessReactor()
        factory = execute.buildFactory(service({"argv": CAT, "user": "nobody"}), reactor)
        self.asUid(1000)
        protocol = factory.buildProtocol(PEER)
        transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
        with capturedLogs() as events:
            protocol.makeConnection(transport)
        self.assertEqual(reactor.spawned, [])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(any("not root" in e.get("error", "") for e in events))


class ProtocolTests(SynchronousTestCase):
    """
    One connection against a fake reactor and a fake process.
    """

    def test_spawn(self):
        """
        The program is spawned with the resolved executable, C{argv} as given, pipes for
        stdin, stdout and stderr, and C{cwd}.
        """
        reactor, protocol, transport = connect(
            {"argv": ["cat", "-u"], "cwd": "/", "kill_grace": 1})
        [spawned] = reactor.spawned
        self.assertEqual(spawned.executable, module.resolveProgram("cat", DEFAULT_PATH)[0])
        self.assertEqual(spawned.args, ["cat", "-u"])
        self.assertEqual(spawned.childFDs, {0: "w", 1: "r", 2: "r"})
        self.assertEqual(spawned.childFDs, CHILD_FDS)
        self.assertEqual(spawned.path, "/")

    def test_environment(self):
        """
        The program's environment is exactly C{PATH} and tcpserver -H's variables: no
        TCPREMOTEHOST, no TCPLOCALHOST, and nothing of the server's environment.
        """
        reactor, protocol, transport = connect()
        self.assertEqual(reactor.spawned[0].env, {
            "PATH": DEFAULT_PATH, "PROTO": "TCP",
            "TCPLOCALIP": "10.0.0.1", "TCPLOCALPORT": "8023",
            "TCPREMOTEIP": "192.0.2.7", "TCPREMOTEPORT": "40001",
        })

    def test_environmentConfigured(self):
        """
        C{env} adds variables and may replace C{PATH}; C{local_host} sets TCPLOCALHOST.
        """
        reactor, protocol, transport = connect({
            "argv": CAT, "env": {"PATH": "/bin", "LANG": "C.UTF-8"},
            "local_host": "ports.example"})
        env = reactor.spawned[0].env
        self.assertEqual(env["PATH"], "/bin")
        self.assertEqual(env["LANG"], "C.UTF-8")
        self.assertEqual(env["TCPLOCALHOST"], "ports.example")

    def test_environmentMappedIPv6(self):
        """
        On a dual-stack listener, IPv4 peers (IPv4-mapped IPv6 addresses) are shown as
        IPv4; IPv6 peers as they are.
        """
        reactor, protocol, transport = connect(
            host=IPv6Address("TCP", "::ffff:10.0.0.1", 8023),
            peer=IPv6Address("TCP", "::ffff:192.0.2.7", 40001))
        env = reactor.spawned[0].env
        self.assertEqual((env["TCPLOCALIP"], env["TCPREMOTEIP"]), ("10.0.0.1", "192.0.2.7"))
        self.assertEqual(env["PROTO"], "TCP")
        self.assertNotIn("TCP6REMOTEIP", env)
        reactor, protocol, transport = connect(
            host=IPv6Address("TCP", "::1", 8023), peer=IPv6Address("TCP", "2001:db8::7", 5))
        env = reactor.spawned[0].env
        self.assertEqual((env["TCPLOCALIP"], env["TCPREMOTEIP"], env["TCPREMOTEPORT"]),
                         ("::1", "2001:db8::7", "5"))
        self.assertEqual(protocol.peer, "[2001:db8::7]:5")

    def test_environmentIPv6AsUcspiTcp6(self):
        """
        On IPv6, the variables are ucspi-tcp6's: PROTO=TCP6 and TCP6LOCALIP,
        TCP6LOCALPORT, TCP6REMOTEIP, TCP6REMOTEPORT (TCP6LOCALHOST with local_host), with
        the TCP* names holding the same values, as Debian's C{tcpserver -6} sets them;
        a link-local peer adds TCP6INTERFACE. C{env} may not set any of them.
        """
        reactor, protocol, transport = connect(
            {"argv": CAT, "local_host": "ports.example"},
            host=IPv6Address("TCP", "::1", 8023), peer=IPv6Address("TCP", "2001:db8::7", 5))
        env = reactor.spawned[0].env
        self.assertEqual(env, {
            "PATH": DEFAULT_PATH, "PROTO": "TCP6",
            "TCP6LOCALIP": "::1", "TCP6LOCALPORT": "8023", "TCP6LOCALHOST": "ports.example",
            "TCP6REMOTEIP": "2001:db8::7", "TCP6REMOTEPORT": "5",
            "TCPLOCALIP": "::1", "TCPLOCALPORT": "8023", "TCPLOCALHOST": "ports.example",
            "TCPREMOTEIP": "2001:db8::7", "TCPREMOTEPORT": "5"})
        self.assertEqual(env[env["PROTO"] + "REMOTEIP"], "2001:db8::7")
        reactor, protocol, transport = connect(
            host=IPv6Address("TCP", "fe80::1%lo", 8023),
            peer=IPv6Address("TCP", "fe80::2%lo", 5))
        env = reactor.spawned[0].env
        self.assertEqual((env["TCP6REMOTEIP"], env["TCP6INTERFACE"]), ("fe80::2", "lo"))
        for name in ("TCP6REMOTEIP", "TCP6INTERFACE", "TCP6LOCALHOST"):
            self.assertIn(name, CONNECTION_VARIABLES)

    def test_relay(self):
        """
        What the client sends is written to the program's stdin; what the program writes
        to stdout goes to the client.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        protocol.dataReceived(b"hello ")
        protocol.dataReceived(b"world")
        self.assertEqual(b"".join(process.written), b"hello world")
        process.proto.childDataReceived(1, b"HELLO")
        self.assertEqual(transport.value(), b"HELLO")

    def test_halfClose(self):
        """
        The client's half-close closes the program's stdin (and no longer lets the stdin
        pipe pause the client); the program's output still reaches the client, and its end
        closes the connection.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        protocol.readConnectionLost()
        protocol.readConnectionLost()  # a second notice changes nothing
        self.assertEqual(process.closed, {0})
        self.assertIsNone(process.producer)
        process.proto.childDataReceived(1, b"late output")
        self.assertEqual(transport.value(), b"late output")
        self.assertFalse(transport.disconnecting)
        process.exit(ProcessDone(0))
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)

    def test_outputEndHalfCloses(self):
        """
        When the program closes its stdout but runs on, the client gets what was written
        and then a half-close (end of output), with the program's producer unregistered;
        the program still gets what the client sends, and its exit closes the connection.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        self.assertIsNotNone(transport.producer)
        process.proto.childDataReceived(1, b"bye")
        process.proto.childConnectionLost(1)
        self.assertEqual(transport.value(), b"bye")
        self.assertTrue(transport.writeClosed)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(transport.producer)
        protocol.dataReceived(b"more")
        self.assertEqual(process.written, [b"more"])
        process.proto.processExited(Failure(ProcessDone(0)))
        self.assertTrue(transport.disconnecting)

    def test_exitThenOutputEnd(self):
        """
        When the program has exited, the end of its stdout closes the connection (after
        what was written); the exit alone does not, as output may still be in the pipe.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        process.proto.processExited(Failure(ProcessDone(0)))
        self.assertFalse(transport.disconnecting)
        process.proto.childDataReceived(1, b"last words")
        process.proto.childConnectionLost(1)
        self.assertEqual(transport.value(), b"last words")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.writeClosed)
        self.assertIsNone(transport.producer)

    def test_clientPausesOutput(self):
        """
        The program's output is a streaming producer for the client's connection: when
        the client stops reading, reading the program's stdout is paused, and resumed.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        self.assertTrue(transport.streaming)
        transport.producer.pauseProducing()
        self.assertTrue(process.paused)
        transport.producer.resumeProducing()
        self.assertFalse(process.paused)

    def test_stdinPausesClient(self):
        """
        The client's connection is a streaming producer for the program's stdin: when the
        stdin pipe is full the client is paused, and resumed when it drains.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        self.assertTrue(process.streaming)
        process.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        process.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_stdinGone(self):
        """
        When the program's stdin pipe closes, the client is resumed (what it sends now
        is dropped) and the connection is not closed: the program may write on.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        process.producer.pauseProducing()
        process.producer.stopProducing()
        process.proto.childConnectionLost(0)
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(transport.disconnecting)

    def test_termThenKill(self):
        """
        When the client goes away, the program gets SIGTERM, then SIGKILL once
        C{kill_grace} seconds have passed and it is still running.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 2})
        process = reactor.spawned[0].process
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(process.signals, ["TERM"])
        self.assertEqual(process.closed, {0, 1})  # stdin and stdout; stderr still read
        reactor.advance(1.9)
        self.assertEqual(process.signals, ["TERM"])
        with capturedLogs() as events:
            reactor.advance(0.1)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertTrue(any("SIGKILL" in e["log_format"] for e in events))
        process.exit(ProcessTerminated(None, signal.SIGKILL, signal.SIGKILL))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_noKillAfterExit(self):
        """
        A program that exits on SIGTERM is not sent SIGKILL: the timer is cancelled.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 2})
        process = reactor.spawned[0].process
        protocol.connectionLost(Failure(Exception("gone")))
        process.exit(ProcessTerminated(None, signal.SIGTERM, signal.SIGTERM))
        self.assertEqual(reactor.getDelayedCalls(), [])
        reactor.advance(10)
        self.assertEqual(process.signals, ["TERM"])

    def test_noSignalAfterEnd(self):
        """
        A program that ended before the client went away gets no signal.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        process.exit(ProcessDone(0))
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(process.signals, [])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_exitedAlready(self):
        """
        A program gone before it is reaped, and its group with it, gets no SIGKILL
        timer, and is not signalled again.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        reactor.members[process.pid] = 0
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(reactor.getDelayedCalls(), [])
        process.exit(ProcessTerminated(None, signal.SIGTERM, signal.SIGTERM))
        self.assertEqual(reactor.signalled, [(process.pid, signal.SIGTERM),
                                             (-process.pid, signal.SIGTERM)])
        self.assertEqual(protocol.group.state, "gone")

    def test_beforeSetsid(self):
        """
        A program whose group does not exist yet (just forked, before its setsid()) is
        signalled alone, and its group still gets SIGKILL after C{kill_grace}: a
        connection closed at once cannot leave its program running.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 1})
        process = reactor.spawned[0].process
        reactor.ungrouped.add(process.pid)
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(reactor.signalled, [(process.pid, signal.SIGTERM),
                                             (-process.pid, signal.SIGTERM)])
        self.assertEqual(protocol.group.state, "ending")
        reactor.ungrouped.clear()
        reactor.advance(1)
        self.assertEqual(process.signals, ["TERM", "KILL"])

    def test_groupSignalled(self):
        """
        The signals go to the program's process group (its pid), so that what it started
        gets them too.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 1})
        process = reactor.spawned[0].process
        protocol.connectionLost(Failure(Exception("gone")))
        reactor.advance(1)
        self.assertEqual(reactor.signalled, [
            (process.pid, signal.SIGTERM), (process.pid, 0), (process.pid, signal.SIGKILL)])

    def test_leftoversEndedWithConnection(self):
        """
        A program that exits leaving a process it started in its group (which holds
        nothing of the connection): when the connection closes, the group gets SIGTERM,
        then SIGKILL after C{kill_grace}.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 3})
        process = reactor.spawned[0].process
        process.exit(ProcessDone(0), leftovers=1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(process.signals, [])
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(process.signals, ["TERM"])
        reactor.advance(3)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertEqual(protocol.group.state, "gone")
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_leftoversGoneBeforeKill(self):
        """
        Leftovers that end on SIGTERM are not sent SIGKILL: the group is found empty
        when the grace is over.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 3})
        process = reactor.spawned[0].process
        process.exit(ProcessDone(0), leftovers=1)
        protocol.connectionLost(Failure(Exception("closed")))
        reactor.members[process.pid] = 0
        reactor.advance(3)
        self.assertEqual(process.signals, ["TERM"])
        self.assertFalse(protocol.group.killed)

    def test_cannotSignal(self):
        """
        A group the server may not signal (EPERM: a set-uid program in it) is logged,
        naming the service, and still counted as running until the grace is over.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 1})

        def refuse(pgid, number):
            reactor.signalled.append((pgid, number))
            raise PermissionError(1, "Operation not permitted")

        reactor.killpg = refuse
        with capturedLogs() as events:
            protocol.connectionLost(Failure(Exception("gone")))
        [event] = [e for e in events if e.get("signal") == "SIGTERM"]
        self.assertIn("exec service 'svc'", event["label"])
        self.assertEqual(protocol.group.state, "ending")
        reactor.advance(1)  # SIGKILL (refused too)
        reactor.advance(1)  # never reaped: given up one more grace later
        self.assertEqual(protocol.group.state, "gone")


class EofGraceTests(SynchronousTestCase):
    """
    After the client's end of input, a program that stays silent for C{eof_grace}
    seconds is taken to have lost its client: TCP cannot tell a client that closed from
    one that half-closed and waits, until something is written.
    """

    def test_silentProgramEnded(self):
        """
        A program that writes nothing for C{eof_grace} seconds after the client's
        half-close (or close) has its connection closed and its group ended.
        """
        reactor, protocol, transport = connect({"argv": CAT, "eof_grace": 2,
                                                "kill_grace": 1})
        process = reactor.spawned[0].process
        protocol.readConnectionLost()
        reactor.advance(1.9)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(process.signals, [])
        with capturedLogs() as events:
            reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(process.signals, ["TERM"])
        self.assertTrue(any(e.get("grace") == 2 and "end of input" in e["log_format"]
                            for e in events))
        protocol.connectionLost(Failure(Exception("closed")))
        reactor.advance(1)
        self.assertEqual(process.signals, ["TERM", "KILL"])

    def test_outputPushesBack(self):
        """
        Each write of the program after the client's half-close starts C{eof_grace}
        again: a program that answers slowly but steadily is not ended.
        """
        reactor, protocol, transport = connect({"argv": CAT, "eof_grace": 2})
        process = reactor.spawned[0].process
        protocol.readConnectionLost()
        for _ in range(5):
            reactor.advance(1.5)
            process.proto.childDataReceived(1, b"tick\n")
        self.assertFalse(transport.disconnecting)
        reactor.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_exitCancels(self):
        """
        A program that ends after the client's half-close leaves no timer behind.
        """
        reactor, protocol, transport = connect({"argv": CAT, "eof_grace": 2})
        process = reactor.spawned[0].process
        protocol.readConnectionLost()
        process.exit(ProcessDone(0))
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(process.signals, [])

    def test_null(self):
        """
        C{eof_grace: null} waits for the program as long as it runs (tcpserver's way).
        """
        reactor, protocol, transport = connect({"argv": CAT, "eof_grace": None})
        protocol.readConnectionLost()
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_checked(self):
        """
        C{eof_grace} is a number of seconds from 0 to a day, or null; so is
        C{kill_grace} (not null), as longer ones cannot be scheduled.
        """
        for value in (-1, "soon", float("inf"), 86401, 1e300):
            self.assertIn("eof_grace", problemsOf(self, {"argv": CAT, "eof_grace": value}))
            self.assertIn("kill_grace",
                          problemsOf(self, {"argv": CAT, "kill_grace": value}))
        self.assertIn("kill_grace", problemsOf(self, {"argv": CAT, "kill_grace": None}))


class ShutdownTests(SynchronousTestCase):
    """
    The reactor's shutdown waits until every program group is gone.
    """

    def test_triggerRegistered(self):
        """
        Building an C{exec} factory registers, once per reactor, a C{before shutdown}
        trigger that waits for the reactor's program groups.
        """
        reactor, protocol, transport = connect()
        execute.buildFactory(service({"argv": CAT}), reactor)
        [(trigger, args, kwargs)] = reactor.triggers["before"]["shutdown"]
        groups = ProgramGroups.forReactor(reactor)
        self.assertEqual(trigger, groups.atShutdown)

    def test_waitsForGroups(self):
        """
        The shutdown wait fires only once every group is gone: a running program's once
        its connection is closed and its group killed after C{kill_grace}.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 4})
        other, otherProtocol, _ = connect(reactor=reactor)
        groups = ProgramGroups.forReactor(reactor)
        self.assertEqual(len(groups.live), 2)
        waited = groups.atShutdown()
        self.assertNoResult(waited)
        reactor.spawned[1].process.exit(ProcessDone(0))
        self.assertNoResult(waited)
        protocol.connectionLost(Failure(Exception("drained")))
        reactor.advance(3.9)
        self.assertNoResult(waited)
        reactor.advance(0.1)
        self.assertEqual(reactor.spawned[0].process.signals, ["TERM", "KILL"])
        self.assertNoResult(waited)  # until the killed program is reaped
        reactor.spawned[0].process.exit(
            ProcessTerminated(None, signal.SIGKILL, signal.SIGKILL))
        self.successResultOf(waited)

    def test_neverReaped(self):
        """
        A program that is never reaped after SIGKILL (stuck in the kernel) holds the
        shutdown for one more C{kill_grace} at most.
        """
        reactor, protocol, transport = connect({"argv": CAT, "kill_grace": 4})
        waited = ProgramGroups.forReactor(reactor).atShutdown()
        protocol.connectionLost(Failure(Exception("drained")))
        reactor.advance(4)
        self.assertNoResult(waited)
        reactor.advance(4)
        self.successResultOf(waited)

    def test_nothingToWaitFor(self):
        """
        Without programs the shutdown does not wait.
        """
        reactor = ProcessReactor()
        execute.buildFactory(service({"argv": CAT}), reactor)
        self.successResultOf(ProgramGroups.forReactor(reactor).atShutdown())


class LimitsTests(SynchronousTestCase):
    """
    C{exec}'s default limits.
    """

    def test_maxConnections(self):
        """
        An C{exec} service runs at most 40 programs at once unless configured
        (tcpserver's C{-c} default), and closes a connection idle for 10 minutes; its
        own C{limits:} can change that.
        """
        self.assertEqual(execute.defaultLimits, {"max_connections": 40, "idle_timeout": 600})
        specs, _, _, _, problems = parseConfig(
            "services:\n"
            "  - {name: a, protocol: exec, options: {argv: [/bin/cat]}}\n"
            "  - {name: b, protocol: exec, port: 8024, options: {argv: [/bin/cat]},\n"
            "     limits: {max_connections: 5}}\n", "x.yaml", PROVIDERS)
        self.assertEqual(problems, [])
        self.assertEqual([s.limits.maxConnections for s in specs], [40, 5])

    def test_endLogged(self):
        """
        The end of the program is logged with the service, pid, client, exit status and
        run time by the reactor's clock.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        reactor.advance(2.5)
        with capturedLogs() as events:
            process.exit(ProcessTerminated(3, None, 3 << 8))
        [event] = [e for e in events if "elapsed" in e]
        self.assertEqual((event["service"], event["pid"], event["peer"], event["status"],
                          event["elapsed"], event["exitCode"]),
                         ("svc", 4242, "192.0.2.7:40001", "exit code 3", 2.5, 3))

        reactor, protocol, transport = connect()
        with capturedLogs() as events:
            reactor.spawned[0].process.exit(
                ProcessTerminated(None, signal.SIGKILL, signal.SIGKILL))
        [event] = [e for e in events if "elapsed" in e]
        self.assertEqual(event["status"], "killed by signal SIGKILL")

    def test_stderrLogged(self):
        """
        Each line of the program's stderr is logged with the service, pid and client; a
        last line without a newline is logged when the program ends.
        """
        reactor, protocol, transport = connect()
        process = reactor.spawned[0].process
        with capturedLogs() as events:
            process.proto.childDataReceived(2, b"first li")
            process.proto.childDataReceived(2, b"ne\r\nsecond\nlast")
            process.exit(ProcessDone(0))
        lines = [(e["service"], e["pid"], e["peer"], e["line"]) for e in events
                 if "line" in e]
        self.assertEqual([line for _, _, _, line in lines], ["first line", "second", "last"])
        self.assertEqual(lines[0][:3], ("svc", 4242, "192.0.2.7:40001"))
        self.assertEqual(transport.value(), b"")

    def test_spawnFailure(self):
        """
        A failed spawn is logged and the connection closed, with nothing sent to the
        client.
        """
        reactor = ProcessReactor()
        reactor.spawnError = OSError(2, "No such file or directory")
        with capturedLogs() as events:
            reactor, protocol, transport = connect(reactor=reactor)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(any("No such file" in e.get("error", "") for e in events))
        protocol.dataReceived(b"ignored")
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(reactor.getDelayedCalls(), [])


class StderrLinesTests(SynchronousTestCase):
    """
    L{StderrLines} splits and bounds stderr lines.
    """

    def test_longLine(self):
        """
        A line longer than the limit is logged truncated, once, and the rest of it is
        dropped, even when it comes in many pieces.
        """
        lines = []
        splitter = StderrLines(lines.append, limit=10)
        splitter.feed(b"a" * 25)
        splitter.feed(b"b" * 25)
        splitter.feed(b"c\nnext\n")
        splitter.flush()
        self.assertEqual(lines, ["a" * 10 + " [truncated]", "next"])

    def test_undecodable(self):
        """
        Bytes that are not UTF-8 are logged as replacement characters, not an error.
        """
        lines = []
        StderrLines(lines.append).feed(b"caf\xe9\n")
        self.assertEqual(lines, ["caf\ufffd"])


class StderrBudgetTests(SynchronousTestCase):
    """
    L{StderrBudget} bounds the stderr lines one service logs, and counts the rest.
    """

    def budget(self, lines=3, interval=10.0):
        clock = Clock()
        return clock, StderrBudget("svc", clock, lines=lines, interval=interval)

    def test_windowThenSummary(self):
        """
        The first C{lines} lines of a window are logged; the rest are counted, and the
        count is logged, naming the service, when the window closes.
        """
        clock, budget = self.budget()
        logged = []
        splitter = StderrLines(logged.append, budget=budget)
        with capturedLogs() as events:
            splitter.feed(b"".join(b"line %d\n" % i for i in range(10)))
            self.assertEqual(logged, ["line 0", "line 1", "line 2"])
            self.assertEqual(events, [])
            clock.advance(10)
        [event] = events
        self.assertEqual(event["suppressed"], 7)
        self.assertEqual(formatEvent(event),
                         "exec service 'svc': 7 more stderr lines suppressed in the last "
                         "10 s")
        self.assertEqual(clock.getDelayedCalls(), [])
        splitter.feed(b"next\n")
        self.assertEqual(logged[-1], "next")

    def test_countedWithoutSplitting(self):
        """
        While the budget is exhausted, a chunk's lines are counted exactly, with lines
        cut across chunks, a long line and an unfinished last line, as logging them one
        by one would.
        """
        clock, budget = self.budget(lines=1)
        splitter = StderrLines(lambda line: None, limit=10, budget=budget)
        splitter.feed(b"first\nsecond li")          # 1 logged, "second li" buffered
        splitter.feed(b"ne\nthird\n" + b"x" * 30)   # second, third ended; long line
        splitter.feed(b"yyy\nfourth\nfif")           # long line ends; fourth; "fif"
        splitter.feed(b"th")
        splitter.flush()                              # "fifth"
        self.assertEqual(budget.suppressed, 5)  # second, third, the long one, 4th, 5th

    def test_sharedByConnections(self):
        """
        The budget is the service's: every connection's program draws on it.
        """
        reactor = ProcessReactor()
        factory = execute.buildFactory(service({"argv": CAT}), reactor)
        factory.spawner = reactor
        for _ in range(2):
            protocol = factory.buildProtocol(PEER)
            protocol.makeConnection(Transport(hostAddress=HOST, peerAddress=PEER))
        with capturedLogs() as events:
            for spawned in reactor.spawned:
                spawned.process.proto.childDataReceived(2, b"oops\n" * 100)
        self.assertEqual(len([e for e in events if "line" in e]), module.STDERR_LINES)
        self.assertEqual(factory.stderrBudget.suppressed, 200 - module.STDERR_LINES)
        factory.stderrBudget.summarise()


# -- real programs -----------------------------------------------------------------------


class Collect(Protocol):
    """
    A client that sends C{send}, then collects what comes back until the server closes,
    or until it has C{want} bytes (then it closes).
    """

    def __init__(self, send=b"", want=None, onData=None):
        self.send, self.want, self.onData = send, want, onData
        self.received = bytearray()
        self.hostKnown = Deferred()
        self.done = Deferred()

    def connectionMade(self):
        self.hostKnown.callback(self.transport.getHost())
        if self.send:
            self.transport.write(self.send)

    def dataReceived(self, data):
        self.received += data
        if self.onData is not None:
            self.onData(self)
        if self.want is not None and len(self.received) >= self.want:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(bytes(self.received))


class EndWatcher:
    """
    Fires C{ended} with the log event of the end of a program of service C{service}.
    """

    def __init__(self, test, service):
        self.service = service
        self.ended = Deferred()
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event):
        if (event.get("service") == self.service and "elapsed" in event
                and not self.ended.called):
            self.ended.callback(event)


class RealProgramTests(TestCase):
    """
    Real programs behind a real listener on 127.0.0.1, through L{PortServer}.

    Each test waits for the end of the programs it started (logged by the protocol), so
    that no process or pipe outlives it.
    """

    timeout = 60

    def serve(self, name, **options):
        server = PortServer(makePlan(spec(name, protocol="exec", port=0, options=options,
                                          providers=PROVIDERS)), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        return server.addressOf(name, "tcp").port

    def client(self, port, **kwargs):
        protocol = Collect(**kwargs)
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
        protocol.done.addTimeout(DEADLINE, reactor)
        return protocol

    def ended(self, watcher):
        return watcher.ended.addTimeout(DEADLINE, reactor)

    @inlineCallbacks
    def test_cat(self):
        """
        C{/bin/cat} sends back exactly what it is sent, 256 KiB of it (more than a pipe
        and a socket buffer hold), and exits when the client closes.
        """
        port = self.serve("cat", argv=CAT)
        watcher = EndWatcher(self, "cat")
        payload = bytes(range(256)) * 1024
        received = yield self.client(port, send=payload, want=len(payload)).done
        self.assertEqual(received, payload)
        event = yield self.ended(watcher)
        self.assertEqual(event["exitCode"], 0)

    @inlineCallbacks
    def test_environment(self):
        """
        The program sees the client's address in TCPREMOTEIP and TCPREMOTEPORT, the
        listener's in TCPLOCALIP and TCPLOCALPORT, PROTO=TCP and no TCPREMOTEHOST; its
        exit closes the connection.
        """
        port = self.serve("env", argv=[
            "/bin/sh", "-c",
            "echo $PROTO $TCPREMOTEIP:$TCPREMOTEPORT $TCPLOCALIP:$TCPLOCALPORT "
            "${TCPREMOTEHOST-nohost}"])
        watcher = EndWatcher(self, "env")
        client = self.client(port)
        host = yield client.hostKnown
        received = yield client.done
        self.assertEqual(received.decode(),
                         f"TCP {host.host}:{host.port} 127.0.0.1:{port} nohost\n")
        yield self.ended(watcher)

    @inlineCallbacks
    def test_environmentLikeTcpserver6(self):
        """
        Over IPv6 (::1), the program's connection variables are the ones Debian's
        ucspi-tcp6 C{tcpserver -6 -H -R -l NAME} gives its program: the same names,
        C{PROTO=TCP6}, and the same remote and local addresses.
        """
        tcpserver = shutil.which("tcpserver")
        if tcpserver is None:
            raise SkipTest("tcpserver (Debian's ucspi-tcp-ipv6) is not installed")
        if not hasIPv6Loopback():
            raise SkipTest("no IPv6 loopback (::1) here")
        envProgram = shutil.which("env")

        def variables(output):
            pairs = dict(line.split("=", 1) for line in output.decode().splitlines()
                         if "=" in line)
            return {k: v for k, v in pairs.items() if k == "PROTO" or k.startswith("TCP")}

        def fromTcpserver():
            process = subprocess.Popen(
                [tcpserver, "-1", "-6", "-H", "-R", "-l", "ports.example", "::1", "0",
                 envProgram], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={})
            try:
                line = process.stdout.readline()
                if not line.strip().isdigit():
                    raise SkipTest(f"this tcpserver does not serve IPv6: "
                                   f"{process.stderr.read(200)!r}")
                return talk(int(line))
            finally:
                process.kill()
                process.wait()

        def talk(port):
            with socket.create_connection(("::1", port), timeout=DEADLINE) as s:
                local = s.getsockname()[:2]
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return local, variables(b"".join(chunks))

        theirs = (yield deferToThread(fromTcpserver))[1]
        server = PortServer(makePlan(spec(
            "env6", protocol="exec", port=0, interface="::1", providers=PROVIDERS,
            options={"argv": [envProgram], "local_host": "ports.example"})), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        watcher = EndWatcher(self, "env6")
        port = server.addressOf("env6", "tcp").port
        (clientHost, clientPort), ours = yield deferToThread(talk, port)
        yield self.ended(watcher)
        self.assertEqual(sorted(ours), sorted(theirs))
        self.assertEqual((ours["PROTO"], ours["TCP6REMOTEIP"], ours["TCP6REMOTEPORT"],
                          ours["TCP6LOCALIP"], ours["TCP6LOCALPORT"]),
                         ("TCP6", "::1", str(clientPort), "::1", str(port)))
        self.assertEqual((theirs["PROTO"], theirs["TCP6REMOTEIP"]), ("TCP6", "::1"))

    @inlineCallbacks
    def test_halfClose(self):
        """
        A client that sends, then shuts down its writing side, gets all of cat's output
        and then the end of the connection: cat saw the end of its input and exited.
        """
        port = self.serve("cat", argv=CAT)
        watcher = EndWatcher(self, "cat")
        payload = b"line\n" * 20000

        def talk():
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)

        received = yield deferToThread(talk)
        self.assertEqual(received, payload)
        event = yield self.ended(watcher)
        self.assertEqual(event["exitCode"], 0)

    @inlineCallbacks
    def test_killAfterGrace(self):
        """
        A program that ignores SIGTERM is killed with SIGKILL after C{kill_grace} when
        the client goes away (here: resets the connection).
        """
        port = self.serve("stubborn", kill_grace=0.5, argv=[
            "/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 60"])
        watcher = EndWatcher(self, "stubborn")
        # Go once the trap is set, so that SIGTERM is really ignored.
        client = self.client(port, onData=lambda c: c.transport.abortConnection())
        received = yield client.done
        self.assertEqual(received, b"ready\n")
        event = yield self.ended(watcher)
        self.assertEqual(event["exitSignal"], signal.SIGKILL)
        self.assertGreaterEqual(event["elapsed"], 0.5)

    @inlineCallbacks
    def test_termOnDisconnect(self):
        """
        A program still running when the client goes away is ended with SIGTERM.
        """
        port = self.serve("sleeper", argv=["/bin/sh", "-c", "echo ready; exec sleep 60"])
        watcher = EndWatcher(self, "sleeper")
        client = self.client(port, onData=lambda c: c.transport.abortConnection())
        yield client.done
        event = yield self.ended(watcher)
        self.assertEqual(event["exitSignal"], signal.SIGTERM)

    @inlineCallbacks
    def test_closeWhileStreaming(self):
        """
        A client that closes (not resets) while the program streams output: the next
        writes fail, and the program is ended.
        """
        port = self.serve("yes", argv=["yes"])
        watcher = EndWatcher(self, "yes")
        client = self.client(port, want=100000)
        received = yield client.done
        self.assertGreaterEqual(len(received), 100000)
        event = yield self.ended(watcher)
        self.assertIn(event["exitSignal"], (signal.SIGTERM, signal.SIGPIPE))

    @inlineCallbacks
    def test_sink(self):
        """
        A program without a stdout (C{cat >/dev/null}) still gets what the client sends:
        the client is told the output is over (a half-close), not cut off; the
        connection closes when the program exits after the client's half-close.
        """
        port = self.serve("sink", argv=["/bin/sh", "-c", "exec cat >/dev/null"])
        watcher = EndWatcher(self, "sink")
        payload = b"x" * (1 << 20)

        def talk():
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                eof = s.recv(1)  # the server's half-close
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                return eof, s.recv(1)

        eof, end = yield deferToThread(talk)
        self.assertEqual((eof, end), (b"", b""))
        event = yield self.ended(watcher)
        self.assertEqual(event["exitCode"], 0)

    @inlineCallbacks
    def test_stdinBackpressure(self):
        """
        A program that never reads its stdin does not make the server buffer what the
        client sends: the client's connection is paused once the stdin pipe is full.
        """
        factory = execute.buildFactory(
            service({"argv": ["/bin/sh", "-c", "exec sleep 60"]}, name="deaf"), reactor)
        protocol = factory.buildProtocol(PEER)
        transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
        watcher = EndWatcher(self, "deaf")
        protocol.makeConnection(transport)
        for _ in range(64):
            protocol.dataReceived(b"x" * 65536)
            if transport.producerState == "paused":
                break
        self.assertEqual(transport.producerState, "paused")
        protocol.connectionLost(Failure(Exception("gone")))
        event = yield self.ended(watcher)
        self.assertEqual(event["exitSignal"], signal.SIGTERM)

    @inlineCallbacks
    def test_stdinResumes(self):
        """
        A client paused by a full stdin pipe is resumed once the program has read it.
        """
        factory = execute.buildFactory(service({"argv": CAT}, name="slow"), reactor)
        protocol = factory.buildProtocol(PEER)
        resumed = Deferred()

        class ResumeTransport(Transport):
            def resumeProducing(self):
                super().resumeProducing()
                if not resumed.called:
                    resumed.callback(None)

        transport = ResumeTransport(hostAddress=HOST, peerAddress=PEER)
        watcher = EndWatcher(self, "slow")
        protocol.makeConnection(transport)
        payload = b"x" * (1 << 20)
        protocol.dataReceived(payload)
        self.assertEqual(transport.producerState, "paused")
        yield resumed.addTimeout(DEADLINE, reactor)
        self.assertEqual(transport.producerState, "producing")
        protocol.readConnectionLost()
        event = yield self.ended(watcher)
        self.assertEqual(event["exitCode"], 0)
        self.assertEqual(transport.value(), payload)
        self.assertTrue(transport.disconnecting)

    @inlineCallbacks
    def test_spawnFailure(self):
        """
        A program that cannot be started (removed after the check) costs the client its
        connection, with nothing sent, and the server goes on serving.
        """
        path = executableFile(self)
        port = self.serve("gone", argv=[path])
        os.remove(path)
        received = yield self.client(port).done
        self.assertEqual(received, b"")
        received = yield self.client(port).done
        self.assertEqual(received, b"")

    def test_buildFailureNamesService(self):
        """
        A service that must switch users on a server that is not root (its options
        checked by a root process) fails to start, naming the service.
        """
        self.patch(os, "geteuid", lambda: 0)
        self.patch(os, "getegid", lambda: 0)
        plan = makePlan(spec("asnobody", protocol="exec", port=0, providers=PROVIDERS,
                             options={"argv": CAT, "user": "nobody"}))
        self.patch(os, "geteuid", lambda: 1000)
        self.patch(os, "getegid", lambda: 1000)
        server = PortServer(plan, reactor)
        error = self.assertRaises(StartupError, server.startService)
        self.assertIn("'asnobody'", str(error))
        self.assertIn("not root", str(error))

    @inlineCallbacks
    def test_user(self):
        """
        As root, C{user: nobody} runs the program as nobody and nobody's primary group.
        """
        if os.geteuid() != 0:
            raise SkipTest("switching users needs root")
        nobody = pwd.getpwnam("nobody")
        port = self.serve("id", user="nobody", argv=["/bin/sh", "-c", "id -u; id -g"])
        watcher = EndWatcher(self, "id")
        received = yield self.client(port).done
        self.assertEqual(received.decode().split(), [str(nobody.pw_uid), str(nobody.pw_gid)])
        yield self.ended(watcher)


# -- a program never outlives its connection ------------------------------------------


#: Ignores SIGTERM, starts a child that ignores it too (inherited), never reads its
#: stdin, says its pid and its child's, and waits.
STUBBORN = ["/bin/sh", "-c", 'trap "" TERM; sleep 300 & echo $$ $!; wait']


def alive(pid: int) -> bool:
    """
    Whether process C{pid} still runs (a zombie, dead but not yet reaped by init, does
    not).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def closeWait(port: int) -> int:
    """
    How many TCP sockets of local port C{port} are in CLOSE_WAIT (Linux C{/proc}).
    """
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "08":
                count += 1
    return count


def whenEmpty(registry) -> Deferred:
    """
    Fires once C{registry} holds no live connection.
    """
    done = Deferred()
    if not len(registry):
        done.callback(None)
        return done

    def observe(event, record):
        if not len(registry) and not done.called:
            unsubscribe()
            reactor.callLater(0, done.callback, None)

    unsubscribe = registry.subscribe(observe)
    return done


class Line(Protocol):
    """
    A client that fires C{line} with the first line it receives and C{done} when the
    connection ends.
    """

    def __init__(self, send=b""):
        self.send = send
        self.buffer = b""
        self.line = Deferred()
        self.done = Deferred()

    def connectionMade(self):
        if self.send:
            self.transport.write(self.send)

    def dataReceived(self, data):
        self.buffer += data
        if b"\n" in self.buffer and not self.line.called:
            self.line.callback(self.buffer.split(b"\n", 1)[0])

    def connectionLost(self, reason):
        if not self.line.called:
            self.line.callback(None)
        self.done.callback(self.buffer)


class Hangup(Protocol):
    """
    A client that closes as soon as it is connected, and fires C{done} once closed.
    """

    def __init__(self):
        self.done = Deferred()

    def connectionMade(self):
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(None)


def processesWith(marker: str) -> list[int]:
    """
    The pids of the live processes (not zombies) whose command line holds C{marker}.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if marker.encode() in command and alive(int(name)):
            found.append(int(name))
    return found


@inlineCallbacks
def untilGone(pids, deadline=DEADLINE):
    """
    Wait until none of C{pids} is alive (a process sent SIGKILL dies when the kernel
    next schedules it), for C{deadline} seconds at most; return those left.
    """
    end = reactor.seconds() + deadline
    left = [pid for pid in pids if alive(pid)]
    while left and reactor.seconds() < end:
        yield deferLater(reactor, 0.01, lambda: None)
        left = [pid for pid in left if alive(pid)]
    return left


class LifetimeTests(TestCase):
    """
    Real programs behind a real listener on 127.0.0.1: a program, and what it started,
    ends with its connection; at most C{max_connections} run; stderr floods are bounded.
    """

    timeout = 60

    def serve(self, name, limits=None, **options):
        """
        Serve C{exec} with C{options} under C{limits} (C{exec}'s defaults unless given).
        """
        item = attrs.evolve(
            spec(name, protocol="exec", port=0, options=options, providers=PROVIDERS),
            limits=Limits.fromOptions({**checkOptions({}, LIMITS_SCHEMA),
                                       **execute.defaultLimits, **(limits or {})}))
        server = PortServer(makePlan(item), reactor)
        server.startService()
        self.addCleanup(self.stop, server)
        return server, server.addressOf(name, "tcp").port

    @inlineCallbacks
    def stop(self, server):
        if server.running:
            stopping = server.stopService()
            server.endDrain()
            yield stopping
        yield ProgramGroups.forReactor(reactor).whenGone().addTimeout(DEADLINE, reactor)

    def client(self, port, protocol):
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
        protocol.line.addTimeout(DEADLINE, reactor)
        protocol.done.addTimeout(DEADLINE, reactor)
        return protocol

    @inlineCallbacks
    def test_clientClosesStubbornProgram(self):
        """
        The issue's case: a program that ignores SIGTERM and does not read its stdin,
        with a child. Once its client closes, after C{eof_grace} the group gets
        SIGTERM and after C{kill_grace} SIGKILL: the program and its child are gone,
        the registry record closed, and no socket is left in CLOSE_WAIT.
        """
        server, port = self.serve("stubborn", argv=STUBBORN, eof_grace=0.2,
                                  kill_grace=0.5)
        watcher = EndWatcher(self, "stubborn")
        client = self.client(port, Line())
        pids = [int(p) for p in (yield client.line).split()]
        self.assertTrue(all(alive(pid) for pid in pids))
        closed = reactor.seconds()
        client.transport.loseConnection()
        event = yield self.ended(watcher)
        yield whenEmpty(server.registry).addTimeout(DEADLINE, reactor)
        self.assertEqual(event["exitSignal"], signal.SIGKILL)
        self.assertLess(reactor.seconds() - closed, 0.2 + 0.5 + 3)
        self.assertEqual((yield untilGone(pids)), [])
        self.assertEqual(closeWait(port), 0)

    @inlineCallbacks
    def test_clientResetsStubbornProgram(self):
        """
        A client that resets its connection: the same program and its child are gone
        C{kill_grace} after, without waiting for C{eof_grace}.
        """
        server, port = self.serve("stubborn", argv=STUBBORN, eof_grace=60,
                                  kill_grace=0.5)
        watcher = EndWatcher(self, "stubborn")
        client = self.client(port, Line())
        pids = [int(p) for p in (yield client.line).split()]
        client.transport.abortConnection()
        event = yield self.ended(watcher)
        self.assertEqual(event["exitSignal"], signal.SIGKILL)
        self.assertEqual((yield untilGone(pids)), [])

    @inlineCallbacks
    def test_ownSession(self):
        """
        Each program leads a session and process group of its own.
        """
        server, port = self.serve("ids", argv=[
            "/bin/sh", "-c", "echo $$ $(ps -o sid= -p $$) $(ps -o pgid= -p $$)"])
        if not os.path.exists("/bin/ps") and not os.path.exists("/usr/bin/ps"):
            raise SkipTest("no ps")
        client = self.client(port, Line())
        pid, sid, pgid = (yield client.line).split()
        self.assertEqual((sid, pgid), (pid, pid))
        self.assertNotEqual(os.getsid(0), int(pid))
        yield client.done

    @inlineCallbacks
    def test_closedAtOnce(self):
        """
        Clients that close at once, maybe before their program has even set up its
        session, leave nothing running: 20 in a row, each program a stubborn one with a
        child (marked, to be found among the host's processes).
        """
        marker = f"299.{os.getpid()}{id(self) % 100000}"  # seconds, unique to this test
        server, port = self.serve("quick", eof_grace=0, kill_grace=0.3, argv=[
            "/bin/sh", "-c", 'trap "" TERM; sleep "$0" & wait', marker])
        clients = []
        for _ in range(20):
            protocol = Hangup()
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
            clients.append(protocol.done.addTimeout(DEADLINE, reactor))
        yield gatherResults(clients)
        yield whenEmpty(server.registry).addTimeout(DEADLINE, reactor)
        yield ProgramGroups.forReactor(reactor).whenGone().addTimeout(DEADLINE, reactor)
        self.assertEqual((yield untilGone(processesWith(marker))), [])

    @inlineCallbacks
    def test_maxConnectionsByDefault(self):
        """
        By default 40 programs run at once: the 41st connection is refused (closed
        with nothing sent) and counted as C{max-connections}.
        """
        server, port = self.serve("many", argv=CAT)
        clients = [self.client(port, Line(send=b"hi\n")) for _ in range(40)]
        yield gatherResults([c.line for c in clients])
        extra = self.client(port, Line(send=b"hi\n"))
        received = yield extra.done
        self.assertEqual(received, b"")
        self.assertEqual(server.registry.refused[("many", "max-connections")], 1)
        for c in clients:
            c.transport.loseConnection()
        yield gatherResults([c.done for c in clients])

    @inlineCallbacks
    def test_stderrFlood(self):
        """
        A program that writes 100000 lines to its stderr costs the log at most
        L{STDERR_LINES} lines and a count of the rest (which adds up).
        """
        server, port = self.serve("noisy", argv=["/bin/sh", "-c", "seq 1 100000 >&2"])
        events = []

        def observe(event):
            if event.get("service") == "noisy":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        watcher = EndWatcher(self, "noisy")
        client = self.client(port, Line())
        yield client.done
        yield self.ended(watcher)
        budget = server.listeners[0].served.wrapped.stderrBudget
        budget.summarise()
        logged = [e for e in events if "line" in e]
        suppressed = sum(e["suppressed"] for e in events if "suppressed" in e)
        self.assertLessEqual(len(logged), 2 * module.STDERR_LINES)
        self.assertEqual(len(logged) + suppressed, 100000)
        self.assertEqual(logged[0]["line"], "1")

    @inlineCallbacks
    def test_serverStopEndsGroups(self):
        """
        At server stop (drain cut short), every program group is ended, SIGKILL after
        C{kill_grace} included, before the reactor's shutdown wait returns.
        """
        server, port = self.serve("stopping", argv=STUBBORN, kill_grace=0.5,
                                  eof_grace=None)
        clients = [self.client(port, Line()) for _ in range(3)]
        lines = yield gatherResults([c.line for c in clients])
        pids = [int(pid) for line in lines for pid in line.split()]
        stopping = server.stopService()
        server.endDrain()
        yield stopping
        yield ProgramGroups.forReactor(reactor).atShutdown().addTimeout(DEADLINE, reactor)
        self.assertEqual([pid for pid in pids[::2] if alive(pid)], [])  # programs reaped
        self.assertEqual((yield untilGone(pids)), [])

    def ended(self, watcher):
        return watcher.ended.addTimeout(DEADLINE, reactor)
