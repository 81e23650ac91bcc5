/*
 * arena: bump allocator over a list of chunks (see arena.h).
 *
 * Design: chunks of 1 MiB serve small requests by bumping an offset; a request larger
 * than a quarter chunk gets a dedicated chunk, so one huge tensor does not leave most of
 * a standard chunk unused. Nothing is returned before arena_deinit() (free() through
 * protobuf-c's view, proto/pbarena.c, is a no-op). Memory is counted against the budget
 * when chunks are taken from malloc, which is what bounds the process.
 */
#include "common/arena.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_SIZE ((size_t)1 << 20)
#define ALIGN 16

struct arena_chunk {
	arena_chunk_t *next;
	size_t size;
	size_t off;
	_Alignas(ALIGN) unsigned char data[];
};

void arena_init(arena_t *a, size_t limit)
{
	a->head = NULL;
	a->used = 0;
	a->limit = limit;
}

void arena_deinit(arena_t *a)
{
	arena_chunk_t *c = a->head;
	while (c) {
		arena_chunk_t *n = c->next;
		free(c);
		c = n;
	}
	a->head = NULL;
	a->used = 0;
}

static arena_chunk_t *chunk_new(arena_t *a, size_t size)
{
	size_t total = sizeof(arena_chunk_t) + size;
	if (total < size || (a->limit && (a->used > a->limit || total > a->limit - a->used)))
		return NULL;
	arena_chunk_t *c = malloc(total);
	if (!c)
		return NULL;
	c->size = size;
	c->off = 0;
	a->used += total;
	return c;
}

void *arena_alloc(arena_t *a, size_t n)
{
	if (n > SIZE_MAX - ALIGN)
		return NULL;
	n = (n + ALIGN - 1) & ~(size_t)(ALIGN - 1);
	arena_chunk_t *c = a->head;
	if (c && c->size - c->off >= n) {
		void *p = c->data + c->off;
		c->off += n;
		return p;
	}
	if (n > CHUNK_SIZE / 4) {
		/* Dedicated chunk, linked behind the current one so its tail stays usable. */
		arena_chunk_t *big = chunk_new(a, n);
		if (!big)
			return NULL;
		big->off = n;
		if (c) {
			big->next = c->next;
			c->next = big;
		} else {
			big->next = NULL;
			a->head = big;
		}
		return big->data;
	}
	arena_chunk_t *fresh = chunk_new(a, CHUNK_SIZE);
	if (!fresh)
		return NULL;
	fresh->next = c;
	a->head = fresh;
	fresh->off = n;
	return fresh->data;
}

void *arena_calloc(arena_t *a, size_t n, size_t sz)
{
	if (sz && n > SIZE_MAX / sz)
		return NULL;
	void *p = arena_alloc(a, n * sz);
	if (p)
		memset(p, 0, n * sz);
	return p;
}

char *arena_strndup(arena_t *a, const char *s, size_t n)
{
	char *p = arena_alloc(a, n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

char *arena_strdup(arena_t *a, const char *s) { return arena_strndup(a, s, strlen(s)); }

char *arena_sprintf(arena_t *a, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	char *p = arena_alloc(a, (size_t)n + 1);
	if (!p)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return p;
}

void *arena_grow(arena_t *a, void *old, size_t old_n, size_t new_n, size_t sz)
{
	void *p = arena_calloc(a, new_n, sz);
	if (p && old && old_n)
		memcpy(p, old, (old_n < new_n ? old_n : new_n) * sz);
	return p;
}
