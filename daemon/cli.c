/*
 * cli: offline subcommands (see cli.h).
 *
 * Inputs are mapped read-only (a model can be up to 2 GiB; mapping costs no copy and
 * no heap), outputs are written to a temporary file beside the target and renamed
 * into place only when complete, so an interrupted run never leaves a half model or
 * record where a training script would pick it up.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_json.h"
#include "arena.h"
#include "checker.h"
#include "config.h"
#include "export.h"
#include "graph.h"
#include "insert.h"
#include "layers.h"
#include "oneshot.h"
#include "record.h"
#include "sd_err.h"

/* Largest weight a stage accepts, in elements (16 GiB of float32 would not fit anyway). */
#define CLI_MAX_ELEMS ((size_t)1 << 32)
/* Config and record files are small text; anything larger is a mistake. */
#define CLI_TEXT_MAX ((size_t)64 << 20)

void cli_usage(int to_stderr)
{
	fputs("usage: sparsityd <command> [options]\n"
	      "\n"
	      "commands:\n"
	      "  insert   --model M --config C --outputs a,b --record R -o OUT\n"
	      "           [--format graphdef|metagraph|pbtxt] [--json]\n"
	      "           insert trainable 2:4 mask ops in front of every eligible weight\n"
	      "  export   --model MASKED_FROZEN.pb --record R --outputs a,b -o OUT.pb [--json]\n"
	      "           bake weight*mask into the weights and remove the inserted ops\n"
	      "  prune    --model FROZEN.pb --config C --outputs a,b -o OUT.pb [--record R]\n"
	      "           [--json]   one-shot 2:4 on a frozen graph, no retraining\n"
	      "  check    --model ANY.pb [--outputs a,b] [--json]\n"
	      "           report each layer's 2:4 state\n"
	      "  version  print the version\n"
	      "\n"
	      "exit status: 0 ok, 1 bad input, 2 usage error, 3 internal or I/O error\n",
	      to_stderr ? stderr : stdout);
}

/* A private writable mapping: stages may rewrite weights in place, the file never. */
typedef struct mapped {
	uint8_t *data;
	size_t len;
} mapped_t;

static int map_file(const char *path, size_t max, mapped_t *m, sd_error_t *e)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sd_err(e, errno == ENOENT ? SD_EUSAGE : SD_EIO, "%s: %s", path,
			      strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return sd_err(e, SD_EUSAGE, "%s: not a regular file", path);
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return sd_err(e, SD_ETOOBIG, "%s: %lld bytes is over the limit of %zu bytes", path,
			      (long long)st.st_size, max);
	}
	m->len = (size_t)st.st_size;
	static uint8_t empty[1];
	m->data = empty;
	if (m->len) {
		void *p = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			close(fd);
			return sd_err(e, SD_EIO, "%s: mmap: %s", path, strerror(errno));
		}
		m->data = p;
		madvise(p, m->len, MADV_SEQUENTIAL);
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

/* An output file that appears under its name only once fully written. */
typedef struct outfile {
	char *path;
	char *tmp;
	FILE *f;
} outfile_t;

static int out_open(outfile_t *o, const char *path, sd_error_t *e)
{
	o->path = strdup(path);
	if (!o->path || asprintf(&o->tmp, "%s.tmp.%ld", path, (long)getpid()) < 0)
		return sd_err(e, SD_ENOMEM, "out of memory");
	o->f = fopen(o->tmp, "wbx");
	if (!o->f)
		return sd_err(e, SD_EIO, "%s: %s", o->tmp, strerror(errno));
	setvbuf(o->f, NULL, _IOFBF, 1 << 20);
	return 0;
}

static int out_commit(outfile_t *o, sd_error_t *e)
{
	int rc = 0;
	if (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0)
		rc = sd_err(e, errno == ENOSPC ? SD_ENOSPACE : SD_EIO, "%s: %s", o->path,
			    strerror(errno));
	if (fclose(o->f) != 0 && !rc)
		rc = sd_err(e, SD_EIO, "%s: %s", o->path, strerror(errno));
	o->f = NULL;
	if (!rc && rename(o->tmp, o->path) != 0)
		rc = sd_err(e, SD_EIO, "%s: rename: %s", o->path, strerror(errno));
	return rc;
}

