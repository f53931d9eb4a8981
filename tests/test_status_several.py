"""
Tests for C{portserver status} of several servers in one view (C{--url A --url B},
or a config's C{status.urls}): the merged table, C{{"servers": [...]}}, a server that
is down, the exit status, and the C{status.urls} key; against canned JSON, and against
real status services on 127.0.0.1 with one of them down.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portserver.config import StatusSpec, parseConfig, statusURLProblem
from portserver.server import PortServer
from portserver.status import cli
from portserver.status.web import StatusService
from tests.support import makePlan, spec
from tests.test_cli import NOW, reply, run
from tests.test_status_web import DEADLINE, EchoClient

A, B, C = "http://127.0.0.1:8790", "http://127.0.0.1:8791", "http://127.0.0.1:8792"


def fleet(down=(), unauthorized=(), only=None):
    """
    A fetch for three servers: C{A} answers the canned JSON of L{tests.test_cli},
    C{B} the same with only its C{web} listener and connections, C{C} and those in
    C{down} refuse connections, those in C{unauthorized} answer 401.

    @param only: the fetched URLs are appended to this list, with their token.
    """
    def fetch(url, token=None):
        if only is not None:
            only.append((url, token))
        base = url[:url.index("/api/")]
        if base in down or base == C:
            raise cli.FetchError("Connection refused")
        if base in unauthorized:
            raise cli.Unauthorized("HTTP 401 Unauthorized for /api/listeners")
        answer = reply(url)
        if base != B:
            return answer
        if "/api/summary" in url:
            answer.update(accepted_total=2, flags=[])
            answer["listeners"]["total"] = answer["connections"]["total"] = 1
        else:
            key = "listeners" if "/api/listeners" in url else "connections"
            answer[key] = [r for r in answer[key] if r["service"] == "web"]
            if "total" in answer:
                answer["total"] = len(answer[key])
        return answer
    return fetch


class MergedTableTests(SynchronousTestCase):
    """
    Several C{--url}s give one table with a server column, and totals per server and
    overall.
    """

    def test_table(self):
        """
        Two servers that answer and one that does not: the table lists the first's
        listeners and connections, then the second's, each line starting with its
        server; the third has one C{down} line with the reason. The totals give each
        server's numbers and their sums, the flags name their server, and the exit
        status is 1, with the down server on stderr.
        """
        result = run("status", "--url", A, "--url", B + "/", "--url", C, fetch=fleet())
        self.assertEqual(result.status, cli.EXIT_FAILED)
        self.assertEqual(result.stderr, f"portserver status: no status service answers at "
                                        f"{C} (Connection refused)\n")
        self.assertEqual(result.stdout.splitlines(), [
            "portserver status of 3 servers: 2 up, 1 down",
            "",
            "listeners and live connections:",
            "127.0.0.1:8790  echo  echo  tcp  127.0.0.1:7  well-known  privileged    1 live",
            "127.0.0.1:8790      echo  tcp  127.0.0.1:7  127.0.0.2:40001  5s      in 12    out 12",
            "127.0.0.1:8790  echo  echo  udp  127.0.0.1:7  well-known  privileged    1 live",
            "127.0.0.1:8790      echo  udp  127.0.0.1:7  127.0.0.3:5353   2h04m   in 30    out 30",
            "127.0.0.1:8790  web   http  tcp  [::1]:8080   registered  unprivileged  1 live",
            "127.0.0.1:8790      web   tcp  [::1]:8080   [::1]:51234      3m12s  in 100  out 2048",
            "127.0.0.1:8791  web   http  tcp  [::1]:8080   registered  unprivileged  1 live",
            "127.0.0.1:8791      web   tcp  [::1]:8080   [::1]:51234      3m12s  in 100  out 2048",
            "127.0.0.1:8792  down: Connection refused",
            "",
            "totals:",
            "  127.0.0.1:8790  portserver 0.1.0  listeners 3  live 3  accepted 5  closed 2  "
            "flags 1  uptime 2h05m",
            "  127.0.0.1:8791  portserver 0.1.0  listeners 1  live 1  accepted 2  closed 2  "
            "flags 0  uptime 2h05m",
            "  127.0.0.1:8792  down",
            "  overall         2 of 3 servers    listeners 4  live 4  accepted 7  closed 4  "
            "flags 1",
            "",
            "flags: 1",
            "  127.0.0.1:8790  listener-in-dynamic-range: x listens on 50000, in the dynamic "
            "range the OS uses for outgoing connections",
        ])

    def test_allUp(self):
        """
        When every server answers: exit 0, nothing on stderr.
        """
        result = run("status", "--url", A, "--url", B, fetch=fleet())
        self.assertEqual((result.status, result.stderr), (cli.EXIT_OK, ""))
        self.assertTrue(result.stdout.startswith("portserver status of 2 servers: 2 up, "
                                                 "0 down\n"))

    def test_allDown(self):
        """
        When no server answers, each is shown as down, and the exit status is 1.
        """
        result = run("status", "--url", A, "--url", B, fetch=fleet(down=(A, B)))
        self.assertEqual(result.status, cli.EXIT_FAILED)
        self.assertIn("127.0.0.1:8790  down: Connection refused", result.stdout)
        self.assertIn("127.0.0.1:8791  down: Connection refused", result.stdout)
        self.assertIn("  overall         0 of 2 servers  listeners 0  live 0  accepted 0  "
                      "closed 0  flags 0", result.stdout)
        self.assertEqual(len(result.stderr.splitlines()), 2)

    def test_filtered(self):
        """
        C{--service} and C{--class} filter every server's table; the totals are the
        whole servers', and say so.
        """
        result = run("status", "--url", A, "--url", B, "--service", "echo", "--class",
                     "well-known", fetch=fleet())
        lines = result.stdout.splitlines()
        self.assertIn("127.0.0.1:8791  no listeners match", lines)
        self.assertIn("totals (whole servers):", lines)
        self.assertEqual([line for line in lines if "web" in line], [])
        self.assertEqual(len([line for line in lines if line.startswith("127.0.0.1:8790")]),
                         4)

    def test_closed(self):
        """
        C{--closed} shows every server's recently closed connections.
        """
        result = run("status", "--url", A, "--url", B, "--closed", fetch=fleet())
        self.assertIn("listeners and recently closed connections:", result.stdout)
        self.assertIn("lasted 1m05s  server-closed", result.stdout)

    def test_paged(self):
        """
        A server with more connections than were fetched is named under the table.
        """
        def fetch(url, token=None):
            answer = fleet()(url)
            if url.startswith(B) and "/api/connections" in url:
                answer["total"] = 5000  # for TCP, and 5000 UDP flows
            return answer

        result = run("status", "--url", A, "--url", B, fetch=fetch)
        self.assertIn("127.0.0.1:8791: showing 1 of 10000 live connections\n(the first "
                      "page of each kind); --all lists every one\n", result.stdout)

    def test_sameURLOnce(self):
        """
        A URL given twice (with or without a trailing slash) is one server: one
        C{--url} given twice is the single-server report.
        """
        self.assertEqual(run("status", "--url", A, "--url", A + "/").stdout,
                         run("status", "--url", A).stdout)

    def test_unauthorized(self):
        """
        A server that wants a token is shown as such, the others are printed.
        """
        result = run("status", "--url", A, "--url", B, fetch=fleet(unauthorized=(B,)))
        self.assertEqual(result.status, cli.EXIT_FAILED)
        self.assertIn("127.0.0.1:8791  down: wants a token", result.stdout)
        self.assertIn(f"portserver status: the status service at {B} wants a token",
                      result.stderr)

    def test_tokenToEveryServer(self):
        """
        The token (here from C{--token-file}) is sent to every server.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret-token-of-the-fleet\n")
        asked = []
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main(["status", "--url", A, "--url", B, "--token-file", path],
                          stdout=stdout, stderr=stderr, fetch=fleet(only=asked),
                          now=lambda: NOW, environ={})
        self.assertEqual((status, stderr.getvalue()), (0, ""))
        self.assertEqual({base[:len(A)] for base, _ in asked}, {A, B})
        self.assertEqual({token for _, token in asked}, {"s3cret-token-of-the-fleet"})

    def test_askedAtOnce(self):
        """
        The servers are asked at the same time: the first server's answer waits until
        the second has been asked (without that, this would fail after the deadline),
        and the answers still come in the order of the URLs.
        """
        secondAsked = threading.Event()

        def ask(url):
            if url == A and not secondAsked.wait(DEADLINE):
                raise cli.NotAnswered("the second server was not asked meanwhile", "late")
            if url == B:
                secondAsked.set()
            return {"connections": [], "url": url}

        answers = cli.askServers([A, B], ask)
        self.assertEqual([a.url for a in answers], [A, B])
        self.assertEqual([a.error for a in answers], [None, None])


