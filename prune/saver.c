/*
 * prune_saver: extends a MetaGraphDef's Saver to insert's variables (see saver.h).
 *
 * The layout recognised is what tf.compat.v1.train.Saver builds for a V2 checkpoint on
 * one device, non-sharded or sharded, under its scope S (usually "save"):
 *   save     S/SaveV2(prefix, S/SaveV2/tensor_names, S/SaveV2/shape_and_slices,
 *                     <var>/Read/ReadVariableOp...)          dtypes = one per value
 *            reached from saver_def.save_tensor_name through control inputs; it is the
 *            one SaveV2 under S (sharded savers have one per device).
 *   restore  saver_def.restore_op_name (S/restore_all), a NoOp whose control inputs are
 *            the assignments, or when sharded one NoOp S/restore_shard whose inputs are;
 *            assignment k is AssignVariableOp(var, S/Identity_k(S/RestoreV2:k)).
 * For variable i (of n) this adds, as TensorFlow would have for it, under a sub-scope T
 * (S/sparsityd, or S/sparsityd_<k> when that is taken):
 *   SaveV2     the key (the variable's name), "" (whole tensor), its dtype, and its
 *              snapshot read as a data input: TF's own saver saves that snapshot too, so
 *              no read op is added;
 *   RestoreV2  the key, "", its dtype, hence output N+i;
 *   T/restore_<i> = Identity(RestoreV2:N+i), T/assign_<i> = AssignVariableOp(var, that),
 *   and the restore NoOp gains ^T/assign_<i>.
 * A tensor_names or shape_and_slices Const that another node also reads is not changed:
 * a copy T/save_tensor_names (...) takes its place on the SaveV2 or RestoreV2.
 *
 * Everything is checked before anything changes, so a layout not recognised leaves the
 * graph as it was and the caller only reports why. The work is a scan of the node names
 * and one consumer index; the nodes added are few.
 */
#include "prune/saver.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "prune/attr.h"

/* A SaveV2 or RestoreV2 node and the parts of it that grow. */
typedef struct io {
	ptrdiff_t node;
	size_t n_data;      /* data inputs (control inputs follow them) */
	ptrdiff_t names;    /* its tensor_names Const (input 1) */
	ptrdiff_t slices;   /* its shape_and_slices Const (input 2) */
	size_t n;           /* tensors it saves or restores */
} io_t;

typedef struct layout {
	const char *scope;  /* S, not terminated: scope_len bytes */
	size_t scope_len;
	io_t save, restore;
	ptrdiff_t restore_noop; /* the NoOp that gets the new assignments */
} layout_t;

/* The reason a saver is left as is, written where the checks fail. */
typedef struct why {
	char text[256];
} why_t;

static bool leave(why_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool leave(why_t *w, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->text, sizeof(w->text), fmt, ap);
	va_end(ap);
	return false;
}

static Tensorflow__NodeDef *node_at(prune_graph_t *g, ptrdiff_t i)
{
	return i >= 0 ? prune_graph_node(g, (size_t)i) : NULL;
}

static bool is_op(const Tensorflow__NodeDef *n, const char *op)
{
	return n && strcmp(n->op, op) == 0;
}

static bool in_scope(const layout_t *L, const char *name)
{
	return strncmp(name, L->scope, L->scope_len) == 0 && name[L->scope_len] == '/';
}

/* ---- recognising the layout ---- */

/* The restore NoOp that takes the assignments, and the one RestoreV2 they read. */
static bool find_restore(prune_graph_t *g, const char *op_name, layout_t *L, why_t *w)
{
	ptrdiff_t all = prune_graph_find_input(g, op_name);
	Tensorflow__NodeDef *n = node_at(g, all);
	if (!n)
		return leave(w, "its restore op '%s' is not in the graph", op_name);
	if (!is_op(n, "NoOp"))
		return leave(w, "its restore op '%s' is a %s, not a NoOp", op_name, n->op);
	/* Sharded: restore_all waits for one NoOp per device, which waits for the assigns. */
	ptrdiff_t target = all;
	size_t shards = 0;
	for (size_t i = 0; i < n->n_input; i++) {
		ptrdiff_t k = prune_graph_find_input(g, n->input[i]);
		if (n->input[i][0] == '^' && is_op(node_at(g, k), "NoOp")) {
			shards++;
			target = k;
		}
	}
	if (shards > 1)
		return leave(w, "its restore op '%s' restores %zu shards (variables on several "
			     "devices)", op_name, shards);
	Tensorflow__NodeDef *t = node_at(g, target);
	ptrdiff_t rv = -1;
	for (size_t i = 0; i < t->n_input; i++) {
		Tensorflow__NodeDef *as = node_at(g, prune_graph_find_input(g, t->input[i]));
		if (!(is_op(as, "AssignVariableOp") || is_op(as, "Assign")) || as->n_input < 2)
			continue;
		ptrdiff_t x = prune_graph_find_input(g, as->input[1]);
		/* TF puts one Identity in between; a few more would still be the same value. */
		for (int hop = 0; hop < 4 && is_op(node_at(g, x), "Identity") &&
				  node_at(g, x)->n_input;
		     hop++)
			x = prune_graph_find_input(g, node_at(g, x)->input[0]);
		if (!is_op(node_at(g, x), "RestoreV2"))
			continue;
		if (rv >= 0 && rv != x)
			return leave(w, "several RestoreV2 ops ('%s', '%s') feed '%s'",
				     node_at(g, rv)->name, node_at(g, x)->name, t->name);
		rv = x;
	}
	if (rv < 0)
		return leave(w, "no RestoreV2 op feeds its restore op '%s'", t->name);
	L->restore_noop = target;
	L->restore.node = rv;
	return true;
}

