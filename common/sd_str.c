/*
 * sd_str: see sd_str.h.
 */
#include "sd_str.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void sd_appendf(char **buf, size_t *len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	char *p = n >= 0 ? realloc(*buf, *len + (size_t)n + 1) : NULL;
	if (!p)
		return;
	va_start(ap, fmt);
	vsnprintf(p + *len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	*buf = p;
	*len += (size_t)n;
}