class JSONTests(SynchronousTestCase):
    """
    C{--json} with several servers: C{{"servers": [...]}}.
    """

    def test_servers(self):
        """
        Each server's item is C{url}, C{ok: true} and what the single-server C{--json}
        gives; a server that does not answer has C{ok: false} and C{error}, the line
        stderr has too.
        """
        result = run("status", "--url", A, "--url", C, "--json", fetch=fleet())
        self.assertEqual(result.status, cli.EXIT_FAILED)
        single = json.loads(run("status", "--url", A, "--json").stdout)
        self.assertEqual(json.loads(result.stdout), {"servers": [
            {"url": A, "ok": True, **single},
            {"url": C, "ok": False,
             "error": f"no status service answers at {C} (Connection refused)"},
        ]})

    def test_singleUnchanged(self):
        """
        With one C{--url}, C{--json} is the single server's object, as before.
        """
        data = json.loads(run("status", "--url", A, "--json").stdout)
        self.assertEqual(sorted(data), ["connections", "connections_total", "listeners",
                                        "summary"])


class ConfigURLsTests(SynchronousTestCase):
    """
    The C{status.urls} key: checked by the server's config loader, and used by
    C{portserver status --config}.
    """

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def parse(self, text: str):
        path = self.write(text)
        _, status, _, _, problems = parseConfig(text, path, {})
        return path, status, [str(p) for p in problems]

    def test_parsed(self):
        """
        The URLs are kept in C{StatusSpec.urls}, without a trailing slash; they are
        not part of the spec's equality (only the CLI reads them: changing them needs
        no restart).
        """
        _, status, problems = self.parse(
            f"status:\n  urls: [{A}/, 'https://10.0.0.2:8443/portserver']\nservices: []\n")
        self.assertEqual(problems, [])
        self.assertEqual(status.urls, (A, "https://10.0.0.2:8443/portserver"))
        self.assertEqual(status, StatusSpec())

    def test_wrongItemsLocated(self):
        """
        Each wrong item is reported at its own line and column, with its number.
        """
        path, status, problems = self.parse(
            "status:\n  urls:\n    - http://127.0.0.1:8790\n    - ftp://host\n    - 7\n"
            "services: []\n")
        self.assertEqual(problems, [
            f"{path}:4:7: status: 'urls' item 2: 'ftp://host' is not an http:// or "
            "https:// URL",
            f"{path}:5:7: status: 'urls' item 3: must be a URL like "
            "'http://127.0.0.1:8790', not a whole number",
        ])
        self.assertEqual(status.urls, ())

    def test_notAListOrEmpty(self):
        """
        C{urls} must be a list of at least one URL; reported at the key.
        """
        path, _, problems = self.parse(f"status:\n  urls: {A}\nservices: []\n")
        self.assertEqual(problems, [f"{path}:2:3: status: 'urls' must be a list of status "
                                    "service URLs like 'http://127.0.0.1:8790', not str"])
        path, _, problems = self.parse("status:\n  urls: []\nservices: []\n")
        self.assertEqual(problems, [f"{path}:2:3: status: 'urls' must list at least one "
                                    "URL, or be left out"])

    def test_urlProblems(self):
        """
        L{statusURLProblem} takes base URLs, and says what is wrong with the rest.
        """
        for good in (A, "https://[::1]:8443", "http://status.example/portserver/"):
            self.assertIsNone(statusURLProblem(good), good)
        for bad, why in (("127.0.0.1:8790", "is not an http:// or https:// URL"),
                         ("http://", "names no host"),
                         ("http://h:99999", "has no valid port"),
                         ("http://u:p@h", "holds credentials"),
                         ("http://h/?x=1", "has a query or fragment"),
                         ("http://h/#top", "has a query or fragment"),
                         ("http://h /", "holds a space"),
                         (None, "must be a URL")):
            self.assertIn(why, statusURLProblem(bad), bad)

    def test_cliShowsConfigURLs(self):
        """
        C{portserver status --config} with C{status.urls} shows those servers in one
        view, with the config's token; C{status.listen} is not asked.
        """
        tokenFile = self.write("fleet-token-0123456789\n")
        path = self.write(f"status:\n  listen: null\n  token_file: {tokenFile}\n"
                          f"  urls: [{A}, {B}, {C}]\nservices: []\n")
        asked = []
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main(["status", "--config", path], stdout=stdout, stderr=stderr,
                          fetch=fleet(only=asked), now=lambda: NOW, environ={})
        self.assertEqual(status, cli.EXIT_FAILED)
        self.assertTrue(stdout.getvalue().startswith(
            "portserver status of 3 servers: 2 up, 1 down\n"))
        self.assertEqual({token for _, token in asked}, {"fleet-token-0123456789"})

    def test_cliOneConfigURL(self):
        """
        A config whose C{status.urls} lists one server gives that server's report, as
        C{--url} would.
        """
        path = self.write(f"status:\n  urls: [{B}]\nservices: []\n")
        asked = []
        result = run("status", "--config", path, fetch=lambda url: asked.append(url)
                     or reply(url))
        self.assertEqual(result.status, 0)
        self.assertTrue(result.stdout.startswith(f"portserver 0.1.0 at {B},"))
        self.assertEqual({url[:len(B)] for url in asked}, {B})

    def test_cliWrongConfigURL(self):
        """
        A wrong C{status.urls} item stops C{portserver status --config} with its place
        in the file, before anything is asked.
        """
        path = self.write(f"status:\n  urls:\n    - {A}\n    - 127.0.0.1:8791\n"
                          "services: []\n")
        result = run("status", "--config", path)
        self.assertEqual((result.status, result.stdout, result.urls), (1, "", []))
        self.assertEqual(result.stderr,
                         f"portserver status: the config file {path}:4:7: status: 'urls' "
                         "item 2: '127.0.0.1:8791' is not an http:// or https:// URL\n")

    def test_cliURLsNotAList(self):
        """
        C{status.urls} that is not a list stops the CLI too, at the key.
        """
        path = self.write(f"status:\n  urls: {A}\nservices: []\n")
        result = run("status", "--config", path)
        self.assertEqual(result.status, 1)
        self.assertIn(f"{path}:2:3: status: 'urls' must be a list", result.stderr)

    def test_reloadIgnoresURLs(self):
        """
        C{portserver reload --config} asks the config's own C{status.listen}, never
        the C{status.urls} (other servers).
        """
        path = self.write(f"status:\n  listen: tcp:8799:interface=127.0.0.1\n"
                          f"  urls: [{A}, {B}]\nservices: []\n")
        self.assertEqual(cli._statusBase(cli.makeParser(io.StringIO(), io.StringIO())
                                         .parse_args(["reload", "--config", path])),
                         "http://127.0.0.1:8799")


