/*
 * pbstrip: strips large tensor payloads from a binary model (see pbstrip.h).
 *
 * The walk knows only the path to the payloads: MetaGraphDef.graph_def (2) ->
 * GraphDef.node (1) -> NodeDef.attr (5) -> entry.value (2) -> AttrValue.tensor (8) ->
 * TensorProto.tensor_content (4). Every other field is copied verbatim. A message on
 * the path is sized first (a walk that skips payloads without reading them) and then
 * written with its new length, so the output is canonical protobuf that any decoder
 * reads. Work is proportional to the model's non-weight bytes.
 */
#include "proto/pbstrip.h"

#include <string.h>

#include "proto/pbwire.h"

enum level { L_META, L_GRAPH, L_NODE, L_ENTRY, L_VALUE, L_TENSOR };

/* The field number that leads one level down, per level. */
static const unsigned down[] = {2, 1, 5, 2, 8, 4};

typedef struct walk {
	const uint8_t *base;
	uint8_t *out;      /* NULL while sizing */
	size_t pos;
	pbstrip_ref_t *refs;
	size_t n_refs, cap_refs;
	size_t node, attr; /* ordinals of the current node and attr entry */
	arena_t *a;
	bool oom;
} walk_t;

static void put_varint(walk_t *w, uint64_t v)
{
	w->pos += w->out ? pbwire_varint_put(w->out + w->pos, v) : pbwire_varint_size(v);
}

static void put_bytes(walk_t *w, const uint8_t *p, size_t n)
{
	if (w->out)
		memcpy(w->out + w->pos, p, n);
	w->pos += n;
}

static void add_ref(walk_t *w, size_t off, size_t len)
{
	if (!w->out)
		return; /* refs are recorded once, in the writing pass */
	if (w->n_refs == w->cap_refs) {
		size_t cap = w->cap_refs ? 2 * w->cap_refs : 64;
		pbstrip_ref_t *r = arena_grow(w->a, w->refs, w->n_refs, cap, sizeof(*r));
		if (!r) {
			w->oom = true;
			return;
		}
		w->refs = r;
		w->cap_refs = cap;
	}
	w->refs[w->n_refs++] = (pbstrip_ref_t){w->node, w->attr, off, len};
}

static int walk(walk_t *w, enum level lv, const uint8_t *p, size_t len);

/* Size of message p[0..len) at level lv once stripped. */
static int stripped_size(walk_t *w, enum level lv, const uint8_t *p, size_t len, size_t *size)
{
	walk_t s = *w;
	s.out = NULL;
	s.pos = 0;
	int rc = walk(&s, lv, p, len);
	*size = s.pos;
	return rc;
}

/*
 * A message on the path that holds the way down more than once, or (an AttrValue)
 * beside another member of its oneof, is merged by protobuf in ways a ref cannot follow:
 * tensor{content}, s, tensor{shape} leaves an empty tensor, and the loader would patch
 * the stripped content back into it. Such a walk gives up; the caller then unpacks the
 * plain way. Only an entry and an AttrValue can hold a tensor's place twice: a graph's
 * nodes and a node's attrs are repeated, and a tensor's repeated content is patched
 * last-wins.
 */
static bool ambiguous(enum level lv, unsigned downs, unsigned others)
{
	return (lv == L_ENTRY || lv == L_VALUE) && (downs > 1 || (lv == L_VALUE && downs && others));
}

static int walk(walk_t *w, enum level lv, const uint8_t *p, size_t len)
{
	size_t at = 0;
	unsigned downs = 0, others = 0;
	while (at < len) {
		size_t start = at;
		uint64_t key, v;
		/* Field number 0 does not exist (a file of zeros would otherwise be walked and
		 * copied whole before protobuf-c refused it). */
		if (!pbwire_varint_get(p, len, &at, &key) || key >> 3 == 0)
			return -1;
		unsigned field = (unsigned)(key >> 3), wire = key & 7;
		if (field == down[lv])
			downs += downs < 2;
		else
			others += others < 1;
		switch (wire) {
		case 0:
			if (!pbwire_varint_get(p, len, &at, &v))
				return -1;
			break;
		case 1:
			if (len - at < 8)
				return -1;
			at += 8;
			break;
		case 5:
			if (len - at < 4)
				return -1;
			at += 4;
			break;
		case 2: {
			if (!pbwire_varint_get(p, len, &at, &v) || v > len - at)
				return -1;
			const uint8_t *payload = p + at;
			at += v;
			if (field != down[lv])
				break;
			if (lv == L_TENSOR) {
				if (v >= PBSTRIP_MIN_BYTES) {
					add_ref(w, (size_t)(payload - w->base), v);
					continue; /* dropped from the output */
				}
				break;
			}
			size_t sz;
			if (stripped_size(w, lv + 1, payload, v, &sz))
				return -1;
			put_varint(w, key);
			put_varint(w, sz);
			if (!w->out)
				w->pos += sz; /* sizing: the child was just walked */
			else if (walk(w, lv + 1, payload, v))
				return -1;
			if (lv == L_GRAPH) {
				w->node++;
				w->attr = 0;
			} else if (lv == L_NODE) {
				w->attr++;
			}
			continue;
		}
		default:
			return -1; /* groups are not used by TensorFlow's schema */
		}
		put_bytes(w, p + start, at - start);
		if (lv == L_GRAPH && field == 1) {
			w->node++;
			w->attr = 0;
		} else if (lv == L_NODE && field == 5) {
			w->attr++;
		}
	}
	return ambiguous(lv, downs, others) ? -1 : 0;
}

int pbstrip_graph(const uint8_t *buf, size_t len, bool meta, arena_t *a, uint8_t **out,
		  size_t *out_len, pbstrip_ref_t **refs, size_t *n_refs, sd_error_t *e)
{
	walk_t w = {.base = buf, .a = a};
	enum level top = meta ? L_META : L_GRAPH;
	size_t size;
	if (stripped_size(&w, top, buf, len, &size))
		return PBSTRIP_MALFORMED;
	w.out = arena_alloc(a, size ? size : 1);
	if (!w.out)
		return sd_err(e, SD_ENOMEM, "out of memory reading the model");
	if (walk(&w, top, buf, len) || w.pos != size)
		return PBSTRIP_MALFORMED;
	if (w.oom)
		return sd_err(e, SD_ENOMEM, "out of memory reading the model");
	*out = w.out;
	*out_len = size;
	*refs = w.refs;
	*n_refs = w.n_refs;
	return 0;
}
