/*
 * cecho.c - a minimal single-threaded epoll echo server (TCP + UDP), used by
 * the portserver benchmark as the "near-physical limit" reference point.
 *
 *   cecho [--host 127.0.0.1] [--port 0] [--udp]
 *
 * TCP: level-triggered epoll, non-blocking sockets, accept4() until EAGAIN,
 * read up to 64 KiB and write it straight back.  When the write would block,
 * the unsent bytes are kept in a per-connection buffer, the connection stops
 * being read and waits for EPOLLOUT (backpressure: at most 64 KiB buffered per
 * connection).  A UDP echo socket is always bound to the same port number as
 * the TCP listener (--udp is accepted for compatibility and changes nothing).
 *
 * After binding, prints exactly one line "PORT <n>" on stdout.  Runs until
 * SIGTERM or SIGINT, then exits 0.
 *
 * Build: gcc -O2 -Wall -Wextra -o cecho bench/cecho.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ (64 * 1024)
#define MAXEV 512
#define UDP_BATCH 64

/* epoll tags for the two listening sockets; connections use their fd. */
#define TAG_LISTEN ((uint64_t)1 << 40)
#define TAG_UDP ((uint64_t)2 << 40)
#define TAG_SIG ((uint64_t)3 << 40)

struct conn {
    char *pend;   /* unsent bytes (malloc'd), NULL when nothing is pending */
    uint32_t off; /* offset of the first unsent byte in pend */
    uint32_t len; /* total bytes in pend */
    int open;     /* an accepted connection lives on this fd */
};

static int stop_flag;
static struct conn *conns;
static size_t nconns;
static int epfd;
static int reserve_fd = -1;
static char rbuf[BUFSZ];

static void usage(void)
{
    fprintf(stderr, "usage: cecho [--host 127.0.0.1] [--port 0] [--udp]\n");
    exit(2);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            perror("cecho: setrlimit(RLIMIT_NOFILE)");
    }
}

static struct conn *conn_get(int fd)
{
    if ((size_t)fd >= nconns) {
        size_t n = nconns ? nconns : 1024;
        while (n <= (size_t)fd)
            n *= 2;
        struct conn *c = realloc(conns, n * sizeof(*c));
        if (!c)
            return NULL;
        memset(c + nconns, 0, (n - nconns) * sizeof(*c));
        conns = c;
        nconns = n;
    }
    return &conns[fd];
}

static void conn_close(int fd)
{
    if ((size_t)fd < nconns) {
        free(conns[fd].pend);
        conns[fd].pend = NULL;
        conns[fd].off = conns[fd].len = 0;
        conns[fd].open = 0;
    }
    close(fd); /* also removes it from the epoll set */
}

static int set_interest(int fd, uint32_t events)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = (uint64_t)fd;
    return epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
}

static void do_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
                /* Out of descriptors: accept and drop one connection so the
                 * level-triggered listener does not spin. */
                close(reserve_fd);
                reserve_fd = -1;
                fd = accept(lfd, NULL, NULL);
                if (fd >= 0)
                    close(fd);
                reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            return; /* EAGAIN or anything else: wait for the next event */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (!conn_get(fd)) {
            close(fd);
            continue;
        }
        struct epoll_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.events = EPOLLIN;
        ev.data.u64 = (uint64_t)fd;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            continue;
        }
        conns[fd].open = 1;
    }
}

/* Try to send c->pend.  Returns 1 when it is all sent, 0 if still pending, -1
 * on error (connection must be closed). */
static int flush_pending(int fd, struct conn *c)
{
    while (c->off < c->len) {
        ssize_t w = send(fd, c->pend + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (w > 0) {
            c->off += (uint32_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            return -1;
        }
    }
    free(c->pend);
    c->pend = NULL;
    c->off = c->len = 0;
    return 1;
}

static void on_conn(int fd, uint32_t events)
{
    struct conn *c = &conns[fd];

    if (c->pend) {
        /* Waiting for EPOLLOUT: not reading this connection meanwhile. */
        int r = flush_pending(fd, c);
        if (r < 0) {
            conn_close(fd);
        } else if (r == 1) {
            if (set_interest(fd, EPOLLIN) != 0)
                conn_close(fd);
        } else if (events & (EPOLLERR | EPOLLHUP)) {
            conn_close(fd);
        }
        return;
    }

    ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
    if (n == 0) {
        conn_close(fd); /* clean EOF */
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_close(fd);
        return;
    }
    size_t done = 0;
    while (done < (size_t)n) {
        ssize_t w = send(fd, rbuf + done, (size_t)n - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            conn_close(fd);
            return;
        }
    }
    if (done < (size_t)n) {
        size_t rest = (size_t)n - done;
        c->pend = malloc(rest);
        if (!c->pend) {
            conn_close(fd);
            return;
        }
        memcpy(c->pend, rbuf + done, rest);
        c->off = 0;
        c->len = (uint32_t)rest;
        if (set_interest(fd, EPOLLOUT) != 0)
            conn_close(fd);
    }
}

static void on_udp(int ufd)
{
    struct sockaddr_storage ss;
    for (int i = 0; i < UDP_BATCH; i++) {
        socklen_t sl = sizeof(ss);
        ssize_t n = recvfrom(ufd, rbuf, sizeof(rbuf), 0, (struct sockaddr *)&ss, &sl);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN, or an ICMP error reported on the socket */
        }
        /* If the send buffer is full the reply is dropped, as UDP allows. */
        (void)sendto(ufd, rbuf, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&ss, sl);
    }
}

static int parse_port(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 65535)
        return -1;
    return (int)v;
}

