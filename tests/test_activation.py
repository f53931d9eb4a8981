"""
Tests for L{portserver.activation} and its wiring: inherited sockets described by the
kernel, matched with the plan's listeners (located errors otherwise), served instead of
bound (and never closed), shown by C{--check}; and readiness told to a fake service
manager (C{READY=1}, C{RELOADING=1}, C{STOPPING=1}, C{STATUS=}).

The sockets are real (bound on 127.0.0.1, port 0); their descriptors stand in for those
systemd passes. The end-to-end tests run C{systemd-socket-activate} around twistd.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request

import attrs
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portserver import tap
from portserver.accepting import AcceptingPort
from portserver.activation import Activation, InheritedSocket, namedDescriptors, \
    processListenFDs, statusClaims
from portserver.config import endpointProblem
from portserver.limits import ShutdownSpec
from portserver.listeners import ListenerService
from portserver.plan import loadPlan
from portserver.reload import Reloader
from portserver.reloading import ReloadError
from portserver.sdnotify import Notifier
from portserver.server import PortServer
from portserver.startup import StartupError
from portserver.transport import TrackedTransport
from portserver.udp import DatagramPort, PacketInfoPort, pktinfoSupported
from tests.support import PROVIDERS, RULE, Discovery, PortReactor, freePort, makePlan, spec
from tests.test_integration import DEADLINE as REPLY_DEADLINE, ServingTestCase
from tests.test_sdnotify import FakeManager
from tests.test_twistd import DEADLINE, ROOT, stopProcess, waitForLine

ACTIVATE = shutil.which("systemd-socket-activate")


def listening(testCase, host="127.0.0.1", kind=socket.SOCK_STREAM, listen=True):
    """
    A socket bound to C{host}, port 0, of C{kind} (listening, for a stream socket,
    unless C{listen} is false), closed at C{testCase}'s cleanup.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind)
    testCase.addCleanup(s.close)
    s.bind((host, 0))
    if kind == socket.SOCK_STREAM and listen:
        s.listen()
    return s


def portOf(s) -> int:
    return s.getsockname()[1]


def planFile(testCase, text):
    """
    The plan of config C{text} written to a file (so problems are located in it).
    """
    path = os.path.abspath(testCase.mktemp())
    with open(path, "w") as f:
        f.write(text)
    return path, loadPlan(path, PROVIDERS, rule=RULE, dualStack=True)


def echoService(port, interface="127.0.0.1", transports="[tcp, udp]", status=None):
    text = ("services:\n  - name: echo\n    protocol: echo\n"
            f"    port: {port}\n    interface: {interface}\n    transports: {transports}\n")
    if status is not None:
        text += f'status:\n  listen: "{status}"\n  token: "0123456789abcdef0123"\n'
    return text


def withoutDrain(plan):
    """
    C{plan} with C{shutdown.drain} 0: a removed listener's drain ends at once.
    """
    return attrs.evolve(plan, config=attrs.evolve(plan.config, shutdown=ShutdownSpec(0)))


def ipv6Available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class InheritedSocketTests(SynchronousTestCase):
    """
    L{InheritedSocket.inspect} describes a descriptor as the kernel sees it, and leaves
    it open.
    """

    def test_tcpAndUDP(self):
        """
        A listening TCP socket and a UDP socket are told apart by C{SO_TYPE}: family,
        transport, address and whether it listens.
        """
        tcp, udp = listening(self), listening(self, kind=socket.SOCK_DGRAM)
        a = InheritedSocket.inspect("echo", tcp.fileno())
        b = InheritedSocket.inspect("echo", udp.fileno())
        self.assertEqual((a.family, a.transport, a.host, a.port, a.listening, a.error),
                         (socket.AF_INET, "tcp", "127.0.0.1", portOf(tcp), True, None))
        self.assertEqual((b.family, b.transport, b.host, b.port, b.error),
                         (socket.AF_INET, "udp", "127.0.0.1", portOf(udp), None))
        self.assertEqual(a.describe(),
                         f"fd {tcp.fileno()} 'echo' (tcp 127.0.0.1:{portOf(tcp)})")
        # Still open, still listening: inspect looked through a duplicate.
        self.assertEqual(tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)

    def test_notListeningNorIP(self):
        """
        A bound TCP socket that does not listen is described so; a UNIX socket has no
        transport a service serves; a pipe is not a socket at all.
        """
        bound = listening(self, listen=False)
        self.assertFalse(InheritedSocket.inspect("x", bound.fileno()).listening)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(unix.close)
        self.assertIsNone(InheritedSocket.inspect("x", unix.fileno()).transport)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        pipe = InheritedSocket.inspect("x", r)
        self.assertIsNotNone(pipe.error)
        self.assertIn("cannot be served", pipe.unusable())
        os.fstat(r)  # still open


