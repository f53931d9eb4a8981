"""
C{http}: a static file server, L{twisted.web.static.File} behind a few guards.

What C{File} gives and is kept: C{Content-Length}, C{Last-Modified}, and C{HEAD}. What is
added:

  - Validators and ranges (L{portserver.protocols.http_ranges}): a strong C{ETag};
    C{If-None-Match} before C{If-Modified-Since}, which is ignored when in the future; a
    304 without C{Content-Length}; C{Range} (206, 416) with overlapping and adjacent
    ranges coalesced, more than 100 ranges or more bytes than the file answered 200
    with the whole file (C{File} sends 200 copies for C{bytes=0-,0-,...}), a suffix
    longer than the file served whole; C{If-Range} with a tag or a date.
  - The request head bounded and checked (L{portserver.protocols.http_channel}): the
    C{header_timeout}, 414 / 431 / 400 / 408 answered and logged, HTTP/1.1 without one
    C{Host} a 400, absolute-form targets served, half-closed clients answered, HTTP/1.0
    keep-alive. A default C{idle_timeout} of 120 s (L{DEFAULT_LIMITS}): bodies are
    written only when the transport takes them, so a client that reads nothing stops
    all activity and is cut.

  - Containment: C{File} follows symlinks, so every child it is asked for (and every index
    file it finds) is checked to be the root or under it (one C{lstat} for an entry of a
    real directory, C{os.path.realpath} once a symlink is met), and to be
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
    global cooperator: the C{Site} runs on the reactor it is given. A file of up to
    L{SMALL_FILE} bytes asked for whole is read at once and sent in one write.
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

import errno
import io
import math
import os
import re
import stat
import time
from urllib.parse import urlsplit

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server, static
# Imported by name: twisted.web.http is a deprecation proxy, which costs a Python call
# for every attribute read through it (two a request).
from twisted.web.http import NOT_MODIFIED, OK, PARTIAL_CONTENT, REQUESTED_RANGE_NOT_SATISFIABLE
from zope.interface import implementer

from portserver.options import Option, seconds
from portserver.protocols import http_ranges as ranges
from portserver.protocols.http_channel import SERVER_HEADER, StaticChannel, page
from portserver.provider import PortProtocol
from portserver.registry import Endpoint
from portserver.tracking import hostOf

log = Logger()

ALLOWED_METHODS = (b"GET", b"HEAD")
DEFAULT_INDEX = ["index.html", "index.htm"]
DEFAULT_TYPE = "application/octet-stream"
# Resources of the paths served lately, kept per service (L{StaticFile.children}).
MAX_CACHED_CHILDREN = 4096
# Path segments that File.getChild must judge itself (an index, ".", "..").
_NOT_NAMES = frozenset({"", ".", ".."})
# Files up to this size (with no Range) are read at once and sent in one write; larger
# ones are pushed by a PushFile, paced by the transport.
SMALL_FILE = 64 * 1024
#: The limits an C{http} service has unless configured: a client that reads nothing of
#: its response is closed after two minutes without progress.
DEFAULT_LIMITS = {"idle_timeout": 120}


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


_positiveSeconds = seconds()


def _atLeast(minimum: int):
    def check(value) -> str | None:
        return None if value >= minimum else f"must be {minimum} or more"
    return check


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
    "header_timeout": Option((int, float), 30, _positiveSeconds,
                             describe="a number of seconds"),
    "max_uri_length": Option(int, 8192, _atLeast(16), describe="a number of bytes"),
    "max_header_bytes": Option(int, 16384, _atLeast(64), describe="a number of bytes"),
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
        self.body = page(code, brief, detail)

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
    @ivar real: whether this resource's path is known to be a real path (no symlink in
        it) at or under the root: the root itself, and each child checked from a real
        directory. Only such a directory's children skip C{realpath}.
    @ivar listing: whether a directory without an index file is listed.
    @ivar children: the resources made for children found by one C{lstat} (a regular
        file or a directory, in a real directory), by path; shared by every resource
        of a service and emptied when it reaches L{MAX_CACHED_CHILDREN}. A resource
        holds no answer, only its path and type: each request stats and opens again.
    """

    childNotFound = NOT_FOUND
    forbidden = ErrorPage(403, "Forbidden", "You may not read this file.")

    def __init__(self, path, defaultType=DEFAULT_TYPE, ignoredExts=(), registry=None, *,
                 root: str | None = None, listing: bool = False, contentTypes=None,
                 indexNames=None, children: dict | None = None):
        super().__init__(path, defaultType, ignoredExts, registry)
        self.root = os.path.realpath(path) if root is None else root
        self.real = self.path == self.root
        self.listing = listing
        self.children = {} if children is None else children
        if contentTypes is not None:
            self.contentTypes = contentTypes
        if indexNames is not None:
            self.indexNames = list(indexNames)

    def createSimilarFile(self, path):
        return self.__class__(path, self.defaultType, self.ignoredExts, self.registry,
                              root=self.root, listing=self.listing,
                              contentTypes=self.contentTypes, indexNames=self.indexNames,
                              children=self.children)

    def getChild(self, path, request):
        try:
            name = path.decode("utf-8") if isinstance(path, bytes) else path
        except UnicodeDecodeError:  # File would log an error for each such request
            return self.childNotFound
        if "\0" in name:
            return self.childNotFound
        if self.real and name not in _NOT_NAMES and "/" not in name:
            # The common case, with one lstat: a regular file or a directory (not a
            # symlink) in a real directory under the root is under the root too. Its
            # resource is reused from the last request for it (a FilePath, a type
            # lookup and two stats fewer); anything else takes File's own way.
            childPath = self.path + "/" + name
            try:
                mode = os.lstat(childPath).st_mode
            except OSError:
                mode = 0
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                children = self.children
                child = children.get(childPath)
                if child is None:
                    if len(children) >= MAX_CACHED_CHILDREN:
                        children.clear()
                    child = children[childPath] = self.createSimilarFile(childPath)
                    child.real = True
                return child
        child = super().getChild(path, request)
        if isinstance(child, static.File):
            if self.real and os.path.dirname(child.path) == self.path:
                # This directory is a real path under the root: a child that is not a
                # symlink is too, and one lstat shows it (realpath takes one per level).
                try:
                    mode = os.lstat(child.path).st_mode
                except OSError:
                    return self.childNotFound
                if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                    child.real = True
                    return child
                if not stat.S_ISLNK(mode):
                    return self.childNotFound  # a FIFO, a device, a socket
            if not isInside(self.root, child.path):
                return self.childNotFound
        return child

    def directoryListing(self):
        if not self.listing:
            return self.childNotFound
        names = [name for name in self.listNames()
                 if isInside(self.root, os.path.join(self.path, name))]
        return Lister(self.path, names, self.contentTypes, self.contentEncodings,
                      self.defaultType)

    def render_GET(self, request):
        """
        L{static.File.render_GET} with validators: a strong C{ETag}, C{If-None-Match}
        (before C{If-Modified-Since}, which is ignored when in the future), and the
        length, tag and date of the file as opened (not as named a moment before).
        """
        self.restat(False)
        if self.type is None:
            self.type, self.encoding = static.getTypeAndEncoding(
                self.basename(), self.contentTypes, self.contentEncodings,
                self.defaultType)
        if not self.exists():
            return self.childNotFound.render(request)
        if self.isdir():
            return self.redirect(request)
        request.setHeader(b"accept-ranges", b"bytes")
        try:
            fileForReading = self.openForReading()
        except OSError as e:
            if e.errno == errno.EACCES:
                return self.forbidden.render(request)
            raise
        try:
            info = os.fstat(fileForReading.fileno())
        except (AttributeError, OSError, ValueError):  # not a real file: by its name
            info = os.stat(self.path)
        size = info.st_size
        request.etag = ranges.strongETag(size, info.st_mtime_ns)
        request.lastModified = int(math.ceil(info.st_mtime))
        if self.notModified(request):
            fileForReading.close()
            request.setResponseCode(NOT_MODIFIED)
            return b""
        if request.method == b"HEAD":
            self._setContentHeaders(request, size)
            fileForReading.close()
            return b""
        if size <= SMALL_FILE and request.getHeader(b"range") is None:
            return self._whole(request, fileForReading, size)
        producer = self.makeProducer(request, fileForReading, size)
        producer.start()
        return server.NOT_DONE_YET

    def openForReading(self):
        """
        The file, opened unbuffered (C{io.FileIO}): the producers and L{_whole} read it
        in chunks of their own, so a buffered reader would only add its own copy and two
        system calls (C{ioctl}, C{lseek}) per request.
        """
        return io.FileIO(self.path, "r")

    def _whole(self, request, fileForReading, size: int) -> bytes:
        """
        A small file's 200, read at once and returned as the body: the response is one
        write, with no producer to register (which would keep every write on Twisted's
        buffered path).
        """
        try:
            with fileForReading:
                body = fileForReading.read(size)
                while len(body) < size:  # a short read (a signal): read on to the end
                    more = fileForReading.read(size - len(body))
                    if not more:
                        break
                    body += more
        except OSError:
            log.failure("{service}: reading {path} failed", path=self.path,
                        service=getattr(request.site, "service", "?"))
            return INTERNAL_ERROR.render(request)
        request.setResponseCode(OK)
        self._setContentHeaders(request, len(body))
        return body

    render_HEAD = render_GET

    def notModified(self, request) -> bool:
        """
        Whether C{request}'s conditions make it a 304, given its C{etag} and
        C{lastModified} (RFC 9110 §13.2.2: C{If-None-Match} first, and when it is sent
        C{If-Modified-Since} is not looked at).
        """
        tags = request.requestHeaders.getRawHeaders(b"if-none-match")
        if tags is not None:
            return ranges.noneMatch(tags, request.etag)
        since = request.getHeader(b"if-modified-since")
        return since is not None and not ranges.modifiedSince(
            since, request.lastModified, _now(request))

    def makeProducer(self, request, fileForReading, size=None):
        """
        A L{PushFile} of what C{Range} and C{If-Range} ask for (see
        L{ranges.plan}): the whole file, one range, several coalesced ones, or a 416.
        """
        if size is None:
            size = self.getFileSize()
        spans = None
        value = request.getHeader(b"range")
        if value is not None:
            condition = request.getHeader(b"if-range")
            if condition is None or ranges.rangeStillValid(
                    condition, request.etag or b"", request.lastModified or 0,
                    _now(request)):
                spans = ranges.plan(value, size)
        if spans is None:
            request.setResponseCode(OK)
            self._setContentHeaders(request, size)
            pull = static.NoRangeStaticProducer(request, fileForReading)
        elif not spans:
            request.setResponseCode(REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            self._setContentHeaders(request, 0)
            pull = static.SingleRangeStaticProducer(request, fileForReading, 0, 0)
        elif len(spans) == 1:
            [(start, end)] = spans
            request.setResponseCode(PARTIAL_CONTENT)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end - 1, size))
            self._setContentHeaders(request, end - start)
            pull = static.SingleRangeStaticProducer(request, fileForReading, start,
                                                    end - start)
        else:
            pull = static.MultipleRangeStaticProducer(
                request, fileForReading, self._parts(request, spans, size))
        return PushFile(request, pull)

    def _parts(self, request, spans, size):
        """
        The C{(separator, offset, length)} parts of a C{multipart/byteranges} 206 of
        C{spans}, its headers set.
        """
        boundary = os.urandom(12).hex().encode("ascii")
        contentType = (self.type or DEFAULT_TYPE).encode("latin-1")
        parts = []
        length = 0
        for start, end in spans:
            separator = (b"\r\n--%s\r\nContent-type: %s\r\nContent-range: bytes %d-%d/%d"
                         b"\r\n\r\n" % (boundary, contentType, start, end - 1, size))
            parts.append((separator, start, end - start))
            length += len(separator) + end - start
        final = b"\r\n--%s--\r\n" % boundary
        parts.append((final, 0, 0))
        request.setResponseCode(PARTIAL_CONTENT)
        request.setHeader(b"content-type",
                          b'multipart/byteranges; boundary="%s"' % boundary)
        request.setHeader(b"content-length", b"%d" % (length + len(final)))
        return parts

    def redirect(self, request):
        try:
            body = super().redirect(request)
        except ValueError:  # a URI that is not ASCII cannot be redirected to
            return BAD_REQUEST.render(request)
        return _headless(request, body)


