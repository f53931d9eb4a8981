"""
The connection log: one line per connection (or UDP flow) when it ends, in a file of its
own, like HAProxy's end-of-session log or an HTTP server's access log.

    2026-11-21T09:41:07Z tcp-17 echo tcp 127.0.0.1:51234 -> 127.0.0.1:7 client-closed 0.003s in=64 out=64

Fields, space-separated: the close time (UTC), the registry id, the service, the
transport, the remote and local endpoints, the close reason, the duration, and the bytes
received and sent (UDP adds C{datagrams=in/out}; a connection a proxy carried with the
PROXY protocol, whose remote endpoint is the client it named, adds C{proxy=host:port}).
Live connections are in the registry (C{portserver status}); the log is the record of
what ended.

Why not one C{twisted.logger} event per connection: an event through twistd's text log
costs tens of microseconds (an event dict, the publisher, C{str.format} parsing, a
C{strftime}, an unbuffered write), as much as accepting the connection itself; see
C{bench/README.md}. Lines here are formatted with one f-string, the timestamp is made once
a second, and writes are batched: the buffer goes to disk once a second, when it holds
64 KiB, and when the service stops. The file is a L{twisted.python.logfile.LogFile}, so it
rotates by size.
"""

from __future__ import annotations

import os
import stat
import time

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.logfile import LogFile

from portserver.registry import CLOSED, ConnectionRecord, Registry, hostPort
from portserver.startup import StartupError

log = Logger()

FLUSH_INTERVAL = 1.0
FLUSH_BYTES = 64 * 1024
ROTATE_BYTES = 10 * 1024 * 1024
ROTATED_FILES = 10


#: The text of each local endpoint met (a few: one per listener and local address),
#: made once: L{formatLine} writes one per connection.
_localTexts: dict = {}


def formatLine(record: ConnectionRecord, stamp: str) -> str:
    """
    The log line for a closed C{record}, stamped C{stamp}.
    """
    transport, local = record.transport, record.local
    remote = hostPort(record.remoteHost, record.remotePort)
    localText = _localTexts.get(local)
    if localText is None:
        if len(_localTexts) >= 1024:
            _localTexts.clear()
        localText = _localTexts[local] = str(local)
    line = (f"{stamp} {transport}-{record.serial} {record.service} {transport} {remote} "
            f"-> {localText} {record.reason} {record.closed - record.opened:.3f}s "
            f"in={record.bytesIn} out={record.bytesOut}")
    if transport == "udp":
        line += f" datagrams={record.datagramsIn}/{record.datagramsOut}"
    if record.proxy is not None:
        line += f" proxy={record.proxy}"
    outbound = record.outbound
    if outbound is not None:
        line += (f" via={outbound.local}->{outbound.remote} {outbound.reason or 'open'} "
                 f"in={outbound.bytesIn} out={outbound.bytesOut}")
    return line + "\n"


def writableBy(directory: str, uid: int, gid: int) -> bool:
    """
    Whether C{uid} (with primary group C{gid}) may create and rename files in
    C{directory}, by its mode bits (root may).
    """
    if uid == 0:
        return True
    try:
        info = os.stat(directory)
    except OSError:
        return False
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IWUSR and info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IWGRP and info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IWOTH and info.st_mode & stat.S_IXOTH)


def handOver(path: str, uid: int, gid: int, chown=os.chown) -> None:
    """
    Give C{path} (a log or pid file opened as root) to the user twistd drops to, and
    warn at once if that user cannot write its directory: rotating or removing the file
    needs it.
    """
    try:
        chown(path, uid, gid)
    except OSError as e:
        log.warn("Cannot give {path} to uid {uid}: {error}", path=path, uid=uid,
                 error=e.strerror or str(e))
    directory = os.path.dirname(path)
    if not writableBy(directory, uid, gid):
        log.warn("{directory} is not writable by uid {uid}, which portserver runs as "
                 "after start-up: {path} cannot be rotated or removed by it (make the "
                 "directory writable by that user, or put the file elsewhere)",
                 directory=directory, uid=uid, path=path)


