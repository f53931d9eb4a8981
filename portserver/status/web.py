"""
The status web service: what a L{PortServer}'s registry knows, over HTTP.

    GET /                  the status page for people (L{portserver.status.page})
    GET /static/NAME       its script, style sheet and icon
    GET /api/connections   live connections: ?service=NAME, ?state=open|closed,
                           ?transport=tcp|udp (live UDP flows with udp), a page at a
                           time: ?limit=N (default 1000) from ?offset=N, with the total
    GET /api/listeners     every listener with its live connection count
    GET /api/summary       totals by port class and privilege, version, pid, config path
    GET /api/history       live connections and accepts per service, once a second for
                           the last 10 minutes (L{portserver.status.history})
    GET /metrics           Prometheus text exposition

On Linux the API and the metrics add the kernel's side of the TCP endpoints (C{tcp} per
connection, C{kernel} per listener, the host's listen counters: L{portserver.kernel}),
read per request through one L{KernelView}.

The resources only render what the registry and the server say at request time; they keep
no state of their own (the history is kept by L{History}, sampling while the status service
runs; the listen counters' baseline and the overflows' growth by the L{KernelView}).

Access: with a token configured (C{status.token} or C{status.token_file}), every request
must carry C{Authorization: Bearer TOKEN}, except those for the page's files (C{/} and
C{/static/...}, L{isPublic}), which hold no data: the page's script reads the token from
the URL's fragment (C{#token=...}, never sent to the server) and sends it with its own
requests. C{/metrics} wants C{status.metrics_token} when one is set (then the main token
does not open it), else the main token. A request without the right token gets a 401,
whatever its path (so an unknown path answers 404 only to a request that may know it).
L{Guard} alone decides this, for the whole site. Every response carries the headers of
L{SECURITY_HEADERS}.
"""

from __future__ import annotations

import hmac
import json
import os
from time import perf_counter

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request, Site

import portserver
from portserver.config import StatusSpec, endpointProblem
from portserver.kernel import FoundSockets, KernelSnapshot, KernelView
from portserver.status.access import isLocalHost, isLoopback
from portserver.registry import CLOSED, OPEN
from portserver.startup import BindingService, StartupError
from portserver.status.history import History
from portserver.status.metrics import collectorRegistry
from portserver.workerview import workerRows

log = Logger()

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


class HTTPError(Exception):
    """
    Answer the request with C{code} and C{message} instead of the resource.
    """

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Page(Resource):
    """
    A leaf answering GET and HEAD (the same headers, no body), 404 for any path below it,
    and 405 for any other method. Subclasses give C{content(request) -> bytes}.

    (The L{PortServer} a page shows is its C{portServer}: L{Resource} has a C{server}
    attribute of its own, which C{putChild} overwrites.)
    """

    isLeaf = True
    contentType = TEXT_TYPE
    #: The C{Cache-Control} of a successful answer (errors are always C{no-store}).
    cacheControl = b"no-store"

    def exists(self, request) -> bool:
        return not request.postpath

    def content(self, request) -> bytes:
        raise NotImplementedError

    def errorBody(self, message: str) -> tuple[bytes, str]:
        return message.encode("utf-8") + b"\n", TEXT_TYPE

    #: Whether what this page shows comes from the server's registry: then, when the
    #: server has C{refresh()} (a main process with workers), it is awaited first.
    refreshes = True

    def render(self, request):
        """
        Answer now; or, when the page C{refreshes} and the server it shows has
        C{refresh()}, once that has fired (C{NOT_DONE_YET} meanwhile), so that a page
        shows every connection the workers had before the request.
        """
        refresh = getattr(getattr(self, "portServer", None), "refresh", None)
        if refresh is None or not self.refreshes or not self.exists(request) \
                or request.method not in (b"GET", b"HEAD"):
            return self.renderNow(request)
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def finish(_):
            if gone:
                return  # the client went away meanwhile
            body = self.renderNow(request)
            if body:
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
            request.finish()
        def failed(failure):
            if not gone:
                request.processingFailed(failure)  # logged, and a 500 as Twisted's own
        maybeDeferred(refresh).addErrback(
            lambda f: log.failure("Refreshing the view before {path}", f,
                                  path=request.path.decode("latin-1"))
        ).addCallback(finish).addErrback(failed)
        return NOT_DONE_YET

    def renderNow(self, request):
        """
        The answer, headers set, as bytes.
        """
        request.setHeader(b"cache-control", self.cacheControl)
        try:
            if not self.exists(request):
                raise HTTPError(404, f"no such resource: {request.path.decode('latin-1')}")
            if request.method not in (b"GET", b"HEAD"):
                request.setHeader(b"allow", b"GET, HEAD")
                raise HTTPError(405, f"method {request.method.decode('latin-1')} is not "
                                     "allowed: use GET or HEAD")
            body, contentType = self.content(request), self.contentType
        except HTTPError as e:
            request.setResponseCode(e.code)
            request.setHeader(b"cache-control", b"no-store")
            body, contentType = self.errorBody(e.message)
        request.setHeader(b"content-type", contentType.encode("ascii"))
        if request.method == b"HEAD":  # GET's headers; an empty body keeps Twisted quiet
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body


