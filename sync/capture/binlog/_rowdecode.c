/* sync.capture.binlog._rowdecode: binlog WRITE/UPDATE/DELETE_ROWS event bodies (v1 and v2: the
 * body after the columns-present bitmaps is the same) straight to the canonical row values of
 * sync.capture.binlog.decoders.RowPlan.row().
 *
 *   Decoder(spec, marker)            spec: one tuple per table-map column, built by decoders.py:
 *                                    (op, name or None (not wanted), a, b, obj)
 *   Decoder.decode(data, start, end, bitmap1, bitmap2 or None) -> list of row dicts in the shape
 *   of mysql-replication's RowsEvent.rows ("values" / "before_values" + "after_values"), whose
 *   *none_sources entries are `marker`: RowPlan.row() passes such rows through unchanged.
 *
 * The bytes come from the network: every read is checked against the end of the event first;
 * anything malformed raises DecodeError (a ValueError) naming the column and the offset. Never a
 * read past `end`, never a wrong value: what the Python path would refuse (an ENUM index past the
 * list, a DECIMAL digit group past 999999999, a fraction past 999999 µs) is refused here too.
 *
 * What each op produces is what the Python path (mysql-replication + decoders.py's fixes and
 * converters) produces for the same bytes; tests/unit/test_rowdecode*.py and
 * tests/integration/test_rowdecode*.py compare the two.
 */
#include "_rowdecode.h"

enum {
    OP_INT = 1,        /* a: width 1,2,3,4,8 (little endian); b: unsigned */
    OP_YEAR = 2,       /* 1 byte: 0 -> 0, else 1900 + v */
    OP_FLOAT = 3,      /* 4 bytes IEEE single, widened */
    OP_DOUBLE = 4,     /* 8 bytes IEEE double */
    OP_DECIMAL = 5,    /* a: precision, b: scale -> text with exactly b decimals */
    OP_BIT = 6,        /* a: bytes (1..8), b: bits kept of the first byte (1..8) */
    OP_ENUM = 7,       /* a: index width; obj: tuple of the output values, index 0 = '' */
    OP_SET = 8,        /* a: bitmask width; obj: tuple of member names (or None: always '') */
    OP_DATE = 9,       /* 3 bytes */
    OP_DATETIME = 10,  /* 8 bytes, old decimal-packed DATETIME */
    OP_DATETIME2 = 11, /* a: fsp */
    OP_TIMESTAMP = 12, /* 4 bytes LE, old */
    OP_TIMESTAMP2 = 13,/* a: fsp */
    OP_TIME = 14,      /* 3 bytes, old */
    OP_TIME2 = 15,     /* a: fsp */
    OP_STR = 16,       /* a: length width 1..4; b: BINARY(n) pad width or 0; obj: encoding or None (bytes) */
    OP_ENUM_NONE = 17, /* a: index width; no enum values known: None */
    OP_JSON = 18,      /* a: length width 1..4; MySQL's binary JSON (_rowdecode_json.c) */
};

static PyObject *DecodeError;

typedef struct {
    int op;
    int a, b;
    PyObject *name;      /* borrowed from spec (spec kept alive), or NULL: not wanted */
    PyObject *obj;       /* borrowed from spec */
    const char *enc;     /* UTF-8 of obj when OP_STR decodes, else NULL */
    int utf8;            /* enc is utf8: the fast decoder */
} col_t;

struct Decoder {
    PyObject_HEAD
    PyObject *spec;
    PyObject *marker;
    Py_ssize_t ncols;
    col_t *cols;
};

static PyObject *k_values, *k_none_sources, *k_before_values, *k_before_none, *k_after_values, *k_after_none,
    *k_b64, *s_empty;

/* -- bounded reader ------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t pos, end, base;   /* base: where the row data starts (errors count from there) */
    const char *part;     /* what is being read, for errors, when not a column's value */
    PyObject *col;        /* else the column's name (borrowed; NULL: a column not synced) */
} rd_t;

