/*
 * prune_export: undoes insert on a frozen graph, leaving weight * mask (see export.h).
 *
 * Workload: the record's layers are checked and read, their masks computed on all
 * cores (each weight is read where it lies, and written masked by the save, never
 * copied), the layers edited, then one sweep deletes the inserted nodes and,
 * transitively, nodes whose every reader was deleted. The mask is rebuilt from the
 * frozen state exactly as the graph's own SelectV2 would pick it, so the exported model
 * computes the same outputs as the masked one.
 */
#include "prune/export.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/sd_str.h"
#include "prune/layers.h"
#include "prune/mask.h"
#include "prune/sparsify.h"

static bool in_scope(const char *name, const char *scope)
{
	size_t n = strlen(scope);
	return strncmp(name, scope, n) == 0 && name[n] == '/';
}

static bool ignore_scope(void *ud, const Tensorflow__NodeDef *n)
{
	return in_scope(n->name, ud);
}

/* A Const node of the graph by name (after freezing every variable is one). */
static const Tensorflow__NodeDef *frozen_const(prune_tracer_t *t, const char *input,
					       const char *layer, const char *what,
					       sd_error_t *e)
{
	ptrdiff_t idx = prune_tracer_trace(t, input);
	const Tensorflow__NodeDef *n = idx >= 0 ? prune_graph_node(t->g, (size_t)idx) : NULL;
	if (!n || strcmp(n->op, "Const")) {
		sd_err_node(e, SD_EMODEL, layer,
			    "layer '%s': its %s ('%s') is not a constant; export takes the frozen "
			    "graph (convert_variables_to_constants after restoring the checkpoint)",
			    layer, what, input);
		return NULL;
	}
	Tensorflow__AttrValue *v = prune_node_attr(n, "value");
	if (!v || v->value_case != TENSORFLOW__ATTR_VALUE__VALUE_TENSOR) {
		sd_err_node(e, SD_EMODEL, layer, "constant '%s' has no value", n->name);
		return NULL;
	}
	return n;
}

/* The value of a frozen int64 scalar (`what`: "step", "update_freq"). */
static int read_i64(const Tensorflow__NodeDef *n, const char *layer, const char *what,
		    int64_t *v, sd_error_t *e)
{
	const Tensorflow__TensorProto *t = prune_node_attr(n, "value")->tensor;
	if (t->dtype == TENSORFLOW__DATA_TYPE__DT_INT64 && t->n_int64_val == 1)
		*v = t->int64_val[0];
	else if (t->dtype == TENSORFLOW__DATA_TYPE__DT_INT64 && t->tensor_content.len == 8)
		memcpy(v, t->tensor_content.data, 8);
	else if (t->dtype == TENSORFLOW__DATA_TYPE__DT_INT64 && !t->n_int64_val &&
		 !t->tensor_content.len)
		*v = 0;
	else
		return sd_err_node(e, SD_EMODEL, layer,
				   "layer '%s': %s constant '%s' is not an int64 scalar", layer, what,
				   n->name);
	return 0;
}

/*
 * Checks the record's update_freq against the graph's: export picks the fresh or the
 * stored mask by it, so a record that says otherwise than the graph's own
 * <scope>/step_mod (absent for 0) would export a mask the masked graph never used.
 */
