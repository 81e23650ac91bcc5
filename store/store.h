/*
 * store: the daemon's durable state. SQLite (WAL mode) holds jobs, their event log,
 * artifacts, records and API tokens; files (uploads and results) live on disk beside
 * it, content-addressed by SHA-256.
 *
 * Layout of the data directory:
 *   <dir>/sparsityd.db          SQLite database (schema versioned by user_version)
 *   <dir>/blobs/ab/abcdef...    one file per distinct content, named by its SHA-256
 *   <dir>/tmp/                  blobs being written (never served; swept at open)
 *
 * Threads: a store_t is shared. The loop thread owns the single writer connection
 * (store_open's); every other thread that reads opens its own store_reader_t.
 * Blob writers (store_blob_*) may run on any thread: they touch only files.
 *
 * Errors follow sd_err: 0 or a negative SD_E* code with detail in the sd_error_t.
 * SD_ENOTFOUND for a missing job/artifact, SD_ECONFLICT for a refused state change,
 * SD_ENOSPACE when the disk is full, SD_EIO otherwise.
 */
#ifndef STORE_H
#define STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/sd_err.h"

typedef struct store store_t;
typedef struct store_reader store_reader_t;
typedef struct store_blob store_blob_t;

/* Job states; the string forms are what the API shows. */
#define STORE_STATE_MAP(X)                                                          \
	X(QUEUED, "queued")                                                         \
	X(RUNNING, "running")                                                       \
	X(SUCCEEDED, "succeeded")                                                   \
	X(FAILED, "failed")                                                         \
	X(CANCELED, "canceled")

typedef enum store_state {
#define STORE__STATE_ENUM(name, str) STORE_##name,
	STORE_STATE_MAP(STORE__STATE_ENUM)
#undef STORE__STATE_ENUM
	STORE_STATE__COUNT
} store_state_t;

/* "queued", ...; NULL for an out-of-range value. */
const char *store_state_name(store_state_t s);
/* Parses a state name; returns 0 or SD_EUSAGE. */
SD_MUST_CHECK int store_state_parse(const char *s, store_state_t *out, sd_error_t *e);
/* Whether from -> to is allowed (the one transition table; see store.c). */
bool store_transition_ok(store_state_t from, store_state_t to);

#define STORE_ID_LEN 26     /* ids are 26-char ULID-like strings: time-ordered, random */
#define STORE_SHA_HEX 64

/* Whether s is a job id as this store makes them (26 Crockford base-32 characters). */
bool store_id_valid(const char *s);

/* One artifact of a job: an input ("model", "config", "record") or an output. */
typedef struct store_artifact {
	char name[64];
	char sha256[STORE_SHA_HEX + 1];
	int64_t size;
	bool input;
} store_artifact_t;

/*
 * A job row. Strings are owned by the struct; release with store_job_clear().
 * result_json / error_* are NULL / 0 until set. version increases on every change
 * (it is the ETag).
 */
typedef struct store_job {
	char id[STORE_ID_LEN + 1];
	char *stage;       /* insert, export, prune, check */
	char *tenant;      /* "" without tokens */
	char *name;        /* user label, may be "" */
	char *outputs;     /* comma-separated output node names, may be "" */
	char *format;      /* stated model format or "" */
	char *record_from; /* id of the insert job whose record an export uses, or "" */
	store_state_t state;
	int attempts;
	int progress;      /* 0..100 */
	char *result_json; /* the stage's result document, or NULL */
	char *error_code;  /* problem type slug (sd_err_type), or NULL */
	char *error_msg;   /* engine message, or NULL */
	int64_t created_ms, updated_ms, started_ms, finished_ms; /* unix ms; 0 = not yet */
	int64_t version;
	bool emit_record;  /* prune: also produce a record */
	int64_t input_bytes; /* sum of the input artifacts' sizes (filled by get and list) */
	store_artifact_t *artifacts;
	size_t n_artifacts;
} store_job_t;

void store_job_clear(store_job_t *j);

