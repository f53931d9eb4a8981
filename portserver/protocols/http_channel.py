"""
The connection side of the C{http} protocol: L{StaticChannel}, an
L{twisted.web.http.HTTPChannel} that bounds the request head and answers what it refuses.

C{HTTPChannel} as shipped has an idle timer that every received byte resets (a client
that trickles its head holds the connection for ever), closes silently on a request line
longer than 16 KiB, answers a bare C{400} without a length to any other bad head, ignores
a client's half-close (C{nc -N} gets no bytes), keeps no HTTP/1.0 connection alive and
finds C{close} in C{Connection} only when it is separated by spaces. What this one does:

  - B{Head timeout.} The whole request head (and any body it announces) must arrive
    within C{headerTimeout} seconds of the connection, or of the end of the previous
    response on a kept-alive one: one C{callLater}, not reset by bytes. A client that
    sent part of a head then gets a 408; an idle kept-alive one is closed silently.
    While a response is being sent it does not run: stalled readers are the tracking
    layer's idle timeout's business.
  - B{Limits with their status.} A request target longer than C{maxURILength} is a 414,
    header fields of more than C{maxHeaderBytes} in all a 431, any other malformed head a
    400: each a small page with C{Content-Length} and C{Connection: close}, logged in the
    access log as any request, then the connection is closed.
  - B{Half-close.} The channel is an L{IHalfCloseableProtocol}: after the client's end
    of input, the requests already received are answered in full, then the connection
    is closed.
  - B{Persistence.} C{Connection} tokens are a comma-separated list; HTTP/1.0 with
    C{keep-alive} is kept alive (and says so).

Upstream: twisted#4229 (a long URL closes the connection instead of a 414) and
twisted#4892 (a long header line closes it without a word).
"""

from __future__ import annotations

from html import escape

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.web.http import HTTPChannel, datetimeToString
from zope.interface import implementer

SERVER_HEADER = b"portserver"

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large"}

#: Bytes of a request line besides its target: method, version, spaces.
_LINE_SLACK = 64
# A timer that fires this close to its time counts as on time (float rounding).
_SLACK = 1e-6


def page(code: int, brief: str, detail: str) -> bytes:
    """
    The small HTML page of an error C{code}.
    """
    return (
        f"<!DOCTYPE html>\n<html><head><title>{code} {escape(brief)}</title></head>"
        f"<body><h1>{code} {escape(brief)}</h1><p>{escape(detail)}</p></body></html>\n"
    ).encode("utf-8")


def connectionTokens(request) -> set[bytes]:
    """
    The lower-cased tokens of all the C{Connection} field lines of C{request}.
    """
    tokens = set()
    for value in request.requestHeaders.getRawHeaders(b"connection", ()):
        tokens.update(token.strip(b" \t").lower() for token in value.split(b","))
    return tokens


