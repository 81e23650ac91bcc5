/*
 * pbwire: the encoder must produce exactly protobuf-c's bytes for every message we
 * have (proto2 and proto3 presence, oneofs, packed and unpacked repeated fields,
 * negative varints, unknown fields, nested size tables, block boundaries), refuse an
 * encoding over 2 GiB before writing anything, and report a full disk.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "proto/amct.pb-c.h"
#include "proto/pbstrip.h"
#include "proto/pbtext.h"
#include "proto/pbwire.h"
#include "prune/attr.h"
#include "prune/graph.h"
#include "testutil_prune.h"

/* pbwire_write(m) and protobuf_c_message_pack(m) agree byte for byte. */
static void same_as_protobuf_c(const ProtobufCMessage *m)
{
	size_t want_len;
	uint8_t *want = tu_pack(&A, m, &want_len);
	char *got = NULL;
	size_t got_len = 0;
	FILE *f = open_memstream(&got, &got_len);
	sd_error_t e;
	ck_assert_int_eq(pbwire_write(m, NULL, 0, f, &e), 0);
	fclose(f);
	ck_assert_uint_eq(got_len, want_len);
	if (memcmp(got, want, want_len) != 0) {
		size_t i = 0;
		while ((uint8_t)got[i] == want[i])
			i++;
		ck_abort_msg("%s: byte %zu of %zu differs", m->descriptor->name, i, want_len);
	}
	free(got);
}

static ProtobufCMessage *parse(const ProtobufCMessageDescriptor *d, const char *rel)
{
	size_t len;
	char *text = tu_read(&A, rel, &len);
	ProtobufCMessage *m;
	sd_error_t e;
	pbtext_opts_t o = {.filename = rel, .err_code = SD_ECONFIG};
	ck_assert_msg(pbtext_parse(d, text, len, &A, &o, &m, &e) == 0, "%s", e.msg);
	return m;
}

START_TEST(text_fixtures)
{
	same_as_protobuf_c(parse(&tensorflow__graph_def__descriptor, "pbtext/graph.pbtxt"));
	same_as_protobuf_c(parse(&tensorflow__meta_graph_def__descriptor,
				 "pbtext/meta_graph.pbtxt"));
	same_as_protobuf_c(parse(&amct__amctretrain_config__descriptor,
				 "pbtext/retrain_config.pbtxt"));
	same_as_protobuf_c(parse(&amct__inner_scale_offset_record__descriptor,
				 "pbtext/record.pbtxt"));
	same_as_protobuf_c(parse(&amct__amctretrain_config__descriptor, "configs/sample.cfg"));
	static const char *const graphs[] = {"graphs/small.pbtxt", "graphs/conv.pbtxt",
					     "graphs/chain.pbtxt"};
	for (size_t i = 0; i < sizeof(graphs) / sizeof(graphs[0]); i++)
		same_as_protobuf_c(&prune_graph_def(tu_graph(&A, graphs[i]))->base);
}
END_TEST

/* Every scalar kind at its edges: negative int32/enum (ten-byte varints), proto3
 * zeros (skipped) next to oneof zeros (written), -0.0, packed and unpacked arrays. */
