"""
Tests for L{portserver.kernel} and the kernel's view on the status surfaces (the JSON
API, the metrics, C{portserver status --tcp}, the page).

The unit tests feed canned sockets (L{portserver.sockdiag.TCPSocket}s) through stand-ins
for the dump, the lookups and C{/proc/net/netstat}. L{KernelCheckTests} hold the view
against the kernel's own, with real listeners and clients on 127.0.0.1 and C{ss} (skipped
where there is no netlink, or no C{ss}).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys

import attrs
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from portserver import kernel
from portserver.kernel import KernelSnapshot, KernelView, readListenCounters
from portserver.registry import Endpoint
from portserver.server import PortServer
from portserver.sockdiag import (
    CLOSE_WAIT,
    ESTABLISHED,
    FIN_WAIT1,
    FIN_WAIT2,
    LAST_ACK,
    LISTEN,
    NEW_SYN_RECV,
    SYN_RECV,
    TIME_WAIT,
    SockDiagError,
    TCPSocket,
    dumpTCP,
)
from portserver.status import cli, tcptext
from portserver.status.metrics import collectorRegistry
from portserver.status.web import Connections, Listeners, StatusService, Summary
from tests.support import PortReactor, getOK, makePlan, spec
from tests.test_browser import BrowserTestCase
from tests.test_sockdiag import tcpInfo

DEADLINE = 10  # seconds a real-network step may take on a loaded machine

NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPBacklogDrop TCPReqQFullDrop
TcpExt: 2 0 5 7 1 0
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
"""


@attrs.frozen
class FakeListener:
    """
    What the kernel's view reads of a L{portserver.plan.Listener}.
    """

    service: str
    interface: str
    port: int
    transport: str = "tcp"

    def describe(self) -> str:
        return f"{self.service}/{self.transport} {self.interface}:{self.port}"


ECHO = FakeListener("echo", "127.0.0.1", 7)
WEB = FakeListener("web", "::", 8080)


def timeWaitOverflows() -> int | None:
    """
    How many times the kernel has closed a socket without its TIME-WAIT, its table of
    them being full (C{TcpExt: TCPTimeWaitOverflow} in C{/proc/net/netstat}).
    """
    return (kernel.readTcpExt() or {}).get("TCPTimeWaitOverflow")


def sock(state, local, remote=("0.0.0.0", 0), rq=0, wq=0, inode=0, rtt=None, drops=None):
    """
    A canned socket, with a tcp_info whose RTT is C{rtt} microseconds when given.
    """
    return TCPSocket(state, local[0], local[1], remote[0], remote[1], rq, wq, inode,
                     None if rtt is None else tcpInfo(rtt=rtt), drops)


# The sockets of ECHO (inode 11) and WEB (inode 22), and of a stranger on port 7 of
# another address, and a listener of another process on 8080 (inode 99).
SOCKETS = [
    sock(LISTEN, ("127.0.0.1", 7), rq=3, wq=4, inode=11, drops=2),
    sock(ESTABLISHED, ("127.0.0.1", 7), ("127.0.0.2", 5000), rq=1, wq=2, inode=5, rtt=2000),
    sock(ESTABLISHED, ("127.0.0.1", 7), ("127.0.0.2", 5001), inode=6, rtt=4000),
    sock(SYN_RECV, ("127.0.0.1", 7), ("127.0.0.2", 5002)),
    sock(NEW_SYN_RECV, ("127.0.0.1", 7), ("127.0.0.2", 5003)),
    sock(TIME_WAIT, ("127.0.0.1", 7), ("127.0.0.2", 5004)),
    sock(TIME_WAIT, ("127.0.0.1", 7), ("127.0.0.2", 5005)),
    sock(CLOSE_WAIT, ("127.0.0.1", 7), ("127.0.0.2", 5006), inode=7),
    sock(FIN_WAIT1, ("127.0.0.1", 7), ("127.0.0.2", 5007), inode=8),
    sock(FIN_WAIT2, ("127.0.0.1", 7), ("127.0.0.2", 5008)),
    sock(LAST_ACK, ("127.0.0.1", 7), ("127.0.0.2", 5009)),
    sock(ESTABLISHED, ("127.0.0.5", 7), ("127.0.0.2", 5010), inode=9),
    sock(LISTEN, ("::", 8080), rq=0, wq=128, inode=22, drops=0),
    sock(LISTEN, ("::", 8080), rq=9, wq=9, inode=99),
    sock(ESTABLISHED, ("10.0.0.1", 8080), ("10.0.0.2", 6000), inode=10, rtt=1000),
    sock(ESTABLISHED, ("::1", 8080), ("::1", 6001), inode=12, rtt=3000),
]
LISTENERS = [(ECHO, 11), (WEB, 22)]


