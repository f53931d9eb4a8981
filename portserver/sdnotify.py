"""
Telling systemd how the server is doing: the C{sd_notify} protocol (C{READY=1},
C{RELOADING=1}, C{STOPPING=1}, C{STATUS=...}).

The protocol is one datagram per message, C{KEY=VALUE} lines, sent to the C{AF_UNIX}
socket that C{NOTIFY_SOCKET} names (a path, or an abstract name written with a leading
C{@}). It is a few lines, so it is written here rather than taken from a library: Twisted
has none, C{systemd-python} and C{cysystemd} build against C{libsystemd}, and the pure
Python C{sdnotify} (last released in 2017) takes no environment to test with and hides
every error. Sending never blocks the reactor (the socket is non-blocking: a full queue
is a failure) and never raises: a server must not stop serving because its supervisor
cannot be told, so the first failure is logged and the rest are dropped quietly.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, Mapping

from twisted.logger import Logger

#: The variable systemd sets to the socket it listens on for notifications.
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def monotonicMicroseconds() -> int:
    """
    C{CLOCK_MONOTONIC} in microseconds: what C{MONOTONIC_USEC=} carries.
    """
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socketAddress(value: str) -> str | None:
    """
    The C{AF_UNIX} address C{NOTIFY_SOCKET}'s C{value} names: an absolute path as it
    is, C{@name} as the abstract name C{\\0name}; L{None} for anything else (systemd's
    own C{sd_notify} refuses relative paths too).
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def statusText(state: str, connections: int, generation: int) -> str:
    """
    The C{STATUS=} line of a server: C{"serving: 3 live connections, config generation
    2"} (C{state} is C{serving}, C{reloading} or C{draining}).
    """
    noun = "connection" if connections == 1 else "connections"
    return f"{state}: {connections} live {noun}, config generation {generation}"


class Notifier:
    """
    Sends notifications to the service manager at C{NOTIFY_SOCKET}, or does nothing
    when there is none (not run by systemd, or not as C{Type=notify}).

    Each method returns whether the message was sent. None raises: the first failure
    to send (or an unusable C{NOTIFY_SOCKET}) is logged, later ones are not.

    @ivar address: the C{NOTIFY_SOCKET} value, or L{None} for no-op.
    """

    log = Logger()

    def __init__(self, address: str | None,
                 monotonic: Callable[[], int] = monotonicMicroseconds):
        """
        @param address: C{NOTIFY_SOCKET}'s value, or L{None} (or empty) to send nothing.
        @param monotonic: C{CLOCK_MONOTONIC} in microseconds, for C{MONOTONIC_USEC=}.
        """
        self.address = address or None
        self._monotonic = monotonic
        self._failed = False

    @classmethod
    def fromEnvironment(cls, environ: Mapping[str, str] | None = None,
                        **kwargs) -> Notifier:
        """
        A notifier for the socket C{environ}'s C{NOTIFY_SOCKET} names (default: the
        process's environment); a no-op one when it is unset or empty. The variable
        is left in place: C{exec} builds its programs' environment, and systemd
        ignores notifications from other processes (C{NotifyAccess=main}).
        """
        if environ is None:
            environ = os.environ
        return cls(environ.get(NOTIFY_SOCKET), **kwargs)

    @property
    def enabled(self) -> bool:
        """
        Whether there is a socket to send to.
        """
        return self.address is not None

    def ready(self, status: str | None = None) -> bool:
        """
        C{READY=1}: every listener serves (start-up), or a reload is over.
        """
        return self.send(("READY", "1"), ("STATUS", status))

    def reloading(self, status: str | None = None) -> bool:
        """
        C{RELOADING=1} with C{MONOTONIC_USEC=}, as C{Type=notify-reload} requires: a
        reload begins; L{ready} must follow when it is over (applied or rejected).
        """
        return self.send(("RELOADING", "1"),
                         ("MONOTONIC_USEC", str(self._monotonic())),
                         ("STATUS", status))

    def stopping(self, status: str | None = None) -> bool:
        """
        C{STOPPING=1}: the server has begun to shut down (the drain starts).
        """
        return self.send(("STOPPING", "1"), ("STATUS", status))

    def status(self, text: str) -> bool:
        """
        C{STATUS=text}: a line for C{systemctl status}.
        """
        return self.send(("STATUS", text))

    def send(self, *fields: tuple[str, str | None]) -> bool:
        """
        Send one message of C{fields}, C{(KEY, value)} pairs; those whose value is
        L{None} are left out, line breaks in a value become spaces.

        @return: whether it was sent (C{False} when disabled or on failure).
        """
        if self.address is None:
            return False
        message = "\n".join(f"{key}={' '.join(value.splitlines())}"
                            for key, value in fields if value is not None) + "\n"
        target = socketAddress(self.address)
        if target is None:
            self._fail(f"{NOTIFY_SOCKET}={self.address!r} is neither an absolute path nor "
                       "an abstract socket name (@name)")
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)
                s.sendto(message.encode("utf-8"), target)
        except OSError as e:
            self._fail(f"{e.strerror or e}")
            return False
        return True

    def _fail(self, reason: str) -> None:
        if self._failed:
            return
        self._failed = True
        self.log.warn("Cannot notify systemd at {address}: {reason} (further failures "
                      "are not logged)", address=self.address, reason=reason)