class JSONPage(Page):
    """
    A L{Page} of JSON; errors are C{{"error": message}}. Subclasses give C{data(request)}.
    """

    contentType = JSON_TYPE

    def data(self, request):
        raise NotImplementedError

    def content(self, request) -> bytes:
        return _json(self.data(request))

    def errorBody(self, message: str) -> tuple[bytes, str]:
        return _json({"error": message}), JSON_TYPE


def _json(value) -> bytes:
    # Compact: json's C encoder runs only without indent, about 3x faster at 10,000
    # connections (bench/README.md). Browsers and `jq` lay it out for people.
    return json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n"


class NotFound(Page):
    """
    404 for everything.
    """

    def exists(self, request) -> bool:
        return False


class JSONNotFound(NotFound, JSONPage):
    """
    404 for everything, as JSON.
    """


def queryParameter(request, name: str, allowed: tuple[str, ...] | None = None) -> str | None:
    """
    The query parameter C{name}, or L{None} when absent.

    @raise HTTPError: 400 when it is repeated, not UTF-8, or not one of C{allowed}.
    """
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise HTTPError(400, f"parameter {name!r} is given {len(values)} times")
    try:
        value = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"parameter {name!r} is not UTF-8") from None
    if allowed is not None and value not in allowed:
        raise HTTPError(400, f"invalid {name!r} parameter {value!r}: expected "
                             f"{' or '.join(allowed)}")
    return value


#: The records C{/api/connections} answers by default, and at most (C{?limit=}), so that
#: no request holds the reactor for more than a few tens of milliseconds: a page of 1000
#: UDP flows takes about 8 ms to turn into dicts and encode, 2000 about 15 ms (10,000:
#: 80 ms).
DEFAULT_PAGE = 1000
MAX_PAGE = 2000


def countParameter(request, name: str, default: int, largest: int) -> int:
    """
    The query parameter C{name} as a whole number from 0 to C{largest}, or C{default}
    when absent.

    @raise HTTPError: 400 when it is not such a number.
    """
    value = queryParameter(request, name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(largest))) \
            or int(value) > largest:
        raise HTTPError(400, f"invalid {name!r} parameter {value!r}: expected a whole "
                             f"number from 0 to {largest}")
    return int(value)


class Connections(JSONPage):
    """
    C{GET /api/connections}: the registry's records, live or recently closed, a page at
    a time: C{?limit=} records (default L{DEFAULT_PAGE}, at most L{MAX_PAGE}) from
    C{?offset=} (default 0) on. The answer is C{{"connections": [...], "total": N,
    "offset": O, "limit": L}}, C{total} counting every record the query selects.

    On Linux, each live TCP record has C{tcp}, its socket as the kernel sees it
    (L{portserver.sockdiag.TCPSocket.tcpInfo}), read for the page's records alone
    (L{KernelView.forRecords}).
    """

    def __init__(self, server, kernel: KernelView | None = None):
        super().__init__()
        self.portServer = server
        self.kernel = KernelView(server) if kernel is None else kernel

    def content(self, request) -> bytes:
        """
        The page of records as JSON, with a C{Server-Timing} header saying how long the
        registry snapshot, the conversion to dicts, the kernel's view (when read) and the
        encoding each took.
        """
        service = queryParameter(request, "service")
        state = queryParameter(request, "state", (OPEN, CLOSED)) or OPEN
        transport = queryParameter(request, "transport", ("tcp", "udp"))
        limit = countParameter(request, "limit", DEFAULT_PAGE, MAX_PAGE)
        offset = countParameter(request, "offset", 0, 10**12)
        registry = self.portServer.registry
        started = perf_counter()
        total, records = registry.page(service, state, transport, offset, limit)
        selected = perf_counter()
        dicts = registry.asDicts(records)
        converted = perf_counter()
        timings = {"snapshot": selected - started, "dicts": converted - selected}
        if state == OPEN and transport != "udp" and records:
            kernel = self.kernel.forRecords(records, service)
            if kernel is not None:
                addTCPInfo(kernel, records, dicts)
                timings["kernel"] = perf_counter() - converted
        read = perf_counter()
        body = _json({"connections": dicts, "total": total, "offset": offset,
                      "limit": limit})
        timings["encode"] = perf_counter() - read
        request.setHeader(b"server-timing", serverTiming(**timings))
        return body


