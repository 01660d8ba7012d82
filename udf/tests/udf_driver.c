/*
 * udf_driver.c — calls every entry point of gearsync_udf.so the way mysqld
 * does (fabricated UDF_ARGS/UDF_INIT), with hostile input, so the library
 * can run under valgrind memcheck and AddressSanitizer/UBSan outside mysqld.
 *
 *   udf_driver /path/to/gearsync_udf.so
 *
 * It starts a real gearmand (/usr/sbin/gearmand) on a free loopback port
 * with a small worker thread, plus a misbehaving fake server (garbage,
 * oversize packets, silence, resets) for the failure paths.  Exit status 0
 * when every check passed.
 */
#define _GNU_SOURCE
#include "../gearsync_udf.h"
#include "../gman_proto.h" /* linked in: the journal parser's unit test */

#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef my_bool (*init_fn)(UDF_INIT *, UDF_ARGS *, char *);
typedef void (*deinit_fn)(UDF_INIT *);
typedef char *(*str_fn)(UDF_INIT *, UDF_ARGS *, char *, unsigned long *,
                        char *, char *);
typedef long long (*int_fn)(UDF_INIT *, UDF_ARGS *, char *, char *);
typedef void (*agg_fn)(UDF_INIT *, UDF_ARGS *, char *, char *);
typedef void (*clear_fn)(UDF_INIT *, char *, char *);

static void *lib;
static int failures, checks;
static char self_path[PATH_MAX]; /* this driver, run again as a child */

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        __atomic_add_fetch(&checks, 1, __ATOMIC_RELAXED);                     \
        if (!(cond)) {                                                        \
            __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

static void *sym(const char *name)
{
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "missing symbol %s\n", name);
        exit(2);
    }
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ UDF calls */

#define MAXA 16
struct call {
    UDF_ARGS args;
    enum Item_result types[MAXA];
    char *vals[MAXA];
    unsigned long lens[MAXA];
    char maybe_null[MAXA];
    const char *attrs[MAXA];
    unsigned long attr_lens[MAXA];
    long long ints[MAXA];
    double reals[MAXA];
};

static void call_reset(struct call *c)
{
    memset(c, 0, sizeof *c);
    c->args.arg_type = c->types;
    c->args.args = c->vals;
    c->args.lengths = c->lens;
    c->args.maybe_null = c->maybe_null;
    c->args.attributes = c->attrs;
    c->args.attribute_lengths = c->attr_lens;
}

static void add_str(struct call *c, const char *key, const char *v, size_t len)
{
    unsigned i = c->args.arg_count++;
    c->types[i] = STRING_RESULT;
    c->vals[i] = (char *)v;
    c->lens[i] = v ? len : 0;
    c->maybe_null[i] = 1;
    c->attrs[i] = key ? key : "x";
    c->attr_lens[i] = strlen(c->attrs[i]);
}

static void add_cstr(struct call *c, const char *key, const char *v)
{
    add_str(c, key, v, v ? strlen(v) : 0);
}

static void add_int(struct call *c, const char *key, long long v)
{
    unsigned i = c->args.arg_count++;
    c->types[i] = INT_RESULT;
    c->ints[i] = v;
    c->vals[i] = (char *)&c->ints[i];
    c->lens[i] = 8;
    c->attrs[i] = key;
    c->attr_lens[i] = strlen(key);
}

static void add_real(struct call *c, const char *key, double v)
{
    unsigned i = c->args.arg_count++;
    c->types[i] = REAL_RESULT;
    c->reals[i] = v;
    c->vals[i] = (char *)&c->reals[i];
    c->lens[i] = 8;
    c->attrs[i] = key;
    c->attr_lens[i] = strlen(key);
}

static void add_dec(struct call *c, const char *key, const char *v)
{
    add_cstr(c, key, v);
    c->types[c->args.arg_count - 1] = DECIMAL_RESULT;
}

/* Run name_init / name / name_deinit once like mysqld: the row function
 * sees the arguments after init coerced their types.  Returns a malloc'd
 * copy of the result (NULL for SQL NULL); *init_failed set when init said
 * no (message in msg). */
static char *run_str(const char *name, struct call *c, size_t *outlen,
                     int *init_failed, char *msg)
{
    char n1[64], n2[64];
    snprintf(n1, sizeof n1, "%s_init", name);
    snprintf(n2, sizeof n2, "%s_deinit", name);
    init_fn i = (init_fn)sym(n1);
    deinit_fn d = (deinit_fn)sym(n2);
    str_fn f = (str_fn)sym(name);
    UDF_INIT ini;
    char m[MYSQL_ERRMSG_SIZE];
    memset(&ini, 0, sizeof ini);
    memset(m, 0, sizeof m);
    *init_failed = 0;
    if (i(&ini, &c->args, m)) {
        *init_failed = 1;
        CHECK(memchr(m, '\0', sizeof m) != NULL, "%s: unterminated message",
              name);
        if (msg)
            snprintf(msg, MYSQL_ERRMSG_SIZE, "%s", m);
        return NULL;
    }
    CHECK(ini.maybe_null == 1, "%s: maybe_null", name);
    char result[255];
    unsigned long len = 0;
    char is_null = 0, error = 0;
    char *r = f(&ini, &c->args, result, &len, &is_null, &error);
    char *copy = NULL;
    if (r && !is_null) {
        copy = malloc(len + 1);
        memcpy(copy, r, len);
        copy[len] = '\0';
        *outlen = len;
    }
    d(&ini);
    return copy;
}

static char *run1(const char *name, struct call *c, size_t *outlen)
{
    int failed;
    char *r = run_str(name, c, outlen, &failed, NULL);
    CHECK(!failed, "%s: init failed", name);
    return r;
}

static int json_ok(const char *s, size_t len);

static int expect_json(const char *what, struct call *c, const char *want)
{
    size_t len = 0;
    char *got = run1(what, c, &len);
    int ok = got && strlen(want) == len && memcmp(got, want, len) == 0;
    CHECK(ok, "%s: got %s, want %s", what, got ? got : "NULL", want);
    if (got)
        CHECK(json_ok(got, len), "%s: output is not valid JSON", what);
    free(got);
    return ok;
}

/* An independent, minimal check of the output (the library's own validator
 * is not exported): valid UTF-8, no raw control bytes inside strings,
 * balanced brackets.  The Python tests parse with a strict JSON parser. */
static int utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3
                                                  : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n || (k == 2 && c < 0xC2))
            return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
        i += k;
    }
    return 1;
}

static int json_ok(const char *s, size_t len)
{
    int in_str = 0, depth = 0;
    if (!utf8_ok((const unsigned char *)s, len))
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (in_str) {
            if (c < 0x20)
                return 0;
            if (c == '\\') {
                i++;
                continue;
            }
            if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"')
            in_str = 1;
        else if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']')
            depth--;
        if (depth < 0)
            return 0;
    }
    return !in_str && depth == 0;
}

/* ------------------------------------------------------------ JSON */

