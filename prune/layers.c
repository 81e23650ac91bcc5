/*
 * prune_layers: finds the layers a stage may prune (see layers.h).
 *
 * Workload: one backward walk from the outputs over data inputs (control inputs do not
 * carry weights into a layer), then one pass over the nodes in graph order so results
 * are deterministic. Weight tracing follows at most graph-size hops, so a malformed
 * Identity cycle cannot loop forever, and discovery remembers where each node's trace
 * ends (prune_tracer_t), so layers sharing one long chain to a weight walk it once.
 */
#include "prune/layers.h"

#include <string.h>

#include "common/sd_assert.h"
#include "prune/tensor.h"

static const char *const layer_types[] = {"MatMul", "Conv2D", "Conv2DBackpropInput"};

const char *prune_action_name(prune_action_t a)
{
	static const char *const names[PRUNE_ACTION__COUNT] = {"pruned", "skipped", "checked"};
	sd_require((unsigned)a < PRUNE_ACTION__COUNT); /* set by the engine, never by input */
	return names[a];
}

const char *prune_skip_name(prune_skip_t r)
{
	static const char *const names[] = {
#define PRUNE__SKIP_STR(name, str) str,
		PRUNE_SKIP_MAP(PRUNE__SKIP_STR)
#undef PRUNE__SKIP_STR
	};
	return (unsigned)r < PRUNE_SKIP__COUNT ? names[r] : "unknown";
}

bool prune_layer_type_known(const char *op)
{
	for (size_t i = 0; i < sizeof(layer_types) / sizeof(layer_types[0]); i++)
		if (strcmp(op, layer_types[i]) == 0)
			return true;
	return false;
}

const char *prune_layer_types(void) { return "MatMul, Conv2D, Conv2DBackpropInput"; }

/* Longest output name accepted; TensorFlow has no limit, real names stay far below. */
#define OUTPUT_NAME_MAX 4096

static bool name_char(unsigned char c, bool first)
{
	if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.')
		return true;
	return !first && (c == '_' || c == '/' || c == '>' || c == '-');
}

/* One entry of an output list: the text before the next comma, blanks around it
 * trimmed. Returns where the next entry starts, or NULL after the last. */
static const char *output_entry(const char *p, const char **s, size_t *len)
{
	const char *end = strchr(p, ',');
	size_t n = end ? (size_t)(end - p) : strlen(p);
	while (n && (*p == ' ' || *p == '\t'))
		p++, n--;
	while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	*s = p;
	*len = n;
	return end ? end + 1 : NULL;
}

int prune_outputs_check(const char *csv, sd_error_t *e)
{
	const char *p, *next = csv;
	size_t len, idx = 0;
	while (next) {
		next = output_entry(next, &p, &len);
		idx++;
		int show = (int)(len < 64 ? len : 64);
		if (!len)
			return sd_err(e, SD_EUSAGE, "output %zu is empty (expected node names "
						    "separated by commas, e.g. logits,probs)",
				      idx);
		if (len > OUTPUT_NAME_MAX)
			return sd_err(e, SD_EUSAGE, "output %zu is longer than %d bytes", idx,
				      OUTPUT_NAME_MAX);
		/* GraphDef inputs write control dependencies this way; users copy them. */
		if (*p == '^')
			return sd_err(e, SD_EUSAGE,
				      "output %zu ('%.*s') is a control input, not an output: name "
				      "the node (logits) or its tensor (logits:0) without '^'",
				      idx, show, p);
		const char *colon = memchr(p, ':', len);
		size_t nlen = colon ? (size_t)(colon - p) : len;
		if (!nlen)
			return sd_err(e, SD_EUSAGE, "output %zu ('%.*s') has no node name before ':'",
				      idx, show, p);
		for (size_t i = 0; i < nlen; i++)
			if (!name_char((unsigned char)p[i], i == 0))
				return sd_err(e, SD_EUSAGE,
					      "output %zu ('%.*s') is not a TensorFlow node name: "
					      "byte 0x%02x at %zu is not allowed",
					      idx, show, p, (unsigned char)p[i], i);
		if (colon && (colon + 1 == p + len ||
			      strspn(colon + 1, "0123456789") != (size_t)(p + len - colon - 1)))
			return sd_err(e, SD_EUSAGE,
				      "output %zu ('%.*s'): ':' must be followed by an output index, "
				      "a number as in logits:0",
				      idx, show, p);
	}
	return 0;
}

