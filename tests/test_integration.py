"""
Integration tests: the real service on 127.0.0.1 (and ::1), ephemeral ports, real clients.
"""

from __future__ import annotations

import socket
import struct
import time

import attrs

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from portserver.limits import Limits
from portserver.protocols.classic import CHARGEN_CYCLE, RFC868_OFFSET
from portserver.server import PortServer
from tests.support import makePlan, spec

DEADLINE = 10  # seconds a reply may take on a loaded CI machine; normally < 10 ms


class Collect(Protocol):
    """
    A client that sends C{send}, then collects what comes back until the server closes,
    or until C{want} bytes have come (then it closes).
    """

    def __init__(self, send=b"", want=None, halfClose=False):
        self.send, self.want, self.halfClose = send, want, halfClose
        self.received = bytearray()
        self.done = Deferred()

    def connectionMade(self):
        if self.send:
            self.transport.write(self.send)
        if self.halfClose:
            self.transport.loseConnection()

    def dataReceived(self, data):
        self.received += data
        if self.want is not None and len(self.received) >= self.want:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(bytes(self.received))


class UDPClient(DatagramProtocol):
    """
    A client that queues every datagram it receives with its source address.
    """

    def __init__(self):
        self.replies = DeferredQueue()

    def datagramReceived(self, data, addr):
        self.replies.put((data, addr))


