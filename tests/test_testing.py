"""
Tests for L{portserver.testing}, the kit plugin authors test their protocols with.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from portserver.config import ConfigError
from portserver.options import Option
from portserver.protocols.classic import daytimeProtocol, echo, qotd
from portserver.provider import PortProtocol
from portserver.registry import CLIENT_CLOSED, RESET, SERVER_CLOSED, Endpoint, Registry
from portserver.testing import DEFAULT_PEER, ServiceHarness, serviceSpec
from portserver.tracking import Tracker


class Refuser(Factory):
    """
    A factory that refuses every connection.
    """

    def buildProtocol(self, addr):
        return None


refusing = PortProtocol("refusing", "refuses everything", 9999,
                        factory=lambda service, reactor: Refuser())
counting = PortProtocol(
    "counting", "has a numeric option", 9998,
    factory=lambda service, reactor: Factory.forProtocol(Protocol),
    options={"limit": Option(int, 3, lambda n: None if n > 0 else "must be positive")})


class SpecTests(SynchronousTestCase):
    """
    Options go through portserver's own config loader.
    """

    def test_mappingAndYAML(self):
        """
        Options given as a mapping and as YAML text give the same validated options,
        defaults filled in.
        """
        fromYAML = serviceSpec(counting, "limit: 5\n")
        fromMapping = serviceSpec(counting, {"limit": 5})
        self.assertEqual(fromYAML.options, {"limit": 5})
        self.assertEqual(fromYAML.options, fromMapping.options)
        self.assertEqual(serviceSpec(counting).options, {"limit": 3})

    def test_errorsPointIntoTheOptionsText(self):
        """
        A refused option raises the L{ConfigError} C{--check} would report, its line
        counted within the options text given.
        """
        with self.assertRaises(ConfigError) as caught:
            serviceSpec(counting, "# a comment\nlimit: -1\n")
        [problem] = caught.exception.problems
        self.assertEqual(problem.mark.line, 2)
        self.assertIn("option 'limit': must be positive", str(problem))

    def test_unknownOption(self):
        """
        Unknown options are refused, listing the known ones.
        """
        with self.assertRaises(ConfigError) as caught:
            ServiceHarness(counting, {"limt": 5})
        self.assertIn("unknown option (known: limit)", caught.exception.report())

    def test_serviceKeys(self):
        """
        The name, port and interface given are the service's.
        """
        spec = serviceSpec(echo, name="my-echo", port=7007, interface="::1")
        self.assertEqual((spec.name, spec.protocol, spec.port, spec.interface),
                         ("my-echo", "echo", 7007, "::1"))


class ConnectionTests(SynchronousTestCase):
    """
    In-memory connections, recorded as the server records them.
    """

    def test_tracked(self):
        """
        The protocol built is the plugin's, behind the tracking layer, and the record
        names the chosen peer and the service's address.
        """
        harness = ServiceHarness(echo, port=7007)
        conn = harness.connect(peer=("198.51.100.7", 50000))
        self.assertIsInstance(conn.protocol, Tracker)
        self.assertIs(conn.plugin, conn.protocol.wrapped)
        [record] = harness.live()
        self.assertIs(record, conn.record)
        self.assertEqual((record.remote, record.local),
                         (("198.51.100.7", 50000), Endpoint("127.0.0.1", 7007)))

    def test_defaultPeerAndIPv6(self):
        """
        Without a peer the connection comes from L{DEFAULT_PEER}; IPv6 peers work, and an
        IPv4-mapped one is recorded as IPv4, as the server does.
        """
        harness = ServiceHarness(echo, interface="::")
        self.assertEqual(harness.connect().record.remote, DEFAULT_PEER)
        self.assertEqual(harness.connect(peer=("2001:db8::5", 1)).record.remote,
                         ("2001:db8::5", 1))
        self.assertEqual(harness.connect(peer=("::ffff:192.0.2.1", 2)).record.remote,
                         ("192.0.2.1", 2))

    def test_sendAndReceive(self):
        """
        What the peer sends reaches the plugin; what it writes is read once, and both are
        counted in the record.
        """
        conn = ServiceHarness(echo).connect()
        conn.send(b"hello")
        self.assertEqual(conn.received(), b"hello")
        self.assertEqual(conn.received(), b"")
        self.assertEqual((conn.record.bytesIn, conn.record.bytesOut), (5, 5))

    def test_closeReasons(self):
        """
        The peer closing, the server closing and a reset are recorded as such.
        """
        harness = ServiceHarness(echo)
        byPeer = harness.connect()
        byPeer.close()
        reset = harness.connect()
        reset.reset()
        announce = ServiceHarness(daytimeProtocol, registry=harness.registry,
                                  reactor=harness.reactor)
        byServer = announce.connect()
        self.assertTrue(byServer.serverClosed)
        byServer.close()
        self.assertEqual([r.reason for r in harness.closed()], [CLIENT_CLOSED, RESET])
        self.assertEqual([r.reason for r in announce.closed()], [SERVER_CLOSED])
        self.assertRaises(RuntimeError, byPeer.send, b"late")

    def test_halfClose(self):
        """
        A half-close reaches a plugin that handles it (echo then closes its side).
        """
        conn = ServiceHarness(echo).connect()
        conn.send(b"x")
        conn.halfClose()
        self.assertTrue(conn.serverClosed)
        self.assertFalse(conn.lost)

    def test_refused(self):
        """
        A factory that refuses the connection gives L{None}, and nothing is recorded.
        """
        harness = ServiceHarness(refusing)
        self.assertIsNone(harness.connect())
        self.assertEqual(harness.live(), [])

    def test_clock(self):
        """
        The plugin is built with the harness's reactor, whose clock the test moves: qotd
        picks the quote of the day from it.
        """
        reactor = MemoryReactorClock()
        harness = ServiceHarness(qotd, "quotes: [one, two]\n", reactor=reactor)
        self.assertEqual(harness.connect().received(), b"one\r\n")
        reactor.advance(86400)
        self.assertEqual(harness.connect().received(), b"two\r\n")

    def test_sharedRegistry(self):
        """
        A registry passed in is the one recorded into.
        """
        registry = Registry(MemoryReactorClock())
        ServiceHarness(echo, registry=registry).connect()
        self.assertEqual(len(registry), 1)


class DatagramTests(SynchronousTestCase):
    """
    UDP services in memory.
    """

    def test_replyAndFlow(self):
        """
        A datagram gets the service's reply, sent back to its source, and a flow is
        recorded per source.
        """
        harness = ServiceHarness(echo, transports=("udp",))
        self.assertEqual(harness.sendDatagram(b"ping", ("192.0.2.9", 5353)), [b"ping"])
        [flow] = harness.live("udp")
        self.assertEqual((flow.remote, flow.datagramsIn, flow.datagramsOut),
                         (("192.0.2.9", 5353), 1, 1))

    def test_wrongTransport(self):
        """
        Asking for a transport the service does not have is an error.
        """
        self.assertRaises(ValueError, ServiceHarness(echo, transports=("udp",)).connect)
        self.assertRaises(ValueError, ServiceHarness(echo).sendDatagram, b"x")
