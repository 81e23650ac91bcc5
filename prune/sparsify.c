/*
 * prune_sparsify: weight * mask into the weight constant (see sparsify.h).
 */
#include "prune/sparsify.h"

#include <stdlib.h>
#include <string.h>

#include "prune/attr.h"
#include "prune/layers.h"
#include "prune/mask.h"

/* True when every reader of node idx is `reader` (the layer or its Cast), an ignored
 * node, or an Identity whose readers pass the same test. Control edges read no value.
 * An Identity nobody reads is an endpoint a session may fetch, so it counts as a
 * reader. */
static bool exclusive(const prune_graph_t *g, const prune_consumers_t *c, size_t idx,
		      size_t reader, prune_ignore_cb ignore, void *ud, int depth)
{
	if (depth > 64)
		return false;
	for (size_t k = c->off[idx]; k < c->off[idx + 1]; k++) {
		size_t q = c->list[k];
		const Tensorflow__NodeDef *n = prune_graph_node(g, q);
		if (c->ctrl[k] || q == reader || (ignore && ignore(ud, n)))
			continue;
		if ((strcmp(n->op, "Identity") == 0 || strcmp(n->op, "ReadVariableOp") == 0) &&
		    c->off[q + 1] > c->off[q] && exclusive(g, c, q, reader, ignore, ud, depth + 1))
			continue;
		return false;
	}
	return true;
}

void prune_sparsify_stats(prune_layer_t *l, const prune_tensor_t *w)
{
	size_t zeros = 0;
	l->is_2of4 = prune_mask_is_2of4(w, l->axis, &zeros);
	l->zeros = zeros;
	l->elems = w->n;
	l->examined = true;
}

int prune_sparsify(prune_graph_t *g, const prune_consumers_t *c, prune_layer_t *l,
		   size_t cidx, const prune_tensor_t *w, const uint8_t *bits,
		   prune_mask_counts_t counts, bool is_2of4, prune_ignore_cb ignore, void *ud,
		   bool *moved, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	Tensorflow__NodeDef *cn = prune_graph_node(g, cidx);
	Tensorflow__TensorProto *tp;
	*moved = !exclusive(g, c, cidx, prune_layer_reader(g, l), ignore, ud, 0);
	if (!*moved) {
		tp = prune_node_attr(cn, "value")->tensor;
	} else {
		/* The copy reads the same bytes; only its output is masked. */
		Tensorflow__AttrValue *v = prune_attr_splat(a, w->dtype, 0.0, NULL, 0);
		const prune_attr_kv_t kv[] = {{"dtype", prune_attr_type(a, w->dtype)},
					      {"value", v}};
		prune_node_spec_t spec = {
			.name = arena_sprintf(a, "%s/weight_2of4", l->name), .op = "Const",
			.device = cn->device && cn->device[0] ? cn->device : NULL,
			.attrs = kv, .n_attrs = 2};
		if (!spec.name || !v || !kv[0].value)
			return sd_err(e, SD_ENOMEM, "out of memory");
		Tensorflow__NodeDef *nn = prune_graph_add(g, &spec, e);
		if (!nn)
			return e && e->code ? e->code : SD_EMODEL;
		*prune_layer_weight_ref(g, l) = nn->name;
		tp = v->tensor;
	}
	int rc = prune_tensor_write(tp, w, a, e);
	if (!rc)
		rc = prune_graph_mask_on_save(g, tp, w->dtype, bits, e);
	if (rc)
		return rc;
	l->is_2of4 = is_2of4;
	l->zeros = counts.zeros;
	l->zeroed = counts.zeroed;
	l->elems = w->n;
	l->examined = true;
	return 0;
}
