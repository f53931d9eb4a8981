"""
The kernel's side of a server's TCP endpoints (Linux only): per listener, its accept
queue and the sockets of its port the registry never sees (handshakes, teardown); per
connection, its C{tcp_info}; for the host, the listen counters of C{/proc/net/netstat}.

Everything is read when asked (an API request, a scrape), with one
L{portserver.sockdiag} dump of the listeners' ports: nothing runs per connection, and
the registry stays as it is. A listener is known by the inode of its socket, so the
sockets of another process on the same port, or of a listener that only exists in a test's
memory reactor, are never taken for the server's. Where there is no netlink (not Linux)
or the dump fails, every reading is L{None} and the status surfaces leave the fields out
(absent, not zero).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable, Iterable

from twisted.logger import Logger

from portserver.addresses import ipAddress
from portserver.sockdiag import (
    CLOSE_WAIT,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT1,
    FIN_WAIT2,
    INET_DIAG_INFO,
    INET_DIAG_SKMEMINFO,
    LAST_ACK,
    LISTEN,
    NEW_SYN_RECV,
    STATE_NAMES,
    SYN_RECV,
    TIME_WAIT,
    LOOKUP_BATCH,
    SockDiagError,
    TCPSocket,
    dumpTCP,
    lookupTCP,
    stateMask,
)

log = Logger()

#: The host's listen counters (C{TcpExt} of C{/proc/net/netstat}), as the kernel names
#: them: accept queue overflows, handshakes dropped at a listener, segments dropped for a
#: full socket backlog, SYNs dropped for a full SYN queue, SYN cookies sent.
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPBacklogDrop", "TCPReqQFullDrop",
                   "SyncookiesSent")

NETSTAT = "/proc/net/netstat"

#: The states a registry record's socket can be in (accepted, and not yet TIME-WAIT),
#: and LISTEN: a socket is the server's when it came through one of its listening sockets.
CONNECTION_STATES = stateMask((LISTEN, ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2,
                               LAST_ACK, CLOSING))
#: The states a listener's view needs: the listening socket, handshakes and teardown
#: (not ESTABLISHED: the registry counts those).
LISTENER_STATES = stateMask((LISTEN, SYN_RECV, NEW_SYN_RECV, TIME_WAIT, CLOSE_WAIT,
                             FIN_WAIT1, FIN_WAIT2, LAST_ACK, CLOSING))
ALL_STATES = stateMask(range(1, 13))

#: The per-state counts of a listener's C{kernel}, and the states each adds up.
LISTENER_COUNTS = (("syn_recv", (SYN_RECV, NEW_SYN_RECV)), ("time_wait", (TIME_WAIT,)),
                   ("close_wait", (CLOSE_WAIT,)), ("fin_wait", (FIN_WAIT1, FIN_WAIT2)),
                   ("last_ack", (LAST_ACK,)))

#: The states C{portserver_tcp_sockets} reports for each service (at 0 when none).
SOCKET_STATES = ("syn_recv", "established", "fin_wait1", "fin_wait2", "time_wait",
                 "close_wait", "last_ack", "closing")

#: Seconds a flag for growing overflows stays up after the count last grew.
GROWTH_WINDOW = 60.0


def readTcpExt(path: str = NETSTAT) -> dict[str, int] | None:
    """
    The C{TcpExt} counters of C{/proc/net/netstat}, by name, or L{None} when the file
    cannot be read or has no C{TcpExt} lines.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    values: dict[str, int] = {}
    for names, numbers in zip(lines[::2], lines[1::2]):
        if not names.startswith("TcpExt:") or not numbers.startswith("TcpExt:"):
            continue
        for name, number in zip(names.split()[1:], numbers.split()[1:]):
            if number.isdigit():
                values[name] = int(number)
    return values or None


def readListenCounters(path: str = NETSTAT) -> dict[str, int] | None:
    """
    The L{LISTEN_COUNTERS} of C{/proc/net/netstat} (each absent one at 0), or L{None}
    when the file cannot be read or has no C{TcpExt} lines.
    """
    values = readTcpExt(path)
    if values is None:
        return None
    return {name: values.get(name, 0) for name in LISTEN_COUNTERS}


def _canonical(host: str) -> str:
    """
    An interface as the kernel's dump writes it (C{"::"}, C{"0.0.0.0"}, IPv4-mapped
    IPv6 as IPv4).
    """
    address = ipAddress(host, dropScope=True)
    return host if address is None else str(address)


