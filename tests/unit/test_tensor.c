/*
 * test_tensor: TensorProto <-> prune_tensor_t for every storage form of the four float
 * types, the shape and size checks that guard against hostile models, and the float16 /
 * bfloat16 conversions.
 *
 * The conversions are checked exhaustively where the domain is small (all 65536 16-bit
 * patterns), and against independent references where it is not: the compiler's
 * _Float16 conversion when the target has one, and a nearest-value search in double
 * precision for bfloat16.
 *
 * Workload: a few million conversions, well under a second without sanitizers.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "proto/pbarena.h"
#include "prune/tensor.h"
#include "ref_float.h"
#include "testutil.h"


static const int all_dtypes[] = {DT_F32, DT_F64, DT_F16, DT_BF16};

/* A TensorProto with its own shape storage, built on the stack of a test. */
typedef struct {
	Tensorflow__TensorProto tp;
	Tensorflow__TensorShapeProto shape;
	Tensorflow__TensorShapeProto__Dim dims[10];
	Tensorflow__TensorShapeProto__Dim *dimp[10];
} proto_t;

static void proto_init(proto_t *p, int dtype, int rank, const int64_t *dims)
{
	memset(p, 0, sizeof(*p));
	tensorflow__tensor_proto__init(&p->tp);
	tensorflow__tensor_shape_proto__init(&p->shape);
	for (int i = 0; i < rank; i++) {
		tensorflow__tensor_shape_proto__dim__init(&p->dims[i]);
		p->dims[i].size = dims[i];
		p->dimp[i] = &p->dims[i];
	}
	p->shape.n_dim = (size_t)rank;
	p->shape.dim = p->dimp;
	p->tp.dtype = (Tensorflow__DataType)dtype;
	p->tp.tensor_shape = &p->shape;
}


/* The test's values: distinct, exact in every type, one negative. */
static const double vals[6] = {1.0, -2.5, 0.375, 4096.0, 0.0, 3.0};

/* The bit pattern val takes in dtype. */
static uint64_t pattern(int dt, double v)
{
	switch (dt) {
	case DT_F32: {
		float f = (float)v;
		uint32_t u;
		memcpy(&u, &f, 4);
		return u;
	}
	case DT_F64: {
		uint64_t u;
		memcpy(&u, &v, 8);
		return u;
	}
	case DT_F16:
		return prune_float_to_half((float)v);
	default:
		return prune_float_to_bf16((float)v);
	}
}

/* Fills cnt typed values of p from vals (storage owned by the caller's arrays). */
static float fv[8];
static double dv[8];
static int32_t hv[8];

static void set_values(proto_t *p, size_t cnt)
{
	for (size_t i = 0; i < cnt; i++) {
		fv[i] = (float)vals[i % 6];
		dv[i] = vals[i % 6];
		hv[i] = (int32_t)pattern(p->tp.dtype, vals[i % 6]);
	}
	switch (p->tp.dtype) {
	case DT_F32:
		p->tp.n_float_val = cnt;
		p->tp.float_val = fv;
		break;
	case DT_F64:
		p->tp.n_double_val = cnt;
		p->tp.double_val = dv;
		break;
	default:
		p->tp.n_half_val = cnt;
		p->tp.half_val = hv;
		break;
	}
}

/* 16-byte aligned content buffer (as protobuf-c unpacking into an arena gives). */
static _Alignas(16) unsigned char content[64 + 1];

static void set_content(proto_t *p, size_t n, unsigned char *buf)
{
	size_t es = ref_esize(p->tp.dtype);
	for (size_t i = 0; i < n; i++) {
		uint64_t b = pattern(p->tp.dtype, vals[(5 - i % 6)]); /* differs from values */
		memcpy(buf + i * es, &b, es);                          /* little-endian host */
	}
	p->tp.tensor_content.len = n * es;
	p->tp.tensor_content.data = buf;
}

