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
#include "prune/insert.h"

#include <stdarg.h>
#include <stdbool.h>
#include <string.h>

#include "common/sd_str.h"
#include "prune/attr.h"
#include "prune/layers.h"
#include "prune/saver.h"
#include "prune/tensor.h"

/*
 * Shared parts: AttrValues every node of a kind carries (nodes may share them), and
 * graph-wide constants under "sparsityd/const/". A graph with thousands of layers
 * would otherwise carry thousands of identical values, and insert's cost is mostly
 * the nodes it adds and their size.
 */
typedef struct shared {
	Tensorflow__AttrValue *type[32]; /* type attrs by DataType (all ours are below 32) */
	Tensorflow__AttrValue *yes, *no, *minus_one, *empty_str, *empty_list;
	const char *group_shape, *k, *depth, *k_axis, *zero, *one;
	const char *on[4], *off[4]; /* per float dtype, see dtype_slot() */
	/* value-named constants made so far, sorted by key (a few per distinct shape) */
	const char **keys, **names;
	size_t n_keys, cap_keys;
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

typedef prune_attr_kv_t kv_t;

/* Argument pairs for mk(): IN(a, b) / NO_IN, and ATTRS({"T", v}, ...). */
#define IN(...) (const char *const[]){__VA_ARGS__}, \
	sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)
#define NO_IN NULL, 0
#define ATTRS(...) (const kv_t[]){__VA_ARGS__}, sizeof((const kv_t[]){__VA_ARGS__}) / sizeof(kv_t)

static int nomem(bld_t *b)
{
	if (!b->rc)
		b->rc = sd_err(b->e, SD_ENOMEM, "out of memory");
	return b->rc;
}

/* x y z concatenated in the arena (names are built for every node: no printf). */
static const char *cat(bld_t *b, const char *x, const char *y, const char *z)
{
	if (!x || !y || !z) {
		nomem(b);
		return NULL;
	}
	size_t lx = strlen(x), ly = strlen(y), lz = strlen(z);
	char *s = arena_alloc(b->a, lx + ly + lz + 1);
	if (!s) {
		nomem(b);
		return NULL;
	}
	memcpy(s, x, lx);
	memcpy(s + lx, y, ly);
	memcpy(s + lx + ly, z, lz + 1);
	return s;
}

static const char *bname(bld_t *b, const char *suffix)
{
	return cat(b, b->scope, "/", suffix);
}

/* The node named `name` with op, inputs and attrs; returns its name (NULL once failed). */
static const char *mk_named(bld_t *b, const char *name, const char *op, const char *const *in,
			    size_t nin, const kv_t *kv, size_t nkv)
{
	if (b->rc)
		return NULL;
	bool ok = name != NULL;
	for (size_t i = 0; i < nin; i++)
		ok = ok && in[i];
	for (size_t i = 0; i < nkv; i++)
		ok = ok && kv[i].value;
	if (!ok) {
		nomem(b);
		return NULL;
	}
	prune_node_spec_t spec = {.name = name, .op = op, .device = b->device, .inputs = in,
				  .n_inputs = nin, .attrs = kv, .n_attrs = nkv};
	if (!prune_graph_add_new(b->g, &spec, b->e)) {
		b->rc = b->e && b->e->code ? b->e->code : SD_EMODEL;
		return NULL;
	}
	return name;
}

/* As mk_named, for the node scope/suffix. */
static const char *mk(bld_t *b, const char *suffix, const char *op, const char *const *in,
		      size_t nin, const kv_t *kv, size_t nkv)
{
	return b->rc ? NULL : mk_named(b, bname(b, suffix), op, in, nin, kv, nkv);
}

/* The (shared) type attribute for dtype dt. */
static Tensorflow__AttrValue *ty(bld_t *b, int dt)
{
	Tensorflow__AttrValue **slot = dt > 0 && dt < 32 ? &b->sh->type[dt] : NULL;
	if (slot && *slot)
		return *slot;
	Tensorflow__AttrValue *v = prune_attr_type(b->a, dt);
	if (slot)
		*slot = v;
	return v;
}