def listenerSockets(server) -> list[tuple[object, int]]:
    """
    The server's bound TCP listeners, each with the inode of its listening socket
    (C{server.listeners}: services with C{bound}, the L{portserver.plan.Listener}, and
    C{port}, the listening port). A listener without a real socket (not bound, or a
    memory reactor's) is left out.
    """
    found = []
    for child in getattr(server, "listeners", ()):
        listener = getattr(child, "bound", None)
        if listener is None or listener.transport != "tcp":
            continue
        try:
            inode = os.fstat(child.port.fileno()).st_ino
        except (AttributeError, OSError, TypeError, ValueError):
            continue
        found.append((listener, inode))
    return found


class KernelSnapshot:
    """
    One dump's sockets, sorted out by listener and by connection.

    @ivar listeners: the listeners found in the dump (their listening socket's inode was
        there), by C{(interface, port)}.
    """

    def __init__(self, sockets: Iterable[TCPSocket], listeners: Iterable[tuple[object, int]]):
        byInode = {inode: listener for listener, inode in listeners}
        self._listening: dict[tuple[str, int], list[TCPSocket]] = {}
        self.listeners: dict[tuple[str, int], object] = {}
        rest = []
        for s in sockets:
            if s.state == LISTEN:
                listener = byInode.get(s.inode)
                if listener is not None:
                    key = (_canonical(listener.interface), listener.port)
                    self.listeners[key] = listener
                    self._listening.setdefault(key, []).append(s)
            else:
                rest.append(s)
        self._connections: dict[tuple, TCPSocket] = {}
        self._owned: dict[tuple[str, int], list[TCPSocket]] = {}
        owners: dict[tuple[str, int], tuple[str, int] | None] = {}
        connections, owned, ownerOf = self._connections, self._owned, self._ownerOf
        for s in rest:
            local = (s.localHost, s.localPort)
            try:
                owner = owners[local]
            except KeyError:
                owner = owners[local] = ownerOf(*local)
            if owner is None:
                continue
            owned.setdefault(owner, []).append(s)
            if s.state in (TIME_WAIT, SYN_RECV, NEW_SYN_RECV):
                continue
            connections[(s.localHost, s.localPort, s.remoteHost, s.remotePort)] = s

    def _ownerOf(self, host: str, port: int) -> tuple[str, int] | None:
        """
        The key of the listener a socket with local address C{host}:C{port} came
        through: the one bound to that address, else the wildcard of its family, else
        C{::} (dual stack).
        """
        for key in ((host, port), ("::" if ":" in host else "0.0.0.0", port), ("::", port)):
            if key in self.listeners:
                return key
        return None

    def connection(self, record) -> TCPSocket | None:
        """
        The socket of the registry's C{record} (a live TCP connection), if the dump has it.
        """
        host = record.local[0]
        found = self._connections.get((host, record.local[1], record.remoteHost,
                                       record.remotePort))
        if found is None and "%" in host:  # a link-local address with its scope
            found = self._connections.get((host.split("%", 1)[0], record.local[1],
                                           record.remoteHost.split("%", 1)[0],
                                           record.remotePort))
        return found

    def connectionInfo(self, record) -> dict | None:
        """
        The C{tcp} of C{record} in C{/api/connections} (L{TCPSocket.tcpInfo}), or L{None}.
        """
        found = self.connection(record)
        return None if found is None else found.tcpInfo()

    def listenerInfo(self, host: str, port: int) -> dict | None:
        """
        The C{kernel} of the listener on C{host}:C{port} in C{/api/listeners}, or
        L{None} when its listening socket is not in the dump: C{accept_queue} (the
        connections the kernel completed and the server has not accepted yet),
        C{backlog} (the most the queue holds), the port's sockets in each of the states
        of L{LISTENER_COUNTS}, and C{drops} (handshakes the listening socket dropped,
        when the dump gave it).
        """
        key = (_canonical(host), port)
        listening = self._listening.get(key)
        if not listening:
            return None
        counts = Counter(s.state for s in self._owned.get(key, ()))
        result = {"accept_queue": sum(s.receiveQueue for s in listening),
                  "backlog": sum(s.sendQueue for s in listening)}
        for name, states in LISTENER_COUNTS:
            result[name] = sum(counts[state] for state in states)
        drops = [s.drops for s in listening if s.drops is not None]
        if drops:
            result["drops"] = sum(drops)
        return result

    def services(self) -> dict[str, list[tuple[str, int]]]:
        """
        The listener keys found, by service.
        """
        result: dict[str, list[tuple[str, int]]] = {}
        for key, listener in self.listeners.items():
            result.setdefault(listener.service, []).append(key)
        return result

    def sockets(self, key: tuple[str, int]) -> list[TCPSocket]:
        """
        The sockets of the listener C{key} other than its listening socket.
        """
        return self._owned.get(key, [])

    def listening(self, key: tuple[str, int]) -> list[TCPSocket]:
        """
        The listening socket(s) of the listener C{key}.
        """
        return self._listening.get(key, [])


