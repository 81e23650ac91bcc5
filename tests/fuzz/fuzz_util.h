/*
 * fuzz_util: what the fuzz targets share: the arena budget, the libFuzzer entry point
 * prototypes (the project builds with -Wmissing-prototypes), a check that a failing
 * call returned one of the codes its header documents, and in-memory output streams.
 */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "common/arena.h"
#include "common/sd_err.h"

/*
 * The CLI and the daemon give a stage an unlimited arena. The targets use a 1 GiB
 * budget instead, so an input that legitimately asks for a huge allocation (a splat
 * weight of 2^32 elements, say) fails with SD_ENOMEM inside libFuzzer's -rss_limit_mb
 * rather than stopping the run as an out-of-memory "crash". FUZZ_ARENA_MB overrides it
 * (0 = unlimited, exactly as the CLI).
 */
static inline size_t fuzz_arena_limit(void)
{
	static size_t limit = SIZE_MAX;
	if (limit == SIZE_MAX) {
		const char *s = getenv("FUZZ_ARENA_MB");
		limit = s ? (size_t)strtoull(s, NULL, 10) << 20 : (size_t)1 << 30;
	}
	return limit;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* FUZZ_VERBOSE=1 prints every failure message (for triaging a single input). */
static inline bool fuzz_verbose(void)
{
	static int v = -1;
	if (v < 0)
		v = getenv("FUZZ_VERBOSE") && getenv("FUZZ_VERBOSE")[0] == '1';
	return v;
}

/*
 * Aborts (a finding for libFuzzer) unless rc is 0 or one of the n codes listed, and
 * unless a failure left a message. `what` names the call in the report.
 */
static inline void fuzz_expect(const char *what, int rc, const sd_error_t *e, int n, ...)
{
	if (rc == 0)
		return;
	if (fuzz_verbose())
		fprintf(stderr, "fuzz: %s: %s: %s\n", what, sd_err_type(rc), e->msg);
	va_list ap;
	va_start(ap, n);
	bool ok = false;
	for (int i = 0; i < n; i++)
		if (va_arg(ap, int) == rc)
			ok = true;
	va_end(ap);
	if (!ok || e->msg[0] == '\0') {
		fprintf(stderr, "fuzz: %s returned %d (%s) %s: '%s'\n", what, rc, sd_err_type(rc),
			ok ? "without a message" : "which its header does not document", e->msg);
		abort();
	}
}

/* Aborts with a message: an invariant the target checks does not hold. */
#define FUZZ_ASSERT(cond, ...)                                                          \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "fuzz: %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                   \
			fputc('\n', stderr);                                            \
			abort();                                                        \
		}                                                                       \
	} while (0)

/* A growing in-memory stream: buf and len are valid after fclose; free buf. */
typedef struct fuzz_mem {
	char *buf;
	size_t len;
	FILE *f;
} fuzz_mem_t;

static inline FILE *fuzz_mem_open(fuzz_mem_t *m)
{
	m->buf = NULL;
	m->len = 0;
	m->f = open_memstream(&m->buf, &m->len);
	FUZZ_ASSERT(m->f != NULL, "open_memstream failed");
	return m->f;
}

static inline void fuzz_mem_close(fuzz_mem_t *m)
{
	FUZZ_ASSERT(fclose(m->f) == 0, "fclose of a memory stream failed");
	m->f = NULL;
}

static inline ssize_t fuzz_discard_write(void *cookie, const char *buf, size_t n)
{
	(void)cookie;
	(void)buf;
	return (ssize_t)n;
}

/* A stream that accepts and drops everything (for saves whose bytes are not checked). */
static inline FILE *fuzz_discard_open(void)
{
	cookie_io_functions_t io = {.write = fuzz_discard_write};
	FILE *f = fopencookie(NULL, "w", io);
	FUZZ_ASSERT(f != NULL, "fopencookie failed");
	return f;
}

#endif
