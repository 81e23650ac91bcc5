/*
 * pbmutate: a structure-aware libFuzzer mutator for binary protobuf inputs (fuzz_graph).
 *
 * Byte 0 of an input is the target's selector and is never changed; the rest is parsed
 * as a protobuf wire-format tree. A length-delimited field is taken for a submessage
 * when its payload parses completely as wire format (fields 1..2^29-1, wire types 0, 1,
 * 2, 5, every length in bounds); otherwise it stays an opaque byte string. Nothing
 * here recurses: the tree is an array of nodes linked by index, parsed breadth-first in
 * array order, measured and written with explicit stacks, so inputs nested tens of
 * thousands of levels deep are handled like flat ones.
 *
 * Mutations (one to three per call, then re-encoded with correct lengths):
 *   duplicate a field (once or many times), delete one, swap or shuffle siblings,
 *   wrap a submessage in a copy of itself, grow a chain (repeat the path from a message
 *   to a same-numbered descendant up to 20000 times), build TensorFlow's own recursion
 *   thousands deep (AttrValue.func -> NameAttrList.attr -> entry.value -> AttrValue ...,
 *   or via AttrValue.list.func), transplant a subtree elsewhere, set a number to an
 *   edge value (0, 1, 2^31-1, 2^32, 2^63, 10^12, NaN, ...), change a wire type or a
 *   field number, copy one string over another (so inputs name existing nodes), mutate
 *   a string's bytes with libFuzzer, truncate a string, a field list or the output.
 * A quarter of the calls, and every input that is not wire format (text models), get
 * libFuzzer's own byte-level mutation of bytes 1.. instead.
 *
 * The output never exceeds max_size: the new encoding is measured before it is written.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pbmutate.h"

#define MAX_NODES ((size_t)1 << 20)
#define MAX_FIELD ((1u << 29) - 1)
#define NIL (-1)

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

typedef struct pnode {
	uint32_t field;
	uint8_t wt;
	bool msg;            /* WT_LEN holding a message: the children are its fields */
	uint64_t val;        /* WT_VARINT value, or the WT_I64 / WT_I32 bits */
	const uint8_t *raw;  /* WT_LEN payload when !msg */
	size_t rawlen;
	int32_t first, last; /* children */
	int32_t next;        /* next sibling */
	int32_t parent;      /* NIL for a root or a detached node */
	uint64_t size;       /* payload size of a message, set by measure() */
} pnode_t;

typedef struct tree {
	pnode_t *n;
	size_t count, cap;
	uint8_t **bufs; /* payloads made by mutations, freed with the tree */
	size_t nbufs, capbufs;
	int32_t *list;  /* scratch: nodes collected by collect() */
	size_t nlist, caplist;
} tree_t;

typedef struct rng {
	uint64_t s;
} rng_t;

static uint64_t rnd(rng_t *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static size_t below(rng_t *r, size_t n)
{
	return n ? (size_t)(rnd(r) % n) : 0;
}

static bool chance(rng_t *r, unsigned one_in)
{
	return below(r, one_in) == 0;
}

/* ---- tree storage ---- */

static void tree_free(tree_t *t)
{
	for (size_t i = 0; i < t->nbufs; i++)
		free(t->bufs[i]);
	free(t->bufs);
	free(t->n);
	free(t->list);
	memset(t, 0, sizeof(*t));
}

static int32_t node_new(tree_t *t)
{
	if (t->count >= MAX_NODES)
		return NIL;
	if (t->count == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 256;
		pnode_t *n = realloc(t->n, cap * sizeof(*n));
		if (!n)
			return NIL;
		t->n = n;
		t->cap = cap;
	}
	int32_t i = (int32_t)t->count++;
	t->n[i] = (pnode_t){.first = NIL, .last = NIL, .next = NIL, .parent = NIL};
	return i;
}

static uint8_t *buf_new(tree_t *t, size_t n)
{
	if (t->nbufs == t->capbufs) {
		size_t cap = t->capbufs ? 2 * t->capbufs : 16;
		uint8_t **b = realloc(t->bufs, cap * sizeof(*b));
		if (!b)
			return NULL;
		t->bufs = b;
		t->capbufs = cap;
	}
	uint8_t *p = malloc(n ? n : 1);
	if (p)
		t->bufs[t->nbufs++] = p;
	return p;
}

static bool list_push(tree_t *t, int32_t x)
{
	if (t->nlist == t->caplist) {
		size_t cap = t->caplist ? 2 * t->caplist : 256;
		int32_t *l = realloc(t->list, cap * sizeof(*l));
		if (!l)
			return false;
		t->list = l;
		t->caplist = cap;
	}
	t->list[t->nlist++] = x;
	return true;
}

/* ---- links ---- */

static void append_child(tree_t *t, int32_t p, int32_t c)
{
	t->n[c].parent = p;
	t->n[c].next = NIL;
	if (t->n[p].last == NIL)
		t->n[p].first = c;
	else
		t->n[t->n[p].last].next = c;
	t->n[p].last = c;
}

static int32_t prev_sibling(const tree_t *t, int32_t x)
{
	int32_t p = t->n[x].parent, prev = NIL;
	for (int32_t c = t->n[p].first; c != NIL && c != x; c = t->n[c].next)
		prev = c;
	return prev;
}

/* Puts c right after `after` among p's children (at the front when after is NIL). */
static void insert_after(tree_t *t, int32_t p, int32_t after, int32_t c)
{
	t->n[c].parent = p;
	if (after == NIL) {
		t->n[c].next = t->n[p].first;
		t->n[p].first = c;
	} else {
		t->n[c].next = t->n[after].next;
		t->n[after].next = c;
	}
	if (t->n[c].next == NIL)
		t->n[p].last = c;
}

static void unlink_node(tree_t *t, int32_t x)
{
	int32_t p = t->n[x].parent, prev = prev_sibling(t, x);
	if (prev == NIL)
		t->n[p].first = t->n[x].next;
	else
		t->n[prev].next = t->n[x].next;
	if (t->n[p].last == x)
		t->n[p].last = prev;
	t->n[x].parent = NIL;
	t->n[x].next = NIL;
}

/* Puts detached node y where x is; x is left detached. */
static void replace_node(tree_t *t, int32_t x, int32_t y)
{
	int32_t p = t->n[x].parent, prev = prev_sibling(t, x);
	unlink_node(t, x);
	insert_after(t, p, prev, y);
}

/* Inserts detached c at a random place among p's children. */
static void insert_random(tree_t *t, rng_t *r, int32_t p, int32_t c)
{
	size_t k = 0;
	for (int32_t x = t->n[p].first; x != NIL; x = t->n[x].next)
		k++;
	size_t at = below(r, k + 1);
	int32_t after = NIL;
	for (int32_t x = t->n[p].first; at > 0; x = t->n[x].next, at--)
		after = x;
	insert_after(t, p, after, c);
}

/* ---- wire format ---- */

static bool get_varint(const uint8_t *p, size_t n, size_t *pos, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned i = 0; i < 10; i++) {
		if (*pos >= n)
			return false;
		uint8_t b = p[(*pos)++];
		x |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*v = x;
			return true;
		}
	}
	return false;
}

