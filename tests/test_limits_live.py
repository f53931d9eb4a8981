"""
Limits and access rules from a config, on a real server: clients bound to chosen source
addresses on 127.0.0.0/8, real sockets.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from portserver.plan import loadPlan
from portserver.plugins import discover
from portserver.ports import PrivilegeRule
from portserver.protocols.classic import echo
from portserver.server import PortServer
from portserver.testing import ServiceHarness
from tests.support import freePort

DEADLINE = 10


def connect(port, source, data=b"ping"):
    """
    Connect from C{source} (an address on 127.0.0.0/8), send C{data}; return the socket
    and what came back (b"" when the server closed at once).
    """
    s = socket.socket()
    s.settimeout(DEADLINE)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(data)
        got = s.recv(100)
    except ConnectionResetError:
        got = b""
    return s, got


class LimitsLiveTests(TestCase):
    """
    A server whose config sets per-source limits and access rules.
    """

    timeout = 60

    def serve(self, text):
        text = text.replace("port: 0", f"port: {freePort()}")
        plan = loadPlan("limits.yaml", discover().providers, rule=PrivilegeRule(1024, "test"),
                        dualStack=True, text=text)
        server = PortServer(plan, reactor)
        server.startService()
        self.addCleanup(server.stopService)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return server, server.addressOf("echo").port

    def test_maxPerSource(self):
        """
        With C{max_per_source: 2}, a third connection from 127.0.0.2 is closed without the
        plugin running (nothing is echoed), counted and logged; 127.0.0.3 is served.
        """
        server, port = self.serve(
            "services:\n  - name: echo\n    protocol: echo\n    port: 0\n"
            "    interface: 127.0.0.1\n    limits: {max_per_source: 2}\n")

        def clients():
            held = []
            try:
                for _ in range(2):
                    s, got = connect(port, "127.0.0.2")
                    held.append(s)
                    assert got == b"ping", got
                extra, refused = connect(port, "127.0.0.2")
                held.append(extra)
                other, served = connect(port, "127.0.0.3")
                held.append(other)
                return refused, served
            finally:
                for s in held:
                    s.close()

        def check(result):
            refused, served = result
            self.assertEqual((refused, served), (b"", b"ping"))
            self.assertEqual(server.registry.refused[("echo", "max-per-source")], 1)
            self.assertEqual(server.registry.accepted[("echo", "tcp")], 3)
            [line] = [e for e in self.events if e.get("reason") == "max-per-source"]
            self.assertEqual(line["service"], "echo")

        return deferToThread(clients).addCallback(check)

    def test_accessRules(self):
        """
        A denied block is refused (with the banner given for C{denied}), and a more
        specific allow inside it is served.
        """
        server, port = self.serve(
            "access: {deny: [127.0.0.0/8]}\n"
            "services:\n  - name: echo\n    protocol: echo\n    port: 0\n"
            "    interface: 127.0.0.1\n    access: {allow: [127.0.0.3/32]}\n"
            "    limits: {banner: {denied: go away, max-connections: busy}}\n")

        def clients():
            denied, refused = connect(port, "127.0.0.2")
            allowed, served = connect(port, "127.0.0.3")
            denied.close()
            allowed.close()
            return refused, served

        def check(result):
            refused, served = result
            self.assertEqual(refused, b"go away\r\n")
            self.assertEqual(served, b"ping")
            self.assertEqual(server.registry.refused[("echo", "denied")], 1)

        return deferToThread(clients).addCallback(check)

    def test_deniedPeerNotToldToTryLater(self):
        """
        A single-line banner is for overload: a denied peer gets no "try later" line,
        its connection is just closed.
        """
        server, port = self.serve(
            "services:\n  - name: echo\n    protocol: echo\n    port: 0\n"
            "    interface: 127.0.0.1\n    access: {deny: [127.0.0.2/32]}\n"
            "    limits: {banner: \"busy, try later\"}\n")

        def clients():
            denied, refused = connect(port, "127.0.0.2")
            denied.close()
            return refused

        def check(refused):
            self.assertEqual(refused, b"")
            self.assertEqual(server.registry.refused[("echo", "denied")], 1)

        return deferToThread(clients).addCallback(check)


class HarnessLimitsTests(TestCase):
    """
    Plugin authors see limits applied in memory, as the server applies them.
    """

    def test_idleTimeoutInHarness(self):
        """
        A service's C{limits:} given to L{ServiceHarness} act: the idle timeout closes
        a silent connection on the harness's clock.
        """
        harness = ServiceHarness(echo, limits={"idle_timeout": 30})
        conn = harness.connect()
        harness.reactor.advance(29)
        self.assertFalse(conn.serverClosed)
        harness.reactor.advance(2)
        self.assertTrue(conn.serverClosed)
        conn.close()
        self.assertEqual(harness.closed()[0].reason, "idle-timeout")

    def test_maxPerSourceInHarness(self):
        """
        A refused connection gives L{None} from C{connect}, and is counted.
        """
        harness = ServiceHarness(echo, limits={"max_per_source": 1})
        self.assertIsNotNone(harness.connect(peer=("192.0.2.1", 1)))
        self.assertIsNone(harness.connect(peer=("192.0.2.1", 2)))
        self.assertIsNotNone(harness.connect(peer=("192.0.2.2", 1)))
        self.assertEqual(harness.registry.refused[("echo", "max-per-source")], 1)
