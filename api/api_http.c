/*
 * api_http: routes, uploads and responses of the REST API (see api.h for threads).
 *
 * Request life: libmicrohttpd calls the access handler once when the headers are in
 * (the route is matched and authorised there, and bodiless requests are answered at
 * once), then once per chunk of body (multipart parts stream into blobs through
 * MHD's post processor; text parts are capped at 64 KiB), then a last time with no
 * data, when an upload is validated, its blobs committed and the job handed to the
 * loop thread. The per-request state (req_t) is freed in the completion callback,
 * which also aborts blobs a failed or cut upload left behind: nothing half-written
 * is ever referenced.
 */
#include "api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "api_json.h"
#include "api_parse.h"
#include "api_upload.h"
#include "sd_log.h"
#include "sd_str.h"

#define WAIT_MAX_S 60
#define LIST_DEFAULT 50
#define LIST_MAX 200
/* How much of a refused body is read and dropped so the client sees the answer. */
#define DISCARD_MAX ((int64_t)64 << 20)

typedef struct req req_t;
typedef struct api_s_waiter waiter_t;
typedef int (*handler_fn)(api_t *a, req_t *r, struct MHD_Connection *c);

/* The route table: dispatch, auth and body limits in one place (and the test that
 * holds it against openapi.yaml reads api_routes_print()). */
typedef struct route {
	const char *method;
	const char *path; /* segments; "{x}" matches one segment */
	handler_fn fn;
	bool upload;      /* multipart body streamed to blobs, else no body accepted */
	bool auth;
} route_t;

struct api_s_waiter {
	waiter_t *next;
	struct MHD_Connection *conn;
	req_t *req;
};

struct req {
	api_t *api;
	const route_t *route;
	char params[2][API_PARAM_MAX]; /* {id}, {name} */
	char *tenant;                  /* NULL: no auth in force */
	bool authed;
	bool answered;
	/* upload */
	api_upload_t *up;
	bool upload_slot;              /* counted in api_t.uploads */
	int64_t received;
	int fail_code;                 /* first upload error (SD_E*), answered at the end */
	sd_error_t fail;
	/* long-poll */
	bool suspended;                /* counted in api_t.polls until answered */
	int64_t deadline_ms;
};

struct api {
	struct MHD_Daemon *mhd;
	store_t *store;
	api_ops_t ops;
	api_conf_t conf;
	char *openapi;
	size_t openapi_len;
	pthread_key_t reader_key;
	pthread_mutex_t mu; /* waiters */
	pthread_cond_t polls_done;
	waiter_t *waiters;
	int polls;          /* long-polls suspended or resumed but not yet answered; mu */
	atomic_bool stopping;
	atomic_int uploads; /* requests streaming a body into blobs now */
	atomic_uint_fast64_t status_count[600];
	atomic_uint_fast64_t upload_bytes;
	atomic_bool tokens_on;
	atomic_int_fast64_t tokens_checked_ms;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

static void thread_ctx_free(void *p)
{
	thread_ctx_t *t = p;
	store_reader_close(t->reader);
	for (int i = 0; i < BODY_CACHE; i++)
		free(t->cache[i].body);
	free(t);
}

static thread_ctx_t *thread_ctx(api_t *a, sd_error_t *e)
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

static store_reader_t *reader(api_t *a, sd_error_t *e)
{
	thread_ctx_t *t = thread_ctx(a, e);
	return t ? t->reader : NULL;
}

static struct cached *cache_slot(thread_ctx_t *t, const char *id)
{
	uint32_t h = 2166136261u;
	for (const char *p = id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return &t->cache[h % BODY_CACHE];
}

/* ---- responses ---- */

static int queue(api_t *a, req_t *r, struct MHD_Connection *c, int status,
		 struct MHD_Response *resp)
{
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "Cache-Control", "no-cache");
	int ok = MHD_queue_response(c, (unsigned)status, resp);
	MHD_destroy_response(resp);
	if (status >= 100 && status < 600)
		atomic_fetch_add(&a->status_count[status], 1);
	r->answered = true;
	return ok;
}

/* A response carrying doc (consumed) as JSON of the given content type; NULL on ENOMEM. */
static struct MHD_Response *json_response(json_t *doc, const char *type)
{
	char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!body)
		return NULL;
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return NULL;
	}
	MHD_add_response_header(resp, "Content-Type", type);
	return resp;
}

