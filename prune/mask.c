/*
 * prune_mask: the 2:4 kernel (SPEC section 4), bit-exact, for float32, float64, float16
 * and bfloat16 weights (see mask.h for the rule and the glossary).
 *
 * Design.
 * - Magnitudes are compared as integers: the IEEE pattern with the sign bit cleared
 *   orders exactly like |w| for every non-NaN value of all four types (subnormals and
 *   inf included, +0 == -0). The kernel therefore only knows element widths (16, 32,
 *   64 bits), never float semantics, and cannot differ from the reference by a rounding
 *   or a flush-to-zero setting. With the sign cleared the patterns also fit the signed
 *   type of the same width, so the compares map onto SSE2's signed pcmpgt.
 * - The rule "keep i iff fewer than 2 group members beat it" is evaluated with the six
 *   pairwise compares b_ij = (|w_i| >= |w_j|) for i < j: for a pair exactly one beats
 *   the other (the lower index wins ties), so i is beaten by b_ji for j < i and by !b_ij
 *   for j > i. No sort, no branch, no data-dependent control flow.
 * - The tensor is viewed as [outer, C, inner]; a group is 4 rows of `inner` contiguous
 *   elements. For inner > 1 four rows are walked side by side, 16 elements at a time,
 *   with GCC/Clang vector extensions (explicit, so -O2 builds vectorise too, and
 *   portable to any target with 16-byte vectors). For
 *   inner == 1 (MatMul with transpose_b, the prune axis last) a group is 4 adjacent
 *   elements and the same compares run on each group's rotations.
 * - A last group with r < 4 real elements is padded with zeros of higher index, which
 *   never beat a real element: r <= 2 keeps everything, r == 3 keeps the top 2 of 3
 *   (the kernel runs with a zero fourth row).
 * - NaN is detected on the fly (abs pattern above the inf pattern, folded into a
 *   flag); only when the flag is raised is the tensor rescanned for the first NaN's
 *   flat index, so the common path pays one compare per element.
 *
 * - prune's own masks take one step instead (prune_mask_2of4_apply): the same compares
 *   in the same registers, the mask applied and its counts taken there, so the weight is
 *   read once and neither keep bytes nor bits are written. The three-pass form stays for
 *   what needs bits (export's stored masks, groups too large for the step, float64)
 *   and as the step's reference in the tests.
 *
 * Workload: every weight of every pruned layer passes through prune_mask_2of4 and
 * prune_mask_apply once per export/prune (tens of MB to a few GB per model), and through
 * prune_mask_is_2of4 on check. Throughput target: several GB/s of float32 per core.
 * Reentrant, no allocation; keep[] has one byte per element (0 or 1).
 */
#include "prune/mask.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/sd_assert.h"

/* Abs and inf patterns per element width (float16: 0x7C00; bfloat16: 0x7F80). */
#define ABS16 0x7FFF
#define ABS32 0x7FFFFFFF
#define ABS64 INT64_C(0x7FFFFFFFFFFFFFFF)
#define INF32 0x7F800000
#define INF64 INT64_C(0x7FF0000000000000)
#define INF_HALF 0x7C00
#define INF_BF16 0x7F80

/* A shape viewed around the prune axis. */
typedef struct {
	size_t outer, c, inner;
} view_t;

static int view_of(const prune_tensor_t *t, int axis, view_t *v)
{
	if (!t || !prune_dtype_size(t->dtype) || t->rank < 1 || t->rank > PRUNE_MAX_RANK ||
	    axis < 0 || axis >= t->rank)
		return -1;
	size_t outer = 1, inner = 1;
	for (int i = 0; i < t->rank; i++) {
		if (t->dims[i] < 0)
			return -1;
		if (i == axis)
			continue;
		size_t *p = i < axis ? &outer : &inner;
		if (__builtin_mul_overflow(*p, (size_t)t->dims[i], p))
			return -1;
	}
	size_t c = (size_t)t->dims[axis], total;
	if (__builtin_mul_overflow(outer, c, &total) || __builtin_mul_overflow(total, inner, &total))
		return -1;
	if (total != t->n) /* the dims and n disagree: a caller bug, never trust either */
		return -1;
	v->outer = outer;
	v->c = c;
	v->inner = inner;
	return 0;
}

/*
 * The keep rule on four abs patterns, scalar form (float64, and the tails of the vector
 * loops). Element 0 is beaten !b01 + !b02 + !b03 times, 1: b01 + !b12 + !b13,
 * 2: b02 + b12 + !b23, 3: b03 + b13 + b23; it is kept iff beaten fewer than 2 times.
 */
#define KEEP4_SCALAR(a0, a1, a2, a3, k0, k1, k2, k3)                                  \
	do {                                                                           \
		int b01_ = (a0) >= (a1), b02_ = (a0) >= (a2), b03_ = (a0) >= (a3);     \
		int b12_ = (a1) >= (a2), b13_ = (a1) >= (a3), b23_ = (a2) >= (a3);     \
		(k0) = (uint8_t)(b01_ + b02_ + b03_ >= 2);                             \
		(k1) = (uint8_t)(b12_ + b13_ > b01_);                                  \
		(k2) = (uint8_t)(b02_ + b12_ <= b23_);                                 \
		(k3) = (uint8_t)(b03_ + b13_ + b23_ < 2);                              \
	} while (0)

/*
 * Vectors are the native 16 bytes (SSE2 on x86-64, NEON on arm64) so every operation maps
 * to one instruction; wider generic vectors get split by GCC into scalar code for
 * compares. One step handles BLOCK = 16 elements of a row, i.e. 16 keep bytes, built
 * from 4 (32-bit) or 2 (16-bit) compare results by even-lane shuffles that compile to
 * pand + packuswb. 64-bit elements have no SSE2 compare, so float64 runs the same rule
 * in scalar branchless form; it is the rare type and moves twice the bytes per compare.
 */
#define BLOCK 16

typedef int8_t v16qi_t __attribute__((vector_size(16)));
typedef int16_t v8hi_t __attribute__((vector_size(16)));
typedef int32_t v4si_t __attribute__((vector_size(16)));

/* 16 keep bytes from 4 vectors of -1/0 int32 lanes: the low byte of each lane, & 1. */
static inline __attribute__((always_inline)) void narrow32(const v4si_t *q, uint8_t *out)
{
	v8hi_t lo = __builtin_shufflevector((v8hi_t)q[0], (v8hi_t)q[1], 0, 2, 4, 6, 8, 10, 12, 14);
	v8hi_t hi = __builtin_shufflevector((v8hi_t)q[2], (v8hi_t)q[3], 0, 2, 4, 6, 8, 10, 12, 14);
	v16qi_t r = __builtin_shufflevector((v16qi_t)lo, (v16qi_t)hi, 0, 2, 4, 6, 8, 10, 12, 14,
					    16, 18, 20, 22, 24, 26, 28, 30);
	r &= 1;
	memcpy(out, &r, sizeof(r));
}

/* 16 keep bytes from 2 vectors of -1/0 int16 lanes. */
static inline __attribute__((always_inline)) void narrow16(const v8hi_t *q, uint8_t *out)
{
	v16qi_t r = __builtin_shufflevector((v16qi_t)q[0], (v16qi_t)q[1], 0, 2, 4, 6, 8, 10, 12,
					    14, 16, 18, 20, 22, 24, 26, 28, 30);
	r &= 1;
	memcpy(out, &r, sizeof(r));
}

/*
 * Vector row kernel for one element width: S is the signed element type, V its native
 * vector (NV of them make a BLOCK), NARROW packs compare results into keep bytes.
 * Vector compares yield -1/0, so the rule of KEEP4_SCALAR is rewritten with t = -b:
 * "b12 + b13 > b01" becomes "t12 + t13 < t01" and so on. p3 == NULL is the padded group
 * of 3 (a zero fourth row whose keep bytes are not written). Returns non-zero when some
 * element's abs pattern exceeds inf (a NaN).
 */
