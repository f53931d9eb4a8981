"""
Tests for L{portserver.connlog}: one line per ended connection, batched, in a file of its
own.
"""

from __future__ import annotations

import os

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portserver import tap
from portserver.connlog import (
    FLUSH_BYTES,
    ConnectionLog,
    ConnectionLogFile,
    formatLine,
    writableBy,
)
from portserver.ports import PrivilegeRule
from portserver.registry import CLIENT_CLOSED, IDLE, SHUTDOWN, Endpoint, Registry
from portserver.startup import StartupError
from tests.support import PortReactor, makePlan, spec

LOCAL = Endpoint("127.0.0.1", 7)
REMOTE = Endpoint("127.0.0.2", 51234)
EPOCH = 1763716867.25  # 2025-11-21T09:21:07.25Z


class RecordingFile:
    """
    Stands in for the log file: keeps each write; fails while C{error} is set.
    """

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False
        self.error = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def lines(self) -> list[str]:
        return b"".join(self.writes).decode("utf-8").splitlines()


def started(reactor=None):
    """
    A registry on a clock at L{EPOCH} and a started L{ConnectionLog} writing to a
    L{RecordingFile}.
    """
    reactor = reactor or MemoryReactorClock()
    reactor.advance(EPOCH)
    registry = Registry(reactor, PrivilegeRule(1024, "test"))
    file = RecordingFile()
    connectionLog = ConnectionLog(registry, "connections.log", reactor, opener=lambda p: file)
    connectionLog.privilegedStartService()
    connectionLog.startService()
    return reactor, registry, connectionLog, file


class FormatTests(SynchronousTestCase):
    """
    L{formatLine} gives one space-separated line with every field.
    """

    def test_tcp(self):
        """
        A TCP line: stamp, id, service, transport, remote -> local, reason, duration in
        seconds with milliseconds, bytes in and out.
        """
        reactor = MemoryReactorClock()
        registry = Registry(reactor, PrivilegeRule(1024, "test"))
        record = registry.open("echo", "echo", "tcp", LOCAL, REMOTE)
        record.bytesIn, record.bytesOut = 64, 65
        reactor.advance(1.5)
        registry.close(record, CLIENT_CLOSED)
        self.assertEqual(formatLine(record, "STAMP"),
                         "STAMP tcp-1 echo tcp 127.0.0.2:51234 -> 127.0.0.1:7 client-closed "
                         "1.500s in=64 out=65\n")

    def test_outbound(self):
        """
        A relayed connection's line ends with the outbound endpoint pair, how it ended
        and its bytes.
        """
        reactor = MemoryReactorClock()
        registry = Registry(reactor, PrivilegeRule(1024, "test"))
        record = registry.open("web", "forward", "tcp", LOCAL, REMOTE)
        outbound = registry.openOutbound(record, Endpoint("127.0.0.1", 52000),
                                         Endpoint("127.0.0.1", 8080))
        outbound.bytesIn, outbound.bytesOut = 10, 20
        registry.close(outbound, "target-closed")
        registry.close(record, CLIENT_CLOSED)
        self.assertEqual(formatLine(record, "S"),
                         "S tcp-1 web tcp 127.0.0.2:51234 -> 127.0.0.1:7 client-closed "
                         "0.000s in=0 out=0 via=127.0.0.1:52000->127.0.0.1:8080 "
                         "target-closed in=10 out=20\n")

    def test_udpAndIPv6(self):
        """
        A UDP line adds the datagram counts; IPv6 endpoints are bracketed.
        """
        reactor = MemoryReactorClock()
        registry = Registry(reactor, PrivilegeRule(1024, "test"))
        record = registry.flow("time", "time", Endpoint("::1", 37), Endpoint("::1", 40000))
        record.datagramsIn, record.datagramsOut, record.bytesIn, record.bytesOut = 2, 2, 0, 8
        registry.close(record, IDLE)
        self.assertEqual(formatLine(record, "S"),
                         "S udp-1 time udp [::1]:40000 -> [::1]:37 idle 0.000s in=0 out=8 "
                         "datagrams=2/2\n")


