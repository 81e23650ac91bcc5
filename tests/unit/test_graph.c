/*
 * Unit tests for prune_graph: format detection, round trips that keep unknown fields,
 * and every bad input of SPEC section 2, each failing with the node named; and the
 * --outputs lists every stage parses against a graph.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "proto/pbarena.h"
#include "proto/pbwire.h"
#include "prune/attr.h"
#include "prune/graph.h"
#include "prune/layers.h"
#include "prune/sparsify.h"
#include "prune/tensor.h"
#include "testutil_prune.h"


static int load(const void *buf, size_t len, prune_format_t fmt, prune_graph_t **g,
		sd_error_t *e)
{
	sd_err_clear(e);
	return prune_graph_load((uint8_t *)buf, len, "m.pb", fmt, 1u << 20, &A, g, e);
}

/* Binary GraphDef of small.pbtxt. */
static uint8_t *small_pb(size_t *len)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	return tu_pack(&A, &prune_graph_def(g)->base, len);
}

START_TEST(detect_formats)
{
	size_t len;
	uint8_t *pb = small_pb(&len);
	prune_graph_t *g;
	sd_error_t e;
	ck_assert_int_eq(load(pb, len, PRUNE_FMT_AUTO, &g, &e), 0);
	ck_assert_int_eq(prune_graph_format(g), PRUNE_FMT_GRAPHDEF);
	ck_assert(!prune_graph_format_stated(g));
	ck_assert_uint_eq(prune_graph_count(g), 19);

	/* Wrap the GraphDef into a MetaGraphDef with a collection. */
	Tensorflow__MetaGraphDef meta = TENSORFLOW__META_GRAPH_DEF__INIT;
	meta.graph_def = prune_graph_def(g);
	Tensorflow__CollectionDef cd = TENSORFLOW__COLLECTION_DEF__INIT;
	Tensorflow__CollectionDef__NodeList nl = TENSORFLOW__COLLECTION_DEF__NODE_LIST__INIT;
	char *names[] = {"out"};
	nl.n_value = 1;
	nl.value = names;
	cd.kind_case = TENSORFLOW__COLLECTION_DEF__KIND_NODE_LIST;
	cd.node_list = &nl;
	Tensorflow__MetaGraphDef__CollectionDefEntry ent =
		TENSORFLOW__META_GRAPH_DEF__COLLECTION_DEF_ENTRY__INIT;
	ent.key = "train_op";
	ent.value = &cd;
	Tensorflow__MetaGraphDef__CollectionDefEntry *ents[] = {&ent};
	meta.n_collection_def = 1;
	meta.collection_def = ents;
	size_t mlen;
	uint8_t *mb = tu_pack(&A, &meta.base, &mlen);
	prune_graph_t *gm;
	ck_assert_int_eq(load(mb, mlen, PRUNE_FMT_AUTO, &gm, &e), 0);
	ck_assert_int_eq(prune_graph_format(gm), PRUNE_FMT_METAGRAPH);
	ck_assert_uint_eq(prune_graph_count(gm), 19);

	/* Stated format wins, and a wrong statement is an error, not a guess. */
	ck_assert_int_eq(load(pb, len, PRUNE_FMT_GRAPHDEF, &g, &e), 0);
	ck_assert(prune_graph_format_stated(g));
	ck_assert_int_ne(load(mb, mlen, PRUNE_FMT_GRAPHDEF, &g, &e), 0);

	size_t tlen;
	char *txt = tu_read(&A, "graphs/small.pbtxt", &tlen);
	ck_assert_int_eq(load(txt, tlen, PRUNE_FMT_AUTO, &g, &e), 0);
	ck_assert_int_eq(prune_graph_format(g), PRUNE_FMT_PBTXT);
	/* with a UTF-8 byte order mark in front */
	char *bom = arena_alloc(&A, tlen + 3);
	memcpy(bom, "\xef\xbb\xbf", 3);
	memcpy(bom + 3, txt, tlen);
	ck_assert_msg(load(bom, tlen + 3, PRUNE_FMT_AUTO, &g, &e) == 0, "%s", e.msg);
	ck_assert_int_eq(prune_graph_format(g), PRUNE_FMT_PBTXT);
	ck_assert_uint_eq(prune_graph_count(g), 19);
}
END_TEST

/* Appends an unknown varint field (number 99) to a packed message. */
static uint8_t *with_unknown(const uint8_t *buf, size_t len, size_t *out)
{
	uint8_t *p = arena_alloc(&A, len + 3);
	memcpy(p, buf, len);
	p[len] = ((99 << 3) & 0x7f) | 0x80; /* tag 99, wire type 0, two-byte varint key */
	p[len + 1] = 99 >> 4;
	p[len + 2] = 42;
	*out = len + 3;
	return p;
}

