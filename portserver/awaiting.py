"""
A connection whose admission is decided later: in a worker whose leases of the global
limits (L{portserver.quota}) have no free slot for it, the worker asks the main process,
and the connection waits, not reading, for the answer.

Meanwhile the connection's protocol is an L{AwaitingAdmission}, as a connection from a
proxy has a header reader (L{portserver.proxyheader.HeaderReader}) until its header is
read: the plugin's protocol is built only once the peer is admitted, and a refused peer
is sent the admission's banner and closed, as one refused at once is.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol

#: The longest a connection waits for its admission (less when the service's idle
#: timeout or deadline is shorter); then it is refused for the limit it waited on.
WAIT_LIMIT = 10.0


class AwaitingAdmission(Protocol):
    """
    The protocol of a connection while its admission (a
    L{portserver.admission.Pending}) awaits the main process's answer: it stops reading
    from the peer; admitted, it gives the connection to the plugin's protocol (built
    then) exactly as the listener would have, with what it received (e.g. what
    followed a PROXY header); refused, to the factory's refusal (the banner, if any,
    then the close). If the connection closes first, its admission is cancelled and
    takes no slot. It waits at most L{WAIT_LIMIT} seconds, or the service's idle timeout
    or deadline if shorter.

    On portserver's own transport (L{portserver.transport.TrackedTransport}) the
    transport's protocol is replaced. A transport that is not portserver's (another
    reactor's, an in-memory test transport) keeps this protocol, which passes the
    connection's events to the L{portserver.tracking.Tracker} or refusal built then
    (without half-close).

    @ivar connected: 1 while the answer is awaited (the factory keeps it among its live
        connections, so a drain aborts it).
    """

    connected = 0
    timer = None
    next = None  # what the events are passed to, on a transport that is not portserver's

    def __init__(self, factory, pending, addr, host: str, proxy=None):
        self.factory = factory
        self.pending = pending
        self.addr = addr
        self.host = host
        self.proxy = proxy
        self.buffer = b""

    def logPrefix(self) -> str:
        return self.factory.service

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.connected = 1
        transport.pauseProducing()
        factory = self.factory
        wait = min(limit for limit in (WAIT_LIMIT, factory.idleTimeout, factory.deadline)
                   if limit is not None)
        self.timer = factory.clock.callLater(wait, self.pending.expire)
        self.pending.whenDecided(self._decided)

    def dataReceived(self, data: bytes) -> None:
        if self.next is not None:
            self.next.dataReceived(data)
        elif self.connected:
            self.buffer += data  # (reading is paused: what came with the header)

    def connectionLost(self, reason) -> None:
        if self.next is not None:
            self.next.connectionLost(reason)
            self.next = None
            return
        if self.connected:
            self.connected = 0
            self._stopTimer()
            self.factory.live.discard(self)
            self.pending.cancel()
        self.buffer = b""

    def abortConnection(self) -> None:
        """
        Abort the connection now (a drain's end, a removed listener's).
        """
        self.transport.abortConnection()

    def _stopTimer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _decided(self, reason: str | None) -> None:
        self._stopTimer()
        if not self.connected:
            return
        self.connected = 0
        self.factory.live.discard(self)
        if reason is None:
            self._admitted()
        else:
            self._refused(reason)

    def _refused(self, reason: str) -> None:
        factory, transport = self.factory, self.transport
        refusal = factory.refuse(reason)
        if refusal is None:
            transport.loseConnection()
            return
        factory.live.add(refusal)
        self._pass(refusal)

    def _admitted(self) -> None:
        factory, transport, host = self.factory, self.transport, self.host
        try:
            protocol = factory.wrapped.buildProtocol(self.addr)
        except Exception:
            factory.admission.release(host)
            factory.errors.failure((factory.service, "buildProtocol"),
                                   "Service {service}: the plugin's buildProtocol failed "
                                   "for {peer}", service=factory.service, peer=host)
            transport.abortConnection()
            return
        if protocol is None:  # the plugin refused the connection
            factory.admission.release(host)
            transport.loseConnection()
            return
        startTracking = getattr(transport, "startTracking", None)
        if startTracking is None:
            from portserver.tracking import HalfCloseableTracker, Tracker
            cls = (HalfCloseableTracker if IHalfCloseableProtocol.providedBy(protocol)
                   else Tracker)
            tracker = cls(protocol, factory, (host, self.addr.port), host)
            factory.live.add(tracker)
            self._pass(tracker)
            return
        data, self.buffer = self.buffer, b""
        transport.protocol = protocol
        transport.resumeProducing()  # (not yet tracked: Twisted's own)
        startTracking(factory, host, self.proxy)
        transport.servePlugin(protocol, data)

    def _pass(self, protocol) -> None:
        """
        Give the connection to C{protocol} (a refusal, or a tracker on a transport that
        is not portserver's), with what was received.
        """
        transport = self.transport
        data, self.buffer = self.buffer, b""
        if getattr(transport, "startTracking", None) is not None:
            transport.protocol = protocol
            protocol.makeConnection(transport)
            return
        self.next = protocol
        transport.resumeProducing()
        protocol.makeConnection(transport)
        if data and self.next is not None:
            self.next.dataReceived(data)
