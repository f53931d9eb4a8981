"""
The tracking of TCP connections: a L{TrackingFactory} is put once around whatever
factory a plugin builds; every connection it serves is recorded in the L{Registry} and
its bytes counted at the transport boundary, so plugins need not cooperate (datagram
services: L{portserver.datagrams}).

What is done for each connection is L{ConnectionTracking}. portserver's own transport
(L{portserver.transport.TrackedTransport}) provides it for every connection a portserver
listener accepts, and the plugin's protocol gets that transport directly. L{Tracker}, a
wrapper protocol, provides it where the transport is not portserver's (in-memory test
transports, other reactors). Unlike Twisted's C{WrappingFactory}/C{ProtocolWrapper}, a
L{Tracker} declares its interfaces on the class (no C{directlyProvides} per connection),
uses C{__slots__}, and keeps no reference that outlives the connection. Either way the
registry keeps only a plain record and nothing forms a cycle once the connection is lost,
so closed connections are freed by reference counting, without waiting for the cycle
collector. Timeouts of a listener's connections share one call (L{Timeouts}).

It also enforces a service's L{Limits} on each connection and keeps one plugin's bugs to
the connection they happen on:

 - B{Timeouts.} C{idleTimeout} (no byte either way) and C{deadline} (the whole
   connection) share B{one} C{callLater} per connection, made only when either is set.
   Reads and writes do not touch it: they store a timestamp, and when the call fires it
   closes the connection if the limit has passed, or schedules itself again for what is
   left. A close for a limit is a C{loseConnection}, then an C{abortConnection} if the
   connection is not gone C{closeGrace} seconds later (a peer that never reads never
   lets a close complete); the same grace applies to any C{loseConnection} of the
   plugin's ("close-timeout"). The grace call replaces the timeout call: once a close
   has begun, the connection ends within C{closeGrace} whatever else is due. Every call
   is cancelled in C{connectionLost}.
 - B{Output cap.} Twisted buffers every write without limit and has no public API for
   how much of it is unsent. L{unsentBytes} reads it from the private attributes of
   C{twisted.internet.abstract.FileDescriptor} (C{dataBuffer}, C{offset},
   C{_tempDataLen}), the one place in portserver that does, and answers 0 for a
   transport without them (in-memory test transports), so the cap then never fires; a
   test pins it against a real TCP connection, so a change in Twisted fails the tests,
   not the cap in production. The alternatives were worse: a streaming producer per
   connection (a pause is not a byte count and would also change plugins' own
   producers), or counting bytes sent (needs a hook into C{writeSomeData}). It is
   checked after each write the plugin makes (three attribute reads), never on a
   timer: the buffer only grows on a write. Bytes already in the kernel's socket
   buffer are not counted (the kernel bounds those). Plugins that register producers
   (chargen, forward, exec) keep the buffer small themselves; a connection whose
   buffer passes C{maxOutput} (one write larger than the cap included) is aborted,
   "output-cap".
 - B{Flow control.} A plugin that writes in answer to what it reads (echo, a proxy)
   must never be aborted by the output cap because its peer reads slowly. After each
   write, when the connection's unsent output passes the high-water mark
   (L{HIGH_WATER}, or half the output cap when that is smaller), the tracker stops
   reading from the peer; portserver's TCP transport (L{portserver.transport.FlowControlledTransport}, the
   class of every connection a portserver listener accepts) tells it when the buffer is
   back under the low-water mark (L{LOW_WATER}), and reading resumes, as asyncio's
   transports do. This is separate from a plugin's own C{pauseProducing} (reading
   resumes only when neither wants it paused) and from its producers, which Twisted
   pauses as before; the cap stays, for output that no input drives.
 - B{Admission.} An optional admission object (L{portserver.admission}) is asked
   before the plugin's factory: a refused peer never reaches the plugin; it gets the
   admission's banner (if any) and is closed. An admitted connection is released
   exactly once, when it ends.
 - B{Fault isolation.} An exception from the plugin's protocol (C{makeConnection},
   C{dataReceived}, C{readConnectionLost}, C{writeConnectionLost}) is logged once with
   the service and the endpoint pair, and aborts that connection only ("plugin-error");
   one from its C{connectionLost} is logged the same way and the record still closes,
   for the reason the connection ended. (A datagram protocol's exception is logged
   with the service and the peer, and the port keeps serving: L{portserver.datagrams}.)
"""

