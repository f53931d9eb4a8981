"""
Tests for the status service's access control: the C{status.token}, C{token_file},
C{metrics_token} and C{metrics_token_file} settings and the loopback rule of the config,
the bearer-token guard and the security headers of the web service, the refusal to bind
a non-loopback address without a token, and the CLI's token options.

The web tests drive the real resources through a real L{Site} and L{HTTPChannel} over a
L{StringTransport} (as L{tests.test_status_web} does); the CLI tests inject a recording
fetch, except those of L{cli.fetchJSON}, which talk to an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hmac
import io
import os
from http.server import BaseHTTPRequestHandler

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from portserver.config import ConfigError, StatusSpec, parseConfig
from portserver.plan import loadPlan
from portserver.server import PortServer
from portserver.startup import StartupError
from portserver.status import cli
from portserver.status.access import MIN_TOKEN_LENGTH, endpointIsLocal
from portserver.status.web import (
    AccessTokens,
    Guard,
    StatusService,
    Summary,
    Unauthorized,
    isLocalAddress,
)
from tests.support import RULE, PortReactor, makePlan, serveHTTP, spec
from tests.test_cli import reply
from tests.test_status_web import STATUS_LISTEN, parseResponse

TOKEN = "main-token-0123456789abcdef"
METRICS_TOKEN = "metrics-token-fedcba9876543210"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


def settings(text: str, path: str = "test.yaml"):
    """
    The status settings and the problems (as an operator reads them) of a config of no
    services with C{text} after it, read from C{path}.
    """
    _, status, _, _, found = parseConfig("services: []\n" + text, path, {})
    return status, [str(p) for p in found]


def writeFile(path: str, content: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    return path


class TokenSettingsTests(SynchronousTestCase):
    """
    The C{status:} section's tokens: inline or in a file (relative to the config's
    directory), checked, and never shown.
    """

    def test_inlineTokens(self):
        """
        C{token} and C{metrics_token} become the spec's C{token} and C{metricsToken}.
        """
        status, found = settings(f"status:\n  token: {TOKEN}\n"
                                 f"  metrics_token: {METRICS_TOKEN}\n")
        self.assertEqual(found, [])
        self.assertEqual((status.token, status.metricsToken), (TOKEN, METRICS_TOKEN))

    def test_noTokensByDefault(self):
        """
        Without token settings (and on the default loopback listen) there is no token.
        """
        status, found = settings("")
        self.assertEqual((status.token, status.metricsToken, found), (None, None, []))

    def test_tokensNotInRepr(self):
        """
        Neither the spec's C{repr} nor L{AccessTokens}' shows a token.
        """
        status, _ = settings(f"status:\n  token: {TOKEN}\n  metrics_token: {METRICS_TOKEN}\n")
        for value in (status, AccessTokens.fromSpec(status)):
            self.assertNotIn(TOKEN, repr(value))
            self.assertNotIn(METRICS_TOKEN, repr(value))
            self.assertNotIn("token", repr(value).lower().replace("accesstokens", ""))

    def test_tokenFileRelativeToConfig(self):
        """
        C{token_file} and C{metrics_token_file} are read relative to the config file's
        directory (not the working directory), and stripped of surrounding white space.
        """
        directory = os.path.abspath(self.mktemp())
        writeFile(os.path.join(directory, "secrets", "token"), f"\n  {TOKEN}\n")
        writeFile(os.path.join(directory, "metrics"), METRICS_TOKEN + "\n")
        status, found = settings("status:\n  token_file: secrets/token\n"
                                 "  metrics_token_file: metrics\n",
                                 path=os.path.join(directory, "portserver.yaml"))
        self.assertEqual(found, [])
        self.assertEqual((status.token, status.metricsToken), (TOKEN, METRICS_TOKEN))

    def test_absoluteTokenFile(self):
        """
        An absolute C{token_file} is read where it says.
        """
        path = writeFile(os.path.abspath(self.mktemp()), TOKEN)
        status, found = settings(f"status:\n  token_file: {path}\n",
                                 path=os.path.join("elsewhere", "c.yaml"))
        self.assertEqual((status.token, found), (TOKEN, []))

    def test_tokenFileThroughLoadPlan(self):
        """
        Through L{loadPlan}, the door the server uses, a relative C{token_file} is found
        next to the config, and a missing one is a L{ConfigError} at its line and column.
        """
        directory = os.path.abspath(self.mktemp())
        writeFile(os.path.join(directory, "token"), TOKEN)
        config = writeFile(os.path.join(directory, "c.yaml"),
                           "services: []\nstatus:\n  listen: tcp:8790\n  token_file: token\n")
        plan = loadPlan(config, {}, rule=RULE, dualStack=True)
        self.assertEqual(plan.config.status.token, TOKEN)
        os.remove(os.path.join(directory, "token"))
        error = self.assertRaises(ConfigError, loadPlan, config, {}, rule=RULE,
                                  dualStack=True)
        [problem] = error.problems
        self.assertEqual(str(problem), f"{config}:4:15: status: 'token_file': cannot read "
                                       f"{os.path.join(directory, 'token')}: No such file "
                                       "or directory")

    def test_unusableTokenFiles(self):
        """
        A token file that is missing, a directory, empty (or only white space), holds a
        token that is too short or has spaces, or is far too big, is reported at the
        C{token_file} value, naming the file and never quoting its content.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "adir"))
        writeFile(os.path.join(directory, "empty"), " \n\t\n")
        writeFile(os.path.join(directory, "short"), "abc123\n")
        writeFile(os.path.join(directory, "spaced"), "two words of a long passphrase\n")
        writeFile(os.path.join(directory, "big"), "x" * 5000)
        config = os.path.join(directory, "c.yaml")
        for name, message in [
            ("missing", "cannot read {path}: No such file or directory"),
            ("adir", "{path} is not a regular file"),
            ("empty", "{path} is empty"),
            ("short", f"the token in {{path}} is 6 characters long: a token needs "
                      f"{MIN_TOKEN_LENGTH} or more"),
            ("spaced", "the token in {path} must be printable ASCII without spaces"),
            ("big", "{path} holds more than 4096 bytes: not a token file"),
        ]:
            for key in ("token_file", "metrics_token_file"):
                _, found = settings(f"status:\n  {key}: {name}\n", path=config)
                path = os.path.join(directory, name)
                self.assertEqual(found, [f"{config}:3:{5 + len(key)}: status: '{key}': "
                                         + message.format(path=path)], (name, key))
                self.assertNotIn("abc123", found[0])

    def test_tooShortInline(self):
        """
        An inline token shorter than 16 characters is reported at its key, without
        quoting it.
        """
        _, found = settings("status:\n  token: abc123\n")
        self.assertEqual(found, ["test.yaml:3:3: status: 'token' is 6 characters long: a "
                                 "token needs 16 or more"])
        _, found = settings("status:\n  metrics_token: 'with spaces inside it'\n")
        self.assertEqual(found, ["test.yaml:3:3: status: 'metrics_token' must be printable "
                                 "ASCII without spaces"])

    def test_notAString(self):
        """
        A token that is not a string (a number, a list) is reported at its key.
        """
        _, found = settings("status:\n  token: 12345678901234567890\n")
        self.assertEqual(found, ["test.yaml:3:3: status: 'token' must be a string, not int"])

    def test_bothInlineAndFile(self):
        """
        A token given both inline and as a file is an error at the file's key.
        """
        path = writeFile(os.path.abspath(self.mktemp()), TOKEN)
        for inline, fileKey in (("token", "token_file"),
                                ("metrics_token", "metrics_token_file")):
            _, found = settings(f"status:\n  {inline}: {TOKEN}\n  {fileKey}: {path}\n")
            self.assertEqual(found, [f"test.yaml:4:3: status: give '{inline}' or "
                                     f"'{fileKey}', not both"])


