/*
 * fuzz_pbtext: the protobuf text-format reader (and writer) as the product uses it.
 *
 * Input: byte 0 selects (modulo 6), bytes 1.. are the text.
 *   0  prune_config_parse (the AMCT retrain config, with its field hook), and on success
 *      prune_config_apply to a fixed set of layers
 *   1  prune_record_read (the AMCT record)
 *   2  pbtext_parse of a GraphDef (.pbtxt models), then a write / re-read round trip
 *   3  the same for a MetaGraphDef
 *   4  the same for AMCTRetrainConfig (the codec alone, without the config's hook)
 *   5  the same for InnerScaleOffsetRecord
 * Round trip: text -> message -> text1 -> message -> text2 must give text1 == text2,
 * and the writer's output must always parse (pbtext.h: "the writer emits text that
 * protoc's parser reads back to the same message").
 */
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "proto/amct.pb-c.h"
#include "proto/pbtext.h"
#include "proto/tf_graph.pb-c.h"
#include "prune/config.h"
#include "prune/record.h"

/* Layers as layer discovery would report them for a small model. */
static const prune_layer_t layer_template[] = {
	{.name = "fc/MatMul", .type = "MatMul", .rank = 2, .shape = {8, 16}, .axis = 0},
	{.name = "conv1/Conv2D", .type = "Conv2D", .rank = 4, .shape = {3, 3, 16, 32},
	 .axis = 2},
	{.name = "deconv", .type = "Conv2DBackpropInput", .rank = 4, .shape = {2, 2, 3, 8},
	 .axis = 3},
	{.name = "mm_t", .type = "MatMul", .rank = 2, .shape = {4, 4}, .axis = -1,
	 .action = PRUNE_ACTION_SKIPPED, .reason = PRUNE_SKIP_TRANSPOSE_A},
	{.name = "short", .type = "MatMul", .rank = 2, .shape = {3, 4}, .axis = 0,
	 .action = PRUNE_ACTION_SKIPPED, .reason = PRUNE_SKIP_AXIS_TOO_SHORT},
};
#define N_LAYERS (sizeof(layer_template) / sizeof(layer_template[0]))

static void config(const char *text, size_t len, arena_t *a)
{
	sd_error_t e;
	sd_err_clear(&e);
	prune_config_t *cfg;
	int rc = prune_config_parse(text, len, "fuzz.cfg", a, &cfg, &e);
	fuzz_expect("prune_config_parse", rc, &e, 2, SD_ECONFIG, SD_ENOMEM);
	if (rc)
		return;
	prune_layer_t layers[N_LAYERS];
	memcpy(layers, layer_template, sizeof(layers));
	sd_err_clear(&e);
	rc = prune_config_apply(cfg, layers, N_LAYERS, &e);
	fuzz_expect("prune_config_apply", rc, &e, 2, SD_ECONFIG, SD_ENOLAYER);
	for (size_t i = 0; rc == 0 && i < N_LAYERS; i++)
		FUZZ_ASSERT(layers[i].action != PRUNE_ACTION_PRUNED ||
				    layer_template[i].reason == PRUNE_SKIP_NONE,
			    "layer %zu skipped for '%s' was pruned", i,
			    prune_skip_name(layer_template[i].reason));
}

static void record(const char *text, size_t len, arena_t *a)
{
	sd_error_t e;
	sd_err_clear(&e);
	prune_record_entry_t *ents;
	size_t n;
	int rc = prune_record_read(text, len, "fuzz.record", a, &ents, &n, &e);
	fuzz_expect("prune_record_read", rc, &e, 2, SD_ERECORD, SD_ENOMEM);
	if (rc == 0)
		FUZZ_ASSERT(n > 0 && ents[0].name, "record read returned no entries");
}

/* Parses text as desc; NULL on a (documented) parse error. */
static ProtobufCMessage *parse(const ProtobufCMessageDescriptor *desc, const char *text,
			       size_t len, arena_t *a, const char *what)
{
	pbtext_opts_t o = {.filename = what, .err_code = SD_EMODEL};
	ProtobufCMessage *m = NULL;
	sd_error_t e;
	sd_err_clear(&e);
	int rc = pbtext_parse(desc, text, len, a, &o, &m, &e);
	fuzz_expect("pbtext_parse", rc, &e, 2, SD_EMODEL, SD_ENOMEM);
	if (rc == 0)
		FUZZ_ASSERT(m && m->descriptor == desc, "pbtext_parse gave no message");
	if (rc)
		FUZZ_ASSERT(e.line >= 0 && e.col >= 0, "negative error position %d:%d", e.line,
			    e.col);
	return rc ? NULL : m;
}

static void write_text(const ProtobufCMessage *m, fuzz_mem_t *out)
{
	sd_error_t e;
	sd_err_clear(&e);
	FILE *f = fuzz_mem_open(out);
	int rc = pbtext_write(m, f, &e);
	fuzz_mem_close(out);
	FUZZ_ASSERT(rc == 0, "pbtext_write to memory failed: %s", e.msg);
}

static void round_trip(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
		       arena_t *a)
{
	ProtobufCMessage *m = parse(desc, text, len, a, "fuzz.pbtxt");
	if (!m)
		return;
	fuzz_mem_t t1, t2;
	write_text(m, &t1);
	ProtobufCMessage *m2 = parse(desc, t1.buf, t1.len, a, "written.pbtxt");
	if (!m2) {
		fprintf(stderr, "fuzz: pbtext_write output does not parse back:\n%.*s\n",
			(int)(t1.len > 4000 ? 4000 : t1.len), t1.buf);
		abort();
	}
	write_text(m2, &t2);
	if (t1.len != t2.len || memcmp(t1.buf, t2.buf, t1.len) != 0) {
		fprintf(stderr,
			"fuzz: text round trip differs (%zu vs %zu bytes)\n--- first\n%.*s\n--- "
			"second\n%.*s\n",
			t1.len, t2.len, (int)(t1.len > 4000 ? 4000 : t1.len), t1.buf,
			(int)(t2.len > 4000 ? 4000 : t2.len), t2.buf);
		abort();
	}
	free(t1.buf);
	free(t2.buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;
	arena_t a;
	arena_init(&a, fuzz_arena_limit());
	switch (data[0] % 6) {
	case 0: config(text, len, &a); break;
	case 1: record(text, len, &a); break;
	case 2: round_trip(&tensorflow__graph_def__descriptor, text, len, &a); break;
	case 3: round_trip(&tensorflow__meta_graph_def__descriptor, text, len, &a); break;
	case 4: round_trip(&amct__amctretrain_config__descriptor, text, len, &a); break;
	default: round_trip(&amct__inner_scale_offset_record__descriptor, text, len, &a); break;
	}
	arena_deinit(&a);
	return 0;
}