int prune_outputs_parse(prune_graph_t *g, const char *csv, const char ***out, size_t *n,
			sd_error_t *e)
{
	int rc = prune_outputs_check(csv, e);
	if (rc)
		return rc;
	arena_t *a = prune_graph_arena(g);
	size_t cap = 1;
	for (const char *p = csv; *p; p++)
		cap += *p == ',';
	const char **names = arena_calloc(a, cap, sizeof(*names));
	if (!names)
		return sd_err(e, SD_ENOMEM, "out of memory");
	size_t k = 0, len;
	for (const char *p, *next = csv; next;) {
		next = output_entry(next, &p, &len);
		const char *colon = memchr(p, ':', len);
		size_t nlen = colon ? (size_t)(colon - p) : len;
		if (prune_graph_find(g, p, nlen) < 0)
			return sd_err(e, SD_EMODEL, "output '%.*s' is not a node of the graph",
				      (int)nlen, p);
		if (!(names[k++] = arena_strndup(a, p, nlen)))
			return sd_err(e, SD_ENOMEM, "out of memory");
	}
	*out = names;
	*n = k;
	return 0;
}

/* Marks every node the outputs depend on through data inputs. */
static int mark_path(prune_graph_t *g, const char *const *outputs, size_t n_outputs,
		     bool *on_path, sd_error_t *e)
{
	size_t count = prune_graph_count(g);
	size_t *stack = arena_alloc(prune_graph_arena(g), (count + 1) * sizeof(*stack));
	if (!stack)
		return sd_err(e, SD_ENOMEM, "out of memory");
	size_t sp = 0;
	if (n_outputs == 0) {
		memset(on_path, 1, count * sizeof(*on_path));
		return 0;
	}
	for (size_t i = 0; i < n_outputs; i++) {
		ptrdiff_t idx = prune_graph_find(g, outputs[i], strlen(outputs[i]));
		if (idx >= 0 && !on_path[idx]) {
			on_path[idx] = true;
			stack[sp++] = (size_t)idx;
		}
	}
	while (sp) {
		const Tensorflow__NodeDef *n = prune_graph_node(g, stack[--sp]);
		for (size_t k = 0; k < n->n_input; k++) {
			if (n->input[k][0] == '^')
				continue;
			ptrdiff_t idx = prune_graph_find_input(g, n->input[k]);
			if (idx >= 0 && !on_path[idx]) {
				on_path[idx] = true;
				stack[sp++] = (size_t)idx;
			}
		}
	}
	return 0;
}

static bool is_source_op(const char *op)
{
	return strcmp(op, "Const") == 0 || strcmp(op, "VariableV2") == 0 ||
	       strcmp(op, "VarHandleOp") == 0 || strcmp(op, "Variable") == 0;
}

bool prune_passes_on(const Tensorflow__NodeDef *n)
{
	return strcmp(n->op, "Identity") == 0 || strcmp(n->op, "ReadVariableOp") == 0;
}

/* The node a trace goes to after n (which passes on), or -1 when n has no data input 0. */
static ptrdiff_t next_hop(const prune_graph_t *g, const Tensorflow__NodeDef *n)
{
	if (n->n_input == 0 || n->input[0][0] == '^')
		return -1;
	return prune_graph_find_input(g, n->input[0]);
}

/* prune_tracer_t.end of a node not reached yet, and of one on the walk in progress
 * (met again, the walk has closed a cycle: its trace ends in -1). */
enum { TRACE_UNKNOWN = -2, TRACE_WALKING = -3 };

int prune_tracer_init(prune_graph_t *g, prune_tracer_t *t, sd_error_t *e)
{
	size_t count = prune_graph_count(g);
	t->g = g;
	t->end = arena_alloc(prune_graph_arena(g), (count + 1) * sizeof(*t->end));
	if (!t->end)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < count; i++)
		t->end[i] = TRACE_UNKNOWN;
	return 0;
}

