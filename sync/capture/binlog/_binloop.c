/* sync.capture.binlog._rowdecode.Loop: the binlog dump connection's bytes -> compact items, the
 * event loop of sync.capture.binlog.reader below mysql-replication's fetchone (sync/capture/binlog/
 * loop.py feeds it what pymysql's socket file has).
 *
 *   Loop(checksum, max_packet)   checksum: the events end in a 4-byte CRC32; max_packet: the bound of
 *                                one packet (continuation packets included) and of the bytes held
 *   Loop.feed(data) -> [item]    split MySQL packets (3-byte length + sequence id; 0xFFFFFF: the
 *                                packet continues in the next), parse the 19-byte event headers
 *   Loop.table_map(body, table_id, decoder, tag)
 *                                a TABLE_MAP body handled by Python: equal bytes later need no
 *                                Python; tag None: the table is not synced (its rows are skipped)
 *   Loop.clear()                 forget every table map (DDL, rotation: row plans are rebuilt)
 *
 * Items, in stream order:
 *   (0, seq, domain, server, log_pos, timestamp, [(tag, kind, rows, log_pos)])
 *                                a MariaDB transaction read whole in one feed: GTID .. XID
 *   (1, seq, domain, server)     a MariaDB GTID event (its transaction continues in later items)
 *   (2, tag, kind, rows, log_pos) a rows event of a registered table (kind: "WriteRowsEvent", ...)
 *   (3, log_pos, timestamp)      an XID event (a commit)
 *   (4, payload)                 any other event: the packet's bytes (0x00, header, body) for the library
 *   (5,)                         a heartbeat
 *   (6, payload)                 an error packet (0xFF ...)
 *   (7,)                         the EOF packet: the server ended the dump
 *   (8, message)                 malformed framing; nothing after it is read
 * After an item 4 the feed stops (`paused`): Python handles the event (a TABLE_MAP registers its
 * table, a DDL or rotation forgets the maps) before feed(b"") reads the events after it.
 *
 * With checksums, the CRC32 of every event handled here is checked (a mismatch is a framing error).
 * Rows events of table ids with no registered tag are skipped here. A rows event whose table has no
 * C decoder, whose header is unusual, or whose rows do not decode goes out as (4, payload): the
 * library (and RowPlan) decode it and name what is wrong. Every read is bounded by the packet, every
 * packet by max_packet; nothing is read past what was fed.
 */
#include "_rowdecode.h"

#include <stddef.h>
#include <stdlib.h>
#include <structmember.h>

enum {
    XID_EVENT = 16,
    TABLE_MAP_EVENT = 19,
    WRITE_ROWS_V1 = 23,
    UPDATE_ROWS_V1 = 24,
    DELETE_ROWS_V1 = 25,
    HEARTBEAT_EVENT = 27,
    WRITE_ROWS_V2 = 30,
    UPDATE_ROWS_V2 = 31,
    DELETE_ROWS_V2 = 32,
    MARIADB_GTID_EVENT = 162,
};

#define MAP_CACHE_MAX 4096
#define PACKET_PART 0xFFFFFFu

static PyObject *k_write, *k_update, *k_delete;

/* CRC-32 (ISO-HDLC, zlib's): the checksum of a binlog event (binlog_checksum=CRC32) */
static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

typedef struct {
    PyObject_HEAD
    uint8_t *buf;          /* bytes fed and not yet split into packets: buf[0:len] */
    size_t len, cap;
    size_t max_packet;
    int checksum;
    int broken;            /* a framing error or the end of the dump was seen: nothing more is read */
    int paused;            /* the last feed stopped after an event for Python: feed(b"") goes on */
    PyObject *maps;        /* TABLE_MAP bodies seen: bytes -> None */
    PyObject *ids;         /* table id -> (decoder or None, tag) */
    /* a MariaDB transaction whose GTID was read in this feed and whose commit was not yet */
    int held;
    uint64_t seq;
    uint32_t domain, server;
    PyObject *held_rows;   /* list of (tag, kind, rows, log_pos) */
    uint32_t last_pos;     /* the end position of the last event read */
} Loop;

