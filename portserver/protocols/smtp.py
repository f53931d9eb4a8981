"""
smtp: a receiving-only ESMTP server (RFC 5321) that files mail for configured domains
into one Maildir per recipient, built on L{twisted.mail.smtp.ESMTP}.

It never relays: a recipient outside C{domains} (or, when C{recipients} is given, not
listed) is refused with 550. The message size is limited (RFC 1870 C{SIZE}), and a message
is streamed to one spool file as it arrives, never held in memory.

Delivery is all or nothing for one message: the message is written once, to
C{<maildir>/.spool/}, flushed, C{fsync}ed and closed; each recipient then gets it by a hard
link into C{<maildir>/<domain>/<localpart>/tmp/} renamed into C{new/} (a synced copy where
no link can be made), the C{new/} directories are synced, and only then is the C{250}
sent. Any failure on the way removes every copy (renamed ones too) and answers 451, so the
client keeps the message and tries again later.

Twisted's L{ESMTP} is used as is except where it falls short here: it answers a failed
delivery with 550 (a permanent failure, so the sender would bounce the message) instead of
451; it ignores the C{SIZE=} parameter of C{MAIL FROM}; on an overlong line in the middle
of a message it goes back to reading commands (so the rest of the message would be taken as
commands); and its timeout uses the global reactor.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import re
import shutil
import socket
import time

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import smtp as tsmtp
from twisted.mail.interfaces import IMessageSMTP
from twisted.python.failure import Failure
from zope.interface import implementer

from portserver.options import Option, OptionProblem, seconds
from portserver.provider import PortProtocol
from portserver.ratelog import RepeatedErrors, causeOf

log = Logger()

#: The default C{max_size}: 10 MiB.
DEFAULT_MAX_SIZE = 10 * 1024 * 1024

#: The default idle timeout, in seconds: RFC 5321 4.5.3.2.7 asks a server to wait at
#: least five minutes for the next command.
DEFAULT_TIMEOUT = 300

#: Recipients one message may have (RFC 5321 4.5.3.1.8 asks for at least 100). They share
#: one spool file: a transaction holds one descriptor whatever its recipients.
MAX_RECIPIENTS = 100

#: The reply to a delivery that failed for a local reason; the client tries again later.
LOCAL_ERROR = b"Requested action aborted: local error in processing"

#: A domain name: dot-separated labels of letters, digits, hyphens (and underscores).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")

#: A local part that is safe as a directory name: RFC 5322's dot-atom without C{/}
#: (no quoted strings, no leading, trailing or doubled dots, so never C{.} or C{..}).
_ATEXT = r"[A-Za-z0-9!#$%&'*+=?^_`{|}~-]"
_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
MAX_LOCAL = 64

#: A HELO name as written into the Received header: anything else becomes C{?}.
_UNSAFE_HELO = re.compile(rb"[^A-Za-z0-9.:_\[\]-]")
#: A recipient at an address literal: C{TO:<user@[192.0.2.1]>}, C{TO:<user@[IPv6:...]>}
#: (Twisted's address parser takes it for a syntax error).
_ADDRESS_LITERAL = re.compile(
    rb"\s*TO:\s*<(?P<local>[^<>@\s]+)@(?P<literal>\[[^\]]*\])>\s*(?:\s(?P<opts>.*))?\Z",
    re.I)
#: What a reverse path may not bring into the Return-Path header: spaces, controls, <>.
_UNSAFE_PATH = re.compile(rb"[^\x21-\x7e]|[<>]")


def peerOf(address) -> tuple[str, int]:
    """
    The host and port of a transport's peer address; IPv4-mapped IPv6 as IPv4.
    """
    host = getattr(address, "host", None) or str(address)
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, getattr(address, "port", 0)


# -- options ---------------------------------------------------------------------------


def addressLiteral(value: str) -> str | None:
    """
    The canonical form of an RFC 5321 address literal (C{[192.0.2.1]},
    C{[IPv6:2001:db8::1]}), or L{None} if C{value} is not one.
    """
    if not (value.startswith("[") and value.endswith("]")):
        return None
    inside = value[1:-1]
    try:
        if inside[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inside[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inside)}]"
    except ValueError:
        return None


def normaliseDomain(value: str) -> str:
    """
    A domain as compared and used as a directory name: lower case, no trailing dot; an
    address literal in its canonical form.
    """
    value = value.strip()
    return addressLiteral(value) or value.lower().rstrip(".")


def _domainProblem(value) -> str | None:
    if isinstance(value, list):  # YAML reads an unquoted [127.0.0.1] as a list
        return "an address literal must be quoted: '[127.0.0.1]', '[IPv6:::1]'"
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    if value.strip().startswith("["):
        if addressLiteral(value.strip()) is None:
            return (f"{value!r} is not an address literal ('[127.0.0.1]', "
                    "'[IPv6:::1]')")
        return None
    domain = normaliseDomain(value)
    if len(domain) > 253 or not _DOMAIN.match(domain):
        return f"{value!r} is not a domain name"
    return None


def _checkDomains(domains) -> str | None:
    if not domains:
        return "must list at least one domain"
    for index, domain in enumerate(domains):
        problem = _domainProblem(domain)
        if problem:
            return f"domain {index + 1}: {problem}"
    return None


def _localProblem(local: str) -> str | None:
    if len(local) > MAX_LOCAL or not _LOCAL.match(local):
        return (f"local part {local!r} is not allowed (a dot-atom of at most {MAX_LOCAL} "
                "characters, without '/')")
    return None


def _checkRecipients(recipients) -> str | None:
    if recipients is None:
        return None
    if not recipients:
        return "must list at least one address (leave it out to accept any local part)"
    for index, address in enumerate(recipients):
        if not isinstance(address, str) or address.count("@") != 1:
            return f"address {index + 1} must be a string of the form local@domain"
        local, domain = address.strip().split("@")
        problem = _localProblem(local) or _domainProblem(domain)
        if problem:
            return f"address {index + 1}: {problem}"
    return None


def _checkMaxSize(value) -> str | None:
    return None if value > 0 else "must be a number of bytes greater than 0"


_checkTimeout = seconds()


def _checkMaildir(value) -> str | None:
    return None if value.strip() and "\0" not in value else "must be a directory path"


def _checkHostname(value) -> str | None:
    if not value or len(value) > 255 or not value.isascii() or any(
            not c.isprintable() or c.isspace() or c in "();<>" for c in value):
        return "must be a host name (printable ASCII, no spaces)"
    return None


def defaultHostname() -> str:
    """
    The host's name, as the greeting and Received headers give it (no DNS lookup).
    """
    name = socket.gethostname()
    return name if _checkHostname(name) is None else "localhost"


def _normaliseDomains(domains: list) -> list:
    return list(dict.fromkeys(normaliseDomain(domain) for domain in domains))


def _normaliseRecipients(recipients: list) -> list:
    normalised = []
    for address in recipients:
        local, domain = address.strip().split("@")
        normalised.append(f"{local.lower()}@{normaliseDomain(domain)}")
    return list(dict.fromkeys(normalised))


#: Domains and recipients are kept in lower case without duplicates, C{maildir}
#: absolute; L{completeOptions} fills in C{hostname}.
OPTIONS = {
    "domains": Option(list, check=_checkDomains, describe="a list of domain names",
                      required=True, convert=_normaliseDomains),
    "recipients": Option((list, type(None)), default=None, check=_checkRecipients,
                         describe="a list of addresses", convert=_normaliseRecipients),
    "max_size": Option(int, default=DEFAULT_MAX_SIZE, check=_checkMaxSize),
    "maildir": Option(str, check=_checkMaildir, describe="a directory path",
                      required=True, convert=os.path.abspath),
    "hostname": Option(str, default=None, check=_checkHostname),
    "timeout": Option((int, float), default=DEFAULT_TIMEOUT, check=_checkTimeout,
                      describe="a number of seconds"),
    "tls": Option((dict, type(None)), default=None, check=lambda v: _tlsProblem(v),
                  describe="a mapping with cert and key (PEM file paths)",
                  convert=lambda v: None if v is None else
                  {k: os.path.abspath(p) for k, p in v.items()}),
}


def _tlsProblem(value) -> str | None:
    """
    C{tls: {cert, key}}: both PEM files readable, the key matching the certificate, and
    pyOpenSSL installed (Twisted's TLS needs it).
    """
    if value is None:
        return None
    unknown = sorted(set(value) - {"cert", "key"})
    if unknown or set(value) != {"cert", "key"}:
        return "must give cert and key (PEM file paths), and nothing else"
    if not all(isinstance(v, str) and v for v in value.values()):
        return "cert and key must be file paths"
    try:
        contextFactory(value["cert"], value["key"])
    except ImportError:
        return "needs pyOpenSSL for STARTTLS: pip install 'twisted[tls]'"
    except Exception as e:  # OpenSSL's errors, unreadable files
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return f"cannot load cert {value['cert']!r} with key {value['key']!r}: {reason}"
    return None


def contextFactory(cert: str, key: str):
    """
    The server TLS context of C{cert} and C{key} (PEM files), as Twisted's STARTTLS
    takes it.

    @raise ImportError: without pyOpenSSL.
    """
    from twisted.internet import ssl
    factory = ssl.DefaultOpenSSLContextFactory(key, cert)
    factory.getContext().check_privatekey()
    return factory


def completeOptions(options: dict) -> list[OptionProblem]:
    """
    The C{validate} of C{smtp}: every listed recipient must be in one of the domains;
    C{hostname}, when not given, is filled in with this host's name.
    """
    if options["hostname"] is None:
        options["hostname"] = defaultHostname()
    if options["recipients"] is None:
        return []
    return [OptionProblem("recipients", f"address {address!r} is not in one of the domains")
            for address in options["recipients"]
            if address.split("@")[1] not in options["domains"]]


# -- the Maildirs ----------------------------------------------------------------------


_counter = itertools.count(1)


class MaildirStore:
    """
    Where mail goes: C{<base>/<domain>/<localpart>/}, a Maildir made on first delivery
    (every directory portserver makes is 0700: mail is private).

    A message is written once, to C{<base>/.spool/} (no domain name starts with a dot),
    and synced; each recipient then gets it by a hard link into its Maildir's C{tmp/},
    renamed into C{new/} (a copy, synced, only where a link is impossible: another file
    system). So a transaction holds one open file whatever its recipients, and a 5 MB
    message to 100 recipients takes 5 MB of disk, not 500.

    The file system calls used to commit a message are attributes, so that a test can make
    them fail.
    """

    fsync = staticmethod(os.fsync)
    rename = staticmethod(os.rename)
    link = staticmethod(os.link)

    def __init__(self, base: str, hostname: str, clock):
        self.base = base
        self.clock = clock
        self.spool = os.path.join(base, ".spool")
        # A full disk fails every delivery: its error is logged once per 10 s, counted.
        self.errors = RepeatedErrors(log, clock)
        # The Maildir convention's escapes for the two characters a name cannot hold.
        self.host = hostname.replace("/", r"\057").replace(":", r"\072")

    def directory(self, domain: str, local: str) -> str:
        return os.path.join(self.base, domain, local)

    def uniqueName(self) -> str:
        """
        A Maildir file name, unique in this process and across processes and restarts:
        C{<seconds>.M<microseconds>P<pid>Q<counter>.<hostname>}.
        """
        now = self.clock.seconds()
        seconds = int(now)
        micro = int((now - seconds) * 1_000_000)
        return f"{seconds}.M{micro:06d}P{os.getpid()}Q{next(_counter)}.{self.host}"

    def _makeDirectories(self, path: str) -> None:
        """
        Make C{path} and each missing directory between it and the base, 0700 each
        (C{os.makedirs} gives its mode to the last one only).
        """
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                if not os.path.isdir(directory):
                    raise

    def createSpool(self):
        """
        Create the one file a message is written to, in the spool.

        @return: C{(path, name, file)}, the file open for binary writing.
        """
        name = self.uniqueName()
        path = os.path.join(self.spool, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            self._makeDirectories(self.spool)
            fd = os.open(path, flags, 0o600)
        return path, name, os.fdopen(fd, "wb")

    def deliver(self, spoolPath: str, domain: str, local: str, name: str) -> str:
        """
        Put the synced message at C{spoolPath} into the recipient's C{new/}, through
        C{tmp/} (making the Maildir if needed): a hard link, or a synced copy where the
        file system takes no link.

        @return: the path in C{new/}.
        """
        directory = self.directory(domain, local)
        for sub in ("tmp", "new", "cur"):
            self._makeDirectories(os.path.join(directory, sub))
        tmpPath = os.path.join(directory, "tmp", name)
        newPath = os.path.join(directory, "new", name)
        try:
            self.link(spoolPath, tmpPath)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            self._copy(spoolPath, tmpPath)
        try:
            self.rename(tmpPath, newPath)
        except OSError:
            _unlinkQuietly(tmpPath)
            raise
        return newPath

    def _copy(self, source: str, destination: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        with open(source, "rb") as reading, os.fdopen(os.open(destination, flags, 0o600),
                                                       "wb") as writing:
            shutil.copyfileobj(reading, writing)
            writing.flush()
            self.fsync(writing.fileno())

    def syncDirectory(self, path: str) -> None:
        """
        Make a rename into C{path} durable, where the platform can (best effort).
        """
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        try:
            self.fsync(fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                raise
        finally:
            os.close(fd)


def _unlinkQuietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("smtp: could not remove {path}: {error}", path=path, error=e)


@implementer(IMessageSMTP)
class MaildirMessage:
    """
    One recipient's copy of a message. The transaction's first copy writes the message
    to the spool and syncs it on the final dot; L{commit} (called only once every copy's
    final dot has been answered) delivers this recipient's copy from the spool.
    """

    def __init__(self, transaction: "Transaction", address: str, domain: str, local: str,
                 writer: bool):
        self.transaction = transaction
        self.address = address
        self.domain = domain
        self.local = local
        self.writer = writer
        self.directory = transaction.store.directory(domain, local)
        self.newPath = None
        self.state = "writing"  # then "synced", "committed" or "discarded"

    def lineReceived(self, line: bytes) -> None:
        if self.writer:
            self.transaction.write(line)

    def eomReceived(self):
        """
        The writer flushes, C{fsync}s and closes the spool file. The L{Deferred} fires
        with this message (see L{MaildirSMTP._messageHandled}), or fails.
        """
        if self.writer:
            try:
                self.transaction.sync()
            except OSError:
                failure = defer.fail()
                self.discard()
                return failure
        self.state = "synced"
        return defer.succeed(self)

    def connectionLost(self) -> None:
        """
        The message was abandoned (client gone, too big, write failed): remove it.
        """
        self.discard()
        self.transaction.abort()

    def commit(self) -> None:
        """
        Deliver this recipient's copy into its C{new/}.
        """
        transaction = self.transaction
        self.newPath = transaction.store.deliver(transaction.spoolPath, self.domain,
                                                 self.local, transaction.name)
        self.state = "committed"

    def discard(self) -> None:
        """
        Remove this copy if it was delivered; never raises.
        """
        if self.state == "committed" and self.newPath is not None:
            _unlinkQuietly(self.newPath)
        self.state = "discarded"


@implementer(IMessageSMTP)
class DuplicateMessage:
    """
    A recipient given twice in one transaction: the first copy is the one delivered.
    """

    def lineReceived(self, line):
        pass

    def eomReceived(self):
        return defer.succeed(None)

    def connectionLost(self):
        pass


@attrs.define
class Transaction:
    """
    One message (from C{DATA} to the final dot): its spool file, and a copy per
    recipient address.
    """

    service: str
    store: MaildirStore
    id: str
    seconds: float
    size: int = 0
    copies: dict = attrs.field(factory=dict)
    spoolPath: str | None = None
    name: str | None = None
    file: object = None

    def messageFor(self, domain: str, local: str):
        """
        The L{IMessageSMTP} for one recipient; spool trouble is a 451.
        """
        address = f"{local}@{domain}"
        if address in self.copies:
            return DuplicateMessage()
        writer = self.spoolPath is None
        if writer:
            try:
                self.spoolPath, self.name, self.file = self.store.createSpool()
            except OSError as e:
                self.store.errors.error(
                    (self.service, "spool", e.errno), "smtp {service}: cannot create a "
                    "file in the spool {path}: {error}", service=self.service,
                    path=self.store.spool, error=e)
                raise tsmtp.SMTPServerError(451, LOCAL_ERROR)
        message = MaildirMessage(self, address, domain, local, writer)
        self.copies[address] = message
        return message

    def write(self, line: bytes) -> None:
        try:
            self.file.write(line + b"\n")
        except (OSError, ValueError) as e:
            self.store.errors.error(
                (self.service, "write", getattr(e, "errno", None)),
                "smtp {service}: writing {path} failed: {error}",
                service=self.service, path=self.spoolPath, error=e)
            raise tsmtp.SMTPServerError(451, LOCAL_ERROR)

    def sync(self) -> None:
        """
        Flush, C{fsync} and close the spool file.
        """
        file = self.file
        file.flush()
        self.store.fsync(file.fileno())
        file.close()

    def finish(self) -> None:
        """
        Every copy is delivered (or none will be): remove the spool file.
        """
        self._closeSpool()

    def abort(self) -> None:
        """
        Remove every delivered copy and the spool file; never raises.
        """
        for message in self.copies.values():
            message.discard()
        self._closeSpool()

    def _closeSpool(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except (OSError, ValueError):
                pass
        if self.spoolPath is not None:
            _unlinkQuietly(self.spoolPath)
            self.spoolPath = None


# -- the protocol ----------------------------------------------------------------------


@attrs.frozen
class Settings:
    """
    An smtp service's validated options, as the protocol uses them.
    """

    service: str
    domains: frozenset
    recipients: frozenset | None
    maxSize: int
    hostname: bytes
    timeout: float
    #: Where the bare C{postmaster} goes: the first listed domain name.
    postmasterDomain: str = ""

    @classmethod
    def fromService(cls, service) -> "Settings":
        options = service.options
        recipients = options["recipients"]
        return cls(
            service=service.name,
            domains=frozenset(options["domains"]),
            recipients=None if recipients is None else frozenset(recipients),
            maxSize=options["max_size"],
            hostname=options["hostname"].encode("ascii"),
            timeout=options["timeout"],
            postmasterDomain=next((d for d in options["domains"] if not d.startswith("[")),
                                  options["domains"][0]),
        )


_transactionIds = itertools.count(1)


#: RFC 3463 enhanced codes by reply code and command (None: any command).
_ENHANCED = {
    (250, b"MAIL"): b"2.1.0", (250, b"RCPT"): b"2.1.5", (250, None): b"2.0.0",
    (221, None): b"2.0.0", (252, None): b"2.5.0",
    (421, None): b"4.4.2", (451, None): b"4.3.0", (452, None): b"4.5.3",
    (454, None): b"4.7.0",
    (500, None): b"5.5.2", (501, None): b"5.5.4", (502, None): b"5.5.1",
    (503, None): b"5.5.1", (504, None): b"5.5.4", (551, None): b"5.1.6",
    (552, None): b"5.3.4", (554, None): b"5.0.0", (555, None): b"5.5.4",
}


def enhancedCode(code: int, command: bytes, message: bytes) -> bytes | None:
    """
    The RFC 3463 enhanced status code of a reply C{code} to C{command}, or L{None}.
    """
    if code == 550:
        if b"Relaying denied" in message or b"literals" in message:
            return b"5.7.1"
        if b"No such user" in message:
            return b"5.1.1"
        return b"5.0.0"
    if code == 553:
        return b"5.6.7" if b"SMTPUTF8" in message else b"5.1.3"
    if code == 250 and command == b"DATA":
        return b"2.0.0"
    return _ENHANCED.get((code, command)) or _ENHANCED.get((code, None))


class MaildirSMTP(tsmtp.ESMTP):
    """
    The ESMTP server side: accepts mail for the configured domains (and recipients) and
    delivers each message to the recipients' Maildirs.
    """

    noisy = False

    def __init__(self, settings: Settings, store: MaildirStore, clock, tls=None):
        super().__init__(contextFactory=tls)
        self.settings = settings
        self.store = store
        self.clock = clock
        self.host = settings.hostname
        self.timeout = settings.timeout
        self.callLater = clock.callLater  # TimeoutMixin's, not the global reactor's
        self.transaction = None
        self.extended = False

    def greeting(self) -> bytes:
        return self.host + b" ESMTP portserver"

    def connectionMade(self):
        super().connectionMade()
        if self.ctx is not None and not self.canStartTLS:
            # Under portserver's tracking layer the socket's transport is one below.
            inner = getattr(self.transport, "transport", None)
            self.canStartTLS = ITLSTransport.providedBy(inner)

    def ext_STARTTLS(self, rest):
        """
        RFC 3207: after the handshake, the client starts again with EHLO, and what it
        said before is forgotten.
        """
        super().ext_STARTTLS(rest)
        if self.startedTLS:
            self._helo = self._from = None
            self._to = []
            self.extended = False

    def extensions(self) -> dict:
        """
        What EHLO advertises, each of them implemented: C{SIZE} (RFC 1870),
        C{PIPELINING} (RFC 2920: Twisted answers commands in order, whatever arrives at
        once), C{8BITMIME} (RFC 6152: the message is stored byte for byte) and
        C{ENHANCEDSTATUSCODES} (RFC 2034, in L{sendCode}).
        """
        extensions = super().extensions()  # with STARTTLS when tls is configured
        extensions.pop(b"AUTH", None)  # no authentication: nothing to advertise
        extensions[b"SIZE"] = [b"%d" % self.settings.maxSize]
        extensions[b"PIPELINING"] = None
        extensions[b"8BITMIME"] = None
        extensions[b"ENHANCEDSTATUSCODES"] = None
        return extensions

    def do_HELO(self, rest):
        self.extended = False
        super().do_HELO(rest)

    def do_EHLO(self, rest):
        self.extended = True
        super().do_EHLO(rest)

    def sendCode(self, code, message=b""):
        """
        After EHLO, every reply but the greeting, EHLO's and 354 starts with its RFC 3463
        enhanced status code (C{250 2.1.5 Recipient address accepted}).
        """
        if isinstance(message, str):
            message = message.encode("ascii", "replace")
        if self.extended and code not in (220, 354) and self._command != b"EHLO":
            enhanced = enhancedCode(code, self._command, message)
            if enhanced:
                message = b"\n".join(enhanced + b" " + line for line in message.split(b"\n"))
        super().sendCode(code, message)

    _command = b""

    def state_COMMAND(self, line):
        self._command = line.split(None, 1)[0].upper() if line.split() else b""
        return super().state_COMMAND(line)

    def do_NOOP(self, rest):
        """
        RFC 5321's NOOP (Twisted's SMTP lacks it).
        """
        self.sendCode(250, b"OK")

    def do_VRFY(self, rest):
        """
        RFC 5321's VRFY, answered without revealing who exists (3.5.3).
        """
        self.sendCode(252, b"Cannot VRFY user, but will accept message and attempt delivery")

    def lookupMethod(self, command):
        """
        The handler of C{command}, or L{None} (answered 500) for a command that is not
        ASCII (Twisted's would raise C{UnicodeDecodeError} and drop the connection).
        """
        if not command.isascii():
            return None
        return super().lookupMethod(command)

    def lineLengthExceeded(self, line):
        """
        A line longer than C{MAX_LENGTH}: refuse it and close. (Twisted's would carry on,
        taking the rest of a message as commands, and keep the partial line buffered.)
        """
        self.sendCode(500, b"Line too long")
        self.transport.loseConnection()

    # -- the envelope --------------------------------------------------------------------

    def _notASCII(self, rest) -> bool:
        """
        Answer an address that is not ASCII: it needs SMTPUTF8 (RFC 6531), which this
        server does not offer.
        """
        if rest.isascii():
            return False
        self.sendCode(553, b"Address requires SMTPUTF8, which this server does not offer")
        return True

    def _unknownParameter(self, parameters: bytes, allowed) -> bool:
        """
        Answer 555 (RFC 5321 4.1.1.11) for a parameter EHLO did not advertise (any,
        after HELO), or a C{BODY=} other than 7BIT and 8BITMIME.
        """
        for parameter in parameters.split():
            key, _, value = parameter.partition(b"=")
            key = key.upper()
            if not self.extended or key not in allowed:
                self.sendCode(555, b"Parameter " + key + b" not recognised")
                return True
            if key == b"BODY" and value.upper() not in (b"7BIT", b"8BITMIME"):
                self.sendCode(555, b"BODY must be 7BIT or 8BITMIME")
                return True
        return False

    def do_RCPT(self, rest):
        """
        C{RCPT TO}: no parameter is advertised for it, so any is answered 555.
        """
        if self._notASCII(rest):
            return
        literal = _ADDRESS_LITERAL.match(rest) if self._from else None
        if literal is not None:
            self._literalRecipient(literal)
            return
        match = self.rcpt_re.match(rest) if self._from else None
        if match is not None and match.group("opts"):
            if self._unknownParameter(match.group("opts"), ()):
                return
        self._bare = match is not None and b"@" not in match.group("path")
        super().do_RCPT(rest)

    def _literalRecipient(self, match) -> None:
        """
        C{RCPT TO:<user@[192.0.2.1]>}: an address at an address literal (RFC 5321 4.1.3),
        validated like any other (accepted only when C{domains} lists the literal).
        """
        if match.group("opts") and self._unknownParameter(match.group("opts"), ()):
            return
        canonical = addressLiteral(match.group("literal").decode("ascii"))
        if canonical is None:
            self.sendCode(501, b"Syntax error in address literal")
            return
        dest = tsmtp.Address(b"placeholder@invalid")
        dest.local, dest.domain = match.group("local"), canonical.encode("ascii")
        user = tsmtp.User(dest, self._helo, self, self._from)
        self._bare = False
        d = defer.maybeDeferred(self.validateTo, user)
        d.addCallbacks(self._cbToValidate, self._ebToValidate, callbackArgs=(user,))

    def do_MAIL(self, rest):
        """
        C{MAIL FROM}, checking RFC 1870's C{SIZE=} parameter against C{max_size} first,
        and C{BODY=} (RFC 6152); any other parameter is answered 555.
        """
        if self._notASCII(rest):
            return
        match = None if self._from else self.mail_re.match(rest)
        if match is not None and match.group("opts"):
            if self._unknownParameter(match.group("opts"), (b"SIZE", b"BODY")):
                return
            for parameter in match.group("opts").split():
                key, _, value = parameter.partition(b"=")
                if key.upper() != b"SIZE":
                    continue
                if not value.isdigit():
                    self.sendCode(501, b"Syntax error in SIZE parameter")
                    return
                # More digits than any size this server takes: refused unread (Python
                # will not even turn 5000 digits into a number).
                if len(value.lstrip(b"0")) > 20 or int(value) > self.settings.maxSize:
                    self.sendCode(552, b"Message size exceeds fixed maximum message size")
                    return
        super().do_MAIL(rest)

    def validateFrom(self, helo, origin):
        """
        Any sender (even C{<>}): this server only receives.
        """
        return origin

    def validateTo(self, user):
        """
        Accept a recipient in one of the domains (and listed, when C{recipients} is set).

        @return: a callable making the recipient's L{MaildirMessage} for the current
            transaction.
        @raise SMTPBadRcpt: 550 for any other domain (no relaying) or an unlisted
            address, 553 for a local part that cannot be a Maildir's name.
        """
        settings = self.settings
        rawDomain = user.dest.domain.decode("ascii", "replace")
        local = user.dest.local.decode("ascii", "replace")
        postmaster = local.lower() == "postmaster"
        if postmaster and getattr(self, "_bare", False):
            # RFC 5321 4.5.1: the bare "postmaster" is always accepted.
            rawDomain = settings.postmasterDomain
        domain = normaliseDomain(rawDomain)
        if rawDomain.startswith("[") and domain not in settings.domains:
            raise tsmtp.SMTPBadRcpt(user, 550, "Address literals are not accepted here: "
                                               "use one of the domains this server serves")
        if domain not in settings.domains:
            raise tsmtp.SMTPBadRcpt(user, 550, "Relaying denied: not a local domain")
        if _localProblem(local) is not None:
            raise tsmtp.SMTPBadRcpt(user, 553, "Mailbox name not allowed")
        local = local.lower()
        if (settings.recipients is not None and not postmaster
                and f"{local}@{domain}" not in settings.recipients):
            raise tsmtp.SMTPBadRcpt(user, 550, "No such user here")
        if len(self._to) >= MAX_RECIPIENTS:
            raise tsmtp.SMTPServerError(452, "Too many recipients")
        return lambda: self.transaction.messageFor(domain, local)

    # -- the message ---------------------------------------------------------------------

    def do_DATA(self, rest):
        # The one stored file serves every recipient: the Received header can name one.
        self._recipients = {bytes(user.dest).lower() for user, _ in self._to}
        if self._from is not None and self._to:
            now = self.clock.seconds()
            self.transaction = Transaction(
                service=self.settings.service, store=self.store,
                id=f"{int(now):X}.{os.getpid():X}.{next(_transactionIds)}", seconds=now)
        super().do_DATA(rest)

    def receivedHeader(self, helo, origin, recipients) -> bytes:
        """
        The trace header (RFC 5321 4.4) put before each copy: the HELO name, the client's
        address and port, this host, the transaction's id and date (from the clock).
        """
        transaction = self.transaction
        name = _UNSAFE_HELO.sub(b"?", (helo[0] or b"")[:255]) or b"unknown"
        host, port = peerOf(self.transport.getPeer())
        literal = f"IPv6:{host}" if ":" in host else host
        date = tsmtp.rfc822date(time.gmtime(transaction.seconds), local=False)
        sender = bytes(origin) if origin is not None else b""
        # RFC 5321 4.4: "Return-Path: <reverse-path>" first (<> for a bounce), then the
        # Received stamp: "from" Domain "(" address-literal ")", the client's port in a
        # comment (TCP-info has no port), "by", "with", "id", "for" <recipient>, ";"
        # date. One file serves every recipient (hard links), so "for" names the
        # recipient only when there is one (RFC 5321 7.2 advises naming no others).
        forClause = b""
        if len(getattr(self, "_recipients", ())) == 1:
            recipient = bytes(recipients[0].dest)
            if b"@" in recipient:  # not the bare "postmaster"
                forClause = b"\n\tfor <%s>" % _UNSAFE_PATH.sub(b"?", recipient)
        return (b"Return-Path: <%s>\nReceived: from %s ([%s])\n\t(port %d)\n\tby %s with %s "
                b"id %s%s;\n\t%s" % (
                    _UNSAFE_PATH.sub(b"?", sender), name,
                    literal.encode("ascii", "replace"), port, self.host,
                    (b"ESMTPS" if self.startedTLS else b"ESMTP") if self.extended
                    else b"SMTP",
                    transaction.id.encode("ascii"), forClause, date))

    def dataLineReceived(self, line):
        """
        A line of the message: counted against C{max_size} (as transmitted, CRLF
        included); over it, every copy is removed and the rest is read and dropped, to be
        answered 552 after the final dot.
        """
        transaction = self.transaction
        if line != b"." and not self.datafailed and transaction is not None:
            transaction.size += len(line) + 2 - (line[:1] == b".")
            if transaction.size > self.settings.maxSize:
                self.datafailed = tsmtp.SMTPServerError(
                    552, b"Message size exceeds fixed maximum message size")
                transaction.abort()
                return
        super().dataLineReceived(line)

    state_DATA = dataLineReceived

    def _messageHandled(self, resultList):
        """
        Every copy's C{eomReceived} has answered: commit them all and say 250, or, if any
        failed, remove them all and say 451 (Twisted's would say 550, a permanent failure,
        having left the successful copies delivered).
        """
        if not isinstance(resultList, list):  # no copies at all: nothing to deliver
            self.sendCode(250, b"Message accepted")
            return
        copies = [result for ok, result in resultList if ok and result is not None]
        failures = [result for ok, result in resultList if not ok]
        service = self.settings.service
        errors = self.store.errors
        for failure in failures:
            errors.failure(causeOf(failure, service, "delivery"),
                           "smtp {service}: delivery failed", failure, service=service)
        transaction = copies[0].transaction if copies else self.transaction
        if not failures:
            try:
                for copy in copies:
                    copy.commit()
                for directory in {os.path.join(copy.directory, "new") for copy in copies}:
                    self.store.syncDirectory(directory)
            except OSError:
                failure = Failure()
                errors.failure(causeOf(failure, service, "delivery"),
                               "smtp {service}: delivery failed", failure, service=service)
                failures.append(True)
        if failures:
            if transaction is not None:
                transaction.abort()
            for copy in copies:
                copy.discard()
            self.sendCode(451, LOCAL_ERROR)
            return
        if transaction is not None:
            transaction.finish()
        host, port = peerOf(self.transport.getPeer())
        client = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("smtp {service}: delivered message {id} ({size} bytes) from {client} "
                 "to {recipients}", service=service, id=transaction.id,
                 size=transaction.size, client=client,
                 recipients=", ".join(copy.address for copy in copies))
        self.sendCode(250, b"Message accepted for delivery, id " + transaction.id.encode())


class MaildirSMTPFactory(ServerFactory):
    """
    Builds L{MaildirSMTP} protocols sharing one L{MaildirStore}.
    """

    noisy = False

    def __init__(self, settings: Settings, store: MaildirStore, clock, tls=None):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.tls = tls

    def buildProtocol(self, addr):
        protocol = MaildirSMTP(self.settings, self.store, self.clock, self.tls)
        protocol.factory = self
        return protocol


def buildFactory(service, reactor) -> MaildirSMTPFactory:
    """
    The smtp factory for C{service}. Nothing is created on disk here (this may run before
    privileges are dropped): Maildirs are made, as needed, at delivery.

    @raise ValueError: C{maildir} exists and is not a directory.
    """
    options = service.options
    base = options["maildir"]
    if os.path.exists(base) and not os.path.isdir(base):
        raise ValueError(f"maildir {base!r} is not a directory")
    settings = Settings.fromService(service)
    store = MaildirStore(base, options["hostname"], reactor)
    tls = options.get("tls")
    return MaildirSMTPFactory(settings, store, reactor,
                              None if tls is None else contextFactory(tls["cert"], tls["key"]))


#: The limits an C{smtp} service has unless configured: no byte either way for five
#: minutes closes the connection (RFC 5321 4.5.3.2: a server waits at least that long),
#: whatever the SMTP state, the data phase included.
DEFAULT_LIMITS = {"idle_timeout": DEFAULT_TIMEOUT}


smtp = PortProtocol(
    name="smtp",
    description="SMTP: receives mail for local domains into Maildirs (RFC 5321)",
    wellKnownPort=25,
    factory=buildFactory,
    options=OPTIONS,
    validate=completeOptions,
    defaultLimits=DEFAULT_LIMITS,
)
