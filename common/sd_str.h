/*
 * sd_str: growing a malloc'd text buffer (metrics pages, reports), UTF-8 checks for
 * text that came from a client or a model and will be shown as JSON, the one hex
 * encoder (digests, tokens, escaped bytes), and sorted string keys for long lists of
 * names (a config's, a record's).
 */
#ifndef SD_STR_H
#define SD_STR_H

#include <stdbool.h>
#include <stddef.h>

#include "common/sd_err.h"

/*
 * Appends printf output to *buf (malloc'd or NULL; *len bytes used, kept
 * NUL-terminated). On allocation failure the buffer is left as it was: a page missing
 * its tail beats a crash, and the caller sees the shorter *len.
 */
void sd_appendf(char **buf, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The one boolean syntax of settings and form fields: true/1/yes or false/0/no.
 * Returns 0, or SD_EUSAGE ("must be true or false"). */
int sd_bool_parse(const char *s, bool *out, sd_error_t *e);

/*
 * Writes the 2n lowercase hex digits of the n bytes at p to out, then a NUL: out needs
 * 2n + 1 bytes. Cannot fail; any thread.
 */
void sd_hex(const void *p, size_t n, char *out);

/* Whether s[0..n) is well-formed UTF-8 (no overlong forms, surrogates or code points
 * past U+10FFFF). A NUL byte is valid UTF-8; callers that refuse it check it apart. */
bool sd_utf8_valid(const char *s, size_t n);

/*
 * A malloc'd copy of the C string s in which every byte that is not part of well-formed
 * UTF-8 is written as the four characters \xNN, so text from a model or a client can be
 * shown (as JSON) without losing or hiding what was there. NULL on ENOMEM.
 */
char *sd_utf8_escape(const char *s);

/*
 * A list's strings sorted once, to find repeats and look names up without comparing each
 * with every other (lists of hundreds of thousands of names cost minutes that way).
 * Each key is a string and its index in the list; sd_strkeys_sort orders them by string,
 * equal strings in list order. The strings are referenced, not copied.
 */
typedef struct sd_strkey {
	const char *s;
	size_t i;
} sd_strkey_t;

void sd_strkeys_sort(sd_strkey_t *k, size_t n);

/* Of sorted keys: the smallest list index whose string an element earlier in the list
 * has too (SIZE_MAX: none), and in *earlier (may be NULL) that earlier element's index. */
size_t sd_strkeys_first_repeat(const sd_strkey_t *k, size_t n, size_t *earlier);

/* Of sorted keys: the position of the first key holding s, or n. */
size_t sd_strkeys_find(const sd_strkey_t *k, size_t n, const char *s);

/* Of sorted keys: the run [*lo, *hi) whose strings begin with prefix[0..len). */
void sd_strkeys_prefixed(const sd_strkey_t *k, size_t n, const char *prefix, size_t len,
			 size_t *lo, size_t *hi);

#endif
