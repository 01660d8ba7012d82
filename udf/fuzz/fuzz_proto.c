/*
 * fuzz_proto.c — libFuzzer target for the Gearman packet code
 * (gman_proto.c): what a job server, or something that only pretends to be
 * one, sends back is parsed by gs_proto_response, gs_proto_error_text,
 * gs_proto_job_handle and gs_proto_work_ours; requests are encoded by
 * gs_proto_submit_head.
 *
 * Input: 4 control bytes (priority, output buffer size, function and unique
 * id lengths), then a stream of response packets.  Every packet body is
 * copied into a buffer of exactly its size, so a read past it is an ASan
 * error.
 *
 * Properties besides ASan/UBSan: the header parser agrees with itself on
 * every prefix (MORE until exactly HDR + size bytes, then COMPLETE with the
 * same type and size; never a size above the limit); the error text is
 * printable and as long as promised; a job handle is returned only without
 * NUL bytes and round-trips; a WORK_* body is "ours" only when it starts
 * with the handle followed by the end or \0; an encoded request head
 * decodes back to its type, size, function and unique id, and is refused
 * only when it cannot fit.  The journal slot parser (gs_journal_parse) on
 * the same bytes behind a slot header keeps its window inside the file.
 */
#include "../gman_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                   \
        abort();                                                               \
    } while (0)

static char *dup_exact(const uint8_t *p, size_t n)
{
    char *out = malloc(n ? n : 1);
    if (!out)
        abort();
    if (n)
        memcpy(out, p, n);
    return out;
}

static void check_null_safety(void)
{
    uint32_t type = 0, size = 0;
    size_t need = 0, dlen = 7;
    char msg[4];
    if (gs_proto_response(NULL, 0, 100, &type, &size, &need) != GS_PKT_MORE || need != HDR)
        FAIL("empty input is not MORE/HDR");
    if (gs_proto_response(NULL, 5, 100, &type, &size, &need) != GS_PKT_BAD_MAGIC)
        FAIL("NULL buffer with a length accepted");
    if (gs_proto_response("\0RES", 4, 100, NULL, &size, &need) != GS_PKT_BAD_MAGIC)
        FAIL("NULL output accepted");
    if (gs_proto_error_text(NULL, 9, msg, sizeof msg) != 0 || msg[0])
        FAIL("error text of NULL is not empty");
    if (gs_proto_error_text("x", 1, NULL, 4) != 0 || gs_proto_error_text("x", 1, msg, 0) != 0)
        FAIL("error text into nothing wrote something");
    if (gs_proto_job_handle(NULL, 3, msg, sizeof msg) == 0 || gs_proto_job_handle("ab", 2, NULL, 4) == 0 ||
        gs_proto_job_handle("ab", 2, msg, 0) == 0)
        FAIL("job handle from/into NULL");
    if (gs_proto_work_ours(NULL, 3, "h", 1, &dlen) != 0 || dlen != 0 || gs_proto_work_ours("h", 1, "h", 1, NULL) != 0)
        FAIL("work body from NULL is ours");
    if (gs_proto_submit_head(NULL, 100, 7, "f", 1, "u", 1, 0) != 0 ||
        gs_proto_submit_head(msg, sizeof msg, 7, NULL, 1, "u", 1, 0) != 0)
        FAIL("request head into/from NULL");
}

/* The parser on every prefix of the packet at p[0..len): consistent with
 * the result for the whole. */
static void check_prefixes(const char *p, size_t len, size_t max, enum gs_proto_rc whole, uint32_t wtype,
                           uint32_t wsize, size_t wneed)
{
    size_t step = len > 64 ? len / 16 : 1;
    for (size_t k = 0; k <= len; k += step) {
        uint32_t type = 0, size = 0;
        size_t need = 0;
        enum gs_proto_rc rc = gs_proto_response(p, k, max, &type, &size, &need);
        if (k < HDR) {
            if (rc != GS_PKT_MORE || need != HDR)
                FAIL("prefix of %zu bytes: rc %d need %zu", k, (int)rc, need);
            continue;
        }
        if (whole == GS_PKT_BAD_MAGIC || whole == GS_PKT_TOO_BIG) {
            if (rc != whole)
                FAIL("prefix of %zu bytes: rc %d, whole %d", k, (int)rc, (int)whole);
            continue;
        }
        if (type != wtype || size != wsize || need != wneed)
            FAIL("prefix of %zu bytes: header differs", k);
        if (rc != (k >= wneed ? GS_PKT_COMPLETE : GS_PKT_MORE))
            FAIL("prefix of %zu bytes: rc %d with need %zu", k, (int)rc, wneed);
    }
}

