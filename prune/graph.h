/*
 * prune_graph: a TensorFlow model in memory, with the indexes the stages need.
 *
 * A model is a binary GraphDef (.pb), a binary MetaGraphDef (.meta) or a text GraphDef
 * (.pbtxt). The format is detected from the content unless the caller states it, and
 * the result says which was used and how. Everything a stage does not touch survives a
 * load and save: fields our .proto files do not declare travel as protobuf-c unknown
 * fields, MetaGraphDef parts other than graph_def and collection_def are carried whole.
 *
 * Glossary: an "input string" is a NodeDef input ("name", "name:1", "^ctrl"); a
 * "consumer" of node N is a node with a data input naming N.
 *
 * Memory: the graph and everything hung on it lives in the caller's arena.
 * Thread safety: one graph belongs to one thread.
 */
#ifndef PRUNE_GRAPH_H
#define PRUNE_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/arena.h"
#include "common/sd_err.h"
#include "proto/tf_graph.pb-c.h"

typedef enum prune_format {
	PRUNE_FMT_AUTO = 0,
	PRUNE_FMT_GRAPHDEF,
	PRUNE_FMT_METAGRAPH,
	PRUNE_FMT_PBTXT,
} prune_format_t;

/* Largest model accepted: protobuf's own 2 GiB message limit. */
#define PRUNE_MODEL_MAX ((size_t)INT32_MAX)

typedef struct prune_graph prune_graph_t;

/* A parsed input string; name points into the original (not NUL-terminated). */
typedef struct prune_input {
	const char *name;
	size_t len;
	int index;  /* output index, 0 when absent */
	bool ctrl;  /* "^name" */
} prune_input_t;

/* "graphdef", "metagraph", "pbtxt" or "auto". Never NULL. */
const char *prune_format_name(prune_format_t f);

/* Parses "graphdef"/"pb", "metagraph"/"meta", "pbtxt"/"text". Returns 0 or SD_EUSAGE. */
SD_MUST_CHECK int prune_format_parse(const char *s, prune_format_t *out, sd_error_t *e);

/*
 * Builds a graph from len bytes of a model. `file` names the input in messages. `fmt`
 * is PRUNE_FMT_AUTO to detect. Large weights of a binary model are not copied: their
 * tensors point into buf, which must outlive the graph and is never written (stages
 * mask weights on their way out, see prune_graph_mask_on_save). Validates what SPEC
 * section 2 lists (duplicate names, inputs naming missing nodes, constants whose
 * content disagrees with their shape, shapes over max_elems) and fails naming the
 * node. Returns 0 and *out, or SD_EMODEL, SD_ETOOBIG, SD_ENOMEM.
 */
SD_MUST_CHECK int prune_graph_load(const uint8_t *buf, size_t len, const char *file,
				   prune_format_t fmt, size_t max_elems, arena_t *a,
				   prune_graph_t **out, sd_error_t *e);

/* Format used, and whether it was stated by the caller (else detected). */
prune_format_t prune_graph_format(const prune_graph_t *g);
bool prune_graph_format_stated(const prune_graph_t *g);

/* The GraphDef (inside the MetaGraphDef for that format); NULL never. */
Tensorflow__GraphDef *prune_graph_def(prune_graph_t *g);

/* The MetaGraphDef, or NULL when the model is a plain GraphDef. */
Tensorflow__MetaGraphDef *prune_graph_meta(prune_graph_t *g);

/* The arena of the graph (for stages that add to it). */
arena_t *prune_graph_arena(prune_graph_t *g);

/* Number of nodes; node i (0 <= i < count). */
size_t prune_graph_count(const prune_graph_t *g);
Tensorflow__NodeDef *prune_graph_node(const prune_graph_t *g, size_t i);

/* Index of the node called name[0..len), or -1. */
ptrdiff_t prune_graph_find(const prune_graph_t *g, const char *name, size_t len);

/* Parses an input string. Returns 0, or SD_EMODEL for an empty or malformed string. */
SD_MUST_CHECK int prune_input_parse(const char *s, prune_input_t *out, sd_error_t *e);

/* Index of the node an input string names, or -1 (also for malformed input). */
ptrdiff_t prune_graph_find_input(const prune_graph_t *g, const char *input);

/* One attribute of a node being added: key and value are referenced, not copied. */
typedef struct prune_attr_kv {
	const char *key;
	Tensorflow__AttrValue *value;
} prune_attr_kv_t;

/*
 * A node to add. Everything is referenced, not copied (name, op, device, input strings,
 * keys, values), so it must live as long as the graph: its arena, or static storage.
 * AttrValues may be shared between nodes. device may be NULL.
 */
