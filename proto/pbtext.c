/*
 * pbtext: protobuf text format reader and writer for any protobuf-c message.
 *
 * Purpose: the retrain config, the prune record and .pbtxt graphs are all protobuf text
 * format. Rather than one hand-written parser per schema, this codec walks the
 * protobuf-c descriptors, so every message type the daemon knows is readable and
 * writable, and the result is byte-for-byte what protoc produces once packed.
 *
 * Reader design: a one-token-lookahead lexer over a (pointer, length) buffer that is
 * never read past its end (the input is not NUL-terminated), and a recursive-descent
 * parser whose recursion is bounded by MAX_DEPTH message levels, so a hostile input
 * cannot exhaust the stack. Every token carries its 1-based line and column, so every
 * error is "file:line:col: message" pointing at the offending token.
 *
 * Workload: .pbtxt graphs of tens of megabytes, dominated by long repeated lists
 * (float_val), long escaped byte strings (tensor_content) and up to ~100k nodes. So:
 *  - repeated fields grow geometrically. protobuf-c keeps only the element count, so the
 *    capacity is implied: an array this parser allocated always has room for
 *    max(4, next power of two >= n) elements. That holds because only this parser ever
 *    appends to the arrays of a message it is building, and keeps appends O(1) amortised
 *    without a side table;
 *  - strings are decoded in two passes (measure, then write into an exact arena
 *    allocation), because the arena cannot give back the slack of a worst-case buffer;
 *  - field names are looked up by binary search on the descriptor's sorted-by-name index.
 *
 * Memory: everything the reader builds is allocated from the caller's arena; nothing is
 * freed on error (the arena is). Writer: buffered output to a FILE, descriptor (field
 * number) order, shortest round-tripping floats, checked for write errors at the end.
 *
 * Locale: numbers are converted with strtod/snprintf, which assume LC_NUMERIC "C"; the
 * daemon never calls setlocale(), so that holds.
 *
 * Glossary: "label NONE" is a proto3 singular field without presence (written only when
 * non-default); "quantifier" is protobuf-c's companion member of a field: the element
 * count of a repeated field, the has_ flag of a proto2 optional scalar, or the case
 * member of a oneof.
 */
#include "proto/pbtext.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/pbwire.h"

#define MAX_DEPTH 100
/* Longest number literal accepted; far beyond any float's significant digits. */
#define NUM_MAX 128

enum tok_kind { T_EOF, T_IDENT, T_NUMBER, T_STRING, T_SYM };

typedef struct tok {
	enum tok_kind kind;
	const char *s; /* first byte of the token in the input */
	size_t n;      /* length in bytes, including quotes for strings */
	int line;
	int col;
} tok_t;

/* Lexer position; small so that it can be saved and restored (string concatenation). */
typedef struct lexpos {
	const char *p;
	const char *line_start;
	int line;
} lexpos_t;

typedef struct parser {
	lexpos_t lx;
	tok_t tok; /* the lookahead token */
	const char *end;
	arena_t *a;
	sd_error_t *e;
	const char *file;
	int code;
	pbtext_field_cb cb;
	void *ud;
} parser_t;

/* ---------------------------------------------------------------- errors */

