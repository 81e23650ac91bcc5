/*
 * test_mask: the 2:4 kernel against a naive reference written independently here.
 *
 * The reference follows SPEC section 4 literally: per group of 4 along the axis it pads
 * with zeros, sorts (|w| as a double, index) pairs by magnitude descending then index
 * ascending with an explicit insertion sort, and keeps the first two. It shares no code
 * with prune/mask.c (no bit tricks, no pairwise rule) and decodes float16 with ldexp, so
 * an error in either the kernel's integer view of magnitudes or its keep formula shows
 * up as a mismatch. Inputs: every assignment of {0,1,2,3} to a group with every sign
 * pattern, C = 1..9 with many inner sizes (vector body and scalar tails), every axis of
 * random rank-2 and rank-4 shapes, all four dtypes, inf, subnormals, NaN.
 *
 * Workload: a few million elements, well under a second without sanitizers.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prune/mask.h"
#include "prune/tensor.h"
#include "ref_float.h"
#include "testutil.h"


static const int all_dtypes[] = {DT_F32, DT_F64, DT_F16, DT_BF16};

static uint64_t rng_state;

static uint64_t rng(void)
{
	/* xorshift64*, fixed seed per test so a failure reproduces. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Du;
}

static size_t rnd(size_t n) { return (size_t)(rng() % n); }


static double get(int dt, const void *data, size_t i)
{
	switch (dt) {
	case DT_F32:
		return ((const float *)data)[i];
	case DT_F64:
		return ((const double *)data)[i];
	case DT_F16:
		return ref_half(((const uint16_t *)data)[i]);
	default:
		return ref_bf16(((const uint16_t *)data)[i]);
	}
}

/* Stores v (rounded into the type by the conversions under test elsewhere). */
static void put(int dt, void *data, size_t i, double v)
{
	switch (dt) {
	case DT_F32:
		((float *)data)[i] = (float)v;
		break;
	case DT_F64:
		((double *)data)[i] = v;
		break;
	case DT_F16:
		((uint16_t *)data)[i] = prune_float_to_half((float)v);
		break;
	default:
		((uint16_t *)data)[i] = prune_float_to_bf16((float)v);
		break;
	}
}

static uint64_t sign_bit(int dt) { return (uint64_t)1 << (8 * ref_esize(dt) - 1); }

typedef struct {
	prune_tensor_t t;
	uint8_t *keep;
	uint8_t *ref;
} case_t;

static void case_new(case_t *c, int dt, int rank, const int64_t *dims)
{
	memset(c, 0, sizeof(*c));
	c->t.dtype = dt;
	c->t.rank = rank;
	c->t.n = 1;
	for (int i = 0; i < rank; i++) {
		c->t.dims[i] = dims[i];
		c->t.n *= (size_t)dims[i];
	}
	c->t.data = calloc(c->t.n ? c->t.n : 1, ref_esize(dt));
	c->keep = calloc(c->t.n ? c->t.n : 1, 1);
	c->ref = calloc(c->t.n ? c->t.n : 1, 1);
	ck_assert(c->t.data && c->keep && c->ref);
}

static void case_free(case_t *c)
{
	free(c->t.data);
	free(c->keep);
	free(c->ref);
}

/* The naive reference: SPEC section 4 read literally. */
static void ref_mask(const prune_tensor_t *t, int axis, uint8_t *keep)
{
	size_t outer = 1, inner = 1, C = (size_t)t->dims[axis];
	for (int i = 0; i < axis; i++)
		outer *= (size_t)t->dims[i];
	for (int i = axis + 1; i < t->rank; i++)
		inner *= (size_t)t->dims[i];
	for (size_t o = 0; o < outer; o++)
		for (size_t j = 0; j < inner; j++)
			for (size_t g = 0; g < C; g += 4) {
				double mag[4];
				size_t idx[4];
				for (size_t k = 0; k < 4; k++) {
					idx[k] = g + k;
					mag[k] = g + k < C ? fabs(get(t->dtype, t->data,
								     (o * C + g + k) * inner + j))
							   : 0.0; /* padding */
				}
				/* Insertion sort: larger magnitude first, then lower index. */
				for (int a = 1; a < 4; a++)
					for (int b = a; b > 0; b--) {
						int swap = mag[b] > mag[b - 1] ||
							   (mag[b] == mag[b - 1] && idx[b] < idx[b - 1]);
						if (!swap)
							break;
						double tm = mag[b];
						mag[b] = mag[b - 1];
						mag[b - 1] = tm;
						size_t ti = idx[b];
						idx[b] = idx[b - 1];
						idx[b - 1] = ti;
					}
				for (size_t k = 0; k < 4; k++) {
					size_t pos = idx[k];
					if (pos < C)
						keep[(o * C + pos) * inner + j] = k < 2;
				}
			}
}

