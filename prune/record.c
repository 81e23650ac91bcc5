/*
 * prune_record: builds the InnerScaleOffsetRecord message for a stage result and
 * writes it with the text codec (see record.h).
 */
#include "prune/record.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/sd_str.h"
#include "proto/amct.pb-c.h"
#include "proto/pbtext.h"
#include "prune/layers.h"
#include "prune/tensor.h"

typedef struct attrs {
	arena_t *a;
	Amct__AttrProto **v;
	size_t n;
	bool oom;
} attrs_t;

static Amct__AttrProto *attr_add(attrs_t *s, const char *name, Amct__AttrProto__AttrType t)
{
	Amct__AttrProto *p = arena_alloc(s->a, sizeof(*p));
	if (!p) {
		s->oom = true;
		return NULL;
	}
	amct__attr_proto__init(p);
	p->name = (char *)name;
	p->has_type = true;
	p->type = t;
	s->v[s->n++] = p;
	return p;
}

static void attr_int(attrs_t *s, const char *name, int64_t i)
{
	Amct__AttrProto *p = attr_add(s, name, AMCT__ATTR_PROTO__ATTR_TYPE__INT);
	if (p) {
		p->has_i = true;
		p->i = i;
	}
}

/* NULL values are left out: prune writes a record without insertion names. */
static void attr_str(attrs_t *s, const char *name, const char *v)
{
	if (!v)
		return;
	Amct__AttrProto *p = attr_add(s, name, AMCT__ATTR_PROTO__ATTR_TYPE__STRING);
	if (p) {
		p->has_s = true;
		p->s.data = (uint8_t *)v;
		p->s.len = strlen(v);
	}
}

static void attr_ints(attrs_t *s, const char *name, const int64_t *v, int n)
{
	Amct__AttrProto *p = attr_add(s, name, AMCT__ATTR_PROTO__ATTR_TYPE__INTS);
	if (p) {
		p->ints = (int64_t *)v;
		p->n_ints = (size_t)n;
	}
}

#define RECORD_ATTRS 13

int prune_record_write(const prune_result_t *res, arena_t *a, FILE *f, sd_error_t *e)
{
	Amct__InnerScaleOffsetRecord rec = AMCT__INNER_SCALE_OFFSET_RECORD__INIT;
	rec.prune_record = arena_calloc(a, res->pruned + 1, sizeof(*rec.prune_record));
	if (!rec.prune_record)
		return sd_err(e, SD_ENOMEM, "out of memory");
	for (size_t i = 0; i < res->n_layers; i++) {
		const prune_layer_t *l = &res->layers[i];
		if (l->action != PRUNE_ACTION_PRUNED)
			continue;
		Amct__PruneRecord *pr = arena_alloc(a, sizeof(*pr));
		Amct__PruneNode *pn = arena_alloc(a, sizeof(*pn));
		attrs_t s = {.a = a, .v = arena_calloc(a, RECORD_ATTRS, sizeof(*s.v))};
		if (!pr || !pn || !s.v)
			return sd_err(e, SD_ENOMEM, "out of memory");
		amct__prune_record__init(pr);
		amct__prune_node__init(pn);
		pn->name = (char *)l->name;
		attr_ints(&s, "mask_shape", l->shape, l->rank);
		attr_int(&s, "prune_axis", l->axis);
		attr_int(&s, "update_freq", l->update_freq);
		attr_str(&s, "n_out_of_m_type", "M4N2");
		attr_str(&s, "layer_type", l->type);
		attr_str(&s, "dtype", prune_dtype_name(l->dtype));
		attr_str(&s, "weight_input", l->weight_input);
		attr_str(&s, "cast", l->cast);
		attr_str(&s, "weight", l->weight);
		if (l->mask_var)
			attr_str(&s, "scope", arena_sprintf(a, "%s/%s", l->name, PRUNE_SCOPE));
		attr_str(&s, "mask_var", l->mask_var);
		attr_str(&s, "step_var", l->step_var);
		attr_str(&s, "update_op", l->update_op);
		if (s.oom)
			return sd_err(e, SD_ENOMEM, "out of memory");
		pn->attr = s.v;
		pn->n_attr = s.n;
		pr->selective_prune = pn;
		rec.prune_record[rec.n_prune_record++] = pr;
	}
	return pbtext_write(&rec.base, f, e);
}