START_TEST(dtype_names_and_sizes)
{
	ck_assert_uint_eq(prune_dtype_size(DT_F32), 4);
	ck_assert_uint_eq(prune_dtype_size(DT_F64), 8);
	ck_assert_uint_eq(prune_dtype_size(DT_F16), 2);
	ck_assert_uint_eq(prune_dtype_size(DT_BF16), 2);
	ck_assert_uint_eq(prune_dtype_size(TENSORFLOW__DATA_TYPE__DT_INT32), 0);
	ck_assert_uint_eq(prune_dtype_size(-1), 0);
	ck_assert_str_eq(prune_dtype_name(DT_F32), "float32");
	ck_assert_str_eq(prune_dtype_name(DT_F64), "float64");
	ck_assert_str_eq(prune_dtype_name(DT_F16), "float16");
	ck_assert_str_eq(prune_dtype_name(DT_BF16), "bfloat16");
	ck_assert_str_eq(prune_dtype_name(TENSORFLOW__DATA_TYPE__DT_INT32), "int32");
	ck_assert_str_eq(prune_dtype_name(TENSORFLOW__DATA_TYPE__DT_FLOAT_REF), "float_ref");
	ck_assert_str_eq(prune_dtype_name(999), "unknown");
	ck_assert_str_eq(prune_dtype_name(-5), "unknown");
	/* The literal table in tensor.c must match the schema, name for name. */
	const ProtobufCEnumDescriptor *d = &tensorflow__data_type__descriptor;
	for (unsigned i = 0; i < d->n_values; i++) {
		int v = d->values[i].value;
		if (prune_dtype_size(v))
			continue;
		char want[64];
		const char *src = d->values[i].name + 3; /* skip "DT_" */
		size_t k = 0;
		for (; src[k] && k + 1 < sizeof(want); k++)
			want[k] = (char)(src[k] >= 'A' && src[k] <= 'Z' ? src[k] - 'A' + 'a' : src[k]);
		want[k] = 0;
		ck_assert_str_eq(prune_dtype_name(v), want);
	}
}
END_TEST

/* Reads p and checks element i against the expected pattern function. */
static void read_ok(proto_t *p, arena_t *a, prune_tensor_t *t)
{
	sd_error_t e;
	sd_err_clear(&e);
	int rc = prune_tensor_read(&p->tp, 1000, "w", a, t, &e);
	ck_assert_msg(rc == 0, "rc %d: %s", rc, e.msg);
}

START_TEST(storage_forms)
{
	int64_t dims[2] = {2, 3};
	for (size_t d = 0; d < 4; d++) {
		int dt = all_dtypes[d];
		arena_t a;
		arena_init(&a, 4 << 20); /* one 1 MiB chunk plus its header */
		proto_t p;
		prune_tensor_t t;

		/* tensor_content: used in place. */
		proto_init(&p, dt, 2, dims);
		set_content(&p, 6, content);
		read_ok(&p, &a, &t);
		ck_assert_ptr_eq(t.data, content);
		ck_assert_int_eq(t.dtype, dt);
		ck_assert_int_eq(t.rank, 2);
		ck_assert_int_eq(t.dims[0], 2);
		ck_assert_int_eq(t.dims[1], 3);
		ck_assert_uint_eq(t.n, 6);
		for (size_t i = 0; i < 6; i++)
			ck_assert(ref_bits(dt, t.data, i) == pattern(dt, vals[5 - i]));

		/* Content and values both present: content wins, as in TensorFlow. */
		set_values(&p, 6);
		read_ok(&p, &a, &t);
		ck_assert_ptr_eq(t.data, content);

		/* Misaligned content is not copied either (weights lie anywhere in a mapped
		 * model; the kernels read through byte-aligned types). */
		memmove(content + 1, content, 6 * ref_esize(dt));
		p.tp.tensor_content.data = content + 1;
		read_ok(&p, &a, &t);
		ck_assert_ptr_eq(t.data, content + 1);
		for (size_t i = 0; i < 6; i++)
			ck_assert(ref_bits(dt, t.data, i) == pattern(dt, vals[5 - i]));

		/* Full typed values. */
		proto_init(&p, dt, 2, dims);
		set_values(&p, 6);
		read_ok(&p, &a, &t);
		for (size_t i = 0; i < 6; i++)
			ck_assert(ref_bits(dt, t.data, i) == pattern(dt, vals[i]));

		/* Splat: one value for the whole shape. */
		set_values(&p, 1);
		read_ok(&p, &a, &t);
		for (size_t i = 0; i < 6; i++)
			ck_assert(ref_bits(dt, t.data, i) == pattern(dt, vals[0]));

		/* Partial: the last value repeats. */
		set_values(&p, 3);
		read_ok(&p, &a, &t);
		for (size_t i = 0; i < 6; i++)
			ck_assert(ref_bits(dt, t.data, i) == pattern(dt, vals[i < 3 ? i : 2]));

		/* Nothing stored: zeros. */
		set_values(&p, 0);
		read_ok(&p, &a, &t);
		for (size_t i = 0; i < 6; i++)
			ck_assert(ref_bits(dt, t.data, i) == 0);

		/* Values in another type's field are ignored, as TensorFlow does. */
		proto_init(&p, dt, 2, dims);
		p.tp.n_int_val = 1;
		int32_t one = 1;
		p.tp.int_val = &one;
		read_ok(&p, &a, &t);
		ck_assert(ref_bits(dt, t.data, 5) == 0);

		arena_deinit(&a);
	}
}
END_TEST

