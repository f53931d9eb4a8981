"""
Tests for L{portserver.status.cli}: C{portserver status}, its URL from a config's
endpoint string, its table, its filters and its errors, against canned JSON and against
real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import copy
import io
import json
import os
import socket
import urllib.error
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from portserver.config import DEFAULT_STATUS_LISTEN
from portserver.status import cli
from portserver.tap import bundledConfigPath
from tests.support import serveHTTP

NOW = 1763700300.0


def end(host, port, portClass, privileged):
    return {"host": host, "port": port, "class": portClass, "privileged": privileged}


LISTENERS = [
    {"service": "echo", "protocol": "echo", "transport": "tcp", "host": "127.0.0.1",
     "port": 7, "configured_port": 7, "well_known_port": 7, "class": "well-known",
     "privileged": True, "connections": 1},
    {"service": "echo", "protocol": "echo", "transport": "udp", "host": "127.0.0.1",
     "port": 7, "configured_port": 7, "well_known_port": 7, "class": "well-known",
     "privileged": True, "connections": 1},
    {"service": "web", "protocol": "http", "transport": "tcp", "host": "::1",
     "port": 8080, "configured_port": 8080, "well_known_port": 80, "class": "registered",
     "privileged": False, "connections": 1},
]

TCP = [
    {"id": "tcp-3", "service": "echo", "protocol": "echo", "transport": "tcp",
     "local": end("127.0.0.1", 7, "well-known", True),
     "remote": end("127.0.0.2", 40001, "registered", False),
     "opened": NOW - 5, "bytes_in": 12, "bytes_out": 12},
    {"id": "tcp-4", "service": "web", "protocol": "http", "transport": "tcp",
     "local": end("::1", 8080, "registered", False),
     "remote": end("::1", 51234, "dynamic", False),
     "opened": NOW - 192, "bytes_in": 100, "bytes_out": 2048},
]

UDP = [
    {"id": "udp-5", "service": "echo", "protocol": "echo", "transport": "udp",
     "local": end("127.0.0.1", 7, "well-known", True),
     "remote": end("127.0.0.3", 5353, "registered", False),
     "opened": NOW - 7440, "bytes_in": 30, "bytes_out": 30,
     "datagrams_in": 3, "datagrams_out": 3, "last_seen": NOW - 1},
]

CLOSED = [
    {"id": "tcp-1", "service": "echo", "protocol": "echo", "transport": "tcp",
     "local": end("127.0.0.1", 7, "well-known", True),
     "remote": end("127.0.0.2", 40000, "registered", False),
     "opened": NOW - 100, "bytes_in": 5, "bytes_out": 5,
     "closed": NOW - 99.75, "duration": 0.25, "reason": "client-closed"},
    {"id": "tcp-2", "service": "web", "protocol": "http", "transport": "tcp",
     "local": end("::1", 8080, "registered", False),
     "remote": end("::1", 51000, "dynamic", False),
     "opened": NOW - 200, "bytes_in": 80, "bytes_out": 4096,
     "closed": NOW - 135, "duration": 65.0, "reason": "server-closed"},
]

SUMMARY = {
    "uptime": 7500.0, "privileged_port_start": 1024,
    "privileged_rule": "net.ipv4.ip_unprivileged_port_start",
    "listeners": {"by_class": {"well-known": 2, "registered": 1, "dynamic": 0},
                  "privileged": 2, "unprivileged": 1, "total": 3},
    "connections": {
        "total": 3,
        "local": {"by_class": {"well-known": 2, "registered": 1, "dynamic": 0},
                  "privileged": 2, "unprivileged": 1},
        "remote": {"by_class": {"well-known": 0, "registered": 2, "dynamic": 1},
                   "privileged": 0, "unprivileged": 3}},
    "services": {"echo": {"tcp": 1, "udp": 1, "accepted": 3, "closed": 1},
                 "web": {"tcp": 1, "udp": 0, "accepted": 2, "closed": 1}},
    "accepted_total": 5, "closed_total": 2,
    "closed_by_reason": {"server-closed": 1, "client-closed": 1},
    "flags": [{"kind": "listener-in-dynamic-range", "service": "x", "port": 50000,
               "message": "x listens on 50000, in the dynamic range the OS uses for "
                          "outgoing connections"}],
    "version": "0.1.0", "config": "/etc/portserver.yaml",
}


def reply(url: str) -> dict:
    """
    What the status web service answers to C{url}, from the canned data above.
    """
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.path == "/api/listeners":
        return {"listeners": copy.deepcopy(LISTENERS)}
    if parts.path == "/api/summary":
        return copy.deepcopy(SUMMARY)
    if parts.path == "/api/connections":
        if query.get("state") == "closed":
            records = CLOSED
        else:
            records = UDP if query.get("transport") == "udp" else TCP
        if "service" in query:
            records = [r for r in records if r["service"] == query["service"]]
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 1000))
        return {"connections": copy.deepcopy(records[offset:offset + limit]),
                "total": len(records), "offset": offset, "limit": limit}
    raise cli.FetchError(f"HTTP 404 Not Found for {parts.path}")


class Run:
    """
    The outcome of one L{cli.main} run: exit status, stdout, stderr and the URLs fetched.
    """

    def __init__(self, argv, fetch=reply):
        self.urls = []
        stdout, stderr = io.StringIO(), io.StringIO()

        def recording(url):
            self.urls.append(url)
            return fetch(url)

        self.status = cli.main(argv, stdout=stdout, stderr=stderr, fetch=recording,
                               now=lambda: NOW, environ={})  # no PORTSERVER_TOKEN
        self.stdout, self.stderr = stdout.getvalue(), stderr.getvalue()


def run(*argv, fetch=reply) -> Run:
    return Run(list(argv), fetch)


URL = "http://127.0.0.1:8790"

SUMMARY_LINES = [
    "  listeners: 3: 2 privileged, 1 unprivileged; 2 well-known, 1 registered, 0 dynamic",
    "  connections: 3 live; local ends 2 privileged, 1 unprivileged; remote ends "
    "0 privileged, 3 unprivileged",
    "  accepted 5, closed 2 (client-closed 1, server-closed 1)",
    "  uptime 2h05m; privileged ports: below 1024 (net.ipv4.ip_unprivileged_port_start)",
    "  flags: 1",
    "    listener-in-dynamic-range: x listens on 50000, in the dynamic range the OS uses "
    "for outgoing connections",
]


class URLFromEndpointTests(SynchronousTestCase):
    """
    L{cli.urlFromEndpoint} turns the status service's Twisted endpoint string into the
    URL a client connects to.
    """

    def test_default(self):
        """
        The default status endpoint is reached at http://127.0.0.1:8790.
        """
        self.assertEqual(cli.urlFromEndpoint(DEFAULT_STATUS_LISTEN), "http://127.0.0.1:8790")

    def test_positionalPort(self):
        """
        C{tcp:PORT:interface=HOST}: the port is the first positional parameter.
        """
        self.assertEqual(cli.urlFromEndpoint("tcp:9000:interface=127.0.0.2"),
                         "http://127.0.0.2:9000")

    def test_keywordPort(self):
        """
        C{tcp:port=PORT:interface=HOST}: the port may be a keyword too.
        """
        self.assertEqual(cli.urlFromEndpoint("tcp:port=9001:interface=127.0.0.3"),
                         "http://127.0.0.3:9001")

    def test_positionalInterface(self):
        """
        C{tcp:PORT:HOST}: tcp's second positional parameter is the interface, as in
        Twisted's parser.
        """
        self.assertEqual(cli.urlFromEndpoint("tcp:9002:127.0.0.4"), "http://127.0.0.4:9002")

    def test_ipv4Wildcard(self):
        """
        A TCP endpoint on all IPv4 addresses, explicit or by default, is reached on
        127.0.0.1.
        """
        self.assertEqual(cli.urlFromEndpoint("tcp:8790:interface=0.0.0.0"),
                         "http://127.0.0.1:8790")
        self.assertEqual(cli.urlFromEndpoint("tcp:8790"), "http://127.0.0.1:8790")

    def test_tcp6Escaped(self):
        """
        C{tcp6} with an escaped IPv6 interface gives a bracketed IPv6 URL.
        """
        self.assertEqual(cli.urlFromEndpoint(r"tcp6:8790:interface=2001\:db8\:\:5"),
                         "http://[2001:db8::5]:8790")
        self.assertEqual(cli.urlFromEndpoint(r"tcp6:port=8791:interface=\:\:1"),
                         "http://[::1]:8791")

    def test_ipv6Wildcard(self):
        """
        A C{tcp6} endpoint on all IPv6 addresses, explicit (C{::}) or by default, is
        reached on ::1; so is C{tcp} on C{::}.
        """
        self.assertEqual(cli.urlFromEndpoint(r"tcp6:8790:interface=\:\:"), "http://[::1]:8790")
        self.assertEqual(cli.urlFromEndpoint("tcp6:8790"), "http://[::1]:8790")
        self.assertEqual(cli.urlFromEndpoint(r"tcp:8790:interface=\:\:"), "http://[::1]:8790")

    def test_ssl(self):
        """
        An C{ssl} endpoint is reached over https.
        """
        self.assertEqual(
            cli.urlFromEndpoint("ssl:8443:privateKey=key.pem:interface=127.0.0.1"),
            "https://127.0.0.1:8443")

    def test_unix(self):
        """
        A UNIX socket endpoint is refused with a message that says to use --url.
        """
        error = self.assertRaises(cli.CLIError, cli.urlFromEndpoint, "unix:/run/ps.sock")
        self.assertIn("not supported by the CLI", str(error))
        self.assertIn("use --url", str(error))

    def test_unknownType(self):
        """
        An endpoint type the CLI does not know is refused, naming the endpoint.
        """
        error = self.assertRaises(cli.CLIError, cli.urlFromEndpoint,
                                  "systemd:domain=INET:index=0")
        self.assertIn("'systemd:domain=INET:index=0'", str(error))
        self.assertIn("use --url", str(error))

    def test_noPort(self):
        """
        An endpoint with no port, or a port that is not a number in 1-65535, is refused.
        """
        for description in ("tcp:interface=127.0.0.1", "tcp:http", "tcp:0", "tcp:70000"):
            error = self.assertRaises(cli.CLIError, cli.urlFromEndpoint, description)
            self.assertIn("no usable port", str(error), description)


class URLFromConfigTests(SynchronousTestCase):
    """
    L{cli.urlFromConfig} reads only the C{status} key of a config file.
    """

    def config(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_listen(self):
        """
        C{status.listen} gives the URL; the services are not checked.
        """
        path = self.config("services: [{name: '!!', protocol: nope}]\n"
                           "status:\n  listen: tcp:9100:interface=127.0.0.5\n")
        self.assertEqual(cli.urlFromConfig(path), "http://127.0.0.5:9100")

    def test_defaults(self):
        """
        With no C{status} key, an empty one, or one without C{listen}, the default
        endpoint is used (as L{portserver.config.parseConfig} does).
        """
        for text in ("services: []\n", "services: []\nstatus:\n",
                     "services: []\nstatus: {}\n"):
            self.assertEqual(cli.urlFromConfig(self.config(text)), "http://127.0.0.1:8790",
                             text)

    def test_off(self):
        """
        C{status: false} and C{status.listen: null} turn the service off: an error that
        says so and names the file.
        """
        for text in ("status: false\n", "status:\n  listen: null\n"):
            path = self.config(text)
            error = self.assertRaises(cli.CLIError, cli.urlFromConfig, path)
            self.assertIn("turns the status service off", str(error))
            self.assertIn(path, str(error))

    def test_missingFile(self):
        """
        A config that cannot be read is an error naming the file and the reason.
        """
        path = os.path.join(self.mktemp(), "nope.yaml")
        error = self.assertRaises(cli.CLIError, cli.urlFromConfig, path)
        self.assertEqual(str(error),
                         f"cannot read the config file {path}: No such file or directory")

    def test_badYAML(self):
        """
        A config that is not YAML is a one-line error naming the file.
        """
        path = self.config("status: [\n")
        error = self.assertRaises(cli.CLIError, cli.urlFromConfig, path)
        self.assertIn(path, str(error))
        self.assertNotIn("\n", str(error))


class HumanDurationTests(SynchronousTestCase):
    """
    L{cli.humanDuration} writes ages and durations the way people read them.
    """

    def test_forms(self):
        """
        Seconds, minutes and seconds, hours and minutes, days and hours; nothing negative.
        """
        cases = [(-3, "0s"), (0, "0s"), (0.25, "<1s"), (5, "5s"), (59.9, "59s"),
                 (192, "3m12s"), (3599, "59m59s"), (7440, "2h04m"), (86400 * 3 + 7 * 3600,
                                                                      "3d07h")]
        self.assertEqual([(s, cli.humanDuration(s)) for s, _ in cases], cases)


class RenderTests(SynchronousTestCase):
    """
    C{portserver status} against canned JSON: the table, the filters and C{--json}.
    """

    def test_table(self):
        """
        Each listener is a line, its connections are indented under it (IPv6 hosts in
        brackets, ages from C{now}, bytes in and out), then the summary; exit 0.
        """
        result = run("status", "--url", URL)
        self.assertEqual((result.status, result.stderr), (0, ""))
        self.assertEqual(result.stdout.splitlines(), [
            "portserver 0.1.0 at http://127.0.0.1:8790, config /etc/portserver.yaml",
            "",
            "listeners and live connections:",
            "echo  echo  tcp  127.0.0.1:7  well-known  privileged    1 live",
            "    echo  tcp  127.0.0.1:7  127.0.0.2:40001  5s      in 12    out 12",
            "echo  echo  udp  127.0.0.1:7  well-known  privileged    1 live",
            "    echo  udp  127.0.0.1:7  127.0.0.3:5353   2h04m   in 30    out 30",
            "web   http  tcp  [::1]:8080   registered  unprivileged  1 live",
            "    web   tcp  [::1]:8080   [::1]:51234      3m12s  in 100  out 2048",
            "",
            "summary:",
        ] + SUMMARY_LINES)

    def test_outbound(self):
        """
        A connection the server relays (forward) shows the outbound endpoint pair on a
        line of its own under it, with its bytes.
        """
        forwarded = copy.deepcopy(TCP)
        forwarded[1]["outbound"] = {
            "id": "out-9", "inbound": "tcp-4", "service": "web", "protocol": "forward",
            "transport": "tcp", "local": end("127.0.0.1", 52000, "dynamic", False),
            "remote": end("127.0.0.1", 8081, "registered", False),
            "opened": NOW - 191, "bytes_in": 2048, "bytes_out": 100}

        def fetch(url):
            answer = reply(url)
            if url.endswith("/api/connections"):
                answer["connections"] = forwarded
            return answer

        lines = run("status", "--url", URL, fetch=fetch).stdout.splitlines()
        at = lines.index("    web   tcp  [::1]:8080   [::1]:51234      3m12s  in 100  out 2048")
        self.assertEqual(lines[at + 1],
                         "      via 127.0.0.1:52000 -> 127.0.0.1:8081  in 2048  out 100")

    def test_fetches(self):
        """
        Live mode asks for the listeners, TCP connections, UDP flows and the summary,
        under the given URL (a trailing slash is dropped).
        """
        result = run("status", "--url", URL + "/")
        self.assertEqual(result.urls, [
            URL + "/api/listeners", URL + "/api/connections",
            URL + "/api/connections?transport=udp", URL + "/api/summary"])

    def test_portOffset(self):
        """
        A listener moved by C{--port-offset} shows its configured port too.
        """
        moved = dict(LISTENERS[0], port=10007, **{"class": "registered", "privileged": False})
        result = run("status", "--url", URL, fetch=lambda url: (
            {"listeners": [moved]} if url.endswith("/api/listeners") else reply(url)))
        self.assertIn("echo  echo  tcp  127.0.0.1:10007 (from 7)  registered  unprivileged"
                      "  1 live", result.stdout.splitlines())

    def test_service(self):
        """
        C{--service} keeps that service's listeners and connections, asks the server for
        that service alone, and says the summary is the whole server's.
        """
        result = run("status", "--url", URL, "--service", "web")
        lines = result.stdout.splitlines()
        self.assertEqual(lines[3:8], [
            "web  http  tcp  [::1]:8080  registered  unprivileged  1 live",
            "    web  tcp  [::1]:8080  [::1]:51234  3m12s  in 100  out 2048",
            "",
            "summary (whole server):",
            SUMMARY_LINES[0],
        ])
        self.assertIn(URL + "/api/connections?service=web", result.urls)

    def test_serviceFilteredLocally(self):
        """
        C{--service} filters the replies itself, even from a server that ignores
        C{?service=}.
        """
        def ignoring(url):
            parts = urlsplit(url)
            query = [(k, v) for k, v in parse_qsl(parts.query) if k != "service"]
            return reply(parts._replace(query=urlencode(query)).geturl())
        result = run("status", "--url", URL, "--service", "web", "--json", fetch=ignoring)
        data = json.loads(result.stdout)
        self.assertEqual([c["id"] for c in data["connections"]], ["tcp-4"])

    def test_class(self):
        """
        C{--class} keeps the listeners on ports of that class and their connections.
        """
        result = run("status", "--url", URL, "--class", "well-known")
        self.assertEqual(result.stdout.splitlines()[3:8], [
            "echo  echo  tcp  127.0.0.1:7  well-known  privileged  1 live",
            "    echo  tcp  127.0.0.1:7  127.0.0.2:40001  5s     in 12  out 12",
            "echo  echo  udp  127.0.0.1:7  well-known  privileged  1 live",
            "    echo  udp  127.0.0.1:7  127.0.0.3:5353   2h04m  in 30  out 30",
            "",
        ])

    def test_classNone(self):
        """
        A class no listener has leaves the table saying that nothing matches.
        """
        result = run("status", "--url", URL, "--class", "dynamic")
        self.assertEqual(result.stdout.splitlines()[2:5],
                         ["listeners and live connections:", "no listeners match", ""])

    def test_closed(self):
        """
        C{--closed} asks for the recently closed connections and shows each under its
        listener with how long it lasted and why it closed, instead of its age.
        """
        result = run("status", "--url", URL, "--closed")
        self.assertEqual(result.urls[1:], [URL + "/api/connections?state=closed",
                                           URL + "/api/summary"])
        self.assertEqual(result.stdout.splitlines()[2:9], [
            "listeners and recently closed connections:",
            "echo  echo  tcp  127.0.0.1:7  well-known  privileged    1 live",
            "    echo  tcp  127.0.0.1:7  127.0.0.2:40000  lasted <1s    client-closed"
            "   in 5     out 5",
            "echo  echo  udp  127.0.0.1:7  well-known  privileged    1 live",
            "web   http  tcp  [::1]:8080   registered  unprivileged  1 live",
            "    web   tcp  [::1]:8080   [::1]:51000      lasted 1m05s  server-closed"
            "  in 80  out 4096",
            "",
        ])

    def test_orphan(self):
        """
        A connection that matches no listener is still shown, under C{(no listener)}.
        """
        stray = dict(TCP[0], service="gone")
        def fetch(url):
            if "/api/connections" not in url:
                return reply(url)
            return {"connections": [] if "transport=udp" in url else [stray]}
        result = run("status", "--url", URL, "--service", "gone", fetch=fetch)
        self.assertEqual(result.stdout.splitlines()[3:6], [
            "no listeners match",
            "(no listener)",
            "    gone  tcp  127.0.0.1:7  127.0.0.2:40001  5s  in 12  out 12",
        ])

    def test_json(self):
        """
        C{--json} prints one JSON object holding the listeners, the connections (TCP and
        UDP) and the summary, as the server sent them.
        """
        result = run("status", "--url", URL, "--json")
        self.assertEqual(result.status, 0)
        self.assertEqual(json.loads(result.stdout),
                         {"listeners": LISTENERS, "connections": TCP + UDP,
                          "summary": SUMMARY, "connections_total": 3})

    def test_jsonFiltered(self):
        """
        C{--json} output has the filters applied.
        """
        result = run("status", "--url", URL, "--json", "--class", "registered", "--closed")
        data = json.loads(result.stdout)
        self.assertEqual([l["service"] for l in data["listeners"]], ["web"])
        self.assertEqual([c["id"] for c in data["connections"]], ["tcp-2"])
        self.assertEqual(data["summary"], SUMMARY)

    def test_bundledConfig(self):
        """
        Without C{--url} or C{--config}, the URL comes from the bundled config.
        """
        result = run("status")
        self.assertEqual(result.status, 0)
        self.assertEqual(result.urls[0],
                         cli.urlFromConfig(bundledConfigPath()) + "/api/listeners")

    def test_config(self):
        """
        C{--config} gives the URL through the file's C{status.listen}.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("status:\n  listen: tcp:9200:interface=127.0.0.6\n")
        result = run("status", "--config", path)
        self.assertEqual(result.urls[0], "http://127.0.0.6:9200/api/listeners")


