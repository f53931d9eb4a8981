"""
C{portserver}: the command line of a running portserver.

C{portserver reload} sends SIGHUP to the server named by twistd's pid file and reports
the outcome, read from the status service.

C{portserver status} asks a server's status web service (see L{portserver.status.web})
for its listeners, connections and summary, and prints them as an C{ss}-like table: one
line per listener, its connections indented under it, then a summary. The CLI is a plain
program: it fetches with the standard library and runs no reactor.

Where to ask: C{--url}; else the C{status.listen} endpoint string of C{--config},
turned into a URL by L{urlFromEndpoint}; else the server whose runtime file is beside
the pid file (C{--pidfile}, by default C{twistd.pid}: see L{portserver.runtime}), while
its pid is a live portserver; else the bundled config's C{status.listen}. Several
C{--url}s (or a C{--config} whose C{status.urls} lists several) are shown in one view,
with a server column (L{runStatusOfMany}); C{portserver status} then exits
L{EXIT_FAILED} when any of them could not be asked, after printing the others.

Which process C{portserver reload} signals: the pid file's, only once it is known to be a
live portserver (its command line runs twistd's C{portserver}, or it is the C{pid} the
status service reports). Exit statuses: L{EXIT_OK}, L{EXIT_FAILED}, L{EXIT_USAGE}, and
for C{reload} L{EXIT_UNCONFIRMED}.

With what token (L{findToken}): the one in the file C{--token-file} names, else the
environment variable C{PORTSERVER_TOKEN}, else (when the URL comes from a config) the
config's C{status.token} or C{status.token_file}; else none. There is no option that
takes the token itself: it would show in C{ps}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import http.client
import ipaddress
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterable

import attrs
import yaml

from portserver import __version__
from portserver import marks
from portserver.config import DEFAULT_STATUS_LISTEN, statusURLs
from portserver.runtime import (commandLine, describeCommand, isPortserverCommand,
                                readRuntime, runtimePath)
from portserver.status import tcptext
from portserver.status.access import readTokenFile, splitEndpoint, tokenProblem

#: Seconds to wait for the status service, per request.
TIMEOUT = 5.0

#: twistd's pid file when not told otherwise (in the directory it runs in).
DEFAULT_PIDFILE = "twistd.pid"

#: Seconds C{portserver reload} waits for the outcome.
RELOAD_TIMEOUT = 10.0

PORT_CLASSES = ("well-known", "registered", "dynamic")

PROGRAM = "portserver"

#: The environment variable that may hold the status service's token.
TOKEN_ENV = "PORTSERVER_TOKEN"

#: Exit statuses. OK: done (status printed; reload applied, or only sent with
#: C{--no-wait}). FAILED: an error, nothing done (no server, stale pid file, ...), or
#: a reload that was rejected. USAGE: bad command line. UNCONFIRMED: C{reload} sent
#: SIGHUP but cannot tell the outcome (no status service answers, or none reported
#: within C{--timeout}).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNCONFIRMED = 0, 1, 2, 3


class CLIError(Exception):
    """
    A problem to report as one line on stderr, with exit status C{status}.
    """

    status = EXIT_FAILED


class Unconfirmed(CLIError):
    """
    The signal was sent, but its outcome is not known.
    """

    status = EXIT_UNCONFIRMED


class NotAnswered(CLIError):
    """
    A status service could not be asked; C{reason} says why in a few words (the
    message names the service too).
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class FetchError(Exception):
    """
    The status service did not answer a request usefully; the message says why.
    """


class Unauthorized(FetchError):
    """
    The status service answered 401: it wants a token, or another one.
    """


# -- where the status service is -----------------------------------------------------------


#: For each endpoint type the CLI understands: the URL scheme, the order of its positional
#: parameters (as Twisted's parsers take them), and the interface it binds by default.
_ENDPOINTS = {
    "tcp": ("http", ("port", "interface", "backlog"), "0.0.0.0"),
    "tcp6": ("http", ("port", "backlog", "interface"), "::"),
    "ssl": ("https", ("port", "privateKey", "certKey", "sslmethod", "interface"), "0.0.0.0"),
}


