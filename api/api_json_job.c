/*
 * api_json_job: the API's JSON of a job (see api_json_job.h).
 */
#include "api/api_json_job.h"

#include <stdio.h>
#include <string.h>

#include "api/api_json.h"

static json_t *time_or_null(int64_t ms)
{
	if (!ms)
		return json_null();
	char buf[40];
	api_json_time(ms, buf, sizeof(buf));
	return api_json_str(buf);
}

static json_t *str_or_null_empty(const char *s)
{
	return s && s[0] ? api_json_str(s) : json_null();
}

json_t *api_json_job_head(const store_job_t *j)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", api_json_str(j->id));
	json_object_set_new(o, "stage", api_json_str(j->stage));
	json_object_set_new(o, "state", api_json_str(store_state_name(j->state)));
	json_object_set_new(o, "name", api_json_str(j->name ? j->name : ""));
	json_object_set_new(o, "progress", json_integer(j->progress));
	json_object_set_new(o, "input_bytes", json_integer(j->input_bytes));
	json_object_set_new(o, "created_at", time_or_null(j->created_ms));
	json_object_set_new(o, "updated_at", time_or_null(j->updated_ms));
	json_object_set_new(o, "started_at", time_or_null(j->started_ms));
	json_object_set_new(o, "finished_at", time_or_null(j->finished_ms));
	return o;
}

json_t *api_json_job(const store_job_t *j, bool with_artifacts)
{
	json_t *o = api_json_job_head(j);
	if (!o)
		return NULL;
	json_t *outs = json_array();
	for (const char *p = j->outputs; p && *p;) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if (n)
			json_array_append_new(outs, json_stringn(p, n));
		p = end ? end + 1 : p + n;
	}
	json_object_set_new(o, "outputs", outs);
	json_object_set_new(o, "format", str_or_null_empty(j->format));
	json_object_set_new(o, "record_from", str_or_null_empty(j->record_from));
	json_object_set_new(o, "attempts", json_integer(j->attempts));
	json_t *result = j->result_json ? json_loads(j->result_json, 0, NULL) : NULL;
	json_object_set_new(o, "result", result ? result : json_null());
	if (j->error_code) {
		json_t *err = json_object();
		json_object_set_new(err, "code", api_json_str(j->error_code));
		json_object_set_new(err, "message", api_json_str(j->error_msg ? j->error_msg : ""));
		json_object_set_new(o, "error", err);
	} else {
		json_object_set_new(o, "error", json_null());
	}
	if (with_artifacts) {
		json_t *arts = json_array();
		for (size_t i = 0; i < j->n_artifacts; i++) {
			const store_artifact_t *a = &j->artifacts[i];
			json_t *ao = json_object();
			char href[160];
			snprintf(href, sizeof(href), "/v1/jobs/%s/artifacts/%s", j->id, a->name);
			json_object_set_new(ao, "name", api_json_str(a->name));
			json_object_set_new(ao, "kind", api_json_str(a->input ? "input" : "output"));
			json_object_set_new(ao, "size", json_integer(a->size));
			json_object_set_new(ao, "sha256", api_json_str(a->sha256));
			json_object_set_new(ao, "href", api_json_str(href));
			json_array_append_new(arts, ao);
		}
		json_object_set_new(o, "artifacts", arts);
	}
	return o;
}
