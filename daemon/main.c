/*
 * sparsityd: entry point. Dispatches to a subcommand; the daemon itself (`serve`) and
 * the offline stages share one binary so a CI job and the service run the same code.
 */
#include <stdio.h>
#include <string.h>

#include "common/sd_err.h"
#include "daemon/cli.h"
#include "daemon/serve.h"
#include "daemon/token.h"

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
	static const struct {
		const char *name;
		int (*run)(int, char **);
	} cmds[] = {
		{"serve", serve_main},
		{"token", token_main},
		{"report", cli_report},
	};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmd, cmds[i].name) == 0)
			return cmds[i].run(argc - 1, argv + 1);
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
