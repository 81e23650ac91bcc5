/*
 * serve: the daemon's loop, scheduler and workers (see serve.h).
 *
 * Job life: an HTTP thread streams the upload into blobs and asks the loop thread to
 * create the job row (cmd_t, answered through a condition variable). The scheduler
 * (loop thread) moves queued jobs to running while fewer than `workers` run, and
 * queues the stage on libuv's thread pool; the worker maps the input blobs, runs the
 * stage, and streams outputs into new blobs (hashing and fsync off the loop thread).
 * Back on the loop thread the result, artifacts and final state are written in the
 * store, long-polls on the job are woken, and the scheduler runs again.
 *
 * Restart safety: at start, jobs found running are requeued (stages are deterministic
 * over stored inputs) until max_attempts, then failed. Drain: SIGTERM/SIGINT stop new
 * jobs (POST answers 503), let running stages finish, then stop the HTTP server and
 * close every handle; queued jobs stay queued for the next start.
 */
#include "daemon/serve.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "api/api.h"
#include "api/api_json.h"
#include "common/arena.h"
#include "common/sd_assert.h"
#include "common/sd_log.h"
#include "common/sd_str.h"
#include "common/sd_time.h"
#include "daemon/conf.h"
#include "daemon/metrics.h"
#include "daemon/notify.h"
#include "daemon/run.h"
#include "store/store.h"

#define SWEEP_EVERY_MS (10 * 60 * 1000)
#define POLL_TICK_MS 250
#define RETRY_MS 1000
#define PHASES_MAX 8

/* A state change asked for by an HTTP thread, done by the loop thread. */
typedef enum { CMD_CREATE, CMD_CANCEL, CMD_DELETE, CMD_RELEASE } cmd_kind_t;

typedef struct cmd {
	struct cmd *next;
	cmd_kind_t kind;
	const store_job_new_t *job; /* CMD_CREATE, CMD_RELEASE (only its inputs) */
	const char *id;             /* CMD_CANCEL, CMD_DELETE */
	const char *tenant;
	char new_id[STORE_ID_LEN + 1];
	int rc;
	sd_error_t *e;
	bool done;
	pthread_cond_t cond;
} cmd_t;

/* A running stage: owned by the loop thread except while its work runs. */
typedef struct worker {
	uv_work_t req;
	bool busy;
	atomic_bool cancel;
	char id[STORE_ID_LEN + 1];
	store_job_t job;         /* snapshot taken when it started */
	prune_stage_t stage;     /* job.stage, parsed */
	int64_t started_ms;
	/* filled by the work callback */
	int rc;
	sd_error_t e;
	char *result_json;
	store_artifact_t out[3];
	size_t n_out;
	const char *record_sha; /* out[] entry of the produced record, if any */
	/* phases the stage reported (work thread) not yet written (loop thread); pmu */
	pthread_mutex_t pmu;
	char phases[PHASES_MAX][256];
	int n_phases;
	int percent;
	int percent_written;     /* loop thread */
	/* set on the loop thread once the work is done */
	double secs;
	size_t recorded;         /* out[] entries already in the store */
	bool unrecorded;         /* the store refused the outcome; on_retry tries again */
} worker_t;

static struct daemon {
	conf_t conf;
	uv_loop_t loop;
	uv_signal_t sig_term, sig_int, sig_hup;
	uv_timer_t sweep, poll, retry, watchdog;
	uv_async_t wake;
	store_t *store;
	store_reader_t *reader; /* loop thread's own reads */
	api_t *api;
	pthread_mutex_t mu;     /* cmds, loop_gone */
	cmd_t *cmds;
	bool loop_gone;         /* no on_wake will run again: submit refuses */
	atomic_bool draining;
	worker_t *workers;
	atomic_int running;     /* written by the loop thread, read by /metrics */
} the_daemon;

/* ---- HTTP-thread side: hand a command to the loop thread and wait ---- */

/* The answer to a command once the loop has stopped: api_stop still serves requests
 * for its grace periods, and one that waited for the loop would wait forever (and hold
 * MHD_stop_daemon, so the process never exits). */
static int loop_gone_err(cmd_t *c)
{
	return sd_err(c->e, SD_EUNAVAIL, "draining: the daemon is shutting down");
}

static int submit(cmd_t *c)
{
	struct daemon *d = &the_daemon;
	pthread_cond_init(&c->cond, NULL);
	pthread_mutex_lock(&d->mu);
	if (d->loop_gone) {
		pthread_mutex_unlock(&d->mu);
		pthread_cond_destroy(&c->cond);
		return loop_gone_err(c);
	}
	c->next = d->cmds;
	d->cmds = c;
	uv_async_send(&d->wake);
	while (!c->done)
		pthread_cond_wait(&c->cond, &d->mu);
	pthread_mutex_unlock(&d->mu);
	pthread_cond_destroy(&c->cond);
	return c->rc;
}

static int op_create(void *ud, const store_job_new_t *n, char id[STORE_ID_LEN + 1],
		     sd_error_t *e)
{
	(void)ud;
	cmd_t c = {.kind = CMD_CREATE, .job = n, .e = e};
	int rc = submit(&c);
	if (!rc)
		memcpy(id, c.new_id, sizeof(c.new_id));
	return rc;
}

