/* Shared by the two sources of sync.capture.binlog._rowdecode: _rowdecode.c (a table map's row
 * decoder, the Decoder type) and _binloop.c (the dump connection's event loop, the Loop type). */
#ifndef GEARSYNC_ROWDECODE_H
#define GEARSYNC_ROWDECODE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
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

/* Adds the Loop type (_binloop.c) to the module. */
int binloop_add_types(PyObject *module);

#endif
