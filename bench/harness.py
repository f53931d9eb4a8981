"""
The side-by-side benchmark: portserver, bare Twisted, asyncio, uvloop, xinetd, tcpserver
and a C epoll echo server, driven by one C load generator, in one invocation.

    python bench/run.py [--quick]          (see bench/README.md)

Each round starts every target afresh, then measures each scenario on every target that
supports it, one after the other (the order rotates each round), and stops them. Figures are
medians over rounds; every figure is also a ratio to bare Twisted's figure from the same
round, measured seconds before or after it, which holds on a shared machine when absolute
numbers drift.

This module holds the pieces (targets, scenarios, the loadgen's JSON, the median and ratio
arithmetic, the Markdown table, the chart); C{bench/run.py} is the command.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
BUILD = os.path.join(BENCH, "build")

SERVER_CORE = 0
CLIENT_CORE = 1

# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """
    One measurement: a loadgen mode against one of the target's ports.

    @ivar unit: C{"/s"} for operations per second, C{"MB/s"} for bulk modes.
    """

    name: str
    title: str
    mode: str
    port: str  # "echo", "discard" or "udp"
    concurrency: int
    size: int = 64
    unit: str = "/s"


SCENARIOS = [
    Scenario("connect", "connections/s (connect, 64 B, close; 50 clients)", "connect", "echo", 50),
    Scenario("request-64", "requests/s (100 persistent, 64 B)", "request", "echo", 100),
    Scenario("request-4k", "requests/s (100 persistent, 4 KiB)", "request", "echo", 100, 4096),
    Scenario("bulk-echo", "bulk echo MB/s (1 connection)", "bulk-echo", "echo", 1, unit="MB/s"),
    Scenario("bulk-discard", "bulk discard MB/s (1 connection)", "bulk-discard", "discard", 1,
             unit="MB/s"),
    Scenario("udp", "UDP echo datagrams/s (10 clients, 64 B)", "udp", "udp", 10),
]
SCENARIO_NAMES = [s.name for s in SCENARIOS]
# The whole-process scenarios, run on their own fresh servers.
HOLD = "hold"
SERVICES = "services"
WORKERS = "workers"
ALL_SCENARIOS = SCENARIO_NAMES + [HOLD, SERVICES, WORKERS]
SERVICE_COUNTS = (1, 10, 50)

# -- targets ---------------------------------------------------------------------------------


def freePorts(count: int) -> list[int]:
    """
    C{count} distinct ports, each as L{freePort} gives them.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = freePort()
        if port not in ports:
            ports.append(port)
    return ports