class EnvironmentTests(SynchronousTestCase):
    """
    L{Activation.fromEnvironment} reads C{LISTEN_*} as systemd sets them, through
    Twisted's L{ListenFDs}.
    """

    def recordingInspect(self, name, fd):
        return InheritedSocket(name, fd)

    def test_namesInOrderWithDuplicates(self):
        """
        Every descriptor from C{start} on, with its name, in order: two sockets may
        share a name (a service's TCP and UDP sockets). The environment given is not
        changed (Twisted's reading removes C{LISTEN_PID} and C{LISTEN_FDS}).
        """
        environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "3",
                   "LISTEN_FDNAMES": "echo:echo:web"}
        before = dict(environ)
        activation = Activation.fromEnvironment(environ, start=10,
                                                inspect=self.recordingInspect)
        self.assertEqual([(s.name, s.fd) for s in activation.sockets],
                         [("echo", 10), ("echo", 11), ("web", 12)])
        self.assertEqual(environ, before)

    def test_otherProcess(self):
        """
        Descriptors passed to another process (C{LISTEN_PID} is not this one's), or
        whose names do not match their count, are not this process's: none.
        """
        for environ in ({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1",
                         "LISTEN_FDNAMES": "echo"},
                        {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2",
                         "LISTEN_FDNAMES": "echo"},
                        {}):
            activation = Activation.fromEnvironment(environ, inspect=self.recordingInspect)
            self.assertFalse(activation, environ)

    def test_namedDescriptorsWithoutNames(self):
        """
        Without C{LISTEN_FDNAMES} to read the order from, the names come from the
        L{ListenFDs} itself.
        """
        from twisted.python.systemd import ListenFDs
        self.assertEqual(namedDescriptors(ListenFDs([3, 4], ("a", "b")), {}),
                         [("a", 3), ("b", 4)])

    def test_processReadingIsTwisteds(self):
        """
        In the process, the descriptors are those Twisted's C{systemd:} endpoint read
        (what the status service's C{systemd:} endpoint serves).
        """
        from twisted.internet import endpoints
        self.assertIs(processListenFDs(), endpoints._SystemdParser._sddaemon)

    def test_afterTwistedTookTheEnvironment(self):
        """
        In a process started with a socket on descriptor 3, the socket is found even
        though importing C{twisted.internet.endpoints} has removed C{LISTEN_PID} and
        C{LISTEN_FDS} from the environment; it is made close-on-exec.
        """
        s = listening(self)
        script = (
            "import json, os, sys\n"
            "os.dup2(int(sys.argv[1]), 3)\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1',"
            " LISTEN_FDNAMES='echo')\n"
            "import twisted.internet.endpoints\n"
            "assert 'LISTEN_FDS' not in os.environ\n"
            "from portserver.activation import Activation\n"
            "a = Activation.fromEnvironment()\n"
            "print(json.dumps([[x.name, x.fd, x.transport, x.port, x.listening,"
            " os.get_inheritable(x.fd)] for x in a.sockets]))\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        env["PYTHONPATH"] = ROOT
        output = subprocess.run(
            [sys.executable, "-c", script, str(s.fileno())], env=env, cwd=ROOT,
            pass_fds=[s.fileno()], capture_output=True, timeout=DEADLINE, check=True)
        self.assertEqual(json.loads(output.stdout),
                         [["echo", 3, "tcp", portOf(s), True, False]])


class CheckTests(SynchronousTestCase):
    """
    L{Activation.check}: each socket against the listener of its name; located errors
    naming the service and the descriptor; sockets no one claims.
    """

    def test_matches(self):
        """
        A service's TCP and UDP sockets of one name serve its two listeners, each by
        its type; nothing is wrong.
        """
        tcp, udp = listening(self), listening(self, kind=socket.SOCK_DGRAM)
        udp.close()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(udp.close)
        udp.bind(("127.0.0.1", portOf(tcp)))
        _, plan = planFile(self, echoService(portOf(tcp)))
        activation = Activation.fromDescriptors([("echo", udp.fileno()),
                                                 ("echo", tcp.fileno())])
        self.assertEqual(activation.check(plan), [])
        self.assertEqual(activation.socketFor("echo", "tcp").fd, tcp.fileno())
        self.assertEqual(activation.socketFor("echo", "udp").fd, udp.fileno())
        self.assertEqual([(l.transport, s.fd) for l, s in activation.assigned(plan)],
                         [("tcp", tcp.fileno()), ("udp", udp.fileno())])
        self.assertIsNone(activation.socketFor("web", "tcp"))

    def problems(self, text, named):
        path, plan = planFile(self, text)
        return path, [str(p) for p in Activation.fromDescriptors(named).check(plan)]

    def test_portMismatch(self):
        """
        A socket on another port than the service's is an error located at the
        service's C{port}, naming the service and the descriptor, saying what to set.
        """
        s = listening(self)
        port = portOf(s)
        path, [problem] = self.problems(echoService(port + 1, transports="[tcp]"),
                                        [("echo", s.fileno())])
        self.assertEqual(problem, (
            f"{path}:4:11: service 'echo': inherited socket fd {s.fileno()} 'echo' "
            f"(tcp 127.0.0.1:{port}) is bound to port {port}, but the service's port is "
            f"{port + 1}: set ListenStream=127.0.0.1:{port + 1} in its .socket unit, "
            "or the port to the socket's"))

    def test_addressMismatch(self):
        """
        A socket on another address than the service's interface is an error located
        at C{interface}.
        """
        s = listening(self)
        path, [problem] = self.problems(
            echoService(portOf(s), interface="0.0.0.0", transports="[tcp]"),
            [("echo", s.fileno())])
        self.assertIn(f"{path}:5:16: service 'echo': inherited socket fd {s.fileno()} "
                      f"'echo' (tcp 127.0.0.1:{portOf(s)}) is bound to 127.0.0.1, but the "
                      "service's interface is 0.0.0.0", problem)

    def test_familyMismatch(self):
        """
        An IPv6 socket for a service on an IPv4 interface is an error saying so.
        """
        if not ipv6Available():
            raise SkipTest("no IPv6 loopback")
        s = listening(self, host="::1")
        path, [problem] = self.problems(echoService(portOf(s), transports="[tcp]"),
                                        [("echo", s.fileno())])
        self.assertIn(f"service 'echo': inherited socket fd {s.fileno()} 'echo' "
                      f"(tcp [::1]:{portOf(s)}) is IPv6, but the service's interface "
                      "127.0.0.1 is IPv4", problem)

    def test_typeMismatch(self):
        """
        A UDP socket for a service without udp, two TCP sockets for one service, a
        TCP socket that does not listen, and a socket of another kind are errors
        naming the service and the descriptor.
        """
        udp = listening(self, kind=socket.SOCK_DGRAM)
        path, [problem] = self.problems(echoService(portOf(udp), transports="[tcp]"),
                                        [("echo", udp.fileno())])
        self.assertIn(f"{path}:6:17: service 'echo': inherited socket fd {udp.fileno()} "
                      "'echo' (udp 127.0.0.1", problem)
        self.assertIn("is udp, a transport the service does not have", problem)

        a, b = listening(self), listening(self)
        _, [problem] = self.problems(echoService(portOf(a), transports="[tcp]"),
                                     [("echo", a.fileno()), ("echo", b.fileno())])
        self.assertIn(f"inherited sockets fd {a.fileno()} 'echo' (tcp 127.0.0.1:"
                      f"{portOf(a)}) and fd {b.fileno()} 'echo'", problem)

        bound = listening(self, listen=False)
        _, [problem] = self.problems(echoService(portOf(bound), transports="[tcp]"),
                                     [("echo", bound.fileno())])
        self.assertIn(f"inherited socket fd {bound.fileno()} 'echo' (tcp 127.0.0.1:"
                      f"{portOf(bound)}) is not listening", problem)

        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(unix.close)
        _, [problem] = self.problems(echoService(7007, transports="[tcp]"),
                                     [("echo", unix.fileno())])
        self.assertIn(f"service 'echo': inherited socket fd {unix.fileno()} 'echo' (AF_UNIX "
                      "SOCK_STREAM", problem)
        self.assertIn("is not an IPv4 or IPv6 socket", problem)

    def test_unmatched(self):
        """
        Sockets whose names are no service's are one error naming each of them.
        """
        a, b = listening(self), listening(self, kind=socket.SOCK_DGRAM)
        path, [problem] = self.problems(
            echoService(7007), [("ftp", a.fileno()), ("unknown", b.fileno())])
        self.assertEqual(problem, (
            f"{path}: inherited socket(s) fd {a.fileno()} 'ftp' (tcp 127.0.0.1:"
            f"{portOf(a)}), fd {b.fileno()} 'unknown' (udp 127.0.0.1:{portOf(b)}) match no "
            "service: a socket's name (FileDescriptorName= in its .socket unit) must be "
            "the name of the service that serves it, or the status endpoint's "
            "('tcp:8790:interface=127.0.0.1')"))

    def test_statusEndpointClaims(self):
        """
        The socket the status service's C{systemd:} endpoint names (or indexes) is
        its own, not unmatched; one that is also a service's name is an error.
        """
        s = listening(self)
        _, plan = planFile(self, echoService(portOf(s)))

        def problems(listen, name):
            status = attrs.evolve(plan.config.status, listen=listen)
            withStatus = attrs.evolve(plan, config=attrs.evolve(plan.config, status=status))
            activation = Activation.fromDescriptors([(name, s.fileno())])
            return [str(p) for p in activation.check(withStatus)]

        self.assertEqual(problems("systemd:domain=INET:name=status", "status"), [])
        self.assertEqual(problems("systemd:domain=INET:index=0", "anything"), [])
        [problem] = problems("systemd:domain=INET:name=echo", "echo")
        self.assertIn("service 'echo': inherited socket", problem)
        self.assertIn("is the status service's ('systemd:domain=INET:name=echo')",
                      problem)
        sockets = (InheritedSocket("a", 3), InheritedSocket("b", 4))
        self.assertEqual(statusClaims("systemd:domain=INET:index=1", sockets), {1})
        self.assertEqual(statusClaims("systemd:domain=INET:index=5", sockets), set())
        self.assertEqual(statusClaims("tcp:8790", sockets), set())
        self.assertEqual(statusClaims(None, sockets), set())

    def test_systemdEndpointOutsideActivation(self):
        """
        A status C{systemd:} endpoint naming a socket that was not passed is a
        sentence saying so (before: "not a Twisted server endpoint string").
        """
        problem = endpointProblem("systemd:domain=INET:name=status", KeyError("status"))
        self.assertIn("'systemd:domain=INET:name=status': no socket was passed named "
                      "'status'", problem)
        self.assertIn("LISTEN_FDNAMES", problem)


class ListenerServiceTests(SynchronousTestCase):
    """
    A L{ListenerService} serves its inherited socket instead of binding.
    """

    def test_adoptsOnAnyReactor(self):
        """
        On a reactor that is not Twisted's posix one, the sockets are adopted through
        C{adoptStreamPort} and C{adoptDatagramPort}, nothing is bound.
        """
        tcp, udp = listening(self), listening(self, kind=socket.SOCK_DGRAM)
        activation = Activation.fromDescriptors([("echo", tcp.fileno()),
                                                 ("echo", udp.fileno())])
        memory = PortReactor()
        plan = makePlan(spec("echo", port=0, transports=("tcp", "udp")))
        server = PortServer(plan, memory, activation=activation)
        server.startService()
        self.assertEqual([(fd, family) for fd, family, *_ in memory.adoptedPorts],
                         [(tcp.fileno(), socket.AF_INET), (udp.fileno(), socket.AF_INET)])
        self.assertEqual(memory.tcpServers + memory.udpServers, [])
        self.assertIs(memory.adoptedPorts[0][2], server.listeners[0].served)
        self.assertEqual([c.inherited.fd for c in server.listeners],
                         [tcp.fileno(), udp.fileno()])

    def test_mismatchAtBind(self):
        """
        Bound later (a reload), a socket that does not match is a L{StartupError}
        naming the service and the descriptor; nothing is adopted.
        """
        s = listening(self)
        activation = Activation.fromDescriptors([("echo", s.fileno())])
        memory = PortReactor()
        plan = makePlan(spec("echo", port=portOf(s) + 1))
        child = ListenerService(plan.listeners[0], memory, None, activation=activation)
        error = self.assertRaises(StartupError, child.bind)
        self.assertIn(f"service 'echo': inherited socket fd {s.fileno()} 'echo'", str(error))
        self.assertEqual(memory.adoptedPorts, [])


class ServingInheritedTests(ServingTestCase):
    """
    On the real reactor, an inherited socket is served by portserver's own port
    classes, and outlives the listener that served it.
    """

    def serveInherited(self, plan, activation):
        server = PortServer(plan, reactor, activation=activation)
        server.startService()
        self.addCleanup(server.stopService)
        return server

    @inlineCallbacks
    def test_tcpIsAnAcceptingPortWithOwnTransport(self):
        """
        A TCP socket is served by an L{AcceptingPort} (descriptor exhaustion handled)
        whose connections get portserver's transport (L{TrackedTransport}), a class
        of the port's own; it echoes.
        """
        s = listening(self)
        server = self.serveInherited(makePlan(spec("echo", port=portOf(s))),
                                     Activation.fromDescriptors([("echo", s.fileno())]))
        port = server.listeners[0].port
        self.assertIsInstance(port, AcceptingPort)
        self.assertTrue(issubclass(port.transport, TrackedTransport))
        self.assertIsNot(port.transport, AcceptingPort.transport)
        self.assertEqual(port.description, f"echo/tcp 127.0.0.1:{portOf(s)}")
        self.assertEqual(server.addressOf("echo").port, portOf(s))
        received = yield self.tcp(server, "echo", send=b"inherited", want=9)
        self.assertEqual(received, b"inherited")

    @inlineCallbacks
    def test_udpPortClasses(self):
        """
        A UDP socket is served by L{DatagramPort} (on a wildcard address:
        L{PacketInfoPort}, replying from the address each datagram was sent to); it
        echoes.
        """
        loopback = listening(self, kind=socket.SOCK_DGRAM)
        wildcard = listening(self, host="0.0.0.0", kind=socket.SOCK_DGRAM)
        server = self.serveInherited(
            makePlan(spec("echo", port=portOf(loopback), transports=("udp",)),
                     spec("daytime", port=portOf(wildcard), interface="0.0.0.0",
                          transports=("udp",))),
            Activation.fromDescriptors([("echo", loopback.fileno()),
                                        ("daytime", wildcard.fileno())]))
        ports = [c.port for c in server.listeners]
        self.assertEqual(type(ports[0]), DatagramPort)
        self.assertEqual(type(ports[1]),
                         PacketInfoPort if pktinfoSupported() else DatagramPort)
        client = self.udpClient()
        client.transport.write(b"over udp", ("127.0.0.1", portOf(loopback)))
        data, source = yield self.reply(client)
        self.assertEqual((data, source), (b"over udp", ("127.0.0.1", portOf(loopback))))

    @inlineCallbacks
    def test_stopAndReloadKeepTheSocket(self):
        """
        A reload that removes the service stops serving its socket without closing
        it (connections wait in its queue); a reload that brings it back serves it
        again; stopping the server leaves it open too.
        """
        s = listening(self)
        activation = Activation.fromDescriptors([("echo", s.fileno())])
        echo = withoutDrain(makePlan(spec("echo", port=portOf(s))))
        server = self.serveInherited(echo, activation)
        report = yield server.reload(withoutDrain(makePlan(spec("daytime", port=0))))
        self.assertEqual(report.removed, (f"echo/tcp 127.0.0.1:{portOf(s)}",))
        self.assertEqual(len(report.warnings), 1)
        self.assertIn(f"inherited socket fd {s.fileno()} 'echo'", report.warnings[0])
        yield server.retiring[0].unbound
        self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
        socket.create_connection(("127.0.0.1", portOf(s)), timeout=REPLY_DEADLINE).close()
        yield server.reload(echo)
        received = yield self.tcp(server, "echo", send=b"again", want=5)
        self.assertEqual(received, b"again")
        yield server.stopService()
        self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)

    def test_reloadRejectsMismatch(self):
        """
        A reload that moves a service with an inherited socket to another port is
        rejected, naming the service and the descriptor; nothing changes.
        """
        s = listening(self)
        activation = Activation.fromDescriptors([("echo", s.fileno())])
        server = self.serveInherited(makePlan(spec("echo", port=portOf(s))), activation)
        failure = self.failureResultOf(
            server.reload(makePlan(spec("echo", port=portOf(s) + 1))), ReloadError)
        self.assertIn(f"service 'echo': inherited socket fd {s.fileno()} 'echo'",
                      failure.value.errors[0])
        self.assertEqual(server.generation, 1)


