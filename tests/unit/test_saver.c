/*
 * Unit tests for prune_saver: a MetaGraphDef with TensorFlow's non-sharded V2 saver over
 * one resource variable "w" gains the variables "v" (float) and "s" (int64) in its save
 * and restore sub-graph; a Const another node reads is copied, not changed; a taken
 * sub-scope moves the new nodes aside; layouts it does not recognise leave the graph
 * byte for byte as it was and say why.
 */
#include <check.h>
#include <string.h>

#include "proto/pbtext.h"
#include "prune/saver.h"
#include "testutil_prune.h"

/* TensorFlow's layout for one variable (tf.compat.v1.train.Saver, resource variables). */
static const char META[] =
	"graph_def {\n"
	"  node { name: 'w' op: 'VarHandleOp' attr { key: 'dtype' value { type: DT_FLOAT } }\n"
	"         attr { key: 'shape' value { shape { dim { size: 2 } } } } }\n"
	"  node { name: 'w/Read/ReadVariableOp' op: 'ReadVariableOp' input: 'w'\n"
	"         attr { key: 'dtype' value { type: DT_FLOAT } } }\n"
	"  node { name: 'v' op: 'VarHandleOp' attr { key: 'dtype' value { type: DT_FLOAT } }\n"
	"         attr { key: 'shape' value { shape { dim { size: 2 } } } } }\n"
	"  node { name: 'v/Read/ReadVariableOp' op: 'ReadVariableOp' input: 'v'\n"
	"         attr { key: 'dtype' value { type: DT_FLOAT } } }\n"
	"  node { name: 's' op: 'VarHandleOp' attr { key: 'dtype' value { type: DT_INT64 } }\n"
	"         attr { key: 'shape' value { shape { } } } }\n"
	"  node { name: 's/Read/ReadVariableOp' op: 'ReadVariableOp' input: 's'\n"
	"         attr { key: 'dtype' value { type: DT_INT64 } } }\n"
	"  node { name: 'save/Const' op: 'Const' attr { key: 'dtype' value { type: DT_STRING } }\n"
	"         attr { key: 'value' value { tensor { dtype: DT_STRING tensor_shape { }\n"
	"                string_val: 'model' } } } }\n"
	"  node { name: 'save/SaveV2/tensor_names' op: 'Const'\n"
	"         attr { key: 'dtype' value { type: DT_STRING } }\n"
	"         attr { key: 'value' value { tensor { dtype: DT_STRING\n"
	"                tensor_shape { dim { size: 1 } } string_val: 'w' } } } }\n"
	"  node { name: 'save/SaveV2/shape_and_slices' op: 'Const'\n"
	"         attr { key: 'dtype' value { type: DT_STRING } }\n"
	"         attr { key: 'value' value { tensor { dtype: DT_STRING\n"
	"                tensor_shape { dim { size: 1 } } string_val: '' } } } }\n"
	"  node { name: 'save/SaveV2' op: 'SaveV2'\n"
	"         input: ['save/Const', 'save/SaveV2/tensor_names', 'save/SaveV2/shape_and_slices',\n"
	"                 'w/Read/ReadVariableOp']\n"
	"         attr { key: 'dtypes' value { list { type: DT_FLOAT } } } }\n"
	"  node { name: 'save/control_dependency' op: 'Identity'\n"
	"         input: ['save/Const', '^save/SaveV2']\n"
	"         attr { key: 'T' value { type: DT_STRING } } }\n"
	"  node { name: 'save/RestoreV2/tensor_names' op: 'Const'\n"
	"         attr { key: 'dtype' value { type: DT_STRING } }\n"
	"         attr { key: 'value' value { tensor { dtype: DT_STRING\n"
	"                tensor_shape { dim { size: 1 } } string_val: 'w' } } } }\n"
	"  node { name: 'save/RestoreV2/shape_and_slices' op: 'Const'\n"
	"         attr { key: 'dtype' value { type: DT_STRING } }\n"
	"         attr { key: 'value' value { tensor { dtype: DT_STRING\n"
	"                tensor_shape { dim { size: 1 } } string_val: '' } } } }\n"
	"  node { name: 'save/RestoreV2' op: 'RestoreV2' device: '/device:CPU:0'\n"
	"         input: ['save/Const', 'save/RestoreV2/tensor_names',\n"
	"                 'save/RestoreV2/shape_and_slices']\n"
	"         attr { key: 'dtypes' value { list { type: DT_FLOAT } } }\n"
	"         attr { key: '_output_shapes' value { list { shape { unknown_rank: true } } } } }\n"
	"  node { name: 'save/Identity' op: 'Identity' input: 'save/RestoreV2'\n"
	"         attr { key: 'T' value { type: DT_FLOAT } } }\n"
	"  node { name: 'save/AssignVariableOp' op: 'AssignVariableOp'\n"
	"         input: ['w', 'save/Identity'] attr { key: 'dtype' value { type: DT_FLOAT } } }\n"
	"  node { name: 'save/restore_all' op: 'NoOp' input: '^save/AssignVariableOp' }\n"
	"}\n"
	"saver_def { filename_tensor_name: 'save/Const:0'\n"
	"  save_tensor_name: 'save/control_dependency:0' restore_op_name: 'save/restore_all'\n"
	"  max_to_keep: 5 keep_checkpoint_every_n_hours: 10000 version: V2 }\n";

