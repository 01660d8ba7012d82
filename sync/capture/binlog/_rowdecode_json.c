/* sync.capture.binlog._rowdecode: MySQL's binary JSON (the JSONB format of a JSON column's value in
 * a row image) to the value the Python path gives for the same bytes: mysql-replication's
 * json_binary.parse_json (its parse_opaque replaced by decoders.decode_json_opaque), then
 * decoders.column_converter's json_text, i.e.
 *
 *   object / array, number, true / false    json.dumps(..., ensure_ascii=False, separators=(", ", ": "))
 *   a string at the top                     the string itself (valid UTF-8) or {"$b64": ...}
 *   a string inside                         decoded with errors="replace", escaped as json.dumps does
 *   null at the top                         None
 *   opaque (custom type + data)             DECIMAL: its number (1.50); DATE, TIME, DATETIME, TIMESTAMP:
 *                                           the text MySQL prints ("2024-05-01", "-01:02:03.000000",
 *                                           "2024-05-01 12:00:00.000000"; quoted inside a document); other
 *                                           types: the data decoded with errors="ignore"
 *
 * The document's layout (MySQL's json_binary.h): a type byte, then the value. Objects and arrays,
 * small (2-byte counts and offsets) or large (4-byte): element count, size in bytes, key entries
 * (offset, uint16 length) of an object, value entries (type byte + inlined literal / int16 / uint16,
 * and int32 / uint32 in a large container, or the offset of the value), all offsets from the start
 * of the container. Strings: a variable-length size (7 bits a byte, at most 5 bytes), then the bytes.
 *
 * Bounded: every count, size, offset and length is checked against the bytes of the container it
 * lies in (stricter than the Python parser, which slices silently), containers nest at most 100
 * deep (MySQL's limit), an object's keys are distinct; a malformed document sets *why and returns NULL without an exception, the
 * caller raises DecodeError naming the column.
 */
#include "_rowdecode.h"

#include <math.h>

#define JSONB_MAX_DEPTH 100

enum {
    J_SMALL_OBJECT = 0x0,
    J_LARGE_OBJECT = 0x1,
    J_SMALL_ARRAY = 0x2,
    J_LARGE_ARRAY = 0x3,
    J_LITERAL = 0x4,
    J_INT16 = 0x5,
    J_UINT16 = 0x6,
    J_INT32 = 0x7,
    J_UINT32 = 0x8,
    J_INT64 = 0x9,
    J_UINT64 = 0xA,
    J_DOUBLE = 0xB,
    J_STRING = 0xC,
    J_OPAQUE = 0xF,
};

/* the MySQL field types an opaque value names that the Python path turns into Decimal / time / datetime */
enum {
    F_DECIMAL = 0, F_TIMESTAMP = 7, F_DATE = 10, F_TIME = 11, F_DATETIME = 12, F_TIMESTAMP2 = 17, F_DATETIME2 = 18,
    F_TIME2 = 19, F_NEWDECIMAL = 246
};

typedef struct {
    char *buf;
    size_t len, cap;
    const char *why;   /* set: the document is malformed */
} json_out_t;

static int json_bad(json_out_t *o, const char *why) {
    o->why = why;
    return -1;
}

static int json_put(json_out_t *o, const char *s, size_t n) {
    if (o->cap - o->len < n) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap - o->len < n) {
            if (cap > (size_t)PY_SSIZE_T_MAX / 2) {
                PyErr_NoMemory();
                return -1;
            }
            cap *= 2;
        }
        char *b = PyMem_Realloc(o->buf, cap);
        if (b == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

#define JSON_PUT_LIT(o, s) json_put((o), (s), sizeof(s) - 1)

static uint64_t json_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* JSON string text of UTF-8 bytes s[0:n] (json.dumps with ensure_ascii=False: \" \\ \b \f \n \r \t,
 * other control characters as \u00xx, everything else as it is) */
static int put_escaped_utf8(json_out_t *o, const uint8_t *s, size_t n) {
    if (JSON_PUT_LIT(o, "\"") < 0)
        return -1;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (json_put(o, (const char *)s + run, i - run) < 0)
            return -1;
        run = i + 1;
        char esc[8];
        const char *e = esc;
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        default: snprintf(esc, sizeof esc, "\\u%04x", c); break;
        }
        if (json_put(o, e, strlen(e)) < 0)
            return -1;
    }
    if (json_put(o, (const char *)s + run, n - run) < 0)
        return -1;
    return JSON_PUT_LIT(o, "\"");
}

