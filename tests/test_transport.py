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
        A registered producer, a pending close or half-close, an abort (what is written
        after C{abortConnection} is dropped, never sent), or TLS: Twisted's buffered path.
        """
        for setUp in (lambda c: c.registerProducer(object(), True),
                      lambda c: setattr(c, "disconnecting", True),
                      lambda c: setattr(c, "_writeDisconnecting", True),
                      lambda c: setattr(c, "_aborting", True),
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


class TwistedConnection(FileDescriptor):
    """
    The same connection without the write-through: Twisted's own behaviour.
    """

    TLS = False
    __init__ = Connection.__init__
    writeSomeData = Connection.writeSomeData
    connectionLost = Connection.connectionLost


class ContractTests(SynchronousTestCase):
    """
    The same cases on portserver's transport and on Twisted's own: once the reactor has
    let each write its buffer, the peer has the same bytes, and the same errors reach
    the protocol the same way.
    """

    def outcome(self, cls, steps, **socketOptions):
        """
        Run C{steps(connection, socket)} on a C{cls} connection, then let it write what
        it buffered (as the reactor would); the bytes sent, and the reasons it was lost.
        """
        reactor = MemoryReactor()
        sock = FakeSocket(**socketOptions)
        connection = cls(sock, reactor)
        steps(connection, sock)
        sock.room, sock.error = 1 << 20, None
        for _ in range(3):
            if connection in reactor.getWriters() and not connection.lost:
                result = connection.doWrite()
                if result is not None:
                    connection.connectionLost(result)
        return sock.sent, [type(r) for r in connection.lost]

    def same(self, steps, **socketOptions):
        ours = self.outcome(Connection, steps, **socketOptions)
        theirs = self.outcome(TwistedConnection, steps, **socketOptions)
        self.assertEqual(ours, theirs)
        return ours

    def test_writesInOrder(self):
        """
        Writes and write sequences, through partial sends, arrive whole and in order.
        """
        def steps(connection, sock):
            connection.write(b"abc")
            connection.writeSequence([b"de", b"f"])
            connection.write(b"ghi")
        self.assertEqual(self.same(steps, room=2)[0], b"abcdefghi")
        self.assertEqual(self.same(steps)[0], b"abcdefghi")

    def test_abortDropsLaterWrites(self):
        """
        What is written after an abort is not sent.
        """
        def steps(connection, sock):
            connection.write(b"before ")
            # What tcp.Connection.abortConnection does to the connection.
            connection._aborting = True
            connection.stopWriting()
            connection.doWrite = lambda *args, **kwargs: None
            sock.room = 1 << 20
            connection.write(b"after")
        sent, _ = self.same(steps, room=0)
        self.assertEqual(sent, b"")

    def test_resetSurfacesThroughConnectionLost(self):
        """
        A send that fails is not raised from C{write}; the connection is lost, later,
        through C{connectionLost}, as with Twisted's own transport.
        """
        def steps(connection, sock):
            connection.write(b"abc")
            sock.error = None
            sock.room = 0
        sent, lost = self.same(steps, error=errno.ECONNRESET)
        self.assertEqual(lost, [])