/*
 * Opens (creating if needed) the data directory and database, enables WAL, migrates
 * the schema to the current version, removes leftover files in tmp/ and blobs no row
 * references. Loop thread. A second process opening the same directory while the
 * first has it open (e.g. `token create` beside the daemon) shares the database but
 * skips those sweeps. Returns 0 or SD_EIO / SD_ENOSPACE; close with store_close.
 */
SD_MUST_CHECK int store_open(const char *dir, store_t **out, sd_error_t *e);
void store_close(store_t *s);

/* 0 when s owns its directory (the first opener, see store_open), else the pid the
 * owner wrote in the lock file, or -1 if none is there. Only an owner may run jobs: a
 * second daemon would requeue the first one's running jobs as interrupted. */
long store_owner_pid(const store_t *s);

/*
 * Starts the pool of `threads` threads that hash blobs as they stream in (shared by all
 * blobs of s, so concurrent uploads cost no thread each). Without it, blobs hash on the
 * thread that appends. Call once, before any blob begins; store_close stops it.
 * Returns 0, SD_ENOMEM, SD_EINTERNAL.
 */
SD_MUST_CHECK int store_hashers_start(store_t *s, int threads, sd_error_t *e);


/* Path of the blob with this SHA-256 (hex); caller frees. NULL on ENOMEM or when
 * sha256 is not 64 lowercase hex digits (so a name can never escape blobs/). Any thread. */
char *store_blob_path(store_t *s, const char *sha256);

/* ---- blobs: streaming writes, any thread ---- */

/*
 * Starts a blob: a temporary file under tmp/, hashed as it is written. The blob
 * becomes visible only through store_blob_commit, which fsyncs it, renames it to its
 * content address (an existing identical blob is simply reused) and fsyncs the
 * directory. A crash before the rename leaves only a temporary file, removed at the
 * next store_open. limit is the largest size accepted (SD_ETOOBIG past it, checked
 * before the bytes are written; <= 0 means no limit). After a failed append the blob
 * only accepts store_blob_abort (commit refuses it). Returns 0, SD_ENOMEM, SD_EIO,
 * SD_ENOSPACE; the caller owns *out until commit or abort.
 */
SD_MUST_CHECK int store_blob_begin(store_t *s, int64_t limit, store_blob_t **out,
				   sd_error_t *e);
/* Writes b's full buffers around the page cache (O_DIRECT, 4 MiB each), where the file
 * system allows it; call before the first append, else it does nothing. The bytes
 * then cost no copy into the page cache and no writeback work, and reach the disk as
 * they arrive instead of piling up for the commit's fsync; a later read of the blob
 * comes from the disk. */
void store_blob_uncached(store_blob_t *b);
SD_MUST_CHECK int store_blob_append(store_blob_t *b, const void *data, size_t len,
				    sd_error_t *e);
/*
 * Whether appending len bytes to b now would return without waiting for the store's
 * pool (its buffers all still being written and hashed). If it would wait, wake(ud) is
 * registered and called once, on a pool thread holding no lock of the store, when a
 * buffer frees: the appending thread (an HTTP thread, for an upload) serves its other
 * connections meanwhile instead of sleeping. Always true without a pool, or when len
 * alone is more than the ring holds. One registration at a time; the appending thread.
 */
bool store_blob_ready(store_blob_t *b, size_t len, void (*wake)(void *), void *ud);
/* A write-only FILE (1 MiB buffer) whose bytes go to store_blob_append, so writers of
 * FILEs (the engine's encoders) stream into a blob unchanged. A failed append makes
 * the FILE's write fail with errno ENOSPC (SD_ENOSPACE) or EIO (anything else). b stays
 * the caller's: fclose the FILE (which flushes it) before committing or aborting b.
 * NULL (errno set) when out of memory. */
