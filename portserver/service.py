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
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from portserver import udp
from portserver.admission import Admission
from portserver.logfilter import quietPortChatter
from portserver.plan import Listener, Plan
from portserver.registry import CLOSED, SHUTDOWN, Registry
from portserver.tracking import (
    DENIED,
    TrackingDatagram,
    TrackingFactory,
)
from portserver.transport import FlowControlledTransport, WriteThroughTransport

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


#: What an operator can do about a privileged port this process may not bind.
PRIVILEGED_REMEDY = (
    "privileged ports need root or CAP_NET_BIND_SERVICE: start as root and drop "
    "privileges with `twistd --uid=USER --gid=GROUP portserver ...`, or grant the Python "
    "binary CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep'), or run unprivileged "
    "with `--port-offset N` (e.g. 10000)")


def bindFailure(listener: Listener, error: BaseException) -> tuple[str, str | None]:
    """
    What went wrong binding C{listener}: one line naming the service, transport,
    address, port and OS error, and the remedy an operator has for the usual causes
    (L{None} when there is none to give).
    """
    code, reason = _reason(error)
    line = f"cannot listen for service {listener.service!r}: {listener.describe()}: {reason}"
    remedy = None
    if code in (errno.EACCES, errno.EPERM) and listener.privileged:
        remedy = PRIVILEGED_REMEDY
    elif code == errno.EADDRINUSE:
        remedy = (f"another program holds {listener.transport} port {listener.port}: "
                  f"find it with `ss -lnp{'t' if listener.transport == 'tcp' else 'u'} "
                  f"'sport = :{listener.port}'`")
    elif code == errno.EADDRNOTAVAIL:
        remedy = f"{listener.interface} is not an address of this host"
    return line, remedy


def bindFailureMessage(listener: Listener, error: BaseException) -> str:
    """
    L{bindFailure} as one message: the line, then the remedy indented below it.
    """
    line, remedy = bindFailure(listener, error)
    return line if remedy is None else f"{line}\n  {remedy}"


def groupFailures(messages: list[str]) -> str:
    """
    Many failure messages (L{bindFailureMessage}'s, or any other) as one: each
    message's first line, in order, then each distinct remedy once (twelve privileged
    ports refused give twelve lines and one remedy, not the remedy twelve times).
    """
    lines, remedies = [], []
    for message in messages:
        first, *rest = message.split("\n")
        lines.append(first)
        for remedy in rest:
            if remedy not in remedies:
                remedies.append(remedy)
    return "\n".join(lines + remedies)


def preflight(listeners, family=socket.getaddrinfo) -> list[str]:
    """
    Try to bind each of C{listeners} with a plain socket, closed at once, and return a
    L{bindFailureMessage} for each that fails (port 0 always binds, and is skipped).

    C{twistd} binds in C{privilegedStartService}, after it has forked into the
    background and started its log, where a failure can only reach the log (and the
    daemon's parent prints a truncated repr of it). Run before that, in the
    foreground, this gives the operator the reasons at once, on the terminal.
    """
    failures = []
    for listener in listeners:
        if listener.port == 0:
            continue
        kind = socket.SOCK_STREAM if listener.transport == "tcp" else socket.SOCK_DGRAM
        try:
            info = family(listener.interface, listener.port, 0, kind)[0]
            with socket.socket(info[0], kind) as probe:
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if info[0] == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(info[4])
        except OSError as e:
            failures.append(bindFailureMessage(listener, e))
    return failures


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

    The class is also where portserver's flow control hooks in
    (L{FlowControlledTransport}: reading resumes once the output has drained), and where
    writes go straight to the socket when nothing is buffered
    (L{WriteThroughTransport}: no epoll round trip for a reply sent in one go).
    """
    transport = getattr(port, "transport", None)
    if isinstance(transport, type):
        port.transport = type(transport.__name__,
                              (WriteThroughTransport, FlowControlledTransport, transport), {
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


def _liveOf(factory) -> list:
    """
    The protocols of C{factory} (a L{TrackingFactory}) whose connection is live.
    """
    return [c for c in list(factory.live) if getattr(c, "connected", 0)]


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
            return TrackingFactory(spec.provider.buildFactory(spec, self.reactor),
                                   self.registry, spec.name, spec.protocol,
                                   listener.interface, limits=spec.limits,
                                   admission=admission,
                                   clock=self.reactor)
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
        Bind the port, unless it is bound already.

        @raise CannotListenError: when the OS refuses.
        @raise StartupError: when the plugin cannot build its factory.
        """
        if self.port is not None:
            return
        listener = self.listener
        served, self._built = self._built, None
        if served is None:
            served = self._buildChecked(listener)
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
                self._unsubscribe = self.registry.subscribe(self._connectionEvent)
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
            if any(getattr(c, "connected", 0) for c in factory.live):
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
            "{offset}, {privilege} port ({portClass})",
            service=l.service, protocol=l.protocol, transport=l.transport,
            host=l.interface, port=address.port if address else l.port,
            offset=(f" (well-known port {l.configuredPort})"
                    if l.configuredPort != l.port else ""),
            privilege="privileged" if l.privileged else "unprivileged",
            portClass=l.portClass, privileged=l.privileged,
            wellKnownPort=l.wellKnownPort, configuredPort=l.configuredPort)


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