from __future__ import annotations

import heapq
import math
import weakref

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from portserver.awaiting import AwaitingAdmission
from portserver.interfaces import ITrackedTransport
from portserver.limits import Limits
from portserver.ratelog import RepeatedErrors, causeOf
from portserver.registry import (
    ABORTED,
    CLIENT_CLOSED,
    ERROR,
    RESET,
    SERVER_CLOSED,
    SHUTDOWN,
    Endpoint,
    Registry,
)

log = Logger()

# Close reasons for the limits enforced here, and for a plugin's failure. They are the
# server's own verdict, so they take precedence over what Twisted reports (and over
# "shutdown", when the close began before the server was stopping).
IDLE_TIMEOUT = "idle-timeout"
DEADLINE = "deadline"
OUTPUT_CAP = "output-cap"
CLOSE_TIMEOUT = "close-timeout"
PLUGIN_ERROR = "plugin-error"
# A live connection from a peer that a reloaded config's access rules now deny.
DENIED = "denied"
VERDICTS = frozenset({IDLE_TIMEOUT, DEADLINE, OUTPUT_CAP, CLOSE_TIMEOUT, PLUGIN_ERROR,
                      DENIED})

# A timeout call that fires this close to its time counts as on time (float rounding
# must not make it schedule itself again for 1e-16 seconds, forever).
_SLACK = 1e-6

#: Unsent output (bytes) past which a connection's reading is paused, and under which
#: it resumes: asyncio's defaults.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024

# Tracker.paused: who wants reading paused (it resumes when none does). PAUSED_EOF:
# the peer's end of input was read; reading never resumes after it.
PAUSED_PLUGIN, PAUSED_FLOW, PAUSED_EOF = 1, 2, 4

# Tracker.connected: the plugin may read it (as a transport's C{connected}), so it stays
# true while a close is under way.
_LOST, _OPEN, _CLOSING = 0, 1, 2


def unsentBytes(transport) -> int:
    """
    How many bytes written to C{transport} it has not yet handed to the kernel.

    Twisted has no public API for this: it is read from the private buffers of
    C{twisted.internet.abstract.FileDescriptor} (every reactor's TCP transport), and is 0
    for a transport without them. C{tests.test_hardening} pins it against a real TCP
    connection.
    """
    pending = getattr(transport, "_tempDataLen", None)  # no exception raised when absent
    if pending is None:
        return 0
    return len(transport.dataBuffer) - transport.offset + pending

def hostOf(host: str) -> str:
    """
    An address as people write it: IPv4-mapped IPv6 (C{::ffff:1.2.3.4}) as IPv4.
    """
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def endpointOf(address) -> Endpoint:
    """
    The L{Endpoint} of a Twisted L{IPv4Address}/L{IPv6Address}.
    """
    return Endpoint(hostOf(address.host), address.port)