FILE *store_blob_stream(store_blob_t *b);
/* Commits: fills sha256 (hex, NUL-terminated) and *size; frees b in every case. The
 * committed blob is pinned (no job deletion can remove the file) until a row names it
 * (store_job_create, store_artifact_add) or the caller gives it up (store_blob_release):
 * after a successful commit, exactly one of those must follow. */
SD_MUST_CHECK int store_blob_commit(store_blob_t *b, char sha256[STORE_SHA_HEX + 1],
				    int64_t *size, sd_error_t *e);
/* Drops an uncommitted blob (its temporary file); frees b. Safe on NULL. */
void store_blob_abort(store_blob_t *b);

/* A committed blob that no row will adopt (its upload or stage failed, or its job was
 * canceled): drops its commit's pin and removes the file unless a row names it or
 * another commit pinned it. Loop thread (reads through the writer connection). A
 * failure only leaves an orphan for the sweep at the next open. */
void store_blob_release(store_t *s, const char *sha256);

/* ---- writes: loop thread (the writer connection) ---- */

/* The fields a new job starts with; artifacts are its inputs (already committed blobs). */
typedef struct store_job_new {
	const char *stage, *tenant, *name, *outputs, *format, *record_from;
	const store_artifact_t *inputs;
	size_t n_inputs;
	bool emit_record;
} store_job_new_t;

/* Inserts a queued job, its input artifacts and a "created" event in one transaction;
 * writes the new id into id. NULL strings are stored as "". Each input must name a
 * blob the caller committed (SD_ENOTFOUND otherwise); once the job exists, their pins
 * are dropped (store_blob_commit). Returns 0, SD_EUSAGE, SD_ENOTFOUND,
 * SD_EIO, SD_ENOSPACE. */
SD_MUST_CHECK int store_job_create(store_t *s, const store_job_new_t *n,
				   char id[STORE_ID_LEN + 1], sd_error_t *e);

/*
 * The one way a job changes state: checks the transition table, updates the row
 * (timestamps, attempts on -> running, version), appends an event with `note`, all in
 * one transaction. Fields in `upd` (may be NULL) that are non-NULL are written too
 * (result_json, error_code, error_msg). Once committed, the change is logged as one
 * line, "[store] job <id>: <from> -> <to>: <note>" (at error level with upd->alarm).
 * Progress is reset to 0 on -> queued/running and
 * set to 100 on -> succeeded. running -> queued also drops the outputs (artifacts,
 * record) of the interrupted attempt. Returns 0, SD_ENOTFOUND, SD_ECONFLICT
 * (transition not allowed: e->msg says "cannot go from <from> to <to>"), SD_EIO.
 */
typedef struct store_job_update {
	const char *result_json;
	const char *error_code;
	const char *error_msg;
	bool alarm; /* the operator's business (an internal failure): logged as an error */
} store_job_update_t;
SD_MUST_CHECK int store_job_transition(store_t *s, const char *id, store_state_t to,
				       const store_job_update_t *upd, const char *note,
				       sd_error_t *e);

/* Sets progress (clamped to 0..100) and bumps version. A job that is not running, or
 * an unchanged value, is left alone (returns 0): late reports are harmless.
 * Returns 0, SD_ENOTFOUND, SD_EIO. */
SD_MUST_CHECK int store_job_progress(store_t *s, const char *id, int progress,
				     sd_error_t *e);

/* Adds an output artifact (a blob the caller committed; its pin is dropped once the
 * row is in) to a job. Only while the job is running (add outputs, then transition to
 * succeeded). Returns 0, SD_ENOTFOUND (job or blob),
 * SD_ECONFLICT (not running, or the name is taken), SD_EUSAGE, SD_EIO. */
SD_MUST_CHECK int store_artifact_add(store_t *s, const char *job_id,
				     const store_artifact_t *a, sd_error_t *e);

/* Registers the record file an insert job produced (so exports can name record_from).
 * Same rules and returns as store_artifact_add; one record per job. */
SD_MUST_CHECK int store_record_set(store_t *s, const char *job_id, const char *sha256,
				   sd_error_t *e);

