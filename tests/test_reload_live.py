"""
Live reload with real sockets: in-process, a client connecting in a loop while the config
is reloaded over and over never sees a refusal, and a connection held across every reload
keeps working; as a real C{twistd} process, C{portserver reload} (SIGHUP) adds and removes
services, reports a rejected config with its errors, and keeps serving throughout.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portserver.plan import loadPlan
from portserver.reload import Reloader
from portserver.server import PortServer
from tests.support import PROVIDERS, RULE, Discovery, freePort
from tests import test_twistd
from tests.test_twistd import DEADLINE, ROOT, waitForLine, writeConfig

ECHO = """\
status: off
registry:
  connection_log: off
services:
  - name: echo
    protocol: echo
    port: {port}
    interface: 127.0.0.1
    limits:
      idle_timeout: {idle}
    access:
      deny: [{deny}]
"""


class ReloadUnderLoadTests(TestCase):
    """
    Reloads while clients connect, on the real reactor.
    """

    timeout = 120

    def test_noRefusalWhileReloading(self):
        """
        A client thread connects, echoes and closes in a loop (and keeps one connection
        open, echoing on it now and then) while the reactor reloads a config that
        changes the service's limits and access rules each time (a new factory on the
        same socket each time). It runs until both at least 300 connections and 30
        reloads are done: every connection is served and echoes, none is refused, the
        held connection echoes to the end, and the registry counts no refusal.
        """
        path = os.path.abspath(self.mktemp())
        port = freePort()

        def write(n):
            with open(path, "w") as f:
                f.write(ECHO.format(port=port, idle=60 + n % 2,
                                    deny=f"10.0.{n % 250}.0/24"))

        write(0)
        plan = loadPlan(path, PROVIDERS, rule=RULE, dualStack=True)
        server = PortServer(plan, reactor)
        server.startService()
        self.addCleanup(server.stopService)
        reloader = Reloader(server, path, discover=lambda: Discovery,
                            loadPlan=lambda *a, **k: loadPlan(*a, dualStack=True, **k))
        # Touched only in the reactor thread: whether to go on, the next reload's
        # delayed call and the reload in flight. The test ends (in the reactor thread)
        # by cancelling the one and waiting for the other, so nothing is left behind.
        state = {"reloads": 0, "outcomes": set(), "stop": False, "next": None,
                 "inFlight": None}

        def reloadAgain():
            state["next"] = None
            if state["stop"]:
                return
            write(state["reloads"] + 1)
            state["inFlight"] = reloader.reload().addCallback(reloaded)

        def reloaded(outcome):
            state["inFlight"] = None
            state["outcomes"].add(outcome["result"])
            state["reloads"] += 1
            if not state["stop"]:
                state["next"] = reactor.callLater(0.002, reloadAgain)

        def clients():
            deadline = time.monotonic() + 90
            held = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            served = refused = 0
            try:
                while served < 300 or state["reloads"] < 30:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"only {served} connections and "
                                             f"{state['reloads']} reloads in 90 s")
                    try:
                        with socket.create_connection(("127.0.0.1", port),
                                                      timeout=DEADLINE) as s:
                            s.sendall(b"ping %d" % served)
                            assert s.recv(100) == b"ping %d" % served
                    except ConnectionRefusedError:
                        refused += 1
                        continue
                    served += 1
                    if served % 25 == 0:
                        held.sendall(b"held %d" % served)
                        assert held.recv(100) == b"held %d" % served
                held.sendall(b"held at the end")
                assert held.recv(100) == b"held at the end"
            finally:
                held.close()
            return served, refused

        def stopReloading(result):
            state["stop"] = True
            if state["next"] is not None:
                state["next"].cancel()
                state["next"] = None
            if state["inFlight"] is not None:
                return state["inFlight"].addCallback(lambda _: result)
            return result

        state["next"] = reactor.callLater(0, reloadAgain)
        d = deferToThread(clients)
        d.addBoth(stopReloading)

        def check(result):
            served, refused = result
            self.assertEqual(refused, 0)
            self.assertGreaterEqual(served, 300)
            self.assertGreaterEqual(state["reloads"], 30)
            self.assertEqual(state["outcomes"], {"applied"})
            self.assertEqual(sum(server.registry.refused.values()), 0)
            self.assertEqual(server.generation, state["reloads"] + 1)
        return d.addCallback(check)


def portserverCommand(*args):
    """
    Run C{portserver ARGS} (this checkout's CLI) to completion: exit status and output.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, "-m", "portserver.status.cli", *args], env=env,
                          capture_output=True, text=True, timeout=DEADLINE)
    return done.returncode, done.stdout + done.stderr