#define DEFINE_ROWS_VEC(NAME, S, V, NV, NARROW)                                        \
	static inline __attribute__((always_inline)) S NAME(                           \
		const S *p0, const S *p1, const S *p2, const S *p3, uint8_t *k0,        \
		uint8_t *k1, uint8_t *k2, uint8_t *k3, size_t len, S absm, S inf)       \
	{                                                                              \
		size_t j = 0;                                                          \
		V vbad = {0};                                                          \
		for (; j + BLOCK <= len; j += BLOCK) {                                 \
			V q0[NV], q1[NV], q2[NV], q3[NV];                              \
			for (int v = 0; v < NV; v++) {                                 \
				size_t off = j + (size_t)v * (BLOCK / NV);             \
				V a0, a1, a2, a3 = {0};                                \
				memcpy(&a0, p0 + off, sizeof(a0));                     \
				memcpy(&a1, p1 + off, sizeof(a1));                     \
				memcpy(&a2, p2 + off, sizeof(a2));                     \
				if (p3)                                                \
					memcpy(&a3, p3 + off, sizeof(a3));             \
				a0 &= absm;                                            \
				a1 &= absm;                                            \
				a2 &= absm;                                            \
				a3 &= absm;                                            \
				vbad |= (V)(a0 > inf) | (V)(a1 > inf) | (V)(a2 > inf) | \
					(V)(a3 > inf);                                 \
				V t01 = (V)(a0 >= a1), t02 = (V)(a0 >= a2);            \
				V t03 = (V)(a0 >= a3), t12 = (V)(a1 >= a2);            \
				V t13 = (V)(a1 >= a3), t23 = (V)(a2 >= a3);            \
				q0[v] = (V)(t01 + t02 + t03 <= -2);                    \
				q1[v] = (V)(t12 + t13 < t01);                          \
				q2[v] = (V)(t02 + t12 >= t23);                         \
				q3[v] = (V)(t03 + t13 + t23 > -2);                     \
			}                                                              \
			NARROW(q0, k0 + j);                                            \
			NARROW(q1, k1 + j);                                            \
			NARROW(q2, k2 + j);                                            \
			if (p3)                                                        \
				NARROW(q3, k3 + j);                                    \
		}                                                                      \
		S bad = 0;                                                             \
		for (int l = 0; l < BLOCK / NV; l++)                                   \
			bad |= vbad[l];                                                \
		for (; j < len; j++) {                                                 \
			S a0 = p0[j] & absm, a1 = p1[j] & absm, a2 = p2[j] & absm;     \
			S a3 = p3 ? p3[j] & absm : 0;                                  \
			uint8_t q3;                                                    \
			bad |= (S)((a0 > inf) | (a1 > inf) | (a2 > inf) | (a3 > inf)); \
			KEEP4_SCALAR(a0, a1, a2, a3, k0[j], k1[j], k2[j], q3);         \
			if (p3)                                                        \
				k3[j] = q3;                                            \
		}                                                                      \
		return bad;                                                            \
	}

DEFINE_ROWS_VEC(rows16, prune_i16u_t, v8hi_t, 2, narrow16)
DEFINE_ROWS_VEC(rows32, prune_i32u_t, v4si_t, 4, narrow32)

/* Scalar row kernel (float64): the same rule, one element of each row at a time. */
static inline __attribute__((always_inline)) int64_t rows64(
	const prune_i64u_t *p0, const prune_i64u_t *p1, const prune_i64u_t *p2, const prune_i64u_t *p3, uint8_t *k0,
	uint8_t *k1, uint8_t *k2, uint8_t *k3, size_t len, int64_t absm, int64_t inf)
{
	int64_t bad = 0;
	for (size_t j = 0; j < len; j++) {
		int64_t a0 = p0[j] & absm, a1 = p1[j] & absm, a2 = p2[j] & absm;
		int64_t a3 = p3 ? p3[j] & absm : 0;
		uint8_t q3;
		bad |= (int64_t)((a0 > inf) | (a1 > inf) | (a2 > inf) | (a3 > inf));
		KEEP4_SCALAR(a0, a1, a2, a3, k0[j], k1[j], k2[j], q3);
		if (p3)
			k3[j] = q3;
	}
	return bad;
}

/*
 * inner == 1: each group is 4 adjacent elements, so a vector holds whole groups.
 * Rotating each group by r = 1..3 lanes puts element (i + r) % 4 beside element i; it
 * beats i if larger, or equal with a lower index, which for a rotation by r is exactly
 * lanes i >= 4 - r (the LOW masks). Kept iff beaten fewer than 2 times.
 */
#define ROTQ(b, r) (b) + (r) % 4, (b) + (1 + (r)) % 4, (b) + (2 + (r)) % 4, (b) + (3 + (r)) % 4
#define ROT4(r) ROTQ(0, r)
#define ROT8(r) ROTQ(0, r), ROTQ(4, r)
#define ROT16(r) ROT8(r), ROTQ(8, r), ROTQ(12, r)
#define LOW4(r) -(0 >= 4 - (r)), -(1 >= 4 - (r)), -(2 >= 4 - (r)), -(3 >= 4 - (r))
#define LOW8(r) LOW4(r), LOW4(r)
#define LOW16(r) LOW8(r), LOW8(r)

/* -1 in the lanes of a (abs patterns, whole groups) that are kept, 0 elsewhere. */
#define ROT_KEEP(V, a, ROT, low1, low2, low3)                                          \
	({                                                                             \
		V r1_ = __builtin_shufflevector(a, a, ROT(1));                         \
		V r2_ = __builtin_shufflevector(a, a, ROT(2));                         \
		V r3_ = __builtin_shufflevector(a, a, ROT(3));                         \
		V beaten_ = ((V)(r1_ > (a)) | ((V)(r1_ == (a)) & (low1))) +            \
			    ((V)(r2_ > (a)) | ((V)(r2_ == (a)) & (low2))) +            \
			    ((V)(r3_ > (a)) | ((V)(r3_ == (a)) & (low3)));             \
		(V)(beaten_ > -2);                                                     \
	})

#define DEFINE_GROUPS_VEC(NAME, S, V, NV, NARROW, ROT, LOW)                            \
	static inline __attribute__((always_inline)) S NAME(const S *p, uint8_t *k,    \
							     size_t ngroups, S absm,   \
							     S inf)                    \
	{                                                                              \
		size_t i = 0, n = 4 * ngroups;                                         \
		V vbad = {0};                                                          \
		const V low1 = {LOW(1)}, low2 = {LOW(2)}, low3 = {LOW(3)};             \
		for (; i + BLOCK <= n; i += BLOCK) {                                   \
			V q[NV];                                                       \
			for (int v = 0; v < NV; v++) {                                 \
				V a;                                                   \
				memcpy(&a, p + i + (size_t)v * (BLOCK / NV), sizeof(a)); \
				a &= absm;                                             \
				vbad |= (V)(a > inf);                                  \
				q[v] = ROT_KEEP(V, a, ROT, low1, low2, low3);          \
			}                                                              \
			NARROW(q, k + i);                                              \
		}                                                                      \
		S bad = 0;                                                             \
		for (int l = 0; l < BLOCK / NV; l++)                                   \
			bad |= vbad[l];                                                \
		for (; i < n; i += 4) {                                                \
			S a0 = p[i] & absm, a1 = p[i + 1] & absm;                      \
			S a2 = p[i + 2] & absm, a3 = p[i + 3] & absm;                  \
			bad |= (S)((a0 > inf) | (a1 > inf) | (a2 > inf) | (a3 > inf)); \
			KEEP4_SCALAR(a0, a1, a2, a3, k[i], k[i + 1], k[i + 2], k[i + 3]); \
		}                                                                      \
		return bad;                                                            \
	}

