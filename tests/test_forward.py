"""
Tests for the C{forward} protocol: in memory with L{portserver.testing}, then with real
sockets on 127.0.0.1.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portserver.config import ConfigError
from portserver.protocols.classic import echo
from portserver.protocols.forward import TARGET_CLOSED, forward
from portserver.registry import CLIENT_CLOSED, SERVER_CLOSED
from portserver.testing import MemoryTransport, ServiceHarness
from tests.support import freePort, spec
from tests.test_integration import ServingTestCase

PEER = ("198.51.100.20", 41000)
TARGET_LOCAL = IPv4Address("TCP", "10.0.0.1", 52000)
TARGET = IPv4Address("TCP", "10.0.0.2", 80)
DEADLINE = 10


class OptionsTests(SynchronousTestCase):
    """
    A forward's options name its target one way or the other, never both or neither.
    """

    def problems(self, text):
        with self.assertRaises(ConfigError) as caught:
            ServiceHarness(forward, text)
        return caught.exception.report()

    def test_hostAndPort(self):
        """
        C{host} and C{port} are a target; the connect timeout defaults to 10 s.
        """
        harness = ServiceHarness(forward, "host: 10.0.0.2\nport: 80\n")
        self.assertEqual(harness.options["connect_timeout"], 10.0)
        self.assertIsNone(harness.options["target"])

    def test_endpointString(self):
        """
        A Twisted client endpoint string is a target.
        """
        harness = ServiceHarness(forward, {"target": "tcp:host=10.0.0.2:port=80:timeout=3"})
        self.assertEqual(harness.options["target"], "tcp:host=10.0.0.2:port=80:timeout=3")

    def test_noTarget(self):
        """
        Without a target the service is refused, saying what is missing.
        """
        self.assertIn("needs a target: host is missing", self.problems("port: 80\n"))
        self.assertIn("needs a target: port is missing", self.problems("host: a.example\n"))

    def test_bothTargets(self):
        """
        A target given two ways is refused, naming C{target}.
        """
        self.assertIn("option 'target': give either target or host and port",
                      self.problems("target: tcp:host=a:port=1\nhost: b\nport: 2\n"))

    def test_badEndpoint(self):
        """
        An endpoint string that does not parse is refused at load time, with the reason.
        """
        report = self.problems("target: 'bogus:x=1'\n")
        self.assertIn("option 'target': not a client endpoint string", report)
        self.assertIn("Unknown endpoint type: 'bogus'", report)

    def test_badPortAndTimeout(self):
        """
        Ports out of range and non-positive timeouts are refused, each by name.
        """
        report = self.problems("host: a\nport: 70000\nconnect_timeout: 0\n")
        self.assertIn("option 'port': must be 1-65535", report)
        self.assertIn("option 'connect_timeout': must be a number of seconds, more than 0", report)


class RelayTests(SynchronousTestCase):
    """
    One forwarded connection, both sides in memory.
    """

    def setUp(self):
        self.harness = ServiceHarness(forward,
                                      "host: web.example\nport: 80\nconnect_timeout: 5\n")
        self.conn = self.harness.connect(peer=PEER)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def answer(self):
        """
        The target accepts the connection the service asked for.
        """
        [(host, port, factory, timeout, _)] = self.harness.reactor.tcpClients
        # MemoryReactor resolves every name to 127.0.0.1.
        self.assertEqual((host, port, timeout), ("127.0.0.1", 80, 5))
        self.target = MemoryTransport(hostAddress=TARGET_LOCAL, peerAddress=TARGET)
        self.outbound = factory.buildProtocol(TARGET)
        self.outbound.makeConnection(self.target)
        return self.outbound

    def test_pausedUntilConnected(self):
        """
        The client's side is not read until the target has answered, then it is.
        """
        self.assertEqual(self.conn.transport.producerState, "paused")
        self.answer()
        self.assertEqual(self.conn.transport.producerState, "producing")

    def test_relaysBothWays(self):
        """
        Bytes go from client to target and back, unchanged, and the inbound record counts
        them.
        """
        self.answer()
        self.conn.send(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(self.target.value(), b"GET / HTTP/1.0\r\n\r\n")
        self.outbound.dataReceived(b"HTTP/1.0 200 OK\r\n\r\n")
        self.assertEqual(self.conn.received(), b"HTTP/1.0 200 OK\r\n\r\n")
        self.assertEqual((self.conn.record.bytesIn, self.conn.record.bytesOut), (18, 19))

    def test_outboundLinked(self):
        """
        The registry shows the outbound endpoint pair with the inbound connection, linked
        by id, with its own byte counts.
        """
        self.answer()
        self.conn.send(b"abc")
        self.outbound.dataReceived(b"defgh")
        [record] = self.harness.live()
        self.assertEqual(record.remote, PEER)
        shown = self.harness.registry.asDicts([record])[0]["outbound"]
        self.assertEqual(shown["id"], record.outbound.id)
        self.assertEqual(shown["inbound"], record.id)
        self.assertEqual((shown["local"]["host"], shown["local"]["port"]), ("10.0.0.1", 52000))
        self.assertEqual((shown["remote"]["host"], shown["remote"]["port"]), ("10.0.0.2", 80))
        self.assertEqual((shown["bytes_in"], shown["bytes_out"]), (5, 3))
        self.assertNotIn("closed", shown)

    def test_outboundNotALiveConnection(self):
        """
        The outbound connection is not counted as one of the server's live connections.
        """
        self.answer()
        self.assertEqual(len(self.harness.registry), 1)
        self.assertEqual(self.harness.registry.summary()["connections"]["total"], 1)
        self.assertEqual(self.harness.registry.outboundOpened["forward"], 1)

    def test_backpressure(self):
        """
        Each side's transport is the streaming producer of the other: a side that cannot
        keep up pauses the reading of the other.
        """
        self.answer()
        self.assertIs(self.target.producer, self.conn.protocol)
        self.assertTrue(self.target.streaming)
        self.assertIs(self.conn.transport.producer, self.target)
        self.assertTrue(self.conn.transport.streaming)
        self.target.producer.pauseProducing()
        self.assertEqual(self.conn.transport.producerState, "paused")

    def test_clientCloses(self):
        """
        When the client goes away the target's side is closed, and its record says the
        server closed it.
        """
        self.answer()
        self.conn.close()
        self.assertTrue(self.target.disconnecting)
        self.outbound.connectionLost(Failure(ConnectionDone()))
        [inbound] = self.harness.closed()
        self.assertEqual(inbound.reason, CLIENT_CLOSED)
        self.assertEqual(inbound.outbound.reason, SERVER_CLOSED)

    def test_targetCloses(self):
        """
        When the target closes, the client's side is closed once its output is sent,
        and the outbound record says the target closed it.
        """
        outbound = self.answer()
        outbound.dataReceived(b"bye")
        outbound.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.conn.transport.disconnecting)
        self.assertEqual(self.conn.received(), b"bye")
        self.conn.close()
        [inbound] = self.harness.closed()
        self.assertEqual(inbound.reason, SERVER_CLOSED)
        self.assertEqual(inbound.outbound.reason, TARGET_CLOSED)

    def test_targetResets(self):
        """
        A reset from the target is recorded as a reset on the outbound connection.
        """
        self.answer().connectionLost(Failure(ConnectionLost()))
        self.conn.close()
        self.assertEqual(self.harness.closed()[0].outbound.reason, "reset")

    def test_halfCloseFromClient(self):
        """
        The client's half-close is passed on to the target, whose answer still comes back;
        when the target is done too, both sides close.
        """
        outbound = self.answer()
        self.conn.send(b"request")
        self.conn.halfClose()
        self.assertTrue(self.target.writeClosed)
        self.assertFalse(self.conn.transport.disconnecting)
        outbound.dataReceived(b"answer")
        self.assertEqual(self.conn.received(), b"answer")
        outbound.readConnectionLost()
        self.assertTrue(self.conn.transport.disconnecting)
        self.assertTrue(self.target.disconnecting)

    def test_halfCloseFromTarget(self):
        """
        The target's half-close is passed on to the client, whose data still goes through.
        """
        outbound = self.answer()
        outbound.readConnectionLost()
        self.assertTrue(self.conn.transport.writeClosed)
        self.conn.send(b"more")
        self.assertEqual(self.target.value(), b"more")

    def test_connectTimeout(self):
        """
        A target that does not answer within C{connect_timeout} gets the client's
        connection closed, and a warning naming the target and the client.
        """
        self.harness.reactor.advance(4.9)
        self.assertFalse(self.conn.transport.disconnecting)
        self.harness.reactor.advance(0.2)
        self.assertTrue(self.conn.transport.disconnecting)
        [event] = [e for e in self.events if e.get("log_namespace", "").endswith("forward")]
        self.assertEqual(event["target"], "web.example:80")
        self.assertEqual(event["peer"], "198.51.100.20:41000")
        self.assertEqual(event["why"], "no answer within 5 s")

    def test_targetRefuses(self):
        """
        A target that refuses gets the client's connection closed, with the reason
        logged.
        """
        [(_, _, factory, _, _)] = self.harness.reactor.tcpClients
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.harness.reactor.advance(1)  # HostnameEndpoint reports after its attempt delay
        self.assertTrue(self.conn.transport.disconnecting)
        [event] = [e for e in self.events if e.get("log_namespace", "").endswith("forward")]
        self.assertIn("Connection was refused", event["why"])

    def test_clientLeavesWhileConnecting(self):
        """
        A client that leaves before the target answers cancels the attempt, and nothing is
        logged as a failure.
        """
        self.conn.close()
        [connector] = self.harness.reactor.connectors
        self.assertTrue(connector.stoppedConnecting or connector._disconnected)
        self.assertEqual([e for e in self.events
                          if e.get("log_namespace", "").endswith("forward")], [])
        self.assertEqual(self.harness.closed()[0].outbound, None)


class ForwardIntegrationTests(ServingTestCase):
    """
    A real forward in front of a real echo service, real sockets, 127.0.0.1.
    """

    def start(self, **options):
        echoServer = self.serve(spec("echo", port=0))
        echoPort = echoServer.addressOf("echo").port
        options = options or {"host": "127.0.0.1", "port": echoPort}
        server = self.serve(spec("fwd", "forward", port=0, options=options,
                                 providers={"forward": forward, "echo": echo}))
        self.echoServer = echoServer
        return server, server.addressOf("fwd").port, echoPort

    def test_echoThroughForward(self):
        """
        A client of the forward gets the target's echo, after a half-close, and while it
        is connected the registry shows both endpoint pairs, linked.
        """
        server, port, echoPort = self.start()
        payload = bytes(range(256)) * 64

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                s.sendall(payload[:100])
                got = b""
                while len(got) < 100:
                    got += s.recv(65536)
                records = (reactorCall(server.registry.query)
                           + reactorCall(self.echoServer.registry.query))
                s.sendall(payload[100:])
                s.shutdown(socket.SHUT_WR)
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    got += data
                return s.getsockname(), records, got

        def check(result):
            name, records, got = result
            self.assertEqual(got, payload)
            [record] = [r for r in records if r["service"] == "fwd"]
            self.assertEqual((record["remote"]["host"], record["remote"]["port"]), name)
            outbound = record["outbound"]
            self.assertEqual(outbound["inbound"], record["id"])
            self.assertEqual(outbound["remote"]["port"], echoPort)
            # The echo service saw the forward's outbound endpoint as its peer.
            [echoed] = [r for r in records if r["service"] == "echo"]
            self.assertEqual(echoed["remote"]["port"], outbound["local"]["port"])

        return deferToThread(client).addCallback(check)

    def test_endpointStringTarget(self):
        """
        A target given as a client endpoint string works the same.
        """
        echoServer = self.serve(spec("echo", port=0))
        target = f"tcp:host=127.0.0.1:port={echoServer.addressOf('echo').port}"
        server = self.serve(spec("fwd", "forward", port=0, options={"target": target},
                                 providers={"forward": forward}))
        port = server.addressOf("fwd").port

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
                return s.recv(100)

        return deferToThread(client).addCallback(self.assertEqual, b"ping")

    def test_unreachableTarget(self):
        """
        When nothing listens at the target, the client's connection is closed at once
        (not left hanging), with nothing sent.
        """
        server, port, _ = self.start(host="127.0.0.1", port=freePort())

        def client():
            with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
                return s.recv(100)

        return deferToThread(client).addCallback(self.assertEqual, b"")


def reactorCall(f, *args):
    """
    Run C{f} in the reactor thread and wait for its result (from a client thread).
    """
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(reactor, f, *args)
