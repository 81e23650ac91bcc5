/*
 * arena: a per-job region allocator, freed as a whole.
 *
 * A stage allocates everything it builds (unpacked protobufs, new nodes, strings, index
 * tables) from one arena, so ownership is a single rule: it lives until arena_deinit().
 * The arena has a byte budget; an allocation that would exceed it fails (NULL) instead
 * of growing the process without bound, and the caller fails the job with SD_ENOMEM.
 * Large requests get a chunk of their own so small ones do not waste the tail.
 *
 * protobuf-c allocates from an arena through the view in proto/pbarena.h.
 *
 * Not thread-safe: one arena belongs to one thread at a time.
 */
#ifndef ARENA_H
#define ARENA_H

#include <stddef.h>

typedef struct arena_chunk arena_chunk_t;

typedef struct arena {
	arena_chunk_t *head;
	size_t used;   /* bytes handed out plus chunk overhead */
	size_t limit;  /* 0 = unlimited */
} arena_t;

/* Initialises an empty arena with a byte budget (0 = unlimited). Cannot fail. */
void arena_init(arena_t *a, size_t limit);

/* Frees every allocation made from a; a is empty and reusable afterwards. */
void arena_deinit(arena_t *a);

/* 16-byte aligned, uninitialised. NULL when out of memory or over budget. */
void *arena_alloc(arena_t *a, size_t n);

/* Zeroed array of n elements of size sz; NULL on overflow, OOM or over budget. */
void *arena_calloc(arena_t *a, size_t n, size_t sz);

/* Copy of s (NUL-terminated) / of the first n bytes of s plus a NUL. NULL on failure. */
char *arena_strdup(arena_t *a, const char *s);
char *arena_strndup(arena_t *a, const char *s, size_t n);

/* printf into the arena. NULL on failure. */
char *arena_sprintf(arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Grows an array allocated from a: returns a new array of new_n elements holding the
 * first old_n elements of old (the old block is simply abandoned to the arena).
 */
void *arena_grow(arena_t *a, void *old, size_t old_n, size_t new_n, size_t sz);

#endif
