/*
 * gman_journal.c — pipelined jobs that survive a SIGKILL of mysqld.
 *
 * A pipelined background submit returns before gearmand acknowledges the job
 * (gman_conn.c keeps it in the thread's `pend` buffer until JOB_CREATED).
 * The spill file (gman_spill.c) saves those jobs at an orderly unload; a
 * killed mysqld runs no destructor.  So each thread that holds such jobs
 * also mirrors them into a slot file mapped MAP_SHARED: the copy is a
 * memcpy into the page cache (no system call per job), and the pages stay in
 * the file when the process dies.  They do not survive a crash of the kernel
 * or a power loss (nothing is fsync'ed).
 *
 * Slot files: gearsync_udf.journal.<pid>.<n> beside the spill file (the
 * datadir: files, because a directory there would show as a database), or
 * in the directory $GEARSYNC_UDF_JOURNAL.  Layout (gman_proto.h): a
 * 64-byte header (magic; the word head << 32 | len), then the data area,
 * whose offsets are those of the thread's pend buffer.  The packets are
 * copied first, then the word is stored (release), so a record the process
 * died copying lies past len and is never read: its trigger never returned,
 * its transaction never committed.  An acknowledgement stores a new head.
 *
 * Each slot is flock()ed by the process that has it open.  At load the
 * library takes every slot file it can lock (a live process's slots stay
 * locked and are skipped), validates it and hands its jobs to the keeper,
 * which uses that same slot as the orphan's journal: the file empties as the
 * jobs are acknowledged and is then reused or removed.  A file that does
 * not validate is renamed to <file>.bad with one line in the error log.
 *
 * Whatever fails here (no directory, disk full, mmap refused) leaves the jobs
 * in memory only, with one line in the error log: the application's write
 * never fails or waits because of the journal.
 */
#define _GNU_SOURCE
#include "gman_journal.h"
#include "gman_proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOT_PREFIX GS_JOURNAL_NAME "."
#define SLOT_MIN_DATA (256ul << 10) /* grown (doubling) when a thread needs more */
#define POOL_MAX 32               /* idle slots kept for new threads */
#define RETRY_AFTER_MS 10000      /* after a failure, try again this late */

struct gs_jslot {
    int fd;
    char *map;   /* GS_JOURNAL_HDR + data, MAP_SHARED */
    size_t size; /* mapped bytes = file size */
    char name[64];
};

static pthread_mutex_t j_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gs_jslot *j_pool[POOL_MAX]; /* under j_lock */
static unsigned j_npool;                  /* under j_lock */
static unsigned long j_seq;               /* under j_lock */
static int64_t j_broken_until_ms;         /* under j_lock */

