/*
 * prune_tensor: TensorFlow TensorProto <-> flat buffers of float32, float64, float16 and
 * bfloat16 weights (see tensor.h for the contract).
 *
 * Design: a weight is decoded once into a prune_tensor_t, its mask computed by
 * prune_mask, and it is written back as tensor_content (masked as it is saved). Every size that comes from the model (rank, dims,
 * element count, byte count, number of typed values) is checked against the caller's
 * max_elems before anything is allocated, so a graph claiming 10^12 elements fails with
 * SD_ETOOBIG instead of asking the arena for terabytes. Weights stored in tensor_content
 * (the common case, and the only big one) are not copied: data points into the proto's
 * bytes, which lie in the job's arena or in the mapped model file. Typed values follow TensorFlow's own
 * Tensor::FromProto rules: none means zeros, fewer than the element count means the last
 * one repeats (the splat form), more is an error; tensor_content wins when both are set.
 *
 * float16 and bfloat16 stay as raw 16-bit patterns throughout; the conversions below are
 * only for callers (tests, reports) that need a float, and round to nearest even like the
 * hardware and TensorFlow's Eigen types.
 *
 * Workload: one read and one write per pruned layer, each a memcpy or less. Reentrant.
 */
#include "prune/tensor.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/*
 * tensor_content is little-endian on the wire and the buffers are used in place, so the
 * host must be little-endian too (every platform TensorFlow ships for is).
 */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "sparsityd assumes a little-endian host");
_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE binary32/binary64 expected");

size_t prune_dtype_size(int dtype)
{
	switch (dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		return 4;
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE:
		return 8;
	case TENSORFLOW__DATA_TYPE__DT_HALF:
	case TENSORFLOW__DATA_TYPE__DT_BFLOAT16:
		return 2;
	default:
		return 0;
	}
}

/*
 * DataType names, lower case without "dt_". Kept as a literal table (not derived from
 * the protobuf-c descriptor at run time) so the function needs no buffer and stays
 * reentrant; test_tensor checks it against the descriptor so the two cannot drift.
 */
static const struct {
	int value;
	const char *name;
} dtype_names[] = {
	{0, "invalid"},        {3, "int32"},          {4, "uint8"},
	{5, "int16"},          {6, "int8"},           {7, "string"},
	{8, "complex64"},      {9, "int64"},          {10, "bool"},
	{11, "qint8"},         {12, "quint8"},        {13, "qint32"},
	{15, "qint16"},        {16, "quint16"},       {17, "uint16"},
	{18, "complex128"},    {20, "resource"},      {21, "variant"},
	{22, "uint32"},        {23, "uint64"},        {24, "float8_e5m2"},
	{25, "float8_e4m3fn"}, {29, "int4"},          {30, "uint4"},
	{101, "float_ref"},    {102, "double_ref"},   {103, "int32_ref"},
	{104, "uint8_ref"},    {105, "int16_ref"},    {106, "int8_ref"},
	{107, "string_ref"},   {108, "complex64_ref"}, {109, "int64_ref"},
	{110, "bool_ref"},     {111, "qint8_ref"},    {112, "quint8_ref"},
	{113, "qint32_ref"},   {114, "bfloat16_ref"}, {115, "qint16_ref"},
	{116, "quint16_ref"},  {117, "uint16_ref"},   {118, "complex128_ref"},
	{119, "half_ref"},     {120, "resource_ref"}, {121, "variant_ref"},
	{122, "uint32_ref"},   {123, "uint64_ref"},
};

const char *prune_dtype_name(int dtype)
{
	/* The four float types use the names users know from NumPy, not "float"/"half". */
	switch (dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		return "float32";
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE:
		return "float64";
	case TENSORFLOW__DATA_TYPE__DT_HALF:
		return "float16";
	case TENSORFLOW__DATA_TYPE__DT_BFLOAT16:
		return "bfloat16";
	default:
		break;
	}
	for (size_t i = 0; i < sizeof(dtype_names) / sizeof(dtype_names[0]); i++)
		if (dtype_names[i].value == dtype)
			return dtype_names[i].name;
	return "unknown";
}

/*
 * Formats a shape as "[3, 3, 64, 128]" for error messages, truncating (with "...")
 * rather than overflowing; a message must never fail.
 */
