/*
 * Unit tests for pbtext, the descriptor-driven protobuf text format codec.
 *
 * protoc is the reference: each hand-written file under data/pbtext/ is parsed by
 * pbtext and by `protoc --encode`, and the packed bytes must be identical; the same holds
 * for pbtext's own output and for protoc's `--decode` rendering fed back to pbtext. Then
 * every error the reader can raise is pinned to its exact "file:line:col: message", and
 * the text format niceties protoc would reject in strict mode (last-wins scalars, merged
 * messages, oneof replacement) are checked field by field.
 *
 * Every parse goes through a heap copy of exactly len bytes, so ASan catches any read
 * past the end of the (not NUL-terminated) input.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto/amct.pb-c.h"
#include "proto/pbarena.h"
#include "proto/pbtext.h"
#include "proto/tf_graph.pb-c.h"
#include "testutil.h"

#ifndef SRCDIR
#define SRCDIR "."
#endif

static const char *srcdir(void)
{
	const char *s = getenv("SRCDIR");
	return s && *s ? s : SRCDIR;
}

/* ---------------------------------------------------------------- helpers */

typedef struct buf {
	char *p;
	size_t n;
} buf_t;

static buf_t read_all(FILE *f)
{
	buf_t b = {NULL, 0};
	size_t cap = 0;
	char tmp[65536];
	size_t k;
	while ((k = fread(tmp, 1, sizeof(tmp), f)) > 0) {
		if (b.n + k > cap) {
			cap = (b.n + k) * 2;
			b.p = realloc(b.p, cap);
			ck_assert_ptr_nonnull(b.p);
		}
		memcpy(b.p + b.n, tmp, k);
		b.n += k;
	}
	if (!b.p)
		b.p = malloc(1);
	return b;
}

static buf_t read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	buf_t b = read_all(f);
	fclose(f);
	return b;
}

/* Runs protoc with `args`, feeding it `in` on stdin; returns its stdout. */
static buf_t run_protoc(const char *args, const void *in, size_t n)
{
	char path[] = "/tmp/test_pbtext_XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq((long)write(fd, in, n), (long)n);
	close(fd);
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "protoc %s -I%s/proto < %s", args, srcdir(), path);
	FILE *p = popen(cmd, "r");
	ck_assert_msg(p != NULL, "popen %s", cmd);
	buf_t out = read_all(p);
	int st = pclose(p);
	unlink(path);
	ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "protoc failed (is it installed?): %s", cmd);
	return out;
}

/* Parses through an exact-size heap copy, so reading past len is an ASan error. */
static int parse(const ProtobufCMessageDescriptor *d, const char *text, size_t len, arena_t *a,
		 const pbtext_opts_t *o, ProtobufCMessage **out, sd_error_t *e)
{
	char *copy = malloc(len ? len : 1);
	ck_assert_ptr_nonnull(copy);
	memcpy(copy, text, len);
	sd_err_clear(e);
	int rc = pbtext_parse(d, copy, len, a, o, out, e);
	free(copy);
	return rc;
}

static ProtobufCMessage *parse_ok(const ProtobufCMessageDescriptor *d, const char *text,
				  size_t len, arena_t *a)
{
	ProtobufCMessage *m = NULL;
	sd_error_t e;
	int rc = parse(d, text, len, a, NULL, &m, &e);
	ck_assert_msg(rc == 0, "parse failed: %s", e.msg);
	ck_assert_ptr_nonnull(m);
	return m;
}

#define PARSE_OK(d, s, a) parse_ok((d), (s), strlen(s), (a))

static buf_t pack(const ProtobufCMessage *m)
{
	buf_t b;
	b.n = protobuf_c_message_get_packed_size(m);
	b.p = malloc(b.n ? b.n : 1);
	ck_assert_ptr_nonnull(b.p);
	ck_assert_uint_eq(protobuf_c_message_pack(m, (uint8_t *)b.p), b.n);
	return b;
}

static buf_t write_text(const ProtobufCMessage *m)
{
	buf_t b = {NULL, 0};
	FILE *f = open_memstream(&b.p, &b.n);
	ck_assert_ptr_nonnull(f);
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_int_eq(pbtext_write(m, f, &e), 0);
	fclose(f);
	return b;
}

static void assert_same_bytes(buf_t x, buf_t y, const char *what)
{
	ck_assert_msg(x.n == y.n && memcmp(x.p, y.p, x.n) == 0,
		      "%s: packed bytes differ (%zu vs %zu bytes)", what, x.n, y.n);
}

/* ---------------------------------------------------------------- round trips */

static const struct rt_case {
	const char *file;
	const char *type;
	const char *proto;
	const ProtobufCMessageDescriptor *desc;
} rt_cases[] = {
	{"graph.pbtxt", "tensorflow.GraphDef", "tf_graph.proto",
	 &tensorflow__graph_def__descriptor},
	{"meta_graph.pbtxt", "tensorflow.MetaGraphDef", "tf_graph.proto",
	 &tensorflow__meta_graph_def__descriptor},
	{"retrain_config.pbtxt", "amct.AMCTRetrainConfig", "amct.proto",
	 &amct__amctretrain_config__descriptor},
	{"record.pbtxt", "amct.InnerScaleOffsetRecord", "amct.proto",
	 &amct__inner_scale_offset_record__descriptor},
};

