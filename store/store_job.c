/*
 * store_job: the writes to job rows, their artifacts, records and event log
 * (see store.h). Loop thread only: everything here runs on the writer connection.
 *
 * Design.
 * - Each public write is one IMMEDIATE transaction: the row, the event and the
 *   version bump commit together or not at all. A failure rolls back and reports;
 *   nothing is half-applied.
 * - store_job_transition is the only code that changes jobs.state. It checks the
 *   transition table (store.c), so no caller can move a finished job, and it writes
 *   an event "from -> to: note" in the same transaction.
 * - Requeueing a running job (restart, drain) drops the outputs it had registered so
 *   far: stages are deterministic over the stored inputs, so the rerun produces them
 *   again, and a job is never seen queued with stale results.
 * - Outputs (artifacts, records) may only be added while the job is running, before
 *   the transition to succeeded; so a succeeded job always shows its outputs, and a
 *   late worker cannot attach files to a canceled job.
 * - Blob files are released only after the transaction that dropped their last row
 *   has committed: a rollback must never find its blob gone.
 */
#include "store/store_int.h"

#include "common/sd_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fails the current transaction: rolls back and passes rc through. */
static int fail(store_t *s, int rc)
{
	store__rollback(&s->w);
	return rc;
}

static const char *str_or_empty(const char *v)
{
	return v ? v : "";
}

static int event_insert(store_t *s, const char *id, int64_t now, const char *text,
			sd_error_t *e)
{
	sqlite3_stmt *st;
	int rc = store__stmt(&s->w, STORE__SQL_EVENT_INSERT, &st, e);
	if (rc)
		return rc;
	store__bind_text(st, 1, id);
	sqlite3_bind_int64(st, 2, now);
	store__bind_text(st, 3, text);
	return store__run(&s->w, st, e, "insert event");
}

/* Reads the job's state; SD_ENOTFOUND when there is no such job. */
static int job_state(store_t *s, const char *id, store_state_t *state, int *attempts,
		     sd_error_t *e)
{
	sqlite3_stmt *st;
	int rc = store__stmt(&s->w, STORE__SQL_JOB_STATE, &st, e);
	if (rc)
		return rc;
	store__bind_text(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		sqlite3_reset(st);
		return sd_err(e, SD_ENOTFOUND, "job %s not found", id ? id : "(null)");
	}
	if (rc != SQLITE_ROW) {
		int code = store__sqlerr(&s->w, rc, e, "read job state");
		sqlite3_reset(st);
		return code;
	}
	rc = store_state_parse((const char *)sqlite3_column_text(st, 0), state, e);
	if (attempts)
		*attempts = sqlite3_column_int(st, 1);
	sqlite3_reset(st);
	return rc ? sd_err(e, SD_EIO, "job %s has a corrupt state", id) : 0;
}

/* Bumps updated_ms and version of a job whose row is otherwise unchanged. */
static int job_touch(store_t *s, const char *id, int64_t now, sd_error_t *e)
{
	int64_t ver;
	int rc = store__version_next(s, &ver, e);
	if (rc)
		return rc;
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_JOB_TOUCH, &st, e)) != 0)
		return rc;
	store__bind_text(st, 1, id);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int64(st, 3, ver);
	return store__run(&s->w, st, e, "update job");
}

static int artifact_insert(store_t *s, const char *id, const store_artifact_t *a,
			   bool input, sd_error_t *e)
{
	if (!a->name[0] || !memchr(a->name, 0, sizeof(a->name)))
		return sd_err(e, SD_EUSAGE, "artifact name is empty or too long");
	if (a->size < 0)
		return sd_err(e, SD_EUSAGE, "artifact %s has a negative size", a->name);
	/* A row must never name a file that is not there (the API would serve a 404). */
	int rc = store__blob_exists(s, a->sha256, e);
	if (rc)
		return rc;
	char path[16 + STORE_SHA_HEX];
	snprintf(path, sizeof(path), "blobs/%.2s/%s", a->sha256, a->sha256);
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_ARTIFACT_INSERT, &st, e)) != 0)
		return rc;
	store__bind_text(st, 1, id);
	store__bind_text(st, 2, a->name);
	sqlite3_bind_int(st, 3, input);
	sqlite3_bind_int64(st, 4, a->size);
	store__bind_text(st, 5, a->sha256);
	store__bind_text(st, 6, path);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
		return sd_err(e, SD_ECONFLICT, "job %s already has an artifact named '%s'", id,
			      a->name);
	return rc == SQLITE_DONE ? 0 : store__sqlerr(&s->w, rc, e, "insert artifact");
}

