/*
 * prune_config: reads and applies the AMCT retrain config (see config.h).
 *
 * The text codec reports each field to a hook as it is read; this module keeps the
 * positions of the fields it may complain about later, so semantic errors found after
 * parsing (a layer name the graph does not have, a second override for one layer) still
 * point at the line and column the user wrote. Quantization fields are refused in the
 * hook itself: sparsityd only prunes, and saying so beats "unknown field".
 */
#include "prune/config.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sd_str.h"
#include "proto/amct.pb-c.h"
#include "proto/pbtext.h"
#include "prune/layers.h"

/*
 * A name list sorted by string, equal strings in list order, and which of them
 * prune_config_apply found among the graph's layers (seen[j] for key j). A config may
 * list hundreds of thousands of names; comparing each with every other name, or every
 * layer with every name, was the whole cost of reading and applying such a config.
 * Sorted once at parse time, so that prune_config_apply, whose errors are config and
 * layer errors only, has nothing to allocate.
 */
typedef struct names {
	sd_strkey_t *k;
	bool *seen;
	size_t n;
} names_t;

typedef struct pos {
	const ProtobufCMessage *msg;
	const ProtobufCFieldDescriptor *field;
	size_t index; /* element index for repeated fields */
	int line, col;
} pos_t;

struct prune_config {
	const char *file;
	Amct__AMCTRetrainConfig *msg;
	arena_t *arena;
	pos_t *pos;
	size_t n_pos, cap_pos;
	bool oom;
	names_t skip_layers, skip_types, regular_layers, regular_types;
	names_t by_name, by_type; /* override_layer_configs, override_layer_types */
};

static const char *const quant_fields[] = {
	"batch_num", "retrain_data_quant_config", "retrain_weight_quant_config",
	"quant_skip_layers", "quant_skip_types",
};

static size_t repeated_count(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
	if (f->label != PROTOBUF_C_LABEL_REPEATED)
		return 0;
	return *(const size_t *)((const char *)m + f->quantifier_offset);
}

static const char *on_field(void *ud, const ProtobufCMessage *msg,
			    const ProtobufCFieldDescriptor *f, int line, int col)
{
	prune_config_t *c = ud;
	for (size_t i = 0; i < sizeof(quant_fields) / sizeof(quant_fields[0]); i++)
		if (strcmp(f->name, quant_fields[i]) == 0)
			return arena_sprintf(c->arena,
					     "'%s' is a quantization field; sparsityd does 2:4 "
					     "pruning only and does not quantize",
					     f->name);
	if (c->n_pos == c->cap_pos) {
		size_t cap = c->cap_pos ? 2 * c->cap_pos : 32;
		pos_t *p = arena_grow(c->arena, c->pos, c->n_pos, cap, sizeof(*p));
		if (!p) {
			c->oom = true;
			return "out of memory";
		}
		c->pos = p;
		c->cap_pos = cap;
	}
	c->pos[c->n_pos++] = (pos_t){msg, f, repeated_count(msg, f), line, col};
	return NULL;
}

/* Room for n keys, none added yet. false when out of memory. */
static bool names_new(arena_t *a, names_t *s, size_t n)
{
	s->n = 0;
	s->k = n ? arena_calloc(a, n, sizeof(*s->k)) : NULL;
	s->seen = n ? arena_calloc(a, n, sizeof(*s->seen)) : NULL;
	return !n || (s->k && s->seen);
}

static void names_add(names_t *s, const char *str, size_t i)
{
	s->k[s->n++] = (sd_strkey_t){str, i};
}

/* The list index of the first element equal to str, or SIZE_MAX. */
static size_t names_find(const names_t *s, const char *str)
{
	size_t j = sd_strkeys_find(s->k, s->n, str);
	return j < s->n ? s->k[j].i : SIZE_MAX;
}

static bool names_has(const names_t *s, const char *str)
{
	return sd_strkeys_find(s->k, s->n, str) < s->n;
}

/* Marks every element equal to str as seen. */
static void names_mark(const names_t *s, const char *str)
{
	for (size_t j = sd_strkeys_find(s->k, s->n, str); j < s->n && !strcmp(s->k[j].s, str);
	     j++)
		s->seen[j] = true;
}

/* The list index of the first element not marked seen, or SIZE_MAX. */
static size_t names_first_unseen(const names_t *s)
{
	size_t first = SIZE_MAX;
	for (size_t j = 0; j < s->n; j++)
		if (!s->seen[j] && s->k[j].i < first)
			first = s->k[j].i;
	return first;
}