START_TEST(half_val_high_bits_and_negative)
{
	/* half_val is int32; a pattern with the sign bit set may arrive sign-extended. */
	int64_t dims[1] = {2};
	proto_t p;
	proto_init(&p, DT_F16, 1, dims);
	int32_t hvv[2] = {(int32_t)0xFFFFBC00, 0xBC00};
	p.tp.n_half_val = 2;
	p.tp.half_val = hvv;
	arena_t a;
	arena_init(&a, 0);
	prune_tensor_t t;
	read_ok(&p, &a, &t);
	ck_assert_uint_eq(((uint16_t *)t.data)[0], 0xBC00);
	ck_assert_uint_eq(((uint16_t *)t.data)[1], 0xBC00);
	ck_assert(prune_half_to_float(0xBC00) == -1.0f);
	arena_deinit(&a);
}
END_TEST

START_TEST(scalar_and_empty)
{
	arena_t a;
	arena_init(&a, 0);
	proto_t p;
	prune_tensor_t t;
	proto_init(&p, DT_F32, 0, NULL);
	p.tp.tensor_shape = NULL; /* no shape at all: a scalar */
	set_values(&p, 1);
	read_ok(&p, &a, &t);
	ck_assert_uint_eq(t.n, 1);
	ck_assert_int_eq(t.rank, 0);
	ck_assert(((float *)t.data)[0] == 1.0f);

	int64_t dims[3] = {4, 0, 7};
	proto_init(&p, DT_F32, 3, dims);
	read_ok(&p, &a, &t);
	ck_assert_uint_eq(t.n, 0);
	ck_assert_ptr_nonnull(t.data);

	set_values(&p, 1); /* one value for zero elements: more than elements */
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_int_eq(prune_tensor_read(&p.tp, 1000, "w", &a, &t, &e), SD_EMODEL);
	arena_deinit(&a);
}
END_TEST

