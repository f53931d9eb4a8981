"""
Tests for the hardening of L{portserver.tracking}: idle timeouts, deadlines, close grace,
the output cap (and L{unsentBytes}, pinned against a real TCP connection), admission, and
fault isolation of plugin errors. Unit tests run on a L{Clock} and in-memory transports;
the integration tests on the real reactor, 127.0.0.1, ephemeral ports.
"""

from __future__ import annotations

import gc
import weakref

import attrs
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from portserver.datagrams import TrackingDatagram
from portserver.limits import Limits
from portserver.listeners import ListenerService
from portserver.plan import planListeners
from portserver.ports import PrivilegeRule
from portserver.protocols.classic import Echo
from portserver.registry import CLOSED, Registry
from portserver.server import PortServer
from portserver.testing import MemoryTransport
from portserver.tracking import (
    CLOSE_TIMEOUT,
    DEADLINE,
    IDLE_TIMEOUT,
    OUTPUT_CAP,
    PLUGIN_ERROR,
    Refusal,
    TrackingFactory,
    unsentBytes,
)
from tests.support import makePlan, spec
from tests.test_tracking import Recorder, makeRegistry

HOST = IPv4Address("TCP", "127.0.0.1", 7)
PEER = IPv4Address("TCP", "127.0.0.2", 40001)
OTHER = IPv4Address("TCP", "127.0.0.3", 40002)

#: Seconds a real connection may take to be closed for a limit, on a loaded machine.
REAL_DEADLINE = 10


class Exploding(Recorder):
    """
    A plugin protocol that raises L{ZeroDivisionError} on C{b"boom"}.
    """

    def dataReceived(self, data):
        if data == b"boom":
            1 / 0
        super().dataReceived(data)


class BufferedTransport(MemoryTransport):
    """
    A L{MemoryTransport} with the write buffers of Twisted's TCP transport
    (C{abstract.FileDescriptor}): what is written stays unsent until L{drain}.
    """

    dataBuffer = b""
    offset = 0
    _tempDataLen = 0

    def write(self, data):
        super().write(data)
        self._tempDataLen += len(data)

    def writeSequence(self, data):
        super().writeSequence(data)
        self._tempDataLen += sum(map(len, data))

    def drain(self):
        """
        The peer takes everything written so far.
        """
        self._tempDataLen = 0


class Served:
    """
    A L{TrackingFactory} around C{protocolClass} with C{limits} (and C{admission}), on a
    registry and clock of its own.
    """

    def __init__(self, protocolClass=Recorder, limits=None, admission=None):
        self.registry = makeRegistry()
        self.clock = self.registry.clock
        self.built = []

        def build():
            protocol = protocolClass()
            self.built.append(protocol)
            return protocol

        self.factory = TrackingFactory(Factory.forProtocol(build), self.registry, "svc",
                                       "proto", limits=limits, admission=admission)

    def connect(self, peer=PEER, transportClass=MemoryTransport):
        """
        A new connection from C{peer}, as the reactor makes one; a L{Conn}.
        """
        tracker = self.factory.buildProtocol(peer)
        if tracker is None:
            return None
        transport = transportClass(hostAddress=HOST, peerAddress=peer)
        transport.protocol = tracker
        tracker.makeConnection(transport)
        return Conn(self, tracker, transport)

    def closed(self):
        """
        The reasons of the closed connections, oldest first.
        """
        return [record.reason for record in self.registry.recentlyClosed()]


class Conn:
    """
    One connection of a L{Served}.
    """

    def __init__(self, served, tracker, transport):
        self.served = served
        self.tracker = tracker
        self.plugin = tracker.wrapped
        self.transport = transport
        self.record = tracker.record

    @property
    def closing(self):
        """
        Whether a close was asked of the transport.
        """
        return bool(self.transport.disconnecting)

    def lose(self, exception=None):
        """
        End the connection as the reactor does, the transport dropping its protocol
        (C{ConnectionDone} by default, or L{ConnectionAborted} once aborted).
        """
        if exception is None:
            exception = ConnectionAborted() if self.transport.aborted else ConnectionDone()
        self.transport.disconnected = True
        self.transport.__dict__.pop("protocol", None)  # as the reactor's transport does
        self.tracker.connectionLost(Failure(exception))