/* A Const node holding v (a tensor attr of dtype dt). */
static const char *cnst(bld_t *b, const char *suffix, int dt, Tensorflow__AttrValue *v)
{
	return mk(b, suffix, "Const", NO_IN, ATTRS({"dtype", ty(b, dt)}, {"value", v}));
}

/* An int32 Const: a vector of n values, or a scalar when n == 0. */
static const char *i32_const(bld_t *b, const char *suffix, const int32_t *v, int64_t n)
{
	return cnst(b, suffix, TENSORFLOW__DATA_TYPE__DT_INT32,
		    prune_attr_i32(b->a, v, &n, n ? 1 : 0));
}

/*
 * Shared constants whose value depends on the layer (a permutation, a shape) are
 * named after their value, "sparsityd/const/<prefix>_<v0>_<v1>...", so the graph's
 * own name index finds the one an earlier layer made. Negative values read "m1".
 */
#define KEY_MAX 160

static void key_of(char *key, const char *prefix, const int64_t *v, size_t n)
{
	size_t k = strlen(prefix);
	memcpy(key, prefix, k);
	for (size_t i = 0; i < n; i++) {
		char digits[24];
		size_t d = 0;
		uint64_t x = v[i] < 0 ? 0 - (uint64_t)v[i] : (uint64_t)v[i];
		do
			digits[d++] = (char)('0' + x % 10);
		while ((x /= 10));
		key[k++] = '_';
		if (v[i] < 0)
			key[k++] = 'm';
		while (d)
			key[k++] = digits[--d];
	}
	key[k] = '\0';
}

