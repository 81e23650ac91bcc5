/*
 * prune_oneshot: 2:4 on the constants of a frozen graph (see oneshot.h).
 *
 * Workload: per pruned layer one read of the weight where it lies, when the save writes
 * it masked (the mask and the masked copy in one step, piece by piece, on the save's
 * threads); only a weight whose group of 4 rows is too large for that step has its mask
 * computed first, on threads of its own, and is read twice. The weights are never
 * copied, not even for a weight another node also reads.
 */
#include "prune/oneshot.h"

#include <stdlib.h>
#include <string.h>

#include "prune/layers.h"
#include "prune/mask.h"
#include "prune/sparsify.h"

/* Masks still being computed while the graph is saved (prune_oneshot_end). */
struct prune_oneshot {
	prune_graph_t *g;
	prune_mask_run_t *run;
	prune_mask_job_t *jobs;
	size_t *at; /* jobs[k] is the mask of res->layers[at[k]] */
	size_t n;
};

int prune_oneshot_begin(prune_graph_t *g, const prune_config_t *cfg,
			const char *const *outputs, size_t n_outputs, size_t max_elems,
			const prune_progress_t *progress, prune_result_t *res,
			prune_oneshot_t **out, sd_error_t *e)
{
	*out = NULL;
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
	/* Masks are computed as the caller's save writes each weight (at_save); the few
	 * others on threads of their own while this thread edits the graph, in layer
	 * order, and the save waits for each when it comes to that weight. */
	arena_t *a = prune_graph_arena(g);
	prune_mask_job_t *jobs = arena_calloc(a, res->n_layers + 1, sizeof(*jobs));
	prune_tensor_t *ws = arena_calloc(a, res->n_layers + 1, sizeof(*ws));
	size_t *at = arena_calloc(a, res->n_layers + 1, sizeof(*at));
	prune_oneshot_t *o = arena_alloc(a, sizeof(*o));
	if (!jobs || !ws || !at || !o)
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
		/* Most masks are computed as the save writes their weight: one read of it. */
		bool at_save = prune_mask_fusable(&ws[nj], l->axis);
		uint8_t *bits = at_save ? NULL : arena_alloc(a, ws[nj].n / 8 + 1);
		if (!at_save && !bits)
			return sd_err(e, SD_ENOMEM, "out of memory for the mask of '%s'", l->name);
		jobs[nj] = (prune_mask_job_t){.w = &ws[nj], .axis = l->axis, .layer = l->name,
					      .at_save = at_save, .bits = bits};
		at[nj++] = i;
	}
	*o = (prune_oneshot_t){.g = g, .jobs = jobs, .at = at, .n = nj};
	if ((rc = prune_mask_run_start(jobs, nj, 0, progress, &o->run, e)))
		return rc;
	for (size_t k = 0; k < nj; k++) {
		prune_layer_t *l = &res->layers[at[k]];
		bool moved;
		/* The 2:4 kernel's mask is 2:4 by construction; its counts come at the end. */
		if ((rc = prune_sparsify(g, &cons, l, l->weight_node, &ws[k], jobs[k].bits,
					 (prune_mask_counts_t){0, 0}, true, NULL, NULL, &moved,
					 e))) {
			prune_graph_masks_final(g);
			prune_mask_run_end(o->run, NULL);
			return rc;
		}
		prune_graph_mask_later(g, o->run, k);
		if (moved)
			l->detail = arena_sprintf(a, "%s (shared weight copied to '%s')", l->detail,
						  *prune_layer_weight_ref(g, l));
		res->weights += l->elems;
	}
	prune_result_count(res);
	res->nodes_out = prune_graph_count(g);
	*out = o;
	return 0;
}

int prune_oneshot_end(prune_oneshot_t *o, prune_result_t *res, sd_error_t *e)
{
	prune_graph_masks_final(o->g);
	int rc = prune_mask_run_end(o->run, e);
	for (size_t k = 0; !rc && k < o->n; k++) {
		prune_layer_t *l = &res->layers[o->at[k]];
		l->zeros = o->jobs[k].counts.zeros;
		l->zeroed = o->jobs[k].counts.zeroed;
		res->weights_zeroed += l->zeroed;
	}
	return rc;
}