class TimeoutTests(SynchronousTestCase):
    """
    The idle timeout and the deadline close a connection, then abort it after the close
    grace, with one timer per connection at most.
    """

    def test_idleTimeout(self):
        """
        A connection silent for exactly C{idleTimeout} seconds is closed (not aborted)
        with the reason "idle-timeout"; just before, it is open. Once it is lost, no
        delayed call is left.
        """
        served = Served(limits=Limits(idleTimeout=5))
        conn = served.connect()
        served.clock.advance(4.999)
        self.assertFalse(conn.closing)
        served.clock.advance(0.001)
        self.assertTrue(conn.closing)
        self.assertFalse(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [IDLE_TIMEOUT])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_activityResets(self):
        """
        A byte received or written moves the idle timeout on, without a new timer: the
        connection keeps one delayed call whatever it reads and writes.
        """
        served = Served(limits=Limits(idleTimeout=5))
        conn = served.connect()
        served.clock.advance(4)
        conn.tracker.dataReceived(b"x")
        served.clock.advance(4)
        conn.plugin.transport.write(b"y")
        conn.plugin.transport.writeSequence([b"z"])
        self.assertEqual(len(served.clock.getDelayedCalls()), 1)
        served.clock.advance(4.9)
        self.assertFalse(conn.closing)
        self.assertEqual(len(served.clock.getDelayedCalls()), 1)
        served.clock.advance(0.1)
        self.assertTrue(conn.closing)
        conn.lose()
        self.assertEqual(served.closed(), [IDLE_TIMEOUT])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_deadline(self):
        """
        A connection lasts C{deadline} seconds at most, however busy: "deadline".
        """
        served = Served(limits=Limits(deadline=10))
        conn = served.connect()
        for _ in range(9):
            served.clock.advance(1)
            conn.tracker.dataReceived(b"x")
        served.clock.advance(0.99)
        self.assertFalse(conn.closing)
        served.clock.advance(0.01)
        self.assertTrue(conn.closing)
        conn.lose()
        self.assertEqual(served.closed(), [DEADLINE])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_deadlineBeforeIdle(self):
        """
        With both limits, one timer serves both: the deadline closes a connection whose
        idle timeout activity has moved past it.
        """
        served = Served(limits=Limits(idleTimeout=5, deadline=7))
        conn = served.connect()
        self.assertEqual(len(served.clock.getDelayedCalls()), 1)
        served.clock.advance(4)
        conn.tracker.dataReceived(b"x")
        served.clock.advance(2.9)
        self.assertFalse(conn.closing)
        served.clock.advance(0.1)
        self.assertTrue(conn.closing)
        conn.lose()
        self.assertEqual(served.closed(), [DEADLINE])

    def test_idleBeforeDeadline(self):
        """
        With both limits, the idle timeout closes a silent connection before its
        deadline.
        """
        served = Served(limits=Limits(idleTimeout=5, deadline=60))
        conn = served.connect()
        served.clock.advance(5)
        self.assertTrue(conn.closing)
        conn.lose()
        self.assertEqual(served.closed(), [IDLE_TIMEOUT])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_graceThenAbort(self):
        """
        A close for a limit that has not completed after C{closeGrace} seconds (the peer
        does not read) is aborted; the reason stays the limit's.
        """
        served = Served(limits=Limits(idleTimeout=5, closeGrace=2))
        conn = served.connect()
        served.clock.advance(5)
        self.assertTrue(conn.closing)
        served.clock.advance(1.99)
        self.assertFalse(conn.transport.aborted)
        served.clock.advance(0.01)
        self.assertTrue(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [IDLE_TIMEOUT])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_pluginCloseTimeout(self):
        """
        A C{loseConnection} of the plugin's that has not completed after C{closeGrace}
        seconds is aborted: "close-timeout".
        """
        served = Served(limits=Limits(closeGrace=3))
        conn = served.connect()
        conn.plugin.transport.loseConnection()
        served.clock.advance(2.9)
        self.assertFalse(conn.transport.aborted)
        served.clock.advance(0.1)
        self.assertTrue(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [CLOSE_TIMEOUT])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_pluginCloseCompletes(self):
        """
        A C{loseConnection} of the plugin's that completes in time is "server-closed",
        and its grace timer is cancelled.
        """
        served = Served()
        conn = served.connect()
        conn.plugin.transport.loseConnection()
        conn.plugin.transport.loseConnection()
        self.assertEqual(len(served.clock.getDelayedCalls()), 1)
        served.clock.advance(1)
        conn.lose()
        self.assertEqual(served.closed(), ["server-closed"])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_halfCloseThenCloseTimeout(self):
        """
        Echo closes after the client's half-close; if that close does not complete
        within the grace, it is aborted: "close-timeout".
        """
        served = Served(Echo, limits=Limits(closeGrace=1))
        conn = served.connect()
        conn.tracker.readConnectionLost()
        served.clock.advance(1)
        self.assertTrue(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [CLOSE_TIMEOUT])

    def test_noLimitsNoTimer(self):
        """
        Without an idle timeout or a deadline a connection has no delayed call while it
        is open, whatever it reads and writes.
        """
        served = Served(Echo)
        conn = served.connect()
        conn.tracker.dataReceived(b"hello")
        self.assertEqual(served.clock.getDelayedCalls(), [])
        conn.lose()
        self.assertEqual(served.closed(), ["client-closed"])

    def test_timerCancelledOnClientClose(self):
        """
        A connection the client closes before any limit passes leaves no delayed call.
        """
        served = Served(limits=Limits(idleTimeout=5, deadline=50))
        conn = served.connect()
        served.clock.advance(1)
        conn.lose()
        self.assertEqual(served.closed(), ["client-closed"])
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_freedWithTimer(self):
        """
        A connection that had a timer is freed by reference counting alone once lost
        (the cycle collector off).
        """
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        served = Served(limits=Limits(idleTimeout=5, deadline=50))
        conn = served.connect()
        served.clock.advance(5)  # closing: the grace call replaced the timeout call
        tracker = weakref.ref(conn.tracker)
        conn.lose()
        del conn, served.built[:]  # the plugin's protocol, which the test kept
        self.assertIsNone(tracker())

    def test_shutdownAfterLimit(self):
        """
        A close for a limit that began before the server stopped keeps the limit's
        reason.
        """
        served = Served(limits=Limits(idleTimeout=5))
        conn = served.connect()
        served.clock.advance(5)
        served.registry.shuttingDown = True
        conn.lose()
        self.assertEqual(served.closed(), [IDLE_TIMEOUT])


