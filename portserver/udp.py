"""
UDP listening that answers from the address each datagram was sent to.

A UDP socket bound to a wildcard address (C{0.0.0.0}, C{::}) receives datagrams sent to any
of the host's addresses, but a reply sent on it takes whatever source address the routing
table picks: a client that sent to 127.0.0.2 may get its answer from 127.0.0.1, and a
connected client socket drops it. Like ntpd, BIND and dnsmasq, L{PacketInfoPort} asks the
kernel for each datagram's destination (C{IP_PKTINFO} / C{IPV6_RECVPKTINFO}) and sends the
reply from it, so a reply swaps the request's source and destination endpoints exactly.

Both port classes here (L{DatagramPort} on a specific address, L{PacketInfoPort} on a
wildcard one) also shorten Twisted's per-datagram path: a reply to the sender of the
datagram being delivered is sent without Twisted's address checks.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from collections import OrderedDict

from twisted.internet import error, udp
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger

from portserver.dispatch import Lean, leanDispatch

log = Logger()

# CPython's socket module lacks IP_PKTINFO on some builds; Linux's value is 8 (in.h).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", None)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", None)
_IN_PKTINFO_SIZE = 12  # struct in_pktinfo: ifindex (4), spec_dst (4), addr (4)
_IN6_PKTINFO_SIZE = 20  # struct in6_pktinfo: addr (16), ifindex (4)


def pktinfoSupported() -> bool:
    """
    Whether this platform can learn and choose a datagram's local address.
    """
    return None not in (IP_PKTINFO, IPV6_RECVPKTINFO, IPV6_PKTINFO) and hasattr(
        socket.socket, "recvmsg")


def destinationOf(ancillary, family) -> str | None:
    """
    The destination address carried in a C{recvmsg} ancillary list, if any.
    """
    for level, kind, data in ancillary:
        if family == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            return socket.inet_ntop(socket.AF_INET, data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            address = ipaddress.IPv6Address(data[:16])
            return str(address.ipv4_mapped or address)
    return None


def sourceAncillary(source: str, family):
    """
    The C{sendmsg} ancillary data that makes a datagram leave from C{source}.
    """
    if family == socket.AF_INET:
        data = b"\0" * 4 + socket.inet_aton(source) + b"\0" * 4
        return [(socket.IPPROTO_IP, IP_PKTINFO, data)]
    address = ipaddress.ip_address(source)
    if address.version == 4:
        address = ipaddress.IPv6Address(f"::ffff:{source}")
    return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, address.packed + b"\0" * 4)]


#: errno values of a read that found nothing (more) to read, and of a read that reports
#: an ICMP "port unreachable" (as Twisted's UDP port has them on POSIX).
_READ_DONE = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
_READ_REFUSED = frozenset({errno.ECONNREFUSED})

# The ancillary space a read asks for: room for either family's packet info.
_ANCILLARY_SPACE = (socket.CMSG_SPACE(_IN6_PKTINFO_SIZE) if hasattr(socket, "CMSG_SPACE")
                    else 0)

# What DatagramPort._received holds before the first datagram: no address is it.
_NO_ADDRESS = object()


class DatagramPort(Lean, udp.Port):
    """
    Twisted's UDP port, with a shorter path for what a server does most: read a datagram
    and answer its sender; the reactor dispatches its events without Twisted's legacy
    log context (L{portserver.dispatch}).

    L{doRead} reads the attributes it needs once a call, not once a datagram, and keeps
    the address tuple of the datagram it delivers. A L{write} to that very tuple (the
    kernel's answer to C{recvfrom}: an IP address of the port's family) skips the checks
    Twisted's C{write} makes of every address, two or three C{inet_pton} calls of which
    one raises: about 1 µs, a tenth of a whole loopback echo. A write to any other
    address is checked as Twisted does.
    """

    _received = _NO_ADDRESS

    def startListening(self):
        leanDispatch(self.reactor)
        super().startListening()

    def doRead(self):
        """
        Deliver the datagrams waiting, up to C{maxThroughput} bytes (-1 once closed).
        """
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        deliver = self.protocol.datagramReceived
        ipv6 = self.addressFamily == socket.AF_INET6
        read = 0
        while read < self.maxThroughput:
            try:
                data, addr = recvfrom(size)
            except OSError as e:
                if e.errno in _READ_DONE:
                    return
                if e.errno in _READ_REFUSED:
                    if self._connectedAddr:
                        self.protocol.connectionRefused()
                    return
                raise
            read += len(data)
            if ipv6:
                addr = addr[:2]  # without flow info and scope id, as Twisted's
            self._received = addr
            try:
                deliver(data, addr)
            except Exception:
                log.failure("Unhandled error in {protocol} for datagram from {peer}",
                            protocol=self.protocol, peer=addr)

    def write(self, datagram, addr=None):
        if addr is not self._received or self._connectedAddr:
            return super().write(datagram, addr)
        try:
            return self.socket.sendto(datagram, addr)
        except OSError as e:  # as Twisted's write
            if e.errno == errno.EINTR:
                return self.write(datagram, addr)
            if e.errno == errno.EMSGSIZE:
                raise error.MessageLengthError("message too long")
            if e.errno == errno.ECONNREFUSED:
                return None
            raise


class PacketInfoPort(DatagramPort):
    """
    A UDP port that remembers where each datagram was sent, and replies from there.

    While a datagram is delivered, L{destination} holds the address it was sent to; a
    C{write} to its sender (during delivery, or later for the last C{peerMemory} peers)
    leaves from that address. The few distinct packet infos a host receives (one per
    local address and interface) are parsed once, and the few ancillary data a reply
    needs (one per local address) made once: at most C{cacheSize} of each.
    """

    peerMemory = 4096
    cacheSize = 256

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.destination: str | None = None
        self._lastDestination: OrderedDict = OrderedDict()
        self._receivedAt: str | None = None  # the destination of _received's datagram
        self._destinations: dict = {}  # a recvmsg ancillary item -> its destination
        self._ancillary: dict = {}  # a source address -> the sendmsg ancillary data

    def _bindSocket(self):
        super()._bindSocket()
        if self.addressFamily == socket.AF_INET:
            self.socket.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            self.socket.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)

    def doRead(self):
        recvmsg = self.socket.recvmsg
        size = self.maxPacketSize
        deliver = self.protocol.datagramReceived
        family = self.addressFamily
        ipv6 = family == socket.AF_INET6
        parsed = self._destinations
        remembered = self._lastDestination
        read = 0
        while read < self.maxThroughput:
            try:
                data, ancillary, _flags, addr = recvmsg(size, _ANCILLARY_SPACE)
            except OSError as e:
                if e.errno in _READ_DONE:
                    return
                if e.errno in _READ_REFUSED:
                    self.protocol.connectionRefused()
                    return
                log.failure("UDP read failed on {port}", port=self._realPortNumber)
                return
            read += len(data)
            if ipv6:
                addr = addr[:2]
            if len(ancillary) == 1:
                item = ancillary[0]
                destination = parsed.get(item)
                if destination is None:
                    destination = destinationOf(ancillary, family)
                    if destination is not None:
                        if len(parsed) >= self.cacheSize:
                            parsed.clear()
                        parsed[item] = destination
            else:
                destination = destinationOf(ancillary, family)
            self.destination = self._receivedAt = destination
            self._received = addr
            if destination is not None:
                remembered[addr] = destination
                remembered.move_to_end(addr)
                if len(remembered) > self.peerMemory:
                    remembered.popitem(last=False)
            try:
                deliver(data, addr)
            except Exception:
                log.failure("Unhandled error in {protocol} for datagram from {peer}",
                            protocol=self.protocol, peer=addr)
            finally:
                self.destination = None

    def write(self, datagram, addr=None):
        if addr is self._received and self._receivedAt is not None:
            source = self._receivedAt
        else:
            source = self._lastDestination.get(addr) if addr is not None else None
        if source is None or self._connectedAddr:
            return super().write(datagram, addr)
        target = addr
        if self.addressFamily == socket.AF_INET6 and ":" not in addr[0]:
            target = (f"::ffff:{addr[0]}", addr[1])
        ancillary = self._ancillary.get(source)
        if ancillary is None:
            if len(self._ancillary) >= self.cacheSize:
                self._ancillary.clear()
            ancillary = self._ancillary[source] = tuple(
                sourceAncillary(source, self.addressFamily))
        try:
            return self.socket.sendmsg((datagram,), ancillary, 0, target)
        except OSError as e:
            if e.errno == errno.EINTR:
                return self.write(datagram, addr)
            if e.errno == errno.EMSGSIZE:
                raise error.MessageLengthError("message too long")
            if e.errno in (errno.ECONNREFUSED, errno.EAGAIN, errno.EWOULDBLOCK):
                return None
            raise


#: The largest datagram read whole: a UDP payload is at most 65,507 bytes over IPv4 and
#: 65,527 over IPv6 (without jumbograms). Twisted's default, 8192, silently truncates.
MAX_DATAGRAM = 65535


def listenUDP(reactor, port: int, protocol, interface: str):
    """
    Listen for datagrams, read up to L{MAX_DATAGRAM} bytes each; on a real reactor, with
    a L{DatagramPort} (a L{PacketInfoPort} on a wildcard interface).
    """
    if not isinstance(reactor, PosixReactorBase):  # e.g. an in-memory reactor (tests)
        return reactor.listenUDP(port, protocol, interface=interface,
                                 maxPacketSize=MAX_DATAGRAM)
    wildcard = interface in ("0.0.0.0", "::")
    cls = PacketInfoPort if wildcard and pktinfoSupported() else DatagramPort
    p = cls(port, protocol, interface, MAX_DATAGRAM, reactor=reactor)
    p.startListening()
    return p
