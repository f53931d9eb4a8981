"""
Connection admission: whether a service takes a new connection, by its access rules and
its limits (L{portserver.limits}).

One L{Admission} per service decides on every new connection before a protocol is built:
C{admit(host)} gives L{None} (taken, and counted as live) or the reason it is refused, and
C{release(host)} frees the slot when an admitted connection ends. Refusals are counted in
the L{Registry} (C{registry.refused}, the summary and the metrics) and logged at a bounded
rate.

Everything is per source, never global: a source is an IPv4 address, or an IPv6 network
of C{ipv6_prefix} bits (an IPv4-mapped IPv6 address is its IPv4 address), so one abusive
source can exhaust only its own allowance (and C{max_connections}, the service's own cap,
which it shares with everyone by definition).

In a worker of several, C{max_connections} and C{max_per_source} hold for the whole
server: the admission also takes slots leased from the main process
(L{Admission.useLeases}, L{portserver.quota}), and may answer a L{Pending} to be decided
by it.

Costs: C{admit} and C{release} run on every connection. With no limits and no rules
C{admit} is one attribute test and one increment. Otherwise the work is a few dict
operations; parsing an address (IPv6 grouping, access rules) is cached. The rate limit is
a token bucket per source, refilled lazily from the clock (no timers); buckets that have
refilled are dropped by sweeps that cost O(1) per admitted connection, amortised, so a
flood of distinct sources holds memory only for the sources seen within the time a
bucket takes to refill.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from twisted.logger import Logger

from portserver.limits import AccessRules, Limits
from portserver.udpguard import DATAGRAM_REASONS, ReplyRate

DENIED = "denied"
MAX_CONNECTIONS = "max-connections"
MAX_PER_SOURCE = "max-per-source"
RATE_PER_SOURCE = "rate-per-source"
REASONS = (DENIED, MAX_CONNECTIONS, MAX_PER_SOURCE, RATE_PER_SOURCE)

#: Seconds between two log lines about refusals for the same reason.
REPORT_INTERVAL = 1.0

#: Addresses whose access verdict (per rule set) and IPv6 source are remembered.
CACHE_SIZE = 4096

#: The bucket sweep runs when there are more buckets than this (and than twice as many as
#: were left by the last sweep), or when a bucket's refill time has passed since it last ran.
SWEEP_MIN = 1024

log = Logger()
_moduleLog = log


@lru_cache(maxsize=CACHE_SIZE)
def _ipv6Source(host: str, prefix: int) -> tuple[str, str | None]:
    """
    The (host, source) of an address with a colon: an IPv4-mapped address as the IPv4
    address (its own source, L{None}); an IPv6 address and its network of C{prefix} bits,
    C{"2001:db8:1:2::/64"}; anything else as given (its own source).
    """
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host, None
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped), None
    shift = 128 - prefix
    network = ipaddress.IPv6Address((int(address) >> shift) << shift)
    return host, f"{network}/{prefix}"


def sourceOf(host: str, prefix: int = 64) -> tuple[str, str | None]:
    """
    The (host, source) of the address C{host}: the host as counted (an IPv4-mapped IPv6
    address as its IPv4 address) and, for IPv6, its network of C{prefix} bits (L{None}
    when the host is its own source, as an IPv4 address is).
    """
    if ":" not in host:
        return host, None
    if host.startswith("::ffff:") and "." in host:
        return host[7:], None
    return _ipv6Source(host, prefix)


class _Report:
    """
    Refusals for one reason not yet logged: how many, the first peer and whether there
    were others; and when the last line was logged.
    """

    __slots__ = ("count", "peer", "others", "last")

    def __init__(self):
        self.count = 0
        self.peer = None
        self.others = False
        self.last = None


class Admission:
    """
    Admits or refuses the new connections of one service, by its L{AccessRules} and
    L{Limits}; keeps the live counts (the service's, and per source while a per-source
    limit is set) and the per-source token buckets.

    Checks, in order: access rules (C{"denied"}), C{max_connections}
    (C{"max-connections"}), C{max_per_source} (C{"max-per-source"}), C{rate_per_source}
    (C{"rate-per-source"}); a refused connection takes no slot and no token.

    Live connections are counted per source only while C{max_per_source} is set (that
    keeps C{admit} nearly free without limits): after a reload that sets it, connections
    admitted before are not counted against their source (and a release of one of them
    may free a newer one's slot early) until they end. Counts never go negative, nor stay
    up once every connection of a source has ended.

    @param clock: an L{IReactorTime} (only C{seconds()} is used).
    @param registry: the L{portserver.registry.Registry} counting refusals.
    @param log: the L{Logger} for refusal reports (this module's by default).
    """

    def __init__(self, service: str, limits: Limits, access: AccessRules, clock, registry,
                 log: Logger | None = None):
        self.service = service
        self.clock = clock
        self.registry = registry
        self.log = log if log is not None else _moduleLog
        self.live = 0  # the service's admitted connections, not yet released
        self._hosts: dict[str, int] = {}  # host -> live connections (per-source limit)
        self._networks: dict[str, int] = {}  # IPv6 network -> live connections
        self._buckets: dict[str, list] = {}  # source -> [tokens, when]
        self._sweepAt = SWEEP_MIN
        self._sweepDue = 0.0
        self._reports: dict[str, _Report] = {}
        self.replyRate: ReplyRate | None = None  # UDP replies per source (udpguard)
        self.leases = None  # a worker's leases of the global limits (useLeases)
        self.limits = self.access = None
        self.update(limits, access)

    def update(self, limits: Limits, access: AccessRules) -> None:
        """
        New limits and rules (a config reload) for connections from now on; live counts
        are kept (and regrouped if the IPv6 prefix changed), and so are the buckets while
        a rate is set.
        """
        old = self.limits
        self.limits, self.access = limits, access
        self._maxConnections = limits.maxConnections
        self._maxPerSource = limits.maxPerSource
        self._prefix = limits.ipv6Prefix
        self._rate = limits.ratePerSource
        self._burst = limits.burst
        self._allows = lru_cache(maxsize=CACHE_SIZE)(access.allows) if access else None
        self._open = not access and self._maxConnections is None \
            and self._maxPerSource is None and self._rate is None
        self._banners = {reason: line.encode() + b"\r\n" for reason, line in limits.banner}
        udpRate = limits.udpRatePerSource
        if udpRate is None:
            self.replyRate = None
        elif self.replyRate is None or self.replyRate.rate != udpRate:
            self.replyRate = ReplyRate(udpRate, self.clock)
        if self._rate is None:
            self._buckets.clear()
        else:
            self._sweepDue = 0.0  # the refill time may have changed: sweep soon
        if old is not None and old.ipv6Prefix != self._prefix and self._networks:
            networks: dict[str, int] = {}
            for host, count in self._hosts.items():
                network = sourceOf(host, self._prefix)[1]
                if network is not None:
                    networks[network] = networks.get(network, 0) + count
            self._networks = networks

    def banner(self, reason: str) -> bytes | None:
        """
        The line to send a connection refused for C{reason} (with its CRLF), or L{None}.
        """
        return self._banners.get(reason)

    def allows(self, host: str) -> bool:
        """
        Whether the access rules let C{host} in (a reload closes the live connections of
        peers they no longer do).
        """
        allows = self._allows
        return allows is None or allows(host)

    def deny(self, host: str) -> None:
        """
        Count and (at a bounded rate) log a datagram from C{host} that the access rules
        deny.
        """
        self._refuse(DENIED, host)

    def refuseDatagram(self, reason: str, host: str) -> None:
        """
        Count and (at a bounded rate) log a datagram from C{host} dropped for C{reason}
        (L{portserver.udpguard}: C{"loop"}, C{"rate"}).
        """
        self._refuse(reason, host)

    def admit(self, host: str) -> str | None:
        """
        Decide on a new connection from C{host} (an address string; IPv4-mapped IPv6 is
        taken as IPv4): L{None} admits it, and counts it as live until L{release}; else the
        reason it is refused, counted in the registry and logged at a bounded rate.
        """
        if self._open:
            self.live += 1
            return None
        allows = self._allows
        if allows is not None and not allows(host):
            return self._refuse(DENIED, host)
        if self._maxConnections is not None and self.live >= self._maxConnections:
            return self._refuse(MAX_CONNECTIONS, host)
        maxPerSource, rate = self._maxPerSource, self._rate
        if maxPerSource is None and rate is None:
            self.live += 1
            return None
        network = None
        if ":" in host:
            host, network = sourceOf(host, self._prefix)
        if maxPerSource is not None:
            if network is None:
                count = self._hosts.get(host, 0)
            else:
                count = self._networks.get(network, 0)
            if count >= maxPerSource:
                return self._refuse(MAX_PER_SOURCE, host)
        if rate is not None:
            now = self.clock.seconds()
            key = host if network is None else network
            bucket = self._buckets.get(key)
            burst = self._burst
            if bucket is None:
                tokens = burst
            else:
                tokens = bucket[0] + (now - bucket[1]) * rate
                if tokens > burst:
                    tokens = burst
            if tokens < 0.999999999:  # (float error on an exact refill)
                return self._refuse(RATE_PER_SOURCE, host)
            if bucket is None:
                self._buckets[key] = [tokens - 1, now]
                if len(self._buckets) > self._sweepAt:
                    self._sweep(now)
            else:
                bucket[0], bucket[1] = tokens - 1, now
            if now >= self._sweepDue:
                self._sweep(now)
        if maxPerSource is not None:
            hosts = self._hosts
            hosts[host] = hosts.get(host, 0) + 1
            if network is not None:
                networks = self._networks
                networks[network] = networks.get(network, 0) + 1
        self.live += 1
        return None

    def release(self, host: str) -> None:
        """
        An admitted connection from C{host} ended: free its slot. Calling this once per
        admitted connection is the caller's job; counts never go below 0.
        """
        if self.live:
            self.live -= 1
        hosts = self._hosts
        if hosts:
            network = None
            if ":" in host:
                host, network = sourceOf(host, self._prefix)
            count = hosts.get(host)
            if count is None:
                return
            if count > 1:
                hosts[host] = count - 1
            else:
                del hosts[host]
            if network is not None:
                networks = self._networks
                count = networks.get(network)
                if count is not None:
                    if count > 1:
                        networks[network] = count - 1
                    else:
                        del networks[network]

    # -- workers: the global limits (portserver.quota) -----------------------------------

    def useLeases(self, leases) -> None:
        """
        Hold C{max_connections} and C{max_per_source} for the whole server (a worker of
        several): a connection these limits apply to also needs a slot of C{leases} (a
        L{portserver.quota.ServiceLeases}), of the service and of its source, leased by
        the main process. While the worker holds free ones, L{admit} admits at once;
        otherwise it returns a L{Pending}, decided when the main process answers.
        L{None} goes back to admitting alone.

        Without leases (one process) C{admit} and C{release} are this class's own, at
        their own cost: this puts others in front of them on the instance.
        """
        self.leases = leases
        if leases is None:
            self.__dict__.pop("admit", None)
            self.__dict__.pop("release", None)
        else:
            self.admit = self._admitLeased
            self.release = self._releaseLeased

    def _sourceKey(self, host: str) -> str:
        """
        The source C{host} counts under: the IPv4 address, or the IPv6 network.
        """
        if ":" not in host:
            return host
        host, network = sourceOf(host, self._prefix)
        return host if network is None else network

    def _admitLeased(self, host: str):
        """
        L{admit} with leases: this worker's own checks first (they count the
        connection as live here), then the leased slots.
        """
        reason = Admission.admit(self, host)
        if reason is not None:
            return reason
        maxConnections, maxPerSource = self._maxConnections, self._maxPerSource
        if maxConnections is None and maxPerSource is None:
            return None
        source = host if ":" not in host else self._sourceKey(host)
        key = source if maxPerSource is not None else None
        leases = self.leases
        if leases.take(key, maxConnections, maxPerSource):
            return None
        pending = Pending(self, host, source)
        leases.request(pending, key, maxConnections, maxPerSource)
        return pending

    def _releaseLeased(self, host: str) -> None:
        """
        L{release} with leases: free the slots here and the leased ones.
        """
        Admission.release(self, host)
        leases = self.leases
        if not leases.sources:
            leases.release(None)
        else:
            leases.release(host if ":" not in host else self._sourceKey(host))

    def _unadmit(self, host: str, source: str) -> None:
        """
        A pending connection was not admitted after all: undo its live count, and give
        back the token of the rate limit it took (a refused connection takes none).
        """
        Admission.release(self, host)
        bucket = self._buckets.get(source)
        if bucket is not None:
            bucket[0] = min(bucket[0] + 1, self._burst)

    def sources(self) -> dict[str, int]:
        """
        How much per-source state is held: C{"live"}, hosts with live connections;
        C{"networks"}, IPv6 networks with live connections; C{"buckets"}, sources with
        a token bucket not yet refilled (or not yet swept).
        """
        return {"live": len(self._hosts), "networks": len(self._networks),
                "buckets": len(self._buckets)}

    def flushReports(self) -> None:
        """
        Log the refusals not yet reported, now (otherwise they are reported with the next
        refusal a second or more after the last line).
        """
        for reason, report in self._reports.items():
            if report.count:
                self._report(reason, report, self.clock.seconds())

    # -- internals -------------------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """
        Drop the buckets that have refilled (the same as no bucket). Runs when the buckets
        doubled since the last sweep, or a refill time after it: O(1) per admission,
        amortised.
        """
        rate, burst = self._rate, self._burst
        full = [key for key, (tokens, when) in self._buckets.items()
                if tokens + (now - when) * rate >= burst]
        for key in full:
            del self._buckets[key]
        self._sweepAt = max(SWEEP_MIN, 2 * len(self._buckets))
        self._sweepDue = now + burst / rate

    def _refuse(self, reason: str, host: str) -> str:
        """
        Count a refusal and log it, or keep it for the next line about C{reason} if one
        was logged less than L{REPORT_INTERVAL} ago.
        """
        self.registry.refuse(self.service, reason)
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]  # (denied or max-connections: not made a source yet)
        report = self._reports.get(reason)
        if report is None:
            report = self._reports[reason] = _Report()
        if report.count == 0:
            report.peer = host
        elif not report.others and host != report.peer:
            report.others = True
        report.count += 1
        now = self.clock.seconds()
        for other, pending in self._reports.items():
            if pending.count and (pending.last is None
                                  or now - pending.last >= REPORT_INTERVAL):
                self._report(other, pending, now)
        return reason

    def _report(self, reason: str, report: _Report, now: float) -> None:
        peer = f"{report.peer} and others" if report.others else report.peer
        what = "datagram" if reason in DATAGRAM_REASONS else "connection"
        if report.count == 1:
            self.log.warn("refused {count} " + what + " to {service} from {peer}: {reason}",
                          service=self.service, reason=reason, count=report.count, peer=peer)
        else:
            self.log.warn("refused {count} " + what + "s to {service} from {peer}: {reason} "
                          "(since last report)", service=self.service, reason=reason,
                          count=report.count, peer=peer)
        report.count, report.peer, report.others, report.last = 0, None, False, now


class Pending:
    """
    The admission of a connection that waits for the main process: what
    L{Admission.admit} returns when a worker's leases (L{portserver.quota}) hold no free
    slot for it. The connection waits, not reading (L{portserver.awaiting}); it counts
    as live here meanwhile, and its rate token is taken.

    The lease holder calls L{decide} with the main process's answer; the waiting
    connection gives up with L{cancel} (it closed) or L{expire} (it waited too long).
    Exactly one of the three takes effect.

    @ivar reason: what the connection is refused for if the main process cannot admit
        it (C{"max-connections"} when it waits for a slot of the service, else
        C{"max-per-source"}); set by the lease holder.
    @ivar withdraw: called (once) when the connection gives up; set by the lease
        holder, to give back what it holds for it.
    """

    __slots__ = ("admission", "host", "source", "reason", "withdraw", "decided",
                 "verdict", "callback")

    def __init__(self, admission: Admission, host: str, source: str):
        self.admission = admission
        self.host = host
        self.source = source
        self.reason = MAX_CONNECTIONS
        self.withdraw = None
        self.decided = False
        self.verdict = None
        self.callback = None

    def whenDecided(self, callback) -> None:
        """
        Call C{callback} with the verdict (L{None}: admitted, and to be released as any
        admitted connection; else the refusal reason, counted and logged) once decided,
        or now if it is.
        """
        if self.decided:
            callback(self.verdict)
        else:
            self.callback = callback

    def decide(self, reason: str | None) -> None:
        """
        The answer: admitted (L{None}), or refused for C{reason}.
        """
        if not self.decided:
            self._settle(reason)

    def expire(self) -> None:
        """
        No answer in time: refused for L{reason} (counted and logged as any refusal).
        """
        if not self.decided:
            self._withdraw()
            self._settle(self.reason)

    def cancel(self) -> None:
        """
        The connection closed while waiting: it takes no slot, and no verdict is told.
        """
        if not self.decided:
            self.decided = True
            self._withdraw()
            self.callback = None
            Admission.release(self.admission, self.host)

    def _withdraw(self) -> None:
        withdraw, self.withdraw = self.withdraw, None
        if withdraw is not None:
            withdraw()

    def _settle(self, reason: str | None) -> None:
        self.decided = True
        if reason is not None:
            admission = self.admission
            admission._unadmit(self.host, self.source)
            admission._refuse(reason, self.host)
        self.verdict = reason
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(reason)