static int perr_at(parser_t *p, int code, int line, int col, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int perr_at(parser_t *p, int code, int line, int col, const char *fmt, ...)
{
	char body[SD_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(body, sizeof(body), fmt, ap);
	va_end(ap);
	return sd_err_at(p->e, code, p->file, line, col, "%s", body);
}

#define perr(p, t, ...) perr_at((p), (p)->code, (t)->line, (t)->col, __VA_ARGS__)

static int nomem(parser_t *p)
{
	return perr_at(p, SD_ENOMEM, p->tok.line, p->tok.col,
		       "out of memory (arena budget exhausted)");
}

/* Renders a token for "found X" in messages, shortened so a huge string stays readable. */
static const char *tok_desc(const tok_t *t, char *buf, size_t size)
{
	if (t->kind == T_EOF)
		return "end of input";
	/* A stray byte (binary data, a non-ASCII character) is named by value: printed raw
	 * it would make the message itself invalid UTF-8. */
	for (size_t i = 0; i < t->n && i < 40; i++)
		if ((unsigned char)t->s[i] < 0x20 || (unsigned char)t->s[i] >= 0x7f) {
			if (t->kind == T_STRING)
				break; /* strings are shown escaped elsewhere; their text is fine */
			snprintf(buf, size, "byte 0x%02x", (unsigned char)t->s[i]);
			return buf;
		}
	int n = t->n > 40 ? 40 : (int)t->n;
	snprintf(buf, size, "'%.*s%s'", n, t->s, t->n > 40 ? "..." : "");
	return buf;
}

/* ---------------------------------------------------------------- lexer */

static bool is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_digit(int c) { return c >= '0' && c <= '9'; }
static bool is_alnum(int c) { return is_alpha(c) || is_digit(c); }

static int hex_val(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Reads the next token into p->tok. Only an unterminated string fails here; what a
 * token means (a valid number, a valid escape) is checked where its field type is known.
 */
static int lex(parser_t *p)
{
	lexpos_t *l = &p->lx;
	const char *end = p->end;

	while (l->p < end) {
		char c = *l->p;
		if (c == '\n') {
			l->p++;
			l->line++;
			l->line_start = l->p;
		} else if (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
			l->p++;
		} else if (c == '#') {
			const char *nl = memchr(l->p, '\n', (size_t)(end - l->p));
			l->p = nl ? nl : end;
		} else {
			break;
		}
	}

	tok_t *t = &p->tok;
	t->s = l->p;
	t->line = l->line;
	t->col = (int)(l->p - l->line_start) + 1;
	if (l->p >= end) {
		t->kind = T_EOF;
		t->n = 0;
		return 0;
	}

	const char *s = l->p;
	char c = *s;
	if (is_alpha(c)) {
		while (s < end && is_alnum(*s))
			s++;
		t->kind = T_IDENT;
	} else if (is_digit(c) || (c == '.' && s + 1 < end && is_digit(s[1]))) {
		/*
		 * Take the whole run of number-ish characters so "12ab" is reported as one
		 * bad number rather than a number followed by a surprising identifier.
		 */
		bool hex = c == '0' && s + 1 < end && (s[1] == 'x' || s[1] == 'X');
		s++;
		while (s < end) {
			if (is_alnum(*s) || *s == '.')
				s++;
			else if ((*s == '+' || *s == '-') && !hex && (s[-1] == 'e' || s[-1] == 'E'))
				s++;
			else
				break;
		}
		t->kind = T_NUMBER;
	} else if (c == '"' || c == '\'') {
		s++;
		for (;;) {
			if (s >= end || *s == '\n')
				return perr(p, t, "unterminated string");
			if (*s == c) {
				s++;
				break;
			}
			if (*s == '\\') {
				s++;
				if (s >= end || *s == '\n')
					return perr(p, t, "unterminated string");
			}
			s++;
		}
		t->kind = T_STRING;
	} else {
		s++;
		t->kind = T_SYM;
	}
	t->n = (size_t)(s - l->p);
	l->p = s;
	return 0;
}

static bool is_sym(const parser_t *p, char c)
{
	return p->tok.kind == T_SYM && p->tok.s[0] == c;
}

/* ---------------------------------------------------------------- message layout */

static const char *type_name(ProtobufCType t)
{
	static const char *const names[] = {
		[PROTOBUF_C_TYPE_INT32] = "int32",     [PROTOBUF_C_TYPE_SINT32] = "sint32",
		[PROTOBUF_C_TYPE_SFIXED32] = "sfixed32", [PROTOBUF_C_TYPE_INT64] = "int64",
		[PROTOBUF_C_TYPE_SINT64] = "sint64",   [PROTOBUF_C_TYPE_SFIXED64] = "sfixed64",
		[PROTOBUF_C_TYPE_UINT32] = "uint32",   [PROTOBUF_C_TYPE_FIXED32] = "fixed32",
		[PROTOBUF_C_TYPE_UINT64] = "uint64",   [PROTOBUF_C_TYPE_FIXED64] = "fixed64",
		[PROTOBUF_C_TYPE_FLOAT] = "float",     [PROTOBUF_C_TYPE_DOUBLE] = "double",
		[PROTOBUF_C_TYPE_BOOL] = "bool",       [PROTOBUF_C_TYPE_ENUM] = "enum",
		[PROTOBUF_C_TYPE_STRING] = "string",   [PROTOBUF_C_TYPE_BYTES] = "bytes",
		[PROTOBUF_C_TYPE_MESSAGE] = "message",
	};
	return (unsigned)t < sizeof(names) / sizeof(names[0]) && names[t] ? names[t] : "?";
}

#define MEMBER(msg, off) ((void *)((char *)(msg) + (off)))

static ProtobufCMessage *new_message(parser_t *p, const ProtobufCMessageDescriptor *d)
{
	void *mem = arena_alloc(p->a, d->sizeof_message);
	if (!mem)
		return NULL;
	protobuf_c_message_init(d, mem);
	return mem;
}

/*
 * Makes f the active member of its oneof. Members share one union, so switching members
 * zeroes the whole union (every member's extent) before the new value goes in.
 */
static void oneof_select(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	uint32_t *which = MEMBER(msg, f->quantifier_offset);
	if (*which == f->id)
		return;
	const ProtobufCMessageDescriptor *d = msg->descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *g = &d->fields[i];
		if ((g->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
		    g->quantifier_offset == f->quantifier_offset)
			memset(MEMBER(msg, g->offset), 0, pbwire_elem_size(g->type));
	}
	*which = f->id;
}

/*
 * Appends one zeroed element to repeated field f and returns it. Growth doubles at
 * powers of two (see the file comment for why the capacity needs no storage).
 */
static void *repeated_append(parser_t *p, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	size_t *np = MEMBER(msg, f->quantifier_offset);
	void **arr = MEMBER(msg, f->offset);
	size_t n = *np, sz = pbwire_elem_size(f->type);
	if (n == 0 || (n >= 4 && (n & (n - 1)) == 0)) {
		size_t cap = n < 4 ? 4 : n * 2;
		void *grown = arena_grow(p->a, *arr, n, cap, sz);
		if (!grown)
			return NULL;
		*arr = grown;
	}
	*np = n + 1;
	return (char *)*arr + n * sz;
}

/*
 * Where the next value of f goes: a new element for a repeated field, otherwise the
 * member itself, with presence recorded (has_ flag or oneof case) as protobuf-c expects.
 */
static void *value_slot(parser_t *p, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return repeated_append(p, msg, f);
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		oneof_select(msg, f);
	} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
		   f->type != PROTOBUF_C_TYPE_MESSAGE) {
		/* proto2 optional scalars (and proto3 `optional`) carry a has_ flag. */
		*(protobuf_c_boolean *)MEMBER(msg, f->quantifier_offset) = 1;
	}
	return MEMBER(msg, f->offset);
}

/* ---------------------------------------------------------------- scalar values */

typedef enum { NUM_OK, NUM_BAD, NUM_RANGE } numres_t;

/* Parses an unsigned integer literal: 0x hex, leading-0 octal, or decimal. */
static numres_t scan_uint(const char *s, size_t n, uint64_t *out)
{
	unsigned base = 10;
	size_t i = 0;
	if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		i = 2;
		if (n == 2)
			return NUM_BAD;
	} else if (n >= 2 && s[0] == '0') {
		base = 8;
		i = 1;
	}
	uint64_t v = 0;
	bool range = false;
	for (; i < n; i++) {
		int d = hex_val((unsigned char)s[i]);
		if (d < 0 || (unsigned)d >= base)
			return NUM_BAD;
		if (v > (UINT64_MAX - (unsigned)d) / base)
			range = true;
		else
			v = v * base + (unsigned)d;
	}
	*out = v;
	return range ? NUM_RANGE : NUM_OK;
}

