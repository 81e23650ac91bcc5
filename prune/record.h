/*
 * prune_record: the AMCT-compatible record file (SPEC section 7).
 *
 * One `prune_record { selective_prune { name: L attr {...} ... } }` per pruned layer.
 * Attributes: mask_shape (INTS, the weight shape, as AMCT writes it), prune_axis (INT),
 * update_freq (INT), n_out_of_m_type (STRING "M4N2"), layer_type, dtype, weight_input
 * (what the mask multiplies: the layer's original input 1, or its Cast's original input
 * 0), cast (only for a layer reading its weight through a Cast: that Cast), weight (the
 * Const/variable it traces to), scope (the "L/sparsityd" prefix of every inserted node),
 * mask_var, step_var, update_op (STRINGs). Export reads these back to find and undo the
 * insertion.
 */
#ifndef PRUNE_RECORD_H
#define PRUNE_RECORD_H

#include <stdio.h>

#include "common/arena.h"
#include "common/sd_err.h"
#include "prune/result.h"

/* What export needs from one record entry. Strings live in the arena. */
typedef struct prune_record_entry {
	const char *name;
	const char *layer_type;
	const char *weight_input;
	const char *cast;          /* NULL when the layer reads its weight directly */
	const char *scope;
	int rank;
	int64_t shape[4];
	int axis;
	uint32_t update_freq;
} prune_record_entry_t;

/*
 * Parses a record file and checks each entry carries what export needs (mask_shape,
 * prune_axis, update_freq, layer_type, weight_input; scope defaults to
 * "<name>/sparsityd", cast to none). Returns 0 with the entries, or SD_ERECORD naming
 * the file and the layer (or line:col for syntax), SD_ENOMEM.
 */
SD_MUST_CHECK int prune_record_read(const char *text, size_t len, const char *file,
				    arena_t *a, prune_record_entry_t **out, size_t *n,
				    sd_error_t *e);

/* Writes the record of the pruned layers of res to f. Returns 0, SD_EIO or SD_ENOMEM. */
SD_MUST_CHECK int prune_record_write(const prune_result_t *res, arena_t *a, FILE *f,
				     sd_error_t *e);

#endif
