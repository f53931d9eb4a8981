"""
portserver's TCP transport: what is mixed into the transport class of every connection
a portserver listener accepts (L{portserver.accepting.ownTransportClass}).

 - L{FlowControlledTransport} tells a connection's L{portserver.tracking.Tracker} when
   its buffered output has drained, so that reading paused for flow control resumes.
 - L{WriteThroughTransport}: writes that go straight to the socket, with fewer system
   calls than Twisted's buffered path.
 - L{TrackedTransport}: the connection's tracker (record, limits, fault isolation);
   L{TrackedServer}, the same over Twisted's own C{tcp.Server}, made and closed without
   the strings, L{Failure}s and repeated reactor calls Twisted's spends on each
   connection (see C{bench/README.md}, point 16).

Twisted never sends inside C{write()}: it buffers the data, asks epoll for writability
(C{epoll_ctl}), waits a loop iteration, sends, then asks epoll to stop watching
(C{epoll_ctl} again). asyncio tries C{send()} at once and buffers only what the kernel
does not take. L{WriteThroughTransport}, mixed into the transport class of every
connection a portserver TCP listener accepts (L{portserver.accepting.ownTransportClass}),
does the same: a write with nothing buffered before it is sent at once; the rest of a
partial send, and every write while something is buffered, takes Twisted's path. What a
protocol writes while it handles received data (in C{dataReceived}) waits in Twisted's
buffer, with no writer registered, until C{dataReceived} returns, then leaves in one
send: an HTTP response's head and body, written apart, take one system call, not two.
The order of the bytes and every contract Twisted gives a protocol hold:

 - C{write} never calls the protocol back: a failed send (the peer reset) buffers the
   data, and Twisted finds the error on its own path and ends the connection through
   C{connectionLost}, as before;
 - a streaming producer (C{HTTPChannel} registers itself as one for its whole life)
   keeps the write-through: a write sent whole leaves nothing to pause for, and the rest
   of a partial send takes Twisted's path, which pauses the producer past
   C{bufferSize} and resumes it once drained, as before;
 - a pull producer, a pending close (C{loseConnection}, half-close), an abort
   (C{abortConnection}: what is written after it is dropped, not sent) or TLS
   (C{startTLS}) turns the write-through off: Twisted's path does what it always did
   (a pull producer is asked for more only when Twisted's buffer has drained);
 - C{unsentBytes} and flow control see the same buffer as before.
"""

from __future__ import annotations

import errno
import struct
from socket import MSG_DONTWAIT, SO_LINGER, SOL_SOCKET

from twisted.internet.address import IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python.failure import Failure
from twisted.python.util import untilConcludes
from zope.interface import implementer

from portserver.dispatch import Lean, isLean, startWatching, stopReadingAt, stopWatching
from portserver.interfaces import ITrackedTransport
from portserver.registry import ABORTED, CLIENT_CLOSED, SERVER_CLOSED
from portserver.tracking import (
    PAUSED_EOF,
    PAUSED_FLOW,
    PAUSED_PLUGIN,
    ConnectionTracking,
    hostOf,
    unsentBytes,
)

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS)
#: SO_LINGER on, for 0 seconds: close() resets the connection (an abort).
_LINGER_NOW = struct.pack("ii", 1, 0)
#: The flag of every recv and send of portserver's transport: the call does not wait,
#: whatever the socket's mode. A L{TrackedServer}'s socket is left in the blocking mode
#: accept(2) gives it (an ioctl a connection less: CPython's accept4 does not ask for
#: SOCK_NONBLOCK), and every read and write Twisted's transport would make of it is
#: made here, with this flag; C{getHandle} makes it non-blocking before it hands it out.
_DONTWAIT = MSG_DONTWAIT


class ClosedAfterRead(ConnectionDone):
    """
    The connection was closed as the protocol asked, right after it handled a read
    (see L{WriteThroughTransport.loseConnection}): a C{ConnectionDone}, but not one the
    reactor takes for the peer's end of input.
    """


#: The reason of every close that L{WriteThroughTransport._asRead} ends: made once, as
#: Twisted makes its own for the common ends of a connection (a L{Failure} costs a
#: few microseconds to make: its class's ancestors by qualified name).
_CLOSE_NOW = ClosedAfterRead()
_CLOSED_AFTER_READ = Failure(_CLOSE_NOW)


