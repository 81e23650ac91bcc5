/*
 * store_int: what the store's .c files share and nobody else sees.
 *
 * The store is split by noun: store.c opens the directory and the database (schema,
 * migrations, connections, statement cache, ids, the version counter), store_job.c
 * writes job rows and their event log, store_read.c answers reads on reader
 * connections, store_blob.c writes and removes blob files, store_token.c holds API
 * tokens. Every SQL text lives in the STORE__SQL_MAP table below, so each connection
 * prepares a statement once, on first use, and keeps it (store__stmt).
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <openssl/evp.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

#define STORE__SCHEMA_VERSION 3

/* The bytes a job was given (its input artifacts), for the job document: a list shows
 * them without reading each job's artifacts. The (job_id, name) key serves it. */
#define STORE__SQL_INPUT_BYTES                                                           \
	" (SELECT coalesce(sum(size), 0) FROM artifacts WHERE job_id = jobs.id AND input = 1)"

/* Every SQL statement the store runs; all values are bound parameters, never pasted. */
#define STORE__SQL_MAP(X)                                                                \
	X(BEGIN_WRITE, "BEGIN IMMEDIATE")                                                 \
	X(BEGIN_READ, "BEGIN")                                                            \
	X(COMMIT, "COMMIT")                                                               \
	X(ROLLBACK, "ROLLBACK")                                                           \
	X(VERSION_BUMP, "UPDATE counters SET value = value + 1 WHERE name = 'version'")   \
	X(VERSION_GET, "SELECT value FROM counters WHERE name = 'version'")               \
	X(USER_VERSION, "PRAGMA user_version")                                            \
	X(MAX_ID, "SELECT max(id) FROM jobs")                                             \
	X(JOB_INSERT,                                                                     \
	  "INSERT INTO jobs (id, stage, tenant, name, outputs, format, record_from, state," \
	  " created_ms, updated_ms, version, emit_record) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"   \
	  " ?7, 'queued', ?8, ?8, ?9, ?10)")                                               \
	X(JOB_STATE, "SELECT state, attempts FROM jobs WHERE id = ?1")                    \
	X(JOB_SET_STATE,                                                                  \
	  "UPDATE jobs SET state = ?2, attempts = attempts + ?3,"                         \
	  " progress = CASE WHEN ?2 = 'succeeded' THEN 100"                               \
	  "   WHEN ?2 IN ('queued', 'running') THEN 0 ELSE progress END,"                 \
	  " started_ms = CASE WHEN ?2 = 'running' THEN ?4 ELSE started_ms END,"           \
	  " finished_ms = CASE WHEN ?2 IN ('succeeded', 'failed', 'canceled') THEN ?4"    \
	  "   WHEN ?2 = 'queued' THEN 0 ELSE finished_ms END,"                            \
	  " updated_ms = ?4, version = ?5,"                                               \
	  " result_json = coalesce(?6, result_json),"                                     \
	  " error_code = coalesce(?7, error_code),"                                       \
	  " error_msg = coalesce(?8, error_msg) WHERE id = ?1")                           \
	X(JOB_PROGRESS,                                                                   \
	  "UPDATE jobs SET progress = ?2, updated_ms = ?3, version = ?4 WHERE id = ?1")   \
	X(JOB_TOUCH, "UPDATE jobs SET updated_ms = ?2, version = ?3 WHERE id = ?1")       \
	X(JOB_PROGRESS_GET, "SELECT state, progress FROM jobs WHERE id = ?1")             \
	X(JOB_DELETE, "DELETE FROM jobs WHERE id = ?1")                                   \
	X(JOB_BLOBS,                                                                      \
	  "SELECT sha256 FROM artifacts WHERE job_id = ?1"                                \
	  " UNION SELECT sha256 FROM records WHERE job_id = ?1")                          \
	X(JOB_OUTPUT_BLOBS,                                                               \
	  "SELECT sha256 FROM artifacts WHERE job_id = ?1 AND input = 0"                  \
	  " UNION SELECT sha256 FROM records WHERE job_id = ?1")                          \
	X(JOB_OUTPUTS_DELETE, "DELETE FROM artifacts WHERE job_id = ?1 AND input = 0")    \
	X(JOB_RECORD_DELETE, "DELETE FROM records WHERE job_id = ?1")                     \
	X(BLOB_REFERENCED,                                                                \
	  "SELECT EXISTS (SELECT 1 FROM artifacts WHERE sha256 = ?1)"                     \
	  " OR EXISTS (SELECT 1 FROM records WHERE sha256 = ?1)")                         \
	X(JOBS_RUNNING, "SELECT id, attempts FROM jobs WHERE state = 'running' ORDER BY id") \
	X(JOBS_QUEUED,                                                                    \
	  "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT ?1")              \
	X(JOBS_EXPIRED,                                                                   \
	  "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'canceled')"        \
	  " AND finished_ms < ?1 ORDER BY id")                                            \
	X(EVENT_INSERT, "INSERT INTO events (job_id, at_ms, text) VALUES (?1, ?2, ?3)")   \
	X(ARTIFACT_INSERT,                                                                \
	  "INSERT INTO artifacts (job_id, name, input, size, sha256, path)"               \
	  " VALUES (?1, ?2, ?3, ?4, ?5, ?6)")                                             \
	X(RECORD_INSERT,                                                                  \
	  "INSERT INTO records (job_id, sha256, created_ms) VALUES (?1, ?2, ?3)")          \
	X(TOKEN_INSERT,                                                                   \
	  "INSERT INTO tokens (hash, tenant, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)") \
	X(TOKEN_FIND, "SELECT hash FROM tokens WHERE substr(hash, 1, length(?1)) = ?1 LIMIT 2") \
	X(TOKEN_REVOKE, "UPDATE tokens SET revoked_ms = ?2 WHERE hash = ?1 AND revoked_ms = 0") \
	X(TOKEN_TOUCH, "UPDATE tokens SET last_used_ms = ?2 WHERE hash = ?1 AND last_used_ms < ?2") \
	/* reads */                                                                       \
	X(JOB_GET,                                                                        \
	  "SELECT id, stage, tenant, name, outputs, format, record_from, state, attempts," \
	  " progress, result_json, error_code, error_msg, created_ms, updated_ms,"        \
	  " started_ms, finished_ms, version, emit_record," STORE__SQL_INPUT_BYTES        \
	  " FROM jobs WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)")                     \
	X(JOB_ARTIFACTS,                                                                  \
	  "SELECT name, sha256, size, input FROM artifacts WHERE job_id = ?1"             \
	  " ORDER BY input DESC, name")                                                   \
	X(JOB_VERSION,                                                                    \
	  "SELECT version, state FROM jobs WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)") \
	X(JOB_LIST,                                                                       \
	  "SELECT id, stage, tenant, name, outputs, format, record_from, state, attempts," \
	  " progress, result_json, error_code, error_msg, created_ms, updated_ms,"        \
	  " started_ms, finished_ms, version, emit_record," STORE__SQL_INPUT_BYTES        \
	  " FROM jobs WHERE id < ?4 AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2)" \
	  " AND (?3 IS NULL OR stage = ?3) ORDER BY id DESC LIMIT ?5")                    \
	X(JOB_LIST_TAG,                                                                   \
	  "SELECT count(*), coalesce(max(version), 0) FROM jobs"                          \
	  " WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2)"             \
	  " AND (?3 IS NULL OR stage = ?3)")                                              \
	X(JOB_EXISTS, "SELECT 1 FROM jobs WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)") \
	X(EVENTS, "SELECT at_ms, text FROM events WHERE job_id = ?1 ORDER BY seq")        \
	X(RECORD_GET,                                                                     \
	  "SELECT r.sha256 FROM records r JOIN jobs j ON j.id = r.job_id"                 \
	  " WHERE r.job_id = ?1 AND (?2 IS NULL OR j.tenant = ?2)")                       \
	X(TOKEN_GET,                                                                      \
	  "SELECT hash, tenant, created_ms, expires_ms, last_used_ms, revoked_ms FROM tokens" \
	  " WHERE hash = ?1")                                                             \
	X(TOKEN_LIST,                                                                     \
	  "SELECT hash, tenant, created_ms, expires_ms, last_used_ms, revoked_ms FROM tokens" \
	  " ORDER BY created_ms, rowid")                                                  \
	X(TOKENS_EXIST, "SELECT EXISTS (SELECT 1 FROM tokens)")                           \
	X(JOB_COUNTS, "SELECT state, count(*) FROM jobs GROUP BY state")                  \
	X(BLOB_USAGE,                                                                     \
	  "SELECT count(*), coalesce(sum(size), 0) FROM"                                  \
	  " (SELECT max(size) AS size FROM artifacts GROUP BY sha256)")