START_TEST(roundtrip_vs_protoc)
{
	const struct rt_case *c = &rt_cases[_i];
	char path[1024], args[1024];
	snprintf(path, sizeof(path), "%s/tests/unit/data/pbtext/%s", srcdir(), c->file);
	buf_t text = read_file(path);
	arena_t a;
	arena_init(&a, 0);

	/* 1. pbtext parse vs protoc --encode of the same text. */
	ProtobufCMessage *m = parse_ok(c->desc, text.p, text.n, &a);
	buf_t ours = pack(m);
	snprintf(args, sizeof(args), "--encode=%s %s/proto/%s", c->type, srcdir(), c->proto);
	buf_t ref = run_protoc(args, text.p, text.n);
	ck_assert_uint_gt(ref.n, 0);
	assert_same_bytes(ours, ref, "parse vs protoc --encode");

	/* 2. pbtext_write output, read by protoc. */
	buf_t written = write_text(m);
	buf_t ref2 = run_protoc(args, written.p, written.n);
	assert_same_bytes(ours, ref2, "protoc --encode of pbtext_write output");

	/* 3. protoc's rendering of the binary, read by pbtext. */
	snprintf(args, sizeof(args), "--decode=%s %s/proto/%s", c->type, srcdir(), c->proto);
	buf_t decoded = run_protoc(args, ours.p, ours.n);
	ProtobufCMessage *m3 = parse_ok(c->desc, decoded.p, decoded.n, &a);
	buf_t ours3 = pack(m3);
	assert_same_bytes(ours, ours3, "pbtext parse of protoc --decode output");

	/* 4. The writer is a fixed point: parse(write(m)) writes the same text. */
	ProtobufCMessage *m4 = parse_ok(c->desc, written.p, written.n, &a);
	buf_t written4 = write_text(m4);
	ck_assert_uint_eq(written4.n, written.n);
	ck_assert(memcmp(written4.p, written.p, written.n) == 0);

	/* 5. A message unpacked from binary (not built by the reader) writes the same. */
	ProtobufCAllocator pa = pbarena_allocator(&a);
	ProtobufCMessage *u = protobuf_c_message_unpack(c->desc, &pa, ours.n,
							(const uint8_t *)ours.p);
	ck_assert_ptr_nonnull(u);
	buf_t written5 = write_text(u);
	ck_assert_uint_eq(written5.n, written.n);
	ck_assert(memcmp(written5.p, written.p, written.n) == 0);

	free(text.p);
	free(ours.p);
	free(ref.p);
	free(written.p);
	free(ref2.p);
	free(decoded.p);
	free(ours3.p);
	free(written4.p);
	free(written5.p);
	arena_deinit(&a);
}
END_TEST

/* ---------------------------------------------------------------- errors */

struct cb_log {
	int calls;
	int line, col;           /* position of the last field offered */
	const char *msg_name;    /* type of the message it is set on */
};

static const char *veto_quant(void *ud, const ProtobufCMessage *msg,
			      const ProtobufCFieldDescriptor *field, int line, int col)
{
	struct cb_log *log = ud;
	log->calls++;
	log->line = line;
	log->col = col;
	log->msg_name = msg->descriptor->name;
	if (!strcmp(field->name, "retrain_data_quant_config"))
		return "quantization is not supported by sparsityd";
	return NULL;
}

