"""
Tests for live reload: L{PortServer.reload} applies a new plan as a difference,
L{portserver.reload.Reloader} reads the file and records the outcome, and SIGHUP is
wired to it.
"""

from __future__ import annotations

import errno
import os
import signal

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portserver.limits import AccessRules, Limits, ShutdownSpec, parseNetwork
from portserver.plan import loadPlan
from portserver.provider import PortProtocol
from portserver.reload import Reloader, ReloadSignal, installReloadSignal
from portserver.reloading import ReloadError, socketKey
from portserver.server import PortServer, ServerTree
from tests.support import PROVIDERS, RULE, Discovery, PortReactor, makePlan, spec


def limited(base, limits=None, access=None):
    """
    C{base} (a L{ServiceSpec}) with other limits and access rules.
    """
    changes = {}
    if limits is not None:
        changes["limits"] = limits
    if access is not None:
        changes["access"] = access
    return attrs.evolve(base, **changes)


def withDrain(plan, drain):
    return attrs.evolve(plan, config=attrs.evolve(plan.config, shutdown=ShutdownSpec(drain)))


def started(*specs, drain=5.0):
    """
    A started L{PortServer} serving C{specs} on a L{PortReactor}.
    """
    reactor = PortReactor()
    server = PortServer(withDrain(makePlan(*specs), drain), reactor)
    server.startService()
    return reactor, server


def child(server, service, transport="tcp"):
    [found] = [c for c in server.listeners
               if c.listener.service == service and c.listener.transport == transport]
    return found


def connect(server, service, host="127.0.0.2", port=40000):
    """
    A connection from C{host}:C{port} accepted by C{service}'s TCP listener as it is now
    (through the factory its port holds): the protocol and its transport.
    """
    listener = child(server, service)
    protocol = listener.port.factory.buildProtocol(IPv4Address("TCP", host, port))
    if protocol is None:
        return None, None
    transport = StringTransportWithDisconnection(
        hostAddress=IPv4Address("TCP", listener.listener.interface, listener.listener.port),
        peerAddress=IPv4Address("TCP", host, port))
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol, transport):
    """
    Finish a close the server began (or the client's), as the reactor would.
    """
    transport.connected = False
    protocol.connectionLost(Failure(ConnectionDone()))


