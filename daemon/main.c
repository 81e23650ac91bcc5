/*
 * sparsityd: entry point. Dispatches to a subcommand. The offline stages run here; the
 * daemon (`serve`) and its token tool are sparsityd-server beside this binary
 * (daemon/server.c says why), exec'd with the same arguments, so the command line is
 * one and the stages load none of the daemon's libraries. Both link the same engine
 * (prune/, daemon/run.c), so a CI job and the service run the same code.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/sd_err.h"
#include "daemon/cli.h"

#define SERVER "sparsityd-server"

/* Replaces the process with sparsityd-server from this binary's own directory (the
 * build tree, and every install: both go to the same bin directory). Returns only on
 * failure, with the exit status. */
static int exec_server(char **argv)
{
	char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
	if (n < 0) {
		fprintf(stderr, "sparsityd: error: cannot find this binary (/proc/self/exe): %s\n",
			strerror(errno));
		return 1;
	}
	path[n] = 0;
	char *slash = strrchr(path, '/');
	size_t dir = slash ? (size_t)(slash - path) + 1 : 0;
	if (dir + sizeof(SERVER) > sizeof(path)) {
		fprintf(stderr, "sparsityd: error: path too long: %s\n", path);
		return 1;
	}
	memcpy(path + dir, SERVER, sizeof(SERVER));
	argv[0] = path;
	execv(path, argv);
	fprintf(stderr, "sparsityd: error: cannot run the daemon's binary %s: %s\n", path,
		strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		cli_usage(1);
		return 2;
	}
	const char *cmd = argv[1];
	prune_stage_t st;
	if (prune_stage_parse(cmd, &st, NULL) == 0)
		return cli_stage(st, argc - 1, argv + 1);
	if (strcmp(cmd, "--print-errors") == 0) {
		sd_err_print(stdout);
		return 0;
	}
	if (strcmp(cmd, "--print-stages") == 0) {
		/* For the test that holds openapi.yaml's stage enums against the table. */
		for (int i = 0; i < PRUNE_STAGE__COUNT; i++)
			printf("%s\n", prune_stage_name((prune_stage_t)i));
		return 0;
	}
	if (strcmp(cmd, "serve") == 0 || strcmp(cmd, "token") == 0)
		return exec_server(argv);
	if (strcmp(cmd, "report") == 0)
		return cli_report(argc - 1, argv + 1);
	if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
		printf("sparsityd %s\n", SPARSITYD_VERSION);
		return 0;
	}
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		cli_usage(0);
		return 0;
	}
	fprintf(stderr, "sparsityd: error: unknown command '%s'\n", cmd);
	cli_usage(1);
	return 2;
}
