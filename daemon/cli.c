/*
 * cli: offline subcommands (see cli.h).
 *
 * The stage itself runs through run.c (as in the daemon); this file parses options,
 * prints results, and writes outputs to a temporary file beside the target that is
 * renamed into place only when complete, so an interrupted run never leaves a half
 * model or record where a training script would pick it up.
 */
#include "daemon/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api_json.h"
#include "common/arena.h"
#include "common/sd_err.h"
#include "daemon/run.h"


void cli_usage(int to_stderr)
{
	fputs("usage: sparsityd <command> [options]\n"
	      "\n"
	      "commands:\n"
	      "  insert   --model M --config C --outputs a,b --record R -o OUT\n"
	      "           [--format graphdef|metagraph|pbtxt] [--json] [--fsync]\n"
	      "           insert trainable 2:4 mask ops in front of every eligible weight\n"
	      "  export   --model MASKED_FROZEN.pb --record R --outputs a,b -o OUT.pb [--json]\n"
	      "           [--fsync]\n"
	      "           bake weight*mask into the weights and remove the inserted ops\n"
	      "  prune    --model FROZEN.pb --config C --outputs a,b -o OUT.pb [--record R]\n"
	      "           [--json] [--fsync]   one-shot 2:4 on a frozen graph, no retraining\n"
	      "  check    --model ANY.pb [--outputs a,b] [--json]\n"
	      "           report each layer's 2:4 state\n"
	      "  report   [--model NAME] < RESULT.json\n"
	      "           print the table of a result document (--json's output, a job's\n"
	      "           report artifact); warnings on stderr\n"
	      "  serve    [--listen 127.0.0.1:8080] [--data-dir ./var] [--workers N] ...\n"
	      "           run the HTTP daemon (--print-config lists every setting)\n"
	      "  token    create --tenant NAME [--data-dir DIR]\n"
	      "           create an API token (printed once; only its hash is stored)\n"
	      "  version  print the version\n"
	      "\n"
	      "Outputs appear under their name only when complete (temporary file, then\n"
	      "rename); --fsync also waits until they are on disk.\n"
	      "exit status: 0 ok, 1 bad input, 2 usage error, 3 internal or I/O error\n",
	      to_stderr ? stderr : stdout);
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

/*
 * Renames the finished file into place. Like cp, gzip or zstd the CLI leaves writeback
 * to the kernel unless asked (--fsync): the rename already keeps a crashed or killed
 * run from leaving a half model behind, and waiting for the disk would double a
 * stage's wall time on a large model. The daemon always fsyncs what it stores.
 */
static int out_commit(outfile_t *o, bool durable, sd_error_t *e)
{
	int rc = 0;
	if (fflush(o->f) != 0 || (durable && fsync(fileno(o->f)) != 0))
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

/* A member of the result document, or `absent` when it is missing or of another type
 * (a report read by `sparsityd report` may have been edited by hand). */
static const char *doc_str(const json_t *o, const char *key, const char *absent)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : absent;
}

static long long doc_int(const json_t *o, const char *key)
{
	return (long long)json_integer_value(json_object_get(o, key));
}

/*
 * The per-layer table, from the result document rather than the engine's struct, so a
 * stage's own table and `sparsityd report` (a daemon job's report, the AMCT drop-in's
 * log) are one rendering. Warnings go to `warn`.
 */
static void print_table(const json_t *doc, prune_stage_t stage, const char *model, FILE *warn)
{
	unsigned flags = prune_stage_flags(stage);
	const json_t *m = json_object_get(doc, "model");
	printf("sparsityd %s: %s (%s, %s), %lld nodes -> %lld nodes\n", prune_stage_name(stage),
	       model, doc_str(m, "format", "?"), doc_str(m, "format_source", "?"),
	       doc_int(m, "nodes_in"), doc_int(m, "nodes_out"));
	printf("%-40s %-20s %-20s %4s  %-8s %s\n", "LAYER", "TYPE", "WEIGHT SHAPE", "AXIS",
	       "ACTION", "DETAIL");
	const json_t *layers = json_object_get(doc, "layers");
	size_t i, d;
	json_t *l, *dim;
	json_array_foreach(layers, i, l) {
		char shape[64] = "?", axis[24] = "?";
		size_t off = 0;
		const json_t *dims = json_object_get(l, "weight_shape");
		json_array_foreach(dims, d, dim)
			if (off < sizeof(shape))
				off += (size_t)snprintf(shape + off, sizeof(shape) - off, "%s%lld",
							d ? "x" : "", (long long)json_integer_value(dim));
		if (json_is_integer(json_object_get(l, "prune_axis")))
			snprintf(axis, sizeof(axis), "%lld", doc_int(l, "prune_axis"));
		/* A checked layer may carry a reason too (a short axis): only a skip says why. */
		const char *action = doc_str(l, "action", "?");
		const char *reason = strcmp(action, "skipped") ? NULL : doc_str(l, "reason", NULL);
		printf("%-40s %-20s %-20s %4s  %-8s %s%s%s\n", doc_str(l, "name", "?"),
		       doc_str(l, "type", "?"), shape, axis, action, reason ? reason : "",
		       reason ? ": " : "", doc_str(l, "detail", ""));
	}
	const json_t *t = json_object_get(doc, "totals");
	long long n = doc_int(t, "layers");
	const char *done = flags & PRUNE_STAGE_WRITES_MODEL ? "pruned" : "checked";
	printf("%lld layer%s: %lld %s, %lld skipped", n, n == 1 ? "" : "s", doc_int(t, done), done,
	       doc_int(t, "skipped"));
	const json_t *by = json_object_get(t, "skipped_by_reason");
	for (int k = 0; k < PRUNE_SKIP__COUNT; k++)
		if (doc_int(by, prune_skip_name(k)))
			printf(" (%s: %lld)", prune_skip_name(k), doc_int(by, prune_skip_name(k)));
	printf("\n");
	if (flags & PRUNE_STAGE_EXAMINES) {
		n = doc_int(t, "layers_2of4");
		printf("%lld layer%s exactly 2:4", n, n == 1 ? "" : "s");
		if (flags & PRUNE_STAGE_WRITES_MODEL)
			printf("; %lld of %lld weights zeroed by this stage",
			       doc_int(t, "weights_zeroed"), doc_int(t, "weights"));
		printf("\n");
	}
	if (doc_str(doc, "init_op", NULL))
		printf("init op: %s   update op: %s\n", doc_str(doc, "init_op", NULL),
		       doc_str(doc, "update_op", "?"));
	const json_t *warnings = json_object_get(doc, "warnings");
	json_array_foreach(warnings, i, l)
		fprintf(warn, "warning: %s\n", json_string_value(l) ? json_string_value(l) : "?");
}

/* The result as --json's document or as the table. */
static int print_result(const prune_result_t *r, bool json, const char *model, sd_error_t *e)
{
	json_t *doc = api_json_result(r);
	if (!doc)
		return sd_err(e, SD_ENOMEM, "out of memory rendering the result");
	int rc = 0;
	if (!json)
		print_table(doc, r->stage, model, stdout);
	else if (json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_SORT_KEYS) == 0)
		fputc('\n', stdout);
	else
		rc = sd_err(e, SD_ENOMEM, "rendering the result as JSON failed");
	json_decref(doc);
	return rc;
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
	OPT_FSYNC = 1 << 7,
};

