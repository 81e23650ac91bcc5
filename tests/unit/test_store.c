/*
 * test_store: the durable state, against a fresh data directory per test.
 *
 * Covers: schema creation and migration (empty directory, reopen, a version-0 file
 * with a foreign table, a newer or conflicting file refused), the transition table
 * (every pair, through the store), versions, progress, the event log, artifacts,
 * records, delete and blob release, restart recovery, retention sweep, tokens, blob
 * streaming (SHA-256 known answers, dedup, abort, limit) and the two crash points
 * around the blob rename. Crashes are simulated by leaving on disk exactly what a
 * killed process would leave, then reopening.
 *
 * Workload: a few hundred small transactions; well under a second without sanitizers.
 * Run with CK_FORK=no (as meson does) so ASan and valgrind see one process.
 */
#include <check.h>
#include <dirent.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sd_time.h"
#include "store/store.h"
#include "testutil.h"

#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* FIPS 180-2 two-block vector. */
#define MSG_448 "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
#define SHA_448 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"

static char g_dir[64];
static store_t *g_s;
static store_reader_t *g_r;
static sd_error_t g_e;

#define OK(call)                                                                        \
	do {                                                                            \
		sd_err_clear(&g_e);                                                     \
		int rc_ = (call);                                                       \
		ck_assert_msg(rc_ == 0, "%s -> %d: %s", #call, rc_, g_e.msg);           \
	} while (0)

#define FAILS(call, want_)                                                               \
	do {                                                                            \
		sd_err_clear(&g_e);                                                     \
		int rc_ = (call);                                                       \
		ck_assert_msg(rc_ == (want_), "%s -> %d (want %d): %s", #call, rc_, (want_), \
			      g_e.msg);                                                 \
		ck_assert_int_eq(g_e.code, (want_));                                     \
	} while (0)

#define MSG_HAS(needle)                                                                 \
	ck_assert_msg(strstr(g_e.msg, (needle)) != NULL, "message '%s' lacks '%s'", g_e.msg, \
		      (needle))

static char *path_in(const char *rel)
{
	static char buf[512];
	snprintf(buf, sizeof(buf), "%s/%s", g_dir, rel);
	return buf;
}

static void open_all(void)
{
	OK(store_open(g_dir, &g_s, &g_e));
	OK(store_reader_open(g_s, &g_r, &g_e));
}

static void close_all(void)
{
	store_reader_close(g_r);
	store_close(g_s);
	g_r = NULL;
	g_s = NULL;
}

static void reopen(void)
{
	close_all();
	open_all();
}

static void setup(void)
{
	tu_mkdtemp(g_dir, sizeof(g_dir), "store-test");
	open_all();
}

static void teardown(void)
{
	close_all();
	tu_rm_rf(g_dir);
}

/* An empty directory to run tests that set up the database file themselves. */
static void setup_bare(void)
{
	tu_mkdtemp(g_dir, sizeof(g_dir), "store-test");
}

static size_t count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	ck_assert_msg(d != NULL, "opendir %s", dir);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static bool blob_file_exists(const char *sha)
{
	char *p = store_blob_path(g_s, sha);
	ck_assert(p != NULL);
	struct stat st;
	bool ok = stat(p, &st) == 0;
	free(p);
	return ok;
}

static void put_blob(const char *data, char sha[STORE_SHA_HEX + 1])
{
	store_blob_t *b;
	int64_t size;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	OK(store_blob_append(b, data, strlen(data), &g_e));
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_int_eq(size, (int64_t)strlen(data));
}

static store_artifact_t artifact(const char *name, const char *data, bool input)
{
	store_artifact_t a;
	memset(&a, 0, sizeof(a));
	snprintf(a.name, sizeof(a.name), "%s", name);
	put_blob(data, a.sha256);
	a.size = (int64_t)strlen(data);
	a.input = input;
	return a;
}

static void new_job(const char *stage, const char *tenant, char id[STORE_ID_LEN + 1])
{
	store_artifact_t in = artifact("model", "model bytes", true);
	store_job_new_t n = {.stage = stage, .tenant = tenant, .name = "label",
			     .inputs = &in, .n_inputs = 1};
	OK(store_job_create(g_s, &n, id, &g_e));
}

static store_job_t get_job(const char *id)
{
	store_job_t j;
	OK(store_job_get(g_r, id, NULL, &j, &g_e));
	return j;
}

static int64_t version_of(const char *id)
{
	int64_t v;
	store_state_t st;
	OK(store_job_version(g_r, id, NULL, &v, &st, &g_e));
	return v;
}

static void to(const char *id, store_state_t st)
{
	OK(store_job_transition(g_s, id, st, NULL, NULL, &g_e));
}

/* Runs a query on a separate connection and returns the first column as int. */
static long long db_int(const char *sql)
{
	sqlite3 *db;
	ck_assert_int_eq(sqlite3_open(path_in("sparsityd.db"), &db), SQLITE_OK);
	sqlite3_stmt *st;
	ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
		      sqlite3_errmsg(db));
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	long long v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static void db_exec(const char *sql)
{
	sqlite3 *db;
	ck_assert_int_eq(sqlite3_open(path_in("sparsityd.db"), &db), SQLITE_OK);
	ck_assert_msg(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK, "%s: %s", sql,
		      sqlite3_errmsg(db));
	sqlite3_close(db);
}

/* ---- schema ---- */

/* The schema version the database file carries (PRAGMA user_version). */
static int schema_version(void)
{
	sqlite3 *db;
	ck_assert_int_eq(sqlite3_open_v2(path_in("sparsityd.db"), &db, SQLITE_OPEN_READONLY, NULL),
			 SQLITE_OK);
	sqlite3_stmt *st;
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	int v = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

START_TEST(migrate_empty_and_reopen)
{
	ck_assert_int_eq(schema_version(), 3);
	struct stat st;
	ck_assert_int_eq(stat(path_in("sparsityd.db"), &st), 0);
	ck_assert_int_eq(stat(path_in("blobs"), &st), 0);
	ck_assert_int_eq(stat(path_in("tmp"), &st), 0);
	char id[STORE_ID_LEN + 1];
	new_job("prune", "", id);
	reopen();
	ck_assert_int_eq(schema_version(), 3);
	ck_assert_int_eq(db_int("PRAGMA user_version"), 3);
	store_job_t j = get_job(id);
	ck_assert_str_eq(j.stage, "prune");
	ck_assert(!j.emit_record);
	store_job_clear(&j);
	/* A version-1 database (before emit_record and the token columns) migrates to the
	 * current version and keeps its jobs and tokens. */
	char tok[STORE_TOKEN_MAX];
	OK(store_token_create(g_s, "old", 0, tok, sizeof(tok), NULL, &g_e));
	close_all();
	db_exec("ALTER TABLE jobs DROP COLUMN emit_record; ALTER TABLE tokens DROP COLUMN "
		"expires_ms; ALTER TABLE tokens DROP COLUMN last_used_ms; ALTER TABLE tokens DROP "
		"COLUMN revoked_ms; PRAGMA user_version = 1;");
	open_all();
	store_token_t t;
	OK(store_token_check(g_r, tok, sd_now_ms(), &t, &g_e));
	ck_assert_str_eq(t.tenant, "old");
	ck_assert(t.expires_ms == 0 && t.last_used_ms == 0 && t.revoked_ms == 0);
	store_token_clear(&t);
	ck_assert_int_eq(schema_version(), 3);
	j = get_job(id);
	ck_assert_str_eq(j.stage, "prune");
	ck_assert(!j.emit_record);
	store_job_clear(&j);
	sqlite3 *db;
	ck_assert_int_eq(sqlite3_open(path_in("sparsityd.db"), &db), SQLITE_OK);
	sqlite3_stmt *q;
	ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(q), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(q, 0), "wal");
	sqlite3_finalize(q);
	sqlite3_close(db);
}
END_TEST

START_TEST(migrate_v0_with_foreign_table)
{
	db_exec("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');");
	ck_assert_int_eq(db_int("PRAGMA user_version"), 0);
	open_all();
	ck_assert_int_eq(schema_version(), 3);
	char id[STORE_ID_LEN + 1];
	new_job("insert", "", id);
	close_all();
	ck_assert_int_eq(db_int("PRAGMA user_version"), 3);
	ck_assert_int_eq(db_int("SELECT count(*) FROM notes WHERE x = 'keep me'"), 1);
	ck_assert_int_eq(db_int("SELECT count(*) FROM jobs"), 1);
	open_all();
}
END_TEST

START_TEST(migrate_refuses_conflicts)
{
	/* A foreign table with one of our names: reported, nothing half-created. */
	db_exec("CREATE TABLE jobs (whatever INTEGER);");
	store_t *s = NULL;
	FAILS(store_open(g_dir, &s, &g_e), SD_EIO);
	ck_assert_ptr_null(s);
	MSG_HAS("migration 0 -> 1");
	ck_assert_int_eq(db_int("PRAGMA user_version"), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM sqlite_master WHERE name = 'events'"), 0);
	/* A file from a newer sparsityd is left alone. */
	db_exec("DROP TABLE jobs; PRAGMA user_version = 99;");
	FAILS(store_open(g_dir, &s, &g_e), SD_EIO);
	MSG_HAS("newer");
	ck_assert_int_eq(db_int("PRAGMA user_version"), 99);
	db_exec("PRAGMA user_version = 0;");
	open_all();
}
END_TEST

START_TEST(second_open_is_shared)
{
	/* A second opener (a CLI beside the running daemon) shares the database but must
	 * not sweep: the owner may be writing a blob into tmp/ right now. */
	store_blob_t *b;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	OK(store_blob_append(b, "in flight", 9, &g_e));
	store_t *s2 = NULL;
	OK(store_open(g_dir, &s2, &g_e));
	ck_assert_int_eq(schema_version(), 3);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 1);
	char tok[STORE_TOKEN_MAX];
	OK(store_token_create(s2, "cli", 0, tok, sizeof(tok), NULL, &g_e));
	store_token_t t;
	OK(store_token_check(g_r, tok, sd_now_ms(), &t, &g_e));
	ck_assert_str_eq(t.tenant, "cli");
	store_token_clear(&t);
	store_close(s2);
	char sha[STORE_SHA_HEX + 1];
	int64_t size;
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_int_eq(size, 9);
}
END_TEST

/* ---- states ---- */

START_TEST(state_names)
{
	for (int i = 0; i < STORE_STATE__COUNT; i++) {
		store_state_t st;
		OK(store_state_parse(store_state_name((store_state_t)i), &st, &g_e));
		ck_assert_int_eq(st, i);
	}
	ck_assert_ptr_null(store_state_name(STORE_STATE__COUNT));
	store_state_t st;
	FAILS(store_state_parse("done", &st, &g_e), SD_EUSAGE);
	MSG_HAS("done");
}
END_TEST

static const bool expected_ok[STORE_STATE__COUNT][STORE_STATE__COUNT] = {
	[STORE_QUEUED] = {[STORE_RUNNING] = 1, [STORE_CANCELED] = 1},
	[STORE_RUNNING] = {[STORE_SUCCEEDED] = 1, [STORE_FAILED] = 1, [STORE_QUEUED] = 1,
			   [STORE_CANCELED] = 1},
};

/* Drives a new job into state `st` through allowed transitions. */
static void job_in(store_state_t st, char id[STORE_ID_LEN + 1])
{
	new_job("prune", "", id);
	if (st == STORE_QUEUED)
		return;
	if (st == STORE_CANCELED) {
		to(id, STORE_CANCELED);
		return;
	}
	to(id, STORE_RUNNING);
	if (st != STORE_RUNNING)
		to(id, st);
}

START_TEST(every_transition)
{
	for (int f = 0; f < STORE_STATE__COUNT; f++) {
		for (int t = 0; t < STORE_STATE__COUNT; t++) {
			ck_assert_int_eq(store_transition_ok((store_state_t)f, (store_state_t)t),
					 expected_ok[f][t]);
			char id[STORE_ID_LEN + 1];
			job_in((store_state_t)f, id);
			int64_t v0 = version_of(id);
			sd_err_clear(&g_e);
			int rc = store_job_transition(g_s, id, (store_state_t)t, NULL, "test", &g_e);
			sd_error_t te = g_e;
			store_job_t j = get_job(id);
			g_e = te;
			if (expected_ok[f][t]) {
				ck_assert_msg(rc == 0, "%d -> %d: %s", f, t, g_e.msg);
				ck_assert_int_eq(j.state, t);
				ck_assert_int_gt(j.version, v0);
			} else {
				ck_assert_int_eq(rc, SD_ECONFLICT);
				char want[96];
				snprintf(want, sizeof(want), "from %s to %s",
					 store_state_name((store_state_t)f),
					 store_state_name((store_state_t)t));
				MSG_HAS(want);
				MSG_HAS(id);
				ck_assert_int_eq(j.state, f);
				ck_assert_int_eq(j.version, v0); /* refused: nothing written */
			}
			store_job_clear(&j);
		}
	}
	ck_assert(!store_transition_ok(STORE_STATE__COUNT, STORE_QUEUED));
	FAILS(store_job_transition(g_s, "01ARZ3NDEKTSV4RRFFQ69G5FAV", STORE_RUNNING, NULL, NULL,
				   &g_e),
	      SD_ENOTFOUND);
}
END_TEST

START_TEST(transition_fields_and_versions)
{
	char id[STORE_ID_LEN + 1];
	new_job("export", "", id);
	store_job_t j = get_job(id);
	ck_assert_int_eq(j.state, STORE_QUEUED);
	ck_assert_int_eq(j.attempts, 0);
	ck_assert_int_gt(j.created_ms, 0);
	ck_assert_int_eq(j.started_ms, 0);
	ck_assert_int_eq(j.finished_ms, 0);
	ck_assert_ptr_null(j.result_json);
	ck_assert_ptr_null(j.error_code);
	int64_t v = j.version;
	store_job_clear(&j);

	to(id, STORE_RUNNING);
	j = get_job(id);
	ck_assert_int_eq(j.attempts, 1);
	ck_assert_int_gt(j.started_ms, 0);
	ck_assert_int_gt(j.version, v);
	v = j.version;
	store_job_clear(&j);

	OK(store_job_progress(g_s, id, 40, &g_e));
	ck_assert_int_gt(version_of(id), v);
	v = version_of(id);
	OK(store_job_progress(g_s, id, 40, &g_e)); /* unchanged: no new version */
	ck_assert_int_eq(version_of(id), v);
	OK(store_job_progress(g_s, id, 250, &g_e)); /* clamped */
	j = get_job(id);
	ck_assert_int_eq(j.progress, 100);
	store_job_clear(&j);
	v = version_of(id);
	OK(store_event_add(g_s, id, "worker 2 started", &g_e));
	ck_assert_int_gt(version_of(id), v);

	/* A requeue counts the next start as a new attempt. */
	to(id, STORE_QUEUED);
	to(id, STORE_RUNNING);
	store_job_update_t upd = {.result_json = "{\"ok\":true}"};
	OK(store_job_transition(g_s, id, STORE_SUCCEEDED, &upd, "done", &g_e));
	j = get_job(id);
	ck_assert_int_eq(j.attempts, 2);
	ck_assert_int_eq(j.progress, 100);
	ck_assert_str_eq(j.result_json, "{\"ok\":true}");
	ck_assert_ptr_null(j.error_code);
	ck_assert_int_ge(j.finished_ms, j.started_ms);
	ck_assert_int_gt(j.finished_ms, 0);
	store_job_clear(&j);

	/* Failure fields; a NULL upd field keeps the stored value. */
	char id2[STORE_ID_LEN + 1];
	job_in(STORE_RUNNING, id2);
	store_job_update_t up2 = {.error_code = "bad-model", .error_msg = "no graph"};
	OK(store_job_transition(g_s, id2, STORE_FAILED, &up2, NULL, &g_e));
	j = get_job(id2);
	ck_assert_str_eq(j.error_code, "bad-model");
	ck_assert_str_eq(j.error_msg, "no graph");
	ck_assert_ptr_null(j.result_json);
	store_job_clear(&j);

	/* Versions are global: every change yields a value above all earlier ones. */
	ck_assert_int_gt(version_of(id2), version_of(id));
}
END_TEST

START_TEST(progress_rules)
{
	char id[STORE_ID_LEN + 1];
	new_job("prune", "", id);
	int64_t v = version_of(id);
	OK(store_job_progress(g_s, id, 50, &g_e)); /* queued: ignored */
	ck_assert_int_eq(version_of(id), v);
	to(id, STORE_RUNNING);
	OK(store_job_progress(g_s, id, -5, &g_e));
	OK(store_job_progress(g_s, id, 30, &g_e));
	store_job_t j = get_job(id);
	ck_assert_int_eq(j.progress, 30);
	store_job_clear(&j);
	to(id, STORE_CANCELED);
	v = version_of(id);
	OK(store_job_progress(g_s, id, 60, &g_e)); /* late report after cancel */
	ck_assert_int_eq(version_of(id), v);
	FAILS(store_job_progress(g_s, "01ARZ3NDEKTSV4RRFFQ69G5FAV", 1, &g_e), SD_ENOTFOUND);
}
END_TEST

/* ---- jobs: create, get, list ---- */

START_TEST(ids_are_time_ordered)
{
	char prev[STORE_ID_LEN + 1] = "";
	for (int i = 0; i < 60; i++) {
		char id[STORE_ID_LEN + 1];
		store_job_new_t n = {.stage = "check"};
		OK(store_job_create(g_s, &n, id, &g_e));
		ck_assert_uint_eq(strlen(id), STORE_ID_LEN);
		ck_assert_uint_eq(strspn(id, "0123456789ABCDEFGHJKMNPQRSTVWXYZ"), STORE_ID_LEN);
		ck_assert_msg(strcmp(prev, id) < 0, "%s !< %s", prev, id);
		memcpy(prev, id, sizeof(id));
	}
	/* After a reopen ids continue above the stored ones. */
	reopen();
	char id[STORE_ID_LEN + 1];
	store_job_new_t n = {.stage = "check"};
	OK(store_job_create(g_s, &n, id, &g_e));
	ck_assert_msg(strcmp(prev, id) < 0, "%s !< %s", prev, id);
}
END_TEST

START_TEST(create_and_get)
{
	store_artifact_t ins[2] = {artifact("model", "graph", true),
				   artifact("config", "cfg", true)};
	store_job_new_t n = {.stage = "export", .tenant = "acme", .name = "resnet",
			     .outputs = "logits,probs", .format = "frozen",
			     .record_from = "01ARZ3NDEKTSV4RRFFQ69G5FAV", .inputs = ins,
			     .n_inputs = 2};
	char id[STORE_ID_LEN + 1];
	OK(store_job_create(g_s, &n, id, &g_e));
	store_job_t j;
	OK(store_job_get(g_r, id, "acme", &j, &g_e));
	ck_assert_str_eq(j.id, id);
	ck_assert_str_eq(j.stage, "export");
	ck_assert_str_eq(j.tenant, "acme");
	ck_assert_str_eq(j.name, "resnet");
	ck_assert_str_eq(j.outputs, "logits,probs");
	ck_assert_str_eq(j.format, "frozen");
	ck_assert_str_eq(j.record_from, "01ARZ3NDEKTSV4RRFFQ69G5FAV");
	ck_assert_uint_eq(j.n_artifacts, 2);
	/* inputs sorted by name */
	ck_assert_str_eq(j.artifacts[0].name, "config");
	ck_assert_str_eq(j.artifacts[1].name, "model");
	ck_assert_str_eq(j.artifacts[1].sha256, ins[0].sha256);
	ck_assert_int_eq(j.artifacts[1].size, 5);
	ck_assert(j.artifacts[1].input);
	store_job_clear(&j);
	store_job_clear(&j); /* clearing twice is harmless */

	/* Defaults for omitted strings. */
	store_job_new_t m = {.stage = "check"};
	OK(store_job_create(g_s, &m, id, &g_e));
	OK(store_job_get(g_r, id, NULL, &j, &g_e));
	ck_assert_str_eq(j.tenant, "");
	ck_assert_str_eq(j.name, "");
	ck_assert_uint_eq(j.n_artifacts, 0);
	store_job_clear(&j);

	/* Bad inputs: no stage, a blob that was never committed, a malformed digest. */
	store_job_new_t bad = {.stage = NULL};
	FAILS(store_job_create(g_s, &bad, id, &g_e), SD_EUSAGE);
	store_artifact_t ghost = {.name = "model", .size = 1};
	memcpy(ghost.sha256, SHA_448, sizeof(ghost.sha256));
	store_job_new_t g = {.stage = "prune", .inputs = &ghost, .n_inputs = 1};
	FAILS(store_job_create(g_s, &g, id, &g_e), SD_ENOTFOUND);
	snprintf(ghost.sha256, sizeof(ghost.sha256), "../../etc/passwd");
	FAILS(store_job_create(g_s, &g, id, &g_e), SD_EUSAGE);
	/* Failed creates left no row behind. */
	int64_t counts[STORE_STATE__COUNT];
	OK(store_job_counts(g_r, counts, &g_e));
	ck_assert_int_eq(counts[STORE_QUEUED], 2);

	FAILS(store_job_get(g_r, "01ARZ3NDEKTSV4RRFFQ69G5FAV", NULL, &j, &g_e), SD_ENOTFOUND);
}
END_TEST

START_TEST(tenant_isolation)
{
	char a[STORE_ID_LEN + 1], b[STORE_ID_LEN + 1];
	new_job("prune", "alice", a);
	new_job("prune", "bob", b);
	store_job_t j;
	FAILS(store_job_get(g_r, a, "bob", &j, &g_e), SD_ENOTFOUND);
	OK(store_job_get(g_r, a, "alice", &j, &g_e));
	store_job_clear(&j);
	int64_t v;
	store_state_t st;
	FAILS(store_job_version(g_r, a, "bob", &v, &st, &g_e), SD_ENOTFOUND);
	OK(store_job_version(g_r, a, "alice", &v, &st, &g_e));
	ck_assert_int_eq(st, STORE_QUEUED);
	char *log = NULL;
	FAILS(store_event_log(g_r, a, "bob", &log, &g_e), SD_ENOTFOUND);
	ck_assert_ptr_null(log);
	store_filter_t f = {.tenant = "bob"};
	store_job_t *jobs;
	size_t n;
	char *etag;
	OK(store_job_list(g_r, &f, &jobs, &n, &etag, &g_e));
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(jobs[0].id, b);
	store_job_clear(&jobs[0]);
	free(jobs);
	free(etag);
}
END_TEST

static void list(const store_filter_t *f, size_t want, char ***ids_out, char **etag)
{
	store_job_t *jobs;
	size_t n;
	OK(store_job_list(g_r, f, &jobs, &n, etag, &g_e));
	ck_assert_uint_eq(n, want);
	char **ids = calloc(n + 1, sizeof(*ids));
	for (size_t i = 0; i < n; i++) {
		ck_assert_uint_eq(jobs[i].n_artifacts, 0);
		ids[i] = strdup(jobs[i].id);
		store_job_clear(&jobs[i]);
	}
	free(jobs);
	*ids_out = ids;
}

static void free_ids(char **ids)
{
	for (size_t i = 0; ids[i]; i++)
		free(ids[i]);
	free(ids);
}

START_TEST(list_filters_pagination_etag)
{
	char ids[7][STORE_ID_LEN + 1];
	for (int i = 0; i < 7; i++)
		new_job(i % 2 ? "insert" : "prune", i < 5 ? "t1" : "t2", ids[i]);
	to(ids[0], STORE_RUNNING);
	to(ids[1], STORE_CANCELED);

	char **got, *tag;
	store_filter_t all = {0};
	list(&all, 7, &got, &tag);
	for (int i = 0; i < 7; i++) /* newest first */
		ck_assert_str_eq(got[i], ids[6 - i]);
	free_ids(got);
	char *tag_all = tag;

	/* Pages of 3 by cursor: 6 5 4 | 3 2 1 | 0 */
	store_filter_t p = {.limit = 3};
	list(&p, 3, &got, &tag);
	ck_assert_str_eq(got[2], ids[4]);
	free_ids(got);
	free(tag);
	p.after = ids[4];
	list(&p, 3, &got, &tag);
	ck_assert_str_eq(got[0], ids[3]);
	ck_assert_str_eq(got[2], ids[1]);
	free_ids(got);
	free(tag);
	p.after = ids[1];
	list(&p, 1, &got, &tag);
	ck_assert_str_eq(got[0], ids[0]);
	free_ids(got);
	free(tag);
	p.after = ids[0];
	list(&p, 0, &got, &tag);
	free_ids(got);
	free(tag);

	/* Filters, alone and combined. */
	store_state_t queued = STORE_QUEUED, running = STORE_RUNNING;
	store_filter_t fs = {.state = &queued};
	list(&fs, 5, &got, &tag);
	free_ids(got);
	free(tag);
	fs.state = &running;
	list(&fs, 1, &got, &tag);
	ck_assert_str_eq(got[0], ids[0]);
	free_ids(got);
	free(tag);
	store_filter_t fst = {.stage = "insert"};
	list(&fst, 3, &got, &tag);
	free_ids(got);
	free(tag);
	store_filter_t combo = {.tenant = "t1", .stage = "prune", .state = &queued};
	list(&combo, 2, &got, &tag); /* ids 2, 4 */
	ck_assert_str_eq(got[0], ids[4]);
	ck_assert_str_eq(got[1], ids[2]);
	free_ids(got);
	free(tag);
	store_filter_t none = {.tenant = "nobody"};
	list(&none, 0, &got, &tag);
	ck_assert_str_eq(tag, "0-0");
	free_ids(got);
	free(tag);

	/* The ETag changes on a change to any listed job, and on a delete. */
	list(&all, 7, &got, &tag);
	ck_assert_str_eq(tag, tag_all);
	free_ids(got);
	free(tag);
	OK(store_job_progress(g_s, ids[0], 10, &g_e)); /* the oldest job, not on page 1 */
	list(&all, 7, &got, &tag);
	ck_assert_str_ne(tag, tag_all);
	free_ids(got);
	free(tag_all);
	tag_all = tag;
	OK(store_job_delete(g_s, ids[1], &g_e));
	list(&all, 6, &got, &tag);
	ck_assert_str_ne(tag, tag_all);
	free_ids(got);
	free(tag);
	free(tag_all);

	store_state_t bogus = STORE_STATE__COUNT;
	store_filter_t bad = {.state = &bogus};
	store_job_t *jobs;
	size_t n;
	FAILS(store_job_list(g_r, &bad, &jobs, &n, &tag, &g_e), SD_EUSAGE);
}
END_TEST

START_TEST(job_counts)
{
	char id[STORE_ID_LEN + 1];
	job_in(STORE_RUNNING, id);
	job_in(STORE_RUNNING, id);
	job_in(STORE_FAILED, id);
	job_in(STORE_QUEUED, id);
	int64_t c[STORE_STATE__COUNT];
	OK(store_job_counts(g_r, c, &g_e));
	ck_assert_int_eq(c[STORE_QUEUED], 1);
	ck_assert_int_eq(c[STORE_RUNNING], 2);
	ck_assert_int_eq(c[STORE_FAILED], 1);
	ck_assert_int_eq(c[STORE_SUCCEEDED], 0);
	ck_assert_int_eq(c[STORE_CANCELED], 0);
}
END_TEST

/* ---- events ---- */

START_TEST(event_log_text)
{
	char id[STORE_ID_LEN + 1];
	new_job("insert", "", id);
	OK(store_job_transition(g_s, id, STORE_RUNNING, NULL, "worker 1", &g_e));
	OK(store_event_add(g_s, id, "line one\nforged line", &g_e));
	OK(store_job_transition(g_s, id, STORE_SUCCEEDED, NULL, NULL, &g_e));
	FAILS(store_event_add(g_s, "01ARZ3NDEKTSV4RRFFQ69G5FAV", "x", &g_e), SD_ENOTFOUND);
	char *log;
	OK(store_event_log(g_r, id, NULL, &log, &g_e));
	/* Four lines, each "YYYY-MM-DDTHH:MM:SS.mmmZ text". */
	const char *want[] = {"created (stage insert)", "queued -> running: worker 1",
			      "line one forged line", "running -> succeeded"};
	char *save = NULL, *line = strtok_r(log, "\n", &save);
	for (int i = 0; i < 4; i++) {
		ck_assert_msg(line != NULL, "line %d missing", i);
		ck_assert_uint_gt(strlen(line), 25);
		ck_assert_int_eq(line[4], '-');
		ck_assert_int_eq(line[10], 'T');
		ck_assert_int_eq(line[19], '.');
		ck_assert_int_eq(line[23], 'Z');
		ck_assert_int_eq(line[24], ' ');
		ck_assert_str_eq(line + 25, want[i]);
		line = strtok_r(NULL, "\n", &save);
	}
	ck_assert_ptr_null(line);
	free(log);
	FAILS(store_event_log(g_r, "01ARZ3NDEKTSV4RRFFQ69G5FAV", NULL, &log, &g_e), SD_ENOTFOUND);
}
END_TEST

/* ---- artifacts and records ---- */

START_TEST(artifacts_and_records)
{
	char id[STORE_ID_LEN + 1];
	new_job("insert", "acme", id);
	store_artifact_t out = artifact("result", "masked graph", false);
	char rec[STORE_SHA_HEX + 1];
	put_blob("record bytes", rec);

	/* Outputs only while running. */
	FAILS(store_artifact_add(g_s, id, &out, &g_e), SD_ECONFLICT);
	MSG_HAS("queued");
	FAILS(store_record_set(g_s, id, rec, &g_e), SD_ECONFLICT);
	to(id, STORE_RUNNING);
	int64_t v = version_of(id);
	OK(store_artifact_add(g_s, id, &out, &g_e));
	ck_assert_int_gt(version_of(id), v);
	FAILS(store_artifact_add(g_s, id, &out, &g_e), SD_ECONFLICT); /* name taken */
	MSG_HAS("result");
	store_artifact_t ghost = out;
	snprintf(ghost.name, sizeof(ghost.name), "other");
	memcpy(ghost.sha256, SHA_448, sizeof(ghost.sha256));
	FAILS(store_artifact_add(g_s, id, &ghost, &g_e), SD_ENOTFOUND);
	memcpy(ghost.sha256, "ZZ", 3);
	FAILS(store_artifact_add(g_s, id, &ghost, &g_e), SD_EUSAGE);
	FAILS(store_artifact_add(g_s, "01ARZ3NDEKTSV4RRFFQ69G5FAV", &out, &g_e), SD_ENOTFOUND);

	char sha[STORE_SHA_HEX + 1];
	FAILS(store_record_get(g_r, id, NULL, sha, &g_e), SD_ENOTFOUND);
	OK(store_record_set(g_s, id, rec, &g_e));
	FAILS(store_record_set(g_s, id, rec, &g_e), SD_ECONFLICT);
	FAILS(store_record_set(g_s, id, SHA_448, &g_e), SD_ENOTFOUND);
	to(id, STORE_SUCCEEDED);
	FAILS(store_artifact_add(g_s, id, &ghost, &g_e), SD_ECONFLICT);

	OK(store_record_get(g_r, id, "acme", sha, &g_e));
	ck_assert_str_eq(sha, rec);
	OK(store_record_get(g_r, id, NULL, sha, &g_e));
	FAILS(store_record_get(g_r, id, "other", sha, &g_e), SD_ENOTFOUND);

	store_job_t j = get_job(id);
	ck_assert_uint_eq(j.n_artifacts, 2);
	ck_assert_str_eq(j.artifacts[0].name, "model"); /* inputs first */
	ck_assert(j.artifacts[0].input);
	ck_assert_str_eq(j.artifacts[1].name, "result");
	ck_assert(!j.artifacts[1].input);
	ck_assert_str_eq(j.artifacts[1].sha256, out.sha256);
	ck_assert_int_eq(j.artifacts[1].size, (int64_t)strlen("masked graph"));
	store_job_clear(&j);
	/* The row also names the path, for operators. */
	char q[256];
	snprintf(q, sizeof(q),
		 "SELECT count(*) FROM artifacts WHERE path = 'blobs/%.2s/%s' AND name = 'result'",
		 out.sha256, out.sha256);
	ck_assert_int_eq(db_int(q), 1);
}
END_TEST

/* ---- delete ---- */

START_TEST(delete_and_blob_release)
{
	/* Two jobs share the same input content; one has its own output. */
	char a[STORE_ID_LEN + 1], b[STORE_ID_LEN + 1];
	new_job("prune", "", a);
	new_job("prune", "", b);
	store_job_t ja = get_job(a);
	char shared[STORE_SHA_HEX + 1];
	memcpy(shared, ja.artifacts[0].sha256, sizeof(shared));
	store_job_clear(&ja);
	to(a, STORE_RUNNING);
	store_artifact_t out = artifact("result", "only a has this", false);
	OK(store_artifact_add(g_s, a, &out, &g_e));

	FAILS(store_job_delete(g_s, a, &g_e), SD_ECONFLICT);
	MSG_HAS("running");
	FAILS(store_job_delete(g_s, b, &g_e), SD_ECONFLICT);
	MSG_HAS("queued");
	FAILS(store_job_delete(g_s, "01ARZ3NDEKTSV4RRFFQ69G5FAV", &g_e), SD_ENOTFOUND);

	to(a, STORE_SUCCEEDED);
	/* The deletion takes a version past every earlier change (event ids follow it);
	 * a refused one takes none. */
	store_job_t jv = get_job(a);
	int64_t v0, v1;
	OK(store_version_current(g_r, &v0, &g_e));
	ck_assert_int_ge(v0, jv.version);
	store_job_clear(&jv);
	OK(store_job_delete(g_s, a, &g_e));
	OK(store_version_current(g_r, &v1, &g_e));
	ck_assert_int_eq(v1, v0 + 1);
	FAILS(store_job_delete(g_s, a, &g_e), SD_ENOTFOUND);
	OK(store_version_current(g_r, &v0, &g_e));
	ck_assert_int_eq(v0, v1);
	store_job_t j;
	FAILS(store_job_get(g_r, a, NULL, &j, &g_e), SD_ENOTFOUND);
	ck_assert(!blob_file_exists(out.sha256)); /* no other reference */
	ck_assert(blob_file_exists(shared));      /* b still uses it */
	char q[128];
	snprintf(q, sizeof(q), "SELECT count(*) FROM events WHERE job_id = '%s'", a);
	ck_assert_int_eq(db_int(q), 0);

	to(b, STORE_CANCELED);
	OK(store_job_delete(g_s, b, &g_e));
	ck_assert(!blob_file_exists(shared));
	ck_assert_int_eq(db_int("SELECT count(*) FROM artifacts"), 0);
}
END_TEST

/* Identical bytes are one file. A stage's output committed (any thread) but not yet
 * recorded (the loop, a transaction later) is named by no row: deleting another job
 * that names the same bytes must not remove the file under it. */
START_TEST(pinned_blob_survives_delete)
{
	char a[STORE_ID_LEN + 1], b[STORE_ID_LEN + 1];
	new_job("check", "", a);
	new_job("check", "", b);
	to(a, STORE_RUNNING);
	store_artifact_t out = artifact("report", "same report", false);
	OK(store_artifact_add(g_s, a, &out, &g_e));
	to(a, STORE_SUCCEEDED);

	to(b, STORE_RUNNING);
	store_artifact_t again = artifact("report", "same report", false); /* pinned */
	ck_assert_str_eq(again.sha256, out.sha256);
	OK(store_job_delete(g_s, a, &g_e));
	ck_assert(blob_file_exists(out.sha256));
	OK(store_artifact_add(g_s, b, &again, &g_e));
	to(b, STORE_SUCCEEDED);
	store_job_t jb = get_job(b);
	ck_assert_uint_eq(jb.n_artifacts, 2);
	store_job_clear(&jb);

	/* Two commits of the same bytes in flight: giving up one keeps the file for the
	 * other; giving up both removes it. */
	store_artifact_t x1 = artifact("x", "twice", false), x2 = artifact("x", "twice", false);
	store_blob_release(g_s, x1.sha256);
	ck_assert(blob_file_exists(x2.sha256));
	store_blob_release(g_s, x2.sha256);
	ck_assert(!blob_file_exists(x2.sha256));

	/* Once b's row names it (its pin dropped), b's deletion removes the file. */
	OK(store_job_delete(g_s, b, &g_e));
	ck_assert(!blob_file_exists(out.sha256));
}
END_TEST

/* ---- recovery, queue, sweep ---- */

START_TEST(recover_requeues_and_gives_up)
{
	char fresh[STORE_ID_LEN + 1], tired[STORE_ID_LEN + 1], q[STORE_ID_LEN + 1];
	char done[STORE_ID_LEN + 1];
	job_in(STORE_RUNNING, fresh); /* attempts 1 */
	store_artifact_t partial = artifact("result", "half of a result", false);
	OK(store_artifact_add(g_s, fresh, &partial, &g_e));
	job_in(STORE_RUNNING, tired);
	to(tired, STORE_QUEUED);
	to(tired, STORE_RUNNING); /* attempts 2 */
	job_in(STORE_QUEUED, q);
	job_in(STORE_SUCCEEDED, done);

	/* The process "dies" with two jobs running. */
	reopen();
	int rq, fl;
	OK(store_recover(g_s, 2, &rq, &fl, &g_e));
	ck_assert_int_eq(rq, 1);
	ck_assert_int_eq(fl, 1);

	store_job_t j = get_job(fresh);
	ck_assert_int_eq(j.state, STORE_QUEUED);
	ck_assert_int_eq(j.attempts, 1); /* kept */
	ck_assert_uint_eq(j.n_artifacts, 1); /* the partial output is dropped */
	ck_assert(j.artifacts[0].input);
	store_job_clear(&j);
	ck_assert(!blob_file_exists(partial.sha256));

	j = get_job(tired);
	ck_assert_int_eq(j.state, STORE_FAILED);
	ck_assert_str_eq(j.error_code, "attempts-exhausted");
	ck_assert_ptr_nonnull(strstr(j.error_msg, "2 times"));
	store_job_clear(&j);

	j = get_job(done);
	ck_assert_int_eq(j.state, STORE_SUCCEEDED);
	store_job_clear(&j);

	char (*ids)[STORE_ID_LEN + 1];
	size_t n;
	OK(store_queued(g_s, 10, &ids, &n, &g_e));
	ck_assert_uint_eq(n, 2); /* oldest first */
	ck_assert_str_eq(ids[0], fresh);
	ck_assert_str_eq(ids[1], q);
	free(ids);
	OK(store_queued(g_s, 1, &ids, &n, &g_e));
	ck_assert_uint_eq(n, 1);
	free(ids);

	/* Nothing running now: a second recovery does nothing. */
	OK(store_recover(g_s, 2, &rq, &fl, &g_e));
	ck_assert_int_eq(rq + fl, 0);

	char *log;
	OK(store_event_log(g_r, tired, NULL, &log, &g_e));
	ck_assert_ptr_nonnull(strstr(log, "running -> failed: interrupted; attempts exhausted"));
	free(log);
}
END_TEST

START_TEST(sweep_retention)
{
	char ok[STORE_ID_LEN + 1], bad[STORE_ID_LEN + 1], run[STORE_ID_LEN + 1];
	char q[STORE_ID_LEN + 1];
	job_in(STORE_SUCCEEDED, ok);
	job_in(STORE_FAILED, bad);
	job_in(STORE_RUNNING, run);
	job_in(STORE_QUEUED, q);
	int n;
	OK(store_sweep(g_s, 1, &n, &g_e)); /* nothing finished before 1970 */
	ck_assert_int_eq(n, 0);
	OK(store_sweep(g_s, INT64_MAX, &n, &g_e));
	ck_assert_int_eq(n, 2);
	store_job_t j;
	FAILS(store_job_get(g_r, ok, NULL, &j, &g_e), SD_ENOTFOUND);
	FAILS(store_job_get(g_r, bad, NULL, &j, &g_e), SD_ENOTFOUND);
	OK(store_job_get(g_r, run, NULL, &j, &g_e));
	store_job_clear(&j);
	OK(store_job_get(g_r, q, NULL, &j, &g_e));
	store_job_clear(&j);
}
END_TEST

/* ---- tokens ---- */

START_TEST(tokens)
{
	bool exist = true;
	OK(store_tokens_exist(g_r, &exist, &g_e));
	ck_assert(!exist);
	char tok[STORE_TOKEN_MAX], tok2[STORE_TOKEN_MAX], id[STORE_TOKEN_ID_LEN + 1];
	OK(store_token_create(g_s, "acme", 0, tok, sizeof(tok), id, &g_e));
	OK(store_token_create(g_s, "", 0, tok2, sizeof(tok2), NULL, &g_e));
	ck_assert_uint_eq(strlen(tok), STORE_TOKEN_MAX - 1);
	ck_assert(strncmp(tok, "sdt_", 4) == 0);
	ck_assert_uint_eq(strspn(tok + 4, "0123456789abcdef"), 64);
	ck_assert_str_ne(tok, tok2);
	OK(store_tokens_exist(g_r, &exist, &g_e));
	ck_assert(exist);

	int64_t now = sd_now_ms();
	store_token_t t;
	OK(store_token_check(g_r, tok, now, &t, &g_e));
	ck_assert_str_eq(t.tenant, "acme");
	ck_assert_str_eq(t.id, id);
	ck_assert_uint_eq(strlen(t.id), STORE_TOKEN_ID_LEN);
	ck_assert(!strncmp(t.hash, id, STORE_TOKEN_ID_LEN));
	ck_assert(t.created_ms > 0 && t.created_ms <= now);
	ck_assert(t.expires_ms == 0 && t.last_used_ms == 0 && t.revoked_ms == 0);
	store_token_clear(&t);
	OK(store_token_check(g_r, tok2, now, &t, &g_e));
	ck_assert_str_eq(t.tenant, "");
	store_token_clear(&t);
	char wrong[STORE_TOKEN_MAX];
	memcpy(wrong, tok, sizeof(wrong));
	wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
	FAILS(store_token_check(g_r, wrong, now, &t, &g_e), SD_ENOTFOUND);
	ck_assert_ptr_null(t.tenant);
	FAILS(store_token_check(g_r, "sdt_short", now, &t, &g_e), SD_ENOTFOUND);
	FAILS(store_token_check(g_r, "", now, &t, &g_e), SD_ENOTFOUND);

	char small[65];
	FAILS(store_token_create(g_s, "acme", 0, small, sizeof(small), NULL, &g_e), SD_EUSAGE);

	/* Only the hash is stored. */
	char q[256];
	snprintf(q, sizeof(q), "SELECT count(*) FROM tokens WHERE hash = '%s' OR tenant = '%s'",
		 tok, tok);
	ck_assert_int_eq(db_int(q), 0);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tokens WHERE length(hash) = 64"), 2);
}
END_TEST

START_TEST(token_expiry_use_revoke)
{
	int64_t now = sd_now_ms();
	char tok[STORE_TOKEN_MAX], tok2[STORE_TOKEN_MAX], id[STORE_TOKEN_ID_LEN + 1],
		id2[STORE_TOKEN_ID_LEN + 1], got[STORE_TOKEN_ID_LEN + 1];
	OK(store_token_create(g_s, "acme", now + 60000, tok, sizeof(tok), id, &g_e));
	OK(store_token_create(g_s, "beta", 0, tok2, sizeof(tok2), id2, &g_e));

	/* Expiry: valid until the instant it names, refused from then on, saying so. */
	store_token_t t;
	OK(store_token_check(g_r, tok, now + 59999, &t, &g_e));
	ck_assert(t.expires_ms == now + 60000);
	char hash[STORE_SHA_HEX + 1];
	memcpy(hash, t.hash, sizeof(hash));
	store_token_clear(&t);
	FAILS(store_token_check(g_r, tok, now + 60000, &t, &g_e), SD_EAUTH);
	MSG_HAS("expired");
	MSG_HAS(id);
	ck_assert_ptr_null(t.tenant);

	/* Last use: only ever moves forward. */
	OK(store_token_touch(g_s, hash, now + 5, &g_e));
	OK(store_token_touch(g_s, hash, now + 1, &g_e));
	OK(store_token_check(g_r, tok, now, &t, &g_e));
	ck_assert(t.last_used_ms == now + 5);
	store_token_clear(&t);
	OK(store_token_touch(g_s, "0000", now, &g_e)); /* a token since gone: nothing to do */

	/* The list: every token, oldest first, with its fields. */
	store_token_t *v;
	size_t n;
	OK(store_token_list(g_r, &v, &n, &g_e));
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(v[0].id, id);
	ck_assert_str_eq(v[0].tenant, "acme");
	ck_assert(v[0].last_used_ms == now + 5 && v[0].expires_ms == now + 60000);
	ck_assert_str_eq(v[1].id, id2);
	ck_assert(v[1].expires_ms == 0 && v[1].last_used_ms == 0);
	for (size_t i = 0; i < n; i++)
		store_token_clear(&v[i]);
	free(v);

	/* Revoke by the whole token, by the id, by a prefix; bad names are refused. */
	FAILS(store_token_revoke(g_s, "1234567", NULL, &g_e), SD_EUSAGE);     /* too short */
	FAILS(store_token_revoke(g_s, "ABCDEF0123", NULL, &g_e), SD_EUSAGE);  /* not lowercase */
	FAILS(store_token_revoke(g_s, "sdt_123", NULL, &g_e), SD_EUSAGE);     /* not whole */
	FAILS(store_token_revoke(g_s, "ffffffffffff", NULL, &g_e), SD_ENOTFOUND);
	char unknown[STORE_TOKEN_MAX];
	memcpy(unknown, tok2, sizeof(unknown));
	unknown[10] = unknown[10] == 'a' ? 'b' : 'a';
	FAILS(store_token_revoke(g_s, unknown, NULL, &g_e), SD_ENOTFOUND);
	OK(store_token_revoke(g_s, tok2, got, &g_e));
	ck_assert_str_eq(got, id2);
	FAILS(store_token_check(g_r, tok2, now, &t, &g_e), SD_EAUTH);
	MSG_HAS("revoked");
	FAILS(store_token_revoke(g_s, id2, NULL, &g_e), SD_ECONFLICT);
	MSG_HAS("already");
	char prefix[9];
	memcpy(prefix, id, 8);
	prefix[8] = 0;
	OK(store_token_revoke(g_s, prefix, got, &g_e));
	ck_assert_str_eq(got, id);
	FAILS(store_token_check(g_r, tok, now, &t, &g_e), SD_EAUTH);
	MSG_HAS("revoked");

	/* Revoked tokens keep their rows: auth stays on. */
	bool exist = false;
	OK(store_tokens_exist(g_r, &exist, &g_e));
	ck_assert(exist);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tokens WHERE revoked_ms > 0"), 2);
}
END_TEST

START_TEST(token_revoke_ambiguous_prefix)
{
	/* Two tokens whose hashes share 8 hex digits are made to, by editing the rows: a
	 * prefix naming both is refused, a longer one picks one. */
	char tok[STORE_TOKEN_MAX], tok2[STORE_TOKEN_MAX];
	OK(store_token_create(g_s, "a", 0, tok, sizeof(tok), NULL, &g_e));
	OK(store_token_create(g_s, "b", 0, tok2, sizeof(tok2), NULL, &g_e));
	db_exec("UPDATE tokens SET hash = 'abcdef01' || substr(hash, 9)");
	FAILS(store_token_revoke(g_s, "abcdef01", NULL, &g_e), SD_ECONFLICT);
	MSG_HAS("several");
	ck_assert_int_eq(db_int("SELECT count(*) FROM tokens WHERE revoked_ms > 0"), 0);
	char *h = NULL;
	{
		sqlite3 *db;
		sqlite3_stmt *st;
		ck_assert_int_eq(sqlite3_open_v2(path_in("sparsityd.db"), &db, SQLITE_OPEN_READONLY,
						 NULL), SQLITE_OK);
		ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT hash FROM tokens WHERE tenant = 'b'", -1,
						    &st, NULL), SQLITE_OK);
		ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
		h = strdup((const char *)sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
		sqlite3_close(db);
	}
	OK(store_token_revoke(g_s, h, NULL, &g_e));
	free(h);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tokens WHERE revoked_ms > 0 AND tenant = 'b'"),
			 1);
	ck_assert_int_eq(db_int("SELECT count(*) FROM tokens WHERE revoked_ms > 0"), 1);
}
END_TEST

