/*
 * Unit tests for prune_config: every config error of SPEC section 5 with its
 * file:line:col message, and the priority of overrides over the global config.
 */
#include <check.h>
#include <string.h>

#include "prune/config.h"
#include "prune/layers.h"
#include "testutil_prune.h"


static int parse(const char *text, prune_config_t **c, sd_error_t *e)
{
	sd_err_clear(e);
	return prune_config_parse(text, strlen(text), "t.cfg", &A, c, e);
}

static void expect(const char *text, const char *needle, int line, int col)
{
	prune_config_t *c;
	sd_error_t e;
	ck_assert_int_eq(parse(text, &c, &e), SD_ECONFIG);
	ck_assert_msg_has(e, needle);
	ck_assert_msg(e.line == line && e.col == col, "'%s': expected %d:%d", e.msg, line, col);
	ck_assert_msg(strncmp(e.msg, "t.cfg:", 6) == 0, "no file in '%s'", e.msg);
}

#define NM "n_out_of_m_pruner { l1_selective_prune { update_freq: 2 } }"

START_TEST(static_errors)
{
	expect("prune_config {\n  filter_pruner { }\n}", "filter_pruner is not supported", 2, 3);
	expect("prune_config { " NM "\n filter_pruner {} }", "both filter_pruner and", 2, 2);
	expect("prune_config { n_out_of_m_pruner { l1_selective_prune {\n"
	       "  n_out_of_m_type: M4N1 } } }",
	       "n_out_of_m_type M4N1 is not supported", 2, 3);
	expect("retrain_data_quant_config { }", "quantization field", 1, 1);
	expect("# quant\nbatch_num: 3", "'batch_num' is a quantization field", 2, 1);
	expect("prune_config { " NM " }\nquant_skip_layers: \"a\"", "quantization", 2, 1);
	expect("prune_config { " NM " }\n  bogus: 1", "unknown field", 2, 3);
	expect("override_layer_configs { layer_name: \"a\" prune_config { " NM " } }\n"
	       "override_layer_configs { layer_name: \"a\" prune_config { " NM " } }",
	       "more than one override_layer_configs", 2, 26);
	expect("override_layer_types { layer_type: \"Conv2D\" prune_config { " NM " } }\n"
	       "override_layer_types { layer_type: \"Conv2D\" prune_config { " NM " } }",
	       "more than one override_layer_types", 2, 24);
	expect("skip_layer_types: \"Conv3D\"", "'Conv3D' in skip_layer_types", 1, 1);
	expect("override_layer_types {\n layer_type: \"Dense\" prune_config { " NM " } }",
	       "not a layer type", 2, 2);
	expect("override_layer_configs { layer_name: \"x\" }", "has no prune_config", 1, 26);
	expect("prune_config { }", "needs n_out_of_m_pruner", 1, 1);
}
END_TEST

static prune_layer_t *small_layers(size_t *n)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	const char *outs[] = {"out"};
	prune_layer_t *l;
	sd_error_t e;
	ck_assert_int_eq(prune_layers_find(g, outs, 1, 1u << 20, &l, n, &e), 0);
	return l;
}

static int apply(const char *text, prune_layer_t *l, size_t n, sd_error_t *e)
{
	prune_config_t *c;
	ck_assert_int_eq(parse(text, &c, e), 0);
	return prune_config_apply(c, l, n, e);
}

START_TEST(names_must_be_layers)
{
	size_t n;
	prune_layer_t *l = small_layers(&n);
	sd_error_t e;
	ck_assert_int_eq(apply("prune_config { " NM " }\nskip_layers: \"nope\"", l, n, &e),
			 SD_ECONFIG);
	ck_assert_msg_has(e, "'nope' in skip_layers is not a layer of this graph");
	ck_assert_msg_has(e, "mm1, mm2, mm3");
	ck_assert_int_eq(e.line, 2);
	ck_assert_int_eq(apply("override_layer_configs {\n layer_name: \"unused\" prune_config {"
			       " " NM " } }",
			       l, n, &e),
			 SD_ECONFIG);
	ck_assert_msg_has(e, "'unused' in layer_name is not a layer");
	ck_assert_int_eq(e.line, 2);
	ck_assert_int_eq(apply("regular_prune_skip_layers: [\"mm1\", \"zz\"]", l, n, &e),
			 SD_ECONFIG);
	ck_assert_msg_has(e, "'zz' in regular_prune_skip_layers");
}
END_TEST

