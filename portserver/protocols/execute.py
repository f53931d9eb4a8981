"""
C{exec}: each connection runs a configured program with the connection as its standard
input and output, the inetd "nowait" / ucspi-tcp C{tcpserver} model.

The program is started with Twisted's process machinery (a L{Process} that makes it a
session leader: L{portserver.protocols.process_group}) and three pipes (Twisted cannot
hand a socket to a child as its stdin/stdout, and the pipes let the tracking layer count
every byte). What the client sends goes to the program's stdin; what the program writes
to its stdout goes to the client; each line of its stderr is logged.

Backpressure both ways: the program's stdin pipe pauses the client's connection when the
pipe is full (the client's side is registered as the stdin writer's streaming producer),
and the client's connection pauses reading of the program's output when the client stops
reading (Twisted pauses the stderr pipe with it). Nothing is buffered without bound.

C{argv[0]} names the program: an absolute path, or a bare name looked up, when the
options are checked, on the C{PATH} the program will get. C{executable} may name another
file to run with that C{argv} (inetd's server-program field).

The program's environment is built, not inherited: C{PATH} (a safe default unless
configured), the configured C{env}, and the tcp-environ(5) variables C{tcpserver -H}
sets: C{PROTO=TCP}, C{TCPLOCALIP}, C{TCPLOCALPORT}, C{TCPREMOTEIP}, C{TCPREMOTEPORT}, and
C{TCPLOCALHOST} when C{local_host} is configured (C{tcpserver -l}). On IPv6 (an IPv4-mapped
peer is IPv4), as ucspi-tcp6's C{tcpserver}: C{PROTO=TCP6} and C{TCP6LOCALIP},
C{TCP6LOCALPORT}, C{TCP6REMOTEIP}, C{TCP6REMOTEPORT} (C{TCP6LOCALHOST}, and
C{TCP6INTERFACE} for a link-local address), with the C{TCP*} names set to the same values,
so scripts written for C{${PROTO}REMOTEIP} and for C{TCPREMOTEIP} both work. The server's own
environment (which may hold secrets) is not passed on. A configured C{env} may not name a
connection variable: those always describe the connection.

Each program leads a session and process group of its own
(L{portserver.protocols.process_group}), so that it and everything it starts end with
its connection. Ends of a connection:

  - the client half-closes (or closes: TCP cannot tell the two apart until something is
    written to it): the program's stdin is closed; its output still reaches the client
    (a write to a client that has closed is answered by a reset: the connection is then
    lost). A program that writes nothing for C{eof_grace} seconds after that, and has
    not exited, is taken to have lost its client: the connection is closed and the
    program ended as below. Without this a program that does not read its stdin would
    hold its socket in CLOSE_WAIT, its registry record and its processes forever;
  - the program closes its stdout: the client gets what was written, then a half-close
    (end of output); the program may still read its stdin;
  - the program has exited and its stdout is closed: the connection is closed, after
    what was written;
  - the connection is lost or closed, whatever the program is doing: its stdin and
    stdout are closed, and its process group gets C{SIGTERM}, then C{SIGKILL} if
    anything is left in it C{kill_grace} seconds later. The group of a program that
    exited is signalled too when something it started is still in it.

At the reactor's shutdown the process waits for every group to be gone (each connection
is closed by the server's drain at the latest). At most C{max_connections} programs run
at once (40 by default, as C{tcpserver -c}). Stderr lines are logged at most
L{STDERR_LINES} per L{STDERR_INTERVAL} seconds per service; the rest are counted and
the count logged. The end of each program is logged with its exit status, run time, pid
and client.
"""

from __future__ import annotations

import grp
import math
import os
import pwd
import shutil
import signal
import socket

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from portserver.options import Option, OptionProblem
from portserver.protocols.process_group import ProgramGroup, ProgramGroups, SessionSpawner
from portserver.provider import PortProtocol

log = Logger()

