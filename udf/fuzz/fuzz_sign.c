/*
 * fuzz_sign.c — libFuzzer target for gman_sign.c: the key file parser
 * (gs_sign_key_parse: what gearsync_udf.key holds) and the signer.
 *
 * Input: key bytes, then (after the first 0xFF byte, if any) a function name
 * and a workload split at the first NUL.  Properties besides ASan/UBSan:
 * a refused key leaves a reason; an accepted key is 16..1024 printable
 * ASCII bytes without blanks or commas; the header is "gs1." 8 lowercase hex
 * "." 64 lowercase hex "."; SHA-256 fed in arbitrary pieces equals SHA-256
 * fed at once and equals the plain C compression's (the library uses SHA-NI where the CPU has
 * it); signing is deterministic and depends on the workload.
 */
#include "../gearsync_udf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_hex(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return 0;
    return 1;
}

/* SHA-256 of data with the plain C compression only (the library may use SHA-NI). */
static void sha_portable(const uint8_t *data, size_t size, unsigned char out[32])
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint32_t h[8];
    unsigned char block[64];
    size_t pos = 0;
    memcpy(h, h0, sizeof h);
    for (; size - pos >= 64; pos += 64)
        gs_sha256_compress_portable(h, data + pos);
    size_t rest = size - pos;
    memset(block, 0, 64);
    memcpy(block, data + pos, rest);
    block[rest] = 0x80;
    if (rest >= 56) {
        gs_sha256_compress_portable(h, block);
        memset(block, 0, 64);
    }
    uint64_t bits = (uint64_t)size * 8;
    for (int i = 0; i < 8; i++)
        block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    gs_sha256_compress_portable(h, block);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static void check_sha_pieces(const uint8_t *data, size_t size)
{
    struct gs_sha256 a, b;
    unsigned char da[32], db[32];
    gs_sha256_init(&a);
    gs_sha256_update(&a, data, size);
    gs_sha256_final(&a, da);
    gs_sha256_init(&b);
    size_t pos = 0, step = 1;
    while (pos < size) {
        size_t n = step < size - pos ? step : size - pos;
        gs_sha256_update(&b, data + pos, n);
        pos += n;
        step = step * 3 % 97 + 1; /* uneven pieces across block boundaries */
    }
    gs_sha256_final(&b, db);
    if (memcmp(da, db, 32) != 0) {
        fprintf(stderr, "SHA-256 in pieces differs from SHA-256 at once\n");
        abort();
    }
    unsigned char dp[32];
    sha_portable(data, size, dp);
    if (memcmp(da, dp, 32) != 0) {
        fprintf(stderr, "SHA-256 (SHA-NI where the CPU has it) differs from the plain C one\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *cut = memchr(data, 0xFF, size);
    size_t klen = cut ? (size_t)(cut - data) : size;
    const uint8_t *rest = cut ? cut + 1 : (const uint8_t *)"";
    size_t rlen = cut ? size - klen - 1 : 0;
    const uint8_t *nul = memchr(rest, 0, rlen);
    size_t fnlen = nul ? (size_t)(nul - rest) : rlen;
    const char *wl = nul ? (const char *)nul + 1 : "";
    size_t wllen = nul ? rlen - fnlen - 1 : 0;

    char *key = malloc(klen ? klen : 1); /* exact size: ASan sees any over-read */
    if (!key)
        abort();
    memcpy(key, data, klen);
    check_sha_pieces(data, size);

    struct gs_sign_key k;
    char why[256];
    why[0] = 0;
    if (gs_sign_key_parse(klen ? key : NULL, klen, &k, why, sizeof why) != 0) {
        if (!why[0]) {
            fprintf(stderr, "key refused without a reason\n");
            abort();
        }
        free(key);
        return 0;
    }
    size_t n = klen;
    if (n && key[n - 1] == '\n')
        n--;
    if (n && key[n - 1] == '\r')
        n--;
    if (n < GS_KEY_MIN || n > GS_KEY_MAX)
        abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e || key[i] == ',')
            abort();

    char h1[GS_SIG_HEADER], h2[GS_SIG_HEADER];
    gs_sign_header(&k, (const char *)rest, fnlen, wl, wllen, h1);
    gs_sign_header(&k, (const char *)rest, fnlen, wl, wllen, h2);
    if (memcmp(h1, h2, sizeof h1) != 0 || memcmp(h1, "gs1.", 4) != 0 || h1[12] != '.' ||
        h1[GS_SIG_HEADER - 1] != '.' || !is_hex(h1 + 4, 8) || !is_hex(h1 + 13, 64)) {
        fprintf(stderr, "bad or unstable header: %.78s\n", h1);
        abort();
    }
    gs_sign_header(&k, (const char *)rest, fnlen, wl, wllen ? wllen - 1 : 0, h2);
    if (wllen && memcmp(h1 + 13, h2 + 13, 64) == 0) {
        fprintf(stderr, "the signature does not depend on the workload's last byte\n");
        abort();
    }
    free(key);
    return 0;
}
