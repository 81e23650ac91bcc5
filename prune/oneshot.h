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
 * Runs the prune stage on g in place, in two steps around the save: weights are masked
 * on their way out (prune_graph_mask_on_save), most masks computed by the save itself
 * as it writes each weight (prune_mask_2of4_apply), the others on threads of their own
 * that the save waits for. Layers whose weight is not a constant are skipped
 * (not_constant).
 *
 * begin returns 0 with res filled but for the zero counts (layers' zeros and zeroed,
 * weights_zeroed) and *out, or SD_ECONFIG, SD_ENOLAYER, SD_EMODEL (a graph that already
 * carries sparsityd masks), SD_ETOOBIG, SD_ENOMEM. end (after the save, or instead of
 * it, on every path once begin succeeded) waits for the masks, fills those counts and
 * returns their error, if any: SD_EMODEL for a NaN weight, SD_ENOMEM; the saved model
 * is then to be discarded.
 */
typedef struct prune_oneshot prune_oneshot_t;
SD_MUST_CHECK int prune_oneshot_begin(prune_graph_t *g, const prune_config_t *cfg,
				      const char *const *outputs, size_t n_outputs,
				      size_t max_elems, const prune_progress_t *progress,
				      prune_result_t *res, prune_oneshot_t **out, sd_error_t *e);
SD_MUST_CHECK int prune_oneshot_end(prune_oneshot_t *o, prune_result_t *res, sd_error_t *e);

#endif
