"""
Tests for L{portserver.status}: the status web service's JSON endpoints, its Prometheus
metrics, its listening (fatal when refused), and one real TCP connection seen through it.

The unit tests drive the real resources through a real L{Site} and L{HTTPChannel} over a
L{StringTransport}, on a L{PortServer} whose registry they fill by hand on a fake clock.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import portserver
from portserver import tap
from portserver.config import StatusSpec
from portserver.ports import portClass
from portserver.registry import CLIENT_CLOSED, SERVER_CLOSED, ConnectionRecord, Endpoint
from portserver.server import PortServer
from portserver.startup import StartupError
from portserver.status.web import StatusService
from tests.support import PortReactor, getOK, makePlan, spec

DEADLINE = 10  # seconds a real-network step may take on a loaded CI machine
STATUS_LISTEN = "tcp:8790:interface=127.0.0.1"
JSON_TYPE = "application/json; charset=utf-8"


@attrs.frozen
class Response:
    """
    An HTTP response as read off the wire: status code, headers (lower-cased names, each
    with its list of values) and body.
    """

    code: int
    headers: dict
    body: bytes

    def header(self, name: str) -> str:
        [value] = self.headers[name.lower()]
        return value

    def json(self):
        return json.loads(self.body)


def parseResponse(raw: bytes) -> Response:
    """
    Parse one HTTP/1.1 response with a Content-Length (all the status site sends).
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    statusLine, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(statusLine.split()[1]), headers, body)


def fetch(site, path: bytes, method: bytes = b"GET") -> Response:
    """
    Send one request to C{site} through a real L{HTTPChannel} on a L{StringTransport},
    and parse what it wrote back.
    """
    client = IPv4Address("TCP", "127.0.0.9", 40000)
    channel = site.buildProtocol(client)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8790),
                                peerAddress=client)
    channel.makeConnection(transport)
    channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\n"
                         b"Connection: close\r\n\r\n")
    channel.connectionLost(Failure(ConnectionDone()))
    return parseResponse(transport.value())


def series(text: str, name: str) -> dict[tuple, float]:
    """
    Every sample called C{name} in the exposition C{text}: sorted label pairs -> value.
    """
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


class FilledServer:
    """
    A L{PortServer} (echo on tcp and udp port 7, daytime on tcp 8080) on a L{PortReactor}
    made at t=1000, whose registry holds, from t=1005:

      - tcp-1: echo, live, 127.0.0.2:51234 -> 127.0.0.1:7, 10 bytes in, 10 out;
      - tcp-2: daytime, 192.0.2.7:33000 -> 127.0.0.1:8080, 2 in, 32 out, closed by the
        server at t=1012.5;
      - tcp-3: echo, 127.0.0.2:51235 -> 127.0.0.1:7, 4 in, 4 out, closed by the client at
        t=1012.5;
      - udp-4: an echo flow, live, 127.0.0.3:40000 -> 127.0.0.1:7, 2 datagrams of 8 bytes
        in all each way;

    and a L{StatusService} on it, started (so its site is the factory listening on 8790).
    """

    def __init__(self):
        self.reactor = PortReactor()
        self.reactor.advance(1000)
        self.server = PortServer(makePlan(
            spec("echo", port=7, transports=("tcp", "udp")), spec("daytime", port=8080)),
            self.reactor)
        self.registry = registry = self.server.registry
        self.reactor.advance(5)
        local7, local8080 = Endpoint("127.0.0.1", 7), Endpoint("127.0.0.1", 8080)
        self.a = registry.open("echo", "echo", "tcp", local7, Endpoint("127.0.0.2", 51234))
        self.a.bytesIn = self.a.bytesOut = 10
        self.b = registry.open("daytime", "daytime", "tcp", local8080,
                               Endpoint("192.0.2.7", 33000))
        self.b.bytesIn, self.b.bytesOut = 2, 32
        self.c = registry.open("echo", "echo", "tcp", local7, Endpoint("127.0.0.2", 51235))
        self.c.bytesIn = self.c.bytesOut = 4
        self.u = registry.flow("echo", "echo", local7, Endpoint("127.0.0.3", 40000))
        self.u.datagramsIn = self.u.datagramsOut = 2
        self.u.bytesIn = self.u.bytesOut = 8
        self.reactor.advance(7.5)
        registry.close(self.b, SERVER_CLOSED)
        registry.close(self.c, CLIENT_CLOSED)
        self.status = StatusService(self.server, STATUS_LISTEN, self.reactor)
        self.server.privilegedStartService()
        self.status.privilegedStartService()
        self.status.startService()

    def get(self, path: bytes, method: bytes = b"GET") -> Response:
        return fetch(self.reactor.tcpServers[-1][1], path, method)