int store_job_create(store_t *s, const store_job_new_t *n, char id[STORE_ID_LEN + 1],
		     sd_error_t *e)
{
	if (!n->stage || !n->stage[0])
		return sd_err(e, SD_EUSAGE, "a job needs a stage");
	char nid[STORE_ID_LEN + 1];
	int rc = store__id_new(s, nid, e);
	if (rc)
		return rc;
	int64_t now = sd_now_ms(), ver;
	if ((rc = store__begin(&s->w, true, e)) != 0)
		return rc;
	if ((rc = store__version_next(s, &ver, e)) != 0)
		return fail(s, rc);
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_JOB_INSERT, &st, e)) != 0)
		return fail(s, rc);
	store__bind_text(st, 1, nid);
	store__bind_text(st, 2, n->stage);
	store__bind_text(st, 3, str_or_empty(n->tenant));
	store__bind_text(st, 4, str_or_empty(n->name));
	store__bind_text(st, 5, str_or_empty(n->outputs));
	store__bind_text(st, 6, str_or_empty(n->format));
	store__bind_text(st, 7, str_or_empty(n->record_from));
	sqlite3_bind_int64(st, 8, now);
	sqlite3_bind_int64(st, 9, ver);
	sqlite3_bind_int(st, 10, n->emit_record);
	if ((rc = store__run(&s->w, st, e, "insert job")) != 0)
		return fail(s, rc);
	for (size_t i = 0; i < n->n_inputs; i++)
		if ((rc = artifact_insert(s, nid, &n->inputs[i], true, e)) != 0)
			return fail(s, rc);
	char text[128];
	snprintf(text, sizeof(text), "created (stage %s)", n->stage);
	if ((rc = event_insert(s, nid, now, text, e)) != 0)
		return fail(s, rc);
	if ((rc = store__commit(&s->w, e)) != 0)
		return rc;
	for (size_t i = 0; i < n->n_inputs; i++)
		store__blob_unpin(s, n->inputs[i].sha256);
	memcpy(id, nid, sizeof(nid));
	return 0;
}

/* Collects the distinct blobs that a statement bound to job id yields. */
static int collect_shas(store_t *s, store__sql_t q, const char *id,
			char (**shas)[STORE_SHA_HEX + 1], size_t *n, sd_error_t *e)
{
	*shas = NULL;
	*n = 0;
	sqlite3_stmt *st;
	int rc = store__stmt(&s->w, q, &st, e);
	if (rc)
		return rc;
	store__bind_text(st, 1, id);
	size_t cap = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *sha = (const char *)sqlite3_column_text(st, 0);
		if (!store__sha_ok(sha))
			continue;
		if (*n == cap) {
			size_t ncap = cap ? 2 * cap : 4;
			void *p = realloc(*shas, ncap * sizeof(**shas));
			if (!p) {
				sqlite3_reset(st);
				free(*shas);
				*shas = NULL;
				*n = 0;
				return sd_err(e, SD_ENOMEM, "store: out of memory");
			}
			*shas = p;
			cap = ncap;
		}
		memcpy((*shas)[(*n)++], sha, STORE_SHA_HEX + 1);
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		free(*shas);
		*shas = NULL;
		*n = 0;
		return store__sqlerr(&s->w, rc, e, "list blobs");
	}
	return 0;
}

static void release_all(store_t *s, char (*shas)[STORE_SHA_HEX + 1], size_t n)
{
	for (size_t i = 0; i < n; i++)
		store__blob_release(s, shas[i]);
	free(shas);
}

