"""
The main process of a server with workers (C{workers:} above 1): L{Supervisor} binds
every listener's sockets once (L{portserver.reuseport}), runs N worker processes
(L{portserver.worker}) that serve them, restarts a worker that dies, reloads by
generation and drains them all at shutdown. It serves no connection itself.

Reload by generation, as nginx does it: a new generation of N workers starts with the
new config and every socket (the kept listeners' sockets are the same ones, so the old
and the new generation accept from the same queues meanwhile); once all N say they
serve, the old generation drains. If any of the new workers cannot start (a plugin
fails to build, a crash, no word within L{Supervisor.READY_TIMEOUT}), the new workers go,
the sockets bound for it are closed, and the reload is rejected: the old generation was
never touched.

Other modules join in as I{parts} (L{Supervisor.addPart}); see L{IPart} for what a part
may define. C{MAIN_PARTS} lists callables C{part(supervisor) -> part} that the tap
calls for every server with workers, before the status service is built.
"""

from __future__ import annotations

import errno
import os
from collections import Counter

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface

from portserver.activation import Activation
from portserver.config import ConfigError, readConfig
from portserver.drain import DRAINING, SERVING, STOPPED
from portserver.plan import Plan, loadPlan
from portserver.quota import brokerPart
from portserver.registry import Registry
from portserver.reloading import (
    ReloadError,
    ReloadReport,
    matchListeners,
    restartOnly,
    socketKey,
)
from portserver.reuseport import ListenerSockets, bindListeners
from portserver.sdnotify import Notifier, statusText
from portserver.server import PortServer, ServerTree, addressOf, listenerStates
from portserver.startup import StartupError, groupFailures
from portserver.workerprocess import SERVING as WORKER_SERVING
from portserver.workerprocess import (
    EXITED,
    STARTING,
    WorkerProcess,
    workerCommand,
    workerEnvironment,
)
from portserver.workerview import mirrorPart

log = Logger()

#: Callables C{part(supervisor) -> object} the tap calls for each server with workers
#: and adds with L{Supervisor.addPart} (before the status service is built, so a part
#: may set C{supervisor.registry}).
MAIN_PARTS: list = [
    mirrorPart,  # one registry: the workers' connections, mirrored
    brokerPart,  # the counts of max_connections and max_per_source, leased to workers
]

#: A worker slot's state while its worker waits to be restarted.
RESTARTING = "restarting"
#: Why a worker's connections ended, as parts hear it (L{IPart.workerLost}).
WORKER_LOST = "worker-lost"
RETIRED = "retired"


class IPart(Interface):
    """
    What a part of the main process may define (each is optional).
    """

    def locator(index, pid, channel):
        """
        An C{amp.CommandLocator} answering commands worker C{index} (process C{pid})
        sends over C{channel} (its L{portserver.workerproto.MainChannel}), or L{None}.
        Called when the worker is spawned, before it can say anything.
        """

    def workerStarted(index, pid, channel):
        """
        Worker C{index} was spawned as process C{pid}; C{channel} reaches it.
        """

    def workerLost(index, pid, reason):
        """
        Worker C{index} (process C{pid}) is gone: C{"worker-lost"} when it ended
        unasked (it is restarted), C{"retired"} when it was asked to go (an old
        generation drained, a generation rejected, the server stopping).
        """

    def refresh():
        """
        Bring what the main process knows up to date (a L{Deferred}, or L{None});
        L{Supervisor.refresh} waits for every part's.
        """


class PlanReader:
    """
    Loads plans as L{loadPlan} does (for L{portserver.reload.Reloader}), remembering the
    text the last one was made from: the text every worker of a generation is given,
    so that what the main process checked is what the workers serve.
    """

    def __init__(self, loadPlan=loadPlan):
        self._loadPlan = loadPlan
        self._last: tuple[Plan, str] | None = None

    def __call__(self, path: str, providers, **kwargs) -> Plan:
        text, problems = readConfig(path)
        if text is None:
            raise ConfigError(problems)
        plan = self._loadPlan(path, providers, text=text, **kwargs)
        self._last = (plan, text)
        return plan

    def textOf(self, plan: Plan) -> str:
        """
        The text C{plan} was made from (read again from its file when this reader did
        not make it).

        @raise ConfigError: when the file cannot be read.
        """
        if self._last is not None and self._last[0] is plan:
            return self._last[1]
        text, problems = readConfig(plan.config.path)
        if text is None:
            raise ConfigError(problems)
        return text