class OutputCapTests(SynchronousTestCase):
    """
    A connection whose unsent output passes C{maxOutput} is aborted.
    """

    def test_capAborts(self):
        """
        Echo to a peer that does not read: once more than C{maxOutput} bytes are unsent,
        the connection is aborted, "output-cap".
        """
        served = Served(Echo, limits=Limits(maxOutput=100))
        conn = served.connect(transportClass=BufferedTransport)
        conn.tracker.dataReceived(b"x" * 60)
        self.assertFalse(conn.transport.aborted)
        conn.tracker.dataReceived(b"x" * 40)
        self.assertFalse(conn.transport.aborted)
        conn.tracker.dataReceived(b"x")
        self.assertTrue(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [OUTPUT_CAP])

    def test_writeSequence(self):
        """
        C{writeSequence} is checked too.
        """
        served = Served(limits=Limits(maxOutput=10))
        conn = served.connect(transportClass=BufferedTransport)
        conn.plugin.transport.writeSequence([b"x" * 6, b"y" * 6])
        self.assertTrue(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [OUTPUT_CAP])

    def test_drained(self):
        """
        Output the peer takes does not count.
        """
        served = Served(Echo, limits=Limits(maxOutput=100))
        conn = served.connect(transportClass=BufferedTransport)
        for _ in range(10):
            conn.tracker.dataReceived(b"x" * 60)
            conn.transport.drain()
        self.assertFalse(conn.transport.aborted)

    def test_noCap(self):
        """
        With no C{maxOutput}, nothing is aborted.
        """
        served = Served(Echo, limits=Limits(maxOutput=None))
        conn = served.connect(transportClass=BufferedTransport)
        conn.tracker.dataReceived(b"x" * 10_000_000)
        self.assertFalse(conn.transport.aborted)

    def test_oneAbort(self):
        """
        Writes after the cap was passed (before the connection is lost) do not abort it
        again, and the reason stays "output-cap".
        """
        served = Served(limits=Limits(maxOutput=10))
        conn = served.connect(transportClass=BufferedTransport)
        calls = []
        conn.transport.abortConnection = lambda: calls.append(1)
        conn.plugin.transport.write(b"x" * 20)
        conn.plugin.transport.write(b"x" * 20)
        conn.plugin.transport.abortConnection()
        self.assertEqual(len(calls), 2)  # the cap's, and the plugin's own
        conn.lose(ConnectionAborted())
        self.assertEqual(served.closed(), [OUTPUT_CAP])

    def test_unsentWithoutBuffers(self):
        """
        A transport without Twisted's TCP write buffers has nothing unsent.
        """
        transport = StringTransport()
        transport.write(b"x" * 100)
        self.assertEqual(unsentBytes(transport), 0)

    def test_unsentBuffers(self):
        """
        L{unsentBytes} counts what is in C{dataBuffer} past C{offset} and in the list
        buffer (C{_tempDataLen}).
        """
        transport = BufferedTransport()
        transport.dataBuffer = b"x" * 50
        transport.offset = 20
        transport._tempDataLen = 7
        self.assertEqual(unsentBytes(transport), 37)