static int check_freq(prune_graph_t *g, prune_tracer_t *t, const prune_record_entry_t *r,
		      sd_error_t *e)
{
	const char *mod_name = arena_sprintf(prune_graph_arena(g), "%s/step_mod", r->scope);
	if (!mod_name)
		return sd_err(e, SD_ENOMEM, "out of memory");
	ptrdiff_t mi = prune_graph_find(g, mod_name, strlen(mod_name));
	int64_t freq = 0;
	if (mi >= 0) {
		const Tensorflow__NodeDef *mod = prune_graph_node(g, (size_t)mi);
		if (mod->n_input != 2)
			return sd_err_node(e, SD_EMODEL, r->name, "layer '%s': '%s' is malformed",
					   r->name, mod_name);
		const Tensorflow__NodeDef *fc = frozen_const(t, mod->input[1], r->name,
							     "update_freq", e);
		int rc = fc ? read_i64(fc, r->name, "update_freq", &freq, e) : e->code;
		if (rc)
			return rc;
	}
	if (freq != (int64_t)r->update_freq)
		return sd_err_node(e, SD_ERECORD, r->name,
				   "layer '%s': the record's update_freq is %" PRIu32 " but the "
				   "graph's is %" PRId64 " (use the record written with this model)",
				   r->name, r->update_freq, freq);
	return 0;
}

static bool same_shape(const prune_tensor_t *t, const int64_t *shape, int rank)
{
	if (t->rank != rank)
		return false;
	for (int d = 0; d < rank; d++)
		if (t->dims[d] != shape[d])
			return false;
	return true;
}

typedef struct ctx {
	prune_graph_t *g;
	prune_consumers_t cons;
	prune_tracer_t tracer; /* until the first edit (finish_layer) */
	size_t max_elems;
	sd_error_t *e;
} ctx_t;

/* A layer between its checks and its edit (its mask job sits in the batch's array). */
typedef struct pending_layer {
	prune_tensor_t w, m;
	const Tensorflow__NodeDef *wc;
	int64_t step;
} pending_layer_t;

/*
 * Checks layer r of the record against the model, reads its weight and, when the
 * frozen graph uses the stored mask rather than a fresh one, that mask; *job is what
 * prune_mask_batch then computes.
 */
