/*
 * loadgen.c - single-threaded epoll load generator for the portserver
 * benchmark.
 *
 *   loadgen MODE --ports P1[,P2,...] [--host 127.0.0.1] [--concurrency C]
 *           [--size S] [--duration SECS] [--warmup SECS] [--timeout SECS]
 *
 * Modes (C = --concurrency, S = --size; slot i talks to ports[i % nports]):
 *   connect       C slots, each: connect, send S bytes, read S back, close,
 *                 repeat.  op = one full cycle.
 *   request       C persistent connections (opened before the warm-up), one
 *                 S-byte message in flight each.  op = one round trip.
 *   bulk-echo     C connections writing 64 KiB chunks, at most 1 MiB written
 *                 and not yet echoed.  ops = bytes = bytes echoed back.
 *   bulk-discard  C connections writing 64 KiB chunks.  ops = bytes = bytes
 *                 accepted by send().  (Anything the server sends is read and
 *                 dropped, so an echo server cannot deadlock it.)
 *   udp           C connected UDP sockets, one S-byte datagram in flight each;
 *                 any datagram back is an op; no reply in 200 ms counts a
 *                 udp-timeout and resends.
 *   hold          open C connections (at most 256 connects in flight), send 1
 *                 byte on each and wait for it back; print the result (ops =
 *                 connections held and verified, seconds = ramp-up time), then
 *                 wait for a line or EOF on stdin, close everything, exit 0.
 *
 * Prints one JSON line on stdout:
 *
 *   {"mode":"connect","ops":N,"seconds":S,"rate":R,"bytes":B,"errors":E,
 *    "error_kinds":{"connect":0,"reset":0,"eof":0,"timeout":0,
 *                   "udp-timeout":0,"other":0}}
 *
 * Operations are only counted inside the measurement window, which starts
 * --warmup seconds after the load starts and lasts --duration seconds;
 * "seconds" is the window length actually measured.  Errors are counted for
 * the whole run and never abort it.  Every run is bounded in time: set-up
 * (request and bulk modes) gives up after --timeout seconds, in-flight work is
 * given at most min(--timeout, 2) seconds after the window ends, and the hold
 * ramp-up gives up after 10 * --timeout seconds.
 *
 * Build: gcc -O2 -Wall -Wextra -o loadgen bench/loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h> /* isfinite (a macro, no libm needed) */
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)             /* bulk write size */
#define OUTSTANDING_MAX (1024 * 1024) /* bulk-echo: max written, not yet echoed */
#define RBUF_SIZE (256 * 1024)
#define MAXEV 1024
#define BULK_WRITES_PER_TURN 16 /* fairness cap on consecutive bulk writes */
#define HOLD_MAX_CONNECTING 256
#define BACKOFF 0.010    /* pause before a slot retries after an error */
#define UDP_WAIT 0.200   /* udp reply wait before resending */
#define SCAN_EVERY 0.010 /* timer resolution for timeouts and back-off */
#define DRAIN_MAX 2.0    /* upper bound on the after-window drain */

enum mode { M_CONNECT, M_REQUEST, M_BULK_ECHO, M_BULK_DISCARD, M_UDP, M_HOLD };
static const char *mode_names[] = {"connect",      "request", "bulk-echo",
                                   "bulk-discard", "udp",     "hold"};

enum errkind { E_CONNECT, E_RESET, E_EOF, E_TIMEOUT, E_UDP_TIMEOUT, E_OTHER, E_NKINDS };
static const char *err_names[] = {"connect", "reset", "eof", "timeout", "udp-timeout", "other"};

/* Slot states.  Every slot is in exactly one; counts[] tracks how many. */
enum state {
    S_IDLE,       /* not started yet (set-up / hold ramp-up) */
    S_BACKOFF,    /* waiting to reconnect after an error */
    S_CONNECTING, /* TCP connect in progress */
    S_ACTIVE,     /* connected (TCP) or running (UDP) */
    S_SHUT,       /* drain: write side shut, reading until EOF */
    S_HELD,       /* hold: verified and kept open */
    S_DONE,       /* finished or given up, no socket */
    S_NSTATES
};

enum phase { P_SETUP, P_RUN, P_DRAIN };