static char *servers_set(const char *spec, const char *opts, int *init_failed,
                         char *msg);

static void test_json(void)
{
    struct call c;
    size_t len;
    char *r;

    call_reset(&c);
    expect_json("gman_json_object", &c, "{}");
    expect_json("gman_json_array", &c, "[]");

    call_reset(&c);
    add_int(&c, "id", 42);
    add_int(&c, "min", (long long)(-9223372036854775807LL - 1));
    add_real(&c, "r", 0.1);
    add_real(&c, "nan", 0.0 / 0.0);
    add_real(&c, "inf", 1.0 / 0.0);
    add_real(&c, "tiny", 5e-324);
    add_real(&c, "hundred", 100.0);
    add_dec(&c, "d", "-12.340");
    add_dec(&c, "bad_dec", "1.2.3");
    add_cstr(&c, "s", "a\"b\\c\n\t\x01/");
    add_str(&c, "nul", NULL, 12345); /* NULL with a junk length */
    add_str(&c, "bin", "\xff\xfe\x00", 3);
    add_str(&c, "k\"ey\x01", "\xc3\xa9\xf0\x9f\x98\x80", 6);
    add_cstr(&c, "json_nested", "[1, {\"a\": null}]");
    add_cstr(&c, "json_inj", "1,\"admin\":true");
    expect_json("gman_json_object", &c,
                "{\"id\":42,\"min\":-9223372036854775808,\"r\":0.1,\"nan\":null,"
                "\"inf\":null,\"tiny\":5e-324,\"hundred\":100.0,\"d\":-12.340,"
                "\"bad_dec\":\"1.2.3\",\"s\":\"a\\\"b\\\\c\\n\\t\\u0001/\","
                "\"nul\":null,\"bin\":{\"$b64\":\"//4A\"},"
                "\"k\\\"ey\\u0001\":\"\xc3\xa9\xf0\x9f\x98\x80\","
                "\"nested\":[1, {\"a\": null}],\"inj\":\"1,\\\"admin\\\":true\"}");

    /* no attributes at all (defensive), unknown result types */
    call_reset(&c);
    add_int(&c, "a", 1);
    add_cstr(&c, "b", "x");
    c.types[1] = TIME_RESULT;
    c.args.attributes = NULL;
    c.args.attribute_lengths = NULL;
    expect_json("gman_json_object", &c, "{\"\":1,\"\":\"x\"}");
    c.types[1] = ROW_RESULT;
    expect_json("gman_json_array", &c, "[1,\"x\"]");

    /* invalid UTF-8 in a key is replaced, never copied raw */
    call_reset(&c);
    add_int(&c, "k\xff\xc0", 1);
    expect_json("gman_json_object", &c, "{\"k\xef\xbf\xbd\xef\xbf\xbd\":1}");

    /* every single byte as a string value */
    for (int b = 0; b < 256; b++) {
        char v = (char)b;
        call_reset(&c);
        add_str(&c, "v", &v, 1);
        r = run1("gman_json_array", &c, &len);
        CHECK(r && json_ok(r, len), "byte %d: %s", b, r ? r : "NULL");
        free(r);
    }

    /* random bytes, random types: valid output every time */
    unsigned seed = 12345;
    char buf[512];
    for (int iter = 0; iter < 3000; iter++) {
        call_reset(&c);
        int n = rand_r(&seed) % 6;
        for (int k = 0; k < n; k++) {
            size_t l = (size_t)(rand_r(&seed) % (int)sizeof buf);
            char *p = buf + rand_r(&seed) % 64;
            if (p + l > buf + sizeof buf)
                l = (size_t)(buf + sizeof buf - p);
            for (size_t q = 0; q < l; q++)
                p[q] = (char)(rand_r(&seed) % 4 ? rand_r(&seed) % 128
                                                  : rand_r(&seed));
            switch (rand_r(&seed) % 5) {
            case 0: add_str(&c, k % 2 ? "json_v" : "v", p, l); break;
            case 1: add_int(&c, "i", (long long)rand_r(&seed) * 7919); break;
            case 2: add_real(&c, "r", (double)rand_r(&seed) / 3.0); break;
            case 3: add_str(&c, "dec", p, l); c.types[c.args.arg_count - 1] = DECIMAL_RESULT; break;
            default: add_str(&c, "n", NULL, 0);
            }
        }
        r = run1(iter % 2 ? "gman_json_object" : "gman_json_array", &c, &len);
        CHECK(r && json_ok(r, len), "random %d", iter);
        free(r);
    }

    /* deep nesting through json_: over the validator's depth -> a string */
    size_t deep = 100000;
    char *d = malloc(2 * deep);
    memset(d, '[', deep);
    memset(d + deep, ']', deep);
    call_reset(&c);
    add_str(&c, "json_deep", d, 2 * deep);
    r = run1("gman_json_object", &c, &len);
    CHECK(r && len == 2 * deep + 11 && r[8] == '"', "deep nesting escaped");
    free(r);
    free(d);

    /* over the output cap (max_payload=64 MiB here): NULL, no crash; just
     * under: fine; with the default cap (256 MiB) the same output is built */
    int failed = 0;
    char msg[MYSQL_ERRMSG_SIZE] = "";
    free(servers_set("127.0.0.1:1", "max_payload=67108864", &failed, msg));
    CHECK(!failed, "max_payload=64 MiB accepted: %s", msg);
    size_t big = 12u << 20;
    char *ctl = malloc(big);
    memset(ctl, 1, big);
    call_reset(&c);
    add_str(&c, "x", ctl, big);
    r = run1("gman_json_object", &c, &len);
    CHECK(r == NULL, "72 MiB escaped output must be NULL");
    free(r);
    memset(ctl, 'a', big);
    r = run1("gman_json_object", &c, &len);
    CHECK(r && len == big + 8, "12 MiB plain string");
    free(r);
    free(servers_set("127.0.0.1:1", "max_payload=268435456", &failed, msg));
    CHECK(!failed, "max_payload=256 MiB accepted: %s", msg);
    memset(ctl, 1, big);
    r = run1("gman_json_object", &c, &len);
    CHECK(r && len == 6 * big + 8, "72 MiB escaped output under a 256 MiB cap");
    free(r);
    free(ctl);
    const char *bad[] = {"max_payload=65535", "max_payload=1073741825", "max_payload=x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        failed = 0;
        free(servers_set("127.0.0.1:1", bad[i], &failed, msg));
        CHECK(failed && strstr(msg, "max_payload is 65536..1073741824 bytes"), "%s refused: %s", bad[i], msg);
    }
}

/* ------------------------------------------------------------ servers */

static char *servers_set(const char *spec, const char *opts, int *init_failed,
                         char *msg)
{
    struct call c;
    size_t len;
    call_reset(&c);
    add_cstr(&c, "s", spec);
    if (opts)
        add_cstr(&c, "o", opts);
    return run_str("gman_servers_set", &c, &len, init_failed, msg);
}