START_TEST(edge_values)
{
	static int32_t ints[] = {0, -1, 1, INT32_MIN, INT32_MAX, 127, 128};
	static int64_t longs[] = {0, -1, INT64_MIN, INT64_MAX, 300};
	static float floats[] = {0.0f, -0.0f, 1.5f};
	static double doubles[] = {-0.0, 2.25};
	static protobuf_c_boolean bools[] = {1, 0, 1};
	static ProtobufCBinaryData strs[] = {{0, NULL}, {3, (uint8_t *)"a\0b"}};
	Tensorflow__TensorProto t = TENSORFLOW__TENSOR_PROTO__INIT;
	t.dtype = -3; /* an enum value the schema does not name, negative */
	t.version_number = -7;
	t.int_val = ints;
	t.n_int_val = sizeof(ints) / sizeof(ints[0]);
	t.int64_val = longs;
	t.n_int64_val = sizeof(longs) / sizeof(longs[0]);
	t.float_val = floats;
	t.n_float_val = 3;
	t.double_val = doubles;
	t.n_double_val = 2;
	t.bool_val = bools;
	t.n_bool_val = 3;
	t.string_val = strs;
	t.n_string_val = 2;
	t.tensor_shape = prune_shape_new(&A, (const int64_t[]){-1, 0, 5}, 3);
	same_as_protobuf_c(&t.base);

	/* oneof members hold zero values yet are written; proto3 zeros are not. */
	Tensorflow__AttrValue *vals[] = {
		prune_attr_int(&A, 0), prune_attr_int(&A, -9), prune_attr_bool(&A, false),
		prune_attr_str(&A, ""), prune_attr_type(&A, 0), prune_attr_empty_list(&A),
	};
	Tensorflow__AttrValue f0;
	tensorflow__attr_value__init(&f0);
	f0.value_case = TENSORFLOW__ATTR_VALUE__VALUE_F;
	f0.f = -0.0f;
	Tensorflow__AttrValue unset;
	tensorflow__attr_value__init(&unset);
	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
		same_as_protobuf_c(&vals[i]->base);
	same_as_protobuf_c(&f0.base);
	same_as_protobuf_c(&unset.base);

	/* A list value: packed int64/float/bool/type next to repeated bytes and messages. */
	Tensorflow__AttrValue *l = prune_attr_empty_list(&A);
	l->list->i = longs;
	l->list->n_i = 5;
	l->list->f = floats;
	l->list->n_f = 3;
	l->list->b = bools;
	l->list->n_b = 3;
	l->list->s = strs;
	l->list->n_s = 2;
	Tensorflow__TensorProto *tp[] = {&t, &t};
	l->list->tensor = tp;
	l->list->n_tensor = 2;
	same_as_protobuf_c(&l->base);

	/* proto2: an optional set to its default is written, an unset one is not. */
	Amct__L1SelectivePrune p = AMCT__L1_SELECTIVE_PRUNE__INIT;
	same_as_protobuf_c(&p.base);
	p.has_update_freq = 1;
	same_as_protobuf_c(&p.base);
	p.update_freq = 4000000000u;
	same_as_protobuf_c(&p.base);
}
END_TEST

/* Fields the schema does not declare, at the top level and inside a node. */
START_TEST(unknown_fields)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	Tensorflow__GraphDef *gd = prune_graph_def(g);
	static uint8_t varint[] = {0x96, 0x01}, bytes[] = {0x03, 'x', 'y', 'z'},
		       fixed[] = {1, 2, 3, 4};
	ProtobufCMessageUnknownField u[] = {
		{.tag = 99, .wire_type = PROTOBUF_C_WIRE_TYPE_VARINT, .len = 2, .data = varint},
		{.tag = 1000, .wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, .len = 4,
		 .data = bytes},
		{.tag = 7, .wire_type = PROTOBUF_C_WIRE_TYPE_32BIT, .len = 4, .data = fixed},
	};
	gd->base.unknown_fields = u;
	gd->base.n_unknown_fields = 3;
	gd->node[1]->base.unknown_fields = u + 1;
	gd->node[1]->base.n_unknown_fields = 2;
	same_as_protobuf_c(&gd->base);
}
END_TEST

/* Enough nodes and a large enough weight to cross the 1 MiB block several times,
 * including a bytes field written around the block. */
START_TEST(block_boundaries)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	const char *ins[] = {"x", "^out"};
	for (int i = 0; i < 30000; i++) {
		Tensorflow__AttrValue *v = prune_attr_i32(&A, (const int32_t[]){i, -i, 7},
							  (const int64_t[]){3}, 1);
		const prune_attr_kv_t kv[] = {{"dtype", prune_attr_type(&A, 3)}, {"value", v}};
		prune_node_spec_t s = {.name = arena_sprintf(&A, "n/%d", i), .op = "Const",
				       .inputs = ins, .n_inputs = (size_t)(i % 3), .attrs = kv,
				       .n_attrs = 2};
		ck_assert(prune_graph_add(g, &s, NULL) != NULL);
		if (i % 10000 == 5000) {
			/* a weight of 3 MiB + 3 bytes: written around the block, unaligned */
			size_t n = (3u << 20) + 3;
			uint8_t *w = arena_alloc(&A, n);
			for (size_t k = 0; k < n; k++)
				w[k] = (uint8_t)(k * 31 + (size_t)i);
			v->tensor->tensor_content = (ProtobufCBinaryData){n, w};
		}
	}
	same_as_protobuf_c(&prune_graph_def(g)->base);
}
END_TEST

START_TEST(refuses_over_2gib)
{
	static uint8_t byte;
	Tensorflow__TensorProto t = TENSORFLOW__TENSOR_PROTO__INIT;
	t.tensor_content = (ProtobufCBinaryData){(size_t)INT32_MAX + 1, &byte};
	Tensorflow__AttrValue v;
	tensorflow__attr_value__init(&v);
	v.value_case = TENSORFLOW__ATTR_VALUE__VALUE_TENSOR;
	v.tensor = &t;
	char *got = NULL;
	size_t got_len = 0;
	FILE *f = open_memstream(&got, &got_len);
	sd_error_t e;
	ck_assert_int_eq(pbwire_write(&v.base, NULL, 0, f, &e), SD_ETOOBIG);
	ck_assert_msg_has(e, "2 GiB");
	fclose(f);
	ck_assert_uint_eq(got_len, 0); /* measured first: nothing was written */
	free(got);
}
END_TEST

