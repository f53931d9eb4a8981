"""
C{exec}: each connection runs a configured program with the connection as its standard
input and output, the inetd "nowait" / ucspi-tcp C{tcpserver} model.

The program is started with C{reactor.spawnProcess} and three pipes (Twisted cannot hand a
socket to a child as its stdin/stdout, and the pipes let the tracking layer count every
byte). What the client sends goes to the program's stdin; what the program writes to its
stdout goes to the client; each line of its stderr is logged.

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
C{TCPLOCALHOST} when C{local_host} is configured (C{tcpserver -l}). The server's own
environment (which may hold secrets) is not passed on. A configured C{env} may not name a
connection variable: those always describe the connection.

Ends of a connection:

  - the client half-closes (or closes: TCP cannot tell the two apart until something is
    written to it): the program's stdin is closed; its output still reaches the client;
  - the program closes its stdout: the client gets what was written, then a half-close
    (end of output); the program may still read its stdin;
  - the program has exited and its stdout is closed: the connection is closed, after
    what was written;
  - the connection is lost (reset, or a write to a client that has gone) while the
    program runs: its stdin and stdout are closed, and it gets C{SIGTERM}, then
    C{SIGKILL} if it is still running C{kill_grace} seconds later. Only the program is
    signalled, not processes it started.

The end of each program is logged with its exit status, run time, pid and client.
"""

from __future__ import annotations

import grp
import math
import os
import pwd
import shutil
import signal

from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from portserver.options import Option, OptionProblem
from portserver.provider import PortProtocol

log = Logger()

#: The C{PATH} a program gets unless C{env} sets one; also where a bare C{argv[0]} is
#: looked up. Not the server's own C{PATH}: what runs should not depend on how the server
#: was started.
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

#: Seconds between C{SIGTERM} and C{SIGKILL} when the connection ends before the program.
DEFAULT_KILL_GRACE = 5

#: The longest stderr line logged; the rest of a longer line is dropped.
MAX_STDERR_LINE = 1000