static int fail(rd_t *r, const char *what) {
    if (r->part != NULL)
        PyErr_Format(DecodeError, "%s: %s at byte %zu of the row data", r->part, what, r->pos - r->base);
    else if (r->col != NULL)
        PyErr_Format(DecodeError, "column %R: %s at byte %zu of the row data", r->col, what, r->pos - r->base);
    else
        PyErr_Format(DecodeError, "a column not synced: %s at byte %zu of the row data", what, r->pos - r->base);
    return -1;
}

static int need(rd_t *r, size_t k) {
    if (r->end - r->pos < k)
        return fail(r, "row data ends early");
    return 0;
}

/* the next k bytes (the position moves past them), or NULL with DecodeError set */
static const uint8_t *take(rd_t *r, size_t k) {
    if (need(r, k) < 0)
        return NULL;
    const uint8_t *p = r->p + r->pos;
    r->pos += k;
    return p;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* a value of `width` length bytes (little endian) and then that many bytes: those bytes, or NULL */
static const uint8_t *take_counted(rd_t *r, int width, size_t *len) {
    const uint8_t *p = take(r, (size_t)width);
    if (p == NULL)
        return NULL;
    *len = (size_t)le(p, width);
    return take(r, *len);
}

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* -- text helpers --------------------------------------------------------------------------- */

static void frac_digits(char *out, unsigned long micro, int fsp) {
    /* f".{micro:06d}"[: fsp + 1] if fsp else "" */
    if (!fsp) {
        out[0] = 0;
        return;
    }
    char tmp[32];
    snprintf(tmp, sizeof tmp, ".%06lu", micro);
    tmp[fsp + 1] = 0;
    strcpy(out, tmp);
}

static PyObject *datetime_text(long long y, long long mo, long long d, long long h, long long mi, long long s,
                               unsigned long micro, int fsp) {
    char buf[160], fr[32];
    frac_digits(fr, micro, fsp);
    snprintf(buf, sizeof buf, "%04lld-%02lld-%02lld %02lld:%02lld:%02lld%s", y, mo, d, h, mi, s, fr);
    return PyUnicode_FromString(buf);
}

/* '[-]HH:MM:SS[.f]' from a signed microsecond count (sync.rows.rowcodec.normalize_value of a timedelta) */
static PyObject *time_text(long long total_us, int fsp) {
    const char *sign = total_us < 0 ? "-" : "";
    unsigned long long t = total_us < 0 ? (unsigned long long)(-total_us) : (unsigned long long)total_us;
    unsigned long long secs = t / 1000000ULL, micro = t % 1000000ULL;
    char buf[96], fr[32];
    frac_digits(fr, (unsigned long)micro, fsp);
    snprintf(buf, sizeof buf, "%s%02llu:%02llu:%02llu%s", sign, secs / 3600, (secs % 3600) / 60, secs % 60, fr);
    return PyUnicode_FromString(buf);
}

/* days since 1970-01-01 -> civil date (proleptic Gregorian) */
static void civil(long long z, long long *y, long long *m, long long *d) {
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long yy = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yy + (*m <= 2);
}

static PyObject *unix_text(long long secs, unsigned long micro, int fsp) {
    /* TIMESTAMP: the library's utcfromtimestamp; epoch 0 is MySQL's zero TIMESTAMP */
    if (secs == 0 && micro == 0)
        return datetime_text(0, 0, 0, 0, 0, 0, 0, fsp);
    long long days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    long long rem = secs - days * 86400;
    long long y, m, d;
    civil(days, &y, &m, &d);
    return datetime_text(y, m, d, rem / 3600, (rem % 3600) / 60, rem % 60, micro, fsp);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* bytes -> str when valid UTF-8, else {"$b64": ...} (sync.rows.rowcodec.normalize_value) */
PyObject *rowdecode_bytes_value(const uint8_t *p, size_t n) {
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
    if (s != NULL || !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        return s;
    PyErr_Clear();
    size_t olen = 4 * ((n + 2) / 3);
    PyObject *text = PyUnicode_New((Py_ssize_t)olen, 127);
    if (text == NULL)
        return NULL;
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(text);
    size_t i = 0, j = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        o[j++] = B64[v >> 18];
        o[j++] = B64[(v >> 12) & 63];
        o[j++] = B64[(v >> 6) & 63];
        o[j++] = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        o[j++] = B64[v >> 18];
        o[j++] = B64[(v >> 12) & 63];
        o[j++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        o[j++] = '=';
    }
    PyObject *d = PyDict_New();
    if (d == NULL || PyDict_SetItem(d, k_b64, text) < 0) {
        Py_XDECREF(d);
        Py_DECREF(text);
        return NULL;
    }
    Py_DECREF(text);
    return d;
}

/* -- DECIMAL -------------------------------------------------------------------------------- */

static const int DIG2BYTES[10] = {0, 1, 1, 2, 2, 3, 3, 4, 4, 4};
static const uint32_t POW10[10] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000};

/* The text of a binary DECIMAL(precision, scale) at p (avail bytes there): at most 512 bytes in
 * out, its length in *len; returns the bytes read, or 0 with *why set. */
size_t rowdecode_decimal_text(const uint8_t *p, size_t avail, int precision, int scale, char *out, size_t *len,
                              const char **why) {
    int intg = precision - scale;
    int intg0 = intg / 9, intg0x = intg % 9, frac0 = scale / 9, frac0x = scale % 9;
    size_t size = (size_t)(intg0 * 4 + DIG2BYTES[intg0x] + frac0 * 4 + DIG2BYTES[frac0x]);
    uint8_t b[160];
    *why = size == 0 ? "DECIMAL of no digits" : size > sizeof b ? "DECIMAL too wide"
         : avail < size ? "DECIMAL data ends early" : NULL;
    if (*why != NULL)
        return 0;
    memcpy(b, p, size);
    int negative = !(b[0] & 0x80);
    uint8_t mask = negative ? 0xFF : 0x00;
    b[0] ^= 0x80;
    for (size_t i = 0; i < size; i++)
        b[i] ^= mask;
    /* digits: at most 9 per group, 2 + 9 * groups + '.' */
    size_t n = 0, k = 0;
    char digits[400];
    size_t nd = 0;
    *why = "DECIMAL digit group out of range";
    if (DIG2BYTES[intg0x]) {
        uint32_t v = (uint32_t)be(b, DIG2BYTES[intg0x]);
        if (v >= POW10[intg0x])
            return 0;
        nd += (size_t)snprintf(digits + nd, sizeof digits - nd, "%u", v);
        k += (size_t)DIG2BYTES[intg0x];
    }
    for (int i = 0; i < intg0; i++, k += 4) {
        uint32_t v = (uint32_t)be(b + k, 4);
        if (v > 999999999u)
            return 0;
        nd += (size_t)snprintf(digits + nd, sizeof digits - nd, "%09u", v);
    }
    if (negative)
        out[n++] = '-';
    size_t lead = 0;
    while (lead < nd && digits[lead] == '0')
        lead++;
    if (lead == nd)
        out[n++] = '0';
    else {
        memcpy(out + n, digits + lead, nd - lead);
        n += nd - lead;
    }
    if (scale) {
        out[n++] = '.';
        for (int i = 0; i < frac0; i++, k += 4) {
            uint32_t v = (uint32_t)be(b + k, 4);
            if (v > 999999999u)
                return 0;
            n += (size_t)snprintf(out + n, 512 - n, "%09u", v);
        }
        if (frac0x) {
            uint32_t v = (uint32_t)be(b + k, DIG2BYTES[frac0x]);
            if (v >= POW10[frac0x])
                return 0;
            n += (size_t)snprintf(out + n, 512 - n, "%0*u", frac0x, v);
        }
    }
    *why = NULL;
    *len = n;
    return size;
}

static PyObject *read_decimal(rd_t *r, int precision, int scale) {
    char out[512];
    size_t n;
    const char *why;
    int intg = precision - scale;
    if (need(r, (size_t)(intg / 9 * 4 + DIG2BYTES[intg % 9] + scale / 9 * 4 + DIG2BYTES[scale % 9])) < 0)
        return NULL;
    size_t size = rowdecode_decimal_text(r->p + r->pos, r->end - r->pos, precision, scale, out, &n, &why);
    if (size == 0)
        return fail(r, why), NULL;
    r->pos += size;
    return PyUnicode_FromStringAndSize(out, (Py_ssize_t)n);
}

/* -- one value ------------------------------------------------------------------------------ */

static unsigned long fsp_bytes(int fsp) { return (unsigned long)((fsp + 1) / 2); }

static PyObject *read_value(rd_t *r, const col_t *c) {
    const uint8_t *p;
    switch (c->op) {
    case OP_INT: {
        if ((p = take(r, (size_t)c->a)) == NULL)
            return NULL;
        uint64_t u = le(p, c->a);
        if (c->b)
            return PyLong_FromUnsignedLongLong(u);
        int bits = 8 * c->a;
        int64_t v = bits == 64 ? (int64_t)u : (int64_t)(u ^ (1ULL << (bits - 1))) - (int64_t)(1ULL << (bits - 1));
        return PyLong_FromLongLong(v);
    }
    case OP_YEAR:
        if (need(r, 1) < 0)
            return NULL;
        p = r->p + r->pos++;
        return PyLong_FromLong(p[0] ? 1900 + p[0] : 0);
    case OP_FLOAT: {
        if (need(r, 4) < 0)
            return NULL;
        uint32_t u = (uint32_t)le(r->p + r->pos, 4);
        float f;
        memcpy(&f, &u, 4);
        r->pos += 4;
        return PyFloat_FromDouble((double)f);
    }
    case OP_DOUBLE: {
        if (need(r, 8) < 0)
            return NULL;
        uint64_t u = le(r->p + r->pos, 8);
        double d;
        memcpy(&d, &u, 8);
        r->pos += 8;
        return PyFloat_FromDouble(d);
    }
    case OP_DECIMAL:
        return read_decimal(r, c->a, c->b);
    case OP_BIT: {
        if ((p = take(r, (size_t)c->a)) == NULL)
            return NULL;
        uint64_t v = p[0] & ((1u << c->b) - 1u);
        for (int i = 1; i < c->a; i++)
            v = (v << 8) | p[i];
        return PyLong_FromUnsignedLongLong(v);
    }
    case OP_ENUM:
    case OP_ENUM_NONE: {
        if (need(r, (size_t)c->a) < 0)
            return NULL;
        uint64_t i = le(r->p + r->pos, c->a);
        r->pos += (size_t)c->a;
        if (c->op == OP_ENUM_NONE)
            Py_RETURN_NONE;
        if (i >= (uint64_t)PyTuple_GET_SIZE(c->obj))
            return fail(r, "ENUM index past the column's values"), NULL;
        PyObject *v = PyTuple_GET_ITEM(c->obj, (Py_ssize_t)i);
        Py_INCREF(v);
        return v;
    }
    case OP_SET: {
        if (need(r, (size_t)c->a) < 0)
            return NULL;
        uint64_t m = le(r->p + r->pos, c->a);
        r->pos += (size_t)c->a;
        if (c->obj == Py_None || m == 0) {
            Py_INCREF(s_empty);
            return s_empty;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(c->obj);
        PyObject *parts = PyList_New(0);
        if (parts == NULL)
            return NULL;
        for (Py_ssize_t i = 0; i < n && i < 64; i++) {
            if (m & (1ULL << i)) {
                if (PyList_Append(parts, PyTuple_GET_ITEM(c->obj, i)) < 0) {
                    Py_DECREF(parts);
                    return NULL;
                }
            }
        }
        PyObject *sep = PyUnicode_FromString(",");
        PyObject *out = sep ? PyUnicode_Join(sep, parts) : NULL;
        Py_XDECREF(sep);
        Py_DECREF(parts);
        return out;
    }
    case OP_DATE: {
        if (need(r, 3) < 0)
            return NULL;
        uint32_t v = (uint32_t)le(r->p + r->pos, 3);
        r->pos += 3;
        char buf[48];
        snprintf(buf, sizeof buf, "%04u-%02u-%02u", v >> 9, (v >> 5) & 0xF, v & 0x1F);
        return PyUnicode_FromString(buf);
    }
    case OP_DATETIME: {
        if (need(r, 8) < 0)
            return NULL;
        uint64_t v = le(r->p + r->pos, 8);
        r->pos += 8;
        uint64_t d = v / 1000000, t = v % 1000000;
        return datetime_text((long long)(d / 10000), (long long)((d / 100) % 100), (long long)(d % 100),
                             (long long)(t / 10000), (long long)((t / 100) % 100), (long long)(t % 100), 0, 0);
    }
    case OP_DATETIME2: {
        size_t nb = fsp_bytes(c->a);
        if ((p = take(r, 5 + nb)) == NULL)
            return NULL;
        int64_t v = (int64_t)be(p, 5) - (int64_t)0x8000000000LL;
        /* Python's >> on a negative number: arithmetic; the masks make the results equal */
        uint64_t uv = (uint64_t)v;
        long long ym = (long long)((v < 0 ? ~(~uv >> 22) : uv >> 22) & 0x1FFFF);
        long long day = (long long)((uv >> 17) & 0x1F), h = (long long)((uv >> 12) & 0x1F);
        long long mi = (long long)((uv >> 6) & 0x3F), s = (long long)(uv & 0x3F);
        unsigned long micro = 0;
        if (nb)
            micro = (unsigned long)be(p + 5, (int)nb) * POW10[6 - 2 * nb];
        return datetime_text(ym / 13, ym % 13, day, h, mi, s, micro, c->a);
    }
    case OP_TIMESTAMP: {
        if (need(r, 4) < 0)
            return NULL;
        uint32_t v = (uint32_t)le(r->p + r->pos, 4);
        r->pos += 4;
        return unix_text((long long)v, 0, 0);
    }
    case OP_TIMESTAMP2: {
        size_t nb = fsp_bytes(c->a);
        if ((p = take(r, 4 + nb)) == NULL)
            return NULL;
        int32_t secs = (int32_t)(uint32_t)be(p, 4);
        long long m = 0;
        if (nb) {
            /* the library's signed big-endian read, and its odd-fsp truncation */
            uint64_t u = be(p + 4, (int)nb);
            int bits = 8 * (int)nb;
            m = (long long)(u ^ (1ULL << (bits - 1))) - (long long)(1ULL << (bits - 1));
            if (c->a % 2)
                m /= 10;
            m *= (long long)POW10[6 - c->a];
        }
        if (m > 999999)
            return fail(r, "TIMESTAMP fraction past 999999 microseconds"), NULL;
        return unix_text(secs, m > 0 ? (unsigned long)m : 0, c->a);
    }
    case OP_TIME: {
        if (need(r, 3) < 0)
            return NULL;
        long long t = (long long)le(r->p + r->pos, 3);
        r->pos += 3;
        return time_text(((t / 10000) * 3600 + ((t % 10000) / 100) * 60 + t % 100) * 1000000LL, 0);
    }
    case OP_TIME2: {
        int fsp = c->a;
        size_t nb = fsp_bytes(fsp);
        if ((p = take(r, 3 + nb)) == NULL)
            return NULL;
        int64_t raw = (int64_t)be(p, 3);
        int64_t intpart = raw - 0x800000;
        int64_t packed;
        if (nb == 1 || nb == 2) {
            /* the fraction counts 1/100 s (fsp 1-2) or 1/10000 s (3-4); negative: borrowed from the seconds */
            int64_t frac = (int64_t)be(p + 3, (int)nb);
            if (intpart < 0 && frac) {
                intpart += 1;
                frac -= (int64_t)1 << (8 * nb);
            }
            packed = intpart * (1LL << 24) + frac * (nb == 1 ? 10000 : 100);
        } else if (nb == 3) {
            packed = (int64_t)((raw << 24) | (int64_t)be(p + 3, 3)) - 0x800000000000LL;
        } else {
            packed = intpart * (1LL << 24);
        }
        int64_t sign = packed < 0 ? -1 : 1;
        uint64_t m = (uint64_t)(packed < 0 ? -packed : packed);
        uint64_t hms = m >> 24, micro = m & 0xFFFFFF;
        long long hours = (long long)((hms >> 12) & 0x3FF), minutes = (long long)((hms >> 6) & 0x3F);
        long long seconds = (long long)(hms & 0x3F);
        long long total = ((hours * 3600 + minutes * 60 + seconds) * 1000000LL + (long long)micro) * sign;
        return time_text(total, fsp);
    }
    case OP_STR: {
        size_t len;
        if ((p = take_counted(r, c->a, &len)) == NULL)
            return NULL;
        if (c->enc != NULL) {
            if (c->utf8)
                return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)len, "strict");
            return PyUnicode_Decode((const char *)p, (Py_ssize_t)len, c->enc, "strict");
        }
        if (c->b > 0 && len < (size_t)c->b) {
            /* BINARY(n): the row image drops the trailing 0x00 pad bytes; MySQL returns all n */
            uint8_t *padded = PyMem_Calloc((size_t)c->b, 1);
            if (padded == NULL)
                return PyErr_NoMemory();
            if (len)
                memcpy(padded, p, len);
            PyObject *v = rowdecode_bytes_value(padded, (size_t)c->b);
            PyMem_Free(padded);
            return v;
        }
        return rowdecode_bytes_value(p, len);
    }
    case OP_JSON: {
        size_t len;
        if ((p = take_counted(r, c->a, &len)) == NULL)
            return NULL;
        if (c->name == NULL)
            Py_RETURN_NONE;   /* a column not synced: its document is skipped, not parsed */
        const char *why;
        PyObject *v = rowdecode_json(p, len, &why);
        if (v == NULL && why != NULL) {
            char msg[128];
            snprintf(msg, sizeof msg, "malformed JSON document (%s)", why);
            r->pos -= len;
            return fail(r, msg), NULL;
        }
        return v;
    }
    default:
        return fail(r, "unknown decoder op"), NULL;
    }
}

/* -- rows ----------------------------------------------------------------------------------- */

static size_t popcount_bytes(const uint8_t *b, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += (size_t)__builtin_popcount(b[i]);
    return c;
}

/* One row image: the NULL bitmap, then the present columns' values. */
static PyObject *read_image(Decoder *self, rd_t *r, const uint8_t *present, size_t present_len) {
    size_t nullbytes = (popcount_bytes(present, present_len) + 7) / 8;
    r->part = "NULL bitmap";
    if (need(r, nullbytes) < 0)
        return NULL;
    r->part = NULL;
    const uint8_t *nulls = r->p + r->pos;
    r->pos += nullbytes;
    PyObject *row = PyDict_New();
    if (row == NULL)
        return NULL;
    size_t ni = 0;
    for (Py_ssize_t i = 0; i < self->ncols; i++) {
        const col_t *c = &self->cols[i];
        PyObject *v;
        r->col = c->name;
        if (!(present[i >> 3] & (1u << (i & 7)))) {
            v = Py_None;
            Py_INCREF(v);
        } else {
            size_t j = ni++;
            if (nulls[j >> 3] & (1u << (j & 7))) {
                v = Py_None;
                Py_INCREF(v);
            } else if ((v = read_value(r, c)) == NULL) {
                if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    PyObject *t, *val, *tb;
                    PyErr_Fetch(&t, &val, &tb);
                    PyErr_NormalizeException(&t, &val, &tb);
                    PyErr_Format(DecodeError, "column %R: %S", r->col ? r->col : Py_None, val);
                    Py_XDECREF(t);
                    Py_XDECREF(val);
                    Py_XDECREF(tb);
                }
                goto error;
            }
        }
        if (c->name != NULL && PyDict_SetItem(row, c->name, v) < 0) {
            Py_DECREF(v);
            goto error;
        }
        Py_DECREF(v);
    }
    return row;
error:
    Py_DECREF(row);
    return NULL;
}