# The records of FilledServer as the API shows them.
WELL_KNOWN_7 = {"host": "127.0.0.1", "port": 7, "class": "well-known", "privileged": True}
RECORD_A = {"id": "tcp-1", "service": "echo", "protocol": "echo", "transport": "tcp",
            "local": WELL_KNOWN_7,
            "remote": {"host": "127.0.0.2", "port": 51234, "class": "dynamic",
                       "privileged": False},
            "opened": 1005.0, "bytes_in": 10, "bytes_out": 10}
RECORD_B = {"id": "tcp-2", "service": "daytime", "protocol": "daytime", "transport": "tcp",
            "local": {"host": "127.0.0.1", "port": 8080, "class": "registered",
                      "privileged": False},
            "remote": {"host": "192.0.2.7", "port": 33000, "class": "registered",
                       "privileged": False},
            "opened": 1005.0, "bytes_in": 2, "bytes_out": 32,
            "closed": 1012.5, "duration": 7.5, "reason": "server-closed"}
RECORD_C = {"id": "tcp-3", "service": "echo", "protocol": "echo", "transport": "tcp",
            "local": WELL_KNOWN_7,
            "remote": {"host": "127.0.0.2", "port": 51235, "class": "dynamic",
                       "privileged": False},
            "opened": 1005.0, "bytes_in": 4, "bytes_out": 4,
            "closed": 1012.5, "duration": 7.5, "reason": "client-closed"}
RECORD_U = {"id": "udp-4", "service": "echo", "protocol": "echo", "transport": "udp",
            "local": WELL_KNOWN_7,
            "remote": {"host": "127.0.0.3", "port": 40000, "class": "registered",
                       "privileged": False},
            "opened": 1005.0, "bytes_in": 8, "bytes_out": 8,
            "datagrams_in": 2, "datagrams_out": 2, "last_seen": 1005.0}


class ConnectionsTests(SynchronousTestCase):
    """
    C{GET /api/connections} lists the registry's records, filtered by the query.
    """

    def setUp(self):
        self.filled = FilledServer()

    def connections(self, path: bytes):
        response = self.filled.get(path)
        self.assertEqual(response.code, 200, response.body)
        return response.json()["connections"]

    def test_liveTCPByDefault(self):
        """
        Without parameters, only the live TCP connection is listed, with every field: the
        local port 7 is well-known and privileged, the remote 51234 dynamic and not.
        """
        self.assertEqual(self.connections(b"/api/connections"), [RECORD_A])

    def test_serverTiming(self):
        """
        The reply says in a C{Server-Timing} header how long the registry snapshot, the
        conversion to dicts and the JSON encoding took, each as C{name;dur=ms}.
        """
        header = self.filled.get(b"/api/connections").header("server-timing")
        parts = [part.strip().split(";dur=") for part in header.split(",")]
        self.assertEqual([name for name, _ in parts], ["snapshot", "dicts", "encode"])
        for _, milliseconds in parts:
            self.assertGreaterEqual(float(milliseconds), 0.0)

    def test_serviceFilter(self):
        """
        C{?service=} keeps one service's records: echo has the live one, daytime none live
        and one closed.
        """
        self.assertEqual(self.connections(b"/api/connections?service=echo"), [RECORD_A])
        self.assertEqual(self.connections(b"/api/connections?service=daytime"), [])
        self.assertEqual(self.connections(b"/api/connections?service=daytime&state=closed"),
                         [RECORD_B])

    def test_recentlyClosed(self):
        """
        C{?state=closed} lists the closed connections, oldest first, with when they closed,
        how long they lasted and why (port 8080 is registered, unprivileged).
        """
        self.assertEqual(self.connections(b"/api/connections?state=closed"),
                         [RECORD_B, RECORD_C])
        self.assertEqual(self.connections(b"/api/connections?state=open"), [RECORD_A])

    def test_udpFlows(self):
        """
        C{?transport=udp} lists the live UDP flows with their datagram counts; once the
        flow expires, it is listed by C{?state=closed&transport=udp} as idle.
        """
        self.assertEqual(self.connections(b"/api/connections?transport=udp"), [RECORD_U])
        self.filled.reactor.advance(60)
        self.assertEqual(self.filled.registry.expireFlows(), 1)
        self.assertEqual(self.connections(b"/api/connections?transport=udp"), [])
        closed = dict(RECORD_U, closed=1072.5, duration=67.5, reason="idle")
        self.assertEqual(self.connections(b"/api/connections?state=closed&transport=udp"),
                         [closed])

    def test_invalidParameters(self):
        """
        An unknown C{state} or C{transport}, or a parameter given twice, is a 400 with a
        JSON error naming the parameter and the value.
        """
        for query, error in [
            (b"state=gone", "invalid 'state' parameter 'gone': expected open or closed"),
            (b"transport=sctp", "invalid 'transport' parameter 'sctp': expected tcp or udp"),
            (b"state=open&state=closed", "parameter 'state' is given 2 times"),
        ]:
            response = self.filled.get(b"/api/connections?" + query)
            self.assertEqual((response.code, response.header("content-type"),
                              response.json()), (400, JSON_TYPE, {"error": error}))


