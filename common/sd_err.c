/*
 * sd_err: error records and the code table (see sd_err.h for the convention).
 */
#include "common/sd_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Messages are bounded on purpose: a too-long detail is cut, never overflowed. (clang
 * has no such warning.) */
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

struct row {
	int code;
	int http;
	int exitc;
	const char *type;
	const char *title;
};

static const struct row rows[] = {
#define SD__ERR_ROW(nm, val, ht, ty, ex, ti) {val, ht, ex, ty, ti},
	SD_ERR_MAP(SD__ERR_ROW)
#undef SD__ERR_ROW
};

static const struct row *lookup(int code)
{
	const struct row *internal = NULL;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		if (rows[i].code == code)
			return &rows[i];
		if (rows[i].code == SD_EINTERNAL)
			internal = &rows[i];
	}
	return internal;
}

void sd_err_clear(sd_error_t *e)
{
	if (e)
		memset(e, 0, sizeof(*e));
}

__attribute__((format(printf, 3, 0)))
static int vset(sd_error_t *e, int code, const char *fmt, va_list ap)
{
	if (!e)
		return code;
	/* A new failure replaces the whole record: no stale position or node survives. */
	memset(e, 0, sizeof(*e));
	e->code = code;
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	return code;
}

int sd_errv(sd_error_t *e, int code, const char *fmt, va_list ap)
{
	return vset(e, code, fmt, ap);
}

int sd_err(sd_error_t *e, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset(e, code, fmt, ap);
	va_end(ap);
	return code;
}

int sd_err_node(sd_error_t *e, int code, const char *node, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vset(e, code, fmt, ap);
	va_end(ap);
	if (e && node)
		snprintf(e->node, sizeof(e->node), "%s", node);
	return code;
}

int sd_err_at(sd_error_t *e, int code, const char *file, int line, int col,
	      const char *fmt, ...)
{
	if (!e)
		return code;
	char body[SD_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(body, sizeof(body), fmt, ap);
	va_end(ap);
	memset(e, 0, sizeof(*e));
	e->code = code;
	e->line = line;
	e->col = col;
	snprintf(e->file, sizeof(e->file), "%s", file ? file : "");
	snprintf(e->msg, sizeof(e->msg), "%s:%d:%d: %s", file ? file : "<input>", line, col,
		 body);
	return code;
}

void sd_err_prefix(sd_error_t *e, const char *fmt, ...)
{
	if (!e)
		return;
	char pre[SD_ERR_MSG_MAX], old[SD_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	memcpy(old, e->msg, sizeof(old));
	snprintf(e->msg, sizeof(e->msg), "%s: %s", pre, old);
}

const char *sd_err_type(int code) { return lookup(code)->type; }
const char *sd_err_title(int code) { return lookup(code)->title; }
int sd_err_http(int code) { return lookup(code)->http; }
int sd_err_exit(int code) { return lookup(code)->exitc; }

void sd_err_print(FILE *f)
{
#define SD__ERR_PRINT(nm, val, ht, ty, ex, ti) fprintf(f, "%s\t%d\t%s\t%d\t%s\n", #nm, ht, ty, ex, ti);
	SD_ERR_MAP(SD__ERR_PRINT)
#undef SD__ERR_PRINT
}
