/*
 * run: one engine stage over files, shared by the CLI and the daemon's workers.
 *
 * Inputs are mapped read-only (large weights are used where they lie, never copied;
 * stages write masked weights straight to the output as it is saved). Outputs go to
 * caller-supplied FILE streams, so the CLI can write temporary files it renames and
 * the daemon can stream into content-addressed blobs.
 *
 * Thread safety: reentrant; a worker thread may run a stage while others run theirs.
 */
#ifndef RUN_H
#define RUN_H

#include <stdio.h>

#include "common/arena.h"
#include "common/sd_err.h"
#include "prune/result.h"
#include "prune/stage.h"

/* Largest weight a stage accepts, in elements. */
#define RUN_MAX_ELEMS ((size_t)1 << 32)
/*
 * Working memory of a stage (its arena: the unpacked graph, weights stored as typed or
 * splat values, new nodes), beyond the mapped model file: 1 GiB plus 4 bytes per byte of
 * model. A model whose weights are mostly typed values needs about its own size again;
 * a few bytes claiming a splat of 2^32 floats would need 16 GiB and fail instead.
 */
#define RUN_MEMORY_BASE ((size_t)1 << 30)
#define RUN_MEMORY_PER_BYTE 4

/* Config and record files are small text; anything larger is a mistake. */
#define RUN_TEXT_MAX ((size_t)64 << 20)

typedef struct run_req {
	prune_stage_t stage;
	const char *model;        /* path */
	const char *model_name;   /* how messages name it (NULL: the path) */
	const char *config;       /* insert, prune */
	const char *config_name;
	const char *record;       /* export */
	const char *record_name;
	const char *outputs;      /* comma-separated; NULL allowed for check */
	const char *format;       /* stated model format, or NULL to detect */
	FILE *out_model;          /* insert, export, prune */
	FILE *out_record;         /* WRITES_RECORD (required), MAY_RECORD (optional) */
	/* Told the percent done at the end of each phase (model loaded, stage done, outputs
	 * written) with one line saying what happened, and as the stage's layers are done
	 * with `what` NULL; may be NULL. Called on the stage's threads, several at once
	 * while masks are computed on all cores. */
	void (*progress)(void *ud, int percent, const char *what);
	void *progress_ud;
} run_req_t;

/*
 * Runs the stage. The result lives in arena a; an arena without a limit gets the
 * budget above (RUN_MEMORY_BASE + RUN_MEMORY_PER_BYTE x the model's size), past which
 * the stage fails with SD_ENOMEM naming the node. Returns 0 or the SD_E* code of the
 * failure with e filled (the engine's message, naming file:line:col or node/layer).
 */
SD_MUST_CHECK int run_stage(const run_req_t *r, arena_t *a, prune_result_t *res,
			    sd_error_t *e);

#endif
