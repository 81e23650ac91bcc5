/*
 * pbtext: protobuf text format for any protobuf-c message, driven by its descriptor.
 *
 * One codec serves the config file, the record file and .pbtxt graphs. The reader
 * accepts what protobuf's own TextFormat parser accepts for our schemas: `#` comments,
 * quoted strings with C escapes (adjacent strings concatenate), enums by name or
 * number, `:` optional before `{`, `{}` or `<>` message delimiters, `[a, b]` lists for
 * repeated fields, `,`/`;` separators, and map fields as repeated entries. A singular
 * scalar given twice keeps the last value; a singular message given twice is merged.
 * Every error carries "file:line:col". The writer emits text that protoc's parser reads
 * back to the same message; fields unknown to the descriptor (binary-only) are not
 * written.
 *
 * Memory: everything the reader builds comes from the caller's arena and lives as long
 * as it. Thread safety: reentrant.
 */
#ifndef PBTEXT_H
#define PBTEXT_H

#include <protobuf-c/protobuf-c.h>
#include <stdio.h>

#include "common/arena.h"
#include "common/sd_err.h"

/*
 * Optional hook called for every field as it is read, before its value, so a caller
 * can refuse a field with a precise message at its exact position (e.g. quantization
 * fields in a prune config) or remember where a field was written for later semantic
 * errors. msg is the message the field is being set on (for a repeated field, its
 * count so far tells which element comes next); line/col are 1-based and point at the
 * field name. Returns NULL to accept, or a message (static or arena-owned) to refuse.
 */
typedef const char *(*pbtext_field_cb)(void *ud, const ProtobufCMessage *msg,
				       const ProtobufCFieldDescriptor *field, int line,
				       int col);

typedef struct pbtext_opts {
	const char *filename; /* used in messages; NULL means "<input>" */
	int err_code;         /* code to fail with on a syntax/schema error, e.g. SD_ECONFIG */
	pbtext_field_cb field_cb;
	void *field_ud;
} pbtext_opts_t;

/*
 * Parses len bytes of text into a new message of type desc allocated from a.
 * Returns 0 and sets *out, or opts->err_code (SD_ENOMEM when the arena is exhausted)
 * with e->line/col/msg set. Nesting deeper than 100 levels is an error, not a crash.
 */
SD_MUST_CHECK int pbtext_parse(const ProtobufCMessageDescriptor *desc, const char *text,
			       size_t len, arena_t *a, const pbtext_opts_t *opts,
			       ProtobufCMessage **out, sd_error_t *e);

/* Writes msg in text format to f. Returns 0 or SD_EIO (write failure). */
SD_MUST_CHECK int pbtext_write(const ProtobufCMessage *msg, FILE *f, sd_error_t *e);

#endif
