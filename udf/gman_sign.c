/*
 * gman_sign.c — signed background jobs: HMAC-SHA256 with the key in
 * gearsync_udf.key beside the library (docs/security.md has the byte
 * format; sync/signing.py is the Python side and must agree byte for byte).
 *
 *   "gs1." kid "." mac "." workload
 *   kid = hex(SHA-256(key)[0..4))                      8 lowercase hex digits
 *   mac = hex(HMAC-SHA256(key, function 0x00 workload)) 64 lowercase hex digits
 *
 * SHA-256 is our own (FIPS 180-4) rather than OpenSSL's libcrypto: mysqld
 * may be built against another TLS library (bundled wolfSSL, or a different
 * OpenSSL) and loading libcrypto into it risks two copies of the same
 * symbols; the library stays without runtime dependencies beyond libc.  The
 * driver and tests/unit/test_signing_udf.py compare it with Python's hashlib.
 *
 * The key file: a regular file owned by mysqld's user, no group/other
 * permission bits (0600 or 0400), GS_KEY_MIN..GS_KEY_MAX printable ASCII
 * characters without blanks or commas, one optional trailing newline.  It
 * is looked at (stat) at most every GS_KEY_RECHECK_MS under g_key_lock and
 * read again when its inode, size, mtime or ctime changed, so a new key
 * takes effect without a restart.  No file: jobs go unsigned (one line in
 * the error log).  A file that is refused or unreadable: background submits
 * fail (gman_last_error() says why; the capture triggers spool the change,
 * sync-relay signs it) — never an unsigned job when a key is meant to be
 * there.  Callers copy the prepared key (SHA-256 states after the HMAC pad
 * blocks) into their own stack: nothing is hashed under the lock.
 */
#define _GNU_SOURCE
#include "gearsync_udf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ SHA-256 */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t H256[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

void gs_sha256_compress_portable(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    uint32_t e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) +
                      ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) +
                      ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

#if defined(__x86_64__)
/* The same compression with the x86 SHA extensions (SHA-NI), for CPUs that have them: state as
 * ABEF/CDGH, message words in groups of four (sha256msg1/msg2 for the schedule), two rounds per
 * sha256rnds2. Checked against the portable one by udf/fuzz/fuzz_sign.c on every input. */
__attribute__((target("sha,sse4.1"))) static void compress_shani(uint32_t h[8], const unsigned char *p)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i dcba = _mm_loadu_si128((const __m128i *)&h[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&h[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    __m128i abef0 = abef, cdgh0 = cdgh;
    __m128i w[4];
    for (int g = 0; g < 16; g++) {
        __m128i m;
        if (g < 4) {
            m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), bswap);
        } else {
            /* W[t-16] + s0(W[t-15]), + W[t-7], then + s1(W[t-2]) */
            m = _mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]);
            m = _mm_add_epi32(m, _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
            m = _mm_sha256msg2_epu32(m, w[(g + 3) & 3]);
        }
        w[g & 3] = m;
        __m128i k = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&K256[4 * g]));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, k);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(k, 0x0E));
    }
    abef = _mm_add_epi32(abef, abef0);
    cdgh = _mm_add_epi32(cdgh, cdgh0);
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(dchg, feba, 8));
}

static int have_shani(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3))
        return 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);
}

/* Chosen once when the library is loaded, read-only afterwards. */
static void (*g_compress)(uint32_t *, const unsigned char *) = gs_sha256_compress_portable;

__attribute__((constructor)) static void pick_compress(void)
{
    if (have_shani() && !getenv("GEARSYNC_UDF_NO_SHANI"))
        g_compress = compress_shani;
}

static void compress(uint32_t h[8], const unsigned char *p)
{
    g_compress(h, p);
}
#else
static void compress(uint32_t h[8], const unsigned char *p)
{
    gs_sha256_compress_portable(h, p);
}
#endif

void gs_sha256_init(struct gs_sha256 *c)
{
    memcpy(c->h, H256, sizeof c->h);
    c->bytes = 0;
    c->n = 0;
}

void gs_sha256_update(struct gs_sha256 *c, const void *data, size_t len)
{
    const unsigned char *p = data;
    if (len == 0)
        return;
    c->bytes += len;
    if (c->n) {
        size_t take = 64 - c->n < len ? 64 - c->n : len;
        memcpy(c->buf + c->n, p, take);
        c->n += take;
        p += take;
        len -= take;
        if (c->n < 64)
            return;
        compress(c->h, c->buf);
        c->n = 0;
    }
    for (; len >= 64; p += 64, len -= 64)
        compress(c->h, p);
    if (len) {
        memcpy(c->buf, p, len);
        c->n = len;
    }
}

