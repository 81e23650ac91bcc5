/*
 * api_json: JSON rendering of prune_result_t and sd_error_t (see api_json.h).
 *
 * jansson's json_object_set_new steals references and tolerates NULL values by failing,
 * so a failed allocation deep inside surfaces as a NULL document at the end instead of
 * a crash; the caller reports it as out of memory.
 */
#include "api/api_json.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/sd_str.h"
#include "prune/tensor.h"

/*
 * jansson refuses a string that is not UTF-8 (json_string returns NULL and the member
 * silently disappears). Names and messages come from models and clients, so such a
 * string is shown with its stray bytes escaped instead: nothing is dropped.
 */
static json_t *jstr(const char *s)
{
	if (!s)
		return NULL; /* as json_string(NULL): the caller's set fails, nothing crashes */
	if (sd_utf8_valid(s, strlen(s)))
		return json_string(s);
	char *esc = sd_utf8_escape(s);
	json_t *j = esc ? json_string(esc) : NULL;
	free(esc);
	return j;
}

static json_t *str_or_null(const char *s) { return s ? jstr(s) : json_null(); }

static json_t *layer_json(const prune_layer_t *l, bool stats)
{
	json_t *o = json_object();
	json_t *shape = json_array();
	for (int d = 0; d < l->rank; d++)
		json_array_append_new(shape, json_integer(l->shape[d]));
	json_object_set_new(o, "name", jstr(l->name));
	json_object_set_new(o, "type", jstr(l->type));
	json_object_set_new(o, "weight", str_or_null(l->weight));
	json_object_set_new(o, "weight_input", jstr(l->weight_input));
	json_object_set_new(o, "dtype", l->dtype ? jstr(prune_dtype_name(l->dtype))
						 : json_null());
	json_object_set_new(o, "weight_shape", l->rank >= 0 ? shape : (json_decref(shape), json_null()));
	json_object_set_new(o, "prune_axis", l->axis >= 0 ? json_integer(l->axis) : json_null());
	json_object_set_new(o, "action", jstr(prune_action_name(l->action)));
	json_object_set_new(o, "reason", l->reason == PRUNE_SKIP_NONE
						 ? json_null()
						 : jstr(prune_skip_name(l->reason)));
	json_object_set_new(o, "masked", json_boolean(l->masked));
	json_object_set_new(o, "detail", str_or_null(l->detail));
	if (l->action == PRUNE_ACTION_PRUNED) {
		json_object_set_new(o, "update_freq", json_integer(l->update_freq));
		if (l->mask_var) {
			json_object_set_new(o, "mask_var", jstr(l->mask_var));
			json_object_set_new(o, "step_var", str_or_null(l->step_var));
			json_object_set_new(o, "update_op", str_or_null(l->update_op));
		}
	}
	if (stats) {
		json_object_set_new(o, "is_2of4", l->examined ? json_boolean(l->is_2of4) : json_null());
		json_object_set_new(o, "zeros", l->examined ? json_integer((json_int_t)l->zeros)
							   : json_null());
		json_object_set_new(o, "zero_fraction",
				    l->examined && l->elems
					    ? json_real((double)l->zeros / (double)l->elems)
					    : json_null());
		if (l->action == PRUNE_ACTION_PRUNED)
			json_object_set_new(o, "zeroed", json_integer((json_int_t)l->zeroed));
	}
	return o;
}

