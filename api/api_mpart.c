/*
 * api_mpart: streaming multipart/form-data parser (see api_mpart.h).
 *
 * The body is a sequence of delimiters "\r\n--BOUNDARY", each followed by the rest of
 * its line ("--" after the last one, else optional blanks and CRLF), then a part's
 * header block ending in an empty line, then the part's bytes up to the next delimiter.
 * The first delimiter may open the body without its CRLF; the parser acts as if the
 * body began with "\r\n" (held = 2 at start), so one search covers both cases.
 *
 * Part bytes are searched with memmem and passed on as slices of the caller's buffer.
 * Only a delimiter cut by a chunk edge needs memory across calls, and since a boundary
 * holds no CR, a held tail is always a prefix of the delimiter itself: `held` counts how
 * much of it was seen, and on a mismatch those bytes are replayed from delim[].
 */
#include "api/api_mpart.h"

#include <string.h>
#include <strings.h>

enum { S_PREAMBLE, S_BODY, S_LINE, S_HEAD, S_END };

/* RFC 2046 bchars (without the trailing-space rule, which is checked separately). */
static bool bchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       strchr("'()+_,-./:=? ", c) != NULL;
}

static int bad(api_mpart_t *m, sd_error_t *e, const char *what)
{
	m->failed = sd_err(e, SD_EUSAGE, "bad multipart body: %s", what);
	return m->failed;
}

/* Copies the value of parameter `key` of a header value (token or quoted-string) into
 * out; returns 1 found, 0 absent, -1 malformed or longer than cap - 1. */
static int param(const char *v, const char *key, char *out, size_t cap)
{
	size_t kl = strlen(key);
	const char *p = strchr(v, ';');
	while (p) {
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		bool hit = !strncasecmp(p, key, kl) && p[kl] == '=';
		const char *q = p + strcspn(p, "=;");
		if (*q != '=') {
			p = strchr(q, ';');
			continue;
		}
		q++;
		size_t n = 0;
		if (*q == '"') {
			for (q++; *q && *q != '"'; q++) {
				if (*q == '\\' && q[1])
					q++;
				if (hit && n + 1 >= cap)
					return -1;
				if (hit)
					out[n++] = *q;
			}
			if (*q != '"')
				return -1;
			q++;
		} else {
			for (; *q && *q != ';' && *q != ' ' && *q != '\t'; q++) {
				if (hit && n + 1 >= cap)
					return -1;
				if (hit)
					out[n++] = *q;
			}
		}
		if (hit) {
			out[n] = 0;
			return 1;
		}
		p = strchr(q, ';');
	}
	return 0;
}

int api_mpart_init(api_mpart_t *m, const char *ct, const api_mpart_cb_t *cb, void *ud,
		   sd_error_t *e)
{
	memset(m, 0, sizeof(*m));
	m->cb = *cb;
	m->ud = ud;
	static const char type[] = "multipart/form-data";
	if (!ct || strncasecmp(ct, type, sizeof(type) - 1) ||
	    (ct[sizeof(type) - 1] && ct[sizeof(type) - 1] != ';' && ct[sizeof(type) - 1] != ' '))
		return sd_err(e, SD_EUSAGE,
			      "bad multipart: the body must be multipart/form-data (curl -F), "
			      "not %.64s",
			      ct && ct[0] ? ct : "a body without Content-Type");
	char b[API_MPART_BOUNDARY_MAX + 2];
	int rc = param(ct, "boundary", b, sizeof(b));
	size_t bl = rc == 1 ? strlen(b) : 0;
	if (rc == 0)
		return sd_err(e, SD_EUSAGE, "bad multipart: Content-Type has no boundary");
	if (rc < 0 || bl == 0 || bl > API_MPART_BOUNDARY_MAX || b[bl - 1] == ' ')
		return sd_err(e, SD_EUSAGE,
			      "bad multipart: the boundary must be 1 to %d characters",
			      API_MPART_BOUNDARY_MAX);
	for (size_t i = 0; i < bl; i++)
		if (!bchar((unsigned char)b[i]))
			return sd_err(e, SD_EUSAGE,
				      "bad multipart: the boundary holds a character RFC 2046 "
				      "does not allow (byte 0x%02x)",
				      (unsigned char)b[i]);
	memcpy(m->delim, "\r\n--", 4);
	memcpy(m->delim + 4, b, bl);
	m->delim_len = 4 + bl;
	m->held = 2; /* the body may open with the delimiter minus its CRLF */
	m->state = S_PREAMBLE;
	return 0;
}