/* ---- blobs ---- */

static void read_file(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "open %s", path);
	size_t n = fread(buf, 1, cap - 1, f);
	buf[n] = 0;
	fclose(f);
}

START_TEST(blob_sha_vectors)
{
	char sha[STORE_SHA_HEX + 1];
	int64_t size;
	store_blob_t *b;
	/* "abc" written in pieces */
	OK(store_blob_begin(g_s, 100, &b, &g_e));
	OK(store_blob_append(b, "a", 1, &g_e));
	OK(store_blob_append(b, "", 0, &g_e));
	OK(store_blob_append(b, "bc", 2, &g_e));
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_str_eq(sha, SHA_ABC);
	ck_assert_int_eq(size, 3);
	char *p = store_blob_path(g_s, sha);
	char want[256];
	snprintf(want, sizeof(want), "%s/blobs/ba/%s", g_dir, SHA_ABC);
	ck_assert_str_eq(p, want);
	char buf[16];
	read_file(p, buf, sizeof(buf));
	ck_assert_str_eq(buf, "abc");
	free(p);

	OK(store_blob_begin(g_s, 0, &b, &g_e));
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_str_eq(sha, SHA_EMPTY);
	ck_assert_int_eq(size, 0);

	put_blob(MSG_448, sha);
	ck_assert_str_eq(sha, SHA_448);

	/* A large blob across many appends. */
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	char chunk[4096];
	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 300; i++)
		OK(store_blob_append(b, chunk, sizeof(chunk), &g_e));
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_int_eq(size, 300 * 4096);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);

	/* Past one buffer the hash runs on the pool when there is one: odd-sized appends that
	 * straddle buffers, and more buffers than the ring holds, must still hash to
	 * exactly what a one-shot SHA-256 of the same bytes gives. */
	size_t total = 9 * 1048576 + 12345;
	unsigned char *big = malloc(total);
	for (size_t i = 0; i < total; i++)
		big[i] = (unsigned char)(i * 2654435761u >> 13);
	unsigned char d[32];
	unsigned int dn = 0;
	ck_assert_int_eq(EVP_Digest(big, total, d, &dn, EVP_sha256(), NULL), 1);
	char want_hex[STORE_SHA_HEX + 1];
	for (int i = 0; i < 32; i++)
		snprintf(want_hex + 2 * i, 3, "%02x", d[i]);
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	static const size_t steps[] = {3001, 1048576 + 7, 65537, 1, 2 * 1048576 + 999};
	for (size_t off = 0, k = 0; off < total; k++) {
		size_t n = steps[k % 5] < total - off ? steps[k % 5] : total - off;
		OK(store_blob_append(b, big + off, n, &g_e));
		off += n;
	}
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_str_eq(sha, want_hex);
	ck_assert_int_eq(size, (int64_t)total);
	/* Aborting with the hasher running leaves nothing behind. */
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	OK(store_blob_append(b, big, 5 * 1048576, &g_e));
	store_blob_abort(b);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);
	free(big);

	ck_assert_ptr_null(store_blob_path(g_s, "../../etc/passwd"));
	ck_assert_ptr_null(store_blob_path(g_s, "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
}
END_TEST

/* The bytes of the committed blob sha equal data[0..n). */
static void assert_blob_bytes(const char *sha, const unsigned char *data, size_t n)
{
	char *p = store_blob_path(g_s, sha);
	FILE *f = fopen(p, "rb");
	ck_assert_ptr_nonnull(f);
	unsigned char *got = malloc(n + 1);
	ck_assert_uint_eq(fread(got, 1, n + 1, f), n);
	ck_assert_int_eq(memcmp(got, data, n), 0);
	free(got);
	fclose(f);
	free(p);
}

/* One pool thread shared by four blobs that fill in turn: each must hash to exactly
 * its own bytes and hold them in its file, whatever order the pool takes their
 * buffers (and each buffer's write and hash) in. */
START_TEST(blob_pool_interleaved)
{
	OK(store_hashers_start(g_s, 1, &g_e));
	enum { N = 4 };
	size_t total = 3 * 1048576 + 777;
	unsigned char *data[N];
	store_blob_t *b[N];
	for (int k = 0; k < N; k++) {
		data[k] = malloc(total);
		for (size_t i = 0; i < total; i++)
			data[k][i] = (unsigned char)((i + 31 * (size_t)k) * 2654435761u >> 11);
		OK(store_blob_begin(g_s, 0, &b[k], &g_e));
	}
	for (size_t off = 0; off < total; off += 70001)
		for (int k = 0; k < N; k++)
			OK(store_blob_append(b[k], data[k] + off, off + 70001 < total ? 70001 : total - off,
					     &g_e));
	for (int k = 0; k < N; k++) {
		char sha[STORE_SHA_HEX + 1], want[STORE_SHA_HEX + 1];
		int64_t size;
		unsigned char d[32];
		unsigned int dn = 0;
		ck_assert_int_eq(EVP_Digest(data[k], total, d, &dn, EVP_sha256(), NULL), 1);
		for (int i = 0; i < 32; i++)
			snprintf(want + 2 * i, 3, "%02x", d[i]);
		if (k == N - 1) {
			store_blob_abort(b[k]); /* an abort with buffers queued leaves nothing */
		} else {
			OK(store_blob_commit(b[k], sha, &size, &g_e));
			ck_assert_str_eq(sha, want);
			ck_assert_int_eq(size, (int64_t)total);
			assert_blob_bytes(sha, data[k], total);
		}
		free(data[k]);
	}
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);
}
END_TEST