static int prepare_layer(ctx_t *x, const prune_record_entry_t *r, prune_layer_t *l,
			 pending_layer_t *p, prune_mask_job_t *job)
{
	prune_graph_t *g = x->g;
	sd_error_t *e = x->e;
	arena_t *a = prune_graph_arena(g);
	ptrdiff_t li = prune_graph_find(g, r->name, strlen(r->name));
	if (li < 0)
		return sd_err_node(e, SD_ERECORD, r->name,
				   "the record lists layer '%s', which is not in the model",
				   r->name);
	Tensorflow__NodeDef *ln = prune_graph_node(g, (size_t)li);
	if (strcmp(ln->op, r->layer_type))
		return sd_err_node(e, SD_ERECORD, r->name,
				   "layer '%s' is a %s in the model but a %s in the record", r->name,
				   ln->op, r->layer_type);
	/* The mask the graph computed ran along the layer's own axis: a record that says
	 * otherwise would export another mask than the one the masked graph used. */
	if (prune_layer_axis(ln) != r->axis)
		return sd_err_node(e, SD_ERECORD, r->name,
				   "layer '%s': the record's prune_axis is %d but the %s's is %d "
				   "(use the record written with this model)",
				   r->name, r->axis, ln->op, prune_layer_axis(ln));
	l->name = ln->name;
	l->type = ln->op;
	l->node = (size_t)li;
	l->axis = r->axis;
	l->rank = r->rank;
	memcpy(l->shape, r->shape, sizeof(l->shape));
	l->update_freq = r->update_freq;
	l->weight_input = r->weight_input;
	l->action = PRUNE_ACTION_PRUNED;
	l->masked = true;

	const char *mw_name = arena_sprintf(a, "%s/masked_weight", r->scope);
	const char *mv_name = arena_sprintf(a, "%s/mask_value", r->scope);
	const char *step_name = arena_sprintf(a, "%s/step", r->scope);
	if (!mw_name || !mv_name || !step_name)
		return sd_err(e, SD_ENOMEM, "out of memory");
	size_t slot;
	ptrdiff_t rd = prune_tracer_weight_reader(&x->tracer, (size_t)li, &slot);
	if (rd < 0 || strcmp(prune_graph_node(g, (size_t)rd)->input[slot], mw_name))
		return sd_err_node(e, SD_EMODEL, r->name,
				   "layer '%s' does not read '%s': the model does not carry the "
				   "insertion the record describes (export takes the frozen graph "
				   "of an inserted model)",
				   r->name, mw_name);
	if ((size_t)rd != l->node)
		l->cast = prune_graph_node(g, (size_t)rd)->name;
	if (!l->cast != !r->cast || (l->cast && strcmp(l->cast, r->cast)))
		return sd_err_node(e, SD_ERECORD, r->name,
				   "layer '%s': the Cast its weight goes through is '%s' in the "
				   "model but '%s' in the record",
				   r->name, l->cast ? l->cast : "(none)", r->cast ? r->cast : "(none)");
	ptrdiff_t mwi = prune_graph_find(g, mw_name, strlen(mw_name));
	ptrdiff_t mvi = prune_graph_find(g, mv_name, strlen(mv_name));
	const Tensorflow__NodeDef *mw = mwi >= 0 ? prune_graph_node(g, (size_t)mwi) : NULL;
	const Tensorflow__NodeDef *mv = mvi >= 0 ? prune_graph_node(g, (size_t)mvi) : NULL;
	if (!mw || mw->n_input != 2 || !mv || mv->n_input != 3)
		return sd_err_node(e, SD_EMODEL, r->name,
				   "layer '%s': '%s' or '%s' is missing or malformed", r->name,
				   mw_name, mv_name);
	if (strcmp(mw->input[0], r->weight_input))
		return sd_err_node(e, SD_ERECORD, r->name,
				   "layer '%s': the masked weight reads '%s' but the record says "
				   "'%s'",
				   r->name, mw->input[0], r->weight_input);

	const Tensorflow__NodeDef *wc = frozen_const(&x->tracer, r->weight_input, r->name, "weight", e);
	const Tensorflow__NodeDef *mc = wc ? frozen_const(&x->tracer, mv->input[2], r->name, "mask", e)
					   : NULL;
	const Tensorflow__NodeDef *sc = mc ? frozen_const(&x->tracer, step_name, r->name, "step", e) : NULL;
	if (!sc)
		return e->code;
	l->weight = wc->name;
	prune_tensor_t *w = &p->w;
	int rc;
	if ((rc = prune_tensor_read(prune_node_attr(wc, "value")->tensor, x->max_elems, wc->name,
				    a, w, e)) ||
	    (rc = read_i64(sc, r->name, "step", &p->step, e)) || (rc = check_freq(g, &x->tracer, r, e)))
		return rc;
	l->dtype = w->dtype;
	if (!same_shape(w, r->shape, r->rank))
		return sd_err_node(e, SD_ERECORD, r->name,
				   "layer '%s': the weight '%s' has a different shape than the "
				   "record's mask_shape",
				   r->name, wc->name);
	p->wc = wc;
	*job = (prune_mask_job_t){.w = w, .axis = r->axis, .layer = r->name,
				    .bits = arena_alloc(a, w->n / 8 + 1)};
	if (!job->bits)
		return sd_err(e, SD_ENOMEM, "out of memory for the mask of '%s'", r->name);
	/* The mask the frozen graph's SelectV2 picks: fresh at a refresh step, else the
	 * frozen variable. NaN is refused on both paths (one that survives the mask would
	 * poison the exported model). */
	if (r->update_freq == 0 ? p->step == 0 : p->step % r->update_freq == 0)
		return 0;
	if ((rc = prune_tensor_read(prune_node_attr(mc, "value")->tensor, x->max_elems, mc->name,
				    a, &p->m, e)))
		return rc;
	if (p->m.dtype != w->dtype || !same_shape(&p->m, r->shape, r->rank))
		return sd_err_node(e, SD_EMODEL, r->name,
				   "layer '%s': mask '%s' does not match its weight", r->name,
				   mc->name);
	job->stored = &p->m;
	job->stored_name = mc->name;
	return 0;
}