def _halfCloseable(protocol):
    """
    C{IHalfCloseableProtocol(protocol, None)}, asking first whether C{protocol} provides
    it (a quarter of the cost of the adaptation, which is needed only when it does not).
    """
    if IHalfCloseableProtocol.providedBy(protocol):
        return protocol
    return IHalfCloseableProtocol(protocol, None)


class FlowControlledTransport:
    """
    Mixed into the transport class of every connection a portserver TCP listener
    accepts (see L{portserver.accepting.ownTransportClass}): after each write to the
    socket, a L{Tracker} whose reading is paused for flow control learns how much is
    left unsent. C{doWrite} runs only while output is buffered, so the common path (a
    write the kernel takes at once) costs nothing more.
    """

    def doWrite(self):
        result = super().doWrite()
        if result is None:
            self._drained()
        return result

    def _drained(self) -> None:
        protocol = self.protocol
        if getattr(protocol, "paused", 0) & PAUSED_FLOW:
            protocol.drained(unsentBytes(self))


class _Read:
    """
    The read being handled: the reactor handles one connection's read at a time, so
    this state lives here rather than in each connection (an attribute a connection
    sets after it was made would cost every connection of its class a dict of its own:
    see L{portserver.accepting.ownTransportClass}).

    @ivar transport: whose read it is, or L{None}.
    @ivar holding: writes made during it wait in Twisted's buffer, with no writer
        registered, for L{WriteThroughTransport._flushHeld}.
    @ivar closeAfter: the protocol asked to close during it.
    """

    __slots__ = ("transport", "holding", "closeAfter")

    def __init__(self):
        self.transport = None
        self.holding = False
        self.closeAfter = False

    def enter(self, transport) -> tuple:
        """
        Begin C{transport}'s read; return what to give L{leave} after it.
        """
        saved = (self.transport, self.holding, self.closeAfter)
        self.transport, self.holding, self.closeAfter = transport, False, False
        return saved

    def leave(self, saved: tuple) -> None:
        self.transport, self.holding, self.closeAfter = saved


_read = _Read()