DEFINE_GROUPS_VEC(groups16, prune_i16u_t, v8hi_t, 2, narrow16, ROT8, LOW8)
DEFINE_GROUPS_VEC(groups32, prune_i32u_t, v4si_t, 4, narrow32, ROT4, LOW4)

static inline __attribute__((always_inline)) int64_t groups64(const prune_i64u_t *p, uint8_t *k,
							       size_t ngroups, int64_t absm,
							       int64_t inf)
{
	int64_t bad = 0;
	for (size_t i = 0; i < 4 * ngroups; i += 4) {
		int64_t a0 = p[i] & absm, a1 = p[i + 1] & absm;
		int64_t a2 = p[i + 2] & absm, a3 = p[i + 3] & absm;
		bad |= (int64_t)((a0 > inf) | (a1 > inf) | (a2 > inf) | (a3 > inf));
		KEEP4_SCALAR(a0, a1, a2, a3, k[i], k[i + 1], k[i + 2], k[i + 3]);
	}
	return bad;
}

/*
 * Whole-tensor driver for one width: loops outer, then the groups along C, each group
 * handing 4 rows of `inner` elements to the row kernel (or, for inner == 1, a run of
 * whole groups to the group kernel). The partial last group is handled here.
 */
#define DEFINE_MASK(NAME, S, ROWS, GROUPS)                                             \
	static S NAME(const S *w, const view_t *v, uint8_t *keep, S absm, S inf)       \
	{                                                                              \
		size_t c = v->c, inner = v->inner, full = c / 4, r = c % 4;            \
		S bad = 0;                                                             \
		for (size_t o = 0; o < v->outer; o++) {                                \
			const S *wo = w + o * c * inner;                               \
			uint8_t *ko = keep + o * c * inner;                            \
			if (inner == 1) {                                              \
				bad |= GROUPS(wo, ko, full, absm, inf);                \
			} else {                                                       \
				for (size_t g = 0; g < full; g++) {                    \
					const S *p = wo + 4 * g * inner;               \
					uint8_t *k = ko + 4 * g * inner;               \
					bad |= ROWS(p, p + inner, p + 2 * inner,       \
						    p + 3 * inner, k, k + inner,       \
						    k + 2 * inner, k + 3 * inner,      \
						    inner, absm, inf);                 \
				}                                                      \
			}                                                              \
			const S *p = wo + 4 * full * inner;                            \
			uint8_t *k = ko + 4 * full * inner;                            \
			if (r == 3) {                                                  \
				bad |= ROWS(p, p + inner, p + 2 * inner, NULL, k,      \
					    k + inner, k + 2 * inner, NULL, inner,     \
					    absm, inf);                                \
			} else if (r) {                                                \
				/* 1 or 2 real elements: both kept; NaN still checked. */ \
				memset(k, 1, r * inner);                               \
				for (size_t j = 0; j < r * inner; j++)                 \
					bad |= (S)((p[j] & absm) > inf);               \
			}                                                              \
		}                                                                      \
		return bad;                                                            \
	}

DEFINE_MASK(mask16, prune_i16u_t, rows16, groups16)
DEFINE_MASK(mask32, prune_i32u_t, rows32, groups32)
DEFINE_MASK(mask64, prune_i64u_t, rows64, groups64)

/* Flat index of the first NaN (abs pattern above inf), or n. */
#define DEFINE_FIRST_NAN(NAME, S, ABSM)                                                \
	static size_t NAME(const S *p, size_t n, S inf)                                \
	{                                                                              \
		for (size_t i = 0; i < n; i++)                                         \
			if ((S)(p[i] & (ABSM)) > inf)                                  \
				return i;                                              \
		return n;                                                              \
	}

DEFINE_FIRST_NAN(nan16, prune_i16u_t, ABS16)
DEFINE_FIRST_NAN(nan32, prune_i32u_t, ABS32)
DEFINE_FIRST_NAN(nan64, prune_i64u_t, ABS64)

/* For the error message; the kernels only say that some element is NaN. */
static size_t first_nan(const prune_tensor_t *w)
{
	switch (w->dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT: return nan32(w->data, w->n, INF32);
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE: return nan64(w->data, w->n, INF64);
	case TENSORFLOW__DATA_TYPE__DT_HALF: return nan16(w->data, w->n, INF_HALF);
	default: return nan16(w->data, w->n, INF_BF16);
	}
}

static int nan_error(const prune_tensor_t *w, size_t at, const char *layer, sd_error_t *e)
{
	return sd_err_node(e, SD_EMODEL, layer,
			   "layer '%s': weight holds NaN at flat index %zu (of %zu %s elements)",
			   layer, at, w->n, prune_dtype_name(w->dtype));
}

/* The view of w around axis, or SD_EUSAGE naming *layer (a NULL layer becomes ""). */
static int checked_view(const prune_tensor_t *w, int axis, const char **layer, view_t *v,
			sd_error_t *e)
{
	if (!*layer)
		*layer = "";
	if (!view_of(w, axis, v))
		return 0;
	return sd_err_node(e, SD_EUSAGE, *layer,
			   "layer '%s': prune axis %d is not valid for a %s tensor of rank %d",
			   *layer, axis, w ? prune_dtype_name(w->dtype) : "missing",
			   w ? w->rank : 0);
}

/* The kernel for w's dtype on view v of data; non-zero when a NaN was seen. */
static int mask_any(int dtype, const void *data, const view_t *v, uint8_t *keep)
{
	switch (dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		return mask32(data, v, keep, ABS32, INF32) != 0;
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE:
		return mask64(data, v, keep, ABS64, INF64) != 0;
	case TENSORFLOW__DATA_TYPE__DT_HALF:
		return mask16(data, v, keep, ABS16, INF_HALF) != 0;
	default: /* DT_BFLOAT16; view_of() rejected every other dtype */
		return mask16(data, v, keep, ABS16, INF_BF16) != 0;
	}
}

int prune_mask_2of4(const prune_tensor_t *w, int axis, uint8_t *keep, const char *layer,
		    sd_error_t *e)
{
	view_t v;
	int rc = checked_view(w, axis, &layer, &v, e);
	if (rc || !w->n)
		return rc;
	return mask_any(w->dtype, w->data, &v, keep) ? nan_error(w, first_nan(w), layer, e) : 0;
}

/*
 * Bits: the mask a stage writes out. A weight is never masked in place: the output
 * writer produces each masked weight from the mapped original (prune_mask_apply_bits),
 * so a stage needs no writable copy of the model. Before that, prune_mask_bits turns
 * the kernel's keep bytes into one bit per element and counts what the mask changes.
 * A kept zero (+0 or -0) is written unchanged whether kept or not, so it is stored as
 * not kept: the bits then mark exactly the non-zeros of the result.
 */
static inline uint8_t pack8(uint64_t b) /* 8 bytes of 0/1 -> 8 bits, byte k -> bit k */
{
	return (uint8_t)((b * UINT64_C(0x0102040810204080)) >> 56);
}

static inline size_t count8(uint64_t b) /* how many of 8 bytes of 0/1 are 1 */
{
	return (size_t)((b * UINT64_C(0x0101010101010101)) >> 56);
}

/* The scalar form, for float64 and the tails: elements [0, n) of a run whose first
 * element sits at bit 0 of bits[0]. */
#define DEFINE_BITS_SCALAR(NAME, U, ABSM)                                              \
	static int NAME(const U *w, uint8_t *keep, size_t n, uint8_t *bits,             \
			size_t *zeroed, size_t *kept, U inf)                            \
	{                                                                              \
		int bad = 0;                                                           \
		for (size_t i = 0; i < n; i++) {                                       \
			U a = w[i] & (ABSM);                                           \
			unsigned nz = a != 0, k = keep[i] != 0;                        \
			bad |= a > inf;                                                \
			keep[i] = (uint8_t)(k & nz);                                   \
			if (i % 8 == 0)                                                \
				bits[i / 8] = 0;                                       \
			bits[i / 8] |= (uint8_t)((k & nz) << (i % 8));                 \
			*zeroed += nz & !k;                                            \
			*kept += k & nz;                                               \
		}                                                                      \
		return bad;                                                            \
	}