class FoundSockets:
    """
    The sockets of a page of registry records, looked up one by one
    (L{portserver.sockdiag.lookupTCP}): what L{KernelSnapshot} offers of connections.
    """

    def __init__(self, records, sockets: Iterable[TCPSocket | None]):
        self._byRecord = {id(r): s for r, s in zip(records, sockets) if s is not None}

    def connection(self, record) -> TCPSocket | None:
        return self._byRecord.get(id(record))

    def connectionInfo(self, record) -> dict | None:
        found = self.connection(record)
        return None if found is None else found.tcpInfo()


#: A page of at most 1/LOOKUP_SHARE of the live connections is looked up connection by
#: connection (about 11 us each); a larger one comes from one dump (about 5 us per
#: socket of the ports), as measured by C{bench/kernel_view.py}.
LOOKUP_SHARE = 2


class KernelView:
    """
    What the kernel says of C{server}'s TCP endpoints, read when asked.

    Made once with the status service: the host's listen counters read then are the
    baseline their change is counted from. It also remembers, per listener and for the
    host, when the overflow counts last grew (for the summary's flags).

    @param server: the L{portserver.server.PortServer} (its C{listeners} and C{registry}).
    @param dump: L{portserver.sockdiag.dumpTCP}, or a stand-in.
    @param lookup: L{portserver.sockdiag.lookupTCP}, or a stand-in.
    @param findListeners: L{listenerSockets}, or a stand-in.
    @param clock: what C{seconds()} the growth of overflows is timed by (default: the
        registry's clock).
    @param readCounters: L{readListenCounters}, or a stand-in.
    """

    def __init__(self, server, dump: Callable = dumpTCP,
                 readCounters: Callable[[], dict | None] = readListenCounters,
                 clock=None, lookup: Callable = lookupTCP,
                 findListeners: Callable = listenerSockets):
        self.server = server
        self.dump = dump
        self.lookup = lookup
        self.findListeners = findListeners
        self.readCounters = readCounters
        self.clock = clock if clock is not None else server.registry.clock
        self.baseline = readCounters()
        self._grown: dict[object, tuple[int, float]] = {}  # key -> (count, when it grew)
        self._problem: str | None = None

    def read(self, states: int = ALL_STATES,
             extensions: Iterable[int] = (INET_DIAG_INFO, INET_DIAG_SKMEMINFO),
             service: str | None = None) -> KernelSnapshot | None:
        """
        One dump of the sockets on the server's TCP listener ports (of C{service} only,
        when given), in C{states}, with C{extensions}; L{None} when the server has no
        bound TCP listener or the dump fails (logged once per distinct reason).
        """
        listeners = [(l, inode) for l, inode in self.findListeners(self.server)
                     if service is None or l.service == service]
        if not listeners:
            return None
        try:
            sockets = self.dump(ports={l.port for l, _ in listeners}, states=states,
                                extensions=tuple(extensions))
        except SockDiagError as e:
            return self._failed(e)
        self._problem = None
        return KernelSnapshot(sockets, listeners)

    def _failed(self, error: SockDiagError) -> None:
        """
        Log that the kernel's view failed with C{error}, unless the last failure was the
        same.
        """
        if str(error) != self._problem:
            self._problem = str(error)
            log.warn("The kernel's view of TCP sockets is not available: {problem}",
                     problem=str(error))

    def forConnections(self, service: str | None = None) -> KernelSnapshot | None:
        """
        A snapshot for C{/api/connections}: the connections' sockets with C{tcp_info}.
        """
        return self.read(CONNECTION_STATES, (INET_DIAG_INFO,), service)

    def forRecords(self, records, service: str | None = None
                   ) -> KernelSnapshot | FoundSockets | None:
        """
        The sockets of C{records} (a page of live registry records of C{service}, or of
        every service) with C{tcp_info}, whichever way costs less: looked up one by one
        when the page is small (one batch of lookups) or a small share of the live
        connections (L{LOOKUP_SHARE}), else from one dump (L{forConnections}). L{None}
        without the kernel's view (no TCP listener the kernel knows, or not Linux).
        """
        tcp = [r for r in records if r.transport == "tcp"]
        if not tcp or not self.findListeners(self.server):
            return None
        if len(tcp) > LOOKUP_BATCH and len(tcp) * LOOKUP_SHARE > len(self.server.registry):
            return self.forConnections(service)
        try:
            sockets = self.lookup([(r.local[0], r.local[1], r.remoteHost, r.remotePort)
                                   for r in tcp], (INET_DIAG_INFO,))
        except SockDiagError as e:
            return self._failed(e)
        self._problem = None
        return FoundSockets(tcp, sockets)

    def forListeners(self) -> KernelSnapshot | None:
        """
        A snapshot for C{/api/listeners} and the summary: listening sockets (with their
        drops), handshakes and teardown; no established connection.
        """
        return self.read(LISTENER_STATES, (INET_DIAG_SKMEMINFO,))

    def forMetrics(self) -> KernelSnapshot | None:
        """
        A snapshot of every state with C{tcp_info} and drops: one read per scrape.
        """
        return self.read(ALL_STATES, (INET_DIAG_INFO, INET_DIAG_SKMEMINFO))

    def listenCounters(self) -> dict | None:
        """
        The host's L{LISTEN_COUNTERS} now, each as C{{"total": N, "since_start": M}}
        (C{since_start}: the change since this view was made), or L{None} when
        C{/proc/net/netstat} cannot be read.
        """
        now = self.readCounters()
        if now is None:
            return None
        base = self.baseline or {}
        return {name: {"total": value, "since_start": value - base.get(name, value)}
                for name, value in now.items()}

    def _grewLately(self, key, count: int) -> bool:
        """
        Whether C{count}, the current value of the counter C{key}, grew in the last
        L{GROWTH_WINDOW} seconds (as far as the reads so far saw; the first read compares
        with C{start}, the count when the view was made, 0 for a listener).
        """
        now = self.clock.seconds()
        before, grewAt = self._grown.get(key, (None, None))
        if before is None:
            before = (self.baseline or {}).get(key[1], count) if key[0] == "host" else 0
        if count > before:
            grewAt = now
        self._grown[key] = (count, grewAt)
        return grewAt is not None and now - grewAt < GROWTH_WINDOW

    def flags(self, snapshot: KernelSnapshot | None, counters: dict | None) -> list[dict]:
        """
        The summary's flags from the kernel's view: C{accept-queue-filling} for a
        listener whose accept queue is over half full; C{listen-overflows} for a listener
        whose drops, or for the host whose C{ListenOverflows}, grew in the last
        L{GROWTH_WINDOW} seconds.
        """
        flags = []
        if snapshot is not None:
            for key, listener in snapshot.listeners.items():
                info = snapshot.listenerInfo(*key)
                where = listener.describe()
                queued, backlog = info["accept_queue"], info["backlog"]
                if backlog and queued * 2 > backlog:
                    flags.append({
                        "kind": "accept-queue-filling", "service": listener.service,
                        "port": listener.port, "accept_queue": queued, "backlog": backlog,
                        "message": f"{where}: {queued} of {backlog} connections wait in the "
                                   "accept queue (over half full): the server accepts too "
                                   "slowly"})
                drops = info.get("drops")
                if drops is not None and self._grewLately(("listener", key), drops):
                    flags.append({
                        "kind": "listen-overflows", "service": listener.service,
                        "port": listener.port, "drops": drops,
                        "message": f"{where}: the kernel dropped {drops} incoming "
                                   "connection(s) at the listening socket (accept queue "
                                   "full), some in the last minute"})
        if counters is not None:
            overflows = counters["ListenOverflows"]
            if self._grewLately(("host", "ListenOverflows"), overflows["total"]):
                flags.append({
                    "kind": "listen-overflows", "since_start": overflows["since_start"],
                    "message": f"the host's accept queues overflowed "
                               f"{overflows['since_start']} time(s) since start "
                               "(ListenOverflows), some in the last minute"})
        return flags


def stateCounts(sockets: Iterable[TCPSocket]) -> Counter:
    """
    C{sockets} counted by state name (C{syn_recv} for both kinds of handshake).
    """
    return Counter(STATE_NAMES.get(s.state, str(s.state)) for s in sockets)