static void check_body(uint32_t type, const char *body, size_t size, size_t msg_size, char *handle, size_t *hlen)
{
    /* ERROR text: what attempt() and parse_acks() put into the last error */
    char *msg = malloc(msg_size);
    if (!msg)
        abort();
    size_t n = gs_proto_error_text(body, size, msg, msg_size);
    if (n != (size < msg_size - 1 ? size : msg_size - 1) || msg[n] != '\0')
        FAIL("error text: %zu bytes for %zu in %zu", n, size, msg_size);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c < 0x20 || c == 0x7f)
            FAIL("error text has control byte 0x%02x", c);
    }
    free(msg);

    /* JOB_CREATED: the handle */
    char h[256];
    if (gs_proto_job_handle(body, size, h, sizeof h) == 0) {
        if (size >= sizeof h || memchr(body, '\0', size) || strlen(h) != size || memcmp(h, body, size))
            FAIL("job handle accepted wrongly (%zu bytes)", size);
        if (type == PKT_JOB_CREATED && size) {
            memcpy(handle, h, size + 1);
            *hlen = size;
        }
    } else if (size < sizeof h && !memchr(body, '\0', size)) {
        FAIL("good job handle refused (%zu bytes)", size);
    }

    /* WORK_*: about the job of the last handle? */
    size_t dlen = 12345;
    int ours = gs_proto_work_ours(body, size, handle, *hlen, &dlen);
    int expect = size >= *hlen && memcmp(body, handle, *hlen) == 0 && (size == *hlen || body[*hlen] == '\0');
    if (ours != expect)
        FAIL("work body: ours %d, expected %d", ours, expect);
    if (dlen != (size > *hlen ? size - *hlen - 1 : 0))
        FAIL("work body: dlen %zu for size %zu handle %zu", dlen, size, *hlen);
}

static void check_encode(const uint8_t *ctl, const uint8_t *data, size_t size)
{
    enum gs_priority prio = (enum gs_priority)(ctl[0] % 5); /* 3, 4: out of range */
    uint32_t bgt = gs_proto_request_type(1, prio), fgt = gs_proto_request_type(0, prio);
    if ((bgt != PKT_SUBMIT_JOB_BG && bgt != PKT_SUBMIT_JOB_HIGH_BG && bgt != PKT_SUBMIT_JOB_LOW_BG) ||
        (fgt != PKT_SUBMIT_JOB && fgt != PKT_SUBMIT_JOB_HIGH && fgt != PKT_SUBMIT_JOB_LOW))
        FAIL("request type %u/%u for priority %d", bgt, fgt, (int)prio);
    size_t fnlen = ctl[2] < size ? ctl[2] : size;
    size_t uqlen = ctl[3] < size - fnlen ? ctl[3] : size - fnlen;
    size_t wllen = size - fnlen - uqlen;
    size_t cap = (size_t)ctl[1] * 4;
    char *fn = dup_exact(data, fnlen), *uq = dup_exact(data + fnlen, uqlen);
    char *out = malloc(cap ? cap : 1);
    if (!out)
        abort();
    size_t head = HDR + fnlen + 1 + uqlen + 1;
    size_t n = gs_proto_submit_head(cap ? out : NULL, cap, bgt, fnlen ? fn : NULL, fnlen, uqlen ? uq : NULL, uqlen,
                                    wllen);
    if (n == 0) {
        if (cap && head <= cap)
            FAIL("request head of %zu bytes refused with room for %zu", head, cap);
    } else {
        if (n != head || n > cap)
            FAIL("request head: %zu bytes, expected %zu (room %zu)", n, head, cap);
        if (memcmp(out, "\0REQ", 4) || gs_proto_be32(out + 4) != bgt ||
            gs_proto_be32(out + 8) != fnlen + 1 + uqlen + 1 + wllen)
            FAIL("request header does not decode");
        if (memcmp(out + HDR, fn, fnlen) || out[HDR + fnlen] != '\0' || memcmp(out + HDR + fnlen + 1, uq, uqlen) ||
            out[HDR + fnlen + 1 + uqlen] != '\0')
            FAIL("request arguments do not decode");
    }
    char be[4];
    uint32_t v = (uint32_t)size * 2654435761u;
    gs_proto_put_be32(be, v);
    if (gs_proto_be32(be) != v)
        FAIL("be32 round trip");
    free(out);
    free(uq);
    free(fn);
}