json_t *api_json_result(const prune_result_t *r)
{
	json_t *doc = json_object();
	json_t *model = json_object();
	json_object_set_new(model, "format", jstr(prune_format_name(r->format)));
	json_object_set_new(model, "format_source",
			    jstr(r->format_stated ? "stated" : "detected"));
	json_object_set_new(model, "nodes_in", json_integer((json_int_t)r->nodes_in));
	json_object_set_new(model, "nodes_out", json_integer((json_int_t)r->nodes_out));
	json_object_set_new(doc, "stage", jstr(prune_stage_name(r->stage)));
	json_object_set_new(doc, "model", model);

	json_t *outs = json_array();
	for (size_t i = 0; i < r->n_outputs; i++)
		json_array_append_new(outs, jstr(r->outputs[i]));
	json_object_set_new(doc, "outputs", outs);

	/* Stages that read weight values report what they found; insert does not. */
	bool stats = prune_stage_flags(r->stage) & PRUNE_STAGE_EXAMINES;
	json_t *layers = json_array();
	for (size_t i = 0; i < r->n_layers; i++)
		json_array_append_new(layers, layer_json(&r->layers[i], stats));
	json_object_set_new(doc, "layers", layers);

	json_t *tot = json_object(), *by = json_object();
	for (int k = 0; k < PRUNE_SKIP__COUNT; k++)
		if (r->by_reason[k])
			json_object_set_new(by, prune_skip_name(k),
					    json_integer((json_int_t)r->by_reason[k]));
	json_object_set_new(tot, "layers", json_integer((json_int_t)r->n_layers));
	json_object_set_new(tot, "pruned", json_integer((json_int_t)r->pruned));
	json_object_set_new(tot, "skipped", json_integer((json_int_t)r->skipped));
	json_object_set_new(tot, "weights", json_integer((json_int_t)r->weights));
	json_object_set_new(tot, "weights_zeroed", json_integer((json_int_t)r->weights_zeroed));
	json_object_set_new(tot, "skipped_by_reason", by);
	if (stats) {
		json_object_set_new(tot, "checked", json_integer((json_int_t)r->checked));
		json_object_set_new(tot, "layers_2of4", json_integer((json_int_t)r->layers_2of4));
	}
	json_object_set_new(doc, "totals", tot);
	if (r->init_op)
		json_object_set_new(doc, "init_op", jstr(r->init_op));
	if (r->update_op)
		json_object_set_new(doc, "update_op", jstr(r->update_op));
	if (r->n_warnings) {
		json_t *w = json_array();
		for (size_t i = 0; i < r->n_warnings; i++)
			json_array_append_new(w, jstr(r->warnings[i]));
		json_object_set_new(doc, "warnings", w);
	}
	return doc;
}

json_t *api_json_problem(const sd_error_t *e)
{
	json_t *o = json_object();
	char type[128];
	snprintf(type, sizeof(type), "https://sparsityd.dev/problems/%s", sd_err_type(e->code));
	json_object_set_new(o, "type", jstr(type));
	json_object_set_new(o, "title", jstr(sd_err_title(e->code)));
	json_object_set_new(o, "status", json_integer(sd_err_http(e->code)));
	json_object_set_new(o, "code", jstr(sd_err_type(e->code)));
	json_object_set_new(o, "detail", jstr(e->msg));
	if (e->file[0])
		json_object_set_new(o, "file", jstr(e->file));
	if (e->line) {
		json_object_set_new(o, "line", json_integer(e->line));
		json_object_set_new(o, "column", json_integer(e->col));
	}
	if (e->node[0])
		json_object_set_new(o, "node", jstr(e->node));
	return o;
}

void api_json_time(int64_t ms, char *buf, size_t cap)
{
	time_t sec = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&sec, &tm);
	snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static json_t *time_or_null(int64_t ms)
{
	if (!ms)
		return json_null();
	char buf[40];
	api_json_time(ms, buf, sizeof(buf));
	return jstr(buf);
}

static json_t *str_or_null_empty(const char *s)
{
	return s && s[0] ? jstr(s) : json_null();
}

json_t *api_json_job_head(const store_job_t *j)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", jstr(j->id));
	json_object_set_new(o, "stage", jstr(j->stage));
	json_object_set_new(o, "state", jstr(store_state_name(j->state)));
	json_object_set_new(o, "name", jstr(j->name ? j->name : ""));
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
		json_object_set_new(err, "code", jstr(j->error_code));
		json_object_set_new(err, "message", jstr(j->error_msg ? j->error_msg : ""));
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
			json_object_set_new(ao, "name", jstr(a->name));
			json_object_set_new(ao, "kind", jstr(a->input ? "input" : "output"));
			json_object_set_new(ao, "size", json_integer(a->size));
			json_object_set_new(ao, "sha256", jstr(a->sha256));
			json_object_set_new(ao, "href", jstr(href));
			json_array_append_new(arts, ao);
		}
		json_object_set_new(o, "artifacts", arts);
	}
	return o;
}
