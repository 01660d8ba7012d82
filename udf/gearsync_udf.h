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
/* Cap on a workload we send and on a result we accumulate / build: the
 * option max_payload (bytes, GS_MIN_MAX_PAYLOAD..GS_MAX_PAYLOAD, default
 * GS_DEFAULT_MAX_PAYLOAD).  GS_MAX_PAYLOAD is MariaDB's largest
 * max_allowed_packet (1 GiB): no row can be larger.  Buffers grow to what a
 * call needs, never past the cap. */
#define GS_MAX_PAYLOAD (1ul << 30)
#define GS_DEFAULT_MAX_PAYLOAD (256ul << 20)
#define GS_MIN_MAX_PAYLOAD (64ul << 10)
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
#define GS_PEND_MAX (68ul << 20) /* a larger job is kept alone */
/* The keeper thread (gman_keeper.c) visits threads that hold pipelined jobs
 * and have made no call for GS_KEEPER_IDLE_MS: it reads their
 * acknowledgements and, after a broken connection, resends them.  It looks
 * every GS_KEEPER_TICK_MS while any such jobs exist and sleeps otherwise.
 * Jobs of a mysqld thread that ended are kept (up to GS_ORPHAN_MAX bytes
 * in all) until a job server takes them. */
#define GS_KEEPER_TICK_MS 10
/* Coalescing of pipelined sends (option coalesce_us, default below; 0 = send
 * every job at once): a job waits at most this long, or until this many
 * bytes are due, to share one send() with the next ones. */
#define GS_DEFAULT_COALESCE_US 1000u
#define GS_MAX_COALESCE_US 100000u
#define GS_COALESCE_BYTES (16u << 10)
#define GS_KEEPER_IDLE_MS 20
/* With more than one server configured, the keeper moves a thread's jobs
 * to the next server when its connection has not answered for this long. */
#define GS_KEEPER_HUNG_MS 3000
/* How long the keeper waits for a job server's first answer on behalf of an
 * ended thread (no caller waits for those). */
#define GS_KEEPER_ORPHAN_WAIT_MS 2000
#define GS_ORPHAN_MAX (256ul << 20)

#define GS_ENV_SERVERS "GEARSYNC_GEARMAN_SERVERS"
#define GS_CONF_NAME "gearsync_udf.conf"
/* Spill file for jobs unacknowledged at unload (gman_spill.c). */
#define GS_ENV_SPILL "GEARSYNC_UDF_SPILL"
#define GS_SPILL_NAME "gearsync_udf.pending"
#define GS_SPILL_MAX (1ul << 30)
/* Journal of unacknowledged pipelined jobs (gman_journal.c): slot files
 * GS_JOURNAL_NAME.<pid>.<n> beside the spill file, or in the directory
 * $GEARSYNC_UDF_JOURNAL. */
#define GS_ENV_JOURNAL "GEARSYNC_UDF_JOURNAL"
#define GS_JOURNAL_NAME "gearsync_udf.journal"

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
    unsigned coalesce_us;   /* pipelined jobs may wait this long to be sent
                               together (0: send each at once) */
    unsigned pipeline;      /* 1 (default): background submits don't wait
                               for JOB_CREATED (acks reaped on later calls
                               or by the keeper, unacknowledged jobs resent
                               on reconnect, spilled at unload); 0: wait */
    size_t max_payload;     /* largest workload sent / result built, bytes */
    unsigned journal;       /* 1 (default): unacknowledged pipelined jobs
                               also in a slot file mapping (gman_journal.c),
                               read back after a crash; 0: memory only */
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
/* Copy the reason for this thread's last failure ("" after a success)
 * into buf (NUL terminated, truncated); returns its length. */
size_t gs_last_error_copy(char *buf, size_t size);
/* Record a failure reason for gman_last_error() on this thread. */
void gs_set_last_error(const char *msg);
/* Close this thread's cached connection (tests). */
void gs_thread_disconnect(void);

