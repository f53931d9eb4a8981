"""
Tests for L{portserver.sdnotify}: messages as a service manager receives them, on a
real C{AF_UNIX} datagram socket standing in for systemd's C{NOTIFY_SOCKET}.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from portserver.sdnotify import Notifier, socketAddress, statusText


class FakeManager:
    """
    A datagram socket bound where C{NOTIFY_SOCKET} says, as systemd's is; closed at
    C{testCase}'s cleanup.

    @ivar notifySocket: the value C{NOTIFY_SOCKET} would have.
    """

    def __init__(self, testCase, abstract: bool = False):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testCase.addCleanup(self.socket.close)
        if abstract:
            name = f"portserver-test-{uuid.uuid4().hex}"
            self.socket.bind("\0" + name)
            self.notifySocket = "@" + name
        else:
            # Not under trial's working directory: a socket path has at most 107 bytes.
            directory = tempfile.mkdtemp(prefix="portserver-notify-")
            testCase.addCleanup(shutil.rmtree, directory)
            self.notifySocket = os.path.join(directory, "notify")
            self.socket.bind(self.notifySocket)
        self.socket.setblocking(False)

    def received(self) -> list[bytes]:
        """
        The datagrams that arrived since last asked.
        """
        messages = []
        while True:
            try:
                messages.append(self.socket.recv(65536))
            except BlockingIOError:
                return messages


class NotifierTests(SynchronousTestCase):
    """
    L{Notifier} sends each notification as one datagram of C{KEY=VALUE} lines.
    """

    def setUp(self):
        self.manager = FakeManager(self)
        self.notifier = Notifier.fromEnvironment(
            {"NOTIFY_SOCKET": self.manager.notifySocket}, monotonic=lambda: 1234567)

    def test_ready(self):
        """
        C{ready()} sends C{READY=1}; with a status, C{STATUS=} in the same datagram.
        """
        self.assertTrue(self.notifier.enabled)
        self.assertTrue(self.notifier.ready())
        self.assertTrue(self.notifier.ready("serving: 0 live connections"))
        self.assertEqual(self.manager.received(),
                         [b"READY=1\n", b"READY=1\nSTATUS=serving: 0 live connections\n"])

    def test_reloading(self):
        """
        C{reloading()} sends C{RELOADING=1} with C{MONOTONIC_USEC=} from the clock, as
        C{Type=notify-reload} requires.
        """
        self.assertTrue(self.notifier.reloading("reloading"))
        self.assertEqual(self.manager.received(),
                         [b"RELOADING=1\nMONOTONIC_USEC=1234567\nSTATUS=reloading\n"])

    def test_monotonicClock(self):
        """
        By default C{MONOTONIC_USEC=} is C{CLOCK_MONOTONIC} now, in microseconds.
        """
        notifier = Notifier(self.manager.notifySocket)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        [message] = self.manager.received()
        lines = message.decode("ascii").splitlines()
        self.assertEqual(lines[0], "RELOADING=1")
        key, _, value = lines[1].partition("=")
        self.assertEqual(key, "MONOTONIC_USEC")
        self.assertTrue(before <= int(value) <= after, (before, value, after))

    def test_stoppingAndStatus(self):
        """
        C{stopping()} sends C{STOPPING=1}; C{status()} a C{STATUS=} line alone, line
        breaks in it turned to spaces (a line break would start another field).
        """
        self.assertTrue(self.notifier.stopping("draining: 2 live connections"))
        self.assertTrue(self.notifier.status("one\ntwo\r\nthree"))
        self.assertEqual(self.manager.received(),
                         [b"STOPPING=1\nSTATUS=draining: 2 live connections\n",
                          b"STATUS=one two three\n"])

    def test_abstractSocket(self):
        """
        A C{NOTIFY_SOCKET} that starts with C{@} names an abstract socket.
        """
        manager = FakeManager(self, abstract=True)
        notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": manager.notifySocket})
        self.assertTrue(notifier.ready())
        self.assertEqual(manager.received(), [b"READY=1\n"])

    def test_environmentLeftAlone(self):
        """
        C{fromEnvironment} does not remove C{NOTIFY_SOCKET} from the mapping.
        """
        environ = {"NOTIFY_SOCKET": self.manager.notifySocket}
        Notifier.fromEnvironment(environ)
        self.assertEqual(environ, {"NOTIFY_SOCKET": self.manager.notifySocket})


class NoManagerTests(SynchronousTestCase):
    """
    Without C{NOTIFY_SOCKET} the notifier does nothing, and says so.
    """

    def test_unsetOrEmpty(self):
        """
        Unset or empty, C{NOTIFY_SOCKET} gives a disabled notifier: every method
        returns C{False}, and nothing is logged.
        """
        for environ in ({}, {"NOTIFY_SOCKET": ""}):
            notifier = Notifier.fromEnvironment(environ)
            self.assertFalse(notifier.enabled)
            with capturedLogs() as events:
                self.assertEqual([notifier.ready(), notifier.reloading(),
                                  notifier.stopping(), notifier.status("x")],
                                 [False] * 4)
            self.assertEqual(events, [])

    def test_processEnvironment(self):
        """
        Without a mapping, C{fromEnvironment} reads the process's environment.
        """
        self.patch(os, "environ", {"NOTIFY_SOCKET": "/run/systemd/notify"})
        self.assertEqual(Notifier.fromEnvironment().address, "/run/systemd/notify")


class FailureTests(SynchronousTestCase):
    """
    A notification that cannot be sent is logged once, and never raised.
    """

    def assertLoggedOnce(self, events, *fragments):
        [event] = events
        text = formatEvent(event)
        for fragment in fragments:
            self.assertIn(fragment, text)
        self.assertEqual(event["log_level"].name, "warn")

    def test_nobodyListens(self):
        """
        A C{NOTIFY_SOCKET} path where no socket is: each send returns C{False}; the
        first failure is logged with the address and the reason, the next ones not.
        """
        directory = tempfile.mkdtemp(prefix="portserver-notify-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "absent")
        notifier = Notifier(path)
        with capturedLogs() as events:
            self.assertFalse(notifier.ready())
            self.assertFalse(notifier.stopping())
            self.assertFalse(notifier.status("x"))
        self.assertLoggedOnce(events, path, "No such file or directory",
                              "further failures are not logged")

    def test_unusableAddress(self):
        """
        A relative path (or a bare C{@}) is not sent to; said once.
        """
        for value in ("notify", "@", "vsock:2:1234"):
            notifier = Notifier(value)
            with capturedLogs() as events:
                self.assertFalse(notifier.ready())
                self.assertFalse(notifier.ready())
            self.assertLoggedOnce(events, repr(value), "neither an absolute path")

    def test_fullQueueDoesNotBlock(self):
        """
        When the manager does not read and its queue fills up, sending fails at once
        (the reactor is never blocked) and is logged once.
        """
        manager = FakeManager(self)
        notifier = Notifier(manager.notifySocket)
        results = []
        with capturedLogs() as events:
            for _ in range(20000):  # far past net.unix.max_dgram_qlen (512 by default)
                results.append(notifier.status("x" * 1000))
                if not results[-1]:
                    break
        self.assertTrue(results[0])
        self.assertFalse(results[-1], "the queue never filled")
        self.assertLoggedOnce(events, "Resource temporarily unavailable")


class HelperTests(SynchronousTestCase):
    """
    L{socketAddress} and L{statusText}.
    """

    def test_socketAddress(self):
        """
        Absolute paths stay as they are; C{@name} becomes C{\\0name}; the rest is
        refused.
        """
        self.assertEqual(socketAddress("/run/systemd/notify"), "/run/systemd/notify")
        self.assertEqual(socketAddress("@abc"), "\0abc")
        self.assertIsNone(socketAddress("run/notify"))
        self.assertIsNone(socketAddress("@"))
        self.assertIsNone(socketAddress(""))

    def test_statusText(self):
        """
        The status line names the state, the live connections and the generation.
        """
        self.assertEqual(statusText("serving", 3, 2),
                         "serving: 3 live connections, config generation 2")
        self.assertEqual(statusText("draining", 1, 5),
                         "draining: 1 live connection, config generation 5")
