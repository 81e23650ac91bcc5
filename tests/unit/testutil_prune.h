/*
 * Helpers shared by the engine's unit suites (they link prune_dep): reading test data
 * files, loading and saving models, packing messages, and a fresh arena per test.
 * The store and API suites link the store, not the engine, and include testutil.h only.
 * Header-only so each suite stays a single translation unit.
 */
#ifndef TESTUTIL_PRUNE_H
#define TESTUTIL_PRUNE_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/sd_err.h"
#include "prune/graph.h"
#include "prune/record.h"
#include "testutil.h"

/* Reads SRCDIR/tests/unit/data/<rel> into an arena buffer; *len gets its size. */
static inline char *tu_read(arena_t *a, const char *rel, size_t *len)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/tests/unit/data/%s", SRCDIR, rel);
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = arena_alloc(a, (size_t)n + 1);
	ck_assert(buf != NULL);
	ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = 0;
	fclose(f);
	*len = (size_t)n;
	return buf;
}

/* Loads a test model; fails the test with the engine's message if it does not load. */
static inline prune_graph_t *tu_graph(arena_t *a, const char *rel)
{
	size_t len;
	char *buf = tu_read(a, rel, &len);
	prune_graph_t *g = NULL;
	sd_error_t e;
	sd_err_clear(&e);
	int rc = prune_graph_load((uint8_t *)buf, len, rel, PRUNE_FMT_AUTO, 1u << 30, a, &g,
				  &e);
	ck_assert_msg(rc == 0, "load %s: %s", rel, e.msg);
	return g;
}

/* Packs a message into an arena buffer. */
static inline uint8_t *tu_pack(arena_t *a, const ProtobufCMessage *m, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = arena_alloc(a, *len + 1);
	ck_assert(buf != NULL);
	protobuf_c_message_pack(m, buf);
	return buf;
}

/* Saves g in fmt to memory. */
static inline char *tu_save(prune_graph_t *g, prune_format_t fmt, size_t *len)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	sd_error_t e;
	ck_assert_int_eq(prune_graph_save(g, fmt, f, &e), 0);
	fclose(f);
	return buf; /* caller frees */
}

/* The arena A is fresh in every test of a case whose fixture is TU_ARENA. */
static arena_t A __attribute__((unused));
static void tu_arena_setup(void) { arena_init(&A, 0); }
static void tu_arena_teardown(void) { arena_deinit(&A); }

/* The record of an insert result, written as text and read back (into A), as a user's
 * record file would be. */
static inline void tu_record_roundtrip(const prune_result_t *r, prune_record_entry_t **rec,
				       size_t *n)
{
	sd_error_t e;
	char *text = NULL;
	size_t len;
	FILE *f = open_memstream(&text, &len);
	ck_assert_int_eq(prune_record_write(r, &A, f, &e), 0);
	fclose(f);
	char *copy = arena_strndup(&A, text, len);
	free(text);
	ck_assert_msg(prune_record_read(copy, len, "r.txt", &A, rec, n, &e) == 0, "%s", e.msg);
}
#define TU_ARENA .setup = tu_arena_setup, .teardown = tu_arena_teardown

#define ck_assert_msg_has(e, needle)                                                     \
	ck_assert_msg(strstr((e).msg, (needle)) != NULL, "message '%s' lacks '%s'", (e).msg, \
		      (needle))

#endif