/* bytes s[0:n] as a JSON string, decoded as Python's bytes.decode("utf-8", errors) does; errors
 * "strict": not UTF-8 is a malformed document (an object key: the Python path's k.decode()) */
static int put_string(json_out_t *o, const uint8_t *s, size_t n, const char *errors) {
    size_t i = 0;
    while (i < n && s[i] < 0x80)
        i++;
    if (i == n)
        return put_escaped_utf8(o, s, n);
    PyObject *u = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, errors);
    if (u == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return -1;
        PyErr_Clear();
        return json_bad(o, "object key not UTF-8");
    }
    Py_ssize_t k;
    const char *t = PyUnicode_AsUTF8AndSize(u, &k);
    int rc = t == NULL ? -1 : put_escaped_utf8(o, (const uint8_t *)t, (size_t)k);
    Py_DECREF(u);
    return rc;
}

/* a string's variable-length size: 7 bits a byte, low first, at most 5 bytes; *hdr: its bytes */
static int json_varlen(json_out_t *o, const uint8_t *p, size_t n, uint64_t *len, size_t *hdr) {
    uint64_t v = 0;
    for (size_t i = 0; i < 5 && i < n; i++) {
        v |= (uint64_t)(p[i] & 0x7F) << (7 * i);
        if (!(p[i] & 0x80)) {
            *hdr = i + 1;
            if (v > n - *hdr)
                return json_bad(o, "string past the end of its container");
            *len = v;
            return 0;
        }
    }
    return json_bad(o, "string size unterminated");
}

/* an opaque value's data: p[0] the field type, then a variable-length size and the bytes */
static int opaque_data(json_out_t *o, const uint8_t *p, size_t n, int *type, const uint8_t **data, size_t *len) {
    if (n < 1)
        return json_bad(o, "opaque value past the end of its container");
    uint64_t k;
    size_t hdr;
    if (json_varlen(o, p + 1, n - 1, &k, &hdr) < 0)
        return -1;
    *type = p[0];
    *data = p + 1 + hdr;
    *len = (size_t)k;
    return 0;
}

/* an opaque value MySQL prints as a number or a date/time (the rest: its bytes as text) */
static int json_is_temporal(int t) {
    return t == F_DATE || t == F_DATETIME || t == F_DATETIME2 || t == F_TIMESTAMP || t == F_TIMESTAMP2 ||
           t == F_TIME || t == F_TIME2;
}

/* the text MySQL prints for an opaque DECIMAL (a number) or DATE / TIME / DATETIME / TIMESTAMP
 * (packed in 8 bytes: 'YYYY-MM-DD', '[-]HH:MM:SS.ffffff', 'YYYY-MM-DD HH:MM:SS.ffffff'); quoted: as
 * a JSON string (a date/time inside a document) */
static int json_opaque_text(json_out_t *o, int t, const uint8_t *d, size_t len, int quoted) {
    char buf[600];
    size_t n;
    if (!json_is_temporal(t)) {
        if (len < 2 || d[0] < 1 || d[0] > 65 || d[1] > 38 || d[1] > d[0])
            return json_bad(o, "opaque DECIMAL without a valid precision and scale");
        const char *why;
        if (rowdecode_decimal_text(d + 2, len - 2, d[0], d[1], buf, &n, &why) == 0)
            return json_bad(o, why);
        return json_put(o, buf, n);
    }
    if (len < 8)
        return json_bad(o, "opaque date/time shorter than 8 bytes");
    int64_t v = (int64_t)json_le(d, 8);
    unsigned long long m = v < 0 ? -(unsigned long long)v : (unsigned long long)v;
    unsigned long long frac = m & 0xFFFFFF, ip = m >> 24;
    if (t == F_TIME || t == F_TIME2) {
        n = (size_t)snprintf(buf, sizeof buf, "%s%02llu:%02llu:%02llu.%06llu", v < 0 ? "-" : "", (ip >> 12) & 0x3FF,
                             (ip >> 6) & 0x3F, ip & 0x3F, frac);
    } else {
        unsigned long long ymd = ip >> 17, ym = ymd >> 5, hms = ip & 0x1FFFF;
        n = (size_t)snprintf(buf, sizeof buf, "%04llu-%02llu-%02llu", ym / 13, ym % 13, ymd & 0x1F);
        if (t != F_DATE)
            n += (size_t)snprintf(buf + n, sizeof buf - n, " %02llu:%02llu:%02llu.%06llu", hms >> 12,
                                  (hms >> 6) & 0x3F, hms & 0x3F, frac);
    }
    return quoted ? put_escaped_utf8(o, (const uint8_t *)buf, n) : json_put(o, buf, n);
}

