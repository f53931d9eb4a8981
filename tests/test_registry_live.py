"""
The registry against real connections: exact endpoint pairs from chosen source ports,
every way a connection ends, churn checked against the kernel's own socket table, and
closed connections freed without the cycle collector.
"""

from __future__ import annotations

import gc
import random
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from portserver.registry import CLIENT_CLOSED, RESET, SERVER_CLOSED, Endpoint
from portserver.server import PortServer
from tests.support import makePlan, spec, watchedEcho

DEADLINE = 10.0  # seconds for the server to see what a client did; normally milliseconds


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """
    A test client: counts what it receives; C{lost} fires when the connection ends.
    """

    def __init__(self):
        self.received = 0
        self.lost = Deferred()
        self.arrived = None

    def dataReceived(self, data):
        self.received += len(data)
        if self.arrived is not None and self.received >= self.arrivedAt:
            arrived, self.arrived = self.arrived, None
            arrived.callback(self.received)

    def waitFor(self, count):
        if self.received >= count:
            return _succeed(self.received)
        self.arrived, self.arrivedAt = Deferred(), count
        return self.arrived.addTimeout(DEADLINE, reactor)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lost.callback(None)


def _succeed(value):
    d = Deferred()
    d.callback(value)
    return d


def freeSourcePort(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serverSockets(addresses: set[tuple[str, int]]) -> set[tuple[Endpoint, Endpoint]]:
    """
    The kernel's ESTABLISHED TCP sockets whose local end is one of C{addresses}, as
    (local, remote) endpoint pairs, from /proc/net/tcp.
    """
    def decode(field):
        hexHost, hexPort = field.split(":")
        host = socket.inet_ntoa(bytes.fromhex(hexHost)[::-1])
        return Endpoint(host, int(hexPort, 16))

    pairs = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "01":  # ESTABLISHED
                continue
            local, remote = decode(fields[1]), decode(fields[2])
            if (local.host, local.port) in addresses:
                pairs.add((local, remote))
    return pairs


class LiveRegistryTests(TestCase):
    """
    Real clients against a real server; the registry must say exactly what happened.
    """

    timeout = 120

    def setUp(self):
        self.server = PortServer(makePlan(
            spec("echo", port=0), spec("discard", port=0),
            spec("echo-b", "echo", port=0), spec("daytime", port=0)), reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.registry = self.server.registry

    def port(self, name):
        return self.server.addressOf(name).port

    @inlineCallbacks
    def until(self, condition, what):
        """
        Wait (polling the reactor every 10 ms) until C{condition()}, at most DEADLINE.
        """
        end = reactor.seconds() + DEADLINE
        while not condition():
            if reactor.seconds() > end:
                self.fail(f"not within {DEADLINE}s: {what}")
            yield deferLater(reactor, 0.01, lambda: None)

    def connect(self, name, source=None):
        client = Client()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port(name), timeout=DEADLINE,
                                      bindAddress=source)
        return connectProtocol(endpoint, client).addCallback(lambda _: client)

    def pairs(self):
        return {(r.local, r.remote) for r in self.registry.snapshot()}

    @inlineCallbacks
    def test_exactPairsFromChosenSourcePorts(self):
        """
        Clients bound to chosen source endpoints (127.0.0.2 and 127.0.0.3) appear as
        exactly those endpoint pairs, with the bytes each sent and got back.
        """
        sources = [("127.0.0.2", freeSourcePort("127.0.0.2")),
                   ("127.0.0.3", freeSourcePort("127.0.0.3"))]
        clients = []
        for source in sources:
            client = yield self.connect("echo", source)
            client.transport.write(b"x" * 100)
            yield client.waitFor(100)
            clients.append(client)
        local = Endpoint("127.0.0.1", self.port("echo"))
        self.assertEqual(self.pairs(), {(local, Endpoint(*s)) for s in sources})
        for record in self.registry.snapshot():
            self.assertEqual((record.bytesIn, record.bytesOut), (100, 100))
        for client in clients:
            client.transport.loseConnection()
            yield client.lost
        yield self.until(lambda: len(self.registry) == 0, "both closes recorded")

    @inlineCallbacks
    def closedBy(self, close):
        """
        Open one connection, end it with C{close(client)}, and return the closed record.
        """
        source = ("127.0.0.2", freeSourcePort("127.0.0.2"))
        client = yield self.connect("echo", source)
        client.transport.write(b"abc")
        yield client.waitFor(3)
        self.assertEqual(self.pairs(), {(Endpoint("127.0.0.1", self.port("echo")),
                                         Endpoint(*source))})
        close(client)
        yield client.lost
        yield self.until(lambda: len(self.registry) == 0, "the close recorded")
        [record] = [r for r in self.registry.recentlyClosed() if r.remote == Endpoint(*source)]
        return record

    @inlineCallbacks
    def test_cleanClose(self):
        """
        A client's clean close (FIN) removes the pair; the record says "client-closed".
        """
        record = yield self.closedBy(lambda c: c.transport.loseConnection())
        self.assertEqual(record.reason, CLIENT_CLOSED)
        self.assertEqual((record.bytesIn, record.bytesOut), (3, 3))

    @inlineCallbacks
    def test_abort(self):
        """
        A client's abort (RST) removes the pair; the record says "reset".
        """
        record = yield self.closedBy(lambda c: c.transport.abortConnection())
        self.assertEqual(record.reason, RESET)

    @inlineCallbacks
    def test_halfClose(self):
        """
        A client's half-close (shutdown of its write side) ends the echo connection (echo
        sends what it owes, then closes): the pair goes, and the record says
        "client-closed", since the client ended first.
        """
        record = yield self.closedBy(lambda c: c.transport.loseWriteConnection())
        self.assertEqual(record.reason, CLIENT_CLOSED)

    @inlineCallbacks
    def test_serverClose(self):
        """
        daytime closes its own connections: recorded as "server-closed".
        """
        client = yield self.connect("daytime")
        yield client.lost
        yield self.until(lambda: self.registry.closedTotal, "the close recorded")
        [record] = self.registry.recentlyClosed()
        self.assertEqual((record.service, record.reason), ("daytime", SERVER_CLOSED))
        self.assertGreater(record.bytesOut, 0)

    @inlineCallbacks
    def test_churnAgreesWithKernel(self):
        """
        Thousands of connects, sends, closes and resets across four services: at every
        checkpoint the registry's live pairs are exactly the kernel's ESTABLISHED server
        sockets on our ports, and at the end both are empty.
        """
        try:
            open("/proc/net/tcp").close()
        except OSError:
            raise SkipTest("no /proc/net/tcp on this host")
        rng = random.Random(1234)
        addresses = {("127.0.0.1", self.port(n)) for n in ("echo", "discard", "echo-b",
                                                           "daytime")}
        live: list[Client] = []
        self.addCleanup(lambda: [c.transport.abortConnection() for c in live])
        cycles = 0
        for round in range(12):
            names = [rng.choice(["echo", "discard", "echo-b", "daytime"])
                     for _ in range(rng.randint(120, 200))]
            opening = [(name, self.connect(name)) for name in names]
            for name, d in opening:
                client = yield d
                cycles += 1
                if name == "daytime":  # the server answers and closes by itself
                    yield client.lost
                    continue
                client.transport.write(b"y" * rng.randint(1, 2000))
                live.append(client)
            yield self.checkpoint(addresses, live)
            rng.shuffle(live)
            ending, live = live[: len(live) * 2 // 3], live[len(live) * 2 // 3:]
            for client in ending:
                rng.choice([lambda c: c.transport.loseConnection(),
                            lambda c: c.transport.abortConnection(),
                            lambda c: c.transport.loseWriteConnection()])(client)
            for client in ending:
                yield client.lost
            yield self.checkpoint(addresses, live)
        for client in live:
            client.transport.abortConnection()
            yield client.lost
        yield self.checkpoint(addresses, [])
        self.assertEqual(self.pairs(), set())
        self.assertGreater(cycles, 1500)
        self.assertEqual(sum(self.registry.accepted.values()), cycles)

    @inlineCallbacks
    def checkpoint(self, addresses, live):
        """
        Once the server has seen every open and close, the registry and the kernel agree.
        """
        yield self.until(lambda: len(self.registry) == len(live),
                         f"{len(live)} live connections in the registry "
                         f"(has {len(self.registry)})")
        yield self.until(lambda: serverSockets(addresses) == self.pairs(),
                         "the kernel's socket table and the registry agree")
        expected = {Endpoint(a.host, a.port) for a in (c.transport.getHost() for c in live)}
        self.assertEqual({remote for _, remote in self.pairs()}, expected)


class NoCycleTests(TestCase):
    """
    Closed connections are freed by reference counting alone.
    """

    timeout = 60

    @inlineCallbacks
    def test_closedProtocolsFreedWithoutCycleCollector(self):
        """
        With the cycle collector disabled, once 50 real connections have closed, every
        plugin protocol and every tracker built for them is gone: nothing per connection
        formed a reference cycle.
        """
        built = []

        provider = watchedEcho(built)
        server = PortServer(makePlan(spec("weak", port=0, providers={"weak": provider})),
                            reactor)
        server.startService()
        self.addCleanup(server.stopService)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        port = server.addressOf("weak").port
        for i in range(50):
            client = Client()
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            client.transport.write(b"z")
            yield client.waitFor(1)
            if i % 2:
                client.transport.loseConnection()
            else:
                client.transport.abortConnection()
            yield client.lost
        end = reactor.seconds() + DEADLINE
        while len(server.registry) and reactor.seconds() < end:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(server.registry), 0)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(built), 50)
        alive = [ref for ref in built if ref() is not None]
        self.assertEqual(alive, [], f"{len(alive)} closed protocols still alive")