/* Runs kernel and reference and compares every byte; returns the kernel's rc. */
static void check_against_ref(case_t *c, int axis)
{
	sd_error_t e;
	sd_err_clear(&e);
	memset(c->keep, 0xAA, c->t.n);
	int rc = prune_mask_2of4(&c->t, axis, c->keep, "layer", &e);
	ck_assert_msg(rc == 0, "rc %d: %s", rc, e.msg);
	ref_mask(&c->t, axis, c->ref);
	for (size_t i = 0; i < c->t.n; i++)
		ck_assert_msg(c->keep[i] == c->ref[i],
			      "%s rank %d axis %d dims [%lld,%lld,%lld,%lld] element %zu (%g): "
			      "kernel %d, reference %d",
			      prune_dtype_name(c->t.dtype), c->t.rank, axis,
			      (long long)c->t.dims[0], (long long)c->t.dims[1],
			      (long long)(c->t.rank > 2 ? c->t.dims[2] : 0),
			      (long long)(c->t.rank > 3 ? c->t.dims[3] : 0), i,
			      get(c->t.dtype, c->t.data, i), c->keep[i], c->ref[i]);
}

/* A value distribution with many ties, subnormals, infs and both zeros. */
static double rand_value(int mode)
{
	double s = (rng() & 1) ? -1.0 : 1.0;
	switch (mode) {
	case 0: /* small integers: ties everywhere */
		return s * (double)rnd(4);
	case 1: /* general */
		return s * ldexp((double)(rng() >> 11) / 9007199254740992.0, (int)rnd(20) - 10);
	case 2: /* float32/float16 subnormals and their neighbours */
		return s * ldexp((double)rnd(8), (int)rnd(6) - 150 + (int)rnd(2) * 126);
	default: { /* a mix including inf and zeros */
		size_t k = rnd(6);
		return k == 0 ? s * INFINITY : k == 1 ? s * 0.0 : s * (double)rnd(3);
	}
	}
}

/* f16 subnormals are far above f32 ones: give the 16-bit types their own. */
static void fill(case_t *c, int mode)
{
	for (size_t i = 0; i < c->t.n; i++) {
		double v = rand_value(mode);
		if (mode == 2 && c->t.dtype == DT_F16)
			v = ldexp((double)rnd(8), -24 - (int)rnd(2)) * ((rng() & 1) ? -1 : 1);
		put(c->t.dtype, c->t.data, i, v);
	}
}

START_TEST(every_group_of_four)
{
	/* 256 assignments x 16 sign patterns, laid out both ways the kernel walks. */
	for (size_t d = 0; d < 4; d++) {
		int dt = all_dtypes[d];
		case_t flat, cols;
		int64_t dflat[1] = {4096 * 4}, dcols[2] = {4, 4096};
		case_new(&flat, dt, 1, dflat);
		case_new(&cols, dt, 2, dcols);
		for (size_t g = 0; g < 4096; g++) {
			size_t vals = g % 256, signs = g / 256;
			for (size_t k = 0; k < 4; k++) {
				double v = (double)((vals >> (2 * k)) & 3);
				if ((signs >> k) & 1)
					v = -v; /* includes -0 against +0 */
				put(dt, flat.t.data, g * 4 + k, v);
				put(dt, cols.t.data, k * 4096 + g, v);
			}
		}
		check_against_ref(&flat, 0);
		check_against_ref(&cols, 0);
		/* A sanity anchor independent of the reference. */
		ck_assert_int_eq(flat.keep[0] + flat.keep[1] + flat.keep[2] + flat.keep[3], 2);
		ck_assert(flat.keep[0] && flat.keep[1]); /* all zeros: lowest indices win */
		case_free(&flat);
		case_free(&cols);
	}
}
END_TEST

START_TEST(known_groups)
{
	/* Hand-worked examples of SPEC section 4, float32 along a rank-1 tensor. */
	struct {
		int c;
		float w[9];
		uint8_t keep[9];
	} ex[] = {
		{4, {1, 2, 3, 4}, {0, 0, 1, 1}},
		{4, {-4, 3, -2, 1}, {1, 1, 0, 0}},
		{4, {2, 2, 2, 2}, {1, 1, 0, 0}},
		{4, {1, 3, 3, 3}, {0, 1, 1, 0}},
		{4, {-0.0f, 0.0f, 0.0f, -0.0f}, {1, 1, 0, 0}},
		{3, {1, 2, 3}, {0, 1, 1}},
		{3, {0, 0, 0}, {1, 1, 0}},
		{5, {1, 2, 3, 4, 0}, {0, 0, 1, 1, 1}},
		{2, {0, 7}, {1, 1}},
		{1, {5}, {1}},
		{7, {9, 1, 9, 1, 1, 5, 5}, {1, 0, 1, 0, 0, 1, 1}},
		{4, {INFINITY, -INFINITY, 3e38f, 1}, {1, 1, 0, 0}},
		{4, {1.4e-45f, 2.8e-45f, 0, -4.2e-45f}, {0, 1, 0, 1}}, /* subnormal patterns 1, 2, 0, 3 */
	};
	for (size_t x = 0; x < sizeof(ex) / sizeof(ex[0]); x++) {
		prune_tensor_t t = {.dtype = DT_F32, .rank = 1, .dims = {ex[x].c},
				    .n = (size_t)ex[x].c, .data = ex[x].w};
		uint8_t keep[9];
		ck_assert_int_eq(prune_mask_2of4(&t, 0, keep, "l", NULL), 0);
		ck_assert_msg(memcmp(keep, ex[x].keep, (size_t)ex[x].c) == 0, "example %zu", x);
	}
}
END_TEST