struct slot {
    int fd;
    uint32_t gen;      /* bumped on every new socket; tags epoll events */
    int state;
    int port;          /* index into ports[] */
    int msg_active;    /* message modes: an exchange is in progress */
    int in_retry;      /* queued on the bulk write retry list */
    int udp_waiting;   /* udp: a datagram is out, waiting for a reply */
    uint64_t sent;     /* message modes: bytes of this message; bulk: total */
    uint64_t rcvd;
    double last;       /* last progress (for the stall timeout) */
    double until;      /* back-off end, or udp reply deadline */
};

/* ---- configuration ---- */
static enum mode mode;
static const char *host = "127.0.0.1";
static int ports[1024];
static int nports;
static long concurrency = 50;
static long size = 64;
static double duration = 3.0, warmup = 0.5, timeout_s = 5.0;

static struct sockaddr_storage addrs[1024];
static socklen_t addrlen;
static int family;

/* ---- state ---- */
static struct slot *slots;
static long counts[S_NSTATES];
static int epfd;
static double now;
static enum phase phase;
static int measuring;
static uint64_t ops, bytes_total;
static uint64_t errs[E_NKINDS];
static char *payload;
static size_t payload_len;
static size_t msgsz; /* bytes per exchange in message modes */
static char rbuf[RBUF_SIZE];
static int *retry_list;
static long nretry;
static long next_unstarted;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(const char *why)
{
    if (why)
        fprintf(stderr, "loadgen: %s\n", why);
    fprintf(stderr,
            "usage: loadgen MODE --ports P1[,P2,...] [--host 127.0.0.1] [--concurrency C] "
            "[--size S] [--duration SECS] [--warmup SECS] [--timeout SECS]\n"
            "  MODE: connect | request | bulk-echo | bulk-discard | udp | hold\n"
            "  defaults: --host 127.0.0.1 --concurrency 50 --size 64 --duration 3.0 "
            "--warmup 0.5 --timeout 5.0\n");
    exit(2);
}

static void set_state(struct slot *s, int st)
{
    counts[s->state]--;
    counts[st]++;
    s->state = st;
}

static void count_err(int kind)
{
    errs[kind]++;
}

static int errno_kind(int e)
{
    switch (e) {
    case ECONNRESET:
    case EPIPE:
        return E_RESET;
    case ETIMEDOUT:
        return E_TIMEOUT;
    case ECONNREFUSED:
        return E_CONNECT;
    default:
        return E_OTHER;
    }
}

static int is_message_mode(void)
{
    return mode == M_CONNECT || mode == M_REQUEST || mode == M_HOLD;
}

/* May connected slots send?  Not during the request/bulk set-up phase. */
static int work_allowed(void)
{
    return phase != P_SETUP || mode == M_HOLD;
}

static void slot_close(struct slot *s)
{
    if (s->fd >= 0) {
        close(s->fd); /* also drops it from the epoll set */
        s->fd = -1;
    }
    s->msg_active = 0;
    s->udp_waiting = 0;
}

/* A failure: count it, drop the connection, and decide what the slot does
 * next.  Callers must not touch the connection afterwards. */
static void slot_fail(struct slot *s, int kind)
{
    count_err(kind);
    slot_close(s);
    if (mode == M_HOLD || phase == P_DRAIN) {
        set_state(s, S_DONE);
    } else {
        s->until = now + BACKOFF;
        set_state(s, S_BACKOFF);
    }
}

static int do_write(struct slot *s);
static int do_read(struct slot *s);
static void slot_connect(struct slot *s);

static void start_msg(struct slot *s)
{
    s->sent = s->rcvd = 0;
    s->msg_active = 1;
    s->last = now;
    do_write(s);
}

/* Called when the TCP connection is established. */
static void on_connected(struct slot *s)
{
    set_state(s, S_ACTIVE);
    s->last = now;
    s->sent = s->rcvd = 0;
    s->msg_active = 0;
    if (!work_allowed())
        return; /* request/bulk: start work when the set-up phase ends */
    if (is_message_mode())
        start_msg(s);
    else
        do_write(s);
}

