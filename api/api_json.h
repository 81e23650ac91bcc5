/*
 * api_json: renders engine results and errors as JSON.
 *
 * The CLI's --json output and the daemon's job result are both this rendering, so a
 * script that parses one parses the other. Callers own the returned json_t (json_decref).
 * Thread safety: reentrant. It needs only the engine and jansson: the stage binary
 * links it without the daemon's libraries (the job's JSON is api_json_job).
 */
#ifndef API_JSON_H
#define API_JSON_H

#include <jansson.h>

#include "common/sd_err.h"
#include "prune/result.h"

/* The result document of a stage (see README "Result JSON"). NULL on ENOMEM. */
json_t *api_json_result(const prune_result_t *r);

/* A JSON string of s that never drops it: bytes that are not UTF-8 are shown escaped
 * (jansson refuses such a string). NULL when s is NULL or on ENOMEM. */
json_t *api_json_str(const char *s);

/* RFC 3339 UTC time with milliseconds for a unix-ms timestamp into buf (>= 32 bytes). */
void api_json_time(int64_t ms, char *buf, size_t cap);

/* An RFC 9457 problem object for e: type, title, status, detail (+ file/line/col/node). */
json_t *api_json_problem(const sd_error_t *e);

#endif