static const prune_saver_var_t VARS[] = {
	{"v", "v/Read/ReadVariableOp", TENSORFLOW__DATA_TYPE__DT_FLOAT},
	{"s", "s/Read/ReadVariableOp", TENSORFLOW__DATA_TYPE__DT_INT64},
};

/* The MetaGraphDef META, edited by `edit` (may be NULL) before it is packed and loaded. */
static prune_graph_t *load(void (*edit)(Tensorflow__MetaGraphDef *))
{
	sd_error_t e;
	pbtext_opts_t o = {.filename = "meta", .err_code = SD_EMODEL};
	ProtobufCMessage *m;
	ck_assert_msg(pbtext_parse(&tensorflow__meta_graph_def__descriptor, META, strlen(META), &A,
				   &o, &m, &e) == 0, "%s", e.msg);
	if (edit)
		edit((Tensorflow__MetaGraphDef *)m);
	size_t len;
	uint8_t *buf = tu_pack(&A, m, &len);
	prune_graph_t *g;
	ck_assert_msg(prune_graph_load(buf, len, "meta", PRUNE_FMT_METAGRAPH, 1u << 20, &A, &g,
				       &e) == 0, "%s", e.msg);
	return g;
}

static Tensorflow__NodeDef *node(prune_graph_t *g, const char *name)
{
	ptrdiff_t i = prune_graph_find(g, name, strlen(name));
	ck_assert_msg(i >= 0, "node %s missing", name);
	return prune_graph_node(g, (size_t)i);
}

static void assert_inputs(prune_graph_t *g, const char *name, const char *const *want, size_t n)
{
	Tensorflow__NodeDef *nd = node(g, name);
	ck_assert_msg(nd->n_input == n, "%s has %zu inputs, not %zu", name, nd->n_input, n);
	for (size_t i = 0; i < n; i++)
		ck_assert_str_eq(nd->input[i], want[i]);
}

/* The strings of Const `name`, joined by ','. */
static const char *strings(prune_graph_t *g, const char *name)
{
	Tensorflow__TensorProto *t = prune_node_attr(node(g, name), "value")->tensor;
	ck_assert_int_eq(t->tensor_shape->n_dim, 1);
	ck_assert_int_eq(t->tensor_shape->dim[0]->size, (int64_t)t->n_string_val);
	char *s = arena_strdup(&A, "");
	for (size_t i = 0; i < t->n_string_val; i++)
		s = arena_sprintf(&A, "%s%s%.*s", s, i ? "," : "", (int)t->string_val[i].len,
				  (const char *)t->string_val[i].data);
	return s;
}

