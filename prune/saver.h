/*
 * prune_saver: makes the Saver a MetaGraphDef carries save and restore the variables
 * insert adds.
 *
 * tf.compat.v1.train.import_meta_graph rebuilds the graph's Saver from saver_def, and
 * that Saver runs the save and restore sub-graph the original model was exported with:
 * without help it neither writes nor restores "<layer>/sparsityd/mask" and ".../step",
 * so a checkpoint of the training graph would not restore into the inference graph.
 * This module extends that sub-graph the way tf.compat.v1.train.Saver itself lays it out
 * for resource variables (see saver.c), so the rebuilt Saver covers them.
 *
 * A layout it does not recognise (a V1 saver, variables on several devices, missing or
 * unexpected nodes) is not an error: the graph is left untouched and the reason comes
 * back as a warning. A Saver built after import still covers the variables, since they
 * are in the "variables" collection.
 *
 * Memory: everything added lives in the graph's arena. Thread safety: one graph, one
 * thread (as prune_graph).
 */
#ifndef PRUNE_SAVER_H
#define PRUNE_SAVER_H

#include <stddef.h>

#include "common/sd_err.h"
#include "prune/graph.h"

/* A variable to save and restore. The strings must live as long as the graph. */
typedef struct prune_saver_var {
	const char *name; /* its VarHandleOp: also its checkpoint key, as in TensorFlow */
	const char *read; /* a ReadVariableOp of it (its snapshot): the value saved */
	int dtype;        /* DataType of the value */
} prune_saver_var_t;

/*
 * Extends the save and restore sub-graph of g's saver_def to the n variables in vars.
 * Does nothing when g is a plain GraphDef, has no saver_def, or n is 0. Returns 0 with
 * *warning NULL when done (or nothing to do); 0 with *warning set (text in the graph's
 * arena naming the saver and why) when the saver was left as is; SD_ENOMEM, or
 * SD_EMODEL if a node it adds cannot be added (with *e set). On an error the saver's
 * sub-graph may be half extended: the caller fails the stage.
 */
SD_MUST_CHECK int prune_saver_extend(prune_graph_t *g, const prune_saver_var_t *vars, size_t n,
				     const char **warning, sd_error_t *e);

#endif