/* The problem document for e, answered with `status`. */
static struct MHD_Response *problem_response(const sd_error_t *e, int status)
{
	json_t *p = api_json_problem(e);
	if (p)
		json_object_set_new(p, "status", json_integer(status));
	return json_response(p, "application/problem+json");
}

static int send_text(api_t *a, req_t *r, struct MHD_Connection *c, int status,
		     const char *type, char *body, size_t len, const char *etag)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", type);
	if (etag)
		MHD_add_response_header(resp, "ETag", etag);
	return queue(a, r, c, status, resp);
}

static int send_json(api_t *a, req_t *r, struct MHD_Connection *c, int status, json_t *doc,
		     const char *etag)
{
	struct MHD_Response *resp = json_response(doc, "application/json");
	if (resp && etag)
		MHD_add_response_header(resp, "ETag", etag);
	return queue(a, r, c, status, resp);
}

static int send_problem_status(api_t *a, req_t *r, struct MHD_Connection *c, int status,
			       const sd_error_t *e)
{
	struct MHD_Response *resp = problem_response(e, status);
	if (!resp)
		return MHD_NO;
	if (status == 401)
		MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
	if (status == 429 || status == 503)
		MHD_add_response_header(resp, "Retry-After", "5");
	log_debug("api", "%d %s", status, e->msg);
	return queue(a, r, c, status, resp);
}

static int send_problem(api_t *a, req_t *r, struct MHD_Connection *c, const sd_error_t *e)
{
	return send_problem_status(a, r, c, sd_err_http(e->code), e);
}