static void op_release(void *ud, const store_artifact_t *in, size_t n)
{
	(void)ud;
	store_job_new_t j = {.inputs = in, .n_inputs = n};
	sd_error_t e;
	cmd_t c = {.kind = CMD_RELEASE, .job = &j, .e = &e};
	(void)submit(&c);
}

static int op_cancel(void *ud, const char *id, const char *tenant, sd_error_t *e)
{
	(void)ud;
	cmd_t c = {.kind = CMD_CANCEL, .id = id, .tenant = tenant, .e = e};
	return submit(&c);
}

static int op_remove(void *ud, const char *id, const char *tenant, sd_error_t *e)
{
	(void)ud;
	cmd_t c = {.kind = CMD_DELETE, .id = id, .tenant = tenant, .e = e};
	return submit(&c);
}

static bool op_draining(void *ud)
{
	(void)ud;
	return atomic_load(&the_daemon.draining);
}

static void op_metrics(void *ud, char **buf, size_t *len)
{
	(void)ud;
	metrics_render(buf, len, atomic_load(&the_daemon.running));
}

/* ---- workers (thread pool) ---- */

static const store_artifact_t *input(const store_job_t *j, const char *name)
{
	for (size_t i = 0; i < j->n_artifacts; i++)
		if (j->artifacts[i].input && !strcmp(j->artifacts[i].name, name))
			return &j->artifacts[i];
	return NULL;
}

/* Commits an output blob written through f (closed here) as artifact `name`. */
static int finish_output(worker_t *w, FILE *f, store_blob_t **b, const char *name)
{
	int rc = fclose(f) ? sd_err(&w->e, errno == ENOSPC ? SD_ENOSPACE : SD_EIO,
				    "writing %s failed: %s", name, strerror(errno))
			   : 0;
	store_artifact_t *a = &w->out[w->n_out];
	memset(a, 0, sizeof(*a));
	store_blob_t *blob = *b;
	*b = NULL;
	if (rc) {
		store_blob_abort(blob);
		return rc;
	}
	if ((rc = store_blob_commit(blob, a->sha256, &a->size, &w->e)))
		return rc;
	snprintf(a->name, sizeof(a->name), "%s", name);
	w->n_out++;
	return 0;
}

/* A phase of the stage ended (work thread): kept for the loop thread, which writes it. */
static void on_progress(void *ud, int percent, const char *what)
{
	worker_t *w = ud;
	pthread_mutex_lock(&w->pmu);
	if (what && w->n_phases < PHASES_MAX)
		snprintf(w->phases[w->n_phases++], sizeof(w->phases[0]), "%s", what);
	bool moved = percent > w->percent; /* layers finish out of order on several cores */
	if (moved)
		w->percent = percent;
	pthread_mutex_unlock(&w->pmu);
	if (what || moved)
		uv_async_send(&the_daemon.wake);
}

/* Writes the phases a worker's stage reported to the job's log and progress (loop
 * thread). A failed write only costs the line: the outcome is what must not be lost. */
static void flush_progress(worker_t *w)
{
	struct daemon *d = &the_daemon;
	char phases[PHASES_MAX][256];
	pthread_mutex_lock(&w->pmu);
	int n = w->n_phases, percent = w->percent;
	memcpy(phases, w->phases, sizeof(phases[0]) * (size_t)n);
	w->n_phases = 0;
	pthread_mutex_unlock(&w->pmu);
	if (!n && percent == w->percent_written)
		return;
	w->percent_written = percent;
	sd_error_t e;
	for (int i = 0; i < n; i++)
		if (store_event_add(d->store, w->id, phases[i], &e))
			jlog_warn("sched", w->id, "cannot log a phase: %s", e.msg);
	if (store_job_progress(d->store, w->id, percent, &e))
		jlog_warn("sched", w->id, "cannot record progress: %s", e.msg);
	if (d->api)
		api_job_changed(d->api, w->id);
}

