/*
 * What every unit suite shares, whatever it links: the one way a suite is run
 * (tu_main over a table of test cases) and a fresh temporary directory per test.
 * It includes only check and libc, so the store and API suites (which link the store,
 * not the engine) can use it; the engine's helpers (test data, models, an arena per
 * test) are in testutil_prune.h, which includes this one.
 *
 * Every test_*.c ends the same way:
 *
 *	int main(void)
 *	{
 *		const tu_case_t cases[] = {
 *			{"kernel", TU_TESTS(a, b), .timeout = 120},
 *			{"store", TU_TESTS(c), .setup = setup, .teardown = teardown},
 *			{NULL},
 *		};
 *		return tu_main("mask", cases);
 *	}
 *
 * Header-only so each suite stays a single translation unit.
 */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* One test case: its tests run in order, each inside the checked fixture if one is set. */
typedef struct tu_case {
	const char *name;          /* NULL ends the table */
	const TTest *const *tests; /* NULL-terminated (TU_TESTS), or NULL for none */
	void (*setup)(void);       /* checked fixture around every test, or NULL */
	void (*teardown)(void);
	double timeout;            /* seconds when forked; 0 keeps check's default (4) */
	const TTest *loop;         /* a loop test run before the others, i = 0 .. loop_n-1 */
	int loop_n;
} tu_case_t;

/* A NULL-terminated list of tests for tu_case_t.tests. */
#define TU_TESTS(...) ((const TTest *const[]){__VA_ARGS__, NULL})

/*
 * Runs the cases (a table ended by a NULL name) as one suite and turns the result into
 * the process exit status.
 */
static inline int tu_main(const char *suite, const tu_case_t *cases)
{
	Suite *s = suite_create(suite);
	for (const tu_case_t *c = cases; c->name; c++) {
		TCase *tc = tcase_create(c->name);
		if (c->timeout > 0)
			tcase_set_timeout(tc, c->timeout);
		if (c->setup || c->teardown)
			tcase_add_checked_fixture(tc, c->setup, c->teardown);
		if (c->loop)
			tcase_add_loop_test(tc, c->loop, 0, c->loop_n);
		for (size_t i = 0; c->tests && c->tests[i]; i++)
			tcase_add_test(tc, c->tests[i]);
		suite_add_tcase(s, tc);
	}
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * Makes a fresh, empty directory /tmp/<prefix>-XXXXXX; its path goes to dir (cap bytes).
 * Fails the test if it cannot.
 */
static inline void tu_mkdtemp(char *dir, size_t cap, const char *prefix)
{
	snprintf(dir, cap, "/tmp/%s-XXXXXX", prefix);
	ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp %s: %s", dir, strerror(errno));
}

static inline int tu_rm_one_(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

/* rm -rf dir without a shell (symbolic links are removed, not followed); 0 when done. */
static inline int tu_rm_rf(const char *dir)
{
	return nftw(dir, tu_rm_one_, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
