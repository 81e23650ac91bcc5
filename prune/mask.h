/*
 * prune_mask: the 2:4 rule of SPEC section 4, bit-exact, for the four float types.
 *
 * Glossary: the prune axis has C elements; it is split into groups of 4 from index 0,
 * the last group padded with zeros. In a group the 2 elements of largest |w| are kept;
 * on equal |w| the lower index wins (so a real element beats padding). A tensor of
 * shape dims is viewed as [outer, C, inner] around the axis; a group is 4 elements
 * `inner` apart.
 *
 * Magnitudes are compared on the IEEE bit pattern with the sign cleared, which orders
 * exactly like |w| for every non-NaN value of every float type and makes the kernel
 * dtype-agnostic. Reentrant; no allocation.
 */
#ifndef PRUNE_MASK_H
#define PRUNE_MASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/sd_err.h"
#include "prune/progress.h"
#include "prune/tensor.h"

/*
 * Computes keep[i] = 1 for kept elements, 0 for pruned ones, along `axis` of w.
 * Returns 0, SD_EUSAGE for a bad axis, or SD_EMODEL naming `layer` when w holds a NaN
 * (the message gives the flat index of the first one). On error keep[] is unspecified.
 */
SD_MUST_CHECK int prune_mask_2of4(const prune_tensor_t *w, int axis, uint8_t *keep,
				  const char *layer, sd_error_t *e);

/* What applying a mask changes: weights it sets to zero (non-zero before), and zeros
 * in the result (including weights that were zero already). */
typedef struct prune_mask_counts {
	size_t zeroed;
	size_t zeros;
} prune_mask_counts_t;

/*
 * Turns keep (one byte per element of w, 0 or 1) into the mask a stage writes out:
 * bit i % 8 of bits[i / 8] (w->n bits, (w->n + 7) / 8 bytes) is set for an element
 * that is kept and non-zero, and keep[i] is rewritten the same way (a kept zero is
 * written unchanged either way, so keep then marks exactly the result's non-zeros).
 * c receives the counts. w is only read. Returns non-zero when w holds a NaN (checked
 * in the same pass, for a mask that did not come from the 2:4 kernel).
 */
int prune_mask_bits(const prune_tensor_t *w, uint8_t *keep, uint8_t *bits,
		    prune_mask_counts_t *c);

/*
 * prune_mask_2of4 then prune_mask_bits, piece by piece, so each piece of w is still in
 * cache when the second pass reads it: what prune and export run for a fresh mask.
 * Returns as prune_mask_2of4.
 */
SD_MUST_CHECK int prune_mask_2of4_bits(const prune_tensor_t *w, int axis, uint8_t *keep,
				       uint8_t *bits, prune_mask_counts_t *c, const char *layer,
				       sd_error_t *e);

/*
 * Whether prune_mask_2of4_apply takes w along axis: a valid view whose group of 4 rows
 * (4 x the elements after the axis) fits the scratch it keeps on its stack.
 */
bool prune_mask_fusable(const prune_tensor_t *w, int axis);

/*
 * The fresh 2:4 mask computed and applied in one step, for elements [first, first + n)
 * of w (prune_mask_fusable along axis): dst (n elements, no alignment) receives exactly
 * what prune_mask_2of4_bits then prune_mask_apply_bits would write there, from the
 * groups that hold those elements, read where they lie (a group across a piece's end
 * is computed for both pieces, identically). So a weight is read once, as the save
 * writes it, instead of once for its mask and again for the save. Adds the piece's
 * counts to *c. Returns non-zero when a group it read holds a NaN. Reentrant: the
 * pieces of one weight may be filled on several threads at once.
 */
int prune_mask_2of4_apply(const prune_tensor_t *w, int axis, size_t first, size_t n,
			  void *dst, prune_mask_counts_t *c);

/*
 * The widest vectors (in bytes: 16 or 32) prune_mask_2of4_apply may use, for tests and
 * benchmarks that compare the forms (results are identical): bytes 0 leaves the cap,
 * 16 or 32 sets it (process-wide). Returns the width in effect: 32 only where the CPU
 * has AVX2 and the cap allows it.
 */
int prune_mask_vector_width(int bytes);

/*
 * One weight of a batch for prune_mask_batch: its mask is either the fresh 2:4 mask
 * (stored NULL) or a stored one, a tensor of w's dtype and shape holding 0 and 1 (a
 * frozen mask variable; -0 counts as 0), which is checked and turned into bits.
 */