/* Appends a free-text event to the job's log (e.g. "worker 2 started"); bumps version.
 * Returns 0, SD_ENOTFOUND, SD_EIO. */
SD_MUST_CHECK int store_event_add(store_t *s, const char *job_id, const char *text,
				  sd_error_t *e);

/* Deletes a job (any terminal state), its events and artifact rows; blobs no longer
 * referenced by any job are unlinked. The deletion takes a fresh version (see
 * store_version_current). Returns 0, SD_ENOTFOUND, SD_ECONFLICT (job is
 * queued or running), SD_EIO. */
SD_MUST_CHECK int store_job_delete(store_t *s, const char *id, sd_error_t *e);

/*
 * At start: every job found running goes back to queued (attempts kept) or, when it
 * has reached max_attempts, to failed with error "attempts-exhausted". Returns the
 * number requeued in *requeued and failed in *failed.
 */
SD_MUST_CHECK int store_recover(store_t *s, int max_attempts, int *requeued, int *failed,
				sd_error_t *e);

/* Ids of queued jobs, oldest first, at most max; caller frees *ids (NULL when *n = 0). */
SD_MUST_CHECK int store_queued(store_t *s, size_t max, char (**ids)[STORE_ID_LEN + 1],
			       size_t *n, sd_error_t *e);

/* Deletes terminal jobs finished before cutoff_ms (retention). *n gets the count. */
SD_MUST_CHECK int store_sweep(store_t *s, int64_t cutoff_ms, int *n, sd_error_t *e);

/* Creates an API token for tenant: writes the plain token (shown once, "sdt_" and 64
 * hex digits) into token, which needs cap >= STORE_TOKEN_MAX (69) bytes, and stores
 * only its SHA-256. expires_ms is the unix ms after which the token is refused, 0 for
 * never. id (may be NULL) gets the token's id (see store_token_t). Returns 0,
 * SD_EUSAGE (buffer too small), SD_EIO. */
#define STORE_TOKEN_MAX 69
#define STORE_TOKEN_ID_LEN 12
SD_MUST_CHECK int store_token_create(store_t *s, const char *tenant, int64_t expires_ms,
				     char *token, size_t cap, char id[STORE_TOKEN_ID_LEN + 1],
				     sd_error_t *e);

/* Revokes the token named by `which`: the plain token itself, or its id or any prefix
 * of its SHA-256 of at least 8 hex digits that names one token. The row stays (so auth
 * stays on and `token list` shows it); every later request with the token gets 401.
 * Writes the revoked token's id into id (may be NULL). Returns 0, SD_EUSAGE (`which`
 * is neither a token nor 8..64 lowercase hex digits), SD_ENOTFOUND, SD_ECONFLICT
 * (the prefix names several tokens, or the token was revoked already), SD_EIO. */
SD_MUST_CHECK int store_token_revoke(store_t *s, const char *which,
				     char id[STORE_TOKEN_ID_LEN + 1], sd_error_t *e);

/* Records that the token whose SHA-256 is hash was used at ms (kept only when later
 * than the stored value). Returns 0 (also for a token since deleted), SD_EIO. */
SD_MUST_CHECK int store_token_touch(store_t *s, const char *hash, int64_t ms, sd_error_t *e);

/* ---- reads: any thread, through its own reader ---- */

/* A reader is one read-only connection; one thread at a time. Open after store_open
 * and close before store_close. Returns 0, SD_ENOMEM, SD_EIO. */
SD_MUST_CHECK int store_reader_open(store_t *s, store_reader_t **out, sd_error_t *e);
void store_reader_close(store_reader_t *r);

/* Loads a job with its artifacts. tenant NULL = any tenant; otherwise a job of another
 * tenant is SD_ENOTFOUND. */
SD_MUST_CHECK int store_job_get(store_reader_t *r, const char *id, const char *tenant,
				store_job_t *out, sd_error_t *e);

/* Cheap version check for ETag/long-poll: the job's version and state. */
SD_MUST_CHECK int store_job_version(store_reader_t *r, const char *id, const char *tenant,
				    int64_t *version, store_state_t *state, sd_error_t *e);