static int fail(api_t *a, req_t *r, struct MHD_Connection *c, int code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int fail(api_t *a, req_t *r, struct MHD_Connection *c, int code, const char *fmt, ...)
{
	sd_error_t e;
	va_list ap;
	va_start(ap, fmt);
	sd_errv(&e, code, fmt, ap);
	va_end(ap);
	return send_problem(a, r, c, &e);
}

static const char *header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

static const char *query(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

/* ---- jobs ---- */

static void job_etag(const char *id, int64_t version, char *buf, size_t cap)
{
	snprintf(buf, cap, "\"%s-v%" PRId64 "\"", id, version);
}

/* Answers with the job; version is what the caller just read, or -1 to read it here. */
static int send_job(api_t *a, req_t *r, struct MHD_Connection *c, const char *id, int status,
		    bool location, int64_t version)
{
	sd_error_t e;
	thread_ctx_t *t = thread_ctx(a, &e);
	store_state_t st;
	if (!t || (version < 0 && store_job_version(t->reader, id, r->tenant, &version, &st, &e)))
		return send_problem(a, r, c, &e);
	struct cached *slot = cache_slot(t, id);
	if (!slot->body || slot->version != version || strcmp(slot->id, id)) {
		store_job_t j = {0};
		if (store_job_get(t->reader, id, r->tenant, &j, &e))
			return send_problem(a, r, c, &e);
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
	return queue(a, r, c, status, resp);
}

static int not_modified(api_t *a, req_t *r, struct MHD_Connection *c, const char *etag)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "ETag", etag);
	return queue(a, r, c, 304, resp);
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
static void poll_done(api_t *a, req_t *r)
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
static int h_job_get(api_t *a, req_t *r, struct MHD_Connection *c)
{
	const char *id = r->params[0];
	sd_error_t e;
	store_reader_t *rd = reader(a, &e);
	if (!rd)
		return send_problem(a, r, c, &e);
	const char *inm = header(c, "If-None-Match");
	const char *wait = query(c, "wait");
	if (wait && !r->deadline_ms) {
		char *end;
		long s = strtol(wait, &end, 10);
		if (!wait[0] || *end || s < 0 || s > WAIT_MAX_S || wait[0] == '+' || wait[0] == ' ')
			return fail(a, r, c, SD_EUSAGE, "wait must be a whole number of seconds, 0 to %d",
				    WAIT_MAX_S);
		r->deadline_ms = now_ms() + 1000 * s;
	}
	bool poll = wait && inm && !atomic_load(&a->stopping);
	/* The lock orders this read against api_job_changed only for long-polls. */
	if (poll)
		pthread_mutex_lock(&a->mu);
	int64_t version;
	store_state_t st;
	int rc = store_job_version(rd, id, r->tenant, &version, &st, &e);
	char etag[API_PARAM_MAX + 64];
	if (!rc)
		job_etag(id, version, etag, sizeof(etag));
	/* stopping is read again under the lock: api_stop sets it before it takes the lock
	 * to resume every waiter, so no poll can suspend after that. */
	if (!rc && poll && !atomic_load(&a->stopping) && api_etag_match(inm, etag) &&
	    now_ms() < r->deadline_ms && waiter_add(a, r, c)) {
		pthread_mutex_unlock(&a->mu);
		return MHD_YES;
	}
	if (poll)
		pthread_mutex_unlock(&a->mu);
	if (rc)
		return send_problem(a, r, c, &e);
	if (api_etag_match(inm, etag))
		return not_modified(a, r, c, etag);
	return send_job(a, r, c, id, 200, false, version);
}

static int h_jobs_list(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	store_reader_t *rd = reader(a, &e);
	if (!rd)
		return send_problem(a, r, c, &e);
	store_filter_t f = {.tenant = r->tenant, .limit = LIST_DEFAULT};
	store_state_t st;
	const char *s = query(c, "state"), *lim = query(c, "limit");
	if (s && store_state_parse(s, &st, &e))
		return send_problem(a, r, c, &e);
	if (s)
		f.state = &st;
	f.stage = query(c, "stage");
	if (f.stage && !f.stage[0])
		f.stage = NULL;
	prune_stage_t stage;
	if (f.stage && prune_stage_parse(f.stage, &stage, &e))
		return send_problem(a, r, c, &e);
	f.after = query(c, "cursor");
	if (f.after && !f.after[0])
		f.after = NULL;
	if (f.after && !store_id_valid(f.after))
		return fail(a, r, c, SD_EUSAGE, "cursor '%s' is not a job id from next_cursor",
			    f.after);
	if (lim) {
		char *end;
		long n = strtol(lim, &end, 10);
		if (*end || n < 1 || n > LIST_MAX)
			return fail(a, r, c, SD_EUSAGE, "limit must be 1..%d", LIST_MAX);
		f.limit = (size_t)n;
	}
	store_job_t *jobs = NULL;
	size_t n = 0;
	char *tag = NULL;
	if (store_job_list(rd, &f, &jobs, &n, &tag, &e))
		return send_problem(a, r, c, &e);
	char etag[160];
	snprintf(etag, sizeof(etag), "\"l-%s-%s-%s-%s-%zu\"", tag ? tag : "", s ? s : "",
		 f.stage ? f.stage : "", f.after ? f.after : "", f.limit);
	free(tag);
	int ret;
	if (api_etag_match(header(c, "If-None-Match"), etag)) {
		ret = not_modified(a, r, c, etag);
	} else {
		json_t *doc = json_object(), *arr = json_array();
		for (size_t i = 0; i < n; i++)
			json_array_append_new(arr, api_json_job(&jobs[i], false));
		json_object_set_new(doc, "jobs", arr);
		json_object_set_new(doc, "next_cursor",
				    n == f.limit && n ? json_string(jobs[n - 1].id) : json_null());
		ret = send_json(a, r, c, 200, doc, etag);
	}
	for (size_t i = 0; i < n; i++)
		store_job_clear(&jobs[i]);
	free(jobs);
	return ret;
}

static int h_job_cancel(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	sd_err_clear(&e);
	if (a->ops.cancel(a->ops.ud, r->params[0], r->tenant, &e))
		return send_problem(a, r, c, &e);
	return send_job(a, r, c, r->params[0], 200, false, -1);
}

static int h_job_delete(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	sd_err_clear(&e);
	if (a->ops.remove(a->ops.ud, r->params[0], r->tenant, &e))
		return send_problem(a, r, c, &e);
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	return queue(a, r, c, 204, resp);
}

static int h_job_log(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	store_reader_t *rd = reader(a, &e);
	char *text = NULL;
	if (!rd || store_event_log(rd, r->params[0], r->tenant, &text, &e))
		return send_problem(a, r, c, &e);
	if (!sd_utf8_valid(text, strlen(text))) {
		/* Messages quote names from models; the page promises UTF-8. */
		char *esc = sd_utf8_escape(text);
		free(text);
		if (!(text = esc))
			return MHD_NO;
	}
	return send_text(a, r, c, 200, "text/plain; charset=utf-8", text, strlen(text), NULL);
}

static int h_artifact(api_t *a, req_t *r, struct MHD_Connection *c)
{
	sd_error_t e;
	store_reader_t *rd = reader(a, &e);
	store_job_t j = {0};
	if (!rd || store_job_get(rd, r->params[0], r->tenant, &j, &e))
		return send_problem(a, r, c, &e);
	const store_artifact_t *art = NULL;
	for (size_t i = 0; i < j.n_artifacts; i++)
		if (strcmp(j.artifacts[i].name, r->params[1]) == 0)
			art = &j.artifacts[i];
	if (!art) {
		store_job_clear(&j);
		return fail(a, r, c, SD_ENOTFOUND, "job %s has no artifact '%s'", r->params[0],
			    r->params[1]);
	}
	char etag[STORE_SHA_HEX + 3], sha[STORE_SHA_HEX + 1];
	snprintf(etag, sizeof(etag), "\"%s\"", art->sha256);
	snprintf(sha, sizeof(sha), "%s", art->sha256);
	int64_t size = art->size;
	store_job_clear(&j);
	if (api_etag_match(header(c, "If-None-Match"), etag))
		return not_modified(a, r, c, etag);
	char *path = store_blob_path(a->store, sha);
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	free(path);
	if (fd < 0)
		return fail(a, r, c, SD_EIO, "artifact '%s' is missing on disk", r->params[1]);
	int64_t from = 0, to = size - 1;
	int rg = api_range_parse(header(c, "Range"), size, &from, &to);
	if (rg < 0) {
		close(fd);
		sd_err(&e, SD_ERANGE, "range not satisfiable (artifact has %" PRId64 " bytes)",
		       size);
		struct MHD_Response *resp = problem_response(&e, 416);
		char cr[64];
		snprintf(cr, sizeof(cr), "bytes */%" PRId64, size);
		if (resp)
			MHD_add_response_header(resp, "Content-Range", cr);
		return queue(a, r, c, 416, resp);
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
	return queue(a, r, c, rg == 1 ? 206 : 200, resp);
}

/* ---- uploads ---- */

/* The record an export names by record_from: the insert job's record, as an input. */
static int record_from_input(api_t *a, req_t *r, const char *job_id, store_artifact_t *rec,
			     sd_error_t *e)
{
	store_reader_t *rd = reader(a, e);
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

/* The upload is complete: validate, commit the blobs, create the job. */
static int h_jobs_create(api_t *a, req_t *r, struct MHD_Connection *c)
{
	if (r->fail_code)
		return send_problem(a, r, c, &r->fail);
	sd_error_t e;
	sd_err_clear(&e);
	api_form_t f;
	store_artifact_t in[API_FILE__COUNT + 1];
	size_t n_in = 0;
	if (api_upload_finish(r->up, &f, &e) || api_upload_commit(r->up, in, &n_in, &e) ||
	    (f.record_from && record_from_input(a, r, f.record_from, &in[n_in++], &e)))
		return send_problem(a, r, c, &e);
	store_job_new_t nj = {
		.stage = f.stage, .tenant = r->tenant ? r->tenant : "", .name = f.name ? f.name : "",
		.outputs = f.outputs ? f.outputs : "", .format = f.format ? f.format : "",
		.record_from = f.record_from ? f.record_from : "", .inputs = in, .n_inputs = n_in,
		.emit_record = f.emit_record,
	};
	char id[STORE_ID_LEN + 1];
	if (a->ops.create(a->ops.ud, &nj, id, &e))
		return send_problem(a, r, c, &e);
	return send_job(a, r, c, id, 202, true, -1);
}

/* Body bytes of an upload: counted against max_upload, then parsed. */
static void upload_feed(api_t *a, req_t *r, const char *data, size_t n)
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

/*
 * The first call of an upload: refuse at once what can be refused from the headers
 * (draining, too many uploads, not multipart, far too large), else start parsing.
 */
static int upload_start(api_t *a, req_t *r, struct MHD_Connection *c)
{
	if (a->ops.draining(a->ops.ud))
		return fail(a, r, c, SD_EUNAVAIL,
			    "draining: the daemon is shutting down and takes no new jobs");
	if (atomic_fetch_add(&a->uploads, 1) >= a->conf.max_uploads) {
		atomic_fetch_sub(&a->uploads, 1);
		return fail(a, r, c, SD_EUPLOADS,
			    "%d uploads are in progress (max_uploads); retry later",
			    a->conf.max_uploads);
	}
	r->upload_slot = true;
	/* Too large: the answer waits for the body to be read (and dropped), since closing
	 * a socket with unread data resets it before the client sees the 413; a body far
	 * beyond the limit is cut off at once. */
	const char *cl = header(c, "Content-Length");
	long long clv = cl ? strtoll(cl, NULL, 10) : 0;
	if (clv > a->conf.max_upload) {
		r->fail_code = sd_err(&r->fail, SD_ETOOBIG,
				      "upload of %lld bytes is over the limit of %" PRId64 " bytes",
				      clv, a->conf.max_upload);
		if (clv - a->conf.max_upload > DISCARD_MAX)
			return send_problem(a, r, c, &r->fail);
		return MHD_YES;
	}
	sd_error_t e;
	if (api_upload_begin(a->store, a->conf.max_upload, header(c, "Content-Type"), &r->up, &e))
		return send_problem(a, r, c, &e);
	return MHD_YES;
}

/* ---- service endpoints ---- */

static int h_healthz(api_t *a, req_t *r, struct MHD_Connection *c)
{
	return send_json(a, r, c, 200, json_pack("{s:s}", "status", "ok"), NULL);
}

static int h_readyz(api_t *a, req_t *r, struct MHD_Connection *c)
{
	if (a->ops.draining(a->ops.ud))
		return fail(a, r, c, SD_EUNAVAIL, "draining: the daemon is shutting down");
	return send_json(a, r, c, 200, json_pack("{s:s}", "status", "ready"), NULL);
}

static int h_openapi(api_t *a, req_t *r, struct MHD_Connection *c)
{
	char *copy = malloc(a->openapi_len + 1);
	if (!copy)
		return MHD_NO;
	memcpy(copy, a->openapi, a->openapi_len);
	return send_text(a, r, c, 200, "application/yaml", copy, a->openapi_len, NULL);
}

static int h_metrics(api_t *a, req_t *r, struct MHD_Connection *c)
{
	char *buf = NULL;
	size_t len = 0;
	sd_error_t e;
	int64_t counts[STORE_STATE__COUNT] = {0};
	store_reader_t *rd = reader(a, &e);
	if (!rd || store_job_counts(rd, counts, &e))
		return send_problem(a, r, c, &e);
	sd_appendf(&buf, &len, "# HELP sparsityd_jobs Jobs by state.\n# TYPE sparsityd_jobs gauge\n");
	for (int s = 0; s < STORE_STATE__COUNT; s++)
		sd_appendf(&buf, &len, "sparsityd_jobs{state=\"%s\"} %" PRId64 "\n",
			store_state_name((store_state_t)s), counts[s]);
	sd_appendf(&buf, &len, "# HELP sparsityd_http_requests_total HTTP responses by status.\n"
			    "# TYPE sparsityd_http_requests_total counter\n");
	for (int s = 100; s < 600; s++) {
		uint64_t v = atomic_load(&a->status_count[s]);
		if (v)
			sd_appendf(&buf, &len, "sparsityd_http_requests_total{status=\"%d\"} %" PRIu64 "\n",
				s, v);
	}
	sd_appendf(&buf, &len, "# HELP sparsityd_upload_bytes_total Bytes received in uploads.\n"
			    "# TYPE sparsityd_upload_bytes_total counter\n"
			    "sparsityd_upload_bytes_total %" PRIu64 "\n",
		(uint64_t)atomic_load(&a->upload_bytes));
	a->ops.metrics(a->ops.ud, &buf, &len);
	if (!buf)
		return MHD_NO;
	return send_text(a, r, c, 200, "text/plain; version=0.0.4", buf, len, NULL);
}

/* ---- dispatch ---- */

static const route_t routes[] = {
	{"POST", "/v1/jobs", h_jobs_create, true, true},
	{"GET", "/v1/jobs", h_jobs_list, false, true},
	{"GET", "/v1/jobs/{id}", h_job_get, false, true},
	{"DELETE", "/v1/jobs/{id}", h_job_delete, false, true},
	{"POST", "/v1/jobs/{id}/cancel", h_job_cancel, false, true},
	{"GET", "/v1/jobs/{id}/log", h_job_log, false, true},
	{"GET", "/v1/jobs/{id}/artifacts/{name}", h_artifact, false, true},
	{"GET", "/healthz", h_healthz, false, false},
	{"GET", "/readyz", h_readyz, false, false},
	{"GET", "/metrics", h_metrics, false, false},
	{"GET", "/openapi.yaml", h_openapi, false, false},
};
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

void api_routes_print(void)
{
	for (size_t i = 0; i < N_ROUTES; i++)
		printf("%s %s\n", routes[i].method, routes[i].path);
}

/*
 * Authenticates /v1 requests when tokens exist; returns 0, SD_EAUTH, or the store's
 * error (a database that cannot be read is the server's fault, not the client's).
 * Whether any token exists is re-read at most once a second (tokens are created by
 * another process, `sparsityd token create`), not once per request.
 */
static int authorise(api_t *a, req_t *r, struct MHD_Connection *c, sd_error_t *e)
{
	store_reader_t *rd = reader(a, e);
	if (!rd)
		return e->code;
	int64_t now = now_ms();
	bool exist = atomic_load(&a->tokens_on);
	if (now - atomic_load(&a->tokens_checked_ms) > 1000) {
		int rc = store_tokens_exist(rd, &exist, e);
		if (rc)
			return rc;
		atomic_store(&a->tokens_on, exist);
		atomic_store(&a->tokens_checked_ms, now);
	}
	if (!exist)
		return 0;
	const char *h = header(c, "Authorization");
	if (!h)
		return sd_err(e, SD_EAUTH,
			      "this daemon requires a bearer token (Authorization: Bearer ...)");
	const char *token = api_bearer_token(h);
	if (!token)
		return sd_err(e, SD_EAUTH, "the Authorization header is not 'Bearer <token>'");
	int rc = store_token_check(rd, token, &r->tenant, e);
	if (rc == SD_ENOTFOUND)
		return sd_err(e, SD_EAUTH, "unknown or revoked token");
	return rc;
}

static void req_free(api_t *a, req_t *r)
{
	if (!r)
		return;
	poll_done(a, r);
	/* The last upload of a burst hands its buffers back to the system, so the daemon's
	 * memory returns near idle instead of staying at the burst's peak. */
	if (r->upload_slot && atomic_fetch_sub(&a->uploads, 1) == 1)
		malloc_trim(0);
	api_upload_free(r->up);
	free(r->tenant);
	free(r);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	(void)c, (void)toe;
	req_free(cls, *con_cls);
	*con_cls = NULL;
}

/*
 * Finds the route; answers 404 or 405 itself. url is what libmicrohttpd decoded with
 * unescape() below, which leaves %00 as it is, so a path never hides a NUL.
 */
static int route(api_t *a, req_t *r, struct MHD_Connection *c, const char *url,
		 const char *method)
{
	const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
	bool path_known = false;
	char allow[64] = "";
	size_t url_len = strlen(url);
	for (size_t i = 0; i < N_ROUTES; i++) {
		char params[2][API_PARAM_MAX];
		if (!api_route_match(routes[i].path, url, url_len, params))
			continue;
		path_known = true;
		size_t al = strlen(allow);
		snprintf(allow + al, sizeof(allow) - al, "%s%s", al ? ", " : "", routes[i].method);
		if (strcmp(routes[i].method, m) == 0) {
			r->route = &routes[i];
			memcpy(r->params, params, sizeof(params));
		}
	}
	/* Every {id} is a job id: anything else names no job, whatever the route. */
	if (r->route && strstr(r->route->path, "{id}") && !store_id_valid(r->params[0]))
		return fail(a, r, c, SD_ENOTFOUND, "no job '%.64s' (job ids are 26 characters)",
			    r->params[0]);
	if (r->route)
		return MHD_YES;
	if (!path_known)
		return fail(a, r, c, SD_ENOTFOUND, "no such endpoint: %.16s %.200s", method, url);
	sd_error_t e;
	sd_err(&e, SD_EMETHOD, "%.16s is not allowed on %.200s (allowed: %s)", method, url, allow);
	struct MHD_Response *resp = problem_response(&e, 405);
	if (resp)
		MHD_add_response_header(resp, "Allow", allow);
	return queue(a, r, c, 405, resp);
}

/* Whether method + url is the upload route (POST /v1/jobs), before any routing work. */
static bool upload_route(const char *url, const char *method)
{
	for (size_t i = 0; i < N_ROUTES; i++)
		if (routes[i].upload && !strcmp(routes[i].method, method) &&
		    !strcmp(routes[i].path, url))
			return true;
	return false;
}

/*
 * Request life: the first call (headers in) finds the route and, for uploads,
 * authorises and starts the body parse so a refusal is not held up by the body. Every
 * other request is answered only once its body (normally none) has been read:
 * libmicrohttpd closes a connection whose answer was queued before the request was
 * complete, and pollers want to keep theirs.
 */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	(void)version;
	api_t *a = cls;
	req_t *r = *con_cls;
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return MHD_NO;
		r->api = a;
		*con_cls = r;
		if (!upload_route(url, method))
			return MHD_YES;
		if (route(a, r, c, url, method) != MHD_YES || r->answered)
			return MHD_YES;
		sd_error_t e;
		sd_err_clear(&e);
		if (r->route->auth && authorise(a, r, c, &e))
			return send_problem(a, r, c, &e);
		r->authed = true;
		return upload_start(a, r, c);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (r->answered)
			return MHD_YES; /* discard what follows an early answer */
		if (r->route && r->route->upload) {
			upload_feed(a, r, upload_data, n);
			if (r->received > a->conf.max_upload + DISCARD_MAX)
				return send_problem(a, r, c, &r->fail);
		} else if ((r->received += (int64_t)n) > DISCARD_MAX) {
			return fail(a, r, c, SD_ETOOBIG, "%.16s %.200s takes no request body", method,
				    url);
		}
		return MHD_YES;
	}
	if (r->answered)
		return MHD_YES;
	if (!r->route) {
		int rc = route(a, r, c, url, method);
		if (rc != MHD_YES || r->answered)
			return rc; /* MHD_NO (no answer could be queued) closes the connection */
	}
	/* Once per request: a resumed long-poll comes through here again. */
	if (r->route->auth && !r->authed) {
		sd_error_t e;
		sd_err_clear(&e);
		if (authorise(a, r, c, &e))
			return send_problem(a, r, c, &e);
		r->authed = true;
	}
	return r->route->fn(a, r, c);
}

/* ---- long-poll wake-ups ---- */

static void resume_where(api_t *a, const char *id, int64_t now)
{
	pthread_mutex_lock(&a->mu);
	waiter_t **pp = &a->waiters;
	while (*pp) {
		waiter_t *w = *pp;
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

void api_job_changed(api_t *a, const char *id) { resume_where(a, id, 0); }

void api_poll_expire(api_t *a) { resume_where(a, NULL, now_ms()); }

/* ---- life cycle ---- */

static int read_all(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	char *buf = NULL;
	size_t cap = 0, n = 0, got;
	do {
		if (n + 65536 > cap) {
			char *p = realloc(buf, cap = n + 65536);
			if (!p) {
				free(buf);
				fclose(f);
				return -1;
			}
			buf = p;
		}
		got = fread(buf + n, 1, cap - n, f);
		n += got;
	} while (got);
	fclose(f);
	*out = buf;
	*len = n;
	return 0;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
				      : -1;
}

/*
 * Decodes %XX in a path or query value in place, as libmicrohttpd would, except %00
 * and %2F: a NUL would end the C string early, so "/v1/jobs/<id>%00x" would look like
 * the job's own path, and an encoded '/' would add a path segment the client did not
 * write ("/v1/jobs/<id>%2Flog" is not the log). Left encoded, they name nothing; no
 * query value of this API holds either.
 */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
{
	(void)cls, (void)c;
	char *w = s;
	for (const char *p = s; *p; p++) {
		int hi, lo;
		if (p[0] == '%' && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0 &&
		    (hi | lo) && !(hi == 2 && (lo == 0xf))) {
			*w++ = (char)(hi * 16 + lo);
			p += 2;
		} else {
			*w++ = *p;
		}
	}
	*w = 0;
	return (size_t)(w - s);
}

int api_start(const api_conf_t *conf, store_t *s, const api_ops_t *ops, api_t **out,
	      sd_error_t *e)
{
	api_t *a = calloc(1, sizeof(*a));
	if (!a)
		return sd_err(e, SD_ENOMEM, "out of memory");
	a->store = s;
	a->ops = *ops;
	a->conf = *conf;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->polls_done, NULL);
	pthread_key_create(&a->reader_key, thread_ctx_free);
	if (read_all(conf->openapi, &a->openapi, &a->openapi_len)) {
		api_stop(a);
		return sd_err(e, SD_EIO, "cannot read %s: %s", conf->openapi, strerror(errno));
	}
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
			 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_ITC;
	if (inet_pton(AF_INET, conf->host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)conf->port);
	} else if (inet_pton(AF_INET6, conf->host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)conf->port);
		flags |= MHD_USE_IPv6;
	} else {
		api_stop(a);
		return sd_err(e, SD_EUSAGE, "listen address '%s' is not a numeric IP address",
			      conf->host);
	}
	a->mhd = MHD_start_daemon(flags, (uint16_t)conf->port, NULL, NULL, on_request, a,
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_THREAD_POOL_SIZE, (unsigned)conf->threads,
				  MHD_OPTION_NOTIFY_COMPLETED, completed, a,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)conf->idle_timeout,
				  MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)conf->max_connections,
				  MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
	if (!a->mhd) {
		api_stop(a);
		return sd_err(e, SD_EIO, "cannot listen on %s:%d (address in use or not local?)",
			      conf->host, conf->port);
	}
	*out = a;
	return 0;
}