static const char *shape_str(const Tensorflow__TensorShapeProto *shape, char *buf, size_t cap)
{
	size_t len = 0;
	int w = snprintf(buf, cap, "[");
	len = (size_t)w;
	size_t nd = shape ? shape->n_dim : 0;
	for (size_t i = 0; i < nd && len < cap; i++) {
		w = snprintf(buf + len, cap - len, "%s%" PRId64, i ? ", " : "",
			     shape->dim[i] ? shape->dim[i]->size : (int64_t)0);
		if (w < 0)
			break;
		len += (size_t)w;
	}
	if (len < cap)
		snprintf(buf + len, cap - len, "]");
	if (len >= cap && cap >= 4)
		memcpy(buf + cap - 4, "...", 4);
	return buf;
}

int prune_shape_count(const Tensorflow__TensorShapeProto *shape, size_t max_elems,
		      const char *node, size_t *n, sd_error_t *e)
{
	char sbuf[160];
	*n = 0;
	if (!node)
		node = "";
	/* A missing shape is a scalar, as in TensorFlow (TensorShapeProto default). */
	if (!shape) {
		if (max_elems < 1)
			return sd_err_node(e, SD_ETOOBIG, node,
					   "node '%s': scalar tensor exceeds the limit of %zu elements",
					   node, max_elems);
		*n = 1;
		return 0;
	}
	if (shape->unknown_rank)
		return sd_err_node(e, SD_EMODEL, node, "node '%s': tensor shape has unknown rank",
				   node);
	if (shape->n_dim > PRUNE_MAX_RANK)
		return sd_err_node(e, SD_EMODEL, node,
				   "node '%s': tensor has rank %zu, at most %d is supported", node,
				   shape->n_dim, PRUNE_MAX_RANK);
	/*
	 * All dims are validated before any product is formed, so a zero dim cannot hide
	 * a negative one. The product saturates on overflow: a shape whose count does not
	 * even fit 64 bits is reported as such, still naming the node.
	 */
	int has_zero = 0;
	for (size_t i = 0; i < shape->n_dim; i++) {
		int64_t d = shape->dim[i] ? shape->dim[i]->size : 0;
		if (d < 0)
			return sd_err_node(e, SD_EMODEL, node,
					   "node '%s': tensor shape %s has dimension %zu of size %" PRId64
					   " (unknown or negative sizes are not allowed in a weight)",
					   node, shape_str(shape, sbuf, sizeof(sbuf)), i, d);
		if (d == 0)
			has_zero = 1;
	}
	if (has_zero)
		return 0; /* *n is already 0; an empty tensor is valid */
	uint64_t count = 1;
	int overflow = 0;
	for (size_t i = 0; i < shape->n_dim; i++) {
		uint64_t d = (uint64_t)(shape->dim[i] ? shape->dim[i]->size : 0);
		if (__builtin_mul_overflow(count, d, &count)) {
			overflow = 1;
			break;
		}
	}
	if (overflow)
		return sd_err_node(e, SD_ETOOBIG, node,
				   "node '%s': tensor shape %s claims more than %" PRIu64
				   " elements (limit %zu)",
				   node, shape_str(shape, sbuf, sizeof(sbuf)), UINT64_MAX, max_elems);
	if (count > (uint64_t)max_elems || count > (uint64_t)SIZE_MAX)
		return sd_err_node(e, SD_ETOOBIG, node,
				   "node '%s': tensor shape %s claims %" PRIu64
				   " elements, more than the limit of %zu",
				   node, shape_str(shape, sbuf, sizeof(sbuf)), count, max_elems);
	*n = (size_t)count;
	return 0;
}

/* Typed values of a float dtype: where they are and how many. */
static size_t typed_count(const Tensorflow__TensorProto *tp)
{
	switch (tp->dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		return tp->n_float_val;
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE:
		return tp->n_double_val;
	default: /* DT_HALF, DT_BFLOAT16: both use half_val, one int32 per 16-bit pattern */
		return tp->n_half_val;
	}
}

/*
 * Expands cnt (1..n) typed values into n elements of dst: copies them, then repeats the
 * last one, which is TensorFlow's rule for the splat form.
 */
