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
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "api/api_json.h"
#include "common/sd_log.h"
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

/* ---- dispatch ---- */

static const route_t routes[] = {
	{"POST", "/v1/jobs", api__h_jobs_create, true, true},
	{"GET", "/v1/jobs", api__h_jobs_list, false, true},
	{"GET", "/v1/jobs/{id}", api__h_job_get, false, true},
	{"DELETE", "/v1/jobs/{id}", api__h_job_delete, false, true},
	{"POST", "/v1/jobs/{id}/cancel", api__h_job_cancel, false, true},
	{"GET", "/v1/jobs/{id}/log", api__h_job_log, false, true},
	{"GET", "/v1/jobs/{id}/artifacts/{name}", api__h_artifact, false, true},
	{"GET", "/v1/events", api__h_events, false, true},
	{"GET", "/healthz", h_healthz, false, false},
	{"GET", "/readyz", h_readyz, false, false},
	{"GET", "/metrics", api__h_metrics, false, false},
	{"GET", "/openapi.yaml", api__h_openapi, false, false},
	/* The page is public; what it shows comes from /v1 with the caller's token. */
	{"GET", "/", api__h_page, false, false},
	{"GET", "/assets/{name}", api__h_asset, false, false},
};
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))
_Static_assert(N_ROUTES <= API__ROUTES_MAX, "api_t.http_s has a row per route");
const route_t *const api__routes = routes;
const size_t api__n_routes = N_ROUTES;

void api_routes_print(void)
{
	for (size_t i = 0; i < N_ROUTES; i++)
		printf("%s %s\n", routes[i].method, routes[i].path);
}

static void req_free(api_t *a, req_t *r)
{
	if (!r)
		return;
	api__poll_done(a, r);
	api__commit_free(a, r);
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
	(void)c;
	if (*con_cls)
		api__request_end(cls, *con_cls, toe);
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
	size_t len = 0;
	struct MHD_Response *resp = api__problem_response(&e, 405, &len);
	if (resp)
		MHD_add_response_header(resp, "Allow", allow);
	return api__queue(a, r, c, 405, resp, len);
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

struct framing {
	const char *length; /* the first Content-Length */
	bool lengths_differ, chunked, two_auth, auth;
};

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
				      const char *value)
{
	(void)kind;
	struct framing *f = cls;
	if (!key || !value)
		return MHD_YES;
	if (!strcasecmp(key, "Content-Length")) {
		f->lengths_differ |= f->length && strcmp(f->length, value);
		f->length = f->length ? f->length : value;
	} else if (!strcasecmp(key, "Transfer-Encoding")) {
		f->chunked = true;
	} else if (!strcasecmp(key, "Authorization")) {
		f->two_auth |= f->auth;
		f->auth = true;
	}
	return MHD_YES;
}

/*
 * What makes the request's framing or its credentials ambiguous, or NULL. libmicrohttpd
 * takes the first Content-Length and reads the rest of the body as the next request, so
 * a proxy in front that took another one would disagree on where requests end (request
 * smuggling); and two Authorization headers would let their order choose the tenant.
 * RFC 9112 6.3 makes the first two errors; answered before the body, the connection is
 * closed after the answer.
 */
static const char *framing_conflict(struct MHD_Connection *c)
{
	struct framing f = {0};
	MHD_get_connection_values(c, MHD_HEADER_KIND, framing_header, &f);
	if (f.lengths_differ)
		return "conflicting Content-Length headers";
	if (f.length && f.chunked)
		return "both Content-Length and Transfer-Encoding";
	return f.two_auth ? "more than one Authorization header" : NULL;
}