START_TEST(full_disk)
{
	FILE *f = fopen("/dev/full", "wb");
	ck_assert_ptr_nonnull(f);
	sd_error_t e;
	ck_assert_int_eq(pbwire_write(&prune_graph_def(tu_graph(&A, "graphs/conv.pbtxt"))->base,
				      NULL, 0, f, &e),
			 SD_ENOSPACE);
	ck_assert_msg_has(e, "writing the GraphDef failed");
	fclose(f);
}
END_TEST

/* A filled weight: its bytes are the source's XOR key (a mask applied on the way out,
 * in miniature). */
typedef struct xor_fill {
	const uint8_t *src;
	uint8_t key;
} xor_fill_t;

static void fill_xor(const void *ud, uint8_t *out, size_t off, size_t n)
{
	const xor_fill_t *x = ud;
	for (size_t i = 0; i < n; i++)
		out[i] = x->src[off + i] ^ x->key;
}

/* A graph of `count` Const weights of the given sizes, every other one filled (fills[]
 * and xs[] receive them); want is the same graph with the filled bytes in place,
 * packed by protobuf-c. */
static uint8_t *filled_graph(const size_t *sizes, int count, pbwire_fill_t *fills,
			     xor_fill_t *xs, size_t *n_fills, prune_graph_t **out,
			     size_t *want_len)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	ProtobufCBinaryData **fields = arena_alloc(&A, (size_t)count * sizeof(*fields));
	uint8_t **done = arena_alloc(&A, (size_t)count * sizeof(*done));
	*n_fills = 0;
	for (int i = 0; i < count; i++) {
		Tensorflow__AttrValue *v = prune_attr_i32(&A, (const int32_t[]){1}, NULL, 0);
		const prune_attr_kv_t kv[] = {{"dtype", prune_attr_type(&A, 3)}, {"value", v}};
		prune_node_spec_t sp = {.name = arena_sprintf(&A, "w/%d", i), .op = "Const",
					.attrs = kv, .n_attrs = 2};
		ck_assert(prune_graph_add(g, &sp, NULL) != NULL);
		uint8_t *w = arena_alloc(&A, sizes[i] ? sizes[i] : 1);
		done[i] = arena_alloc(&A, sizes[i] ? sizes[i] : 1);
		for (size_t k = 0; k < sizes[i]; k++)
			w[k] = (uint8_t)(k * 131 + (size_t)i * 7 + (k >> 20));
		v->tensor->tensor_content = (ProtobufCBinaryData){sizes[i], sizes[i] ? w : NULL};
		fields[i] = &v->tensor->tensor_content;
		memcpy(done[i], w, sizes[i]);
		if (i % 2 == 0) {
			xs[*n_fills] = (xor_fill_t){w, (uint8_t)(0x5a + i)};
			for (size_t k = 0; k < sizes[i]; k++)
				done[i][k] ^= xs[*n_fills].key;
			fills[*n_fills] = (pbwire_fill_t){fields[i], fill_xor, &xs[*n_fills]};
			(*n_fills)++;
		}
	}
	/* protobuf-c sees the filled bytes; pbwire sees the sources and the fills */
	for (int i = 0; i < count; i++)
		fields[i]->data = sizes[i] ? done[i] : NULL;
	uint8_t *want = tu_pack(&A, &prune_graph_def(g)->base, want_len);
	for (int i = 0; i < count; i++)
		if (i % 2 == 0)
			fields[i]->data = (uint8_t *)(uintptr_t)xs[i / 2].src;
	*out = g;
	return want;
}

/* Filled fields come out as protobuf-c would write their bytes, whether the writer
 * fills them itself (a few MB) or helper threads produce them ahead (over 8 MiB: the
 * pieces of several weights, unaligned sizes, an empty one). */
