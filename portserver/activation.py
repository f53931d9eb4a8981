"""
Socket activation: the listening sockets systemd (or C{systemd-socket-activate}) binds
and hands over, which listener serves each, and serving one.

systemd passes them as descriptors 3, 4, ... (C{LISTEN_FDS}, for the process
C{LISTEN_PID}), each named by its C{.socket} unit's C{FileDescriptorName=}
(C{LISTEN_FDNAMES}). A service serves the sockets named as it is instead of binding:
the C{SOCK_STREAM} one for its tcp transport, the C{SOCK_DGRAM} one for udp (so a
service with both has two sockets of one name, told apart by C{SO_TYPE}). Each must be
what the config says (the family and address of C{interface}, C{port}, the transport);
one that is not, or that neither a service nor the status service's C{systemd:}
endpoint claims, stops start-up with an error naming the service and the descriptor.

The inherited descriptors are never closed: a listener serves a duplicate, and closes
only that (without shutting the socket down), so a listener a reload removes leaves
its socket open, to be served again by a later reload, as systemd keeps it open across
restarts.

Twisted reads C{LISTEN_*} once, when C{twisted.internet.endpoints} is first imported
(for its C{systemd:} endpoint), and removes C{LISTEN_PID} and C{LISTEN_FDS} from the
environment so that no one takes the same descriptors twice. A portserver process has
always imported it before its config is loaded (the config's endpoints are checked with
it; the C{forward} protocol uses it), so L{Activation.fromEnvironment} takes the
process's descriptors from that reading, which is what the status service's
C{systemd:} endpoint serves too.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Callable, Iterable, Mapping

import attrs
from twisted.internet.posixbase import PosixReactorBase
from twisted.python.systemd import ListenFDs

from portserver.accepting import adoptTCP
from portserver.config import ConfigProblem
from portserver.plan import Listener, Plan
from portserver.registry import hostPort
from portserver.udp import MAX_DATAGRAM, DatagramPort, PacketInfoPort, pktinfoSupported

#: The transport a service serves on a socket of each type (C{SO_TYPE}).
TRANSPORTS = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}
#: The families a service serves, as people name them.
FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
#: The C{.socket} unit setting that makes a socket of each transport.
DIRECTIVES = {"tcp": "ListenStream", "udp": "ListenDatagram"}


@attrs.frozen
class InheritedSocket:
    """
    One descriptor passed by socket activation, as the kernel describes it.

    @ivar name: its name (C{FileDescriptorName=}); C{fd}: the descriptor.
    @ivar family: C{AF_INET}, C{AF_INET6}, ...; C{kind}: C{SO_TYPE} (C{SOCK_STREAM},
        C{SOCK_DGRAM}, ...); L{None} when it could not be read.
    @ivar host, port: the address it is bound to (C{host} alone, a path, for
        C{AF_UNIX}).
    @ivar listening: whether it is a listening stream socket (C{SO_ACCEPTCONN}).
    @ivar error: why it could not be described (not a socket, closed), or L{None}.
    """

    name: str
    fd: int
    family: int | None = None
    kind: int | None = None
    host: str | None = None
    port: int | None = None
    listening: bool = False
    error: str | None = None

    @classmethod
    def inspect(cls, name: str, fd: int) -> InheritedSocket:
        """
        Describe descriptor C{fd}, named C{name}, by asking the kernel (through a
        duplicate, closed at once: C{fd} is left as it is).
        """
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                family = s.family
                kind = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
                address = s.getsockname()
                listening = bool(kind == socket.SOCK_STREAM and s.getsockopt(
                    socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError as e:
            return cls(name, fd, error=e.strerror or str(e))
        if family in FAMILIES:
            host, port = address[0], address[1]
        else:
            host = address.decode(errors="replace") if isinstance(address, bytes) \
                else str(address)
            port = None
        return cls(name, fd, int(family), int(kind), host, port, listening)

    @property
    def transport(self) -> str | None:
        """
        C{"tcp"} or C{"udp"}: the transport this socket can serve; L{None} for a socket
        of another family or type.
        """
        return TRANSPORTS.get(self.kind) if self.family in FAMILIES else None

    def describe(self) -> str:
        """
        C{fd 3 'echo' (tcp 127.0.0.1:7)}: the descriptor, its name and what it is.
        """
        head = f"fd {self.fd} {self.name!r}"
        if self.error is not None:
            return head
        if self.family in FAMILIES:
            host = f"[{self.host}]" if ":" in (self.host or "") else self.host
            kind = self.transport or _kindName(self.kind)
            return f"{head} ({kind} {host}:{self.port})"
        where = f" {self.host}" if self.host else ""
        return f"{head} ({_familyName(self.family)} {_kindName(self.kind)}{where})"

    def unusable(self) -> str | None:
        """
        Why no service can serve this socket (it could not be described, or is not a
        TCP or UDP socket over IPv4 or IPv6), or L{None}.
        """
        what = self.describe()
        if self.error is not None:
            return f"inherited socket {what} cannot be served: {self.error}"
        if self.family not in FAMILIES:
            return (f"inherited socket {what} is not an IPv4 or IPv6 socket: a service "
                    "serves TCP or UDP over IP only")
        if self.transport is None:
            return (f"inherited socket {what} is a {_kindName(self.kind)} socket: a "
                    "service serves SOCK_STREAM (tcp) or SOCK_DGRAM (udp) sockets only")
        return None

    def mismatch(self, listener: Listener) -> tuple[str, str] | None:
        """
        Why this socket cannot serve C{listener} (L{unusable}, or its family, address
        or port is not the config's, or a TCP socket is not listening), as the config
        key it concerns and the message; L{None} when it can.
        """
        unusable = self.unusable()
        if unusable is not None:
            return "name", unusable
        what = self.describe()
        wanted = ipaddress.ip_address(listener.interface)
        family = FAMILIES[self.family]
        setting = (f"{DIRECTIVES[listener.transport]}="
                   f"{hostPort(listener.interface, listener.port)}")
        if f"IPv{wanted.version}" != family:
            return "interface", (
                f"inherited socket {what} is {family}, but the service's interface "
                f"{listener.interface} is IPv{wanted.version}: set {setting} in its "
                ".socket unit, or the interface to the socket's address")
        if ipaddress.ip_address(self.host.split("%")[0]) != wanted:
            return "interface", (
                f"inherited socket {what} is bound to {self.host}, but the service's "
                f"interface is {listener.interface}: set {setting} in its .socket "
                "unit, or the interface to the socket's address")
        if listener.port not in (0, self.port):
            offset = (f" ({listener.configuredPort} with --port-offset)"
                      if listener.configuredPort != listener.port else "")
            return "port", (
                f"inherited socket {what} is bound to port {self.port}, but the "
                f"service's port is {listener.port}{offset}: set {setting} in its "
                ".socket unit, or the port to the socket's")
        if listener.transport == "tcp" and not self.listening:
            return "name", (
                f"inherited socket {what} is not listening (a connection, as "
                "Accept=yes passes?): use Accept=no in its .socket unit")
        return None


def _kindName(kind: int | None) -> str:
    try:
        return socket.SocketKind(kind).name
    except (ValueError, TypeError):
        return f"type {kind}"


def _familyName(family: int | None) -> str:
    try:
        return socket.AddressFamily(family).name
    except (ValueError, TypeError):
        return f"family {family}"


def processListenFDs() -> ListenFDs:
    """
    The descriptors this process inherited, as Twisted's C{systemd:} endpoint read them
    when C{twisted.internet.endpoints} was imported (see the module's docstring for
    why not from the environment again): that reading is a class attribute of its
    parser, not a public API, so a Twisted without it is read as Twisted would.
    """
    from twisted.internet import endpoints

    parser = getattr(endpoints, "_SystemdParser", None)
    found = getattr(parser, "_sddaemon", None)
    return found if isinstance(found, ListenFDs) else ListenFDs.fromEnvironment()


def namedDescriptors(listenFDs: ListenFDs, environ: Mapping[str, str]
                     ) -> list[tuple[str, int]]:
    """
    C{(name, fd)} for every descriptor of C{listenFDs}, in order. Names come from
    C{environ}'s C{LISTEN_FDNAMES} (which Twisted leaves in place): two sockets may
    have one name, which C{inheritedNamedDescriptors} would keep only one of.
    """
    descriptors = listenFDs.inheritedDescriptors()
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != len(descriptors):
        byDescriptor = {fd: name for name, fd in
                        listenFDs.inheritedNamedDescriptors().items()}
        names = [byDescriptor.get(fd, "") for fd in descriptors]
    return list(zip(names, descriptors))


def statusClaims(listen: str | None, sockets: tuple[InheritedSocket, ...]) -> set[int]:
    """
    The positions in C{sockets} of those the status service's endpoint C{listen}
    serves: a C{systemd:} endpoint's C{name=} (every socket of that name) or
    C{index=}.
    """
    if not listen or listen.split(":", 1)[0].lower() != "systemd":
        return set()
    arguments = dict(a.split("=", 1) for a in listen.split(":")[1:] if "=" in a)
    if "name" in arguments:
        return {i for i, s in enumerate(sockets) if s.name == arguments["name"]}
    try:
        index = int(arguments.get("index", ""))
    except ValueError:
        return set()
    return {index} if 0 <= index < len(sockets) else set()


@attrs.frozen
class Activation:
    """
    The sockets passed by socket activation (none when not started that way).
    """

    sockets: tuple[InheritedSocket, ...] = ()

    @classmethod
    def fromEnvironment(cls, environ: Mapping[str, str] | None = None,
                        start: int | None = None,
                        inspect: Callable[[str, int], InheritedSocket]
                        = InheritedSocket.inspect) -> Activation:
        """
        The sockets C{environ} passes (C{LISTEN_PID} must be this process): by default,
        those this process inherited (L{processListenFDs}), which are then made
        close-on-exec, as C{sd_listen_fds} makes them. C{environ} is not changed.

        @param start: the first descriptor (3, as systemd passes them, by default).
        """
        if environ is None:
            named = namedDescriptors(processListenFDs(), os.environ)
            for _, fd in named:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass  # described as unusable by inspect()
        else:
            named = namedDescriptors(
                ListenFDs.fromEnvironment(environ=dict(environ), start=start), environ)
        return cls.fromDescriptors(named, inspect)

    @classmethod
    def fromDescriptors(cls, named: Iterable[tuple[str, int]],
                        inspect: Callable[[str, int], InheritedSocket]
                        = InheritedSocket.inspect) -> Activation:
        """
        The sockets of C{named}, C{(name, fd)} pairs.
        """
        return cls(tuple(inspect(name, fd) for name, fd in named))

    def __bool__(self) -> bool:
        return bool(self.sockets)

    def socketFor(self, service: str, transport: str) -> InheritedSocket | None:
        """
        The socket the C{transport} listener of C{service} serves, or L{None} (it
        binds its own).
        """
        for inherited in self.sockets:
            if inherited.name == service and inherited.transport == transport:
                return inherited
        return None

    def assigned(self, plan: Plan) -> list[tuple[Listener, InheritedSocket]]:
        """
        Each listener of C{plan} that serves an inherited socket, with that socket.
        """
        pairs = []
        for listener in plan.listeners:
            inherited = self.socketFor(listener.service, listener.transport)
            if inherited is not None:
                pairs.append((listener, inherited))
        return pairs

    def check(self, plan: Plan) -> list[ConfigProblem]:
        """
        Every reason these sockets cannot serve C{plan}: a socket that does not match
        the listener of its name (located at the service), two sockets for one
        listener, and sockets no service or status endpoint claims.
        """
        services = {spec.name: spec for spec in plan.config.services}
        listeners = {(l.service, l.transport): l for l in plan.listeners}
        status = plan.config.status.listen
        claimed = statusClaims(status, self.sockets)
        problems, unclaimed, taken = [], [], {}
        for index, inherited in enumerate(self.sockets):
            spec = services.get(inherited.name)
            if index in claimed:
                if spec is not None:
                    problems.append(ConfigProblem(
                        spec.path, spec.mark("name"),
                        f"inherited socket {inherited.describe()} is the status "
                        f"service's ({status!r}) but has this service's name: give "
                        "each its own FileDescriptorName=", spec.name))
                continue
            if spec is None:
                unclaimed.append(inherited)
                continue
            transport = inherited.transport
            key = (spec.name, transport)
            if transport is not None and transport not in spec.transports:
                problems.append(ConfigProblem(
                    spec.path, spec.mark("transports"),
                    f"inherited socket {inherited.describe()} is {transport}, a "
                    f"transport the service does not have: add {transport} to its "
                    f"transports, or remove {DIRECTIVES[transport]}= from its .socket "
                    "unit", spec.name))
                continue
            if transport is not None and key in taken:
                problems.append(ConfigProblem(
                    spec.path, spec.mark("name"),
                    f"inherited sockets {taken[key].describe()} and "
                    f"{inherited.describe()} are both for its {transport} listener: "
                    f"a service takes one {DIRECTIVES[transport]}=", spec.name))
                continue
            taken[key] = inherited
            unusable = inherited.unusable()
            found = ("name", unusable) if unusable is not None else inherited.mismatch(
                listeners[key])
            if found is not None:
                where, message = found
                problems.append(ConfigProblem(spec.path, spec.mark(where), message,
                                              spec.name))
        if unclaimed:
            names = ", ".join(s.describe() for s in unclaimed)
            problems.append(ConfigProblem(
                plan.config.path, None,
                f"inherited socket(s) {names} match no service: a socket's name "
                "(FileDescriptorName= in its .socket unit) must be the name of the "
                "service that serves it"
                + ("" if status is None else f", or the status endpoint's ({status!r})")))
        return problems

    def describePlan(self, plan: Plan) -> str:
        """
        For C{--check}: which listeners serve which inherited socket, and which bind
        their own port.
        """
        pairs = self.assigned(plan)
        rows = [("LISTENER", "INHERITED SOCKET")]
        rows += [(l.describe(), s.describe()) for l, s in pairs]
        for index in sorted(statusClaims(plan.config.status.listen, self.sockets)):
            rows.append(("status", self.sockets[index].describe()))
        width = max(len(r[0]) for r in rows)
        lines = ["SOCKET ACTIVATION (LISTEN_FDS)"]
        lines += [f"{a.ljust(width)}  {b}" for a, b in rows]
        lines.append(f"{len(pairs)} listener(s) serve an inherited socket; "
                     f"{len(plan.listeners) - len(pairs)} bind their own port")
        return "\n".join(lines)


def serveInherited(reactor, inherited: InheritedSocket, served, description: str,
                   refused):
    """
    Serve C{inherited} (checked: see L{InheritedSocket.mismatch}) with C{served}:
    a TCP socket as L{portserver.accepting.adoptTCP} serves it (C{description} and
    C{refused} as for C{listenTCP}), a UDP one through the port class
    L{portserver.udp.listenUDP} would use. The descriptor is made non-blocking, and is
    left open: the port serves a duplicate.

    @return: the listening port.
    """
    fd, family = inherited.fd, inherited.family
    os.set_blocking(fd, False)
    if inherited.transport == "tcp":
        return adoptTCP(reactor, fd, family, served, description, refused)
    if not isinstance(reactor, PosixReactorBase):  # e.g. an in-memory reactor (tests)
        return reactor.adoptDatagramPort(fd, family, served, MAX_DATAGRAM)
    wildcard = ipaddress.ip_address(inherited.host.split("%")[0]).is_unspecified
    cls = PacketInfoPort if wildcard and pktinfoSupported() else DatagramPort
    # As Twisted's adoptDatagramPort, with portserver's port class.
    port = cls._fromListeningDescriptor(reactor, fd, family, served, MAX_DATAGRAM)
    port.startListening()
    return port
