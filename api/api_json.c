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
json_t *api_json_str(const char *s)
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

static json_t *str_or_null(const char *s) { return s ? api_json_str(s) : json_null(); }

static json_t *layer_json(const prune_layer_t *l, bool stats)
{
	json_t *o = json_object();
	json_t *shape = json_array();
	for (int d = 0; d < l->rank; d++)
		json_array_append_new(shape, json_integer(l->shape[d]));
	json_object_set_new(o, "name", api_json_str(l->name));
	json_object_set_new(o, "type", api_json_str(l->type));
	json_object_set_new(o, "weight", str_or_null(l->weight));
	json_object_set_new(o, "weight_input", api_json_str(l->weight_input));
	json_object_set_new(o, "dtype", l->dtype ? api_json_str(prune_dtype_name(l->dtype))
						 : json_null());
	json_object_set_new(o, "weight_shape", l->rank >= 0 ? shape : (json_decref(shape), json_null()));
	json_object_set_new(o, "prune_axis", l->axis >= 0 ? json_integer(l->axis) : json_null());
	json_object_set_new(o, "action", api_json_str(prune_action_name(l->action)));
	json_object_set_new(o, "reason", l->reason == PRUNE_SKIP_NONE
						 ? json_null()
						 : api_json_str(prune_skip_name(l->reason)));
	json_object_set_new(o, "masked", json_boolean(l->masked));
	json_object_set_new(o, "detail", str_or_null(l->detail));
	if (l->action == PRUNE_ACTION_PRUNED) {
		json_object_set_new(o, "update_freq", json_integer(l->update_freq));
		if (l->mask_var) {
			json_object_set_new(o, "mask_var", api_json_str(l->mask_var));
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
	json_object_set_new(model, "format", api_json_str(prune_format_name(r->format)));
	json_object_set_new(model, "format_source",
			    api_json_str(r->format_stated ? "stated" : "detected"));
	json_object_set_new(model, "nodes_in", json_integer((json_int_t)r->nodes_in));
	json_object_set_new(model, "nodes_out", json_integer((json_int_t)r->nodes_out));
	json_object_set_new(doc, "stage", api_json_str(prune_stage_name(r->stage)));
	json_object_set_new(doc, "model", model);

	json_t *outs = json_array();
	for (size_t i = 0; i < r->n_outputs; i++)
		json_array_append_new(outs, api_json_str(r->outputs[i]));
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
		json_object_set_new(doc, "init_op", api_json_str(r->init_op));
	if (r->update_op)
		json_object_set_new(doc, "update_op", api_json_str(r->update_op));
	if (r->n_warnings) {
		json_t *w = json_array();
		for (size_t i = 0; i < r->n_warnings; i++)
			json_array_append_new(w, api_json_str(r->warnings[i]));
		json_object_set_new(doc, "warnings", w);
	}
	return doc;
}

json_t *api_json_problem(const sd_error_t *e)
{
	json_t *o = json_object();
	char type[128];
	snprintf(type, sizeof(type), "https://sparsityd.dev/problems/%s", sd_err_type(e->code));
	json_object_set_new(o, "type", api_json_str(type));
	json_object_set_new(o, "title", api_json_str(sd_err_title(e->code)));
	json_object_set_new(o, "status", json_integer(sd_err_http(e->code)));
	json_object_set_new(o, "code", api_json_str(sd_err_type(e->code)));
	json_object_set_new(o, "detail", api_json_str(e->msg));
	if (e->file[0])
		json_object_set_new(o, "file", api_json_str(e->file));
	if (e->line) {
		json_object_set_new(o, "line", json_integer(e->line));
		json_object_set_new(o, "column", json_integer(e->col));
	}
	if (e->node[0])
		json_object_set_new(o, "node", api_json_str(e->node));
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
