/*
 * api_jobs: the job endpoints (see api_int.h).
 *
 * Reads go through a store reader per HTTP thread. Pollers ask for the same job over and
 * over, so each thread also keeps the bodies it rendered, keyed by (id, version).
 * Long-polls suspend their connection (no thread held) in a list the loop thread walks
 * when a job changes (api_job_changed) or a deadline passes (api_poll_expire).
 * Uploads: the first call refuses what the headers already condemn, body bytes go to
 * api_upload (multipart parse, blobs), and the last call commits the blobs and hands the
 * job to the loop thread.
 */
#include "api/api_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/api_json.h"
#include "api/api_json_job.h"
#include "common/sd_log.h"
#include "common/sd_str.h"
#include "common/sd_time.h"
#include "prune/stage.h"

/* ---- per-thread state: a store reader and rendered job bodies ---- */

/*
 * Pollers ask for the same job over and over; a job's body only changes with its
 * version, so each HTTP thread keeps the last bodies it rendered, keyed by (id,
 * version), and answers a repeat with a copy instead of three queries and a JSON
 * round trip.
 */
#define BODY_CACHE 32

typedef struct thread_ctx {
	store_reader_t *reader;
	struct cached {
		char id[STORE_ID_LEN + 1];
		int64_t version;
		char *body;
		size_t len;
	} cache[BODY_CACHE];
} thread_ctx_t;

void api__thread_ctx_free(void *p)
{
	thread_ctx_t *t = p;
	store_reader_close(t->reader);
	for (int i = 0; i < BODY_CACHE; i++)
		free(t->cache[i].body);
	free(t);
}

static thread_ctx_t *api__thread_ctx(api_t *a, sd_error_t *e)
{
	thread_ctx_t *t = pthread_getspecific(a->reader_key);
	if (t)
		return t;
	t = calloc(1, sizeof(*t));
	if (!t) {
		sd_err(e, SD_ENOMEM, "out of memory");
		return NULL;
	}
	if (store_reader_open(a->store, &t->reader, e)) {
		free(t);
		return NULL;
	}
	pthread_setspecific(a->reader_key, t);
	return t;
}

store_reader_t *api__reader(api_t *a, sd_error_t *e)
{
	thread_ctx_t *t = api__thread_ctx(a, e);
	return t ? t->reader : NULL;
}

static struct cached *cache_slot(thread_ctx_t *t, const char *id)
{
	uint32_t h = 2166136261u;
	for (const char *p = id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return &t->cache[h % BODY_CACHE];
}

/* ---- jobs ---- */

static void job_etag(const char *id, int64_t version, char *buf, size_t cap)
{
	snprintf(buf, cap, "\"%s-v%" PRId64 "\"", id, version);
}

/* The version of job id as the caller may see it: from the version map, else (a job
 * unchanged since the daemon started, or a full map) from the store. */
static int job_version(api_t *a, thread_ctx_t *t, const char *id, const char *tenant,
		       int64_t *version, sd_error_t *e)
{
	switch (api_vmap_get(a->vmap, id, tenant, version)) {
	case 1:
		return 0;
	case -1:
		return sd_err(e, SD_ENOTFOUND, "job %s not found", id);
	}
	store_state_t st;
	return store_job_version(t->reader, id, tenant, version, &st, e);
}

/* Answers with the job; version is what the caller just read, or -1 to read it here. */
static int send_job(api_t *a, req_t *r, struct MHD_Connection *c, const char *id, int status,
		    bool location, int64_t version)
{
	sd_error_t e;
	thread_ctx_t *t = api__thread_ctx(a, &e);
	if (!t || (version < 0 && job_version(a, t, id, r->tenant, &version, &e)))
		return api__send_problem(a, r, c, &e);
	struct cached *slot = cache_slot(t, id);
	if (!slot->body || slot->version != version || strcmp(slot->id, id)) {
		store_job_t j = {0};
		if (store_job_get(t->reader, id, r->tenant, &j, &e))
			return api__send_problem(a, r, c, &e);
		json_t *doc = api_json_job(&j, true);
		char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
		json_decref(doc);
		/* Cache what was read: j.version may be newer than the probe's. */
		version = j.version;
		store_job_clear(&j);
		if (!body)
			return MHD_NO;
		free(slot->body);
		slot->body = body;
		slot->len = strlen(body);
		slot->version = version;
		snprintf(slot->id, sizeof(slot->id), "%s", id);
	}
	char etag[API_PARAM_MAX + 64];
	job_etag(id, version, etag, sizeof(etag));
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(slot->len, slot->body, MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "ETag", etag);
	if (location) {
		char loc[64];
		snprintf(loc, sizeof(loc), "/v1/jobs/%s", id);
		MHD_add_response_header(resp, "Location", loc);
	}
	return api__queue(a, r, c, status, resp, slot->len);
}

static int not_modified(api_t *a, req_t *r, struct MHD_Connection *c, const char *etag)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "ETag", etag);
	return api__queue(a, r, c, 304, resp, 0);
}

