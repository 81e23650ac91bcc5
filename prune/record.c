/*
 * prune_record: builds the InnerScaleOffsetRecord message for a stage result and
 * writes it with the text codec (see record.h).
 */
#include "record.h"

#include <string.h>

#include "amct.pb-c.h"
#include "insert.h"
#include "pbtext.h"
#include "tensor.h"

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

static void attr_str(attrs_t *s, const char *name, const char *v)
{
	Amct__AttrProto *p = attr_add(s, name, AMCT__ATTR_PROTO__ATTR_TYPE__STRING);
	if (p && v) {
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

#define RECORD_ATTRS 12

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
		attr_str(&s, "weight", l->weight);
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