class NotifyTests(SynchronousTestCase):
    """
    The server and the reloader tell a (fake) service manager how they are doing.
    """

    CONFIG = "services:\n  - name: echo\n    protocol: echo\n    port: 7007\n"

    def setUp(self):
        self.manager = FakeManager(self)
        self.notifier = Notifier(self.manager.notifySocket, monotonic=lambda: 42)
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "w") as f:
            f.write(self.CONFIG)
        self.reactor = PortReactor()
        plan = loadPlan(self.path, PROVIDERS, rule=RULE, dualStack=True)
        self.server = PortServer(plan, self.reactor, notifier=self.notifier)
        self.reloader = Reloader(self.server, self.path, discover=lambda: Discovery,
                                 loadPlan=lambda *a, **k: loadPlan(*a, dualStack=True, **k),
                                 notifier=self.notifier)

    def test_readyStatusStopping(self):
        """
        C{READY=1} with a C{STATUS=} line once the reactor runs (every listener
        serves), a C{STATUS=} line every C{STATUS_INTERVAL} seconds, and
        C{STOPPING=1} when the drain starts (then no more status lines).
        """
        self.server.startService()
        self.assertEqual(self.manager.received(), [])
        self.reactor.run()
        self.assertEqual(self.manager.received(), [
            b"READY=1\nSTATUS=serving: 0 live connections, config generation 1\n"])
        self.reactor.advance(PortServer.STATUS_INTERVAL)
        self.assertEqual(self.manager.received(), [
            b"STATUS=serving: 0 live connections, config generation 1\n"])
        self.server.stopService()
        self.assertEqual(self.manager.received(), [
            b"STOPPING=1\nSTATUS=draining: 0 live connections, config generation 1\n"])
        self.reactor.advance(PortServer.STATUS_INTERVAL * 3)
        self.assertEqual(self.manager.received(), [])

    def test_reload(self):
        """
        C{RELOADING=1} (with C{MONOTONIC_USEC=}) before a reload is applied, C{READY=1}
        after it, with the new generation; a rejected reload ends with C{READY=1} too.
        """
        self.server.startService()
        self.successResultOf(self.reloader.reload())
        self.assertEqual(self.manager.received(), [
            b"RELOADING=1\nMONOTONIC_USEC=42\n"
            b"STATUS=reloading: 0 live connections, config generation 1\n",
            b"READY=1\nSTATUS=serving: 0 live connections, config generation 2\n"])
        with open(self.path, "w") as f:
            f.write("services: [\n")
        outcome = self.successResultOf(self.reloader.reload())
        self.assertEqual(outcome["result"], "rejected")
        self.assertEqual(self.manager.received(), [
            b"RELOADING=1\nMONOTONIC_USEC=42\n"
            b"STATUS=reloading: 0 live connections, config generation 2\n",
            b"READY=1\nSTATUS=serving: 0 live connections, config generation 2\n"])

    def test_noReadyWhileStopping(self):
        """
        A reload asked for once the server is stopping tells the manager nothing (a
        C{READY=1} after C{STOPPING=1} would say it serves again).
        """
        self.server.startService()
        self.server.stopService()
        self.manager.received()
        self.server.state = "draining"
        self.successResultOf(self.reloader.reload())
        self.assertEqual(self.manager.received(), [])