/* Registers a long-poll; called with a->mu held. False when out of memory: the poll is
 * then answered at once. */
static bool waiter_add(api_t *a, req_t *r, struct MHD_Connection *c)
{
	waiter_t *w = calloc(1, sizeof(*w));
	if (!w)
		return false;
	w->conn = c;
	w->req = r;
	w->next = a->waiters;
	a->waiters = w;
	if (!r->suspended) {
		r->suspended = true;
		a->polls++;
	}
	MHD_suspend_connection(c);
	return true;
}

/* A long-poll's request is complete: its answer has been sent (or its connection is
 * gone). api_stop waits for these, so no answer is cut off by the server stopping. */
void api__poll_done(api_t *a, req_t *r)
{
	if (!r->suspended)
		return;
	r->suspended = false;
	pthread_mutex_lock(&a->mu);
	if (--a->polls == 0)
		pthread_cond_broadcast(&a->polls_done);
	pthread_mutex_unlock(&a->mu);
}

/*
 * GET /v1/jobs/{id}, with ?wait=SECONDS a long-poll: held while the job's ETag equals
 * If-None-Match, answered as soon as it differs (or 304 at the deadline). Without
 * If-None-Match there is nothing to wait for, so it answers at once.
 */
int api__h_job_get(api_t *a, req_t *r, struct MHD_Connection *c)
{
	const char *id = r->params[0];
	sd_error_t e;
	thread_ctx_t *t = api__thread_ctx(a, &e);
	if (!t)
		return api__send_problem(a, r, c, &e);
	const char *inm = api__header(c, "If-None-Match");
	const char *wait = api__query(c, "wait");
	if (wait && !r->deadline_ms) {
		char *end;
		long s = strtol(wait, &end, 10);
		if (!wait[0] || *end || s < 0 || s > WAIT_MAX_S || wait[0] == '+' || wait[0] == ' ')
			return api__fail(a, r, c, SD_EUSAGE, "wait must be a whole number of seconds, 0 to %d",
				    WAIT_MAX_S);
		r->deadline_ms = sd_now_ms() + 1000 * s;
	}
	bool poll = wait && inm && !atomic_load(&a->stopping);
	/* The lock orders this read against api_job_changed only for long-polls. */
	if (poll)
		pthread_mutex_lock(&a->mu);
	int64_t version;
	int rc = job_version(a, t, id, r->tenant, &version, &e);
	char etag[API_PARAM_MAX + 64];
	if (!rc)
		job_etag(id, version, etag, sizeof(etag));
	/* stopping is read again under the lock: api_stop sets it before it takes the lock
	 * to resume every waiter, so no poll can suspend after that. */
	if (!rc && poll && !atomic_load(&a->stopping) && api_etag_match(inm, etag) &&
	    sd_now_ms() < r->deadline_ms && waiter_add(a, r, c)) {
		pthread_mutex_unlock(&a->mu);
		return MHD_YES;
	}
	if (poll)
		pthread_mutex_unlock(&a->mu);
	if (rc)
		return api__send_problem(a, r, c, &e);
	if (api_etag_match(inm, etag))
		return not_modified(a, r, c, etag);
	return send_job(a, r, c, id, 200, false, version);
}

