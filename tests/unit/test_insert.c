/*
 * Unit tests for layer discovery and the insert rewrite: reasons and axes for each
 * layer, the inserted node set and wiring, MetaGraphDef collections, the record, and
 * refusal to insert twice.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "proto/pbarena.h"
#include "prune/config.h"
#include "prune/insert.h"
#include "prune/layers.h"
#include "prune/record.h"
#include "testutil_prune.h"


static prune_config_t *cfg(const char *text)
{
	prune_config_t *c;
	sd_error_t e;
	int rc = prune_config_parse(text, strlen(text), "t.cfg", &A, &c, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	return c;
}

#define SAMPLE "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } } }"

static const Tensorflow__NodeDef *node(prune_graph_t *g, const char *name)
{
	ptrdiff_t i = prune_graph_find(g, name, strlen(name));
	ck_assert_msg(i >= 0, "node %s missing", name);
	return prune_graph_node(g, (size_t)i);
}

START_TEST(small_graph)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	const char *outs[] = {"out"};
	prune_result_t r = {0};
	sd_error_t e;
	int rc = prune_insert(g, cfg(SAMPLE), outs, 1, 1u << 20, NULL, &r, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	ck_assert_uint_eq(r.n_layers, 7);
	static const struct {
		const char *name;
		int action, reason, axis;
	} want[] = {
		{"mm1", PRUNE_ACTION_PRUNED, PRUNE_SKIP_NONE, 0},
		{"mm2", PRUNE_ACTION_PRUNED, PRUNE_SKIP_NONE, 0},
		{"mm3", PRUNE_ACTION_PRUNED, PRUNE_SKIP_NONE, 1},
		{"mm_short", PRUNE_ACTION_SKIPPED, PRUNE_SKIP_AXIS_TOO_SHORT, 0},
		{"mm_ta", PRUNE_ACTION_SKIPPED, PRUNE_SKIP_TRANSPOSE_A, 0},
		{"mm_ph", PRUNE_ACTION_SKIPPED, PRUNE_SKIP_NOT_CONSTANT, 0},
		{"mm_int", PRUNE_ACTION_SKIPPED, PRUNE_SKIP_DTYPE, 0},
	};
	for (size_t i = 0; i < 7; i++) {
		ck_assert_str_eq(r.layers[i].name, want[i].name);
		ck_assert_int_eq(r.layers[i].action, want[i].action);
		ck_assert_int_eq(r.layers[i].reason, want[i].reason);
		ck_assert_int_eq(r.layers[i].axis, want[i].axis);
	}
	ck_assert_uint_eq(r.pruned, 3);
	ck_assert_uint_eq(r.by_reason[PRUNE_SKIP_DTYPE], 1);
	ck_assert_uint_eq(r.weights, 8 * 6 + 6 * 5 + 7 * 5);
	ck_assert_str_eq(r.layers[1].weight, "w2");
	ck_assert_str_eq(r.layers[2].weight, "w3");

	/* Wiring: the layer reads the masked weight, which reads the original input. */
	ck_assert_str_eq(node(g, "mm2")->input[1], "mm2/sparsityd/masked_weight");
	const Tensorflow__NodeDef *mw = node(g, "mm2/sparsityd/masked_weight");
	ck_assert_str_eq(mw->op, "Mul");
	ck_assert_str_eq(mw->input[0], "w2/read");
	ck_assert_str_eq(node(g, "mm2/sparsityd/mask")->op, "VarHandleOp");
	ck_assert_str_eq(node(g, "mm2/sparsityd/mask_value")->op, "SelectV2");
	/* C=6 pads to 8, axis 0 of a rank-2 weight is transposed last */
	ck_assert_str_eq(node(g, "mm2/sparsityd/fresh/pad")->op, "Pad");
	ck_assert_str_eq(node(g, "mm2/sparsityd/fresh/untranspose")->op, "Transpose");
	/* C=8: no padding; axis 1 of mm3 (transpose_b) is already last */
	ck_assert_int_lt(prune_graph_find(g, "mm1/sparsityd/fresh/pad", 23), 0);
	ck_assert_int_lt(prune_graph_find(g, "mm3/sparsityd/fresh/transpose", 29), 0);
	ck_assert_int_lt(prune_graph_find(g, "mm1/sparsityd/step_mod", 22), 0);
	const Tensorflow__NodeDef *init = node(g, PRUNE_INIT_OP);
	ck_assert_uint_eq(init->n_input, 6);
	ck_assert_str_eq(init->input[0], "^mm1/sparsityd/mask/Assign");
	const Tensorflow__NodeDef *upd = node(g, PRUNE_UPDATE_OP);
	ck_assert_uint_eq(upd->n_input, 3);
	ck_assert_str_eq(upd->input[2], "^mm3/sparsityd/update_step");
	ck_assert_str_eq(node(g, "mm3/sparsityd/update_step")->input[2],
			 "^mm3/sparsityd/update_mask");
	/* Untouched layers keep their inputs. */
	ck_assert_str_eq(node(g, "mm_short")->input[1], "w4");
	ck_assert_uint_eq(r.nodes_out, prune_graph_count(g));

	/* The result saves, reloads and validates (every input names a node). */
	size_t len;
	char *txt = tu_save(g, PRUNE_FMT_AUTO, &len);
	prune_graph_t *g2;
	ck_assert_int_eq(prune_graph_load((uint8_t *)txt, len, "o", PRUNE_FMT_AUTO, 1u << 20, &A,
					  &g2, &e),
			 0);
	free(txt);

	/* The record lists the three pruned layers with their shapes. */
	char *rec = NULL;
	size_t rlen;
	FILE *f = open_memstream(&rec, &rlen);
	ck_assert_int_eq(prune_record_write(&r, &A, f, &e), 0);
	fclose(f);
	ck_assert_ptr_nonnull(strstr(rec, "name: \"mm3\""));
	ck_assert_ptr_nonnull(strstr(rec, "name: \"mask_shape\"\n      type: INTS\n      ints: 7\n"
					  "      ints: 5\n"));
	ck_assert_ptr_null(strstr(rec, "mm_short"));
	free(rec);

	/* Inserting into the output again is refused with a clear message. */
	prune_result_t r2 = {0};
	ck_assert_int_eq(prune_insert(g2, cfg(SAMPLE), outs, 1, 1u << 20, NULL, &r2, &e), SD_EMODEL);
	ck_assert_msg_has(e, "already carries sparsityd nodes");
}
END_TEST

