/*
 * store_read: reads on a reader connection (see store.h). Any thread, each with its
 * own store_reader_t; a reader is never shared between threads at the same time.
 *
 * A read that takes several statements (a job and its artifacts, a list and its
 * ETag) runs in one read transaction, so it sees one snapshot: WAL readers never
 * block the writer and never see half of a write transaction.
 *
 * Tenant scoping is in the SQL ("?2 IS NULL OR tenant = ?2"): a job of another
 * tenant is indistinguishable from a missing one (SD_ENOTFOUND), so ids do not leak
 * across tenants.
 */
#include "store/store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


int store_reader_open(store_t *s, store_reader_t **out, sd_error_t *e)
{
	*out = NULL;
	store_reader_t *r = calloc(1, sizeof(*r));
	if (!r)
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	int rc = store__conn_open(&r->c, s->db_path, false, e);
	if (rc) {
		free(r);
		return rc;
	}
	*out = r;
	return 0;
}

void store_reader_close(store_reader_t *r)
{
	if (!r)
		return;
	store__conn_close(&r->c);
	free(r);
}

void store_job_clear(store_job_t *j)
{
	if (!j)
		return;
	free(j->stage);
	free(j->tenant);
	free(j->name);
	free(j->outputs);
	free(j->format);
	free(j->record_from);
	free(j->result_json);
	free(j->error_code);
	free(j->error_msg);
	free(j->artifacts);
	memset(j, 0, sizeof(*j));
}

static int col_dup(sqlite3_stmt *st, int i, bool nullable, char **out)
{
	const char *v = (const char *)sqlite3_column_text(st, i);
	if (!v && nullable) {
		*out = NULL;
		return 0;
	}
	*out = strdup(v ? v : "");
	return *out ? 0 : -1;
}

/* Fills j from a JOB_GET / JOB_LIST row (same column order). */
static int job_from_row(sqlite3_stmt *st, store_job_t *j, sd_error_t *e)
{
	memset(j, 0, sizeof(*j));
	const char *id = (const char *)sqlite3_column_text(st, 0);
	snprintf(j->id, sizeof(j->id), "%s", id ? id : "");
	int bad = col_dup(st, 1, false, &j->stage) | col_dup(st, 2, false, &j->tenant) |
		  col_dup(st, 3, false, &j->name) | col_dup(st, 4, false, &j->outputs) |
		  col_dup(st, 5, false, &j->format) | col_dup(st, 6, false, &j->record_from) |
		  col_dup(st, 10, true, &j->result_json) |
		  col_dup(st, 11, true, &j->error_code) | col_dup(st, 12, true, &j->error_msg);
	if (bad) {
		store_job_clear(j);
		return sd_err(e, SD_ENOMEM, "store: out of memory");
	}
	if (store_state_parse((const char *)sqlite3_column_text(st, 7), &j->state, NULL)) {
		sd_err(e, SD_EIO, "store: job %s has a corrupt state", j->id);
		store_job_clear(j);
		return SD_EIO;
	}
	j->attempts = sqlite3_column_int(st, 8);
	j->progress = sqlite3_column_int(st, 9);
	j->created_ms = sqlite3_column_int64(st, 13);
	j->updated_ms = sqlite3_column_int64(st, 14);
	j->started_ms = sqlite3_column_int64(st, 15);
	j->finished_ms = sqlite3_column_int64(st, 16);
	j->emit_record = sqlite3_column_int(st, 18) != 0;
	j->version = sqlite3_column_int64(st, 17);
	j->input_bytes = sqlite3_column_int64(st, 19);
	return 0;
}

static int load_artifacts(store_reader_t *r, store_job_t *j, sd_error_t *e)
{
	sqlite3_stmt *st;
	int rc = store__stmt(&r->c, STORE__SQL_JOB_ARTIFACTS, &st, e);
	if (rc)
		return rc;
	store__bind_text(st, 1, j->id);
	size_t cap = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (j->n_artifacts == cap) {
			size_t ncap = cap ? 2 * cap : 4;
			void *p = realloc(j->artifacts, ncap * sizeof(*j->artifacts));
			if (!p) {
				sqlite3_reset(st);
				return sd_err(e, SD_ENOMEM, "store: out of memory");
			}
			j->artifacts = p;
			cap = ncap;
		}
		store_artifact_t *a = &j->artifacts[j->n_artifacts++];
		memset(a, 0, sizeof(*a));
		const char *name = (const char *)sqlite3_column_text(st, 0);
		const char *sha = (const char *)sqlite3_column_text(st, 1);
		snprintf(a->name, sizeof(a->name), "%s", name ? name : "");
		snprintf(a->sha256, sizeof(a->sha256), "%s", sha ? sha : "");
		a->size = sqlite3_column_int64(st, 2);
		a->input = sqlite3_column_int(st, 3) != 0;
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : store__sqlerr(&r->c, rc, e, "read artifacts");
}

