"""
The kernel's view at scale: what reading it costs with 10,000 TCP connections.

    python bench/kernel_view.py [--connections 10000] [--rounds 7] [--skip-server]

Two parts, each printing medians:

1. In this process, no portserver: a listening socket on 127.0.0.1 with N loopback
   connections accepted. The ways of reading every connection's C{tcp_info}: one
   netlink C{sock_diag} dump filtered by the port (L{portserver.sockdiag.dumpTCP}, parsed
   into sockets), C{getsockopt(TCP_INFO)} on each accepted socket (parsed alike), and
   one C{sock_diag} lookup per connection (L{portserver.sockdiag.lookupTCP}); and the
   last two for a page of 1000.
2. A real C{twistd portserver} (echo on 127.0.0.1) holding N connections from the C load
   generator (C{bench/loadgen.c}): the wall time of C{GET /api/connections} (a default
   page of 1000 records, each with C{tcp}; and C{?limit=2000}) with its C{Server-Timing},
   of C{/api/listeners}, C{/api/summary} and C{/metrics}; and whether the page's records
   all have C{tcp}. The target: C{/api/connections} with C{tcp} under 100 ms.

Raises the descriptor limit as far as it may (part 1 needs 2N descriptors). Linux only.
A benchmark, not a test: no timing is asserted by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, ROOT)

import harness  # noqa: E402

from portserver.kernel import CONNECTION_STATES  # noqa: E402
from portserver.sockdiag import INET_DIAG_INFO, TCPSocket, dumpTCP, lookupTCP  # noqa: E402

TARGET_MS = 100.0
TCP_INFO_SIZE = 232  # what getsockopt is asked for: up to tcpi_delivery_rate and past


def raiseDescriptorLimit(wanted: int) -> int:
    """
    Raise this process's descriptor limit to C{wanted} (as root, past the hard limit),
    or as far as allowed; return the soft limit in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(soft, wanted), max(hard, wanted)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def timed(function, rounds: int) -> tuple[float, object]:
    """
    The median wall time of C{rounds} calls of C{function}, in ms, and its last result.
    """
    samples, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), result


