"""
What keeps a UDP service from being turned against others: no loops, a bounded reply rate.

 - B{Loops} (CVE-1999-0103). A datagram that claims to come from a port where a server
   answers (echo to chargen, or this server's own echo to itself) starts a loop of
   replies that runs at full CPU until someone restarts the server. As BSD inetd and
   xinetd do, portserver never answers a datagram whose source port is 0, one of the
   classic services' well-known ports (L{CLASSIC_PORTS}), or any port this server
   listens on (any service, any transport, any address): such a datagram is dropped
   before the plugin and the registry see it, and counted as refused, C{loop}.
 - B{Reflection.} A service whose replies are larger than the requests (chargen: 270
   times) amplifies a spoofed request toward its victim. Such services have a per-source
   reply rate by default (C{limits.udp_rate_per_source}), a token bucket per source
   address: past it, datagrams are dropped and counted as refused, C{rate}.
"""

from __future__ import annotations

import math
from collections import OrderedDict

#: Refusal reasons of datagrams.
LOOP = "loop"
RATE = "rate"
DATAGRAM_REASONS = frozenset({LOOP, RATE})

#: The well-known ports of the classic services that answer (or swallow) any datagram:
#: echo, discard, daytime, qotd, chargen, time.
CLASSIC_PORTS = frozenset({7, 9, 13, 17, 19, 37})

#: Source addresses whose reply bucket is remembered at once; the least recently used is
#: forgotten past it (memory stays bounded whatever the sources).
MAX_SOURCES = 65536


def isLoopSource(port: int, ownPorts) -> bool:
    """
    Whether a datagram from source port C{port} could be a server's reply: port 0, a
    classic service's port, or one of C{ownPorts} (this server's).
    """
    return port == 0 or port in CLASSIC_PORTS or port in ownPorts


def loopPorts(ownPorts) -> frozenset[int]:
    """
    Every source port L{isLoopSource} refuses with C{ownPorts}, as one set: a datagram
    is then checked with one look-up.
    """
    return frozenset({0}) | CLASSIC_PORTS | frozenset(ownPorts)


class ReplyRate:
    """
    A token bucket per source address: C{rate} datagrams a second, bursts of C{burst}
    (twice the rate by default, at least 1).
    """

    def __init__(self, rate: float, clock, burst: float | None = None,
                 maxSources: int = MAX_SOURCES):
        self.rate = rate
        self.burst = burst if burst is not None else max(1, math.ceil(rate * 2))
        self.clock = clock
        self.maxSources = maxSources
        self._buckets: OrderedDict[str, list] = OrderedDict()

    def allow(self, source: str, now: float | None = None) -> bool:
        """
        Take a token of C{source}'s bucket, if it has one; C{now}: the clock's time, when
        the caller has just read it.
        """
        if now is None:
            now = self.clock.seconds()
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            if len(buckets) >= self.maxSources:
                buckets.popitem(last=False)
            buckets[source] = [self.burst - 1, now]
            return True
        buckets.move_to_end(source)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 0.999999999:  # (float error on an exact refill)
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True

    def __len__(self) -> int:
        return len(self._buckets)