DEFINE_BITS_SCALAR(bits16_tail, prune_u16u_t, 0x7FFFu)
DEFINE_BITS_SCALAR(bits32_tail, prune_u32u_t, 0x7FFFFFFFu)
DEFINE_BITS_SCALAR(bits64, prune_u64u_t, UINT64_C(0x7FFFFFFFFFFFFFFF))

/* The vector form: BLOCK elements' non-zero tests narrowed to bytes like the kernel's
 * keep bytes, then combined and packed eight at a time in 64-bit words. The NaN test
 * rides along, for a mask that did not come from the kernel (which tests it itself). */
#define DEFINE_BITS_VEC(NAME, TAIL, S, V, NV, NARROW, ABSM)                            \
	static int NAME(const S *w, uint8_t *keep, size_t n, uint8_t *bits,             \
			size_t *zeroed, size_t *kept, S inf)                            \
	{                                                                              \
		size_t i = 0, z = 0, kk = 0; /* locals: the byte stores may alias */   \
		V vbad = {0};                                                          \
		for (; i + BLOCK <= n; i += BLOCK) {                                   \
			V q[NV];                                                       \
			uint8_t nzb[BLOCK];                                            \
			for (int v = 0; v < NV; v++) {                                 \
				V a;                                                   \
				memcpy(&a, w + i + (size_t)v * (BLOCK / NV), sizeof(a)); \
				a &= (S)(ABSM);                                        \
				vbad |= (V)(a > inf);                                  \
				q[v] = (V)(a != 0);                                    \
			}                                                              \
			NARROW(q, nzb);                                                \
			for (int h = 0; h < BLOCK / 8; h++) {                          \
				uint64_t k, nz;                                        \
				memcpy(&k, keep + i + 8 * h, 8);                       \
				memcpy(&nz, nzb + 8 * h, 8);                           \
				uint64_t eff = k & nz;                                 \
				memcpy(keep + i + 8 * h, &eff, 8);                     \
				bits[i / 8 + (size_t)h] = pack8(eff);                  \
				z += count8(nz & ~k);                                  \
				kk += count8(eff);                                     \
			}                                                              \
		}                                                                      \
		*zeroed += z;                                                          \
		*kept += kk;                                                           \
		int bad = 0;                                                           \
		for (int l = 0; l < BLOCK / NV; l++)                                   \
			bad |= vbad[l] != 0;                                           \
		return bad | TAIL((const void *)(w + i), keep + i, n - i, bits + i / 8, \
				  zeroed, kept, inf);                                  \
	}

DEFINE_BITS_VEC(bits16, bits16_tail, prune_i16u_t, v8hi_t, 2, narrow16, ABS16)
DEFINE_BITS_VEC(bits32, bits32_tail, prune_i32u_t, v4si_t, 4, narrow32, ABS32)

/* Bits and counts for n elements of dtype at data, the first at bit 0 of bits[0];
 * non-zero when one of them is NaN. */
static int bits_any(int dtype, const void *data, uint8_t *keep, size_t n, uint8_t *bits,
		    size_t *zeroed, size_t *kept)
{
	switch (dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		return bits32(data, keep, n, bits, zeroed, kept, INF32);
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE:
		return bits64(data, keep, n, bits, zeroed, kept, INF64);
	case TENSORFLOW__DATA_TYPE__DT_HALF:
		return bits16(data, keep, n, bits, zeroed, kept, INF_HALF);
	default:
		return bits16(data, keep, n, bits, zeroed, kept, INF_BF16);
	}
}

int prune_mask_bits(const prune_tensor_t *w, uint8_t *keep, uint8_t *bits,
		    prune_mask_counts_t *c)
{
	size_t zeroed = 0, kept = 0;
	int bad = bits_any(w->dtype, w->data, keep, w->n, bits, &zeroed, &kept);
	c->zeroed = zeroed;
	c->zeros = w->n - kept;
	return bad;
}

/* Elements per piece of prune_mask_2of4_bits: the piece's weights and keep bytes stay
 * in a core's L2 between the two passes. */
#define PIECE ((size_t)1 << 16)

int prune_mask_2of4_bits(const prune_tensor_t *w, int axis, uint8_t *keep, uint8_t *bits,
			 prune_mask_counts_t *c, const char *layer, sd_error_t *e)
{
	view_t v;
	int rc = checked_view(w, axis, &layer, &v, e);
	*c = (prune_mask_counts_t){0, 0};
	if (rc || !w->n)
		return rc;
	const uint8_t *base = w->data;
	size_t es = prune_dtype_size(w->dtype), groups = (v.c + 3) / 4;
	size_t step = PIECE / (4 * v.inner) ? PIECE / (4 * v.inner) : 1;
	size_t done = 0, zeroed = 0, kept = 0;
	int bad = 0;
	for (size_t o = 0; o < v.outer; o++) {
		for (size_t g = 0; g < groups; g += step) {
			/* Whole groups of one outer slice are contiguous: a view of their own. */
			size_t g1 = g + step < groups ? g + step : groups;
			size_t first = (o * v.c + 4 * g) * v.inner;
			view_t piece = {1, (4 * g1 < v.c ? 4 * g1 : v.c) - 4 * g, v.inner};
			bad |= mask_any(w->dtype, base + first * es, &piece, keep + first);
			/* Bits go a whole byte at a time; the last < 8 elements wait. */
			size_t end = first + piece.c * v.inner;
			size_t upto = end == w->n ? end : end & ~(size_t)7;
			if (upto > done) {
				bits_any(w->dtype, base + done * es, keep + done, upto - done,
					 bits + done / 8, &zeroed, &kept);
				done = upto;
			}
		}
	}
	if (bad)
		return nan_error(w, first_nan(w), layer, e);
	c->zeroed = zeroed;
	c->zeros = w->n - kept;
	return 0;
}

/*
 * One step: the keep rule of the row and group kernels with the mask applied at once
 * (dst = kept ? w : w & sign, as prune_mask_apply_bits) and the counts of
 * prune_mask_bits taken in the same registers: no keep bytes, no bits. Used for the
 * runs of whole groups inside a piece of prune_mask_2of4_apply; the counts stay in
 * lanes of the element's width, which a run (at most FUSE_MAX elements) cannot
 * overflow. *zeroed and *kept get the non-zeros the mask drops and keeps.
 */
#define FUSE_ROW(S, w, a, q, d, sign, vz, vk)                                          \
	do {                                                                           \
		S out_ = (w) & ((q) | (sign));                                         \
		memcpy((d), &out_, sizeof(out_));                                      \
		S nz_ = (S)((a) != 0);                                                 \
		(vz) += nz_ & ~(q);                                                    \
		(vk) += nz_ & (q);                                                     \
	} while (0)

#define FUSE_SCALAR(S, w, a, k, d, sign, z, kk)                                        \
	do {                                                                           \
		*(d) = (S)((w) & ((S)-(S)(k) | (sign)));                               \
		(z) += ((a) != 0) & !(k);                                              \
		(kk) += ((a) != 0) & (k);                                              \
	} while (0)

/* The lanes' NaN flags and counts folded into the scalars. */
#define FUSE_FOLD(L, vbad, vz, vk, bad, z, kk)                                         \
	for (int l_ = 0; l_ < (L); l_++) {                                             \
		(bad) |= (vbad)[l_];                                                   \
		(z) -= (size_t)(int64_t)(vz)[l_];                                      \
		(kk) -= (size_t)(int64_t)(vk)[l_];                                     \
	}