/* The one SaveV2 under the saver's scope. */
static bool find_save(prune_graph_t *g, layout_t *L, why_t *w)
{
	size_t found = 0;
	for (size_t i = 0; i < prune_graph_count(g); i++) {
		Tensorflow__NodeDef *n = prune_graph_node(g, i);
		if (is_op(n, "SaveV2") && in_scope(L, n->name)) {
			if (found++)
				return leave(w, "it has several SaveV2 ops ('%s', '%s'): variables on "
					     "several devices", node_at(g, L->save.node)->name, n->name);
			L->save.node = (ptrdiff_t)i;
		}
	}
	return found ? true : leave(w, "no SaveV2 op in its scope '%.*s/'", (int)L->scope_len,
				    L->scope);
}

/* Whether c is a Const holding a vector of n strings (string_val, TF's encoding). */
static bool string_vector(const Tensorflow__NodeDef *c, size_t n)
{
	Tensorflow__AttrValue *v = is_op(c, "Const") ? prune_node_attr(c, "value") : NULL;
	Tensorflow__TensorProto *t =
		v && v->value_case == TENSORFLOW__ATTR_VALUE__VALUE_TENSOR ? v->tensor : NULL;
	return t && t->dtype == TENSORFLOW__DATA_TYPE__DT_STRING && t->n_string_val == n &&
	       t->tensor_content.len == 0 && t->tensor_shape && t->tensor_shape->n_dim == 1 &&
	       t->tensor_shape->dim[0]->size == (int64_t)n;
}

static Tensorflow__AttrValue__ListValue *dtypes_of(const Tensorflow__NodeDef *n)
{
	Tensorflow__AttrValue *v = prune_node_attr(n, "dtypes");
	return v && v->value_case == TENSORFLOW__ATTR_VALUE__VALUE_LIST ? v->list : NULL;
}

/* Checks a SaveV2 (extra = its values) or RestoreV2 (extra = 0) and its Consts. */
static bool check_io(prune_graph_t *g, io_t *io, bool save, const prune_saver_var_t *vars,
		     size_t n_vars, why_t *w)
{
	Tensorflow__NodeDef *n = node_at(g, io->node);
	Tensorflow__AttrValue__ListValue *dt = dtypes_of(n);
	io->n_data = 0;
	while (io->n_data < n->n_input && n->input[io->n_data][0] != '^')
		io->n_data++;
	for (size_t i = io->n_data; i < n->n_input; i++)
		if (n->input[i][0] != '^')
			return leave(w, "'%s' has a data input after a control input", n->name);
	if (!dt || io->n_data != 3 + (save ? dt->n_type : 0))
		return leave(w, "'%s' does not have the inputs and dtypes of a %s", n->name, n->op);
	io->n = dt->n_type;
	io->names = prune_graph_find_input(g, n->input[1]);
	io->slices = prune_graph_find_input(g, n->input[2]);
	if (!string_vector(node_at(g, io->names), io->n) ||
	    !string_vector(node_at(g, io->slices), io->n))
		return leave(w, "the tensor_names or shape_and_slices of '%s' are not string "
			     "Consts of %zu values", n->name, io->n);
	Tensorflow__TensorProto *t = prune_node_attr(node_at(g, io->names), "value")->tensor;
	for (size_t i = 0; i < t->n_string_val; i++)
		for (size_t v = 0; v < n_vars; v++)
			if (t->string_val[i].len == strlen(vars[v].name) &&
			    memcmp(t->string_val[i].data, vars[v].name, t->string_val[i].len) == 0)
				return leave(w, "'%s' already has the checkpoint key '%s'", n->name,
					     vars[v].name);
	return true;
}

