"""
C{twistd portserver}: the command-line options and the service they make.
"""

from __future__ import annotations

import os
import signal
import sys
from importlib import resources

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage

from portserver.config import ConfigError
from portserver.plan import formatPlan, loadPlan
from portserver.plugins import DuplicateProtocolError, discover, formatProtocols
from portserver.ports import canBindPrivileged
from portserver.startup import PRIVILEGED_REMEDY, StartupError, groupFailures, preflight

log = Logger()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bundledConfigPath() -> str:
    """
    The config shipped with portserver: the copy installed in the package, or, when run
    from a source checkout (or an editable install), the checkout's C{etc/portserver.yaml}.
    """
    installed = resources.files("portserver").joinpath("etc", "portserver.yaml")
    if installed.is_file():
        return str(installed)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "etc", "portserver.yaml")


class Options(usage.Options):
    """
    Options of C{twistd portserver}. Checking happens here, in L{postOptions}, so a bad
    config stops C{twistd} with a clear report before anything is bound.
    """

    synopsis = "[--config PATH] [--port-offset N] [--check | --list-protocols]"
    longdesc = ("Serve many well-known ports, each through a protocol plugin, as the YAML "
                "config says. Without --config, the bundled etc/portserver.yaml is used.")

    optParameters = [
        ["config", "c", None, "The YAML config file [default: the bundled one]."],
        ["port-offset", None, 0,
         "Add N to every port below 1024 (run unprivileged during development).", int],
    ]
    optFlags = [
        ["check", None, "Check the config, print the port plan, and exit 0 (valid) or 1."],
        ["list-protocols", None, "List the protocol plugins found, and exit."],
    ]

    def __init__(self, stdout=None, stderr=None, discover=discover, loadPlan=loadPlan,
                 preflight=preflight, canBindPrivileged=canBindPrivileged, inherited=None):
        """
        @param inherited: returns the L{Activation} of this process (by default, what
            C{LISTEN_FDS} passes: L{Activation.fromEnvironment}).
        """
        super().__init__()
        self._inherited = inherited
        self._preflight = preflight
        self._canBindPrivileged = canBindPrivileged
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._discover = discover
        self._loadPlan = loadPlan

    def fail(self, message: str):
        """
        Print C{message} to stderr and exit 1 (no traceback, no usage text).
        """
        print(message, file=self.stderr)
        raise SystemExit(1)

    def postOptions(self):
        offset = self["port-offset"]
        if not 0 <= offset <= 64511:
            raise usage.UsageError("--port-offset must be between 0 and 64511")
        try:
            discovery = self._discover()
        except DuplicateProtocolError as e:
            self.fail(f"portserver: {e}")
        if self["list-protocols"]:
            print(formatProtocols(discovery), file=self.stdout)
            raise SystemExit(0)
        path = self["config"] or bundledConfigPath()
        self["config"] = path
        try:
            plan = self._loadPlan(path, discovery.providers, portOffset=offset)
        except ConfigError as e:
            self.fail(f"portserver: {path}: {e.report()}")
        activation = self._activation(path, plan)
        if self["check"]:
            print(formatPlan(plan), file=self.stdout)
            if activation:
                print("\n" + activation.describePlan(plan), file=self.stdout)
            warning = self._privilegeWarning(plan, activation)
            if warning:
                print(warning, file=self.stdout)
            print(f"portserver: {path}: configuration is valid", file=self.stdout)
            raise SystemExit(0)
        if isinstance(self.parent, dict):
            # Run by twistd: say now, on the terminal, which ports cannot be bound,
            # before twistd forks into the background and starts its log.
            # An inherited socket is bound already: probing its address would fail.
            failures = self._preflight([
                l for l in plan.listeners
                if activation.socketFor(l.service, l.transport) is None])
            if failures:
                self.fail(f"portserver: {groupFailures(failures)}")
        self["plan"] = plan
        self["activation"] = activation

    def _activation(self, path: str, plan):
        """
        The sockets socket activation passed, checked against C{plan} (exit 1 with
        every mismatch, located): for C{--check} and when run by twistd; none when
        embedded (a test's or a program's own options).
        """
        from portserver.activation import Activation

        if not (self["check"] or isinstance(self.parent, dict)):
            return Activation()
        activation = (self._inherited or Activation.fromEnvironment)()
        problems = activation.check(plan)
        if problems:
            self.fail(f"portserver: {path}: {ConfigError(problems).report()}")
        return activation

    def _privilegeWarning(self, plan, activation=()) -> str | None:
        """
        For C{--check}: a warning when the plan has privileged ports and this user may
        not bind them (the config is valid all the same), with the remedies. A port
        served on an inherited socket (C{activation}) needs no privilege.
        """
        inherited = {l.key for l, _ in activation.assigned(plan)} if activation else set()
        ports = sorted({l.port for l in plan.listeners
                        if l.privileged and l.key not in inherited})
        if not ports or self._canBindPrivileged():
            return None
        return (f"portserver: warning: {len(ports)} privileged port(s) "
                f"({', '.join(map(str, ports))}; below {plan.rule.unprivilegedStart}) "
                f"cannot be bound by this user (uid {os.geteuid()}):\n  {PRIVILEGED_REMEDY}")


