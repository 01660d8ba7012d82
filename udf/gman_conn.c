/*
 * gman_conn.c — one cached gearmand connection per mysqld thread: the
 * per-thread state and its registry, submits with failover and back-off,
 * the pipeline of background jobs (coalescing, acknowledgements, resending
 * on a new connection, mirrored into a journal slot file), the hand-off of
 * ended threads' jobs to the keeper and the spill file at unload.  Packets are encoded and parsed by
 * gman_proto.c, sockets opened, written and read with deadlines by
 * gman_net.c.
 *
 * Why not libgearman: inside mysqld every call must be bounded by a deadline
 * we choose, must never raise SIGPIPE, and must cost one write and one read
 * on the common path.  libgearman's client has its own timeout model (per
 * operation, not per call), its own connection/universe lifetime and extra
 * runtime dependencies loaded into mysqld.  A client only needs SUBMIT_JOB*
 * out and five response packets in, so we write them ourselves: a
 * non-blocking socket, poll() with one absolute deadline per call, send()
 * with MSG_NOSIGNAL, and a reader that caps every packet size.
 */
#define _GNU_SOURCE
#include "gman_journal.h"
#include "gman_net.h"
#include "gman_proto.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RBUF_KEEP 4096u /* read buffer kept between calls */

/* Outcome of one attempt on one server. */
enum attempt_rc {
    A_OK = 0,
    A_STALE,       /* reused connection was closed by the peer: reconnect */
    A_SERVER_FAIL, /* connect/IO/timeout/garbage: mark dead, fail over */
    A_SERVER_ERR,  /* gearmand answered ERROR: try the next server */
    A_JOB_FAIL,    /* job accepted, then failed/timed out: give up */
};

/* Per mysqld thread.  Its owner (the mysqld thread) and the keeper thread
 * (gman_keeper.c) both use it, each only while holding `lock`.  Lock order:
 * lock, then g_threads_lock; the keeper, holding g_threads_lock, only ever
 * trylocks `lock`.  A struct is freed only after it is unlinked from the
 * registry under both locks, so the keeper never sees a freed one. */
struct gs_thread {
    struct gs_thread *prev, *next; /* registry, under g_threads_lock */
    pthread_mutex_t lock;
    int64_t last_use_ms; /* end of the owner's last call */
    unsigned keeper_tick; /* last keeper pass that visited it */
    int orphan;          /* its mysqld thread ended; the keeper owns it */
    int from_spill;      /* its jobs were read from the spill file */
    int64_t progress_ms; /* last JOB_CREATED, or first outstanding job */
    int64_t unsent_since_us; /* when [pend_sent, pend.len) became non-empty */
    uint64_t version;              /* of cfg */
    struct gs_config cfg;
    struct sockaddr_storage addr[GS_MAX_SERVERS];
    socklen_t addrlen[GS_MAX_SERVERS]; /* 0 = not resolved yet */
    int fd;                            /* cached connection or -1 */
    unsigned server;                   /* index fd is connected to */
    int reused;                        /* fd already completed a request */
    int verified; /* fd has answered with a JOB_CREATED: it is a gearmand */
    unsigned char seed[12];            /* random per thread: unique ids */
    uint64_t counter;
    char *rbuf;
    size_t rlen, rcap;
    int last_errno; /* of the last I/O failure in pump() */
    /* Pipelined background jobs (pipeline=1): request packets written (or
     * to be written) but not yet acknowledged by JOB_CREATED, oldest first.
     * gearmand answers a connection's requests in order, so each
     * JOB_CREATED acknowledges the oldest one.  On a new connection all of
     * them are sent again (same unique ids: gearmand merges a job that is
     * still queued), so nothing a caller was told "submitted" is dropped
     * because a connection broke. */
    struct gs_buf pend;
    size_t pend_head; /* offset of the oldest unacknowledged packet */
    size_t pend_sent; /* [pend_head, pend_sent) written on the current fd */
    size_t pend_n;    /* packets in [pend_head, pend.len) */
    /* The same packets in a journal slot file (gman_journal.c; NULL: in
     * memory only), at the same offsets; [.., jr_len) copied there. */
    struct gs_jslot *jr;
    size_t jr_len;
    int64_t lost_logged_ms;
    char err[320];
};

static pthread_key_t g_key;
static int g_key_ok;
static pthread_mutex_t g_threads_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gs_thread *g_threads; /* guarded by g_threads_lock */
static size_t g_orphan_bytes;       /* guarded by g_threads_lock */

/* ------------------------------------------------------------ threads */

static void close_fd(struct gs_thread *t)
{
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    t->reused = 0;
    t->rlen = 0;
}

static int pipeline_run(struct gs_thread *t, int64_t deadline,
                        size_t max_jobs, size_t max_bytes, int reap);
static void refresh_config(struct gs_thread *t);

/* Deliver what is still unacknowledged, bounded by timeout_ms. */
static void flush_now(struct gs_thread *t)
{
    if (t->pend_n == 0)
        return;
    refresh_config(t); /* e.g. jobs read from the spill file */
    if (t->cfg.n)
        (void)pipeline_run(t, gs_now_ms() + t->cfg.timeout_ms, 0, 0, 1);
}

/* A thread's state goes away without the keeper (it cannot run, or holds
 * GS_ORPHAN_MAX bytes already): deliver within timeout_ms, and say in the
 * error log what could not be. */
static void flush_before_free(struct gs_thread *t)
{
    flush_now(t);
    if (t->pend_n)
        fprintf(stderr,
                "gearsync_udf: %zu background job(s) %s: not acknowledged "
                "by any job server when their mysqld thread ended (%s)\n",
                t->pend_n,
                t->jr ? "left in the journal for the next load" : "lost",
                t->err);
}