/* An exchange (message modes) completed. */
static void msg_done(struct slot *s)
{
    s->msg_active = 0;
    if (measuring)
        ops++;
    switch (mode) {
    case M_CONNECT:
        slot_close(s);
        if (phase == P_DRAIN) {
            set_state(s, S_DONE);
        } else {
            set_state(s, S_IDLE);
            slot_connect(s); /* immediately start the next cycle */
        }
        break;
    case M_REQUEST:
        if (phase == P_DRAIN) {
            slot_close(s);
            set_state(s, S_DONE);
        } else {
            start_msg(s);
        }
        break;
    case M_HOLD:
        set_state(s, S_HELD);
        break;
    default:
        break;
    }
}

/* ---- source port rotation ----
 *
 * With the default autobind, connect() searches the ephemeral range for a
 * free port, trying even ports first; a port whose TIME_WAIT socket is not yet
 * reusable (tcp_tw_reuse needs it to be from an earlier second) is skipped.  At
 * more than ~14k connects/s to one destination that search scans thousands of
 * TIME_WAIT ports per connect and the load generator, not the server, becomes
 * the bottleneck.  So the client binds each socket itself (SO_REUSEADDR, same
 * loopback address as the destination), walking the even ports of the
 * ephemeral range in order.  For an explicitly bound port the kernel lets a
 * connect reuse our own TIME_WAIT at once (PAWS timestamps keep it safe), so
 * there is no search at all.  A port that is busy (bind: EADDRINUSE) or whose
 * 4-tuple is taken (connect: EADDRNOTAVAIL) is skipped; after a few misses in
 * a row the connect falls back to the kernel's own choice. */
static int lport_lo = 32768, lport_hi = 60999, lport_next;
static uint64_t lport_misses; /* connect EADDRNOTAVAIL on a rotated port */
static unsigned char lport_reserved[65536 / 8];

static void lport_init(void)
{
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        int lo, hi;
        if (fscanf(f, "%d %d", &lo, &hi) == 2 && lo > 0 && hi <= 65535 && lo < hi) {
            lport_lo = lo;
            lport_hi = hi;
        }
        fclose(f);
    }
    f = fopen("/proc/sys/net/ipv4/ip_local_reserved_ports", "r");
    if (f) {
        char line[4096];
        if (fgets(line, sizeof(line), f)) {
            char *p = line;
            while (*p && *p != '\n') {
                char *end;
                long a = strtol(p, &end, 10), b;
                if (end == p)
                    break;
                b = a;
                if (*end == '-') {
                    p = end + 1;
                    b = strtol(p, &end, 10);
                }
                for (long x = a; x <= b && x >= 0 && x < 65536; x++)
                    lport_reserved[x / 8] |= (unsigned char)(1u << (x % 8));
                p = end;
                if (*p == ',')
                    p++;
            }
        }
        fclose(f);
    }
    /* start somewhere else on every run, away from the last run's ports */
    lport_next = lport_lo + (int)(((unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL)) %
                                  (unsigned)(lport_hi - lport_lo + 1));
    lport_next &= ~1;
    if (lport_next < lport_lo)
        lport_next += 2;
}

/* Only even ports, like the kernel's own connect() autobind: odd ports are
 * what bind(port 0) picks first, so servers started meanwhile with port 0
 * still find one even while our TIME_WAIT sockets sit on every even port. */
static int lport_take(void)
{
    for (;;) {
        int p = lport_next;
        lport_next += 2;
        if (lport_next > lport_hi)
            lport_next = lport_lo + (lport_lo & 1);
        if (!(p & 1) && !(lport_reserved[p / 8] & (1u << (p % 8))))
            return p;
    }
}

/* Bind fd to the destination's address and the next free rotating port.
 * Returns 0 when bound, -1 to let the kernel choose. */
static int lport_bind(int fd, const struct sockaddr_storage *dst)
{
    struct sockaddr_storage src;
    memcpy(&src, dst, sizeof(src));
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        return -1;
    for (int tries = 0; tries < 16; tries++) {
        int p = lport_take();
        if (family == AF_INET)
            ((struct sockaddr_in *)&src)->sin_port = htons((uint16_t)p);
        else
            ((struct sockaddr_in6 *)&src)->sin6_port = htons((uint16_t)p);
        if (bind(fd, (struct sockaddr *)&src, addrlen) == 0)
            return 0;
        if (errno != EADDRINUSE && errno != EADDRNOTAVAIL && errno != EACCES)
            return -1;
    }
    return -1;
}