def _now(request) -> float:
    """
    The time by the clock of C{request}'s site (the reactor it was given).
    """
    reactor = getattr(getattr(request, "site", None), "reactor", None)
    return time.time() if reactor is None else reactor.seconds()


# -- the site -----------------------------------------------------------------------------


_ESCAPED = re.compile(rb'[^\x21\x23-\x5b\x5d-\x7e]')


def _printable(data: bytes) -> str:
    """
    C{data} for a log line: printable ASCII as is, the rest (and C{"} and C{\\}) escaped.
    """
    if _ESCAPED.search(data) is None:
        return data.decode("ascii")
    return "".join(chr(c) if 32 < c < 127 and c not in b'"\\' else f"\\x{c:02x}"
                   for c in data)


class StaticRequest(server.Request):
    """
    A request that says C{Server: portserver}, is logged even when its client goes away
    before the response ends, takes its target in absolute-form too, and sends no
    C{Content-Length} with a 304.

    @ivar target: the request target as sent (what the access log shows).
    @ivar badTarget: the target is in absolute-form with a scheme other than http(s).
    """

    processing = False
    target = None
    badTarget = False

    def setHeader(self, name, value):
        if isinstance(name, bytes) and name.lower() == b"server":
            value = SERVER_HEADER
        super().setHeader(name, value)

    def requestReceived(self, command, path, version):
        self.target = path
        if not path.startswith(b"/") and b"://" in path:
            # Absolute-form (RFC 9112 §3.2.2): the authority replaces any Host header,
            # and the path (with the query) is what is served.
            parts = urlsplit(path)
            if parts.scheme.lower() not in (b"http", b"https"):
                self.badTarget = True
            self.requestHeaders.setRawHeaders(b"host", [parts.netloc])
            path = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
        super().requestReceived(command, path, version)

    def process(self):
        self.processing = True
        super().process()

    def write(self, data):
        if not self.startedWriting:
            if self.code == NOT_MODIFIED:
                # Request.render sets "Content-Length: 0" for the empty body; for a 304 it
                # would claim the 200's length is 0 (RFC 9110 §8.6).
                self.responseHeaders.removeHeader(b"content-length")
            elif (self.clientproto != b"HTTP/1.1" and self.channel is not None
                    and self.channel.persistent and self.method != b"HEAD"
                    and not self.responseHeaders.hasHeader(b"content-length")):
                # A kept-alive HTTP/1.0 response can only end with the connection.
                self.channel.persistent = False
                self.responseHeaders.setRawHeaders(b"connection", [b"close"])
        super().write(data)

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
    protocol = StaticChannel
    requestFactory = StaticRequest
    logger = log

    def __init__(self, root, service: str, reactor, logger: Logger | None = None, *,
                 headerTimeout: float | None = 30.0, maxURILength: int = 8192,
                 maxHeaderBytes: int = 16384):
        # No TimeoutMixin timer (timeout=None): the channel's head timeout and the
        # tracking layer's idle timeout bound a connection.
        super().__init__(root, reactor=reactor, timeout=None)
        self.service = service
        if logger is not None:
            self.logger = logger
        self.headerTimeout = headerTimeout
        self.maxURILength = maxURILength
        self.maxHeaderBytes = maxHeaderBytes

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.headerTimeout = self.headerTimeout
        channel.maxURILength = self.maxURILength
        channel.maxHeaderBytes = self.maxHeaderBytes
        return channel

    def startFactory(self):
        # No access-log file and no timer for its timestamps: log() emits events.
        pass

    def stopFactory(self):
        pass

    def getResourceFor(self, request):
        hosts = request.requestHeaders.getRawHeaders(b"host", ())
        if (request.badTarget or len(hosts) > 1
                or (not hosts and request.clientproto == b"HTTP/1.1")):
            # RFC 9112 §3.2: exactly one Host in HTTP/1.1; the connection is closed after
            # the 400, as for any malformed request.
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
            return BAD_REQUEST
        if request.method not in ALLOWED_METHODS:
            return METHOD_NOT_ALLOWED
        return super().getResourceFor(request)

    def log(self, request):
        self.logRequest(request)

    def logRequest(self, request, aborted: bool = False) -> None:
        """
        Emit the access-log event of C{request}.
        """
        self.logAccess(request.getClientAddress(), request.method,
                       request.target or request.uri, request.clientproto, request.code,
                       request.sentLength, aborted)

    def logAccess(self, address, method: bytes, path: bytes, version: bytes, status: int,
                  sent: int, aborted: bool = False) -> None:
        """
        Emit one access-log event: a request from C{address} answered C{status} with
        C{sent} bytes of body (also for the requests the channel refuses).
        """
        host = getattr(address, "host", None)
        if host is None:
            ip, port, client = "-", 0, "-"
        else:
            ip, port = hostOf(host), address.port
            client = str(Endpoint(ip, port))
        method, path, version = _printable(method), _printable(path), _printable(version)
        # The line is made once here: a format with one field costs the log observer a
        # fraction of one with eleven, per request (the fields stay in the event).
        line = (f'{self.service} {client} "{method} {path} {version}" {status} {sent}'
                + (" aborted" if aborted else ""))
        self.logger.info(
            "{access_line}", access_line=line, service=self.service, client=client,
            client_ip=ip, client_port=port, method=method, path=path, version=version,
            status=status, bytes=sent, aborted=aborted)


def buildFactory(service, reactor) -> StaticSite:
    """
    The factory of an C{http} service: a L{StaticSite} serving C{options["root"]}.
    """
    options = service.options
    contentTypes = dict(static.File.contentTypes)  # a copy: File's is mimetypes' own dict
    contentTypes.update(options["mime_types"])
    root = StaticFile(options["root"], root=options["root"], listing=options["listing"],
                      contentTypes=contentTypes, indexNames=options["index"])
    return StaticSite(root, service.name, reactor, headerTimeout=options["header_timeout"],
                      maxURILength=options["max_uri_length"],
                      maxHeaderBytes=options["max_header_bytes"])


http = PortProtocol(
    name="http",
    description="HTTP: static files from a directory (GET and HEAD, ranges, caching)",
    wellKnownPort=80,
    factory=buildFactory,
    options=OPTIONS,
    defaultLimits=DEFAULT_LIMITS,
)
