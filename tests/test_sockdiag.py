"""
Tests for L{portserver.sockdiag}: the netlink requests it builds and the answers it
parses, from canned bytes laid out by hand from the kernel's headers (linux/netlink.h,
linux/inet_diag.h, linux/tcp.h), and its reads through a stand-in netlink socket. The
real kernel is asked in L{tests.test_kernel}.
"""

from __future__ import annotations

import errno
import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from portserver import sockdiag
from portserver.sockdiag import (
    ESTABLISHED,
    INET_DIAG_INFO,
    INET_DIAG_SKMEMINFO,
    LISTEN,
    NEW_SYN_RECV,
    SockDiagError,
    TCPSocket,
)

SOCK_DIAG_BY_FAMILY, NLMSG_ERROR, NLMSG_DONE = 20, 2, 3


def netlink(kind: int, payload: bytes, sequence: int = 1, flags: int = 2) -> bytes:
    """
    One netlink message (nlmsghdr: length, type, flags, sequence, port id), padded to 4.
    """
    message = struct.pack("=IHHII", 16 + len(payload), kind, flags, sequence, 0) + payload
    return message + b"\0" * (-len(message) % 4)


def attribute(kind: int, data: bytes) -> bytes:
    """
    One rtattr (length, type) and its data, padded to 4.
    """
    item = struct.pack("=HH", 4 + len(data), kind) + data
    return item + b"\0" * (-len(item) % 4)


def tcpInfo(size: int = 232, unacked=3, lost=1, pmtu=65535, rtt=1500, rttvar=750,
            cwnd=10, totalRetrans=7, deliveryRate=123456789) -> bytes:
    """
    A struct tcp_info of C{size} bytes with the fields portserver reads set, at their
    offsets in linux/tcp.h (and noise elsewhere, which must not be read).
    """
    info = bytearray(b"\x5a" * size)
    info[0] = ESTABLISHED
    for offset, value in ((24, unacked), (28, 99), (32, lost), (36, 98), (60, pmtu),
                          (68, rtt), (72, rttvar), (80, cwnd), (100, totalRetrans)):
        struct.pack_into("=I", info, offset, value)
    if size >= 168:
        struct.pack_into("=Q", info, 160, deliveryRate)
    return bytes(info)


def diagMessage(family=socket.AF_INET, state=ESTABLISHED, local=("127.0.0.1", 7),
                remote=("127.0.0.2", 40000), rqueue=5, wqueue=6, inode=4242,
                attributes=b"") -> bytes:
    """
    An inet_diag_msg (72 bytes: family, state, timer, retrans, sockid, expires, rqueue,
    wqueue, uid, inode) followed by C{attributes}.
    """
    def address(host):
        if family == socket.AF_INET:
            return socket.inet_pton(socket.AF_INET, host) + b"\0" * 12
        return socket.inet_pton(socket.AF_INET6, host)
    sockid = (struct.pack("!HH", local[1], remote[1]) + address(local[0])
              + address(remote[0]) + struct.pack("=I", 0) + b"\x01" * 8)
    return (struct.pack("=BBBB", family, state, 0, 0) + sockid
            + struct.pack("=IIIII", 0, rqueue, wqueue, 1000, inode) + attributes)


def skmeminfo(drops: int) -> bytes:
    """
    An INET_DIAG_SKMEMINFO attribute's data: nine u32 counters, drops the last.
    """
    return struct.pack("=9I", 1, 2, 3, 4, 5, 6, 7, 8, drops)