int store_job_get(store_reader_t *r, const char *id, const char *tenant, store_job_t *out,
		  sd_error_t *e)
{
	memset(out, 0, sizeof(*out));
	int rc = store__begin(&r->c, false, e);
	if (rc)
		return rc;
	sqlite3_stmt *st;
	if ((rc = store__stmt(&r->c, STORE__SQL_JOB_GET, &st, e)) != 0)
		goto out;
	store__bind_text(st, 1, id);
	store__bind_text(st, 2, tenant);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		rc = job_from_row(st, out, e);
	} else if (rc == SQLITE_DONE) {
		rc = sd_err(e, SD_ENOTFOUND, "job %s not found", id ? id : "(null)");
	} else {
		rc = store__sqlerr(&r->c, rc, e, "read job");
	}
	sqlite3_reset(st);
	if (!rc && (rc = load_artifacts(r, out, e)) != 0)
		store_job_clear(out);
out:
	if (rc) {
		store__rollback(&r->c);
		return rc;
	}
	return store__commit(&r->c, e);
}

int store_job_version(store_reader_t *r, const char *id, const char *tenant,
		      int64_t *version, store_state_t *state, sd_error_t *e)
{
	sqlite3_stmt *st;
	int rc = store__stmt(&r->c, STORE__SQL_JOB_VERSION, &st, e);
	if (rc)
		return rc;
	store__bind_text(st, 1, id);
	store__bind_text(st, 2, tenant);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*version = sqlite3_column_int64(st, 0);
		rc = store_state_parse((const char *)sqlite3_column_text(st, 1), state, NULL)
			     ? sd_err(e, SD_EIO, "store: job %s has a corrupt state", id)
			     : 0;
	} else if (rc == SQLITE_DONE) {
		rc = sd_err(e, SD_ENOTFOUND, "job %s not found", id ? id : "(null)");
	} else {
		rc = store__sqlerr(&r->c, rc, e, "read job version");
	}
	sqlite3_reset(st);
	return rc;
}

static void bind_filter(sqlite3_stmt *st, const store_filter_t *f)
{
	store__bind_text(st, 1, f->tenant);
	store__bind_text(st, 2, f->state ? store_state_name(*f->state) : NULL);
	store__bind_text(st, 3, f->stage);
}

int store_job_list(store_reader_t *r, const store_filter_t *f, store_job_t **jobs,
		   size_t *n, char **etag, sd_error_t *e)
{
	*jobs = NULL;
	*n = 0;
	*etag = NULL;
	if (f->state && !store_state_name(*f->state))
		return sd_err(e, SD_EUSAGE, "invalid state filter %d", (int)*f->state);
	size_t limit = f->limit == 0		   ? STORE_LIST_DEFAULT
		       : f->limit > STORE_LIST_MAX ? STORE_LIST_MAX
						   : f->limit;
	store_job_t *list = NULL;
	size_t cnt = 0;
	char *tag = NULL;
	int rc = store__begin(&r->c, false, e);
	if (rc)
		return rc;
	/* The ETag covers every job matching the filters, not just this page: a new job
	 * or a change anywhere in the listing changes count or max version. */
	sqlite3_stmt *st;
	if ((rc = store__stmt(&r->c, STORE__SQL_JOB_LIST_TAG, &st, e)) != 0)
		goto fail;
	bind_filter(st, f);
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		rc = store__sqlerr(&r->c, rc, e, "list etag");
		sqlite3_reset(st);
		goto fail;
	}
	if (asprintf(&tag, "%lld-%lld", (long long)sqlite3_column_int64(st, 0),
		     (long long)sqlite3_column_int64(st, 1)) < 0) {
		tag = NULL;
		sqlite3_reset(st);
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto fail;
	}
	sqlite3_reset(st);
	if ((rc = store__stmt(&r->c, STORE__SQL_JOB_LIST, &st, e)) != 0)
		goto fail;
	if (!(list = calloc(limit, sizeof(*list)))) {
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto fail;
	}
	bind_filter(st, f);
	/* "~" sorts after every Crockford digit: no cursor means "from the newest". */
	store__bind_text(st, 4, f->after && f->after[0] ? f->after : "~");
	sqlite3_bind_int64(st, 5, (int64_t)limit);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && cnt < limit) {
		if ((rc = job_from_row(st, &list[cnt], e)) != 0) {
			sqlite3_reset(st);
			goto fail;
		}
		cnt++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
		rc = store__sqlerr(&r->c, rc, e, "list jobs");
		goto fail;
	}
	if ((rc = store__commit(&r->c, e)) != 0)
		goto fail_done;
	*jobs = list;
	*n = cnt;
	*etag = tag;
	return 0;
fail:
	store__rollback(&r->c);
fail_done:
	for (size_t i = 0; i < cnt; i++)
		store_job_clear(&list[i]);
	free(list);
	free(tag);
	return rc;
}

