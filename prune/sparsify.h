/*
 * prune_sparsify: has weight * mask written into the constant a layer reads (export,
 * prune).
 *
 * The constant itself is written masked only when nothing but the layer reads it (through
 * Identity nodes, and the layer's Cast when it reads the weight through one; the caller
 * may name consumers to disregard, e.g. the insert's own nodes that export deletes).
 * Otherwise a new Const "<layer>/weight_2of4" holds the sparse copy and the layer (or
 * its Cast) is pointed at it, so other readers keep the dense weight.
 */
#ifndef PRUNE_SPARSIFY_H
#define PRUNE_SPARSIFY_H

#include <stdint.h>

#include "prune/graph.h"
#include "prune/mask.h"
#include "prune/result.h"
#include "prune/tensor.h"

/* Consumers for which this returns true do not count as readers of the constant. */
typedef bool (*prune_ignore_cb)(void *ud, const Tensorflow__NodeDef *consumer);

/*
 * Has w, the decoded value of Const node cidx read by layer l (through
 * prune_layer_reader), written masked by bits as described above: w itself is never
 * modified (it may lie in the read-only model file); the mask goes to the save
 * (prune_graph_mask_on_save). bits
 * and counts come from prune_mask_2of4_bits or prune_mask_bits, and bits must live as
 * long as the graph; is_2of4 says whether the written weight is 2:4 (true for a mask
 * from the 2:4 kernel). Fills l->zeros, l->zeroed, l->is_2of4, l->elems, l->examined.
 * *moved is set when a new Const was made (prune_layer_weight_ref then names it).
 * Returns 0, SD_EMODEL (name taken), SD_ENOMEM.
 */
SD_MUST_CHECK int prune_sparsify(prune_graph_t *g, const prune_consumers_t *c,
				 prune_layer_t *l, size_t cidx,
				 const prune_tensor_t *w, const uint8_t *bits,
				 prune_mask_counts_t counts, bool is_2of4, prune_ignore_cb ignore,
				 void *ud, bool *moved, sd_error_t *e);

/* Records in l whether the decoded weight w is 2:4 along l->axis and its zero count. */
void prune_sparsify_stats(prune_layer_t *l, const prune_tensor_t *w);

#endif
