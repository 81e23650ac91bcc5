/*
 * pbarena: protobuf-c's allocator view of an arena.
 *
 * protobuf-c's unpack functions allocate every message, array and string they build
 * through a ProtobufCAllocator. Handing them one that allocates from the stage's arena
 * keeps the arena's one ownership rule for unpacked models too: everything lives until
 * arena_deinit(), and a model larger than the arena's budget fails the unpack (NULL)
 * instead of growing the process. The view lives here, not in common/arena, so that
 * common/ does not depend on protobuf-c.
 *
 * Thread safety: as the arena's (one thread at a time).
 */
#ifndef PBARENA_H
#define PBARENA_H

#include <protobuf-c/protobuf-c.h>

#include "common/arena.h"

/*
 * Returns an allocator that allocates from a; its free is a no-op (nothing is returned
 * before arena_deinit()). Cannot fail. The value may be copied and stays usable as long
 * as a does; a message unpacked with it must not be passed to
 * protobuf_c_message_free_unpacked() with another allocator.
 */
ProtobufCAllocator pbarena_allocator(arena_t *a);

#endif
