/*
 * gman_udf.c — the Gearman UDF entry points:
 *   gman_servers_set(servers[, options])         -> canonical server list
 *   gman_do_background(function, workload[, unique])      -> job handle
 *   gman_do_high_background / gman_do_low_background      -> job handle
 *   gman_do(function, workload[, unique])        -> the worker's result
 *   gman_do_high / gman_do_low                   -> the worker's result
 *   gman_sum(function, workload)                 -> aggregate INTEGER
 *   gman_last_error()                            -> why this thread's last
 *                                                   call returned NULL
 * Every job function returns NULL on any failure and never raises an SQL
 * error at row time: a trigger must not fail the user's statement because
 * gearmand is away.  Wrong argument counts are rejected in _init.
 */
#include "gearsync_udf.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_SIZE (GS_MAX_SERVERS * (GS_MAX_HOST + 9))

__attribute__((constructor)) static void udf_load(void)
{
    gs_config_load_defaults(1);
}

static void coerce_strings(UDF_ARGS *args)
{
    for (unsigned i = 0; i < args->arg_count; i++)
        args->arg_type[i] = STRING_RESULT;
}

/* ------------------------------------------------------------ servers */

struct servers_state {
    char list[LIST_SIZE];
};

static int servers_build(UDF_ARGS *args, struct gs_config *c, char *err,
                         size_t errlen)
{
    gs_config_current(c);
    if (!args->args[0]) {
        snprintf(err, errlen, "server list is NULL");
        return -1;
    }
    if (gs_parse_servers(args->args[0], args->lengths[0], c, err, errlen))
        return -1;
    if (args->arg_count > 1 && args->args[1] &&
        gs_parse_options(args->args[1], args->lengths[1], c, err, errlen))
        return -1;
    return 0;
}

GS_EXPORT my_bool gman_servers_set_init(UDF_INIT *initid, UDF_ARGS *args,
                                        char *message)
{
    if (args->arg_count < 1 || args->arg_count > 2) {
        snprintf(message, MYSQL_ERRMSG_SIZE,
                 "gman_servers_set(servers[, options]) takes 1 or 2 arguments");
        return 1;
    }
    coerce_strings(args);
    /* constant arguments are visible here: reject bad syntax with a message
     * instead of a silent NULL at row time */
    if (args->args[0]) {
        struct gs_config c;
        struct gs_config *tmp = &c;
        if (servers_build(args, tmp, message, MYSQL_ERRMSG_SIZE) != 0)
            return 1;
    }
    struct servers_state *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(message, MYSQL_ERRMSG_SIZE, "gman_servers_set: out of memory");
        return 1;
    }
    initid->ptr = (char *)s;
    initid->maybe_null = 1;
    initid->const_item = 0;
    initid->max_length = LIST_SIZE;
    return 0;
}

GS_EXPORT void gman_servers_set_deinit(UDF_INIT *initid)
{
    free(initid->ptr);
    initid->ptr = NULL;
}

GS_EXPORT char *gman_servers_set(UDF_INIT *initid, UDF_ARGS *args,
                                 char *result, unsigned long *length,
                                 char *is_null, char *error)
{
    struct servers_state *s = (struct servers_state *)initid->ptr;
    struct gs_config c;
    char err[MYSQL_ERRMSG_SIZE];
    (void)result;
    (void)error;
    if (!s || servers_build(args, &c, err, sizeof err) != 0) {
        gs_set_last_error(s ? err : "gman_servers_set: out of memory");
        *is_null = 1;
        return NULL;
    }
    gs_config_replace(&c);
    gs_set_last_error("");
    *length = (unsigned long)gs_format_servers(&c, s->list, sizeof s->list);
    return s->list;
}

/* ------------------------------------------------------------ submit */

static my_bool job_init(UDF_INIT *initid, UDF_ARGS *args, char *message,
                        const char *name, int foreground)
{
    if (args->arg_count < 2 || args->arg_count > 3) {
        snprintf(message, MYSQL_ERRMSG_SIZE,
                 "%s(function, workload[, unique]): 2 or 3 arguments",
                 name);
        return 1;
    }
    coerce_strings(args);
    initid->maybe_null = 1;
    initid->const_item = 0; /* a side effect per call: never fold it */
    initid->ptr = NULL;
    if (foreground) {
        struct gs_buf *b = calloc(1, sizeof *b);
        if (!b) {
            snprintf(message, MYSQL_ERRMSG_SIZE, "%s: out of memory", name);
            return 1;
        }
        struct gs_config c;
        gs_config_current(&c);
        b->max = c.max_payload;
        initid->ptr = (char *)b;
        initid->max_length = GS_MAX_PAYLOAD;
    } else {
        initid->max_length = 255;
    }
    return 0;
}

static void job_deinit(UDF_INIT *initid)
{
    struct gs_buf *b = (struct gs_buf *)initid->ptr;
    if (b) {
        gs_buf_free(b);
        free(b);
    }
    initid->ptr = NULL;
}

