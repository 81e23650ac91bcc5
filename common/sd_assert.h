/*
 * sd_assert: the two kinds of assertion (as Knot Resolver's kr_require and
 * kr_fails_assert).
 *
 * sd_require(cond) is for the process's own invariants, which nothing a client, a model
 * or the disk can break: an enum out of its table, a handle in a state libuv forbids.
 * When it fails the process state is corrupted; it logs file:line and aborts.
 *
 * sd_fails_assert(cond) is for an expectation whose failure the caller can survive:
 * an allocation or a libuv call that should not fail. It logs file:line at error level
 * and is true when cond is false, so the caller fails the job, the request or the
 * start-up instead of the process:
 *
 *     if (sd_fails_assert(w != NULL))
 *             return sd_err(e, SD_ENOMEM, "out of memory");
 *
 * Neither is ever used on input: bad input is an SD_E* error with a message.
 */
#ifndef SD_ASSERT_H
#define SD_ASSERT_H

#include <stdbool.h>

void sd__assert_abort(const char *cond, const char *file, int line) __attribute__((noreturn));
void sd__assert_log(const char *cond, const char *file, int line);

#define sd_require(cond) ((cond) ? (void)0 : sd__assert_abort(#cond, __FILE__, __LINE__))
#define sd_fails_assert(cond) ((cond) ? false : (sd__assert_log(#cond, __FILE__, __LINE__), true))

#endif