static const struct err_case {
	const ProtobufCMessageDescriptor *desc;
	const char *text;
	const char *msg; /* expected, after "t.pbtxt:" */
} err_cases[] = {
	/* strings */
	{&tensorflow__node_def__descriptor, "name: \"abc", "1:7: unterminated string"},
	{&tensorflow__node_def__descriptor, "name: 'abc\nop: \"x\"", "1:7: unterminated string"},
	{&tensorflow__node_def__descriptor, "name: \"abc\\", "1:7: unterminated string"},
	{&tensorflow__node_def__descriptor, "op: \"x\"\nname: \"a\\qb\"",
	 "2:9: invalid escape sequence '\\q' in string"},
	{&tensorflow__node_def__descriptor, "name: \"ok\" \"\\xg\"",
	 "1:13: invalid escape sequence '\\x' in string"},
	{&tensorflow__node_def__descriptor, "name: \"\\u12\"",
	 "1:8: invalid escape sequence '\\u' in string"},
	{&tensorflow__node_def__descriptor, "name: \"\\ud800\"",
	 "1:8: invalid unicode code point in string"},
	{&tensorflow__node_def__descriptor, "name: \"\\U00110000\"",
	 "1:8: invalid unicode code point in string"},
	{&tensorflow__node_def__descriptor, "name: \"\\400\"",
	 "1:8: octal escape out of range in string"},
	{&tensorflow__node_def__descriptor, "name: \"a\" \"b\\0c\"",
	 "1:7: NUL byte in string field 'name' (only bytes fields may hold one)"},
	{&tensorflow__node_def__descriptor, "name: 5",
	 "1:7: expected string value for field 'name', found '5'"},
	/* names */
	{&tensorflow__graph_def__descriptor, "node {\n  nmae: \"x\"\n}",
	 "2:3: unknown field 'nmae' in tensorflow.NodeDef"},
	{&tensorflow__graph_def__descriptor, "# comment\n\n  Node {}",
	 "3:3: unknown field 'Node' in tensorflow.GraphDef"},
	{&tensorflow__graph_def__descriptor, "[type.googleapis.com/tensorflow.NodeDef] { }",
	 "1:1: extension and Any syntax '[...]' is not supported"},
	{&tensorflow__graph_def__descriptor, "node { [tensorflow.ext]: 1 }",
	 "1:8: extension and Any syntax '[...]' is not supported"},
	{&tensorflow__graph_def__descriptor, "}", "1:1: expected field name, found '}'"},
	{&tensorflow__graph_def__descriptor, "node { name: \"a\" } 42",
	 "1:20: expected field name, found '42'"},
	/* enums */
	{&tensorflow__attr_value__descriptor, "type: DT_FOO",
	 "1:7: unknown enum value 'DT_FOO' for field 'type'"},
	{&tensorflow__attr_value__descriptor, "type: 99",
	 "1:7: unknown enum value '99' for field 'type'"},
	{&tensorflow__attr_value__descriptor, "type: -1",
	 "1:7: unknown enum value '-1' for field 'type'"},
	{&tensorflow__attr_value__descriptor, "type: \"DT_FLOAT\"",
	 "1:7: expected enum value for field 'type', found '\"DT_FLOAT\"'"},
	/* integers */
	{&tensorflow__version_def__descriptor, "producer: 2147483648",
	 "1:11: value '2147483648' out of range for int32 field 'producer'"},
	{&tensorflow__version_def__descriptor, "producer: -2147483649",
	 "1:11: value '-2147483649' out of range for int32 field 'producer'"},
	{&tensorflow__version_def__descriptor, "producer: 0x80000000",
	 "1:11: value '0x80000000' out of range for int32 field 'producer'"},
	{&tensorflow__tensor_proto__descriptor, "int64_val: 9223372036854775808",
	 "1:12: value '9223372036854775808' out of range for int64 field 'int64_val'"},
	{&tensorflow__tensor_proto__descriptor, "uint64_val: 18446744073709551616",
	 "1:13: value '18446744073709551616' out of range for uint64 field 'uint64_val'"},
	{&amct__amctretrain_config__descriptor, "batch_num: 4294967296",
	 "1:12: value '4294967296' out of range for uint32 field 'batch_num'"},
	{&amct__amctretrain_config__descriptor, "batch_num: -1",
	 "1:12: negative value '-1' for uint32 field 'batch_num'"},
	{&tensorflow__tensor_proto__descriptor, "uint32_val: [1, -0]",
	 "1:17: negative value '-0' for uint32 field 'uint32_val'"},
	{&tensorflow__version_def__descriptor, "producer: 1.5",
	 "1:11: invalid integer '1.5' for field 'producer'"},
	{&tensorflow__version_def__descriptor, "producer: 12ab",
	 "1:11: invalid integer '12ab' for field 'producer'"},
	{&tensorflow__version_def__descriptor, "producer: 08",
	 "1:11: invalid integer '08' for field 'producer'"},
	{&tensorflow__version_def__descriptor, "producer: x",
	 "1:11: expected integer value for field 'producer', found 'x'"},
	{&tensorflow__version_def__descriptor, "producer 1",
	 "1:10: expected ':' after field 'producer', found '1'"},
	{&tensorflow__version_def__descriptor, "producer: [1]",
	 "1:11: field 'producer' is not repeated; '[' list not allowed"},
	{&tensorflow__version_def__descriptor, "bad_consumers: [1 2]",
	 "1:19: expected ',' or ']' in list for field 'bad_consumers', found '2'"},
	{&tensorflow__version_def__descriptor, "bad_consumers: [1,",
	 "1:19: expected integer value for field 'bad_consumers', found end of input"},
	/* floats and bools */
	{&tensorflow__tensor_proto__descriptor, "float_val: 1e",
	 "1:12: invalid number '1e' for field 'float_val'"},
	{&tensorflow__tensor_proto__descriptor, "float_val: 1.5.2",
	 "1:12: invalid number '1.5.2' for field 'float_val'"},
	{&tensorflow__tensor_proto__descriptor, "double_val: infinite",
	 "1:13: invalid double value 'infinite' for field 'double_val'"},
	{&tensorflow__tensor_proto__descriptor, "float_val: \"1\"",
	 "1:12: expected float value for field 'float_val', found '\"1\"'"},
	{&tensorflow__attr_value__descriptor, "b: yes",
	 "1:4: invalid bool value 'yes' for field 'b'"},
	{&tensorflow__attr_value__descriptor, "b: 2", "1:4: invalid bool value '2' for field 'b'"},
	{&tensorflow__attr_value__descriptor, "b: TRUE",
	 "1:4: invalid bool value 'TRUE' for field 'b'"},
	/* structure */
	{&tensorflow__graph_def__descriptor, "node {\n  name: \"x\"\n",
	 "3:1: missing '}' to close 'node' opened at 1:6"},
	{&tensorflow__graph_def__descriptor, "versions < producer: 1 }",
	 "1:24: expected '>' to close 'versions' opened at 1:10, found '}'"},
	{&tensorflow__graph_def__descriptor, "node { name:",
	 "1:13: expected string value for field 'name', found end of input"},
	{&tensorflow__graph_def__descriptor, "node",
	 "1:5: expected '{' to open message field 'node', found end of input"},
	{&tensorflow__node_def__descriptor, "name { }",
	 "1:6: field 'name' is a string, not a message"},
	{&tensorflow__node_def__descriptor, "name: < >",
	 "1:7: field 'name' is a string, not a message"},
	{&tensorflow__graph_def__descriptor, "versions: 5",
	 "1:11: expected '{' to open message field 'versions', found '5'"},
	{&tensorflow__graph_def__descriptor, "versions \"x\"",
	 "1:10: expected '{' to open message field 'versions', found '\"x\"'"},
	{&tensorflow__graph_def__descriptor, "versions: [{}]",
	 "1:11: field 'versions' is not repeated; '[' list not allowed"},
	{&tensorflow__graph_def__descriptor, "node: [{}, 1]",
	 "1:12: expected '{' to open message field 'node', found '1'"},
};

START_TEST(error_messages)
{
	const struct err_case *c = &err_cases[_i];
	arena_t a;
	arena_init(&a, 0);
	pbtext_opts_t o = {.filename = "t.pbtxt", .err_code = SD_ECONFIG};
	ProtobufCMessage *m = (ProtobufCMessage *)&o; /* must be reset to NULL */
	sd_error_t e;
	int rc = parse(c->desc, c->text, strlen(c->text), &a, &o, &m, &e);
	char want[1024];
	snprintf(want, sizeof(want), "t.pbtxt:%s", c->msg);
	ck_assert_msg(rc == SD_ECONFIG, "case %d (%s): rc %d", _i, c->text, rc);
	ck_assert_ptr_null(m);
	ck_assert_str_eq(e.msg, want);
	ck_assert_int_eq(e.code, SD_ECONFIG);
	ck_assert_str_eq(e.file, "t.pbtxt");
	ck_assert_int_eq(e.line, atoi(c->msg));
	ck_assert_int_eq(e.col, atoi(strchr(c->msg, ':') + 1));
	arena_deinit(&a);
}
END_TEST