def addTCPInfo(snapshot: KernelSnapshot | FoundSockets, records, dicts: list[dict]) -> None:
    """
    Give each of C{dicts} (made from C{records}, in the same order) whose record is a
    TCP connection found in C{snapshot} its C{tcp}.
    """
    for record, result in zip(records, dicts):
        if record.transport == "tcp":
            info = snapshot.connectionInfo(record)
            if info is not None:
                result["tcp"] = info


def serverTiming(**durations: float) -> bytes:
    """
    A C{Server-Timing} header value: C{name;dur=milliseconds} for each of C{durations}
    (given in seconds).
    """
    return ", ".join(f"{name};dur={seconds * 1000:.3f}"
                     for name, seconds in durations.items()).encode("ascii")


class Listeners(JSONPage):
    """
    C{GET /api/listeners}: every listener as bound, with its live connections; on
    Linux a TCP listener has C{kernel} too (L{KernelSnapshot.listenerInfo}).
    """

    def __init__(self, server, kernel: KernelView | None = None):
        super().__init__()
        self.portServer = server
        self.kernel = KernelView(server) if kernel is None else kernel

    def data(self, request):
        rows = self.portServer.listenerStates()
        snapshot = self.kernel.forListeners()
        if snapshot is not None:
            for row in rows:
                if row.get("transport") == "tcp":
                    info = snapshot.listenerInfo(row["host"], row["port"])
                    if info is not None:
                        row["kernel"] = info
        return {"listeners": rows}


class Summary(JSONPage):
    """
    C{GET /api/summary}: the registry's summary, the version, the process id (C{pid}:
    C{portserver reload} checks it is the pid it signals) and the config path, and the
    server's C{state}: C{"serving"}, or C{"draining"} while stopping (with C{remaining},
    the TCP connections still live, and C{drain_left}, the seconds until they are
    aborted); C{config_generation} (1 as started, +1 per reload applied),
    C{config_loaded_at} (Unix time) and C{last_reload} (the outcome of the last reload:
    C{result} C{"applied"} or C{"rejected"}, C{at}, C{generation}, C{errors}, and what an
    applied one changed), with C{reloads}, the counts by result.

    With workers (a server with C{workerStates()}), C{workers}: one dict per worker
    process, C{index}, C{pid}, C{state}, C{restarts} (of its index), C{generation},
    C{started} and C{connections}, its live connections and flows
    (L{portserver.workerview.workerRows}).

    On Linux (when the kernel's view has one of the server's TCP listeners),
    C{listen_counters}: the host's listen counters (L{KernelView.listenCounters}), and
    flags from the kernel's view (L{KernelView.flags}).
    """

    def __init__(self, server, kernel: KernelView | None = None):
        super().__init__()
        self.portServer = server
        self.kernel = KernelView(server) if kernel is None else kernel

    def data(self, request):
        server = self.portServer
        summary = server.registry.summary(server.boundListeners())
        summary.update(server.drainState())
        summary["version"] = portserver.__version__
        summary["pid"] = os.getpid()
        summary["config"] = server.plan.config.path
        summary["config_generation"] = server.generation
        summary["config_loaded_at"] = server.loadedAt
        summary["last_reload"] = server.lastReload
        summary["reloads"] = {"applied": server.reloads["applied"],
                              "rejected": server.reloads["rejected"]}
        if getattr(server, "workerStates", None) is not None:
            summary["workers"] = workerRows(server)
        snapshot = self.kernel.forListeners()
        if snapshot is not None:  # Linux, and a listener the kernel knows
            counters = self.kernel.listenCounters()
            if counters is not None:
                summary["listen_counters"] = counters
            summary["flags"] += self.kernel.flags(snapshot, counters)
        return summary


