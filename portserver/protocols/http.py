"""
C{http}: a static file server, L{twisted.web.static.File} behind a few guards.

What C{File} gives and is kept: C{Content-Length}, C{Last-Modified} and C{If-Modified-Since}
(304), C{Range} (206, 416 when unsatisfiable), and C{HEAD}. What is added:

  - Containment: C{File} follows symlinks, so every child it is asked for (and every index
    file it finds) is checked with C{os.path.realpath} to be the root or under it, and to be
    a regular file or a directory (a FIFO or a device would block or never end). Anything
    else is a 404, as is a C{..} segment, a percent-encoded C{%2e%2e} or C{%2f}, a NUL, or
    a segment that is not UTF-8. A symlink that stays inside the root is served.
  - Directory listings only when C{listing: true}; otherwise a directory without an index
    file is a 404 (not a 403: the answer does not tell a directory from a missing path),
    and a listing leaves out the entries that point outside the root.
  - Only GET and HEAD: any other method is a 405 with C{Allow: GET, HEAD}, before the path
    is even looked at.
  - Small plain HTML error pages, with a C{Content-Length}, never a traceback.
  - Files of an unknown type are C{application/octet-stream} (C{File}'s default is
    C{text/html}); C{mime_types} adds or overrides extensions.
  - A C{Server: portserver} header, not Twisted's version.
  - Bodies are pushed (L{PushFile}), paced by the transport, rather than pulled by the
    global cooperator: the C{Site} runs on the reactor it is given.
  - One access-log event per request through L{twisted.logger}, with the client's port,
    which the Common Log Format of C{Site} lacks: C{Site.log} (called once, when the
    response is finished) emits it, and a request whose client went away before the end
    is logged when its connection is lost, marked C{aborted}::

        web 203.0.113.7:40001 "GET /a.txt HTTP/1.1" 200 1234

    Fields: C{service}, C{client} (C{ip:port}, C{[ip]:port} for IPv6), C{client_ip},
    C{client_port}, C{method}, C{path} (as sent, with the query), C{version}, C{status},
    C{bytes} (of body sent) and C{aborted}. The Site writes no log file of its own and
    keeps no once-a-second timer for one.
"""

from __future__ import annotations

import os
import re
from html import escape

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server, static
from zope.interface import implementer

from portserver.options import Option
from portserver.provider import PortProtocol
from portserver.registry import Endpoint
from portserver.tracking import hostOf

log = Logger()

ALLOWED_METHODS = (b"GET", b"HEAD")
SERVER_HEADER = b"portserver"
DEFAULT_INDEX = ["index.html", "index.htm"]
DEFAULT_TYPE = "application/octet-stream"


# -- options ------------------------------------------------------------------------------

_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_MIME = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=(\"[^\"]*\"|{_TOKEN}))*")


def _checkRoot(root: str) -> str | None:
    if not root.strip():
        return "must not be empty"
    if "\0" in root:
        return "must not contain a NUL character"
    real = os.path.realpath(root)
    if not os.path.exists(real):
        return f"{root!r} does not exist (resolved to {real!r})"
    if not os.path.isdir(real):
        return f"{root!r} is not a directory (resolved to {real!r})"
    return None


def _checkIndex(names: list) -> str | None:
    for name in names:
        if not isinstance(name, str) or not name:
            return f"{name!r} is not a file name: each entry must be a non-empty string"
        if "/" in name or "\0" in name or name in (".", ".."):
            return f"{name!r} is not a plain file name"
    return None


def _checkMimeTypes(types: dict) -> str | None:
    for ext, mime in types.items():
        if (not isinstance(ext, str) or len(ext) < 2 or not ext.startswith(".")
                or "/" in ext or any(c.isspace() for c in ext)):
            return f"{ext!r} is not an extension like '.md' (a dot, then the extension)"
        if not isinstance(mime, str) or not _MIME.fullmatch(mime.strip()):
            return f"{ext}: {mime!r} is not a MIME type like 'text/markdown'"
    return None


def _normaliseMimeTypes(types: dict) -> dict:
    """
    Extensions in lower case (as C{File} looks them up), MIME types stripped.
    """
    return {ext.lower(): mime.strip() for ext, mime in types.items()}


#: C{root} is required, and kept as an absolute path with symlinks resolved.
OPTIONS = {
    "root": Option(str, None, _checkRoot, describe="a directory path", required=True,
                   convert=os.path.realpath),
    "index": Option(list, list(DEFAULT_INDEX), _checkIndex, describe="a list of file names",
                    convert=list),
    "listing": Option(bool, False),
    "mime_types": Option(dict, {}, _checkMimeTypes,
                         describe="a mapping of extension to MIME type",
                         convert=_normaliseMimeTypes),
}


# -- resources ----------------------------------------------------------------------------


