/* Shared by the sources of sync.capture.binlog._rowdecode: _rowdecode.c (a table map's row decoder,
 * the Decoder type), _rowdecode_json.c (MySQL's binary JSON) and _binloop.c (the dump connection's
 * event loop, the Loop type). */
#ifndef GEARSYNC_ROWDECODE_H
#define GEARSYNC_ROWDECODE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

typedef struct Decoder Decoder;

extern PyTypeObject DecoderType;

/* The rows of a rows event's row data data[start:end] (see _rowdecode.c: Decoder.decode), or NULL
 * with DecodeError (a ValueError) set. bm2 only for an UPDATE (update != 0). */
PyObject *rowdecode_rows(Decoder *self, const uint8_t *data, size_t start, size_t end, const uint8_t *bm1,
                         size_t bm1_len, const uint8_t *bm2, size_t bm2_len, int update);

/* The number of table-map columns the decoder was built for. */
Py_ssize_t rowdecode_ncols(Decoder *self);

/* bytes -> str when valid UTF-8, else {"$b64": ...} (sync.rows.rowcodec.normalize_value). */
PyObject *rowdecode_bytes_value(const uint8_t *p, size_t n);

/* The text of a binary DECIMAL(precision, scale) at p (avail bytes there; out: 512 bytes), as
 * format(Decimal, "f") prints it: the bytes read, or 0 with *why set. */
size_t rowdecode_decimal_text(const uint8_t *p, size_t avail, int precision, int scale, char *out, size_t *len,
                              const char **why);

/* The value of a MySQL binary JSON document doc[0:n] (_rowdecode_json.c): a str, None, or
 * {"$b64": ...}; NULL with *why set (no exception) when the document is malformed, NULL with an
 * exception set (*why NULL) on a Python error. */
PyObject *rowdecode_json(const uint8_t *doc, size_t n, const char **why);

/* Adds the Loop type (_binloop.c) to the module. */
int binloop_add_types(PyObject *module);

#endif
