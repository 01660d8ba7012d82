/*
 * gman_net.h — sockets with deadlines (gman_net.c).  Private to the library.
 *
 * Every socket is non-blocking; every wait is a poll() against one absolute
 * deadline (ms, gs_now_ms() clock); sends never raise SIGPIPE.
 */
#ifndef GMAN_NET_H
#define GMAN_NET_H

#include "gearsync_udf.h"

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Wait for events on fd until deadline_ms. 1 ready, 0 timeout, -1 error. */
int gs_net_wait_fd(int fd, short events, int64_t deadline_ms);

/* Resolve a server (getaddrinfo, numeric port) into *addr / *addrlen.
 * 0 ok; -1 with a message in err (none when the address does not fit). */
int gs_net_resolve(const struct gs_server *srv, struct sockaddr_storage *addr,
                   socklen_t *addrlen, char *err, size_t errlen);

/* A non-blocking TCP connection (TCP_NODELAY, SO_SNDTIMEO/SO_RCVTIMEO of
 * timeout_ms) to addr, connected before deadline.  The fd; or -1 (socket or
 * setsockopt failed), -2 (connect failed: resolve again), with *what the
 * step and *err its errno. */
int gs_net_connect(const struct sockaddr_storage *addr, socklen_t addrlen,
                   unsigned timeout_ms, int64_t deadline, const char **what,
                   int *err);

/* A cached connection the peer has closed reads as EOF / error, or has bytes
 * we did not ask for.  1 stale; one non-blocking peek, no wait. */
int gs_net_looks_stale(int fd);

/* Send all of iov (advanced in place) before deadline.  0 ok; -1 with *err
 * (ETIMEDOUT, EPIPE, …). */
int gs_net_send_all(int fd, struct iovec *iov, int iovcnt, int64_t deadline,
                    int *err);

/* Wait until fd is readable (before deadline) and read what is there into
 * buf[0..space).  >0 bytes read; 0 nothing yet (EINTR/EAGAIN: call again);
 * -1 with *err (ECONNRESET for EOF, ETIMEDOUT, …). */
ssize_t gs_net_recv(int fd, char *buf, size_t space, int64_t deadline,
                    int *err);

/* e means the peer closed the connection. */
int gs_net_peer_gone(int e);

#endif