static int json_is_printed(int t) { return json_is_temporal(t) || t == F_DECIMAL || t == F_NEWDECIMAL; }

static int json_put_number(json_out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int json_put_number(json_out_t *o, const char *fmt, ...) {
    char b[32];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    return json_put(o, b, (size_t)k);
}

static int put_double(json_out_t *o, const uint8_t *p) {
    uint64_t u = json_le(p, 8);
    double d;
    memcpy(&d, &u, 8);
    if (isnan(d))
        return JSON_PUT_LIT(o, "NaN");
    if (isinf(d))
        return d > 0 ? JSON_PUT_LIT(o, "Infinity") : JSON_PUT_LIT(o, "-Infinity");
    char *s = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);   /* float.__repr__ */
    if (s == NULL)
        return -1;
    int rc = json_put(o, s, strlen(s));
    PyMem_Free(s);
    return rc;
}

static int json_emit(json_out_t *o, int type, const uint8_t *p, size_t n, int depth);

/* an object or array: p[0:n] the bytes from its start to the end of the container it lies in */
/* An object's keys (entries of kes bytes at keys; offsets from p, within size) all lie inside it
 * and no two are equal: the Python path builds a dict (a repeated key: printed once, at its first
 * place, with its last value), so a document with one is refused here. MySQL writes the keys
 * sorted (by length, then bytes): a sorted object is checked in one pass, any other one with a set. */
static int json_keys_checked(json_out_t *o, const uint8_t *p, uint64_t size, const uint8_t *keys, uint64_t count,
                             int osz) {
    int sorted = 1;
    uint64_t kes = (uint64_t)osz + 2, plen = 0, poff = 0;
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *e = keys + i * kes;
        uint64_t koff = json_le(e, osz), klen = json_le(e + osz, 2);
        if (koff > size || klen > size - koff)
            return json_bad(o, "object key past the container's size");
        if (i && sorted && (klen < plen || (klen == plen && memcmp(p + koff, p + poff, (size_t)klen) <= 0)))
            sorted = 0;
        plen = klen;
        poff = koff;
    }
    if (sorted)
        return 0;
    PyObject *seen = PySet_New(NULL);
    if (seen == NULL)
        return -1;
    int rc = 0;
    for (uint64_t i = 0; i < count && rc == 0; i++) {
        const uint8_t *e = keys + i * kes;
        PyObject *k = PyBytes_FromStringAndSize((const char *)p + json_le(e, osz), (Py_ssize_t)json_le(e + osz, 2));
        int has = k == NULL ? -1 : PySet_Contains(seen, k);
        rc = has < 0 ? -1 : has ? json_bad(o, "object key repeated") : PySet_Add(seen, k);
        Py_XDECREF(k);
    }
    Py_DECREF(seen);
    return rc;
}

static int json_container(json_out_t *o, const uint8_t *p, size_t n, int large, int object, int depth) {
    if (depth >= JSONB_MAX_DEPTH)
        return json_bad(o, "nested deeper than 100");
    int osz = large ? 4 : 2;
    if (n < (size_t)(2 * osz))
        return json_bad(o, "container header past the end");
    uint64_t count = json_le(p, osz), size = json_le(p + osz, osz);
    if (size > n)
        return json_bad(o, "container size past the end");
    uint64_t kes = object ? (uint64_t)(osz + 2) : 0, ves = (uint64_t)(1 + osz);
    if (2 * (uint64_t)osz + count * (kes + ves) > size)
        return json_bad(o, "container entries past its size");
    const uint8_t *keys = p + 2 * osz, *vals = keys + count * kes;
    if ((object && json_keys_checked(o, p, size, keys, count, osz) < 0) || json_put(o, object ? "{" : "[", 1) < 0)
        return -1;
    for (uint64_t i = 0; i < count; i++) {
        if (i && JSON_PUT_LIT(o, ", ") < 0)
            return -1;
        if (object) {
            const uint8_t *e = keys + i * kes;
            if (put_string(o, p + json_le(e, osz), (size_t)json_le(e + osz, 2), "strict") < 0 || JSON_PUT_LIT(o, ": ") < 0)
                return -1;
        }
        const uint8_t *e = vals + i * ves;
        int t = e[0];
        int inlined = t == J_LITERAL || t == J_INT16 || t == J_UINT16 || (large && (t == J_INT32 || t == J_UINT32));
        if (inlined) {
            if (json_emit(o, t, e + 1, (size_t)(ves - 1), depth + 1) < 0)
                return -1;
            continue;
        }
        uint64_t off = json_le(e + 1, osz);
        if (off >= size)
            return json_bad(o, "value offset past the container's size");
        if (json_emit(o, t, p + off, (size_t)(size - off), depth + 1) < 0)
            return -1;
    }
    return json_put(o, object ? "}" : "]", 1);
}