/* Whether the layout is one this module extends; else w says why not. */
static bool recognise(prune_graph_t *g, const Tensorflow__SaverDef *sd,
		      const prune_saver_var_t *vars, size_t n, layout_t *L, why_t *w)
{
	if (sd->version != TENSORFLOW__SAVER_DEF__CHECKPOINT_FORMAT_VERSION__V2)
		return leave(w, "it writes %s checkpoints (saver_def.version %d); only V2 savers "
			     "(SaveV2/RestoreV2) are extended",
			     sd->version == TENSORFLOW__SAVER_DEF__CHECKPOINT_FORMAT_VERSION__V1
				     ? "V1" : "legacy",
			     (int)sd->version);
	const char *slash = strrchr(sd->restore_op_name, '/');
	if (!slash)
		return leave(w, "its restore op '%s' is not under a name scope",
			     sd->restore_op_name);
	L->scope = sd->restore_op_name;
	L->scope_len = (size_t)(slash - sd->restore_op_name);
	if (!in_scope(L, sd->save_tensor_name))
		return leave(w, "its save tensor '%s' is not in the scope of its restore op '%s'",
			     sd->save_tensor_name, sd->restore_op_name);
	if (prune_graph_find_input(g, sd->save_tensor_name) < 0)
		return leave(w, "its save tensor '%s' is not in the graph", sd->save_tensor_name);
	return find_restore(g, sd->restore_op_name, L, w) && find_save(g, L, w) &&
	       check_io(g, &L->save, true, vars, n, w) &&
	       check_io(g, &L->restore, false, vars, n, w);
}

/* ---- extending it ---- */

typedef struct ext {
	prune_graph_t *g;
	arena_t *a;
	const char *sub;           /* T: where the new nodes go */
	prune_consumers_t cons;
	sd_error_t *e;
} ext_t;

static int nomem(ext_t *x)
{
	return sd_err(x->e, SD_ENOMEM, "out of memory");
}

/*
 * The k of a node name's rest after "<S>/sparsityd" when the name sits in that sub-scope
 * (rest "" or "/...", k = 0) or in "<S>/sparsityd_<k>" (k as %u writes it, no leading
 * zero); false otherwise, or when k > max (such a k is never the first free one).
 */
static bool sub_scope_k(const char *rest, size_t max, size_t *k)
{
	*k = 0;
	if (rest[0] == '_' && rest[1] >= '1' && rest[1] <= '9') {
		for (rest++; *rest >= '0' && *rest <= '9'; rest++)
			if ((*k = *k * 10 + (size_t)(*rest - '0')) > max)
				return false;
	}
	return *rest == '\0' || *rest == '/';
}

/* "<S>/sparsityd", or "<S>/sparsityd_<k>" for the first k no node name sits in. One
 * scan notes the k taken, as a graph may hold many such scopes: the n names take at
 * most n of 0 .. n, so one of those is free. */
static const char *free_sub_scope(ext_t *x, const layout_t *L)
{
	size_t count = prune_graph_count(x->g), k;
	const char *base = arena_sprintf(x->a, "%.*s/sparsityd", (int)L->scope_len, L->scope);
	bool *taken = arena_calloc(x->a, count + 1, sizeof(*taken));
	if (!base || !taken)
		return NULL;
	size_t len = strlen(base);
	for (size_t i = 0; i < count; i++) {
		const char *nm = prune_graph_node(x->g, i)->name;
		if (strncmp(nm, base, len) == 0 && sub_scope_k(nm + len, count, &k))
			taken[k] = true;
	}
	k = 0;
	while (taken[k])
		k++;
	return k ? arena_sprintf(x->a, "%s_%zu", base, k) : base;
}

/* Sets the attribute key of n to v (an existing entry). */
static void set_attr(Tensorflow__NodeDef *n, const char *key, Tensorflow__AttrValue *v)
{
	for (size_t i = 0; i < n->n_attr; i++)
		if (strcmp(n->attr[i]->key, key) == 0)
			n->attr[i]->value = v;
}

/*
 * Drops n's "_output_shapes", a hint some exports carry: it lists the shapes of the
 * outputs as they were, and TensorFlow's importer refuses a node whose hint has fewer
 * shapes than the node has outputs (a grown RestoreV2).
 */
static void drop_output_shapes(Tensorflow__NodeDef *n)
{
	size_t k = 0;
	for (size_t i = 0; i < n->n_attr; i++)
		if (strcmp(n->attr[i]->key, "_output_shapes") != 0)
			n->attr[k++] = n->attr[i];
	n->n_attr = k;
}