int gs_journal_dir(char *buf, size_t size)
{
    const char *env = getenv(GS_ENV_JOURNAL);
    int n;
    if (env && *env) {
        n = snprintf(buf, size, "%s", env);
    } else {
        char spill[4096];
        if (!gs_spill_path(spill, sizeof spill))
            return -1;
        char *slash = strrchr(spill, '/');
        if (slash)
            n = snprintf(buf, size, "%.*s", slash == spill ? 1 : (int)(slash - spill),
                         spill);
        else
            n = snprintf(buf, size, ".");
    }
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static int slot_path(const struct gs_jslot *s, char *buf, size_t size)
{
    char dir[4096];
    if (gs_journal_dir(dir, sizeof dir) != 0)
        return -1;
    int n = snprintf(buf, size, "%s/%s", dir, s->name);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static void set_word(struct gs_jslot *s, size_t head, size_t len)
{
    uint64_t w = ((uint64_t)head << 32) | (uint64_t)len;
    __atomic_store_n((uint64_t *)(void *)(s->map + GS_JOURNAL_WORD), w,
                     __ATOMIC_RELEASE);
}

static void slot_close(struct gs_jslot *s, int remove)
{
    if (remove) {
        char path[4200];
        if (slot_path(s, path, sizeof path) == 0)
            (void)unlink(path);
    }
    if (s->map)
        munmap(s->map, s->size);
    close(s->fd); /* drops the flock */
    free(s);
}

/* Give the file `size` bytes of real blocks: a page of a MAP_SHARED sparse
 * file that cannot get a block when first written (disk full) would be a
 * SIGBUS in mysqld; reserved blocks never are.  0 ok, else the error. */
static int reserve_blocks(int fd, size_t size)
{
    return posix_fallocate(fd, 0, (off_t)size);
}

static void log_failure(const char *what, int e)
{
    int64_t now = gs_now_ms();
    pthread_mutex_lock(&j_lock);
    int quiet = now < j_broken_until_ms;
    j_broken_until_ms = now + RETRY_AFTER_MS;
    pthread_mutex_unlock(&j_lock);
    if (quiet)
        return;
    char ebuf[128];
    fprintf(stderr,
            "gearsync_udf: journal %s: %s; unacknowledged pipelined jobs are "
            "kept in memory only (lost if mysqld is killed), tried again in "
            "%d s\n",
            what, e ? strerror_r(e, ebuf, sizeof ebuf) : "failed",
            RETRY_AFTER_MS / 1000);
}

static struct gs_jslot *slot_create(void)
{
    char dir[4096], path[4200];
    if (gs_journal_dir(dir, sizeof dir) != 0) {
        log_failure("directory path too long", 0);
        return NULL;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) { /* $GEARSYNC_UDF_JOURNAL */
        log_failure("mkdir", errno);
        return NULL;
    }
    struct gs_jslot *s = calloc(1, sizeof *s);
    if (!s) {
        log_failure("slot", ENOMEM);
        return NULL;
    }
    /* O_EXCL: a leftover of the same name (a previous mysqld with our pid,
     * as in a container) may be one this process adopted at load */
    s->fd = -1;
    for (int tries = 0; s->fd < 0 && tries < 64; tries++) {
        pthread_mutex_lock(&j_lock);
        unsigned long seq = ++j_seq;
        pthread_mutex_unlock(&j_lock);
        snprintf(s->name, sizeof s->name, SLOT_PREFIX "%ld.%lu",
                 (long)getpid(), seq);
        snprintf(path, sizeof path, "%s/%s", dir, s->name);
        s->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                     0600);
        if (s->fd < 0 && errno != EEXIST)
            break;
    }
    const char *what = "open";
    if (s->fd < 0)
        goto fail;
    what = "flock";
    if (flock(s->fd, LOCK_EX | LOCK_NB) != 0)
        goto fail;
    s->size = GS_JOURNAL_HDR + SLOT_MIN_DATA;
    what = "fallocate";
    int e = reserve_blocks(s->fd, s->size);
    if (e != 0) {
        errno = e;
        goto fail;
    }
    what = "mmap";
    void *m = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (m == MAP_FAILED)
        goto fail;
    s->map = m;
    memcpy(s->map, GS_JOURNAL_MAGIC, sizeof GS_JOURNAL_MAGIC - 1);
    set_word(s, 0, 0);
    return s;
fail:;
    int err = errno;
    if (s->fd >= 0) {
        close(s->fd);
        (void)unlink(path);
    }
    free(s);
    log_failure(what, err);
    return NULL;
}

struct gs_jslot *gs_journal_open(void)
{
    struct gs_jslot *s = NULL;
    int64_t now = gs_now_ms();
    pthread_mutex_lock(&j_lock);
    if (j_npool)
        s = j_pool[--j_npool];
    int broken = now < j_broken_until_ms;
    pthread_mutex_unlock(&j_lock);
    if (s || broken)
        return s;
    return slot_create();
}

int gs_journal_put(struct gs_jslot *s, size_t off, const char *p, size_t n)
{
    size_t end;
    if (__builtin_add_overflow(off, n, &end) || end > 0xffffffffu)
        return -1;
    if (GS_JOURNAL_HDR + end > s->size) {
        size_t size = s->size;
        while (GS_JOURNAL_HDR + end > size)
            size *= 2;
        int e = reserve_blocks(s->fd, size);
        if (e != 0) {
            log_failure("fallocate", e);
            return -1;
        }
        void *m = mremap(s->map, s->size, size, MREMAP_MAYMOVE);
        if (m == MAP_FAILED) {
            log_failure("mremap", errno);
            return -1;
        }
        s->map = m;
        s->size = size;
    }
    memcpy(s->map + GS_JOURNAL_HDR + off, p, n);
    return 0;
}

void gs_journal_mark(struct gs_jslot *s, size_t head, size_t len)
{
    set_word(s, head, len);
}

void gs_journal_release(struct gs_jslot *s, int keep)
{
    if (!s)
        return;
    if (keep) { /* jobs no one else saved: the next load reads them */
        slot_close(s, 0);
        return;
    }
    set_word(s, 0, 0);
    pthread_mutex_lock(&j_lock);
    int pooled = j_npool < POOL_MAX && s->size == GS_JOURNAL_HDR + SLOT_MIN_DATA;
    if (pooled)
        j_pool[j_npool++] = s;
    pthread_mutex_unlock(&j_lock);
    if (!pooled)
        slot_close(s, 1);
}

void gs_journal_drain_pool(void)
{
    pthread_mutex_lock(&j_lock);
    unsigned n = j_npool;
    struct gs_jslot *list[POOL_MAX];
    memcpy(list, j_pool, n * sizeof *list);
    j_npool = 0;
    pthread_mutex_unlock(&j_lock);
    for (unsigned i = 0; i < n; i++)
        slot_close(list[i], 1);
}

/* One leftover slot file, locked: its jobs to adopt(), or reuse / remove. */
static void recover_one(const char *dir, const char *name,
                        gs_journal_adopt_fn adopt)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%.63s", dir, name);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd); /* a live process's slot */
        return;
    }
    struct stat st;
    struct gs_journal_view v = {.why = "not a regular file"};
    struct gs_jslot *s = calloc(1, sizeof *s);
    int ok = -1;
    if (s && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        v.why = "larger than 4 GiB";
        if ((uint64_t)st.st_size <= 0xffffffffull + GS_JOURNAL_HDR) {
            void *m = st.st_size >= (off_t)GS_JOURNAL_HDR
                          ? mmap(NULL, (size_t)st.st_size,
                                 PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                          : MAP_FAILED;
            if (m != MAP_FAILED) {
                s->map = m;
                s->size = (size_t)st.st_size;
            }
            ok = gs_journal_parse(s->map, s->map ? s->size : (size_t)st.st_size,
                                  &v);
        }
    }
    if (!s) {
        close(fd);
        return;
    }
    s->fd = fd;
    snprintf(s->name, sizeof s->name, "%.63s", name);
    if (ok != 0 || v.why) {
        char bad[4210];
        snprintf(bad, sizeof bad, "%s.bad", path);
        int renamed = rename(path, bad) == 0;
        fprintf(stderr,
                "gearsync_udf: journal slot %s: %s at data byte %zu; %zu "
                "job(s) before it will be sent; the file is %s\n",
                path, v.why, v.at, v.jobs,
                renamed ? "kept as <file>.bad" : "left in place");
        if (v.jobs == 0) {
            slot_close(s, 0);
            return;
        }
        /* the readable jobs go on from a fresh slot: the .bad file stays as
         * it was for inspection */
        char *copy = malloc(v.end);
        struct gs_jslot *fresh = copy ? slot_create() : NULL;
        if (fresh && gs_journal_put(fresh, 0, s->map + GS_JOURNAL_HDR, v.end) == 0)
            gs_journal_mark(fresh, v.head, v.end);
        else if (fresh) {
            gs_journal_release(fresh, 0);
            fresh = NULL;
        }
        if (copy)
            memcpy(copy, s->map + GS_JOURNAL_HDR, v.end);
        slot_close(s, 0);
        if (!copy) {
            fprintf(stderr, "gearsync_udf: out of memory reading %s\n", bad);
            gs_journal_release(fresh, 0);
            return;
        }
        adopt(copy, v.head, v.end, v.jobs, fresh);
        return;
    }
    if (v.jobs == 0) { /* empty: reuse it, or remove it */
        gs_journal_release(s, 0);
        return;
    }
    char *copy = malloc(v.end);
    if (!copy) {
        fprintf(stderr, "gearsync_udf: out of memory reading journal slot "
                        "%s; it stays for the next load\n", path);
        slot_close(s, 0);
        return;
    }
    memcpy(copy, s->map + GS_JOURNAL_HDR, v.end);
    fprintf(stderr,
            "gearsync_udf: %zu background job(s) a previous mysqld process "
            "left unacknowledged read from %s: sending them\n", v.jobs, path);
    adopt(copy, v.head, v.end, v.jobs, s);
}

void gs_journal_recover(gs_journal_adopt_fn adopt)
{
    char dir[4096];
    if (gs_journal_dir(dir, sizeof dir) != 0)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return; /* the usual case on a first start */
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, SLOT_PREFIX, sizeof SLOT_PREFIX - 1) != 0 ||
            (n > 4 && strcmp(e->d_name + n - 4, ".bad") == 0) ||
            n >= sizeof ((struct gs_jslot *)0)->name)
            continue;
        recover_one(dir, e->d_name, adopt);
    }
    closedir(d);
}
