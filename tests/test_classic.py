"""
Tests for L{portserver.protocols.classic}, L{portserver.provider} and L{portserver.options}.
"""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from portserver.interfaces import IPortProtocol
from portserver.options import Option, OptionProblem, OptionsError, checkOptions
from portserver.protocols import classic
from portserver.provider import PortProtocol

#: A moment with a known RFC 867 rendering: Friday 2025-11-21 04:40:00 UTC.
KNOWN_TIME = 1763700000
KNOWN_DAYTIME = b"Friday, November 21, 2025 04:40:00-UTC\r\n"

PEER = ("127.0.0.1", 40001)
DAY = 86400


def expectedChargenCycle() -> list[bytes]:
    """
    RFC 864's pattern, built independently of the code under test: 95 lines of 72
    consecutive printing characters (space to tilde, wrapping), line N starting one
    character after line N-1.
    """
    printable = [chr(c) for c in range(32, 127)]
    return [
        "".join(printable[(start + i) % 95] for i in range(72)).encode("ascii") + b"\r\n"
        for start in range(95)
    ]


CHARGEN_LINES = expectedChargenCycle()
CHARGEN_CYCLE = b"".join(CHARGEN_LINES)


def makeService(provider, options=None):
    """
    A stand-in for a configured service: the builders only read C{options}.
    """
    return SimpleNamespace(name="svc", options=provider.validateOptions(options or {}))


def connectTCP(provider, clock=None, options=None):
    """
    Build C{provider}'s TCP factory and connect one protocol to a L{StringTransport}.

    @return: C{(protocol, transport)}.
    """
    clock = clock if clock is not None else Clock()
    factory = provider.buildFactory(makeService(provider, options), clock)
    protocol = factory.buildProtocol(IPv4Address("TCP", *PEER))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def clockAt(seconds):
    """
    A L{Clock} advanced to C{seconds} since the epoch.
    """
    clock = Clock()
    clock.advance(seconds)
    return clock


class FakeDatagramTransport:
    """
    Records each C{write(data, addr)} a datagram protocol makes.
    """

    def __init__(self):
        self.writes = []

    def write(self, data, addr=None):
        self.writes.append((data, addr))


def bindUDP(provider, clock=None, options=None, protocol=None):
    """
    Build C{provider}'s datagram protocol (or use C{protocol}) and attach a fake transport.

    @return: C{(protocol, transport)}.
    """
    if protocol is None:
        clock = clock if clock is not None else Clock()
        protocol = provider.buildDatagramProtocol(makeService(provider, options), clock)
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class ProviderTests(SynchronousTestCase):
    """
    The classic providers as L{IPortProtocol} plugins, and L{PortProtocol} itself.
    """

    expected = {
        "echo": 7,
        "discard": 9,
        "daytime": 13,
        "qotd": 17,
        "chargen": 19,
        "time": 37,
    }

    def test_interfaces(self):
        """
        Every provider in C{classic.ALL} fully provides L{IPortProtocol} and L{IPlugin}.
        """
        for provider in classic.ALL:
            self.assertTrue(verifyObject(IPortProtocol, provider), provider.name)
            self.assertTrue(verifyObject(IPlugin, provider), provider.name)

    def test_namesPortsTransports(self):
        """
        C{classic.ALL} holds exactly the six classic services, in port order, each on
        its well-known port over both TCP and UDP.
        """
        self.assertEqual(
            [(p.name, p.wellKnownPort) for p in classic.ALL], list(self.expected.items()))
        for provider in classic.ALL:
            self.assertEqual(provider.transports, frozenset({"tcp", "udp"}), provider.name)
            self.assertTrue(provider.description, provider.name)

    def test_transportsFollowBuilders(self):
        """
        A L{PortProtocol} lists only the transports it has a builder for, and refuses to
        build for the missing one with L{ValueError}.
        """
        tcpOnly = PortProtocol("t", "tcp only", 1, factory=lambda s, r: "factory")
        udpOnly = PortProtocol("u", "udp only", 2, datagram=lambda s, r: "datagram")
        self.assertEqual(tcpOnly.transports, frozenset({"tcp"}))
        self.assertEqual(udpOnly.transports, frozenset({"udp"}))
        self.assertEqual(tcpOnly.buildFactory(None, None), "factory")
        self.assertEqual(udpOnly.buildDatagramProtocol(None, None), "datagram")
        self.assertRaises(ValueError, tcpOnly.buildDatagramProtocol, None, None)
        self.assertRaises(ValueError, udpOnly.buildFactory, None, None)

    def test_buildersGetServiceAndReactor(self):
        """
        L{PortProtocol.buildFactory} and C{buildDatagramProtocol} pass the service and the
        reactor through to the declared builders unchanged.
        """
        calls = []
        provider = PortProtocol(
            "p", "p", 3,
            factory=lambda s, r: calls.append(("tcp", s, r)),
            datagram=lambda s, r: calls.append(("udp", s, r)))
        service, reactor = object(), object()
        provider.buildFactory(service, reactor)
        provider.buildDatagramProtocol(service, reactor)
        self.assertEqual(calls, [("tcp", service, reactor), ("udp", service, reactor)])


