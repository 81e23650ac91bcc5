/*
 * api_int: what the files of api/ share and nothing outside them may use: the daemon
 * and request structs, the route table's types, and the reply, job and upload
 * functions each file provides. Prefix api__ (see api.h for the public face).
 *
 *   api_http.c    libmicrohttpd life cycle, route table, dispatch, auth, service pages
 *   api_reply.c   responses: JSON, problems, plain text, request header and query values
 *   api_jobs.c    job handlers, the per-thread reader and body cache, long-poll waiters,
 *                 and the HTTP side of uploads (api_upload.c parses the body itself)
 */
#ifndef API_INT_H
#define API_INT_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/api.h"
#include "api/api_parse.h"
#include "api/api_upload.h"

#define WAIT_MAX_S 60
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

/* ---- api_reply.c: every answer goes through api__queue (it counts statuses) ---- */

/* Queues resp (consumed; NULL: out of memory) with status; marks r answered. */
int api__queue(api_t *a, req_t *r, struct MHD_Connection *c, int status,
	       struct MHD_Response *resp);
/* A response carrying doc (consumed) as JSON of the given content type; NULL on ENOMEM. */
struct MHD_Response *api__json_response(json_t *doc, const char *type);
/* The problem document for e, answered with `status`. */
struct MHD_Response *api__problem_response(const sd_error_t *e, int status);
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
/* r's long-poll is over (answered or its connection gone): api_stop waits for these. */
void api__poll_done(api_t *a, req_t *r);

#endif
