"""
The status web service: what a L{PortServer}'s registry knows, over HTTP.

    GET /                  a plain index of the endpoints below
    GET /api/connections   live connections: ?service=NAME, ?state=open|closed,
                           ?transport=tcp|udp (live UDP flows with udp)
    GET /api/listeners     every listener with its live connection count
    GET /api/summary       totals by port class and privilege, version, config path
    GET /metrics           Prometheus text exposition

The resources only render what the registry and the server say at request time; they keep
no state of their own.
"""

from __future__ import annotations

import json
from html import escape
from time import perf_counter

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

import portserver
from portserver.registry import CLOSED, OPEN
from portserver.service import BindingService, StartupError
from portserver.status.metrics import collectorRegistry

log = Logger()

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"


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

    def exists(self, request) -> bool:
        return not request.postpath

    def content(self, request) -> bytes:
        raise NotImplementedError

    def errorBody(self, message: str) -> tuple[bytes, str]:
        return message.encode("utf-8") + b"\n", TEXT_TYPE

    def render(self, request):
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
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


class Connections(JSONPage):
    """
    C{GET /api/connections}: the registry's records, live or recently closed.
    """

    def __init__(self, server):
        super().__init__()
        self.portServer = server

    def content(self, request) -> bytes:
        """
        The records as JSON, with a C{Server-Timing} header saying how long the registry
        snapshot, the conversion to dicts and the encoding each took.
        """
        service = queryParameter(request, "service")
        state = queryParameter(request, "state", (OPEN, CLOSED)) or OPEN
        transport = queryParameter(request, "transport", ("tcp", "udp"))
        registry = self.portServer.registry
        started = perf_counter()
        records = registry.select(service, state, transport)
        selected = perf_counter()
        dicts = registry.asDicts(records)
        converted = perf_counter()
        body = _json({"connections": dicts})
        encoded = perf_counter()
        request.setHeader(b"server-timing", serverTiming(
            snapshot=selected - started, dicts=converted - selected, encode=encoded - converted))
        return body


def serverTiming(**durations: float) -> bytes:
    """
    A C{Server-Timing} header value: C{name;dur=milliseconds} for each of C{durations}
    (given in seconds).
    """
    return ", ".join(f"{name};dur={seconds * 1000:.3f}"
                     for name, seconds in durations.items()).encode("ascii")


class Listeners(JSONPage):
    """
    C{GET /api/listeners}: every listener as bound, with its live connections.
    """

    def __init__(self, server):
        super().__init__()
        self.portServer = server

    def data(self, request):
        return {"listeners": self.portServer.listenerStates()}


class Summary(JSONPage):
    """
    C{GET /api/summary}: the registry's summary, the version and the config path, and the
    server's C{state}: C{"serving"}, or C{"draining"} while stopping (with C{remaining},
    the TCP connections still live, and C{drain_left}, the seconds until they are
    aborted); C{config_generation} (1 as started, +1 per reload applied),
    C{config_loaded_at} (Unix time) and C{last_reload} (the outcome of the last reload:
    C{result} C{"applied"} or C{"rejected"}, C{at}, C{generation}, C{errors}, and what an
    applied one changed), with C{reloads}, the counts by result.
    """

    def __init__(self, server):
        super().__init__()
        self.portServer = server

    def data(self, request):
        server = self.portServer
        summary = server.registry.summary(server.boundListeners())
        summary.update(server.drainState())
        summary["version"] = portserver.__version__
        summary["config"] = server.plan.config.path
        summary["config_generation"] = server.generation
        summary["config_loaded_at"] = server.loadedAt
        summary["last_reload"] = server.lastReload
        summary["reloads"] = {"applied": server.reloads["applied"],
                              "rejected": server.reloads["rejected"]}
        return summary


class Metrics(Page):
    """
    C{GET /metrics}: the Prometheus text exposition of the server's metrics.
    """

    contentType = CONTENT_TYPE_LATEST

    def __init__(self, server):
        super().__init__()
        self.collectors = collectorRegistry(server)

    def content(self, request) -> bytes:
        return generate_latest(self.collectors)


INDEX_LINKS = (
    ("api/connections", "live connections (?service=, ?state=closed, ?transport=udp)"),
    ("api/listeners", "listeners"),
    ("api/summary", "summary"),
    ("metrics", "Prometheus metrics"),
)


class Index(Page):
    """
    C{GET /}: links to the endpoints.
    """

    contentType = HTML_TYPE

    def content(self, request) -> bytes:
        items = "".join(f'<li><a href="{href}">/{href}</a>: {escape(text)}</li>\n'
                        for href, text in INDEX_LINKS)
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>portserver status</title></head>\n<body><h1>portserver "
                f"{escape(portserver.__version__)}</h1>\n<ul>\n{items}</ul></body></html>\n"
                ).encode("utf-8")


class Api(Resource):
    """
    C{/api/}: the JSON endpoints; anything else under it, and C{/api} itself, is a JSON 404.
    """

    def __init__(self, server):
        super().__init__()
        self.putChild(b"connections", Connections(server))
        self.putChild(b"listeners", Listeners(server))
        self.putChild(b"summary", Summary(server))

    def getChild(self, path, request):
        return JSONNotFound()

    def render(self, request):
        return JSONNotFound().render(request)


class Root(Resource):
    """
    The site's root: the index, C{/api/} and C{/metrics}; anything else is a 404.
    """

    def __init__(self, server):
        super().__init__()
        self.putChild(b"", Index())
        self.putChild(b"api", Api(server))
        self.putChild(b"metrics", Metrics(server))

    def getChild(self, path, request):
        return NotFound()


class QuietSite(Site):
    """
    A L{Site} that writes no access-log line per request (a Prometheus scrape every few
    seconds would flood the log) and no "Starting factory" lines.
    """

    noisy = False

    def log(self, request):
        pass


class StatusService(BindingService):
    """
    Serves L{Root} on the endpoint string C{listen}, bound in C{privilegedStartService}
    (like L{PortServer}'s listeners); a failed listen raises L{StartupError}.

    @ivar port: the L{IListeningPort} while listening, else L{None}.
    """

    def __init__(self, server, listen: str, reactor=None):
        self.server = server
        self.listen = listen
        self.reactor = server.reactor if reactor is None else reactor
        self.site = QuietSite(Root(server), reactor=self.reactor)
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

        @raise StartupError: naming the status service, the endpoint and the OS error.
        """
        if self.port is not None:
            return
        try:
            endpoint = serverFromString(self.reactor, self.listen)
        except (ValueError, TypeError, KeyError) as e:
            raise StartupError(f"cannot start the status service on {self.listen!r}: "
                               f"not a server endpoint string ({e})") from e
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
        log.info("Status service listening on {url}", url=self.url(), endpoint=self.listen)
