"""
Tests for the UDP guards as configured and reloaded: C{registry.udp_max_flows} reaches
the registry, the loop guard's set of this server's ports follows every reload, and a
reloaded C{udp_rate_per_source} applies to the socket already bound.
"""

from __future__ import annotations

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from portserver.config import RegistrySpec, parseConfig
from portserver.limits import Limits
from portserver.registry import Endpoint
from portserver.server import PortServer
from portserver.udpguard import LOOP, RATE
from tests.support import PROVIDERS, PortReactor, makePlan, spec


def started(plan):
    reactor = PortReactor()
    server = PortServer(plan, reactor)
    server.startService()
    return reactor, server


def udpChild(server, service):
    [found] = [c for c in server.listeners
               if c.listener.service == service and c.listener.transport == "udp"]
    return found


class Recorder:
    """
    A UDP port that keeps what is written to it.
    """

    def __init__(self, port):
        self.port = port
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))

    def getHost(self):
        return IPv4Address("UDP", "127.0.0.1", self.port)


def serveOn(child):
    """
    Give C{child}'s datagram protocol a recording transport; return it.
    """
    port = Recorder(child.listener.port)
    child.served.makeConnection(port)
    return port


class MaxFlowsConfigTests(SynchronousTestCase):
    """
    C{registry.udp_max_flows}: read from the config, checked, and given to the registry.
    """

    def parse(self, text):
        _, _, registry, _, problems = parseConfig(text, "u.yaml", PROVIDERS)
        return registry, [str(p) for p in problems]

    def test_defaultAndGiven(self):
        """
        Without the key the table holds 10000 flows; the key sets it.
        """
        services = "services:\n  - {name: e, protocol: echo, port: 7007}\n"
        registry, problems = self.parse(services)
        self.assertEqual((registry.udpMaxFlows, problems), (10000, []))
        registry, problems = self.parse(services + "registry: {udp_max_flows: 500}\n")
        self.assertEqual((registry.udpMaxFlows, problems), (500, []))

    def test_invalid(self):
        """
        0, a number past ten million, or not a whole number, is an error at the value.
        """
        services = "services:\n  - {name: e, protocol: echo, port: 7007}\n"
        for value, why in [("0", "must be 1 to 10000000"),
                           ("10000001", "must be 1 to 10000000"),
                           ("lots", "must be a number of flows, not str")]:
            _, problems = self.parse(services + f"registry: {{udp_max_flows: {value}}}\n")
            self.assertEqual(problems, [f"u.yaml:3:12: registry: 'udp_max_flows' {why}"])

    def test_reachesTheRegistry(self):
        """
        The server's registry holds no more flows than the config says.
        """
        plan = makePlan(spec("echo", port=7007, transports=("udp",)))
        plan = attrs.evolve(plan, config=attrs.evolve(
            plan.config, registry=RegistrySpec(udpMaxFlows=3, connectionLog=None)))
        _, server = started(plan)
        self.assertEqual(server.registry.udpMaxFlows, 3)
        child = udpChild(server, "echo")
        serveOn(child)
        for port in range(40000, 40010):
            child.served.datagramReceived(b"x", ("127.0.0.2", port))
        self.assertEqual([r.remote for r in server.registry.snapshot("udp")],
                         [Endpoint("127.0.0.2", p) for p in (40007, 40008, 40009)])


class OwnPortsTests(SynchronousTestCase):
    """
    The loop guard's set of this server's ports is every bound listener's, whatever the
    transport, and follows reloads.
    """

    def test_followsReloads(self):
        """
        At start the set is the TCP and UDP listeners' ports; after a reload that removes
        one and adds another, a datagram from the removed port is served and one from
        the added port is dropped as a loop.
        """
        _, server = started(makePlan(spec("echo", port=7007, transports=("tcp", "udp")),
                                     spec("discard", port=7009)))
        self.assertEqual(server.registry.ownPorts, {7007, 7009})
        self.successResultOf(server.reload(makePlan(
            spec("echo", port=7007, transports=("tcp", "udp")), spec("daytime", port=7013))))
        self.assertEqual(server.registry.ownPorts, {7007, 7013})
        child = udpChild(server, "echo")
        port = serveOn(child)
        child.served.datagramReceived(b"a", ("127.0.0.1", 7009))
        child.served.datagramReceived(b"b", ("127.0.0.1", 7013))
        self.assertEqual(port.written, [(b"a", ("127.0.0.1", 7009))])
        self.assertEqual(server.registry.refused[("echo", LOOP)], 1)

    def test_boundLater(self):
        """
        A listener that takes over a removed one's port, bound only once the old socket
        has closed, is in the set from then on.
        """
        reactor, server = started(makePlan(spec("echo", port=7007)))
        closing = Deferred()
        reactor.ports[0].stopListening = lambda: closing
        result = server.reload(makePlan(spec("echo", port=7008),
                                        spec("discard", port=7007, interface="0.0.0.0")))
        self.assertNoResult(result)
        self.assertEqual(server.registry.ownPorts, {7008})
        closing.callback(None)
        self.successResultOf(result)
        self.assertEqual(server.registry.ownPorts, {7007, 7008})


class ReloadedRateTests(SynchronousTestCase):
    """
    A reload that changes C{udp_rate_per_source} applies to the bound UDP socket.
    """

    def test_rateChangedAndLifted(self):
        """
        chargen at 1 a second answers 2 datagrams of a burst (the bucket holds twice the
        rate); reloaded at 100, a burst of 50 is answered whole; reloaded with null, 500.
        """
        def plan(rate):
            base = spec("chargen", port=7019, transports=("udp",))
            return makePlan(attrs.evolve(base, limits=Limits(udpRatePerSource=rate)))

        reactor, server = started(plan(1))
        child = udpChild(server, "chargen")
        port = serveOn(child)

        def burst(count, source):
            before = len(port.written)
            for _ in range(count):
                child.served.datagramReceived(b"x", (source, 40000))
            return len(port.written) - before

        self.assertEqual(burst(10, "192.0.2.1"), 2)
        self.assertEqual(server.registry.refused[("chargen", RATE)], 8)
        self.successResultOf(server.reload(plan(100)))
        self.assertEqual(burst(50, "192.0.2.2"), 50)
        self.successResultOf(server.reload(plan(None)))
        self.assertEqual(burst(500, "192.0.2.1"), 500)