typedef enum store__sql {
#define STORE__SQL_ENUM(name, text) STORE__SQL_##name,
	STORE__SQL_MAP(STORE__SQL_ENUM)
#undef STORE__SQL_ENUM
	STORE__SQL__COUNT
} store__sql_t;

/* One SQLite connection with its statement cache. Used by one thread at a time. */
typedef struct store__conn {
	sqlite3 *db;
	sqlite3_stmt *st[STORE__SQL__COUNT];
} store__conn_t;

/* ---- store_hash.c: the shared pool that writes and hashes blobs ---- */

#define STORE__HASH_RING 4 /* buffers a blob may have in flight */
#define STORE__DIRECT_ALIGN 4096 /* O_DIRECT's alignment of memory, offsets and sizes */

typedef struct store__hashpool store__hashpool_t;
typedef struct store__hstream store__hstream_t;

/* One of a stream's two in-order jobs (writing its buffers, hashing them); pool mutex. */
typedef struct store__lane {
	store__hstream_t *h;
	int64_t done;           /* buffers this lane has finished */
	bool queued, active;
	struct store__lane *next;
} store__lane_t;

/* One blob as the pool sees it: its buffers in ring order, its file and its SHA-256.
 * Counters and werr are guarded by the pool's mutex; written, flushed and fd are the
 * write lane's, md and failed the hash lane's (one thread at a time each). */
