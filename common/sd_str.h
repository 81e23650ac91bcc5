/*
 * sd_str: growing a malloc'd text buffer (metrics pages, reports).
 */
#ifndef SD_STR_H
#define SD_STR_H

#include <stddef.h>

/*
 * Appends printf output to *buf (malloc'd or NULL; *len bytes used, kept
 * NUL-terminated). On allocation failure the buffer is left as it was: a page missing
 * its tail beats a crash, and the caller sees the shorter *len.
 */
void sd_appendf(char **buf, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
