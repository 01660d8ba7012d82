/* libFuzzer (ASan + UBSan) on the binlog row decoder, sync/capture/binlog/_rowdecode.c, inside an
 * embedded CPython. An input is a table layout and a rows-event body:
 *
 *   byte 0            number of columns (1..24) and whether it is an UPDATE (bit 7)
 *   4 bytes a column  op selector, a, b, extra (mapped onto a spec the Decoder accepts)
 *   bitmaps           columns-present bitmap(s), (n + 7) / 8 bytes each
 *   the rest          the rows: NULL bitmaps and values, read in place (ASan sees every byte past it)
 *
 * Every result must be a list of row dicts of str/int/float/None/{"$b64": str}; every failure a
 * DecodeError (a ValueError naming the column): anything else aborts.
 */
#include "fuzz_common.h"

static PyObject *g_marker;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    init_python();
    g_marker = PyTuple_New(0);
    return 0;
}

static const char *ENCODINGS[] = {"utf8", "cp1252", "ascii", "utf16", "latin2", "big5"};
static const char *NAMES[] = {"a", "b", "ç", ""};

static PyObject *strings(int n) {
    PyObject *t = PyTuple_New(n);
    for (int i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, PyUnicode_FromString(NAMES[i % 4]));
    return t;
}

static PyObject *column(const uint8_t *c, int i) {
    int sel = c[0] % 18 + 1, a = c[1], b = c[2], x = c[3];
    PyObject *obj = Py_None;
    Py_INCREF(obj);
    static const int widths[] = {1, 2, 3, 4, 8};
    switch (sel) {
    case OP_INT: a = widths[a % 5]; b &= 1; break;
    case OP_DECIMAL: a = a % 65 + 1; b = b % (a < 38 ? a + 1 : 39); break;
    case OP_BIT: a = a % 8 + 1; b = b % 8 + 1; break;
    case OP_ENUM: a = a % 2 + 1; Py_DECREF(obj); obj = strings(x % 5); break;
    case OP_ENUM_NONE: a = a % 2 + 1; break;
    case OP_JSON: a = a % 4 + 1; break;
    case OP_SET: a = a % 8 + 1; if (x & 1) { Py_DECREF(obj); obj = strings(x % 9); } break;
    case OP_DATETIME2: case OP_TIMESTAMP2: case OP_TIME2: a %= 7; break;
    case OP_STR:
        a = a % 4 + 1;
        b = (x & 0x80) ? b % 9 : 0;
        if (x & 1) {
            Py_DECREF(obj);
            obj = PyUnicode_FromString(ENCODINGS[(x >> 1) % 6]);
        }
        break;
    default: break;
    }
    PyObject *name = (x & 0x40) ? Py_None : PyUnicode_FromFormat("c%d", i);
    if (name == Py_None)
        Py_INCREF(name);
    return Py_BuildValue("(iNiiN)", sel, name, a, b, obj);
}

static void check_value(PyObject *v) {
    if (v == Py_None || PyLong_CheckExact(v) || PyFloat_CheckExact(v) || PyUnicode_CheckExact(v))
        return;
    if (PyDict_CheckExact(v) && PyDict_Size(v) == 1) {
        PyObject *s = PyDict_GetItemString(v, "$b64");
        if (s != NULL && PyUnicode_CheckExact(s))
            return;
    }
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    int ncols = data[0] % 24 + 1, update = data[0] >> 7;
    size_t pos = 1, nbm = (size_t)(ncols + 7) / 8;
    if (size < pos + 4 * (size_t)ncols + nbm * (update ? 2 : 1))
        return 0;
    PyObject *spec = PyTuple_New(ncols);
    for (int i = 0; i < ncols; i++, pos += 4)
        PyTuple_SET_ITEM(spec, i, column(data + pos, i));
    PyObject *args = Py_BuildValue("(OO)", spec, g_marker);
    PyObject *dec = PyObject_Call((PyObject *)&DecoderType, args, NULL);
    Py_DECREF(args);
    Py_DECREF(spec);
    if (dec == NULL) {
        PyErr_Print();
        abort();   /* the mapping above only builds valid specs */
    }
    const uint8_t *bm1 = data + pos, *bm2 = update ? data + pos + nbm : NULL;
    pos += nbm * (update ? 2 : 1);
    /* the row data as its own allocation: a read past its end is a heap overflow ASan reports */
    size_t n = size - pos;
    uint8_t *rows = malloc(n ? n : 1);
    memcpy(rows, data + pos, n);
    PyObject *out = rowdecode_rows((Decoder *)dec, rows, 0, n, bm1, nbm, bm2, nbm, update);
    if (out == NULL) {
        if (!PyErr_ExceptionMatches(DecodeError)) {
            PyErr_Print();
            abort();
        }
        PyErr_Clear();
    } else {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(out); i++) {
            PyObject *row = PyList_GET_ITEM(out, i), *k, *img;
            Py_ssize_t p = 0;
            while (PyDict_Next(row, &p, &k, &img)) {
                if (img == g_marker)
                    continue;
                PyObject *ck, *cv;
                Py_ssize_t q = 0;
                while (PyDict_Next(img, &q, &ck, &cv))
                    check_value(cv);
            }
        }
        Py_DECREF(out);
    }
    free(rows);
    Py_DECREF(dec);
    return 0;
}