START_TEST(c_from_1_to_9)
{
	static const int64_t inners[] = {1, 2, 3, 5, 15, 16, 17, 31, 33, 64, 100};
	rng_state = 0x1234567u;
	for (size_t d = 0; d < 4; d++)
		for (int64_t C = 1; C <= 9; C++)
			for (size_t ii = 0; ii < sizeof(inners) / sizeof(inners[0]); ii++)
				for (int mode = 0; mode < 4; mode++) {
					int64_t dims[3] = {(int64_t)rnd(3) + 1, C, inners[ii]};
					case_t c;
					case_new(&c, all_dtypes[d], 3, dims);
					fill(&c, mode);
					check_against_ref(&c, 1);
					case_free(&c);
				}
}
END_TEST

START_TEST(every_axis_random_shapes)
{
	rng_state = 0xC0FFEEu;
	for (int iter = 0; iter < 60; iter++)
		for (size_t d = 0; d < 4; d++) {
			int rank = iter % 2 ? 4 : 2;
			int64_t dims[4];
			for (int i = 0; i < rank; i++)
				dims[i] = rank == 2 ? (int64_t)rnd(70) + 1 : (int64_t)rnd(12) + 1;
			if (iter % 7 == 0)
				dims[rnd((size_t)rank)] = 0; /* empty tensors too */
			case_t c;
			case_new(&c, all_dtypes[d], rank, dims);
			fill(&c, iter % 4);
			for (int axis = 0; axis < rank; axis++)
				check_against_ref(&c, axis);
			case_free(&c);
		}
}
END_TEST

START_TEST(subnormals_and_inf)
{
	rng_state = 0xABCDEFu;
	for (size_t d = 0; d < 4; d++)
		for (int mode = 2; mode <= 3; mode++) {
			int64_t dims[4] = {2, 3, 13, 37};
			case_t c;
			case_new(&c, all_dtypes[d], 4, dims);
			fill(&c, mode);
			for (int axis = 0; axis < 4; axis++)
				check_against_ref(&c, axis);
			case_free(&c);
		}
	/* The smallest subnormal beats +0 and -0 in every type. */
	for (size_t d = 0; d < 4; d++) {
		int64_t dims[1] = {4};
		case_t c;
		case_new(&c, all_dtypes[d], 1, dims);
		put(c.t.dtype, c.t.data, 0, 0.0);
		put(c.t.dtype, c.t.data, 1, -0.0);
		put(c.t.dtype, c.t.data, 2, 0.0);
		/* set element 3 to the smallest positive pattern: 1 */
		switch (ref_esize(c.t.dtype)) {
		case 8:
			((uint64_t *)c.t.data)[3] = 1;
			break;
		case 4:
			((uint32_t *)c.t.data)[3] = 1;
			break;
		default:
			((uint16_t *)c.t.data)[3] = 0x8001; /* negative smallest */
			break;
		}
		ck_assert_int_eq(prune_mask_2of4(&c.t, 0, c.keep, "l", NULL), 0);
		ck_assert(c.keep[0] && !c.keep[1] && !c.keep[2] && c.keep[3]);
		case_free(&c);
	}
}
END_TEST

static void set_nan(int dt, void *data, size_t i, int variant)
{
	switch (ref_esize(dt)) {
	case 8:
		((uint64_t *)data)[i] = variant ? UINT64_C(0xFFF8000000000000) : UINT64_C(0x7FF0000000000001);
		break;
	case 4:
		((uint32_t *)data)[i] = variant ? 0xFFC00000u : 0x7F800001u;
		break;
	default:
		if (dt == DT_F16)
			((uint16_t *)data)[i] = variant ? 0xFE00u : 0x7C01u;
		else
			((uint16_t *)data)[i] = variant ? 0xFFC0u : 0x7F81u;
		break;
	}
}

START_TEST(nan_is_an_error)
{
	rng_state = 0x5EEDu;
	/* Shapes that route the NaN through every path: rows, groups, tails, padding. */
	static const int64_t shapes[][3] = {{2, 8, 40}, {3, 64, 1}, {1, 5, 1},  {1, 6, 20},
					    {2, 7, 19}, {1, 3, 1},  {4, 9, 17}, {1, 1, 1}};
	for (size_t d = 0; d < 4; d++)
		for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
			for (int rep = 0; rep < 6; rep++) {
				case_t c;
				case_new(&c, all_dtypes[d], 3, shapes[s]);
				fill(&c, 1);
				size_t at = rnd(c.t.n);
				set_nan(c.t.dtype, c.t.data, at, rep & 1);
				if (rep >= 4 && at + 1 < c.t.n) /* a second NaN later: first reported */
					set_nan(c.t.dtype, c.t.data, at + 1 + rnd(c.t.n - at - 1), 0);
				sd_error_t e;
				sd_err_clear(&e);
				int rc = prune_mask_2of4(&c.t, 1, c.keep, "conv1/Conv2D", &e);
				ck_assert_int_eq(rc, SD_EMODEL);
				ck_assert_int_eq(e.code, SD_EMODEL);
				ck_assert_str_eq(e.node, "conv1/Conv2D");
				char want[64];
				snprintf(want, sizeof(want), "flat index %zu ", at);
				ck_assert_msg(strstr(e.msg, want) && strstr(e.msg, "conv1/Conv2D") &&
						      strstr(e.msg, "NaN"),
					      "message: %s (want '%s')", e.msg, want);
				case_free(&c);
			}
}
END_TEST