class RealServersTests(TestCase):
    """
    C{portserver status --url A --url B --url C} against two real portservers with
    their real status services on 127.0.0.1, and a third address where nothing
    listens.
    """

    timeout = 60

    def startServer(self, service: str) -> tuple[PortServer, str]:
        server = PortServer(makePlan(spec(service, protocol="echo", port=0,
                                          interface="127.0.0.1")), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        status = StatusService(server, "tcp:0:interface=127.0.0.1", reactor)
        status.privilegedStartService()
        status.startService()
        self.addCleanup(status.stopService)
        return server, f"http://127.0.0.1:{status.address.port}"

    def setUp(self):
        self.first, self.firstURL = self.startServer("echo")
        self.second, self.secondURL = self.startServer("echo2")
        down = socket.socket()
        self.addCleanup(down.close)
        down.bind(("127.0.0.1", 0))  # held, not listening: connections are refused
        self.downURL = f"http://127.0.0.1:{down.getsockname()[1]}"

    def status(self, *extra):
        """
        Run C{portserver status} on the three URLs in a thread (it blocks), while the
        reactor serves the status services.
        """
        argv = ["status", "--url", self.firstURL, "--url", self.downURL,
                "--url", self.secondURL, *extra]

        def main():
            stdout, stderr = io.StringIO(), io.StringIO()
            code = cli.main(argv, stdout=stdout, stderr=stderr, environ={})
            return code, stdout.getvalue(), stderr.getvalue()
        return deferToThread(main).addTimeout(DEADLINE, reactor)

    def abort(self, client: EchoClient):
        """
        Drop the client's connection, and wait until it is gone.
        """
        if not client.closed.called:
            client.transport.abortConnection()
        return client.closed

    @inlineCallbacks
    def test_oneDown(self):
        """
        With a live echo connection on the first server: the table lists both servers'
        listeners (and that connection, under the first), the third as down with the
        refusal; the totals count 1 live connection of 2 servers of 3; exit 1 with the
        down server on stderr. C{--json} gives the same three servers, the down one
        with its error.
        """
        port = self.first.addressOf("echo").port
        client = EchoClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                              client).addTimeout(DEADLINE, reactor)
        self.addCleanup(self.abort, client)
        client.transport.write(b"ping")
        yield client.echoed(4).addTimeout(DEADLINE, reactor)

        code, out, err = yield self.status()
        first, down, second = (cli.serverLabel(u) for u in
                               (self.firstURL, self.downURL, self.secondURL))
        self.assertEqual(code, cli.EXIT_FAILED)
        self.assertEqual(err, f"portserver status: no status service answers at "
                              f"{self.downURL} (Connection refused)\n")
        lines = out.splitlines()
        self.assertEqual(lines[0], "portserver status of 3 servers: 2 up, 1 down")
        tableRows = lines[3:lines.index("", 3)]
        self.assertEqual([row.split()[:2] for row in tableRows],
                         [[first, "echo"], [first, "echo"], [down, "down:"],
                          [second, "echo2"]])
        self.assertIn(f"127.0.0.1:{port}  127.0.0.1:", tableRows[1])
        self.assertTrue(tableRows[2].endswith("down: Connection refused"), tableRows[2])
        [overall] = [line for line in lines if line.startswith("  overall")]
        self.assertEqual(overall.split()[1:9],
                         ["2", "of", "3", "servers", "listeners", "2", "live", "1"])

        code, out, err = yield self.status("--json")
        self.assertEqual(code, cli.EXIT_FAILED)
        servers = json.loads(out)["servers"]
        self.assertEqual([(s["url"], s["ok"]) for s in servers],
                         [(self.firstURL, True), (self.downURL, False),
                          (self.secondURL, True)])
        self.assertEqual([c["service"] for c in servers[0]["connections"]], ["echo"])
        self.assertEqual([l["service"] for l in servers[2]["listeners"]], ["echo2"])
        self.assertEqual(servers[1]["error"], f"no status service answers at "
                                              f"{self.downURL} (Connection refused)")
