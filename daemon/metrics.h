/*
 * metrics: the scheduler's side of /metrics: how jobs finished (by stage, outcome and
 * error code), how long stages ran and jobs waited in the queue, and what build this
 * is. The HTTP side (requests, uploads, the blob store, process_*) is api/api_metrics.c.
 *
 * State is one process-wide set of atomic counters, zero at start (Prometheus counters
 * start again at every restart; rate() copes). Any thread may call every function.
 */
#ifndef METRICS_H
#define METRICS_H

#include <stddef.h>

#include "prune/stage.h"
#include "store/store.h"

/* A job left the queue for a worker after waiting queued_s seconds (since it was
 * created: a job requeued after a crash counts its whole wait). */
void metrics_job_started(double queued_s);

/*
 * A job reached outcome (STORE_SUCCEEDED, STORE_FAILED or STORE_CANCELED; others are
 * ignored). code is the SD_E* code it failed with (0 otherwise). run_s is how long its
 * stage ran, or < 0 for a job that never ran (canceled while queued).
 */
void metrics_job_finished(prune_stage_t stage, store_state_t outcome, int code, double run_s);

/* Appends the families above, plus sparsityd_workers_busy = running, to *buf
 * (malloc'd, grown; see sd_appendf). */
void metrics_render(char **buf, size_t *len, int running);

#endif
