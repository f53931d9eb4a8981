"""
Tests for L{portserver.dispatch}: an epoll reactor's events dispatched to portserver's
selectables without Twisted's legacy log context, and to every other as before.
"""

from __future__ import annotations

import os

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python import context, log as legacyLog
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from portserver import dispatch
from portserver.dispatch import Lean, leanDispatch, stopWatching


class Reader(FileDescriptor):
    """
    The read end of a pipe, remembering the legacy log context of each C{doRead}.
    """

    def __init__(self, reactor, fd: int, prefix: str = "reader"):
        super().__init__(reactor)
        self.fd, self.prefix = fd, prefix
        self.systems = []

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return self.prefix

    def doRead(self):
        os.read(self.fd, 100)
        self.systems.append(context.get(legacyLog.ILogContext, {}).get("system"))


class LeanReader(Lean, Reader):
    """
    A L{Reader} of portserver's kind.
    """

    def logPrefix(self) -> str:
        raise AssertionError("a lean selectable is not asked for its prefix")


class ReactorFixture:
    """
    A real (uninstalled) epoll reactor, and pipes to read from.
    """

    def setUp(self):
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)

    def reader(self, kind=Reader, data=b"x", **kwargs):
        """
        A C{kind} reading a new pipe, into which C{data} is written; with no data,
        the write end is closed (the read end then reports a hang-up alone).
        """
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        reader = kind(self.reactor, readEnd, **kwargs)
        self.reactor.addReader(reader)
        self.addCleanup(lambda: reader in self.reactor.getReaders()
                        and self.reactor.removeReader(reader))
        if data:
            os.write(writeEnd, data)
            self.addCleanup(os.close, writeEnd)
        else:
            os.close(writeEnd)
        return reader


class DispatchTests(ReactorFixture, SynchronousTestCase):
    """
    L{leanDispatch} on a real (uninstalled) epoll reactor.
    """

    def test_onlyTwistedsEpollReactor(self):
        """
        Only Twisted's own epoll reactor gets the lean poll, once; any other reactor
        is left alone.
        """
        self.assertTrue(leanDispatch(self.reactor))
        poll = self.reactor.doPoll
        self.assertTrue(leanDispatch(self.reactor))
        self.assertIs(self.reactor.doPoll, poll)
        self.assertEqual(self.reactor.doIteration, poll)
        memory = MemoryReactor()
        self.assertFalse(leanDispatch(memory))
        self.assertNotIn("doPoll", vars(memory))

    def test_leanWithoutContextOthersWith(self):
        """
        A lean selectable's event is dispatched without asking its log prefix or
        pushing a legacy log context (a legacy log line made then has the default
        system, C{"-"}); any other selectable's with both, as Twisted's reactor does.
        """
        leanDispatch(self.reactor)
        lean = self.reader(LeanReader)
        other = self.reader(Reader, prefix="status")
        self.reactor.doPoll(0)
        self.assertEqual((lean.systems, other.systems), (["-"], ["status"]))

    def test_wakesCounted(self):
        """
        Each poll that returns counts one wake-up (L{dispatch.wakes}), with events or
        without: what a listener compares to tell wake-ups in a row.
        """
        leanDispatch(self.reactor)
        self.reader(LeanReader)
        before = dispatch.wakes
        self.reactor.doPoll(0)
        self.reactor.doPoll(0)
        self.assertEqual(dispatch.wakes, before + 2)

    def test_faultLoggedAndLoopGoesOn(self):
        """
        An exception escaping the handling of a lean selectable's other events (here
        a hang-up) is logged, and the other events of the same poll are still
        dispatched.
        """
        events = []

        @provider(ILogObserver)
        def observe(event):
            events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        dispatched = []

        def failing(selectable, fd, event):
            dispatched.append(selectable)
            raise RuntimeError("escaped")

        self.patch(self.reactor, "_doReadOrWrite", failing)
        leanDispatch(self.reactor)
        first = self.reader(LeanReader, data=b"")
        second = self.reader(LeanReader, data=b"")
        self.reactor.doPoll(0)
        self.assertEqual(sorted(map(id, dispatched)), sorted([id(first), id(second)]))
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 2)
        self.flushLoggedErrors(RuntimeError)


class Ending(LeanReader):
    """
    A lean reader whose read ends it: it returns C{why}, or raises it.
    """

    def __init__(self, reactor, fd, why, raises=False):
        super().__init__(reactor, fd)
        self.why, self.raises = why, raises
        self.lost = []

    def doRead(self):
        super().doRead()
        if self.raises:
            raise self.why
        return self.why

    def connectionLost(self, reason):
        self.reactor.removeReader(self)
        self.lost.append(reason)