class LoopbackRuleTests(SynchronousTestCase):
    """
    A status service that others could reach must have a token: the config is refused
    otherwise, at C{status.listen}.
    """

    NOT_LOCAL = ["tcp:8790", "tcp:8790:interface=0.0.0.0", "tcp:8790:192.0.2.1",
                 "tcp:port=8790:interface=192.0.2.1", "tcp:8790:interface=localhost",
                 "tcp6:8790", r"tcp6:8790:interface=\:\:", r"tcp6:8790:interface=2001\:db8\:\:1"]
    LOCAL = ["tcp:8790:interface=127.0.0.1", "tcp:8790:127.0.0.5", "tcp:port=8790:interface=127.0.0.1",
             r"tcp6:8790:interface=\:\:1", r"tcp:8790:interface=\:\:ffff\:127.0.0.1",
             "unix:/run/portserver/status.sock"]

    def test_notLoopbackWithoutToken(self):
        """
        On every address (explicit or by default), on another host's address, or on a
        host name, C{tcp:} and C{tcp6:} without a token are a located error naming
        C{status.listen} and saying what to set.
        """
        for listen in self.NOT_LOCAL:
            status, found = settings(f"status:\n  listen: '{listen}'\n")
            self.assertEqual(found, [f"test.yaml:3:11: status.listen {listen!r} is not "
                                     "loopback: set status.token or status.token_file (a "
                                     "status service others can reach must ask for a "
                                     "token)"], listen)

    def test_metricsTokenAloneIsNotEnough(self):
        """
        A metrics token protects C{/metrics} only, so it does not make a non-loopback
        listen acceptable.
        """
        _, found = settings(f"status:\n  listen: tcp:8790\n  metrics_token: {METRICS_TOKEN}\n")
        self.assertEqual(len(found), 1)
        self.assertIn("status.listen 'tcp:8790' is not loopback", found[0])

    def test_notLoopbackWithToken(self):
        """
        With a token, inline or in a file, any address is accepted.
        """
        path = writeFile(os.path.abspath(self.mktemp()), TOKEN)
        for listen in self.NOT_LOCAL:
            for given in (f"token: {TOKEN}", f"token_file: {path}"):
                status, found = settings(f"status:\n  listen: '{listen}'\n  {given}\n")
                self.assertEqual((status.listen, status.token, found), (listen, TOKEN, []))

    def test_loopbackWithoutToken(self):
        """
        On a loopback address (IPv4, IPv6, IPv4-mapped) or a UNIX socket, no token is
        needed.
        """
        for listen in self.LOCAL:
            status, found = settings(f"status:\n  listen: '{listen}'\n")
            self.assertEqual((status.listen, status.token, found), (listen, None, []))

    def test_unreadableTokenFileOnlyReportedOnce(self):
        """
        A non-loopback listen whose token file cannot be read gets one error, about the
        file, not a second one asking for a token.
        """
        _, found = settings("status:\n  listen: tcp:8790\n  token_file: /nonexistent/t\n")
        self.assertEqual(len(found), 1)
        self.assertIn("'token_file': cannot read /nonexistent/t", found[0])

    def test_endpointIsLocal(self):
        """
        L{endpointIsLocal} says which endpoint strings only this host can reach; other
        endpoint types, such as C{ssl:} even on loopback, are not counted as local.
        """
        self.assertEqual([d for d in self.LOCAL if not endpointIsLocal(d)], [])
        self.assertEqual([d for d in self.NOT_LOCAL if endpointIsLocal(d)], [])
        self.assertFalse(endpointIsLocal("ssl:8443:privateKey=k.pem:interface=127.0.0.1"))
        self.assertFalse(endpointIsLocal("systemd:domain=INET:index=0"))


