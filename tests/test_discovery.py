"""
Tests for L{portserver.plugins}: finding protocol providers in C{twisted/plugins/}
drop-ins, the built-in ones and third-party ones on C{sys.path}.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import textwrap

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import log as legacyLog
from twisted.python.failure import Failure
from twisted.plugin import IPlugin, getPlugins
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import twisted.plugins
from portserver.interfaces import IPortProtocol
from portserver.plan import loadPlan
from portserver.plugins import (
    Discovery,
    DropinFailure,
    DuplicateProtocolError,
    discover,
    formatProtocols,
)
from portserver.server import PortServer

#: The built-in protocols: name -> the attribute of C{portserver_protocols} providing it.
BUILTINS = {
    "echo": "echo",
    "discard": "discard",
    "daytime": "daytimeProtocol",
    "qotd": "qotd",
    "chargen": "chargen",
    "time": "timeProtocol",
    "smtp": "smtp",
    "http": "http",
    "exec": "execute",
    "forward": "forward",
}

#: A third-party protocol plugin, written the way a plugin author would write one.
ROT13_DROPIN = '''
"""
A third-party portserver protocol: rot13 over TCP, one line at a time.
"""

import codecs

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from portserver.provider import PortProtocol


class Rot13(LineReceiver):
    def lineReceived(self, line):
        self.sendLine(codecs.encode(line.decode("ascii"), "rot13").encode("ascii"))

    def connectionLost(self, reason):
        self.factory.lost.append(reason)
        waiting, self.factory.waiting = self.factory.waiting, []
        for d in waiting:
            d.callback(None)


class Rot13Factory(Factory):
    protocol = Rot13
    noisy = False

    def __init__(self, service):
        self.service = service
        self.lost = []
        self.waiting = []

    def whenConnectionLost(self):
        d = Deferred()
        self.waiting.append(d)
        return d


rot13 = PortProtocol(
    name="{name}",
    description="Rot13: sends back each line rot13-ed",
    wellKnownPort={port},
    factory=lambda service, reactor: Rot13Factory(service),
)
'''


def rot13Dropin(name: str = "trot13", port: int = 10013) -> str:
    """
    The source of a drop-in providing a rot13 protocol named C{name}.
    """
    return ROT13_DROPIN.replace("{name}", name).replace("{port}", str(port))


def rot13(data: bytes) -> bytes:
    """
    rot13, computed here independently of the drop-in.
    """
    return bytes(
        (c - 97 + 13) % 26 + 97 if 97 <= c <= 122 else
        (c - 65 + 13) % 26 + 65 if 65 <= c <= 90 else c
        for c in data)


def addDropins(testCase, dropins: dict[str, str]) -> str:
    """
    Write C{dropins} (module name -> source) into C{twisted/plugins/} of a fresh
    directory (with no C{__init__.py} there, as a real third-party distribution ships
    it), and put that directory where plugin discovery looks: on C{sys.path} and on
    C{twisted.plugins.__path__} (which Twisted computes from C{sys.path} once, when
    C{twisted.plugins} is first imported). All of it is undone when the test ends.

    @return: the directory.
    """
    top = os.path.abspath(testCase.mktemp())
    plugins = os.path.join(top, "twisted", "plugins")
    os.makedirs(plugins)
    for module, source in dropins.items():
        with open(os.path.join(plugins, module + ".py"), "w") as f:
            f.write(textwrap.dedent(source))

    sys.path.append(top)
    twisted.plugins.__path__.append(plugins)

    def cleanup():
        sys.path.remove(top)
        twisted.plugins.__path__.remove(plugins)
        for module in dropins:
            sys.modules.pop(f"twisted.plugins.{module}", None)
            twisted.plugins.__dict__.pop(module, None)
        cache = os.path.join(plugins, "dropin.cache")
        if os.path.exists(cache):
            os.remove(cache)

    testCase.addCleanup(cleanup)
    return top


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 that was free a moment ago.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def rot13Config(port: int, protocol: str = "trot13") -> str:
    return textwrap.dedent(f"""\
        services:
          - name: {protocol}-svc
            protocol: {protocol}
            interface: 127.0.0.1
            port: {port}
            transports: [tcp]
        """)


class BuiltinDiscoveryTests(SynchronousTestCase):
    """
    The built-in protocols are Twisted plugins, found both by Twisted and by L{discover}.
    """

    def test_pluginDiscovery(self):
        """
        L{getPlugins} and L{discover} both find all six built-ins, each a verified
        L{IPortProtocol} (and L{IPlugin}), and L{discover} records each one's origin as
        the attribute of C{twisted.plugins.portserver_protocols} it came from.
        """
        viaTwisted = {p.name: p for p in getPlugins(IPortProtocol)}
        discovery = discover()
        self.assertIsInstance(discovery, Discovery)
        for name, attr in BUILTINS.items():
            self.assertIn(name, viaTwisted)
            self.assertIn(name, discovery.providers)
            provider = discovery.providers[name]
            self.assertIs(provider, viaTwisted[name])
            self.assertTrue(verifyObject(IPortProtocol, provider))
            self.assertTrue(IPlugin.providedBy(provider))
            self.assertEqual(provider.name, name)
            self.assertEqual(discovery.origins[name],
                             f"twisted.plugins.portserver_protocols.{attr}")
        self.assertEqual(discovery.failures, ())

    def test_discoverDefaultsToTwistedPlugins(self):
        """
        L{discover} with an explicit C{twisted.plugins} package finds what the default
        finds.
        """
        self.assertEqual(discover(twisted.plugins).origins, discover().origins)


class ThirdPartyDiscoveryTests(SynchronousTestCase):
    """
    A third-party drop-in anywhere on C{sys.path} adds a protocol.
    """

    def setUp(self):
        self.top = addDropins(self, {"thirdparty_rot13": rot13Dropin()})

    def test_found(self):
        """
        L{discover} finds the third-party provider next to the built-ins, with its
        drop-in module as its origin, and L{getPlugins} finds it too.
        """
        discovery = discover()
        self.assertIn("trot13", discovery.providers)
        provider = discovery.providers["trot13"]
        self.assertTrue(verifyObject(IPortProtocol, provider))
        self.assertEqual(provider.wellKnownPort, 10013)
        self.assertEqual(provider.transports, frozenset({"tcp"}))
        self.assertEqual(discovery.origins["trot13"], "twisted.plugins.thirdparty_rot13.rot13")
        self.assertLessEqual(set(BUILTINS), set(discovery.providers))
        self.assertIn("trot13", {p.name for p in getPlugins(IPortProtocol)})
        self.assertEqual(discovery.failures, ())

    def test_notFoundWithoutDropin(self):
        """
        Without the drop-in directory on the plugin path, there is no rot13: what
        L{test_found} sees comes from the drop-in.
        """
        top = self.top
        plugins = os.path.join(top, "twisted", "plugins")
        sys.path.remove(top)
        twisted.plugins.__path__.remove(plugins)
        try:
            self.assertNotIn("trot13", discover().providers)
        finally:
            sys.path.append(top)
            twisted.plugins.__path__.append(plugins)

    def test_configServesIt(self):
        """
        A config naming the third-party protocol plans a listener, and the service binds
        a TCP listener on the configured interface and port whose factory speaks rot13.
        """
        discovery = discover()
        plan = loadPlan("rot13.yaml", discovery.providers, text=rot13Config(1))
        [listener] = plan.listeners
        self.assertEqual((listener.protocol, listener.transport, listener.interface,
                          listener.port), ("trot13", "tcp", "127.0.0.1", 1))

        memory = MemoryReactorClock()
        server = PortServer(plan, memory)
        server.startService()
        self.addCleanup(server.stopService)
        [(port, factory, _, interface)] = memory.tcpServers
        self.assertEqual((port, interface), (1, "127.0.0.1"))

        protocol = factory.buildProtocol(("127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"Hello, World\r\nabc xyz\r\n")
        self.assertEqual(transport.value(), b"Uryyb, Jbeyq\r\nnop klm\r\n")


class Rot13Client(LineReceiver):
    """
    Collects the lines a server sends; C{lineArrived} and C{lost} fire on the events.
    """

    def __init__(self):
        self.lineArrived = Deferred()
        self.lost = Deferred()

    def lineReceived(self, line):
        d, self.lineArrived = self.lineArrived, None
        if d is not None:
            d.callback(line)

    def connectionLost(self, reason):
        self.lost.callback(None)


class ThirdPartyServingTests(TestCase):
    """
    A third-party protocol, configured, served on a real socket by the real reactor.
    """

    timeout = 30

    def setUp(self):
        addDropins(self, {"thirdparty_rot13": rot13Dropin()})

    async def test_servesOverTCP(self):
        """
        L{PortServer} built from a config naming the third-party protocol listens on the
        configured port of 127.0.0.1; a client's line comes back rot13-ed; stopping the
        service closes the port.
        """
        port = freePort()
        plan = loadPlan("rot13.yaml", discover().providers, text=rot13Config(port))
        server = PortServer(plan, reactor)
        server.startService()
        try:
            address = server.addressOf("trot13-svc")
            self.assertEqual((address.host, address.port), ("127.0.0.1", port))
            factory = server.listeners[0].port.factory.wrapped
            serverSideLost = factory.whenConnectionLost()

            client = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port), Rot13Client())
            lineArrived = client.lineArrived
            client.sendLine(b"Twisted Plugins 123")
            self.assertEqual(await lineArrived, rot13(b"Twisted Plugins 123"))
            self.assertEqual(rot13(b"Twisted Plugins 123"), b"Gjvfgrq Cyhtvaf 123")
            client.transport.loseConnection()
            await gatherResults([client.lost, serverSideLost])
            [reason] = factory.lost
            self.assertTrue(reason.check(ConnectionDone), reason)
        finally:
            await server.stopService()
        self.assertIsNone(server.addressOf("trot13-svc"))


class DuplicateTests(SynchronousTestCase):
    """
    Two drop-ins providing one protocol name are an error naming both.
    """

    def test_duplicateNamesBothDropins(self):
        """
        Two providers named C{rot13}, in drop-ins of two distributions, make L{discover}
        raise L{DuplicateProtocolError} naming the protocol and both drop-in origins.
        """
        addDropins(self, {"thirdparty_dupa": rot13Dropin()})
        addDropins(self, {"thirdparty_dupb": rot13Dropin(port=10014)})
        error = self.assertRaises(DuplicateProtocolError, discover)
        message = str(error)
        self.assertIn("'trot13'", message)
        self.assertIn("twisted.plugins.thirdparty_dupa.rot13", message)
        self.assertIn("twisted.plugins.thirdparty_dupb.rot13", message)

    def test_duplicateOfBuiltin(self):
        """
        A third-party provider reusing a built-in's name (C{echo}) is a duplicate too,
        naming the built-in's origin and the drop-in's.
        """
        addDropins(self, {"thirdparty_echo": rot13Dropin(name="echo")})
        message = str(self.assertRaises(DuplicateProtocolError, discover))
        self.assertIn("'echo'", message)
        self.assertIn("twisted.plugins.portserver_protocols.echo", message)
        self.assertIn("twisted.plugins.thirdparty_echo.rot13", message)


class BrokenDropinTests(SynchronousTestCase):
    """
    A drop-in that fails to import is reported and logged; everything else still loads.
    """

    def setUp(self):
        addDropins(self, {
            "thirdparty_broken": 'raise RuntimeError("boom")\n',
            "thirdparty_rot13": rot13Dropin(),
        })
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def flushImportErrors(self):
        """
        Flush the errors trial saw logged during discovery, and check that Twisted's
        C{getCache} logged the drop-in's L{RuntimeError}.

        Everything is flushed rather than C{flushLoggedErrors(RuntimeError)}: if
        portserver's own event ever again carried a non-L{Failure} under the legacy
        C{failure} key (see L{test_legacyObserversSeeTheMessage}), filtering by type would
        call C{.check()} on it and crash trial's reporter instead of failing that test.
        """
        flushed = self.flushLoggedErrors()
        self.assertTrue(
            any(isinstance(f, Failure) and f.check(RuntimeError) for f in flushed), flushed)

    def test_othersStillLoad(self):
        """
        L{discover} still returns the built-ins and the good third-party provider.
        """
        discovery = discover()
        self.flushImportErrors()
        self.assertLessEqual(set(BUILTINS) | {"trot13"}, set(discovery.providers))
        self.assertEqual(discovery.origins["trot13"], "twisted.plugins.thirdparty_rot13.rot13")

    def test_failureRecorded(self):
        """
        C{discovery.failures} has one L{DropinFailure} naming the broken module, with
        the traceback of its import error.
        """
        discovery = discover()
        self.flushImportErrors()
        [failure] = discovery.failures
        self.assertIsInstance(failure, DropinFailure)
        self.assertEqual(failure.module, "twisted.plugins.thirdparty_broken")
        self.assertIn("Traceback", failure.traceback)
        self.assertIn('raise RuntimeError("boom")', failure.traceback)
        self.assertIn("RuntimeError: boom", failure.traceback)
        self.assertIn("twisted.plugins.thirdparty_broken", str(failure))

    def test_failureLogged(self):
        """
        The failure is logged at error level by portserver, the event naming the module
        and, formatted, carrying the traceback.
        """
        discover()
        self.flushImportErrors()
        ours = [e for e in self.events
                if e.get("module") == "twisted.plugins.thirdparty_broken"]
        self.assertEqual(len(ours), 1, self.events)
        [event] = ours
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(event["log_namespace"], "portserver.plugins")
        text = formatEvent(event)
        self.assertIn("twisted.plugins.thirdparty_broken", text)
        self.assertIn("RuntimeError: boom", text)

    def test_legacyObserversSeeTheMessage(self):
        """
        A legacy (C{twisted.python.log}) observer, such as trial's or a classic
        C{FileLogObserver}, renders portserver's event with the module name and the
        traceback, and every error trial collects is a real L{Failure}.
        """
        out = io.StringIO()
        observer = legacyLog.FileLogObserver(out)
        legacyLog.addObserver(observer.emit)
        self.addCleanup(legacyLog.removeObserver, observer.emit)
        # Whatever the outcome, leave nothing for trial's post-test error collection.
        self.addCleanup(self.flushLoggedErrors)
        discover()
        for error in self.flushLoggedErrors():
            self.assertIsInstance(error, Failure)
        self.assertIn("twisted.plugins.thirdparty_broken", out.getvalue())
        self.assertIn("RuntimeError: boom", out.getvalue())


class FormatProtocolsTests(SynchronousTestCase):
    """
    L{formatProtocols} is the C{--list-protocols} table.
    """

    def test_listsEveryProtocol(self):
        """
        Each protocol has a row with its name, well-known port, transports and
        description, in order of port, under a header.
        """
        addDropins(self, {"thirdparty_rot13": rot13Dropin()})
        discovery = discover()
        lines = formatProtocols(discovery).splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "PORT", "TRANSPORTS", "DESCRIPTION"])
        rows = {line.split()[0]: line for line in lines[1:]}
        self.assertEqual(set(rows), set(discovery.providers))
        for name, provider in discovery.providers.items():
            cells = rows[name].split(None, 3)
            self.assertEqual(cells[:3], [name, str(provider.wellKnownPort),
                                         ",".join(sorted(provider.transports))])
            self.assertEqual(cells[3], provider.description)
        self.assertEqual(rows["echo"].split(None, 3)[1:],
                         ["7", "tcp,udp", "Echo: sends back what it receives (RFC 862)"])
        self.assertEqual(rows["trot13"].split(None, 3)[1:],
                         ["10013", "tcp", "Rot13: sends back each line rot13-ed"])
        order = [line.split()[0] for line in lines[1:]]
        self.assertEqual(order[:5], ["echo", "discard", "daytime", "qotd", "chargen"])
        self.assertEqual(order, sorted(order[:-1], key=lambda n: (
            discovery.providers[n].wellKnownPort, n)) + ["trot13"])
        self.assertEqual(order[-1], "trot13")
