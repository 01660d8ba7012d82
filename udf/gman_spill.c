/*
 * gman_spill.c — pipelined jobs that outlive the library.
 *
 * When the library is unloaded (mysqld shuts down, or DROP FUNCTION of the
 * last gman_* function) while some pipelined background jobs are still not
 * acknowledged by any job server — gearmand was down or hung at that moment
 * — they are written to a spill file instead of being dropped, and the next
 * load of the library (mysqld's start) reads them back and hands them to the
 * keeper thread, which sends them when a job server takes them.  The file is
 * removed once they are all acknowledged.
 *
 * Where: $GEARSYNC_UDF_SPILL if set (a file path), else
 * "gearsync_udf.pending" in mysqld's working directory, which is its datadir.
 *
 * Format: the 8-byte line "GSPEND1\n", then the SUBMIT_JOB*_BG request
 * packets exactly as they go on the wire.  Written to "<path>.tmp",
 * fsync()ed, then renamed over <path>.  A file that does not parse is kept,
 * renamed to "<path>.bad", with one line in the error log; the packets
 * before the damage are still sent.
 */
#define _GNU_SOURCE
#include "gearsync_udf.h"
#include "gman_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "GSPEND1\n"
#define MAGIC_LEN 8u

size_t gs_spill_path(char *buf, size_t size)
{
    const char *env = getenv(GS_ENV_SPILL);
    int n = snprintf(buf, size, "%s",
                     env && *env ? env : GS_SPILL_NAME);
    if (n < 0 || (size_t)n >= size)
        return 0;
    return (size_t)n;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int gs_spill_save(const struct gs_spill_part *parts, size_t nparts,
                  size_t jobs)
{
    char path[4096], tmp[4120];
    if (!gs_spill_path(path, sizeof path)) {
        fprintf(stderr, "gearsync_udf: %zu background job(s) lost: the spill "
                        "file path is too long\n", jobs);
        return -1;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = fd < 0 ? -1 : write_all(fd, MAGIC, MAGIC_LEN);
    for (size_t i = 0; rc == 0 && i < nparts; i++)
        rc = write_all(fd, parts[i].p, parts[i].len);
    if (rc == 0)
        rc = fsync(fd);
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && rc == 0) {
        rc = -1;
        e = errno;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        e = errno;
    }
    if (rc != 0) {
        char ebuf[128];
        fprintf(stderr,
                "gearsync_udf: %zu background job(s) lost: no job server "
                "acknowledged them before the library was unloaded, and "
                "writing %s failed: %s\n",
                jobs, tmp, strerror_r(e, ebuf, sizeof ebuf));
        (void)unlink(tmp);
        return -1;
    }
    /* the rename itself must survive a crash: sync the directory */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    fprintf(stderr,
            "gearsync_udf: %zu background job(s) not acknowledged by any job "
            "server at unload: saved to %s, sent when the library is loaded "
            "again\n", jobs, path);
    return 0;
}

char *gs_spill_load(size_t *len, size_t *jobs)
{
    char path[4096];
    *len = *jobs = 0;
    if (!gs_spill_path(path, sizeof path))
        return NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL; /* the usual case: nothing was left over */
    struct stat st;
    const char *why = NULL;
    char *buf = NULL;
    size_t size = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        why = "not a regular file";
    else if ((uint64_t)st.st_size > (uint64_t)GS_SPILL_MAX)
        why = "larger than 1 GiB";
    else if (!(buf = malloc((size_t)st.st_size + 1)))
        why = "out of memory";
    else {
        size = (size_t)st.st_size;
        size_t got = 0;
        while (got < size) {
            ssize_t r = read(fd, buf + got, size - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        if (got != size)
            why = "short read";
        else if (size < MAGIC_LEN || memcmp(buf, MAGIC, MAGIC_LEN) != 0)
            why = "not a gearsync spill file (bad header)";
    }
    close(fd);
    size_t off = MAGIC_LEN, n = 0;
    if (!why) {
        off += gs_proto_scan_requests(buf + off, size - off, &n);
        if (off < size)
            why = "damaged packet";
    }
    if (why) {
        char bad[4120];
        snprintf(bad, sizeof bad, "%s.bad", path);
        int renamed = rename(path, bad) == 0;
        size_t at = off <= size ? off : 0; /* where the damage starts */
        fprintf(stderr,
                "gearsync_udf: spill file %s: %s at byte %zu; %zu job(s) "
                "before it will be sent; the file is %s\n",
                path, why, at, n,
                renamed ? "kept as <file>.bad" : "left in place");
        if (n == 0) {
            free(buf);
            return NULL;
        }
        size = off;
    }
    if (n == 0) { /* an empty spill file: nothing to send */
        free(buf);
        (void)unlink(path);
        return NULL;
    }
    memmove(buf, buf + MAGIC_LEN, size - MAGIC_LEN);
    *len = size - MAGIC_LEN;
    *jobs = n;
    fprintf(stderr,
            "gearsync_udf: %zu background job(s) saved at the last unload "
            "read from %s: sending them\n", n, path);
    return buf;
}

void gs_spill_remove(void)
{
    char path[4096];
    if (gs_spill_path(path, sizeof path))
        (void)unlink(path);
}
