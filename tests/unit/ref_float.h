/*
 * The four float types as the suites see them, independent of the engine: short
 * names, element sizes, raw elements at any address, and decoders for float16 and
 * bfloat16 written from the IEEE formats (not prune_half_to_float /
 * prune_bf16_to_float, which the suites check against them).
 */
#ifndef REF_FLOAT_H
#define REF_FLOAT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proto/tf_types.pb-c.h"

#define DT_F32 TENSORFLOW__DATA_TYPE__DT_FLOAT
#define DT_F64 TENSORFLOW__DATA_TYPE__DT_DOUBLE
#define DT_F16 TENSORFLOW__DATA_TYPE__DT_HALF
#define DT_BF16 TENSORFLOW__DATA_TYPE__DT_BFLOAT16

static inline size_t ref_esize(int dt) { return dt == DT_F64 ? 8 : dt == DT_F32 ? 4 : 2; }

/* Element i of dt at data as raw bits (little-endian host), at any alignment: weights
 * sit anywhere in a mapped model. */
static inline uint64_t ref_bits(int dt, const void *data, size_t i)
{
	uint64_t v = 0;
	memcpy(&v, (const uint8_t *)data + ref_esize(dt) * i, ref_esize(dt));
	return v;
}

static inline double ref_half(uint16_t h)
{
	int s = h >> 15, ex = (h >> 10) & 31, m = h & 1023;
	double v;
	if (ex == 31)
		v = m ? NAN : INFINITY;
	else if (ex == 0)
		v = ldexp(m, -24);
	else
		v = ldexp(1024 + m, ex - 25);
	return s ? -v : v;
}

static inline double ref_bf16(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

#endif