static int emit(api_mpart_t *m, const char *p, size_t n, sd_error_t *e)
{
	if (m->state != S_BODY || n == 0)
		return 0;
	int rc = m->cb.part_data(m->ud, p, n, e);
	if (rc)
		m->failed = rc;
	return rc;
}

/* A delimiter was found: the part before it (if any) is complete. */
static int delimiter(api_mpart_t *m, sd_error_t *e)
{
	int rc = m->state == S_BODY ? m->cb.part_end(m->ud, e) : 0;
	if (rc)
		return m->failed = rc;
	m->state = S_LINE;
	m->line_len = 0;
	m->dash = m->cr = false;
	return 0;
}

/* Scans part (or preamble) bytes for the delimiter; returns the bytes consumed. */
static size_t scan_body(api_mpart_t *m, const char *p, size_t n, int *rc, sd_error_t *e)
{
	if (m->held) {
		size_t need = m->delim_len - m->held, k = need < n ? need : n;
		if (!memcmp(p, m->delim + m->held, k)) {
			if (k < need) {
				m->held += k;
				return k;
			}
			m->held = 0;
			*rc = delimiter(m, e);
			return k;
		}
		/* Not a delimiter after all: what was held is data. */
		size_t h = m->held;
		m->held = 0;
		if ((*rc = emit(m, m->delim, h, e)))
			return 0;
	}
	const char *d = memmem(p, n, m->delim, m->delim_len);
	if (d) {
		if (!(*rc = emit(m, p, (size_t)(d - p), e)))
			*rc = delimiter(m, e);
		return (size_t)(d - p) + m->delim_len;
	}
	/* A delimiter may start in the last delim_len - 1 bytes: hold that tail back. */
	size_t from = n >= m->delim_len ? n - m->delim_len + 1 : 0;
	size_t keep = n;
	for (const char *r = memchr(p + from, '\r', n - from); r;
	     r = memchr(r + 1, '\r', (size_t)(p + n - r - 1))) {
		size_t tail = (size_t)(p + n - r);
		if (!memcmp(r, m->delim, tail)) {
			keep = (size_t)(r - p);
			m->held = tail;
			break;
		}
		if (tail == 1)
			break;
	}
	*rc = emit(m, p, keep, e);
	return n;
}

/* The rest of a delimiter's line: "--" ends the body, else blanks then CRLF. */
static size_t scan_line(api_mpart_t *m, const char *p, size_t n, int *rc, sd_error_t *e)
{
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		size_t at = m->line_len++;
		if (at == 0 && c == '-') {
			m->dash = true;
		} else if (m->dash) {
			if (c != '-') {
				*rc = bad(m, e, "a delimiter is followed by a single '-'");
				return i;
			}
			m->state = S_END;
			return i + 1;
		} else if (c == '\r' && !m->cr) {
			m->cr = true;
		} else if (c == '\n' && m->cr) {
			if (++m->parts > API_MPART_PARTS_MAX) {
				*rc = bad(m, e, "more than 32 parts");
				return i;
			}
			m->state = S_HEAD;
			m->head_len = 0;
			return i + 1;
		} else if ((c != ' ' && c != '\t') || m->cr || at > API_MPART_BOUNDARY_MAX) {
			*rc = bad(m, e, "a delimiter is followed by something other than a line end");
			return i;
		}
	}
	return n;
}

/* Parses the header block head[0..len) (lines without the final empty one) and starts
 * the part. */
