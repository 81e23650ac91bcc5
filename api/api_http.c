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
#include "sd_log.h"
#include "sd_str.h"

#define TEXT_PART_MAX 65536
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

#define PARTS_MAX 3

struct api_s_waiter {
	waiter_t *next;
	struct MHD_Connection *conn;
	req_t *req;
};

struct req {
	api_t *api;
	const route_t *route;
	char params[2][STORE_ID_LEN + 64]; /* {id}, {name} */
	char *tenant;                      /* NULL: no auth in force */
	bool answered;
	/* upload */
	struct MHD_PostProcessor *pp;
	int64_t received;
	int fail_status;                   /* first upload error, answered at the end */
	sd_error_t fail;
	struct part {
		bool started;
		store_blob_t *blob;
		char sha[STORE_SHA_HEX + 1];
		int64_t size;
	} parts[PARTS_MAX];
	char *text[6];   /* stage, outputs, format, name, record_from, emit_record */
	size_t text_len[6];
	/* long-poll */
	int64_t deadline_ms;
	char etag[96];
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
	waiter_t *waiters;
	atomic_uint_fast64_t status_count[600];
	atomic_uint_fast64_t upload_bytes;
	atomic_bool tokens_on;
	atomic_int_fast64_t tokens_checked_ms;
};

#define N_TEXT 6
static const char *const text_fields[N_TEXT] = {"stage",  "outputs",     "format",
						"name",   "record_from", "emit_record"};
static const char *const file_fields[PARTS_MAX] = {"model", "config", "record"};

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
	char etag[96];
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

/* If-None-Match per RFC 9110: a list of entity tags, weak ones (W/) compared weakly. */
static bool etag_matches(const char *inm, const char *etag)
{
	if (!inm)
		return false;
	size_t el = strlen(etag);
	for (const char *p = inm; *p;) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '*')
			return true;
		if (!strncmp(p, "W/", 2))
			p += 2;
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == el && !strncmp(p, etag, n))
			return true;
		p += n;
	}
	return false;
}

/* Registers a long-poll; called with a->mu held. */
static void waiter_add(api_t *a, req_t *r, struct MHD_Connection *c)
{
	waiter_t *w = calloc(1, sizeof(*w));
	if (!w)
		return;
	w->conn = c;
	w->req = r;
	w->next = a->waiters;
	a->waiters = w;
	MHD_suspend_connection(c);
}

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
		if (*end || s < 0)
			return fail(a, r, c, SD_EUSAGE, "wait must be a number of seconds (0..%d)",
				    WAIT_MAX_S);
		r->deadline_ms = now_ms() + 1000 * (s > WAIT_MAX_S ? WAIT_MAX_S : s);
	}
	/* The lock orders this read against api_job_changed only for long-polls. */
	if (wait)
		pthread_mutex_lock(&a->mu);
	int64_t version;
	store_state_t st;
	int rc = store_job_version(rd, id, r->tenant, &version, &st, &e);
	if (rc) {
		if (wait)
			pthread_mutex_unlock(&a->mu);
		return send_problem(a, r, c, &e);
	}
	char etag[96];
	job_etag(id, version, etag, sizeof(etag));
	if (!r->etag[0])
		snprintf(r->etag, sizeof(r->etag), "%s", inm ? inm : etag);
	bool changed = strcmp(r->etag, etag) != 0;
	if (wait && !changed && now_ms() < r->deadline_ms) {
		waiter_add(a, r, c);
		pthread_mutex_unlock(&a->mu);
		return MHD_YES;
	}
	if (wait)
		pthread_mutex_unlock(&a->mu);
	if (etag_matches(inm, etag))
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
	if (f.stage && strcmp(f.stage, "insert") && strcmp(f.stage, "export") &&
	    strcmp(f.stage, "prune") && strcmp(f.stage, "check"))
		return fail(a, r, c, SD_EUSAGE,
			    "unknown stage '%s' (expected insert, export, prune or check)", f.stage);
	f.after = query(c, "cursor");
	if (f.after && !f.after[0])
		f.after = NULL;
	if (f.after && strspn(f.after, "0123456789ABCDEFGHJKMNPQRSTVWXYZ") != STORE_ID_LEN)
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
	if (etag_matches(header(c, "If-None-Match"), etag)) {
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
	return send_text(a, r, c, 200, "text/plain; charset=utf-8", text, strlen(text), NULL);
}