START_TEST(bad_axis)
{
	float w[8] = {0};
	prune_tensor_t t = {.dtype = DT_F32, .rank = 2, .dims = {2, 4}, .n = 8, .data = w};
	uint8_t keep[8];
	sd_error_t e;
	sd_err_clear(&e);
	ck_assert_int_eq(prune_mask_2of4(&t, 2, keep, "l", &e), SD_EUSAGE);
	ck_assert_int_eq(prune_mask_2of4(&t, -1, keep, "l", &e), SD_EUSAGE);
	ck_assert_ptr_nonnull(strstr(e.msg, "axis -1"));
	ck_assert_int_eq(prune_mask_is_2of4(&t, 2, NULL), 0);
	t.n = 9; /* dims and n disagree */
	ck_assert_int_eq(prune_mask_2of4(&t, 0, keep, "l", &e), SD_EUSAGE);
	t.n = 8;
	t.dtype = TENSORFLOW__DATA_TYPE__DT_INT32;
	ck_assert_int_eq(prune_mask_2of4(&t, 0, keep, "l", &e), SD_EUSAGE);
	ck_assert_int_eq(prune_mask_is_2of4(&t, 0, NULL), 0);
}
END_TEST

/* w := w * keep the way a stage writes it: mask bits, then applied from a copy of the
 * weights (the stage's source is the read-only model). Returns the counts. */
static prune_mask_counts_t apply_keep(case_t *c)
{
	size_t bytes = c->t.n * ref_esize(c->t.dtype);
	uint8_t *mbits = malloc(c->t.n / 8 + 1), *src = malloc(bytes ? bytes : 1);
	ck_assert(mbits && src);
	memcpy(src, c->t.data, bytes);
	prune_mask_counts_t cnt;
	prune_mask_bits(&c->t, c->keep, mbits, &cnt);
	prune_mask_apply_bits(c->t.dtype, src, c->t.data, mbits, 0, c->t.n);
	free(mbits);
	free(src);
	return cnt;
}

/*
 * prune_mask_bits and prune_mask_apply_bits against plain loops, over more elements
 * than any vector loop's step with a ragged tail: counts, the rewritten keep bytes,
 * the bits, and the applied values, applied in pieces (as the writer does) from and to
 * buffers at odd addresses (weights sit anywhere in a mapped model; UBSan checks every
 * access). Keep patterns and values (zeros of both signs, inf) are random.
 */
START_TEST(bits_and_apply_long)
{
	rng_state = 0x5EEDu;
	for (size_t d = 0; d < 4; d++) {
		int64_t dims[1] = {((int64_t)1 << 18) + 37};
		case_t c;
		case_new(&c, all_dtypes[d], 1, dims);
		fill(&c, 3);
		size_t n = c.t.n, es = ref_esize(c.t.dtype), zeroed = 0, zeros = 0;
		uint8_t *want_keep = malloc(n);
		for (size_t i = 0; i < n; i++) {
			c.keep[i] = (uint8_t)(rng() % 3 == 0);
			int nz = (ref_bits(c.t.dtype, c.t.data, i) & ~sign_bit(c.t.dtype)) != 0;
			zeroed += !c.keep[i] && nz;
			zeros += !c.keep[i] || !nz;
			want_keep[i] = (uint8_t)(c.keep[i] && nz);
		}
		/* the weights at an odd address */
		uint8_t *src = malloc(n * es + 1), *dst = malloc(n * es + 1);
		memcpy(src + 1, c.t.data, n * es);
		prune_tensor_t odd = c.t;
		odd.data = src + 1;
		uint8_t *mbits = malloc(n / 8 + 1);
		prune_mask_counts_t cnt;
		ck_assert_int_eq(prune_mask_bits(&odd, c.keep, mbits, &cnt), 0); /* inf is no NaN */
		ck_assert_uint_eq(cnt.zeroed, zeroed);
		ck_assert_uint_eq(cnt.zeros, zeros);
		ck_assert(memcmp(c.keep, want_keep, n) == 0);
		for (size_t i = 0; i < n; i++)
			ck_assert_uint_eq((mbits[i / 8] >> (i % 8)) & 1, want_keep[i]);
		for (size_t first = 0; first < n; first += 8 * 1001) {
			size_t k = n - first < 8 * 1001 ? n - first : 8 * 1001;
			prune_mask_apply_bits(c.t.dtype, src + 1 + first * es, dst + 1 + first * es,
					      mbits, first, k);
		}
		for (size_t i = 0; i < n; i++) {
			uint64_t was = ref_bits(c.t.dtype, src + 1, i), now = ref_bits(c.t.dtype, dst + 1, i);
			ck_assert(now == (want_keep[i] ? was : was & sign_bit(c.t.dtype)));
		}
		/* A NaN in the vector part or in the tail is reported (keep is scratch now). */
		for (size_t at = 5; at < n; at += n - 6) {
			uint8_t *keep2 = malloc(n);
			memcpy(keep2, c.keep, n);
			put(c.t.dtype, c.t.data, at, NAN);
			odd.data = c.t.data;
			ck_assert_int_ne(prune_mask_bits(&odd, keep2, mbits, &cnt), 0);
			put(c.t.dtype, c.t.data, at, 1.0);
			free(keep2);
		}
		free(src);
		free(dst);
		free(mbits);
		free(want_keep);
		case_free(&c);
	}
}
END_TEST

