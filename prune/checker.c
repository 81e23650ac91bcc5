/*
 * prune_checker: the check stage, a report on the 2:4 state of a model's layers (see
 * checker.h).
 *
 * Not every layer's weight is read: only layers whose skip reason leaves the values
 * meaningful (none, axis too short to prune, weight shared by several layers) are
 * examined, and only when the weight is a Const; a variable's values are not in the
 * graph, so that layer is reported as skipped (not a constant). Weights stored in
 * tensor_content are examined where they lie in the model, without a copy; weights in
 * the typed value fields or the splat form are decoded into the arena first
 * (prune_tensor_read). The graph is never modified.
 */
#include "prune/checker.h"

#include <string.h>

#include "prune/layers.h"
#include "prune/sparsify.h"

/* Reasons that leave the weight's values meaningful to examine. */
static bool examinable(prune_skip_t r)
{
	return r == PRUNE_SKIP_NONE || r == PRUNE_SKIP_AXIS_TOO_SHORT ||
	       r == PRUNE_SKIP_SHARED_WEIGHT;
}

int prune_check(prune_graph_t *g, const char *const *outputs, size_t n_outputs,
		size_t max_elems, const prune_progress_t *progress, prune_result_t *res,
		sd_error_t *e)
{
	prune_result_begin(res, PRUNE_STAGE_CHECK, g, outputs, n_outputs);
	int rc = prune_layers_find(g, outputs, n_outputs, max_elems, &res->layers,
				   &res->n_layers, e);
	if (rc)
		return rc;
	arena_t *a = prune_graph_arena(g);
	for (size_t i = 0; i < res->n_layers; i++) {
		prune_progress_report(progress, i, res->n_layers);
		prune_layer_t *l = &res->layers[i];
		const Tensorflow__NodeDef *wn =
			l->weight ? prune_graph_node(g, l->weight_node) : NULL;
		if (!examinable(l->reason)) {
			l->action = PRUNE_ACTION_SKIPPED;
			continue;
		}
		if (!wn || strcmp(wn->op, "Const")) {
			l->action = PRUNE_ACTION_SKIPPED;
			l->reason = PRUNE_SKIP_NOT_CONSTANT;
			l->detail = "weight is a variable: its values are not in the graph";
			continue;
		}
		prune_tensor_t w;
		if ((rc = prune_tensor_read(prune_node_attr(wn, "value")->tensor, max_elems,
					    wn->name, a, &w, e)))
			return rc;
		prune_sparsify_stats(l, &w);
		l->action = PRUNE_ACTION_CHECKED;
		l->detail = arena_sprintf(a, "%s along axis %d, %.1f%% zeros%s%s%s%s",
					  l->is_2of4 ? "2:4" : "not 2:4", l->axis,
					  w.n ? 100.0 * (double)l->zeros / (double)w.n : 0.0,
					  l->cast ? ", read through Cast '" : "", l->cast ? l->cast : "",
					  l->cast ? "'" : "", l->masked ? " (masked by sparsityd)" : "");
	}
	prune_progress_report(progress, res->n_layers, res->n_layers);
	prune_result_count(res);
	return 0;
}
