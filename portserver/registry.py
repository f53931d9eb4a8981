"""
The connection registry: every live TCP connection and UDP flow, as (ip, port) pairs.

What the registry knows is kept apart from how it is shown: records are plain values (turned
into plain dicts by L{ConnectionRecord.asDict}), so snapshots from several workers or hosts
can be merged later. The registry is an object, made once per server and injected where it
is needed; it holds no reference to any protocol or transport, so a closed connection is
freed by reference counting alone.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from functools import lru_cache
from typing import Callable, Iterable

from twisted.logger import Logger

from portserver.ports import PORT_CLASSES, PrivilegeRule, portClass

log = Logger()

OPEN = "open"
CLOSED = "closed"

# Close reasons.
CLIENT_CLOSED = "client-closed"
SERVER_CLOSED = "server-closed"
RESET = "reset"
ABORTED = "aborted"
SHUTDOWN = "shutdown"
IDLE = "idle"
#: A UDP flow closed to make room: the table held C{udp_max_flows} flows, and this one
#: was the least recently seen.
EVICTED = "evicted"
ERROR = "error"
#: A worker process's connection, closed in the main process's view because the worker
#: died before saying it closed (L{portserver.workerview}).
WORKER_LOST = "worker-lost"


def hostPort(host: str, port: int) -> str:
    """
    C{host:port}, with an IPv6 host in brackets (C{[::1]:7}).
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Endpoint(tuple):
    """
    An (ip, port) pair: C{Endpoint("127.0.0.1", 7)}; C{.host}, C{.port}.
    """

    __slots__ = ()

    def __new__(cls, host: str, port: int):
        return tuple.__new__(cls, (host, port))

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"Endpoint({self[0]!r}, {self[1]})"

    def __str__(self) -> str:
        return hostPort(self[0], self[1])


class ConnectionRecord:
    """
    One TCP connection, live or recently closed. Plain data only, kept small: a server
    holds one per live connection.

    @ivar id: stable and unique within the registry, e.g. C{"tcp-17"} (made from the
        C{serial} when asked for, not stored).
    @ivar local: the server's L{Endpoint}; C{remote}: the peer's.
    @ivar opened: when the connection was accepted (UDP: first datagram), in seconds since
        the epoch.
    @ivar closed: when it closed (UDP: expired), or L{None} while live; C{reason}: why.
    @ivar outbound: the L{OutboundRecord} of the connection the server opened on this
        one's behalf (a forward's), or L{None}.
    @ivar proxy: the L{Endpoint} of the proxy that carried the connection with the
        PROXY protocol (C{remote} is then the client it named), or L{None}: set on a
        L{ProxiedRecord} only, so that other records carry no slot for it.
    """

    __slots__ = ("serial", "service", "protocol", "local", "remoteHost", "remotePort",
                 "opened", "bytesIn", "bytesOut", "closed", "reason", "outbound")

    transport = "tcp"
    proxy = None

    def __init__(self, serial: int, service, protocol, local, remote, opened):
        self.serial = serial
        self.service = service
        self.protocol = protocol
        self.local = local
        self.remoteHost, self.remotePort = remote  # two slots, not a tuple per connection
        self.opened = opened
        self.bytesIn = 0
        self.bytesOut = 0
        self.closed = None
        self.reason = None
        self.outbound = None

    @property
    def id(self) -> str:
        return f"{self.transport}-{self.serial}"

    @property
    def remote(self) -> Endpoint:
        return Endpoint(self.remoteHost, self.remotePort)

    @property
    def duration(self) -> float | None:
        return None if self.closed is None else self.closed - self.opened

    def asDict(self, describePort: Callable[[int], tuple[str, bool]]) -> dict:
        """
        The record as plain JSON-ready values; C{describePort(port)} gives
        C{(class, privileged)}.
        """
        localClass, localPrivileged = describePort(self.local[1])
        remoteClass, remotePrivileged = describePort(self.remotePort)
        result = {
            "id": self.id, "service": self.service, "protocol": self.protocol,
            "transport": self.transport,
            "local": {"host": self.local[0], "port": self.local[1], "class": localClass,
                      "privileged": localPrivileged},
            "remote": {"host": self.remoteHost, "port": self.remotePort, "class": remoteClass,
                       "privileged": remotePrivileged},
            "opened": self.opened, "bytes_in": self.bytesIn, "bytes_out": self.bytesOut,
        }
        if self.transport == "udp":
            result["datagrams_in"] = self.datagramsIn
            result["datagrams_out"] = self.datagramsOut
            result["last_seen"] = self.lastSeen
        if self.closed is not None:
            result["closed"] = self.closed
            result["duration"] = self.closed - self.opened
            result["reason"] = self.reason
        if self.outbound is not None:
            result["outbound"] = self.outbound.asDict(describePort)
        if self.proxy is not None:
            result["proxy"] = {"host": self.proxy[0], "port": self.proxy[1]}
        return result