/* Writes the layer's masked weight (or its sparse copy) and points the layer at it. */
static int finish_layer(ctx_t *x, const prune_record_entry_t *r, prune_layer_t *l,
			pending_layer_t *p, const prune_mask_job_t *job)
{
	prune_graph_t *g = x->g;
	ptrdiff_t wci = prune_graph_find(g, p->wc->name, strlen(p->wc->name));
	bool moved;
	int rc = prune_sparsify(g, &x->cons, l, (size_t)wci, &p->w, job->bits, job->counts,
				job->is_2of4, ignore_scope, (void *)r->scope, &moved, x->e);
	if (rc)
		return rc;
	if (!moved)
		*prune_layer_weight_ref(g, l) = (char *)r->weight_input;
	l->detail = arena_sprintf(prune_graph_arena(g), "step %lld, %s mask%s",
				  (long long)p->step, job->stored ? "stored" : "fresh",
				  moved ? ", shared weight copied" : "");
	return 0;
}

/*
 * Marks (rm) and stacks the nodes insert added: those under "sparsityd/" and under a
 * recorded layer's scope ("<layer>/sparsityd/"). Only those: a node of the user's own
 * named "x/sparsityd/y", x no recorded layer, stays. Returns 0 or SD_ENOMEM.
 */
static int mark_inserted(prune_graph_t *g, const prune_record_entry_t *rec, size_t n_rec,
			 const bool *keep, bool *rm, size_t *stack, size_t *sp, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	size_t n = prune_graph_count(g);
	sd_strkey_t *keys = arena_alloc(a, (n ? n : 1) * sizeof(*keys));
	if (!keys)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		keys[i] = (sd_strkey_t){prune_graph_node(g, i)->name, i};
	sd_strkeys_sort(keys, n);
	for (size_t r = 0; r <= n_rec; r++) {
		const char *scope = r < n_rec ? arena_sprintf(a, "%s/", rec[r].scope) : PRUNE_SCOPE "/";
		if (!scope)
			return sd_err(e, SD_ENOMEM, "out of memory");
		size_t lo, hi;
		sd_strkeys_prefixed(keys, n, scope, strlen(scope), &lo, &hi);
		for (size_t k = lo; k < hi; k++) {
			size_t i = keys[k].i;
			if (!rm[i] && !keep[i]) {
				rm[i] = true;
				stack[(*sp)++] = i;
			}
		}
	}
	return 0;
}

/* Deletes inserted nodes, then nodes all of whose readers were deleted. */
static int sweep(prune_graph_t *g, const prune_record_entry_t *rec, size_t n_rec,
		 const char *const *outputs, size_t n_outputs, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	size_t n = prune_graph_count(g);
	prune_consumers_t c;
	int rc = prune_graph_consumers(g, &c, e);
	if (rc)
		return rc;
	bool *rm = arena_calloc(a, n, sizeof(*rm)), *keep = arena_calloc(a, n, sizeof(*keep));
	size_t *live = arena_calloc(a, n, sizeof(*live)), *stack = arena_calloc(a, n + 1, sizeof(*stack));
	if (!rm || !keep || !live || !stack)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < n_outputs; i++) {
		ptrdiff_t o = prune_graph_find(g, outputs[i], strlen(outputs[i]));
		if (o >= 0)
			keep[o] = true;
	}
	size_t sp = 0;
	for (size_t i = 0; i < n; i++)
		live[i] = c.off[i + 1] - c.off[i];
	if ((rc = mark_inserted(g, rec, n_rec, keep, rm, stack, &sp, e)))
		return rc;
	while (sp) {
		const Tensorflow__NodeDef *d = prune_graph_node(g, stack[--sp]);
		for (size_t k = 0; k < d->n_input; k++) {
			ptrdiff_t p = prune_graph_find_input(g, d->input[k]);
			if (p < 0 || rm[p] || keep[p] || --live[p] > 0)
				continue;
			rm[p] = true;
			stack[sp++] = (size_t)p;
		}
	}
	/* Survivors may hold control edges to deleted nodes (e.g. a train op on update). */
	for (size_t i = 0; i < n; i++) {
		Tensorflow__NodeDef *d = prune_graph_node(g, i);
		if (rm[i])
			continue;
		size_t w = 0;
		for (size_t k = 0; k < d->n_input; k++) {
			ptrdiff_t p = prune_graph_find_input(g, d->input[k]);
			if (p >= 0 && rm[p]) {
				if (d->input[k][0] != '^')
					return sd_err_node(e, SD_EINTERNAL, d->name,
							   "node '%s' still reads deleted node '%s'",
							   d->name, d->input[k]);
				continue;
			}
			d->input[w++] = d->input[k];
		}
		d->n_input = w;
	}
	return prune_graph_remove(g, rm, e);
}

