/*
 * prune_graph: model loading, format detection, validation, the name index, and
 * streaming save (see graph.h).
 *
 * Design: the model is unpacked once by protobuf-c into the stage's arena; a stage then
 * edits the NodeDef structs in place and the save packs them straight to the output
 * file through pbwire, so the encoded output is never held in memory. The name index
 * is an open-addressing hash table (word-at-a-time hash, linear probing) rebuilt only
 * when nodes are removed; appending a node inserts into it. Workload: graphs of up to
 * a few hundred thousand nodes, loaded once per job.
 *
 * Format detection: text is recognised by the absence of NUL bytes and a first token
 * that is an identifier or comment. GraphDef and MetaGraphDef share wire tags 1, 2
 * and 4 at the top level, so the decision reads the top-level fields: a GraphDef
 * repeats field 1 (nodes) and its field 4 (VersionDef) holds varints, while a
 * MetaGraphDef has one field 1 (MetaInfoDef), its field 4 entries (collection_def map
 * entries) start with a string key, and fields 3 (SaverDef) and 5..7 are
 * length-delimited. If the guess unpacks to no nodes the other reading is tried.
 */
#include "prune/graph.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/sd_assert.h"
#include "proto/pbarena.h"
#include "proto/pbstrip.h"
#include "proto/pbtext.h"
#include "proto/pbwire.h"
#include "prune/mask.h"
#include "prune/tensor.h"

/* A hash slot keeps the name's hash so probing rarely touches the name itself. */
typedef struct slot {
	uint32_t hash;
	int32_t idx; /* node index, -1 when empty */
} slot_t;

/* A weight written masked (prune_graph_mask_on_save). */
typedef struct pending {
	Tensorflow__TensorProto *tp;
	const uint8_t *src, *bits;
	int dtype;
	prune_mask_run_t *run; /* bits are final once job `job` of run is (NULL: now) */
	size_t job;
	const prune_mask_job_t *mj; /* that job (NULL: bits given); an at_save one has none */
} pending_t;

struct prune_graph {
	arena_t *arena;
	pending_t **pending;
	size_t n_pending, pending_cap;
	prune_format_t format;
	bool stated;
	Tensorflow__MetaGraphDef *meta;
	Tensorflow__GraphDef *gd;
	size_t node_cap;   /* capacity of gd->node */
	slot_t *slots;     /* open addressing, load factor <= 2/3 (see index_fits) */
	size_t nslots;     /* power of two */
	size_t indexed;    /* nodes [0, indexed) are in the table; the rest wait (add_new) */
};

const char *prune_format_name(prune_format_t f)
{
	switch (f) {
	case PRUNE_FMT_GRAPHDEF: return "graphdef";
	case PRUNE_FMT_METAGRAPH: return "metagraph";
	case PRUNE_FMT_PBTXT: return "pbtxt";
	default: return "auto";
	}
}

int prune_format_parse(const char *s, prune_format_t *out, sd_error_t *e)
{
	static const struct { const char *name; prune_format_t f; } names[] = {
		{"auto", PRUNE_FMT_AUTO}, {"graphdef", PRUNE_FMT_GRAPHDEF},
		{"pb", PRUNE_FMT_GRAPHDEF}, {"metagraph", PRUNE_FMT_METAGRAPH},
		{"meta", PRUNE_FMT_METAGRAPH}, {"pbtxt", PRUNE_FMT_PBTXT},
		{"text", PRUNE_FMT_PBTXT},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i].name) == 0) {
			*out = names[i].f;
			return 0;
		}
	}
	return sd_err(e, SD_EUSAGE,
		      "unknown model format '%s' (expected graphdef, metagraph or pbtxt)", s);
}

/* ---- name index ---- */

/*
 * Eight bytes per step, each word folded in with a multiply and an xor-shift (the
 * splitmix64 finaliser's constants): node names are long and share prefixes, and a
 * byte-at-a-time hash was the largest single cost of adding nodes.
 */