def send(site, path: bytes, method: bytes = b"GET", headers=(), host=b"localhost",
         version=b"HTTP/1.1"):
    """
    Send one request with C{headers} (raw C{b"Name: value"} lines) and C{Host: host}
    (none if L{None}) to C{site} through a real L{HTTPChannel} on a L{StringTransport},
    and parse what it wrote back.
    """
    client = IPv4Address("TCP", "192.0.2.9", 40000)
    channel = site.buildProtocol(client)
    transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 8790),
                                peerAddress=client)
    channel.makeConnection(transport)
    lines = [method + b" " + path + b" " + version,
             *([] if host is None else [b"Host: " + host]), b"Connection: close", *headers]
    channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
    channel.connectionLost(Failure(ConnectionDone()))
    return parseResponse(transport.value())


def bearer(token: str) -> bytes:
    return b"Authorization: Bearer " + token.encode("ascii")


def startedStatus(token=None, metricsToken=None, listen=STATUS_LISTEN) -> StatusService:
    """
    A started L{StatusService} of a L{PortServer} (echo on port 7) on a L{PortReactor},
    its config's status section giving C{token} and C{metricsToken}.
    """
    reactor = PortReactor()
    plan = makePlan(spec("echo", port=7))
    plan = attrs.evolve(plan, config=attrs.evolve(
        plan.config, status=StatusSpec(listen, token, metricsToken)))
    server = PortServer(plan, reactor)
    status = StatusService(server, listen, reactor)
    server.privilegedStartService()
    status.privilegedStartService()
    status.startService()
    return status


DATA_PATHS = [b"/api/summary", b"/api/listeners", b"/api/connections", b"/api/history",
              b"/metrics"]