static void assert_dtypes(prune_graph_t *g, const char *name)
{
	Tensorflow__AttrValue__ListValue *l = prune_node_attr(node(g, name), "dtypes")->list;
	ck_assert_uint_eq(l->n_type, 3);
	ck_assert_int_eq(l->type[0], TENSORFLOW__DATA_TYPE__DT_FLOAT);
	ck_assert_int_eq(l->type[1], TENSORFLOW__DATA_TYPE__DT_FLOAT);
	ck_assert_int_eq(l->type[2], TENSORFLOW__DATA_TYPE__DT_INT64);
}

static void extend_ok(prune_graph_t *g)
{
	const char *warning = "unset";
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_msg(prune_saver_extend(g, VARS, 2, &warning, &e) == 0, "%s", e.msg);
	ck_assert_msg(warning == NULL, "%s", warning);
}

/* The restore half, with the new nodes under `sub`. */
static void assert_restore(prune_graph_t *g, const char *sub)
{
	assert_dtypes(g, "save/RestoreV2");
	ck_assert_ptr_null(prune_node_attr(node(g, "save/RestoreV2"), "_output_shapes"));
	for (int i = 0; i < 2; i++) {
		const char *id = arena_sprintf(&A, "%s/restore_%d", sub, i);
		const char *as = arena_sprintf(&A, "%s/assign_%d", sub, i);
		const char *out = arena_sprintf(&A, "save/RestoreV2:%d", i + 1);
		ck_assert_str_eq(node(g, id)->op, "Identity");
		ck_assert_int_eq(prune_node_attr(node(g, id), "T")->type, VARS[i].dtype);
		assert_inputs(g, id, (const char *[]){out}, 1);
		ck_assert_str_eq(node(g, as)->op, "AssignVariableOp");
		ck_assert_int_eq(prune_node_attr(node(g, as), "dtype")->type, VARS[i].dtype);
		assert_inputs(g, as, (const char *[]){VARS[i].name, id}, 2);
	}
	assert_inputs(g, "save/restore_all",
		      (const char *[]){"^save/AssignVariableOp",
				       arena_sprintf(&A, "^%s/assign_0", sub),
				       arena_sprintf(&A, "^%s/assign_1", sub)},
		      3);
}

START_TEST(extends_save_and_restore)
{
	prune_graph_t *g = load(NULL);
	extend_ok(g);
	assert_inputs(g, "save/SaveV2",
		      (const char *[]){"save/Const", "save/SaveV2/tensor_names",
				       "save/SaveV2/shape_and_slices", "w/Read/ReadVariableOp",
				       "v/Read/ReadVariableOp", "s/Read/ReadVariableOp"},
		      6);
	assert_dtypes(g, "save/SaveV2");
	ck_assert_str_eq(strings(g, "save/SaveV2/tensor_names"), "w,v,s");
	ck_assert_str_eq(strings(g, "save/SaveV2/shape_and_slices"), ",,");
	ck_assert_str_eq(strings(g, "save/RestoreV2/tensor_names"), "w,v,s");
	ck_assert_str_eq(strings(g, "save/RestoreV2/shape_and_slices"), ",,");
	assert_restore(g, "save/sparsityd");
	/* The saver_def itself is unchanged: TF finds the same ops, which now do more. */
	ck_assert_str_eq(prune_graph_meta(g)->saver_def->restore_op_name, "save/restore_all");
}
END_TEST

START_TEST(shared_const_is_copied)
{
	prune_graph_t *g = load(NULL);
	/* Another reader of the save's tensor_names must keep seeing one name. */
	prune_node_spec_t other = {.name = "other", .op = "Identity",
				   .inputs = (const char *[]){"save/SaveV2/tensor_names"},
				   .n_inputs = 1};
	sd_error_t e;
	ck_assert_ptr_nonnull(prune_graph_add(g, &other, &e));
	extend_ok(g);
	ck_assert_str_eq(strings(g, "save/SaveV2/tensor_names"), "w");
	ck_assert_str_eq(node(g, "save/SaveV2")->input[1], "save/sparsityd/save_tensor_names");
	ck_assert_str_eq(strings(g, "save/sparsityd/save_tensor_names"), "w,v,s");
	/* Not shared: changed in place. */
	ck_assert_str_eq(node(g, "save/SaveV2")->input[2], "save/SaveV2/shape_and_slices");
	ck_assert_str_eq(strings(g, "save/SaveV2/shape_and_slices"), ",,");
}
END_TEST