class HistoryPage(JSONPage):
    """
    C{GET /api/history}: L{History.asDict}; C{server}: the server whose history it is
    (for its C{refresh}), or L{None}.
    """

    def __init__(self, history: History, server=None):
        super().__init__()
        self.history = history
        self.portServer = server

    def data(self, request):
        return self.history.asDict()


class Metrics(Page):
    """
    C{GET /metrics}: the Prometheus text exposition of the server's metrics.
    """

    contentType = CONTENT_TYPE_LATEST

    def __init__(self, server, kernel: KernelView | None = None):
        super().__init__()
        self.portServer = server
        self.collectors = collectorRegistry(server, kernel)

    def content(self, request) -> bytes:
        return generate_latest(self.collectors)


class Api(Resource):
    """
    C{/api/}: the JSON endpoints; anything else under it, and C{/api} itself, is a JSON 404.
    C{kernel}: the L{KernelView} they share (default: one of C{server}).
    """

    def __init__(self, server, history: History, kernel: KernelView | None = None):
        super().__init__()
        kernel = KernelView(server) if kernel is None else kernel
        self.putChild(b"connections", Connections(server, kernel))
        self.putChild(b"listeners", Listeners(server, kernel))
        self.putChild(b"summary", Summary(server, kernel))
        self.putChild(b"history", HistoryPage(history, server))

    def getChild(self, path, request):
        return JSONNotFound()

    def render(self, request):
        return JSONNotFound().render(request)


class Root(Resource):
    """
    The site's root: the status page and its C{/static/} files, C{/api/} and C{/metrics};
    anything else is a 404. C{history} is what C{/api/history} shows (default: a
    L{History} of C{server} that nothing starts).
    """

    def __init__(self, server, history: History | None = None):
        super().__init__()
        # Here, not at the top: the page's resources are Pages of this module.
        from portserver.status.page import pageResources
        page, static = pageResources()
        self.putChild(b"", page)
        self.putChild(b"static", static)
        history = History.forServer(server) if history is None else history
        kernel = KernelView(server)  # one baseline for the API and the metrics
        self.putChild(b"api", Api(server, history, kernel))
        self.putChild(b"metrics", Metrics(server, kernel))

    def getChild(self, path, request):
        return NotFound()


#: Segments that may start a path served without a token (C{/static/...}); see L{isPublic}.
PUBLIC_SEGMENTS = frozenset({b"static"})


def isPublic(segments: list[bytes]) -> bool:
    """
    Whether the path of C{segments} (C{/a/b} is C{[b"a", b"b"]}) is served to anyone:
    C{/} (the page) and everything under C{/static} (its files). Nothing else is: not
    C{//api/...}, whose first segment is empty too.
    """
    return segments == [b""] or segments[0] in PUBLIC_SEGMENTS


@attrs.frozen
class AccessTokens:
    """
    The bearer tokens the status site asks for (as bytes), left out of the C{repr}.

    @ivar token: wanted for every path but the public ones (L{isPublic}), or L{None}.
    @ivar metricsToken: wanted for C{/metrics} (instead of C{token}), or L{None}.
    """

    token: bytes | None = attrs.field(default=None, repr=False)
    metricsToken: bytes | None = attrs.field(default=None, repr=False)

    @classmethod
    def fromSpec(cls, spec: StatusSpec) -> AccessTokens:
        """
        The tokens of a config's C{status:} section.
        """
        def encode(token):
            return None if token is None else token.encode("utf-8")
        return cls(encode(spec.token), encode(spec.metricsToken))

    def wanted(self, segments: list[bytes]) -> bytes | None:
        """
        The token a request for the path of C{segments} must carry, or L{None} when it
        needs none: none for a public path; for C{/metrics} (and below) the metrics token
        when there is one; else the main token, if any.
        """
        if isPublic(segments):
            return None
        if segments[0] == b"metrics" and self.metricsToken is not None:
            return self.metricsToken
        return self.token