/* Drops an uncommitted output (its temporary file) and frees the names. */
static void out_discard(outfile_t *o)
{
	if (o->f) {
		fclose(o->f);
		o->f = NULL;
	}
	if (o->tmp)
		unlink(o->tmp);
	free(o->tmp);
	free(o->path);
	o->tmp = o->path = NULL;
}

static void print_table(const prune_result_t *r, const char *model)
{
	printf("sparsityd %s: %s (%s, %s), %zu nodes -> %zu nodes\n", r->stage, model,
	       prune_format_name(r->format), r->format_stated ? "stated" : "detected",
	       r->nodes_in, r->nodes_out);
	printf("%-40s %-20s %-20s %4s  %-8s %s\n", "LAYER", "TYPE", "WEIGHT SHAPE", "AXIS",
	       "ACTION", "DETAIL");
	for (size_t i = 0; i < r->n_layers; i++) {
		const prune_layer_t *l = &r->layers[i];
		char shape[64] = "?";
		if (l->rank > 0) {
			size_t off = 0;
			for (int d = 0; d < l->rank && off < sizeof(shape); d++)
				off += (size_t)snprintf(shape + off, sizeof(shape) - off, "%s%lld",
							d ? "x" : "", (long long)l->shape[d]);
		}
		static const char *const actions[] = {"pruned", "skipped", "checked"};
		bool why = l->action == PRUNE_ACTION_SKIPPED;
		printf("%-40s %-20s %-20s %4d  %-8s %s%s%s\n", l->name, l->type, shape, l->axis,
		       actions[l->action], why ? prune_skip_name(l->reason) : "", why ? ": " : "",
		       l->detail ? l->detail : "");
	}
	if (strcmp(r->stage, "check") == 0)
		printf("%zu layer%s: %zu checked, %zu skipped", r->n_layers,
		       r->n_layers == 1 ? "" : "s", r->checked, r->skipped);
	else
		printf("%zu layer%s: %zu pruned, %zu skipped", r->n_layers,
		       r->n_layers == 1 ? "" : "s", r->pruned, r->skipped);
	for (int k = 0; k < PRUNE_SKIP__COUNT; k++)
		if (r->by_reason[k])
			printf(" (%s: %zu)", prune_skip_name(k), r->by_reason[k]);
	printf("\n");
	if (strcmp(r->stage, "insert"))
		printf("%zu layer%s exactly 2:4", r->layers_2of4, r->layers_2of4 == 1 ? "" : "s");
	if (strcmp(r->stage, "insert") && strcmp(r->stage, "check"))
		printf("; %llu of %llu weights zeroed by this stage",
		       (unsigned long long)r->weights_zeroed, (unsigned long long)r->weights);
	if (strcmp(r->stage, "insert"))
		printf("\n");
	if (r->init_op)
		printf("init op: %s   update op: %s\n", r->init_op, r->update_op);
}

static int print_json(const prune_result_t *r, sd_error_t *e)
{
	json_t *doc = api_json_result(r);
	int rc = doc ? json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_SORT_KEYS) : -1;
	json_decref(doc);
	if (rc != 0)
		return sd_err(e, SD_ENOMEM, "rendering the result as JSON failed");
	fputc('\n', stdout);
	return 0;
}

static int fail(const sd_error_t *e)
{
	fprintf(stderr, "sparsityd: error: %s\n", e->msg[0] ? e->msg : sd_err_title(e->code));
	return sd_err_exit(e->code);
}

static int usage_error(const char *cmd, const char *msg)
{
	fprintf(stderr, "sparsityd %s: %s\n", cmd, msg);
	cli_usage(1);
	return 2;
}

/* Which options a subcommand takes (bits of `need` are required, of `allow` optional). */
enum {
	OPT_MODEL = 1 << 0,
	OPT_CONFIG = 1 << 1,
	OPT_OUTPUTS = 1 << 2,
	OPT_RECORD = 1 << 3,
	OPT_OUT = 1 << 4,
	OPT_FORMAT = 1 << 5,
	OPT_JSON = 1 << 6,
};