/*
 * A page stops early, after at least one job, once its jobs hold about this many bytes
 * of text: a name may take 64 KiB and a full job embeds its result (hundreds of KB for
 * real models), so 200 of them made pages of tens of MB that took an HTTP thread a
 * second to render and stayed in memory until a client that never read them went.
 */
#define LIST_PAGE_BYTES ((size_t)1 << 20)

/* Roughly what a job adds to a page: its free-form text plus 1 KiB for the rest. */
static size_t job_page_bytes(const store_job_t *j, bool brief)
{
	size_t n = 1024 + strlen(j->name) + strlen(j->outputs);
	if (!brief)
		n += (j->result_json ? strlen(j->result_json) : 0) +
		     (j->error_msg ? strlen(j->error_msg) : 0);
	return n;
}

int api__h_jobs_list(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	store_reader_t *rd = api__reader(a, &e);
	if (!rd)
		return api__send_problem(a, r, c, &e);
	store_filter_t f = {.tenant = r->tenant, .limit = STORE_LIST_DEFAULT};
	store_state_t st;
	const char *s = api__query(c, "state"), *lim = api__query(c, "limit");
	if (s && store_state_parse(s, &st, &e))
		return api__send_problem(a, r, c, &e);
	/* brief: the members a list row shows, as a job event carries them; a page of full
	 * jobs embeds every result, which for real models runs to hundreds of KB. */
	const char *view = api__query(c, "view");
	bool brief = view && !strcmp(view, "brief");
	if (view && !brief && strcmp(view, "full"))
		return api__fail(a, r, c, SD_EUSAGE, "view must be 'full' or 'brief'");
	if (s)
		f.state = &st;
	f.stage = api__query(c, "stage");
	if (f.stage && !f.stage[0])
		f.stage = NULL;
	prune_stage_t stage;
	if (f.stage && prune_stage_parse(f.stage, &stage, &e))
		return api__send_problem(a, r, c, &e);
	f.after = api__query(c, "cursor");
	if (f.after && !f.after[0])
		f.after = NULL;
	if (f.after && !store_id_valid(f.after))
		return api__fail(a, r, c, SD_EUSAGE, "cursor '%s' is not a job id from next_cursor",
			    f.after);
	if (lim) {
		char *end;
		long n = strtol(lim, &end, 10);
		if (*end || n < 1 || n > STORE_LIST_MAX)
			return api__fail(a, r, c, SD_EUSAGE, "limit must be 1..%d", STORE_LIST_MAX);
		f.limit = (size_t)n;
	}
	store_job_t *jobs = NULL;
	size_t n = 0;
	char *tag = NULL;
	if (store_job_list(rd, &f, &jobs, &n, &tag, &e))
		return api__send_problem(a, r, c, &e);
	char etag[160];
	snprintf(etag, sizeof(etag), "\"l-%s-%s-%s-%s-%zu%s\"", tag ? tag : "", s ? s : "",
		 f.stage ? f.stage : "", f.after ? f.after : "", f.limit, brief ? "-b" : "");
	free(tag);
	int ret;
	if (api_etag_match(api__header(c, "If-None-Match"), etag)) {
		ret = not_modified(a, r, c, etag);
	} else {
		json_t *doc = json_object(), *arr = json_array();
		size_t shown = 0, bytes = 0;
		for (; shown < n; shown++) {
			bytes += job_page_bytes(&jobs[shown], brief);
			if (shown && bytes > LIST_PAGE_BYTES)
				break;
			json_array_append_new(arr, brief ? api_json_job_head(&jobs[shown])
							 : api_json_job(&jobs[shown], false));
		}
		json_object_set_new(doc, "jobs", arr);
		json_object_set_new(doc, "next_cursor", shown && (shown < n || n == f.limit)
								? json_string(jobs[shown - 1].id)
								: json_null());
		ret = api__send_json(a, r, c, 200, doc, etag);
	}
	for (size_t i = 0; i < n; i++)
		store_job_clear(&jobs[i]);
	free(jobs);
	return ret;
}