class ConnectionTracking:
    """
    What portserver does for every TCP connection, whoever carries it: the registry
    record, the limits (timeouts, output cap, flow control), fault isolation and
    admission release. Two classes provide it: portserver's own transport
    (L{portserver.transport.TrackedTransport}, every connection a portserver listener
    accepts), and L{Tracker}, a wrapper protocol for transports that are not
    portserver's (another reactor's, an in-memory test transport).

    A provider has the attributes C{factory} (the L{TrackingFactory}), C{record},
    C{closer}, C{timer}, C{lastActive}, C{deadlineAt}, C{admitted} and C{paused}
    (see L{Tracker}), and the operations on the connection underneath:
    C{_loseBelow}, C{_abortBelow}, C{_pauseBelow}, C{_resumeBelow}, C{_unsent},
    C{_isOpen} (open, no close begun), C{_isLost} and C{_closing} (a close begins).
    """

    __slots__ = ()

    def closeReason(self, reason) -> str:
        """
        Why the connection ended, from Twisted's reason and who asked to close.
        """
        closer = self.closer
        if closer in VERDICTS:
            return closer
        if self.factory.registry.shuttingDown:
            return SHUTDOWN
        if closer is not None and closer != SERVER_CLOSED:
            return closer
        # issubclass, not Failure.check, which formats qualified names on every call.
        kind = reason.type
        if issubclass(kind, ConnectionAborted):
            return ABORTED
        if issubclass(kind, ConnectionDone):
            return closer or CLIENT_CLOSED
        if issubclass(kind, ConnectionLost):
            return RESET
        return ERROR

    # -- limits and failures ------------------------------------------------------------------

    def _startTimer(self) -> None:
        factory = self.factory
        now = factory.clock.seconds()
        due = None
        if factory.idleTimeout is not None:
            self.lastActive = now
            due = factory.idleTimeout
        if factory.deadline is not None:
            self.deadlineAt = now + factory.deadline
            due = factory.deadline if due is None else min(due, factory.deadline)
        self._checkIn(due, now)

    def _checkTimeouts(self) -> None:
        """
        The timeout call fired: close for the limit that has passed, or call again when
        the next one is due (activity since the call was made moved the idle one on).
        """
        self.timer = None
        now = self.factory.clock.seconds()
        due = self._timeLeft(now)
        if due is not None:
            self._checkIn(due, now)

    def _checkIn(self, delay: float, now: float) -> None:
        """
        Have L{_timeLeft} asked again in C{delay} seconds (L{Tracker}: a call of its
        own).
        """
        self.timer = self.factory.clock.callLater(delay, self._checkTimeouts)

    def _timeLeft(self, now: float) -> float | None:
        """
        Close the connection for the limit that has passed at C{now}, or say when the
        next one is due.

        @return: the seconds until the next limit, or L{None} (closed for a limit).
        """
        factory = self.factory
        due = None
        if factory.deadline is not None:
            due = self.deadlineAt - now
            if due <= _SLACK:
                self.closeForLimit(DEADLINE)
                return None
        if factory.idleTimeout is not None:
            idle = self.lastActive + factory.idleTimeout - now
            if idle <= _SLACK:
                self.closeForLimit(IDLE_TIMEOUT)
                return None
            due = idle if due is None else min(due, idle)
        return due

    def _closeWithin(self, grace: float) -> None:
        """
        A close has begun: abort the connection if it is not gone after C{grace}.
        """
        self._closing()
        timer = self.timer
        if timer is not None and timer.active():
            timer.cancel()
        self.timer = self.factory.clock.callLater(grace, self._graceOver)

    def _graceOver(self) -> None:
        self.timer = None
        if self.closer not in VERDICTS:
            self.closer = CLOSE_TIMEOUT  # the plugin's own close did not complete
        self._abortBelow()

    def closeForLimit(self, reason: str) -> bool:
        """
        Close the connection for C{reason} (a limit): C{loseConnection}, then
        C{abortConnection} if it is not gone within the service's close grace.

        @return: whether this began a close (the connection was open).
        """
        if not self._isOpen():
            return False
        self.closer = reason
        self._closeWithin(self.factory.closeGrace)
        self._loseBelow()
        return True

    def _overCap(self) -> None:
        if self._isLost() or self.closer == OUTPUT_CAP:
            return
        self.closer = OUTPUT_CAP
        self._abortBelow()

    def _logFailure(self, where: str) -> None:
        """
        Log the exception being handled, raised by the plugin's protocol in C{where}:
        with its traceback at most once per cause per interval (L{RepeatedErrors}), so a
        plugin that fails on every connection does not flood the log.
        """
        factory = self.factory
        record = self.record
        failure = Failure()
        factory.errors.failure(
            causeOf(failure, where), "Service {service} ({protocol}): the plugin's {where} "
            "failed on connection {remote} -> {local}", failure,
            service=factory.service, protocol=factory.protocolName,
            where=where, remote=str(record.remote) if record is not None else "?",
            local=str(record.local) if record is not None else "?",
            connection=record.id if record is not None else None)

    def _pluginFailed(self, where: str) -> None:
        """
        The plugin's protocol raised in C{where}: log it (once per connection) and abort
        this connection only.
        """
        if self.closer != PLUGIN_ERROR:
            self._logFailure(where)
            self.closer = PLUGIN_ERROR
        if not self._isLost():
            self._abortBelow()

    def _wrote(self) -> None:
        """
        After a write: the connection was active, and its output may be over the cap.
        """
        factory = self.factory
        if factory.idleTimeout is not None:
            self.lastActive = factory.clock.seconds()
        unsent = self._unsent()
        if unsent > factory.highWater:
            self._outputOver(unsent)

    def _outputOver(self, unsent: int) -> None:
        """
        C{unsent} bytes wait, past the high-water mark: abort past the cap, else pause
        reading until they drain.
        """
        cap = self.factory.maxOutput
        if cap is not None and unsent > cap:
            self._overCap()
        elif not self.paused & PAUSED_FLOW:
            self._pauseReading(PAUSED_FLOW)

    def _pauseReading(self, why: int) -> None:
        if not self.paused:
            self._pauseBelow()
        self.paused |= why

    def _resumeReading(self, why: int) -> None:
        paused = self.paused
        if paused & why:
            self.paused = paused = paused & ~why
            if not paused and self._isOpen():
                self._resumeBelow()

    def drained(self, unsent: int) -> None:
        """
        The transport wrote some of its buffer and has C{unsent} bytes left: below the
        low-water mark, reading paused for flow control resumes.
        """
        if unsent <= LOW_WATER:
            self._resumeReading(PAUSED_FLOW)

    def openOutbound(self, local, remote):
        return self.factory.registry.openOutbound(
            self.record, Endpoint(hostOf(local[0]), local[1]),
            Endpoint(hostOf(remote[0]), remote[1]))

    def closeOutbound(self, record, reason: str) -> None:
        self.factory.registry.close(record, reason)

    def _release(self, reason) -> None:
        """
        The connection is gone: close its record for C{reason} and release its
        admission.
        """
        if self.record is not None:
            self.factory.registry.close(self.record, self.closeReason(reason))
        host = self.admitted
        if host is not None:
            self.admitted = None
            self.factory.admission.release(host)

    def _stopTimer(self) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None  # also breaks the connection -> call -> bound method cycle
            if timer.active():
                timer.cancel()