static bool names_of_list(arena_t *a, names_t *s, char *const *list, size_t n)
{
	if (!names_new(a, s, n))
		return false;
	for (size_t i = 0; i < n; i++)
		names_add(s, list[i], i);
	sd_strkeys_sort(s->k, s->n);
	return true;
}

/*
 * Sorts the config's name lists. Overrides without a name are left out: validate
 * refuses them before it could reach a repeat after them.
 */
static int index_names(prune_config_t *c, sd_error_t *e)
{
	const Amct__AMCTRetrainConfig *m = c->msg;
	arena_t *a = c->arena;
	if (!names_of_list(a, &c->skip_layers, m->skip_layers, m->n_skip_layers) ||
	    !names_of_list(a, &c->skip_types, m->skip_layer_types, m->n_skip_layer_types) ||
	    !names_of_list(a, &c->regular_layers, m->regular_prune_skip_layers,
			   m->n_regular_prune_skip_layers) ||
	    !names_of_list(a, &c->regular_types, m->regular_prune_skip_types,
			   m->n_regular_prune_skip_types) ||
	    !names_new(a, &c->by_name, m->n_override_layer_configs) ||
	    !names_new(a, &c->by_type, m->n_override_layer_types))
		return sd_err(e, SD_ENOMEM, "out of memory reading %s", c->file);
	for (size_t i = 0; i < m->n_override_layer_configs; i++) {
		const char *s = m->override_layer_configs[i]->layer_name;
		if (s && s[0])
			names_add(&c->by_name, s, i);
	}
	for (size_t i = 0; i < m->n_override_layer_types; i++) {
		const char *s = m->override_layer_types[i]->layer_type;
		if (s && s[0])
			names_add(&c->by_type, s, i);
	}
	sd_strkeys_sort(c->by_name.k, c->by_name.n);
	sd_strkeys_sort(c->by_type.k, c->by_type.n);
	return 0;
}

/* Position of field `name` of msg (element idx for repeated fields); NULL if unknown. */
static const pos_t *where(const prune_config_t *c, const void *msg, const char *name,
			  size_t idx)
{
	const pos_t *best = NULL;
	for (size_t i = 0; i < c->n_pos; i++) {
		const pos_t *p = &c->pos[i];
		if (p->msg == msg && strcmp(p->field->name, name) == 0 && p->index <= idx)
			best = p;
	}
	return best;
}