class RequestTests(SynchronousTestCase):
    """
    The requests L{sockdiag.dumpRequest} and L{sockdiag.lookupRequest} build.
    """

    def test_dump(self):
        """
        A dump request is a SOCK_DIAG_BY_FAMILY message with NLM_F_REQUEST|NLM_F_DUMP,
        whose inet_diag_req_v2 names the family, TCP, the extensions as bits (INFO:
        bit 1, SKMEMINFO: bit 6) and the state mask, with a zero socket id; ports add
        the filter as an INET_DIAG_REQ_BYTECODE attribute.
        """
        request = sockdiag.dumpRequest(socket.AF_INET6, 0x1234,
                                       (INET_DIAG_INFO, INET_DIAG_SKMEMINFO), [80], 9)
        length, kind, flags, sequence, _ = struct.unpack_from("=IHHII", request)
        self.assertEqual((length, kind, flags, sequence),
                         (len(request), SOCK_DIAG_BY_FAMILY, 0x301, 9))
        family, protocol, ext, pad, states = struct.unpack_from("=BBBBI", request, 16)
        self.assertEqual((family, protocol, ext, pad, states),
                         (socket.AF_INET6, socket.IPPROTO_TCP, 0b1000010, 0, 0x1234))
        self.assertEqual(request[24:72], b"\0" * 48)
        program = sockdiag.portFilter([80])
        self.assertEqual(request[72:], struct.pack("=HH", 4 + len(program), 1) + program)
        self.assertEqual(len(sockdiag.dumpRequest(socket.AF_INET)), 16 + 56)

    def test_lookup(self):
        """
        A lookup is a plain request (no DUMP flag) whose socket id has the ports in
        network order, both addresses, and the "no cookie" cookie.
        """
        request = sockdiag.lookupRequest("127.0.0.1", 7, "127.0.0.2", 40000, (), 5)
        self.assertEqual(struct.unpack_from("=IHHII", request),
                         (16 + 56, SOCK_DIAG_BY_FAMILY, 1, 5, 0))
        self.assertEqual(request[16], socket.AF_INET)
        self.assertEqual(request[24:28], struct.pack("!HH", 7, 40000))
        self.assertEqual(request[28:32], bytes([127, 0, 0, 1]))
        self.assertEqual(request[44:48], bytes([127, 0, 0, 2]))
        self.assertEqual(request[64:72], b"\xff" * 8)
        six = sockdiag.lookupRequest("::1", 7, "::2", 9)
        self.assertEqual(six[16], socket.AF_INET6)
        self.assertEqual(six[28:44], socket.inet_pton(socket.AF_INET6, "::1"))
        self.assertRaises(OSError, sockdiag.lookupRequest, "nowhere", 7, "::2", 9)


def runFilter(program: bytes, port: int) -> bool:
    """
    Run C{program} as the kernel does (net/ipv4/inet_diag.c: C{inet_diag_bc_audit} and
    C{valid_cc}, then C{inet_diag_bc_run}) for a socket whose local port is C{port}:
    whether it is kept. Raises L{ValueError} where the kernel's audit says EINVAL.
    """
    ops = {offset: struct.unpack_from("=BBH", program, offset)
           for offset in range(0, len(program), 4)}

    def validTarget(target):  # valid_cc: reachable along the "yes" chain from the start
        at = 0
        while at <= target:
            if at == target:
                return True
            at += ops[at][1]
        return False

    at = 0
    while at < len(program):  # the audit walks the "yes" chain
        code, yes, no = ops[at]
        left = len(program) - at
        minimum = 8 if code in (2, 3) else 4
        if code != 0:
            if no < minimum or no > left + 4 or no % 4:
                raise ValueError(f"op at {at}: bad no {no}")
            if no < left and not validTarget(at + no):
                raise ValueError(f"op at {at}: no {no} jumps off the yes chain")
        if yes < minimum or yes > left + 4 or yes % 4:
            raise ValueError(f"op at {at}: bad yes {yes}")
        at += yes
    if at != len(program):
        raise ValueError("the yes chain does not end at the end")
    at = 0
    while 0 <= at < len(program):
        code, yes, no = ops[at]
        if code == 1:  # JMP
            matched = False
        elif code == 2:  # S_GE
            matched = port >= ops[at + 4][2]
        elif code == 3:  # S_LE
            matched = port <= ops[at + 4][2]
        else:
            matched = True
        at += yes if matched else no
    return at == len(program)