typedef struct args {
	const char *model, *config, *outputs, *record, *out, *format;
	int json, fsync;
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
		{"json", no_argument, NULL, 'j'},         {"fsync", no_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},
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
		case 's': a->fsync = 1; bit = OPT_FSYNC; break;
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

/*
 * Runs a stage with its outputs in temporary files that are renamed into place only
 * when everything succeeded.
 */
static int run_cli(prune_stage_t stage, const args_t *a, const char *rec_out)
{
	arena_t arena;
	arena_init(&arena, 0);
	outfile_t om = {0}, orec = {0};
	prune_result_t res = {0};
	sd_error_t e;
	sd_err_clear(&e);
	run_req_t r = {
		.stage = stage, .model = a->model, .config = a->config,
		.record = rec_out ? NULL : a->record,
		.outputs = a->outputs, .format = a->format,
	};
	int rc = 0;
	if (a->out && !(rc = out_open(&om, a->out, &e)))
		r.out_model = om.f;
	if (!rc && rec_out && !(rc = out_open(&orec, rec_out, &e)))
		r.out_record = orec.f;
	if (!rc)
		rc = run_stage(&r, &arena, &res, &e);
	if (!rc && rec_out)
		rc = out_commit(&orec, a->fsync, &e);
	if (!rc && a->out)
		rc = out_commit(&om, a->fsync, &e);
	if (!rc)
		rc = print_result(&res, a->json, a->model, &e);
	out_discard(&om);
	out_discard(&orec);
	arena_deinit(&arena);
	return rc ? fail(&e) : 0;
}

/* The options a stage takes, from what the stage table says it needs and writes. */
static void stage_options(prune_stage_t st, unsigned *need, unsigned *allow)
{
	unsigned f = prune_stage_flags(st);
	*need = OPT_MODEL;
	*allow = OPT_OUTPUTS | OPT_FORMAT | OPT_JSON;
	if (f & PRUNE_STAGE_NEEDS_CONFIG)
		*need |= OPT_CONFIG;
	if (f & (PRUNE_STAGE_NEEDS_RECORD | PRUNE_STAGE_WRITES_RECORD))
		*need |= OPT_RECORD;
	if (f & PRUNE_STAGE_MAY_RECORD)
		*allow |= OPT_RECORD;
	if (f & PRUNE_STAGE_NEEDS_OUTPUTS)
		*need |= OPT_OUTPUTS;
	if (f & PRUNE_STAGE_WRITES_MODEL) {
		*need |= OPT_OUT;
		*allow |= OPT_FSYNC;
	}
}

int cli_stage(prune_stage_t st, int argc, char **argv)
{
	args_t a;
	unsigned need, allow;
	stage_options(st, &need, &allow);
	int rc = parse_args(prune_stage_name(st), argc, argv, need, allow, &a);
	if (rc >= 0)
		return rc;
	/* --record names the record to read (NEEDS_RECORD) or the one to write. */
	bool writes = prune_stage_flags(st) & (PRUNE_STAGE_WRITES_RECORD | PRUNE_STAGE_MAY_RECORD);
	return run_cli(st, &a, writes ? a.record : NULL);
}

int cli_report(int argc, char **argv)
{
	args_t a;
	int rc = parse_args("report", argc, argv, 0, OPT_MODEL, &a);
	if (rc >= 0)
		return rc;
	rc = 0;
	sd_error_t e;
	sd_err_clear(&e);
	json_error_t je;
	json_t *doc = json_loadf(stdin, 0, &je);
	prune_stage_t st;
	if (!doc) {
		rc = sd_err(&e, SD_EUSAGE, "stdin:%d:%d: %s", je.line, je.column, je.text);
	} else if (prune_stage_parse(doc_str(doc, "stage", ""), &st, NULL)) {
		rc = sd_err(&e, SD_EUSAGE, "stdin is not a result document (no known \"stage\")");
	} else {
		/* Warnings apart, so a program reading the table can tell them from it. */
		print_table(doc, st, a.model ? a.model : "-", stderr);
	}
	json_decref(doc);
	return rc ? fail(&e) : 0;
}