static size_t varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* Counts the fields of p[0..n) if it is a complete message, else returns false. */
static bool scan(const uint8_t *p, size_t n, size_t *count)
{
	size_t pos = 0, c = 0;
	while (pos < n) {
		uint64_t key, v;
		if (!get_varint(p, n, &pos, &key))
			return false;
		uint64_t field = key >> 3;
		if (field == 0 || field > MAX_FIELD)
			return false;
		switch (key & 7) {
		case WT_VARINT:
			if (!get_varint(p, n, &pos, &v))
				return false;
			break;
		case WT_I64:
			if (n - pos < 8)
				return false;
			pos += 8;
			break;
		case WT_I32:
			if (n - pos < 4)
				return false;
			pos += 4;
			break;
		case WT_LEN:
			if (!get_varint(p, n, &pos, &v) || v > n - pos)
				return false;
			pos += (size_t)v;
			break;
		default:
			return false;
		}
		c++;
	}
	*count = c;
	return true;
}

static uint64_t load_le(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Turns the raw payload of x into children if it is a message (and the budget allows). */
static void expand(tree_t *t, int32_t x)
{
	size_t count;
	const uint8_t *p = t->n[x].raw;
	size_t n = t->n[x].rawlen, pos = 0;
	if (!scan(p, n, &count) || t->count + count > MAX_NODES)
		return;
	t->n[x].msg = true;
	t->n[x].raw = NULL;
	t->n[x].rawlen = 0;
	while (pos < n) {
		uint64_t key, v = 0;
		get_varint(p, n, &pos, &key);
		int32_t c = node_new(t);
		if (c == NIL)
			return; /* cannot happen: the budget was checked */
		pnode_t *cn = &t->n[c];
		cn->field = (uint32_t)(key >> 3);
		cn->wt = (uint8_t)(key & 7);
		switch (cn->wt) {
		case WT_VARINT:
			get_varint(p, n, &pos, &cn->val);
			break;
		case WT_I64:
			cn->val = load_le(p + pos, 8);
			pos += 8;
			break;
		case WT_I32:
			cn->val = load_le(p + pos, 4);
			pos += 4;
			break;
		default:
			get_varint(p, n, &pos, &v);
			cn->raw = p + pos;
			cn->rawlen = (size_t)v;
			pos += (size_t)v;
			break;
		}
		append_child(t, x, c);
	}
}

/* Parses p[0..n) as a message; returns its root node, or NIL if it is not wire format. */
static int32_t parse(tree_t *t, const uint8_t *p, size_t n)
{
	size_t start = t->count;
	int32_t root = node_new(t);
	if (root == NIL)
		return NIL;
	t->n[root].wt = WT_LEN;
	t->n[root].raw = p;
	t->n[root].rawlen = n;
	expand(t, root);
	if (!t->n[root].msg)
		return NIL;
	/* Children are appended behind their parent, so one pass in array order is a
	 * breadth-first walk of every level. */
	for (size_t i = start + 1; i < t->count; i++)
		if (t->n[i].wt == WT_LEN && t->n[i].rawlen)
			expand(t, (int32_t)i);
	return root;
}

/* Collects x's subtree in pre-order into t->list (x included when with_root). */
static bool collect(tree_t *t, int32_t x, bool with_root)
{
	t->nlist = 0;
	if (!list_push(t, x))
		return false;
	for (size_t i = 0; i < t->nlist; i++) {
		int32_t y = t->list[i];
		for (int32_t c = t->n[y].first; c != NIL; c = t->n[c].next)
			if (!list_push(t, c))
				return false;
	}
	if (!with_root) {
		t->list[0] = t->list[--t->nlist];
	}
	return true;
}

static uint64_t field_size(const tree_t *t, int32_t c)
{
	const pnode_t *n = &t->n[c];
	uint64_t s = varint_size(((uint64_t)n->field << 3) | n->wt);
	switch (n->wt) {
	case WT_VARINT: return s + varint_size(n->val);
	case WT_I64: return s + 8;
	case WT_I32: return s + 4;
	default: {
		uint64_t len = n->msg ? n->size : n->rawlen;
		return s + varint_size(len) + len;
	}
	}
}

/* Sets size of every message in x's subtree; returns x's payload size, or UINT64_MAX. */
static uint64_t measure(tree_t *t, int32_t x)
{
	if (!collect(t, x, true))
		return UINT64_MAX;
	/* Every node comes after its parent in the list: sum children first. */
	for (size_t i = t->nlist; i-- > 0;) {
		int32_t y = t->list[i];
		if (!t->n[y].msg)
			continue;
		uint64_t s = 0;
		for (int32_t c = t->n[y].first; c != NIL; c = t->n[c].next)
			s += field_size(t, c);
		t->n[y].size = s;
	}
	return t->n[x].size;
}

/* Writes the fields of message x (measured) to out; returns the end. */
static uint8_t *encode(tree_t *t, int32_t x, uint8_t *out)
{
	t->nlist = 0;
	if (!list_push(t, t->n[x].first))
		return NULL;
	while (t->nlist) {
		int32_t c = t->list[t->nlist - 1];
		if (c == NIL) {
			t->nlist--;
			continue;
		}
		t->list[t->nlist - 1] = t->n[c].next;
		const pnode_t *n = &t->n[c];
		out = put_varint(out, ((uint64_t)n->field << 3) | n->wt);
		switch (n->wt) {
		case WT_VARINT:
			out = put_varint(out, n->val);
			break;
		case WT_I64:
		case WT_I32:
			for (unsigned i = 0; i < (n->wt == WT_I64 ? 8u : 4u); i++)
				*out++ = (uint8_t)(n->val >> (8 * i));
			break;
		default:
			if (n->msg) {
				out = put_varint(out, n->size);
				if (!list_push(t, t->n[c].first))
					return NULL;
			} else {
				out = put_varint(out, n->rawlen);
				if (n->rawlen)
					memcpy(out, n->raw, n->rawlen);
				out += n->rawlen;
			}
		}
	}
	return out;
}

/* ---- copies ---- */

static int32_t copy_header(tree_t *t, int32_t s)
{
	int32_t d = node_new(t);
	if (d == NIL)
		return NIL;
	t->n[d] = t->n[s];
	t->n[d].first = t->n[d].last = t->n[d].next = t->n[d].parent = NIL;
	return d;
}

/* A detached deep copy of s, or NIL when the node budget runs out. */
static int32_t deep_copy(tree_t *t, int32_t s)
{
	int32_t root = copy_header(t, s);
	if (root == NIL)
		return NIL;
	/* Pairs (source, copy) in a queue; the copy is detached until complete, so a
	 * subtree copied into itself never sees its own new nodes. */
	size_t qcap = 64, qh = 0, qt = 0;
	int32_t *q = malloc(qcap * 2 * sizeof(*q));
	if (!q)
		return NIL;
	q[0] = s;
	q[1] = root;
	qt = 1;
	while (qh < qt) {
		int32_t src = q[2 * qh], dst = q[2 * qh + 1];
		qh++;
		for (int32_t c = t->n[src].first; c != NIL; c = t->n[c].next) {
			int32_t d = copy_header(t, c);
			if (d == NIL) {
				free(q);
				return NIL;
			}
			append_child(t, dst, d);
			if (!t->n[c].msg)
				continue;
			if (qt == qcap) {
				int32_t *nq = realloc(q, qcap * 4 * sizeof(*q));
				if (!nq) {
					free(q);
					return NIL;
				}
				q = nq;
				qcap *= 2;
			}
			q[2 * qt] = c;
			q[2 * qt + 1] = d;
			qt++;
		}
	}
	free(q);
	t->n[root].parent = NIL;
	return root;
}

/* ---- picking ---- */

typedef bool (*pick_fn)(const tree_t *t, int32_t x);

static bool is_any(const tree_t *t, int32_t x)
{
	(void)t;
	(void)x;
	return true;
}

static bool is_msg(const tree_t *t, int32_t x)
{
	return t->n[x].msg;
}

static bool is_leaf(const tree_t *t, int32_t x)
{
	return !t->n[x].msg;
}

static bool is_string(const tree_t *t, int32_t x)
{
	return t->n[x].wt == WT_LEN && !t->n[x].msg;
}

static bool has_children(const tree_t *t, int32_t x)
{
	return t->n[x].msg && t->n[x].first != NIL;
}

/* A random node of root's subtree (root itself only when with_root) passing f. */
static int32_t pick(tree_t *t, rng_t *r, int32_t root, bool with_root, pick_fn f)
{
	if (!collect(t, root, with_root) || t->nlist == 0)
		return NIL;
	/* Try a few uniform draws, then scan from a random start. */
	for (int i = 0; i < 8; i++) {
		int32_t x = t->list[below(r, t->nlist)];
		if (f(t, x))
			return x;
	}
	size_t start = below(r, t->nlist);
	for (size_t i = 0; i < t->nlist; i++) {
		int32_t x = t->list[(start + i) % t->nlist];
		if (f(t, x))
			return x;
	}
	return NIL;
}

/* ---- edge values ---- */

static const uint64_t edge_ints[] = {
	0, 1, 2, 3, 4, 7, 8, 16, 127, 128, 255, 256, 0x7fff, 0x8000, 0xffff, 0x10000,
	0x7fffffffULL, 0x80000000ULL, 0xffffffffULL, 0x100000000ULL, 0x100000001ULL,
	1ULL << 53, 1ULL << 62, 0x7fffffffffffffffULL, 0x8000000000000000ULL,
	0xffffffffffffffffULL, 0xfffffffffffffffeULL, 0xffffffff80000000ULL,
	1000000000000ULL, 1000000000000000ULL, 1000000000000000000ULL, (1ULL << 29) - 1,
	(1ULL << 32) / 4, (1ULL << 32) + 4, 19, 14, 20, 101, 1000,
};

static const uint64_t edge_doubles[] = {
	0x0000000000000000ULL, 0x8000000000000000ULL, 0x3ff0000000000000ULL,
	0xbff0000000000000ULL, 0x7ff8000000000000ULL, 0xfff8000000000001ULL,
	0x7ff0000000000000ULL, 0xfff0000000000000ULL, 0x7fefffffffffffffULL,
	0x0000000000000001ULL, 0x426d1a94a2000000ULL, /* 1e12 */
};

static const uint32_t edge_floats[] = {
	0x00000000u, 0x80000000u, 0x3f800000u, 0xbf800000u, 0x7fc00000u, 0xffc00001u,
	0x7f800000u, 0xff800000u, 0x7f7fffffu, 0x00000001u, 0x5368d4a5u, /* 1e12 */
};

/* Strings the model code looks for: ops, attrs, dtypes' names, suffixes. */
static const char *const edge_strings[] = {
	"", "MatMul", "Conv2D", "Conv2DBackpropInput", "Const", "Identity",
	"ReadVariableOp", "VariableV2", "VarHandleOp", "Placeholder", "NoOp", "value",
	"dtype", "T", "transpose_a", "transpose_b", "shape", "strides", "padding",
	"data_format", "NHWC", "NCHW", "SAME", "^", ":", ":1", ":-1", ":99999999999", "x:0",
	"sparsityd", "/sparsityd/masked_weight", "w/sparsityd/masked_weight", "_class",
	"loc:@", "\xff\xfe", "a\0b",
};

static uint64_t edge_int(rng_t *r, uint64_t old)
{
	switch (below(r, 6)) {
	case 0: return old + 1;
	case 1: return old - 1;
	case 2: return old ^ (1ULL << below(r, 64));
	case 3: return old * 2;
	default: return edge_ints[below(r, sizeof(edge_ints) / sizeof(edge_ints[0]))];
	}
}

/* ---- mutations ---- */

typedef struct mctx {
	tree_t *t;
	rng_t *r;
	int32_t root;
	size_t budget; /* payload bytes a mutation may grow the root to (soft) */
	size_t hard;   /* max payload bytes of the root (max_size - 1): chains only */
} mctx_t;

static uint64_t cur_size(mctx_t *m)
{
	return measure(m->t, m->root);
}

static bool m_duplicate(mctx_t *m)
{
	tree_t *t = m->t;
	int32_t x = pick(t, m->r, m->root, false, is_any);
	if (x == NIL)
		return false;
	size_t times = chance(m->r, 4) ? 1 + below(m->r, chance(m->r, 2) ? 16 : 1000) : 1;
	uint64_t sz = cur_size(m), fs = field_size(t, x);
	for (size_t i = 0; i < times && sz + fs <= m->budget; i++, sz += fs) {
		int32_t y = deep_copy(t, x);
		if (y == NIL)
			return i > 0;
		insert_after(t, t->n[x].parent, x, y);
	}
	return true;
}

/* Number of fields in message p. */
static size_t children(const tree_t *t, int32_t p)
{
	size_t k = 0;
	for (int32_t c = t->n[p].first; c != NIL; c = t->n[c].next)
		k++;
	return k;
}

static bool m_delete(mctx_t *m)
{
	int32_t x = pick(m->t, m->r, m->root, false, is_any);
	if (x == NIL)
		return false;
	unlink_node(m->t, x);
	return true;
}

/* Swaps two siblings, or rotates / reverses the list. */
static bool m_swap(mctx_t *m)
{
	tree_t *t = m->t;
	int32_t p = pick(t, m->r, m->root, true, has_children);
	if (p == NIL)
		return false;
	size_t k = children(t, p);
	if (k < 2)
		return false;
	int32_t *v = malloc(k * sizeof(*v));
	if (!v)
		return false;
	k = 0;
	for (int32_t c = t->n[p].first; c != NIL; c = t->n[c].next)
		v[k++] = c;
	switch (below(m->r, 3)) {
	case 0: {
		size_t a = below(m->r, k), b = below(m->r, k);
		int32_t tmp = v[a];
		v[a] = v[b];
		v[b] = tmp;
		break;
	}
	case 1:
		for (size_t i = 0; i < k / 2; i++) {
			int32_t tmp = v[i];
			v[i] = v[k - 1 - i];
			v[k - 1 - i] = tmp;
		}
		break;
	default: {
		size_t a = below(m->r, k), b = below(m->r, k); /* move a to b */
		int32_t tmp = v[a];
		if (a < b)
			memmove(v + a, v + a + 1, (b - a) * sizeof(*v));
		else
			memmove(v + b + 1, v + b, (a - b) * sizeof(*v));
		v[b] = tmp;
	}
	}
	t->n[p].first = t->n[p].last = NIL;
	for (size_t i = 0; i < k; i++)
		append_child(t, p, v[i]);
	free(v);
	return true;
}

/* x becomes a child of a copy of itself: one level deeper, the content twice. */
static bool m_wrap_self(mctx_t *m)
{
	tree_t *t = m->t;
	int32_t x = pick(t, m->r, m->root, false, is_msg);
	if (x == NIL || cur_size(m) + field_size(t, x) + 8 > m->budget)
		return false;
	int32_t y = deep_copy(t, x);
	if (y == NIL)
		return false;
	replace_node(t, x, y);
	insert_random(t, m->r, y, x);
	return true;
}

/* Reps a chain can have: at most *n, within the hard size budget and the node budget. */
static bool fit_reps(mctx_t *m, uint64_t per_rep, size_t nodes_per_rep, size_t *n)
{
	uint64_t sz = cur_size(m);
	if (sz >= m->hard)
		return false;
	if ((m->hard - sz) / per_rep < *n)
		*n = (size_t)((m->hard - sz) / per_rep);
	size_t free_nodes = MAX_NODES - m->t->count;
	if (free_nodes / nodes_per_rep <= *n)
		*n = free_nodes / nodes_per_rep > 0 ? free_nodes / nodes_per_rep - 1 : 0;
	return *n > 0;
}

static const size_t chain_reps[] = {1,   2,    3,    10,   50,   100,  500,
				    1000, 2000, 3000, 5000, 10000, 20000};

/*
 * Repeats the path from a message x down to a descendant d (ideally one with x's field
 * number, i.e. of x's type) N times: d's place gets [d.field -> p1.field -> ... ->
 * p(k-1).field] N times over, then d. Each level copies the leaf siblings of its model
 * when `sibs`, so names and keys come along. Nesting grows by N*k levels for about
 * N * (k * 4 + sibling bytes) bytes.
 */
static bool m_chain(mctx_t *m)
{
	tree_t *t = m->t;
	rng_t *r = m->r;
	int32_t x = pick(t, r, m->root, false, is_msg);
	if (x == NIL)
		return false;
	enum { MAXK = 8 };
	int32_t path[MAXK + 1];
	size_t k = 0;
	path[0] = x;
	while (k < MAXK) {
		int32_t cur = path[k], cand[64];
		size_t nc = 0;
		for (int32_t c = t->n[cur].first; c != NIL && nc < 64; c = t->n[c].next)
			if (t->n[c].msg)
				cand[nc++] = c;
		if (nc == 0)
			break;
		path[++k] = cand[below(r, nc)];
		if (t->n[path[k]].field == t->n[x].field && !chance(r, 3))
			break;
	}
	if (k > 0 && !chance(r, 8)) {
		/* End at the deepest node with x's field number; else use the whole walk. */
		size_t j = k;
		while (j > 0 && t->n[path[j]].field != t->n[x].field)
			j--;
		if (j > 0)
			k = j;
	}
	int32_t d = path[k];
	bool sibs = !chance(r, 3);
	/* The unit: level 0 is of x's type at d's field number, level j of path[j]'s. */
	uint32_t unit_field[MAXK + 1];
	int32_t model[MAXK + 1];
	size_t levels = k ? k : 1;
	for (size_t j = 0; j < levels; j++) {
		unit_field[j] = j == 0 ? t->n[d].field : t->n[path[j]].field;
		model[j] = k ? path[j] : NIL;
	}
	uint64_t per_rep = 0;
	size_t nodes_per_rep = levels;
	for (size_t j = 0; j < levels; j++) {
		per_rep += varint_size((uint64_t)unit_field[j] << 3) + 4;
		if (!sibs || model[j] == NIL)
			continue;
		for (int32_t c = t->n[model[j]].first; c != NIL; c = t->n[c].next)
			if (!t->n[c].msg) {
				per_rep += field_size(t, c);
				nodes_per_rep++;
			}
	}
	size_t n = chain_reps[below(r, sizeof(chain_reps) / sizeof(chain_reps[0]))];
	if (!fit_reps(m, per_rep, nodes_per_rep, &n))
		return false;
	/* d leaves its place to a placeholder while the chain is built around it. */
	int32_t hole = node_new(t);
	if (hole == NIL)
		return false;
	replace_node(t, d, hole);
	int32_t inner = d;
	for (size_t rep = 0; rep < n; rep++) {
		for (size_t j = levels; j-- > 0;) {
			int32_t y = node_new(t);
			if (y == NIL)
				goto done;
			t->n[y].field = unit_field[j];
			t->n[y].wt = WT_LEN;
			t->n[y].msg = true;
			/* The child on the path from model[j]: path[j+1], or the hole for the
			 * last level (d was there). */
			int32_t on_path = j + 1 < levels ? path[j + 1] : hole;
			bool placed = false;
			if (sibs && model[j] != NIL) {
				for (int32_t c = t->n[model[j]].first; c != NIL; c = t->n[c].next) {
					if (c == on_path) {
						append_child(t, y, inner);
						placed = true;
					} else if (!t->n[c].msg) {
						int32_t s = copy_header(t, c);
						if (s == NIL)
							goto done;
						append_child(t, y, s);
					}
				}
			}
			if (!placed)
				append_child(t, y, inner);
			inner = y;
		}
	}
done:
	if (inner == d)
		replace_node(t, hole, d);
	else
		replace_node(t, hole, inner);
	return inner != d;
}

/* A message node with the given children (detached); NIL when out of nodes. */
static int32_t msg_node(tree_t *t, uint32_t field)
{
	int32_t y = node_new(t);
	if (y != NIL) {
		t->n[y].field = field;
		t->n[y].wt = WT_LEN;
		t->n[y].msg = true;
	}
	return y;
}

static int32_t str_node(tree_t *t, uint32_t field, const char *s)
{
	int32_t y = node_new(t);
	if (y != NIL) {
		t->n[y].field = field;
		t->n[y].wt = WT_LEN;
		t->n[y].raw = (const uint8_t *)s;
		t->n[y].rawlen = strlen(s);
	}
	return y;
}

/* Whether x sits where an AttrValue does: the value (2) of a map entry (NodeDef.attr is
 * field 5, NameAttrList.attr and FunctionDef.attr field 2 / 5). */
static bool is_attr_value(const tree_t *t, int32_t x)
{
	int32_t p = t->n[x].parent;
	return t->n[x].msg && t->n[x].field == 2 && p != NIL && t->n[p].parent != NIL &&
	       (t->n[p].field == 5 || t->n[p].field == 2);
}

/*
 * The TensorFlow schema's own recursion, N levels deep, into an AttrValue:
 *   AttrValue.func(10) -> NameAttrList{name(1), attr(2) -> entry{key(1), value(2)}}
 *   -> AttrValue ...    (or through AttrValue.list(1) -> ListValue.func(9))
 * Protobuf-c unpacks recursively: a few thousand levels used to overflow the stack.
 */
static bool m_chain_known(mctx_t *m)
{
	tree_t *t = m->t;
	rng_t *r = m->r;
	int32_t x = pick(t, r, m->root, false, is_attr_value);
	if (x == NIL)
		x = pick(t, r, m->root, false, is_msg);
	if (x == NIL)
		return false;
	bool via_list = chance(r, 4), names = !chance(r, 3);
	size_t n = chain_reps[below(r, sizeof(chain_reps) / sizeof(chain_reps[0]))];
	if (!fit_reps(m, names ? 28 : 20, 6, &n))
		return false;
	if (chance(r, 2))
		t->n[x].first = t->n[x].last = NIL; /* the chain becomes the only value */
	/* Built inside out: inner is the AttrValue being wrapped (the innermost one is a
	 * fresh AttrValue{i: 1}). */
	int32_t inner = msg_node(t, 2), leaf = node_new(t);
	if (inner == NIL || leaf == NIL)
		return false;
	t->n[leaf].field = 3;
	t->n[leaf].val = 1;
	append_child(t, inner, leaf);
	for (size_t i = 0; i < n; i++) {
		int32_t entry = msg_node(t, 2), nal = msg_node(t, via_list ? 9 : 10);
		int32_t k = names ? str_node(t, 1, "a") : NIL;
		int32_t nm = names ? str_node(t, 1, "f") : NIL;
		int32_t av = msg_node(t, 2), list = via_list ? msg_node(t, 1) : NIL;
		if (entry == NIL || nal == NIL || av == NIL ||
		    (names && (k == NIL || nm == NIL)) || (via_list && list == NIL))
			break;
		if (names)
			append_child(t, entry, k);
		append_child(t, entry, inner);       /* entry{key, value: AttrValue} */
		if (names)
			append_child(t, nal, nm);
		append_child(t, nal, entry);         /* NameAttrList{name, attr} */
		if (via_list) {
			append_child(t, list, nal);  /* ListValue.func */
			append_child(t, av, list);   /* AttrValue.list */
		} else {
			append_child(t, av, nal);    /* AttrValue.func */
		}
		inner = av;
	}
	/* inner is an AttrValue (field 2): x gets its value fields. */
	for (int32_t c = t->n[inner].first, nx; c != NIL; c = nx) {
		nx = t->n[c].next;
		append_child(t, x, c);
	}
	return true;
}

/* A copy of a random node goes somewhere else (also from the other input). */
static bool m_transplant(mctx_t *m, int32_t src_root)
{
	tree_t *t = m->t;
	int32_t s = pick(t, m->r, src_root, false, is_any);
	int32_t p = pick(t, m->r, m->root, true, is_msg);
	if (s == NIL || p == NIL || cur_size(m) + field_size(t, s) > m->budget)
		return false;
	int32_t y = deep_copy(t, s);
	if (y == NIL)
		return false;
	/* Replace a field of the same number now and then, else insert. */
	if (chance(m->r, 3)) {
		for (int32_t c = t->n[p].first; c != NIL; c = t->n[c].next)
			if (t->n[c].field == t->n[y].field && chance(m->r, 2)) {
				replace_node(t, c, y);
				return true;
			}
	}
	insert_random(t, m->r, p, y);
	return true;
}

static bool set_string(mctx_t *m, int32_t x, const uint8_t *p, size_t n)
{
	uint8_t *b = buf_new(m->t, n);
	if (!b)
		return false;
	if (n)
		memcpy(b, p, n);
	m->t->n[x].raw = b;
	m->t->n[x].rawlen = n;
	return true;
}

/* A number to an edge value; a string to a known name, another string, or mutated. */
static bool m_value(mctx_t *m)
{
	tree_t *t = m->t;
	rng_t *r = m->r;
	int32_t x = pick(t, r, m->root, false, is_leaf);
	if (x == NIL)
		return false;
	pnode_t *n = &t->n[x];
	switch (n->wt) {
	case WT_VARINT:
		n->val = edge_int(r, n->val);
		return true;
	case WT_I64:
		n->val = chance(r, 2) ? edge_int(r, n->val)
				      : edge_doubles[below(r, sizeof(edge_doubles) / 8)];
		return true;
	case WT_I32:
		n->val = chance(r, 2) ? (uint32_t)edge_int(r, n->val)
				      : edge_floats[below(r, sizeof(edge_floats) / 4)];
		return true;
	case WT_LEN:
		break;
	default:
		return false;
	}
	uint64_t room = cur_size(m);
	room = room < m->budget ? m->budget - room : 0;
	switch (below(r, 4)) {
	case 0: { /* another string of the input: inputs come to name existing nodes */
		int32_t s = pick(t, r, m->root, false, is_string);
		if (s == NIL || t->n[s].rawlen > t->n[x].rawlen + room)
			return false;
		t->n[x].raw = t->n[s].raw;
		t->n[x].rawlen = t->n[s].rawlen;
		return true;
	}
	case 1: { /* a name the engine looks for, sometimes with a suffix kept */
		size_t i = below(r, sizeof(edge_strings) / sizeof(edge_strings[0]));
		size_t len = i == sizeof(edge_strings) / sizeof(edge_strings[0]) - 1
				     ? 3
				     : strlen(edge_strings[i]);
		if (len > t->n[x].rawlen + room)
			return false;
		return set_string(m, x, (const uint8_t *)edge_strings[i], len);
	}
	case 2: { /* libFuzzer's byte mutation (and dictionary) on this string only */
		size_t old = t->n[x].rawlen, cap = old + 64;
		if (cap > old + room)
			cap = old + (size_t)room;
		uint8_t *b = buf_new(t, cap);
		if (!b || cap == 0)
			return false;
		if (old)
			memcpy(b, t->n[x].raw, old);
		t->n[x].rawlen = LLVMFuzzerMutate(b, old, cap);
		t->n[x].raw = b;
		return true;
	}
	default: /* truncate */
		if (!t->n[x].rawlen)
			return false;
		t->n[x].rawlen = below(r, t->n[x].rawlen);
		return true;
	}
}

/* Another wire type or field number for a field. */
static bool m_retype(mctx_t *m)
{
	tree_t *t = m->t;
	rng_t *r = m->r;
	int32_t x = pick(t, r, m->root, false, is_any);
	if (x == NIL)
		return false;
	pnode_t *n = &t->n[x];
	if (chance(r, 2)) {
		static const uint32_t fields[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16,
						  17, 18, 19, 20, 100, 19000, MAX_FIELD};
		n->field = chance(r, 2) ? fields[below(r, sizeof(fields) / sizeof(fields[0]))]
					: (uint32_t)(n->field + (chance(r, 2) ? 1 : MAX_FIELD)) %
						  (MAX_FIELD + 1);
		if (n->field == 0)
			n->field = 1;
		return true;
	}
	static const uint8_t wts[] = {WT_VARINT, WT_I64, WT_LEN, WT_I32};
	uint8_t wt = wts[below(r, 4)];
	if (wt == n->wt)
		return false;
	uint64_t v = n->wt == WT_LEN ? (n->msg ? n->size : n->rawlen) : n->val;
	if (n->wt == WT_LEN && !n->msg && n->rawlen)
		v = load_le(n->raw, n->rawlen < 8 ? (unsigned)n->rawlen : 8);
	n->msg = false;
	n->first = n->last = NIL;
	n->wt = wt;
	n->val = v;
	if (wt == WT_LEN) {
		uint8_t b[8];
		for (unsigned i = 0; i < 8; i++)
			b[i] = (uint8_t)(v >> (8 * i));
		return set_string(m, x, b, below(r, 9));
	}
	n->raw = NULL;
	n->rawlen = 0;
	return true;
}

/* Drops the tail of a message's field list. */
static bool m_cut(mctx_t *m)
{
	tree_t *t = m->t;
	int32_t p = pick(t, m->r, m->root, true, has_children);
	if (p == NIL)
		return false;
	size_t k = children(t, p);
	size_t keep = below(m->r, k);
	int32_t c = t->n[p].first, prev = NIL;
	for (size_t i = 0; i < keep; i++, c = t->n[c].next)
		prev = c;
	if (prev == NIL)
		t->n[p].first = t->n[p].last = NIL;
	else {
		t->n[prev].next = NIL;
		t->n[p].last = prev;
	}
	return true;
}

static bool mutate_once(mctx_t *m, int32_t other_root)
{
	switch (below(m->r, 14)) {
	case 0: return m_duplicate(m);
	case 1: return m_delete(m);
	case 2: return m_swap(m);
	case 3: return m_wrap_self(m);
	case 4:
	case 5: return m_chain(m);
	case 6: return m_chain_known(m);
	case 7:
	case 8: return m_transplant(m, other_root != NIL ? other_root : m->root);
	case 9:
	case 10:
	case 11: return m_value(m);
	case 12: return m_retype(m);
	default: return m_cut(m);
	}
}

/* Encodes root into out[0..cap); returns the size, or SIZE_MAX when it does not fit. */
static size_t emit(tree_t *t, int32_t root, uint8_t *out, size_t cap)
{
	uint64_t total = measure(t, root);
	if (total > cap)
		return SIZE_MAX;
	uint8_t *tmp = malloc(total ? (size_t)total : 1);
	if (!tmp)
		return SIZE_MAX;
	uint8_t *end = encode(t, root, tmp);
	if (!end || (uint64_t)(end - tmp) != total) {
		free(tmp);
		return SIZE_MAX;
	}
	memcpy(out, tmp, (size_t)total);
	free(tmp);
	return (size_t)total;
}

/*
 * How big most mutations may make an input: half again plus 8 KiB, and the whole
 * max_size one time in sixteen. Without it, duplications compound and the corpus fills
 * with megabyte inputs that run slowly and add nothing a small one would not.
 */
static size_t soft_budget(rng_t *r, size_t size, size_t max_size)
{
	size_t soft = size + size / 2 + 8192;
	return chance(r, 16) || soft > max_size - 1 ? max_size - 1 : soft;
}

static size_t byte_mutate(uint8_t *data, size_t size, size_t max_size)
{
	if (max_size <= 1)
		return size;
	return 1 + LLVMFuzzerMutate(data + 1, size - 1, max_size - 1);
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
			       unsigned int seed)
{
	rng_t r = {((uint64_t)seed << 32) ^ size ^ 0x5eed5eedULL};
	if (max_size == 0)
		return 0;
	if (size == 0) {
		data[0] = (uint8_t)rnd(&r);
		return 1;
	}
	if (size == 1 || chance(&r, 4))
		return byte_mutate(data, size, max_size);
	tree_t t = {0};
	int32_t root = parse(&t, data + 1, size - 1);
	size_t out = SIZE_MAX;
	if (root != NIL) {
		mctx_t m = {.t = &t, .r = &r, .root = root,
			    .budget = soft_budget(&r, size, max_size), .hard = max_size - 1};
		bool changed = false;
		for (size_t i = 0, n = 1 + below(&r, 3); i < n; i++)
			changed |= mutate_once(&m, NIL);
		if (changed)
			out = emit(&t, root, data + 1, max_size - 1);
		if (out != SIZE_MAX && out > 0 && chance(&r, 20))
			out = below(&r, out); /* a truncated message, for the error paths */
	}
	tree_free(&t);
	if (out == SIZE_MAX)
		return byte_mutate(data, size, max_size);
	return 1 + out;
}

size_t LLVMFuzzerCustomCrossOver(const uint8_t *data1, size_t size1, const uint8_t *data2,
				 size_t size2, uint8_t *out, size_t max_out_size,
				 unsigned int seed)
{
	rng_t r = {((uint64_t)seed << 32) ^ size1 ^ (size2 << 16) ^ 0xc0ffeeULL};
	if (size1 == 0 || size2 == 0 || max_out_size < 2)
		return 0;
	out[0] = data1[0];
	size_t cap = max_out_size - 1, n = SIZE_MAX;
	tree_t t = {0};
	int32_t root1 = parse(&t, data1 + 1, size1 - 1);
	int32_t root2 = root1 == NIL ? NIL : parse(&t, data2 + 1, size2 - 1);
	if (root1 != NIL && root2 != NIL) {
		mctx_t m = {.t = &t, .r = &r, .root = root1,
			    .budget = soft_budget(&r, size1, max_out_size), .hard = cap};
		bool changed = false;
		for (size_t i = 0, k = 1 + below(&r, 3); i < k; i++)
			changed |= m_transplant(&m, root2);
		if (changed)
			n = emit(&t, root1, out + 1, cap);
	}
	tree_free(&t);
	if (n == SIZE_MAX) {
		/* Not both wire format: a prefix of the first and a suffix of the second. */
		size_t a = below(&r, size1), b = below(&r, size2);
		if (a > cap)
			a = cap;
		if (b > cap - a)
			b = cap - a;
		memcpy(out + 1, data1 + 1, a);
		memcpy(out + 1 + a, data2 + size2 - b, b);
		n = a + b;
	}
	return 1 + n;
}
