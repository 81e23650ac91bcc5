/*
 * Unit tests for export's graph surgery, the one-shot prune stage and check: insert,
 * "freeze" the way convert_variables_to_constants does (variables become Consts, reads
 * become Identity), export, and compare with the 2:4 kernel applied directly.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prune/attr.h"
#include "prune/checker.h"
#include "prune/config.h"
#include "prune/export.h"
#include "prune/insert.h"
#include "prune/layers.h"
#include "prune/mask.h"
#include "prune/oneshot.h"
#include "prune/record.h"
#include "testutil_prune.h"


static prune_config_t *cfg(const char *text)
{
	prune_config_t *c;
	sd_error_t e;
	ck_assert_int_eq(prune_config_parse(text, strlen(text), "t.cfg", &A, &c, &e), 0);
	return c;
}

#define FREQ(n) "prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: " #n " } } }"

static Tensorflow__NodeDef *node(prune_graph_t *g, const char *name)
{
	ptrdiff_t i = prune_graph_find(g, name, strlen(name));
	return i >= 0 ? prune_graph_node(g, (size_t)i) : NULL;
}

/* Decoded copy of a Const's value. */
static prune_tensor_t value(prune_graph_t *g, const char *name)
{
	Tensorflow__NodeDef *n = node(g, name);
	ck_assert_msg(n != NULL, "no node %s", name);
	prune_tensor_t t;
	sd_error_t e;
	ck_assert_int_eq(prune_tensor_read(prune_node_attr(n, "value")->tensor, 1u << 20, name, &A,
					   &t, &e),
			 0);
	void *copy = arena_alloc(&A, t.n * prune_dtype_size(t.dtype) + 1);
	memcpy(copy, t.data, t.n * prune_dtype_size(t.dtype));
	t.data = copy;
	return t;
}

/* Replaces n's attributes with kv (what freezing does to a node). */
static void set_attrs(Tensorflow__NodeDef *n, const prune_attr_kv_t *kv, size_t k)
{
	Tensorflow__NodeDef__AttrEntry **arr = arena_calloc(&A, k, sizeof(*arr));
	ck_assert_ptr_nonnull(arr);
	for (size_t i = 0; i < k; i++) {
		arr[i] = arena_alloc(&A, sizeof(*arr[i]));
		ck_assert_ptr_nonnull(arr[i]);
		tensorflow__node_def__attr_entry__init(arr[i]);
		arr[i]->key = (char *)kv[i].key;
		arr[i]->value = kv[i].value;
	}
	n->attr = arr;
	n->n_attr = k;
}

/* What convert_variables_to_constants does to insert's variables: mask -> Const
 * (all ones unless mask_vals), step -> int64 Const, ReadVariableOp -> Identity. */
static void freeze(prune_graph_t *g, int64_t step, const float *mask_vals)
{
	for (size_t i = 0; i < prune_graph_count(g); i++) {
		Tensorflow__NodeDef *n = prune_graph_node(g, i);
		if (strcmp(n->op, "ReadVariableOp") == 0) {
			n->op = "Identity";
			set_attrs(n, (const prune_attr_kv_t[]){{"T", prune_node_attr(n, "dtype")}}, 1);
		} else if (strcmp(n->op, "VarHandleOp") == 0) {
			Tensorflow__AttrValue *dt = prune_node_attr(n, "dtype");
			Tensorflow__TensorShapeProto *shp = prune_node_attr(n, "shape")->shape;
			int64_t dims[4];
			for (size_t d = 0; d < shp->n_dim; d++)
				dims[d] = shp->dim[d]->size;
			Tensorflow__AttrValue *v;
			if (dt->type == TENSORFLOW__DATA_TYPE__DT_INT64) {
				v = prune_attr_i64_scalar(&A, step);
			} else {
				v = prune_attr_splat(&A, dt->type, 1.0, dims, (int)shp->n_dim);
				if (mask_vals) {
					Tensorflow__TensorProto *t = v->tensor;
					size_t cnt = 1;
					for (size_t d = 0; d < shp->n_dim; d++)
						cnt *= (size_t)dims[d];
					t->float_val = arena_alloc(&A, cnt * sizeof(float));
					memcpy(t->float_val, mask_vals, cnt * sizeof(float));
					t->n_float_val = cnt;
				}
			}
			n->op = "Const";
			set_attrs(n, (const prune_attr_kv_t[]){{"dtype", dt}, {"value", v}}, 2);
		}
	}
}

