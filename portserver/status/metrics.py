"""
Prometheus metrics of a L{portserver.service.PortServer}, read from its registry at scrape
time by a custom collector, in a private L{CollectorRegistry} (never the global one).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from portserver.ports import PORT_CLASSES


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


def collectorRegistry(server) -> CollectorRegistry:
    """
    A private L{CollectorRegistry} holding only a L{RegistryCollector} of C{server}.
    """
    collectors = CollectorRegistry()
    collectors.register(RegistryCollector(server))
    return collectors
