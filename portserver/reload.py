"""
Live reload: re-read the config (on SIGHUP, which C{portserver reload} sends) and apply it
to the running L{portserver.server.PortServer} as a difference.

A config that does not load (or does not apply: a plugin fails to build, a new port cannot
be bound) is rejected whole, logged with every error, and the config in force stays; see
L{portserver.server.PortServer.reload} for what applying one changes.
"""

from __future__ import annotations

import signal

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from portserver.config import ConfigError
from portserver.drain import SERVING
from portserver.plan import loadPlan
from portserver.plugins import DuplicateProtocolError, discover
from portserver.reloading import ReloadError
from portserver.sdnotify import Notifier

log = Logger()

APPLIED = "applied"
REJECTED = "rejected"


class Reloader:
    """
    Reloads a L{PortServer}'s config from its file, one reload at a time: a request that
    comes while one is under way is run once it is over (requests that come meanwhile
    are one).

    The outcome of each is kept on the server for the status service: C{lastReload}
    (a dict: C{result}, C{at}, C{generation}, and the changes or the errors) and the
    C{reloads} counts by result.

    The service manager hears from C{notifier} (L{portserver.sdnotify}):
    C{RELOADING=1} before a reload is applied, C{READY=1} once it is over, applied or
    rejected (not while the server is stopping), each with a C{STATUS=} line.

    @param path: the config file; C{portOffset}: as given at start-up.
    """

    def __init__(self, server, path: str, portOffset: int = 0, discover=discover,
                 loadPlan=loadPlan, notifier: Notifier | None = None):
        self.server = server
        self.notifier = notifier or Notifier(None)
        self.path = path
        self.portOffset = portOffset
        self._discover = discover
        self._loadPlan = loadPlan
        self._busy = False
        self._waiting: list[Deferred] = []

    def reload(self) -> Deferred:
        """
        Reload now (or after the reload under way).

        @return: a L{Deferred} firing with the outcome (the C{lastReload} dict) of the
            reload that covers this request.
        """
        waiter = Deferred()
        if self._busy:
            self._waiting.append(waiter)
        else:
            self._start([waiter])
        return waiter

    def _start(self, waiters: list[Deferred]) -> None:
        self._busy = True
        notifying = self.notifier.enabled and self.server.state == SERVING
        if notifying:
            self.notifier.reloading(self.server.statusText("reloading"))
        self._attempt().addCallback(self._done, waiters, notifying)

    def _done(self, outcome: dict, waiters: list[Deferred], notifying: bool = False
              ) -> None:
        self._busy = False
        if notifying and self.server.state == SERVING:
            self.notifier.ready(self.server.statusText())
        queued, self._waiting = self._waiting, []
        if queued:
            self._start(queued)
        for waiter in waiters:
            waiter.callback(outcome)

    def _attempt(self) -> Deferred:
        server = self.server
        try:
            providers = self._discover().providers
            plan = self._loadPlan(self.path, providers, portOffset=self.portOffset,
                                  rule=server.plan.rule)
        except ConfigError as e:
            return succeed(self._rejected([str(p) for p in e.problems]))
        except DuplicateProtocolError as e:
            return succeed(self._rejected([str(e)]))
        except Exception as e:  # never let a reload take the server down
            log.failure("Reload of {path} failed unexpectedly", path=self.path)
            return succeed(self._rejected([f"{type(e).__name__}: {e}"]))
        applying = server.reload(plan)
        applying.addCallback(self._applied)
        applying.addErrback(self._failed)
        return applying

    def _failed(self, failure):
        if failure.check(ReloadError):
            return self._rejected(list(failure.value.errors))
        log.failure("Reload of {path} failed unexpectedly", failure, path=self.path)
        return self._rejected([failure.getErrorMessage()])

    def _record(self, outcome: dict) -> dict:
        server = self.server
        server.reloads[outcome["result"]] += 1
        server.lastReload = outcome
        return outcome

    def _rejected(self, errors: list[str]) -> dict:
        server = self.server
        log.error("Reload of {path} rejected; generation {generation} stays in force. "
                  "{count} error(s):\n{errors}", path=self.path,
                  generation=server.generation, count=len(errors),
                  errors="\n".join(f"  {e}" for e in errors))
        return self._record({"result": REJECTED, "at": server.reactor.seconds(),
                             "generation": server.generation, "errors": errors})

    def _applied(self, report) -> dict:
        server = self.server
        log.info("Reloaded {path}: generation {generation}: {changes}", path=self.path,
                 generation=report.generation, changes=report.describe())
        for warning in report.warnings:
            log.warn("Reload: {warning}", warning=warning)
        outcome = {"result": APPLIED, "at": server.loadedAt, "errors": []}
        outcome.update(report.asDict())
        return self._record(outcome)