def _startupExceptHook(previous):
    """
    An C{excepthook} that logs a L{StartupError} as its message alone, as one critical
    event: twistd lets an exception from C{privilegedStartService} reach the top (its log
    has begun by then), and a traceback is not a message for an operator. Anything else
    goes to the previous hook.
    """
    def hook(kind, value, tb):
        if issubclass(kind, StartupError):
            # One event, not a "[stderr#error]" line per line of the message.
            log.critical("portserver: {error}", error=str(value))
        else:
            previous(kind, value, tb)

    return hook


def installStopSignals(reactor, server, signals=STOP_SIGNALS, setSignal=signal.signal,
                       getSignal=signal.getsignal) -> list:
    """
    Make SIGTERM and SIGINT stop portserver gracefully, for an exit status of 0.

    Twisted's own handlers stop the reactor too, but also record the signal, and twistd
    ends a run whose reactor a signal stopped by sending itself that signal again (so
    the status would be "killed by SIGTERM", whether or not the stop was orderly). These
    handlers stop the reactor the same public way (C{reactor.stop}, from the signal
    handler through C{callFromThread}), without recording the signal: twistd then runs
    the shutdown (the drain waits in L{PortServer.stopService}) and exits 0. A second
    signal ends the drain at once.

    Only a signal whose handler is a function installed by someone (the reactor, when it
    runs with signal handlers) is taken over; SIG_DFL, SIG_IGN and Python's default
    SIGINT handler are left alone, so an embedding program keeps its own choice.

    Call when the reactor runs (its handlers are installed during start-up).

    @return: the signals taken over.
    """
    received = []

    def handler(number, frame):
        name = signal.Signals(number).name
        received.append(number)
        if len(received) == 1:
            log.info("Received {signal}: stopping (a second signal ends the drain)",
                     signal=name)
            reactor.callFromThread(reactor.stop)
        else:
            log.info("Received {signal} again: ending the drain", signal=name)
            reactor.callFromThread(server.endDrain)

    taken = []
    for number in signals:
        current = getSignal(number)
        if callable(current) and current is not signal.default_int_handler:
            setSignal(number, handler)
            taken.append(number)
    return taken


