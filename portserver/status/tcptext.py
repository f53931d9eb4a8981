"""
The kernel's view (L{portserver.kernel}) as lines of text for C{portserver status --tcp},
written the way C{ss -ti} writes its sockets: under each TCP connection its state, queues
and C{tcp_info}; under each TCP listener the path its connections take; in the summary the
host's listen counters. Everything here reads the JSON the status service answers, and
says nothing of what it lacks (the fields are absent elsewhere than on Linux).
"""

from __future__ import annotations

#: C{ss}'s names of the kernel's TCP states.
SS_STATES = {
    "established": "ESTAB", "syn_sent": "SYN-SENT", "syn_recv": "SYN-RECV",
    "fin_wait1": "FIN-WAIT-1", "fin_wait2": "FIN-WAIT-2", "time_wait": "TIME-WAIT",
    "close": "UNCONN", "close_wait": "CLOSE-WAIT", "last_ack": "LAST-ACK",
    "listen": "LISTEN", "closing": "CLOSING",
}

INDENT = "      "


def bitRate(bytesPerSecond: float) -> str:
    """
    A rate in bytes per second as C{ss} writes it, in bits: C{37.4Gbps}, C{512bps}.
    """
    bits = bytesPerSecond * 8
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if bits >= size:
            return f"{bits / size:.1f}{unit}bps"
    return f"{bits:.0f}bps"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def connectionLine(connection: dict) -> str | None:
    """
    The line under a connection for its C{tcp}, or L{None} when it has none:
    C{ESTAB send-q:0 recv-q:0 rtt:0.05/0.025 cwnd:10 unacked:0 retrans:0 lost:0
    pmtu:65535 delivery_rate 1.2Gbps}.
    """
    tcp = connection.get("tcp")
    if not isinstance(tcp, dict):
        return None
    state = str(tcp.get("state", "?"))
    parts = [SS_STATES.get(state, state.upper()),
             f"send-q:{tcp.get('send_queue', '?')}", f"recv-q:{tcp.get('recv_queue', '?')}"]
    if "rtt_ms" in tcp:
        parts.append(f"rtt:{_number(tcp['rtt_ms'])}/{_number(tcp.get('rttvar_ms', '?'))}")
    for name, key in (("cwnd", "cwnd"), ("unacked", "unacked"), ("retrans", "retransmits"),
                      ("lost", "lost"), ("pmtu", "pmtu")):
        if key in tcp:
            parts.append(f"{name}:{tcp[key]}")
    rate = tcp.get("delivery_rate")
    if isinstance(rate, (int, float)):
        parts.append(f"delivery_rate {bitRate(rate)}")
    return INDENT + " ".join(parts)


def listenerLine(listener: dict) -> str | None:
    """
    The line under a TCP listener for its C{kernel}, or L{None} when it has none: the
    path a connection takes, with the count at each step.
    """
    kernel = listener.get("kernel")
    if not isinstance(kernel, dict):
        return None
    k = kernel.get
    line = (f"{INDENT}handshake syn-recv:{k('syn_recv', '?')} -> accept queue "
            f"{k('accept_queue', '?')}/{k('backlog', '?')} -> established "
            f"{listener.get('connections', '?')} -> teardown close-wait:{k('close_wait', '?')}"
            f" fin-wait:{k('fin_wait', '?')} last-ack:{k('last_ack', '?')} "
            f"time-wait:{k('time_wait', '?')}")
    if "drops" in kernel:
        line += f"; drops:{kernel['drops']}"
    return line


def countersLine(summary: dict) -> str | None:
    """
    The summary's line for the host's listen counters (C{listen_counters}), each with its
    change since the server started, or L{None} when there are none.
    """
    counters = summary.get("listen_counters")
    if not isinstance(counters, dict) or not counters:
        return None
    parts = [f"{name} {value.get('total', '?')} (+{value.get('since_start', '?')})"
             for name, value in counters.items() if isinstance(value, dict)]
    return "host listen counters (+ since start): " + ", ".join(parts)
