"""
Programs in sessions of their own, and the end of their process groups: what lets C{exec}
promise that a program, and whatever it started, never outlives its connection.

Why a subclass of Twisted's L{Process} rather than a launcher: a program must lead a new
session (and so a process group whose id is its pid) so that one C{killpg} reaches it and
every process it started, while C{reactor.spawnProcess} has no such option. Going through
C{setsid(1)} or a C{python -c} launcher would cost an extra exec (a Python start-up, ~20 ms,
for the latter), depend on a binary being installed, and lose C{executable} (inetd's
server-program field: C{setsid(1)} runs its C{argv[0]}). L{Process}'s fork path already has
the hook for this: C{_BaseProcess._setupChild} is documented "override in subclasses",
and Twisted's own L{twisted.internet.process.PTYProcess} calls C{os.setsid()} there. The
C{posix_spawnp} fast path (taken only without C{uid}, C{gid} and C{path}) has no hook, so
L{SessionProcess} always forks, as Twisted does whenever a user or directory is given.
"""

from __future__ import annotations

import os
import signal
import weakref

from twisted.internet.defer import Deferred, succeed
from twisted.internet.process import Process
from twisted.logger import Logger

log = Logger()

#: The exit status of a program that could not be started (as a shell gives).
CANNOT_RUN = 127


class SessionProcess(Process):
    """
    A L{Process} whose program leads a new session and process group (its pid is the
    group's id), and that tells why the program could not be started in one line on its
    stderr, not a traceback.

    Signals and the fork: between C{fork()} and C{exec()} the child is a copy of the
    server, with the server's Python signal handlers; a C{SIGTERM} caught there would be
    handled by a copy of the server ("Received SIGTERM, shutting down" in the server's
    log) and never reach the program. So L{SessionSpawner.spawn} forks with every signal
    blocked (C{signalMask} is the mask to restore), and the child puts the default
    disposition back on every signal the server handles before it unblocks them: a
    signal sent meanwhile is then acted on by the default action, as it would be by the
    program.
    """

    def __init__(self, *args, signalMask=frozenset(), **kwargs):
        self.signalMask = signalMask
        super().__init__(*args, **kwargs)

    def _trySpawnInsteadOfFork(self, path, uid, gid, executable, args, environment,
                               kwargs):
        return False  # posix_spawnp() cannot be given setsid() through Process

    def _setupChild(self, *args, **kwargs):
        # In the child, after fork(): a new session first, so that nothing the program
        # starts escapes its group by accident.
        os.setsid()
        for number in signal.valid_signals():
            if callable(signal.getsignal(number)):
                signal.signal(number, signal.SIG_DFL)
        super()._setupChild(*args, **kwargs)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.signalMask)

    def _execChild(self, path, uid, gid, executable, args, environment):
        try:
            super()._execChild(path, uid, gid, executable, args, environment)
        except OSError as e:
            try:
                os.write(2, f"cannot run {executable}: {e.strerror or e}\n".encode(
                    "utf-8", "replace"))
            finally:
                os._exit(CANNOT_RUN)