class Fake:
    """
    An admission with the API of L{portserver.admission.Admission}: refuses the hosts in
    C{refuse}, records every call.
    """

    def __init__(self, refuse=(), banner=None, reason="max-connections"):
        self.refuse = set(refuse)
        self.banners = {} if banner is None else {reason: banner}
        self.reason = reason
        self.admitted = []
        self.released = []

    def banner(self, reason):
        return self.banners.get(reason)

    def admit(self, host):
        if host in self.refuse:
            return self.reason
        self.admitted.append(host)
        return None

    def release(self, host):
        self.released.append(host)


class AdmissionTests(SynchronousTestCase):
    """
    The admission decides before the plugin's factory, and admitted connections are
    released exactly once.
    """

    def test_refused(self):
        """
        A refused peer without a banner gets no protocol (Twisted closes the socket), the
        plugin's factory is not called, and nothing is recorded or released.
        """
        admission = Fake(refuse={"127.0.0.2"})
        served = Served(admission=admission)
        self.assertIsNone(served.factory.buildProtocol(PEER))
        self.assertEqual((served.built, admission.released, len(served.registry),
                          served.closed()), ([], [], 0, []))

    def test_banner(self):
        """
        With a banner, a refused peer is sent it and the connection is closed, then
        aborted after the close grace; the plugin never sees it, and no delayed call
        outlives the connection.
        """
        admission = Fake(refuse={"127.0.0.2"}, banner=b"busy\r\n")
        served = Served(admission=admission, limits=Limits(closeGrace=2))
        protocol = served.factory.buildProtocol(PEER)
        self.assertIsInstance(protocol, Refusal)
        transport = MemoryTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"busy\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"hello?")
        served.clock.advance(2)
        self.assertTrue(transport.aborted)
        self.assertTrue(protocol.connected)
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertFalse(protocol.connected)
        self.assertEqual(served.clock.getDelayedCalls(), [])
        self.assertEqual((served.built, admission.released, len(served.registry)), ([], [], 0))

    def test_bannerIsPerReason(self):
        """
        A peer refused for a reason that has no banner (the banner is for
        C{max-connections}, the peer is C{denied}) gets none: the socket is closed.
        """
        admission = Fake(refuse={"127.0.0.2"}, banner=b"busy\r\n")
        admission.reason = "denied"
        served = Served(admission=admission)
        self.assertIsNone(served.factory.buildProtocol(PEER))

    def test_bannerClosedInTime(self):
        """
        A refused connection whose close completes leaves no delayed call; it can be
        aborted as a tracked connection can (when the server stops).
        """
        served = Served(admission=Fake(refuse={"127.0.0.2"}, banner=b"no\r\n"))
        protocol = served.factory.buildProtocol(PEER)
        transport = MemoryTransport()
        protocol.makeConnection(transport)
        protocol.abortConnection()
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(served.clock.getDelayedCalls(), [])

    def test_releasedOnce(self):
        """
        An admitted connection is released once, with the host admitted, when it ends;
        other peers are unaffected.
        """
        admission = Fake(refuse={"127.0.0.3"})
        served = Served(admission=admission)
        conn = served.connect()
        self.assertIsNone(served.factory.buildProtocol(OTHER))
        self.assertEqual((admission.admitted, admission.released), (["127.0.0.2"], []))
        conn.lose()
        conn.tracker.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(admission.released, ["127.0.0.2"])

    def test_pluginRefuses(self):
        """
        When the plugin's factory builds no protocol, the admission is released at once.
        """
        admission = Fake()

        class Refusing(Factory):
            def buildProtocol(self, addr):
                return None

        factory = TrackingFactory(Refusing(), makeRegistry(), "svc", "proto",
                                  admission=admission)
        self.assertIsNone(factory.buildProtocol(PEER))
        self.assertEqual((admission.admitted, admission.released),
                         (["127.0.0.2"], ["127.0.0.2"]))

    def test_pluginFactoryRaises(self):
        """
        When the plugin's factory raises, the admission is released and the error
        propagates (Twisted logs it and closes the socket).
        """
        admission = Fake()

        class Broken(Factory):
            def buildProtocol(self, addr):
                raise ValueError("broken")

        factory = TrackingFactory(Broken(), makeRegistry(), "svc", "proto",
                                  admission=admission)
        self.assertRaises(ValueError, factory.buildProtocol, PEER)
        self.assertEqual(admission.released, ["127.0.0.2"])

    def test_mappedIPv4(self):
        """
        An IPv4-mapped IPv6 peer is admitted (and released) as its IPv4 address.
        """
        admission = Fake()
        served = Served(admission=admission)
        conn = served.connect(peer=IPv6Address("TCP", "::ffff:127.0.0.2", 40001))
        conn.lose()
        self.assertEqual((admission.admitted, admission.released),
                         (["127.0.0.2"], ["127.0.0.2"]))

    def test_releasedAfterPluginError(self):
        """
        The admission is released even when the plugin's C{connectionLost} raises.
        """
        admission = Fake()

        class Failing(Recorder):
            def connectionLost(self, reason):
                raise RuntimeError("lost")

        served = Served(Failing, admission=admission)
        served.connect().lose()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(admission.released, ["127.0.0.2"])


