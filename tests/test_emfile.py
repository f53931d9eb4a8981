"""
A TCP listener out of file descriptors (EMFILE) neither busy-loops nor stops serving:
a real server in a subprocess with a small C{RLIMIT_NOFILE}.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portserver import accepting, dispatch
from tests.test_twistd import DEADLINE, ROOT

# The server: echo on 127.0.0.1:0, with RLIMIT_NOFILE lowered to what it has open plus
# SPARE; "noreserve" disables the spare descriptor (queued connections then wait).
SERVER = r"""
import os, resource, sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
from portserver import accepting
from portserver.server import PortServer
from tests.support import makePlan, spec
if sys.argv[1] == "noreserve":
    accepting._reserve.reserve = lambda: None
if sys.argv[1] == "stock":  # Twisted's own Port, without its spare descriptor
    from twisted.internet import tcp
    tcp._reservedFD = tcp._NullFileDescriptorReservation()
    accepting._stockListenTCP = lambda reactor: False
server = PortServer(makePlan(spec("echo", port=0)), reactor)
server.startService()
accepting._reserve.release() if sys.argv[1] == "noreserve" else None
def report():
    print("REFUSED", dict(server.registry.refused), dict(server.listeners[0].refused),
          flush=True)
reactor.addSystemEventTrigger("before", "shutdown", report)
def ready():
    used = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 4, hard))
    print("PORT", server.addressOf("echo").port, flush=True)