int prune_export(prune_graph_t *g, const prune_record_entry_t *rec, size_t n_rec,
		 const char *const *outputs, size_t n_outputs, size_t max_elems,
		 const prune_progress_t *progress, prune_result_t *res, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	prune_result_begin(res, PRUNE_STAGE_EXPORT, g, outputs, n_outputs);
	res->layers = arena_calloc(a, n_rec + 1, sizeof(*res->layers));
	if (!res->layers)
		return sd_err(e, SD_ENOMEM, "out of memory");
	ctx_t x = {.g = g, .max_elems = max_elems, .e = e};
	pending_layer_t *p = arena_calloc(a, n_rec + 1, sizeof(*p));
	prune_mask_job_t *jobs = arena_calloc(a, n_rec + 1, sizeof(*jobs));
	if (!p || !jobs)
		return sd_err(e, SD_ENOMEM, "out of memory");
	/* Every layer is checked and read first; the masks are then computed on all
	 * cores; the graph is edited last, in record order, on this thread. */
	int rc = prune_graph_consumers(g, &x.cons, e);
	if (!rc)
		rc = prune_tracer_init(g, &x.tracer, e);
	for (size_t i = 0; !rc && i < n_rec; i++) {
		rc = prepare_layer(&x, &rec[i], &res->layers[i], &p[i], &jobs[i]);
		res->n_layers = i + 1;
	}
	if (!rc)
		rc = prune_mask_batch(jobs, n_rec, 0, progress, e);
	for (size_t i = 0; !rc && i < n_rec; i++) {
		rc = finish_layer(&x, &rec[i], &res->layers[i], &p[i], &jobs[i]);
		res->weights += res->layers[i].elems;
		res->weights_zeroed += res->layers[i].zeroed;
	}
	/* A layer still reading a masked weight was inserted but not recorded. The edits
	 * rewired the layers: a fresh tracer. */
	if (!rc)
		rc = prune_tracer_init(g, &x.tracer, e);
	if (rc)
		return rc;
	for (size_t i = 0; i < prune_graph_count(g); i++) {
		const Tensorflow__NodeDef *n = prune_graph_node(g, i);
		size_t slot;
		ptrdiff_t rd = prune_layer_type_known(n->op)
				       ? prune_tracer_weight_reader(&x.tracer, i, &slot)
				       : -1;
		if (rd >= 0 &&
		    prune_names_masked_weight(prune_graph_node(g, (size_t)rd)->input[slot]))
			return sd_err_node(e, SD_ERECORD, n->name,
					   "layer '%s' carries a sparsityd mask that the record does "
					   "not list (use the record written with this model)",
					   n->name);
	}
	if ((rc = sweep(g, rec, n_rec, outputs, n_outputs, e)))
		return rc;
	prune_result_count(res);
	res->nodes_out = prune_graph_count(g);
	return 0;
}
