"""
C{twistd portserver} with C{workers: 2} as a real process: connections spread over two
worker processes, a worker killed with SIGKILL while a client connects in a loop loses
no connection attempt and comes back, a reload starts a new generation and the old one
exits, SIGTERM drains every worker and the process exits 0, no worker outlives the main
process, and C{--uid} drops privileges before the workers start (as root only).

Which process serves a connection is read from C{/proc}: the socket inode of the
connection's server end (C{/proc/net/tcp}), and which worker's descriptors hold it.
"""

from __future__ import annotations

import math
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support import freePort
from tests.test_reload_live import portserverCommand
from tests.test_twistd import ROOT, stopProcess, writeConfig

#: Seconds any one wait may take on a slow machine (each normally takes well under one).
DEADLINE = 15


class Output:
    """
    The output of a twistd process, read as it comes (through C{select}, no sleeping).
    """

    def __init__(self, process):
        self.process = process
        self.lines: list[str] = []
        self._buffer = b""
        os.set_blocking(process.stdout.fileno(), False)

    def read(self, timeout: float = 0) -> bool:
        """
        Read what has come within C{timeout} seconds; whether anything came.
        """
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        chunk = self.process.stdout.read() or b""
        if not chunk:
            return False
        *complete, self._buffer = (self._buffer + chunk).split(b"\n")
        self.lines.extend(line.decode(errors="replace") for line in complete)
        return True

    def find(self, pattern: str) -> re.Match | None:
        for line in self.lines:
            found = re.search(pattern, line)
            if found:
                return found
        return None

    def waitFor(self, pattern: str, deadline: float = DEADLINE) -> re.Match:
        """
        The first line matching C{pattern} (a regular expression), once it has come.
        """
        end = time.monotonic() + deadline
        while True:
            found = self.find(pattern)
            if found:
                return found
            left = end - time.monotonic()
            if left <= 0 or (not self.read(left) and self.process.poll() is not None):
                raise AssertionError(f"no line matching {pattern!r}; output:\n"
                                     + "\n".join(self.lines))


def waitUntilGone(pid: int, deadline: float = DEADLINE) -> None:
    """
    Wait until process C{pid} (not a child of this one) has exited: its pidfd becomes
    readable (a zombie left for another parent counts as exited).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], deadline)
    finally:
        os.close(fd)
    if not ready:
        raise AssertionError(f"process {pid} still runs after {deadline}s")


def reachableByOthers(path: str) -> bool:
    """
    Whether a user who owns nothing on its way (as uid 65534) may reach C{path}: every
    directory up to it (and up to where its symbolic links lead) lets others through.
    """
    for target in {os.path.abspath(path), os.path.realpath(path)}:
        directory = os.path.dirname(target)
        while True:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
    return True


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _hexAddress(host: str, port: int) -> str:
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def serverSocketInode(port: int, client: socket.socket) -> int | None:
    """
    The inode of the server end of C{client}'s connection to 127.0.0.1:C{port}.
    """
    local = _hexAddress("127.0.0.1", port)
    remote = _hexAddress(*client.getsockname())
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote and fields[3] == "01":
                return int(fields[9])
    return None


def socketInodes(pid: int) -> set[int]:
    """
    The inodes of the sockets process C{pid} holds.
    """
    found = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def echo(port: int, data: bytes) -> socket.socket:
    """
    A connection to the echo service on C{port} that has echoed C{data} once.
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    try:
        s.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = s.recv(len(data) - len(received))
            if not chunk:
                break
            received += chunk
        assert received == data, (received, data)
    except BaseException:
        s.close()
        raise
    return s


#: A protocol plugin whose factory cannot be built: the main process never builds one,
#: so only a worker finds out.
BROKEN_PLUGIN = """\
from portserver.provider import PortProtocol


def _factory(service, reactor):
    raise RuntimeError("this factory cannot be built")


brokenBuild = PortProtocol(name="brokenbuild", description="Cannot be built",
                           wellKnownPort=4999, factory=_factory)
"""


