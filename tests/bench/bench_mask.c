/*
 * bench_mask: throughput of the 2:4 kernel as export and prune run it: export's two
 * passes (mask and bits by prune_mask_2of4_bits, then prune_mask_apply_bits from the
 * weights into an output buffer, as the save does) and prune's one step
 * (prune_mask_2of4_apply over 1 MiB output pieces, as the save's fills call it), the
 * latter with 16-byte vectors and, where the CPU has AVX2, 32-byte ones.
 *
 * Design: a standalone program, never run by `meson test` (timings on shared CI runners
 * are noise). For each layout it fills a weight tensor with random values once, then
 * times the two best-of-5 with CLOCK_MONOTONIC and reports GB/s of weights (input
 * bytes, not bytes moved: that is the figure a user relates to model size). The
 * weights are only read, so every run prunes the same dense tensor; the output buffer
 * is touched before each run, outside the timed region. Layouts cover the paths: rows
 * (Conv2D axis 2, MatMul axis 0), adjacent groups (MatMul transpose_b, axis 1) and a
 * tensor far larger than any cache.
 *
 * Workload: a few hundred MB of memory, a few seconds. Usage: bench_mask [--quick]
 * (--quick skips the 256 MiB layout).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "prune/mask.h"
#include "prune/tensor.h"

#define RUNS 5
#define TARGET_GBS 1.0

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t rng(void)
{
	/* xorshift64*: fast, deterministic, good enough for benchmark data. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Du;
}

static float rand_weight(void)
{
	/* Roughly a trained weight: uniform in (-0.5, 0.5). */
	return (float)((double)(rng() >> 11) / 9007199254740992.0 - 0.5);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The save's output piece: prune_mask_2of4_apply is called on pieces of this size. */
#define PIECE ((size_t)1 << 20)

/*
 * GB/s of weights for mask + apply on the given tensor, best of RUNS: two passes, and
 * into one_step the one-step form with 16- and 32-byte vectors (0 where the layout or
 * the CPU does not take it).
 */
static double bench_one(int dtype, int rank, const int64_t *dims, int axis, int *failed,
			double one_step[2])
{
	prune_tensor_t t = {.dtype = dtype, .rank = rank, .n = 1};
	for (int i = 0; i < rank; i++) {
		t.dims[i] = dims[i];
		t.n *= (size_t)dims[i];
	}
	size_t es = prune_dtype_size(dtype), bytes = t.n * es;
	void *orig = malloc(bytes), *work = malloc(bytes);
	uint8_t *keep = malloc(t.n), *bits = malloc(t.n / 8 + 1);
	if (!orig || !work || !keep || !bits) {
		fprintf(stderr, "bench_mask: out of memory for %zu bytes\n", bytes);
		exit(3);
	}
	for (size_t i = 0; i < t.n; i++) {
		float f = rand_weight();
		if (dtype == TENSORFLOW__DATA_TYPE__DT_FLOAT) {
			((float *)orig)[i] = f;
		} else if (dtype == TENSORFLOW__DATA_TYPE__DT_DOUBLE) {
			((double *)orig)[i] = f;
		} else if (dtype == TENSORFLOW__DATA_TYPE__DT_HALF) {
			((uint16_t *)orig)[i] = prune_float_to_half(f);
		} else {
			((uint16_t *)orig)[i] = prune_float_to_bf16(f);
		}
	}
	t.data = orig;
	double best = 1e30;
	for (int r = 0; r < RUNS; r++) {
		memset(work, 0xA5, bytes); /* the output block is warm in a real write too */
		sd_error_t e;
		sd_err_clear(&e);
		prune_mask_counts_t c;
		double t0 = now();
		int rc = prune_mask_2of4_bits(&t, axis, keep, bits, &c, "bench", &e);
		prune_mask_apply_bits(dtype, orig, work, bits, 0, t.n);
		double dt = now() - t0;
		if (rc) {
			fprintf(stderr, "bench_mask: %s\n", e.msg);
			*failed = 1;
		}
		if (dt < best)
			best = dt;
	}
	/* one step at each vector width the CPU has (16 bytes, and 32 with AVX2) */
	void *two = NULL;
	one_step[0] = one_step[1] = 0;
	if (prune_mask_fusable(&t, axis) && (two = malloc(bytes))) {
		memcpy(two, work, bytes);
		for (int wi = 0; wi < 2; wi++) {
			if (prune_mask_vector_width(16 << wi) != 16 << wi)
				continue;
			double best1 = 1e30;
			for (int r = 0; r < RUNS; r++) {
				memset(work, 0xA5, bytes);
				prune_mask_counts_t c = {0};
				double t0 = now();
				for (size_t i = 0; i < t.n; i += PIECE / es) {
					size_t n = t.n - i < PIECE / es ? t.n - i : PIECE / es;
					if (prune_mask_2of4_apply(&t, axis, i, n,
								  (char *)work + i * es, &c))
						*failed = 1;
				}
				double dt = now() - t0;
				if (dt < best1)
					best1 = dt;
			}
			if (memcmp(two, work, bytes)) {
				fprintf(stderr, "bench_mask: one step differs from two passes\n");
				*failed = 1;
			}
			one_step[wi] = (double)bytes / best1 / 1e9;
		}
		prune_mask_vector_width(32);
		free(two);
	}
	t.data = work;
	if (!prune_mask_is_2of4(&t, axis, NULL)) {
		fprintf(stderr, "bench_mask: result is not 2:4\n");
		*failed = 1;
	}
	free(orig);
	free(work);
	free(keep);
	free(bits);
	return (double)bytes / best / 1e9;
}

