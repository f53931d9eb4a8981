"""
Test a protocol plugin the way portserver serves it, with no sockets and no running server.

A L{ServiceHarness} takes the plugin's provider and the service's C{options:} (a mapping,
or the YAML text an operator would write), checks them through portserver's own config
loader (so a bad option fails exactly as C{twistd portserver --check} reports it), builds
the factory as the server does (behind the tracking layer, recording into a L{Registry}),
and connects it to in-memory transports from the peer you choose::

    from twisted.trial.unittest import SynchronousTestCase
    from portserver.testing import ServiceHarness
    from myplugin import rot13

    class Rot13Tests(SynchronousTestCase):
        def test_rotates(self):
            harness = ServiceHarness(rot13, "shift: 13")
            conn = harness.connect(peer=("203.0.113.5", 40001))
            conn.send(b"hello")
            self.assertEqual(conn.received(), b"uryyb")
            conn.close()
            [record] = harness.closed()
            self.assertEqual(record.remote, ("203.0.113.5", 40001))
            self.assertEqual(record.bytesIn, 5)

The reactor is a L{MemoryReactorClock} unless you pass one: C{harness.reactor.advance(s)}
moves its clock, and C{harness.reactor.tcpClients} shows any outbound connection the plugin
asked for.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
import yaml
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from portserver.admission import Admission
from portserver.config import ConfigError, parseServices
from portserver.marks import Mark
from portserver.plan import planListeners
from portserver.ports import PrivilegeRule
from portserver.registry import CLOSED, ConnectionRecord, Endpoint, Registry
from portserver.listeners import ListenerService

__all__ = ["ServiceHarness", "Connection", "DatagramPort", "MemoryTransport", "serviceSpec"]

#: The peer a connection comes from unless you choose one (TEST-NET-3, RFC 5737).
DEFAULT_PEER = ("203.0.113.1", 40000)


def _address(kind: str, endpoint) -> IPv4Address | IPv6Address:
    host, port = endpoint
    return (IPv6Address if ":" in host else IPv4Address)(kind, host, port)


def serviceSpec(provider, options: Mapping[str, Any] | str | None = None, *,
                name: str | None = None, port: int | None = None,
                interface: str = "127.0.0.1", transports=("tcp",),
                limits: Mapping[str, Any] | None = None, path: str = "<test config>"):
    """
    The L{portserver.config.ServiceSpec} the server would make of one service using
    C{provider}, with C{options} given as a mapping or as YAML text (and the service's
    C{limits:}, as a mapping, if any).

    @raise portserver.config.ConfigError: when the server would refuse the service; its
        problems name the line and the option, as C{--check} does.
    """
    if isinstance(options, str):
        optionsText = options
    else:
        optionsText = yaml.safe_dump(dict(options or {}), default_flow_style=False)
    service: dict[str, Any] = {
        "name": name or provider.name, "protocol": provider.name, "interface": interface,
        "transports": list(transports),
    }
    if port is not None:
        service["port"] = port
    if limits:
        service["limits"] = dict(limits)
    head = yaml.safe_dump({"services": [service]}, default_flow_style=False, sort_keys=False)
    body = "".join(f"    {line}\n" for line in optionsText.splitlines())
    text = head + ("  options:\n" + body if body.strip() else "")
    specs, problems = parseServices(text, path, {provider.name: provider})
    if problems:
        # Point into the options text as given: its line 1 is the line after "options:".
        offset = head.count("\n") + 1
        raise ConfigError([
            attrs.evolve(p, mark=Mark(p.mark.line - offset, max(1, p.mark.column - 4)))
            if p.mark.line > offset else p for p in problems])
    return specs[0]


class MemoryTransport(StringTransport):
    """
    A L{StringTransport} that can also be half-closed (C{loseWriteConnection}), remembers
    whether it was aborted, and keeps the TCP options a plugin sets (the tracking layer
    offers L{ITCPTransport}, so plugins such as C{twisted.web}'s channel set them).
    """

    writeClosed = False
    aborted = False
    noDelay = False
    keepAlive = False

    def getTcpNoDelay(self) -> bool:
        return self.noDelay

    def setTcpNoDelay(self, enabled) -> None:
        self.noDelay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.keepAlive

    def setTcpKeepAlive(self, enabled) -> None:
        self.keepAlive = bool(enabled)

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Connection:
    """
    One in-memory connection to the service: you play the peer.

    @ivar transport: the L{MemoryTransport} the server writes to.
    @ivar protocol: what the factory built (the tracking layer around the plugin's
        protocol); C{plugin} is the plugin's own protocol.
    """

    def __init__(self, harness: "ServiceHarness", protocol, transport: MemoryTransport):
        self.harness = harness
        self.protocol = protocol
        self.plugin = protocol.wrapped
        self.transport = transport
        self.record: ConnectionRecord = protocol.record
        self.lost = False

    def send(self, data: bytes) -> None:
        """
        Deliver C{data} from the peer to the service.
        """
        if self.lost:
            raise RuntimeError(f"connection {self.record.id} is closed")
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """
        What the service wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def serverClosed(self) -> bool:
        """
        Whether the service asked to close the connection (C{loseConnection} or
        C{abortConnection}).
        """
        return bool(self.transport.disconnecting) or self.transport.disconnected

    def halfClose(self) -> None:
        """
        The peer shuts down its sending side: the plugin's C{readConnectionLost} runs if
        it handles half-closed connections; otherwise the connection is closed, as Twisted
        does.
        """
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()
        else:
            self.close()

    def close(self) -> None:
        """
        The connection ends cleanly: the peer closed it, or the service's own close
        completed. The registry records who closed it.
        """
        self._lose(ConnectionDone())

    def reset(self) -> None:
        """
        The connection is reset by the peer.
        """
        self._lose(ConnectionLost("Connection reset by peer"))

    def _lose(self, reason) -> None:
        if self.lost:
            return
        self.lost = True
        self.transport.disconnected = True
        self.protocol.connectionLost(Failure(reason))


class DatagramPort:
    """
    The UDP port a datagram service is given, in memory: what it sends is kept in
    C{sent} as C{(data, (host, port))}.
    """

    def __init__(self, local):
        self.local = local
        self.sent: list[tuple[bytes, tuple]] = []

    def write(self, datagram: bytes, addr=None) -> None:
        self.sent.append((datagram, tuple(addr) if addr is not None else None))

    def getHost(self):
        return _address("UDP", self.local)

    def stopListening(self) -> None:
        pass


class ServiceHarness:
    """
    One service of C{provider}, built as the server builds it, served in memory.

    @param provider: the plugin's L{portserver.interfaces.IPortProtocol} provider.
    @param options: the service's C{options:}, as a mapping or as YAML text.
    @param name: the service's name (default: the protocol's name).
    @param port: the port it is said to listen on (default: the protocol's well-known one).
    @param reactor: what the plugin is built with (default: a new L{MemoryReactorClock}).
    @param registry: where connections are recorded (default: a new L{Registry}).
    @param limits: the service's C{limits:} (e.g. C{{"idle_timeout": 30}}), applied as the
        server applies them: admission, timeouts, the output cap.
    @raise portserver.config.ConfigError: when the server would refuse the options.
    """

    def __init__(self, provider, options: Mapping[str, Any] | str | None = None, *,
                 name: str | None = None, port: int | None = None,
                 interface: str = "127.0.0.1", transports=("tcp",), reactor=None,
                 registry: Registry | None = None, limits: Mapping[str, Any] | None = None):
        self.reactor = MemoryReactorClock() if reactor is None else reactor
        self.registry = Registry(self.reactor) if registry is None else registry
        self.spec = serviceSpec(provider, options, name=name, port=port,
                                interface=interface, transports=transports, limits=limits)
        listeners, problems = planListeners([self.spec], 0, PrivilegeRule(), dualStack=True)
        if problems:
            raise ConfigError(problems)
        self.admission = Admission(self.spec.name, self.spec.limits, self.spec.access,
                                   self.reactor, self.registry)
        self.services = {l.transport: ListenerService(l, self.reactor, self.registry,
                                                      self.admission)
                         for l in listeners}
        self.listeners = {l.transport: l for l in listeners}
        self.factory = None
        self.datagram = None
        self.udpPort = None
        if "tcp" in self.services:
            self.factory = self.services["tcp"].build()
            self.factory.doStart()
        if "udp" in self.services:
            self.datagram = self.services["udp"].build()
            self.udpPort = DatagramPort(self.local("udp"))
            self.datagram.makeConnection(self.udpPort)

    @property
    def options(self) -> Mapping[str, Any]:
        """
        The options as the plugin's C{validateOptions} returned them.
        """
        return self.spec.options

    def local(self, transport: str = "tcp") -> Endpoint:
        """
        The endpoint the service is said to listen on.
        """
        listener = self.listeners[transport]
        return Endpoint(listener.interface, listener.port)

    def connect(self, peer=DEFAULT_PEER, local=None) -> Connection | None:
        """
        A new connection from C{peer} (an C{(ip, port)} pair) to C{local} (default: the
        service's address), or L{None} when the plugin's factory refused it.
        """
        if self.factory is None:
            raise ValueError(f"service {self.spec.name!r} has no tcp transport")
        local = self.local() if local is None else local
        peerAddress = _address("TCP", peer)
        transport = MemoryTransport(hostAddress=_address("TCP", local),
                                    peerAddress=peerAddress)
        protocol = self.factory.buildProtocol(peerAddress)
        if protocol is None:
            return None
        protocol.makeConnection(transport)
        return Connection(self, protocol, transport)

    def sendDatagram(self, data: bytes, peer=DEFAULT_PEER) -> list[bytes]:
        """
        Deliver one datagram from C{peer}; return what the service sent back to C{peer}.
        """
        if self.datagram is None:
            raise ValueError(f"service {self.spec.name!r} has no udp transport")
        before = len(self.udpPort.sent)
        self.datagram.datagramReceived(data, tuple(peer))
        return [d for d, addr in self.udpPort.sent[before:] if addr == tuple(peer)]

    def live(self, transport: str = "tcp") -> list[ConnectionRecord]:
        """
        The service's live connections (or C{"udp"} flows) as the registry has them.
        """
        return self.registry.select(self.spec.name, transport=transport)

    def closed(self) -> list[ConnectionRecord]:
        """
        The service's closed connections and flows, oldest first, with their reasons.
        """
        return self.registry.select(self.spec.name, state=CLOSED)

    def stop(self) -> None:
        """
        Stop the service as the server does when it stops listening.
        """
        if self.factory is not None:
            self.factory.doStop()
        if self.datagram is not None:
            self.datagram.doStop()