START_TEST(unknown_fields_survive)
{
	size_t len, ulen;
	uint8_t *pb = small_pb(&len);
	uint8_t *u = with_unknown(pb, len, &ulen);
	prune_graph_t *g;
	sd_error_t e;
	ck_assert_int_eq(load(u, ulen, PRUNE_FMT_GRAPHDEF, &g, &e), 0);
	size_t slen;
	char *saved = tu_save(g, PRUNE_FMT_AUTO, &slen);
	ck_assert_uint_eq(slen, ulen);
	ck_assert(memcmp(saved, u, ulen) == 0);
	free(saved);

	/* An unknown field inside a node survives too. */
	Tensorflow__NodeDef *n = prune_graph_node(g, 0);
	size_t nlen;
	uint8_t *nb = tu_pack(&A, &n->base, &nlen);
	size_t nulen;
	uint8_t *nu = with_unknown(nb, nlen, &nulen);
	ProtobufCAllocator pa = pbarena_allocator(&A);
	Tensorflow__NodeDef *n2 = tensorflow__node_def__unpack(&pa, nulen, nu);
	ck_assert(n2 != NULL);
	ck_assert_uint_eq(n2->base.n_unknown_fields, 1);
	prune_graph_def(g)->node[0] = n2;
	saved = tu_save(g, PRUNE_FMT_GRAPHDEF, &slen);
	prune_graph_t *g2;
	ck_assert_int_eq(load(saved, slen, PRUNE_FMT_GRAPHDEF, &g2, &e), 0);
	ck_assert_uint_eq(prune_graph_node(g2, 0)->base.n_unknown_fields, 1);
	free(saved);
}
END_TEST

START_TEST(text_round_trip)
{
	prune_graph_t *g = tu_graph(&A, "graphs/conv.pbtxt");
	size_t slen;
	char *txt = tu_save(g, PRUNE_FMT_AUTO, &slen);
	prune_graph_t *g2;
	sd_error_t e;
	ck_assert_int_eq(load(txt, slen, PRUNE_FMT_AUTO, &g2, &e), 0);
	size_t a, b;
	uint8_t *p1 = tu_pack(&A, &prune_graph_def(g)->base, &a);
	uint8_t *p2 = tu_pack(&A, &prune_graph_def(g2)->base, &b);
	ck_assert_uint_eq(a, b);
	ck_assert(memcmp(p1, p2, a) == 0);
	free(txt);
}
END_TEST

static void expect_bad(const char *text, const char *needle, const char *node, int code)
{
	prune_graph_t *g;
	sd_error_t e;
	int rc = load(text, strlen(text), PRUNE_FMT_AUTO, &g, &e);
	ck_assert_int_eq(rc, code);
	ck_assert_msg_has(e, needle);
	if (node)
		ck_assert_str_eq(e.node, node);
}

START_TEST(bad_inputs)
{
	/* Two 'value' entries: the last counts, as in TensorFlow (a protobuf map). */
	static const char two_values[] =
		"node { name: 'w' op: 'Const' attr { key: 'dtype' value { type: DT_FLOAT } }"
		" attr { key: 'value' value { tensor { dtype: DT_FLOAT tensor_shape { dim { size: 2 } }"
		" float_val: 1 } } }"
		" attr { key: 'value' value { tensor { dtype: DT_FLOAT tensor_shape { dim { size: 2 } }"
		" tensor_content: '\\000\\000\\000' } } } }";
	expect_bad(two_values, "tensor_content has 3 bytes but its shape holds 2 elements", "w",
		   SD_EMODEL);
	expect_bad("node { name: \"a\" op: \"NoOp\" } node { name: \"a\" op: \"NoOp\" }",
		   "duplicate node name 'a'", "a", SD_EMODEL);
	expect_bad("node { name: \"a\" op: \"Identity\" input: \"ghost:0\" }",
		   "names missing node 'ghost'", "a", SD_EMODEL);
	expect_bad("node { name: \"c\" op: \"Const\" attr { key: \"value\" value { tensor {"
		   " dtype: DT_FLOAT tensor_shape { dim { size: 3 } } tensor_content: \"abcdefgh\""
		   " } } } }",
		   "tensor_content has 8 bytes", "c", SD_EMODEL);
	expect_bad("node { name: \"big\" op: \"Const\" attr { key: \"value\" value { tensor {"
		   " dtype: DT_FLOAT tensor_shape { dim { size: 1000000 } dim { size: 1000000 } }"
		   " float_val: 1 } } } }",
		   "big", "big", SD_ETOOBIG);
	expect_bad("node { name: \"n\" op: \"Const\" }", "has no tensor 'value'", "n", SD_EMODEL);
	expect_bad("node { name: \"a\" op: \"Identity\" input: \"b:x\" }", "bad output index",
		   "a", SD_EMODEL);
	expect_bad("node { name: \"\" op: \"NoOp\" }", "has no name", NULL, SD_EMODEL);
	expect_bad("versions { producer: 1 }", "has no nodes", NULL, SD_EMODEL);
}
END_TEST