START_TEST(priority_and_skips)
{
	size_t n;
	prune_layer_t *l = small_layers(&n);
	sd_error_t e;
	ck_assert_int_eq(
		apply("prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 1 } } }\n"
		      "override_layer_types { layer_type: \"MatMul\" prune_config {"
		      " n_out_of_m_pruner { l1_selective_prune { update_freq: 5 } } } }\n"
		      "override_layer_configs { layer_name: \"mm2\" prune_config {"
		      " n_out_of_m_pruner { l1_selective_prune { update_freq: 9 } } } }\n"
		      "regular_prune_skip_layers: \"mm3\"\n",
		      l, n, &e),
		0);
	ck_assert_str_eq(l[0].name, "mm1");
	ck_assert_int_eq(l[0].action, PRUNE_ACTION_PRUNED);
	ck_assert_uint_eq(l[0].update_freq, 5);
	ck_assert_uint_eq(l[1].update_freq, 9);
	ck_assert_int_eq(l[2].reason, PRUNE_SKIP_REGULAR_SKIP_LAYERS);
	/* structural reasons stay */
	ck_assert_int_eq(l[3].reason, PRUNE_SKIP_AXIS_TOO_SHORT);
}
END_TEST

START_TEST(no_layer_to_prune)
{
	size_t n;
	prune_layer_t *l = small_layers(&n);
	sd_error_t e;
	ck_assert_int_eq(apply("prune_config { " NM " }\nskip_layer_types: \"MatMul\"", l, n, &e),
			 SD_ENOLAYER);
	ck_assert_msg_has(e, "no layer to prune");
	ck_assert_int_eq(apply("skip_layers: \"mm1\"", l, n, &e), SD_ENOLAYER);
}
END_TEST

START_TEST(defaults)
{
	size_t n;
	prune_layer_t *l = small_layers(&n);
	sd_error_t e;
	ck_assert_int_eq(apply("# sample\nprune_config { n_out_of_m_pruner {"
			       " l1_selective_prune { } } }",
			       l, n, &e),
			 0);
	ck_assert_uint_eq(l[0].update_freq, 0);
	ck_assert_int_eq(l[0].action, PRUNE_ACTION_PRUNED);
}
END_TEST

/*
 * The big inputs below are sized so that checking every name against every other (or
 * every layer against every name), as the parser once did, takes seconds to minutes.
 */
#define MANY 50000

/* A config of lines printed by line(i, f) for i in [0, n), then tail; in A. */
static char *many_lines(size_t n, void (*line)(FILE *f, size_t i), const char *tail)
{
	char *buf = NULL;
	size_t len;
	FILE *f = open_memstream(&buf, &len);
	ck_assert_ptr_nonnull(f);
	for (size_t i = 0; i < n; i++)
		line(f, i);
	fputs(tail, f);
	fclose(f);
	char *text = arena_strndup(&A, buf, len);
	free(buf);
	ck_assert_ptr_nonnull(text);
	return text;
}

static void override_line(FILE *f, size_t i)
{
	fprintf(f, "override_layer_configs { layer_name: \"L%zu\" prune_config { " NM " } }\n",
		i);
}

