/*
 * fuzz_sign.c — libFuzzer target for gman_sign.c: the key file parser
 * (gs_sign_key_parse: what gearsync_udf.key holds) and the signer.
 *
 * Input: key bytes, then (after the first 0xFF byte, if any) a function name
 * and a workload split at the first NUL.  Properties besides ASan/UBSan:
 * a refused key leaves a reason; an accepted key is 16..1024 printable
 * ASCII bytes without blanks or commas; the header is "gs1." 8 lowercase hex
 * "." 64 lowercase hex "."; SHA-256 fed in arbitrary pieces equals SHA-256
 * fed at once; signing is deterministic and depends on the workload.
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
