"""
The YAML configuration: loaded with marks, checked completely, turned into frozen values.

Every problem in a file is collected before anything is reported, each with its file, line,
column and service, so an operator fixes a config in one pass.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any, Callable, Iterable, Mapping

import attrs

from portserver import marks
from portserver.addresses import ipAddress
from portserver.marks import Mark, MarkedList, MarkedMap, markOf
from portserver.limits import (
    LIMITS_SCHEMA,
    SHUTDOWN_SCHEMA,
    AccessRules,
    Limits,
    ShutdownSpec,
    parseNetwork,
)
from portserver.options import Option, OptionsError, checkOptions, seconds
from portserver.proxyheader import VERSIONS, ProxyProtocol
from portserver.status.access import endpointIsLocal, readTokenFile, tokenProblem
from portserver.ports import lookupServicePort

TRANSPORTS = ("tcp", "udp")
DEFAULT_INTERFACE = "0.0.0.0"
SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

SERVICE_KEYS = ("name", "protocol", "port", "interface", "transports", "options", "limits",
                "access", "proxy_protocol")
TOP_KEYS = ("services", "status", "registry", "limits", "access", "shutdown", "workers")
ACCESS_KEYS = ("allow", "deny")
DEFAULT_STATUS_LISTEN = "tcp:8790:interface=127.0.0.1"
DEFAULT_CONNECTION_LOG = "connections.log"
#: The most closed connections the registry may keep queryable (each is a record of a few
#: hundred bytes); past it, a number only costs memory (and past 2**63, start-up fails).
MAX_CLOSED_LIMIT = 1_000_000
#: The largest config file read: a config is a few kilobytes; this keeps C{-c /dev/zero}
#: or a log given by mistake from filling the memory.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: The most worker processes C{workers:} may ask for (each is a Python process of some
#: tens of megabytes): a bound on what a typo can start.
MAX_WORKERS = 1024


@attrs.frozen
class ConfigProblem:
    """
    One thing wrong with a configuration, where it is, and which service it concerns.
    """

    path: str
    mark: Mark | None
    message: str
    service: str | None = None

    def __str__(self) -> str:
        where = (self.path if self.mark is None
                 else f"{self.path}:{self.mark.line}:{self.mark.column}")
        who = f" service {self.service!r}:" if self.service else ""
        return f"{where}:{who} {self.message}"


class ConfigError(Exception):
    """
    A configuration was refused; C{problems} holds every L{ConfigProblem} found.
    """

    def __init__(self, problems: Iterable[ConfigProblem]):
        self.problems = tuple(problems)
        super().__init__(self.report())

    def report(self) -> str:
        """
        The problems for a person: how many, then one a line. A file that could not be
        read at all is its reason alone (C{cannot read the config file: ...}), one line
        for the caller to put after the file's name.
        """
        if self.problems and all(p.mark is None for p in self.problems):
            return "; ".join(p.message for p in self.problems)
        count = len(self.problems)
        head = f"{count} configuration error{'s' if count != 1 else ''}:"
        return "\n".join([head] + [f"  {p}" for p in self.problems])


@attrs.frozen
class ServiceSpec:
    """
    One configured service, validated.

    @ivar port: the configured port (before any C{--port-offset}).
    @ivar interface: the address to listen on, normalised (C{"0.0.0.0"}, C{"::1"}, ...).
    @ivar options: the options as the protocol's C{validateOptions} returned them.
    @ivar limits: the effective L{Limits} (service, over global, over the plugin's).
    @ivar access: the L{AccessRules}: the top-level lists and the service's together.
    @ivar proxyProtocol: the C{proxy_protocol:} settings (L{ProxyProtocol}) when its
        connections come through proxies that send a PROXY protocol header, else
        L{None}.
    @ivar provider: the L{portserver.interfaces.IPortProtocol} provider.
    @ivar path: the config file; C{marks} maps a key to where its value stands.
    """

    name: str
    protocol: str
    port: int
    interface: str
    transports: tuple[str, ...]
    options: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    limits: Limits = Limits()
    access: AccessRules = AccessRules()
    proxyProtocol: ProxyProtocol | None = None
    provider: Any = attrs.field(default=None, eq=False, repr=False)
    path: str = attrs.field(default="<config>", eq=False, repr=False)
    marks: Mapping[str, Mark] = attrs.field(factory=dict, eq=False, repr=False)

    def mark(self, key: str) -> Mark:
        """
        Where C{key}'s value stood in the file (the service's own mark if absent).
        """
        return self.marks.get(key) or self.marks.get("", Mark(1, 1))


@attrs.frozen
class StatusSpec:
    """
    The status web service: C{listen} is a Twisted server endpoint string, or L{None}
    when the status service is off.

    @ivar token: the bearer token every request but those of the page's files (C{/},
        C{/static/}) must carry, or L{None} for none (allowed only on a local C{listen}:
        see L{endpointIsLocal}).
    @ivar metricsToken: the bearer token of C{/metrics}, in place of C{token}, or
        L{None} (then C{/metrics} wants C{token}, if any).
    @ivar urls: C{status.urls}, the status services (base URLs) that C{portserver status
        --config} shows in one view. Only the CLI uses them, so they are left out of
        equality: a reload that changes only them needs no restart.

    The tokens are left out of the C{repr}, so that no log line shows them.
    """

    listen: str | None = DEFAULT_STATUS_LISTEN
    token: str | None = attrs.field(default=None, repr=False)
    metricsToken: str | None = attrs.field(default=None, repr=False)
    urls: tuple[str, ...] = attrs.field(default=(), eq=False)


@attrs.frozen
class RegistrySpec:
    """
    Settings of the connection registry.

    @ivar closedLimit: how many closed connections stay queryable.
    @ivar udpIdle: seconds of silence after which a UDP flow expires.
    @ivar connectionLog: the file that gets one line per ended connection (see
        L{portserver.connlog}), or L{None} for no connection log. L{parseConfig} makes a
        relative path absolute from the directory the server is started in (where
        twistd puts C{twistd.pid} and C{twistd.log}): never from the config file's
        directory, which for the bundled config is inside the installed package.
    @ivar udpMaxFlows: the most live UDP flows; past it the least recently seen one is
        closed ("evicted").
    """

    closedLimit: int = 1000
    udpIdle: float = 60.0
    connectionLog: str | None = DEFAULT_CONNECTION_LOG
    udpMaxFlows: int = 10000


@attrs.frozen
class ServerConfig:
    """
    A whole validated configuration file.
    """

    path: str
    services: tuple[ServiceSpec, ...]
    status: StatusSpec = StatusSpec()
    registry: RegistrySpec = RegistrySpec()
    shutdown: ShutdownSpec = ShutdownSpec()
    #: How many worker processes serve the listeners (C{workers:}); 1 is one process
    #: serving everything itself. C{workersAuto}: it was C{auto} (the CPUs usable).
    workers: int = 1
    workersAuto: bool = attrs.field(default=False, eq=False)


def usableCPUs() -> int:
    """
    The number of CPUs this process may run on (its affinity mask), what
    C{workers: auto} starts; at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _workers(data: MarkedMap, collector, cpus: Callable[[], int]) -> tuple[int, bool]:
    """
    The top-level C{workers:}: a whole number from 1 to L{MAX_WORKERS}, or C{auto} (the
    CPUs usable, L{usableCPUs}); 1 when absent. A bad value is reported at it.
    """
    if "workers" not in data or data["workers"] is None:
        return 1, False
    value = data["workers"]
    if value == "auto":
        return min(cpus(), MAX_WORKERS), True
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value, False
    collector.add(data.valueMark("workers"),
                  f"'workers' must be a whole number from 1 to {MAX_WORKERS}, or auto "
                  f"(as many as the CPUs usable), not "
                  f"{value if isinstance(value, int) and not isinstance(value, bool) else _describe(value)}")
    return 1, False


