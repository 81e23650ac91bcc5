/*
 * cli: the offline subcommands (`sparsityd insert ...`), the same engine stages the
 * daemon runs, driven from the command line.
 *
 * Each returns the process exit status: 0 success, 1 bad input (model, config, record),
 * 2 usage error, 3 internal or I/O error (the sd_err table's exit column).
 */
#ifndef CLI_H
#define CLI_H

#include "prune/stage.h"

/* `sparsityd <stage> ...`: the options come from the stage table (stage.h). */
int cli_stage(prune_stage_t stage, int argc, char **argv);

/* `sparsityd report [--model NAME]`: a result document on stdin (--json's output, a
 * daemon job's report artifact) printed as the table a stage prints, its warnings on
 * stderr; NAME is the model the table's first line names. */
int cli_report(int argc, char **argv);

/* Prints the top-level usage to stdout (help) or stderr. */
void cli_usage(int to_stderr);

#endif
