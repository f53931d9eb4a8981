"""
The PROXY protocol on a real server: clients on 127.0.0.0/8 play the proxy (127.0.0.2)
and send the header by hand, over real sockets; the registry, the access rules and
per-source limits, and the plugins (echo, exec's environment, http's access log, smtp's
Received header) see the client the header names.
"""

from __future__ import annotations

import gc
import glob
import ipaddress
import os
import smtplib
import socket
import struct
import weakref

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from portserver.plan import loadPlan
from portserver.plugins import discover
from portserver.ports import PrivilegeRule
from portserver.proxyheader import PROXY_ERROR, PROXY_UNTRUSTED, V2_SIGNATURE, ProxyProtocol
from portserver.server import PortServer
from tests.support import freePort, makePlan, readExactly, spec, watchedEcho

DEADLINE = 10
PROXY = "127.0.0.2"


def v1(source="203.0.113.7", port=40001, family="TCP4", dest="127.0.0.1", destPort=80):
    return f"PROXY {family} {source} {dest} {port} {destPort}\r\n".encode()


def v2(source="203.0.113.7", port=40001, dest="127.0.0.1", destPort=80, local=False):
    if local:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    body = (socket.inet_pton(family, source) + socket.inet_pton(family, dest)
            + struct.pack("!HH", port, destPort))
    return (V2_SIGNATURE + bytes([0x21, 0x21 if family == socket.AF_INET6 else 0x11])
            + struct.pack("!H", len(body)) + body)


def connect(port, source=PROXY, host="127.0.0.1"):
    """
    A socket connected to C{host}:C{port} from C{source}.
    """
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(DEADLINE)
    s.bind((source, 0))
    s.connect((host, port))
    return s


def readAll(s) -> bytes:
    """
    What the server sends until it closes (b"" when it closes at once or resets).
    """
    chunks = []
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


