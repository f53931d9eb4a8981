"""
Tests for L{portserver.tracking}: the layer that records every TCP connection and UDP flow
of a plugin in the L{Registry}. Transports are in memory; time comes from a L{Clock}.
"""

from __future__ import annotations

import gc
import weakref

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.wire import Echo
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from portserver.datagrams import TrackingDatagram
from portserver.limits import Limits
from portserver.ports import PrivilegeRule
from portserver.protocols.classic import EchoDatagram
from portserver.registry import Endpoint, Registry
from portserver.tracking import HalfCloseableTracker, Tracker, TrackingFactory

HOST = IPv4Address("TCP", "127.0.0.1", 7)
PEER = IPv4Address("TCP", "127.0.0.2", 40001)


def makeRegistry():
    """
    A registry on a fresh clock (at 100 seconds), logging nothing.
    """
    clock = Clock()
    clock.advance(100)
    return Registry(clock, PrivilegeRule(1024, "test"))


class Recorder(Protocol):
    """
    A plugin protocol that records what happens to it.
    """

    def __init__(self):
        self.received = []
        self.lost = []

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """
    A plugin protocol that handles half-closed connections, recording the calls.
    """

    def readConnectionLost(self):
        self.lost.append("read")

    def writeConnectionLost(self):
        self.lost.append("write")


class TCPStringTransport(StringTransport):
    """
    A L{StringTransport} with the TCP-only methods a reactor's TCP transport has.
    """

    noDelay = False
    keepAlive = False

    def getTcpNoDelay(self):
        return self.noDelay

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled

    def getTcpKeepAlive(self):
        return self.keepAlive

    def setTcpKeepAlive(self, enabled):
        self.keepAlive = enabled

    def loseWriteConnection(self):
        self.writeClosed = True


class Connection:
    """
    One tracked TCP connection over a L{StringTransport}, set up as the reactor would:
    the tracking factory builds a protocol, the transport holds it, C{makeConnection}.
    """

    def __init__(self, testCase, protocolFactory=Echo, host=HOST, peer=PEER,
                 transportClass=StringTransport):
        self.registry = makeRegistry()
        self.factory = TrackingFactory(Factory.forProtocol(protocolFactory), self.registry,
                                       "echo", "echo")
        self.tracker = self.factory.buildProtocol(peer)
        self.transport = transportClass(hostAddress=host, peerAddress=peer)
        self.transport.protocol = self.tracker
        self.tracker.makeConnection(self.transport)
        self.protocol = self.tracker.wrapped

    @property
    def record(self):
        [record] = self.registry.snapshot() or self.registry.recentlyClosed()
        return record

    def lose(self, exception):
        """
        End the connection with C{exception}, as the reactor does: the transport drops its
        protocol, then calls its C{connectionLost}.
        """
        tracker = self.transport.protocol
        del self.transport.protocol
        tracker.connectionLost(Failure(exception))


class InterfaceTests(SynchronousTestCase):
    """
    A L{Tracker} is a protocol to the transport and a TCP transport to the plugin.
    """

    def test_protocol(self):
        """
        A tracker provides L{IProtocol}.
        """
        connection = Connection(self)
        self.assertTrue(verifyObject(IProtocol, connection.tracker))

    def test_tcpTransportOverTCP(self):
        """
        Over a transport with the TCP methods (as the reactor's), a connected tracker
        provides L{ITCPTransport}, those methods reaching the transport.
        """
        connection = Connection(self, transportClass=TCPStringTransport)
        self.assertTrue(verifyObject(ITCPTransport, connection.tracker))
        connection.tracker.setTcpNoDelay(True)
        self.assertTrue(connection.transport.getTcpNoDelay())

    def test_tcpTransport(self):
        """
        A connected tracker, which declares L{ITCPTransport} on its class, has every method
        of it, whatever transport it wraps.
        """
        connection = Connection(self)
        self.assertTrue(ITCPTransport.providedBy(connection.tracker))
        verifyObject(ITCPTransport, connection.tracker)