class TapTests(SynchronousTestCase):
    """
    C{twistd portserver}: the inherited sockets are checked with the config, shown by
    C{--check}, left out of the preflight, and given to the server.
    """

    def options(self, activation, *argv, parent=True, preflight=None):
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        options = tap.Options(stdout=self.stdout, stderr=self.stderr,
                              discover=lambda: Discovery,
                              preflight=preflight or (lambda listeners: []),
                              inherited=lambda: activation)
        if parent:
            options.parent = {"pidfile": None}
        options.parseOptions(list(argv))
        return options

    def test_preflightSkipsInherited(self):
        """
        Run by twistd, the foreground bind check probes only the listeners that bind
        their own port; the server gets the activation.
        """
        s = listening(self)
        path, _ = planFile(self, echoService(portOf(s)))
        activation = Activation.fromDescriptors([("echo", s.fileno())])
        probed = []
        options = self.options(activation, "-c", path,
                               preflight=lambda listeners: probed.extend(listeners) or [])
        self.assertEqual([l.describe() for l in probed], [f"echo/udp 127.0.0.1:{portOf(s)}"])
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        tree = tap.makeService(options, reactor=PortReactor())
        server = tree.getServiceNamed("portserver")
        self.assertIs(server.activation, activation)
        self.assertFalse(server.notifier.enabled)

    def test_mismatchStopsStartUp(self):
        """
        A socket that does not match its service stops twistd before anything is
        bound: exit 1, the located error on stderr, no traceback.
        """
        s = listening(self)
        path, _ = planFile(self, echoService(portOf(s) + 1, transports="[tcp]"))
        activation = Activation.fromDescriptors([("echo", s.fileno())])
        code = self.assertRaises(SystemExit, self.options, activation, "-c", path).code
        self.assertEqual(code, 1)
        err = self.stderr.getvalue()
        self.assertIn(f"portserver: {path}: 1 configuration error:\n  {path}:4:11: service "
                      f"'echo': inherited socket fd {s.fileno()} 'echo'", err)
        self.assertNotIn("Traceback", err)

    def test_checkShowsInherited(self):
        """
        C{--check} lists which listeners serve which inherited socket, and how many
        bind their own port.
        """
        s = listening(self)
        path, _ = planFile(self, echoService(portOf(s)))
        activation = Activation.fromDescriptors([("echo", s.fileno())])
        code = self.assertRaises(SystemExit, self.options, activation, "--check", "-c",
                                 path, parent=False).code
        self.assertEqual(code, 0)
        out = self.stdout.getvalue()
        self.assertIn("SOCKET ACTIVATION (LISTEN_FDS)\n", out)
        self.assertIn(f"echo/tcp 127.0.0.1:{portOf(s)}  fd {s.fileno()} 'echo' (tcp "
                      f"127.0.0.1:{portOf(s)})\n", out)
        self.assertIn("1 listener(s) serve an inherited socket; 1 bind their own port", out)

    def test_checkNoPrivilegeWarningForInherited(self):
        """
        A privileged port served on an inherited socket needs no privilege: C{--check}
        by a user who may not bind privileged ports warns only of those it binds
        itself (here: echo's udp port, with no socket passed), and not at all when
        every privileged port is inherited.
        """
        inherited = InheritedSocket("echo", 99, socket.AF_INET, socket.SOCK_STREAM,
                                    "127.0.0.1", 7, True)

        def check(transports):
            path, _ = planFile(self, echoService(7, transports=transports))
            stdout = io.StringIO()
            options = tap.Options(stdout=stdout, stderr=io.StringIO(),
                                  discover=lambda: Discovery,
                                  canBindPrivileged=lambda: False,
                                  inherited=lambda: Activation((inherited,)))
            self.assertRaises(SystemExit, options.parseOptions, ["--check", "-c", path])
            return stdout.getvalue()

        self.assertIn("warning: 1 privileged port(s) (7;", check("[tcp, udp]"))
        self.assertNotIn("privileged port(s)", check("[tcp]"))

    def test_checkWithoutActivation(self):
        """
        Without inherited sockets, C{--check} prints the plan alone.
        """
        path, _ = planFile(self, echoService(7007))
        self.assertRaises(SystemExit, self.options, Activation(), "--check", "-c", path,
                          parent=False)
        self.assertNotIn("SOCKET ACTIVATION", self.stdout.getvalue())

    def test_notifierUnderTwistdOnly(self):
        """
        Run by twistd (signals taken), the server and the reloader notify the socket
        C{NOTIFY_SOCKET} names; a tree on an injected reactor notifies no one.
        """
        manager = FakeManager(self)
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET=manager.notifySocket))
        path, _ = planFile(self, echoService(7007))
        options = self.options(Activation(), "-c", path)
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        tree = tap.makeService(options, reactor=PortReactor())
        self.assertFalse(tree.getServiceNamed("portserver").notifier.enabled)
        # On the global reactor (as twistd runs it), without taking this process's
        # signals once it runs.
        self.patch(reactor, "callWhenRunning", lambda *a, **k: None)
        tree = tap.makeService(options)
        server = tree.getServiceNamed("portserver")
        self.assertEqual(server.notifier.address, manager.notifySocket)
        self.assertIs(tree.getServiceNamed("reload-signal").reloader.notifier,
                      server.notifier)