PyObject *rowdecode_rows(Decoder *self, const uint8_t *data, size_t start, size_t end, const uint8_t *bm1,
                               size_t bm1_len, const uint8_t *bm2, size_t bm2_len, int update) {
    size_t need_bm = (size_t)(self->ncols + 7) / 8;
    if (bm1_len < need_bm || (update && bm2_len < need_bm)) {
        PyErr_Format(DecodeError, "columns-present bitmap of %zu bytes for %zd columns", update ? bm2_len : bm1_len,
                     self->ncols);
        return NULL;
    }
    rd_t r = {data, start, end, start, NULL, NULL};
    PyObject *rows = PyList_New(0);
    if (rows == NULL)
        return NULL;
    while (r.pos < r.end) {
        size_t row_start = r.pos;
        PyObject *item = PyDict_New();
        if (item == NULL)
            goto error;
        PyObject *a = read_image(self, &r, bm1, bm1_len);
        if (a == NULL || PyDict_SetItem(item, update ? k_before_values : k_values, a) < 0 ||
            PyDict_SetItem(item, update ? k_before_none : k_none_sources, self->marker) < 0) {
            Py_XDECREF(a);
            Py_DECREF(item);
            goto error;
        }
        Py_DECREF(a);
        if (update) {
            PyObject *b = read_image(self, &r, bm2, bm2_len);
            if (b == NULL || PyDict_SetItem(item, k_after_values, b) < 0 ||
                PyDict_SetItem(item, k_after_none, self->marker) < 0) {
                Py_XDECREF(b);
                Py_DECREF(item);
                goto error;
            }
            Py_DECREF(b);
        }
        if (r.pos == row_start) {
            /* no column present: a row of no bytes, and the rest of the event would never end */
            Py_DECREF(item);
            r.part = "row";
            fail(&r, "a row of no columns");
            goto error;
        }
        if (PyList_Append(rows, item) < 0) {
            Py_DECREF(item);
            goto error;
        }
        Py_DECREF(item);
    }
    return rows;
error:
    Py_DECREF(rows);
    return NULL;
}