static void unlink_locked(struct gs_thread *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        g_threads = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

/* Caller holds t->lock and has unlinked t.  Jobs still held stay in its
 * journal slot file for the next load. */
static void destroy(struct gs_thread *t)
{
    gs_journal_release(t->jr, t->pend_n != 0);
    close_fd(t);
    free(t->rbuf);
    gs_buf_free(&t->pend);
    pthread_mutex_unlock(&t->lock);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static size_t pend_bytes(const struct gs_thread *t)
{
    return t->pend.len - t->pend_head;
}

/* The mysqld thread ends (pthread key destructor).  Jobs it pipelined that
 * no job server has acknowledged yet go to the keeper, which delivers them
 * when a server takes them; only when the keeper cannot run or holds
 * GS_ORPHAN_MAX bytes already are they flushed here, within timeout_ms. */
static void thread_free(void *p)
{
    struct gs_thread *t = p;
    if (!t)
        return;
    pthread_mutex_lock(&t->lock);
    if (t->pend_n && t->cfg.n) {
        if (!gs_keeper_running())
            gs_keeper_notify(0); /* starts it */
        int adopt = 0;
        pthread_mutex_lock(&g_threads_lock);
        if (gs_keeper_running() &&
            g_orphan_bytes + pend_bytes(t) <= GS_ORPHAN_MAX) {
            g_orphan_bytes += pend_bytes(t);
            t->orphan = 1;
            adopt = 1;
        }
        pthread_mutex_unlock(&g_threads_lock);
        if (adopt) {
            t->last_use_ms = 0;
            pthread_mutex_unlock(&t->lock);
            gs_keeper_notify(0);
            return;
        }
    }
    flush_before_free(t);
    pthread_mutex_lock(&g_threads_lock);
    unlink_locked(t);
    pthread_mutex_unlock(&g_threads_lock);
    destroy(t);
}

static void seed_thread(struct gs_thread *t);

/* Jobs a previous load left (the spill file, a journal slot) become an
 * orphan the keeper delivers: packets data[head, len), `jobs` of them. */
static void adopt_orphan(char *data, size_t head, size_t len, size_t jobs,
                         struct gs_jslot *jr, int from_spill)
{
    struct gs_thread *t = calloc(1, sizeof *t);
    if (!t || pthread_mutex_init(&t->lock, NULL) != 0) {
        fprintf(stderr, "gearsync_udf: out of memory reading %zu left-over "
                        "job(s); they stay for the next load\n", jobs);
        gs_journal_release(jr, 1);
        free(t);
        free(data);
        return;
    }
    t->fd = -1;
    t->version = (uint64_t)-1;
    t->pend.p = data;
    t->pend.len = t->pend.cap = len;
    t->pend.max = len > GS_PEND_MAX ? len : GS_PEND_MAX;
    t->pend_head = t->pend_sent = head;
    t->pend_n = jobs;
    t->jr = jr;
    t->jr_len = len;
    t->orphan = 1;
    t->from_spill = from_spill;
    seed_thread(t);
    pthread_mutex_lock(&g_threads_lock);
    t->next = g_threads;
    if (g_threads)
        g_threads->prev = t;
    g_threads = t;
    g_orphan_bytes += len - head;
    pthread_mutex_unlock(&g_threads_lock);
    gs_keeper_notify(0);
}

static void adopt_journal(char *data, size_t head, size_t end, size_t jobs,
                          struct gs_jslot *slot)
{
    adopt_orphan(data, head, end, jobs, slot, 0);
}

/* The last unload's spill file (gman_spill.c); it goes once its jobs are
 * all acknowledged. */
static void adopt_spill_file(void)
{
    size_t len, jobs;
    char *p = gs_spill_load(&len, &jobs);
    if (p)
        adopt_orphan(p, 0, len, jobs, NULL, 1);
}

__attribute__((constructor)) static void conn_init(void)
{
    g_key_ok = pthread_key_create(&g_key, thread_free) == 0;
    adopt_spill_file();
    gs_journal_recover(adopt_journal); /* slots of a killed process */
}

/* On dlclose (DROP FUNCTION of the last UDF): the key's destructor would
 * point into unmapped code, so delete the key first, then close every
 * thread's connection ourselves. */
__attribute__((destructor)) static void conn_fini(void)
{
    gs_keeper_stop(); /* joined: no one else touches the registry now */
    if (g_key_ok)
        pthread_key_delete(g_key);
    g_key_ok = 0;
    pthread_mutex_lock(&g_threads_lock);
    struct gs_thread *t = g_threads;
    g_threads = NULL;
    g_orphan_bytes = 0;
    pthread_mutex_unlock(&g_threads_lock);
    /* Last chance to deliver; what no server takes goes to the spill file,
     * read back at the next load. */
    size_t nparts = 0, jobs = 0;
    int had_spill = 0;
    for (struct gs_thread *u = t; u; u = u->next) {
        pthread_mutex_lock(&u->lock);
        had_spill |= u->from_spill;
        flush_now(u);
        if (u->pend_n) {
            nparts++;
            jobs += u->pend_n;
        }
    }
    struct gs_spill_part *parts =
        nparts ? calloc(nparts, sizeof *parts) : NULL;
    size_t k = 0;
    for (struct gs_thread *u = t; u && parts; u = u->next) {
        if (u->pend_n) {
            parts[k].p = u->pend.p + u->pend_head;
            parts[k].len = pend_bytes(u);
            k++;
        }
    }
    if (nparts && parts && gs_spill_save(parts, nparts, jobs) == 0) {
        for (struct gs_thread *u = t; u; u = u->next) {
            gs_journal_release(u->jr, 0); /* the spill file has them */
            u->jr = NULL;
        }
    } else if (nparts && !parts)
        fprintf(stderr, "gearsync_udf: %zu background job(s) lost at unload: "
                        "out of memory\n", jobs);
    else if (had_spill)
        gs_spill_remove();
    free(parts);
    while (t) {
        struct gs_thread *next = t->next;
        destroy(t); /* unlocks */
        t = next;
    }
    gs_journal_drain_pool();
}

static void seed_thread(struct gs_thread *t)
{
    ssize_t r = getrandom(t->seed, sizeof t->seed, GRND_NONBLOCK);
    if (r != (ssize_t)sizeof t->seed) {
        /* entropy pool not ready (early boot): still unique enough across
         * threads/processes/restarts — mix address, pid, time */
        uint64_t a = (uint64_t)(uintptr_t)t ^ ((uint64_t)getpid() << 32);
        uint64_t b = (uint64_t)gs_now_us() * 0x9E3779B97F4A7C15ull;
        memcpy(t->seed, &a, 8);
        memcpy(t->seed + 8, &b, 4);
    }
}

static struct gs_thread *thread_get(void)
{
    struct gs_thread *t;
    if (!g_key_ok)
        return NULL;
    t = pthread_getspecific(g_key);
    if (t)
        return t;
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        free(t);
        return NULL;
    }
    t->fd = -1;
    t->version = (uint64_t)-1;
    t->pend.max = GS_PEND_MAX;
    seed_thread(t);
    if (pthread_setspecific(g_key, t) != 0) {
        pthread_mutex_destroy(&t->lock);
        free(t);
        return NULL;
    }
    pthread_mutex_lock(&g_threads_lock);
    t->next = g_threads;
    if (g_threads)
        g_threads->prev = t;
    g_threads = t;
    pthread_mutex_unlock(&g_threads_lock);
    return t;
}

/* The calling mysqld thread's state, locked; NULL when out of memory. */
static struct gs_thread *thread_lock(void)
{
    struct gs_thread *t = thread_get();
    if (t)
        pthread_mutex_lock(&t->lock);
    return t;
}

/* End of a call: jobs left unacknowledged are the keeper's to watch. */
static void thread_unlock(struct gs_thread *t)
{
    int pending = t->pend_n != 0;
    int unsent = t->pend_sent < t->pend.len;
    t->last_use_ms = gs_now_ms();
    pthread_mutex_unlock(&t->lock);
    if (pending)
        gs_keeper_notify(unsent);
}

size_t gs_last_error_copy(char *buf, size_t size)
{
    if (size == 0)
        return 0;
    struct gs_thread *t = thread_lock();
    int n = snprintf(buf, size, "%s", t ? t->err : "gearsync_udf: out of memory");
    if (t)
        thread_unlock(t);
    if (n < 0)
        return 0;
    return (size_t)n < size ? (size_t)n : size - 1;
}

void gs_set_last_error(const char *msg)
{
    struct gs_thread *t = thread_lock();
    if (t) {
        snprintf(t->err, sizeof t->err, "%s", msg ? msg : "");
        thread_unlock(t);
    }
}

void gs_thread_disconnect(void)
{
    struct gs_thread *t = thread_lock();
    if (t) {
        close_fd(t);
        thread_unlock(t);
    }
}

static void refresh_config(struct gs_thread *t)
{
    if (gs_config_version() == t->version)
        return;
    close_fd(t);
    t->version = gs_config_snapshot(&t->cfg);
    memset(t->addrlen, 0, sizeof t->addrlen);
    if (!t->cfg.journal && t->jr) { /* journal=0: memory only from now on */
        gs_journal_release(t->jr, 0);
        t->jr = NULL;
    }
}

/* ------------------------------------------------------------ errors */

static void set_err(struct gs_thread *t, unsigned idx, const char *what,
                    int e)
{
    char ebuf[128];
    const char *msg = "";
    if (e)
        msg = strerror_r(e, ebuf, sizeof ebuf); /* GNU variant */
    if (idx < t->cfg.n)
        snprintf(t->err, sizeof t->err, "%s:%u: %s%s%s",
                 t->cfg.servers[idx].host, (unsigned)t->cfg.servers[idx].port,
                 what, e ? ": " : "", msg);
    else
        snprintf(t->err, sizeof t->err, "%s%s%s", what, e ? ": " : "", msg);
}

static void err_all_backing_off(struct gs_thread *t)
{
    char list[200];
    gs_format_servers(&t->cfg, list, sizeof list);
    snprintf(t->err, sizeof t->err,
             "every job server failed in the last retry_ms=%u ms: %s",
             t->cfg.retry_ms, list);
}

/* ------------------------------------------------------------ I/O */

static int resolve(struct gs_thread *t, unsigned idx)
{
    if (t->addrlen[idx])
        return 0;
    return gs_net_resolve(&t->cfg.servers[idx], &t->addr[idx],
                          &t->addrlen[idx], t->err, sizeof t->err);
}

static int do_connect(struct gs_thread *t, unsigned idx, int64_t deadline)
{
    int fd, e;
    const char *what;
    if (resolve(t, idx) != 0)
        return -1;
    fd = gs_net_connect(&t->addr[idx], t->addrlen[idx], t->cfg.timeout_ms,
                        deadline, &what, &e);
    if (fd < 0) {
        if (fd == -2)
            t->addrlen[idx] = 0;
        set_err(t, idx, what, e);
        return -1;
    }
    t->fd = fd;
    t->server = idx;
    t->reused = 0;
    t->rlen = 0;
    t->pend_sent = t->pend_head; /* a new connection resends them all */
    t->progress_ms = gs_now_ms();
    t->verified = 0;
    return 0;
}

/* Drop the packet at the head of rbuf. */
static void consume(struct gs_thread *t, size_t n)
{
    if (n >= t->rlen) {
        t->rlen = 0;
        return;
    }
    memmove(t->rbuf, t->rbuf + n, t->rlen - n);
    t->rlen -= n;
}

/* Read one response packet into rbuf[0..HDR+size).
 * 0 ok; -1 with *err = errno-ish (ECONNRESET for EOF, ETIMEDOUT, EPROTO). */
static int read_packet(struct gs_thread *t, int64_t deadline, size_t max_size,
                       uint32_t *type, uint32_t *size, int *err)
{
    for (;;) {
        size_t need;
        enum gs_proto_rc pr = gs_proto_response(t->rbuf, t->rlen, max_size,
                                                type, size, &need);
        if (pr == GS_PKT_COMPLETE)
            return 0;
        if (pr == GS_PKT_BAD_MAGIC) {
            *err = EPROTO;
            return -1;
        }
        if (pr == GS_PKT_TOO_BIG) {
            *err = EMSGSIZE;
            return -1;
        }
        if (need < RBUF_KEEP)
            need = RBUF_KEEP;
        if (t->rcap < need) {
            char *p = realloc(t->rbuf, need);
            if (!p) {
                *err = ENOMEM;
                return -1;
            }
            t->rbuf = p;
            t->rcap = need;
        }
        ssize_t r = gs_net_recv(t->fd, t->rbuf + t->rlen, t->rcap - t->rlen,
                                deadline, err);
        if (r < 0)
            return -1;
        t->rlen += (size_t)r;
    }
}

struct job {
    int background;
    enum gs_priority prio;
    const char *fn, *unique, *wl;
    size_t fnlen, uqlen, wllen;
    char *handle; /* background: out */
    size_t handle_size;
    struct gs_buf *out; /* foreground: out */
    int64_t result_deadline;
};

/* One attempt on the connected t->fd. */
static enum attempt_rc attempt(struct gs_thread *t, struct job *j,
                               int64_t submit_deadline)
{
    char head[HDR + GS_MAX_FUNCTION + 1 + GS_MAX_UNIQUE + 1];
    unsigned idx = t->server;
    int e = 0;
    int reused = t->reused;
    uint32_t type, size;

    if (reused && (t->rlen || gs_net_looks_stale(t->fd)))
        return A_STALE; /* closed by the peer, or bytes nobody asked for */

    /* caller capped: the head always fits */
    size_t hl = gs_proto_submit_head(
        head, sizeof head, gs_proto_request_type(j->background, j->prio),
        j->fn, j->fnlen, j->unique, j->uqlen, j->wllen);
    struct iovec iov[2] = {
        {.iov_base = head, .iov_len = hl},
        {.iov_base = (void *)j->wl, .iov_len = j->wllen},
    };
    if (gs_net_send_all(t->fd, iov, j->wllen ? 2 : 1, submit_deadline,
                        &e) != 0) {
        set_err(t, idx, "send", e);
        return reused && gs_net_peer_gone(e) ? A_STALE : A_SERVER_FAIL;
    }
    if (read_packet(t, submit_deadline, GS_MAX_SMALL_PACKET, &type, &size,
                    &e) != 0) {
        set_err(t, idx,
                e == ETIMEDOUT ? "no JOB_CREATED before the deadline"
                               : "reading JOB_CREATED",
                e == ETIMEDOUT ? 0 : e);
        return reused && t->rlen == 0 && gs_net_peer_gone(e) ? A_STALE
                                                          : A_SERVER_FAIL;
    }
    if (type == PKT_ERROR) {
        /* ERROR: code\0text — report it; the connection stays in sync */
        char msg[200];
        gs_proto_error_text(t->rbuf + HDR, size, msg, sizeof msg);
        consume(t, HDR + size);
        snprintf(t->err, sizeof t->err, "%s:%u: gearmand ERROR %s",
                 t->cfg.servers[idx].host, (unsigned)t->cfg.servers[idx].port,
                 msg);
        t->reused = 1;
        return A_SERVER_ERR;
    }
    if (type != PKT_JOB_CREATED || size == 0) {
        snprintf(t->err, sizeof t->err,
                 "%s:%u: unexpected packet type %u instead of JOB_CREATED",
                 t->cfg.servers[idx].host, (unsigned)t->cfg.servers[idx].port,
                 (unsigned)type);
        return A_SERVER_FAIL;
    }
    /* the handle; gearmand's are ~20 bytes, GEARMAN_JOB_HANDLE_SIZE is 64 */
    char handle[256];
    size_t hlen = size;
    if (gs_proto_job_handle(t->rbuf + HDR, size, handle, sizeof handle) != 0) {
        snprintf(t->err, sizeof t->err, "%s:%u: malformed job handle",
                 t->cfg.servers[idx].host, (unsigned)t->cfg.servers[idx].port);
        return A_SERVER_FAIL;
    }
    consume(t, HDR + size);
    t->reused = 1;

    if (j->background) {
        if (hlen >= j->handle_size)
            hlen = j->handle_size - 1;
        memcpy(j->handle, handle, hlen);
        j->handle[hlen] = '\0';
        return A_OK;
    }

    /* Foreground: wait for the worker until the (longer) result deadline. */
    for (;;) {
        if (read_packet(t, j->result_deadline, t->cfg.max_payload + hlen + 1,
                        &type, &size, &e) != 0) {
            set_err(t, idx,
                    e == ETIMEDOUT ? "no result before do_timeout_ms"
                    : e == EMSGSIZE ? "result larger than max_payload"
                                    : "reading result",
                    (e == ETIMEDOUT || e == EMSGSIZE) ? 0 : e);
            close_fd(t); /* a late answer would desync the connection */
            return A_JOB_FAIL;
        }
        const char *data = t->rbuf + HDR;
        size_t dlen;
        int ours = gs_proto_work_ours(data, size, handle, hlen, &dlen);
        switch (type) {
        case PKT_WORK_DATA:
        case PKT_WORK_COMPLETE:
            if (!ours) {
                snprintf(t->err, sizeof t->err, "foreign job handle");
                close_fd(t);
                return A_JOB_FAIL;
            }
            if (dlen && gs_buf_reserve(j->out, dlen) != 0) {
                snprintf(t->err, sizeof t->err,
                         "result larger than max_payload or out of memory");
                close_fd(t);
                return A_JOB_FAIL;
            }
            if (dlen)
                memcpy(j->out->p + j->out->len, data + hlen + 1, dlen);
            j->out->len += dlen;
            consume(t, HDR + size);
            if (type == PKT_WORK_COMPLETE)
                return A_OK;
            break;
        case PKT_WORK_FAIL:
        case PKT_WORK_EXCEPTION:
            consume(t, HDR + size);
            snprintf(t->err, sizeof t->err, "job %s: %s", handle,
                     type == PKT_WORK_FAIL ? "WORK_FAIL" : "WORK_EXCEPTION");
            if (!ours)
                close_fd(t);
            return A_JOB_FAIL;
        case PKT_ERROR:
            consume(t, HDR + size);
            snprintf(t->err, sizeof t->err, "job %s: gearmand ERROR", handle);
            close_fd(t);
            return A_JOB_FAIL;
        default: /* WORK_STATUS, WORK_WARNING, anything new: not ours to use */
            consume(t, HDR + size);
            break;
        }
    }
}

/* ------------------------------------------------------------ journal */

/* Store pend's window [pend_head, pend.len) in the slot file's word. */
static void jr_mark(struct gs_thread *t)
{
    if (!t->jr)
        return;
    if (t->jr_len > t->pend.len)
        t->jr_len = t->pend.len;
    gs_journal_mark(t->jr, t->pend_head, t->pend.len);
}

/* Copy pend's bytes not yet in the slot file there, then store the window
 * (a slot is taken on the first job; journal=0: none). */
static void jr_sync(struct gs_thread *t)
{
    if (!t->jr) {
        if (!t->cfg.journal || !(t->jr = gs_journal_open()))
            return;
        t->jr_len = 0;
    }
    if (t->jr_len > t->pend.len)
        t->jr_len = t->pend.len;
    size_t from = t->jr_len < t->pend_head ? t->pend_head : t->jr_len;
    if (t->pend.len > from &&
        gs_journal_put(t->jr, from, t->pend.p + from, t->pend.len - from) != 0) {
        gs_journal_release(t->jr, 0); /* memory only (logged) */
        t->jr = NULL;
        return;
    }
    t->jr_len = t->pend.len;
    jr_mark(t);
}

/* ------------------------------------------------------------ pipeline */

static void pend_pop(struct gs_thread *t)
{
    size_t size = HDR + (size_t)gs_proto_be32(t->pend.p + t->pend_head + 8);
    t->pend_head += size;
    t->pend_n--;
    if (t->pend_head >= t->pend.len) {
        t->pend.len = t->pend_head = t->pend_sent = 0;
        t->pend_n = 0;
        if (t->pend.cap > 4 * GS_WINDOW_BYTES) /* don't keep a big one */
            gs_buf_free(&t->pend);
    }
    jr_mark(t);
}

static void pend_compact(struct gs_thread *t)
{
    if (t->pend_head < 65536 || t->pend_head * 2 < t->pend.len)
        return;
    memmove(t->pend.p, t->pend.p + t->pend_head, t->pend.len - t->pend_head);
    t->pend.len -= t->pend_head;
    t->pend_sent -= t->pend_head;
    t->pend_head = 0;
    if (t->jr) {
        /* the moved bytes did not overlap the old window, which the
         * file's word still names until this copy is complete */
        t->jr_len = 0;
        jr_sync(t);
    }
}

static void log_lost(struct gs_thread *t, const char *why)
{
    int64_t now = gs_now_ms();
    if (now - t->lost_logged_ms < 1000)
        return; /* one line a second per thread at most */
    t->lost_logged_ms = now;
    fprintf(stderr, "gearsync_udf: a background job was refused: %s\n", why);
}

/* Handle complete acknowledgements in rbuf.  0 ok, -1 protocol error. */
static int parse_acks(struct gs_thread *t)
{
    while (t->rlen >= HDR) {
        uint32_t type, size;
        size_t need;
        enum gs_proto_rc pr = gs_proto_response(
            t->rbuf, t->rlen, GS_MAX_SMALL_PACKET, &type, &size, &need);
        if (pr == GS_PKT_BAD_MAGIC || pr == GS_PKT_TOO_BIG) {
            set_err(t, t->server, "garbage instead of JOB_CREATED", 0);
            return -1;
        }
        if (pr == GS_PKT_MORE) {
            if (t->rcap < need) {
                char *p = realloc(t->rbuf, need);
                if (!p) {
                    set_err(t, t->server, "out of memory", 0);
                    return -1;
                }
                t->rbuf = p;
                t->rcap = need;
            }
            return 0;
        }
        if (t->pend_n == 0 || t->pend_head >= t->pend_sent) {
            set_err(t, t->server, "answer to a request never sent", 0);
            return -1;
        }
        if (type == PKT_JOB_CREATED) {
            pend_pop(t);
            t->verified = 1;
            t->progress_ms = gs_now_ms();
        } else if (type == PKT_ERROR) {
            /* refused (e.g. out of memory): resending won't help */
            char msg[160];
            gs_proto_error_text(t->rbuf + HDR, size, msg, sizeof msg);
            pend_pop(t);
            snprintf(t->err, sizeof t->err, "gearmand ERROR %s", msg);
            log_lost(t, t->err);
        } else {
            set_err(t, t->server, "unexpected packet instead of JOB_CREATED",
                    0);
            return -1;
        }
        consume(t, HDR + size);
    }
    return 0;
}

/* Move the pipeline on t->fd: read acknowledgements, write unsent bytes.
 * Waits (until deadline) only while unsent bytes remain or more than
 * max_jobs / max_bytes are unacknowledged.  0 ok, 1 deadline passed,
 * -1 connection failed (t->last_errno, t->err set). */
static int pump(struct gs_thread *t, int64_t deadline, size_t max_jobs,
                size_t max_bytes, int reap)
{
    for (int round = 0;; round++) {
        /* Read acknowledgements only once a batch of them is due (or we
         * must wait anyway): one recv() per GS_REAP_BATCH calls instead of
         * one per call.  A gearmand that went away meanwhile still shows:
         * writing to its closed connection fails on the next send(). */
        if (round > 0 || reap || t->pend_n > max_jobs ||
            t->pend_n >= GS_REAP_BATCH ||
            t->pend.len - t->pend_head > max_bytes) {
            for (;;) {
                if (t->rcap - t->rlen < 512) {
                    size_t cap = t->rcap < RBUF_KEEP ? RBUF_KEEP : t->rcap * 2;
                    char *p = realloc(t->rbuf, cap);
                    if (!p) {
                        t->last_errno = ENOMEM;
                        set_err(t, t->server, "out of memory", 0);
                        return -1;
                    }
                    t->rbuf = p;
                    t->rcap = cap;
                }
                size_t space = t->rcap - t->rlen;
                ssize_t r = recv(t->fd, t->rbuf + t->rlen, space, MSG_DONTWAIT);
                if (r > 0) {
                    t->rlen += (size_t)r;
                    if (parse_acks(t) != 0) {
                        t->last_errno = EPROTO;
                        return -1;
                    }
                    if ((size_t)r < space)
                        break; /* short read: nothing more queued */
                    continue;
                }
                if (r == 0) {
                    t->last_errno = ECONNRESET;
                    set_err(t, t->server, "connection closed by gearmand", 0);
                    return -1;
                }
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                t->last_errno = errno;
                set_err(t, t->server, "recv", errno);
                return -1;
            }
        }
        while (t->pend_sent < t->pend.len) {
            ssize_t w = send(t->fd, t->pend.p + t->pend_sent,
                             t->pend.len - t->pend_sent,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                t->pend_sent += (size_t)w;
                continue;
            }
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            t->last_errno = w < 0 ? errno : EPIPE;
            set_err(t, t->server, "send", t->last_errno);
            return -1;
        }
        int unsent = t->pend_sent < t->pend.len;
        /* Pipeline only on a connection that has proved to be a gearmand:
         * until its first JOB_CREATED, wait.  Something that accepts
         * connections and never answers (wrong port, a proxy, a hung
         * server) then fails the first row, not row 1024.  Only the first
         * answer: a new connection that resends a backlog to a slow
         * (persistent-queue) gearmand must not time out on all of it. */
        if (!unsent && (t->verified || t->pend_n == 0) &&
            t->pend_n <= max_jobs && t->pend.len - t->pend_head <= max_bytes)
            return 0;
        int w = gs_net_wait_fd(t->fd, (short)(POLLIN | (unsent ? POLLOUT : 0)),
                        deadline);
        if (w == 0) {
            t->last_errno = ETIMEDOUT;
            set_err(t, t->server, "no JOB_CREATED before the deadline", 0);
            return 1;
        }
        if (w < 0) {
            t->last_errno = errno;
            set_err(t, t->server, "poll", errno);
            return -1;
        }
    }
}

/* First server, in list order, not yet tried in this call and not in its
 * back-off; *left = how many such servers there are. */
static unsigned pick_server(struct gs_thread *t, const unsigned char *tried,
                            unsigned *left)
{
    int64_t now = gs_now_ms();
    unsigned pick = GS_MAX_SERVERS;
    *left = 0;
    for (unsigned i = 0; i < t->cfg.n; i++) {
        if (tried[i] || !gs_server_usable(t->version, i, now))
            continue;
        if (pick == GS_MAX_SERVERS)
            pick = i;
        (*left)++;
    }
    return pick;
}

/* Connect (failing over in list order) and pump until at most max_jobs /
 * max_bytes are unacknowledged.  0 ok; -1 no server took them before the
 * deadline (fd closed; the jobs stay queued for the next connection). */
static int pipeline_run(struct gs_thread *t, int64_t deadline,
                        size_t max_jobs, size_t max_bytes, int reap)
{
    unsigned char tried[GS_MAX_SERVERS] = {0};
    int stale_retry_used = 0, have_err = 0;

    for (;;) {
        int64_t dl = deadline;
        if (t->fd < 0) {
            unsigned left;
            unsigned pick = pick_server(t, tried, &left);
            int64_t now = gs_now_ms();
            if (pick == GS_MAX_SERVERS || deadline - now <= 0) {
                if (!have_err) {
                    if (pick == GS_MAX_SERVERS)
                        err_all_backing_off(t);
                    else
                        snprintf(t->err, sizeof t->err, "timeout_ms used up");
                }
                return -1;
            }
            dl = now + (deadline - now + left - 1) / left;
            tried[pick] = 1;
            if (do_connect(t, pick, dl) != 0) {
                gs_server_failed(t->version, pick, gs_now_ms(), t->err);
                have_err = 1;
                continue;
            }
            gs_server_ok(t->version, pick);
        }
        unsigned idx = t->server;
        int was_reused = t->reused;
        int rc = pump(t, dl, max_jobs, max_bytes, reap);
        if (rc == 0) {
            t->reused = 1;
            return 0;
        }
        have_err = 1;
        close_fd(t); /* unacknowledged jobs stay in pend */
        if (rc < 0 && was_reused && gs_net_peer_gone(t->last_errno) &&
            !stale_retry_used) {
            /* gearmand restarted under our cached connection */
            stale_retry_used = 1;
            if (do_connect(t, idx, deadline) == 0)
                continue;
        }
        tried[idx] = 1;
        gs_server_failed(t->version, idx, gs_now_ms(), t->err);
    }
}

/* A pipelined job's result: its unique id stands for it (no handle yet). */
static int handle_is_unique(struct job *j)
{
    size_t n = j->uqlen < j->handle_size - 1 ? j->uqlen : j->handle_size - 1;
    memcpy(j->handle, j->unique, n);
    j->handle[n] = '\0';
    return 0;
}

static int submit_pipelined(struct gs_thread *t, struct job *j)
{
    size_t plen = HDR + j->fnlen + 1 + j->uqlen + 1 + j->wllen;
    int64_t deadline = gs_now_ms() + t->cfg.timeout_ms;

    pend_compact(t);
    if (gs_buf_reserve(&t->pend, plen) != 0) {
        snprintf(t->err, sizeof t->err,
                 "too many unacknowledged background jobs on this thread");
        return -1;
    }
    size_t mark = t->pend.len;
    char *p = t->pend.p + mark;
    p += gs_proto_submit_head(p, plen, gs_proto_request_type(1, j->prio),
                              j->fn, j->fnlen, j->unique, j->uqlen, j->wllen);
    if (j->wllen)
        memcpy(p, j->wl, j->wllen);
    int64_t now_us = gs_now_us();
    if (t->pend_sent == t->pend.len)
        t->unsent_since_us = now_us;
    t->pend.len += plen;
    if (t->pend_n++ == 0)
        t->progress_ms = now_us / 1000; /* the oldest outstanding job's age */
    jr_sync(t); /* in the slot file before the caller is told "submitted" */

    /* Coalesce: on a connection that works, a job may wait up to
     * GS_COALESCE_US (or until GS_COALESCE_BYTES are due) to go out together
     * with the next ones: one send() and one gearmand wake-up for several
     * jobs instead of one each.  The keeper sends what an idle thread left.
     * A connection still to be made or proved goes now. */
    if (t->cfg.coalesce_us && t->fd >= 0 && t->verified &&
        now_us - t->unsent_since_us < (int64_t)t->cfg.coalesce_us &&
        t->pend.len - t->pend_sent < GS_COALESCE_BYTES &&
        t->pend_n <= GS_WINDOW_JOBS &&
        t->pend.len - t->pend_head <= GS_WINDOW_BYTES) {
        return handle_is_unique(j);
    }

    if (pipeline_run(t, deadline, GS_WINDOW_JOBS, GS_WINDOW_BYTES, 0) != 0) {
        /* not confirmed to the caller, so not ours to deliver later: drop
         * this one; older confirmed ones stay queued for the next
         * connection.  (fd is closed, so nothing of it is half-sent.) */
        t->pend.len = mark;
        t->pend_n--;
        if (t->pend_sent > mark)
            t->pend_sent = mark;
        if (t->pend_n == 0)
            t->pend.len = t->pend_head = t->pend_sent = 0;
        jr_mark(t);
        return -1;
    }
    return handle_is_unique(j);
}

long long gs_flush(void)
{
    struct gs_thread *t = thread_lock();
    if (!t)
        return -1;
    t->err[0] = '\0';
    if (t->pend_n) {
        /* a config change doesn't drop queued jobs: they go to the new
         * servers */
        refresh_config(t);
        (void)pipeline_run(t, gs_now_ms() + t->cfg.do_timeout_ms, 0, 0, 1);
    }
    long long n = (long long)t->pend_n;
    thread_unlock(t);
    return n;
}

/* ------------------------------------------------------------ keeper */

static void keeper_service(struct gs_thread *t)
{
    char saved[sizeof t->err];
    memcpy(saved, t->err, sizeof saved); /* the owner's last error stays */
    size_t before = pend_bytes(t);
    refresh_config(t);
    int64_t now = gs_now_ms();
    if (t->fd >= 0 && t->cfg.n > 1 && t->pend_sent > t->pend_head &&
        now - t->progress_ms > GS_KEEPER_HUNG_MS) {
        /* sent, and not one answer for seconds: a hung server.  Another
         * one is configured: give the jobs to it. */
        set_err(t, t->server, "no JOB_CREATED for seconds", 0);
        gs_server_failed(t->version, t->server, now, t->err);
        close_fd(t);
    }
    if (t->cfg.n)
        /* read the answers that are there, (re)send; wait for nothing but
         * a new connection's first answer and socket space.  No caller
         * waits for an orphan: a persistent-queue gearmand busy with its
         * fsyncs (e.g. while mysqld starts) gets longer to answer before
         * it counts as failed for every thread. */
        (void)pipeline_run(t, now + (t->orphan ? GS_KEEPER_ORPHAN_WAIT_MS
                                               : (int64_t)t->cfg.timeout_ms),
                           (size_t)-1, (size_t)-1, 1);
    if (t->orphan) {
        size_t after = pend_bytes(t);
        pthread_mutex_lock(&g_threads_lock);
        g_orphan_bytes -= before - after;
        pthread_mutex_unlock(&g_threads_lock);
        int64_t later = gs_now_ms();
        if (t->pend_n && after == before && t->err[0] &&
            later - t->lost_logged_ms >= 60000) { /* stuck, not slow */
            t->lost_logged_ms = later;
            fprintf(stderr,
                    "gearsync_udf: %zu background job(s) of an ended mysqld "
                    "thread wait for a job server (%s)\n",
                    t->pend_n, t->err);
        }
    }
    memcpy(t->err, saved, sizeof saved);
}

int gs_conn_keeper_pass(unsigned tick, int *unsent)
{
    unsigned waiting = 0;
    *unsent = 0;
    for (;;) {
        struct gs_thread *pick = NULL;
        int64_t now_us = gs_now_us(), now = now_us / 1000;
        pthread_mutex_lock(&g_threads_lock);
        for (struct gs_thread *t = g_threads; t; t = t->next) {
            if (pthread_mutex_trylock(&t->lock) != 0) {
                waiting++; /* its owner is in a call: look again next tick */
                *unsent = 1; /* it may leave some */
                continue;
            }
            if (t->keeper_tick == tick || t->pend_n == 0) {
                pthread_mutex_unlock(&t->lock);
                continue;
            }
            t->keeper_tick = tick;
            int due = t->pend_sent < t->pend.len && t->fd >= 0 &&
                      now_us - t->unsent_since_us >=
                          (int64_t)t->cfg.coalesce_us;
            if (!due && !t->orphan && now - t->last_use_ms < GS_KEEPER_IDLE_MS) {
                waiting++; /* its owner will reap them on its next call */
                if (t->pend_sent < t->pend.len)
                    *unsent = 1; /* coalescing: due within coalesce_us */
                pthread_mutex_unlock(&t->lock);
                continue;
            }
            pick = t;
            break;
        }
        pthread_mutex_unlock(&g_threads_lock);
        if (!pick)
            return waiting != 0;
        keeper_service(pick); /* network I/O: no global lock held */
        if (pick->orphan && pick->pend_n == 0) {
            if (pick->from_spill)
                gs_spill_remove();
            pthread_mutex_lock(&g_threads_lock);
            unlink_locked(pick);
            pthread_mutex_unlock(&g_threads_lock);
            destroy(pick);
            continue;
        }
        if (pick->pend_n)
            waiting++;
        if (pick->pend_sent < pick->pend.len)
            *unsent = 1;
        pthread_mutex_unlock(&pick->lock);
    }
}

static int submit(struct gs_thread *t, struct job *j)
{
    t->err[0] = '\0';
    refresh_config(t);
    if (t->cfg.n == 0) {
        snprintf(t->err, sizeof t->err, "no job servers configured");
        return -1;
    }

    char uq[2 * sizeof t->seed + 16 + 1];
    if (j->uqlen == 0) {
        /* always send a unique id: persistent queues key on (unique,
         * function), jobs without one collapse after a gearmand restart.
         * 96 random bits per thread + a per-thread counter: unique across
         * threads, processes and restarts. */
        static const char hex[] = "0123456789abcdef";
        size_t k = 0;
        for (size_t i = 0; i < sizeof t->seed; i++) {
            uq[k++] = hex[t->seed[i] >> 4];
            uq[k++] = hex[t->seed[i] & 15];
        }
        uint64_t c = ++t->counter;
        for (int s = 60; s >= 0; s -= 4)
            uq[k++] = hex[(c >> s) & 15];
        uq[k] = '\0';
        j->unique = uq;
        j->uqlen = k;
    }

    if (j->background && t->cfg.pipeline)
        return submit_pipelined(t, j);

    int64_t start = gs_now_ms();
    int64_t submit_end = start + t->cfg.timeout_ms;
    if (t->pend_n) {
        /* answers to pipelined jobs must not mix with this job's: get them
         * acknowledged first (or leave them queued for a new connection) */
        (void)pipeline_run(t, submit_end, 0, 0, 1);
    }
    j->result_deadline = start + t->cfg.do_timeout_ms;
    if (!j->background && j->result_deadline < submit_end)
        submit_end = j->result_deadline;

    unsigned char tried[GS_MAX_SERVERS] = {0};
    int stale_retry_used = 0;
    int have_err = 0;

    for (;;) {
        if (t->fd < 0) {
            /* pick the first usable server in list order */
            int64_t now = gs_now_ms();
            unsigned left = 0, pick = GS_MAX_SERVERS;
            for (unsigned i = 0; i < t->cfg.n; i++) {
                if (tried[i] || !gs_server_usable(t->version, i, now))
                    continue;
                if (pick == GS_MAX_SERVERS)
                    pick = i;
                left++;
            }
            if (pick == GS_MAX_SERVERS) {
                if (!have_err)
                    err_all_backing_off(t);
                return -1;
            }
            int64_t remaining = submit_end - now;
            if (remaining <= 0) {
                if (!have_err)
                    snprintf(t->err, sizeof t->err,
                             "timeout_ms=%u used up", t->cfg.timeout_ms);
                return -1;
            }
            /* share what is left between the servers still to try */
            int64_t dl = now + (remaining + left - 1) / left;
            tried[pick] = 1;
            if (do_connect(t, pick, dl) != 0) {
                gs_server_failed(t->version, pick, gs_now_ms(), t->err);
                have_err = 1;
                continue;
            }
            gs_server_ok(t->version, pick);
            enum attempt_rc rc = attempt(t, j, dl);
            if (rc == A_OK)
                return 0;
            have_err = 1;
            if (rc == A_JOB_FAIL)
                return -1;
            close_fd(t); /* one connection per thread: to try the next one */
            if (rc != A_SERVER_ERR) /* ERROR: the server works, refused this job */
                gs_server_failed(t->version, pick, gs_now_ms(), t->err);
            continue;
        }

        /* cached connection */
        unsigned idx = t->server;
        int64_t now = gs_now_ms();
        if (submit_end - now <= 0) {
            if (!have_err)
                snprintf(t->err, sizeof t->err, "timeout_ms=%u used up",
                         t->cfg.timeout_ms);
            return -1;
        }
        enum attempt_rc rc = attempt(t, j, submit_end);
        if (rc == A_OK)
            return 0;
        have_err = 1;
        if (rc == A_JOB_FAIL)
            return -1;
        if (rc == A_SERVER_ERR) {
            tried[idx] = 1;
            close_fd(t); /* reconnect elsewhere; keep it simple */
            continue;
        }
        close_fd(t);
        if (rc == A_STALE && !stale_retry_used) {
            /* gearmand was restarted under us: reconnect once, same server */
            stale_retry_used = 1;
            if (do_connect(t, idx, submit_end) == 0)
                continue;
        }
        tried[idx] = 1;
        gs_server_failed(t->version, idx, gs_now_ms(), t->err);
    }
}

static int check_args(struct gs_thread *t, const char *fn, size_t fnlen,
                      const char *uq, size_t uqlen, size_t wllen)
{
    const char *why = NULL;
    if (t)
        refresh_config(t); /* max_payload below is the current one */
    if (!fn || fnlen == 0)
        why = "function name is empty";
    else if (fnlen > GS_MAX_FUNCTION)
        why = "function name longer than 512 bytes";
    else if (memchr(fn, '\0', fnlen))
        why = "function name contains a NUL byte";
    else if (uqlen > GS_MAX_UNIQUE)
        why = "unique id longer than 64 bytes";
    else if (uqlen && memchr(uq, '\0', uqlen))
        why = "unique id contains a NUL byte";
    else if (wllen > (t ? t->cfg.max_payload : GS_MAX_PAYLOAD))
        why = "workload larger than max_payload";
    if (why && t)
        snprintf(t->err, sizeof t->err, "%s", why);
    return why ? -1 : 0;
}

int gs_submit_background(enum gs_priority prio, const char *fn, size_t fnlen,
                         const char *unique, size_t uqlen, const char *wl,
                         size_t wllen, char *handle, size_t handle_size)
{
    struct gs_thread *t = thread_lock();
    if (!t)
        return -1;
    if (check_args(t, fn, fnlen, unique, uqlen, wllen) != 0 ||
        handle_size == 0) {
        thread_unlock(t);
        return -1;
    }
    struct job j = {.background = 1,
                    .prio = prio,
                    .fn = fn,
                    .fnlen = fnlen,
                    .unique = unique,
                    .uqlen = uqlen,
                    .wl = wl,
                    .wllen = wllen,
                    .handle = handle,
                    .handle_size = handle_size};
    int rc = submit(t, &j);
    thread_unlock(t);
    return rc;
}

int gs_submit_foreground(enum gs_priority prio, const char *fn, size_t fnlen,
                         const char *unique, size_t uqlen, const char *wl,
                         size_t wllen, struct gs_buf *out)
{
    struct gs_thread *t = thread_lock();
    if (!t)
        return -1;
    if (check_args(t, fn, fnlen, unique, uqlen, wllen) != 0) {
        thread_unlock(t);
        return -1;
    }
    struct job j = {.background = 0,
                    .prio = prio,
                    .fn = fn,
                    .fnlen = fnlen,
                    .unique = unique,
                    .uqlen = uqlen,
                    .wl = wl,
                    .wllen = wllen,
                    .out = out};
    int rc = submit(t, &j);
    if (t->rcap > 16 * RBUF_KEEP && t->rlen == 0) {
        /* don't keep a big result buffer per idle thread */
        free(t->rbuf);
        t->rbuf = NULL;
        t->rcap = 0;
    }
    thread_unlock(t);
    return rc;
}
