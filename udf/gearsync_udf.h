/*
 * gearsync_udf.h — shared declarations for the gearsync UDF library.
 *
 * The library runs inside mysqld.  Rules that every file follows:
 *   - never block without a deadline, never raise SIGPIPE, never abort();
 *   - no mutable global state except the configuration in gman_conf.c,
 *     which lives behind one mutex;
 *   - per-statement state in initid->ptr, per-thread state (one cached
 *     gearmand connection) behind a pthread key;
 *   - every buffer has a hard cap; size sums are checked for overflow.
 */
#ifndef GEARSYNC_UDF_H
#define GEARSYNC_UDF_H

#include <stddef.h>
#include <stdint.h>
#include <mysql.h>

#if defined(MYSQL_VERSION_ID) && MYSQL_VERSION_ID >= 80000 && !defined(MARIADB_BASE_VERSION)
typedef bool my_bool; /* Oracle MySQL 8 dropped the typedef */
#endif

/* Only the UDF entry points are exported: every other symbol stays local, so
 * nothing here can interpose on (or be interposed by) a mysqld symbol. */
#define GS_EXPORT __attribute__((visibility("default")))

#define GS_MAX_SERVERS 16
#define GS_MAX_HOST 255
#define GS_DEFAULT_HOST "127.0.0.1"
#define GS_DEFAULT_PORT 4730
#define GS_DEFAULT_TIMEOUT_MS 100u     /* whole background submit */
#define GS_DEFAULT_DO_TIMEOUT_MS 5000u /* whole foreground job */
#define GS_DEFAULT_RETRY_MS 1000u      /* skip a failed server this long */
#define GS_MAX_TIMEOUT_MS 3600000u

/* gearmand 1.1 limits: GEARMAN_FUNCTION_MAX_SIZE 512, GEARMAN_MAX_UNIQUE_SIZE 64. */
#define GS_MAX_FUNCTION 512u
#define GS_MAX_UNIQUE 64u
/* Cap on a workload we send and on a result we accumulate / build. */
#define GS_MAX_PAYLOAD (64ul << 20)
/* Largest response packet accepted while waiting for JOB_CREATED. */
#define GS_MAX_SMALL_PACKET (64ul << 10)
/* Pipelined background jobs: wait for acknowledgements beyond this many
 * unacknowledged jobs / bytes per thread; never keep more than
 * GS_PEND_MAX bytes of them for resending. */
#define GS_WINDOW_JOBS 1024u
#ifndef GS_REAP_BATCH
#define GS_REAP_BATCH 32u /* read acknowledgements once this many are due */
#endif
#define GS_WINDOW_BYTES (1ul << 20)
#define GS_PEND_MAX (GS_MAX_PAYLOAD + (4ul << 20))

#define GS_ENV_SERVERS "GEARSYNC_GEARMAN_SERVERS"
#define GS_CONF_NAME "gearsync_udf.conf"

/* ------------------------------------------------------------ config */

struct gs_server {
    char host[GS_MAX_HOST + 1]; /* name or address, without [] for IPv6 */
    uint16_t port;
};

struct gs_config {
    unsigned n;
    struct gs_server servers[GS_MAX_SERVERS];
    unsigned timeout_ms;    /* background submit, all attempts together */
    unsigned do_timeout_ms; /* foreground job, submit to WORK_COMPLETE */
    unsigned retry_ms;      /* back-off of a server after a failure */
    unsigned pipeline;      /* 1: background submits don't wait for
                               JOB_CREATED (acks reaped on later calls,
                               unacknowledged jobs resent on reconnect) */
};

/* Parse "host[:port][,host[:port]…]" into out->servers/out->n (other fields
 * untouched).  0 on success; -1 with a message naming the bad entry. */
int gs_parse_servers(const char *s, size_t len, struct gs_config *out,
                     char *err, size_t errlen);
/* Parse "key=value[,key=value…]": timeout_ms, do_timeout_ms, retry_ms,
 * pipeline. */
int gs_parse_options(const char *s, size_t len, struct gs_config *out,
                     char *err, size_t errlen);
/* Apply one "key=value" (conf file line or option). 1 = unknown key. */
int gs_apply_option(const char *key, size_t klen, const char *val,
                    size_t vlen, struct gs_config *out, int allow_servers,
                    char *err, size_t errlen);
/* "h1:p1,h2:p2"; returns the length written (truncated to size-1). */
size_t gs_format_servers(const struct gs_config *c, char *buf, size_t size);

uint64_t gs_config_version(void);                  /* lock-free read */
uint64_t gs_config_snapshot(struct gs_config *out); /* copy under lock */
uint64_t gs_config_replace(const struct gs_config *c);
void gs_config_current(struct gs_config *out);     /* = snapshot */
/* Re-read env + conf file (as at library load); for tests and ops. */
void gs_config_load_defaults(int log);

/* Back-off bookkeeping, process-wide, keyed by config version. */
int gs_server_usable(uint64_t version, unsigned idx, int64_t now_ms);
void gs_server_failed(uint64_t version, unsigned idx, int64_t now_ms,
                      const char *why);
void gs_server_ok(uint64_t version, unsigned idx);

int64_t gs_now_ms(void);
int64_t gs_now_us(void);

/* ------------------------------------------------------------ buffers */

struct gs_buf {
    char *p;
    size_t len, cap, max; /* max = hard cap for growth */
};
int gs_buf_reserve(struct gs_buf *b, size_t extra); /* 0 ok, -1 cap/ENOMEM */
void gs_buf_free(struct gs_buf *b);

/* ------------------------------------------------------------ gearman */

enum gs_priority { GS_PRIO_NORMAL = 0, GS_PRIO_HIGH = 1, GS_PRIO_LOW = 2 };

/* Background submit.  handle receives the job handle (pipeline=0) or the
 * job's unique id (pipeline=1), NUL terminated.  0 ok; -1 failure (reason in
 * gs_last_error()). */
int gs_submit_background(enum gs_priority prio, const char *fn, size_t fnlen,
                         const char *unique, size_t uqlen, const char *wl,
                         size_t wllen, char *handle, size_t handle_size);
/* Foreground job; the worker's data (WORK_DATA… + WORK_COMPLETE) is
 * appended to out.  0 ok; -1 failure/timeout/WORK_FAIL/WORK_EXCEPTION. */
int gs_submit_foreground(enum gs_priority prio, const char *fn, size_t fnlen,
                         const char *unique, size_t uqlen, const char *wl,
                         size_t wllen, struct gs_buf *out);
/* Wait until this thread's pipelined background jobs are acknowledged (up
 * to do_timeout_ms).  Returns how many are still unacknowledged. */
long long gs_flush(void);
/* Reason for this thread's last failure ("" after a success). */
const char *gs_last_error(void);
/* Record a failure reason for gman_last_error() on this thread. */
void gs_set_last_error(const char *msg);
/* Close this thread's cached connection (tests). */
void gs_thread_disconnect(void);

/* ------------------------------------------------------------ JSON */

int gs_json_valid(const char *s, size_t len);
int gs_utf8_valid(const char *s, size_t len);

#endif