static void typed_fill(const Tensorflow__TensorProto *tp, void *dst, size_t n, size_t cnt)
{
	switch (tp->dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT: {
		float *d = dst;
		memcpy(d, tp->float_val, cnt * sizeof(float));
		for (size_t i = cnt; i < n; i++)
			d[i] = tp->float_val[cnt - 1];
		break;
	}
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE: {
		double *d = dst;
		memcpy(d, tp->double_val, cnt * sizeof(double));
		for (size_t i = cnt; i < n; i++)
			d[i] = tp->double_val[cnt - 1];
		break;
	}
	default: {
		/* TensorFlow keeps the pattern in the low 16 bits; higher bits are ignored. */
		uint16_t *d = dst;
		for (size_t i = 0; i < cnt; i++)
			d[i] = (uint16_t)((uint32_t)tp->half_val[i] & 0xFFFFu);
		for (size_t i = cnt; i < n; i++)
			d[i] = d[cnt - 1];
		break;
	}
	}
}

int prune_tensor_read(const Tensorflow__TensorProto *tp, size_t max_elems, const char *node,
		      arena_t *a, prune_tensor_t *out, sd_error_t *e)
{
	char sbuf[160];
	memset(out, 0, sizeof(*out));
	if (!node)
		node = "";
	size_t esize = prune_dtype_size(tp->dtype);
	if (!esize)
		return sd_err_node(e, SD_EMODEL, node,
				   "node '%s': weight dtype %s is not a float type "
				   "(float32, float64, float16 or bfloat16)",
				   node, prune_dtype_name(tp->dtype));
	size_t n;
	int rc = prune_shape_count(tp->tensor_shape, max_elems, node, &n, e);
	if (rc)
		return rc;
	size_t need;
	if (__builtin_mul_overflow(n, esize, &need))
		return sd_err_node(e, SD_ETOOBIG, node,
				   "node '%s': tensor of %zu elements does not fit in memory", node, n);

	out->dtype = tp->dtype;
	out->n = n;
	const Tensorflow__TensorShapeProto *shape = tp->tensor_shape;
	out->rank = shape ? (int)shape->n_dim : 0;
	for (int i = 0; i < out->rank; i++)
		out->dims[i] = shape->dim[i] ? shape->dim[i]->size : 0;

	if (tp->tensor_content.len > 0) {
		/* As in TensorFlow, content wins over typed values when both are present. */
		if (tp->tensor_content.len != need)
			return sd_err_node(e, SD_EMODEL, node,
					   "node '%s': tensor_content has %zu bytes, shape %s of %s needs %zu",
					   node, tp->tensor_content.len,
					   shape_str(shape, sbuf, sizeof(sbuf)),
					   prune_dtype_name(tp->dtype), need);
		/* No copy: the bytes stay where the model put them, at any alignment (the
		 * kernels read through byte-aligned types). */
		out->data = tp->tensor_content.data;
		return 0;
	}

	size_t cnt = typed_count(tp);
	if (cnt > n)
		return sd_err_node(e, SD_EMODEL, node,
				   "node '%s': tensor holds %zu %s values, shape %s has only %zu elements",
				   node, cnt, prune_dtype_name(tp->dtype),
				   shape_str(shape, sbuf, sizeof(sbuf)), n);
	/* At least one byte so an empty tensor still has a non-NULL, distinct buffer. */
	out->data = arena_alloc(a, need ? need : 1);
	if (!out->data)
		return sd_err_node(e, SD_ENOMEM, node,
				   "node '%s': out of memory for %zu bytes of weights", node, need);
	if (cnt == 0)
		memset(out->data, 0, need); /* all-zero bits is +0 in every float type */
	else
		typed_fill(tp, out->data, n, cnt);
	return 0;
}

