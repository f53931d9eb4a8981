"""
The PROXY protocol (v1 and v2) in front of a service: a load balancer such as HAProxy
opens each connection with a header naming the client it carries, and the service serves
that client as if it had connected itself.

A service with C{proxy_protocol:} (L{ProxyProtocol}) has a L{ProxyHeaders} on its
factory. Its listener (L{portserver.accepting.AcceptingPort}) refuses a peer outside
C{from} before anything else ("proxy-untrusted") and gives a trusted one's transport a
L{HeaderReader} for protocol. The plugin's protocol does not exist yet: it is built
(through the access rules and per-source limits, for the real client), tracked and
connected only once the header is read, with the transport's peer already the real
client, so everything downstream (the registry's C{remote}, the connection log,
C{getPeer()} in every plugin) sees it. Twisted's own C{haproxy:} endpoint wraps the
protocol instead and calls its C{connectionMade} while the peer is still the proxy
(twisted#12501).

The header is read by L{readHeader}: it finds where the header ends (bounded:
L{V1_MAX} bytes for v1, 16 + L{V2_MAX_PAYLOAD} for v2) and leaves the decoding to
Twisted's parsers (C{twisted.protocols.haproxy}), with the checks they lack: v1's bare
C{PROXY UNKNOWN}, ports and addresses that are not numbers, a v2 header of a datagram
connection. A missing, malformed or late header closes the connection ("proxy-error").
"""

from __future__ import annotations

import ipaddress
import struct

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from portserver.addresses import ipAddress
from portserver.ratelog import RepeatedErrors
from portserver.registry import Endpoint
from portserver.tracking import hostOf

log = Logger()

#: Refusal reasons: a peer outside C{proxy_protocol.from}; a missing, malformed or late
#: header.
PROXY_UNTRUSTED = "proxy-untrusted"
PROXY_ERROR = "proxy-error"
REASONS = (PROXY_UNTRUSTED, PROXY_ERROR)

#: The longest v1 header, its CRLF included (the protocol's own bound).
V1_MAX = 107
V1_PREFIX = b"PROXY "
#: The v2 header: a 12-byte signature, version and command, family and protocol, the
#: length of the rest.
V2_SIGNATURE = V2Parser.PREFIX
V2_FIXED = 16
#: The most address and TLV bytes taken after a v2 header's fixed part. The protocol
#: allows 65535; HAProxy's addresses and usual TLVs (unique id, SSL, cloud endpoint ids)
#: take a few hundred, and a bound keeps what an unread header holds small.
V2_MAX_PAYLOAD = 2048
VERSIONS = (1, 2)


@attrs.frozen
class ProxyProtocol:
    """
    A service's C{proxy_protocol:} settings.

    @ivar trusted: the C{from} networks (C{ipaddress} networks): the peers allowed to
        send the header, the proxies.
    @ivar versions: the header versions accepted, of 1 and 2.
    @ivar timeout: seconds a trusted peer has to send the whole header.
    """

    trusted: tuple
    versions: tuple[int, ...] = VERSIONS
    timeout: float = 5.0

    def trusts(self, host: str) -> bool:
        """
        Whether the peer C{host} (an address string; IPv4-mapped IPv6 as IPv4, a
        scope id ignored) is one of the proxies.
        """
        address = ipAddress(host, dropScope=True)
        if address is None:
            return False
        return any(address.version == network.version and address in network
                   for network in self.trusted)

    def asDict(self) -> dict:
        """
        The settings under the config's key names.
        """
        return {"from": [str(n) if n.prefixlen != n.max_prefixlen else str(n.network_address)
                         for n in self.trusted],
                "versions": list(self.versions), "timeout": self.timeout}


class HeaderError(Exception):
    """
    What a peer sent is not a PROXY protocol header this service accepts; the message
    says why, for an operator.
    """


@attrs.frozen
class Header:
    """
    A PROXY protocol header read.

    @ivar source: the client the proxy carries, an L{IPv4Address} or L{IPv6Address} of
        type C{"TCP"}; L{None} for a connection of the proxy's own (v1 C{UNKNOWN}, v2
        C{LOCAL}, a v2 address family that is not IP), served as the proxy itself.
    @ivar length: the header's length in bytes; what follows is the client's.
    @ivar version: 1 or 2.
    """

    source: IPv4Address | IPv6Address | None
    length: int
    version: int