/* Files this process writes stop growing at max bytes (EFBIG instead of SIGXFSZ): a
 * full disk, for one test. fsize_unlimit undoes it. */
static struct rlimit fsize_old;
static void (*fsize_prev)(int);

static void fsize_limit(rlim_t max)
{
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &fsize_old), 0);
	struct rlimit lim = fsize_old;
	lim.rlim_cur = max;
	fsize_prev = signal(SIGXFSZ, SIG_IGN);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
}

static void fsize_unlimit(void)
{
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &fsize_old), 0);
	signal(SIGXFSZ, fsize_prev);
}

/* A write the pool's thread makes fails (the file size limit here, a full disk in
 * life): the blob is refused with the cause, at an append or at commit, and leaves
 * nothing behind; the next blob is written whole. */
START_TEST(blob_pool_write_failure)
{
	OK(store_hashers_start(g_s, 1, &g_e));
	size_t total = 4 * 1048576;
	unsigned char *data = malloc(total);
	for (size_t i = 0; i < total; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 13);
	fsize_limit(1048576 + 4096);
	store_blob_t *b;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	int rc = 0;
	for (size_t off = 0; !rc && off < total; off += 65536)
		rc = store_blob_append(b, data + off, 65536, &g_e);
	char sha[STORE_SHA_HEX + 1];
	int64_t size;
	if (!rc)
		rc = store_blob_commit(b, sha, &size, &g_e);
	else
		store_blob_abort(b);
	fsize_unlimit();
	ck_assert_int_eq(rc, SD_EIO);
	ck_assert_msg(strstr(g_e.msg, "writing tmp/") && strstr(g_e.msg, "too large"), "%s",
		      g_e.msg);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	OK(store_blob_append(b, data, total, &g_e));
	OK(store_blob_commit(b, sha, &size, &g_e));
	assert_blob_bytes(sha, data, total);
	free(data);
}
END_TEST

