/*
 * api_parse: HTTP header and path parsers (see api_parse.h).
 *
 * Every input here comes straight from a client: lengths are bounded, numbers are
 * parsed with overflow checks, and nothing is allocated.
 */
#include "api/api_parse.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool api_route_match(const char *pat, const char *path, size_t path_len,
		     char params[2][API_PARAM_MAX])
{
	if (memchr(path, 0, path_len))
		return false;
	const char *url = path, *url_end = path + path_len;
	int k = 0;
	while (*pat && url < url_end) {
		if (*pat == '{') {
			const char *pe = strchr(pat, '}');
			const char *ue = memchr(url, '/', (size_t)(url_end - url));
			size_t n = ue ? (size_t)(ue - url) : (size_t)(url_end - url);
			if (!pe || n == 0 || n >= API_PARAM_MAX || k >= 2)
				return false;
			memcpy(params[k], url, n);
			params[k++][n] = 0;
			pat = pe + 1;
			url += n;
			continue;
		}
		if (*pat++ != *url++)
			return false;
	}
	return !*pat && url == url_end;
}

/* A non-negative decimal without sign or blanks, saturated at INT64_MAX (a range past
 * any file is still a range); end gets what follows. */
static bool number(const char *p, const char **end, int64_t *v)
{
	if (*p < '0' || *p > '9')
		return false;
	int64_t n = 0;
	for (; *p >= '0' && *p <= '9'; p++)
		n = n > (INT64_MAX - 9) / 10 ? INT64_MAX : n * 10 + (*p - '0');
	*v = n;
	*end = p;
	return true;
}

static const char *ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

int api_range_parse(const char *h, int64_t size, int64_t *from, int64_t *to)
{
	/* RFC 9110 14.2: a unit we do not know MUST be ignored; a list of ranges (which
	 * would need multipart/byteranges) MAY be, and the client then gets the whole
	 * file with a 200 instead of an error. */
	if (!h || strncasecmp(h, "bytes=", 6) || strchr(h, ','))
		return 0;
	const char *p = ows(h + 6), *end;
	int64_t a, b;
	if (*p == '-') {
		if (!number(p + 1, &end, &b) || *ows(end) || b <= 0)
			return -1;
		*from = b >= size ? 0 : size - b;
		*to = size - 1;
	} else {
		if (!number(p, &end, &a) || *end != '-')
			return -1;
		p = end + 1;
		b = size - 1;
		if (*ows(p) && (!number(p, &end, &b) || *ows(end) || b < a))
			return -1;
		*from = a;
		*to = b >= size ? size - 1 : b;
	}
	return *from < size ? 1 : -1;
}

bool api_etag_match(const char *inm, const char *etag)
{
	if (!inm)
		return false;
	size_t el = strlen(etag);
	for (const char *p = inm; *p;) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '*')
			return true;
		if (!strncmp(p, "W/", 2))
			p += 2;
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == el && !strncmp(p, etag, n))
			return true;
		p += n;
	}
	return false;
}

bool api_if_range_holds(const char *if_range, const char *etag)
{
	if (!if_range)
		return true;
	while (*if_range == ' ' || *if_range == '\t')
		if_range++;
	size_t n = strlen(if_range), el = strlen(etag);
	while (n && (if_range[n - 1] == ' ' || if_range[n - 1] == '\t'))
		n--;
	return n == el && !strncmp(if_range, etag, n);
}

#define BEARER_MAX 512

const char *api_bearer_token(const char *h)
{
	if (!h || strncasecmp(h, "Bearer ", 7))
		return NULL;
	const char *t = h + 7;
	while (*t == ' ')
		t++;
	size_t n = strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			     "0123456789-._~+/");
	while (t[n] == '=')
		n++;
	if (n == 0 || n > BEARER_MAX || t[n])
		return NULL;
	return t;
}
