/*
 * pbarena: protobuf-c's allocator view of an arena (see pbarena.h).
 *
 * protobuf-c may ask for zero bytes; the arena is asked for one instead, so every block
 * protobuf-c gets has an address of its own.
 */
#include "proto/pbarena.h"

static void *pbarena_alloc(void *ctx, size_t n) { return arena_alloc(ctx, n ? n : 1); }

static void pbarena_free(void *ctx, void *p)
{
	(void)ctx;
	(void)p;
}

ProtobufCAllocator pbarena_allocator(arena_t *a)
{
	return (ProtobufCAllocator){.alloc = pbarena_alloc, .free = pbarena_free,
				    .allocator_data = a};
}
