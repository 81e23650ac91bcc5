/*
 * api_metrics: /metrics, and the accounting of every request behind it (see
 * api_int.h): a duration histogram by route and method, and an access log line.
 *
 * A request is timed from its first call (headers in) to libmicrohttpd's completion
 * callback, when the answer has been handed to the socket or the connection is gone:
 * a long-poll counts its wait, an upload its body, a download its last byte. Label
 * values come from the route table and a fixed list of methods; a request no route
 * matches counts under route="unmatched" and an unknown method under method="other",
 * so a client scanning paths cannot grow the page. Requests libmicrohttpd answers
 * itself (a header block or a request line too long, a request line that is not
 * HTTP) never reach this code and are neither counted nor logged.
 *
 * The page: the API's families here, the scheduler's through api_ops_t.metrics, and
 * process_* from sd_prom, in the text format 0.0.4 with its UTF-8 charset.
 */
#include "api/api_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/sd_log.h"
#include "common/sd_str.h"

static const char *const methods[API__METHODS] = {
	[API__M_GET] = "GET",	  [API__M_HEAD] = "HEAD",   [API__M_POST] = "POST",
	[API__M_PUT] = "PUT",	  [API__M_DELETE] = "DELETE", [API__M_PATCH] = "PATCH",
	[API__M_OPTIONS] = "OPTIONS", [API__M_OTHER] = "other",
};

/* From a cached GET (sub-millisecond) to a GB upload or a 60 s long-poll (minutes). */
static const double http_le_v[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300};
static const sd_prom_le_t http_le = {http_le_v, sizeof(http_le_v) / sizeof(http_le_v[0])};

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void api__request_begin(req_t *r, const char *method, const char *url)
{
	r->t0_ns = mono_ns();
	r->method = API__M_OTHER;
	for (int m = 0; m < API__M_OTHER; m++)
		if (!strcmp(method, methods[m]))
			r->method = (uint8_t)m;
	/* The path is only logged when no route matched (a route's template says more and
	 * reveals no ids); a client chose its bytes, so anything that could break the
	 * line's key=value form, or a terminal, is shown as '?'. */
	size_t k = 0;
	for (const unsigned char *p = (const unsigned char *)url; *p && k + 1 < sizeof(r->path); p++)
		r->path[k++] = *p > ' ' && *p < 0x7f && *p != '"' && *p != '\\' ? (char)*p : '?';
	r->path[k] = 0;
}

static const char *end_name(enum MHD_RequestTerminationCode toe)
{
	switch (toe) {
	case MHD_REQUEST_TERMINATED_COMPLETED_OK: return NULL;
	case MHD_REQUEST_TERMINATED_WITH_ERROR: return "error";
	case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
	case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
	case MHD_REQUEST_TERMINATED_READ_ERROR: return "read-error";
	case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client-abort";
	}
	return "unknown";
}

void api__request_end(api_t *a, req_t *r, enum MHD_RequestTerminationCode toe)
{
	double secs = (double)(mono_ns() - r->t0_ns) / 1e9;
	size_t route = r->route ? (size_t)(r->route - api__routes) : api__n_routes;
	/* Only answered requests: a connection dropped before any answer has no status to
	 * be a latency of (the access line still shows it). */
	if (r->status)
		sd_prom_observe(&a->http_s[route][r->method], &http_le, secs);
	if (!a->conf.access_log)
		return;
	char status[8] = "-";
	if (r->status)
		snprintf(status, sizeof(status), "%d", r->status);
	const char *end = end_name(toe);
	bool routed = r->route != NULL;
	log_info("access", "method=%s route=%s%s%s status=%s bytes=%" PRIu64
		 " duration=%.6f tenant=%s%s%s",
		 methods[r->method], routed ? r->route->path : "-", routed ? "" : " path=",
		 routed ? "" : r->path, status, r->bytes, secs, r->tenant ? r->tenant : "-",
		 end ? " end=" : "", end ? end : "");
}

int api__h_metrics(api_t *a, req_t *r, struct MHD_Connection *c)
{
	char *buf = NULL;
	size_t len = 0;
	sd_error_t e;
	int64_t counts[STORE_STATE__COUNT] = {0}, files, bytes;
	store_reader_t *rd = api__reader(a, &e);
	if (!rd || store_job_counts(rd, counts, &e) || store_blob_usage(rd, &files, &bytes, &e))
		return api__send_problem(a, r, c, &e);
	sd_prom_head(&buf, &len, "sparsityd_jobs", "gauge", "Jobs by state.");
	for (int s = 0; s < STORE_STATE__COUNT; s++)
		sd_appendf(&buf, &len, "sparsityd_jobs{state=\"%s\"} %" PRId64 "\n",
			   store_state_name((store_state_t)s), counts[s]);
	sd_prom_head(&buf, &len, "sparsityd_http_requests_total", "counter",
		     "HTTP responses by status.");
	for (int s = 100; s < 600; s++) {
		uint64_t v = atomic_load(&a->status_count[s]);
		if (v)
			sd_appendf(&buf, &len, "sparsityd_http_requests_total{status=\"%d\"} %" PRIu64 "\n",
				   s, v);
	}
	sd_prom_head(&buf, &len, "sparsityd_http_request_duration_seconds", "histogram",
		     "Time from a request's headers to its answer sent, by route and method.");
	for (size_t i = 0; i <= api__n_routes; i++) {
		for (int m = 0; m < API__METHODS; m++) {
			if (!sd_prom_hist_used(&a->http_s[i][m], &http_le))
				continue;
			char labels[128];
			snprintf(labels, sizeof(labels), "route=\"%s\",method=\"%s\"",
				 i < api__n_routes ? api__routes[i].path : "unmatched", methods[m]);
			sd_prom_hist_put(&buf, &len, "sparsityd_http_request_duration_seconds", labels,
					 &a->http_s[i][m], &http_le);
		}
	}
	sd_prom_head(&buf, &len, "sparsityd_upload_bytes_total", "counter",
		     "Bytes received in uploads.");
	sd_appendf(&buf, &len, "sparsityd_upload_bytes_total %" PRIu64 "\n",
		   (uint64_t)atomic_load(&a->upload_bytes));
	sd_prom_head(&buf, &len, "sparsityd_uploads_in_flight", "gauge",
		     "Request bodies streaming into the store now (at most max_uploads).");
	sd_appendf(&buf, &len, "sparsityd_uploads_in_flight %d\n", atomic_load(&a->uploads));
	sd_prom_head(&buf, &len, "sparsityd_event_streams", "gauge",
		     "GET /v1/events streams open now (at most max_event_streams).");
	sd_appendf(&buf, &len, "sparsityd_event_streams %d\n", api__events_open(a));
	sd_prom_head(&buf, &len, "sparsityd_blob_store_files", "gauge",
		     "Distinct files (models, configs, records, reports) the jobs hold.");
	sd_appendf(&buf, &len, "sparsityd_blob_store_files %" PRId64 "\n", files);
	sd_prom_head(&buf, &len, "sparsityd_blob_store_bytes", "gauge",
		     "Bytes of those files on disk.");
	sd_appendf(&buf, &len, "sparsityd_blob_store_bytes %" PRId64 "\n", bytes);
	a->ops.metrics(a->ops.ud, &buf, &len);
	sd_prom_process(&buf, &len);
	if (!buf)
		return MHD_NO;
	return api__send_text(a, r, c, 200, SD_PROM_CONTENT_TYPE, buf, len, NULL);
}
