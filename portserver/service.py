"""
The service tree: L{PortServer}, a L{MultiService} with one L{ListenerService} per listener.

Ports are bound in C{privilegedStartService}, which C{twistd} calls before it drops to
C{--uid}/C{--gid}, so ports below 1024 can be bound as root and served unprivileged. Unlike
Twisted's C{StreamServerEndpointService}, which only logs a failed listen and runs on
without the port, a failed bind here stops start-up with L{StartupError}.
"""

from __future__ import annotations

import errno
import socket

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from portserver import udp
from portserver.plan import Listener, Plan
from portserver.registry import SHUTDOWN, Registry
from portserver.tracking import TrackingDatagram, TrackingFactory

log = Logger()

# The accept queue of every TCP listener. Twisted's default of 50 overflows under a burst
# of connections, and an overflowing queue drops SYNs, which clients retry only after a
# second; like systemd's Backlog= and nginx, ask for the most the kernel allows (it caps
# this at net.core.somaxconn).
BACKLOG = socket.SOMAXCONN


class StartupError(Exception):
    """
    portserver cannot start; the message says why, for an operator, in full.
    """


def _reason(error: BaseException) -> tuple[int | None, str]:
    socketError = getattr(error, "socketError", None) or error
    code = getattr(socketError, "errno", None)
    text = getattr(socketError, "strerror", None) or str(socketError)
    return code, (f"[Errno {code}] {text}" if code else text)


def bindFailureMessage(listener: Listener, error: BaseException) -> str:
    """
    One message naming the service, transport, address, port and OS error, with the
    remedies an operator has for the usual causes.
    """
    code, reason = _reason(error)
    message = f"cannot listen for service {listener.service!r}: {listener.describe()}: {reason}"
    if code in (errno.EACCES, errno.EPERM) and listener.privileged:
        message += (
            f"\n  port {listener.port} is privileged on this host; either start as root and "
            "drop privileges with `twistd --uid=USER --gid=GROUP portserver ...`, or grant "
            "the Python binary CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep'), or "
            "run unprivileged with `--port-offset N` (e.g. 10000)")
    elif code == errno.EADDRINUSE:
        message += (f"\n  another program holds {listener.transport} port {listener.port}: "
                    f"find it with `ss -lnp{'t' if listener.transport == 'tcp' else 'u'} "
                    f"'sport = :{listener.port}'`")
    elif code == errno.EADDRNOTAVAIL:
        message += f"\n  {listener.interface} is not an address of this host"
    return message


def ownTransportClass(port) -> None:
    """
    Give a listening C{twisted.internet.tcp.Port} a subclass of its transport class of
    its own, before it accepts anything.

    CPython shares one table of attribute names among the instance dicts of a class, as
    long as every instance sets its attributes in the same order. Connections of
    different protocols (echo, an HTTP status request, ...) set them in different
    orders, and once the shared table no longer fits, every later connection's dict is
    a full one: about 0.7 KiB more per connection in a server holding three kinds (see
    bench/README.md). A class per listener keeps each listener's connections alike.
    """
    transport = getattr(port, "transport", None)
    if isinstance(transport, type):
        port.transport = type(transport.__name__, (transport,), {
            "__module__": transport.__module__, "__doc__": transport.__doc__})


class BindingService(Service):
    """
    A service that owns one listening port: bound in C{privilegedStartService} (or in
    C{startService}, when embedded without twistd), released when stopped.

    @ivar port: the L{IListeningPort} while bound, else L{None}.
    """

    port = None

    def bind(self) -> None:
        """
        Listen, unless listening already; raise L{StartupError} (or
        L{CannotListenError}) when that is impossible.
        """
        raise NotImplementedError

    def unbind(self):
        """
        Stop listening; a L{Deferred} that fires when the port is closed.
        """
        port, self.port = self.port, None
        if port is None:
            return maybeDeferred(lambda: None)
        return maybeDeferred(port.stopListening)

    @property
    def address(self):
        """
        The bound address (an L{IPv4Address} or L{IPv6Address}), or L{None}.
        """
        return self.port.getHost() if self.port is not None else None

    def privilegedStartService(self):
        self.bind()
        super().privilegedStartService()

    def startService(self):
        self.bind()
        super().startService()

    def stopService(self):
        super().stopService()
        return self.unbind()


