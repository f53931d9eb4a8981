"""
portserver's TCP transport: what is mixed into the transport class of every connection
a portserver listener accepts (L{portserver.service.ownTransportClass}).

 - L{FlowControlledTransport} tells a connection's L{portserver.tracking.Tracker} when
   its buffered output has drained, so that reading paused for flow control resumes.
 - L{WriteThroughTransport}: writes that go straight to the socket, with fewer system
   calls than Twisted's buffered path.

Twisted never sends inside C{write()}: it buffers the data, asks epoll for writability
(C{epoll_ctl}), waits a loop iteration, sends, then asks epoll to stop watching
(C{epoll_ctl} again). asyncio tries C{send()} at once and buffers only what the kernel
does not take. L{WriteThroughTransport}, mixed into the transport class of every
connection a portserver TCP listener accepts (L{portserver.service.ownTransportClass}),
does the same: a write with nothing buffered before it is sent at once; the rest of a
partial send, and every write while something is buffered, takes Twisted's path, so the
order of the bytes and every contract Twisted gives a protocol hold:

 - C{write} never calls the protocol back: a failed send (the peer reset) buffers the
   data, and Twisted finds the error on its own path and ends the connection through
   C{connectionLost}, as before;
 - a registered producer, a pending close (C{loseConnection}, half-close), an abort
   (C{abortConnection}: what is written after it is dropped, not sent) or TLS
   (C{startTLS}) turns the write-through off: Twisted's path does what it always did;
 - C{unsentBytes} and flow control see the same buffer as before.
"""

from __future__ import annotations

import errno

from portserver.tracking import PAUSED_FLOW, unsentBytes

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS)


class WriteThroughTransport:
    """
    Mixed into a C{twisted.internet.tcp.Server} subclass: C{write} and C{writeSequence}
    send at once when nothing is buffered.
    """

    def _canWriteThrough(self) -> bool:
        return (self.connected and not self.TLS and not self.disconnecting
                and not getattr(self, "_aborting", False)
                and not self._writeDisconnecting and not self._writeDisconnected
                and self.producer is None and not self._tempDataLen
                and self.offset == len(self.dataBuffer))

    def write(self, data):
        if type(data) is bytes and data and self._canWriteThrough():
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


class FlowControlledTransport:
    """
    Mixed into the transport class of every connection a portserver TCP listener
    accepts (see L{portserver.service.ownTransportClass}): after each write to the
    socket, a L{Tracker} whose reading is paused for flow control learns how much is
    left unsent. C{doWrite} runs only while output is buffered, so the common path (a
    write the kernel takes at once) costs nothing more.
    """

    def doWrite(self):
        result = super().doWrite()
        protocol = self.protocol
        if result is None and getattr(protocol, "paused", 0) & PAUSED_FLOW:
            protocol.drained(unsentBytes(self))
        return result
