"""
The kernel's TCP sockets, read with netlink C{sock_diag} (Linux only).

C{ss} reads the same thing the same way: a C{SOCK_DIAG_BY_FAMILY} request (an
C{inet_diag_req_v2}) on a C{NETLINK_SOCK_DIAG} socket, answered with one
C{inet_diag_msg} per socket, each with the attributes asked for (C{INET_DIAG_INFO}: the
socket's C{struct tcp_info}; C{INET_DIAG_SKMEMINFO}: its memory counters, among them its
drops). The request may carry a filter (bytecode the kernel runs per socket): here, "the
local port is one of these", so the dump holds the server's sockets only.

Two ways to ask: a dump (L{dumpTCP}: every socket of some local ports, in some states),
and a lookup per socket (L{lookupTCP}: the socket of one pair of ends; a page of
connections). Measured with 10,000 loopback connections (C{bench/kernel_view.py}, on a
2-core VM): the dump with C{tcp_info}, parsed, about 60 ms (some 40% of it in the
kernel, 400 bytes a socket); a lookup about 10 us, so 10 ms for a page of 1000;
C{getsockopt(TCP_INFO)} about 3 us a socket. C{getsockopt} is not used all the same: it
needs each socket's descriptor, and the registry holds plain records, no transport (so
that a closed connection is freed at once); and it cannot see the sockets no process
holds (handshakes, the accept queue, TIME-WAIT), which a dump does. Why not pyroute2
(0.9.7: GPL-2.0-or-later OR Apache-2.0; a 480 KB wheel, 241 files, 1.7 MB unpacked): a
whole netlink library for two requests and one message type; this module is plain
C{socket} and C{struct}, and adds no dependency.

Nothing here runs per packet or per connection: the kernel is asked when someone asks (an
API request, a scrape).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Callable, Iterable

#: Netlink protocol and message types (linux/netlink.h, linux/sock_diag.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300

#: inet_diag attributes (linux/inet_diag.h): requested as bits of C{idiag_ext}
#: (C{1 << (attribute - 1)}), answered as rtattrs.
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_INFO = 2
INET_DIAG_SKMEMINFO = 7

#: Filter opcodes (linux/inet_diag.h): C{S_GE}/C{S_LE} rather than C{S_EQ}, which
#: kernels before 4.16 lack.
INET_DIAG_BC_NOP = 0
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3

#: The index of the drops counter in C{INET_DIAG_SKMEMINFO} (SK_MEMINFO_DROPS).
SK_MEMINFO_DROPS = 8

#: TCP states (include/net/tcp_states.h), by the kernel's names without C{TCP_},
#: lowercased: what C{tcp.state} says.
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, \
    LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV = range(1, 13)
STATE_NAMES = {
    ESTABLISHED: "established", SYN_SENT: "syn_sent", SYN_RECV: "syn_recv",
    FIN_WAIT1: "fin_wait1", FIN_WAIT2: "fin_wait2", TIME_WAIT: "time_wait",
    CLOSE: "close", CLOSE_WAIT: "close_wait", LAST_ACK: "last_ack", LISTEN: "listen",
    CLOSING: "closing", NEW_SYN_RECV: "syn_recv",
}

#: Every state, as a C{idiag_states} mask.
ALL_STATES = 0xFFFFFFFF


def stateMask(states: Iterable[int]) -> int:
    """
    The C{idiag_states} mask of C{states}.
    """
    mask = 0
    for state in states:
        mask |= 1 << state
    return mask


class SockDiagError(Exception):
    """
    The dump could not be made: no netlink here, or the kernel refused the request. The
    message says why.
    """


_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_REQUEST = struct.Struct("=BBBBI2s2s16s16sI8s")  # inet_diag_req_v2 (its sockid zeroed)
_ATTRIBUTE = struct.Struct("=HH")  # rtattr: length, type
_BYTECODE_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes, no
#: inet_diag_msg: family, state, (timer, retrans), sport, dport (network order), src,
#: dst, (interface, cookie, expires), rqueue, wqueue, (uid), inode.
_MESSAGE = struct.Struct("=BB2xHH16s16s16xII4xI")
_MESSAGE_SIZE = 72
_ERRNO = struct.Struct("=i")
_DROPS = struct.Struct("=I")

#: struct tcp_info (linux/tcp.h): the fields read, by offset.
_INFO = struct.Struct("=24xI4xI24xI4xII4xI16xI")  # up to tcpi_total_retrans (104 bytes)
_INFO_SIZE = 104
_DELIVERY_RATE = struct.Struct("=160xQ")  # tcpi_delivery_rate, from Linux 4.9
_DELIVERY_RATE_END = 168
_RTT = struct.Struct("=68xI")


def portFilter(ports: Iterable[int]) -> bytes:
    """
    The C{INET_DIAG_REQ_BYTECODE} program that keeps the sockets whose local port is one
    of C{ports}.

    The program is a list of ops run from the start; each jumps C{yes} or C{no} bytes on,
    and a socket is kept when the program ends exactly at its end (a jump 4 bytes past
    it rejects). Per port, 16 bytes: "local port >= P" and "local port <= P", each
    followed by an op holding P; between two ports, an unconditional jump to the end
    (a match). A comparison that fails jumps to the next port (past the end after the
    last). The kernel checks every C{no} target against the chain of C{yes} jumps from the
    start, which is why a match falls through to a jump rather than jumping to the end
    itself (C{ss} builds its "or" the same way).
    """
    ports = sorted(set(ports))
    program = []
    left = 20 * len(ports) - 4  # bytes from the current port's test to the end
    for index, port in enumerate(ports):
        program += [_BYTECODE_OP.pack(INET_DIAG_BC_S_GE, 8, 20),
                    _BYTECODE_OP.pack(INET_DIAG_BC_NOP, 0, port),
                    _BYTECODE_OP.pack(INET_DIAG_BC_S_LE, 8, 12),
                    _BYTECODE_OP.pack(INET_DIAG_BC_NOP, 0, port)]
        if index < len(ports) - 1:
            program.append(_BYTECODE_OP.pack(INET_DIAG_BC_JMP, 4, left - 16))
        left -= 20
    return b"".join(program)


def dumpRequest(family: int, states: int = ALL_STATES, extensions: Iterable[int] = (),
                ports: Iterable[int] | None = None, sequence: int = 1) -> bytes:
    """
    The netlink message asking for every TCP socket of C{family} in C{states} (a mask),
    with the C{extensions} (C{INET_DIAG_INFO}, ...), and when C{ports} is given only
    those whose local port is one of them.
    """
    ext = 0
    for attribute in extensions:
        ext |= 1 << (attribute - 1)
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, ext, 0, states,
                         b"", b"", b"", b"", 0, b"")
    if ports is not None:
        program = portFilter(ports)
        body += _ATTRIBUTE.pack(4 + len(program), INET_DIAG_REQ_BYTECODE) + program
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY,
                        NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + body


class TCPSocket:
    """
    One of the kernel's TCP sockets, as the dump gave it: plain values.

    @ivar state: its state (L{ESTABLISHED}, ...); L{STATE_NAMES} names it.
    @ivar localHost, localPort, remoteHost, remotePort: its ends; IPv4-mapped IPv6
        addresses are written as IPv4 (as the registry writes them).
    @ivar receiveQueue, sendQueue: C{idiag_rqueue} and C{idiag_wqueue}: for a connection,
        the bytes received and not yet read, and the bytes sent and not yet acknowledged
        (or not yet sent); for a listening socket, the connections in its accept queue
        and the queue's size (the backlog).
    @ivar inode: the socket's inode (0 for one no process holds: TIME-WAIT, SYN-RECV).
    @ivar info: its C{struct tcp_info} as bytes, or L{None} (not asked for, or a socket
        without one: TIME-WAIT, SYN-RECV); read with L{tcpInfo} and L{rttSeconds}.
    @ivar drops: the packets dropped at the socket (C{SK_MEMINFO_DROPS}; for a listening
        socket, the handshakes it dropped: accept queue overflows and the like), or
        L{None} when not asked for.
    """

    __slots__ = ("state", "localHost", "localPort", "remoteHost", "remotePort",
                 "receiveQueue", "sendQueue", "inode", "info", "drops")

    def __init__(self, state, localHost, localPort, remoteHost, remotePort, receiveQueue,
                 sendQueue, inode, info=None, drops=None):
        self.state = state
        self.localHost = localHost
        self.localPort = localPort
        self.remoteHost = remoteHost
        self.remotePort = remotePort
        self.receiveQueue = receiveQueue
        self.sendQueue = sendQueue
        self.inode = inode
        self.info = info
        self.drops = drops

    @property
    def stateName(self) -> str:
        return STATE_NAMES.get(self.state, str(self.state))

    def rttSeconds(self) -> float | None:
        """
        The smoothed round-trip time, in seconds, or L{None} without C{tcp_info}.
        """
        if self.info is None or len(self.info) < _RTT.size:
            return None
        return _RTT.unpack_from(self.info)[0] / 1e6

    def tcpInfo(self) -> dict:
        """
        What C{/api/connections} shows of the socket (its C{tcp}): C{state}, the queues,
        and from C{tcp_info} (when there is one) C{rtt_ms}, C{rttvar_ms}, C{retransmits}
        (all of the connection's), C{lost}, C{unacked}, C{cwnd}, C{pmtu}, and
        C{delivery_rate} (bytes/s, from a kernel that gives it).
        """
        result = {"state": self.stateName, "send_queue": self.sendQueue,
                  "recv_queue": self.receiveQueue}
        info = self.info
        if info is not None and len(info) >= _INFO_SIZE:
            unacked, lost, pmtu, rtt, rttvar, cwnd, retransmits = _INFO.unpack_from(info)
            result.update(rtt_ms=rtt / 1000, rttvar_ms=rttvar / 1000,
                          retransmits=retransmits, lost=lost, unacked=unacked, cwnd=cwnd,
                          pmtu=pmtu)
            if len(info) >= _DELIVERY_RATE_END:
                result["delivery_rate"] = _DELIVERY_RATE.unpack_from(info)[0]
        return result

    def __repr__(self) -> str:
        return (f"<TCPSocket {self.stateName} {self.localHost}:{self.localPort} "
                f"{self.remoteHost}:{self.remotePort}>")


_MAPPED = b"\0" * 10 + b"\xff\xff"


def _addressReader() -> Callable[[int, bytes], str]:
    """
    A function C{(family, sixteen bytes) -> address text} that remembers what it wrote
    (a dump names the same few addresses again and again).
    """
    known: dict[bytes, str] = {}
    inet, inet6, ntop = socket.AF_INET, socket.AF_INET6, socket.inet_ntop

    def read(family: int, raw: bytes) -> str:
        key = raw if family == inet6 else raw[:4]
        text = known.get(key)
        if text is None:
            if family != inet6:
                text = ntop(inet, key)
            elif raw[:12] == _MAPPED:
                text = ntop(inet, raw[12:])
            else:
                text = ntop(inet6, raw)
            known[key] = text
        return text
    return read


def _socketAt(view: memoryview, body: int, end: int,
              address: Callable[[int, bytes], str]) -> TCPSocket:
    """
    The socket of the C{inet_diag_msg} from C{body} to C{end} in C{view}, with its
    attributes.
    """
    family, state, sport, dport, src, dst, rqueue, wqueue, inode = \
        _MESSAGE.unpack_from(view, body)
    info = drops = None
    at = body + _MESSAGE_SIZE
    unpackAttribute = _ATTRIBUTE.unpack_from
    while at + 4 <= end:
        size, attribute = unpackAttribute(view, at)
        if size < 4:
            break
        if attribute == INET_DIAG_INFO:
            info = bytes(view[at + 4:at + size])
        elif attribute == INET_DIAG_SKMEMINFO and size >= 4 + 4 * (SK_MEMINFO_DROPS + 1):
            drops = _DROPS.unpack_from(view, at + 4 + 4 * SK_MEMINFO_DROPS)[0]
        at += (size + 3) & ~3
    ntohs = socket.ntohs
    return TCPSocket(state, address(family, src), ntohs(sport), address(family, dst),
                     ntohs(dport), rqueue, wqueue, inode, info, drops)


def _messages(data):
    """
    The netlink messages of one read: C{(type, sequence, view, body, end)} each, C{body}
    and C{end} the offsets of its payload in C{view}.

    @raise SockDiagError: a message runs past the bytes read.
    """
    view = memoryview(data)
    total = len(view)
    offset = 0
    unpackHeader = _HEADER.unpack_from
    while offset + _HEADER.size <= total:
        length, kind, _, seq, _ = unpackHeader(view, offset)
        if length < _HEADER.size or offset + length > total:
            raise SockDiagError(f"a netlink message of {length} bytes at {offset} runs past "
                                f"the {total} bytes read")
        yield kind, seq, view, offset + _HEADER.size, offset + length
        offset += (length + 3) & ~3


def _errno(view: memoryview, body: int, end: int) -> int:
    """
    The error number of an C{NLMSG_ERROR} or C{NLMSG_DONE} payload (0: none).
    """
    return -_ERRNO.unpack_from(view, body)[0] if end - body >= 4 else 0


def parseMessages(data, sequence: int | None = None,
                  address: Callable[[int, bytes], str] | None = None
                  ) -> tuple[list[TCPSocket], bool]:
    """
    The sockets of one netlink read of a dump's answer, and whether the answer is over
    (C{NLMSG_DONE}). Messages of another C{sequence} (when given) are skipped.

    @raise SockDiagError: the kernel answered with an error, or a message is cut short.
    """
    address = address or _addressReader()
    sockets = []
    for kind, seq, view, body, end in _messages(data):
        if sequence is not None and seq != sequence:
            continue
        if kind == SOCK_DIAG_BY_FAMILY and end - body >= _MESSAGE_SIZE:
            sockets.append(_socketAt(view, body, end, address))
        elif kind == NLMSG_DONE or kind == NLMSG_ERROR:
            error = _errno(view, body, end)
            if error > 0:
                raise SockDiagError(_describeErrno(error))
            if kind == NLMSG_DONE:
                return sockets, True
    return sockets, False


def parseReplies(data, address: Callable[[int, bytes], str] | None = None
                 ) -> list[tuple[int, TCPSocket | None]]:
    """
    The answers in one netlink read to lookups of single sockets: C{(sequence, socket)}
    each, the socket L{None} when the kernel found none (or answered another error).
    """
    address = address or _addressReader()
    replies = []
    for kind, seq, view, body, end in _messages(data):
        if kind == SOCK_DIAG_BY_FAMILY and end - body >= _MESSAGE_SIZE:
            replies.append((seq, _socketAt(view, body, end, address)))
        elif kind == NLMSG_ERROR and _errno(view, body, end) != 0:
            replies.append((seq, None))
    return replies


def _describeErrno(number: int) -> str:
    return f"the kernel refused the sock_diag request: {os.strerror(number)} (errno {number})"


#: Bytes asked for per read: the kernel fills at most about 32 KiB per dump message.
READ_SIZE = 65536


def _open(makeSocket: Callable[[], socket.socket] | None) -> socket.socket:
    """
    A netlink C{sock_diag} socket (from C{makeSocket} when given), reads timing out
    after L{READ_TIMEOUT}.

    @raise SockDiagError: there is none here (not Linux).
    """
    try:
        sock = makeSocket() if makeSocket is not None else socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except (AttributeError, OSError) as e:  # no AF_NETLINK: not Linux
        raise SockDiagError(f"no netlink sock_diag socket here: {e}") from None
    sock.settimeout(READ_TIMEOUT)
    return sock


#: Seconds to wait for the kernel's next answer (it answers at once: this is a guard).
READ_TIMEOUT = 2.0


def dumpTCP(ports: Iterable[int] | None = None, states: int = ALL_STATES,
            extensions: Iterable[int] = (INET_DIAG_INFO,),
            families: Iterable[int] = (socket.AF_INET, socket.AF_INET6),
            makeSocket: Callable[[], socket.socket] | None = None) -> list[TCPSocket]:
    """
    Every TCP socket of this network namespace in C{states} (a mask, L{stateMask}), of
    each of C{families}, with the C{extensions}; with C{ports}, only those whose local
    port is one of them (an empty C{ports}: none, without asking).

    @param makeSocket: makes the netlink socket (default: a C{NETLINK_SOCK_DIAG} one).
    @raise SockDiagError: netlink is missing (not Linux) or refused the request.
    """
    if ports is not None:
        ports = sorted(set(ports))
        if not ports:
            return []
    extensions = tuple(extensions)
    sock = _open(makeSocket)
    address = _addressReader()
    sockets: list[TCPSocket] = []
    try:
        for sequence, family in enumerate(families, 1):
            sock.send(dumpRequest(family, states, extensions, ports, sequence))
            done = False
            while not done:
                data = sock.recv(READ_SIZE)
                if not data:
                    raise SockDiagError("the netlink socket closed during the dump")
                found, done = parseMessages(data, sequence, address)
                sockets += found
    except OSError as e:
        raise SockDiagError(f"the sock_diag dump failed: {e}") from None
    finally:
        sock.close()
    return sockets


_NO_COOKIE = b"\xff" * 8  # INET_DIAG_NOCOOKIE: find the socket by its ends alone


def lookupRequest(localHost: str, localPort: int, remoteHost: str, remotePort: int,
                  extensions: Iterable[int] = (INET_DIAG_INFO,), sequence: int = 1) -> bytes:
    """
    The netlink message asking for the one TCP socket from C{localHost}:C{localPort} to
    C{remoteHost}:C{remotePort}. An IPv4 pair is looked up as IPv4 (the kernel finds a
    dual-stack IPv6 socket's IPv4-mapped connection so too).

    @raise OSError: an address is not an IP address.
    """
    family = socket.AF_INET6 if ":" in localHost else socket.AF_INET
    ext = 0
    for attribute in extensions:
        ext |= 1 << (attribute - 1)
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, ext, 0, ALL_STATES,
                         localPort.to_bytes(2, "big"), remotePort.to_bytes(2, "big"),
                         socket.inet_pton(family, localHost),
                         socket.inet_pton(family, remoteHost), 0, _NO_COOKIE)
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                        sequence, 0) + body


#: Lookups sent at once: their answers (about 2 KiB each in the socket's receive buffer)
#: must fit in it, or the kernel drops them.
LOOKUP_BATCH = 64


def lookupTCP(endpoints: list[tuple[str, int, str, int]],
              extensions: Iterable[int] = (INET_DIAG_INFO,),
              makeSocket: Callable[[], socket.socket] | None = None
              ) -> list[TCPSocket | None]:
    """
    The TCP socket of each of C{endpoints} (C{(localHost, localPort, remoteHost,
    remotePort)}), or L{None} where there is none, in order: one netlink lookup each,
    sent L{LOOKUP_BATCH} at a time. The cost is that of the lookups, whatever the number
    of sockets on the host: what a page of connections wants.

    A socket found is checked to be the one asked for: the kernel answers a lookup whose
    connection is gone with the listening socket of its local end.

    @raise SockDiagError: netlink is missing (not Linux) or failed.
    """
    extensions = tuple(extensions)
    found: list[TCPSocket | None] = [None] * len(endpoints)
    sock = _open(makeSocket)
    address = _addressReader()
    try:
        for start in range(0, len(endpoints), LOOKUP_BATCH):
            requests = []
            for index in range(start, min(start + LOOKUP_BATCH, len(endpoints))):
                try:
                    requests.append(lookupRequest(*endpoints[index], extensions, index + 1))
                except (OSError, ValueError, OverflowError):
                    continue  # not an address the kernel could have: none
            sock.send(b"".join(requests))
            pending = len(requests)
            while pending:
                data = sock.recv(READ_SIZE)
                if not data:
                    raise SockDiagError("the netlink socket closed during the lookups")
                for sequence, answer in parseReplies(data, address):
                    pending -= 1
                    index = sequence - 1
                    if answer is None or answer.state == LISTEN \
                            or not 0 <= index < len(endpoints):
                        continue
                    localHost, localPort, remoteHost, remotePort = endpoints[index]
                    if (answer.remotePort, answer.localPort) == (remotePort, localPort):
                        found[index] = answer
    except OSError as e:
        raise SockDiagError(f"the sock_diag lookups failed: {e}") from None
    finally:
        sock.close()
    return found