/* the JSON text of one value of type `type` whose bytes start at p (n: to the end of its container) */
static int json_emit(json_out_t *o, int type, const uint8_t *p, size_t n, int depth) {
    static const size_t width[] = {[J_INT16] = 2, [J_UINT16] = 2, [J_INT32] = 4, [J_UINT32] = 4,
                                   [J_INT64] = 8, [J_UINT64] = 8, [J_DOUBLE] = 8, [J_LITERAL] = 1};
    if (type >= J_LITERAL && type <= J_DOUBLE && n < width[type])
        return json_bad(o, "scalar past the end of its container");
    switch (type) {
    case J_SMALL_OBJECT: case J_LARGE_OBJECT: case J_SMALL_ARRAY: case J_LARGE_ARRAY:
        return json_container(o, p, n, type & 1, type < J_SMALL_ARRAY, depth);
    case J_LITERAL:
        switch (p[0]) {
        case 0: return JSON_PUT_LIT(o, "null");
        case 1: return JSON_PUT_LIT(o, "true");
        case 2: return JSON_PUT_LIT(o, "false");
        default: return json_bad(o, "unknown literal");
        }
    case J_INT16: return json_put_number(o, "%d", (int)(int16_t)(uint16_t)json_le(p, 2));
    case J_UINT16: return json_put_number(o, "%u", (unsigned)json_le(p, 2));
    case J_INT32: return json_put_number(o, "%ld", (long)(int32_t)(uint32_t)json_le(p, 4));
    case J_UINT32: return json_put_number(o, "%lu", (unsigned long)json_le(p, 4));
    case J_INT64: return json_put_number(o, "%lld", (long long)(int64_t)json_le(p, 8));
    case J_UINT64: return json_put_number(o, "%llu", (unsigned long long)json_le(p, 8));
    case J_DOUBLE: return put_double(o, p);
    case J_STRING: {
        uint64_t len;
        size_t hdr;
        if (json_varlen(o, p, n, &len, &hdr) < 0)
            return -1;
        return put_string(o, p + hdr, (size_t)len, "replace");
    }
    case J_OPAQUE: {
        int t;
        const uint8_t *d;
        size_t len;
        if (opaque_data(o, p, n, &t, &d, &len) < 0)
            return -1;
        if (json_is_printed(t))
            return json_opaque_text(o, t, d, len, 1);
        return put_string(o, d, len, "ignore");
    }
    default:
        return json_bad(o, "unknown value type");
    }
}

PyObject *rowdecode_json(const uint8_t *doc, size_t n, const char **why) {
    *why = NULL;
    if (n == 0)
        Py_RETURN_NONE;   /* the library's "NULL value" */
    int type = doc[0];
    const uint8_t *p = doc + 1;
    size_t m = n - 1;
    json_out_t o = {NULL, 0, 0, NULL};
    if (type == J_LITERAL && m >= 1 && p[0] == 0)
        Py_RETURN_NONE;   /* parse_json gives None: the converter is never called */
    if (type == J_STRING) {
        uint64_t len;
        size_t hdr;
        if (json_varlen(&o, p, m, &len, &hdr) < 0) {
            *why = o.why;
            return NULL;
        }
        return rowdecode_bytes_value(p + hdr, (size_t)len);   /* canonical_value of the bytes */
    }
    int t = 0;
    const uint8_t *d = NULL;
    size_t len = 0;
    if (type == J_OPAQUE) {
        if (opaque_data(&o, p, m, &t, &d, &len) < 0) {
            *why = o.why;
            return NULL;
        }
        if (!json_is_printed(t))
            return PyUnicode_DecodeUTF8((const char *)d, (Py_ssize_t)len, "ignore");
    }
    PyObject *out = NULL;
    if (type == J_OPAQUE ? json_opaque_text(&o, t, d, len, 0) == 0 : json_emit(&o, type, p, m, 0) == 0)
        out = PyUnicode_DecodeUTF8(o.buf, (Py_ssize_t)o.len, "strict");
    PyMem_Free(o.buf);
    *why = o.why;
    return out;
}
