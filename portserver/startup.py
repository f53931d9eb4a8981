"""
Start-up: ports bound before privileges drop, all or nothing, and why start-up fails.

A L{BindingService} binds its port in C{privilegedStartService}, which C{twistd} calls
before it drops to C{--uid}/C{--gid}, so ports below 1024 can be bound as root and served
unprivileged. Unlike Twisted's C{StreamServerEndpointService}, which only logs a failed
listen and runs on without the port, a failed bind stops start-up with L{StartupError},
whose message (L{bindFailure}, L{groupFailures}) names each failure and its remedy.
L{preflight} gives the same messages in the foreground, before C{twistd} daemonizes.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred

if TYPE_CHECKING:
    from portserver.plan import Listener


class StartupError(Exception):
    """
    portserver cannot start; the message says why, for an operator, in full.
    """


def _reason(error: BaseException) -> tuple[int | None, str]:
    socketError = getattr(error, "socketError", None) or error
    code = getattr(socketError, "errno", None)
    text = getattr(socketError, "strerror", None) or str(socketError)
    return code, (f"[Errno {code}] {text}" if code else text)


#: What an operator can do about a privileged port this process may not bind.
PRIVILEGED_REMEDY = (
    "privileged ports need root or CAP_NET_BIND_SERVICE: start as root and drop "
    "privileges with `twistd --uid=USER --gid=GROUP portserver ...`, or grant the Python "
    "binary CAP_NET_BIND_SERVICE (setcap 'cap_net_bind_service=+ep'), or run unprivileged "
    "with `--port-offset N` (e.g. 10000)")


def bindFailure(listener: Listener, error: BaseException) -> tuple[str, str | None]:
    """
    What went wrong binding C{listener}: one line naming the service, transport,
    address, port and OS error, and the remedy an operator has for the usual causes
    (L{None} when there is none to give).
    """
    code, reason = _reason(error)
    line = f"cannot listen for service {listener.service!r}: {listener.describe()}: {reason}"
    remedy = None
    if code in (errno.EACCES, errno.EPERM) and listener.privileged:
        remedy = PRIVILEGED_REMEDY
    elif code == errno.EADDRINUSE:
        remedy = (f"another program holds {listener.transport} port {listener.port}: "
                  f"find it with `ss -lnp{'t' if listener.transport == 'tcp' else 'u'} "
                  f"'sport = :{listener.port}'`")
    elif code == errno.EADDRNOTAVAIL:
        remedy = f"{listener.interface} is not an address of this host"
    return line, remedy


def bindFailureMessage(listener: Listener, error: BaseException) -> str:
    """
    L{bindFailure} as one message: the line, then the remedy indented below it.
    """
    line, remedy = bindFailure(listener, error)
    return line if remedy is None else f"{line}\n  {remedy}"


def groupFailures(messages: list[str]) -> str:
    """
    Many failure messages (L{bindFailureMessage}'s, or any other) as one: each
    message's first line, in order, then each distinct remedy once (twelve privileged
    ports refused give twelve lines and one remedy, not the remedy twelve times).
    """
    lines, remedies = [], []
    for message in messages:
        first, *rest = message.split("\n")
        lines.append(first)
        for remedy in rest:
            if remedy not in remedies:
                remedies.append(remedy)
    return "\n".join(lines + remedies)


def preflight(listeners, family=socket.getaddrinfo) -> list[str]:
    """
    Try to bind each of C{listeners} with a plain socket, closed at once, and return a
    L{bindFailureMessage} for each that fails (port 0 always binds, and is skipped).

    C{twistd} binds in C{privilegedStartService}, after it has forked into the
    background and started its log, where a failure can only reach the log (and the
    daemon's parent prints a truncated repr of it). Run before that, in the
    foreground, this gives the operator the reasons at once, on the terminal.
    """
    failures = []
    for listener in listeners:
        if listener.port == 0:
            continue
        kind = socket.SOCK_STREAM if listener.transport == "tcp" else socket.SOCK_DGRAM
        try:
            info = family(listener.interface, listener.port, 0, kind)[0]
            with socket.socket(info[0], kind) as probe:
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if info[0] == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(info[4])
        except OSError as e:
            failures.append(bindFailureMessage(listener, e))
    return failures


class BindingService(Service):
    """
    A service that owns one listening port: bound in C{privilegedStartService} (or in
    C{startService}, when embedded without twistd), released when stopped.

    @ivar port: the L{IListeningPort} while bound, else L{None}.
    """

    port = None

    def bind(self) -> None:
        """
        Listen, unless listening already; raise L{StartupError} (or
        L{CannotListenError}) when that is impossible.
        """
        raise NotImplementedError

    def unbind(self):
        """
        Stop listening; a L{Deferred} that fires when the port is closed.
        """
        port, self.port = self.port, None
        if port is None:
            return maybeDeferred(lambda: None)
        return maybeDeferred(port.stopListening)

    @property
    def address(self):
        """
        The bound address (an L{IPv4Address} or L{IPv6Address}), or L{None}.
        """
        return self.port.getHost() if self.port is not None else None

    def privilegedStartService(self):
        self.bind()
        super().privilegedStartService()

    def startService(self):
        self.bind()
        super().startService()

    def stopService(self):
        super().stopService()
        return self.unbind()