/* One group in scalar form (the tails); a padded group has w3 = 0 and d3 = NULL. */
#define FUSE_GROUP(S, w0, w1, w2, w3, d0, d1, d2, d3, absm, inf, sign, bad, z, kk)     \
	do {                                                                           \
		S a0 = (w0) & (absm), a1 = (w1) & (absm), a2 = (w2) & (absm);          \
		S a3 = (w3) & (absm);                                                  \
		uint8_t k0, k1, k2, k3;                                                \
		(bad) |= (S)((a0 > (inf)) | (a1 > (inf)) | (a2 > (inf)) | (a3 > (inf))); \
		KEEP4_SCALAR(a0, a1, a2, a3, k0, k1, k2, k3);                          \
		FUSE_SCALAR(S, w0, a0, k0, d0, sign, z, kk);                           \
		FUSE_SCALAR(S, w1, a1, k1, d1, sign, z, kk);                           \
		FUSE_SCALAR(S, w2, a2, k2, d2, sign, z, kk);                           \
		if (d3)                                                                \
			FUSE_SCALAR(S, w3, a3, k3, d3, sign, z, kk);                   \
	} while (0)

#define DEFINE_ROWS_FUSED(NAME, S, V, ATTR)                                            \
	static ATTR S NAME(const S *p0, const S *p1, const S *p2, const S *p3, S *d0, S *d1, \
		      S *d2, S *d3, size_t len, S absm, S inf, S sign, size_t *zeroed,  \
		      size_t *kept)                                                     \
	{                                                                              \
		enum { L = sizeof(V) / sizeof(S) };                                    \
		size_t j = 0, z = 0, kk = 0;                                           \
		V vbad = {0}, vz = {0}, vk = {0}, vs = (V){0} + sign;                  \
		for (; j + L <= len; j += L) {                                         \
			V w0, w1, w2, w3 = {0};                                        \
			memcpy(&w0, p0 + j, sizeof(w0));                               \
			memcpy(&w1, p1 + j, sizeof(w1));                               \
			memcpy(&w2, p2 + j, sizeof(w2));                               \
			if (p3)                                                        \
				memcpy(&w3, p3 + j, sizeof(w3));                       \
			V a0 = w0 & absm, a1 = w1 & absm, a2 = w2 & absm, a3 = w3 & absm; \
			vbad |= (V)(a0 > inf) | (V)(a1 > inf) | (V)(a2 > inf) | (V)(a3 > inf); \
			V t01 = (V)(a0 >= a1), t02 = (V)(a0 >= a2);                    \
			V t03 = (V)(a0 >= a3), t12 = (V)(a1 >= a2);                    \
			V t13 = (V)(a1 >= a3), t23 = (V)(a2 >= a3);                    \
			FUSE_ROW(V, w0, a0, (V)(t01 + t02 + t03 <= -2), d0 + j, vs, vz, vk); \
			FUSE_ROW(V, w1, a1, (V)(t12 + t13 < t01), d1 + j, vs, vz, vk);  \
			FUSE_ROW(V, w2, a2, (V)(t02 + t12 >= t23), d2 + j, vs, vz, vk); \
			if (p3)                                                        \
				FUSE_ROW(V, w3, a3, (V)(t03 + t13 + t23 > -2), d3 + j, vs, \
					 vz, vk);                                      \
		}                                                                      \
		S bad = 0;                                                             \
		FUSE_FOLD(L, vbad, vz, vk, bad, z, kk);                                \
		for (; j < len; j++)                                                   \
			FUSE_GROUP(S, p0[j], p1[j], p2[j], p3 ? p3[j] : 0, d0 + j, d1 + j, \
				   d2 + j, p3 ? d3 + j : NULL, absm, inf, sign, bad, z, kk); \
		*zeroed += z;                                                          \
		*kept += kk;                                                           \
		return bad;                                                            \
	}

DEFINE_ROWS_FUSED(rowsf16, prune_i16u_t, v8hi_t, )
DEFINE_ROWS_FUSED(rowsf32, prune_i32u_t, v4si_t, )

/* inner == 1: the rotations of the group kernel, the mask applied as above. */
#define DEFINE_GROUPS_FUSED(NAME, S, V, ROT, LOW, ATTR)                                \
	static ATTR S NAME(const S *p, S *d, size_t ngroups, S absm, S inf, S sign,          \
		      size_t *zeroed, size_t *kept)                                     \
	{                                                                              \
		enum { L = sizeof(V) / sizeof(S) };                                    \
		size_t i = 0, n = 4 * ngroups, z = 0, kk = 0;                          \
		V vbad = {0}, vz = {0}, vk = {0}, vs = (V){0} + sign;                  \
		const V low1 = {LOW(1)}, low2 = {LOW(2)}, low3 = {LOW(3)};             \
		for (; i + L <= n; i += L) {                                           \
			V w, a;                                                        \
			memcpy(&w, p + i, sizeof(w));                                  \
			a = w & absm;                                                  \
			vbad |= (V)(a > inf);                                          \
			FUSE_ROW(V, w, a, ROT_KEEP(V, a, ROT, low1, low2, low3), d + i, vs, \
				 vz, vk);                                              \
		}                                                                      \
		S bad = 0;                                                             \
		FUSE_FOLD(L, vbad, vz, vk, bad, z, kk);                                \
		for (; i < n; i += 4)                                                  \
			FUSE_GROUP(S, p[i], p[i + 1], p[i + 2], p[i + 3], d + i, d + i + 1, \
				   d + i + 2, d + i + 3, absm, inf, sign, bad, z, kk);  \
		*zeroed += z;                                                          \
		*kept += kk;                                                           \
		return bad;                                                            \
	}

DEFINE_GROUPS_FUSED(groupsf16, prune_i16u_t, v8hi_t, ROT8, LOW8, )
DEFINE_GROUPS_FUSED(groupsf32, prune_i32u_t, v4si_t, ROT4, LOW4, )

/*
 * A run of whole groups of one outer slice ({1, c, inner} with c <= 4 x groups of it),
 * masked into dst in one step; the partial last group as in DEFINE_MASK. float64 has no
 * vector form (as in the kernel); it takes the three passes.
 */
#define DEFINE_FUSED(NAME, S, ROWS, GROUPS, ATTR)                                      \
	static ATTR S NAME(const S *w, S *d, const view_t *v, S absm, S inf, S sign,        \
		      size_t *zeroed, size_t *kept)                                     \
	{                                                                              \
		size_t c = v->c, inner = v->inner, full = c / 4, r = c % 4;            \
		S bad = 0;                                                             \
		if (inner == 1) {                                                      \
			bad |= GROUPS(w, d, full, absm, inf, sign, zeroed, kept);      \
		} else {                                                               \
			for (size_t g = 0; g < full; g++) {                            \
				const S *p = w + 4 * g * inner;                        \
				S *q = d + 4 * g * inner;                              \
				bad |= ROWS(p, p + inner, p + 2 * inner, p + 3 * inner, q, \
					    q + inner, q + 2 * inner, q + 3 * inner,   \
					    inner, absm, inf, sign, zeroed, kept);     \
			}                                                              \
		}                                                                      \
		const S *p = w + 4 * full * inner;                                     \
		S *q = d + 4 * full * inner;                                           \
		if (r == 3) {                                                          \
			bad |= ROWS(p, p + inner, p + 2 * inner, NULL, q, q + inner,   \
				    q + 2 * inner, NULL, inner, absm, inf, sign, zeroed, \
				    kept);                                             \
		} else if (r) { /* 1 or 2 real elements: both kept */                  \
			for (size_t j = 0; j < r * inner; j++) {                       \
				S a = p[j] & absm;                                     \
				bad |= (S)(a > inf);                                   \
				q[j] = p[j];                                           \
				*kept += a != 0;                                       \
			}                                                              \
		}                                                                      \
		return bad;                                                            \
	}