/* Bind a TCP listener and a UDP socket on host:port.  With port 0 the OS picks
 * the TCP port and the UDP socket takes the same number (retrying if that UDP
 * port happens to be taken). */
static int bind_both(const char *host, int port, int *lfd_out, int *ufd_out, int *port_out)
{
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, "0", &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "cecho: bad --host %s: %s\n", host, gai_strerror(rc));
        return -1;
    }
    struct sockaddr_storage addr;
    socklen_t alen = (socklen_t)ai->ai_addrlen;
    int family = ai->ai_family;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);

    for (int attempt = 0; attempt < 50; attempt++) {
        if (family == AF_INET)
            ((struct sockaddr_in *)&addr)->sin_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in6 *)&addr)->sin6_port = htons((uint16_t)port);

        int lfd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd < 0) {
            perror("cecho: socket");
            return -1;
        }
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(lfd, (struct sockaddr *)&addr, alen) != 0) {
            perror("cecho: bind (tcp)");
            close(lfd);
            return -1;
        }
        if (listen(lfd, 4096) != 0) {
            perror("cecho: listen");
            close(lfd);
            return -1;
        }
        struct sockaddr_storage got;
        socklen_t glen = sizeof(got);
        getsockname(lfd, (struct sockaddr *)&got, &glen);
        int actual = family == AF_INET ? ntohs(((struct sockaddr_in *)&got)->sin_port)
                                       : ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
        if (family == AF_INET)
            ((struct sockaddr_in *)&addr)->sin_port = htons((uint16_t)actual);
        else
            ((struct sockaddr_in6 *)&addr)->sin6_port = htons((uint16_t)actual);

        int ufd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (ufd < 0) {
            perror("cecho: socket (udp)");
            close(lfd);
            return -1;
        }
        setsockopt(ufd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(ufd, (struct sockaddr *)&addr, alen) != 0) {
            int e = errno;
            close(ufd);
            close(lfd);
            if (port == 0 && e == EADDRINUSE)
                continue; /* the UDP twin is taken: let the OS pick again */
            errno = e;
            perror("cecho: bind (udp)");
            return -1;
        }
        *lfd_out = lfd;
        *ufd_out = ufd;
        *port_out = actual;
        return 0;
    }
    fprintf(stderr, "cecho: could not find a port free for both TCP and UDP\n");
    return -1;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        size_t nlen = strlen(a);
        const char *eq = strchr(a, '=');
        if (strncmp(a, "--", 2) != 0)
            usage();
        if (eq)
            nlen = (size_t)(eq - a);
        if (nlen == 5 && !strncmp(a, "--udp", 5)) {
            if (eq)
                usage();
            continue;
        }
        if (nlen == 6 && !strncmp(a, "--help", 6))
            usage();
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else
            usage();
        if (nlen == 6 && !strncmp(a, "--host", 6)) {
            host = val;
        } else if (nlen == 6 && !strncmp(a, "--port", 6)) {
            port = parse_port(val);
            if (port < 0)
                usage();
        } else {
            usage();
        }
    }

    raise_nofile();

    /* SIGTERM/SIGINT arrive through a signalfd in the epoll set.  (A handler
     * unblocked only inside epoll_pwait would never run under load: when
     * events are ready epoll_pwait returns them and restores the mask before
     * the pending signal can be delivered.) */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, NULL);
    signal(SIGTERM, SIG_DFL); /* an inherited SIG_IGN would discard them */
    signal(SIGINT, SIG_DFL);
    int sfd = signalfd(-1, &block, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        perror("cecho: signalfd");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    int lfd, ufd, actual;
    if (bind_both(host, port, &lfd, &ufd, &actual) != 0)
        return 1;

    reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("cecho: epoll_create1");
        return 1;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = TAG_LISTEN;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.u64 = TAG_UDP;
    epoll_ctl(epfd, EPOLL_CTL_ADD, ufd, &ev);
    ev.data.u64 = TAG_SIG;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);

    printf("PORT %d\n", actual);
    fflush(stdout);

    struct epoll_event evs[MAXEV];
    while (!stop_flag) {
        int n = epoll_wait(epfd, evs, MAXEV, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("cecho: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_LISTEN)
                do_accept(lfd);
            else if (tag == TAG_UDP)
                on_udp(ufd);
            else if (tag == TAG_SIG)
                stop_flag = 1; /* finish this batch, then exit */
            else
                on_conn((int)tag, evs[i].events);
        }
    }

    for (size_t fd = 0; fd < nconns; fd++) {
        if (conns[fd].open) /* close every connection still open */
            conn_close((int)fd);
    }
    free(conns);
    close(lfd);
    close(ufd);
    close(sfd);
    close(epfd);
    return 0;
}