struct store__hstream {
	EVP_MD_CTX *md;
	int fd;
	const unsigned char *buf[STORE__HASH_RING];
	size_t len[STORE__HASH_RING];
	int64_t submitted;      /* buffers handed over */
	store__lane_t write, hash;
	int64_t written;        /* bytes in the file */
	int64_t flushed;        /* bytes handed to writeback */
	int werr;               /* errno of the first failed write; later buffers skipped */
	bool direct;            /* fd has O_DIRECT (write lane; set before the first buffer) */
	bool failed;            /* SHA-256 failed */
	pthread_cond_t cv;      /* a lane finished a buffer */
	void (*wake)(void *);   /* store__hash_ready's registration, called once ... */
	void *wake_ud;
	int64_t wake_at;        /* ... when fewer than this many buffers are in flight */
};

/* Starts `threads` threads. Returns 0, SD_ENOMEM, SD_EINTERNAL. */
SD_MUST_CHECK int store__hashpool_start(store__hashpool_t **out, int threads, sd_error_t *e);
/* Joins the threads (no stream may have buffers in flight) and frees. Safe on NULL. */
void store__hashpool_stop(store__hashpool_t *p);
/* A stream writing to fd (owned by the caller) and hashing into md. */
void store__hstream_init(store__hstream_t *h, EVP_MD_CTX *md, int fd);
void store__hstream_deinit(store__hstream_t *h);
/* Hands buf[0..len) to be written and hashed after what h was given before; returns
 * once the caller may fill its next ring buffer, with the errno of a failed write so
 * far (0: none). buf must stay untouched until both are done. With p NULL the caller
 * does both now. Hash failures show in h->failed once waited for. */
int store__hash_submit(store__hashpool_t *p, store__hstream_t *h, const unsigned char *buf,
		       size_t len);
/* Whether k more submissions would all return without waiting. If not, wake(ud) is
 * registered (replacing an earlier one) and called once, on a pool thread holding no
 * lock, when a buffer in flight now is done. True without a pool. */
bool store__hash_ready(store__hashpool_t *p, store__hstream_t *h, int64_t k,
		       void (*wake)(void *), void *ud);
/* Waits until everything h was given is written and hashed; returns the errno of a
 * failed write (0: none). */
int store__hash_wait(store__hashpool_t *p, store__hstream_t *h);