class BearerTokenTests(SynchronousTestCase):
    """
    With a token, the data endpoints answer only requests that carry it; the page's
    files answer anyone.
    """

    def setUp(self):
        self.site = startedStatus(TOKEN).site

    def assertUnauthorized(self, response, what=None):
        self.assertEqual((response.code, response.body, response.header("www-authenticate"),
                          response.header("cache-control"),
                          response.header("content-type")),
                         (401, b"unauthorized\n", "Bearer", "no-store",
                          "text/plain; charset=utf-8"), what)

    def test_rightToken(self):
        """
        Every data endpoint answers 200 to a request with the token, the scheme in any
        case.
        """
        for path in DATA_PATHS:
            self.assertEqual(send(self.site, path, headers=[bearer(TOKEN)]).code, 200, path)
        response = send(self.site, b"/api/summary",
                        headers=[b"authorization: bEaReR " + TOKEN.encode()])
        self.assertEqual(response.code, 200)

    def test_tokensFromConfig(self):
        """
        A L{StatusService} made without tokens takes its server's config's: the spec's
        token is what opens the API.
        """
        status = startedStatus(TOKEN, METRICS_TOKEN)
        self.assertEqual(status.tokens, AccessTokens(TOKEN.encode(), METRICS_TOKEN.encode()))

    def test_missingToken(self):
        """
        Without an C{Authorization} header, every data endpoint answers 401, whatever the
        method (a POST gets 401, not 405) and for HEAD without a body.
        """
        for path in DATA_PATHS:
            self.assertUnauthorized(send(self.site, path), path)
        self.assertUnauthorized(send(self.site, b"/api/summary", b"POST"))
        head = send(self.site, b"/api/summary", b"HEAD")
        self.assertEqual((head.code, head.body, head.header("www-authenticate")),
                         (401, b"", "Bearer"))

    def test_wrongToken(self):
        """
        A wrong token, one that only starts or ends like the right one, another scheme,
        a bare token, an empty one, or two headers, all get the same 401 as no token: the
        answer does not say what was wrong.
        """
        noToken = send(self.site, b"/api/summary")
        for header in [bearer("x" + TOKEN[1:]), bearer(TOKEN + "x"), bearer(TOKEN[:-1]),
                       b"Authorization: Basic " + TOKEN.encode(),
                       b"Authorization: " + TOKEN.encode(), b"Authorization: Bearer",
                       b"Authorization: Bearer " + TOKEN.encode() + b" extra",
                       b"X-Token: " + TOKEN.encode()]:
            response = send(self.site, b"/api/summary", headers=[header])
            self.assertUnauthorized(response, header)
            self.assertEqual(response, attrs.evolve(noToken, headers=response.headers))
        twice = send(self.site, b"/api/summary", headers=[bearer(TOKEN), bearer(TOKEN)])
        self.assertUnauthorized(twice)

    def test_tokenInQueryNotAccepted(self):
        """
        A token in the query string (which would end up in logs and history) opens
        nothing.
        """
        response = send(self.site, b"/api/summary?token=" + TOKEN.encode())
        self.assertUnauthorized(response)

    def test_publicPaths(self):
        """
        The page (C{/}) and its files (C{/static/...}) are served without a token, and
        with any; a missing static file is a 404 for anyone, and says nothing of data.
        """
        for path in (b"/", b"/static/app.js", b"/static/app.css"):
            for headers in ([], [bearer("wrong")]):
                self.assertEqual(send(self.site, path, headers=headers).code, 200, path)
        self.assertEqual(send(self.site, b"/static/nope.js").code, 404)

    def test_unknownPathsWantTheTokenFirst(self):
        """
        An unknown path is a 401 without the token, so that its 404 does not tell a
        stranger which paths exist; with the token it is a 404. A path starting with an
        empty segment (C{//api/summary}) is not the public C{/}.
        """
        for path in (b"/nope", b"/api/nope", b"/api", b"/metrics/x", b"//api/summary",
                     b"/index.html", b"/api/summary/x"):
            self.assertUnauthorized(send(self.site, path), path)
            self.assertEqual(send(self.site, path, headers=[bearer(TOKEN)]).code, 404, path)

    def test_dotSegmentsDoNotEscapeStatic(self):
        """
        C{/static/../api/summary} (and its encoded form) is the static directory's
        business, which serves only its own files: a 404, not the summary.
        """
        for path in (b"/static/../api/summary", b"/static/%2e%2e/api/summary",
                     b"/static/..%2fapi%2fsummary"):
            response = send(self.site, path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"uptime", response.body)

    def test_compareDigest(self):
        """
        The token is compared with L{hmac.compare_digest}, as bytes, the one given
        against the one wanted: for a right token and for a wrong one.
        """
        calls = []
        real = hmac.compare_digest

        def recording(a, b):
            calls.append((a, b))
            return real(a, b)

        self.patch(hmac, "compare_digest", recording)
        self.assertEqual(send(self.site, b"/api/summary", headers=[bearer(TOKEN)]).code, 200)
        self.assertEqual(send(self.site, b"/api/summary", headers=[bearer("w" * 26)]).code,
                         401)
        self.assertEqual(calls, [(TOKEN.encode(), TOKEN.encode()),
                                 (b"w" * 26, TOKEN.encode())])

    def test_guardAlone(self):
        """
        L{Guard} decides for the whole tree in one place: traversed with a
        L{DummyRequest}, a protected path gives L{Unauthorized} without the token and the
        root's child with it.
        """
        root = self.site.resource
        self.assertIsInstance(root, Guard)
        request = DummyRequest([b"api", b"summary"])
        self.assertIsInstance(getChildForRequest(root, request), Unauthorized)
        request = DummyRequest([b"api", b"summary"])
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + TOKEN.encode()])
        self.assertIsInstance(getChildForRequest(root, request), Summary)


class MetricsTokenTests(SynchronousTestCase):
    """
    C{/metrics} wants the metrics token when there is one, and only it.
    """

    def test_separateMetricsToken(self):
        """
        With both tokens, C{/metrics} opens with the metrics token only, and the API
        with the main token only.
        """
        site = startedStatus(TOKEN, METRICS_TOKEN).site
        self.assertEqual(send(site, b"/metrics", headers=[bearer(METRICS_TOKEN)]).code, 200)
        self.assertEqual(send(site, b"/metrics", headers=[bearer(TOKEN)]).code, 401)
        self.assertEqual(send(site, b"/metrics").code, 401)
        self.assertEqual(send(site, b"/api/summary", headers=[bearer(TOKEN)]).code, 200)
        self.assertEqual(send(site, b"/api/summary", headers=[bearer(METRICS_TOKEN)]).code,
                         401)

    def test_mainTokenForMetricsWithoutMetricsToken(self):
        """
        Without a metrics token, C{/metrics} wants the main token like the API.
        """
        site = startedStatus(TOKEN).site
        self.assertEqual(send(site, b"/metrics", headers=[bearer(TOKEN)]).code, 200)
        self.assertEqual(send(site, b"/metrics").code, 401)

    def test_metricsTokenAlone(self):
        """
        A metrics token alone (on loopback) protects C{/metrics} and nothing else.
        """
        site = startedStatus(None, METRICS_TOKEN).site
        self.assertEqual(send(site, b"/metrics").code, 401)
        self.assertEqual(send(site, b"/metrics", headers=[bearer(METRICS_TOKEN)]).code, 200)
        self.assertEqual(send(site, b"/api/summary").code, 200)
        self.assertEqual(send(site, b"/nope").code, 404)

    def test_noTokens(self):
        """
        Without tokens (the loopback default) everything answers as before: data with
        200, unknown paths with 404.
        """
        site = startedStatus().site
        for path in DATA_PATHS:
            self.assertEqual(send(site, path).code, 200, path)
        self.assertEqual(send(site, b"/nope").code, 404)


