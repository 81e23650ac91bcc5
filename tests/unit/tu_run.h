/*
 * Runs a check suite and turns its result into the test binary's exit status; every
 * unit suite ends with it.
 */
#ifndef TU_RUN_H
#define TU_RUN_H

#include <check.h>
#include <stdlib.h>

static inline int tu_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