static char *bg_row(UDF_ARGS *args, char *result, unsigned long *length,
                    char *is_null, enum gs_priority prio)
{
    const char *fn = args->args[0], *wl = args->args[1];
    const char *uq = args->arg_count > 2 ? args->args[2] : NULL;
    size_t uqlen = uq ? args->lengths[2] : 0;

    if (!fn || !wl) {
        gs_set_last_error("function or workload is NULL: nothing sent");
        *is_null = 1;
        return NULL;
    }
    /* with a key file: "gs1.<kid>.<mac>." + workload (gman_sign.c) */
    struct gs_sign_key key;
    char why[256];
    char *signed_wl = NULL;
    size_t wllen = args->lengths[1];
    int ks = gs_sign_current(&key, why, sizeof why);
    if (ks < 0) {
        gs_set_last_error(why);
        *is_null = 1;
        return NULL;
    }
    if (ks == 1) {
        if (wllen > GS_MAX_PAYLOAD || !(signed_wl = malloc(GS_SIG_HEADER + wllen))) {
            gs_set_last_error("out of memory signing the workload: nothing sent");
            *is_null = 1;
            return NULL;
        }
        gs_sign_header(&key, fn, args->lengths[0], wl, wllen, signed_wl);
        memcpy(signed_wl + GS_SIG_HEADER, wl, wllen);
        wl = signed_wl;
        wllen += GS_SIG_HEADER;
    }
    /* result is the server's 255-byte buffer; handles are <= 64 bytes */
    int rc = gs_submit_background(prio, fn, args->lengths[0], uq, uqlen, wl,
                                  wllen, result, 255);
    free(signed_wl);
    if (rc != 0) {
        *is_null = 1;
        return NULL;
    }
    *length = (unsigned long)strlen(result);
    return result;
}

static char *fg_row(UDF_INIT *initid, UDF_ARGS *args, char *result,
                    unsigned long *length, char *is_null,
                    enum gs_priority prio)
{
    struct gs_buf *b = (struct gs_buf *)initid->ptr;
    const char *fn = args->args[0], *wl = args->args[1];
    const char *uq = args->arg_count > 2 ? args->args[2] : NULL;
    size_t uqlen = uq ? args->lengths[2] : 0;

    if (!b || !fn || !wl) {
        gs_set_last_error("function or workload is NULL: nothing sent");
        *is_null = 1;
        return NULL;
    }
    b->len = 0;
    if (gs_submit_foreground(prio, fn, args->lengths[0], uq, uqlen, wl,
                             args->lengths[1], b) != 0) {
        *is_null = 1;
        return NULL;
    }
    *length = (unsigned long)b->len;
    return b->len ? b->p : result;
}

#define JOB_UDF(NAME, FG, PRIO)                                               \
    GS_EXPORT my_bool NAME##_init(UDF_INIT *initid, UDF_ARGS *args,           \
                                  char *message)                              \
    {                                                                         \
        return job_init(initid, args, message, #NAME, FG);                    \
    }                                                                         \
    GS_EXPORT void NAME##_deinit(UDF_INIT *initid) { job_deinit(initid); }    \
    GS_EXPORT char *NAME(UDF_INIT *initid, UDF_ARGS *args, char *result,      \
                         unsigned long *length, char *is_null, char *error)   \
    {                                                                         \
        (void)error;                                                          \
        (void)initid;                                                         \
        return FG ? fg_row(initid, args, result, length, is_null, PRIO)       \
                  : bg_row(args, result, length, is_null, PRIO);              \
    }

JOB_UDF(gman_do_background, 0, GS_PRIO_NORMAL)
JOB_UDF(gman_do_high_background, 0, GS_PRIO_HIGH)
JOB_UDF(gman_do_low_background, 0, GS_PRIO_LOW)
JOB_UDF(gman_do, 1, GS_PRIO_NORMAL)
JOB_UDF(gman_do_high, 1, GS_PRIO_HIGH)
JOB_UDF(gman_do_low, 1, GS_PRIO_LOW)

/* ------------------------------------------------------------ gman_sum */

struct sum_state {
    long long sum;
    int rows, failed;
    struct gs_buf buf;
};

/* Optional blanks, optional sign, digits, optional blanks; no overflow. */
static int parse_ll(const char *s, size_t n, long long *out)
{
    size_t i = 0;
    int neg = 0;
    unsigned long long v = 0, lim;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        neg = s[i++] == '-';
    lim = neg ? (unsigned long long)LLONG_MAX + 1 : (unsigned long long)LLONG_MAX;
    size_t d = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        unsigned dig = (unsigned)(s[i] - '0');
        if (v > (lim - dig) / 10)
            return -1;
        v = v * 10 + dig;
        i++;
    }
    if (i == d)
        return -1;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    if (i != n)
        return -1;
    *out = neg ? (long long)(0ull - v) : (long long)v;
    return 0;
}

