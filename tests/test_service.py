"""
Tests for L{portserver.server} and L{portserver.startup}: binding, start-up failures,
stopping.
"""

import errno
import socket

from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from portserver.plan import planListeners
from portserver.ports import PrivilegeRule
from portserver.provider import PortProtocol
from portserver.server import PortServer, ServerTree
from portserver.startup import PRIVILEGED_REMEDY, StartupError, preflight
from tests.support import PortReactor, makePlan, spec


class PortServerTests(SynchronousTestCase):
    """
    L{PortServer} binds every listener of a plan, all or none.
    """

    def server(self, reactor, *specs, **kwargs):
        return PortServer(makePlan(*specs, **kwargs), reactor)

    def test_bindsInPrivilegedStart(self):
        """
        C{privilegedStartService} binds each listener (TCP and UDP) on its interface and
        actual port, before C{startService}, which then binds nothing twice.
        """
        reactor = PortReactor()
        server = self.server(reactor, spec("echo", transports=("tcp", "udp")),
                             spec("daytime", interface="::1"), portOffset=10000)
        server.privilegedStartService()
        self.assertEqual([(p, i) for p, _, _, i in reactor.tcpServers],
                         [(10007, "127.0.0.1"), (10013, "::1")])
        self.assertEqual([(p, i) for p, _, i, _ in reactor.udpServers],
                         [(10007, "127.0.0.1")])
        server.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        self.assertEqual(len(reactor.udpServers), 1)

    def test_backlog(self):
        """
        TCP listeners ask for the largest accept queue the kernel allows
        (C{socket.SOMAXCONN}), not Twisted's default of 50, which drops SYNs in a burst.
        """
        reactor = PortReactor()
        self.server(reactor, spec("echo")).privilegedStartService()
        [(_, _, backlog, _)] = reactor.tcpServers
        self.assertEqual(backlog, socket.SOMAXCONN)
        self.assertGreater(backlog, 50)

    def test_startServiceBindsWithoutPrivilegedStart(self):
        """
        C{startService} alone (as an embedding application calls it) binds too.
        """
        reactor = PortReactor()
        server = self.server(reactor, spec("echo"))
        server.startService()
        self.assertEqual([p for p, _, _, _ in reactor.tcpServers], [7])
        self.assertEqual(server.addressOf("echo").port, 7)
        self.assertIsNone(server.addressOf("echo", "udp"))

    def test_servesThePluginsFactory(self):
        """
        The factory bound is the one the plugin built for the service.
        """
        built = Factory()

        provider = PortProtocol("custom", "A test protocol", 4000,
                                factory=lambda service, reactor: built)
        reactor = PortReactor()
        server = self.server(reactor, spec("custom", providers={"custom": provider}))
        server.startService()
        self.assertIs(reactor.tcpServers[0][1].wrapped, built)

    def test_bindFailureIsFatalAndNamesEverything(self):
        """
        When one listener cannot bind, start-up fails with one L{StartupError} naming the
        service, transport, address, port and OS error, and the ports already bound are
        released: nothing is half-started.
        """
        reactor = PortReactor(refuse={("udp", 10007): errno.EADDRINUSE})
        server = self.server(reactor, spec("daytime"),
                             spec("echo", transports=("tcp", "udp")), portOffset=10000)
        error = self.assertRaises(StartupError, server.privilegedStartService)
        message = str(error)
        self.assertIn("service 'echo'", message)
        self.assertIn("echo/udp 127.0.0.1:10007", message)
        self.assertIn("[Errno 98]", message)
        self.assertIn("ss -lnpu 'sport = :10007'", message)
        self.assertEqual(len(reactor.ports), 2)
        self.assertTrue(all(p.stopped for p in reactor.ports))
        self.assertFalse(server.running)

    def test_permissionDeniedOnPrivilegedPortGivesRemedies(self):
        """
        A permission error on a privileged port names the three remedies: root with
        --uid/--gid, CAP_NET_BIND_SERVICE, and --port-offset.
        """
        reactor = PortReactor(refuse={("tcp", 7): errno.EACCES})
        server = self.server(reactor, spec("echo"))
        message = str(self.assertRaises(StartupError, server.privilegedStartService))
        self.assertIn("echo/tcp 127.0.0.1:7: [Errno 13]", message)
        self.assertIn("privileged ports need root", message)
        for remedy in ("--uid", "CAP_NET_BIND_SERVICE", "--port-offset"):
            self.assertIn(remedy, message)

    def test_manyPrivilegedFailuresOneRemedy(self):
        """
        Six privileged listeners refused: one line per listener, in plan order, then the
        remedies once (not six times).
        """
        refuse = {(t, p): errno.EACCES for t in ("tcp", "udp") for p in (7, 9, 13)}
        reactor = PortReactor(refuse=refuse)
        server = self.server(reactor, *(spec(n, transports=("tcp", "udp"))
                                        for n in ("echo", "discard", "daytime")))
        lines = str(self.assertRaises(StartupError, server.privilegedStartService)
                    ).splitlines()
        self.assertEqual(len(lines), 7)
        self.assertEqual([l.split(": ")[1] for l in lines[:6]],
                         ["echo/tcp 127.0.0.1:7", "echo/udp 127.0.0.1:7",
                          "discard/tcp 127.0.0.1:9", "discard/udp 127.0.0.1:9",
                          "daytime/tcp 127.0.0.1:13", "daytime/udp 127.0.0.1:13"])
        self.assertEqual(lines[6], "  " + PRIVILEGED_REMEDY)

    def test_everyFailureReported(self):
        """
        Two listeners failing for different reasons are both in the one message.
        """
        reactor = PortReactor(refuse={("tcp", 7): errno.EACCES,
                                      ("tcp", 13): errno.EADDRNOTAVAIL})
        server = self.server(reactor, spec("echo"), spec("daytime", interface="10.9.9.9"))
        message = str(self.assertRaises(StartupError, server.startService))
        self.assertIn("echo/tcp 127.0.0.1:7", message)
        self.assertIn("daytime/tcp 10.9.9.9:13", message)
        self.assertIn("10.9.9.9 is not an address of this host", message)

    def test_factoryBuildFailureNamesService(self):
        """
        A plugin that raises while building its factory fails start-up with a message
        naming the service and protocol, not a traceback.
        """
        def broken(service, reactor):
            raise KeyError("missing")

        provider = PortProtocol("broken", "Fails", 4000, factory=broken)
        reactor = PortReactor()
        server = self.server(reactor, spec("svc", "broken", providers={"broken": provider}))
        message = str(self.assertRaises(StartupError, server.privilegedStartService))
        self.assertIn("service 'svc': protocol 'broken' failed to build its tcp side", message)
        self.assertIn("KeyError", message)
        self.assertEqual(reactor.tcpServers, [])

    def test_udpServesThePluginsDatagramProtocol(self):
        """
        A UDP listener serves the plugin's datagram protocol.
        """
        protocol = DatagramProtocol()
        provider = PortProtocol("dgram", "UDP only", 4000,
                                datagram=lambda service, reactor: protocol)
        reactor = PortReactor()
        server = self.server(reactor, spec("d", "dgram", transports=("udp",),
                                           providers={"dgram": provider}))
        server.startService()
        self.assertIs(reactor.udpServers[0][1].wrapped, protocol)

    def test_stopServiceStopsListening(self):
        """
        Stopping the server stops every listening port.
        """
        reactor = PortReactor()
        server = self.server(reactor, spec("echo", transports=("tcp", "udp")))
        server.startService()
        self.successResultOf(server.stopService())
        self.assertEqual(len(reactor.ports), 2)
        self.assertTrue(all(p.stopped for p in reactor.ports))
        self.assertIsNone(server.addressOf("echo"))

    def test_oneLogEventPerListener(self):
        """
        Start-up logs one event per listener with service, protocol, transport, address,
        actual and well-known port, and whether the port is privileged.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor = PortReactor()
        server = self.server(reactor, spec("echo", transports=("tcp", "udp")),
                             portOffset=10000)
        server.startService()
        listening = [e for e in events if e.get("log_format", "").startswith("Listening")]
        self.assertEqual(
            [(e["service"], e["protocol"], e["transport"], e["host"], e["port"],
              e["configuredPort"], e["privileged"]) for e in listening],
            [("echo", "echo", "tcp", "127.0.0.1", 10007, 7, False),
             ("echo", "echo", "udp", "127.0.0.1", 10007, 7, False)])


class PreflightTests(SynchronousTestCase):
    """
    L{preflight} tries each listener's bind with a plain socket, before twistd forks.
    """

    def listeners(self, port, transports=("tcp", "udp")):
        listeners, _ = planListeners([spec("echo", port=port, transports=transports)], 0,
                                     PrivilegeRule(), True)
        return listeners

    def test_portInUse(self):
        """
        A TCP port another socket listens on is reported with the OS error and the
        C{ss} remedy; the free UDP port of the same number is not.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        failures = preflight(self.listeners(port))
        self.assertEqual(len(failures), 1)
        self.assertIn(f"echo/tcp 127.0.0.1:{port}: [Errno 98]", failures[0])
        self.assertIn(f"ss -lnpt 'sport = :{port}'", failures[0])

    def test_freePortsAndPortZero(self):
        """
        Free ports and port 0 pass, and nothing stays bound: the same ports bind again.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        self.assertEqual(preflight(self.listeners(port)), [])
        self.assertEqual(preflight(self.listeners(0)), [])
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))


class ServerTreeTests(SynchronousTestCase):
    """
    L{ServerTree} starts every child or releases what had bound.
    """

    def test_laterFailureReleasesEarlierPorts(self):
        """
        When a child after the L{PortServer} (e.g. the status service) fails with
        L{StartupError}, the ports the L{PortServer} had bound are released and the error
        reaches the caller.
        """
        from twisted.application.service import Service

        class Failing(Service):
            def privilegedStartService(self):
                raise StartupError("cannot start the status service on 'tcp:8790'")

        reactor = PortReactor()
        tree = ServerTree()
        PortServer(makePlan(spec("echo", transports=("tcp", "udp"))), reactor
                   ).setServiceParent(tree)
        Failing().setServiceParent(tree)
        error = self.assertRaises(StartupError, tree.privilegedStartService)
        self.assertIn("status service", str(error))
        self.assertEqual(len(reactor.ports), 2)
        self.assertTrue(all(p.stopped for p in reactor.ports))
