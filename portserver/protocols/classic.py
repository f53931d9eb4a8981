"""
The classic inetd "internal" services, over TCP and UDP: echo (RFC 862), discard (RFC 863),
daytime (RFC 867), qotd (RFC 865), chargen (RFC 864) and time (RFC 868).

TCP echo, discard and qotd reuse L{twisted.protocols.wire} (echo made half-closeable). Its C{Daytime} and C{Time}
read C{time.time()} directly (so they cannot be driven by a test clock), C{Daytime} concatenates
C{str} and C{bytes} and C{Time} counts from 1970 instead of 1900 as RFC 868 asks, and its
C{Chargen} writes a fixed 72-byte string instead of RFC 864's rotating lines: those four are
written here. The UDP side is absent from C{wire} and written here too.
"""

from __future__ import annotations

import random
import struct
import time
from functools import partial

from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.protocols import wire
from zope.interface import implementer

from portserver.options import Option
from portserver.provider import PortProtocol

#: Seconds between 1900-01-01 (RFC 868's epoch) and 1970-01-01 (the Unix epoch).
RFC868_OFFSET = 2208988800

#: RFC 865: a quote "should be limited to ASCII printing characters, space, carriage
#: return, and line feed", and "the quote may be just one or up to several lines, but it
#: should be less than 512 characters".
MAX_QUOTE = 511

DEFAULT_QUOTES = (
    "An apple a day keeps the doctor away.",
    "Be liberal in what you accept, and conservative in what you send. (RFC 760)",
    "The network is the computer.",
)


def _factory(protocolClass, **kwargs) -> Factory:
    """
    A quiet factory whose protocols are C{protocolClass(**kwargs)}.
    """
    factory = Factory.forProtocol(partial(protocolClass, **kwargs))
    factory.noisy = False
    return factory


class ReplyDatagram(DatagramProtocol):
    """
    A datagram service that answers each datagram with C{reply(data)} (if not L{None}),
    sent back to the datagram's source endpoint.
    """

    noisy = False

    def reply(self, data: bytes) -> bytes | None:
        raise NotImplementedError

    def datagramReceived(self, data, addr):
        answer = self.reply(data)
        if answer is not None:
            self.transport.write(answer, addr)


class Announce(Protocol):
    """
    A stream service that sends one C{answer()} on connection, then closes
    (daytime and time over TCP).
    """

    def __init__(self, answer):
        self.answer = answer

    def connectionMade(self):
        self.transport.write(self.answer())
        self.transport.loseConnection()


class AnnounceDatagram(ReplyDatagram):
    """
    A datagram service that answers any datagram with C{answer()} (daytime, time and
    qotd over UDP).
    """

    def __init__(self, answer):
        self.answer = answer

    def reply(self, data):
        return self.answer()


# -- echo ------------------------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class Echo(wire.Echo):
    """
    RFC 862 over TCP: L{wire.Echo}, which also sends back everything received before the
    client's half-close (C{shutdown(SHUT_WR)}, C{nc -N}) and then closes. Plain
    C{wire.Echo} is closed at once by Twisted on the end of input, dropping the echo it
    has not sent yet.
    """

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class EchoDatagram(ReplyDatagram):
    """
    RFC 862 over UDP: send back the datagram's data.
    """

    def reply(self, data):
        return data


# -- discard ---------------------------------------------------------------------------


class DiscardDatagram(ReplyDatagram):
    """
    RFC 863 over UDP: throw the datagram away.
    """

    def reply(self, data):
        return None


# -- daytime ---------------------------------------------------------------------------


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def daytime(seconds: float) -> bytes:
    """
    The RFC 867 daytime string for C{seconds} since the epoch, in UTC, with CRLF:
    the RFC's suggested "Weekday, Month Day, Year HH:MM:SS-ZONE" syntax.
    """
    t = time.gmtime(seconds)
    # Names from tables, not strftime's %A/%B, which follow the process's locale.
    return (f"{_DAYS[t.tm_wday]}, {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d}, {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}-UTC\r\n").encode("ascii")






# -- time ------------------------------------------------------------------------------


def binaryTime(seconds: float) -> bytes:
    """
    The RFC 868 time: seconds since 1900-01-01 00:00 UTC as a 32-bit unsigned big-endian
    number (wrapping in 2036, as the RFC's counter does).
    """
    return struct.pack("!I", (int(seconds) + RFC868_OFFSET) % 2**32)






# -- qotd ------------------------------------------------------------------------------