class RecordTests(SynchronousTestCase):
    """
    What a tracked connection puts in the registry, and what the plugin sees.
    """

    def test_recorded(self):
        """
        Connecting records one live TCP connection with exactly the transport's endpoints,
        the service and protocol names, and the clock's time.
        """
        connection = Connection(self)
        record = connection.record
        self.assertEqual(
            (record.service, record.protocol, record.transport, record.local, record.remote,
             record.opened),
            ("echo", "echo", "tcp", Endpoint("127.0.0.1", 7), Endpoint("127.0.0.2", 40001),
             100.0))
        self.assertIs(connection.registry.live(record.id), record)

    def test_bytes(self):
        """
        Bytes received count as bytes in; what the plugin writes, with C{write} and
        C{writeSequence}, counts as bytes out and reaches the transport.
        """
        connection = Connection(self)
        connection.tracker.dataReceived(b"hello")
        connection.tracker.dataReceived(b"!!")
        connection.protocol.transport.writeSequence([b"ab", b"cde"])
        self.assertEqual(connection.transport.value(), b"hello!!abcde")
        record = connection.record
        self.assertEqual((record.bytesIn, record.bytesOut), (7, 12))

    def test_pluginSeesTracker(self):
        """
        The plugin's protocol has the tracker as its transport, and its C{getPeer} and
        C{getHost} give the real addresses.
        """
        connection = Connection(self)
        self.assertIsInstance(connection.protocol, Echo)
        self.assertIs(connection.protocol.transport, connection.tracker)
        self.assertEqual(connection.protocol.transport.getPeer(), PEER)
        self.assertEqual(connection.protocol.transport.getHost(), HOST)

    def test_mappedIPv4(self):
        """
        IPv4-mapped IPv6 hosts are recorded as IPv4; other IPv6 hosts as they are.
        """
        connection = Connection(self, host=IPv6Address("TCP", "::ffff:127.0.0.1", 7),
                                peer=IPv6Address("TCP", "::ffff:127.0.0.2", 40001))
        self.assertEqual((connection.record.local, connection.record.remote),
                         (Endpoint("127.0.0.1", 7), Endpoint("127.0.0.2", 40001)))
        connection = Connection(self, host=IPv6Address("TCP", "::1", 7),
                                peer=IPv6Address("TCP", "::1", 40001))
        self.assertEqual((connection.record.local, connection.record.remote),
                         (Endpoint("::1", 7), Endpoint("::1", 40001)))

    def test_refused(self):
        """
        When the plugin's factory builds no protocol, the tracking factory builds none
        either, and nothing is recorded.
        """
        registry = makeRegistry()

        class Refusing(Factory):
            def buildProtocol(self, addr):
                return None

        factory = TrackingFactory(Refusing(), registry, "echo", "echo")
        self.assertIsNone(factory.buildProtocol(PEER))
        self.assertEqual((len(registry), registry.recentlyClosed(), dict(registry.accepted)),
                         (0, [], {}))


class FactoryTests(SynchronousTestCase):
    """
    What a L{TrackingFactory} is built with when not told.
    """

    def test_defaults(self):
        """
        Without limits a factory has the default L{Limits} (no timeouts, the default
        output cap), the registry's clock, and no admission.
        """
        registry = makeRegistry()
        factory = TrackingFactory(Factory.forProtocol(Echo), registry, "echo", "echo")
        self.assertEqual(factory.limits, Limits())
        self.assertIs(factory.clock, registry.clock)
        self.assertIsNone(factory.admission)
        self.assertEqual((factory.idleTimeout, factory.deadline, factory.timed,
                          factory.maxOutput, factory.closeGrace),
                         (None, None, False, Limits().maxOutput, Limits().closeGrace))

    def test_clock(self):
        """
        The timeouts run on the clock given, not the registry's.
        """
        registry = makeRegistry()
        clock = Clock()
        factory = TrackingFactory(Factory.forProtocol(Echo), registry, "echo", "echo",
                                  limits=Limits(idleTimeout=1), clock=clock)
        tracker = factory.buildProtocol(PEER)
        tracker.makeConnection(StringTransport(hostAddress=HOST, peerAddress=PEER))
        self.assertEqual((len(clock.getDelayedCalls()), registry.clock.getDelayedCalls()),
                         (1, []))
        clock.advance(1)
        self.assertTrue(tracker.transport.disconnecting)