class DifferenceTests(SynchronousTestCase):
    """
    L{PortServer.reload} changes what differs and nothing else.
    """

    def test_unchangedKeepsEverything(self):
        """
        Reloading the same plan keeps every socket and factory, changes nothing, and
        moves the generation on.
        """
        reactor, server = started(spec("echo", port=7007), spec("discard", port=7009))
        ports = [c.port for c in server.listeners]
        factories = [c.port.factory for c in server.listeners]
        report = self.successResultOf(server.reload(server.plan))
        self.assertEqual((report.added, report.removed, report.changed, report.unchanged),
                         ((), (), (), 2))
        self.assertEqual([c.port for c in server.listeners], ports)
        self.assertEqual([c.port.factory for c in server.listeners], factories)
        self.assertFalse(any(p.stopped for p in reactor.ports))
        self.assertEqual(len(reactor.ports), 2)
        self.assertEqual((server.generation, report.generation), (2, 2))

    def test_addAndRemove(self):
        """
        A new service starts listening; a removed one stops listening at once, while its
        live connection carries on until it ends by itself.
        """
        reactor, server = started(spec("echo", port=7007), spec("discard", port=7009))
        protocol, transport = connect(server, "discard")
        old = child(server, "discard")
        new = makePlan(spec("echo", port=7007), spec("daytime", port=7013))
        report = self.successResultOf(server.reload(new))
        self.assertEqual(report.added, ("daytime/tcp 127.0.0.1:7013",))
        self.assertEqual(report.removed, ("discard/tcp 127.0.0.1:7009",))
        self.assertEqual(report.unchanged, 1)
        self.assertTrue(old.port is None)
        self.assertEqual([(p.address.port, p.stopped) for p in reactor.ports],
                         [(7007, False), (7009, True), (7013, False)])
        self.assertEqual([l.service for l in server.boundListeners()], ["echo", "daytime"])
        self.assertIn(old, server.retiring)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"still served")
        self.assertEqual(len(server.registry), 1)
        lose(protocol, transport)
        self.assertEqual(len(server.registry), 0)

    def test_removedDrainThenAborted(self):
        """
        A connection of a removed service still open when C{shutdown.drain} is over is
        aborted; the server serves on.
        """
        reactor, server = started(spec("echo", port=7007), spec("discard", port=7009),
                                  drain=3.0)
        protocol, transport = connect(server, "discard")
        aborted = []
        transport.abortConnection = lambda: aborted.append(True)
        self.successResultOf(server.reload(withDrain(makePlan(spec("echo", port=7007)), 3.0)))
        reactor.advance(2.9)
        self.assertEqual(aborted, [])
        reactor.advance(0.2)
        self.assertEqual(aborted, [True])
        self.assertEqual(server.state, "serving")

    def test_changedLimitsApplyToNewConnectionsOnly(self):
        """
        A new idle timeout applies to connections accepted after the reload, on the same
        socket; the connection accepted before keeps the limits it was accepted with.
        """
        reactor, server = started(spec("echo", port=7007))
        port = child(server, "echo").port
        before = connect(server, "echo", port=40001)
        new = makePlan(limited(spec("echo", port=7007), Limits(idleTimeout=5.0)))
        report = self.successResultOf(server.reload(new))
        self.assertEqual(report.changed, ("echo/tcp 127.0.0.1:7007",))
        self.assertIs(child(server, "echo").port, port)
        after = connect(server, "echo", port=40002)
        reactor.advance(6)
        self.assertTrue(before[1].connected)
        self.assertFalse(after[1].connected)
        closed = {r.remote.port: r.reason for r in server.registry.recentlyClosed()}
        self.assertEqual(closed, {40002: "idle-timeout"})

    def test_replacedFactoryStoppedAfterLastConnection(self):
        """
        A factory replaced by a reload is stopped (C{doStop}) only once the last
        connection it accepted has ended; the new one was started.
        """
        reactor, server = started(spec("echo", port=7007))
        old = child(server, "echo").port.factory
        protocol, transport = connect(server, "echo")
        events = []
        old.wrapped.doStop = lambda: events.append("old stopped")
        self.successResultOf(server.reload(makePlan(
            limited(spec("echo", port=7007), Limits(deadline=60.0)))))
        new = child(server, "echo").port.factory
        self.assertIsNot(new, old)
        self.assertEqual(new.wrapped.numPorts, 1)
        self.assertEqual(events, [])
        lose(protocol, transport)
        reactor.advance(0)
        self.assertEqual(events, ["old stopped"])
        self.assertEqual(child(server, "echo").retired, [])

    def test_narrowedAccessClosesOnlyDenied(self):
        """
        A reload that denies 127.0.0.3 closes the live connection from it (reason
        "denied") and no other; new connections from it are refused.
        """
        reactor, server = started(spec("echo", port=7007))
        kept = connect(server, "echo", host="127.0.0.2")
        denied = connect(server, "echo", host="127.0.0.3")
        rules = AccessRules(deny=(parseNetwork("127.0.0.3"),))
        report = self.successResultOf(server.reload(makePlan(
            limited(spec("echo", port=7007), access=rules))))
        self.assertEqual(report.denied, 1)
        self.assertTrue(kept[1].connected)
        self.assertFalse(denied[1].connected)
        [record] = server.registry.recentlyClosed()
        self.assertEqual((record.remote.host, record.reason), ("127.0.0.3", "denied"))
        self.assertEqual(connect(server, "echo", host="127.0.0.3", port=40009), (None, None))
        self.assertEqual(server.registry.refused[("echo", "denied")], 1)
        self.assertIsNotNone(connect(server, "echo", host="127.0.0.4")[0])

    def test_moveToAnotherPort(self):
        """
        A service whose port changes listens on the new one and stops on the old.
        """
        reactor, server = started(spec("echo", port=7007))
        report = self.successResultOf(server.reload(makePlan(spec("echo", port=7008))))
        self.assertEqual((report.added, report.removed),
                         (("echo/tcp 127.0.0.1:7008",), ("echo/tcp 127.0.0.1:7007",)))
        self.assertEqual([(p.address.port, p.stopped) for p in reactor.ports],
                         [(7007, True), (7008, False)])

    def test_samePortTakenOverAfterClose(self):
        """
        A new listener on a port a removed one held (here: the same port on all
        interfaces) is bound once the old socket is closed, not before.
        """
        reactor, server = started(spec("echo", port=7007))
        closing = Deferred()
        reactor.ports[0].stopListening = lambda: closing
        result = server.reload(makePlan(spec("echo", port=7007, interface="0.0.0.0")))
        self.assertNoResult(result)
        self.assertEqual(len(reactor.ports), 1)
        closing.callback(None)
        report = self.successResultOf(result)
        self.assertEqual(report.added, ("echo/tcp 0.0.0.0:7007",))
        self.assertEqual(reactor.ports[1].address.host, "0.0.0.0")
        self.assertEqual(server.boundListeners()[0].interface, "0.0.0.0")

    def test_servicesSwapPorts(self):
        """
        Two services that swap ports keep both sockets; each socket serves the other
        protocol from then on.
        """
        reactor, server = started(spec("echo", port=7007), spec("discard", port=7009))
        report = self.successResultOf(server.reload(makePlan(
            spec("echo", port=7009), spec("discard", port=7007))))
        self.assertEqual((report.added, report.removed, len(report.changed)), ((), (), 2))
        self.assertEqual(len(reactor.ports), 2)
        byPort = {c.listener.port: c.port.factory.protocolName for c in server.listeners}
        self.assertEqual(byPort, {7007: "discard", 7009: "echo"})

    def test_udpProtocolReplaced(self):
        """
        A changed UDP service keeps its socket; datagrams from then on go to the new
        plugin protocol, and the old one is stopped.
        """
        reactor, server = started(spec("echo", port=7007, transports=("udp",)))
        tracking = child(server, "echo", "udp").served
        tracking.makeConnection(reactor.ports[0])
        old = tracking.wrapped
        self.successResultOf(server.reload(makePlan(
            spec("echo", port=7007, transports=("udp",), options={}),
            spec("daytime", port=7013))))  # echo unchanged: same wrapped protocol
        self.assertIs(tracking.wrapped, old)
        self.successResultOf(server.reload(makePlan(
            spec("echo", protocol="discard", port=7007, transports=("udp",)))))
        self.assertIsNot(tracking.wrapped, old)
        self.assertEqual(tracking.protocolName, "discard")
        self.assertEqual(old.numPorts, 0)
        self.assertEqual(len([p for p in reactor.ports if not p.stopped]), 1)