def loopbackPairs(count: int) -> tuple[socket.socket, list[socket.socket],
                                       list[socket.socket]]:
    """
    A listening socket on 127.0.0.1 and C{count} connections to it: the clients and the
    accepted sockets. Connects are non-blocking, a batch at a time, accepted as they come.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    address = listener.getsockname()
    clients, accepted = [], []
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while len(accepted) < count:
        for _ in range(min(500, count - len(clients))):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(address)
            clients.append(client)
        while len(accepted) < len(clients):
            if not selector.select(timeout=5):
                raise RuntimeError(f"only {len(accepted)} of {len(clients)} connections "
                                   "were accepted")
            try:
                while True:
                    accepted.append(listener.accept()[0])
            except BlockingIOError:
                pass
    selector.close()
    return listener, clients, accepted


def getsockoptAll(sockets: list[socket.socket]) -> list[TCPSocket]:
    """
    Every socket's C{tcp_info} by C{getsockopt}, parsed as the dump's are.
    """
    result = []
    for s in sockets:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        found = TCPSocket(info[0], "127.0.0.1", 0, "127.0.0.1", 0, 0, 0, 0, info)
        found.tcpInfo()
        result.append(found)
    return result


def dumpAll(port: int) -> list[TCPSocket]:
    """
    Every socket of C{port} by one dump, each parsed as C{/api/connections} does.
    """
    sockets = dumpTCP([port], CONNECTION_STATES, (INET_DIAG_INFO,))
    for s in sockets:
        s.tcpInfo()
    return sockets


def lookupAll(endpoints: list[tuple]) -> list[TCPSocket]:
    """
    The sockets of C{endpoints} looked up one by one, each parsed as the dump's are.
    """
    sockets = lookupTCP(endpoints, (INET_DIAG_INFO,))
    for s in sockets:
        s.tcpInfo()
    return sockets


def inProcess(count: int, rounds: int) -> dict:
    """
    Part 1: the dump against C{getsockopt}, over C{count} loopback connections.
    """
    limit = raiseDescriptorLimit(2 * count + 200)
    if limit < 2 * count + 100:
        count = (limit - 100) // 2
        print(f"  (descriptor limit {limit}: measuring {count} connections)")
    listener, clients, accepted = loopbackPairs(count)
    port = listener.getsockname()[1]
    endpoints = [(*s.getsockname()[:2], *s.getpeername()[:2]) for s in accepted]
    try:
        dumpMs, dumped = timed(lambda: dumpAll(port), rounds)
        optMs, read = timed(lambda: getsockoptAll(accepted), rounds)
        optPageMs, _ = timed(lambda: getsockoptAll(accepted[:1000]), rounds)
        lookupPageMs, page = timed(lambda: lookupAll(endpoints[:1000]), rounds)
        lookupMs, looked = timed(lambda: lookupAll(endpoints), rounds)
    finally:
        for s in clients + accepted + [listener]:
            s.close()
    established = sum(1 for s in dumped if s.state == 1)
    return {"connections": count, "dump_ms": dumpMs, "dump_sockets": len(dumped),
            "dump_established": established, "getsockopt_ms": optMs,
            "getsockopt_sockets": len(read), "getsockopt_page_ms": optPageMs,
            "lookup_page_ms": lookupPageMs, "lookup_page_found": sum(1 for s in page if s),
            "lookup_ms": lookupMs, "lookup_found": sum(1 for s in looked if s)}


def fetch(url: str) -> tuple[float, dict, bytes]:
    return harness.fetchTimed(url)


def medianFetch(url: str, rounds: int) -> tuple[float, dict, bytes]:
    fetches = sorted((fetch(url) for _ in range(rounds)), key=lambda f: f[0])
    return fetches[len(fetches) // 2]


def withServer(count: int, rounds: int) -> dict:
    """
    Part 2: a real portserver holding C{count} connections, asked over HTTP.
    """
    raiseDescriptorLimit(count + 200)
    with tempfile.TemporaryDirectory() as workdir:
        running = harness.PortServerTarget().start(workdir)
        client = None
        try:
            client, held = harness.holdClient(running.ports["echo"], count)
            base = running.statusURL
            results = {"held": held["ops"], "errors": held["errors"]}
            for name, path in (("connections", "/api/connections"),
                               ("connections_2000", "/api/connections?limit=2000"),
                               ("listeners", "/api/listeners"),
                               ("summary", "/api/summary"),
                               ("metrics", "/metrics")):
                wall, timing, body = medianFetch(base + path, rounds)
                results[name] = {"wall_ms": wall, "timing": timing}
                if name.startswith("connections"):
                    records = json.loads(body)["connections"]
                    results[name]["records"] = len(records)
                    results[name]["with_tcp"] = sum(1 for r in records if "tcp" in r)
                    results[name]["total"] = json.loads(body)["total"]
                if name == "listeners":
                    results["listener_kernel"] = json.loads(body)["listeners"][0].get("kernel")
            return results
        finally:
            if client is not None:
                harness.release(client)
            running.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-server", action="store_true",
                        help="only part 1 (no twistd, no load generator)")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("the kernel's view is Linux only")
        return 1

    print(f"1. reading tcp_info of {args.connections} loopback connections, in process "
          f"(median of {args.rounds}):")
    part1 = inProcess(args.connections, args.rounds)
    print(f"  one sock_diag dump (port filter, tcp_info, parsed): {part1['dump_ms']:7.2f} ms "
          f"({part1['dump_sockets']} sockets, {part1['dump_established']} established)")
    print(f"  getsockopt(TCP_INFO) per socket, parsed:             "
          f"{part1['getsockopt_ms']:7.2f} ms ({part1['getsockopt_sockets']} sockets)")
    print(f"  sock_diag lookup per socket, parsed:                 "
          f"{part1['lookup_ms']:7.2f} ms ({part1['lookup_found']} found)")
    print(f"  a page of 1000: getsockopt {part1['getsockopt_page_ms']:.2f} ms, sock_diag "
          f"lookups {part1['lookup_page_ms']:.2f} ms ({part1['lookup_page_found']} found)")
    if args.skip_server:
        return 0

    print(f"2. twistd portserver holding {args.connections} connections "
          f"(median of {args.rounds} requests):")
    part2 = withServer(args.connections, args.rounds)
    print(f"  held {part2['held']} connections ({part2['errors']} errors)")
    for name in ("connections", "connections_2000", "listeners", "summary", "metrics"):
        entry = part2[name]
        timing = ", ".join(f"{k} {v:.1f}" for k, v in entry["timing"].items())
        extra = ""
        if "records" in entry:
            extra = (f"; {entry['records']} of {entry['total']} records, "
                     f"{entry['with_tcp']} with tcp")
        print(f"  GET {name:<17} {entry['wall_ms']:7.2f} ms"
              + (f" (server: {timing})" if timing else "") + extra)
    print(f"  listener kernel view: {part2['listener_kernel']}")
    wall = part2["connections"]["wall_ms"]
    complete = part2["connections"]["with_tcp"] == part2["connections"]["records"]
    met = wall < TARGET_MS and complete
    print(f"target: /api/connections with tcp under {TARGET_MS:.0f} ms at "
          f"{args.connections} connections: {'met' if met else 'NOT met'} ({wall:.1f} ms"
          + ("" if complete else "; some records lack tcp") + ")")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
