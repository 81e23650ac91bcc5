/*
 * prune_insert: rewrites a graph so every pruned layer trains through a 2:4 mask
 * (design and naming in insert.h).
 *
 * How the fresh mask is computed with stock TensorFlow ops, for a weight w of rank r
 * whose prune axis a has length C (Cp = C rounded up to a multiple of 4):
 *   |w| -> move axis a last (Transpose, skipped when already last)
 *       -> pad the last axis to Cp with zeros (Pad, skipped when C % 4 == 0)
 *       -> Reshape to [-1, 4]: one row per group of 4
 *       -> TopKV2(k=2).indices: the two largest; TopKV2 orders equal values by lower
 *          index, which is exactly SPEC 4's tie rule, and padding (0, highest index)
 *          never beats a real element
 *       -> OneHot(depth 4) and Sum over the k axis: a 0/1 row per group
 *       -> Reshape back, Slice the padding off, Transpose back, StopGradient.
 * Ops are added in an order where every input already exists; TensorFlow does not
 * need topological order in a GraphDef, but a reader of the graph appreciates it.
 *
 * Errors while building are latched in the builder (first one wins), so the straight
 * line code below reads like the graph it makes.
 */
#include "insert.h"

#include <stdarg.h>
#include <string.h>

#include "attr.h"
#include "layers.h"
#include "tensor.h"

/*
 * Constants every layer's mask math needs, created once under "sparsityd/const/":
 * a graph with thousands of layers would otherwise carry thousands of identical
 * scalars, and insert's cost is mostly the nodes it adds.
 */
typedef struct shared {
	const char *group_shape, *k, *depth, *k_axis, *zero, *one;
	const char *on[4], *off[4]; /* per float dtype, see dtype_slot() */
	/* created on first use, per weight rank (2 or 4) and prune axis */
	const char *perm[5][4], *inv_perm[5][4], *begin[5];
} shared_t;

typedef struct bld {
	prune_graph_t *g;
	shared_t *sh;
	arena_t *a;
	const char *scope;   /* "L/sparsityd" */
	const char *device;  /* the layer's device, so the mask math sits beside it */
	int rc;
	sd_error_t *e;
} bld_t;

static const char *bname(bld_t *b, const char *suffix)
{
	return arena_sprintf(b->a, "%s/%s", b->scope, suffix);
}

/* Adds node scope/suffix with op and the NULL-terminated inputs; returns its name. */
static Tensorflow__NodeDef *mk(bld_t *b, const char *suffix, const char *op, ...)
{
	if (b->rc)
		return NULL;
	const char *name = bname(b, suffix);
	Tensorflow__NodeDef *n = name ? prune_graph_add(b->g, name, op, b->e) : NULL;
	if (!n) {
		b->rc = name ? (b->e ? b->e->code : SD_EMODEL)
			     : sd_err(b->e, SD_ENOMEM, "out of memory");
		return NULL;
	}
	if (b->device && b->device[0] && !(n->device = arena_strdup(b->a, b->device)))
		b->rc = sd_err(b->e, SD_ENOMEM, "out of memory");
	char *ins[8];
	size_t k = 0;
	va_list ap;
	va_start(ap, op);
	for (const char *in; k < 8 && (in = va_arg(ap, const char *));)
		ins[k++] = (char *)in;
	va_end(ap);
	if (!b->rc)
		b->rc = prune_node_add_inputs(b->g, n, ins, k, b->e);
	return b->rc ? NULL : n;
}

static void set(bld_t *b, Tensorflow__NodeDef *n, const char *key, Tensorflow__AttrValue *v)
{
	if (b->rc || !n)
		return;
	if (!v) {
		b->rc = sd_err(b->e, SD_ENOMEM, "out of memory");
		return;
	}
	b->rc = prune_node_set_attr(b->g, n, key, v, b->e);
}

/* A Const node holding v (a tensor attr of dtype dt). */
static const char *cnst(bld_t *b, const char *suffix, int dt, Tensorflow__AttrValue *v)
{
	Tensorflow__NodeDef *n = mk(b, suffix, "Const", NULL);
	set(b, n, "dtype", prune_attr_type(b->a, dt));
	set(b, n, "value", v);
	return n ? n->name : NULL;
}