class _NoReactor:
    """
    Stands in for a reactor while an endpoint string is only parsed, never listened on.
    """


def endpointProblem(description: str, error: Exception) -> str:
    """
    Why Twisted could not make a server endpoint of C{description}, for an operator:
    what each endpoint type's parser raises when its prerequisites are missing.
    """
    kind = description.split(":", 1)[0].lower()
    if isinstance(error, ImportError):
        return (f"{description!r}: the {kind}: endpoint needs a module that is not "
                f"installed ({error.name or error}): for ssl:, pip install 'twisted[tls]'")
    if isinstance(error, OSError):
        return (f"{description!r}: cannot read a file it names "
                f"({error.filename or ''}: {error.strerror or error})")
    if kind == "systemd" and isinstance(error, (IndexError, KeyError)):
        # Twisted looks the socket up in what LISTEN_FDS passed: a list (index=) or a
        # dict (name=), empty outside socket activation.
        which = ("at that index" if isinstance(error, IndexError)
                 else f"named {error.args[0]!r}" if error.args else "by that name")
        return (f"{description!r}: no socket was passed {which} (the systemd: "
                "endpoint serves a socket that systemd's socket activation passes, with "
                "LISTEN_FDS and LISTEN_FDNAMES, its FileDescriptorName=: this process "
                "was not started that way, or was passed no such socket)")
    if isinstance(error, (ValueError, TypeError, KeyError)):
        return f"{description!r} is not a Twisted server endpoint string ({error})"
    return f"{description!r}: {type(error).__name__}: {error}"