static void slot_connect(struct slot *s)
{
    int fd = -1, rc = -1;
    s->gen++;
    s->msg_active = 0;
    s->sent = s->rcvd = 0;
    s->last = now;
    s->fd = -1;
    /* a few rotated source ports, then the kernel's choice as a last resort */
    int cerr = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
            slot_fail(s, E_OTHER);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int bound = attempt < 4 && lport_bind(fd, &addrs[s->port]) == 0;
        rc = connect(fd, (struct sockaddr *)&addrs[s->port], addrlen);
        cerr = rc == 0 ? 0 : errno;
        if (rc == 0 || cerr == EINPROGRESS || !bound || cerr != EADDRNOTAVAIL)
            break;
        close(fd); /* that port's TIME_WAIT is too recent: try the next one */
        fd = -1;
        lport_misses++;
    }
    s->fd = fd;
    if (rc != 0 && cerr != EINPROGRESS) {
        slot_fail(s, E_CONNECT);
        return;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.u64 = ((uint64_t)s->gen << 32) | (uint64_t)(s - slots);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        fprintf(stderr, "loadgen: epoll_ctl: %s\n", strerror(errno));
        slot_fail(s, E_OTHER);
        return;
    }
    set_state(s, S_CONNECTING);
    if (rc == 0)
        on_connected(s);
}

static void retry_push(struct slot *s)
{
    if (!s->in_retry) {
        s->in_retry = 1;
        retry_list[nretry++] = (int)(s - slots);
    }
}

/* Write whatever is due.  Returns 0 if the slot still holds the same
 * connection, -1 if it was closed/failed. */
static int do_write(struct slot *s)
{
    if (s->state != S_ACTIVE)
        return 0;
    if (is_message_mode()) {
        while (s->msg_active && s->sent < msgsz) {
            ssize_t n = send(s->fd, payload + s->sent, msgsz - s->sent, MSG_NOSIGNAL);
            if (n > 0) {
                s->sent += (uint64_t)n;
                s->last = now;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                return 0; /* EPOLLOUT edge will come */
            } else {
                slot_fail(s, n < 0 ? errno_kind(errno) : E_OTHER);
                return -1;
            }
        }
        return 0;
    }
    /* bulk modes */
    for (int i = 0; i < BULK_WRITES_PER_TURN; i++) {
        size_t chunk = CHUNK;
        if (mode == M_BULK_ECHO) {
            uint64_t out = s->sent - s->rcvd;
            if (s->rcvd > s->sent)
                out = 0;
            if (out >= OUTSTANDING_MAX)
                return 0; /* reading the echo will call us again */
            if (OUTSTANDING_MAX - out < chunk)
                chunk = OUTSTANDING_MAX - out;
        }
        ssize_t n = send(s->fd, payload, chunk, MSG_NOSIGNAL);
        if (n > 0) {
            s->sent += (uint64_t)n;
            s->last = now;
            if (measuring && mode == M_BULK_DISCARD) {
                bytes_total += (uint64_t)n;
                ops += (uint64_t)n;
            }
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            slot_fail(s, n < 0 ? errno_kind(errno) : E_OTHER);
            return -1;
        }
    }
    retry_push(s); /* never blocked: come back after other slots had a turn */
    return 0;
}

/* Read until drained (edge-triggered).  Returns 0 if the slot still holds the
 * same connection, -1 if it was closed, failed, or restarted. */