/* store_blob_ready's wake-up, counted. */
typedef struct wakes {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int n;
} wakes_t;

static void on_wake(void *ud)
{
	wakes_t *w = ud;
	pthread_mutex_lock(&w->mu);
	w->n++;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* An appender that never waits on the pool (an HTTP thread): it asks store_blob_ready
 * before each append and, when told no, waits for its wake-up instead. One pool thread
 * writes and hashes 512 KiB buffers far slower than they are filled, so the ring fills
 * again and again: every registration is woken exactly once, and the bytes arrive
 * whole. */
START_TEST(blob_ready_wakes_once)
{
	OK(store_hashers_start(g_s, 1, &g_e));
	const size_t step = (size_t)512 << 10, total = (size_t)64 << 20;
	unsigned char *data = malloc(total);
	for (size_t i = 0; i < total; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 7);
	wakes_t w = {.n = 0};
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	store_blob_t *b;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	int waits = 0;
	for (size_t off = 0; off < total; off += step) {
		if (!store_blob_ready(b, step, on_wake, &w)) {
			waits++;
			struct timespec until;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += 60;
			pthread_mutex_lock(&w.mu);
			while (w.n < waits && pthread_cond_timedwait(&w.cv, &w.mu, &until) == 0)
				;
			ck_assert_int_eq(w.n, waits);
			pthread_mutex_unlock(&w.mu);
		}
		OK(store_blob_append(b, data + off, step, &g_e));
	}
	char sha[STORE_SHA_HEX + 1];
	int64_t size;
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_int_eq(size, (int64_t)total);
	assert_blob_bytes(sha, data, total);
	ck_assert_int_gt(waits, 0);
	ck_assert_int_eq(w.n, waits); /* no second call for one registration */
	pthread_cond_destroy(&w.cv);
	pthread_mutex_destroy(&w.mu);
	free(data);
}
END_TEST

/* The FILE over a blob, written as the engine's encoder writes it (whole 1 MiB blocks
 * straight from an exactly-sized heap buffer), on a disk that fills: the writes fail
 * with errno set, stdio reads nothing past the caller's buffer (valgrind runs this
 * test), and the blob aborts cleanly. */
START_TEST(blob_stream_write_failure)
{
	OK(store_hashers_start(g_s, 1, &g_e));
	const size_t block = 1048576;
	unsigned char *data = malloc(block);
	for (size_t i = 0; i < block; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 11);
	fsize_limit(block + 8192);
	store_blob_t *b;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	FILE *f = store_blob_stream(b);
	ck_assert_ptr_nonnull(f);
	/* an odd-sized first write, so later blocks straddle stdio's buffer as in life */
	ck_assert_uint_eq(fwrite(data, 1, 8095, f), 8095);
	size_t i, wrote = block;
	for (i = 0; i < 16 && wrote == block; i++)
		wrote = fwrite(data, 1, block, f);
	int werr = errno, ferr = ferror(f);
	fclose(f);
	fsize_unlimit();
	ck_assert_msg(wrote < block, "16 MiB written through a 1 MiB file size limit");
	ck_assert_int_eq(werr, EIO);
	ck_assert_int_ne(ferr, 0);
	/* the failed append is remembered: the blob cannot be committed truncated */
	char sha[STORE_SHA_HEX + 1];
	int64_t size;
	ck_assert_int_eq(store_blob_commit(b, sha, &size, &g_e), SD_EIO);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);
	/* a healthy stream commits its bytes */
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	f = store_blob_stream(b);
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, block, f), block);
	ck_assert_int_eq(fclose(f), 0);
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_int_eq(size, (int64_t)block);
	assert_blob_bytes(sha, data, block);
	free(data);
}
END_TEST