class ProxiedRecord(ConnectionRecord):
    """
    A TCP connection a proxy carried with the PROXY protocol: C{remote} is the client
    its header named, C{proxy} the proxy's own L{Endpoint}.
    """

    __slots__ = ("proxy",)

    def __init__(self, serial: int, service, protocol, local, remote, opened,
                 proxy: Endpoint):
        super().__init__(serial, service, protocol, local, remote, opened)
        self.proxy = proxy


class OutboundRecord(ConnectionRecord):
    """
    A TCP connection the server opened on behalf of an inbound one (a forward's connection
    to its target): C{local} is the server's end, C{remote} the target's. It hangs from
    the inbound record's C{outbound} and is not one of the registry's live connections;
    C{inbound} is the inbound record's id.
    """

    __slots__ = ("inbound",)

    def __init__(self, serial: int, service, protocol, local, remote, opened, inbound: str):
        super().__init__(serial, service, protocol, local, remote, opened)
        self.inbound = inbound

    @property
    def id(self) -> str:
        return f"out-{self.serial}"

    def asDict(self, describePort: Callable[[int], tuple[str, bool]]) -> dict:
        result = super().asDict(describePort)
        result["inbound"] = self.inbound
        return result


class FlowRecord(ConnectionRecord):
    """
    One UDP flow: a L{ConnectionRecord} with datagram counts and C{lastSeen}, the time
    of its last datagram.
    """

    __slots__ = ("datagramsIn", "datagramsOut", "lastSeen")

    transport = "udp"

    def __init__(self, serial: int, service, protocol, local, remote, opened):
        super().__init__(serial, service, protocol, local, remote, opened)
        self.datagramsIn = 0
        self.datagramsOut = 0
        self.lastSeen = opened