Py_ssize_t rowdecode_ncols(Decoder *self) { return self->ncols; }

static PyObject *Decoder_decode(Decoder *self, PyObject *args) {
    Py_buffer data, bm1, bm2 = {0};
    Py_ssize_t start, end;
    PyObject *bm2_obj;
    if (!PyArg_ParseTuple(args, "y*nny*O", &data, &start, &end, &bm1, &bm2_obj))
        return NULL;
    PyObject *out = NULL;
    int update = bm2_obj != Py_None;
    if (update && PyObject_GetBuffer(bm2_obj, &bm2, PyBUF_SIMPLE) < 0)
        goto done;
    if (start < 0 || end < start || end > data.len) {
        PyErr_Format(DecodeError, "row data %zd..%zd outside the event's %zd bytes", start, end, data.len);
        goto done;
    }
    out = rowdecode_rows(self, data.buf, (size_t)start, (size_t)end, bm1.buf, (size_t)bm1.len, bm2.buf,
                        (size_t)bm2.len, update);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&bm1);
    if (update && bm2.obj != NULL)
        PyBuffer_Release(&bm2);
    return out;
}

/* -- the Decoder type: a compiled spec ------------------------------------------------------ */

static int spec_error(Py_ssize_t i, const char *what) {
    PyErr_Format(PyExc_ValueError, "rowdecode spec column %zd: %s", i, what);
    return -1;
}