int prune_tensor_write(Tensorflow__TensorProto *tp, const prune_tensor_t *t, arena_t *a,
		       sd_error_t *e)
{
	size_t esize = prune_dtype_size(t->dtype);
	if (t->rank < 0 || t->rank > PRUNE_MAX_RANK)
		return sd_err(e, SD_EINTERNAL, "prune_tensor_write: rank %d out of range", t->rank);

	Tensorflow__TensorShapeProto *shape = arena_alloc(a, sizeof(*shape));
	Tensorflow__TensorShapeProto__Dim *dims =
		t->rank ? arena_calloc(a, (size_t)t->rank, sizeof(*dims)) : NULL;
	Tensorflow__TensorShapeProto__Dim **dimp =
		t->rank ? arena_calloc(a, (size_t)t->rank, sizeof(*dimp)) : NULL;
	if (!shape || (t->rank && (!dims || !dimp)))
		return sd_err(e, SD_ENOMEM, "out of memory writing a tensor shape");
	tensorflow__tensor_shape_proto__init(shape);
	for (int i = 0; i < t->rank; i++) {
		tensorflow__tensor_shape_proto__dim__init(&dims[i]);
		dims[i].size = t->dims[i];
		dimp[i] = &dims[i];
	}
	shape->n_dim = (size_t)t->rank;
	shape->dim = dimp;

	/*
	 * The old shape and values are abandoned, not freed: they belong to the arena (or
	 * to whoever built the proto), and protobuf-c's free through the arena is a no-op.
	 */
	tp->dtype = (Tensorflow__DataType)t->dtype;
	tp->tensor_shape = shape;
	tp->tensor_content.len = t->n * esize;
	tp->tensor_content.data = t->n ? t->data : NULL;
	tp->n_float_val = 0;
	tp->float_val = NULL;
	tp->n_double_val = 0;
	tp->double_val = NULL;
	tp->n_half_val = 0;
	tp->half_val = NULL;
	return 0;
}

/*
 * Conversions. Integer-only so they are exact and independent of the FPU's rounding
 * mode and of flush-to-zero settings a host library might have switched on.
 */
static uint32_t f2u(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static float u2f(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

float prune_half_to_float(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1Fu;
	uint32_t man = h & 0x3FFu;
	if (exp == 0x1F) /* inf or NaN; the payload moves to the top of the float mantissa */
		return u2f(sign | 0x7F800000u | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return u2f(sign);
		/* Subnormal half: normalise, every one is a normal float. */
		int shift = 0;
		while (!(man & 0x400u)) {
			man <<= 1;
			shift++;
		}
		man &= 0x3FFu;
		return u2f(sign | ((uint32_t)(113 - shift) << 23) | (man << 13));
	}
	return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t prune_float_to_half(float f)
{
	uint32_t x = f2u(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
	x &= 0x7FFFFFFFu;
	if (x > 0x7F800000u) {
		/* NaN stays NaN: keep the top payload bits, force one on if they were all 0. */
		uint16_t man = (uint16_t)((x >> 13) & 0x3FFu);
		return (uint16_t)(sign | 0x7C00u | (man ? man : 0x200u));
	}
	/* 65520 is halfway between 65504 (max half) and 65536; the tie goes to even: inf. */
	if (x >= 0x477FF000u)
		return (uint16_t)(sign | 0x7C00u);
	if (x < 0x38800000u) {
		/* Below 2^-14: a half subnormal, in units of 2^-24. */
		uint32_t e8 = x >> 23;
		if (e8 < 102) /* below 2^-25: rounds to zero (2^-25 itself ties to even 0) */
			return sign;
		uint32_t man = (x & 0x7FFFFFu) | 0x800000u;
		uint32_t shift = 126 - e8; /* 14..24 */
		uint32_t r = man >> shift;
		uint32_t rem = man & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1)))
			r++; /* may carry into 0x400, the smallest normal: still right */
		return (uint16_t)(sign | r);
	}
	/* Normal: rebias the exponent, round the low 13 bits to nearest even. */
	x -= 0x38000000u;
	x += 0xFFFu + ((x >> 13) & 1u);
	return (uint16_t)(sign | (x >> 13));
}

float prune_bf16_to_float(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t prune_float_to_bf16(float f)
{
	uint32_t x = f2u(f);
	if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
		/* NaN: truncating could leave an all-zero mantissa (= inf), so force a bit. */
		uint16_t h = (uint16_t)(x >> 16);
		return (h & 0x7Fu) ? h : (uint16_t)(h | 0x40u);
	}
	/* Round to nearest even; a carry out of the mantissa correctly yields inf. */
	x += 0x7FFFu + ((x >> 16) & 1u);
	return (uint16_t)(x >> 16);
}