static void work_cb(uv_work_t *req)
{
	worker_t *w = req->data;
	store_t *s = the_daemon.store;
	const store_job_t *j = &w->job;
	const store_artifact_t *m = input(j, "input_model"), *c = input(j, "input_config"),
			       *r = input(j, "input_record");
	char *mp = m ? store_blob_path(s, m->sha256) : NULL;
	char *cp = c ? store_blob_path(s, c->sha256) : NULL;
	char *rp = r ? store_blob_path(s, r->sha256) : NULL;
	unsigned flags = prune_stage_flags(w->stage);
	bool has_model = flags & PRUNE_STAGE_WRITES_MODEL;
	bool has_record = (flags & PRUNE_STAGE_WRITES_RECORD) ||
			  ((flags & PRUNE_STAGE_MAY_RECORD) && j->emit_record);
	store_blob_t *bm = NULL, *br = NULL;
	FILE *fm = NULL, *fr = NULL;
	arena_t arena;
	arena_init(&arena, 0);
	prune_result_t res = {0};
	int rc = 0;
	if (has_model && !(rc = store_blob_begin(s, INT64_MAX, &bm, &w->e)) &&
	    !(fm = store_blob_stream(bm)))
		rc = sd_err(&w->e, SD_ENOMEM, "out of memory");
	if (!rc && has_record && !(rc = store_blob_begin(s, INT64_MAX, &br, &w->e)) &&
	    !(fr = store_blob_stream(br)))
		rc = sd_err(&w->e, SD_ENOMEM, "out of memory");
	if (!rc) {
		run_req_t rq = {
			.stage = w->stage, .model = mp, .model_name = "model", .config = cp,
			.config_name = "config", .record = rp, .record_name = "record",
			.outputs = j->outputs, .format = j->format && j->format[0] ? j->format : NULL,
			.out_model = fm, .out_record = fr, .progress = on_progress, .progress_ud = w,
		};
		rc = run_stage(&rq, &arena, &res, &w->e);
	}
	for (size_t i = 0; !rc && i < res.n_warnings; i++)
		jlog_warn("prune", w->id, "%s", res.warnings[i]);
	if (!rc && fm)
		rc = finish_output(w, fm, &bm, "model");
	else if (fm)
		fclose(fm);
	fm = NULL;
	if (!rc && fr) {
		rc = finish_output(w, fr, &br, "record");
		if (!rc)
			w->record_sha = w->out[w->n_out - 1].sha256;
	} else if (fr) {
		fclose(fr);
	}
	if (!rc) {
		json_t *doc = api_json_result(&res);
		w->result_json = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
		json_decref(doc);
		store_blob_t *b;
		if (!w->result_json)
			rc = sd_err(&w->e, SD_ENOMEM, "out of memory rendering the result");
		else if (!(rc = store_blob_begin(s, INT64_MAX, &b, &w->e))) {
			if (!(rc = store_blob_append(b, w->result_json, strlen(w->result_json), &w->e))) {
				store_artifact_t *a = &w->out[w->n_out];
				memset(a, 0, sizeof(*a));
				if (!(rc = store_blob_commit(b, a->sha256, &a->size, &w->e))) {
					snprintf(a->name, sizeof(a->name), "report");
					w->n_out++;
				}
			} else {
				store_blob_abort(b);
			}
		}
	}
	store_blob_abort(bm);
	store_blob_abort(br);
	arena_deinit(&arena);
	free(mp);
	free(cp);
	free(rp);
	w->rc = rc;
}

static void schedule(void);

/* Counts a stage's outcome in /metrics once the store holds it (rc 0); returns rc. */
static int counted(const worker_t *w, store_state_t to, int rc)
{
	if (!rc)
		metrics_job_finished(w->stage, to, to == STORE_FAILED ? w->rc : 0, w->secs);
	return rc;
}

/* Store errors a retry cannot mend: an output's file or the job's row is not what
 * the outcome expects (only something outside the daemon can cause it). */
static bool lasting(int rc)
{
	return rc == SD_ENOTFOUND || rc == SD_ECONFLICT || rc == SD_EUSAGE;
}

/*
 * Writes a finished stage's outcome (artifacts, record, final state) to the store.
 * Each write is its own transaction and w->recorded counts those done, so after a
 * failure (a full disk) a retry picks up where the last attempt stopped. Outputs that
 * cannot be recorded for a lasting reason fail the job instead of being retried.
 * Returns 0 or the store's error.
 */
static int record_outcome(worker_t *w, sd_error_t *e)
{
	store_t *s = the_daemon.store;
	char note[SD_ERR_MSG_MAX + 32];
	if (atomic_load(&w->cancel) || w->rc) {
		/* Outputs the stage committed will not be listed: they go. */
		for (size_t i = 0; i < w->n_out; i++)
			store_blob_release(s, w->out[i].sha256);
		w->n_out = 0;
	}
	if (atomic_load(&w->cancel)) {
		snprintf(note, sizeof(note), "canceled while running, after %.3f s", w->secs);
		return counted(w, STORE_CANCELED,
			       store_job_transition(s, w->id, STORE_CANCELED, NULL, note, e));
	}
	if (w->rc) {
		/* Bad input is the client's business; anything else is the operator's. */
		store_job_update_t u = {.error_code = sd_err_type(w->rc), .error_msg = w->e.msg,
					.alarm = sd_err_exit(w->rc) != 1};
		snprintf(note, sizeof(note), "%s failed after %.3f s: %s",
			 prune_stage_name(w->stage), w->secs, w->e.msg);
		return counted(w, STORE_FAILED,
			       store_job_transition(s, w->id, STORE_FAILED, &u, note, e));
	}
	int rc = 0;
	for (; !rc && w->recorded < w->n_out; w->recorded += !rc)
		rc = store_artifact_add(s, w->id, &w->out[w->recorded], e);
	if (!rc && w->record_sha && !(rc = store_record_set(s, w->id, w->record_sha, e)))
		w->record_sha = NULL;
	if (lasting(rc)) {
		for (size_t i = w->recorded; i < w->n_out; i++)
			store_blob_release(s, w->out[i].sha256);
		w->n_out = w->recorded = 0;
		w->record_sha = NULL;
		w->rc = sd_err(&w->e, SD_EINTERNAL, "the outputs could not be recorded: %s", e->msg);
		return record_outcome(w, e);
	}
	store_job_update_t u = {.result_json = w->result_json};
	snprintf(note, sizeof(note), "%s succeeded in %.3f s", prune_stage_name(w->stage), w->secs);
	return rc ? rc
		  : counted(w, STORE_SUCCEEDED,
			    store_job_transition(s, w->id, STORE_SUCCEEDED, &u, note, e));
}