def manyFlows(count: int) -> list[dict]:
    """
    C{count} live echo UDP flows from 10.0.x.y:5000, ids udp-1000 on.
    """
    return [dict(UDP[0], id=f"udp-{1000 + i}",
                 remote=end(f"10.0.{i >> 8}.{i & 255}", 5000, "registered", False))
            for i in range(count)]


class PagingTests(SynchronousTestCase):
    """
    C{portserver status} against a server with more connections than a page: the first
    page, and how many there are; C{--all} pages through every one.
    """

    def serveFlows(self, flows: list[dict]):
        def fetch(url):
            parts = urlsplit(url)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/api/connections" and query.get("transport") == "udp":
                offset, limit = int(query.get("offset", 0)), int(query.get("limit", 1000))
                return {"connections": copy.deepcopy(flows[offset:offset + limit]),
                        "total": len(flows), "offset": offset, "limit": limit}
            return reply(url)
        return fetch

    def test_firstPageAndHowMany(self):
        """
        With 2500 UDP flows, one request each for TCP and UDP shows the first page (1000
        flows) and a line saying 1002 of 2502 live connections are shown, and how to see
        them all.
        """
        result = run("status", "--url", URL, fetch=self.serveFlows(manyFlows(2500)))
        self.assertEqual(result.status, 0, result.stderr)
        self.assertEqual(result.urls, [
            URL + "/api/listeners", URL + "/api/connections",
            URL + "/api/connections?transport=udp", URL + "/api/summary"])
        self.assertIn("showing 1002 of 2502 live connections (the first page of each kind); "
                      "--all lists every one", result.stdout.splitlines())
        self.assertEqual(result.stdout.count(" 10.0."), 1000)

    def test_all(self):
        """
        C{--all} asks for the pages after the first by offset, 2000 at a time, until it
        has every flow; nothing says some are missing; C{--json} has the total.
        """
        flows = manyFlows(6000)
        result = run("status", "--url", URL, "--all", "--json",
                     fetch=self.serveFlows(flows))
        self.assertEqual(result.urls[3:6], [
            URL + "/api/connections?transport=udp&limit=2000&offset=1000",
            URL + "/api/connections?transport=udp&limit=2000&offset=3000",
            URL + "/api/connections?transport=udp&limit=2000&offset=5000"])
        self.assertEqual(result.urls[6], URL + "/api/summary")
        data = json.loads(result.stdout)
        self.assertEqual(data["connections_total"], 6002)
        self.assertEqual(len(data["connections"]), 6002)
        text = run("status", "--url", URL, "--all", fetch=self.serveFlows(flows)).stdout
        self.assertNotIn("showing", text)

    def test_allWhileChanging(self):
        """
        Flows that get a datagram between two pages move to the end of the server's
        order (least recently seen first): a flow met again on a later page is listed
        once, and paging ends when a page comes back empty or the total is reached.
        """
        flows = manyFlows(1500)
        def moving(url):
            answer = self.serveFlows(flows)(url)
            if "transport=udp" in url and "offset" not in url:
                moved = flows[:300]  # seen again after the first page was read
                del flows[:300]
                flows.extend(moved)
            return answer
        result = run("status", "--url", URL, "--all", "--json", fetch=moving)
        ids = [c["id"] for c in json.loads(result.stdout)["connections"]
               if c["transport"] == "udp"]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(ids[-1], "udp-2499")
        self.assertEqual(len([u for u in result.urls if "offset" in u]), 1)

    def test_serverWithoutPaging(self):
        """
        A server whose reply has no C{total} (before paging) is taken as complete.
        """
        def old(url):
            answer = reply(url)
            answer.pop("total", None)
            return answer
        result = run("status", "--url", URL, "--all", fetch=old)
        self.assertEqual(result.status, 0)
        self.assertEqual(len(result.urls), 4)
        self.assertNotIn("showing", result.stdout)