class ReadEndsTests(ReactorFixture, SynchronousTestCase):
    """
    Data to read goes straight to a lean selectable's C{doRead}; what ends it there
    ends it as Twisted's reactor would.
    """

    def test_returnedReasonDisconnects(self):
        """
        A C{doRead} that returns a reason (the peer closed) has the selectable lost
        with it, as a read: C{connectionLost} gets C{ConnectionDone}.
        """
        leanDispatch(self.reactor)
        reader = self.reader(Ending, why=main.CONNECTION_DONE)
        self.reactor.doPoll(0)
        [reason] = reader.lost
        self.assertTrue(reason.check(ConnectionDone))

    def test_endOfInputOfHalfCloseable(self):
        """
        The end of input (C{CONNECTION_DONE}) of a half-closeable lean selectable (a TCP
        connection) stops its reading and calls its C{readConnectionLost} with a
        C{ConnectionDone}, as Twisted's reactor does for an C{IHalfCloseableDescriptor};
        C{connectionLost} is left to it.
        """
        class HalfEnding(Ending):
            halfCloseable = True

            def readConnectionLost(self, reason):
                self.readLost = (reason, self in self.reactor.getReaders())

        leanDispatch(self.reactor)
        reader = self.reader(HalfEnding, why=main.CONNECTION_DONE)
        self.reactor.doPoll(0)
        reason, stillReading = reader.readLost
        self.assertTrue(reason.check(ConnectionDone))
        self.assertFalse(stillReading)
        self.assertEqual(reader.lost, [])

    def test_endOfInputWhileWriting(self):
        """
        At the end of input of a half-closeable lean selectable that is also waiting to
        write (output is buffered), only the reading stops: it stays the reactor's
        writer (epoll now watches it for writing alone), and is not read again.
        """
        class HalfEnding(Ending):
            halfCloseable = True
            reads = 0

            def doRead(self):
                self.reads += 1
                return super().doRead()

            def readConnectionLost(self, reason):
                self.readLost = reason

        leanDispatch(self.reactor)
        reader = self.reader(HalfEnding, data=b"x" * 300, why=main.CONNECTION_DONE)
        self.reactor.addWriter(reader)
        self.addCleanup(self.reactor.removeWriter, reader)
        self.reactor.doPoll(0)
        self.assertTrue(reader.readLost.check(ConnectionDone))
        self.assertNotIn(reader, self.reactor.getReaders())
        self.assertIn(reader, self.reactor.getWriters())
        self.assertIs(self.reactor._selectables[reader.fileno()], reader)
        self.reactor.doPoll(0)  # still readable: read again had epoll kept EPOLLIN
        self.assertEqual(reader.reads, 1)

    def test_raisedIsLoggedAndDisconnects(self):
        """
        An exception raised by C{doRead} is logged and loses the selectable with it.
        """
        leanDispatch(self.reactor)
        reader = self.reader(Ending, why=RuntimeError("fault"), raises=True)
        self.reactor.doPoll(0)
        [reason] = reader.lost
        self.assertTrue(reason.check(RuntimeError))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class StopWatchingTests(ReactorFixture, SynchronousTestCase):
    """
    L{stopWatching}: a selectable leaves the reactor's reading and writing at once.
    """

    def test_leanReactor(self):
        """
        On an epoll reactor given the lean poll, a selectable watched for reading and
        writing is watched for neither afterwards, and its descriptor has left epoll (a
        second registration succeeds); stopping one that is not watched does nothing;
        other selectables are untouched.
        """
        leanDispatch(self.reactor)
        lean = self.reader(LeanReader)
        other = self.reader(Reader)
        self.reactor.addWriter(lean)
        stopWatching(self.reactor, lean, lean.fileno())
        self.assertNotIn(lean, self.reactor.getReaders())
        self.assertNotIn(lean, self.reactor.getWriters())
        self.assertIn(other, self.reactor.getReaders())
        self.assertNotIn(lean.fileno(), self.reactor._selectables)
        stopWatching(self.reactor, lean, lean.fileno())
        self.reactor.addReader(lean)  # epoll_ctl ADD would fail (EEXIST) had it stayed
        self.assertIn(lean, self.reactor.getReaders())

    def test_writerOnly(self):
        """
        A selectable watched only for writing is removed too.
        """
        leanDispatch(self.reactor)
        lean = self.reader(LeanReader)
        self.reactor.removeReader(lean)
        self.reactor.addWriter(lean)
        stopWatching(self.reactor, lean, lean.fileno())
        self.assertNotIn(lean, self.reactor.getReaders())
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertNotIn(lean.fileno(), self.reactor._selectables)

    def test_stopReadingAt(self):
        """
        L{dispatch.stopReadingAt} does what C{removeReader} does, given the descriptor:
        a reader alone leaves epoll; one also writing stays a writer; a descriptor not
        read is left as it is.
        """
        leanDispatch(self.reactor)
        alone = self.reader(LeanReader)
        writing = self.reader(LeanReader)
        self.reactor.addWriter(writing)
        self.addCleanup(self.reactor.removeWriter, writing)
        dispatch.stopReadingAt(self.reactor, alone.fileno())
        dispatch.stopReadingAt(self.reactor, writing.fileno())
        dispatch.stopReadingAt(self.reactor, writing.fileno())
        self.assertNotIn(alone, self.reactor.getReaders())
        self.assertNotIn(writing, self.reactor.getReaders())
        self.assertEqual(self.reactor.getWriters(), [writing])
        self.assertNotIn(alone.fileno(), self.reactor._selectables)
        self.reactor.addReader(alone)  # epoll_ctl ADD would fail (EEXIST) had it stayed
        self.assertIn(alone, self.reactor.getReaders())

    def test_otherReactors(self):
        """
        Any other reactor is asked through C{removeReader} and C{removeWriter}.
        """
        memory = MemoryReactor()
        selectable = object()
        memory.addReader(selectable)
        memory.addWriter(selectable)
        stopWatching(memory, selectable, 7)
        self.assertEqual((memory.getReaders(), memory.getWriters()), ([], []))