typedef struct prune_node_spec {
	const char *name, *op, *device;
	const char *const *inputs;
	size_t n_inputs;
	const prune_attr_kv_t *attrs;
	size_t n_attrs;
} prune_node_spec_t;

/*
 * Appends the node s describes and returns it, or NULL on ENOMEM or when the name is
 * taken (then *e says which). The node and its input and attribute arrays are one
 * allocation: a stage adding thousands of nodes pays for one each. Node pointers and
 * indexes returned earlier stay valid.
 */
Tensorflow__NodeDef *prune_graph_add(prune_graph_t *g, const prune_node_spec_t *s,
				     sd_error_t *e);

/*
 * As prune_graph_add for a name the caller knows is new (no node has it, and no other
 * add_new gives it): not looked up, and indexed only at the next lookup, so a stage
 * that adds tens of thousands of nodes and then saves pays nothing for indexing them.
 * Breaking the contract leaves the later node unfindable by name.
 */
Tensorflow__NodeDef *prune_graph_add_new(prune_graph_t *g, const prune_node_spec_t *s,
					 sd_error_t *e);

/*
 * Makes room for `extra` more nodes (node array and index) in one step, so a stage
 * that knows roughly how much it adds does not rehash the index repeatedly.
 * Returns 0 or SD_ENOMEM.
 */
SD_MUST_CHECK int prune_graph_reserve(prune_graph_t *g, size_t extra, sd_error_t *e);

/*
 * Marks nodes for removal and compacts the node list, rebuilding the index (for export).
 * remove[i] true drops node i. Returns 0 or SD_ENOMEM.
 */
SD_MUST_CHECK int prune_graph_remove(prune_graph_t *g, const bool *remove, sd_error_t *e);

/*
 * Who reads each node: consumers of node i are list[off[i] .. off[i+1]), with ctrl[k]
 * true when consumer k only has a control input (^name) on it. A node reading another
 * twice appears twice. Built once per stage from the current graph; stale after edits
 * that add or rewire nodes.
 */
typedef struct prune_consumers {
	size_t *off;
	size_t *list;
	bool *ctrl;
} prune_consumers_t;

/* Builds the consumer index in the graph's arena. Returns 0 or SD_ENOMEM. */
SD_MUST_CHECK int prune_graph_consumers(prune_graph_t *g, prune_consumers_t *c,
					sd_error_t *e);

/* Attribute lookup on a node: the AttrValue called key (the last entry of that key, as
 * protobuf maps read), or NULL. */
Tensorflow__AttrValue *prune_node_attr(const Tensorflow__NodeDef *n, const char *key);

/*
 * Has the save write tensor tp (a weight of dtype whose tensor_content holds its bytes,
 * e.g. still in the model file) masked by bits from prune_mask_bits, which must live as
 * long as the graph: the weight is masked on its way to the output, block by block,
 * and never rewritten in memory. One call per tensor. Returns 0 or SD_ENOMEM.
 */
SD_MUST_CHECK int prune_graph_mask_on_save(prune_graph_t *g, Tensorflow__TensorProto *tp,
					   int dtype, const uint8_t *bits, sd_error_t *e);

/* The weight prune_graph_mask_on_save took last has its bits still being computed, by
 * job `job` of run: a save waits for that job when it reaches the weight, so writing
 * starts before every mask is done. An at_save job (mask.h) has no bits: every save
 * computes its mask piece by piece as it writes the weight, and reports each piece to
 * run. Once the saves are over, and before run ends (prune_mask_run_end),
 * prune_graph_masks_final(g) forgets run: a later save finds every mask final (and
 * reports nothing). */
struct prune_mask_run;
void prune_graph_mask_later(prune_graph_t *g, struct prune_mask_run *run, size_t job);
void prune_graph_masks_final(prune_graph_t *g);

/*
 * Applies the pending masks in memory (into copies in the graph's arena), for a caller
 * that reads weight values after a stage; the text save does it itself. Returns 0 or
 * SD_ENOMEM.
 */
SD_MUST_CHECK int prune_graph_materialize(prune_graph_t *g, sd_error_t *e);

/*
 * Writes the model in format fmt (PRUNE_FMT_AUTO: the format it was loaded in) to f,
 * streaming the binary encoding without building it in memory; masked weights are
 * produced as they are written. Returns 0, SD_EUSAGE (a GraphDef saved as a
 * MetaGraphDef), SD_ETOOBIG (over 2 GiB), SD_ENOMEM, SD_ENOSPACE or SD_EIO.
 */
SD_MUST_CHECK int prune_graph_save(prune_graph_t *g, prune_format_t fmt, FILE *f,
				   sd_error_t *e);

#endif