def formatHostPort(host: str, port) -> str:
    """
    C{host:port}, with an IPv6 host in brackets: C{[::1]:7}.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def urlFromEndpoint(description: str) -> str:
    """
    The URL of a status service listening on the Twisted server endpoint C{description}
    (C{tcp:8790:interface=127.0.0.1}, C{tcp:port=8790}, C{tcp6:8790:interface=\\:\\:1},
    C{ssl:8443:...}). A wildcard interface (all addresses) is reached on loopback.

    @raise CLIError: the endpoint has no port the CLI can connect to.
    """
    args, kwargs = splitEndpoint(description)
    kind = args[0]
    if kind == "unix":
        raise CLIError(f"the status service listens on a UNIX socket ({description!r}), "
                       "which is not supported by the CLI; use --url")
    if kind not in _ENDPOINTS:
        raise CLIError(f"the status endpoint {description!r} (type {kind!r}) is not supported "
                       "by the CLI; use --url")
    scheme, positional, wildcard = _ENDPOINTS[kind]
    params = dict(zip(positional, args[1:]))
    params.update(kwargs)
    port = params.get("port", "")
    if not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        raise CLIError(f"the status endpoint {description!r} has no usable port; use --url")
    host = params.get("interface") or wildcard
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        address = None  # a host name: connect to it as it is
    if address is not None and address.is_unspecified:
        host = "::1" if address.version == 6 else "127.0.0.1"
    return f"{scheme}://{formatHostPort(host, int(port))}"


def _statusSection(path: str) -> dict:
    """
    The C{status} mapping of the config file at C{path} (empty when absent).

    @raise CLIError: the file cannot be read, is not YAML, or turns the status service off.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise CLIError(f"cannot read the config file {path}: {e.strerror or e}")
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problem = " ".join(str(e).split())
        raise CLIError(f"the config file {path} is not valid YAML: {problem}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CLIError(f"the config file {path} does not hold a mapping")
    status = data.get("status")
    if status is False:
        raise CLIError(f"the config file {path} turns the status service off "
                       "(status: false); nothing to ask")
    if status is None:
        status = {}
    if not isinstance(status, dict):
        raise CLIError(f"the config file {path}: 'status' must be a mapping")
    return status


def urlFromConfig(path: str) -> str:
    """
    The URL of the status service that the config file at C{path} configures: its
    C{status.listen} (or the default when the file says nothing). Only the C{status} key
    is read; the services are not checked.

    @raise CLIError: the file cannot be read, is not YAML, or turns the status service off.
    """
    status = _statusSection(path)
    listen = status.get("listen", DEFAULT_STATUS_LISTEN)
    if listen is None:
        raise CLIError(f"the config file {path} turns the status service off "
                       "(status.listen: null); nothing to ask")
    if not isinstance(listen, str) or not listen:
        raise CLIError(f"the config file {path}: 'status.listen' must be an endpoint string")
    return urlFromEndpoint(listen)


def urlsFromConfig(path: str) -> list[str]:
    """
    The C{status.urls} of the config file at C{path}: the status services to show in
    one view (none when the key is absent). They are checked as the server checks them
    (L{portserver.config.statusURLs}), and a wrong one is reported at its line.

    @raise CLIError: the file cannot be read, is not YAML, or a URL is wrong.
    """
    status = _statusSection(path)
    if status.get("urls") is None:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            data, _ = marks.load(f.read())  # duplicate keys and such: the server says
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read the config file {path}: {_reason(e)}") from None
    urls, problems = statusURLs(data, path)
    if problems:
        raise CLIError("the config file " + "; ".join(map(str, problems)))
    return list(urls)


def tokenFromConfig(path: str) -> tuple[str | None, str | None]:
    """
    The token the config file at C{path} gives its status service: the content of its
    C{status.token_file} (relative to the file's directory), or its C{status.token}.

    @return: the token and where it came from, or C{(None, None)}.
    @raise CLIError: the file cannot be read, or the token file or token is unusable.
    """
    status = _statusSection(path)
    tokenFile, token = status.get("token_file"), status.get("token")
    if isinstance(tokenFile, str) and tokenFile.strip():
        source = f"status.token_file of {path}"
        try:
            return readTokenFile(os.path.join(os.path.dirname(path), tokenFile)), source
        except ValueError as e:
            raise CLIError(f"{source}: {e}") from None
    if token is None:
        return None, None
    source = f"status.token of {path}"
    problem = "must be a string" if not isinstance(token, str) else tokenProblem(token)
    if problem is not None:
        raise CLIError(f"{source} {problem}")
    return token, source


def findToken(args, environ) -> tuple[str | None, str | None]:
    """
    The token to send, and where it came from (for messages): C{--token-file}, else
    C{PORTSERVER_TOKEN} in C{environ}, else the config the URL came from, if any.

    @return: C{(token, source)}, or C{(None, None)} for no token.
    @raise CLIError: the chosen source holds no usable token.
    """
    if args.token_file is not None:
        try:
            return readTokenFile(args.token_file), f"--token-file {args.token_file}"
        except ValueError as e:
            raise CLIError(f"--token-file: {e}") from None
    value = environ.get(TOKEN_ENV, "").strip()
    if value:
        problem = tokenProblem(value)
        if problem is not None:
            raise CLIError(f"{TOKEN_ENV} {problem}")
        return value, TOKEN_ENV
    if args.url is None and args.config is not None:
        return tokenFromConfig(args.config)
    return None, None


def unauthorizedMessage(base: str, source: str | None) -> str:
    """
    What to say when the status service at C{base} answers 401 to a request that
    carried the token from C{source} (or no token).
    """
    if source is None:
        return (f"the status service at {base} wants a token: give --token-file or set "
                f"{TOKEN_ENV}")
    return f"the status service at {base} refused the token from {source}"


# -- fetching ------------------------------------------------------------------------------


def _reason(error: BaseException) -> str:
    """
    A short human reason for a failed request: C{Connection refused}, C{timed out}.
    """
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        inner = error.reason
        return _reason(inner) if isinstance(inner, BaseException) else str(inner)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def fetchJSON(url: str, token: str | None = None, timeout: float = TIMEOUT) -> dict:
    """
    GET C{url} and decode its JSON object; with C{token}, the request carries
    C{Authorization: Bearer TOKEN} (not carried over to a redirect's target).

    @raise Unauthorized: the service answered 401.
    @raise FetchError: anything else went wrong, with a short reason.
    """
    request = urllib.request.Request(url)
    if token is not None:
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        e.close()
        error = Unauthorized if e.code == 401 else FetchError
        raise error(f"{_reason(e)} for {urllib.parse.urlsplit(url).path}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise FetchError(_reason(e)) from None
    try:
        data = json.loads(body)
    except ValueError:
        raise FetchError(f"the reply to {urllib.parse.urlsplit(url).path} is not JSON") from None
    if not isinstance(data, dict):
        raise FetchError(f"the reply to {urllib.parse.urlsplit(url).path} is not a JSON object")
    return data


def _api(base: str, path: str, **query) -> str:
    query = {k: v for k, v in query.items() if v is not None}
    return f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def _listOf(reply: dict, key: str, path: str) -> list[dict]:
    value = reply.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FetchError(f"the reply to {path} has no {key!r} list")
    return value


#: The records asked for per request when C{--all} pages through (the server's most).
PAGE = 2000


def fetchConnections(base: str, fetch: Callable[[str], dict], query: dict,
                     everything: bool = False) -> tuple[list[dict], int]:
    """
    The records C{/api/connections?QUERY} selects, and how many there are in all: the
    first page (the server's default, 1000), or with C{everything} every page, asked
    for by C{offset} in turn. Pages are read at different moments: a record seen twice
    (the ones before it closed meanwhile) is kept once. A server that does not page
    (no C{total}) answers every record at once.
    """
    path = "/api/connections"
    reply = fetch(_api(base, path, **query))
    records = _listOf(reply, "connections", path)
    total = reply.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or total <= len(records):
        return records, len(records)
    if everything:
        seen = {r.get("id") for r in records}
        offset = len(records)
        while offset < total:
            page = _listOf(fetch(_api(base, path, **query, limit=PAGE, offset=offset)),
                           "connections", path)
            if not page:
                break
            offset += len(page)
            records += [r for r in page if r.get("id") not in seen]
            seen.update(r.get("id") for r in page)
    return records, max(total, len(records))


def fetchStatus(base: str, fetch: Callable[[str], dict], service: str | None = None,
                closed: bool = False, everything: bool = False) -> dict:
    """
    Ask the status service at C{base} for its listeners, connections (live TCP and UDP,
    or recently closed: the first page of each, or with C{everything} all of them; see
    L{fetchConnections}) and summary.

    @return: C{{"listeners": [...], "connections": [...], "summary": {...},
        "connections_total": N}}, N counting the connections the server has, shown or
        not.
    @raise FetchError: a request failed or a reply is not what the service sends.
    """
    listeners = _listOf(fetch(_api(base, "/api/listeners")), "listeners", "/api/listeners")
    if closed:
        queries = [{"state": "closed"}]
    else:
        queries = [{}, {"transport": "udp"}]
    connections: list[dict] = []
    total = 0
    for query in queries:
        records, count = fetchConnections(base, fetch, dict(service=service, **query),
                                          everything)
        connections += records
        total += count
    summary = fetch(_api(base, "/api/summary"))
    if not isinstance(summary, dict):
        raise FetchError("the reply to /api/summary is not a JSON object")
    return {"listeners": listeners, "connections": connections, "summary": summary,
            "connections_total": total}


def _isIn(value, wanted) -> bool:
    return wanted is None or value == wanted


def applyFilters(status: dict, service: str | None = None,
                 portClass: str | None = None) -> dict:
    """
    C{status} with only the listeners (and connections) of C{service} and of port class
    C{portClass}: a connection's class is that of its local port, which is its listener's.
    The summary is the whole server's and stays as it is.
    """
    return {
        "listeners": [l for l in status["listeners"]
                      if _isIn(l.get("service"), service) and _isIn(l.get("class"), portClass)],
        "connections": [c for c in status["connections"]
                        if _isIn(c.get("service"), service)
                        and _isIn((c.get("local") or {}).get("class"), portClass)],
        "summary": status["summary"],
        "connections_total": status.get("connections_total", len(status["connections"])),
    }


# -- rendering -----------------------------------------------------------------------------


def humanDuration(seconds: float) -> str:
    """
    A duration for people: C{<1s}, C{5s}, C{3m12s}, C{2h04m}, C{3d07h}.
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return "<1s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _columns(rows: list[list[str]], right: Iterable[int] = (), indent: str = "") -> list[str]:
    """
    C{rows} as lines of columns two spaces apart, each as wide as its widest cell;
    columns numbered in C{right} are right-aligned.
    """
    right = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _endpoint(end) -> str:
    if not isinstance(end, dict):
        return "?"
    return formatHostPort(str(end.get("host", "?")), end.get("port", "?"))


def _listenerKey(item: dict, port) -> tuple:
    return (item.get("service"), item.get("transport"), port)


def _listenerRow(listener: dict) -> list[str]:
    address = formatHostPort(str(listener.get("host", "?")), listener.get("port", "?"))
    configured = listener.get("configured_port")
    if configured is not None and configured != listener.get("port"):
        address += f" (from {configured})"
    return [str(listener.get("service", "?")), str(listener.get("protocol", "?")),
            str(listener.get("transport", "?")), address, str(listener.get("class", "?")),
            "privileged" if listener.get("privileged") else "unprivileged",
            f"{listener.get('connections', 0)} live"]


def _connectionRow(connection: dict, now: float, closed: bool) -> list[str]:
    row = [str(connection.get("service", "?")), str(connection.get("transport", "?")),
           _endpoint(connection.get("local")), _endpoint(connection.get("remote"))]
    if closed:
        row += [f"lasted {humanDuration(connection.get('duration') or 0)}",
                str(connection.get("reason", "?"))]
    else:
        row.append(humanDuration(now - (connection.get("opened") or now)))
    row += [f"in {connection.get('bytes_in', 0)}", f"out {connection.get('bytes_out', 0)}"]
    return row


def renderTable(status: dict, now: float, closed: bool = False,
                filtered: bool = False, tcp: bool = False) -> list[str]:
    """
    The listeners, each followed by its connections (indented), as lines. A connection
    belongs to the listener of its service, transport and local port; connections that
    match no listener come last, under C{(no listener)}. With C{tcp}, the kernel's view
    of each (L{portserver.status.tcptext}) goes under it.
    """
    return _layout([(None, _tableParts(status, now, closed, filtered, tcp))])


def _tableParts(status: dict, now: float, closed: bool, filtered: bool,
                tcp: bool = False) -> list[tuple]:
    """
    The table of L{renderTable} before its columns are aligned: in order,
    C{("listener", cells)}, C{("connection", cells)} and C{("text", line)} entries.
    """
    listeners = status["listeners"]
    groups: dict[tuple, list[dict]] = {_listenerKey(l, l.get("port")): [] for l in listeners}
    orphans = []
    for connection in status["connections"]:
        key = _listenerKey(connection, (connection.get("local") or {}).get("port"))
        groups.get(key, orphans).append(connection)

    def connectionParts(connections):
        for c in connections:
            yield "connection", _connectionRow(c, now, closed)
            if tcp and tcptext.connectionLine(c):
                yield "text", tcptext.connectionLine(c)
            outbound = c.get("outbound")
            if isinstance(outbound, dict):
                yield "text", _outboundLine(outbound)

    parts: list[tuple] = []
    if not listeners:
        parts.append(("text", "no listeners match" if filtered else "no listeners"))
    for listener in listeners:
        parts.append(("listener", _listenerRow(listener)))
        if tcp and tcptext.listenerLine(listener):
            parts.append(("text", tcptext.listenerLine(listener)))
        parts += connectionParts(groups[_listenerKey(listener, listener.get("port"))])
    if orphans:
        parts.append(("text", "(no listener)"))
        parts += connectionParts(orphans)
    return parts


def _layout(sections: list[tuple[str | None, list[tuple]]]) -> list[str]:
    """
    The lines of tables made by L{_tableParts}, one after the other, as one table:
    every listener line aligned alike, and every connection line alike (indented).
    Each section's lines start with its label (the server column), when it has one.
    """
    every = [part for _, parts in sections for part in parts]
    listenerRows = [cells for kind, cells in every if kind == "listener"]
    connectionRows = [cells for kind, cells in every if kind == "connection"]
    numbers = {len(connectionRows[0]) - 2, len(connectionRows[0]) - 1} if connectionRows else ()
    laid = {"listener": iter(_columns(listenerRows, right={6})),
            "connection": iter(_columns(connectionRows, right=numbers, indent="    "))}
    width = max((len(label) for label, _ in sections if label is not None), default=0)
    lines = []
    for label, parts in sections:
        for kind, content in parts:
            line = content if kind == "text" else next(laid[kind])
            lines.append(line if label is None else f"{label.ljust(width)}  {line}".rstrip())
    return lines


def _outboundLine(outbound: dict) -> str:
    """
    The line under a connection for the connection the server opened on its behalf.
    """
    line = (f"      via {_endpoint(outbound.get('local'))} -> "
            f"{_endpoint(outbound.get('remote'))}  in {outbound.get('bytes_in', 0)}  "
            f"out {outbound.get('bytes_out', 0)}")
    if outbound.get("reason"):
        line += f"  {outbound['reason']}"
    return line


def _classCounts(counts: dict) -> str:
    byClass = counts.get("by_class") or {}
    return ", ".join(f"{byClass.get(c, 0)} {c}" for c in PORT_CLASSES)


def _privilegeCounts(counts: dict) -> str:
    return f"{counts.get('privileged', 0)} privileged, {counts.get('unprivileged', 0)} unprivileged"


def renderSummary(summary: dict) -> list[str]:
    """
    The server-wide summary as lines.
    """
    listeners = summary.get("listeners") or {}
    connections = summary.get("connections") or {}
    reasons = summary.get("closed_by_reason") or {}
    closedBy = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
    lines = [
        f"listeners: {listeners.get('total', 0)}: {_privilegeCounts(listeners)}; "
        f"{_classCounts(listeners)}",
        f"connections: {connections.get('total', 0)} live; local ends "
        f"{_privilegeCounts(connections.get('local') or {})}; remote ends "
        f"{_privilegeCounts(connections.get('remote') or {})}",
        f"accepted {summary.get('accepted_total', 0)}, closed {summary.get('closed_total', 0)}"
        + (f" ({closedBy})" if closedBy else ""),
        f"uptime {humanDuration(summary.get('uptime') or 0)}; privileged ports: below "
        f"{summary.get('privileged_port_start', '?')} ({summary.get('privileged_rule', '?')})",
    ]
    generation = summary.get("config_generation")
    if generation is not None:
        line = f"config generation {generation}"
        last = summary.get("last_reload")
        if isinstance(last, dict):
            errors = last.get("errors") or []
            line += f"; last reload {last.get('result', '?')}" + (
                f" ({len(errors)} error(s): see `portserver reload` or the log)"
                if errors else "")
        lines.append(line)
    lines += renderWorkers(summary.get("workers"))
    flags = summary.get("flags") or []
    if flags:
        lines.append(f"flags: {len(flags)}")
        lines += [f"  {f.get('kind', '?')}: {f.get('message', '')}" for f in flags]
    else:
        lines.append("flags: none")
    return lines


def renderWorkers(workers) -> list[str]:
    """
    The summary's C{workers} (a server with worker processes) as lines: how many, then
    one line each: index, pid, state, live connections and restarts. Nothing when
    there are none.
    """
    if not isinstance(workers, list) or not workers:
        return []
    rows = [w for w in workers if isinstance(w, dict)]
    byIndex: dict = {}  # restarts are counted per index, which generations share
    for w in rows:
        byIndex[w.get("index")] = max(byIndex.get(w.get("index"), 0),
                                      _number(w.get("restarts")))
    restarts = sum(byIndex.values())
    lines = [f"workers: {sum(1 for w in rows if w.get('pid') is not None)} running"
             + (f", {restarts} restart(s)" if restarts else "")]
    cells = [[f"worker {w.get('index', '?')}",
              f"pid {w['pid']}" if w.get("pid") is not None else "pid -",
              str(w.get("state", "?")), f"{_number(w.get('connections'))} live",
              f"{_number(w.get('restarts'))} restarts"] for w in rows]
    return lines + _columns(cells, right={3, 4}, indent="  ")


def render(status: dict, base: str, now: float, closed: bool = False,
           filtered: bool = False, fetched: int | None = None, tcp: bool = False) -> str:
    """
    The whole report: a title, the table of listeners and connections, and the summary.
    When the server has more connections than the C{fetched} ones (C{connections_total}),
    a line under the table says how many are shown and how to see them all.
    """
    summary = status["summary"]
    title = f"portserver {summary.get('version', '?')} at {base}"
    if summary.get("config"):
        title += f", config {summary['config']}"
    what = "recently closed connections" if closed else "live connections"
    lines = [title, "", f"listeners and {what}:"]
    lines += renderTable(status, now, closed, filtered, tcp)
    total = status.get("connections_total")
    if fetched is not None and isinstance(total, int) and total > fetched:
        lines += ["", f"showing {fetched} of {total} {what} (the first page of each "
                      "kind); --all lists every one"]
    lines += ["", "summary (whole server):" if filtered else "summary:"]
    lines += ["  " + line for line in renderSummary(summary)]
    if tcp and tcptext.countersLine(summary):
        lines.append("  " + tcptext.countersLine(summary))
    return "\n".join(lines) + "\n"


# -- several servers in one view ----------------------------------------------------------

#: The most servers asked at once by L{runStatusOfMany}.
MAX_PARALLEL = 8


@attrs.frozen
class ServerAnswer:
    """
    What one of several servers answered: C{status} (filtered), or C{error} and a
    short C{reason} when it could not be asked.

    @ivar fetched: how many connections were fetched, before filtering.
    """

    url: str
    status: dict | None = None
    fetched: int = 0
    error: str | None = None
    reason: str | None = None

    def toJSON(self) -> dict:
        """
        The server's item of C{{"servers": [...]}}: C{url}, C{ok}, then what the
        single-server C{--json} gives, or C{error}.
        """
        if self.status is None:
            return {"url": self.url, "ok": False, "error": self.error}
        return {"url": self.url, "ok": True, **self.status}


def askServers(urls: list[str], ask: Callable[[str], dict],
               parallel: int = MAX_PARALLEL) -> list[ServerAnswer]:
    """
    Ask each server of C{urls} with C{ask(url)} (raising L{NotAnswered}, as
    L{_askServer} does), a few at once: a server that does not answer costs its
    timeout once, not once per server after it.

    @return: the answers, in the order of C{urls}.
    """
    def one(url: str) -> ServerAnswer:
        try:
            status = ask(url)
        except NotAnswered as e:
            return ServerAnswer(url, error=str(e), reason=e.reason)
        return ServerAnswer(url, status=status, fetched=len(status["connections"]))

    with concurrent.futures.ThreadPoolExecutor(max(1, min(parallel, len(urls)))) as pool:
        return list(pool.map(one, urls))


def serverLabel(url: str) -> str:
    """
    A server in the server column: its URL, without C{http://}.
    """
    return url[len("http://"):] if url.startswith("http://") else url


def _totalsRow(label: str, summary: dict) -> list[str]:
    connections = summary.get("connections") or {}
    flags = summary.get("flags") or []
    return [label, f"portserver {summary.get('version', '?')}",
            f"listeners {(summary.get('listeners') or {}).get('total', 0)}",
            f"live {connections.get('total', 0)}",
            f"accepted {summary.get('accepted_total', 0)}",
            f"closed {summary.get('closed_total', 0)}",
            f"flags {len(flags)}", f"uptime {humanDuration(summary.get('uptime') or 0)}"]


def _number(value) -> int:
    return value if type(value) is int else 0


def renderMany(answers: list[ServerAnswer], now: float, closed: bool = False,
               filtered: bool = False, tcp: bool = False) -> str:
    """
    The report of several servers: one table whose first column names the server
    (a server that did not answer has one C{down} line in it; C{tcp} as for
    L{renderTable}), the totals of each server and of all of them, and the flags of
    each.
    """
    up = [a for a in answers if a.status is not None]
    what = "recently closed connections" if closed else "live connections"
    down = len(answers) - len(up)
    lines = [f"portserver status of {len(answers)} servers: {len(up)} up, {down} down",
             "", f"listeners and {what}:"]
    sections = []
    for answer in answers:
        parts = ([("text", f"down: {answer.reason}")] if answer.status is None
                 else _tableParts(answer.status, now, closed, filtered, tcp))
        sections.append((serverLabel(answer.url), parts))
    lines += _layout(sections)
    paged = []
    for answer in up:
        total = answer.status.get("connections_total")
        if isinstance(total, int) and total > answer.fetched:
            paged.append(f"{serverLabel(answer.url)}: showing {answer.fetched} of {total} "
                         f"{what}")
    if paged:
        lines += ["", *paged, "(the first page of each kind); --all lists every one"]

    rows = []
    for answer in answers:
        label = serverLabel(answer.url)
        rows.append(_totalsRow(label, answer.status["summary"]) if answer.status is not None
                    else [label, "down"] + [""] * 6)
    summaries = [a.status["summary"] for a in up]

    def total(get) -> int:
        return sum(_number(get(summary)) for summary in summaries)

    rows.append(["overall", f"{len(up)} of {len(answers)} servers",
                 f"listeners {total(lambda s: (s.get('listeners') or {}).get('total'))}",
                 f"live {total(lambda s: (s.get('connections') or {}).get('total'))}",
                 f"accepted {total(lambda s: s.get('accepted_total'))}",
                 f"closed {total(lambda s: s.get('closed_total'))}",
                 f"flags {sum(len(s.get('flags') or []) for s in summaries)}", ""])
    lines += ["", "totals (whole servers):" if filtered else "totals:"]
    lines += _columns(rows, right={2, 3, 4, 5, 6}, indent="  ")
    flagged = [(serverLabel(a.url), f) for a in up
               for f in a.status["summary"].get("flags") or [] if isinstance(f, dict)]
    if flagged:
        lines += ["", f"flags: {len(flagged)}"]
        lines += _columns([[label, f"{f.get('kind', '?')}: {f.get('message', '')}"]
                           for label, f in flagged], indent="  ")
    return "\n".join(lines) + "\n"


def runStatusOfMany(args, urls: list[str], stdout, fetch: Callable[..., dict],
                    now: Callable[[], float]) -> int:
    """
    C{portserver status} of several servers: each is asked as one would be (the same
    token, filters and paging), and all are shown in one view (L{renderMany}), or with
    C{--json} as C{{"servers": [...]}} (L{ServerAnswer.toJSON}). A server that does
    not answer is shown as down, and said on stderr too.

    @return: L{EXIT_OK} when every server answered, else L{EXIT_FAILED} (the others
        are printed all the same).
    """
    environ = getattr(args, "environ", None)
    token, source = findToken(args, os.environ if environ is None else environ)
    if token is not None:
        fetch = functools.partial(fetch, token=token)

    def ask(url: str) -> dict:
        return applyFilters(_askServer(url, fetch, source, args), args.service,
                            args.portClass)

    answers = askServers(urls, ask)
    if args.json:
        stdout.write(json.dumps({"servers": [a.toJSON() for a in answers]}, indent=2) + "\n")
    else:
        filtered = args.service is not None or args.portClass is not None
        stdout.write(renderMany(answers, now(), closed=args.closed, filtered=filtered,
                                tcp=getattr(args, "tcp", False)))
    warn = _warner(args)
    for answer in answers:
        if answer.error is not None:
            warn(answer.error)
    return EXIT_OK if all(a.error is None for a in answers) else EXIT_FAILED


# -- the command ---------------------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, status: int):
        self.status = status


class _Parser(argparse.ArgumentParser):
    """
    An L{argparse.ArgumentParser} that writes to the given streams and returns its exit
    status rather than leaving the process.
    """

    def __init__(self, *args, stdout=None, stderr=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stdout, self.stderr = stdout, stderr

    def _print_message(self, message, file=None):
        if message:
            stream = self.stdout if file is sys.stdout else self.stderr
            stream.write(message)

    def exit(self, status=0, message=None):
        if message:
            self.stderr.write(message)
        raise _Exit(status)


def makeParser(stdout, stderr) -> argparse.ArgumentParser:
    """
    The parser of C{portserver} and its subcommands.
    """
    parser = _Parser(prog=PROGRAM, stdout=stdout, stderr=stderr,
                     description="Ask a running portserver how it is doing.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)
    status = commands.add_parser(
        "status", stdout=stdout, stderr=stderr,
        help="show listeners, connections and totals",
        description="Show a running portserver's listeners, each with its connections, "
                    "and a summary, from its status web service.")
    _whereArguments(status, severalURLs=True)
    status.add_argument("--pidfile", default=DEFAULT_PIDFILE, metavar="PATH",
                        help="without --url or --config, ask the server that wrote this "
                             "twistd pid file (its runtime file beside it says where) "
                             "[default: %(default)s]")
    status.add_argument("--service", metavar="NAME", help="only this service")
    status.add_argument("--class", dest="portClass", choices=PORT_CLASSES,
                        help="only listeners on ports of this class, and their connections")
    status.add_argument("--closed", action="store_true",
                        help="show recently closed connections (duration and reason) "
                             "instead of live ones")
    status.add_argument("--all", action="store_true",
                        help="list every connection, a page of 2000 per request "
                             "(without it: the first 1000 live TCP connections, 1000 UDP "
                             "flows or 1000 closed ones, and how many there are)")
    status.add_argument("--json", action="store_true",
                        help="print the (filtered) JSON: listeners, connections, summary, "
                             "and connections_total, how many the server has")
    status.add_argument("--tcp", action="store_true",
                        help="add the kernel's view (Linux), as ss -ti shows it: under each "
                             "TCP connection its state, queues, RTT and retransmits; under "
                             "each TCP listener its handshakes, accept queue and teardown")
    status.set_defaults(run=runStatus)

    reload = commands.add_parser(
        "reload", stdout=stdout, stderr=stderr,
        help="make a running portserver re-read its config",
        description="Send SIGHUP to the portserver whose pid twistd wrote to the pid "
                    "file (once it is checked to be a live portserver), then wait for the "
                    "outcome in its status service: exit 0 when the new config is in "
                    "force; 1 when it was rejected (the errors are printed; the old config "
                    "stays in force) or nothing was sent (e.g. a stale pid file); 3 when "
                    "the signal was sent but no outcome could be read.")
    reload.add_argument("--pidfile", default=DEFAULT_PIDFILE, metavar="PATH",
                        help="twistd's pid file [default: %(default)s]")
    _whereArguments(reload)
    reload.add_argument("--timeout", type=float, default=RELOAD_TIMEOUT, metavar="SECONDS",
                        help="how long to wait for the outcome (then exit 3) "
                             "[default: %(default)s]")
    reload.add_argument("--no-wait", action="store_true",
                        help="send the signal and exit, without asking for the outcome")
    reload.set_defaults(run=runReload)
    return parser


def _whereArguments(parser, severalURLs: bool = False) -> None:
    where = parser.add_mutually_exclusive_group()
    if severalURLs:
        where.add_argument("--url", action="append",
                           help="the status service, e.g. http://127.0.0.1:8790; give it "
                                "more than once to show several servers in one view")
        config = ("find the status service from this config's status.listen, or the "
                  "servers its status.urls lists")
    else:
        where.add_argument("--url", help="the status service, e.g. http://127.0.0.1:8790")
        config = "find the status service from this config's status.listen"
    where.add_argument("--config", "-c", metavar="PATH",
                       help=config + " (and its token from status.token or "
                                     "status.token_file) [default: the bundled config]")
    parser.add_argument("--token-file", metavar="PATH",
                        help=f"send the status service the token in this file [default: "
                             f"${TOKEN_ENV}, else the config's]")
    parser.add_argument("--token", nargs="?", action=_NoTokenOption, help=argparse.SUPPRESS)


class _NoTokenOption(argparse.Action):
    """
    C{--token}: refused, without repeating its value (a token on the command line shows
    in C{ps}); without it, C{--token VALUE} would be taken for C{--token-file VALUE}.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not an option: a token on the command line "
                     f"shows in ps; use --token-file PATH or set {TOKEN_ENV}")


def _statusBase(args) -> str:
    """
    The status service's base URL: C{--url}, C{--config}'s, the runtime file's (then
    its config gives the token), or the bundled config's.
    """
    if args.url is not None:
        return args.url.rstrip("/")
    runtime = getattr(args, "runtime", None)
    if args.config is None and runtime is not None:
        args.config = runtime.get("config")
        if runtime.get("status_url"):
            return runtime["status_url"].rstrip("/")
        if args.config is None:
            raise CLIError(f"portserver pid {runtime['pid']} names no status service "
                           "in its runtime file; use --url or --config")
    if args.config is None:
        from portserver.tap import bundledConfigPath
        args.config = bundledConfigPath()
    return urlFromConfig(args.config)


def _connect(args, fetch: Callable[..., dict], base: str | None = None
             ) -> tuple[str, Callable[[str], dict], str | None]:
    """
    The status service's base URL (C{base}, else L{_statusBase}), C{fetch} with the
    token bound (L{findToken}; C{fetch} is called as C{fetch(url, token=TOKEN)} when
    there is a token, C{fetch(url)} when not), and where the token came from.
    """
    base = base or _statusBase(args)
    environ = getattr(args, "environ", None)
    token, source = findToken(args, os.environ if environ is None else environ)
    if token is not None:
        fetch = functools.partial(fetch, token=token)
    return base, fetch, source


def _statusURLs(args) -> list[str]:
    """
    The status services C{portserver status} was told to show: each C{--url}, else the
    C{status.urls} of C{--config} (L{urlsFromConfig}); without a trailing slash, each
    once. Empty: the one server is found as L{_statusBase} says.
    """
    given = args.url or (urlsFromConfig(args.config) if args.config is not None else [])
    return list(dict.fromkeys(url.rstrip("/") for url in given))


def _askServer(base: str, fetch: Callable[[str], dict], source: str | None, args) -> dict:
    """
    The status of the server at C{base} (L{fetchStatus}), as C{args} asks for it, not
    yet filtered.

    @raise NotAnswered: it does not answer, or wants a token (the message says which).
    """
    try:
        if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
            raise FetchError("not an http:// or https:// URL")
        return fetchStatus(base, fetch, service=args.service, closed=args.closed,
                           everything=args.all)
    except Unauthorized:
        reason = "wants a token" if source is None else f"refused the token from {source}"
        raise NotAnswered(unauthorizedMessage(base, source), reason) from None
    except (FetchError, OSError, ValueError, http.client.HTTPException) as e:
        reason = str(e) if isinstance(e, FetchError) else _reason(e)
        raise NotAnswered(f"no status service answers at {base} ({reason})", reason) from None


def runStatus(args, stdout, fetch: Callable[..., dict], now: Callable[[], float]) -> int:
    """
    C{portserver status}: fetch, filter and print; several servers (L{_statusURLs})
    are shown in one view by L{runStatusOfMany}.

    @raise CLIError: the service cannot be found, does not answer, or wants a token.
    """
    urls = _statusURLs(args)
    if len(urls) > 1:
        return runStatusOfMany(args, urls, stdout, fetch, now)
    args.url = urls[0] if args.url else None
    if args.url is None and args.config is None:
        args.runtime = findRuntime(args.pidfile, _commandLineReader(args), _warner(args))
    base, fetch, source = _connect(args, fetch, urls[0] if urls else None)
    status = _askServer(base, fetch, source, args)
    runtime = getattr(args, "runtime", None)
    served = _servedPid(status["summary"])
    if runtime is not None and served is not None and served != runtime["pid"]:
        raise CLIError(f"the status service at {base} is portserver pid {served}, not pid "
                       f"{runtime['pid']} of {runtime['path']}; use --url or --config")
    fetched = len(status["connections"])
    status = applyFilters(status, args.service, args.portClass)
    if args.json:
        stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        filtered = args.service is not None or args.portClass is not None
        stdout.write(render(status, base, now(), closed=args.closed, filtered=filtered,
                            fetched=fetched, tcp=getattr(args, "tcp", False)))
    return 0


def readPid(path: str) -> int:
    """
    The process id in twistd's pid file at C{path}.

    @raise CLIError: there is no such file, or it holds no pid.
    """
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise CLIError(f"no pid file at {path} (is portserver running under twistd, from "
                       "this directory? name its pid file with --pidfile)") from None
    except OSError as e:
        raise CLIError(f"cannot read the pid file {path}: {_reason(e)}") from None
    if not text.isdigit() or int(text) <= 0:
        raise CLIError(f"the pid file {path} holds no process id ({text[:40]!r})")
    return int(text)


# -- which process -------------------------------------------------------------------------

#: What L{processState} finds at a pid.
GONE, PORTSERVER, OTHER, UNKNOWN = "gone", "portserver", "other", "unknown"


def processState(pid: int, readCommandLine=commandLine, kill=os.kill):
    """
    What runs as process C{pid}: L{GONE} (nothing), L{PORTSERVER} (twistd's
    C{portserver}, L{isPortserverCommand}), L{OTHER} (another program), or L{UNKNOWN}
    (a live process whose command line cannot be read: no C{/proc}, or not allowed).

    @param readCommandLine: C{readCommandLine(pid)}, the process's arguments, L{None}
        when unreadable; raises L{ProcessLookupError} for no such process
        (L{portserver.runtime.commandLine}).
    @param kill: L{os.kill}, to ask (signal 0) whether an unreadable process exists.
    @return: the state and the command line (or L{None}).
    """
    try:
        argv = readCommandLine(pid)
    except ProcessLookupError:
        return GONE, None
    if argv is None:
        try:
            kill(pid, 0)
        except ProcessLookupError:
            return GONE, None
        except PermissionError:
            pass  # it exists, as another user's
        return UNKNOWN, None
    return (PORTSERVER if isPortserverCommand(argv) else OTHER), argv


def findRuntime(pidfile: str, readCommandLine=commandLine, warn=lambda message: None,
                kill=os.kill) -> dict | None:
    """
    The runtime file that goes with C{pidfile} (L{portserver.runtime.runtimePath}),
    with its C{path} added, when its pid is a live portserver (or a live process that
    cannot be checked: the status service's C{pid} is then compared); else L{None}, and
    C{warn(message)} says why a file that exists is ignored.
    """
    path = runtimePath(os.path.abspath(pidfile))
    runtime = readRuntime(path)
    if runtime is None:
        if os.path.exists(path):
            warn(f"ignoring {path}: not a portserver runtime file")
        return None
    pid = runtime["pid"]
    state, argv = processState(pid, readCommandLine, kill)
    if state == GONE:
        warn(f"ignoring {path}: its pid {pid} is not running (stale)")
        return None
    if state == OTHER:
        warn(f"ignoring {path}: its pid {pid} is not portserver ({describeCommand(argv)})")
        return None
    runtime["path"] = path
    return runtime


def _servedPid(summary: dict) -> int | None:
    pid = summary.get("pid") if isinstance(summary, dict) else None
    return pid if type(pid) is int else None


def _commandLineReader(args):
    return getattr(args, "readCommandLine", None) or commandLine


def _warner(args):
    stderr = getattr(args, "stderr", None)
    if stderr is None:
        return lambda message: None
    return lambda message: stderr.write(f"{PROGRAM} {args.command}: {message}\n")


def _reloadCount(summary: dict) -> int | None:
    reloads = summary.get("reloads")
    if not isinstance(reloads, dict):
        return None
    return sum(v for v in reloads.values() if isinstance(v, int))


def _describeReload(outcome: dict) -> str:
    if outcome.get("result") == "applied":
        lines = [f"reloaded: generation {outcome.get('generation')} is in force: "
                 f"{len(outcome.get('added') or [])} listener(s) added, "
                 f"{len(outcome.get('removed') or [])} removed, "
                 f"{len(outcome.get('changed') or [])} changed, "
                 f"{outcome.get('unchanged', 0)} unchanged"]
        if outcome.get("denied"):
            lines.append(f"  {outcome['denied']} connection(s) closed by the new access rules")
        for kind in ("added", "removed", "changed"):
            lines += [f"  {kind}: {item}" for item in outcome.get(kind) or []]
        lines += [f"  warning: {w}" for w in outcome.get("warnings") or []]
    else:
        errors = outcome.get("errors") or []
        lines = [f"reload rejected: generation {outcome.get('generation')} stays in force; "
                 f"{len(errors)} error(s):"]
        lines += [f"  {e}" for e in errors]
    return "\n".join(lines) + "\n"


def runReload(args, stdout, fetch: Callable[[str], dict], now: Callable[[], float],
              kill=os.kill, sleep=time.sleep, readCommandLine=None) -> int:
    """
    C{portserver reload}: check that the pid file's process is a live portserver, SIGHUP
    it, then (unless C{--no-wait}) poll its status service until the reload count goes
    up, and print the outcome.

    The process is portserver when its command line says so (L{processState}) or when
    the status service reports its pid; a status service that reports another pid is
    another server's, and nothing is sent.

    @return: L{EXIT_OK} when the reload was applied (or only sent), L{EXIT_FAILED} when
        rejected.
    @raise CLIError: no pid; a stale pid file (no such process, or another program);
        a process that cannot be checked; the status service of another server, or
        one that wants a token. Nothing is sent then.
    @raise Unconfirmed: SIGHUP was sent, but no status service answers, or none
        reported the outcome within C{--timeout}.
    """
    readCommandLine = readCommandLine or _commandLineReader(args)
    pid = readPid(args.pidfile)
    state, argv = processState(pid, readCommandLine, kill)
    if state == GONE:
        raise CLIError(f"stale pid file {args.pidfile}: pid {pid} is not running "
                       "(portserver stopped without removing it?); nothing was signalled")
    if state == OTHER:
        raise CLIError(f"stale pid file {args.pidfile}: pid {pid} is not portserver but "
                       f"{describeCommand(argv)!r}; nothing was signalled")
    if args.url is None and args.config is None:
        runtime = findRuntime(args.pidfile, readCommandLine, _warner(args), kill)
        args.runtime = runtime if runtime is not None and runtime["pid"] == pid else None
    base = summaryURL = summary = None
    why = ""
    if not args.no_wait:
        base, fetch, source = _connect(args, fetch)
        summaryURL = _api(base, "/api/summary")
        try:
            summary = fetch(summaryURL)
        except Unauthorized:
            raise CLIError(unauthorizedMessage(base, source) + " (or use --no-wait to "
                           "only send the signal); nothing was signalled") from None
        except (FetchError, OSError, ValueError, http.client.HTTPException) as e:
            why = str(e) if isinstance(e, FetchError) else _reason(e)
    served = _servedPid(summary)
    if served is not None and served != pid:
        raise CLIError(f"the status service at {base} is portserver pid {served}, not pid "
                       f"{pid} from {args.pidfile}: name this server's status service with "
                       "--url or --config; nothing was signalled")
    if state == UNKNOWN and served != pid:
        how = ("its status service does not say (use it: drop --no-wait)" if args.no_wait
               else f"no status service answers at {base} ({why})" if summary is None
               else f"the status service at {base} does not report its pid")
        raise CLIError(f"cannot check that pid {pid} (from {args.pidfile}) is portserver: "
                       f"its command line cannot be read, and {how}; nothing was signalled")
    try:
        kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CLIError(f"stale pid file {args.pidfile}: pid {pid} is not running; nothing "
                       "was signalled") from None
    except PermissionError:
        raise CLIError(f"not allowed to signal process {pid} (from {args.pidfile}): run "
                       "as its user") from None
    if args.no_wait:
        stdout.write(f"sent SIGHUP to portserver (pid {pid}); the outcome is in its log\n")
        return EXIT_OK
    before = None if summary is None else _reloadCount(summary)
    if before is None:
        reason = (f"no status service answers at {base} ({why})" if summary is None
                  else f"the status service at {base} does not report reloads")
        raise Unconfirmed(f"sent SIGHUP to portserver (pid {pid}), but {reason}: the "
                          "outcome is unknown; see the server's log")
    deadline = now() + args.timeout
    while True:
        try:
            summary = fetch(summaryURL)
        except (FetchError, OSError, ValueError, http.client.HTTPException):
            summary = {}
        count = _reloadCount(summary)
        if count is not None and count > before and isinstance(summary.get("last_reload"),
                                                                dict):
            outcome = summary["last_reload"]
            stdout.write(_describeReload(outcome))
            return EXIT_OK if outcome.get("result") == "applied" else EXIT_FAILED
        if now() >= deadline:
            raise Unconfirmed(f"sent SIGHUP to portserver (pid {pid}), but {base} reported "
                              f"no reload within {args.timeout:g}s: the outcome is unknown; "
                              "see the server's log")
        sleep(0.1)


def main(argv=None, stdout=None, stderr=None, fetch=None, now=None, environ=None,
         readCommandLine=None) -> int:
    """
    Run C{portserver} with C{argv} (default: the process's arguments).

    @param fetch: C{fetch(url) -> dict}, the JSON object at C{url}, called as
        C{fetch(url, token=TOKEN)} when there is a token (default: L{fetchJSON}); raises
        L{FetchError} (L{Unauthorized} for a 401).
    @param now: the time now, in seconds since the epoch, for connection ages.
    @param environ: the environment, for C{PORTSERVER_TOKEN} (default: L{os.environ}).
    @param readCommandLine: a process's arguments by pid (default:
        L{portserver.runtime.commandLine}, from C{/proc}).
    @return: the exit status: L{EXIT_OK}; L{EXIT_FAILED} when the service cannot be
        asked, the pid file is stale, or a reload was rejected; L{EXIT_USAGE} for bad
        usage; L{EXIT_UNCONFIRMED} when a reload was sent but its outcome is unknown.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = makeParser(stdout, stderr)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except _Exit as e:
        return e.status
    args.environ = os.environ if environ is None else environ
    args.readCommandLine = readCommandLine
    args.stderr = stderr
    try:
        return args.run(args, stdout, fetch or fetchJSON, now or time.time)
    except CLIError as e:
        stderr.write(f"{PROGRAM} {args.command}: {e}\n")
        return e.status


if __name__ == "__main__":
    sys.exit(main())
