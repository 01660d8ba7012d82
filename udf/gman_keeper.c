/*
 * gman_keeper.c — the one background thread of the library.
 *
 * With pipeline=1 a background submit returns once its packet is written;
 * gearmand's JOB_CREATED is read on a later call of the same mysqld thread,
 * and a job whose connection broke before it was acknowledged is sent again
 * on the next connection.  That leaves jobs in the hands of a thread that
 * makes no more calls (an idle connection, or one that ended).  The keeper
 * closes that gap: while any thread holds unacknowledged jobs it wakes every
 * GS_KEEPER_TICK_MS and lets gman_conn.c deliver the jobs of threads idle
 * for GS_KEEPER_IDLE_MS (gs_conn_keeper_pass); ended threads' jobs are kept
 * until a job server takes them.  When nothing is pending it sleeps on a
 * condition variable until gs_keeper_notify().
 *
 * Lost wake-ups: a caller bumps k_gen (always) and signals only when the
 * keeper said it sleeps (k_idle).  The keeper sets k_idle, then re-reads
 * k_gen under k_lock before it waits; both sides use sequentially
 * consistent atomics, so at least one of them sees the other's write.
 *
 * Lifetime: started on the first notify (pthread_once), stopped and joined by
 * gs_keeper_stop() from the library destructor, before any thread state is
 * freed and before the code is unmapped.  It blocks every signal.
 */
#define _GNU_SOURCE
#include "gearsync_udf.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>

static pthread_once_t k_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t k_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t k_cond;
static pthread_t k_thread;
static int k_running;  /* atomic: 1 while the thread runs */
static int k_stop;     /* under k_lock */
static int k_idle;     /* atomic: 1 while it waits for a notify */
static int k_fast;     /* atomic: 1 while it looks every GS_COALESCE tick */
static unsigned long k_gen; /* atomic: bumped by every notify */

static void deadline_in(struct timespec *ts, long us)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += us / 1000000;
    ts->tv_nsec += (us % 1000000) * 1000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* How often to look while jobs wait to be sent: the current coalesce_us,
 * at least 200 µs. */
static long fast_tick_us(void)
{
    struct gs_config c;
    gs_config_current(&c);
    long us = c.coalesce_us ? (long)c.coalesce_us : 1000;
    return us < 200 ? 200 : us;
}

static void *keeper_main(void *arg)
{
    unsigned tick = 0;
    (void)arg;
    pthread_mutex_lock(&k_lock);
    while (!k_stop) {
        unsigned long gen = __atomic_load_n(&k_gen, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&k_lock);
        int unsent = 0;
        int pending = gs_conn_keeper_pass(++tick, &unsent);
        long fast = unsent ? fast_tick_us() : 0;
        pthread_mutex_lock(&k_lock);
        if (k_stop)
            break;
        __atomic_store_n(&k_fast, unsent, __ATOMIC_SEQ_CST);
        if (pending || unsent) {
            struct timespec ts;
            deadline_in(&ts, unsent ? fast : GS_KEEPER_TICK_MS * 1000L);
            (void)pthread_cond_timedwait(&k_cond, &k_lock, &ts);
            continue;
        }
        __atomic_store_n(&k_idle, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&k_gen, __ATOMIC_SEQ_CST) == gen) {
            while (__atomic_load_n(&k_idle, __ATOMIC_SEQ_CST) && !k_stop)
                pthread_cond_wait(&k_cond, &k_lock);
        }
        __atomic_store_n(&k_idle, 0, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&k_lock);
    return NULL;
}

static void keeper_start(void)
{
    pthread_condattr_t ca;
    pthread_attr_t ta;
    sigset_t all, old;

    if (pthread_condattr_init(&ca) != 0)
        return;
    (void)pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&k_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0)
        return;
    if (pthread_attr_init(&ta) != 0)
        return;
    (void)pthread_attr_setstacksize(&ta, 256 * 1024);
    /* mysqld handles signals in its own thread: this one takes none */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&k_thread, &ta, keeper_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&ta);
    if (rc != 0) {
        fprintf(stderr,
                "gearsync_udf: cannot start the keeper thread (error %d): "
                "pipelined jobs of idle threads wait for their next call\n",
                rc);
        return;
    }
    __atomic_store_n(&k_running, 1, __ATOMIC_SEQ_CST);
}

void gs_keeper_notify(int unsent)
{
    if (!__atomic_load_n(&k_running, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&k_lock);
        int stopped = k_stop;
        pthread_mutex_unlock(&k_lock);
        if (stopped)
            return; /* the library is being unloaded */
        pthread_once(&k_once, keeper_start);
    }
    __atomic_add_fetch(&k_gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&k_idle, __ATOMIC_SEQ_CST) ||
        (unsent && !__atomic_load_n(&k_fast, __ATOMIC_SEQ_CST))) {
        /* asleep, or on its slow tick while jobs wait to be sent */
        pthread_mutex_lock(&k_lock);
        __atomic_store_n(&k_idle, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&k_fast, 1, __ATOMIC_SEQ_CST);
        pthread_cond_signal(&k_cond);
        pthread_mutex_unlock(&k_lock);
    }
}

int gs_keeper_running(void)
{
    return __atomic_load_n(&k_running, __ATOMIC_ACQUIRE);
}

void gs_keeper_stop(void)
{
    pthread_mutex_lock(&k_lock);
    k_stop = 1;
    int running = __atomic_load_n(&k_running, __ATOMIC_ACQUIRE);
    if (running)
        pthread_cond_signal(&k_cond);
    pthread_mutex_unlock(&k_lock);
    if (running) {
        pthread_join(k_thread, NULL);
        __atomic_store_n(&k_running, 0, __ATOMIC_RELEASE);
        pthread_cond_destroy(&k_cond);
    }
}