/* Uncached blobs (O_DIRECT where the file system takes it; any size, so the last
 * buffer is partial and goes through the page cache) hold exactly their bytes, with and
 * without a pool, appended in pieces of any size; a small one never gets a full buffer. */
START_TEST(blob_uncached_holds_its_bytes)
{
	size_t total = 9 * 1048576 + 4096 * 3 + 123; /* two whole 4 MiB blocks, then a tail */
	unsigned char *data = malloc(total);
	for (size_t i = 0; i < total; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 9);
	for (int pool = 0; pool < 2; pool++) {
		if (pool)
			OK(store_hashers_start(g_s, 2, &g_e));
		for (size_t piece = 1000; piece <= total; piece *= 37) {
			store_blob_t *b;
			OK(store_blob_begin(g_s, 0, &b, &g_e));
			store_blob_uncached(b);
			for (size_t off = 0; off < total; off += piece)
				OK(store_blob_append(b, data + off, off + piece < total ? piece : total - off,
						     &g_e));
			char sha[STORE_SHA_HEX + 1];
			int64_t size;
			OK(store_blob_commit(b, sha, &size, &g_e));
			ck_assert_int_eq(size, (int64_t)total);
			assert_blob_bytes(sha, data, total);
			store_blob_release(g_s, sha);
		}
	}
	store_blob_t *b;
	char sha[STORE_SHA_HEX + 1];
	int64_t size;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	store_blob_uncached(b);
	OK(store_blob_append(b, "abc", 3, &g_e));
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_str_eq(sha, SHA_ABC);
	assert_blob_bytes(sha, (const unsigned char *)"abc", 3);
	free(data);
}
END_TEST