START_TEST(bad_binary)
{
	size_t len;
	uint8_t *pb = small_pb(&len);
	prune_graph_t *g;
	sd_error_t e;
	for (size_t cut = 1; cut < len; cut += len / 97 + 1) {
		int rc = load(pb, cut, PRUNE_FMT_AUTO, &g, &e);
		/* A cut on a node boundary is a valid smaller graph (maybe with missing
		 * inputs); anything else must be refused, never crash. */
		if (rc)
			ck_assert(e.msg[0] != 0);
	}
	ck_assert_int_eq(load(pb, len - 1, PRUNE_FMT_GRAPHDEF, &g, &e), SD_EMODEL);
	ck_assert_msg_has(e, "GraphDef is malformed: a truncated field at byte");
	uint8_t junk[4096];
	srand(7);
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)rand();
	junk[0] = 0xff;
	ck_assert_int_ne(load(junk, sizeof(junk), PRUNE_FMT_AUTO, &g, &e), 0);
	ck_assert_int_eq(load("", 0, PRUNE_FMT_AUTO, &g, &e), SD_EMODEL);
}
END_TEST

/* Appends field `num` (length-delimited) holding p[0..n) to out; returns the new length. */
static size_t put_len(uint8_t *out, size_t at, unsigned num, const void *p, size_t n)
{
	uint8_t *o = out + at;
	o += pbwire_varint_put(o, (uint64_t)num << 3 | 2);
	o += pbwire_varint_put(o, n);
	memmove(o, p, n);
	return (size_t)(o - out) + n;
}

/* Depth beyond the limit is refused before protobuf-c recurses; two tensor_content
 * fields in one tensor (the last one counts) load without tripping the zero-copy patch. */