START_TEST(size_mismatch)
{
	int64_t dims[2] = {2, 3};
	for (size_t d = 0; d < 4; d++) {
		int dt = all_dtypes[d];
		proto_t p;
		proto_init(&p, dt, 2, dims);
		set_content(&p, 6, content);
		p.tp.tensor_content.len -= ref_esize(dt); /* one element short */
		arena_t a;
		arena_init(&a, 0);
		prune_tensor_t t;
		sd_error_t e;
		sd_err_clear(&e);
		ck_assert_int_eq(prune_tensor_read(&p.tp, 1000, "conv1/weights", &a, &t, &e),
				 SD_EMODEL);
		char want[200];
		snprintf(want, sizeof(want),
			 "node 'conv1/weights': tensor_content has %zu bytes, shape [2, 3] of %s "
			 "needs %zu",
			 5 * ref_esize(dt), prune_dtype_name(dt), 6 * ref_esize(dt));
		ck_assert_str_eq(e.msg, want);
		ck_assert_str_eq(e.node, "conv1/weights");
		/* Too long is as wrong as too short. */
		p.tp.tensor_content.len = 7 * ref_esize(dt);
		ck_assert_int_eq(prune_tensor_read(&p.tp, 1000, "w", &a, &t, &e), SD_EMODEL);
		arena_deinit(&a);
	}
}
END_TEST

START_TEST(more_values_than_elements)
{
	int64_t dims[2] = {2, 3};
	for (size_t d = 0; d < 4; d++) {
		proto_t p;
		proto_init(&p, all_dtypes[d], 2, dims);
		set_values(&p, 7);
		arena_t a;
		arena_init(&a, 0);
		prune_tensor_t t;
		sd_error_t e;
		sd_err_clear(&e);
		ck_assert_int_eq(prune_tensor_read(&p.tp, 1000, "fc/w", &a, &t, &e), SD_EMODEL);
		ck_assert_ptr_nonnull(strstr(e.msg, "node 'fc/w'"));
		ck_assert_ptr_nonnull(strstr(e.msg, "7"));
		ck_assert_str_eq(e.node, "fc/w");
		arena_deinit(&a);
	}
}
END_TEST

START_TEST(bad_dtype)
{
	int64_t dims[1] = {2};
	proto_t p;
	proto_init(&p, TENSORFLOW__DATA_TYPE__DT_INT32, 1, dims);
	arena_t a;
	arena_init(&a, 0);
	prune_tensor_t t;
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_int_eq(prune_tensor_read(&p.tp, 1000, "w", &a, &t, &e), SD_EMODEL);
	ck_assert_ptr_nonnull(strstr(e.msg, "int32"));
	arena_deinit(&a);
}
END_TEST

/* Checks prune_shape_count on a shape; returns rc and leaves the message in e. */
static int count(int rank, const int64_t *dims, size_t max, size_t *n, sd_error_t *e)
{
	proto_t p;
	proto_init(&p, DT_F32, rank, dims);
	sd_err_clear(e);
	return prune_shape_count(&p.shape, max, "big/w", n, e);
}

START_TEST(shape_checks)
{
	sd_error_t e;
	size_t n = 99;
	int64_t ok[8] = {1, 2, 3, 4, 1, 1, 2, 1};
	ck_assert_int_eq(count(8, ok, 1000, &n, &e), 0);
	ck_assert_uint_eq(n, 48);
	ck_assert_int_eq(count(8, ok, 48, &n, &e), 0); /* the limit is inclusive */
	ck_assert_int_eq(count(8, ok, 47, &n, &e), SD_ETOOBIG);

	int64_t neg[2] = {-1, 3};
	ck_assert_int_eq(count(2, neg, 1000, &n, &e), SD_EMODEL);
	ck_assert_ptr_nonnull(strstr(e.msg, "big/w"));
	ck_assert_ptr_nonnull(strstr(e.msg, "-1"));
	int64_t negzero[3] = {0, -7, 3}; /* a zero dim does not hide a negative one */
	ck_assert_int_eq(count(3, negzero, 1000, &n, &e), SD_EMODEL);

	int64_t r9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
	ck_assert_int_eq(count(9, r9, 1000, &n, &e), SD_EMODEL);
	ck_assert_ptr_nonnull(strstr(e.msg, "rank 9"));
	ck_assert_str_eq(e.node, "big/w");

	int64_t cube[3] = {1000000, 1000000, 1000000};
	ck_assert_int_eq(count(3, cube, (size_t)1 << 30, &n, &e), SD_ETOOBIG);
	ck_assert_ptr_nonnull(strstr(e.msg, "1000000000000000000 elements"));
	int64_t huge[3] = {INT64_MAX, INT64_MAX, 2}; /* the product overflows 64 bits */
	ck_assert_int_eq(count(3, huge, SIZE_MAX, &n, &e), SD_ETOOBIG);
	ck_assert_ptr_nonnull(strstr(e.msg, "big/w"));
	int64_t empty[3] = {INT64_MAX, 0, INT64_MAX};
	ck_assert_int_eq(count(3, empty, 10, &n, &e), 0);
	ck_assert_uint_eq(n, 0);

	proto_t p;
	proto_init(&p, DT_F32, 0, NULL);
	p.shape.unknown_rank = 1;
	ck_assert_int_eq(prune_shape_count(&p.shape, 10, "u", &n, &e), SD_EMODEL);
}
END_TEST