static int check_col(Py_ssize_t i, col_t *c) {
    switch (c->op) {
    case OP_INT:
        if (c->a != 1 && c->a != 2 && c->a != 3 && c->a != 4 && c->a != 8)
            return spec_error(i, "integer width");
        return 0;
    case OP_YEAR: case OP_FLOAT: case OP_DOUBLE: case OP_DATE: case OP_DATETIME: case OP_TIMESTAMP: case OP_TIME:
        return 0;
    case OP_DECIMAL:
        if (c->a < 1 || c->a > 65 || c->b < 0 || c->b > 38 || c->b > c->a)
            return spec_error(i, "DECIMAL precision/scale");
        return 0;
    case OP_BIT:
        if (c->a < 1 || c->a > 8 || c->b < 1 || c->b > 8)
            return spec_error(i, "BIT width");
        return 0;
    case OP_ENUM:
        if (!PyTuple_Check(c->obj))
            return spec_error(i, "ENUM values");
        /* fall through */
    case OP_ENUM_NONE:
        if (c->a < 1 || c->a > 8)
            return spec_error(i, "ENUM width");
        return 0;
    case OP_SET:
        if (c->a < 1 || c->a > 8 || (c->obj != Py_None && !PyTuple_Check(c->obj)))
            return spec_error(i, "SET width or members");
        return 0;
    case OP_DATETIME2: case OP_TIMESTAMP2: case OP_TIME2:
        if (c->a < 0 || c->a > 6)
            return spec_error(i, "fsp");
        return 0;
    case OP_JSON:
        if (c->a < 1 || c->a > 4)
            return spec_error(i, "JSON length width");
        return 0;
    case OP_STR:
        if (c->a < 1 || c->a > 4 || c->b < 0 || c->b > 65535)
            return spec_error(i, "string length width");
        if (c->obj != Py_None) {
            if (!PyUnicode_Check(c->obj))
                return spec_error(i, "encoding");
            c->enc = PyUnicode_AsUTF8(c->obj);
            if (c->enc == NULL)
                return -1;
            c->utf8 = strcmp(c->enc, "utf8") == 0 || strcmp(c->enc, "utf-8") == 0;
        }
        return 0;
    default:
        return spec_error(i, "unknown op");
    }
}