START_TEST(deep_and_repeated_binary)
{
	static uint8_t a[40000], b[40000];
	size_t n = put_len(a, 0, 2, "x", 1); /* AttrValue.s */
	for (int level = 0; level < 300; level++) {
		/* AttrValue.func (10) -> NameAttrList { name, attr { key, value } } */
		size_t e1 = put_len(b, 0, 1, "k", 1);
		e1 = put_len(b, e1, 2, a, n);
		uint8_t entry[40000];
		memcpy(entry, b, e1);
		size_t nal = put_len(b, 0, 1, "f", 1);
		nal = put_len(b, nal, 2, entry, e1);
		memcpy(entry, b, nal);
		n = put_len(a, 0, 10, entry, nal);
		ck_assert(n < sizeof(a) - 64);
	}
	uint8_t node[40100];
	size_t nn = put_len(node, 0, 1, "n", 1);
	nn = put_len(node, nn, 2, "Const", 5);
	size_t en = put_len(b, 0, 1, "a", 1);
	en = put_len(b, en, 2, a, n);
	nn = put_len(node, nn, 5, b, en);
	static uint8_t graph[40200];
	size_t gn = put_len(graph, 0, 1, node, nn);
	prune_graph_t *g;
	sd_error_t e;
	ck_assert_int_eq(load(graph, gn, PRUNE_FMT_AUTO, &g, &e), SD_EMODEL);
	ck_assert_msg_has(e, "nests messages deeper than 100 levels");
	/* Field 0 written as two bytes (80 00), which protobuf-c keeps as an unknown
	 * field: the walk used to stop there and leave the depth to protobuf-c. In front
	 * of the graph, and inside the node. */
	static uint8_t pre[40300];
	memcpy(pre, "\x80\x00\x00", 3);
	memcpy(pre + 3, graph, gn);
	ck_assert_int_eq(load(pre, gn + 3, PRUNE_FMT_GRAPHDEF, &g, &e), SD_EMODEL);
	ck_assert_msg_has(e, "GraphDef is malformed: field number 0 or over 2^29 - 1 at byte 0");
	memcpy(b, "\x80\x00\x00", 3);
	memcpy(b + 3, node, nn);
	gn = put_len(pre, 0, 1, b, nn + 3);
	ck_assert_int_eq(load(pre, gn, PRUNE_FMT_AUTO, &g, &e), SD_EMODEL);
	ck_assert_msg_has(e, "field number 0 or over 2^29 - 1 at byte");
	ck_assert_msg_has(e, "(in tensorflow.NodeDef)");

	/* tensor { dtype: DT_FLOAT shape { dim { size: 1024 } } content: A content: B } */
	static uint8_t t[20000], v[20000], w[20000];
	static float ca[1024], cb[1024];
	for (int i = 0; i < 1024; i++)
		ca[i] = 1.0f, cb[i] = 2.0f;
	size_t tn = 0;
	t[tn++] = 0x08, t[tn++] = 1; /* dtype */
	uint8_t dim[4] = {0x08, 0x80, 0x08}, shp[8];
	size_t sn = put_len(shp, 0, 2, dim, 3);
	tn = put_len(t, tn, 2, shp, sn);
	tn = put_len(t, tn, 4, ca, sizeof(ca));
	tn = put_len(t, tn, 4, cb, sizeof(cb));
	size_t vn = put_len(v, 0, 8, t, tn);
	size_t wn = put_len(w, 0, 1, "value", 5);
	wn = put_len(w, wn, 2, v, vn);
	nn = put_len(node, 0, 1, "w", 1);
	nn = put_len(node, nn, 2, "Const", 5);
	nn = put_len(node, nn, 5, w, wn);
	gn = put_len(graph, 0, 1, node, nn);
	ck_assert_msg(load(graph, gn, PRUNE_FMT_GRAPHDEF, &g, &e) == 0, "%s", e.msg);
	Tensorflow__AttrValue *val = prune_node_attr(prune_graph_node(g, 0), "value");
	ck_assert_uint_eq(val->tensor->tensor_content.len, sizeof(cb));
	ck_assert(!memcmp(val->tensor->tensor_content.data, cb, sizeof(cb)));

	/* Merges the zero-copy walk cannot follow load as protobuf reads them. */
	size_t tshape = put_len(t, 2, 2, shp, sn); /* the tensor's dtype and shape only */
	size_t tfull = put_len(t, tshape, 4, ca, sizeof(ca));
	uint8_t tsmall[64];
	memcpy(tsmall, t, tshape);
	/* tensor { A }, s: "x", tensor { shape }: the oneof switch dropped A */
	vn = put_len(v, 0, 8, t, tfull);
	vn = put_len(v, vn, 2, "x", 1);
	vn = put_len(v, vn, 8, tsmall, tshape);
	wn = put_len(w, 0, 1, "value", 5);
	wn = put_len(w, wn, 2, v, vn);
	nn = put_len(node, 0, 1, "w", 1);
	nn = put_len(node, nn, 2, "Const", 5);
	nn = put_len(node, nn, 5, w, wn);
	gn = put_len(graph, 0, 1, node, nn);
	ck_assert_msg(load(graph, gn, PRUNE_FMT_GRAPHDEF, &g, &e) == 0, "%s", e.msg);
	val = prune_node_attr(prune_graph_node(g, 0), "value");
	ck_assert_int_eq(val->value_case, TENSORFLOW__ATTR_VALUE__VALUE_TENSOR);
	ck_assert_uint_eq(val->tensor->tensor_content.len, 0);
	/* value { tensor { A } } then value { s: "x" }: the entry's value is the string (a
	 * Const would be refused for it: the node is an Identity) */
	vn = put_len(v, 0, 8, t, tfull);
	wn = put_len(w, 0, 1, "value", 5);
	wn = put_len(w, wn, 2, v, vn);
	wn = put_len(w, wn, 2, "\x12\x01x", 3);
	nn = put_len(node, 0, 1, "w", 1);
	nn = put_len(node, nn, 2, "Identity", 8);
	nn = put_len(node, nn, 5, w, wn);
	gn = put_len(graph, 0, 1, node, nn);
	ck_assert_msg(load(graph, gn, PRUNE_FMT_GRAPHDEF, &g, &e) == 0, "%s", e.msg);
	val = prune_node_attr(prune_graph_node(g, 0), "value");
	ck_assert_int_eq(val->value_case, TENSORFLOW__ATTR_VALUE__VALUE_S);
}
END_TEST