class ConnectionsPagingTests(SynchronousTestCase):
    """
    C{GET /api/connections} answers a page at a time: C{limit} records (default 1000)
    from C{offset}, with the C{total} the query selects.
    """

    def setUp(self):
        self.filled = FilledServer()
        registry = self.filled.registry
        local = Endpoint("127.0.0.1", 7)
        for port in range(20000, 22500):
            registry.open("echo", "echo", "tcp", local, Endpoint("127.0.0.5", port))

    def page(self, query: bytes) -> dict:
        response = self.filled.get(b"/api/connections" + query)
        self.assertEqual(response.code, 200, response.body)
        return response.json()

    def test_defaultPage(self):
        """
        Without C{limit}, the first 1000 of the 2501 live TCP connections are answered,
        oldest first, with the total, the offset and the limit.
        """
        reply = self.page(b"")
        self.assertEqual((reply["total"], reply["offset"], reply["limit"]), (2501, 0, 1000))
        self.assertEqual(len(reply["connections"]), 1000)
        self.assertEqual(reply["connections"][0], RECORD_A)
        self.assertEqual(reply["connections"][-1]["remote"]["port"], 20998)

    def test_pagesCoverEveryRecordOnce(self):
        """
        Walking the pages by C{offset} gives every record exactly once; the last page is
        short, and a page past the end is empty (not an error).
        """
        ids = []
        for offset in range(0, 3000, 700):
            reply = self.page(b"?limit=700&offset=%d" % offset)
            self.assertEqual(reply["total"], 2501)
            ids += [c["id"] for c in reply["connections"]]
        self.assertEqual(len(ids), 2501)
        self.assertEqual(len(set(ids)), 2501)
        self.assertEqual(self.page(b"?offset=5000")["connections"], [])

    def test_filteredTotal(self):
        """
        The total counts what the query selects: one daytime connection among the
        closed ones, zero records with C{limit=0} but the total still given.
        """
        reply = self.page(b"?service=daytime&state=closed")
        self.assertEqual((reply["total"], reply["connections"]), (1, [RECORD_B]))
        reply = self.page(b"?service=echo&limit=0")
        self.assertEqual((reply["total"], reply["connections"]), (2501, []))
        self.assertEqual(self.page(b"?transport=udp&limit=1")["connections"], [RECORD_U])

    def test_invalidPaging(self):
        """
        A C{limit} or C{offset} that is not a whole number, is negative, or a limit over
        2000, is a 400 naming the parameter, its value and what is expected.
        """
        for query, name, value, largest in [
            (b"limit=ten", "limit", "ten", 2000),
            (b"limit=-1", "limit", "-1", 2000),
            (b"limit=2001", "limit", "2001", 2000),
            (b"offset=1.5", "offset", "1.5", 10**12),
            (b"offset=" + b"9" * 5000, "offset", "9" * 5000, 10**12),
            (b"limit=", "limit", "", 2000),
        ]:
            response = self.filled.get(b"/api/connections?" + query)
            error = (f"invalid {name!r} parameter {value!r}: expected a whole number from "
                     f"0 to {largest}")
            self.assertEqual((response.code, response.json()), (400, {"error": error}))

    def test_pageCostIsThePage(self):
        """
        At 100,000 live connections a default page turns only its 1000 records into
        dicts (the records are sliced first): the cost of a request is its page's.
        """
        registry = self.filled.registry
        local = Endpoint("127.0.0.1", 7)
        for i in range(100_000):
            registry.open("echo", "echo", "tcp", local,
                          Endpoint(f"10.0.{i >> 8 & 255}.{i & 255}", 1024 + i % 60000))
        converted = []
        asDict = ConnectionRecord.asDict
        self.patch(ConnectionRecord, "asDict",
                   lambda record, describe: converted.append(record) or asDict(record, describe))
        reply = self.page(b"?offset=50000")
        self.assertEqual((reply["total"], len(reply["connections"])), (102_501, 1000))
        self.assertEqual(len(converted), 1000)
        self.assertEqual(reply["connections"][0]["id"], converted[0].id)


