"""
Who may reach the status service: whether an endpoint string listens only on this host,
and the bearer tokens (their rules, and reading them from files).
"""

from __future__ import annotations

import os
import stat

from portserver.addresses import ipAddress

#: The fewest characters a status token may have.
MIN_TOKEN_LENGTH = 16

#: The most bytes a token file may hold (a token file holds one token).
MAX_TOKEN_FILE = 4096


def tokenProblem(token: str) -> str | None:
    """
    What is wrong with C{token} as a bearer token (too short, or not printable ASCII
    without spaces, which an HTTP header needs), or L{None}. The message never quotes
    the token.
    """
    if len(token) < MIN_TOKEN_LENGTH:
        return (f"is {len(token)} character{'s' if len(token) != 1 else ''} long: a token "
                f"needs {MIN_TOKEN_LENGTH} or more")
    if not all("!" <= c <= "~" for c in token):
        return "must be printable ASCII without spaces"
    return None


def readTokenFile(path: str) -> str:
    """
    The token in the file at C{path}: its content, stripped of surrounding white space.
    Only a regular file is read (a FIFO or a device would block or never end).

    @raise ValueError: the file cannot be read, is not a regular file, holds more than
        L{MAX_TOKEN_FILE} bytes, is empty, or holds no usable token; the message names
        C{path} and never quotes the file's content.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_TOKEN_FILE:
        raise ValueError(f"{path} holds more than {MAX_TOKEN_FILE} bytes: not a token file")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text") from None
    if not token:
        raise ValueError(f"{path} is empty")
    problem = tokenProblem(token)
    if problem is not None:
        raise ValueError(f"the token in {path} {problem}")
    return token


def splitEndpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split a Twisted endpoint string as Twisted does: C{:} separates parameters, the first
    C{=} of a parameter makes it a keyword, and a backslash escapes the next character.

    @return: the positional parameters (the endpoint type first) and the keywords.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    parameter: list[str] = []
    current = ""
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current += next(chars, "")
        elif char == "=" and not parameter:
            parameter.append(current)
            current = ""
        elif char == ":":
            parameter.append(current)
            if len(parameter) == 2:
                kwargs[parameter[0]] = parameter[1]
            else:
                args.append(parameter[0])
            parameter, current = [], ""
        else:
            current += char
    parameter.append(current)
    if len(parameter) == 2:
        kwargs[parameter[0]] = parameter[1]
    else:
        args.append(parameter[0])
    return args, kwargs


def isLoopback(host: str) -> bool:
    """
    Whether C{host} is a loopback address: in 127.0.0.0/8, C{::1}, or IPv4-mapped
    127.0.0.0/8. A host name, or an empty host (all addresses), is not.
    """
    address = ipAddress(host, dropScope=True)
    return address is not None and address.is_loopback


#: The host names a request to a loopback status service may carry in C{Host}.
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def hostHeaderHost(value: bytes) -> str | None:
    """
    The host of a C{Host} header value (C{example:8080} is C{example}, C{[::1]:80} is
    C{::1}), lowercased; L{None} when it cannot be read.
    """
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else None
    host, _, _ = text.partition(":")
    return host or None


def isLocalHost(value: bytes, bound: str | None = None) -> bool:
    """
    Whether a C{Host} header value names this host the way only a local client would:
    C{localhost}, a loopback address, or the address the service is bound to (C{bound}).
    A page served from elsewhere that a DNS rebinding points at 127.0.0.1 carries its own
    name, so it is told apart.
    """
    host = hostHeaderHost(value)
    if host is None:
        return False
    if host in LOOPBACK_NAMES or isLoopback(host):
        return True
    return bound is not None and host == bound.lower()


#: Where the interface stands among the positional parameters of the endpoint types
#: that have one, as Twisted's parsers take them (the type itself is position 0).
_INTERFACE_POSITIONS = {"tcp": 2, "tcp6": 3}


def endpointIsLocal(description: str) -> bool:
    """
    Whether a server listening on the endpoint string C{description} can be reached
    only from this host: a C{unix:} socket, or C{tcp:}/C{tcp6:} on a loopback
    C{interface}. Without an interface, C{tcp} and C{tcp6} listen on every address;
    any other endpoint type (C{ssl:}, C{systemd:}, plugins...) counts as not local.
    """
    args, kwargs = splitEndpoint(description)
    kind = args[0]
    if kind == "unix":
        return True
    position = _INTERFACE_POSITIONS.get(kind)
    if position is None:
        return False
    interface = kwargs.get("interface", args[position] if len(args) > position else "")
    return isLoopback(interface)