START_TEST(error_defaults)
{
	/* No opts: file "<input>" and SD_EMODEL. */
	arena_t a;
	arena_init(&a, 0);
	ProtobufCMessage *m;
	sd_error_t e;
	int rc = parse(&tensorflow__graph_def__descriptor, "nodes {}", 8, &a, NULL, &m, &e);
	ck_assert_int_eq(rc, SD_EMODEL);
	ck_assert_str_eq(e.msg, "<input>:1:1: unknown field 'nodes' in tensorflow.GraphDef");
	pbtext_opts_t o = {0};
	rc = parse(&tensorflow__graph_def__descriptor, "nodes {}", 8, &a, &o, &m, &e);
	ck_assert_int_eq(rc, SD_EMODEL);
	ck_assert_str_eq(e.msg, "<input>:1:1: unknown field 'nodes' in tensorflow.GraphDef");
	arena_deinit(&a);
}
END_TEST

START_TEST(error_field_cb_veto)
{
	arena_t a;
	arena_init(&a, 0);
	struct cb_log log = {0};
	pbtext_opts_t o = {.filename = "cfg", .err_code = SD_ECONFIG, .field_cb = veto_quant,
			   .field_ud = &log};
	const char *t = "batch_num: 1\n"
			"prune_config { n_out_of_m_pruner { } }\n"
			"  retrain_data_quant_config { algo: \"x\" }\n";
	ProtobufCMessage *m;
	sd_error_t e;
	int rc = parse(&amct__amctretrain_config__descriptor, t, strlen(t), &a, &o, &m, &e);
	ck_assert_int_eq(rc, SD_ECONFIG);
	ck_assert_str_eq(e.msg, "cfg:3:3: quantization is not supported by sparsityd");
	ck_assert_int_eq(log.calls, 4); /* every field name is offered, nested ones too */
	ck_assert_int_eq(log.line, 3);
	ck_assert_int_eq(log.col, 3);
	ck_assert_str_eq(log.msg_name, "amct.AMCTRetrainConfig");

	/* Accepting callback: every field name is seen, with its message and position. */
	log.calls = 0;
	t = "batch_num: 1 skip_layers: [\"a\", \"b\"]\nprune_config { filter_pruner {} }";
	rc = parse(&amct__amctretrain_config__descriptor, t, strlen(t), &a, &o, &m, &e);
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(log.calls, 4);
	ck_assert_int_eq(log.line, 2);
	ck_assert_int_eq(log.col, 16);
	ck_assert_str_eq(log.msg_name, "amct.PruneConfig");
	arena_deinit(&a);
}
END_TEST

/* Builds NameAttrList text nested `braces` deep (attr / value / func recursion). */
static char *nested_text(int braces)
{
	size_t cap = (size_t)braces * 40 + 64, n = 0;
	char *s = malloc(cap);
	ck_assert_ptr_nonnull(s);
	static const char *const open[] = {"attr { key: \"k\" ", "value { ", "func { "};
	for (int i = 0; i < braces; i++)
		n += (size_t)snprintf(s + n, cap - n, "%s", open[i % 3]);
	for (int i = 0; i < braces; i++)
		n += (size_t)snprintf(s + n, cap - n, "} ");
	return s;
}

START_TEST(error_nesting)
{
	arena_t a;
	arena_init(&a, 0);
	ProtobufCMessage *m;
	sd_error_t e;
	pbtext_opts_t o = {.filename = "deep", .err_code = SD_EMODEL};

	char *ok = nested_text(100);
	ck_assert_int_eq(parse(&tensorflow__name_attr_list__descriptor, ok, strlen(ok), &a, &o,
			       &m, &e), 0);
	free(ok);

	char *bad = nested_text(101);
	int rc = parse(&tensorflow__name_attr_list__descriptor, bad, strlen(bad), &a, &o, &m, &e);
	ck_assert_int_eq(rc, SD_EMODEL);
	/* The offending token is the 101st '{'. */
	const char *q = bad;
	for (int i = 0; i < 101; i++)
		q = strchr(q, '{') + 1;
	char want[256];
	snprintf(want, sizeof(want), "deep:1:%d: message nesting deeper than 100 levels",
		 (int)(q - bad));
	ck_assert_str_eq(e.msg, want);
	free(bad);

	/* A hostile input far deeper than the limit fails the same way, without recursion. */
	static const char unit[] = "attr{value{func{";
	size_t n = 1000000 * (sizeof(unit) - 1);
	char *deep = malloc(n);
	for (size_t i = 0; i < n; i += sizeof(unit) - 1)
		memcpy(deep + i, unit, sizeof(unit) - 1);
	rc = parse(&tensorflow__name_attr_list__descriptor, deep, n, &a, &o, &m, &e);
	ck_assert_int_eq(rc, SD_EMODEL);
	ck_assert_ptr_nonnull(strstr(e.msg, "message nesting deeper than 100 levels"));
	free(deep);
	arena_deinit(&a);
}
END_TEST