static int part_headers(api_mpart_t *m, size_t len, sd_error_t *e)
{
	char *h = m->head;
	if (memchr(h, 0, len))
		return bad(m, e, "a part's headers hold a NUL byte");
	h[len] = 0;
	char name[API_MPART_NAME_MAX + 1], filename[API_MPART_NAME_MAX + 1];
	bool disposition = false, has_file = false;
	for (char *line = h; line && *line;) {
		char *end = strstr(line, "\r\n");
		if (end)
			*end = 0;
		char *colon = strchr(line, ':');
		if (!colon || colon == line)
			return bad(m, e, "a part has a header line without a name and ':'");
		*colon = 0;
		char *v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		if (!strcasecmp(line, "Content-Disposition")) {
			if (disposition)
				return bad(m, e, "a part has two Content-Disposition headers");
			disposition = true;
			if (strncasecmp(v, "form-data", 9) || (v[9] && v[9] != ';' && v[9] != ' '))
				return bad(m, e, "a part's Content-Disposition is not form-data");
			int rc = param(v, "name", name, sizeof(name));
			if (rc < 0)
				return bad(m, e, "a part's name is malformed or longer than 256 bytes");
			if (rc == 0 || !name[0])
				return bad(m, e, "a part has no name (Content-Disposition: form-data; "
						 "name=\"...\")");
			for (const char *c = name; *c; c++)
				if ((unsigned char)*c < 0x20 || *c == 0x7f)
					return bad(m, e, "a part's name holds a control character");
			rc = param(v, "filename", filename, sizeof(filename));
			if (rc < 0)
				return bad(m, e, "a part's filename is malformed or longer than 256 "
						 "bytes");
			has_file = rc == 1;
		}
		line = end ? end + 2 : NULL;
	}
	if (!disposition)
		return bad(m, e, "a part has no Content-Disposition header");
	int rc = m->cb.part_begin(m->ud, name, has_file ? filename : NULL, e);
	if (rc)
		return m->failed = rc;
	m->state = S_BODY;
	return 0;
}

/* Gathers a part's header block up to its empty line. */
static size_t scan_head(api_mpart_t *m, const char *p, size_t n, int *rc, sd_error_t *e)
{
	size_t old = m->head_len;
	size_t room = API_MPART_HEADERS_MAX - 1 - old;
	size_t k = n < room ? n : room;
	memcpy(m->head + old, p, k);
	m->head_len += k;
	if (m->head_len >= 2 && !memcmp(m->head, "\r\n", 2)) {
		*rc = bad(m, e, "a part has no headers (it needs Content-Disposition)");
		return 0;
	}
	size_t from = old >= 3 ? old - 3 : 0;
	const char *end = memmem(m->head + from, m->head_len - from, "\r\n\r\n", 4);
	if (!end) {
		if (m->head_len == API_MPART_HEADERS_MAX - 1)
			*rc = bad(m, e, "a part's headers are longer than 8192 bytes");
		return k;
	}
	size_t block = (size_t)(end - m->head);
	*rc = part_headers(m, block, e);
	return block + 4 - old;
}

int api_mpart_feed(api_mpart_t *m, const char *data, size_t n, sd_error_t *e)
{
	if (m->failed)
		return sd_err(e, m->failed, "bad multipart body");
	int rc = 0;
	while (n && !rc) {
		size_t used;
		switch (m->state) {
		case S_PREAMBLE:
		case S_BODY:
			used = scan_body(m, data, n, &rc, e);
			break;
		case S_LINE:
			used = scan_line(m, data, n, &rc, e);
			break;
		case S_HEAD:
			used = scan_head(m, data, n, &rc, e);
			break;
		default:
			return 0; /* the epilogue after the closing delimiter is ignored */
		}
		data += used;
		n -= used;
	}
	return rc;
}

int api_mpart_finish(api_mpart_t *m, sd_error_t *e)
{
	if (m->failed)
		return sd_err(e, m->failed, "bad multipart body");
	if (m->state != S_END)
		return bad(m, e, "the body ended before its closing boundary");
	return 0;
}
