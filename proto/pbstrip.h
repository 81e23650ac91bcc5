/*
 * pbstrip: a binary TensorFlow model without its large weights, for zero-copy loading.
 *
 * protobuf-c copies every bytes field when it unpacks, which would hold each weight
 * twice (the input and the copy). This module rewrites the binary model without the
 * large NodeDef.attr[].value.tensor.tensor_content payloads and records where each one
 * lies in the input, so the loader (prune/graph.c) unpacks a small message and points
 * those tensor_content fields straight into the input buffer. It works on the wire
 * format alone, beside the encoder (pbwire), and knows nothing of the engine.
 *
 * Memory: everything it returns is in the caller's arena. Thread safety: reentrant.
 */
#ifndef PBSTRIP_H
#define PBSTRIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/sd_err.h"

/* Payloads smaller than this are left in place: the bookkeeping would cost more. */
#define PBSTRIP_MIN_BYTES 4096

/* One stripped payload: node ordinal, attr ordinal within it, and the bytes. */
typedef struct pbstrip_ref {
	size_t node;
	size_t attr;
	size_t off;
	size_t len;
} pbstrip_ref_t;

/*
 * Copies the binary GraphDef (meta = false) or MetaGraphDef (meta = true) in buf into
 * *out without the large tensor_content payloads, listing them in *refs (both in the
 * arena). Returns 0, SD_ENOMEM, or PBSTRIP_MALFORMED when the wire format is malformed
 * or a payload's place is ambiguous (a repeated entry value or AttrValue.tensor, or
 * tensor beside another member of the AttrValue oneof, which protobuf merges): the
 * caller then unpacks the plain way, which reports a malformed model's error.
 */
#define PBSTRIP_MALFORMED 1 /* positive: never an SD_E* code */
SD_MUST_CHECK int pbstrip_graph(const uint8_t *buf, size_t len, bool meta, arena_t *a, uint8_t **out,
		  size_t *out_len, pbstrip_ref_t **refs, size_t *n_refs, sd_error_t *e);

#endif