static void setup_pool(void)
{
	setup();
	OK(store_hashers_start(g_s, 2, &g_e));
}

START_TEST(blob_dedup_abort_limit)
{
	char s1[STORE_SHA_HEX + 1], s2[STORE_SHA_HEX + 1];
	put_blob("same bytes", s1);
	put_blob("same bytes", s2);
	ck_assert_str_eq(s1, s2);
	char sub[128];
	snprintf(sub, sizeof(sub), "blobs/%.2s", s1);
	ck_assert_uint_eq(count_entries(path_in(sub)), 1);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);

	/* Abort: the temporary file goes, nothing appears under blobs/. */
	size_t before = count_entries(path_in("blobs"));
	store_blob_t *b;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	OK(store_blob_append(b, "abc", 3, &g_e));
	ck_assert_uint_eq(count_entries(path_in("tmp")), 1);
	store_blob_abort(b);
	store_blob_abort(NULL);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);
	ck_assert_uint_eq(count_entries(path_in("blobs")), before);
	ck_assert(!blob_file_exists(SHA_ABC));

	/* Limit: exactly at it is fine, one byte past is refused and poisons the blob. */
	char sha[STORE_SHA_HEX + 1];
	int64_t size;
	OK(store_blob_begin(g_s, 3, &b, &g_e));
	OK(store_blob_append(b, "abc", 3, &g_e));
	OK(store_blob_commit(b, sha, &size, &g_e));
	ck_assert_str_eq(sha, SHA_ABC);
	OK(store_blob_begin(g_s, 3, &b, &g_e));
	OK(store_blob_append(b, "ab", 2, &g_e));
	FAILS(store_blob_append(b, "cd", 2, &g_e), SD_ETOOBIG);
	FAILS(store_blob_append(b, "c", 1, &g_e), SD_ETOOBIG);
	FAILS(store_blob_commit(b, sha, &size, &g_e), SD_ETOOBIG); /* frees b */
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);
}
END_TEST