static void test_servers_set(void)
{
    char msg[MYSQL_ERRMSG_SIZE];
    int failed;
    const char *bad[] = {"", ",", "h:", "h:0", "h:65536", "h:12a", "[::1",
                         "[::1]x", "::1:4730", "a b", "h,,h", "h:-1",
                         "h:99999999999999999999", "[%%]", "[abc]:1", "[%:1]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *r = servers_set(bad[i], NULL, &failed, msg);
        CHECK(failed && r == NULL && msg[0], "bad spec '%s' accepted", bad[i]);
        free(r);
    }
    char *r = servers_set(" 127.0.0.1:1 ,[::1]:2, localhost ", "timeout_ms=50, pipeline=0",
                          &failed, msg);
    CHECK(r && strcmp(r, "127.0.0.1:1,[::1]:2,localhost:4730") == 0,
          "canonical list: %s", r ? r : msg);
    free(r);
    /* row-time NULL (not constant at init) */
    struct call c;
    size_t len;
    call_reset(&c);
    add_str(&c, "s", NULL, 0);
    r = run_str("gman_servers_set", &c, &len, &failed, msg);
    CHECK(!failed && r == NULL, "NULL spec gives NULL");
    free(r);
    /* fuzz the parser */
    unsigned seed = 7;
    char spec[300];
    for (int iter = 0; iter < 5000; iter++) {
        size_t l = (size_t)(rand_r(&seed) % (int)sizeof spec);
        for (size_t q = 0; q < l; q++)
            spec[q] = "0123456789.:,[]ab -\xff"[rand_r(&seed) % 20];
        struct call f;
        call_reset(&f);
        add_str(&f, "s", spec, l);
        if (iter % 3 == 0)
            add_str(&f, "o", spec, l);
        r = run_str("gman_servers_set", &f, &len, &failed, msg);
        free(r);
    }
    /* too many arguments */
    call_reset(&c);
    r = run_str("gman_servers_set", &c, &len, &failed, msg);
    CHECK(failed, "zero args accepted");
    free(r);
}

/* ------------------------------------------------------------ gearmand */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t l = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) != 0) {
        perror("free_port");
        exit(2);
    }
    close(fd);
    return ntohs(a.sin_port);
}

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static pid_t gearmand_pid;