static int do_read(struct slot *s)
{
    for (;;) {
        size_t want = sizeof(rbuf);
        int msg = is_message_mode() && s->msg_active;
        if (msg && msgsz - s->rcvd < want)
            want = msgsz - s->rcvd;
        ssize_t n = recv(s->fd, rbuf, want, 0);
        if (n > 0) {
            s->last = now;
            if (mode != M_BULK_DISCARD) {
                s->rcvd += (uint64_t)n;
                if (measuring) {
                    bytes_total += (uint64_t)n;
                    if (mode == M_BULK_ECHO)
                        ops += (uint64_t)n;
                }
            }
            if (msg && s->rcvd >= msgsz && s->sent >= msgsz) {
                uint32_t gen = s->gen;
                msg_done(s);
                /* The echo of this exchange is complete; nothing else is
                 * expected, so treat the socket as drained. */
                return (s->gen == gen && s->fd >= 0 && s->state == S_ACTIVE) ? 0 : -1;
            }
            if ((size_t)n < want)
                break; /* short read: the receive queue is empty */
        } else if (n == 0) {
            if (s->state == S_SHUT) {
                slot_close(s);
                set_state(s, S_DONE);
            } else {
                slot_fail(s, E_EOF);
            }
            return -1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else {
            slot_fail(s, errno_kind(errno));
            return -1;
        }
    }
    if (mode == M_BULK_ECHO && s->state == S_ACTIVE && work_allowed())
        return do_write(s); /* the echo made room for more */
    return 0;
}

static void on_tcp_event(struct slot *s, uint32_t ev)
{
    if (s->state == S_CONNECTING) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
            int e = 0;
            socklen_t el = sizeof(e);
            getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &el);
            /* refused, unreachable, timed out: the connect failed; a reset
             * means it was accepted and then dropped */
            slot_fail(s, (e == ECONNRESET || e == EPIPE) ? E_RESET : E_CONNECT);
            return;
        }
        if (!(ev & EPOLLOUT))
            return;
        uint32_t gen = s->gen;
        on_connected(s);
        if (s->gen != gen || s->fd < 0)
            return;
    }
    if (s->state != S_ACTIVE && s->state != S_SHUT && s->state != S_HELD)
        return;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (do_read(s) != 0)
            return;
    }
    if ((ev & EPOLLOUT) && s->state == S_ACTIVE && work_allowed())
        do_write(s);
}

/* ---- UDP ---- */

static void udp_send(struct slot *s)
{
    ssize_t n = send(s->fd, payload, msgsz, 0);
    s->until = now + UDP_WAIT;
    if (n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
        s->udp_waiting = 1; /* a dropped datagram is caught by the reply wait */
        return;
    }
    /* e.g. ECONNREFUSED from an earlier ICMP port unreachable */
    count_err(errno_kind(errno));
    s->udp_waiting = 0; /* resend when the wait is over, without a udp-timeout */
}

static void udp_start(struct slot *s)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    s->gen++;
    if (fd < 0) {
        fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
        count_err(E_OTHER);
        set_state(s, S_DONE);
        return;
    }
    s->fd = fd;
    if (connect(fd, (struct sockaddr *)&addrs[s->port], addrlen) != 0) {
        count_err(E_CONNECT);
        slot_close(s);
        set_state(s, S_DONE);
        return;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN; /* level-triggered: one datagram per wake-up */
    ev.data.u64 = ((uint64_t)s->gen << 32) | (uint64_t)(s - slots);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        count_err(E_OTHER);
        slot_close(s);
        set_state(s, S_DONE);
        return;
    }
    set_state(s, S_ACTIVE);
    udp_send(s);
}

static void on_udp_event(struct slot *s)
{
    ssize_t n = recv(s->fd, rbuf, sizeof(rbuf), 0);
    if (n >= 0) {
        if (measuring) {
            ops++;
            bytes_total += (uint64_t)n;
        }
        udp_send(s);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        count_err(errno_kind(errno));
        s->udp_waiting = 0;
        s->until = now + UDP_WAIT;
    }
}

/* ---- timers ---- */

static void scan(void)
{
    for (long i = 0; i < concurrency; i++) {
        struct slot *s = &slots[i];
        switch (s->state) {
        case S_BACKOFF:
            if (now >= s->until) {
                if (phase == P_DRAIN) {
                    set_state(s, S_DONE);
                } else {
                    set_state(s, S_IDLE);
                    slot_connect(s);
                }
            }
            break;
        case S_CONNECTING:
        case S_SHUT:
            if (now - s->last >= timeout_s)
                slot_fail(s, E_TIMEOUT);
            break;
        case S_ACTIVE:
            if (mode == M_UDP) {
                if (now >= s->until) {
                    if (s->udp_waiting)
                        count_err(E_UDP_TIMEOUT);
                    udp_send(s);
                }
            } else if ((is_message_mode() ? s->msg_active : work_allowed()) &&
                       now - s->last >= timeout_s) {
                slot_fail(s, E_TIMEOUT);
            }
            break;
        default:
            break;
        }
    }
}

/* ---- phases ---- */

static void start_unstarted(long max_connecting)
{
    while (next_unstarted < concurrency && counts[S_CONNECTING] < max_connecting) {
        struct slot *s = &slots[next_unstarted++];
        slot_connect(s);
    }
}

