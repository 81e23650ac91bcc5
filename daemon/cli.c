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
#include "config.h"
#include "graph.h"
#include "insert.h"
#include "layers.h"
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
	      "  version  print the version\n"
	      "\n"
	      "exit status: 0 ok, 1 bad input, 2 usage error, 3 internal or I/O error\n",
	      to_stderr ? stderr : stdout);
}

typedef struct mapped {
	const uint8_t *data;
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
	m->data = (const uint8_t *)"";
	if (m->len) {
		void *p = mmap(NULL, m->len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			close(fd);
			return sd_err(e, SD_EIO, "%s: mmap: %s", path, strerror(errno));
		}
		m->data = p;
	}
	close(fd);
	return 0;
}

static void unmap_file(mapped_t *m)
{
	if (m->len)
		munmap((void *)m->data, m->len);
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
		const char *action = l->action == PRUNE_ACTION_PRUNED ? "pruned" : "skipped";
		printf("%-40s %-20s %-20s %4d  %-8s %s%s%s\n", l->name, l->type, shape, l->axis,
		       action, l->action == PRUNE_ACTION_PRUNED ? "" : prune_skip_name(l->reason),
		       l->action == PRUNE_ACTION_PRUNED ? "" : ": ", l->detail ? l->detail : "");
	}
	printf("%zu layer%s: %zu pruned, %zu skipped", r->n_layers, r->n_layers == 1 ? "" : "s",
	       r->pruned, r->skipped);
	for (int k = 0; k < PRUNE_SKIP__COUNT; k++)
		if (r->by_reason[k])
			printf(" (%s: %zu)", prune_skip_name(k), r->by_reason[k]);
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

int cli_insert(int argc, char **argv)
{
	static const struct option opts[] = {
		{"model", required_argument, NULL, 'm'},  {"config", required_argument, NULL, 'c'},
		{"outputs", required_argument, NULL, 'O'}, {"record", required_argument, NULL, 'r'},
		{"output", required_argument, NULL, 'o'}, {"format", required_argument, NULL, 'f'},
		{"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *model = NULL, *config = NULL, *outputs = NULL, *record = NULL, *out = NULL;
	const char *format = NULL;
	int json = 0, c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:c:O:r:o:f:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'c': config = optarg; break;
		case 'O': outputs = optarg; break;
		case 'r': record = optarg; break;
		case 'o': out = optarg; break;
		case 'f': format = optarg; break;
		case 'j': json = 1; break;
		case 'h': cli_usage(0); return 0;
		default: return usage_error("insert", "bad option");
		}
	}
	if (optind != argc)
		return usage_error("insert", "unexpected argument");
	if (!model || !config || !outputs || !record || !out)
		return usage_error("insert",
				   "--model, --config, --outputs, --record and -o are required");

	sd_error_t e;
	sd_err_clear(&e);
	prune_format_t fmt = PRUNE_FMT_AUTO;
	if (format && prune_format_parse(format, &fmt, &e))
		return fail(&e);

	arena_t arena;
	arena_init(&arena, 0);
	mapped_t mm = {0}, cm = {0};
	outfile_t om = {0}, orec = {0};
	prune_config_t *cfg;
	prune_graph_t *g;
	const char **outs;
	size_t n_outs;
	prune_result_t res = {0};
	int rc;
	if ((rc = map_file(config, CLI_TEXT_MAX, &cm, &e)) ||
	    (rc = prune_config_parse((const char *)cm.data, cm.len, config, &arena, &cfg, &e)) ||
	    (rc = map_file(model, PRUNE_MODEL_MAX, &mm, &e)) ||
	    (rc = prune_graph_load(mm.data, mm.len, model, fmt, CLI_MAX_ELEMS, &arena, &g, &e)) ||
	    (rc = prune_outputs_parse(g, outputs, &outs, &n_outs, &e)) ||
	    (rc = prune_insert(g, cfg, outs, n_outs, CLI_MAX_ELEMS, &res, &e)) ||
	    (rc = out_open(&om, out, &e)) || (rc = prune_graph_save(g, PRUNE_FMT_AUTO, om.f, &e)) ||
	    (rc = out_open(&orec, record, &e)) ||
	    (rc = prune_record_write(&res, &arena, orec.f, &e)) ||
	    (rc = out_commit(&om, &e)) || (rc = out_commit(&orec, &e)))
		goto done;
	if (json)
		rc = print_json(&res, &e);
	else
		print_table(&res, model);
done:
	out_discard(&om);
	out_discard(&orec);
	unmap_file(&mm);
	unmap_file(&cm);
	arena_deinit(&arena);
	return rc ? fail(&e) : 0;
}