class ListenersAndSummaryTests(SynchronousTestCase):
    """
    C{GET /api/listeners} and C{GET /api/summary}.
    """

    def setUp(self):
        self.filled = FilledServer()

    def test_listeners(self):
        """
        Every listener is listed in plan order with its port class, privilege and live
        connections (the UDP flow counts for echo/udp).
        """
        response = self.filled.get(b"/api/listeners")
        self.assertEqual(response.code, 200)
        listeners = response.json()["listeners"]
        limits = [row.pop("limits") for row in listeners]
        self.assertEqual([sorted(l) for l in limits], [
            ["close_grace", "deadline", "idle_timeout", "max_connections", "max_output",
             "max_per_source", "rate_per_source"], ["udp_rate_per_source"],
            ["close_grace", "deadline", "idle_timeout", "max_connections", "max_output",
             "max_per_source", "rate_per_source"]])
        echo = {"service": "echo", "protocol": "echo", "host": "127.0.0.1", "port": 7,
                "configured_port": 7, "well_known_port": 7, "class": "well-known",
                "privileged": True, "connections": 1}
        self.assertEqual({"listeners": listeners}, {"listeners": [
            dict(echo, transport="tcp"), dict(echo, transport="udp"),
            {"service": "daytime", "protocol": "daytime", "transport": "tcp",
             "host": "127.0.0.1", "port": 8080, "configured_port": 8080,
             "well_known_port": 13, "class": "registered", "privileged": False,
             "connections": 0}]})

    def test_summary(self):
        """
        The summary counts listeners and live connections by port class and privilege,
        per service, with totals, uptime on the server's clock, the version, the
        process id (which C{portserver reload} checks), the config path and its
        generation (no reload yet).
        """
        response = self.filled.get(b"/api/summary")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), {
            "uptime": 12.5,
            "privileged_port_start": 1024,
            "privileged_rule": "test",
            "listeners": {"by_class": {"well-known": 2, "registered": 1, "dynamic": 0},
                          "privileged": 2, "unprivileged": 1, "total": 3},
            "connections": {
                "total": 2,
                "local": {"by_class": {"well-known": 2, "registered": 0, "dynamic": 0},
                          "privileged": 2, "unprivileged": 0},
                "remote": {"by_class": {"well-known": 0, "registered": 1, "dynamic": 1},
                           "privileged": 0, "unprivileged": 2}},
            "services": {"echo": {"tcp": 1, "udp": 1, "accepted": 3, "closed": 1,
                                  "refused": 0},
                         "daytime": {"tcp": 0, "udp": 0, "accepted": 1, "closed": 1,
                                     "refused": 0}},
            "accepted_total": 4,
            "closed_total": 2,
            "closed_by_reason": {"server-closed": 1, "client-closed": 1},
            "refused_by_reason": {},
            "flags": [],
            "state": "serving",
            "pid": os.getpid(),
            "version": portserver.__version__,
            "config": "<test>",
            "config_generation": 1,
            "config_loaded_at": 1000.0,
            "last_reload": None,
            "reloads": {"applied": 0, "rejected": 0},
        })