#: The C{PATH} a program gets unless C{env} sets one; also where a bare C{argv[0]} is
#: looked up. Not the server's own C{PATH}: what runs should not depend on how the server
#: was started.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Seconds between C{SIGTERM} and C{SIGKILL} when the connection ends before the program.
DEFAULT_KILL_GRACE = 5

#: Seconds a program may stay silent after its client's end of input (a half-close or a
#: close) before the connection is taken as gone.
DEFAULT_EOF_GRACE = 10

#: The limits an C{exec} service has unless configured: as many programs at once as
#: C{tcpserver}'s default (C{-c 40}), and a connection with no byte either way for ten
#: minutes is closed (and its program group ended).
DEFAULT_LIMITS = {"max_connections": 40, "idle_timeout": 600}

#: Stderr lines of one service logged per L{STDERR_INTERVAL} seconds; the rest are
#: counted and the count logged.
STDERR_LINES = 100
STDERR_INTERVAL = 10.0

#: The longest stderr line logged; the rest of a longer line is dropped.
MAX_STDERR_LINE = 1000

#: The variables set per connection (tcp-environ(5)); C{env} may not name them.
_TCP_VARIABLES = ("LOCALIP", "LOCALPORT", "LOCALHOST", "REMOTEIP", "REMOTEPORT",
                  "REMOTEHOST", "REMOTEINFO")
CONNECTION_VARIABLES = frozenset({
    "PROTO", "TCP6INTERFACE",
    *(f"{proto}{name}" for proto in ("TCP", "TCP6") for name in _TCP_VARIABLES),
})

#: What the program's file descriptors are: stdin written by us, stdout and stderr read.
CHILD_FDS = {0: "w", 1: "r", 2: "r"}


class PrivilegeError(Exception):
    """
    The program cannot be run as the configured user or group by this process.
    """


# -- option checks ---------------------------------------------------------------------


def _hasNul(text: str) -> bool:
    return "\0" in text


def _checkArgv(argv) -> str | None:
    if not argv:
        return "must list the program and its arguments, at least the program"
    for index, item in enumerate(argv):
        if not isinstance(item, str):
            return (f"item {index + 1} must be a string, not {type(item).__name__} "
                    "(quote it in YAML)")
        if _hasNul(item):
            return f"item {index + 1} contains a NUL character"
    if not argv[0]:
        return "the program (item 1) must not be empty"
    return None


def _checkEnv(env) -> str | None:
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or _hasNul(key):
            return f"{key!r} is not an environment variable name"
        if key in CONNECTION_VARIABLES:
            return (f"{key} is set by portserver for each connection and cannot be "
                    "configured" + (" (use the local_host option)"
                                    if key == "TCPLOCALHOST" else ""))
        if not isinstance(value, str):
            return (f"the value of {key} must be a string, not {type(value).__name__} "
                    "(quote it in YAML)")
        if _hasNul(value):
            return f"the value of {key} contains a NUL character"
    return None


def _lookupUser(user) -> pwd.struct_passwd:
    """
    The passwd entry of C{user}, a name or a uid.

    @raise KeyError: when there is none.
    """
    return pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)


def _lookupGroup(group) -> grp.struct_group:
    """
    The group entry of C{group}, a name or a gid.

    @raise KeyError: when there is none.
    """
    return grp.getgrgid(group) if isinstance(group, int) else grp.getgrnam(group)


def _checkUser(user) -> str | None:
    if user is None:
        return None
    if isinstance(user, int) and user < 0:
        return "must be a user name or a uid of 0 or more"
    try:
        _lookupUser(user)
    except (KeyError, ValueError, OverflowError):  # ValueError: a NUL in the name
        return f"no user {user!r} on this host"
    return None


def _checkGroup(group) -> str | None:
    if group is None:
        return None
    if isinstance(group, int) and group < 0:
        return "must be a group name or a gid of 0 or more"
    try:
        _lookupGroup(group)
    except (KeyError, ValueError, OverflowError):
        return f"no group {group!r} on this host"
    return None