class BuildTests(SynchronousTestCase):
    """
    L{ListenerService.build} gives the tracking layer the service's limits, the reactor
    as its clock, and the listener's admission, if it has one.
    """

    def build(self, admission=None):
        limits = Limits(idleTimeout=3, maxOutput=1000, closeGrace=2)
        [listener], problems = planListeners(
            [attrs.evolve(spec("echo", port=0), limits=limits)], 0, PrivilegeRule(),
            dualStack=True)
        reactor = MemoryReactorClock()
        service = ListenerService(listener, reactor, Registry(reactor))
        if admission is not None:
            service.admission = admission
        return service.build(), reactor, limits

    def test_limits(self):
        """
        The factory has the spec's limits and the reactor as its clock; no admission
        unless the service has one.
        """
        factory, reactor, limits = self.build()
        self.assertEqual((factory.limits, factory.idleTimeout, factory.maxOutput,
                          factory.closeGrace), (limits, 3, 1000, 2))
        self.assertIs(factory.clock, reactor)
        self.assertIsNone(factory.admission)

    def test_admission(self):
        """
        The service's admission is the factory's.
        """
        admission = Fake()
        factory, reactor, limits = self.build(admission)
        self.assertIs(factory.admission, admission)


class FaultTests(SynchronousTestCase):
    """
    An exception in a plugin's protocol closes that connection only, and is logged once
    with the service and the endpoints.
    """

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def failures(self):
        """
        The logged failures, as (message text, event).
        """
        from twisted.logger import formatEvent
        return [(formatEvent(e), e) for e in self.events if "log_failure" in e]

    def test_dataReceived(self):
        """
        A plugin raising in C{dataReceived} has its connection aborted ("plugin-error")
        and the traceback logged once, naming the service and both endpoints; another
        connection goes on working.
        """
        served = Served(Exploding)
        first, second = served.connect(), served.connect(OTHER)
        first.tracker.dataReceived(b"boom")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [(text, event)] = self.failures()
        self.assertIn("svc", text)
        self.assertIn("127.0.0.2:40001 -> 127.0.0.1:7", text)
        self.assertEqual(event["log_failure"].type, ZeroDivisionError)
        self.assertTrue(first.transport.aborted)
        second.tracker.dataReceived(b"fine")
        self.assertEqual(second.plugin.received, [b"fine"])
        self.assertFalse(second.transport.aborted)
        first.lose()
        self.assertEqual(served.closed(), [PLUGIN_ERROR])
        self.assertEqual([r.id for r in served.registry.snapshot()], [second.record.id])
        second.lose()
        self.assertEqual(served.closed(), [PLUGIN_ERROR, "client-closed"])

    def test_repeatedFailureLoggedAtABoundedRate(self):
        """
        A plugin failing the same way on every connection logs its traceback once per
        10 s, not once per connection: 100 failing connections in a second are one
        logged traceback (each still aborted, "plugin-error"); the next one after the
        interval is logged again, with the count of those left out.
        """
        served = Served(Exploding)
        for i in range(100):
            conn = served.connect(IPv4Address("TCP", "127.0.0.2", 30000 + i))
            conn.tracker.dataReceived(b"boom")
            self.assertTrue(conn.transport.aborted)
            conn.lose()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(served.closed().count(PLUGIN_ERROR), 100)
        served.clock.advance(10)
        conn = served.connect()
        conn.tracker.dataReceived(b"boom")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        text, event = self.failures()[-1]
        self.assertEqual(event["suppressed"], 99)
        self.assertIn("99 more like it since the last report", text)

    def test_loggedOnce(self):
        """
        More failures on a connection already aborted for one are not logged again, and
        the record closes once.
        """
        served = Served(Exploding)
        conn = served.connect()
        conn.tracker.dataReceived(b"boom")
        conn.tracker.dataReceived(b"boom")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        conn.lose()
        self.assertEqual(served.closed(), [PLUGIN_ERROR])
        self.assertEqual(served.registry.closedTotal[("svc", "tcp", PLUGIN_ERROR)], 1)

    def test_connectionMade(self):
        """
        A plugin raising in C{connectionMade} has its connection aborted, "plugin-error".
        """
        class Failing(Recorder):
            def connectionMade(self):
                raise KeyError("made")

        served = Served(Failing)
        conn = served.connect()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertTrue(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [PLUGIN_ERROR])

    def test_readConnectionLost(self):
        """
        A plugin raising in C{readConnectionLost} has its connection aborted,
        "plugin-error".
        """
        class Failing(Echo):
            def readConnectionLost(self):
                raise KeyError("half")

        served = Served(Failing)
        conn = served.connect()
        conn.tracker.readConnectionLost()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertTrue(conn.transport.aborted)
        conn.lose()
        self.assertEqual(served.closed(), [PLUGIN_ERROR])

    def test_connectionLost(self):
        """
        A plugin raising in C{connectionLost} is logged with the service and endpoints;
        the record still closes, for the reason the connection ended.
        """
        class Failing(Recorder):
            def connectionLost(self, reason):
                raise KeyError("lost")

        served = Served(Failing)
        conn = served.connect()
        conn.lose()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        [(text, event)] = self.failures()
        self.assertIn("connectionLost", text)
        self.assertIn("127.0.0.2:40001 -> 127.0.0.1:7", text)
        self.assertEqual((len(served.registry), served.closed()), (0, ["client-closed"]))

    def test_datagram(self):
        """
        A datagram plugin raising in C{datagramReceived} is logged with the service and
        the peer, and the next datagram is served; the same failure on every datagram is
        logged once per 10 s, the next line counting those left out.
        """
        class Failing(DatagramProtocol):
            def datagramReceived(self, data, addr):
                if data == b"boom":
                    1 / 0
                self.transport.write(data, addr)

        class Port:
            def __init__(self):
                self.written = []

            def write(self, data, addr=None):
                self.written.append((data, addr))

            def getHost(self):
                return IPv4Address("UDP", "127.0.0.1", 7)

        registry = makeRegistry()
        tracking = TrackingDatagram(Failing(), registry, "svc", "proto")
        port = Port()
        tracking.makeConnection(port)
        tracking.datagramReceived(b"boom", ("127.0.0.2", 40001))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [(text, event)] = self.failures()
        self.assertIn("svc", text)
        self.assertIn("127.0.0.2:40001", text)
        tracking.datagramReceived(b"ok", ("127.0.0.2", 40001))
        self.assertEqual(port.written, [(b"ok", ("127.0.0.2", 40001))])
        [flow] = registry.snapshot("udp")
        self.assertEqual(flow.datagramsIn, 2)
        for _ in range(50):  # the same failure again: counted, not logged
            tracking.datagramReceived(b"boom", ("127.0.0.2", 40001))
        self.assertEqual(self.flushLoggedErrors(ZeroDivisionError), [])
        registry.clock.advance(10)
        tracking.datagramReceived(b"boom", ("127.0.0.2", 40001))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.failures()[-1][1]["suppressed"], 50)


