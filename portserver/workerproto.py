"""
What the main process and a worker say to each other: AMP (L{twisted.protocols.amp})
over a C{socketpair} the main process makes for each worker.

The lifecycle commands are here: a worker says it serves (L{Ready}) or could not start
(L{Failed}); the main process asks it to drain (L{Drain}: stop accepting, let live
connections finish, exit 0) and to end a drain at once (L{EndDrain}). Other modules
(the merged registry view, global limits) define commands of their own and answer them
through responders added to a channel's C{locators} list.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.protocols import amp

#: An AMP value is at most 65,535 bytes: room left for the keys of a box.
MAX_TEXT = 60000


class Ready(amp.Command):
    """
    Worker to main: every listener serves. C{pid}: the worker's process id.
    """

    arguments = [(b"pid", amp.Integer())]
    response: list = []


class Failed(amp.Command):
    """
    Worker to main: the worker could not start (C{errors}: why, one message each, for
    an operator); it exits once answered.
    """

    arguments = [(b"errors", amp.ListOf(amp.Unicode()))]
    response: list = []


class Drain(amp.Command):
    """
    Main to worker: stop accepting, let live connections finish (for the config's
    C{shutdown.drain} seconds at most), then exit 0. Answered at once.
    """

    arguments: list = []
    response: list = []


class EndDrain(amp.Command):
    """
    Main to worker: end the drain under way now, aborting the connections left.
    C{ended}: whether a drain was under way.
    """

    arguments: list = []
    response = [(b"ended", amp.Boolean())]


def fitErrors(errors: list[str], limit: int = MAX_TEXT) -> list[str]:
    """
    C{errors} cut to fit one AMP value (L{MAX_TEXT} bytes of UTF-8 in all): the first
    ones whole as far as they fit, then a line saying how many were left out.
    """
    kept, size = [], 0
    for index, error in enumerate(errors):
        encoded = len(error.encode("utf-8")) + 2
        if size + encoded > limit - 100:
            kept.append(f"... and {len(errors) - index} more error(s)")
            break
        kept.append(error)
        size += encoded
    return kept


class Channel(amp.AMP):
    """
    One end of the AMP connection between the main process and a worker.

    @ivar locators: extra responders (L{amp.CommandLocator}s), tried in order after
        this channel's own, so that other modules answer commands of their own.
    @ivar closed: a L{Deferred} firing (with L{None}) once the connection is lost;
        C{lostReason} then holds why (a L{Failure}).
    """

    def __init__(self):
        super().__init__()
        self.locators: list = []
        self.closed: Deferred = Deferred()
        self.lostReason = None
        self.connected = False

    def locateResponder(self, name):
        responder = super().locateResponder(name)
        if responder is not None:
            return responder
        for locator in self.locators:
            responder = locator.locateResponder(name)
            if responder is not None:
                return responder
        return None

    def makeConnection(self, transport):
        # As AMP's, without its log line per connection (the main process logs each
        # worker it starts and how it ended).
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionMade(self):
        self.connected = True
        super().connectionMade()

    def connectionLost(self, reason):
        self.connected = False
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
        self.lostReason = reason
        if not self.closed.called:
            self.closed.callback(None)


class MainChannel(Channel):
    """
    The main process's end of one worker's channel: its C{Ready} and C{Failed} go to
    C{worker} (C{ready(pid)}, C{failed(errors)}).
    """

    def __init__(self, worker):
        super().__init__()
        self.worker = worker

    @Ready.responder
    def ready(self, pid):
        self.worker.ready(pid)
        return {}

    @Failed.responder
    def failed(self, errors):
        self.worker.failed(list(errors))
        return {}


class WorkerChannel(Channel):
    """
    A worker's end of its channel: C{Drain} and C{EndDrain} go to C{worker}
    (C{drain()}, C{endDrain() -> bool}).
    """

    def __init__(self, worker):
        super().__init__()
        self.worker = worker

    @Drain.responder
    def drain(self):
        self.worker.drain()
        return {}

    @EndDrain.responder
    def endDrain(self):
        return {"ended": bool(self.worker.endDrain())}
