/*
 * api_vmap: each job's version and tenant, in memory, for the polls.
 *
 * GET /v1/jobs/{id} is the request clients repeat most (pollers, long-polls, the
 * dashboard's detail view). Its answer is decided by the job's version: the ETag, the
 * 304, and the per-thread body cache all key on it. Reading it from SQLite cost each
 * GET a statement and two file locks (13% and 8.5% of a poll's CPU when profiled);
 * this map answers it from memory.
 *
 * Every change to a job row is made by the daemon's loop thread, which tells the API
 * (api_job_changed) before it answers the request that caused it or wakes the
 * long-polls on the job. That thread alone writes here; it sets an entry from the row
 * it has just read and drops it when the row is gone. HTTP threads only read. A job
 * not found here is read from the store, never added by the reader: a reader's insert
 * could race a deletion and bring a deleted job back.
 *
 * Bounded: at API_VMAP_MAX entries new jobs are not added (their polls read the store).
 * Thread-safe: a read-write lock.
 */
#ifndef API_VMAP_H
#define API_VMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "common/sd_err.h"

#define API_VMAP_MAX 262144

typedef struct api_vmap api_vmap_t;

/* A new, empty map in *out (free with api_vmap_free). Returns 0 or SD_ENOMEM. */
SD_MUST_CHECK int api_vmap_new(api_vmap_t **out, sd_error_t *e);
void api_vmap_free(api_vmap_t *m);

/* Records the version and tenant (NULL: none) of job id, as its row now says. Out of
 * memory or full, the entry is dropped instead, so the map is never stale. */
void api_vmap_set(api_vmap_t *m, const char *id, const char *tenant, int64_t version);
/* Forgets job id (its row is gone, or could not be read). */
void api_vmap_drop(api_vmap_t *m, const char *id);
/* Forgets every job (rows were deleted in bulk). */
void api_vmap_clear(api_vmap_t *m);

/*
 * Looks job id up as the caller `tenant` (NULL: no auth in force) may see it.
 * Returns 1 with *version set when known and visible, -1 when known and another
 * tenant's (answer as not found), 0 when not known (read the store).
 */
int api_vmap_get(api_vmap_t *m, const char *id, const char *tenant, int64_t *version);

/* Entries now (for tests). */
size_t api_vmap_size(api_vmap_t *m);

#endif
