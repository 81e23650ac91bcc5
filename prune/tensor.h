/*
 * prune_tensor: weights in and out of TensorFlow TensorProto, for the four float types.
 *
 * Input may be stored in tensor_content, in the typed value fields (float_val,
 * double_val, half_val for float16 and bfloat16), in the splat form (fewer values than
 * elements: the last value repeats, as TensorFlow defines it) or not at all (zeros).
 * Output always uses tensor_content, little-endian, with the typed fields cleared.
 * float16 and bfloat16 elements are kept as their raw 16-bit patterns.
 *
 * Memory: tensor data comes from the caller's arena, or points straight into the
 * TensorProto's tensor_content when the weight is stored there (no copy).
 */
#ifndef PRUNE_TENSOR_H
#define PRUNE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/sd_err.h"
#include "proto/tf_types.pb-c.h"

#define PRUNE_MAX_RANK 8

/*
 * Tensor data is read where it lies in the mapped model, at any byte offset: element
 * access goes through these byte-aligned types (plain loads on x86-64 and arm64).
 */
typedef int16_t prune_i16u_t __attribute__((aligned(1)));
typedef int32_t prune_i32u_t __attribute__((aligned(1)));
typedef int64_t prune_i64u_t __attribute__((aligned(1)));
typedef uint16_t prune_u16u_t __attribute__((aligned(1)));
typedef uint32_t prune_u32u_t __attribute__((aligned(1)));
typedef uint64_t prune_u64u_t __attribute__((aligned(1)));

typedef struct prune_tensor {
	int dtype;               /* TENSORFLOW__DATA_TYPE__DT_FLOAT / DOUBLE / HALF / BFLOAT16 */
	int rank;
	int64_t dims[PRUNE_MAX_RANK];
	size_t n;                /* number of elements = product of dims */
	void *data;              /* n elements of prune_dtype_size(dtype) bytes */
} prune_tensor_t;

/* Element size for the four float types, 0 for any other dtype. Reentrant. */
size_t prune_dtype_size(int dtype);

/* "float32", "float64", "float16", "bfloat16", or the DataType enum name in lower case
 * without "dt_" for others ("int32"), "unknown" if not a DataType. Never NULL. */
const char *prune_dtype_name(int dtype);

/*
 * Checks a shape and returns its element count in *n: every dim >= 0, rank <=
 * PRUNE_MAX_RANK, no overflow, count <= max_elems. Returns 0 or SD_EMODEL / SD_ETOOBIG
 * naming `node`.
 */
SD_MUST_CHECK int prune_shape_count(const Tensorflow__TensorShapeProto *shape,
				    size_t max_elems, const char *node, size_t *n,
				    sd_error_t *e);

/*
 * Decodes tp (a float tensor of the four types) into out. The shape is checked as by
 * prune_shape_count, and the stored bytes/values must agree with it. Returns 0, or
 * SD_EMODEL naming `node` (bad dtype, size mismatch, more values than elements),
 * SD_ETOOBIG, SD_ENOMEM.
 */
SD_MUST_CHECK int prune_tensor_read(const Tensorflow__TensorProto *tp, size_t max_elems,
				    const char *node, arena_t *a, prune_tensor_t *out,
				    sd_error_t *e);

/*
 * Stores t into tp as tensor_content (referencing t->data, which must outlive tp),
 * sets dtype and shape (allocated from a), clears typed value fields. Returns 0,
 * SD_ENOMEM, or SD_EINTERNAL for a rank outside 0..PRUNE_MAX_RANK (a caller bug).
 */
SD_MUST_CHECK int prune_tensor_write(Tensorflow__TensorProto *tp, const prune_tensor_t *t,
				     arena_t *a, sd_error_t *e);

/* float16 / bfloat16 bit patterns to and from float (round to nearest even). */
float prune_half_to_float(uint16_t h);
uint16_t prune_float_to_half(float f);
float prune_bf16_to_float(uint16_t h);
uint16_t prune_float_to_bf16(float f);

#endif