/* An int32 Const: a vector of n values, or a scalar when n == 0. */
static const char *i32_const(bld_t *b, const char *suffix, const int32_t *v, int64_t n)
{
	return cnst(b, suffix, TENSORFLOW__DATA_TYPE__DT_INT32,
		    prune_attr_i32(b->a, v, &n, n ? 1 : 0));
}

/* A shared int32 vector Const under sparsityd/const, made once and then reused. */
static const char *shared_i32(bld_t *b, const char **slot, const char *name,
			      const int32_t *v, int64_t n)
{
	if (*slot || b->rc)
		return *slot;
	bld_t sb = *b;
	sb.scope = PRUNE_SCOPE "/const";
	sb.device = NULL;
	*slot = i32_const(&sb, name, v, n);
	b->rc = sb.rc;
	return *slot;
}

/* A resource variable: handle, initial value, initializer, read (VariableDef parts). */
typedef struct var {
	const char *handle, *initial, *assign, *read;
} var_t;

/* init is either a tensor for a new Const (init_node NULL) or ignored for init_node. */
static var_t variable(bld_t *b, const char *suffix, int dt, const int64_t *dims, int rank,
		      Tensorflow__AttrValue *init, const char *init_node)
{
	var_t v = {0};
	Tensorflow__NodeDef *h = mk(b, suffix, "VarHandleOp", NULL);
	set(b, h, "dtype", prune_attr_type(b->a, dt));
	set(b, h, "shape", prune_attr_shape(b->a, dims, rank));
	set(b, h, "container", prune_attr_str(b->a, ""));
	set(b, h, "shared_name", h ? prune_attr_str(b->a, h->name) : NULL);
	set(b, h, "allowed_devices", prune_attr_empty_list(b->a));
	if (b->rc)
		return v;
	v.handle = h->name;
	v.initial = init_node ? init_node
			      : cnst(b, arena_sprintf(b->a, "%s/Initializer/value", suffix), dt,
				     init);
	Tensorflow__NodeDef *as = mk(b, arena_sprintf(b->a, "%s/Assign", suffix),
				     "AssignVariableOp", v.handle, v.initial, NULL);
	set(b, as, "dtype", prune_attr_type(b->a, dt));
	Tensorflow__NodeDef *rd = mk(b, arena_sprintf(b->a, "%s/Read/ReadVariableOp", suffix),
				     "ReadVariableOp", v.handle, NULL);
	set(b, rd, "dtype", prune_attr_type(b->a, dt));
	v.assign = as ? as->name : NULL;
	v.read = rd ? rd->name : NULL;
	return v;
}

static int dtype_slot(int dt)
{
	switch (dt) {
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE: return 1;
	case TENSORFLOW__DATA_TYPE__DT_HALF: return 2;
	case TENSORFLOW__DATA_TYPE__DT_BFLOAT16: return 3;
	default: return 0;
	}
}