/*
 * Lists jobs newest first. state/stage filters may be NULL. `after` is a cursor (the id
 * of the last job of the previous page) or NULL. Up to limit jobs (without artifacts)
 * go into *jobs (caller frees each with store_job_clear and the array with free);
 * limit 0 means STORE_LIST_DEFAULT, and at most STORE_LIST_MAX are returned (the API's
 * `limit` has the same bounds).
 * *etag receives "<count>-<max version>" over all jobs matching tenant/state/stage
 * (regardless of the cursor), usable as the list's ETag; caller frees it.
 */
#define STORE_LIST_DEFAULT 50
#define STORE_LIST_MAX 200
typedef struct store_filter {
	const char *tenant; /* NULL = any */
	const store_state_t *state;
	const char *stage;
	const char *after;
	size_t limit;
} store_filter_t;
SD_MUST_CHECK int store_job_list(store_reader_t *r, const store_filter_t *f,
				 store_job_t **jobs, size_t *n, char **etag, sd_error_t *e);

/* The job's event log, oldest first, as lines "ISO-8601-time text\n"; caller frees. */
SD_MUST_CHECK int store_event_log(store_reader_t *r, const char *id, const char *tenant,
				  char **text, sd_error_t *e);

/* An API token as the store keeps it (never the token itself). tenant is owned by the
 * struct; release with store_token_clear(). Times are unix ms, 0 = never. The id is
 * the first STORE_TOKEN_ID_LEN hex digits of hash: it names a token in `token list`
 * and `token revoke` without revealing anything that grants access. */
typedef struct store_token {
	char hash[STORE_SHA_HEX + 1];
	char id[STORE_TOKEN_ID_LEN + 1];
	char *tenant;
	int64_t created_ms, expires_ms, last_used_ms, revoked_ms;
} store_token_t;

void store_token_clear(store_token_t *t);

/* Checks a bearer token at time now_ms; on success fills *out (caller clears it).
 * SD_ENOTFOUND for an unknown token, SD_EAUTH for a revoked or expired one (e says
 * which and when); *out is then cleared. */
SD_MUST_CHECK int store_token_check(store_reader_t *r, const char *token, int64_t now_ms,
				    store_token_t *out, sd_error_t *e);

/* Every token, oldest first, revoked and expired ones included; *out is an array of
 * *n tokens (caller clears each and frees the array; NULL when *n = 0). Returns 0,
 * SD_ENOMEM, SD_EIO. */
SD_MUST_CHECK int store_token_list(store_reader_t *r, store_token_t **out, size_t *n,
				   sd_error_t *e);

/* Whether any token exists (auth is on when it does). */
SD_MUST_CHECK int store_tokens_exist(store_reader_t *r, bool *exist, sd_error_t *e);

/* The record blob of insert job id, tenant-scoped; SD_ENOTFOUND when there is none. */
SD_MUST_CHECK int store_record_get(store_reader_t *r, const char *job_id, const char *tenant,
				   char sha256[STORE_SHA_HEX + 1], sd_error_t *e);

/* The version counter: the last version a change took (a job's create, update or
 * deletion). Every change takes a larger one, so it orders changes across jobs; the
 * event stream numbers its events with it. Returns 0 or SD_EIO. */
SD_MUST_CHECK int store_version_current(store_reader_t *r, int64_t *v, sd_error_t *e);

/* Counts of jobs per state, for /metrics. */
SD_MUST_CHECK int store_job_counts(store_reader_t *r, int64_t counts[STORE_STATE__COUNT],
				   sd_error_t *e);

/* The blobs rows name (every blob, once its upload or stage is recorded): how many
 * distinct files and their bytes, for /metrics. Returns 0 or SD_EIO. */
SD_MUST_CHECK int store_blob_usage(store_reader_t *r, int64_t *files, int64_t *bytes,
				   sd_error_t *e);

#endif