def readHeader(data: bytes, versions=VERSIONS) -> Header | None:
    """
    Read the PROXY protocol header at the start of C{data}, the bytes a connection has
    received so far.

    @param versions: the versions accepted.
    @return: the L{Header}, or L{None} while it is incomplete.
    @raise HeaderError: C{data} does not begin with a header this accepts, or one
        longer than the bound.
    """
    if not data:
        return None
    for version, prefix, read in ((2, V2_SIGNATURE, _readV2), (1, V1_PREFIX, _readV1)):
        if not prefix.startswith(data[:len(prefix)]):
            continue
        if len(data) < len(prefix):
            return None  # not yet told apart from garbage beginning like a header
        if version not in versions:
            raise HeaderError(f"a PROXY protocol v{version} header, but this service "
                              f"accepts v{' and v'.join(map(str, versions))} only")
        return read(data)
    raise HeaderError(f"no PROXY protocol header: the connection began with "
                      f"{data[:16]!r}")


def _readV1(data: bytes) -> Header | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise HeaderError(f"a PROXY protocol v1 header with no CRLF in its first "
                              f"{V1_MAX} bytes")
        if b"\n" in data:
            raise HeaderError("a PROXY protocol v1 header not ended by CRLF")
        return None
    line = data[:end]
    if line == b"PROXY UNKNOWN":
        # Allowed by the protocol; Twisted's V1Parser wants addresses after UNKNOWN.
        return Header(None, end + 2, 1)
    try:
        info = V1Parser.parse(line)
    except Exception:  # InvalidProxyHeader, or ValueError from a port that is no number
        raise HeaderError(f"a malformed PROXY protocol v1 header: {line[:V1_MAX]!r}") from None
    return Header(_client(info.source, line), end + 2, 1)


def _readV2(data: bytes) -> Header | None:
    if len(data) < V2_FIXED:
        return None
    (length,) = struct.unpack("!H", data[14:16])
    if length > V2_MAX_PAYLOAD:
        raise HeaderError(f"a PROXY protocol v2 header of {V2_FIXED + length} bytes, more "
                          f"than the {V2_FIXED + V2_MAX_PAYLOAD} accepted")
    size = V2_FIXED + length
    if len(data) < size:
        return None
    header = data[:size]
    try:
        info = V2Parser.parse(header)  # the TLVs after the addresses are left unread
    except Exception:
        raise HeaderError(f"a malformed PROXY protocol v2 header: "
                          f"{header[12:V2_FIXED + 36].hex()} after the signature") from None
    return Header(_client(info.source, header), size, 2)


def _client(source, header: bytes) -> IPv4Address | IPv6Address | None:
    """
    The client a parser's C{source} names, checked and normalised (C{::1}, not
    C{0:0:0:0:0:0:0:1}; IPv4-mapped IPv6 as IPv4), or L{None} for a source that is no IP
    address (a v2 UNIX one).
    """
    if source is None or not isinstance(source, (IPv4Address, IPv6Address)):
        return None
    if source.type != "TCP":
        raise HeaderError(f"a PROXY protocol header of a {source.type} connection: this "
                          "service serves TCP")
    family = 4 if isinstance(source, IPv4Address) else 6
    try:
        address = ipaddress.ip_address(source.host)
    except ValueError:
        address = None
    if address is None or address.version != family:
        raise HeaderError(f"a PROXY protocol header whose client {source.host!r} is not "
                          f"an IPv{family} address: {header[:V1_MAX]!r}")
    if not 0 <= source.port <= 65535:
        raise HeaderError(f"a PROXY protocol header whose client port {source.port} is "
                          "not 0-65535")
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return IPv4Address("TCP", str(mapped), source.port)
    return type(source)("TCP", str(address), source.port)