class ConnectionLogTests(SynchronousTestCase):
    """
    L{ConnectionLog} writes a line per ended connection, once a second or per 64 KiB.
    """

    def test_closeOnlyBatchedPerSecond(self):
        """
        Opening writes nothing; a close is buffered, and written (stamped in UTC with the
        close time) when the once-a-second flush runs.
        """
        reactor, registry, _, file = started()
        record = registry.open("echo", "echo", "tcp", LOCAL, REMOTE)
        registry.close(record, CLIENT_CLOSED)
        self.assertEqual(file.writes, [])
        reactor.advance(1)
        self.assertEqual(file.lines(), ["2025-11-21T09:21:07Z tcp-1 echo tcp "
                                        "127.0.0.2:51234 -> 127.0.0.1:7 client-closed 0.000s "
                                        "in=0 out=0"])

    def test_flushesAtSize(self):
        """
        Once the buffer holds 64 KiB it is written at once, in one write.
        """
        _, registry, _, file = started()
        written = 0
        while not file.writes:
            registry.close(registry.open("echo", "echo", "tcp", LOCAL, REMOTE), CLIENT_CLOSED)
            written += 1
        self.assertEqual(len(file.writes), 1)
        self.assertGreaterEqual(len(file.writes[0]), FLUSH_BYTES)
        self.assertEqual(len(file.lines()), written)

    def test_stampPerSecond(self):
        """
        The stamp is made again only when the second changes.
        """
        _, _, connectionLog, _ = started()
        first = connectionLog.stamp(EPOCH)
        self.assertIs(connectionLog.stamp(EPOCH + 0.5), first)
        self.assertEqual(connectionLog.stamp(EPOCH + 1), "2025-11-21T09:21:08Z")

    def test_shutdownClosesAreLogged(self):
        """
        Stopping the service writes what is buffered but keeps listening, so connections
        the reactor closes while shutting down are logged; after shutdown the buffer is
        written, the file closed, and nothing more is taken.
        """
        reactor, registry, connectionLog, file = started()
        first = registry.open("echo", "echo", "tcp", LOCAL, REMOTE)
        second = registry.open("echo", "echo", "tcp", LOCAL, Endpoint("127.0.0.3", 1))
        registry.close(first, CLIENT_CLOSED)
        connectionLog.stopService()
        self.assertEqual(len(file.lines()), 1)
        registry.close(second, SHUTDOWN)
        [(close, args, kwargs)] = reactor.triggers["after"]["shutdown"]
        close(*args, **kwargs)
        self.assertTrue(file.closed)
        self.assertEqual([line.split()[7] for line in file.lines()], [CLIENT_CLOSED, SHUTDOWN])
        registry.close(registry.open("echo", "echo", "tcp", LOCAL, REMOTE), CLIENT_CLOSED)
        self.assertEqual(len(file.lines()), 2)

    def test_writeFailureLoggedOnce(self):
        """
        A failed write is logged once with the path and the OS error, its lines are
        dropped, the server carries on, and the next good write is logged as a recovery.
        """
        reactor, registry, _, file = started()
        file.error = OSError(28, "No space left on device")
        with capturedLogs() as events:
            for _ in range(2):
                registry.close(registry.open("echo", "echo", "tcp", LOCAL, REMOTE),
                               CLIENT_CLOSED)
                reactor.advance(1)
            file.error = None
            registry.close(registry.open("echo", "echo", "tcp", LOCAL, REMOTE), CLIENT_CLOSED)
            reactor.advance(1)
        messages = [e["log_format"] for e in events]
        self.assertEqual(len(messages), 2, messages)
        self.assertIn("Cannot write the connection log", messages[0])
        self.assertEqual(events[0]["error"], "No space left on device")
        self.assertEqual([line.split()[1] for line in file.lines()], ["tcp-3"])

    def test_unwritablePathFailsStartup(self):
        """
        A log file that cannot be opened fails start-up with a L{StartupError} naming it.
        """
        registry = Registry(MemoryReactorClock(), PrivilegeRule(1024, "test"))
        path = os.path.abspath(os.path.join(self.mktemp(), "missing-directory",
                                            "connections.log"))
        connectionLog = ConnectionLog(registry, path, MemoryReactorClock())
        error = self.assertRaises(StartupError, connectionLog.privilegedStartService)
        self.assertIn(f"cannot open the connection log {path!r}", str(error))
        self.assertIn("No such file or directory", str(error))


class RealFileTests(SynchronousTestCase):
    """
    The service tree writes the connection log to the configured file.
    """

    def test_treeWritesConfiguredFile(self):
        """
        With C{connection_log} set, L{tap.makeService} adds the log before the port server
        (so it stops last); a closed connection is a line in the real file after a stop.
        """
        path = os.path.abspath(self.mktemp())
        plan = makePlan(spec("echo", port=7))
        plan = attrs.evolve(plan, config=attrs.evolve(
            plan.config, registry=attrs.evolve(plan.config.registry, connectionLog=path)))
        reactor = PortReactor()
        tree = tap.makeService({"plan": plan}, reactor=reactor)
        self.assertEqual([s.name for s in tree],
                         ["reload-signal", "connection-log", "portserver", "status"])
        tree.privilegedStartService()
        tree.startService()
        registry = tree.getServiceNamed("portserver").registry
        registry.close(registry.open("echo", "echo", "tcp", LOCAL, REMOTE), CLIENT_CLOSED)
        tree.stopService()
        with open(path) as f:
            self.assertRegex(f.read(), r"^\S+Z tcp-1 echo tcp 127\.0\.0\.2:51234 -> "
                                       r"127\.0\.0\.1:7 client-closed ")