def _checkEndpoint(description: str) -> str | None:
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(_NoReactor(), description)
    except Exception as e:  # each endpoint type's parser raises its own kind
        return endpointProblem(description, e)
    return None


def _checkToken(value) -> str | None:
    return None if value is None else tokenProblem(value)


def _checkPath(value) -> str | None:
    return None if value is None or value.strip() else "must be a file path, not empty"


STATUS_SCHEMA = {
    "listen": Option((str, type(None)), default=DEFAULT_STATUS_LISTEN,
                     check=lambda v: None if v is None else _checkEndpoint(v),
                     describe="an endpoint string like 'tcp:8790:interface=127.0.0.1', "
                              "or null for no status service"),
    "token": Option((str, type(None)), check=_checkToken, describe="a string"),
    "token_file": Option((str, type(None)), check=_checkPath, describe="a file path"),
    "metrics_token": Option((str, type(None)), check=_checkToken, describe="a string"),
    "metrics_token_file": Option((str, type(None)), check=_checkPath,
                                 describe="a file path"),
    "urls": Option((list, type(None)),
                   check=lambda v: None if v else "must list at least one URL, or be left out",
                   describe="a list of status service URLs like 'http://127.0.0.1:8790'"),
}


def statusURLProblem(value) -> str | None:
    """
    Why C{value} is not the base URL of a status service (what C{portserver status
    --url} takes), or L{None}: C{http://} or C{https://}, a host, an optional port and
    path prefix; no query, fragment, credentials or spaces.
    """
    if not isinstance(value, str):
        return f"must be a URL like 'http://127.0.0.1:8790', not {_describe(value)}"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        return f"{value!r} is not an http:// or https:// URL"
    if any(c.isspace() for c in value):
        return f"{value!r} holds a space"
    try:
        parts.port
    except ValueError:
        return f"{value!r} has no valid port"
    if not parts.hostname:
        return f"{value!r} names no host"
    if parts.username is not None or parts.password is not None:
        return (f"{value!r} holds credentials: the status service takes a token "
                "(status.token_file, --token-file or PORTSERVER_TOKEN)")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        return f"{value!r} has a query or fragment (give the service's base URL)"
    return None


def _statusURLs(section, collector: _Collector) -> tuple[str, ...]:
    """
    The C{urls} of the C{status:} mapping C{section}, without a trailing slash, each
    item checked by L{statusURLProblem} and reported at its own line; C{()} when
    absent, not a list or empty (L{STATUS_SCHEMA} reports those) or when an item is
    wrong.
    """
    items = section.get("urls") if isinstance(section, dict) else None
    if not isinstance(items, list):
        return ()
    wrong = False
    for index, url in enumerate(items):
        problem = statusURLProblem(url)
        if problem is not None:
            wrong = True
            mark = items.itemMark(index) if isinstance(items, MarkedList) else \
                section.valueMark("urls")
            collector.add(mark, f"status: 'urls' item {index + 1}: {problem}")
    return () if wrong else tuple(url.rstrip("/") for url in items)