def freePort() -> int:
    """
    A port free on 127.0.0.1 for both TCP and UDP (the OS picks; the race until the target
    binds it is harmless on a machine running nothing else on loopback).
    """
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def checkoutEnvironment() -> dict:
    """
    This process's environment, with this checkout first on C{PYTHONPATH}: the code
    measured is the checkout's, not an installed copy.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


class TargetError(Exception):
    """
    A target could not be started or measured; the message says why.
    """


def _pinned(core: int | None):
    """
    A C{preexec_fn}: pin to C{core} (when the machine has two or more) and raise the
    descriptor limit to the hard limit (10,000 connections need it).
    """
    def prepare():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if core is not None and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {core})
    return prepare


def waitForPort(port: int, process: subprocess.Popen, log: str, deadline: float = 30.0):
    """
    Wait until 127.0.0.1:C{port} accepts, or raise L{TargetError} with the log's tail.
    """
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise TargetError(f"exited with status {process.returncode}: {tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TargetError(f"port {port} not listening after {deadline:.0f}s: {tail(log)}")


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Running:
    """
    A started target: its process, its ports, and where it logs.
    """

    process: subprocess.Popen
    ports: dict
    log: str
    statusURL: str | None = None
    companions: list = field(default_factory=list)  # more processes of the same server

    def rss(self) -> int:
        """
        The server process's resident set size, in bytes.
        """
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise TargetError("no VmRSS")

    def stop(self) -> None:
        for process in [self.process] + self.companions:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


class Target:
    """
    A server to measure. Subclasses say how to start it and what it supports.
    """

    name = ""
    label = ""
    scenarios: tuple = tuple(SCENARIO_NAMES)
    core: int | None = SERVER_CORE  # the core it is pinned to (None: every core)

    def available(self) -> str | None:
        """
        L{None} when the target can run here, else why not.
        """
        return None

    def command(self, ports: dict, workdir: str) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict:
        return dict(os.environ)

    def start(self, workdir: str, services: int = 1) -> Running:
        # echo, discard, status, and one more per service past the first; the OS may
        # give a port it gave just now, so they are made distinct.
        distinct = freePorts(services + 2)
        ports = {"echo": distinct[0], "discard": distinct[1], "status": distinct[2],
                 "extra": distinct[3:]}
        ports["udp"] = ports["echo"]
        log = os.path.join(workdir, f"{self.name}.log")
        with open(log, "ab") as logFile:
            process = subprocess.Popen(
                self.command(ports, workdir), stdin=subprocess.DEVNULL, stdout=logFile,
                stderr=subprocess.STDOUT, env=self.environment(), cwd=workdir,
                preexec_fn=_pinned(self.core))
        running = Running(process, ports, log)
        try:
            for port in [ports["echo"]] + ports["extra"]:
                waitForPort(port, process, log)
            if "bulk-discard" in self.scenarios:
                waitForPort(ports["discard"], process, log)
        except BaseException:
            running.stop()
            raise
        return running


class PortServerTarget(Target):
    """
    portserver's echo and discard services under C{twistd -n}, default registry settings
    (connection log on), logging to a file.
    """

    name = "portserver"
    label = "portserver"

    def config(self, ports: dict) -> str:
        lines = ["services:",
                 f"  - {{name: echo, protocol: echo, interface: 127.0.0.1, port: {ports['echo']},"
                 " transports: [tcp, udp]}",
                 f"  - {{name: discard, protocol: discard, interface: 127.0.0.1, "
                 f"port: {ports['discard']}}}"]
        for index, port in enumerate(ports["extra"], 2):
            lines.append(f"  - {{name: echo-{index}, protocol: echo, interface: 127.0.0.1, "
                         f"port: {port}}}")
        lines += ["status:", f'  listen: "tcp:{ports["status"]}:interface=127.0.0.1"']
        return "\n".join(lines) + "\n"

    def command(self, ports, workdir):
        path = os.path.join(workdir, "portserver.yaml")
        with open(path, "w") as f:
            f.write(self.config(ports))
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", os.path.join(workdir, "portserver-twistd.log"),
                "portserver", "--config", path]

    def environment(self):
        return checkoutEnvironment()

    def start(self, workdir, services=1):
        running = super().start(workdir, services)
        waitForPort(running.ports["status"], running.process, running.log)
        running.statusURL = f"http://127.0.0.1:{running.ports['status']}"
        return running


class ScriptTarget(Target):
    """
    One of the comparison servers in C{bench/servers/}, run with this Python.
    """

    script = ""
    arguments: tuple = ()

    def command(self, ports, workdir):
        return [sys.executable, os.path.join(BENCH, "servers", self.script),
                "--echo", str(ports["echo"]), "--discard", str(ports["discard"]),
                *self.arguments]


class TwistedTarget(ScriptTarget):
    name = "twisted"
    label = "bare Twisted"
    script = "twisted_echo.py"


class AsyncioTarget(ScriptTarget):
    name = "asyncio"
    label = "asyncio"
    script = "asyncio_echo.py"


class UvloopTarget(AsyncioTarget):
    name = "uvloop"
    label = "uvloop"
    arguments = ("--uvloop",)

    def available(self):
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:
            return "uvloop is not installed (pip install '.[bench]')"
        return None


XINETD_CONFIG = """\
# Generous limits, so that xinetd's own capacity is measured and not its defaults
# (cps 50/10 s would shut the service for 10 s after 50 connections in a second).
defaults
{{
    instances = UNLIMITED
    per_source = UNLIMITED
    cps = 1000000 1
}}
service echo
{{
    type = INTERNAL UNLISTED
    socket_type = stream
    protocol = tcp
    port = {echo}
    bind = 127.0.0.1
    wait = no
    user = root
}}
service echo
{{
    type = INTERNAL UNLISTED
    id = echo-dgram
    socket_type = dgram
    protocol = udp
    port = {echo}
    bind = 127.0.0.1
    wait = yes
    user = root
}}
service discard
{{
    type = INTERNAL UNLISTED
    socket_type = stream
    protocol = tcp
    port = {discard}
    bind = 127.0.0.1
    wait = no
    user = root
}}
"""


class XinetdTarget(Target):
    """
    xinetd's internal echo and discard (a fork per TCP connection).
    """

    name = "xinetd"
    label = "xinetd (internal)"

    def available(self):
        if shutil.which("xinetd") is None:
            return "xinetd is not installed (apt-get install xinetd)"
        if os.geteuid() != 0:
            return "xinetd needs root here"
        return None

    def command(self, ports, workdir):
        path = os.path.join(workdir, "xinetd.conf")
        with open(path, "w") as f:
            f.write(XINETD_CONFIG.format(**ports))
        return ["xinetd", "-dontfork", "-f", path, "-pidfile", os.path.join(workdir, "xinetd.pid")]


class TcpserverTarget(Target):
    """
    ucspi-tcp's tcpserver running C{cat} (a fork and exec per connection).
    """

    name = "tcpserver"
    label = "tcpserver + cat"
    scenarios = ("connect", "request-64", "request-4k", "bulk-echo")

    def available(self):
        if shutil.which("tcpserver") is None:
            return "tcpserver is not installed (apt-get install ucspi-tcp)"
        return None

    def command(self, ports, workdir):
        # -c 400: room for 100 persistent clients; -H -R -l0: no DNS or ident look-ups.
        return ["tcpserver", "-c", "400", "-b", "4096", "-H", "-R", "-l", "0", "127.0.0.1",
                str(ports["echo"]), "cat"]


class CEchoTarget(Target):
    """
    A single-threaded C epoll echo: the near-physical limit for the load generator.
    """

    name = "c-epoll"
    label = "C epoll echo"
    scenarios = ("connect", "request-64", "request-4k", "bulk-echo", "udp")

    def available(self):
        if shutil.which(os.environ.get("CC", "cc")) is None:
            return "no C compiler"
        return None

    def command(self, ports, workdir):
        return [compiled("cecho"), "--port", str(ports["echo"])]


TARGETS = [PortServerTarget(), TwistedTarget(), AsyncioTarget(), UvloopTarget(), XinetdTarget(),
           TcpserverTarget(), CEchoTarget()]
TARGET_NAMES = [t.name for t in TARGETS]
BASELINE = "twisted"


class WorkersTarget(PortServerTarget):
    """
    portserver with C{workers: N}, free to use every core (the load generator shares
    them): the C{workers} scenario.
    """

    core = None

    def __init__(self, workers: int):
        self.workers = workers
        self.name = f"portserver-workers-{workers}"
        self.label = f"portserver, workers: {workers}"

    def config(self, ports):
        return f"workers: {self.workers}\n" + super().config(ports)


class ReusePortTwistedTarget(TwistedTarget):
    """
    C{copies} bare Twisted processes sharing the echo port with SO_REUSEPORT, free to
    use every core: what C{workers} is measured against.
    """

    core = None
    scenarios = ("connect", "request-64")
    arguments = ("--reuseport",)

    def __init__(self, copies: int):
        self.copies = copies
        self.name = f"twisted-reuseport-{copies}"
        self.label = f"bare Twisted × {copies} (SO_REUSEPORT)"

    def start(self, workdir, services=1):
        running = super().start(workdir, services)
        for _ in range(self.copies - 1):
            with open(running.log, "ab") as logFile:
                running.companions.append(subprocess.Popen(
                    self.command(running.ports, workdir), stdin=subprocess.DEVNULL,
                    stdout=logFile, stderr=subprocess.STDOUT, env=self.environment(),
                    cwd=workdir))
        deadline = time.monotonic() + 30  # each prints "ready" once it listens
        while time.monotonic() < deadline:
            with open(running.log) as f:
                if f.read().count("ready") >= self.copies:
                    return running
            if any(process.poll() is not None for process in running.companions):
                break
            time.sleep(0.05)
        running.stop()
        raise TargetError(f"{self.name} did not start: {tail(running.log)}")


class UnpinnedTwistedTarget(TwistedTarget):
    """
    One bare Twisted process, free to use every core (as the workers are).
    """

    core = None
    name = "twisted-unpinned"
    label = "bare Twisted"


#: The C{workers} scenario's servers; ratios are to the first.
WORKERS_TARGETS = [WorkersTarget(1), WorkersTarget(2), UnpinnedTwistedTarget(),
                   ReusePortTwistedTarget(2)]
#: What it measures of each, with the load generator on every core.
WORKERS_SCENARIOS = ("connect", "request-64")

# -- the load generator ----------------------------------------------------------------------


def compiled(name: str) -> str:
    """
    The path of C{bench/NAME.c} compiled (again, when the source is newer) under
    C{bench/build/}.
    """
    source = os.path.join(BENCH, f"{name}.c")
    binary = os.path.join(BUILD, name)
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        os.makedirs(BUILD, exist_ok=True)
        compiler = os.environ.get("CC", "cc")
        result = subprocess.run([compiler, "-O2", "-Wall", "-o", binary, source],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise TargetError(f"cannot compile {source}: {result.stderr.strip()}")
    return binary


class LoadgenError(Exception):
    """
    The load generator failed or printed something that is not its result.
    """


def parseResult(text: str) -> dict:
    """
    The loadgen's result: the last line of C{text} that is a JSON object with C{mode},
    C{ops}, C{seconds}, C{rate} and C{errors}.

    @raise LoadgenError: when there is no such line.
    """
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and {"mode", "ops", "seconds", "rate", "errors"} <= set(result):
            return result
    raise LoadgenError(f"no result line in loadgen output: {text.strip()[-200:]!r}")


def loadgenCommand(mode: str, ports: list[int], concurrency: int, size: int,
                   duration: float, warmup: float, timeout: float = 5.0) -> list[str]:
    return [compiled("loadgen"), mode, "--ports", ",".join(map(str, ports)),
            "--concurrency", str(concurrency), "--size", str(size),
            "--duration", str(duration), "--warmup", str(warmup), "--timeout", str(timeout)]


def runLoadgen(mode, ports, concurrency, size, duration, warmup, core=CLIENT_CORE) -> dict:
    command = loadgenCommand(mode, ports, concurrency, size, duration, warmup)
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=duration + warmup + 60, preexec_fn=_pinned(core))
    except subprocess.TimeoutExpired:
        raise LoadgenError(f"loadgen {mode} did not finish") from None
    if result.returncode != 0:
        raise LoadgenError(f"loadgen {mode} exited {result.returncode}: {result.stderr.strip()}")
    return parseResult(result.stdout)


# -- one round -------------------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int = 5
    duration: float = 2.0
    warmup: float = 0.5
    connections: int = 10000
    targets: list = field(default_factory=lambda: list(TARGET_NAMES))
    scenarios: list = field(default_factory=lambda: list(ALL_SCENARIOS))
    serviceCounts: tuple = SERVICE_COUNTS


def measure(running: Running, scenario: Scenario, settings: Settings) -> dict:
    port = running.ports[scenario.port]
    result = runLoadgen(scenario.mode, [port], scenario.concurrency, scenario.size,
                        settings.duration, settings.warmup)
    value = result["rate"] / 1e6 if scenario.unit == "MB/s" else result["rate"]
    return {"value": value, "errors": result["errors"], "error_kinds": result.get("error_kinds", {})}


def fetchTimed(url: str) -> tuple[float, dict, bytes]:
    """
    GET C{url}: the wall time in ms, the Server-Timing durations, and the body.
    """
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        timing = response.headers.get("Server-Timing", "")
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, parseServerTiming(timing), body


def parseServerTiming(header: str) -> dict:
    """
    C{"snapshot;dur=1.2, encode;dur=30"} -> C{{"snapshot": 1.2, "encode": 30.0}}.
    """
    timings = {}
    for part in header.split(","):
        match = re.match(r"\s*([\w-]+)\s*;.*?dur=([0-9.]+)", part)
        if match:
            timings[match.group(1)] = float(match.group(2))
    return timings


def holdClient(port: int, connections: int) -> tuple[subprocess.Popen, dict]:
    """
    Start a loadgen holding C{connections} to C{port}; return it once they are all up,
    with its result.
    """
    command = loadgenCommand("hold", [port], connections, 1, 1, 0, timeout=10)
    client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, preexec_fn=_pinned(CLIENT_CORE))
    try:
        return client, parseResult(client.stdout.readline())
    except BaseException:
        release(client)
        raise


def release(client: subprocess.Popen) -> None:
    """
    Let a holding loadgen close its connections and exit.
    """
    if client.poll() is None:
        client.stdin.close()
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()


def hold(target: Target, workdir: str, settings: Settings) -> dict:
    """
    Hold C{settings.connections} idle connections: errors, resident memory per
    connection, and for portserver the registry's view of them and what reading it costs.

    Memory is the slope between a first tenth of the connections and all of them: RSS
    growth from an empty server would count the arenas the first connections need, or
    hide them when the warm-up left freed memory behind.
    """
    running = target.start(workdir)
    clients = []
    try:
        # Warm the server (imports, first allocations) before the baseline.
        runLoadgen("connect", [running.ports["echo"]], 10, 64, 0.3, 0.0)
        first = max(1, settings.connections // 10)
        client, firstResult = holdClient(running.ports["echo"], first)
        clients.append(client)
        time.sleep(0.2)
        before = running.rss()
        client, result = holdClient(running.ports["echo"], settings.connections - first)
        clients.append(client)
        time.sleep(0.2)
        after = running.rss()
        slope = result["ops"]
        held = firstResult["ops"] + slope
        outcome = {"held": held, "errors": firstResult["errors"] + result["errors"],
                   "error_kinds": result.get("error_kinds", {}),
                   "rss_before": before, "rss_after": after,
                   "bytes_per_connection": (after - before) / slope if slope else None}
        if running.statusURL:
            outcome.update(inspectStatus(running, held))
        return outcome
    finally:
        for client in clients:
            release(client)
        running.stop()


def inspectStatus(running: Running, held: int) -> dict:
    """
    With C{held} connections live: the registry snapshot time (from Server-Timing), the
    wall time of C{GET /api/connections} and of C{portserver status}, and whether the
    registry counts exactly the held connections.
    """
    # The API pages (at most 2,000 records a page): "total" is how many it knows.
    fetches = [fetchTimed(running.statusURL + "/api/connections") for _ in range(3)]
    wall, timing, body = sorted(fetches, key=lambda f: f[0])[1]
    answer = json.loads(body)
    listed = answer.get("total", len(answer["connections"]))
    env = checkoutEnvironment()
    started = time.perf_counter()
    cli = subprocess.run([sys.executable, "-c",
                          "import sys; from portserver.status.cli import main; sys.exit(main())",
                          "status", "--url", running.statusURL],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                         timeout=120)
    cliWall = (time.perf_counter() - started) * 1000
    if cli.returncode != 0:
        raise TargetError(f"portserver status failed: {cli.stderr.strip()}")
    return {"registry_listed": listed, "registry_matches": listed == held,
            "snapshot_ms": timing.get("snapshot"), "api_connections_ms": wall,
            "api_timing": timing, "status_cli_ms": cliWall}


def services(workdir: str, count: int, settings: Settings) -> dict:
    """
    portserver with C{count} echo services: connection rate with the clients spread over
    all of them.
    """
    running = PortServerTarget().start(workdir, services=count)
    try:
        ports = [running.ports["echo"]] + running.ports["extra"]
        result = runLoadgen("connect", ports, 50, 64, settings.duration, settings.warmup)
        return {"value": result["rate"], "errors": result["errors"]}
    finally:
        running.stop()


def runRound(index: int, targets: list[Target], settings: Settings, workdir: str,
             report=print) -> dict:
    """
    One round: every scenario in turn, on every target that supports it (in an order
    rotated by C{index}), all targets running meanwhile.
    Returns C{{"scenarios": {scenario: {target: figure}}, "hold": {target: outcome},
    "services": {count: figure}}}; a target that fails is reported and left out.
    """
    results: dict = {"scenarios": {}, "hold": {}, "services": {}, "failures": []}
    order = targets[index % len(targets):] + targets[:index % len(targets)]
    wanted = [s for s in SCENARIOS if s.name in settings.scenarios]
    # Every target is started first and waits, idle, while the others are measured:
    # each scenario is then measured on every target back to back, seconds apart (the
    # pace of a shared machine drifts by a quarter within minutes: measured apart, a
    # ratio takes that drift in).
    running: dict = {}
    try:
        for target in order:
            if not any(s.name in target.scenarios for s in wanted):
                continue
            try:
                running[target.name] = target.start(workdir)
            except (TargetError, OSError) as e:
                results["failures"].append(f"round {index + 1}: {target.name}: {e}")
                report(f"  {target.name}: could not start: {e}")
        for scenario in wanted:
            for target in order:
                if target.name not in running or scenario.name not in target.scenarios:
                    continue
                try:
                    figure = measure(running[target.name], scenario, settings)
                except LoadgenError as e:
                    results["failures"].append(f"round {index + 1}: {target.name} "
                                               f"{scenario.name}: {e}")
                    continue
                results["scenarios"].setdefault(scenario.name, {})[target.name] = figure
                report(f"  {target.name:<11} {scenario.name:<13} {figure['value']:>12,.1f} "
                       f"{scenario.unit} errors={figure['errors']}")
    finally:
        for started in running.values():
            started.stop()
    if HOLD in settings.scenarios:
        for target in order:
            if target.name not in ("portserver", "twisted"):
                continue
            try:
                outcome = hold(target, workdir, settings)
            except (TargetError, LoadgenError, OSError) as e:
                results["failures"].append(f"round {index + 1}: {target.name} hold: {e}")
                report(f"  {target.name}: hold failed: {e}")
                continue
            results["hold"][target.name] = outcome
            report(f"  {target.name:<11} hold {outcome['held']} errors={outcome['errors']} "
                   f"{(outcome['bytes_per_connection'] or 0) / 1024:.2f} KiB/connection")
    if WORKERS in settings.scenarios and "portserver" in settings.targets:
        results["workers"] = workersRound(index, settings, workdir, results["failures"],
                                          report)
    if SERVICES in settings.scenarios and "portserver" in settings.targets:
        for count in settings.serviceCounts:
            try:
                results["services"][count] = services(workdir, count, settings)
            except (TargetError, LoadgenError, OSError) as e:
                results["failures"].append(f"round {index + 1}: services {count}: {e}")
                continue
            report(f"  portserver  {count:>2} services  "
                   f"{results['services'][count]['value']:>12,.1f} /s")
    return results


def _processTree(pid: int) -> list[int]:
    """
    C{pid} and its descendants (from C{/proc/PID/task/*/children}).
    """
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def serverCPU(running: Running) -> float:
    """
    The CPU seconds (user and system) the server's processes (its main process, their
    children: the workers, and any companions) have used so far.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in [running.process] + running.companions:
        for pid in _processTree(process.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def machineTimes() -> tuple[int, int]:
    """
    The machine's busy and total CPU time so far (C{/proc/stat}, in ticks).
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def workersRound(index: int, settings: Settings, workdir: str, failures: list,
                 report=print) -> dict:
    """
    The C{workers} scenario's round: each of L{WORKERS_TARGETS} in turn (rotated by
    C{index}), started on every core, measured for L{WORKERS_SCENARIOS} with the load
    generator on every core too. Returns C{{target: {scenario: figure}}}.
    """
    results: dict = {}
    byName = {s.name: s for s in SCENARIOS}
    order = WORKERS_TARGETS[index % len(WORKERS_TARGETS):] + \
        WORKERS_TARGETS[:index % len(WORKERS_TARGETS)]
    for target in order:
        try:
            running = target.start(workdir)
        except (TargetError, OSError) as e:
            failures.append(f"round {index + 1}: {target.name}: {e}")
            report(f"  {target.name}: could not start: {e}")
            continue
        try:
            for name in WORKERS_SCENARIOS:
                scenario = byName[name]
                cpu, machine = serverCPU(running), machineTimes()
                try:
                    result = runLoadgen(scenario.mode, [running.ports["echo"]],
                                        scenario.concurrency, scenario.size,
                                        settings.duration, settings.warmup, core=None)
                except LoadgenError as e:
                    failures.append(f"round {index + 1}: {target.name} {name}: {e}")
                    continue
                cpu = serverCPU(running) - cpu
                busy, total = (after - before for after, before in
                               zip(machineTimes(), machine))
                # The load runs its warm-up and its window at one rate: per operation.
                ops = result["rate"] * (settings.duration + settings.warmup)
                results.setdefault(target.name, {})[name] = {
                    "value": result["rate"], "errors": result["errors"],
                    "cpu_us": cpu / ops * 1e6 if ops else None,
                    "busy": busy / total if total else None}
                report(f"  {target.name:<26} {name:<11} {result['rate']:>12,.1f} /s "
                       f"errors={result['errors']} server CPU "
                       f"{cpu / ops * 1e6 if ops else 0:.1f} µs/op, machine "
                       f"{100 * busy / total if total else 0:.0f}% busy")
        finally:
            running.stop()
    return results


# -- aggregation -----------------------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(rounds: list[dict]) -> dict:
    """
    Medians over rounds, and the median of each round's ratio to bare Twisted.

    Returns C{{"scenarios": {scenario: {target: {"value", "ratio", "errors", "rounds"}}},
    "hold": {target: {...medians...}}, "services": {count: {"value", "ratio"}}}} where
    C{ratio} is to bare Twisted (scenarios) or to the one-service case (services).
    """
    table: dict = {"scenarios": {}, "hold": {}, "services": {}}
    for name in SCENARIO_NAMES:
        perTarget: dict = {}
        for result in rounds:
            figures = result["scenarios"].get(name, {})
            baseline = figures.get(BASELINE, {}).get("value")
            for target, figure in figures.items():
                entry = perTarget.setdefault(target, {"values": [], "ratios": [], "errors": 0})
                entry["values"].append(figure["value"])
                entry["errors"] += figure["errors"]
                if baseline:
                    entry["ratios"].append(figure["value"] / baseline)
        if perTarget:
            table["scenarios"][name] = {
                target: {"value": median(e["values"]), "ratio": median(e["ratios"]),
                         "errors": e["errors"], "rounds": len(e["values"])}
                for target, e in perTarget.items()}
    memoryRatios = []
    for result in rounds:
        held = result["hold"]
        if "portserver" in held and BASELINE in held:
            mine = held["portserver"]["bytes_per_connection"]
            theirs = held[BASELINE]["bytes_per_connection"]
            if mine and theirs:
                memoryRatios.append(mine / theirs)
    for target in {t for result in rounds for t in result["hold"]}:
        outcomes = [result["hold"][target] for result in rounds if target in result["hold"]]
        entry = {"held": min(o["held"] for o in outcomes),
                 "errors": sum(o["errors"] for o in outcomes),
                 "bytes_per_connection": median(o["bytes_per_connection"] for o in outcomes),
                 "rounds": len(outcomes)}
        for key in ("snapshot_ms", "api_connections_ms", "status_cli_ms"):
            if any(key in o for o in outcomes):
                entry[key] = median(o.get(key) for o in outcomes)
        if any("registry_matches" in o for o in outcomes):
            entry["registry_matches"] = all(o.get("registry_matches") for o in outcomes)
        if target == "portserver":
            entry["memory_ratio"] = median(memoryRatios)
        table["hold"][target] = entry
    counts = sorted({c for result in rounds for c in result["services"]})
    for count in counts:
        values, ratios = [], []
        for result in rounds:
            figures = result["services"]
            if count in figures:
                values.append(figures[count]["value"])
                if figures.get(counts[0]):
                    ratios.append(figures[count]["value"] / figures[counts[0]]["value"])
        table["services"][count] = {"value": median(values), "ratio": median(ratios)}
    table["workers"] = aggregateWorkers([result.get("workers", {}) for result in rounds])
    return table


def aggregateWorkers(rounds: list[dict]) -> dict:
    """
    The C{workers} scenario's medians, and the median ratio to C{workers: 1} in the
    same round: C{{target: {scenario: {"value", "ratio", "errors"}}}}.
    """
    first = WORKERS_TARGETS[0].name
    table: dict = {}
    for target in [t.name for t in WORKERS_TARGETS]:
        for scenario in WORKERS_SCENARIOS:
            values, ratios, errors, cpu, busy = [], [], 0, [], []
            for figures in rounds:
                figure = figures.get(target, {}).get(scenario)
                if figure is None:
                    continue
                values.append(figure["value"])
                errors += figure["errors"]
                cpu.append(figure.get("cpu_us"))
                busy.append(figure.get("busy"))
                baseline = figures.get(first, {}).get(scenario, {}).get("value")
                if baseline:
                    ratios.append(figure["value"] / baseline)
            if values:
                table.setdefault(target, {})[scenario] = {
                    "value": median(values), "ratio": median(ratios), "errors": errors,
                    "cpu_us": median(cpu), "busy": median(busy)}
    return table


@dataclass(frozen=True)
class Goal:
    text: str
    met: bool | None  # None: not measured in this run
    detail: str


def goals(table: dict) -> list[Goal]:
    """
    The issue's targets, each met, not met, or not measured.
    """
    results = []

    def ratio(scenario, target):
        return table["scenarios"].get(scenario, {}).get(target, {}).get("ratio")

    # Issue 16's targets: portserver's transport against the bare Twisted under it.
    for scenario, text, target in (
            ("connect", "connection rate (registry and connection log on)", 1.2),
            ("request-64", "request rate (64 B, 100 connections)", 1.5),
            ("request-4k", "request rate (4 KiB)", 1.3),
            ("bulk-echo", "bulk echo MB/s", 1.0),
            ("udp", "UDP echo datagrams/s", 1.0)):
        value = ratio(scenario, "portserver")
        results.append(Goal(f"portserver ≥ {target:g}× bare Twisted on {text}",
                            None if value is None else value >= target,
                            "not measured" if value is None else f"{value:.3f}×"))
    mine = table["scenarios"].get("request-64", {}).get("portserver", {}).get("value")
    asyncio = table["scenarios"].get("request-64", {}).get("asyncio", {}).get("value")
    results.append(Goal("portserver ≥ 0.8× asyncio on request rate (64 B) (an aim)",
                        None if not (mine and asyncio) else mine >= 0.8 * asyncio,
                        "not measured" if not (mine and asyncio) else
                        f"{mine / asyncio:.3f}×"))
    memory = table["hold"].get("portserver", {}).get("memory_ratio")
    results.append(Goal("memory per idle connection ≤ 1.10× bare Twisted",
                        None if memory is None else memory <= 1.10,
                        "not measured" if memory is None else f"{memory:.2f}×"))
    fifty = table["services"].get(50, {}).get("ratio")
    results.append(Goal("connection rate with 50 services ≥ 0.9× that with one",
                        None if fifty is None else fifty >= 0.9,
                        "not measured" if fifty is None else f"{fifty:.2f}×"))
    workers = table.get("workers", {}).get(WORKERS_TARGETS[1].name, {}).get("request-64", {})
    results.append(Goal("workers: 2 ≥ 1.4× workers: 1 on request rate (64 B), every core",
                        None if workers.get("ratio") is None else workers["ratio"] >= 1.4,
                        "not measured" if workers.get("ratio") is None else
                        f"{workers['ratio']:.2f}×"))
    held = table["hold"].get("portserver")
    if held is None:
        results.append(Goal("10,000 connections held with zero errors", None, "not measured"))
        results.append(Goal("registry snapshot under 50 ms at 10,000", None, "not measured"))
    else:
        results.append(Goal(f"{held['held']:,} connections held with zero errors",
                            held["errors"] == 0 and held.get("registry_matches", True),
                            f"{held['errors']} errors; registry lists all: "
                            f"{held.get('registry_matches')}"))
        snapshot = held.get("snapshot_ms")
        results.append(Goal(f"registry snapshot under 50 ms at {held['held']:,}",
                            None if snapshot is None else snapshot < 50,
                            "not measured" if snapshot is None else f"{snapshot:.2f} ms"))
    mine = table["scenarios"].get("connect", {}).get("portserver", {}).get("value")
    theirs = table["scenarios"].get("connect", {}).get("xinetd", {}).get("value")
    results.append(Goal("connection rate ≥ 4× xinetd's internal echo",
                        None if not (mine and theirs) else mine >= 4 * theirs,
                        "not measured" if not (mine and theirs) else f"{mine / theirs:.1f}×"))
    return results


# -- reporting -------------------------------------------------------------------------------


def machine() -> dict:
    """
    What the figures were measured on.
    """
    info = {"cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "cpu": ""}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import twisted
    info["twisted"] = twisted.__version__
    try:
        import uvloop
        info["uvloop"] = uvloop.__version__
    except ImportError:
        info["uvloop"] = None
    info["pinning"] = (f"server on core {SERVER_CORE}, load generator on core {CLIENT_CORE}"
                       if (os.cpu_count() or 1) > 1 else "none (one core)")
    return info


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    return f"{value:,.0f}/s"


def _ratio(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}×)"


def markdownTable(table: dict, settings: Settings, info: dict, labels: dict | None = None) -> str:
    """
    The results as Markdown: machine, throughput table (medians, ratio to bare Twisted),
    idle connections, services, and the targets met or not.
    """
    labels = labels or {t.name: t.label for t in TARGETS}
    present = [name for name in TARGET_NAMES
               if any(name in row for row in table["scenarios"].values())]
    present += sorted({name for row in table["scenarios"].values() for name in row} -
                      set(present))
    lines = [f"Machine: {info['cores']} cores ({info.get('cpu') or 'unknown CPU'}), Linux "
             f"{info['kernel']}, Python {info['python']}, Twisted {info['twisted']}"
             + (f", uvloop {info['uvloop']}" if info.get("uvloop") else "")
             + f"; pinning: {info['pinning']}.",
             f"Rounds: {settings.rounds}, {settings.duration:g} s per measurement after "
             f"{settings.warmup:g} s warm-up; medians, and in brackets the median ratio to bare "
             "Twisted in the same round.", ""]
    if present:
        lines.append("| scenario | " + " | ".join(labels.get(n, n) for n in present) + " |")
        lines.append("|---|" + "---:|" * len(present))
        for scenario in SCENARIOS:
            row = table["scenarios"].get(scenario.name)
            if not row:
                continue
            cells = []
            for name in present:
                entry = row.get(name)
                if entry is None:
                    cells.append("—")
                    continue
                cell = _number(entry["value"], scenario.unit) + _ratio(entry["ratio"])
                if entry["errors"]:
                    cell += f" ⚠ {entry['errors']} errors"
                cells.append(cell)
            lines.append(f"| {scenario.title} | " + " | ".join(cells) + " |")
        lines.append("")
    if table["hold"]:
        lines.append("| idle connections | held | errors | RSS per connection | snapshot | "
                     "GET /api/connections | portserver status |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for name in [n for n in TARGET_NAMES if n in table["hold"]]:
            entry = table["hold"][name]
            perConnection = entry["bytes_per_connection"]

            def ms(key):
                value = entry.get(key)
                return "—" if value is None else f"{value:,.1f} ms"
            memory = "—" if perConnection is None else f"{perConnection / 1024:.2f} KiB"
            if entry.get("memory_ratio") is not None:
                memory += f" ({entry['memory_ratio']:.2f}×)"
            lines.append(f"| {labels.get(name, name)} | {entry['held']:,} | {entry['errors']} | "
                         f"{memory} | {ms('snapshot_ms')} | {ms('api_connections_ms')} | "
                         f"{ms('status_cli_ms')} |")
        lines.append("")
    if table["services"]:
        lines.append("| portserver services configured | connections/s (clients spread over all) |")
        lines.append("|---:|---:|")
        for count, entry in sorted(table["services"].items()):
            lines.append(f"| {count} | {_number(entry['value'], '/s')}"
                         f"{_ratio(entry['ratio'])} |")
        lines.append("")
    if table.get("workers"):
        lines.append("| every core (nothing pinned; in brackets, the ratio to workers: 1) | "
                     + " | ".join(byName.title for byName in SCENARIOS
                                  if byName.name in WORKERS_SCENARIOS)
                     + " | server CPU per request (64 B) | machine busy (64 B) |")
        lines.append("|---|" + "---:|" * (len(WORKERS_SCENARIOS) + 2))
        for target in WORKERS_TARGETS:
            row = table["workers"].get(target.name)
            if not row:
                continue
            cells = []
            for scenario in WORKERS_SCENARIOS:
                entry = row.get(scenario)
                cells.append("—" if entry is None else
                             _number(entry["value"], "/s") + _ratio(entry["ratio"])
                             + (f" ⚠ {entry['errors']} errors" if entry["errors"] else ""))
            request = row.get("request-64") or {}
            cells.append("—" if request.get("cpu_us") is None
                         else f"{request['cpu_us']:.1f} µs")
            cells.append("—" if request.get("busy") is None
                         else f"{100 * request['busy']:.0f}%")
            lines.append(f"| {target.label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("| target | met? | measured |")
    lines.append("|---|---|---|")
    for goal in goals(table):
        verdict = {True: "met", False: "**not met**", None: "not measured"}[goal.met]
        lines.append(f"| {goal.text} | {verdict} | {goal.detail} |")
    return "\n".join(lines) + "\n"


def chart(table: dict, path: str, labels: dict | None = None) -> None:
    """
    A PNG: one panel per scenario, a bar per target (log scale), bare Twisted marked.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {t.name: t.label for t in TARGETS}
    scenarios = [s for s in SCENARIOS if s.name in table["scenarios"]]
    panels = len(scenarios) + (1 if table["services"] else 0)
    columns = 3
    rows = max(1, -(-panels // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(15, 4.2 * rows), squeeze=False)
    colours = {name: plt.cm.tab10(i) for i, name in enumerate(TARGET_NAMES)}
    for ax, scenario in zip(axes.flat, scenarios):
        row = table["scenarios"][scenario.name]
        names = [n for n in TARGET_NAMES if n in row] + sorted(set(row) - set(TARGET_NAMES))
        values = [row[n]["value"] or 0 for n in names]
        ax.bar([labels.get(n, n) for n in names], values,
               color=[colours.get(n, "grey") for n in names])
        ax.set_yscale("log")
        ax.set_title(scenario.title, fontsize=10)
        ax.set_ylabel(scenario.unit)
        ax.tick_params(axis="x", labelrotation=35, labelsize=8)
        for x, (name, value) in enumerate(zip(names, values)):
            ratio = row[name]["ratio"]
            ax.annotate(f"{ratio:.2f}×" if ratio is not None else "", (x, value),
                        ha="center", va="bottom", fontsize=7)
    used = len(scenarios)
    if table["services"]:
        ax = axes.flat[used]
        counts = sorted(table["services"])
        ax.plot(counts, [table["services"][c]["value"] for c in counts], marker="o")
        ax.set_title("portserver connections/s by services configured", fontsize=10)
        ax.set_xlabel("services")
        ax.set_ylabel("/s")
        ax.set_ylim(bottom=0)
        used += 1
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    figure.suptitle("portserver benchmark (medians; labels: ratio to bare Twisted)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def run(settings: Settings, out: str, drawChart: bool = True, report=print) -> dict:
    """
    Every round, then the table (and chart) under C{out}; returns what was written.
    """
    targets = []
    skipped = {}
    for target in TARGETS:
        if target.name not in settings.targets:
            continue
        why = target.available()
        if why is None:
            targets.append(target)
        else:
            skipped[target.name] = why
            report(f"skipping {target.name}: {why}")
    compiled("loadgen")
    info = machine()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="portserver-bench-") as workdir:
        for index in range(settings.rounds):
            report(f"round {index + 1} of {settings.rounds}")
            rounds.append(runRound(index, targets, settings, workdir, report))
    table = aggregate(rounds)
    os.makedirs(out, exist_ok=True)
    markdown = markdownTable(table, settings, info)
    failures = [f for result in rounds for f in result["failures"]]
    if skipped or failures:
        markdown += "\n" + "".join(f"- skipped {name}: {why}\n" for name, why in skipped.items())
        markdown += "".join(f"- failed: {failure}\n" for failure in failures)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"machine": info, "settings": settings.__dict__, "rounds": rounds,
                   "table": table, "skipped": skipped}, f, indent=1, default=str)
    if drawChart:
        chart(table, os.path.join(out, "results.png"))
    return {"table": table, "markdown": markdown, "rounds": rounds, "skipped": skipped}