/*
 * Reads an optionally negative integer for field f into *out (as the two's-complement
 * bit pattern for signed types), checking the range of the field's type.
 */
static int parse_int(parser_t *p, const ProtobufCFieldDescriptor *f, ProtobufCType t,
		     uint64_t *out)
{
	tok_t start = p->tok;
	bool neg = false;
	char tb[64];
	if (is_sym(p, '-')) {
		neg = true;
		int rc = lex(p);
		if (rc)
			return rc;
	}
	const tok_t *num = &p->tok;
	if (num->kind != T_NUMBER)
		return perr(p, num, "expected integer value for field '%s', found %s", f->name,
			    tok_desc(num, tb, sizeof(tb)));
	uint64_t v;
	numres_t r = scan_uint(num->s, num->n, &v);
	if (r == NUM_BAD)
		return perr(p, num, "invalid integer %s for field '%s'",
			    tok_desc(num, tb, sizeof(tb)), f->name);

	bool is_unsigned = t == PROTOBUF_C_TYPE_UINT32 || t == PROTOBUF_C_TYPE_FIXED32 ||
			   t == PROTOBUF_C_TYPE_UINT64 || t == PROTOBUF_C_TYPE_FIXED64;
	bool wide = pbwire_elem_size(t) == 8;
	if (neg && is_unsigned)
		return perr(p, &start, "negative value '-%.*s' for %s field '%s'",
			    num->n > 40 ? 40 : (int)num->n, num->s, type_name(t), f->name);
	uint64_t max;
	if (is_unsigned)
		max = wide ? UINT64_MAX : UINT32_MAX;
	else if (neg)
		max = wide ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT32_MAX + 1;
	else
		max = wide ? INT64_MAX : INT32_MAX;
	if (r == NUM_RANGE || v > max)
		return perr(p, &start, "value '%s%.*s' out of range for %s field '%s'",
			    neg ? "-" : "", num->n > 40 ? 40 : (int)num->n, num->s, type_name(t),
			    f->name);
	*out = neg ? (uint64_t)0 - v : v;
	return lex(p);
}

static bool ident_is(const tok_t *t, const char *w)
{
	return t->n == strlen(w) && strncasecmp(t->s, w, t->n) == 0;
}