class Record:
    """
    What the kernel's view reads of a registry record.
    """

    def __init__(self, local, remote, transport="tcp"):
        self.local = Endpoint(*local)
        self.remoteHost, self.remotePort = remote
        self.transport = transport


class CountersTests(SynchronousTestCase):
    """
    L{readListenCounters}: the host's listen counters from C{/proc/net/netstat}.
    """

    def path(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_read(self):
        """
        The five counters are read from the C{TcpExt} lines by name, whatever their
        order; one the kernel does not have is 0.
        """
        self.assertEqual(readListenCounters(self.path(NETSTAT)), {
            "ListenOverflows": 5, "ListenDrops": 7, "TCPBacklogDrop": 1,
            "TCPReqQFullDrop": 0, "SyncookiesSent": 2})
        older = NETSTAT.replace(" TCPReqQFullDrop", "").replace(" 1 0\n", " 1\n")
        self.assertEqual(readListenCounters(self.path(older))["TCPReqQFullDrop"], 0)

    def test_absent(self):
        """
        No file (not Linux), or no C{TcpExt} in it: L{None}.
        """
        self.assertIsNone(readListenCounters(self.path("IpExt: a\nIpExt: 1\n")))
        self.assertIsNone(readListenCounters(os.path.join(self.mktemp(), "netstat")))


class SnapshotTests(SynchronousTestCase):
    """
    L{KernelSnapshot}: one dump sorted out by listener and by connection.
    """

    def setUp(self):
        self.snapshot = KernelSnapshot(SOCKETS, LISTENERS)

    def test_listener(self):
        """
        A listener's C{kernel}: its listening socket's queues (accept queue, backlog)
        and drops, and its port's sockets by state: both kinds of handshake, FIN-WAIT-1
        and 2 together; a socket of the same port on another address is not its.
        """
        self.assertEqual(self.snapshot.listenerInfo("127.0.0.1", 7), {
            "accept_queue": 3, "backlog": 4, "syn_recv": 2, "time_wait": 2,
            "close_wait": 1, "fin_wait": 2, "last_ack": 1, "drops": 2})

    def test_inode(self):
        """
        A listening socket is the server's by its inode: another process's on the same
        address and port (SO_REUSEPORT) is not counted; a wildcard IPv6 listener (dual
        stack) takes the port's sockets of any address; a listener the dump lacks has
        no C{kernel}.
        """
        self.assertEqual(self.snapshot.listenerInfo("::", 8080), {
            "accept_queue": 0, "backlog": 128, "syn_recv": 0, "time_wait": 0,
            "close_wait": 0, "fin_wait": 0, "last_ack": 0, "drops": 0})
        self.assertEqual(len(self.snapshot.sockets(("::", 8080))), 2)
        self.assertIsNone(self.snapshot.listenerInfo("127.0.0.1", 9))
        alone = KernelSnapshot(SOCKETS, [(ECHO, 12345)])
        self.assertIsNone(alone.listenerInfo("127.0.0.1", 7))
        self.assertEqual(alone.listeners, {})

    def test_connection(self):
        """
        A record's socket is found by its two ends (not a TIME-WAIT or handshake one);
        its C{tcp} is the socket's L{TCPSocket.tcpInfo}.
        """
        record = Record(("127.0.0.1", 7), ("127.0.0.2", 5000))
        self.assertEqual(self.snapshot.connectionInfo(record),
                         SOCKETS[1].tcpInfo())
        self.assertIsNone(self.snapshot.connection(Record(("127.0.0.1", 7),
                                                          ("127.0.0.2", 5004))))
        self.assertIsNone(self.snapshot.connection(Record(("127.0.0.1", 7),
                                                          ("127.0.0.2", 9))))

    def test_services(self):
        """
        The listeners found, by service.
        """
        self.assertEqual(self.snapshot.services(),
                         {"echo": [("127.0.0.1", 7)], "web": [("::", 8080)]})


class Server:
    """
    What the kernel's view reads of a server: its registry (clock and live count).
    """

    def __init__(self, live: int = 0):
        self.registry = self
        self.clock = task.Clock()
        self.live = live

    def __len__(self):
        return self.live


def view(sockets=SOCKETS, counters=None, server=None, found=None, **kwargs) -> KernelView:
    """
    A L{KernelView} of canned C{sockets}, C{counters} (a list: each read takes the
    next) and LISTENERS; its C{calls} record what it was asked.
    """
    readings = list(counters or [None])
    calls = []

    def dump(ports, states, extensions):
        calls.append(("dump", tuple(sorted(ports)), states, extensions))
        return sockets

    def lookup(endpoints, extensions):
        calls.append(("lookup", tuple(endpoints)))
        return found(endpoints) if found else [None] * len(endpoints)

    result = KernelView(Server() if server is None else server, dump=dump, lookup=lookup,
                        readCounters=lambda: readings.pop(0) if len(readings) > 1
                        else readings[0],
                        findListeners=lambda server: LISTENERS, **kwargs)
    result.calls = calls
    return result


def counters(overflows=0, drops=0):
    return {"ListenOverflows": overflows, "ListenDrops": drops, "TCPBacklogDrop": 0,
            "TCPReqQFullDrop": 0, "SyncookiesSent": 0}


class ViewTests(SynchronousTestCase):
    """
    L{KernelView}: reads made when asked, the counters' baseline, the flags.
    """

    def test_reads(self):
        """
        Each read is one dump of the listeners' ports: for the listeners, every state
        but ESTABLISHED with drops; for the metrics, every state with tcp_info and
        drops; of one service's ports when asked.
        """
        v = view()
        v.forListeners()
        v.forMetrics()
        v.forConnections("web")
        self.assertEqual([call[:2] for call in v.calls],
                         [("dump", (7, 8080)), ("dump", (7, 8080)), ("dump", (8080,))])
        listeners, metrics, connections = (call[2] for call in v.calls)
        self.assertFalse(listeners & (1 << ESTABLISHED))
        self.assertTrue(listeners & (1 << LISTEN) and listeners & (1 << TIME_WAIT))
        self.assertEqual(metrics, kernel.ALL_STATES)
        self.assertFalse(connections & (1 << TIME_WAIT))
        self.assertEqual([call[3] for call in v.calls], [(7,), (2, 7), (2,)])

    def test_noListener(self):
        """
        Without a TCP listener the kernel knows (a memory reactor's, or UDP only),
        nothing is asked and every reading is L{None}.
        """
        v = view()
        v.findListeners = lambda server: []
        self.assertIsNone(v.forListeners())
        self.assertIsNone(v.forRecords([Record(("127.0.0.1", 7), ("127.0.0.2", 1))]))
        self.assertEqual(v.calls, [])

    def test_failure(self):
        """
        A failed dump is L{None}, logged once while it keeps failing the same way.
        """
        def failing(**kwargs):
            raise SockDiagError("no netlink sock_diag socket here")
        v = view()
        v.dump = failing
        with capturedLogs() as events:
            self.assertIsNone(v.forListeners())
            self.assertIsNone(v.forMetrics())
        self.assertEqual([e["problem"] for e in events],
                         ["no netlink sock_diag socket here"])

    def test_records(self):
        """
        A page of records is looked up one by one when it is small, or a small share
        of the live connections; else it comes from one dump. UDP records are not
        asked for.
        """
        page = [Record(("127.0.0.1", 7), ("127.0.0.2", 5000 + i)) for i in range(100)]
        udp = Record(("127.0.0.1", 7), ("127.0.0.3", 1), "udp")

        def found(endpoints):
            return [sock(ESTABLISHED, e[:2], e[2:], rtt=1000) for e in endpoints]
        v = view(server=Server(live=1000), found=found)
        looked = v.forRecords(page + [udp])
        self.assertEqual(v.calls, [("lookup", tuple(("127.0.0.1", 7, "127.0.0.2", 5000 + i)
                                                    for i in range(100)))])
        self.assertEqual(looked.connectionInfo(page[3])["rtt_ms"], 1.0)
        self.assertIsNone(looked.connectionInfo(udp))

        v = view(server=Server(live=150))
        dumped = v.forRecords(page)
        self.assertEqual([call[0] for call in v.calls], ["dump"])
        self.assertEqual(dumped.connectionInfo(page[0]), SOCKETS[1].tcpInfo())
        small = view(server=Server(live=10))
        small.forRecords(page[:3])
        self.assertEqual([call[0] for call in small.calls], ["lookup"])

    def test_counters(self):
        """
        The host's counters, each with its change since the view was made; L{None}
        when they cannot be read.
        """
        v = view(counters=[counters(5, 7), counters(9, 7)])
        self.assertEqual(v.listenCounters()["ListenOverflows"],
                         {"total": 9, "since_start": 4})
        self.assertEqual(v.listenCounters()["ListenDrops"], {"total": 7, "since_start": 0})
        self.assertIsNone(view().listenCounters())

    def test_acceptQueueFlag(self):
        """
        A listener whose accept queue is over half its backlog is flagged; one at half
        is not.
        """
        v = view()
        [flag] = [f for f in v.flags(v.forListeners(), None)
                  if f["kind"] == "accept-queue-filling"]
        self.assertEqual((flag["service"], flag["port"], flag["accept_queue"],
                          flag["backlog"]), ("echo", 7, 3, 4))
        self.assertIn("3 of 4 connections wait in the accept queue", flag["message"])
        half = [s for s in SOCKETS if s.inode != 11] + [sock(LISTEN, ("127.0.0.1", 7),
                                                             rq=2, wq=4, inode=11)]
        v = view(half)
        self.assertEqual(v.flags(v.forListeners(), None), [])

    def test_overflowFlags(self):
        """
        A listener whose drops grew, and the host whose ListenOverflows grew since the
        last look (or since start), are flagged for a minute after the growth.
        """
        server = Server()
        v = view(counters=[counters(5), counters(6)], server=server)
        kinds = [(f["kind"], f.get("service")) for f in v.flags(v.forListeners(),
                                                                v.listenCounters())]
        self.assertIn(("listen-overflows", "echo"), kinds)  # 2 drops, from 0
        self.assertIn(("listen-overflows", None), kinds)  # 6, from 5 at start
        self.assertNotIn(("listen-overflows", "web"), kinds)  # 0 drops
        server.clock.advance(kernel.GROWTH_WINDOW - 1)
        self.assertEqual(len([f for f in v.flags(v.forListeners(), v.listenCounters())
                              if f["kind"] == "listen-overflows"]), 2)
        server.clock.advance(1)
        self.assertEqual([f for f in v.flags(v.forListeners(), v.listenCounters())
                          if f["kind"] == "listen-overflows"], [])


def render(page, **args) -> dict:
    """
    GET C{page} (a resource of the API) with the query C{args}: its JSON.
    """
    request = DummyRequest([])
    request.args = {k.encode(): [v.encode()] for k, v in args.items()}
    return json.loads(page.render(request))


class SurfaceTests(SynchronousTestCase):
    """
    The kernel's view in the JSON API and the metrics, on a L{PortServer} of a memory
    reactor whose kernel's view is canned (L{view}): the listeners ECHO and WEB.
    """

    def setUp(self):
        reactor = PortReactor()
        self.server = PortServer(makePlan(
            spec("echo", port=7), spec("flows", "echo", port=0, transports=("udp",)),
            spec("web", "echo", port=8080, interface="::")), reactor)
        self.server.privilegedStartService()
        registry = self.server.registry
        registry.open("echo", "echo", "tcp", Endpoint("127.0.0.1", 7),
                      Endpoint("127.0.0.2", 5000))
        registry.open("echo", "echo", "tcp", Endpoint("127.0.0.1", 7),
                      Endpoint("127.0.0.2", 4999))
        registry.flow("flows", "echo", Endpoint("127.0.0.1", 7), Endpoint("127.0.0.2", 5000))
        snapshot = KernelSnapshot(SOCKETS, LISTENERS)

        def found(endpoints):
            return [snapshot.connection(Record(e[:2], e[2:])) for e in endpoints]
        self.view = view(counters=[counters(5), counters(5)], server=self.server,
                         found=found)

    def test_connections(self):
        """
        A live TCP record found in the kernel's view has C{tcp}; one not found has none,
        nor has a UDP flow or a closed record.
        """
        connections = Connections(self.server, self.view)
        found, missing = render(connections)["connections"]
        self.assertEqual(found["tcp"], SOCKETS[1].tcpInfo())
        self.assertNotIn("tcp", missing)
        [flow] = render(connections, transport="udp")["connections"]
        self.assertNotIn("tcp", flow)

    def test_listeners(self):
        """
        Each TCP listener found has C{kernel}; the UDP listener has none.
        """
        rows = render(Listeners(self.server, self.view))["listeners"]
        kernels = [(r["service"], r["transport"], r.get("kernel")) for r in rows]
        self.assertEqual(kernels, [
            ("echo", "tcp", KernelSnapshot(SOCKETS, LISTENERS).listenerInfo("127.0.0.1", 7)),
            ("flows", "udp", None),
            ("web", "tcp", KernelSnapshot(SOCKETS, LISTENERS).listenerInfo("::", 8080))])

    def test_summary(self):
        """
        The summary has the host's listen counters with their change since start, and
        the kernel's flags.
        """
        summary = render(Summary(self.server, self.view))
        self.assertEqual(summary["listen_counters"]["ListenOverflows"],
                         {"total": 5, "since_start": 0})
        self.assertIn("accept-queue-filling", [f["kind"] for f in summary["flags"]])

    def test_absent(self):
        """
        Without the kernel's view (not Linux), the fields are absent, not zero: no
        C{tcp}, no C{kernel}, no C{listen_counters}, no series.
        """
        self.view.findListeners = lambda server: []
        self.assertNotIn("tcp", render(Connections(self.server, self.view))["connections"][0])
        self.assertNotIn("kernel", render(Listeners(self.server, self.view))["listeners"][0])
        self.assertNotIn("listen_counters", render(Summary(self.server, self.view)))
        text = generate_latest(collectorRegistry(self.server, self.view)).decode()
        for name in ("portserver_listen_", "portserver_tcp_"):
            self.assertNotIn(name, text)

    def test_metrics(self):
        """
        One dump per scrape gives, per service, the accept queue and backlog, the
        sockets by state (0 where none), the RTT quantiles of its established
        connections; and the host's overflows since start.
        """
        text = generate_latest(collectorRegistry(self.server, self.view)).decode()
        self.assertEqual(len(self.view.calls), 1)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text)
                   for s in family.samples}

        def value(name, **labels):
            return samples.get((name, tuple(sorted(labels.items()))))
        self.assertEqual(value("portserver_listen_queue", service="echo"), 3)
        self.assertEqual(value("portserver_listen_backlog", service="web"), 128)
        self.assertEqual(value("portserver_tcp_sockets", service="echo", state="time_wait"), 2)
        self.assertEqual(value("portserver_tcp_sockets", service="echo", state="syn_recv"), 2)
        self.assertEqual(value("portserver_tcp_sockets", service="echo", state="established"),
                         2)
        self.assertEqual(value("portserver_tcp_sockets", service="web", state="close_wait"), 0)
        self.assertEqual(value("portserver_tcp_rtt_seconds", service="echo", quantile="0.5"),
                         0.002)
        self.assertEqual(value("portserver_tcp_rtt_seconds", service="echo", quantile="1.0"),
                         0.004)
        self.assertEqual(value("portserver_tcp_rtt_seconds", service="web", quantile="0.5"),
                         0.001)
        self.assertEqual(value("portserver_listen_overflows_total"), 0)