@implementer(IHalfCloseableProtocol)
class StaticChannel(HTTPChannel):
    """
    An C{HTTPChannel} with a head timeout, head limits answered with their status, and
    half-close (see the module's docstring). Its C{site} provides C{logAccess}.

    @ivar headerTimeout: seconds the request head may take, or L{None} for no limit.
    @ivar maxURILength: longest request target, in bytes.
    @ivar maxHeaderBytes: most bytes of header field lines (each with its CRLF).
    """

    headerTimeout: float | None = 30.0
    maxURILength = 8192
    maxHeaderBytes = 16384

    _headTimer = None
    _headSince = None  # when the awaited request head could begin, or None
    _partial = False  # bytes of the coming request arrived since the timer started
    _atRequestLine = True
    _headBytes = 0
    _requestLine = (b"-", b"-", b"-")
    _readClosed = False
    _refused = False

    def connectionMade(self):
        # Lines up to these lengths reach lineReceived, which tells a 414 from a 431;
        # longer ones, complete or not, go to lineLengthExceeded.
        self.MAX_LENGTH = max(self.maxURILength + _LINE_SLACK, self.maxHeaderBytes)
        self.totalHeadersSize = self.maxURILength + _LINE_SLACK + self.maxHeaderBytes
        super().connectionMade()
        self._startHeadTimer()

    _host = None

    def getHost(self):
        """
        The connection's local address, asked of the transport once (each request asks
        for it: a C{getsockname} call each time otherwise).
        """
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    # -- the head timeout ------------------------------------------------------------------

    def _startHeadTimer(self) -> None:
        """
        A request head may begin now: it must be whole within C{headerTimeout}.

        The connection keeps one timer for all its requests: starting the wait for a
        head stores the time, and when the timer fires it either times the head out or
        calls again for the time left (no call made and cancelled per request).
        """
        self._partial = False
        if self.headerTimeout is None:
            return
        self._headSince = self.site.reactor.seconds()
        if self._headTimer is None:
            self._headTimer = self.callLater(self.headerTimeout, self._headTimedOut)

    def _cancelHeadTimer(self) -> None:
        """
        No head is awaited (one arrived whole, or the connection is ending).
        """
        self._headSince = None

    def _stopHeadTimer(self) -> None:
        self._headSince = None
        timer, self._headTimer = self._headTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _headTimedOut(self) -> None:
        self._headTimer = None
        since = self._headSince
        if since is None:  # no head awaited now: the next wait makes a new call
            return
        left = since + self.headerTimeout - self.site.reactor.seconds()
        if left > _SLACK:  # the wait began after this call was made
            self._headTimer = self.callLater(left, self._headTimedOut)
            return
        self._headSince = None
        if self._partial:
            self.refuse(408, "The request did not arrive in time.")
        else:  # a kept-alive connection with nothing more to ask
            self.loseConnection()

    # -- receiving ---------------------------------------------------------------------

    def dataReceived(self, data):
        if self._refused:
            return
        if self._headSince is not None:
            self._partial = True
        super().dataReceived(data)

    def lineReceived(self, line):
        if self._refused:
            return
        if self._atRequestLine:
            if line:
                self._atRequestLine = False
                self._headBytes = 0
                parts = line.split(b" ")
                if len(parts) == 3:
                    self._requestLine = tuple(parts)
                if len(parts) >= 2 and len(parts[1]) > self.maxURILength:
                    self.refuse(414, "The request target is too long.")
                    return
        elif line:
            self._headBytes += len(line) + 2
            if self._headBytes > self.maxHeaderBytes:
                self.refuse(431, "The request header fields are too large.")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line):
        if self._atRequestLine:
            self._requestLine = (line.split(b" ", 1)[0][:32], b"-", b"-")
            self.refuse(414, "The request target is too long.")
        else:
            self.refuse(431, "The request header fields are too large.")

    def rawDataReceived(self, data):
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self):
        self._cancelHeadTimer()
        self._atRequestLine = True
        self._requestLine = (b"-", b"-", b"-")
        super().allContentReceived()

    def checkPersistence(self, request, version):
        tokens = connectionTokens(request)
        if b"close" in tokens:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        if version == b"HTTP/1.1":
            return True
        if version == b"HTTP/1.0" and b"keep-alive" in tokens:
            request.responseHeaders.setRawHeaders(b"connection", [b"keep-alive"])
            return True
        return False

    def requestDone(self, request):
        if self.persistent and not self._readClosed:
            # Before the buffered next request, if any, is parsed (which stops it).
            self._startHeadTimer()
        super().requestDone(request)
        self._closeIfDone()

    # -- half-close --------------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """
        The client sent all it will: answer what it asked, then close.
        """
        self._readClosed = True
        self._cancelHeadTimer()
        self._closeIfDone()

    def writeConnectionLost(self) -> None:
        self.loseConnection()

    def _closeIfDone(self) -> None:
        if (self._readClosed and not self._handlingRequest and self.transport is not None
                and not self.transport.disconnecting):
            self.loseConnection()

    # -- refusals ------------------------------------------------------------------------

    def _respondToBadRequestAndDisconnect(self):
        self.refuse(400, "The request could not be understood.")

    def refuse(self, code: int, detail: str) -> None:
        """
        Answer C{code} with a small page, log it, and close: the request head was bad
        or late, so nothing more is read from this connection.
        """
        if self._refused:
            return
        self._refused = True
        self.persistent = False
        self._stopHeadTimer()
        reason = _REASONS[code]
        body = page(code, reason.decode("ascii"), detail)
        head = (b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n"
                b"Content-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (code, reason, SERVER_HEADER,
                                                 datetimeToString(), len(body)))
        self.transport.write(head + body)
        method, target, version = self._requestLine
        site = getattr(self, "site", None)
        if site is not None:
            site.logAccess(self.transport.getPeer(), method, target, version, code,
                           len(body))
        self.loseConnection()

    def connectionLost(self, reason):
        self._stopHeadTimer()
        super().connectionLost(reason)