/* One visit of the keeper thread (gman_conn.c): send what threads left
 * coalescing for coalesce_us, deliver the pipelined jobs of threads idle for
 * GS_KEEPER_IDLE_MS and of ended threads, once each per tick.  Returns 1
 * while any thread holds unacknowledged jobs (0: the keeper may sleep until
 * gs_keeper_notify()); *unsent = 1 when some wait to be sent (look again
 * within coalesce_us). */
int gs_conn_keeper_pass(unsigned tick, int *unsent);

/* ------------------------------------------------------------ keeper */

/* Start the keeper thread if needed and wake it if it sleeps (or, with
 * unsent = 1, if it does not look every GS_COALESCE_US already).  Cheap:
 * one atomic increment unless the keeper must be woken. */
void gs_keeper_notify(int unsent);
/* 1 if the keeper runs (ended threads' jobs can be handed to it). */
int gs_keeper_running(void);
/* Stop and join the keeper (library unload); idempotent. */
void gs_keeper_stop(void);

/* ------------------------------------------------------------ spill */

struct gs_spill_part {
    const char *p;
    size_t len;
};
/* The spill file's path ($GEARSYNC_UDF_SPILL or GS_SPILL_NAME in the
 * working directory); 0 if it does not fit. */
size_t gs_spill_path(char *buf, size_t size);
/* Write these request packets (jobs of them) to the spill file, atomically
 * (tmp + fsync + rename).  0 ok; -1 (logged: the jobs are lost). */
int gs_spill_save(const struct gs_spill_part *parts, size_t nparts,
                  size_t jobs);
/* Read and validate the spill file: the packets (malloc'd, *len bytes,
 * *jobs packets), or NULL when there is none or nothing usable (logged). */
char *gs_spill_load(size_t *len, size_t *jobs);
/* The spill file's jobs are all acknowledged: remove it. */
void gs_spill_remove(void);

/* ------------------------------------------------------------ signing */

/* gman_sign.c: background jobs carry "gs1.<kid>.<mac>." before the workload
 * when gearsync_udf.key sits beside the library (docs/security.md). */
#define GS_KEY_NAME "gearsync_udf.key"
#define GS_KEY_MIN 16
#define GS_KEY_MAX 1024
#define GS_SIG_HEADER 78u      /* "gs1." 8 hex "." 64 hex "." */
#define GS_KEY_RECHECK_MS 1000 /* the key file is stat()ed at most this often */

struct gs_sha256 {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char buf[64];
    size_t n;
};
void gs_sha256_init(struct gs_sha256 *c);
void gs_sha256_update(struct gs_sha256 *c, const void *data, size_t len);
void gs_sha256_final(struct gs_sha256 *c, unsigned char out[32]);
/* One 64-byte block, plain C (gs_sha256_* use the SHA-NI one where the CPU has it). */
void gs_sha256_compress_portable(uint32_t h[8], const unsigned char *p);

/* A key ready to sign: SHA-256 states after the HMAC ipad/opad blocks, and
 * its id (hex of the first 4 bytes of SHA-256(key)). */
struct gs_sign_key {
    uint32_t istate[8], ostate[8];
    char kid[8];
};
/* A key file's bytes (one optional trailing newline) -> *out.  0 ok; -1
 * with the reason in why (never the key). */
int gs_sign_key_parse(const char *buf, size_t len, struct gs_sign_key *out,
                      char *why, size_t whylen);
/* The GS_SIG_HEADER bytes that go before wl for a job of function fn. */
void gs_sign_header(const struct gs_sign_key *k, const char *fn, size_t fnlen,
                    const char *wl, size_t wllen, char *hdr);
/* The library's key, copied to *out: 1; 0 = no key file (jobs go unsigned);
 * -1 = a key file that is refused or unreadable (reason in why): no job may
 * go out then. */
int gs_sign_current(struct gs_sign_key *out, char *why, size_t whylen);
/* Look at the key file again on the next call (tests). */
void gs_sign_forget(void);
/* dir-of-this-library/name into out; 0 ok, -1 unknown or too long. */
int gs_lib_file_path(const char *name, char *out, size_t size);

/* ------------------------------------------------------------ JSON */

int gs_json_valid(const char *s, size_t len);
int gs_utf8_valid(const char *s, size_t len);

#endif
