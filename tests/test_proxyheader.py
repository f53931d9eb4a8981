"""
Unit tests for the PROXY protocol (L{portserver.proxyheader}): the header's edge cases
(split across reads, v1 C{UNKNOWN}, v2 TLVs and C{LOCAL}, IPv6, oversized and garbage
headers), the header reader's timeout on a L{Clock}, the refusals and their bounded log,
and the config key, the registry's C{proxy} field and the connection log.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import weakref

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from portserver.config import parseServices
from portserver.connlog import formatLine
from portserver.plan import formatPlan, loadPlan
from portserver.ports import PrivilegeRule
from portserver.proxyheader import (
    PROXY_ERROR,
    PROXY_UNTRUSTED,
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    Header,
    HeaderError,
    ProxyHeaders,
    ProxyProtocol,
    readHeader,
)
from portserver.registry import ConnectionRecord, Endpoint, ProxiedRecord, Registry
from tests.support import PROVIDERS


def v1(source="203.0.113.7", port=40001, family="TCP4", dest="192.0.2.1", destPort=80):
    """
    A v1 header line (with its CRLF).
    """
    return f"PROXY {family} {source} {dest} {port} {destPort}\r\n".encode()


def v2(command=1, familyProtocol=0x11, addresses=None, tlvs=b""):
    """
    A v2 header: C{command} 1 PROXY, 0 LOCAL; C{familyProtocol} 0x11 TCP over IPv4,
    0x21 TCP over IPv6, 0x12 UDP over IPv4, 0x31 UNIX stream, 0x00 unspecified.
    """
    if addresses is None:
        addresses = packed("203.0.113.7", "192.0.2.1", 40001, 80)
    body = addresses + tlvs
    return (V2_SIGNATURE + bytes([0x20 | command, familyProtocol])
            + struct.pack("!H", len(body)) + body)


def packed(source, dest, sourcePort, destPort):
    """
    The address block of a v2 header for two addresses of one family.
    """
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    return (socket.inet_pton(family, source) + socket.inet_pton(family, dest)
            + struct.pack("!HH", sourcePort, destPort))


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


class ReadHeaderTests(SynchronousTestCase):
    """
    L{readHeader}: where a header ends and whom it names, through Twisted's parsers.
    """

    def assertIncompleteUntilEnd(self, data, length):
        """
        Every prefix of C{data} shorter than C{length} is incomplete (L{None}); then
        the header is read, C{length} bytes long.
        """
        for end in range(length):
            self.assertIsNone(readHeader(data[:end]), end)
        header = readHeader(data)
        self.assertEqual(header.length, length)
        return header

    def test_v1IPv4(self):
        """
        A v1 TCP4 header names the client (address and port); what follows is left.
        """
        data = v1() + b"hello"
        header = readHeader(data)
        self.assertEqual(header, Header(IPv4Address("TCP", "203.0.113.7", 40001),
                                        len(v1()), 1))
        self.assertEqual(data[header.length:], b"hello")

    def test_v1SplitAcrossReads(self):
        """
        A v1 header arriving a byte at a time is incomplete until its CRLF, the CR
        alone included.
        """
        header = self.assertIncompleteUntilEnd(v1() + b"x", len(v1()))
        self.assertEqual(header.source.host, "203.0.113.7")

    def test_v1IPv6(self):
        """
        A v1 TCP6 header names an IPv6 client, normalised.
        """
        header = readHeader(v1("2001:DB8:0:0::5", family="TCP6", dest="2001:db8::1"))
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::5", 40001))

    def test_v1IPv4MappedIsIPv4(self):
        """
        An IPv4-mapped IPv6 client is its IPv4 address.
        """
        header = readHeader(v1("::ffff:198.51.100.2", family="TCP6", dest="::1"))
        self.assertEqual(header.source, IPv4Address("TCP", "198.51.100.2", 40001))

    def test_v1Unknown(self):
        """
        C{PROXY UNKNOWN}, bare (which Twisted's own parser refuses) or with addresses
        after it, is a connection of the proxy's own: no client.
        """
        self.assertEqual(readHeader(b"PROXY UNKNOWN\r\nrest"), Header(None, 15, 1))
        line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
        self.assertEqual(readHeader(line), Header(None, len(line), 1))

    def test_v1Malformed(self):
        """
        A v1 header with missing fields, a port that is no number or out of range, an
        address that is not one of its family's, or an unknown protocol is refused,
        saying so.
        """
        for line in [b"PROXY TCP4 203.0.113.7\r\n",
                     b"PROXY TCP4 203.0.113.7 192.0.2.1 x 80\r\n",
                     b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 80\r\n",
                     b"PROXY TCP4 2001:db8::5 192.0.2.1 1 80\r\n",
                     b"PROXY TCP6 203.0.113.7 ::1 1 80\r\n",
                     b"PROXY TCP4 example.com 192.0.2.1 1 80\r\n",
                     b"PROXY UDP4 203.0.113.7 192.0.2.1 1 80\r\n",
                     b"PROXY\r\n"]:
            error = self.assertRaises(HeaderError, readHeader, line)
            self.assertIn("PROXY protocol", str(error), line)

    def test_v1Oversized(self):
        """
        No CRLF within the first 107 bytes (v1's bound) is refused once 107 bytes are
        in, not buffered further; a header of exactly 107 bytes is read.
        """
        data = b"PROXY UNKNOWN " + b"x" * 200
        self.assertIsNone(readHeader(data[:V1_MAX - 1]))
        error = self.assertRaises(HeaderError, readHeader, data[:V1_MAX])
        self.assertIn("no CRLF in its first 107 bytes", str(error))
        longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
        self.assertEqual(len(longest), V1_MAX)
        self.assertEqual(readHeader(longest), Header(None, V1_MAX, 1))

    def test_v1BareNewline(self):
        """
        A line ended by LF alone is refused at once.
        """
        self.assertRaises(HeaderError, readHeader, b"PROXY UNKNOWN\n")

    def test_v2IPv4(self):
        """
        A v2 PROXY header over IPv4 names the client; it is read once its announced
        length is in, a byte at a time before that (its first 16 bytes included).
        """
        data = v2() + b"hello"
        header = self.assertIncompleteUntilEnd(data, len(v2()))
        self.assertEqual(header, Header(IPv4Address("TCP", "203.0.113.7", 40001), 28, 2))
        self.assertEqual(data[header.length:], b"hello")

    def test_v2TLVsIgnored(self):
        """
        TLVs after the addresses (ALPN, authority, unique id, NOOP) are counted in the
        header's length and otherwise ignored.
        """
        tlvs = (tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x05, b"id-1")
                + tlv(0x04, b"\0" * 10))
        header = readHeader(v2(tlvs=tlvs) + b"rest")
        self.assertEqual(header, Header(IPv4Address("TCP", "203.0.113.7", 40001),
                                        28 + len(tlvs), 2))

    def test_v2Local(self):
        """
        A v2 LOCAL command (HAProxy's health checks), with or without addresses, is a
        connection of the proxy's own: no client.
        """
        self.assertEqual(readHeader(v2(command=0, familyProtocol=0, addresses=b"")),
                         Header(None, 16, 2))
        self.assertEqual(readHeader(v2(command=0)), Header(None, 28, 2))

    def test_v2Unspecified(self):
        """
        A v2 PROXY header with an unspecified family, or a UNIX one, names no IP client:
        the connection is served as the proxy's.
        """
        self.assertEqual(readHeader(v2(familyProtocol=0x00, addresses=b"")).source, None)
        self.assertEqual(readHeader(v2(familyProtocol=0x31, addresses=b"\0" * 216)).source,
                         None)

    def test_v2IPv6(self):
        """
        A v2 header over IPv6 names an IPv6 client in its short form.
        """
        header = readHeader(v2(familyProtocol=0x21,
                               addresses=packed("2001:db8::5", "2001:db8::1", 40001, 80)))
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::5", 40001))
        self.assertEqual(header.length, 16 + 36)

    def test_v2Datagram(self):
        """
        A v2 header of a UDP connection is refused: the service serves TCP.
        """
        error = self.assertRaises(HeaderError, readHeader, v2(familyProtocol=0x12))
        self.assertIn("UDP connection", str(error))

    def test_v2Malformed(self):
        """
        A v2 header of another version, an unknown command or family, or addresses
        shorter than its family's is refused.
        """
        good = v2()
        for data in [good[:12] + b"\x11" + good[13:],  # version 1 in a v2 signature
                     good[:12] + b"\x2f" + good[13:],  # command 15
                     good[:13] + b"\x41" + good[14:],  # family 4
                     v2(addresses=b"\x01\x02\x03")]:
            self.assertRaises(HeaderError, readHeader, data)

    def test_v2Oversized(self):
        """
        A v2 header announcing more than the bound is refused as soon as its length is
        read, before the rest arrives; one at the bound is read.
        """
        error = self.assertRaises(HeaderError, readHeader,
                                  V2_SIGNATURE + b"\x21\x11\xff\xff")
        self.assertIn("65551 bytes", str(error))
        padding = tlv(0x04, b"\0" * (V2_MAX_PAYLOAD - 12 - 3))
        header = readHeader(v2(tlvs=padding))
        self.assertEqual(header.length, 16 + V2_MAX_PAYLOAD)

    def test_garbage(self):
        """
        A client that speaks first without a header (an HTTP request, a TLS hello, a
        v2 signature gone wrong) is refused at its first wrong byte.
        """
        for data in [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"H", b"PROXZ",
                     V2_SIGNATURE[:5] + b"X"]:
            error = self.assertRaises(HeaderError, readHeader, data)
            self.assertIn("no PROXY protocol header", str(error))

    def test_versions(self):
        """
        A header of a version the service does not accept is refused, once its
        signature is complete; the other is read.
        """
        error = self.assertRaises(HeaderError, readHeader, v1(), (2,))
        self.assertIn("v1 header, but this service accepts v2 only", str(error))
        self.assertIsNone(readHeader(b"PROX", (2,)))
        self.assertRaises(HeaderError, readHeader, v2(), (1,))
        self.assertEqual(readHeader(v2(), (2,)).version, 2)
        self.assertEqual(readHeader(v1(), (1,)).version, 1)


def settings(*trusted, versions=(1, 2), timeout=5.0):
    return ProxyProtocol(tuple(ipaddress.ip_network(n) for n in trusted), versions, timeout)


class ProxyProtocolTests(SynchronousTestCase):
    """
    L{ProxyProtocol}: who is a trusted proxy.
    """

    def test_trusts(self):
        """
        A peer in a C{from} block is trusted (an IPv4-mapped IPv6 peer as its IPv4
        address, an IPv6 peer with a scope id by its address); others, and what is not
        an address, are not.
        """
        proxies = settings("10.0.0.0/8", "127.0.0.2/32", "fe80::/10")
        for host in ["10.1.2.3", "127.0.0.2", "::ffff:10.9.9.9", "fe80::1%lo"]:
            self.assertTrue(proxies.trusts(host), host)
        for host in ["127.0.0.1", "11.0.0.1", "::1", "::ffff:127.0.0.1", "", "proxy"]:
            self.assertFalse(proxies.trusts(host), host)

    def test_asDict(self):
        """
        The settings under the config's keys; single addresses without a prefix.
        """
        self.assertEqual(settings("10.0.0.0/8", "127.0.0.2/32").asDict(),
                         {"from": ["10.0.0.0/8", "127.0.0.2"], "versions": [1, 2],
                          "timeout": 5.0})


class FakeFactory:
    """
    What L{ProxyHeaders} uses of a L{portserver.tracking.TrackingFactory}.
    """

    service = "web"

    def __init__(self):
        self.clock = Clock()
        self.registry = Registry(self.clock)
        self.live = weakref.WeakSet()


class RecordingHeaders(ProxyHeaders):
    """
    L{ProxyHeaders} that records what it would serve.
    """

    def __init__(self, settings, factory):
        super().__init__(settings, factory)
        self.served = []

    def serve(self, transport, peer, header, rest):
        self.served.append((transport, peer, header, rest))


class HeaderReaderTests(SynchronousTestCase):
    """
    The header reader of a trusted proxy's connection, on a L{StringTransport} and a
    L{Clock}.
    """

    peer = ("127.0.0.2", 51000)

    def setUp(self):
        self.factory = FakeFactory()
        self.headers = RecordingHeaders(settings("127.0.0.0/8", timeout=5), self.factory)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self):
        reader = self.headers.reader(self.peer)
        transport = StringTransport()
        reader.makeConnection(transport)
        return reader, transport

    def refused(self, reason):
        return self.factory.registry.refused[("web", reason)]

    def logged(self, reason):
        return [e for e in self.events if e.get("reason") == reason]

    def test_interface(self):
        """
        The reader provides L{IProtocol}.
        """
        reader, _ = self.connect()
        self.assertTrue(verifyObject(IProtocol, reader))

    def test_splitAcrossReads(self):
        """
        A header arriving a byte at a time, with data after it in the last read, is
        served once: the header, and the data after it; the timer is cancelled and the
        reader is no longer among the factory's live connections.
        """
        reader, transport = self.connect()
        self.assertEqual(list(self.factory.live), [reader])
        data = v2(tlvs=tlv(0x04, b"\0\0")) + b"EHLO"
        for i in range(len(data) - 5):
            reader.dataReceived(data[i:i + 1])
        self.assertEqual(self.headers.served, [])
        reader.dataReceived(data[-5:])
        [(served, peer, header, rest)] = self.headers.served
        self.assertIs(served, transport)
        self.assertEqual(peer, self.peer)
        self.assertEqual(header.source, IPv4Address("TCP", "203.0.113.7", 40001))
        self.assertEqual(rest, b"EHLO")
        self.assertEqual(self.factory.clock.getDelayedCalls(), [])
        self.assertEqual(list(self.factory.live), [])
        self.assertIsNone(reader.transport)

    def test_timeout(self):
        """
        No complete header within C{timeout} seconds closes the connection: refused
        "proxy-error", logged with the peer and how much arrived.
        """
        reader, transport = self.connect()
        reader.dataReceived(b"PROXY TCP4 ")
        self.factory.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.factory.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.refused(PROXY_ERROR), 1)
        [event] = self.logged(PROXY_ERROR)
        self.assertEqual(event["peer"], "127.0.0.2:51000")
        self.assertIn("within 5s (11 bytes received)", event["why"])
        reader.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.refused(PROXY_ERROR), 1)  # not counted twice
        self.assertEqual(self.headers.served, [])

    def test_garbage(self):
        """
        A connection that begins with something else is closed at once, refused
        "proxy-error"; what arrives while it closes is ignored.
        """
        reader, transport = self.connect()
        reader.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        reader.dataReceived(v1())
        self.assertEqual(self.headers.served, [])
        self.assertEqual(self.refused(PROXY_ERROR), 1)
        self.assertEqual(self.factory.clock.getDelayedCalls(), [])
        self.assertEqual(list(self.factory.live), [])

    def test_oversized(self):
        """
        A v2 header longer than the bound closes the connection once its length is in.
        """
        reader, transport = self.connect()
        reader.dataReceived(V2_SIGNATURE + b"\x21\x11\x10\x00")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.refused(PROXY_ERROR), 1)

    def test_closedBeforeHeader(self):
        """
        A peer that closes before its header is complete is counted "proxy-error" once.
        """
        reader, transport = self.connect()
        reader.dataReceived(V2_SIGNATURE)
        reader.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.refused(PROXY_ERROR), 1)
        [event] = self.logged(PROXY_ERROR)
        self.assertIn("closed before a complete PROXY protocol header (12 bytes",
                      event["why"])
        self.assertEqual(self.factory.clock.getDelayedCalls(), [])

    def test_untrusted(self):
        """
        A peer outside C{from} gets no reader: refused "proxy-untrusted", logged.
        """
        self.assertIsNone(self.headers.reader(("192.0.2.9", 4000)))
        self.assertEqual(self.refused(PROXY_UNTRUSTED), 1)
        [event] = self.logged(PROXY_UNTRUSTED)
        self.assertEqual(event["peer"], "192.0.2.9:4000")
        self.assertEqual(list(self.factory.live), [])

    def test_boundedLog(self):
        """
        Refusals for one reason are all counted but logged once per interval; the next
        line says how many were left out.
        """
        for _ in range(5):
            self.headers.reader(("192.0.2.9", 4000))
        self.assertEqual(self.refused(PROXY_UNTRUSTED), 5)
        self.assertEqual(len(self.logged(PROXY_UNTRUSTED)), 1)
        self.factory.clock.advance(10)
        self.headers.reader(("192.0.2.9", 4000))
        later = self.logged(PROXY_UNTRUSTED)[-1]
        self.assertEqual(later["suppressed"], 4)

    def test_abortConnection(self):
        """
        Aborting a reader (a drain's end) aborts its transport.
        """
        reader, transport = self.connect()
        reader.abortConnection()
        self.assertTrue(transport.disconnecting)


class ConfigTests(SynchronousTestCase):
    """
    The C{proxy_protocol:} key of a service.
    """

    def parse(self, text):
        return parseServices("services:\n" + text, "p.yaml", PROVIDERS)

    def test_settings(self):
        """
        C{from} (addresses and CIDR blocks), C{versions} and C{timeout}; versions default
        to both and the timeout to 5 seconds; without the key there are none.
        """
        [web, plain], problems = self.parse(
            "  - name: web\n    protocol: echo\n"
            "    proxy_protocol: {from: [10.0.0.0/8, 127.0.0.1, '::1'], timeout: 2}\n"
            "  - name: plain\n    protocol: echo\n    port: 8\n")
        self.assertEqual(problems, [])
        self.assertEqual(web.proxyProtocol,
                         ProxyProtocol((ipaddress.ip_network("10.0.0.0/8"),
                                        ipaddress.ip_network("127.0.0.1/32"),
                                        ipaddress.ip_network("::1/128")), (1, 2), 2.0))
        self.assertIsNone(plain.proxyProtocol)

    def test_problems(self):
        """
        Each problem is reported at its line, naming the service: a missing or empty
        C{from}, an item that is no address, an unknown version or key, a timeout that
        is not a positive number, a value that is not a mapping, and a service with a
        udp transport.
        """
        _, problems = self.parse(
            "  - name: a\n    protocol: echo\n    port: 1\n"
            "    proxy_protocol: {}\n"                                      # line 5
            "  - name: b\n    protocol: echo\n    port: 2\n"
            "    proxy_protocol:\n      from: [10.0.0.0/8, proxy.example]\n"  # line 10
            "      versions: [1, 3]\n      timeout: 0\n      tls: yes\n"
            "  - name: c\n    protocol: echo\n    port: 3\n"
            "    proxy_protocol: [127.0.0.1]\n"                             # line 17
            "  - name: d\n    protocol: echo\n    port: 4\n    transports: [tcp, udp]\n"
            "    proxy_protocol: {from: [127.0.0.1]}\n"                     # line 22
            "  - name: e\n    protocol: echo\n    port: 5\n"
            "    proxy_protocol: {from: []}\n")                             # line 26
        found = sorted((p.mark.line, p.service, p.message) for p in problems)
        self.assertEqual(found, [
            (5, "a", "proxy_protocol: 'from' is required"),
            (10, "b", "proxy_protocol: 'from' item 2: 'proxy.example' is not an IP "
                      "address or CIDR block"),
            (11, "b", "proxy_protocol: 'versions' must list 1, 2 or both, not 3"),
            (12, "b", "proxy_protocol: 'timeout' must be a number of seconds, more than 0 "
                      "and at most 31536000 (a year)"),
            (13, "b", "proxy_protocol: 'tls' unknown option (known: from, timeout, "
                      "versions)"),
            (17, "c", "'proxy_protocol' must be a mapping with 'from' (the proxies' "
                      "addresses), not a list"),
            (22, "d", "'proxy_protocol' is for TCP: the PROXY protocol carries no UDP; "
                      "give the udp transport a service of its own"),
            (26, "e", "proxy_protocol: 'from' must list at least one proxy (an address "
                      "or CIDR block)"),
        ])

    def test_planShowsIt(self):
        """
        C{--check}'s table and C{/api/listeners} show a service's PROXY protocol
        settings; a service without them has no such key.
        """
        plan = loadPlan("p.yaml", PROVIDERS, rule=PrivilegeRule(1024, "test"),
                        dualStack=True, text=(
                            "services:\n  - name: web\n    protocol: echo\n    port: 7007\n"
                            "    proxy_protocol: {from: [127.0.0.2], versions: [2]}\n"
                            "  - name: plain\n    protocol: echo\n    port: 7008\n"))
        self.assertIn("web: from 127.0.0.2; versions 2; timeout 5s", formatPlan(plan))
        web, plain = plan.listeners
        self.assertEqual(web.asDict()["proxy_protocol"],
                         {"from": ["127.0.0.2"], "versions": [2], "timeout": 5.0})
        self.assertNotIn("proxy_protocol", plain.asDict())


class RecordTests(SynchronousTestCase):
    """
    The registry's C{proxy} field.
    """

    def test_proxyShown(self):
        """
        A connection opened with a proxy shows it as C{proxy} (host and port) in its
        dict, with the client as C{remote}; its connection log line ends with
        C{proxy=host:port}.
        """
        registry = Registry(Clock())
        record = registry.open("web", "echo", "tcp", Endpoint("127.0.0.1", 7),
                               Endpoint("203.0.113.7", 40001), Endpoint("127.0.0.2", 51000))
        self.assertIsInstance(record, ProxiedRecord)
        shown = registry.asDicts([record])[0]
        self.assertEqual(shown["proxy"], {"host": "127.0.0.2", "port": 51000})
        self.assertEqual(shown["remote"]["host"], "203.0.113.7")
        registry.close(record, "client-closed")
        self.assertTrue(formatLine(record, "STAMP").endswith(" proxy=127.0.0.2:51000\n"))

    def test_plainRecordUnchanged(self):
        """
        A connection opened without one has no C{proxy} key, no line field, and no slot
        for it: its record costs what it did.
        """
        registry = Registry(Clock())
        record = registry.open("web", "echo", "tcp", Endpoint("127.0.0.1", 7),
                               Endpoint("203.0.113.7", 40001))
        self.assertIs(type(record), ConnectionRecord)
        self.assertIsNone(record.proxy)
        self.assertNotIn("proxy", ConnectionRecord.__slots__)
        self.assertNotIn("proxy", registry.asDicts([record])[0])
        registry.close(record, "client-closed")
        self.assertNotIn("proxy=", formatLine(record, "STAMP"))