class UDPAccessTests(SynchronousTestCase):
    """
    Access rules apply to datagrams too, from start-up and after a reload.
    """

    def test_deniedDatagramsDropped(self):
        """
        A datagram from a denied peer reaches neither the plugin nor the registry (no
        flow), and is counted as refused ("denied"); an allowed peer is echoed. A reload
        that lifts the rule lets the peer in.
        """
        rules = AccessRules(deny=(parseNetwork("127.0.0.3"),))
        reactor, server = started(limited(spec("echo", port=7007, transports=("udp",)),
                                          access=rules))
        tracking = child(server, "echo", "udp").served
        sent = []

        class Port:
            def write(self, data, addr):
                sent.append((data, addr))

            def getHost(self):
                return IPv4Address("UDP", "127.0.0.1", 7007)

        tracking.makeConnection(Port())
        tracking.datagramReceived(b"denied", ("127.0.0.3", 5000))
        tracking.datagramReceived(b"allowed", ("127.0.0.2", 5000))
        self.assertEqual(sent, [(b"allowed", ("127.0.0.2", 5000))])
        self.assertEqual([r.remote.host for r in server.registry.snapshot("udp")],
                         ["127.0.0.2"])
        self.assertEqual(server.registry.refused[("echo", "denied")], 1)
        self.successResultOf(server.reload(makePlan(
            spec("echo", port=7007, transports=("udp",)))))
        tracking.datagramReceived(b"let in", ("127.0.0.3", 5000))
        self.assertEqual(sent[-1], (b"let in", ("127.0.0.3", 5000)))

    def test_renamedServiceAdmitsByItsOwnRules(self):
        """
        When a reload gives a socket to another service, new connections are admitted
        by the new service's rules, and counted under its name.
        """
        reactor, server = started(spec("echo", port=7007))
        rules = AccessRules(deny=(parseNetwork("127.0.0.3"),))
        self.successResultOf(server.reload(makePlan(
            limited(spec("other", protocol="echo", port=7007), access=rules))))
        self.assertEqual(connect(server, "other", host="127.0.0.3"), (None, None))
        self.assertEqual(server.registry.refused[("other", "denied")], 1)
        protocol, _ = connect(server, "other", host="127.0.0.2")
        self.assertEqual(protocol.record.service, "other")


