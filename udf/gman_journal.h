/*
 * gman_journal.h — the journal of unacknowledged pipelined jobs
 * (gman_journal.c): one slot file per thread that holds such jobs, mapped
 * MAP_SHARED, so they outlive a SIGKILL of mysqld.  Private to the library.
 */
#ifndef GMAN_JOURNAL_H
#define GMAN_JOURNAL_H

#include "gearsync_udf.h"

struct gs_jslot;

/* The directory of the slot files GS_JOURNAL_NAME.<pid>.<n>
 * ($GEARSYNC_UDF_JOURNAL, else the spill file's).  0 ok, -1 too long. */
int gs_journal_dir(char *buf, size_t size);
/* A slot (an idle one, else a new file), empty; NULL when the journal
 * cannot be used now (logged once; tried again later). */
struct gs_jslot *gs_journal_open(void);
/* Copy n bytes to data offset off, growing the file as needed.  0 ok; -1
 * (logged): release the slot, the jobs stay in memory. */
int gs_journal_put(struct gs_jslot *s, size_t off, const char *p, size_t n);
/* The jobs are data[head, len): one atomic store (release). */
void gs_journal_mark(struct gs_jslot *s, size_t head, size_t len);
/* Done with a slot (NULL: nothing).  keep = 0: emptied, then reused or
 * removed; keep = 1: closed as it is, its jobs read back at the next load. */
void gs_journal_release(struct gs_jslot *s, int keep);
/* Remove the idle slots (library unload). */
void gs_journal_drain_pool(void);
/* Jobs of a slot file left by a previous process: data[0, end) malloc'd
 * (adopt frees it), the packets in [head, end), `jobs` of them, and the slot
 * that now journals them (NULL: memory only). */
typedef void (*gs_journal_adopt_fn)(char *data, size_t head, size_t end,
                                    size_t jobs, struct gs_jslot *slot);
/* Read back every slot file no live process holds (library load). */
void gs_journal_recover(gs_journal_adopt_fn adopt);

#endif