class CloseReasonTests(SynchronousTestCase):
    """
    Why a connection closed, from Twisted's reason and who asked to close.
    """

    def closeWith(self, exception, before=lambda connection: None):
        """
        Connect a L{Recorder}, run C{before}, lose the connection with C{exception}; the
        record's close reason.
        """
        connection = Connection(self, Recorder)
        protocol = connection.protocol
        before(connection)
        connection.lose(exception)
        self.assertEqual(len(connection.registry), 0)
        self.assertEqual(len(protocol.lost), 1)
        self.assertIsInstance(protocol.lost[0].value, type(exception))
        [record] = connection.registry.recentlyClosed()
        return record.reason

    def test_clientClosed(self):
        """
        A clean close the server did not ask for is "client-closed".
        """
        self.assertEqual(self.closeWith(ConnectionDone()), "client-closed")

    def test_serverClosed(self):
        """
        A clean close after the plugin called C{loseConnection} is "server-closed", and the
        call reached the transport.
        """
        def close(connection):
            connection.protocol.transport.loseConnection()
            self.assertTrue(connection.transport.disconnecting)

        self.assertEqual(self.closeWith(ConnectionDone(), close), "server-closed")

    def test_abortConnection(self):
        """
        A close after the plugin called C{abortConnection} is "aborted", even if Twisted
        calls it clean, and even after an earlier C{loseConnection}.
        """
        def abort(connection):
            connection.protocol.transport.loseConnection()
            connection.protocol.transport.abortConnection()

        self.assertEqual(self.closeWith(ConnectionDone(), abort), "aborted")

    def test_reset(self):
        """
        A lost connection (e.g. reset by the peer) is "reset".
        """
        self.assertEqual(self.closeWith(ConnectionLost()), "reset")

    def test_aborted(self):
        """
        L{ConnectionAborted} is "aborted".
        """
        self.assertEqual(self.closeWith(ConnectionAborted()), "aborted")

    def test_shutdown(self):
        """
        Any close while the registry is shutting down is "shutdown".
        """
        def shutDown(connection):
            connection.registry.shuttingDown = True

        self.assertEqual(self.closeWith(ConnectionDone(), shutDown), "shutdown")

    def test_error(self):
        """
        Any other reason is "error".
        """
        self.assertEqual(self.closeWith(ValueError("boom")), "error")

    def test_verdicts(self):
        """
        The server's own verdicts (limits, a plugin's error) take precedence over
        Twisted's reason, over a later abort, and over a shutdown begun after them.
        """
        for verdict in ("idle-timeout", "deadline", "output-cap", "close-timeout",
                        "plugin-error"):
            def judge(connection):
                connection.tracker.closer = verdict
                connection.protocol.transport.abortConnection()
                connection.registry.shuttingDown = True

            self.assertEqual(self.closeWith(ConnectionAborted(), judge), verdict)

    def test_pluginGetsReason(self):
        """
        The plugin's protocol gets the very reason the transport gave.
        """
        connection = Connection(self, Recorder)
        protocol = connection.protocol
        reason = Failure(ConnectionLost("gone"))
        connection.tracker.connectionLost(reason)
        self.assertEqual(protocol.lost, [reason])


