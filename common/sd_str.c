/*
 * sd_str: see sd_str.h.
 */
#include "common/sd_str.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0 if there is none. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	if (c < 0x80)
		return 1;
	size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
						: c >= 0xf0 && c <= 0xf4 ? 4 : 0;
	if (!len || len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	/* The second byte's range rules out overlong forms, surrogates and > U+10FFFF. */
	if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) ||
	    (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))
		return 0;
	return len;
}

bool sd_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_seq(p + i, n - i);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

void sd_hex(const void *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	const unsigned char *d = p;
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[d[i] >> 4];
		out[2 * i + 1] = digits[d[i] & 15];
	}
	out[2 * n] = 0;
}

char *sd_utf8_escape(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(4 * n + 1);
	if (!out)
		return NULL;
	const unsigned char *p = (const unsigned char *)s;
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_seq(p + i, n - i);
		if (k) {
			memcpy(out + o, p + i, k);
			o += k;
			i += k;
		} else {
			out[o++] = '\\';
			out[o++] = 'x';
			sd_hex(p + i, 1, out + o);
			o += 2;
			i++;
		}
	}
	out[o] = 0;
	return out;
}

int sd_bool_parse(const char *s, bool *out, sd_error_t *e)
{
	static const char *const yes[] = {"true", "1", "yes"}, *const no[] = {"false", "0", "no"};
	for (size_t i = 0; i < 3; i++) {
		if (!strcmp(s, yes[i]) || !strcmp(s, no[i])) {
			*out = !strcmp(s, yes[i]);
			return 0;
		}
	}
	return sd_err(e, SD_EUSAGE, "'%.32s' must be true or false", s);
}

static int key_cmp(const void *a, const void *b)
{
	const sd_strkey_t *x = a, *y = b;
	int d = strcmp(x->s, y->s);
	return d ? d : (x->i > y->i) - (x->i < y->i);
}

void sd_strkeys_sort(sd_strkey_t *k, size_t n)
{
	if (n > 1)
		qsort(k, n, sizeof(*k), key_cmp);
}

size_t sd_strkeys_first_repeat(const sd_strkey_t *k, size_t n, size_t *earlier)
{
	size_t first = SIZE_MAX;
	/* Equal strings sit together in list order: each run's first is the original. */
	for (size_t j = 1; j < n; j++) {
		if (k[j].i < first && strcmp(k[j - 1].s, k[j].s) == 0) {
			first = k[j].i;
			if (earlier)
				*earlier = k[j - 1].i;
		}
	}
	return first;
}

/* The first position of sorted k whose string compares above s[0..len) (past) or not
 * below it (!past) on those len bytes: the ends of the run that begins with s. */
static size_t bound(const sd_strkey_t *k, size_t n, const char *s, size_t len, bool past)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strncmp(k[mid].s, s, len);
		if (c < 0 || (past && c == 0))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

size_t sd_strkeys_find(const sd_strkey_t *k, size_t n, const char *s)
{
	/* s itself sorts first among the strings that begin with it */
	size_t j = bound(k, n, s, strlen(s), false);
	return j < n && strcmp(k[j].s, s) == 0 ? j : n;
}

void sd_strkeys_prefixed(const sd_strkey_t *k, size_t n, const char *prefix, size_t len,
			 size_t *lo, size_t *hi)
{
	*lo = bound(k, n, prefix, len, false);
	*hi = bound(k, n, prefix, len, true);
}
