"""
Port numbers: the IANA classes, this host's privileged rule, and service names.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Callable

import attrs

WELL_KNOWN = "well-known"
REGISTERED = "registered"
DYNAMIC = "dynamic"

#: The IANA port classes (RFC 6335 section 6), in order.
PORT_CLASSES = (WELL_KNOWN, REGISTERED, DYNAMIC)

UNPRIVILEGED_START_FILE = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def portClass(port: int) -> str:
    """
    The IANA class of C{port}: well-known (0-1023), registered (1024-49151) or
    dynamic (49152-65535).
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    if port < 1024:
        return WELL_KNOWN
    if port < 49152:
        return REGISTERED
    return DYNAMIC


@attrs.frozen
class PrivilegeRule:
    """
    This host's rule for privileged ports: a port is privileged when it is below
    C{unprivilegedStart} (and above 0).

    @ivar source: where the number came from, for people reading the status.
    """

    unprivilegedStart: int = 1024
    source: str = "default"

    def isPrivileged(self, port: int) -> bool:
        """
        Whether binding C{port} needs privileges on this host.
        """
        return 0 < port < self.unprivilegedStart

    @classmethod
    def fromHost(cls, platform: str | None = None,
                 readFile: Callable[[str], str] | None = None) -> "PrivilegeRule":
        """
        Read this host's rule: on Linux C{net.ipv4.ip_unprivileged_port_start}
        (1024 when it cannot be read), elsewhere 1024.
        """
        platform = sys.platform if platform is None else platform
        if not platform.startswith("linux"):
            return cls(1024, f"{platform} default")
        if readFile is None:
            def readFile(path):
                with open(path) as f:
                    return f.read()
        try:
            value = int(readFile(UNPRIVILEGED_START_FILE).strip())
        except (OSError, ValueError):
            return cls(1024, "default (sysctl unreadable)")
        return cls(value, "net.ipv4.ip_unprivileged_port_start")


#: The capability that lets a process bind privileged ports (linux/capability.h).
CAP_NET_BIND_SERVICE = 10
PROCESS_STATUS_FILE = "/proc/self/status"


def canBindPrivileged(euid: Callable[[], int] = os.geteuid,
                      statusFile: str = PROCESS_STATUS_FILE) -> bool:
    """
    Whether this process may bind privileged ports: it runs as root, or holds
    C{CAP_NET_BIND_SERVICE} in its effective set (C{CapEff} in C{/proc/self/status}).
    Where the set cannot be read, only root is assumed able to.
    """
    if euid() == 0:
        return True
    try:
        with open(statusFile) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_BIND_SERVICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def lookupServicePort(name: str, transport: str,
                      lookup: Callable[[str, str], int] = socket.getservbyname) -> int | None:
    """
    The port /etc/services gives C{name} for C{transport}, or L{None} if it has none.
    """
    try:
        return lookup(name, transport)
    except (OSError, ValueError, UnicodeError):  # unknown, or a NUL / surrogate in the name
        return None