/* Finds the one file in tmp/ (a blob being written) and hard-links it under another
 * name, so that after the writer cleans up, tmp/ holds exactly what a crash before
 * the rename would have left. */
static void keep_tmp_copy(void)
{
	DIR *d = opendir(path_in("tmp"));
	ck_assert(d != NULL);
	struct dirent *de;
	char src[512] = "";
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			snprintf(src, sizeof(src), "%s/tmp/%s", g_dir, de->d_name);
	closedir(d);
	ck_assert(src[0]);
	char dst[512];
	snprintf(dst, sizeof(dst), "%s/tmp/crashed", g_dir);
	ck_assert_int_eq(link(src, dst), 0);
}

START_TEST(crash_before_rename)
{
	char id[STORE_ID_LEN + 1];
	new_job("prune", "", id);
	store_blob_t *b;
	OK(store_blob_begin(g_s, 0, &b, &g_e));
	OK(store_blob_append(b, "abc", 3, &g_e));
	keep_tmp_copy();
	store_blob_abort(b);
	ck_assert_uint_eq(count_entries(path_in("tmp")), 1); /* the "crashed" temp file */

	reopen();
	ck_assert_uint_eq(count_entries(path_in("tmp")), 0);
	ck_assert(!blob_file_exists(SHA_ABC));
	ck_assert_int_eq(db_int("SELECT count(*) FROM artifacts WHERE sha256 = '" SHA_ABC "'"), 0);
	/* The job and its own input are untouched by the sweep. */
	store_job_t j = get_job(id);
	ck_assert_uint_eq(j.n_artifacts, 1);
	ck_assert(blob_file_exists(j.artifacts[0].sha256));
	store_job_clear(&j);
}
END_TEST

