"""
Tests for L{portserver.transport}: writes sent at once when nothing is buffered, and
Twisted's buffered path for everything else.
"""

from __future__ import annotations

import errno
import socket

from twisted.internet import main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from portserver.tracking import PAUSED_FLOW
from portserver.accepting import ownTransportClass
from portserver.interfaces import ITrackedTransport
from portserver.transport import (
    FlowControlledTransport,
    TrackedServer,
    TrackedTransport,
    WriteThroughTransport,
)


class FakeSocket:
    """
    Takes at most C{room} bytes per send (none: EAGAIN), or fails with C{error}. Made
    non-blocking, as Twisted's transport makes its socket; a blocking one fails the
    test at a call that would wait (one without C{MSG_DONTWAIT}).
    """

    blocking = False

    def __init__(self, room=1 << 20, error=None):
        self.room = room
        self.error = error
        self.sent = b""
        self.calls = 0

    def setblocking(self, flag):
        self.blocking = bool(flag)

    def _wouldWait(self, flags: int) -> None:
        if self.blocking and not flags & socket.MSG_DONTWAIT:
            raise AssertionError("a call that would wait on a blocking socket")

    def send(self, data, flags=0):
        self._wouldWait(flags)
        self.calls += 1
        if self.error is not None:
            raise OSError(self.error, errno.errorcode[self.error])
        if self.room == 0:
            raise OSError(errno.EAGAIN, "EAGAIN")
        taken = bytes(data[:self.room])
        self.sent += taken
        return len(taken)


class FakeTCP(FileDescriptor):
    """
    Twisted's buffered writing (L{FileDescriptor}) over a L{FakeSocket}, as
    C{tcp.Connection} does it, with C{_dataReceived} handing data to C{protocol}.
    """

    TLS = False

    def __init__(self, sock, reactor, protocol=None):
        FileDescriptor.__init__(self, reactor)
        self.socket = sock
        self.protocol = protocol
        self.connected = 1
        self.lost = []

    def writeSomeData(self, data):
        try:
            return self.socket.send(data)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return 0
            return main.CONNECTION_LOST

    def _dataReceived(self, data):
        self.protocol.dataReceived(data)

    def readConnectionLost(self, reason):
        # As tcp.Connection.readConnectionLost, for a half-closeable protocol.
        self.protocol.readConnectionLost()

    def connectionLost(self, reason):
        self.lost.append(reason)
        FileDescriptor.connectionLost(self, reason)


class Connection(WriteThroughTransport, FakeTCP):
    """
    L{FakeTCP} with the write-through mixed in.
    """


def kindOf(reason) -> type:
    """
    The Twisted error that C{reason} (a failure or an exception) is, as a protocol
    tells them apart with C{reason.check}: a subclass counts as its base.
    """
    value = getattr(reason, "value", reason)
    for kind in (ConnectionDone, ConnectionAborted, ConnectionLost):
        if isinstance(value, kind):
            return kind
    return type(value)


def asReactor(connection, data):
    """
    Hand C{data} to C{connection} as the reactor's C{doRead} would, and end the
    connection as the reactor would if the read returned a reason.
    """
    why = connection._dataReceived(data)
    if why:
        connection.connectionLost(Failure(why))


class Replier:
    """
    A protocol that runs C{reply(transport, data)} for each read.
    """

    def __init__(self, reply):
        self.reply = reply
        self.transport = None

    def dataReceived(self, data):
        self.reply(self.transport, data)


class Pull:
    """
    A pull producer writing one of C{chunks} to C{consumer} each time it is resumed.
    """

    def __init__(self, consumer, chunks):
        self.consumer = consumer
        self.chunks = list(chunks)

    def resumeProducing(self):
        if self.chunks:
            self.consumer.write(self.chunks.pop(0))

    def stopProducing(self):
        self.chunks = []