START_TEST(update_freq_and_conv)
{
	prune_graph_t *g = tu_graph(&A, "graphs/conv.pbtxt");
	const char *outs[] = {"deconv"};
	prune_result_t r = {0};
	sd_error_t e;
	int rc = prune_insert(g,
			      cfg("prune_config { n_out_of_m_pruner { l1_selective_prune {"
				  " update_freq: 3 } } }"),
			      outs, 1, 1u << 20, NULL, &r, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	ck_assert_uint_eq(r.pruned, 2);
	ck_assert_int_eq(r.layers[0].axis, 2);
	ck_assert_int_eq(r.layers[1].axis, 3);
	ck_assert_int_eq(r.layers[1].dtype, TENSORFLOW__DATA_TYPE__DT_DOUBLE);
	ck_assert_str_eq(node(g, "conv/sparsityd/step_mod")->op, "FloorMod");
	ck_assert_str_eq(node(g, "conv/sparsityd/refresh")->input[0], "conv/sparsityd/step_mod");
	ck_assert_str_eq(node(g, "conv/sparsityd/fresh/abs")->device, "/device:CPU:0");
	/* deconv's axis is last (3), Cin_fwd = 6 pads to 8 */
	ck_assert_str_eq(node(g, "deconv/sparsityd/fresh/pad")->op, "Pad");
	ck_assert_int_lt(prune_graph_find(g, "deconv/sparsityd/fresh/transpose", 32), 0);
}
END_TEST

START_TEST(shared_weight)
{
	const char *text =
		"node { name: \"x\" op: \"Placeholder\" }\n"
		"node { name: \"w\" op: \"Const\" attr { key: \"value\" value { tensor {"
		" dtype: DT_FLOAT tensor_shape { dim { size: 4 } dim { size: 4 } } float_val: 1 } } }"
		" attr { key: \"dtype\" value { type: DT_FLOAT } } }\n"
		"node { name: \"a\" op: \"MatMul\" input: \"x\" input: \"w\" }\n"
		"node { name: \"b\" op: \"MatMul\" input: \"a\" input: \"w\" }\n";
	prune_graph_t *g;
	sd_error_t e;
	ck_assert_int_eq(prune_graph_load((uint8_t *)text, strlen(text), "s", PRUNE_FMT_AUTO,
					  1u << 20, &A, &g, &e),
			 0);
	const char *outs[] = {"b"};
	prune_layer_t *l;
	size_t n;
	ck_assert_int_eq(prune_layers_find(g, outs, 1, 1u << 20, &l, &n, &e), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(l[0].reason, PRUNE_SKIP_SHARED_WEIGHT);
	ck_assert_int_eq(l[1].reason, PRUNE_SKIP_SHARED_WEIGHT);
	/* Only b on the path: not shared any more. */
	const char *outs_a[] = {"a"};
	ck_assert_int_eq(prune_layers_find(g, outs_a, 1, 1u << 20, &l, &n, &e), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_int_eq(l[0].reason, PRUNE_SKIP_NONE);

	const char **o;
	size_t no;
	ck_assert_int_eq(prune_outputs_parse(g, " a:0 ,b", &o, &no, &e), 0);
	ck_assert_uint_eq(no, 2);
	ck_assert_str_eq(o[0], "a");
	ck_assert_int_eq(prune_outputs_parse(g, "a,zz", &o, &no, &e), SD_EMODEL);
	ck_assert_msg_has(e, "output 'zz' is not a node");
}
END_TEST

START_TEST(metagraph_collections)
{
	prune_graph_t *g0 = tu_graph(&A, "graphs/small.pbtxt");
	Tensorflow__MetaGraphDef meta = TENSORFLOW__META_GRAPH_DEF__INIT;
	meta.graph_def = prune_graph_def(g0);
	size_t len;
	uint8_t *mb = tu_pack(&A, &meta.base, &len);
	prune_graph_t *g;
	sd_error_t e;
	ck_assert_int_eq(prune_graph_load(mb, len, "m", PRUNE_FMT_METAGRAPH, 1u << 20, &A, &g, &e),
			 0);
	const char *outs[] = {"out"};
	prune_result_t r = {0};
	ck_assert_int_eq(prune_insert(g, cfg(SAMPLE), outs, 1, 1u << 20, NULL, &r, &e), 0);
	Tensorflow__MetaGraphDef *m = prune_graph_meta(g);
	ck_assert_uint_eq(m->n_collection_def, 2);
	ck_assert_str_eq(m->collection_def[0]->key, "variables");
	Tensorflow__CollectionDef__BytesList *bl = m->collection_def[0]->value->bytes_list;
	ck_assert_uint_eq(bl->n_value, 6);
	ProtobufCAllocator pa = pbarena_allocator(&A);
	Tensorflow__VariableDef *vd =
		tensorflow__variable_def__unpack(&pa, bl->value[0].len, bl->value[0].data);
	ck_assert_str_eq(vd->variable_name, "mm1/sparsityd/mask:0");
	ck_assert_str_eq(vd->initializer_name, "mm1/sparsityd/mask/Assign");
	ck_assert_str_eq(vd->snapshot_name, "mm1/sparsityd/mask/Read/ReadVariableOp:0");
	ck_assert(vd->is_resource);
	ck_assert(!vd->trainable);
	ck_assert_str_eq(m->collection_def[1]->key, "update_ops");
	ck_assert_str_eq(m->collection_def[1]->value->node_list->value[0], PRUNE_UPDATE_OP);

	/* Two "update_ops" entries: TensorFlow reads the last, so insert adds to that one. */
	Tensorflow__MetaGraphDef__CollectionDefEntry *dup[2];
	Tensorflow__CollectionDef cd[2];
	Tensorflow__CollectionDef__NodeList nl[2];
	char *names[2][1] = {{"first"}, {"second"}};
	for (int k = 0; k < 2; k++) {
		dup[k] = arena_alloc(&A, sizeof(*dup[k]));
		tensorflow__meta_graph_def__collection_def_entry__init(dup[k]);
		tensorflow__collection_def__init(&cd[k]);
		tensorflow__collection_def__node_list__init(&nl[k]);
		nl[k].n_value = 1;
		nl[k].value = names[k];
		cd[k].kind_case = TENSORFLOW__COLLECTION_DEF__KIND_NODE_LIST;
		cd[k].node_list = &nl[k];
		dup[k]->key = "update_ops";
		dup[k]->value = &cd[k];
	}
	meta.n_collection_def = 2;
	meta.collection_def = dup;
	mb = tu_pack(&A, &meta.base, &len);
	ck_assert_int_eq(prune_graph_load(mb, len, "m", PRUNE_FMT_METAGRAPH, 1u << 20, &A, &g, &e),
			 0);
	r = (prune_result_t){0};
	ck_assert_int_eq(prune_insert(g, cfg(SAMPLE), outs, 1, 1u << 20, NULL, &r, &e), 0);
	m = prune_graph_meta(g);
	ck_assert_uint_eq(m->collection_def[0]->value->node_list->n_value, 1);
	Tensorflow__CollectionDef__NodeList *last = m->collection_def[1]->value->node_list;
	ck_assert_uint_eq(last->n_value, 2);
	ck_assert_str_eq(last->value[0], "second");
	ck_assert_str_eq(last->value[1], PRUNE_UPDATE_OP);
}
END_TEST

/* A node already in a scope insert creates is refused up front, naming it; the same
 * scope under a layer that is not pruned is not insert's business. */
/* Keras mixed precision: the mask applies to the float32 value before the Cast. */
START_TEST(weight_through_cast)
{
	prune_graph_t *g = tu_graph(&A, "graphs/cast.pbtxt");
	const char *outs[] = {"out"};
	prune_result_t r = {0};
	sd_error_t e;
	int rc = prune_insert(g, cfg(SAMPLE), outs, 1, 1u << 20, NULL, &r, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	ck_assert_uint_eq(r.n_layers, 3);
	const prune_layer_t *mm = &r.layers[0], *mi = &r.layers[1], *m2 = &r.layers[2];
	ck_assert_str_eq(mm->name, "mm");
	ck_assert_int_eq(mm->action, PRUNE_ACTION_PRUNED);
	ck_assert_str_eq(mm->cast, "mm/Cast");
	ck_assert_str_eq(mm->weight, "w");
	ck_assert_str_eq(mm->weight_input, "w/read");
	ck_assert_int_eq(mm->dtype, TENSORFLOW__DATA_TYPE__DT_FLOAT);
	/* An int32 weight cast to float16 is not a float weight to prune. */
	ck_assert_int_eq(mi->reason, PRUNE_SKIP_DTYPE);
	ck_assert_str_eq(mi->cast, "mm_int/Cast");
	/* A Cast on the layer's data input is not its weight's. */
	ck_assert_int_eq(m2->action, PRUNE_ACTION_PRUNED);
	ck_assert_ptr_null(m2->cast);
	ck_assert_str_eq(node(g, "mm2")->input[1], "mm2/sparsityd/masked_weight");
	ck_assert_str_eq(node(g, "h32")->input[0], "mm_int");

	/* The layer still reads the Cast; the Cast reads the float32 masked weight. */
	ck_assert_str_eq(node(g, "mm")->input[1], "mm/Cast");
	ck_assert_str_eq(node(g, "mm/Cast")->input[0], "mm/sparsityd/masked_weight");
	const Tensorflow__NodeDef *mw = node(g, "mm/sparsityd/masked_weight");
	ck_assert_str_eq(mw->input[0], "w/read");
	ck_assert_int_eq(prune_node_attr(mw, "T")->type, TENSORFLOW__DATA_TYPE__DT_FLOAT);
	ck_assert_int_eq(prune_node_attr(node(g, "mm/sparsityd/mask"), "dtype")->type,
			 TENSORFLOW__DATA_TYPE__DT_FLOAT);
	ck_assert_str_eq(node(g, "mm/sparsityd/fresh/abs")->input[0], "w/read");

	/* The record names the Cast (only for the layer that has one) and reads back. */
	prune_record_entry_t *rec;
	size_t n;
	tu_record_roundtrip(&r, &rec, &n);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(rec[0].cast, "mm/Cast");
	ck_assert_str_eq(rec[0].weight_input, "w/read");
	ck_assert_ptr_null(rec[1].cast);

	/* Discovery on the inserted graph sees the masked weight behind the Cast. */
	prune_layer_t *l;
	ck_assert_int_eq(prune_layers_find(g, outs, 1, 1u << 20, &l, &n, &e), 0);
	ck_assert(l[0].masked);
	ck_assert_str_eq(l[0].cast, "mm/Cast");
	ck_assert_str_eq(l[0].weight_input, "w/read");
	ck_assert_str_eq(l[0].weight, "w");
	ck_assert(l[2].masked && !l[2].cast);
}
END_TEST

START_TEST(scope_collisions)
{
	static const struct {
		const char *name, *want;
	} cases[] = {
		{"mm1/sparsityd/leftover", "layer 'mm1' already carries sparsityd nodes"},
		{"sparsityd/const/k", "in the scope 'sparsityd/'"},
		{"x/y/sparsityd/z/mm3/sparsityd/q", NULL}, /* neither prefix is a layer */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
		sd_error_t e;
		prune_node_spec_t spec = {.name = cases[i].name, .op = "NoOp"};
		ck_assert_ptr_nonnull(prune_graph_add(g, &spec, &e));
		const char *outs[] = {"out"};
		prune_result_t r = {0};
		int rc = prune_insert(g, cfg(SAMPLE), outs, 1, 1u << 20, NULL, &r, &e);
		if (!cases[i].want) {
			ck_assert_msg(rc == 0, "%s", e.msg);
			/* nodes added without a lookup are found afterwards */
			ck_assert_int_ge(prune_graph_find(g, "mm1/sparsityd/mask", 18), 0);
			ck_assert_int_ge(prune_graph_find(g, cases[i].name, strlen(cases[i].name)),
					 0);
			continue;
		}
		ck_assert_int_eq(rc, SD_EMODEL);
		ck_assert_msg_has(e, cases[i].want);
		ck_assert_msg_has(e, cases[i].name);
	}
	/* A name of 90,000 "q/sparsityd/": the check used to look up every prefix that
	 * ends before one (16 s); then the same name ending under a pruned layer's scope. */
	static const char rep[] = "q/" PRUNE_SCOPE "/";
	size_t n = 90000, rl = sizeof(rep) - 1;
	char *name = arena_alloc(&A, n * rl + 32);
	for (size_t k = 0; k < n; k++)
		memcpy(name + k * rl, rep, rl);
	for (int bad = 0; bad < 2; bad++) {
		strcpy(name + n * rl, bad ? "x" : "z");
		prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
		sd_error_t e;
		prune_node_spec_t spec = {.name = name, .op = "NoOp"};
		ck_assert_ptr_nonnull(prune_graph_add(g, &spec, &e));
		if (bad) {
			prune_node_spec_t leftover = {.name = "mm1/sparsityd/q", .op = "NoOp"};
			ck_assert_ptr_nonnull(prune_graph_add(g, &leftover, &e));
		}
		const char *outs[] = {"out"};
		prune_result_t r = {0};
		int rc = prune_insert(g, cfg(SAMPLE), outs, 1, 1u << 20, NULL, &r, &e);
		if (bad) {
			ck_assert_int_eq(rc, SD_EMODEL);
			ck_assert_msg_has(e, "layer 'mm1' already carries sparsityd nodes");
		} else {
			ck_assert_msg(rc == 0, "%s", e.msg);
		}
	}
}
END_TEST

/* A weight dimension past int32 (the mask's shape constants) is refused, not wrapped. */
START_TEST(dimension_past_int32)
{
	static const char text[] =
		"node { name: 'x' op: 'Placeholder' attr { key: 'dtype' value { type: DT_FLOAT } } }\n"
		"node { name: 'w' op: 'VariableV2' attr { key: 'dtype' value { type: DT_FLOAT } }\n"
		"  attr { key: 'shape' value { shape { dim { size: 2147483650 } dim { size: 1 } } } } }\n"
		"node { name: 'w/read' op: 'Identity' input: 'w'\n"
		"  attr { key: 'T' value { type: DT_FLOAT } } }\n"
		"node { name: 'out' op: 'MatMul' input: 'x' input: 'w/read'\n"
		"  attr { key: 'T' value { type: DT_FLOAT } } }\n";
	prune_graph_t *g;
	sd_error_t e;
	ck_assert_msg(prune_graph_load((const uint8_t *)text, sizeof(text) - 1, "big.pbtxt",
				       PRUNE_FMT_PBTXT, (size_t)1 << 32, &A, &g, &e) == 0,
		      "%s", e.msg);
	const char *outs[] = {"out"};
	prune_result_t r = {0};
	ck_assert_int_eq(prune_insert(g, cfg(SAMPLE), outs, 1, (size_t)1 << 32, NULL, &r, &e),
			 SD_ETOOBIG);
	ck_assert_msg_has(e, "layer 'out': dimension 0 of its weight is 2147483650");
}
END_TEST

int main(void)
{
	const TTest *const tests[] = {
		small_graph,
		update_freq_and_conv,
		shared_weight,
		metagraph_collections,
		weight_through_cast,
		scope_collisions,
		dimension_past_int32,
		NULL,
	};
	const tu_case_t cases[] = {{"insert", tests, TU_ARENA, .timeout = 60}, {NULL}};
	return tu_main("insert", cases);
}
