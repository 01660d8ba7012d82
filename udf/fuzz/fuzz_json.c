/*
 * fuzz_json.c — libFuzzer target for gman_json_object / gman_json_array.
 *
 * The input is split into fabricated UDF calls exactly as mysqld makes them:
 * UDF_ARGS with 0..24 arguments of every Item_result type (NULL or not),
 * aliases (attributes) of any bytes, lengths that are not NUL terminated;
 * _init, then the row function called a few times with fresh values (the
 * server may change values between rows, never types), then _deinit.
 *
 * Properties checked besides ASan/UBSan: _init either fails with a message
 * or succeeds; every non-NULL result is valid JSON (gs_json_valid) and
 * valid UTF-8; an object starts with '{', an array with '['.
 */
#include "../gearsync_udf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

my_bool gman_json_object_init(UDF_INIT *, UDF_ARGS *, char *);
void gman_json_object_deinit(UDF_INIT *);
char *gman_json_object(UDF_INIT *, UDF_ARGS *, char *, unsigned long *, char *, char *);
my_bool gman_json_array_init(UDF_INIT *, UDF_ARGS *, char *);
void gman_json_array_deinit(UDF_INIT *);
char *gman_json_array(UDF_INIT *, UDF_ARGS *, char *, unsigned long *, char *, char *);

#define MAX_ARGS 24

struct input {
    const uint8_t *p;
    size_t n;
};

static uint8_t take_byte(struct input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

/* a slice of the input of a length chosen by the input; copied to an exact-size
 * heap block so ASan sees any read past its end (the server's buffers are not
 * NUL terminated either) */
static char *take_bytes(struct input *in, unsigned long *len)
{
    size_t want = take_byte(in);
    if (want == 255) /* long values now and then */
        want = (size_t)take_byte(in) << 8 | take_byte(in);
    if (want > in->n)
        want = in->n;
    char *out = malloc(want ? want : 1);
    if (!out)
        abort();
    memcpy(out, in->p, want);
    in->p += want;
    in->n -= want;
    *len = (unsigned long)want;
    return out;
}

static void take_raw(struct input *in, void *dst, size_t size)
{
    memset(dst, 0, size);
    size_t k = size < in->n ? size : in->n;
    memcpy(dst, in->p, k);
    in->p += k;
    in->n -= k;
}

static void check_result(const char *r, unsigned long len, int object)
{
    if (!gs_json_valid(r, len) || !gs_utf8_valid(r, len)) {
        fprintf(stderr, "invalid JSON out (%lu bytes): %.*s\n", len, (int)(len > 400 ? 400 : len), r);
        abort();
    }
    if (len < 2 || r[0] != (object ? '{' : '[') || r[len - 1] != (object ? '}' : ']')) {
        fprintf(stderr, "not an %s: %.*s\n", object ? "object" : "array", (int)(len > 400 ? 400 : len), r);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = {data, size};
    int object = take_byte(&in) & 1;
    unsigned n = take_byte(&in) % (MAX_ARGS + 1);

    enum Item_result types[MAX_ARGS];
    char *vals[MAX_ARGS] = {0};
    unsigned long lens[MAX_ARGS] = {0};
    char maybe_null[MAX_ARGS];
    const char *attrs[MAX_ARGS] = {0};
    unsigned long attr_lens[MAX_ARGS] = {0};
    long long ints[MAX_ARGS];
    double reals[MAX_ARGS];

    for (unsigned i = 0; i < n; i++) {
        uint8_t t = take_byte(&in);
        /* STRING, REAL, INT, DECIMAL and, rarely, the types a server should
         * never pass (ROW, TIME) */
        static const enum Item_result kinds[] = {STRING_RESULT, REAL_RESULT, INT_RESULT,
                                                 DECIMAL_RESULT, STRING_RESULT, ROW_RESULT,
                                                 TIME_RESULT, STRING_RESULT};
        types[i] = kinds[t & 7];
        maybe_null[i] = (char)((t >> 3) & 1);
        attrs[i] = take_bytes(&in, &attr_lens[i]);
    }
    UDF_ARGS args = {.arg_count = n, .arg_type = types, .args = vals, .lengths = lens,
                     .maybe_null = maybe_null, .attributes = attrs, .attribute_lengths = attr_lens};
    UDF_INIT init;
    memset(&init, 0, sizeof init);
    char message[MYSQL_ERRMSG_SIZE];
    message[0] = 0;
    /* _init sees declared lengths (max sizes), values only of constants: none here */
    for (unsigned i = 0; i < n; i++)
        lens[i] = take_byte(&in) * 17u;

    my_bool failed = object ? gman_json_object_init(&init, &args, message)
                            : gman_json_array_init(&init, &args, message);
    if (failed) {
        if (!message[0] || !memchr(message, 0, sizeof message)) {
            fprintf(stderr, "_init failed without a message\n");
            abort();
        }
    } else {
        unsigned rows = 1 + (take_byte(&in) & 3);
        for (unsigned row = 0; row < rows; row++) {
            for (unsigned i = 0; i < n; i++) {
                uint8_t k = take_byte(&in);
                if (maybe_null[i] && (k & 1)) {
                    vals[i] = NULL;
                    lens[i] = 0;
                    continue;
                }
                switch (types[i]) {
                case INT_RESULT:
                    take_raw(&in, &ints[i], sizeof ints[i]);
                    vals[i] = (char *)&ints[i];
                    lens[i] = sizeof ints[i];
                    break;
                case REAL_RESULT:
                    take_raw(&in, &reals[i], sizeof reals[i]);
                    vals[i] = (char *)&reals[i];
                    lens[i] = sizeof reals[i];
                    break;
                default: /* STRING / DECIMAL (and anything _init left as is) */
                    vals[i] = take_bytes(&in, &lens[i]);
                    break;
                }
            }
            char result[256], is_null = 0, error = 0;
            unsigned long len = 0;
            char *r = object ? gman_json_object(&init, &args, result, &len, &is_null, &error)
                             : gman_json_array(&init, &args, result, &len, &is_null, &error);
            if (!is_null && r)
                check_result(r, len, object);
            for (unsigned i = 0; i < n; i++) {
                if (vals[i] && vals[i] != (char *)&ints[i] && vals[i] != (char *)&reals[i])
                    free(vals[i]);
                vals[i] = NULL;
            }
        }
        if (object)
            gman_json_object_deinit(&init);
        else
            gman_json_array_deinit(&init);
    }
    for (unsigned i = 0; i < n; i++)
        free((void *)attrs[i]);
    return 0;
}