def _headless(request, body: bytes) -> bytes:
    """
    C{body} for a GET; for a HEAD, its length only (C{Request.render} would otherwise log
    a warning for each HEAD answered with a body).
    """
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""
    return body


class ErrorPage(resource.Resource):
    """
    A small HTML page with a status code, for every method and every path below it.
    """

    isLeaf = True

    def __init__(self, code: int, brief: str, detail: str, headers=()):
        super().__init__()
        self.code = code
        self.headers = tuple(headers)
        self.body = (
            f"<!DOCTYPE html>\n<html><head><title>{code} {escape(brief)}</title></head>"
            f"<body><h1>{code} {escape(brief)}</h1><p>{escape(detail)}</p></body></html>\n"
        ).encode("utf-8")

    def render(self, request):
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        for name, value in self.headers:
            request.setHeader(name, value)
        return _headless(request, self.body)


NOT_FOUND = ErrorPage(404, "Not Found", "The requested URL was not found on this server.")
INTERNAL_ERROR = ErrorPage(500, "Internal Server Error", "The file could not be read.")
BAD_REQUEST = ErrorPage(400, "Bad Request", "The request could not be understood.")
METHOD_NOT_ALLOWED = ErrorPage(405, "Method Not Allowed", "Only GET and HEAD are allowed.",
                               headers=[(b"allow", b", ".join(ALLOWED_METHODS))])


class Lister(static.DirectoryLister):
    """
    L{static.DirectoryLister} that answers HEAD without a body, a URI it cannot show with
    a 400 instead of a 500, and any path below it (C{//x}) with our 404.
    """

    def getChild(self, path, request):
        return NOT_FOUND

    def render(self, request):
        try:
            body = super().render(request)
        except ValueError:  # the URI is not ASCII (UnicodeError is a ValueError)
            return BAD_REQUEST.render(request)
        return _headless(request, body)


@implementer(IPushProducer)
class PushFile:
    """
    Streams the body of one of L{static.File}'s pull producers as a push producer: it
    writes chunk after chunk until the transport pauses it (its buffer is full), and
    goes on when resumed.

    C{File}'s producers register as pull producers, and C{HTTPChannel} drives those
    with the global L{twisted.internet.task.cooperate}, that is on the global reactor
    whatever reactor the C{Site} was given. Here no reactor is involved: the transport
    paces the writes, and an in-memory transport gets the whole body at once.

    To the wrapped producer this stands in for the request.
    """

    def __init__(self, request, pull):
        self.request = request
        self.pull = pull
        self.paused = False
        self.running = False
        pull.request = self

    # -- what the wrapped producer calls, as if this were the request ---------------------

    def registerProducer(self, producer, streaming):
        self.request.registerProducer(self, True)

    def unregisterProducer(self):
        self.request.unregisterProducer()

    def write(self, data):
        self.request.write(data)

    def finish(self):
        self.request.finish()

    # -- the producer ---------------------------------------------------------------------

    def start(self):
        # A transport stops its producer when the connection is lost; this closes the
        # file even if nothing does.
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        try:
            self.pull.start()  # seeks to the first range, and registers
        except Exception:
            self.failed()
            return
        self.produce()

    def produce(self):
        if self.running:  # resumed from within a write: the loop below goes on
            return
        self.running = True
        try:
            while not self.paused and self.pull.request is not None:
                self.pull.resumeProducing()
        except Exception:
            self.failed()
        finally:
            self.running = False

    def failed(self):
        """
        Reading the file failed (called in an C{except} block): log it, then answer a
        500 page if nothing was sent yet, else (the headers are out) close the connection.
        """
        log.failure("{service}: reading {path} failed",
                    path=getattr(self.pull.fileObject, "name", "?"),
                    service=getattr(self.request.site, "service", "?"))
        self.pull.stopProducing()
        request = self.request
        if request.channel is None:  # gone already
            return
        request.unregisterProducer()
        if request.startedWriting:
            request.loseConnection()
            return
        request.responseHeaders.removeHeader(b"content-range")
        body = INTERNAL_ERROR.render(request)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.produce()

    def stopProducing(self):
        if self.pull.request is not None:
            self.pull.stopProducing()


def isInside(root: str, path: str) -> bool:
    """
    Whether C{path}, symlinks resolved, is C{root} (a real path) or under it, and is a
    regular file or a directory.
    """
    real = os.path.realpath(path)
    prefix = root if root.endswith(os.sep) else root + os.sep
    if real != root and not real.startswith(prefix):
        return False
    return os.path.isfile(real) or os.path.isdir(real)


