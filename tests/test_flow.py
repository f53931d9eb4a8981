"""
Flow control in portserver's own layer (L{portserver.tracking}): a connection whose
unsent output passes the high-water mark stops reading from its peer, and resumes once
the output is back under the low-water mark, so a plugin that only writes in answer to
input (echo) is never aborted by the output cap, whatever the peer's reading speed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portserver.limits import Limits
from portserver.plan import loadPlan
from portserver.plugins import discover
from portserver.ports import PrivilegeRule
from portserver.registry import CLOSED, Registry
from portserver.server import PortServer
from portserver.tracking import (
    HIGH_WATER,
    LOW_WATER,
    OUTPUT_CAP,
    PAUSED_FLOW,
    TrackingFactory,
)
from portserver.transport import FlowControlledTransport
from tests.support import freePort

DEADLINE = 60


class _WritingStringTransport(StringTransport):
    def doWrite(self):
        return None  # the reactor's part: the socket took what L{send} says


class BufferingTransport(FlowControlledTransport, _WritingStringTransport):
    """
    A L{StringTransport} that keeps what is written unsent, in the private attributes
    L{portserver.tracking.unsentBytes} reads (as Twisted's C{FileDescriptor} does),
    until L{send} hands some of it to the "kernel"; it records pauses of reading.
    """

    def __init__(self):
        super().__init__()
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.reading = True

    def write(self, data):
        super().write(data)
        self._tempDataLen += len(data)

    def pauseProducing(self):
        self.reading = False

    def resumeProducing(self):
        self.reading = True

    def send(self, n):
        """
        The socket took C{n} bytes: the reactor calls C{doWrite}, which is where
        L{FlowControlledTransport} tells the protocol what is left.
        """
        self._tempDataLen -= n
        self.doWrite()


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class TrackerFlowTests(SynchronousTestCase):
    """
    The tracker's high/low-water behaviour on a transport that buffers.
    """

    def connect(self, limits=None):
        registry = Registry(Clock())
        factory = TrackingFactory(Factory.forProtocol(Echo), registry, "echo", "echo",
                                  limits=limits)
        tracker = factory.buildProtocol(None)
        transport = BufferingTransport()
        transport.protocol = tracker
        tracker.makeConnection(transport)
        return registry, tracker, transport

    def test_pausesPastHighWaterResumesUnderLowWater(self):
        """
        Echoing more than the high-water mark to a peer that has taken nothing stops
        reading; the output draining to just above the low-water mark does not resume
        it; draining to the mark does; the connection is never aborted.
        """
        registry, tracker, transport = self.connect()
        tracker.dataReceived(b"x" * (HIGH_WATER + 1))
        self.assertFalse(transport.reading)
        transport.send(HIGH_WATER + 1 - (LOW_WATER + 1))
        self.assertFalse(transport.reading)
        transport.send(1)
        self.assertTrue(transport.reading)
        self.assertEqual(len(registry), 1)

    def test_underHighWaterKeepsReading(self):
        """
        Output up to the high-water mark leaves reading on.
        """
        _, tracker, transport = self.connect()
        tracker.dataReceived(b"x" * HIGH_WATER)
        self.assertTrue(transport.reading)

    def test_pluginPauseOutlivesDrain(self):
        """
        A plugin that paused reading itself keeps it paused when the output drains;
        reading resumes when both the plugin and the flow control allow it.
        """
        _, tracker, transport = self.connect()
        tracker.pauseProducing()
        tracker.dataReceived(b"x" * (HIGH_WATER + 1))
        transport.send(HIGH_WATER + 1)
        self.assertFalse(transport.reading)
        tracker.resumeProducing()
        self.assertTrue(transport.reading)

    def test_flowPauseOutlivesPluginResume(self):
        """
        A plugin's C{resumeProducing} while the output is over the high-water mark does
        not resume reading; the drain does.
        """
        _, tracker, transport = self.connect()
        tracker.dataReceived(b"x" * (HIGH_WATER + 1))
        tracker.pauseProducing()
        tracker.resumeProducing()
        self.assertFalse(transport.reading)
        transport.send(HIGH_WATER + 1)
        self.assertTrue(transport.reading)

    def test_capStillAbortsOutputNoInputDrives(self):
        """
        Output past the cap in one go (no reading to pause would stop it) is still
        aborted, "output-cap".
        """
        registry, tracker, transport = self.connect(Limits(maxOutput=100_000))
        tracker.write(b"x" * 100_001)
        tracker.connectionLost(None)
        [record] = registry.select(state=CLOSED)
        self.assertEqual(record.reason, OUTPUT_CAP)

    def test_smallCapLowersHighWater(self):
        """
        With an output cap below twice the high-water mark, reading stops at half the
        cap, so echoed input never reaches the cap.
        """
        _, tracker, transport = self.connect(Limits(maxOutput=10_000))
        tracker.dataReceived(b"x" * 5_001)
        self.assertFalse(transport.reading)
        self.assertFalse(transport.disconnecting)


class EchoBulkTests(TestCase):
    """
    Echo on a real listener, driven as C{nc -N host port < file | wc -c} drives it: one
    thread sends a file and half-closes, another reads it back, slowly.
    """

    timeout = 120

    def serve(self):
        text = (f"services:\n  - name: echo\n    protocol: echo\n    port: {freePort()}\n"
                "    interface: 127.0.0.1\n")
        plan = loadPlan("flow.yaml", discover().providers, rule=PrivilegeRule(1024, "test"),
                        dualStack=True, text=text)
        server = PortServer(plan, reactor)
        server.startService()
        self.addCleanup(server.stopService)
        return server, server.addressOf("echo").port

    def test_bulkThroughEchoArrivesWhole(self):
        """
        32 MiB (32 times the default output cap) sent through echo by a client that
        reads nothing until the server has stopped reading from it (or, without flow
        control, has cut it off), then reads it all, comes back byte for byte, and the
        connection ends as the client closed it, not "output-cap".
        """
        server, port = self.serve()
        [factory] = [child.served for child in server.listeners
                     if child.listener.service == "echo"]
        payload = os.urandom(1024 * 1024) * 32

        def serverStopped():
            # Called in the reactor thread: has echo stopped reading, or been closed?
            paused = any(t.paused & PAUSED_FLOW for t in factory.connections())
            return paused or bool(server.registry.select(state=CLOSED))

        def client():
            s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)

            def send():
                try:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # cut off: the reader sees the short count

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            end = time.monotonic() + DEADLINE
            while not blockingCallFromThread(reactor, serverStopped):
                assert time.monotonic() < end, "the server neither paused nor closed"
                time.sleep(0.01)
            digest, total = hashlib.sha256(), 0
            with s:
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    digest.update(chunk)
                    total += len(chunk)
            sender.join(DEADLINE)
            return total, digest.hexdigest()

        def check(result):
            total, digest = result
            self.assertEqual(total, len(payload))
            self.assertEqual(digest, hashlib.sha256(payload).hexdigest())
            return waitClosed(server)

        def reasons(records):
            self.assertEqual([r.reason for r in records], ["client-closed"])

        return deferToThread(client).addCallback(check).addCallback(reasons)


def waitClosed(server):
    """
    The closed records of C{server}, once it holds no live connection.
    """
    from twisted.internet.task import deferLater

    end = reactor.seconds() + DEADLINE

    def poll():
        if len(server.registry) and reactor.seconds() < end:
            return deferLater(reactor, 0.01, poll)
        return server.registry.select(state=CLOSED)

    return poll()
