"""
Tests for L{portserver.transport}: writes sent at once when nothing is buffered, and
Twisted's buffered path for everything else.
"""

from __future__ import annotations

import errno

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from portserver.transport import WriteThroughTransport


class FakeSocket:
    """
    Takes at most C{room} bytes per send (none: EAGAIN), or fails with C{error}.
    """

    def __init__(self, room=1 << 20, error=None):
        self.room = room
        self.error = error
        self.sent = b""
        self.calls = 0

    def send(self, data):
        self.calls += 1
        if self.error is not None:
            raise OSError(self.error, errno.errorcode[self.error])
        if self.room == 0:
            raise OSError(errno.EAGAIN, "EAGAIN")
        taken = bytes(data[:self.room])
        self.sent += taken
        return len(taken)


class Connection(WriteThroughTransport, FileDescriptor):
    """
    Twisted's buffered writing (L{FileDescriptor}) over a L{FakeSocket}, as
    C{tcp.Connection} does it, with the write-through mixed in.
    """

    TLS = False

    def __init__(self, sock, reactor):
        FileDescriptor.__init__(self, reactor)
        self.socket = sock
        self.connected = 1
        self.lost = []

    def writeSomeData(self, data):
        try:
            return self.socket.send(data)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return 0
            return main.CONNECTION_LOST

    def connectionLost(self, reason):
        self.lost.append(reason)
        FileDescriptor.connectionLost(self, reason)


class WriteThroughTests(SynchronousTestCase):
    """
    Each case as Twisted's own transport would behave, but for when the bytes leave.
    """

    def connect(self, **kwargs):
        self.reactor = MemoryReactor()
        self.socket = FakeSocket(**kwargs)
        return Connection(self.socket, self.reactor)

    def test_sentAtOnce(self):
        """
        With nothing buffered, a write is sent inside C{write}: no writer is registered
        with the reactor (no epoll round trip).
        """
        connection = self.connect()
        connection.write(b"hello")
        connection.writeSequence([b" ", b"world"])
        self.assertEqual(self.socket.sent, b"hello world")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_partialSendKeepsOrder(self):
        """
        What the kernel does not take is buffered, and every later write queues behind
        it, so the bytes leave in order once the socket drains.
        """
        connection = self.connect(room=2)
        connection.write(b"abc")
        connection.write(b"def")
        self.assertEqual(self.socket.sent, b"ab")
        self.assertEqual(self.reactor.getWriters(), [connection])
        self.socket.room = 100
        connection.doWrite()
        self.assertEqual(self.socket.sent, b"abcdef")

    def test_wouldBlock(self):
        """
        EAGAIN: nothing sent, all of it buffered for Twisted's path.
        """
        connection = self.connect(room=0)
        connection.write(b"abc")
        self.assertEqual((self.socket.sent, connection._tempDataBuffer), (b"", [b"abc"]))
        self.assertEqual(self.reactor.getWriters(), [connection])

    def test_errorsReportedLater(self):
        """
        A send that fails (the peer reset) does not raise from C{write} nor call the
        protocol back: the data is buffered and Twisted's own path meets the error.
        """
        connection = self.connect(error=errno.ECONNRESET)
        connection.write(b"abc")
        self.assertEqual(connection.lost, [])
        self.assertEqual(connection.doWrite(), main.CONNECTION_LOST)

    def test_twistedsPathWhenProducingClosingOrTLS(self):
        """
        A registered producer, a pending close, or TLS: Twisted's buffered path.
        """
        for setUp in (lambda c: c.registerProducer(object(), True),
                      lambda c: setattr(c, "disconnecting", True),
                      lambda c: setattr(c, "TLS", True)):
            connection = self.connect()
            setUp(connection)
            connection.write(b"abc")
            self.assertEqual(self.socket.sent, b"")

    def test_textRefused(self):
        """
        Text is refused as Twisted refuses it.
        """
        connection = self.connect()
        self.assertRaises(TypeError, connection.write, "text")