class RestartOnlyTests(SynchronousTestCase):
    """
    Settings only a restart applies are named in the report's warnings.
    """

    def test_statusAndRegistry(self):
        """
        A changed C{status.listen} and changed registry settings are each a warning;
        the services are still applied.
        """
        from portserver.config import RegistrySpec, StatusSpec
        reactor, server = started(spec("echo", port=7007))
        plan = makePlan(spec("echo", port=7007), spec("daytime", port=7013))
        plan = attrs.evolve(plan, config=attrs.evolve(
            plan.config, status=StatusSpec("tcp:9999:interface=127.0.0.1"),
            registry=RegistrySpec(closedLimit=5)))
        report = self.successResultOf(server.reload(plan))
        self.assertEqual(report.added, ("daytime/tcp 127.0.0.1:7013",))
        self.assertEqual(report.warnings, (
            "status.listen changed to 'tcp:9999:interface=127.0.0.1': the status service "
            "stays on 'tcp:8790:interface=127.0.0.1' until a restart",
            "registry settings changed: they apply at the next restart"))


class BrokenProvider(PortProtocol):
    """
    A protocol whose factory cannot be built.
    """

    def buildFactory(self, spec, reactor):
        raise RuntimeError("no database")


BROKEN = BrokenProvider("broken", "fails to build", 7999, factory=None)


class RejectionTests(SynchronousTestCase):
    """
    A plan that cannot be applied whole changes nothing.
    """

    def test_pluginBuildFails(self):
        """
        A plugin whose factory fails to build rejects the reload, naming the service;
        the new listener bound before the failure was found is released, and the
        generation and plan stay.
        """
        reactor, server = started(spec("echo", port=7007))
        plan = server.plan
        broken = spec("bad", protocol="broken", port=7999, providers={"broken": BROKEN})
        failure = self.failureResultOf(
            server.reload(makePlan(spec("echo", port=7007), spec("daytime", port=7013),
                                   broken)), ReloadError)
        self.assertIn("service 'bad': protocol 'broken' failed to build its tcp side: "
                      "RuntimeError: no database", failure.value.errors[0])
        self.assertEqual(len(reactor.ports), 1)
        self.assertIs(server.plan, plan)
        self.assertEqual(server.generation, 1)

    def test_bindFails(self):
        """
        A new port that cannot be bound rejects the reload with the bind message; the
        other new port, already bound, is released; the old services serve on.
        """
        reactor = PortReactor(refuse={("tcp", 7019): errno.EADDRINUSE})
        server = PortServer(makePlan(spec("echo", port=7007)), reactor)
        server.startService()
        failure = self.failureResultOf(server.reload(makePlan(
            spec("echo", port=7007), spec("daytime", port=7013),
            spec("chargen", port=7019))), ReloadError)
        [message] = failure.value.errors
        self.assertIn("cannot listen for service 'chargen'", message)
        self.assertIn("another program holds tcp port 7019", message)
        self.assertEqual([(p.address.port, p.stopped) for p in reactor.ports],
                         [(7007, False), (7013, True)])
        self.assertEqual([l.service for l in server.boundListeners()], ["echo"])
        self.assertIsNotNone(connect(server, "echo")[0])

    def test_notWhileStopping(self):
        """
        A reload during the drain of a stop is rejected.
        """
        reactor, server = started(spec("echo", port=7007))
        connect(server, "echo")
        server.stopService()
        failure = self.failureResultOf(server.reload(server.plan), ReloadError)
        self.assertEqual(failure.value.errors, ("the server is draining",))