START_TEST(fills)
{
	static const size_t small[] = {5, 1048576, 3, 0, 1048577, 2 << 20};
	static const size_t large[] = {(3u << 20) + 3, 7, 1048575, 100, 0, 1,
				       (5u << 20) + 17, 9, 2u << 20, 11, 1048576, 4};
	const size_t *sets[] = {small, large};
	const int counts[] = {6, 12};
	for (int k = 0; k < 2; k++) {
		pbwire_fill_t fl[6];
		xor_fill_t xs[6];
		size_t n_fills, want_len;
		prune_graph_t *g;
		uint8_t *want = filled_graph(sets[k], counts[k], fl, xs, &n_fills, &g, &want_len);
		char *got = NULL;
		size_t got_len = 0;
		FILE *f = open_memstream(&got, &got_len);
		sd_error_t e;
		ck_assert_int_eq(pbwire_write(&prune_graph_def(g)->base, fl, n_fills, f, &e), 0);
		fclose(f);
		ck_assert_uint_eq(got_len, want_len);
		ck_assert_msg(memcmp(got, want, want_len) == 0, "set %d differs", k);
		free(got);
	}
}
END_TEST

/* The disk fills while helpers are producing pieces ahead: the write fails with the
 * cause, and the helpers, blocked on slots the writer no longer frees, are stopped. */
START_TEST(fills_full_disk)
{
	static const size_t large[] = {(3u << 20) + 3, 7, 6u << 20, 100, 5u << 20, 1};
	pbwire_fill_t fl[3];
	xor_fill_t xs[3];
	size_t n_fills, want_len;
	prune_graph_t *g;
	filled_graph(large, 6, fl, xs, &n_fills, &g, &want_len);
	FILE *f = fopen("/dev/full", "wb");
	ck_assert_ptr_nonnull(f);
	sd_error_t e;
	ck_assert_int_eq(pbwire_write(&prune_graph_def(g)->base, fl, n_fills, f, &e),
			 SD_ENOSPACE);
	ck_assert_msg_has(e, "No space left");
	fclose(f);
}
END_TEST

/* Field number 0 does not exist: a file of zeros is malformed at its first byte, not a
 * run of empty fields to walk (and copy) to its end before protobuf-c refuses it. */
START_TEST(field_zero_is_malformed)
{
	static const uint8_t zeros[64];
	sd_error_t e;
	uint8_t *out;
	size_t out_len, n_refs;
	pbstrip_ref_t *refs;
	ck_assert_int_eq(pbstrip_graph(zeros, sizeof(zeros), false, &A, &out, &out_len, &refs,
				       &n_refs, &e),
			 PBSTRIP_MALFORMED);
	ck_assert_int_eq(pbstrip_graph(zeros, sizeof(zeros), true, &A, &out, &out_len, &refs,
				       &n_refs, &e),
			 PBSTRIP_MALFORMED);
	ck_assert_int_eq(pbwire_check_depth(&tensorflow__graph_def__descriptor, zeros,
					    sizeof(zeros), SD_EMODEL, &e),
			 SD_EMODEL);
	ck_assert_str_eq(e.msg, "is malformed: field number 0 or over 2^29 - 1 at byte 0 (in "
				"tensorflow.GraphDef)");
	/* versions (4) { producer: 1, then a group start (wire type 3) }; then a key
	 * whose varint never ends; then field 2^29 (one over protobuf's largest). */
	static const uint8_t group[] = {0x22, 0x03, 0x08, 0x01, 0x0b};
	ck_assert_int_eq(pbwire_check_depth(&tensorflow__graph_def__descriptor, group,
					    sizeof(group), SD_EMODEL, &e),
			 SD_EMODEL);
	ck_assert_str_eq(e.msg, "is malformed: a group or an unknown wire type at byte 4 (in "
				"tensorflow.VersionDef)");
	static const uint8_t endless[] = {0x22, 0x00, 0x80, 0x80};
	ck_assert_int_eq(pbwire_check_depth(&tensorflow__graph_def__descriptor, endless,
					    sizeof(endless), SD_EMODEL, &e),
			 SD_EMODEL);
	ck_assert_str_eq(e.msg, "is malformed: a truncated field key at byte 2 (in "
				"tensorflow.GraphDef)");
	static const uint8_t huge[] = {0x80, 0x80, 0x80, 0x80, 0x10, 0x00};
	ck_assert_int_eq(pbwire_check_depth(&tensorflow__graph_def__descriptor, huge,
					    sizeof(huge), SD_EMODEL, &e),
			 SD_EMODEL);
	ck_assert_msg(strstr(e.msg, "field number 0 or over"), "%s", e.msg);
}
END_TEST

int main(void)
{
	const TTest *const tests[] = {
		text_fixtures, edge_values, unknown_fields, block_boundaries,
		refuses_over_2gib, full_disk, fills, fills_full_disk, field_zero_is_malformed,
		NULL,
	};
	const tu_case_t cases[] = {{"pbwire", tests, TU_ARENA}, {NULL}};
	return tu_main("pbwire", cases);
}