class EchoTests(SynchronousTestCase):
    """
    RFC 862 echo.
    """

    def test_tcp(self):
        """
        Over TCP, every chunk received is written back, in order, and the connection
        stays open.
        """
        protocol, transport = connectTCP(classic.echo)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"hello ")
        protocol.dataReceived(b"world\r\n")
        self.assertEqual(transport.value(), b"hello world\r\n")
        self.assertFalse(transport.disconnecting)

    def test_udp(self):
        """
        Over UDP, a datagram is sent back unchanged to exactly its source address.
        """
        protocol, transport = bindUDP(classic.echo)
        protocol.datagramReceived(b"ping", PEER)
        protocol.datagramReceived(b"pong", ("10.0.0.2", 7))
        self.assertEqual(transport.writes, [(b"ping", PEER), (b"pong", ("10.0.0.2", 7))])


class DiscardTests(SynchronousTestCase):
    """
    RFC 863 discard.
    """

    def test_tcp(self):
        """
        Over TCP, nothing is ever sent back and the connection stays open.
        """
        protocol, transport = connectTCP(classic.discard)
        protocol.dataReceived(b"into the void")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_udp(self):
        """
        Over UDP, no datagram is ever sent back.
        """
        protocol, transport = bindUDP(classic.discard)
        protocol.datagramReceived(b"into the void", PEER)
        protocol.datagramReceived(b"", PEER)
        self.assertEqual(transport.writes, [])


class DaytimeTests(SynchronousTestCase):
    """
    RFC 867 daytime, read from the reactor's clock.
    """

    def test_format(self):
        """
        L{classic.daytime} renders a time in UTC as the RFC's suggested
        "Weekday, Month Day, Year HH:MM:SS-ZONE" line, ending in CRLF.
        """
        self.assertEqual(classic.daytime(0), b"Thursday, January 01, 1970 00:00:00-UTC\r\n")
        self.assertEqual(classic.daytime(KNOWN_TIME), KNOWN_DAYTIME)

    def test_tcp(self):
        """
        Over TCP, the daytime of the reactor's clock is sent on connection, then the
        connection is closed.
        """
        protocol, transport = connectTCP(classic.daytimeProtocol, clockAt(KNOWN_TIME))
        self.assertEqual(transport.value(), KNOWN_DAYTIME)
        self.assertTrue(transport.disconnecting)

    def test_udp(self):
        """
        Over UDP, any datagram is answered, to its source, with the daytime of the
        reactor's clock at the moment it arrives.
        """
        clock = clockAt(KNOWN_TIME)
        protocol, transport = bindUDP(classic.daytimeProtocol, clock)
        protocol.datagramReceived(b"anything", PEER)
        clock.advance(DAY + 61)
        protocol.datagramReceived(b"", PEER)
        self.assertEqual(transport.writes, [
            (KNOWN_DAYTIME, PEER),
            (b"Saturday, November 22, 2025 04:41:01-UTC\r\n", PEER),
        ])


class TimeTests(SynchronousTestCase):
    """
    RFC 868 time: seconds since 1900 as a 32-bit big-endian number.
    """

    def test_binaryTime(self):
        """
        L{classic.binaryTime} counts from 1900, truncates fractions, and wraps to zero
        in 2036 like the RFC's 32-bit counter.
        """
        self.assertEqual(classic.binaryTime(0), struct.pack("!I", 2208988800))
        self.assertEqual(classic.binaryTime(0), b"\x83\xaa\x7e\x80")
        self.assertEqual(classic.binaryTime(KNOWN_TIME + 0.9),
                         struct.pack("!I", KNOWN_TIME + 2208988800))
        self.assertEqual(classic.binaryTime(2**32 - 2208988800), b"\x00\x00\x00\x00")

    def test_tcp(self):
        """
        Over TCP, the four bytes for the reactor's clock are sent, then the connection is
        closed.
        """
        protocol, transport = connectTCP(classic.timeProtocol, Clock())
        self.assertEqual(transport.value(), struct.pack("!I", 2208988800))
        self.assertTrue(transport.disconnecting)

    def test_udp(self):
        """
        Over UDP, any datagram (the RFC sends an empty one) is answered, to its source,
        with the four bytes for the reactor's clock at the moment it arrives.
        """
        clock = Clock()
        protocol, transport = bindUDP(classic.timeProtocol, clock)
        protocol.datagramReceived(b"", PEER)
        clock.advance(KNOWN_TIME)
        protocol.datagramReceived(b"", PEER)
        self.assertEqual(transport.writes, [
            (struct.pack("!I", 2208988800), PEER),
            (struct.pack("!I", KNOWN_TIME + 2208988800), PEER),
        ])