/* Reads a float/double value: a number, inf/infinity/nan (any case), optionally negative. */
static int parse_real(parser_t *p, const ProtobufCFieldDescriptor *f, double *out)
{
	bool neg = false;
	char tb[64];
	if (is_sym(p, '-')) {
		neg = true;
		int rc = lex(p);
		if (rc)
			return rc;
	}
	const tok_t *t = &p->tok;
	double v;
	if (t->kind == T_IDENT) {
		if (ident_is(t, "inf") || ident_is(t, "infinity"))
			v = INFINITY;
		else if (ident_is(t, "nan"))
			v = NAN;
		else
			return perr(p, t, "invalid %s value %s for field '%s'", type_name(f->type),
				    tok_desc(t, tb, sizeof(tb)), f->name);
	} else if (t->kind == T_NUMBER) {
		const char *s = t->s;
		size_t n = t->n;
		uint64_t u;
		bool hex = n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
		bool octal = n >= 2 && s[0] == '0' && !hex;
		for (size_t i = 1; octal && i < n; i++)
			octal = s[i] >= '0' && s[i] <= '7';
		if (hex || octal) {
			/* Integer literals are accepted for floats, with integer radix rules. */
			if (scan_uint(s, n, &u) != NUM_OK)
				return perr(p, t, "invalid number %s for field '%s'",
					    tok_desc(t, tb, sizeof(tb)), f->name);
			v = (double)u;
		} else {
			char buf[NUM_MAX];
			if (n > 1 && (s[n - 1] == 'f' || s[n - 1] == 'F'))
				n--; /* C-style float suffix, as protoc accepts */
			char *endp = NULL;
			if (n < sizeof(buf)) {
				memcpy(buf, s, n);
				buf[n] = 0;
				v = strtod(buf, &endp);
			}
			if (n >= sizeof(buf) || endp != buf + n)
				return perr(p, t, "invalid number %s for field '%s'",
					    tok_desc(t, tb, sizeof(tb)), f->name);
		}
	} else {
		return perr(p, t, "expected %s value for field '%s', found %s",
			    type_name(f->type), f->name, tok_desc(t, tb, sizeof(tb)));
	}
	*out = neg ? -v : v;
	return lex(p);
}

static int parse_bool(parser_t *p, const ProtobufCFieldDescriptor *f, protobuf_c_boolean *out)
{
	const tok_t *t = &p->tok;
	char tb[64];
	int v = -1;
	if (t->kind == T_IDENT) {
		if ((t->n == 4 && (!memcmp(t->s, "true", 4) || !memcmp(t->s, "True", 4))) ||
		    (t->n == 1 && t->s[0] == 't'))
			v = 1;
		else if ((t->n == 5 && (!memcmp(t->s, "false", 5) || !memcmp(t->s, "False", 5))) ||
			 (t->n == 1 && t->s[0] == 'f'))
			v = 0;
	} else if (t->kind == T_NUMBER && t->n == 1 && (t->s[0] == '0' || t->s[0] == '1')) {
		v = t->s[0] == '1';
	}
	if (v < 0)
		return perr(p, t, "invalid bool value %s for field '%s'",
			    tok_desc(t, tb, sizeof(tb)), f->name);
	*out = v;
	return lex(p);
}

static int parse_enum(parser_t *p, const ProtobufCFieldDescriptor *f, int *out)
{
	const ProtobufCEnumDescriptor *ed = f->descriptor;
	const tok_t *t = &p->tok;
	char tb[64];
	if (t->kind == T_IDENT) {
		char name[256];
		const ProtobufCEnumValue *ev = NULL;
		if (t->n < sizeof(name)) {
			memcpy(name, t->s, t->n);
			name[t->n] = 0;
			ev = protobuf_c_enum_descriptor_get_value_by_name(ed, name);
		}
		if (!ev)
			return perr(p, t, "unknown enum value %s for field '%s'",
				    tok_desc(t, tb, sizeof(tb)), f->name);
		*out = ev->value;
		return lex(p);
	}
	if (t->kind != T_NUMBER && !is_sym(p, '-'))
		return perr(p, t, "expected enum value for field '%s', found %s", f->name,
			    tok_desc(t, tb, sizeof(tb)));
	tok_t start = *t;
	uint64_t u = 0;
	int rc = parse_int(p, f, PROTOBUF_C_TYPE_INT32, &u);
	if (rc)
		return rc;
	int v = (int)(int32_t)u;
	if (!protobuf_c_enum_descriptor_get_value(ed, v))
		return perr(p, &start, "unknown enum value '%d' for field '%s'", v, f->name);
	*out = v;
	return 0;
}

