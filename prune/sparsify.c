/*
 * prune_sparsify: weight * mask into the weight constant (see sparsify.h).
 */
#include "prune/sparsify.h"

#include <stdlib.h>
#include <string.h>

#include "prune/attr.h"
#include "prune/layers.h"
#include "prune/mask.h"

/* Longest chain of Identity readers walked below a weight: a deeper one counts as not
 * exclusive, and it bounds the walk's recursion. */
#define WALK_DEPTH 64

enum { NOT_EXCLUSIVE = -1, WALKING = -2, WALK_NOMEM = -3 };

/* A node the walk has reached, with its height (the longest chain of Identity readers
 * below it) or WALKING while its own readers are being walked. */
typedef struct seen {
	size_t node; /* SIZE_MAX: a free slot */
	int height;
} seen_t;

/*
 * The state of one exclusive() question. Every node is walked once and remembered,
 * since a node reached again has the same readers: a chain whose nodes each read their
 * predecessor twice would otherwise cost one walk per path, 2^depth. The set is an
 * open-addressed table, so a walk costs what it reaches, not the graph's size.
 */
typedef struct walk {
	const prune_graph_t *g;
	const prune_consumers_t *c;
	size_t reader;
	prune_ignore_cb ignore;
	void *ud;
	seen_t *seen;
	size_t cap, used; /* cap is 0 or a power of two */
} walk_t;

static size_t seen_slot(const walk_t *w, size_t node)
{
	size_t i = (node * (size_t)2654435761u) & (w->cap - 1);
	while (w->seen[i].node != SIZE_MAX && w->seen[i].node != node)
		i = (i + 1) & (w->cap - 1);
	return i;
}

/* Makes room for one more node (at most half the slots in use); false without memory. */
static bool seen_reserve(walk_t *w)
{
	if (2 * (w->used + 1) <= w->cap)
		return true;
	size_t cap = w->cap ? 2 * w->cap : 16;
	seen_t *old = w->seen, *s = malloc(cap * sizeof(*s));
	if (!s)
		return false;
	for (size_t i = 0; i < cap; i++)
		s[i].node = SIZE_MAX;
	size_t old_cap = w->cap;
	w->seen = s;
	w->cap = cap;
	for (size_t i = 0; i < old_cap; i++)
		if (old[i].node != SIZE_MAX)
			w->seen[seen_slot(w, old[i].node)] = old[i];
	free(old);
	return true;
}

static int visit(walk_t *w, size_t idx, int depth);

/*
 * The height of node idx, reached at depth: 0 when every reader is the layer (or its
 * Cast), an ignored node or a control edge, else one more than the highest Identity
 * reader. NOT_EXCLUSIVE when some reader is none of these, an Identity nobody reads
 * (an endpoint a session may fetch), a cycle, or a chain past WALK_DEPTH. WALK_NOMEM
 * when the walk runs out of memory.
 */
static int height(walk_t *w, size_t idx, int depth)
{
	if (depth > WALK_DEPTH)
		return NOT_EXCLUSIVE;
	const prune_consumers_t *c = w->c;
	int h = 0;
	for (size_t k = c->off[idx]; k < c->off[idx + 1]; k++) {
		size_t q = c->list[k];
		const Tensorflow__NodeDef *n = prune_graph_node(w->g, q);
		if (c->ctrl[k] || q == w->reader || (w->ignore && w->ignore(w->ud, n)))
			continue;
		if (!prune_passes_on(n) || c->off[q + 1] == c->off[q])
			return NOT_EXCLUSIVE;
		int hq = visit(w, q, depth + 1);
		if (hq < 0)
			return hq;
		if (hq + 1 > h)
			h = hq + 1;
	}
	return h;
}

/* height() of reader idx, walked the first time it is reached and remembered: reached
 * again deeper, the chain below it may now pass WALK_DEPTH; reached while its own
 * readers are walked, it sits on a cycle (which the walk would have followed down to
 * WALK_DEPTH). */
static int visit(walk_t *w, size_t idx, int depth)
{
	if (w->cap) {
		const seen_t *s = &w->seen[seen_slot(w, idx)];
		if (s->node == idx)
			return s->height == WALKING || depth + s->height > WALK_DEPTH
				       ? NOT_EXCLUSIVE
				       : s->height;
	}
	if (!seen_reserve(w))
		return WALK_NOMEM;
	w->seen[seen_slot(w, idx)] = (seen_t){idx, WALKING};
	w->used++;
	int h = height(w, idx, depth);
	/* The table may have grown under height(): look the slot up again. */
	w->seen[seen_slot(w, idx)].height = h;
	return h;
}

/* Sets *yes when every reader of node idx is `reader` (the layer or its Cast), an
 * ignored node, or an Identity whose readers pass the same test; control edges read no
 * value. Returns 0 or SD_ENOMEM. */
static int exclusive(const prune_graph_t *g, const prune_consumers_t *c, size_t idx,
		     size_t reader, prune_ignore_cb ignore, void *ud, bool *yes, sd_error_t *e)
{
	walk_t w = {.g = g, .c = c, .reader = reader, .ignore = ignore, .ud = ud};
	int h = height(&w, idx, 0);
	free(w.seen);
	if (h == WALK_NOMEM)
		return sd_err(e, SD_ENOMEM, "out of memory");
	*yes = h >= 0;
	return 0;
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
	bool alone = false;
	int rc = exclusive(g, c, cidx, prune_layer_reader(g, l), ignore, ud, &alone, e);
	if (rc)
		return rc;
	*moved = !alone;
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
	rc = prune_tensor_write(tp, w, a, e);
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