@attrs.define(eq=False)
class _Generation:
    """
    A generation of workers being started by a reload, not yet in force.
    """

    number: int
    plan: Plan
    text: str
    listeners: list[ListenerSockets]
    fresh: list[ListenerSockets]
    removed: list[ListenerSockets]
    changed: list[str]
    unchanged: int
    outcome: Deferred = attrs.field(factory=Deferred)
    workers: list = attrs.field(factory=list)
    waiting: set = attrs.field(factory=set)


class Supervisor(Service):
    """
    The main process of a server with C{count} workers: see the module's docstring.

    It has what the status service reads of a server (C{plan}, C{reactor},
    C{registry}, L{boundListeners}, L{listenerStates}, L{drainState}, C{generation},
    C{loadedAt}, C{lastReload}, C{reloads}, L{addressOf}) and what
    L{portserver.reload.Reloader} uses (L{reload}, C{state}, L{statusText}).

    @ivar listeners: each listener's sockets (L{ListenerSockets}), in plan order.
    @ivar workers: the worker of each index in the generation in force (L{None} while
        it waits to be restarted).
    @ivar restarts: how many times the worker of each index was restarted.
    @ivar retiring: workers of older generations, draining.
    @ivar registry: what the status service shows: an empty L{Registry} unless a part
        puts the workers' merged view there.
    """

    name = "portserver"
    #: Seconds a new worker has to say it serves.
    READY_TIMEOUT = 30.0
    #: A dead worker is restarted after MIN_BACKOFF seconds, doubling each time it dies
    #: again up to MAX_BACKOFF; back to MIN_BACKOFF once one has served STEADY seconds.
    MIN_BACKOFF = 0.1
    MAX_BACKOFF = 30.0
    STEADY = 60.0
    #: Seconds past the drain's deadline after which a worker still running is killed.
    KILL_GRACE = 5.0
    STATUS_INTERVAL = 10.0

    def __init__(self, plan: Plan, reactor, count: int | None = None,
                 text: str | None = None, registry: Registry | None = None,
                 notifier: Notifier | None = None, activation: Activation | None = None,
                 launch=None, reader: PlanReader | None = None):
        """
        @param count: how many workers (by default the config's C{workers}).
        @param text: the config text C{plan} was made from (by default read from its
            file when the workers start).
        @param launch: C{launch(index, generation, plan, text, listeners) -> worker}
            starts one worker (a L{WorkerProcess}, spawned); by default
            L{spawnWorker}.
        """
        self.plan = plan
        self.reactor = reactor
        self.count = plan.config.workers if count is None else count
        self.reader = reader or PlanReader()
        self._text = text
        settings = plan.config.registry
        self.registry = registry or Registry(
            reactor, plan.rule, closedLimit=settings.closedLimit, udpIdle=settings.udpIdle,
            udpMaxFlows=settings.udpMaxFlows)
        self.notifier = notifier or Notifier(None)
        self.activation = activation or Activation()
        self._launch = launch or self.spawnWorker
        self.listeners: list[ListenerSockets] = []
        self.workers: list[WorkerProcess | None] = [None] * self.count
        self.restarts = [0] * self.count
        self._backoff = [self.MIN_BACKOFF] * self.count
        self._restartCalls: list = [None] * self.count
        self.retiring: list[WorkerProcess] = []
        self.parts: list = []
        self._dismissed: set = set()
        self._pending: _Generation | None = None
        self._announced = False
        self._stopping: Deferred | None = None
        self._drainEndsAt: float | None = None
        self._killCall = None
        self._statusLoop = LoopingCall(self._sendStatus)
        self._statusLoop.clock = reactor
        self.state = SERVING
        self.generation = 1
        self.loadedAt = reactor.seconds()
        self.lastReload = None
        self.reloads: Counter = Counter()

    # -- what the status service reads ----------------------------------------------------------

    def boundListeners(self):
        """
        Every listener as bound (actual ports), in plan order.
        """
        return [entry.bound for entry in self.listeners]

    def listenerStates(self) -> list[dict]:
        """
        Every listener as a plain dict with its live connection (or flow) count.
        """
        return listenerStates(self.boundListeners(), self.registry)

    def addressOf(self, service: str, transport: str = "tcp"):
        """
        The bound address of a service's listener on C{transport}, or L{None}.
        """
        return addressOf(self.listeners, service, transport)

    def drainState(self) -> dict:
        """
        As L{PortServer.drainState}: C{state}, and while draining C{remaining} (live
        connections the registry knows) and C{drain_left}.
        """
        result = {"state": self.state}
        if self.state == DRAINING and self._drainEndsAt is not None:
            result["remaining"] = len(self.registry)
            result["drain_left"] = max(0.0, self._drainEndsAt - self.reactor.seconds())
        return result

    def statusText(self, state: str | None = None) -> str:
        return statusText(state or self.state, len(self.registry), self.generation)

    def workerStates(self) -> list[dict]:
        """
        Every worker: those of the generation in force by index (one waiting to be
        restarted has C{pid} L{None} and state C{"restarting"}), then those of a
        generation being started, then those draining. Each is a dict: C{index},
        C{pid}, C{state}, C{restarts} (of its index), C{generation}, C{started}
        (reactor time, or L{None}).
        """
        rows = []
        for index, worker in enumerate(self.workers):
            if worker is None:
                rows.append({"index": index, "pid": None, "state": RESTARTING,
                             "restarts": self.restarts[index],
                             "generation": self.generation, "started": None})
            else:
                rows.append(self._row(worker))
        pending = self._pending.workers if self._pending is not None else []
        rows += [self._row(w) for w in pending + self.retiring if w.state != EXITED]
        return rows

    def _row(self, worker) -> dict:
        return {"index": worker.index, "pid": worker.pid, "state": worker.state,
                "restarts": self.restarts[worker.index] if worker.index < self.count
                else 0, "generation": worker.generation, "started": worker.started}

    def liveWorkers(self) -> list:
        """
        Every worker process not yet exited, of every generation.
        """
        pending = self._pending.workers if self._pending is not None else []
        return [w for w in [*self.workers, *pending, *self.retiring]
                if w is not None and w.state != EXITED]

    # -- parts ------------------------------------------------------------------------------

    def addPart(self, part) -> None:
        """
        Add C{part} (see L{IPart}); it hears of the workers already running at once.
        """
        self.parts.append(part)
        for worker in self.liveWorkers():
            self._attach(part, worker)

    def _attach(self, part, worker) -> None:
        try:
            locator = getattr(part, "locator", None)
            if locator is not None:
                found = locator(worker.index, worker.pid, worker.channel)
                if found is not None:
                    worker.channel.locators.append(found)
            started = getattr(part, "workerStarted", None)
            if started is not None:
                started(worker.index, worker.pid, worker.channel)
        except Exception:
            log.failure("Part {part} failed on worker {index} (pid {pid})", part=part,
                        index=worker.index, pid=worker.pid)

    def _lose(self, worker, reason: str) -> None:
        for part in self.parts:
            lost = getattr(part, "workerLost", None)
            if lost is None:
                continue
            try:
                lost(worker.index, worker.pid, reason)
            except Exception:
                log.failure("Part {part} failed on the loss of worker {index} (pid "
                            "{pid})", part=part, index=worker.index, pid=worker.pid)

    def refresh(self) -> Deferred:
        """
        Call every part's C{refresh()}; a L{Deferred} firing (with L{None}) once all
        are done, whether or not they failed (a failure is logged).
        """
        waiting = [maybeDeferred(part.refresh) for part in self.parts
                   if getattr(part, "refresh", None) is not None]

        def logged(results):
            for ok, result in results:
                if not ok:
                    log.failure("Refreshing the workers' view", result)
        return DeferredList(waiting, consumeErrors=True).addCallback(logged)

    # -- workers ----------------------------------------------------------------------------

    def spawnWorker(self, index: int, generation: int, plan: Plan, text: str,
                    listeners: list[ListenerSockets]) -> WorkerProcess:
        """
        Spawn worker C{index} of C{generation}: C{python -m portserver.worker}, with
        socket C{index} of each of C{listeners} and the config C{text}.
        """
        worker = WorkerProcess(index, generation, self.reactor)
        argv = workerCommand(index, generation, plan.config.path, plan.portOffset,
                             [entry.listener.service for entry in listeners])
        worker.spawn(argv, workerEnvironment(),
                     [entry.descriptorFor(index) for entry in listeners], text)
        return worker

    def _startWorker(self, index: int, generation: int, plan: Plan, text: str,
                     listeners: list[ListenerSockets]):
        worker = self._launch(index, generation, plan, text, listeners)
        log.info("Worker {index} of generation {generation} started: pid {pid}",
                 index=index, generation=generation, pid=worker.pid)
        timeout = self.reactor.callLater(self.READY_TIMEOUT, self._notReady, worker)

        def settled(result):
            if timeout.active():
                timeout.cancel()
            return result
        worker.readyDeferred.addBoth(settled)
        worker.ended.addCallback(self._ended, worker)
        for part in self.parts:
            self._attach(part, worker)
        return worker

    def _notReady(self, worker) -> None:
        log.error("Worker {index} (pid {pid}) did not say it serves within {timeout}s: "
                  "killing it", index=worker.index, pid=worker.pid,
                  timeout=self.READY_TIMEOUT)
        worker.kill()

    def _startCurrent(self, index: int) -> None:
        """
        Start worker C{index} of the generation in force.
        """
        worker = self._startWorker(index, self.generation, self.plan, self._currentText(),
                                   self.listeners)
        self.workers[index] = worker
        worker.readyDeferred.addCallbacks(self._currentReady, self._currentFailed,
                                          errbackArgs=(worker,))

    def _currentText(self) -> str:
        if self._text is None:
            self._text = self.reader.textOf(self.plan)
        return self._text

    def _currentReady(self, worker) -> None:
        if self._announced or self.state != SERVING:
            return
        if all(w is not None and w.state == WORKER_SERVING for w in self.workers):
            self._announced = True
            log.info("portserver ready: {count} workers serve {listeners} listener(s) for "
                     "{services} service(s) from {config}", count=self.count,
                     listeners=len(self.listeners),
                     services=len(self.plan.config.services), config=self.plan.config.path)
            if self.notifier.ready(self.statusText()) and not self._statusLoop.running:
                self._statusLoop.start(self.STATUS_INTERVAL, now=False)

    def _currentFailed(self, failure, worker) -> None:
        log.error("Worker {index} (pid {pid}) could not start: {why}", index=worker.index,
                  pid=worker.pid, why=failure.getErrorMessage())

    def _ended(self, how: str, worker) -> None:
        dismissed = worker in self._dismissed
        self._dismissed.discard(worker)
        self._lose(worker, RETIRED if dismissed else WORKER_LOST)
        if worker in self.retiring:
            self.retiring.remove(worker)
        pending = self._pending
        if pending is not None and worker in pending.workers and not dismissed:
            log.error("Worker {index} (pid {pid}) of generation {generation} {how}",
                      index=worker.index, pid=worker.pid, generation=worker.generation,
                      how=how)
            self._reject(pending, [f"worker {worker.index} (pid {worker.pid}) of "
                                   f"generation {pending.number} {how} before it served"])
            return
        if dismissed or self.state != SERVING:
            log.info("Worker {index} (pid {pid}) of generation {generation} {how}",
                     index=worker.index, pid=worker.pid, generation=worker.generation,
                     how=how)
            return
        if self.workers[worker.index] is worker:
            self._scheduleRestart(worker, how)

    def _scheduleRestart(self, worker, how: str) -> None:
        index = worker.index
        if worker.started is not None and \
                self.reactor.seconds() - worker.started >= self.STEADY:
            self._backoff[index] = self.MIN_BACKOFF
        delay = self._backoff[index]
        self._backoff[index] = min(delay * 2, self.MAX_BACKOFF)
        self.workers[index] = None
        log.error("Worker {index} (pid {pid}) {how}: restarting it in {delay:g}s",
                  index=index, pid=worker.pid, how=how, delay=delay)
        self._restartCalls[index] = self.reactor.callLater(delay, self._restart, index)

    def _restart(self, index: int) -> None:
        self._restartCalls[index] = None
        if self.state != SERVING or self.workers[index] is not None:
            return
        self.restarts[index] += 1
        try:
            self._startCurrent(index)
        except Exception as e:
            log.error("Worker {index} could not be restarted: {error}", index=index,
                      error=e)
            self.workers[index] = None
            delay = self._backoff[index]
            self._backoff[index] = min(delay * 2, self.MAX_BACKOFF)
            self._restartCalls[index] = self.reactor.callLater(delay, self._restart,
                                                               index)
            return
        log.info("Worker {index} restarted: pid {pid} (restart {restarts})", index=index,
                 pid=self.workers[index].pid, restarts=self.restarts[index])

    def _cancelRestarts(self) -> None:
        for index, call in enumerate(self._restartCalls):
            if call is not None and call.active():
                call.cancel()
            self._restartCalls[index] = None

    def _dismiss(self, worker) -> None:
        """
        Ask C{worker} to go: drain when it serves, killed when it does not yet.
        """
        if worker.state == EXITED or worker in self._dismissed:
            return
        self._dismissed.add(worker)
        if worker.state == STARTING:
            worker.kill()
        else:
            worker.drain()

    # -- starting ---------------------------------------------------------------------------

    def bind(self) -> None:
        """
        Bind every listener's sockets (once); all or nothing.

        @raise StartupError: naming every failure.
        """
        if self.listeners:
            return
        bound, failures = bindListeners(self.plan.listeners, self.count, self.activation)
        if failures:
            raise StartupError(groupFailures(failures))
        self.listeners = bound

    def privilegedStartService(self):
        self.bind()
        try:
            self._currentText()  # before twistd drops privileges (--uid), as binding
        except ConfigError as e:
            for entry in self.listeners:
                entry.close()
            self.listeners = []
            raise StartupError(f"cannot start the workers: {e}") from e
        super().privilegedStartService()

    def startService(self):
        self.bind()
        super().startService()
        self.state = SERVING
        try:
            for index in range(self.count):
                self._startCurrent(index)
        except (OSError, ConfigError) as e:
            for worker in self.liveWorkers():
                self._dismissed.add(worker)
                worker.kill()
            message = f"cannot start the workers: {e}"
            if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM) and os.getuid():
                message += (f"\n  workers run as this user (uid {os.getuid()}, after "
                            "--uid): it needs to read and run the Python interpreter and "
                            "portserver's installation (a virtualenv in a directory only "
                            "root may enter is a usual cause)")
            raise StartupError(message) from e

    # -- reloading --------------------------------------------------------------------------

    def reload(self, plan: Plan) -> Deferred:
        """
        Apply C{plan} by generation (see the module's docstring).

        @return: a L{Deferred} firing with a L{ReloadReport} once the new generation
            serves and the old one was asked to drain, or failing with L{ReloadError}
            (nothing changed).
        """
        if self.state != SERVING:
            return fail(ReloadError([f"the server is {self.state}"]))
        if self._pending is not None:
            return fail(ReloadError([f"generation {self._pending.number} is still "
                                     "starting"]))
        try:
            text = self.reader.textOf(plan)
        except ConfigError as e:
            return fail(ReloadError([str(p) for p in e.problems]))
        kept, added, removed = matchListeners(self.listeners, plan.listeners)
        fresh, failures = bindListeners(added, self.count, self.activation)
        if failures:
            return fail(ReloadError(failures))
        bySocket = {socketKey(entry.listener): entry for entry in fresh}
        changed = []
        for entry, listener in kept:
            bySocket[socketKey(listener)] = entry.serving(listener)
            old, new = entry.listener.spec, listener.spec
            if old != new or old.provider is not new.provider:
                changed.append(listener.describe())
        listeners = [bySocket[socketKey(l)] for l in plan.listeners]
        pending = self._pending = _Generation(
            self.generation + 1, plan, text, listeners, fresh, removed, changed,
            len(kept) - len(changed))
        try:
            for index in range(self.count):
                worker = self._startWorker(index, pending.number, plan, text, listeners)
                pending.workers.append(worker)
                pending.waiting.add(worker)
                worker.readyDeferred.addCallbacks(self._pendingReady, self._pendingFailed,
                                                  (pending,), None, (pending, index))
        except OSError as e:
            self._reject(pending, [f"cannot start the workers of generation "
                                   f"{pending.number}: {e}"])
        return pending.outcome

    def _pendingReady(self, worker, pending: _Generation) -> None:
        pending.waiting.discard(worker)
        if not pending.waiting and not pending.outcome.called:
            self._commit(pending)

    def _pendingFailed(self, failure, pending: _Generation, index: int) -> None:
        self._reject(pending, [f"worker {index} of generation {pending.number} could not "
                               f"apply it: {failure.getErrorMessage()}"])

    def _reject(self, pending: _Generation, errors: list[str]) -> None:
        if pending.outcome.called:
            return
        if self._pending is pending:
            self._pending = None
        for worker in pending.workers:
            self._dismiss(worker)
            if worker.state != EXITED:
                self.retiring.append(worker)
        for entry in pending.fresh:
            entry.close()
        pending.outcome.errback(ReloadError(errors))

    def _commit(self, pending: _Generation) -> None:
        self._pending = None
        old = self.generation
        self._cancelRestarts()
        for worker in self.workers:
            if worker is not None:
                self._dismiss(worker)
                self.retiring.append(worker)
        for index, worker in enumerate(pending.workers):
            self.workers[index] = worker
        for entry in pending.removed:
            entry.close()
        warnings = restartOnly(self.plan.config, pending.plan.config)
        self.listeners = pending.listeners
        self.plan, self._text = pending.plan, pending.text
        self.generation = pending.number
        self.loadedAt = self.reactor.seconds()
        log.info("Generation {generation}: {count} workers serve; generation {old} "
                 "drains", generation=pending.number, count=self.count, old=old)
        pending.outcome.callback(ReloadReport(
            generation=pending.number,
            added=tuple(entry.listener.describe() for entry in pending.fresh),
            removed=tuple(entry.listener.describe() for entry in pending.removed),
            changed=tuple(pending.changed), unchanged=pending.unchanged, denied=0,
            warnings=tuple(warnings)))

    # -- stopping ---------------------------------------------------------------------------

    def stopService(self):
        """
        Ask every worker to drain (each lets its connections finish for
        C{shutdown.drain} seconds) and close every listening socket; kill the workers
        still running L{KILL_GRACE} seconds after the drain's deadline.

        @return: a L{Deferred} that fires once every worker has exited.
        """
        if self._stopping is not None:
            return self._stopping
        super().stopService()
        self.state = DRAINING
        self.notifier.stopping(self.statusText("draining"))
        if self._statusLoop.running:
            self._statusLoop.stop()
        self._cancelRestarts()
        if self._pending is not None:
            self._reject(self._pending, ["the server is stopping"])
        drain = self.plan.config.shutdown.drain
        self._drainEndsAt = self.reactor.seconds() + drain
        live = self.liveWorkers()
        log.info("Stopping: {count} worker(s) drain for up to {drain:g}s", count=len(live),
                 drain=drain)
        for worker in live:
            self._dismiss(worker)
        # New connections are refused from now on, as a single process refuses them
        # once it stops listening (each worker closes its copies as its drain starts);
        # none would be served anyway.
        for entry in self.listeners:
            entry.close()
        self._killCall = self.reactor.callLater(drain + self.KILL_GRACE, self._killAll)
        done = DeferredList([worker.ended for worker in live])
        done.addCallback(self._stopped)
        self._stopping = done
        return done

    def _killAll(self) -> None:
        self._killCall = None
        for worker in self.liveWorkers():
            log.warn("Worker {index} (pid {pid}) still runs past the drain: killing it",
                     index=worker.index, pid=worker.pid)
            worker.kill()

    def _stopped(self, result) -> None:
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        self._killCall = None
        self.state = STOPPED
        log.info("Every worker has exited")

    def endDrain(self) -> bool:
        """
        End the drain now in every worker (as a second stop signal does); return
        whether one was under way.
        """
        if self.state != DRAINING:
            return False
        for worker in self.liveWorkers():
            worker.endDrain()
        return True

    def _sendStatus(self) -> None:
        if self.state == SERVING:
            self.notifier.status(self.statusText())


class MainTree(ServerTree):
    """
    The main process's tree: as L{ServerTree}, with the L{Supervisor} stopped (its
    workers drained) before the rest (the status service answers meanwhile).
    """

    def stopService(self):
        Service.stopService(self)
        children = list(self)[::-1]
        draining = [c for c in children if isinstance(c, (PortServer, Supervisor))]
        rest = [c for c in children if c not in draining]
        first = DeferredList([maybeDeferred(c.stopService) for c in draining])
        first.addCallback(
            lambda _: DeferredList([maybeDeferred(c.stopService) for c in rest]))
        return first

