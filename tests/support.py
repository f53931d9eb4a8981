"""
Helpers shared by portserver's tests.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from http.server import ThreadingHTTPServer

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock

from portserver.config import ServerConfig, ServiceSpec
from portserver.plan import Plan, planListeners
from portserver.ports import PrivilegeRule
from portserver.protocols import classic

PROVIDERS = {p.name: p for p in classic.ALL}


class Discovery:
    """
    What L{portserver.plugins.discover} returns, with the classic protocols only.
    """

    providers = PROVIDERS

RULE = PrivilegeRule(1024, "test")


class RecordingPort:
    """
    A listening port that records whether it was stopped.
    """

    def __init__(self, address):
        self.address = address
        self.stopped = False

    def stopListening(self):
        self.stopped = True

    def getHost(self):
        return self.address


class PortReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that also listens for UDP, remembers the ports it returned, and
    refuses the (transport, port) pairs in C{refuse} with the given errno.
    """

    def __init__(self, refuse=None):
        super().__init__()
        self.refuse = dict(refuse or {})
        self.udpServers = []
        self.ports = []

    def _listen(self, transport, port, interface):
        code = self.refuse.get((transport, port))
        if code is not None:
            raise CannotListenError(interface, port, OSError(code, os.strerror(code)))
        kind = "TCP" if transport == "tcp" else "UDP"
        address = (IPv6Address if ":" in interface else IPv4Address)(kind, interface, port)
        recorded = RecordingPort(address)
        self.ports.append(recorded)
        return recorded

    def listenTCP(self, port, factory, backlog=50, interface=""):
        result = self._listen("tcp", port, interface)
        result.factory = factory  # as tcp.Port has it (a reload swaps it)
        self.tcpServers.append((port, factory, backlog, interface))
        return result

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        result = self._listen("udp", port, interface)
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        return result


def spec(name, protocol=None, port=None, interface="127.0.0.1", transports=("tcp",),
         options=None, providers=PROVIDERS):
    """
    A L{ServiceSpec} for tests, options validated by the provider.
    """
    provider = providers[protocol or name]
    return ServiceSpec(
        name=name, protocol=provider.name,
        port=provider.wellKnownPort if port is None else port,
        interface=interface, transports=tuple(transports),
        options=provider.validateOptions(options or {}), provider=provider)


def makePlan(*specs, portOffset=0, rule=RULE) -> Plan:
    """
    A L{Plan} of C{specs} (port 0 means: any free port), refusing conflicts.
    """
    listeners, problems = planListeners(specs, portOffset, rule, dualStack=True)
    assert not problems, problems
    return Plan(ServerConfig("<test>", tuple(specs)), tuple(listeners), portOffset, rule)


def freePort(transport="tcp", host="127.0.0.1") -> int:
    """
    A port the OS just had free on C{host} (for subprocess tests that need a number).
    """
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def readExactly(s: socket.socket, size: int) -> bytes:
    """
    C{size} bytes from the blocking socket C{s}, or fewer if the peer closes first.
    """
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def watchedEcho(built: list):
    """
    A provider, C{weak}, of an echo service whose every protocol built is added to
    C{built} as a weak reference (to check that closed connections are freed).
    """
    from twisted.internet.protocol import Factory
    from twisted.protocols import wire

    from portserver.provider import PortProtocol

    def factory(service, reactor):
        f = Factory.forProtocol(wire.Echo)
        original = f.buildProtocol

        def buildProtocol(addr):
            protocol = original(addr)
            built.append(weakref.ref(protocol))
            return protocol
        f.buildProtocol = buildProtocol
        return f

    return PortProtocol("weak", "Echo, watched", 4000, factory=factory)


def serveHTTP(testCase, handler) -> str:
    """
    Serve HTTP with C{handler} (a L{BaseHTTPRequestHandler} subclass) on 127.0.0.1 in a
    thread, stopped at C{testCase}'s cleanup; return the server's URL.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join()

    testCase.addCleanup(stop)
    return f"http://127.0.0.1:{server.server_address[1]}"


def getOK(testCase, port: int, path: str, deadline: float = 15.0):
    """
    C{GET http://127.0.0.1:PORT/PATH} with Twisted's own client on the running
    reactor: a L{Deferred} that fires with the body, once C{testCase} has checked that
    the answer is 200.
    """
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody

    url = f"http://127.0.0.1:{port}{path}".encode("ascii")

    def read(response):
        def check(body):
            testCase.assertEqual(response.code, 200, body)
            return body
        return readBody(response).addTimeout(deadline, reactor).addCallback(check)

    return Agent(reactor).request(b"GET", url).addTimeout(deadline, reactor).addCallback(
        read)
