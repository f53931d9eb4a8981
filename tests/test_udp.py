"""
Tests for L{portserver.udp}: the UDP ports portserver listens with. Their reads and
writes run against an in-memory socket; L{listenUDP} against real ones. Replies over
real sockets are in L{tests.test_integration}.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import reactor
from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from portserver import udp
from portserver.udp import DatagramPort, PacketInfoPort, listenUDP, sourceAncillary
from tests.support import PortReactor


def pktinfo(destination: str, ifindex: int = 1):
    """
    The C{recvmsg} ancillary item of an IPv4 datagram sent to C{destination}.
    """
    data = (ifindex.to_bytes(4, "little") + socket.inet_aton(destination)
            + socket.inet_aton(destination))
    return (socket.IPPROTO_IP, udp.IP_PKTINFO, data)


class FakeSocket:
    """
    A non-blocking UDP socket in memory: C{incoming} is read (then C{EAGAIN}); what is
    sent is recorded in C{sent}; C{sendErrors} are raised by the next sends, in turn.
    """

    def __init__(self, incoming=()):
        self.incoming = list(incoming)
        self.sent = []
        self.sendErrors = []

    def _next(self):
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        item = self.incoming.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def recvfrom(self, size):
        data, ancillary, addr = self._next()
        return data[:size], addr

    def recvmsg(self, size, ancillarySize):
        data, ancillary, addr = self._next()
        return data[:size], list(ancillary), 0, addr

    def _send(self, record):
        if self.sendErrors:
            raise OSError(self.sendErrors.pop(0), "failed")
        self.sent.append(record)
        return len(record[0])

    def sendto(self, data, addr):
        return self._send((data, addr))

    def sendmsg(self, buffers, ancillary, flags, addr):
        return self._send((b"".join(buffers), list(ancillary), addr))


class Recorder(DatagramProtocol):
    """
    Records each datagram (with the port's C{destination} while it is delivered, when
    the port has one) and echoes it, unless C{echo} is false.
    """

    def __init__(self, echo=True):
        self.received = []
        self.echo = echo

    def datagramReceived(self, data, addr):
        self.received.append((data, addr, getattr(self.transport, "destination", None)))
        if self.echo:
            self.transport.write(data, addr)


def makePort(incoming=(), protocol=None, interface="127.0.0.1", cls=DatagramPort):
    """
    A C{cls} port on C{interface} whose socket is a L{FakeSocket} of C{incoming}
    ((data, ancillary, addr) triples, or errors to raise).
    """
    protocol = protocol or Recorder()
    port = cls(0, protocol, interface, udp.MAX_DATAGRAM, reactor=MemoryReactor())
    port.socket = FakeSocket(incoming)
    protocol.transport = port
    return port, protocol


class DatagramPortReadTests(SynchronousTestCase):
    """
    L{DatagramPort.doRead} delivers what is waiting, as Twisted's port does.
    """

    def test_readsUntilNothingLeft(self):
        """
        Every datagram waiting is delivered, in order, and the read ends at C{EAGAIN}.
        """
        port, protocol = makePort([(b"a", (), ("127.0.0.2", 1000)),
                                   (b"bc", (), ("127.0.0.3", 1001))])
        port.doRead()
        self.assertEqual([(d, a) for d, a, _ in protocol.received],
                         [(b"a", ("127.0.0.2", 1000)), (b"bc", ("127.0.0.3", 1001))])
        port.doRead()
        self.assertEqual(len(protocol.received), 2)

    def test_maxThroughput(self):
        """
        One read delivers at most C{maxThroughput} bytes (the datagram that passes it
        included); the rest waits for the next.
        """
        port, protocol = makePort([(b"x" * 8, (), ("127.0.0.2", 1000))] * 3)
        port.maxThroughput = 10
        port.doRead()
        self.assertEqual(len(protocol.received), 2)
        port.doRead()
        self.assertEqual(len(protocol.received), 3)

    def test_ipv6AddressTrimmed(self):
        """
        On an IPv6 port the sender is (host, port), without flow info and scope id, and
        the reply goes to it.
        """
        port, protocol = makePort([(b"a", (), ("::1", 1000, 0, 0))], interface="::1")
        port.doRead()
        self.assertEqual(protocol.received, [(b"a", ("::1", 1000), None)])
        self.assertEqual(port.socket.sent, [(b"a", ("::1", 1000))])

    def test_pluginFailure(self):
        """
        A protocol's exception is logged and the next datagram is delivered.
        """
        class Failing(Recorder):
            def datagramReceived(self, data, addr):
                super().datagramReceived(data, addr)
                if data == b"boom":
                    1 / 0

        port, protocol = makePort([(b"boom", (), ("127.0.0.2", 1000)),
                                   (b"ok", (), ("127.0.0.2", 1000))], Failing(echo=False))
        port.doRead()
        self.assertEqual([d for d, _, _ in protocol.received], [b"boom", b"ok"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_refusedOnUnconnectedPort(self):
        """
        An ICMP "port unreachable" reported on the read of an unconnected port ends the
        read without telling the protocol, as Twisted's port does.
        """
        class Refused(Recorder):
            refused = 0

            def connectionRefused(self):
                self.refused += 1

        port, protocol = makePort([ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
                                   (b"a", (), ("127.0.0.2", 1000))], Refused())
        port.doRead()
        self.assertEqual((protocol.refused, protocol.received), (0, []))
        port.doRead()
        self.assertEqual(len(protocol.received), 1)

    def test_otherReadErrorRaised(self):
        """
        Any other read error is raised to the reactor (which closes the port), as
        Twisted's port does.
        """
        port, protocol = makePort([OSError(errno.EBADF, "bad")])
        self.assertRaises(OSError, port.doRead)


class DatagramPortWriteTests(SynchronousTestCase):
    """
    L{DatagramPort.write}: the answer to the datagram being delivered is sent as the
    kernel gave its address; any other address is checked as Twisted does.
    """

    def test_answerUnchecked(self):
        """
        A write to the very address tuple the socket gave is sent without Twisted's
        address checks (here an address they would refuse: only the kernel's
        addresses skip them); an equal tuple made elsewhere is checked and refused.
        """
        port, protocol = makePort([(b"a", (), ("not-an-ip", 1000))])
        port.doRead()
        self.assertEqual(port.socket.sent, [(b"a", ("not-an-ip", 1000))])
        equal = tuple(["not-an-ip", 1000])  # (not the same constant as the one read)
        self.assertRaises(InvalidAddressError, port.write, b"b", equal)

    def test_otherAddressesChecked(self):
        """
        Before any datagram, and to an address that is not the sender's, writes are
        Twisted's: an IP address is sent to, a hostname or an IPv6 address on an IPv4
        port refused.
        """
        port, protocol = makePort()
        port.write(b"a", ("127.0.0.9", 7000))
        self.assertEqual(port.socket.sent, [(b"a", ("127.0.0.9", 7000))])
        self.assertRaises(InvalidAddressError, port.write, b"b", ("localhost", 7000))
        self.assertRaises(InvalidAddressError, port.write, b"b", ("::1", 7000))
        self.assertRaises(AssertionError, port.write, b"b", None)

    def test_sendErrors(self):
        """
        Sending the answer is retried on C{EINTR}; C{EMSGSIZE} raises
        L{MessageLengthError}; C{ECONNREFUSED} drops the datagram; any other error is
        raised: as Twisted's write.
        """
        port, protocol = makePort([(b"a", (), ("127.0.0.2", 1000))], Recorder(echo=False))
        port.doRead()
        addr = protocol.received[0][1]
        port.socket.sendErrors = [errno.EINTR]
        port.write(b"x", addr)
        self.assertEqual(port.socket.sent, [(b"x", addr)])
        port.socket.sendErrors = [errno.EMSGSIZE]
        self.assertRaises(MessageLengthError, port.write, b"y", addr)
        port.socket.sendErrors = [errno.ECONNREFUSED]
        self.assertIsNone(port.write(b"y", addr))
        port.socket.sendErrors = [errno.EPERM]
        self.assertRaises(PermissionError, port.write, b"y", addr)
        self.assertEqual(len(port.socket.sent), 1)


class PacketInfoPortTests(SynchronousTestCase):
    """
    L{PacketInfoPort} answers from the address each datagram was sent to.
    """

    def setUp(self):
        if not udp.pktinfoSupported():
            raise SkipTest("this platform has no IP_PKTINFO/IPV6_PKTINFO")

    def port(self, incoming, protocol=None):
        return makePort(incoming, protocol, interface="0.0.0.0", cls=PacketInfoPort)

    def test_answerFromDestination(self):
        """
        While a datagram is delivered, C{destination} is where it was sent; the answer
        leaves from there, to the sender; afterwards C{destination} is L{None}.
        """
        port, protocol = self.port([(b"a", [pktinfo("127.0.0.2")], ("127.0.0.9", 1000))])
        port.doRead()
        self.assertEqual(protocol.received, [(b"a", ("127.0.0.9", 1000), "127.0.0.2")])
        self.assertEqual(port.socket.sent, [
            (b"a", sourceAncillary("127.0.0.2", socket.AF_INET), ("127.0.0.9", 1000))])
        self.assertIsNone(port.destination)

    def test_eachDatagramItsDestination(self):
        """
        Datagrams of one sender to two local addresses, in turn (and to more than the
        caches hold), are each answered from their own destination; a later write to
        that sender leaves from the last one.
        """
        destinations = [f"127.0.0.{2 + i % 6}" for i in range(20)]
        port, protocol = self.port([(b"a", [pktinfo(d, ifindex=i)], ("127.0.0.9", 1000))
                                    for i, d in enumerate(destinations)])
        port.cacheSize = 4
        port.doRead()
        self.assertEqual([sent[1] for sent in port.socket.sent],
                         [sourceAncillary(d, socket.AF_INET) for d in destinations])
        port.write(b"later", ("127.0.0.9", 1000))
        self.assertEqual(port.socket.sent[-1][1:], (
            sourceAncillary(destinations[-1], socket.AF_INET), ("127.0.0.9", 1000)))
        self.assertLessEqual(max(len(port._destinations), len(port._ancillary)), 4)

    def test_unknownPeer(self):
        """
        A write to a peer that sent nothing leaves as Twisted's would (checked, from
        the address the routing table picks).
        """
        port, protocol = self.port([])
        port.write(b"a", ("127.0.0.9", 1000))
        self.assertEqual(port.socket.sent, [(b"a", ("127.0.0.9", 1000))])
        self.assertRaises(InvalidAddressError, port.write, b"b", ("localhost", 1000))

    def test_noPacketInfo(self):
        """
        A datagram without packet info has no C{destination}, and its answer leaves as
        Twisted's would.
        """
        port, protocol = self.port([(b"a", [], ("127.0.0.9", 1000))])
        port.doRead()
        self.assertEqual(protocol.received, [(b"a", ("127.0.0.9", 1000), None)])
        self.assertEqual(port.socket.sent, [(b"a", ("127.0.0.9", 1000))])


class ListenUDPTests(TestCase):
    """
    L{listenUDP} picks the port class by reactor and interface.
    """

    def listen(self, interface):
        port = listenUDP(reactor, 0, DatagramProtocol(), interface)
        self.addCleanup(port.stopListening)
        return port

    def test_specificAddress(self):
        """
        On a specific address of a real reactor, the port is a L{DatagramPort} reading
        datagrams of any size.
        """
        port = self.listen("127.0.0.1")
        self.assertIs(type(port), DatagramPort)
        self.assertEqual(port.maxPacketSize, udp.MAX_DATAGRAM)

    def test_wildcard(self):
        """
        On a wildcard address, where the platform allows, it is a L{PacketInfoPort}.
        """
        if not udp.pktinfoSupported():
            raise SkipTest("this platform has no IP_PKTINFO/IPV6_PKTINFO")
        self.assertIs(type(self.listen("0.0.0.0")), PacketInfoPort)

    def test_memoryReactor(self):
        """
        An in-memory reactor is asked to listen, as any reactor that is not one of file
        descriptors.
        """
        memory = PortReactor()
        protocol = DatagramProtocol()
        listenUDP(memory, 7007, protocol, "0.0.0.0")
        self.assertEqual(memory.udpServers, [(7007, protocol, "0.0.0.0", udp.MAX_DATAGRAM)])