def makeService(options, reactor=None):
    """
    The service tree for C{options} (parsed L{Options}): a L{MultiService} holding the
    L{PortServer} (named C{"portserver"}) and, unless the config turns them off, the
    connection log (C{"connection-log"}) and the status web service (named C{"status"}).
    With C{workers:} above 1, the L{portserver.supervisor.Supervisor} (also named
    C{"portserver"}) stands in for the L{PortServer}: this process binds and
    supervises, its workers serve.

    Listeners serve the sockets socket activation passed (L{portserver.activation}),
    and, run by twistd, the service manager hears of readiness, reloads and the drain
    (L{portserver.sdnotify}).

    SIGHUP reloads the config (L{portserver.reload}): the C{"reload-signal"} service,
    first in the tree, takes it before any port is bound. Once the reactor runs,
    SIGTERM/SIGINT stop it gracefully. Run by twistd with a pid file, the tree ends with
    the C{"runtime-file"} service (L{portserver.runtime}), which tells C{portserver
    status} and C{portserver reload} where this server is. On an injected C{reactor} (a
    test's), the process's signals are left alone.
    """
    from portserver.connlog import ConnectionLog
    from portserver.reload import Reloader, ReloadSignal, installReloadSignal
    from portserver.runtime import RuntimeFile, runtimePath
    from portserver.sdnotify import Notifier
    from portserver.server import PortServer, ServerTree
    from portserver.status.web import StatusService

    takeSignals = reactor is None
    if reactor is None:
        from twisted.internet import reactor
    sys.excepthook = _startupExceptHook(sys.excepthook)
    plan = options["plan"]
    # systemd hears of readiness, reloads and the drain (sd_notify) when it runs the
    # process (twistd, signals taken); a test's tree on its own reactor tells no one.
    notifier = Notifier.fromEnvironment() if takeSignals else Notifier(None)
    planLoader = getattr(options, "_loadPlan", loadPlan)
    if plan.config.workers > 1:
        # The main process: it binds, supervises the workers and runs the status
        # service over what they report (portserver.supervisor).
        from portserver.supervisor import MAIN_PARTS, MainTree, PlanReader, Supervisor
        tree = MainTree()
        planLoader = PlanReader(planLoader)
        server = Supervisor(plan, reactor, notifier=notifier,
                            activation=options.get("activation"), reader=planLoader)
        for makePart in MAIN_PARTS:
            server.addPart(makePart(server))
    else:
        tree = ServerTree()
        server = PortServer(plan, reactor, notifier=notifier,
                            activation=options.get("activation"))
        server.setName("portserver")
    tree.quiet = takeSignals
    reloader = Reloader(server, plan.config.path, plan.portOffset,
                        discover=getattr(options, "_discover", discover),
                        loadPlan=planLoader, notifier=notifier)
    ReloadSignal(reactor, reloader, install=installReloadSignal if takeSignals else None
                 ).setServiceParent(tree)
    owner = droppedTo(options)
    if owner is not None:
        HandOver(twistdFiles(options), *owner).setServiceParent(tree)
    if plan.config.registry.connectionLog is not None:
        # First in, last out: it still logs the connections closed at shutdown.
        ConnectionLog(server.registry, plan.config.registry.connectionLog,
                      reactor, owner=owner).setServiceParent(tree)
    server.setServiceParent(tree)
    reactor.callWhenRunning(installStopSignals, reactor, server)
    status = None
    if plan.config.status.listen is not None:
        status = StatusService(server, plan.config.status.listen, reactor)
        status.setServiceParent(tree)
    pidfile = twistdPidfile(options)
    if pidfile:
        RuntimeFile(runtimePath(pidfile), pidfile, os.path.abspath(plan.config.path),
                    status).setServiceParent(tree)
    return tree


class HandOver(Service):
    """
    Run as root with C{--uid}/C{--gid}, twistd opens its log file and writes its pid file
    as root, then drops to that user, who can then neither rotate the log (Twisted's
    C{LogFile} then skips the rotation, silently, and the file grows without end) nor
    remove the pid file at exit. Before the drop, this gives those files to the user, and
    warns when the user cannot write their directory (rotating and removing need it).
    """

    name = "hand-over"

    def __init__(self, paths, uid: int, gid: int, chown=os.chown):
        self.paths = [p for p in paths if p]
        self.uid, self.gid = uid, gid
        self.chown = chown

    def privilegedStartService(self):
        from portserver.connlog import handOver
        super().privilegedStartService()
        for path in self.paths:
            if os.path.exists(path):
                handOver(path, self.uid, self.gid, self.chown)


def twistdFiles(options) -> list[str]:
    """
    The files twistd itself writes for this run: its log file (unless C{-} or syslog)
    and its pid file, as absolute paths.
    """
    parent = getattr(options, "parent", None)
    if not isinstance(parent, dict):
        return []
    paths = []
    logfile = parent.get("logfile")
    if isinstance(logfile, str) and logfile not in ("", "-") and not parent.get("syslog"):
        paths.append(os.path.abspath(logfile))
    pidfile = twistdPidfile(options)
    if pidfile:
        paths.append(pidfile)
    return paths


def droppedTo(options, geteuid=os.geteuid) -> tuple[int, int] | None:
    """
    The C{(uid, gid)} twistd drops to after start-up (C{--uid}, C{--gid}, run as root),
    or L{None} when it keeps its user.
    """
    parent = getattr(options, "parent", None)
    if not isinstance(parent, dict) or geteuid() != 0:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    return (os.getuid() if uid is None else int(uid),
            os.getgid() if gid is None else int(gid))


def twistdPidfile(options) -> str | None:
    """
    The pid file twistd writes for this run: the C{--pidfile} of the twistd options
    that C{options} is the subcommand of (twistd makes it absolute, and writes it
    before the services start). L{None} when there is none: C{--pidfile=}, or not run
    by twistd.
    """
    parent = getattr(options, "parent", None)
    if not isinstance(parent, dict):
        return None
    pidfile = parent.get("pidfile")
    return os.path.abspath(pidfile) if isinstance(pidfile, str) and pidfile else None