static int fail_at(const prune_config_t *c, const void *msg, const char *field, size_t idx,
		   sd_error_t *e, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int fail_at(const prune_config_t *c, const void *msg, const char *field, size_t idx,
		   sd_error_t *e, const char *fmt, ...)
{
	char text[SD_ERR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	const pos_t *p = where(c, msg, field, idx);
	return sd_err_at(e, SD_ECONFIG, c->file, p ? p->line : 1, p ? p->col : 1, "%s", text);
}

static int check_prune_config(const prune_config_t *c, const Amct__PruneConfig *pc,
			      sd_error_t *e)
{
	if (!pc)
		return 0;
	if (pc->filter_pruner && pc->n_out_of_m_pruner)
		return fail_at(c, pc, "filter_pruner", 0, e,
			       "a PruneConfig sets both filter_pruner and n_out_of_m_pruner; "
			       "give one (sparsityd supports n_out_of_m_pruner only)");
	if (pc->filter_pruner)
		return fail_at(c, pc, "filter_pruner", 0, e,
			       "filter_pruner is not supported: sparsityd does 2:4 structured "
			       "sparsity (n_out_of_m_pruner) only");
	if (!pc->n_out_of_m_pruner)
		return fail_at(c, pc, "n_out_of_m_pruner", 0, e,
			       "PruneConfig needs n_out_of_m_pruner");
	const Amct__L1SelectivePrune *l1 = pc->n_out_of_m_pruner->l1_selective_prune;
	if (!l1)
		return fail_at(c, pc->n_out_of_m_pruner, "l1_selective_prune", 0, e,
			       "n_out_of_m_pruner needs l1_selective_prune");
	if (l1->n_out_of_m_type != AMCT__NOUT_OF_MTYPE__M4N2) {
		const ProtobufCEnumValue *v =
			protobuf_c_enum_descriptor_get_value(&amct__nout_of_mtype__descriptor,
							     l1->n_out_of_m_type);
		return fail_at(c, l1, "n_out_of_m_type", 0, e,
			       "n_out_of_m_type %s is not supported; only M4N2 (2:4) is",
			       v ? v->name : "?");
	}
	return 0;
}

static int check_types(const prune_config_t *c, const void *msg, const char *field,
		       char *const *types, size_t n, sd_error_t *e)
{
	for (size_t i = 0; i < n; i++)
		if (!prune_layer_type_known(types[i]))
			return fail_at(c, msg, field, i, e,
				       "'%s' in %s is not a layer type sparsityd prunes "
				       "(valid: %s)",
				       types[i], field, prune_layer_types());
	return 0;
}

static int validate(const prune_config_t *c, sd_error_t *e)
{
	const Amct__AMCTRetrainConfig *m = c->msg;
	int rc;
	if ((rc = check_prune_config(c, m->prune_config, e)) ||
	    (rc = check_types(c, m, "skip_layer_types", m->skip_layer_types,
			      m->n_skip_layer_types, e)) ||
	    (rc = check_types(c, m, "regular_prune_skip_types", m->regular_prune_skip_types,
			      m->n_regular_prune_skip_types, e)))
		return rc;
	/* Each loop below stops at its first bad entry, so the first repeat is the one it
	 * would report unless an entry before it fails another check first. */
	size_t name_dup = sd_strkeys_first_repeat(c->by_name.k, c->by_name.n, NULL);
	size_t type_dup = sd_strkeys_first_repeat(c->by_type.k, c->by_type.n, NULL);
	for (size_t i = 0; i < m->n_override_layer_configs; i++) {
		const Amct__RetrainOverrideLayer *o = m->override_layer_configs[i];
		if (!o->layer_name || !o->layer_name[0])
			return fail_at(c, m, "override_layer_configs", i, e,
				       "override_layer_configs entry without layer_name");
		if (!o->prune_config)
			return fail_at(c, o, "layer_name", 0, e,
				       "override for layer '%s' has no prune_config", o->layer_name);
		if ((rc = check_prune_config(c, o->prune_config, e)))
			return rc;
		if (i == name_dup)
			return fail_at(c, o, "layer_name", 0, e,
				       "layer '%s' has more than one override_layer_configs entry",
				       o->layer_name);
	}
	for (size_t i = 0; i < m->n_override_layer_types; i++) {
		const Amct__RetrainOverrideLayerType *o = m->override_layer_types[i];
		if (!o->layer_type || !o->layer_type[0])
			return fail_at(c, m, "override_layer_types", i, e,
				       "override_layer_types entry without layer_type");
		if (!prune_layer_type_known(o->layer_type))
			return fail_at(c, o, "layer_type", 0, e,
				       "'%s' in override_layer_types is not a layer type sparsityd "
				       "prunes (valid: %s)",
				       o->layer_type, prune_layer_types());
		if (!o->prune_config)
			return fail_at(c, o, "layer_type", 0, e,
				       "override for type '%s' has no prune_config", o->layer_type);
		if ((rc = check_prune_config(c, o->prune_config, e)))
			return rc;
		if (i == type_dup)
			return fail_at(c, o, "layer_type", 0, e,
				       "layer type '%s' has more than one override_layer_types "
				       "entry",
				       o->layer_type);
	}
	return 0;
}

int prune_config_parse(const char *text, size_t len, const char *file, arena_t *a,
		       prune_config_t **out, sd_error_t *e)
{
	prune_config_t *c = arena_calloc(a, 1, sizeof(*c));
	if (!c)
		return sd_err(e, SD_ENOMEM, "out of memory");
	c->file = file;
	c->arena = a;
	pbtext_opts_t o = {.filename = file, .err_code = SD_ECONFIG, .field_cb = on_field,
			   .field_ud = c};
	ProtobufCMessage *m;
	int rc = pbtext_parse(&amct__amctretrain_config__descriptor, text, len, a, &o, &m, e);
	if (c->oom)
		return sd_err(e, SD_ENOMEM, "out of memory reading %s", file);
	if (rc)
		return rc;
	c->msg = (Amct__AMCTRetrainConfig *)m;
	if ((rc = index_names(c, e)) || (rc = validate(c, e)))
		return rc;
	*out = c;
	return 0;
}

/* name, element idx of field of msg, is not a layer: fail listing the valid ones. */
static int not_a_layer(const prune_config_t *c, const void *msg, const char *field,
		       size_t idx, const char *name, const prune_layer_t *layers, size_t n,
		       sd_error_t *e)
{
	char valid[768];
	size_t off = 0;
	valid[0] = 0;
	for (size_t i = 0; i < n && off < sizeof(valid); i++) {
		int w = snprintf(valid + off, sizeof(valid) - off, "%s%s", i ? ", " : "",
				 layers[i].name);
		if (w < 0 || (size_t)w >= sizeof(valid) - off) {
			snprintf(valid + off, sizeof(valid) - off, ", ... (%zu in all)", n);
			break;
		}
		off += (size_t)w;
	}
	return fail_at(c, msg, field, idx, e,
		       "'%s' in %s is not a layer of this graph (valid layers: %s)", name, field,
		       n ? valid : "none");
}

/*
 * Every name in skip_layers, regular_prune_skip_layers and override_layer_configs must
 * be a layer; the first that is not, in that order of lists and in list order, is the
 * error. Each layer marks its name in the lists rather than each name being looked for
 * among the layers, which would need the layers sorted: memory apply does not have.
 * The marks are scratch for this call only (a config belongs to one job's thread).
 */
static int check_names(const prune_config_t *c, const prune_layer_t *layers, size_t n,
		       sd_error_t *e)
{
	const Amct__AMCTRetrainConfig *m = c->msg;
	const names_t *lists[] = {&c->skip_layers, &c->regular_layers, &c->by_name};
	for (size_t l = 0; l < 3; l++)
		if (lists[l]->n)
			memset(lists[l]->seen, 0, lists[l]->n * sizeof(*lists[l]->seen));
	for (size_t i = 0; i < n; i++) {
		names_mark(&c->skip_layers, layers[i].name);
		names_mark(&c->regular_layers, layers[i].name);
		names_mark(&c->by_name, layers[i].name);
	}
	size_t i;
	if ((i = names_first_unseen(&c->skip_layers)) != SIZE_MAX)
		return not_a_layer(c, m, "skip_layers", i, m->skip_layers[i], layers, n, e);
	if ((i = names_first_unseen(&c->regular_layers)) != SIZE_MAX)
		return not_a_layer(c, m, "regular_prune_skip_layers", i,
				   m->regular_prune_skip_layers[i], layers, n, e);
	if ((i = names_first_unseen(&c->by_name)) != SIZE_MAX)
		return not_a_layer(c, m->override_layer_configs[i], "layer_name", 0,
				   m->override_layer_configs[i]->layer_name, layers, n, e);
	return 0;
}

static const Amct__PruneConfig *resolve(const prune_config_t *c, const prune_layer_t *l)
{
	const Amct__AMCTRetrainConfig *m = c->msg;
	size_t i = names_find(&c->by_name, l->name);
	if (i != SIZE_MAX)
		return m->override_layer_configs[i]->prune_config;
	if ((i = names_find(&c->by_type, l->type)) != SIZE_MAX)
		return m->override_layer_types[i]->prune_config;
	return m->prune_config;
}

int prune_config_apply(const prune_config_t *c, prune_layer_t *layers, size_t n,
		       sd_error_t *e)
{
	int rc = check_names(c, layers, n, e);
	if (rc)
		return rc;

	size_t pruned = 0;
	for (size_t i = 0; i < n; i++) {
		prune_layer_t *l = &layers[i];
		prune_skip_t why = PRUNE_SKIP_NONE;
		if (names_has(&c->skip_layers, l->name))
			why = PRUNE_SKIP_SKIP_LAYERS;
		else if (names_has(&c->skip_types, l->type))
			why = PRUNE_SKIP_SKIP_LAYER_TYPES;
		else if (names_has(&c->regular_layers, l->name))
			why = PRUNE_SKIP_REGULAR_SKIP_LAYERS;
		else if (names_has(&c->regular_types, l->type))
			why = PRUNE_SKIP_REGULAR_SKIP_TYPES;
		if (why != PRUNE_SKIP_NONE) {
			l->action = PRUNE_ACTION_SKIPPED;
			l->reason = why;
			l->detail = arena_sprintf(c->arena, "listed in %s", prune_skip_name(why));
			continue;
		}
		if (l->reason != PRUNE_SKIP_NONE)
			continue;
		const Amct__PruneConfig *pc = resolve(c, l);
		if (!pc) {
			l->action = PRUNE_ACTION_SKIPPED;
			l->reason = PRUNE_SKIP_NO_PRUNE_CONFIG;
			l->detail = "no prune_config applies to this layer";
			continue;
		}
		l->action = PRUNE_ACTION_PRUNED;
		l->update_freq = pc->n_out_of_m_pruner->l1_selective_prune->update_freq;
		l->detail = arena_sprintf(c->arena, "2:4 along axis %d, update_freq %u", l->axis,
					  l->update_freq);
		pruned++;
	}
	if (pruned == 0)
		return sd_err(e, SD_ENOLAYER,
			      "%s: no layer to prune (%zu candidate layer%s, all skipped)",
			      c->file, n, n == 1 ? "" : "s");
	return 0;
}
