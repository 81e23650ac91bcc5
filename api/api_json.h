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

#include "result.h"
#include "sd_err.h"

/* The result document of a stage (see README "Result JSON"). NULL on ENOMEM. */
json_t *api_json_result(const prune_result_t *r);

/* An RFC 9457 problem object for e: type, title, status, detail (+ file/line/col/node). */
json_t *api_json_problem(const sd_error_t *e);

#endif
