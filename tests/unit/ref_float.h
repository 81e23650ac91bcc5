/*
 * Reference decoders for float16 and bfloat16, written from the IEEE formats and
 * independent of prune_half_to_float / prune_bf16_to_float, for the suites that check
 * the engine's 16-bit handling against them.
 */
#ifndef REF16_H
#define REF16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

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
