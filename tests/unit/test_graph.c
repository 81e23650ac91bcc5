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
		NULL,
	};
	const tu_case_t cases[] = {{"graph", tests, TU_ARENA}, {NULL}};
	return tu_main("graph", cases);
}