def statusURLs(data, path: str) -> tuple[tuple[str, ...], list[ConfigProblem]]:
    """
    The C{status.urls} of the config C{data} (as L{marks.load} gives it) read from
    C{path}, checked as the server checks them, for the CLI: only that key is read.

    @return: the URLs (C{()} when there are none) and the problems, located.
    """
    collector = _Collector(path)
    section = data.get("status") if isinstance(data, dict) else None
    if not isinstance(section, dict) or section.get("urls") is None:
        return (), []
    try:
        checkOptions({"urls": section["urls"]}, {"urls": STATUS_SCHEMA["urls"]})
    except OptionsError as e:
        for p in e.problems:
            collector.add(section.keyMark("urls"), f"status: 'urls' {p.message}")
        return (), collector.problems
    return _statusURLs(section, collector), collector.problems


def _statusSpec(data: MarkedMap, collector: _Collector) -> StatusSpec:
    """
    The C{status:} section: where to listen and the tokens, each given inline or as a
    file (relative to the config file's directory), never both; a C{listen} that is not
    local (L{endpointIsLocal}) must have a C{token}.
    """
    if "status" in data and data["status"] in (None, False):  # `status: off`
        return StatusSpec(None)
    before = len(collector.problems)
    settings = _section(data, "status", STATUS_SCHEMA, collector)
    urls = _statusURLs(data.get("status"), collector)
    if len(collector.problems) > before:
        return StatusSpec(settings["listen"])
    section = data.get("status") or MarkedMap()

    def token(inline: str, fileKey: str) -> str | None:
        if settings[inline] is not None and settings[fileKey] is not None:
            collector.add(section.keyMark(fileKey),
                          f"status: give '{inline}' or '{fileKey}', not both")
            return None
        if settings[fileKey] is None:
            return settings[inline]
        given = settings[fileKey]
        try:
            return readTokenFile(os.path.join(os.path.dirname(collector.path), given))
        except ValueError as e:
            collector.add(section.valueMark(fileKey), f"status: '{fileKey}': {e}")
            return None

    mainToken = token("token", "token_file")
    metricsToken = token("metrics_token", "metrics_token_file")
    listen = settings["listen"]
    if (listen is not None and settings["token"] is None and settings["token_file"] is None
            and not endpointIsLocal(listen)):
        collector.add(section.valueMark("listen"),
                      f"status.listen {listen!r} is not loopback: set status.token or "
                      "status.token_file (a status service others can reach must ask for "
                      "a token)")
    return StatusSpec(listen, mainToken, metricsToken, urls)


def _checkConnectionLog(value) -> str | None:
    if value is True:
        return "must be a file path, or off"
    if isinstance(value, str) and not value.strip():
        return "must be a file path, or off (an empty path names no file)"
    return None


REGISTRY_SCHEMA = {
    "closed_limit": Option(int, default=1000,
                           check=lambda v: None if 0 <= v <= MAX_CLOSED_LIMIT
                           else f"must be 0 to {MAX_CLOSED_LIMIT}"),
    "udp_idle": Option((int, float), default=60, check=seconds(),
                       describe="a number of seconds"),
    "udp_max_flows": Option(int, default=10000,
                            check=lambda v: None if 1 <= v <= 10_000_000
                            else "must be 1 to 10000000",
                            describe="a number of flows"),
    "connection_log": Option((str, bool, type(None)), default=DEFAULT_CONNECTION_LOG,
                             check=_checkConnectionLog,
                             describe="a file path, or off for no connection log"),
}


def _section(data: MarkedMap, key: str, schema, collector) -> dict[str, Any]:
    """
    Check the top-level mapping C{key} against C{schema}; defaults when absent.
    """
    value = data.get(key)
    if value is None:
        value = MarkedMap()
    if not isinstance(value, dict):
        collector.add(data.valueMark(key), f"'{key}' must be a mapping, not {_describe(value)}")
        return checkOptions({}, schema)
    try:
        return checkOptions(value, schema)
    except OptionsError as e:
        _reportSection(e, data, key, collector)
        return checkOptions({}, schema)


def _reportSection(error: OptionsError, data: MarkedMap, key: str, collector,
                   service=None) -> None:
    """
    Report each problem of the mapping C{data[key]}, at the key it names.
    """
    value = data[key]
    for p in error.problems:
        mark = value.keyMark(p.option) if p.option in value else data.valueMark(key)
        collector.add(mark, f"{key}: '{p.option}' {p.message}" if p.option
                      else f"{key}: {p.message}", service)


