/*
 * sd_err: the one error convention of sparsityd.
 *
 * Fallible functions return int: 0 on success or a negative SD_E* code, and put the
 * human detail into a caller-supplied sd_error_t. The X-macro table below is the only
 * place that maps a code to its HTTP status, problem+json type, CLI exit status and
 * short title, so the CLI and the API can never disagree about what a failure means.
 *
 * Thread safety: everything here is reentrant; an sd_error_t belongs to one caller.
 */
#ifndef SD_ERR_H
#define SD_ERR_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#define SD_MUST_CHECK __attribute__((warn_unused_result))

/* X(NAME, value, http status, problem type slug, CLI exit status, title) */
#define SD_ERR_MAP(X)                                                                  \
	X(USAGE, -1, 400, "bad-request", 2, "invalid request or arguments")               \
	X(MODEL, -2, 422, "bad-model", 1, "model rejected")                                \
	X(CONFIG, -3, 422, "bad-config", 1, "config rejected")                             \
	X(RECORD, -4, 422, "bad-record", 1, "record rejected")                             \
	X(NOLAYER, -5, 422, "no-layer-to-prune", 1, "no layer to prune")                   \
	X(TOOBIG, -6, 413, "too-large", 1, "input exceeds a size limit")                   \
	X(NOMEM, -7, 507, "out-of-memory", 3, "out of memory")                             \
	X(IO, -8, 500, "io-error", 3, "input/output error")                                \
	X(NOSPACE, -9, 507, "insufficient-storage", 3, "no space left on device")          \
	X(INTERNAL, -10, 500, "internal-error", 3, "internal error")                       \
	X(NOTFOUND, -11, 404, "not-found", 1, "not found")                                 \
	X(CONFLICT, -12, 409, "conflict", 1, "wrong state")                                \
	X(BUSY, -13, 429, "queue-full", 3, "queue full")                                 \
	X(UNAVAIL, -14, 503, "unavailable", 3, "service unavailable")                     \
	X(AUTH, -15, 401, "unauthorized", 2, "authentication required")                    \
	X(METHOD, -16, 405, "method-not-allowed", 2, "method not allowed")                \
	X(RANGE, -17, 416, "range-not-satisfiable", 1, "range not satisfiable")            \
	X(UPLOADS, -18, 429, "too-many-uploads", 3, "too many uploads in progress")         \
	X(ATTEMPTS, -19, 500, "attempts-exhausted", 3, "interrupted too often")

enum {
	SD_OK = 0,
#define SD__ERR_ENUM(name, val, http, type, exitc, title) SD_E##name = (val),
	SD_ERR_MAP(SD__ERR_ENUM)
#undef SD__ERR_ENUM
};

#define SD_ERR_MSG_MAX 1024
#define SD_ERR_WHERE_MAX 256

/*
 * Where a failure happened. Any field may be empty/0. `file` is the input file name as
 * the user gave it, `line`/`col` are 1-based positions in a text input, `node` is a
 * graph node or layer name.
 */
typedef struct sd_error {
	int code;
	int line;
	int col;
	char file[SD_ERR_WHERE_MAX];
	char node[SD_ERR_WHERE_MAX];
	char msg[SD_ERR_MSG_MAX]; /* complete sentence, already carries file:line:col */
} sd_error_t;

/* Clears e. Safe on NULL. */
void sd_err_clear(sd_error_t *e);

/*
 * Records a failure and returns code, so callers can write `return sd_err(e, ...)`.
 * e may be NULL (the detail is dropped). The message is truncated, never overflowed.
 */
int sd_err(sd_error_t *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* As sd_err, with a va_list (for callers that are themselves printf-like). */
int sd_errv(sd_error_t *e, int code, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

/* As sd_err, and records the node or layer the failure is about. */
int sd_err_node(sd_error_t *e, int code, const char *node, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* As sd_err, for text inputs: the message is prefixed "file:line:col: ". */
int sd_err_at(sd_error_t *e, int code, const char *file, int line, int col,
	      const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Prefixes the existing message with "prefix: " (for adding context on the way up). */
void sd_err_prefix(sd_error_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints the table, one row a line: NAME, HTTP status, problem type, exit status and
 * title separated by tabs (`sparsityd --print-errors`, held against openapi.yaml). */
void sd_err_print(FILE *f);

/* Table lookups; unknown codes map to the INTERNAL row. Never NULL. */
const char *sd_err_type(int code);  /* "bad-model" */
const char *sd_err_title(int code); /* "model rejected" */
int sd_err_http(int code);
int sd_err_exit(int code);

#endif