START_TEST(error_nomem)
{
	arena_t a;
	arena_init(&a, 64 * 1024); /* smaller than one arena chunk: the first alloc fails */
	ProtobufCMessage *m;
	sd_error_t e;
	pbtext_opts_t o = {.filename = "t", .err_code = SD_ECONFIG};
	int rc = parse(&tensorflow__graph_def__descriptor, "node {}", 7, &a, &o, &m, &e);
	ck_assert_int_eq(rc, SD_ENOMEM);
	ck_assert_str_eq(e.msg, "t:1:1: out of memory (arena budget exhausted)");
	arena_deinit(&a);

	/* Budget for a few chunks, then a long repeated list runs out mid-way. */
	arena_init(&a, 3u << 20);
	size_t cap = 8u << 20, n = 0;
	char *t = malloc(cap);
	n += (size_t)snprintf(t, cap, "float_val: [0");
	while (n < cap - 16)
		n += (size_t)snprintf(t + n, cap - n, ",1");
	t[n++] = ']';
	rc = parse(&tensorflow__tensor_proto__descriptor, t, n, &a, &o, &m, &e);
	ck_assert_int_eq(rc, SD_ENOMEM);
	ck_assert_int_eq(e.code, SD_ENOMEM);
	free(t);
	arena_deinit(&a);
}
END_TEST

/* ---------------------------------------------------------------- niceties */

START_TEST(nicety_comments_separators_colon)
{
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__GraphDef *g = (Tensorflow__GraphDef *)PARSE_OK(
		&tensorflow__graph_def__descriptor,
		"# leading comment\n"
		"node { name: \"a\", op: 'Const'; } # trailing\n"
		"node: { name: \"b\" };\n"
		"node < name: \"c\" input: \"a\" >,\n"
		"node: < name: \"d\" >\n"
		"versions{producer:1;min_consumer:2,bad_consumers:3}#no newline at end",
		&a);
	ck_assert_uint_eq(g->n_node, 4);
	ck_assert_str_eq(g->node[0]->name, "a");
	ck_assert_str_eq(g->node[0]->op, "Const");
	ck_assert_str_eq(g->node[1]->name, "b");
	ck_assert_str_eq(g->node[2]->name, "c");
	ck_assert_uint_eq(g->node[2]->n_input, 1);
	ck_assert_str_eq(g->node[3]->name, "d");
	ck_assert_int_eq(g->versions->producer, 1);
	ck_assert_int_eq(g->versions->min_consumer, 2);
	ck_assert_uint_eq(g->versions->n_bad_consumers, 1);

	/* Empty input and comment-only input give an empty message. */
	g = (Tensorflow__GraphDef *)parse_ok(&tensorflow__graph_def__descriptor, "", 0, &a);
	ck_assert_uint_eq(g->n_node, 0);
	g = (Tensorflow__GraphDef *)PARSE_OK(&tensorflow__graph_def__descriptor, "# x", &a);
	ck_assert_ptr_null(g->versions);
	arena_deinit(&a);
}
END_TEST

START_TEST(nicety_lists)
{
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__GraphDef *g = (Tensorflow__GraphDef *)PARSE_OK(
		&tensorflow__graph_def__descriptor,
		"node [ {name: \"a\"}, <name: \"b\"> ]\n"
		"node: [{name: \"c\" input: [\"x\", \"y\"] input: \"z\" input: []}]\n"
		"node: []\n"
		"versions { bad_consumers: [1, 0x2, 03] bad_consumers: 4 }",
		&a);
	ck_assert_uint_eq(g->n_node, 3);
	ck_assert_str_eq(g->node[1]->name, "b");
	ck_assert_uint_eq(g->node[2]->n_input, 3);
	ck_assert_str_eq(g->node[2]->input[2], "z");
	ck_assert_uint_eq(g->versions->n_bad_consumers, 4);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(g->versions->bad_consumers[i], i + 1);
	arena_deinit(&a);
}
END_TEST

START_TEST(nicety_last_wins_and_merge)
{
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__GraphDef *g = (Tensorflow__GraphDef *)PARSE_OK(
		&tensorflow__graph_def__descriptor,
		"versions { producer: 1 min_consumer: 5 bad_consumers: 3 }\n"
		"version: 7\n"
		"versions { min_consumer: 2 bad_consumers: 4 }\n"
		"version: 8\n",
		&a);
	buf_t w = write_text(&g->base); /* `version` is deprecated: read it back as text */
	ck_assert_int_eq(strncmp(w.p, "version: 8\nversions {\n", 22), 0);
	free(w.p);
	ck_assert_int_eq(g->versions->producer, 1);
	ck_assert_int_eq(g->versions->min_consumer, 2);
	ck_assert_uint_eq(g->versions->n_bad_consumers, 2);
	ck_assert_int_eq(g->versions->bad_consumers[1], 4);

	/* proto2: has_ flags set, last wins, merged sub-messages. */
	Amct__AMCTRetrainConfig *c = (Amct__AMCTRetrainConfig *)PARSE_OK(
		&amct__amctretrain_config__descriptor,
		"batch_num: 1 batch_num: 3\n"
		"prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 5 } } }\n"
		"prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: 2 } } }",
		&a);
	ck_assert(c->has_batch_num);
	ck_assert_uint_eq(c->batch_num, 3);
	Amct__L1SelectivePrune *l1 = c->prune_config->n_out_of_m_pruner->l1_selective_prune;
	ck_assert(l1->has_update_freq);
	ck_assert_uint_eq(l1->update_freq, 5);
	ck_assert(l1->has_n_out_of_m_type);
	ck_assert_int_eq(l1->n_out_of_m_type, AMCT__NOUT_OF_MTYPE__M8N4);
	ck_assert_ptr_null(c->prune_config->filter_pruner);

	/* proto2 default: an unset optional keeps its declared default and no has_. */
	c = (Amct__AMCTRetrainConfig *)PARSE_OK(&amct__amctretrain_config__descriptor,
						"prune_config { n_out_of_m_pruner { l1_selective_prune "
						"{ } } }",
						&a);
	ck_assert(!c->has_batch_num);
	l1 = c->prune_config->n_out_of_m_pruner->l1_selective_prune;
	ck_assert(!l1->has_n_out_of_m_type);
	ck_assert_int_eq(l1->n_out_of_m_type, AMCT__NOUT_OF_MTYPE__M4N2);
	arena_deinit(&a);
}
END_TEST