/* Inserts into a test graph whose output is "out", returns the record entries (through
 * a real record file). */
static prune_graph_t *inserted_into(const char *file, const char *config,
				    prune_record_entry_t **rec, size_t *n)
{
	prune_graph_t *g = tu_graph(&A, file);
	const char *outs[] = {"out"};
	prune_result_t r = {0};
	sd_error_t e;
	int rc = prune_insert(g, cfg(config), outs, 1, 1u << 20, NULL, &r, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	tu_record_roundtrip(&r, rec, n);
	return g;
}

static prune_graph_t *inserted(const char *config, prune_record_entry_t **rec, size_t *n)
{
	return inserted_into("graphs/chain.pbtxt", config, rec, n);
}

static int export(prune_graph_t *g, prune_record_entry_t *rec, size_t n, prune_result_t *r,
		  sd_error_t *e)
{
	const char *outs[] = {"out", "peek"};
	memset(r, 0, sizeof(*r));
	sd_err_clear(e);
	return prune_export(g, rec, n, outs, 2, 1u << 20, NULL, r, e);
}

/* The weight w with the kernel's 2:4 mask applied along axis. */
static prune_tensor_t expected(prune_tensor_t w, int axis)
{
	uint8_t *keep = arena_alloc(&A, w.n), *bits = arena_alloc(&A, w.n / 8 + 1);
	void *out = arena_alloc(&A, w.n * prune_dtype_size(w.dtype) + 1);
	sd_error_t e;
	prune_mask_counts_t c;
	ck_assert_int_eq(prune_mask_2of4(&w, axis, keep, "t", &e), 0);
	prune_mask_bits(&w, keep, bits, &c);
	prune_mask_apply_bits(w.dtype, w.data, out, bits, 0, w.n);
	w.data = out;
	return w;
}

/* g as a reader of the stage's output sees it: saved in binary (weights masked on
 * their way out) and loaded again. */
static prune_graph_t *reloaded(prune_graph_t *g)
{
	size_t len;
	char *saved = tu_save(g, PRUNE_FMT_GRAPHDEF, &len);
	uint8_t *buf = arena_alloc(&A, len + 1);
	memcpy(buf, saved, len);
	free(saved);
	prune_graph_t *r;
	sd_error_t e;
	ck_assert_int_eq(prune_graph_load(buf, len, "saved.pb", PRUNE_FMT_GRAPHDEF, 1u << 20, &A,
					  &r, &e),
			 0);
	return r;
}

static void assert_same(prune_tensor_t a, prune_tensor_t b)
{
	ck_assert_uint_eq(a.n, b.n);
	ck_assert(memcmp(a.data, b.data, a.n * prune_dtype_size(a.dtype)) == 0);
}

START_TEST(export_fresh_mask_restores_the_original_graph)
{
	prune_graph_t *orig = tu_graph(&A, "graphs/chain.pbtxt");
	prune_tensor_t wa = value(orig, "wa"), wb = value(orig, "wb");
	prune_record_entry_t *rec;
	size_t n;
	prune_graph_t *g = inserted(FREQ(0), &rec, &n);
	ck_assert_uint_eq(n, 2);
	/* Record order differs from graph order: export must not care. */
	prune_record_entry_t swapped[2] = {rec[1], rec[0]};
	prune_result_t r;
	sd_error_t e;
	freeze(g, 0, NULL);
	int rc = export(g, swapped, 2, &r, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	/* Node set: the original graph's plus the copy of the shared weight. */
	ck_assert_uint_eq(prune_graph_count(g), prune_graph_count(orig) + 1);
	for (size_t i = 0; i < prune_graph_count(orig); i++)
		ck_assert_ptr_nonnull(node(g, prune_graph_node(orig, i)->name));
	/* mm_a: Identity chain, exclusive -> modified in place, input restored. */
	ck_assert_str_eq(node(g, "mm_a")->input[1], "wa/id2");
	prune_graph_t *out = reloaded(g);
	assert_same(value(out, "wa"), expected(wa, 0));
	/* mm_b: wb is shared with "peek" -> untouched; the layer reads a sparse copy. */
	ck_assert_str_eq(node(g, "mm_b")->input[1], "mm_b/weight_2of4");
	assert_same(value(out, "wb"), wb);
	assert_same(value(out, "mm_b/weight_2of4"), expected(wb, 1));
	/* A text save writes the masked values too. */
	size_t tlen;
	char *text = tu_save(g, PRUNE_FMT_PBTXT, &tlen);
	char *tcopy = arena_strndup(&A, text, tlen);
	free(text);
	prune_graph_t *tg;
	ck_assert_int_eq(prune_graph_load((const uint8_t *)tcopy, tlen, "saved.pbtxt",
					  PRUNE_FMT_PBTXT, 1u << 20, &A, &tg, &e),
			 0);
	assert_same(value(tg, "wa"), expected(wa, 0));
	assert_same(value(tg, "mm_b/weight_2of4"), expected(wb, 1));
	assert_same(value(tg, "wb"), wb);
	/* The in-memory form, once materialised, is the same as the written one. */
	ck_assert_int_eq(prune_graph_materialize(g, &e), 0);
	assert_same(value(g, "wa"), expected(wa, 0));
	assert_same(value(g, "mm_b/weight_2of4"), expected(wb, 1));
	ck_assert_str_eq(r.layers[0].name, "mm_b");
	ck_assert(r.layers[0].is_2of4 && r.layers[1].is_2of4);
	ck_assert_uint_eq(r.weights, 30 + 20);
	ck_assert_uint_gt(r.weights_zeroed, 0);
}
END_TEST

START_TEST(export_keeps_a_user_node_named_like_an_inserted_one)
{
	prune_graph_t *orig = tu_graph(&A, "graphs/user_scope.pbtxt");
	prune_record_entry_t *rec;
	size_t n;
	prune_graph_t *g = inserted_into("graphs/user_scope.pbtxt", FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	prune_result_t r;
	sd_error_t e;
	int rc = export(g, rec, n, &r, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	ck_assert_ptr_nonnull(node(g, "x/sparsityd/id1"));
	ck_assert_str_eq(node(g, "mm_a")->input[1], "wa/id2");
	ck_assert_uint_eq(prune_graph_count(g), prune_graph_count(orig) + 1);
}
END_TEST

START_TEST(export_stored_mask)
{
	prune_record_entry_t *rec;
	size_t n;
	prune_graph_t *g = inserted(FREQ(3), &rec, &n);
	/* step 5 % 3 != 0: the frozen mask variable is what the graph uses. */
	float mask[30];
	for (int i = 0; i < 30; i++)
		mask[i] = (i % 3) == 0;
	prune_tensor_t wa = value(g, "wa");
	freeze(g, 5, mask);
	prune_result_t r;
	sd_error_t e;
	ck_assert_int_eq(export(g, rec, n, &r, &e), 0);
	prune_tensor_t got = value(reloaded(g), "wa");
	for (int i = 0; i < 30; i++)
		ck_assert_float_eq(((float *)got.data)[i], ((float *)wa.data)[i] * mask[i]);
	ck_assert_ptr_nonnull(strstr(r.layers[0].detail, "stored mask"));
}
END_TEST

START_TEST(export_errors)
{
	prune_record_entry_t *rec;
	size_t n;
	prune_result_t r;
	sd_error_t e;

	/* A model without the insertion. */
	prune_graph_t *plain = tu_graph(&A, "graphs/chain.pbtxt");
	inserted(FREQ(0), &rec, &n);
	ck_assert_int_eq(export(plain, rec, n, &r, &e), SD_EMODEL);
	ck_assert_msg_has(e, "does not carry the insertion");

	/* A recorded layer the model does not have. */
	prune_graph_t *g = inserted(FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	rec[0].name = "ghost";
	ck_assert_int_eq(export(g, rec, n, &r, &e), SD_ERECORD);
	ck_assert_msg_has(e, "'ghost', which is not in the model");

	/* A layer carrying a mask the record leaves out. */
	g = inserted(FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	ck_assert_int_eq(export(g, rec, 1, &r, &e), SD_ERECORD);
	ck_assert_msg_has(e, "does not list");
	ck_assert_str_eq(e.node, "mm_b");

	/* A record whose shape disagrees. */
	g = inserted(FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	rec[0].shape[0] = 7;
	ck_assert_int_eq(export(g, rec, n, &r, &e), SD_ERECORD);
	ck_assert_msg_has(e, "different shape");

	/* Not frozen: the mask is still a variable. */
	g = inserted(FREQ(0), &rec, &n);
	ck_assert_int_eq(export(g, rec, n, &r, &e), SD_EMODEL);
	ck_assert_msg_has(e, "not a constant");

	/* NaN in a weight. */
	g = inserted(FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	Tensorflow__TensorProto *t = prune_node_attr(node(g, "wa"), "value")->tensor;
	t->float_val[3] = NAN;
	ck_assert_int_eq(export(g, rec, n, &r, &e), SD_EMODEL);
	ck_assert_msg_has(e, "NaN");
	ck_assert_str_eq(e.node, "mm_a");

	/* NaN on the stored-mask path (step 5 of update_freq 3) is refused too. */
	float ones[30];
	for (int i = 0; i < 30; i++)
		ones[i] = 1.0f;
	g = inserted(FREQ(3), &rec, &n);
	freeze(g, 5, ones);
	prune_node_attr(node(g, "wa"), "value")->tensor->float_val[7] = NAN;
	ck_assert_int_eq(export(g, rec, n, &r, &e), SD_EMODEL);
	ck_assert_msg_has(e, "NaN at flat index 7");

	/* A mask that is not 0/1. */
	float half[30];
	for (int i = 0; i < 30; i++)
		half[i] = 0.5f;
	g = inserted(FREQ(3), &rec, &n);
	freeze(g, 1, half);
	ck_assert_int_eq(export(g, rec, n, &r, &e), SD_EMODEL);
	ck_assert_msg_has(e, "other than 0 and 1");

	/* A record whose prune_axis is not the layer's (MatMul without transpose_b: 0). */
	g = inserted(FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	rec[0].axis = 1;
	ck_assert_int_eq(export(g, rec, n, &r, &e), SD_ERECORD);
	ck_assert_msg_has(e, "the record's prune_axis is 1 but the MatMul's is 0");
	ck_assert_str_eq(e.node, rec[0].name);

	/* A record whose update_freq is not the graph's: at step 5 the graph uses the
	 * stored mask (5 % 3), the record would have the fresh one exported (5 % 5). */
	static const struct {
		const char *cfg;
		uint32_t freq;
		const char *want;
	} freqs[] = {
		{FREQ(3), 5, "the record's update_freq is 5 but the graph's is 3"},
		{FREQ(3), 0, "the record's update_freq is 0 but the graph's is 3"},
		{FREQ(0), 4, "the record's update_freq is 4 but the graph's is 0"},
	};
	for (size_t i = 0; i < sizeof(freqs) / sizeof(freqs[0]); i++) {
		g = inserted(freqs[i].cfg, &rec, &n);
		freeze(g, 5, ones);
		rec[1].update_freq = freqs[i].freq;
		ck_assert_int_eq(export(g, rec, n, &r, &e), SD_ERECORD);
		ck_assert_msg_has(e, freqs[i].want);
		ck_assert_str_eq(e.node, rec[1].name);
	}
}
END_TEST

/* The prune stage in one step: begin, and end with no save between. */
static int one_step(prune_graph_t *g, const prune_config_t *c, const char *const *outs,
		       size_t n_outs, size_t max_elems, const prune_progress_t *progress,
		       prune_result_t *res, sd_error_t *e)
{
	prune_oneshot_t *o;
	int rc = prune_oneshot_begin(g, c, outs, n_outs, max_elems, progress, res, &o, e);
	return rc ? rc : prune_oneshot_end(o, res, e);
}

START_TEST(prune_equals_export_at_step_0)
{
	prune_record_entry_t *rec;
	size_t n;
	prune_graph_t *g = inserted(FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	prune_result_t r;
	sd_error_t e;
	ck_assert_int_eq(export(g, rec, n, &r, &e), 0);

	prune_graph_t *p = tu_graph(&A, "graphs/chain.pbtxt");
	const char *outs[] = {"out", "peek"};
	prune_result_t pr = {0};
	int rc = one_step(p, cfg(FREQ(0)), outs, 2, 1u << 20, NULL, &pr, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	ck_assert_uint_eq(pr.pruned, 2);
	p = reloaded(p);
	g = reloaded(g);
	assert_same(value(p, "wa"), value(g, "wa"));
	assert_same(value(p, "mm_b/weight_2of4"), value(g, "mm_b/weight_2of4"));
	ck_assert_uint_eq(pr.weights_zeroed, r.weights_zeroed);

	/* check agrees: both layers now 2:4; the original graph's are not. */
	prune_result_t cr = {0};
	ck_assert_int_eq(prune_check(p, NULL, 0, 1u << 20, NULL, &cr, &e), 0);
	ck_assert_uint_eq(cr.checked, 2);
	ck_assert_uint_eq(cr.layers_2of4, 2);
	prune_graph_t *o = tu_graph(&A, "graphs/chain.pbtxt");
	ck_assert_int_eq(prune_check(o, NULL, 0, 1u << 20, NULL, &cr, &e), 0);
	ck_assert_uint_eq(cr.layers_2of4, 0);
	ck_assert_int_eq(cr.layers[1].reason, PRUNE_SKIP_NONE);

	/* prune refuses an inserted graph, check reports it as masked. */
	prune_graph_t *m = inserted(FREQ(0), &rec, &n);
	ck_assert_int_eq(prune_check(m, NULL, 0, 1u << 20, NULL, &cr, &e), 0);
	ck_assert(cr.layers[0].masked);
	ck_assert_int_eq(cr.layers[0].action, PRUNE_ACTION_CHECKED);
	memset(&pr, 0, sizeof(pr));
	ck_assert_int_eq(one_step(m, cfg(FREQ(0)), outs, 2, 1u << 20, NULL, &pr, &e), SD_EMODEL);
	ck_assert_msg_has(e, "use export");
}
END_TEST

/* Keras mixed precision (cast.pbtxt): Const float32 -> Identity -> Cast -> layer. */
START_TEST(weight_through_cast)
{
	prune_graph_t *orig = tu_graph(&A, "graphs/cast.pbtxt");
	prune_tensor_t w = value(orig, "w"), w2 = value(orig, "w2");
	prune_record_entry_t *rec;
	size_t n;
	prune_graph_t *g = inserted_into("graphs/cast.pbtxt", FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	const char *outs[] = {"out"};
	prune_result_t r = {0};
	sd_error_t e;
	int rc = prune_export(g, rec, n, outs, 1, 1u << 20, NULL, &r, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	/* Exactly the original nodes, the Cast pointed back at the weight, which holds
	 * weight * mask in float32. */
	ck_assert_uint_eq(prune_graph_count(g), prune_graph_count(orig));
	for (size_t i = 0; i < prune_graph_count(orig); i++)
		ck_assert_ptr_nonnull(node(g, prune_graph_node(orig, i)->name));
	ck_assert_str_eq(node(g, "mm/Cast")->input[0], "w/read");
	ck_assert_str_eq(node(g, "mm")->input[1], "mm/Cast");
	ck_assert_str_eq(node(g, "mm2")->input[1], "w2");
	ck_assert(r.layers[0].is_2of4 && r.layers[1].is_2of4);
	prune_graph_t *out = reloaded(g);
	assert_same(value(out, "w"), expected(w, 0));
	assert_same(value(out, "w2"), expected(w2, 0));

	/* prune on the frozen original: the same weights; check reads them through the Cast. */
	prune_graph_t *p = tu_graph(&A, "graphs/cast.pbtxt");
	prune_result_t pr = {0};
	ck_assert_int_eq(one_step(p, cfg(FREQ(0)), outs, 1, 1u << 20, NULL, &pr, &e), 0);
	ck_assert_uint_eq(pr.pruned, 2);
	ck_assert_str_eq(node(p, "mm/Cast")->input[0], "w/read");
	p = reloaded(p);
	assert_same(value(p, "w"), value(out, "w"));
	assert_same(value(p, "w2"), value(out, "w2"));
	prune_result_t cr = {0};
	ck_assert_int_eq(prune_check(p, outs, 1, 1u << 20, NULL, &cr, &e), 0);
	ck_assert_uint_eq(cr.checked, 2);
	ck_assert_uint_eq(cr.layers_2of4, 2);
	ck_assert_ptr_nonnull(strstr(cr.layers[0].detail, "read through Cast 'mm/Cast'"));

	/* A weight something else reads too: the Cast gets the sparse copy. */
	p = tu_graph(&A, "graphs/cast.pbtxt");
	prune_node_spec_t peek = {.name = "peek", .op = "Identity",
				  .inputs = (const char *const[]){"w"}, .n_inputs = 1};
	ck_assert_ptr_nonnull(prune_graph_add(p, &peek, &e));
	const char *outs2[] = {"out", "peek"};
	memset(&pr, 0, sizeof(pr));
	ck_assert_int_eq(one_step(p, cfg(FREQ(0)), outs2, 2, 1u << 20, NULL, &pr, &e), 0);
	ck_assert_str_eq(node(p, "mm/Cast")->input[0], "mm/weight_2of4");
	ck_assert_str_eq(node(p, "mm")->input[1], "mm/Cast");
	p = reloaded(p);
	assert_same(value(p, "w"), w);
	assert_same(value(p, "mm/weight_2of4"), expected(w, 0));

	/* A record that does not name the Cast the model has is refused. */
	g = inserted_into("graphs/cast.pbtxt", FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	rec[0].cast = NULL;
	memset(&r, 0, sizeof(r));
	ck_assert_int_eq(prune_export(g, rec, n, outs, 1, 1u << 20, NULL, &r, &e), SD_ERECORD);
	ck_assert_msg_has(e, "the Cast its weight goes through is 'mm/Cast' in the model but "
			     "'(none)' in the record");
	ck_assert_str_eq(e.node, "mm");

	/* A mask behind a Cast that the record leaves out is found too. */
	g = inserted_into("graphs/cast.pbtxt", FREQ(0), &rec, &n);
	freeze(g, 0, NULL);
	ck_assert_str_eq(rec[1].name, "mm2");
	ck_assert_int_eq(prune_export(g, rec + 1, 1, outs, 1, 1u << 20, NULL, &r, &e), SD_ERECORD);
	ck_assert_msg_has(e, "does not list");
	ck_assert_str_eq(e.node, "mm");
}
END_TEST

START_TEST(record_errors)
{
	prune_record_entry_t *rec;
	size_t n;
	sd_error_t e;
	const char *no_axis = "prune_record { selective_prune { name: \"a\" attr { name: "
			      "\"mask_shape\" type: INTS ints: 4 ints: 4 } } }";
	ck_assert_int_eq(prune_record_read(no_axis, strlen(no_axis), "r", &A, &rec, &n, &e),
			 SD_ERECORD);
	ck_assert_msg_has(e, "has no 'prune_axis' attr");
	ck_assert_int_eq(prune_record_read("", 0, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_msg_has(e, "no pruned layer");
	const char *bad = "prune_record { selective_prune { name: 3 } }";
	ck_assert_int_eq(prune_record_read(bad, strlen(bad), "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_int_eq(e.line, 1);
	const char *int_cast = "prune_record { selective_prune { name: \"a\""
			       " attr { name: \"mask_shape\" type: INTS ints: 4 ints: 4 }"
			       " attr { name: \"prune_axis\" type: INT i: 0 }"
			       " attr { name: \"update_freq\" type: INT i: 0 }"
			       " attr { name: \"layer_type\" type: STRING s: \"MatMul\" }"
			       " attr { name: \"weight_input\" type: STRING s: \"w\" }"
			       " attr { name: \"cast\" type: INT i: 3 } } }";
	ck_assert_int_eq(prune_record_read(int_cast, strlen(int_cast), "r", &A, &rec, &n, &e),
			 SD_ERECORD);
	ck_assert_msg_has(e, "attr 'cast' has no value of the expected type");
#define LAYER(name, type, scope)                                                            \
	" prune_record { selective_prune { name: \"" name "\""                                 \
	" attr { name: \"mask_shape\" type: INTS ints: 4 ints: 4 }"                            \
	" attr { name: \"prune_axis\" type: INT i: 0 }"                                        \
	" attr { name: \"update_freq\" type: INT i: 0 }"                                       \
	" attr { name: \"layer_type\" type: STRING s: \"" type "\" }"                          \
	" attr { name: \"weight_input\" type: STRING s: \"w\" }" scope " } }"
	/* A NUL inside a string attr used to cut it: "MatMul\0x" passed for "MatMul". */
	const char nul[] = LAYER("a", "MatMul\\000x", "");
	ck_assert_int_eq(prune_record_read(nul, sizeof(nul) - 1, "r", &A, &rec, &n, &e),
			 SD_ERECORD);
	ck_assert_msg_has(e, "layer 'a' attr 'layer_type' holds a NUL byte");
	/* Two layers, one scope: both masks would name the same variables. */
	const char same[] = LAYER("a", "MatMul", " attr { name: \"scope\" type: STRING s: \"s\" }")
		LAYER("b", "MatMul", " attr { name: \"scope\" type: STRING s: \"s\" }");
	ck_assert_int_eq(prune_record_read(same, sizeof(same) - 1, "r", &A, &rec, &n, &e),
			 SD_ERECORD);
	ck_assert_msg_has(e, "layers 'a' and 'b' are recorded with the same scope 's'");
	const char twice[] = LAYER("a", "MatMul", "") LAYER("a", "MatMul", "");
	ck_assert_int_eq(prune_record_read(twice, sizeof(twice) - 1, "r", &A, &rec, &n, &e),
			 SD_ERECORD);
	ck_assert_msg_has(e, "layer 'a' is recorded twice");
	const char apart[] = LAYER("a", "MatMul", "") LAYER("b", "MatMul", "");
	ck_assert_msg(prune_record_read(apart, sizeof(apart) - 1, "r", &A, &rec, &n, &e) == 0,
		      "%s", e.msg);
	ck_assert_uint_eq(n, 2);
#undef LAYER
}
END_TEST

/* Sized so that checking each entry against every one before it, as the reader once
 * did, takes tens of seconds. */
#define MANY_RECORDED 50000

/* A record of n layers L<i>, then tail; in A. */
static const char *many_recorded(size_t n, const char *tail, size_t *len)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	ck_assert_ptr_nonnull(f);
	for (size_t i = 0; i < n; i++)
		fprintf(f,
			"prune_record { selective_prune { name: \"L%zu\""
			" attr { name: \"mask_shape\" type: INTS ints: 4 ints: 4 }"
			" attr { name: \"prune_axis\" type: INT i: 0 }"
			" attr { name: \"update_freq\" type: INT i: 0 }"
			" attr { name: \"layer_type\" type: STRING s: \"MatMul\" }"
			" attr { name: \"weight_input\" type: STRING s: \"w\" } } }\n",
			i);
	fputs(tail, f);
	fclose(f);
	char *text = arena_strndup(&A, buf, *len);
	free(buf);
	ck_assert_ptr_nonnull(text);
	return text;
}

#define ENTRY(name, scope)                                                                     \
	"prune_record { selective_prune { name: \"" name "\""                                  \
	" attr { name: \"mask_shape\" type: INTS ints: 4 ints: 4 }"                            \
	" attr { name: \"prune_axis\" type: INT i: 0 }"                                        \
	" attr { name: \"update_freq\" type: INT i: 0 }"                                       \
	" attr { name: \"layer_type\" type: STRING s: \"MatMul\" }"                            \
	" attr { name: \"weight_input\" type: STRING s: \"w\" }"                               \
	" attr { name: \"scope\" type: STRING s: \"" scope "\" } } }\n"

START_TEST(record_repeats_among_many)
{
	prune_record_entry_t *rec;
	size_t n, len;
	sd_error_t e;
	const char *t = many_recorded(MANY_RECORDED, "", &len);
	ck_assert_msg(prune_record_read(t, len, "r", &A, &rec, &n, &e) == 0, "%s", e.msg);
	ck_assert_uint_eq(n, MANY_RECORDED);
	ck_assert_str_eq(rec[MANY_RECORDED - 1].scope, "L49999/sparsityd");

	t = many_recorded(MANY_RECORDED, ENTRY("L0", "x"), &len);
	ck_assert_int_eq(prune_record_read(t, len, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_str_eq(e.msg, "r: layer 'L0' is recorded twice");
	ck_assert_str_eq(e.node, "L0");

	t = many_recorded(MANY_RECORDED, ENTRY("M", "L777/sparsityd"), &len);
	ck_assert_int_eq(prune_record_read(t, len, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_str_eq(e.msg, "r: layers 'L777' and 'M' are recorded with the same scope "
				"'L777/sparsityd'");
	ck_assert_str_eq(e.node, "M");

	/* The first entry repeating an earlier one is the error; on that entry, the
	 * earlier entry it repeats first, a name before a scope. (Order only: small.) */
	t = many_recorded(20, ENTRY("M", "L9/sparsityd") ENTRY("L3", "x"), &len);
	ck_assert_int_eq(prune_record_read(t, len, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_msg_has(e, "layers 'L9' and 'M' are recorded with the same scope");
	t = many_recorded(20, ENTRY("L9", "L3/sparsityd"), &len);
	ck_assert_int_eq(prune_record_read(t, len, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_msg_has(e, "layers 'L3' and 'L9' are recorded with the same scope");
	t = many_recorded(20, ENTRY("L3", "L9/sparsityd"), &len);
	ck_assert_int_eq(prune_record_read(t, len, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_msg_has(e, "layer 'L3' is recorded twice");

	/* A repeat before a bad entry is the error; after it, never reached. */
#define BAD "prune_record { selective_prune { name: \"b\" } }\n"
	t = many_recorded(20, ENTRY("L5", "x") BAD, &len);
	ck_assert_int_eq(prune_record_read(t, len, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_msg_has(e, "layer 'L5' is recorded twice");
	t = many_recorded(20, BAD ENTRY("L5", "x"), &len);
	ck_assert_int_eq(prune_record_read(t, len, "r", &A, &rec, &n, &e), SD_ERECORD);
	ck_assert_msg_has(e, "layer 'b' has no 'mask_shape' attr");
}
END_TEST
#undef BAD
#undef ENTRY

/* prune with the graph saved between begin and end while its masks are computed (as
 * the CLI and the daemon run it) writes the same bytes and counts as begin then end
 * with no save between; the save waits for each weight's mask. */
START_TEST(prune_saved_while_masks_run)
{
	const char *outs[] = {"out", "peek"};
	sd_error_t e;
	prune_graph_t *one = tu_graph(&A, "graphs/chain.pbtxt");
	prune_result_t r1 = {0};
	ck_assert_int_eq(one_step(one, cfg(FREQ(0)), outs, 2, 1u << 20, NULL, &r1, &e), 0);
	size_t len1, len2;
	char *want = tu_save(one, PRUNE_FMT_GRAPHDEF, &len1);

	prune_graph_t *two = tu_graph(&A, "graphs/chain.pbtxt");
	prune_result_t r2 = {0};
	prune_oneshot_t *o;
	ck_assert_int_eq(prune_oneshot_begin(two, cfg(FREQ(0)), outs, 2, 1u << 20, NULL, &r2,
					     &o, &e),
			 0);
	ck_assert_uint_eq(r2.pruned, 2); /* the layers are known at once */
	char *got = tu_save(two, PRUNE_FMT_GRAPHDEF, &len2);
	ck_assert_int_eq(prune_oneshot_end(o, &r2, &e), 0);
	ck_assert_uint_eq(len2, len1);
	ck_assert(memcmp(got, want, len1) == 0);
	ck_assert_uint_eq(r2.weights_zeroed, r1.weights_zeroed);
	ck_assert_uint_gt(r2.weights_zeroed, 0);
	for (size_t i = 0; i < r1.n_layers; i++) {
		ck_assert_uint_eq(r2.layers[i].zeros, r1.layers[i].zeros);
		ck_assert_uint_eq(r2.layers[i].zeroed, r1.layers[i].zeroed);
	}
	free(got);
	/* after the end, a save of the same graph waits for nothing and writes the same */
	got = tu_save(two, PRUNE_FMT_GRAPHDEF, &len2);
	ck_assert(len2 == len1 && memcmp(got, want, len1) == 0);
	free(got);
	free(want);
}
END_TEST

int main(void)
{
	const TTest *const tests[] = {
		export_fresh_mask_restores_the_original_graph,
		export_keeps_a_user_node_named_like_an_inserted_one,
		export_stored_mask,
		export_errors,
		prune_equals_export_at_step_0,
		prune_saved_while_masks_run,
		weight_through_cast,
		record_errors,
		record_repeats_among_many,
		NULL,
	};
	const tu_case_t cases[] = {{"export", tests, TU_ARENA, .timeout = 60}, {NULL}};
	return tu_main("export", cases);
}