static uint64_t le_n(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* append an item built by Py_BuildValue's format, stealing nothing */
static int emit(PyObject *out, PyObject *item) {
    if (item == NULL)
        return -1;
    int rc = PyList_Append(out, item);
    Py_DECREF(item);
    return rc;
}

/* the held GTID and rows as separate items (something else follows before the commit) */
static int flush_held(Loop *self, PyObject *out) {
    if (!self->held)
        return 0;
    self->held = 0;
    if (emit(out, Py_BuildValue("(iKkk)", 1, (unsigned long long)self->seq, (unsigned long)self->domain,
                                (unsigned long)self->server)) < 0)
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(self->held_rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(self->held_rows, i);   /* (tag, kind, rows, log_pos) */
        if (emit(out, Py_BuildValue("(iOOOO)", 2, PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1),
                                    PyTuple_GET_ITEM(r, 2), PyTuple_GET_ITEM(r, 3))) < 0)
            return -1;
    }
    return PyList_SetSlice(self->held_rows, 0, n, NULL);
}

static int emit_raw(Loop *self, PyObject *out, int code, const uint8_t *p, size_t n) {
    if (flush_held(self, out) < 0)
        return -1;
    PyObject *b = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (b == NULL)
        return -1;
    PyObject *item = Py_BuildValue("(iN)", code, b);
    return emit(out, item);
}

static int framing_error(Loop *self, PyObject *out, const char *fmt, size_t a, size_t b) {
    char msg[256];
    snprintf(msg, sizeof msg, fmt, a, b);
    char full[384];
    snprintf(full, sizeof full, "%s (after the event ending at binlog position %lu)", msg, (unsigned long)self->last_pos);
    self->broken = 1;
    if (flush_held(self, out) < 0)
        return -1;
    return emit(out, Py_BuildValue("(is)", 8, full));
}

/* A rows event of a registered table: its item, or 0 with *raw set when the library must read it. */
static int rows_event(Loop *self, PyObject *out, int type, const uint8_t *body, size_t blen, uint32_t log_pos,
                      int *raw) {
    size_t post = type >= WRITE_ROWS_V2 ? 10 : 8;
    if (blen < post + 1) {
        *raw = 1;
        return 0;
    }
    PyObject *id = PyLong_FromUnsignedLongLong(le_n(body, 6));
    if (id == NULL)
        return -1;
    PyObject *entry = PyDict_GetItemWithError(self->ids, id);   /* borrowed */
    Py_DECREF(id);
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : 0;   /* not a synced table: skipped */
    PyObject *decoder = PyTuple_GET_ITEM(entry, 0), *tag = PyTuple_GET_ITEM(entry, 1);
    size_t pos = 8;
    if (post == 10) {
        size_t extra = (size_t)le_n(body + 8, 2);
        if (extra < 2 || 8 + extra >= blen) {
            *raw = 1;
            return 0;
        }
        pos = 8 + extra;
    }
    uint64_t ncols = body[pos++];
    if (ncols >= 251 || decoder == Py_None || (Py_ssize_t)ncols != rowdecode_ncols((Decoder *)decoder)) {
        *raw = 1;   /* a wide table (a length-encoded column count), a Python-decoded table, another layout */
        return 0;
    }
    int update = type == UPDATE_ROWS_V1 || type == UPDATE_ROWS_V2;
    size_t nb = (size_t)(ncols + 7) / 8;
    if (pos + nb * (update ? 2 : 1) > blen) {
        *raw = 1;
        return 0;
    }
    const uint8_t *bm1 = body + pos, *bm2 = update ? body + pos + nb : NULL;
    pos += nb * (update ? 2 : 1);
    PyObject *rows = rowdecode_rows((Decoder *)decoder, body, pos, blen, bm1, nb, bm2, update ? nb : 0, update);
    if (rows == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();   /* the library's path reads it again and names the table and position */
        *raw = 1;
        return 0;
    }
    PyObject *kind = update ? k_update : (type == WRITE_ROWS_V1 || type == WRITE_ROWS_V2) ? k_write : k_delete;
    if (self->held) {
        PyObject *r = Py_BuildValue("(OONk)", tag, kind, rows, (unsigned long)log_pos);
        if (r == NULL)
            return -1;
        int rc = PyList_Append(self->held_rows, r);
        Py_DECREF(r);
        return rc;
    }
    return emit(out, Py_BuildValue("(iOONk)", 2, tag, kind, rows, (unsigned long)log_pos));
}

