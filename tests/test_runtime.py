"""
Tests for L{portserver.runtime}: the runtime file's name, content and life, and reading a
process's command line from C{/proc}.
"""

from __future__ import annotations

import json
import os

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portserver import runtime


class FakeStatus:
    """
    What L{runtime.statusURL} reads of a status service: its endpoint and address.
    """

    def __init__(self, address, listen="tcp:0"):
        self.address = address
        self.listen = listen


class NamesTests(SynchronousTestCase):
    """
    L{runtime.runtimePath} and L{runtime.statusURL}.
    """

    def test_runtimePath(self):
        """
        The runtime file is the pid file's name without C{.pid}, plus
        C{.portserver.json}, in the same directory.
        """
        self.assertEqual(runtime.runtimePath("/srv/twistd.pid"), "/srv/twistd.portserver.json")
        self.assertEqual(runtime.runtimePath("/run/server"), "/run/server.portserver.json")

    def test_statusURL(self):
        """
        The URL is the bound address; a wildcard is reached on loopback, IPv6 is in
        brackets, C{ssl:} is https, and a UNIX socket (or nothing bound) has none.
        """
        url = runtime.statusURL
        self.assertEqual(url(FakeStatus(IPv4Address("TCP", "127.0.0.1", 40001))),
                         "http://127.0.0.1:40001")
        self.assertEqual(url(FakeStatus(IPv4Address("TCP", "0.0.0.0", 8790))),
                         "http://127.0.0.1:8790")
        self.assertEqual(url(FakeStatus(IPv6Address("TCP", "::", 8790))),
                         "http://[::1]:8790")
        self.assertEqual(url(FakeStatus(IPv6Address("TCP", "::1", 8443), "ssl:8443")),
                         "https://[::1]:8443")
        self.assertIsNone(url(FakeStatus(UNIXAddress("/run/s.sock"))))
        self.assertIsNone(url(FakeStatus(None)))


class CommandLineTests(SynchronousTestCase):
    """
    L{runtime.commandLine} reads C{PROC/PID/cmdline} (here from a fake C{/proc}).
    """

    def setUp(self):
        self.proc = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.proc, "self"))

    def process(self, pid, data: bytes):
        os.makedirs(os.path.join(self.proc, str(pid)))
        with open(os.path.join(self.proc, str(pid), "cmdline"), "wb") as f:
            f.write(data)

    def test_arguments(self):
        """
        The NUL-separated arguments are the command line; a zombie's is empty.
        """
        self.process(10, b"/venv/bin/python\0/venv/bin/twistd\0-n\0portserver\0")
        self.process(11, b"")
        self.assertEqual(runtime.commandLine(10, self.proc),
                         ["/venv/bin/python", "/venv/bin/twistd", "-n", "portserver"])
        self.assertEqual(runtime.commandLine(11, self.proc), [])

    def test_noProcess(self):
        """
        With C{/proc} mounted, a missing pid is L{ProcessLookupError}; without it, the
        command line is unknown (L{None}).
        """
        self.assertRaises(ProcessLookupError, runtime.commandLine, 12, self.proc)
        self.assertIsNone(runtime.commandLine(12, os.path.abspath(self.mktemp())))

    def test_thisProcess(self):
        """
        On this machine's C{/proc} (where there is one), this test's own command line
        is read, and it is not a portserver.
        """
        if not os.path.isdir("/proc/self"):
            raise SkipTest("no /proc")
        argv = runtime.commandLine(os.getpid())
        self.assertTrue(argv)
        self.assertFalse(runtime.isPortserverCommand(argv))


class RuntimeFileTests(SynchronousTestCase):
    """
    L{runtime.RuntimeFile} writes the file when started and removes it when stopped,
    and L{runtime.readRuntime} reads only what it writes.
    """

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())

    def service(self, pid=4242, status=None):
        return runtime.RuntimeFile(self.path, "/srv/twistd.pid", "/srv/my.yaml", status,
                                   getpid=lambda: pid)

    def test_writtenAndRemoved(self):
        """
        Started, the service writes the pid, config, status URL and pid file; stopped,
        it removes the file.
        """
        service = self.service(status=FakeStatus(IPv4Address("TCP", "127.0.0.1", 40001)))
        service.startService()
        expected = {"pid": 4242, "config": "/srv/my.yaml",
                    "status_url": "http://127.0.0.1:40001", "pidfile": "/srv/twistd.pid"}
        self.assertEqual(runtime.readRuntime(self.path), expected)
        self.assertEqual(os.listdir(os.path.dirname(self.path)),
                         [os.path.basename(self.path)])  # no temporary file left
        service.stopService()
        self.assertFalse(os.path.exists(self.path))

    def test_anotherProcessFileIsKept(self):
        """
        A file that another process has written since (a second server on the same pid
        file) is not removed.
        """
        mine = self.service(pid=1)
        mine.startService()
        self.service(pid=2).startService()
        mine.stopService()
        self.assertEqual(runtime.readRuntime(self.path)["pid"], 2)

    def test_unwritableIsNotFatal(self):
        """
        A directory that cannot be written only costs the file: start-up goes on.
        """
        self.path = os.path.join(os.path.abspath(self.mktemp()), "missing", "x.json")
        service = self.service()
        service.startService()
        self.assertTrue(service.running)
        self.assertFalse(os.path.exists(self.path))
        service.stopService()

    def test_readRuntimeRefusesOtherFiles(self):
        """
        A missing file, a file that is not JSON, or JSON without a positive integer
        C{pid} is no runtime file (L{None}).
        """
        self.assertIsNone(runtime.readRuntime(self.path))
        for text in ("not json", "[]", '{"pid": "12"}', '{"pid": 0}', '{"pid": true}',
                     '{"pid": 5, "status_url": 7}'):
            with open(self.path, "w") as f:
                f.write(text)
            self.assertIsNone(runtime.readRuntime(self.path), text)
        with open(self.path, "w") as f:
            json.dump({"pid": 5, "config": "/c.yaml", "status_url": None}, f)
        self.assertEqual(runtime.readRuntime(self.path)["pid"], 5)