START_TEST(nicety_oneof)
{
	arena_t a;
	arena_init(&a, 0);
	const ProtobufCMessageDescriptor *d = &tensorflow__attr_value__descriptor;
	Tensorflow__AttrValue *v = (Tensorflow__AttrValue *)PARSE_OK(d, "s: \"x\" i: 5", &a);
	ck_assert_int_eq(v->value_case, TENSORFLOW__ATTR_VALUE__VALUE_I);
	ck_assert_int_eq(v->i, 5);

	v = (Tensorflow__AttrValue *)PARSE_OK(d, "list { i: 1 } list { i: 2 }", &a);
	ck_assert_int_eq(v->value_case, TENSORFLOW__ATTR_VALUE__VALUE_LIST);
	ck_assert_uint_eq(v->list->n_i, 2);

	v = (Tensorflow__AttrValue *)PARSE_OK(d, "list { i: 1 } s: \"abc\"", &a);
	ck_assert_int_eq(v->value_case, TENSORFLOW__ATTR_VALUE__VALUE_S);
	ck_assert_uint_eq(v->s.len, 3);

	/* Switching away from a message and back starts a fresh message, not a merge. */
	v = (Tensorflow__AttrValue *)PARSE_OK(d, "list { i: 1 } b: true list { i: 2 }", &a);
	ck_assert_int_eq(v->value_case, TENSORFLOW__ATTR_VALUE__VALUE_LIST);
	ck_assert_uint_eq(v->list->n_i, 1);
	ck_assert_int_eq(v->list->i[0], 2);

	/* A zero value still selects the member (oneof has presence). */
	v = (Tensorflow__AttrValue *)PARSE_OK(d, "f: 1.5 i: 0", &a);
	ck_assert_int_eq(v->value_case, TENSORFLOW__ATTR_VALUE__VALUE_I);
	ck_assert_int_eq(v->i, 0);
	buf_t b = pack(&v->base);
	ck_assert_uint_eq(b.n, 2); /* tag 3 varint, value 0 */
	free(b.p);
	buf_t w = write_text(&v->base);
	ck_assert_str_eq(w.p, "i: 0\n");
	free(w.p);
	arena_deinit(&a);
}
END_TEST

START_TEST(nicety_scalars)
{
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__TensorProto *t = (Tensorflow__TensorProto *)PARSE_OK(
		&tensorflow__tensor_proto__descriptor,
		"dtype: 3\n"
		"float_val: [1, 1.5, .5, 1e5, 1.5f, inf, -inf, infinity, -Infinity, NaN, -0x10, "
		"1E-2, 2.5F, 010, 1e+2, -0]\n"
		"bool_val: [true, false, t, f, True, False, 1, 0]\n"
		"int_val: [-2147483648, 2147483647, 0x7fffffff, -0x80000000, 017, -0, 0]\n"
		"int64_val: [-9223372036854775808, 0x7FFFFFFFFFFFFFFF]\n"
		"uint64_val: 0xffffffffffffffff uint32_val: 4294967295\n"
		"double_val: [0.1, 1e308, -1e-308, 5e-324]\n",
		&a);
	ck_assert_int_eq(t->dtype, TENSORFLOW__DATA_TYPE__DT_INT32);
	const float fv[] = {1, 1.5f, .5f, 1e5f, 1.5f, INFINITY, -INFINITY, INFINITY, -INFINITY,
			    NAN, -16, 1e-2f, 2.5f, 8, 100, -0.0f};
	ck_assert_uint_eq(t->n_float_val, sizeof(fv) / sizeof(fv[0]));
	for (size_t i = 0; i < t->n_float_val; i++) {
		if (isnan(fv[i]))
			ck_assert(isnan(t->float_val[i]));
		else
			ck_assert_msg(t->float_val[i] == fv[i] &&
					      signbit(t->float_val[i]) == signbit(fv[i]),
				      "float_val[%zu] = %g", i, (double)t->float_val[i]);
	}
	const int bv[] = {1, 0, 1, 0, 1, 0, 1, 0};
	ck_assert_uint_eq(t->n_bool_val, 8);
	for (int i = 0; i < 8; i++)
		ck_assert_int_eq(t->bool_val[i], bv[i]);
	const int32_t iv[] = {INT32_MIN, INT32_MAX, INT32_MAX, INT32_MIN, 15, 0, 0};
	ck_assert_uint_eq(t->n_int_val, 7);
	for (int i = 0; i < 7; i++)
		ck_assert_int_eq(t->int_val[i], iv[i]);
	ck_assert(t->int64_val[0] == INT64_MIN && t->int64_val[1] == INT64_MAX);
	ck_assert(t->uint64_val[0] == UINT64_MAX);
	ck_assert(t->uint32_val[0] == UINT32_MAX);
	ck_assert(t->double_val[0] == 0.1 && t->double_val[1] == 1e308);
	ck_assert(t->double_val[2] == -1e-308 && t->double_val[3] == 5e-324);

	/* Enums by name and number; proto2 enums too. */
	Amct__AttrProto *ap = (Amct__AttrProto *)PARSE_OK(&amct__attr_proto__descriptor,
							  "type: 5 type: FLOATS", &a);
	ck_assert(ap->has_type);
	ck_assert_int_eq(ap->type, AMCT__ATTR_PROTO__ATTR_TYPE__FLOATS);
	ap = (Amct__AttrProto *)PARSE_OK(&amct__attr_proto__descriptor, "type: 0x2", &a);
	ck_assert_int_eq(ap->type, AMCT__ATTR_PROTO__ATTR_TYPE__INT);
	arena_deinit(&a);
}
END_TEST