/* Whether a node other than `except` reads node c's value. */
static bool read_by_other(const ext_t *x, ptrdiff_t c, ptrdiff_t except)
{
	for (size_t k = x->cons.off[c]; k < x->cons.off[c + 1]; k++)
		if (!x->cons.ctrl[k] && x->cons.list[k] != (size_t)except)
			return true;
	return false;
}

/*
 * Input `slot` of io's node (tensor_names or shape_and_slices) grown by one string per
 * variable: its name when keys, else "". In place, or as the copy "T/<copy>" when
 * another node reads the Const too.
 */
static int grow_strings(ext_t *x, const io_t *io, int slot, const char *copy,
			const prune_saver_var_t *vars, size_t n, bool keys)
{
	ptrdiff_t ci = slot == 1 ? io->names : io->slices;
	Tensorflow__NodeDef *c = node_at(x->g, ci);
	Tensorflow__AttrValue *old = prune_node_attr(c, "value");
	Tensorflow__AttrValue *v = arena_alloc(x->a, sizeof(*v));
	Tensorflow__TensorProto *t = arena_alloc(x->a, sizeof(*t));
	size_t total = io->n + n;
	ProtobufCBinaryData *sv = arena_calloc(x->a, total, sizeof(*sv));
	int64_t dim = (int64_t)total;
	Tensorflow__TensorShapeProto *shape = prune_shape_new(x->a, &dim, 1);
	if (!v || !t || !sv || !shape)
		return nomem(x);
	*t = *old->tensor;
	memcpy(sv, t->string_val, io->n * sizeof(*sv));
	for (size_t i = 0; i < n; i++)
		sv[io->n + i] = keys ? (ProtobufCBinaryData){strlen(vars[i].name),
							     (uint8_t *)vars[i].name}
				     : (ProtobufCBinaryData){0, (uint8_t *)""};
	t->string_val = sv;
	t->n_string_val = total;
	t->tensor_shape = shape;
	*v = *old;
	v->tensor = t;

	Tensorflow__NodeDef *user = node_at(x->g, io->node);
	if (!read_by_other(x, ci, io->node)) {
		set_attr(c, "value", v);
		drop_output_shapes(c);
		return 0;
	}
	const char *name = arena_sprintf(x->a, "%s/%s", x->sub, copy);
	Tensorflow__AttrValue *dt = prune_attr_type(x->a, TENSORFLOW__DATA_TYPE__DT_STRING);
	if (!name || !dt)
		return nomem(x);
	const prune_attr_kv_t kv[] = {{"dtype", dt}, {"value", v}};
	prune_node_spec_t spec = {.name = name, .op = "Const", .device = c->device,
				  .attrs = kv, .n_attrs = 2};
	if (!prune_graph_add(x->g, &spec, x->e))
		return x->e && x->e->code ? x->e->code : SD_ENOMEM;
	user->input[slot] = (char *)name;
	return 0;
}

/* The node's "dtypes" list with one type per variable appended. */
static int grow_dtypes(ext_t *x, Tensorflow__NodeDef *node, const prune_saver_var_t *vars,
		       size_t n)
{
	Tensorflow__AttrValue *old = prune_node_attr(node, "dtypes");
	Tensorflow__AttrValue *v = arena_alloc(x->a, sizeof(*v));
	Tensorflow__AttrValue__ListValue *l = arena_alloc(x->a, sizeof(*l));
	size_t had = old->list->n_type;
	Tensorflow__DataType *types = arena_calloc(x->a, had + n, sizeof(*types));
	if (!v || !l || !types)
		return nomem(x);
	*l = *old->list;
	memcpy(types, l->type, had * sizeof(*types));
	for (size_t i = 0; i < n; i++)
		types[had + i] = (Tensorflow__DataType)vars[i].dtype;
	l->type = types;
	l->n_type = had + n;
	*v = *old;
	v->list = l;
	set_attr(node, "dtypes", v);
	drop_output_shapes(node);
	return 0;
}

/* node's inputs with `add` (n strings) inserted before its control inputs, at n_data. */
static int insert_inputs(ext_t *x, Tensorflow__NodeDef *node, size_t n_data,
			 const char *const *add, size_t n)
{
	char **in = arena_calloc(x->a, node->n_input + n, sizeof(*in));
	if (!in)
		return nomem(x);
	memcpy(in, node->input, n_data * sizeof(*in));
	for (size_t i = 0; i < n; i++)
		in[n_data + i] = (char *)add[i];
	memcpy(in + n_data + n, node->input + n_data, (node->n_input - n_data) * sizeof(*in));
	node->input = in;
	node->n_input += n;
	return 0;
}