/* The requeue of a running job drops the outputs of the interrupted attempt. */
static int drop_outputs(store_t *s, const char *id, char (**shas)[STORE_SHA_HEX + 1],
			size_t *n, sd_error_t *e)
{
	int rc = collect_shas(s, STORE__SQL_JOB_OUTPUT_BLOBS, id, shas, n, e);
	sqlite3_stmt *st;
	if (!rc)
		rc = store__stmt(&s->w, STORE__SQL_JOB_OUTPUTS_DELETE, &st, e);
	if (!rc) {
		store__bind_text(st, 1, id);
		rc = store__run(&s->w, st, e, "drop outputs");
	}
	if (!rc)
		rc = store__stmt(&s->w, STORE__SQL_JOB_RECORD_DELETE, &st, e);
	if (!rc) {
		store__bind_text(st, 1, id);
		rc = store__run(&s->w, st, e, "drop record");
	}
	if (rc) {
		free(*shas);
		*shas = NULL;
		*n = 0;
	}
	return rc;
}

int store_job_transition(store_t *s, const char *id, store_state_t to,
			 const store_job_update_t *upd, const char *note, sd_error_t *e)
{
	if (!store_state_name(to))
		return sd_err(e, SD_EUSAGE, "invalid target state %d", (int)to);
	int64_t now = sd_now_ms(), ver;
	store_state_t from;
	char (*shas)[STORE_SHA_HEX + 1] = NULL;
	size_t n_shas = 0;
	int rc = store__begin(&s->w, true, e);
	if (rc)
		return rc;
	if ((rc = job_state(s, id, &from, NULL, e)) != 0)
		return fail(s, rc);
	if (!store_transition_ok(from, to))
		return fail(s, sd_err(e, SD_ECONFLICT, "job %s cannot go from %s to %s", id,
				      store_state_name(from), store_state_name(to)));
	if (from == STORE_RUNNING && to == STORE_QUEUED &&
	    (rc = drop_outputs(s, id, &shas, &n_shas, e)) != 0)
		return fail(s, rc);
	if ((rc = store__version_next(s, &ver, e)) != 0)
		goto undo;
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_JOB_SET_STATE, &st, e)) != 0)
		goto undo;
	store__bind_text(st, 1, id);
	store__bind_text(st, 2, store_state_name(to));
	sqlite3_bind_int(st, 3, to == STORE_RUNNING);
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_int64(st, 5, ver);
	store__bind_text(st, 6, upd ? upd->result_json : NULL);
	store__bind_text(st, 7, upd ? upd->error_code : NULL);
	store__bind_text(st, 8, upd ? upd->error_msg : NULL);
	if ((rc = store__run(&s->w, st, e, "update job state")) != 0)
		goto undo;
	char *text = NULL;
	if (asprintf(&text, "%s -> %s%s%s", store_state_name(from), store_state_name(to),
		     note && note[0] ? ": " : "", note ? note : "") < 0) {
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto undo;
	}
	rc = event_insert(s, id, now, text, e);
	free(text);
	if (rc)
		goto undo;
	if ((rc = store__commit(&s->w, e)) != 0) {
		free(shas);
		return rc;
	}
	store__log_transition(id, from, to, note, upd && upd->alarm);
	release_all(s, shas, n_shas);
	return 0;
undo:
	free(shas);
	return fail(s, rc);
}

int store_job_progress(store_t *s, const char *id, int progress, sd_error_t *e)
{
	progress = progress < 0 ? 0 : progress > 100 ? 100 : progress;
	int rc = store__begin(&s->w, true, e);
	if (rc)
		return rc;
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_JOB_PROGRESS_GET, &st, e)) != 0)
		return fail(s, rc);
	store__bind_text(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		sqlite3_reset(st);
		return fail(s, sd_err(e, SD_ENOTFOUND, "job %s not found", id ? id : "(null)"));
	}
	if (rc != SQLITE_ROW) {
		int code = store__sqlerr(&s->w, rc, e, "read progress");
		sqlite3_reset(st);
		return fail(s, code);
	}
	const char *state = (const char *)sqlite3_column_text(st, 0);
	bool running = state && strcmp(state, "running") == 0;
	int old = sqlite3_column_int(st, 1);
	sqlite3_reset(st);
	/* A stale report (the job was canceled meanwhile) or no change: nothing to write,
	 * and no version bump to wake long-polls for nothing. */
	if (!running || old == progress) {
		store__rollback(&s->w);
		return 0;
	}
	int64_t ver;
	if ((rc = store__version_next(s, &ver, e)) != 0)
		return fail(s, rc);
	if ((rc = store__stmt(&s->w, STORE__SQL_JOB_PROGRESS, &st, e)) != 0)
		return fail(s, rc);
	store__bind_text(st, 1, id);
	sqlite3_bind_int(st, 2, progress);
	sqlite3_bind_int64(st, 3, sd_now_ms());
	sqlite3_bind_int64(st, 4, ver);
	if ((rc = store__run(&s->w, st, e, "update progress")) != 0)
		return fail(s, rc);
	return store__commit(&s->w, e);
}