reactor.callWhenRunning(ready)
reactor.run()
"""

EXHAUSTED = "Out of file descriptors (EMFILE)"


class Server:
    """
    The server process and its output, read without blocking.
    """

    def __init__(self, testCase, mode):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = ROOT
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, mode], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        testCase.addCleanup(self.kill)
        os.set_blocking(self.process.stdout.fileno(), False)
        self.lines, self.buffer = [], b""
        line = self.waitFor("PORT ")
        self.port = int(line.split("PORT ")[1])

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def read(self) -> None:
        chunk = self.process.stdout.read()
        if chunk:
            self.buffer += chunk
            *complete, self.buffer = self.buffer.split(b"\n")
            self.lines.extend(l.decode(errors="replace") for l in complete)

    def has(self, text) -> str | None:
        self.read()
        return next((l for l in self.lines if text in l), None)

    def waitFor(self, text, deadline=DEADLINE) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            found = self.has(text)
            if found is not None:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r}; output:\n" + "\n".join(self.lines))

    def watch(self, seconds) -> None:
        """
        Read the output for C{seconds} (a full pipe would stall a busy loop, hiding it).
        """
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.read()
            time.sleep(0.01)

    def cpuSeconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EMFILETests(SynchronousTestCase):

    def setUp(self):
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc")

    def connect(self, server):
        client = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        self.addCleanup(client.close)
        client.sendall(b"ping")
        return client

    def saturate(self, server):
        """
        Open echoed connections until the server logs that it is out of descriptors;
        return the connections opened, and one more, opened then (which cannot be
        served while the others are open).

        The connection during which the log line came may have been served (an
        accept after it, with the queue empty and no descriptor left, fails EMFILE on
        Linux, not EAGAIN), or closed unserved before the line is read.
        """
        held = []
        for _ in range(50):
            client = self.connect(server)
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:
                if server.has(EXHAUSTED):
                    held.append(client)  # served or closed unserved: either may be
                    return held, self.connect(server)
                if select.select([client], [], [], 0.05)[0]:
                    try:
                        answer = client.recv(100)
                    except ConnectionResetError:
                        answer = b""
                    if answer == b"ping":
                        held.append(client)
                        break
                    # Closed unserved (with the spare descriptor): out of descriptors,
                    # which the server reports as it does so.
                    self.assertEqual(answer, b"")
                    server.waitFor(EXHAUSTED)
                    return held, self.connect(server)
            else:
                self.fail("neither an echo nor EMFILE")
        self.fail("50 connections and no EMFILE")

    def test_backsOffAndRecovers(self):
        """
        Out of descriptors (and with no spare one), the listener neither spins nor
        floods the log; a queued connection is served once descriptors are free, and so
        is a new one.
        """
        server = Server(self, "noreserve")
        held, waiting = self.saturate(server)
        self.assertGreater(len(held), 0)
        saturated = time.monotonic()
        before = server.cpuSeconds()
        server.watch(1.5)
        self.assertLess(server.cpuSeconds() - before, 0.5)  # a busy loop takes ~1.5
        for client in held:
            client.close()
        waiting.settimeout(DEADLINE)
        self.assertEqual(waiting.recv(100), b"ping")  # served after the back-off
        duration = time.monotonic() - saturated
        server.waitFor("Descriptors available again")
        fresh = self.connect(server)
        self.assertEqual(fresh.recv(100), b"ping")
        reports = [l for l in server.lines if EXHAUSTED in l]
        self.assertLessEqual(len(reports), duration + 2)  # at most one a second
        self.assertIn("failed accept(s)", reports[0])

    def test_shedsQueueAndCounts(self):
        """
        With the spare descriptor, a connection that cannot be served is closed at once
        and counted as refused ("no-descriptors"); once descriptors are free, new
        connections are served.
        """
        server = Server(self, "reserve")
        held, refused = self.saturate(server)
        refused.settimeout(DEADLINE)
        try:
            self.assertEqual(refused.recv(100), b"")
        except ConnectionResetError:
            pass
        for client in held:
            client.close()
        end = time.monotonic() + DEADLINE
        while True:  # served again after the back-off (a refused connection may come first)
            client = self.connect(server)
            try:
                if client.recv(100) == b"ping":
                    break
            except ConnectionResetError:
                pass
            self.assertLess(time.monotonic(), end)
            time.sleep(0.1)
        server.process.send_signal(signal.SIGTERM)
        line = server.waitFor("REFUSED")
        self.assertIn("('echo', 'no-descriptors'): ", line)
        server.process.wait(DEADLINE)
        self.assertIn("queued connection(s) closed unserved", server.has(EXHAUSTED))


class ListeningSocket:
    """
    A listening socket whose C{_accept} (the C accept that L{accepting.AcceptingPort}
    calls) raises the errors in C{errors}, in turn.
    """

    def __init__(self, *errors):
        self.errors = list(errors)

    def _accept(self):
        raise OSError(self.errors.pop(0), "")

    accept = _accept


class RecoveryTests(SynchronousTestCase):
    """
    L{accepting.AcceptingPort} tells when descriptors are free again.
    """

    def test_emptyQueueIsRecovery(self):
        """
        After an EMFILE, an accept that finds the queue empty (EAGAIN) shows that
        descriptors are free again (Linux allocates the descriptor before it looks at
        the queue), and the recovery is logged: the connection whose accept hit EMFILE
        may have been the last one, served already.
        """
        events = []
        self.patch(accepting, "log", Logger(observer=events.append))
        # No spare descriptor (another test's listener may have left one open): the
        # queue is not shed, so each accept below is the listener's own.
        self.patch(accepting, "_reserve", accepting._Reserve())
        reactor = MemoryReactorClock()
        port = accepting.AcceptingPort(0, Factory(), reactor=reactor)
        port.socket = ListeningSocket(errno.EMFILE, errno.EAGAIN)
        port.connected = True
        port.numberAccepts = 100  # as startListening sets it
        port.doRead()
        self.assertGreater(port._pause, 0)
        reactor.advance(port._pause)
        port.doRead()
        self.assertEqual(port._pause, 0)
        self.assertIn("Descriptors available again", formatEvent(events[-1]))


class QueuedListeningSocket:
    """
    A listening socket with C{queued} connections waiting, as C{TCP_INFO} tells, whose
    C{_accept} gives them and then fails with EAGAIN; it counts the accepts.
    """

    def __init__(self, queued: int):
        self.waiting = queued
        self.accepts = 0

    def getsockopt(self, level, option, size):
        return bytes(24) + accepting._UNACKED.pack(self.waiting)

    def _accept(self):
        self.accepts += 1
        if not self.waiting:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        self.waiting -= 1
        first, second = socket.socketpair()
        self.addCleanup(second.close)
        return first.detach(), ("127.0.0.1", 40000 + self.accepts)


class QueuedTests(SynchronousTestCase):
    """
    A listener whose wake-ups find few connections accepts as many as the kernel says
    are queued, and no more (no accept that fails with EAGAIN).
    """

    def port(self, queued: int, numberAccepts: int):
        served = []

        class Served(Factory):
            def buildProtocol(self, addr):
                served.append(addr)
                return None  # refused: the accepted socket is closed

        port = accepting.AcceptingPort(0, Served(), reactor=MemoryReactorClock())
        port.socket = QueuedListeningSocket(queued)
        port.socket.addCleanup = self.addCleanup
        port.connected = True
        port.numberAccepts = numberAccepts
        return port, served

    def test_fewQueuedNoFailedAccept(self):
        """
        After small batches (Twisted's count at 1), a wake-up with two queued
        connections accepts exactly two: no third accept to fail with EAGAIN.
        """
        port, served = self.port(queued=2, numberAccepts=1)
        port.doRead()
        self.assertEqual((port.socket.accepts, len(served)), (2, 2))
        self.assertEqual(port.numberAccepts, 2)

    def test_busyListenerAsTwisted(self):
        """
        After large batches, the count is Twisted's (no question to the kernel): up to
        numberAccepts, until the queue is empty.
        """
        port, served = self.port(queued=3, numberAccepts=100)
        asked = []
        port.socket.getsockopt = lambda *args: asked.append(args) or bytes(28)
        port.doRead()
        self.assertEqual(asked, [])
        self.assertEqual((port.socket.accepts, len(served)), (4, 3))
        self.assertEqual(port.numberAccepts, 3)


class LeanWakeTests(SynchronousTestCase):
    """
    Under portserver's dispatch (which counts the reactor's wake-ups), a listener that
    finds few connections per wake-up accepts them with neither a question to the
    kernel nor an accept that fails, and one that stays busy wake-up after wake-up
    accepts more at a time.
    """

    def port(self, queued: int, numberAccepts: int):
        port, served = QueuedTests.port(self, queued, numberAccepts)
        port._lean = True
        port.socket.getsockopt = lambda *args: self.fail("asked the kernel")
        self.patch(dispatch, "wakes", 10)
        return port, served

    def test_oneAtATime(self):
        """
        A listener with one connection at each of its (not consecutive) wake-ups, after
        a wake-up that accepted one: each accepts it with one C{accept}, none failing.
        """
        port, served = self.port(queued=1, numberAccepts=1)
        for wake in (12, 14, 17):
            self.patch(dispatch, "wakes", wake)
            port.doRead()
            self.assertEqual((port.socket.accepts, port.numberAccepts), (1, 1))
            port.socket.accepts, port.socket.waiting = 0, 1
        self.assertEqual(len(served), 3)

    def test_busyWakeUpsInARow(self):
        """
        Wake-ups in a row that each accepted all they could (more were queued) raise the
        count by Twisted's step; a wake-up that empties the queue sets it to what it
        accepted.
        """
        port, served = self.port(queued=5, numberAccepts=1)
        port.doRead()
        self.assertEqual((port.socket.accepts, port.numberAccepts), (1, 1))
        self.patch(dispatch, "wakes", 11)
        port.doRead()
        self.assertEqual((port.socket.accepts, port.numberAccepts), (2, 21))
        self.patch(dispatch, "wakes", 12)
        port.doRead()
        self.assertEqual((port.socket.accepts, len(served)), (6, 5))  # 3, then EAGAIN
        self.assertEqual(port.numberAccepts, 3)

    def test_countBounded(self):
        """
        However long a listener stays busy, it accepts at most L{MAX_ACCEPTS} at a
        wake-up (the reactor's other work waits meanwhile).
        """
        limit = accepting.MAX_ACCEPTS - 5
        port, served = self.port(queued=10 ** 6, numberAccepts=limit)
        port._fullAt = 9  # the wake-up before this one accepted all it could too
        port.doRead()
        self.assertEqual((port.socket.accepts, len(served)), (limit, limit))
        self.assertEqual(port.numberAccepts, accepting.MAX_ACCEPTS)


class AddressTests(SynchronousTestCase):
    """
    The peer's address a listener gives the factory's C{buildProtocol}.
    """

    def test_sameAsTwisteds(self):
        """
        An IPv4 peer's address, made without attrs' C{__init__}, is the
        C{IPv4Address} Twisted's port makes: equal, with the same hash, attributes and
        text; an IPv6 peer's is Twisted's own.
        """
        port = accepting.AcceptingPort(0, Factory(), reactor=MemoryReactorClock())
        built = port._buildAddr(("127.0.0.1", 4321))
        expected = IPv4Address("TCP", "127.0.0.1", 4321)
        self.assertEqual((built, hash(built), vars(built), repr(built)),
                         (expected, hash(expected), vars(expected), repr(expected)))
        self.assertIs(type(built), IPv4Address)
        six = accepting.AcceptingPort(0, Factory(), interface="::1",
                                      reactor=MemoryReactorClock())
        self.assertEqual(six._buildAddr(("::1", 4321, 0, 0)),
                         IPv6Address("TCP", "::1", 4321, 0, 0))