static int start_gearmand_on(int port)
{
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    gearmand_pid = fork();
    if (gearmand_pid == 0) {
        execl("/usr/sbin/gearmand", "gearmand", "--listen", "127.0.0.1",
              "--port", p, "--threads", "1", "--log-file", "none",
              (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        int fd = connect_port(port);
        if (fd >= 0) {
            close(fd);
            return port;
        }
        usleep(25000);
    }
    fprintf(stderr, "gearmand did not start\n");
    exit(2);
}

static int start_gearmand(void)
{
    return start_gearmand_on(free_port());
}

static void stop_gearmand(void)
{
    if (gearmand_pid > 0) {
        kill(gearmand_pid, SIGTERM);
        waitpid(gearmand_pid, NULL, 0);
        gearmand_pid = 0;
    }
}

static int send_pkt(int fd, uint32_t type, const char *data, size_t len)
{
    char h[12];
    memcpy(h, "\0REQ", 4);
    uint32_t t = htonl(type), l = htonl((uint32_t)len);
    memcpy(h + 4, &t, 4);
    memcpy(h + 8, &l, 4);
    if (send(fd, h, 12, MSG_NOSIGNAL) != 12)
        return -1;
    if (len && send(fd, data, len, MSG_NOSIGNAL) != (ssize_t)len)
        return -1;
    return 0;
}

static int read_full(int fd, char *p, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* read one response: returns its type, data in *out (malloc'd) */
static int recv_pkt(int fd, char **out, size_t *len)
{
    char h[12];
    uint32_t t, l;
    if (read_full(fd, h, 12) != 0)
        return -1;
    memcpy(&t, h + 4, 4);
    memcpy(&l, h + 8, 4);
    *len = ntohl(l);
    *out = malloc(*len + 1);
    if (read_full(fd, *out, *len) != 0) {
        free(*out);
        return -1;
    }
    (*out)[*len] = '\0';
    return (int)ntohl(t);
}

struct worker {
    int port;
    int stop; /* atomic */
    long jobs;
};

/* worker for upper / fail / chunks / sleep / num */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int fd = connect_port(w->port);
    if (fd < 0)
        return NULL;
    const char *fns[] = {"upper", "fail", "chunks", "sleep", "num"};
    for (size_t i = 0; i < 5; i++)
        send_pkt(fd, 1 /* CAN_DO */, fns[i], strlen(fns[i]));
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        char *d;
        size_t l;
        send_pkt(fd, 30 /* GRAB_JOB_UNIQ */, NULL, 0);
        int t = recv_pkt(fd, &d, &l);
        if (t < 0)
            continue;
        if (t != 31) {
            free(d);
            usleep(2000);
            continue;
        }
        /* handle\0fn\0unique\0workload */
        char *h = d, *fn = h + strlen(h) + 1, *uq = fn + strlen(fn) + 1;
        char *wl = uq + strlen(uq) + 1;
        size_t wlen = l - (size_t)(wl - d), hl = strlen(h);
        char *out = malloc(hl + 1 + wlen + 64);
        memcpy(out, h, hl + 1);
        w->jobs++;
        if (strcmp(fn, "upper") == 0) {
            for (size_t i = 0; i < wlen; i++)
                out[hl + 1 + i] = (char)((wl[i] >= 'a' && wl[i] <= 'z') ? wl[i] - 32 : wl[i]);
            send_pkt(fd, 13, out, hl + 1 + wlen);
        } else if (strcmp(fn, "chunks") == 0) {
            memcpy(out + hl + 1, "ab", 2);
            send_pkt(fd, 28 /* WORK_DATA */, out, hl + 3);
            memcpy(out + hl + 1, "1\0" "2", 3); /* numerator\0denominator */
            send_pkt(fd, 12 /* WORK_STATUS */, out, hl + 4);
            memcpy(out + hl + 1, "cd", 2);
            send_pkt(fd, 13, out, hl + 3);
        } else if (strcmp(fn, "sleep") == 0) {
            usleep(400000);
            send_pkt(fd, 13, out, hl + 1);
        } else if (strcmp(fn, "num") == 0) {
            int n = snprintf(out + hl + 1, 64, " %zu ", wlen);
            send_pkt(fd, 13, out, hl + 1 + (size_t)n);
        } else {
            send_pkt(fd, 14 /* WORK_FAIL */, out, hl);
        }
        free(out);
        free(d);
    }
    close(fd);
    return NULL;
}

/* ------------------------------------------------------------ evil */

enum evil_mode { EVIL_CLOSE, EVIL_GARBAGE, EVIL_HUGE, EVIL_SILENT,
                 EVIL_TRUNCATED, EVIL_BIG_HANDLE, EVIL_ERROR, EVIL_WORK_HUGE };

struct evil {
    int port, lfd;
    int mode, stop; /* atomic */
    pthread_t th;
};

static void *evil_main(void *arg)
{
    struct evil *e = arg;
    while (!__atomic_load_n(&e->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd p = {.fd = e->lfd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int fd = accept(e->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        char buf[65536];
        struct pollfd q = {.fd = fd, .events = POLLIN};
        /* wait for the request, then misbehave */
        while (!__atomic_load_n(&e->stop, __ATOMIC_ACQUIRE) && poll(&q, 1, 50) == 0)
            ;
        ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        (void)got;
        char pkt[64];
        uint32_t v;
        switch (__atomic_load_n(&e->mode, __ATOMIC_ACQUIRE)) {
        case EVIL_CLOSE:
            break;
        case EVIL_GARBAGE:
            send(fd, "HTTP/1.1 400 Bad Request\r\n\r\n", 28, MSG_NOSIGNAL);
            break;
        case EVIL_HUGE:
            memcpy(pkt, "\0RES", 4);
            v = htonl(8); memcpy(pkt + 4, &v, 4);
            v = htonl(0xFFFFFFF0u); memcpy(pkt + 8, &v, 4);
            send(fd, pkt, 12, MSG_NOSIGNAL);
            usleep(300000);
            break;
        case EVIL_SILENT:
            while (!__atomic_load_n(&e->stop, __ATOMIC_ACQUIRE) && recv(fd, buf, sizeof buf, 0) > 0)
                ;
            break;
        case EVIL_TRUNCATED:
            memcpy(pkt, "\0RES", 4);
            v = htonl(8); memcpy(pkt + 4, &v, 4);
            v = htonl(20); memcpy(pkt + 8, &v, 4);
            memcpy(pkt + 12, "H:x", 3);
            send(fd, pkt, 15, MSG_NOSIGNAL);
            break;
        case EVIL_BIG_HANDLE: {
            size_t n = 60000;
            char *b = malloc(12 + n);
            memcpy(b, "\0RES", 4);
            v = htonl(8); memcpy(b + 4, &v, 4);
            v = htonl((uint32_t)n); memcpy(b + 8, &v, 4);
            memset(b + 12, 'h', n);
            send(fd, b, 12 + n, MSG_NOSIGNAL);
            free(b);
            usleep(100000);
            break;
        }
        case EVIL_ERROR:
            memcpy(pkt, "\0RES", 4);
            v = htonl(19); memcpy(pkt + 4, &v, 4);
            v = htonl(10); memcpy(pkt + 8, &v, 4);
            memcpy(pkt + 12, "E1\0\x01\x02oops", 10);
            send(fd, pkt, 22, MSG_NOSIGNAL);
            usleep(100000);
            break;
        case EVIL_WORK_HUGE:
            memcpy(pkt, "\0RES", 4);
            v = htonl(8); memcpy(pkt + 4, &v, 4);
            v = htonl(3); memcpy(pkt + 8, &v, 4);
            memcpy(pkt + 12, "H:1", 3);
            memcpy(pkt + 15, "\0RES", 4);
            v = htonl(28); memcpy(pkt + 19, &v, 4);
            v = htonl(0x7FFFFFFFu); memcpy(pkt + 23, &v, 4);
            send(fd, pkt, 27, MSG_NOSIGNAL);
            usleep(300000);
            break;
        }
        close(fd);
    }
    return NULL;
}

static void evil_start(struct evil *e)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t l = sizeof a;
    int one = 1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    e->lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(e->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(e->lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(e->lfd, 16) != 0 ||
        getsockname(e->lfd, (struct sockaddr *)&a, &l) != 0) {
        perror("evil");
        exit(2);
    }
    e->port = ntohs(a.sin_port);
    pthread_create(&e->th, NULL, evil_main, e);
}

/* ------------------------------------------------------------ jobs */

static char *job(const char *name, const char *fn, const char *wl, size_t wlen,
                 const char *uq, size_t *len)
{
    struct call c;
    call_reset(&c);
    add_cstr(&c, "f", fn);
    add_str(&c, "w", wl, wlen);
    if (uq)
        add_cstr(&c, "u", uq);
    c.types[1] = INT_RESULT; /* init must coerce to STRING_RESULT */
    return run1(name, &c, len);
}

static const char *last_error(void)
{
    static char buf[600];
    struct call c;
    size_t len = 0;
    call_reset(&c);
    char *r = run1("gman_last_error", &c, &len);
    snprintf(buf, sizeof buf, "%s", r ? r : "(none)");
    free(r);
    return buf;
}

static long long flush(void)
{
    struct call c;
    UDF_INIT ini;
    char m[MYSQL_ERRMSG_SIZE], isn = 0, err = 0;
    call_reset(&c);
    memset(&ini, 0, sizeof ini);
    CHECK(((init_fn)sym("gman_flush_init"))(&ini, &c.args, m) == 0, "flush init");
    long long n = ((int_fn)sym("gman_flush"))(&ini, &c.args, &isn, &err);
    return isn ? -1 : n;
}

static void point(int port, const char *opts)
{
    char spec[64];
    int failed;
    snprintf(spec, sizeof spec, "127.0.0.1:%d", port);
    free(servers_set(spec, opts, &failed, NULL));
    CHECK(!failed, "servers_set %s", spec);
}

struct bg_thread_arg {
    int n, ok;
};

static void *bg_thread(void *arg)
{
    struct bg_thread_arg *a = arg;
    char wl[32];
    for (int i = 0; i < a->n; i++) {
        size_t len;
        int n = snprintf(wl, sizeof wl, "t%d", i);
        char *r = job("gman_do_background", "par", wl, (size_t)n, NULL, &len);
        a->ok += r != NULL;
        free(r);
    }
    CHECK(flush() == 0, "thread flush");
    return NULL; /* thread exit: the pthread key destructor frees its state */
}

static void test_jobs(void)
{
    size_t len;
    char *r;
    double t0;

    /* nothing listening: NULL, fast */
    point(free_port(), "timeout_ms=100,retry_ms=0");
    t0 = now_s();
    r = job("gman_do_background", "f", "x", 1, NULL, &len);
    CHECK(r == NULL && now_s() - t0 < 0.5, "down: NULL fast");
    free(r);
    r = job("gman_do", "f", "x", 1, NULL, &len);
    CHECK(r == NULL, "down: gman_do NULL");
    free(r);

    int port = start_gearmand();
    struct worker w = {.port = port};
    pthread_t wt;
    pthread_create(&wt, NULL, worker_main, &w);

    for (int pipeline = 1; pipeline >= 0; pipeline--) {
        point(port, pipeline ? "pipeline=1,do_timeout_ms=2000"
                             : "pipeline=0,do_timeout_ms=2000");
        r = job("gman_do_background", "bgjob", "\0\1\2", 3, NULL, &len);
        CHECK(r && (pipeline ? len == 40 : strncmp(r, "H:", 2) == 0),
              "background result %s", r ? r : "NULL");
        free(r);
        r = job("gman_do_high_background", "bgjob", "x", 1, "uq-1", &len);
        CHECK(r != NULL, "high bg");
        free(r);
        r = job("gman_do_low_background", "bgjob", "x", 1, NULL, &len);
        CHECK(r != NULL, "low bg");
        free(r);
        r = job("gman_do", "upper", "hello", 5, NULL, &len);
        CHECK(r && strcmp(r, "HELLO") == 0, "gman_do upper: %s", r ? r : last_error());
        free(r);
        r = job("gman_do_high", "chunks", "", 0, NULL, &len);
        CHECK(r && strcmp(r, "abcd") == 0, "chunks: %s", r ? r : last_error());
        free(r);
        r = job("gman_do_low", "fail", "x", 1, NULL, &len);
        CHECK(r == NULL, "WORK_FAIL -> NULL");
        free(r);
        CHECK(flush() == 0, "flush");
    }
    /* bad arguments: NULL, nothing sent */
    r = job("gman_do_background", "f", NULL, 0, NULL, &len);
    CHECK(r == NULL, "NULL workload");
    free(r);
    char longuq[80];
    memset(longuq, 'u', 79);
    longuq[79] = '\0';
    r = job("gman_do_background", "f", "x", 1, longuq, &len);
    CHECK(r == NULL, "unique > 64");
    free(r);
    struct call c;
    call_reset(&c);
    add_str(&c, "f", "a\0b", 3);
    add_cstr(&c, "w", "x");
    r = run1("gman_do_background", &c, &len);
    CHECK(r == NULL, "NUL in function name");
    free(r);
    call_reset(&c);
    add_cstr(&c, "f", "x");
    int failed;
    r = run_str("gman_do", &c, &len, &failed, NULL);
    CHECK(failed, "gman_do with one argument");
    free(r);

    /* foreground timeout */
    point(port, "do_timeout_ms=150");
    t0 = now_s();
    r = job("gman_do", "sleep", "x", 1, NULL, &len);
    CHECK(r == NULL && now_s() - t0 < 1.0, "foreground timeout");
    free(r);
    usleep(400000);

    /* gman_sum */
    point(port, "do_timeout_ms=2000");
    {
        UDF_INIT ini;
        char m[MYSQL_ERRMSG_SIZE], isn = 0, err = 0;
        memset(&ini, 0, sizeof ini);
        call_reset(&c);
        add_cstr(&c, "f", "num");
        add_cstr(&c, "w", "abc");
        CHECK(((init_fn)sym("gman_sum_init"))(&ini, &c.args, m) == 0, "sum init");
        ((clear_fn)sym("gman_sum_clear"))(&ini, &isn, &err);
        for (int i = 0; i < 4; i++)
            ((agg_fn)sym("gman_sum_add"))(&ini, &c.args, &isn, &err);
        c.vals[1] = NULL; /* NULL rows add nothing */
        ((agg_fn)sym("gman_sum_add"))(&ini, &c.args, &isn, &err);
        long long s = ((int_fn)sym("gman_sum"))(&ini, &c.args, &isn, &err);
        CHECK(!isn && s == 12, "gman_sum = %lld", s);
        ((clear_fn)sym("gman_sum_clear"))(&ini, &isn, &err);
        isn = 0;
        ((int_fn)sym("gman_sum"))(&ini, &c.args, &isn, &err);
        CHECK(isn, "empty sum is NULL");
        ((deinit_fn)sym("gman_sum_deinit"))(&ini);
    }

    /* threads: every thread's state is freed at its exit (a generous
     * timeout: valgrind runs one thread at a time) */
    point(port, "timeout_ms=3000");
    pthread_t th[8];
    struct bg_thread_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i].n = 400;
        args[i].ok = 0;
        pthread_create(&th[i], NULL, bg_thread, &args[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].ok == 400, "thread %d: %d of 400", i, args[i].ok);
    }

    /* gearmand restarts under a cached connection: pipelined jobs resent */
    r = job("gman_do_background", "restart", "before", 6, NULL, &len);
    free(r);
    CHECK(flush() == 0, "flush before restart");
    __atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
    pthread_join(wt, NULL);
    stop_gearmand();
    r = job("gman_do_background", "restart", "down", 4, NULL, &len);
    free(r);
    r = job("gman_do_background", "restart", "down", 4, NULL, &len);
    CHECK(r == NULL, "gearmand stopped: NULL");
    free(r);
    stop_gearmand();

    /* misbehaving servers: NULL within the deadline, never a crash */
    struct evil e = {0};
    evil_start(&e);
    const char *names[] = {"close", "garbage", "huge", "silent", "truncated",
                           "big handle", "error", "work huge"};
    for (int mode = EVIL_CLOSE; mode <= EVIL_WORK_HUGE; mode++) {
        for (int pipeline = 0; pipeline <= 1; pipeline++) {
            __atomic_store_n(&e.mode, mode, __ATOMIC_RELEASE);
            point(e.port, pipeline ? "timeout_ms=100,do_timeout_ms=300,retry_ms=0,pipeline=1"
                                   : "timeout_ms=100,do_timeout_ms=300,retry_ms=0,pipeline=0");
            t0 = now_s();
            r = job(mode == EVIL_WORK_HUGE ? "gman_do" : "gman_do_background",
                    "f", "x", 1, NULL, &len);
            double took = now_s() - t0;
            CHECK(took < 1.0, "%s: took %.3f s", names[mode], took);
            if (mode != EVIL_SILENT || !pipeline)
                CHECK(r == NULL || pipeline, "%s: returned %s", names[mode], r);
            free(r);
            /* a second call on the same (maybe broken) connection */
            r = job("gman_do_background", "f", "y", 1, NULL, &len);
            free(r);
            flush();
        }
    }
    __atomic_store_n(&e.stop, 1, __ATOMIC_RELEASE);
    pthread_join(e.th, NULL);
    close(e.lfd);
    point(free_port(), "retry_ms=0");
    flush(); /* drop: nothing reachable, stays queued until unload */
}

/* kill(SIGSTOP) returns before the process has stopped: a gearmand still
 * running on the other core could acknowledge the next jobs.  Wait (at most
 * 5 s) until /proc shows it stopped. */
static int wait_stopped(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    double t0 = now_s();
    while (now_s() - t0 < 5.0) {
        FILE *f = fopen(path, "r");
        if (!f)
            return 0;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')'); /* "pid (comm) S ..." */
        if (rp && rp[1] == ' ' && (rp[2] == 'T' || rp[2] == 't'))
            return 1;
        usleep(1000);
    }
    return 0;
}

/* Take jobs of function fn from gearmand on port as a worker, for up to 10 s
 * or until `want` arrived whose workload is tag + one digit (+ any number
 * of '.'); returns how
 * many did.  "warm" workloads are not counted (gearmand lost them with its
 * queue: not ours to check); *other counts any other workload. */
static int count_slots(const char *dir, int bad);

static int grab_held(int port, const char *fn, char tag, int want, int *other)
{
    int fd = connect_port(port), got = 0;
    *other = 0;
    CHECK(fd >= 0, "%s: worker connects", fn);
    struct timeval tv = {0, 200000};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        send_pkt(fd, 1 /* CAN_DO */, fn, strlen(fn));
    }
    double t0 = now_s();
    while (fd >= 0 && got < want && now_s() - t0 < 10) {
        char *d = NULL;
        size_t l = 0;
        send_pkt(fd, 30 /* GRAB_JOB_UNIQ */, NULL, 0);
        int t = recv_pkt(fd, &d, &l);
        if (t == 31) { /* handle\0fn\0unique\0workload */
            char *h = d, *f = memchr(d, 0, l);
            char *uq = f ? memchr(f + 1, 0, l - (size_t)(f + 1 - d)) : NULL;
            char *wl = uq ? memchr(uq + 1, 0, l - (size_t)(uq + 1 - d)) : NULL;
            if (wl) {
                wl++;
                size_t wlen = l - (size_t)(wl - d);
                size_t pad = 2;
                while (pad < wlen && wl[pad] == '.')
                    pad++;
                if (wlen >= 2 && pad == wlen && wl[0] == tag && wl[1] >= '1' &&
                    wl[1] <= '9')
                    got++;
                else if (!(wlen == 4 && memcmp(wl, "warm", 4) == 0))
                    (*other)++;
                /* handle\0result (empty): both arguments are required */
                send_pkt(fd, 13 /* WORK_COMPLETE */, h, strlen(h) + 1);
            }
        } else if (t >= 0) {
            usleep(20000);
        }
        free(d);
    }
    if (fd >= 0)
        close(fd);
    return got;
}

/* Jobs unacknowledged at unload go to the spill file and come back at the
 * next load: pipelined jobs held by a SIGSTOPped gearmand, dlclose, gearmand
 * SIGKILLed and started again on the same port, dlopen: they arrive, and the
 * file goes. */
static void test_spill(const char *so, const char *spill)
{
    size_t len;
    char *r;
    int port = start_gearmand();
    pid_t pid = gearmand_pid;
    char spec[64];
    snprintf(spec, sizeof spec, "127.0.0.1:%d", port);
    point(port, "timeout_ms=100,retry_ms=0,pipeline=1");
    r = job("gman_do_background", "spill", "warm", 4, NULL, &len);
    free(r);
    CHECK(flush() == 0, "spill: warm flush");
    kill(pid, SIGSTOP);
    CHECK(wait_stopped(pid), "spill: gearmand stopped by SIGSTOP");
    const char *held[] = {"s1", "s2", "s3"};
    for (int i = 0; i < 3; i++) {
        r = job("gman_do_background", "spill", held[i], 2, NULL, &len);
        CHECK(r != NULL, "spill: pipelined submit to a hung gearmand");
        free(r);
    }
    dlclose(lib); /* unload: nothing acknowledges them -> spill file */
    lib = NULL;
    CHECK(access(spill, F_OK) == 0, "spill: file written at unload");
    char jdir[80];
    snprintf(jdir, sizeof jdir, "%.*s", (int)(strrchr(spill, '/') - spill), spill);
    CHECK(count_slots(jdir, 0) == 0,
          "spill: no journal slot left once the spill file has the jobs");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    gearmand_pid = 0;
    start_gearmand_on(port);
    setenv(GS_ENV_SERVERS, spec, 1); /* the defaults of the next load */
    lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen again: %s\n", dlerror());
        exit(2);
    }
    /* the keeper sends them without any call: take them as a worker */
    int other = 0, got = grab_held(port, "spill", 's', 3, &other);
    CHECK(got == 3 && other == 0, "spill: %d of 3 held jobs arrived after the reload (%d other)", got, other);
    for (int i = 0; i < 250 && access(spill, F_OK) == 0; i++)
        usleep(20000);
    CHECK(access(spill, F_OK) != 0, "spill: file removed once delivered");
}

