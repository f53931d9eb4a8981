"""
Tests for the graceful stop: L{PortServer.stopService} drains live connections,
L{ServerTree} stops the status service after the drain, and
L{portserver.tap.installStopSignals} stops the reactor without recording the signal.
"""

from __future__ import annotations

import signal

import attrs
from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portserver.limits import ShutdownSpec
from portserver.server import PortServer, ServerTree
from portserver.tap import installStopSignals
from tests.support import PortReactor, makePlan, spec


def drainingServer(drain=5.0, start=True):
    """
    A started L{PortServer} (echo on TCP and UDP, daytime on TCP) on a L{PortReactor},
    draining for C{drain} seconds.
    """
    reactor = PortReactor()
    plan = makePlan(spec("echo", transports=("tcp", "udp")), spec("discard"))
    plan = attrs.evolve(plan, config=attrs.evolve(plan.config,
                                                  shutdown=ShutdownSpec(drain)))
    server = PortServer(plan, reactor)
    if start:
        server.startService()
    return reactor, server


def connect(reactor, index=0, port=40000):
    """
    Connect to the TCP listener C{index} (in listen order) from 127.0.0.2:C{port}: the
    protocol and its transport.
    """
    factory = reactor.tcpServers[index][1]
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", port))
    transport = StringTransportWithDisconnection(
        hostAddress=IPv4Address("TCP", "127.0.0.1", reactor.tcpServers[index][0]),
        peerAddress=IPv4Address("TCP", "127.0.0.2", port))
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def clientCloses(protocol, transport):
    transport.connected = False
    protocol.connectionLost(Failure(ConnectionDone()))


class DrainTests(SynchronousTestCase):
    """
    L{PortServer.stopService} stops listening at once and drains.
    """

    def test_immediateWithoutConnections(self):
        """
        With no live connection, the stop is over at once: every port is stopped and
        the L{Deferred} has fired.
        """
        reactor, server = drainingServer()
        self.assertIsNone(self.successResultOf(server.stopService()))
        self.assertTrue(all(p.stopped for p in reactor.ports))
        self.assertEqual(server.state, "stopped")

    def test_stopsEveryListenerAtOnce(self):
        """
        Every listener (TCP and UDP) stops listening in the C{stopService} call, while
        live connections hold the drain open.
        """
        reactor, server = drainingServer()
        connect(reactor)
        stopping = server.stopService()
        self.assertEqual(len(reactor.ports), 3)
        self.assertTrue(all(p.stopped for p in reactor.ports))
        self.assertNoResult(stopping)
        self.assertEqual(server.state, "draining")
        self.assertEqual(server.drainState(),
                         {"state": "draining", "remaining": 1, "drain_left": 5.0})
        reactor.advance(2)
        self.assertEqual(server.drainState()["drain_left"], 3.0)

    def test_connectionsServeDuringDrain(self):
        """
        A live connection carries on normally during the drain: echo still echoes.
        """
        reactor, server = drainingServer()
        protocol, transport = connect(reactor)
        server.stopService()
        reactor.advance(1)
        protocol.dataReceived(b"still here")
        self.assertEqual(transport.value(), b"still here")
        self.assertTrue(transport.connected)

    def test_firesWhenLastConnectionCloses(self):
        """
        The drain ends as soon as the last live connection closes, before the deadline;
        connections that finish keep their own close reason.
        """
        reactor, server = drainingServer()
        first, second = connect(reactor), connect(reactor, 1, 40001)
        stopping = server.stopService()
        clientCloses(*first)
        reactor.advance(0)
        self.assertNoResult(stopping)
        reactor.advance(1)
        clientCloses(*second)
        self.assertNoResult(stopping)  # not inside the connection's close
        reactor.advance(0)
        self.successResultOf(stopping)
        self.assertEqual(server.state, "stopped")
        self.assertEqual(server.registry.summary()["closed_by_reason"],
                         {"client-closed": 2})
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_abortsAtDeadline(self):
        """
        At C{drain} seconds the connections left are aborted (reason C{"shutdown"}) and
        the drain is over.
        """
        reactor, server = drainingServer(drain=5)
        done, (_, transport) = connect(reactor), connect(reactor, 1, 40001)
        stopping = server.stopService()
        clientCloses(*done)
        reactor.advance(4.9)
        self.assertNoResult(stopping)
        self.assertTrue(transport.connected)
        reactor.advance(0.1)
        self.assertTrue(transport.disconnected)  # aborted, not closed politely
        reactor.advance(0)
        self.successResultOf(stopping)
        self.assertEqual(len(server.registry), 0)
        self.assertEqual(server.registry.summary()["closed_by_reason"],
                         {"client-closed": 1, "shutdown": 1})

    def test_abortedCloseNeverHangs(self):
        """
        When an aborted connection does not report its close, the stop is over
        C{ABORT_GRACE} seconds after the deadline anyway.
        """
        reactor, server = drainingServer(drain=1)
        protocol, transport = connect(reactor)
        transport.abortConnection = lambda: None  # a transport that never closes
        stopping = server.stopService()
        reactor.advance(1)
        self.assertNoResult(stopping)
        reactor.advance(server.ABORT_GRACE)
        self.successResultOf(stopping)

    def test_zeroDrain(self):
        """
        C{drain: 0} aborts the live connections in the next reactor turn.
        """
        reactor, server = drainingServer(drain=0)
        protocol, transport = connect(reactor)
        stopping = server.stopService()
        reactor.advance(0)
        reactor.advance(0)
        self.assertTrue(transport.disconnected)
        self.successResultOf(stopping)

    def test_endDrain(self):
        """
        L{PortServer.endDrain} (a second stop signal) aborts what is left at once.
        """
        reactor, server = drainingServer(drain=60)
        protocol, transport = connect(reactor)
        self.assertFalse(server.endDrain())
        stopping = server.stopService()
        self.assertTrue(server.endDrain())
        self.assertTrue(transport.disconnected)
        reactor.advance(0)
        self.successResultOf(stopping)
        self.assertFalse(server.endDrain())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stopTwice(self):
        """
        A second C{stopService} during the drain waits for the same drain.
        """
        reactor, server = drainingServer()
        connect(reactor)
        self.assertIs(server.stopService(), server.stopService())

    def test_restartServes(self):
        """
        Started again after a stop, the server is serving.
        """
        reactor, server = drainingServer()
        self.successResultOf(server.stopService())
        server.startService()
        self.assertEqual(server.drainState(), {"state": "serving"})