static int extend_save(ext_t *x, const layout_t *L, const prune_saver_var_t *vars, size_t n)
{
	const char **reads = arena_calloc(x->a, n, sizeof(*reads));
	if (!reads)
		return nomem(x);
	for (size_t i = 0; i < n; i++)
		reads[i] = vars[i].read;
	Tensorflow__NodeDef *s = node_at(x->g, L->save.node);
	int rc;
	if ((rc = grow_strings(x, &L->save, 1, "save_tensor_names", vars, n, true)) ||
	    (rc = grow_strings(x, &L->save, 2, "save_shape_and_slices", vars, n, false)) ||
	    (rc = grow_dtypes(x, s, vars, n)))
		return rc;
	return insert_inputs(x, s, L->save.n_data, reads, n);
}

static int extend_restore(ext_t *x, const layout_t *L, const prune_saver_var_t *vars,
			  size_t n)
{
	Tensorflow__NodeDef *r = node_at(x->g, L->restore.node);
	const char **ctl = arena_calloc(x->a, n, sizeof(*ctl));
	if (!ctl)
		return nomem(x);
	int rc;
	if ((rc = grow_strings(x, &L->restore, 1, "restore_tensor_names", vars, n, true)) ||
	    (rc = grow_strings(x, &L->restore, 2, "restore_shape_and_slices", vars, n, false)) ||
	    (rc = grow_dtypes(x, r, vars, n)))
		return rc;
	for (size_t i = 0; i < n; i++) {
		/* A node spec is referenced, not copied: its arrays live in the arena. */
		const char **id_in = arena_calloc(x->a, 1, sizeof(*id_in));
		const char **as_in = arena_calloc(x->a, 2, sizeof(*as_in));
		prune_attr_kv_t *kv = arena_calloc(x->a, 2, sizeof(*kv));
		const char *id = arena_sprintf(x->a, "%s/restore_%zu", x->sub, i);
		const char *as = arena_sprintf(x->a, "%s/assign_%zu", x->sub, i);
		Tensorflow__AttrValue *ty = prune_attr_type(x->a, vars[i].dtype);
		if (!id_in || !as_in || !kv || !id || !as || !ty ||
		    !(id_in[0] = arena_sprintf(x->a, "%s:%zu", r->name, L->restore.n + i)) ||
		    !(ctl[i] = arena_sprintf(x->a, "^%s", as)))
			return nomem(x);
		as_in[0] = vars[i].name;
		as_in[1] = id;
		kv[0] = (prune_attr_kv_t){"T", ty};
		kv[1] = (prune_attr_kv_t){"dtype", ty};
		prune_node_spec_t ids = {.name = id, .op = "Identity", .inputs = id_in,
					 .n_inputs = 1, .attrs = &kv[0], .n_attrs = 1};
		prune_node_spec_t ass = {.name = as, .op = "AssignVariableOp", .inputs = as_in,
					 .n_inputs = 2, .attrs = &kv[1], .n_attrs = 1};
		if (!prune_graph_add(x->g, &ids, x->e) || !prune_graph_add(x->g, &ass, x->e))
			return x->e && x->e->code ? x->e->code : SD_ENOMEM;
	}
	Tensorflow__NodeDef *noop = node_at(x->g, L->restore_noop);
	return insert_inputs(x, noop, noop->n_input, ctl, n);
}

int prune_saver_extend(prune_graph_t *g, const prune_saver_var_t *vars, size_t n,
		       const char **warning, sd_error_t *e)
{
	*warning = NULL;
	Tensorflow__MetaGraphDef *m = prune_graph_meta(g);
	if (!m || !m->saver_def || n == 0)
		return 0;
	layout_t L = {.restore_noop = -1};
	why_t w;
	arena_t *a = prune_graph_arena(g);
	if (!recognise(g, m->saver_def, vars, n, &L, &w)) {
		*warning = arena_sprintf(a, "saver '%s' left as is: %s; a Saver built after "
					 "import_meta_graph still covers the sparsityd variables "
					 "(they are in the 'variables' collection)",
					 m->saver_def->restore_op_name, w.text);
		return *warning ? 0 : sd_err(e, SD_ENOMEM, "out of memory");
	}
	ext_t x = {.g = g, .a = a, .e = e};
	int rc = prune_graph_consumers(g, &x.cons, e);
	if (rc)
		return rc;
	if (!(x.sub = free_sub_scope(&x, &L)))
		return nomem(&x);
	return (rc = extend_save(&x, &L, vars, n)) ? rc : extend_restore(&x, &L, vars, n);
}