def twistd(*args, cwd, path=()):
    """
    Start C{twistd -n --logfile=- ARGS} (this checkout's code, and C{path} after it on
    C{PYTHONPATH}) with output to a pipe.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *path])
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--logfile=-", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def config(status: int, *services, workers=2, drain=10):
    lines = [f"workers: {workers}\nshutdown:\n  drain: {drain}\n"
             f"status:\n  listen: tcp:{status}:interface=127.0.0.1\nservices:"]
    for name, protocol, port in services:
        lines.append(f"  - name: {name}\n    protocol: {protocol}\n    port: {port}\n"
                     "    interface: 127.0.0.1")
    return "\n".join(lines) + "\n"


class WorkersLiveTests(SynchronousTestCase):
    """
    C{twistd -n portserver} with C{workers: 2}.
    """

    def start(self, text, *twistdArguments, pythonPath=()):
        """
        Start twistd on config C{text} (C{pythonPath}: more directories to import
        from);
        return its output once every worker serves.
        """
        self.cwd = os.path.abspath(self.mktemp())
        os.makedirs(self.cwd)
        os.chmod(self.cwd, 0o777)  # the connection log, for a server that drops to --uid
        path = writeConfig(self, text)
        os.chmod(path, 0o644)
        self.pidfile = os.path.join(self.cwd, "twistd.pid")
        process = twistd(f"--pidfile={self.pidfile}", *twistdArguments, "portserver",
                         "--config", path, cwd=self.cwd, path=pythonPath)
        self.addCleanup(stopProcess, process)
        self.process = process
        self.path = path
        output = Output(process)
        output.waitFor(r"portserver ready: 2 workers serve")
        return output

    def workerPids(self, output, generation=1) -> dict[int, int]:
        """
        The pid of each worker index of C{generation}, as its last start was logged.
        """
        pids = {}
        for line in output.lines:
            found = re.search(rf"Worker (\d+) of generation {generation} started: pid (\d+)",
                              line)
            if found:
                pids[int(found.group(1))] = int(found.group(2))
        return pids

    def holder(self, port, connection, pids) -> int | None:
        inode = serverSocketInode(port, connection)
        for pid in pids:
            if inode in socketInodes(pid):
                return pid
        return None

    def test_spreadOverWorkers(self):
        """
        40 connections are served by the two workers (children of the main process),
        both of them, and none by the main process.
        """
        echoPort = freePort()
        output = self.start(config(freePort(), ("echo", "echo", echoPort)))
        pids = self.workerPids(output)
        self.assertEqual(sorted(pids), [0, 1])
        for pid in pids.values():
            with open(f"/proc/{pid}/stat") as f:
                self.assertEqual(int(f.read().rsplit(")", 1)[1].split()[1]),
                                 self.process.pid)
        connections = [echo(echoPort, b"hello %d" % i) for i in range(40)]
        self.addCleanup(lambda: [c.close() for c in connections])
        holders = [self.holder(echoPort, c, [*pids.values(), self.process.pid])
                   for c in connections]
        self.assertNotIn(None, holders)
        self.assertNotIn(self.process.pid, holders)
        self.assertEqual(set(holders), set(pids.values()))

    def test_killedWorkerLosesNoConnection(self):
        """
        A client connects, echoes and closes in a loop; worker 0 is killed with SIGKILL
        meanwhile. Every attempt connects and is answered (those the kernel gives the
        dead worker's socket wait in its queue); worker 0 comes back (restart 1) and
        serves again.
        """
        echoPort = freePort()
        output = self.start(config(freePort(), ("echo", "echo", echoPort)))
        victim = self.workerPids(output)[0]
        attempts, failures = 0, []

        def attempt():
            nonlocal attempts
            attempts += 1
            try:
                echo(echoPort, b"attempt %d" % attempts).close()
            except (OSError, AssertionError) as e:
                failures.append((attempts, repr(e)))

        for _ in range(20):
            attempt()
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + DEADLINE
        after = None
        while time.monotonic() < end:
            attempt()
            output.read()
            restarted = output.find(r"Worker 0 restarted: pid (\d+) \(restart 1\)")
            if restarted and after is None:
                after = attempts
            if after is not None and attempts >= after + 40:
                break
        self.assertEqual(failures, [])
        self.assertIsNotNone(after, "worker 0 was not restarted")
        self.assertGreaterEqual(attempts, 60)
        output.waitFor(rf"Worker 0 \(pid {victim}\) was killed by signal 9 \(SIGKILL\): "
                       r"restarting it in 0\.1s")
        newPid = int(output.waitFor(r"Worker 0 restarted: pid (\d+)").group(1))
        self.assertTrue(running(newPid))
        # It serves: some of 40 connections are its own.
        connections = [echo(echoPort, b"x") for _ in range(40)]
        self.addCleanup(lambda: [c.close() for c in connections])
        self.assertIn(newPid, {self.holder(echoPort, c, [newPid]) for c in connections})

    def test_reloadByGeneration(self):
        """
        A reload that adds a service starts generation 2 (reported as applied): it
        serves the new service and the old one; generation 1 drains: a worker holding a
        connection keeps serving it, and each exits 0 once its connections end.
        """
        status, echoPort, qotdPort = freePort(), freePort(), freePort()
        output = self.start(config(status, ("echo", "echo", echoPort)))
        old = self.workerPids(output)
        held = echo(echoPort, b"held")
        self.addCleanup(held.close)
        holder = self.holder(echoPort, held, old.values())
        self.assertIn(holder, old.values())
        with open(self.path, "w") as f:
            f.write(config(status, ("echo", "echo", echoPort), ("qotd", "qotd", qotdPort)))
        code, said = portserverCommand("reload", "--pidfile", self.pidfile,
                                       "--url", f"http://127.0.0.1:{status}")
        self.assertEqual(code, 0, said)
        self.assertIn("reloaded: generation 2 is in force: 1 listener(s) added", said)
        output.waitFor(r"Generation 2: 2 workers serve; generation 1 drains")
        new = self.workerPids(output, 2)
        self.assertEqual(sorted(new), [0, 1])
        self.assertFalse(set(new.values()) & set(old.values()))
        with socket.create_connection(("127.0.0.1", qotdPort), timeout=DEADLINE) as s:
            self.assertTrue(s.recv(1000))
        connections = [echo(echoPort, b"new %d" % i) for i in range(10)]
        self.addCleanup(lambda: [c.close() for c in connections])
        self.assertEqual({self.holder(echoPort, c, new.values()) for c in connections} - set(
            new.values()), set())
        for pid in old.values():
            if pid != holder:
                waitUntilGone(pid)
        self.assertTrue(running(holder))
        held.sendall(b"still")
        self.assertEqual(held.recv(100), b"still")
        held.close()
        waitUntilGone(holder)
        for index, pid in old.items():
            output.waitFor(rf"Worker {index} \(pid {pid}\) of generation 1 exited with "
                           r"status 0")

    def test_rejectedReloadKeepsGeneration(self):
        """
        A reload adding a service whose plugin fails to build (only a worker builds
        one) is rejected with the worker's reason; the new workers go, the old ones
        serve on (their generation stays in force) and were never asked to drain.
        """
        plugins = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(plugins, "twisted", "plugins"))
        with open(os.path.join(plugins, "twisted", "plugins", "broken_build.py"), "w") as f:
            f.write(BROKEN_PLUGIN)
        status, echoPort, brokenPort = freePort(), freePort(), freePort()
        output = self.start(config(status, ("echo", "echo", echoPort)),
                            pythonPath=[plugins])
        old = self.workerPids(output)
        with open(self.path, "w") as f:
            f.write(config(status, ("echo", "echo", echoPort),
                           ("bad", "brokenbuild", brokenPort)))
        code, said = portserverCommand("reload", "--pidfile", self.pidfile,
                                       "--url", f"http://127.0.0.1:{status}")
        self.assertEqual(code, 1, said)
        self.assertIn("reload rejected: generation 1 stays in force", said)
        self.assertRegex(said, r"worker \d of generation 2 could not apply it: service "
                               r"'bad': protocol 'brokenbuild' failed to build its tcp "
                               r"side: RuntimeError: this factory cannot be built")
        for pid in self.workerPids(output, 2).values():
            waitUntilGone(pid)
        self.assertEqual([running(pid) for pid in old.values()], [True, True])
        self.assertFalse(output.find(r"generation 1 exited"))
        echo(echoPort, b"still served").close()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", brokenPort), timeout=DEADLINE).close()

    def test_drainOnSIGTERM(self):
        """
        On SIGTERM every worker drains: a connection open keeps working, new ones are
        refused, and the process exits 0 soon after the connection ends (well before
        the drain's 20 s).
        """
        echoPort = freePort()
        output = self.start(config(freePort(), ("echo", "echo", echoPort), drain=20))
        pids = self.workerPids(output)
        held = echo(echoPort, b"held")
        self.addCleanup(held.close)
        self.process.send_signal(signal.SIGTERM)
        output.waitFor(r"Stopping: 2 worker\(s\) drain for up to 20s")
        holder = self.holder(echoPort, held, pids.values())
        other = [pid for pid in pids.values() if pid != holder]
        waitUntilGone(other[0])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", echoPort), timeout=DEADLINE).close()
        held.sendall(b"during the drain")
        self.assertEqual(held.recv(100), b"during the drain")
        self.assertIsNone(self.process.poll())
        closed = time.monotonic()
        held.close()
        self.assertEqual(self.process.wait(DEADLINE), 0)
        self.assertLess(time.monotonic() - closed, 10)
        output.read()
        self.assertTrue(output.find(r"Every worker has exited"))

    def test_noWorkerOutlivesMain(self):
        """
        When the main process is killed (SIGKILL: no drain), its workers exit by
        themselves.
        """
        output = self.start(config(freePort(), ("echo", "echo", freePort())))
        pids = self.workerPids(output)
        self.process.kill()
        self.process.wait(DEADLINE)
        for pid in pids.values():
            waitUntilGone(pid)

    def test_dropsPrivilegesBeforeWorkersStart(self):
        """
        Started as root with --uid/--gid, the main process binds a privileged port and
        the workers, started after the drop, run as that user and serve it.
        """
        if os.getuid() != 0:
            raise self.skipTest("binding a privileged port and --uid need root")
        port = None
        for candidate in range(900, 1000):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", candidate))
                except OSError:
                    continue
                port = candidate
                break
        if port is None:
            raise self.skipTest("no free privileged port in 900-999")
        for path in (sys.executable, ROOT):
            if not reachableByOthers(path):
                raise self.skipTest(f"{path} is not reachable by uid 65534 (a directory on "
                                    "its way is closed to others), which the workers run as")
        os.chmod(os.path.dirname(os.path.abspath(self.mktemp())), 0o755)
        output = self.start(config(freePort(), ("echo", "echo", port)),
                            "--uid", "65534", "--gid", "65534")
        pids = self.workerPids(output)
        for pid in [self.process.pid, *pids.values()]:
            with open(f"/proc/{pid}/status") as f:
                uids = next(l for l in f if l.startswith("Uid:")).split()[1:]
            self.assertEqual(set(uids), {"65534"}, pid)
        echo(port, b"privileged").close()


    def test_udpReplyRateForTheWholeServer(self):
        """
        A UDP service's reply rate per source (C{udp_rate_per_source}: 1 a second,
        bursts of 2) holds for the whole server, not per worker: datagrams from 30
        source ports of 127.0.0.1 get no more replies than one process would give
        (the burst, and what the bucket refilled while they were sent), because the
        kernel gives every datagram of one source address to the same worker.
        """
        port, status = freePort("udp"), freePort()
        text = (f"workers: 2\nstatus:\n  listen: tcp:{status}:interface=127.0.0.1\n"
                f"services:\n  - name: echo\n    protocol: echo\n    port: {port}\n"
                "    interface: 127.0.0.1\n    transports: [udp]\n"
                "    limits: {udp_rate_per_source: 1}\n")
        self.start(text)
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
        self.addCleanup(lambda: [s.close() for s in senders])
        began = time.monotonic()
        for sender in senders:
            sender.sendto(b"ping", ("127.0.0.1", port))
        elapsed = time.monotonic() - began
        # A reply is sent as its datagram is read: what comes within 2 s is all of them.
        replies = 0
        deadline = time.monotonic() + 2
        waiting = list(senders)
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select(waiting, [], [], 0.2)
            for sender in readable:
                sender.recv(16)
                replies += 1
                waiting.remove(sender)
        self.assertGreaterEqual(replies, 1)
        # Per worker, each of two buckets would give its burst: 4 and more.
        self.assertLessEqual(replies, 2 + math.ceil(elapsed * 1))
