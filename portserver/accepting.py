"""
The accepting port: how a portserver TCP listener accepts connections.

Every TCP listener asks for the longest accept queue the kernel allows (L{BACKLOG}),
survives running out of file descriptors (L{AcceptingPort}, refusing with
L{NO_DESCRIPTORS}), and gives its connections a transport class of its own
(L{ownTransportClass}). L{listenTCP} binds one such listener; L{adoptTCP} serves an
inherited one (socket activation).
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger

from portserver import dispatch
from portserver.dispatch import Lean, leanDispatch
from portserver.transport import TrackedServer, TrackedTransport

log = Logger()

# The accept queue of every TCP listener. Twisted's default of 50 overflows under a burst
# of connections, and an overflowing queue drops SYNs, which clients retry only after a
# second; like systemd's Backlog= and nginx, ask for the most the kernel allows (it caps
# this at net.core.somaxconn).
BACKLOG = socket.SOMAXCONN


#: The transport classes made by L{ownTransportClass}: one per Twisted transport class
#: and kind of connection.
_transportClasses: dict = {}


def ownTransportClass(port) -> None:
    """
    Give a listening C{twisted.internet.tcp.Port} a subclass of its transport class for
    its kind of connection (its plugin protocol's name; else its factory's class),
    before it accepts anything: every listener of one protocol shares it.

    CPython shares one table of attribute names among the instance dicts of a class, as
    long as it holds every name they set (at most 30). Connections of different
    protocols (echo, an HTTP status request, ...) set different attributes, and once
    the shared table no longer fits, every later connection's dict is a full one: about
    0.7 KiB more per connection in a server holding three kinds (see bench/README.md).
    A class per kind keeps each kind's connections alike. One class per I{listener}
    would too, but CPython's specializing interpreter caches each attribute access of
    the transport's code for one class at a time: 50 echo services with a class each
    made every access a miss, and cost a third of the connection rate.

    The class is portserver's transport (L{TrackedTransport}): the connection's
    tracker (record, limits, flow control, fault isolation), with writes that go
    straight to the socket when nothing is buffered (no epoll round trip for a reply
    sent in one go).
    """
    transport = getattr(port, "transport", None)
    if not isinstance(transport, type):
        return
    factory = getattr(port, "factory", None)
    key = (transport, getattr(factory, "protocolName", None) or type(factory))
    own = _transportClasses.get(key)
    if own is None:
        mixin = TrackedServer if transport is tcp.Server else TrackedTransport
        own = _transportClasses[key] = type(transport.__name__, (mixin, transport), {
            "__module__": transport.__module__, "__doc__": transport.__doc__})
    port.transport = own


#: C{TCP_INFO} (Linux): for a listening socket, C{tcpi_unacked} (a 32-bit field at byte
#: 24) is the number of connections waiting in its accept queue.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_UNACKED = struct.Struct("=I")
#: The most connections a listener accepts in one wake-up (the reactor's other work waits
#: meanwhile; the rest are accepted at the next).
MAX_ACCEPTS = 512
#: Up to how many connections per wake-up a listener asks the kernel how many are queued.
SMALL_BATCH = 2

# Refusals for lack of file descriptors (EMFILE: this process; ENFILE: the whole system).
NO_DESCRIPTORS = "no-descriptors"
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _Reserve:
    """
    One spare file descriptor (C{/dev/null}), shared by every listener: out of
    descriptors, a listener closes it, accepts and closes what waits in its queue (so
    those clients see a prompt close rather than a hang), and opens it again.
    """

    fd: int | None = None

    def reserve(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # still exhausted: try again next time

    def release(self) -> bool:
        fd, self.fd = self.fd, None
        if fd is None:
            return False
        os.close(fd)
        return True


_reserve = _Reserve()


_newObject = object.__new__


class AcceptingPort(Lean, tcp.Port):
    """
    A TCP listening port that survives running out of file descriptors, and whose
    events, and its connections', the reactor dispatches without Twisted's legacy log
    context (L{portserver.dispatch}).

    Twisted's C{Port.doRead} logs a failed C{accept} (EMFILE, ENFILE, ...) and returns;
    the connection stays queued, so the (level-triggered) reactor calls it again at once:
    a busy loop, logging each time. Here the listener sheds the queue (through the
    spare descriptor), stops reading, and tries again after a back-off of C{MIN_PAUSE}
    doubling to C{MAX_PAUSE} seconds; it logs at most once a second, with counts.

    @ivar refused: called with the number of queued connections closed unserved.
    """

    MIN_PAUSE = 0.1
    MAX_PAUSE = 1.0
    LOG_INTERVAL = 1.0

    refused = staticmethod(lambda count: None)
    description = ""
    _pause = 0.0
    _resume = None
    _lastLog = None
    _failures = 0  # accepts failed since the last log line
    _shed = 0  # connections closed unserved since the last log line
    _lean = False  # the reactor has portserver's dispatch (and counts its wake-ups)
    _fullAt = -2  # the last wake-up that accepted as many as it could (dispatch.wakes)

    def startListening(self):
        self._lean = leanDispatch(self.reactor)
        super().startListening()
        _reserve.reserve()

    def queued(self) -> int | None:
        """
        How many connections wait in this listener's accept queue, as the kernel says
        (C{TCP_INFO}'s C{tcpi_unacked}, for a listening socket), or L{None} when it
        cannot say (not Linux).
        """
        try:
            return _UNACKED.unpack_from(
                self.socket.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 28), 24)[0]
        except (OSError, AttributeError, TypeError, struct.error):
            return None

    def doRead(self):
        # As tcp.Port.doRead (accept up to numberAccepts, scaled to traffic), with
        # descriptor exhaustion handled by _exhausted. When the last wake-ups found few
        # connections (a listener among many, each with few clients), Twisted's count
        # ends every other wake-up with an accept that fails (EAGAIN): a system call and
        # an exception for nothing. Under portserver's dispatch, the count then grows
        # only when wake-ups in a row accepted all they could (the reactor is level-
        # triggered: a listener with more queued is ready again at the next wake-up);
        # on another reactor, the kernel is asked how many are queued (L{queued}), and
        # that many are accepted.
        accepted = 0
        accept, family = self.socket._accept, self.addressFamily
        queued = None
        limit = self.numberAccepts
        if (not self._lean and _TCP_INFO is not None and limit <= SMALL_BATCH
                and (queued := self.queued()) is not None):
            limit = min(max(queued, 1), MAX_ACCEPTS)
        try:
            for _ in range(limit):
                try:
                    # The bare C socket (48 bytes, untracked by the GC), where
                    # socket.accept wraps it in a socket.socket (104 bytes with its GC
                    # header); a transport needs nothing the wrapper adds.
                    fd, addr = accept()
                    skt = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        if self._pause:
                            # Linux allocates the descriptor before it looks at the
                            # queue: an empty queue means descriptors are free again.
                            self._recovered()
                        break
                    if e.errno in (errno.EPERM, errno.ECONNABORTED):
                        continue  # netfilter refused it, or the client gave up
                    if e.errno in _EXHAUSTED:
                        self._exhausted(e.errno)
                        return
                    raise
                accepted += 1
                if self._pause:
                    self._recovered()
                if len(addr) == 4:  # IPv6: keep the scope id
                    host = socket.getnameinfo(
                        addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                    addr = (host[0], *addr[1:])
                self._accepted(skt, addr)
        except BaseException:
            log.failure("Accepting on {port} failed", port=self.description)
        if accepted < limit or queued is not None:
            self.numberAccepts = max(1, accepted)
        elif not self._lean:
            self.numberAccepts = limit + 20
        else:
            wake = dispatch.wakes
            if self._fullAt == wake - 1:
                self.numberAccepts = min(limit + 20, MAX_ACCEPTS)
            self._fullAt = wake

    def _buildAddr(self, address):
        if self._addressType is not IPv4Address:
            return super()._buildAddr(address)
        # IPv4Address("TCP", host, port) without attrs' generated __init__ and its
        # validator of the type (two calls a connection, for a constant).
        built = _newObject(IPv4Address)
        built.type = "TCP"
        built.host, built.port = address
        return built

    def _accepted(self, skt, addr) -> None:
        """
        Serve the connection just accepted from C{addr} on C{skt}. Under a
        L{TrackingFactory}, the plugin's protocol is given portserver's transport
        (L{portserver.transport.TrackedTransport}) directly, tracked from before its
        C{makeConnection}; any other factory's protocol gets the transport as from
        Twisted's own port.
        """
        factory = self.factory
        buildPlugin = getattr(factory, "buildPlugin", None)
        tracked = False
        if buildPlugin is None:
            protocol = factory.buildProtocol(self._buildAddr(addr))
        elif factory.proxyHeaders is not None:
            self._acceptedFromProxy(skt, addr, factory.proxyHeaders)
            return
        else:
            protocol, tracked, _, admitted = buildPlugin(self._buildAddr(addr))
            if protocol is not None and not tracked:
                factory.live.add(protocol)  # a refusal sending its banner
        if protocol is None:
            skt.close()
            return
        s = self.sessionno
        self.sessionno = s + 1
        transport = self.transport(skt, protocol, addr, self, s, self.reactor)
        if not tracked:
            protocol.makeConnection(transport)
            return
        transport.startTracking(factory, admitted)
        try:
            protocol.makeConnection(transport)
        except Exception:
            transport._pluginFailed("connectionMade")

    def _acceptedFromProxy(self, skt, addr, proxyHeaders) -> None:
        """
        Serve a connection to a service behind a proxy (L{portserver.proxyheader}):
        refuse a peer that is not one of its proxies before anything else; give a
        proxy's connection a header reader, which builds the plugin's protocol for the
        client the header names.
        """
        reader = proxyHeaders.reader(addr)
        if reader is None:
            skt.close()
            return
        s = self.sessionno
        self.sessionno = s + 1
        reader.makeConnection(self.transport(skt, reader, addr, self, s, self.reactor))

    def _exhausted(self, code: int) -> None:
        shed = 0
        if _reserve.release():
            try:
                for _ in range(1000):  # bounded: a flood cannot hold the reactor here
                    try:
                        skt, _ = self.socket.accept()
                    except OSError:
                        break  # the queue is empty (or another thread took the slot)
                    skt.close()
                    shed += 1
            finally:
                _reserve.reserve()
        if shed:
            self.refused(shed)
        self._failures += 1
        self._shed += shed
        self._pause = min(max(self._pause * 2, self.MIN_PAUSE), self.MAX_PAUSE)
        now = self.reactor.seconds()
        if self._lastLog is None or now - self._lastLog >= self.LOG_INTERVAL:
            log.warn("Out of file descriptors ({error}) on {port}: {failures} failed "
                     "accept(s), {shed} queued connection(s) closed unserved since the last "
                     "report; accepting again in {pause:.1f}s",
                     error=errno.errorcode.get(code, code), port=self.description,
                     failures=self._failures, shed=self._shed, pause=self._pause)
            self._lastLog, self._failures, self._shed = now, 0, 0
        self.stopReading()
        self._resume = self.reactor.callLater(self._pause, self._resumeReading)

    def _resumeReading(self) -> None:
        self._resume = None
        if self.connected and not self.disconnecting:
            self.startReading()

    def _recovered(self) -> None:
        log.info("Descriptors available again on {port}: accepting ({failures} failed "
                 "accept(s), {shed} connection(s) closed unserved since the last report)",
                 port=self.description, failures=self._failures, shed=self._shed)
        self._pause, self._lastLog, self._failures, self._shed = 0.0, None, 0, 0

    def connectionLost(self, reason):
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().connectionLost(reason)


def _stockListenTCP(reactor) -> bool:
    """
    Whether C{reactor.listenTCP} is Twisted's posix one (C{tcp.Port(...).startListening()}),
    which L{AcceptingPort} can stand in for; not a test's memory reactor.
    """
    return (isinstance(reactor, PosixReactorBase)
            and type(reactor).listenTCP is PosixReactorBase.listenTCP)


def listenTCP(reactor, port: int, factory, interface: str, description: str,
              refused) -> tcp.Port:
    """
    Listen on TCP C{port} of C{interface} with C{factory}, with a queue of L{BACKLOG}
    and a transport class of the port's own (L{ownTransportClass}); on Twisted's posix
    reactors, through an L{AcceptingPort} described (in its log lines) by
    C{description}, which calls C{refused} with the number of queued connections it
    closes unserved for lack of descriptors.

    @return: the listening port.
    @raise CannotListenError: when the OS refuses.
    """
    if _stockListenTCP(reactor):
        listening = AcceptingPort(port, factory, BACKLOG, interface, reactor)
        listening.description = description
        listening.refused = refused
        listening.startListening()
    else:
        listening = reactor.listenTCP(port, factory, backlog=BACKLOG, interface=interface)
    ownTransportClass(listening)
    return listening


def adoptTCP(reactor, fd: int, family: int, factory, description: str,
             refused) -> tcp.Port:
    """
    Serve the listening TCP socket C{fd} (inherited: socket activation) with
    C{factory}, as L{listenTCP} serves the one it binds: a transport class of the
    port's own (L{ownTransportClass}) and, on Twisted's posix reactors, an
    L{AcceptingPort} (C{description}, C{refused} as for L{listenTCP}); elsewhere
    through C{reactor.adoptStreamPort}. Its queue is left as the socket's owner set it.

    The socket must be non-blocking. The port serves a duplicate of C{fd}, and closes
    only that when it stops (without shutting the socket down): C{fd} stays open.

    @return: the listening port.
    """
    if _stockListenTCP(reactor):
        # As Twisted's adoptStreamPort (tcp.Port._fromListeningDescriptor), as an
        # AcceptingPort.
        listening = AcceptingPort._fromListeningDescriptor(reactor, fd, family, factory)
        listening.description = description
        listening.refused = refused
        listening.startListening()
    else:
        listening = reactor.adoptStreamPort(fd, family, factory)
    ownTransportClass(listening)
    return listening