class Push(Pull):
    """
    A streaming producer writing C{chunks} while it is not paused; counts its pauses.
    """

    paused = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        self.paused = 0
        while self.chunks and not self.paused:
            self.consumer.write(self.chunks.pop(0))


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
        A registered pull producer, a pending close or half-close, an abort (what is
        written after C{abortConnection} is dropped, never sent), or TLS: Twisted's
        buffered path.
        """
        for setUp in (lambda c: c.registerProducer(Pull(c, []), False),
                      lambda c: setattr(c, "disconnecting", True),
                      lambda c: setattr(c, "_writeDisconnecting", True),
                      lambda c: setattr(c, "_aborting", True),
                      lambda c: setattr(c, "TLS", True)):
            connection = self.connect()
            setUp(connection)
            connection.write(b"abc")
            self.assertEqual(self.socket.sent, b"")

    def test_streamingProducerWritesThrough(self):
        """
        With a streaming producer registered (as C{HTTPChannel} always has), a write
        with nothing buffered is still sent at once, and the producer is not paused.
        """
        connection = self.connect()
        producer = Push(connection, [])
        connection.registerProducer(producer, True)
        connection.write(b"abc")
        self.assertEqual(self.socket.sent, b"abc")
        self.assertEqual((self.reactor.getWriters(), producer.paused), ([], 0))

    def read(self, connection, reply, data=b"request"):
        """
        Hand C{data} to C{connection} as a read, with C{reply} as its protocol's answer.
        """
        connection.protocol = Replier(reply)
        connection.protocol.transport = connection
        connection._dataReceived(data)

    def test_heldDuringRead(self):
        """
        What the protocol writes while it handles a read (a head, then a body) leaves
        in one send when the read returns, with no writer registered.
        """
        connection = self.connect()

        def reply(transport, data):
            transport.write(b"head ")
            transport.writeSequence([b"and ", b"body"])
            self.assertEqual(self.socket.calls, 0)
        self.read(connection, reply)
        self.assertEqual((self.socket.sent, self.socket.calls), (b"head and body", 1))
        self.assertEqual(self.reactor.getWriters(), [])

    def test_heldPartialSend(self):
        """
        What the kernel does not take of the held writes is left to Twisted's path,
        which sends it once the socket drains.
        """
        connection = self.connect(room=3)
        self.read(connection, lambda transport, data: transport.write(b"abcdef"))
        self.assertEqual(self.socket.sent, b"abc")
        self.assertEqual(self.reactor.getWriters(), [connection])
        self.socket.room = 100
        connection.doWrite()
        self.assertEqual(self.socket.sent, b"abcdef")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_heldPausesAndResumesProducer(self):
        """
        Held writes past the buffer size pause a streaming producer, as Twisted's
        C{write} does; sent whole at the end of the read, they resume it.
        """
        connection = self.connect()
        producer = Push(connection, [])
        connection.registerProducer(producer, True)
        pauses = []

        def reply(transport, data):
            transport.write(b"x" * (connection.bufferSize + 1))
            pauses.append(producer.paused)
        self.read(connection, reply)
        self.assertEqual((pauses, producer.paused), ([1], 0))
        self.assertEqual(len(self.socket.sent), connection.bufferSize + 1)

    def test_heldFlushResumesFlowControl(self):
        """
        A protocol whose reading is paused for flow control (its held writes passed
        the high-water mark) learns that the buffer drained when the held writes leave
        whole at the end of the read: with the classes composed as portserver composes
        them (L{portserver.accepting.ownTransportClass}), nothing is left paused.
        """
        composed = type("Composed", (WriteThroughTransport, FlowControlledTransport, FakeTCP),
                        {})
        connection = composed(FakeSocket(), MemoryReactor())
        drained = []

        class Paused(Replier):
            paused = PAUSED_FLOW

            def drained(self, unsent):
                drained.append(unsent)

        connection.protocol = Paused(lambda transport, data: transport.write(b"x" * 100))
        connection.protocol.transport = connection
        connection._dataReceived(b"request")
        self.assertEqual(drained, [0])

    def test_closeAfterReadAtOnce(self):
        """
        A protocol that answers a read and closes: the answer leaves in one send and
        the read returns a C{ConnectionDone} (not the reactor's end-of-input one) for
        the reactor to end the connection with, with no writer ever registered.
        """
        connection = self.connect()
        connection.protocol = Replier(
            lambda transport, data: (transport.write(data), transport.loseConnection()))
        connection.protocol.transport = connection
        why = connection._dataReceived(b"ping")
        self.assertEqual((self.socket.sent, self.socket.calls), (b"ping", 1))
        self.assertIsInstance(why, ConnectionDone)
        self.assertIsNot(type(why), ConnectionDone)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_closeAfterEndOfInput(self):
        """
        A half-closeable protocol that answers the peer's end of input and closes: the
        answer is sent and the connection is lost there and then, with no writer
        registered and no reactor turn.
        """
        connection = self.connect()

        class Answering:
            def readConnectionLost(self):
                connection.write(b"bye")
                connection.loseConnection()

            def connectionLost(self, reason):
                pass

        connection.protocol = Answering()
        connection.readConnectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.socket.sent, b"bye")
        self.assertEqual([kindOf(r) for r in connection.lost], [ConnectionDone])
        self.assertEqual(self.reactor.getWriters(), [])

    def test_closeAfterReadWithBufferLeft(self):
        """
        A close asked for during a read with output the kernel did not take: Twisted's
        path, which closes once the buffer has drained.
        """
        connection = self.connect(room=2)
        connection.protocol = Replier(
            lambda transport, data: (transport.write(b"abcdef"), transport.loseConnection()))
        connection.protocol.transport = connection
        self.assertIsNone(connection._dataReceived(b"x"))
        self.assertEqual(self.reactor.getWriters(), [connection])
        self.socket.room = 100
        self.assertIsInstance(connection.doWrite(), ConnectionDone)
        self.assertEqual(self.socket.sent, b"abcdef")

    def test_producerResumedAfterReadWritesOut(self):
        """
        A streaming producer paused by what was held during a read, and resumed when
        it left whole, writes its next chunks straight out: nothing waits for a read
        that is over.
        """
        connection = self.connect()
        producer = Push(connection, [b"b" * 1000, b"c" * 1000])
        connection.registerProducer(producer, True)

        def reply(transport, data):
            transport.write(b"a" * (connection.bufferSize + 1))
        self.read(connection, reply)
        self.assertEqual(producer.chunks, [])
        self.assertEqual(len(self.socket.sent), connection.bufferSize + 2001)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_readLeavesNoAttributes(self):
        """
        Handling a read (held writes, one send, a close asked for) sets no attribute
        on the connection that it did not have: an attribute set later than the others
        costs every connection of the class a dict of its own (about 0.8 KiB each).
        """
        connection = self.connect()
        connection.protocol = Replier(lambda transport, data: transport.write(data))
        connection.protocol.transport = connection
        before = set(vars(connection))
        connection._dataReceived(b"ping")
        connection.writeSequence([b"a", b"b"])
        self.assertEqual(set(vars(connection)) - before, set())

    def test_textRefused(self):
        """
        Text is refused as Twisted refuses it.
        """
        connection = self.connect()
        self.assertRaises(TypeError, connection.write, "text")


class TwistedConnection(FakeTCP):
    """
    The same connection without the write-through: Twisted's own behaviour.
    """


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
        for _ in range(100):
            if connection in reactor.getWriters() and not connection.lost:
                result = connection.doWrite()
                if result is not None:
                    connection.connectionLost(result)
        return sock.sent, [kindOf(r) for r in connection.lost]

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

    def test_pullProducer(self):
        """
        A pull producer is asked for each chunk in turn and every chunk arrives: its
        writes wait for Twisted's buffer to drain, which is what asks it for more.
        """
        chunks = [bytes([65 + i]) * 1000 for i in range(10)]

        def steps(connection, sock):
            connection.registerProducer(Pull(connection, chunks), False)
        sent, _ = self.same(steps)
        self.assertEqual(sent, b"".join(chunks))

    def test_streamingProducerPausedAndResumed(self):
        """
        A streaming producer that writes more than the kernel takes is paused past the
        buffer size and resumed once it drains; every byte arrives, in order.
        """
        chunks = [bytes([65 + i % 26]) * 30000 for i in range(20)]
        pauses = []

        def steps(connection, sock):
            producer = Push(connection, chunks)
            connection.registerProducer(producer, True)
            producer.resumeProducing()
            pauses.append(producer.paused)
        sent, _ = self.same(steps, room=1000)
        self.assertEqual(sent, b"".join(chunks))
        self.assertEqual(pauses, [1, 1])

    def test_readRepliesThenCloses(self):
        """
        A protocol that answers a read and closes in the same call: every byte leaves
        before the connection closes, through partial sends too.
        """
        def steps(connection, sock):
            def reply(transport, data):
                transport.write(b"answer to " + data)
                transport.writeSequence([b" and ", b"more"])
                transport.loseConnection()
            connection.protocol = Replier(reply)
            connection.protocol.transport = connection
            asReactor(connection, b"question")
        for room in (1 << 20, 4):
            sent, lost = self.same(steps, room=room)
            self.assertEqual(sent, b"answer to question and more")
            self.assertEqual(len(lost), 1)

    def test_readRepliesThenAborts(self):
        """
        What a protocol writes during a read and then aborts is never sent.
        """
        def steps(connection, sock):
            def reply(transport, data):
                transport.write(b"never sent")
                transport._aborting = True  # what tcp.Connection.abortConnection does
                transport.stopWriting()
                transport.doWrite = lambda *args, **kwargs: None
            connection.protocol = Replier(reply)
            connection.protocol.transport = connection
            connection._dataReceived(b"question")
        self.assertEqual(self.same(steps)[0], b"")


class TrackedTransportTests(SynchronousTestCase):
    """
    L{TrackedTransport}, portserver's transport, as a provider.
    """

    def test_interface(self):
        """
        It provides L{ITrackedTransport}, as the wrapper did.
        """
        composed = type("Composed", (TrackedTransport, FakeTCP), {})
        connection = composed(FakeSocket(), MemoryReactor())
        self.assertTrue(verifyObject(ITrackedTransport, connection))

    def test_untrackedPassesThrough(self):
        """
        Untracked (a refused peer's banner), it is Twisted's transport with the
        write-through: writes and a close, with no record.
        """
        composed = type("Composed", (TrackedTransport, FakeTCP), {})
        sock = FakeSocket()
        connection = composed(sock, MemoryReactor())
        connection.write(b"banner")
        self.assertEqual((sock.sent, connection.record), (b"banner", None))

    def test_noPerConnectionCopies(self):
        """
        Over Twisted's own C{tcp.Server}, a connection keeps no bound C{fileno}, no
        C{repr} text, no log prefix and no second reference to its peer's host
        (Twisted's keep them all, about 220 bytes a connection), yet C{fileno()} is the
        socket's until it is closed (then -1, as Twisted's), and C{repr}, the log
        prefix and C{hostname} read as Twisted's.
        """
        class Port:
            _realPortNumber = 7007

        composed = type("Composed", (TrackedTransport, tcp.Server), {})
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        protocol = Protocol()
        connection = composed(ours, protocol, ("127.0.0.1", 40000), Port(), 12,
                              MemoryReactor())
        protocol.makeConnection(connection)
        self.assertEqual([name for name in ("fileno", "repstr", "logstr", "hostname")
                          if name in vars(connection)], [])
        self.assertEqual(connection.fileno(), ours.fileno())
        self.assertEqual(repr(connection), "<Protocol #12 on 7007>")
        self.assertEqual((connection.logPrefix(), connection.hostname),
                         ("Protocol,12,127.0.0.1", "127.0.0.1"))
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(connection.fileno(), -1)

    def test_leanServerSameAsTwisteds(self):
        """
        L{TrackedServer}, made without Twisted's C{tcp.Server.__init__}, is what that
        makes less the strings and the bound C{fileno} it leaves out: the same
        attributes with the same values, in the same order (CPython shares one table of
        attribute names between instances that set them alike), for IPv4 and IPv6
        peers, registered for reading, and reads as Twisted's; its socket is left in
        the blocking mode accept gives it (one system call less: every call it makes
        of it does not wait), where Twisted's is made non-blocking. (A new Twisted that
        sets more is caught here.)
        """
        class Port:
            _realPortNumber = 7007

        stock = type("Stock", (TrackedTransport, tcp.Server), {})
        lean = type("Lean", (TrackedServer, tcp.Server), {})
        server = Port()
        for client in (("127.0.0.1", 40000), ("::1", 40000, 0, 0)):
            made = []
            for cls in (stock, lean):
                ours, theirs = socket.socketpair()
                ours.setblocking(True)
                self.addCleanup(theirs.close)
                self.addCleanup(ours.close)
                reactor = MemoryReactor()
                connection = cls(ours, Protocol(), client, server, 12, reactor)
                self.assertIn(connection, reactor.readers)
                self.assertEqual(ours.getblocking(), cls is lean)
                made.append(connection)
            first, second = made
            self.assertEqual(
                [(k, v) for k, v in vars(first).items() if k not in ("socket", "protocol",
                                                                    "reactor")],
                [(k, v) for k, v in vars(second).items() if k not in ("socket", "protocol",
                                                                     "reactor")])
            self.assertEqual(list(vars(first)), list(vars(second)))
            self.assertEqual((repr(second), second.logPrefix(), second.hostname),
                             ("<Protocol #12 on 7007>", f"Protocol,12,{client[0]}",
                              client[0]))
            self.assertEqual(type(second.getPeer()), type(first.getPeer()))

    def test_leanStopReading(self):
        """
        On a reactor given portserver's dispatch, L{TrackedServer.stopReading} removes
        a connection that is being read, and leaves the reactor alone (no
        C{removeReader}) when it is not; on any other reactor it asks C{removeReader}.
        """
        from twisted.internet.epollreactor import EPollReactor

        from portserver.dispatch import leanDispatch

        class Port:
            _realPortNumber = 7007

        lean = type("Lean", (TrackedServer, tcp.Server), {})
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        leanDispatch(reactor)
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        self.addCleanup(ours.close)
        connection = lean(ours, Protocol(), ("127.0.0.1", 1), Port(), 1, reactor)
        self.assertIn(connection, reactor.getReaders())
        connection.stopReading()
        self.assertNotIn(connection, reactor.getReaders())
        asked = []
        reactor.removeReader = asked.append
        connection.stopReading()
        self.assertEqual(asked, [])
        memory = MemoryReactor()
        other, _ = socket.socketpair()
        self.addCleanup(other.close)
        self.addCleanup(_.close)
        connection = lean(other, Protocol(), ("127.0.0.1", 1), Port(), 2, memory)
        connection.stopReading()
        self.assertEqual(memory.getReaders(), [])

    def test_leanCloseAbortResets(self):
        """
        L{TrackedServer} closes its socket as Twisted's does: an abort resets the
        connection (the peer's read fails), any other close ends it with a FIN (the
        peer reads the end of input).
        """
        class Port:
            _realPortNumber = 7007

        lean = type("Lean", (TrackedServer, tcp.Server), {})
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(2)
        for reason in (ConnectionAborted(), ConnectionDone()):
            client = socket.create_connection(listening.getsockname())
            self.addCleanup(client.close)
            ours, address = listening.accept()
            connection = lean(ours, Protocol(), address, Port(), 1, MemoryReactor())
            connection.connectionLost(Failure(reason))
            client.settimeout(10)
            if isinstance(reason, ConnectionAborted):
                self.assertRaises(ConnectionResetError, client.recv, 1)
            else:
                self.assertEqual(client.recv(1), b"")

    def test_ownClassIsLeanOverTwistedsServer(self):
        """
        A listener whose transport class is Twisted's C{tcp.Server} gets the lean
        L{TrackedServer}; one with a transport class of its own keeps that class's
        C{__init__} (L{TrackedTransport}).
        """
        class Custom(tcp.Server):
            pass

        class Listening:
            factory = None

        for transport, lean in ((tcp.Server, True), (Custom, False)):
            port = Listening()
            port.transport = transport
            ownTransportClass(port)
            self.assertEqual(issubclass(port.transport, TrackedServer), lean)
            self.assertTrue(issubclass(port.transport, transport))

    def tracked(self, **socketOptions):
        """
        A L{TrackedTransport} over a L{FakeSocket}, tracked by a stand-in factory whose
        clock is C{self.clock}.
        """
        class Factory:
            closeGrace = 5.0
            idleTimeout = None
            highWater = 1 << 20
            maxOutput = None

        class Record:
            bytesIn = bytesOut = 0

        self.clock = Clock()
        Factory.clock = self.clock
        composed = type("Composed", (TrackedTransport, FakeTCP), {})
        self.socket = FakeSocket(**socketOptions)
        connection = composed(self.socket, MemoryReactor())
        connection.factory = Factory()
        connection.record = Record()
        return connection

    def test_closeDuringReadNoGrace(self):
        """
        A close asked for during a read, with nothing left to send, is over when the
        read returns: no grace call is made for it.
        """
        connection = self.tracked()
        connection.protocol = Replier(
            lambda transport, data: (transport.write(data), transport.loseConnection()))
        connection.protocol.transport = connection
        self.assertIsInstance(connection._dataReceived(b"ping"), ConnectionDone)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeDuringReadWithOutputLeftHasGrace(self):
        """
        A close asked for during a read with output the kernel did not take waits for
        the buffer, within the close grace.
        """
        connection = self.tracked(room=2)
        connection.protocol = Replier(
            lambda transport, data: (transport.write(b"abcdef"), transport.loseConnection()))
        connection.protocol.transport = connection
        self.assertIsNone(connection._dataReceived(b"ping"))
        [grace] = self.clock.getDelayedCalls()
        self.assertEqual(grace.getTime(), 5.0)

    def test_closeOutsideReadHasGrace(self):
        """
        A close asked for outside a read (a timer's) has the close grace.
        """
        connection = self.tracked()
        connection.loseConnection()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class TransportClassTests(SynchronousTestCase):
    """
    L{portserver.accepting.ownTransportClass}: one transport class per kind of
    connection.
    """

    def port(self, protocolName):
        class Factory:
            pass

        class Port:
            transport = tcp.Server

        factory = Factory()
        factory.protocolName = protocolName
        port = Port()
        port.factory = factory
        ownTransportClass(port)
        return port.transport

    def test_sharedByProtocol(self):
        """
        Listeners of one protocol share one subclass of Twisted's transport (with
        portserver's mixed in); another protocol gets another.
        """
        first, second, other = self.port("echo"), self.port("echo"), self.port("http")
        self.assertIs(first, second)
        self.assertIsNot(first, other)
        self.assertTrue(issubclass(first, TrackedTransport))
        self.assertTrue(issubclass(first, tcp.Server))


class HalfCloseableTests(SynchronousTestCase):
    """
    L{portserver.transport._halfCloseable}: what C{IHalfCloseableProtocol(p, None)} gives.
    """

    def test_providedAdaptedNeither(self):
        """
        A protocol that provides the interface is itself; one adapted to it by a
        registered adapter gets its adapter; any other gets L{None}.
        """
        from twisted.internet.interfaces import IHalfCloseableProtocol
        from twisted.python.components import registerAdapter
        from zope.interface import implementer

        from portserver.transport import _halfCloseable

        @implementer(IHalfCloseableProtocol)
        class Half(Protocol):
            def readConnectionLost(self):
                pass

            def writeConnectionLost(self):
                pass

        class Adaptable(Protocol):
            pass

        class Adapter:
            def __init__(self, original):
                self.original = original

        registerAdapter(Adapter, Adaptable, IHalfCloseableProtocol)
        half, adaptable = Half(), Adaptable()
        self.assertIs(_halfCloseable(half), half)
        adapted = _halfCloseable(adaptable)
        self.assertIsInstance(adapted, Adapter)
        self.assertIs(adapted.original, adaptable)
        self.assertIsNone(_halfCloseable(Protocol()))


class StreamSocket(FakeSocket):
    """
    A L{FakeSocket} a L{TrackedServer} can be made over and read from: C{incoming}
    holds what C{recv} gives (C{b""} is the end of input), and it can be shut down and
    closed. Blocking, as C{accept} makes it.
    """

    blocking = True

    def __init__(self, room=1 << 20, error=None):
        super().__init__(room, error)
        self.incoming = []
        self.closed = False
        self.shutdowns = []

    def fileno(self):
        return -1 if self.closed else 99

    def recv(self, size, flags=0):
        self._wouldWait(flags)
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "EAGAIN")
        return self.incoming.pop(0)

    def shutdown(self, how):
        self.shutdowns.append(how)

    def close(self):
        self.closed = True


@implementer(IHalfCloseableProtocol)
class HalfReplier(Replier):
    """
    A half-closeable L{Replier} that runs C{atEnd(transport)} at the end of input.
    """

    def __init__(self, reply, atEnd):
        super().__init__(reply)
        self.atEnd = atEnd
        self.lost = []

    def readConnectionLost(self):
        self.atEnd(self.transport)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lost.append(reason)


class LeanPathTests(SynchronousTestCase):
    """
    L{TrackedServer}'s read, write, end of input and close in one call each do what the
    layers they stand for do: counting, held writes sent in one go, the limits, and
    the close at the end of the read.
    """

    def served(self, protocol, room=1 << 20, **limits):
        """
        A tracked L{TrackedServer} over a L{StreamSocket}, serving C{protocol}, for a
        stand-in factory with C{limits} whose clock is C{self.clock}; the registry's
        closes are in C{self.closes}.
        """
        self.clock = Clock()
        self.closes = []
        closes = self.closes

        class Registry:
            shuttingDown = False

            def close(self, record, reason):
                closes.append(reason)

        class Factory:
            closeGrace = 5.0
            idleTimeout = limits.get("idleTimeout")
            highWater = limits.get("highWater", 1 << 20)
            maxOutput = limits.get("maxOutput")
            clock = self.clock
            registry = Registry()
            transports = {}
            listening = True

        class Record:
            serial = 1
            bytesIn = bytesOut = 0

        class Port:
            _realPortNumber = 7

        self.reactor = MemoryReactorClock()
        lean = type("Lean", (TrackedServer, tcp.Server), {})
        self.socket = StreamSocket(room=room)
        connection = lean(self.socket, protocol, ("127.0.0.1", 1), Port(), 1, self.reactor)
        connection.factory = Factory()
        connection.record = Record()
        protocol.transport = connection
        return connection

    def test_neverWaits(self):
        """
        Over a socket left blocking, no call of the transport waits: a read with nothing
        to read, a write the kernel does not take, the buffered write's retry, in a
        read and out of one, tracked or not, all pass C{MSG_DONTWAIT} (the socket
        double fails the test at any call that would wait); C{getHandle} hands it out
        non-blocking, as Twisted's transport would.
        """
        for tracked in (True, False):
            connection = self.served(Replier(lambda t, data: t.write(data)), room=0)
            if not tracked:
                connection.factory = None
            self.assertIsNone(connection.doRead())  # nothing to read
            self.socket.incoming.append(b"ping")
            self.assertIsNone(connection.doRead())  # the reply waits in the buffer
            connection.write(b"more")
            self.assertEqual(connection.doWrite(), None)
            self.assertEqual(self.socket.sent, b"")
            self.socket.room = 1 << 20
            connection.doWrite()
            self.assertEqual(self.socket.sent, b"pingmore")
            self.assertIs(connection.getHandle(), self.socket)
            self.assertFalse(self.socket.blocking)

    def test_readCountsAndSendsHeldWritesOnce(self):
        """
        A read the protocol answers with two writes: both leave in one send when it
        returns; the bytes each way are counted, and the read is the last activity.
        """
        connection = self.served(Replier(lambda t, data: (t.write(data[:2]),
                                                          t.write(data[2:]))),
                                 idleTimeout=10.0)
        self.clock.advance(3)
        self.socket.incoming.append(b"ping")
        self.assertIsNone(connection.doRead())
        self.assertEqual((self.socket.sent, self.socket.calls), (b"ping", 1))
        self.assertEqual((connection.record.bytesIn, connection.record.bytesOut), (4, 4))
        self.assertEqual(connection.lastActive, 3)

    def test_writeInReadPastCapAborts(self):
        """
        A write during a read that leaves more than C{maxOutput} unsent aborts the
        connection, "output-cap"; one past the high-water mark only pauses reading.
        """
        connection = self.served(Replier(lambda t, data: t.write(data)), room=0,
                                 highWater=4, maxOutput=8)
        self.socket.incoming.append(b"12345")
        connection.doRead()
        self.assertEqual((connection.paused & PAUSED_FLOW, connection._aborting),
                         (PAUSED_FLOW, False))
        self.socket.incoming.append(b"6789")
        connection.doRead()
        self.assertEqual((connection.closer, connection._aborting), ("output-cap", True))

    def test_endOfInputWriteIsActivity(self):
        """
        What the protocol writes at the end of input is sent, and is activity for the
        idle timeout (the end of input itself is not).
        """
        connection = self.served(HalfReplier(None, lambda t: t.write(b"bye")),
                                 idleTimeout=10.0)
        self.clock.advance(4)
        connection.readConnectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.socket.sent, connection.lastActive), (b"bye", 4))
        self.assertTrue(connection.connected)

    def test_endOfInputCloseIsOver(self):
        """
        A close the protocol asks for at the end of input, with its last write sent, is
        over when it returns: the socket closed, the protocol told, the record closed
        "client-closed".
        """
        protocol = HalfReplier(None, lambda t: (t.write(b"bye"), t.loseConnection()))
        connection = self.served(protocol)
        connection.readConnectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.socket.sent, self.socket.closed), (b"bye", True))
        self.assertEqual((len(protocol.lost), self.closes), (1, ["client-closed"]))
        self.assertFalse(connection.connected)

    def test_shutdownOnlyWhenInputLeftOrShared(self):
        """
        The close that follows the end of input (nothing left unread) is a bare
        C{close()}: the same FIN, one system call less. Every other orderly close, and
        one of a socket handed out with C{getHandle} (it may be shared), shuts the
        socket down first, as Twisted's does.
        """
        closing = HalfReplier(None, lambda t: t.loseConnection())
        connection = self.served(closing)
        connection.readConnectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.socket.shutdowns, self.socket.closed), ([], True))

        connection = self.served(HalfReplier(None, lambda t: t.loseConnection()))
        self.assertIs(connection.getHandle(), self.socket)
        connection.readConnectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.socket.shutdowns, [2])

        connection = self.served(HalfReplier(lambda t, data: t.loseConnection(), None))
        self.socket.incoming.append(b"bye")
        connection.connectionLost(Failure(connection.doRead()))
        self.assertEqual((self.socket.shutdowns, self.socket.closed), ([2], True))

    def test_closeInReadIsOver(self):
        """
        A close the protocol asks for in a read, with its reply sent, is over when the
        read returns (the reactor is given the reason to end it with), "server-closed".
        """
        connection = self.served(Replier(lambda t, data: (t.write(data),
                                                          t.loseConnection())))
        self.socket.incoming.append(b"ping")
        why = connection.doRead()
        self.assertIsInstance(why, ConnectionDone)
        self.assertEqual((self.socket.sent, connection.closer), (b"ping", "server-closed"))

    def test_pluginFaultInReadIsolated(self):
        """
        A protocol that raises in C{dataReceived} has its connection aborted,
        "plugin-error", and what it wrote before is dropped with it.
        """
        def failing(transport, data):
            transport.write(b"half")
            raise RuntimeError("plugin bug")

        connection = self.served(Replier(failing))
        connection._logFailure = lambda where: None
        self.socket.incoming.append(b"ping")
        connection.doRead()
        self.assertEqual((connection.closer, connection._aborting), ("plugin-error", True))
        self.assertEqual(self.socket.sent, b"")