class ListenerService(BindingService):
    """
    One passive open: builds the plugin's factory (or datagram protocol) and binds it.
    """

    def __init__(self, listener: Listener, reactor, registry: Registry):
        self.listener = listener
        self.reactor = reactor
        self.registry = registry
        self.port = None
        self.setName(f"{listener.service}/{listener.transport}")

    def build(self):
        """
        Build what the plugin serves this listener with, behind the tracking layer.
        """
        spec = self.listener.spec
        if self.listener.transport == "tcp":
            return TrackingFactory(spec.provider.buildFactory(spec, self.reactor),
                                   self.registry, spec.name, spec.protocol,
                                   self.listener.interface)
        return TrackingDatagram(spec.provider.buildDatagramProtocol(spec, self.reactor),
                                self.registry, spec.name, spec.protocol)

    def bind(self) -> None:
        """
        Bind the port, unless it is bound already.

        @raise CannotListenError: when the OS refuses.
        @raise StartupError: when the plugin cannot build its factory.
        """
        if self.port is not None:
            return
        listener = self.listener
        try:
            served = self.build()
        except Exception as e:
            raise StartupError(
                f"service {listener.service!r}: protocol {listener.protocol!r} failed to "
                f"build its {listener.transport} side: {type(e).__name__}: {e}") from e
        if listener.transport == "tcp":
            self.port = self.reactor.listenTCP(listener.port, served, backlog=BACKLOG,
                                               interface=listener.interface)
            ownTransportClass(self.port)
        else:
            self.port = udp.listenUDP(self.reactor, listener.port, served, listener.interface)

    @property
    def bound(self) -> Listener:
        """
        The listener as bound: with the port the OS gave when the plan said 0.
        """
        address = self.address
        if address is None or address.port == self.listener.port:
            return self.listener
        return attrs.evolve(self.listener, port=address.port)

    def startService(self):
        super().startService()
        l = self.listener
        address = self.address
        log.info(
            "Listening: service {service} ({protocol}) on {transport} {host}:{port}"
            "{offset}, {privilege} port ({portClass})",
            service=l.service, protocol=l.protocol, transport=l.transport,
            host=l.interface, port=address.port if address else l.port,
            offset=(f" (well-known port {l.configuredPort})"
                    if l.configuredPort != l.port else ""),
            privilege="privileged" if l.privileged else "unprivileged",
            portClass=l.portClass, privileged=l.privileged,
            wellKnownPort=l.wellKnownPort, configuredPort=l.configuredPort)


class PortServer(MultiService):
    """
    Every listener of a L{Plan}, bound all at once or not at all.
    """

    def __init__(self, plan: Plan, reactor, registry: Registry | None = None):
        super().__init__()
        self.plan = plan
        self.reactor = reactor
        settings = plan.config.registry
        self.registry = registry or Registry(
            reactor, plan.rule, closedLimit=settings.closedLimit, udpIdle=settings.udpIdle)
        self.listeners = [ListenerService(l, reactor, self.registry) for l in plan.listeners]
        for child in self.listeners:
            child.setServiceParent(self)
        self._expiry = LoopingCall(self.registry.expireFlows)
        self._expiry.clock = reactor

    def boundListeners(self) -> list[Listener]:
        """
        Every listener as bound (actual ports), in plan order.
        """
        return [child.bound for child in self.listeners]

    def listenerStates(self) -> list[dict]:
        """
        Every listener as a plain dict with its live connection (or flow) count.
        """
        counts = self.registry.liveCounts()
        result = []
        for listener in self.boundListeners():
            row = listener.asDict()
            row["connections"] = counts.get(
                (listener.service, listener.transport, listener.port), 0)
            result.append(row)
        return result

    def bindAll(self) -> None:
        """
        Bind every listener; if any fails, release those bound and raise one
        L{StartupError} naming every failure.
        """
        failures = []
        for child in self.listeners:
            try:
                child.bind()
            except CannotListenError as e:
                failures.append(bindFailureMessage(child.listener, e))
            except StartupError as e:
                failures.append(str(e))
        if failures:
            for child in self.listeners:
                child.unbind()
            raise StartupError("\n".join(failures))

    def privilegedStartService(self):
        self.bindAll()
        super().privilegedStartService()

    def startService(self):
        self.bindAll()
        self.registry.shuttingDown = False
        super().startService()
        if any(l.transport == "udp" for l in self.plan.listeners):
            interval = min(max(self.registry.udpIdle / 4, 0.5), 30)
            self._expiry.start(interval, now=False)
        self.reactor.callWhenRunning(self._ready)

    def stopService(self):
        self.registry.shuttingDown = True
        if self._expiry.running:
            self._expiry.stop()
        stopped = super().stopService()
        self.registry.closeFlows(SHUTDOWN)  # no more datagrams can arrive
        return stopped

    def _ready(self):
        log.info("portserver ready: {count} listener(s) for {services} service(s) from "
                 "{config}", count=len(self.listeners),
                 services=len(self.plan.config.services), config=self.plan.config.path)

    def addressOf(self, service: str, transport: str = "tcp"):
        """
        The bound address of a service's listener on C{transport}, or L{None}.
        """
        for child in self.listeners:
            if child.listener.service == service and child.listener.transport == transport:
                return child.address
        return None


class ServerTree(MultiService):
    """
    The whole server (the L{PortServer} and the status service): every child starts, or
    start-up fails with L{StartupError} and what had already bound is released.
    """

    def _startAll(self, method: str) -> None:
        started = []
        try:
            for child in self:
                getattr(child, method)()
                started.append(child)
        except StartupError:
            for child in reversed(started):
                child.stopService()
            raise

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self._startAll("privilegedStartService")

    def startService(self):
        Service.startService(self)
        self._startAll("startService")
