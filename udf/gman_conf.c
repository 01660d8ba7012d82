/*
 * gman_conf.c — the job-server list and timeouts for the whole mysqld
 * process, and the per-server failure back-off.
 *
 * This is the library's only mutable global state.  It sits behind g_lock.
 * Every change bumps g_version; threads keep a private copy of the config
 * together with the version they copied, compare it lock-free on each call
 * (one atomic load) and re-copy (and drop their cached connection) when it
 * moved.  Defaults are read once when mysqld dlopen()s the library, so a
 * mysqld restart does not forget them: environment variable
 * GEARSYNC_GEARMAN_SERVERS, else "servers=" in gearsync_udf.conf beside the
 * library, else 127.0.0.1:4730.
 */
#define _GNU_SOURCE
#include "gearsync_udf.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gs_config g_cfg;              /* guarded by g_lock */
static uint64_t g_version;                  /* written under g_lock */
static int64_t g_dead_until[GS_MAX_SERVERS]; /* guarded by g_lock */
static unsigned char g_dead_logged[GS_MAX_SERVERS];

int64_t gs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t gs_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* err = fmt with its one "%.*s" replaced by a[0..alen) (clamped: a is not
 * NUL terminated and may be long). */
static void seterr(char *err, size_t errlen, const char *fmt, const char *a,
                   size_t alen)
{
    if (!err || !errlen)
        return;
    const char *mark = strstr(fmt, "%.*s");
    int n = alen > 64 ? 64 : (int)alen;
    if (!mark) {
        snprintf(err, errlen, "%s", fmt);
        return;
    }
    snprintf(err, errlen, "%.*s%.*s%s", (int)(mark - fmt), fmt, n,
             a ? a : "", mark + 4);
}