/* Opens a write transaction on a running job (outputs are only added while running). */
static int begin_running(store_t *s, const char *id, const char *what, sd_error_t *e)
{
	int rc = store__begin(&s->w, true, e);
	if (rc)
		return rc;
	store_state_t st;
	if ((rc = job_state(s, id, &st, NULL, e)) != 0)
		return fail(s, rc);
	if (st != STORE_RUNNING)
		return fail(s, sd_err(e, SD_ECONFLICT, "job %s is %s; %s only while running", id,
				      store_state_name(st), what));
	return 0;
}

int store_artifact_add(store_t *s, const char *job_id, const store_artifact_t *a,
		       sd_error_t *e)
{
	int rc = begin_running(s, job_id, "outputs are added", e);
	if (rc)
		return rc;
	int64_t now = sd_now_ms();
	if ((rc = artifact_insert(s, job_id, a, false, e)) != 0 ||
	    (rc = job_touch(s, job_id, now, e)) != 0)
		return fail(s, rc);
	if ((rc = store__commit(&s->w, e)) != 0)
		return rc;
	store__blob_unpin(s, a->sha256);
	return 0;
}

int store_record_set(store_t *s, const char *job_id, const char *sha256, sd_error_t *e)
{
	int rc = begin_running(s, job_id, "a record is set", e);
	if (rc)
		return rc;
	int64_t now = sd_now_ms();
	if ((rc = store__blob_exists(s, sha256, e)) != 0)
		return fail(s, rc);
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_RECORD_INSERT, &st, e)) != 0)
		return fail(s, rc);
	store__bind_text(st, 1, job_id);
	store__bind_text(st, 2, sha256);
	sqlite3_bind_int64(st, 3, now);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
		return fail(s, sd_err(e, SD_ECONFLICT, "job %s already has a record", job_id));
	if (rc != SQLITE_DONE)
		return fail(s, store__sqlerr(&s->w, rc, e, "insert record"));
	if ((rc = job_touch(s, job_id, now, e)) != 0)
		return fail(s, rc);
	return store__commit(&s->w, e);
}

int store_event_add(store_t *s, const char *job_id, const char *text, sd_error_t *e)
{
	int rc = store__begin(&s->w, true, e);
	if (rc)
		return rc;
	int64_t now = sd_now_ms();
	if ((rc = job_state(s, job_id, &(store_state_t){0}, NULL, e)) != 0 ||
	    (rc = event_insert(s, job_id, now, text ? text : "", e)) != 0 ||
	    (rc = job_touch(s, job_id, now, e)) != 0)
		return fail(s, rc);
	return store__commit(&s->w, e);
}

int store_job_delete(store_t *s, const char *id, sd_error_t *e)
{
	int rc = store__begin(&s->w, true, e);
	if (rc)
		return rc;
	store_state_t state;
	if ((rc = job_state(s, id, &state, NULL, e)) != 0)
		return fail(s, rc);
	if (!store__terminal(state))
		return fail(s, sd_err(e, SD_ECONFLICT, "job %s is %s; cancel it before deleting",
				      id, store_state_name(state)));
	/* The deletion is a change like any other: it takes a version, so it orders after
	 * every earlier change (the event stream numbers its events by version). */
	int64_t ver;
	if ((rc = store__version_next(s, &ver, e)) != 0)
		return fail(s, rc);
	char (*shas)[STORE_SHA_HEX + 1] = NULL;
	size_t n = 0;
	if ((rc = collect_shas(s, STORE__SQL_JOB_BLOBS, id, &shas, &n, e)) != 0)
		return fail(s, rc);
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_JOB_DELETE, &st, e)) == 0) {
		store__bind_text(st, 1, id);
		rc = store__run(&s->w, st, e, "delete job"); /* events, artifacts cascade */
	}
	if (rc) {
		free(shas);
		return fail(s, rc);
	}
	if ((rc = store__commit(&s->w, e)) != 0) {
		free(shas);
		return rc;
	}
	release_all(s, shas, n);
	return 0;
}