/* Where the trace from node idx ends: one walk to a node whose end is known (or a
 * dead end, or a cycle), then a second along the same nodes to note it on each, so no
 * node is walked twice over the tracer's life. */
static ptrdiff_t trace_from(prune_tracer_t *t, ptrdiff_t idx)
{
	ptrdiff_t end = idx, at = idx;
	while (end >= 0 && t->end[end] == TRACE_UNKNOWN) {
		const Tensorflow__NodeDef *n = prune_graph_node(t->g, (size_t)end);
		if (!prune_passes_on(n)) {
			t->end[end] = end;
			break;
		}
		t->end[end] = TRACE_WALKING;
		end = next_hop(t->g, n);
	}
	if (end >= 0)
		end = t->end[end] == TRACE_WALKING ? -1 : t->end[end];
	while (at >= 0 && t->end[at] == TRACE_WALKING) {
		t->end[at] = end;
		at = next_hop(t->g, prune_graph_node(t->g, (size_t)at));
	}
	return end;
}

ptrdiff_t prune_tracer_trace(prune_tracer_t *t, const char *input)
{
	return trace_from(t, prune_graph_find_input(t->g, input));
}

ptrdiff_t prune_tracer_weight_reader(prune_tracer_t *t, size_t layer, size_t *slot)
{
	const prune_graph_t *g = t->g;
	const Tensorflow__NodeDef *n = prune_graph_node(g, layer);
	if (n->n_input < 2)
		return -1;
	*slot = 1;
	if (n->input[1][0] == '^')
		return (ptrdiff_t)layer;
	ptrdiff_t c = prune_tracer_trace(t, n->input[1]);
	if (c < 0)
		return (ptrdiff_t)layer;
	const Tensorflow__NodeDef *cn = prune_graph_node(g, (size_t)c);
	if (strcmp(cn->op, "Cast") || cn->n_input < 1 || cn->input[0][0] == '^')
		return (ptrdiff_t)layer;
	*slot = 0;
	return c;
}

size_t prune_layer_reader(const prune_graph_t *g, const prune_layer_t *l)
{
	if (!l->cast)
		return l->node;
	ptrdiff_t c = prune_graph_find(g, l->cast, strlen(l->cast));
	sd_require(c >= 0); /* the name came from this graph, and nodes are never renamed */
	return (size_t)c;
}

char **prune_layer_weight_ref(const prune_graph_t *g, const prune_layer_t *l)
{
	return &prune_graph_node(g, prune_layer_reader(g, l))->input[l->cast ? 0 : 1];
}

bool prune_names_masked_weight(const char *input)
{
	size_t len = strlen(input), sl = strlen(PRUNE_MASKED_SUFFIX);
	return len > sl && strcmp(input + len - sl, PRUNE_MASKED_SUFFIX) == 0;
}

/* The weight's source: a Const or variable the trace reaches, or -1. */
static ptrdiff_t trace_weight(prune_tracer_t *t, const char *input)
{
	ptrdiff_t idx = prune_tracer_trace(t, input);
	return idx >= 0 && is_source_op(prune_graph_node(t->g, (size_t)idx)->op) ? idx : -1;
}

static const Tensorflow__TensorShapeProto *source_shape(const Tensorflow__NodeDef *src)
{
	if (strcmp(src->op, "Const") == 0) {
		Tensorflow__AttrValue *v = prune_node_attr(src, "value");
		return v && v->value_case == TENSORFLOW__ATTR_VALUE__VALUE_TENSOR
			       ? v->tensor->tensor_shape
			       : NULL;
	}
	Tensorflow__AttrValue *v = prune_node_attr(src, "shape");
	return v && v->value_case == TENSORFLOW__ATTR_VALUE__VALUE_SHAPE ? v->shape : NULL;
}

static int source_dtype(const Tensorflow__NodeDef *src)
{
	Tensorflow__AttrValue *v = prune_node_attr(src, "dtype");
	if (v && v->value_case == TENSORFLOW__ATTR_VALUE__VALUE_TYPE)
		return v->type;
	v = prune_node_attr(src, "value");
	if (v && v->value_case == TENSORFLOW__ATTR_VALUE__VALUE_TENSOR)
		return v->tensor->dtype;
	return 0;
}

