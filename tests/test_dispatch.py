"""
Tests for L{portserver.dispatch}: an epoll reactor's events dispatched to portserver's
selectables without Twisted's legacy log context, and to every other as before.
"""

from __future__ import annotations

import os

from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python import context, log as legacyLog
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from portserver.dispatch import Lean, leanDispatch


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


class DispatchTests(SynchronousTestCase):
    """
    L{leanDispatch} on a real (uninstalled) epoll reactor.
    """

    def setUp(self):
        self.reactor = EPollReactor()
        self.addCleanup(self.reactor._poller.close)

    def reader(self, kind=Reader, **kwargs):
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        reader = kind(self.reactor, readEnd, **kwargs)
        self.reactor.addReader(reader)
        self.addCleanup(self.reactor.removeReader, reader)
        os.write(writeEnd, b"x")
        return reader

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

    def test_faultLoggedAndLoopGoesOn(self):
        """
        An exception escaping a lean selectable's event is logged, and the other
        events of the same poll are still dispatched.
        """
        events = []

        @provider(ILogObserver)
        def observe(event):
            events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.patch(self.reactor, "_doReadOrWrite", self.failing)
        leanDispatch(self.reactor)
        first = self.reader(LeanReader)
        second = self.reader(LeanReader)
        self.reactor.doPoll(0)
        self.assertEqual(self.dispatched, [first, second])
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 2)
        self.flushLoggedErrors(RuntimeError)

    dispatched: list

    def failing(self, selectable, fd, event):
        self.__dict__.setdefault("dispatched", []).append(selectable)
        raise RuntimeError("escaped")