class DrainingTests(SynchronousTestCase):
    """
    While the server drains, the status service still answers and says so.
    """

    def test_summaryWhileDraining(self):
        """
        Once stopped, the server's summary says C{"draining"}, with the TCP connections
        left and the seconds until they are aborted.
        """
        filled = FilledServer()
        filled.server.stopService()
        filled.reactor.advance(3)
        summary = filled.get(b"/api/summary").json()
        self.assertEqual((summary["state"], summary["remaining"], summary["drain_left"]),
                         ("draining", 1, 7.0))
        self.assertEqual(summary["connections"]["total"], 1)  # the UDP flow closed


class HTTPTests(SynchronousTestCase):
    """
    Headers, methods and unknown paths.
    """

    def setUp(self):
        self.filled = FilledServer()

    def test_jsonHeaders(self):
        """
        Every JSON endpoint says it is UTF-8 JSON, not to be cached nor sniffed.
        """
        for path in (b"/api/connections", b"/api/listeners", b"/api/summary"):
            response = self.filled.get(path)
            self.assertEqual(
                (response.code, response.header("content-type"),
                 response.header("cache-control"), response.header("x-content-type-options")),
                (200, JSON_TYPE, "no-store", "nosniff"), path)

    def test_head(self):
        """
        HEAD gets GET's status and headers, with the length of GET's body, and no body.
        """
        get = self.filled.get(b"/api/summary")
        head = self.filled.get(b"/api/summary", b"HEAD")
        self.assertEqual((head.code, head.header("content-type"), head.body),
                         (200, JSON_TYPE, b""))
        self.assertEqual(head.header("content-length"), str(len(get.body)))
        self.assertGreater(len(get.body), 0)

    def test_otherMethods(self):
        """
        Methods other than GET and HEAD get 405 with C{Allow: GET, HEAD}: a JSON error
        under C{/api/}, text elsewhere; and nothing is rendered.
        """
        response = self.filled.get(b"/api/connections", b"POST")
        self.assertEqual((response.code, response.header("allow"),
                          response.header("content-type"), response.json()),
                         (405, "GET, HEAD", JSON_TYPE,
                          {"error": "method POST is not allowed: use GET or HEAD"}))
        for path in (b"/metrics", b"/"):
            response = self.filled.get(path, b"DELETE")
            self.assertEqual((response.code, response.header("allow")), (405, "GET, HEAD"))
            self.assertIn(b"method DELETE is not allowed", response.body)

    def test_unknownApiPathsAreJSON404(self):
        """
        Unknown paths under C{/api}, C{/api} itself and paths below an endpoint are 404s
        with a JSON error naming the path.
        """
        for path in (b"/api/nope", b"/api", b"/api/", b"/api/connections/extra"):
            response = self.filled.get(path)
            self.assertEqual((response.code, response.header("content-type"), response.json()),
                             (404, JSON_TYPE, {"error": f"no such resource: {path.decode()}"}))

    def test_unknownPaths404(self):
        """
        Other unknown paths are 404s too, in plain text, whatever the method.
        """
        for method, path in ((b"GET", b"/nope"), (b"POST", b"/nope"), (b"GET", b"/metrics/x")):
            response = self.filled.get(path, method)
            self.assertEqual((response.code, response.header("content-type")),
                             (404, "text/plain; charset=utf-8"), (method, path))

    def test_index(self):
        """
        C{/} is an HTML page linking every endpoint.
        """
        response = self.filled.get(b"/")
        self.assertEqual((response.code, response.header("content-type")),
                         (200, "text/html; charset=utf-8"))
        for href in (b"api/connections", b"api/listeners", b"api/summary", b"metrics"):
            self.assertIn(b'<a href="' + href + b'">', response.body)


