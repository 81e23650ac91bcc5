/*
 * prune_result: what a stage did, as plain C data. The engine fills it; api_json
 * renders it (the CLI's --json output and the daemon's job result are that rendering).
 *
 * Memory: every string and array lives in the stage's arena.
 */
#ifndef PRUNE_RESULT_H
#define PRUNE_RESULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prune/graph.h"
#include "prune/stage.h"

typedef enum prune_action {
	PRUNE_ACTION_PRUNED = 0,
	PRUNE_ACTION_SKIPPED,
	PRUNE_ACTION_CHECKED,      /* check: the weight's values were examined */
	PRUNE_ACTION__COUNT
} prune_action_t;

/* "pruned", "skipped", "checked" (what the result JSON and the CLI show). */
const char *prune_action_name(prune_action_t a);

/* Skip reasons (SPEC section 3); the string form is what users see. */
#define PRUNE_SKIP_MAP(X)                                                      \
	X(NONE, "none")                                                        \
	X(SKIP_LAYERS, "skip_layers")                                          \
	X(SKIP_LAYER_TYPES, "skip_layer_types")                                \
	X(REGULAR_SKIP_LAYERS, "regular_prune_skip_layers")                    \
	X(REGULAR_SKIP_TYPES, "regular_prune_skip_types")                      \
	X(TRANSPOSE_A, "transpose_a")                                          \
	X(NOT_CONSTANT, "not_constant")                                        \
	X(DTYPE, "dtype")                                                      \
	X(BAD_SHAPE, "bad_shape")                                              \
	X(SHARED_WEIGHT, "shared_weight")                                      \
	X(AXIS_TOO_SHORT, "axis_too_short")                                    \
	X(NO_PRUNE_CONFIG, "no_prune_config")

typedef enum prune_skip {
#define PRUNE__SKIP_ENUM(name, str) PRUNE_SKIP_##name,
	PRUNE_SKIP_MAP(PRUNE__SKIP_ENUM)
#undef PRUNE__SKIP_ENUM
	PRUNE_SKIP__COUNT
} prune_skip_t;

/* "skip_layers", ...; never NULL. */
const char *prune_skip_name(prune_skip_t r);

/* One candidate layer (a MatMul, Conv2D or Conv2DBackpropInput on the output path). */
typedef struct prune_layer {
	const char *name;
	const char *type;
	size_t node;               /* index in the graph at discovery time */
	const char *weight_input;  /* what the mask multiplies: input 1 as written in the
				      graph, or the input of the Cast the layer reads it through */
	const char *weight;        /* the Const/VariableV2/VarHandleOp it traces to, or NULL */
	size_t weight_node;        /* its index at discovery time (valid when weight is set) */
	const char *cast;          /* the Cast between weight and layer (Keras mixed precision
				      reads a float32 variable as float16), or NULL; a name
				      alone (records carry it; prune_layer_reader finds
				      the node) */
	int dtype;                 /* DataType of the weight, 0 if unknown */
	int rank;                  /* -1 if unknown */
	int64_t shape[4];
	int axis;                  /* prune axis, -1 if not applicable */
	prune_action_t action;
	prune_skip_t reason;
	const char *detail;        /* human text for the action */
	uint32_t update_freq;      /* pruned layers */
	/* Filled by the stage for pruned layers; NULL otherwise. */
	const char *mask_var;
	const char *step_var;
	const char *update_op;
	bool masked;               /* reads a sparsityd masked weight (inserted, not exported) */
	/* export/prune/check statistics, valid when `examined` */
	bool examined;             /* the weight's values were read */
	bool is_2of4;
	uint64_t elems;
	uint64_t zeros;
	uint64_t zeroed;           /* weights newly set to zero by the stage */
} prune_layer_t;

typedef struct prune_result {
	prune_stage_t stage;
	prune_format_t format;
	bool format_stated;
	size_t nodes_in;
	size_t nodes_out;
	const char **outputs;
	size_t n_outputs;
	prune_layer_t *layers;
	size_t n_layers;
	size_t pruned;
	size_t skipped;
	size_t checked;            /* check: layers whose weights were examined */
	uint64_t weights;          /* elements in the pruned layers' weights */
	uint64_t weights_zeroed;
	size_t by_reason[PRUNE_SKIP__COUNT];
	size_t layers_2of4;        /* export/prune/check: examined layers that are 2:4 */
	const char *init_op;       /* insert only */
	const char *update_op;     /* insert only */
	/* Things the user should know that did not stop the stage, one sentence each (insert:
	 * a saver it could not extend, see prune/saver.h). */
	const char **warnings;
	size_t n_warnings;
	/* prune: the masks still being computed while the model is saved, until
	 * prune_stage_finish (see prune_oneshot_begin); NULL otherwise. */
	struct prune_oneshot *pending;
} prune_result_t;

#endif