/* Time api_stop gives resumed long-polls to be answered before connections close. */
#define STOP_GRACE_MS 5000

void api_stop(api_t *a)
{
	if (!a)
		return;
	if (a->mhd) {
		/* No new connections; every long-poll is resumed and answered with what it
		 * has (304 or the job) before the server stops, instead of being cut off. */
		MHD_socket ls = MHD_quiesce_daemon(a->mhd);
		atomic_store(&a->stopping, true);
		pthread_mutex_lock(&a->mu);
		while (a->waiters) {
			waiter_t *w = a->waiters;
			a->waiters = w->next;
			MHD_resume_connection(w->conn);
			free(w);
		}
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += STOP_GRACE_MS / 1000;
		while (a->polls > 0 &&
		       pthread_cond_timedwait(&a->polls_done, &a->mu, &until) == 0)
			;
		if (a->polls > 0)
			log_warn("api", "%d long-poll%s not answered within %d ms of stopping",
				 a->polls, a->polls == 1 ? "" : "s", STOP_GRACE_MS);
		pthread_mutex_unlock(&a->mu);
		MHD_stop_daemon(a->mhd);
		if (ls != MHD_INVALID_SOCKET)
			close(ls);
	}
	pthread_key_delete(a->reader_key);
	pthread_cond_destroy(&a->polls_done);
	pthread_mutex_destroy(&a->mu);
	free(a->openapi);
	free(a);
}
