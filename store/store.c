/*
 * store: opening the data directory, the schema and its migrations, SQLite
 * connections with their statement caches, job ids, the version counter and the job
 * state table (see store.h for the contract, store_int.h for how the files divide).
 *
 * Design.
 * - One writer connection, owned by the loop thread, does every write; each other
 *   thread reads through its own connection. WAL lets readers run while the writer
 *   commits, and a single writer means no SQLITE_BUSY between our own writes.
 *   synchronous=NORMAL: in WAL mode a commit is durable against a process crash and
 *   the database stays consistent on power loss; the last commits may then be lost,
 *   which recovery handles like an interrupted job (stages are deterministic).
 * - The schema is versioned with PRAGMA user_version. Migration i takes the database
 *   from version i to i + 1 in one transaction, so a crash mid-migration leaves the
 *   old version intact and the next start simply runs it again. A database newer than
 *   this binary is refused rather than guessed at.
 * - Every job change takes a fresh value of one global counter as the job's version.
 *   A per-job counter would do for a single job's ETag, but the list ETag
 *   ("<count>-<max version>") must change when any listed job changes, which a global
 *   counter guarantees: the changed job now holds the largest version.
 * - Ids are ULID-like: 48-bit unix ms and 80 random bits in Crockford base32, so
 *   string order is time order and ORDER BY id DESC lists newest first. Within one
 *   millisecond (or if the clock steps back) the previous id plus one is used, so ids
 *   from one store are strictly increasing; at open the largest stored id seeds this.
 * - A lock file (flock) marks the owner of the directory: the first process to open
 *   it. Only the owner sweeps tmp/ and unreferenced blobs at open, which is safe only
 *   when no other process can be writing them. A later opener (e.g. `sparsityd token
 *   create` while the daemon runs) gets a shared store: same database (SQLite locks
 *   and busy_timeout serialise the two writers), no sweep.
 *
 * Workload: a handful of writes per job (create, a few transitions, progress steps,
 * artifacts) and frequent small reads (polls, lists); tens of thousands of jobs.
 */
#include "store/store_int.h"

#include "common/sd_log.h"

#include "common/sd_time.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const sql_text[STORE__SQL__COUNT] = {
#define STORE__SQL_TEXT(name, text) [STORE__SQL_##name] = text,
	STORE__SQL_MAP(STORE__SQL_TEXT)
#undef STORE__SQL_TEXT
};

/* ---- states and the transition table ---- */

static const char *const state_names[STORE_STATE__COUNT] = {
#define STORE__STATE_NAME(name, str) [STORE_##name] = str,
	STORE_STATE_MAP(STORE__STATE_NAME)
#undef STORE__STATE_NAME
};

/*
 * The one transition table. running -> queued is the requeue of an interrupted job
 * (restart or drain); terminal states have no exits, so a finished job can never be
 * revived by a late worker report.
 */
static const bool transitions[STORE_STATE__COUNT][STORE_STATE__COUNT] = {
	[STORE_QUEUED] = {[STORE_RUNNING] = true, [STORE_CANCELED] = true},
	[STORE_RUNNING] = {[STORE_SUCCEEDED] = true, [STORE_FAILED] = true,
			   [STORE_QUEUED] = true, [STORE_CANCELED] = true},
};

const char *store_state_name(store_state_t s)
{
	return (unsigned)s < STORE_STATE__COUNT ? state_names[s] : NULL;
}

int store_state_parse(const char *s, store_state_t *out, sd_error_t *e)
{
	for (int i = 0; s && i < STORE_STATE__COUNT; i++) {
		if (strcmp(s, state_names[i]) == 0) {
			*out = (store_state_t)i;
			return 0;
		}
	}
	return sd_err(e, SD_EUSAGE,
		      "unknown job state '%s' (expected queued, running, succeeded, failed "
		      "or canceled)",
		      s ? s : "(null)");
}

bool store_transition_ok(store_state_t from, store_state_t to)
{
	if ((unsigned)from >= STORE_STATE__COUNT || (unsigned)to >= STORE_STATE__COUNT)
		return false;
	return transitions[from][to];
}

bool store__terminal(store_state_t st)
{
	return st == STORE_SUCCEEDED || st == STORE_FAILED || st == STORE_CANCELED;
}

void store__log_transition(const char *id, store_state_t from, store_state_t to,
			   const char *note, bool alarm)
{
	/* The one log line of a state change, written once the transaction has committed,
	 * so the log never reports a change the database does not hold. */
	if (alarm)
		jlog_error("store", id, "%s -> %s%s%s", store_state_name(from),
			   store_state_name(to), note && note[0] ? ": " : "", note ? note : "");
	else
		jlog_info("store", id, "%s -> %s%s%s", store_state_name(from),
			  store_state_name(to), note && note[0] ? ": " : "", note ? note : "");
}

