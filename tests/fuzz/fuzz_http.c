/*
 * Fuzz target: the HTTP API's request parsers on plain strings: route matching (with
 * NUL bytes and long segments), Range against a size, If-None-Match lists, and the
 * Bearer token of an Authorization value.
 *
 * Input: four '\n'-separated fields, each given to one parser; the first 8 bytes of
 * the Range field's line also give the resource size.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_parse.h"

static const char *const patterns[] = {"/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/cancel",
				       "/v1/jobs/{id}/artifacts/{name}", "/healthz"};

/* A NUL-terminated copy of the next '\n'-separated field of data. */
static char *field(const uint8_t **p, const uint8_t *end, size_t *len)
{
	const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
	size_t n = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
	char *s = malloc(n + 1);
	if (!s)
		abort();
	memcpy(s, *p, n);
	s[n] = 0;
	*len = n;
	*p = nl ? nl + 1 : end;
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data, *end = data + size;
	size_t n;
	char *path = field(&p, end, &n);
	char params[2][API_PARAM_MAX];
	for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++)
		if (api_route_match(patterns[i], path, n, params) &&
		    (strlen(params[0]) >= API_PARAM_MAX || memchr(path, 0, n)))
			abort();
	free(path);

	char *range = field(&p, end, &n);
	int64_t sz = 0;
	memcpy(&sz, range, n < 8 ? n : 8);
	sz = sz < 0 ? -(sz + 1) : sz;
	int64_t from, to;
	int rc = api_range_parse(n > 8 ? range + 8 : NULL, sz, &from, &to);
	if (rc == 1 && (from < 0 || to < from || to >= sz))
		abort();
	free(range);

	char *inm = field(&p, end, &n);
	(void)api_etag_match(inm, "\"01M8SW213MQ6NRT41CK3P3WQYG-v4\"");
	free(inm);

	char *auth = field(&p, end, &n);
	const char *tok = api_bearer_token(auth);
	if (tok && (tok < auth || tok > auth + n || strlen(tok) > 600))
		abort();
	free(auth);
	return 0;
}
