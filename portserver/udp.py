"""
UDP listening that answers from the address each datagram was sent to.

A UDP socket bound to a wildcard address (C{0.0.0.0}, C{::}) receives datagrams sent to any
of the host's addresses, but a reply sent on it takes whatever source address the routing
table picks: a client that sent to 127.0.0.2 may get its answer from 127.0.0.1, and a
connected client socket drops it. Like ntpd, BIND and dnsmasq, L{PacketInfoPort} asks the
kernel for each datagram's destination (C{IP_PKTINFO} / C{IPV6_RECVPKTINFO}) and sends the
reply from it, so a reply swaps the request's source and destination endpoints exactly.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections import OrderedDict

from twisted.internet import udp
from twisted.logger import Logger

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


class PacketInfoPort(udp.Port):
    """
    A UDP port that remembers where each datagram was sent, and replies from there.

    While a datagram is delivered, L{destination} holds the address it was sent to; a
    C{write} to its sender (during delivery, or later for the last C{peerMemory} peers)
    leaves from that address.
    """

    peerMemory = 4096

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.destination: str | None = None
        self._lastDestination: OrderedDict = OrderedDict()

    def _bindSocket(self):
        super()._bindSocket()
        if self.addressFamily == socket.AF_INET:
            self.socket.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            self.socket.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)

    def doRead(self):
        read = 0
        while read < self.maxThroughput:
            try:
                data, ancillary, _flags, addr = self.socket.recvmsg(
                    self.maxPacketSize, socket.CMSG_SPACE(_IN6_PKTINFO_SIZE))
            except OSError as e:
                if e.errno in (udp.EWOULDBLOCK, udp.EINTR, udp.EAGAIN):
                    return
                if e.errno == udp.ECONNREFUSED:
                    self.protocol.connectionRefused()
                    return
                log.failure("UDP read failed on {port}", port=self._realPortNumber)
                return
            read += len(data)
            if self.addressFamily == socket.AF_INET6:
                addr = addr[:2]
            self.destination = destinationOf(ancillary, self.addressFamily)
            if self.destination is not None:
                self._lastDestination[addr] = self.destination
                self._lastDestination.move_to_end(addr)
                if len(self._lastDestination) > self.peerMemory:
                    self._lastDestination.popitem(last=False)
            try:
                self.protocol.datagramReceived(data, addr)
            except Exception:
                log.failure("Unhandled error in {protocol} for datagram from {peer}",
                            protocol=self.protocol, peer=addr)
            finally:
                self.destination = None

    def write(self, datagram, addr=None):
        source = self._lastDestination.get(addr) if addr is not None else None
        if source is None or self._connectedAddr:
            return super().write(datagram, addr)
        host, port = addr[0], addr[1]
        if self.addressFamily == socket.AF_INET6 and ":" not in host:
            host = f"::ffff:{host}"
        try:
            return self.socket.sendmsg([datagram], sourceAncillary(source, self.addressFamily),
                                       0, (host, port))
        except OSError as e:
            if e.errno in (udp.EINTR,):
                return self.write(datagram, addr)
            if e.errno == udp.EMSGSIZE:
                raise udp.error.MessageLengthError("message too long")
            if e.errno in (udp.ECONNREFUSED, udp.EAGAIN, udp.EWOULDBLOCK):
                return None
            raise


#: The largest datagram read whole: a UDP payload is at most 65,507 bytes over IPv4 and
#: 65,527 over IPv6 (without jumbograms). Twisted's default, 8192, silently truncates.
MAX_DATAGRAM = 65535


def listenUDP(reactor, port: int, protocol, interface: str):
    """
    Listen for datagrams, read up to L{MAX_DATAGRAM} bytes each; on a wildcard interface
    of a real reactor, with L{PacketInfoPort}.
    """
    wildcard = interface in ("0.0.0.0", "::")
    if wildcard and pktinfoSupported() and hasattr(reactor, "addReader"):
        p = PacketInfoPort(port, protocol, interface, MAX_DATAGRAM, reactor=reactor)
        p.startListening()
        return p
    return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=MAX_DATAGRAM)
