/*
 * prune_attr: AttrValue and TensorProto constructors (see attr.h).
 */
#include "prune/attr.h"

#include <string.h>

#include "prune/tensor.h"

static Tensorflow__AttrValue *attr_new(arena_t *a, Tensorflow__AttrValue__ValueCase c)
{
	Tensorflow__AttrValue *v = arena_alloc(a, sizeof(*v));
	if (v) {
		tensorflow__attr_value__init(v);
		v->value_case = c;
	}
	return v;
}

Tensorflow__AttrValue *prune_attr_type(arena_t *a, int dtype)
{
	Tensorflow__AttrValue *v = attr_new(a, TENSORFLOW__ATTR_VALUE__VALUE_TYPE);
	if (v)
		v->type = dtype;
	return v;
}

Tensorflow__AttrValue *prune_attr_bool(arena_t *a, bool b)
{
	Tensorflow__AttrValue *v = attr_new(a, TENSORFLOW__ATTR_VALUE__VALUE_B);
	if (v)
		v->b = b;
	return v;
}

Tensorflow__AttrValue *prune_attr_int(arena_t *a, int64_t i)
{
	Tensorflow__AttrValue *v = attr_new(a, TENSORFLOW__ATTR_VALUE__VALUE_I);
	if (v)
		v->i = i;
	return v;
}

Tensorflow__AttrValue *prune_attr_str(arena_t *a, const char *s)
{
	Tensorflow__AttrValue *v = attr_new(a, TENSORFLOW__ATTR_VALUE__VALUE_S);
	if (!v)
		return NULL;
	size_t n = strlen(s);
	v->s.data = (uint8_t *)arena_strndup(a, s, n);
	v->s.len = n;
	return v->s.data ? v : NULL;
}

Tensorflow__AttrValue *prune_attr_empty_list(arena_t *a)
{
	Tensorflow__AttrValue *v = attr_new(a, TENSORFLOW__ATTR_VALUE__VALUE_LIST);
	if (!v)
		return NULL;
	v->list = arena_alloc(a, sizeof(*v->list));
	if (!v->list)
		return NULL;
	tensorflow__attr_value__list_value__init(v->list);
	return v;
}

Tensorflow__TensorShapeProto *prune_shape_new(arena_t *a, const int64_t *dims, int rank)
{
	Tensorflow__TensorShapeProto *s = arena_alloc(a, sizeof(*s));
	if (!s)
		return NULL;
	tensorflow__tensor_shape_proto__init(s);
	if (rank <= 0)
		return s;
	s->dim = arena_alloc(a, (size_t)rank * sizeof(*s->dim));
	if (!s->dim)
		return NULL;
	for (int i = 0; i < rank; i++) {
		Tensorflow__TensorShapeProto__Dim *d = arena_alloc(a, sizeof(*d));
		if (!d)
			return NULL;
		tensorflow__tensor_shape_proto__dim__init(d);
		d->size = dims[i];
		s->dim[i] = d;
	}
	s->n_dim = (size_t)rank;
	return s;
}

Tensorflow__AttrValue *prune_attr_shape(arena_t *a, const int64_t *dims, int rank)
{
	Tensorflow__AttrValue *v = attr_new(a, TENSORFLOW__ATTR_VALUE__VALUE_SHAPE);
	if (!v || !(v->shape = prune_shape_new(a, dims, rank)))
		return NULL;
	return v;
}

static Tensorflow__AttrValue *tensor_attr(arena_t *a, int dtype, const int64_t *dims, int rank)
{
	Tensorflow__AttrValue *v = attr_new(a, TENSORFLOW__ATTR_VALUE__VALUE_TENSOR);
	if (!v || !(v->tensor = arena_alloc(a, sizeof(*v->tensor))))
		return NULL;
	tensorflow__tensor_proto__init(v->tensor);
	v->tensor->dtype = dtype;
	if (!(v->tensor->tensor_shape = prune_shape_new(a, dims, rank)))
		return NULL;
	return v;
}

Tensorflow__AttrValue *prune_attr_i32(arena_t *a, const int32_t *vals, const int64_t *dims,
				      int rank)
{
	int64_t n = 1;
	for (int i = 0; i < rank; i++)
		n *= dims[i];
	Tensorflow__AttrValue *v = tensor_attr(a, TENSORFLOW__DATA_TYPE__DT_INT32, dims, rank);
	if (!v || !(v->tensor->int_val = arena_alloc(a, (size_t)n * sizeof(int32_t) + 1)))
		return NULL;
	memcpy(v->tensor->int_val, vals, (size_t)n * sizeof(int32_t));
	v->tensor->n_int_val = (size_t)n;
	return v;
}

Tensorflow__AttrValue *prune_attr_i64_scalar(arena_t *a, int64_t val)
{
	Tensorflow__AttrValue *v = tensor_attr(a, TENSORFLOW__DATA_TYPE__DT_INT64, NULL, 0);
	if (!v || !(v->tensor->int64_val = arena_alloc(a, sizeof(int64_t))))
		return NULL;
	v->tensor->int64_val[0] = val;
	v->tensor->n_int64_val = 1;
	return v;
}

Tensorflow__AttrValue *prune_attr_splat(arena_t *a, int dtype, double val, const int64_t *dims,
					int rank)
{
	Tensorflow__AttrValue *v = tensor_attr(a, dtype, dims, rank);
	if (!v)
		return NULL;
	Tensorflow__TensorProto *t = v->tensor;
	switch (dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		if (!(t->float_val = arena_alloc(a, sizeof(float))))
			return NULL;
		t->float_val[0] = (float)val;
		t->n_float_val = 1;
		break;
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE:
		if (!(t->double_val = arena_alloc(a, sizeof(double))))
			return NULL;
		t->double_val[0] = val;
		t->n_double_val = 1;
		break;
	case TENSORFLOW__DATA_TYPE__DT_HALF:
	case TENSORFLOW__DATA_TYPE__DT_BFLOAT16:
		if (!(t->half_val = arena_alloc(a, sizeof(int32_t))))
			return NULL;
		t->half_val[0] = dtype == TENSORFLOW__DATA_TYPE__DT_HALF
					 ? prune_float_to_half((float)val)
					 : prune_float_to_bf16((float)val);
		t->n_half_val = 1;
		break;
	default:
		return NULL;
	}
	return v;
}