DEFINE_FUSED(fused16, prune_i16u_t, rowsf16, groupsf16, )
DEFINE_FUSED(fused32, prune_i32u_t, rowsf32, groupsf32, )

/*
 * The one step is most of prune's own CPU time (a third of a ResNet50 prune by perf),
 * and it is compute-bound at 16 bytes a step: on x86-64 with AVX2 the same kernels are
 * compiled again for 32-byte vectors and chosen at run time (bench_mask: 1step GB/s).
 * Only these: the other kernels run in export and in the mask threads, off prune's
 * critical path.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#define AVX2 __attribute__((target("avx2")))
typedef int16_t v16hi_t __attribute__((vector_size(32)));
typedef int32_t v8si_t __attribute__((vector_size(32)));
DEFINE_ROWS_FUSED(rowsf16w, prune_i16u_t, v16hi_t, AVX2)
DEFINE_ROWS_FUSED(rowsf32w, prune_i32u_t, v8si_t, AVX2)
DEFINE_GROUPS_FUSED(groupsf16w, prune_i16u_t, v16hi_t, ROT16, LOW16, AVX2)
DEFINE_GROUPS_FUSED(groupsf32w, prune_i32u_t, v8si_t, ROT8, LOW8, AVX2)
DEFINE_FUSED(fused16w, prune_i16u_t, rowsf16w, groupsf16w, AVX2)
DEFINE_FUSED(fused32w, prune_i32u_t, rowsf32w, groupsf32w, AVX2)

static atomic_int vector_cap = 32;

int prune_mask_vector_width(int bytes)
{
	if (bytes)
		atomic_store(&vector_cap, bytes);
	return atomic_load(&vector_cap) >= 32 && __builtin_cpu_supports("avx2") ? 32 : 16;
}
#else
#define fused16w fused16
#define fused32w fused32

int prune_mask_vector_width(int bytes)
{
	(void)bytes;
	return 16;
}
#endif

/* The one-step form for dtype on run v, or -1 when there is none (float64). */
static int fused_any(int dtype, const void *w, void *d, const view_t *v, size_t *zeroed,
		     size_t *kept)
{
	bool wide = prune_mask_vector_width(0) == 32;
	switch (dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		return (wide ? fused32w : fused32)(w, d, v, ABS32, INF32, INT32_MIN, zeroed,
						   kept) != 0;
	case TENSORFLOW__DATA_TYPE__DT_HALF:
		return (wide ? fused16w : fused16)(w, d, v, ABS16, INF_HALF, INT16_MIN, zeroed,
						   kept) != 0;
	case TENSORFLOW__DATA_TYPE__DT_BFLOAT16:
		return (wide ? fused16w : fused16)(w, d, v, ABS16, INF_BF16, INT16_MIN, zeroed,
						   kept) != 0;
	default:
		return -1;
	}
}

/* Keep bytes prune_mask_2of4_apply holds on its stack: a group of 4 rows must fit. */
#define FUSE_MAX ((size_t)1 << 14)

bool prune_mask_fusable(const prune_tensor_t *w, int axis)
{
	view_t v;
	return !view_of(w, axis, &v) && v.inner <= FUSE_MAX / 4;
}

int prune_mask_2of4_apply(const prune_tensor_t *w, int axis, size_t first, size_t n,
			  void *dst, prune_mask_counts_t *c)
{
	view_t v;
	sd_require(!view_of(w, axis, &v) && v.inner <= FUSE_MAX / 4 && n <= w->n - first);
	uint8_t keep[FUSE_MAX], bits[FUSE_MAX / 8 + 1];
	const uint8_t *base = w->data;
	uint8_t *out = dst;
	size_t es = prune_dtype_size(w->dtype), slice = v.c * v.inner, gsize = 4 * v.inner;
	size_t step = FUSE_MAX / gsize, end = first + n;
	size_t zeroed = 0, kept = 0;
	int bad = 0;
	for (size_t i = first; i < end;) {
		/* A run of whole groups of one outer slice, from the group holding i to the
		 * one holding the last element wanted (at most step groups). */
		size_t o = i / slice, g = i % slice / gsize, rs = o * slice + g * gsize;
		size_t last = (end < (o + 1) * slice ? end : (o + 1) * slice) - 1;
		size_t g1 = last % slice / gsize + 1;
		if (g1 > g + step)
			g1 = g + step;
		/* A group the piece cuts takes the three passes alone; the whole groups
		 * between take the one step. */
		if (rs < i)
			g1 = g + 1;
		else if (g1 > g + 1 && o * slice + (4 * g1 < v.c ? g1 * gsize : slice) > end)
			g1--;
		view_t run = {1, (4 * g1 < v.c ? 4 * g1 : v.c) - 4 * g, v.inner};
		size_t re = rs + run.c * v.inner, ie = re < end ? re : end;
		int f = rs >= i && re == ie ? fused_any(w->dtype, base + rs * es,
							out + (rs - first) * es, &run, &zeroed,
							&kept)
					    : -1;
		if (f >= 0) {
			bad |= f;
			i = ie;
			continue;
		}
		bad |= mask_any(w->dtype, base + rs * es, &run, keep);
		bits_any(w->dtype, base + i * es, keep + (i - rs), ie - i, bits, &zeroed, &kept);
		prune_mask_apply_bits(w->dtype, base + i * es, out + (i - first) * es, bits, 0,
				      ie - i);
		i = ie;
	}
	c->zeroed += zeroed;
	c->zeros += n - kept;
	return bad;
}

/* ---- batches on threads ---- */

/*
 * An at_save job is the save's alone: the run's threads leave it, and the tally adds up
 * the pieces the save computed (prune_mask_run_fill). Letting the threads compute such
 * masks ahead of the save, while the graph is edited and measured, was measured slower
 * (ResNet50 1.45x cp against 1.32x, the 1.5 GB model 1.04x against 0.93x): a weight
 * read twice costs more than the idle cores give back.
 */
typedef struct tally {
	atomic_size_t zeroed, zeros, elems;
	atomic_bool nan;
} tally_t;

struct prune_mask_run {
	prune_mask_job_t *jobs;
	size_t n;
	atomic_size_t next;
	atomic_size_t done;
	const prune_progress_t *progress;
	int *rc;                /* per job */
	atomic_uchar *finished; /* per job: its bits and rc are final */
	tally_t *tally;         /* per job */
	pthread_mutex_t mu;     /* with cv: prune_mask_run_wait's sleep */
	pthread_cond_t cv;
	int n_threads;
	pthread_t tid[8];
};

/* keep[i] = (m[i] != 0); fails unless every value is exactly 0 or 1 (compared as bit
 * patterns: +0, -0 and the format's 1.0). */
#define DEFINE_KEEP(NAME, U)                                                            \
	static int NAME(const U *m, size_t n, U one, U sign, uint8_t *keep)             \
	{                                                                               \
		unsigned bad = 0;                                                       \
		for (size_t i = 0; i < n; i++) {                                        \
			U v = m[i] & (U)~sign;                                          \
			bad |= (v != 0) & (m[i] != one);                                \
			keep[i] = v != 0;                                               \
		}                                                                       \
		return bad ? -1 : 0;                                                    \
	}
DEFINE_KEEP(keep16, prune_u16u_t)
DEFINE_KEEP(keep32, prune_u32u_t)
DEFINE_KEEP(keep64, prune_u64u_t)

