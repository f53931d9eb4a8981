"""
The listening sockets of a server with workers: bound once, by the main process, and
kept open for its whole life.

Each listener gets one socket per worker, all bound to its address with C{SO_REUSEPORT},
so that the kernel spreads new connections (and UDP flows) over the workers' accept
queues evenly, instead of waking every worker for each connection of one shared queue.
The main process serves none of them; it passes worker I{i} socket I{i} of every
listener, and keeps them all open, so a worker that dies loses no connection attempt:
those the kernel gives its socket wait in that socket's queue until it is back.

A listener on a socket socket activation passed (L{portserver.activation}) is served
on that one socket, shared by every worker: a unit's single socket cannot be split.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Callable, Iterable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from portserver.accepting import BACKLOG
from portserver.activation import Activation, InheritedSocket
from portserver.plan import Listener
from portserver.startup import StartupError, bindFailureMessage

log = Logger()


def _family(interface: str) -> int:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def bindReusePort(listener: Listener, port: int | None = None,
                  makeSocket: Callable[..., socket.socket] = socket.socket
                  ) -> socket.socket:
    """
    One socket for C{listener}, bound with C{SO_REUSEPORT} (and C{SO_REUSEADDR} for
    TCP, as Twisted binds) to its interface and C{port} (by default its own), and
    listening with a queue of L{BACKLOG} when it is TCP; close-on-exec (a worker is
    given it explicitly) and blocking until a worker makes it non-blocking.

    @raise CannotListenError: when the OS refuses (what L{bindFailureMessage} reads).
    """
    port = listener.port if port is None else port
    kind = socket.SOCK_STREAM if listener.transport == "tcp" else socket.SOCK_DGRAM
    s = makeSocket(_family(listener.interface), kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((listener.interface, port))
        if kind == socket.SOCK_STREAM:
            s.listen(BACKLOG)
    except OSError as e:
        s.close()
        raise CannotListenError(listener.interface, port, e) from e
    return s


@attrs.define(eq=False)
class ListenerSockets:
    """
    The sockets of one listener: one per worker (C{SO_REUSEPORT}), or the one socket
    activation passed (C{inherited}), which every worker serves.

    @ivar listener: the listener as planned (port 0: any free port).
    @ivar sockets: the sockets bound here, worker I{i}'s at I{i}; empty when inherited.
    """

    listener: Listener
    sockets: list[socket.socket] = attrs.field(factory=list)
    inherited: InheritedSocket | None = None

    @property
    def address(self) -> IPv4Address | IPv6Address:
        """
        The bound address (with the port the OS gave when the plan said 0).
        """
        cls = IPv6Address if ":" in self.listener.interface else IPv4Address
        kind = "TCP" if self.listener.transport == "tcp" else "UDP"
        if self.inherited is not None:
            return cls(kind, self.inherited.host, self.inherited.port)
        host, port = self.sockets[0].getsockname()[:2]
        return cls(kind, host, port)

    @property
    def bound(self) -> Listener:
        """
        The listener as bound: with its actual port.
        """
        port = self.address.port
        return self.listener if port == self.listener.port else attrs.evolve(
            self.listener, port=port)

    @property
    def port(self):
        """
        A listening socket of this listener (what the kernel's view identifies it by:
        see L{portserver.kernel.listenerSockets}), or L{None} when inherited.
        """
        return self.sockets[0] if self.sockets else None

    def descriptorFor(self, index: int) -> int:
        """
        The descriptor worker C{index} serves.
        """
        if self.inherited is not None:
            return self.inherited.fd
        return self.sockets[index % len(self.sockets)].fileno()

    def serving(self, listener: Listener) -> ListenerSockets:
        """
        These same sockets, serving C{listener} (a reloaded config's listener for the
        same socket: see L{portserver.reloading.socketKey}).
        """
        return attrs.evolve(self, listener=listener)

    def close(self) -> None:
        """
        Close the sockets bound here (an inherited one stays open, as systemd keeps it).
        """
        for s in self.sockets:
            s.close()
        self.sockets = []


#: C{SO_ATTACH_REUSEPORT_CBPF} (Linux 4.5): a classic BPF program that picks, for each
#: datagram (or connection), the socket of a reuseport group that gets it.
SO_ATTACH_REUSEPORT_CBPF = 51
#: Where a classic BPF program's loads relative to the network header start (SKF_NET_OFF).
_NET = -0x100000
#: The offset of the (last word of the) source address in the IPv4 and IPv6 headers.
_SOURCE_WORD = {socket.AF_INET: 12, socket.AF_INET6: 20}


def bySourceProgram(family: int, count: int) -> list[tuple[int, int, int, int]]:
    """
    A classic BPF program (C{(code, jt, jf, k)} instructions) that gives a datagram to
    socket I{source address mod} C{count} of its reuseport group: a word of the source
    address (IPv4: all of it; IPv6: its last), modulo C{count}.
    """
    return [(0x20, 0, 0, (_NET + _SOURCE_WORD[family]) & 0xFFFFFFFF),  # ld [net + off]
            (0x94, 0, 0, count),  # mod #count
            (0x16, 0, 0, 0)]  # ret a


def steerBySource(sock: socket.socket, family: int, count: int) -> bool:
    """
    Make the kernel give every datagram from one source address to the same socket of
    C{sock}'s reuseport group of C{count} (L{bySourceProgram}), so that one worker
    sees all of a source's datagrams: its per-source reply rate
    (C{udp_rate_per_source}) and its flows then hold for the whole server, as in one
    process, with no word between the workers. (The kernel's own choice hashes source
    address I{and port}: a source sending from many ports would be spread.) Whether
    the kernel took it (Linux 4.5 and later).
    """
    import ctypes

    program = bySourceProgram(family, count)
    filters = (ctypes.c_uint64 * len(program))(*(
        int.from_bytes(struct.pack("=HBBI", *instruction), sys.byteorder)
        for instruction in program))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(filters))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError:
        return False
    return True


def bindListener(listener: Listener, count: int, activation: Activation | None = None,
                 bind: Callable[..., socket.socket] = bindReusePort) -> ListenerSockets:
    """
    The sockets of C{listener} for C{count} workers: the socket C{activation} passed
    for it, or C{count} sockets bound here (on port 0, the first picks the port and the
    others take the same). All or nothing: on a failure, those bound are closed.

    @raise CannotListenError: when the OS refuses.
    @raise StartupError: when the inherited socket is not the listener's.
    """
    inherited = (activation or Activation()).socketFor(listener.service,
                                                       listener.transport)
    if inherited is not None:
        mismatch = inherited.mismatch(listener)
        if mismatch is not None:
            raise StartupError(f"service {listener.service!r}: {mismatch[1]}")
        return ListenerSockets(listener, inherited=inherited)
    sockets: list[socket.socket] = []
    try:
        port = listener.port
        for _ in range(count):
            sockets.append(bind(listener, port))
            port = sockets[0].getsockname()[1]
    except BaseException:
        for s in sockets:
            s.close()
        raise
    if listener.transport == "udp" and count > 1:
        family = _family(listener.interface)
        if not steerBySource(sockets[0], family, count):
            log.warn("The kernel does not steer {service}/udp datagrams by source "
                     "address (SO_ATTACH_REUSEPORT_CBPF): a source sending from many "
                     "ports is spread over the workers, and its reply rate limit "
                     "holds per worker", service=listener.service)
    return ListenerSockets(listener, sockets)


def bindListeners(listeners: Iterable[Listener], count: int,
                  activation: Activation | None = None,
                  bind: Callable[..., socket.socket] = bindReusePort
                  ) -> tuple[list[ListenerSockets], list[str]]:
    """
    L{bindListener} for each of C{listeners}.

    @return: those bound, and a message for each failure (L{bindFailureMessage}'s, or
        the L{StartupError}'s); when there is any failure, nothing is bound (those
        that were are closed) and the first list is empty.
    """
    bound, failures = [], []
    for listener in listeners:
        try:
            bound.append(bindListener(listener, count, activation, bind))
        except CannotListenError as e:
            failures.append(bindFailureMessage(listener, e))
        except StartupError as e:
            failures.append(str(e))
    if failures:
        for entry in bound:
            entry.close()
        bound = []
    return bound, failures