class ProxyProtocolLiveTests(TestCase):
    """
    Services with C{proxy_protocol: {from: [127.0.0.2]}} on a real server.
    """

    timeout = 60

    def serve(self, services, extra=""):
        """
        Serve C{services} (YAML items, C{@PORT@} standing for a free port each).
        """
        while "@PORT@" in services:
            services = services.replace("@PORT@", str(freePort()), 1)
        self.text = extra + "services:\n" + services
        plan = loadPlan("proxy.yaml", discover().providers, rule=PrivilegeRule(1024, "test"),
                        dualStack=True, text=self.text)
        self.server = server = PortServer(plan, reactor)
        server.startService()
        self.addCleanup(server.stopService)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return server

    def port(self, service="echo"):
        return self.server.addressOf(service).port

    def echo(self, settings="{from: [127.0.0.2]}", limits="", access=""):
        return self.serve("  - name: echo\n    protocol: echo\n    port: @PORT@\n"
                          "    interface: 127.0.0.1\n"
                          f"    proxy_protocol: {settings}\n{limits}{access}")

    def test_echoSeesTheClient(self):
        """
        Through a v1 header split across two sends, echo answers only what followed
        the header; the registry's record has the client as C{remote} and the proxy
        (its address and source port) as C{proxy}, and so has C{/api/connections}'
        dict.
        """
        self.echo()
        port = self.port()

        def client():
            s = connect(port)
            s.sendall(v1()[:10])
            s.sendall(v1()[10:] + b"hello")
            return s, readExactly(s, 5), s.getsockname()[1]

        def check(result):
            s, got, proxyPort = result
            self.addCleanup(s.close)
            self.assertEqual(got, b"hello")
            [record] = self.server.registry.query("echo")
            self.assertEqual((record["remote"]["host"], record["remote"]["port"]),
                             ("203.0.113.7", 40001))
            self.assertEqual(record["proxy"], {"host": PROXY, "port": proxyPort})
            self.assertEqual(record["bytes_in"], 5)
            self.assertEqual(self.server.registry.accepted[("echo", "tcp")], 1)

        return deferToThread(client).addCallback(check)

    def test_v2LocalIsTheProxy(self):
        """
        A v2 LOCAL header (a health check) is served as the proxy itself: C{remote} is
        the proxy's endpoint, and there is no C{proxy} field.
        """
        self.echo()
        port = self.port()

        def client():
            s = connect(port)
            s.sendall(v2(local=True) + b"ping")
            return s, readExactly(s, 4), s.getsockname()[1]

        def check(result):
            s, got, proxyPort = result
            self.addCleanup(s.close)
            self.assertEqual(got, b"ping")
            [record] = self.server.registry.query("echo")
            self.assertEqual((record["remote"]["host"], record["remote"]["port"]),
                             (PROXY, proxyPort))
            self.assertNotIn("proxy", record)

        return deferToThread(client).addCallback(check)

    def test_untrustedPeerRefused(self):
        """
        A peer outside C{from} is closed without being read, even with a valid header:
        refused "proxy-untrusted", logged; no connection is recorded.
        """
        self.echo()
        port = self.port()

        def client():
            s = connect(port, source="127.0.0.3")
            try:
                s.sendall(v1() + b"hello")
            except OSError:
                pass
            with s:
                return readAll(s)

        def check(got):
            self.assertEqual(got, b"")
            registry = self.server.registry
            self.assertEqual(registry.refused[("echo", PROXY_UNTRUSTED)], 1)
            self.assertEqual(registry.accepted[("echo", "tcp")], 0)
            [event] = [e for e in self.events if e.get("reason") == PROXY_UNTRUSTED]
            self.assertTrue(event["peer"].startswith("127.0.0.3:"))

        return deferToThread(client).addCallback(check)

    def test_badAndLateHeaders(self):
        """
        A connection that begins with something else than a header, and one whose
        header is not complete within C{timeout}, are closed by the server: refused
        "proxy-error", never recorded.
        """
        self.echo("{from: [127.0.0.2], timeout: 0.2}")
        port = self.port()

        def client():
            results = []
            for data in [b"GET / HTTP/1.0\r\n\r\n", v1()[:20]]:
                with connect(port) as s:
                    s.sendall(data)
                    results.append(readAll(s))
            return results

        def check(results):
            self.assertEqual(results, [b"", b""])
            registry = self.server.registry
            self.assertEqual(registry.refused[("echo", PROXY_ERROR)], 2)
            self.assertEqual(registry.accepted[("echo", "tcp")], 0)
            whys = [e["why"] for e in self.events if e.get("reason") == PROXY_ERROR]
            self.assertIn("no PROXY protocol header", whys[0])

        return deferToThread(client).addCallback(check)

    def test_rulesAndLimitsForTheClient(self):
        """
        Access rules and per-source limits apply to the client the header names, not
        to the proxy: a second connection of one client is refused "max-per-source"
        while another client through the same proxy is served, and a denied client is
        refused "denied".
        """
        self.echo(limits="    limits: {max_per_source: 1}\n",
                  access="    access: {deny: [198.51.100.0/24]}\n")
        port = self.port()

        def client():
            held, answers = [], []
            try:
                for source in ["203.0.113.7", "203.0.113.7", "198.51.100.9",
                               "203.0.113.8"]:
                    s = connect(port)
                    held.append(s)
                    s.sendall(v2(source) + b"x")
                    answers.append(readExactly(s, 1))
                return answers
            finally:
                for s in held:
                    s.close()

        def check(answers):
            self.assertEqual(answers, [b"x", b"", b"", b"x"])
            registry = self.server.registry
            self.assertEqual(registry.refused[("echo", "max-per-source")], 1)
            self.assertEqual(registry.refused[("echo", "denied")], 1)
            self.assertEqual(registry.accepted[("echo", "tcp")], 2)

        return deferToThread(client).addCallback(check)

    def execService(self, interface="127.0.0.1", proxies="127.0.0.2"):
        return self.serve(
            "  - name: env\n    protocol: exec\n    port: @PORT@\n"
            f"    interface: '{interface}'\n"
            f"    proxy_protocol: {{from: ['{proxies}']}}\n"
            "    options:\n      argv: [/bin/sh, -c, 'echo $PROTO $TCPREMOTEIP "
            "$TCPREMOTEPORT ${TCP6REMOTEIP:-none} ${TCP6REMOTEPORT:-none}']\n")

    def runExec(self, header, source=PROXY, host="127.0.0.1"):
        port = self.port("env")

        def client():
            with connect(port, source, host) as s:
                s.sendall(header)
                return readAll(s)
        return deferToThread(client)

    def test_execEnvironment(self):
        """
        exec's program gets the client as C{TCPREMOTEIP}/C{TCPREMOTEPORT}.
        """
        self.execService()
        return self.runExec(v1()).addCallback(
            self.assertEqual, b"TCP 203.0.113.7 40001 none none\n")

    def test_execEnvironmentIPv6Client(self):
        """
        An IPv6 client in a v2 header, to a listener on IPv4: C{PROTO=TCP6} and the
        C{TCP6*} names (and the C{TCP*} ones) give the client.
        """
        self.execService()
        return self.runExec(v2("2001:db8::5", 40002, "2001:db8::1")).addCallback(
            self.assertEqual, b"TCP6 2001:db8::5 40002 2001:db8::5 40002\n")

    def test_execEnvironmentIPv4ClientOnIPv6(self):
        """
        An IPv4 client in a v1 header from a proxy on C{::1}, to a listener on C{::1}:
        the program sees an IPv4 client (C{PROTO=TCP}).
        """
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback here")
        self.serve(
            "  - name: env\n    protocol: exec\n    port: @PORT@\n    interface: '::1'\n"
            "    proxy_protocol: {from: ['::1']}\n"
            "    options:\n      argv: [/bin/sh, -c, 'echo $PROTO $TCPREMOTEIP "
            "$TCPREMOTEPORT ${TCP6REMOTEIP:-none}']\n")
        return self.runExec(v1(), source="::1", host="::1").addCallback(
            self.assertEqual, b"TCP 203.0.113.7 40001 none\n")

    def test_httpAccessLog(self):
        """
        http's access log names the client.
        """
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("hi")
        self.serve("  - name: web\n    protocol: http\n    port: @PORT@\n"
                   "    interface: 127.0.0.1\n    proxy_protocol: {from: [127.0.0.2]}\n"
                   f"    options: {{root: '{root}'}}\n")
        port = self.port("web")

        def client():
            with connect(port) as s:
                s.sendall(v2() + b"GET / HTTP/1.0\r\n\r\n")
                return readAll(s)

        def check(answer):
            self.assertTrue(answer.startswith(b"HTTP/1.0 200"), answer)
            [event] = [e for e in self.events if "access_line" in e]
            self.assertEqual((event["client_ip"], event["client_port"]),
                             ("203.0.113.7", 40001))

        return deferToThread(client).addCallback(check)

    def test_smtpReceived(self):
        """
        smtp's Received header, and its delivery log line, name the client.
        """
        maildir = os.path.abspath(self.mktemp())
        self.serve("  - name: mail\n    protocol: smtp\n    port: @PORT@\n"
                   "    interface: 127.0.0.1\n    proxy_protocol: {from: [127.0.0.2]}\n"
                   f"    options: {{domains: [example.com], maildir: '{maildir}',"
                   " hostname: mx.test}\n")
        port = self.port("mail")

        class ThroughProxy(smtplib.SMTP):
            def _get_socket(self, host, port, timeout):
                s = connect(port)
                s.sendall(v1("198.51.100.20", 2525))
                return s

        def client():
            with ThroughProxy("127.0.0.1", port, local_hostname="client.test") as smtp:
                smtp.sendmail("a@elsewhere.test", ["bob@example.com"], "Subject: hi\r\n\r\nhi\r\n")
            [path] = glob.glob(os.path.join(maildir, "example.com", "bob", "new", "*"))
            with open(path, "rb") as f:
                return f.read()

        def check(message):
            self.assertIn(b"Received: from client.test ([198.51.100.20])\n\t(port 2525)",
                          message)
            [event] = [e for e in self.events if "recipients" in e]
            self.assertEqual(event["client"], "198.51.100.20:2525")

        return deferToThread(client).addCallback(check)

    def test_reloadAppliesIt(self):
        """
        A reload that adds C{proxy_protocol} to a service makes its new connections
        read the header (the old factory's keep theirs); one that removes it serves
        the peer as it connects.
        """
        plain = ("services:\n  - name: echo\n    protocol: echo\n    port: @PORT@\n"
                 "    interface: 127.0.0.1\n")
        self.serve(plain[len("services:\n"):])
        text = self.text

        def plan(body):
            return loadPlan("proxy.yaml", discover().providers,
                            rule=PrivilegeRule(1024, "test"), dualStack=True, text=body)

        withProxy = text + "    proxy_protocol: {from: [127.0.0.2]}\n"
        port = self.port()

        def exchange(data, size):
            s = connect(port)
            s.sendall(data)
            return s, readExactly(s, size)

        def proxied(report):
            self.assertEqual(report.changed, (f"echo/tcp 127.0.0.1:{port}",))
            return deferToThread(exchange, v1() + b"hi", 2)

        def check(result):
            s, got = result
            self.addCleanup(s.close)
            self.assertEqual(got, b"hi")
            [record] = self.server.registry.select("echo")
            self.assertEqual(record.remote.host, "203.0.113.7")
            return self.server.reload(plan(text))

        def plainAgain(report):
            return deferToThread(exchange, b"PROXY", 5)

        def checkPlain(result):
            s, got = result
            s.close()
            self.assertEqual(got, b"PROXY")

        d = self.server.reload(plan(withProxy))
        d.addCallback(proxied)
        d.addCallback(check)
        d.addCallback(plainAgain)
        d.addCallback(checkPlain)
        return d