class PortFilterTests(SynchronousTestCase):
    """
    L{sockdiag.portFilter}: the bytecode that keeps the sockets of some local ports.
    """

    def test_layout(self):
        """
        Per port (sorted, once each): "port >= P" jumping to "port <= P" or to the next
        port, each followed by the op holding P; between ports, a jump to the end.
        """
        self.assertEqual(sockdiag.portFilter([80, 7, 80]), struct.pack(
            "=" + "BBH" * 9,
            2, 8, 20, 0, 0, 7, 3, 8, 12, 0, 0, 7, 1, 4, 20,
            2, 8, 20, 0, 0, 80, 3, 8, 12, 0, 0, 80))

    def test_keeps(self):
        """
        Run as the kernel runs it, the program passes the kernel's audit and keeps
        exactly the sockets whose local port is one of the ports, for one to five ports.
        """
        for ports in ([7], [7, 80], [1, 2, 3], [65535, 1, 8080, 443, 22]):
            program = sockdiag.portFilter(ports)
            for port in (0, 1, 2, 3, 6, 7, 8, 22, 79, 80, 81, 443, 8080, 65534, 65535):
                self.assertEqual(runFilter(program, port), port in ports, (ports, port))


class ParseTests(SynchronousTestCase):
    """
    L{sockdiag.parseMessages} and L{sockdiag.parseReplies} over canned answers.
    """

    def test_socket(self):
        """
        An inet_diag_msg becomes a L{TCPSocket}: state, both ends (ports from network
        order), the queues, the inode, the tcp_info bytes and the drops of
        SKMEMINFO; unknown attributes are skipped.
        """
        info = tcpInfo()
        data = netlink(SOCK_DIAG_BY_FAMILY, diagMessage(attributes=(
            attribute(8, b"\x00") + attribute(INET_DIAG_INFO, info)
            + attribute(INET_DIAG_SKMEMINFO, skmeminfo(17)))))
        [found], done = sockdiag.parseMessages(data)
        self.assertFalse(done)
        self.assertEqual((found.state, found.localHost, found.localPort, found.remoteHost,
                          found.remotePort, found.receiveQueue, found.sendQueue, found.inode,
                          found.info, found.drops),
                         (ESTABLISHED, "127.0.0.1", 7, "127.0.0.2", 40000, 5, 6, 4242, info,
                          17))
        self.assertEqual(found.stateName, "established")

    def test_tcpInfo(self):
        """
        C{tcpInfo} reads tcp_info's fields at their offsets: RTTs from microseconds to
        milliseconds, the total retransmits (not the current ones), and the delivery
        rate when the struct reaches it.
        """
        found = TCPSocket(ESTABLISHED, "127.0.0.1", 7, "127.0.0.2", 9, 11, 12, 1, tcpInfo())
        self.assertEqual(found.tcpInfo(), {
            "state": "established", "send_queue": 12, "recv_queue": 11, "rtt_ms": 1.5,
            "rttvar_ms": 0.75, "retransmits": 7, "lost": 1, "unacked": 3, "cwnd": 10,
            "pmtu": 65535, "delivery_rate": 123456789})
        self.assertEqual(found.rttSeconds(), 0.0015)
        older = TCPSocket(ESTABLISHED, "127.0.0.1", 7, "127.0.0.2", 9, 0, 0, 1,
                          tcpInfo(size=104))
        self.assertNotIn("delivery_rate", older.tcpInfo())
        self.assertEqual(older.tcpInfo()["retransmits"], 7)
        bare = TCPSocket(sockdiag.TIME_WAIT, "127.0.0.1", 7, "127.0.0.2", 9, 0, 0, 0)
        self.assertEqual(bare.tcpInfo(), {"state": "time_wait", "send_queue": 0,
                                          "recv_queue": 0})
        self.assertIsNone(bare.rttSeconds())

    def test_addresses(self):
        """
        IPv6 addresses are written as C{inet_ntop} writes them, IPv4-mapped ones as IPv4
        (as the registry writes them); a request socket's state (NEW_SYN_RECV) is named
        C{syn_recv}.
        """
        data = (netlink(SOCK_DIAG_BY_FAMILY, diagMessage(
                    socket.AF_INET6, local=("::1", 8080), remote=("fe80::2", 50000)))
                + netlink(SOCK_DIAG_BY_FAMILY, diagMessage(
                    socket.AF_INET6, NEW_SYN_RECV, local=("::ffff:127.0.0.1", 8080),
                    remote=("::ffff:10.1.2.3", 50001))))
        six, mapped = sockdiag.parseMessages(data)[0]
        self.assertEqual((six.localHost, six.remoteHost), ("::1", "fe80::2"))
        self.assertEqual((mapped.localHost, mapped.remoteHost, mapped.stateName),
                         ("127.0.0.1", "10.1.2.3", "syn_recv"))

    def test_done(self):
        """
        NLMSG_DONE ends the answer: what follows it is not read; messages of another
        sequence number are skipped.
        """
        data = (netlink(SOCK_DIAG_BY_FAMILY, diagMessage(inode=1), sequence=2)
                + netlink(SOCK_DIAG_BY_FAMILY, diagMessage(inode=2), sequence=1)
                + netlink(NLMSG_DONE, struct.pack("=i", 0))
                + netlink(SOCK_DIAG_BY_FAMILY, diagMessage(inode=3)))
        sockets, done = sockdiag.parseMessages(data, sequence=1)
        self.assertEqual([s.inode for s in sockets], [2])
        self.assertTrue(done)

    def test_errors(self):
        """
        An NLMSG_ERROR with an error, or an NLMSG_DONE carrying one, raises
        L{SockDiagError} naming it; an acknowledgement (error 0) does not; a message
        longer than the bytes read raises too.
        """
        refused = netlink(NLMSG_ERROR, struct.pack("=i", -errno.EINVAL) + b"\0" * 16)
        error = self.assertRaises(SockDiagError, sockdiag.parseMessages, refused)
        self.assertIn("Invalid argument", str(error))
        self.assertIn("errno 22", str(error))
        failed = netlink(NLMSG_DONE, struct.pack("=i", -errno.ENOMEM))
        self.assertRaises(SockDiagError, sockdiag.parseMessages, failed)
        ack = netlink(NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16)
        self.assertEqual(sockdiag.parseMessages(ack), ([], False))
        cut = netlink(SOCK_DIAG_BY_FAMILY, diagMessage())[:-8]
        self.assertRaises(SockDiagError, sockdiag.parseMessages, cut)

    def test_replies(self):
        """
        Answers to lookups: a socket by its sequence number, L{None} for a lookup the
        kernel answered with an error (no such socket).
        """
        data = (netlink(SOCK_DIAG_BY_FAMILY, diagMessage(inode=8), sequence=3)
                + netlink(NLMSG_ERROR, struct.pack("=i", -errno.ENOENT) + b"\0" * 16,
                          sequence=4))
        [(three, found), (four, missing)] = sockdiag.parseReplies(data)
        self.assertEqual((three, found.inode, four, missing), (3, 8, 4, None))