START_TEST(claimed_10e12_elements)
{
	/* A tiny proto claiming 10^12 floats: rejected before anything is allocated. */
	int64_t dims[2] = {1000000, 1000000};
	proto_t p;
	proto_init(&p, DT_F32, 2, dims);
	set_values(&p, 1); /* the splat form would make it "valid" to TensorFlow */
	arena_t a;
	arena_init(&a, 0);
	prune_tensor_t t;
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_int_eq(prune_tensor_read(&p.tp, (size_t)1 << 28, "dense/kernel", &a, &t, &e),
			 SD_ETOOBIG);
	ck_assert_ptr_nonnull(strstr(e.msg, "1000000000000 elements"));
	ck_assert_ptr_nonnull(strstr(e.msg, "dense/kernel"));
	ck_assert_str_eq(e.node, "dense/kernel");
	ck_assert_uint_eq(a.used, 0);
	ck_assert_ptr_null(a.head);
	arena_deinit(&a);

	/* Within max_elems but beyond the arena budget: SD_ENOMEM, not a crash. */
	int64_t mid[1] = {1 << 20};
	proto_init(&p, DT_F32, 1, mid);
	set_values(&p, 1);
	arena_init(&a, 4096);
	ck_assert_int_eq(prune_tensor_read(&p.tp, (size_t)1 << 28, "w", &a, &t, &e), SD_ENOMEM);
	arena_deinit(&a);
}
END_TEST

START_TEST(write_sets_content)
{
	int64_t dims[3] = {3, 1, 2};
	for (size_t d = 0; d < 4; d++) {
		int dt = all_dtypes[d];
		arena_t a;
		arena_init(&a, 4 << 20); /* one 1 MiB chunk plus its header */
		proto_t p;
		proto_init(&p, dt, 3, dims);
		set_values(&p, 4);
		prune_tensor_t t;
		read_ok(&p, &a, &t);
		sd_error_t e;
		sd_err_clear(&e);
		ck_assert_int_eq(prune_tensor_write(&p.tp, &t, &a, &e), 0);
		ck_assert_ptr_eq(p.tp.tensor_content.data, t.data);
		ck_assert_uint_eq(p.tp.tensor_content.len, 6 * ref_esize(dt));
		ck_assert_uint_eq(p.tp.n_float_val + p.tp.n_double_val + p.tp.n_half_val, 0);
		ck_assert_int_eq(p.tp.dtype, dt);
		ck_assert_uint_eq(p.tp.tensor_shape->n_dim, 3);
		for (int i = 0; i < 3; i++)
			ck_assert_int_eq(p.tp.tensor_shape->dim[i]->size, dims[i]);

		/* It survives a protobuf round trip and reads back identically. */
		size_t len = tensorflow__tensor_proto__get_packed_size(&p.tp);
		uint8_t *buf = arena_alloc(&a, len);
		ck_assert_ptr_nonnull(buf);
		ck_assert_uint_eq(tensorflow__tensor_proto__pack(&p.tp, buf), len);
		ProtobufCAllocator pa = pbarena_allocator(&a);
		Tensorflow__TensorProto *back = tensorflow__tensor_proto__unpack(&pa, len, buf);
		ck_assert_ptr_nonnull(back);
		prune_tensor_t t2;
		ck_assert_int_eq(prune_tensor_read(back, 1000, "w", &a, &t2, &e), 0);
		ck_assert_int_eq(t2.rank, 3);
		ck_assert_uint_eq(t2.n, 6);
		ck_assert_ptr_eq(t2.data, back->tensor_content.data); /* no copy */
		ck_assert(memcmp(t2.data, t.data, 6 * ref_esize(dt)) == 0);
		for (size_t i = 0; i < 6; i++)
			ck_assert(ref_bits(dt, t2.data, i) == pattern(dt, vals[i < 4 ? i : 3]));
		arena_deinit(&a);
	}
}
END_TEST

