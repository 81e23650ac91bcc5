/*
 * pbmutate_check: the mutator's own contract, checked outside libFuzzer (suite 'fuzz').
 *
 * Feeds the seed corpus of fuzz_graph, and the mutator's own outputs, through
 * LLVMFuzzerCustomMutator and LLVMFuzzerCustomCrossOver with buffers allocated at exactly
 * max_size (so ASan catches any write past it) and checks that the result fits, is not
 * empty, and keeps byte 0 (the target's selector). LLVMFuzzerMutate, which libFuzzer
 * provides to the mutator, is replaced by a small byte mutator with the same contract.
 *
 * usage: pbmutate_check CORPUS_DIR [ITERATIONS]    (PBMUTATE_SEED=N for another sequence)
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbmutate.h"

static uint64_t state = 0x1234567887654321ULL;

static uint64_t rnd(void)
{
	state ^= state << 13;
	state ^= state >> 7;
	state ^= state << 17;
	return state;
}

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size)
{
	if (max_size == 0) {
		fprintf(stderr, "pbmutate_check: LLVMFuzzerMutate called with max_size 0\n");
		abort();
	}
	if (size > max_size) {
		fprintf(stderr, "pbmutate_check: LLVMFuzzerMutate size %zu > max %zu\n", size,
			max_size);
		abort();
	}
	switch (rnd() % 3) {
	case 0: /* flip a byte */
		if (size)
			data[rnd() % size] ^= (uint8_t)(1u << (rnd() % 8));
		return size;
	case 1: /* insert a byte */
		if (size < max_size) {
			size_t at = rnd() % (size + 1);
			memmove(data + at + 1, data + at, size - at);
			data[at] = (uint8_t)rnd();
			return size + 1;
		}
		return size;
	default: /* erase a byte */
		if (size) {
			size_t at = rnd() % size;
			memmove(data + at, data + at + 1, size - at - 1);
			return size - 1;
		}
		return size;
	}
}

typedef struct blob {
	uint8_t *p;
	size_t n;
} blob_t;

static blob_t *seeds;
static size_t n_seeds;

static void load(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d) {
		perror(dir);
		exit(2);
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		FILE *f = fopen(path, "rb");
		if (!f)
			continue;
		fseek(f, 0, SEEK_END);
		long len = ftell(f);
		fseek(f, 0, SEEK_SET);
		uint8_t *p = malloc(len > 0 ? (size_t)len : 1);
		if (!p || fread(p, 1, (size_t)len, f) != (size_t)len) {
			fprintf(stderr, "pbmutate_check: cannot read %s\n", path);
			exit(2);
		}
		fclose(f);
		seeds = realloc(seeds, (n_seeds + 1) * sizeof(*seeds));
		seeds[n_seeds++] = (blob_t){p, (size_t)len};
	}
	closedir(d);
	if (!n_seeds) {
		fprintf(stderr, "pbmutate_check: no seeds in %s\n", dir);
		exit(2);
	}
}

/* A max_size at least size: mostly a little more, sometimes tight, sometimes 2 MiB. */
static size_t pick_max(size_t size)
{
	switch (rnd() % 4) {
	case 0: return size ? size : 1;
	case 1: return size + 1 + rnd() % 64;
	case 2: return size + rnd() % (size + 4096);
	default: return (size_t)2 << 20 > size ? (size_t)2 << 20 : size;
	}
}

static void check(const char *what, size_t out, size_t max, int first, const uint8_t *p,
		  size_t iter)
{
	if (out > max || out == 0 || (first >= 0 && p[0] != first)) {
		fprintf(stderr,
			"pbmutate_check: iteration %zu: %s returned %zu bytes (max %zu), byte 0 "
			"%d (was %d)\n",
			iter, what, out, max, out ? p[0] : -1, first);
		abort();
	}
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s CORPUS_DIR [ITERATIONS]\n", argv[0]);
		return 2;
	}
	load(argv[1]);
	if (getenv("PBMUTATE_SEED"))
		state ^= strtoull(getenv("PBMUTATE_SEED"), NULL, 10) * 0x9e3779b97f4a7c15ULL;
	size_t iters = argc == 3 ? strtoul(argv[2], NULL, 10) : 3000;
	blob_t cur = {NULL, 0};
	size_t max_seen = 0;
	for (size_t i = 0; i < iters; i++) {
		/* Half the time continue from the last output, so mutations compound. */
		const blob_t *in = cur.p && rnd() % 2 ? &cur : &seeds[rnd() % n_seeds];
		size_t max = pick_max(in->n);
		uint8_t *buf = malloc(max);
		memcpy(buf, in->p, in->n);
		int first = in->n ? in->p[0] : -1;
		size_t out;
		if (rnd() % 4) {
			out = LLVMFuzzerCustomMutator(buf, in->n, max, (unsigned)rnd());
			check("mutator", out, max, first, buf, i);
		} else {
			const blob_t *other = &seeds[rnd() % n_seeds];
			out = LLVMFuzzerCustomCrossOver(in->p, in->n, other->p, other->n, buf, max,
							(unsigned)rnd());
			if (out == 0) { /* allowed: no crossover */
				free(buf);
				continue;
			}
			check("crossover", out, max, first, buf, i);
		}
		free(cur.p);
		cur.p = malloc(out);
		memcpy(cur.p, buf, out);
		cur.n = out;
		if (out > max_seen)
			max_seen = out;
		free(buf);
	}
	free(cur.p);
	for (size_t i = 0; i < n_seeds; i++)
		free(seeds[i].p);
	free(seeds);
	printf("pbmutate_check: %zu iterations ok, largest output %zu bytes\n", iters, max_seen);
	return 0;
}
