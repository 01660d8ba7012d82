/* libFuzzer (ASan + UBSan) on the binlog dump connection's event loop, sync/capture/binlog/_binloop.c
 * (Loop.feed), inside an embedded CPython. An input is what a server would send:
 *
 *   byte 0            bit 0: the stream has checksums; bits 1-7: the first read's size (then 1..256)
 *   byte 1            how each later read's size is chosen (from the input's own bytes)
 *   the rest          MySQL packets as they come off the socket, fed in reads of those sizes
 *
 * Table id 1 is registered with a decoder of an INT, a VARCHAR (utf8), a DATETIME2(3) and a
 * DECIMAL(10,2); table id 2 as not synced; a TABLE_MAP body seen before is the 8 bytes of table 1's
 * id and flags. Every result must be a list of items of codes 0..8; a paused loop is fed b"" until it
 * goes on; after a framing error (8) or an EOF/error packet nothing is returned; anything else aborts.
 */
#include "fuzz_common.h"

static PyObject *g_decoder;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    init_python();
    PyObject *spec = Py_BuildValue("((isiiO)(isiis)(isiiO)(isiiO))", OP_INT, "id", 4, 0, Py_None, OP_STR, "s", 1, 0,
                                   "utf8", OP_DATETIME2, "t", 3, 0, Py_None, OP_DECIMAL, "d", 10, 2, Py_None);
    PyObject *marker = PyTuple_New(0);
    PyObject *args = Py_BuildValue("(NN)", spec, marker);
    g_decoder = PyObject_Call((PyObject *)&DecoderType, args, NULL);
    Py_DECREF(args);
    if (g_decoder == NULL) {
        PyErr_Print();
        abort();
    }
    return 0;
}

static void check_items(PyObject *items, int *ended) {
    if (items == NULL) {
        PyErr_Print();
        abort();   /* feed raises nothing on any input: malformed input is an item */
    }
    if (!PyList_CheckExact(items))
        abort();
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (*ended && n)
        abort();   /* nothing after the end */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(it) || PyTuple_GET_SIZE(it) < 1)
            abort();
        long code = PyLong_AsLong(PyTuple_GET_ITEM(it, 0));
        if (code < 0 || code > 8)
            abort();
        if (code >= 6)
            *ended = 1;
    }
    Py_DECREF(items);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    PyObject *args = Py_BuildValue("(in)", data[0] & 1, (Py_ssize_t)65536);
    PyObject *loop = PyObject_Call((PyObject *)&LoopType, args, NULL);
    Py_DECREF(args);
    if (loop == NULL)
        abort();
    PyObject *r1 = PyObject_CallMethod(loop, "table_map", "y#KOs", "\x01\0\0\0\0\0\x01\0", (Py_ssize_t)8, 1ULL,
                                       g_decoder, "t1");
    PyObject *r2 = PyObject_CallMethod(loop, "table_map", "y#KOO", "\x02\0\0\0\0\0\x01\0", (Py_ssize_t)8, 2ULL,
                                       Py_None, Py_None);
    if (r1 == NULL || r2 == NULL)
        abort();
    Py_DECREF(r1);
    Py_DECREF(r2);
    int ended = 0;
    size_t pos = 2, step = (size_t)(data[0] >> 1) + 1, mode = data[1];
    while (pos < size) {
        size_t k = size - pos < step ? size - pos : step;
        /* each read as its own allocation: a read past it is a heap overflow ASan reports */
        uint8_t *chunk = malloc(k);
        memcpy(chunk, data + pos, k);
        PyObject *b = PyBytes_FromStringAndSize((const char *)chunk, (Py_ssize_t)k);
        free(chunk);
        check_items(PyObject_CallMethod(loop, "feed", "O", b), &ended);
        Py_DECREF(b);
        for (int guard = 0; ((Loop *)loop)->paused; guard++) {
            if (guard > 100000)
                abort();   /* a pause that never ends */
            check_items(PyObject_CallMethod(loop, "feed", "y#", "", (Py_ssize_t)0), &ended);
        }
        pos += k;
        step = mode ? (size_t)data[pos % size] % mode + 1 : 4096;
    }
    Py_DECREF(loop);
    return 0;
}
