/*
 * prune_config: the AMCT simplified retrain config (SPEC section 5).
 *
 * Parsing checks everything that does not need the graph (syntax, unsupported pruners
 * and quantization fields, the n_out_of_m type, repeated override entries, unknown
 * layer types); prune_config_apply then checks names against the graph's layers and
 * decides, per layer, skip or prune and the update_freq. Priority:
 * override_layer_configs > override_layer_types > prune_config; skip lists are unions.
 * Every error names file:line:col.
 *
 * Memory: the config lives in the caller's arena.
 */
#ifndef PRUNE_CONFIG_H
#define PRUNE_CONFIG_H

#include <stddef.h>

#include "common/arena.h"
#include "common/sd_err.h"
#include "prune/result.h"

typedef struct prune_config prune_config_t;

/*
 * Parses and statically validates a config text. Returns 0 and *out, or SD_ECONFIG
 * (message "file:line:col: ..."), SD_ENOMEM.
 */
SD_MUST_CHECK int prune_config_parse(const char *text, size_t len, const char *file,
				     arena_t *a, prune_config_t **out, sd_error_t *e);

/*
 * Applies cfg to the layers found in the graph: checks that every layer name in a skip
 * or override list is one of them (the error lists the valid names), sets skip reasons
 * from the skip lists, resolves each remaining layer's prune config (update_freq) or
 * skips it with no_prune_config. Returns 0, SD_ECONFIG, or SD_ENOLAYER when no layer is
 * left to prune.
 */
SD_MUST_CHECK int prune_config_apply(const prune_config_t *cfg, prune_layer_t *layers,
				     size_t n, sd_error_t *e);

#endif