static int keep_from_values(const prune_tensor_t *m, uint8_t *keep)
{
	switch (m->dtype) {
	case TENSORFLOW__DATA_TYPE__DT_FLOAT:
		return keep32(m->data, m->n, 0x3F800000u, 0x80000000u, keep);
	case TENSORFLOW__DATA_TYPE__DT_DOUBLE:
		return keep64(m->data, m->n, UINT64_C(0x3FF0000000000000),
			      UINT64_C(0x8000000000000000), keep);
	case TENSORFLOW__DATA_TYPE__DT_HALF:
		return keep16(m->data, m->n, 0x3C00u, 0x8000u, keep);
	default:
		return keep16(m->data, m->n, 0x3F80u, 0x8000u, keep);
	}
}

/* One job with keep as scratch; e may be NULL (the worker threads). */
static int run_job(prune_mask_job_t *j, uint8_t *keep, sd_error_t *e)
{
	if (!j->stored) {
		j->is_2of4 = true; /* by construction */
		return prune_mask_2of4_bits(j->w, j->axis, keep, j->bits, &j->counts, j->layer, e);
	}
	if (keep_from_values(j->stored, keep))
		return sd_err_node(e, SD_EMODEL, j->layer,
				   "layer '%s': mask '%s' holds values other than 0 and 1",
				   j->layer, j->stored_name ? j->stored_name : "?");
	/* A NaN is refused even where the mask drops it: the weight is not a number. */
	if (prune_mask_bits(j->w, keep, j->bits, &j->counts))
		return nan_error(j->w, first_nan(j->w), j->layer, e);
	j->is_2of4 = prune_mask_keep_is_2of4(j->w, j->axis, keep, NULL);
	return 0;
}

/* Job i is final: wakes prune_mask_run_wait (set, then the lock, so no sleeper misses
 * it). */
static void finish(prune_mask_run_t *b, size_t i)
{
	atomic_store(&b->finished[i], 1);
	pthread_mutex_lock(&b->mu);
	pthread_cond_broadcast(&b->cv);
	pthread_mutex_unlock(&b->mu);
}

/* Takes jobs until none is left; each runs with this thread's keep scratch. */
static void *batch_worker(void *arg)
{
	prune_mask_run_t *b = arg;
	uint8_t *keep = NULL;
	size_t cap = 0;
	for (size_t i; (i = atomic_fetch_add(&b->next, 1)) < b->n;) {
		prune_mask_job_t *j = &b->jobs[i];
		if (j->at_save)
			continue;
		if (j->w->n > cap) {
			free(keep);
			cap = j->w->n;
			if (!(keep = malloc(cap))) {
				cap = 0;
				b->rc[i] = SD_ENOMEM;
				finish(b, i);
				continue;
			}
		}
		b->rc[i] = run_job(j, keep, NULL);
		finish(b, i);
		prune_progress_report(b->progress, atomic_fetch_add(&b->done, 1) + 1, b->n);
	}
	free(keep);
	return NULL;
}

/* Threads worth starting for these jobs (see prune_mask_batch). */
static int auto_threads(const prune_mask_job_t *jobs, size_t n)
{
	size_t bytes = 0;
	for (size_t i = 0; i < n; i++)
		if (!jobs[i].at_save)
			bytes += jobs[i].w->n * prune_dtype_size(jobs[i].w->dtype);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (!bytes)
		return 0; /* nothing for a thread: the caller's thread skips the jobs */
	if (bytes < ((size_t)8 << 20) || cpus < 2)
		return 1;
	return cpus > 8 ? 8 : (int)cpus;
}

/* A run of n jobs with `threads` threads of its own started (fewer if the system
 * refuses some). */
static int run_new(prune_mask_job_t *jobs, size_t n, int threads,
		   const prune_progress_t *progress, prune_mask_run_t **out, sd_error_t *e)
{
	prune_mask_run_t *b = calloc(1, sizeof(*b));
	int *rc = calloc(n + 1, sizeof(*rc));
	atomic_uchar *fin = calloc(n + 1, sizeof(*fin));
	tally_t *tally = calloc(n + 1, sizeof(*tally));
	if (!b || !rc || !fin || !tally) {
		free(b);
		free(rc);
		free(fin);
		free(tally);
		return sd_err(e, SD_ENOMEM, "out of memory");
	}
	*b = (prune_mask_run_t){.jobs = jobs, .n = n, .rc = rc, .finished = fin,
				.tally = tally, .progress = progress};
	atomic_init(&b->next, 0);
	atomic_init(&b->done, 0);
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cv, NULL);
	for (int t = 0; t < threads && t < 8 && (size_t)t < n; t++)
		if (pthread_create(&b->tid[b->n_threads], NULL, batch_worker, b) == 0)
			b->n_threads++;
	*out = b;
	return 0;
}

int prune_mask_run_start(prune_mask_job_t *jobs, size_t n, int threads,
			 const prune_progress_t *progress, prune_mask_run_t **out, sd_error_t *e)
{
	int rc = run_new(jobs, n, threads <= 0 ? auto_threads(jobs, n) : threads, progress, out,
			 e);
	if (!rc && !(*out)->n_threads)
		batch_worker(*out); /* no thread to be had: the jobs run now, here */
	return rc;
}

void prune_mask_run_wait(prune_mask_run_t *b, size_t i)
{
	if (atomic_load(&b->finished[i]))
		return;
	pthread_mutex_lock(&b->mu);
	while (!atomic_load(&b->finished[i]))
		pthread_cond_wait(&b->cv, &b->mu);
	pthread_mutex_unlock(&b->mu);
}

void prune_mask_run_fill(prune_mask_run_t *b, size_t i, const void *src, size_t first,
			 size_t n, void *dst)
{
	prune_mask_job_t *j = &b->jobs[i];
	tally_t *t = &b->tally[i];
	if (!j->at_save) {
		prune_mask_run_wait(b, i);
		prune_mask_apply_bits(j->w->dtype, src, dst, j->bits, first, n);
		return;
	}
	prune_mask_counts_t c = {0, 0};
	if (prune_mask_2of4_apply(j->w, j->axis, first, n, dst, &c))
		atomic_store(&t->nan, true);
	atomic_fetch_add(&t->zeroed, c.zeroed);
	atomic_fetch_add(&t->zeros, c.zeros);
	if (atomic_fetch_add(&t->elems, n) + n == j->w->n)
		prune_progress_report(b->progress, atomic_fetch_add(&b->done, 1) + 1, b->n);
}

const prune_mask_job_t *prune_mask_run_job(const prune_mask_run_t *b, size_t i)
{
	return &b->jobs[i];
}

/* An at_save job: its outcome from the tally, or (its pieces not all written:
 * the save failed, or came after the end) from a whole pass into a scratch piece. */
static int at_save_end(prune_mask_run_t *b, size_t i, sd_error_t *e)
{
	prune_mask_job_t *j = &b->jobs[i];
	tally_t *t = &b->tally[i];
	prune_mask_counts_t c = {atomic_load(&t->zeroed), atomic_load(&t->zeros)};
	bool nan = atomic_load(&t->nan);
	j->is_2of4 = true; /* by construction */
	if (atomic_load(&t->elems) != j->w->n) {
		size_t es = prune_dtype_size(j->w->dtype), step = FUSE_MAX;
		uint8_t *scratch = malloc(step * es);
		if (!scratch)
			return sd_err(e, SD_ENOMEM, "out of memory");
		c = (prune_mask_counts_t){0, 0};
		nan = false;
		for (size_t k = 0; k < j->w->n; k += step)
			nan |= prune_mask_2of4_apply(j->w, j->axis, k,
						     j->w->n - k < step ? j->w->n - k : step,
						     scratch, &c) != 0;
		free(scratch);
	}
	if (nan)
		return nan_error(j->w, first_nan(j->w), j->layer ? j->layer : "", e);
	j->counts = c;
	return 0;
}