class WriteThroughTransport(FlowControlledTransport):
    """
    Mixed into a C{twisted.internet.tcp.Server} subclass: C{write} and C{writeSequence}
    send at once when nothing is buffered; what the protocol writes while it handles
    received data is sent in one go when it returns, and a close it asks for then, with
    nothing left to send, is over then too. A held write sent whole tells the flow
    control (L{FlowControlledTransport._drained}) that the buffer is empty, as
    Twisted's C{doWrite} does.
    """

    def _canWriteThrough(self, holding: bool = False, closing: bool = False) -> bool:
        """
        Whether a write may bypass Twisted's buffer: C{holding}, what is buffered was
        held during this read; C{closing}, the close asked for during it is pending.
        """
        return (self.connected and not self.TLS
                and (not self.disconnecting or closing)
                and not getattr(self, "_aborting", False)
                and not self._writeDisconnecting and not self._writeDisconnected
                and (self.producer is None or self.streamingProducer)
                and (holding
                     or (not self._tempDataLen and self.offset == len(self.dataBuffer))))

    def _mayWriteThrough(self) -> bool:
        if _read.transport is self:
            return self._canWriteThrough(_read.holding, _read.closeAfter)
        return self._canWriteThrough()

    def write(self, data):
        if type(data) is bytes and data and self._mayWriteThrough():
            if _read.transport is self:
                self._hold(data)
                return None
            try:
                sent = self.socket.send(data, _DONTWAIT)
            except OSError as e:
                if e.errno not in _RETRY:
                    # Not now: Twisted's path meets the error and closes properly.
                    return super().write(data)
                sent = 0
            if sent == len(data):
                return None
            data = data[sent:]
        return super().write(data)

    def writeSequence(self, iovec):
        if self._mayWriteThrough():
            data = b"".join(iovec)
            if data:
                return self.write(data)
            return None
        return super().writeSequence(iovec)

    def _hold(self, data: bytes) -> None:
        """
        Buffer C{data} as Twisted's C{write} does, without registering a writer: the
        end of the read sends it (an HTTP response's head and body, written apart, leave
        in one send). Every close, abort or producer change in between finds it in
        Twisted's own buffer, where it would have been.
        """
        _read.holding = True
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        self._maybePauseProducer()

    def _dataReceived(self, data):
        saved = _read.enter(self)
        try:
            why = super()._dataReceived(data)
        finally:
            try:
                closed = self._afterRead()
            finally:
                _read.leave(saved)
        return closed or why

    def readConnectionLost(self, reason):
        self._asRead(super().readConnectionLost, reason)

    def _asRead(self, call, *args) -> None:
        """
        Run C{call(*args)}, which tells the protocol the peer's input ended, as a read:
        what the protocol writes is sent when it returns, and a close it asks for with
        nothing left to send is over then.
        """
        saved = _read.enter(self)
        try:
            call(*args)
        finally:
            try:
                closed = self._afterRead()
            finally:
                _read.leave(saved)
            if closed is not None:
                # The reactor already stopped reading; the close is over here, as
                # Twisted's own loseConnection ends a write-closed connection
                # (connectionLost stops the writing).
                self.connectionLost(_CLOSED_AFTER_READ)

    def _afterRead(self):
        """
        The protocol has handled what was read: send what it wrote meanwhile, and end
        the connection if it asked to close and nothing is left to send.

        @return: the reason to end the connection with now, or L{None}.
        """
        holding, closing = _read.holding, _read.closeAfter
        # The read is over: what the producer resumed below writes goes straight out.
        _read.transport, _read.holding, _read.closeAfter = None, False, False
        if holding:
            self._flushHeld(closing)
        if not closing:
            return None
        if not self.connected or getattr(self, "_aborting", False):
            return None
        if self.offset == len(self.dataBuffer) and not self._tempDataLen:
            return _CLOSE_NOW  # (never raised: shared, as Twisted's CONNECTION_DONE)
        self.startWriting()  # Twisted's doWrite closes once the buffer has drained
        self._closePending()
        return None

    def _closePending(self) -> None:
        """
        A close asked for during a read waits for the buffer to drain (see
        L{TrackedTransport}: the close grace starts then).
        """

    def _mayCloseAfterRead(self) -> bool:
        """
        Whether a close asked for now may wait for the end of the read under way.
        """
        return (_read.transport is self and self.connected and not self.disconnecting
                and not self.TLS and not self._writeDisconnected
                and not getattr(self, "_aborting", False) and self.producer is None)

    def loseConnection(self, *args, **kwargs):
        if self._mayCloseAfterRead():
            return self._closeAfterRead()
        return super().loseConnection(*args, **kwargs)

    def _closeAfterRead(self) -> None:
        """
        Close at the end of the read (L{_afterRead}), with no writer registered for it:
        as Twisted's C{loseConnection}, but for C{startWriting}.
        """
        self.stopReading()
        self.disconnecting = 1
        _read.closeAfter = True

    def _flushHeld(self, closing: bool = False) -> None:
        """
        Send what was held during the read, in one send if the kernel takes it; the rest
        (or all of it, when a close, an abort or TLS began meanwhile, or the send
        fails) is left to Twisted's buffered path.
        """
        if (not self._canWriteThrough(True, closing)
                or self.offset != len(self.dataBuffer)):
            if (self._tempDataLen and self.connected
                    and not getattr(self, "_aborting", False)):
                self.startWriting()
            return
        held = self._tempDataBuffer
        data = held[0] if len(held) == 1 else b"".join(held)
        try:
            sent = self.socket.send(data, _DONTWAIT)
        except OSError:
            sent = 0  # EAGAIN, or an error Twisted's path meets and closes on
        held.clear()
        self._tempDataLen = 0
        if sent < len(data):
            self.dataBuffer, self.offset = data, sent
            self.startWriting()
            return
        if self.offset:  # what an earlier doWrite left: Twisted's own reset
            self.dataBuffer, self.offset = b"", 0
        if self.producer is not None and self.producerPaused:
            self.producerPaused = False
            self.producer.resumeProducing()
        self._drained()


