/*
 * prune_stage: the four stages as one table. Everything that depends on which stage a
 * job or command runs (what it needs, what it writes, how it is run, how it is named)
 * reads this table: the CLI's options, the API's upload checks, the runner, the
 * daemon's outputs and metrics, the result JSON, and the OpenAPI stage enums (a test
 * holds openapi.yaml against `sparsityd --print-stages`).
 *
 * Thread safety: the table is constant; everything here is reentrant.
 */
#ifndef PRUNE_STAGE_H
#define PRUNE_STAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/sd_err.h"
#include "prune/progress.h"

/* What a stage takes and produces (bits of prune_stage_info_t.flags). */
enum {
	PRUNE_STAGE_NEEDS_CONFIG = 1 << 0,   /* a config file */
	PRUNE_STAGE_NEEDS_RECORD = 1 << 1,   /* a record file (export) */
	PRUNE_STAGE_NEEDS_OUTPUTS = 1 << 2,  /* the model's output names (else optional) */
	PRUNE_STAGE_WRITES_MODEL = 1 << 3,   /* an output model */
	PRUNE_STAGE_WRITES_RECORD = 1 << 4,  /* a record, always */
	PRUNE_STAGE_MAY_RECORD = 1 << 5,     /* a record, when asked (emit_record, --record) */
	PRUNE_STAGE_EXAMINES = 1 << 6,       /* reads weight values: 2:4 statistics */
};

/* X(ENUM, name, flags, one-line summary, run function in stage.c) */
#define PRUNE_STAGE_MAP(X)                                                                 \
	X(INSERT, "insert",                                                                \
	  PRUNE_STAGE_NEEDS_CONFIG | PRUNE_STAGE_NEEDS_OUTPUTS | PRUNE_STAGE_WRITES_MODEL |  \
		  PRUNE_STAGE_WRITES_RECORD,                                               \
	  "graph + config -> graph with trainable 2:4 masks + record", run_insert)         \
	X(EXPORT, "export",                                                                \
	  PRUNE_STAGE_NEEDS_RECORD | PRUNE_STAGE_NEEDS_OUTPUTS | PRUNE_STAGE_WRITES_MODEL |  \
		  PRUNE_STAGE_EXAMINES,                                                    \
	  "frozen masked graph + record -> 2:4 graph without the inserted ops", run_export) \
	X(PRUNE, "prune",                                                                  \
	  PRUNE_STAGE_NEEDS_CONFIG | PRUNE_STAGE_NEEDS_OUTPUTS | PRUNE_STAGE_WRITES_MODEL |  \
		  PRUNE_STAGE_MAY_RECORD | PRUNE_STAGE_EXAMINES,                           \
	  "frozen graph + config -> 2:4 graph, one shot", run_prune)                       \
	X(CHECK, "check", PRUNE_STAGE_EXAMINES, "a report on any model: which layers are 2:4", \
	  run_check)

typedef enum prune_stage {
#define PRUNE__STAGE_ENUM(e, name, flags, summary, run) PRUNE_STAGE_##e,
	PRUNE_STAGE_MAP(PRUNE__STAGE_ENUM)
#undef PRUNE__STAGE_ENUM
	PRUNE_STAGE__COUNT
} prune_stage_t;

/* "insert", ...; the stage must be valid (aborts otherwise: a corrupted enum). */
const char *prune_stage_name(prune_stage_t s);
/* The PRUNE_STAGE_* flags of s. */
unsigned prune_stage_flags(prune_stage_t s);
/* One line saying what s does. */
const char *prune_stage_summary(prune_stage_t s);
/* "insert, export, prune or check", for messages. */
const char *prune_stage_list(void);

/* Parses a stage name (may be NULL). Returns 0, or SD_EUSAGE naming the valid ones. */
SD_MUST_CHECK int prune_stage_parse(const char *s, prune_stage_t *out, sd_error_t *e);

struct prune_graph;
struct prune_config;
struct prune_record_entry;
struct prune_result;

/* What a stage runs on besides the graph; fields a stage does not need are ignored. */
typedef struct prune_stage_in {
	const struct prune_config *config;        /* NEEDS_CONFIG */
	const struct prune_record_entry *record;  /* NEEDS_RECORD */
	size_t n_record;
	const char *const *outputs;               /* n_outputs may be 0 unless NEEDS_OUTPUTS */
	size_t n_outputs;
	size_t max_elems;                         /* largest weight, in elements */
	const prune_progress_t *progress;         /* per layer; may be NULL */
} prune_stage_in_t;

/*
 * Runs stage s on g in place (the stages' own headers say what each does); res lives
 * in g's arena. Returns 0 or the stage's SD_E* code with e filled; SD_EUSAGE when s
 * needs outputs and none were given.
 */
SD_MUST_CHECK int prune_stage_run(prune_stage_t s, struct prune_graph *g,
				  const prune_stage_in_t *in, struct prune_result *res,
				  sd_error_t *e);

/*
 * Completes what a successful prune_stage_run left running for the save (prune's
 * masks, computed while the model is written): call it after the save, or instead of
 * it, on every path. Returns 0 or the stage's error (SD_EMODEL for a NaN weight);
 * the saved model is then to be discarded.
 */
SD_MUST_CHECK int prune_stage_finish(struct prune_result *res, sd_error_t *e);

#endif