/* ------------------------------------------------------------ journal */

#define SLOT GS_JOURNAL_NAME "."

/* Slot files in dir: with bad = 0 the live ones, with bad = 1 the *.bad. */
static int count_slots(const char *dir, int bad)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        int is_bad = l > 4 && strcmp(e->d_name + l - 4, ".bad") == 0;
        if (strncmp(e->d_name, SLOT, sizeof SLOT - 1) == 0 && is_bad == bad)
            n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* Jobs in the slot files of dir (gs_journal_parse over each file). */
static size_t jobs_in_slots(const char *dir)
{
    DIR *d = opendir(dir);
    size_t jobs = 0;
    struct dirent *e;
    static char buf[4u << 20];
    while (d && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, SLOT, sizeof SLOT - 1) != 0 ||
            (l > 4 && strcmp(e->d_name + l - 4, ".bad") == 0))
            continue;
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
        struct gs_journal_view v;
        if (n > 0 && gs_journal_parse(buf, (size_t)n, &v) == 0)
            jobs += v.jobs;
        if (fd >= 0)
            close(fd);
    }
    if (d)
        closedir(d);
    return jobs;
}

static size_t put_job(char *p, const char *uq, const char *wl)
{
    size_t wlen = strlen(wl);
    size_t h = gs_proto_submit_head(p, 256, 18 /* SUBMIT_JOB_BG */, "journal",
                                    7, uq, strlen(uq), wlen);
    memcpy(p + h, wl, wlen);
    return h + wlen;
}