/* Parses "bytes=a-b", "bytes=a-", "bytes=-n". Returns 1 (range), 0 (none), -1 (bad). */
static int parse_range(const char *h, int64_t size, int64_t *from, int64_t *to)
{
	if (!h)
		return 0;
	if (strncmp(h, "bytes=", 6) || strchr(h, ','))
		return -1;
	const char *p = h + 6;
	char *end;
	if (*p == '-') {
		long long n = strtoll(p + 1, &end, 10);
		if (*end || n <= 0)
			return -1;
		*from = n >= size ? 0 : size - n;
		*to = size - 1;
	} else {
		long long a0 = strtoll(p, &end, 10);
		if (end == p || *end != '-' || a0 < 0)
			return -1;
		p = end + 1;
		long long b0 = size - 1;
		if (*p) {
			b0 = strtoll(p, &end, 10);
			if (*end || b0 < a0)
				return -1;
		}
		*from = a0;
		*to = b0 >= size ? size - 1 : b0;
	}
	return *from < size ? 1 : -1;
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
	if (etag_matches(header(c, "If-None-Match"), etag))
		return not_modified(a, r, c, etag);
	char *path = store_blob_path(a->store, sha);
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	free(path);
	if (fd < 0)
		return fail(a, r, c, SD_EIO, "artifact '%s' is missing on disk", r->params[1]);
	int64_t from = 0, to = size - 1;
	int rg = parse_range(header(c, "Range"), size, &from, &to);
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

static enum MHD_Result post_iter(void *cls, enum MHD_ValueKind kind, const char *key,
				 const char *filename, const char *ctype, const char *enc,
				 const char *data, uint64_t off, size_t size)
{
	(void)kind, (void)filename, (void)ctype, (void)enc;
	req_t *r = cls;
	if (r->fail_status)
		return MHD_YES;
	for (int i = 0; i < PARTS_MAX; i++) {
		struct part *p = &r->parts[i];
		if (strcmp(key, file_fields[i]))
			continue;
		if (off == 0 && p->started) {
			r->fail_status = 400;
			sd_err(&r->fail, SD_EUSAGE, "part '%s' given twice", key);
			return MHD_YES;
		}
		if (!p->started) {
			p->started = true;
			if (store_blob_begin(r->api->store, r->api->conf.max_upload, &p->blob,
					     &r->fail)) {
				r->fail_status = sd_err_http(r->fail.code);
				return MHD_YES;
			}
		}
		if (size && store_blob_append(p->blob, data, size, &r->fail))
			r->fail_status = sd_err_http(r->fail.code);
		return MHD_YES;
	}
	for (int i = 0; i < N_TEXT; i++) {
		if (strcmp(key, text_fields[i]))
			continue;
		if (r->text_len[i] + size > TEXT_PART_MAX) {
			r->fail_status = 400;
			sd_err(&r->fail, SD_EUSAGE, "part '%s' is longer than %d bytes", key,
			       TEXT_PART_MAX);
			return MHD_YES;
		}
		char *t = realloc(r->text[i], r->text_len[i] + size + 1);
		if (!t) {
			r->fail_status = 507;
			sd_err(&r->fail, SD_ENOMEM, "out of memory");
			return MHD_YES;
		}
		memcpy(t + r->text_len[i], data, size);
		r->text_len[i] += size;
		t[r->text_len[i]] = 0;
		r->text[i] = t;
		return MHD_YES;
	}
	r->fail_status = 400;
	sd_err(&r->fail, SD_EUSAGE,
	       "unknown part '%s' (expected stage, model, config, record, record_from, outputs, "
	       "format, name, emit_record)",
	       key);
	return MHD_YES;
}

static const char *text(const req_t *r, int i) { return r->text[i] ? r->text[i] : NULL; }

/* The upload is complete: validate, commit the blobs, create the job. */
static int h_jobs_create(api_t *a, req_t *r, struct MHD_Connection *c)
{
	/* The post processor knows whether the body ended where multipart says it must. */
	bool complete = MHD_destroy_post_processor(r->pp) == MHD_YES;
	r->pp = NULL;
	if (r->fail_status)
		return send_problem_status(a, r, c, r->fail_status, &r->fail);
	if (!complete)
		return fail(a, r, c, SD_EUSAGE,
			    "bad multipart: the body ended before its closing boundary");
	const char *stage = text(r, 0), *outputs = text(r, 1), *format = text(r, 2);
	const char *name = text(r, 3), *record_from = text(r, 4), *emit = text(r, 5);
	bool has[PARTS_MAX];
	for (int i = 0; i < PARTS_MAX; i++)
		has[i] = r->parts[i].started;
	if (!stage)
		return fail(a, r, c, SD_EUSAGE, "missing part 'stage' (insert, export, prune, check)");
	bool insert = !strcmp(stage, "insert"), prune = !strcmp(stage, "prune");
	bool exp = !strcmp(stage, "export"), check = !strcmp(stage, "check");
	if (!insert && !prune && !exp && !check)
		return fail(a, r, c, SD_EUSAGE,
			    "unknown stage '%s' (expected insert, export, prune or check)", stage);
	if (!has[0])
		return fail(a, r, c, SD_EUSAGE, "missing part 'model' (the model file)");
	if ((insert || prune) && !has[1])
		return fail(a, r, c, SD_EUSAGE, "missing part 'config' (%s needs a config file)",
			    stage);
	if (exp && !has[2] == !(record_from && record_from[0]))
		return fail(a, r, c, SD_EUSAGE,
			    "export needs exactly one of the parts 'record' and 'record_from'");
	if (!check && !(outputs && outputs[0]))
		return fail(a, r, c, SD_EUSAGE, "missing part 'outputs' (comma-separated node names)");
	if (format && format[0] && strcmp(format, "graphdef") && strcmp(format, "metagraph") &&
	    strcmp(format, "pbtxt"))
		return fail(a, r, c, SD_EUSAGE,
			    "format '%s' is not one of graphdef, metagraph, pbtxt", format);
	bool emit_record = emit && (!strcmp(emit, "true") || !strcmp(emit, "1"));
	if (emit && !emit_record && strcmp(emit, "false") && strcmp(emit, "0"))
		return fail(a, r, c, SD_EUSAGE, "emit_record must be true or false");
	if (emit_record && !prune)
		return fail(a, r, c, SD_EUSAGE,
			    "emit_record is for prune jobs (insert always writes a record)");
	sd_error_t e;
	sd_err_clear(&e);
	store_artifact_t in[PARTS_MAX];
	size_t n_in = 0;
	static const char *const in_names[PARTS_MAX] = {"input_model", "input_config",
							 "input_record"};
	for (int i = 0; i < PARTS_MAX; i++) {
		struct part *p = &r->parts[i];
		if (!p->started)
			continue;
		store_blob_t *b = p->blob;
		p->blob = NULL;
		if (store_blob_commit(b, p->sha, &p->size, &e))
			return send_problem(a, r, c, &e);
		memset(&in[n_in], 0, sizeof(in[n_in]));
		snprintf(in[n_in].name, sizeof(in[n_in].name), "%s", in_names[i]);
		snprintf(in[n_in].sha256, sizeof(in[n_in].sha256), "%s", p->sha);
		in[n_in].size = p->size;
		in[n_in].input = true;
		n_in++;
	}
	if (exp && record_from && record_from[0]) {
		store_reader_t *rd = reader(a, &e);
		store_job_t src = {0};
		if (!rd || store_job_get(rd, record_from, r->tenant, &src, &e))
			return send_problem(a, r, c, &e);
		bool ok = !strcmp(src.stage, "insert") && src.state == STORE_SUCCEEDED;
		store_artifact_t *rec = &in[n_in];
		memset(rec, 0, sizeof(*rec));
		int rc = ok ? store_record_get(rd, record_from, r->tenant, rec->sha256, &e) : 0;
		/* The record is one of the insert job's outputs: its size is known there. */
		for (size_t i = 0; ok && !rc && i < src.n_artifacts; i++)
			if (!src.artifacts[i].input && !strcmp(src.artifacts[i].sha256, rec->sha256))
				rec->size = src.artifacts[i].size;
		store_job_clear(&src);
		if (!ok)
			return fail(a, r, c, SD_ECONFLICT,
				    "record_from job %s is not a succeeded insert job", record_from);
		if (rc)
			return send_problem(a, r, c, &e);
		snprintf(rec->name, sizeof(rec->name), "input_record");
		rec->input = true;
		n_in++;
	}
	store_job_new_t nj = {
		.stage = stage, .tenant = r->tenant ? r->tenant : "", .name = name ? name : "",
		.outputs = outputs ? outputs : "", .format = format ? format : "",
		.record_from = record_from ? record_from : "", .inputs = in, .n_inputs = n_in,
		.emit_record = emit_record,
	};
	char id[STORE_ID_LEN + 1];
	if (a->ops.create(a->ops.ud, &nj, id, &e))
		return send_problem(a, r, c, &e);
	return send_job(a, r, c, id, 202, true, -1);
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

/* Matches url against a route pattern, capturing {params} (at most 2). */
static bool match(const char *pat, const char *url, char params[2][STORE_ID_LEN + 64])
{
	int k = 0;
	while (*pat && *url) {
		if (*pat == '{') {
			const char *pe = strchr(pat, '}');
			const char *ue = strchr(url, '/');
			size_t n = ue ? (size_t)(ue - url) : strlen(url);
			if (!pe || n == 0 || n >= STORE_ID_LEN + 64 || k >= 2)
				return false;
			memcpy(params[k], url, n);
			params[k++][n] = 0;
			pat = pe + 1;
			url += n;
			continue;
		}
		if (*pat++ != *url++)
			return false;
	}
	return !*pat && !*url;
}

/*
 * Authenticates /v1 requests when tokens exist; returns 0 or an HTTP status. Whether
 * any token exists is re-read at most once a second (tokens are created by another
 * process, `sparsityd token create`), not once per request.
 */
static int authorise(api_t *a, req_t *r, struct MHD_Connection *c, sd_error_t *e)
{
	store_reader_t *rd = reader(a, e);
	if (!rd)
		return 500;
	int64_t now = now_ms();
	bool exist = atomic_load(&a->tokens_on);
	if (now - atomic_load(&a->tokens_checked_ms) > 1000) {
		if (store_tokens_exist(rd, &exist, e))
			return 500;
		atomic_store(&a->tokens_on, exist);
		atomic_store(&a->tokens_checked_ms, now);
	}
	if (!exist)
		return 0;
	const char *h = header(c, "Authorization");
	if (!h || strncasecmp(h, "Bearer ", 7)) {
		sd_err(e, SD_EAUTH, "this daemon requires a bearer token (Authorization: Bearer ...)");
		return 401;
	}
	if (store_token_check(rd, h + 7, &r->tenant, e)) {
		sd_err(e, SD_EAUTH, "unknown or revoked token");
		return 401;
	}
	return 0;
}

static void req_free(req_t *r)
{
	if (!r)
		return;
	if (r->pp)
		MHD_destroy_post_processor(r->pp);
	for (int i = 0; i < PARTS_MAX; i++)
		store_blob_abort(r->parts[i].blob);
	for (int i = 0; i < N_TEXT; i++)
		free(r->text[i]);
	free(r->tenant);
	free(r);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	(void)cls, (void)c, (void)toe;
	req_free(*con_cls);
	*con_cls = NULL;
}

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
		const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
		bool path_known = false;
		char allow[64] = "";
		for (size_t i = 0; i < N_ROUTES; i++) {
			char params[2][STORE_ID_LEN + 64];
			if (!match(routes[i].path, url, params))
				continue;
			path_known = true;
			size_t al = strlen(allow);
			snprintf(allow + al, sizeof(allow) - al, "%s%s", al ? ", " : "",
				 routes[i].method);
			if (strcmp(routes[i].method, m) == 0) {
				r->route = &routes[i];
				memcpy(r->params, params, sizeof(params));
			}
		}
		if (!r->route) {
			if (!path_known)
				return fail(a, r, c, SD_ENOTFOUND, "no such endpoint: %s %s", method, url);
			sd_error_t e;
			sd_err(&e, SD_EMETHOD, "%s is not allowed on %s (allowed: %s)", method, url,
			       allow);
			struct MHD_Response *resp = problem_response(&e, 405);
			if (resp)
				MHD_add_response_header(resp, "Allow", allow);
			return queue(a, r, c, 405, resp);
		}
		if (r->route->auth) {
			sd_error_t e;
			sd_err_clear(&e);
			int st = authorise(a, r, c, &e);
			if (st)
				return send_problem_status(a, r, c, st, &e);
		}
		if (r->route->upload) {
			if (a->ops.draining(a->ops.ud))
				return fail(a, r, c, SD_EUNAVAIL,
					    "draining: the daemon is shutting down and takes no new "
					    "jobs");
			/* Too large: the answer waits for the body to be read (and dropped),
			 * since closing a socket with unread data resets it before the client
			 * sees the 413; a body far beyond the limit is cut off at once. */
			const char *cl = header(c, "Content-Length");
			long long clv = cl ? strtoll(cl, NULL, 10) : 0;
			if (clv > a->conf.max_upload) {
				r->fail_status = 413;
				sd_err(&r->fail, SD_ETOOBIG,
				       "upload of %s bytes is over the limit of %" PRId64 " bytes", cl,
				       a->conf.max_upload);
				if (clv - a->conf.max_upload > DISCARD_MAX)
					return send_problem_status(a, r, c, 413, &r->fail);
			}
			r->pp = MHD_create_post_processor(c, 256 * 1024, post_iter, r);
			if (!r->pp)
				return fail(a, r, c, SD_EUSAGE,
					    "bad multipart: the body must be multipart/form-data "
					    "(curl -F)");
			return MHD_YES;
		}
		if (strcmp(method, "POST") && strcmp(method, "DELETE"))
			return r->route->fn(a, r, c);
		return MHD_YES;
	}
	if (r->answered) {
		*upload_data_size = 0; /* discard what follows an early answer */
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (!r->pp)
			return MHD_YES; /* bodies of bodiless routes are ignored */
		r->received += (int64_t)n;
		atomic_fetch_add(&a->upload_bytes, n);
		if (r->received > a->conf.max_upload && r->fail_status != 413) {
			r->fail_status = 413;
			sd_err(&r->fail, SD_ETOOBIG, "upload is over the limit of %" PRId64 " bytes",
			       a->conf.max_upload);
			for (int i = 0; i < PARTS_MAX; i++) {
				store_blob_abort(r->parts[i].blob);
				r->parts[i].blob = NULL;
			}
		}
		if (r->received > a->conf.max_upload + DISCARD_MAX)
			return send_problem_status(a, r, c, 413, &r->fail);
		if (r->fail_status)
			return MHD_YES; /* read and dropped until the end */
		if (MHD_post_process(r->pp, upload_data, n) != MHD_YES && !r->fail_status) {
			r->fail_status = 400;
			sd_err(&r->fail, SD_EUSAGE, "bad multipart body");
		}
		return MHD_YES;
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
	pthread_key_create(&a->reader_key, thread_ctx_free);
	if (read_all(conf->openapi, &a->openapi, &a->openapi_len)) {
		api_stop(a);
		return sd_err(e, SD_EIO, "cannot read %s: %s", conf->openapi, strerror(errno));
	}
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
			 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
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
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096,
				  MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
	if (!a->mhd) {
		api_stop(a);
		return sd_err(e, SD_EIO, "cannot listen on %s:%d (address in use or not local?)",
			      conf->host, conf->port);
	}
	*out = a;
	return 0;
}

void api_stop(api_t *a)
{
	if (!a)
		return;
	if (a->mhd) {
		/* Resume every long-poll first: MHD cannot stop with suspended connections. */
		pthread_mutex_lock(&a->mu);
		while (a->waiters) {
			waiter_t *w = a->waiters;
			a->waiters = w->next;
			w->req->deadline_ms = 1;
			MHD_resume_connection(w->conn);
			free(w);
		}
		pthread_mutex_unlock(&a->mu);
		MHD_stop_daemon(a->mhd);
	}
	pthread_key_delete(a->reader_key);
	pthread_mutex_destroy(&a->mu);
	free(a->openapi);
	free(a);
}
