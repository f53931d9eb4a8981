"""
The global limits on connections: a connection that waits for the main process
(L{portserver.awaiting}) is not read from and reaches the plugin only once admitted; a
refused one gets the banner. In memory (a L{TrackingFactory} on a test transport), and
on real servers: two L{PortServer}s in this process play two workers, each with its own
listener (so a test chooses the worker) and its own AMP channel, over a real socketpair,
to one L{Broker}.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portserver.admission import MAX_PER_SOURCE
from portserver.awaiting import WAIT_LIMIT, AwaitingAdmission
from portserver.limits import Limits
from portserver.plan import loadPlan
from portserver.plugins import discover
from portserver.ports import PrivilegeRule
from portserver.quota import Broker, workerPart
from portserver.server import PortServer
from portserver.testing import MemoryTransport
from portserver.tracking import Tracker, TrackingFactory
from tests.support import freePort
from tests.test_proxyheader_live import v1
from tests.test_quota import A, Channel, World

DEADLINE = 10


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(Factory):
    """
    Builds L{Echo}, counting how many it built.
    """

    protocol = Echo
    built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return super().buildProtocol(addr)


class InMemoryTests(SynchronousTestCase):
    """
    A L{TrackingFactory} whose admission has leases, on transports that are not
    portserver's (the wrapper-protocol path).
    """

    def setUp(self):
        self.world = World(Limits(maxPerSource=1, banner="busy"))
        worker = self.world.workers[0]
        self.plugin = EchoFactory()
        self.factory = TrackingFactory(self.plugin, worker.registry, "echo", "echo",
                                       limits=worker.admission.limits,
                                       admission=worker.admission, clock=self.world.clock)

    def connect(self):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", A, 4000))
        transport = MemoryTransport(peerAddress=IPv4Address("TCP", A, 4000))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_waitsNotReading(self):
        """
        A connection whose admission waits is paused and the plugin is not built;
        once admitted, the plugin is built, tracked and given what arrived meanwhile.
        """
        protocol, transport = self.connect()
        self.assertIsInstance(protocol, AwaitingAdmission)
        self.assertEqual(transport.producerState, "paused")
        protocol.dataReceived(b"early")
        self.assertEqual((self.plugin.built, transport.value()), (0, b""))
        self.world.flush()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.plugin.built, 1)
        self.assertIsInstance(protocol.next, Tracker)
        self.assertEqual(transport.value(), b"early")
        protocol.dataReceived(b"late")
        self.assertEqual(transport.value(), b"earlylate")
        [record] = self.world.workers[0].registry.snapshot()
        self.assertEqual((record.remote.host, record.bytesIn), (A, 9))

    def test_refusedBanner(self):
        """
        A connection the main process refuses is sent the banner and closed; the
        plugin is never built.
        """
        self.world.admit(1, A)  # the other worker has the source's one slot
        protocol, transport = self.connect()
        self.world.flush()
        self.assertEqual(transport.value(), b"busy\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.plugin.built, 0)
        self.assertEqual(self.world.workers[0].registry.refused,
                         {("echo", MAX_PER_SOURCE): 1})

    def test_closedWhileWaiting(self):
        """
        A connection that closes while it waits takes no slot: the one granted for it
        goes back, and the plugin is never built.
        """
        protocol, transport = self.connect()
        protocol.connectionLost(None)
        self.world.returnsDue()
        self.assertEqual(self.world.broker.granted("echo", A), 0)
        self.assertEqual(self.plugin.built, 0)
        self.assertEqual(self.world.workers[0].admission.live, 0)
        self.assertNotIn(protocol, self.factory.live)

    def test_waitLimit(self):
        """
        A connection whose answer does not come within L{WAIT_LIMIT} is refused (with
        the banner) for the limit it waited on.
        """
        protocol, transport = self.connect()
        self.world.clock.advance(WAIT_LIMIT)
        self.assertEqual(transport.value(), b"busy\r\n")
        self.assertEqual(self.world.workers[0].registry.refused,
                         {("echo", MAX_PER_SOURCE): 1})
        self.world.returnsDue()
        self.assertEqual(self.world.broker.granted("echo", A), 0)
        self.assertEqual(self.plugin.built, 0)

    def test_waitLimitIdleTimeout(self):
        """
        A service's idle timeout shorter than L{WAIT_LIMIT} bounds the wait.
        """
        worker = self.world.workers[0]
        limits = Limits(maxPerSource=1, idleTimeout=2)
        self.factory = TrackingFactory(self.plugin, worker.registry, "echo", "echo",
                                       limits=limits, admission=worker.admission,
                                       clock=self.world.clock)
        protocol, transport = self.connect()
        self.world.clock.advance(2)
        self.assertTrue(transport.disconnecting)


def channelPair(broker: Broker, index: int, server: PortServer):
    """
    Connect worker C{index} (the leases of C{server}) to C{broker} over a real
    socketpair; return the main side's channel and the worker's L{Leases}.
    """
    one, other = socket.socketpair()
    main, worker = Channel(), Channel()
    for sock, protocol in ((one, main), (other, worker)):
        sock.setblocking(False)
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX,
                                      Factory.forProtocol(lambda p=protocol: p))
        sock.close()
    main.locators.append(broker.locator(index, 2000 + index, main))
    broker.workerStarted(index, 2000 + index, main)
    part = workerPart(server, worker, index)
    worker.locators.append(part.locator())
    return main, part


class Client(Protocol):
    """
    Sends C{ping}; C{answered} fires with the first data, C{lost} with all of it when
    the connection ends.
    """

    def __init__(self):
        self.received = b""
        self.answered = Deferred()
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.received += data
        if not self.answered.called:
            self.answered.callback(self.received)

    def connectionLost(self, reason):
        self.lost.callback(self.received)


class TwoWorkersTests(TestCase):
    """
    Two servers ("workers") with one broker, real sockets.
    """

    timeout = 60

    def serve(self, services: str, count: int = 2):
        self.broker = Broker(reactor)
        self.servers = []
        for index in range(count):
            text = "services:\n" + services.replace("@PORT@", str(freePort()))
            plan = loadPlan("quota.yaml", discover().providers,
                            rule=PrivilegeRule(1024, "test"), dualStack=True, text=text)
            server = PortServer(plan, reactor)
            main, leases = channelPair(self.broker, index, server)
            self.addCleanup(leases.stop)  # (after the server's stop, which frees slots)
            server.startService()
            self.addCleanup(server.stopService)
            self.addCleanup(main.transport.loseConnection)
            self.servers.append(server)

    def connect(self, index: int, source: str = "127.0.0.2"):
        client = Client()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1",
                                      self.servers[index].addressOf("echo").port,
                                      bindAddress=(source, 0))
        self.addCleanup(lambda: client.transport and client.transport.abortConnection())
        return connectProtocol(endpoint, client).addCallback(lambda _: client)

    @inlineCallbacks
    def waitUntil(self, condition):
        """
        Wait, a reactor turn at a time, until C{condition()} holds.
        """
        deadline = reactor.seconds() + DEADLINE
        while not condition():
            self.assertLess(reactor.seconds(), deadline, "condition never held")
            yield deferLater(reactor, 0, lambda: None)

    @inlineCallbacks
    def test_maxPerSource(self):
        """
        With C{max_per_source: 3}: two connections from 127.0.0.2 to one worker and one
        to the other are echoed; a fourth, to either, gets the banner and is closed
        without reaching the plugin, counted by that worker; once one of the three has
        closed (and its slot is back), a fourth is echoed by the other worker. Another
        source is served all along.
        """
        self.serve("  - name: echo\n    protocol: echo\n    port: @PORT@\n"
                   "    interface: 127.0.0.1\n"
                   "    limits: {max_per_source: 3, banner: busy}\n")
        clients = []
        for index in (0, 0, 1):
            client = yield self.connect(index)
            self.assertEqual((yield client.answered), b"ping")
            clients.append(client)
        for index in (1, 0):
            extra = yield self.connect(index)
            self.assertEqual((yield extra.lost), b"busy\r\n")
        self.assertEqual([s.registry.refused.get(("echo", MAX_PER_SOURCE)) for s in
                          self.servers], [1, 1])
        other = yield self.connect(1, "127.0.0.3")
        self.assertEqual((yield other.answered), b"ping")
        clients[0].transport.loseConnection()
        yield clients[0].lost
        yield self.waitUntil(lambda: self.broker.granted("echo", "127.0.0.2") == 2)
        fourth = yield self.connect(1)
        self.assertEqual((yield fourth.answered), b"ping")
        live = [r.remote.host for s in self.servers for r in s.registry.snapshot()]
        self.assertEqual(sorted(live), ["127.0.0.2"] * 3 + ["127.0.0.3"])

    @inlineCallbacks
    def test_maxConnections(self):
        """
        With C{max_connections: 2} and no banner, a third connection to either worker
        is closed at once; after one closes, the third is served.
        """
        self.serve("  - name: echo\n    protocol: echo\n    port: @PORT@\n"
                   "    interface: 127.0.0.1\n    limits: {max_connections: 2}\n")
        first = yield self.connect(0, "127.0.0.2")
        second = yield self.connect(1, "127.0.0.3")
        self.assertEqual([(yield first.answered), (yield second.answered)], [b"ping"] * 2)
        third = yield self.connect(1, "127.0.0.4")
        self.assertEqual((yield third.lost), b"")
        second.transport.loseConnection()
        yield second.lost
        yield self.waitUntil(lambda: self.broker.granted("echo") == 1)
        third = yield self.connect(0, "127.0.0.4")
        self.assertEqual((yield third.answered), b"ping")

    @inlineCallbacks
    def test_proxyHeader(self):
        """
        Behind the PROXY protocol, a client that waits for its admission is admitted
        by the source the header names, and the plugin gets what followed the header
        in the same packet; the record has the proxy.
        """
        self.serve("  - name: echo\n    protocol: echo\n    port: @PORT@\n"
                   "    interface: 127.0.0.1\n    proxy_protocol: {from: [127.0.0.2]}\n"
                   "    limits: {max_per_source: 1, banner: busy}\n")
        port = self.servers[0].addressOf("echo").port

        class Proxied(Client):
            def connectionMade(self):
                self.transport.write(v1(source="203.0.113.7") + b"hello")

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                      bindAddress=("127.0.0.2", 0))
        client = yield connectProtocol(endpoint, Proxied())
        self.addCleanup(client.transport.abortConnection)
        self.assertEqual((yield client.answered), b"hello")
        [record] = self.servers[0].registry.snapshot()
        self.assertEqual((record.remote.host, record.proxy.host, record.bytesIn),
                         ("203.0.113.7", "127.0.0.2", 5))
        self.assertEqual(self.broker.granted("echo", "203.0.113.7"), 1)
        refused = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.servers[1].addressOf("echo").port,
                               bindAddress=("127.0.0.2", 0)), Proxied())
        self.assertEqual((yield refused.lost), b"busy\r\n")