START_TEST(nicety_strings)
{
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__NodeDef *n = (Tensorflow__NodeDef *)PARSE_OK(
		&tensorflow__node_def__descriptor,
		"name: \"ab\" 'cd'\n  \"e\\x66\"  # concatenated across lines\n"
		"op: \"\\n\\r\\t\\\\\\'\\\"\\a\\b\\f\\v\\?\\101\\x41\\X4a\\7\\u00e9\\U0001F600"
		"\\ud83d\\ude00\"\n"
		"device: 'say \"hi\"'\n"
		"input: \"\"",
		&a);
	ck_assert_str_eq(n->name, "abcdef");
	ck_assert_str_eq(n->op, "\n\r\t\\'\"\a\b\f\v?AAJ\a\xc3\xa9\xf0\x9f\x98\x80"
				"\xf0\x9f\x98\x80");
	ck_assert_str_eq(n->device, "say \"hi\"");
	ck_assert_uint_eq(n->n_input, 1);
	ck_assert_str_eq(n->input[0], "");

	/* Bytes keep embedded NULs and high bytes. */
	Tensorflow__TensorProto *t = (Tensorflow__TensorProto *)PARSE_OK(
		&tensorflow__tensor_proto__descriptor,
		"tensor_content: \"a\\000b\\377\" \"\\0\" string_val: '' string_val: \"\\x0\"", &a);
	ck_assert_uint_eq(t->tensor_content.len, 5);
	ck_assert(memcmp(t->tensor_content.data, "a\0b\377\0", 5) == 0);
	ck_assert_uint_eq(t->n_string_val, 2);
	ck_assert_uint_eq(t->string_val[0].len, 0);
	ck_assert_uint_eq(t->string_val[1].len, 1);
	arena_deinit(&a);
}
END_TEST

START_TEST(nicety_maps)
{
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__FunctionDef *f = (Tensorflow__FunctionDef *)PARSE_OK(
		&tensorflow__function_def__descriptor,
		"ret { key: \"y\" value: \"id:0\" }\n"
		"ret: { value: \"z:0\", key: \"z\" }\n"
		"resource_arg_unique_id [ { key: 3 value: 4 }, { key: 5 value: 6 } ]\n"
		"attr { key: \"T\" value { type: DT_FLOAT } }",
		&a);
	ck_assert_uint_eq(f->n_ret, 2);
	ck_assert_str_eq(f->ret[1]->key, "z");
	ck_assert_str_eq(f->ret[1]->value, "z:0");
	ck_assert_uint_eq(f->n_resource_arg_unique_id, 2);
	ck_assert_uint_eq(f->resource_arg_unique_id[1]->key, 5);
	ck_assert_uint_eq(f->resource_arg_unique_id[1]->value, 6);
	ck_assert_int_eq(f->attr[0]->value->type, TENSORFLOW__DATA_TYPE__DT_FLOAT);
	arena_deinit(&a);
}
END_TEST

/* ---------------------------------------------------------------- writer */

START_TEST(writer_format)
{
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__GraphDef *g = (Tensorflow__GraphDef *)PARSE_OK(
		&tensorflow__graph_def__descriptor,
		"node { name: \"a\\tb\" op: \"Const\" input: \"x\" input: \"y\"\n"
		"  attr { key: \"value\" value { tensor { dtype: DT_FLOAT\n"
		"    float_val: [0.1, 1, 3.4028235e38, 1e-10, -0, nan, -inf]\n"
		"    double_val: [0.1, 1e100]\n"
		"    tensor_content: \"\\000\\001'\\\"\\\\\\n\\r\\t~\\177\\200\\377\" } } }\n"
		"  attr { key: \"z\" value { type: DT_INVALID } }\n"
		"  attr { key: \"zz\" value { } } }\n"
		"versions { }\n"
		"version: 0\n",
		&a);
	/* An enum value unknown to the descriptor is written as its number. */
	g->node[0]->attr[1]->value->type = 77;
	buf_t w = write_text(&g->base);
	ck_assert_str_eq(w.p, "node {\n"
			      "  name: \"a\\tb\"\n"
			      "  op: \"Const\"\n"
			      "  input: \"x\"\n"
			      "  input: \"y\"\n"
			      "  attr {\n"
			      "    key: \"value\"\n"
			      "    value {\n"
			      "      tensor {\n"
			      "        dtype: DT_FLOAT\n"
			      "        tensor_content: \"\\000\\001\\'\\\"\\\\\\n\\r\\t~\\177\\200\\377\"\n"
			      "        float_val: 0.1\n"
			      "        float_val: 1\n"
			      "        float_val: 3.4028235e+38\n"
			      "        float_val: 1e-10\n"
			      "        float_val: -0\n"
			      "        float_val: nan\n"
			      "        float_val: -inf\n"
			      "        double_val: 0.1\n"
			      "        double_val: 1e+100\n"
			      "      }\n"
			      "    }\n"
			      "  }\n"
			      "  attr {\n"
			      "    key: \"z\"\n"
			      "    value {\n"
			      "      type: 77\n"
			      "    }\n"
			      "  }\n"
			      "  attr {\n"
			      "    key: \"zz\"\n"
			      "    value {\n"
			      "    }\n"
			      "  }\n"
			      "}\n"
			      "versions {\n"
			      "}\n");
	free(w.p);

	/* proto2: has_ decides, even for false/zero; unset optionals are omitted. */
	Amct__AMCTRetrainConfig *c = (Amct__AMCTRetrainConfig *)PARSE_OK(
		&amct__amctretrain_config__descriptor,
		"retrain_weight_quant_config { channel_wise: false }\n"
		"prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 } } }\n"
		"batch_num: 0",
		&a);
	w = write_text(&c->base);
	ck_assert_str_eq(w.p, "batch_num: 0\n"
			      "retrain_weight_quant_config {\n"
			      "  channel_wise: false\n"
			      "}\n"
			      "prune_config {\n"
			      "  n_out_of_m_pruner {\n"
			      "    l1_selective_prune {\n"
			      "      n_out_of_m_type: M4N2\n"
			      "    }\n"
			      "  }\n"
			      "}\n");
	free(w.p);
	arena_deinit(&a);
}
END_TEST

