/*
 * gman_proto.h — the few packets of the Gearman binary protocol a client
 * needs (gman_proto.c): encoding and parsing over buffers, no file
 * descriptors.  Private to the library (gman_conn.c, the fuzz targets).
 *
 * Packet: 4-byte magic ("\0REQ" / "\0RES"), 4-byte big-endian type, 4-byte
 * big-endian size, then NUL-separated arguments (the last one may hold any
 * byte).
 */
#ifndef GMAN_PROTO_H
#define GMAN_PROTO_H

#include "gearsync_udf.h"

enum {
    PKT_SUBMIT_JOB = 7,
    PKT_JOB_CREATED = 8,
    PKT_WORK_STATUS = 12,
    PKT_WORK_COMPLETE = 13,
    PKT_WORK_FAIL = 14,
    PKT_SUBMIT_JOB_BG = 18,
    PKT_ERROR = 19,
    PKT_SUBMIT_JOB_HIGH = 21,
    PKT_WORK_EXCEPTION = 25,
    PKT_WORK_DATA = 28,
    PKT_WORK_WARNING = 29,
    PKT_SUBMIT_JOB_HIGH_BG = 32,
    PKT_SUBMIT_JOB_LOW = 33,
    PKT_SUBMIT_JOB_LOW_BG = 34,
};

#define HDR 12u /* magic, type, size */

/* Big-endian 32-bit integer at p (4 readable / writable bytes). */
uint32_t gs_proto_be32(const char *p);
void gs_proto_put_be32(char *p, uint32_t v);

/* The SUBMIT_JOB* packet type for a background or foreground job. */
uint32_t gs_proto_request_type(int background, enum gs_priority prio);

/* Write the head of a SUBMIT_JOB* request: header (its size counts the
 * workload of wllen bytes that follows), function\0unique\0.  Returns the
 * bytes written (HDR + fnlen + 1 + uqlen + 1); 0 when dst is NULL, the head
 * does not fit in cap or the packet size does not fit its 32 bits. */
size_t gs_proto_submit_head(char *dst, size_t cap, uint32_t type,
                            const char *fn, size_t fnlen, const char *unique,
                            size_t uqlen, size_t wllen);

/* Response packet at buf[0..len): */
enum gs_proto_rc {
    GS_PKT_COMPLETE = 0, /* all HDR + *size bytes are there */
    GS_PKT_MORE,         /* incomplete: *need bytes make it whole (HDR while
                            the header itself is incomplete) */
    GS_PKT_BAD_MAGIC,    /* not "\0RES" */
    GS_PKT_TOO_BIG,      /* *size > max_size */
};
/* *type and *size are set once the header is complete (also for
 * GS_PKT_TOO_BIG).  buf may be NULL when len is 0; NULL outputs: BAD_MAGIC. */
enum gs_proto_rc gs_proto_response(const char *buf, size_t len,
                                   size_t max_size, uint32_t *type,
                                   uint32_t *size, size_t *need);

/* An ERROR packet's body (code\0text) as printable text in msg: NUL -> ' ',
 * other control bytes -> '?', at most msg_size - 1 bytes, NUL terminated.
 * Returns the length. */
size_t gs_proto_error_text(const char *body, size_t len, char *msg,
                           size_t msg_size);

/* JOB_CREATED's body (size > 0 bytes): the job handle, NUL terminated in
 * handle.  0 ok; -1 malformed (a NUL byte, or too long for handle_size). */
int gs_proto_job_handle(const char *body, size_t size, char *handle,
                        size_t handle_size);

/* A WORK_* packet's body: 1 if it is about the job with this handle
 * (handle, then the end or \0 and data); *dlen = the bytes after
 * handle\0 (0 if none). */
int gs_proto_work_ours(const char *body, size_t size, const char *handle,
                       size_t hlen, size_t *dlen);

/* Length of the valid background SUBMIT_JOB*_BG request packet at
 * p[0..len) (function 1..GS_MAX_FUNCTION bytes, unique up to GS_MAX_UNIQUE,
 * payload up to GS_MAX_PAYLOAD); 0 if it is not one (also for p NULL).  The
 * spill file is a sequence of such packets. */
size_t gs_proto_background_request_len(const char *p, size_t len);

/* The whole SUBMIT_JOB*_BG packets at the start of p[0, len): their bytes
 * (where the first damaged or partial one starts, or len); *jobs = how many.
 * The spill file's and a journal slot's data are read with it. */
size_t gs_proto_scan_requests(const char *p, size_t len, size_t *jobs);

/* A journal slot file (gman_journal.c): GS_JOURNAL_HDR bytes of header —
 * GS_JOURNAL_MAGIC, then at offset 8 the word (head << 32 | len) in native
 * byte order, stored atomically after the packets it covers were copied —
 * then the data area.  The unacknowledged jobs are the SUBMIT_JOB*_BG
 * packets in data[head, len); bytes past len (a copy the process died in)
 * are not looked at. */
#define GS_JOURNAL_MAGIC "GSJRNL1\n"
#define GS_JOURNAL_HDR 64u
#define GS_JOURNAL_WORD 8u
struct gs_journal_view {
    size_t head, end; /* the valid packets: data[head, end) */
    size_t jobs;      /* how many */
    const char *why;  /* NULL, or why the file (or its tail) is refused */
    size_t at;        /* data offset where the damage starts */
};
/* Validate a slot file's bytes buf[0..size).  0: usable (v->why set when
 * packets after v->end had to be dropped); -1: not a slot file or its word
 * is out of range (nothing in it can be trusted). */
int gs_journal_parse(const char *buf, size_t size, struct gs_journal_view *v);

#endif
