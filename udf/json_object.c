/*
 * json_object.c — gman_json_object(expr AS key, …) and gman_json_array(…).
 *
 * Output is RFC 8259 JSON text in UTF-8 for every input:
 *   NULL                -> null
 *   INT_RESULT          -> integer (signed 64-bit; see README for UNSIGNED)
 *   DECIMAL_RESULT      -> the decimal text as a number (a string if it is
 *                          not a valid JSON number)
 *   REAL_RESULT         -> the shortest %.<n>g (n = 1..17) that reads back as
 *                          the same double;
 *                          NaN and ±inf -> null
 *   STRING_RESULT       -> a JSON string if the bytes are valid UTF-8
 *                          (strict: no overlongs, surrogates, > U+10FFFF),
 *                          else {"$b64":"<base64 of the bytes>"}
 *   alias "json_<name>" -> the value inserted as is under key "<name>" when
 *                          it is a valid JSON text, else as a string
 * Keys are the argument aliases (the expression text when there is none),
 * escaped like strings; bytes in a key that are not UTF-8 become U+FFFD.
 * The result is built in a per-statement buffer (initid->ptr) capped at
 * the option max_payload (default 256 MiB, at most 1 GiB); a larger result is NULL.
 */
#include "gearsync_udf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

/* ------------------------------------------------------------ UTF-8 */

/* Length of the valid UTF-8 sequence at s[0..n) or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && s[1] < 0xA0) /* overlong */
            return 0;
        if (c == 0xED && s[1] > 0x9F) /* surrogates */
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
            (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) /* overlong */
            return 0;
        if (c == 0xF4 && s[1] > 0x8F) /* > U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

int gs_utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq(u + i, len - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

/* ------------------------------------------------------------ output */

