/*
 * metrics: the scheduler's families of /metrics (see metrics.h).
 *
 * Every series whose labels are known in advance is written from the first scrape on,
 * at zero (each stage's successes and cancellations), so rate() sees the first job
 * too; failures are written per error code once one happened, since most stages never
 * meet most codes. Label values come from the stage table and the error table only:
 * the number of series is bounded by the code, not by what clients send.
 */
#include "daemon/metrics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "common/sd_err.h"
#include "common/sd_prom.h"
#include "common/sd_str.h"

/* The error table's codes in table order; index 0 of a count array is "none". */
#define METRICS__CODE(name, val, http, type, exitc, title) SD_E##name,
static const int codes[] = {SD_ERR_MAP(METRICS__CODE)};
#undef METRICS__CODE
#define N_CODES (sizeof(codes) / sizeof(codes[0]))

static const store_state_t outcomes[] = {STORE_SUCCEEDED, STORE_FAILED, STORE_CANCELED};
#define N_OUTCOMES (sizeof(outcomes) / sizeof(outcomes[0]))

/* Stages run from milliseconds (check on a small model) to many minutes (ResNet50). */
static const double stage_le_v[] = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300};
static const sd_prom_le_t stage_le = {stage_le_v, sizeof(stage_le_v) / sizeof(stage_le_v[0])};
/* A queue is empty (ms) or holds jobs for as long as queue_max jobs take (an hour+). */
static const double wait_le_v[] = {0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600};
static const sd_prom_le_t wait_le = {wait_le_v, sizeof(wait_le_v) / sizeof(wait_le_v[0])};

static struct {
	atomic_uint_fast64_t finished[PRUNE_STAGE__COUNT][N_OUTCOMES][N_CODES + 1];
	sd_prom_hist_t stage_s[PRUNE_STAGE__COUNT];
	sd_prom_hist_t wait_s;
} the_metrics;

void metrics_job_started(double queued_s)
{
	sd_prom_observe(&the_metrics.wait_s, &wait_le, queued_s);
}

void metrics_job_finished(prune_stage_t stage, store_state_t outcome, int code, double run_s)
{
	if ((unsigned)stage >= PRUNE_STAGE__COUNT)
		return;
	size_t o = 0, c = 0;
	while (o < N_OUTCOMES && outcomes[o] != outcome)
		o++;
	if (o == N_OUTCOMES)
		return;
	while (code && c < N_CODES && codes[c] != code)
		c++;
	/* A code outside the table cannot be named; it is counted with the others' "none"
	 * rather than lost. */
	size_t slot = code && c < N_CODES ? c + 1 : 0;
	atomic_fetch_add(&the_metrics.finished[stage][o][slot], 1);
	if (run_s >= 0)
		sd_prom_observe(&the_metrics.stage_s[stage], &stage_le, run_s);
}

void metrics_render(char **buf, size_t *len, int running)
{
	sd_prom_head(buf, len, "sparsityd_build_info", "gauge",
		     "The version of this daemon and of the libraries it runs on (always 1).");
	sd_appendf(buf, len, "sparsityd_build_info{version=\"%s\",libuv=\"%s\"} 1\n",
		   SPARSITYD_VERSION, uv_version_string());
	sd_prom_head(buf, len, "sparsityd_jobs_finished_total", "counter",
		     "Jobs that reached a final state, by stage, outcome and error code.");
	for (int s = 0; s < PRUNE_STAGE__COUNT; s++) {
		const char *stage = prune_stage_name((prune_stage_t)s);
		for (size_t o = 0; o < N_OUTCOMES; o++) {
			for (size_t c = 0; c <= N_CODES; c++) {
				uint64_t v = atomic_load(&the_metrics.finished[s][o][c]);
				if (!v && (outcomes[o] == STORE_FAILED || c))
					continue;
				sd_appendf(buf, len,
					   "sparsityd_jobs_finished_total{stage=\"%s\",outcome=\"%s\","
					   "code=\"%s\"} %" PRIu64 "\n",
					   stage, store_state_name(outcomes[o]),
					   c ? sd_err_type(codes[c - 1]) : "none", v);
			}
		}
	}
	sd_prom_head(buf, len, "sparsityd_stage_duration_seconds", "histogram",
		     "Wall time of stages that ran, whatever their outcome.");
	for (int s = 0; s < PRUNE_STAGE__COUNT; s++) {
		char labels[64];
		snprintf(labels, sizeof(labels), "stage=\"%s\"", prune_stage_name((prune_stage_t)s));
		sd_prom_hist_put(buf, len, "sparsityd_stage_duration_seconds", labels,
				 &the_metrics.stage_s[s], &stage_le);
	}
	sd_prom_head(buf, len, "sparsityd_job_queue_wait_seconds", "histogram",
		     "Time jobs spent queued before a worker started them.");
	sd_prom_hist_put(buf, len, "sparsityd_job_queue_wait_seconds", "", &the_metrics.wait_s,
			 &wait_le);
	sd_prom_head(buf, len, "sparsityd_workers_busy", "gauge", "Stages running now.");
	sd_appendf(buf, len, "sparsityd_workers_busy %d\n", running);
}