@implementer(IProtocol, ILoggingContext, ITCPTransport, IConsumer, IPushProducer,
             ITrackedTransport)
class Tracker(ConnectionTracking):
    """
    Sits between a TCP transport and a plugin's protocol: to the transport it is the
    protocol, to the plugin's protocol it is the transport.

    @ivar timer: the connection's one pending call (the idle/deadline check, or, once a
        close has begun, the abort at the end of the grace), or L{None}.
    @ivar lastActive: when a byte was last received or written (only with an idle
        timeout); C{deadlineAt}: when the deadline passes (only with a deadline).
    @ivar admitted: the host the factory's admission admitted, until released.
    @ivar paused: who wants reading from the peer paused, a mask of C{PAUSED_*}.
    """

    __slots__ = ("transport", "wrapped", "record", "factory", "remote", "closer",
                 "connected", "timer", "lastActive", "deadlineAt", "admitted", "paused",
                 "__weakref__")

    def __init__(self, wrapped, factory: "TrackingFactory", remote: tuple | None = None,
                 admitted: str | None = None):
        self.wrapped = wrapped
        self.factory = factory
        self.remote = remote
        self.transport = None
        self.record = None
        self.closer = None
        self.connected = _LOST
        self.timer = None
        self.admitted = admitted
        self.paused = 0

    def logPrefix(self) -> str:
        wrapped = self.wrapped
        if ILoggingContext.providedBy(wrapped):
            return wrapped.logPrefix()
        return wrapped.__class__.__name__ if wrapped is not None else "Tracker"

    # -- the protocol side (called by the reactor's transport) ------------------------------

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.connected = _OPEN
        factory = self.factory
        remote, self.remote = self.remote, None  # the record keeps it from now on
        self.record = factory.registry.open(
            factory.service, factory.protocolName, "tcp", factory.localEndpoint(transport),
            remote or endpointOf(transport.getPeer()))
        if factory.timed:
            self._startTimer()
        try:
            self.wrapped.makeConnection(self)
        except Exception:
            self._pluginFailed("connectionMade")

    def connectionMade(self) -> None:  # IProtocol; makeConnection does the work
        pass

    def dataReceived(self, data: bytes) -> None:
        self.record.bytesIn += len(data)
        factory = self.factory
        if factory.idleTimeout is not None:
            self.lastActive = factory.clock.seconds()
        try:
            self.wrapped.dataReceived(data)
        except Exception:
            self._pluginFailed("dataReceived")

    def connectionLost(self, reason) -> None:
        self.connected = _LOST
        self._stopTimer()
        wrapped, self.wrapped = self.wrapped, None
        try:
            if wrapped is not None:
                wrapped.connectionLost(reason)
        except Exception:
            self._logFailure("connectionLost")
        finally:
            self._release(reason)

    # -- the connection underneath ------------------------------------------------------

    def _loseBelow(self) -> None:
        self.transport.loseConnection()

    def _abortBelow(self) -> None:
        self.transport.abortConnection()

    def _pauseBelow(self) -> None:
        self.transport.pauseProducing()

    def _resumeBelow(self) -> None:
        self.transport.resumeProducing()

    def _unsent(self) -> int:
        return unsentBytes(self.transport)

    def _isOpen(self) -> bool:
        return self.connected == _OPEN

    def _isLost(self) -> bool:
        return self.connected == _LOST

    def _closing(self) -> None:
        self.connected = _CLOSING

    # -- the transport side (called by the plugin's protocol) -------------------------------

    def write(self, data: bytes) -> None:
        record = self.record
        if record is not None:
            record.bytesOut += len(data)
        self.transport.write(data)
        self._wrote()

    def writeSequence(self, data) -> None:
        record = self.record
        if record is not None:
            record.bytesOut += sum(map(len, data))
        self.transport.writeSequence(data)
        self._wrote()

    def loseConnection(self) -> None:
        if self.closer is None:
            self.closer = SERVER_CLOSED
        if self.connected == _OPEN:
            self._closeWithin(self.factory.closeGrace)
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        if self.closer in (None, SERVER_CLOSED, CLIENT_CLOSED):
            self.closer = ABORTED
        self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    def loseWriteConnection(self) -> None:
        self.transport.loseWriteConnection()

    def getTcpNoDelay(self) -> bool:
        return self.transport.getTcpNoDelay()

    def setTcpNoDelay(self, enabled) -> None:
        self.transport.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.transport.getTcpKeepAlive()

    def setTcpKeepAlive(self, enabled) -> None:
        self.transport.setTcpKeepAlive(enabled)

    def registerProducer(self, producer, streaming) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self._pauseReading(PAUSED_PLUGIN)

    def resumeProducing(self) -> None:
        self._resumeReading(PAUSED_PLUGIN)

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # zope.interface adaptation (Twisted adapts every protocol to IHalfCloseableProtocol
    # when the peer closes) looks for __conform__: answer here, not through __getattr__.
    __conform__ = None

    def __getattr__(self, name):
        # getHandle, TLS methods, ...: whatever else the real transport has.
        if name.startswith("__"):
            raise AttributeError(name)
        transport = object.__getattribute__(self, "transport")
        if transport is None:
            raise AttributeError(name)
        return getattr(transport, name)