CONFIG = """\
status: off
registry:
  connection_log: off
services:
  - name: echo
    protocol: echo
    port: 7007
    interface: 127.0.0.1
"""


class ReloaderTests(SynchronousTestCase):
    """
    L{Reloader} reads the config file and records each outcome on the server.
    """

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.write(CONFIG)
        self.reactor = PortReactor()
        plan = loadPlan(self.path, PROVIDERS, rule=RULE, dualStack=True)
        self.server = PortServer(plan, self.reactor)
        self.server.startService()
        self.reloader = Reloader(self.server, self.path, discover=lambda: Discovery,
                                 loadPlan=lambda *a, **k: loadPlan(*a, dualStack=True, **k))
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def test_applied(self):
        """
        A valid new config is applied: the outcome says what changed, the server's
        generation, load time and counts move on, and one info line is logged.
        """
        self.reactor.advance(30)
        self.write(CONFIG + "  - name: daytime\n    protocol: daytime\n    port: 7013\n"
                            "    interface: 127.0.0.1\n")
        outcome = self.successResultOf(self.reloader.reload())
        self.assertEqual(outcome["result"], "applied")
        self.assertEqual(outcome["added"], ["daytime/tcp 127.0.0.1:7013"])
        self.assertEqual((outcome["generation"], outcome["at"]), (2, 30.0))
        self.assertEqual((self.server.generation, self.server.loadedAt), (2, 30.0))
        self.assertIs(self.server.lastReload, outcome)
        self.assertEqual(self.server.reloads["applied"], 1)
        [line] = [e for e in self.events if "Reloaded" in e.get("log_format", "")]
        self.assertEqual(line["generation"], 2)

    def test_rejectedKeepsOld(self):
        """
        A config with errors is rejected whole: every error is in the outcome and in
        one error log event, with the file and line; the old config stays in force.
        """
        plan = self.server.plan
        self.write(CONFIG.replace("port: 7007", "port: 99999") +
                   "  - name: more\n    protocol: nonesuch\n")
        outcome = self.successResultOf(self.reloader.reload())
        self.assertEqual(outcome["result"], "rejected")
        self.assertEqual(len(outcome["errors"]), 2)
        self.assertTrue(outcome["errors"][0].startswith(f"{self.path}:7:"))
        self.assertIn("nonesuch", outcome["errors"][1])
        self.assertIs(self.server.plan, plan)
        self.assertEqual(self.server.generation, 1)
        self.assertEqual(self.server.reloads["rejected"], 1)
        [event] = [e for e in self.events if e.get("log_level") == LogLevel.error]
        self.assertEqual(event["errors"].count(self.path), 2)
        self.assertEqual(outcome["generation"], 1)

    def test_missingFile(self):
        """
        A config file that has gone is a rejected reload naming the file, not a crash.
        """
        os.remove(self.path)
        outcome = self.successResultOf(self.reloader.reload())
        self.assertEqual(outcome["result"], "rejected")
        self.assertIn(self.path, outcome["errors"][0])

    def test_requestsDuringAReloadAreOne(self):
        """
        Requests that come while a reload is under way are served by one more reload
        after it, whose outcome they all get.
        """
        attempts = []

        class Server:
            plan = self.server.plan
            reactor = self.reactor
            generation, loadedAt, lastReload = 1, 0.0, None
            reloads = self.server.reloads

            def reload(self, plan):
                attempts.append(Deferred())
                return attempts[-1]

        reloader = Reloader(Server(), self.path, discover=lambda: Discovery,
                            loadPlan=lambda *a, **k: loadPlan(*a, dualStack=True, **k))
        first = reloader.reload()
        second, third = reloader.reload(), reloader.reload()
        self.assertEqual(len(attempts), 1)
        attempts[0].errback(ReloadError(["one"]))
        self.assertEqual(self.successResultOf(first)["errors"], ["one"])
        self.assertEqual(len(attempts), 2)
        self.assertNoResult(second)
        attempts[1].errback(ReloadError(["two"]))
        self.assertEqual(self.successResultOf(second)["errors"], ["two"])
        self.assertEqual(self.successResultOf(third)["errors"], ["two"])
        self.assertEqual(len(attempts), 2)