static bool attr_true(const Tensorflow__NodeDef *n, const char *key)
{
	Tensorflow__AttrValue *v = prune_node_attr(n, key);
	return v && v->value_case == TENSORFLOW__ATTR_VALUE__VALUE_B && v->b;
}

static void skip(prune_layer_t *l, prune_skip_t why, const char *detail)
{
	l->action = PRUNE_ACTION_SKIPPED;
	l->reason = why;
	l->detail = detail;
}

int prune_layer_axis(const Tensorflow__NodeDef *n)
{
	if (strcmp(n->op, "MatMul") == 0)
		return attr_true(n, "transpose_b") ? 1 : 0;
	return strcmp(n->op, "Conv2D") == 0 ? 2 : 3;
}

/* Structural checks of one layer; fills weight, dtype, shape, axis. */
static int classify(prune_graph_t *g, prune_tracer_t *t, prune_layer_t *l,
		    const Tensorflow__NodeDef *n, size_t max_elems, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	l->name = n->name;
	l->type = n->op;
	l->rank = -1;
	l->axis = -1;
	l->weight_input = "";
	size_t slot;
	ptrdiff_t rd = prune_tracer_weight_reader(t, l->node, &slot);
	if (rd >= 0) {
		const Tensorflow__NodeDef *reader = prune_graph_node(g, (size_t)rd);
		l->weight_input = reader->input[slot];
		if ((size_t)rd != l->node)
			l->cast = reader->name;
	}
	ptrdiff_t mw = rd >= 0 ? prune_graph_find_input(g, l->weight_input) : -1;
	if (mw >= 0) {
		const Tensorflow__NodeDef *m = prune_graph_node(g, (size_t)mw);
		if (strcmp(m->op, "Mul") == 0 && m->n_input == 2 &&
		    prune_names_masked_weight(m->name)) {
			l->masked = true;
			l->weight_input = m->input[0];
		}
	}
	bool matmul = strcmp(n->op, "MatMul") == 0;
	int want_rank = matmul ? 2 : 4;
	l->axis = prune_layer_axis(n);
	if (matmul && attr_true(n, "transpose_a")) {
		skip(l, PRUNE_SKIP_TRANSPOSE_A, "MatMul with transpose_a=true");
		return 0;
	}
	ptrdiff_t src = rd >= 0 ? trace_weight(t, l->weight_input) : -1;
	if (src < 0) {
		skip(l, PRUNE_SKIP_NOT_CONSTANT,
		     l->cast ? arena_sprintf(a, "weight read through Cast '%s' does not trace "
						"back to a Const, VariableV2 or VarHandleOp",
					     l->cast)
			     : "weight does not trace back to a Const, VariableV2 or VarHandleOp");
		return 0;
	}
	const Tensorflow__NodeDef *s = prune_graph_node(g, (size_t)src);
	l->weight = s->name;
	l->weight_node = (size_t)src;
	l->dtype = source_dtype(s);
	if (l->dtype > 100)
		l->dtype -= 100; /* VariableV2 dtype may be written as a ref type */
	if (!prune_dtype_size(l->dtype)) {
		skip(l, PRUNE_SKIP_DTYPE,
		     arena_sprintf(a, "weight dtype %s is not float32/float64/float16/bfloat16",
				   prune_dtype_name(l->dtype)));
		return 0;
	}
	const Tensorflow__TensorShapeProto *shp = source_shape(s);
	if (!shp || shp->unknown_rank) {
		skip(l, PRUNE_SKIP_BAD_SHAPE, "weight shape is unknown");
		return 0;
	}
	if ((int)shp->n_dim != want_rank) {
		skip(l, PRUNE_SKIP_BAD_SHAPE,
		     arena_sprintf(a, "weight has rank %zu, %s needs rank %d", shp->n_dim,
				   n->op, want_rank));
		return 0;
	}
	l->rank = want_rank;
	for (int d = 0; d < want_rank; d++) {
		l->shape[d] = shp->dim[d]->size;
		if (l->shape[d] < 0) {
			skip(l, PRUNE_SKIP_BAD_SHAPE, "weight shape has an unknown dimension");
			return 0;
		}
	}
	size_t count;
	int rc = prune_shape_count(shp, max_elems, s->name, &count, e);
	if (rc)
		return rc;
	if (l->shape[l->axis] <= 2)
		skip(l, PRUNE_SKIP_AXIS_TOO_SHORT,
		     arena_sprintf(a, "prune axis %d has length %lld (<= 2), left dense",
				   l->axis, (long long)l->shape[l->axis]));
	return 0;
}