static void enter_drain(void)
{
    phase = P_DRAIN;
    for (long i = 0; i < concurrency; i++) {
        struct slot *s = &slots[i];
        switch (s->state) {
        case S_IDLE:
        case S_BACKOFF:
            set_state(s, S_DONE);
            break;
        case S_CONNECTING:
            if (mode != M_CONNECT) { /* not an exchange in flight */
                slot_close(s);
                set_state(s, S_DONE);
            }
            break;
        case S_ACTIVE:
            if (mode == M_UDP || (is_message_mode() && !s->msg_active)) {
                slot_close(s);
                set_state(s, S_DONE);
            } else if (!is_message_mode()) {
                /* bulk: stop writing, let the peer see EOF, read to EOF */
                shutdown(s->fd, SHUT_WR);
                s->last = now;
                set_state(s, S_SHUT);
            }
            break;
        default:
            break;
        }
    }
}

static void print_result(double seconds)
{
    uint64_t total = 0;
    for (int k = 0; k < E_NKINDS; k++)
        total += errs[k];
    double rate = seconds > 0 ? (double)ops / seconds : 0.0;
    printf("{\"mode\":\"%s\",\"ops\":%llu,\"seconds\":%.3f,\"rate\":%.1f,\"bytes\":%llu,"
           "\"errors\":%llu,\"error_kinds\":{",
           mode_names[mode], (unsigned long long)ops, seconds, rate,
           (unsigned long long)bytes_total, (unsigned long long)total);
    for (int k = 0; k < E_NKINDS; k++)
        printf("%s\"%s\":%llu", k ? "," : "", err_names[k], (unsigned long long)errs[k]);
    printf("}}\n");
    fflush(stdout);
}

/* ---- argument parsing ---- */

static double parse_double(const char *v, const char *name, double min_excl, int allow_zero)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(d) || d < 0 || (d == 0 && !allow_zero) ||
        (d != 0 && d <= min_excl)) {
        fprintf(stderr, "loadgen: bad value for %s: %s\n", name, v);
        usage(NULL);
    }
    return d;
}

static long parse_long(const char *v, const char *name, long lo, long hi)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "loadgen: bad value for %s: %s (allowed %ld..%ld)\n", name, v, lo, hi);
        usage(NULL);
    }
    return x;
}

static void parse_ports(const char *v)
{
    const char *p = v;
    nports = 0;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 1 || x > 65535 || (*end && *end != ','))
            usage("bad --ports");
        if (nports >= (int)(sizeof(ports) / sizeof(ports[0])))
            usage("too many ports");
        ports[nports++] = (int)x;
        p = end;
        if (*p == ',') {
            p++;
            if (!*p)
                usage("bad --ports");
        }
    }
    if (nports == 0)
        usage("bad --ports");
}

static void parse_args(int argc, char **argv)
{
    const char *mode_s = NULL;
    int have_ports = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            if (mode_s)
                usage("more than one MODE given");
            mode_s = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (nlen == 6 && !strncmp(a, "--help", 6))
            usage(NULL);
        const char *v;
        if (eq)
            v = eq + 1;
        else if (i + 1 < argc)
            v = argv[++i];
        else
            usage("option needs a value");
#define OPT(name) (nlen == strlen(name) && !strncmp(a, name, nlen))
        if (OPT("--ports")) {
            parse_ports(v);
            have_ports = 1;
        } else if (OPT("--host")) {
            host = v;
        } else if (OPT("--concurrency")) {
            concurrency = parse_long(v, "--concurrency", 1, 1000000);
        } else if (OPT("--size")) {
            size = parse_long(v, "--size", 1, 64L * 1024 * 1024);
        } else if (OPT("--duration")) {
            duration = parse_double(v, "--duration", 0, 0);
        } else if (OPT("--warmup")) {
            warmup = parse_double(v, "--warmup", 0, 1);
        } else if (OPT("--timeout")) {
            timeout_s = parse_double(v, "--timeout", 0, 0);
        } else {
            fprintf(stderr, "loadgen: unknown option %.*s\n", (int)nlen, a);
            usage(NULL);
        }
#undef OPT
    }
    if (!mode_s)
        usage("MODE missing");
    int found = 0;
    for (int m = 0; m < (int)(sizeof(mode_names) / sizeof(mode_names[0])); m++) {
        if (!strcmp(mode_s, mode_names[m])) {
            mode = (enum mode)m;
            found = 1;
        }
    }
    if (!found) {
        fprintf(stderr, "loadgen: unknown MODE %s\n", mode_s);
        usage(NULL);
    }
    if (!have_ports)
        usage("--ports is required");
    if (mode == M_UDP && size > 65507)
        usage("--size too large for a UDP datagram (max 65507)");
}

