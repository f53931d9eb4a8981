"""
portserver's TCP transport: what is mixed into the transport class of every connection
a portserver listener accepts (L{portserver.accepting.ownTransportClass}).

 - L{FlowControlledTransport} tells a connection's L{portserver.tracking.Tracker} when
   its buffered output has drained, so that reading paused for flow control resumes.
 - L{WriteThroughTransport}: writes that go straight to the socket, with fewer system
   calls than Twisted's buffered path.

Twisted never sends inside C{write()}: it buffers the data, asks epoll for writability
(C{epoll_ctl}), waits a loop iteration, sends, then asks epoll to stop watching
(C{epoll_ctl} again). asyncio tries C{send()} at once and buffers only what the kernel
does not take. L{WriteThroughTransport}, mixed into the transport class of every
connection a portserver TCP listener accepts (L{portserver.accepting.ownTransportClass}),
does the same: a write with nothing buffered before it is sent at once; the rest of a
partial send, and every write while something is buffered, takes Twisted's path. What a
protocol writes while it handles received data (in C{dataReceived}) waits in Twisted's
buffer, with no writer registered, until C{dataReceived} returns, then leaves in one
send: an HTTP response's head and body, written apart, take one system call, not two.
The order of the bytes and every contract Twisted gives a protocol hold:

 - C{write} never calls the protocol back: a failed send (the peer reset) buffers the
   data, and Twisted finds the error on its own path and ends the connection through
   C{connectionLost}, as before;
 - a streaming producer (C{HTTPChannel} registers itself as one for its whole life)
   keeps the write-through: a write sent whole leaves nothing to pause for, and the rest
   of a partial send takes Twisted's path, which pauses the producer past
   C{bufferSize} and resumes it once drained, as before;
 - a pull producer, a pending close (C{loseConnection}, half-close), an abort
   (C{abortConnection}: what is written after it is dropped, not sent) or TLS
   (C{startTLS}) turns the write-through off: Twisted's path does what it always did
   (a pull producer is asked for more only when Twisted's buffer has drained);
 - C{unsentBytes} and flow control see the same buffer as before.
"""

from __future__ import annotations

import errno

from portserver.tracking import PAUSED_FLOW, unsentBytes

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS)


class FlowControlledTransport:
    """
    Mixed into the transport class of every connection a portserver TCP listener
    accepts (see L{portserver.accepting.ownTransportClass}): after each write to the
    socket, a L{Tracker} whose reading is paused for flow control learns how much is
    left unsent. C{doWrite} runs only while output is buffered, so the common path (a
    write the kernel takes at once) costs nothing more.
    """

    def doWrite(self):
        result = super().doWrite()
        if result is None:
            self._drained()
        return result

    def _drained(self) -> None:
        protocol = self.protocol
        if getattr(protocol, "paused", 0) & PAUSED_FLOW:
            protocol.drained(unsentBytes(self))


class WriteThroughTransport(FlowControlledTransport):
    """
    Mixed into a C{twisted.internet.tcp.Server} subclass: C{write} and C{writeSequence}
    send at once when nothing is buffered; what the protocol writes while it handles
    received data is sent in one go when it returns. A held write sent whole tells the
    flow control (L{FlowControlledTransport._drained}) that the buffer is empty, as
    Twisted's C{doWrite} does.

    @ivar _reading: the protocol's C{dataReceived} is running.
    @ivar _holding: writes made during it wait in Twisted's buffer, with no writer
        registered, for L{_flushHeld}.
    """

    _reading = False
    _holding = False

    def _canWriteThrough(self) -> bool:
        return (self.connected and not self.TLS and not self.disconnecting
                and not getattr(self, "_aborting", False)
                and not self._writeDisconnecting and not self._writeDisconnected
                and (self.producer is None or self.streamingProducer)
                and (self._holding or (not self._tempDataLen
                                       and self.offset == len(self.dataBuffer))))

    def write(self, data):
        if type(data) is bytes and data and self._canWriteThrough():
            if self._reading:
                self._hold(data)
                return None
            try:
                sent = self.socket.send(data)
            except OSError as e:
                if e.errno not in _RETRY:
                    # Not now: Twisted's path meets the error and closes properly.
                    return super().write(data)
                sent = 0
            if sent == len(data):
                return None
            data = data[sent:]
        return super().write(data)

    def writeSequence(self, iovec):
        if self._canWriteThrough():
            data = b"".join(iovec)
            if data:
                return self.write(data)
            return None
        return super().writeSequence(iovec)

    def _hold(self, data: bytes) -> None:
        """
        Buffer C{data} as Twisted's C{write} does, without registering a writer: the
        end of the read sends it (an HTTP response's head and body, written apart, leave
        in one send). Every close, abort or producer change in between finds it in
        Twisted's own buffer, where it would have been.
        """
        self._holding = True
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        self._maybePauseProducer()

    def _dataReceived(self, data):
        self._reading = True
        try:
            return super()._dataReceived(data)
        finally:
            self._reading = False
            if self._holding:
                self._flushHeld()

    def _flushHeld(self) -> None:
        """
        Send what was held during the read, in one send if the kernel takes it; the rest
        (or all of it, when a close, an abort or TLS began meanwhile, or the send
        fails) is left to Twisted's buffered path.
        """
        if not self._canWriteThrough() or self.offset != len(self.dataBuffer):
            self._holding = False
            if (self._tempDataLen and self.connected
                    and not getattr(self, "_aborting", False)):
                self.startWriting()
            return
        self._holding = False
        data = b"".join(self._tempDataBuffer)
        try:
            sent = self.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error Twisted's path meets and closes on
        self._tempDataBuffer = []
        self._tempDataLen = 0
        if sent < len(data):
            self.dataBuffer, self.offset = data, sent
            self.startWriting()
            return
        self.dataBuffer, self.offset = b"", 0
        if self.producer is not None and self.producerPaused:
            self.producerPaused = False
            self.producer.resumeProducing()
        self._drained()
