"""
Tests for L{portserver.datagrams}: what the tracking of a datagram service costs per
datagram (one flow look-up, no second record for a reply) and that its shortcuts keep
the flow accounting exact. The flow basics are in L{tests.test_tracking}, the loop guard
and reply rate in L{tests.test_udpguard}.
"""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase

from portserver.datagrams import TrackingDatagram
from portserver.protocols.classic import EchoDatagram
from portserver.registry import Endpoint, Registry
from portserver.udpguard import LOOP
from tests.test_tracking import FakeUDPPort, makeRegistry


class CountingRegistry(Registry):
    """
    A L{Registry} that counts the flow look-ups made of it, by method.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lookups = {"knownFlow": 0, "seenFlow": 0, "flow": 0}

    def knownFlow(self, service, remote):
        self.lookups["knownFlow"] += 1
        return super().knownFlow(service, remote)

    def seenFlow(self, service, remote, now):
        self.lookups["seenFlow"] += 1
        return super().seenFlow(service, remote, now)

    def flow(self, service, protocol, local, remote):
        self.lookups["flow"] += 1
        return super().flow(service, protocol, local, remote)


def counting():
    """
    A L{CountingRegistry} like L{makeRegistry}'s.
    """
    plain = makeRegistry()
    return CountingRegistry(plain.clock, plain.rule)


class Deferring(DatagramProtocol):
    """
    A plugin that keeps each datagram's address and answers later, with L{answer}.
    """

    def __init__(self):
        self.pending = []

    def datagramReceived(self, data, addr):
        self.pending.append((data, addr))

    def answer(self):
        for data, addr in self.pending:
            self.transport.write(data, addr)
        self.pending = []


def serve(protocol=None, registry=None, service="echo"):
    registry = registry or counting()
    tracking = TrackingDatagram(protocol or EchoDatagram(), registry, service, "echo")
    port = FakeUDPPort()
    tracking.makeConnection(port)
    return registry, tracking, port


class OneLookupTests(SynchronousTestCase):
    """
    A datagram of a known flow, and the reply to it, cost one look-up of the flow.
    """

    def test_replyToKnownFlow(self):
        """
        Ten echoed datagrams from one source: the first opens the flow; each of the
        others is one C{seenFlow} look-up, and the reply to it none; one record, with
        every datagram and byte counted both ways.
        """
        registry, tracking, port = serve()
        tracking.datagramReceived(b"first", ("127.0.0.2", 40001))
        self.assertEqual(registry.accepted[("echo", "udp")], 1)
        before = dict(registry.lookups)
        for _ in range(9):
            tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        self.assertEqual({name: count - before[name]
                          for name, count in registry.lookups.items()},
                         {"knownFlow": 0, "seenFlow": 9, "flow": 0})
        self.assertEqual(registry.accepted[("echo", "udp")], 1)
        [flow] = registry.snapshot("udp")
        self.assertEqual((flow.datagramsIn, flow.bytesIn, flow.datagramsOut, flow.bytesOut),
                         (10, 32, 10, 32))
        self.assertEqual(len(port.written), 10)

    def test_newFlow(self):
        """
        The first datagram from a source opens its flow: one missed C{seenFlow}, one
        C{knownFlow} of its L{Endpoint}, one C{flow}; its reply looks nothing up.
        """
        registry, tracking, port = serve()
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        self.assertEqual(registry.lookups, {"knownFlow": 1, "seenFlow": 1, "flow": 1})

    def test_otherSourcesInterleaved(self):
        """
        Datagrams from two sources, alternating, each count on their own flow, replies
        included, with one look-up per datagram once both flows are open.
        """
        registry, tracking, port = serve()
        a, b = ("127.0.0.2", 40001), ("127.0.0.3", 40002)
        tracking.datagramReceived(b"a", a)
        tracking.datagramReceived(b"bb", b)
        before = registry.lookups["seenFlow"]
        for _ in range(5):
            tracking.datagramReceived(b"a", a)
            tracking.datagramReceived(b"bb", b)
        self.assertEqual(registry.lookups["seenFlow"] - before, 10)
        self.assertEqual(registry.lookups["flow"], 2)
        flows = {f.remote: f for f in registry.snapshot("udp")}
        self.assertEqual(
            [(f.datagramsIn, f.bytesIn, f.datagramsOut, f.bytesOut)
             for f in (flows[Endpoint(*a)], flows[Endpoint(*b)])],
            [(6, 6, 6, 6), (6, 12, 6, 12)])


class ReplyAccountingTests(SynchronousTestCase):
    """
    Writes that are not the answer to the datagram being delivered are counted on the
    right flow, as before the shortcut.
    """

    def test_equalAddressLater(self):
        """
        A write to an address equal to (not the same tuple as) an earlier sender's counts
        on that sender's flow, without opening another.
        """
        registry, tracking, port = serve(Deferring())
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        tracking.datagramReceived(b"de", ("127.0.0.3", 40001))
        tracking.wrapped.transport.write(b"hello", ("127.0.0.2", 40001))
        flows = {f.remote.host: f for f in registry.snapshot("udp")}
        self.assertEqual(registry.accepted[("echo", "udp")], 2)
        self.assertEqual((flows["127.0.0.2"].datagramsOut, flows["127.0.0.2"].bytesOut,
                          flows["127.0.0.3"].datagramsOut), (1, 5, 0))

    def test_deferredAnswers(self):
        """
        Answers written after later datagrams arrived, to the addresses the plugin kept,
        count on their own flows.
        """
        registry, tracking, port = serve(Deferring())
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        tracking.datagramReceived(b"de", ("127.0.0.3", 40001))
        tracking.wrapped.answer()
        self.assertEqual(sorted((f.remote.host, f.datagramsOut, f.bytesOut)
                                for f in registry.snapshot("udp")),
                         [("127.0.0.2", 1, 3), ("127.0.0.3", 1, 2)])

    def test_answerAfterFlowClosed(self):
        """
        An answer to the last sender after its flow closed (here, expired) opens a new
        flow for it, with that datagram out: the closed record is not counted on.
        """
        registry, tracking, port = serve(Deferring())
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        [old] = registry.snapshot("udp")
        registry.clock.advance(registry.udpIdle)
        self.assertEqual(registry.expireFlows(), 1)
        tracking.wrapped.answer()
        [new] = registry.snapshot("udp")
        self.assertIsNot(new, old)
        self.assertEqual((old.datagramsOut, new.datagramsIn, new.datagramsOut,
                          new.bytesOut), (0, 0, 1, 3))

    def test_replacedService(self):
        """
        After a reload hands the port to another service's protocol, an answer to the
        last sender counts on a flow of the new service, not on the old one's.
        """
        registry, tracking, port = serve(Deferring(), service="old")
        tracking.datagramReceived(b"abc", ("127.0.0.2", 40001))
        kept = tracking.wrapped.pending
        tracking.replace(Deferring(), "new", "echo")
        tracking.wrapped.pending = kept
        tracking.wrapped.answer()
        self.assertEqual(sorted((f.service, f.datagramsIn, f.datagramsOut)
                                for f in registry.snapshot("udp")),
                         [("new", 0, 1), ("old", 1, 0)])

    def test_noAddress(self):
        """
        A write without an address (a connected port's) reaches the port and counts on
        no flow.
        """
        registry, tracking, port = serve(Deferring())
        tracking.wrapped.transport.write(b"abc")
        self.assertEqual(port.written, [(b"abc", None)])
        self.assertEqual(registry.snapshot("udp"), [])


class LoopPortsTests(SynchronousTestCase):
    """
    The loop guard follows the server's own ports as they change.
    """

    def test_ownPortsChanged(self):
        """
        A port the server starts listening on after the tracking was made is refused as
        a loop source from then on; one it stopped listening on is served again.
        """
        registry, tracking, port = serve()
        tracking.datagramReceived(b"x", ("127.0.0.2", 10007))
        registry.ownPorts = frozenset({10007})
        tracking.datagramReceived(b"x", ("127.0.0.2", 10007))
        self.assertEqual(registry.refused[("echo", LOOP)], 1)
        registry.ownPorts = frozenset({10008})
        tracking.datagramReceived(b"x", ("127.0.0.2", 10007))
        self.assertEqual(registry.refused[("echo", LOOP)], 1)
        self.assertEqual(len(port.written), 2)