def _givenLimits(data: MarkedMap, key: str, collector, service=None) -> dict[str, Any]:
    """
    The keys given in the C{limits:} mapping C{data[key]}, checked (only those given, so
    that layers of limits can be put one over the other).
    """
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        collector.add(data.valueMark(key), f"'{key}' must be a mapping, not {_describe(value)}",
                      service)
        return {}
    try:
        checked = checkOptions(value, LIMITS_SCHEMA)
    except OptionsError as e:
        _reportSection(e, data, key, collector, service)
        return {}
    return {k: checked[k] for k in value}


def _networks(items, value: MarkedMap, name: str, key: str, collector, service) -> list:
    """
    The networks of C{items} (addresses and CIDR blocks, the list under C{name} in the
    C{key} section C{value}); each one that is not is reported at its own mark.
    """
    networks = []
    for index, text in enumerate(items):
        try:
            networks.append(parseNetwork(text))
        except ValueError as e:
            mark = items.itemMark(index) if isinstance(items, MarkedList) else \
                value.valueMark(name)
            collector.add(mark, f"{key}: '{name}' item {index + 1}: {e}", service)
    return networks


def _accessRules(data: MarkedMap, key: str, collector, service=None) -> AccessRules:
    """
    The C{access:} mapping C{data[key]}: C{allow} and C{deny} lists of addresses and CIDR
    blocks, each checked.
    """
    value = data.get(key)
    if value is None:
        return AccessRules()
    if not isinstance(value, dict):
        collector.add(data.valueMark(key), f"'{key}' must be a mapping with allow and/or "
                                           f"deny lists, not {_describe(value)}", service)
        return AccessRules()
    lists = {}
    for name in value:
        if name not in ACCESS_KEYS:
            collector.add(value.keyMark(name), f"{key}: unknown key {name!r} (known: allow, "
                                               "deny)", service)
    for name in ACCESS_KEYS:
        items = value.get(name)
        if items is None:
            lists[name] = ()
            continue
        if not isinstance(items, list):
            collector.add(value.valueMark(name), f"{key}: '{name}' must be a list of addresses "
                                                 f"and CIDR blocks, not {_describe(items)}",
                          service)
            lists[name] = ()
            continue
        networks = _networks(items, value, name, key, collector, service)
        lists[name] = tuple(networks)
    return AccessRules(lists["allow"], lists["deny"])


def _checkVersions(value) -> str | None:
    if not value:
        return "must list 1, 2 or both"
    for version in value:
        if isinstance(version, bool) or version not in VERSIONS:
            return f"must list 1, 2 or both, not {version!r}"
    if len(set(value)) != len(value):
        return "lists a version twice"
    return None


PROXY_PROTOCOL_SCHEMA = {
    "from": Option(list, required=True,
                   describe="a list of the proxies' addresses and CIDR blocks"),
    "versions": Option(list, default=list(VERSIONS), check=_checkVersions,
                       describe="a list of 1, 2 or both"),
    "timeout": Option((int, float), default=5, check=seconds(),
                      describe="a number of seconds"),
}


def _proxyProtocol(item: MarkedMap, transports, collector, service=None
                   ) -> ProxyProtocol | None:
    """
    A service's C{proxy_protocol:} mapping: C{from} (required, the proxies' addresses
    and CIDR blocks, each checked), C{versions} and C{timeout}; for TCP only.
    """
    key = "proxy_protocol"
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        collector.add(item.valueMark(key), f"'{key}' must be a mapping with 'from' (the "
                                           f"proxies' addresses), not {_describe(value)}",
                      service)
        return None
    if "udp" in transports:
        collector.add(item.keyMark(key), f"'{key}' is for TCP: the PROXY protocol carries "
                                         "no UDP; give the udp transport a service of its "
                                         "own", service)
    settings = None
    try:
        settings = checkOptions(value, PROXY_PROTOCOL_SCHEMA)
    except OptionsError as e:
        _reportSection(e, item, key, collector, service)
    items = value.get("from")
    if not isinstance(items, list):
        return None  # reported above
    if not items:
        collector.add(value.valueMark("from"), f"{key}: 'from' must list at least one proxy "
                                               "(an address or CIDR block)", service)
        return None
    networks = _networks(items, value, "from", key, collector, service)
    if settings is None or len(networks) != len(items):
        return None
    return ProxyProtocol(tuple(networks), tuple(sorted(settings["versions"])),
                         float(settings["timeout"]))