int api__h_job_cancel(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	sd_err_clear(&e);
	if (a->ops.cancel(a->ops.ud, r->params[0], r->tenant, &e))
		return api__send_problem(a, r, c, &e);
	return send_job(a, r, c, r->params[0], 200, false, -1);
}

int api__h_job_delete(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	sd_err_clear(&e);
	if (a->ops.remove(a->ops.ud, r->params[0], r->tenant, &e))
		return api__send_problem(a, r, c, &e);
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	return api__queue(a, r, c, 204, resp, 0);
}

int api__h_job_log(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	store_reader_t *rd = api__reader(a, &e);
	char *text = NULL;
	if (!rd || store_event_log(rd, r->params[0], r->tenant, &text, &e))
		return api__send_problem(a, r, c, &e);
	if (!sd_utf8_valid(text, strlen(text))) {
		/* Messages quote names from models; the page promises UTF-8. */
		char *esc = sd_utf8_escape(text);
		free(text);
		if (!(text = esc))
			return MHD_NO;
	}
	return api__send_text(a, r, c, 200, "text/plain; charset=utf-8", text, strlen(text), NULL);
}

int api__h_artifact(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	store_reader_t *rd = api__reader(a, &e);
	store_job_t j = {0};
	if (!rd || store_job_get(rd, r->params[0], r->tenant, &j, &e))
		return api__send_problem(a, r, c, &e);
	const store_artifact_t *art = NULL;
	for (size_t i = 0; i < j.n_artifacts; i++)
		if (strcmp(j.artifacts[i].name, r->params[1]) == 0)
			art = &j.artifacts[i];
	if (!art) {
		store_job_clear(&j);
		return api__fail(a, r, c, SD_ENOTFOUND, "job %s has no artifact '%s'", r->params[0],
			    r->params[1]);
	}
	char etag[STORE_SHA_HEX + 3], sha[STORE_SHA_HEX + 1];
	snprintf(etag, sizeof(etag), "\"%s\"", art->sha256);
	snprintf(sha, sizeof(sha), "%s", art->sha256);
	int64_t size = art->size;
	store_job_clear(&j);
	if (api_etag_match(api__header(c, "If-None-Match"), etag))
		return not_modified(a, r, c, etag);
	char *path = store_blob_path(a->store, sha);
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	free(path);
	if (fd < 0)
		return api__fail(a, r, c, SD_EIO, "artifact '%s' is missing on disk", r->params[1]);
	int64_t from = 0, to = size - 1;
	/* A resumed download whose partial bytes came from another artifact gets it whole. */
	const char *range = api_if_range_holds(api__header(c, "If-Range"), etag)
				    ? api__header(c, "Range")
				    : NULL;
	int rg = api_range_parse(range, size, &from, &to);
	if (rg < 0) {
		close(fd);
		sd_err(&e, SD_ERANGE, "range not satisfiable (artifact has %" PRId64 " bytes)",
		       size);
		size_t len = 0;
		struct MHD_Response *resp = api__problem_response(&e, 416, &len);
		char cr[64];
		snprintf(cr, sizeof(cr), "bytes */%" PRId64, size);
		if (resp)
			MHD_add_response_header(resp, "Content-Range", cr);
		return api__queue(a, r, c, 416, resp, len);
	}
	struct MHD_Response *resp =
		MHD_create_response_from_fd_at_offset64((uint64_t)(to - from + 1), fd, (uint64_t)from);
	if (!resp) {
		close(fd);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
	MHD_add_response_header(resp, "ETag", etag);
	MHD_add_response_header(resp, "Accept-Ranges", "bytes");
	if (rg == 1) {
		char cr[96];
		snprintf(cr, sizeof(cr), "bytes %" PRId64 "-%" PRId64 "/%" PRId64, from, to, size);
		MHD_add_response_header(resp, "Content-Range", cr);
	}
	return api__queue(a, r, c, rg == 1 ? 206 : 200, resp, (uint64_t)(to - from + 1));
}

/* ---- uploads ---- */

/* The record an export names by record_from: the insert job's record, as an input. */
static int record_from_input(api_t *a, req_t *r, const char *job_id, store_artifact_t *rec,
			     sd_error_t *e)
{
	store_reader_t *rd = api__reader(a, e);
	store_job_t src = {0};
	if (!rd || store_job_get(rd, job_id, r->tenant, &src, e))
		return e->code;
	/* The record export reads is the one insert writes, describing what it added. */
	prune_stage_t st;
	bool ok = !prune_stage_parse(src.stage, &st, NULL) && st == PRUNE_STAGE_INSERT &&
		  src.state == STORE_SUCCEEDED;
	memset(rec, 0, sizeof(*rec));
	int rc = ok ? store_record_get(rd, job_id, r->tenant, rec->sha256, e) : 0;
	/* The record is one of the insert job's outputs: its size is known there. */
	for (size_t i = 0; ok && !rc && i < src.n_artifacts; i++)
		if (!src.artifacts[i].input && !strcmp(src.artifacts[i].sha256, rec->sha256))
			rec->size = src.artifacts[i].size;
	store_job_clear(&src);
	if (!ok)
		return sd_err(e, SD_ECONFLICT, "record_from job %s is not a succeeded insert job",
			      job_id);
	if (rc)
		return rc;
	snprintf(rec->name, sizeof(rec->name), "input_record");
	rec->input = true;
	return 0;
}

/*
 * Committing an upload's blobs waits for their hashing and fsyncs them: up to seconds
 * for a GB on a slow disk. The HTTP thread that received the upload also serves other
 * clients' connections, so the commit runs on a thread of its own while the upload's
 * connection is suspended (at most max_uploads at once: each holds an upload slot).
 * The request then comes back through its handler on an HTTP thread, which creates the
 * job: creation goes through the loop thread like every other change.
 */
struct api_commit {
	req_t *r;
	struct MHD_Connection *c;
	api_form_t form;
	store_artifact_t from; /* the record named by record_from */
	store_artifact_t in[API_FILE__COUNT + 1];
	size_t n_in;
	int rc;
	sd_error_t e;
	bool done;     /* the thread has ended its work; set under a->mu */
	bool taken;    /* in[] went to a job, or was released */
};

static void *commit_main(void *p)
{
	struct api_commit *k = p;
	api_t *a = k->r->api;
	k->rc = api_upload_commit(k->r->up, k->in, &k->n_in, &k->e);
	pthread_mutex_lock(&a->mu);
	k->done = true;
	/* After this, the request may end (and k be freed) on the HTTP thread. */
	MHD_resume_connection(k->c);
	if (--a->commits == 0)
		pthread_cond_broadcast(&a->polls_done);
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* Runs the commit on its own thread and suspends the connection; false when no thread
 * could be started (the caller commits inline). */
static bool commit_start(api_t *a, struct api_commit *k)
{
	pthread_attr_t at;
	pthread_t th;
	if (pthread_attr_init(&at))
		return false;
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&at, 256 << 10);
	pthread_mutex_lock(&a->mu);
	a->commits++;
	/* Suspended before the thread can resume it: both under a->mu. */
	MHD_suspend_connection(k->c);
	bool ok = pthread_create(&th, &at, commit_main, k) == 0;
	if (!ok) {
		MHD_resume_connection(k->c);
		a->commits--;
	}
	pthread_mutex_unlock(&a->mu);
	pthread_attr_destroy(&at);
	return ok;
}

void api__commit_free(api_t *a, req_t *r)
{
	struct api_commit *k = r->commit;
	if (!k)
		return;
	/* Committed and never made a job (the client went away meanwhile): their pins and
	 * files go, as for a job refused after its commit. */
	if (k->done && !k->taken && k->n_in && !atomic_load(&a->stopping)) {
		log_info("api", "an upload's client left before its job was created: %zu "
				"file%s released", k->n_in, k->n_in == 1 ? "" : "s");
		a->ops.release(a->ops.ud, k->in, k->n_in);
	}
	free(k);
	r->commit = NULL;
}

void api__commits_join(api_t *a)
{
	pthread_mutex_lock(&a->mu);
	while (a->commits > 0)
		pthread_cond_wait(&a->polls_done, &a->mu);
	pthread_mutex_unlock(&a->mu);
}

/* The upload is complete: validate, commit the blobs (on a thread: see api_commit),
 * create the job. Called twice: when the body is in, and when the commit is done. */
int api__h_jobs_create(api_t *a, req_t *r, struct MHD_Connection *c)
{
	if (r->fail_code)
		return api__send_problem(a, r, c, &r->fail);
	sd_error_t e;
	sd_err_clear(&e);
	struct api_commit *k = r->commit;
	if (!k) {
		if (!(k = r->commit = calloc(1, sizeof(*k))))
			return MHD_NO;
		*k = (struct api_commit){.r = r, .c = c};
		if (api_upload_finish(r->up, &k->form, &e) ||
		    (k->form.record_from && record_from_input(a, r, k->form.record_from, &k->from, &e)))
			return api__send_problem(a, r, c, &e);
		if (commit_start(a, k))
			return MHD_YES; /* back here once commit_main resumes the connection */
		k->rc = api_upload_commit(r->up, k->in, &k->n_in, &k->e);
		k->done = true;
	}
	/* Creating and releasing go through the loop thread, which has stopped by the time
	 * api_stop runs: the blobs stay pinned until the store's next open sweeps them. */
	if (atomic_load(&a->stopping))
		return api__fail(a, r, c, SD_EUNAVAIL, "the daemon is shutting down");
	k->taken = true;
	if (k->rc) {
		a->ops.release(a->ops.ud, k->in, k->n_in); /* the ones committed before the failure */
		return api__send_problem(a, r, c, &k->e);
	}
	const api_form_t *f = &k->form;
	if (f->record_from)
		k->in[k->n_in++] = k->from;
	store_job_new_t nj = {
		.stage = f->stage, .tenant = r->tenant ? r->tenant : "",
		.name = f->name ? f->name : "", .outputs = f->outputs ? f->outputs : "",
		.format = f->format ? f->format : "",
		.record_from = f->record_from ? f->record_from : "", .inputs = k->in,
		.n_inputs = k->n_in, .emit_record = f->emit_record,
	};
	char id[STORE_ID_LEN + 1];
	if (a->ops.create(a->ops.ud, &nj, id, &e))
		return api__send_problem(a, r, c, &e);
	return send_job(a, r, c, id, 202, true, -1);
}

/* Body bytes of an upload: counted against max_upload, then parsed. */
void api__upload_feed(api_t *a, req_t *r, const char *data, size_t n)
{
	r->received += (int64_t)n;
	atomic_fetch_add(&a->upload_bytes, n);
	if (r->fail_code)
		return; /* read and dropped until the end */
	if (r->received > a->conf.max_upload)
		r->fail_code = sd_err(&r->fail, SD_ETOOBIG,
				      "upload is over the limit of %" PRId64 " bytes",
				      a->conf.max_upload);
	else if (api_upload_feed(r->up, data, n, &r->fail))
		r->fail_code = r->fail.code;
	if (r->fail_code) {
		/* Its blobs go now, before the answer: a client that retries after a 507
		 * must find the space they held free again. */
		api_upload_free(r->up);
		r->up = NULL;
	}
}

/* The store's pool freed a buffer of r's blob (a pool thread, no store lock held). */
static void upload_wake(void *ud)
{
	req_t *r = ud;
	api_t *a = r->api;
	pthread_mutex_lock(&a->mu);
	MHD_resume_connection(r->conn);
	if (--a->upload_waits == 0)
		pthread_cond_broadcast(&a->polls_done);
	pthread_mutex_unlock(&a->mu);
}

/* An HTTP thread that slept while the pool wrote an upload's buffers would stall every
 * other connection it serves (a GET waited 30 ms at the 99th percentile during a 1 GB
 * upload). a->mu orders the suspend before upload_wake's resume, and api_stop's wait
 * for upload_waits before the server stops (a suspended connection must not be left). */
bool api__upload_wait(api_t *a, req_t *r, struct MHD_Connection *c, size_t n)
{
	if (!r->up || r->fail_code)
		return false;
	pthread_mutex_lock(&a->mu);
	r->conn = c;
	bool wait = !atomic_load(&a->stopping) && !api_upload_ready(r->up, n, upload_wake, r);
	if (wait) {
		a->upload_waits++;
		MHD_suspend_connection(c);
	}
	pthread_mutex_unlock(&a->mu);
	return wait;
}

/*
 * The first call of an upload: refuse at once what can be refused from the headers
 * (draining, too many uploads, not multipart, far too large), else start parsing.
 */
int api__upload_start(api_t *a, req_t *r, struct MHD_Connection *c)
{
	if (a->ops.draining(a->ops.ud))
		return api__fail(a, r, c, SD_EUNAVAIL,
			    "draining: the daemon is shutting down and takes no new jobs");
	if (atomic_fetch_add(&a->uploads, 1) >= a->conf.max_uploads) {
		atomic_fetch_sub(&a->uploads, 1);
		return api__fail(a, r, c, SD_EUPLOADS,
			    "%d uploads are in progress (max_uploads); retry later",
			    a->conf.max_uploads);
	}
	r->upload_slot = true;
	/* Too large: the answer waits for the body to be read (and dropped), since closing
	 * a socket with unread data resets it before the client sees the 413; a body far
	 * beyond the limit is cut off at once. A client that waits for "100 Continue" has
	 * sent no body yet, so it is answered at once too. */
	const char *cl = api__header(c, "Content-Length");
	const char *expect = api__header(c, "Expect");
	long long clv = cl ? strtoll(cl, NULL, 10) : 0;
	if (clv > a->conf.max_upload) {
		r->fail_code = sd_err(&r->fail, SD_ETOOBIG,
				      "upload of %lld bytes is over the limit of %" PRId64 " bytes",
				      clv, a->conf.max_upload);
		if (clv - a->conf.max_upload > DISCARD_MAX ||
		    (expect && !strcasecmp(expect, "100-continue")))
			return api__send_problem(a, r, c, &r->fail);
		return MHD_YES;
	}
	sd_error_t e;
	if (api_upload_begin(a->store, a->conf.max_upload, a->conf.direct_uploads,
			     api__header(c, "Content-Type"), &r->up, &e))
		return api__send_problem(a, r, c, &e);
	return MHD_YES;
}

/* ---- long-poll wake-ups ---- */

/* Whether the client of a suspended connection has gone (FIN or reset). libmicrohttpd
 * does not watch a suspended socket, so without this a poll whose client left would
 * hold its slot of max_connections until its deadline: a client could fill them all
 * with requests it sends and drops at once. */
static bool hung_up(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	char b;
	ssize_t n = ci ? recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) : 1;
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Resumes the polls on job id, or (id NULL) those past their deadline or whose client
 * has gone: these are answered at once (the deadline is set back), and the answer to a
 * gone client fails and frees its connection. */
static void resume_where(api_t *a, const char *id, int64_t now)
{
	pthread_mutex_lock(&a->mu);
	waiter_t **pp = &a->waiters;
	while (*pp) {
		waiter_t *w = *pp;
		if (!id && w->req->deadline_ms > now && hung_up(w->conn))
			w->req->deadline_ms = now;
		if ((id && strcmp(w->req->params[0], id) == 0) ||
		    (!id && w->req->deadline_ms <= now)) {
			*pp = w->next;
			MHD_resume_connection(w->conn);
			free(w);
			continue;
		}
		pp = &w->next;
	}
	pthread_mutex_unlock(&a->mu);
}

void api_job_changed(api_t *a, const char *id)
{
	/* The version map first: the polls resumed below, and the request that made the
	 * change (answered once this returns), read it. */
	store_job_t j = {0};
	if (api__events_job(a, id, &j))
		api_vmap_drop(a->vmap, id);
	else
		api_vmap_set(a->vmap, id, j.tenant, j.version);
	store_job_clear(&j);
	resume_where(a, id, 0);
}

void api_jobs_swept(api_t *a)
{
	api_vmap_clear(a->vmap);
}

void api_poll_expire(api_t *a)
{
	resume_where(a, NULL, sd_now_ms());
	api__events_tick(a);
}
