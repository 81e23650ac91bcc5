/*
 * prune_oneshot: 2:4 on the constants of a frozen graph (see oneshot.h).
 *
 * Workload: per pruned layer one read of the weight where it lies (mask and bits, in
 * cache-sized pieces, layers spread over the cores) and one more when the save writes
 * it masked: the weights are never copied, not even for a weight another node also
 * reads.
 */
#include "prune/oneshot.h"

#include <stdlib.h>
#include <string.h>

#include "prune/layers.h"
#include "prune/mask.h"
#include "prune/sparsify.h"

int prune_oneshot(prune_graph_t *g, const prune_config_t *cfg, const char *const *outputs,
		  size_t n_outputs, size_t max_elems, const prune_progress_t *progress,
		  prune_result_t *res, sd_error_t *e)
{
	prune_result_begin(res, PRUNE_STAGE_PRUNE, g, outputs, n_outputs);
	int rc = prune_layers_find(g, outputs, n_outputs, max_elems, &res->layers,
				   &res->n_layers, e);
	if (rc)
		return rc;
	for (size_t i = 0; i < res->n_layers; i++) {
		prune_layer_t *l = &res->layers[i];
		if (l->masked)
			return sd_err_node(e, SD_EMODEL, l->name,
					   "layer '%s' carries a sparsityd mask: use export with the "
					   "record for an inserted model, prune is for plain frozen "
					   "graphs",
					   l->name);
		/* A variable has no values to prune in a graph file. */
		ptrdiff_t wi = l->weight ? prune_graph_find(g, l->weight, strlen(l->weight)) : -1;
		if (wi >= 0 && strcmp(prune_graph_node(g, (size_t)wi)->op, "Const") &&
		    l->reason == PRUNE_SKIP_NONE) {
			l->action = PRUNE_ACTION_SKIPPED;
			l->reason = PRUNE_SKIP_NOT_CONSTANT;
			l->detail = "weight is a variable; prune takes a frozen graph";
		}
	}
	if ((rc = prune_config_apply(cfg, res->layers, res->n_layers, e)))
		return rc;

	prune_consumers_t cons;
	if ((rc = prune_graph_consumers(g, &cons, e)))
		return rc;
	/* Every weight is read and its mask computed first, the masks on all cores (the
	 * layers are independent); then the graph is edited, in layer order, on this
	 * thread. */
	arena_t *a = prune_graph_arena(g);
	prune_mask_job_t *jobs = arena_calloc(a, res->n_layers + 1, sizeof(*jobs));
	prune_tensor_t *ws = arena_calloc(a, res->n_layers + 1, sizeof(*ws));
	size_t *at = arena_calloc(a, res->n_layers + 1, sizeof(*at));
	if (!jobs || !ws || !at)
		return sd_err(e, SD_ENOMEM, "out of memory");
	size_t nj = 0;
	for (size_t i = 0; i < res->n_layers; i++) {
		prune_layer_t *l = &res->layers[i];
		if (l->action != PRUNE_ACTION_PRUNED)
			continue;
		Tensorflow__NodeDef *wn = prune_graph_node(g, l->weight_node);
		if ((rc = prune_tensor_read(prune_node_attr(wn, "value")->tensor, max_elems,
					    l->weight, a, &ws[nj], e)))
			return rc;
		uint8_t *bits = arena_alloc(a, ws[nj].n / 8 + 1);
		if (!bits)
			return sd_err(e, SD_ENOMEM, "out of memory for the mask of '%s'", l->name);
		jobs[nj] = (prune_mask_job_t){.w = &ws[nj], .axis = l->axis, .layer = l->name,
					      .bits = bits};
		at[nj++] = i;
	}
	if ((rc = prune_mask_batch(jobs, nj, 0, progress, e)))
		return rc;
	for (size_t k = 0; k < nj; k++) {
		prune_layer_t *l = &res->layers[at[k]];
		bool moved;
		/* The 2:4 kernel's mask is 2:4 by construction. */
		if ((rc = prune_sparsify(g, &cons, l, l->weight_node, &ws[k], jobs[k].bits,
					 jobs[k].counts, true, NULL, NULL, &moved, e)))
			return rc;
		if (moved)
			l->detail = arena_sprintf(a, "%s (shared weight copied to '%s')", l->detail,
						  *prune_layer_weight_ref(g, l));
		res->weights += l->elems;
		res->weights_zeroed += l->zeroed;
	}
	prune_result_count(res);
	res->nodes_out = prune_graph_count(g);
	return 0;
}