def serviceConfig(statusPort, *services):
    lines = [f"status:\n  listen: tcp:{statusPort}:interface=127.0.0.1\nservices:"]
    for name, protocol, port in services:
        lines.append(f"  - name: {name}\n    protocol: {protocol}\n    port: {port}\n"
                     "    interface: 127.0.0.1")
    return "\n".join(lines) + "\n"


class TwistdReloadTests(SynchronousTestCase):
    """
    C{portserver reload} against C{twistd portserver} as operators run it.
    """

    stop = test_twistd.TwistdTests.stop
    start = test_twistd.TwistdTests.start

    def test_reloadAddsRemovesAndRejects(self):
        """
        With a connection held open throughout: a reload that adds daytime makes it
        answer (exit 0, "generation 2"); a config with an error is rejected (exit 1, the
        error printed with its file and line) and echo serves on; a reload that removes
        daytime closes its port. The held echo connection works after each.
        """
        status, echo, daytime = freePort(), freePort(), freePort()
        path = writeConfig(self, serviceConfig(status, ("echo", "echo", echo)))
        pidfile = os.path.abspath(self.mktemp())
        process, lines = self.start(f"--pidfile={pidfile}", "portserver", "--config", path)
        held = socket.create_connection(("127.0.0.1", echo), timeout=DEADLINE)
        self.addCleanup(held.close)
        url = f"http://127.0.0.1:{status}"

        def heldEchoes(text):
            held.sendall(text)
            self.assertEqual(held.recv(100), text)

        with open(path, "w") as f:
            f.write(serviceConfig(status, ("echo", "echo", echo),
                                  ("daytime", "daytime", daytime)))
        code, output = portserverCommand("reload", "--pidfile", pidfile, "--url", url)
        self.assertEqual(code, 0, output)
        self.assertIn("reloaded: generation 2 is in force: 1 listener(s) added", output)
        self.assertIn(f"added: daytime/tcp 127.0.0.1:{daytime}", output)
        with socket.create_connection(("127.0.0.1", daytime), timeout=DEADLINE) as s:
            self.assertRegex(s.recv(100), rb"\d{4}")
        heldEchoes(b"after adding")

        with open(path, "w") as f:
            f.write(serviceConfig(status, ("echo", "echo", echo),
                                  ("daytime", "nonesuch", daytime)))
        code, output = portserverCommand("reload", "--pidfile", pidfile, "--url", url)
        self.assertEqual(code, 1, output)
        self.assertIn("reload rejected: generation 2 stays in force; 1 error(s):", output)
        self.assertRegex(output, re.escape(path) + r":\d+:\d+: service 'daytime':.*nonesuch")
        waitForLine(process, "Reload of")
        heldEchoes(b"after a rejected reload")

        with open(path, "w") as f:
            f.write(serviceConfig(status, ("echo", "echo", echo)))
        code, output = portserverCommand("reload", "--pidfile", pidfile, "--url", url)
        self.assertEqual(code, 0, output)
        self.assertIn("generation 3", output)
        self.assertIn(f"removed: daytime/tcp 127.0.0.1:{daytime}", output)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", daytime), timeout=DEADLINE).close()
        heldEchoes(b"after removing")
