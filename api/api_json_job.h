/*
 * api_json_job: a job as the API shows it, in JSON (openapi.yaml Job). Callers own the
 * returned json_t (json_decref). Thread safety: reentrant.
 */
#ifndef API_JSON_JOB_H
#define API_JSON_JOB_H

#include <jansson.h>
#include <stdbool.h>

#include "store/store.h"

/* The whole job; artifacts only when asked. NULL on ENOMEM. The stored result
 * document is embedded as parsed JSON. */
json_t *api_json_job(const store_job_t *j, bool with_artifacts);

/* The members of a job a list row shows (id, stage, state, name, progress, input_bytes
 * and the four times), the start of api_json_job's document and the body of a job
 * event. NULL on ENOMEM. */
json_t *api_json_job_head(const store_job_t *j);

#endif