GS_EXPORT my_bool gman_sum_init(UDF_INIT *initid, UDF_ARGS *args,
                                char *message)
{
    if (args->arg_count != 2) {
        snprintf(message, MYSQL_ERRMSG_SIZE,
                 "gman_sum(function, workload) takes 2 arguments");
        return 1;
    }
    coerce_strings(args);
    struct sum_state *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(message, MYSQL_ERRMSG_SIZE, "gman_sum: out of memory");
        return 1;
    }
    s->buf.max = 4096; /* an integer result; anything longer is a failure */
    initid->ptr = (char *)s;
    initid->maybe_null = 1;
    initid->const_item = 0;
    return 0;
}

GS_EXPORT void gman_sum_deinit(UDF_INIT *initid)
{
    struct sum_state *s = (struct sum_state *)initid->ptr;
    if (s) {
        gs_buf_free(&s->buf);
        free(s);
    }
    initid->ptr = NULL;
}

GS_EXPORT void gman_sum_clear(UDF_INIT *initid, char *is_null, char *error)
{
    struct sum_state *s = (struct sum_state *)initid->ptr;
    (void)is_null;
    (void)error;
    if (s) {
        s->sum = 0;
        s->rows = 0;
        s->failed = 0;
    }
}

GS_EXPORT void gman_sum_add(UDF_INIT *initid, UDF_ARGS *args, char *is_null,
                            char *error)
{
    struct sum_state *s = (struct sum_state *)initid->ptr;
    long long v;
    (void)is_null;
    (void)error;
    if (!s || s->failed)
        return;
    if (!args->args[0] || !args->args[1])
        return; /* like SUM(): a NULL row adds nothing */
    s->buf.len = 0;
    if (gs_submit_foreground(GS_PRIO_NORMAL, args->args[0], args->lengths[0],
                             NULL, 0, args->args[1], args->lengths[1],
                             &s->buf) != 0) {
        s->failed = 1;
        return;
    }
    if (parse_ll(s->buf.p ? s->buf.p : "", s->buf.len, &v) != 0 ||
        __builtin_add_overflow(s->sum, v, &s->sum)) {
        gs_set_last_error("gman_sum: a worker result is not a 64-bit integer "
                          "or the sum overflows");
        s->failed = 1;
        return;
    }
    s->rows++;
}

/* MySQL < 8 and some MariaDB paths call _reset = clear + add. */
GS_EXPORT void gman_sum_reset(UDF_INIT *initid, UDF_ARGS *args, char *is_null,
                              char *error)
{
    gman_sum_clear(initid, is_null, error);
    gman_sum_add(initid, args, is_null, error);
}

GS_EXPORT long long gman_sum(UDF_INIT *initid, UDF_ARGS *args, char *is_null,
                             char *error)
{
    struct sum_state *s = (struct sum_state *)initid->ptr;
    (void)args;
    (void)error;
    if (!s || s->failed || s->rows == 0) {
        *is_null = 1;
        return 0;
    }
    return s->sum;
}

/* ------------------------------------------------------------ last error */

GS_EXPORT my_bool gman_last_error_init(UDF_INIT *initid, UDF_ARGS *args,
                                       char *message)
{
    if (args->arg_count != 0) {
        snprintf(message, MYSQL_ERRMSG_SIZE,
                 "gman_last_error() takes no arguments");
        return 1;
    }
    initid->ptr = malloc(512);
    if (!initid->ptr) {
        snprintf(message, MYSQL_ERRMSG_SIZE, "gman_last_error: out of memory");
        return 1;
    }
    initid->maybe_null = 1;
    initid->const_item = 0;
    initid->max_length = 511;
    return 0;
}

GS_EXPORT void gman_last_error_deinit(UDF_INIT *initid)
{
    free(initid->ptr);
    initid->ptr = NULL;
}

GS_EXPORT char *gman_last_error(UDF_INIT *initid, UDF_ARGS *args,
                                char *result, unsigned long *length,
                                char *is_null, char *error)
{
    (void)args;
    (void)result;
    (void)error;
    if (!initid->ptr) {
        *is_null = 1;
        return NULL;
    }
    size_t n = gs_last_error_copy(initid->ptr, 512);
    if (n == 0) {
        *is_null = 1;
        return NULL;
    }
    *length = (unsigned long)n;
    return initid->ptr;
}

/* ------------------------------------------------------------ flush */

/* gman_flush(): wait (up to do_timeout_ms) until every background job this
 * connection's thread pipelined is acknowledged by a job server; returns
 * how many are still unacknowledged (0 = all confirmed). */
GS_EXPORT my_bool gman_flush_init(UDF_INIT *initid, UDF_ARGS *args,
                                  char *message)
{
    if (args->arg_count != 0) {
        snprintf(message, MYSQL_ERRMSG_SIZE, "gman_flush() takes no arguments");
        return 1;
    }
    initid->maybe_null = 1;
    initid->const_item = 0;
    return 0;
}

GS_EXPORT long long gman_flush(UDF_INIT *initid, UDF_ARGS *args,
                               char *is_null, char *error)
{
    (void)initid;
    (void)args;
    (void)error;
    long long n = gs_flush();
    if (n < 0) {
        *is_null = 1;
        return 0;
    }
    return n;
}
