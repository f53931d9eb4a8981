"""
The units of C{examples/systemd/}: systemd accepts them without a warning, their sockets
are the services of the example config (by name, address, port and transport), the
config is valid, and the commands they run take the options they are given.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from portserver.config import parseConfig
from portserver.plugins import discover
from portserver.status import cli
from tests.test_twistd import DEADLINE, ROOT

EXAMPLE = os.path.join(ROOT, "examples", "systemd")
#: Where the units expect the virtualenv, and the config.
VENV_BIN = "/opt/portserver/bin/"
CONFIG = "/etc/portserver/portserver.yaml"
#: The directory the example config serves over HTTP.
WEB_ROOT = "/srv/www"


def readUnit(path: str) -> dict[str, dict[str, list[str]]]:
    """
    The settings of a systemd unit file: section, then key, then every value given
    (a key may be given more than once); comments left out, continued lines joined.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    section = None
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(" ".join(value.split()))
    return sections


def exampleConfig(testCase) -> str:
    """
    The example config, serving a temporary directory instead of C{/srv/www}.
    """
    root = tempfile.mkdtemp(prefix="portserver-www-")
    testCase.addCleanup(shutil.rmtree, root)
    with open(os.path.join(EXAMPLE, "portserver.yaml"), encoding="utf-8") as f:
        text = f.read()
    path = os.path.abspath(testCase.mktemp())
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(WEB_ROOT, root))
    return path


class UnitsTests(SynchronousTestCase):
    """
    The units and the config agree.
    """

    def setUp(self):
        self.service = readUnit(os.path.join(EXAMPLE, "portserver.service"))
        self.sockets = {os.path.basename(p): readUnit(p)
                        for p in sorted(glob.glob(os.path.join(EXAMPLE, "*.socket")))}
        path = exampleConfig(self)
        with open(path, encoding="utf-8") as f:
            self.specs, _, self.registry, _, self.problems = parseConfig(
                f.read(), path, discover().providers)

    def test_configValid(self):
        """
        The example config is valid (with a web root that exists).
        """
        self.assertEqual([str(p) for p in self.problems], [])
        self.assertEqual(self.registry.connectionLog,
                         "/var/log/portserver/connections.log")

    def test_socketsAreServices(self):
        """
        Each socket unit is named after its service (C{portserver-NAME.socket}), names
        its sockets so (C{FileDescriptorName=NAME}), activates C{portserver.service},
        and listens where that service of the config does: a C{ListenStream=} per TCP
        and a C{ListenDatagram=} per UDP transport, on its interface and port.
        """
        services = {spec.name: spec for spec in self.specs}
        self.assertTrue(self.sockets)
        for name, unit in self.sockets.items():
            socket = unit["Socket"]
            [fdName] = socket["FileDescriptorName"]
            self.assertEqual(name, f"portserver-{fdName}.socket")
            self.assertIn(fdName, services)
            self.assertEqual(socket["Service"], ["portserver.service"])
            spec = services[fdName]
            address = f"{spec.interface}:{spec.port}"
            self.assertEqual((socket.get("ListenStream", []), socket.get("ListenDatagram", [])),
                             ([address] if "tcp" in spec.transports else [],
                              [address] if "udp" in spec.transports else []), name)

    def test_serviceHasEverySocket(self):
        """
        C{portserver.service} inherits every socket unit (C{Sockets=}), and every
        service on a privileged port has one: the service has no capability to bind
        them itself.
        """
        sockets = " ".join(self.service["Service"]["Sockets"]).split()
        self.assertEqual(sorted(sockets), sorted(self.sockets))
        self.assertEqual(self.service["Service"]["CapabilityBoundingSet"], [""])
        privileged = {spec.name for spec in self.specs if spec.port < 1024}
        self.assertEqual(privileged,
                         {u["Socket"]["FileDescriptorName"][0] for u in self.sockets.values()})

    def test_hardening(self):
        """
        The service is of type notify, runs as a dynamic user in a read-only system,
        and may write only its runtime, state and logs directories.
        """
        service = self.service["Service"]
        for key, value in (("Type", "notify"), ("DynamicUser", "yes"),
                           ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                           ("RuntimeDirectory", "portserver"),
                           ("StateDirectory", "portserver"),
                           ("LogsDirectory", "portserver")):
            self.assertEqual(service[key], [value], key)

    def test_execStart(self):
        """
        C{ExecStart=} runs twistd in the foreground with its pid file in the runtime
        directory; those options and the config's C{--check} run for real: exit 0.
        """
        [command] = self.service["Service"]["ExecStart"]
        argv = command.split()
        self.assertEqual(argv[0], VENV_BIN + "twistd")
        self.assertEqual(argv[-3:], ["portserver", "-c", CONFIG])
        argv[-1] = exampleConfig(self)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = ROOT
        process = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             *argv[1:], "--check"],
            cwd=tempfile.gettempdir(), env=env, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=DEADLINE)
        output = process.stdout.decode() + process.stderr.decode()
        self.assertEqual(process.returncode, 0, output)
        self.assertIn("configuration is valid", output)
        self.assertIn("--pidfile=/run/portserver/portserver.pid", argv)

    def test_execReload(self):
        """
        C{ExecReload=} is C{portserver reload} on the pid file C{ExecStart=} writes,
        which the CLI's parser takes.
        """
        [command] = self.service["Service"]["ExecReload"]
        argv = command.split()
        self.assertEqual(argv[0], VENV_BIN + "portserver")
        args = cli.makeParser(io.StringIO(), io.StringIO()).parse_args(argv[1:])
        self.assertEqual((args.command, args.pidfile),
                         ("reload", "/run/portserver/portserver.pid"))


class SystemdAcceptsTests(SynchronousTestCase):
    """
    C{systemd-analyze verify} finds nothing to say about the units.
    """

    def setUp(self):
        if shutil.which("systemd-analyze") is None:
            raise self.skipTest("systemd-analyze is not installed (Debian package systemd)")

    def test_verify(self):
        """
        With the virtualenv's programs standing in place (systemd checks that
        C{ExecStart=} can be run), C{systemd-analyze verify} exits 0 with no output:
        no unknown key, no value it cannot parse.
        """
        directory = tempfile.mkdtemp(prefix="portserver-units-")
        self.addCleanup(shutil.rmtree, directory)
        binDir = os.path.join(directory, "bin")
        os.mkdir(binDir)
        for program in ("twistd", "portserver"):
            path = os.path.join(binDir, program)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(path, 0o755)
        units = []
        for path in glob.glob(os.path.join(EXAMPLE, "portserver*.s*")):
            with open(path, encoding="utf-8") as f:
                text = f.read().replace(VENV_BIN, binDir + "/")
            units.append(os.path.join(directory, os.path.basename(path)))
            with open(units[-1], "w", encoding="utf-8") as f:
                f.write(text)
        process = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                                 cwd=directory, stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=DEADLINE)
        self.assertEqual((process.returncode, process.stdout + process.stderr), (0, b""))