static void resolve(void)
{
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, "1", &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "loadgen: bad --host %s: %s (numeric address required)\n", host,
                gai_strerror(rc));
        usage(NULL);
    }
    family = ai->ai_family;
    addrlen = (socklen_t)ai->ai_addrlen;
    for (int i = 0; i < nports; i++) {
        memcpy(&addrs[i], ai->ai_addr, ai->ai_addrlen);
        if (family == AF_INET)
            ((struct sockaddr_in *)&addrs[i])->sin_port = htons((uint16_t)ports[i]);
        else
            ((struct sockaddr_in6 *)&addrs[i])->sin6_port = htons((uint16_t)ports[i]);
    }
    freeaddrinfo(ai);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            fprintf(stderr, "loadgen: setrlimit(RLIMIT_NOFILE): %s\n", strerror(errno));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)concurrency + 16 > rl.rlim_cur)
        fprintf(stderr, "loadgen: warning: --concurrency %ld exceeds the fd limit %llu\n",
                concurrency, (unsigned long long)rl.rlim_cur);
}

/* Hold mode, after the result is printed: wait for a line or EOF on stdin. */
static void wait_stdin(void)
{
    for (;;) {
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        int r = poll(&pfd, 1, -1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        if (pfd.revents & POLLNVAL)
            return;
        char c[256];
        ssize_t n = read(0, c, sizeof(c));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return;
        }
        if (n == 0 || memchr(c, '\n', (size_t)n))
            return;
    }
}

