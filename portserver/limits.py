"""
What a service allows: connection limits, timeouts and access rules, as configured.

Values only: the checks that act on them are in L{portserver.admission} (who may connect)
and L{portserver.tracking} (timeouts and the output cap). A service's limits are its own
C{limits:}, over the top-level C{limits:} (global defaults), over the plugin's
C{defaultLimits}; its access rules are the top-level C{access:} lists and its own together.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any, Mapping

import attrs

from portserver.addresses import ipAddress
from portserver.options import Option, seconds


def _positive(kind: str):
    def check(value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {kind}"
        return None if value > 0 else f"must be more than 0 {kind}"
    return check


def _prefix(value) -> str | None:
    return None if 1 <= value <= 128 else "must be 1-128"


SECONDS = "a number of seconds, or null for none"

#: The refusal reasons a banner can be given for (C{limits.banner} as a mapping). A
#: single line is for the overload reasons only: a peer the access rules deny is not
#: told to "try later".
BANNER_REASONS = ("denied", "max-connections", "max-per-source", "rate-per-source")
OVERLOAD_REASONS = BANNER_REASONS[1:]


def _oneLine(value) -> bool:
    return "\n" not in value and "\r" not in value


def _bannerProblem(value) -> str | None:
    if isinstance(value, str):
        return None if _oneLine(value) else "must be one line"
    if isinstance(value, dict):
        for reason, line in value.items():
            if reason not in BANNER_REASONS:
                return (f"has unknown refusal reason {reason!r} "
                        f"(known: {', '.join(BANNER_REASONS)})")
            if line is not None and not (isinstance(line, str) and _oneLine(line)):
                return f"{reason!r} must be one line of text, or null"
    return None


def bannerLines(value) -> tuple[tuple[str, str], ...]:
    """
    C{limits.banner} as (reason, line) pairs: a single line stands for every overload
    reason (L{OVERLOAD_REASONS}); a mapping gives each reason its own, null or absent
    for none.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple((reason, value) for reason in OVERLOAD_REASONS)
    if isinstance(value, dict):
        value = value.items()
    return tuple((reason, line) for reason, line in value if line is not None)

#: The keys of a C{limits:} mapping (service or top level). None means no limit.
LIMITS_SCHEMA: dict[str, Option] = {
    "max_connections": Option((int, type(None)), None,
                              lambda v: None if v is None or v >= 1 else "must be 1 or more",
                              describe="a whole number, or null for no limit"),
    "max_per_source": Option((int, type(None)), None,
                             lambda v: None if v is None or v >= 1 else "must be 1 or more",
                             describe="a whole number, or null for no limit"),
    "ipv6_prefix": Option(int, 64, _prefix, describe="a prefix length, 1-128"),
    "rate_per_source": Option((int, float, type(None)), None,
                              lambda v: None if v is None else _positive("per second")(v),
                              describe="new connections per second, or null for no limit"),
    "rate_burst": Option((int, type(None)), None,
                         lambda v: None if v is None or v >= 1 else "must be 1 or more",
                         describe="a whole number of connections"),
    "idle_timeout": Option((int, float, type(None)), None,
                           lambda v: None if v is None else seconds()(v),
                           describe=SECONDS),
    "deadline": Option((int, float, type(None)), None,
                       lambda v: None if v is None else seconds()(v),
                       describe=SECONDS),
    "max_output": Option((int, type(None)), 1024 * 1024,
                         lambda v: None if v is None or v >= 1 else "must be 1 or more bytes",
                         describe="a number of bytes, or null for no cap"),
    "close_grace": Option((int, float), 10, seconds(), describe="seconds"),
    "udp_rate_per_source": Option((int, float, type(None)), None,
                                  lambda v: None if v is None
                                  else _positive("datagrams per second")(v),
                                  describe="datagrams answered per second per source, "
                                           "or null for no limit"),
    "banner": Option((str, dict, type(None)), None, lambda v: _bannerProblem(v),
                     describe="one line of text, a mapping of refusal reason to a line "
                              "(or null), or null"),
}


