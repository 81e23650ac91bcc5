/*
 * prune_insert: the insert stage (SPEC section 6).
 *
 * For every pruned layer L the graph gains, under the scope "L/sparsityd", two
 * non-trainable resource variables (mask: the weight's dtype and shape; step: int64
 * scalar), the 2:4 mask of the current weight computed with stock ops
 * (Abs, Transpose, Pad, Reshape, TopKV2, OneHot, Sum, Slice, StopGradient), and
 *   mask_value    = SelectV2(refresh(step), fresh_mask, mask)
 *   masked_weight = weight * mask_value      -> L's input 1 (or, when L reads its
 *                                              weight through a Cast, the Cast's input)
 * with refresh(step) = (update_freq == 0 ? step == 0 : step % update_freq == 0).
 * The forward path reads each variable once and assigns nothing, so the inference
 * graph freezes with convert_variables_to_constants. The state update is a separate
 * op: update_mask assigns mask_value to mask, then update_step adds 1 to step.
 * Graph-wide, "sparsityd/init" initialises every new variable (mask to ones, step to 0)
 * and "sparsityd/update" runs every layer's update. For a MetaGraphDef the variables
 * join the "variables" collection and the update op the "update_ops" collection, and
 * the Saver its saver_def names saves and restores them too (prune/saver.h; a saver
 * left as is becomes a warning of the result).
 *
 * The names are a pure function of the layer name, so a second insert of a graph with
 * the same layers (training vs inference) yields the same variable names and a
 * checkpoint of one restores into the other.
 */
#ifndef PRUNE_INSERT_H
#define PRUNE_INSERT_H

#include "prune/config.h"
#include "prune/graph.h"
#include "prune/layers.h"
#include "prune/progress.h"
#include "prune/result.h"

#define PRUNE_INIT_OP "sparsityd/init"
#define PRUNE_UPDATE_OP "sparsityd/update"

/*
 * Runs the insert stage on g in place. outputs are node names (checked). res is
 * filled (stage, layers, totals, op names). Returns 0, or SD_ECONFIG, SD_ENOLAYER,
 * SD_EMODEL (e.g. the graph already carries sparsityd nodes), SD_ETOOBIG, SD_ENOMEM.
 */
SD_MUST_CHECK int prune_insert(prune_graph_t *g, const prune_config_t *cfg,
			       const char *const *outputs, size_t n_outputs, size_t max_elems,
			       const prune_progress_t *progress, prune_result_t *res,
			       sd_error_t *e);

#endif