#: The longest C{kill_grace} or C{eof_grace}: longer ones cannot be scheduled (the
#: reactor's poll timeout overflows) and would mean "never" anyway.
MAX_GRACE = 86400


def _checkKillGrace(value) -> str | None:
    if not math.isfinite(value) or value < 0 or value > MAX_GRACE:
        return f"must be a number of seconds, 0 to {MAX_GRACE}"
    return None


def _checkEofGrace(value) -> str | None:
    return None if value is None else _checkKillGrace(value)


def _checkDirectory(path) -> str | None:
    if path is None:
        return None
    if not os.path.isabs(path):
        return f"{path!r} must be an absolute path"
    if not os.path.isdir(path):
        return f"{path!r} is not a directory"
    return None


def _checkLocalHost(name) -> str | None:
    if name is None:
        return None
    if not name or _hasNul(name):
        return "must be a non-empty host name"
    return None


def _checkExecutable(path) -> str | None:
    if path is None:
        return None
    if not os.path.isabs(path):
        return f"{path!r} must be an absolute path"
    return resolveProgram(path, DEFAULT_PATH)[1]  # absolute: PATH plays no part


#: C{argv} is required; L{completeOptions} fills in C{executable} when not given.
OPTIONS = {
    "argv": Option(list, default=None, check=_checkArgv,
                   describe="a list of strings: the program and its arguments",
                   required=True),
    "executable": Option((str, type(None)), default=None, check=_checkExecutable,
                         describe="an absolute path"),
    "env": Option(dict, default={}, check=_checkEnv,
                  describe="a mapping of variable names to strings"),
    "user": Option((str, int, type(None)), default=None, check=_checkUser,
                   describe="a user name or uid"),
    "group": Option((str, int, type(None)), default=None, check=_checkGroup,
                    describe="a group name or gid"),
    "cwd": Option((str, type(None)), default=None, check=_checkDirectory,
                  describe="an absolute directory path"),
    "kill_grace": Option((int, float), default=DEFAULT_KILL_GRACE, check=_checkKillGrace,
                         describe="a number of seconds"),
    "eof_grace": Option((int, float, type(None)), default=DEFAULT_EOF_GRACE,
                        check=_checkEofGrace,
                        describe="a number of seconds, or null to wait for the program"),
    "local_host": Option((str, type(None)), default=None, check=_checkLocalHost,
                         describe="a host name"),
}


def resolveProgram(program: str, path: str) -> tuple[str | None, str | None]:
    """
    The absolute path of C{program}: itself when absolute, else looked up on C{path}
    (a C{PATH} value).

    @return: C{(executable, None)}, or C{(None, message)} when it cannot be run.
    """
    if "/" in program:
        if not os.path.isabs(program):
            return None, (f"{program!r} must be an absolute path, or a bare name looked "
                          "up on PATH")
        if not os.path.exists(program):
            return None, f"{program!r} does not exist"
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            return None, f"{program!r} is not an executable file"
        return program, None
    found = shutil.which(program, path=path)
    if found is None:
        return None, f"no executable {program!r} on PATH {path}"
    return os.path.abspath(found), None


def completeOptions(options: dict) -> list[OptionProblem]:
    """
    The C{validate} of C{exec}: C{group} needs C{user}; and unless C{executable} is
    given, the program, C{argv[0]}, is looked up on the C{PATH} that C{env} gives it and
    C{executable} is set to its absolute path. A C{user} (or C{group}) this process
    cannot switch to (it is not root, or only the group would change) is refused here,
    so that C{--check} and a reload say so, located, rather than every connection.
    """
    problems = []
    if options["group"] is not None and options["user"] is None:
        problems.append(OptionProblem(
            "group", "needs a user too: the program runs as a user, with this group "
                     "instead of the user's primary group"))
    elif options["user"] is not None:
        try:
            spawnCredentials(*resolveCredentials(options["user"], options["group"]))
        except PrivilegeError as e:
            problems.append(OptionProblem("user", str(e)))
    if options["executable"] is None:
        path = options["env"].get("PATH", DEFAULT_PATH)
        executable, message = resolveProgram(options["argv"][0], path)
        if message:
            problems.append(OptionProblem("argv", message))
        options["executable"] = executable
    return problems


