/*
 * bench_insert: what the insert stage costs next to simply loading and saving the same
 * graph (issue target: insert <= 1.5x load+save).
 *
 * Each measurement runs in a forked child so its peak RSS (wait4's ru_maxrss) belongs
 * to that operation alone; the best of several runs is reported, as the floor is what
 * the code costs and the rest is machine noise. Models: files given on the command line
 * (e.g. the ResNet50 training MetaGraphDef from make_models.py) and a synthetic GraphDef
 * of about 20,000 nodes built here (6,666 MatMul layers with Const weights).
 *
 * usage: bench_insert [--runs N] [--synthetic NODES] [MODEL OUTPUTS]...
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "arena.h"
#include "config.h"
#include "graph.h"
#include "insert.h"
#include "layers.h"
#include "tf_graph.pb-c.h"

static const char sample_cfg[] =
	"prune_config { n_out_of_m_pruner { l1_selective_prune { update_freq: 0 } } }\n";

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One operation in the child: load (+ insert) + save to a temporary file. */
static int op(const char *path, const char *outputs, int do_insert)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st))
		return 3;
	const uint8_t *buf = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (buf == MAP_FAILED)
		return 3;
	arena_t a;
	arena_init(&a, 0);
	sd_error_t e;
	prune_graph_t *g;
	int rc = prune_graph_load(buf, (size_t)st.st_size, path, PRUNE_FMT_AUTO, (size_t)1 << 32,
				  &a, &g, &e);
	if (!rc && do_insert) {
		prune_config_t *cfg;
		const char **outs;
		size_t n;
		prune_result_t r = {0};
		rc = prune_config_parse(sample_cfg, sizeof(sample_cfg) - 1, "bench.cfg", &a, &cfg,
					&e);
		if (!rc)
			rc = prune_outputs_parse(g, outputs, &outs, &n, &e);
		if (!rc)
			rc = prune_insert(g, cfg, outs, n, (size_t)1 << 32, &r, &e);
	}
	if (!rc) {
		char tmp[] = "/tmp/bench_insert.XXXXXX";
		int ofd = mkstemp(tmp);
		FILE *f = fdopen(ofd, "wb");
		setvbuf(f, NULL, _IOFBF, 1 << 20);
		rc = prune_graph_save(g, PRUNE_FMT_AUTO, f, &e);
		fclose(f);
		unlink(tmp);
	}
	if (rc)
		fprintf(stderr, "bench: %s\n", e.msg);
	arena_deinit(&a);
	return rc ? 1 : 0;
}

typedef struct meas {
	double secs;
	long rss_kib;
} meas_t;

static meas_t measure(const char *path, const char *outputs, int do_insert, int runs)
{
	meas_t best = {1e30, 0};
	for (int i = 0; i < runs; i++) {
		double t0 = now();
		pid_t pid = fork();
		if (pid == 0)
			_exit(op(path, outputs, do_insert));
		int status;
		struct rusage ru;
		wait4(pid, &status, 0, &ru);
		double dt = now() - t0;
		if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "bench: child failed on %s\n", path);
			exit(1);
		}
		if (dt < best.secs)
			best.secs = dt;
		if (ru.ru_maxrss > best.rss_kib)
			best.rss_kib = ru.ru_maxrss;
	}
	return best;
}

