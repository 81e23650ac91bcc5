/*
 * cli: the offline subcommands (`sparsityd insert ...`), the same engine stages the
 * daemon runs, driven from the command line.
 *
 * Each returns the process exit status: 0 success, 1 bad input (model, config, record),
 * 2 usage error, 3 internal or I/O error (the sd_err table's exit column).
 */
#ifndef CLI_H
#define CLI_H

int cli_insert(int argc, char **argv);
int cli_export(int argc, char **argv);
int cli_prune(int argc, char **argv);
int cli_check(int argc, char **argv);

/* Prints the top-level usage to stdout (help) or stderr. */
void cli_usage(int to_stderr);

#endif