static const Amct__AttrProto *find_attr(const Amct__PruneNode *pn, const char *name)
{
	for (size_t i = 0; i < pn->n_attr; i++)
		if (pn->attr[i]->name && strcmp(pn->attr[i]->name, name) == 0)
			return pn->attr[i];
	return NULL;
}

static int need(const char *file, const Amct__PruneNode *pn, const char *name,
		Amct__AttrProto__AttrType t, const Amct__AttrProto **out, sd_error_t *e)
{
	const Amct__AttrProto *p = find_attr(pn, name);
	if (!p)
		return sd_err_node(e, SD_ERECORD, pn->name,
				   "%s: layer '%s' has no '%s' attr (was the record written by "
				   "sparsityd insert?)",
				   file, pn->name, name);
	bool ok = t == AMCT__ATTR_PROTO__ATTR_TYPE__INT      ? p->has_i
		  : t == AMCT__ATTR_PROTO__ATTR_TYPE__STRING ? p->has_s
							     : p->n_ints > 0;
	if (!ok)
		return sd_err_node(e, SD_ERECORD, pn->name,
				   "%s: layer '%s' attr '%s' has no value of the expected type",
				   file, pn->name, name);
	*out = p;
	return 0;
}

/* The string attr `name` of p as a C string in a (*out NULL when out of memory); a NUL
 * byte inside would cut it short, and "MatMul\0x" would then pass for "MatMul". */
static int str_attr(const char *file, const Amct__PruneNode *pn, const char *name,
		    const Amct__AttrProto *p, arena_t *a, const char **out, sd_error_t *e)
{
	if (memchr(p->s.data, 0, p->s.len))
		return sd_err_node(e, SD_ERECORD, pn->name,
				   "%s: layer '%s' attr '%s' holds a NUL byte", file, pn->name,
				   name);
	*out = arena_strndup(a, (const char *)p->s.data, p->s.len);
	return 0;
}

/* Reads the selective_prune pn of prune_record i into en. */
static int read_entry(const char *file, const Amct__PruneNode *pn, size_t i, arena_t *a,
		      prune_record_entry_t *en, sd_error_t *e)
{
	int rc;
	if (!pn->name || !pn->name[0])
		return sd_err(e, SD_ERECORD, "%s: prune_record %zu has no layer name", file, i);
	const Amct__AttrProto *shape, *axis, *freq, *type, *win, *scope, *cast;
	if ((rc = need(file, pn, "mask_shape", AMCT__ATTR_PROTO__ATTR_TYPE__INTS, &shape, e)) ||
	    (rc = need(file, pn, "prune_axis", AMCT__ATTR_PROTO__ATTR_TYPE__INT, &axis, e)) ||
	    (rc = need(file, pn, "update_freq", AMCT__ATTR_PROTO__ATTR_TYPE__INT, &freq, e)) ||
	    (rc = need(file, pn, "layer_type", AMCT__ATTR_PROTO__ATTR_TYPE__STRING, &type, e)) ||
	    (rc = need(file, pn, "weight_input", AMCT__ATTR_PROTO__ATTR_TYPE__STRING, &win, e)))
		return rc;
	en->name = pn->name;
	if (shape->n_ints > 4 || axis->i < 0 || axis->i >= (int64_t)shape->n_ints ||
	    freq->i < 0 || freq->i > UINT32_MAX)
		return sd_err_node(e, SD_ERECORD, pn->name,
				   "%s: layer '%s' has an inconsistent mask_shape, prune_axis "
				   "or update_freq",
				   file, pn->name);
	en->rank = (int)shape->n_ints;
	for (int d = 0; d < en->rank; d++)
		en->shape[d] = shape->ints[d];
	en->axis = (int)axis->i;
	en->update_freq = (uint32_t)freq->i;
	if ((rc = str_attr(file, pn, "layer_type", type, a, &en->layer_type, e)) ||
	    (rc = str_attr(file, pn, "weight_input", win, a, &en->weight_input, e)))
		return rc;
	scope = find_attr(pn, "scope");
	if (scope && scope->has_s) {
		if ((rc = str_attr(file, pn, "scope", scope, a, &en->scope, e)))
			return rc;
	} else {
		en->scope = arena_sprintf(a, "%s/%s", pn->name, PRUNE_SCOPE);
	}
	/* Optional: only a layer reading its weight through a Cast has one. */
	if ((cast = find_attr(pn, "cast")) &&
	    ((rc = need(file, pn, "cast", AMCT__ATTR_PROTO__ATTR_TYPE__STRING, &cast, e)) ||
	     (rc = str_attr(file, pn, "cast", cast, a, &en->cast, e))))
		return rc;
	if (!en->layer_type || !en->weight_input || !en->scope || (cast && !en->cast))
		return sd_err(e, SD_ENOMEM, "out of memory");
	return 0;
}