class ProxyHeaders:
    """
    The PROXY protocol on one listener's factory (a
    L{portserver.tracking.TrackingFactory}, whose C{proxyHeaders} this is): who may send
    the header, and what becomes of a connection once it is read.

    Refusals are counted in the registry (per service and reason, as the admission's
    are) and logged at most once per reason per L{RepeatedErrors} interval, with how
    many more there were.
    """

    def __init__(self, settings: ProxyProtocol, factory):
        self.settings = settings
        self.factory = factory
        self.errors = RepeatedErrors(log, factory.clock)

    def reader(self, peer: tuple) -> HeaderReader | None:
        """
        The protocol that reads the header of a connection just accepted from C{peer}
        (an address tuple, as C{accept} gives it), or L{None} when the peer is not a
        trusted proxy (refused: "proxy-untrusted"; the caller closes the socket).
        """
        if not self.settings.trusts(peer[0]):
            self.refuse(PROXY_UNTRUSTED, peer, "it is not in proxy_protocol.from")
            return None
        reader = HeaderReader(self, peer)
        self.factory.live.add(reader)  # seen by a drain and by a retired factory's stop
        return reader

    def refuse(self, reason: str, peer: tuple, why: str) -> None:
        """
        Count a connection from C{peer} refused for C{reason}, and log it (bounded).
        """
        factory = self.factory
        factory.registry.refuse(factory.service, reason)
        self.errors.error((factory.service, reason),
                          "refused a connection to {service} from {peer}: {reason}: {why}",
                          service=factory.service, peer=str(Endpoint(hostOf(peer[0]),
                                                                     peer[1])),
                          reason=reason, why=why)

    def serve(self, transport, peer: tuple, header: Header, rest: bytes) -> None:
        """
        The header of C{transport}'s connection (from the proxy at C{peer}) is read:
        serve the client it names as the service serves any, and give the plugin's
        protocol C{rest}, what followed the header.

        The transport is portserver's (L{portserver.transport.TrackedTransport}), not
        yet tracked; its peer becomes the client before anything is built, so the
        admission, the record and the plugin see the client.
        """
        factory = self.factory
        proxy = None
        source = header.source
        if source is not None:
            proxy = Endpoint(hostOf(peer[0]), peer[1])
            # What tcp.Server.getPeer() is made from, with tcp.Server's _addressType
            # (which getHost() uses too) made to follow each address's family: the
            # client's may be the other family than the listener's.
            transport.client = (source.host, source.port)
            transport._addressType = _addressOf
            transport.hostname = source.host
        address = transport.getPeer()
        try:
            protocol, tracked, _, admitted = factory.buildPlugin(address, proxy)
        except Exception:
            self.errors.failure((factory.service, "buildProtocol"),
                                "Service {service}: the plugin's buildProtocol failed for "
                                "{peer}", service=factory.service,
                                peer=str(Endpoint(address.host, address.port)))
            transport.abortConnection()
            return
        if protocol is None:  # refused (counted by the admission), or by the plugin
            transport.loseConnection()
            return
        transport.protocol = protocol
        if not tracked:  # a refusal sending its banner, or a client awaiting admission
            factory.live.add(protocol)
            protocol.makeConnection(transport)
            if rest:
                protocol.dataReceived(rest)  # (kept for the plugin by one awaiting admission)
            return
        transport.startTracking(factory, admitted, proxy)
        # Inside the read that completed the header: what the plugin writes is sent when
        # the read ends (portserver.transport), as for any read.
        transport.servePlugin(protocol, rest)


def _addressOf(kind: str, host: str, port: int, *rest) -> IPv4Address | IPv6Address:
    """
    The Twisted address of C{host}, IPv4 or IPv6 as it is written.
    """
    if ":" in host:
        return IPv6Address(kind, host, port, *rest)
    return IPv4Address(kind, host, port)


class HeaderReader(Protocol):
    """
    The protocol of a connection from a trusted proxy until its header is read: keeps
    what arrives (at most a header's bound), reads it with L{readHeader}, and hands the
    connection to L{ProxyHeaders.serve}; a malformed header, or none within the
    timeout, closes the connection ("proxy-error").

    @ivar connected: 1 while the header is awaited (L{ProxyHeaders} keeps the reader
        among its factory's live connections until then).
    """

    def __init__(self, headers: ProxyHeaders, peer: tuple):
        self.headers = headers
        self.factory = headers.factory  # as a tracker's (the server's reload reads it)
        self.peer = peer
        self.buffer = b""
        self.timer = None

    def logPrefix(self) -> str:
        return self.headers.factory.service

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.connected = 1
        headers = self.headers
        self.timer = headers.factory.clock.callLater(headers.settings.timeout, self._late)

    def dataReceived(self, data: bytes) -> None:
        if not self.connected:
            return  # refused already: closing
        buffer = self.buffer = self.buffer + data
        try:
            header = readHeader(buffer, self.headers.settings.versions)
        except HeaderError as e:
            self._fail(str(e))
            return
        if header is None:
            return
        transport = self._done()
        self.headers.serve(transport, self.peer, header, buffer[header.length:])

    def _late(self) -> None:
        self.timer = None
        self._fail(f"no complete PROXY protocol header within "
                   f"{self.headers.settings.timeout:g}s ({len(self.buffer)} bytes received)")

    def _fail(self, why: str) -> None:
        transport = self._done()  # (connectionLost, when the close is over, counts nothing)
        self.headers.refuse(PROXY_ERROR, self.peer, why)
        transport.loseConnection()

    def _done(self):
        """
        The header is read, or refused: stop the timer and let go of the connection.
        """
        self.connected = 0
        self.buffer = b""
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.headers.factory.live.discard(self)
        transport, self.transport = self.transport, None
        return transport

    def abortConnection(self) -> None:
        """
        Abort the connection now (a drain's end, a removed listener's).
        """
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        if self.connected:
            # The peer closed (or the server aborted) before the header was complete.
            received = len(self.buffer)
            self._done()
            self.headers.refuse(PROXY_ERROR, self.peer,
                                f"the connection closed before a complete PROXY protocol "
                                f"header ({received} bytes received)")
        self.transport = None