START_TEST(input_strings)
{
	prune_input_t in;
	sd_error_t e;
	ck_assert_int_eq(prune_input_parse("a/b:3", &in, &e), 0);
	ck_assert_uint_eq(in.len, 3);
	ck_assert_int_eq(in.index, 3);
	ck_assert(!in.ctrl);
	ck_assert_int_eq(prune_input_parse("^c", &in, &e), 0);
	ck_assert(in.ctrl);
	ck_assert_int_eq(in.index, 0);
	ck_assert_int_ne(prune_input_parse("^c:1", &in, &e), 0);
	ck_assert_int_ne(prune_input_parse(":1", &in, &e), 0);
	ck_assert_int_ne(prune_input_parse("a:", &in, &e), 0);
	ck_assert_int_ne(prune_input_parse("a:-1", &in, &e), 0);
}
END_TEST

/* Parses csv against small.pbtxt; returns the code, e holds the message. */
static int outputs(const char *csv, const char ***o, size_t *n, sd_error_t *e)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	sd_err_clear(e);
	return prune_outputs_parse(g, csv, o, n, e);
}

START_TEST(output_lists)
{
	const char **o;
	size_t n;
	sd_error_t e;
	/* A tensor name stands for its node, whichever output it names. */
	ck_assert_int_eq(outputs("out:0", &o, &n, &e), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(o[0], "out");
	ck_assert_int_eq(outputs(" mm1:1,\tout:0\t, w2/read ", &o, &n, &e), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(o[0], "mm1");
	ck_assert_str_eq(o[1], "out");
	ck_assert_str_eq(o[2], "w2/read");

	ck_assert_int_eq(outputs("out,^mm1", &o, &n, &e), SD_EUSAGE);
	ck_assert_msg_has(e, "output 2 ('^mm1') is a control input");
	ck_assert_int_eq(outputs("out:b", &o, &n, &e), SD_EUSAGE);
	ck_assert_msg_has(e, "output 1 ('out:b'): ':' must be followed by an output index");
	ck_assert_int_eq(outputs("out:", &o, &n, &e), SD_EUSAGE);
	ck_assert_msg_has(e, "('out:')");
	ck_assert_int_eq(outputs("out:0:1", &o, &n, &e), SD_EUSAGE);
	ck_assert_msg_has(e, "output index");
	ck_assert_int_eq(outputs(":0", &o, &n, &e), SD_EUSAGE);
	ck_assert_msg_has(e, "no node name before ':'");
	ck_assert_int_eq(outputs("out,", &o, &n, &e), SD_EUSAGE);
	ck_assert_msg_has(e, "output 2 is empty");
	ck_assert_int_eq(outputs("logits:0", &o, &n, &e), SD_EMODEL);
	ck_assert_msg_has(e, "output 'logits' is not a node");
	/* The graph-free check (the daemon's upload) says the same. */
	ck_assert_int_eq(prune_outputs_check("a, ^b", &e), SD_EUSAGE);
	ck_assert_msg_has(e, "output 2 ('^b') is a control input");
	ck_assert_int_eq(prune_outputs_check("a:1,b:0", &e), 0);
}
END_TEST

START_TEST(add_and_remove)
{
	prune_graph_t *g = tu_graph(&A, "graphs/small.pbtxt");
	sd_error_t e;
	size_t n0 = prune_graph_count(g);
	const char *ins[] = {"x", "^out"};
	const prune_attr_kv_t kv[] = {{"T", prune_attr_type(&A, 1)}, {"N", prune_attr_int(&A, 2)}};
	for (int i = 0; i < 1000; i++) {
		prune_node_spec_t s = {.name = arena_sprintf(&A, "new/%d", i), .op = "AddN",
				       .inputs = ins, .n_inputs = 2, .attrs = kv, .n_attrs = 2};
		ck_assert(prune_graph_add(g, &s, &e) != NULL);
	}
	prune_node_spec_t taken = {.name = "x", .op = "NoOp"};
	ck_assert(prune_graph_add(g, &taken, &e) == NULL);
	ck_assert_msg_has(e, "already taken");
	ck_assert_uint_eq(prune_graph_count(g), n0 + 1000);
	/* The one-block node is a well-formed NodeDef: it packs and reads back. */
	Tensorflow__NodeDef *n = prune_graph_node(g, n0 + 7);
	size_t len = tensorflow__node_def__get_packed_size(n);
	uint8_t *buf = arena_alloc(&A, len);
	tensorflow__node_def__pack(n, buf);
	ProtobufCAllocator pa = pbarena_allocator(&A);
	Tensorflow__NodeDef *back = tensorflow__node_def__unpack(&pa, len, buf);
	ck_assert_ptr_nonnull(back);
	ck_assert_str_eq(back->name, "new/7");
	ck_assert_str_eq(back->op, "AddN");
	ck_assert_uint_eq(back->n_input, 2);
	ck_assert_str_eq(back->input[1], "^out");
	ck_assert_uint_eq(back->n_attr, 2);
	ck_assert_int_eq(prune_node_attr(back, "N")->i, 2);
	ck_assert_int_eq(prune_graph_find(g, "new/999", 7), (ptrdiff_t)n0 + 999);
	bool *rm = arena_calloc(&A, prune_graph_count(g), sizeof(bool));
	for (size_t i = n0; i < prune_graph_count(g); i++)
		rm[i] = true;
	ck_assert_int_eq(prune_graph_remove(g, rm, &e), 0);
	ck_assert_uint_eq(prune_graph_count(g), n0);
	ck_assert_int_eq(prune_graph_find(g, "new/1", 5), -1);
	ck_assert_int_eq(prune_graph_find(g, "out", 3), (ptrdiff_t)n0 - 1);
}
END_TEST

/* ---- walks over long Identity chains ---- */

/* A text graph being written: x and an 8x4 weight w, then what the test adds. */
typedef struct text {
	char *buf;
	size_t len;
	FILE *f;
} text_t;

static void text_begin(text_t *t)
{
	t->f = open_memstream(&t->buf, &t->len);
	ck_assert_ptr_nonnull(t->f);
	fputs("node { name: 'x' op: 'Placeholder' attr { key: 'dtype' value { type: DT_FLOAT } } }\n"
	      "node { name: 'w' op: 'Const' attr { key: 'dtype' value { type: DT_FLOAT } }\n"
	      "       attr { key: 'value' value { tensor { dtype: DT_FLOAT\n"
	      "       tensor_shape { dim { size: 8 } dim { size: 4 } } float_val: 1.5 } } } }\n",
	      t->f);
}

/* Node `name` of type op reading `in` `reads` times (an Identity listing its input twice
 * is legal, and a walk that follows every path pays twice per level). */
static void text_node(text_t *t, const char *name, const char *op, const char *in, int reads)
{
	fprintf(t->f, "node { name: '%s' op: '%s'", name, op);
	if (strcmp(op, "MatMul") == 0)
		fputs(" input: 'x'", t->f);
	for (int i = 0; i < reads; i++)
		fprintf(t->f, " input: '%s'", in);
	fputs(" }\n", t->f);
}

/* Identities <prefix>0 .. <prefix><n-1>, the first reading `from`, each the one before
 * it `reads` times. Returns the last one's name (in A). */
static const char *text_chain(text_t *t, const char *prefix, const char *from, int n, int reads)
{
	const char *prev = from;
	for (int i = 0; i < n; i++) {
		const char *name = arena_sprintf(&A, "%s%d", prefix, i);
		text_node(t, name, "Identity", prev, reads);
		prev = name;
	}
	return prev;
}

static prune_graph_t *text_load(text_t *t)
{
	fclose(t->f);
	char *copy = arena_strndup(&A, t->buf, t->len);
	size_t len = t->len;
	free(t->buf);
	prune_graph_t *g;
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_msg(prune_graph_load((uint8_t *)copy, len, "t.pbtxt", PRUNE_FMT_PBTXT, 1u << 20,
				       &A, &g, &e) == 0,
		      "%s", e.msg);
	return g;
}

/* Sparsifies the weight of layer "mm" of g, which reads it through `reads`: whether
 * the masked weight had to go to a copy (another reader may see w, or the walk gave
 * up), checking the layer reads the copy exactly then. */
static bool weight_moved(prune_graph_t *g, const char *reads)
{
	const char *outs[] = {"mm"};
	prune_layer_t *l;
	size_t n;
	sd_error_t e;
	ck_assert_int_eq(prune_layers_find(g, outs, 1, 1u << 20, &l, &n, &e), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(l->weight, "w");
	ck_assert_int_eq(l->reason, PRUNE_SKIP_NONE);
	prune_consumers_t c;
	ck_assert_int_eq(prune_graph_consumers(g, &c, &e), 0);
	prune_tensor_t w;
	Tensorflow__NodeDef *wn = prune_graph_node(g, l->weight_node);
	ck_assert_int_eq(prune_tensor_read(prune_node_attr(wn, "value")->tensor, 1u << 20, "w",
					   &A, &w, &e),
			 0);
	uint8_t *bits = arena_calloc(&A, w.n / 8 + 1, 1);
	bool moved = false;
	ck_assert_int_eq(prune_sparsify(g, &c, l, l->weight_node, &w, bits,
					(prune_mask_counts_t){0, 0}, true, NULL, NULL, &moved, &e),
			 0);
	ck_assert_str_eq(*prune_layer_weight_ref(g, l), moved ? "mm/weight_2of4" : reads);
	return moved;
}

/* Chains whose Identities each read the one before twice: 2^depth paths, each node
 * walked once, with the answer of the walk that follows every path (up to 64 deep). */
START_TEST(sparsify_walks_each_node_once)
{
	/* A chain of `depth` Identities from w to mm, `extra` beside it. */
	static const struct {
		int depth;
		const char *extra;
		bool moved;
	} chains[] = {
		{30, "", false}, /* nothing else reads w: masked in place */
		/* an endpoint halfway (an Identity nobody reads) sees w: a copy */
		{30, "node { name: 'peek' op: 'Identity' input: 'id15' }\n", true},
		/* another op on the last Identity: a copy */
		{40, "node { name: 'other' op: 'Relu' input: 'id39' }\n", true},
		{64, "", false}, /* the depth bound is kept: 64 Identities are walked, */
		{65, "", true},  /* 65 are not */
	};
	text_t t;
	const char *last;
	for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++) {
		text_begin(&t);
		last = text_chain(&t, "id", "w", chains[i].depth, 2);
		text_node(&t, "mm", "MatMul", last, 1);
		fputs(chains[i].extra, t.f);
		ck_assert_msg(weight_moved(text_load(&t), last) == chains[i].moved, "case %zu", i);
	}

	/* A node met first near w and again deeper: the deeper path counts. s1 heads a chain
	 * of h Identities to mm and is reached at depth 2 (w, s0, s1) and, walked later, at
	 * depth 7 (w, p0 .. p4, s0b, s1): the walk goes h + 6 deep. */
	for (int h = 57; h <= 59; h++) {
		text_begin(&t);
		text_node(&t, "s0", "Identity", "w", 1);
		text_chain(&t, "p", "w", 5, 1);
		text_node(&t, "s0b", "Identity", "p4", 1);
		fputs("node { name: 's1' op: 'Identity' input: 's0' input: 's0b' }\n", t.f);
		last = text_chain(&t, "s1_", "s1", h - 1, 1);
		text_node(&t, "mm", "MatMul", last, 1);
		ck_assert_msg(weight_moved(text_load(&t), last) == (h + 6 > 64), "h %d", h);
	}

	/* An Identity cycle below w: the walk gives up, as it did going round it. */
	text_begin(&t);
	fputs("node { name: 'c0' op: 'Identity' input: 'w' input: 'c1' }\n"
	      "node { name: 'c1' op: 'Identity' input: 'c0' }\n",
	      t.f);
	text_node(&t, "mm", "MatMul", "c1", 1);
	ck_assert(weight_moved(text_load(&t), "c1"));
}
END_TEST

/* 20000 layers share one weight at the end of a 20000-long Identity chain: the chain
 * is traced once, and every layer finds w. */
START_TEST(trace_shared_chain_once)
{
	enum { N = 20000 };
	text_t t;
	text_begin(&t);
	const char *last = text_chain(&t, "i", "w", N, 1);
	for (int i = 0; i < N; i++)
		text_node(&t, arena_sprintf(&A, "m%d", i), "MatMul", last, 1);
	prune_graph_t *g = text_load(&t);
	prune_layer_t *l;
	size_t n;
	sd_error_t e;
	ck_assert_int_eq(prune_layers_find(g, NULL, 0, 1u << 20, &l, &n, &e), 0);
	ck_assert_uint_eq(n, N);
	for (size_t i = 0; i < n; i++) {
		ck_assert_str_eq(l[i].weight, "w");
		ck_assert_str_eq(l[i].weight_input, last);
		ck_assert_int_eq(l[i].reason, PRUNE_SKIP_SHARED_WEIGHT);
	}
	ck_assert_str_eq(l[N - 1].detail, "weight 'w' feeds 20000 layers");
	prune_tracer_t tr;
	ck_assert_int_eq(prune_tracer_init(g, &tr, &e), 0);
	ck_assert_int_eq(prune_tracer_trace(&tr, "i12345"), prune_graph_find(g, "w", 1));
	ck_assert_int_eq(prune_tracer_trace(&tr, last), prune_graph_find(g, "w", 1));
	size_t slot = 9;
	ck_assert_int_eq(prune_tracer_weight_reader(&tr, (size_t)prune_graph_find(g, "m7", 2),
						    &slot),
			 prune_graph_find(g, "m7", 2));
	ck_assert_uint_eq(slot, 1);
}
END_TEST

/* The tracer answers as prune_trace does from every node, whatever order it is asked
 * in: chains into a cycle, dead ends, control inputs, a Cast, a missing node. */
/* The tracer's answer the simple way, one input at a time: hop through Identity and
 * ReadVariableOp, giving up on a dead end or after as many hops as nodes (a cycle). */
static ptrdiff_t ref_trace(const prune_graph_t *g, const char *input)
{
	ptrdiff_t idx = prune_graph_find_input(g, input);
	for (size_t hops = 0; idx >= 0 && hops <= prune_graph_count(g); hops++) {
		const Tensorflow__NodeDef *n = prune_graph_node(g, (size_t)idx);
		if (!prune_passes_on(n))
			return idx;
		if (n->n_input == 0 || n->input[0][0] == '^')
			return -1;
		idx = prune_graph_find_input(g, n->input[0]);
	}
	return -1;
}

START_TEST(tracer_matches_trace)
{
	text_t t;
	text_begin(&t);
	fputs("node { name: 'a0' op: 'Identity' input: 'a1' }\n"
	      "node { name: 'a1' op: 'Identity' input: 'a2' }\n"
	      "node { name: 'a2' op: 'Identity' input: 'a1' }\n"
	      "node { name: 'b' op: 'Identity' input: 'a0:0' }\n"
	      "node { name: 'd' op: 'Identity' }\n"
	      "node { name: 'e' op: 'ReadVariableOp' input: 'd' }\n"
	      "node { name: 'f' op: 'Identity' input: '^w' }\n"
	      "node { name: 'g' op: 'Identity' input: 'f' }\n"
	      "node { name: 'v' op: 'VarHandleOp' }\n"
	      "node { name: 'r' op: 'ReadVariableOp' input: 'v' }\n"
	      "node { name: 'cast' op: 'Cast' input: 'r' }\n"
	      "node { name: 'h' op: 'Identity' input: 'cast' }\n"
	      "node { name: 'loop' op: 'Identity' input: 'loop' }\n",
	      t.f);
	text_chain(&t, "k", "w", 50, 1);
	text_chain(&t, "j", "k25", 50, 1);
	text_chain(&t, "l", "a2", 10, 1);
	text_node(&t, "mm", "MatMul", "h", 1);
	prune_graph_t *g = text_load(&t);
	size_t count = prune_graph_count(g);
	/* Forward, backward and from the middle out, each with a fresh tracer. */
	for (int order = 0; order < 3; order++) {
		prune_tracer_t tr;
		sd_error_t e;
		ck_assert_int_eq(prune_tracer_init(g, &tr, &e), 0);
		for (size_t k = 0; k < count; k++) {
			size_t i = order == 0 ? k : order == 1 ? count - 1 - k : (k * 7 + count / 2) % count;
			const char *name = prune_graph_node(g, i)->name;
			ck_assert_msg(prune_tracer_trace(&tr, name) == ref_trace(g, name), "%s",
				      name);
			ck_assert_msg(prune_tracer_trace(&tr, name) == ref_trace(g, name),
				      "%s again", name);
		}
		ck_assert_int_eq(prune_tracer_trace(&tr, "nope"), -1);
		ck_assert_int_eq(prune_tracer_trace(&tr, "a0:x"), -1);
	}
	ck_assert_int_eq(ref_trace(g, "j49"), prune_graph_find(g, "w", 1));
	ck_assert_int_eq(ref_trace(g, "b"), -1);
	ck_assert_int_eq(ref_trace(g, "h"), prune_graph_find(g, "cast", 4));
	prune_tracer_t tr;
	sd_error_t e;
	ck_assert_int_eq(prune_tracer_init(g, &tr, &e), 0);
	size_t slot = 9, mm = (size_t)prune_graph_find(g, "mm", 2);
	ck_assert_int_eq(prune_tracer_weight_reader(&tr, mm, &slot), prune_graph_find(g, "cast", 4));
	ck_assert_uint_eq(slot, 0);
}
END_TEST

int main(void)
{
	const TTest *const tests[] = {
		detect_formats,
		unknown_fields_survive,
		text_round_trip,
		bad_inputs,
		bad_binary,
		deep_and_repeated_binary,
		input_strings,
		output_lists,
		add_and_remove,
		sparsify_walks_each_node_once,
		trace_shared_chain_once,
		tracer_matches_trace,
		NULL,
	};
	const tu_case_t cases[] = {{"graph", tests, TU_ARENA, .timeout = 60}, {NULL}};
	return tu_main("graph", cases);
}