START_TEST(taken_sub_scope)
{
	prune_graph_t *g = load(NULL);
	prune_node_spec_t taken = {.name = "save/sparsityd", .op = "NoOp"};
	prune_node_spec_t inner = {.name = "save/sparsityd_1/x", .op = "NoOp"};
	sd_error_t e;
	ck_assert_ptr_nonnull(prune_graph_add(g, &taken, &e));
	ck_assert_ptr_nonnull(prune_graph_add(g, &inner, &e));
	extend_ok(g);
	assert_restore(g, "save/sparsityd_2");
}
END_TEST

/* Sub-scopes save/sparsityd .. save/sparsityd_39999 are taken (as a node, or as a scope
 * with a node inside), among names that look alike but take none: the first free one
 * is found in one scan of the names, not one per candidate. */
START_TEST(many_taken_sub_scopes)
{
	enum { N = 40000 };
	prune_graph_t *g = load(NULL);
	sd_error_t e;
	static const char *const decoys[] = {
		"save/sparsityd_0", "save/sparsityd_040000/x", "save/sparsityd_40000x",
		"save/sparsityd_40000_1", "save/sparsityd_", "save/sparsityd_/x",
		"save/sparsityd_99999999999999999999999999/x", "save/sparsityd40000",
		"save/sparsityd_-40000", "other/sparsityd_40000", "save/x/sparsityd_40000",
	};
	for (size_t i = 0; i < sizeof(decoys) / sizeof(decoys[0]); i++) {
		prune_node_spec_t d = {.name = decoys[i], .op = "NoOp"};
		ck_assert_ptr_nonnull(prune_graph_add(g, &d, &e));
	}
	/* Added from the top down, so no order of the names favours the answer. */
	for (int k = N - 1; k >= 0; k--) {
		const char *sub = k ? arena_sprintf(&A, "save/sparsityd_%d", k) : "save/sparsityd";
		prune_node_spec_t n = {.name = k % 2 ? arena_sprintf(&A, "%s/x", sub) : sub,
				       .op = "NoOp"};
		ck_assert_ptr_nonnull(prune_graph_add(g, &n, &e));
	}
	prune_node_spec_t beyond = {.name = "save/sparsityd_40001/x", .op = "NoOp"};
	ck_assert_ptr_nonnull(prune_graph_add(g, &beyond, &e));
	extend_ok(g);
	assert_restore(g, "save/sparsityd_40000");
}
END_TEST

START_TEST(no_saver_def)
{
	prune_graph_t *g = load(NULL);
	prune_graph_meta(g)->saver_def = NULL;
	size_t before = prune_graph_count(g);
	extend_ok(g);
	ck_assert_uint_eq(prune_graph_count(g), before);
}
END_TEST

/* ---- layouts left as they are ---- */

static void v1(Tensorflow__MetaGraphDef *m)
{
	m->saver_def->version = TENSORFLOW__SAVER_DEF__CHECKPOINT_FORMAT_VERSION__V1;
}

static void no_restore_op(Tensorflow__MetaGraphDef *m)
{
	m->saver_def->restore_op_name = "save/restore_everything";
}

static void missing_save(Tensorflow__MetaGraphDef *m)
{
	/* The SaveV2 renamed out of the saver's scope. */
	Tensorflow__GraphDef *gd = m->graph_def;
	for (size_t i = 0; i < gd->n_node; i++) {
		if (strcmp(gd->node[i]->name, "save/SaveV2") == 0)
			gd->node[i]->name = "elsewhere/SaveV2";
		for (size_t k = 0; k < gd->node[i]->n_input; k++)
			if (strcmp(gd->node[i]->input[k], "^save/SaveV2") == 0)
				gd->node[i]->input[k] = "^elsewhere/SaveV2";
	}
}