class SignalTests(SynchronousTestCase):
    """
    L{installReloadSignal} makes SIGHUP schedule a reload in the reactor thread.
    """

    def test_takesDefault(self):
        """
        With SIGHUP at its default (which would end the process), the handler is
        installed; a signal schedules C{reload} through C{callFromThread}.
        """
        installed, scheduled = {}, []

        class Reactor:
            def callFromThread(self, f, *args):
                scheduled.append(f)

        class Reload:
            path = "x.yaml"

            def reload(self):
                return succeed(None)

        reloader = Reload()
        taken = installReloadSignal(Reactor(), reloader, setSignal=installed.__setitem__,
                                    getSignal=lambda n: signal.SIG_DFL)
        self.assertTrue(taken)
        installed[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(scheduled, [reloader.reload])

    def test_leavesOthersAlone(self):
        """
        A SIGHUP handler someone else installed (or SIG_IGN) is left in place.
        """
        installed = {}
        for current in (signal.SIG_IGN, lambda n, f: None):
            self.assertFalse(installReloadSignal(
                object(), object(), setSignal=installed.__setitem__,
                getSignal=lambda n: current))
        self.assertEqual(installed, {})


class ThreadedReactor(PortReactor):
    """
    A L{PortReactor} with C{callFromThread}: calls wait in C{fromThread} until the test
    runs them (as the reactor thread would, at its next turn).
    """

    def __init__(self):
        super().__init__()
        self.fromThread = []

    def callFromThread(self, f, *args, **kwargs):
        self.fromThread.append((f, args, kwargs))

    def runThreadCalls(self):
        calls, self.fromThread = self.fromThread, []
        for f, args, kwargs in calls:
            f(*args, **kwargs)


class RecordingReloader:
    """
    A stand-in for L{Reloader} that counts the reloads asked of it.
    """

    path = "/etc/portserver.yaml"

    def __init__(self):
        self.reloads = 0

    def reload(self):
        self.reloads += 1
        return succeed({"result": "applied"})


class ReloadSignalServiceTests(SynchronousTestCase):
    """
    L{ReloadSignal} takes SIGHUP before any port is bound, holds a reload asked for
    during start-up until start-up completes, and ignores one asked for while stopping.
    """

    def setUp(self):
        self.reactor = ThreadedReactor()
        self.reloader = RecordingReloader()
        self.installed = {}
        self.boundAtInstall = []

        def install(reactor, target):
            self.boundAtInstall.append(len(self.reactor.tcpServers))
            return installReloadSignal(reactor, target, setSignal=self.installed.__setitem__,
                                       getSignal=lambda n: signal.SIG_DFL)

        self.service = ReloadSignal(self.reactor, self.reloader, install=install)
        self.tree = ServerTree()
        self.service.setServiceParent(self.tree)
        PortServer(makePlan(spec("echo", port=7)), self.reactor).setServiceParent(self.tree)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def hangUp(self):
        """
        Deliver SIGHUP to the installed handler, and let the reactor thread run.
        """
        self.installed[signal.SIGHUP](signal.SIGHUP, None)
        self.reactor.runThreadCalls()

    def messages(self):
        return [formatEvent(e) for e in self.events]

    def test_installedBeforeTheFirstBind(self):
        """
        The handler is installed (once) by the time C{privilegedStartService} binds the
        first port, so a SIGHUP from then on is handled rather than ending the process.
        """
        self.tree.privilegedStartService()
        self.assertEqual(self.boundAtInstall, [0])
        self.assertIn(signal.SIGHUP, self.installed)
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.tree.startService()
        self.assertEqual(self.boundAtInstall, [0])

    def test_reloadDuringStartUpRunsOnceStarted(self):
        """
        SIGHUPs that arrive while starting (after binding, before start-up completes)
        are one reload, run at the first reactor turn after every service has started,
        with a log line saying so; later ones reload at once.
        """
        self.tree.privilegedStartService()
        self.hangUp()
        self.hangUp()
        self.assertEqual(self.reloader.reloads, 0)
        self.assertEqual(self.service.state, "starting")
        self.tree.startService()
        self.assertEqual(self.reloader.reloads, 0)
        self.reactor.advance(0)
        self.assertEqual((self.service.state, self.reloader.reloads), ("serving", 1))
        messages = self.messages()
        self.assertEqual(sum("it runs once start-up completes" in m for m in messages), 1)
        self.assertEqual(sum(m.startswith("Start-up complete") for m in messages), 1)
        self.hangUp()
        self.assertEqual(self.reloader.reloads, 2)

    def test_noPendingReloadNoReload(self):
        """
        Without a SIGHUP during start-up, completing start-up reloads nothing.
        """
        self.tree.privilegedStartService()
        self.tree.startService()
        self.reactor.advance(0)
        self.assertEqual((self.service.state, self.reloader.reloads), ("serving", 0))

    def test_ignoredWhileStopping(self):
        """
        A SIGHUP once stopping is ignored with a log line; a start-up that is stopped
        before it completes does not run the pending reload.
        """
        self.tree.privilegedStartService()
        self.hangUp()
        self.tree.startService()
        self.tree.stopService()
        self.reactor.advance(0)
        self.assertEqual(self.reloader.reloads, 0)
        self.hangUp()
        self.assertEqual(self.reloader.reloads, 0)
        self.assertIn("Reload of /etc/portserver.yaml ignored: portserver is stopping",
                      self.messages())

    def test_withoutInstall(self):
        """
        With C{install=None} (a tree on a test's reactor), the process's signals are
        left alone; L{ReloadSignal.reload} still gates reloads by state.
        """
        service = ReloadSignal(self.reactor, self.reloader, install=None)
        service.privilegedStartService()
        service.startService()
        self.reactor.advance(0)
        self.assertEqual(self.installed, {})
        service.reload()
        self.assertEqual(self.reloader.reloads, 1)


class SocketKeyTests(SynchronousTestCase):
    """
    L{socketKey}: what makes two listeners the same socket.
    """

    def test_keys(self):
        """
        The address decides, whatever the service; on port 0 the service decides too.
        """
        a = makePlan(spec("echo", port=7007)).listeners[0]
        b = makePlan(spec("daytime", port=7007)).listeners[0]
        self.assertEqual(socketKey(a), socketKey(b))
        zeroA = makePlan(spec("echo", port=0)).listeners[0]
        zeroB = makePlan(spec("daytime", port=0)).listeners[0]
        self.assertNotEqual(socketKey(zeroA), socketKey(zeroB))