/* Where key is, or goes, in the sorted keys. */
static size_t key_slot(const shared_t *sh, const char *key, bool *found)
{
	size_t lo = 0, hi = sh->n_keys;
	*found = false;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(sh->keys[mid], key);
		if (c == 0) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The shared Const called key if an earlier layer made it; else NULL. */
static const char *shared_find(bld_t *b, const char *key)
{
	bool found;
	size_t at = key_slot(b->sh, key, &found);
	return found ? b->sh->names[at] : NULL;
}

/* Makes the shared Const called key holding v. */
static const char *shared_make(bld_t *b, const char *key, int dt, Tensorflow__AttrValue *v)
{
	shared_t *sh = b->sh;
	if (sh->n_keys == sh->cap_keys) {
		size_t cap = sh->cap_keys ? 2 * sh->cap_keys : 64;
		const char **k = arena_grow(b->a, sh->keys, sh->n_keys, cap, sizeof(*k));
		const char **n = arena_grow(b->a, sh->names, sh->n_keys, cap, sizeof(*n));
		if (!k || !n) {
			nomem(b);
			return NULL;
		}
		sh->keys = k;
		sh->names = n;
		sh->cap_keys = cap;
	}
	bld_t sb = *b;
	sb.scope = PRUNE_SCOPE "/const";
	sb.device = NULL;
	const char *k = arena_strdup(b->a, key);
	const char *name = cnst(&sb, k, dt, v);
	b->rc = sb.rc;
	if (!name)
		return NULL;
	bool found;
	size_t at = key_slot(sh, key, &found);
	memmove(sh->keys + at + 1, sh->keys + at, (sh->n_keys - at) * sizeof(*sh->keys));
	memmove(sh->names + at + 1, sh->names + at, (sh->n_keys - at) * sizeof(*sh->names));
	sh->keys[at] = k;
	sh->names[at] = name;
	sh->n_keys++;
	return name;
}

/* A shared int32 Const of shape dims (rank 1 or 2) holding the n values v. */
static const char *shared_i32(bld_t *b, const char *prefix, const int32_t *v, size_t n,
			      const int64_t *dims, int rank)
{
	int64_t wide[8];
	for (size_t i = 0; i < n; i++)
		wide[i] = v[i];
	char key[KEY_MAX];
	key_of(key, prefix, wide, n);
	const char *got = shared_find(b, key);
	return got || b->rc ? got
			    : shared_make(b, key, TENSORFLOW__DATA_TYPE__DT_INT32,
					  prune_attr_i32(b->a, v, dims, rank));
}

/* A resource variable: handle, initial value, initializer, read (VariableDef parts). */
typedef struct var {
	const char *handle, *initial, *assign, *read;
} var_t;

static var_t variable(bld_t *b, const char *suffix, int dt, const int64_t *dims, int rank,
		      const char *initial)
{
	var_t v = {.initial = initial};
	shared_t *sh = b->sh;
	const char *name = bname(b, suffix);
	v.handle = mk_named(b, name, "VarHandleOp", NO_IN,
			    ATTRS({"dtype", ty(b, dt)},
				  {"shape", prune_attr_shape(b->a, dims, rank)},
				  {"container", sh->empty_str},
				  {"shared_name", name ? prune_attr_str(b->a, name) : NULL},
				  {"allowed_devices", sh->empty_list}));
	v.assign = mk(b, cat(b, suffix, "/Assign", ""), "AssignVariableOp", IN(v.handle, initial),
		      ATTRS({"dtype", ty(b, dt)}));
	v.read = mk(b, cat(b, suffix, "/Read/ReadVariableOp", ""), "ReadVariableOp",
		    IN(v.handle), ATTRS({"dtype", ty(b, dt)}));
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
	const int r = l->rank, ax = l->axis, dt = l->dtype;
	const int64_t C = l->shape[ax], Cp = (C + 3) / 4 * 4, rank1[1] = {r};
	const int32_t i32 = TENSORFLOW__DATA_TYPE__DT_INT32;
	shared_t *sh = b->sh;
	int32_t perm[4], inv[4], tshape[4];
	for (int i = 0, k = 0; i < r; i++)
		if (i != ax)
			perm[k++] = i;
	perm[r - 1] = ax;
	for (int i = 0; i < r; i++) {
		inv[perm[i]] = i;
		tshape[i] = (int32_t)l->shape[perm[i]];
	}
	const char *x = mk(b, "fresh/abs", "Abs", IN(w), ATTRS({"T", ty(b, dt)}));
	if (ax != r - 1) {
		const char *p = shared_i32(b, "perm", perm, (size_t)r, rank1, 1);
		x = mk(b, "fresh/transpose", "Transpose", IN(x, p),
		       ATTRS({"T", ty(b, dt)}, {"Tperm", ty(b, i32)}));
	}
	if (Cp != C) {
		int32_t pads[8] = {0};
		pads[2 * (r - 1) + 1] = (int32_t)(Cp - C);
		const int64_t pdims[2] = {r, 2};
		const char *p = shared_i32(b, "paddings", pads, 2 * (size_t)r, pdims, 2);
		x = mk(b, "fresh/pad", "Pad", IN(x, p),
		       ATTRS({"T", ty(b, dt)}, {"Tpaddings", ty(b, i32)}));
	}
	x = mk(b, "fresh/groups", "Reshape", IN(x, sh->group_shape),
	       ATTRS({"T", ty(b, dt)}, {"Tshape", ty(b, i32)}));
	const char *top = mk(b, "fresh/top2", "TopKV2", IN(x, sh->k),
			     ATTRS({"T", ty(b, dt)}, {"sorted", sh->yes}));
	x = mk(b, "fresh/onehot", "OneHot",
	       IN(cat(b, top, ":1", ""), sh->depth, sh->on[dtype_slot(dt)], sh->off[dtype_slot(dt)]),
	       ATTRS({"T", ty(b, dt)}, {"TI", ty(b, i32)}, {"axis", sh->minus_one}));
	x = mk(b, "fresh/group_mask", "Sum", IN(x, sh->k_axis),
	       ATTRS({"T", ty(b, dt)}, {"Tidx", ty(b, i32)}, {"keep_dims", sh->no}));
	int32_t pshape[4];
	memcpy(pshape, tshape, sizeof(pshape));
	pshape[r - 1] = (int32_t)Cp;
	const char *ps = shared_i32(b, "shape", pshape, (size_t)r, rank1, 1);
	x = mk(b, "fresh/unflat", "Reshape", IN(x, ps),
	       ATTRS({"T", ty(b, dt)}, {"Tshape", ty(b, i32)}));
	if (Cp != C) {
		int32_t begin[4] = {0}, size[4] = {-1, -1, -1, -1};
		size[r - 1] = (int32_t)C;
		const char *bg = shared_i32(b, "begin", begin, (size_t)r, rank1, 1);
		const char *sz = shared_i32(b, "size", size, (size_t)r, rank1, 1);
		x = mk(b, "fresh/unpad", "Slice", IN(x, bg, sz),
		       ATTRS({"T", ty(b, dt)}, {"Index", ty(b, i32)}));
	}
	if (ax != r - 1) {
		const char *p = shared_i32(b, "perm", inv, (size_t)r, rank1, 1);
		x = mk(b, "fresh/untranspose", "Transpose", IN(x, p),
		       ATTRS({"T", ty(b, dt)}, {"Tperm", ty(b, i32)}));
	}
	/* The mask is a selection, not a function to differentiate. */
	return mk(b, "fresh_mask", "StopGradient", IN(x), ATTRS({"T", ty(b, dt)}));
}

/* The shared all-ones initial value of a mask of l's dtype and shape. */
static const char *mask_init(bld_t *b, const prune_layer_t *l)
{
	char prefix[32], key[KEY_MAX];
	snprintf(prefix, sizeof(prefix), "ones_%s", prune_dtype_name(l->dtype));
	key_of(key, prefix, l->shape, (size_t)l->rank);
	const char *got = shared_find(b, key);
	return got || b->rc ? got
			    : shared_make(b, key, l->dtype,
					  prune_attr_splat(b->a, l->dtype, 1.0, l->shape, l->rank));
}

/* The shared int64 scalar Const holding update_freq f. */
static const char *freq_const(bld_t *b, int64_t f)
{
	char key[KEY_MAX];
	key_of(key, "update_freq", &f, 1);
	const char *got = shared_find(b, key);
	return got || b->rc ? got
			    : shared_make(b, key, TENSORFLOW__DATA_TYPE__DT_INT64,
					  prune_attr_i64_scalar(b->a, f));
}

/* Per-layer variables, kept for the MetaGraphDef collection and the init op. */
typedef struct layer_vars {
	var_t mask, step;
} layer_vars_t;

static int insert_layer(prune_graph_t *g, shared_t *sh, prune_layer_t *l,
			layer_vars_t *lv, sd_error_t *e)
{
	Tensorflow__NodeDef *layer = prune_graph_node(g, l->node);
	bld_t b = {.g = g, .sh = sh, .a = prune_graph_arena(g), .device = layer->device, .e = e};
	if (b.device && !b.device[0])
		b.device = NULL;
	b.scope = cat(&b, l->name, "/", PRUNE_SCOPE);
	if (b.rc)
		return b.rc;
	const int dt = l->dtype, i64 = TENSORFLOW__DATA_TYPE__DT_INT64;
	const char *w = l->weight_input;

	lv->mask = variable(&b, "mask", dt, l->shape, l->rank, mask_init(&b, l));
	lv->step = variable(&b, "step", i64, NULL, 0, sh->zero);
	const char *fresh = fresh_mask(&b, l, w);

	const char *phase = lv->step.read;
	if (l->update_freq)
		phase = mk(&b, "step_mod", "FloorMod", IN(lv->step.read, freq_const(&b, l->update_freq)),
			   ATTRS({"T", ty(&b, i64)}));
	const char *rf = mk(&b, "refresh", "Equal", IN(phase, sh->zero),
			    ATTRS({"T", ty(&b, i64)}, {"incompatible_shape_error", sh->yes}));
	const char *mv = mk(&b, "mask_value", "SelectV2", IN(rf, fresh, lv->mask.read),
			    ATTRS({"T", ty(&b, dt)}));
	const char *mw = mk(&b, "masked_weight", "Mul", IN(w, mv), ATTRS({"T", ty(&b, dt)}));
	const char *um = mk(&b, "update_mask", "AssignVariableOp", IN(lv->mask.handle, mv),
			    ATTRS({"dtype", ty(&b, dt)}));
	const char *us = mk(&b, "update_step", "AssignAddVariableOp",
			    IN(lv->step.handle, sh->one, cat(&b, "^", um, "")),
			    ATTRS({"dtype", ty(&b, i64)}));
	if (b.rc)
		return b.rc;

	/* Point the layer at the masked weight (through its Cast, if it reads one: the mask
	 * applies to the variable's own value, in its dtype). */
	*prune_layer_weight_ref(g, l) = (char *)mw;
	l->mask_var = lv->mask.handle;
	l->step_var = lv->step.handle;
	l->update_op = us;
	return 0;
}

static int make_shared(prune_graph_t *g, const prune_result_t *res, shared_t *sh,
		       sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	bld_t b = {.g = g, .sh = sh, .a = a, .scope = PRUNE_SCOPE "/const", .e = e};
	const int32_t gshape[2] = {-1, 4}, two = 2, four = 4, one = 1;
	const int i64 = TENSORFLOW__DATA_TYPE__DT_INT64;
	if (!(sh->yes = prune_attr_bool(a, true)) || !(sh->no = prune_attr_bool(a, false)) ||
	    !(sh->minus_one = prune_attr_int(a, -1)) ||
	    !(sh->empty_str = prune_attr_str(a, "")) || !(sh->empty_list = prune_attr_empty_list(a)))
		return nomem(&b);
	sh->group_shape = i32_const(&b, "group_shape", gshape, 2);
	sh->k = i32_const(&b, "k", &two, 0);
	sh->depth = i32_const(&b, "depth", &four, 0);
	sh->k_axis = i32_const(&b, "k_axis", &one, 0);
	sh->zero = cnst(&b, "zero", i64, prune_attr_i64_scalar(a, 0));
	sh->one = cnst(&b, "one", i64, prune_attr_i64_scalar(a, 1));
	for (size_t i = 0; i < res->n_layers && !b.rc; i++) {
		int dt = res->layers[i].dtype, slot = dtype_slot(dt);
		if (res->layers[i].action != PRUNE_ACTION_PRUNED || sh->on[slot])
			continue;
		const char *tn = prune_dtype_name(dt);
		sh->on[slot] = cnst(&b, cat(&b, "one_", tn, ""), dt,
				    prune_attr_splat(a, dt, 1.0, NULL, 0));
		sh->off[slot] = cnst(&b, cat(&b, "zero_", tn, ""), dt,
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
	/* From the end: of two entries with one key, the last counts (protobuf's map). */
	for (size_t i = m->n_collection_def; i-- > 0;) {
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

/*
 * Has the MetaGraphDef's saver save and restore the variables of the k pruned layers
 * (vars, in layer order); a saver it leaves as is becomes a warning of the result.
 */
static int extend_saver(prune_graph_t *g, prune_result_t *res, const layer_vars_t *vars,
			size_t k, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	prune_saver_var_t *sv = arena_calloc(a, 2 * k + 1, sizeof(*sv));
	if (!sv)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0, j = 0; i < res->n_layers; i++) {
		if (res->layers[i].action != PRUNE_ACTION_PRUNED)
			continue;
		sv[2 * j] = (prune_saver_var_t){vars[j].mask.handle, vars[j].mask.read,
						 res->layers[i].dtype};
		sv[2 * j + 1] = (prune_saver_var_t){vars[j].step.handle, vars[j].step.read,
						     TENSORFLOW__DATA_TYPE__DT_INT64};
		j++;
	}
	const char *warning;
	int rc = prune_saver_extend(g, sv, 2 * k, &warning, e);
	if (rc || !warning)
		return rc;
	const char **w = arena_grow(a, res->warnings, res->n_warnings, res->n_warnings + 1,
				    sizeof(*w));
	if (!w)
		return sd_err(e, SD_ENOMEM, "out of memory");
	w[res->n_warnings++] = warning;
	res->warnings = w;
	return 0;
}

/* ---- the stage ---- */

/* A NoOp that depends on every op in deps (control inputs). */
static int group_op(prune_graph_t *g, const char *name, const char *const *deps, size_t n,
		    sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	const char **ctl = arena_calloc(a, n + 1, sizeof(*ctl));
	if (!ctl)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		if (!(ctl[i] = arena_sprintf(a, "^%s", deps[i])))
			return sd_err(e, SD_ENOMEM, "out of memory");
	prune_node_spec_t spec = {.name = name, .op = "NoOp", .inputs = ctl, .n_inputs = n};
	return prune_graph_add_new(g, &spec, e) ? 0 : e && e->code ? e->code : SD_ENOMEM;
}

/*
 * Insert's names are new by construction when no node already sits in a scope it
 * creates ("sparsityd/..." and "<pruned layer>/sparsityd/..."): checked here once, so
 * every node can be added without a lookup (prune_graph_add_new).
 */
static int check_scopes(prune_graph_t *g, const prune_result_t *res, sd_error_t *e)
{
	static const char inner[] = "/" PRUNE_SCOPE "/";
	size_t n = prune_graph_count(g), k = 0;
	sd_strkey_t *keys = NULL;
	for (size_t i = 0; i < n; i++) {
		const char *name = prune_graph_node(g, i)->name;
		if (strncmp(name, PRUNE_SCOPE "/", sizeof(PRUNE_SCOPE)) == 0)
			return sd_err_node(e, SD_EMODEL, name,
					   "node '%s' is in the scope '" PRUNE_SCOPE "/' that insert "
					   "adds its own nodes to; insert runs on the original graph, "
					   "not on its own output",
					   name);
		if (!strstr(name, inner))
			continue;
		if (!keys && !(keys = arena_alloc(prune_graph_arena(g), n * sizeof(*keys))))
			return sd_err(e, SD_ENOMEM, "out of memory");
		keys[k++] = (sd_strkey_t){name, i};
	}
	if (!k)
		return 0; /* the usual case: nothing to sort */
	/* The names holding "/sparsityd/", sorted, and one lookup per pruned layer: not a
	 * lookup per "/sparsityd/" in every name, which a name made of that string
	 * repeated would make cost its length squared. */
	sd_strkeys_sort(keys, k);
	for (size_t i = 0; i < res->n_layers; i++) {
		const prune_layer_t *l = &res->layers[i];
		if (l->action != PRUNE_ACTION_PRUNED)
			continue;
		const char *scope = arena_sprintf(prune_graph_arena(g), "%s%s", l->name, inner);
		if (!scope)
			return sd_err(e, SD_ENOMEM, "out of memory");
		size_t lo, hi;
		sd_strkeys_prefixed(keys, k, scope, strlen(scope), &lo, &hi);
		if (lo < hi)
			return sd_err_node(e, SD_EMODEL, l->name,
					   "layer '%s' already carries sparsityd nodes ('%s'); insert "
					   "runs on the original graph, not on its own output",
					   l->name, keys[lo].s);
	}
	return 0;
}

int prune_insert(prune_graph_t *g, const prune_config_t *cfg, const char *const *outputs,
		 size_t n_outputs, size_t max_elems, const prune_progress_t *progress,
		 prune_result_t *res, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	prune_result_begin(res, PRUNE_STAGE_INSERT, g, outputs, n_outputs);
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
	if (rc || (rc = prune_config_apply(cfg, res->layers, res->n_layers, e)) ||
	    (rc = check_scopes(g, res, e)))
		return rc;
	prune_result_count(res);
	/* The mask's Transpose, Pad, Reshape and Slice take int32 shapes, as TensorFlow
	 * writes them: a longer dimension would wrap into a wrong constant. */
	for (size_t i = 0; i < res->n_layers; i++) {
		const prune_layer_t *l = &res->layers[i];
		if (l->action != PRUNE_ACTION_PRUNED)
			continue;
		for (int d = 0; d < l->rank; d++)
			if ((l->shape[d] + 3) / 4 * 4 > INT32_MAX)
				return sd_err_node(e, SD_ETOOBIG, l->name,
						   "layer '%s': dimension %d of its weight is %lld, "
						   "over the 2^31 - 1 of the mask's int32 shapes",
						   l->name, d, (long long)l->shape[d]);
	}

	const char **inits = arena_calloc(a, 2 * res->pruned + 1, sizeof(*inits));
	const char **updates = arena_calloc(a, res->pruned + 1, sizeof(*updates));
	layer_vars_t *vars = arena_calloc(a, res->pruned + 1, sizeof(*vars));
	if (!inits || !updates || !vars)
		return sd_err(e, SD_ENOMEM, "out of memory");
	/* A pruned layer adds at most 23 nodes of its own and 8 shared constants. */
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
		prune_progress_report(progress, k, res->pruned);
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
		if ((rc = add_node_name(g, uc, PRUNE_UPDATE_OP, e)) ||
		    (rc = extend_saver(g, res, vars, k, e)))
			return rc;
	}
	res->nodes_out = prune_graph_count(g);
	return 0;
}
