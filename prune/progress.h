/*
 * prune_progress: how a stage says how far it is, layer by layer.
 *
 * fn(ud, done, total) is called each time a layer's work is finished; done counts up to
 * total. It may be called from several threads at once (masks are computed on all
 * cores), so fn must be thread-safe. A NULL prune_progress_t, or one with fn NULL,
 * reports nothing.
 */
#ifndef PRUNE_PROGRESS_H
#define PRUNE_PROGRESS_H

#include <stddef.h>

typedef struct prune_progress {
	void (*fn)(void *ud, size_t done, size_t total);
	void *ud;
} prune_progress_t;

static inline void prune_progress_report(const prune_progress_t *p, size_t done, size_t total)
{
	if (p && p->fn)
		p->fn(p->ud, done, total);
}

#endif