/* Event text is one line each: embedded line breaks would forge extra entries. */
static void one_line(char *p)
{
	for (; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

int store_event_log(store_reader_t *r, const char *id, const char *tenant, char **text,
		    sd_error_t *e)
{
	*text = NULL;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = NULL;
	int rc = store__begin(&r->c, false, e);
	if (rc)
		return rc;
	sqlite3_stmt *st;
	if ((rc = store__stmt(&r->c, STORE__SQL_JOB_EXISTS, &st, e)) != 0)
		goto fail;
	store__bind_text(st, 1, id);
	store__bind_text(st, 2, tenant);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc != SQLITE_ROW) {
		rc = rc == SQLITE_DONE
			     ? sd_err(e, SD_ENOTFOUND, "job %s not found", id ? id : "(null)")
			     : store__sqlerr(&r->c, rc, e, "read job");
		goto fail;
	}
	if (!(f = open_memstream(&buf, &len))) {
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto fail;
	}
	if ((rc = store__stmt(&r->c, STORE__SQL_EVENTS, &st, e)) != 0)
		goto fail;
	store__bind_text(st, 1, id);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t ms = sqlite3_column_int64(st, 0);
		time_t t = (time_t)(ms / 1000);
		struct tm tm;
		char when[32] = "";
		if (gmtime_r(&t, &tm))
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
		const char *txt = (const char *)sqlite3_column_text(st, 1);
		char *line = strdup(txt ? txt : "");
		if (!line) {
			sqlite3_reset(st);
			rc = sd_err(e, SD_ENOMEM, "store: out of memory");
			goto fail;
		}
		one_line(line);
		fprintf(f, "%s.%03dZ %s\n", when, (int)(ms % 1000), line);
		free(line);
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		rc = store__sqlerr(&r->c, rc, e, "read events");
		goto fail;
	}
	int bad = ferror(f);
	if (fclose(f) != 0 || bad) {
		f = NULL;
		rc = sd_err(e, SD_ENOMEM, "store: out of memory");
		goto fail;
	}
	f = NULL;
	if ((rc = store__commit(&r->c, e)) != 0) {
		free(buf);
		return rc;
	}
	*text = buf;
	return 0;
fail:
	if (f)
		fclose(f);
	free(buf);
	store__rollback(&r->c);
	return rc;
}

int store_record_get(store_reader_t *r, const char *job_id, const char *tenant,
		     char sha256[STORE_SHA_HEX + 1], sd_error_t *e)
{
	sqlite3_stmt *st;
	int rc = store__stmt(&r->c, STORE__SQL_RECORD_GET, &st, e);
	if (rc)
		return rc;
	store__bind_text(st, 1, job_id);
	store__bind_text(st, 2, tenant);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *sha = (const char *)sqlite3_column_text(st, 0);
		snprintf(sha256, STORE_SHA_HEX + 1, "%s", sha ? sha : "");
		rc = 0;
	} else if (rc == SQLITE_DONE) {
		rc = sd_err(e, SD_ENOTFOUND, "job %s has no record", job_id ? job_id : "(null)");
	} else {
		rc = store__sqlerr(&r->c, rc, e, "read record");
	}
	sqlite3_reset(st);
	return rc;
}

int store_version_current(store_reader_t *r, int64_t *v, sd_error_t *e)
{
	return store__scalar(&r->c, STORE__SQL_VERSION_GET, NULL, v, e, "read version");
}

int store_job_counts(store_reader_t *r, int64_t counts[STORE_STATE__COUNT], sd_error_t *e)
{
	for (int i = 0; i < STORE_STATE__COUNT; i++)
		counts[i] = 0;
	sqlite3_stmt *st;
	int rc = store__stmt(&r->c, STORE__SQL_JOB_COUNTS, &st, e);
	if (rc)
		return rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		store_state_t s;
		if (store_state_parse((const char *)sqlite3_column_text(st, 0), &s, NULL) == 0)
			counts[s] = sqlite3_column_int64(st, 1);
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : store__sqlerr(&r->c, rc, e, "count jobs");
}

/* Sizes come from the artifact rows, not from stat(2) of each file: a scrape then
 * costs one indexed scan, however many blobs there are. A blob's content is its name,
 * so every row naming it states the same size; a record is always an artifact too. */
int store_blob_usage(store_reader_t *r, int64_t *files, int64_t *bytes, sd_error_t *e)
{
	*files = *bytes = 0;
	sqlite3_stmt *st;
	int rc = store__stmt(&r->c, STORE__SQL_BLOB_USAGE, &st, e);
	if (rc)
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*files = sqlite3_column_int64(st, 0);
		*bytes = sqlite3_column_int64(st, 1);
	}
	sqlite3_reset(st);
	return rc == SQLITE_ROW ? 0 : store__sqlerr(&r->c, rc, e, "measure the blobs");
}
