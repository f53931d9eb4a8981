"""
Tests for L{portserver.limits} and the C{limits:}, C{access:} and C{shutdown:} config keys.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from portserver.config import parseConfig
from portserver.limits import AccessRules, Limits, parseNetwork
from portserver.protocols.classic import echo
from portserver.provider import PortProtocol

patient = PortProtocol("patient", "has its own idle timeout", 9997,
                       factory=lambda service, reactor: Factory.forProtocol(Protocol),
                       defaultLimits={"idle_timeout": 300, "deadline": 3600})
PROVIDERS = {"echo": echo, "patient": patient}


def load(text):
    specs, _, _, shutdown, problems = parseConfig(text, "l.yaml", PROVIDERS)
    return {s.name: s for s in specs}, shutdown, [str(p) for p in problems]


class LayeringTests(SynchronousTestCase):
    """
    A service's limits: its own, over the top-level ones, over the plugin's.
    """

    def test_defaults(self):
        """
        Without any C{limits:}, a classic service is bounded in time (its protocol's
        5-minute idle timeout), in output (1 MiB unsent) and in its close (10 s grace);
        the drain is 10 s.
        """
        specs, shutdown, problems = load("services:\n  - {name: e, protocol: echo}\n")
        self.assertEqual(problems, [])
        self.assertEqual(specs["e"].limits, Limits(idleTimeout=300))
        self.assertEqual((specs["e"].limits.maxOutput, specs["e"].limits.closeGrace),
                         (1024 * 1024, 10.0))
        self.assertEqual(shutdown.drain, 10.0)

    def test_layers(self):
        """
        The plugin's default applies unless the top level or the service says otherwise,
        and the service's word is last.
        """
        specs, _, problems = load(
            "limits: {deadline: 60, max_per_source: 5}\n"
            "services:\n"
            "  - {name: a, protocol: patient}\n"
            "  - {name: b, protocol: patient, limits: {idle_timeout: 10, max_per_source: 2}}\n"
            "  - {name: c, protocol: echo}\n")
        self.assertEqual(problems, [])
        a, b, c = specs["a"].limits, specs["b"].limits, specs["c"].limits
        self.assertEqual((a.idleTimeout, a.deadline, a.maxPerSource), (300, 60, 5))
        self.assertEqual((b.idleTimeout, b.deadline, b.maxPerSource), (10, 60, 2))
        self.assertEqual((c.idleTimeout, c.deadline, c.maxPerSource), (300, 60, 5))

    def test_nullRemovesALimit(self):
        """
        C{null} in a service's limits removes a limit set at the top level.
        """
        specs, _, _ = load("limits: {max_connections: 5}\n"
                           "services:\n  - {name: a, protocol: echo, "
                           "limits: {max_connections: null}}\n")
        self.assertIsNone(specs["a"].limits.maxConnections)

    def test_burst(self):
        """
        The token bucket holds C{rate_burst} tokens, or the rate rounded up.
        """
        self.assertEqual(Limits(ratePerSource=2.5).burst, 3)
        self.assertEqual(Limits(ratePerSource=2.5, rateBurst=10).burst, 10)
        self.assertIsNone(Limits().burst)

    def test_bannerMapping(self):
        """
        C{banner} as a mapping names refusal reasons; an unknown reason or a line of two
        lines is a located error naming the known reasons.
        """
        _, _, problems = load(
            "services:\n"
            "  - name: e\n"
            "    protocol: echo\n"
            "    limits: {banner: {denied: \"no\", overloaded: \"busy\"}}\n")
        self.assertEqual(len(problems), 1)
        self.assertIn("service 'e': limits: 'banner' has unknown refusal reason "
                      "'overloaded' (known: denied, max-connections, max-per-source, "
                      "rate-per-source)", problems[0])
        self.assertEqual(Limits(banner={"denied": "no", "max-connections": None}).banner,
                         (("denied", "no"),))

    def test_errorsLocated(self):
        """
        Every bad limit, access item and drain is reported at once, at its line, with the
        service it belongs to.
        """
        _, _, problems = load(
            "limits: {max_per_source: 0}\n"
            "access: {deny: [bogus]}\n"
            "services:\n"
            "  - name: e\n"
            "    protocol: echo\n"
            "    limits: {rate_per_source: -1, banner: \"two\\nlines\", nope: 1}\n"
            "    access: {allow: 10.0.0.0/8, other: []}\n"
            "shutdown: {drain: -1}\n")
        self.assertEqual(problems, [
            "l.yaml:1:10: limits: 'max_per_source' must be 1 or more",
            "l.yaml:2:17: access: 'deny' item 1: 'bogus' is not an IP address or CIDR block",
            "l.yaml:6:57: service 'e': limits: 'nope' unknown option (known: banner, "
            "close_grace, deadline, idle_timeout, ipv6_prefix, max_connections, max_output, "
            "max_per_source, rate_burst, rate_per_source, udp_rate_per_source)",
            "l.yaml:6:14: service 'e': limits: 'rate_per_source' must be more than 0 "
            "per second",
            "l.yaml:6:35: service 'e': limits: 'banner' must be one line",
            "l.yaml:7:33: service 'e': access: unknown key 'other' (known: allow, deny)",
            "l.yaml:7:21: service 'e': access: 'allow' must be a list of addresses and CIDR "
            "blocks, not a string",
            "l.yaml:8:12: shutdown: 'drain' must be a number of seconds, 0 or more and at "
            "most 31536000 (a year)",
        ])


class UDPRateTests(SynchronousTestCase):
    """
    C{limits.udp_rate_per_source}: on by default for the classic services whose replies
    are larger than the requests, layered like every limit, C{null} to lift it.
    """

    def test_layered(self):
        """
        chargen, daytime, qotd and time answer 10 datagrams a second per source by
        default, echo and discard without limit; the top level sets it for all, a
        service's own word (a number, or null) is last.
        """
        from portserver.protocols import classic
        providers = {p.name: p for p in classic.ALL}

        def rates(text):
            specs, _, _, _, problems = parseConfig(text, "l.yaml", providers)
            self.assertEqual(problems, [])
            return {s.name: s.limits.udpRatePerSource for s in specs}

        services = "".join(f"  - {{name: {p.name}, protocol: {p.name}, port: {20000 + i}}}\n"
                           for i, p in enumerate(classic.ALL))
        self.assertEqual(rates("services:\n" + services), {
            "echo": None, "discard": None, "daytime": 10, "qotd": 10, "chargen": 10,
            "time": 10})
        self.assertEqual(set(rates("limits: {udp_rate_per_source: 2.5}\nservices:\n"
                                   + services).values()), {2.5})
        self.assertEqual(rates(
            "services:\n"
            "  - {name: c, protocol: chargen, limits: {udp_rate_per_source: null}}\n"
            "  - {name: e, protocol: echo, limits: {udp_rate_per_source: 100}}\n"),
            {"c": None, "e": 100})

    def test_invalid(self):
        """
        A rate of 0 or less, or not a number, is an error located at the value.
        """
        _, _, problems = load(
            "services:\n"
            "  - {name: a, protocol: echo, port: 1, limits: {udp_rate_per_source: 0}}\n"
            "  - {name: b, protocol: echo, port: 2, limits: {udp_rate_per_source: fast}}\n")
        self.assertEqual(problems, [
            "l.yaml:2:49: service 'a': limits: 'udp_rate_per_source' must be more than 0 "
            "datagrams per second",
            "l.yaml:3:49: service 'b': limits: 'udp_rate_per_source' must be datagrams "
            "answered per second per source, or null for no limit, not str"])


class AccessTests(SynchronousTestCase):
    """
    Access rules: the most specific block decides.
    """

    def rules(self, allow=(), deny=()):
        return AccessRules(tuple(map(parseNetwork, allow)), tuple(map(parseNetwork, deny)))

    def test_noRules(self):
        """
        No rule: everyone may connect.
        """
        self.assertTrue(AccessRules().allows("198.51.100.1"))
        self.assertFalse(AccessRules())

    def test_mostSpecificWins(self):
        """
        A more specific allow inside a denied block is allowed; the rest of the block is
        not; addresses outside every rule are allowed.
        """
        rules = self.rules(allow=["10.1.0.0/16"], deny=["10.0.0.0/8"])
        self.assertTrue(rules.allows("10.1.2.3"))
        self.assertFalse(rules.allows("10.2.0.1"))
        self.assertTrue(rules.allows("192.0.2.1"))
        nested = self.rules(allow=["10.1.0.0/16"], deny=["10.0.0.0/8", "10.1.2.0/24"])
        self.assertFalse(nested.allows("10.1.2.3"))
        self.assertTrue(nested.allows("10.1.3.3"))

    def test_denyWinsATie(self):
        """
        The same block allowed and denied is denied.
        """
        self.assertFalse(self.rules(allow=["192.0.2.0/24"], deny=["192.0.2.0/24"])
                         .allows("192.0.2.9"))

    def test_defaultDeny(self):
        """
        C{deny: [0.0.0.0/0, ::/0]} with an allow list admits only the allowed.
        """
        rules = self.rules(allow=["127.0.0.1", "::1"], deny=["0.0.0.0/0", "::/0"])
        self.assertTrue(rules.allows("127.0.0.1"))
        self.assertTrue(rules.allows("::1"))
        self.assertFalse(rules.allows("127.0.0.2"))
        self.assertFalse(rules.allows("2001:db8::1"))

    def test_mappedIPv4(self):
        """
        An IPv4-mapped IPv6 peer is judged as its IPv4 address, and a mapped block in a
        rule is taken as the IPv4 block.
        """
        rules = self.rules(deny=["192.0.2.0/24"])
        self.assertFalse(rules.allows("::ffff:192.0.2.7"))
        self.assertEqual(parseNetwork("::ffff:192.0.2.0/120"),
                         ipaddress.ip_network("192.0.2.0/24"))

    def test_globalAndServiceTogether(self):
        """
        A service's rules join the top-level ones: a service may allow a block inside a
        globally denied one.
        """
        specs, _, problems = load(
            "access: {deny: [10.0.0.0/8]}\n"
            "services:\n"
            "  - {name: a, protocol: echo, access: {allow: [10.9.0.0/16]}}\n"
            "  - {name: b, protocol: echo, port: 7007}\n")
        self.assertEqual(problems, [])
        self.assertTrue(specs["a"].access.allows("10.9.1.1"))
        self.assertFalse(specs["a"].access.allows("10.8.1.1"))
        self.assertFalse(specs["b"].access.allows("10.9.1.1"))
