"""
Tests for L{portserver.udpguard}: no UDP loops, a bounded reply rate per source.
"""

from __future__ import annotations

import os
import socket
import struct

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from portserver.admission import Admission
from portserver.datagrams import TrackingDatagram
from portserver.limits import AccessRules, Limits
from portserver.protocols.classic import ChargenDatagram, EchoDatagram
from portserver.server import PortServer
from portserver.udpguard import CLASSIC_PORTS, LOOP, RATE, ReplyRate, isLoopSource, loopPorts
from tests.support import makePlan, spec
from tests.test_tracking import FakeUDPPort, makeRegistry


class LoopSourceTests(SynchronousTestCase):
    """
    Which source ports are never answered.
    """

    def test_loopSources(self):
        """
        Port 0, the classic services' ports and this server's own ports are loop
        sources; an ordinary client port is not.
        """
        for port in (0, 7, 9, 13, 17, 19, 37, 10007):
            self.assertTrue(isLoopSource(port, frozenset({10007})), port)
        for port in (1, 53, 1024, 40001):
            self.assertFalse(isLoopSource(port, frozenset({10007})), port)
        self.assertEqual(CLASSIC_PORTS, {7, 9, 13, 17, 19, 37})

    def test_loopPorts(self):
        """
        L{loopPorts} holds exactly the ports L{isLoopSource} refuses, of all 65,536.
        """
        own = frozenset({10007, 40000})
        ports = loopPorts(own)
        self.assertIsInstance(ports, frozenset)
        self.assertEqual(ports, {p for p in range(65536) if isLoopSource(p, own)})


class ReplyRateTests(SynchronousTestCase):
    """
    L{ReplyRate}: a token bucket per source.
    """

    def test_burstThenRate(self):
        """
        A source gets a burst of twice the rate, then the rate; another source has its
        own bucket.
        """
        clock = Clock()
        rate = ReplyRate(10, clock)
        self.assertEqual(sum(rate.allow("192.0.2.1") for _ in range(30)), 20)
        self.assertTrue(rate.allow("192.0.2.2"))
        clock.advance(0.5)
        self.assertEqual(sum(rate.allow("192.0.2.1") for _ in range(30)), 5)

    def test_callersTime(self):
        """
        C{allow(source, now)} takes C{now} as the time (the caller has just read the
        clock) instead of reading the clock again.
        """
        clock = Clock()
        rate = ReplyRate(10, clock)
        self.assertEqual(sum(rate.allow("192.0.2.1", 0.0) for _ in range(30)), 20)
        self.assertEqual(sum(rate.allow("192.0.2.1", 0.5) for _ in range(30)), 5)
        self.assertEqual(clock.seconds(), 0)

    def test_boundedSources(self):
        """
        At most C{maxSources} buckets are held; the least recently used goes first.
        """
        rate = ReplyRate(1, Clock(), maxSources=100)
        for i in range(1000):
            rate.allow(f"10.0.{i >> 8}.{i & 255}")
        self.assertEqual(len(rate), 100)


