"""
The example third-party plugin package, C{examples/rot13}, served by a real
C{twistd -n portserver} from a config and seen in C{portserver status}: the README's
walk-through, run.

The package is put on C{PYTHONPATH} rather than installed: Twisted's C{twisted.plugins}
package gathers the C{twisted/plugins/} directory of every C{sys.path} entry, which is what an
installed copy relies on too. (C{.ci/run} also installs it and runs its own tests.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import freePort
from tests.test_twistd import DEADLINE, ROOT, waitForLine, writeConfig

EXAMPLE = os.path.join(ROOT, "examples", "rot13")


def withExample(*command, cwd):
    """
    Run C{command} (a Python program) with this checkout and the example on the path.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, EXAMPLE])
    return subprocess.Popen([sys.executable, *command], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


class ExamplePluginTests(SynchronousTestCase):
    """
    The example plugin, discovered and served like any other.
    """

    def setUp(self):
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)

    def run_(self, *command):
        process = withExample(*command, cwd=self.cwd)
        output, _ = process.communicate(timeout=DEADLINE)
        return process.returncode, output.decode()

    def test_listed(self):
        """
        C{twistd portserver --list-protocols} lists the example's protocol.
        """
        status, output = self.run_("-c", "from twisted.scripts.twistd import run; run()",
                                   "portserver", "--list-protocols")
        self.assertEqual(status, 0, output)
        [row] = [line for line in output.splitlines() if line.startswith("rot13 ")]
        self.assertEqual(row.split()[1:3], ["7013", "tcp"])

    def test_servedAndShown(self):
        """
        A config naming C{protocol: rot13} is served: a client is greeted with its own
        (ip, port) and answered, and C{portserver status --json} shows exactly its
        endpoint pair while it is connected.
        """
        port, statusPort = freePort(), freePort()
        config = writeConfig(self, (
            f"status:\n  listen: tcp:{statusPort}:interface=127.0.0.1\n"
            "services:\n"
            f"  - name: rot13\n    protocol: rot13\n    port: {port}\n"
            "    interface: 127.0.0.1\n    options:\n      prefix: '> '\n"))
        server = withExample("-c", "from twisted.scripts.twistd import run; run()",
                             "-n", "--pidfile=", "--logfile=-", "portserver",
                             "--config", config, cwd=self.cwd)

        def stop():
            server.terminate()
            server.wait(DEADLINE)
            server.stdout.close()
        self.addCleanup(stop)
        waitForLine(server, "portserver ready")

        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            host, source = client.getsockname()
            reader = client.makefile("rb")
            self.assertEqual(reader.readline(), f"rot13 ready for {host}:{source}\n".encode())
            client.sendall(b"Hello\n")
            self.assertEqual(reader.readline(), b"> Uryyb\n")
            status, output = self.run_("-c", "from portserver.status.cli import main; "
                                             "raise SystemExit(main())",
                                       "status", "--url", f"http://127.0.0.1:{statusPort}",
                                       "--json")
            self.assertEqual(status, 0, output)
            [connection] = json.loads(output)["connections"]
            self.assertEqual(
                (connection["service"], connection["protocol"], connection["remote"]["host"],
                 connection["remote"]["port"], connection["local"]["port"]),
                ("rot13", "rot13", host, source, port))
            reader.close()