/* The fresh 2:4 mask of tensor `w` (see the file comment); returns its node name. */
static const char *fresh_mask(bld_t *b, const prune_layer_t *l, const char *w)
{
	arena_t *a = b->a;
	const int r = l->rank, ax = l->axis, dt = l->dtype;
	const int64_t C = l->shape[ax], Cp = (C + 3) / 4 * 4;
	int32_t perm[4], inv[4], tshape[4];
	for (int i = 0, k = 0; i < r; i++)
		if (i != ax)
			perm[k++] = i;
	perm[r - 1] = ax;
	for (int i = 0; i < r; i++) {
		inv[perm[i]] = i;
		tshape[i] = (int32_t)l->shape[perm[i]];
	}
	Tensorflow__NodeDef *n = mk(b, "fresh/abs", "Abs", w, NULL);
	set(b, n, "T", prune_attr_type(a, dt));
	const char *x = n ? n->name : NULL;
	shared_t *sh = b->sh;
	if (ax != r - 1) {
		const char *p = shared_i32(b, &sh->perm[r][ax],
					   arena_sprintf(a, "perm_r%d_a%d", r, ax), perm, r);
		n = mk(b, "fresh/transpose", "Transpose", x, p, NULL);
		set(b, n, "T", prune_attr_type(a, dt));
		set(b, n, "Tperm", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
		x = n ? n->name : NULL;
	}
	if (Cp != C) {
		int32_t pads[8] = {0};
		pads[2 * (r - 1) + 1] = (int32_t)(Cp - C);
		const int64_t pdims[2] = {r, 2};
		const char *p = cnst(b, "fresh/paddings", TENSORFLOW__DATA_TYPE__DT_INT32,
				     prune_attr_i32(a, pads, pdims, 2));
		n = mk(b, "fresh/pad", "Pad", x, p, NULL);
		set(b, n, "T", prune_attr_type(a, dt));
		set(b, n, "Tpaddings", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
		x = n ? n->name : NULL;
	}
	n = mk(b, "fresh/groups", "Reshape", x, sh->group_shape, NULL);
	set(b, n, "T", prune_attr_type(a, dt));
	set(b, n, "Tshape", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
	x = n ? n->name : NULL;

	n = mk(b, "fresh/top2", "TopKV2", x, sh->k, NULL);
	set(b, n, "T", prune_attr_type(a, dt));
	set(b, n, "sorted", prune_attr_bool(a, true));
	const char *idx = n ? arena_sprintf(a, "%s:1", n->name) : NULL;

	n = mk(b, "fresh/onehot", "OneHot", idx, sh->depth, sh->on[dtype_slot(dt)],
	       sh->off[dtype_slot(dt)], NULL);
	set(b, n, "T", prune_attr_type(a, dt));
	set(b, n, "TI", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
	set(b, n, "axis", prune_attr_int(a, -1));
	x = n ? n->name : NULL;

	n = mk(b, "fresh/group_mask", "Sum", x, sh->k_axis, NULL);
	set(b, n, "T", prune_attr_type(a, dt));
	set(b, n, "Tidx", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
	set(b, n, "keep_dims", prune_attr_bool(a, false));
	x = n ? n->name : NULL;

	int32_t pshape[4];
	memcpy(pshape, tshape, sizeof(pshape));
	pshape[r - 1] = (int32_t)Cp;
	const char *ps = i32_const(b, "fresh/padded_shape", pshape, r);
	n = mk(b, "fresh/unflat", "Reshape", x, ps, NULL);
	set(b, n, "T", prune_attr_type(a, dt));
	set(b, n, "Tshape", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
	x = n ? n->name : NULL;

	if (Cp != C) {
		int32_t begin[4] = {0}, size[4] = {-1, -1, -1, -1};
		size[r - 1] = (int32_t)C;
		const char *bg = shared_i32(b, &sh->begin[r], arena_sprintf(a, "begin_r%d", r),
					    begin, r);
		const char *sz = i32_const(b, "fresh/size", size, r);
		n = mk(b, "fresh/unpad", "Slice", x, bg, sz, NULL);
		set(b, n, "T", prune_attr_type(a, dt));
		set(b, n, "Index", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
		x = n ? n->name : NULL;
	}
	if (ax != r - 1) {
		const char *p = shared_i32(b, &sh->inv_perm[r][ax],
					   arena_sprintf(a, "inverse_perm_r%d_a%d", r, ax), inv, r);
		n = mk(b, "fresh/untranspose", "Transpose", x, p, NULL);
		set(b, n, "T", prune_attr_type(a, dt));
		set(b, n, "Tperm", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT32));
		x = n ? n->name : NULL;
	}
	/* The mask is a selection, not a function to differentiate. */
	n = mk(b, "fresh_mask", "StopGradient", x, NULL);
	set(b, n, "T", prune_attr_type(a, dt));
	return n ? n->name : NULL;
}

/* Per-layer variables, kept for the MetaGraphDef collection and the init op. */
typedef struct layer_vars {
	var_t mask, step;
} layer_vars_t;

static int insert_layer(prune_graph_t *g, shared_t *sh, prune_layer_t *l,
			layer_vars_t *lv, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	Tensorflow__NodeDef *layer = prune_graph_node(g, l->node);
	bld_t b = {.g = g, .sh = sh, .a = a, .device = layer->device, .e = e};
	b.scope = arena_sprintf(a, "%s/%s", l->name, PRUNE_SCOPE);
	if (!b.scope)
		return sd_err(e, SD_ENOMEM, "out of memory");
	const char *probe = bname(&b, "mask");
	if (probe && prune_graph_find(g, probe, strlen(probe)) >= 0)
		return sd_err_node(e, SD_EMODEL, l->name,
				   "layer '%s' already carries sparsityd nodes (%s/...); insert "
				   "runs on the original graph, not on its own output",
				   l->name, b.scope);
	const int dt = l->dtype;
	const char *w = l->weight_input;

	lv->mask = variable(&b, "mask", dt, l->shape, l->rank,
			    prune_attr_splat(a, dt, 1.0, l->shape, l->rank), NULL);
	lv->step = variable(&b, "step", TENSORFLOW__DATA_TYPE__DT_INT64, NULL, 0, NULL, sh->zero);
	const char *fresh = fresh_mask(&b, l, w);

	const char *phase = lv->step.read;
	if (l->update_freq) {
		const char *freq = cnst(&b, "update_freq", TENSORFLOW__DATA_TYPE__DT_INT64,
					prune_attr_i64_scalar(a, l->update_freq));
		Tensorflow__NodeDef *m = mk(&b, "step_mod", "FloorMod", lv->step.read, freq, NULL);
		set(&b, m, "T", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT64));
		phase = m ? m->name : NULL;
	}
	Tensorflow__NodeDef *rf = mk(&b, "refresh", "Equal", phase, sh->zero, NULL);
	set(&b, rf, "T", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT64));
	set(&b, rf, "incompatible_shape_error", prune_attr_bool(a, true));

	Tensorflow__NodeDef *mv = mk(&b, "mask_value", "SelectV2", rf ? rf->name : NULL, fresh,
				     lv->mask.read, NULL);
	set(&b, mv, "T", prune_attr_type(a, dt));
	Tensorflow__NodeDef *mw = mk(&b, "masked_weight", "Mul", w, mv ? mv->name : NULL, NULL);
	set(&b, mw, "T", prune_attr_type(a, dt));

	Tensorflow__NodeDef *um = mk(&b, "update_mask", "AssignVariableOp", lv->mask.handle,
				     mv ? mv->name : NULL, NULL);
	set(&b, um, "dtype", prune_attr_type(a, dt));
	const char *after = um ? arena_sprintf(a, "^%s", um->name) : NULL;
	Tensorflow__NodeDef *us = mk(&b, "update_step", "AssignAddVariableOp", lv->step.handle,
				     sh->one, after, NULL);
	set(&b, us, "dtype", prune_attr_type(a, TENSORFLOW__DATA_TYPE__DT_INT64));
	if (b.rc)
		return b.rc;

	/* Point the layer at the masked weight; prune_graph_add may have moved nothing. */
	layer->input[1] = mw->name;
	l->mask_var = lv->mask.handle;
	l->step_var = lv->step.handle;
	l->update_op = us->name;
	return 0;
}

static int make_shared(prune_graph_t *g, const prune_result_t *res, shared_t *sh,
		       sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	bld_t b = {.g = g, .sh = sh, .a = a, .scope = PRUNE_SCOPE "/const", .e = e};
	const int32_t gshape[2] = {-1, 4}, two = 2, four = 4, one = 1;
	sh->group_shape = i32_const(&b, "group_shape", gshape, 2);
	sh->k = i32_const(&b, "k", &two, 0);
	sh->depth = i32_const(&b, "depth", &four, 0);
	sh->k_axis = i32_const(&b, "k_axis", &one, 0);
	sh->zero = cnst(&b, "zero", TENSORFLOW__DATA_TYPE__DT_INT64, prune_attr_i64_scalar(a, 0));
	sh->one = cnst(&b, "one", TENSORFLOW__DATA_TYPE__DT_INT64, prune_attr_i64_scalar(a, 1));
	for (size_t i = 0; i < res->n_layers && !b.rc; i++) {
		int dt = res->layers[i].dtype, slot = dtype_slot(dt);
		if (res->layers[i].action != PRUNE_ACTION_PRUNED || sh->on[slot])
			continue;
		const char *tn = prune_dtype_name(dt);
		sh->on[slot] = cnst(&b, arena_sprintf(a, "one_%s", tn), dt,
				    prune_attr_splat(a, dt, 1.0, NULL, 0));
		sh->off[slot] = cnst(&b, arena_sprintf(a, "zero_%s", tn), dt,
				     prune_attr_splat(a, dt, 0.0, NULL, 0));
	}
	return b.rc;
}

/* ---- MetaGraphDef collections ---- */

static Tensorflow__CollectionDef *collection(prune_graph_t *g, const char *key,
					     Tensorflow__CollectionDef__KindCase kind,
					     sd_error_t *e)
{
	Tensorflow__MetaGraphDef *m = prune_graph_meta(g);
	arena_t *a = prune_graph_arena(g);
	for (size_t i = 0; i < m->n_collection_def; i++) {
		Tensorflow__CollectionDef *c = m->collection_def[i]->value;
		if (strcmp(m->collection_def[i]->key, key))
			continue;
		if (c && c->kind_case == kind)
			return c;
		sd_err(e, SD_EMODEL, "collection '%s' has an unexpected kind", key);
		return NULL;
	}
	Tensorflow__MetaGraphDef__CollectionDefEntry *ent = arena_alloc(a, sizeof(*ent));
	Tensorflow__CollectionDef *c = arena_alloc(a, sizeof(*c));
	Tensorflow__MetaGraphDef__CollectionDefEntry **arr =
		arena_grow(a, m->collection_def, m->n_collection_def, m->n_collection_def + 1,
			   sizeof(*arr));
	if (!ent || !c || !arr)
		goto nomem;
	tensorflow__meta_graph_def__collection_def_entry__init(ent);
	tensorflow__collection_def__init(c);
	c->kind_case = kind;
	if (kind == TENSORFLOW__COLLECTION_DEF__KIND_NODE_LIST) {
		if (!(c->node_list = arena_alloc(a, sizeof(*c->node_list))))
			goto nomem;
		tensorflow__collection_def__node_list__init(c->node_list);
	} else {
		if (!(c->bytes_list = arena_alloc(a, sizeof(*c->bytes_list))))
			goto nomem;
		tensorflow__collection_def__bytes_list__init(c->bytes_list);
	}
	if (!(ent->key = arena_strdup(a, key)))
		goto nomem;
	ent->value = c;
	arr[m->n_collection_def++] = ent;
	m->collection_def = arr;
	return c;
nomem:
	sd_err(e, SD_ENOMEM, "out of memory");
	return NULL;
}

static int add_variable_def(prune_graph_t *g, Tensorflow__CollectionDef *c, const var_t *v,
			    sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	Tensorflow__VariableDef vd = TENSORFLOW__VARIABLE_DEF__INIT;
	vd.variable_name = arena_sprintf(a, "%s:0", v->handle);
	vd.initial_value_name = arena_sprintf(a, "%s:0", v->initial);
	vd.initializer_name = (char *)v->assign;
	vd.snapshot_name = arena_sprintf(a, "%s:0", v->read);
	vd.is_resource = true;
	vd.trainable = false;
	Tensorflow__CollectionDef__BytesList *bl = c->bytes_list;
	ProtobufCBinaryData *arr = arena_grow(a, bl->value, bl->n_value, bl->n_value + 1,
					      sizeof(*arr));
	if (!vd.variable_name || !vd.initial_value_name || !vd.snapshot_name || !arr)
		return sd_err(e, SD_ENOMEM, "out of memory");
	size_t len = tensorflow__variable_def__get_packed_size(&vd);
	uint8_t *buf = arena_alloc(a, len ? len : 1);
	if (!buf)
		return sd_err(e, SD_ENOMEM, "out of memory");
	tensorflow__variable_def__pack(&vd, buf);
	arr[bl->n_value++] = (ProtobufCBinaryData){len, buf};
	bl->value = arr;
	return 0;
}

static int add_node_name(prune_graph_t *g, Tensorflow__CollectionDef *c, const char *name,
			 sd_error_t *e)
{
	Tensorflow__CollectionDef__NodeList *nl = c->node_list;
	char **arr = arena_grow(prune_graph_arena(g), nl->value, nl->n_value, nl->n_value + 1,
				sizeof(*arr));
	if (!arr)
		return sd_err(e, SD_ENOMEM, "out of memory");
	arr[nl->n_value++] = (char *)name;
	nl->value = arr;
	return 0;
}

/* ---- the stage ---- */

/* A NoOp that depends on every op in deps (control inputs). */
static int group_op(prune_graph_t *g, const char *name, const char *const *deps, size_t n,
		    sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	Tensorflow__NodeDef *op = prune_graph_add(g, name, "NoOp", e);
	if (!op)
		return e && e->code ? e->code : SD_EMODEL;
	char **ctl = arena_calloc(a, n + 1, sizeof(*ctl));
	if (!ctl)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		if (!(ctl[i] = arena_sprintf(a, "^%s", deps[i])))
			return sd_err(e, SD_ENOMEM, "out of memory");
	return prune_node_add_inputs(g, op, ctl, n, e);
}

int prune_insert(prune_graph_t *g, const prune_config_t *cfg, const char *const *outputs,
		 size_t n_outputs, size_t max_elems, prune_result_t *res, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	prune_result_begin(res, "insert", g, outputs, n_outputs);
	/* Checked first: on its own output every masked layer would look "not constant"
	 * and the user would get a puzzling "no layer to prune". */
	if (prune_graph_find(g, PRUNE_INIT_OP, strlen(PRUNE_INIT_OP)) >= 0 ||
	    prune_graph_find(g, PRUNE_UPDATE_OP, strlen(PRUNE_UPDATE_OP)) >= 0)
		return sd_err_node(e, SD_EMODEL, PRUNE_INIT_OP,
				   "the graph already carries sparsityd nodes ('%s'): insert runs "
				   "on the original graph, not on its own output",
				   PRUNE_INIT_OP);
	int rc = prune_layers_find(g, outputs, n_outputs, max_elems, &res->layers,
				   &res->n_layers, e);
	if (rc || (rc = prune_config_apply(cfg, res->layers, res->n_layers, e)))
		return rc;
	prune_result_count(res);

	const char **inits = arena_calloc(a, 2 * res->pruned + 1, sizeof(*inits));
	const char **updates = arena_calloc(a, res->pruned + 1, sizeof(*updates));
	layer_vars_t *vars = arena_calloc(a, res->pruned + 1, sizeof(*vars));
	if (!inits || !updates || !vars)
		return sd_err(e, SD_ENOMEM, "out of memory");
	/* Every pruned layer adds at most this many nodes (see insert_layer). */
	enum { NODES_PER_LAYER = 32, SHARED_NODES = 16 };
	shared_t sh = {0};
	if ((rc = prune_graph_reserve(g, NODES_PER_LAYER * res->pruned + SHARED_NODES, e)) ||
	    (rc = make_shared(g, res, &sh, e)))
		return rc;
	size_t k = 0;
	for (size_t i = 0; i < res->n_layers; i++) {
		prune_layer_t *l = &res->layers[i];
		if (l->action != PRUNE_ACTION_PRUNED)
			continue;
		if ((rc = insert_layer(g, &sh, l, &vars[k], e)))
			return rc;
		inits[2 * k] = vars[k].mask.assign;
		inits[2 * k + 1] = vars[k].step.assign;
		updates[k] = l->update_op;
		res->weights += (uint64_t)l->shape[0] * (uint64_t)l->shape[1] *
				(l->rank == 4 ? (uint64_t)l->shape[2] * (uint64_t)l->shape[3] : 1);
		k++;
	}
	if ((rc = group_op(g, PRUNE_INIT_OP, inits, 2 * k, e)) ||
	    (rc = group_op(g, PRUNE_UPDATE_OP, updates, k, e)))
		return rc;
	res->init_op = PRUNE_INIT_OP;
	res->update_op = PRUNE_UPDATE_OP;

	if (prune_graph_meta(g)) {
		Tensorflow__CollectionDef *vc =
			collection(g, "variables", TENSORFLOW__COLLECTION_DEF__KIND_BYTES_LIST, e);
		Tensorflow__CollectionDef *uc =
			vc ? collection(g, "update_ops", TENSORFLOW__COLLECTION_DEF__KIND_NODE_LIST, e)
			   : NULL;
		if (!uc)
			return e && e->code ? e->code : SD_ENOMEM;
		for (size_t i = 0; i < k; i++)
			if ((rc = add_variable_def(g, vc, &vars[i].mask, e)) ||
			    (rc = add_variable_def(g, vc, &vars[i].step, e)))
				return rc;
		if ((rc = add_node_name(g, uc, PRUNE_UPDATE_OP, e)))
			return rc;
	}
	res->nodes_out = prune_graph_count(g);
	return 0;
}