static int is_nan16(uint16_t h, int bf)
{
	return bf ? (h & 0x7F80) == 0x7F80 && (h & 0x7F) : (h & 0x7C00) == 0x7C00 && (h & 0x3FF);
}

START_TEST(half_round_trip_all_patterns)
{
	for (uint32_t u = 0; u < 65536; u++) {
		uint16_t h = (uint16_t)u;
		float f = prune_half_to_float(h);
		double r = ref_half(h);
		if (isnan(r)) {
			ck_assert(isnan(f));
			ck_assert_int_eq(!!signbit(f), h >> 15);
		} else {
			ck_assert_msg((double)f == r && !!signbit(f) == !!signbit(r), "half %04x", u);
		}
		uint16_t back = prune_float_to_half(f);
		if (is_nan16(h, 0))
			ck_assert_msg(is_nan16(back, 0) && (back >> 15) == (h >> 15), "nan %04x", u);
		else
			ck_assert_msg(back == h, "half %04x -> %g -> %04x", u, (double)f, back);
	}
}
END_TEST

START_TEST(bf16_round_trip_all_patterns)
{
	for (uint32_t u = 0; u < 65536; u++) {
		uint16_t h = (uint16_t)u;
		float f = prune_bf16_to_float(h);
		uint32_t fb;
		memcpy(&fb, &f, 4);
		ck_assert(fb == u << 16);
		uint16_t back = prune_float_to_bf16(f);
		if (is_nan16(h, 1))
			ck_assert_msg(is_nan16(back, 1) && (back >> 15) == (h >> 15), "nan %04x", u);
		else
			ck_assert_msg(back == h, "bf16 %04x -> %04x", u, back);
	}
}
END_TEST

static uint64_t rng_state = 0x77u;

static uint32_t rng32(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 0x2545F4914F6CDD1Du) >> 32);
}

/*
 * Is got the nearest-even rounding of x in float16 (bf = 0) or bfloat16 (bf = 1)?
 * Checked by search in double precision: no neighbour of got is closer to x, a tie went
 * to the even pattern, and overflow to inf happened exactly from the halfway point above
 * the largest finite value.
 */