# -- who runs it -------------------------------------------------------------------------


def resolveCredentials(user, group) -> tuple[int | None, int | None]:
    """
    The uid and gid to run as, from the C{user} and C{group} options: with a user and
    no group, the user's primary group.
    """
    uid = gid = None
    if user is not None:
        entry = _lookupUser(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        gid = _lookupGroup(group).gr_gid
    return uid, gid


def spawnCredentials(uid, gid):
    """
    What to give C{spawnProcess} as C{uid} and C{gid}: L{None} for what needs no change.

    @raise PrivilegeError: when another user or group is asked of a server that is not
        root (Twisted's child would fail to switch, after the fork); or when only the
        group would change (Twisted's child then warns, on the program's stdout when the
        server logs to stdout).
    """
    if uid is None and gid is None:
        return None, None
    euid, egid = os.geteuid(), os.getegid()
    if (uid is None or uid == euid) and (gid is None or gid == egid):
        return None, None  # already who was asked for
    if euid != 0:
        asked = []
        if uid is not None and uid != euid:
            asked.append(f"uid {uid}")
        if gid is not None and gid != egid:
            asked.append(f"gid {gid}")
        raise PrivilegeError(
            f"cannot run the program as {' and '.join(asked)}: the server runs as uid "
            f"{euid}, not root (start it as root, or drop the user and group options)")
    if uid is None or uid == euid:
        raise PrivilegeError(
            f"cannot run the program with only its group changed (to gid {gid}): name a "
            f"user other than uid {euid} too")
    return uid, gid


# -- the protocol ------------------------------------------------------------------------


def _addressText(address) -> tuple[str, str]:
    """
    An address's IP (IPv4-mapped IPv6 shown as IPv4, without a C{%scope}) and port, as
    text.
    """
    host = address.host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, str(address.port)


def _interfaceOf(address) -> str | None:
    """
    The name of the interface of a link-local IPv6 C{address} (its scope), or L{None}.
    """
    host = address.host
    if "%" in host:
        return host.split("%", 1)[1]
    scope = getattr(address, "scopeID", 0)
    if scope:
        try:
            return socket.if_indextoname(scope)
        except OSError:
            return str(scope)
    return None


def _exitText(reason) -> str:
    """
    How a program ended, in words: C{exit code 0}, C{killed by signal SIGKILL}.
    """
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    code = getattr(value, "exitCode", None)
    return f"exit code {code or 0}"


class StderrBudget:
    """
    How many stderr lines of one service may be logged: L{STDERR_LINES} per window of
    L{STDERR_INTERVAL} seconds (a window opens with the first line after the last one
    closed). The lines past that are counted, and the count is logged when the window
    closes: a program that floods its stderr costs a line count, not a log line each.
    """

    def __init__(self, service: str, clock, lines: int = STDERR_LINES,
                 interval: float = STDERR_INTERVAL):
        self.service = service
        self.clock = clock
        self.lines = lines
        self.interval = interval
        self.opened = None  # when the window opened, or None between windows
        self.logged = 0
        self.suppressed = 0
        self.summaryCall = None

    def _window(self) -> None:
        now = self.clock.seconds()
        if self.opened is None or now - self.opened >= self.interval:
            if self.suppressed:
                self.summarise()
            self.opened, self.logged = now, 0

    def exhausted(self) -> bool:
        """
        Whether the lines arriving now would all be dropped.
        """
        self._window()
        return self.logged >= self.lines

    def allow(self) -> bool:
        """
        Whether a line may be logged now; counts it either way.
        """
        self._window()
        if self.logged < self.lines:
            self.logged += 1
            return True
        self.drop(1)
        return False

    def drop(self, count: int) -> None:
        """
        Count C{count} lines not logged, to be summarised when the window closes.
        """
        if count <= 0:
            return
        self.suppressed += count
        if self.summaryCall is None:
            self._window()
            delay = max(0.0, self.opened + self.interval - self.clock.seconds())
            self.summaryCall = self.clock.callLater(delay, self.summarise)

    def summarise(self) -> None:
        """
        Log how many lines were dropped since the last summary, if any (also at the end
        of the window; call it to flush).
        """
        call, self.summaryCall = self.summaryCall, None
        if call is not None and call.active():
            call.cancel()
        count, self.suppressed = self.suppressed, 0
        if count:
            log.warn("exec service {service!r}: {count} more stderr lines suppressed in "
                     "the last {interval:g} s", service=self.service, count=count,
                     interval=self.interval, suppressed=count)


class StderrLines:
    """
    Splits a program's stderr into lines and hands each to C{emit}, truncated to
    C{limit} characters; the rest of a longer line is dropped. With a C{budget}
    (L{StderrBudget}), lines past it are only counted: while it is exhausted, a chunk's
    lines are counted without being split or decoded.
    """

    def __init__(self, emit, limit: int = MAX_STDERR_LINE,
                 budget: StderrBudget | None = None):
        self.emit = emit
        self.limit = limit
        self.budget = budget
        self.buffer = b""
        self.skipping = False  # in the rest of a long line, already emitted or counted

    def feed(self, data: bytes) -> None:
        if self.budget is not None and self.budget.exhausted():
            self._count(data)
            return
        lines = (self.buffer + data).split(b"\n")
        self.buffer = b""
        rest = lines.pop()
        for line in lines:
            if self.skipping:
                self.skipping = False
            else:
                self._emit(line)
        if self.skipping:
            return
        if len(rest) > self.limit:
            self._emit(rest)
            self.skipping = True
        else:
            self.buffer = rest

    def _count(self, data: bytes) -> None:
        """
        Count the lines of C{data} as dropped (the budget is exhausted).
        """
        last = data.rfind(b"\n")
        if last >= 0:
            ended = data.count(b"\n", 0, last + 1)
            if self.skipping:
                ended -= 1  # the end of a line counted (or emitted) already
            self.budget.drop(ended)
            self.buffer, self.skipping = b"", False
            data = data[last + 1:]
        if self.skipping or not data:
            return
        self.buffer += data
        if len(self.buffer) > self.limit:  # a long unfinished line: counted now
            self.budget.drop(1)
            self.buffer, self.skipping = b"", True

    def flush(self) -> None:
        if self.buffer and not self.skipping:
            self._emit(self.buffer)
        self.buffer = b""
        self.skipping = False

    def _emit(self, line: bytes) -> None:
        if self.budget is not None and not self.budget.allow():
            return
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if len(text) > self.limit:
            text = text[:self.limit] + " [truncated]"
        self.emit(text)


@implementer(IPushProducer)
class ProgramOutput:
    """
    The program's stdout as a producer for the client's connection: paused when the
    client stops reading.
    """

    def __init__(self, connection: "ExecProtocol"):
        self.connection = connection

    def pauseProducing(self):
        process = self.connection.process
        if process is not None:
            process.pauseProducing()

    def resumeProducing(self):
        connection = self.connection
        if connection.process is not None and not connection.gone:
            connection.process.resumeProducing()

    def stopProducing(self):
        pass  # the connection is lost: ExecProtocol.connectionLost ends the program


@implementer(IPushProducer)
class ClientInput:
    """
    The client's connection as a producer for the program's stdin: paused while the
    stdin pipe is full.

    Not the client's transport itself: the stdin writer calls C{stopProducing} when the
    pipe closes, and that must not close the connection (the program may write on).
    """

    def __init__(self, connection: "ExecProtocol"):
        self.connection = connection
        self.paused = False

    def _reading(self) -> bool:
        connection = self.connection
        return not (connection.gone or connection.readClosed or connection.closing)

    def pauseProducing(self):
        if self._reading() and not self.paused:
            self.paused = True
            self.connection.transport.pauseProducing()

    def resumeProducing(self):
        if self.paused:
            self.paused = False
            if self._reading():
                self.connection.transport.resumeProducing()

    def stopProducing(self):
        # The program's stdin is gone: what the client sends from now on is dropped,
        # so let the client go on sending rather than stall it.
        self.resumeProducing()


class ProgramProtocol(ProcessProtocol):
    """
    The process side of one connection; tells its L{ExecProtocol}.
    """

    def __init__(self, connection: "ExecProtocol"):
        self.connection = connection

    def connectionMade(self):
        self.connection.programStarted(self.transport)

    def childDataReceived(self, childFD, data):
        if childFD == 1:
            self.connection.programOutput(data)
        elif childFD == 2:
            self.connection.stderr.feed(data)

    def childConnectionLost(self, childFD):
        if childFD == 0:
            self.connection.stdinLost()
        elif childFD == 1:
            self.connection.outputEnded()

    def processExited(self, reason):
        self.connection.programExited(reason)

    def processEnded(self, reason):
        self.connection.programEnded(reason)


@implementer(IHalfCloseableProtocol)
class ExecProtocol(Protocol):
    """
    One connection: runs the program, and relays between it and the client.

    @ivar process: the L{IProcessTransport} once spawned, else L{None}.
    @ivar gone: the connection is lost.
    @ivar closing: the server has asked to close the connection.
    @ivar readClosed: the client has half-closed (no more data from it).
    @ivar running: the program has been spawned and has not exited.
    @ivar group: the program's L{ProgramGroup} once spawned, else L{None}.
    @ivar eofCall: while the client has half-closed and the program runs, the end of
        C{eof_grace} (pushed back by each write of the program).
    """

    process = None
    pid = None
    group = None
    started = None
    eofCall = None
    gone = False
    closing = False
    readClosed = False
    running = False
    exited = False
    ended = False
    outputDone = False
    producing = False

    def __init__(self, factory: "ExecFactory"):
        self.factory = factory
        self.peer = "?"
        self.input = ClientInput(self)
        self.stderr = StderrLines(self.logStderr, budget=factory.stderrBudget)

    # -- the client's side -------------------------------------------------------------

    def connectionMade(self):
        factory = self.factory
        host, peer = self.transport.getHost(), self.transport.getPeer()
        peerIP, peerPort = _addressText(peer)
        self.peer = f"[{peerIP}]:{peerPort}" if ":" in peerIP else f"{peerIP}:{peerPort}"
        environment = factory.environment(host, peer)
        self.started = factory.reactor.seconds()
        try:
            uid, gid = spawnCredentials(factory.uid, factory.gid)
            factory.spawner.spawn(
                factory.reactor, ProgramProtocol(self), factory.executable, factory.argv,
                environment, factory.cwd, uid, gid, dict(CHILD_FDS))
        except Exception as e:
            log.error(
                "exec service {service!r}: cannot start {executable} for {peer}: {error}",
                service=factory.service, executable=factory.executable, peer=self.peer,
                error=f"{type(e).__name__}: {e}" if not isinstance(e, PrivilegeError)
                else str(e))
            self.close()
            return
        if self.process is None:  # pragma: no cover - a reactor that did not connect
            self.close()
            return
        self.transport.registerProducer(ProgramOutput(self), True)
        self.producing = True
        self.process.registerProducer(self.input, True)

    def dataReceived(self, data):
        if self.process is not None and not self.readClosed:
            self.process.write(data)

    def readConnectionLost(self):
        """
        The client half-closed: end of the program's input.
        """
        if self.readClosed:
            return
        self.readClosed = True
        self.input.paused = False
        process = self.process
        if process is not None:
            process.unregisterProducer()
            process.closeStdin()
            grace = self.factory.eofGrace
            if grace is not None and not (self.gone or self.closing):
                self.eofCall = self.factory.reactor.callLater(grace, self.clientSilent)

    def clientSilent(self) -> None:
        """
        C{eof_grace} seconds since the client's end of input (or the program's last
        write after it) and the program has neither written nor exited: the client is
        taken as gone (TCP cannot tell its close from a half-close without a write).
        """
        self.eofCall = None
        log.info("exec service {service!r}: pid {pid} for {peer} wrote nothing for "
                 "{grace}s after the client's end of input: closing the connection",
                 service=self.factory.service, pid=self.pid, peer=self.peer,
                 grace=self.factory.eofGrace)
        self.close()
        if self.group is not None:
            self.group.end()

    def cancelEof(self) -> None:
        call, self.eofCall = self.eofCall, None
        if call is not None and call.active():
            call.cancel()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=None):
        self.gone = True
        self.producing = False
        self.cancelEof()
        process = self.process
        if process is None:
            return
        if not self.readClosed:
            self.readClosed = True
            process.unregisterProducer()
            process.closeStdin()
        if not self.ended:
            # Keep reading stderr (resume before closing stdout: a reader being closed
            # must not be started again); the program's stdout goes nowhere now.
            process.resumeProducing()
            process.closeStdout()
        self.group.end()

    def close(self) -> None:
        """
        Close the client's connection, after what was written to it.
        """
        if self.gone or self.closing:
            return
        self.closing = True
        self.cancelEof()
        if self.producing:
            self.producing = False
            self.transport.unregisterProducer()  # else a paused producer holds it open
        self.transport.loseConnection()

    # -- the program's side --------------------------------------------------------------

    def programStarted(self, process) -> None:
        self.process = process
        self.pid = process.pid
        self.running = True
        factory = self.factory
        self.group = ProgramGroup(
            process.pid, factory.reactor, factory.killGrace, factory.spawner,
            f"exec service {factory.service!r}: pid {process.pid} for {self.peer}",
            factory.groups)

    def programOutput(self, data: bytes) -> None:
        if not (self.gone or self.closing):
            self.transport.write(data)
            if self.eofCall is not None:
                self.eofCall.reset(self.factory.eofGrace)

    def stdinLost(self) -> None:
        pass  # ClientInput.stopProducing already let the client go on

    def outputEnded(self) -> None:
        """
        The program closed its stdout: once what it wrote is sent, the client is told
        the output is over (a half-close), and the connection is closed when the program
        has exited too. A program that runs on without a stdout (C{cat >/dev/null}) may
        still read what the client sends.
        """
        self.outputDone = True
        if self.exited:
            self.close()
            return
        if self.gone or self.closing:
            return
        if self.producing:
            self.producing = False
            self.transport.unregisterProducer()  # else a paused producer holds it open
        loseWriteConnection = getattr(self.transport, "loseWriteConnection", None)
        if loseWriteConnection is not None:
            loseWriteConnection()

    def programExited(self, reason) -> None:
        """
        The program has exited (its pipes may still be open): no signal is needed now,
        and the connection is closed if the program's output is over.
        """
        self.running = False
        self.exited = True
        self.group.leaderExited()
        if self.outputDone:
            self.close()

    def programEnded(self, reason) -> None:
        """
        The program has exited and each of its pipes is closed: log how it ended, and
        close the connection.
        """
        self.running = False
        self.exited = self.ended = True
        self.stderr.flush()
        factory = self.factory
        elapsed = factory.reactor.seconds() - self.started
        log.info(
            "exec service {service!r}: pid {pid} for {peer} ended: {status} after "
            "{elapsed:.3f}s",
            service=factory.service, pid=self.pid, peer=self.peer,
            status=_exitText(reason), elapsed=elapsed,
            exitCode=getattr(reason.value, "exitCode", None),
            exitSignal=getattr(reason.value, "signal", None))
        self.close()

    def logStderr(self, line: str) -> None:
        log.info("exec service {service!r}: pid {pid} for {peer} stderr: {line}",
                 service=self.factory.service, pid=self.pid, peer=self.peer, line=line)