def bearerToken(request) -> bytes | None:
    """
    The token of the request's C{Authorization: Bearer TOKEN} header (the scheme in any
    case), or L{None} when there is no such header, or more than one.
    """
    values = request.requestHeaders.getRawHeaders(b"authorization") or []
    if len(values) != 1:
        return None
    parts = values[0].split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return None
    return parts[1]


class Unauthorized(Resource):
    """
    401 for everything, saying nothing of why: C{unauthorized}, and
    C{WWW-Authenticate: Bearer}.
    """

    isLeaf = True

    def render(self, request):
        request.setHeader(b"www-authenticate", b"Bearer")
        return plainReply(request, 401, b"unauthorized\n")


def plainReply(request, code: int, body: bytes) -> bytes:
    """
    Answer C{request} with C{code} and the plain text C{body} (its headers alone for a
    HEAD), uncached.
    """
    request.setResponseCode(code)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-type", TEXT_TYPE.encode("ascii"))
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""
    return body


class Misdirected(Resource):
    """
    421 for everything: the request's C{Host} is not a name of this host, as a page of
    another site that a DNS rebinding points here would send.
    """

    isLeaf = True

    def render(self, request):
        return plainReply(request, 421,
                          b"misdirected request: use localhost or a loopback address in Host\n")


class Guard(Resource):
    """
    The site's root: passes each request on to C{root} if it carries the token its path
    wants (L{AccessTokens.wanted}), else answers L{Unauthorized}. Tokens are compared with
    L{hmac.compare_digest}, in time that does not depend on where they differ.

    Without a main token, the site is on loopback (or a UNIX socket), and the address is
    its only protection; so a request whose C{Host} is not C{localhost}, a loopback
    address or the bound one (L{isLocalHost}) gets L{Misdirected}: a DNS-rebinding page
    cannot read the API. A request without C{Host} (HTTP/1.0) is a local program's.

    @ivar boundHost: the address the site is bound to, once it is (L{None}: a UNIX
        socket, or not bound: no C{Host} check).
    """

    def __init__(self, root: Resource, tokens: AccessTokens):
        super().__init__()
        self.root = root
        self.tokens = tokens
        self.boundHost = None

    def hostAllowed(self, request) -> bool:
        """
        Whether C{request}'s C{Host} may be answered (see the class docstring).
        """
        if self.tokens.token is not None or self.boundHost is None:
            return True
        values = request.requestHeaders.getRawHeaders(b"host")
        if not values:
            return True
        return len(values) == 1 and isLocalHost(values[0], self.boundHost)

    def allows(self, segments: list[bytes], request) -> bool:
        """
        Whether C{request}, for the path of C{segments}, may be answered.
        """
        wanted = self.tokens.wanted(segments)
        if wanted is None:
            return True
        given = bearerToken(request)
        return given is not None and hmac.compare_digest(given, wanted)

    def getChildWithDefault(self, path, request):
        if not self.hostAllowed(request):
            return Misdirected()
        if not self.allows([path, *request.postpath], request):
            return Unauthorized()
        return self.root.getChildWithDefault(path, request)

    def render(self, request):  # only reached by a request with no path segment at all
        if not self.hostAllowed(request):
            return Misdirected().render(request)
        return NotFound().render(request)


#: The headers of every response of the status site, set before a resource renders (a
#: resource may replace C{Cache-Control}: the page's static files may say C{no-cache}).
SECURITY_HEADERS = (
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)

#: The C{Server} header of the status site: no Twisted version.
SERVER = b"portserver"


class StatusRequest(Request):
    """
    A request of the status site: its response has L{SECURITY_HEADERS} (404s, 401s and
    Twisted's own 500s and C{OPTIONS *} answers too) and C{Server: portserver}.
    """

    def process(self):
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        super().process()

    def write(self, data):
        if not self.startedWriting:  # the headers go out now: replace Twisted's Server
            self.setHeader(b"server", SERVER)
        super().write(data)


