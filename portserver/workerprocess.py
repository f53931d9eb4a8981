"""
One worker process as the main process sees it: spawned with its sockets and its end of
an AMP channel (L{portserver.workerproto}), its output logged line by line as
C{worker N: ...}, its readiness, its drain and its end.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger

from portserver.workerproto import Drain, EndDrain, MainChannel

log = Logger()

STARTING = "starting"
SERVING = "serving"
DRAINING = "draining"
EXITED = "exited"

#: The descriptor of the worker's channel, and of its first socket, in the worker.
CHANNEL_FD = 3
FIRST_SOCKET_FD = 4
#: Variables a worker must not inherit: the service manager's (socket activation,
#: notifications) are the main process's alone.
PRIVATE_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET")


class WorkerFailed(Exception):
    """
    A worker did not start: C{str()} says why, for an operator.
    """


def describeEnd(reason) -> str:
    """
    How a process ended, from C{processEnded}'s reason: C{"exited with status 1"},
    C{"was killed by signal 9 (SIGKILL)"}.
    """
    value = reason.value
    signal = getattr(value, "signal", None)
    if signal is not None:
        try:
            import signal as signals
            name = f" ({signals.Signals(signal).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {signal}{name}"
    return f"exited with status {getattr(value, 'exitCode', None) or 0}"


def workerEnvironment(environ=None, root: str | None = None) -> dict[str, str]:
    """
    The environment of a worker: this process's, without L{PRIVATE_VARIABLES}, and
    with the directory portserver is imported from first on C{PYTHONPATH} (so a worker
    runs the code the main process runs, a checkout's too), unless it is already on
    Python's own path (an installed copy).
    """
    import site

    import portserver

    environ = dict(os.environ if environ is None else environ)
    for name in PRIVATE_VARIABLES:
        environ.pop(name, None)
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(portserver.__file__)))
    installed = set(site.getsitepackages() + [site.getusersitepackages()])
    if root not in installed:
        paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p != root])
    return environ


class _ChannelFactory(Factory):
    def __init__(self, channel):
        self.channel = channel

    def buildProtocol(self, addr):
        return self.channel


class WorkerProcess(ProcessProtocol):
    """
    One worker process of generation C{generation}, serving as worker C{index}.

    @ivar state: C{"starting"}, C{"serving"} (it said L{Ready}), C{"draining"} (asked
        to drain) or C{"exited"}.
    @ivar pid: its process id once spawned.
    @ivar started: when it was spawned (reactor time).
    @ivar channel: the L{MainChannel} to it.
    @ivar readyDeferred: fires (with this worker) once it serves; fails with
        L{WorkerFailed} when it says it cannot start, or ends before it serves.
    @ivar ended: fires with how it ended (L{describeEnd}) once the process is gone.
    @ivar lines: its last lines of output (for a failure's message).
    """

    def __init__(self, index: int, generation: int, reactor):
        self.index = index
        self.generation = generation
        self.reactor = reactor
        self.state = STARTING
        self.pid = None
        self.started = None
        self.channel = MainChannel(self)
        self.readyDeferred: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.lines: deque = deque(maxlen=20)
        self._partial = {1: b"", 2: b""}
        self.errors: list[str] = []
        self.endedHow: str | None = None

    def __repr__(self) -> str:
        return (f"<WorkerProcess {self.index} of generation {self.generation}, pid "
                f"{self.pid}, {self.state}>")

    def spawn(self, argv: list[str], env: dict, descriptors: list[int], text: str) -> None:
        """
        Start the process: C{argv}, C{env}; descriptors C{descriptors} (its sockets)
        as L{FIRST_SOCKET_FD}, L{FIRST_SOCKET_FD} + 1...; its channel's end as
        L{CHANNEL_FD}; C{text} (the config) on its standard input.
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.reactor.adoptStreamConnection(mine.fileno(), socket.AF_UNIX,
                                               _ChannelFactory(self.channel))
        finally:
            mine.close()
        childFDs = {0: "w", 1: "r", 2: "r", CHANNEL_FD: theirs.fileno()}
        for offset, fd in enumerate(descriptors):
            childFDs[FIRST_SOCKET_FD + offset] = fd
        try:
            process = self.reactor.spawnProcess(self, argv[0], argv, env=env,
                                                childFDs=childFDs)
        except BaseException:
            self.channel.transport.loseConnection()
            raise
        finally:
            theirs.close()
        self.pid = process.pid
        self.started = self.reactor.seconds()
        process.writeToChild(0, text.encode("utf-8"))
        process.closeChildFD(0)

    # -- what the worker says ---------------------------------------------------------------

    def ready(self, pid: int) -> None:
        if self.state == STARTING:
            self.state = SERVING
        if not self.readyDeferred.called:
            self.readyDeferred.callback(self)

    def failed(self, errors: list[str]) -> None:
        self.errors = errors
        if not self.readyDeferred.called:
            self.readyDeferred.errback(WorkerFailed("\n".join(errors)))

    # -- what is asked of it ----------------------------------------------------------------

    def drain(self) -> None:
        """
        Ask the worker to drain and exit (L{Drain} over its channel; SIGTERM when the
        channel is gone).
        """
        if self.state == EXITED:
            return
        self.state = DRAINING
        if self.channel.connected:
            # A worker that drains at once may exit before it answers: not an error.
            self.channel.callRemote(Drain).addErrback(lambda f: None)
        else:
            self.signal("TERM")

    def endDrain(self) -> None:
        """
        Ask a draining worker to end its drain now.
        """
        if self.state != EXITED and self.channel.connected:
            self.channel.callRemote(EndDrain).addErrback(lambda f: None)

    def kill(self) -> None:
        """
        End the process now (SIGKILL).
        """
        self.signal("KILL")

    def signal(self, name: str) -> None:
        if self.transport is None or self.state == EXITED:
            return
        try:
            self.transport.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    # -- ProcessProtocol --------------------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._partial:
            return
        *complete, self._partial[childFD] = (self._partial[childFD] + data).split(b"\n")
        for line in complete:
            self._logLine(childFD, line)

    def _logLine(self, childFD: int, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if not line:
            return
        self.lines.append(line)
        if childFD == 2:
            log.warn("worker {index}: {line}", index=self.index, line=line,
                     workerPid=self.pid)
        else:
            log.info("worker {index}: {line}", index=self.index, line=line,
                     workerPid=self.pid)

    def processEnded(self, reason) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._logLine(fd, rest)
        self._partial = {1: b"", 2: b""}
        self.state = EXITED
        self.endedHow = describeEnd(reason)
        if self.channel.connected:
            self.channel.transport.loseConnection()
        if not self.readyDeferred.called:
            why = "; ".join(self.errors) if self.errors else (
                f"it {self.endedHow} before it was ready"
                + (f" (last output: {self.lines[-1]})" if self.lines else ""))
            self.readyDeferred.errback(WorkerFailed(why))
        self.ended.callback(self.endedHow)


def workerCommand(index: int, generation: int, path: str, portOffset: int,
                  names: list[str], parent: int | None = None) -> list[str]:
    """
    The command line of worker C{index} of C{generation}: C{python -m
    portserver.worker}, its sockets named C{names} (the service each serves, in
    descriptor order from L{FIRST_SOCKET_FD}).
    """
    argv = [sys.executable, "-m", "portserver.worker", "--index", str(index),
            "--generation", str(generation), "--config", path,
            "--port-offset", str(portOffset), "--channel", str(CHANNEL_FD),
            "--parent", str(os.getpid() if parent is None else parent)]
    for offset, name in enumerate(names):
        argv += ["--socket", f"{name}={FIRST_SOCKET_FD + offset}"]
    return argv