/* One packet's payload p[0:n] (continuations joined). */
static int packet(Loop *self, PyObject *out, const uint8_t *p, size_t n) {
    if (n == 0)
        return framing_error(self, out, "an empty packet%.0zu%.0zu", 0, 0);
    if (p[0] == 0xFF) {
        self->broken = 1;
        return emit_raw(self, out, 6, p, n);
    }
    if (p[0] == 0xFE && n < 9) {
        self->broken = 1;
        if (flush_held(self, out) < 0)
            return -1;
        return emit(out, Py_BuildValue("(i)", 7));
    }
    if (p[0] != 0x00)
        return 0;   /* not an event (the library skips these too) */
    if (n < 20)
        return framing_error(self, out, "an event of %zu bytes, shorter than its 19-byte header%.0zu", n - 1, 0);
    uint32_t ts = (uint32_t)le_n(p + 1, 4);
    int type = p[5];
    uint32_t server = (uint32_t)le_n(p + 6, 4);
    size_t size = (size_t)le_n(p + 10, 4);
    uint32_t log_pos = (uint32_t)le_n(p + 14, 4);
    if (size != n - 1)
        return framing_error(self, out, "an event header saying %zu bytes in a packet of %zu", size, n - 1);
    size_t tail = self->checksum ? 4 : 0;
    if (size < 19 + tail)
        return framing_error(self, out, "an event of %zu bytes, shorter than its header and checksum%.0zu", size, 0);
    const uint8_t *body = p + 20;
    size_t blen = size - 19 - tail;
    int raw = 0;
    int ours = type == MARIADB_GTID_EVENT || type == XID_EVENT || type == TABLE_MAP_EVENT ||
               (type >= WRITE_ROWS_V1 && type <= DELETE_ROWS_V1) || (type >= WRITE_ROWS_V2 && type <= DELETE_ROWS_V2);
    if (ours && tail && crc32_of(p + 1, size - 4) != (uint32_t)le_n(p + 1 + size - 4, 4)) {
        /* the events read here are checked (the library reads the rest: it does not check them) */
        return framing_error(self, out, "event of type %zu and %zu bytes: its CRC32 checksum does not match",
                             (size_t)type, size);
    }
    switch (type) {
    case MARIADB_GTID_EVENT:
        if (blen < 13) {
            raw = 1;
            break;
        }
        if (flush_held(self, out) < 0)
            return -1;
        self->held = 1;
        self->seq = le_n(body, 8);
        self->domain = (uint32_t)le_n(body + 8, 4);
        self->server = server;
        break;
    case XID_EVENT:
        if (blen < 8) {
            raw = 1;
            break;
        }
        if (self->held) {
            self->held = 0;
            PyObject *rows = PyList_GetSlice(self->held_rows, 0, PY_SSIZE_T_MAX);
            if (rows == NULL || PyList_SetSlice(self->held_rows, 0, PyList_GET_SIZE(rows), NULL) < 0) {
                Py_XDECREF(rows);
                return -1;
            }
            if (emit(out, Py_BuildValue("(iKkkkkN)", 0, (unsigned long long)self->seq, (unsigned long)self->domain,
                                        (unsigned long)self->server, (unsigned long)log_pos, (unsigned long)ts,
                                        rows)) < 0)
                return -1;
        } else if (emit(out, Py_BuildValue("(ikk)", 3, (unsigned long)log_pos, (unsigned long)ts)) < 0) {
            return -1;
        }
        break;
    case TABLE_MAP_EVENT: {
        PyObject *key = PyBytes_FromStringAndSize((const char *)body, (Py_ssize_t)blen);
        if (key == NULL)
            return -1;
        int seen = PyDict_Contains(self->maps, key);
        Py_DECREF(key);
        if (seen < 0)
            return -1;
        raw = !seen;
        break;
    }
    case WRITE_ROWS_V1: case UPDATE_ROWS_V1: case DELETE_ROWS_V1:
    case WRITE_ROWS_V2: case UPDATE_ROWS_V2: case DELETE_ROWS_V2:
        if (rows_event(self, out, type, body, blen, log_pos, &raw) < 0)
            return -1;
        break;
    case HEARTBEAT_EVENT:
        if (flush_held(self, out) < 0)
            return -1;
        if (emit(out, Py_BuildValue("(i)", 5)) < 0)
            return -1;
        break;
    default:
        raw = 1;
    }
    if (log_pos)
        self->last_pos = log_pos;
    if (!raw)
        return 0;
    /* Python handles it before the loop reads on: it may register a table map, or forget them all */
    self->paused = 1;
    return emit_raw(self, out, 4, p, n);
}