void gs_sha256_final(struct gs_sha256 *c, unsigned char out[32])
{
    uint64_t bits = c->bytes * 8;
    c->buf[c->n++] = 0x80;
    if (c->n > 56) {
        memset(c->buf + c->n, 0, 64 - c->n);
        compress(c->h, c->buf);
        c->n = 0;
    }
    memset(c->buf + c->n, 0, 56 - c->n);
    for (int i = 0; i < 8; i++)
        c->buf[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    compress(c->h, c->buf);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)c->h[i];
    }
    c->n = 0;
}

/* ------------------------------------------------------------ HMAC */

static void hex(const unsigned char *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
}

static void why_set(char *why, size_t whylen, const char *msg)
{
    if (whylen)
        snprintf(why, whylen, "%s", msg);
}

int gs_sign_key_parse(const char *buf, size_t len, struct gs_sign_key *out,
                      char *why, size_t whylen)
{
    if (!buf) {
        why_set(why, whylen, "no key");
        return -1;
    }
    if (len && buf[len - 1] == '\n')
        len--;
    if (len && buf[len - 1] == '\r')
        len--;
    if (len < GS_KEY_MIN || len > GS_KEY_MAX) {
        char msg[128];
        snprintf(msg, sizeof msg,
                 "the key has %zu bytes; expected %d to %d printable ASCII "
                 "characters", len, GS_KEY_MIN, GS_KEY_MAX);
        why_set(why, whylen, msg);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if (ch < 0x21 || ch > 0x7e || ch == ',') {
            why_set(why, whylen, "the key has a blank, comma or non-ASCII "
                                 "character (or a second line)");
            return -1;
        }
    }
    unsigned char block[64], digest[32];
    struct gs_sha256 c;
    gs_sha256_init(&c);
    gs_sha256_update(&c, buf, len);
    gs_sha256_final(&c, digest);
    hex(digest, 4, out->kid);
    memset(block, 0, sizeof block);
    if (len > sizeof block)
        memcpy(block, digest, sizeof digest); /* HMAC: a long key is hashed */
    else
        memcpy(block, buf, len);
    for (size_t i = 0; i < sizeof block; i++)
        block[i] ^= 0x36;
    memcpy(out->istate, H256, sizeof out->istate);
    compress(out->istate, block);
    for (size_t i = 0; i < sizeof block; i++)
        block[i] ^= 0x36 ^ 0x5c;
    memcpy(out->ostate, H256, sizeof out->ostate);
    compress(out->ostate, block);
    memset(block, 0, sizeof block);
    memset(digest, 0, sizeof digest);
    return 0;
}

void gs_sign_header(const struct gs_sign_key *k, const char *fn, size_t fnlen,
                    const char *wl, size_t wllen, char *hdr)
{
    struct gs_sha256 c;
    unsigned char inner[32], mac[32];
    memcpy(c.h, k->istate, sizeof c.h);
    c.bytes = 64;
    c.n = 0;
    gs_sha256_update(&c, fn, fnlen);
    gs_sha256_update(&c, "", 1);
    gs_sha256_update(&c, wl, wllen);
    gs_sha256_final(&c, inner);
    memcpy(c.h, k->ostate, sizeof c.h);
    c.bytes = 64;
    c.n = 0;
    gs_sha256_update(&c, inner, sizeof inner);
    gs_sha256_final(&c, mac);
    memcpy(hdr, "gs1.", 4);
    memcpy(hdr + 4, k->kid, 8);
    hdr[12] = '.';
    hex(mac, sizeof mac, hdr + 13);
    hdr[GS_SIG_HEADER - 1] = '.';
}

/* ------------------------------------------------------------ key file */

static pthread_mutex_t g_key_lock = PTHREAD_MUTEX_INITIALIZER;
/* all guarded by g_key_lock */
static struct {
    int checked;      /* at least once */
    int state;        /* 1 key, 0 no file, -1 refused */
    int64_t next_ms;  /* next stat() */
    struct stat st;   /* of the file last read (state != 0) */
    struct gs_sign_key key;
    char why[512];
} g_key;

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
           a->st_size == b->st_size && a->st_mode == b->st_mode &&
           a->st_uid == b->st_uid &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
           a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Read and check the file; sets g_key.state/why/key. */
