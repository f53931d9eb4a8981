"""
The tracking layer: put once around whatever factory (or datagram protocol) a plugin
builds, it records every connection in the L{Registry} and counts bytes at the transport
boundary, so plugins need not cooperate.

Unlike Twisted's C{WrappingFactory}/C{ProtocolWrapper}, a L{Tracker} declares its
interfaces on the class (no C{directlyProvides} per connection), uses C{__slots__}, and
keeps no reference that outlives the connection: the reactor's transport drops the tracker
when the connection is lost, the tracker drops the plugin's protocol, and the registry
keeps only a plain record. Nothing forms a cycle, so closed connections are freed by
reference counting, without waiting for the cycle collector.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import DatagramProtocol, ServerFactory
from zope.interface import implementer

from portserver.interfaces import ITrackedTransport
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


@implementer(IProtocol, ILoggingContext, ITCPTransport, IConsumer, IPushProducer,
             ITrackedTransport)
class Tracker:
    """
    Sits between a TCP transport and a plugin's protocol: to the transport it is the
    protocol, to the plugin's protocol it is the transport.
    """

    __slots__ = ("transport", "wrapped", "record", "factory", "remote", "closer",
                 "connected", "__weakref__")

    def __init__(self, wrapped, factory: "TrackingFactory", remote: tuple | None = None):
        self.wrapped = wrapped
        self.factory = factory
        self.remote = remote
        self.transport = None
        self.record = None
        self.closer = None
        self.connected = 0

    def logPrefix(self) -> str:
        wrapped = self.wrapped
        if ILoggingContext.providedBy(wrapped):
            return wrapped.logPrefix()
        return wrapped.__class__.__name__ if wrapped is not None else "Tracker"

    # -- the protocol side (called by the reactor's transport) ------------------------------

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.connected = 1
        factory = self.factory
        remote, self.remote = self.remote, None  # the record keeps it from now on
        self.record = factory.registry.open(
            factory.service, factory.protocolName, "tcp", factory.localEndpoint(transport),
            remote or endpointOf(transport.getPeer()))
        self.wrapped.makeConnection(self)

    def connectionMade(self) -> None:  # IProtocol; makeConnection does the work
        pass

    def dataReceived(self, data: bytes) -> None:
        self.record.bytesIn += len(data)
        self.wrapped.dataReceived(data)

    def connectionLost(self, reason) -> None:
        self.connected = 0
        wrapped, self.wrapped = self.wrapped, None
        try:
            if wrapped is not None:
                wrapped.connectionLost(reason)
        finally:
            if self.record is not None:
                self.factory.registry.close(self.record, self.closeReason(reason))

    def closeReason(self, reason) -> str:
        """
        Why the connection ended, from Twisted's reason and who asked to close.
        """
        if self.factory.registry.shuttingDown:
            return SHUTDOWN
        if self.closer is not None and self.closer != SERVER_CLOSED:
            return self.closer
        # issubclass, not Failure.check, which formats qualified names on every call.
        kind = reason.type
        if issubclass(kind, ConnectionAborted):
            return ABORTED
        if issubclass(kind, ConnectionDone):
            return self.closer or CLIENT_CLOSED
        if issubclass(kind, ConnectionLost):
            return RESET
        return ERROR

    # -- the transport side (called by the plugin's protocol) -------------------------------

    def write(self, data: bytes) -> None:
        record = self.record
        if record is not None:
            record.bytesOut += len(data)
        self.transport.write(data)

    def writeSequence(self, data) -> None:
        record = self.record
        if record is not None:
            record.bytesOut += sum(map(len, data))
        self.transport.writeSequence(data)

    def loseConnection(self) -> None:
        if self.closer is None:
            self.closer = SERVER_CLOSED
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        if self.closer in (None, SERVER_CLOSED, CLIENT_CLOSED):
            self.closer = ABORTED
        self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def openOutbound(self, local, remote):
        return self.factory.registry.openOutbound(
            self.record, Endpoint(hostOf(local[0]), local[1]),
            Endpoint(hostOf(remote[0]), remote[1]))

    def closeOutbound(self, record, reason: str) -> None:
        self.factory.registry.close(record, reason)

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
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

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
        if self.closer is None:
            self.closer = CLIENT_CLOSED  # the client ended first, whoever closes now
        self.wrapped.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrapped.writeConnectionLost()


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


class TrackingFactory(_Wrapping, ServerFactory):
    """
    Wraps a plugin's factory: each protocol it builds is put behind a L{Tracker}.

    The peer's endpoint is made from the address C{buildProtocol} is given; the local one
    is asked of the first connection and kept when the listener's address is a specific
    one (every connection to it has the same local endpoint), so that a connection costs
    no C{getsockname} call.
    """

    def __init__(self, wrapped, registry: Registry, service: str, protocolName: str,
                 interface: str | None = None):
        super().__init__(wrapped, registry, service, protocolName)
        self.fixedLocal = interface not in (None, "", "0.0.0.0", "::")
        self.local = None

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

    def doStart(self) -> None:
        self.local = None  # bound again: the port may differ
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:  # the plugin refused the connection
            return None
        cls = HalfCloseableTracker if IHalfCloseableProtocol.providedBy(protocol) else Tracker
        host = getattr(addr, "host", None)
        return cls(protocol, self, None if host is None else (hostOf(host), addr.port))


class DatagramTransport:
    """
    What a tracked datagram protocol sees as its transport: the UDP port, with writes
    counted on the flow of the address written to.
    """

    __slots__ = ("port", "tracking")

    def __init__(self, port, tracking: "TrackingDatagram"):
        self.port = port
        self.tracking = tracking

    def write(self, datagram: bytes, addr=None):
        result = self.port.write(datagram, addr)
        if addr is not None:
            record = self.tracking.flowFor(addr)
            record.datagramsOut += 1
            record.bytesOut += len(datagram)
        return result

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, "port"), name)


class TrackingDatagram(_Wrapping, DatagramProtocol):
    """
    Wraps a plugin's datagram protocol: one flow per remote endpoint in the registry.
    """

    def makeConnection(self, transport) -> None:
        super().makeConnection(transport)
        self.wrapped.makeConnection(DatagramTransport(transport, self))

    def doStop(self) -> None:
        super().doStop()
        self.wrapped.doStop()

    def flowFor(self, addr):
        # An (ip, port) tuple equals and hashes as the Endpoint made of it: look up the
        # address as given first, and make an Endpoint only for a new flow (or a mapped
        # IPv4 address).
        record = self.registry.knownFlow(self.service, addr)
        if record is not None:
            return record
        remote = Endpoint(hostOf(addr[0]), addr[1])
        record = self.registry.knownFlow(self.service, remote)
        if record is None:
            destination = getattr(self.transport, "destination", None)
            host = self.transport.getHost()
            local = Endpoint(hostOf(destination or host.host), host.port)
            record = self.registry.flow(self.service, self.protocolName, local, remote)
        return record

    def datagramReceived(self, data: bytes, addr) -> None:
        record = self.flowFor(addr)
        record.lastSeen = self.registry.clock.seconds()
        record.datagramsIn += 1
        record.bytesIn += len(data)
        self.wrapped.datagramReceived(data, addr)

    def connectionRefused(self) -> None:
        self.wrapped.connectionRefused()