def installReloadSignal(reactor, reloader: Reloader, number=signal.SIGHUP,
                        setSignal=signal.signal, getSignal=signal.getsignal) -> bool:
    """
    Make SIGHUP reload the config. The handler only schedules the reload in the
    reactor thread (C{callFromThread}). A handler someone else installed is left alone.

    @return: whether the signal was taken.
    """
    if getSignal(number) not in (signal.SIG_DFL, None):
        return False

    def handler(signum, frame):
        log.info("Received SIGHUP: reloading {path}", path=reloader.path)
        reactor.callFromThread(reloader.reload)

    setSignal(number, handler)
    return True


class ReloadSignal(Service):
    """
    SIGHUP for the whole life of the server, start-up included: first in the service
    tree, it installs the handler (L{installReloadSignal}) in C{privilegedStartService},
    before any port is bound, so a SIGHUP during start-up never ends the process (its
    default action). A reload asked for while starting is run once, when start-up
    completes (the first reactor turn after every service has started); one asked for
    while stopping is ignored, with a log line.

    @ivar state: C{"starting"}, C{"serving"} or C{"stopping"}.
    @param install: L{installReloadSignal}, or L{None} to leave the process's signals
        alone (a tree on a test's reactor).
    """

    name = "reload-signal"

    def __init__(self, reactor, reloader: Reloader, install=installReloadSignal):
        self.reactor = reactor
        self.reloader = reloader
        self._install = install
        self._installed = False
        self._ready = None
        self._pending = False
        self.state = "starting"

    @property
    def path(self) -> str:
        return self.reloader.path

    def installSignal(self) -> None:
        """
        Take SIGHUP (once): from now on it calls L{reload} in the reactor thread.
        """
        if not self._installed and self._install is not None:
            self._install(self.reactor, self)
        self._installed = True

    def privilegedStartService(self):
        self.installSignal()
        super().privilegedStartService()

    def startService(self):
        self.installSignal()
        super().startService()
        self.state = "starting"
        self._ready = self.reactor.callLater(0, self._started)

    def _started(self) -> None:
        self._ready = None
        self.state = "serving"
        if self._pending:
            self._pending = False
            log.info("Start-up complete: running the reload asked for during start-up")
            self.reloader.reload()

    def reload(self) -> Deferred | None:
        """
        Reload as SIGHUP asks: now when serving, once start-up completes when starting
        (however many are asked for meanwhile), not at all when stopping.

        @return: the reloader's L{Deferred} when a reload starts now, else L{None}.
        """
        if self.state == "serving":
            return self.reloader.reload()
        if self.state == "starting":
            if not self._pending:
                log.info("Reload of {path} asked for during start-up: it runs once "
                         "start-up completes", path=self.path)
            self._pending = True
        else:
            log.info("Reload of {path} ignored: portserver is stopping", path=self.path)
        return None

    def stopService(self):
        if self._ready is not None and self._ready.active():
            self._ready.cancel()
        self._ready = None
        self._pending = False
        self.state = "stopping"
        return super().stopService()