/* record_outcome, except that an outcome the store can never take is given up (the
 * job's row is gone or no longer running) rather than retried forever. */
static int settle(worker_t *w, sd_error_t *e)
{
	int rc = record_outcome(w, e);
	if (lasting(rc)) {
		jlog_error("sched", w->id, "outcome given up: %s", e->msg);
		return 0;
	}
	return rc;
}

/* The outcome is in the store (which logged it): wake long-polls, free the slot. */
static void worker_done(worker_t *w)
{
	struct daemon *d = &the_daemon;
	if (d->api)
		api_job_changed(d->api, w->id);
	free(w->result_json);
	w->result_json = NULL;
	store_job_clear(&w->job);
	w->busy = w->unrecorded = false;
	d->running--;
}

/* Retries outcomes the store could not take (disk full) once a second; the job stays
 * running meanwhile, and at a restart it is requeued like any interrupted job. */
static void on_retry(uv_timer_t *t)
{
	struct daemon *d = t->data;
	int left = 0;
	for (int k = 0; k < d->conf.workers; k++) {
		worker_t *w = &d->workers[k];
		if (!w->unrecorded)
			continue;
		sd_error_t e;
		if (settle(w, &e)) {
			left++;
			continue;
		}
		jlog_info("sched", w->id, "outcome recorded after the store recovered");
		worker_done(w);
	}
	if (!left)
		uv_timer_stop(t);
	schedule();
}

/* Something the store refused (an outcome, a start) is tried again every RETRY_MS,
 * with a schedule() after each try, until on_retry finds nothing left. */
static void retry_soon(struct daemon *d)
{
	sd_require(uv_timer_start(&d->retry, on_retry, RETRY_MS, RETRY_MS) == 0);
}

static void after_work_cb(uv_work_t *req, int status)
{
	struct daemon *d = &the_daemon;
	worker_t *w = req->data;
	w->secs = (double)(sd_now_ms() - w->started_ms) / 1000.0;
	if (status == UV_ECANCELED)
		w->rc = sd_err(&w->e, SD_EINTERNAL, "the stage was not run (shutting down)");
	flush_progress(w);
	w->recorded = 0;
	sd_error_t e;
	sd_err_clear(&e);
	if (settle(w, &e)) {
		jlog_error("sched", w->id, "cannot record the outcome, retrying every %d ms: %s",
			   RETRY_MS, e.msg);
		w->unrecorded = true;
		retry_soon(d);
		return;
	}
	worker_done(w);
	schedule();
}

/* ---- loop thread ---- */

static void start_job(worker_t *w, const char *id)
{
	struct daemon *d = &the_daemon;
	sd_error_t e;
	sd_err_clear(&e);
	memset(&w->job, 0, sizeof(w->job));
	if (store_job_transition(d->store, id, STORE_RUNNING, NULL, "started", &e)) {
		/* A full disk or a busy store: nothing else may come to call schedule() (the
		 * last job may have ended), so the retry timer tries again. */
		jlog_warn("sched", id, "not started, retrying in %d ms: %s", RETRY_MS, e.msg);
		retry_soon(d);
		return;
	}
	if (store_job_get(d->reader, id, NULL, &w->job, &e)) {
		jlog_error("sched", id, "cannot load the started job: %s", e.msg);
		return;
	}
	if (prune_stage_parse(w->job.stage, &w->stage, &e)) {
		/* Only a row written by something else than the API can hold this. */
		store_job_update_t u = {.error_code = sd_err_type(SD_EINTERNAL), .error_msg = e.msg};
		if (store_job_transition(d->store, id, STORE_FAILED, &u, e.msg, &e))
			jlog_error("sched", id, "cannot fail a job of unknown stage: %s", e.msg);
		store_job_clear(&w->job);
		return;
	}
	metrics_job_started((double)(w->job.started_ms - w->job.created_ms) / 1000.0);
	snprintf(w->id, sizeof(w->id), "%s", id);
	w->busy = true;
	atomic_store(&w->cancel, false);
	w->n_out = 0;
	w->percent = w->percent_written = w->n_phases = 0; /* no stage thread of w runs */
	w->record_sha = NULL;
	w->rc = 0;
	sd_err_clear(&w->e);
	w->started_ms = sd_now_ms();
	w->req.data = w;
	d->running++;
	if (d->api)
		api_job_changed(d->api, id);
	int rc = uv_queue_work(&d->loop, &w->req, work_cb, after_work_cb);
	if (rc) {
		jlog_error("sched", id, "cannot queue the stage: %s", uv_strerror(rc));
		w->busy = false;
		d->running--;
	}
}