static void put_word(char *buf, size_t head, size_t len)
{
    uint64_t w = ((uint64_t)head << 32) | len;
    memcpy(buf + 8, &w, sizeof w);
}

/* The slot file parser: torn, acknowledged, damaged, garbage. */
static void test_journal_parse(void)
{
    static char buf[GS_JOURNAL_HDR + 1024];
    struct gs_journal_view v;
    char *d = buf + GS_JOURNAL_HDR;
    memcpy(buf, GS_JOURNAL_MAGIC, 8);
    size_t a = put_job(d, "u1", "w1");
    size_t b = put_job(d + a, "u2", "w2");
    put_word(buf, 0, a + b);
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == 0 && v.jobs == 2 &&
              v.head == 0 && v.end == a + b && !v.why,
          "journal parse: two jobs (%zu)", v.jobs);
    put_word(buf, a, a + b);
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == 0 && v.jobs == 1 &&
              v.head == a && v.end == a + b,
          "journal parse: the first acknowledged (%zu)", v.jobs);
    /* the process died copying a third: past the word, never looked at */
    size_t c = put_job(d + a + b, "u3", "a longer workload");
    memset(d + a + b + c / 2, 0, c - c / 2);
    put_word(buf, 0, a + b);
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == 0 && v.jobs == 2 &&
              v.end == a + b && !v.why,
          "journal parse: a torn record past the word is dropped (%zu)",
          v.jobs);
    /* a word that covers damaged bytes: the jobs before them, and why */
    memset(d + a + b, 0, 4);
    put_word(buf, 0, a + b + c);
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == 0 && v.jobs == 2 &&
              v.end == a + b && v.why && v.at == a + b,
          "journal parse: damage inside the window is named (%zu, %s)",
          v.jobs, v.why ? v.why : "-");
    put_word(buf, 0, 0);
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == 0 && v.jobs == 0 && !v.why,
          "journal parse: empty slot");
    put_word(buf, a + b, a);
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == -1 && v.why,
          "journal parse: head past len refused");
    put_word(buf, 0, sizeof buf);
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == -1 && v.why,
          "journal parse: len past the file refused");
    put_word(buf, 0, a + b);
    CHECK(gs_journal_parse(buf, GS_JOURNAL_HDR - 1, &v) == -1,
          "journal parse: short file refused");
    CHECK(gs_journal_parse(NULL, 0, &v) == -1, "journal parse: NULL refused");
    buf[0] = 'X';
    CHECK(gs_journal_parse(buf, sizeof buf, &v) == -1 && v.jobs == 0,
          "journal parse: bad magic refused");
    memcpy(buf, GS_JOURNAL_MAGIC, 8);
    /* garbage: whatever the bytes, the result stays inside the window */
    unsigned seed = 12345;
    for (int i = 0; i < 3000; i++) {
        for (size_t k = GS_JOURNAL_WORD; k < sizeof buf; k++)
            buf[k] = (char)(rand_r(&seed) >> 7);
        if (i & 1) /* a plausible window over garbage */
            put_word(buf, (size_t)rand_r(&seed) % 64,
                     64 + (size_t)rand_r(&seed) % 900);
        if (i % 3 == 0) /* valid packets, then garbage */
            put_word(buf, 0, put_job(d, "g", "x") + (size_t)rand_r(&seed) % 64);
        if (i % 3 == 0)
            put_job(d, "g", "x");
        size_t size = GS_JOURNAL_HDR + (size_t)rand_r(&seed) % 1024;
        int rc = gs_journal_parse(buf, size, &v);
        CHECK(rc == -1 || (v.head <= v.end && v.end <= size - GS_JOURNAL_HDR &&
                           (v.jobs == 0 || v.end > v.head)),
              "journal parse: garbage %d", i);
    }
}

