/*
 * prune_oneshot: the prune stage, one-shot 2:4 without retraining.
 *
 * On a frozen graph, every layer the config selects gets weight * mask written into
 * its weight constant, with the mask computed from the constant itself: the same
 * result as insert + freeze + export at step 0, computed directly on the constants.
 */
#ifndef PRUNE_ONESHOT_H
#define PRUNE_ONESHOT_H

#include "prune/config.h"
#include "prune/graph.h"
#include "prune/progress.h"
#include "prune/result.h"

/*
 * Runs the prune stage on g in place (weights are masked when g is saved, see
 * prune_graph_mask_on_save). Layers whose weight is not a constant are
 * skipped (not_constant). Returns 0, SD_ECONFIG, SD_ENOLAYER, SD_EMODEL (NaN weight,
 * a graph that already carries sparsityd masks), SD_ETOOBIG, SD_ENOMEM.
 */
SD_MUST_CHECK int prune_oneshot(prune_graph_t *g, const prune_config_t *cfg,
				const char *const *outputs, size_t n_outputs, size_t max_elems,
				const prune_progress_t *progress, prune_result_t *res,
				sd_error_t *e);

/*
 * prune_oneshot in two steps, for a caller that saves g in between: the masks are
 * computed on other threads during the save, which writes each weight once its mask
 * is done. begin returns with res filled but for the zero counts (layers' zeros and
 * zeroed, weights_zeroed) and *out; end (after the save, and on every path once begin
 * succeeded) waits for the masks, fills those counts and returns their error, if any
 * (SD_EMODEL: a NaN weight; the saved model is then to be discarded).
 */
typedef struct prune_oneshot prune_oneshot_t;
SD_MUST_CHECK int prune_oneshot_begin(prune_graph_t *g, const prune_config_t *cfg,
				      const char *const *outputs, size_t n_outputs,
				      size_t max_elems, const prune_progress_t *progress,
				      prune_result_t *res, prune_oneshot_t **out, sd_error_t *e);
SD_MUST_CHECK int prune_oneshot_end(prune_oneshot_t *o, prune_result_t *res, sd_error_t *e);

#endif