static void two_shards(Tensorflow__MetaGraphDef *m)
{
	/* restore_all waiting for one NoOp per device, as a sharded saver over two devices. */
	Tensorflow__GraphDef *gd = m->graph_def;
	Tensorflow__NodeDef **nodes = arena_calloc(&A, gd->n_node + 2, sizeof(*nodes));
	ck_assert_ptr_nonnull(nodes);
	memcpy(nodes, gd->node, gd->n_node * sizeof(*nodes));
	static const char *const shard[2] = {"save/restore_shard", "save/restore_shard_1"};
	for (int k = 0; k < 2; k++) {
		Tensorflow__NodeDef *n = arena_alloc(&A, sizeof(*n));
		ck_assert_ptr_nonnull(n);
		tensorflow__node_def__init(n);
		n->name = (char *)shard[k];
		n->op = "NoOp";
		nodes[gd->n_node++] = n;
	}
	gd->node = nodes;
	for (size_t i = 0; i < gd->n_node; i++)
		if (strcmp(gd->node[i]->name, "save/restore_all") == 0) {
			gd->node[i]->input = arena_calloc(&A, 2, sizeof(char *));
			gd->node[i]->input[0] = "^save/restore_shard";
			gd->node[i]->input[1] = "^save/restore_shard_1";
			gd->node[i]->n_input = 2;
		}
}

static void key_taken(Tensorflow__MetaGraphDef *m)
{
	Tensorflow__GraphDef *gd = m->graph_def;
	for (size_t i = 0; i < gd->n_node; i++)
		if (strcmp(gd->node[i]->name, "save/RestoreV2/tensor_names") == 0)
			gd->node[i]->attr[1]->value->tensor->string_val[0] = /* attr 'value' */
				(ProtobufCBinaryData){1, (uint8_t *)"s"};
}

static const struct left_case {
	void (*edit)(Tensorflow__MetaGraphDef *);
	const char *why;
} left_cases[] = {
	{v1, "writes V1 checkpoints"},
	{no_restore_op, "restore op 'save/restore_everything' is not in the graph"},
	{missing_save, "no SaveV2 op in its scope 'save/'"},
	{two_shards, "restores 2 shards (variables on several devices)"},
	{key_taken, "'save/RestoreV2' already has the checkpoint key 's'"},
};

START_TEST(left_as_is)
{
	const struct left_case *c = &left_cases[_i];
	prune_graph_t *g = load(c->edit);
	size_t len0;
	char *before = tu_save(g, PRUNE_FMT_METAGRAPH, &len0);
	const char *warning = NULL;
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_msg(prune_saver_extend(g, VARS, 2, &warning, &e) == 0, "%s", e.msg);
	ck_assert_ptr_nonnull(warning);
	ck_assert_msg(strstr(warning, c->why), "warning '%s' lacks '%s'", warning, c->why);
	ck_assert_msg(strstr(warning, "'variables' collection"), "%s", warning);
	size_t len1;
	char *after = tu_save(g, PRUNE_FMT_METAGRAPH, &len1);
	ck_assert_msg(len0 == len1 && memcmp(before, after, len0) == 0,
		      "the graph changed although the saver was left as is");
	free(before);
	free(after);
}
END_TEST

int main(void)
{
	const tu_case_t cases[] = {
		{"extend", TU_TESTS(extends_save_and_restore, shared_const_is_copied,
				    taken_sub_scope, many_taken_sub_scopes, no_saver_def),
		 TU_ARENA, .timeout = 60},
		{"left", NULL, TU_ARENA, .loop = left_as_is,
		 .loop_n = (int)(sizeof(left_cases) / sizeof(left_cases[0]))},
		{NULL},
	};
	return tu_main("saver", cases);
}