class HalfCloseTests(SynchronousTestCase):
    """
    Half-close support follows the plugin's protocol.
    """

    def test_halfCloseable(self):
        """
        A plugin protocol providing L{IHalfCloseableProtocol} gets a tracker providing it,
        which forwards C{readConnectionLost} and C{writeConnectionLost}.
        """
        connection = Connection(self, HalfCloser)
        self.assertIsInstance(connection.tracker, HalfCloseableTracker)
        self.assertTrue(verifyObject(IHalfCloseableProtocol, connection.tracker))
        connection.tracker.readConnectionLost()
        connection.tracker.writeConnectionLost()
        self.assertEqual(connection.protocol.lost, ["read", "write"])

    def test_plain(self):
        """
        A plain plugin protocol gets a tracker that does not provide
        L{IHalfCloseableProtocol}, so the reactor closes the whole connection on EOF.
        """
        connection = Connection(self, Recorder)
        self.assertIs(type(connection.tracker), Tracker)
        self.assertFalse(IHalfCloseableProtocol.providedBy(connection.tracker))


class CycleTests(SynchronousTestCase):
    """
    A closed connection is freed by reference counting alone.
    """

    def setUp(self):
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def test_aliveWhileConnected(self):
        """
        While connected, the transport (as the reactor's) keeps the tracker and the plugin's
        protocol alive, without the test holding either.
        """
        connection = Connection(self)
        protocol = weakref.ref(connection.protocol)
        tracker = weakref.ref(connection.tracker)
        del connection.protocol, connection.tracker
        self.assertIsNotNone(protocol())
        self.assertIsNotNone(tracker())

    def test_freedWhenLost(self):
        """
        Once the connection is lost and the transport dropped, the plugin's protocol and
        the tracker are gone at once, with the cycle collector off: nothing forms a cycle.
        """
        connection = Connection(self)
        connection.tracker.dataReceived(b"data")
        protocol = weakref.ref(connection.protocol)
        tracker = weakref.ref(connection.tracker)
        del connection.protocol, connection.tracker
        connection.lose(ConnectionDone())
        del connection.transport
        self.assertIsNone(protocol())
        self.assertIsNone(tracker())
        self.assertEqual(connection.registry.recentlyClosed()[0].bytesIn, 4)


class ForwardingTests(SynchronousTestCase):
    """
    What the tracker does not define itself, it takes from the transport.
    """

    def test_getattr(self):
        """
        TCP-only methods and other attributes the tracker lacks are the transport's.
        """
        connection = Connection(self)
        calls = []
        connection.transport.setTcpNoDelay = calls.append
        connection.transport.custom = marker = object()
        connection.tracker.setTcpNoDelay(True)
        self.assertEqual(calls, [True])
        self.assertIs(connection.tracker.custom, marker)
        self.assertFalse(connection.tracker.disconnecting)
        connection.transport.loseConnection()
        self.assertTrue(connection.tracker.disconnecting)
        self.assertRaises(AttributeError, getattr, connection.tracker, "noSuchAttribute")

    def test_dunder(self):
        """
        Dunder names are never taken from the transport.
        """
        connection = Connection(self)
        connection.transport.__marker__ = 1
        self.assertEqual(connection.transport.__marker__, 1)
        self.assertRaises(AttributeError, getattr, connection.tracker, "__marker__")
        self.assertRaises(AttributeError, getattr, connection.tracker, "__len__")

    def test_producers(self):
        """
        Registering and unregistering a producer, and pausing, resuming and stopping, reach
        the transport.
        """
        connection = Connection(self)
        producer = object()
        connection.tracker.registerProducer(producer, True)
        self.assertEqual((connection.transport.producer, connection.transport.streaming),
                         (producer, True))
        connection.tracker.unregisterProducer()
        self.assertIsNone(connection.transport.producer)
        connection.tracker.pauseProducing()
        self.assertEqual(connection.transport.producerState, "paused")
        connection.tracker.resumeProducing()
        self.assertEqual(connection.transport.producerState, "producing")
        connection.tracker.stopProducing()
        self.assertEqual(connection.transport.producerState, "stopped")


