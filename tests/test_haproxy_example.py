"""
C{examples/haproxy}, run: a real HAProxy (C{haproxy.cfg}, C{send-proxy-v2}) in front of
two real C{twistd portserver} processes (C{portserver-a.yaml} on 127.0.0.2,
C{portserver-b.yaml} on 127.0.0.3), with the example's ports swapped for free ones. A
client on 127.0.0.5 connects through HAProxy; the backend's registry shows it, a peer
not in C{proxy_protocol.from} is refused, and C{portserver status --url A --url B} lists
both servers. Skipped when C{haproxy} is not installed (C{.ci/run} installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from portserver.plan import loadPlan
from portserver.plugins import discover
from portserver.ports import PrivilegeRule
from portserver.proxyheader import V2_SIGNATURE
from tests.support import freePort, readExactly
from tests.test_twistd import DEADLINE, ROOT, stopProcess, twistd, waitForLine

EXAMPLE = os.path.join(ROOT, "examples", "haproxy")
CLIENT = "127.0.0.5"


def haproxyPath() -> str | None:
    """
    The C{haproxy} binary (Debian puts it in /usr/sbin, not on every user's PATH).
    """
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


def connectWithin(address, source, deadline=DEADLINE) -> socket.socket:
    """
    Connect to C{address} from C{source}, trying again until HAProxy listens.
    """
    end = time.monotonic() + deadline
    while True:
        s = socket.socket()
        s.settimeout(DEADLINE)
        s.bind((source, 0))
        try:
            s.connect(address)
            return s
        except ConnectionRefusedError:
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


class HAProxyExampleTests(SynchronousTestCase):
    """
    The example's HAProxy and two portservers, as a user starts them.
    """

    def setUp(self):
        haproxy = haproxyPath()
        if haproxy is None:
            raise SkipTest("haproxy is not installed (Debian package haproxy)")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ports = {old: freePort() for old in (7007, 8080, 8790, 8404)}
        for name in ("haproxy.cfg", "portserver-a.yaml", "portserver-b.yaml"):
            with open(os.path.join(EXAMPLE, name)) as f:
                text = f.read()
            for old, new in self.ports.items():
                text = re.sub(rf"(?<=[: ]){old}\b", str(new), text)
            text = text.replace("root: www", f"root: {os.path.join(EXAMPLE, 'www')}")
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        self.urls = []
        for name, host in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
            process = twistd("portserver", "-c", os.path.join(self.dir, f"portserver-{name}.yaml"),
                             cwd=self.dir)
            self.addCleanup(stopProcess, process)
            waitForLine(process, "portserver ready")
            self.urls.append(f"http://{host}:{self.ports[8790]}")
        self.haproxy = subprocess.Popen(
            [haproxy, "-f", os.path.join(self.dir, "haproxy.cfg"), "-db"], cwd=self.dir,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(stopProcess, self.haproxy)

    def status(self, *args):
        """
        Run C{portserver status --url A --url B ARGS}; return its exit status and output.
        """
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = ROOT
        command = [sys.executable, "-m", "portserver.status.cli", "status"]
        for url in self.urls:
            command += ["--url", url]
        result = subprocess.run(command + list(args), env=env, capture_output=True,
                                timeout=DEADLINE)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def test_throughHAProxy(self):
        """
        A client on 127.0.0.5 is echoed through HAProxy, and one of the backends'
        registries has its connection with 127.0.0.5 and its source port as C{remote}
        and HAProxy (127.0.0.1) as C{proxy}; C{portserver status} lists both servers and
        that client. The web service answers through HAProxy too. A peer not in C{from}
        that sends the header itself is refused, counted as "proxy-untrusted".
        """
        echo = self.ports[7007]
        with connectWithin(("127.0.0.1", echo), CLIENT) as client:
            client.sendall(b"hello")
            self.assertEqual(readExactly(client, 5), b"hello")
            sourcePort = client.getsockname()[1]

            code, output, errors = self.status("--json")
            self.assertEqual(code, 0, errors)
            servers = json.loads(output)["servers"]
            self.assertEqual([s["url"] for s in servers], self.urls)
            self.assertTrue(all(s["ok"] for s in servers), servers)
            mine = [c for s in servers for c in s["connections"]
                    if (c["remote"]["host"], c["remote"]["port"]) == (CLIENT, sourcePort)]
            self.assertEqual(len(mine), 1, servers)
            self.assertEqual(mine[0]["service"], "echo")
            self.assertEqual(mine[0]["proxy"]["host"], "127.0.0.1")

            code, table, errors = self.status()
            self.assertEqual(code, 0, errors)
            for url in self.urls:
                self.assertIn(url.split("//")[1], table)
            self.assertIn(f"{CLIENT}:{sourcePort}", table)

        with connectWithin(("127.0.0.1", self.ports[8080]), CLIENT) as web:
            web.sendall(b"GET / HTTP/1.0\r\n\r\n")
            self.assertIn(b"behind HAProxy", b"".join(iter(lambda: web.recv(4096), b"")))

        body = (socket.inet_aton(CLIENT) + socket.inet_aton("127.0.0.2")
                + struct.pack("!HH", 1234, echo))
        header = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body
        with socket.create_connection(("127.0.0.2", echo), DEADLINE,
                                      source_address=(CLIENT, 0)) as direct:
            try:
                direct.sendall(header + b"hello")
                answer = direct.recv(100)
            except ConnectionResetError:
                answer = b""
        self.assertEqual(answer, b"")
        code, output, errors = self.status("--json")
        [a, b] = json.loads(output)["servers"]
        self.assertEqual(a["summary"]["refused_by_reason"].get("proxy-untrusted"), 1, a)
        self.assertNotIn("proxy-untrusted", b["summary"]["refused_by_reason"])


class ExampleFilesTests(SynchronousTestCase):
    """
    The example's files agree with each other, whether or not HAProxy is installed.
    """

    def test_filesAgree(self):
        """
        Each portserver config is valid, serves on its own address with the PROXY
        protocol v2 from HAProxy's C{source}, and has its status service there;
        C{haproxy.cfg} sends v2 headers to both, and C{prometheus.yml} scrapes both.
        """
        with open(os.path.join(EXAMPLE, "haproxy.cfg")) as f:
            haproxy = f.read()
        self.assertIn("source 127.0.0.1", haproxy)
        with open(os.path.join(EXAMPLE, "prometheus.yml")) as f:
            prometheus = yaml.safe_load(f)
        [job] = [j for j in prometheus["scrape_configs"] if j["job_name"] == "portserver"]
        targets = job["static_configs"][0]["targets"]
        for name, host in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
            path = os.path.join(EXAMPLE, f"portserver-{name}.yaml")
            with open(path) as f:
                text = f.read().replace("root: www", f"root: {os.path.join(EXAMPLE, 'www')}")
            plan = loadPlan(path, discover().providers, rule=PrivilegeRule(1024, "test"),
                            dualStack=True, text=text)
            self.assertEqual(plan.config.status.listen, f"tcp:8790:interface={host}")
            self.assertIn(f"{host}:8790", targets)
            for spec in plan.config.services:
                self.assertEqual(spec.interface, host)
                self.assertEqual(spec.proxyProtocol.asDict()["from"], ["127.0.0.1"])
                self.assertEqual(spec.proxyProtocol.versions, (2,))
                self.assertIn(f"server {name} {host}:{spec.port} send-proxy-v2", haproxy)
