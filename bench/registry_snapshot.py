"""
Registry cost at scale: add/remove and snapshot times with N live connections.

    PYTHONPATH=. python bench/registry_snapshot.py [--connections 10000] [--rounds 20]

Prints medians, and whether the snapshot target (< 50 ms at 10,000 live connections)
is met. No sockets: the registry is exercised directly, as the tracking layer does.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc

from twisted.internet.task import Clock

from portserver.ports import PrivilegeRule
from portserver.registry import Endpoint, Registry

TARGET_MS = 50.0


def timed(function, rounds):
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    n = args.connections

    clock = Clock()
    clock.advance(1763700000)
    registry = Registry(clock, PrivilegeRule(1024, "bench"))
    local = Endpoint("127.0.0.1", 7)
    remotes = [Endpoint(f"127.0.{i // 250}.{i % 250 + 1}", 1024 + i % 64000) for i in range(n)]
    start = time.perf_counter()
    records = [registry.open("echo", "echo", "tcp", local, remote) for remote in remotes]
    addMs = (time.perf_counter() - start) * 1000

    measured = Registry(clock, PrivilegeRule(1024, "bench"))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [measured.open("echo", "echo", "tcp", local, remote) for remote in remotes]
    perRecord = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    del kept, measured
    for record in records:
        record.bytesIn = record.bytesOut = 64

    gc.collect()
    snapshotMs = timed(registry.snapshot, args.rounds)
    queryMs = timed(registry.query, args.rounds)
    jsonMs = timed(lambda: json.dumps({"connections": registry.query()}), args.rounds)
    summaryMs = timed(registry.summary, args.rounds)

    start = time.perf_counter()
    for record in records:
        registry.close(record, "client-closed")
    removeMs = (time.perf_counter() - start) * 1000

    rows = [
        ("add (open) per connection", f"{addMs * 1000 / n:.2f} µs"),
        ("remove (close) per connection", f"{removeMs * 1000 / n:.2f} µs"),
        ("registry memory per live record", f"{perRecord:.0f} bytes"),
        (f"snapshot() of {n}", f"{snapshotMs:.2f} ms"),
        (f"query() as dicts of {n}", f"{queryMs:.2f} ms"),
        (f"GET /api/connections body (query + json) of {n}", f"{jsonMs:.2f} ms"),
        (f"summary() over {n}", f"{summaryMs:.2f} ms"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"Python {sys.version.split()[0]}, median of {args.rounds} rounds")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    met = snapshotMs < TARGET_MS and queryMs < TARGET_MS
    print(f"target: snapshot and query of {n} under {TARGET_MS:.0f} ms: "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
