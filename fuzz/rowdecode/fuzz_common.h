/* What both fuzz targets start with: the three sources of sync.capture.binlog._rowdecode and an
 * embedded CPython with the module initialised. */
#include "../../sync/capture/binlog/_rowdecode.c"
#include "../../sync/capture/binlog/_rowdecode_json.c"
#include "../../sync/capture/binlog/_binloop.c"

#include <stdlib.h>

static void init_python(void) {
    Py_InitializeEx(0);
    PyObject *m = PyInit__rowdecode();
    if (m == NULL) {
        PyErr_Print();
        abort();
    }
}