/* A synthetic GraphDef: a chain of MatMul layers, each with a 64x64 Const weight. */
static void synthetic(const char *path, size_t nodes, char *last, size_t last_len)
{
	arena_t a;
	arena_init(&a, 0);
	size_t layers = (nodes - 1) / 3;
	Tensorflow__GraphDef gd = TENSORFLOW__GRAPH_DEF__INIT;
	gd.node = arena_calloc(&a, layers * 3 + 1, sizeof(*gd.node));
	static float w[64 * 64];
	for (size_t i = 0; i < 64 * 64; i++)
		w[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
	char prev[64] = "x";
	Tensorflow__NodeDef *x = arena_alloc(&a, sizeof(*x));
	tensorflow__node_def__init(x);
	x->name = "x";
	x->op = "Placeholder";
	gd.node[gd.n_node++] = x;
	for (size_t l = 0; l < layers; l++) {
		const char *names[3] = {arena_sprintf(&a, "l%zu/w", l), arena_sprintf(&a, "l%zu/mm", l),
					arena_sprintf(&a, "l%zu/relu", l)};
		Tensorflow__NodeDef *n[3];
		for (int k = 0; k < 3; k++) {
			n[k] = arena_alloc(&a, sizeof(*n[k]));
			tensorflow__node_def__init(n[k]);
			n[k]->name = (char *)names[k];
			gd.node[gd.n_node++] = n[k];
		}
		n[0]->op = "Const";
		Tensorflow__AttrValue *v = arena_alloc(&a, sizeof(*v)), *dt = arena_alloc(&a, sizeof(*dt));
		tensorflow__attr_value__init(v);
		tensorflow__attr_value__init(dt);
		dt->value_case = TENSORFLOW__ATTR_VALUE__VALUE_TYPE;
		dt->type = TENSORFLOW__DATA_TYPE__DT_FLOAT;
		v->value_case = TENSORFLOW__ATTR_VALUE__VALUE_TENSOR;
		v->tensor = arena_alloc(&a, sizeof(*v->tensor));
		tensorflow__tensor_proto__init(v->tensor);
		v->tensor->dtype = TENSORFLOW__DATA_TYPE__DT_FLOAT;
		v->tensor->tensor_shape = arena_alloc(&a, sizeof(*v->tensor->tensor_shape));
		tensorflow__tensor_shape_proto__init(v->tensor->tensor_shape);
		Tensorflow__TensorShapeProto__Dim **dims = arena_calloc(&a, 2, sizeof(*dims));
		for (int d = 0; d < 2; d++) {
			dims[d] = arena_alloc(&a, sizeof(*dims[d]));
			tensorflow__tensor_shape_proto__dim__init(dims[d]);
			dims[d]->size = 64;
		}
		v->tensor->tensor_shape->dim = dims;
		v->tensor->tensor_shape->n_dim = 2;
		v->tensor->tensor_content.data = (uint8_t *)w;
		v->tensor->tensor_content.len = sizeof(w);
		Tensorflow__NodeDef__AttrEntry **ents = arena_calloc(&a, 2, sizeof(*ents));
		for (int k = 0; k < 2; k++) {
			ents[k] = arena_alloc(&a, sizeof(*ents[k]));
			tensorflow__node_def__attr_entry__init(ents[k]);
		}
		ents[0]->key = "dtype";
		ents[0]->value = dt;
		ents[1]->key = "value";
		ents[1]->value = v;
		n[0]->attr = ents;
		n[0]->n_attr = 2;
		n[1]->op = "MatMul";
		n[1]->input = arena_calloc(&a, 2, sizeof(char *));
		n[1]->input[0] = arena_strdup(&a, prev);
		n[1]->input[1] = (char *)names[0];
		n[1]->n_input = 2;
		n[2]->op = "Relu";
		n[2]->input = arena_calloc(&a, 1, sizeof(char *));
		n[2]->input[0] = (char *)names[1];
		n[2]->n_input = 1;
		snprintf(prev, sizeof(prev), "%s", names[2]);
	}
	FILE *f = fopen(path, "wb");
	size_t len = tensorflow__graph_def__get_packed_size(&gd);
	uint8_t *buf = malloc(len);
	tensorflow__graph_def__pack(&gd, buf);
	fwrite(buf, 1, len, f);
	fclose(f);
	free(buf);
	printf("synthetic graph: %zu nodes, %zu layers, %.1f MB -> %s (output '%s')\n", gd.n_node,
	       layers, len / 1e6, path, prev);
	snprintf(last, last_len, "%s", prev);
	arena_deinit(&a);
}

static int report(const char *label, const char *path, const char *outputs, int runs)
{
	struct stat st;
	stat(path, &st);
	meas_t base = measure(path, outputs, 0, runs);
	meas_t ins = measure(path, outputs, 1, runs);
	double ratio = ins.secs / base.secs;
	printf("%-28s %8.1f MB  load+save %8.1f ms %7.1f MiB | insert %8.1f ms %7.1f MiB | "
	       "ratio %.2fx (target <= 1.50x: %s)\n",
	       label, st.st_size / 1e6, base.secs * 1e3, base.rss_kib / 1024.0, ins.secs * 1e3,
	       ins.rss_kib / 1024.0, ratio, ratio <= 1.5 ? "PASS" : "FAIL");
	return ratio <= 1.5 ? 0 : 1;
}

int main(int argc, char **argv)
{
	int runs = 5, fails = 0;
	size_t syn = 20000;
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
			runs = atoi(argv[++i]);
		else if (strcmp(argv[i], "--synthetic") == 0 && i + 1 < argc)
			syn = (size_t)atol(argv[++i]);
		else {
			fprintf(stderr, "usage: bench_insert [--runs N] [--synthetic NODES] "
					"[MODEL OUTPUTS]...\n");
			return 2;
		}
	}
	printf("bench_insert: best of %d runs, each in a fresh process\n", runs);
	if (syn) {
		char path[] = "/tmp/bench_synthetic.pb";
		char out[64];
		synthetic(path, syn, out, sizeof(out));
		fails += report("synthetic", path, out, runs);
		unlink(path);
	}
	for (; i + 1 < argc; i += 2) {
		const char *base = strrchr(argv[i], '/');
		fails += report(base ? base + 1 : argv[i], argv[i], argv[i + 1], runs);
	}
	return fails ? 1 : 0;
}