class QOTDTests(SynchronousTestCase):
    """
    RFC 865 quote of the day, one configured quote per UTC day.
    """

    quotes = ["first quote", "second quote", "third line one\nline two"]

    def quoteAt(self, seconds):
        """
        What a fresh TCP connection receives at C{seconds}, checking it then closes.
        """
        protocol, transport = connectTCP(
            classic.qotd, clockAt(seconds), {"quotes": self.quotes})
        self.assertTrue(transport.disconnecting)
        return transport.value()

    def test_defaults(self):
        """
        With no options, the quotes default to the built-in list, and that is what
        gets served.
        """
        options = classic.qotd.validateOptions({})
        self.assertEqual(options, {"quotes": list(classic.DEFAULT_QUOTES)})
        self.assertTrue(all(isinstance(q, str) and q for q in options["quotes"]))
        protocol, transport = connectTCP(classic.qotd)
        self.assertEqual(transport.value(), classic.DEFAULT_QUOTES[0].encode("ascii") + b"\r\n")

    def test_tcpRotatesDaily(self):
        """
        Over TCP, the quote sent is the same for a whole UTC day, moves on by one at
        midnight, and wraps around the list.
        """
        self.assertEqual(self.quoteAt(0), b"first quote\r\n")
        self.assertEqual(self.quoteAt(DAY - 1), b"first quote\r\n")
        self.assertEqual(self.quoteAt(DAY), b"second quote\r\n")
        self.assertEqual(self.quoteAt(2 * DAY), b"third line one\r\nline two\r\n")
        self.assertEqual(self.quoteAt(3 * DAY + 12345), b"first quote\r\n")

    def test_lineEndings(self):
        """
        Whatever the line endings in the configuration, a quote goes out with CRLF
        between lines and exactly one CRLF at the end.
        """
        for quote in ["a\nb", "a\r\nb\r\n", "a\nb\n\n"]:
            self.assertEqual(classic.quoteOfTheDay([quote], 0), b"a\r\nb\r\n", repr(quote))

    def test_udp(self):
        """
        Over UDP, any datagram is answered, to its source, with the quote for the day
        of the reactor's clock.
        """
        clock = Clock()
        protocol, transport = bindUDP(classic.qotd, clock, {"quotes": self.quotes})
        protocol.datagramReceived(b"", PEER)
        clock.advance(DAY)
        protocol.datagramReceived(b"x", PEER)
        self.assertEqual(transport.writes, [
            (b"first quote\r\n", PEER),
            (b"second quote\r\n", PEER),
        ])

    def test_builtWithCopyOfQuotes(self):
        """
        Changing the options list after building does not change what is served.
        """
        service = makeService(classic.qotd, {"quotes": ["one"]})
        datagram = classic.qotd.buildDatagramProtocol(service, Clock())
        service.options["quotes"][0] = "changed"
        protocol, transport = bindUDP(None, protocol=datagram)
        protocol.datagramReceived(b"", PEER)
        self.assertEqual(transport.writes, [(b"one\r\n", PEER)])