START_TEST(writer_shortest_floats)
{
	/* Every float written must read back to identical bits; probe a spread of values. */
	arena_t a;
	arena_init(&a, 0);
	Tensorflow__TensorProto t = TENSORFLOW__TENSOR_PROTO__INIT;
	enum { N = 20000 };
	float *fv = arena_alloc(&a, N * sizeof(float));
	double *dv = arena_alloc(&a, N * sizeof(double));
	uint32_t x = 12345;
	uint64_t y = 987654321;
	for (int i = 0; i < N; i++) {
		x = x * 1664525u + 1013904223u;
		y = y * 6364136223846793005ull + 1442695040888963407ull;
		uint32_t fb = x;
		uint64_t db = y;
		if ((fb & 0x7f800000u) == 0x7f800000u)
			fb &= ~0x40000000u; /* avoid NaN payloads: text has one NaN */
		if ((db & 0x7ff0000000000000ull) == 0x7ff0000000000000ull)
			db &= ~0x4000000000000000ull;
		memcpy(&fv[i], &fb, 4);
		memcpy(&dv[i], &db, 8);
	}
	t.n_float_val = N;
	t.float_val = fv;
	t.n_double_val = N;
	t.double_val = dv;
	buf_t w = write_text(&t.base);
	Tensorflow__TensorProto *r = (Tensorflow__TensorProto *)parse_ok(
		&tensorflow__tensor_proto__descriptor, w.p, w.n, &a);
	ck_assert_uint_eq(r->n_float_val, N);
	ck_assert_uint_eq(r->n_double_val, N);
	ck_assert(memcmp(r->float_val, fv, N * sizeof(float)) == 0);
	ck_assert(memcmp(r->double_val, dv, N * sizeof(double)) == 0);
	free(w.p);
	arena_deinit(&a);
}
END_TEST

START_TEST(writer_eio)
{
	arena_t a;
	arena_init(&a, 0);
	ProtobufCMessage *m = PARSE_OK(&tensorflow__graph_def__descriptor,
				       "node { name: \"a\" op: \"b\" }", &a);
	FILE *f = fopen("/dev/full", "w");
	ck_assert_ptr_nonnull(f);
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_int_eq(pbtext_write(m, f, &e), SD_EIO);
	ck_assert_int_eq(e.code, SD_EIO);
	ck_assert_ptr_nonnull(strstr(e.msg, "writing text format"));
	fclose(f);
	arena_deinit(&a);
}
END_TEST

/* ---------------------------------------------------------------- scale */

START_TEST(scale_many_nodes)
{
	/* 100k nodes and a 1M-element list: repeated growth must stay linear. */
	enum { NODES = 100000, FLOATS = 1000000 };
	size_t cap = (size_t)NODES * 120 + (size_t)FLOATS * 8 + 256, n = 0;
	char *t = malloc(cap);
	ck_assert_ptr_nonnull(t);
	for (int i = 0; i < NODES; i++)
		n += (size_t)snprintf(t + n, cap - n,
				      "node { name: \"n%d\" op: \"Const\" input: \"a\" "
				      "attr { key: \"dtype\" value { type: DT_FLOAT } } }\n",
				      i);
	n += (size_t)snprintf(t + n, cap - n,
			      "node { name: \"big\" attr { key: \"value\" value { tensor { "
			      "float_val: [");
	for (int i = 0; i < FLOATS; i++)
		n += (size_t)snprintf(t + n, cap - n, i ? ",%d" : "%d", i % 1000);
	n += (size_t)snprintf(t + n, cap - n, "] } } } }\n");

	arena_t a;
	arena_init(&a, 0);
	Tensorflow__GraphDef *g =
		(Tensorflow__GraphDef *)parse_ok(&tensorflow__graph_def__descriptor, t, n, &a);
	ck_assert_uint_eq(g->n_node, NODES + 1);
	ck_assert_str_eq(g->node[NODES - 1]->name, "n99999");
	Tensorflow__TensorProto *tp = g->node[NODES]->attr[0]->value->tensor;
	ck_assert_uint_eq(tp->n_float_val, FLOATS);
	ck_assert(tp->float_val[FLOATS - 1] == 999.0f);
	/* Arena use stays within a small multiple of the payload (geometric growth). */
	ck_assert_uint_lt(a.used, 120u << 20);
	free(t);
	arena_deinit(&a);
}
END_TEST

int main(void)
{
	const tu_case_t cases[] = {
		{"roundtrip", .timeout = 120, .loop = roundtrip_vs_protoc,
		 .loop_n = sizeof(rt_cases) / sizeof(rt_cases[0])},
		{"errors",
		 TU_TESTS(error_defaults, error_field_cb_veto, error_nesting, error_nomem),
		 .timeout = 60, .loop = error_messages,
		 .loop_n = sizeof(err_cases) / sizeof(err_cases[0])},
		{"niceties",
		 TU_TESTS(nicety_comments_separators_colon, nicety_lists, nicety_last_wins_and_merge,
			  nicety_oneof, nicety_scalars, nicety_strings, nicety_maps)},
		{"writer", TU_TESTS(writer_format, writer_shortest_floats, writer_eio),
		 .timeout = 60},
		{"scale", TU_TESTS(scale_many_nodes), .timeout = 300},
		{NULL},
	};
	return tu_main("pbtext", cases);
}