/* ---- time and ids ---- */

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

bool store_id_valid(const char *s)
{
	return strlen(s) == STORE_ID_LEN && strspn(s, crockford) == STORE_ID_LEN;
}

static int crockford_val(char c)
{
	const char *p = c ? strchr(crockford, c) : NULL;
	return p ? (int)(p - crockford) : -1;
}

/* 128 bits (16 bytes, big endian) -> 26 chars: the first char carries the top 3 bits
 * of a 130-bit view whose two high bits are zero, as ULID does. */
static void id_encode(const uint8_t b[16], char out[STORE_ID_LEN + 1])
{
	for (int i = 0; i < STORE_ID_LEN; i++) {
		int bit = 130 - 5 * (i + 1); /* lowest bit of this char in the 130-bit view */
		int v = 0;
		for (int k = 4; k >= 0; k--) {
			int pos = bit + k; /* bit index from the least significant end */
			int set = pos < 128 ? (b[15 - pos / 8] >> (pos % 8)) & 1 : 0;
			v = v << 1 | set;
		}
		out[i] = crockford[v];
	}
	out[STORE_ID_LEN] = 0;
}

static bool id_decode(const char *id, uint8_t b[16])
{
	memset(b, 0, 16);
	if (!id || strlen(id) != STORE_ID_LEN)
		return false;
	for (int i = 0; i < STORE_ID_LEN; i++) {
		int v = crockford_val(id[i]);
		if (v < 0)
			return false;
		int bit = 130 - 5 * (i + 1);
		for (int k = 0; k < 5; k++) {
			int pos = bit + k;
			if (((v >> k) & 1) && pos < 128)
				b[15 - pos / 8] |= (uint8_t)(1u << (pos % 8));
		}
	}
	return true;
}

int store__id_new(store_t *s, char id[STORE_ID_LEN + 1], sd_error_t *e)
{
	uint64_t now = (uint64_t)sd_now_ms() & 0xFFFFFFFFFFFFull;
	if (now > s->id_ms) {
		if (RAND_bytes(s->id_rand, sizeof(s->id_rand)) != 1)
			return sd_err(e, SD_EINTERNAL, "cannot draw random bytes for a job id");
		s->id_ms = now;
	} else {
		/* Same millisecond or clock went back: previous id + 1 keeps order. */
		int i = (int)sizeof(s->id_rand) - 1;
		while (i >= 0 && ++s->id_rand[i] == 0)
			i--;
		if (i < 0)
			s->id_ms++;
	}
	uint8_t b[16];
	for (int i = 0; i < 6; i++)
		b[i] = (uint8_t)(s->id_ms >> (8 * (5 - i)));
	memcpy(b + 6, s->id_rand, sizeof(s->id_rand));
	id_encode(b, id);
	return 0;
}

/* ---- connections and statements ---- */

int store__sqlerr(store__conn_t *c, int rc, sd_error_t *e, const char *what)
{
	const char *m = c && c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc);
	switch (rc & 0xff) {
	case SQLITE_FULL:
		return sd_err(e, SD_ENOSPACE, "store: %s: %s", what, m);
	case SQLITE_NOMEM:
		return sd_err(e, SD_ENOMEM, "store: %s: out of memory", what);
	default:
		return sd_err(e, SD_EIO, "store: %s: %s", what, m);
	}
}

