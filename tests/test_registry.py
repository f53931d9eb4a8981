"""
Tests for L{portserver.registry}: the connection registry, its records, queries, totals,
UDP flows, observers, summary and log events. Time comes from a L{Clock}; nothing binds.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portserver.ports import PrivilegeRule
from portserver.registry import (
    CLIENT_CLOSED,
    EVICTED,
    IDLE,
    RESET,
    SERVER_CLOSED,
    Endpoint,
    Registry,
)
from tests.support import makePlan, spec

RULE = PrivilegeRule(1024, "test")
LOCAL = Endpoint("127.0.0.1", 7)
REMOTE = Endpoint("127.0.0.2", 51234)


def makeRegistry(start: float = 1000.0, **kwargs):
    """
    A clock at C{start} and a registry on it, with the test privilege rule unless told.
    """
    clock = Clock()
    clock.advance(start)
    kwargs.setdefault("rule", RULE)
    return clock, Registry(clock, **kwargs)


def openEcho(registry, local=LOCAL, remote=REMOTE, service="echo", transport="tcp"):
    """
    Open a connection of C{service} (protocol echo) in C{registry}.
    """
    return registry.open(service, "echo", transport, local, remote)


class EndpointTests(SynchronousTestCase):
    """
    L{Endpoint} is an (ip, port) pair.
    """

    def test_pair(self):
        """
        An endpoint equals the plain tuple, with C{host} and C{port}, and prints IPv6
        hosts in brackets.
        """
        self.assertEqual(Endpoint("127.0.0.1", 7), ("127.0.0.1", 7))
        self.assertEqual(Endpoint("::1", 7).host, "::1")
        self.assertEqual(Endpoint("::1", 7).port, 7)
        self.assertEqual(str(Endpoint("::1", 7)), "[::1]:7")
        self.assertEqual(str(Endpoint("127.0.0.1", 7)), "127.0.0.1:7")


class OpenCloseTests(SynchronousTestCase):
    """
    L{Registry.open} and L{Registry.close} keep live and recently closed records.
    """

    def test_openRecords(self):
        """
        Opening returns a record with the service, protocol, transport, both endpoints and
        the clock's time, live under its id.
        """
        clock, registry = makeRegistry(start=1234.5)
        record = openEcho(registry)
        self.assertEqual(
            (record.service, record.protocol, record.transport, record.local, record.remote,
             record.opened, record.closed, record.reason),
            ("echo", "echo", "tcp", Endpoint("127.0.0.1", 7),
             Endpoint("127.0.0.2", 51234), 1234.5, None, None))
        self.assertIsInstance(record.local, Endpoint)
        self.assertIsInstance(record.remote, Endpoint)
        self.assertIs(registry.live(record.id), record)
        self.assertEqual(len(registry), 1)
        self.assertEqual(registry.snapshot(), [record])

    def test_uniqueStableIds(self):
        """
        Every record gets its own id, which does not change when others open or close.
        """
        clock, registry = makeRegistry()
        first = openEcho(registry)
        firstId = first.id
        second = openEcho(registry, remote=Endpoint("127.0.0.3", 5000))
        registry.close(second, CLIENT_CLOSED)
        third = openEcho(registry)
        self.assertEqual(len({first.id, second.id, third.id}), 3)
        self.assertEqual(first.id, firstId)
        self.assertIs(registry.live(firstId), first)
        self.assertEqual(sorted(r.id for r in registry.snapshot()), sorted([first.id, third.id]))

    def test_close(self):
        """
        Closing removes the record from the live ones and keeps it as recently closed, with
        the time it closed, its duration and the reason.
        """
        clock, registry = makeRegistry(start=100.0)
        record = openEcho(registry)
        clock.advance(2.5)
        registry.close(record, CLIENT_CLOSED)
        self.assertIsNone(registry.live(record.id))
        self.assertEqual(len(registry), 0)
        self.assertEqual(registry.snapshot(), [])
        self.assertEqual(registry.recentlyClosed(), [record])
        self.assertEqual((record.closed, record.duration, record.reason),
                         (102.5, 2.5, CLIENT_CLOSED))

    def test_closeTwice(self):
        """
        Closing a closed record again changes nothing: not its time, reason or totals.
        """
        clock, registry = makeRegistry(start=100.0)
        record = openEcho(registry)
        clock.advance(1)
        registry.close(record, CLIENT_CLOSED)
        clock.advance(1)
        registry.close(record, RESET)
        self.assertEqual((record.closed, record.reason), (101.0, CLIENT_CLOSED))
        self.assertEqual(registry.recentlyClosed(), [record])
        self.assertEqual(dict(registry.closedTotal), {("echo", "tcp", CLIENT_CLOSED): 1})

    def test_closedLimit(self):
        """
        Only the last C{closedLimit} closed records are kept, oldest first; older ones are
        dropped.
        """
        clock, registry = makeRegistry(closedLimit=2)
        records = [openEcho(registry, remote=Endpoint("127.0.0.2", 40000 + i))
                   for i in range(3)]
        for record in records:
            registry.close(record, CLIENT_CLOSED)
        self.assertEqual(registry.recentlyClosed(), records[1:])


class QueryTests(SynchronousTestCase):
    """
    L{Registry.query} gives records as plain dicts, with port classes and privilege.
    """

    def test_openDict(self):
        """
        A live TCP connection is one exact dict: local 7 is well-known and privileged,
        remote 51234 dynamic and not privileged.
        """
        clock, registry = makeRegistry(start=50.0)
        record = openEcho(registry)
        record.bytesIn, record.bytesOut = 3, 4
        self.assertEqual(registry.query(), [{
            "id": record.id, "service": "echo", "protocol": "echo", "transport": "tcp",
            "local": {"host": "127.0.0.1", "port": 7, "class": "well-known",
                      "privileged": True},
            "remote": {"host": "127.0.0.2", "port": 51234, "class": "dynamic",
                       "privileged": False},
            "opened": 50.0, "bytes_in": 3, "bytes_out": 4,
        }])

    def test_registeredPort(self):
        """
        Port 8080 is in the registered class and not privileged under the 1024 rule.
        """
        clock, registry = makeRegistry()
        openEcho(registry, local=Endpoint("127.0.0.1", 8080))
        [row] = registry.query()
        self.assertEqual(row["local"], {"host": "127.0.0.1", "port": 8080,
                                        "class": "registered", "privileged": False})

    def test_closedDict(self):
        """
        C{state="closed"} gives the recently closed records, with closed time, duration
        and reason, and no live ones.
        """
        clock, registry = makeRegistry(start=50.0)
        record = openEcho(registry)
        openEcho(registry, remote=Endpoint("127.0.0.9", 6000))
        clock.advance(3)
        registry.close(record, SERVER_CLOSED)
        [row] = registry.query(state="closed")
        self.assertEqual(row["id"], record.id)
        self.assertEqual((row["opened"], row["closed"], row["duration"], row["reason"]),
                         (50.0, 53.0, 3.0, SERVER_CLOSED))
        self.assertNotIn("closed", registry.query()[0])

    def test_serviceFilter(self):
        """
        C{service=} keeps only that service's records, live or closed.
        """
        clock, registry = makeRegistry()
        echo = openEcho(registry)
        openEcho(registry, service="other", local=Endpoint("127.0.0.1", 9))
        self.assertEqual([r["id"] for r in registry.query(service="echo")], [echo.id])
        registry.close(echo, CLIENT_CLOSED)
        self.assertEqual(registry.query(service="echo"), [])
        self.assertEqual([r["id"] for r in registry.query(service="echo", state="closed")],
                         [echo.id])
        self.assertEqual(registry.query(service="other", state="closed"), [])

    def test_udpFlows(self):
        """
        C{transport="udp"} gives live flows, with datagram counts; the default (TCP) gives
        none of them. Closed queries filter by transport too.
        """
        clock, registry = makeRegistry(start=10.0)
        tcp = openEcho(registry)
        flow = registry.flow("echo", "echo", LOCAL, REMOTE)
        flow.datagramsIn = 2
        [row] = registry.query(transport="udp")
        self.assertEqual((row["id"], row["transport"], row["datagrams_in"],
                          row["datagrams_out"], row["last_seen"]),
                         (flow.id, "udp", 2, 0, 10.0))
        self.assertEqual([r["id"] for r in registry.query()], [tcp.id])
        registry.close(tcp, CLIENT_CLOSED)
        registry.close(flow, IDLE)
        self.assertEqual([r["id"] for r in registry.query(state="closed", transport="udp")],
                         [flow.id])
        self.assertEqual([r["id"] for r in registry.query(state="closed", transport="tcp")],
                         [tcp.id])

    def test_otherRule(self):
        """
        Privilege follows the registry's rule: 443 is privileged under the 1024 rule and not
        under an 80 rule; its class stays well-known.
        """
        for rule, privileged in ((PrivilegeRule(1024, "test"), True),
                                 (PrivilegeRule(80, "test"), False)):
            clock, registry = makeRegistry(rule=rule)
            openEcho(registry, local=Endpoint("127.0.0.1", 443))
            [row] = registry.query()
            self.assertEqual(row["local"]["privileged"], privileged, rule)
            self.assertEqual(row["local"]["class"], "well-known")


class PageTests(SynchronousTestCase):
    """
    L{Registry.page}: one page of L{Registry.select}'s records, and how many there are.
    """

    def fill(self):
        clock, registry = makeRegistry(udpMaxFlows=100)
        for port in range(1000, 1050):
            openEcho(registry, remote=Endpoint("127.0.0.2", port),
                     service="echo" if port % 2 else "daytime")
            registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.3", port))
        for record in registry.select()[:20]:
            registry.close(record, CLIENT_CLOSED)
        return registry

    def test_pagesAreSlicesOfTheSelection(self):
        """
        For every query (live TCP, UDP, closed, one service), every offset and limit
        (pages near the end are walked to from the end) gives the slice of the whole
        selection, and its size.
        """
        registry = self.fill()
        for query in [(None, "open", None), (None, "open", "udp"), (None, "closed", None),
                      ("echo", "open", None), (None, "closed", "tcp"), ("daytime", "closed",
                                                                          "udp")]:
            everything = registry.select(*query)
            for offset in (0, 1, 7, 29, 30, 31, 49, 50, 60):
                for limit in (None, 0, 1, 3, 30, 100):
                    total, page = registry.page(*query, offset=offset, limit=limit)
                    stop = None if limit is None else offset + limit
                    self.assertEqual((total, page), (len(everything), everything[offset:stop]),
                                     (query, offset, limit))


class ObserverTests(SynchronousTestCase):
    """
    L{Registry.subscribe} tells observers about every open and close.
    """

    def test_openAndClosed(self):
        """
        An observer gets C{("open", record)} then C{("closed", record)}.
        """
        clock, registry = makeRegistry()
        events = []
        registry.subscribe(lambda event, record: events.append((event, record)))
        record = openEcho(registry)
        registry.close(record, CLIENT_CLOSED)
        self.assertEqual(events, [("open", record), ("closed", record)])

    def test_unsubscribe(self):
        """
        After the returned callable is called, the observer hears nothing more.
        """
        clock, registry = makeRegistry()
        events = []
        unsubscribe = registry.subscribe(lambda event, record: events.append(event))
        record = openEcho(registry)
        unsubscribe()
        registry.close(record, CLIENT_CLOSED)
        openEcho(registry)
        self.assertEqual(events, ["open"])

    def test_closesOnly(self):
        """
        An observer subscribed with C{opens=False} hears every close and no open, the
        others both; unsubscribed, it hears nothing more.
        """
        clock, registry = makeRegistry()
        closes, every = [], []
        unsubscribe = registry.subscribe(lambda event, record: closes.append(event),
                                         opens=False)
        registry.subscribe(lambda event, record: every.append(event))
        registry.close(openEcho(registry), CLIENT_CLOSED)
        unsubscribe()
        registry.close(openEcho(registry), CLIENT_CLOSED)
        self.assertEqual((closes, every), (["closed"], ["open", "closed"] * 2))

    def test_raisingObserver(self):
        """
        An observer that raises is logged; the observers after it still hear the event and
        the registry still records the connection.
        """
        clock, registry = makeRegistry()
        events = []

        def broken(event, record):
            raise ZeroDivisionError("observer bug")

        registry.subscribe(broken)
        registry.subscribe(lambda event, record: events.append(event))
        record = openEcho(registry)
        registry.close(record, CLIENT_CLOSED)
        self.assertEqual(events, ["open", "closed"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertEqual(registry.recentlyClosed(), [record])
        self.assertEqual(registry.accepted[("echo", "tcp")], 1)


class TotalsTests(SynchronousTestCase):
    """
    The registry's running totals.
    """

    def test_totals(self):
        """
        C{accepted} counts opens per (service, transport), C{closedTotal} closes per reason,
        and C{bytesIn}/C{bytesOut} add up the bytes of closed records only.
        """
        clock, registry = makeRegistry()
        one, two, three = (openEcho(registry, remote=Endpoint("127.0.0.2", 40000 + i))
                           for i in range(3))
        one.bytesIn, one.bytesOut = 10, 1
        two.bytesIn, two.bytesOut = 20, 2
        three.bytesIn, three.bytesOut = 400, 400
        flow = registry.flow("echo", "echo", LOCAL, REMOTE)
        flow.bytesIn, flow.bytesOut = 5, 6
        registry.close(one, CLIENT_CLOSED)
        registry.close(two, CLIENT_CLOSED)
        registry.close(flow, IDLE)
        self.assertEqual(dict(registry.accepted), {("echo", "tcp"): 3, ("echo", "udp"): 1})
        self.assertEqual(dict(registry.closedTotal), {("echo", "tcp", CLIENT_CLOSED): 2,
                                                      ("echo", "udp", IDLE): 1})
        self.assertEqual(dict(registry.bytesIn), {("echo", "tcp"): 30, ("echo", "udp"): 5})
        self.assertEqual(dict(registry.bytesOut), {("echo", "tcp"): 3, ("echo", "udp"): 6})


class FlowTests(SynchronousTestCase):
    """
    UDP flows: one per (service, remote endpoint), expired when silent.
    """

    def test_oneFlowPerRemote(self):
        """
        C{flow} opens a flow for a new remote and returns the same one after, updating
        C{lastSeen}; it is not a live TCP connection.
        """
        clock, registry = makeRegistry(start=10.0)
        flow = registry.flow("echo", "echo", LOCAL, REMOTE)
        self.assertEqual((flow.transport, flow.opened, flow.lastSeen), ("udp", 10.0, 10.0))
        clock.advance(5)
        self.assertIs(registry.flow("echo", "echo", LOCAL, REMOTE), flow)
        self.assertEqual((flow.opened, flow.lastSeen), (10.0, 15.0))
        self.assertEqual(registry.snapshot("udp"), [flow])
        self.assertIs(registry.knownFlow("echo", REMOTE), flow)
        self.assertEqual(len(registry), 0)
        self.assertIsNone(registry.live(flow.id))
        other = registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.2", 51235))
        self.assertIsNot(other, flow)
        self.assertEqual(registry.accepted[("echo", "udp")], 2)

    def test_servicesApart(self):
        """
        Two services with the same remote endpoint have two flows.
        """
        clock, registry = makeRegistry()
        echo = registry.flow("echo", "echo", LOCAL, REMOTE)
        other = registry.flow("other", "echo", Endpoint("127.0.0.1", 9), REMOTE)
        self.assertIsNot(echo, other)
        self.assertEqual(len(registry.snapshot("udp")), 2)

    def test_expire(self):
        """
        A flow silent for C{udpIdle} seconds expires as "idle" into the recently closed; a
        flow seen since stays live.
        """
        clock, registry = makeRegistry(start=0.0, udpIdle=60)
        silent = registry.flow("echo", "echo", LOCAL, REMOTE)
        active = registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.3", 5000))
        clock.advance(59)
        self.assertEqual(registry.expireFlows(), 0)
        registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.3", 5000))
        clock.advance(1)
        self.assertEqual(registry.expireFlows(), 1)
        self.assertEqual((silent.closed, silent.reason, silent.duration), (60.0, IDLE, 60.0))
        self.assertEqual(registry.recentlyClosed(), [silent])
        self.assertEqual(registry.snapshot("udp"), [active])
        self.assertIsNone(registry.knownFlow("echo", REMOTE))
        self.assertIsNot(registry.flow("echo", "echo", LOCAL, REMOTE), silent)


class FlowTableBoundTests(SynchronousTestCase):
    """
    The flow table holds at most C{udpMaxFlows} flows: past it the least recently seen
    one is closed, "evicted".
    """

    def test_leastRecentlySeenEvicted(self):
        """
        With room for three, a fourth flow evicts the one seen longest ago (a datagram
        seen since moves a flow to the back), into the closed records and totals.
        """
        clock, registry = makeRegistry(start=0.0, udpMaxFlows=3)
        a, b, c = (registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.2", 1000 + i))
                   for i in range(3))
        clock.advance(1)
        registry.seen(a, clock.seconds())
        d = registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.2", 2000))
        self.assertEqual((b.closed, b.reason), (1.0, EVICTED))
        self.assertEqual(registry.snapshot("udp"), [c, a, d])
        self.assertEqual(registry.closedTotal[("echo", "udp", EVICTED)], 1)
        self.assertEqual(registry.summary()["closed_by_reason"][EVICTED], 1)

    def test_boundedWhateverArrives(self):
        """
        100,000 datagrams from distinct sources leave at most C{udpMaxFlows} flows, and
        the rest counted as evicted.
        """
        clock, registry = makeRegistry(udpMaxFlows=1000)
        for i in range(100_000):
            registry.flow("echo", "echo", LOCAL, Endpoint(f"10.{i >> 16}.{i >> 8 & 255}."
                                                          f"{i & 255}", 5000))
        self.assertEqual(len(registry.snapshot("udp")), 1000)
        self.assertEqual(registry.closedTotal[("echo", "udp", EVICTED)], 99_000)

    def test_expiryStopsAtTheFirstRecentFlow(self):
        """
        Expiry walks the flows least recently seen first: the silent ones go, the one
        seen since stays, whatever order they were opened in.
        """
        clock, registry = makeRegistry(start=0.0, udpIdle=60)
        old, recent = (registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.2", p))
                       for p in (1, 2))
        clock.advance(30)
        registry.seen(old, clock.seconds())
        clock.advance(30)
        self.assertEqual(registry.expireFlows(), 1)
        self.assertEqual((recent.reason, old.reason), (IDLE, None))

    def test_seenFlow(self):
        """
        C{seenFlow} finds a live flow by its L{Endpoint} or an equal (ip, port) tuple,
        marks it seen (the last to be evicted, its C{lastSeen} the time given); for an
        unknown remote it answers L{None} and opens nothing.
        """
        clock, registry = makeRegistry(start=0.0, udpMaxFlows=2)
        a, b = (registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.2", p))
                for p in (1, 2))
        self.assertIs(registry.seenFlow("echo", ("127.0.0.2", 1), 7.0), a)
        self.assertEqual(a.lastSeen, 7.0)
        self.assertIsNone(registry.seenFlow("echo", ("127.0.0.2", 3), 7.0))
        self.assertIsNone(registry.seenFlow("other", ("127.0.0.2", 1), 7.0))
        self.assertEqual(registry.accepted[("echo", "udp")], 2)
        registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.2", 3))
        self.assertEqual((a.reason, b.reason), (None, EVICTED))


class SummaryTests(SynchronousTestCase):
    """
    L{Registry.summary}: listeners and connections by class and privilege, totals, flags.
    """

    def listeners(self):
        """
        Echo on 7 (privileged), on 8080 (registered) and on 50000 (dynamic).
        """
        return makePlan(spec("echo"), spec("web", "echo", port=8080),
                        spec("high", "echo", port=50000)).listeners

    def test_listeners(self):
        """
        Listeners are counted by class and privilege; one in the dynamic range is flagged.
        """
        clock, registry = makeRegistry()
        summary = registry.summary(self.listeners())
        self.assertEqual(summary["listeners"], {
            "by_class": {"well-known": 1, "registered": 1, "dynamic": 1},
            "privileged": 1, "unprivileged": 2, "total": 3})
        self.assertEqual(summary["flags"], [{
            "kind": "listener-in-dynamic-range", "service": "high", "port": 50000,
            "message": summary["flags"][0]["message"]}])
        self.assertIn("50000", summary["flags"][0]["message"])
        self.assertEqual(set(summary["services"]), {"echo", "web", "high"})
        self.assertEqual((summary["privileged_port_start"], summary["privileged_rule"]),
                         (1024, "test"))

    def test_connections(self):
        """
        Live connections and flows are counted by their local and remote ports' class and
        privilege, and per service and transport.
        """
        clock, registry = makeRegistry()
        openEcho(registry)  # 7 <- 51234
        openEcho(registry, service="web", local=Endpoint("127.0.0.1", 8080),
                 remote=Endpoint("127.0.0.2", 40000))
        registry.flow("echo", "echo", LOCAL, Endpoint("127.0.0.2", 50001))
        connections = registry.summary(self.listeners())["connections"]
        self.assertEqual(connections, {
            "total": 3,
            "local": {"by_class": {"well-known": 2, "registered": 1, "dynamic": 0},
                      "privileged": 2, "unprivileged": 1},
            "remote": {"by_class": {"well-known": 0, "registered": 1, "dynamic": 2},
                       "privileged": 0, "unprivileged": 3},
        })
        services = registry.summary(self.listeners())["services"]
        self.assertEqual((services["echo"]["tcp"], services["echo"]["udp"]), (1, 1))
        self.assertEqual((services["web"]["tcp"], services["web"]["udp"]), (1, 0))
        self.assertEqual((services["high"]["tcp"], services["high"]["udp"]), (0, 0))

    def test_privilegedSourcePort(self):
        """
        A peer connecting from a privileged source port raises a flag naming the record;
        peers from unprivileged ports raise none.
        """
        clock, registry = makeRegistry()
        openEcho(registry)
        suspicious = openEcho(registry, remote=Endpoint("10.0.0.1", 1023))
        flow = registry.flow("echo", "echo", LOCAL, Endpoint("10.0.0.2", 512))
        flags = registry.summary()["flags"]
        self.assertEqual([(f["kind"], f["id"], f["service"], f["remote"]) for f in flags], [
            ("privileged-source-port", suspicious.id, "echo",
             {"host": "10.0.0.1", "port": 1023}),
            ("privileged-source-port", flow.id, "echo", {"host": "10.0.0.2", "port": 512}),
        ])
        self.assertEqual(registry.summary()["connections"]["remote"]["privileged"], 2)

    def test_totalsAndUptime(self):
        """
        Per-service accepted and closed counts, the accepted and closed totals, closes by
        reason, and the uptime since the registry was made, by the clock.
        """
        clock, registry = makeRegistry(start=500.0)
        one = openEcho(registry)
        two = openEcho(registry, remote=Endpoint("127.0.0.2", 40001))
        openEcho(registry, remote=Endpoint("127.0.0.2", 40002))
        web = openEcho(registry, service="web", local=Endpoint("127.0.0.1", 8080))
        registry.close(one, CLIENT_CLOSED)
        registry.close(two, RESET)
        registry.close(web, CLIENT_CLOSED)
        clock.advance(42)
        summary = registry.summary(self.listeners())
        self.assertEqual(summary["uptime"], 42.0)
        self.assertEqual((summary["accepted_total"], summary["closed_total"]), (4, 3))
        self.assertEqual(summary["closed_by_reason"], {CLIENT_CLOSED: 2, RESET: 1})
        echo, webCounts, high = (summary["services"][s] for s in ("echo", "web", "high"))
        self.assertEqual(echo, {"tcp": 1, "udp": 0, "accepted": 3, "closed": 2,
                                "refused": 0})
        self.assertEqual(webCounts, {"tcp": 0, "udp": 0, "accepted": 1, "closed": 1,
                                     "refused": 0})
        self.assertEqual(high, {"tcp": 0, "udp": 0, "accepted": 0, "closed": 0,
                                "refused": 0})

    def test_closedServiceWithoutListener(self):
        """
        A service with only closed connections, and no listener given, still has its
        counts.
        """
        clock, registry = makeRegistry()
        registry.close(openEcho(registry, service="gone"), CLIENT_CLOSED)
        self.assertEqual(registry.summary()["services"],
                         {"gone": {"tcp": 0, "udp": 0, "accepted": 1, "closed": 1,
                                   "refused": 0}})
