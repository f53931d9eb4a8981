"""
Listener services: one L{ListenerService} per listener of the plan, serving it through
the tracking layer, and the reload operations on one (a new factory on the same socket;
the factories it replaced, stopped once their connections end).
"""

from __future__ import annotations

from collections import Counter

import attrs
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from portserver import udp
from portserver.accepting import NO_DESCRIPTORS, listenTCP
from portserver.activation import Activation, serveInherited
from portserver.datagrams import TrackingDatagram
from portserver.plan import Listener
from portserver.proxyheader import ProxyHeaders
from portserver.registry import CLOSED, Registry
from portserver.startup import BindingService, StartupError, bindFailureMessage
from portserver.tracking import TrackingFactory

log = Logger()


def _liveOf(factory) -> list:
    """
    The protocols of C{factory} (a L{TrackingFactory}) whose connection is live.
    """
    return factory.connections()


class ListenerService(BindingService):
    """
    One passive open: builds the plugin's factory (or datagram protocol) and binds it,
    or serves the socket of its service and transport that C{activation} passed.

    @ivar inherited: the L{InheritedSocket} served, or L{None} (bound here).
    """

    def __init__(self, listener: Listener, reactor, registry: Registry, admission=None,
                 activation: Activation | None = None):
        self.listener = listener
        self.activation = activation or Activation()
        self.inherited = None
        self.reactor = reactor
        self.registry = registry
        # The service's L{portserver.admission.Admission}, shared by its listeners.
        self.admission = admission
        self.port = None
        self.served = None  # the TrackingFactory (tcp) or TrackingDatagram (udp) bound
        self.retired: list[TrackingFactory] = []  # replaced by a reload, still serving
        self._built = None  # built ahead of bind() by prebuild()
        self._unsubscribe = None
        self.drainCall = None  # the abort at the end of a removed listener's drain
        self.unbound = None  # fires once a reload that removed this listener closed it
        self.refused: Counter = Counter()  # reason -> count, when the registry has none

    def build(self, listener: Listener | None = None, admission=None):
        """
        Build what the plugin serves C{listener} (by default this one) with, behind the
        tracking layer, admitting by C{admission} (by default this one's).
        """
        listener = listener or self.listener
        admission = admission or self.admission
        spec = listener.spec
        if listener.transport == "tcp":
            factory = TrackingFactory(spec.provider.buildFactory(spec, self.reactor),
                                      self.registry, spec.name, spec.protocol,
                                      listener.interface, limits=spec.limits,
                                      admission=admission,
                                      clock=self.reactor)
            if spec.proxyProtocol is not None:
                factory.proxyHeaders = ProxyHeaders(spec.proxyProtocol, factory)
            return factory
        served = TrackingDatagram(spec.provider.buildDatagramProtocol(spec, self.reactor),
                                  self.registry, spec.name, spec.protocol)
        served.admission = admission
        return served

    def _buildChecked(self, listener: Listener, admission=None, build=None):
        """
        C{build()} (by default: L{build} of C{listener}), with a plugin's failure turned
        into a L{StartupError} naming the service.
        """
        try:
            return build() if build is not None else self.build(listener, admission)
        except Exception as e:
            raise StartupError(
                f"service {listener.service!r}: protocol {listener.protocol!r} failed to "
                f"build its {listener.transport} side: {type(e).__name__}: {e}") from e

    def prebuild(self) -> None:
        """
        Build now what L{bind} will serve (so that a plugin's failure is known before
        anything else changes).

        @raise StartupError: when the plugin cannot build its factory.
        """
        self._built = self._buildChecked(self.listener)

    def bind(self) -> None:
        """
        Bind the port, unless it is bound already; when socket activation passed a
        socket for this listener's service and transport, serve that instead.

        @raise CannotListenError: when the OS refuses.
        @raise StartupError: when the plugin cannot build its factory, or the
            inherited socket is not the listener's (address, family, type).
        """
        if self.port is not None:
            return
        listener = self.listener
        inherited = self.activation.socketFor(listener.service, listener.transport)
        if inherited is not None:
            mismatch = inherited.mismatch(listener)
            if mismatch is not None:
                raise StartupError(f"service {listener.service!r}: {mismatch[1]}")
        served, self._built = self._built, None
        if served is None:
            served = self._buildChecked(listener)
        self.served = served
        self.inherited = inherited
        if inherited is not None:
            self.port = serveInherited(self.reactor, inherited, served, listener.describe(),
                                       self._refusedForDescriptors)
        elif listener.transport == "tcp":
            self.port = listenTCP(self.reactor, listener.port, served, listener.interface,
                                  listener.describe(), self._refusedForDescriptors)
        else:
            self.port = udp.listenUDP(self.reactor, listener.port, served, listener.interface)

    # -- reloading ------------------------------------------------------------------------------

    def prepare(self, listener: Listener, admission):
        """
        What to serve C{listener} (a reloaded config's listener for this socket) with:
        L{None} when its service's settings are those served already, else a new
        factory (tcp, admitting by C{admission}) or datagram protocol (udp), not yet in
        use.

        @raise StartupError: when the plugin cannot build it.
        """
        old, new = self.listener.spec, listener.spec
        if old == new and old.provider is new.provider:
            return None
        if listener.transport == "tcp":
            return self._buildChecked(listener, admission)
        return self._buildChecked(listener, build=lambda: new.provider.buildDatagramProtocol(
            new, self.reactor))

    def replace(self, listener: Listener, admission, served) -> None:
        """
        Serve new connections (or datagrams) on the same socket as C{listener} says,
        with C{served} from L{prepare} (L{None}: keep what is served). Live connections
        keep the factory, limits and plugin they were accepted with; a replaced factory
        is stopped once its last connection has ended.
        """
        self.listener = listener
        self.admission = admission
        if isinstance(self.served, TrackingDatagram):
            if served is None:
                self.served.admission = admission
            else:
                self.served.replace(served, listener.service, listener.protocol, admission)
            return
        if served is None:
            return
        old = self.served
        served.doStart()
        if self.port is not None:
            self.port.factory = served
        self.served = served
        if old is not None:
            self.retired.append(old)
            if self._unsubscribe is None:
                self._unsubscribe = self.registry.subscribe(self._connectionEvent,
                                                             opens=False)
            self._stopRetired()

    def _connectionEvent(self, event, record) -> None:
        if event == CLOSED and record.transport == "tcp":
            # After this connection's close is over, not inside it.
            self.reactor.callLater(0, self._stopRetired)

    def _stopRetired(self) -> None:
        keep = []
        for factory in self.retired:
            # any(): stops at the first live connection, so a close costs O(1) while
            # thousands of old connections are still open.
            if factory.hasConnections():
                keep.append(factory)
            else:
                factory.doStop()
        self.retired = keep
        if not keep and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def trackers(self) -> list:
        """
        The live connections of this listener (under every factory it has served
        with), as their trackers.
        """
        factories = [self.served] if isinstance(self.served, TrackingFactory) else []
        return [c for factory in factories + self.retired for c in _liveOf(factory)]

    def _refusedForDescriptors(self, count: int) -> None:
        refuse = getattr(self.registry, "refuse", None)
        for _ in range(count):
            if refuse is not None:
                refuse(self.listener.service, NO_DESCRIPTORS)
            else:
                self.refused[NO_DESCRIPTORS] += 1

    def abortConnections(self) -> int:
        """
        Abort every live connection of this listener; return how many.
        """
        live = self.trackers()
        for connection in live:
            connection.abortConnection()
        return len(live)

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
            "{offset}, {privilege} port ({portClass}){inherited}",
            service=l.service, protocol=l.protocol, transport=l.transport,
            host=l.interface, port=address.port if address else l.port,
            offset=(f" (well-known port {l.configuredPort})"
                    if l.configuredPort != l.port else ""),
            privilege="privileged" if l.privileged else "unprivileged",
            portClass=l.portClass, privileged=l.privileged,
            wellKnownPort=l.wellKnownPort, configuredPort=l.configuredPort,
            inherited=(f", inherited socket {self.inherited.describe()}"
                    if self.inherited is not None else ""))


def bindEach(children: list[ListenerService]) -> list[str]:
    """
    Bind each of C{children}; return a message for each that failed (see
    L{bindFailureMessage}).
    """
    failures = []
    for child in children:
        try:
            child.bind()
        except CannotListenError as e:
            failures.append(bindFailureMessage(child.listener, e))
        except StartupError as e:
            failures.append(str(e))
    return failures
