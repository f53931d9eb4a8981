"""
The service tree: L{PortServer}, a L{MultiService} with one L{ListenerService} per listener.

Ports are bound in C{privilegedStartService}, which C{twistd} calls before it drops to
C{--uid}/C{--gid}, so ports below 1024 can be bound as root and served unprivileged. Unlike
Twisted's C{StreamServerEndpointService}, which only logs a failed listen and runs on
without the port, a failed bind here stops start-up with L{StartupError}.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import Counter

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from portserver import udp
from portserver.admission import Admission
from portserver.plan import Listener, Plan
from portserver.registry import CLOSED, SHUTDOWN, Registry
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


# Refusals for lack of file descriptors (EMFILE: this process; ENFILE: the whole system).
NO_DESCRIPTORS = "no-descriptors"
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _Reserve:
    """
    One spare file descriptor (C{/dev/null}), shared by every listener: out of
    descriptors, a listener closes it, accepts and closes what waits in its queue (so
    those clients see a prompt close rather than a hang), and opens it again.
    """

    fd: int | None = None

    def reserve(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # still exhausted: try again next time

    def release(self) -> bool:
        fd, self.fd = self.fd, None
        if fd is None:
            return False
        os.close(fd)
        return True


_reserve = _Reserve()


class AcceptingPort(tcp.Port):
    """
    A TCP listening port that survives running out of file descriptors.

    Twisted's C{Port.doRead} logs a failed C{accept} (EMFILE, ENFILE, ...) and returns;
    the connection stays queued, so the (level-triggered) reactor calls it again at once:
    a busy loop, logging each time. Here the listener sheds the queue (through the
    spare descriptor), stops reading, and tries again after a back-off of C{MIN_PAUSE}
    doubling to C{MAX_PAUSE} seconds; it logs at most once a second, with counts.

    @ivar refused: called with the number of queued connections closed unserved.
    """

    MIN_PAUSE = 0.1
    MAX_PAUSE = 1.0
    LOG_INTERVAL = 1.0

    refused = staticmethod(lambda count: None)
    description = ""
    _pause = 0.0
    _resume = None
    _lastLog = None
    _failures = 0  # accepts failed since the last log line
    _shed = 0  # connections closed unserved since the last log line

    def startListening(self):
        super().startListening()
        _reserve.reserve()

    def doRead(self):
        # As tcp.Port.doRead (accept up to numberAccepts, scaled to traffic), with
        # descriptor exhaustion handled by _exhausted.
        accepted = 0
        try:
            for _ in range(self.numberAccepts):
                try:
                    skt, addr = self.socket.accept()
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        break
                    if e.errno in (errno.EPERM, errno.ECONNABORTED):
                        continue  # netfilter refused it, or the client gave up
                    if e.errno in _EXHAUSTED:
                        self._exhausted(e.errno)
                        return
                    raise
                accepted += 1
                if self._pause:
                    self._recovered()
                if len(addr) == 4:  # IPv6: keep the scope id
                    host = socket.getnameinfo(
                        addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                    addr = (host[0], *addr[1:])
                protocol = self.factory.buildProtocol(self._buildAddr(addr))
                if protocol is None:
                    skt.close()
                    continue
                s = self.sessionno
                self.sessionno = s + 1
                protocol.makeConnection(self.transport(skt, protocol, addr, self, s,
                                                       self.reactor))
        except BaseException:
            log.failure("Accepting on {port} failed", port=self.description)
        if accepted == self.numberAccepts:
            self.numberAccepts += 20
        else:
            self.numberAccepts = max(1, accepted)

    def _exhausted(self, code: int) -> None:
        shed = 0
        if _reserve.release():
            try:
                for _ in range(1000):  # bounded: a flood cannot hold the reactor here
                    try:
                        skt, _ = self.socket.accept()
                    except OSError:
                        break  # the queue is empty (or another thread took the slot)
                    skt.close()
                    shed += 1
            finally:
                _reserve.reserve()
        if shed:
            self.refused(shed)
        self._failures += 1
        self._shed += shed
        self._pause = min(max(self._pause * 2, self.MIN_PAUSE), self.MAX_PAUSE)
        now = self.reactor.seconds()
        if self._lastLog is None or now - self._lastLog >= self.LOG_INTERVAL:
            log.warn("Out of file descriptors ({error}) on {port}: {failures} failed "
                     "accept(s), {shed} queued connection(s) closed unserved since the last "
                     "report; accepting again in {pause:.1f}s",
                     error=errno.errorcode.get(code, code), port=self.description,
                     failures=self._failures, shed=self._shed, pause=self._pause)
            self._lastLog, self._failures, self._shed = now, 0, 0
        self.stopReading()
        self._resume = self.reactor.callLater(self._pause, self._resumeReading)

    def _resumeReading(self) -> None:
        self._resume = None
        if self.connected and not self.disconnecting:
            self.startReading()

    def _recovered(self) -> None:
        log.info("Descriptors available again on {port}: accepting ({failures} failed "
                 "accept(s), {shed} connection(s) closed unserved since the last report)",
                 port=self.description, failures=self._failures, shed=self._shed)
        self._pause, self._lastLog, self._failures, self._shed = 0.0, None, 0, 0

    def connectionLost(self, reason):
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().connectionLost(reason)


def _stockListenTCP(reactor) -> bool:
    """
    Whether C{reactor.listenTCP} is Twisted's posix one (C{tcp.Port(...).startListening()}),
    which L{AcceptingPort} can stand in for; not a test's memory reactor.
    """
    return (isinstance(reactor, PosixReactorBase)
            and type(reactor).listenTCP is PosixReactorBase.listenTCP)


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

    def __init__(self, listener: Listener, reactor, registry: Registry, admission=None):
        self.listener = listener
        self.reactor = reactor
        self.registry = registry
        # The service's L{portserver.admission.Admission}, shared by its listeners.
        self.admission = admission
        self.port = None
        self.served = None  # the TrackingFactory (tcp) or TrackingDatagram (udp) bound
        self.refused: Counter = Counter()  # reason -> count, when the registry has none
        self.setName(f"{listener.service}/{listener.transport}")

    def build(self):
        """
        Build what the plugin serves this listener with, behind the tracking layer.
        """
        spec = self.listener.spec
        if self.listener.transport == "tcp":
            return TrackingFactory(spec.provider.buildFactory(spec, self.reactor),
                                   self.registry, spec.name, spec.protocol,
                                   self.listener.interface, limits=spec.limits,
                                   admission=self.admission,
                                   clock=self.reactor)
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
        self.served = served
        if listener.transport == "tcp":
            if _stockListenTCP(self.reactor):
                port = AcceptingPort(listener.port, served, BACKLOG, listener.interface,
                                     self.reactor)
                port.description = listener.describe()
                port.refused = self._refusedForDescriptors
                port.startListening()
                self.port = port
            else:
                self.port = self.reactor.listenTCP(listener.port, served, backlog=BACKLOG,
                                                   interface=listener.interface)
            ownTransportClass(self.port)
        else:
            self.port = udp.listenUDP(self.reactor, listener.port, served, listener.interface)

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
        if not isinstance(self.served, TrackingFactory):
            return 0
        live = [c for c in list(self.served.live) if getattr(c, "connected", 0)]
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
            "{offset}, {privilege} port ({portClass})",
            service=l.service, protocol=l.protocol, transport=l.transport,
            host=l.interface, port=address.port if address else l.port,
            offset=(f" (well-known port {l.configuredPort})"
                    if l.configuredPort != l.port else ""),
            privilege="privileged" if l.privileged else "unprivileged",
            portClass=l.portClass, privileged=l.privileged,
            wellKnownPort=l.wellKnownPort, configuredPort=l.configuredPort)


SERVING = "serving"
DRAINING = "draining"
STOPPED = "stopped"


class PortServer(MultiService):
    """
    Every listener of a L{Plan}, bound all at once or not at all.

    @ivar state: C{"serving"}, C{"draining"} (stopped listening, waiting for live
        connections to finish) or C{"stopped"}.
    """

    # Seconds to wait, once the drain is over, for aborted connections to close.
    ABORT_GRACE = 1.0

    def __init__(self, plan: Plan, reactor, registry: Registry | None = None):
        super().__init__()
        self.plan = plan
        self.reactor = reactor
        settings = plan.config.registry
        self.registry = registry or Registry(
            reactor, plan.rule, closedLimit=settings.closedLimit, udpIdle=settings.udpIdle)
        self.admissions = {spec.name: Admission(spec.name, spec.limits, spec.access, reactor,
                                                self.registry)
                           for spec in plan.config.services}
        self.listeners = [ListenerService(l, reactor, self.registry,
                                          self.admissions.get(l.service))
                          for l in plan.listeners]
        for child in self.listeners:
            child.setServiceParent(self)
        self._expiry = LoopingCall(self.registry.expireFlows)
        self._expiry.clock = reactor
        self.state = SERVING
        self._drained = None
        self._endDrain = None
        self._drainEnds = None

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
        self.state = SERVING
        super().startService()
        if any(l.transport == "udp" for l in self.plan.listeners):
            interval = min(max(self.registry.udpIdle / 4, 0.5), 30)
            self._expiry.start(interval, now=False)
        self.reactor.callWhenRunning(self._ready)

    def stopService(self):
        """
        Stop at once accepting on every listener (all in this reactor turn) and close the
        UDP flows; let live TCP connections finish for up to C{shutdown.drain} seconds,
        then abort those left (reason C{"shutdown"}).

        @return: a L{Deferred} that fires when every listener is closed and the drain is
            over (at once when no connection is live).
        """
        if self._drained is not None:
            return self._drained
        if self._expiry.running:
            self._expiry.stop()
        stopped = super().stopService()
        self.registry.closeFlows(SHUTDOWN)  # no more datagrams can arrive
        drained = self._drained = DeferredList([stopped, self._drain()])
        drained.addCallback(self._stopped)
        return drained

    def _stopped(self, result):
        self.state = STOPPED
        self._drained = None
        return None

    def _drain(self) -> Deferred:
        live = len(self.registry)
        if not live:
            self.registry.shuttingDown = True
            return succeed(None)
        drain = self.plan.config.shutdown.drain
        self.state = DRAINING
        done = Deferred()
        self._drainEnds = self.reactor.seconds() + drain
        log.info("Stopping: no longer accepting; waiting up to {drain}s for {live} "
                 "connection(s) to finish", drain=drain, live=live)

        def finish():
            if done.called:
                return
            unsubscribe()
            for call in (deadline, grace):
                if call and call.active():
                    call.cancel()
            self._endDrain = None
            done.callback(None)

        def closed(event, record):
            if event == CLOSED and record.transport == "tcp" and not len(self.registry):
                # After this connection's close is over, not inside it.
                self.reactor.callLater(0, finish)

        def endDrain():
            nonlocal grace
            if deadline.active():
                deadline.cancel()
            self._endDrain = None
            self.registry.shuttingDown = True
            aborted = sum(child.abortConnections() for child in self.listeners
                          if child.listener.transport == "tcp")
            log.info("Drain over: aborting {aborted} connection(s) still open",
                     aborted=aborted)
            if not len(self.registry):
                self.reactor.callLater(0, finish)
            else:  # aborted connections close in the next reactor turn; never hang
                grace = self.reactor.callLater(self.ABORT_GRACE, finish)

        grace = None
        unsubscribe = self.registry.subscribe(closed)
        deadline = self.reactor.callLater(drain, endDrain)
        self._endDrain = endDrain
        return done

    def endDrain(self) -> bool:
        """
        End a drain now, aborting the connections left (as a second stop signal does);
        return whether a drain was under way.
        """
        if self._endDrain is None:
            return False
        self._endDrain()
        return True

    def drainState(self) -> dict:
        """
        C{{"state": "serving" | "draining" | "stopped"}}, and while draining, how many
        TCP connections are left (C{"remaining"}) and the seconds until they are
        aborted (C{"drain_left"}).
        """
        result = {"state": self.state}
        if self.state == DRAINING:
            result["remaining"] = len(self.registry)
            result["drain_left"] = max(0.0, self._drainEnds - self.reactor.seconds())
        return result

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

    def stopService(self):
        """
        Stop every L{PortServer} first and wait for its drain, then the rest (the status
        service answers during the drain; the connection log records its closes), each
        group in reverse order.
        """
        Service.stopService(self)
        children = list(self)[::-1]
        draining = [c for c in children if isinstance(c, PortServer)]
        rest = [c for c in children if not isinstance(c, PortServer)]
        first = DeferredList([maybeDeferred(c.stopService) for c in draining])
        first.addCallback(
            lambda _: DeferredList([maybeDeferred(c.stopService) for c in rest]))
        return first