/* The pieced driver equals the kernel followed by prune_mask_bits, for shapes whose
 * pieces end mid-byte, whole groups per piece of one row, adjacent groups, odd C. */
START_TEST(pieces_equal_two_passes)
{
	static const struct {
		int rank, axis;
		int64_t dims[4];
	} shapes[] = {
		{2, 0, {4099, 35}},   /* pieces of 468 groups x 35: ends not byte-aligned */
		{2, 1, {35, 70001}},  /* inner == 1, many groups per row */
		{4, 2, {3, 3, 9, 1000}},
		{2, 0, {7, 1 << 17}}, /* one group is larger than a piece */
		{1, 0, {5}},
	};
	rng_state = 0xB175u;
	for (size_t d = 0; d < 4; d++)
		for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
			case_t c;
			case_new(&c, all_dtypes[d], shapes[k].rank, shapes[k].dims);
			fill(&c, 3);
			size_t n = c.t.n;
			uint8_t *keep2 = malloc(n), *b1 = malloc(n / 8 + 1), *b2 = malloc(n / 8 + 1);
			prune_mask_counts_t c1, c2;
			sd_error_t e;
			ck_assert_int_eq(prune_mask_2of4(&c.t, shapes[k].axis, c.keep, "l", &e), 0);
			prune_mask_bits(&c.t, c.keep, b1, &c1);
			ck_assert_int_eq(prune_mask_2of4_bits(&c.t, shapes[k].axis, keep2, b2, &c2,
							      "l", &e),
					 0);
			ck_assert(memcmp(c.keep, keep2, n) == 0);
			ck_assert(memcmp(b1, b2, (n + 7) / 8) == 0);
			ck_assert_uint_eq(c1.zeroed, c2.zeroed);
			ck_assert_uint_eq(c1.zeros, c2.zeros);
			free(keep2);
			free(b1);
			free(b2);
			case_free(&c);
		}
	/* A NaN in a later piece is still reported with its flat index. */
	case_t c;
	int64_t dims[2] = {400, 1000};
	case_new(&c, DT_F32, 2, dims);
	fill(&c, 1);
	put(DT_F32, c.t.data, 300123, NAN);
	uint8_t *b = malloc(c.t.n / 8 + 1);
	prune_mask_counts_t cnt;
	sd_error_t e;
	ck_assert_int_eq(prune_mask_2of4_bits(&c.t, 0, c.keep, b, &cnt, "lay", &e), SD_EMODEL);
	ck_assert_ptr_nonnull(strstr(e.msg, "flat index 300123"));
	free(b);
	case_free(&c);
}
END_TEST

/* dst and counts of the two-pass path (prune_mask_2of4_bits, then apply), the
 * reference for the one-step path below. */
static void two_pass(const prune_tensor_t *t, int axis, void *dst, prune_mask_counts_t *c)
{
	uint8_t *keep = malloc(t->n + 1), *bits = malloc(t->n / 8 + 1);
	ck_assert(keep && bits);
	sd_error_t e;
	ck_assert_int_eq(prune_mask_2of4_bits(t, axis, keep, bits, c, "l", &e), 0);
	prune_mask_apply_bits(t->dtype, t->data, dst, bits, 0, t->n);
	free(keep);
	free(bits);
}

/* prune_mask_2of4_apply over pieces cut anywhere (mid-group, mid-byte, one element)
 * writes the bytes and sums to the counts of the two passes, for every dtype, groups
 * in rows and adjacent (inner 1), odd C, and the largest group it takes. */