/* Run as `udf_driver --journal-child lib port`: pipelines k1..k3 and a
 * 600 KiB k5 to a
 * gearmand the parent SIGSTOPs, says so, and waits to be SIGKILLed. */
static int journal_child(const char *so, int port)
{
    char c = 0, ok = 'd';
    size_t len;
    lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return 2;
    point(port, "timeout_ms=100,retry_ms=0,pipeline=1");
    free(job("gman_do_background", "journal", "warm", 4, NULL, &len));
    if (flush() != 0)
        ok = 'x';
    if (write(1, "w", 1) != 1 || read(0, &c, 1) != 1)
        return 2;
    const char *held[] = {"k1", "k2", "k3"};
    for (int i = 0; i < 3; i++) {
        char *r = job("gman_do_background", "journal", held[i], 2, NULL, &len);
        if (!r)
            ok = 'x';
        free(r);
    }
    /* larger than a new slot (256 KiB): the file grows */
    size_t big = 600u << 10;
    char *wl = malloc(big);
    if (!wl)
        return 2;
    memset(wl, '.', big);
    memcpy(wl, "k5", 2);
    char *r = job("gman_do_background", "journal", wl, big, NULL, &len);
    if (!r)
        ok = 'x';
    free(r);
    free(wl);
    if (write(1, &ok, 1) != 1)
        return 2;
    for (;;)
        pause();
}

/* mysqld SIGKILLed while it holds pipelined jobs nobody acknowledged: a
 * child process holds k1..k3 (gearmand SIGSTOPped) and is SIGKILLed.  While
 * it lives a load leaves its slot alone (flock); after the kill (gearmand
 * killed too, its queue gone, started again) the next load reads the slot
 * and the keeper delivers the jobs.  A garbage slot file is kept as .bad, an
 * empty one removed. */
static void test_journal_kill(const char *so, const char *dir)
{
    char jdir[600], path[700];
    snprintf(jdir, sizeof jdir, "%s", dir); /* beside the spill file */
    snprintf(path, sizeof path, "%s/" SLOT "1.1", jdir);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("not a journal slot at all, and longer than its header: "
              "................................................", f);
        fclose(f);
    }
    static char empty[GS_JOURNAL_HDR + 64];
    memcpy(empty, GS_JOURNAL_MAGIC, 8);
    snprintf(path, sizeof path, "%s/" SLOT "1.2", jdir);
    if ((f = fopen(path, "w")) != NULL) {
        fwrite(empty, 1, sizeof empty, f);
        fclose(f);
    }
    dlclose(lib); /* this process's load comes later */
    lib = NULL;
    int port = start_gearmand();
    pid_t gpid = gearmand_pid;
    char spec[64], portstr[16];
    snprintf(spec, sizeof spec, "127.0.0.1:%d", port);
    snprintf(portstr, sizeof portstr, "%d", port);
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) {
        perror("pipe");
        exit(2);
    }
    pid_t child = fork();
    if (child == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        execl(self_path, self_path, "--journal-child", so, portstr,
              (char *)NULL);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    char c = 0;
    CHECK(read(from_child[0], &c, 1) == 1 && c == 'w', "journal: child warm");
    kill(gpid, SIGSTOP);
    CHECK(wait_stopped(gpid), "journal: gearmand stopped by SIGSTOP");
    CHECK(write(to_child[1], "g", 1) == 1, "journal: go");
    CHECK(read(from_child[0], &c, 1) == 1 && c == 'd',
          "journal: child pipelined k1..k3, k5 (%c)", c);
    CHECK(jobs_in_slots(jdir) == 4, "journal: the child's slot holds 4 jobs (%zu)",
          jobs_in_slots(jdir));
    setenv(GS_ENV_SERVERS, spec, 1); /* the defaults of the next loads */
    lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL, "journal: load beside a live process");
    if (lib)
        dlclose(lib);
    lib = NULL;
    CHECK(jobs_in_slots(jdir) == 4,
          "journal: a live process's slot is left alone (%zu)", jobs_in_slots(jdir));
    CHECK(count_slots(jdir, 1) == 1, "journal: garbage slot kept as .bad");
    snprintf(path, sizeof path, "%s/" SLOT "1.2", jdir);
    CHECK(access(path, F_OK) != 0, "journal: empty left-over slot removed");
    /* a slot whose window holds k4, then damage: k4 is sent, the file kept
     * as .bad */
    static char dmg[GS_JOURNAL_HDR + 128];
    memcpy(dmg, GS_JOURNAL_MAGIC, 8);
    size_t k4 = put_job(dmg + GS_JOURNAL_HDR, "uk4", "k4");
    memcpy(dmg + GS_JOURNAL_HDR + k4, "\0REQ\0\0\0\x63", 8); /* no such type */
    put_word(dmg, 0, k4 + 40);
    snprintf(path, sizeof path, "%s/" SLOT "1.3", jdir);
    if ((f = fopen(path, "w")) != NULL) {
        fwrite(dmg, 1, sizeof dmg, f);
        fclose(f);
    }
    kill(child, SIGKILL); /* mysqld killed: no destructor, no spill file */
    waitpid(child, NULL, 0);
    close(to_child[1]);
    close(from_child[0]);
    kill(gpid, SIGKILL); /* and what gearmand held is gone too */
    waitpid(gpid, NULL, 0);
    gearmand_pid = 0;
    start_gearmand_on(port);
    lib = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen again: %s\n", dlerror());
        exit(2);
    }
    int other = 0, got = grab_held(port, "journal", 'k', 5, &other);
    CHECK(got == 5 && other == 0,
          "journal: %d of 5 jobs (the killed process's 4, the damaged slot's "
          "1) arrived (%d other)", got, other);
    CHECK(count_slots(jdir, 1) == 2, "journal: damaged slot kept as .bad");
    for (int i = 0; i < 250 && jobs_in_slots(jdir); i++)
        usleep(20000);
    CHECK(jobs_in_slots(jdir) == 0, "journal: slot emptied once delivered");
    for (int i = 1; i <= 3; i += 2) {
        snprintf(path, sizeof path, "%s/" SLOT "1.%d.bad", jdir, i);
        unlink(path);
    }
}