class _Collector:
    """
    Gathers the problems of one file.
    """

    def __init__(self, path: str):
        self.path = path
        self.problems: list[ConfigProblem] = []

    def add(self, mark: Mark, message: str, service: str | None = None) -> None:
        self.problems.append(ConfigProblem(self.path, mark, message, service))


def _describe(value) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", MarkedMap: "a mapping", list: "a list",
            MarkedList: "a list", str: "a string", bool: "a boolean",
            int: "a whole number", float: "a fractional number"}.get(type(value), type(value).__name__)


def normaliseInterface(value: str) -> str | None:
    """
    The canonical text of an IP address (IPv4-mapped IPv6 as IPv4), or L{None}.
    """
    address = ipAddress(value)
    return None if address is None else str(address)


class _ServiceParser:
    """
    Checks one C{services:} item; every problem goes to the collector.
    """

    def __init__(self, collector: _Collector, providers: Mapping[str, Any],
                 servicePort: Callable[[str, str], int | None],
                 globalLimits: Mapping[str, Any] | None = None,
                 globalAccess: AccessRules = AccessRules()):
        self.collector = collector
        self.providers = providers
        self.servicePort = servicePort
        self.globalLimits = globalLimits or {}
        self.globalAccess = globalAccess

    def parse(self, item, itemMark: Mark) -> ServiceSpec | None:
        add = self.collector.add
        if not isinstance(item, MarkedMap):
            add(itemMark, f"a service must be a mapping, not {_describe(item)}")
            return None
        name = item.get("name")
        label = name if isinstance(name, str) and name else None
        before = len(self.collector.problems)

        def problem(key: str | None, message: str, atKey: bool = False) -> None:
            if key is None:
                mark = item.mark
            else:
                mark = item.keyMark(key) if atKey else item.valueMark(key)
            add(mark, message, label)

        for key in item:
            if key not in SERVICE_KEYS:
                problem(key, f"unknown key {key!r} (known: {', '.join(SERVICE_KEYS)})",
                        atKey=True)

        if "name" not in item:
            problem(None, "missing required key 'name'")
        elif not isinstance(name, str):
            problem("name", f"'name' must be a string, not {_describe(name)}")
        elif not SERVICE_NAME.match(name):
            problem("name", f"'name' {name!r} must start with a letter or digit and hold "
                            "only letters, digits, '.', '_' and '-'")

        protocolName = item.get("protocol")
        provider = None
        if "protocol" not in item:
            problem(None, "missing required key 'protocol'")
        elif not isinstance(protocolName, str):
            problem("protocol", f"'protocol' must be a string, not {_describe(protocolName)}")
        else:
            provider = self.providers.get(protocolName)
            if provider is None:
                known = ", ".join(sorted(self.providers)) or "none"
                problem("protocol", f"unknown protocol {protocolName!r} (known: {known})")

        transports = self._transports(item, provider, problem)
        port = self._port(item, provider, transports, problem)

        interface = DEFAULT_INTERFACE
        if "interface" in item:
            value = item["interface"]
            if not isinstance(value, str):
                problem("interface", f"'interface' must be an IP address string, "
                                     f"not {_describe(value)}")
            else:
                interface = normaliseInterface(value)
                if interface is None:
                    problem("interface", f"'interface' {value!r} is not an IPv4 or IPv6 "
                                         "address (use 0.0.0.0 or :: for all)")

        options: Mapping[str, Any] = {}
        rawOptions = item.get("options", MarkedMap())
        if rawOptions is None:
            rawOptions = MarkedMap()
        if not isinstance(rawOptions, dict):
            problem("options", f"'options' must be a mapping, not {_describe(rawOptions)}")
        elif provider is not None:
            try:
                options = provider.validateOptions(rawOptions)
            except OptionsError as e:
                for p in e.problems:
                    if p.option is not None and p.option in rawOptions:
                        mark = rawOptions.keyMark(p.option) if isinstance(
                            rawOptions, MarkedMap) else item.valueMark("options")
                        add(mark, f"option {p.option!r}: {p.message}", label)
                    else:
                        about = f"option {p.option!r}: " if p.option is not None else ""
                        add(item.valueMark("options") if "options" in item else item.mark,
                            f"options: {about}{p.message}", label)
            except Exception as e:  # a plugin bug must not become a traceback
                problem("options" if "options" in item else None,
                        f"protocol {protocolName!r} failed to check its options: "
                        f"{type(e).__name__}: {e}")

        given = _givenLimits(item, "limits", self.collector, label)
        access = _accessRules(item, "access", self.collector, label)
        proxyProtocol = _proxyProtocol(item, transports, self.collector, label)
        if len(self.collector.problems) > before:
            return None
        layered = dict(getattr(provider, "defaultLimits", None) or {})
        layered.update(self.globalLimits)
        layered.update(given)
        limits = Limits.fromOptions({**checkOptions({}, LIMITS_SCHEMA), **layered})

        specMarks = {key: item.valueMark(key) for key in item}
        specMarks[""] = item.mark
        return ServiceSpec(name=name, protocol=protocolName, port=port, interface=interface,
                           transports=transports, options=options, limits=limits,
                           access=self.globalAccess + access,
                           proxyProtocol=proxyProtocol, provider=provider,
                           path=self.collector.path, marks=specMarks)

    def _transports(self, item, provider, problem) -> tuple[str, ...]:
        if "transports" not in item:
            return ("tcp",)
        value = item["transports"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            problem("transports", "'transports' must be a non-empty list of "
                                  f"{' and '.join(TRANSPORTS)}")
            return ()
        result = []
        for transport in value:
            if transport not in TRANSPORTS:
                problem("transports", f"unknown transport {transport!r} "
                                      f"(known: {', '.join(TRANSPORTS)})")
            elif transport in result:
                problem("transports", f"transport {transport!r} is listed twice")
            elif provider is not None and transport not in provider.transports:
                problem("transports", f"protocol {provider.name!r} has no {transport} "
                                      f"transport (it has: "
                                      f"{', '.join(sorted(provider.transports))})")
            else:
                result.append(transport)
        return tuple(result)

    def _port(self, item, provider, transports, problem) -> int:
        if "port" not in item:
            return provider.wellKnownPort if provider is not None else 0
        value = item["port"]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            problem("port", f"'port' must be a whole number or a service name, not {_describe(value)}")
            return 0
        if isinstance(value, str):
            if value.isascii() and value.isdigit():
                value = int(value)
            else:
                ports = {self.servicePort(value, t) for t in transports or ("tcp",)}
                if None in ports or len(ports) != 1:
                    problem("port", f"'port' {value!r} is not a service name known to "
                                    "/etc/services for "
                                    f"{'/'.join(transports or ('tcp',))}")
                    return 0
                value = ports.pop()
        if not 1 <= value <= 65535:
            problem("port", f"'port' {value} is outside 1-65535")
            return 0
        return value


def parseServices(text: str, path: str, providers: Mapping[str, Any],
                  servicePort: Callable[[str, str], int | None] = lookupServicePort,
                  ) -> tuple[list[ServiceSpec], list[ConfigProblem]]:
    """
    Check the configuration C{text} (read from C{path}).

    @return: the services that are valid and every problem found (services with a
        problem are left out).
    """
    specs, _, _, _, problems = parseConfig(text, path, providers, servicePort)
    return specs, problems


def parseConfig(text: str, path: str, providers: Mapping[str, Any],
                servicePort: Callable[[str, str], int | None] = lookupServicePort,
                ) -> tuple[list[ServiceSpec], StatusSpec, RegistrySpec, ShutdownSpec,
                           list[ConfigProblem]]:
    """
    Check the configuration C{text} (read from C{path}): services, C{status:},
    C{registry:}, C{limits:}, C{access:}, C{shutdown:} and C{workers:} (whose value
    L{parseServerConfig} gives).

    @return: the valid services, the status, registry and shutdown settings, and every
        problem.
    """
    config, problems = parseServerConfig(text, path, providers, servicePort)
    return (list(config.services), config.status, config.registry, config.shutdown,
            problems)


def parseServerConfig(text: str, path: str, providers: Mapping[str, Any],
                      servicePort: Callable[[str, str], int | None] = lookupServicePort,
                      cpus: Callable[[], int] = usableCPUs,
                      ) -> tuple[ServerConfig, list[ConfigProblem]]:
    """
    Check the configuration C{text} (read from C{path}), as L{parseConfig} does, and
    C{workers:} too.

    @param cpus: how many CPUs C{workers: auto} means (by default L{usableCPUs}).
    @return: the L{ServerConfig} of the valid parts (services with a problem are left
        out) and every problem.
    """
    specs, data, problems = _parseServices(text, path, providers, servicePort)
    collector = _Collector(path)
    collector.problems = problems
    status, registry, shutdown = StatusSpec(), RegistrySpec(), ShutdownSpec()
    workers, auto = 1, False
    if isinstance(data, MarkedMap):
        status = _statusSpec(data, collector)
        settings = _section(data, "registry", REGISTRY_SCHEMA, collector)
        connectionLog = settings["connection_log"]
        registry = RegistrySpec(settings["closed_limit"], float(settings["udp_idle"]),
                                os.path.abspath(connectionLog) if connectionLog else None,
                                settings["udp_max_flows"])
        shutdown = ShutdownSpec(float(_section(data, "shutdown", SHUTDOWN_SCHEMA,
                                               collector)["drain"]))
        workers, auto = _workers(data, collector, cpus)
    return (ServerConfig(path, tuple(specs), status, registry, shutdown, workers, auto),
            collector.problems)


def _parseServices(text, path, providers, servicePort):
    collector = _Collector(path)
    data, yamlProblems = marks.load(text)
    for p in yamlProblems:
        collector.add(p.mark, p.message)
    if data is None and yamlProblems:
        return [], data, collector.problems
    if data is None:
        collector.add(Mark(1, 1), "the file is empty: expected a mapping with 'services:'")
        return [], data, collector.problems
    if not isinstance(data, MarkedMap):
        collector.add(markOf(data, Mark(1, 1)),
                      f"the file must hold a mapping with 'services:', not {_describe(data)}")
        return [], data, collector.problems
    for key in data:
        if key not in TOP_KEYS:
            collector.add(data.keyMark(key),
                          f"unknown top-level key {key!r} (known: {', '.join(TOP_KEYS)})")
    services = data.get("services")
    if "services" not in data:
        collector.add(data.mark, "missing required key 'services'")
        return [], data, collector.problems
    if services is None:
        services = MarkedList()
    if not isinstance(services, MarkedList):
        collector.add(data.valueMark("services"),
                      f"'services' must be a list, not {_describe(services)}")
        return [], data, collector.problems

    parser = _ServiceParser(collector, providers, servicePort,
                            _givenLimits(data, "limits", collector),
                            _accessRules(data, "access", collector))
    specs: list[ServiceSpec] = []
    seen: dict[str, Mark] = {}
    for index, item in enumerate(services):
        spec = parser.parse(item, services.itemMark(index))
        name = item.get("name") if isinstance(item, MarkedMap) else None
        if isinstance(name, str) and name:
            mark = item.valueMark("name")
            if name in seen:
                collector.add(mark, f"duplicate service name (first defined at line "
                                    f"{seen[name].line})", name)
                continue
            seen[name] = mark
        if spec is not None:
            specs.append(spec)
    return specs, data, collector.problems


def readConfig(path: str) -> tuple[str | None, list[ConfigProblem]]:
    """
    Read a config file's text, or say why it could not be read: a file that cannot be
    opened, or is over L{MAX_CONFIG_BYTES}, at no position; bytes that are not UTF-8 at
    the line and column of the first.
    """
    def refused(reason: str, mark: Mark | None = None):
        return None, [ConfigProblem(path, mark, f"cannot read the config file: {reason}")]

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        return refused(e.strerror or str(e))
    if len(data) > MAX_CONFIG_BYTES:
        return refused(f"it is larger than {MAX_CONFIG_BYTES // 2**20} MiB (a config is a "
                       "few kilobytes: is this the right file?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineStart = data.rfind(b"\n", 0, e.start) + 1
        column = len(data[lineStart:e.start].decode("utf-8", "replace")) + 1
        return refused(f"it is not UTF-8 text (byte {data[e.start]:#04x} here): save it "
                       "as UTF-8", Mark(data.count(b"\n", 0, e.start) + 1, column))
    # As text mode would read it: \r\n and \r are line ends.
    return text.replace("\r\n", "\n").replace("\r", "\n"), []
