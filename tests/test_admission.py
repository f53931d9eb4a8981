"""
Tests for L{portserver.admission}: access rules and connection limits decided per new
connection, refusals counted in a real L{Registry} (summary and metrics included) and
logged at a bounded rate. Time comes from a L{Clock}; nothing binds.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from portserver.admission import (
    DENIED,
    MAX_CONNECTIONS,
    MAX_PER_SOURCE,
    RATE_PER_SOURCE,
    SWEEP_MIN,
    Admission,
    sourceOf,
)
from portserver.limits import AccessRules, Limits, parseNetwork
from portserver.registry import Registry
from portserver.status.metrics import collectorRegistry

A, B = "203.0.113.5", "198.51.100.9"


def rules(allow=(), deny=()) -> AccessRules:
    """
    L{AccessRules} from address/CIDR strings.
    """
    return AccessRules(tuple(map(parseNetwork, allow)), tuple(map(parseNetwork, deny)))


class Harness:
    """
    An L{Admission} for service C{"echo"} on a L{Clock} at t=1000, a real L{Registry}, and
    the log events it emitted (C{events}; C{lines()} formats them).
    """

    def __init__(self, limits: Limits = Limits(), access: AccessRules = AccessRules()):
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = Registry(self.clock)
        self.events: list[dict] = []
        self.admission = Admission("echo", limits, access, self.clock, self.registry,
                                   log=Logger(observer=self.events.append))

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


class LimitTests(SynchronousTestCase):
    """
    C{max_per_source}, C{max_connections} and access rules.
    """

    def test_maxPerSource(self):
        """
        With C{max_per_source} N, the N+1th live connection from one source is refused
        C{"max-per-source"}, counted in the registry and logged; another source is still
        admitted; once one of the first source's connections is released, it is admitted
        again.
        """
        h = Harness(Limits(maxPerSource=3))
        self.assertEqual([h.admission.admit(A) for _ in range(3)], [None] * 3)
        self.assertEqual(h.admission.admit(A), MAX_PER_SOURCE)
        self.assertEqual(h.registry.refused, {("echo", MAX_PER_SOURCE): 1})
        self.assertEqual(h.lines(), [
            f"refused 1 connection to echo from {A}: max-per-source"])
        self.assertEqual((h.events[0]["service"], h.events[0]["reason"],
                          h.events[0]["count"], h.events[0]["peer"]),
                         ("echo", MAX_PER_SOURCE, 1, A))
        self.assertIsNone(h.admission.admit(B))
        h.admission.release(A)
        self.assertIsNone(h.admission.admit(A))
        self.assertEqual(h.admission.admit(A), MAX_PER_SOURCE)
        self.assertEqual(h.admission.live, 4)

    def test_releaseFreesAndForgets(self):
        """
        Per-source counts are dropped when they reach 0, and releasing more than was
        admitted never makes a count negative (a later admission still sees the limit).
        """
        h = Harness(Limits(maxPerSource=1))
        self.assertIsNone(h.admission.admit(A))
        h.admission.release(A)
        h.admission.release(A)
        h.admission.release(B)
        self.assertEqual(h.admission.sources()["live"], 0)
        self.assertEqual(h.admission.live, 0)
        self.assertIsNone(h.admission.admit(A))
        self.assertEqual(h.admission.admit(A), MAX_PER_SOURCE)

    def test_maxConnections(self):
        """
        C{max_connections} caps the service's live connections from all sources; a release
        makes room for one more.
        """
        h = Harness(Limits(maxConnections=2))
        self.assertEqual([h.admission.admit(A), h.admission.admit(B)], [None, None])
        self.assertEqual(h.admission.admit("192.0.2.1"), MAX_CONNECTIONS)
        h.admission.release(A)
        self.assertIsNone(h.admission.admit("192.0.2.1"))
        self.assertEqual(h.registry.refused, {("echo", MAX_CONNECTIONS): 1})

    def test_denied(self):
        """
        A peer in a denied block is refused C{"denied"}, one in a more specific allowed
        block inside it is admitted, and a peer no rule holds is admitted; the rules also
        hold for IPv4-mapped IPv6 peers.
        """
        h = Harness(access=rules(allow=["10.1.0.0/16"], deny=["10.0.0.0/8"]))
        self.assertEqual(h.admission.admit("10.2.3.4"), DENIED)
        self.assertEqual(h.admission.admit("::ffff:10.2.3.4"), DENIED)
        self.assertIsNone(h.admission.admit("10.1.2.3"))
        self.assertIsNone(h.admission.admit(A))
        self.assertEqual(h.registry.refused, {("echo", DENIED): 2})
        self.assertEqual(h.lines(), ["refused 1 connection to echo from 10.2.3.4: denied"])

    def test_accessBeforeLimits(self):
        """
        Access rules are checked first: a denied peer is refused C{"denied"} even when the
        service is full, and takes no slot.
        """
        h = Harness(Limits(maxConnections=1), rules(deny=["10.0.0.0/8"]))
        self.assertIsNone(h.admission.admit(A))
        self.assertEqual(h.admission.admit("10.0.0.1"), DENIED)
        self.assertEqual(h.admission.admit(B), MAX_CONNECTIONS)
        self.assertEqual(h.admission.live, 1)

    def test_ipv6GroupedBy64(self):
        """
        IPv6 peers are counted per /64 by default: two addresses in one /64 share one
        allowance; an address in another /64 has its own.
        """
        h = Harness(Limits(maxPerSource=2))
        self.assertIsNone(h.admission.admit("2001:db8:1:2::1"))
        self.assertIsNone(h.admission.admit("2001:db8:1:2:ffff::9"))
        self.assertEqual(h.admission.admit("2001:db8:1:2::3"), MAX_PER_SOURCE)
        self.assertIsNone(h.admission.admit("2001:db8:1:3::1"))
        h.admission.release("2001:db8:1:2::1")
        self.assertIsNone(h.admission.admit("2001:db8:1:2::3"))
        self.assertEqual(h.admission.sources()["networks"], 2)

    def test_customPrefix(self):
        """
        C{ipv6_prefix} sets the grouping: with /48, two /64s in one /48 share an
        allowance; with /128 every address is its own source.
        """
        h = Harness(Limits(maxPerSource=1, ipv6Prefix=48))
        self.assertIsNone(h.admission.admit("2001:db8:1:2::1"))
        self.assertEqual(h.admission.admit("2001:db8:1:3::1"), MAX_PER_SOURCE)
        self.assertIsNone(h.admission.admit("2001:db8:2::1"))
        h = Harness(Limits(maxPerSource=1, ipv6Prefix=128))
        self.assertIsNone(h.admission.admit("2001:db8::1"))
        self.assertIsNone(h.admission.admit("2001:db8::2"))
        self.assertEqual(h.admission.admit("2001:db8::1"), MAX_PER_SOURCE)

    def test_ipv4Mapped(self):
        """
        An IPv4-mapped IPv6 peer is counted as its IPv4 address, not in an IPv6 network:
        it shares the allowance of the plain IPv4 address and not that of other mapped
        addresses (which would all be in ::ffff:0:0/64).
        """
        h = Harness(Limits(maxPerSource=1))
        self.assertIsNone(h.admission.admit("::ffff:" + A))
        self.assertEqual(h.admission.admit(A), MAX_PER_SOURCE)
        self.assertIsNone(h.admission.admit("::ffff:" + B))
        self.assertEqual(h.admission.sources(), {"live": 2, "networks": 0, "buckets": 0})
        h.admission.release(A)
        self.assertIsNone(h.admission.admit("::ffff:" + A))

    def test_sourceOf(self):
        """
        L{sourceOf} gives IPv4 (plain or mapped, also in hexadecimal form) as itself, and
        IPv6 with its network; what is not an address is its own source.
        """
        self.assertEqual(sourceOf(A), (A, None))
        self.assertEqual(sourceOf("::ffff:" + A), (A, None))
        self.assertEqual(sourceOf("::ffff:cb00:7105"), (A, None))
        self.assertEqual(sourceOf("2001:db8::1"), ("2001:db8::1", "2001:db8::/64"))
        self.assertEqual(sourceOf("2001:db8:aaaa:bbbb:1::1", 56),
                         ("2001:db8:aaaa:bbbb:1::1", "2001:db8:aaaa:bb00::/56"))
        self.assertEqual(sourceOf("not:an:address"), ("not:an:address", None))


class RateTests(SynchronousTestCase):
    """
    C{rate_per_source}: a token bucket per source.
    """

    def test_burstAndRefill(self):
        """
        A source may open C{rate_burst} connections at once, then one more per
        1/C{rate} seconds as its bucket refills; refused connections take no token.
        """
        h = Harness(Limits(ratePerSource=2.0, rateBurst=3))
        self.assertEqual([h.admission.admit(A) for _ in range(4)],
                         [None, None, None, RATE_PER_SOURCE])
        h.clock.advance(0.25)
        self.assertEqual(h.admission.admit(A), RATE_PER_SOURCE)
        h.clock.advance(0.25)  # one token in 0.5s, none spent on the refusals
        self.assertEqual([h.admission.admit(A), h.admission.admit(A)],
                         [None, RATE_PER_SOURCE])
        h.clock.advance(100)  # refilled up to the burst, no more
        self.assertEqual([h.admission.admit(A) for _ in range(4)],
                         [None, None, None, RATE_PER_SOURCE])
        self.assertEqual(h.registry.refused, {("echo", RATE_PER_SOURCE): 4})

    def test_defaultBurst(self):
        """
        Without C{rate_burst} the bucket holds the rate rounded up.
        """
        h = Harness(Limits(ratePerSource=1.5))
        self.assertEqual([h.admission.admit(A) for _ in range(3)],
                         [None, None, RATE_PER_SOURCE])

    def test_floodingSourceDoesNotAffectOthers(self):
        """
        One source flooding far above its rate and its per-source limit is refused, while
        another source keeps being admitted throughout: nothing is global.
        """
        h = Harness(Limits(maxPerSource=5, ratePerSource=10.0, rateBurst=10))
        for second in range(5):
            outcomes = [h.admission.admit(A) for _ in range(2000)]
            self.assertEqual(outcomes.count(None), 5 if second == 0 else 0)
            self.assertIsNone(h.admission.admit(B), second)
            h.admission.release(B)
            h.clock.advance(1)
        self.assertEqual(h.registry.refused[("echo", RATE_PER_SOURCE)]
                         + h.registry.refused[("echo", MAX_PER_SOURCE)], 5 * 2000 - 5)

    def test_bucketsBounded(self):
        """
        100,000 distinct sources admitted once each hold a bucket only until it refills:
        once their refill time has passed, the next admission sweeps them, and under a
        steady stream of new sources the buckets stay at about those seen in the last
        refill time (checked through L{Admission.sources}).
        """
        h = Harness(Limits(ratePerSource=1.0, rateBurst=2))  # refill time: 2s
        for i in range(100_000):
            self.assertIsNone(h.admission.admit(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"))
        self.assertEqual(h.admission.sources()["buckets"], 100_000)  # none refilled yet
        h.clock.advance(2)
        self.assertIsNone(h.admission.admit(A))
        self.assertEqual(h.admission.sources()["buckets"], 1)
        largest = 0
        for i in range(50_000):  # 1000 new sources a second for 50 seconds
            h.clock.advance(0.001)
            self.assertIsNone(h.admission.admit(f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1"))
            largest = max(largest, h.admission.sources()["buckets"])
        self.assertLessEqual(largest, max(SWEEP_MIN, 2 * 2 * 1000) + 2)


class LoggingTests(SynchronousTestCase):
    """
    Refusals are logged at most once a second per reason, with the count since the last
    line.
    """

    def test_boundedLogging(self):
        """
        1000 refusals within a second make one line; the first refusal a second later
        makes one more, saying how many were refused since (and that there were several
        peers); every refusal is counted in the registry.
        """
        h = Harness(Limits(maxPerSource=1))
        h.admission.admit(A)
        h.admission.admit(B)
        for i in range(1000):
            h.clock.advance(0.0005)
            h.admission.admit(A if i % 2 else B)
        self.assertEqual(len(h.events), 1)
        h.clock.advance(0.6)
        h.admission.admit(A)
        self.assertEqual(h.lines(), [
            f"refused 1 connection to echo from {B}: max-per-source",
            f"refused 1000 connections to echo from {A} and others: max-per-source "
            "(since last report)"])
        self.assertEqual(h.events[1]["count"], 1000)
        self.assertEqual(h.registry.refused[("echo", MAX_PER_SOURCE)], 1001)

    def test_perReason(self):
        """
        Each reason has its own budget of a line a second; one peer only is named as such.
        """
        h = Harness(Limits(maxConnections=1), rules(deny=["10.0.0.0/8"]))
        h.admission.admit(A)
        for _ in range(3):
            h.admission.admit(B)
            h.admission.admit("10.0.0.1")
        self.assertEqual(h.lines(), [
            f"refused 1 connection to echo from {B}: max-connections",
            "refused 1 connection to echo from 10.0.0.1: denied"])
        h.clock.advance(1)
        h.admission.flushReports()
        self.assertEqual(h.lines()[2:], [
            f"refused 2 connections to echo from {B}: max-connections (since last report)",
            "refused 2 connections to echo from 10.0.0.1: denied (since last report)"])


class UpdateTests(SynchronousTestCase):
    """
    L{Admission.update}: a config reload.
    """

    def test_narrowerLimitsApplyToNewConnections(self):
        """
        Narrower limits leave live connections alone but count them: with 3 live from a
        source and C{max_per_source} lowered to 2, the source is refused until it is down
        to 1 live connection.
        """
        h = Harness(Limits(maxPerSource=5))
        for _ in range(3):
            self.assertIsNone(h.admission.admit(A))
        h.admission.update(Limits(maxPerSource=2), AccessRules())
        self.assertEqual(h.admission.live, 3)
        self.assertEqual(h.admission.admit(A), MAX_PER_SOURCE)
        h.admission.release(A)
        self.assertEqual(h.admission.admit(A), MAX_PER_SOURCE)
        h.admission.release(A)
        self.assertIsNone(h.admission.admit(A))
        h.admission.update(Limits(maxConnections=2), rules(deny=[A]))
        self.assertEqual(h.admission.admit(A), DENIED)
        self.assertEqual(h.admission.admit(B), MAX_CONNECTIONS)

    def test_prefixChangeRegroups(self):
        """
        A new IPv6 prefix regroups the live connections' counts, and releases after it
        free the right slots.
        """
        h = Harness(Limits(maxPerSource=2))
        self.assertIsNone(h.admission.admit("2001:db8:0:1::1"))
        self.assertIsNone(h.admission.admit("2001:db8:0:2::1"))
        h.admission.update(Limits(maxPerSource=2, ipv6Prefix=48), AccessRules())
        self.assertEqual(h.admission.admit("2001:db8:0:3::1"), MAX_PER_SOURCE)
        h.admission.release("2001:db8:0:1::1")
        h.admission.release("2001:db8:0:2::1")
        self.assertEqual(h.admission.sources(), {"live": 0, "networks": 0, "buckets": 0})

    def test_banner(self):
        """
        A single banner line, with CRLF, is for the overload reasons only: a denied peer
        is not told to try later. A reload changes it.
        """
        h = Harness()
        self.assertIsNone(h.admission.banner(MAX_CONNECTIONS))
        h.admission.update(Limits(banner="busy, try later"), AccessRules())
        for reason in (MAX_CONNECTIONS, MAX_PER_SOURCE, RATE_PER_SOURCE):
            self.assertEqual(h.admission.banner(reason), b"busy, try later\r\n")
        self.assertIsNone(h.admission.banner(DENIED))

    def test_bannerPerReason(self):
        """
        A mapping gives each refusal reason its own line; a reason left out or null
        gets none.
        """
        h = Harness()
        h.admission.update(Limits(banner={"denied": "not for you", "rate-per-source":
                                          "slow down", "max-connections": None}),
                           AccessRules())
        self.assertEqual(h.admission.banner(DENIED), b"not for you\r\n")
        self.assertEqual(h.admission.banner(RATE_PER_SOURCE), b"slow down\r\n")
        self.assertIsNone(h.admission.banner(MAX_CONNECTIONS))
        self.assertIsNone(h.admission.banner(MAX_PER_SOURCE))

    def test_openFastPath(self):
        """
        Without limits or rules everything is admitted and only the service's live count
        is kept; a reload adding C{max_connections} sees the connections admitted before.
        """
        h = Harness()
        for _ in range(3):
            self.assertIsNone(h.admission.admit(A))
        self.assertEqual(h.admission.sources(), {"live": 0, "networks": 0, "buckets": 0})
        h.admission.update(Limits(maxConnections=3), AccessRules())
        self.assertEqual(h.admission.admit(B), MAX_CONNECTIONS)


class ReportingTests(SynchronousTestCase):
    """
    Refusals in the registry's summary and the metrics.
    """

    def test_summaryAndMetrics(self):
        """
        Refusals show per service and reason in C{registry.refused}, in the summary (per
        service and by reason) and as C{portserver_refused_connections_total}.
        """
        h = Harness(Limits(maxPerSource=1), rules(deny=["10.0.0.0/8"]))
        h.admission.admit(A)
        h.admission.admit(A)
        h.admission.admit(A)
        h.admission.admit("10.0.0.1")
        self.assertEqual(h.registry.refused,
                         {("echo", MAX_PER_SOURCE): 2, ("echo", DENIED): 1})
        summary = h.registry.summary()
        self.assertEqual(summary["services"]["echo"]["refused"], 3)
        self.assertEqual(summary["refused_by_reason"], {MAX_PER_SOURCE: 2, DENIED: 1})

        class Server:
            registry = h.registry
            generation, loadedAt, reloads = 1, 0.0, Counter()

            def boundListeners(self):
                return []

        text = generate_latest(collectorRegistry(Server())).decode()
        samples = {tuple(sorted(s.labels.items())): s.value
                   for family in text_string_to_metric_families(text)
                   for s in family.samples
                   if s.name == "portserver_refused_connections_total"}
        self.assertEqual(samples, {
            (("reason", DENIED), ("service", "echo")): 1.0,
            (("reason", MAX_PER_SOURCE), ("service", "echo")): 2.0})
