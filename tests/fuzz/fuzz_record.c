/*
 * fuzz_record: prune_record_read on its own (the whole input is a record file), and for
 * every record it accepts, a round trip through prune_record_write:
 *   entries -> layers -> write (text1) -> read -> the same entries -> write (text2),
 * with text1 == text2 and every field export uses (name, layer_type, weight_input,
 * mask_shape, prune_axis, update_freq, scope) preserved.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "prune/layers.h"
#include "prune/record.h"

/* The layers a stage would have reported for these entries (pruned, with insertion
 * names so the scope attr is written). */
static prune_layer_t *to_layers(const prune_record_entry_t *ents, size_t n, arena_t *a,
				prune_result_t *res)
{
	prune_layer_t *ls = arena_calloc(a, n, sizeof(*ls));
	FUZZ_ASSERT(ls != NULL, "out of memory");
	for (size_t i = 0; i < n; i++) {
		const prune_record_entry_t *en = &ents[i];
		prune_layer_t *l = &ls[i];
		l->name = en->name;
		l->type = en->layer_type;
		l->weight_input = en->weight_input;
		l->rank = en->rank;
		memcpy(l->shape, en->shape, sizeof(l->shape));
		l->axis = en->axis;
		l->update_freq = en->update_freq;
		l->action = PRUNE_ACTION_PRUNED;
		l->mask_var = "mask";
		l->step_var = "step";
		l->update_op = "update";
	}
	memset(res, 0, sizeof(*res));
	res->stage = PRUNE_STAGE_INSERT;
	res->layers = ls;
	res->n_layers = n;
	res->pruned = n;
	return ls;
}

static void write_record(const prune_record_entry_t *ents, size_t n, arena_t *a,
			 fuzz_mem_t *out)
{
	prune_result_t res;
	to_layers(ents, n, a, &res);
	sd_error_t e;
	sd_err_clear(&e);
	FILE *f = fuzz_mem_open(out);
	int rc = prune_record_write(&res, a, f, &e);
	fuzz_mem_close(out);
	FUZZ_ASSERT(rc == 0, "prune_record_write failed: %s", e.msg);
}

static void same_entry(const prune_record_entry_t *x, const prune_record_entry_t *y)
{
	FUZZ_ASSERT(strcmp(x->name, y->name) == 0, "name '%s' became '%s'", x->name, y->name);
	FUZZ_ASSERT(strcmp(x->layer_type, y->layer_type) == 0, "layer_type '%s' became '%s'",
		    x->layer_type, y->layer_type);
	FUZZ_ASSERT(strcmp(x->weight_input, y->weight_input) == 0,
		    "weight_input '%s' became '%s'", x->weight_input, y->weight_input);
	FUZZ_ASSERT(x->rank == y->rank && x->axis == y->axis &&
			    x->update_freq == y->update_freq,
		    "rank/axis/update_freq %d/%d/%" PRIu32 " became %d/%d/%" PRIu32, x->rank,
		    x->axis, x->update_freq, y->rank, y->axis, y->update_freq);
	for (int d = 0; d < x->rank; d++)
		FUZZ_ASSERT(x->shape[d] == y->shape[d], "dim %d %" PRId64 " became %" PRId64, d,
			    x->shape[d], y->shape[d]);
	/* Written from mask_var: "<name>/sparsityd". */
	size_t nl = strlen(x->name);
	FUZZ_ASSERT(strncmp(y->scope, x->name, nl) == 0 &&
			    strcmp(y->scope + nl, "/" PRUNE_SCOPE) == 0,
		    "scope of '%s' read back as '%s'", x->name, y->scope);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	arena_t a;
	arena_init(&a, fuzz_arena_limit());
	sd_error_t e;
	sd_err_clear(&e);
	prune_record_entry_t *ents;
	size_t n;
	int rc = prune_record_read((const char *)data, size, "fuzz.record", &a, &ents, &n, &e);
	fuzz_expect("prune_record_read", rc, &e, 2, SD_ERECORD, SD_ENOMEM);
	if (rc == 0) {
		FUZZ_ASSERT(n > 0, "a record with no entries was accepted");
		for (size_t i = 0; i < n; i++) {
			const prune_record_entry_t *en = &ents[i];
			FUZZ_ASSERT(en->name && en->name[0] && en->layer_type && en->weight_input &&
					    en->scope,
				    "entry %zu is incomplete", i);
			FUZZ_ASSERT(en->rank >= 1 && en->rank <= 4 && en->axis >= 0 &&
					    en->axis < en->rank,
				    "entry %zu: rank %d axis %d", i, en->rank, en->axis);
		}
		fuzz_mem_t t1, t2;
		write_record(ents, n, &a, &t1);
		prune_record_entry_t *back;
		size_t n_back;
		sd_err_clear(&e);
		rc = prune_record_read(t1.buf, t1.len, "written.record", &a, &back, &n_back, &e);
		if (rc) {
			fprintf(stderr, "fuzz: a written record does not read back: %s\n%.*s\n",
				e.msg, (int)(t1.len > 4000 ? 4000 : t1.len), t1.buf);
			abort();
		}
		FUZZ_ASSERT(n_back == n, "%zu entries read back as %zu", n, n_back);
		for (size_t i = 0; i < n; i++)
			same_entry(&ents[i], &back[i]);
		write_record(back, n_back, &a, &t2);
		FUZZ_ASSERT(t1.len == t2.len && memcmp(t1.buf, t2.buf, t1.len) == 0,
			    "record text changed on the second write (%zu vs %zu bytes)", t1.len,
			    t2.len);
		free(t1.buf);
		free(t2.buf);
	}
	arena_deinit(&a);
	return 0;
}
