/*
 * prune_layers: layer discovery and structural eligibility (SPEC section 3).
 *
 * A layer is a MatMul, Conv2D or Conv2DBackpropInput node on the data path to the
 * requested outputs. Its weight is input 1 traced back through Identity and
 * ReadVariableOp to a Const, VariableV2 or VarHandleOp, possibly through one Cast on
 * the way (Keras mixed precision reads a float32 variable and casts it to float16 for
 * the layer): the mask then has the variable's dtype and applies before the Cast.
 * This module decides everything
 * that depends only on the graph (transpose_a, dtype, traceability, shape, sharing,
 * axis length); the config's skip lists and prune configs are applied by prune_config.
 *
 * Memory: the layer array and its strings live in the graph's arena.
 */
#ifndef PRUNE_LAYERS_H
#define PRUNE_LAYERS_H

#include "prune/graph.h"
#include "prune/result.h"

/* Every node insert adds lives under "<layer>/" PRUNE_SCOPE "/" or PRUNE_SCOPE "/". */
#define PRUNE_SCOPE "sparsityd"
#define PRUNE_MASKED_SUFFIX "/" PRUNE_SCOPE "/masked_weight"

/*
 * Checks the syntax of a comma-separated list of output names without a graph: each
 * entry (blanks around it ignored) is a TensorFlow node name, [A-Za-z0-9.] then
 * [A-Za-z0-9_./>-]*, optionally followed by ":N" (a tensor name such as logits:0).
 * Returns 0 or SD_EUSAGE saying which entry is wrong and why (empty, a control input
 * "^name", a suffix that is not an output index, bad character, too long).
 */
SD_MUST_CHECK int prune_outputs_check(const char *csv, sd_error_t *e);

/*
 * Parses a comma-separated list of outputs ("a,b"; syntax as prune_outputs_check) and
 * checks each names a node. A tensor name "x:N" stands for its node x: the stages keep
 * what x depends on, whichever of its outputs is meant. Returns 0 with the node names
 * in *out (arena), SD_EUSAGE for bad syntax, or SD_EMODEL naming the missing output.
 */
SD_MUST_CHECK int prune_outputs_parse(prune_graph_t *g, const char *csv, const char ***out,
				      size_t *n, sd_error_t *e);

/*
 * Finds the layers on the path to outputs (every layer of the graph when n_outputs is
 * 0), in graph order, with their weight, shape, prune axis and structural skip reason
 * (PRUNE_SKIP_NONE if eligible so far). A layer that reads a sparsityd masked weight is
 * marked `masked` and its weight traced from the masked weight's own input.
 * Returns 0, or SD_ETOOBIG when a weight claims more than max_elems elements, SD_ENOMEM.
 */
SD_MUST_CHECK int prune_layers_find(prune_graph_t *g, const char *const *outputs,
				    size_t n_outputs, size_t max_elems, prune_layer_t **layers,
				    size_t *n_layers, sd_error_t *e);

/* The axis of layer node n's weight that 2:4 groups run along (its reduction axis):
 * MatMul 0, or 1 with transpose_b; Conv2D 2 (Cin of HWIO); Conv2DBackpropInput 3. */
int prune_layer_axis(const Tensorflow__NodeDef *n);

/* Whether op is a layer type, and the list of them for messages ("MatMul, ..."). */
bool prune_layer_type_known(const char *op);
const char *prune_layer_types(void);

/* Starts a stage's result: stage name, model format, node count and outputs of g. */
void prune_result_begin(prune_result_t *r, prune_stage_t stage, const prune_graph_t *g,
			const char *const *outputs, size_t n_outputs);

/* Whether n passes its input 0 on unchanged (Identity, ReadVariableOp): traces and
 * reader walks go through such nodes. */
bool prune_passes_on(const Tensorflow__NodeDef *n);

/*
 * Traces inputs of one graph: from an input string through Identity / ReadVariableOp
 * to the first node that is neither (a frozen variable reads through Identity, a live
 * one through ReadVariableOp). The end of each node's trace is found once and kept, so
 * a graph whose thousands of layers read one weight through one long Identity chain
 * walks the chain once, not once per layer. Valid while no node is added, removed or
 * rewired: a stage that edits the graph makes a new one.
 */
typedef struct prune_tracer {
	const prune_graph_t *g;
	ptrdiff_t *end; /* per node: where its trace ends, -1, or not found yet */
} prune_tracer_t;

/* Sets t up for g (memory in g's arena, one word per node). Returns 0 or SD_ENOMEM. */
SD_MUST_CHECK int prune_tracer_init(prune_graph_t *g, prune_tracer_t *t, sd_error_t *e);

/* The index of the node input's trace ends at, or -1 for a missing node, a dead end or
 * a cycle. */
ptrdiff_t prune_tracer_trace(prune_tracer_t *t, const char *input);

/*
 * Where layer node `layer` takes in its weight: the layer's input 1, or the input 0 of
 * a Cast that input 1 leads to through Identity / ReadVariableOp. Returns the index of
 * that node (the layer or the Cast) and sets *slot to the input, or -1 when the layer
 * has no input 1.
 */
ptrdiff_t prune_tracer_weight_reader(prune_tracer_t *t, size_t layer, size_t *slot);

/*
 * The index of the node through which discovered layer l reads its weight: its Cast
 * (l->cast) when it has one, else the layer (l->node). Discovery-time indexes, so only
 * valid while no node has been removed.
 */
size_t prune_layer_reader(const prune_graph_t *g, const prune_layer_t *l);

/*
 * The input string through which discovered layer l reads what the mask multiplies
 * (the Cast's input 0 when l->cast is set, else the layer's input 1): a stage rewires
 * the layer by assigning to it. Valid as prune_layer_reader is.
 */
char **prune_layer_weight_ref(const prune_graph_t *g, const prune_layer_t *l);

/* Whether an input string names a masked weight made by insert ("L/sparsityd/masked_weight"). */
bool prune_names_masked_weight(const char *input);

/* Sums up actions and reasons of layers[] into r (pruned, skipped, by_reason). */
void prune_result_count(prune_result_t *r);

#endif