static void schedule(void)
{
	struct daemon *d = &the_daemon;
	if (atomic_load(&d->draining)) {
		/* Outcomes the store refuses do not hold the stop up: their jobs are still
		 * running in the store and are requeued at the next start. */
		int unrecorded = 0;
		for (int k = 0; k < d->conf.workers; k++)
			unrecorded += d->workers[k].unrecorded;
		if (d->running == unrecorded)
			uv_stop(&d->loop);
		return;
	}
	int free_slots = (int)d->conf.workers - d->running;
	if (free_slots <= 0)
		return;
	char(*ids)[STORE_ID_LEN + 1] = NULL;
	size_t n = 0;
	sd_error_t e;
	if (store_queued(d->store, (size_t)free_slots, &ids, &n, &e)) {
		log_error("sched", "cannot list queued jobs, retrying in %d ms: %s", RETRY_MS, e.msg);
		retry_soon(d);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		for (int k = 0; k < d->conf.workers; k++) {
			if (!d->workers[k].busy) {
				start_job(&d->workers[k], ids[i]);
				break;
			}
		}
	}
	free(ids);
}

static int do_create(cmd_t *c)
{
	struct daemon *d = &the_daemon;
	if (atomic_load(&d->draining))
		return sd_err(c->e, SD_EUNAVAIL, "draining: the daemon is shutting down");
	int64_t counts[STORE_STATE__COUNT] = {0};
	int rc = store_job_counts(d->reader, counts, c->e);
	if (rc)
		return rc;
	if (counts[STORE_QUEUED] >= d->conf.queue_max)
		return sd_err(c->e, SD_EBUSY, "queue full: %" PRId64 " jobs are waiting (queue_max)",
			      counts[STORE_QUEUED]);
	if ((rc = store_job_create(d->store, c->job, c->new_id, c->e)))
		return rc;
	jlog_info("api", c->new_id, "%s job created%s%s", c->job->stage,
		  c->job->tenant[0] ? " for tenant " : "", c->job->tenant);
	return 0;
}

/* Inputs committed for a job that was not created go, unless a row names them. */
static void release_inputs(const store_job_new_t *j)
{
	for (size_t i = 0; i < j->n_inputs; i++)
		store_blob_release(the_daemon.store, j->inputs[i].sha256);
}

static int do_cancel(cmd_t *c)
{
	struct daemon *d = &the_daemon;
	store_job_t j = {0};
	int rc = store_job_get(d->reader, c->id, c->tenant, &j, c->e);
	if (rc)
		return rc;
	store_state_t st = j.state;
	prune_stage_t stage;
	if (prune_stage_parse(j.stage, &stage, NULL))
		stage = PRUNE_STAGE__COUNT; /* a row the API did not write: metrics skip it */
	store_job_clear(&j);
	if (st == STORE_RUNNING) {
		for (int k = 0; k < d->conf.workers; k++)
			if (d->workers[k].busy && !strcmp(d->workers[k].id, c->id))
				atomic_store(&d->workers[k].cancel, true);
		jlog_info("api", c->id, "cancel requested while running");
		return store_event_add(d->store, c->id, "cancel requested", c->e);
	}
	rc = store_job_transition(d->store, c->id, STORE_CANCELED, NULL, "canceled", c->e);
	if (!rc)
		metrics_job_finished(stage, STORE_CANCELED, 0, -1);
	return rc;
}

static int do_delete(cmd_t *c)
{
	struct daemon *d = &the_daemon;
	store_job_t j = {0};
	int rc = store_job_get(d->reader, c->id, c->tenant, &j, c->e);
	if (!rc && !(rc = store_job_delete(d->store, c->id, c->e))) {
		jlog_info("api", c->id, "deleted");
		if (d->api)
			api_job_deleted(d->api, &j);
	}
	store_job_clear(&j);
	return rc;
}

static void on_wake(uv_async_t *h)
{
	struct daemon *d = h->data;
	pthread_mutex_lock(&d->mu);
	cmd_t *list = d->cmds;
	d->cmds = NULL;
	pthread_mutex_unlock(&d->mu);
	for (int k = 0; k < d->conf.workers; k++)
		if (d->workers[k].busy)
			flush_progress(&d->workers[k]);
	bool changed = false;
	while (list) {
		cmd_t *c = list;
		list = c->next;
		c->rc = c->kind == CMD_CREATE	? do_create(c)
			: c->kind == CMD_CANCEL ? do_cancel(c)
			: c->kind == CMD_DELETE ? do_delete(c)
						: 0;
		if (c->kind == CMD_RELEASE || (c->kind == CMD_CREATE && c->rc))
			release_inputs(c->job);
		changed |= c->rc == 0;
		if (!c->rc && c->kind == CMD_CANCEL && d->api)
			api_job_changed(d->api, c->id);
		if (!c->rc && c->kind == CMD_CREATE && d->api)
			api_job_changed(d->api, c->new_id); /* its "queued" event */
		pthread_mutex_lock(&d->mu);
		c->done = true;
		pthread_cond_signal(&c->cond);
		pthread_mutex_unlock(&d->mu);
	}
	if (changed)
		schedule();
}