class SecurityHeadersTests(SynchronousTestCase):
    """
    Every response of the status site carries the security headers, and no Twisted
    version.
    """

    def setUp(self):
        self.site = startedStatus(TOKEN).site

    def assertSecure(self, response, cacheControl="no-store"):
        got = {name: response.header(name) for name in SECURITY}
        self.assertEqual(got, SECURITY)
        self.assertEqual(response.header("cache-control"), cacheControl)
        self.assertEqual(response.header("server"), "portserver")

    def test_everyKindOfResponse(self):
        """
        200 (JSON and metrics), 401, 404 (with and without the token), 405, 400 and a
        HEAD all have the headers, with C{Cache-Control: no-store}.
        """
        auth = [bearer(TOKEN)]
        for method, path, headers, code in [
            (b"GET", b"/api/summary", auth, 200), (b"GET", b"/metrics", auth, 200),
            (b"HEAD", b"/api/summary", auth, 200), (b"GET", b"/api/summary", [], 401),
            (b"GET", b"/nope", [], 401), (b"GET", b"/nope", auth, 404),
            (b"GET", b"/api/nope", auth, 404), (b"POST", b"/api/summary", auth, 405),
            (b"GET", b"/api/connections?state=x", auth, 400),
        ]:
            response = send(self.site, path, method, headers)
            self.assertEqual(response.code, code, (method, path))
            self.assertSecure(response)

    def test_staticFiles(self):
        """
        The page and its files have the headers too (their C{Cache-Control} is the
        page's business: no-store or no-cache).
        """
        for path in (b"/", b"/static/app.js"):
            response = send(self.site, path)
            self.assertEqual(response.code, 200)
            self.assertSecure(response, response.header("cache-control"))
            self.assertIn(response.header("cache-control"), ("no-store", "no-cache"))

    def test_serverError(self):
        """
        A resource that fails gets Twisted's 500, with the headers and no traceback.
        """
        def broken(self, request):
            raise RuntimeError("secret detail")
        self.patch(Summary, "data", broken)
        response = send(self.site, b"/api/summary", headers=[bearer(TOKEN)])
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(response.code, 500)
        self.assertSecure(response)
        self.assertNotIn(b"secret detail", response.body)
        self.assertNotIn(b"Traceback", response.body)

    def test_optionsStar(self):
        """
        C{OPTIONS *}, which Twisted answers without a resource, has the headers too.
        """
        response = send(self.site, b"*", b"OPTIONS")
        self.assertEqual(response.code, 200)
        self.assertSecure(response)

    def test_twistedsBadRequest(self):
        """
        The 400 Twisted's channel answers a request it cannot parse (a request line
        without a version, a header line without a colon) has the headers too, and
        C{Server: portserver}; before, it was a bare status line.
        """
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"):
            client = IPv4Address("TCP", "127.0.0.9", 40000)
            channel = self.site.buildProtocol(client)
            transport = StringTransport(peerAddress=client)
            channel.makeConnection(transport)
            channel.dataReceived(raw)
            response = parseResponse(transport.value())
            self.assertEqual(response.code, 400, raw)
            self.assertSecure(response)
            self.assertTrue(transport.disconnecting)


