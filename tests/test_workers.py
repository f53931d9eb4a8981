"""
Tests for workers (C{workers: N}) without processes: the config key, the sockets the
main process binds (L{portserver.reuseport}), the AMP lifecycle
(L{portserver.workerproto}), a worker process as the main process sees it
(L{portserver.workerprocess}), the L{Supervisor}'s supervision, generations and drain
with stand-in workers, the worker's side (L{portserver.worker}) on a memory reactor,
and the tree C{makeService} builds.
"""

from __future__ import annotations

import errno
import os
import signal
import socket

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from portserver.activation import Activation, InheritedSocket
from portserver.config import MAX_WORKERS, ConfigError, parseServerConfig
from portserver.drain import DRAINING, SERVING, STOPPED
from portserver.limits import ShutdownSpec
from portserver.plan import formatPlan, loadPlan
from portserver.reloading import ReloadError, restartOnly
from portserver.reuseport import bindListener, bindListeners, bySourceProgram
from portserver.startup import StartupError
from portserver.supervisor import (
    MAIN_PARTS,
    RESTARTING,
    RETIRED,
    WORKER_LOST,
    MainTree,
    PlanReader,
    Supervisor,
)
from portserver.worker import PARTS, OutputObserver, Worker, dieWithParent
from portserver.workerprocess import (
    WorkerFailed,
    WorkerProcess,
    describeEnd,
    workerCommand,
    workerEnvironment,
)
from portserver.workerproto import (
    Drain,
    EndDrain,
    Failed,
    MainChannel,
    Ready,
    WorkerChannel,
    fitErrors,
)
from tests.support import PROVIDERS, RULE, Discovery, makePlan, spec


def parse(text, cpus=lambda: 4):
    return parseServerConfig("services: []\n" + text, "w.yaml", PROVIDERS, cpus=cpus)


def capture(testCase) -> list[str]:
    """
    The text of every log event from now to the end of C{testCase}.
    """
    events: list[str] = []

    def observer(event):
        events.append(formatEvent(event))
    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class WorkersConfigTests(SynchronousTestCase):
    """
    The top-level C{workers:} key.
    """

    def test_default(self):
        """
        Without C{workers:} (or with it empty), there is one process.
        """
        for text in ("", "workers:\n"):
            config, problems = parse(text)
            self.assertEqual((config.workers, config.workersAuto, problems), (1, False, []))

    def test_number(self):
        """
        A whole number from 1 to L{MAX_WORKERS} is that many workers.
        """
        for n in (1, 2, 16, MAX_WORKERS):
            config, problems = parse(f"workers: {n}\n")
            self.assertEqual((config.workers, problems), (n, []))

    def test_auto(self):
        """
        C{workers: auto} is as many as the CPUs usable (what C{cpus} says), and says
        it was C{auto}.
        """
        config, problems = parse("workers: auto\n", cpus=lambda: 6)
        self.assertEqual((config.workers, config.workersAuto, problems), (6, True, []))

    def test_autoDefaultIsTheAffinityMask(self):
        """
        By default C{auto} counts the CPUs this process may run on.
        """
        config, _ = parseServerConfig("services: []\nworkers: auto\n", "w.yaml", PROVIDERS)
        self.assertEqual(config.workers, len(os.sched_getaffinity(0)))

    def test_invalid(self):
        """
        Anything else is a problem located at the value, saying what is wanted.
        """
        for value in ("0", "-1", "many", "true", "1.5", str(MAX_WORKERS + 1), "[2]"):
            config, problems = parse(f"workers: {value}\n")
            self.assertEqual(config.workers, 1)
            [problem] = problems
            self.assertEqual(str(problem)[:len("w.yaml:2:10: ")], "w.yaml:2:10: ", value)
            self.assertIn(f"'workers' must be a whole number from 1 to {MAX_WORKERS}, or "
                          "auto", str(problem))
        # A number out of range is named as it is (not "a whole number").
        [problem] = parse("workers: -3\n")[1]
        self.assertTrue(str(problem).endswith("not -3"), str(problem))

    def test_loadPlanAndCheck(self):
        """
        L{loadPlan} keeps C{workers} in the plan's config; C{--check}'s table mentions
        the workers when there is more than one, and not otherwise.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("workers: 3\nservices:\n  - name: echo\n    protocol: echo\n"
                    "    port: 7007\n    interface: 127.0.0.1\n")
        plan = loadPlan(path, PROVIDERS, rule=RULE, dualStack=True)
        self.assertEqual(plan.config.workers, 3)
        self.assertIn("3 worker processes serve every listener", formatPlan(plan))
        one = attrs.evolve(plan, config=attrs.evolve(plan.config, workers=1))
        self.assertNotIn("worker processes", formatPlan(one))

    def test_loadPlanRefuses(self):
        """
        A bad C{workers:} makes L{loadPlan} refuse the config, with the other problems.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("workers: lots\nservices: []\n")
        error = self.assertRaises(ConfigError, loadPlan, path, PROVIDERS, rule=RULE)
        self.assertIn(f"{path}:1:10: 'workers' must be", error.report())

    def test_reloadWarns(self):
        """
        A reload that changes C{workers} says it applies at the next restart.
        """
        config, _ = parse("workers: 2\n")
        other = attrs.evolve(config, workers=3)
        self.assertEqual(restartOnly(config, other),
                         ["workers changed to 3: 2 worker process(es) serve until a "
                          "restart"])
        self.assertEqual(restartOnly(config, config), [])

    def test_bundledConfigDocumentsIt(self):
        """
        The bundled config's comments name the key.
        """
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "etc", "portserver.yaml")
        with open(path) as f:
            self.assertIn("# workers: 1", f.read())


def listenerOf(plan, service, transport="tcp"):
    [found] = [l for l in plan.listeners
               if l.service == service and l.transport == transport]
    return found