/* Answers the commands on_wake will never take, and every later one (submit). */
static void refuse_cmds(struct daemon *d)
{
	pthread_mutex_lock(&d->mu);
	d->loop_gone = true;
	for (cmd_t *c = d->cmds, *next; c; c = next) {
		next = c->next;
		c->rc = loop_gone_err(c);
		c->done = true;
		pthread_cond_signal(&c->cond);
	}
	d->cmds = NULL;
	pthread_mutex_unlock(&d->mu);
}

/* Refuses a directory another process holds: this daemon's recovery would requeue the
 * other's running jobs, then run them twice. */
static int own_data_dir(const store_t *s, sd_error_t *e)
{
	long pid = store_owner_pid(s);
	if (pid == 0)
		return 0;
	char who[40] = "another process";
	if (pid > 0)
		snprintf(who, sizeof(who), "process %ld", pid);
	return sd_err(e, SD_EIO, "it is in use by %s (one sparsityd serve per data_dir)", who);
}

/* The log settings SIGHUP may change (the table validated both values). */
static void log_apply(const conf_t *c)
{
	sd_log_level_t lvl;
	sd_log_format_t fmt;
	if (!sd_log_level_parse(c->log_level, &lvl))
		sd_log_set_level(lvl);
	if (!sd_log_format_parse(c->log_format, &fmt))
		sd_log_set_format(fmt);
}

static void on_stop_signal(uv_signal_t *h, int sig)
{
	struct daemon *d = h->data;
	if (atomic_exchange(&d->draining, true))
		return;
	log_info("main", "%s: draining (%d stage%s running; queued jobs stay queued)",
		 sig == SIGTERM ? "SIGTERM" : "SIGINT", d->running, d->running == 1 ? "" : "s");
	sd_error_t e;
	char state[96];
	snprintf(state, sizeof(state), "STOPPING=1\nSTATUS=draining, %d stage%s running",
		 d->running, d->running == 1 ? "" : "s");
	if (notify_send(state, &e))
		log_warn("main", "%s", e.msg);
	schedule();
}

static void on_hup(uv_signal_t *h, int sig)
{
	(void)sig;
	struct daemon *d = h->data;
	sd_error_t e;
	if (notify_reloading(&e))
		log_warn("main", "%s", e.msg);
	if (sd_log_reopen())
		log_error("main", "SIGHUP: cannot reopen the log file");
	if (conf_reload(&d->conf, &e))
		log_error("main", "SIGHUP: settings not reloaded: %s", e.msg);
	else
		log_info("main", "SIGHUP: log reopened, settings reloaded");
	log_apply(&d->conf);
	if (api_tls_reload(&e))
		log_error("main", "SIGHUP: TLS certificate not reloaded, the previous one stays in "
			  "service: %s", e.msg);
	/* A reload that failed leaves the old settings running: ready all the same. */
	if (notify_send("READY=1\nSTATUS=running", &e))
		log_warn("main", "%s", e.msg);
}

/* Pings systemd's watchdog from the loop thread: a loop that hangs stops pinging. */
static void on_watchdog(uv_timer_t *t)
{
	(void)t;
	sd_error_t e;
	static bool warned;
	if (notify_send("WATCHDOG=1", &e) && !warned) {
		warned = true; /* once, not every few seconds */
		log_warn("main", "%s", e.msg);
	}
}

static void on_sweep(uv_timer_t *t)
{
	struct daemon *d = t->data;
	if (!d->conf.retention_hours)
		return;
	int n = 0;
	sd_error_t e;
	int rc = store_sweep(d->store, sd_now_ms() - d->conf.retention_hours * 3600 * 1000, &n, &e);
	if (rc)
		log_warn("store", "retention sweep failed: %s", e.msg);
	else if (n)
		log_info("store", "retention sweep deleted %d job%s", n, n == 1 ? "" : "s");
	if ((rc || n) && d->api)
		api_jobs_swept(d->api);
}

static void on_poll(uv_timer_t *t)
{
	struct daemon *d = t->data;
	if (d->api) {
		api_poll_expire(d->api);
		api_token_uses_write(d->api);
	}
}

static bool loopback(const char *host)
{
	return !strncmp(host, "127.", 4) || !strcmp(host, "::1");
}

static void close_cb(uv_handle_t *h) { (void)h; }

/* Each connection holds a descriptor, and so do blobs, SQLite and the model mappings:
 * make room for max_connections plus those, up to the hard limit. */