class ServingTestCase(TestCase):
    """
    Starts a L{PortServer} on the real reactor, stopped after each test.
    """

    timeout = 60

    def serve(self, *specs):
        server = PortServer(makePlan(*specs), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        return server

    def tcp(self, server, name, **kwargs):
        protocol = Collect(**kwargs)
        port = server.addressOf(name, "tcp").port
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
        d.addCallback(lambda _: protocol.done)
        return d.addTimeout(DEADLINE, reactor)

    def udpClient(self, interface="127.0.0.1"):
        client = UDPClient()
        port = reactor.listenUDP(0, client, interface=interface)
        self.addCleanup(port.stopListening)
        return client

    def reply(self, client):
        return client.replies.get().addTimeout(DEADLINE, reactor)


class TimeoutCallTests(ServingTestCase):
    """
    A listener's timeout call over its connections' lives.
    """

    @inlineCallbacks
    def test_timeoutCallKeptWhileListening(self):
        """
        A listener's one timeout call outlives its last connection while it listens, so
        that a quiet listener's next connection makes no new call (making and cancelling
        one per connection cost a many-listener server a sixth of its connection rate);
        once it stops listening with no connection left, the call is cancelled.
        """
        server = self.serve(attrs.evolve(spec("daytime", port=0),
                                         limits=Limits(idleTimeout=300)))
        [child] = server.listeners
        factory = child.port.factory
        self.assertTrue(factory.timed)
        yield self.tcp(server, "daytime")
        self.assertEqual(factory.transports, {})
        call = factory.timeouts.call
        self.assertTrue(call is not None and call.active())
        yield self.tcp(server, "daytime")
        self.assertIs(factory.timeouts.call, call)
        yield child.port.stopListening()
        self.assertFalse(call.active())


def allClassic(interface="127.0.0.1"):
    return [spec(name, port=0, interface=interface, transports=("tcp", "udp"))
            for name in ("echo", "discard", "daytime", "qotd", "chargen", "time")]


class ClassicTCPTests(ServingTestCase):
    """
    Every classic protocol over real TCP.
    """

    def setUp(self):
        self.server = self.serve(*allClassic())

    @inlineCallbacks
    def test_echo(self):
        """
        echo sends back exactly the bytes sent, 64 KiB of them.
        """
        payload = bytes(range(256)) * 256
        received = yield self.tcp(self.server, "echo", send=payload, want=len(payload))
        self.assertEqual(received, payload)

    def test_echoAfterHalfClose(self):
        """
        echo sends back everything sent before the client's half-close, then closes
        (C{nc -N} style clients get their whole echo).
        """
        payload = bytes(range(256)) * 1024
        port = self.server.addressOf("echo", "tcp").port

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                received = bytearray()
                while data := s.recv(65536):
                    received += data
                return bytes(received)

        return deferToThread(client).addCallback(self.assertEqual, payload)

    def test_transportClassPerProtocol(self):
        """
        Each protocol's connections get a transport class of their own, a subclass of
        Twisted's, so that CPython's shared instance-dict layout of one protocol's
        connections is not spoilt by another's (which costs memory per connection);
        listeners of one protocol share it (one class at each of the transport code's
        attribute accesses keeps CPython's specialized lookups hitting).
        """
        from twisted.internet import tcp

        classes = {}
        for child in self.server.listeners:
            if child.listener.transport == "tcp":
                classes.setdefault(child.listener.spec.protocol, set()).add(
                    child.port.transport)
        self.assertEqual([len(kinds) for kinds in classes.values()], [1] * len(classes))
        distinct = set().union(*classes.values())
        self.assertEqual(len(distinct), len(classes))
        for cls in distinct:
            self.assertTrue(issubclass(cls, tcp.Server))
            self.assertIsNot(cls, tcp.Server)
            self.assertEqual(cls.__name__, "Server")

    @inlineCallbacks
    def test_discard(self):
        """
        discard reads what is sent and answers nothing, not even after the client's
        half-close.
        """
        received = yield self.tcp(self.server, "discard", send=b"x" * 10000, halfClose=True)
        self.assertEqual(received, b"")

    @inlineCallbacks
    def test_daytime(self):
        """
        daytime sends one CRLF-ended line naming today's UTC date, and closes.
        """
        received = yield self.tcp(self.server, "daytime")
        self.assertTrue(received.endswith(b"-UTC\r\n"), received)
        self.assertEqual(received.count(b"\r\n"), 1)
        self.assertIn(str(time.gmtime().tm_year).encode(), received)

    @inlineCallbacks
    def test_qotd(self):
        """
        qotd sends one of the default quotes and closes.
        """
        received = yield self.tcp(self.server, "qotd")
        self.assertTrue(received.endswith(b"\r\n"))
        self.assertLess(len(received), 512)
        self.assertIn(received.rstrip().decode(), spec("qotd").options["quotes"])

    @inlineCallbacks
    def test_chargen(self):
        """
        chargen streams the RFC 864 pattern from its start for as long as the client reads.
        """
        want = len(CHARGEN_CYCLE) * 3 + 100
        received = yield self.tcp(self.server, "chargen", want=want)
        self.assertGreaterEqual(len(received), want)
        self.assertEqual(received[:want], (CHARGEN_CYCLE * 4)[:want])

    @inlineCallbacks
    def test_time(self):
        """
        time sends 4 bytes, seconds since 1900 within a minute of now, and closes.
        """
        received = yield self.tcp(self.server, "time")
        self.assertEqual(len(received), 4)
        (value,) = struct.unpack("!I", received)
        self.assertLess(abs(value - RFC868_OFFSET - time.time()), 60)


class ClassicUDPTests(ServingTestCase):
    """
    Every classic protocol over real UDP; replies come back to the sender's endpoint.
    """

    def setUp(self):
        self.server = self.serve(*allClassic())
        self.client = self.udpClient()

    def ask(self, name, data=b"?"):
        port = self.server.addressOf(name, "udp").port
        self.client.transport.write(data, ("127.0.0.1", port))
        return self.reply(self.client).addCallback(self.fromService, port)

    def fromService(self, reply, port):
        data, addr = reply
        self.assertEqual(addr, ("127.0.0.1", port))
        return data

    @inlineCallbacks
    def test_echo(self):
        """
        echo returns the datagram, from the address and port it was sent to.
        """
        self.assertEqual((yield self.ask("echo", b"ping 1")), b"ping 1")

    @inlineCallbacks
    def test_daytime(self):
        """
        daytime answers with the UTC date line.
        """
        data = yield self.ask("daytime")
        self.assertTrue(data.endswith(b"-UTC\r\n"))

    @inlineCallbacks
    def test_qotd(self):
        """
        qotd answers with a quote.
        """
        data = yield self.ask("qotd")
        self.assertIn(data.rstrip().decode(), spec("qotd").options["quotes"])

    @inlineCallbacks
    def test_chargen(self):
        """
        chargen answers with 0 to 512 bytes of the pattern.
        """
        data = yield self.ask("chargen")
        self.assertLessEqual(len(data), 512)
        self.assertEqual(data, CHARGEN_CYCLE[: len(data)])

    @inlineCallbacks
    def test_time(self):
        """
        time answers an empty datagram with the 4-byte time.
        """
        data = yield self.ask("time", b"")
        (value,) = struct.unpack("!I", data)
        self.assertLess(abs(value - RFC868_OFFSET - time.time()), 60)

    @inlineCallbacks
    def test_discardKeepsServing(self):
        """
        discard takes datagrams without answering them or failing: after three to discard,
        the first reply this client gets is echo's.
        """
        port = self.server.addressOf("discard", "udp").port
        for _ in range(3):
            self.client.transport.write(b"drop me", ("127.0.0.1", port))
        self.assertEqual((yield self.ask("echo", b"after")), b"after")


def _haveLoopbackIPv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class WildcardUDPTests(ServingTestCase):
    """
    On a wildcard address, a UDP reply leaves from the address the request was sent to:
    the reply swaps the request's source and destination endpoints.
    """

    def viaPlainSocket(self, destination):
        """
        Send from a connected socket, which only accepts replies from C{destination}
        (in a thread, so the reactor serves meanwhile).
        """
        return deferToThread(self._blockingExchange, destination)

    def _blockingExchange(self, destination):
        family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(DEADLINE)
            s.connect(destination)
            s.send(b"hello")
            data, addr = s.recvfrom(100)
            return data, addr[:2]

    @inlineCallbacks
    def test_replyFromDestinationIPv4(self):
        """
        Sent to 127.0.0.2 on a 0.0.0.0 listener, the reply comes from 127.0.0.2 and the
        same port (not from 127.0.0.1, which routing would pick), so a connected client
        socket receives it.
        """
        server = self.serve(spec("echo", port=0, interface="0.0.0.0", transports=("udp",)))
        port = server.addressOf("echo", "udp").port
        self.assertEqual((yield self.viaPlainSocket(("127.0.0.2", port))),
                         (b"hello", ("127.0.0.2", port)))
        self.assertEqual((yield self.viaPlainSocket(("127.0.0.1", port))),
                         (b"hello", ("127.0.0.1", port)))

    @inlineCallbacks
    def test_replyFromDestinationDualStack(self):
        """
        On C{::}, an IPv6 request to ::1 is answered from ::1, and an IPv4 request to
        127.0.0.3 (dual-stack) from 127.0.0.3.
        """
        if not _haveLoopbackIPv6():
            raise SkipTest("no IPv6 loopback on this host")
        server = self.serve(spec("echo", port=0, interface="::", transports=("udp",)))
        port = server.addressOf("echo", "udp").port
        self.assertEqual((yield self.viaPlainSocket(("::1", port))), (b"hello", ("::1", port)))
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            if f.read().strip() != "0":
                return
        self.assertEqual((yield self.viaPlainSocket(("127.0.0.3", port))),
                         (b"hello", ("127.0.0.3", port)))


class IPv6Tests(ServingTestCase):
    """
    Services listen on IPv6 addresses too.
    """

    @inlineCallbacks
    def test_echoOnIPv6Loopback(self):
        """
        A service on ::1 serves an IPv6 client over TCP.
        """
        if not _haveLoopbackIPv6():
            raise SkipTest("no IPv6 loopback on this host")
        from twisted.internet.endpoints import TCP6ClientEndpoint
        server = self.serve(spec("echo", port=0, interface="::1"))
        protocol = Collect(send=b"six", want=3)
        yield connectProtocol(TCP6ClientEndpoint(reactor, "::1", server.addressOf("echo").port),
                              protocol)
        self.assertEqual((yield protocol.done.addTimeout(DEADLINE, reactor)), b"six")


class WholeDatagramTests(ServingTestCase):
    """
    Datagrams of any size UDP allows arrive whole (Twisted's default 8192-byte read
    truncated them silently): 9000 and 65,507 bytes over IPv4, 9000 and 65,527 over IPv6,
    on a specific address and on a wildcard one; the registry counts every byte.
    """

    def exchange(self, destination, sizes):
        family = socket.AF_INET6 if ":" in destination[0] else socket.AF_INET
        replies = []
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(DEADLINE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            for size in sizes:
                payload = bytes(i % 251 for i in range(size))
                s.sendto(payload, destination)
                data, _ = s.recvfrom(1 << 17)
                replies.append(data == payload and len(data))
        return replies

    @inlineCallbacks
    def check(self, interface, target, sizes):
        server = self.serve(spec("echo", port=0, interface=interface, transports=("udp",)))
        port = server.addressOf("echo", "udp").port
        replies = yield deferToThread(self.exchange, (target, port), sizes)
        self.assertEqual(replies, list(sizes))
        [flow] = server.registry.snapshot("udp")
        self.assertEqual((flow.bytesIn, flow.bytesOut), (sum(sizes), sum(sizes)))

    def test_ipv4(self):
        """
        Over IPv4, on 127.0.0.1 and on 0.0.0.0.
        """
        return self.check("127.0.0.1", "127.0.0.1", (9000, 65507)).addCallback(
            lambda _: self.check("0.0.0.0", "127.0.0.1", (9000, 65507)))

    def test_ipv6(self):
        """
        Over IPv6, on ::1 and on ::.
        """
        if not _haveLoopbackIPv6():
            raise SkipTest("no IPv6 loopback (::1) here")
        return self.check("::1", "::1", (9000, 65527)).addCallback(
            lambda _: self.check("::", "::1", (9000, 65527)))