class ExecFactory(Factory):
    """
    Builds an L{ExecProtocol} per connection, for one configured service.

    @ivar spawner: starts programs and signals their groups (a L{SessionSpawner}).
    @ivar groups: the reactor's L{ProgramGroups}, waited for at its shutdown.
    @ivar stderrBudget: the service's L{StderrBudget}, shared by its connections.
    """

    noisy = False

    def __init__(self, service: str, reactor, options, spawner=None):
        self.service = service
        self.reactor = reactor
        self.executable = options["executable"]
        self.argv = list(options["argv"])
        self.env = dict(options["env"])
        self.cwd = options["cwd"]
        self.killGrace = options["kill_grace"]
        self.eofGrace = options["eof_grace"]
        self.localHost = options["local_host"]
        self.uid, self.gid = resolveCredentials(options["user"], options["group"])
        self.spawner = spawner if spawner is not None else SessionSpawner()
        self.groups = ProgramGroups.forReactor(reactor)
        self.stderrBudget = StderrBudget(service, reactor)

    def checkCredentials(self) -> None:
        """
        Log, naming the service, when the program can no longer be run as its C{user}
        (C{twistd --uid} dropped root after the service was built): every connection
        would be closed.
        """
        try:
            spawnCredentials(self.uid, self.gid)
        except PrivilegeError as e:
            log.error("exec service {service!r}: {error}; each connection will be closed "
                      "(run portserver as root, or drop the service's user option)",
                      service=self.service, error=str(e))

    def buildProtocol(self, addr):
        return ExecProtocol(self)

    def stopFactory(self):
        self.stderrBudget.summarise()  # no longer listening: say now what was dropped

    def environment(self, host, peer) -> dict[str, str]:
        """
        The program's environment for a connection from C{peer} to C{host}.
        """
        localIP, localPort = _addressText(host)
        remoteIP, remotePort = _addressText(peer)
        environment = {"PATH": DEFAULT_PATH}
        environment.update(self.env)
        prefixes = ("TCP6", "TCP") if ":" in remoteIP else ("TCP",)
        environment["PROTO"] = prefixes[0]
        for prefix in prefixes:
            environment.update({
                f"{prefix}LOCALIP": localIP, f"{prefix}LOCALPORT": localPort,
                f"{prefix}REMOTEIP": remoteIP, f"{prefix}REMOTEPORT": remotePort,
            })
            if self.localHost is not None:
                environment[f"{prefix}LOCALHOST"] = self.localHost
        if len(prefixes) == 2:
            interface = _interfaceOf(host)
            if interface is not None:
                environment["TCP6INTERFACE"] = interface
        return environment


def buildFactory(service, reactor) -> ExecFactory:
    """
    The factory of an C{exec} service.

    @raise PrivilegeError: when the program is to run as another user or group and the
        server is not root.
    """
    factory = ExecFactory(service.name, reactor, service.options)
    spawnCredentials(factory.uid, factory.gid)
    # twistd drops to --uid/--gid after building, before the reactor runs: check again.
    reactor.callWhenRunning(factory.checkCredentials)
    return factory


execute = PortProtocol(
    name="exec",
    description="Runs a configured program per connection, connection as stdin/stdout "
                "(inetd, tcpserver)",
    wellKnownPort=8023,
    factory=buildFactory,
    options=OPTIONS,
    validate=completeOptions,
    defaultLimits=DEFAULT_LIMITS,
)
