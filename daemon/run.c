/*
 * run: loads inputs, runs one stage, writes outputs (see run.h).
 */
#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checker.h"
#include "config.h"
#include "export.h"
#include "graph.h"
#include "insert.h"
#include "layers.h"
#include "oneshot.h"
#include "record.h"

typedef struct mapped {
	uint8_t *data;
	size_t len;
} mapped_t;

/*
 * Large weights are read from the file straight into a region of our own (anonymous
 * memory, transparent huge pages where the kernel offers them), each 64-byte aligned
 * for the SIMD kernels. The model's file mapping is then only read for its small
 * parts, so a model is in memory once, and the stages that rewrite weights write
 * into memory that is theirs (no copy-on-write fault per page of a private mapping).
 * The region is reserved at the file's size, which bounds the payloads, and only the
 * pages used are ever touched.
 */
typedef struct payloads {
	int fd;
	const char *name;
	mapped_t *model; /* the file mapping, dropped once the loader is past it */
	uint8_t *base;
	size_t cap, used;
} payloads_t;

static uint8_t *payload_fetch(void *ud, size_t off, size_t len, sd_error_t *e)
{
	payloads_t *p = ud;
	size_t at = (p->used + 63) & ~(size_t)63;
	if (!p->base) {
		void *m = mmap(NULL, p->cap, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (m == MAP_FAILED) {
			sd_err(e, SD_ENOMEM, "%s: cannot reserve %zu bytes for weights", p->name,
			       p->cap);
			return NULL;
		}
		madvise(m, p->cap, MADV_HUGEPAGE);
		p->base = m;
		/* The loader has walked the file mapping by now; the kernel's fault-around
		 * mapped 64 KiB around every header it read (about half the file on a CNN).
		 * Dropping those pages keeps the model in memory once, in this region. */
		if (p->model && p->model->len)
			madvise(p->model->data, p->model->len, MADV_DONTNEED);
	}
	if (at > p->cap || len > p->cap - at) {
		sd_err(e, SD_EINTERNAL, "%s: weights exceed the reserved region", p->name);
		return NULL;
	}
	/* 1 MiB reads: larger ones copy measurably slower into huge pages. */
	for (size_t done = 0; done < len;) {
		size_t want = len - done < ((size_t)1 << 20) ? len - done : ((size_t)1 << 20);
		ssize_t n = pread(p->fd, p->base + at + done, want, (off_t)(off + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			sd_err(e, SD_EIO, "%s: read: %s", p->name, n ? strerror(errno) : "file shrank");
			return NULL;
		}
		done += (size_t)n;
	}
	p->used = at + len;
	return p->base + at;
}

static int map_file(const char *path, const char *name, size_t max, payloads_t *pl,
		    mapped_t *m, sd_error_t *e)
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
		void *p = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			close(fd);
			m->len = 0;
			return sd_err(e, SD_EIO, "%s: mmap: %s", name, strerror(errno));
		}
		m->data = p;
	}
	if (pl) {
		/* The loader reads payloads through it; closed in payloads_release. */
		pl->fd = fd;
		pl->name = name;
		pl->cap = m->len;
		pl->model = m;
		return 0;
	}
	close(fd);
	return 0;
}

static void payloads_release(payloads_t *p)
{
	if (p->base)
		munmap(p->base, p->cap);
	if (p->fd > 0)
		close(p->fd);
	memset(p, 0, sizeof(*p));
}

static void unmap_file(mapped_t *m)
{
	if (m->len)
		munmap(m->data, m->len);
	m->len = 0;
}

bool run_stage_known(const char *stage)
{
	return stage && (strcmp(stage, "insert") == 0 || strcmp(stage, "export") == 0 ||
			 strcmp(stage, "prune") == 0 || strcmp(stage, "check") == 0);
}

static const char *name_of(const char *name, const char *path)
{
	return name ? name : path;
}