static int ms_until(double t)
{
    double d = (t - now) * 1000.0;
    if (d <= 0)
        return 0;
    if (d > 1000)
        return 1000;
    int ms = (int)d;
    return ms < d ? ms + 1 : ms;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    resolve();
    raise_nofile();
    lport_init();
    signal(SIGPIPE, SIG_IGN);

    msgsz = mode == M_HOLD ? 1 : (size_t)size;
    payload_len = msgsz > CHUNK ? msgsz : CHUNK;
    payload = malloc(payload_len);
    slots = calloc((size_t)concurrency, sizeof(*slots));
    retry_list = calloc((size_t)concurrency, sizeof(*retry_list));
    if (!payload || !slots || !retry_list) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < payload_len; i++)
        payload[i] = (char)('a' + i % 26);
    for (long i = 0; i < concurrency; i++) {
        slots[i].fd = -1;
        slots[i].state = S_IDLE;
        slots[i].port = (int)(i % nports);
    }
    counts[S_IDLE] = concurrency;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        fprintf(stderr, "loadgen: epoll_create1: %s\n", strerror(errno));
        return 1;
    }

    now = mono();
    double t_start = now;
    double setup_end = now + timeout_s; /* request/bulk set-up limit */
    double hold_end = now + 10.0 * timeout_s;
    double ws = 0, we = 0, drain_end = 0, ws_actual = 0, we_actual = 0;
    double next_scan = now + SCAN_EVERY;
    int started_window = 0;

    if (mode == M_REQUEST || mode == M_BULK_ECHO || mode == M_BULK_DISCARD || mode == M_HOLD) {
        phase = P_SETUP;
    } else {
        phase = P_RUN;
    }

    /* start of the load for modes without a set-up phase */
    if (phase == P_RUN) {
        ws = now + warmup;
        we = ws + duration;
        for (long i = 0; i < concurrency; i++) {
            if (mode == M_UDP)
                udp_start(&slots[i]);
            else
                slot_connect(&slots[i]);
        }
        next_unstarted = concurrency;
    } else {
        start_unstarted(HOLD_MAX_CONNECTING);
    }

    struct epoll_event evs[MAXEV];
    for (;;) {
        /* ---- how long may we sleep ---- */
        double wake = next_scan;
        if (phase == P_RUN) {
            if (!started_window && ws < wake)
                wake = ws;
            if (we < wake)
                wake = we;
        } else if (phase == P_DRAIN && drain_end < wake) {
            wake = drain_end;
        }
        int tmo = nretry ? 0 : ms_until(wake);
        int n = epoll_wait(epfd, evs, MAXEV, tmo);
        if (n < 0) {
            if (errno != EINTR) {
                fprintf(stderr, "loadgen: epoll_wait: %s\n", strerror(errno));
                break;
            }
            n = 0;
        }
        now = mono();

        /* ---- phase transitions ---- */
        if (phase == P_SETUP) {
            int all_up = mode == M_HOLD ? (counts[S_HELD] + counts[S_DONE] == concurrency)
                                        : (counts[S_ACTIVE] == concurrency);
            if (mode == M_HOLD && !all_up && now >= hold_end) {
                /* give up the ramp-up: whatever is not held by now failed */
                for (long i = 0; i < concurrency; i++) {
                    struct slot *s = &slots[i];
                    if (s->state != S_HELD && s->state != S_DONE) {
                        count_err(E_TIMEOUT);
                        slot_close(s);
                        set_state(s, S_DONE);
                    }
                }
                all_up = 1;
            }
            if (mode == M_HOLD && all_up)
                break;
            if (mode != M_HOLD && (all_up || now >= setup_end)) {
                if (!all_up)
                    fprintf(stderr, "loadgen: set-up: only %ld of %ld connections up after %.1fs\n",
                            counts[S_ACTIVE], concurrency, timeout_s);
                phase = P_RUN;
                ws = now + warmup;
                we = ws + duration;
                /* connections still connecting start work when they connect */
                for (long i = 0; i < concurrency; i++) {
                    struct slot *s = &slots[i];
                    if (s->state != S_ACTIVE)
                        continue;
                    s->last = now;
                    if (is_message_mode())
                        start_msg(s);
                    else
                        do_write(s);
                }
            }
        }
        if (phase == P_RUN) {
            if (!started_window && now >= ws) {
                started_window = 1;
                measuring = 1;
                ws_actual = now;
            }
            if (now >= we) {
                if (!started_window) {
                    started_window = 1;
                    ws_actual = now;
                }
                measuring = 0;
                we_actual = now;
                drain_end = now + (timeout_s < DRAIN_MAX ? timeout_s : DRAIN_MAX);
                enter_drain();
            }
        }
        if (phase == P_DRAIN && (counts[S_DONE] == concurrency || now >= drain_end))
            break;

        /* ---- events ---- */
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            struct slot *s = &slots[(uint32_t)tag];
            if ((uint32_t)(tag >> 32) != s->gen || s->fd < 0)
                continue; /* stale: the socket was replaced in this batch */
            if (mode == M_UDP) {
                if (s->state == S_ACTIVE)
                    on_udp_event(s);
            } else {
                on_tcp_event(s, evs[i].events);
            }
        }

        /* ---- bulk writers that did not block get another turn ---- */
        if (nretry) {
            long k = nretry;
            nretry = 0;
            for (long i = 0; i < k; i++) {
                struct slot *s = &slots[retry_list[i]];
                s->in_retry = 0;
                if (s->state == S_ACTIVE && work_allowed())
                    do_write(s);
            }
        }

        /* ---- timers ---- */
        if (now >= next_scan) {
            scan();
            next_scan = now + SCAN_EVERY;
        }
        if (phase == P_SETUP)
            start_unstarted(HOLD_MAX_CONNECTING);
    }

    if (mode != M_HOLD && mode != M_UDP && counts[S_DONE] < concurrency)
        fprintf(stderr,
                "loadgen: note: %ld operations still in flight were abandoned %.1fs after "
                "the window (not counted as errors)\n",
                concurrency - counts[S_DONE], timeout_s < DRAIN_MAX ? timeout_s : DRAIN_MAX);
    if (lport_misses)
        fprintf(stderr,
                "loadgen: note: %llu connects retried on another source port\n",
                (unsigned long long)lport_misses);
    if (mode == M_HOLD) {
        /* every verified connection carried one echoed byte */
        ops = (uint64_t)counts[S_HELD];
        bytes_total = ops;
        print_result(now - t_start);
        wait_stdin();
    } else {
        print_result(we_actual - ws_actual);
    }
    for (long i = 0; i < concurrency; i++)
        slot_close(&slots[i]);
    close(epfd);
    free(slots);
    free(retry_list);
    free(payload);
    return 0;
}