START_TEST(many_overrides_repeat_at_the_end)
{
	expect(many_lines(MANY, override_line,
			  "override_layer_configs { layer_name: \"L0\" prune_config { " NM " } }"),
	       "layer 'L0' has more than one override_layer_configs entry", MANY + 1, 26);
	/* Of two repeats, the first in the file is the error, not the earliest name. */
	expect(many_lines(MANY, override_line,
			  "override_layer_configs { layer_name: \"L4321\" prune_config { " NM " } }\n"
			  "override_layer_configs { layer_name: \"L0\" prune_config { " NM " } }"),
	       "layer 'L4321' has more than one override_layer_configs entry", MANY + 1, 26);
	/* A repeat after an entry failing another check is never reached. */
	expect(many_lines(MANY, override_line,
			  "override_layer_configs { layer_name: \"x\" }\n"
			  "override_layer_configs { layer_name: \"L0\" prune_config { " NM " } }"),
	       "override for layer 'x' has no prune_config", MANY + 1, 26);
	prune_config_t *c;
	sd_error_t e;
	ck_assert_msg(parse(many_lines(MANY, override_line, ""), &c, &e) == 0, "%s", e.msg);
}
END_TEST

/* Every fourth layer of MANY: overridden, in skip_layers, in regular_prune_skip_layers,
 * or left to the global prune_config. */
static void mixed_line(FILE *f, size_t i)
{
	switch (i % 4) {
	case 0: override_line(f, i); break;
	case 1: fprintf(f, "skip_layers: \"L%zu\"\n", i); break;
	case 2: fprintf(f, "regular_prune_skip_layers: \"L%zu\"\n", i); break;
	default: break;
	}
}

static prune_layer_t *many_layers(void)
{
	prune_layer_t *l = arena_calloc(&A, MANY, sizeof(*l));
	ck_assert_ptr_nonnull(l);
	for (size_t i = 0; i < MANY; i++) {
		l[i].name = arena_sprintf(&A, "L%zu", i);
		l[i].type = "MatMul";
		l[i].rank = 2;
		l[i].shape[0] = 8;
		l[i].shape[1] = 16;
	}
	return l;
}

START_TEST(many_names_applied_to_many_layers)
{
	prune_layer_t *l = many_layers();
	sd_error_t e;
	int rc = apply(many_lines(MANY, mixed_line,
				  "prune_config { n_out_of_m_pruner { l1_selective_prune {"
				  " update_freq: 3 } } }\n"),
		       l, MANY, &e);
	ck_assert_msg(rc == 0, "%s", e.msg);
	for (size_t i = 0; i < MANY; i++) {
		static const prune_skip_t why[] = {PRUNE_SKIP_NONE, PRUNE_SKIP_SKIP_LAYERS,
						   PRUNE_SKIP_REGULAR_SKIP_LAYERS, PRUNE_SKIP_NONE};
		ck_assert_int_eq(l[i].reason, why[i % 4]);
		if (why[i % 4] == PRUNE_SKIP_NONE) {
			ck_assert_int_eq(l[i].action, PRUNE_ACTION_PRUNED);
			ck_assert_uint_eq(l[i].update_freq, i % 4 ? 3 : 2);
		}
	}
	/* A name that is no layer, listed last: the first such name in file order. Each
	 * fourth layer has no line. */
	const int lines = MANY - MANY / 4;
	l = many_layers();
	ck_assert_int_eq(apply(many_lines(MANY, mixed_line,
					  "skip_layers: \"nope\"\nskip_layers: \"nada\"\n"),
			       l, MANY, &e),
			 SD_ECONFIG);
	ck_assert_msg_has(e, "'nope' in skip_layers is not a layer of this graph");
	ck_assert_int_eq(e.line, lines + 1);
	l = many_layers();
	ck_assert_int_eq(apply(many_lines(MANY, mixed_line,
					  "override_layer_configs {\n layer_name: \"nope\""
					  " prune_config { " NM " } }\n"),
			       l, MANY, &e),
			 SD_ECONFIG);
	ck_assert_msg_has(e, "'nope' in layer_name is not a layer of this graph");
	ck_assert_int_eq(e.line, lines + 2);
}
END_TEST

int main(void)
{
	const TTest *const tests[] = {
		static_errors,
		names_must_be_layers,
		priority_and_skips,
		no_layer_to_prune,
		defaults,
		many_overrides_repeat_at_the_end,
		many_names_applied_to_many_layers,
		NULL,
	};
	const tu_case_t cases[] = {{"config", tests, TU_ARENA, .timeout = 60}, {NULL}};
	return tu_main("config", cases);
}