class ErrorTests(SynchronousTestCase):
    """
    Every failure is one line on stderr and exit status 1 (2 for bad usage); nothing on
    stdout, never a traceback.
    """

    def assertOneLine(self, result: Run, line: str) -> None:
        self.assertEqual((result.status, result.stdout, result.stderr), (1, "", line + "\n"))

    def test_fetchFails(self):
        """
        A request that fails names the URL and the reason.
        """
        def refused(url):
            raise cli.FetchError("Connection refused")
        self.assertOneLine(run("status", "--url", URL, fetch=refused),
                           f"portserver status: no status service answers at {URL} "
                           "(Connection refused)")

    def test_wrongShape(self):
        """
        JSON that is not what the status service sends is reported, not a traceback.
        """
        self.assertOneLine(run("status", "--url", URL, fetch=lambda url: {"hello": 1}),
                           f"portserver status: no status service answers at {URL} "
                           "(the reply to /api/listeners has no 'listeners' list)")

    def test_notHTTP(self):
        """
        A URL that is not http or https is refused before anything is fetched.
        """
        result = run("status", "--url", "127.0.0.1:8790")
        self.assertOneLine(result, "portserver status: no status service answers at "
                                   "127.0.0.1:8790 (not an http:// or https:// URL)")
        self.assertEqual(result.urls, [])

    def test_badConfig(self):
        """
        A config file that cannot be read: one line naming the file.
        """
        path = os.path.join(self.mktemp(), "missing.yaml")
        self.assertOneLine(run("status", "--config", path),
                           f"portserver status: cannot read the config file {path}: "
                           "No such file or directory")

    def test_statusOff(self):
        """
        A config that turns the status service off: one line saying so.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("status: false\n")
        self.assertOneLine(run("status", "--config", path),
                           f"portserver status: the config file {path} turns the status "
                           "service off (status: false); nothing to ask")

    def test_usage(self):
        """
        No subcommand, or a bad option, is a usage error: exit 2, on stderr.
        """
        for argv in ([], ["status", "--class", "huge"], ["status", "--url", URL,
                                                         "--config", "x"]):
            result = run(*argv)
            self.assertEqual((result.status, result.stdout), (2, ""), argv)
            self.assertIn("usage: portserver", result.stderr)

    def test_reasons(self):
        """
        The reasons of failed requests are short: the OS's words, or C{timed out}.
        """
        self.assertEqual(cli._reason(urllib.error.URLError(
            ConnectionRefusedError(111, "Connection refused"))), "Connection refused")
        self.assertEqual(cli._reason(urllib.error.URLError(TimeoutError("timed out"))),
                         "timed out")
        self.assertEqual(cli._reason(TimeoutError()), "timed out")
        self.assertEqual(cli._reason(urllib.error.URLError("unknown url type: x")),
                         "unknown url type: x")


class NetworkTests(SynchronousTestCase):
    """
    C{portserver status} over real sockets on 127.0.0.1.
    """

    def serve(self, responses) -> str:
        """
        Serve C{responses} (path, without the query, to C{(status, body)}) from an HTTP
        server on 127.0.0.1 in a thread, stopped at cleanup; return its URL.
        """
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status, body = responses(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return serveHTTP(self, Handler)

    def test_nothingListens(self):
        """
        A port where nothing listens: exit 1, one line naming the URL and the refusal,
        nothing on stdout.
        """
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))  # held, but not listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main(["status", "--url", url], stdout=stdout, stderr=stderr)
        self.assertEqual((status, stdout.getvalue(), stderr.getvalue()),
                         (1, "", f"portserver status: no status service answers at {url} "
                                 "(Connection refused)\n"))

    def test_roundTrip(self):
        """
        Against a real HTTP server serving the canned JSON, the output is what the same
        JSON gives through an injected fetch.
        """
        def responses(path):
            try:
                return 200, json.dumps(reply("http://x" + path)).encode()
            except cli.FetchError:
                return 404, b"{}"

        url = self.serve(responses)
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main(["status", "--url", url], stdout=stdout, stderr=stderr,
                          now=lambda: NOW)
        self.assertEqual((status, stderr.getvalue()), (0, ""))
        expected = run("status", "--url", url).stdout
        self.assertEqual(stdout.getvalue(), expected)
        self.assertIn("    web   tcp  [::1]:8080   [::1]:51234      3m12s  in 100  out 2048",
                      expected.splitlines())

    def test_httpError(self):
        """
        A server that answers with an HTTP error: exit 1, one line with the status and
        the path.
        """
        url = self.serve(lambda path: (404, b"no such thing"))
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main(["status", "--url", url], stdout=stdout, stderr=stderr)
        self.assertEqual((status, stdout.getvalue(), stderr.getvalue()),
                         (1, "", f"portserver status: no status service answers at {url} "
                                 "(HTTP 404 Not Found for /api/listeners)\n"))

    def test_notJSON(self):
        """
        A server that answers with something other than a JSON object: exit 1, one line.
        """
        for body, why in ((b"<html>hello</html>", "is not JSON"),
                          (b"[1, 2]", "is not a JSON object")):
            url = self.serve(lambda path: (200, body))
            stdout, stderr = io.StringIO(), io.StringIO()
            status = cli.main(["status", "--url", url], stdout=stdout, stderr=stderr)
            self.assertEqual((status, stdout.getvalue(), stderr.getvalue()),
                             (1, "", f"portserver status: no status service answers at "
                                     f"{url} (the reply to /api/listeners {why})\n"))


class FindTheServerTests(SynchronousTestCase):
    """
    Without C{--url} or C{--config}, C{portserver status} asks the server whose runtime
    file is beside the pid file, while that file's pid is a live portserver.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        self.pidfile = os.path.join(self.directory, "twistd.pid")
        self.config = os.path.join(self.directory, "my.yaml")
        with open(self.config, "w") as f:
            f.write("status:\n  listen: tcp:0:interface=127.0.0.1\n")
        self.commandLines = {4242: ["/venv/bin/twistd", "portserver", "-c", "my.yaml"]}

    def writeRuntime(self, pid=4242, url="http://127.0.0.1:40001"):
        with open(os.path.join(self.directory, "twistd.portserver.json"), "w") as f:
            json.dump({"pid": pid, "config": self.config, "status_url": url,
                       "pidfile": self.pidfile}, f)

    def readCommandLine(self, pid):
        if pid not in self.commandLines:
            raise ProcessLookupError(pid)
        return self.commandLines[pid]

    def status(self, *argv, summary=None):
        urls = []

        def fetch(url):
            urls.append(url)
            if urlsplit(url).path == "/api/summary" and summary is not None:
                return summary
            return reply(url)

        stdout, stderr = io.StringIO(), io.StringIO()
        code = cli.main(["status", "--pidfile", self.pidfile, *argv], stdout=stdout,
                        stderr=stderr, fetch=fetch, now=lambda: NOW, environ={},
                        readCommandLine=self.readCommandLine)
        return code, stdout.getvalue(), stderr.getvalue(), urls

    def test_runtimeFile(self):
        """
        The runtime file's status URL is asked (a port no config names).
        """
        self.writeRuntime()
        code, out, err, urls = self.status()
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(urls[0], "http://127.0.0.1:40001/api/listeners")

    def test_explicitWins(self):
        """
        C{--url} and C{--config} win over the runtime file.
        """
        self.writeRuntime()
        self.assertEqual(self.status("--url", URL)[3][0], f"{URL}/api/listeners")
        other = os.path.join(self.directory, "other.yaml")
        with open(other, "w") as f:
            f.write("status:\n  listen: tcp:9200:interface=127.0.0.6\n")
        self.assertEqual(self.status("--config", other)[3][0],
                         "http://127.0.0.6:9200/api/listeners")

    def test_staleRuntimeFile(self):
        """
        A runtime file whose pid is gone, or now another program, is ignored with a
        note on stderr; the bundled config is asked instead.
        """
        bundled = cli.urlFromConfig(bundledConfigPath()) + "/api/listeners"
        self.writeRuntime(pid=77)
        code, out, err, urls = self.status()
        self.assertEqual((code, urls[0]), (0, bundled))
        self.assertIn("twistd.portserver.json: its pid 77 is not running (stale)", err)
        self.commandLines[77] = ["sleep", "100"]
        code, out, err, urls = self.status()
        self.assertEqual(urls[0], bundled)
        self.assertIn("its pid 77 is not portserver (sleep 100)", err)

    def test_anotherServerAnswers(self):
        """
        A status service that reports another pid than the runtime file's is another
        server's (its port was reused): exit 1, saying so.
        """
        self.writeRuntime()
        code, out, err, urls = self.status(summary=dict(SUMMARY, pid=99))
        self.assertEqual((code, out), (1, ""))
        self.assertIn("is portserver pid 99, not pid 4242", err)


class VersionTests(SynchronousTestCase):
    """
    C{portserver --version}.
    """

    def test_version(self):
        """
        C{--version} prints C{portserver} and portserver's version, and exits 0.
        """
        from portserver import __version__
        result = run("--version")
        self.assertEqual((result.status, result.stdout, result.stderr),
                         (0, f"portserver {__version__}\n", ""))