class ChargenTests(SynchronousTestCase):
    """
    RFC 864 character generator.
    """

    def test_pattern(self):
        """
        The pattern is 95 lines, each 72 printing characters and CRLF, line N starting
        one character after line N-1 (space first), wrapping around.
        """
        lines = classic.CHARGEN_CYCLE.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        self.assertEqual(len(lines) - 1, 95)
        for line in lines[:-1]:
            self.assertEqual(len(line), 72)
            self.assertTrue(all(32 <= c < 127 for c in line), line)
        self.assertEqual(classic.CHARGEN_CYCLE, CHARGEN_CYCLE)
        self.assertTrue(CHARGEN_LINES[1].startswith(b'!"#$%&'))
        self.assertTrue(CHARGEN_LINES[94].startswith(b"~ !\"#"))

    def test_tcpPullProducer(self):
        """
        Over TCP, the protocol registers itself as a pull (non-streaming) producer and
        writes nothing on its own: not on connection, not on receiving data.
        """
        protocol, transport = connectTCP(classic.chargen)
        self.assertIs(transport.producer, protocol)
        self.assertFalse(transport.streaming)
        self.assertTrue(verifyObject(IPullProducer, protocol))
        protocol.dataReceived(b"ignored")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_tcpOneCyclePerPull(self):
        """
        Each C{resumeProducing} writes exactly one full 95-line cycle and nothing more,
        so the server never buffers more than one cycle for a slow reader.
        """
        protocol, transport = connectTCP(classic.chargen)
        protocol.resumeProducing()
        self.assertEqual(transport.value(), CHARGEN_CYCLE)
        self.assertEqual(len(transport.value()), 95 * 74)
        protocol.dataReceived(b"more input")
        self.assertEqual(transport.value(), CHARGEN_CYCLE)
        protocol.resumeProducing()
        self.assertEqual(transport.value(), CHARGEN_CYCLE * 2)

    def test_tcpStopProducing(self):
        """
        C{stopProducing} (the connection going away) writes nothing.
        """
        protocol, transport = connectTCP(classic.chargen)
        protocol.stopProducing()
        self.assertEqual(transport.value(), b"")

    def assertChargenReplies(self, protocol, count):
        """
        Send C{count} datagrams to C{protocol}; check each is answered, to its source,
        with the start of the pattern, 0 to 512 bytes long.

        @return: the reply lengths.
        """
        protocol, transport = bindUDP(None, protocol=protocol)
        for _ in range(count):
            protocol.datagramReceived(b"", PEER)
        self.assertEqual(len(transport.writes), count)
        lengths = []
        for data, addr in transport.writes:
            self.assertEqual(addr, PEER)
            self.assertLessEqual(len(data), 512)
            self.assertEqual(data, CHARGEN_CYCLE[:len(data)])
            lengths.append(len(data))
        return lengths

    def test_udpSeeded(self):
        """
        Over UDP with an injected random generator, each datagram is answered with 0 to
        512 bytes of the pattern; the same seed gives the same lengths, and the lengths
        cover the whole range.
        """
        lengths = self.assertChargenReplies(classic.ChargenDatagram(random.Random(864)), 2000)
        again = self.assertChargenReplies(classic.ChargenDatagram(random.Random(864)), 2000)
        self.assertEqual(lengths, again)
        self.assertLessEqual(min(lengths), 5)
        self.assertGreaterEqual(max(lengths), 507)

    def test_udpProviderBuilt(self):
        """
        The provider's own datagram protocol answers within 0 to 512 bytes of the
        pattern, over many datagrams.
        """
        datagram = classic.chargen.buildDatagramProtocol(makeService(classic.chargen), Clock())
        self.assertChargenReplies(datagram, 2000)


