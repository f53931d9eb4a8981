"""
The port plan: what a configuration will bind, one L{Listener} per service and transport.

This is what C{--check} prints and what the service tree is built from. Conflicts between
services (one port of one transport given twice on overlapping interfaces) are found here,
on the ports that will really be bound, after C{--port-offset}.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Mapping

import attrs

from portserver.config import (
    ConfigError,
    ConfigProblem,
    ServerConfig,
    ServiceSpec,
    parseServerConfig,
    readConfig,
)
from portserver.ports import PrivilegeRule, lookupServicePort, portClass

BINDV6ONLY_FILE = "/proc/sys/net/ipv6/bindv6only"


def hostIsDualStack(readFile: Callable[[str], str] | None = None) -> bool:
    """
    Whether a socket bound to C{::} also takes IPv4 (Linux C{net.ipv6.bindv6only} = 0,
    which is also what most other systems do by default for Twisted's sockets).
    """
    if readFile is None:
        def readFile(path):
            with open(path) as f:
                return f.read()
    try:
        return readFile(BINDV6ONLY_FILE).strip() == "0"
    except OSError:
        return True


@attrs.frozen
class Listener:
    """
    One passive open: a service's protocol on one transport, interface and port.

    @ivar port: the port that is bound (after C{--port-offset}).
    @ivar configuredPort: the port the config gives (or the protocol's default).
    @ivar wellKnownPort: the protocol's well-known port.
    """

    service: str
    protocol: str
    transport: str
    interface: str
    port: int
    configuredPort: int
    wellKnownPort: int
    privileged: bool
    spec: ServiceSpec = attrs.field(eq=False, repr=False)

    @property
    def portClass(self) -> str:
        return portClass(self.port)

    @property
    def key(self) -> tuple[str, str, str, int]:
        """
        What identifies this listener's socket: service, transport, interface, port.
        """
        return (self.service, self.transport, self.interface, self.port)

    def describe(self) -> str:
        """
        C{echo/tcp 127.0.0.1:7}: service, transport and address, for messages.
        """
        host = f"[{self.interface}]" if ":" in self.interface else self.interface
        return f"{self.service}/{self.transport} {host}:{self.port}"

    def asDict(self) -> dict[str, Any]:
        return {"service": self.service, "protocol": self.protocol,
                "transport": self.transport, "host": self.interface, "port": self.port,
                "configured_port": self.configuredPort,
                "well_known_port": self.wellKnownPort, "class": self.portClass,
                "privileged": self.privileged,
                "limits": self.spec.limits.asOptions(self.transport),
                **({"proxy_protocol": self.spec.proxyProtocol.asDict()}
                   if self.spec.proxyProtocol is not None else {})}


@attrs.frozen
class Plan:
    """
    Every listener of a configuration, in config order.
    """

    config: ServerConfig
    listeners: tuple[Listener, ...]
    portOffset: int = 0
    rule: PrivilegeRule = PrivilegeRule()


def _overlap(a: str, b: str, dualStack: bool) -> bool:
    """
    Whether sockets bound to interfaces C{a} and C{b} (same port, same transport) collide.
    """
    if a == b:
        return True
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    for one, other in ((x, y), (y, x)):
        if one.is_unspecified:
            if one.version == other.version:
                return True
            if one.version == 6 and dualStack:
                return True
    return False


def planListeners(services: Iterable[ServiceSpec], portOffset: int = 0,
                  rule: PrivilegeRule = PrivilegeRule(), dualStack: bool = True,
                  ) -> tuple[list[Listener], list[ConfigProblem]]:
    """
    Turn services into listeners, applying C{portOffset} to ports below 1024, and find
    the conflicts among them.
    """
    listeners: list[Listener] = []
    problems: list[ConfigProblem] = []
    for spec in services:
        port = spec.port + portOffset if 0 < spec.port < 1024 else spec.port
        if port > 65535:
            problems.append(ConfigProblem(
                spec.path, spec.mark("port"),
                f"port {spec.port} with --port-offset {portOffset} is {port}, "
                "beyond 65535", spec.name))
            continue
        for transport in spec.transports:
            listeners.append(Listener(
                service=spec.name, protocol=spec.protocol, transport=transport,
                interface=spec.interface, port=port, configuredPort=spec.port,
                wellKnownPort=spec.provider.wellKnownPort if spec.provider else spec.port,
                privileged=rule.isPrivileged(port), spec=spec))

    byPort: dict[tuple[str, int], list[Listener]] = {}
    for listener in listeners:
        byPort.setdefault((listener.transport, listener.port), []).append(listener)
    for (transport, port), group in byPort.items():
        if port == 0:  # "any free port" (embedding and tests only): the OS picks apart
            continue
        for i, later in enumerate(group):
            for earlier in group[:i]:
                if earlier.service == later.service:
                    continue
                if _overlap(earlier.interface, later.interface, dualStack):
                    problems.append(ConfigProblem(
                        later.spec.path, later.spec.mark("port"),
                        f"{transport} port {port} on {later.interface} overlaps service "
                        f"{earlier.service!r} ({earlier.interface}, line "
                        f"{earlier.spec.mark('').line}): a host cannot give one {transport} "
                        "port to two services", later.service))
                    break
    return listeners, problems


def forwardTarget(options: Mapping[str, Any]) -> tuple[str, int] | None:
    """
    The host and port a C{forward} service's options connect to: C{host} and C{port},
    or a C{tcp:}/C{tcp6:} C{target} endpoint string (positional or C{host=}/C{port=});
    L{None} for any other endpoint type.
    """
    if options.get("target") is None:
        host, port = options.get("host"), options.get("port")
        return (host, port) if host is not None and port is not None else None
    kind, *args = options["target"].split(":")
    if kind not in ("tcp", "tcp6"):
        return None
    named = dict(a.split("=", 1) for a in args if "=" in a)
    positional = [a for a in args if "=" not in a]
    host = named.get("host", positional[0] if positional else None)
    port = named.get("port", positional[1] if len(positional) > 1 else None)
    try:
        return (host, int(port)) if host else None
    except (TypeError, ValueError):
        return None


def _isThisHost(target: str, interface: str) -> bool:
    """
    Whether a connection to C{target} reaches a socket bound to C{interface} here:
    C{localhost}, a loopback address (to a listener on loopback or every address), or
    the listener's own address.
    """
    target = target.strip("[]").lower()
    if target in (interface, "localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(target)
    except ValueError:
        return False
    listening = ipaddress.ip_address(interface)
    return (address.is_loopback or address.is_unspecified) and (
        listening.is_unspecified or listening.is_loopback)


def selfForwards(services, listeners) -> list[ConfigProblem]:
    """
    A problem for each C{forward} service whose target is one of this plan's own TCP
    listeners: one connection would chain connections to itself until descriptors run
    out.
    """
    problems = []
    for spec in services:
        if spec.protocol != "forward":
            continue
        target = forwardTarget(spec.options)
        if target is None:
            continue
        host, port = target
        for listener in listeners:
            if (listener.transport == "tcp" and listener.port == port
                    and _isThisHost(host, listener.interface)):
                problems.append(ConfigProblem(
                    spec.path, spec.mark("options"),
                    f"forward target {host}:{port} is this server's own listener "
                    f"{listener.describe()}: each connection would connect to itself "
                    "again, without end", spec.name))
                break
    return problems


def loadPlan(path: str, providers: Mapping[str, Any], portOffset: int = 0,
             rule: PrivilegeRule | None = None, dualStack: bool | None = None,
             servicePort: Callable[[str, str], int | None] = lookupServicePort,
             text: str | None = None) -> Plan:
    """
    Read, check and plan the configuration at C{path}.

    @param text: the file's content, when already read (C{path} then only names it).
    @raise ConfigError: with every problem in the file, before anything is bound.
    """
    rule = PrivilegeRule.fromHost() if rule is None else rule
    dualStack = hostIsDualStack() if dualStack is None else dualStack
    if text is None:
        text, problems = readConfig(path)
        if text is None:
            raise ConfigError(problems)
    config, problems = parseServerConfig(text, path, providers, servicePort)
    services = config.services
    listeners, conflicts = planListeners(services, portOffset, rule, dualStack)
    conflicts += selfForwards(services, listeners)
    problems = sorted(problems + conflicts, key=lambda p: (p.mark.line, p.mark.column))
    if problems:
        raise ConfigError(problems)
    return Plan(config, tuple(listeners), portOffset, rule)


def formatPlan(plan: Plan) -> str:
    """
    The plan as a table for people (what C{--check} prints).
    """
    header = ("SERVICE", "PROTOCOL", "TRANSPORT", "INTERFACE", "PORT", "WELL-KNOWN",
              "PRIVILEGED")
    rows = [header]
    for l in plan.listeners:
        port = str(l.port) if l.port == l.configuredPort else f"{l.port} (from {l.configuredPort})"
        rows.append((l.service, l.protocol, l.transport, l.interface, port,
                     str(l.wellKnownPort), "yes" if l.privileged else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    privileged = sum(1 for l in plan.listeners if l.privileged)
    lines.append("")
    lines.append(f"{len(plan.listeners)} listener(s) for {len(plan.config.services)} "
                 f"service(s) in {plan.config.path}; {privileged} on privileged ports "
                 f"(below {plan.rule.unprivilegedStart}, {plan.rule.source})"
                 + (f"; port offset {plan.portOffset}" if plan.portOffset else ""))
    if plan.config.workers > 1:
        lines.append(f"{plan.config.workers} worker processes"
                     + (" (workers: auto, the CPUs usable)" if plan.config.workersAuto
                        else "")
                     + " serve every listener, each on a SO_REUSEPORT socket of its own")
    lines.append("")
    lines.append("LIMITS (null: none)")
    for spec in plan.config.services:
        for transport in spec.transports:
            shown = ", ".join(f"{key} {'null' if value is None else value}"
                              for key, value in spec.limits.asOptions(transport).items())
            lines.append(f"{spec.name}/{transport}: {shown}")
    proxied = [spec for spec in plan.config.services if spec.proxyProtocol is not None]
    if proxied:
        lines.append("")
        lines.append("PROXY PROTOCOL (the real client comes in a header from these proxies)")
        for spec in proxied:
            settings = spec.proxyProtocol.asDict()
            lines.append(f"{spec.name}: from {', '.join(settings['from'])}; versions "
                         f"{', '.join(map(str, settings['versions']))}; timeout "
                         f"{settings['timeout']:g}s")
    return "\n".join(lines)