static const char *trim(const char *s, size_t *len)
{
    size_t n = *len;
    while (n && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    *len = n;
    return s;
}

/* Decimal in [lo, hi], no sign, no junk. */
static int parse_uint(const char *s, size_t len, unsigned long lo,
                      unsigned long hi, unsigned long *out)
{
    unsigned long v = 0;
    if (len == 0 || len > 10)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int host_char_ok(char c, int v6)
{
    if (isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_')
        return 1;
    return v6 && (c == ':' || c == '%');
}

static int parse_one_server(const char *s, size_t len, struct gs_server *out,
                            char *err, size_t errlen)
{
    const char *host, *port = NULL;
    size_t hlen, plen = 0;
    int v6 = 0;
    const char *ent = s;
    size_t entlen = len;

    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close) {
            seterr(err, errlen, "missing ']' in '%.*s'", ent,
                   entlen);
            return -1;
        }
        host = s + 1;
        hlen = (size_t)(close - host);
        size_t rest = len - (size_t)(close + 1 - s);
        if (rest) {
            if (close[1] != ':') {
                seterr(err, errlen,
                       "expected ':' after ']' in '%.*s'", ent,
                       entlen);
                return -1;
            }
            port = close + 2;
            plen = rest - 1;
        }
        v6 = 1;
    } else {
        const char *colon = memchr(s, ':', len);
        host = s;
        hlen = colon ? (size_t)(colon - s) : len;
        if (colon) {
            port = colon + 1;
            plen = len - hlen - 1;
            if (memchr(port, ':', plen)) {
                seterr(err, errlen,
                       "write IPv6 addresses as [addr]:port, not '%.*s'",
                       ent, entlen);
                return -1;
            }
        }
    }
    if (hlen == 0 || hlen > GS_MAX_HOST) {
        seterr(err, errlen, "bad host in '%.*s'", ent, entlen);
        return -1;
    }
    /* [...] is for IPv6 addresses only (optionally with a %zone): it must
     * hold a ':', so that the canonical form, which brackets exactly the
     * hosts containing ':', reads back the same */
    if (v6 && (!memchr(host, ':', hlen) || host[0] == '%')) {
        seterr(err, errlen, "brackets are for IPv6 addresses: '%.*s'", ent,
               entlen);
        return -1;
    }
    for (size_t i = 0; i < hlen; i++) {
        if (!host_char_ok(host[i], v6)) {
            seterr(err, errlen,
                   "bad character in host '%.*s'", ent,
                   entlen);
            return -1;
        }
    }
    unsigned long p = GS_DEFAULT_PORT;
    if (port && parse_uint(port, plen, 1, 65535, &p) != 0) {
        seterr(err, errlen,
               "port must be 1..65535 in '%.*s'", ent, entlen);
        return -1;
    }
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    out->port = (uint16_t)p;
    return 0;
}

int gs_parse_servers(const char *s, size_t len, struct gs_config *out,
                     char *err, size_t errlen)
{
    struct gs_server tmp[GS_MAX_SERVERS];
    unsigned n = 0;
    size_t pos = 0;

    if (!s) {
        seterr(err, errlen, "server list is NULL%.*s", "", 0);
        return -1;
    }
    while (pos <= len) {
        const char *comma = memchr(s + pos, ',', len - pos);
        size_t end = comma ? (size_t)(comma - s) : len;
        size_t elen = end - pos;
        const char *e = trim(s + pos, &elen);
        if (elen == 0) {
            seterr(err, errlen,
                   "empty entry in server list '%.*s'", s,
                   len);
            return -1;
        }
        if (n == GS_MAX_SERVERS) {
            seterr(err, errlen,
                   "more than 16 servers in '%.*s'", s, len);
            return -1;
        }
        if (parse_one_server(e, elen, &tmp[n], err, errlen) != 0)
            return -1;
        n++;
        if (!comma)
            break;
        pos = end + 1;
    }
    memcpy(out->servers, tmp, n * sizeof tmp[0]);
    out->n = n;
    return 0;
}

int gs_apply_option(const char *key, size_t klen, const char *val,
                    size_t vlen, struct gs_config *out, int allow_servers,
                    char *err, size_t errlen)
{
    unsigned long v;
    key = trim(key, &klen);
    val = trim(val, &vlen);
#define KEY_IS(lit) (klen == sizeof(lit) - 1 && memcmp(key, lit, klen) == 0)
    if (KEY_IS("servers") && allow_servers)
        return gs_parse_servers(val, vlen, out, err, errlen);
    if (KEY_IS("timeout_ms") || KEY_IS("do_timeout_ms")) {
        if (parse_uint(val, vlen, 1, GS_MAX_TIMEOUT_MS, &v) != 0) {
            seterr(err, errlen,
                   "timeouts are 1..3600000 ms: '%.*s'",
                   key, klen + 1 + vlen);
            return -1;
        }
        if (KEY_IS("timeout_ms"))
            out->timeout_ms = (unsigned)v;
        else
            out->do_timeout_ms = (unsigned)v;
        return 0;
    }
    if (KEY_IS("retry_ms")) {
        if (parse_uint(val, vlen, 0, GS_MAX_TIMEOUT_MS, &v) != 0) {
            seterr(err, errlen,
                   "retry_ms is 0..3600000: '%.*s'", key,
                   klen + 1 + vlen);
            return -1;
        }
        out->retry_ms = (unsigned)v;
        return 0;
    }
    if (KEY_IS("pipeline") || KEY_IS("journal")) { /* the switches */
        int pipeline = KEY_IS("pipeline");
        if (parse_uint(val, vlen, 0, 1, &v) != 0) {
            seterr(err, errlen,
                   pipeline ? "pipeline is 0 or 1: '%.*s'"
                            : "journal is 0 or 1: '%.*s'",
                   key, klen + 1 + vlen);
            return -1;
        }
        *(pipeline ? &out->pipeline : &out->journal) = (unsigned)v;
        return 0;
    }
    if (KEY_IS("coalesce_us")) {
        if (parse_uint(val, vlen, 0, GS_MAX_COALESCE_US, &v) != 0) {
            seterr(err, errlen, "coalesce_us is 0..100000: '%.*s'",
                   key, klen + 1 + vlen);
            return -1;
        }
        out->coalesce_us = (unsigned)v;
        return 0;
    }
    if (KEY_IS("max_payload")) {
        if (parse_uint(val, vlen, GS_MIN_MAX_PAYLOAD, GS_MAX_PAYLOAD, &v) != 0) {
            seterr(err, errlen,
                   "max_payload is 65536..1073741824 bytes: '%.*s'", key,
                   klen + 1 + vlen);
            return -1;
        }
        out->max_payload = (size_t)v;
        return 0;
    }
#undef KEY_IS
    seterr(err, errlen,
           "unknown option '%.*s' (timeout_ms, do_timeout_ms, retry_ms, "
           "pipeline, coalesce_us, max_payload, journal)",
           key, klen);
    return 1;
}

int gs_parse_options(const char *s, size_t len, struct gs_config *out,
                     char *err, size_t errlen)
{
    size_t pos = 0;
    struct gs_config tmp = *out;

    if (!s)
        return 0;
    while (pos < len) {
        const char *comma = memchr(s + pos, ',', len - pos);
        size_t end = comma ? (size_t)(comma - s) : len;
        const char *e = s + pos;
        size_t elen = end - pos;
        e = trim(e, &elen);
        if (elen) {
            const char *eq = memchr(e, '=', elen);
            if (!eq) {
                seterr(err, errlen,
                       "option '%.*s' is not key=value", e,
                       elen);
                return -1;
            }
            if (gs_apply_option(e, (size_t)(eq - e), eq + 1,
                                elen - (size_t)(eq - e) - 1, &tmp, 0, err,
                                errlen) != 0)
                return -1;
        }
        pos = end + 1;
    }
    *out = tmp;
    return 0;
}

size_t gs_format_servers(const struct gs_config *c, char *buf, size_t size)
{
    size_t pos = 0;
    if (!size)
        return 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < c->n; i++) {
        int v6 = strchr(c->servers[i].host, ':') != NULL;
        int n = snprintf(buf + pos, size - pos, "%s%s%s%s:%u", i ? "," : "",
                         v6 ? "[" : "", c->servers[i].host, v6 ? "]" : "",
                         (unsigned)c->servers[i].port);
        if (n < 0)
            break;
        if ((size_t)n >= size - pos) {
            pos = size - 1;
            break;
        }
        pos += (size_t)n;
    }
    return pos;
}