@attrs.frozen
class Limits:
    """
    One service's effective limits (L{None}: no limit).

    @ivar maxConnections: live connections at once.
    @ivar maxPerSource: live connections at once from one source (an IPv4 address, or an
        IPv6 network of C{ipv6Prefix} bits).
    @ivar ratePerSource: new connections per second from one source, with bursts of up to
        C{rateBurst} (default: the rate, rounded up).
    @ivar idleTimeout: seconds without a byte either way before the connection is closed.
    @ivar deadline: seconds a connection may last in all.
    @ivar maxOutput: bytes of output not yet taken by the peer before the connection is
        aborted.
    @ivar closeGrace: seconds a close may take before the connection is aborted.
    @ivar udpRatePerSource: datagrams a UDP service answers per second per source
        address (a token bucket, bursts of twice that); the rest are dropped.
    @ivar banner: the line sent to a connection refused for each reason before it is
        closed, as (reason, line) pairs (see L{bannerLines}: a single line or a mapping
        is taken too).
    """

    maxConnections: int | None = None
    maxPerSource: int | None = None
    ipv6Prefix: int = 64
    ratePerSource: float | None = None
    rateBurst: int | None = None
    idleTimeout: float | None = None
    deadline: float | None = None
    maxOutput: int | None = 1024 * 1024
    closeGrace: float = 10.0
    banner: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=bannerLines)
    udpRatePerSource: float | None = None

    @classmethod
    def fromOptions(cls, values: Mapping[str, Any]) -> "Limits":
        """
        Limits from a checked C{limits:} mapping (L{LIMITS_SCHEMA}'s keys).
        """
        return cls(
            maxConnections=values["max_connections"], maxPerSource=values["max_per_source"],
            ipv6Prefix=values["ipv6_prefix"], ratePerSource=values["rate_per_source"],
            rateBurst=values["rate_burst"], idleTimeout=values["idle_timeout"],
            deadline=values["deadline"], maxOutput=values["max_output"],
            closeGrace=float(values["close_grace"]), banner=values["banner"],
            udpRatePerSource=values["udp_rate_per_source"])

    def bannerFor(self, reason: str) -> str | None:
        """
        The line for a connection refused for C{reason}, or L{None}.
        """
        for known, line in self.banner:
            if known == reason:
                return line
        return None

    def asOptions(self, transport: str = "tcp") -> dict[str, Any]:
        """
        The limits that act on C{transport}, under the config's key names (L{None}: no
        limit): what C{/api/listeners} and C{--check} show. The connection limits and
        timeouts are TCP's; a UDP listener has its per-source reply rate.
        """
        if transport == "udp":
            return {"udp_rate_per_source": self.udpRatePerSource}
        return {"idle_timeout": self.idleTimeout, "deadline": self.deadline,
                "max_connections": self.maxConnections, "max_per_source": self.maxPerSource,
                "rate_per_source": self.ratePerSource, "max_output": self.maxOutput,
                "close_grace": self.closeGrace}

    @property
    def burst(self) -> int | None:
        """
        The token bucket's size: C{rateBurst}, or the rate rounded up.
        """
        if self.ratePerSource is None:
            return None
        return self.rateBurst or max(1, math.ceil(self.ratePerSource))


def parseNetwork(text) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """
    An address or CIDR block (C{10.0.0.0/8}, C{2001:db8::/32}, C{192.0.2.7}); an
    IPv4-mapped IPv6 block is taken as the IPv4 one.

    @raise ValueError: with a message for an operator.
    """
    if not isinstance(text, str):
        raise ValueError(f"must be an address or CIDR block string, not {type(text).__name__}")
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR block") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped \
            and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


@attrs.frozen
class AccessRules:
    """
    Who may connect: the most specific block that holds the peer decides (C{allow} or
    C{deny}); at equal specificity C{deny} wins; a peer no rule holds is allowed.
    """

    allow: tuple = ()
    deny: tuple = ()

    def __add__(self, other: "AccessRules") -> "AccessRules":
        return AccessRules(self.allow + other.allow, self.deny + other.deny)

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def allows(self, host: str) -> bool:
        """
        Whether C{host} (an address string) may connect.
        """
        address = ipAddress(host)
        if address is None:
            return not self.deny
        best, allowed = -1, True
        for rules, verdict in ((self.allow, True), (self.deny, False)):
            for network in rules:
                if address.version == network.version and address in network:
                    if network.prefixlen > best or (network.prefixlen == best and not verdict):
                        best, allowed = network.prefixlen, verdict
        return allowed


@attrs.frozen
class ShutdownSpec:
    """
    How the server stops: C{drain} seconds for live connections to finish.
    """

    drain: float = 10.0


SHUTDOWN_SCHEMA = {
    "drain": Option((int, float), 10, seconds(inclusive=True),
                    describe="a number of seconds"),
}