class StatusChannel(HTTPChannel):
    """
    The status site's HTTP connection: the 400 Twisted answers a request it cannot
    parse (a bare C{HTTP/1.1 400 Bad Request} and no header) carries
    L{SECURITY_HEADERS} and C{Server: portserver} like every other response.
    """

    def _respondToBadRequestAndDisconnect(self):
        body = b"bad request\n"
        headers = b"".join(b"%s: %s\r\n" % header for header in SECURITY_HEADERS)
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\n" + headers
            + b"Server: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n" % (SERVER, TEXT_TYPE.encode("ascii"), len(body))
            + body)
        self.loseConnection()


class QuietSite(Site):
    """
    A L{Site} that writes no access-log line per request (a Prometheus scrape every few
    seconds would flood the log) and no "Starting factory" lines; its requests are
    L{StatusRequest}s on L{StatusChannel}s, and it never shows a traceback.
    """

    noisy = False
    displayTracebacks = False
    requestFactory = StatusRequest
    protocol = StatusChannel

    def log(self, request):
        pass


def isLocalAddress(address) -> bool:
    """
    Whether a port bound to C{address} is reachable only from this host: a loopback IP
    address, or a UNIX socket.
    """
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        return isLoopback(address.host)
    return False


class StatusService(BindingService):
    """
    Serves L{Root} behind a L{Guard} on the endpoint string C{listen}, bound in
    C{privilegedStartService} (like L{PortServer}'s listeners); a failed listen raises
    L{StartupError}, and so does a bound address other than loopback or a UNIX socket
    without a main token.

    @ivar tokens: the L{AccessTokens}: as given, else those of the server's config
        (C{server.plan.config.status}).

    @ivar port: the L{IListeningPort} while listening, else L{None}.
    @ivar history: the L{History} of C{/api/history}, sampling on C{reactor} while this
        service runs.
    """

    def __init__(self, server, listen: str, reactor=None,
                 tokens: AccessTokens | None = None):
        self.server = server
        self.listen = listen
        self.tokens = AccessTokens.fromSpec(server.plan.config.status) if tokens is None \
            else tokens
        self.reactor = server.reactor if reactor is None else reactor
        self.history = History.forServer(server, self.reactor)
        self.site = QuietSite(Guard(Root(server, self.history), self.tokens),
                              reactor=self.reactor)
        self.port = None
        self.setName("status")

    def url(self) -> str:
        address = self.address
        host, port = getattr(address, "host", None), getattr(address, "port", None)
        if host is None or port is None:
            return str(address)
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def bind(self) -> None:
        """
        Listen, unless listening already.

        @raise StartupError: naming the status service, the endpoint and the OS error; or,
            when the service has no token and the bound address is not loopback nor a
            UNIX socket, saying so (and the port is closed again at once).
        """
        if self.port is not None:
            return
        try:
            endpoint = serverFromString(self.reactor, self.listen)
        except Exception as e:  # each endpoint type's parser raises its own kind
            raise StartupError(f"cannot start the status service: "
                               f"{endpointProblem(self.listen, e)}") from e
        outcome = []
        waiting = endpoint.listen(self.site)
        waiting.addBoth(outcome.append)
        if not outcome:
            waiting.cancel()
            raise StartupError(f"cannot start the status service on {self.listen!r}: the "
                               "endpoint does not listen at once (use tcp:, tcp6:, ssl: or "
                               "unix:)")
        [result] = outcome
        if isinstance(result, Failure):
            error = result.value
            reason = getattr(error, "socketError", None) or error
            raise StartupError(f"cannot start the status service on {self.listen!r}: "
                               f"{reason}") from error
        self.port = result
        address = self.address
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.site.resource.boundHost = address.host
        if self.tokens.token is None and not isLocalAddress(self.address):
            where = self.url()
            self.unbind().addErrback(lambda f: log.failure("Closing {url}", f, url=where))
            raise StartupError(f"refusing to start the status service on {self.listen!r} "
                               f"without a token: {where} is not loopback; set status.token "
                               "or status.token_file")
        log.info("Status service listening on {url}", url=self.url(), endpoint=self.listen)

    def startService(self):
        """
        Listen (unless listening already) and start sampling the history.
        """
        super().startService()
        self.history.startService()

    def stopService(self):
        """
        Stop sampling the history and stop listening.
        """
        self.history.stopService()
        return super().stopService()
