/*
 * run: loads inputs, runs one stage, writes outputs (see run.h).
 */
#include "daemon/run.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "prune/config.h"
#include "prune/graph.h"
#include "prune/layers.h"
#include "prune/record.h"

typedef struct mapped {
	uint8_t *data;
	size_t len;
} mapped_t;

/*
 * Inputs are mapped read-only and the model stays in its mapping: large weights are
 * read where they lie (the page cache) and masked on their way to the output, so a
 * stage never holds a second copy of the model nor writes to the first.
 */
static int map_file(const char *path, const char *name, size_t max, mapped_t *m,
		    sd_error_t *e)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sd_err(e, errno == ENOENT ? SD_EUSAGE : SD_EIO, "%s: %s", name,
			      strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return sd_err(e, SD_EUSAGE, "%s: not a regular file", name);
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return sd_err(e, SD_ETOOBIG, "%s: %lld bytes is over the limit of %zu bytes", name,
			      (long long)st.st_size, max);
	}
	static uint8_t empty[1];
	m->len = (size_t)st.st_size;
	m->data = empty;
	if (m->len) {
		void *p = mmap(NULL, m->len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			close(fd);
			m->len = 0;
			return sd_err(e, SD_EIO, "%s: mmap: %s", name, strerror(errno));
		}
		m->data = p;
	}
	close(fd);
	return 0;
}

static void unmap_file(mapped_t *m)
{
	if (m->len)
		munmap(m->data, m->len);
	m->len = 0;
}

static const char *name_of(const char *name, const char *path)
{
	return name ? name : path;
}

/* The stage's layers move progress from 20% (model loaded) to 60% (stage done). */
static void layer_progress(void *ud, size_t done, size_t total)
{
	const run_req_t *r = ud;
	if (total)
		r->progress(r->progress_ud, 20 + (int)(40 * done / total), NULL);
}

static void phase(const run_req_t *r, int percent, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void phase(const run_req_t *r, int percent, const char *fmt, ...)
{
	if (!r->progress)
		return;
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	r->progress(r->progress_ud, percent, line);
}

static void stage_done(const run_req_t *r, const prune_result_t *res)
{
	phase(r, 60, "%s done: %zu layers, %zu pruned, %zu checked, %zu skipped",
	      prune_stage_name(r->stage), res->n_layers, res->pruned, res->checked, res->skipped);
}

/* The stage proper, once every input is mapped. */
static int run_mapped(const run_req_t *r, const mapped_t *cm, const mapped_t *rm,
		      const mapped_t *mm, arena_t *a, prune_result_t *res, sd_error_t *e)
{
	prune_format_t fmt = PRUNE_FMT_AUTO;
	prune_config_t *cfg = NULL;
	prune_record_entry_t *rec = NULL;
	size_t n_rec = 0, n_outs = 0;
	const char **outs = NULL;
	prune_graph_t *g;
	int rc;
	if (r->format && (rc = prune_format_parse(r->format, &fmt, e)))
		return rc;
	if (!a->limit)
		a->limit = RUN_MEMORY_BASE + RUN_MEMORY_PER_BYTE * mm->len;
	if (cm->data && (rc = prune_config_parse((const char *)cm->data, cm->len,
						  name_of(r->config_name, r->config), a, &cfg, e)))
		return rc;
	if (rm->data && (rc = prune_record_read((const char *)rm->data, rm->len,
						 name_of(r->record_name, r->record), a, &rec,
						 &n_rec, e)))
		return rc;
	if ((rc = prune_graph_load(mm->data, mm->len, name_of(r->model_name, r->model), fmt,
				   RUN_MAX_ELEMS, a, &g, e)))
		return rc;
	phase(r, 20, "model loaded: %s (%s), %zu bytes, %zu nodes",
	      prune_format_name(prune_graph_format(g)),
	      prune_graph_format_stated(g) ? "stated" : "detected", mm->len, prune_graph_count(g));
	if (r->outputs && r->outputs[0] &&
	    (rc = prune_outputs_parse(g, r->outputs, &outs, &n_outs, e)))
		return rc;
	prune_progress_t layers = {.fn = r->progress ? layer_progress : NULL, .ud = (void *)r};
	prune_stage_in_t in = {.config = cfg, .record = rec, .n_record = n_rec, .outputs = outs,
			       .n_outputs = n_outs, .max_elems = RUN_MAX_ELEMS, .progress = &layers};
	if ((rc = prune_stage_run(r->stage, g, &in, res, e)))
		return rc;
	/* prune's masks are computed during the save: that stage is done (and its error, a
	 * NaN, known) only after it */
	bool pending = res->pending != NULL;
	bool writes = prune_stage_flags(r->stage) & PRUNE_STAGE_WRITES_MODEL;
	if (!pending)
		stage_done(r, res);
	if (writes)
		rc = prune_graph_save(g, PRUNE_FMT_AUTO, r->out_model, e);
	int done = prune_stage_finish(res, rc ? NULL : e);
	if (!rc)
		rc = done;
	if (rc)
		return rc;
	if (pending)
		stage_done(r, res);
	if (!writes)
		return 0;
	phase(r, 90, "model written: %zu nodes", prune_graph_count(g));
	if (r->out_record && !(rc = prune_record_write(res, a, r->out_record, e)))
		phase(r, 95, "record written: %zu layers", res->pruned);
	return rc;
}

int run_stage(const run_req_t *r, arena_t *a, prune_result_t *res, sd_error_t *e)
{
	unsigned flags = prune_stage_flags(r->stage);
	const char *name = prune_stage_name(r->stage);
	bool needs_config = flags & PRUNE_STAGE_NEEDS_CONFIG;
	bool needs_record = flags & PRUNE_STAGE_NEEDS_RECORD;
	if (needs_config && !r->config)
		return sd_err(e, SD_EUSAGE, "%s needs a config", name);
	if (needs_record && !r->record)
		return sd_err(e, SD_EUSAGE, "%s needs a record", name);
	if ((flags & PRUNE_STAGE_WRITES_MODEL) && !r->out_model)
		return sd_err(e, SD_EUSAGE, "%s needs an output model", name);
	if ((flags & PRUNE_STAGE_WRITES_RECORD) && !r->out_record)
		return sd_err(e, SD_EUSAGE, "%s needs an output record", name);
	mapped_t mm = {0}, cm = {0}, rm = {0};
	int rc = 0;
	if ((needs_config && (rc = map_file(r->config, name_of(r->config_name, r->config),
					    RUN_TEXT_MAX, &cm, e))) ||
	    (needs_record && (rc = map_file(r->record, name_of(r->record_name, r->record),
					    RUN_TEXT_MAX, &rm, e))) ||
	    (rc = map_file(r->model, name_of(r->model_name, r->model), PRUNE_MODEL_MAX, &mm, e)))
		goto done;
	rc = run_mapped(r, &cm, &rm, &mm, a, res, e);
done:
	unmap_file(&mm);
	unmap_file(&cm);
	unmap_file(&rm);
	return rc;
}