@implementer(ITrackedTransport)
class TrackedTransport(Lean, ConnectionTracking, WriteThroughTransport):
    """
    portserver's TCP transport: the transport class of every connection a portserver
    listener accepts (L{portserver.accepting.ownTransportClass}) is a subclass of
    Twisted's with this mixed in. It is the connection's tracker
    (L{portserver.tracking.ConnectionTracking}): it opens and closes the registry
    record, counts the bytes, enforces the limits and isolates the plugin's faults,
    and the plugin's protocol is given it directly, with no wrapper protocol between
    them (L{portserver.accepting.AcceptingPort} builds the protocol through
    L{TrackingFactory.buildPlugin} and calls L{startTracking}).

    Until L{startTracking} (a refused peer's banner, a listener whose factory is not a
    L{TrackingFactory}) it is Twisted's transport with the write-through, and nothing
    more. The tracker's state lives in the instance only once it differs from these
    class defaults, so an idle connection carries a few attributes more than
    Twisted's, and no second object but its record.
    """

    halfCloseable = True  # a tcp.Server: see portserver.dispatch.Lean

    factory = None  # the TrackingFactory, once tracked
    record = None
    closer = None
    timer = None
    admitted = None
    paused = 0
    lastActive = None
    deadlineAt = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Twisted keeps the socket's bound fileno (72 bytes) in every connection: call
        # the socket's instead (see fileno). (Not through __dict__, which would give the
        # connection a dict object of its own: 64 bytes.)
        try:
            del self.fileno
        except AttributeError:
            pass  # a transport class that keeps none

    def fileno(self) -> int:
        try:
            return self.socket.fileno()
        except AttributeError:
            return -1  # closed: as FileDescriptor.fileno

    @property
    def repstr(self) -> str:
        """
        What C{repr} shows, made when asked: Twisted keeps it in every connection
        (70 bytes).
        """
        protocol = getattr(self, "protocol", None)
        return (f"<{type(protocol).__name__} #{self.sessionno} on "
                f"{getattr(self.server, '_realPortNumber', None)}>")

    @repstr.setter
    def repstr(self, value: str) -> None:
        pass  # tcp.Server.__init__ sets it; the property makes it when asked

    @property
    def hostname(self) -> str:
        """
        The peer's host, as Twisted's C{Server} has it (read from C{client}, not kept
        twice).
        """
        return self.client[0]

    @hostname.setter
    def hostname(self, value: str) -> None:
        pass  # tcp.Server.__init__ sets it to client[0]

    @property
    def logstr(self) -> str:
        """
        The prefix of Twisted's log lines about this connection (C{logPrefix()}), made
        when asked: Twisted keeps it in every connection (70 bytes) because its reactor
        asks for it at every event, which portserver's does not (L{portserver.dispatch}).
        """
        return (f"{self._getLogPrefix(getattr(self, 'protocol', None))},{self.sessionno},"
                f"{self.hostname}")

    @logstr.setter
    def logstr(self, value: str) -> None:
        pass  # tcp.Server.__init__ sets it; the property makes it when asked

    def startTracking(self, factory, admitted: str | None = None, proxy=None) -> None:
        """
        Track this connection, accepted by C{factory}'s listener for a peer that its
        admission admitted as C{admitted} (released when the connection ends);
        C{proxy}: the L{Endpoint} of the proxy that carried it with the PROXY protocol
        (L{portserver.proxyheader}), if one did.
        """
        self.factory = factory
        if admitted is not None:
            self.admitted = admitted
        client = self.client
        host = client[0]
        if len(client) != 2:  # IPv6: an IPv4-mapped address is shown as IPv4
            host = hostOf(host)
        self.record = factory.registry.open(
            factory.service, factory.protocolName, "tcp", factory.localEndpoint(self),
            (host, client[1]), proxy)
        factory.transports[self.record.serial] = self
        if factory.timed:
            self._startTimer()

    def servePlugin(self, protocol, data: bytes = b"") -> None:
        """
        Connect the plugin's C{protocol} to this connection (tracked: see
        L{startTracking}) and give it C{data}, what arrived before it was built (after
        a PROXY header, or while the connection awaited admission); a failure of
        either call is the plugin's fault, isolated as any other.
        """
        try:
            protocol.makeConnection(self)
        except Exception:
            self._pluginFailed("connectionMade")
            return
        if data and self._isOpen():
            self.record.bytesIn += len(data)
            try:
                protocol.dataReceived(data)
            except Exception:
                self._pluginFailed("dataReceived")

    def _checkIn(self, delay: float, now: float) -> None:
        self.factory.timeouts.add(now + delay, self.record.serial)

    # -- the connection underneath (Twisted's own transport) ----------------------------

    def _loseBelow(self) -> None:
        super(TrackedTransport, self).loseConnection()

    def _abortBelow(self) -> None:
        super(TrackedTransport, self).abortConnection()

    def _pauseBelow(self) -> None:
        super(TrackedTransport, self).pauseProducing()

    def _resumeBelow(self) -> None:
        super(TrackedTransport, self).resumeProducing()

    def _unsent(self) -> int:
        return unsentBytes(self)

    def _isOpen(self) -> bool:
        return bool(self.connected) and not self.disconnecting

    def _isLost(self) -> bool:
        return not self.connected

    def _closing(self) -> None:
        pass  # Twisted's own "disconnecting" says so

    # -- what Twisted's transport calls on the protocol --------------------------------

    def _dataReceived(self, data):
        if not data:
            return CONNECTION_DONE  # as tcp.Connection's: the protocol hears nothing
        factory = self.factory
        if factory is None:
            return super()._dataReceived(data)
        self.record.bytesIn += len(data)
        if factory.idleTimeout is not None:
            self.lastActive = factory.clock.seconds()
        try:
            return super()._dataReceived(data)
        except Exception:
            self._pluginFailed("dataReceived")
            return None

    def readConnectionLost(self, reason) -> None:
        if self.factory is None:
            return super().readConnectionLost(reason)
        half = _halfCloseable(self.protocol)
        if half is None:
            return self.connectionLost(reason)
        self.paused |= PAUSED_EOF  # resuming would read the end of input again
        if self.closer is None:
            self.closer = CLIENT_CLOSED  # the client ended first, whoever closes now
        self._endOfInput(half)

    def _endOfInput(self, half) -> None:
        """
        Tell C{half}, the protocol as an C{IHalfCloseableProtocol}, that the peer's
        input ended, as a read.
        """
        self._asRead(self._tellReadConnectionLost, half)

    def _tellReadConnectionLost(self, half) -> None:
        try:
            half.readConnectionLost()
        except Exception:
            self._pluginFailed("readConnectionLost")

    def _closeWriteConnection(self) -> None:
        if self.factory is None:
            return super()._closeWriteConnection()
        try:
            self.socket.shutdown(1)
        except OSError:
            pass
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            try:
                half.writeConnectionLost()
            except Exception:
                self._pluginFailed("writeConnectionLost")

    def connectionLost(self, reason) -> None:
        try:
            socket = self.socket
        except AttributeError:
            return  # lost already (as tcp.Connection.connectionLost)
        factory = self.factory
        if factory is None:
            return self._loseSocket(socket, reason)
        if self.timer is not None:
            self._stopTimer()
        transports = factory.transports
        transports.pop(self.record.serial, None)
        if not transports and not factory.listening:
            # (While it listens, the call is left: when it comes, it finds nothing and
            # ends. Cancelling it here and making it again for the next connection
            # cost every connection of a quiet listener two reactor calls.)
            factory.timeouts.stop()
        try:
            self._loseSocket(socket, reason)  # closes the socket, then tells the plugin
        except Exception:
            self._logFailure("connectionLost")
        finally:
            self._release(reason)

    def _loseSocket(self, socket, reason) -> None:
        """
        The connection underneath is lost: close C{socket}, then tell the plugin's
        protocol (Twisted's own transport's C{connectionLost}).
        """
        self.fileno = socket.fileno  # tcp.Connection.connectionLost deletes it
        super(TrackedTransport, self).connectionLost(reason)

    # -- what the plugin's protocol calls --------------------------------------------------

    def write(self, data) -> None:
        if self.factory is None:
            return super().write(data)
        self.record.bytesOut += len(data)
        super().write(data)
        self._wrote()

    def writeSequence(self, iovec) -> None:
        if self.factory is None:
            return super().writeSequence(iovec)
        self.record.bytesOut += sum(map(len, iovec))
        super().writeSequence(iovec)
        self._wrote()

    def loseConnection(self, *args, **kwargs) -> None:
        if self.factory is None:
            return super().loseConnection(*args, **kwargs)
        if self.closer is None:
            self.closer = SERVER_CLOSED
        wasOpen = self._isOpen()
        super().loseConnection(*args, **kwargs)
        if wasOpen and self.connected and not (_read.transport is self and _read.closeAfter):
            # A close that may take time: abort it after the grace. (One put off to
            # the end of the read is over then, unless output is left: then
            # _closePending starts the grace.)
            self._closeWithin(self.factory.closeGrace)
        return None

    def _closePending(self) -> None:
        if self.factory is not None and self.connected:
            self._closeWithin(self.factory.closeGrace)

    def abortConnection(self) -> None:
        if self.factory is not None and self.closer in (None, SERVER_CLOSED, CLIENT_CLOSED):
            self.closer = ABORTED
        return super().abortConnection()

    def pauseProducing(self) -> None:
        if self.factory is None:
            return super().pauseProducing()
        self._pauseReading(PAUSED_PLUGIN)

    def resumeProducing(self) -> None:
        if self.factory is None:
            return super().resumeProducing()
        self._resumeReading(PAUSED_PLUGIN)

    def _drained(self) -> None:
        if self.factory is None:
            return super()._drained()
        if self.paused & PAUSED_FLOW:
            self.drained(unsentBytes(self))