class FakeNetlink:
    """
    A stand-in netlink socket: records what is sent; each read answers the next of
    C{answers} for the last request sent (a callable of it, or bytes).
    """

    def __init__(self, answer):
        self.answer = answer
        self.sent: list[bytes] = []
        self.pending: list[bytes] = []
        self.closed = False
        self.timeout = None

    def settimeout(self, timeout):
        self.timeout = timeout

    def send(self, data):
        self.sent.append(data)
        self.pending += self.answer(data)
        return len(data)

    def recv(self, size):
        return self.pending.pop(0)

    def close(self):
        self.closed = True


class DumpTests(SynchronousTestCase):
    """
    L{sockdiag.dumpTCP} and L{sockdiag.lookupTCP} through a stand-in netlink socket.
    """

    def test_dump(self):
        """
        One dump per family, with sequence numbers 1 and 2, each read until its
        NLMSG_DONE (over several reads); the sockets of both, in order; the socket is
        closed and its reads have a timeout.
        """
        def answer(request):
            family, sequence = request[16], struct.unpack_from("=I", request, 8)[0]
            host = ("127.0.0.1", 7) if family == socket.AF_INET else ("::1", 7)
            return [netlink(SOCK_DIAG_BY_FAMILY, diagMessage(family, local=host,
                                                             remote=host, inode=sequence),
                            sequence),
                    netlink(NLMSG_DONE, struct.pack("=i", 0), sequence)]
        fake = FakeNetlink(answer)
        sockets = sockdiag.dumpTCP([7], makeSocket=lambda: fake)
        self.assertEqual([(s.localHost, s.inode) for s in sockets],
                         [("127.0.0.1", 1), ("::1", 2)])
        self.assertEqual([r[16] for r in fake.sent], [socket.AF_INET, socket.AF_INET6])
        self.assertTrue(fake.closed)
        self.assertEqual(fake.timeout, sockdiag.READ_TIMEOUT)

    def test_noPorts(self):
        """
        No port: no socket, and nothing asked.
        """
        self.assertEqual(sockdiag.dumpTCP([], makeSocket=lambda: self.fail("asked")), [])

    def test_noNetlink(self):
        """
        Where no netlink socket can be made (not Linux), or reading fails, the dump
        raises L{SockDiagError}.
        """
        def missing():
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported")
        self.assertRaises(SockDiagError, sockdiag.dumpTCP, [7], makeSocket=missing)

        class Broken(FakeNetlink):
            def recv(self, size):
                raise socket.timeout("timed out")
        broken = Broken(lambda request: [])
        error = self.assertRaises(SockDiagError, sockdiag.dumpTCP, [7],
                                  makeSocket=lambda: broken)
        self.assertIn("timed out", str(error))
        self.assertTrue(broken.closed)

    def test_lookups(self):
        """
        Each endpoint pair is looked up with its index + 1 as sequence number, in
        batches of L{sockdiag.LOOKUP_BATCH}; a pair the kernel does not know, or
        answers with a listening socket (what a lookup of a gone connection finds), or
        that is no address, is L{None}.
        """
        endpoints = [("127.0.0.1", 7, "127.0.0.2", 1000 + i) for i in range(70)]
        endpoints[3] = ("not an address", 7, "127.0.0.2", 1)

        def answer(batch):
            replies = []
            for offset in range(0, len(batch), 72):
                request = batch[offset:offset + 72]
                sequence = struct.unpack_from("=I", request, 8)[0]
                remote = struct.unpack_from("!H", request, 26)[0]
                if remote == 1001:
                    replies.append(netlink(NLMSG_ERROR, struct.pack("=i", -errno.ENOENT)
                                           + request[:16], sequence))
                else:
                    state = LISTEN if remote == 1002 else ESTABLISHED
                    replies.append(netlink(SOCK_DIAG_BY_FAMILY, diagMessage(
                        state=state, remote=("127.0.0.2", remote), inode=sequence),
                        sequence))
            return replies
        fake = FakeNetlink(answer)
        found = sockdiag.lookupTCP(endpoints, makeSocket=lambda: fake)
        self.assertEqual(len(fake.sent), 2)
        self.assertEqual(len(fake.sent[0]), 72 * (sockdiag.LOOKUP_BATCH - 1))
        self.assertEqual([i for i, s in enumerate(found) if s is None], [1, 2, 3])
        self.assertEqual([s.inode for s in found if s is not None],
                         [1] + list(range(5, 71)))