/* The stage proper, once every input is mapped. */
static int run_mapped(const run_req_t *r, const mapped_t *cm, const mapped_t *rm,
		      mapped_t *mm, payloads_t *pl, arena_t *a, prune_result_t *res,
		      sd_error_t *e)
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
	if (cm->data && (rc = prune_config_parse((const char *)cm->data, cm->len,
						  name_of(r->config_name, r->config), a, &cfg, e)))
		return rc;
	if (rm->data && (rc = prune_record_read((const char *)rm->data, rm->len,
						 name_of(r->record_name, r->record), a, &rec,
						 &n_rec, e)))
		return rc;
	/* insert never reads weight values: they stay in the file mapping and go from
	 * there to the output. The other stages read them into memory of their own. */
	prune_payloads_t src = {.fetch = payload_fetch, .ud = pl};
	bool reads_weights = strcmp(r->stage, "insert") != 0;
	if ((rc = prune_graph_load(mm->data, mm->len, name_of(r->model_name, r->model), fmt,
				   reads_weights ? &src : NULL, RUN_MAX_ELEMS, a, &g, e)))
		return rc;
	if (r->outputs && r->outputs[0] &&
	    (rc = prune_outputs_parse(g, r->outputs, &outs, &n_outs, e)))
		return rc;
	if (strcmp(r->stage, "check") == 0)
		return prune_check(g, outs, n_outs, RUN_MAX_ELEMS, res, e);
	if (!n_outs)
		return sd_err(e, SD_EUSAGE, "%s needs the model's outputs (--outputs a,b)",
			      r->stage);
	if (strcmp(r->stage, "insert") == 0)
		rc = prune_insert(g, cfg, outs, n_outs, RUN_MAX_ELEMS, res, e);
	else if (strcmp(r->stage, "prune") == 0)
		rc = prune_oneshot(g, cfg, outs, n_outs, RUN_MAX_ELEMS, res, e);
	else
		rc = prune_export(g, rec, n_rec, outs, n_outs, RUN_MAX_ELEMS, res, e);
	if (rc)
		return rc;
	if ((rc = prune_graph_save(g, PRUNE_FMT_AUTO, r->out_model, e)))
		return rc;
	if (r->out_record)
		rc = prune_record_write(res, a, r->out_record, e);
	return rc;
}

int run_stage(const run_req_t *r, arena_t *a, prune_result_t *res, sd_error_t *e)
{
	if (!run_stage_known(r->stage))
		return sd_err(e, SD_EUSAGE, "unknown stage '%s' (insert, export, prune, check)",
			      r->stage ? r->stage : "");
	bool needs_config = !strcmp(r->stage, "insert") || !strcmp(r->stage, "prune");
	bool needs_record = !strcmp(r->stage, "export");
	if (needs_config && !r->config)
		return sd_err(e, SD_EUSAGE, "%s needs a config", r->stage);
	if (needs_record && !r->record)
		return sd_err(e, SD_EUSAGE, "export needs a record");
	if (strcmp(r->stage, "check") && !r->out_model)
		return sd_err(e, SD_EUSAGE, "%s needs an output model", r->stage);
	if (!strcmp(r->stage, "insert") && !r->out_record)
		return sd_err(e, SD_EUSAGE, "insert needs an output record");
	mapped_t mm = {0}, cm = {0}, rm = {0};
	payloads_t pl = {0};
	int rc = 0;
	if ((needs_config && (rc = map_file(r->config, name_of(r->config_name, r->config),
					    RUN_TEXT_MAX, NULL, &cm, e))) ||
	    (needs_record && (rc = map_file(r->record, name_of(r->record_name, r->record),
					    RUN_TEXT_MAX, NULL, &rm, e))) ||
	    (rc = map_file(r->model, name_of(r->model_name, r->model), PRUNE_MODEL_MAX, &pl, &mm,
			   e)))
		goto done;
	rc = run_mapped(r, &cm, &rm, &mm, &pl, a, res, e);
done:
	payloads_release(&pl);
	unmap_file(&mm);
	unmap_file(&cm);
	unmap_file(&rm);
	return rc;
}