static void put_utf8(char *out, size_t *k, uint32_t cp)
{
	char b[4];
	size_t n;
	if (cp < 0x80) {
		b[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		b[0] = (char)(0xC0 | (cp >> 6));
		b[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		b[0] = (char)(0xE0 | (cp >> 12));
		b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		b[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		b[0] = (char)(0xF0 | (cp >> 18));
		b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		b[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	if (out)
		memcpy(out + *k, b, n);
	*k += n;
}

/* Reads exactly n hex digits at s (bounded by end); -1 if they are not all there. */
static int64_t hex_n(const char *s, const char *end, int n)
{
	if (end - s < n)
		return -1;
	int64_t v = 0;
	for (int i = 0; i < n; i++) {
		int d = hex_val((unsigned char)s[i]);
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/*
 * Decodes the escapes of one string token. With out == NULL it only validates and
 * measures; otherwise it writes the bytes. Decoded text is never longer than the token,
 * which bounds the arena use of pass two.
 */
static int unescape(parser_t *p, const tok_t *t, char *out, size_t *len)
{
	const char *s = t->s + 1, *end = t->s + t->n - 1;
	size_t k = 0;
	while (s < end) {
		const char *bs = memchr(s, '\\', (size_t)(end - s));
		const char *run_end = bs ? bs : end;
		if (out)
			memcpy(out + k, s, (size_t)(run_end - s));
		k += (size_t)(run_end - s);
		if (!bs)
			break;
		s = bs + 1; /* the lexer guarantees a character follows a backslash */
		int col = t->col + (int)(bs - t->s);
		char c = *s++;
		int v;
		switch (c) {
		case 'n': v = '\n'; break;
		case 'r': v = '\r'; break;
		case 't': v = '\t'; break;
		case 'a': v = '\a'; break;
		case 'b': v = '\b'; break;
		case 'f': v = '\f'; break;
		case 'v': v = '\v'; break;
		case '\\': v = '\\'; break;
		case '\'': v = '\''; break;
		case '"': v = '"'; break;
		case '?': v = '?'; break;
		case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7':
			v = c - '0';
			for (int i = 0; i < 2 && s < end && *s >= '0' && *s <= '7'; i++)
				v = v * 8 + (*s++ - '0');
			if (v > 0xFF)
				return perr_at(p, p->code, t->line, col,
					       "octal escape out of range in string");
			break;
		case 'x':
		case 'X':
			if (s >= end || hex_val((unsigned char)*s) < 0)
				return perr_at(p, p->code, t->line, col,
					       "invalid escape sequence '\\%c' in string", c);
			v = hex_val((unsigned char)*s++);
			if (s < end && hex_val((unsigned char)*s) >= 0)
				v = v * 16 + hex_val((unsigned char)*s++);
			break;
		case 'u':
		case 'U': {
			int nd = c == 'u' ? 4 : 8;
			int64_t cp = hex_n(s, end, nd);
			if (cp < 0)
				return perr_at(p, p->code, t->line, col,
					       "invalid escape sequence '\\%c' in string", c);
			s += nd;
			if (cp >= 0xD800 && cp <= 0xDBFF && end - s >= 6 && s[0] == '\\' &&
			    s[1] == 'u') {
				/* A UTF-16 surrogate pair spelled as two \u escapes. */
				int64_t lo = hex_n(s + 2, end, 4);
				if (lo >= 0xDC00 && lo <= 0xDFFF) {
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					s += 6;
				}
			}
			if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
				return perr_at(p, p->code, t->line, col,
					       "invalid unicode code point in string");
			put_utf8(out, &k, (uint32_t)cp);
			continue;
		}
		default:
			if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7F)
				return perr_at(p, p->code, t->line, col,
					       "invalid escape sequence '\\%c' in string", c);
			return perr_at(p, p->code, t->line, col, "invalid escape sequence in string");
		}
		if (out)
			out[k] = (char)v;
		k++;
	}
	*len = k;
	return 0;
}

/*
 * Reads one or more adjacent string tokens as one value: a pass to validate and measure,
 * then a rewind of the lexer and a pass that decodes into an exact-size arena block.
 */
static int parse_string(parser_t *p, const ProtobufCFieldDescriptor *f, char **data, size_t *len)
{
	char tb[64];
	if (p->tok.kind != T_STRING)
		return perr(p, &p->tok, "expected string value for field '%s', found %s", f->name,
			    tok_desc(&p->tok, tb, sizeof(tb)));
	lexpos_t save = p->lx;
	tok_t first = p->tok;
	size_t total = 0, k = 0;
	int rc;
	while (p->tok.kind == T_STRING) {
		if ((rc = unescape(p, &p->tok, NULL, &k)))
			return rc;
		total += k;
		if ((rc = lex(p)))
			return rc;
	}
	char *buf = arena_alloc(p->a, total + 1);
	if (!buf)
		return nomem(p);
	p->lx = save;
	p->tok = first;
	size_t off = 0;
	while (p->tok.kind == T_STRING) {
		if ((rc = unescape(p, &p->tok, buf + off, &k)))
			return rc;
		off += k;
		if ((rc = lex(p)))
			return rc;
	}
	buf[total] = 0;
	/* protobuf-c measures strings with strlen: a NUL would silently truncate the value. */
	if (f->type == PROTOBUF_C_TYPE_STRING && memchr(buf, 0, total))
		return perr(p, &first, "NUL byte in string field '%s' (only bytes fields may hold one)",
			    f->name);
	*data = buf;
	*len = total;
	return 0;
}

/* Reads one scalar value of field f and stores it. */
static int parse_scalar(parser_t *p, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
	/* Convert first, store second: a failed value must not leave a half-set field. */
	union {
		uint64_t u;
		double d;
		protobuf_c_boolean b;
		int e;
		struct {
			char *s;
			size_t n;
		} str;
	} v;
	int rc;
	switch (f->type) {
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_DOUBLE:
		rc = parse_real(p, f, &v.d);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		rc = parse_bool(p, f, &v.b);
		break;
	case PROTOBUF_C_TYPE_ENUM:
		rc = parse_enum(p, f, &v.e);
		break;
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_BYTES:
		rc = parse_string(p, f, &v.str.s, &v.str.n);
		break;
	case PROTOBUF_C_TYPE_MESSAGE:
		return perr(p, &p->tok, "internal: message field '%s' read as scalar", f->name);
	default:
		rc = parse_int(p, f, f->type, &v.u);
		break;
	}
	if (rc)
		return rc;

	void *slot = value_slot(p, msg, f);
	if (!slot)
		return nomem(p);
	switch (f->type) {
	case PROTOBUF_C_TYPE_FLOAT:
		*(float *)slot = (float)v.d; /* as protoc: parse as double, then narrow */
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		*(double *)slot = v.d;
		break;
	case PROTOBUF_C_TYPE_BOOL:
		*(protobuf_c_boolean *)slot = v.b;
		break;
	case PROTOBUF_C_TYPE_ENUM:
		*(int *)slot = v.e;
		break;
	case PROTOBUF_C_TYPE_STRING:
		*(char **)slot = v.str.s;
		break;
	case PROTOBUF_C_TYPE_BYTES:
		((ProtobufCBinaryData *)slot)->data = (uint8_t *)v.str.s;
		((ProtobufCBinaryData *)slot)->len = v.str.n;
		break;
	default:
		if (pbwire_elem_size(f->type) == 8)
			*(uint64_t *)slot = v.u;
		else
			*(uint32_t *)slot = (uint32_t)v.u;
		break;
	}
	return 0;
}

/* ---------------------------------------------------------------- messages */

static int parse_body(parser_t *p, const ProtobufCMessageDescriptor *d, ProtobufCMessage *msg,
		      int depth, char close, const tok_t *open, const char *name);

/*
 * The message that a `{...}` for field f fills: a new element of a repeated field, the
 * existing message of a singular field (text format merges a repeated singular message),
 * or a fresh one (replacing another member of the same oneof).
 */
static ProtobufCMessage *sub_message(parser_t *p, ProtobufCMessage *msg,
				     const ProtobufCFieldDescriptor *f)
{
	ProtobufCMessage **slot;
	if (f->label == PROTOBUF_C_LABEL_REPEATED) {
		slot = repeated_append(p, msg, f);
		if (!slot)
			return NULL;
	} else {
		slot = MEMBER(msg, f->offset);
		bool same = !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
			    *(uint32_t *)MEMBER(msg, f->quantifier_offset) == f->id;
		if (same && *slot)
			return *slot;
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
			oneof_select(msg, f);
	}
	*slot = new_message(p, f->descriptor);
	return *slot;
}

/* Reads `{ ... }` or `< ... >` for message field f; p->tok is the opening delimiter. */
static int parse_message_value(parser_t *p, ProtobufCMessage *msg,
			       const ProtobufCFieldDescriptor *f, int depth)
{
	if (depth >= MAX_DEPTH)
		return perr(p, &p->tok, "message nesting deeper than %d levels", MAX_DEPTH);
	tok_t open = p->tok;
	char close = is_sym(p, '{') ? '}' : '>';
	ProtobufCMessage *sub = sub_message(p, msg, f);
	if (!sub)
		return nomem(p);
	int rc = lex(p);
	if (rc)
		return rc;
	return parse_body(p, f->descriptor, sub, depth + 1, close, &open, f->name);
}

static bool at_open(const parser_t *p) { return is_sym(p, '{') || is_sym(p, '<'); }

/* Reads what follows a field name: the value, a list of values, or a message. */
static int parse_field(parser_t *p, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
		       int depth)
{
	char tb[64];
	bool repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
	bool is_msg = f->type == PROTOBUF_C_TYPE_MESSAGE;
	int rc;

	if (!is_msg && at_open(p))
		return perr(p, &p->tok, "field '%s' is a %s, not a message", f->name,
			    type_name(f->type));
	if (is_sym(p, ':')) {
		if ((rc = lex(p)))
			return rc;
	} else if (!is_msg) {
		return perr(p, &p->tok, "expected ':' after field '%s', found %s", f->name,
			    tok_desc(&p->tok, tb, sizeof(tb)));
	}
	if (!is_msg && at_open(p))
		return perr(p, &p->tok, "field '%s' is a %s, not a message", f->name,
			    type_name(f->type));

	if (!is_sym(p, '[')) {
		if (!is_msg)
			return parse_scalar(p, msg, f);
		if (!at_open(p))
			return perr(p, &p->tok, "expected '{' to open message field '%s', found %s",
				    f->name, tok_desc(&p->tok, tb, sizeof(tb)));
		return parse_message_value(p, msg, f, depth);
	}

	if (!repeated)
		return perr(p, &p->tok, "field '%s' is not repeated; '[' list not allowed",
			    f->name);
	if ((rc = lex(p)))
		return rc;
	if (is_sym(p, ']'))
		return lex(p);
	for (;;) {
		if (is_msg) {
			if (!at_open(p))
				return perr(p, &p->tok,
					    "expected '{' to open message field '%s', found %s",
					    f->name, tok_desc(&p->tok, tb, sizeof(tb)));
			rc = parse_message_value(p, msg, f, depth);
		} else {
			rc = parse_scalar(p, msg, f);
		}
		if (rc)
			return rc;
		if (is_sym(p, ']'))
			return lex(p);
		if (!is_sym(p, ','))
			return perr(p, &p->tok, "expected ',' or ']' in list for field '%s', found %s",
				    f->name, tok_desc(&p->tok, tb, sizeof(tb)));
		if ((rc = lex(p)))
			return rc;
	}
}

/* Binary search of the descriptor's by-name index, on the unterminated token text. */
static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d,
						  const char *s, size_t n)
{
	unsigned lo = 0, hi = d->n_fields;
	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		const ProtobufCFieldDescriptor *f = &d->fields[d->fields_sorted_by_name[mid]];
		size_t m = strlen(f->name);
		int c = memcmp(s, f->name, n < m ? n : m);
		if (c == 0)
			c = (n > m) - (n < m);
		if (c == 0)
			return f;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/*
 * Reads fields until `close` (0 at top level: until end of input). `open` and `name`
 * describe the opening delimiter for the missing-close message.
 */
static int parse_body(parser_t *p, const ProtobufCMessageDescriptor *d, ProtobufCMessage *msg,
		      int depth, char close, const tok_t *open, const char *name)
{
	char tb[64];
	int rc;
	for (;;) {
		const tok_t *t = &p->tok;
		if (t->kind == T_EOF) {
			if (!close)
				return 0;
			return perr(p, t, "missing '%c' to close '%s' opened at %d:%d", close, name,
				    open->line, open->col);
		}
		if (t->kind == T_SYM && close && t->s[0] == close)
			return lex(p);
		if (t->kind == T_SYM && t->s[0] == '[')
			return perr(p, t, "extension and Any syntax '[...]' is not supported");
		if (t->kind != T_IDENT) {
			if (close && (is_sym(p, '}') || is_sym(p, '>')))
				return perr(p, t, "expected '%c' to close '%s' opened at %d:%d, found %s",
					    close, name, open->line, open->col,
					    tok_desc(t, tb, sizeof(tb)));
			return perr(p, t, "expected field name, found %s",
				    tok_desc(t, tb, sizeof(tb)));
		}
		const ProtobufCFieldDescriptor *f = find_field(d, t->s, t->n);
		if (!f)
			return perr(p, t, "unknown field '%.*s' in %s",
				    t->n > 100 ? 100 : (int)t->n, t->s, d->name);
		if (p->cb) {
			const char *veto = p->cb(p->ud, msg, f, t->line, t->col);
			if (veto)
				return perr(p, t, "%s", veto);
		}
		if ((rc = lex(p)))
			return rc;
		if ((rc = parse_field(p, msg, f, depth)))
			return rc;
		if (is_sym(p, ',') || is_sym(p, ';'))
			if ((rc = lex(p)))
				return rc;
	}
}

int pbtext_parse(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
		 arena_t *a, const pbtext_opts_t *opts, ProtobufCMessage **out, sd_error_t *e)
{
	parser_t p = {
		.lx = {.p = text, .line_start = text, .line = 1},
		.end = text + len,
		.a = a,
		.e = e,
		.file = opts && opts->filename ? opts->filename : "<input>",
		.code = opts && opts->err_code ? opts->err_code : SD_EMODEL,
		.cb = opts ? opts->field_cb : NULL,
		.ud = opts ? opts->field_ud : NULL,
	};
	*out = NULL;
	if (!text)
		p.end = p.lx.p = p.lx.line_start = "";
	/* Editors on some systems open a UTF-8 file with a byte order mark; it is not text. */
	if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3))
		p.lx.p = p.lx.line_start = text + 3;
	int rc = lex(&p);
	if (rc)
		return rc;
	ProtobufCMessage *msg = new_message(&p, desc);
	if (!msg)
		return nomem(&p);
	if ((rc = parse_body(&p, desc, msg, 0, 0, NULL, desc->name)))
		return rc;
	*out = msg;
	return 0;
}

/* ---------------------------------------------------------------- writer */

/* Output is staged in a local buffer: tensor_content is mostly 4-byte octal escapes. */
typedef struct writer {
	FILE *f;
	size_t n;
	char buf[16384];
} writer_t;

static void w_flush(writer_t *w)
{
	if (w->n) {
		fwrite(w->buf, 1, w->n, w->f);
		w->n = 0;
	}
}

static void w_put(writer_t *w, const char *s, size_t n)
{
	if (n > sizeof(w->buf) - w->n) {
		w_flush(w);
		if (n > sizeof(w->buf)) {
			fwrite(s, 1, n, w->f);
			return;
		}
	}
	memcpy(w->buf + w->n, s, n);
	w->n += n;
}

static void w_str(writer_t *w, const char *s) { w_put(w, s, strlen(s)); }

static void w_indent(writer_t *w, int depth)
{
	static const char spaces[] = "                                ";
	size_t n = (size_t)depth * 2;
	while (n) {
		size_t k = n < sizeof(spaces) - 1 ? n : sizeof(spaces) - 1;
		w_put(w, spaces, k);
		n -= k;
	}
}

/* C-escapes bytes as protobuf's CEscape does, so protoc reads back the same bytes. */
static void w_escaped(writer_t *w, const uint8_t *s, size_t n)
{
	w_put(w, "\"", 1);
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		const char *esc = NULL;
		char oct[5];
		switch (c) {
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		case '"': esc = "\\\""; break;
		case '\'': esc = "\\'"; break;
		case '\\': esc = "\\\\"; break;
		default:
			if (c < 0x20 || c >= 0x7F) {
				oct[0] = '\\';
				oct[1] = (char)('0' + (c >> 6));
				oct[2] = (char)('0' + ((c >> 3) & 7));
				oct[3] = (char)('0' + (c & 7));
				oct[4] = 0;
				esc = oct;
			}
		}
		if (!esc) {
			run++;
			continue;
		}
		w_put(w, (const char *)s + i - run, run);
		run = 0;
		w_str(w, esc);
	}
	w_put(w, (const char *)s + n - run, run);
	w_put(w, "\"", 1);
}

/*
 * Shortest "%.Ng" (N from 6, as protobuf's SimpleFtoa) that reads back to the same bits,
 * both through strtof and through strtod-then-narrow (what our reader does).
 */
static void fmt_float(char *buf, size_t size, float v)
{
	if (isnan(v)) {
		snprintf(buf, size, "nan");
		return;
	}
	if (isinf(v)) {
		snprintf(buf, size, v < 0 ? "-inf" : "inf");
		return;
	}
	for (int prec = 6; prec <= 9; prec++) {
		snprintf(buf, size, "%.*g", prec, (double)v);
		float a = strtof(buf, NULL), b = (float)strtod(buf, NULL);
		if (!memcmp(&a, &v, sizeof(v)) && !memcmp(&b, &v, sizeof(v)))
			return;
	}
}

static void fmt_double(char *buf, size_t size, double v)
{
	if (isnan(v)) {
		snprintf(buf, size, "nan");
		return;
	}
	if (isinf(v)) {
		snprintf(buf, size, v < 0 ? "-inf" : "inf");
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, size, "%.*g", prec, v);
		double a = strtod(buf, NULL);
		if (!memcmp(&a, &v, sizeof(v)))
			return;
	}
}

static void write_message(writer_t *w, const ProtobufCMessage *msg, int depth);

/* Writes one `name: value` line, or one `name { ... }` block, for the value at ptr. */
static void write_value(writer_t *w, const ProtobufCFieldDescriptor *f, const void *ptr,
			int depth)
{
	char num[64];
	w_indent(w, depth);
	w_str(w, f->name);
	if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
		w_put(w, " {\n", 3);
		const ProtobufCMessage *sub = *(ProtobufCMessage *const *)ptr;
		if (sub)
			write_message(w, sub, depth + 1);
		w_indent(w, depth);
		w_put(w, "}\n", 2);
		return;
	}
	w_put(w, ": ", 2);
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		snprintf(num, sizeof(num), "%" PRId32, *(const int32_t *)ptr);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		snprintf(num, sizeof(num), "%" PRIu32, *(const uint32_t *)ptr);
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		snprintf(num, sizeof(num), "%" PRId64, *(const int64_t *)ptr);
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		snprintf(num, sizeof(num), "%" PRIu64, *(const uint64_t *)ptr);
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		fmt_float(num, sizeof(num), *(const float *)ptr);
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		fmt_double(num, sizeof(num), *(const double *)ptr);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		snprintf(num, sizeof(num), "%s",
			 *(const protobuf_c_boolean *)ptr ? "true" : "false");
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		int v = *(const int *)ptr;
		const ProtobufCEnumValue *ev =
			protobuf_c_enum_descriptor_get_value(f->descriptor, v);
		if (ev)
			snprintf(num, sizeof(num), "%s", ev->name);
		else
			snprintf(num, sizeof(num), "%d", v);
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(const char *const *)ptr;
		w_escaped(w, (const uint8_t *)(s ? s : ""), s ? strlen(s) : 0);
		w_put(w, "\n", 1);
		return;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *b = ptr;
		w_escaped(w, b->data ? b->data : (const uint8_t *)"", b->data ? b->len : 0);
		w_put(w, "\n", 1);
		return;
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		break; /* handled above */
	}
	w_str(w, num);
	w_put(w, "\n", 1);
}

static void write_message(writer_t *w, const ProtobufCMessage *msg, int depth)
{
	const ProtobufCMessageDescriptor *d = msg->descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const void *ptr = (const char *)msg + f->offset;
		const void *q = (const char *)msg + f->quantifier_offset;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)q, sz = pbwire_elem_size(f->type);
			const char *arr = *(const char *const *)ptr;
			for (size_t j = 0; j < n; j++)
				write_value(w, f, arr + j * sz, depth);
			continue;
		}
		if (pbwire_present(msg, f))
			write_value(w, f, ptr, depth);
	}
}

int pbtext_write(const ProtobufCMessage *msg, FILE *f, sd_error_t *e)
{
	writer_t *w = malloc(sizeof(*w));
	if (!w)
		return sd_err(e, SD_ENOMEM, "out of memory writing text format");
	w->f = f;
	w->n = 0;
	write_message(w, msg, 0);
	w_flush(w);
	free(w);
	/* Buffered errors (a full disk) only surface on flush, so flush before judging. */
	if (fflush(f) != 0 || ferror(f))
		return sd_err(e, SD_EIO, "writing text format: %s",
			      errno ? strerror(errno) : "write error");
	return 0;
}
