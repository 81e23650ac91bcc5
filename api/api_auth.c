/*
 * api_auth: who is calling. Bearer tokens for /v1 (see api_int.h), and the last-use
 * times of tokens, which `sparsityd token list` shows.
 *
 * Auth is on once any token row exists (revoked ones included: see store_token.c).
 * Whether one exists is re-read at most once a second, since tokens are created by
 * another process (`sparsityd token create`); the token itself is looked up on every
 * request, so a revocation or an expiry applies to the very next request.
 *
 * Last use: an HTTP thread may not write to the store (the loop thread owns the one
 * writer connection, see store.h), and must not wait for the loop thread here either
 * (api_stop runs on the loop thread while HTTP threads still answer). So authorise()
 * only notes a use, at most once a minute per token (the stored time is read with the
 * token), in a small table under a mutex; the loop thread writes the notes from its
 * poll timer (api_token_uses_write) and once more in api_stop. A note that finds the
 * table full is dropped: the next request with that token notes it again.
 */
#include "api/api_int.h"

#include <string.h>

#include "common/sd_log.h"
#include "common/sd_time.h"

/* Precision of a token's "last used": one store write per token per minute at most. */
#define USE_GRAIN_MS (60 * 1000)

static void note_use(api_t *a, const store_token_t *t, int64_t now)
{
	if (now - t->last_used_ms < USE_GRAIN_MS)
		return;
	pthread_mutex_lock(&a->uses_mu);
	int i = 0;
	while (i < a->n_uses && strcmp(a->uses[i].hash, t->hash))
		i++;
	if (i < API_USES_MAX) {
		memcpy(a->uses[i].hash, t->hash, sizeof(a->uses[i].hash));
		a->uses[i].ms = now;
		a->n_uses += i == a->n_uses;
	}
	pthread_mutex_unlock(&a->uses_mu);
}

int api__token_access(api_t *a, const char *header, int64_t now, store_token_t *t,
		       sd_error_t *e)
{
	memset(t, 0, sizeof(*t));
	store_reader_t *rd = api__reader(a, e);
	if (!rd)
		return e->code;
	bool exist = atomic_load(&a->tokens_on);
	if (now - atomic_load(&a->tokens_checked_ms) > 1000) {
		int rc = store_tokens_exist(rd, &exist, e);
		if (rc)
			return rc;
		atomic_store(&a->tokens_on, exist);
		atomic_store(&a->tokens_checked_ms, now);
	}
	if (!exist)
		return 0;
	if (!header)
		return sd_err(e, SD_EAUTH,
			      "this daemon requires a bearer token (Authorization: Bearer ...)");
	const char *token = api_bearer_token(header);
	if (!token)
		return sd_err(e, SD_EAUTH, "the Authorization header is not 'Bearer <token>'");
	int rc = store_token_check(rd, token, now, t, e);
	if (rc == SD_ENOTFOUND)
		return sd_err(e, SD_EAUTH, "unknown token");
	return rc; /* revoked or expired (SD_EAUTH, saying so), or the store failed */
}

int api__authorise(api_t *a, req_t *r, struct MHD_Connection *c, sd_error_t *e)
{
	int64_t now = sd_now_ms();
	store_token_t t;
	int rc = api__token_access(a, api__header(c, "Authorization"), now, &t, e);
	if (rc || !t.tenant)
		return rc;
	note_use(a, &t, now);
	r->tenant = t.tenant; /* the request owns it now */
	t.tenant = NULL;
	store_token_clear(&t);
	return 0;
}

void api_token_uses_write(api_t *a)
{
	struct api_use uses[API_USES_MAX];
	pthread_mutex_lock(&a->uses_mu);
	int n = a->n_uses;
	memcpy(uses, a->uses, sizeof(uses[0]) * (size_t)n);
	a->n_uses = 0;
	pthread_mutex_unlock(&a->uses_mu);
	for (int i = 0; i < n; i++) {
		sd_error_t e;
		if (store_token_touch(a->store, uses[i].hash, uses[i].ms, &e))
			log_warn("api", "cannot record the use of token %.12s: %s", uses[i].hash, e.msg);
	}
}