class HostCheckTests(SynchronousTestCase):
    """
    Without a token, the status site answers only requests whose C{Host} is a local
    name or address: a DNS-rebinding page cannot read it.
    """

    def test_foreignHostMisdirected(self):
        """
        A request naming another host (as a rebinding page's would) gets 421 on every
        path, the page included, with the security headers and no data.
        """
        site = startedStatus().site
        for host in (b"evil.example", b"evil.example:8790", b"10.0.0.1:8790",
                     b"localhost.evil.example"):
            for path in DATA_PATHS + [b"/"]:
                response = send(site, path, host=host)
                self.assertEqual(response.code, 421, (host, path))
                self.assertEqual(response.header("x-frame-options"), "DENY")
                self.assertNotIn(b"{", response.body)

    def test_localHostsServed(self):
        """
        C{localhost}, loopback addresses (with or without a port, IPv6 in brackets) and
        the bound address are served, and so is an HTTP/1.0 request without C{Host}.
        """
        site = startedStatus().site
        for host in (b"localhost", b"LOCALHOST:8790", b"127.0.0.1", b"127.0.0.1:8790",
                     b"127.9.9.9", b"[::1]:8790", b"[::1]"):
            self.assertEqual(send(site, b"/api/summary", host=host).code, 200, host)
        response = send(site, b"/api/summary", host=None, version=b"HTTP/1.0")
        self.assertEqual(response.code, 200)

    def test_twoHostHeadersMisdirected(self):
        """
        A request with two C{Host} headers is not taken as local.
        """
        site = startedStatus().site
        response = send(site, b"/api/summary", headers=[b"Host: evil.example"])
        self.assertIn(response.code, (400, 421))
        self.assertNotIn(b"{", response.body)

    def test_tokenLiftsTheCheck(self):
        """
        With a token, the token protects the site, and any C{Host} is answered (a
        reverse proxy's name, say).
        """
        site = startedStatus(TOKEN).site
        response = send(site, b"/api/summary", headers=[bearer(TOKEN)],
                        host=b"status.example.com")
        self.assertEqual(response.code, 200)


class BindTests(SynchronousTestCase):
    """
    L{StatusService.bind} refuses to serve an address others can reach without a token,
    whatever the config said (for code that embeds the service).
    """

    def server(self, status=StatusSpec()):
        plan = makePlan(spec("echo", port=7))
        plan = attrs.evolve(plan, config=attrs.evolve(plan.config, status=status))
        return PortServer(plan, PortReactor())

    def test_notLoopbackWithoutTokenRefused(self):
        """
        Bound on 0.0.0.0 without a token, the service raises L{StartupError} saying why
        and what to set, and closes the port at once.
        """
        server = self.server()
        status = StatusService(server, "tcp:8790:interface=0.0.0.0")
        error = self.assertRaises(StartupError, status.privilegedStartService)
        self.assertEqual(str(error), "refusing to start the status service on "
                                     "'tcp:8790:interface=0.0.0.0' without a token: "
                                     "http://0.0.0.0:8790/ is not loopback; set "
                                     "status.token or status.token_file")
        [port] = server.reactor.ports
        self.assertTrue(port.stopped)
        self.assertIsNone(status.address)
        self.assertFalse(status.running)

    def test_metricsTokenAloneRefused(self):
        """
        A metrics token alone does not let the service bind a non-loopback address.
        """
        status = StatusService(self.server(), "tcp:8790",
                               tokens=AccessTokens(None, METRICS_TOKEN.encode()))
        self.assertRaises(StartupError, status.privilegedStartService)

    def test_notLoopbackWithToken(self):
        """
        With a token, given or from the config, the service binds every address.
        """
        status = StatusService(self.server(), "tcp:8790",
                               tokens=AccessTokens(TOKEN.encode()))
        status.privilegedStartService()
        self.assertEqual(status.address, IPv4Address("TCP", "", 8790))
        server = self.server(StatusSpec("tcp:8790", TOKEN))
        status = StatusService(server, "tcp:8790")
        status.privilegedStartService()
        self.assertIsNotNone(status.address)

    def test_localWithoutToken(self):
        """
        On loopback (IPv4 or IPv6) or a UNIX socket, no token is needed.
        """
        for listen in ("tcp:8790:interface=127.0.0.1", r"tcp6:8790:interface=\:\:1",
                       "unix:/run/portserver/status.sock"):
            status = StatusService(self.server(), listen)
            status.privilegedStartService()
            self.assertIsNotNone(status.address, listen)

    def test_isLocalAddress(self):
        """
        L{isLocalAddress}: loopback IPv4 and IPv6 addresses and UNIX sockets are local;
        wildcards, other hosts' addresses and anything else are not.
        """
        self.assertTrue(isLocalAddress(IPv4Address("TCP", "127.0.0.9", 1)))
        self.assertTrue(isLocalAddress(IPv6Address("TCP", "::1", 1)))
        self.assertTrue(isLocalAddress(UNIXAddress(b"/run/s")))
        self.assertFalse(isLocalAddress(IPv4Address("TCP", "0.0.0.0", 1)))
        self.assertFalse(isLocalAddress(IPv6Address("TCP", "::", 1)))
        self.assertFalse(isLocalAddress(IPv4Address("TCP", "192.0.2.1", 1)))
        self.assertFalse(isLocalAddress(object()))


URL = "http://127.0.0.1:8790"


class CLIRun:
    """
    One L{cli.main} run with the environment C{environ}: exit status, stdout, stderr, and
    each fetch as C{(url, token)}; the fetch answers with C{answer(url, token)}.
    """

    def __init__(self, argv, environ=None, answer=None, kill=None):
        self.fetched = []
        stdout, stderr = io.StringIO(), io.StringIO()

        def fetch(url, token=None):
            self.fetched.append((url, token))
            if answer is not None:
                return answer(url, token)
            return reply(url)

        self.status = cli.main(argv, stdout=stdout, stderr=stderr, fetch=fetch,
                               now=lambda: 0.0, environ={} if environ is None else environ)
        self.stdout, self.stderr = stdout.getvalue(), stderr.getvalue()

    @property
    def tokens(self):
        return {token for _, token in self.fetched}


