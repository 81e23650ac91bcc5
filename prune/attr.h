/*
 * prune_attr: building AttrValues and small constant tensors for nodes a stage adds.
 *
 * Every constructor allocates from the arena and returns NULL when it is exhausted;
 * callers pass the results straight into a node's attribute list and check them once,
 * when the node is added (insert.c's mk_named fails the stage with SD_ENOMEM if any
 * value is NULL), rather than after every attribute.
 */
#ifndef PRUNE_ATTR_H
#define PRUNE_ATTR_H

#include <stdbool.h>
#include <stdint.h>

#include "common/arena.h"
#include "proto/tf_types.pb-c.h"

Tensorflow__AttrValue *prune_attr_type(arena_t *a, int dtype);
Tensorflow__AttrValue *prune_attr_bool(arena_t *a, bool b);
Tensorflow__AttrValue *prune_attr_int(arena_t *a, int64_t i);
Tensorflow__AttrValue *prune_attr_str(arena_t *a, const char *s);
Tensorflow__AttrValue *prune_attr_shape(arena_t *a, const int64_t *dims, int rank);
/* An empty list(...) attribute, e.g. VarHandleOp's allowed_devices. */
Tensorflow__AttrValue *prune_attr_empty_list(arena_t *a);

/* A TensorShapeProto with the given dims (rank 0 = scalar). */
Tensorflow__TensorShapeProto *prune_shape_new(arena_t *a, const int64_t *dims, int rank);

/* Tensor attributes: int32 values of shape dims (rank 0 = one scalar), an int64 scalar,
 * and a splat of a float value in dtype (one stored value filling `dims`, as TensorFlow
 * allows). prune_attr_splat also returns NULL for a dtype other than float, double,
 * half and bfloat16; its callers pass a layer's dtype, which layer discovery checked. */
Tensorflow__AttrValue *prune_attr_i32(arena_t *a, const int32_t *v, const int64_t *dims,
				      int rank);
Tensorflow__AttrValue *prune_attr_i64_scalar(arena_t *a, int64_t v);
Tensorflow__AttrValue *prune_attr_splat(arena_t *a, int dtype, double v, const int64_t *dims,
					int rank);

#endif
