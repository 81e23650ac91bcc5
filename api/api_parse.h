/*
 * api_parse: the request-line and header parsers of the HTTP API, apart from the HTTP
 * library so they can be unit-tested and fuzzed on plain strings: route patterns,
 * Range, If-None-Match and Authorization. Pure functions; any thread.
 */
#ifndef API_PARSE_H
#define API_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest path parameter ({id}, {name}) a route captures. */
#define API_PARAM_MAX 96

/*
 * Matches path (url_len bytes, which may hold a NUL: such a path matches nothing) against
 * a route pattern whose "{x}" segments capture one non-empty segment each, at most 2,
 * into params. Returns whether it matched.
 */
bool api_route_match(const char *pattern, const char *path, size_t path_len,
		     char params[2][API_PARAM_MAX]);

/*
 * Parses a Range header value (may be NULL) against a resource of size bytes:
 * "bytes=a-b", "bytes=a-" or "bytes=-n". Returns 1 with [*from, *to] (inclusive,
 * clamped to the size, however large the numbers), 0 when the whole file is due (h NULL,
 * another unit, a list of ranges), -1 when it is malformed or not satisfiable (starts
 * past the end, or "bytes=-0").
 */
int api_range_parse(const char *h, int64_t size, int64_t *from, int64_t *to);

/* Whether an If-None-Match value (may be NULL) matches etag (RFC 9110: a list of entity
 * tags compared weakly, or "*"). */
bool api_etag_match(const char *inm, const char *etag);

/* Whether a Range may be honoured under an If-Range value (may be NULL: no condition).
 * RFC 9110 13.1.5: only an entity tag equal to etag by strong comparison holds; a weak
 * tag, another tag, or a date (nothing here has a Last-Modified) asks for the whole
 * resource. */
bool api_if_range_holds(const char *if_range, const char *etag);

/*
 * The token of an Authorization value (may be NULL) of the Bearer scheme (scheme name
 * case-insensitive, RFC 6750 token68 characters, at most 512). NULL when there is none
 * or it is malformed. Points into h.
 */
const char *api_bearer_token(const char *h);

#endif