class Client(Protocol):
    """
    A test client: keeps what it receives; C{lost} fires when the connection ends.
    """

    def __init__(self):
        self.received = b""
        self.lost = Deferred()
        self.arrived = None

    def dataReceived(self, data):
        self.received += data
        if self.arrived is not None:
            arrived, self.arrived = self.arrived, None
            arrived.callback(self.received)

    def nextData(self):
        self.arrived = Deferred()
        return self.arrived.addTimeout(DEADLINE, reactor)

    def connectionLost(self, reason):
        self.lost.callback(None)


class ProxiedMemoryTests(TestCase):
    """
    Connections through the PROXY protocol form no reference cycle.
    """

    timeout = 60

    @inlineCallbacks
    def test_freedWithoutCycleCollector(self):
        """
        With the cycle collector disabled, once 20 connections served through a header
        and 10 refused for a bad one have closed, every header reader and plugin
        protocol built for them is gone.
        """
        built = []

        provider = watchedEcho(built)
        service = attrs.evolve(
            spec("weak", port=0, providers={"weak": provider}),
            proxyProtocol=ProxyProtocol((ipaddress.ip_network(PROXY),)))
        server = PortServer(makePlan(service), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        headers = server.listeners[0].served.proxyHeaders
        readers = []
        original = headers.reader

        def reader(peer):
            made = original(peer)
            readers.append(weakref.ref(made))
            return made
        headers.reader = reader
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        port = server.addressOf("weak").port
        for i in range(30):
            client = Client()
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                                     bindAddress=(PROXY, 0)), client)
            if i % 3 == 2:
                client.transport.write(b"garbage")
            else:
                client.transport.write(v1(port=1000 + i) + b"z")
                self.assertEqual((yield client.nextData()), b"z")
                client.transport.loseConnection()
            yield client.lost
        end = reactor.seconds() + DEADLINE
        while len(server.registry) and reactor.seconds() < end:
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(server.registry), 0)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual((len(readers), len(built)), (30, 20))
        self.assertEqual(server.registry.refused[("weak", PROXY_ERROR)], 10)
        alive = [ref for ref in readers + built if ref() is not None]
        self.assertEqual(alive, [], f"{len(alive)} readers or protocols still alive")