class TrackedServer(TrackedTransport):
    """
    L{TrackedTransport} over Twisted's C{tcp.Server} itself (what every TCP listener's
    port makes, unless it was given a transport class of its own): it is made without
    the strings Twisted makes for every connection and the properties above make only
    when asked (C{logstr}, C{repstr}, C{hostname}: two formats, a log prefix lookup and
    three property calls per connection), and without the bound C{fileno}.
    """

    def __init__(self, skt, protocol, client, server, sessionno, reactor=None):
        # tcp.Server.__init__ with tcp.Connection's and FileDescriptor's, setting the
        # same attributes in the same order (tests/test_transport.py compares them).
        if not reactor:
            from twisted.internet import reactor
        self.reactor = reactor
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.socket = skt  # left in blocking mode: see _DONTWAIT
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        if not startWatching(reactor, self, skt.fileno()):
            self.startReading()
        self.connected = 1

    # -- the common paths, in one call each ----------------------------------------------
    #
    # A tracked connection's read, its writes during the read, the end of its input and
    # the close the protocol asks for then, as the layers above do them (Twisted's
    # doRead, WriteThroughTransport's read context and held writes, TrackedTransport's
    # counting and fault isolation), in one method each: every case they do not cover
    # (not tracked, a read within a read, TLS, a producer, a close or abort under way)
    # takes those layers. Python calls cost more than the work they do here: the
    # connection rate of bench/run.py is set by them (bench/README.md, point 17).

    def doRead(self):
        # (tcp.Connection.doRead's, with _DONTWAIT.)
        try:
            data = self.socket.recv(self.bufferSize, _DONTWAIT)
        except OSError as e:
            if e.args[0] == errno.EWOULDBLOCK:
                return None
            return CONNECTION_LOST
        factory = self.factory
        if factory is None or _read.transport is not None:
            return self._dataReceived(data)
        if not data:
            return CONNECTION_DONE  # the protocol hears of it from readConnectionLost
        self.record.bytesIn += len(data)
        if factory.idleTimeout is not None:
            self.lastActive = factory.clock.seconds()
        _read.transport = self  # holding and closeAfter are false between reads
        try:
            self.protocol.dataReceived(data)
        except Exception:
            self._pluginFailed("dataReceived")
        finally:
            closed = self._afterRead()  # ends the read (resets _read) first of all
        return closed

    def write(self, data) -> None:
        if (_read.transport is not self or type(data) is not bytes or not data
                or self.factory is None or self.producer is not None
                or not self._canWriteThrough(_read.holding, _read.closeAfter)):
            return super().write(data)
        # Held to the end of the read (WriteThroughTransport._hold), counted
        # (TrackedTransport.write) and checked against the limits (_wrote; a read of
        # data set lastActive just now, the end of input did not).
        size = len(data)
        self.record.bytesOut += size
        _read.holding = True
        self._tempDataBuffer.append(data)
        self._tempDataLen = pending = self._tempDataLen + size
        factory = self.factory
        if self.paused & PAUSED_EOF and factory.idleTimeout is not None:
            self.lastActive = factory.clock.seconds()
        unsent = pending + len(self.dataBuffer) - self.offset
        if unsent > factory.highWater:
            self._outputOver(unsent)

    def _endOfInput(self, half) -> None:
        if _read.transport is not None:
            return super()._endOfInput(half)
        _read.transport = self  # _asRead's read, without its calls
        try:
            half.readConnectionLost()
        except Exception:
            self._pluginFailed("readConnectionLost")
        finally:
            closed = self._afterRead()
            if closed is not None:
                self.connectionLost(_CLOSED_AFTER_READ)  # as _asRead
        return None

    def loseConnection(self, *args, **kwargs) -> None:
        if self.factory is None or not self._mayCloseAfterRead():
            return super().loseConnection(*args, **kwargs)
        # Closed at the end of the read, with TrackedTransport's closer and without
        # its grace (nothing is left to send now; _closePending starts it if some is).
        if self.closer is None:
            self.closer = SERVER_CLOSED
        return self._closeAfterRead()

    def writeSomeData(self, data):
        # (tcp.Connection.writeSomeData's, with _DONTWAIT.)
        try:
            return untilConcludes(self.socket.send, memoryview(data)[:self.SEND_LIMIT],
                                  _DONTWAIT)
        except OSError as e:
            if e.args[0] in (errno.EWOULDBLOCK, errno.ENOBUFS):
                return 0
            return CONNECTION_LOST

    _handedOut = False  # getHandle gave the socket away: it may be shared

    def getHandle(self):
        # Non-blocking, as Twisted's transport hands it out (see _DONTWAIT).
        self._handedOut = True
        self.socket.setblocking(False)
        return super().getHandle()

    def stopReading(self) -> None:
        # Nothing to do after the end of input (a close asked for then): every reactor
        # stops reading a connection before it tells it so, for good. On a reactor given
        # portserver's dispatch, without the calls Twisted's removeReader makes to find
        # the descriptor.
        if self.paused & PAUSED_EOF:
            return
        reactor = self.reactor
        if isLean(reactor):
            socket = getattr(self, "socket", None)  # None once closed: left the reactor
            if socket is not None:
                stopReadingAt(reactor, socket.fileno())
            return
        reactor.removeReader(self)

    def _loseSocket(self, socket, reason) -> None:
        # tcp.Connection.connectionLost, with FileDescriptor's: without Failure.check
        # (which formats qualified names on every call), and with the reactor told once
        # to stop watching the socket for both reading and writing.
        self.disconnected = 1
        self.connected = 0
        producer = self.producer
        if producer is not None:
            producer.stopProducing()
            self.producer = None
        stopWatching(self.reactor, self, socket.fileno())
        # tcp._SocketCloser._closeSocket, but for the close that follows the end of
        # input: nothing is left unread then, so close() alone sends the same FIN, and
        # Twisted's shutdown(2) first ("not really necessary, because we set
        # FD_CLOEXEC", its comment says: for a descriptor another process shares) is
        # a system call for nothing, unless the socket was handed out (getHandle).
        try:
            if not issubclass(reason.type, ConnectionAborted):
                if self._shouldShutdown and (reason is not _CLOSED_AFTER_READ
                                             or self._handedOut):
                    socket.shutdown(2)
            else:
                socket.setsockopt(SOL_SOCKET, SO_LINGER, _LINGER_NOW)  # reset, not FIN
        except OSError:
            pass
        try:
            socket.close()
        except OSError:
            pass
        protocol = self.protocol
        del self.protocol
        del self.socket
        protocol.connectionLost(reason)
