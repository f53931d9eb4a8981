"""
The reactor's dispatch of I/O events to portserver's own transports and listening
ports, without Twisted's legacy log context.

Twisted's epoll reactor hands every event to its selectable through
C{twisted.python.log.callWithLogger}: it asks the selectable for its C{logPrefix()}
and pushes a legacy log context (a copy of the current one, with C{system} set) for the
length of the call, so that a C{twisted.python.log.msg} made inside says which
connection it came from. Measured under load, that wrapper is about a tenth of the
server's CPU for a connection's events (one per request: a 64-byte echo spends as
much on it as on the C{send}).

portserver's transports (L{portserver.transport.TrackedTransport}) and ports
(L{portserver.accepting.AcceptingPort}, L{portserver.udp.DatagramPort}) log through
C{twisted.logger}, naming the connection's record themselves, and need no such context:
L{leanDispatch} gives an epoll reactor a C{doPoll} that calls theirs directly (an
exception that escapes is logged, as C{callWithLogger} does, and the loop goes on;
data to read, the most common event by far, goes straight to C{doRead}),
and every other selectable (the status service, Twisted's own ports, AMP channels)
as Twisted does. A plugin's protocol that logs with the legacy C{log.msg} gets
C{system} C{"-"} instead of the connection's prefix; with C{twisted.logger} (what
Twisted recommends) nothing changes.
"""

from __future__ import annotations

import errno
from select import EPOLLIN, EPOLLOUT

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.python import log as legacyLog
from twisted.python.failure import Failure

log = Logger()

#: The reason given to C{readConnectionLost} at the end of input (what the reactor
#: gives, made once too).
_INPUT_ENDED = Failure(ConnectionDone())

#: How many times a reactor given L{doPoll} has returned from polling: a listener tells
#: from it whether it was ready at consecutive wake-ups (see
#: L{portserver.accepting.AcceptingPort.doRead}).
wakes = 0


class Lean:
    """
    Mixed into a selectable whose events need no legacy log context.

    @cvar halfCloseable: whether the selectable is an C{IHalfCloseableDescriptor} (a
        TCP connection): at the end of input, L{doPoll} stops its reading and calls its
        C{readConnectionLost} directly, as Twisted's reactor does for one.
    """

    halfCloseable = False


def doPoll(self, timeout):
    """
    C{EPollReactor.doPoll}, calling a L{Lean} selectable's events directly.
    """
    global wakes
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    wakes += 1
    drdw = self._doReadOrWrite
    selectables = self._selectables
    callWithLogger = legacyLog.callWithLogger
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        if isinstance(selectable, Lean):
            if event == EPOLLIN:
                # What _doReadOrWrite does for data to read, and nothing more: no
                # other flag to look at, no fileno() == -1 check (a portserver
                # selectable leaves the reactor when it closes).
                try:
                    why = selectable.doRead()
                except BaseException as e:
                    why = e
                    log.failure("Reading for {selectable!r}", selectable=selectable)
                if why:
                    try:
                        if why is CONNECTION_DONE and selectable.halfCloseable:
                            # posixbase._disconnectSelectable's way for the end of a
                            # half-closeable descriptor's input, without its lookups
                            # (removeReader's: the descriptor is at hand).
                            stopReadingAt(self, fd)
                            selectable.readConnectionLost(_INPUT_ENDED)
                        else:
                            self._disconnectSelectable(selectable, why, True)
                    except BaseException:
                        log.failure("Closing {selectable!r}", selectable=selectable)
                continue
            try:
                drdw(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.failure("Handling an event of {selectable!r}", selectable=selectable)
        else:
            callWithLogger(selectable, drdw, selectable, fd, event)


def leanDispatch(reactor) -> bool:
    """
    Give C{reactor} L{doPoll}, if it is Twisted's epoll reactor (of that very class, so
    that a subclass's own poll is kept), once; whether it has it now.
    """
    if type(reactor) is not EPollReactor:
        return False
    if not isLean(reactor):
        reactor.doPoll = reactor.doIteration = doPoll.__get__(reactor)
    return True


def isLean(reactor) -> bool:
    """
    Whether C{reactor} was given L{doPoll} (by L{leanDispatch}).
    """
    return reactor.__dict__.get("doPoll") is not None


def startWatching(reactor, selectable, fd: int) -> bool:
    """
    Watch C{selectable}, a new descriptor C{fd}, for reading, as C{addReader} does, in
    one go (one C{epoll_ctl}, none of its three calls) on an epoll reactor given
    L{doPoll}; whether it did (else: the caller's C{startReading}).
    """
    if not isLean(reactor) or fd in reactor._reads or fd in reactor._writes:
        return False
    reactor._poller.register(fd, EPOLLIN)
    reactor._reads.add(fd)
    reactor._selectables[fd] = selectable
    return True


def stopWatching(reactor, selectable, fd: int) -> None:
    """
    Stop watching C{selectable}, on C{fd}, for both reading and writing: what
    C{removeReader} and C{removeWriter} do between them, in one go (at most one
    C{epoll_ctl}) on an epoll reactor given L{doPoll}; on any other reactor, those two.
    """
    if not isLean(reactor):
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
        return
    reads, writes = reactor._reads, reactor._writes
    if fd in reads or fd in writes:
        reads.discard(fd)
        writes.discard(fd)
        del reactor._selectables[fd]
        reactor._poller.unregister(fd)


def stopReadingAt(reactor, fd: int) -> None:
    """
    Stop reading the descriptor C{fd}: what C{removeReader} does, given the descriptor
    (C{EPollReactor._remove}'s work, without its calls).
    """
    reads, writes = reactor._reads, reactor._writes
    if fd in reads:
        reads.discard(fd)
        if fd in writes:
            reactor._poller.modify(fd, EPOLLOUT)
        else:
            del reactor._selectables[fd]
            reactor._poller.unregister(fd)