START_TEST(one_step_equals_two_passes)
{
	static const struct {
		int rank, axis;
		int64_t dims[4];
	} shapes[] = {
		{2, 0, {4099, 35}},   {2, 1, {35, 7001}},    {4, 2, {3, 3, 9, 100}},
		{4, 2, {2, 3, 6, 17}}, {2, 0, {10, 4096}},    {1, 0, {5}},
		{3, 1, {3, 11, 1}},   {2, 0, {64, 33}},
	};
	rng_state = 0xF05Eu;
	for (size_t d = 0; d < 4; d++)
		for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++)
			for (int mode = 0; mode < 4; mode++) {
				case_t c;
				case_new(&c, all_dtypes[d], shapes[k].rank, shapes[k].dims);
				fill(&c, mode);
				ck_assert(prune_mask_fusable(&c.t, shapes[k].axis));
				size_t n = c.t.n, es = ref_esize(c.t.dtype);
				uint8_t *want = malloc(n * es), *got = malloc(n * es);
				ck_assert(want && got);
				prune_mask_counts_t wc;
				two_pass(&c.t, shapes[k].axis, want, &wc);
				/* whole (every group in one step), then in pieces (groups cut),
				 * with 16-byte vectors and then the widest the CPU has */
				for (int form = 0; form < 4; form++) {
					int cut = form & 1;
					prune_mask_vector_width(form < 2 ? 16 : 32);
					prune_mask_counts_t gc = {0, 0};
					memset(got, 0x5A, n * es);
					for (size_t at = 0; at < n;) {
						size_t len = cut ? 1 + rnd(rnd(4) ? 3000 : 3) : n;
						if (len > n - at)
							len = n - at;
						ck_assert_int_eq(prune_mask_2of4_apply(
									 &c.t, shapes[k].axis, at, len,
									 got + at * es, &gc),
								 0);
						at += len;
					}
					ck_assert_msg(memcmp(want, got, n * es) == 0,
						      "%s shape %zu mode %d cut %d width %d",
						      prune_dtype_name(c.t.dtype), k, mode, cut,
						      prune_mask_vector_width(0));
					ck_assert_uint_eq(gc.zeroed, wc.zeroed);
					ck_assert_uint_eq(gc.zeros, wc.zeros);
				}
				free(want);
				free(got);
				case_free(&c);
			}
	/* A group of 4 rows over 16384 elements does not fit the stack scratch. */
	prune_tensor_t big = {.dtype = DT_F32, .rank = 2, .dims = {4, 4097}, .n = 4 * 4097};
	ck_assert(!prune_mask_fusable(&big, 0));
	ck_assert(prune_mask_fusable(&big, 1));
	ck_assert(!prune_mask_fusable(&big, 2));
	/* A NaN is reported by the piece whose groups hold it, and only by those. */
	case_t c;
	int64_t dims[2] = {40, 100};
	case_new(&c, DT_F32, 2, dims);
	fill(&c, 1);
	put(DT_F32, c.t.data, 2050, NAN); /* row 20, group rows 20..23 */
	float out[4000];
	for (int width = 16; width <= 32; width += 16) {
		prune_mask_vector_width(width);
		prune_mask_counts_t cnt = {0, 0};
		ck_assert_int_eq(prune_mask_2of4_apply(&c.t, 0, 0, 2000, out, &cnt), 0);
		ck_assert_int_ne(prune_mask_2of4_apply(&c.t, 0, 2000, 10, out, &cnt), 0);
		ck_assert_int_eq(prune_mask_2of4_apply(&c.t, 0, 2400, 1600, out, &cnt), 0);
	}
	case_free(&c);
}
END_TEST

/* A run with at_save jobs and others: the jobs a save fills (prune_mask_run_fill,
 * pieces on two threads at once) and the ones it does not (counted at the end) all end
 * with the bytes and counts of the two passes, and a NaN fails the run naming its
 * layer. */
typedef struct {
	prune_mask_run_t *run;
	case_t *c;
	uint8_t **got;
	int from, to, stride;
} filler_t;

static void *fill_jobs(void *arg)
{
	filler_t *f = arg;
	for (int j = f->from; j < f->to; j++) {
		size_t n = f->c[j].t.n, es = ref_esize(f->c[j].t.dtype);
		/* every other piece: two fillers share each weight */
		for (size_t at = (size_t)f->stride * 1000; at < n; at += 2000) {
			size_t len = n - at < 1000 ? n - at : 1000;
			prune_mask_run_fill(f->run, (size_t)j, (uint8_t *)f->c[j].t.data + at * es,
					    at, len, f->got[j] + at * es);
		}
	}
	return NULL;
}