typedef struct args {
	const char *model, *config, *outputs, *record, *out, *format;
	int json;
} args_t;

static const struct {
	unsigned bit;
	const char *flag;
} opt_names[] = {
	{OPT_MODEL, "--model"}, {OPT_CONFIG, "--config"}, {OPT_OUTPUTS, "--outputs"},
	{OPT_RECORD, "--record"}, {OPT_OUT, "-o"},
};

/* Returns -1 when parsed, else the exit status to return (0 for --help). */
static int parse_args(const char *cmd, int argc, char **argv, unsigned need, unsigned allow,
		      args_t *a)
{
	static const struct option opts[] = {
		{"model", required_argument, NULL, 'm'},  {"config", required_argument, NULL, 'c'},
		{"outputs", required_argument, NULL, 'O'}, {"record", required_argument, NULL, 'r'},
		{"output", required_argument, NULL, 'o'}, {"format", required_argument, NULL, 'f'},
		{"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	unsigned seen = 0;
	int c;
	memset(a, 0, sizeof(*a));
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:c:O:r:o:f:jh", opts, NULL)) != -1) {
		unsigned bit = 0;
		switch (c) {
		case 'm': a->model = optarg; bit = OPT_MODEL; break;
		case 'c': a->config = optarg; bit = OPT_CONFIG; break;
		case 'O': a->outputs = optarg; bit = OPT_OUTPUTS; break;
		case 'r': a->record = optarg; bit = OPT_RECORD; break;
		case 'o': a->out = optarg; bit = OPT_OUT; break;
		case 'f': a->format = optarg; bit = OPT_FORMAT; break;
		case 'j': a->json = 1; bit = OPT_JSON; break;
		case 'h': cli_usage(0); return 0;
		default: return usage_error(cmd, "bad option");
		}
		if (!(bit & (need | allow)))
			return usage_error(cmd, "option not accepted by this command");
		seen |= bit;
	}
	if (optind != argc)
		return usage_error(cmd, "unexpected argument");
	for (size_t i = 0; i < sizeof(opt_names) / sizeof(opt_names[0]); i++) {
		if ((need & opt_names[i].bit) && !(seen & opt_names[i].bit)) {
			char msg[64];
			snprintf(msg, sizeof(msg), "%s is required", opt_names[i].flag);
			return usage_error(cmd, msg);
		}
	}
	return -1;
}

/* Everything one stage run holds; released by job_deinit whatever happened. */
typedef struct job {
	arena_t arena;
	mapped_t model, config, record;
	outfile_t out, rec_out;
	prune_graph_t *g;
	prune_config_t *cfg;
	const char **outs;
	size_t n_outs;
	prune_result_t res;
	sd_error_t e;
} job_t;

static void job_init(job_t *j)
{
	memset(j, 0, sizeof(*j));
	arena_init(&j->arena, 0);
}

static void job_deinit(job_t *j)
{
	out_discard(&j->out);
	out_discard(&j->rec_out);
	unmap_file(&j->model);
	unmap_file(&j->config);
	unmap_file(&j->record);
	arena_deinit(&j->arena);
}

/* Maps and loads the model, and resolves --outputs when given. */
static int job_load(job_t *j, const args_t *a)
{
	prune_format_t fmt = PRUNE_FMT_AUTO;
	int rc;
	if ((a->format && (rc = prune_format_parse(a->format, &fmt, &j->e))) ||
	    (rc = map_file(a->model, PRUNE_MODEL_MAX, &j->model, &j->e)) ||
	    (rc = prune_graph_load(j->model.data, j->model.len, a->model, fmt, CLI_MAX_ELEMS,
				   &j->arena, &j->g, &j->e)))
		return rc;
	if (a->outputs)
		return prune_outputs_parse(j->g, a->outputs, &j->outs, &j->n_outs, &j->e);
	return 0;
}

static int job_config(job_t *j, const args_t *a)
{
	int rc = map_file(a->config, CLI_TEXT_MAX, &j->config, &j->e);
	return rc ? rc
		  : prune_config_parse((const char *)j->config.data, j->config.len, a->config,
				       &j->arena, &j->cfg, &j->e);
}

/* Writes the model (and the record when rec is set), committing both only at the end. */
static int job_save(job_t *j, const args_t *a, const char *rec)
{
	int rc;
	if ((rc = out_open(&j->out, a->out, &j->e)) ||
	    (rc = prune_graph_save(j->g, PRUNE_FMT_AUTO, j->out.f, &j->e)))
		return rc;
	if (rec && ((rc = out_open(&j->rec_out, rec, &j->e)) ||
		    (rc = prune_record_write(&j->res, &j->arena, j->rec_out.f, &j->e)) ||
		    (rc = out_commit(&j->rec_out, &j->e))))
		return rc;
	return out_commit(&j->out, &j->e);
}

static int job_finish(job_t *j, const args_t *a, int rc)
{
	if (!rc)
		rc = a->json ? print_json(&j->res, &j->e) : (print_table(&j->res, a->model), 0);
	int status = rc ? fail(&j->e) : 0;
	job_deinit(j);
	return status;
}

int cli_insert(int argc, char **argv)
{
	args_t a;
	int rc = parse_args("insert", argc, argv,
			    OPT_MODEL | OPT_CONFIG | OPT_OUTPUTS | OPT_RECORD | OPT_OUT,
			    OPT_FORMAT | OPT_JSON, &a);
	if (rc >= 0)
		return rc;
	job_t j;
	job_init(&j);
	if (!(rc = job_config(&j, &a)) && !(rc = job_load(&j, &a)) &&
	    !(rc = prune_insert(j.g, j.cfg, j.outs, j.n_outs, CLI_MAX_ELEMS, &j.res, &j.e)))
		rc = job_save(&j, &a, a.record);
	return job_finish(&j, &a, rc);
}

int cli_export(int argc, char **argv)
{
	args_t a;
	int rc = parse_args("export", argc, argv, OPT_MODEL | OPT_RECORD | OPT_OUTPUTS | OPT_OUT,
			    OPT_FORMAT | OPT_JSON, &a);
	if (rc >= 0)
		return rc;
	job_t j;
	job_init(&j);
	prune_record_entry_t *rec;
	size_t n_rec;
	if (!(rc = map_file(a.record, CLI_TEXT_MAX, &j.record, &j.e)) &&
	    !(rc = prune_record_read((const char *)j.record.data, j.record.len, a.record,
				     &j.arena, &rec, &n_rec, &j.e)) &&
	    !(rc = job_load(&j, &a)) &&
	    !(rc = prune_export(j.g, rec, n_rec, j.outs, j.n_outs, CLI_MAX_ELEMS, &j.res, &j.e)))
		rc = job_save(&j, &a, NULL);
	return job_finish(&j, &a, rc);
}

int cli_prune(int argc, char **argv)
{
	args_t a;
	int rc = parse_args("prune", argc, argv, OPT_MODEL | OPT_CONFIG | OPT_OUTPUTS | OPT_OUT,
			    OPT_RECORD | OPT_FORMAT | OPT_JSON, &a);
	if (rc >= 0)
		return rc;
	job_t j;
	job_init(&j);
	if (!(rc = job_config(&j, &a)) && !(rc = job_load(&j, &a)) &&
	    !(rc = prune_oneshot(j.g, j.cfg, j.outs, j.n_outs, CLI_MAX_ELEMS, &j.res, &j.e)))
		rc = job_save(&j, &a, a.record);
	return job_finish(&j, &a, rc);
}

int cli_check(int argc, char **argv)
{
	args_t a;
	int rc = parse_args("check", argc, argv, OPT_MODEL, OPT_OUTPUTS | OPT_FORMAT | OPT_JSON,
			    &a);
	if (rc >= 0)
		return rc;
	job_t j;
	job_init(&j);
	if (!(rc = job_load(&j, &a)))
		rc = prune_check(j.g, j.outs, j.n_outs, CLI_MAX_ELEMS, &j.res, &j.e);
	return job_finish(&j, &a, rc);
}
