/*
 * api_reply: how the API answers (see api_int.h): JSON bodies, RFC 9457 problems whose
 * status, type and title come from the error table, plain text. Every answer passes
 * api__queue, which adds Cache-Control (unless the handler chose one) and
 * X-Content-Type-Options, counts the status for /metrics, notes the status and body
 * size for the access line, and marks the request answered.
 */
#include "api/api_int.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_json.h"
#include "common/sd_log.h"

int api__queue(api_t *a, req_t *r, struct MHD_Connection *c, int status,
		 struct MHD_Response *resp, uint64_t len)
{
	if (!resp)
		return MHD_NO;
	if (!MHD_get_response_header(resp, "Cache-Control"))
		MHD_add_response_header(resp, "Cache-Control", "no-cache");
	/* A browser must never guess a type: a job log or a model name rendered as HTML
	 * would run in the dashboard's origin. */
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	int ok = MHD_queue_response(c, (unsigned)status, resp);
	MHD_destroy_response(resp);
	if (status >= 100 && status < 600)
		atomic_fetch_add(&a->status_count[status], 1);
	r->answered = true;
	r->status = status;
	r->bytes = r->method == API__M_HEAD ? 0 : len; /* libmicrohttpd sends no body then */
	return ok;
}

struct MHD_Response *api__json_response(json_t *doc, const char *type, size_t *len)
{
	char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!body)
		return NULL;
	*len = strlen(body);
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(*len, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return NULL;
	}
	MHD_add_response_header(resp, "Content-Type", type);
	return resp;
}

struct MHD_Response *api__problem_response(const sd_error_t *e, int status, size_t *len)
{
	json_t *p = api_json_problem(e);
	if (p)
		json_object_set_new(p, "status", json_integer(status));
	return api__json_response(p, "application/problem+json", len);
}

int api__send_text(api_t *a, req_t *r, struct MHD_Connection *c, int status,
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
	return api__queue(a, r, c, status, resp, len);
}

int api__send_json(api_t *a, req_t *r, struct MHD_Connection *c, int status, json_t *doc,
		     const char *etag)
{
	size_t len = 0;
	struct MHD_Response *resp = api__json_response(doc, "application/json", &len);
	if (resp && etag)
		MHD_add_response_header(resp, "ETag", etag);
	return api__queue(a, r, c, status, resp, len);
}

static int api__send_problem_status(api_t *a, req_t *r, struct MHD_Connection *c, int status,
			       const sd_error_t *e)
{
	size_t len = 0;
	struct MHD_Response *resp = api__problem_response(e, status, &len);
	if (!resp)
		return MHD_NO;
	if (status == 401)
		MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
	if (status == 429 || status == 503)
		MHD_add_response_header(resp, "Retry-After", "5");
	log_debug("api", "%d %s", status, e->msg);
	return api__queue(a, r, c, status, resp, len);
}

int api__send_problem(api_t *a, req_t *r, struct MHD_Connection *c, const sd_error_t *e)
{
	return api__send_problem_status(a, r, c, sd_err_http(e->code), e);
}

int api__fail(api_t *a, req_t *r, struct MHD_Connection *c, int code, const char *fmt, ...)
{
	sd_error_t e;
	va_list ap;
	va_start(ap, fmt);
	sd_errv(&e, code, fmt, ap);
	va_end(ap);
	return api__send_problem(a, r, c, &e);
}

const char *api__header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

const char *api__query(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}