typedef struct prune_mask_job {
	const prune_tensor_t *w;
	const prune_tensor_t *stored;
	const char *stored_name;    /* the stored mask's node, for messages */
	int axis;
	const char *layer;
	/* A fresh mask that the save computes as it writes w (prune_mask_run_fill), so w
	 * is read once: the run's threads leave it, and bits is not used (may be NULL).
	 * Only in a run; requires prune_mask_fusable. */
	bool at_save;
	uint8_t *bits;              /* (w->n + 7) / 8 bytes, filled */
	prune_mask_counts_t counts; /* filled */
	bool is_2of4;               /* filled: whether w written with this mask is 2:4 */
} prune_mask_job_t;

/*
 * Computes every job's bits (keep bytes in scratch of its own), on up to `threads`
 * threads including the caller's: the layers of a model are independent, and a stage
 * has nothing else to do until its masks exist. threads <= 0 picks the number: the
 * online CPUs (at most 8), or 1 when the weights come to less than a few MB (starting
 * threads would cost more than it saves). Fresh masks run prune_mask_2of4_bits; stored
 * ones are refused when w holds a NaN or the mask a value other than 0 and 1. Returns
 * 0, or the error of the first failing job in array order (SD_EMODEL naming its layer,
 * SD_ENOMEM).
 */
SD_MUST_CHECK int prune_mask_batch(prune_mask_job_t *jobs, size_t n, int threads,
				   const prune_progress_t *progress, sd_error_t *e);

/*
 * prune_mask_batch in two steps, so the caller can go on (write out the layers whose
 * masks are done) while the others are computed: prune_mask_run_start runs the jobs on
 * threads of its own (as many as prune_mask_batch would use in all; the jobs run
 * before it returns if no thread can be started); prune_mask_run_wait returns once job
 * i is done (any thread; a failed job's bits are unspecified); prune_mask_run_end waits
 * for every job, frees the run and returns as prune_mask_batch. jobs must stay put
 * until the end, which must come on every path. start returns 0 with *out, or
 * SD_ENOMEM.
 */
typedef struct prune_mask_run prune_mask_run_t;
SD_MUST_CHECK int prune_mask_run_start(prune_mask_job_t *jobs, size_t n, int threads,
				       const prune_progress_t *progress, prune_mask_run_t **out,
				       sd_error_t *e);
void prune_mask_run_wait(prune_mask_run_t *r, size_t i);
/*
 * dst := elements [first, first + n) of job i's weight, masked (src points at element
 * first of the weight's bytes): from its bits, once job i is done, or, for an at_save
 * job, computed here (prune_mask_2of4_apply) and counted for the end. Any thread; each
 * piece once per run (a piece counted twice would skew the counts). At the end an
 * at_save job whose pieces did not all come (the save failed, or came after the end)
 * is counted again, whole.
 */
void prune_mask_run_fill(prune_mask_run_t *r, size_t i, const void *src, size_t first,
			 size_t n, void *dst);
const prune_mask_job_t *prune_mask_run_job(const prune_mask_run_t *r, size_t i);
/* Not SD_MUST_CHECK: a path that already failed ends the run for its threads only. */
int prune_mask_run_end(prune_mask_run_t *r, sd_error_t *e);

/*
 * dst := src * mask for n elements of dtype starting at element `first` of a tensor
 * whose mask is bits (from prune_mask_bits); src and dst point at element `first` and
 * need no alignment. first must be a multiple of 8. A masked element becomes the zero
 * with its own sign, exactly what TensorFlow's Mul by a 0/1 mask gives for finite w;
 * kept elements are copied bit for bit.
 */
void prune_mask_apply_bits(int dtype, const void *src, void *dst, const uint8_t *bits,
			   size_t first, size_t n);

/*
 * Whether keep (one byte per element of w's shape, non-zero = kept) keeps at most 2
 * of every group of 4 along axis: with keep from prune_mask_bits, whether the written
 * weight is 2:4. *zeros (may be NULL) gets the number of elements not kept.
 */
int prune_mask_keep_is_2of4(const prune_tensor_t *w, int axis, const uint8_t *keep,
			    size_t *zeros);

/*
 * Reports whether t is 2:4 along axis: every group of 4 holds at most 2 non-zeros
 * (-0 counts as zero). *zeros (may be NULL) gets the number of zero elements.
 * Returns 1 or 0; a bad axis returns 0.
 */
int prune_mask_is_2of4(const prune_tensor_t *t, int axis, size_t *zeros);

#endif