SERVING = "serving"
DRAINING = "draining"
STOPPED = "stopped"


class ReloadError(Exception):
    """
    A reloaded configuration could not be applied; nothing was changed. C{errors} says
    why, one message each.
    """

    def __init__(self, errors):
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


@attrs.frozen
class ReloadReport:
    """
    What applying a reloaded configuration changed.

    @ivar added: the listeners that started listening; C{removed}: those that stopped
        (their connections drain); C{changed}: those that kept their socket and serve
        new connections with new settings; C{unchanged}: how many kept everything.
    @ivar denied: live connections closed because the new access rules deny their peer.
    @ivar warnings: settings that only a restart applies, and listeners that could not
        be bound once the ones they replace had closed.
    """

    generation: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: int = 0
    denied: int = 0
    warnings: tuple[str, ...] = ()

    def asDict(self) -> dict:
        return {"generation": self.generation, "added": list(self.added),
                "removed": list(self.removed), "changed": list(self.changed),
                "unchanged": self.unchanged, "denied": self.denied,
                "warnings": list(self.warnings)}

    def describe(self) -> str:
        parts = [f"{len(self.added)} listener(s) added", f"{len(self.removed)} removed",
                 f"{len(self.changed)} changed", f"{self.unchanged} unchanged"]
        if self.denied:
            parts.append(f"{self.denied} connection(s) closed by the new access rules")
        return ", ".join(parts)


def socketKey(listener: Listener) -> tuple:
    """
    What a reload matches listeners by: the socket (transport, interface, port), so a
    listener whose address is unchanged keeps its socket, whatever else changed. A
    listener on port 0 ("any free port") is matched by service too, and keeps the port
    it was given.
    """
    if listener.port == 0:
        return (listener.transport, listener.interface, 0, listener.service)
    return (listener.transport, listener.interface, listener.port)