/*
 * Request life: the first call (headers in) finds the route and, for uploads,
 * authorises and starts the body parse so a refusal is not held up by the body. Every
 * other request is answered only once its body (normally none) has been read:
 * libmicrohttpd closes a connection whose answer was queued before the request was
 * complete, and pollers want to keep theirs. A request with ambiguous framing is the
 * exception: answered at once, its connection is closed on purpose.
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
		api__request_begin(r, method, url);
		const char *why = framing_conflict(c);
		if (why)
			return api__fail(a, r, c, SD_EUSAGE, "%s in one request", why);
		if (!upload_route(url, method))
			return MHD_YES;
		if (route(a, r, c, url, method) != MHD_YES || r->answered)
			return MHD_YES;
		sd_error_t e;
		sd_err_clear(&e);
		if (r->route->auth && api__authorise(a, r, c, &e))
			return api__send_problem(a, r, c, &e);
		r->authed = true;
		return api__upload_start(a, r, c);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		if (!r->answered && r->route && r->route->upload && api__upload_wait(a, r, c, n))
			return MHD_YES; /* called again with the same bytes once resumed */
		*upload_data_size = 0;
		if (r->answered)
			return MHD_YES; /* discard what follows an early answer */
		if (r->route && r->route->upload) {
			api__upload_feed(a, r, upload_data, n);
			/* Not max_upload + DISCARD_MAX: max_upload may be INT64_MAX. */
			if (r->received - DISCARD_MAX > a->conf.max_upload)
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
		if (api__authorise(a, r, c, &e))
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
	pthread_mutex_init(&a->uses_mu, NULL);
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
	/* HTTPS: certificates come from a callback, so SIGHUP can swap them (api_tls.c).
	 * TLS 1.2 and 1.3 only. */
	gnutls_certificate_retrieve_function3 *cert_cb = NULL;
	bool tls = conf->tls_cert && conf->tls_cert[0];
	if (tls) {
		if (!(cert_cb = api__tls_start(conf->tls_cert, conf->tls_key ? conf->tls_key : "", e))) {
			api_stop(a);
			return e->code;
		}
		flags |= MHD_USE_TLS;
	}
	if (api_vmap_new(&a->vmap, e) || api__events_start(a, e)) {
		api_stop(a);
		return e->code;
	}
	a->mhd = MHD_start_daemon(flags, (uint16_t)conf->port, NULL, NULL, on_request, a,
				  MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_THREAD_POOL_SIZE, (unsigned)conf->threads,
				  MHD_OPTION_NOTIFY_COMPLETED, completed, a,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)conf->idle_timeout,
				  MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)conf->max_connections,
				  MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
				  /* plain HTTP: the list ends here (HTTPS options without
				   * MHD_USE_TLS would be logged as errors) */
				  tls ? MHD_OPTION_HTTPS_CERT_CALLBACK2 : MHD_OPTION_END, cert_cb,
				  MHD_OPTION_HTTPS_PRIORITIES, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
				  MHD_OPTION_END);
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
		/* Every long-poll is resumed and answered with what it has (304 or the job)
		 * before the server stops, instead of being cut off. Requests arriving in the
		 * meantime are served (a long-poll does not wait; an upload or an event stream
		 * gets 503). MHD_quiesce_daemon is not used: with epoll and a thread pool it
		 * races a worker thread removing the listening socket from the same epoll set,
		 * and libmicrohttpd 0.9.75 aborts the process when it loses (seen in CI). */
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
		/* Not bounded: each resumes as soon as the disk takes a buffer, and a
		 * connection still suspended would abort MHD_stop_daemon. */
		while (a->upload_waits > 0)
			pthread_cond_wait(&a->polls_done, &a->mu);
		if (a->polls > 0)
			log_warn("api", "%d long-poll%s not answered within %d ms of stopping",
				 a->polls, a->polls == 1 ? "" : "s", STOP_GRACE_MS);
		pthread_mutex_unlock(&a->mu);
		api__commits_join(a);
		api__events_end(a);
		MHD_stop_daemon(a->mhd);
	}
	api__events_free(a);
	api_vmap_free(a->vmap);
	api__tls_stop();
	api_token_uses_write(a); /* the HTTP threads are gone: every note is in */
	pthread_mutex_destroy(&a->uses_mu);
	pthread_key_delete(a->reader_key);
	pthread_cond_destroy(&a->polls_done);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

