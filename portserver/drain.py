"""
The drain at shutdown: a server that stops listening lets its live TCP connections
finish for a while, then aborts those left. L{SERVING}, L{DRAINING} and L{STOPPED} are a
server's states (as the status service shows them); L{Drain} is one drain.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from portserver.registry import CLOSED

log = Logger()

SERVING = "serving"
DRAINING = "draining"
STOPPED = "stopped"


class Drain:
    """
    One drain of the live TCP connections of C{registry}: wait for them to finish, abort
    (through C{abort}, which returns how many it aborted) those left at the deadline,
    and wait C{grace} more seconds at most for the aborted ones to close.

    @ivar endsAt: the reactor time at which the connections left are aborted; L{None}
        when there was nothing to drain.
    """

    def __init__(self, reactor, registry, abort, grace: float):
        self.reactor = reactor
        self.registry = registry
        self.abort = abort
        self.grace = grace
        self.endsAt = None
        self._endDrain = None

    def start(self, drain: float) -> Deferred:
        """
        Drain for up to C{drain} seconds.

        @return: a L{Deferred} that fires once no TCP connection is live, or once the
            aborted ones have closed (or had C{grace} seconds to); at once when no
            connection is live.
        """
        live = len(self.registry)
        if not live:
            self.registry.shuttingDown = True
            return succeed(None)
        done = Deferred()
        self.endsAt = self.reactor.seconds() + drain
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
            aborted = self.abort()
            log.info("Drain over: aborting {aborted} connection(s) still open",
                     aborted=aborted)
            if not len(self.registry):
                self.reactor.callLater(0, finish)
            else:  # aborted connections close in the next reactor turn; never hang
                grace = self.reactor.callLater(self.grace, finish)

        grace = None
        unsubscribe = self.registry.subscribe(closed, opens=False)
        deadline = self.reactor.callLater(drain, endDrain)
        self._endDrain = endDrain
        return done

    def end(self) -> bool:
        """
        End the drain now, aborting the connections left; return whether it was still
        waiting for them to finish.
        """
        if self._endDrain is None:
            return False
        self._endDrain()
        return True

    def left(self) -> float:
        """
        The seconds until the connections left are aborted (0 once they have been).
        """
        return max(0.0, self.endsAt - self.reactor.seconds())
