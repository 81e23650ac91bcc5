/*
 * prune_export: the export stage (SPEC section 8).
 *
 * Input: the frozen inference graph that still carries what insert added (variables
 * turned into constants) and the insert's record. For every recorded layer the mask
 * the frozen graph itself would use is computed (the fresh 2:4 mask of the weight when
 * refresh(step) holds, else the frozen mask variable), weight * mask is written into
 * the weight constant (a copy when others read it), the layer reads its original
 * weight input again, and every inserted node and every node that only fed them is
 * deleted. The result computes what the masked graph computed, without the masks.
 */
#ifndef PRUNE_EXPORT_H
#define PRUNE_EXPORT_H

#include "prune/graph.h"
#include "prune/record.h"
#include "prune/progress.h"
#include "prune/result.h"

/*
 * Runs export on g in place (weights are masked when g is saved, see
 * prune_graph_mask_on_save). Returns 0, or SD_ERECORD (a recorded layer missing from
 * the model or differing from it), SD_EMODEL (the model lacks the recorded insertion,
 * carries one the record does not list, has NaN weights, or is not frozen),
 * SD_ETOOBIG, SD_ENOMEM. Errors name the layer.
 */
SD_MUST_CHECK int prune_export(prune_graph_t *g, const prune_record_entry_t *rec,
			       size_t n_rec, const char *const *outputs, size_t n_outputs,
			       size_t max_elems, const prune_progress_t *progress,
			       prune_result_t *res, sd_error_t *e);

#endif