/* ------------------------------------------------------------ state */

uint64_t gs_config_version(void)
{
    return __atomic_load_n(&g_version, __ATOMIC_ACQUIRE);
}

uint64_t gs_config_snapshot(struct gs_config *out)
{
    uint64_t v;
    pthread_mutex_lock(&g_lock);
    *out = g_cfg;
    v = g_version;
    pthread_mutex_unlock(&g_lock);
    return v;
}

void gs_config_current(struct gs_config *out)
{
    (void)gs_config_snapshot(out);
}

uint64_t gs_config_replace(const struct gs_config *c)
{
    uint64_t v;
    pthread_mutex_lock(&g_lock);
    g_cfg = *c;
    memset(g_dead_until, 0, sizeof g_dead_until);
    memset(g_dead_logged, 0, sizeof g_dead_logged);
    v = g_version + 1;
    __atomic_store_n(&g_version, v, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_lock);
    return v;
}

int gs_server_usable(uint64_t version, unsigned idx, int64_t now_ms)
{
    int ok = 1;
    if (idx >= GS_MAX_SERVERS)
        return 0;
    pthread_mutex_lock(&g_lock);
    if (version == g_version && g_dead_until[idx] > now_ms)
        ok = 0;
    pthread_mutex_unlock(&g_lock);
    return ok;
}

void gs_server_failed(uint64_t version, unsigned idx, int64_t now_ms,
                      const char *why)
{
    int log = 0;
    char name[GS_MAX_HOST + 8];
    unsigned retry = 0;

    if (idx >= GS_MAX_SERVERS)
        return;
    pthread_mutex_lock(&g_lock);
    if (version == g_version) {
        retry = g_cfg.retry_ms;
        g_dead_until[idx] = now_ms + (int64_t)retry;
        if (!g_dead_logged[idx]) {
            g_dead_logged[idx] = 1;
            log = 1;
            snprintf(name, sizeof name, "%s:%u", g_cfg.servers[idx].host,
                     (unsigned)g_cfg.servers[idx].port);
        }
    }
    pthread_mutex_unlock(&g_lock);
    /* One line in the mysqld error log when a server goes bad, not one per
     * row: it is logged again only after it worked in between. */
    if (log)
        fprintf(stderr,
                "gearsync_udf: gearmand %s failed (%s); skipping it for %u ms "
                "after each failure\n",
                name, why ? why : "?", retry);
}

void gs_server_ok(uint64_t version, unsigned idx)
{
    int log = 0;
    char name[GS_MAX_HOST + 8];

    if (idx >= GS_MAX_SERVERS)
        return;
    /* racy pre-check without the lock would be a data race; the lock is
     * uncontended and only taken right after a (re)connect. */
    pthread_mutex_lock(&g_lock);
    if (version == g_version && g_dead_logged[idx]) {
        g_dead_logged[idx] = 0;
        g_dead_until[idx] = 0;
        log = 1;
        snprintf(name, sizeof name, "%s:%u", g_cfg.servers[idx].host,
                 (unsigned)g_cfg.servers[idx].port);
    }
    pthread_mutex_unlock(&g_lock);
    if (log)
        fprintf(stderr, "gearsync_udf: gearmand %s reachable again\n", name);
}

/* ------------------------------------------------------------ defaults */