static uint32_t hash_name(const char *s, size_t len)
{
	uint64_t h = 0x9e3779b97f4a7c15ULL ^ len, w;
	for (; len >= 8; s += 8, len -= 8) {
		memcpy(&w, s, 8);
		h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
		h ^= h >> 31;
	}
	w = 0;
	memcpy(&w, s, len);
	h = (h ^ w) * 0x94d049bb133111ebULL;
	h ^= h >> 29;
	return (uint32_t)(h ^ (h >> 32));
}

static bool name_eq(const char *node_name, const char *s, size_t len)
{
	return strncmp(node_name, s, len) == 0 && node_name[len] == '\0';
}

static ptrdiff_t index_put(prune_graph_t *g, size_t idx);

/*
 * Indexes the nodes prune_graph_add_new appended. The table already has room for them
 * (add_new grew it) and their names are new (its contract), so this cannot fail; the
 * index is a cache of the node list, which is why a lookup may fill it.
 */
static void index_catch_up(const prune_graph_t *cg)
{
	prune_graph_t *g = (prune_graph_t *)cg;
	while (g->indexed < g->gd->n_node)
		index_put(g, g->indexed++);
}

ptrdiff_t prune_graph_find(const prune_graph_t *g, const char *name, size_t len)
{
	if (g->indexed < g->gd->n_node)
		index_catch_up(g);
	uint32_t h = hash_name(name, len);
	size_t mask = g->nslots - 1;
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		const slot_t *s = &g->slots[i];
		if (s->idx < 0)
			return -1;
		if (s->hash == h && name_eq(g->gd->node[s->idx]->name, name, len))
			return s->idx;
	}
}

/* Inserts node idx; returns the index already holding that name, or -1 if new. */
static ptrdiff_t index_put(prune_graph_t *g, size_t idx)
{
	const char *name = g->gd->node[idx]->name;
	size_t mask = g->nslots - 1;
	uint32_t h = hash_name(name, strlen(name));
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		slot_t *s = &g->slots[i];
		if (s->idx < 0) {
			*s = (slot_t){h, (int32_t)idx};
			return -1;
		}
		if (s->hash == h && strcmp(g->gd->node[s->idx]->name, name) == 0)
			return s->idx;
	}
}

/*
 * Whether a table of n slots takes want nodes. At most 2/3 full: linear probing stays
 * short, and the table stays small enough to sit in cache while a stage adds tens of
 * thousands of nodes (each add is a lookup at a random slot).
 */
static bool index_fits(size_t n, size_t want)
{
	return want + want / 2 + 2 <= n;
}

/* A fresh, empty table for want nodes. */
static int index_alloc(prune_graph_t *g, size_t want, sd_error_t *e)
{
	size_t n = 16;
	while (!index_fits(n, want))
		n <<= 1;
	if (want > INT32_MAX)
		return sd_err(e, SD_ETOOBIG, "%zu nodes is more than a graph can hold", want);
	g->slots = arena_alloc(g->arena, n * sizeof(*g->slots));
	if (!g->slots)
		return sd_err(e, SD_ENOMEM, "out of memory indexing %zu nodes", want);
	memset(g->slots, 0xff, n * sizeof(*g->slots)); /* all idx -1 */
	g->nslots = n;
	return 0;
}

/* Indexes every node from scratch (after a load or a removal), refusing duplicates. */
static int index_build(prune_graph_t *g, size_t want, sd_error_t *e)
{
	int rc = index_alloc(g, want, e);
	if (rc)
		return rc;
	for (size_t i = 0; i < g->gd->n_node; i++) {
		ptrdiff_t dup = index_put(g, i);
		if (dup >= 0)
			return sd_err_node(e, SD_EMODEL, g->gd->node[i]->name,
					   "duplicate node name '%s' (nodes %td and %zu)",
					   g->gd->node[i]->name, dup, i);
	}
	g->indexed = g->gd->n_node;
	return 0;
}