struct store {
	char *dir;     /* data directory, as given */
	char *db_path; /* <dir>/sparsityd.db; readers open it too */
	int lock_fd;   /* <dir>/lock; flock'ed when owner */
	bool owner;    /* first opener of the directory: sweeps at open (see store.c) */
	store__conn_t w; /* the writer connection: loop thread only */
	/* Last id handed out (ms part and 80 random bits), so ids from this store are
	 * strictly increasing even within one millisecond or across a clock step back. */
	uint64_t id_ms;
	uint8_t id_rand[10];
	store__hashpool_t *hashers; /* NULL: blobs hash on the appending thread */
	/* Committed blobs no row names yet, with how many commits hold each (store_blob.c,
	 * "Pins"); pin_mu also orders a release's check-and-unlink against commits. */
	pthread_mutex_t pin_mu;
	struct store__pin *pins;
	size_t n_pins, cap_pins;
};

struct store_reader {
	store__conn_t c;
};

/* ---- store.c ---- */

/* Prepares (once) and returns the statement, reset and with bindings cleared. */
SD_MUST_CHECK int store__stmt(store__conn_t *c, store__sql_t which, sqlite3_stmt **out,
			      sd_error_t *e);
/* Maps a SQLite failure to SD_ENOSPACE / SD_ENOMEM / SD_EIO with the SQLite message. */
int store__sqlerr(store__conn_t *c, int rc, sd_error_t *e, const char *what);
/* Runs a statement without result rows (BEGIN, COMMIT, an INSERT already bound). */
SD_MUST_CHECK int store__run(store__conn_t *c, sqlite3_stmt *st, sd_error_t *e,
			     const char *what);
/* Runs a query that answers one row whose first column is an integer (a counter, a
 * count, an EXISTS), with ?1 bound to arg unless arg is NULL, and sets *out to that
 * integer. Returns 0, or store__sqlerr's code for what (also when no row came back);
 * *out is 0 then. */
SD_MUST_CHECK int store__scalar(store__conn_t *c, store__sql_t which, const char *arg,
				int64_t *out, sd_error_t *e, const char *what);
/* Transactions on a connection; rollback is best effort and never fails the caller. */
SD_MUST_CHECK int store__begin(store__conn_t *c, bool write, sd_error_t *e);
SD_MUST_CHECK int store__commit(store__conn_t *c, sd_error_t *e);
void store__rollback(store__conn_t *c);
int store__conn_open(store__conn_t *c, const char *path, bool write, sd_error_t *e);
void store__conn_close(store__conn_t *c);
/* Binds a string, NULL as SQL NULL; SQLite copies it. */
int store__bind_text(sqlite3_stmt *st, int i, const char *v);

/* Next job version (the global counter); inside a write transaction. */
SD_MUST_CHECK int store__version_next(store_t *s, int64_t *v, sd_error_t *e);
/* A new time-ordered id; writer thread. */
SD_MUST_CHECK int store__id_new(store_t *s, char id[STORE_ID_LEN + 1], sd_error_t *e);
/* The one place a state change is reported (the lead's logging hooks in here). */
void store__log_transition(const char *id, store_state_t from, store_state_t to,
			   const char *note, bool alarm);
bool store__terminal(store_state_t st);

/* ---- store_blob.c ---- */

/* Whether s is 64 lowercase hex digits (the only form a blob name may take). */
bool store__sha_ok(const char *sha);
/* Hex SHA-256 of data. Returns 0 or SD_EINTERNAL. */
SD_MUST_CHECK int store__sha256_hex(const void *data, size_t len, char out[STORE_SHA_HEX + 1],
				    sd_error_t *e);
/* Checks that a committed blob exists. SD_ENOTFOUND, SD_EUSAGE for a bad name. */
SD_MUST_CHECK int store__blob_exists(store_t *s, const char *sha, sd_error_t *e);
/* Unlinks the blob when no artifact or record row names it (writer thread). */
void store__blob_release(store_t *s, const char *sha);
/* A row now names the blob (committed, then adopted by the caller's transaction):
 * drops one pin of its commit. Loop thread, after the transaction committed. */
void store__blob_unpin(store_t *s, const char *sha);
/* At open: empties tmp/ and removes blobs that no row references. */
SD_MUST_CHECK int store__blob_sweep(store_t *s, sd_error_t *e);

#endif