int prune_layers_find(prune_graph_t *g, const char *const *outputs, size_t n_outputs,
		      size_t max_elems, prune_layer_t **layers, size_t *n_layers, sd_error_t *e)
{
	arena_t *a = prune_graph_arena(g);
	size_t count = prune_graph_count(g);
	bool *on_path = arena_calloc(a, count, sizeof(bool));
	if (!on_path)
		return sd_err(e, SD_ENOMEM, "out of memory");
	int rc = mark_path(g, outputs, n_outputs, on_path, e);
	if (rc)
		return rc;
	size_t n = 0;
	for (size_t i = 0; i < count; i++)
		n += on_path[i] && prune_layer_type_known(prune_graph_node(g, i)->op);
	prune_layer_t *ls = arena_calloc(a, n ? n : 1, sizeof(*ls));
	if (!ls)
		return sd_err(e, SD_ENOMEM, "out of memory");
	/* Layers often share the Identity chains to their weights: each is walked once. */
	prune_tracer_t t;
	if ((rc = prune_tracer_init(g, &t, e)))
		return rc;
	size_t k = 0;
	for (size_t i = 0; i < count; i++) {
		const Tensorflow__NodeDef *nd = prune_graph_node(g, i);
		if (!on_path[i] || !prune_layer_type_known(nd->op))
			continue;
		ls[k].node = i;
		if ((rc = classify(g, &t, &ls[k], nd, max_elems, e)))
			return rc;
		k++;
	}
	/* A weight feeding two layers cannot carry two different masks. Layers share a
	 * weight exactly when their weight names are the same pointer (the source node's
	 * name), so counting uses per node is one pass. */
	uint32_t *uses = arena_calloc(a, count, sizeof(*uses));
	if (!uses)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		if (ls[i].weight)
			uses[ls[i].weight_node]++;
	for (size_t i = 0; i < n; i++) {
		if (!ls[i].weight || uses[ls[i].weight_node] < 2 ||
		    (ls[i].reason != PRUNE_SKIP_NONE && ls[i].reason != PRUNE_SKIP_AXIS_TOO_SHORT))
			continue;
		skip(&ls[i], PRUNE_SKIP_SHARED_WEIGHT,
		     arena_sprintf(a, "weight '%s' feeds %u layers", ls[i].weight,
				   uses[ls[i].weight_node]));
	}
	*layers = ls;
	*n_layers = n;
	return 0;
}

void prune_result_begin(prune_result_t *r, prune_stage_t stage, const prune_graph_t *g,
			const char *const *outputs, size_t n_outputs)
{
	r->stage = stage;
	r->format = prune_graph_format(g);
	r->format_stated = prune_graph_format_stated(g);
	r->nodes_in = r->nodes_out = prune_graph_count(g);
	r->outputs = (const char **)outputs;
	r->n_outputs = n_outputs;
}

void prune_result_count(prune_result_t *r)
{
	r->pruned = r->skipped = r->checked = r->layers_2of4 = 0;
	memset(r->by_reason, 0, sizeof(r->by_reason));
	for (size_t i = 0; i < r->n_layers; i++) {
		r->layers_2of4 += r->layers[i].examined && r->layers[i].is_2of4;
		if (r->layers[i].action == PRUNE_ACTION_PRUNED) {
			r->pruned++;
		} else if (r->layers[i].action == PRUNE_ACTION_CHECKED) {
			r->checked++;
		} else {
			r->skipped++;
			r->by_reason[r->layers[i].reason]++;
		}
	}
}
