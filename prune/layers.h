/*
 * prune_layers: layer discovery and structural eligibility (SPEC section 3).
 *
 * A layer is a MatMul, Conv2D or Conv2DBackpropInput node on the data path to the
 * requested outputs. Its weight is input 1 traced back through Identity and
 * ReadVariableOp to a Const, VariableV2 or VarHandleOp. This module decides everything
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
 * [A-Za-z0-9_./>-]*, optionally followed by ":N". Returns 0 or SD_EUSAGE saying which
 * entry is wrong and why (empty, bad character, too long).
 */
SD_MUST_CHECK int prune_outputs_check(const char *csv, sd_error_t *e);

/*
 * Parses a comma-separated list of output node names ("a,b", a ":N" suffix is
 * accepted and ignored; syntax as prune_outputs_check) and checks each names a node.
 * Returns 0 with the names in *out (arena), SD_EUSAGE for bad syntax, or SD_EMODEL
 * naming the missing output.
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

/* Whether op is a layer type, and the list of them for messages ("MatMul, ..."). */
bool prune_layer_type_known(const char *op);
const char *prune_layer_types(void);

/* Starts a stage's result: stage name, model format, node count and outputs of g. */
void prune_result_begin(prune_result_t *r, prune_stage_t stage, const prune_graph_t *g,
			const char *const *outputs, size_t n_outputs);

/*
 * Follows Identity / ReadVariableOp from an input string to the first node that is
 * neither (a frozen variable reads through Identity, a live one through
 * ReadVariableOp). Returns its index, or -1 for a missing node or a chain longer than
 * the graph (a malformed cycle).
 */
ptrdiff_t prune_trace(const prune_graph_t *g, const char *input);

/* Sums up actions and reasons of layers[] into r (pruned, skipped, by_reason). */
void prune_result_count(prune_result_t *r);

#endif