static double dec16(uint16_t h, int bf)
{
	if (!bf)
		return ref_half(h);
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static int nearest_ok(float x, uint16_t got, int bf)
{
	double v = x, g = dec16(got, bf);
	if (isnan(v))
		return isnan(g);
	if (!!signbit(g) != !!signbit(v))
		return 0;
	double halfway = bf ? ldexp(2.0 - ldexp(1, -8), 127) : 65520.0;
	if (isinf(v) || fabs(v) >= halfway)
		return isinf(g);
	if (isinf(g) || isnan(g))
		return 0;
	uint16_t mag = got & 0x7FFF, sign = got & 0x8000;
	double best = fabs(v - g);
	for (int dlt = -1; dlt <= 1; dlt += 2) {
		int m = (int)mag + dlt;
		if (m < 0)
			continue;
		double nv = dec16((uint16_t)(sign | (uint16_t)m), bf);
		if (isinf(nv) || isnan(nv))
			continue;
		double dn = fabs(v - nv);
		if (dn < best)
			return 0;
		if (dn == best && (mag & 1)) /* tie: must have picked the even one */
			return 0;
	}
	return 1;
}

START_TEST(float_to_16_rounding)
{
	/* Random patterns over the whole float range, plus hand-picked edges. */
	static const float edges[] = {65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e30f,
				      5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 8.940697e-8f,
				      6.1035156e-5f, 6.1035152e-5f, 1.0009765625f,
				      1.00048828125f, 1.00146484375f, 0.0f, -0.0f,
				      3.3895313892515355e38f, 3.4028235e38f, 1e-40f, 1.0f};
	for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
		for (int s = 0; s < 2; s++) {
			float x = s ? -edges[i] : edges[i];
			ck_assert_msg(nearest_ok(x, prune_float_to_half(x), 0), "half of %a", (double)x);
			ck_assert_msg(nearest_ok(x, prune_float_to_bf16(x), 1), "bf16 of %a", (double)x);
		}
	for (int i = 0; i < 400000; i++) {
		uint32_t u = rng32();
		if (i & 1) /* concentrate on the half range */
			u = (u & 0x80FFFFFFu) | ((uint32_t)(0x30 + (u >> 24) % 0x20) << 24);
		float x;
		memcpy(&x, &u, 4);
		uint16_t h = prune_float_to_half(x), b = prune_float_to_bf16(x);
		ck_assert_msg(nearest_ok(x, h, 0), "half of %a gave %04x", (double)x, h);
		ck_assert_msg(nearest_ok(x, b, 1), "bf16 of %a gave %04x", (double)x, b);
#if defined(__FLT16_MANT_DIG__)
		if (!isnan(x)) {
			_Float16 c = (_Float16)x;
			uint16_t cb;
			memcpy(&cb, &c, 2);
			ck_assert_msg(cb == h, "half of %a: %04x, compiler %04x", (double)x, h, cb);
		}
#endif
	}
	/* Exact landmarks. */
	ck_assert_uint_eq(prune_float_to_half(1.0f), 0x3C00);
	ck_assert_uint_eq(prune_float_to_half(-2.0f), 0xC000);
	ck_assert_uint_eq(prune_float_to_half(65520.0f), 0x7C00);
	ck_assert_uint_eq(prune_float_to_half(INFINITY), 0x7C00);
	ck_assert_uint_eq(prune_float_to_half(-INFINITY), 0xFC00);
	ck_assert_uint_eq(prune_float_to_half(5.9604645e-8f), 0x0001);
	ck_assert_uint_eq(prune_float_to_half(2.9802322e-8f), 0x0000); /* 2^-25 ties to 0 */
	ck_assert_uint_eq(prune_float_to_bf16(1.0f), 0x3F80);
	ck_assert_uint_eq(prune_float_to_bf16(INFINITY), 0x7F80);
	ck_assert(is_nan16(prune_float_to_half(NAN), 0));
	ck_assert(is_nan16(prune_float_to_bf16(NAN), 1));
	/* A float NaN whose payload lives only in low bits must not become inf. */
	uint32_t lown = 0x7F800001u;
	float fl;
	memcpy(&fl, &lown, 4);
	ck_assert(is_nan16(prune_float_to_half(fl), 0));
	ck_assert(is_nan16(prune_float_to_bf16(fl), 1));
}
END_TEST

int main(void)
{
	const tu_case_t cases[] = {
		{"read_write",
		 TU_TESTS(dtype_names_and_sizes, storage_forms, half_val_high_bits_and_negative,
			  scalar_and_empty, size_mismatch, more_values_than_elements, bad_dtype,
			  shape_checks, claimed_10e12_elements, write_sets_content)},
		{"convert",
		 TU_TESTS(half_round_trip_all_patterns, bf16_round_trip_all_patterns,
			  float_to_16_rounding),
		 .timeout = 120},
		{NULL},
	};
	return tu_main("tensor", cases);
}