int prune_mask_run_end(prune_mask_run_t *b, sd_error_t *e)
{
	for (int t = 0; t < b->n_threads; t++)
		pthread_join(b->tid[t], NULL);
	int out = 0;
	for (size_t i = 0; i < b->n && !out; i++) {
		prune_mask_job_t *j = &b->jobs[i];
		if (j->at_save) {
			if (e) /* else the outcome is thrown away: no pass for it */
				out = at_save_end(b, i, e);
		} else if (b->rc[i] == SD_ENOMEM) {
			out = sd_err(e, SD_ENOMEM, "out of memory (%zu bytes for a mask)", j->w->n);
		} else if (b->rc[i]) {
			/* Again on this thread, for the message of the first failure in order. */
			uint8_t *keep = malloc(j->w->n + 1);
			out = keep ? run_job(j, keep, e) : sd_err(e, SD_ENOMEM, "out of memory");
			free(keep);
		}
	}
	pthread_cond_destroy(&b->cv);
	pthread_mutex_destroy(&b->mu);
	free(b->finished);
	free(b->rc);
	free(b->tally);
	free(b);
	return out;
}

int prune_mask_batch(prune_mask_job_t *jobs, size_t n, int threads,
		     const prune_progress_t *progress, sd_error_t *e)
{
	if (threads <= 0)
		threads = auto_threads(jobs, n);
	prune_mask_run_t *b;
	int rc = run_new(jobs, n, threads - 1, progress, &b, e);
	if (rc)
		return rc;
	batch_worker(b); /* the caller's thread is one of them */
	return prune_mask_run_end(b, e);
}

/*
 * Apply: dst = bit ? src : src & sign. A pruned element keeps only its sign, which is
 * the signed zero that w * 0.0 gives for finite w in every float type; kept elements
 * are copied bit for bit (no float multiply, so no NaN quieting or denormal flushing).
 * The vector form turns 16 bits into lane masks by testing each lane's own bit.
 */
#define DEFINE_APPLY_SCALAR(NAME, U, SIGN)                                             \
	static void NAME(const U *src, U *dst, const uint8_t *bits, size_t n)           \
	{                                                                              \
		for (size_t i = 0; i < n; i++)                                         \
			dst[i] = src[i] & ((U)(-(U)((bits[i / 8] >> (i % 8)) & 1)) |   \
					   (U)(SIGN));                                 \
	}

DEFINE_APPLY_SCALAR(apply16_tail, prune_u16u_t, 0x8000u)
DEFINE_APPLY_SCALAR(apply32_tail, prune_u32u_t, 0x80000000u)
DEFINE_APPLY_SCALAR(apply64, prune_u64u_t, UINT64_C(0x8000000000000000))

typedef uint16_t v8hu_t __attribute__((vector_size(16)));
typedef uint32_t v4su_t __attribute__((vector_size(16)));

#define DEFINE_APPLY_VEC(NAME, TAIL, U, V, NV, SIGN, ...)                              \
	static void NAME(const U *src, U *dst, const uint8_t *bits, size_t n)           \
	{                                                                              \
		const V sign = (V){0} + (U)(SIGN), lane = {__VA_ARGS__};               \
		size_t i = 0;                                                          \
		for (; i + BLOCK <= n; i += BLOCK) {                                   \
			unsigned b = bits[i / 8] | (unsigned)bits[i / 8 + 1] << 8;     \
			for (int v = 0; v < NV; v++) {                                 \
				V w, m = (V)((((V){0} + (U)(b >> (v * (BLOCK / NV)))) & lane) != 0); \
				memcpy(&w, src + i + (size_t)v * (BLOCK / NV), sizeof(w)); \
				w &= m | sign;                                         \
				memcpy(dst + i + (size_t)v * (BLOCK / NV), &w, sizeof(w)); \
			}                                                              \
		}                                                                      \
		TAIL((const void *)(src + i), (void *)(dst + i), bits + i / 8, n - i); \
	}

DEFINE_APPLY_VEC(apply16, apply16_tail, prune_u16u_t, v8hu_t, 2, 0x8000u, 1, 2, 4, 8, 16, 32, 64,
		 128)
DEFINE_APPLY_VEC(apply32, apply32_tail, prune_u32u_t, v4su_t, 4, 0x80000000u, 1, 2, 4, 8)

void prune_mask_apply_bits(int dtype, const void *src, void *dst, const uint8_t *bits,
			   size_t first, size_t n)
{
	bits += first / 8;
	switch (prune_dtype_size(dtype)) {
	case 2:
		apply16(src, dst, bits, n);
		break;
	case 4:
		apply32(src, dst, bits, n);
		break;
	case 8:
		apply64(src, dst, bits, n);
		break;
	default:
		break;
	}
}

/*
 * is_2of4: counts non-zeros per group (abs pattern != 0, so -0 is zero and NaN is not);
 * a group of the partial tail simply has fewer rows. Branchless per element; the
 * verdict and the zero count are both needed by check, so there is no early exit.
 * A group of 4 rows is counted with the rows as four straight arrays, which the
 * compiler vectorises (export checks every stored mask this way: with the row count
 * as an inner loop it ran at 1.2 G elements/s, now 4.6); the tail group takes the
 * general loop.
 */
#define DEFINE_IS2OF4(NAME, U, ABSM)                                                   \
	static int NAME(const U *w, const view_t *v, size_t *zeros)                    \
	{                                                                              \
		size_t c = v->c, inner = v->inner, nz_total = 0;                       \
		unsigned over = 0;                                                     \
		for (size_t o = 0; o < v->outer; o++) {                                \
			const U *wo = w + o * c * inner;                               \
			for (size_t g = 0; g < c; g += 4) {                            \
				size_t rows = c - g < 4 ? c - g : 4;                   \
				const U *p = wo + g * inner;                           \
				if (rows == 4) {                                       \
					const U *p1 = p + inner, *p2 = p1 + inner;     \
					const U *p3 = p2 + inner;                      \
					for (size_t j = 0; j < inner; j++) {           \
						unsigned nz = ((p[j] & (ABSM)) != 0) + \
							      ((p1[j] & (ABSM)) != 0) + \
							      ((p2[j] & (ABSM)) != 0) + \
							      ((p3[j] & (ABSM)) != 0); \
						over |= nz > 2;                        \
						nz_total += nz;                        \
					}                                              \
					continue;                                      \
				}                                                      \
				for (size_t j = 0; j < inner; j++) {                   \
					unsigned nz = 0;                               \
					for (size_t r = 0; r < rows; r++)              \
						nz += (p[r * inner + j] & (ABSM)) != 0; \
					over |= nz > 2;                                \
					nz_total += nz;                                \
				}                                                      \
			}                                                              \
		}                                                                      \
		if (zeros)                                                             \
			*zeros = v->outer * c * inner - nz_total;                      \
		return !over;                                                          \
	}

DEFINE_IS2OF4(is8, uint8_t, 0xFFu) /* keep bytes: non-zero means kept */
DEFINE_IS2OF4(is16, prune_u16u_t, 0x7FFFu)
DEFINE_IS2OF4(is32, prune_u32u_t, 0x7FFFFFFFu)
DEFINE_IS2OF4(is64, prune_u64u_t, UINT64_C(0x7FFFFFFFFFFFFFFF))

int prune_mask_is_2of4(const prune_tensor_t *t, int axis, size_t *zeros)
{
	view_t v;
	if (zeros)
		*zeros = 0;
	if (view_of(t, axis, &v))
		return 0;
	switch (prune_dtype_size(t->dtype)) {
	case 2:
		return is16(t->data, &v, zeros);
	case 4:
		return is32(t->data, &v, zeros);
	default:
		return is64(t->data, &v, zeros);
	}
}

int prune_mask_keep_is_2of4(const prune_tensor_t *w, int axis, const uint8_t *keep,
			    size_t *zeros)
{
	view_t v;
	if (zeros)
		*zeros = 0;
	return view_of(w, axis, &v) ? 0 : is8(keep, &v, zeros);
}