class GuardedDatagramTests(SynchronousTestCase):
    """
    L{TrackingDatagram} drops loop sources and datagrams past the reply rate before the
    plugin and the registry see them, counting them as refused.
    """

    def serve(self, protocol=None, limits=Limits(), ownPorts=frozenset()):
        registry = makeRegistry()
        registry.ownPorts = ownPorts
        tracking = TrackingDatagram(protocol or EchoDatagram(), registry, "svc", "echo")
        tracking.admission = Admission("svc", limits, AccessRules(), registry.clock,
                                       registry)
        port = FakeUDPPort()
        tracking.makeConnection(port)
        return registry, tracking, port

    def test_loopSourcesDropped(self):
        """
        Datagrams from port 7, port 0 and the server's own port are not answered, make
        no flow, and are counted as refused, "loop"; one from a client port is served.
        """
        registry, tracking, port = self.serve(ownPorts=frozenset({10007}))
        for source in (7, 0, 10007, 19):
            tracking.datagramReceived(b"x", ("127.0.0.1", source))
        self.assertEqual(port.written, [])
        self.assertEqual(registry.snapshot("udp"), [])
        self.assertEqual(registry.refused[("svc", LOOP)], 4)
        tracking.datagramReceived(b"x", ("127.0.0.1", 40001))
        self.assertEqual(port.written, [(b"x", ("127.0.0.1", 40001))])

    def test_replyRate(self):
        """
        With C{udp_rate_per_source: 10}, a source gets 20 replies at once (the burst),
        the rest are dropped and counted as refused, "rate"; another source is served.
        """
        registry, tracking, port = self.serve(ChargenDatagram(),
                                              Limits(udpRatePerSource=10))
        for _ in range(50):
            tracking.datagramReceived(b"x", ("192.0.2.7", 40001))
        self.assertEqual(len(port.written), 20)
        self.assertEqual(registry.refused[("svc", RATE)], 30)
        tracking.datagramReceived(b"x", ("192.0.2.8", 40001))
        self.assertEqual(len(port.written), 21)
        [flow, other] = registry.snapshot("udp")
        self.assertEqual(flow.datagramsIn, 20)

    def test_amplifiersLimitedByDefault(self):
        """
        chargen, daytime, qotd and time have a reply rate by default; echo and discard
        (replies no larger than requests) do not.
        """
        from portserver.protocols import classic
        for provider in (classic.chargen, classic.daytimeProtocol, classic.qotd,
                         classic.timeProtocol):
            self.assertEqual(provider.defaultLimits["udp_rate_per_source"], 10)
        for provider in (classic.echo, classic.discard):
            self.assertNotIn("udp_rate_per_source", provider.defaultLimits)


def udpPacket(source: int, destination: int, payload: bytes) -> bytes:
    """
    A UDP header and payload (checksum 0: none, as IPv4 allows).
    """
    return struct.pack("!HHHH", source, destination, 8 + len(payload), 0) + payload


class LoopInjectionTests(TestCase):
    """
    The CVE-1999-0103 loop on real sockets: a datagram forged with the echo service's own
    port as its source, sent to that echo service.
    """

    timeout = 60

    @inlineCallbacks
    def test_forgedLoopsLeaveTheServerIdle(self):
        """
        Twenty datagrams from 127.0.0.1:ECHO to 127.0.0.1:ECHO (raw socket, so the
        source port is forged) are each dropped as "loop": no reply, no flow, and once
        they are in, nothing more arrives (before, each started a loop of echo answering
        itself at full CPU).
        """
        if os.getuid() != 0:
            raise SkipTest("forging a source port takes a raw socket, which needs root")
        server = PortServer(makePlan(spec("echo", port=0, interface="127.0.0.1",
                                          transports=("udp",))), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        port = server.addressOf("echo", "udp").port

        def inject():
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
                for i in range(20):
                    raw.sendto(udpPacket(port, port, b"loop %d" % i), ("127.0.0.1", 0))

        yield deferToThread(inject)
        registry = server.registry
        for _ in range(100):  # until the reactor has read all twenty
            if registry.refused[("echo", LOOP)] >= 20:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(registry.refused[("echo", LOOP)], 20)
        yield deferLater(reactor, 0.2, lambda: None)  # a loop would have run meanwhile
        self.assertEqual(registry.refused[("echo", LOOP)], 20)
        self.assertEqual(registry.snapshot("udp"), [])
        self.assertEqual(registry.accepted[("echo", "udp")], 0)


class LoopReportTests(SynchronousTestCase):
    """
    Dropped datagrams are logged at a bounded rate, and a burst is reported in full.
    """

    def test_burstReportedByTheFlowSweep(self):
        """
        Of 20 loop datagrams at once, the first is logged at once and the other 19 are
        reported by the periodic flow sweep (no later datagram is needed), as datagrams.
        """
        from twisted.logger import capturedLogs, formatEvent

        from tests.support import PortReactor

        reactor = PortReactor()
        server = PortServer(makePlan(spec("echo", port=10007, transports=("udp",))),
                            reactor)
        server.privilegedStartService()
        server.startService()
        self.addCleanup(server.stopService)
        served = server.listeners[0].served
        with capturedLogs() as events:
            for i in range(20):
                served.datagramReceived(b"x", ("127.0.0.1", 10007))
            reactor.advance(30)
        lines = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        self.assertEqual(lines, [
            "refused 1 datagram to echo from 127.0.0.1: loop",
            "refused 19 datagrams to echo from 127.0.0.1: loop (since last report)"])
