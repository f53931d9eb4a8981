"""
A ROT13 line service: greets the client by its (ip, port), then answers each line with
the line ROT13-ed, and closes a connection whose line is too long.
"""

import codecs

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from portserver.options import Option
from portserver.provider import PortProtocol


class Rot13(LineOnlyReceiver):
    """
    One client: each line (LF or CRLF ended) comes back ROT13-ed, after the prefix.
    """

    delimiter = b"\n"

    def connectionMade(self):
        self.MAX_LENGTH = self.factory.maxLine
        if self.factory.greet:
            peer = self.transport.getPeer()
            self.sendLine(f"rot13 ready for {peer.host}:{peer.port}".encode("ascii"))

    def lineReceived(self, line):
        text = codecs.encode(line.rstrip(b"\r").decode("ascii", "replace"), "rot13")
        self.sendLine((self.factory.prefix + text).encode("ascii", "replace"))

    def lineLengthExceeded(self, line):
        self.sendLine(b"error: line too long")
        self.transport.loseConnection()


def buildFactory(service, reactor):
    """
    The factory of one configured rot13 service (C{service.options} are checked).
    """
    factory = Factory.forProtocol(Rot13)
    factory.noisy = False
    factory.prefix = service.options["prefix"]
    factory.greet = service.options["greet"]
    factory.maxLine = service.options["max_line"]
    return factory


def _checkMaxLine(value):
    return None if 1 <= value <= 65536 else "must be 1-65536"


rot13 = PortProtocol(
    name="rot13",
    description="ROT13: answers each line rotated by 13 (an example plugin)",
    wellKnownPort=7013,
    factory=buildFactory,
    options={
        "prefix": Option(str, default=""),
        "greet": Option(bool, default=True),
        "max_line": Option(int, default=1024, check=_checkMaxLine),
    },
)
