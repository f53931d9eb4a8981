"""
C{forward}: each connection is relayed to a configured target, both ways.

The classic relay of L{twisted.protocols.portforward}, with what it lacks for a server that
faces the network: a client endpoint (any Twisted client endpoint string, or a host and a
port tried as L{HostnameEndpoint} does), a connect timeout, half-close passed through in
both directions, and the outbound connection shown in the registry next to the inbound one.

Backpressure both ways: each side's transport is registered as the (streaming) producer
of the other, so a side that stops reading pauses the reading of the other, and nothing is
buffered without bound. Until the target answers, the client's side is paused.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, connectProtocol
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionLost,
    TimeoutError,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from portserver.interfaces import ITrackedTransport
from portserver.options import Option, OptionProblem, seconds
from portserver.provider import PortProtocol
from portserver.registry import ERROR, RESET, SERVER_CLOSED

log = Logger()

DEFAULT_CONNECT_TIMEOUT = 10.0

#: The close reason of an outbound connection the target ended.
TARGET_CLOSED = "target-closed"


def _endpointString(address) -> str:
    host, port = address.host, address.port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IHalfCloseableProtocol)
class Inbound(Protocol):
    """
    The client's side of one forwarded connection.

    @ivar outbound: the L{Outbound} protocol once the target has answered.
    """

    def __init__(self, factory: "ForwardFactory"):
        self.factory = factory
        self.outbound: Outbound | None = None
        self.connecting = None
        self.readClosed = False
        self.gone = False

    def connectionMade(self):
        self.transport.pauseProducing()  # nothing to send it to yet
        factory = self.factory
        d = connectProtocol(factory.endpoint, Outbound(self))
        d.addTimeout(factory.connectTimeout, factory.clock)
        self.connecting = d
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, outbound: "Outbound") -> None:
        self.connecting = None
        if self.gone:  # the client left while the target was answering
            outbound.transport.loseConnection()
            return
        self.outbound = outbound
        outbound.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(outbound.transport, True)
        self.transport.resumeProducing()

    def _failed(self, failure) -> None:
        self.connecting = None
        if self.gone:  # the client left first: the attempt was cancelled
            return
        why = ("no answer within {:g} s".format(self.factory.connectTimeout)
               if failure.check(TimeoutError, CancelledError, ConnectingCancelledError)
               else failure.getErrorMessage())
        peer = self.transport.getPeer()
        log.warn("{service}: cannot reach {target} for {peer}: {why}",
                 service=self.factory.service, target=self.factory.target,
                 peer=_endpointString(peer), why=why)
        self.transport.loseConnection()

    def dataReceived(self, data):
        outbound = self.outbound
        if outbound.record is not None:
            outbound.record.bytesOut += len(data)
        outbound.transport.write(data)

    def readConnectionLost(self):
        # The client is done sending: tell the target the same, and keep relaying its
        # answer until it is done too.
        self.readClosed = True
        if self.outbound is None:
            self.transport.loseConnection()
        elif self.outbound.readClosed:
            self._closeBoth()
        else:
            self.outbound.transport.loseWriteConnection()

    def writeConnectionLost(self):
        pass

    def _closeBoth(self):
        self.transport.loseConnection()
        self.outbound.transport.loseConnection()

    def connectionLost(self, reason=ConnectionDone):
        self.gone = True
        if self.connecting is not None:
            self.connecting.cancel()
        if self.outbound is not None:
            self.outbound.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class Outbound(Protocol):
    """
    The target's side of one forwarded connection, shown in the registry linked to the
    client's connection.
    """

    def __init__(self, inbound: Inbound):
        self.inbound = inbound
        self.record = None
        self.readClosed = False
        self.closer = None

    def connectionMade(self):
        tracked = self.inbound.transport
        if ITrackedTransport.providedBy(tracked) and tracked.record is not None:
            local, remote = self.transport.getHost(), self.transport.getPeer()
            self.record = tracked.openOutbound((local.host, local.port),
                                               (remote.host, remote.port))

    def dataReceived(self, data):
        if self.record is not None:
            self.record.bytesIn += len(data)
        self.inbound.transport.write(data)

    def readConnectionLost(self):
        self.readClosed = True
        if self.inbound.readClosed:
            self.inbound._closeBoth()
        else:
            self.inbound.transport.loseWriteConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=ConnectionDone):
        if self.record is not None:
            if self.inbound.gone:
                why = SERVER_CLOSED  # closed because the client's side ended
            elif reason.check(ConnectionDone):
                why = TARGET_CLOSED
            elif reason.check(ConnectionLost):
                why = RESET
            else:
                why = ERROR
            self.inbound.transport.closeOutbound(self.record, why)
        self.inbound.transport.loseConnection()


class ForwardFactory(Factory):
    """
    Builds an L{Inbound} per connection, all relayed to C{endpoint}.
    """

    noisy = False

    def __init__(self, service: str, endpoint, target: str, connectTimeout: float, clock):
        self.service = service
        self.endpoint = endpoint
        self.target = target
        self.connectTimeout = connectTimeout
        self.clock = clock

    def buildProtocol(self, addr):
        protocol = Inbound(self)
        protocol.factory = self
        return protocol


# -- options ---------------------------------------------------------------------------


class _ParseOnly:
    """
    A stand-in reactor for checking a client endpoint string: parsing never uses it.
    """


def _checkEndpoint(description: str) -> str | None:
    try:
        clientFromString(_ParseOnly(), description)
    except Exception as e:  # the parsers raise ValueError, KeyError, TypeError, ...
        return f"not a client endpoint string ({type(e).__name__}: {e})"
    return None


def _checkPort(port) -> str | None:
    return None if 1 <= port <= 65535 else "must be 1-65535"


_checkTimeout = seconds()


OPTIONS = {
    "host": Option(str, None, lambda h: None if h.strip() else "must not be empty"),
    "port": Option(int, None, _checkPort),
    "target": Option(str, None, _checkEndpoint, describe="a client endpoint string"),
    "connect_timeout": Option((int, float), DEFAULT_CONNECT_TIMEOUT, _checkTimeout,
                              describe="a number of seconds"),
}


def checkTarget(options) -> list[OptionProblem]:
    """
    Either C{target}, or C{host} and C{port}.
    """
    hostPort = [options["host"] is not None, options["port"] is not None]
    if options["target"] is not None:
        if any(hostPort):
            return [OptionProblem("target", "give either target or host and port, not both")]
    elif not all(hostPort):
        missing = "host" if not hostPort[0] else "port"
        return [OptionProblem(
            None, f"needs a target: {missing} is missing (give host and port, or target)")]
    return []


def buildFactory(service, reactor) -> ForwardFactory:
    """
    The factory of a C{forward} service.
    """
    options = service.options
    timeout = options["connect_timeout"]
    if options["target"] is not None:
        target = options["target"]
        endpoint = clientFromString(reactor, target)
    else:
        host, port = options["host"], options["port"]
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    return ForwardFactory(service.name, endpoint, target, timeout, reactor)


#: The limits a C{forward} service has unless configured: a relayed connection with no
#: byte either way for an hour is closed (long enough for an idle interactive session,
#: as HAProxy's usual C{timeout client}/C{timeout server}; bounded all the same).
DEFAULT_LIMITS = {"idle_timeout": 3600}


forward = PortProtocol(
    name="forward",
    defaultLimits=DEFAULT_LIMITS,
    description="Relays each connection to a configured target (port forwarding)",
    wellKnownPort=8080,
    factory=buildFactory,
    options=OPTIONS,
    validate=checkTarget,
)