/* Makes room for want nodes, moving the slots by their stored hashes: no name is read. */
static int index_grow(prune_graph_t *g, size_t want, sd_error_t *e)
{
	slot_t *old = g->slots;
	size_t n_old = g->nslots;
	int rc = index_alloc(g, want, e);
	if (rc)
		return rc;
	size_t mask = g->nslots - 1;
	for (size_t k = 0; k < n_old; k++) {
		if (old[k].idx < 0)
			continue;
		size_t i = old[k].hash & mask;
		while (g->slots[i].idx >= 0)
			i = (i + 1) & mask;
		g->slots[i] = old[k];
	}
	return 0;
}

/* ---- input strings ---- */

int prune_input_parse(const char *s, prune_input_t *out, sd_error_t *e)
{
	memset(out, 0, sizeof(*out));
	if (s[0] == '^') {
		out->ctrl = true;
		s++;
	}
	const char *colon = strchr(s, ':');
	out->name = s;
	out->len = colon ? (size_t)(colon - s) : strlen(s);
	if (out->len == 0)
		return sd_err(e, SD_EMODEL, "empty node name in input string");
	if (colon) {
		if (out->ctrl)
			return sd_err(e, SD_EMODEL, "control input '^%s' has an output index", s);
		char *end;
		errno = 0;
		long v = strtol(colon + 1, &end, 10);
		if (colon[1] == '\0' || *end != '\0' || errno || v < 0 || v > INT32_MAX)
			return sd_err(e, SD_EMODEL, "bad output index in input '%s'", s);
		out->index = (int)v;
	}
	return 0;
}

ptrdiff_t prune_graph_find_input(const prune_graph_t *g, const char *input)
{
	prune_input_t in;
	if (prune_input_parse(input, &in, NULL) != 0)
		return -1;
	return prune_graph_find(g, in.name, in.len);
}

/* ---- accessors ---- */

prune_format_t prune_graph_format(const prune_graph_t *g) { return g->format; }
bool prune_graph_format_stated(const prune_graph_t *g) { return g->stated; }
Tensorflow__GraphDef *prune_graph_def(prune_graph_t *g) { return g->gd; }
Tensorflow__MetaGraphDef *prune_graph_meta(prune_graph_t *g) { return g->meta; }
arena_t *prune_graph_arena(prune_graph_t *g) { return g->arena; }
size_t prune_graph_count(const prune_graph_t *g) { return g->gd->n_node; }
Tensorflow__NodeDef *prune_graph_node(const prune_graph_t *g, size_t i) { return g->gd->node[i]; }

Tensorflow__AttrValue *prune_node_attr(const Tensorflow__NodeDef *n, const char *key)
{
	/* attr is a protobuf map: of entries with the same key the last counts, as
	 * TensorFlow reads it, so the tensor checked and masked is the one it loads. */
	for (size_t i = n->n_attr; i-- > 0;)
		if (strcmp(n->attr[i]->key, key) == 0)
			return n->attr[i]->value;
	return NULL;
}

int prune_graph_consumers(prune_graph_t *g, prune_consumers_t *c, sd_error_t *e)
{
	size_t n = g->gd->n_node, edges = 0;
	for (size_t i = 0; i < n; i++)
		edges += g->gd->node[i]->n_input;
	c->off = arena_calloc(g->arena, n + 1, sizeof(*c->off));
	c->list = arena_calloc(g->arena, edges + 1, sizeof(*c->list));
	c->ctrl = arena_calloc(g->arena, edges + 1, sizeof(*c->ctrl));
	size_t *src = arena_calloc(g->arena, edges + 1, sizeof(*src));
	if (!c->off || !c->list || !c->ctrl || !src)
		return sd_err(e, SD_ENOMEM, "out of memory indexing consumers");
	/* Resolve every input once, count per producer, then place (counting sort). */
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		const Tensorflow__NodeDef *nd = g->gd->node[i];
		for (size_t j = 0; j < nd->n_input; j++, k++) {
			ptrdiff_t p = prune_graph_find_input(g, nd->input[j]);
			src[k] = p < 0 ? SIZE_MAX : (size_t)p;
			if (p >= 0)
				c->off[p + 1]++;
		}
	}
	for (size_t i = 0; i < n; i++)
		c->off[i + 1] += c->off[i];
	size_t *fill = arena_calloc(g->arena, n + 1, sizeof(*fill));
	if (!fill)
		return sd_err(e, SD_ENOMEM, "out of memory indexing consumers");
	k = 0;
	for (size_t i = 0; i < n; i++) {
		const Tensorflow__NodeDef *nd = g->gd->node[i];
		for (size_t j = 0; j < nd->n_input; j++, k++) {
			if (src[k] == SIZE_MAX)
				continue;
			size_t at = c->off[src[k]] + fill[src[k]]++;
			c->list[at] = i;
			c->ctrl[at] = nd->input[j][0] == '^';
		}
	}
	return 0;
}