static void config_defaults(struct gs_config *c)
{
    memset(c, 0, sizeof *c);
    c->n = 1;
    strcpy(c->servers[0].host, GS_DEFAULT_HOST);
    c->servers[0].port = GS_DEFAULT_PORT;
    c->timeout_ms = GS_DEFAULT_TIMEOUT_MS;
    c->do_timeout_ms = GS_DEFAULT_DO_TIMEOUT_MS;
    c->retry_ms = GS_DEFAULT_RETRY_MS;
    /* pipelined by default: a submit returns once its packet is written; the
     * library keeps every job until gearmand acknowledges it (resent on a new
     * connection, watched by the keeper thread once the caller goes idle or
     * ends, saved to the spill file at unload).  pipeline=0: wait for
     * JOB_CREATED on every submit. */
    c->pipeline = 1;
    c->coalesce_us = GS_DEFAULT_COALESCE_US;
    /* pipelined jobs not yet acknowledged are also kept in a file-backed
     * mapping (gman_journal.c), so a SIGKILL of mysqld does not lose them */
    c->journal = 1;
    c->max_payload = GS_DEFAULT_MAX_PAYLOAD;
}

int gs_lib_file_path(const char *name, char *out, size_t size)
{
    Dl_info info;
    size_t nlen = strlen(name);
    if (!dladdr((void *)&gs_lib_file_path, &info) || !info.dli_fname)
        return -1;
    const char *slash = strrchr(info.dli_fname, '/');
    size_t dlen = slash ? (size_t)(slash - info.dli_fname) : 1;
    const char *dir = slash ? info.dli_fname : ".";
    if (dlen + 1 + nlen + 1 > size)
        return -1;
    memcpy(out, dir, dlen);
    out[dlen] = '/';
    memcpy(out + dlen + 1, name, nlen + 1);
    return 0;
}

/* Read the conf file: "key=value" lines, '#' comments.  Returns 1 if the
 * file set servers=, 0 if not (or no file), and logs bad lines. */
static int read_conf(const char *path, struct gs_config *c, int log)
{
    char buf[16384];
    char err[MYSQL_ERRMSG_SIZE];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int has_servers = 0;
    size_t len = 0;

    if (fd < 0)
        return 0;
    while (len < sizeof buf - 1) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';

    size_t pos = 0;
    unsigned lineno = 0;
    while (pos < len) {
        char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        const char *line = buf + pos;
        size_t llen = end - pos;
        lineno++;
        pos = end + 1;
        line = trim(line, &llen);
        if (llen == 0 || line[0] == '#')
            continue;
        const char *eq = memchr(line, '=', llen);
        int rc;
        if (!eq) {
            rc = -1;
            snprintf(err, sizeof err, "expected key=value");
        } else {
            size_t klen = (size_t)(eq - line);
            struct gs_config tmp = *c;
            rc = gs_apply_option(line, klen, eq + 1, llen - klen - 1, &tmp, 1,
                                 err, sizeof err);
            if (rc == 0) {
                size_t tk = klen;
                const char *k = trim(line, &tk);
                if (tk == 7 && memcmp(k, "servers", 7) == 0)
                    has_servers = 1;
                *c = tmp;
            }
        }
        if (rc != 0 && log)
            fprintf(stderr, "gearsync_udf: %s line %u ignored: %s\n", path,
                    lineno, err);
    }
    return has_servers;
}

void gs_config_load_defaults(int log)
{
    struct gs_config c;
    char path[4096];
    char err[MYSQL_ERRMSG_SIZE];
    const char *source = "built-in default";
    int have_path = gs_lib_file_path(GS_CONF_NAME, path, sizeof path) == 0;

    config_defaults(&c);
    if (have_path && read_conf(path, &c, log))
        source = path;
    const char *env = getenv(GS_ENV_SERVERS);
    if (env && *env) {
        struct gs_config tmp = c;
        if (gs_parse_servers(env, strlen(env), &tmp, err, sizeof err) == 0) {
            c = tmp;
            source = "environment " GS_ENV_SERVERS;
        } else if (log) {
            fprintf(stderr, "gearsync_udf: %s ignored: %s\n", GS_ENV_SERVERS,
                    err);
        }
    }
    gs_config_replace(&c);
    if (log) {
        char list[GS_MAX_SERVERS * (GS_MAX_HOST + 9)];
        gs_format_servers(&c, list, sizeof list);
        fprintf(stderr,
                "gearsync_udf: job servers %s (from %s); timeout_ms=%u "
                "do_timeout_ms=%u retry_ms=%u pipeline=%u coalesce_us=%u "
                "max_payload=%zu journal=%u\n",
                list, source, c.timeout_ms, c.do_timeout_ms, c.retry_ms,
                c.pipeline, c.coalesce_us, c.max_payload, c.journal);
    }
}