class SocketActivateTests(SynchronousTestCase):
    """
    End to end: C{systemd-socket-activate} binds the sockets and runs twistd, which
    serves them (no "Address already in use") and tells its (fake) manager it is ready.
    """

    def setUp(self):
        if ACTIVATE is None:
            raise SkipTest("systemd-socket-activate is not installed (Debian package "
                           "systemd)")
        self.cwd = tempfile.mkdtemp(prefix="portserver-activate-")
        self.addCleanup(shutil.rmtree, self.cwd, True)

    def activate(self, *args, twistd=(), environment=()):
        """
        Start C{systemd-socket-activate ARGS twistd -n portserver TWISTD} (this
        checkout's code): it binds, and runs twistd at the first connection.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        setenv = [f"--setenv={e}" for e in (f"PYTHONPATH={ROOT}", *environment)]
        command = [ACTIVATE, *args, *setenv, sys.executable, "-c",
                   "from twisted.scripts.twistd import run; run()",
                   "-n", "--pidfile=", "--logfile=-", "portserver", *twistd]
        process = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(stopProcess, process)
        return process

    def config(self, text):
        path = os.path.join(self.cwd, "portserver.yaml")
        with open(path, "w") as f:
            f.write(text + "shutdown:\n  drain: 1\n")
        return path

    def message(self, manager) -> bytes:
        ready, _, _ = select.select([manager.socket], [], [], DEADLINE)
        self.assertTrue(ready, "no notification within the deadline")
        return manager.socket.recv(65536)

    def test_servesInheritedSocket(self):
        """
        The service named as the socket (C{--fdname=echo}) serves it: the connection
        that made systemd-socket-activate start twistd is echoed; its udp listener,
        with no socket passed, binds its own port. The manager hears C{READY=1}, then
        C{STOPPING=1} at SIGTERM, and twistd exits 0.
        """
        port = freePort()
        manager = FakeManager(self)
        process = self.activate(
            "-l", f"127.0.0.1:{port}", "--fdname=echo",
            environment=[f"NOTIFY_SOCKET={manager.notifySocket}"],
            twistd=["-c", self.config(echoService(port, status="tcp:0:interface=127.0.0.1"))])
        waitForLine(process, f"Listening on 127.0.0.1:{port} as 3")
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            client.sendall(b"activated")
            self.assertEqual(client.recv(100), b"activated")
        lines = waitForLine(process, "portserver ready")
        self.assertTrue(self.message(manager).startswith(b"READY=1\nSTATUS=serving: "))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(DEADLINE)
            udp.sendto(b"own port", ("127.0.0.1", port))
            self.assertEqual(udp.recvfrom(100), (b"own port", ("127.0.0.1", port)))
        output = "\n".join(lines)
        self.assertRegex(output, rf"on tcp 127\.0\.0\.1:{port}, unprivileged port \(\w+\), "
                                 rf"inherited socket fd 3 'echo' \(tcp 127\.0\.0\.1:{port}\)\n")
        self.assertRegex(output, rf"on udp 127\.0\.0\.1:{port}, unprivileged port \(\w+\)\n")
        self.assertNotIn("Address already in use", output)
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(DEADLINE), 0)
        self.assertTrue(self.message(manager).startswith(b"STOPPING=1\n"))

    def test_check(self):
        """
        C{--check} under socket activation lists the listener that serves the
        inherited socket, and exits 0.
        """
        port = freePort()
        process = self.activate(
            "-l", f"127.0.0.1:{port}", "--fdname=echo",
            twistd=["--check", "-c", self.config(echoService(port))])
        waitForLine(process, f"Listening on 127.0.0.1:{port} as 3")
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
        lines = waitForLine(process, "configuration is valid")
        self.assertEqual(process.wait(DEADLINE), 0)
        self.assertIn(f"echo/tcp 127.0.0.1:{port}  fd 3 'echo' (tcp 127.0.0.1:{port})",
                      lines)

    def test_tcpUDPAndStatus(self):
        """
        A service's TCP and UDP sockets of one name (two systemd-socket-activate, one
        passing its datagram socket through the other) are each served by the
        listener of their type, and the status service serves the socket its
        C{systemd:} endpoint names.
        """
        port, statusPort = freePort(), freePort()
        config = self.config(echoService(port, status="systemd:domain=INET:name=status"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        command = [ACTIVATE, "--datagram", "-l", f"127.0.0.1:{port}", "--fdname=echo",
                   ACTIVATE, "-l", f"127.0.0.1:{port}", "-l", f"127.0.0.1:{statusPort}",
                   "--fdname=echo:echo:status", f"--setenv=PYTHONPATH={ROOT}",
                   sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   "-n", "--pidfile=", "--logfile=-", "portserver", "-c", config]
        process = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(stopProcess, process)
        waitForLine(process, f"Listening on 127.0.0.1:{port} as 3")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(DEADLINE)
            udp.sendto(b"first", ("127.0.0.1", port))  # starts the second one
            waitForLine(process, f"Listening on 127.0.0.1:{statusPort} as 5")
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
                client.sendall(b"over tcp")  # starts twistd
                self.assertEqual(client.recv(100), b"over tcp")
            self.assertEqual(udp.recvfrom(100), (b"first", ("127.0.0.1", port)))
        lines = waitForLine(process, "portserver ready")
        output = "\n".join(lines)
        self.assertIn(f"inherited socket fd 4 'echo' (tcp 127.0.0.1:{port})", output)
        self.assertIn(f"inherited socket fd 3 'echo' (udp 127.0.0.1:{port})", output)
        with urllib.request.urlopen(f"http://127.0.0.1:{statusPort}/",
                                    timeout=DEADLINE) as page:
            self.assertEqual(page.status, 200)
        self.assertNotIn("Address already in use", output)
