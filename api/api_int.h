/*
 * api_int: what the files of api/ share and nothing outside them may use: the daemon
 * and request structs, the route table's types, and the reply, job and upload
 * functions each file provides. Prefix api__ (see api.h for the public face).
 *
 *   api_http.c    libmicrohttpd life cycle, route table, dispatch, auth, service pages
 *   api_reply.c   responses: JSON, problems, plain text, request header and query values
 *   api_metrics.c /metrics, and each request's duration histogram and access line
 *   api_jobs.c    job handlers, the per-thread reader and body cache, long-poll waiters,
 *                 and the HTTP side of uploads (api_upload.c parses the body itself)
 *   api_auth.c    bearer tokens: who is calling, and when each token was last used
 *   api_tls.c     HTTPS: the certificate and key served, reloaded on SIGHUP
 *   api_events.c  GET /v1/events: job changes as Server-Sent Events
 *   api_vmap.c    each job's version in memory, so polls skip the store (api_vmap.h)
 *   api_static.c  the dashboard (web/, compiled in): GET / and GET /assets/{name}
 */
#ifndef API_INT_H
#define API_INT_H

#include <gnutls/abstract.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/api.h"
#include "api/api_parse.h"
#include "api/api_upload.h"
#include "api/api_vmap.h"
#include "common/sd_prom.h"

#define WAIT_MAX_S 60
/* How much of a refused body is read and dropped so the client sees the answer. */
#define DISCARD_MAX ((int64_t)64 << 20)

typedef struct req req_t;
typedef struct api_s_waiter waiter_t;
typedef struct api_events api_events_t;
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

/* The route table (api_http.c), for the metrics and the access log. */
#define API__ROUTES_MAX 16
extern const route_t *const api__routes;
extern const size_t api__n_routes;

/* Methods as the metrics count them: a fixed list, so clients cannot add labels. */
enum { API__M_GET, API__M_HEAD, API__M_POST, API__M_PUT, API__M_DELETE, API__M_PATCH,
       API__M_OPTIONS, API__M_OTHER, API__METHODS };

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
	/* accounting (api_metrics.c) */
	int64_t t0_ns;                 /* monotonic, when the headers were in */
	uint8_t method;                /* API__M_* */
	int status;                    /* answered with; 0 until then */
	uint64_t bytes;                /* body bytes of the answer (0 for HEAD) */
	char path[101];                /* the start of the URL, for a request no route matches */
	/* upload */
	api_upload_t *up;
	bool upload_slot;              /* counted in api_t.uploads */
	int64_t received;
	int fail_code;                 /* first upload error (SD_E*), answered at the end */
	sd_error_t fail;
	struct api_commit *commit;     /* an upload's blobs being committed (api_jobs.c) */
	struct MHD_Connection *conn;   /* while suspended until its blob has room */
	/* long-poll */
	bool suspended;                /* counted in api_t.polls until answered */
	int64_t deadline_ms;
};

/* A token use noted by an HTTP thread, written to the store by the loop thread. */
#define API_USES_MAX 64
struct api_use {
	char hash[STORE_SHA_HEX + 1];
	int64_t ms;
};

struct api {
	struct MHD_Daemon *mhd;
	store_t *store;
	api_ops_t ops;
	api_conf_t conf;
	pthread_key_t reader_key;
	pthread_mutex_t mu; /* waiters */
	pthread_cond_t polls_done;
	waiter_t *waiters;
	int polls;          /* long-polls suspended or resumed but not yet answered; mu */
	int commits;        /* upload commit threads not yet ended; mu, polls_done */
	int upload_waits;   /* uploads suspended until their blob has room; mu, polls_done */
	atomic_bool stopping;
	atomic_int uploads; /* requests streaming a body into blobs now */
	atomic_uint_fast64_t status_count[600];
	atomic_uint_fast64_t upload_bytes;
	/* request durations by route (the last row: unmatched) and method */
	sd_prom_hist_t http_s[API__ROUTES_MAX + 1][API__METHODS];
	atomic_bool tokens_on;
	atomic_int_fast64_t tokens_checked_ms;
	pthread_mutex_t uses_mu; /* uses, n_uses */
	struct api_use uses[API_USES_MAX];
	int n_uses;
	api_events_t *ev;  /* event streams (api_events.c) */
	api_vmap_t *vmap;  /* job versions for the polls (api_vmap.h); the loop thread sets */
};

/* ---- api_reply.c: every answer goes through api__queue (it counts statuses) ---- */

/* Queues resp (consumed; NULL: out of memory) with status; marks r answered and notes
 * status and len (the body's bytes) for the metrics and the access line. */
int api__queue(api_t *a, req_t *r, struct MHD_Connection *c, int status,
	       struct MHD_Response *resp, uint64_t len);
/* A response carrying doc (consumed) as JSON of the given content type, its length in
 * *len; NULL on ENOMEM. */
struct MHD_Response *api__json_response(json_t *doc, const char *type, size_t *len);
/* The problem document for e, answered with `status` (its length in *len). */
struct MHD_Response *api__problem_response(const sd_error_t *e, int status, size_t *len);
/* Answers body (malloc'd, consumed) as text of the given type. */
int api__send_text(api_t *a, req_t *r, struct MHD_Connection *c, int status,
		   const char *type, char *body, size_t len, const char *etag);
/* Answers doc (consumed) as application/json. */
int api__send_json(api_t *a, req_t *r, struct MHD_Connection *c, int status, json_t *doc,
		   const char *etag);