class ConnectionLogFile(LogFile):
    """
    A L{LogFile} that stays bounded when it cannot rotate. Twisted's skips the rotation,
    silently, when its directory is not writable by the process (as after C{twistd
    --uid} drops root, in a directory root owns), and the file then grows without end.
    This one empties the file instead, and says so.
    """

    def rotate(self):
        if os.access(self.directory, os.W_OK) and os.access(self.path, os.W_OK):
            super().rotate()
            return
        self._file.seek(0)
        self._file.truncate()
        self.size = 0
        log.error("Cannot rotate the connection log {path}: its directory is not "
                  "writable by this process (uid {uid}); the log was emptied to stay "
                  "under {limit} MB", path=self.path, uid=os.getuid(),
                  limit=self.rotateLength // 2**20)


class ConnectionLog(Service):
    """
    Writes L{formatLine} for every record the registry closes, to C{path}.

    @param opener: C{opener(path)} gives the file (by default a rotating
        L{ConnectionLogFile}); it is called in C{privilegedStartService}, so an unwritable
        path fails start-up.
    @param owner: C{(uid, gid)} twistd drops to after binding (C{--uid}/C{--gid}), or
        L{None}: the file (opened as root) is handed to that user, so that it can go on
        writing and rotating it.
    """

    name = "connection-log"

    def __init__(self, registry: Registry, path: str, reactor, opener=None,
                 owner: tuple[int, int] | None = None):
        self.registry = registry
        self.path = os.path.abspath(path)
        self.reactor = reactor
        self.owner = owner
        self.opener = opener or (lambda p: ConnectionLogFile.fromFullPath(
            p, rotateLength=ROTATE_BYTES, maxRotatedFiles=ROTATED_FILES))
        self.file = None
        self._pending: list[str] = []
        self._size = 0
        self._second = None
        self._stamp = ""
        self._unsubscribe = None
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = reactor
        self._failed = False

    def open(self) -> None:
        """
        Open the file unless open.

        @raise StartupError: naming the file and the OS error.
        """
        if self.file is not None:
            return
        try:
            self.file = self.opener(self.path)
        except OSError as e:
            raise StartupError(f"cannot open the connection log {self.path!r}: "
                               f"{e.strerror or e}") from e
        log.info("Connection log: {path}", path=self.path)
        if self.owner is not None:
            handOver(self.path, *self.owner)


    def privilegedStartService(self):
        self.open()
        super().privilegedStartService()

    def startService(self):
        self.open()
        super().startService()
        if self._unsubscribe is None:
            self._unsubscribe = self.registry.subscribe(self.observe, opens=False)
            self.reactor.addSystemEventTrigger("after", "shutdown", self.close)
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def stopService(self):
        """
        Write what is buffered. The log stays open until the reactor has shut down, so
        that the connections the reactor closes while shutting down are logged too.
        """
        super().stopService()
        if self._flusher.running:
            self._flusher.stop()
        self.flush()

    def close(self) -> None:
        """
        Write what is buffered, stop listening to the registry, and close the file.
        """
        self.flush()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self.file is not None:
            self.file.close()
            self.file = None

    def stamp(self, when: float) -> str:
        """
        C{when} as C{YYYY-MM-DDTHH:MM:SSZ}, made once per second.
        """
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp

    def observe(self, event: str, record: ConnectionRecord) -> None:
        if event != CLOSED:
            return
        line = formatLine(record, self.stamp(record.closed))
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """
        Write what is buffered. A failed write is logged once (until one succeeds again)
        and its lines are dropped: the log must not grow without bound, nor stop the server.
        """
        if not self._pending or self.file is None:
            return
        data = "".join(self._pending).encode("utf-8", "backslashreplace")
        self._pending.clear()
        self._size = 0
        try:
            self.file.write(data)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.error("Cannot write the connection log {path}: {error}; lines are "
                          "dropped until a write succeeds", path=self.path,
                          error=e.strerror or str(e))
        else:
            if self._failed:
                self._failed = False
                log.info("Writing the connection log {path} again", path=self.path)