class PathAndOwnerTests(SynchronousTestCase):
    """
    Where the connection log goes, and that it stays bounded under another user.
    """

    def test_relativeToWorkingDirectoryAndLogged(self):
        """
        A relative path is taken from the directory the server runs in (where twistd's
        pid and log files go by default), and its absolute path is logged when opened.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        registry = Registry(MemoryReactorClock(), PrivilegeRule(1024, "test"))
        connectionLog = ConnectionLog(registry, "connections.log", MemoryReactorClock())
        with capturedLogs() as events:
            connectionLog.open()
        self.addCleanup(connectionLog.close)
        path = os.path.join(directory, "connections.log")
        self.assertEqual(connectionLog.path, path)
        self.assertTrue(os.path.exists(path))
        self.assertIn(path, [e.get("path") for e in events])

    def test_unrotatableStaysBounded(self):
        """
        When the directory cannot take a rotation (Twisted's L{LogFile} then skips it
        and grows without end), the file is emptied at the size limit instead, and an
        error says why.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "connections.log")
        logFile = ConnectionLogFile.fromFullPath(path, rotateLength=1000)
        self.addCleanup(logFile.close)
        self.patch(os, "access", lambda p, mode: p != directory)
        with capturedLogs() as events:
            for _ in range(50):
                logFile.write("x" * 99 + "\n")
            logFile.flush()
        self.assertLessEqual(os.path.getsize(path), 1000)
        self.assertFalse(os.path.exists(path + ".1"))
        self.assertIn("Cannot rotate the connection log", " ".join(
            e.get("log_format", "") for e in events))

    def test_rotatesWhereItCan(self):
        """
        Where the directory is writable, rotation is Twisted's: the old lines move to
        C{.1}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "connections.log")
        logFile = ConnectionLogFile.fromFullPath(path, rotateLength=1000)
        self.addCleanup(logFile.close)
        for _ in range(15):
            logFile.write("x" * 99 + "\n")
        logFile.flush()
        self.assertTrue(os.path.exists(path + ".1"))

    def test_writableBy(self):
        """
        L{writableBy} reads the mode bits for the user twistd drops to: owner, group,
        others; root may always.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        info = os.stat(directory)
        other = info.st_uid + 12345
        os.chmod(directory, 0o755)
        self.assertTrue(writableBy(directory, info.st_uid, info.st_gid))
        self.assertFalse(writableBy(directory, other, info.st_gid + 12345))
        self.assertTrue(writableBy(directory, 0, 0))
        os.chmod(directory, 0o775)
        self.assertTrue(writableBy(directory, other, info.st_gid))
        os.chmod(directory, 0o777)
        self.assertTrue(writableBy(directory, other, info.st_gid + 12345))

    def test_handedToTheDroppedUser(self):
        """
        Run as root with C{--uid}/C{--gid}, the file (opened as root) is given to that
        user, and a directory it cannot write is a warning at start-up.
        """
        if os.getuid() != 0:
            raise SkipTest("changing a file's owner needs root")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        os.chmod(directory, 0o755)
        registry = Registry(MemoryReactorClock(), PrivilegeRule(1024, "test"))
        connectionLog = ConnectionLog(registry, os.path.join(directory, "c.log"),
                                      MemoryReactorClock(), owner=(65534, 65534))
        with capturedLogs() as events:
            connectionLog.open()
        self.addCleanup(connectionLog.close)
        info = os.stat(connectionLog.path)
        self.assertEqual((info.st_uid, info.st_gid), (65534, 65534))
        self.assertTrue(any("is not writable by uid" in e.get("log_format", "")
                            for e in events))

    def test_droppedTo(self):
        """
        L{tap.droppedTo} is the C{--uid}/C{--gid} twistd drops to when run as root, else
        L{None}.
        """
        class Options(dict):
            parent = {"uid": 65534, "gid": 65534}
        self.assertEqual(tap.droppedTo(Options(), geteuid=lambda: 0), (65534, 65534))
        self.assertIsNone(tap.droppedTo(Options(), geteuid=lambda: 1000))
        Options.parent = {"uid": None, "gid": None}
        self.assertIsNone(tap.droppedTo(Options(), geteuid=lambda: 0))