# -- on the real reactor --------------------------------------------------------------------


@implementer(IPullProducer)
class Flood(Protocol):
    """
    A client that never reads and sends as fast as the connection takes (or nothing,
    with C{send=False}); C{lost} fires when the connection is lost.
    """

    chunk = b"x" * 65536

    def __init__(self, send=True):
        self.send = send
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.pauseProducing()  # stop reading
        if self.send:
            self.transport.registerProducer(self, False)

    def resumeProducing(self):
        self.transport.write(self.chunk)

    def stopProducing(self):
        pass

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        self.lost.callback(reason.type)


class IntegrationTests(TestCase):
    """
    Limits on real connections: the server ends connections of peers that do not read.
    """

    timeout = 60

    def serve(self, name, limits):
        server = PortServer(makePlan(attrs.evolve(spec(name, port=0), limits=limits)),
                            reactor)
        server.startService()
        self.addCleanup(server.stopService)
        return server

    def closedRecord(self, server):
        """
        A L{Deferred} firing with the next record the server's registry closes.
        """
        closed = Deferred()

        def observe(event, record):
            if event == CLOSED and not closed.called:
                closed.callback(record)
        self.addCleanup(server.registry.subscribe(observe))
        return closed

    @inlineCallbacks
    def connect(self, server, name, protocol):
        port = server.addressOf(name, "tcp").port
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
        self.addCleanup(lambda: protocol.lost)
        self.addCleanup(protocol.transport.abortConnection)

    @inlineCallbacks
    def test_echoNonReaderPausedNotCapped(self):
        """
        A client that floods echo but never reads is not aborted for the output cap:
        once the echo it does not read passes the high-water mark, the server stops
        reading from it (flow control), nothing more is buffered, and the connection
        goes quiet until the idle timeout ends it: the registry says "idle-timeout".
        (With the default 1 MiB cap: what stays buffered is the high-water mark plus
        at most one read, 64 KiB, so only a cap under 128 KiB could still be reached.)
        """
        server = self.serve("echo", Limits(idleTimeout=0.5, closeGrace=0.5))
        closed = self.closedRecord(server)
        client = Flood()
        yield self.connect(server, "echo", client)
        record = yield closed.addTimeout(REAL_DEADLINE, reactor)
        self.assertEqual((record.service, record.reason), ("echo", IDLE_TIMEOUT))
        client.transport.resumeProducing()  # read again, to see the end at once
        yield client.lost.addTimeout(REAL_DEADLINE, reactor)

    @inlineCallbacks
    def test_chargenIdleTimeout(self):
        """
        Chargen to a client that never reads stops writing once the buffers are full
        (it is a pull producer), so the idle timeout ends the connection: the close
        cannot complete, so it is aborted after the grace, still "idle-timeout".
        """
        server = self.serve("chargen", Limits(idleTimeout=0.5, closeGrace=0.5))
        closed = self.closedRecord(server)
        client = Flood(send=False)
        yield self.connect(server, "chargen", client)
        record = yield closed.addTimeout(REAL_DEADLINE, reactor)
        self.assertEqual((record.service, record.reason), ("chargen", IDLE_TIMEOUT))
        self.assertGreater(record.bytesOut, 0)
        client.transport.resumeProducing()
        yield client.lost.addTimeout(REAL_DEADLINE, reactor)