START_TEST(run_at_save)
{
	enum { JOBS = 8 };
	for (int round = 0; round < 2; round++) {
		case_t c[JOBS];
		prune_mask_job_t jobs[JOBS];
		uint8_t *want[JOBS], *got[JOBS];
		prune_mask_counts_t wc[JOBS];
		rng_state = 0x5A7Eu + (uint64_t)round;
		for (int j = 0; j < JOBS; j++) {
			int64_t dims[2] = {4 + 13 * j, 1000 + j};
			case_new(&c[j], all_dtypes[j % 4], 2, dims);
			fill(&c[j], j % 4);
			size_t bytes = c[j].t.n * ref_esize(c[j].t.dtype);
			want[j] = malloc(bytes);
			got[j] = malloc(bytes);
			ck_assert(want[j] && got[j]);
			two_pass(&c[j].t, 0, want[j], &wc[j]);
			bool at_save = j % 3 != 2;
			jobs[j] = (prune_mask_job_t){.w = &c[j].t, .axis = 0, .layer = "l",
						     .at_save = at_save,
						     .bits = at_save ? NULL
								     : calloc(c[j].t.n / 8 + 1, 1)};
		}
		if (round == 1) {
			put(c[4].t.dtype, c[4].t.data, 17, NAN);
			jobs[4].layer = "fourth";
		}
		prune_mask_run_t *run;
		sd_error_t e;
		ck_assert_int_eq(prune_mask_run_start(jobs, JOBS, 2, NULL, &run, &e), 0);
		/* jobs 6 and 7 are never filled: their counts come from the run */
		filler_t f0 = {run, c, got, 0, 6, 0}, f1 = {run, c, got, 0, 6, 1};
		pthread_t th;
		ck_assert_int_eq(pthread_create(&th, NULL, fill_jobs, &f1), 0);
		fill_jobs(&f0);
		pthread_join(th, NULL);
		int rc = prune_mask_run_end(run, &e);
		if (round == 1) {
			ck_assert_int_eq(rc, SD_EMODEL);
			ck_assert_ptr_nonnull(strstr(e.msg, "'fourth'"));
			ck_assert_ptr_nonnull(strstr(e.msg, "flat index 17"));
		} else {
			ck_assert_int_eq(rc, 0);
			for (int j = 0; j < JOBS; j++) {
				if (j < 6)
					ck_assert_msg(memcmp(got[j], want[j],
							     c[j].t.n * ref_esize(c[j].t.dtype)) == 0,
						      "job %d", j);
				ck_assert_uint_eq(jobs[j].counts.zeroed, wc[j].zeroed);
				ck_assert_uint_eq(jobs[j].counts.zeros, wc[j].zeros);
			}
		}
		for (int j = 0; j < JOBS; j++) {
			free(want[j]);
			free(got[j]);
			free(jobs[j].bits);
			case_free(&c[j]);
		}
	}
}
END_TEST

/* A batch on several threads gives each job what prune_mask_2of4_bits gives it alone,
 * and reports the first failing job in array order whatever thread met it. */
START_TEST(batch_on_threads)
{
	enum { JOBS = 9 };
	case_t c[JOBS];
	prune_mask_job_t jobs[JOBS];
	uint8_t *want[JOBS];
	prune_mask_counts_t wc[JOBS];
	rng_state = 0xBA7Cu;
	for (int j = 0; j < JOBS; j++) {
		int64_t dims[2] = {4 + 13 * j, 1000 + j};
		case_new(&c[j], all_dtypes[j % 4], 2, dims);
		fill(&c[j], 1);
		size_t nb = c[j].t.n / 8 + 1;
		want[j] = malloc(nb);
		sd_error_t e;
		ck_assert_int_eq(prune_mask_2of4_bits(&c[j].t, 0, c[j].keep, want[j], &wc[j], "l",
						      &e),
				 0);
		jobs[j] = (prune_mask_job_t){.w = &c[j].t, .axis = 0, .layer = "l",
					     .bits = calloc(nb, 1)};
	}
	sd_error_t e;
	ck_assert_int_eq(prune_mask_batch(jobs, JOBS, 4, NULL, &e), 0);
	for (int j = 0; j < JOBS; j++) {
		ck_assert(memcmp(jobs[j].bits, want[j], (c[j].t.n + 7) / 8) == 0);
		ck_assert_uint_eq(jobs[j].counts.zeroed, wc[j].zeroed);
		ck_assert_uint_eq(jobs[j].counts.zeros, wc[j].zeros);
	}
	put(c[2].t.dtype, c[2].t.data, 77, NAN);
	put(c[6].t.dtype, c[6].t.data, 5, NAN);
	jobs[2].layer = "second";
	jobs[6].layer = "sixth";
	ck_assert_int_eq(prune_mask_batch(jobs, JOBS, 4, NULL, &e), SD_EMODEL);
	ck_assert_ptr_nonnull(strstr(e.msg, "'second'"));
	ck_assert_ptr_nonnull(strstr(e.msg, "flat index 77"));
	for (int j = 0; j < JOBS; j++) {
		free(want[j]);
		free(jobs[j].bits);
		case_free(&c[j]);
	}
}
END_TEST