class MetricsTests(SynchronousTestCase):
    """
    C{GET /metrics}: the Prometheus exposition, made by prometheus_client from the registry
    at scrape time.
    """

    def setUp(self):
        self.filled = FilledServer()

    def scrape(self) -> str:
        response = self.filled.get(b"/metrics")
        self.assertEqual((response.code, response.header("content-type")),
                         (200, CONTENT_TYPE_LATEST))
        return response.body.decode("utf-8")

    def test_connectionsAndListeners(self):
        """
        C{portserver_connections} counts live connections and flows per listener (0 for
        daytime), labelled with the port's class and privilege; C{portserver_listeners}
        counts listeners by class and privilege; uptime is on the server's clock.
        """
        text = self.scrape()
        self.assertEqual(series(text, "portserver_connections"), {
            (("port", "7"), ("port_class", "well-known"), ("privileged", "true"),
             ("service", "echo"), ("transport", "tcp")): 1.0,
            (("port", "7"), ("port_class", "well-known"), ("privileged", "true"),
             ("service", "echo"), ("transport", "udp")): 1.0,
            (("port", "8080"), ("port_class", "registered"), ("privileged", "false"),
             ("service", "daytime"), ("transport", "tcp")): 0.0,
        })
        listeners = series(text, "portserver_listeners")
        self.assertEqual({k: v for k, v in listeners.items() if v}, {
            (("port_class", "well-known"), ("privileged", "true")): 2.0,
            (("port_class", "registered"), ("privileged", "false")): 1.0,
        })
        self.assertEqual(len(listeners), 6)
        self.assertEqual(series(text, "portserver_uptime_seconds"), {(): 12.5})

    def test_counters(self):
        """
        Accepted and closed (by reason) connections are counted per service and
        transport; bytes are the closed connections' plus the live ones'.
        """
        text = self.scrape()
        echoTCP = (("service", "echo"), ("transport", "tcp"))
        echoUDP = (("service", "echo"), ("transport", "udp"))
        daytime = (("service", "daytime"), ("transport", "tcp"))
        self.assertEqual(series(text, "portserver_connections_accepted_total"),
                         {echoTCP: 2.0, echoUDP: 1.0, daytime: 1.0})
        self.assertEqual(series(text, "portserver_connections_closed_total"), {
            (("reason", "server-closed"),) + daytime: 1.0,
            (("reason", "client-closed"),) + echoTCP: 1.0,
        })
        self.assertEqual(series(text, "portserver_bytes_received_total"),
                         {echoTCP: 14.0, echoUDP: 8.0, daytime: 2.0})
        self.assertEqual(series(text, "portserver_bytes_sent_total"),
                         {echoTCP: 14.0, echoUDP: 8.0, daytime: 32.0})
        types = {f.name: f.type for f in text_string_to_metric_families(text)}
        self.assertEqual(types["portserver_connections_accepted"], "counter")
        self.assertEqual(types["portserver_connections"], "gauge")

    def test_udpGuards(self):
        """
        A flow evicted from a full flow table is counted as closed, C{evicted}, and
        datagrams dropped as loops as refused, C{loop}: in C{/metrics} and in the
        summary's C{closed_by_reason} and C{refused_by_reason}.
        """
        registry = self.filled.registry
        registry.udpMaxFlows = 1
        registry.flow("echo", "echo", Endpoint("127.0.0.1", 7), Endpoint("127.0.0.3", 40001))
        [served] = [c.served for c in self.filled.server.listeners
                    if c.listener.transport == "udp"]
        for source in (0, 19, 7):
            served.datagramReceived(b"x", ("127.0.0.1", source))
        text = self.scrape()
        echoUDP = (("service", "echo"), ("transport", "udp"))
        self.assertEqual(series(text, "portserver_connections_closed_total")[
            (("reason", "evicted"),) + echoUDP], 1.0)
        self.assertEqual(series(text, "portserver_refused_connections_total"),
                         {(("reason", "loop"), ("service", "echo")): 3.0})
        summary = self.filled.get(b"/api/summary").json()
        self.assertEqual(summary["closed_by_reason"]["evicted"], 1)
        self.assertEqual(summary["refused_by_reason"], {"loop": 3})
        self.assertEqual(summary["services"]["echo"]["refused"], 3)

    def test_readAtScrapeTime(self):
        """
        Each scrape reads the registry anew: bytes a live connection receives show at
        once, and still count once (not twice) after it closes.
        """
        self.filled.a.bytesIn += 100
        echoTCP = (("service", "echo"), ("transport", "tcp"))
        self.assertEqual(series(self.scrape(), "portserver_bytes_received_total")[echoTCP],
                         114.0)
        self.filled.registry.close(self.filled.a, CLIENT_CLOSED)
        text = self.scrape()
        self.assertEqual(series(text, "portserver_bytes_received_total")[echoTCP], 114.0)
        self.assertEqual(series(text, "portserver_connections")[
            (("port", "7"), ("port_class", "well-known"), ("privileged", "true"),
             ("service", "echo"), ("transport", "tcp"))], 0.0)

    def test_notInGlobalRegistry(self):
        """
        The metrics live in a private collector registry: the process-wide one has none.
        """
        self.assertIn("portserver_connections", self.scrape())
        self.assertNotIn("portserver_", generate_latest(REGISTRY).decode())