def quoteOfTheDay(quotes, seconds: float) -> bytes:
    """
    The quote for the UTC day C{seconds} falls in: one quote per day, in turn.
    """
    return _wireQuote(quotes[int(seconds // 86400) % len(quotes)])


def _wireQuote(quote: str) -> bytes:
    """
    A quote as it is sent: lines ended by CRLF, the last one too.
    """
    lines = quote.rstrip("\r\n").replace("\r\n", "\n").split("\n")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


class QOTD(wire.QOTD):
    """
    RFC 865 over TCP: L{wire.QOTD} with configured quotes, one per day.
    """

    def __init__(self, quotes, clock):
        self.quotes = quotes
        self.clock = clock

    def getQuote(self):
        return quoteOfTheDay(self.quotes, self.clock.seconds())




def _quoteNow(quotes, clock) -> bytes:
    return quoteOfTheDay(quotes, clock.seconds())


def _checkQuotes(quotes) -> str | None:
    if not quotes:
        return "must list at least one quote"
    for index, quote in enumerate(quotes):
        if not isinstance(quote, str) or not quote.strip():
            return f"quote {index + 1} must be a non-empty string"
        if not quote.isascii() or not all(c.isprintable() or c in "\r\n" for c in quote):
            return f"quote {index + 1} must be printable ASCII (RFC 865)"
        if len(_wireQuote(quote)) > MAX_QUOTE + 1:
            return f"quote {index + 1} is longer than RFC 865's 512 characters"
    return None


# -- chargen ---------------------------------------------------------------------------

#: RFC 864's pattern: 72 of the 95 printing characters per line, the starting character
#: moving on by one each line. One full cycle is 95 lines.
_PRINTABLE = bytes(range(32, 127))
CHARGEN_CYCLE = b"".join(
    (_PRINTABLE * 2)[start:start + 72] + b"\r\n" for start in range(len(_PRINTABLE))
)


@implementer(IPullProducer)
class Chargen(Protocol):
    """
    RFC 864 over TCP: send the rotating character pattern until the client goes away.

    A pull producer: the transport asks for the next cycle (95 lines, 7030 bytes) only
    when it has sent the last one, so a slow reader never makes the server buffer more.
    """

    def connectionMade(self):
        self.transport.registerProducer(self, False)

    def resumeProducing(self):
        self.transport.write(CHARGEN_CYCLE)

    def stopProducing(self):
        pass

    def dataReceived(self, data):
        # RFC 864: "Data received is thrown away."
        pass


class ChargenDatagram(ReplyDatagram):
    """
    RFC 864 over UDP: answer each datagram with a random number (0 to 512) of characters
    of the pattern.
    """

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()

    def reply(self, data):
        return CHARGEN_CYCLE[: self.rng.randint(0, 512)]


# -- the providers -----------------------------------------------------------------------

#: The limits a classic TCP service has unless configured: a connection with no byte
#: either way for five minutes is closed (a chargen or echo peer that stopped reading
#: included: its output stops, so it goes quiet).
DEFAULT_LIMITS = {"idle_timeout": 300}

#: And for those whose UDP replies are larger than the requests (chargen 270 times,
#: qotd and daytime tens of times, time 4 times): at most 10 replies a second per
#: source address (bursts of 20), so a spoofed source cannot turn them into an
#: amplifier against its victim. C{udp_rate_per_source: null} lifts it.
AMPLIFYING_LIMITS = {**DEFAULT_LIMITS, "udp_rate_per_source": 10}

echo = PortProtocol(
    name="echo",
    defaultLimits=DEFAULT_LIMITS,
    description="Echo: sends back what it receives (RFC 862)",
    wellKnownPort=7,
    factory=lambda service, reactor: _factory(Echo),
    datagram=lambda service, reactor: EchoDatagram(),
)

discard = PortProtocol(
    name="discard",
    defaultLimits=DEFAULT_LIMITS,
    description="Discard: throws away what it receives (RFC 863)",
    wellKnownPort=9,
    factory=lambda service, reactor: _factory(wire.Discard),
    datagram=lambda service, reactor: DiscardDatagram(),
)

daytimeProtocol = PortProtocol(
    name="daytime",
    defaultLimits=AMPLIFYING_LIMITS,
    description="Daytime: the current date and time in words, UTC (RFC 867)",
    wellKnownPort=13,
    factory=lambda service, reactor: _factory(
        Announce, answer=lambda: daytime(reactor.seconds())),
    datagram=lambda service, reactor: AnnounceDatagram(lambda: daytime(reactor.seconds())),
)

qotd = PortProtocol(
    name="qotd",
    defaultLimits=AMPLIFYING_LIMITS,
    description="Quote of the Day: one configured quote per day (RFC 865)",
    wellKnownPort=17,
    factory=lambda service, reactor: _factory(
        QOTD, quotes=tuple(service.options["quotes"]), clock=reactor),
    datagram=lambda service, reactor: AnnounceDatagram(
        partial(_quoteNow, tuple(service.options["quotes"]), reactor)),
    options={
        "quotes": Option(list, default=list(DEFAULT_QUOTES), check=_checkQuotes,
                         describe="a list of strings"),
    },
)

chargen = PortProtocol(
    name="chargen",
    defaultLimits=AMPLIFYING_LIMITS,
    description="Character Generator: an endless rotating pattern (RFC 864)",
    wellKnownPort=19,
    factory=lambda service, reactor: _factory(Chargen),
    datagram=lambda service, reactor: ChargenDatagram(),
)

timeProtocol = PortProtocol(
    name="time",
    defaultLimits=AMPLIFYING_LIMITS,
    description="Time: seconds since 1900 as a 32-bit binary number (RFC 868)",
    wellKnownPort=37,
    factory=lambda service, reactor: _factory(
        Announce, answer=lambda: binaryTime(reactor.seconds())),
    datagram=lambda service, reactor: AnnounceDatagram(lambda: binaryTime(reactor.seconds())),
)

#: Every classic provider, in port order.
ALL = (echo, discard, daytimeProtocol, qotd, chargen, timeProtocol)
