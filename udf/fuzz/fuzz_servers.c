/*
 * fuzz_servers.c — libFuzzer target for the job-server list and option
 * parsers (gs_parse_servers, gs_parse_options: what gman_servers_set and
 * GEARSYNC_GEARMAN_SERVERS take) and for gman_servers_set itself with
 * fabricated UDF_ARGS.
 *
 * Properties besides ASan/UBSan: a parse that fails leaves a message; a list
 * that parses formats to text that parses again to the same servers; 1..16
 * servers, ports 1..65535, hosts at most 255 bytes.
 */
#include "../gearsync_udf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

my_bool gman_servers_set_init(UDF_INIT *, UDF_ARGS *, char *);
void gman_servers_set_deinit(UDF_INIT *);
char *gman_servers_set(UDF_INIT *, UDF_ARGS *, char *, unsigned long *, char *, char *);

static char *dup_exact(const uint8_t *p, size_t n)
{
    char *out = malloc(n ? n : 1);
    if (!out)
        abort();
    memcpy(out, p, n);
    return out;
}

static void check_config(const struct gs_config *c)
{
    if (c->n < 1 || c->n > GS_MAX_SERVERS)
        abort();
    for (unsigned i = 0; i < c->n; i++) {
        if (c->servers[i].port == 0 || !memchr(c->servers[i].host, 0, sizeof c->servers[i].host))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* servers text, then (after the first 0xFF byte, if any) options text */
    const uint8_t *cut = memchr(data, 0xFF, size);
    size_t slen = cut ? (size_t)(cut - data) : size;
    const uint8_t *opt = cut ? cut + 1 : NULL;
    size_t olen = cut ? size - slen - 1 : 0;

    char *s = dup_exact(data, slen);
    struct gs_config c;
    memset(&c, 0, sizeof c);
    char err[MYSQL_ERRMSG_SIZE];
    err[0] = 0;
    if (gs_parse_servers(s, slen, &c, err, sizeof err) == 0) {
        check_config(&c);
        char text[GS_MAX_SERVERS * (GS_MAX_HOST + 10) + 1];
        size_t tl = gs_format_servers(&c, text, sizeof text);
        struct gs_config again;
        memset(&again, 0, sizeof again);
        if (gs_parse_servers(text, tl, &again, err, sizeof err) != 0 || again.n != c.n) {
            fprintf(stderr, "formatted list does not parse again: %.*s (%s)\n", (int)tl, text, err);
            abort();
        }
        for (unsigned i = 0; i < c.n; i++) {
            if (again.servers[i].port != c.servers[i].port || strcmp(again.servers[i].host, c.servers[i].host)) {
                fprintf(stderr, "round trip changed server %u: %s\n", i, text);
                abort();
            }
        }
    } else if (!err[0]) {
        fprintf(stderr, "gs_parse_servers failed without a message\n");
        abort();
    }
    if (opt) {
        char *o = dup_exact(opt, olen);
        err[0] = 0;
        if (gs_parse_options(o, olen, &c, err, sizeof err) != 0 && !err[0]) {
            fprintf(stderr, "gs_parse_options failed without a message\n");
            abort();
        }
        free(o);
    }

    /* gman_servers_set(s[, o]) as a constant (visible to _init) and at row time */
    enum Item_result types[2] = {STRING_RESULT, STRING_RESULT};
    char *vals[2] = {s, opt ? dup_exact(opt, olen) : NULL};
    unsigned long lens[2] = {slen, olen};
    char maybe_null[2] = {1, 1};
    const char *attrs[2] = {"s", "o"};
    unsigned long alens[2] = {1, 1};
    UDF_ARGS args = {.arg_count = opt ? 2u : 1u, .arg_type = types, .args = vals, .lengths = lens,
                     .maybe_null = maybe_null, .attributes = attrs, .attribute_lengths = alens};
    UDF_INIT init;
    memset(&init, 0, sizeof init);
    char message[MYSQL_ERRMSG_SIZE] = "";
    if (!gman_servers_set_init(&init, &args, message)) {
        char result[256], is_null = 0, error = 0;
        unsigned long len = 0;
        char *r = gman_servers_set(&init, &args, result, &len, &is_null, &error);
        if (r && !is_null && len >= init.max_length + 1) {
            fprintf(stderr, "result longer than max_length\n");
            abort();
        }
        gman_servers_set_deinit(&init);
    } else if (!message[0]) {
        fprintf(stderr, "gman_servers_set_init failed without a message\n");
        abort();
    }
    free(vals[1]);
    free(s);
    return 0;
}