class ListeningTests(SynchronousTestCase):
    """
    L{StatusService} listens on its endpoint string; a refused listen stops start-up.
    """

    def server(self):
        return PortServer(makePlan(spec("echo", port=7)), PortReactor())

    def test_listensOnEndpointAndLogs(self):
        """
        C{privilegedStartService} listens on the endpoint's port and interface with the
        service's site, and logs one line with the URL.
        """
        server = self.server()
        status = StatusService(server, STATUS_LISTEN)
        with capturedLogs() as events:
            status.privilegedStartService()
            status.startService()
        self.assertEqual(server.reactor.tcpServers, [(8790, status.site, 50, "127.0.0.1")])
        self.assertEqual(status.address, IPv4Address("TCP", "127.0.0.1", 8790))
        lines = [formatEvent(e) for e in events if "Status service" in formatEvent(e)]
        self.assertEqual(lines, ["Status service listening on http://127.0.0.1:8790/"])

    def test_stopServiceStopsListening(self):
        """
        C{stopService} stops the listening port.
        """
        server = self.server()
        status = StatusService(server, STATUS_LISTEN)
        status.startService()
        [port] = server.reactor.ports
        self.assertFalse(port.stopped)
        self.successResultOf(status.stopService())
        self.assertTrue(port.stopped)
        self.assertIsNone(status.address)

    def test_refusedListenIsFatal(self):
        """
        When the port is taken, C{privilegedStartService} raises L{StartupError} naming the
        status service, the endpoint string and the OS error, and nothing listens.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"tcp:{holder.getsockname()[1]}:interface=127.0.0.1"
        status = StatusService(self.server(), listen, reactor)
        error = self.assertRaises(StartupError, status.privilegedStartService)
        self.assertEqual(str(error), f"cannot start the status service on {listen!r}: "
                                     f"[Errno {errno.EADDRINUSE}] "
                                     f"{os.strerror(errno.EADDRINUSE)}")
        self.assertIsNone(status.address)
        self.assertFalse(status.running)

    def test_makeServiceTree(self):
        """
        C{makeService} makes a tree of the L{PortServer} and, on the config's endpoint, the
        status service over that server; with C{listen: null} there is no status service.
        A refused status listen makes the tree's start fail.
        """
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        plan = makePlan(spec("echo", port=7))
        memory = PortReactor()
        tree = tap.makeService({"plan": plan}, reactor=memory)
        server, status = tree.getServiceNamed("portserver"), tree.getServiceNamed("status")
        self.assertIsInstance(server, PortServer)
        self.assertIs(status.server, server)
        tree.privilegedStartService()
        self.assertEqual([(p, i) for p, _, _, i in memory.tcpServers],
                         [(7, "127.0.0.1"), (8790, "127.0.0.1")])

        off = attrs.evolve(plan, config=attrs.evolve(plan.config, status=StatusSpec(None)))
        self.assertEqual([s.name for s in tap.makeService({"plan": off}, PortReactor())],
                         ["reload-signal", "connection-log", "portserver"])

        refusing = PortReactor(refuse={("tcp", 8790): errno.EADDRINUSE})
        tree = tap.makeService({"plan": plan}, reactor=refusing)
        error = self.assertRaises(StartupError, tree.privilegedStartService)
        self.assertIn(f"status service on {STATUS_LISTEN!r}", str(error))


class EchoClient(Protocol):
    """
    Keeps what it receives; C{echoed(n)} fires once n bytes have come back, C{closed}
    when the connection is gone.
    """

    def __init__(self):
        self.received = b""
        self.waiting: tuple[int, Deferred] | None = None
        self.closed = Deferred()

    def echoed(self, count: int) -> Deferred:
        self.waiting = (count, Deferred())
        d = self.waiting[1]
        self.dataReceived(b"")
        return d

    def dataReceived(self, data):
        self.received += data
        if self.waiting is not None and len(self.received) >= self.waiting[0]:
            d, self.waiting = self.waiting[1], None
            d.callback(self.received)

    def connectionLost(self, reason):
        self.closed.callback(None)


class RealNetworkTests(TestCase):
    """
    A real echo connection from a chosen source endpoint, seen through the real status
    service over HTTP, live and then closed.
    """

    timeout = 60

    def setUp(self):
        self.server = PortServer(makePlan(spec("echo", port=0, interface="127.0.0.1")),
                                 reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.status = StatusService(self.server, "tcp:0:interface=127.0.0.1", reactor)
        self.status.privilegedStartService()
        self.status.startService()
        self.addCleanup(self.status.stopService)

    def get(self, path: str):
        return getOK(self, self.status.address.port, path, DEADLINE)

    def abort(self, client: EchoClient):
        """
        Drop the client's connection if a failed test left it open, and wait for the
        server to see it go.
        """
        if not client.closed.called:
            client.transport.abortConnection()
        return self.waitFor(lambda: len(self.server.registry) == 0, "the server closing")

    @inlineCallbacks
    def waitFor(self, condition, what: str):
        deadline = reactor.seconds() + DEADLINE
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"{what}: not within {DEADLINE}s")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def test_connectionSeenLiveThenClosed(self):
        """
        A client bound to 127.0.0.2:P that sends 11 bytes and reads the echo is listed by
        C{/api/connections} as exactly that endpoint pair with 11 bytes each way, counted
        1 by C{portserver_connections}; after the client closes, the pair is listed by
        C{?state=closed} as client-closed, and no longer as live.
        """
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
            sourcePort = probe.getsockname()[1]
        echoPort = self.server.addressOf("echo").port
        client = EchoClient()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", echoPort,
                               bindAddress=("127.0.0.2", sourcePort)),
            client).addTimeout(DEADLINE, reactor)
        self.addCleanup(self.abort, client)
        client.transport.write(b"hello, echo")
        self.assertEqual((yield client.echoed(11).addTimeout(DEADLINE, reactor)),
                         b"hello, echo")

        [live] = json.loads((yield self.get("/api/connections")))["connections"]
        if sys.platform.startswith("linux"):  # the kernel's view (tests.test_kernel)
            self.assertEqual(live.pop("tcp")["state"], "established")
        expected = {
            "id": live["id"], "service": "echo", "protocol": "echo", "transport": "tcp",
            "local": {"host": "127.0.0.1", "port": echoPort, "class": portClass(echoPort),
                      "privileged": False},
            "remote": {"host": "127.0.0.2", "port": sourcePort,
                       "class": portClass(sourcePort), "privileged": False},
            "opened": live["opened"], "bytes_in": 11, "bytes_out": 11,
        }
        self.assertEqual(live, expected)
        self.assertTrue(live["id"].startswith("tcp-"), live["id"])

        metrics = (yield self.get("/metrics")).decode("utf-8")
        self.assertEqual(series(metrics, "portserver_connections"), {
            (("port", str(echoPort)), ("port_class", portClass(echoPort)),
             ("privileged", "false"), ("service", "echo"), ("transport", "tcp")): 1.0})

        client.transport.loseConnection()
        yield client.closed.addTimeout(DEADLINE, reactor)
        yield self.waitFor(lambda: self.server.registry.live(live["id"]) is None,
                           "the server registering the close")

        [closed] = json.loads((yield self.get("/api/connections?state=closed")))["connections"]
        self.assertEqual(closed, dict(expected, closed=closed["closed"],
                                      duration=closed["closed"] - live["opened"],
                                      reason="client-closed"))
        self.assertGreaterEqual(closed["duration"], 0)
        self.assertEqual(json.loads((yield self.get("/api/connections")))["connections"], [])