/* ------------------------------------------------------------ signing */

static int hex_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return 0;
    return 1;
}

/* Take every queued job of fn; count those whose workload is "gs1.<8 hex>.<64 hex>.t<n>". */
static int grab_signed(int port, const char *fn, int *total)
{
    int fd = connect_port(port), good = 0;
    *total = 0;
    if (fd < 0)
        return 0;
    send_pkt(fd, 1 /* CAN_DO */, fn, strlen(fn));
    for (;;) {
        char *d = NULL;
        size_t l;
        send_pkt(fd, 30 /* GRAB_JOB_UNIQ */, NULL, 0);
        int t = recv_pkt(fd, &d, &l);
        if (t != 31) {
            if (t >= 0)
                free(d);
            break;
        }
        char *h = d, *f = h + strlen(h) + 1, *uq = f + strlen(f) + 1, *wl = uq + strlen(uq) + 1;
        size_t wlen = l - (size_t)(wl - d);
        (*total)++;
        good += wlen > GS_SIG_HEADER && memcmp(wl, "gs1.", 4) == 0 && hex_ok(wl + 4, 8) && wl[12] == '.' &&
                hex_ok(wl + 13, 64) && wl[GS_SIG_HEADER - 1] == '.' && wl[GS_SIG_HEADER] == 't';
        send_pkt(fd, 13 /* WORK_COMPLETE */, h, strlen(h) + 1); /* handle\0 (no data) */
        free(d);
    }
    close(fd);
    return good;
}

static void put_key(const char *path, mode_t mode)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "write %s", path);
    if (f) {
        fputs("0123456789abcdef0123456789abcdef\n", f);
        fclose(f);
    }
    chmod(path, mode);
}

/* A key file beside the library: background jobs of several threads carry the header (the key is
 * read once under the library's lock, copied per call); a key file others may read refuses every
 * background job; without the file they go unsigned again. */
static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int rc = in && out ? 0 : -1;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        rc = fwrite(buf, 1, n, out) == n ? 0 : -1;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        rc = -1;
    return rc;
}

/* The key file goes beside a copy of the library in dir (loaded as a second instance for this
 * test), never beside the build: a mariadbd of the test suite may load udf/build. */
static void test_signing(const char *so, const char *dir)
{
    char copy[4096], key[4096];
    snprintf(copy, sizeof copy, "%s/gearsync_udf.so", dir);
    snprintf(key, sizeof key, "%s/%s", dir, GS_KEY_NAME);
    CHECK(copy_file(so, copy) == 0, "copy %s to %s", so, copy);
    void *saved = lib;
    lib = dlopen(copy, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != NULL, "dlopen %s: %s", copy, lib ? "" : dlerror());
    if (!lib) {
        lib = saved;
        return;
    }
    int port = start_gearmand();
    point(port, "pipeline=1,do_timeout_ms=2000");
    put_key(key, 0600);
    usleep(1100 * 1000); /* the library looks at the file at most once a second */
    pthread_t th[4];
    struct bg_thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (struct bg_thread_arg){.n = 200, .ok = 0};
        pthread_create(&th[i], NULL, bg_thread, &a[i]);
    }
    int ok = 0, total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok += a[i].ok;
    }
    int good = grab_signed(port, "par", &total);
    CHECK(ok == 800 && total == 800 && good == 800, "signed: %d submitted, %d queued, %d signed", ok, total, good);
    chmod(key, 0644);
    usleep(1100 * 1000);
    size_t len;
    char *r = job("gman_do_background", "par", "t1", 2, NULL, &len);
    CHECK(r == NULL && strstr(last_error(), "mode 0644"), "key readable by others: NULL (%s)", last_error());
    free(r);
    unlink(key);
    usleep(1100 * 1000);
    r = job("gman_do_background", "par", "t1", 2, NULL, &len);
    CHECK(r != NULL && flush() == 0, "no key file: submitted");
    free(r);
    good = grab_signed(port, "par", &total);
    CHECK(total == 1 && good == 0, "no key file: unsigned (%d queued, %d signed)", total, good);
    stop_gearmand();
    dlclose(lib);
    lib = saved;
    unlink(copy);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--journal-child") == 0)
        return journal_child(argv[2], atoi(argv[3]));
    if (argc != 2) {
        fprintf(stderr, "usage: %s /path/to/gearsync_udf.so\n", argv[0]);
        return 2;
    }
    if (!realpath(argv[0], self_path)) {
        perror("realpath");
        return 2;
    }
    signal(SIGPIPE, SIG_DFL); /* the library must never raise it */
    setenv(GS_ENV_SERVERS, "127.0.0.1:1,[::1]:2", 1);
    char spill_dir[] = "/tmp/gearsync_udf_driver_XXXXXX", spill[64];
    if (!mkdtemp(spill_dir)) {
        perror("mkdtemp");
        return 2;
    }
    snprintf(spill, sizeof spill, "%s/pending", spill_dir);
    setenv(GS_ENV_SPILL, spill, 1); /* never the working directory */
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    test_json();
    test_servers_set();
    test_jobs();
    stop_gearmand();
    test_signing(argv[1], spill_dir);
    test_spill(argv[1], spill);
    test_journal_parse();
    stop_gearmand();
    test_journal_kill(argv[1], spill_dir);
    dlclose(lib); /* runs the library destructor: frees every thread's state */
    stop_gearmand();
    unlink(spill);
    char tmp[80];
    snprintf(tmp, sizeof tmp, "%s.tmp", spill);
    unlink(tmp);
    CHECK(count_slots(spill_dir, 0) == 0 && count_slots(spill_dir, 1) == 0,
          "journal: no slot file left after the last unload");
    rmdir(spill_dir);
    fprintf(stderr, "udf_driver: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
