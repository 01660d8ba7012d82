/*
 * gman_proto.c — the Gearman binary protocol as far as a client needs it,
 * over buffers only: no file descriptors, no sockets, no thread state.
 * Every function is bounded by the lengths it is given and tolerates NULL
 * (udf/fuzz/fuzz_proto.c feeds them arbitrary bytes).
 *
 * Packet: 4-byte magic ("\0REQ" / "\0RES"), 4-byte big-endian type, 4-byte
 * big-endian size, then NUL-separated arguments (the last one may hold any
 * byte).  SUBMIT_JOB*: function\0unique\0workload -> JOB_CREATED(handle);
 * for a foreground job then WORK_DATA/WORK_WARNING/WORK_STATUS… and finally
 * WORK_COMPLETE(handle\0data) or WORK_FAIL(handle) / WORK_EXCEPTION.
 *
 * Also the bounded growable buffer (struct gs_buf) the pipeline, the
 * results and json_object.c build in.
 */
#include "gman_proto.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ buffers */

int gs_buf_reserve(struct gs_buf *b, size_t extra)
{
    size_t need;
    if (__builtin_add_overflow(b->len, extra, &need) || need > b->max)
        return -1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > b->max / 2 ? b->max : cap * 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

void gs_buf_free(struct gs_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------ packets */

uint32_t gs_proto_be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return ((uint32_t)u[0] << 24) | ((uint32_t)u[1] << 16) |
           ((uint32_t)u[2] << 8) | (uint32_t)u[3];
}

void gs_proto_put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

uint32_t gs_proto_request_type(int background, enum gs_priority prio)
{
    static const uint32_t bg[3] = {PKT_SUBMIT_JOB_BG, PKT_SUBMIT_JOB_HIGH_BG,
                                   PKT_SUBMIT_JOB_LOW_BG};
    static const uint32_t fg[3] = {PKT_SUBMIT_JOB, PKT_SUBMIT_JOB_HIGH,
                                   PKT_SUBMIT_JOB_LOW};
    unsigned p = (unsigned)prio < 3 ? (unsigned)prio : 0;
    return background ? bg[p] : fg[p];
}

size_t gs_proto_submit_head(char *dst, size_t cap, uint32_t type,
                            const char *fn, size_t fnlen, const char *unique,
                            size_t uqlen, size_t wllen)
{
    size_t head, plen;
    if (!dst || (fnlen && !fn) || (uqlen && !unique) ||
        __builtin_add_overflow(fnlen, uqlen, &head) ||
        __builtin_add_overflow(head, HDR + 2, &head) || head > cap ||
        __builtin_add_overflow(head - HDR, wllen, &plen) || plen > UINT32_MAX)
        return 0;
    memcpy(dst, "\0REQ", 4);
    gs_proto_put_be32(dst + 4, type);
    gs_proto_put_be32(dst + 8, (uint32_t)plen);
    char *p = dst + HDR;
    if (fnlen)
        memcpy(p, fn, fnlen);
    p[fnlen] = '\0';
    p += fnlen + 1;
    if (uqlen)
        memcpy(p, unique, uqlen);
    p[uqlen] = '\0';
    return head;
}

enum gs_proto_rc gs_proto_response(const char *buf, size_t len,
                                   size_t max_size, uint32_t *type,
                                   uint32_t *size, size_t *need)
{
    if (!type || !size || !need || (len && !buf))
        return GS_PKT_BAD_MAGIC;
    if (len < HDR) {
        *need = HDR;
        return GS_PKT_MORE;
    }
    if (memcmp(buf, "\0RES", 4) != 0)
        return GS_PKT_BAD_MAGIC;
    *type = gs_proto_be32(buf + 4);
    *size = gs_proto_be32(buf + 8);
    if (*size > max_size)
        return GS_PKT_TOO_BIG;
    *need = HDR + (size_t)*size;
    return len >= *need ? GS_PKT_COMPLETE : GS_PKT_MORE;
}

size_t gs_proto_error_text(const char *body, size_t len, char *msg,
                           size_t msg_size)
{
    if (!msg || msg_size == 0)
        return 0;
    if (!body)
        len = 0;
    size_t n = len < msg_size - 1 ? len : msg_size - 1;
    for (size_t i = 0; i < n; i++) {
        char c = body[i];
        msg[i] = (c == '\0') ? ' ' : (c < 0x20 || c == 0x7f) ? '?' : c;
    }
    msg[n] = '\0';
    return n;
}

int gs_proto_job_handle(const char *body, size_t size, char *handle,
                        size_t handle_size)
{
    if ((size && !body) || !handle || handle_size == 0)
        return -1;
    size_t hlen = size;
    if ((size && memchr(body, '\0', size)) || hlen >= handle_size)
        return -1;
    if (hlen)
        memcpy(handle, body, hlen);
    handle[hlen] = '\0';
    return 0;
}

int gs_proto_work_ours(const char *body, size_t size, const char *handle,
                       size_t hlen, size_t *dlen)
{
    if (!dlen)
        return 0;
    *dlen = 0;
    if ((size && !body) || (hlen && !handle))
        return 0;
    int ours = size >= hlen && (hlen == 0 || memcmp(body, handle, hlen) == 0) &&
               (size == hlen || body[hlen] == '\0');
    if (size > hlen)
        *dlen = size - hlen - 1;
    return ours;
}

size_t gs_proto_background_request_len(const char *p, size_t len)
{
    if (!p || len < HDR || memcmp(p, "\0REQ", 4) != 0)
        return 0;
    uint32_t type = gs_proto_be32(p + 4);
    uint32_t size = gs_proto_be32(p + 8);
    if (type != PKT_SUBMIT_JOB_BG && type != PKT_SUBMIT_JOB_HIGH_BG &&
        type != PKT_SUBMIT_JOB_LOW_BG)
        return 0;
    if ((size_t)size > GS_MAX_FUNCTION + 1 + GS_MAX_UNIQUE + 1 + GS_MAX_PAYLOAD ||
        len - HDR < (size_t)size)
        return 0;
    const char *body = p + HDR;
    const char *nul = memchr(body, '\0', size);
    if (!nul || nul == body || (size_t)(nul - body) > GS_MAX_FUNCTION)
        return 0;
    size_t rest = size - (size_t)(nul - body) - 1;
    const char *nul2 = memchr(nul + 1, '\0', rest);
    if (!nul2 || (size_t)(nul2 - nul - 1) > GS_MAX_UNIQUE)
        return 0;
    return HDR + (size_t)size;
}

size_t gs_proto_scan_requests(const char *p, size_t len, size_t *jobs)
{
    size_t off = 0, n = 0;
    while (off < len) {
        size_t k = gs_proto_background_request_len(p + off, len - off);
        if (k == 0)
            break;
        off += k;
        n++;
    }
    *jobs = n;
    return off;
}

int gs_journal_parse(const char *buf, size_t size, struct gs_journal_view *v)
{
    memset(v, 0, sizeof *v);
    if (!buf || size < GS_JOURNAL_HDR ||
        memcmp(buf, GS_JOURNAL_MAGIC, sizeof GS_JOURNAL_MAGIC - 1) != 0) {
        v->why = "not a gearsync journal slot (bad header)";
        return -1;
    }
    uint64_t word;
    memcpy(&word, buf + GS_JOURNAL_WORD, sizeof word);
    size_t head = (size_t)(word >> 32), len = (size_t)(word & 0xffffffffu);
    const char *data = buf + GS_JOURNAL_HDR;
    size_t cap = size - GS_JOURNAL_HDR;
    if (head > len || len > cap) {
        v->why = "head/length word out of range";
        return -1;
    }
    v->head = head;
    size_t off = head + gs_proto_scan_requests(data + head, len - head, &v->jobs);
    if (off < len) {
        v->why = "damaged packet";
        v->at = off;
    }
    v->end = off;
    return 0;
}