static int put(struct gs_buf *b, const char *s, size_t n)
{
    if (gs_buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int putc1(struct gs_buf *b, char c)
{
    if (b->len >= b->cap && gs_buf_reserve(b, 1) != 0)
        return -1;
    b->p[b->len++] = c;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* Escape s as the inside of a JSON string.  Returns 0, or 1 if s is not
 * valid UTF-8 (with replace_invalid, such bytes become U+FFFD instead), or
 * -1 when the buffer cap is hit. */
static int put_escaped(struct gs_buf *b, const char *s, size_t len,
                       int replace_invalid)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;

    /* worst case is 6 output bytes per input byte; reserve per chunk */
    while (i < len) {
        unsigned char c = u[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_seq(u + i, len - i);
            if (k) {
                i += k;
                continue;
            }
            if (!replace_invalid)
                return 1;
        }
        if (i > run && put(b, s + run, i - run) != 0)
            return -1;
        char esc[6];
        size_t n = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (c >= 0x80) { /* invalid byte in a key: U+FFFD */
                memcpy(esc, "\xEF\xBF\xBD", 3);
                n = 3;
            } else {
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = HEX[c >> 4];
                esc[5] = HEX[c & 15];
                n = 6;
            }
        }
        if (put(b, esc, n) != 0)
            return -1;
        i++;
        run = i;
    }
    if (i > run && put(b, s + run, i - run) != 0)
        return -1;
    return 0;
}

static int put_base64(struct gs_buf *b, const unsigned char *s, size_t len)
{
    static const char T[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t out = (len / 3 + (len % 3 != 0)) * 4;
    if (len > b->max || gs_buf_reserve(b, out) != 0)
        return -1;
    char *o = b->p + b->len;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        *o++ = T[v >> 18];
        *o++ = T[(v >> 12) & 63];
        *o++ = T[(v >> 6) & 63];
        *o++ = T[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)s[i + 1] << 8;
        *o++ = T[v >> 18];
        *o++ = T[(v >> 12) & 63];
        *o++ = i + 1 < len ? T[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len += out;
    return 0;
}

static int put_string(struct gs_buf *b, const char *s, size_t len)
{
    size_t mark = b->len;
    if (putc1(b, '"') != 0)
        return -1;
    int rc = put_escaped(b, s, len, 0);
    if (rc < 0)
        return -1;
    if (rc == 0)
        return putc1(b, '"');
    /* not UTF-8: the bytes go out as {"$b64":"…"} (README: binary data) */
    b->len = mark;
    if (put(b, "{\"$b64\":\"", 9) != 0 ||
        put_base64(b, (const unsigned char *)s, len) != 0 || put(b, "\"}", 2) != 0)
        return -1;
    return 0;
}

static int put_int(struct gs_buf *b, long long v)
{
    char tmp[24];
    char *e = tmp + sizeof tmp, *p = e;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return put(b, p, (size_t)(e - p));
}

/* JSON number grammar: -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)? */
static int json_number_len(const char *s, size_t len)
{
    size_t i = 0;
    if (i < len && s[i] == '-')
        i++;
    if (i >= len)
        return 0;
    if (s[i] == '0')
        i++;
    else if (s[i] >= '1' && s[i] <= '9')
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
    else
        return 0;
    if (i < len && s[i] == '.') {
        size_t d = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return 0;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t d = i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return 0;
    }
    return (int)i;
}

static int is_json_number(const char *s, size_t len)
{
    return len > 0 && len < 1024 && (size_t)json_number_len(s, len) == len;
}

/* %.<prec>g of d into tmp as JSON; 0 if it is not a valid JSON number. */
static int fmt_g(char *tmp, size_t size, int prec, double d)
{
    int n = snprintf(tmp, size, "%.*g", prec, d);
    if (n <= 0 || (size_t)n >= size)
        return 0;
    /* a locale with a decimal comma must not leak into JSON */
    for (int i = 0; i < n; i++)
        if (tmp[i] == ',')
            tmp[i] = '.';
    return is_json_number(tmp, (size_t)n) ? n : 0;
}

/* A double in integer form ("3", "-0", "100") gets ".0", so every JSON reader
 * keeps it a float: 3.0 from a DOUBLE column must not turn into the integer 3
 * (the snapshot and binlog paths read it as a float, and all paths must agree). */
static int put_real_text(struct gs_buf *b, const char *s, size_t n)
{
    if (memchr(s, '.', n) || memchr(s, 'e', n) || memchr(s, 'E', n))
        return put(b, s, n);
    if (put(b, s, n))
        return -1;
    return put(b, ".0", 2);
}

/* The fewest significant digits (1..17) that read back as exactly d.
 * Binary search: more digits never round-trip worse; 17 always does. */
static int put_double(struct gs_buf *b, double d)
{
    char tmp[40], best[40];
    int lo = 1, hi = 17, n, best_n;
    if (!isfinite(d))
        return put(b, "null", 4);
    best_n = fmt_g(best, sizeof best, 17, d);
    if (!best_n)
        return put(b, "null", 4);
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        n = fmt_g(tmp, sizeof tmp, mid, d);
        if (n && strtod(tmp, NULL) == d) {
            memcpy(best, tmp, (size_t)n + 1); /* with its NUL: atoi() below */
            best_n = n;
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    /* %g writes 100 as 1e+02 with one digit; when the number is an integer
     * of up to 17 digits, the plain form may be shorter: take it then */
    const char *e = memchr(best, 'e', (size_t)best_n);
    if (e && e[1] == '+') {
        int exp10 = atoi(e + 2);
        if (exp10 >= lo && exp10 < 17) {
            n = fmt_g(tmp, sizeof tmp, exp10 + 1, d);
            if (n && n <= best_n && strtod(tmp, NULL) == d)
                return put_real_text(b, tmp, (size_t)n);
        }
    }
    return put_real_text(b, best, (size_t)best_n);
}

/* ------------------------------------------------------------ validator */

struct jv {
    const unsigned char *s;
    size_t n, i;
};

static void ws(struct jv *v)
{
    while (v->i < v->n && (v->s[v->i] == ' ' || v->s[v->i] == '\t' ||
                           v->s[v->i] == '\n' || v->s[v->i] == '\r'))
        v->i++;
}

static int hex4(struct jv *v, unsigned *out)
{
    unsigned x = 0;
    if (v->n - v->i < 4)
        return 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = v->s[v->i++];
        x <<= 4;
        if (c >= '0' && c <= '9')
            x |= c - '0';
        else if (c >= 'a' && c <= 'f')
            x |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            x |= c - 'A' + 10;
        else
            return 0;
    }
    *out = x;
    return 1;
}

static int jv_string(struct jv *v)
{
    v->i++; /* opening quote */
    while (v->i < v->n) {
        unsigned char c = v->s[v->i];
        if (c == '"') {
            v->i++;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c == '\\') {
            if (++v->i >= v->n)
                return 0;
            c = v->s[v->i++];
            if (c == 'u') {
                unsigned u, lo;
                if (!hex4(v, &u))
                    return 0;
                if (u >= 0xDC00 && u <= 0xDFFF)
                    return 0; /* lone low surrogate */
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (v->n - v->i < 6 || v->s[v->i] != '\\' ||
                        v->s[v->i + 1] != 'u')
                        return 0;
                    v->i += 2;
                    if (!hex4(v, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return 0;
                }
            } else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
                return 0;
            }
            continue;
        }
        if (c < 0x80) {
            v->i++;
            continue;
        }
        size_t k = utf8_seq(v->s + v->i, v->n - v->i);
        if (!k)
            return 0;
        v->i += k;
    }
    return 0;
}

static int jv_value(struct jv *v, int depth)
{
    ws(v);
    if (v->i >= v->n)
        return 0;
    unsigned char c = v->s[v->i];
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        if (depth >= JSON_MAX_DEPTH)
            return 0;
        v->i++;
        ws(v);
        if (v->i < v->n && v->s[v->i] == (unsigned char)close) {
            v->i++;
            return 1;
        }
        for (;;) {
            if (c == '{') {
                ws(v);
                if (v->i >= v->n || v->s[v->i] != '"' || !jv_string(v))
                    return 0;
                ws(v);
                if (v->i >= v->n || v->s[v->i] != ':')
                    return 0;
                v->i++;
            }
            if (!jv_value(v, depth + 1))
                return 0;
            ws(v);
            if (v->i >= v->n)
                return 0;
            if (v->s[v->i] == ',') {
                v->i++;
                continue;
            }
            if (v->s[v->i] == (unsigned char)close) {
                v->i++;
                return 1;
            }
            return 0;
        }
    }
    if (c == '"')
        return jv_string(v);
    static const char *lits[] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t l = strlen(lits[k]);
        if (v->n - v->i >= l && memcmp(v->s + v->i, lits[k], l) == 0) {
            v->i += l;
            return 1;
        }
    }
    int l = json_number_len((const char *)v->s + v->i, v->n - v->i);
    if (l <= 0)
        return 0;
    v->i += (size_t)l;
    return 1;
}

int gs_json_valid(const char *s, size_t len)
{
    struct jv v = {(const unsigned char *)s, len, 0};
    if (!s || !jv_value(&v, 0))
        return 0;
    ws(&v);
    return v.i == v.n;
}

/* ------------------------------------------------------------ values */

static int put_value(struct gs_buf *b, UDF_ARGS *args, unsigned i, int raw)
{
    const char *p = args->args[i];
    size_t len = args->lengths ? args->lengths[i] : 0;
    if (!p)
        return put(b, "null", 4);
    switch (args->arg_type[i]) {
    case INT_RESULT: {
        long long v;
        memcpy(&v, p, sizeof v);
        return put_int(b, v);
    }
    case REAL_RESULT: {
        double d;
        memcpy(&d, p, sizeof d);
        return put_double(b, d);
    }
    case DECIMAL_RESULT:
        if (is_json_number(p, len))
            return put(b, p, len);
        return put_string(b, p, len);
    default: /* STRING_RESULT; TIME_RESULT/ROW_RESULT never reach a UDF */
        if (raw && gs_json_valid(p, len)) {
            /* drop surrounding whitespace so the output stays compact */
            struct jv v = {(const unsigned char *)p, len, 0};
            ws(&v);
            size_t e = len;
            while (e > v.i && (p[e - 1] == ' ' || p[e - 1] == '\t' ||
                               p[e - 1] == '\n' || p[e - 1] == '\r'))
                e--;
            return put(b, p + v.i, e - v.i);
        }
        return put_string(b, p, len);
    }
}

/* alias of argument i; *raw set when it carries the json_ marker */
static const char *arg_key(UDF_ARGS *args, unsigned i, size_t *klen, int *raw)
{
    const char *k = args->attributes ? args->attributes[i] : NULL;
    size_t n = (k && args->attribute_lengths) ? args->attribute_lengths[i] : 0;
    *raw = 0;
    if (!k)
        n = 0;
    if (n > 5 && memcmp(k, "json_", 5) == 0) {
        *raw = 1;
        k += 5;
        n -= 5;
    }
    *klen = n;
    return k ? k : "";
}

static int build(struct gs_buf *b, UDF_ARGS *args, int object)
{
    b->len = 0;
    if (putc1(b, object ? '{' : '[') != 0)
        return -1;
    for (unsigned i = 0; i < args->arg_count; i++) {
        size_t klen;
        int raw;
        const char *k = arg_key(args, i, &klen, &raw);
        if (i && putc1(b, ',') != 0)
            return -1;
        if (object) {
            if (putc1(b, '"') != 0 || put_escaped(b, k, klen, 1) != 0 ||
                put(b, "\":", 2) != 0)
                return -1;
        }
        if (put_value(b, args, i, raw) != 0)
            return -1;
    }
    return putc1(b, object ? '}' : ']');
}

/* ------------------------------------------------------------ UDF glue */

static my_bool json_init(UDF_INIT *initid, UDF_ARGS *args, char *message,
                         const char *name)
{
    struct gs_buf *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(message, MYSQL_ERRMSG_SIZE, "%s: out of memory", name);
        return 1;
    }
    struct gs_config c;
    gs_config_current(&c); /* max_payload: the cap of this statement's results */
    b->max = c.max_payload;
    /* first guess from the declared argument sizes; it grows on demand */
    size_t guess = 64;
    for (unsigned i = 0; i < args->arg_count; i++) {
        size_t l = args->lengths ? args->lengths[i] : 0;
        size_t k = args->attribute_lengths ? args->attribute_lengths[i] : 0;
        guess += (l > 4096 ? 4096 : l) + (k > 256 ? 256 : k) + 24;
    }
    if (guess > 65536)
        guess = 65536;
    if (gs_buf_reserve(b, guess) != 0) {
        free(b);
        snprintf(message, MYSQL_ERRMSG_SIZE, "%s: out of memory", name);
        return 1;
    }
    initid->ptr = (char *)b;
    initid->maybe_null = 1;
    initid->max_length = GS_MAX_PAYLOAD;
    return 0;
}

