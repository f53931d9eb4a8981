"""
End-to-end tests of C{twistd portserver} as a real process: start-up, serving, bind
failures, and binding privileged ports before dropping to C{--uid}/C{--gid}.

The process runs this checkout's code (C{PYTHONPATH} is the checkout), whatever copy of
portserver is installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import freePort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = 30  # seconds for start-up or exit on a slow machine; normally about one


def twistd(*args, cwd=None):
    """
    Start C{twistd -n portserver ARGS} (this checkout's code) with output to a pipe.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = ROOT
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", "--logfile=-", *args]
    if cwd is None:  # not the checkout: the server writes its connection log there
        cwd = tempfile.mkdtemp(prefix="portserver-twistd-")
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stopProcess(process, deadline=DEADLINE):
    """
    Stop a server process started by a test: SIGTERM, then SIGKILL if it has not exited
    within C{deadline} seconds; close its output pipe.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(deadline)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def waitForLine(process, text, deadline=DEADLINE):
    """
    Read the process's output until a line contains C{text}; return all lines read.
    """
    lines = []
    end = time.monotonic() + deadline
    os.set_blocking(process.stdout.fileno(), False)
    buffer = b""
    while time.monotonic() < end:
        chunk = process.stdout.read()
        if chunk:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(l.decode(errors="replace") for l in complete)
            if any(text in l for l in lines):
                return lines
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"no line with {text!r} within {deadline}s; output:\n"
                         + "\n".join(lines) + buffer.decode(errors="replace"))


def writeConfig(testCase, text):
    path = os.path.abspath(testCase.mktemp())
    with open(path, "w") as f:
        f.write(text)
    return path


def echoConfig(port, interface="127.0.0.1"):
    return ("status:\n  listen: tcp:0:interface=127.0.0.1\n"
            f"services:\n  - name: echo\n    protocol: echo\n    port: {port}\n"
            f"    interface: {interface}\n    transports: [tcp, udp]\n")


class TwistdTests(SynchronousTestCase):
    """
    C{twistd portserver} as operators run it.
    """

    def stop(self, process):
        stopProcess(process)

    def start(self, *args, ready="portserver ready"):
        """
        Start twistd in a directory of its own (C{self.cwd}, where the connection log goes).
        """
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        process = twistd(*args, cwd=self.cwd)
        self.addCleanup(self.stop, process)
        return process, waitForLine(process, ready)

    def test_servesAndStopsCleanly(self):
        """
        With a config on a free port, twistd logs one line per listener, echoes over TCP
        and UDP, and on SIGTERM closes its ports and shuts down cleanly (twistd then ends
        by re-raising the signal, so the exit status says "terminated by SIGTERM"). The
        TCP connection is a line in C{connections.log} in the directory twistd ran in.
        """
        port = freePort()
        process, lines = self.start("portserver", "--config", writeConfig(self, echoConfig(port)))
        listening = [l for l in lines if "Listening:" in l]
        self.assertEqual(len(listening), 2)
        self.assertIn(f"on tcp 127.0.0.1:{port}, unprivileged port", listening[0])
        self.assertIn(f"on udp 127.0.0.1:{port}, unprivileged port", listening[1])
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
            s.sendall(b"over tcp")
            self.assertEqual(s.recv(100), b"over tcp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(DEADLINE)
            s.sendto(b"over udp", ("127.0.0.1", port))
            self.assertEqual(s.recvfrom(100), (b"over udp", ("127.0.0.1", port)))
        self.assertFalse([l for l in lines if "starting on" in l])
        process.send_signal(signal.SIGTERM)
        lines = waitForLine(process, "Server Shut Down.")
        self.assertEqual(process.wait(DEADLINE), 0)
        output = "\n".join(lines + [process.stdout.read().decode()])
        # Each listener is announced once, in portserver's words; Twisted's own port
        # chatter is not in the log.
        self.assertNotIn("starting on", output)
        self.assertNotIn("Closed)", output)
        with open(os.path.join(self.cwd, "connections.log")) as f:
            logged = f.read().splitlines()
        self.assertEqual(len(logged), 2, logged)  # the TCP connection; the UDP flow at stop
        # The client's close may reach the server after the signal (the connection then
        # closes during the drain, after the UDP flow): the order is not fixed.
        logged.sort(key=lambda line: " udp-" in line)
        self.assertRegex(logged[0], rf" tcp-1 echo tcp 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{port} "
                                    r"client-closed \d+\.\d{3}s in=8 out=8$")
        self.assertRegex(logged[1], r" udp-2 echo udp .* shutdown .* datagrams=1/1$")

    def drainConfig(self, port, drain):
        return writeConfig(self, echoConfig(port) + f"shutdown:\n  drain: {drain}\n")

    def test_drainsOpenConnectionsOnSIGTERM(self):
        """
        On SIGTERM the port refuses new connections at once, an open connection still
        echoes during the drain, and when its client closes the process exits 0, long
        before the drain period is over.
        """
        port = freePort()
        process, lines = self.start("portserver", "--config", self.drainConfig(port, 60))
        client = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.addCleanup(client.close)
        client.sendall(b"before")
        self.assertEqual(client.recv(100), b"before")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        waitForLine(process, "waiting up to 60.0s for 1 connection(s)")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
        client.sendall(b"during the drain")
        self.assertEqual(client.recv(100), b"during the drain")
        self.assertIsNone(process.poll())
        client.close()
        self.assertEqual(process.wait(DEADLINE), 0)
        self.assertLess(time.monotonic() - started, 30)
        with open(os.path.join(self.cwd, "connections.log")) as f:
            logged = f.read()
        self.assertIn(" client-closed ", logged)

    def test_abortsAtDrainDeadline(self):
        """
        A connection still open when the drain period ends is aborted (logged as
        "shutdown") and the process exits 0.
        """
        port = freePort()
        process, lines = self.start("portserver", "--config", self.drainConfig(port, 1))
        client = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.addCleanup(client.close)
        client.sendall(b"hello")
        self.assertEqual(client.recv(100), b"hello")
        process.send_signal(signal.SIGTERM)
        waitForLine(process, "Drain over: aborting 1 connection(s)")
        self.assertEqual(process.wait(DEADLINE), 0)
        client.settimeout(DEADLINE)
        try:
            self.assertEqual(client.recv(100), b"")
        except ConnectionResetError:
            pass  # aborted: the peer resets
        with open(os.path.join(self.cwd, "connections.log")) as f:
            logged = f.read()
        self.assertRegex(logged, r" tcp-1 echo tcp .* shutdown ")

    def test_bindFailureIsFatal(self):
        """
        When a port is taken, twistd exits non-zero with one message naming the service,
        transport, address, port and OS error, and no traceback; the service's other
        listener is not left serving.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = twistd("portserver", "--config", writeConfig(self, echoConfig(port)))
        self.addCleanup(self.stop, process)
        process.wait(DEADLINE)
        output = process.stdout.read().decode()
        self.assertNotEqual(process.returncode, 0)
        self.assertIn(f"portserver: cannot listen for service 'echo': echo/tcp "
                      f"127.0.0.1:{port}: [Errno 98] Address already in use", output)
        self.assertNotIn("Traceback", output)

    def test_bindFailureInDaemonModeIsASentence(self):
        """
        Started as a daemon (no C{-n}), a taken port is reported by the process the
        operator started, on its terminal, as portserver's own sentence (not twistd's
        truncated repr, C{b"portserver.startup.StartupError: ...[Errn"}), exit 1, and no
        daemon is left running.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cwd = tempfile.mkdtemp(prefix="portserver-twistd-")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = ROOT
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--pidfile=twistd.pid", "--logfile=twistd.log", "portserver", "--config",
             writeConfig(self, echoConfig(port))],
            cwd=cwd, env=env, capture_output=True, stdin=subprocess.DEVNULL,
            timeout=DEADLINE)
        self.assertEqual(result.returncode, 1)
        err = result.stderr.decode()
        self.assertEqual(err.splitlines()[0],
                         f"portserver: cannot listen for service 'echo': echo/tcp "
                         f"127.0.0.1:{port}: [Errno 98] Address already in use")
        self.assertNotIn("b'", err)
        self.assertNotIn('b"', err)
        self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists(os.path.join(cwd, "twistd.pid")))

    def test_configErrorsBeforeBinding(self):
        """
        An invalid config exits 1 listing every error, without binding the valid
        service's port.
        """
        port = freePort()
        config = echoConfig(port) + "  - name: broken\n    protocol: nope\n"
        process = twistd("portserver", "--config", writeConfig(self, config))
        self.addCleanup(self.stop, process)
        self.assertEqual(process.wait(DEADLINE), 1)
        output = process.stdout.read().decode()
        self.assertIn(":10:15: service 'broken': unknown protocol 'nope'", output)
        self.assertNotIn("Listening", output)

    def test_dropsPrivilegesAfterBinding(self):
        """
        Started as root with --uid/--gid, twistd binds a privileged port in
        privilegedStartService, then serves it as the unprivileged user.
        """
        if os.getuid() != 0:
            raise SkipTest("binding a privileged port then dropping privileges needs root")
        port = next((p for p in range(900, 1000) if _free(p)), None)
        if port is None:
            raise SkipTest("no free privileged port in 900-999 on 127.0.0.1")
        process, lines = self.start("--uid", "65534", "--gid", "65534", "portserver",
                                    "--config", writeConfig(self, echoConfig(port)))
        self.assertTrue(any(f"127.0.0.1:{port}, privileged port" in l for l in lines), lines)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
            s.sendall(b"root no more")
            self.assertEqual(s.recv(100), b"root no more")
        with open(f"/proc/{process.pid}/status") as f:
            uids = next(l for l in f if l.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {"65534"})


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