static void check_buf(const uint8_t *ctl, const uint8_t *data, size_t size)
{
    struct gs_buf b = {.max = (size_t)ctl[1] * 16};
    for (size_t off = 0; off < size;) {
        size_t chunk = (size_t)(data[off] % 64) + 1;
        if (chunk > size - off)
            chunk = size - off;
        size_t before = b.len;
        if (gs_buf_reserve(&b, chunk) == 0) {
            if (b.len + chunk > b.cap || b.len + chunk > b.max)
                FAIL("gs_buf: cap %zu for %zu (max %zu)", b.cap, b.len + chunk, b.max);
            memcpy(b.p + b.len, data + off, chunk);
            b.len += chunk;
        } else if (before + chunk <= b.max) {
            FAIL("gs_buf refused %zu bytes under its max %zu", before + chunk, b.max);
        }
        off += chunk;
    }
    gs_buf_free(&b);
    if (b.p || b.len || b.cap)
        FAIL("gs_buf_free left state");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t zero[4];
    const uint8_t *ctl = size >= 4 ? data : zero;
    const uint8_t *p = size >= 4 ? data + 4 : data;
    size_t len = size >= 4 ? size - 4 : size;

    check_null_safety();
    check_encode(ctl, p, len);
    check_buf(ctl, p, len);

    /* the spill file's reader: a background request's length stays within
     * the bytes given (an exact-size copy, so ASan sees any overread) */
    {
        char *req = dup_exact(p, len);
        size_t n = gs_proto_background_request_len(req, len);
        if (n != 0 && (n < HDR || n > len))
            FAIL("background request of %zu bytes in %zu", n, len);
        free(req);
    }

    /* the journal slot reader: the input after a slot header (magic, a
     * window word from the control bytes), copied at its exact size; the
     * valid packets it names lie inside the window and the file */
    {
        size_t flen = GS_JOURNAL_HDR + len;
        char *file = calloc(1, flen);
        if (!file)
            abort();
        memcpy(file, GS_JOURNAL_MAGIC, sizeof GS_JOURNAL_MAGIC - 1);
        uint64_t word = ((uint64_t)ctl[2] << 32) | (uint64_t)(len - (ctl[3] % (len + 1)));
        memcpy(file + GS_JOURNAL_WORD, &word, sizeof word);
        if (len)
            memcpy(file + GS_JOURNAL_HDR, p, len);
        struct gs_journal_view v;
        int rc = gs_journal_parse(file, flen, &v);
        if (rc == 0 && (v.head > v.end || v.end > len || (v.why && v.at != v.end)))
            FAIL("journal window [%zu, %zu) of %zu bytes", v.head, v.end, len);
        if (rc != 0 && v.jobs)
            FAIL("refused journal with %zu jobs", v.jobs);
        free(file);
    }

    /* the limits the pipeline uses, and a small one from the input */
    const size_t maxes[2] = {GS_MAX_SMALL_PACKET, (size_t)ctl[1] * 4};
    for (int m = 0; m < 2; m++) {
        char handle[256] = "";
        size_t hlen = 0;
        size_t off = 0;
        while (off < len) {
            char *s = dup_exact(p + off, len - off); /* exactly the rest */
            uint32_t type = 0, psize = 0;
            size_t need = 0;
            enum gs_proto_rc rc = gs_proto_response(s, len - off, maxes[m], &type, &psize, &need);
            check_prefixes(s, len - off, maxes[m], rc, type, psize, need);
            if (rc == GS_PKT_TOO_BIG && psize <= maxes[m])
                FAIL("TOO_BIG for %u <= %zu", psize, maxes[m]);
            if (rc != GS_PKT_COMPLETE) {
                if (rc == GS_PKT_MORE && need <= len - off)
                    FAIL("MORE with %zu of %zu bytes there", need, len - off);
                free(s);
                break;
            }
            if (psize > maxes[m] || need != HDR + (size_t)psize || need > len - off)
                FAIL("COMPLETE: size %u need %zu of %zu", psize, need, len - off);
            free(s);
            char *body = dup_exact(p + off + HDR, psize);
            check_body(type, body, psize, (size_t)(ctl[0] % 200) + 1, handle, &hlen);
            free(body);
            off += need;
        }
    }
    return 0;
}