static void raise_fd_limit(rlim_t connections)
{
	struct rlimit rl;
	rlim_t want = connections + 256;
	if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur < want)
		log_warn("main", "open file limit %llu is below max_connections + 256 (%llu)",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

int serve_main(int argc, char **argv)
{
	struct daemon *d = &the_daemon;
	sd_error_t e;
	sd_err_clear(&e);
	bool print;
	if (argc == 2 && !strcmp(argv[1], "--print-routes")) {
		api_routes_print();
		return 0;
	}
	conf_defaults(&d->conf);
	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: sparsityd serve [--config FILE] [--print-config] [OPTION VALUE]...\n"
		       "options (in a --config file: name = value, with _ for -):\n");
		conf_print(&d->conf, true);
		return 0;
	}
	if (conf_parse(&d->conf, argc, argv, &print, &e)) {
		fprintf(stderr, "sparsityd serve: %s\n", e.msg);
		return sd_err_exit(SD_EUSAGE);
	}
	if (print) {
		conf_print(&d->conf, false);
		return 0;
	}
	sd_log_level_t lvl = SD_LOG_INFO;
	int rc = sd_log_level_parse(d->conf.log_level, &lvl);
	if (rc || sd_log_init(lvl, d->conf.log_file[0] ? d->conf.log_file : NULL)) {
		fprintf(stderr, "sparsityd serve: cannot open log file %s\n", d->conf.log_file);
		return sd_err_exit(SD_EUSAGE);
	}
	log_apply(&d->conf);
	if ((rc = sd_log_fatal_signals()))
		log_warn("main", "no last log line on a crash: %s", strerror(-rc));
	/* Started from "/" (as systemd does) with no StateDirectory=, a relative data_dir
	 * would land in the root file system, ./var being /var itself. */
	char cwd[16];
	if (d->conf.data_dir[0] != '/' && getcwd(cwd, sizeof(cwd)) && !strcmp(cwd, "/")) {
		log_error("main",
			  "data_dir %s is relative and the working directory is /: set data_dir to "
			  "an absolute path, or give the unit StateDirectory=sparsityd",
			  d->conf.data_dir);
		return sd_err_exit(SD_EUSAGE);
	}
	char host[128];
	int port;
	if (conf_listen_split(d->conf.listen, host, sizeof(host), &port, &e)) {
		fprintf(stderr, "sparsityd serve: %s\n", e.msg);
		return sd_err_exit(SD_EUSAGE);
	}
	if (!d->conf.tls_cert[0] != !d->conf.tls_key[0]) {
		fprintf(stderr, "sparsityd serve: tls_cert and tls_key go together: set both or neither\n");
		return sd_err_exit(SD_EUSAGE);
	}
	/* libuv sizes its pool on first use: one thread per worker. */
	char pool[16];
	snprintf(pool, sizeof(pool), "%d", (int)d->conf.workers);
	setenv("UV_THREADPOOL_SIZE", pool, 1);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit((rlim_t)d->conf.max_connections);
	/* Upload and output buffers (512 KiB) and response bodies come and go in bursts;
	 * a fixed mmap threshold gives each large one back to the system when freed,
	 * instead of letting glibc raise the threshold and keep the burst's peak. */
	mallopt(M_MMAP_THRESHOLD, 256 << 10);

	if (store_open(d->conf.data_dir, &d->store, &e) || own_data_dir(d->store, &e) ||
	    store_hashers_start(d->store, (int)d->conf.hash_threads, &e) ||
	    store_reader_open(d->store, &d->reader, &e)) {
		log_error("main", "cannot open the data directory %s: %s", d->conf.data_dir, e.msg);
		if (d->store)
			store_close(d->store);
		return sd_err_exit(SD_EIO);
	}
	/* Beyond loopback the API must know who calls (tokens) and keep tokens and models
	 * off the wire in clear (TLS), unless the operator says otherwise. */
	bool tokens = false, tls = d->conf.tls_cert[0] != 0;
	if (store_tokens_exist(d->reader, &tokens, &e))
		log_warn("main", "cannot tell whether API tokens exist: %s", e.msg);
	if (!loopback(host) && !d->conf.insecure && (!tokens || !tls)) {
		log_error("main",
			  "refusing to listen on %s, which is not loopback, without %s: %s%sor pass "
			  "--insecure",
			  d->conf.listen, !tokens && !tls ? "API tokens and TLS" : tokens ? "TLS" : "API tokens",
			  tokens ? "" : "create a token with `sparsityd token create --tenant NAME`, ",
			  tls ? "" : "set tls_cert and tls_key (or listen on loopback behind a TLS proxy), ");
		store_reader_close(d->reader);
		store_close(d->store);
		return sd_err_exit(SD_EUSAGE);
	}
	if (!loopback(host) && !tls)
		log_warn("main", "listening on %s without TLS (insecure): tokens and models cross the "
			 "network in clear", d->conf.listen);
	int requeued = 0, failed = 0;
	if (store_recover(d->store, (int)d->conf.max_attempts, &requeued, &failed, &e))
		log_error("store", "recovery failed: %s", e.msg);
	else if (requeued || failed)
		log_warn("store", "recovered after a crash: %d job%s requeued, %d failed (attempts exhausted)",
			 requeued, requeued == 1 ? "" : "s", failed);

	/* Start-up resources the daemon cannot run without: a failure (no memory, no file
	 * descriptors) ends the start-up with a logged cause, before any handle exists. */
	d->workers = calloc((size_t)d->conf.workers, sizeof(*d->workers));
	if (sd_fails_assert(d->workers != NULL) || sd_fails_assert(uv_loop_init(&d->loop) == 0)) {
		free(d->workers);
		store_reader_close(d->reader);
		store_close(d->store);
		return sd_err_exit(SD_ENOMEM);
	}
	for (int k = 0; k < d->conf.workers; k++)
		pthread_mutex_init(&d->workers[k].pmu, NULL);
	pthread_mutex_init(&d->mu, NULL);
	/* With a live loop these only fail on arguments this code gets wrong. */
	sd_require(uv_async_init(&d->loop, &d->wake, on_wake) == 0);
	d->wake.data = d;
	sd_require(uv_signal_init(&d->loop, &d->sig_term) == 0);
	sd_require(uv_signal_init(&d->loop, &d->sig_int) == 0);
	sd_require(uv_signal_init(&d->loop, &d->sig_hup) == 0);
	d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
	sd_require(uv_signal_start(&d->sig_term, on_stop_signal, SIGTERM) == 0);
	sd_require(uv_signal_start(&d->sig_int, on_stop_signal, SIGINT) == 0);
	sd_require(uv_signal_start(&d->sig_hup, on_hup, SIGHUP) == 0);
	sd_require(uv_timer_init(&d->loop, &d->sweep) == 0);
	sd_require(uv_timer_init(&d->loop, &d->poll) == 0);
	sd_require(uv_timer_init(&d->loop, &d->retry) == 0);
	sd_require(uv_timer_init(&d->loop, &d->watchdog) == 0);
	d->sweep.data = d->poll.data = d->retry.data = d;
	sd_require(uv_timer_start(&d->sweep, on_sweep, 1000, SWEEP_EVERY_MS) == 0);
	sd_require(uv_timer_start(&d->poll, on_poll, POLL_TICK_MS, POLL_TICK_MS) == 0);

	if (notify_init(&e))
		log_warn("main", "%s", e.msg);
	api_conf_t ac = {.host = host, .port = port, .threads = (int)d->conf.http_threads,
			 .max_upload = d->conf.max_upload, .max_uploads = (int)d->conf.max_uploads,
			 .max_connections = (int)d->conf.max_connections,
			 .idle_timeout = (int)d->conf.idle_timeout, .tls_cert = d->conf.tls_cert,
			 .tls_key = d->conf.tls_key, .access_log = d->conf.access_log,
			 .max_event_streams = (int)d->conf.max_event_streams,
			 .event_heartbeat = (int)d->conf.event_heartbeat,
			 .direct_uploads = d->conf.direct_uploads};
	api_ops_t ops = {.create = op_create, .release = op_release, .cancel = op_cancel,
			 .remove = op_remove,
			 .draining = op_draining, .metrics = op_metrics};
	rc = api_start(&ac, d->store, &ops, &d->api, &e);
	if (rc) {
		log_error("main", "%s", e.msg);
	} else {
		log_info("main", "sparsityd listening on %s, data in %s, %d worker%s", d->conf.listen,
			 d->conf.data_dir, (int)d->conf.workers, d->conf.workers == 1 ? "" : "s");
		char state[sizeof(d->conf.listen) + 32];
		snprintf(state, sizeof(state), "READY=1\nSTATUS=listening on %.*s",
			 (int)sizeof(d->conf.listen), d->conf.listen);
		if (notify_send(state, &e))
			log_warn("main", "%s", e.msg);
		/* Half the interval, as sd_watchdog_enabled(3) advises, leaves room for a
		 * late tick. */
		uint64_t wd_ms = (notify_watchdog_usec() + 1999) / 2000;
		if (wd_ms)
			sd_require(uv_timer_start(&d->watchdog, on_watchdog, wd_ms, wd_ms) == 0);
		schedule();
		uv_run(&d->loop, UV_RUN_DEFAULT);
		refuse_cmds(d);
		log_info("main", "stopping: HTTP server");
		api_stop(d->api);
		d->api = NULL;
	}
	uv_close((uv_handle_t *)&d->wake, close_cb);
	uv_close((uv_handle_t *)&d->sig_term, close_cb);
	uv_close((uv_handle_t *)&d->sig_int, close_cb);
	uv_close((uv_handle_t *)&d->sig_hup, close_cb);
	uv_close((uv_handle_t *)&d->sweep, close_cb);
	uv_close((uv_handle_t *)&d->poll, close_cb);
	uv_close((uv_handle_t *)&d->retry, close_cb);
	uv_close((uv_handle_t *)&d->watchdog, close_cb);
	uv_run(&d->loop, UV_RUN_DEFAULT);
	/* Every handle was closed above; a busy loop here means one was missed. */
	(void)sd_fails_assert(uv_loop_close(&d->loop) == 0);
	for (int k = 0; k < d->conf.workers; k++) {
		free(d->workers[k].result_json);
		store_job_clear(&d->workers[k].job);
		pthread_mutex_destroy(&d->workers[k].pmu);
	}
	free(d->workers);
	store_reader_close(d->reader);
	store_close(d->store);
	pthread_mutex_destroy(&d->mu);
	log_info("main", "stopped");
	notify_deinit();
	sd_log_deinit();
	return rc ? sd_err_exit(rc) : 0;
}