def _restartOnly(old, new) -> list[str]:
    """
    Warnings for the settings of C{new} (a L{ServerConfig}) that differ from C{old} and
    take effect only at a restart.
    """
    warnings = []
    if old.status.listen != new.status.listen:
        warnings.append(f"status.listen changed to {new.status.listen!r}: the status "
                        f"service stays on {old.status.listen!r} until a restart")
    elif old.status != new.status:
        warnings.append("status settings (tokens) changed: they apply at the next restart")
    if old.registry != new.registry:
        warnings.append("registry settings changed: they apply at the next restart")
    return warnings


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
            reactor, plan.rule, closedLimit=settings.closedLimit, udpIdle=settings.udpIdle,
            udpMaxFlows=settings.udpMaxFlows)
        self.admissions = {spec.name: Admission(spec.name, spec.limits, spec.access, reactor,
                                                self.registry)
                           for spec in plan.config.services}
        self.listeners = [ListenerService(l, reactor, self.registry,
                                          self.admissions.get(l.service))
                          for l in plan.listeners]
        for child in self.listeners:
            child.setServiceParent(self)
        self._expiry = LoopingCall(self._expireFlows)
        self._expiry.clock = reactor
        self.state = SERVING
        self._drained = None
        self._endDrain = None
        self._drainEnds = None
        self.retiring: list[ListenerService] = []  # removed by a reload, draining
        # The config in force: its generation (1 as started, +1 per reload applied),
        # when it was loaded (reactor time), and the last reload's outcome (see
        # L{portserver.reload.Reloader}).
        self.generation = 1
        self.loadedAt = reactor.seconds()
        self.lastReload = None
        self.reloads = Counter()  # "applied" / "rejected" -> count

    def _expireFlows(self) -> None:
        """
        Close the UDP flows gone silent, and log the refusals not yet reported: dropped
        datagrams (loops, past the reply rate) are otherwise reported only with the next
        one, and a burst may have no next one.
        """
        self.registry.expireFlows()
        for admission in self.admissions.values():
            admission.flushReports()

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
        failures = bindEach(self.listeners)
        if failures:
            for child in self.listeners:
                child.unbind()
            raise StartupError(groupFailures(failures))
        self._noteOwnPorts()

    def _noteOwnPorts(self) -> None:
        """
        Tell the registry which ports this server listens on now, for the UDP loop
        guard (L{portserver.udpguard}): a datagram from one of them is never answered.
        """
        self.registry.ownPorts = frozenset(
            child.bound.port for child in self.listeners if child.port is not None)

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

    # -- reloading ------------------------------------------------------------------------------

    def reload(self, plan: Plan) -> Deferred:
        """
        Apply C{plan} (a reloaded configuration) as a difference from the one served:

          - a listener whose socket is unchanged (L{socketKey}) keeps it, so the port
            never refuses; new connections get the new plugin options, limits and rules,
            live ones keep what they were accepted with;
          - new listeners start listening; removed ones stop, and their connections
            drain for C{shutdown.drain} seconds before the rest are aborted;
          - live connections whose peer the new access rules deny are closed
            (C{"denied"}).

        Every new plugin factory is built and every new socket bound before anything
        changes; if any fails, those bound are released and nothing changes.

        @return: a L{Deferred} firing with a L{ReloadReport} (once listeners that take
            over a removed listener's port are bound too), or failing with
            L{ReloadError}.
        """
        try:
            report, later, unbound = self._apply(plan)
        except ReloadError:
            return fail()
        if not later:
            return succeed(report)
        done = DeferredList(unbound)
        done.addCallback(lambda _: self._bindLater(later, report))
        return done

    def _apply(self, plan: Plan):
        if self.state != SERVING:
            raise ReloadError([f"the server is {self.state}"])
        current = {socketKey(child.listener): child for child in self.listeners}
        kept, added = [], []
        for listener in plan.listeners:
            child = current.pop(socketKey(listener), None)
            if child is None:
                added.append(listener)
            else:
                kept.append((child, listener))
        removed = list(current.values())
        admissions = {}
        for spec in plan.config.services:
            admission = self.admissions.get(spec.name)
            if admission is None:
                admission = Admission(spec.name, spec.limits, spec.access, self.reactor,
                                      self.registry)
            admissions[spec.name] = admission

        # 1. Build and bind what is new; on any failure, undo it and change nothing.
        errors, prepared = [], []
        for child, listener in kept:
            try:
                prepared.append((child, listener,
                                 child.prepare(listener, admissions[listener.service])))
            except StartupError as e:
                errors.append(str(e))
        blocked = {(c.listener.transport, c.listener.port) for c in removed}
        fresh = [ListenerService(l, self.reactor, self.registry, admissions[l.service])
                 for l in added]
        now = [c for c in fresh
               if c.listener.port == 0 or (c.listener.transport, c.listener.port) not in blocked]
        later = [c for c in fresh if c not in now]
        for child in fresh:
            try:
                child.prebuild()
            except StartupError as e:
                errors.append(str(e))
        if not errors:
            errors = bindEach(now)
        if errors:
            for child in now:
                child.unbind()
            raise ReloadError(errors)

        # 2. Commit (nothing below can fail on the config's account).
        for spec in plan.config.services:
            if spec.name in self.admissions:
                admissions[spec.name].update(spec.limits, spec.access)
        changed = []
        for child, listener, served in prepared:
            child.replace(listener, admissions[listener.service], served)
            if served is not None:
                changed.append(listener.describe())
        for child in now:
            child.setServiceParent(self)
        for child in removed:
            self._retire(child, plan.config.shutdown.drain)
        order = {socketKey(l): i for i, l in enumerate(plan.listeners)}
        self.listeners = sorted([c for c, _ in kept] + fresh,
                                key=lambda c: order[socketKey(c.listener)])
        self._noteOwnPorts()
        warnings = _restartOnly(self.plan.config, plan.config)
        self.plan, self.admissions = plan, admissions
        self.generation += 1
        self.loadedAt = self.reactor.seconds()
        denied = self._closeDenied()
        if any(l.transport == "udp" for l in plan.listeners) and not self._expiry.running:
            self._expiry.start(min(max(self.registry.udpIdle / 4, 0.5), 30), now=False)
        report = ReloadReport(
            generation=self.generation, added=tuple(c.listener.describe() for c in fresh),
            removed=tuple(c.listener.describe() for c in removed),
            changed=tuple(changed), unchanged=len(kept) - len(changed), denied=denied,
            warnings=tuple(warnings))
        return report, later, [child.unbound for child in removed]

    def _bindLater(self, later: list[ListenerService], report: ReloadReport) -> ReloadReport:
        """
        Bind the listeners that take over a removed listener's port, now that it is
        closed; one that cannot is left out (and named in the report's warnings).
        """
        warnings = list(report.warnings)
        for child in later:
            failed = bindEach([child])
            if failed:
                warnings += failed
                log.error("Reload: {message}", message=failed[0])
                self.listeners.remove(child)
            else:
                child.setServiceParent(self)
        self._noteOwnPorts()
        return attrs.evolve(report, warnings=tuple(warnings))

    def _retire(self, child: ListenerService, drain: float) -> None:
        """
        Stop C{child} listening (a reload removed it); its connections have C{drain}
        seconds to finish before the rest are aborted.
        """
        child.unbound = maybeDeferred(child.disownServiceParent)
        self.retiring = [c for c in self.retiring if c.trackers()] + [child]

        def over():
            child.drainCall = None
            aborted = child.abortConnections()
            if aborted:
                log.info("Removed listener {listener}: drain over, aborting {aborted} "
                         "connection(s) still open", listener=child.listener.describe(),
                         aborted=aborted)
            if child in self.retiring:
                self.retiring.remove(child)
        child.drainCall = self.reactor.callLater(drain, over)

    def _closeDenied(self) -> int:
        """
        Close every live connection whose peer its service's access rules now deny.
        """
        closed = 0
        for child in self.listeners + self.retiring:
            for tracker in child.trackers():
                admission = tracker.factory.admission
                record = getattr(tracker, "record", None)
                if admission is None or record is None:
                    continue  # a refusal being sent its banner, or not admitted
                if not admission.allows(record.remote.host) \
                        and tracker.closeForLimit(DENIED):
                    closed += 1
        return closed

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
        for child in self.retiring:  # the server's drain takes over from theirs
            if child.drainCall is not None and child.drainCall.active():
                child.drainCall.cancel()
            child.drainCall = None
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
            aborted = sum(child.abortConnections()
                          for child in self.listeners + self.retiring
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

    @ivar quiet: drop Twisted's own port chatter from the log once start-up begins
        (L{portserver.logfilter}); set by C{makeService} under twistd only.
    """

    quiet = False

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
        if self.quiet:
            quietPortChatter()
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
