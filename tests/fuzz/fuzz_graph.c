/*
 * fuzz_graph: the model loader and what runs on every loaded model.
 *
 * prune_graph_load (format detection, zero-copy binary unpack of GraphDef and
 * MetaGraphDef, the text parser for .pbtxt, validation), then on success: name lookup,
 * the consumer index, layer discovery over the whole graph and towards one output (the
 * last node, as `--outputs` would name it), the check stage, and optionally the save.
 *
 * Input: byte 0 selects, bytes 1.. are the model.
 *   bits 0-1  format: 0 auto-detect, 1 graphdef, 2 metagraph, 3 pbtxt
 *   bit 2     also save the graph in its own format (to a stream that drops the bytes)
 * The custom mutator (pbmutate.c) keeps byte 0, so the seeds decide the mix.
 */
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "prune/checker.h"
#include "prune/graph.h"
#include "prune/layers.h"

/* RUN_MAX_ELEMS of daemon/run.h: what the CLI and the daemon pass to the engine. */
#define MAX_ELEMS ((size_t)1 << 32)

static void explore(prune_graph_t *g, uint8_t sel)
{
	sd_error_t e;
	size_t n = prune_graph_count(g);
	FUZZ_ASSERT(n > 0, "a loaded graph has no nodes");
	FUZZ_ASSERT(prune_graph_format_stated(g) == ((sel & 3) != 0), "format_stated wrong");
	FUZZ_ASSERT(prune_graph_format(g) != PRUNE_FMT_AUTO, "format left at auto");
	for (size_t i = 0; i < n; i++) {
		const char *name = prune_graph_node(g, i)->name;
		FUZZ_ASSERT(prune_graph_find(g, name, strlen(name)) == (ptrdiff_t)i,
			    "node %zu '%s' is not found by its name", i, name);
	}

	sd_err_clear(&e);
	prune_consumers_t cons;
	fuzz_expect("prune_graph_consumers", prune_graph_consumers(g, &cons, &e), &e, 1,
		    SD_ENOMEM);

	prune_layer_t *layers;
	size_t n_layers;
	sd_err_clear(&e);
	fuzz_expect("prune_layers_find(all)",
		    prune_layers_find(g, NULL, 0, MAX_ELEMS, &layers, &n_layers, &e), &e, 2,
		    SD_ETOOBIG, SD_ENOMEM);

	/* The last node as the output, once as the CLI parses --outputs, once directly. */
	const char *last = prune_graph_node(g, n - 1)->name;
	const char **outs;
	size_t n_outs;
	sd_err_clear(&e);
	fuzz_expect("prune_outputs_parse", prune_outputs_parse(g, last, &outs, &n_outs, &e), &e,
		    3, SD_EUSAGE, SD_EMODEL, SD_ENOMEM);
	const char *const direct[1] = {last};
	sd_err_clear(&e);
	fuzz_expect("prune_layers_find(last)",
		    prune_layers_find(g, direct, 1, MAX_ELEMS, &layers, &n_layers, &e), &e, 2,
		    SD_ETOOBIG, SD_ENOMEM);

	prune_result_t res;
	memset(&res, 0, sizeof(res));
	sd_err_clear(&e);
	fuzz_expect("prune_check", prune_check(g, direct, 1, MAX_ELEMS, NULL, &res, &e), &e, 3,
		    SD_EMODEL, SD_ETOOBIG, SD_ENOMEM);

	if (sel & 4) {
		FILE *f = fuzz_discard_open();
		sd_err_clear(&e);
		int rc = prune_graph_save(g, PRUNE_FMT_AUTO, f, &e);
		fclose(f);
		fuzz_expect("prune_graph_save", rc, &e, 3, SD_ETOOBIG, SD_ENOMEM, SD_EIO);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const prune_format_t fmts[4] = {PRUNE_FMT_AUTO, PRUNE_FMT_GRAPHDEF,
					       PRUNE_FMT_METAGRAPH, PRUNE_FMT_PBTXT};
	if (size < 1)
		return 0;
	arena_t a;
	arena_init(&a, fuzz_arena_limit());
	sd_error_t e;
	sd_err_clear(&e);
	prune_graph_t *g = NULL;
	int rc = prune_graph_load(data + 1, size - 1, "fuzz.model", fmts[data[0] & 3], MAX_ELEMS,
				  &a, &g, &e);
	fuzz_expect("prune_graph_load", rc, &e, 3, SD_EMODEL, SD_ETOOBIG, SD_ENOMEM);
	if (rc == 0)
		explore(g, data[0]);
	arena_deinit(&a);
	return 0;
}