def refusing(wanted):
    """
    An answer that raises L{cli.Unauthorized} unless the token is C{wanted}.
    """
    def answer(url, token):
        if token != wanted:
            raise cli.Unauthorized("HTTP 401 Unauthorized for /api/listeners")
        return reply(url)
    return answer


class CLITokenTests(SynchronousTestCase):
    """
    C{portserver status} and C{portserver reload} send a token from C{--token-file},
    C{PORTSERVER_TOKEN} or the config, and say clearly when the service wants one.
    """

    def tokenFile(self, content=TOKEN + "\n") -> str:
        return writeFile(os.path.abspath(self.mktemp()), content)

    def fakeKill(self) -> list[int]:
        """
        Make C{portserver reload} signal nothing, never sleep, and see every pid as a
        portserver; return the list of the pids it signals.
        """
        killed: list[int] = []
        real = cli.runReload

        def runReload(args, stdout, fetch, now):
            return real(args, stdout, fetch, now, kill=lambda pid, n: killed.append(pid),
                        sleep=lambda seconds: None,
                        readCommandLine=lambda pid: ["twistd", "portserver"])

        self.patch(cli, "runReload", runReload)
        return killed

    def test_noToken(self):
        """
        Without any source, no token is sent.
        """
        run = CLIRun(["status", "--url", URL])
        self.assertEqual((run.status, run.tokens), (0, {None}))

    def test_tokenFile(self):
        """
        C{--token-file} sends the file's content, stripped, with every request.
        """
        run = CLIRun(["status", "--url", URL, "--token-file", self.tokenFile()])
        self.assertEqual((run.status, run.tokens, len(run.fetched)), (0, {TOKEN}, 4))

    def test_environment(self):
        """
        C{PORTSERVER_TOKEN} is sent when there is no C{--token-file}; the file wins over
        it.
        """
        run = CLIRun(["status", "--url", URL], environ={"PORTSERVER_TOKEN": TOKEN})
        self.assertEqual((run.status, run.tokens), (0, {TOKEN}))
        other = "other-token-000000000000"
        run = CLIRun(["status", "--url", URL, "--token-file", self.tokenFile(other)],
                     environ={"PORTSERVER_TOKEN": TOKEN})
        self.assertEqual(run.tokens, {other})

    def test_fromConfig(self):
        """
        With C{--config}, the config's C{status.token_file} (relative to the config's
        directory) or C{status.token} is sent; C{PORTSERVER_TOKEN} wins over it.
        """
        directory = os.path.abspath(self.mktemp())
        writeFile(os.path.join(directory, "secret"), TOKEN + "\n")
        byFile = writeFile(os.path.join(directory, "a.yaml"),
                           "status:\n  listen: tcp:9300:interface=127.0.0.1\n"
                           "  token_file: secret\n")
        inline = writeFile(os.path.join(directory, "b.yaml"),
                           f"status:\n  listen: tcp:9300:interface=127.0.0.1\n"
                           f"  token: {TOKEN}\n")
        for config in (byFile, inline):
            run = CLIRun(["status", "--config", config])
            self.assertEqual((run.status, run.tokens), (0, {TOKEN}), run.stderr)
            self.assertEqual(run.fetched[0][0], "http://127.0.0.1:9300/api/listeners")
        run = CLIRun(["status", "--config", byFile], environ={"PORTSERVER_TOKEN": "e" * 20})
        self.assertEqual(run.tokens, {"e" * 20})

    def test_wantsToken(self):
        """
        A 401 without a token is one line saying the service wants one and how to give
        it; exit 1, nothing on stdout.
        """
        run = CLIRun(["status", "--url", URL], answer=refusing(TOKEN))
        self.assertEqual((run.status, run.stdout, run.stderr), (
            1, "", f"portserver status: the status service at {URL} wants a token: give "
                   "--token-file or set PORTSERVER_TOKEN\n"))

    def test_wrongToken(self):
        """
        A 401 to a token says where the refused token came from, without showing it.
        """
        path = self.tokenFile("wrong-token-0000000000\n")
        run = CLIRun(["status", "--url", URL, "--token-file", path], answer=refusing(TOKEN))
        self.assertEqual((run.status, run.stderr), (
            1, f"portserver status: the status service at {URL} refused the token from "
               f"--token-file {path}\n"))
        run = CLIRun(["status", "--url", URL], environ={"PORTSERVER_TOKEN": "w" * 20},
                     answer=refusing(TOKEN))
        self.assertEqual(run.stderr, f"portserver status: the status service at {URL} "
                                     "refused the token from PORTSERVER_TOKEN\n")

    def test_badTokenSources(self):
        """
        A missing or empty token file, or a short C{PORTSERVER_TOKEN}, is one line naming
        the source, never the token, and nothing is fetched.
        """
        missing = os.path.join(os.path.abspath(self.mktemp()), "nope")
        empty = self.tokenFile("\n")
        for argv, environ, line in [
            (["--token-file", missing], {},
             f"--token-file: cannot read {missing}: No such file or directory"),
            (["--token-file", empty], {}, f"--token-file: {empty} is empty"),
            ([], {"PORTSERVER_TOKEN": "short1"},
             "PORTSERVER_TOKEN is 6 characters long: a token needs 16 or more"),
        ]:
            run = CLIRun(["status", "--url", URL, *argv], environ=environ)
            self.assertEqual((run.status, run.stderr, run.fetched),
                             (1, f"portserver status: {line}\n", []), argv)

    def test_noTokenOption(self):
        """
        There is no option that takes the token itself (it would show in C{ps}):
        C{--token VALUE} and C{--token=VALUE} are usage errors that say what to use
        instead and do not repeat the value (nor is C{--token} taken for
        C{--token-file}).
        """
        for argv in (["--token", TOKEN], [f"--token={TOKEN}"], ["--tok", TOKEN]):
            for command in (["status"], ["reload", "--pidfile", "p"]):
                run = CLIRun([*command, "--url", URL, *argv])
                self.assertEqual((run.status, run.fetched), (2, []), argv)
                self.assertNotIn(TOKEN, run.stderr)
                if argv[0] != "--tok":  # else: ambiguous, --token or --token-file
                    self.assertIn("is not an option: a token on the command line shows in "
                                  "ps; use --token-file PATH or set PORTSERVER_TOKEN",
                                  run.stderr)

    def test_reloadSendsToken(self):
        """
        C{portserver reload} sends the token with each poll of the summary.
        """
        pidfile = writeFile(os.path.abspath(self.mktemp()), "4242\n")
        killed = self.fakeKill()
        summaries = iter([{"reloads": {"applied": 0, "rejected": 0}},
                          {"reloads": {"applied": 1, "rejected": 0},
                           "last_reload": {"result": "applied", "generation": 2}}])

        def answer(url, token):
            return next(summaries)

        run = CLIRun(["reload", "--pidfile", pidfile, "--url", URL, "--token-file",
                      self.tokenFile()], answer=answer)
        self.assertEqual((run.status, killed, run.tokens), (0, [4242], {TOKEN}), run.stderr)

    def test_reloadWantsToken(self):
        """
        When the status service wants a token, C{portserver reload} says so before
        signalling anything (the signal would go unreported).
        """
        pidfile = writeFile(os.path.abspath(self.mktemp()), "4242\n")
        killed = self.fakeKill()
        run = CLIRun(["reload", "--pidfile", pidfile, "--url", URL], answer=refusing(TOKEN))
        self.assertEqual((run.status, killed), (1, []))
        self.assertEqual(run.stderr, f"portserver reload: the status service at {URL} wants "
                                     "a token: give --token-file or set PORTSERVER_TOKEN (or "
                                     "use --no-wait to only send the signal); nothing was "
                                     "signalled\n")


