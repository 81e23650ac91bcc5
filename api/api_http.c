/*
 * api_http: the REST API's libmicrohttpd side: life cycle, route table, dispatch, auth
 * and the service pages (see api.h for threads, api_int.h for the other files).
 *
 * Request life: libmicrohttpd calls the access handler once when the headers are in
 * (an upload is routed, authorised and started there, so a refusal does not wait for
 * the body), then once per chunk of body (an upload's bytes go to api_upload, which
 * streams file parts into blobs), then a last time with no data: every other request
 * is routed, authorised and answered only then, since libmicrohttpd closes a
 * connection whose answer came before the request was complete. The per-request state
 * (req_t) is freed in the completion callback, which also aborts blobs a failed or cut
 * upload left behind: nothing half-written is ever referenced.
 */
#include "api/api_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api_json.h"
#include "common/sd_log.h"
#include "common/sd_str.h"
#include "common/sd_time.h"

/* ---- service endpoints ---- */

static int h_healthz(api_t *a, req_t *r, struct MHD_Connection *c)
{
	return api__send_json(a, r, c, 200, json_pack("{s:s}", "status", "ok"), NULL);
}

static int h_readyz(api_t *a, req_t *r, struct MHD_Connection *c)
{
	if (a->ops.draining(a->ops.ud))
		return api__fail(a, r, c, SD_EUNAVAIL, "draining: the daemon is shutting down");
	return api__send_json(a, r, c, 200, json_pack("{s:s}", "status", "ready"), NULL);
}

/* Generated from openapi.yaml at build time (api/embed.py). */
extern const unsigned char api__openapi_spec[];
extern const size_t api__openapi_spec_len;

static int h_openapi(api_t *a, req_t *r, struct MHD_Connection *c)
{
	char *copy = malloc(api__openapi_spec_len);
	if (!copy)
		return MHD_NO;
	memcpy(copy, api__openapi_spec, api__openapi_spec_len);
	return api__send_text(a, r, c, 200, "application/yaml", copy, api__openapi_spec_len, NULL);
}

static int h_metrics(api_t *a, req_t *r, struct MHD_Connection *c)
{
	char *buf = NULL;
	size_t len = 0;
	sd_error_t e;
	int64_t counts[STORE_STATE__COUNT] = {0};
	store_reader_t *rd = api__reader(a, &e);
	if (!rd || store_job_counts(rd, counts, &e))
		return api__send_problem(a, r, c, &e);
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
	return api__send_text(a, r, c, 200, "text/plain; version=0.0.4", buf, len, NULL);
}

/* ---- dispatch ---- */

static const route_t routes[] = {
	{"POST", "/v1/jobs", api__h_jobs_create, true, true},
	{"GET", "/v1/jobs", api__h_jobs_list, false, true},
	{"GET", "/v1/jobs/{id}", api__h_job_get, false, true},
	{"DELETE", "/v1/jobs/{id}", api__h_job_delete, false, true},
	{"POST", "/v1/jobs/{id}/cancel", api__h_job_cancel, false, true},
	{"GET", "/v1/jobs/{id}/log", api__h_job_log, false, true},
	{"GET", "/v1/jobs/{id}/artifacts/{name}", api__h_artifact, false, true},
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
	store_reader_t *rd = api__reader(a, e);
	if (!rd)
		return e->code;
	int64_t now = sd_now_ms();
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
	const char *h = api__header(c, "Authorization");
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
	api__poll_done(a, r);
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
		return api__fail(a, r, c, SD_ENOTFOUND, "no job '%.64s' (job ids are 26 characters)",
			    r->params[0]);
	if (r->route)
		return MHD_YES;
	if (!path_known)
		return api__fail(a, r, c, SD_ENOTFOUND, "no such endpoint: %.16s %.200s", method, url);
	sd_error_t e;
	sd_err(&e, SD_EMETHOD, "%.16s is not allowed on %.200s (allowed: %s)", method, url, allow);
	struct MHD_Response *resp = api__problem_response(&e, 405);
	if (resp)
		MHD_add_response_header(resp, "Allow", allow);
	return api__queue(a, r, c, 405, resp);
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
			return api__send_problem(a, r, c, &e);
		r->authed = true;
		return api__upload_start(a, r, c);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (r->answered)
			return MHD_YES; /* discard what follows an early answer */
		if (r->route && r->route->upload) {
			api__upload_feed(a, r, upload_data, n);
			if (r->received > a->conf.max_upload + DISCARD_MAX)
				return api__send_problem(a, r, c, &r->fail);
		} else if ((r->received += (int64_t)n) > DISCARD_MAX) {
			return api__fail(a, r, c, SD_ETOOBIG, "%.16s %.200s takes no request body", method,
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
			return api__send_problem(a, r, c, &e);
		r->authed = true;
	}
	return r->route->fn(a, r, c);
}

/* ---- life cycle ---- */

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
	pthread_key_create(&a->reader_key, api__thread_ctx_free);
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
	free(a);
}

