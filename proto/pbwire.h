/*
 * pbwire: protobuf binary encoding of any protobuf-c message, streamed to a FILE, byte
 * for byte what protobuf_c_message_pack() produces (field order, presence rules and
 * unknown fields included).
 *
 * Why not protobuf-c's protobuf_c_message_pack_to_buffer(): before it writes a nested
 * message it computes that message's size, at every level, so a dimension inside a
 * shape inside a tensor inside an attribute inside a node of a graph is measured five
 * times, and every tag goes through a callback. Saving a graph is half of what an
 * insert costs. Here one pass measures every nested message once, into a table in the
 * order the write pass will meet them, and the write pass fills a 1 MiB block that the
 * FILE gets whole; bytes fields of a block or more (weights) go to the FILE directly, in
 * block-sized writes.
 *
 * Filled fields (below) of 8 MiB or more in all are produced ahead of the writer by up
 * to 3 helper threads (one fewer than the online CPUs), in the order the writer needs
 * them, so computing a masked weight overlaps writing the one before it.
 *
 * Memory: the size table (4 bytes per nested message), the list of filled pieces
 * (24 bytes per MiB filled), the block and, with helpers, 8 blocks: all freed before
 * return. Thread safety: reentrant; fill functions run on helper threads.
 */
#ifndef PBWIRE_H
#define PBWIRE_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/sd_err.h"

/*
 * A bytes field whose value pbwire asks for as it writes, instead of copying it from
 * memory (a weight masked on its way out): fill(ud, out, off, n) puts bytes
 * [off, off + n) of the value in out. off is a multiple of PBWIRE_FILL_STEP and n is
 * PBWIRE_FILL_STEP except for the last piece. The field is matched by address; its
 * len is the value's length and its data is not read.
 */
#define PBWIRE_FILL_STEP ((size_t)1 << 20)

typedef struct pbwire_fill {
	const ProtobufCBinaryData *field;
	void (*fill)(const void *ud, uint8_t *out, size_t off, size_t n);
	const void *ud;
} pbwire_fill_t;

/*
 * Writes msg to f and flushes f, so a full disk is reported here, not at fclose; the
 * n_fills fields in fills (may be NULL when 0) are produced by their fill functions.
 * Fails with SD_ETOOBIG when the encoding would exceed protobuf's 2 GiB message limit
 * (nothing is written then), SD_ENOMEM, or SD_ENOSPACE/SD_EIO when writing fails.
 */
SD_MUST_CHECK int pbwire_write(const ProtobufCMessage *msg, const pbwire_fill_t *fills,
			       size_t n_fills, FILE *f, sd_error_t *e);

/* Bytes the base-128 varint encoding of v takes (1 to 10). */
static inline size_t pbwire_varint_size(uint64_t v)
{
	return (size_t)(64 - __builtin_clzll(v | 1) + 6) / 7;
}

/* Writes v at out as a base-128 varint; returns the bytes written. */
static inline size_t pbwire_varint_put(uint8_t *out, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		out[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (uint8_t)v;
	return n;
}

/* Reads a base-128 varint at p[*at], advancing *at; false when it runs past len or is
 * longer than 10 bytes. */
static inline bool pbwire_varint_get(const uint8_t *p, size_t len, size_t *at, uint64_t *v)
{
	*v = 0;
	for (int shift = 0; shift < 64 && *at < len; shift += 7) {
		uint8_t b = p[(*at)++];
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return true;
	}
	return false;
}

/*
 * How deep messages may nest in a binary input: protobuf's own default recursion limit,
 * and the text reader's (pbtext).
 */
#define PBWIRE_MAX_DEPTH 100

/*
 * Checks, before anything is unpacked, that no message in buf (a binary d) nests deeper
 * than PBWIRE_MAX_DEPTH levels. protobuf-c's unpacker recurses once per level with no
 * limit, so a 50 KB input nested a few thousand levels deep would overflow the stack;
 * this walk is iterative and its state is a fixed array. Only fields the descriptor
 * declares as messages are followed (unknown fields stay bytes in protobuf-c too).
 * Returns 0 when the input is well formed and within the limit, or err_code with a
 * message naming the byte offset where the limit was crossed or the wire format broken
 * (field number 0 or over 2^29 - 1, a truncated key or value, a group).
 */
SD_MUST_CHECK int pbwire_check_depth(const ProtobufCMessageDescriptor *d, const uint8_t *buf,
				     size_t len, int err_code, sd_error_t *e);

/* Bytes one element of a field of type t takes in a protobuf-c struct or array. */
size_t pbwire_elem_size(ProtobufCType t);

/*
 * Whether protobuf-c's packer writes the singular (not repeated) field f of msg: a oneof
 * member when selected, a proto2 optional when set, a proto3 field when not zero/empty,
 * a required field always.
 */
bool pbwire_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f);

#endif