START_TEST(apply_gives_signed_zeros)
{
	rng_state = 0xA99u;
	for (size_t d = 0; d < 4; d++) {
		int64_t dims[4] = {3, 3, 10, 21};
		case_t c;
		case_new(&c, all_dtypes[d], 4, dims);
		fill(&c, 1);
		((uint8_t *)c.t.data)[ref_esize(c.t.dtype) - 1] |= 0x80; /* element 0 negative */
		size_t bytes = c.t.n * ref_esize(c.t.dtype);
		void *orig = malloc(bytes);
		ck_assert_ptr_nonnull(orig);
		memcpy(orig, c.t.data, bytes);
		ck_assert_int_eq(prune_mask_2of4(&c.t, 2, c.keep, "l", NULL), 0);
		uint8_t *kept = malloc(c.t.n);
		ck_assert_ptr_nonnull(kept);
		memcpy(kept, c.keep, c.t.n);
		prune_mask_counts_t cnt = apply_keep(&c);
		size_t pruned = 0, negzero = 0, zeroed = 0;
		for (size_t i = 0; i < c.t.n; i++) {
			uint64_t was = ref_bits(c.t.dtype, orig, i), now = ref_bits(c.t.dtype, c.t.data, i);
			if (kept[i]) {
				ck_assert(now == was);
			} else {
				ck_assert(now == (was & sign_bit(c.t.dtype)));
				pruned++;
				negzero += now != 0;
				zeroed += (was & ~sign_bit(c.t.dtype)) != 0;
			}
		}
		ck_assert_uint_eq(cnt.zeroed, zeroed);
		ck_assert(pruned > c.t.n / 3);
		ck_assert(negzero > 0); /* some pruned values were negative */
		size_t zeros = 0;
		ck_assert_int_eq(prune_mask_is_2of4(&c.t, 2, &zeros), 1);
		size_t want = 0;
		for (size_t i = 0; i < c.t.n; i++)
			want += get(c.t.dtype, c.t.data, i) == 0.0;
		ck_assert_uint_eq(zeros, want);
		ck_assert_uint_eq(cnt.zeros, want);
		ck_assert(zeros >= pruned);
		/* Pruning along the axis is generally not 2:4 along another. */
		memcpy(c.t.data, orig, bytes);
		ck_assert_int_eq(prune_mask_is_2of4(&c.t, 2, &zeros), 0);
		ck_assert_uint_eq(zeros, 0);
		free(kept);
		free(orig);
		case_free(&c);
	}
}
END_TEST

START_TEST(is_2of4_cases)
{
	struct {
		int c;
		float w[8];
		int want;
		size_t zeros;
	} ex[] = {
		{4, {1, 2, 3, 4}, 0, 0},
		{4, {1, 0, 3, 0}, 1, 2},
		{4, {-0.0f, -0.0f, 1, 1}, 1, 2},
		{4, {NAN, NAN, 1, 0}, 0, 1},
		{4, {NAN, 0, 0, 0}, 1, 3},
		{3, {1, 2, 3}, 0, 0},
		{3, {1, 0, 3}, 1, 1},
		{2, {1, 2}, 1, 0},
		{6, {1, 0, 0, 1, 5, 6}, 1, 2},
		{7, {1, 0, 0, 1, 5, 6, 7}, 0, 2},
		{8, {0, 0, 0, 0, 0, 0, 0, 0}, 1, 8},
	};
	for (size_t x = 0; x < sizeof(ex) / sizeof(ex[0]); x++) {
		prune_tensor_t t = {.dtype = DT_F32, .rank = 1, .dims = {ex[x].c},
				    .n = (size_t)ex[x].c, .data = ex[x].w};
		size_t zeros = 99;
		ck_assert_msg(prune_mask_is_2of4(&t, 0, &zeros) == ex[x].want, "example %zu", x);
		ck_assert_uint_eq(zeros, ex[x].zeros);
	}
	/* Dense random tensors in every type and along every axis: never 2:4. */
	rng_state = 0xD15Eu;
	for (size_t d = 0; d < 4; d++) {
		int64_t dims[4] = {3, 5, 6, 7};
		case_t c;
		case_new(&c, all_dtypes[d], 4, dims);
		for (size_t i = 0; i < c.t.n; i++)
			put(c.t.dtype, c.t.data, i, 1.0 + (double)rnd(100));
		for (int axis = 0; axis < 4; axis++) {
			size_t zeros = 99;
			ck_assert_int_eq(prune_mask_is_2of4(&c.t, axis, &zeros), 0);
			ck_assert_uint_eq(zeros, 0);
		}
		ck_assert_int_eq(prune_mask_2of4(&c.t, 1, c.keep, "l", NULL), 0);
		apply_keep(&c);
		size_t zeros = 0, kzeros = 0;
		ck_assert_int_eq(prune_mask_is_2of4(&c.t, 1, &zeros), 1);
		/* the check on the keep bytes agrees with the check on the values */
		ck_assert_int_eq(prune_mask_keep_is_2of4(&c.t, 1, c.keep, &kzeros), 1);
		ck_assert_uint_eq(kzeros, zeros);
		ck_assert_int_eq(prune_mask_keep_is_2of4(&c.t, 2, c.keep, NULL), 0);
		/* C = 5: groups of 4 and 1, so per (outer, inner) 2 of the 5 are zeroed. */
		ck_assert_uint_eq(zeros, (size_t)3 * 6 * 7 * 2);
		ck_assert_int_eq(prune_mask_is_2of4(&c.t, 1, NULL), 1);
		case_free(&c);
	}
}
END_TEST

int main(void)
{
	const tu_case_t cases[] = {
		{"kernel",
		 TU_TESTS(every_group_of_four, known_groups, c_from_1_to_9, every_axis_random_shapes,
			  subnormals_and_inf, nan_is_an_error, bad_axis),
		 .timeout = 120},
		{"apply", TU_TESTS(apply_gives_signed_zeros, bits_and_apply_long,
				   pieces_equal_two_passes, one_step_equals_two_passes, batch_on_threads,
				   run_at_save, is_2of4_cases),
		 .timeout = 120},
		{NULL},
	};
	return tu_main("mask", cases);
}