@implementer(IHalfCloseableProtocol)
class HalfCloseableTracker(Tracker):
    """
    A L{Tracker} for plugin protocols that handle half-closed connections.
    """

    __slots__ = ()

    def readConnectionLost(self) -> None:
        self.paused |= PAUSED_EOF  # resuming would read the end of input again
        if self.closer is None:
            self.closer = CLIENT_CLOSED  # the client ended first, whoever closes now
        try:
            self.wrapped.readConnectionLost()
        except Exception:
            self._pluginFailed("readConnectionLost")

    def writeConnectionLost(self) -> None:
        try:
            self.wrapped.writeConnectionLost()
        except Exception:
            self._pluginFailed("writeConnectionLost")


class Timeouts:
    """
    The idle timeouts and deadlines of every connection a factory's listener accepts
    into portserver's transport, on one call: a heap of C{(due, serial)}, and the
    connections by serial (L{TrackingFactory.transports}).

    A connection's entry is due no later than its next limit (activity only moves an
    idle timeout on), so the call fires at the exact time of the earliest, as one call
    per connection would. A fired entry asks its connection (L{ConnectionTracking._timeLeft}),
    which closes for the limit or gives the time left, put back in the heap. A closed
    connection's entry is skipped when it comes up, and the heap is rebuilt without
    such entries once they outnumber the live ones, so it stays within twice the live
    connections.

    An entry is one integer, C{due} (rounded up to L{RESOLUTION}) above the serial's
    L{SERIAL_BITS}: about 40 bytes a connection, where a C{(due, serial)} tuple costs
    80 and a call (a C{DelayedCall}) about 0.45 KiB. Rounding up fires an entry at
    most L{RESOLUTION} late, within the slack that counts a call as on time; the call
    is made for the exact time, or L{RESOLUTION} before a rounded one.
    """

    #: The time resolution of an entry (seconds): a power of two, so exact in binary.
    RESOLUTION = 2.0 ** -20
    #: The low bits of an entry that hold the serial.
    SERIAL_BITS = 40

    def __init__(self, clock, connections: dict):
        self.clock = clock
        self.connections = connections
        self.heap: list[int] = []
        self.call = None

    def entry(self, due: float, serial: int) -> int:
        """
        The heap entry asking the connection C{serial} at C{due}.
        """
        return (math.ceil(due / self.RESOLUTION) << self.SERIAL_BITS) | serial

    def due(self, entry: int) -> float:
        """
        When C{entry} (an L{entry}) is due.
        """
        return (entry >> self.SERIAL_BITS) * self.RESOLUTION

    def add(self, due: float, serial: int) -> None:
        """
        Ask the connection C{serial} at C{due} (an absolute time).
        """
        heap = self.heap
        if len(heap) > 2 * len(self.connections) + 64:
            mask, connections = (1 << self.SERIAL_BITS) - 1, self.connections
            self.heap = heap = [entry for entry in heap if entry & mask in connections]
            heapq.heapify(heap)
        heapq.heappush(heap, self.entry(due, serial))
        call = self.call
        if call is None:
            self.call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self.fire)
        elif due < call.time:  # (DelayedCall.getTime(), without the call)
            call.reset(max(0.0, due - self.clock.seconds()))

    def fire(self) -> None:
        self.call = None
        heap, connections = self.heap, self.connections
        now = self.clock.seconds()
        mask = (1 << self.SERIAL_BITS) - 1
        last = self.entry(now + _SLACK, mask)
        again = []
        while heap and heap[0] <= last:
            serial = heapq.heappop(heap) & mask
            connection = connections.get(serial)
            if connection is None or not connection._isOpen():
                continue  # closed, or closing (its grace call ends it)
            left = connection._timeLeft(now)
            if left is not None:
                again.append(self.entry(now + left, serial))
        for entry in again:
            heapq.heappush(heap, entry)
        if not connections:
            heap.clear()
        elif heap:
            # An entry is up to RESOLUTION later than its time: call that much early
            # (within the slack), so that the call is not later than the connection's.
            due = self.due(heap[0]) - self.RESOLUTION
            self.call = self.clock.callLater(max(0.0, due - now), self.fire)

    def stop(self) -> None:
        """
        Cancel the call (every connection is gone).
        """
        call, self.call = self.call, None
        self.heap.clear()
        if call is not None and call.active():
            call.cancel()