class TextTests(SynchronousTestCase):
    """
    C{portserver status --tcp}: the kernel's view as C{ss -ti} writes it.
    """

    CONNECTION = {"service": "echo", "transport": "tcp", "tcp": {
        "state": "established", "send_queue": 0, "recv_queue": 5, "rtt_ms": 0.05,
        "rttvar_ms": 0.025, "retransmits": 2, "lost": 0, "unacked": 1, "cwnd": 10,
        "pmtu": 65535, "delivery_rate": 150_000_000}}
    LISTENER = {"service": "echo", "transport": "tcp", "connections": 4, "kernel": {
        "accept_queue": 2, "backlog": 128, "syn_recv": 1, "time_wait": 3, "close_wait": 0,
        "fin_wait": 1, "last_ack": 0, "drops": 0}}

    def test_lines(self):
        """
        A connection's line, a listener's path and the counters' line; none for what
        has no kernel's view.
        """
        self.assertEqual(tcptext.connectionLine(self.CONNECTION),
                         "      ESTAB send-q:0 recv-q:5 rtt:0.05/0.025 cwnd:10 unacked:1 "
                         "retrans:2 lost:0 pmtu:65535 delivery_rate 1.2Gbps")
        self.assertEqual(tcptext.listenerLine(self.LISTENER),
                         "      handshake syn-recv:1 -> accept queue 2/128 -> established 4 "
                         "-> teardown close-wait:0 fin-wait:1 last-ack:0 time-wait:3; drops:0")
        self.assertEqual(tcptext.countersLine({"listen_counters": {
            "ListenOverflows": {"total": 9, "since_start": 2}}}),
            "host listen counters (+ since start): ListenOverflows 9 (+2)")
        for line in (tcptext.connectionLine({}), tcptext.listenerLine({}),
                     tcptext.countersLine({})):
            self.assertIsNone(line)

    def test_command(self):
        """
        C{portserver status --tcp} prints the lines under their listener and
        connection; without C{--tcp} it prints none of them.
        """
        def fetch(url):
            if "/api/listeners" in url:
                return {"listeners": [dict(self.LISTENER, protocol="echo", host="127.0.0.1",
                                           port=7)]}
            if "/api/connections" in url:
                if "udp" in url:
                    return {"connections": [], "total": 0}
                return {"connections": [dict(self.CONNECTION, id="tcp-1", opened=0,
                                             local={"host": "127.0.0.1", "port": 7},
                                             remote={"host": "127.0.0.2", "port": 9})],
                        "total": 1}
            return {"version": "0.1.0", "listen_counters": {
                "ListenOverflows": {"total": 9, "since_start": 2}}}

        def run(*argv):
            out = io.StringIO()
            status = cli.main(["status", "--url", "http://127.0.0.1:1", *argv], stdout=out,
                              stderr=io.StringIO(), fetch=fetch, now=lambda: 10,
                              environ={})
            self.assertEqual(status, 0)
            return out.getvalue().splitlines()
        lines = run("--tcp")
        listener = next(i for i, l in enumerate(lines) if l.startswith("echo"))
        self.assertTrue(lines[listener + 1].startswith("      handshake syn-recv:1"))
        self.assertTrue(lines[listener + 2].startswith("    echo  tcp  127.0.0.1:7"))
        self.assertTrue(lines[listener + 3].startswith("      ESTAB send-q:0"))
        self.assertIn("  host listen counters (+ since start): ListenOverflows 9 (+2)",
                      lines)
        plain = run()
        self.assertFalse([l for l in plain if "ESTAB" in l or "handshake" in l
                          or "listen counters" in l])