/* Answers e as a problem with the status of its code in the error table. */
int api__send_problem(api_t *a, req_t *r, struct MHD_Connection *c, const sd_error_t *e);
/* api__send_problem of a new error (code, printf message). */
int api__fail(api_t *a, req_t *r, struct MHD_Connection *c, int code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* A request header / query argument, NULL when absent (or a valueless "?x"). */
const char *api__header(struct MHD_Connection *c, const char *name);
const char *api__query(struct MHD_Connection *c, const char *name);

/* ---- api_auth.c ---- */

/* Authenticates a /v1 request when tokens exist: sets r->tenant (owned by r). Returns
 * 0, SD_EAUTH (no, unknown, revoked or expired token: e says which), or the store's
 * error (a database that cannot be read is the server's fault, not the client's). */
int api__authorise(api_t *a, req_t *r, struct MHD_Connection *c, sd_error_t *e);
/* The rule behind api__authorise, for anything that asks again later (an event
 * stream): header is the Authorization value sent (NULL: none). 0 when access is
 * allowed, with *t the token (t->tenant NULL while no token exists; clear it with
 * store_token_clear); SD_EAUTH saying why not; or the store's error. */
int api__token_access(api_t *a, const char *header, int64_t now, store_token_t *t,
		      sd_error_t *e);

/* ---- api_tls.c ---- */

/* Loads and checks the pair at cert and key (paths kept for reloads) and returns the
 * callback to give libmicrohttpd (MHD_OPTION_HTTPS_CERT_CALLBACK2), or NULL with e
 * (SD_EUSAGE naming the file and the cause, SD_ENOMEM). Loop thread, once. */
gnutls_certificate_retrieve_function3 *api__tls_start(const char *cert, const char *key,
						      sd_error_t *e);
/* Frees the pair; after the MHD daemon has stopped. */
void api__tls_stop(void);

/* ---- api_jobs.c ---- */

/* The calling HTTP thread's store reader (opened on first use); NULL with e on failure. */
store_reader_t *api__reader(api_t *a, sd_error_t *e);
/* Frees a thread's reader and body cache (the pthread key's destructor). */
void api__thread_ctx_free(void *p);
/* Route handlers. */
int api__h_job_get(api_t *a, req_t *r, struct MHD_Connection *c);
int api__h_jobs_list(api_t *a, req_t *r, struct MHD_Connection *c);
int api__h_job_cancel(api_t *a, req_t *r, struct MHD_Connection *c);
int api__h_job_delete(api_t *a, req_t *r, struct MHD_Connection *c);
int api__h_job_log(api_t *a, req_t *r, struct MHD_Connection *c);
int api__h_artifact(api_t *a, req_t *r, struct MHD_Connection *c);
int api__h_jobs_create(api_t *a, req_t *r, struct MHD_Connection *c);
/* An upload's first call (headers in) and its body bytes. */
int api__upload_start(api_t *a, req_t *r, struct MHD_Connection *c);
void api__upload_feed(api_t *a, req_t *r, const char *data, size_t n);
/* True when n body bytes would make the HTTP thread wait for the blob store: c is then
 * suspended, the bytes left unread, and resumed (called again with them) when the
 * store has room. Never once api_stop has begun. */
bool api__upload_wait(api_t *a, req_t *r, struct MHD_Connection *c, size_t n);
/* r's long-poll is over (answered or its connection gone): api_stop waits for these. */
void api__poll_done(api_t *a, req_t *r);
/* Frees r's upload commit, if any (the request is over); blobs it committed that no job
 * took are released. */
void api__commit_free(api_t *a, req_t *r);
/* Waits until every upload commit thread has ended (they resume their connections, so
 * the server must still run). api_stop. */
void api__commits_join(api_t *a);

/* ---- api_static.c ---- */

/* GET / (the dashboard) and GET /assets/{name} (its hashed script, stylesheet, icon). */
int api__h_page(api_t *a, req_t *r, struct MHD_Connection *c);
int api__h_asset(api_t *a, req_t *r, struct MHD_Connection *c);
/* GET /openapi.yaml: the document the binary was built with. */
int api__h_openapi(api_t *a, req_t *r, struct MHD_Connection *c);

/* ---- api_events.c ---- */

/* GET /v1/events. */
int api__h_events(api_t *a, req_t *r, struct MHD_Connection *c);
/* Reads job id's row into *j (the caller clears it) and sends the change to the streams
 * that see it, unless they already have its version. Returns the read's code:
 * SD_ENOTFOUND when the job is gone (api_job_deleted announces that). Loop thread. */
int api__events_job(api_t *a, const char *id, store_job_t *j);
/* Streams open now, for /metrics. Any thread. */
int api__events_open(api_t *a);
/* Heartbeats, when due (every event_heartbeat seconds). Loop thread, from a timer. */
void api__events_tick(api_t *a);
/* Before the server starts: the ring, and a reader for the loop thread. Returns 0,
 * SD_ENOMEM or the store's error. Loop thread. */
int api__events_start(api_t *a, sd_error_t *e);
/* Before the server stops: ends every stream (each sends what it has, then its end),
 * waiting up to 2 s, so no connection is left suspended. Loop thread. */
void api__events_end(api_t *a);
/* After the server has stopped: frees what api__events_start made. Safe if it failed. */
void api__events_free(api_t *a);

/* ---- api_metrics.c ---- */

/* A request's first call: starts its clock, notes its method and path. */
void api__request_begin(req_t *r, const char *method, const char *url);
/* A request's end (the completion callback): its duration into the histogram, and its
 * access line when access_log is on. */
void api__request_end(api_t *a, req_t *r, enum MHD_RequestTerminationCode toe);
/* GET /metrics. */
int api__h_metrics(api_t *a, req_t *r, struct MHD_Connection *c);

#endif