class _Wrapping:
    """
    What both wrappers hold: the plugin's object, the registry, and whose it is.
    """

    noisy = False

    def __init__(self, wrapped, registry: Registry, service: str, protocolName: str):
        self.wrapped = wrapped
        self.registry = registry
        self.service = service
        self.protocolName = protocolName

    def logPrefix(self) -> str:
        return self.service


class Refusal(Protocol):
    """
    What a peer the admission refused is connected to, when there is a banner: it is
    sent the banner, and the connection is closed (aborted if the close does not
    complete within C{grace} seconds). The plugin never sees the peer.
    """

    timer = None

    def __init__(self, banner: bytes, clock, grace: float):
        self.banner = banner
        self.clock = clock
        self.grace = grace

    def connectionMade(self) -> None:
        transport = self.transport
        self.timer = self.clock.callLater(self.grace, transport.abortConnection)
        transport.write(self.banner)
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass  # refused: whatever it says is ignored

    def abortConnection(self) -> None:
        """
        Abort the connection now (as a L{Tracker} can be, e.g. when the server stops).
        """
        self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        self.connected = 0
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


class TrackingFactory(_Wrapping, ServerFactory):
    """
    Wraps a plugin's factory: each protocol it builds is put behind a L{Tracker}.

    The peer's endpoint is made from the address C{buildProtocol} is given; the local one
    is asked of the first connection and kept when the listener's address is a specific
    one (every connection to it has the same local endpoint), so that a connection costs
    no C{getsockname} call.

    @param limits: the service's L{Limits} (timeouts, output cap, close grace); the
        connection limits in it are the admission's business.
    @param admission: who may connect (C{admit(host)}, C{release(host)}, C{banner}), or
        L{None} to admit everyone.
    @param clock: the L{IReactorTime} of the timeouts (default: the registry's clock).
    @ivar proxyHeaders: the service's L{portserver.proxyheader.ProxyHeaders} when its
        connections begin with a PROXY protocol header (portserver's listener reads it
        before anything is built), else L{None}.
    """

    proxyHeaders = None

    def __init__(self, wrapped, registry: Registry, service: str, protocolName: str,
                 interface: str | None = None, limits: Limits | None = None,
                 admission=None, clock=None):
        super().__init__(wrapped, registry, service, protocolName)
        self.fixedLocal = interface not in (None, "", "0.0.0.0", "::")
        self.local = None
        self.limits = limits = Limits() if limits is None else limits
        self.admission = admission
        self.clock = registry.clock if clock is None else clock
        # A plugin that fails on every connection logs its traceback once per interval.
        self.errors = RepeatedErrors(log, self.clock)
        # Read on every connection, read and write: plain attributes, L{None} when unset.
        self.idleTimeout = limits.idleTimeout
        self.deadline = limits.deadline
        self.timed = limits.idleTimeout is not None or limits.deadline is not None
        self.maxOutput = limits.maxOutput
        self.highWater = (HIGH_WATER if limits.maxOutput is None
                          else min(HIGH_WATER, limits.maxOutput // 2))
        self.closeGrace = limits.closeGrace
        # Every protocol built and not yet freed, to abort those left when a drain ends
        # (the registry holds plain records only). Weak: a closed connection's tracker
        # still goes with its transport.
        self.live = weakref.WeakSet()
        # The live connections carried by portserver's own transport, each its own
        # tracker: added when accepted, removed when lost (a dict entry costs less per
        # connection than a weak reference); their timeouts share one call.
        self.transports: dict[int, object] = {}  # by their record's serial
        self.timeouts = Timeouts(self.clock, self.transports)

    def connections(self) -> list:
        """
        The live connections built by this factory, as their trackers: portserver's
        transports, L{Tracker}s and L{Refusal}s.
        """
        return [c for c in [*self.transports.values(), *self.live]
                if getattr(c, "connected", 0)]

    def hasConnections(self) -> bool:
        """
        Whether any connection built by this factory is live (in O(1) while one is).
        """
        return bool(self.transports) or any(getattr(c, "connected", 0) for c in self.live)

    def localEndpoint(self, transport) -> Endpoint:
        """
        The local L{Endpoint} of C{transport}, a connection accepted by this factory.
        """
        local = self.local
        if local is None:
            local = endpointOf(transport.getHost())
            if self.fixedLocal:
                self.local = local
        return local

    #: Whether a listener serves this factory (between C{doStart} and C{doStop}).
    listening = False

    def doStart(self) -> None:
        self.local = None  # bound again: the port may differ
        self.listening = True
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.listening = False
        if not self.transports:
            self.timeouts.stop()  # else the last connection to close stops it
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        protocol, tracked, host, admitted = self.buildPlugin(addr)
        if tracked:
            cls = (HalfCloseableTracker if IHalfCloseableProtocol.providedBy(protocol)
                   else Tracker)
            protocol = cls(protocol, self, None if host is None else (host, addr.port),
                           admitted)
        if protocol is not None:
            self.live.add(protocol)
        return protocol

    def buildPlugin(self, addr, proxy=None):
        """
        Admit the peer at C{addr} and build the plugin's protocol for it, unwrapped:
        what portserver's own transport (L{portserver.transport.TrackedTransport})
        carries directly, and what L{buildProtocol} puts behind a L{Tracker}.

        @param proxy: the L{Endpoint} of the proxy that carried the connection (PROXY
            protocol), if one did: for a connection whose admission is decided later.
        @return: C{(protocol, tracked, host, admitted)}: the plugin's protocol (to
            track) or a L{Refusal}, an L{AwaitingAdmission} (a worker's admission
            decided by the main process: it builds the plugin's protocol once admitted)
            or L{None} (not to track: the admission refused the peer, or the plugin
            did); the peer's host, and the host the admission admitted (to release when
            the connection ends), or L{None}.
        """
        host = getattr(addr, "host", None)
        if host is not None and ":" in host:  # IPv6: an IPv4-mapped one is shown as IPv4
            host = hostOf(host)
        admission = self.admission
        admitted = None
        if admission is not None and host is not None:
            reason = admission.admit(host)
            if reason is not None:
                if reason.__class__ is not str:  # decided later (portserver.quota)
                    waiting = AwaitingAdmission(self, reason, addr, host, proxy)
                    return waiting, False, host, None
                return self.refuse(reason), False, host, None
            admitted = host
        try:
            protocol = self.wrapped.buildProtocol(addr)
        except BaseException:
            if admitted is not None:
                admission.release(admitted)
            raise
        if protocol is None:  # the plugin refused the connection
            if admitted is not None:
                admission.release(admitted)
            return None, False, host, None
        return protocol, True, host, admitted

    def refuse(self, reason: str):
        """
        The protocol for a peer the admission refused for C{reason}: L{None} (Twisted
        closes the socket at once) or, with a banner for that reason, a L{Refusal}.
        """
        banner = self.admission.banner(reason)
        if not banner:
            return None
        return Refusal(banner, self.clock, self.closeGrace)