class OptionsTests(SynchronousTestCase):
    """
    Option validation: L{checkOptions} and the providers' C{validateOptions}.
    """

    def assertProblems(self, validate, options, expected):
        """
        C{validate(options)} raises L{OptionsError} whose problems, as
        C{(option, message-fragment)} pairs, match C{expected} in order.
        """
        error = self.assertRaises(OptionsError, validate, options)
        self.assertIsInstance(error, ValueError)
        self.assertEqual([p.option for p in error.problems], [o for o, _ in expected])
        for problem, (_, fragment) in zip(error.problems, expected):
            self.assertIn(fragment, problem.message)
        return error

    def test_noOptionsByDefault(self):
        """
        Providers other than qotd take no options: C{{}} validates to C{{}}.
        """
        for provider in classic.ALL:
            if provider is not classic.qotd:
                self.assertEqual(provider.validateOptions({}), {}, provider.name)

    def test_unknownOption(self):
        """
        Every provider rejects an option it does not declare, naming it.
        """
        for provider in classic.ALL:
            self.assertProblems(provider.validateOptions, {"bogus": 1},
                                [("bogus", "unknown option")])

    def test_quotesNotAList(self):
        """
        C{quotes} must be a list; a string (or mapping) is refused with the type named.
        """
        self.assertProblems(classic.qotd.validateOptions, {"quotes": "one quote"},
                            [("quotes", "must be a list of strings, not str")])
        self.assertProblems(classic.qotd.validateOptions, {"quotes": {"a": "b"}},
                            [("quotes", "not dict")])

    def test_badQuotes(self):
        """
        C{quotes} is refused when empty, or holding a non-string, an empty string, a
        quote over 512 characters, a non-ASCII or an unprintable quote.
        """
        cases = [
            ([], "at least one quote"),
            (["fine", 42], "quote 2 must be a non-empty string"),
            (["   "], "quote 1 must be a non-empty string"),
            (["x" * 513], "longer than"),
            (["caf\u00e9"], "printable ASCII"),
            (["bell\a"], "printable ASCII"),
            (["tab\there"], "printable ASCII"),
        ]
        for quotes, fragment in cases:
            self.assertProblems(classic.qotd.validateOptions, {"quotes": quotes},
                                [("quotes", fragment)])

    def test_quoteLengthLimit(self):
        """
        The longest quote accepted still goes out, with its CRLF, in 512 bytes; one
        character more is refused.
        """
        longest = "x" * 510
        options = classic.qotd.validateOptions({"quotes": [longest]})
        self.assertEqual(len(classic.quoteOfTheDay(options["quotes"], 0)), 512)
        self.assertProblems(classic.qotd.validateOptions, {"quotes": [longest + "x"]},
                            [("quotes", "longer than")])

    def test_acceptedQuoteFitsOnTheWire(self):
        """
        A multi-line quote that passes validation still fits in 512 bytes once its
        bare LFs are sent as CRLF.
        """
        quote = "x\n" * 200 + "x"
        try:
            options = classic.qotd.validateOptions({"quotes": [quote]})
        except OptionsError:
            return
        self.assertLessEqual(len(classic.quoteOfTheDay(options["quotes"], 0)), 512)


    def test_defaultsNotShared(self):
        """
        The defaults returned for one service are not the very object returned for the
        next, so mutating one service's options cannot change another's.
        """
        first = classic.qotd.validateOptions({})
        first["quotes"].append("leaked")
        self.assertEqual(classic.qotd.validateOptions({})["quotes"],
                         list(classic.DEFAULT_QUOTES))


    def test_severalProblemsAtOnce(self):
        """
        All problems are reported together: an unknown option and a bad value.
        """
        error = self.assertProblems(
            classic.qotd.validateOptions, {"colour": "red", "quotes": []},
            [("colour", "unknown option (known: quotes)"), ("quotes", "at least one")])
        self.assertIn("colour: unknown option", str(error))
        self.assertIn("; quotes: must list at least one quote", str(error))

    def test_checkOptionsDefaultsAndTypes(self):
        """
        L{checkOptions} fills in defaults, keeps valid values, accepts any of a tuple
        of types, and names the expected and actual types on a mismatch.
        """
        schema = {"count": Option(int, default=3), "ratio": Option((int, float), default=1)}
        self.assertEqual(checkOptions({}, schema), {"count": 3, "ratio": 1})
        self.assertEqual(checkOptions({"count": 5, "ratio": 0.5}, schema),
                         {"count": 5, "ratio": 0.5})
        self.assertProblems(lambda o: checkOptions(o, schema), {"count": "5", "ratio": "x"},
                            [("count", "must be int, not str"),
                             ("ratio", "must be int or float, not str")])

    def test_boolIsNotInt(self):
        """
        C{True}/C{False} are refused where an C{int} is expected, though C{bool}
        subclasses C{int}; they are accepted where C{bool} itself is allowed.
        """
        for value in (True, False):
            self.assertProblems(lambda o: checkOptions(o, {"n": Option(int)}), {"n": value},
                                [("n", "must be int, not bool")])
        self.assertEqual(checkOptions({"n": True}, {"n": Option((int, bool))}), {"n": True})

    def test_checkCallable(self):
        """
        A declared C{check} sees the value; its message becomes the problem and a
        L{None} result lets the value through.
        """
        schema = {"n": Option(int, check=lambda v: "must be positive" if v <= 0 else None)}
        self.assertEqual(checkOptions({"n": 1}, schema), {"n": 1})
        self.assertProblems(lambda o: checkOptions(o, schema), {"n": 0},
                            [("n", "must be positive")])

    def test_notAMapping(self):
        """
        Options that are not a mapping at all are one problem about the whole mapping
        (no option named), and the error's text is just the message.
        """
        error = self.assertProblems(lambda o: checkOptions(o, {}), ["quotes"],
                                    [(None, "must be a mapping")])
        self.assertEqual(error.problems, (OptionProblem(None, "options must be a mapping"),))
        self.assertEqual(str(error), "options must be a mapping")