#: The variables set per connection (tcp-environ(5)); C{env} may not name them.
CONNECTION_VARIABLES = frozenset({
    "PROTO", "TCPLOCALIP", "TCPLOCALPORT", "TCPLOCALHOST", "TCPREMOTEIP", "TCPREMOTEPORT",
    "TCPREMOTEHOST", "TCPREMOTEINFO",
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


def _checkKillGrace(value) -> str | None:
    if not math.isfinite(value) or value < 0:
        return "must be a number of seconds, 0 or more"
    return None


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
    C{executable} is set to its absolute path.
    """
    problems = []
    if options["group"] is not None and options["user"] is None:
        problems.append(OptionProblem(
            "group", "needs a user too: the program runs as a user, with this group "
                     "instead of the user's primary group"))
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
    An address's IP (IPv4-mapped IPv6 shown as IPv4) and port, as text.
    """
    host = address.host
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, str(address.port)


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


class StderrLines:
    """
    Splits a program's stderr into lines and hands each to C{emit}, truncated to
    C{limit} characters; the rest of a longer line is dropped.
    """

    def __init__(self, emit, limit: int = MAX_STDERR_LINE):
        self.emit = emit
        self.limit = limit
        self.buffer = b""
        self.skipping = False  # in the dropped rest of a long line

    def feed(self, data: bytes) -> None:
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

    def flush(self) -> None:
        if self.buffer and not self.skipping:
            self._emit(self.buffer)
        self.buffer = b""
        self.skipping = False

    def _emit(self, line: bytes) -> None:
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
    """

    process = None
    pid = None
    started = None
    killCall = None
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
        self.stderr = StderrLines(self.logStderr)

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
            factory.reactor.spawnProcess(
                ProgramProtocol(self), factory.executable, factory.argv, env=environment,
                path=factory.cwd, uid=uid, gid=gid, childFDs=dict(CHILD_FDS))
        except Exception as e:
            log.error(
                "exec {service}: cannot start {executable} for {peer}: {error}",
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

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=None):
        self.gone = True
        self.producing = False
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
        if self.running:
            self.sendSignal("TERM")
            if self.running and self.killCall is None:
                self.killCall = self.factory.reactor.callLater(
                    self.factory.killGrace, self.kill)

    def close(self) -> None:
        """
        Close the client's connection, after what was written to it.
        """
        if self.gone or self.closing:
            return
        self.closing = True
        if self.producing:
            self.producing = False
            self.transport.unregisterProducer()  # else a paused producer holds it open
        self.transport.loseConnection()

    # -- the program's side --------------------------------------------------------------

    def programStarted(self, process) -> None:
        self.process = process
        self.pid = process.pid
        self.running = True

    def programOutput(self, data: bytes) -> None:
        if not (self.gone or self.closing):
            self.transport.write(data)

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

    def sendSignal(self, name: str) -> None:
        """
        Send the program C{SIG}C{name}, unless it has exited.
        """
        try:
            self.process.signalProcess(name)
        except ProcessExitedAlready:
            self.running = False
        except OSError as e:
            log.warn("exec {service}: cannot send SIG{signal} to pid {pid} for {peer}: "
                     "{error}", service=self.factory.service, signal=name, pid=self.pid,
                     peer=self.peer, error=e)

    def kill(self) -> None:
        """
        The program outlived C{kill_grace}: C{SIGKILL} it.
        """
        self.killCall = None
        if self.running:
            log.info("exec {service}: pid {pid} for {peer} still running {grace}s after "
                     "SIGTERM: sending SIGKILL", service=self.factory.service,
                     pid=self.pid, peer=self.peer, grace=self.factory.killGrace)
            self.sendSignal("KILL")

    def cancelKill(self) -> None:
        call, self.killCall = self.killCall, None
        if call is not None and call.active():
            call.cancel()

    def programExited(self, reason) -> None:
        """
        The program has exited (its pipes may still be open): no signal is needed now,
        and the connection is closed if the program's output is over.
        """
        self.running = False
        self.exited = True
        self.cancelKill()
        if self.outputDone:
            self.close()

    def programEnded(self, reason) -> None:
        """
        The program has exited and each of its pipes is closed: log how it ended, and
        close the connection.
        """
        self.running = False
        self.exited = self.ended = True
        self.cancelKill()
        self.stderr.flush()
        factory = self.factory
        elapsed = factory.reactor.seconds() - self.started
        log.info(
            "exec {service}: pid {pid} for {peer} ended: {status} after {elapsed:.3f}s",
            service=factory.service, pid=self.pid, peer=self.peer,
            status=_exitText(reason), elapsed=elapsed,
            exitCode=getattr(reason.value, "exitCode", None),
            exitSignal=getattr(reason.value, "signal", None))
        self.close()

    def logStderr(self, line: str) -> None:
        log.info("exec {service}: pid {pid} for {peer} stderr: {line}",
                 service=self.factory.service, pid=self.pid, peer=self.peer, line=line)


class ExecFactory(Factory):
    """
    Builds an L{ExecProtocol} per connection, for one configured service.
    """

    noisy = False

    def __init__(self, service: str, reactor, options):
        self.service = service
        self.reactor = reactor
        self.executable = options["executable"]
        self.argv = list(options["argv"])
        self.env = dict(options["env"])
        self.cwd = options["cwd"]
        self.killGrace = options["kill_grace"]
        self.localHost = options["local_host"]
        self.uid, self.gid = resolveCredentials(options["user"], options["group"])

    def buildProtocol(self, addr):
        return ExecProtocol(self)

    def environment(self, host, peer) -> dict[str, str]:
        """
        The program's environment for a connection from C{peer} to C{host}.
        """
        localIP, localPort = _addressText(host)
        remoteIP, remotePort = _addressText(peer)
        environment = {"PATH": DEFAULT_PATH}
        environment.update(self.env)
        environment.update({
            "PROTO": "TCP",
            "TCPLOCALIP": localIP, "TCPLOCALPORT": localPort,
            "TCPREMOTEIP": remoteIP, "TCPREMOTEPORT": remotePort,
        })
        if self.localHost is not None:
            environment["TCPLOCALHOST"] = self.localHost
        return environment


def buildFactory(service, reactor) -> ExecFactory:
    """
    The factory of an C{exec} service.

    @raise PrivilegeError: when the program is to run as another user or group and the
        server is not root.
    """
    factory = ExecFactory(service.name, reactor, service.options)
    spawnCredentials(factory.uid, factory.gid)
    return factory


execute = PortProtocol(
    name="exec",
    description="Runs a configured program per connection, connection as stdin/stdout "
                "(inetd, tcpserver)",
    wellKnownPort=8023,
    factory=buildFactory,
    options=OPTIONS,
    validate=completeOptions,
)