/* Ids a statement yields, bound with one int64 (or none). */
static int collect_ids(store_t *s, store__sql_t q, bool bind, int64_t arg,
		       char (**ids)[STORE_ID_LEN + 1], int **attempts, size_t *n, sd_error_t *e)
{
	*ids = NULL;
	if (attempts)
		*attempts = NULL;
	*n = 0;
	sqlite3_stmt *st;
	int rc = store__stmt(&s->w, q, &st, e);
	if (rc)
		return rc;
	if (bind)
		sqlite3_bind_int64(st, 1, arg);
	size_t cap = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		if (!id || strlen(id) != STORE_ID_LEN)
			continue;
		if (*n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			void *p = realloc(*ids, ncap * sizeof(**ids));
			void *q2 = p && attempts ? realloc(*attempts, ncap * sizeof(int)) : p;
			if (p)
				*ids = p;
			if (attempts && q2)
				*attempts = q2;
			if (!p || !q2) {
				rc = SQLITE_NOMEM;
				break;
			}
			cap = ncap;
		}
		memcpy((*ids)[*n], id, STORE_ID_LEN + 1);
		if (attempts)
			(*attempts)[*n] = sqlite3_column_int(st, 1);
		(*n)++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		free(*ids);
		*ids = NULL;
		if (attempts) {
			free(*attempts);
			*attempts = NULL;
		}
		*n = 0;
		return rc == SQLITE_NOMEM ? sd_err(e, SD_ENOMEM, "store: out of memory")
					  : store__sqlerr(&s->w, rc, e, "list jobs");
	}
	return 0;
}

int store_recover(store_t *s, int max_attempts, int *requeued, int *failed, sd_error_t *e)
{
	*requeued = *failed = 0;
	char (*ids)[STORE_ID_LEN + 1];
	int *attempts;
	size_t n;
	int rc = collect_ids(s, STORE__SQL_JOBS_RUNNING, false, 0, &ids, &attempts, &n, e);
	if (rc)
		return rc;
	for (size_t i = 0; i < n && !rc; i++) {
		if (attempts[i] >= max_attempts) {
			char msg[200];
			snprintf(msg, sizeof(msg),
				 "the daemon stopped while running this job %d times in a row "
				 "(max_attempts %d); it is not run again, in case its input is "
				 "what stops it",
				 attempts[i], max_attempts);
			store_job_update_t upd = {.error_code = sd_err_type(SD_EATTEMPTS),
						  .error_msg = msg};
			rc = store_job_transition(s, ids[i], STORE_FAILED, &upd,
						  "interrupted; attempts exhausted", e);
			*failed += !rc;
		} else {
			rc = store_job_transition(s, ids[i], STORE_QUEUED, NULL,
						  "interrupted; requeued at start", e);
			*requeued += !rc;
		}
	}
	free(ids);
	free(attempts);
	return rc;
}

int store_queued(store_t *s, size_t max, char (**ids)[STORE_ID_LEN + 1], size_t *n,
		 sd_error_t *e)
{
	if (max > INT64_MAX)
		max = INT64_MAX;
	return collect_ids(s, STORE__SQL_JOBS_QUEUED, true, (int64_t)max, ids, NULL, n, e);
}

int store_sweep(store_t *s, int64_t cutoff_ms, int *n, sd_error_t *e)
{
	*n = 0;
	char (*ids)[STORE_ID_LEN + 1];
	size_t cnt;
	int rc = collect_ids(s, STORE__SQL_JOBS_EXPIRED, true, cutoff_ms, &ids, NULL, &cnt, e);
	if (rc)
		return rc;
	for (size_t i = 0; i < cnt && !rc; i++) {
		rc = store_job_delete(s, ids[i], e);
		*n += !rc;
	}
	free(ids);
	return rc;
}
