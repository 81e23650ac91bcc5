/*
 * prune_checker: the check stage (SPEC section 9), a report on any model.
 *
 * Per layer: type, weight shape, prune axis, whether the weight is 2:4 along that
 * axis, its zero count, and the skip reason when it cannot be examined (not a
 * constant, transpose_a, dtype, shape). A layer reading a sparsityd masked weight is
 * reported as masked, with its underlying weight examined. Nothing is modified.
 */
#ifndef PRUNE_CHECKER_H
#define PRUNE_CHECKER_H

#include "prune/graph.h"
#include "prune/progress.h"
#include "prune/result.h"

/*
 * Examines the layers on the path to outputs (all layers when n_outputs is 0).
 * Returns 0, SD_EMODEL (malformed weight), SD_ETOOBIG, SD_ENOMEM.
 */
SD_MUST_CHECK int prune_check(prune_graph_t *g, const char *const *outputs,
			      size_t n_outputs, size_t max_elems, const prune_progress_t *progress,
			      prune_result_t *res, sd_error_t *e);

#endif