static void json_deinit(UDF_INIT *initid)
{
    struct gs_buf *b = (struct gs_buf *)initid->ptr;
    if (b) {
        gs_buf_free(b);
        free(b);
    }
    initid->ptr = NULL;
}

static char *json_row(UDF_INIT *initid, UDF_ARGS *args, unsigned long *length,
                      char *is_null, int object)
{
    struct gs_buf *b = (struct gs_buf *)initid->ptr;
    if (!b || build(b, args, object) != 0) {
        *is_null = 1;
        *length = 0;
        return NULL;
    }
    *length = (unsigned long)b->len;
    return b->p;
}

GS_EXPORT my_bool gman_json_object_init(UDF_INIT *initid, UDF_ARGS *args,
                                        char *message)
{
    return json_init(initid, args, message, "gman_json_object");
}

GS_EXPORT void gman_json_object_deinit(UDF_INIT *initid)
{
    json_deinit(initid);
}

GS_EXPORT char *gman_json_object(UDF_INIT *initid, UDF_ARGS *args,
                                 char *result, unsigned long *length,
                                 char *is_null, char *error)
{
    (void)result;
    (void)error;
    return json_row(initid, args, length, is_null, 1);
}

GS_EXPORT my_bool gman_json_array_init(UDF_INIT *initid, UDF_ARGS *args,
                                       char *message)
{
    return json_init(initid, args, message, "gman_json_array");
}

GS_EXPORT void gman_json_array_deinit(UDF_INIT *initid)
{
    json_deinit(initid);
}

GS_EXPORT char *gman_json_array(UDF_INIT *initid, UDF_ARGS *args,
                                char *result, unsigned long *length,
                                char *is_null, char *error)
{
    (void)result;
    (void)error;
    return json_row(initid, args, length, is_null, 0);
}