class FakeUDPPort:
    """
    A listening UDP port in memory: records what is written, and may say where the
    datagram being delivered was sent (C{destination}).
    """

    def __init__(self, destination=None):
        self.written = []
        if destination is not None:
            self.destination = destination

    def write(self, data, addr=None):
        self.written.append((data, addr))

    def getHost(self):
        return IPv4Address("UDP", "127.0.0.1", 7)


class TrackingDatagramTests(SynchronousTestCase):
    """
    L{TrackingDatagram} records one flow per remote endpoint.
    """

    def connect(self, port=None):
        """
        A tracked L{EchoDatagram} on C{port} (a L{FakeUDPPort} by default).
        """
        registry = makeRegistry()
        tracking = TrackingDatagram(EchoDatagram(), registry, "echo", "echo")
        port = port or FakeUDPPort()
        tracking.makeConnection(port)
        return registry, tracking, port

    def test_received(self):
        """
        A datagram opens a flow for its source with one datagram and its bytes in; the
        echo's reply counts on the same flow and reaches the port with the source address.
        """
        registry, tracking, port = self.connect()
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        [flow] = registry.snapshot("udp")
        self.assertEqual(
            (flow.service, flow.protocol, flow.transport, flow.local, flow.remote,
             flow.datagramsIn, flow.bytesIn, flow.datagramsOut, flow.bytesOut),
            ("echo", "echo", "udp", Endpoint("127.0.0.1", 7), Endpoint("127.0.0.2", 40001),
             1, 3, 1, 3))
        self.assertEqual(port.written, [(b"abc", ("127.0.0.2", 40001))])

    def test_sameFlow(self):
        """
        More datagrams from the same source add to the same flow and move its C{lastSeen}.
        """
        registry, tracking, port = self.connect()
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        registry.clock.advance(5)
        tracking.datagramReceived(b"de", ("127.0.0.2", 40001))
        [flow] = registry.snapshot("udp")
        self.assertEqual((flow.datagramsIn, flow.bytesIn, flow.datagramsOut, flow.bytesOut,
                          flow.opened, flow.lastSeen), (2, 5, 2, 5, 100.0, 105.0))

    def test_destination(self):
        """
        The local endpoint's host is the port's C{destination} when it says one.
        """
        registry, tracking, port = self.connect(FakeUDPPort(destination="127.0.0.5"))
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        [flow] = registry.snapshot("udp")
        self.assertEqual(flow.local, Endpoint("127.0.0.5", 7))

    def test_mappedIPv4(self):
        """
        An IPv4-mapped IPv6 source is recorded as IPv4, and the reply goes back to the
        address as the port gave it.
        """
        registry, tracking, port = self.connect()
        tracking.datagramReceived(b"abc", ("::ffff:127.0.0.2", 40001))
        [flow] = registry.snapshot("udp")
        self.assertEqual(flow.remote, Endpoint("127.0.0.2", 40001))
        self.assertEqual(port.written, [(b"abc", ("::ffff:127.0.0.2", 40001))])

    def test_writeToNewAddress(self):
        """
        A write to an address with no flow opens one for it, with the datagram out.
        """
        registry, tracking, port = self.connect()
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        tracking.wrapped.transport.write(b"hello", ("127.0.0.9", 5000))
        flow = registry.knownFlow("echo", Endpoint("127.0.0.9", 5000))
        self.assertEqual((flow.datagramsIn, flow.bytesIn, flow.datagramsOut, flow.bytesOut),
                         (0, 0, 1, 5))
        self.assertEqual(len(registry.snapshot("udp")), 2)
        self.assertEqual(port.written[-1], (b"hello", ("127.0.0.9", 5000)))

    def test_pluginTransport(self):
        """
        The plugin's protocol is connected to a transport that is not the bare port but
        forwards what it lacks to it.
        """
        registry, tracking, port = self.connect()
        self.assertIsNot(tracking.wrapped.transport, port)
        self.assertEqual(tracking.wrapped.transport.getHost(), port.getHost())