START_TEST(crash_after_rename_before_row)
{
	char id[STORE_ID_LEN + 1];
	job_in(STORE_RUNNING, id);
	char sha[STORE_SHA_HEX + 1];
	put_blob("an output nobody recorded", sha); /* renamed into place; no row follows */
	ck_assert(blob_file_exists(sha));
	store_job_t j = get_job(id);
	for (size_t i = 0; i < j.n_artifacts; i++)
		ck_assert_str_ne(j.artifacts[i].sha256, sha);
	store_job_clear(&j);

	reopen();
	int rq, fl;
	OK(store_recover(g_s, 3, &rq, &fl, &g_e));
	ck_assert_int_eq(rq, 1);
	j = get_job(id);
	ck_assert_uint_eq(j.n_artifacts, 1); /* only its input */
	ck_assert(j.artifacts[0].input);
	ck_assert(blob_file_exists(j.artifacts[0].sha256));
	store_job_clear(&j);
	/* The unreferenced blob was swept at open; naming it now is refused. */
	ck_assert(!blob_file_exists(sha));
	to(id, STORE_RUNNING);
	store_artifact_t a = {.name = "result", .size = 1};
	memcpy(a.sha256, sha, sizeof(a.sha256));
	FAILS(store_artifact_add(g_s, id, &a, &g_e), SD_ENOTFOUND);
}
END_TEST

/* ---- threads ---- */

struct poller {
	store_t *s;
	const char *dir;
	int errors;
	int rounds;
};

static void *poll_lists(void *arg)
{
	struct poller *p = arg;
	store_reader_t *r;
	sd_error_t e;
	if (store_reader_open(p->s, &r, &e) != 0) {
		p->errors++;
		return NULL;
	}
	for (int i = 0; i < p->rounds; i++) {
		store_filter_t f = {.limit = 10};
		store_job_t *jobs;
		size_t n;
		char *etag;
		if (store_job_list(r, &f, &jobs, &n, &etag, &e) != 0) {
			p->errors++;
			continue;
		}
		for (size_t k = 0; k < n; k++)
			store_job_clear(&jobs[k]);
		free(jobs);
		free(etag);
	}
	store_reader_close(r);
	return NULL;
}

START_TEST(readers_on_other_threads)
{
	struct poller p = {.s = g_s, .rounds = 100};
	pthread_t t;
	ck_assert_int_eq(pthread_create(&t, NULL, poll_lists, &p), 0);
	for (int i = 0; i < 40; i++) {
		char id[STORE_ID_LEN + 1];
		store_job_new_t n = {.stage = "check"};
		OK(store_job_create(g_s, &n, id, &g_e));
		to(id, STORE_RUNNING);
	}
	pthread_join(t, NULL);
	ck_assert_int_eq(p.errors, 0);
}
END_TEST

int main(void)
{
	const tu_case_t cases[] = {
		{"schema", TU_TESTS(migrate_empty_and_reopen, second_open_is_shared),
		 .setup = setup, .teardown = teardown},
		{"schema-bare", TU_TESTS(migrate_v0_with_foreign_table, migrate_refuses_conflicts),
		 .setup = setup_bare, .teardown = teardown},
		{"jobs",
		 TU_TESTS(state_names, every_transition, transition_fields_and_versions,
			  progress_rules, ids_are_time_ordered, create_and_get, tenant_isolation,
			  list_filters_pagination_etag, job_counts, event_log_text,
			  artifacts_and_records, delete_and_blob_release, pinned_blob_survives_delete,
			  recover_requeues_and_gives_up, sweep_retention, tokens,
			  token_expiry_use_revoke, token_revoke_ambiguous_prefix,
			  readers_on_other_threads),
		 .setup = setup, .teardown = teardown, .timeout = 120},
		{"blobs",
		 TU_TESTS(blob_sha_vectors, blob_dedup_abort_limit, crash_before_rename,
			  crash_after_rename_before_row, blob_pool_interleaved,
			  blob_pool_write_failure, blob_stream_write_failure, blob_ready_wakes_once,
			  blob_uncached_holds_its_bytes),
		 .setup = setup, .teardown = teardown, .timeout = 120},
		{"blobs hashed by the shared pool", TU_TESTS(blob_sha_vectors, blob_dedup_abort_limit),
		 .setup = setup_pool, .teardown = teardown, .timeout = 120},
		{NULL},
	};
	return tu_main("store", cases);
}
