"""
Who a running portserver is, for C{portserver status} and C{portserver reload}: the
runtime file a server writes beside twistd's pid file, and the check that a pid is a
live portserver before anything is sent to it.

Why a file of our own: twistd's pid file holds only a pid, and the status service may
listen anywhere (C{-c my.yaml} with C{status.listen: tcp:0}); reading the config path
back from the process's command line would repeat twistd's option parsing and still not
give a port chosen at bind time. The server knows both once it is bound, so it says so.

The file is C{twistd.portserver.json} for the pid file C{twistd.pid} (the pid file's
name without C{.pid}, plus C{.portserver.json}), in the pid file's directory. It holds
C{pid}, C{config} (absolute path), C{status_url} (or C{null}) and C{pidfile}. It is
written once the server has started and removed when it stops; the CLI trusts it only
while its C{pid} is a live portserver (L{isPortserverCommand}).
"""

from __future__ import annotations

import json
import os
from ipaddress import ip_address
from typing import Callable

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger

log = Logger()

#: What the runtime file's name ends with.
RUNTIME_SUFFIX = ".portserver.json"

#: The subcommand twistd runs portserver as.
SUBCOMMAND = "portserver"

#: How the programs that can run portserver's plugin appear on a command line.
_LAUNCHERS = ("twistd", "twist")


def runtimePath(pidfile: str) -> str:
    """
    The runtime file that goes with the pid file C{pidfile}: C{twistd.pid} gives
    C{twistd.portserver.json}, C{run/server} gives C{run/server.portserver.json}.
    """
    base = pidfile[:-len(".pid")] if pidfile.endswith(".pid") else pidfile
    return base + RUNTIME_SUFFIX


def _isLauncher(argv: list[str], index: int) -> bool:
    """
    Whether C{argv[index]} starts twistd (or twist): the script (C{/venv/bin/twistd},
    C{twistd3}), C{python -m twisted}, or a C{python -c} program that runs
    C{twisted.scripts.twistd}.
    """
    arg = argv[index]
    name = os.path.basename(arg)
    if name.endswith(".exe"):
        name = name[:-4]
    if name.rstrip("0123456789.-") in _LAUNCHERS:
        return True
    previous = argv[index - 1] if index > 0 else ""
    if previous == "-m" and arg in ("twisted", "twisted.scripts.twistd"):
        return True
    if arg in ("-mtwisted", "-mtwisted.scripts.twistd"):
        return True
    return previous == "-c" and "twisted.scripts.twistd" in arg


def isPortserverCommand(argv: list[str]) -> bool:
    """
    Whether the command line C{argv} runs portserver: twistd (or twist), however
    started, with the C{portserver} subcommand after it.
    """
    for index in range(len(argv)):
        if _isLauncher(argv, index):
            return SUBCOMMAND in argv[index + 1:]
    return False


def commandLine(pid: int, proc: str = "/proc") -> list[str] | None:
    """
    The command line of process C{pid}, from C{/proc/PID/cmdline} (empty for a zombie).

    @return: the arguments, or L{None} when they cannot be read (no C{/proc}, or not
        allowed to read it).
    @raise ProcessLookupError: there is no process C{pid}.
    """
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if os.path.isdir(os.path.join(proc, "self")):
            raise ProcessLookupError(pid) from None
        return None
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in data.split(b"\0")[:-1]] if data else []


def describeCommand(argv: list[str]) -> str:
    """
    A command line in a message: its arguments joined, at most 60 characters.
    """
    text = " ".join(argv) or "(no command line: a zombie?)"
    return text if len(text) <= 60 else text[:57] + "..."


def readRuntime(path: str) -> dict | None:
    """
    The runtime file at C{path}, or L{None} when there is none or it is not one (a file
    this module did not write is not an error: the CLI then looks elsewhere).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or type(data.get("pid")) is not int or data["pid"] <= 0:
        return None
    for key in ("config", "status_url"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return None
    return data


def statusURL(service) -> str | None:
    """
    The URL the CLI reaches the bound status service C{service} at: its actual address,
    with a wildcard host (all interfaces) reached on loopback; L{None} for a UNIX socket
    or when not bound.
    """
    address = getattr(service, "address", None)
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return None
    host = address.host.split("%", 1)[0]
    if ip_address(host).is_unspecified:
        host = "::1" if isinstance(address, IPv6Address) else "127.0.0.1"
    scheme = "https" if service.listen.startswith("ssl:") else "http"
    return f"{scheme}://[{host}]:{address.port}" if ":" in host \
        else f"{scheme}://{host}:{address.port}"


class RuntimeFile(Service):
    """
    Writes the runtime file at C{path} when started (after the status service has
    bound, so it is last in the tree) and removes it when stopped, if it is still this
    process's. A file that cannot be written is logged, not fatal: the CLI then needs
    C{--url} or C{--config}.

    @param config: the config file, absolute.
    @param status: the L{portserver.status.web.StatusService}, or L{None}.
    """

    name = "runtime-file"

    def __init__(self, path: str, pidfile: str, config: str, status=None,
                 getpid: Callable[[], int] = os.getpid):
        self.path = path
        self.pidfile = pidfile
        self.config = config
        self.status = status
        self._getpid = getpid

    def content(self) -> dict:
        """
        What the file holds: C{pid}, C{config}, C{status_url} and C{pidfile}.
        """
        return {"pid": self._getpid(), "config": self.config,
                "status_url": None if self.status is None else statusURL(self.status),
                "pidfile": self.pidfile}

    def startService(self):
        super().startService()
        temporary = f"{self.path}.{self._getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(self.content(), f)
                f.write("\n")
            os.replace(temporary, self.path)
        except OSError as e:
            log.warn("Cannot write the runtime file {path} ({error}): portserver status "
                     "and reload will need --url or --config", path=self.path,
                     error=e.strerror or e)
            try:
                os.remove(temporary)
            except OSError:
                pass

    def stopService(self):
        super().stopService()
        current = readRuntime(self.path)
        if current is not None and current["pid"] == self._getpid():
            try:
                os.remove(self.path)
            except OSError as e:
                log.warn("Cannot remove the runtime file {path}: {error}", path=self.path,
                         error=e.strerror or e)
