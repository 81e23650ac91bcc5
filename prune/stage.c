/*
 * prune_stage: the stage table (see stage.h).
 */
#include "prune/stage.h"

#include <stdlib.h>
#include <string.h>

#include "common/sd_assert.h"
#include "prune/checker.h"
#include "prune/export.h"
#include "prune/insert.h"
#include "prune/oneshot.h"

/* The run functions differ in what they take; each adapter passes what its stage needs. */
static int run_insert(prune_graph_t *g, const prune_stage_in_t *in, prune_result_t *r,
		      sd_error_t *e)
{
	return prune_insert(g, in->config, in->outputs, in->n_outputs, in->max_elems, in->progress,
			    r, e);
}

static int run_export(prune_graph_t *g, const prune_stage_in_t *in, prune_result_t *r,
		      sd_error_t *e)
{
	return prune_export(g, in->record, in->n_record, in->outputs, in->n_outputs,
			    in->max_elems, in->progress, r, e);
}

static int run_prune(prune_graph_t *g, const prune_stage_in_t *in, prune_result_t *r,
		     sd_error_t *e)
{
	return prune_oneshot_begin(g, in->config, in->outputs, in->n_outputs, in->max_elems,
				   in->progress, r, &r->pending, e);
}

static int run_check(prune_graph_t *g, const prune_stage_in_t *in, prune_result_t *r,
		     sd_error_t *e)
{
	return prune_check(g, in->outputs, in->n_outputs, in->max_elems, in->progress, r, e);
}

typedef int (*run_fn)(prune_graph_t *g, const prune_stage_in_t *in, prune_result_t *r,
		      sd_error_t *e);

static const struct {
	const char *name;
	unsigned flags;
	const char *summary;
	run_fn run;
} stages[PRUNE_STAGE__COUNT] = {
#define PRUNE__STAGE_ROW(e, n, f, s, r) [PRUNE_STAGE_##e] = {n, f, s, r},
	PRUNE_STAGE_MAP(PRUNE__STAGE_ROW)
#undef PRUNE__STAGE_ROW
};

/* Stages come from prune_stage_parse: one out of range is a corrupted value. */
static unsigned checked(prune_stage_t s)
{
	sd_require((unsigned)s < PRUNE_STAGE__COUNT);
	return (unsigned)s;
}

const char *prune_stage_name(prune_stage_t s) { return stages[checked(s)].name; }
unsigned prune_stage_flags(prune_stage_t s) { return stages[checked(s)].flags; }
const char *prune_stage_summary(prune_stage_t s) { return stages[checked(s)].summary; }

const char *prune_stage_list(void)
{
	/* ", insert, export, prune, check" from the table, without its first ", " */
#define PRUNE__STAGE_LIST(e, n, f, s, r) ", " n
	static const char list[] = PRUNE_STAGE_MAP(PRUNE__STAGE_LIST);
#undef PRUNE__STAGE_LIST
	return list + 2;
}

int prune_stage_run(prune_stage_t s, prune_graph_t *g, const prune_stage_in_t *in,
		    prune_result_t *res, sd_error_t *e)
{
	unsigned i = checked(s);
	if ((stages[i].flags & PRUNE_STAGE_NEEDS_OUTPUTS) && !in->n_outputs)
		return sd_err(e, SD_EUSAGE, "%s needs the model's outputs (--outputs a,b)",
			      stages[i].name);
	return stages[i].run(g, in, res, e);
}

int prune_stage_finish(prune_result_t *res, sd_error_t *e)
{
	prune_oneshot_t *o = res->pending;
	res->pending = NULL;
	return o ? prune_oneshot_end(o, res, e) : 0;
}

int prune_stage_parse(const char *s, prune_stage_t *out, sd_error_t *e)
{
	for (int i = 0; s && i < PRUNE_STAGE__COUNT; i++) {
		if (!strcmp(s, stages[i].name)) {
			*out = (prune_stage_t)i;
			return 0;
		}
	}
	return sd_err(e, SD_EUSAGE, "unknown stage '%.64s' (expected %s)", s ? s : "",
		      prune_stage_list());
}
