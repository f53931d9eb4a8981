"""
The http scenario: portserver's static file service against a plain `twistd web --path`
(and nginx, when installed) on the same small file, with `ab -k` and `wrk`.

    python bench/http_static.py            # 5 rounds of 3 s per client and server, written to
                                    # bench/results/http.md (published)
    python bench/http_static.py --quick    # 2 rounds of 1 s, to bench/results/quick/http.md

Every server serves one 1 KiB file on 127.0.0.1, logs each request as it would by default
(twistd's log file), and takes turns with the others in each round, so that a slower
moment of the machine falls on all of them. As in bench/run.py, the server is pinned to
core 0 and the client to core 1. The figures are requests per second,
medians over the rounds, and their ratio to twistd web measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

RESULTS = os.path.join(harness.BENCH, "results")
QUICK_RESULTS = os.path.join(RESULTS, "quick")
FILE_SIZE = 1024
CONCURRENCY = 10
NGINX_CONFIG = """\
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {work}/nginx-access.log;
    client_body_temp_path {work};
    proxy_temp_path {work};
    fastcgi_temp_path {work};
    uwsgi_temp_path {work};
    scgi_temp_path {work};
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def parseWrk(text: str) -> float:
    """
    Requests per second from C{wrk}'s output.
    """
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if match is None:
        raise ValueError(f"no Requests/sec in wrk's output: {text[-300:]!r}")
    return float(match.group(1))


def parseAb(text: str) -> float:
    """
    Requests per second from C{ab}'s output (which must have no failed request).
    """
    failed = re.search(r"Failed requests:\s+(\d+)", text)
    if failed is not None and int(failed.group(1)):
        raise ValueError(f"ab saw {failed.group(1)} failed requests")
    match = re.search(r"Requests per second:\s+([\d.]+)", text)
    if match is None:
        raise ValueError(f"no Requests per second in ab's output: {text[-300:]!r}")
    return float(match.group(1))


def servers(work: str, root: str) -> dict[str, list[str]]:
    """
    The command of each server to compare, by name, each on a free port (in C{{port}}).
    """
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
              "--pidfile="]
    result = {
        "portserver": [*twistd, "--logfile", f"{work}/portserver.log", "portserver",
                       "--config", f"{work}/portserver.yaml"],
        "twistd web": [*twistd, "--logfile", f"{work}/twistd-web.log", "web", "--listen",
                       "tcp:{port}:interface=127.0.0.1", "--path", root],
    }
    if shutil.which("nginx"):
        result["nginx"] = ["nginx", "-c", f"{work}/nginx.conf"]
    return result


def start(name: str, command: list[str], work: str, root: str) -> harness.Running:
    port = harness.freePort()
    if name == "portserver":
        with open(f"{work}/portserver.yaml", "w") as f:
            f.write(f"services:\n  - name: web\n    protocol: http\n    interface: 127.0.0.1"
                    f"\n    port: {port}\n    options: {{root: {root}}}\nstatus: off\n")
    if name == "nginx":
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(NGINX_CONFIG.format(work=work, port=port, root=root))
    log = open(f"{work}/{name.replace(' ', '-')}.out", "w")
    process = subprocess.Popen([part.replace("{port}", str(port)) for part in command],
                               cwd=work, stdout=log, stderr=subprocess.STDOUT,
                               env=harness.checkoutEnvironment(),
                               preexec_fn=harness._pinned(harness.SERVER_CORE))
    harness.waitForPort(port, process, log.name)
    return harness.Running(process, {"http": port}, log.name)


def measure(port: int, client: str, duration: float) -> float:
    url = f"http://127.0.0.1:{port}/small.bin"
    if client == "wrk":
        out = subprocess.run(["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{max(1, round(duration))}s",
                              url], capture_output=True, text=True, check=True,
                             preexec_fn=harness._pinned(harness.CLIENT_CORE)).stdout
        return parseWrk(out)
    requests = max(1000, int(3000 * duration))
    out = subprocess.run(["ab", "-k", "-q", "-n", str(requests), "-c", str(CONCURRENCY), url],
                         capture_output=True, text=True, check=True,
                         preexec_fn=harness._pinned(harness.CLIENT_CORE)).stdout
    return parseAb(out)


def median(values: list[float]) -> float:
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def table(figures: dict, rounds: int, duration: float) -> str:
    """
    The results as Markdown: requests per second (median) and the ratio to twistd web.
    """
    clients = sorted({client for _, client in figures})
    names = list(dict.fromkeys(name for name, _ in figures))
    lines = [f"# http: a 1 KiB static file, {CONCURRENCY} keep-alive connections",
             "", f"{rounds} rounds of {duration:g} s per client and server; medians; "
             "ratio to `twistd web --path` in the same run; server pinned to core "
             f"{harness.SERVER_CORE}, client to core {harness.CLIENT_CORE}.", "",
             "| server | " + " | ".join(clients) + " |",
             "| --- | " + " | ".join("---" for _ in clients) + " |"]
    for name in names:
        cells = []
        for client in clients:
            value = median(figures[(name, client)])
            base = median(figures[("twistd web", client)])
            cells.append(f"{value:,.0f}/s ({value / base:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s")
    parser.add_argument("--out", help="the results directory")
    args = parser.parse_args(argv)
    rounds, duration = (2, 1.0) if args.quick else (5, 3.0)
    missing = [c for c in ("wrk", "ab") if shutil.which(c) is None]
    if missing:
        print(f"bench/http_static.py needs {' and '.join(missing)} (Debian: wrk, apache2-utils)")
        return 1
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="portserver-http-") as work:
        root = os.path.join(work, "www")
        os.makedirs(root)
        with open(os.path.join(root, "small.bin"), "wb") as f:
            f.write(os.urandom(FILE_SIZE))
        running = {name: start(name, command, work, root)
                   for name, command in servers(work, root).items()}
        try:
            for index in range(rounds):
                for client in ("ab", "wrk"):
                    for name, server in running.items():
                        figures.setdefault((name, client), []).append(
                            measure(server.ports["http"], client, duration))
                print(f"round {index + 1} of {rounds} done")
        finally:
            for server in running.values():
                server.stop()
    text = table(figures, rounds, duration)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "http.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