class SessionSpawner:
    """
    Starts programs in sessions of their own and signals their process groups: the two
    go together, so a test double replaces both (a fake spawn with a real C{killpg}
    could signal a stranger's group).
    """

    def spawn(self, reactor, protocol, executable, args, env, path, uid, gid, childFDs):
        """
        Start C{executable} as L{IReactorProcess.spawnProcess} would (no PTY), in a new
        session; signals are blocked in this thread while it forks (see
        L{SessionProcess}).

        @return: the L{SessionProcess}.
        """
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            return SessionProcess(reactor, executable, args, env, path, protocol, uid,
                                  gid, childFDs, signalMask=mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def killpg(self, pgid: int, signum: int) -> None:
        """
        Send C{signum} to the process group C{pgid} (C{os.killpg}).

        @raise ProcessLookupError: when no process is left in it.
        """
        os.killpg(pgid, signum)

    def kill(self, pid: int, signum: int) -> None:
        """
        Send C{signum} to the process C{pid} (C{os.kill}).

        @raise ProcessLookupError: when there is none.
        """
        os.kill(pid, signum)


RUNNING, ENDING, GONE = "running", "ending", "gone"


class ProgramGroup:
    """
    The process group of one program, from its start until nothing is left in it.

    L{end} sends the group C{SIGTERM}, then C{SIGKILL} after C{grace} seconds unless the
    group is gone by then. The group is known to be gone when C{killpg} finds nobody
    (C{ESRCH}), checked when the program itself has exited (L{leaderExited}) and at
    each signal. Once C{SIGKILL} is sent it is taken as gone when the program itself is
    reaped (or, should that never come, C{grace} seconds later): C{SIGKILL} cannot be
    ignored, and an orphan's zombie may wait for init. A gone group is never signalled
    again: its id may be reused.

    Until the program has been reaped, its pid cannot be reused: a group not found then
    is one the program has not made yet (just forked, before its C{setsid()}), and the
    program alone is signalled (it started nothing yet; the signal waits, blocked, for
    its default action).

    @ivar state: L{RUNNING}, L{ENDING} (signalled) or L{GONE}.
    @ivar killed: C{SIGKILL} was needed.
    @ivar reaped: the program itself has exited and been reaped.
    """

    reaped = False

    def __init__(self, pgid: int, clock, grace: float, spawner, label: str,
                 groups: "ProgramGroups | None" = None):
        self.pgid = pgid
        self.clock = clock
        self.grace = grace
        self.spawner = spawner
        self.label = label
        self.groups = groups
        self.state = RUNNING
        self.killed = False
        self.killCall = None
        if groups is not None:
            groups.add(self)

    def end(self) -> None:
        """
        End the group: C{SIGTERM} now, C{SIGKILL} in C{grace} seconds if anything is left.
        """
        if self.state != RUNNING:
            return
        self.state = ENDING
        if not self._signal(signal.SIGTERM, "SIGTERM"):
            self._gone()
            return
        self.killCall = self.clock.callLater(self.grace, self.kill)

    def leaderExited(self) -> None:
        """
        The program has exited (and been reaped): the group is gone unless something it
        started is still in it.
        """
        self.reaped = True
        if self.state != GONE and (self.killed or not self._signal(0, None)):
            self._gone()

    def kill(self) -> None:
        """
        C{SIGKILL} the group now (C{grace} is over, or the server cannot wait).
        """
        self.killCall = None
        if self.state == GONE:
            return
        if self._signal(0, None):
            log.info("{label}: process group {pgid} still running {grace}s after SIGTERM: "
                     "sending SIGKILL", label=self.label, pgid=self.pgid, grace=self.grace)
            self.killed = self._signal(signal.SIGKILL, "SIGKILL")
            if self.killed and not self.reaped:  # gone once reaped: see leaderExited
                self.killCall = self.clock.callLater(self.grace, self._gone)
                return
        self._gone()

    def _signal(self, signum: int, name: str | None) -> bool:
        """
        Send C{signum} to the group; whether anybody is left in it.
        """
        try:
            try:
                self.spawner.killpg(self.pgid, signum)
            except ProcessLookupError:
                if self.reaped:
                    return False
                self.spawner.kill(self.pgid, signum)  # not in its own group yet
        except ProcessLookupError:
            return False
        except OSError as e:  # EPERM: members we may not signal (a set-uid program)
            if name is not None:
                log.warn("{label}: cannot send {signal} to process group {pgid}: {error}",
                         label=self.label, signal=name, pgid=self.pgid, error=e)
        return True

    def _gone(self) -> None:
        self.state = GONE
        call, self.killCall = self.killCall, None
        if call is not None and call.active():
            call.cancel()
        if self.groups is not None:
            self.groups.discard(self)


class ProgramGroups:
    """
    The program groups of one reactor not yet gone, so that the process does not exit
    before they are: L{forReactor} makes the reactor wait for L{whenGone} before it
    shuts down.

    The wait is bounded: a group is ended when its connection ends, and the server's
    stop ends every connection (after C{shutdown.drain} at most); a group is gone at
    most C{kill_grace} seconds after it is ended.
    """

    _byReactor: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self):
        self.live: set[ProgramGroup] = set()
        self._waiting: list[Deferred] = []

    @classmethod
    def forReactor(cls, reactor) -> "ProgramGroups":
        """
        The groups of C{reactor}; the first call registers the wait for them at the
        reactor's shutdown (a C{before} trigger: the reactor waits for its L{Deferred},
        beside the service tree's C{stopService}).
        """
        groups = cls._byReactor.get(reactor)
        if groups is None:
            groups = cls._byReactor[reactor] = cls()
            reactor.addSystemEventTrigger("before", "shutdown", groups.atShutdown)
        return groups

    def add(self, group: ProgramGroup) -> None:
        self.live.add(group)

    def discard(self, group: ProgramGroup) -> None:
        self.live.discard(group)
        if not self.live:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def whenGone(self) -> Deferred:
        """
        A L{Deferred} that fires once no program group is left.
        """
        if not self.live:
            return succeed(None)
        d = Deferred()
        self._waiting.append(d)
        return d

    def atShutdown(self) -> Deferred:
        """
        The shutdown trigger: wait for every program group to be gone.
        """
        if self.live:
            log.info("Stopping: waiting for {count} exec program group(s) to end "
                     "(each ends with its connection, then within its kill_grace)",
                     count=len(self.live))
        return self.whenGone()