def acceptAll(sockets) -> list[int]:
    """
    How many connections wait in each of C{sockets}' accept queues (accepted and closed).
    """
    counts = []
    for s in sockets:
        s.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                break
            conn.close()
            count += 1
        counts.append(count)
    return counts


class ReusePortTests(SynchronousTestCase):
    """
    The sockets the main process binds: one per worker per listener, SO_REUSEPORT.
    """

    def test_tcpShareOnePort(self):
        """
        On port 0, the first socket picks the port and the others take it: three
        listening sockets on one port, each with SO_REUSEPORT; connections made to the
        port are spread over their queues.
        """
        plan = makePlan(spec("echo", port=0))
        entry = bindListener(plan.listeners[0], 3)
        self.addCleanup(entry.close)
        ports = {s.getsockname()[1] for s in entry.sockets}
        self.assertEqual(len(entry.sockets), 3)
        self.assertEqual(ports, {entry.address.port})
        self.assertNotEqual(entry.address.port, 0)
        self.assertEqual(entry.bound.port, entry.address.port)
        for s in entry.sockets:
            self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
            self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
        self.assertEqual(len({entry.descriptorFor(i) for i in range(3)}), 3)
        clients = [socket.create_connection(("127.0.0.1", entry.address.port))
                   for _ in range(60)]
        self.addCleanup(lambda: [c.close() for c in clients])
        counts = acceptAll(entry.sockets)
        self.assertEqual(sum(counts), 60)
        self.assertNotIn(0, counts)  # all three queues had some (1 in 10**10 to fail)

    def test_udp(self):
        """
        UDP listeners get their sockets too, on one port.
        """
        plan = makePlan(spec("echo", port=0, transports=("udp",)))
        entry = bindListener(plan.listeners[0], 2)
        self.addCleanup(entry.close)
        self.assertEqual({s.type for s in entry.sockets}, {socket.SOCK_DGRAM})
        self.assertEqual(len({s.getsockname()[1] for s in entry.sockets}), 1)
        self.assertEqual(entry.address.type, "UDP")

    def test_ipv6(self):
        """
        An IPv6 interface gets IPv6 sockets.
        """
        if not socket.has_ipv6:
            raise self.skipTest("no IPv6")
        plan = makePlan(spec("echo", port=0, interface="::1"))
        try:
            entry = bindListener(plan.listeners[0], 2)
        except Exception as e:
            raise self.skipTest(f"cannot bind ::1: {e}")
        self.addCleanup(entry.close)
        self.assertEqual({s.family for s in entry.sockets}, {socket.AF_INET6})
        self.assertEqual(entry.address.host, "::1")

    def test_allOrNothing(self):
        """
        A port another program holds (without SO_REUSEPORT) fails with the located
        message and remedy of a single-process bind; the other listeners' sockets are
        closed again.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        plan = makePlan(spec("echo", port=0), spec("daytime", port=taken))
        opened = []

        def bind(listener, port):
            from portserver.reuseport import bindReusePort
            s = bindReusePort(listener, port)
            opened.append(s)
            return s

        bound, failures = bindListeners(plan.listeners, 2, bind=bind)
        self.assertEqual(bound, [])
        [failure] = failures
        self.assertIn(f"cannot listen for service 'daytime': daytime/tcp 127.0.0.1:{taken}: "
                      f"[Errno {errno.EADDRINUSE}]", failure)
        self.assertIn(f"another program holds tcp port {taken}", failure)
        self.assertEqual(len(opened), 2)
        self.assertEqual({s.fileno() for s in opened}, {-1})  # closed

    def test_inheritedIsShared(self):
        """
        A listener socket activation passed a socket for is served on that socket by
        every worker; closing leaves it open.
        """
        passed = socket.socket()
        self.addCleanup(passed.close)
        passed.bind(("127.0.0.1", 0))
        passed.listen(5)
        plan = makePlan(spec("echo", port=passed.getsockname()[1]))
        activation = Activation.fromDescriptors([("echo", passed.fileno())])
        entry = bindListener(plan.listeners[0], 3, activation)
        self.assertEqual(entry.sockets, [])
        self.assertEqual({entry.descriptorFor(i) for i in range(3)}, {passed.fileno()})
        self.assertEqual(entry.address.port, passed.getsockname()[1])
        entry.close()
        self.assertNotEqual(passed.fileno(), -1)

    def test_inheritedMismatch(self):
        """
        An inherited socket that is not the listener's stops binding, naming the
        service.
        """
        plan = makePlan(spec("echo", port=7))
        inherited = InheritedSocket("echo", 3, socket.AF_INET, socket.SOCK_STREAM,
                                    "127.0.0.1", 9999, True)
        bound, [failure] = bindListeners(plan.listeners, 2, Activation((inherited,)))
        self.assertIn("service 'echo': inherited socket fd 3 'echo'", failure)
        self.assertIn("bound to port 9999", failure)


class Answers(amp.CommandLocator):
    """
    A locator of another module's command, as helpers add to a channel.
    """

    class Square(amp.Command):
        arguments = [(b"n", amp.Integer())]
        response = [(b"square", amp.Integer())]

    @Square.responder
    def square(self, n):
        return {"square": n * n}


class FakeWorkerSide:
    def __init__(self, ended=True):
        self.drained = 0
        self.ended = ended

    def drain(self):
        self.drained += 1

    def endDrain(self):
        return self.ended


class FakeMainSide:
    def __init__(self):
        self.readies = []
        self.failures = []

    def ready(self, pid):
        self.readies.append(pid)

    def failed(self, errors):
        self.failures.append(errors)


class WorkerProtocolTests(SynchronousTestCase):
    """
    The lifecycle commands and the channels' locators.
    """

    def connected(self):
        main, worker = FakeMainSide(), FakeWorkerSide()
        client, server, pump = connectedServerAndClient(
            lambda: MainChannel(main), lambda: WorkerChannel(worker))
        return main, worker, server, client, pump

    def test_lifecycle(self):
        """
        A worker's Ready and Failed reach the main side; the main side's Drain and
        EndDrain reach the worker, and EndDrain answers whether a drain was under way.
        """
        main, worker, mainChannel, workerChannel, pump = self.connected()
        workerChannel.callRemote(Ready, pid=1234)
        workerChannel.callRemote(Failed, errors=["a.yaml:3:4: bad"])
        answers = []
        mainChannel.callRemote(Drain).addCallback(answers.append)
        mainChannel.callRemote(EndDrain).addCallback(answers.append)
        pump.flush()
        self.assertEqual(main.readies, [1234])
        self.assertEqual(main.failures, [["a.yaml:3:4: bad"]])
        self.assertEqual(worker.drained, 1)
        self.assertEqual(answers, [{}, {"ended": True}])

    def test_locators(self):
        """
        A command neither channel knows is answered by a locator in its C{locators}.
        """
        main, worker, mainChannel, workerChannel, pump = self.connected()
        mainChannel.locators.append(Answers())
        answers = []
        workerChannel.callRemote(Answers.Square, n=12).addCallback(answers.append)
        pump.flush()
        self.assertEqual(answers, [{"square": 144}])

    def test_closed(self):
        """
        C{closed} fires (with L{None}) once the connection is lost; C{connected} says
        whether it is up.
        """
        main, worker, mainChannel, workerChannel, pump = self.connected()
        self.assertTrue(workerChannel.connected)
        fired = []
        workerChannel.closed.addCallback(fired.append)
        mainChannel.transport.loseConnection()
        pump.flush()
        self.assertEqual(fired, [None])
        self.assertFalse(workerChannel.connected)

    def test_fitErrors(self):
        """
        Errors too many for one AMP value are cut, saying how many were left out.
        """
        errors = [f"error {i}: " + "x" * 1000 for i in range(100)]
        fitted = fitErrors(errors)
        self.assertLess(sum(len(e) + 2 for e in fitted), 60000)
        self.assertRegex(fitted[-1], r"^\.\.\. and \d+ more error\(s\)$")
        self.assertEqual(fitErrors(["one", "two"]), ["one", "two"])


class FakeProcessTransport:
    def __init__(self, pid=4321):
        self.pid = pid
        self.signals = []
        self.written = []
        self.closedFDs = []

    def signalProcess(self, name):
        self.signals.append(name)

    def writeToChild(self, fd, data):
        self.written.append((fd, data))

    def closeChildFD(self, fd):
        self.closedFDs.append(fd)


class SpawningReactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.spawned = []
        self.adopted = []

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None, uid=None,
                     gid=None, usePTY=0, childFDs=None):
        transport = FakeProcessTransport()
        self.spawned.append((executable, list(args), env, childFDs))
        protocol.makeConnection(transport)
        return transport

    def adoptStreamConnection(self, fd, family, factory):
        self.adopted.append((fd, family))
        from twisted.internet.testing import StringTransport
        factory.buildProtocol(None).makeConnection(StringTransport())


class WorkerProcessTests(SynchronousTestCase):
    """
    A worker process as the main process sees it.
    """

    def test_spawn(self):
        """
        Spawning passes the channel's end as descriptor 3 and the sockets from 4, and
        the config's text on standard input, closed after it.
        """
        reactor = SpawningReactor()
        worker = WorkerProcess(1, 2, reactor)
        worker.spawn(["python", "-m", "portserver.worker"], {"A": "b"}, [40, 41], "text")
        [(executable, args, env, childFDs)] = reactor.spawned
        self.assertEqual(executable, "python")
        self.assertEqual(env, {"A": "b"})
        self.assertEqual(childFDs[0], "w")
        self.assertEqual((childFDs[1], childFDs[2]), ("r", "r"))
        self.assertIsInstance(childFDs[3], int)
        self.assertEqual((childFDs[4], childFDs[5]), (40, 41))
        self.assertEqual(worker.transport.written, [(0, b"text")])
        self.assertEqual(worker.transport.closedFDs, [0])
        self.assertEqual(worker.pid, 4321)
        self.assertEqual(reactor.adopted[0][1], socket.AF_UNIX)

    def test_outputLines(self):
        """
        Each line of output is logged once whole, prefixed C{worker N:}; standard error
        as warnings; a line without its end is logged when the process ends.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        worker = WorkerProcess(3, 1, Clock())
        worker.readyDeferred.addErrback(lambda f: None)
        worker.childDataReceived(1, b"hel")
        worker.childDataReceived(1, b"lo\nsecond ")
        worker.childDataReceived(2, b"oops\n")
        worker.processEnded(Failure(ProcessDone(0)))
        mine = [(e["log_level"], formatEvent(e)) for e in events
                if e.get("log_namespace") == "portserver.workerprocess"]
        self.assertEqual(mine, [(LogLevel.info, "worker 3: hello"),
                                (LogLevel.warn, "worker 3: oops"),
                                (LogLevel.info, "worker 3: second ")])

    def test_endsBeforeReady(self):
        """
        A process that ends before it says it is ready fails its C{readyDeferred},
        saying how it ended and its last line; C{ended} fires with how it ended.
        """
        worker = WorkerProcess(0, 1, Clock())
        worker.childDataReceived(2, b"ImportError: no module named x\n")
        failures, ended = [], []
        worker.readyDeferred.addErrback(failures.append)
        worker.ended.addCallback(ended.append)
        worker.processEnded(Failure(ProcessTerminated(1)))
        [failure] = failures
        self.assertTrue(failure.check(WorkerFailed))
        self.assertEqual(str(failure.value), "it exited with status 1 before it was ready "
                         "(last output: ImportError: no module named x)")
        self.assertEqual(ended, ["exited with status 1"])

    def test_failedSaysWhy(self):
        """
        A worker that says it failed fails C{readyDeferred} with its errors.
        """
        worker = WorkerProcess(0, 1, Clock())
        failures = []
        worker.readyDeferred.addErrback(failures.append)
        worker.failed(["c.yaml:1:2: no"])
        self.assertEqual(str(failures[0].value), "c.yaml:1:2: no")

    def test_describeEnd(self):
        """
        How a process ended, in words.
        """
        self.assertEqual(describeEnd(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(describeEnd(Failure(ProcessTerminated(signal=9))),
                         "was killed by signal 9 (SIGKILL)")

    def test_command(self):
        """
        The worker's command line names its index, generation, config, offset, channel,
        parent and each socket with the service it serves.
        """
        argv = workerCommand(2, 5, "/etc/p.yaml", 10000, ["echo", "echo", "qotd"],
                             parent=77)
        self.assertEqual(argv[1:], [
            "-m", "portserver.worker", "--index", "2", "--generation", "5",
            "--config", "/etc/p.yaml", "--port-offset", "10000", "--channel", "3",
            "--parent", "77", "--socket", "echo=4", "--socket", "echo=5",
            "--socket", "qotd=6"])

    def test_environment(self):
        """
        A worker's environment has no socket activation or notification variables, and
        the code's directory first on PYTHONPATH.
        """
        env = workerEnvironment({"LISTEN_FDS": "2", "LISTEN_PID": "1", "NOTIFY_SOCKET": "@x",
                                 "LISTEN_FDNAMES": "a", "PYTHONPATH": "/a:/code", "HOME": "/h"},
                                root="/code")
        self.assertEqual(env, {"PYTHONPATH": "/code:/a", "HOME": "/h"})


class FakeChannel:
    def __init__(self):
        self.locators = []


class FakeWorker:
    """
    A stand-in for L{WorkerProcess}: tests make it ready, fail, or end.
    """

    pids = iter(range(1000, 100000))

    def __init__(self, index, generation, reactor, listeners):
        self.index = index
        self.generation = generation
        self.reactor = reactor
        self.listeners = listeners
        self.pid = next(self.pids)
        self.state = "starting"
        self.started = reactor.seconds()
        self.channel = FakeChannel()
        self.readyDeferred = Deferred()
        self.ended = Deferred()
        self.asked = []

    def becomeReady(self):
        self.state = "serving"
        self.readyDeferred.callback(self)

    def fail(self, why="bad plugin"):
        self.readyDeferred.errback(WorkerFailed(why))

    def end(self, how="was killed by signal 9 (SIGKILL)"):
        self.state = "exited"
        if not self.readyDeferred.called:
            self.readyDeferred.errback(WorkerFailed(f"it {how} before it was ready"))
        self.ended.callback(how)

    def drain(self):
        self.asked.append("drain")
        self.state = "draining"

    def endDrain(self):
        self.asked.append("endDrain")

    def kill(self):
        self.asked.append("kill")


class RecordingPart:
    def __init__(self):
        self.calls = []
        self.refreshed = Deferred()

    def locator(self, index, pid, channel):
        return ("locator", index)

    def workerStarted(self, index, pid, channel):
        self.calls.append(("started", index, pid))

    def workerLost(self, index, pid, reason):
        self.calls.append(("lost", index, pid, reason))

    def refresh(self):
        return self.refreshed


class RecordingNotifier:
    enabled = True

    def __init__(self):
        self.sent = []

    def ready(self, text):
        self.sent.append(("ready", text))
        return False

    def stopping(self, text):
        self.sent.append(("stopping", text))

    def reloading(self, text):
        self.sent.append(("reloading", text))

    def status(self, text):
        self.sent.append(("status", text))


class SupervisorTests(SynchronousTestCase):
    """
    L{Supervisor} with stand-in workers on a clock, and real sockets.
    """

    def setUp(self):
        self.clock = Clock()
        self.launched = []
        self.events = capture(self)

    def launch(self, index, generation, plan, text, listeners):
        worker = FakeWorker(index, generation, self.clock, listeners)
        self.launched.append(worker)
        return worker

    def supervisor(self, *specs, count=2, drain=5.0, start=True):
        plan = makePlan(*(specs or (spec("echo", port=0),)))
        plan = attrs.evolve(plan, config=attrs.evolve(
            plan.config, shutdown=ShutdownSpec(drain), workers=count))
        self.notifier = RecordingNotifier()
        supervisor = Supervisor(plan, self.clock, text="config text", launch=self.launch,
                                notifier=self.notifier)
        self.part = RecordingPart()
        supervisor.addPart(self.part)
        if start:
            supervisor.privilegedStartService()
            supervisor.startService()
            self.addCleanup(lambda: [e.close() for e in supervisor.listeners])
        return supervisor

    def test_workersCannotRunAsUser(self):
        """
        When the workers cannot be started for lack of permission after privileges
        were dropped, start-up fails saying that the user the workers run as must be
        able to run the interpreter and portserver's installation.
        """
        def refuse(*args):
            raise PermissionError(13, "Permission denied", "/opt/venv/bin/python")

        self.launch = refuse
        self.patch(os, "getuid", lambda: 65534)
        supervisor = self.supervisor(start=False)
        supervisor.privilegedStartService()
        self.addCleanup(lambda: [e.close() for e in supervisor.listeners])
        error = self.assertRaises(StartupError, supervisor.startService)
        self.assertIn("Permission denied: '/opt/venv/bin/python'", str(error))
        self.assertIn("workers run as this user (uid 65534, after --uid)", str(error))

    def allReady(self, supervisor):
        for worker in list(supervisor.workers):
            if worker.state == "starting":
                worker.becomeReady()

    def test_startsWorkers(self):
        """
        Started, it binds each listener's sockets (one per worker) and starts one worker
        per index with them; parts hear of each and may add a locator to its channel.
        It is ready (logged, and the service manager told) once every worker serves.
        """
        supervisor = self.supervisor(count=3)
        self.assertEqual([(w.index, w.generation) for w in self.launched],
                         [(0, 1), (1, 1), (2, 1)])
        [entry] = supervisor.listeners
        self.assertEqual(len(entry.sockets), 3)
        self.assertIs(self.launched[0].listeners, supervisor.listeners)
        self.assertEqual(self.launched[0].channel.locators, [("locator", 0)])
        self.assertEqual(self.part.calls, [("started", i, self.launched[i].pid)
                                           for i in range(3)])
        self.launched[0].becomeReady()
        self.launched[1].becomeReady()
        self.assertFalse([e for e in self.events if "portserver ready" in e])
        self.launched[2].becomeReady()
        [ready] = [e for e in self.events if "portserver ready" in e]
        self.assertIn("3 workers serve 1 listener(s) for 1 service(s)", ready)
        self.assertEqual(self.notifier.sent[0][0], "ready")
        self.assertEqual(supervisor.boundListeners()[0].port, entry.address.port)
        self.assertEqual(supervisor.addressOf("echo"), entry.address)
        self.assertIsNone(supervisor.addressOf("echo", "udp"))

    def test_bindFailure(self):
        """
        A listener that cannot be bound stops start-up with the located message; no
        worker starts.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        supervisor = self.supervisor(spec("echo", port=taken), start=False)
        error = self.assertRaises(StartupError, supervisor.privilegedStartService)
        self.assertIn(f"cannot listen for service 'echo': echo/tcp 127.0.0.1:{taken}",
                      str(error))
        self.assertEqual(self.launched, [])

    def test_restartWithBackoff(self):
        """
        A worker that dies is restarted at the same index with the same sockets after
        0.1 s, then 0.2, 0.4... each time it dies again, up to 30 s; counted in
        C{restarts}; parts hear it was lost (C{"worker-lost"}) and of the new one.
        """
        supervisor = self.supervisor()
        self.allReady(supervisor)
        first = self.launched[1]
        delays = []
        for expected in (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30):
            dying = supervisor.workers[1]
            dying.end()
            self.assertIsNone(supervisor.workers[1])
            self.assertEqual(supervisor.workerStates()[1]["state"], RESTARTING)
            launched = len(self.launched)
            self.clock.advance(expected - 0.01)
            self.assertEqual(len(self.launched), launched)
            self.clock.advance(0.02)
            self.assertEqual(len(self.launched), launched + 1)
            delays.append(expected)
        self.assertEqual(supervisor.restarts, [0, 11])
        self.assertIs(supervisor.workers[1], self.launched[-1])
        self.assertIs(supervisor.workers[1].listeners, supervisor.listeners)
        self.assertIn(("lost", 1, first.pid, WORKER_LOST), self.part.calls)
        self.assertIn(("started", 1, self.launched[-1].pid), self.part.calls)
        self.assertTrue([e for e in self.events
                         if "Worker 1 restarted: pid" in e and "(restart 11)" in e])
        self.assertTrue([e for e in self.events
                         if f"Worker 1 (pid {first.pid}) was killed by signal 9 (SIGKILL): "
                            "restarting it in 0.1s" in e])

    def test_backoffResets(self):
        """
        A worker that served for 60 s before it died is restarted after 0.1 s again.
        """
        supervisor = self.supervisor()
        for _ in range(3):
            supervisor.workers[0].end()
            self.clock.advance(1)
        self.assertEqual(supervisor._backoff[0], 0.8)
        self.clock.advance(60)
        launched = len(self.launched)
        supervisor.workers[0].end()
        self.clock.advance(0.1)
        self.assertEqual(len(self.launched), launched + 1)

    def test_workerStates(self):
        """
        C{workerStates} lists each worker: index, pid, state, restarts, generation and
        when it started.
        """
        supervisor = self.supervisor()
        self.clock.advance(5)
        self.launched[0].becomeReady()
        self.launched[1].end()
        self.assertEqual(supervisor.workerStates(), [
            {"index": 0, "pid": self.launched[0].pid, "state": "serving", "restarts": 0,
             "generation": 1, "started": 0.0},
            {"index": 1, "pid": None, "state": RESTARTING, "restarts": 0,
             "generation": 1, "started": None}])

    def test_readyTimeout(self):
        """
        A worker that does not say it serves within C{READY_TIMEOUT} seconds is killed
        (and, once it has ended, restarted).
        """
        supervisor = self.supervisor()
        self.launched[0].becomeReady()
        self.clock.advance(supervisor.READY_TIMEOUT)
        self.assertEqual(self.launched[0].asked, [])
        self.assertEqual(self.launched[1].asked, ["kill"])

    def reloadPlan(self, supervisor, *specs):
        plan = makePlan(*specs)
        return attrs.evolve(plan, config=attrs.evolve(
            plan.config, shutdown=supervisor.plan.config.shutdown,
            workers=supervisor.count))

    def test_reloadByGeneration(self):
        """
        A reload starts a new generation with the new plan on the kept sockets and
        those bound for new listeners; the old one is untouched until every new worker
        serves, then asked to drain; the report says what changed; removed listeners'
        sockets are closed.
        """
        echo, daytime = spec("echo", port=0), spec("daytime", port=0)
        supervisor = self.supervisor(echo, daytime)
        self.allReady(supervisor)
        old = list(supervisor.workers)
        [echoSockets, daytimeSockets] = supervisor.listeners
        plan = self.reloadPlan(supervisor, spec("echo", port=0, options={}),
                               spec("qotd", port=0))
        reader = supervisor.reader
        reader._last = (plan, "new text")
        outcome = []
        supervisor.reload(plan).addBoth(outcome.append)
        new = self.launched[2:]
        self.assertEqual([(w.index, w.generation) for w in new], [(0, 2), (1, 2)])
        self.assertEqual([e.listener.service for e in new[0].listeners], ["echo", "qotd"])
        self.assertEqual(new[0].listeners[0].sockets, echoSockets.sockets)
        self.assertEqual(len(new[0].listeners[1].sockets), 2)
        self.assertEqual([w["state"] for w in supervisor.workerStates()],
                         ["serving", "serving", "starting", "starting"])
        new[0].becomeReady()
        self.assertEqual([w.asked for w in old], [[], []])
        self.assertEqual(outcome, [])
        new[1].becomeReady()
        self.assertEqual([w.asked for w in old], [["drain"], ["drain"]])
        [report] = outcome
        self.assertEqual(report.generation, 2)
        self.assertEqual(report.added, (new[0].listeners[1].listener.describe(),))
        self.assertEqual(report.removed, (daytimeSockets.listener.describe(),))
        self.assertEqual((report.changed, report.unchanged), ((), 1))
        self.assertEqual(supervisor.generation, 2)
        self.assertEqual(supervisor.workers, new)
        self.assertIs(supervisor.plan, plan)
        self.assertEqual(daytimeSockets.sockets, [])  # closed
        self.assertEqual(supervisor.retiring, old)
        old[0].end("exited with status 0")
        self.assertIn(("lost", 0, old[0].pid, RETIRED), self.part.calls)
        self.assertEqual(supervisor.retiring, [old[1]])
        self.assertEqual(len(self.launched), 4)  # a retired worker is not restarted
        # A new worker that dies now is restarted with the new generation's sockets.
        new[0].end()
        self.clock.advance(0.1)
        self.assertEqual(self.launched[-1].generation, 2)
        self.assertIs(self.launched[-1].listeners, supervisor.listeners)

    def test_reloadRejectedWhenAWorkerFails(self):
        """
        When a new worker cannot apply the config, the reload is rejected with its
        reason: the new workers go (killed while starting, drained once serving), the
        sockets bound for it are closed, and the old workers are never asked anything.
        """
        supervisor = self.supervisor()
        self.allReady(supervisor)
        old = list(supervisor.workers)
        plan = self.reloadPlan(supervisor, spec("echo", port=0), spec("qotd", port=0))
        supervisor.reader._last = (plan, "new text")
        outcome = []
        supervisor.reload(plan).addBoth(outcome.append)
        new = self.launched[2:]
        fresh = new[0].listeners[1]
        new[0].becomeReady()
        new[1].fail("c.yaml:4:5: service 'qotd': no quotes")
        [failure] = outcome
        self.assertTrue(failure.check(ReloadError))
        self.assertEqual(failure.value.errors, (
            "worker 1 of generation 2 could not apply it: c.yaml:4:5: service 'qotd': "
            "no quotes",))
        self.assertEqual([w.asked for w in new], [["drain"], ["kill"]])
        self.assertEqual([w.asked for w in old], [[], []])
        self.assertEqual(fresh.sockets, [])
        self.assertEqual(supervisor.generation, 1)
        self.assertEqual(supervisor.workers, old)
        for worker in new:
            worker.end()
        self.assertIn(("lost", 1, new[1].pid, RETIRED), self.part.calls)
        self.clock.advance(60)
        self.assertEqual(len(self.launched), 4)  # nothing restarted
        self.assertEqual(supervisor.retiring, [])

    def test_reloadRejectedWhenAWorkerDies(self):
        """
        A new worker that dies after it said it serves, while the others start, rejects
        the reload too.
        """
        supervisor = self.supervisor()
        self.allReady(supervisor)
        plan = self.reloadPlan(supervisor, spec("echo", port=0))
        supervisor.reader._last = (plan, "new text")
        outcome = []
        supervisor.reload(plan).addBoth(outcome.append)
        new = self.launched[2:]
        new[0].becomeReady()
        new[0].end()
        self.assertIn("worker 0 (pid", outcome[0].value.errors[0])
        self.assertIn("of generation 2 was killed by signal 9 (SIGKILL) before it served",
                      outcome[0].value.errors[0])
        self.assertEqual(new[1].asked, ["kill"])

    def test_reloadBindFailure(self):
        """
        A new listener that cannot be bound rejects the reload before any worker starts.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        supervisor = self.supervisor()
        self.allReady(supervisor)
        plan = self.reloadPlan(supervisor, spec("echo", port=0),
                               spec("qotd", port=taken))
        supervisor.reader._last = (plan, "new text")
        failure = self.failureResultOf(supervisor.reload(plan), ReloadError)
        self.assertIn(f"cannot listen for service 'qotd': qotd/tcp 127.0.0.1:{taken}",
                      failure.value.errors[0])
        self.assertEqual(len(self.launched), 2)

    def test_oneReloadAtATime(self):
        """
        A reload while a generation is starting is rejected, saying so.
        """
        supervisor = self.supervisor()
        self.allReady(supervisor)
        plan = self.reloadPlan(supervisor, spec("echo", port=0))
        supervisor.reader._last = (plan, "new text")
        supervisor.reload(plan)
        failure = self.failureResultOf(supervisor.reload(plan), ReloadError)
        self.assertEqual(failure.value.errors, ("generation 2 is still starting",))

    def test_stopDrainsEveryWorker(self):
        """
        Stopping asks every worker (of every generation) to drain and closes the
        listening sockets at once (new connections are refused); it is over once every
        worker has exited, and the state is then C{"stopped"}. While draining,
        C{drainState} says how long is left, and C{endDrain} reaches every worker.
        """
        supervisor = self.supervisor(drain=5.0)
        self.allReady(supervisor)
        [entry] = supervisor.listeners
        stopped = supervisor.stopService()
        self.assertEqual(entry.sockets, [])
        self.assertEqual([w.asked for w in self.launched], [["drain"], ["drain"]])
        self.assertEqual(self.notifier.sent[-1][0], "stopping")
        self.clock.advance(2)
        self.assertEqual(supervisor.drainState(),
                         {"state": DRAINING, "remaining": 0, "drain_left": 3.0})
        self.assertTrue(supervisor.endDrain())
        self.assertEqual(self.launched[0].asked, ["drain", "endDrain"])
        self.launched[0].end("exited with status 0")
        self.assertNoResult(stopped)
        self.launched[1].end("exited with status 0")
        self.successResultOf(stopped)
        self.assertEqual(supervisor.state, STOPPED)
        self.clock.advance(60)
        self.assertEqual(len(self.launched), 2)  # none restarted

    def test_stopKillsStragglers(self):
        """
        A worker still running C{KILL_GRACE} seconds after the drain's deadline is
        killed.
        """
        supervisor = self.supervisor(drain=5.0)
        self.allReady(supervisor)
        supervisor.stopService()
        self.launched[0].end("exited with status 0")
        self.clock.advance(5.0 + supervisor.KILL_GRACE)
        self.assertEqual(self.launched[1].asked, ["drain", "kill"])

    def test_stopCancelsRestartsAndReloads(self):
        """
        Stopping cancels a pending restart and rejects a reload under way.
        """
        supervisor = self.supervisor()
        self.allReady(supervisor)
        plan = self.reloadPlan(supervisor, spec("echo", port=0))
        supervisor.reader._last = (plan, "new text")
        reloading = supervisor.reload(plan)
        supervisor.workers[0].end()
        supervisor.stopService()
        failure = self.failureResultOf(reloading, ReloadError)
        self.assertEqual(failure.value.errors, ("the server is stopping",))
        self.clock.advance(1)
        self.assertEqual(len(self.launched), 4)
        self.assertEqual(self.launched[1].asked, ["drain"])
        self.assertEqual([w.asked for w in self.launched[2:]], [["kill"], ["kill"]])

    def test_refresh(self):
        """
        C{refresh} fires once every part's refresh has.
        """
        supervisor = self.supervisor()
        done = supervisor.refresh()
        self.assertNoResult(done)
        self.part.refreshed.callback(None)
        self.assertIsNone(self.successResultOf(done))

    def test_partAddedLate(self):
        """
        A part added once workers run hears of each at once.
        """
        supervisor = self.supervisor()
        late = RecordingPart()
        supervisor.addPart(late)
        self.assertEqual(late.calls, [("started", 0, self.launched[0].pid),
                                      ("started", 1, self.launched[1].pid)])

    def test_statusServiceReadsIt(self):
        """
        The status service's summary and listeners pages read a supervisor as a
        server.
        """
        from twisted.web.test.requesthelper import DummyRequest

        from portserver.status.web import Listeners, Summary

        supervisor = self.supervisor()
        summary = Summary(supervisor).data(DummyRequest([b""]))
        self.assertEqual((summary["state"], summary["config_generation"]), (SERVING, 1))
        rows = Listeners(supervisor).data(DummyRequest([b""]))
        self.assertEqual(rows["listeners"][0]["port"], supervisor.listeners[0].address.port)


class PlanReaderTests(SynchronousTestCase):
    """
    L{PlanReader} keeps the text of the plan it made.
    """

    def test_text(self):
        """
        The plan it made last has the text it was made from; another plan's text is
        read from its file.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("services: []\n")
        reader = PlanReader(lambda path, providers, **kw: ("plan", kw["text"]))
        plan = reader(path, {})
        self.assertEqual(plan, ("plan", "services: []\n"))
        with open(path, "w") as f:
            f.write("changed: 1\n")
        self.assertEqual(reader.textOf(plan), "services: []\n")
        other = makePlan()
        self.assertRaises(ConfigError, reader.textOf, other)  # "<test>" is no file


class StoppableReactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.running = True
        self.stopped = 0

    def stop(self):
        self.stopped += 1


class WorkerSideTests(SynchronousTestCase):
    """
    L{Worker}: the worker's side, on a memory reactor, its channel over a fake
    connection.
    """

    def worker(self, text, sockets):
        reactor = StoppableReactor()
        worker = Worker(reactor, 1, 3, "w.yaml", text, 0, sockets,
                        discover=lambda: Discovery,
                        loadPlan=lambda *a, **k: loadPlan(*a, rule=RULE, dualStack=True,
                                                          **k))
        main = FakeMainSide()
        _, _, self.pump = connectedServerAndClient(lambda: MainChannel(main),
                                                   lambda: worker.channel)
        return reactor, worker, main

    def listening(self, kind=socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            s.listen(5)
        return s

    def test_servesAndDrains(self):
        """
        Built on the sockets it was given (TCP and UDP), the worker serves them (its
        listeners adopt them), says L{Ready} with its pid, runs every part of
        L{PARTS}, and on L{Drain} stops serving, closes the descriptors it was given
        and stops its reactor.
        """
        tcp, udp = self.listening(), self.listening(socket.SOCK_DGRAM)
        port = tcp.getsockname()[1]
        text = (f"services:\n  - name: echo\n    protocol: echo\n    port: {port}\n"
                "    interface: 127.0.0.1\n    transports: [tcp]\n"
                f"  - name: time\n    protocol: time\n    port: {udp.getsockname()[1]}\n"
                "    interface: 127.0.0.1\n    transports: [udp]\n")
        parts = []

        class Part:
            def __init__(self, server, channel, index):
                parts.append((server, channel, index))

            def locator(self):
                return Answers()

        PARTS.append(Part)
        self.addCleanup(PARTS.remove, Part)
        given = [("echo", os.dup(tcp.fileno())), ("time", os.dup(udp.fileno()))]
        reactor, worker, main = self.worker(text, given)
        worker.start()
        self.pump.flush()
        self.assertEqual(main.readies, [os.getpid()])
        self.assertEqual({p[0] for p in reactor.adoptedPorts}, {fd for _, fd in given})
        self.assertEqual(parts, [(worker.server, worker.channel, 1)])
        self.assertIsInstance(worker.channel.locators[-1], Answers)
        self.assertEqual(worker.server.state, SERVING)
        worker.drain()
        self.pump.flush()
        self.assertEqual(reactor.stopped, 1)
        self.assertEqual(worker.exitCode, 0)
        for _, fd in given:  # the descriptors given are closed at the drain's start
            self.assertRaises(OSError, os.fstat, fd)

    def test_badConfig(self):
        """
        A config the worker cannot serve is reported over the channel (L{Failed}), with
        every located problem, and the worker exits 1.
        """
        reactor, worker, main = self.worker(
            "services:\n  - name: x\n    protocol: nonesuch\n", [])
        worker.start()
        self.pump.flush()
        [[error]] = main.failures
        self.assertRegex(error, r"^w\.yaml:3:15: service 'x': unknown protocol 'nonesuch'")
        self.assertEqual((worker.exitCode, reactor.stopped), (1, 1))

    def test_socketsMismatch(self):
        """
        A socket the config does not serve is a failure too.
        """
        tcp = self.listening()
        reactor, worker, main = self.worker("services: []\n", [("echo", tcp.fileno())])
        worker.start()
        self.pump.flush()
        [[error]] = main.failures
        self.assertIn("match no service", error)

    def test_channelLost(self):
        """
        When the main process is gone (its channel closes), the worker drains and stops.
        """
        tcp = self.listening()
        text = (f"services:\n  - name: echo\n    protocol: echo\n"
                f"    port: {tcp.getsockname()[1]}\n    interface: 127.0.0.1\n")
        reactor, worker, main = self.worker(text, [("echo", os.dup(tcp.fileno()))])
        worker.start()
        self.pump.flush()
        worker.channel.transport.loseConnection()
        self.pump.flush()
        self.assertTrue(worker.draining)
        self.assertEqual(reactor.stopped, 1)

    def test_dieWithParent(self):
        """
        L{dieWithParent} asks for SIGTERM at the parent's death and says whether the
        parent is still the one given.
        """
        calls = []
        self.assertTrue(dieWithParent(10, prctl=lambda *a: calls.append(a),
                                      getppid=lambda: 10))
        self.assertEqual(calls, [(1, signal.SIGTERM, 0, 0, 0)])
        self.assertFalse(dieWithParent(10, prctl=lambda *a: None, getppid=lambda: 1))

    def test_output(self):
        """
        The worker writes its log without timestamps: warnings and errors to stderr, the
        rest to stdout.
        """
        import io

        from twisted.logger import Logger

        out, err = io.StringIO(), io.StringIO()
        logger = Logger(observer=OutputObserver(out, err), namespace="n")
        logger.info("hello {who}", who="you")
        logger.error("bad")
        self.assertEqual((out.getvalue(), err.getvalue()), ("hello you\n", "bad\n"))


class MakeServiceTests(SynchronousTestCase):
    """
    C{makeService} with C{workers:} above 1.
    """

    def test_mainTree(self):
        """
        The tree holds a L{Supervisor} named C{"portserver"} instead of a PortServer,
        with the status service over it; each of L{MAIN_PARTS} is made and added.
        """
        from portserver.tap import makeService

        plan = makePlan(spec("echo", port=0))
        plan = attrs.evolve(plan, config=attrs.evolve(plan.config, workers=2))
        made = []

        def makePart(supervisor):
            made.append(supervisor)
            return RecordingPart()

        MAIN_PARTS.append(makePart)
        self.addCleanup(MAIN_PARTS.remove, makePart)
        tree = makeService({"plan": plan}, reactor=MemoryReactorClock())
        supervisor = tree.getServiceNamed("portserver")
        self.assertIsInstance(tree, MainTree)
        self.assertIsInstance(supervisor, Supervisor)
        self.assertEqual(supervisor.count, 2)
        self.assertEqual(made, [supervisor])
        self.assertEqual(len(supervisor.parts), len(MAIN_PARTS))
        self.assertIsInstance(supervisor.parts[-1], RecordingPart)
        self.assertIs(tree.getServiceNamed("status").server, supervisor)


class SteerBySourceTests(SynchronousTestCase):
    """
    L{steerBySource}: the kernel gives every datagram of one source address to one
    socket of a listener's reuseport group (address mod count), whatever its port.
    """

    def received(self, family: int, host: str, count: int = 2,
                 senders: int = 40) -> list[int]:
        """
        Bind C{count} sockets of a UDP listener on C{host} (L{bindListener} steers
        them), send one datagram from each of C{senders} sockets (each its own source
        port), and return how many each socket got.
        """
        plan = makePlan(spec("echo", port=0, transports=("udp",), interface=host))
        group = bindListener(plan.listeners[0], count)
        self.addCleanup(group.close)
        port = group.address.port
        for _ in range(senders):
            with socket.socket(family, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"x", (host, port))
        counts = []
        for s in group.sockets:
            s.setblocking(False)
            got = 0
            while True:
                try:
                    s.recv(16)
                except BlockingIOError:
                    break
                got += 1
            counts.append(got)
        return counts

    def test_ipv4(self):
        """
        Datagrams from 40 source ports of 127.0.0.1 all reach socket 0x7f000001 mod 2
        (the kernel's own choice hashes the port too, and would spread them).
        """
        counts = self.received(socket.AF_INET, "127.0.0.1")
        self.assertEqual(counts, [0, 40])

    def test_ipv6(self):
        """
        Over IPv6, the last word of the source address decides: ::1 goes to socket 1.
        """
        if not socket.has_ipv6:
            raise self.skipTest("no IPv6")
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
                probe.bind(("::1", 0))
        except OSError:
            raise self.skipTest("no IPv6 loopback")
        counts = self.received(socket.AF_INET6, "::1", count=3)
        self.assertEqual(counts, [0, 40, 0])

    def test_program(self):
        """
        The program loads the source address word relative to the network header,
        takes it modulo the group's size and returns that index.
        """
        self.assertEqual(bySourceProgram(socket.AF_INET, 4),
                         [(0x20, 0, 0, 0xFFF0000C), (0x94, 0, 0, 4), (0x16, 0, 0, 0)])
        self.assertEqual(bySourceProgram(socket.AF_INET6, 2)[0], (0x20, 0, 0, 0xFFF00014))