/* The next whole packet at buf[at:]: 1 with its payload (joined into *joined, to be freed, when it
 * came in parts) and the bytes it took, 0 when more bytes are needed, -1 on an error (item emitted). */
static int next_packet(Loop *self, PyObject *out, size_t at, const uint8_t **payload, size_t *n, size_t *took,
                       uint8_t **joined) {
    size_t off = at, total = 0, parts = 0;
    for (;;) {
        if (self->len - off < 4)
            return 0;
        size_t len = (size_t)le_n(self->buf + off, 3);
        total += len;
        parts++;
        if (total > self->max_packet)
            return framing_error(self, out, "a packet of more than %zu bytes (max_packet %zu)", total, self->max_packet) < 0
                       ? -1 : -2;
        if (self->len - off - 4 < len)
            return 0;
        off += 4 + len;
        if (len < PACKET_PART)
            break;
    }
    *took = off - at;
    *n = total;
    if (parts == 1) {
        *payload = self->buf + at + 4;
        return 1;
    }
    uint8_t *j = malloc(total ? total : 1);
    if (j == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t o = 0;
    for (size_t q = at; q < off;) {
        size_t len = (size_t)le_n(self->buf + q, 3);
        memcpy(j + o, self->buf + q + 4, len);
        o += len;
        q += 4 + len;
    }
    *payload = *joined = j;
    return 1;
}

/* Loop.__new__ without __init__: no dicts yet */
static int initialised(Loop *self) {
    if (self->maps != NULL && self->ids != NULL && self->held_rows != NULL)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "Loop.__init__ was not called");
    return 0;
}

static PyObject *Loop_feed(Loop *self, PyObject *arg) {
    Py_buffer data;
    if (!initialised(self))
        return NULL;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL || self->broken) {
        PyBuffer_Release(&data);
        return out;
    }
    size_t n = (size_t)data.len;
    if (n > self->cap - self->len) {
        /* bounded: what is held is at most one packet (max_packet + its part headers) plus this read */
        size_t cap = self->cap ? self->cap : 65536;
        while (cap - self->len < n)
            cap *= 2;
        uint8_t *b = realloc(self->buf, cap);
        if (b == NULL) {
            PyBuffer_Release(&data);
            Py_DECREF(out);
            return PyErr_NoMemory();
        }
        self->buf = b;
        self->cap = cap;
    }
    memcpy(self->buf + self->len, data.buf, n);
    self->len += n;
    PyBuffer_Release(&data);
    size_t at = 0;
    self->paused = 0;
    while (!self->broken && !self->paused) {
        const uint8_t *p;
        size_t plen, took;
        uint8_t *joined = NULL;
        int rc = next_packet(self, out, at, &p, &plen, &took, &joined);
        if (rc == 0 || rc == -2)
            break;
        if (rc < 0)
            goto error;
        rc = packet(self, out, p, plen);
        free(joined);
        if (rc < 0)
            goto error;
        at += took;
    }
    if (self->broken)
        at = self->len;
    memmove(self->buf, self->buf + at, self->len - at);
    self->len -= at;
    if (self->cap > 262144 && self->len < self->cap / 4) {   /* give a large event's room back */
        size_t cap = self->len > 65536 ? self->len : 65536;
        uint8_t *b = realloc(self->buf, cap);
        if (b != NULL) {
            self->buf = b;
            self->cap = cap;
        }
    }
    if (flush_held(self, out) < 0)
        goto error;
    return out;
error:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Loop_table_map(Loop *self, PyObject *args) {
    PyObject *body, *decoder, *tag;
    unsigned long long table_id;
    if (!initialised(self) || !PyArg_ParseTuple(args, "SKOO", &body, &table_id, &decoder, &tag))
        return NULL;
    if (decoder != Py_None && !PyObject_TypeCheck(decoder, &DecoderType)) {
        PyErr_SetString(PyExc_TypeError, "table_map: decoder must be a Decoder or None");
        return NULL;
    }
    if (PyDict_GET_SIZE(self->maps) >= MAP_CACHE_MAX)
        PyDict_Clear(self->maps);
    if (PyDict_SetItem(self->maps, body, Py_None) < 0)
        return NULL;
    PyObject *id = PyLong_FromUnsignedLongLong(table_id);
    if (id == NULL)
        return NULL;
    int rc;
    if (tag == Py_None) {
        rc = PyDict_DelItem(self->ids, id);
        if (rc < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear();
            rc = 0;
        }
    } else {
        PyObject *entry = PyTuple_Pack(2, decoder, tag);
        rc = entry == NULL ? -1 : PyDict_SetItem(self->ids, id, entry);
        Py_XDECREF(entry);
    }
    Py_DECREF(id);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Loop_clear(Loop *self, PyObject *Py_UNUSED(ignored)) {
    if (!initialised(self))
        return NULL;
    PyDict_Clear(self->maps);
    PyDict_Clear(self->ids);
    Py_RETURN_NONE;
}

static PyObject *Loop_buffered(Loop *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSize_t(self->len);
}

static int Loop_init(Loop *self, PyObject *args, PyObject *kw) {
    int checksum;
    Py_ssize_t max_packet;
    static char *kwlist[] = {"checksum", "max_packet", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "pn", kwlist, &checksum, &max_packet))
        return -1;
    if (max_packet < 64 || (size_t)max_packet > ((size_t)1 << 40)) {
        PyErr_Format(PyExc_ValueError, "max_packet %zd: expected 64 .. 2**40", max_packet);
        return -1;
    }
    self->checksum = checksum;
    self->max_packet = (size_t)max_packet;
    self->len = 0;
    self->broken = self->held = 0;
    if (self->maps == NULL && (self->maps = PyDict_New()) == NULL)
        return -1;
    if (self->ids == NULL && (self->ids = PyDict_New()) == NULL)
        return -1;
    if (self->held_rows == NULL && (self->held_rows = PyList_New(0)) == NULL)
        return -1;
    return 0;
}

static void Loop_dealloc(Loop *self) {
    free(self->buf);
    Py_XDECREF(self->maps);
    Py_XDECREF(self->ids);
    Py_XDECREF(self->held_rows);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Loop_members[] = {
    {"paused", T_INT, offsetof(Loop, paused), READONLY,
     "the last feed stopped after an event handed to Python; feed(b\"\") reads on"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Loop_methods[] = {
    {"feed", (PyCFunction)Loop_feed, METH_O, "feed(data) -> items (see the module docstring of _binloop.c)"},
    {"table_map", (PyCFunction)Loop_table_map, METH_VARARGS,
     "table_map(body, table_id, decoder_or_None, tag_or_None): a TABLE_MAP handled in Python"},
    {"clear", (PyCFunction)Loop_clear, METH_NOARGS, "forget every table map"},
    {"buffered", (PyCFunction)Loop_buffered, METH_NOARGS, "bytes fed and not yet split into packets"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sync.capture.binlog._rowdecode.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The binlog dump connection's event loop: Loop(checksum, max_packet)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
    .tp_members = Loop_members,
};

int binloop_add_types(PyObject *m) {
    crc_init();
    if ((k_write = PyUnicode_InternFromString("WriteRowsEvent")) == NULL ||
        (k_update = PyUnicode_InternFromString("UpdateRowsEvent")) == NULL ||
        (k_delete = PyUnicode_InternFromString("DeleteRowsEvent")) == NULL)
        return -1;
    if (PyType_Ready(&LoopType) < 0)
        return -1;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0) {
        Py_DECREF(&LoopType);
        return -1;
    }
    return 0;
}