/* ---- format detection ---- */

static bool looks_textual(const uint8_t *buf, size_t len)
{
	if (len == 0 || memchr(buf, 0, len))
		return false;
	/* A UTF-8 byte order mark (some editors write one), which pbtext skips too. */
	size_t i = len >= 3 && !memcmp(buf, "\xef\xbb\xbf", 3) ? 3 : 0;
	while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r'))
		i++;
	if (i == len)
		return false;
	unsigned char c = buf[i];
	return c == '#' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * Scores the top-level fields: > 0 leans MetaGraphDef, < 0 GraphDef. Stops at the first
 * malformed field; the real unpack reports the error.
 */
static int meta_score(const uint8_t *buf, size_t len)
{
	size_t pos = 0;
	int score = 0, ones = 0;
	while (pos < len) {
		uint64_t key, n;
		if (!pbwire_varint_get(buf, len, &pos, &key))
			break;
		unsigned field = (unsigned)(key >> 3), wire = key & 7;
		if (wire == 0) {
			if (!pbwire_varint_get(buf, len, &pos, &n))
				break;
			if (field == 3)
				score -= 4; /* GraphDef.version (deprecated int) */
			continue;
		}
		if (wire != 2 || !pbwire_varint_get(buf, len, &pos, &n) || n > len - pos)
			break;
		const uint8_t *payload = buf + pos;
		if (field == 1 && ++ones > 1)
			score -= 8;
		if (field == 3 || (field >= 5 && field <= 7))
			score += 4;
		if (field == 4 && n > 0)
			score += payload[0] == 0x0a ? 4 : -4;
		pos += n;
	}
	return score;
}

/* ---- loading ---- */

static int unpack_plain(prune_graph_t *g, const uint8_t *buf, size_t len, bool meta)
{
	ProtobufCAllocator pa = pbarena_allocator(g->arena);
	g->meta = NULL;
	if (meta) {
		g->meta = tensorflow__meta_graph_def__unpack(&pa, len, buf);
		g->gd = g->meta ? g->meta->graph_def : NULL;
		return g->meta ? 0 : -1;
	}
	g->gd = tensorflow__graph_def__unpack(&pa, len, buf);
	return g->gd ? 0 : -1;
}

/* The tensor a stripped payload belongs to, or NULL if the unpacked message does not
 * have the place the walk saw (then the caller unpacks the plain way). */
static Tensorflow__TensorProto *patch_site(prune_graph_t *g, const pbstrip_ref_t *r)
{
	if (r->node >= g->gd->n_node || r->attr >= g->gd->node[r->node]->n_attr)
		return NULL;
	Tensorflow__AttrValue *v = g->gd->node[r->node]->attr[r->attr]->value;
	if (!v || v->value_case != TENSORFLOW__ATTR_VALUE__VALUE_TENSOR ||
	    v->tensor->tensor_content.len)
		return NULL;
	return v->tensor;
}

/*
 * Unpacks without copying large weights: they stay where they are in buf (see
 * pbstrip). Falls back to protobuf-c's copying unpack when the walk disagrees.
 */
static int unpack_binary(prune_graph_t *g, const uint8_t *buf, size_t len, bool meta,
			 sd_error_t *e)
{
	int rc = pbwire_check_depth(meta ? &tensorflow__meta_graph_def__descriptor
				       : &tensorflow__graph_def__descriptor,
				  buf, len, SD_EMODEL, e);
	if (rc)
		return rc;
	uint8_t *small;
	size_t small_len, n_refs;
	pbstrip_ref_t *refs;
	rc = pbstrip_graph(buf, len, meta, g->arena, &small, &small_len, &refs, &n_refs, e);
	if (rc == SD_ENOMEM)
		return rc;
	if (rc == 0 && n_refs && unpack_plain(g, small, small_len, meta) == 0 && g->gd) {
		/* Every site is found before any is patched: a tensor may carry its
		 * tensor_content twice (the last one counts, as in protobuf), and once the
		 * first is patched the site no longer looks stripped. */
		Tensorflow__TensorProto **site = arena_calloc(g->arena, n_refs, sizeof(*site));
		if (!site)
			return sd_err(e, SD_ENOMEM, "out of memory reading the model");
		size_t i = 0;
		while (i < n_refs && (site[i] = patch_site(g, &refs[i])))
			i++;
		for (size_t k = 0; i == n_refs && k < n_refs; k++)
			site[k]->tensor_content =
				(ProtobufCBinaryData){refs[k].len, (uint8_t *)buf + refs[k].off};
		if (i == n_refs)
			return 0;
	}
	return unpack_plain(g, buf, len, meta);
}

static int validate_const(const Tensorflow__NodeDef *n,
			  size_t max_elems, sd_error_t *e)
{
	Tensorflow__AttrValue *v = prune_node_attr(n, "value");
	if (!v || v->value_case != TENSORFLOW__ATTR_VALUE__VALUE_TENSOR)
		return sd_err_node(e, SD_EMODEL, n->name, "Const node '%s' has no tensor 'value'",
				   n->name);
	const Tensorflow__TensorProto *t = v->tensor;
	size_t count;
	int rc = prune_shape_count(t->tensor_shape, max_elems, n->name, &count, e);
	if (rc)
		return rc;
	size_t esz = prune_dtype_size(t->dtype);
	if (!esz) {
		static const struct { int dt; size_t sz; } fixed[] = {
			{TENSORFLOW__DATA_TYPE__DT_INT32, 4}, {TENSORFLOW__DATA_TYPE__DT_INT64, 8},
			{TENSORFLOW__DATA_TYPE__DT_INT8, 1}, {TENSORFLOW__DATA_TYPE__DT_UINT8, 1},
			{TENSORFLOW__DATA_TYPE__DT_INT16, 2}, {TENSORFLOW__DATA_TYPE__DT_UINT16, 2},
			{TENSORFLOW__DATA_TYPE__DT_BOOL, 1}, {TENSORFLOW__DATA_TYPE__DT_UINT32, 4},
			{TENSORFLOW__DATA_TYPE__DT_UINT64, 8},
		};
		for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
			if (fixed[i].dt == (int)t->dtype)
				esz = fixed[i].sz;
	}
	if (esz && t->tensor_content.len && t->tensor_content.len / esz != count)
		return sd_err_node(e, SD_EMODEL, n->name,
				   "node '%s': tensor_content has %zu bytes but its shape "
				   "holds %zu elements of %s (%zu bytes)",
				   n->name, t->tensor_content.len, count,
				   prune_dtype_name(t->dtype), count * esz);
	if (esz && t->tensor_content.len % esz)
		return sd_err_node(e, SD_EMODEL, n->name,
				   "node '%s': tensor_content length %zu is not a multiple of %zu",
				   n->name, t->tensor_content.len, esz);
	return 0;
}

static int validate(prune_graph_t *g, size_t max_elems, sd_error_t *e)
{
	int rc = index_build(g, g->gd->n_node, e);
	if (rc)
		return rc;
	for (size_t i = 0; i < g->gd->n_node; i++) {
		Tensorflow__NodeDef *n = g->gd->node[i];
		if (!n->name || !n->name[0])
			return sd_err(e, SD_EMODEL, "node %zu has no name", i);
		if (!n->op || !n->op[0])
			return sd_err_node(e, SD_EMODEL, n->name, "node '%s' has no op", n->name);
		for (size_t k = 0; k < n->n_input; k++) {
			prune_input_t in;
			if (prune_input_parse(n->input[k], &in, e)) {
				sd_err_prefix(e, "node '%s' input %zu", n->name, k);
				snprintf(e->node, sizeof(e->node), "%s", n->name);
				return SD_EMODEL;
			}
			if (prune_graph_find(g, in.name, in.len) < 0)
				return sd_err_node(e, SD_EMODEL, n->name,
						   "node '%s' input %zu names missing node '%.*s'",
						   n->name, k, (int)in.len, in.name);
		}
		if (strcmp(n->op, "Const") == 0 && (rc = validate_const(n, max_elems, e)))
			return rc;
	}
	return 0;
}

int prune_graph_load(const uint8_t *buf, size_t len, const char *file, prune_format_t fmt,
		     size_t max_elems, arena_t *a, prune_graph_t **out, sd_error_t *e)
{
	if (len > PRUNE_MODEL_MAX)
		return sd_err(e, SD_ETOOBIG,
			      "%s: %zu bytes is over protobuf's 2 GiB message limit", file, len);
	prune_graph_t *g = arena_calloc(a, 1, sizeof(*g));
	if (!g)
		return sd_err(e, SD_ENOMEM, "out of memory");
	g->arena = a;
	g->stated = fmt != PRUNE_FMT_AUTO;
	if (fmt == PRUNE_FMT_AUTO) {
		if (len == 0)
			return sd_err(e, SD_EMODEL, "%s: empty file is not a model", file);
		fmt = looks_textual(buf, len) ? PRUNE_FMT_PBTXT
		      : meta_score(buf, len) > 0 ? PRUNE_FMT_METAGRAPH
						 : PRUNE_FMT_GRAPHDEF;
	}
	g->format = fmt;
	if (fmt == PRUNE_FMT_PBTXT) {
		pbtext_opts_t o = {.filename = file, .err_code = SD_EMODEL};
		ProtobufCMessage *m;
		int rc = pbtext_parse(&tensorflow__graph_def__descriptor, (const char *)buf, len,
				      a, &o, &m, e);
		if (rc)
			return rc;
		g->gd = (Tensorflow__GraphDef *)m;
	} else {
		bool meta = fmt == PRUNE_FMT_METAGRAPH;
		sd_error_t first;
		sd_err_clear(&first);
		int rc = unpack_binary(g, buf, len, meta, &first);
		if (rc == SD_ENOMEM)
			return sd_err(e, rc, "%s", first.msg);
		if (!g->stated && (rc || !g->gd || g->gd->n_node == 0)) {
			/* The heuristic guessed wrong only if the other reading has nodes. */
			prune_graph_t alt = *g;
			sd_error_t ignored;
			if (unpack_binary(&alt, buf, len, !meta, &ignored) == 0 && alt.gd &&
			    alt.gd->n_node) {
				*g = alt;
				g->format = meta ? PRUNE_FMT_GRAPHDEF : PRUNE_FMT_METAGRAPH;
				rc = 0;
			}
		}
		if (rc == SD_EMODEL)
			return sd_err(e, rc, "%s: %s %s", file, meta ? "MetaGraphDef" : "GraphDef",
				      first.msg);
		if (rc)
			return sd_err(e, SD_EMODEL,
				      "%s: not a valid binary %s (truncated or not a TensorFlow "
				      "model)",
				      file, meta ? "MetaGraphDef" : "GraphDef");
		if (!g->gd)
			return sd_err(e, SD_EMODEL, "%s: MetaGraphDef has no graph_def", file);
	}
	if (g->gd->n_node == 0)
		return sd_err(e, SD_EMODEL, "%s: the %s has no nodes", file,
			      prune_format_name(g->format));
	g->node_cap = g->gd->n_node;
	int rc = validate(g, max_elems, e);
	if (rc) {
		if (e && !strstr(e->msg, file))
			sd_err_prefix(e, "%s", file);
		return rc;
	}
	*out = g;
	return 0;
}

/* ---- editing ---- */

int prune_graph_reserve(prune_graph_t *g, size_t extra, sd_error_t *e)
{
	Tensorflow__GraphDef *gd = g->gd;
	size_t want = gd->n_node + extra;
	if (want > g->node_cap) {
		Tensorflow__NodeDef **nn = arena_grow(g->arena, gd->node, gd->n_node, want,
						      sizeof(*nn));
		if (!nn)
			return sd_err(e, SD_ENOMEM, "out of memory growing the graph");
		gd->node = nn;
		g->node_cap = want;
	}
	return index_fits(g->nslots, want) ? 0 : index_grow(g, want, e);
}

/* Appends the node s describes, with room for it in the index; not indexed yet. */
static Tensorflow__NodeDef *append(prune_graph_t *g, const prune_node_spec_t *s, sd_error_t *e)
{
	Tensorflow__GraphDef *gd = g->gd;
	if (gd->n_node == g->node_cap) {
		size_t cap = g->node_cap ? g->node_cap * 2 : 16;
		Tensorflow__NodeDef **nn = arena_grow(g->arena, gd->node, gd->n_node, cap,
						      sizeof(*nn));
		if (!nn)
			goto nomem;
		gd->node = nn;
		g->node_cap = cap;
	}
	if (!index_fits(g->nslots, gd->n_node + 1) && index_grow(g, 2 * (gd->n_node + 1), e))
		return NULL;
	/* Layout: node, attr entries, attr pointers, input pointers (all pointer-aligned). */
	Tensorflow__NodeDef *n =
		arena_alloc(g->arena, sizeof(*n) + s->n_attrs * (sizeof(*n->attr[0]) +
								  sizeof(n->attr[0])) +
					      s->n_inputs * sizeof(*n->input));
	if (!n)
		goto nomem;
	tensorflow__node_def__init(n);
	n->name = (char *)s->name;
	n->op = (char *)s->op;
	if (s->device)
		n->device = (char *)s->device;
	Tensorflow__NodeDef__AttrEntry *ents = (Tensorflow__NodeDef__AttrEntry *)(n + 1);
	n->attr = (Tensorflow__NodeDef__AttrEntry **)(ents + s->n_attrs);
	n->input = (char **)(n->attr + s->n_attrs);
	for (size_t i = 0; i < s->n_attrs; i++) {
		tensorflow__node_def__attr_entry__init(&ents[i]);
		ents[i].key = (char *)s->attrs[i].key;
		ents[i].value = s->attrs[i].value;
		n->attr[i] = &ents[i];
	}
	n->n_attr = s->n_attrs;
	if (s->n_inputs)
		memcpy(n->input, s->inputs, s->n_inputs * sizeof(*n->input));
	n->n_input = s->n_inputs;
	gd->node[gd->n_node++] = n;
	return n;
nomem:
	sd_err(e, SD_ENOMEM, "out of memory adding node '%s'", s->name);
	return NULL;
}

Tensorflow__NodeDef *prune_graph_add(prune_graph_t *g, const prune_node_spec_t *s,
				     sd_error_t *e)
{
	if (prune_graph_find(g, s->name, strlen(s->name)) >= 0) {
		sd_err_node(e, SD_EMODEL, s->name, "node name '%s' is already taken", s->name);
		return NULL;
	}
	return append(g, s, e);
}

Tensorflow__NodeDef *prune_graph_add_new(prune_graph_t *g, const prune_node_spec_t *s,
					 sd_error_t *e)
{
	return append(g, s, e);
}

int prune_graph_remove(prune_graph_t *g, const bool *remove, sd_error_t *e)
{
	Tensorflow__GraphDef *gd = g->gd;
	size_t w = 0;
	for (size_t i = 0; i < gd->n_node; i++)
		if (!remove[i])
			gd->node[w++] = gd->node[i];
	gd->n_node = w;
	return index_build(g, w, e);
}

/* ---- saving ---- */

int prune_graph_mask_on_save(prune_graph_t *g, Tensorflow__TensorProto *tp, int dtype,
			     const uint8_t *bits, sd_error_t *e)
{
	pending_t *p = arena_alloc(g->arena, sizeof(*p));
	if (p && g->n_pending == g->pending_cap) {
		size_t cap = g->pending_cap ? 2 * g->pending_cap : 64;
		pending_t **arr = arena_grow(g->arena, g->pending, g->n_pending, cap, sizeof(*arr));
		if (!arr)
			p = NULL;
		else {
			g->pending = arr;
			g->pending_cap = cap;
		}
	}
	if (!p)
		return sd_err(e, SD_ENOMEM, "out of memory");
	*p = (pending_t){tp, tp->tensor_content.data, bits, dtype, NULL, 0, NULL};
	g->pending[g->n_pending++] = p;
	return 0;
}

void prune_graph_mask_later(prune_graph_t *g, struct prune_mask_run *run, size_t job)
{
	sd_require(g->n_pending > 0);
	pending_t *p = g->pending[g->n_pending - 1];
	p->run = run;
	p->job = job;
	p->mj = prune_mask_run_job(run, job);
}

void prune_graph_masks_final(prune_graph_t *g)
{
	for (size_t i = 0; i < g->n_pending; i++)
		g->pending[i]->run = NULL;
}

static void fill_masked(const void *ud, uint8_t *out, size_t off, size_t n)
{
	const pending_t *p = ud;
	size_t es = prune_dtype_size(p->dtype);
	if (p->run) {
		prune_mask_run_fill(p->run, p->job, p->src + off, off / es, n / es, out);
	} else if (p->mj && p->mj->at_save) { /* counted at the run's end: not again */
		prune_mask_counts_t c = {0, 0};
		(void)prune_mask_2of4_apply(p->mj->w, p->mj->axis, off / es, n / es, out, &c);
	} else {
		prune_mask_apply_bits(p->dtype, p->src + off, out, p->bits, off / es, n / es);
	}
}

int prune_graph_materialize(prune_graph_t *g, sd_error_t *e)
{
	for (size_t i = 0; i < g->n_pending; i++) {
		pending_t *p = g->pending[i];
		size_t len = p->tp->tensor_content.len;
		uint8_t *copy = arena_alloc(g->arena, len ? len : 1);
		if (!copy)
			return sd_err(e, SD_ENOMEM, "out of memory applying masks");
		for (size_t off = 0; off < len; off += PBWIRE_FILL_STEP)
			fill_masked(p, copy + off, off,
				    len - off < PBWIRE_FILL_STEP ? len - off : PBWIRE_FILL_STEP);
		p->tp->tensor_content.data = copy;
	}
	g->n_pending = 0;
	return 0;
}

int prune_graph_save(prune_graph_t *g, prune_format_t fmt, FILE *f, sd_error_t *e)
{
	if (fmt == PRUNE_FMT_AUTO)
		fmt = g->format;
	if (fmt == PRUNE_FMT_METAGRAPH && !g->meta)
		return sd_err(e, SD_EUSAGE, "a GraphDef cannot be saved as a MetaGraphDef");
	if (fmt == PRUNE_FMT_PBTXT) {
		int rc = prune_graph_materialize(g, e);
		return rc ? rc : pbtext_write(&g->gd->base, f, e);
	}
	pbwire_fill_t *fills = g->n_pending ? malloc(g->n_pending * sizeof(*fills)) : NULL;
	if (g->n_pending && !fills)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < g->n_pending; i++)
		fills[i] = (pbwire_fill_t){&g->pending[i]->tp->tensor_content, fill_masked,
					   g->pending[i]};
	int rc = pbwire_write(fmt == PRUNE_FMT_METAGRAPH ? &g->meta->base : &g->gd->base, fills,
			      g->n_pending, f, e);
	free(fills);
	return rc;
}
