"""
A worker process: C{python -m portserver.worker ...}, started by the main process
(L{portserver.supervisor}) with its listening sockets, its end of an AMP channel and the
config's text on its standard input.

A worker is an ordinary L{PortServer} whose listeners serve the sockets it was given
(L{portserver.activation.Activation.fromDescriptors}), without the status service or the
connection log (the main process has those). It says L{Ready} once every listener
serves, drains and exits 0 when asked (L{Drain}, or SIGTERM), and never outlives the
main process: the kernel sends it SIGTERM when its parent dies (C{PR_SET_PDEATHSIG}), and
it drains when its channel closes.

Other modules add their worker side through L{PARTS}: each is called with the worker's
L{PortServer}, its L{WorkerChannel} and its index, and what it returns may have a
C{locator()} answering commands from the main process.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys

from twisted.logger import ILogObserver, Logger, eventAsText, globalLogBeginner
from zope.interface import implementer

from portserver.quota import workerPart as quotaPart
from portserver.workerproto import Failed, Ready, WorkerChannel, fitErrors
from portserver.workerview import feedPart

log = Logger()

#: Callables C{part(server, channel, index) -> object}, each called once the worker's
#: L{PortServer} is built (before it serves); an object with C{locator()} gets that
#: locator added to the channel's C{locators}.
PARTS: list = [
    feedPart,  # the registry's events, batched to main's mirror
    quotaPart,  # leases of the whole server's max_connections and max_per_source
]

#: Seconds a worker that cannot start waits for the main process to hear why.
FAILED_WAIT = 5.0
PR_SET_PDEATHSIG = 1


def dieWithParent(parent: int, sig: int = signal.SIGTERM, prctl=None,
                  getppid=os.getppid) -> bool:
    """
    Have the kernel send this process C{sig} when its parent dies (Linux
    C{PR_SET_PDEATHSIG}), and say whether the parent is still C{parent} (when it is
    not, it died before the request was made, and no signal will come).
    """
    if prctl is None:
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return getppid() == parent


@implementer(ILogObserver)
class OutputObserver:
    """
    Writes each event as one or more lines, without a timestamp (the main process logs
    each line with its own, prefixed C{worker N:}): warnings and errors to C{stderr},
    the rest to C{stdout}.
    """

    def __init__(self, stdout, stderr):
        self.stdout, self.stderr = stdout, stderr

    def __call__(self, event: dict) -> None:
        from twisted.logger import LogLevel

        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        level = event.get("log_level")
        out = self.stderr if level is not None and level >= LogLevel.warn else self.stdout
        try:
            out.write(text + "\n")
            out.flush()
        except (OSError, ValueError):
            pass  # the main process is gone: nothing to tell


class Worker:
    """
    The worker: builds its L{PortServer} on the sockets it was given, tells the main
    process how that went, and drains when told to (or when the main process is gone).

    @ivar exitCode: the status to exit with once the reactor stops.
    """

    def __init__(self, reactor, index: int, generation: int, path: str, text: str,
                 portOffset: int, sockets: list[tuple[str, int]], discover=None,
                 loadPlan=None):
        self.reactor = reactor
        self.index = index
        self.generation = generation
        self.path = path
        self.text = text
        self.portOffset = portOffset
        self.sockets = sockets
        self._discover = discover
        self._loadPlan = loadPlan
        self.channel = WorkerChannel(self)
        self.server = None
        self.parts: list = []
        self.exitCode = 0
        self.draining = False
        self.channel.closed.addCallback(self.channelLost)

    def build(self):
        """
        Load the plan from the config's text and build the L{PortServer} serving the
        sockets, with every part of L{PARTS}.

        @raise StartupError: or L{ConfigError}, when that is impossible.
        """
        from portserver.activation import Activation
        from portserver.config import ConfigError
        from portserver.plan import loadPlan
        from portserver.plugins import discover
        from portserver.server import PortServer

        providers = (self._discover or discover)().providers
        plan = (self._loadPlan or loadPlan)(self.path, providers,
                                            portOffset=self.portOffset, text=self.text)
        activation = Activation.fromDescriptors(self.sockets)
        problems = activation.check(plan)
        if problems:
            raise ConfigError(problems)
        server = PortServer(plan, self.reactor, activation=activation)
        for part in PARTS:
            made = part(server, self.channel, self.index)
            self.parts.append(made)
            locator = getattr(made, "locator", None)
            if locator is not None:
                found = locator()
                if found is not None:
                    self.channel.locators.append(found)
        return server

    def start(self) -> None:
        """
        Build and start serving, then say L{Ready}; or say L{Failed} and exit 1.
        """
        from portserver.config import ConfigError
        from portserver.plugins import DuplicateProtocolError
        from portserver.startup import StartupError

        try:
            server = self.build()
            server.startService()
        except ConfigError as e:
            return self.fail([str(p) for p in e.problems])
        except (StartupError, DuplicateProtocolError) as e:
            return self.fail([str(e)])
        except Exception as e:
            log.failure("Worker {index} failed to start", index=self.index)
            return self.fail([f"{type(e).__name__}: {e}"])
        self.server = server
        log.info("worker {index} of generation {generation} serving {count} listener(s)",
                 index=self.index, generation=self.generation,
                 count=len(server.listeners))
        if self.draining:  # asked to drain while starting
            self.draining = False
            return self.drain()
        self.channel.callRemote(Ready, pid=os.getpid()).addErrback(
            lambda f: log.failure("Telling the main process this worker is ready", f))

    def fail(self, errors: list[str]) -> None:
        """
        Say why this worker cannot start, and exit 1 once the main process has heard
        (or after L{FAILED_WAIT} seconds).
        """
        for error in errors:
            log.error("{error}", error=error)
        self.exitCode = 1
        if not self.channel.connected:
            return self._stop()
        told = self.channel.callRemote(Failed, errors=fitErrors(errors))
        timeout = self.reactor.callLater(FAILED_WAIT, told.cancel)

        def over(result):
            if timeout.active():
                timeout.cancel()
            self._stop()
        told.addBoth(over)

    def drain(self) -> None:
        """
        Stop accepting, let the live connections finish (for C{shutdown.drain} seconds
        at most), and exit 0.
        """
        if self.draining:
            return
        self.draining = True
        if self.server is None:
            return  # L{start} drains once started; or start failed and exits
        stopping = self.server.stopService()
        # The listeners serve duplicates, closed as they stop: close the descriptors
        # given too, so that this process holds the sockets no more (a connection the
        # kernel still gave one of them would wait unserved until the drain is over).
        self.closeSockets()
        stopping.addBoth(lambda _: self._stop())

    def closeSockets(self) -> None:
        """
        Close the listening sockets' descriptors this worker was given.
        """
        sockets, self.sockets = self.sockets, []
        for _, fd in sockets:
            try:
                os.close(fd)
            except OSError:
                pass

    def endDrain(self) -> bool:
        """
        End the drain under way now (the connections left are aborted).
        """
        return self.server is not None and self.server.endDrain()

    def channelLost(self, reason=None) -> None:
        """
        The main process is gone (or closed the channel): drain and exit.
        """
        if self.server is None and not self.draining:
            self.draining = True
            self._stop()
            return
        self.drain()

    def _stop(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def connect(self, fd: int) -> None:
        """
        Connect the channel over the C{socketpair} end C{fd} (closed once adopted: the
        reactor serves a duplicate).
        """
        from twisted.internet.protocol import Factory

        factory = Factory()
        factory.buildProtocol = lambda addr: self.channel
        self.reactor.adoptStreamConnection(fd, socket.AF_UNIX, factory)
        os.close(fd)


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m portserver.worker",
        description="A portserver worker process (started by the main process only).")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--generation", type=int, default=1)
    parser.add_argument("--config", required=True, help="the config file's path (for "
                        "messages: its text comes on standard input)")
    parser.add_argument("--port-offset", type=int, default=0)
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--socket", action="append", default=[],
                        help="NAME=FD: a listening socket and the service it serves")
    return parser.parse_args(argv)


def installSignals(reactor, worker: Worker) -> None:
    """
    SIGTERM drains (as the main process's L{Drain} does); SIGINT is left to the main
    process, which drains every worker (a terminal's Ctrl-C reaches the whole group).
    """
    signal.signal(signal.SIGTERM,
                  lambda *_: reactor.callFromThread(worker.drain))
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    """
    Run a worker as C{argv} says; return its exit status.
    """
    arguments = parseArguments(sys.argv[1:] if argv is None else argv)
    if not dieWithParent(arguments.parent):
        print("portserver worker: the main process is gone; exiting", file=sys.stderr)
        return 1
    text = sys.stdin.buffer.read().decode("utf-8")
    sockets = []
    for item in arguments.socket:
        name, _, fd = item.rpartition("=")
        sockets.append((name, int(fd)))
        os.set_inheritable(int(fd), False)  # never passed on to a plugin's children

    from twisted.internet import reactor

    from portserver.logfilter import QuietObserver

    globalLogBeginner.beginLoggingTo(
        [QuietObserver(OutputObserver(sys.stdout, sys.stderr))],
        redirectStandardIO=False)
    worker = Worker(reactor, arguments.index, arguments.generation, arguments.config,
                    text, arguments.port_offset, sockets)
    worker.connect(arguments.channel)
    reactor.callWhenRunning(installSignals, reactor, worker)
    reactor.callWhenRunning(worker.start)
    reactor.run()
    # The reactor put the default handlers back: a late SIGTERM must not turn this
    # worker's orderly exit into a death by signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return worker.exitCode


if __name__ == "__main__":
    sys.exit(main())