static int Decoder_init(Decoder *self, PyObject *args, PyObject *kw) {
    PyObject *spec, *marker;
    static char *kwlist[] = {"spec", "marker", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O", kwlist, &PyTuple_Type, &spec, &marker))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(spec);
    col_t *cols = PyMem_Calloc((size_t)(n ? n : 1), sizeof(col_t));
    if (cols == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(spec, i);
        col_t *c = &cols[i];
        PyObject *name;
        if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "iOiiO", &c->op, &name, &c->a, &c->b, &c->obj)) {
            if (!PyErr_Occurred())
                spec_error(i, "expected (op, name, a, b, obj)");
            PyMem_Free(cols);
            return -1;
        }
        if (name != Py_None && !PyUnicode_Check(name)) {
            spec_error(i, "name");
            PyMem_Free(cols);
            return -1;
        }
        c->name = name == Py_None ? NULL : name;
        if (check_col(i, c) < 0) {
            PyMem_Free(cols);
            return -1;
        }
    }
    Py_INCREF(spec);
    Py_INCREF(marker);
    Py_XSETREF(self->spec, spec);
    Py_XSETREF(self->marker, marker);
    PyMem_Free(self->cols);
    self->cols = cols;
    self->ncols = n;
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    Py_XDECREF(self->spec);
    Py_XDECREF(self->marker);
    PyMem_Free(self->cols);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_VARARGS,
     "decode(data, start, end, bitmap1, bitmap2_or_None) -> rows (see the module docstring)"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sync.capture.binlog._rowdecode.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A table map's row decoder: Decoder(spec, marker)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

static struct PyModuleDef rowdecode_module = {
    PyModuleDef_HEAD_INIT, "_rowdecode", "Binlog row images to canonical values (see _rowdecode.c).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rowdecode(void) {
    if (PyType_Ready(&DecoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&rowdecode_module);
    if (m == NULL)
        return NULL;
#define KEY(var, text)                                        \
    if ((var = PyUnicode_InternFromString(text)) == NULL)     \
        return NULL;
    KEY(k_values, "values")
    KEY(k_none_sources, "none_sources")
    KEY(k_before_values, "before_values")
    KEY(k_before_none, "before_none_sources")
    KEY(k_after_values, "after_values")
    KEY(k_after_none, "after_none_sources")
    KEY(k_b64, "$b64")
    KEY(s_empty, "")
#undef KEY
    DecodeError = PyErr_NewException("sync.capture.binlog._rowdecode.DecodeError", PyExc_ValueError, NULL);
    Py_INCREF(&DecoderType);
    if (DecodeError == NULL || PyModule_AddObject(m, "DecodeError", DecodeError) < 0 ||
        PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(DecodeError);
    if (binloop_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