class Registry:
    """
    Every live connection and UDP flow of a server, the last C{closedLimit} closed ones,
    and running totals.

    Adding and removing a connection is O(1) (a dict keyed by id); a snapshot copies
    references to the live records.

    @param clock: an L{IReactorTime} (C{seconds()}).
    @param rule: this host's L{PrivilegeRule}.
    @param closedLimit: how many closed connections stay queryable.
    @param udpIdle: seconds after which a silent UDP flow expires.
    @param udpMaxFlows: the most live UDP flows: past it the least recently seen one is
        closed, "evicted", so the table (and memory) stays bounded whatever arrives.
    """

    def __init__(self, clock, rule: PrivilegeRule | None = None, closedLimit: int = 1000,
                 udpIdle: float = 60.0, udpMaxFlows: int = 10000):
        self.clock = clock
        self.rule = rule or PrivilegeRule()
        self.udpIdle = udpIdle
        self.udpMaxFlows = udpMaxFlows
        # The ports this server listens on (any transport): a datagram from one of them
        # is never answered (see portserver.udpguard). Kept current by the PortServer.
        self.ownPorts: frozenset[int] = frozenset()
        self.started = clock.seconds()
        self._live: dict[int, ConnectionRecord] = {}  # by serial
        # Least recently seen first (L{seen} moves a flow to the end).
        self._flows: OrderedDict[tuple, ConnectionRecord] = OrderedDict()
        self._closed: deque[ConnectionRecord] = deque(maxlen=closedLimit)
        self._serials = itertools.count(1)
        # A tuple, replaced on (un)subscribe: notifying needs no copy.
        self._observers: tuple[Callable[[str, ConnectionRecord], None], ...] = ()
        self._openObservers: tuple[Callable[[str, ConnectionRecord], None], ...] = ()
        self.accepted: Counter = Counter()  # (service, transport) -> count
        self.closedTotal: Counter = Counter()  # (service, transport, reason) -> count
        self.bytesIn: Counter = Counter()  # (service, transport) -> bytes of closed ones
        self.bytesOut: Counter = Counter()
        self.outboundOpened: Counter = Counter()  # service -> outbound connections opened
        self.refused: Counter = Counter()  # (service, reason) -> connections refused
        self.describePort = lru_cache(maxsize=None)(self._describePort)
        self.shuttingDown = False

    def _describePort(self, port: int) -> tuple[str, bool]:
        return portClass(port), self.rule.isPrivileged(port)

    # -- events ----------------------------------------------------------------------------

    def subscribe(self, observer: Callable[[str, ConnectionRecord], None],
                  opens: bool = True) -> Callable[[], None]:
        """
        Call C{observer(event, record)} with C{"open"} (unless C{opens} is false: an
        observer of closes only costs an open nothing) or C{"closed"} for every
        connection and flow; returns a callable that unsubscribes.
        """
        self._observers += (observer,)
        if opens:
            self._openObservers += (observer,)

        def unsubscribe():
            for name in ("_observers", "_openObservers"):
                observers = list(getattr(self, name))
                if observer in observers:
                    observers.remove(observer)
                    setattr(self, name, tuple(observers))
        return unsubscribe

    def _notify(self, event: str, record: ConnectionRecord) -> None:
        for observer in (self._openObservers if event == OPEN else self._observers):
            try:
                observer(event, record)
            except Exception:
                log.failure("Registry observer {observer} failed", observer=observer)

    # -- TCP -------------------------------------------------------------------------------

    def open(self, service: str, protocol: str, transport: str, local: Endpoint,
             remote: tuple[str, int], proxy: Endpoint | None = None) -> ConnectionRecord:
        """
        Record a new TCP connection, live from now (UDP flows come from L{flow});
        C{remote}: the peer's (host, port), an L{Endpoint} or a plain pair; C{proxy}:
        the proxy that carried it with the PROXY protocol, if one did.
        """
        if transport != "tcp":
            raise ValueError(f"open() records TCP connections, not {transport!r}: use flow()")
        if proxy is None:
            record = ConnectionRecord(next(self._serials), service, protocol, local, remote,
                                      self.clock.seconds())
        else:
            record = ProxiedRecord(next(self._serials), service, protocol, local, remote,
                                   self.clock.seconds(), proxy)
        self._live[record.serial] = record
        self._opened(record)
        return record

    def openOutbound(self, inbound: ConnectionRecord, local: Endpoint,
                     remote: Endpoint) -> OutboundRecord:
        """
        Record a connection from C{local} to C{remote} that the server opened for the
        live connection C{inbound}; it is shown with C{inbound} (and replaces an earlier
        outbound connection of it). Close it with L{close}.
        """
        record = OutboundRecord(next(self._serials), inbound.service, inbound.protocol,
                                local, remote, self.clock.seconds(), inbound.id)
        inbound.outbound = record
        self.outboundOpened[inbound.service] += 1
        return record

    def _opened(self, record: ConnectionRecord) -> None:
        """
        Count and announce a record just added (a connection or a flow).
        """
        self.accepted[(record.service, record.transport)] += 1
        if self._openObservers:
            self._notify(OPEN, record)

    def adopt(self, record: ConnectionRecord, flowKey: tuple | None = None) -> ConnectionRecord:
        """
        Record C{record}, made elsewhere (another process's connection or flow, as the
        main process's mirror of its workers holds them: L{portserver.workerview}), as
        live since its C{opened}; it is counted and announced as one L{open} or L{flow}
        would. Its C{serial} is the caller's to make unique in this registry. A flow is
        kept under C{flowKey} (default C{(service, remote)}, as L{flow} keeps it).
        Close it with L{close}.
        """
        if record.transport == "udp":
            key = (record.service, record.remote) if flowKey is None else flowKey
            self._flows[key] = record
        else:
            self._live[record.serial] = record
        self._opened(record)
        return record

    def close(self, record: ConnectionRecord, reason: str, at: float | None = None) -> None:
        """
        Record that C{record}'s connection (or flow) closed for C{reason}, now or C{at}
        (seconds since the epoch: when another process saw it close).
        """
        if record.closed is not None:
            return
        record.closed = self.clock.seconds() if at is None else at
        record.reason = reason
        if isinstance(record, OutboundRecord):
            return  # shown with its inbound connection; not counted as one of the server's
        if record.transport == "udp":
            self._flows.pop((record.service, record.remote), None)
        else:
            self._live.pop(record.serial, None)
        self._closed.append(record)
        key = (record.service, record.transport)
        self.closedTotal[key + (reason,)] += 1
        self.bytesIn[key] += record.bytesIn
        self.bytesOut[key] += record.bytesOut
        if self._observers:
            self._notify(CLOSED, record)

    def refuse(self, service: str, reason: str) -> None:
        """
        Count a connection to C{service} refused before it was opened, for C{reason} (see
        L{portserver.admission}: C{"denied"}, C{"max-connections"}, ...).
        """
        self.refused[(service, reason)] += 1

    # -- UDP -------------------------------------------------------------------------------

    def flow(self, service: str, protocol: str, local: Endpoint,
             remote: Endpoint) -> ConnectionRecord:
        """
        The live flow of C{service} with C{remote}, opened now if there is none.
        """
        flows = self._flows
        record = flows.get((service, remote))
        if record is None:
            while len(flows) >= self.udpMaxFlows:
                self.close(next(iter(flows.values())), EVICTED)
            record = FlowRecord(next(self._serials), service, protocol, local, remote,
                                self.clock.seconds())
            flows[(service, remote)] = record
            self._opened(record)
        else:
            flows.move_to_end((service, remote))
        record.lastSeen = self.clock.seconds()
        return record

    def seen(self, record: ConnectionRecord, now: float) -> None:
        """
        A datagram of flow C{record} arrived at C{now}: it is now the most recently
        seen (the last to be evicted).
        """
        record.lastSeen = now
        try:
            # (An (ip, port) tuple is the same key as the Endpoint record.remote makes.)
            self._flows.move_to_end((record.service, (record.remoteHost, record.remotePort)))
        except KeyError:
            pass  # closed meanwhile (by the plugin's own doing)

    def knownFlow(self, service: str, remote: Endpoint) -> ConnectionRecord | None:
        """
        The live flow of C{service} with C{remote}, if any.
        """
        return self._flows.get((service, remote))

    def seenFlow(self, service: str, remote: Endpoint, now: float) -> ConnectionRecord | None:
        """
        The live flow of C{service} with C{remote} (an L{Endpoint} or an equal (ip, port)
        tuple), if any, marked as L{seen} at C{now}: what a datagram of a known flow
        needs, in one look-up.
        """
        key = (service, remote)
        flows = self._flows
        record = flows.get(key)
        if record is not None:
            record.lastSeen = now
            flows.move_to_end(key)
        return record

    def expireFlows(self) -> int:
        """
        Close every flow silent for C{udpIdle} seconds or more; return how many.
        """
        deadline = self.clock.seconds() - self.udpIdle
        stale = []
        for record in self._flows.values():  # least recently seen first
            if record.lastSeen > deadline:
                break
            stale.append(record)
        for record in stale:
            self.close(record, IDLE)
        return len(stale)

    def closeFlows(self, reason: str) -> int:
        """
        Close every live flow (the server stops listening): return how many.
        """
        flows = list(self._flows.values())
        for record in flows:
            self.close(record, reason)
        return len(flows)

    # -- queries ---------------------------------------------------------------------------

    def snapshot(self, transport: str = "tcp") -> list[ConnectionRecord]:
        """
        The live records of C{transport} (C{"tcp"} connections or C{"udp"} flows).
        The records are live objects: read them now, or turn them into dicts.
        """
        return list((self._flows if transport == "udp" else self._live).values())

    def recentlyClosed(self) -> list[ConnectionRecord]:
        """
        The last closed connections and flows, oldest first.
        """
        return list(self._closed)

    def live(self, recordId: str) -> ConnectionRecord | None:
        """
        The live TCP connection whose id is C{recordId}, or L{None}.
        """
        transport, _, serial = recordId.partition("-")
        if transport != "tcp" or not serial.isdigit():
            return None
        return self._live.get(int(serial))

    def __len__(self) -> int:
        return len(self._live)

    def select(self, service: str | None = None, state: str = OPEN,
               transport: str | None = None) -> list[ConnectionRecord]:
        """
        The records live (C{state="open"}) or recently closed (C{"closed"}), optionally of
        one service and one transport (live: C{"tcp"} by default), as a new list.
        """
        if state == CLOSED:
            records: Iterable[ConnectionRecord] = self._closed
            if transport is not None:
                records = (r for r in records if r.transport == transport)
        else:
            records = self._flows.values() if transport == "udp" else self._live.values()
        if service is not None:
            records = (r for r in records if r.service == service)
        return list(records)

    def page(self, service: str | None = None, state: str = OPEN,
             transport: str | None = None, offset: int = 0,
             limit: int | None = None) -> tuple[int, list[ConnectionRecord]]:
        """
        One page of L{select}'s records: how many there are in all, and those from
        C{offset} on, at most C{limit} (L{None}: all). Without a C{service} the total is a
        C{len} and the page a slice, walked to from the nearer end: the cost is that of
        the page and of skipping at most half the records (in C), never of turning
        every record into something.
        """
        if state == CLOSED:
            records: Iterable[ConnectionRecord] = self._closed
            if transport is not None:
                records = [r for r in records if r.transport == transport]
        else:
            records = self._flows.values() if transport == "udp" else self._live.values()
        if service is not None:
            records = [r for r in records if r.service == service]
        total = len(records)
        stop = total if limit is None else min(total, offset + limit)
        if offset >= stop:
            return total, []
        if total - stop < offset:  # nearer the end: walk back to it
            page = list(itertools.islice(reversed(records), total - stop, total - offset))
            page.reverse()
            return total, page
        return total, list(itertools.islice(records, offset, stop))

    def asDicts(self, records: Iterable[ConnectionRecord]) -> list[dict]:
        """
        C{records} as plain dicts (L{ConnectionRecord.asDict}).
        """
        describe = self.describePort
        return [r.asDict(describe) for r in records]

    def query(self, service: str | None = None, state: str = OPEN,
              transport: str | None = None) -> list[dict]:
        """
        L{select}'s records as dicts.
        """
        return self.asDicts(self.select(service, state, transport))

    def liveCounts(self) -> Counter:
        """
        Live connections and flows per (service, transport, local port).
        """
        counts: Counter = Counter()
        for record in itertools.chain(self._live.values(), self._flows.values()):
            counts[(record.service, record.transport, record.local[1])] += 1
        return counts

    def summary(self, listeners: Iterable = ()) -> dict:
        """
        Totals for people and machines: listeners and connections by port class and by
        privilege, per-service counts, accepted, closed and refused totals, uptime, and
        flags.

        @param listeners: the L{portserver.plan.Listener}s (with their bound ports).
        """
        describe = self.describePort
        listeners = list(listeners)

        def empty():
            return {"by_class": dict.fromkeys(PORT_CLASSES, 0),
                    "privileged": 0, "unprivileged": 0}

        listenerTotals = empty()
        for listener in listeners:
            cls, privileged = describe(listener.port)
            listenerTotals["by_class"][cls] += 1
            listenerTotals["privileged" if privileged else "unprivileged"] += 1
        listenerTotals["total"] = len(listeners)

        local, remote = empty(), empty()
        perService: dict[str, dict] = {}
        flags = []
        records = itertools.chain(self._live.values(), self._flows.values())
        total = 0
        for record in records:
            total += 1
            for counts, port in ((local, record.local[1]), (remote, record.remotePort)):
                cls, privileged = describe(port)
                counts["by_class"][cls] += 1
                counts["privileged" if privileged else "unprivileged"] += 1
            entry = perService.setdefault(record.service, {"tcp": 0, "udp": 0})
            entry[record.transport] += 1
            if describe(record.remotePort)[1]:
                flags.append({"kind": "privileged-source-port", "id": record.id,
                              "service": record.service,
                              "remote": {"host": record.remoteHost,
                                         "port": record.remotePort},
                              "message": f"peer {record.remote} connects from a privileged "
                                         f"source port"})
        for listener in listeners:
            perService.setdefault(listener.service, {"tcp": 0, "udp": 0})
            if describe(listener.port)[0] == "dynamic":
                flags.append({"kind": "listener-in-dynamic-range",
                              "service": listener.service, "port": listener.port,
                              "message": f"{listener.service} listens on {listener.port}, in "
                                         "the dynamic range the OS uses for outgoing "
                                         "connections"})
        for (service, transport), count in self.accepted.items():
            perService.setdefault(service, {"tcp": 0, "udp": 0})
        refusedBy: Counter = Counter()
        for (service, reason), count in self.refused.items():
            perService.setdefault(service, {"tcp": 0, "udp": 0})
            refusedBy[reason] += count
        closedBy: Counter = Counter()
        for (service, transport, reason), count in self.closedTotal.items():
            closedBy[reason] += count
        for service, entry in perService.items():
            entry["accepted"] = sum(c for (s, _), c in self.accepted.items() if s == service)
            entry["closed"] = sum(c for (s, _, _), c in self.closedTotal.items() if s == service)
            entry["refused"] = sum(c for (s, _), c in self.refused.items() if s == service)
        return {
            "uptime": self.clock.seconds() - self.started,
            "privileged_port_start": self.rule.unprivilegedStart,
            "privileged_rule": self.rule.source,
            "listeners": listenerTotals,
            "connections": {"total": total, "local": local, "remote": remote},
            "services": perService,
            "accepted_total": sum(self.accepted.values()),
            "closed_total": sum(self.closedTotal.values()),
            "closed_by_reason": dict(closedBy),
            "refused_by_reason": dict(refusedBy),
            "flags": flags,
        }