class RecordingService(Service):
    def __init__(self, name, log):
        self.setName(name)
        self.log = log

    def stopService(self):
        super().stopService()
        self.log.append(self.name)


class ServerTreeTests(SynchronousTestCase):
    """
    L{ServerTree.stopService} stops the L{PortServer} first and waits for its drain.
    """

    def test_statusStopsAfterDrain(self):
        """
        The status service and the connection log stop only once the drain is over.
        """
        reactor, server = drainingServer(drain=5, start=False)
        stopped = []
        tree = ServerTree()
        RecordingService("connection-log", stopped).setServiceParent(tree)
        server.setServiceParent(tree)
        RecordingService("status", stopped).setServiceParent(tree)
        tree.startService()
        protocol, transport = connect(reactor)
        stopping = tree.stopService()
        self.assertEqual(stopped, [])
        self.assertEqual(server.state, "draining")
        clientCloses(protocol, transport)
        reactor.advance(0)
        self.assertEqual(stopped, ["status", "connection-log"])
        self.successResultOf(stopping)


class FakeSignalReactor:
    def __init__(self):
        self.calls = []

    def stop(self):
        self.calls.append("stop")

    def callFromThread(self, f, *args):
        f(*args)


class FakeServer:
    def __init__(self):
        self.ended = 0

    def endDrain(self):
        self.ended += 1
        return True


class StopSignalTests(SynchronousTestCase):
    """
    L{installStopSignals} takes over the reactor's SIGTERM and SIGINT handlers.
    """

    def install(self, current):
        reactor, server, installed = FakeSignalReactor(), FakeServer(), {}
        taken = installStopSignals(reactor, server, setSignal=installed.__setitem__,
                                   getSignal=current.__getitem__)
        return reactor, server, installed, taken

    def test_takesOverInstalledHandlers(self):
        """
        A signal the reactor handles is taken over; the first signal stops the reactor,
        a second ends the drain.
        """
        reactor, server, installed, taken = self.install(
            {signal.SIGTERM: lambda *a: None, signal.SIGINT: lambda *a: None})
        self.assertEqual(taken, [signal.SIGTERM, signal.SIGINT])
        installed[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(reactor.calls, ["stop"])
        self.assertEqual(server.ended, 0)
        installed[signal.SIGINT](signal.SIGINT, None)
        self.assertEqual(reactor.calls, ["stop"])
        self.assertEqual(server.ended, 1)

    def test_leavesDefaultsAlone(self):
        """
        SIG_DFL, SIG_IGN and Python's own SIGINT handler are not replaced (the reactor
        runs without signal handlers, or an embedding program chose them).
        """
        reactor, server, installed, taken = self.install(
            {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler})
        self.assertEqual((taken, installed), ([], {}))
        reactor, server, installed, taken = self.install(
            {signal.SIGTERM: signal.SIG_IGN, signal.SIGINT: None})
        self.assertEqual((taken, installed), ([], {}))
