/*
 * gman_net.c — sockets with deadlines, for the per-thread connections of
 * gman_conn.c.  No protocol, no thread state: file descriptors, addresses,
 * an absolute deadline per call.
 *
 * Inside mysqld every call must be bounded by a deadline we choose and must
 * never raise SIGPIPE: every socket is non-blocking and every connect, write
 * and read waits in poll() against the caller's deadline; send() uses
 * MSG_NOSIGNAL.  SO_SNDTIMEO/SO_RCVTIMEO are set too, as a second line of
 * defence.
 */
#define _GNU_SOURCE
#include "gman_net.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

/* Wait for events on fd until deadline_ms. 1 ready, 0 timeout, -1 error.
 * An answer from gearmand on the same host usually comes within tens of µs; sleeping in poll()
 * and being woken costs more than that, so poll without sleeping for up to SPIN_US first. */
#define SPIN_US 100
int gs_net_wait_fd(int fd, short events, int64_t deadline_ms)
{
    int64_t spin_until = gs_now_us() + SPIN_US;
    do {
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, 0);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    } while (gs_now_us() < spin_until);
    for (;;) {
        int64_t left = deadline_ms - gs_now_ms();
        if (left < 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(left > 3600000 ? 3600000 : left));
        if (r > 0)
            return 1;
        if (r == 0) {
            if (gs_now_ms() >= deadline_ms)
                return 0;
            continue;
        }
        if (errno != EINTR)
            return -1;
    }
}

int gs_net_resolve(const struct gs_server *srv, struct sockaddr_storage *addr,
                   socklen_t *addrlen, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char port[8];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(port, sizeof port, "%u", (unsigned)srv->port);
    /* A numeric address resolves without I/O.  A host name goes through the
     * system resolver once per thread and config (README: prefer addresses
     * or /etc/hosts names, DNS has no deadline here). */
    int rc = getaddrinfo(srv->host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "%s:%u: resolve: %s",
                 srv->host, (unsigned)srv->port,
                 rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    if (res->ai_addrlen > sizeof *addr) {
        freeaddrinfo(res);
        return -1;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int gs_net_connect(const struct sockaddr_storage *addr, socklen_t addrlen,
                   unsigned timeout_ms, int64_t deadline, const char **what,
                   int *err)
{
    int fd, one = 1, e;
    fd = socket(addr->ss_family,
                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *what = "socket";
        *err = errno;
        return -1;
    }
    /* The fd is non-blocking and every call waits in poll() with our
     * deadline; SO_SNDTIMEO/SO_RCVTIMEO (set too, belt and braces) would only
     * matter if someone made it blocking. */
    struct timeval tv = {.tv_sec = timeout_ms / 1000,
                         .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
        e = errno;
        close(fd);
        *what = "setsockopt";
        *err = e;
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)addr, addrlen) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) {
            e = errno;
            close(fd);
            *what = "connect";
            *err = e;
            return -2;
        }
        int w = gs_net_wait_fd(fd, POLLOUT, deadline);
        socklen_t sl = sizeof e;
        e = 0;
        if (w <= 0) {
            e = w == 0 ? ETIMEDOUT : errno;
        } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0) {
            e = errno;
        }
        if (e) {
            close(fd);
            *what = "connect";
            *err = e;
            return -2;
        }
    }
    return fd;
}

/* A cached connection the peer has closed (gearmand restarted) shows as
 * readable: EOF or an error.  Bytes we did not ask for also mean it is out
 * of sync.  One non-blocking peek, no wait. */
int gs_net_looks_stale(int fd)
{
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    return 1;
}

int gs_net_send_all(int fd, struct iovec *iov, int iovcnt, int64_t deadline,
                    int *err)
{
    struct msghdr m;
    memset(&m, 0, sizeof m);
    while (iovcnt > 0) {
        m.msg_iov = iov;
        m.msg_iovlen = (size_t)iovcnt;
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int r = gs_net_wait_fd(fd, POLLOUT, deadline);
                if (r <= 0) {
                    *err = r == 0 ? ETIMEDOUT : errno;
                    return -1;
                }
                continue;
            }
            *err = errno;
            return -1;
        }
        size_t n = (size_t)w;
        while (iovcnt > 0 && n >= iov->iov_len) {
            n -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= n;
        }
    }
    return 0;
}

ssize_t gs_net_recv(int fd, char *buf, size_t space, int64_t deadline,
                    int *err)
{
    int w = gs_net_wait_fd(fd, POLLIN, deadline);
    if (w <= 0) {
        *err = w == 0 ? ETIMEDOUT : errno;
        return -1;
    }
    ssize_t r = recv(fd, buf, space, MSG_DONTWAIT);
    if (r == 0) {
        *err = ECONNRESET;
        return -1;
    }
    if (r < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        *err = errno;
        return -1;
    }
    return r;
}

int gs_net_peer_gone(int e)
{
    return e == EPIPE || e == ECONNRESET || e == ENOTCONN;
}
