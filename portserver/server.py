"""
The server tree: L{PortServer}, every listener of a plan bound all at once or not at
all, reloaded as a difference and drained at shutdown; and L{ServerTree}, the whole
server (the port server and the status service), started all or nothing.
"""

from __future__ import annotations

from collections import Counter

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from portserver.activation import Activation
from portserver.admission import Admission
from portserver.drain import DRAINING, SERVING, STOPPED, Drain
from portserver.listeners import ListenerService, bindEach
from portserver.logfilter import quietPortChatter
from portserver.plan import Listener, Plan
from portserver.registry import SHUTDOWN, Registry
from portserver.sdnotify import Notifier, statusText
from portserver.reloading import (
    ReloadError,
    ReloadReport,
    matchListeners,
    restartOnly,
    socketKey,
)
from portserver.startup import StartupError, groupFailures
from portserver.tracking import DENIED

log = Logger()


def listenerStates(listeners, registry: Registry) -> list[dict]:
    """
    Each of C{listeners} (as bound) as a plain dict, with its live connection (or flow)
    count in C{registry}.
    """
    counts = registry.liveCounts()
    rows = []
    for listener in listeners:
        row = listener.asDict()
        row["connections"] = counts.get((listener.service, listener.transport, listener.port),
                                        0)
        rows.append(row)
    return rows


def addressOf(entries, service: str, transport: str = "tcp"):
    """
    The bound address of the entry of C{entries} (each with C{listener} and
    C{address}: a listener service, or a worker server's sockets) that serves
    C{service} on C{transport}, or L{None}.
    """
    for entry in entries:
        if entry.listener.service == service and entry.listener.transport == transport:
            return entry.address
    return None


class PortServer(MultiService):
    """
    Every listener of a L{Plan}, bound all at once or not at all (or served on the
    sockets socket activation passed: C{activation}).

    The service manager hears from C{notifier} (L{portserver.sdnotify}): C{READY=1}
    once every listener serves, C{STOPPING=1} when the drain starts, and a C{STATUS=}
    line with each, and every L{STATUS_INTERVAL} seconds while serving.

    @ivar state: C{"serving"}, C{"draining"} (stopped listening, waiting for live
        connections to finish) or C{"stopped"}.
    """

    # Seconds to wait, once the drain is over, for aborted connections to close.
    ABORT_GRACE = 1.0
    # Seconds between two STATUS= lines for the service manager (when there is one).
    STATUS_INTERVAL = 10.0

    def __init__(self, plan: Plan, reactor, registry: Registry | None = None,
                 notifier: Notifier | None = None, activation: Activation | None = None):
        super().__init__()
        self.plan = plan
        self.reactor = reactor
        self.notifier = notifier or Notifier(None)
        self.activation = activation or Activation()
        settings = plan.config.registry
        self.registry = registry or Registry(
            reactor, plan.rule, closedLimit=settings.closedLimit, udpIdle=settings.udpIdle,
            udpMaxFlows=settings.udpMaxFlows)
        self.admissions = {spec.name: Admission(spec.name, spec.limits, spec.access, reactor,
                                                self.registry)
                           for spec in plan.config.services}
        self.listeners = [ListenerService(l, reactor, self.registry,
                                          self.admissions.get(l.service), self.activation)
                          for l in plan.listeners]
        for child in self.listeners:
            child.setServiceParent(self)
        self._expiry = LoopingCall(self._expireFlows)
        self._expiry.clock = reactor
        self._statusLoop = LoopingCall(self._sendStatus)
        self._statusLoop.clock = reactor
        self.state = SERVING
        self._drained = None
        self._drain = None  # the Drain of the last stop
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
        return listenerStates(self.boundListeners(), self.registry)

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
        kept, added, removed = matchListeners(self.listeners, plan.listeners)
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
        fresh = [ListenerService(l, self.reactor, self.registry, admissions[l.service],
                                 self.activation)
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
        warnings = restartOnly(self.plan.config, plan.config) + self._idleSockets(plan)
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

    def _idleSockets(self, plan: Plan) -> list[str]:
        """
        Warnings for the inherited sockets that served a listener and serve none in
        C{plan}: they stay open (a later reload may serve them again), unanswered.
        """
        served = {id(s) for _, s in self.activation.assigned(plan)}
        return [f"inherited socket {s.describe()} is served by no listener now: it stays "
                "open, and connections to it wait unanswered"
                for _, s in self.activation.assigned(self.plan) if id(s) not in served]

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
                record = getattr(tracker, "record", None)
                if record is None:
                    continue  # a refusal being sent its banner (it has no factory)
                admission = tracker.factory.admission
                if admission is None:
                    continue
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
        self.notifier.stopping(self.statusText("draining"))
        if self._statusLoop.running:
            self._statusLoop.stop()
        if self._expiry.running:
            self._expiry.stop()
        for child in self.retiring:  # the server's drain takes over from theirs
            if child.drainCall is not None and child.drainCall.active():
                child.drainCall.cancel()
            child.drainCall = None
        stopped = super().stopService()
        self.registry.closeFlows(SHUTDOWN)  # no more datagrams can arrive
        drained = self._drained = DeferredList([stopped, self._startDrain()])
        drained.addCallback(self._stopped)
        return drained

    def _stopped(self, result):
        self.state = STOPPED
        self._drained = None
        return None

    def _startDrain(self) -> Deferred:
        self._drain = Drain(self.reactor, self.registry, self._abortConnections,
                            self.ABORT_GRACE)
        done = self._drain.start(self.plan.config.shutdown.drain)
        if self._drain.endsAt is not None:
            self.state = DRAINING
        return done

    def _abortConnections(self) -> int:
        """
        Abort every live TCP connection of every listener (and of those a reload
        removed); return how many.
        """
        return sum(child.abortConnections()
                   for child in self.listeners + self.retiring
                   if child.listener.transport == "tcp")

    def endDrain(self) -> bool:
        """
        End a drain now, aborting the connections left (as a second stop signal does);
        return whether a drain was under way.
        """
        return self._drain is not None and self._drain.end()

    def drainState(self) -> dict:
        """
        C{{"state": "serving" | "draining" | "stopped"}}, and while draining, how many
        TCP connections are left (C{"remaining"}) and the seconds until they are
        aborted (C{"drain_left"}).
        """
        result = {"state": self.state}
        if self.state == DRAINING:
            result["remaining"] = len(self.registry)
            result["drain_left"] = self._drain.left()
        return result

    def _ready(self):
        log.info("portserver ready: {count} listener(s) for {services} service(s) from "
                 "{config}", count=len(self.listeners),
                 services=len(self.plan.config.services), config=self.plan.config.path)
        if not self.running or self._drained is not None:
            return  # stopped before the reactor ran
        if self.notifier.ready(self.statusText()) and not self._statusLoop.running:
            self._statusLoop.start(self.STATUS_INTERVAL, now=False)

    def statusText(self, state: str | None = None) -> str:
        """
        The C{STATUS=} line for the service manager: C{state} (by default this server's:
        C{serving}, C{draining}...), live connections and flows, config generation.
        """
        return statusText(state or self.state, len(self.registry), self.generation)

    def _sendStatus(self) -> None:
        if self.state == SERVING:
            self.notifier.status(self.statusText())

    def addressOf(self, service: str, transport: str = "tcp"):
        """
        The bound address of a service's listener on C{transport}, or L{None}.
        """
        return addressOf(self.listeners, service, transport)


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