static void key_read(const char *path)
{
    char buf[GS_KEY_MAX + 3];
    struct stat st;
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    g_key.state = -1;
    if (fd < 0) {
        char ebuf[128];
        snprintf(g_key.why, sizeof g_key.why, "%.300s cannot be read: %s", path,
                 strerror_r(errno, ebuf, sizeof ebuf));
        return;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(g_key.why, sizeof g_key.why, "%.300s is not a regular file", path);
    } else if (st.st_mode & 077) {
        snprintf(g_key.why, sizeof g_key.why,
                 "%.300s has mode %04o; expected 0600 (no access for group or "
                 "others)", path, (unsigned)(st.st_mode & 07777));
    } else if (st.st_uid != geteuid()) {
        snprintf(g_key.why, sizeof g_key.why,
                 "%.300s is owned by uid %u; expected mysqld's uid %u", path,
                 (unsigned)st.st_uid, (unsigned)geteuid());
    } else if (st.st_size > (off_t)(GS_KEY_MAX + 2)) {
        snprintf(g_key.why, sizeof g_key.why,
                 "%.300s has %lld bytes; expected at most %d", path,
                 (long long)st.st_size, GS_KEY_MAX + 2);
    } else {
        for (;;) {
            ssize_t r = read(fd, buf + len, sizeof buf - len);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            len += (size_t)r;
            if (len == sizeof buf)
                break;
        }
        char why[200];
        if (len == sizeof buf)
            snprintf(g_key.why, sizeof g_key.why, "%.300s grew while read", path);
        else if (gs_sign_key_parse(buf, len, &g_key.key, why, sizeof why) != 0)
            snprintf(g_key.why, sizeof g_key.why, "%.300s: %.200s", path, why);
        else
            g_key.state = 1;
    }
    memset(buf, 0, sizeof buf);
    close(fd);
}

static void key_check(int64_t now)
{
    char path[4096];
    struct stat st;
    int before = g_key.checked ? g_key.state : 2;
    char kid_before[8];
    memcpy(kid_before, g_key.key.kid, sizeof kid_before);
    g_key.next_ms = now + GS_KEY_RECHECK_MS;
    g_key.checked = 1;
    if (gs_lib_file_path(GS_KEY_NAME, path, sizeof path) != 0) {
        g_key.state = -1;
        snprintf(g_key.why, sizeof g_key.why,
                 "the key file's path (beside the library) is unknown");
    } else if (lstat(path, &st) != 0) {
        if (errno == ENOENT) {
            g_key.state = 0;
        } else {
            char ebuf[128];
            g_key.state = -1;
            snprintf(g_key.why, sizeof g_key.why, "%.300s: %.150s", path,
                     strerror_r(errno, ebuf, sizeof ebuf));
        }
    } else if (before != 1 || !same_file(&st, &g_key.st)) {
        g_key.st = st;
        key_read(path);
    }
    if (g_key.state == before &&
        (before != 1 || memcmp(kid_before, g_key.key.kid, 8) == 0))
        return;
    /* one line in the error log per change: never the key, only its id */
    if (g_key.state == 1)
        fprintf(stderr, "gearsync_udf: signing background jobs with key id "
                        "%.8s (%s)\n", g_key.key.kid, path);
    else if (g_key.state == 0)
        fprintf(stderr, "gearsync_udf: no key file %s: background jobs are "
                        "not signed (docs/security.md)\n", path);
    else
        fprintf(stderr, "gearsync_udf: key refused, background jobs fail "
                        "(the triggers spool them) until it is fixed: %s\n",
                g_key.why);
}

int gs_sign_current(struct gs_sign_key *out, char *why, size_t whylen)
{
    int64_t now = gs_now_ms();
    pthread_mutex_lock(&g_key_lock);
    if (!g_key.checked || now >= g_key.next_ms)
        key_check(now);
    int state = g_key.state;
    if (state == 1)
        *out = g_key.key;
    else if (state < 0)
        why_set(why, whylen, g_key.why);
    pthread_mutex_unlock(&g_key_lock);
    return state;
}

void gs_sign_forget(void)
{
    pthread_mutex_lock(&g_key_lock);
    g_key.checked = 0;
    pthread_mutex_unlock(&g_key_lock);
}
