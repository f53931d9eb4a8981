"""
The tracking of datagram services: one flow per remote endpoint in the L{Registry}, and
the loop guard, access rules and reply rate applied to each datagram before the plugin
sees it.

Each datagram costs a few microseconds of system calls and, for the plugin, a method
call; what portserver adds is on the same scale, so the path is kept short: one flow
look-up per datagram (a reply to the datagram's sender reuses its flow, found by the
identity of the address tuple), one clock read shared by the reply rate and the flow,
and the loop check as one set look-up. With L{portserver.udp.DatagramPort}, which skips
Twisted's address checks for that same sender, portserver answers UDP echo at least as
fast as bare Twisted (see C{bench/}).
"""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from portserver.ratelog import RepeatedErrors, causeOf
from portserver.registry import Endpoint, FlowRecord, Registry
from portserver.tracking import hostOf
from portserver.udpguard import LOOP, RATE, loopPorts

log = Logger()

# No datagram's source: what L{TrackingDatagram.lastSource} is before the first one.
_NO_SOURCE = object()


class DatagramTransport:
    """
    What a tracked datagram protocol sees as its transport: the UDP port, with writes
    counted on the flow of the address written to (without a look-up for the sender of
    the datagram being delivered).
    """

    __slots__ = ("port", "tracking")

    def __init__(self, port, tracking: TrackingDatagram):
        self.port = port
        self.tracking = tracking

    def write(self, datagram: bytes, addr=None):
        result = self.port.write(datagram, addr)
        tracking = self.tracking
        if addr is tracking.lastSource and tracking.lastFlow.closed is None:
            record = tracking.lastFlow
        elif addr is not None:
            record = tracking.flowFor(addr)
        else:
            return result
        record.datagramsOut += 1
        record.bytesOut += len(datagram)
        return result

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, "port"), name)


class TrackingDatagram(DatagramProtocol):
    """
    Wraps a plugin's datagram protocol: one flow per remote endpoint in the registry.

    @ivar admission: the service's admission, whose access rules (only: the connection
        limits mean nothing without connections) apply to each datagram: one from a
        denied peer is dropped before the plugin or the registry sees it, and counted
        as refused ("denied"); and whose per-source reply rate
        (C{limits.udp_rate_per_source}) drops the datagrams past it ("rate").
    @ivar lastSource: the address tuple of the last datagram handed to the plugin, as
        the port gave it; C{lastFlow}: its flow. A write to that very tuple (an answer
        to the sender) is counted on that flow without looking it up, while it is live.

    A datagram from a source port that could be a server's (L{portserver.udpguard}:
    0, the classic ports, the registry's C{ownPorts}) is dropped first ("loop").
    """

    noisy = False
    admission = None
    errors = None  # a RepeatedErrors, made at the first failure: one traceback per 10 s
    lastSource = _NO_SOURCE
    lastFlow: FlowRecord | None = None

    def __init__(self, wrapped, registry: Registry, service: str, protocolName: str):
        self.wrapped = wrapped
        self.registry = registry
        self.service = service
        self.protocolName = protocolName
        self._seconds = registry.clock.seconds
        # The registry's ownPorts, and the source ports refused as loops given them
        # (made again when the server's ports change).
        self._ownPorts = registry.ownPorts
        self._loopPorts = loopPorts(self._ownPorts)

    def logPrefix(self) -> str:
        return self.service

    def makeConnection(self, transport) -> None:
        super().makeConnection(transport)
        self.wrapped.makeConnection(DatagramTransport(transport, self))

    def doStop(self) -> None:
        super().doStop()
        self.wrapped.doStop()

    def replace(self, wrapped, service: str, protocolName: str, admission=None) -> None:
        """
        Hand the datagrams from now on to C{wrapped} (a reload's new plugin protocol,
        for C{service}, with C{admission}); the one replaced is stopped.
        """
        old = self.wrapped
        self.wrapped, self.service, self.protocolName = wrapped, service, protocolName
        self.admission = admission
        self.lastSource, self.lastFlow = _NO_SOURCE, None  # a flow of the old service
        if self.transport is not None:
            wrapped.makeConnection(DatagramTransport(self.transport, self))
            old.doStop()

    def flowFor(self, addr) -> FlowRecord:
        """
        The live flow with C{addr} (an (ip, port) tuple as the port gives it), opened now
        if there is none.
        """
        # An (ip, port) tuple equals and hashes as the Endpoint made of it: look up the
        # address as given first, and make an Endpoint only for a new flow (or a mapped
        # IPv4 address).
        record = self.registry.knownFlow(self.service, addr)
        if record is None:
            record = self._unknownFlow(addr)
        return record

    def _unknownFlow(self, addr) -> FlowRecord:
        """
        The flow with C{addr}, not found under C{addr} as given: found under its
        L{Endpoint} (an IPv4-mapped address), or opened now.
        """
        remote = Endpoint(hostOf(addr[0]), addr[1])
        record = self.registry.knownFlow(self.service, remote)
        if record is None:
            destination = getattr(self.transport, "destination", None)
            host = self.transport.getHost()
            local = Endpoint(hostOf(destination or host.host), host.port)
            record = self.registry.flow(self.service, self.protocolName, local, remote)
        return record

    def _refuse(self, reason: str, host: str) -> None:
        admission = self.admission
        if admission is not None:
            admission.refuseDatagram(reason, hostOf(host))
        else:
            self.registry.refuse(self.service, reason)

    def datagramReceived(self, data: bytes, addr) -> None:
        registry = self.registry
        if registry.ownPorts is not self._ownPorts:
            self._ownPorts = registry.ownPorts
            self._loopPorts = loopPorts(self._ownPorts)
        if addr[1] in self._loopPorts:
            self._refuse(LOOP, addr[0])
            return
        now = self._seconds()
        admission = self.admission
        if admission is not None:
            if not admission.allows(addr[0]):
                admission.deny(hostOf(addr[0]))
                return
            replyRate = admission.replyRate
            if replyRate is not None and not replyRate.allow(addr[0], now):
                self._refuse(RATE, addr[0])
                return
        record = registry.seenFlow(self.service, addr, now)
        if record is None:
            record = self._unknownFlow(addr)
            registry.seen(record, now)
        record.datagramsIn += 1
        record.bytesIn += len(data)
        self.lastSource = addr
        self.lastFlow = record
        try:
            self.wrapped.datagramReceived(data, addr)
        except Exception:
            failure = Failure()
            errors = self.errors
            if errors is None:
                errors = self.errors = RepeatedErrors(log, registry.clock)
            errors.failure(causeOf(failure, "datagramReceived"),
                           "Service {service} ({protocol}): the plugin's datagramReceived "
                           "failed on a datagram from {remote} -> {local}", failure,
                           service=self.service, protocol=self.protocolName,
                           remote=str(record.remote), local=str(record.local),
                           connection=record.id)

    def connectionRefused(self) -> None:
        self.wrapped.connectionRefused()