class Holder(Protocol):
    """
    A server protocol that gives itself to C{made} when connected.
    """

    def __init__(self, made):
        self.made = made

    def connectionMade(self):
        self.made.callback(self)


class Reader(Protocol):
    """
    A client that starts not reading; C{read(n)} reads until it has C{n} bytes.
    """

    def __init__(self):
        self.received = 0
        self.want = None
        self.done = None

    def connectionMade(self):
        self.transport.pauseProducing()

    def read(self, want):
        self.want, self.done = want, Deferred()
        self.transport.resumeProducing()
        return self.done

    def dataReceived(self, data):
        self.received += len(data)
        if self.done is not None and self.received >= self.want:
            done, self.done = self.done, None
            done.callback(self.received)


class UnsentBytesPinTests(TestCase):
    """
    L{unsentBytes} against the reactor's real TCP transport: it reads private attributes
    of Twisted, so a change in Twisted must fail here.
    """

    timeout = 60

    @inlineCallbacks
    def test_realTransport(self):
        """
        What is written is unsent until the reactor runs; with a peer that does not
        read, part of it stays unsent; once the peer has read everything, nothing is.
        """
        made = Deferred()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Holder(made)))
        self.addCleanup(port.stopListening)
        client = Reader()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        self.addCleanup(client.transport.loseConnection)
        server = yield made
        transport = server.transport
        self.assertEqual(unsentBytes(transport), 0)
        total = 32 * 1024 * 1024  # more than any socket buffers take
        transport.write(b"a" * (total // 2))
        transport.writeSequence([b"b" * (total // 4), b"c" * (total // 4)])
        self.assertEqual(unsentBytes(transport), total)
        # Wait (no fixed delay) until the reactor has written what the socket takes.
        end = reactor.seconds() + REAL_DEADLINE
        while unsentBytes(transport) == total and reactor.seconds() < end:
            yield deferLater(reactor, 0.01, lambda: None)
        unsent = unsentBytes(transport)
        self.assertTrue(0 < unsent < total, unsent)
        yield client.read(total).addTimeout(REAL_DEADLINE * 3, reactor)
        self.assertEqual(client.received, total)
        self.assertEqual(unsentBytes(transport), 0)
        transport.loseConnection()