static void shape_str(int rank, const int64_t *dims, char *buf, size_t cap)
{
	size_t len = (size_t)snprintf(buf, cap, "[");
	for (int i = 0; i < rank && len < cap; i++)
		len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? "," : "",
					(long long)dims[i]);
	if (len < cap)
		snprintf(buf + len, cap - len, "]");
}

int main(int argc, char **argv)
{
	int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
	struct layout {
		const char *what;
		int dtype;
		int rank;
		int64_t dims[4];
		int axis;
		int big;
	} layouts[] = {
		{"Conv2D", TENSORFLOW__DATA_TYPE__DT_FLOAT, 4, {3, 3, 512, 512}, 2, 0},
		{"MatMul", TENSORFLOW__DATA_TYPE__DT_FLOAT, 2, {2048, 1000}, 0, 0},
		{"MatMul transpose_b", TENSORFLOW__DATA_TYPE__DT_FLOAT, 2, {1000, 2048}, 1, 0},
		{"Conv2DBackpropInput", TENSORFLOW__DATA_TYPE__DT_FLOAT, 4, {4, 4, 256, 128}, 3, 0},
		{"256 MiB MatMul", TENSORFLOW__DATA_TYPE__DT_FLOAT, 2, {8192, 8192}, 0, 1},
		{"256 MiB MatMul transpose_b", TENSORFLOW__DATA_TYPE__DT_FLOAT, 2, {8192, 8192}, 1, 1},
		{"Conv2D", TENSORFLOW__DATA_TYPE__DT_DOUBLE, 4, {3, 3, 512, 512}, 2, 0},
		{"MatMul transpose_b", TENSORFLOW__DATA_TYPE__DT_DOUBLE, 2, {1000, 2048}, 1, 0},
		{"Conv2D", TENSORFLOW__DATA_TYPE__DT_HALF, 4, {3, 3, 512, 512}, 2, 0},
		{"MatMul transpose_b", TENSORFLOW__DATA_TYPE__DT_HALF, 2, {1000, 2048}, 1, 0},
		{"Conv2D", TENSORFLOW__DATA_TYPE__DT_BFLOAT16, 4, {3, 3, 512, 512}, 2, 0},
	};
	int failed = 0, below = 0;
	printf("%-28s %-9s %-16s %4s %10s %10s %10s\n", "layout", "dtype", "shape", "axis",
	       "2pass GB/s", "1step 16B", "1step 32B");
	for (size_t i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++) {
		const struct layout *l = &layouts[i];
		if (quick && l->big)
			continue;
		double one[2];
		double gbs = bench_one(l->dtype, l->rank, l->dims, l->axis, &failed, one);
		char sh[64], o[2][16] = {"-", "-"};
		shape_str(l->rank, l->dims, sh, sizeof(sh));
		for (int w = 0; w < 2; w++)
			if (one[w] > 0)
				snprintf(o[w], sizeof(o[w]), "%.2f", one[w]);
		printf("%-28s %-9s %-16s %4d %10.2f %10s %10s\n", l->what,
		       prune_dtype_name(l->dtype), sh, l->axis, gbs, o[0], o[1]);
		if (l->dtype == TENSORFLOW__DATA_TYPE__DT_FLOAT) {
			printf("  target >= %.2f GB/s float32: %s\n", TARGET_GBS,
			       gbs >= TARGET_GBS ? "PASS" : "FAIL");
			below |= gbs < TARGET_GBS;
		}
	}
	return failed ? 2 : below ? 1 : 0;
}