def netlinkProblem() -> str | None:
    """
    Why the kernel's view cannot be checked here, or L{None}.
    """
    if not sys.platform.startswith("linux"):
        return "the kernel's view is Linux only"
    try:
        dumpTCP([1])
    except SockDiagError as e:
        return str(e)
    return None


NETLINK = netlinkProblem()
SS = shutil.which("ss")


def ss(*args: str) -> list[list[str]]:
    """
    The lines of C{ss -H ARGS} (no header), split in fields.
    """
    result = subprocess.run([SS, "-H", *args], capture_output=True, text=True, timeout=10,
                            check=True)
    return [line.split() for line in result.stdout.splitlines() if line.strip()]


class KernelCheckTests(TestCase):
    """
    The kernel's view through the status service, held against the kernel's own (C{ss}),
    with a real server and real clients on 127.0.0.1.
    """

    if NETLINK:
        skip = NETLINK

    timeout = 60

    def start(self, *specs):
        self.server = PortServer(makePlan(*specs), reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.status = StatusService(self.server, "tcp:0:interface=127.0.0.1", reactor)
        self.status.privilegedStartService()
        self.status.startService()
        self.addCleanup(self.status.stopService)

    def client(self, port: int, receiveBuffer: int | None = None) -> socket.socket:
        client = socket.socket()
        self.addCleanup(client.close)
        if receiveBuffer is not None:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
        client.settimeout(DEADLINE)
        client.connect(("127.0.0.1", port))
        return client

    @inlineCallbacks
    def receive(self, client: socket.socket, count: int = 1 << 20):
        """
        Read C{count} bytes from C{client}, or up to its end, without blocking the
        reactor (the server runs on it): the bytes.
        """
        client.setblocking(False)
        received = []

        def more():
            try:
                chunk = client.recv(count - sum(map(len, received)))
            except BlockingIOError:
                return False
            received.append(chunk)
            return not chunk or sum(map(len, received)) >= count
        yield self.waitFor(more, f"{count} bytes or the end from the server")
        return b"".join(received)

    def get(self, path: str):
        return getOK(self, self.status.address.port, path, DEADLINE).addCallback(json.loads)

    @inlineCallbacks
    def kernelOf(self, port: int):
        """
        The C{kernel} of the TCP listener on C{port}, from C{/api/listeners}.
        """
        rows = (yield self.get("/api/listeners"))["listeners"]
        [row] = [r for r in rows if r["port"] == port and r["transport"] == "tcp"]
        return row["kernel"]

    @inlineCallbacks
    def waitFor(self, condition, what: str):
        """
        Call C{condition()} (it may return a Deferred) until it is true.
        """
        deadline = reactor.seconds() + DEADLINE
        while True:
            result = condition()
            if hasattr(result, "addCallback"):
                result = yield result
            if result:
                return result
            if reactor.seconds() > deadline:
                self.fail(f"{what}: not within {DEADLINE}s")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def test_acceptQueue(self):
        """
        With the listener paused (C{stopReading}: the server accepts nothing) and five
        clients connected, C{accept_queue} is 5, as C{ss -lnt} says (Recv-Q); the
        backlog is ss's Send-Q. Once it accepts again, the queue is empty.
        """
        self.start(spec("echo", port=0))
        port = self.server.addressOf("echo").port
        listening = self.server.listeners[0].port
        listening.stopReading()
        clients = [self.client(port) for _ in range(5)]

        def queued():  # each handshake's last ACK may still be on its way
            return self.kernelOf(port).addCallback(
                lambda info: info["accept_queue"] == 5 and info)
        info = yield self.waitFor(queued, "five connections in the accept queue")
        if SS is not None:
            [[state, recvQ, sendQ, *_]] = ss("-lnt", "sport", "=", f":{port}")
            self.assertEqual((state, int(recvQ), int(sendQ)),
                             ("LISTEN", info["accept_queue"], info["backlog"]))
        listening.startReading()
        yield self.waitFor(lambda: len(self.server.registry) == len(clients),
                           "the server accepting the five")
        self.assertEqual((yield self.kernelOf(port))["accept_queue"], 0)

    @inlineCallbacks
    def test_timeWait(self):
        """
        After the server closes connections first (daytime), the sockets it leaves in
        TIME-WAIT are counted as C{ss -tan state time-wait} counts them for that port:
        three, unless the kernel's table of them was full meanwhile (a machine-wide
        limit, C{tcp_max_tw_buckets}, which load tests such as C{tests/test_bench.py}
        approach: the kernel then closes a socket without its TIME-WAIT, and counts
        C{TCPTimeWaitOverflow}); the two views agree either way.
        """
        if SS is None:
            raise SkipTest("ss is missing: apt-get install iproute2")
        self.start(spec("daytime", port=0))
        port = self.server.addressOf("daytime").port
        overflows = timeWaitOverflows()
        for _ in range(3):
            client = self.client(port)
            yield self.receive(client)  # the time, then the server's FIN
            client.close()

        def counted():
            overflowed = timeWaitOverflows() != overflows
            return self.kernelOf(port).addCallback(
                lambda info: (info["time_wait"] >= 3 or overflowed) and info)
        info = yield self.waitFor(counted, "three sockets in TIME-WAIT")
        lines = ss("-tan", "state", "time-wait", "sport", "=", f":{port}")
        self.assertEqual(info["time_wait"], len(lines))
        if timeWaitOverflows() == overflows:
            self.assertEqual(info["time_wait"], 3)

    @inlineCallbacks
    def test_rtt(self):
        """
        A loopback connection that exchanged data has a C{tcp} with an RTT above 0, its
        state, and no retransmits.
        """
        self.start(spec("echo", port=0))
        port = self.server.addressOf("echo").port
        client = self.client(port)
        client.sendall(b"ping")
        self.assertEqual((yield self.receive(client, 4)), b"ping")
        [record] = (yield self.get("/api/connections"))["connections"]
        self.assertEqual(record["remote"]["port"], client.getsockname()[1])
        tcp = record["tcp"]
        self.assertGreater(tcp["rtt_ms"], 0)
        self.assertEqual((tcp["state"], tcp["retransmits"]), ("established", 0))

    @inlineCallbacks
    def test_sendQueue(self):
        """
        A peer that stops reading shows a growing C{send_queue}: nothing once the echo of
        a first byte is read; then, as the peer sends and never reads, the echoed bytes
        pile up in the server's socket.
        """
        self.start(spec("echo", port=0))
        port = self.server.addressOf("echo").port
        client = self.client(port, receiveBuffer=4096)
        client.sendall(b"x")
        self.assertEqual((yield self.receive(client, 1)), b"x")
        seen = []

        @inlineCallbacks
        def piledUp():
            try:
                for _ in range(16):
                    client.send(b"y" * 65536)
            except BlockingIOError:
                pass  # the server stopped reading: its output is full
            [record] = (yield self.get("/api/connections"))["connections"]
            seen.append(record["tcp"]["send_queue"])
            return seen[-1] >= 16384

        [record] = (yield self.get("/api/connections"))["connections"]
        self.assertEqual(record["tcp"]["send_queue"], 0)
        yield self.waitFor(piledUp, "16 KiB in the server's send queue")
        self.assertGreater(seen[-1], 0)
        self.assertEqual(seen, sorted(seen))


class PageTests(BrowserTestCase):
    """
    The kernel's view on the status page, in a real browser (L{tests.test_browser}).
    """

    if NETLINK:
        skip = NETLINK

    def test_pathAndRTT(self):
        """
        Each TCP listener has its row in the kernel's view, with its established count;
        a live TCP connection shows its RTT (above 0) and its retransmits, a UDP flow
        dashes.
        """
        page = self.open()
        echo = self.server.echo
        client, source = self.connect(echo)
        client.sendall(b"hello")
        self.assertEqual(client.recv(100), b"hello")
        self.connect(echo, "udp")
        self.waitFor(page, """(address) => {
            const row = document.querySelector(`#tcp-path tr[data-address="${address}"]`);
            return row !== null && row.dataset.service === "echo" &&
                row.cells[4].textContent === "1";
        }""", f"127.0.0.1:{echo}", "the echo listener's path, one established")
        self.waitFor(page, """(remote) => {
            const row = document.querySelector(`#connections tr[data-remote="${remote}"]`);
            const rtt = row && row.querySelector("td[data-rtt]");
            return rtt !== null && Number(rtt.dataset.rtt) > 0 &&
                row.querySelector("td[data-retransmits]").textContent === "0";
        }""", f"127.0.0.1:{source}", "the connection's RTT and retransmits")
        self.assertFalse(page.is_hidden("#tcp-section"))
        cells = page.evaluate("""() => [...document.querySelectorAll(
            '#connections tr[data-transport="udp"] td')].slice(-2).map((c) => c.textContent)""")
        self.assertEqual(cells, ["–", "–"])