/*
 * A layer recorded twice, or two layers with one scope, would mask the same variables:
 * one mask would be applied and the other dropped without a word. Reports the first
 * entry that repeats an earlier one's name or scope, against the first such earlier
 * entry (a name before a scope on the same one). Sorting the k names and scopes (keys
 * has room for k) instead of checking each entry against all before it: records of
 * hundreds of thousands of layers spent minutes here.
 */
static int check_repeats(const char *file, const prune_record_entry_t *ents, size_t k,
			 sd_strkey_t *keys, sd_error_t *e)
{
	size_t by_name, by_scope, name_j = 0, scope_j = 0;
	for (size_t i = 0; i < k; i++)
		keys[i] = (sd_strkey_t){ents[i].name, i};
	sd_strkeys_sort(keys, k);
	by_name = sd_strkeys_first_repeat(keys, k, &name_j);
	for (size_t i = 0; i < k; i++)
		keys[i] = (sd_strkey_t){ents[i].scope, i};
	sd_strkeys_sort(keys, k);
	by_scope = sd_strkeys_first_repeat(keys, k, &scope_j);
	if (by_name == SIZE_MAX && by_scope == SIZE_MAX)
		return 0;
	if (by_name < by_scope || (by_name == by_scope && name_j <= scope_j))
		return sd_err_node(e, SD_ERECORD, ents[by_name].name,
				   "%s: layer '%s' is recorded twice", file, ents[by_name].name);
	const prune_record_entry_t *en = &ents[by_scope];
	return sd_err_node(e, SD_ERECORD, en->name,
			   "%s: layers '%s' and '%s' are recorded with the same scope '%s'",
			   file, ents[scope_j].name, en->name, en->scope);
}

int prune_record_read(const char *text, size_t len, const char *file, arena_t *a,
		      prune_record_entry_t **out, size_t *n, sd_error_t *e)
{
	pbtext_opts_t o = {.filename = file, .err_code = SD_ERECORD};
	ProtobufCMessage *m;
	int rc = pbtext_parse(&amct__inner_scale_offset_record__descriptor, text, len, a, &o, &m,
			      e);
	if (rc)
		return rc;
	const Amct__InnerScaleOffsetRecord *rec = (const Amct__InnerScaleOffsetRecord *)m;
	prune_record_entry_t *ents = arena_calloc(a, rec->n_prune_record + 1, sizeof(*ents));
	sd_strkey_t *keys = arena_calloc(a, rec->n_prune_record + 1, sizeof(*keys));
	if (!ents || !keys)
		return sd_err(e, SD_ENOMEM, "out of memory");
	size_t k = 0;
	for (size_t i = 0; i < rec->n_prune_record && !rc; i++) {
		const Amct__PruneNode *pn = rec->prune_record[i]->selective_prune;
		if (!pn)
			continue; /* other record kinds (AMCT quantization) are not ours */
		if (!(rc = read_entry(file, pn, i, a, &ents[k], e)))
			k++;
	}
	/* A repeat among the entries read is earlier in the file than the entry that
	 * stopped the loop, if one did: it is the error to report. */
	int dup = check_repeats(file, ents, k, keys, e);
	if (dup)
		return dup;
	if (rc)
		return rc;
	if (k == 0)
		return sd_err(e, SD_ERECORD, "%s: the record lists no pruned layer", file);
	*out = ents;
	*n = k;
	return 0;
}
