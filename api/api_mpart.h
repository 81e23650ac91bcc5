/*
 * api_mpart: a streaming multipart/form-data parser (RFC 7578 over RFC 2046) that knows
 * nothing of sockets or HTTP libraries, so the upload path can be unit-tested and fuzzed
 * by feeding it bytes.
 *
 * Why our own: libmicrohttpd's post processor needs a live connection, hands callbacks a
 * NULL key for a part without name=, and walks file bytes through a byte-at-a-time
 * state machine. Here a part's body is searched for the delimiter with memmem and handed
 * on as slices of the caller's buffer: file bytes are never copied by the parser.
 *
 * Limits (each refused with SD_EUSAGE and a message saying which): the boundary is 1 to
 * 70 characters of RFC 2046's bchars; a part's header block is at most
 * API_MPART_HEADERS_MAX bytes; at most API_MPART_PARTS_MAX parts; every part needs
 * `Content-Disposition: form-data; name="..."` with a non-empty name free of NUL and
 * control bytes. Memory: one fixed-size struct, no allocation.
 *
 * Thread safety: a parser belongs to one request; no shared state.
 */
#ifndef API_MPART_H
#define API_MPART_H

#include <stdbool.h>
#include <stddef.h>

#include "common/sd_err.h"

#define API_MPART_BOUNDARY_MAX 70
#define API_MPART_HEADERS_MAX 8192
#define API_MPART_PARTS_MAX 32
#define API_MPART_NAME_MAX 256

/* What the parser reports. Each returns 0 or an SD_E* code (with e filled), which stops
 * the parse and is returned by api_mpart_feed. name and filename are NUL-terminated and
 * valid only during the call; filename is NULL when the part has none. */
typedef struct api_mpart_cb {
	int (*part_begin)(void *ud, const char *name, const char *filename, sd_error_t *e);
	int (*part_data)(void *ud, const char *data, size_t n, sd_error_t *e);
	int (*part_end)(void *ud, sd_error_t *e);
} api_mpart_cb_t;

typedef struct api_mpart {
	api_mpart_cb_t cb;
	void *ud;
	int state;
	int failed;                 /* the first error: every later call returns it */
	int parts;
	char delim[4 + API_MPART_BOUNDARY_MAX + 1]; /* "\r\n--" boundary */
	size_t delim_len;
	size_t held;                /* delim[0..held) was seen at the end of the last chunk */
	size_t line_len;            /* after a delimiter: bytes of the rest of that line */
	bool dash, cr;              /* that line began with '-' / has its CR */
	char head[API_MPART_HEADERS_MAX];
	size_t head_len;
} api_mpart_t;

/*
 * Starts a parse for a request whose Content-Type header is content_type (may be NULL).
 * Returns 0, or SD_EUSAGE when it is not multipart/form-data with a valid boundary.
 */
SD_MUST_CHECK int api_mpart_init(api_mpart_t *m, const char *content_type,
				 const api_mpart_cb_t *cb, void *ud, sd_error_t *e);

/* Parses the next n bytes of the body. Returns 0, SD_EUSAGE (malformed body) or the
 * first error a callback returned; after an error every call fails the same way. */
SD_MUST_CHECK int api_mpart_feed(api_mpart_t *m, const char *data, size_t n, sd_error_t *e);

/* The body ended: returns 0 when the closing delimiter was seen, else SD_EUSAGE. */
SD_MUST_CHECK int api_mpart_finish(api_mpart_t *m, sd_error_t *e);

#endif
