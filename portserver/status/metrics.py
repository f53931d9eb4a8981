"""
Prometheus metrics of a L{portserver.server.PortServer}, read from its registry at scrape
time by a custom collector, in a private L{CollectorRegistry} (never the global one); and
what the kernel says of its TCP listeners (L{KernelCollector}, Linux only).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from portserver.kernel import SOCKET_STATES, KernelView, stateCounts
from portserver.ports import PORT_CLASSES
from portserver.sockdiag import ESTABLISHED
from portserver.workerview import workerRows


def _flag(value: bool) -> str:
    return "true" if value else "false"


class RegistryCollector(Collector):
    """
    Yields the server's metrics from what its registry and listeners say now; it keeps
    nothing between scrapes.

    Every listener's (service, transport) gets its series at 0 before its first
    connection, so rates and absent series mean what they seem to.
    """

    def __init__(self, server):
        self.server = server

    def collect(self) -> Iterator[Metric]:
        registry = self.server.registry
        describe = registry.describePort
        listeners = self.server.boundListeners()
        pairs = {(l.service, l.transport) for l in listeners}

        connections = GaugeMetricFamily(
            "portserver_connections", "Live TCP connections and UDP flows.",
            labels=("service", "transport", "port", "port_class", "privileged"))
        live = Counter(dict.fromkeys(((l.service, l.transport, l.port) for l in listeners), 0))
        live.update(registry.liveCounts())
        for (service, transport, port), count in sorted(live.items()):
            cls, privileged = describe(port)
            connections.add_metric((service, transport, str(port), cls, _flag(privileged)),
                                   count)
        yield connections

        accepted = CounterMetricFamily(
            "portserver_connections_accepted", "TCP connections accepted and UDP flows begun.",
            labels=("service", "transport"))
        counts = Counter(dict.fromkeys(pairs, 0))
        counts.update(registry.accepted)
        for key, count in sorted(counts.items()):
            accepted.add_metric(key, count)
        yield accepted

        closed = CounterMetricFamily(
            "portserver_connections_closed", "TCP connections closed and UDP flows expired.",
            labels=("service", "transport", "reason"))
        for key, count in sorted(registry.closedTotal.items()):
            closed.add_metric(key, count)
        yield closed

        refused = CounterMetricFamily(
            "portserver_refused_connections",
            "Connections refused before they were opened (access rules or limits).",
            labels=("service", "reason"))
        for key, count in sorted(registry.refused.items()):
            refused.add_metric(key, count)
        yield refused

        received, sent = Counter(dict.fromkeys(pairs, 0)), Counter(dict.fromkeys(pairs, 0))
        received.update(registry.bytesIn)
        sent.update(registry.bytesOut)
        for record in registry.snapshot("tcp") + registry.snapshot("udp"):
            received[(record.service, record.transport)] += record.bytesIn
            sent[(record.service, record.transport)] += record.bytesOut
        for name, what, totals in (("portserver_bytes_received", "received from", received),
                                   ("portserver_bytes_sent", "sent to", sent)):
            family = CounterMetricFamily(name, f"Bytes {what} peers, closed and live "
                                               "connections together.",
                                         labels=("service", "transport"))
            for key, count in sorted(totals.items()):
                family.add_metric(key, count)
            yield family

        byClass = Counter(describe(l.port) for l in listeners)
        bound = GaugeMetricFamily("portserver_listeners", "Listening ports and sockets.",
                                  labels=("port_class", "privileged"))
        for cls in PORT_CLASSES:
            for privileged in (True, False):
                bound.add_metric((cls, _flag(privileged)), byClass[(cls, privileged)])
        yield bound

        yield GaugeMetricFamily("portserver_uptime_seconds",
                                "Seconds since the server was made.",
                                value=registry.clock.seconds() - registry.started)

        server = self.server
        yield GaugeMetricFamily("portserver_config_generation",
                                "The config in force: 1 as started, +1 per reload applied.",
                                value=server.generation)
        yield GaugeMetricFamily("portserver_config_loaded_timestamp_seconds",
                                "When the config in force was loaded (Unix time).",
                                value=server.loadedAt)
        reloads = CounterMetricFamily("portserver_config_reloads",
                                      "Config reloads, by result (applied or rejected).",
                                      labels=("result",))
        for result in ("applied", "rejected"):
            reloads.add_metric((result,), server.reloads[result])
        yield reloads
        if getattr(server, "workerStates", None) is not None:
            yield from workerMetrics(server)


def workerMetrics(server) -> Iterator[Metric]:
    """
    The series of a server with workers (L{portserver.workerview.workerRows}), by
    C{worker} index: the processes of every generation that serve as one index are
    summed into its series (a reload runs two for a while), so that each index is one
    series whatever its pid.
    """
    rows = workerRows(server)
    yield GaugeMetricFamily("portserver_workers",
                            "Worker processes running (of every generation).",
                            value=sum(1 for row in rows if row.get("pid") is not None))
    indexes = sorted({row["index"] for row in rows})
    live: Counter = Counter(dict.fromkeys(indexes, 0))
    restarts: dict[int, int] = dict.fromkeys(indexes, 0)
    for row in rows:
        live[row["index"]] += row["connections"]
        restarts[row["index"]] = max(restarts[row["index"]], row.get("restarts") or 0)
    connections = GaugeMetricFamily(
        "portserver_worker_connections",
        "Live TCP connections and UDP flows of each worker index.", labels=("worker",))
    for index in indexes:
        connections.add_metric((str(index),), live[index])
    yield connections
    restarted = CounterMetricFamily(
        "portserver_worker_restarts",
        "Times the worker of each index was restarted after it died.", labels=("worker",))
    for index in indexes:
        restarted.add_metric((str(index),), restarts[index])
    yield restarted
    accepted = getattr(server.registry, "acceptedByWorker", None)
    if accepted is not None:
        family = CounterMetricFamily(
            "portserver_worker_connections_accepted",
            "TCP connections accepted and UDP flows begun by each worker index.",
            labels=("worker",))
        counts = Counter(dict.fromkeys(indexes, 0))
        counts.update(accepted)
        for index, count in sorted(counts.items()):
            family.add_metric((str(index),), count)
        yield family


class KernelCollector(Collector):
    """
    Yields what the kernel says of the server's TCP listeners (L{KernelView}), from one
    dump per scrape: per service, the accept queues (C{portserver_listen_queue}), their
    sizes (C{portserver_listen_backlog}), the sockets of its ports by state
    (C{portserver_tcp_sockets}) and the RTT quantiles of its connections
    (C{portserver_tcp_rtt_seconds}); for the host, the accept queue overflows since the
    server started (C{portserver_listen_overflows_total}). Without the kernel's view (not
    Linux, or no listening socket of the server in the dump), none of these series
    exists.
    """

    def __init__(self, kernel: KernelView):
        self.kernel = kernel

    def collect(self) -> Iterator[Metric]:
        snapshot = self.kernel.forMetrics()
        if snapshot is None:
            return
        counters = self.kernel.listenCounters()
        if counters is not None:
            yield CounterMetricFamily(
                "portserver_listen_overflows",
                "Times an accept queue of this host was full when a handshake completed, "
                "since the server started (TcpExt ListenOverflows).",
                value=counters["ListenOverflows"]["since_start"])
        queue = GaugeMetricFamily(
            "portserver_listen_queue", "Connections the kernel completed that the service's "
            "TCP listeners have not accepted yet (their accept queues).", labels=("service",))
        backlog = GaugeMetricFamily(
            "portserver_listen_backlog", "The most connections the accept queues of the "
            "service's TCP listeners hold.", labels=("service",))
        sockets = GaugeMetricFamily(
            "portserver_tcp_sockets", "The kernel's TCP sockets on the service's listening "
            "ports (not the listening sockets), by state.", labels=("service", "state"))
        rtt = GaugeMetricFamily(
            "portserver_tcp_rtt_seconds", "Smoothed round-trip times of the service's "
            "established TCP connections now: quantiles over the connections.",
            labels=("service", "quantile"))
        for service, keys in sorted(snapshot.services().items()):
            listening = [s for key in keys for s in snapshot.listening(key)]
            queue.add_metric((service,), sum(s.receiveQueue for s in listening))
            backlog.add_metric((service,), sum(s.sendQueue for s in listening))
            owned = [s for key in keys for s in snapshot.sockets(key)]
            counts = stateCounts(owned)
            for state in SOCKET_STATES:
                sockets.add_metric((service, state), counts[state])
            rtts = sorted(r for r in (s.rttSeconds() for s in owned if s.state == ESTABLISHED)
                          if r is not None)
            for q in RTT_QUANTILES if rtts else ():
                rank = min(len(rtts) - 1, max(0, math.ceil(q * len(rtts)) - 1))
                rtt.add_metric((service, str(q)), rtts[rank])
        yield from (queue, backlog, sockets, rtt)


#: The quantiles of C{portserver_tcp_rtt_seconds}.
RTT_QUANTILES = (0.5, 0.9, 0.99, 1.0)


def collectorRegistry(server, kernel: KernelView | None = None) -> CollectorRegistry:
    """
    A private L{CollectorRegistry} holding a L{RegistryCollector} of C{server} and a
    L{KernelCollector} of C{kernel} (default: a L{KernelView} of C{server}).
    """
    collectors = CollectorRegistry()
    collectors.register(RegistryCollector(server))
    collectors.register(KernelCollector(KernelView(server) if kernel is None else kernel))
    return collectors