int store__stmt(store__conn_t *c, store__sql_t which, sqlite3_stmt **out, sd_error_t *e)
{
	sqlite3_stmt *st = c->st[which];
	if (!st) {
		int rc = sqlite3_prepare_v3(c->db, sql_text[which], -1, SQLITE_PREPARE_PERSISTENT,
					    &st, NULL);
		if (rc != SQLITE_OK)
			return store__sqlerr(c, rc, e, "prepare");
		c->st[which] = st;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	*out = st;
	return 0;
}

int store__bind_text(sqlite3_stmt *st, int i, const char *v)
{
	return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

int store__run(store__conn_t *c, sqlite3_stmt *st, sd_error_t *e, const char *what)
{
	int rc = sqlite3_step(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
		int code = store__sqlerr(c, rc, e, what);
		sqlite3_reset(st);
		return code;
	}
	sqlite3_reset(st);
	return 0;
}

int store__scalar(store__conn_t *c, store__sql_t which, const char *arg, int64_t *out,
		  sd_error_t *e, const char *what)
{
	*out = 0;
	sqlite3_stmt *st;
	int rc = store__stmt(c, which, &st, e);
	if (rc)
		return rc;
	if (arg)
		store__bind_text(st, 1, arg);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	return rc == SQLITE_ROW ? 0 : store__sqlerr(c, rc, e, what);
}

static int run_sql(store__conn_t *c, store__sql_t which, sd_error_t *e, const char *what)
{
	sqlite3_stmt *st;
	int rc = store__stmt(c, which, &st, e);
	return rc ? rc : store__run(c, st, e, what);
}

/* Statements still stepping would keep the transaction's snapshot alive; a missed
 * reset must not turn into a WAL that can never be checkpointed. */
static void reset_all(store__conn_t *c)
{
	for (int i = 0; i < STORE__SQL__COUNT; i++)
		if (c->st[i] && sqlite3_stmt_busy(c->st[i]))
			sqlite3_reset(c->st[i]);
}

int store__begin(store__conn_t *c, bool write, sd_error_t *e)
{
	return run_sql(c, write ? STORE__SQL_BEGIN_WRITE : STORE__SQL_BEGIN_READ, e, "begin");
}

int store__commit(store__conn_t *c, sd_error_t *e)
{
	reset_all(c);
	int rc = run_sql(c, STORE__SQL_COMMIT, e, "commit");
	if (rc)
		store__rollback(c);
	return rc;
}

void store__rollback(store__conn_t *c)
{
	reset_all(c);
	if (sqlite3_get_autocommit(c->db))
		return; /* SQLite already rolled back (e.g. on SQLITE_FULL) */
	if (run_sql(c, STORE__SQL_ROLLBACK, NULL, "rollback") != 0)
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
}

static int exec_sql(store__conn_t *c, const char *sql, sd_error_t *e, const char *what)
{
	int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : store__sqlerr(c, rc, e, what);
}

int store__conn_open(store__conn_t *c, const char *path, bool write, sd_error_t *e)
{
	memset(c, 0, sizeof(*c));
	int flags = write ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY;
	/* A connection is used by one thread at a time (see store.h), so SQLite's
	 * per-connection mutex is not needed. */
	flags |= SQLITE_OPEN_NOMUTEX;
	int rc = sqlite3_open_v2(path, &c->db, flags, NULL);
	if (rc != SQLITE_OK) {
		int code = store__sqlerr(c, rc, e, "open database");
		sd_err_prefix(e, "%s", path);
		store__conn_close(c);
		return code;
	}
	sqlite3_extended_result_codes(c->db, 1);
	/* Wait (up to 5 s) for a checkpoint or another writer (a second process) rather
	 * than failing with SQLITE_BUSY. */
	sqlite3_busy_timeout(c->db, 5000);
	if (!write)
		return 0;
	sqlite3_stmt *st;
	rc = sqlite3_prepare_v2(c->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
	if (rc != SQLITE_OK) {
		int code = store__sqlerr(c, rc, e, "enable WAL");
		store__conn_close(c);
		return code;
	}
	rc = sqlite3_step(st);
	const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
	bool wal = mode && strcmp(mode, "wal") == 0;
	sqlite3_finalize(st);
	if (!wal) {
		sd_err(e, SD_EIO, "store: %s: cannot enable WAL journal mode", path);
		store__conn_close(c);
		return SD_EIO;
	}
	rc = exec_sql(c, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", e, "pragmas");
	if (rc)
		store__conn_close(c);
	return rc;
}

void store__conn_close(store__conn_t *c)
{
	if (!c)
		return;
	for (int i = 0; i < STORE__SQL__COUNT; i++) {
		sqlite3_finalize(c->st[i]);
		c->st[i] = NULL;
	}
	sqlite3_close(c->db); /* all statements are finalized, so this closes for real */
	c->db = NULL;
}

/* ---- schema ---- */

/*
 * migrations[i] takes user_version i to i + 1. Tables are created without IF NOT
 * EXISTS on purpose: a foreign table of the same name in a version-0 file is a
 * conflict to report, not something to build on. Other foreign tables are left alone.
 *
 * jobs.state holds the API name of the state (readable with the sqlite3 shell).
 * artifacts.path is the blob's path relative to the data directory, for operators;
 * the store itself always derives it from sha256.
 */
static const char *const migrations[STORE__SCHEMA_VERSION] = {
	"CREATE TABLE jobs ("
	" id TEXT PRIMARY KEY,"
	" stage TEXT NOT NULL,"
	" tenant TEXT NOT NULL DEFAULT '',"
	" name TEXT NOT NULL DEFAULT '',"
	" outputs TEXT NOT NULL DEFAULT '',"
	" format TEXT NOT NULL DEFAULT '',"
	" record_from TEXT NOT NULL DEFAULT '',"
	" state TEXT NOT NULL CHECK (state IN"
	"  ('queued', 'running', 'succeeded', 'failed', 'canceled')),"
	" attempts INTEGER NOT NULL DEFAULT 0,"
	" progress INTEGER NOT NULL DEFAULT 0,"
	" result_json TEXT,"
	" error_code TEXT,"
	" error_msg TEXT,"
	" created_ms INTEGER NOT NULL,"
	" updated_ms INTEGER NOT NULL,"
	" started_ms INTEGER NOT NULL DEFAULT 0,"
	" finished_ms INTEGER NOT NULL DEFAULT 0,"
	" version INTEGER NOT NULL);"
	"CREATE INDEX jobs_state_id ON jobs (state, id);"
	"CREATE INDEX jobs_tenant_id ON jobs (tenant, id);"
	"CREATE TABLE events ("
	" seq INTEGER PRIMARY KEY,"
	" job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
	" at_ms INTEGER NOT NULL,"
	" text TEXT NOT NULL);"
	"CREATE INDEX events_job ON events (job_id, seq);"
	"CREATE TABLE artifacts ("
	" job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
	" name TEXT NOT NULL,"
	" input INTEGER NOT NULL,"
	" size INTEGER NOT NULL,"
	" sha256 TEXT NOT NULL,"
	" path TEXT NOT NULL,"
	" PRIMARY KEY (job_id, name));"
	"CREATE INDEX artifacts_sha ON artifacts (sha256);"
	"CREATE TABLE records ("
	" job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,"
	" sha256 TEXT NOT NULL,"
	" created_ms INTEGER NOT NULL);"
	"CREATE INDEX records_sha ON records (sha256);"
	"CREATE TABLE tokens ("
	" hash TEXT PRIMARY KEY,"
	" tenant TEXT NOT NULL,"
	" created_ms INTEGER NOT NULL);"
	"CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
	"INSERT INTO counters (name, value) VALUES ('version', 0);",
	/* v2: prune jobs may ask for a record of what they pruned. */
	"ALTER TABLE jobs ADD COLUMN emit_record INTEGER NOT NULL DEFAULT 0;",
	/* v3: tokens an operator manages: optional expiry, last use, revocation (unix ms,
	 * 0 = never). A revoked token keeps its row, so auth stays on when the last
	 * token is revoked and `token list` still shows it. */
	"ALTER TABLE tokens ADD COLUMN expires_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE tokens ADD COLUMN last_used_ms INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE tokens ADD COLUMN revoked_ms INTEGER NOT NULL DEFAULT 0;",
};

static int migrate(store_t *s, sd_error_t *e)
{
	int64_t uv;
	int rc = store__scalar(&s->w, STORE__SQL_USER_VERSION, NULL, &uv, e,
			       "read schema version");
	if (rc)
		return rc;
	int v = (int)uv; /* SQLite keeps user_version in 32 bits */
	if (v > STORE__SCHEMA_VERSION)
		return sd_err(e, SD_EIO,
			      "store: %s has schema version %d, newer than this sparsityd "
			      "supports (%d); refusing to touch it",
			      s->db_path, v, STORE__SCHEMA_VERSION);
	for (; v < STORE__SCHEMA_VERSION; v++) {
		if ((rc = store__begin(&s->w, true, e)) != 0)
			return rc;
		/* PRAGMA takes no parameters; the value is our own integer. */
		char pragma[64];
		snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", v + 1);
		rc = exec_sql(&s->w, migrations[v], e, "migrate");
		if (!rc)
			rc = exec_sql(&s->w, pragma, e, "migrate");
		if (rc) {
			store__rollback(&s->w);
			sd_err_prefix(e, "schema migration %d -> %d", v, v + 1);
			return rc;
		}
		if ((rc = store__commit(&s->w, e)) != 0)
			return rc;
	}
	return 0;
}

/* Continues ids after the largest stored one, whatever the clock says now. */
static int seed_ids(store_t *s, sd_error_t *e)
{
	sqlite3_stmt *st;
	int rc = store__stmt(&s->w, STORE__SQL_MAX_ID, &st, e);
	if (rc)
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT) {
		uint8_t b[16];
		if (id_decode((const char *)sqlite3_column_text(st, 0), b)) {
			s->id_ms = 0;
			for (int i = 0; i < 6; i++)
				s->id_ms = s->id_ms << 8 | b[i];
			memcpy(s->id_rand, b + 6, sizeof(s->id_rand));
		}
	}
	sqlite3_reset(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : store__sqlerr(&s->w, rc, e, "max id");
}

int store__version_next(store_t *s, int64_t *v, sd_error_t *e)
{
	int rc = run_sql(&s->w, STORE__SQL_VERSION_BUMP, e, "bump version");
	return rc ? rc : store__scalar(&s->w, STORE__SQL_VERSION_GET, NULL, v, e, "read version");
}

static int mkdir_p(const char *path, sd_error_t *e)
{
	if (mkdir(path, 0750) == 0 || errno == EEXIST)
		return 0;
	return sd_err(e, errno == ENOSPC ? SD_ENOSPACE : SD_EIO, "store: cannot create %s: %s",
		      path, strerror(errno));
}

static char *join(const char *a, const char *b)
{
	char *p = NULL;
	return asprintf(&p, "%s/%s", a, b) < 0 ? NULL : p;
}

/* Bytes of the owner's pid in the lock file, with its newline. */
#define PID_FIELD 21

int store_open(const char *dir, store_t **out, sd_error_t *e)
{
	*out = NULL;
	store_t *s = calloc(1, sizeof(*s));
	if (!s)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	s->lock_fd = -1;
	pthread_mutex_init(&s->pin_mu, NULL);
	char *sub = NULL;
	int rc = SD_ENOMEM;
	s->dir = strdup(dir);
	s->db_path = join(dir, "sparsityd.db");
	if (!s->dir || !s->db_path) {
		sd_err(e, rc, "store: out of memory");
		goto fail;
	}
	if ((rc = mkdir_p(dir, e)) != 0)
		goto fail;
	static const char *const subdirs[] = {"blobs", "tmp"};
	for (size_t i = 0; i < 2; i++) {
		if (!(sub = join(dir, subdirs[i]))) {
			rc = sd_err(e, SD_ENOMEM, "store: out of memory");
			goto fail;
		}
		rc = mkdir_p(sub, e);
		free(sub);
		sub = NULL;
		if (rc)
			goto fail;
	}
	if (!(sub = join(dir, "lock"))) {
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto fail;
	}
	s->lock_fd = open(sub, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (s->lock_fd < 0) {
		rc = sd_err(e, SD_EIO, "store: cannot open %s: %s", sub, strerror(errno));
		goto fail;
	}
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0) {
		s->owner = true;
		/* Written in place at a fixed width (no truncate, so a full disk cannot stop a
		 * start); it only serves the message of a later opener (store_owner_pid). */
		char pid[PID_FIELD + 1];
		snprintf(pid, sizeof(pid), "%*ld\n", PID_FIELD - 1, (long)getpid());
		ssize_t w = pwrite(s->lock_fd, pid, PID_FIELD, 0);
		(void)w;
	} else if (errno != EWOULDBLOCK) {
		rc = sd_err(e, SD_EIO, "store: cannot lock %s: %s", sub, strerror(errno));
		goto fail;
	}
	free(sub);
	sub = NULL;
	if ((rc = store__conn_open(&s->w, s->db_path, true, e)) != 0)
		goto fail;
	if ((rc = migrate(s, e)) != 0 || (rc = seed_ids(s, e)) != 0)
		goto fail;
	if (s->owner && (rc = store__blob_sweep(s, e)) != 0)
		goto fail;
	*out = s;
	return 0;
fail:
	free(sub);
	store_close(s);
	return rc;
}

long store_owner_pid(const store_t *s)
{
	if (s->owner)
		return 0;
	char buf[PID_FIELD + 1] = {0};
	char *end;
	long pid = pread(s->lock_fd, buf, PID_FIELD, 0) > 0 ? strtol(buf, &end, 10) : 0;
	return pid > 0 && end != buf ? pid : -1;
}

int store_hashers_start(store_t *s, int threads, sd_error_t *e)
{
	return store__hashpool_start(&s->hashers, threads, e);
}

void store_close(store_t *s)
{
	if (!s)
		return;
	store__hashpool_stop(s->hashers);
	store__conn_close(&s->w);
	if (s->lock_fd >= 0)
		close(s->lock_fd); /* releases the flock if we held it */
	free(s->dir);
	free(s->db_path);
	free(s->pins);
	pthread_mutex_destroy(&s->pin_mu);
	free(s);
}