class FetchJSONTests(SynchronousTestCase):
    """
    L{cli.fetchJSON} over HTTP to a server on 127.0.0.1.
    """

    def serve(self, wanted=None, redirect=False) -> tuple[str, list]:
        """
        Serve C{{}} to requests that carry C{Bearer wanted} (any request when L{None}),
        401 to others; with C{redirect}, C{/moved} redirects to C{/}. Return the URL and
        the list of each request's C{(path, Authorization header)}.
        """
        seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                authorization = self.headers.get("Authorization")
                seen.append((self.path, authorization))
                if redirect and self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                ok = wanted is None or authorization == f"Bearer {wanted}"
                body = b"{}" if ok else b"unauthorized\n"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return serveHTTP(self, Handler), seen

    def test_sendsBearer(self):
        """
        With a token, the request carries C{Authorization: Bearer TOKEN}; without, no
        C{Authorization} at all.
        """
        url, seen = self.serve()
        self.assertEqual(cli.fetchJSON(url + "/a", token=TOKEN), {})
        self.assertEqual(cli.fetchJSON(url + "/b"), {})
        self.assertEqual(seen, [("/a", f"Bearer {TOKEN}"), ("/b", None)])

    def test_unauthorized(self):
        """
        A 401 raises L{cli.Unauthorized} (a L{cli.FetchError}) naming the path.
        """
        url, _ = self.serve(wanted=TOKEN)
        error = self.assertRaises(cli.Unauthorized, cli.fetchJSON, url + "/api/summary",
                                  token="wrong-token-00000000")
        self.assertEqual(str(error), "HTTP 401 Unauthorized for /api/summary")
        self.assertIsInstance(error, cli.FetchError)
        self.assertEqual(cli.fetchJSON(url + "/api/summary", token=TOKEN), {})

    def test_tokenNotRedirected(self):
        """
        The token is not carried over to where a redirect points.
        """
        url, seen = self.serve(redirect=True)
        self.assertEqual(cli.fetchJSON(url + "/moved", token=TOKEN), {})
        self.assertEqual(seen, [("/moved", f"Bearer {TOKEN}"), ("/", None)])
