"""
A short in-memory history of each service's connections, for the status page's chart.

Once per C{interval} seconds (a L{LoopingCall} on the injected clock), L{History} takes one
sample: for every service, how many connections are live (TCP connections plus UDP
flows) and how many were accepted (TCP connections plus new UDP flows) since the previous
sample. It keeps the last C{window} samples (600 of one second: ten minutes) in a
bounded deque, so its memory does not grow with uptime.

Live counts are read from the registry's live records at sampling time; accepts are the
difference of the registry's C{accepted} counters between two samples, so sampling adds
nothing to the cost of a connection (no registry observer is called per connection).

C{GET /api/history} serves L{History.asDict}::

    {
      "interval": 1.0,           # seconds between samples, as configured
      "window": 600,             # how many samples are kept at most
      "now": 1763717000.25,      # the server's clock when answered (Unix time)
      "t": [1763716401.0, ...],  # when each sample was taken (Unix time), oldest first
      "services": {              # every service seen in the window, or listening now,
        "echo": {                #   sorted by name
          "live": [2, 3, ...],   # live connections and flows at each sample
          "accepts": [0, 1, ...] # accepted since the previous sample
        },
        ...
      },
      "total": {"live": [...], "accepts": [...]}   # the sums over services
    }

Every list has one entry per sample, aligned with C{"t"}; a service with no entry in a
sample counts 0 there. Samples are normally C{interval} apart, but a busy reactor can
skip some: an accepts rate is C{accepts[i] / (t[i] - t[i-1])} (the first sample covers
the C{interval} before it). The history is empty until the first sample, one
C{interval} after it starts.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall


class Sample:
    """
    One sample: its time C{t}, and per service C{(live, accepts)} (only the services
    that had a listener, a live connection or an accept then).
    """

    __slots__ = ("t", "counts")

    def __init__(self, t: float, counts: dict[str, tuple[int, int]]):
        self.t = t
        self.counts = counts


class History(Service):
    """
    The last C{window} samples of each service's live connections and accepts, one every
    C{interval} seconds while running (see the module docstring).

    @param registry: the L{portserver.registry.Registry} to sample.
    @param clock: an L{IReactorTime}: the sampling clock, and the samples' times.
    @param services: a callable giving the services to show even when idle (those with
        a listener), or L{None}.
    """

    def __init__(self, registry, clock, services: Callable[[], Iterable[str]] | None = None,
                 interval: float = 1.0, window: int = 600):
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window!r}")
        self.registry = registry
        self.clock = clock
        self.services = services
        self.interval = interval
        self.window = window
        self.samples: deque[Sample] = deque(maxlen=window)
        self._accepted: Counter = Counter()  # service -> registry's accepted at last sample
        self._call = LoopingCall(self.sample)
        self._call.clock = clock

    @classmethod
    def forServer(cls, server, clock=None, **kwargs) -> History:
        """
        The history of a L{portserver.server.PortServer}'s registry, showing every
        service with a listener, on C{clock} (default: the server's reactor).
        """
        return cls(server.registry, server.reactor if clock is None else clock,
                   services=lambda: [l.service for l in server.boundListeners()], **kwargs)

    def _acceptedNow(self) -> Counter:
        accepted: Counter = Counter()
        for (service, _transport), count in self.registry.accepted.items():
            accepted[service] += count
        return accepted

    def startService(self):
        """
        Sample every C{interval} seconds from now on (the first sample one C{interval}
        from now, counting the accepts since now).
        """
        super().startService()
        self._accepted = self._acceptedNow()
        if not self._call.running:
            self._call.start(self.interval, now=False)

    def stopService(self):
        """
        Stop sampling; the samples taken are kept (and shown) until started again.
        """
        super().stopService()
        if self._call.running:
            self._call.stop()

    def sample(self) -> Sample:
        """
        Take one sample now and keep it (dropping the oldest beyond C{window}).
        """
        live: Counter = Counter()
        for (service, _transport, _port), count in self.registry.liveCounts().items():
            live[service] += count
        accepted = self._acceptedNow()
        previous, self._accepted = self._accepted, accepted
        names = set(live)
        names.update(s for s, count in accepted.items() if count != previous.get(s, 0))
        if self.services is not None:
            names.update(self.services())
        counts = {name: (live.get(name, 0), max(0, accepted.get(name, 0)
                                                - previous.get(name, 0)))
                  for name in names}
        sample = Sample(self.clock.seconds(), counts)
        self.samples.append(sample)
        return sample

    def asDict(self) -> dict:
        """
        The history as plain JSON-ready values (the shape is in the module docstring).
        """
        samples = list(self.samples)
        names = set()
        for sample in samples:
            names.update(sample.counts)
        if self.services is not None:
            names.update(self.services())
        services = {}
        for name in sorted(names):
            pairs = [sample.counts.get(name, (0, 0)) for sample in samples]
            services[name] = {"live": [p[0] for p in pairs], "accepts": [p[1] for p in pairs]}
        total = {"live": [sum(c[0] for c in s.counts.values()) for s in samples],
                 "accepts": [sum(c[1] for c in s.counts.values()) for s in samples]}
        return {"interval": self.interval, "window": self.window,
                "now": self.clock.seconds(), "t": [s.t for s in samples],
                "services": services, "total": total}