class StaticFile(static.File):
    """
    L{static.File} confined to C{root}: see the module's docstring.

    @ivar root: the served directory, an absolute real path.
    @ivar listing: whether a directory without an index file is listed.
    """

    childNotFound = NOT_FOUND
    forbidden = ErrorPage(403, "Forbidden", "You may not read this file.")

    def __init__(self, path, defaultType=DEFAULT_TYPE, ignoredExts=(), registry=None, *,
                 root: str | None = None, listing: bool = False, contentTypes=None,
                 indexNames=None):
        super().__init__(path, defaultType, ignoredExts, registry)
        self.root = os.path.realpath(path) if root is None else root
        self.listing = listing
        if contentTypes is not None:
            self.contentTypes = contentTypes
        if indexNames is not None:
            self.indexNames = list(indexNames)

    def createSimilarFile(self, path):
        return self.__class__(path, self.defaultType, self.ignoredExts, self.registry,
                              root=self.root, listing=self.listing,
                              contentTypes=self.contentTypes, indexNames=self.indexNames)

    def getChild(self, path, request):
        try:
            name = path.decode("utf-8") if isinstance(path, bytes) else path
        except UnicodeDecodeError:  # File would log an error for each such request
            return self.childNotFound
        if "\0" in name:
            return self.childNotFound
        child = super().getChild(path, request)
        if isinstance(child, static.File) and not isInside(self.root, child.path):
            return self.childNotFound
        return child

    def directoryListing(self):
        if not self.listing:
            return self.childNotFound
        names = [name for name in self.listNames()
                 if isInside(self.root, os.path.join(self.path, name))]
        return Lister(self.path, names, self.contentTypes, self.contentEncodings,
                      self.defaultType)

    def makeProducer(self, request, fileForReading):
        return PushFile(request, super().makeProducer(request, fileForReading))

    def redirect(self, request):
        try:
            body = super().redirect(request)
        except ValueError:  # a URI that is not ASCII cannot be redirected to
            return BAD_REQUEST.render(request)
        return _headless(request, body)


# -- the site -----------------------------------------------------------------------------


def _printable(data: bytes) -> str:
    """
    C{data} for a log line: printable ASCII as is, the rest (and C{"} and C{\\}) escaped.
    """
    return "".join(chr(c) if 32 < c < 127 and c not in b'"\\' else f"\\x{c:02x}"
                   for c in data)


class StaticRequest(server.Request):
    """
    A request that says C{Server: portserver} and is logged even when its client goes
    away before the response ends.
    """

    processing = False

    def setHeader(self, name, value):
        if isinstance(name, bytes) and name.lower() == b"server":
            value = SERVER_HEADER
        super().setHeader(name, value)

    def process(self):
        self.processing = True
        super().process()

    def connectionLost(self, reason):
        if self.processing and not self.finished:
            self.site.logRequest(self, aborted=True)
        super().connectionLost(reason)


class StaticSite(server.Site):
    """
    The C{Site} of an C{http} service: GET and HEAD only, quiet, one access-log event per
    request through L{twisted.logger} (see the module's docstring).

    @ivar service: the service's name, a field of every access-log event.
    @ivar logger: where access-log events go.
    """

    noisy = False
    requestFactory = StaticRequest
    logger = log

    def __init__(self, root, service: str, reactor, logger: Logger | None = None):
        super().__init__(root, reactor=reactor)
        self.service = service
        if logger is not None:
            self.logger = logger

    def startFactory(self):
        # No access-log file and no timer for its timestamps: log() emits events.
        pass

    def stopFactory(self):
        pass

    def getResourceFor(self, request):
        if request.method not in ALLOWED_METHODS:
            return METHOD_NOT_ALLOWED
        return super().getResourceFor(request)

    def log(self, request):
        self.logRequest(request)

    def logRequest(self, request, aborted: bool = False) -> None:
        """
        Emit the access-log event of C{request}.
        """
        address = request.getClientAddress()
        host = getattr(address, "host", None)
        if host is None:
            ip, port, client = "-", 0, "-"
        else:
            ip, port = hostOf(host), address.port
            client = str(Endpoint(ip, port))
        self.logger.info(
            '{service} {client} "{method} {path} {version}" {status} {bytes}{note}',
            service=self.service, client=client, client_ip=ip, client_port=port,
            method=_printable(request.method), path=_printable(request.uri),
            version=_printable(request.clientproto), status=request.code,
            bytes=request.sentLength, aborted=aborted, note=" aborted" if aborted else "")


def buildFactory(service, reactor) -> StaticSite:
    """
    The factory of an C{http} service: a L{StaticSite} serving C{options["root"]}.
    """
    options = service.options
    contentTypes = dict(static.File.contentTypes)  # a copy: File's is mimetypes' own dict
    contentTypes.update(options["mime_types"])
    root = StaticFile(options["root"], root=options["root"], listing=options["listing"],
                      contentTypes=contentTypes, indexNames=options["index"])
    return StaticSite(root, service.name, reactor)


http = PortProtocol(
    name="http",
    description="HTTP: static files from a directory (GET and HEAD, ranges, caching)",
    wellKnownPort=80,
    factory=buildFactory,
    options=OPTIONS,
)
