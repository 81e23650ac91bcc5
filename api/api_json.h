/*
 * api_json: renders engine results and errors as JSON.
 *
 * The CLI's --json output and the daemon's job result are both this rendering, so a
 * script that parses one parses the other. Callers own the returned json_t (json_decref).
 * Thread safety: reentrant.
 */
#ifndef API_JSON_H
#define API_JSON_H

#include <jansson.h>

#include "common/sd_err.h"
#include "prune/result.h"
#include "store/store.h"

/* The result document of a stage (see README "Result JSON"). NULL on ENOMEM. */
json_t *api_json_result(const prune_result_t *r);

/* A job as the API shows it (see openapi.yaml Job); artifacts only when asked. NULL
 * on ENOMEM. The stored result document is embedded as parsed JSON. */
json_t *api_json_job(const store_job_t *j, bool with_artifacts);

/* The members of a job a list row shows (id, stage, state, name, progress, input_bytes
 * and the four times), the start of api_json_job's document and the body of a job
 * event. NULL on ENOMEM. */
json_t *api_json_job_head(const store_job_t *j);

/* RFC 3339 UTC time with milliseconds for a unix-ms timestamp into buf (>= 32 bytes). */
void api_json_time(int64_t ms, char *buf, size_t cap);

/* An RFC 9457 problem object for e: type, title, status, detail (+ file/line/col/node). */
json_t *api_json_problem(const sd_error_t *e);

#endif
