/*
 * store_token: API bearer tokens (see store.h).
 *
 * A token is "sdt_" followed by 32 random bytes in hex. The prefix makes a leaked
 * token recognisable to secret scanners and in logs. Only the SHA-256 of the whole
 * token string is stored, so a copy of the database does not grant access. 256 random
 * bits need no slow password hash: guessing is hopeless, and the lookup by hash needs
 * no constant-time compare (timing can at most reveal bits of a hash, not the token).
 *
 * Life of a token: created (optionally with an expiry), checked on every /v1 request
 * (the row is read each time, so a revocation or an expiry applies to the very next
 * request), its last use written back by the daemon at most once a minute (see
 * api_auth.c), revoked by the operator. Revoking keeps the row with its revocation
 * time: the daemon turns auth on when any token row exists, and deleting the last row
 * would silently open the API to everyone.
 */
#include "store/store_int.h"

#include "common/sd_str.h"
#include "common/sd_time.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_PREFIX "sdt_"
#define TOKEN_RANDOM 32
/* Fewer hex digits than this could name a token by accident when revoking. */
#define REVOKE_PREFIX_MIN 8

int store_token_create(store_t *s, const char *tenant, int64_t expires_ms, char *token,
		       size_t cap, char id[STORE_TOKEN_ID_LEN + 1], sd_error_t *e)
{
	_Static_assert(sizeof(TOKEN_PREFIX) - 1 + 2 * TOKEN_RANDOM + 1 == STORE_TOKEN_MAX,
		       "STORE_TOKEN_MAX matches the token format");
	if (!token || cap < STORE_TOKEN_MAX)
		return sd_err(e, SD_EUSAGE, "token buffer needs %d bytes", STORE_TOKEN_MAX);
	unsigned char raw[TOKEN_RANDOM];
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return sd_err(e, SD_EINTERNAL, "cannot draw random bytes for a token");
	char plain[STORE_TOKEN_MAX];
	memcpy(plain, TOKEN_PREFIX, sizeof(TOKEN_PREFIX) - 1);
	sd_hex(raw, sizeof(raw), plain + sizeof(TOKEN_PREFIX) - 1);
	OPENSSL_cleanse(raw, sizeof(raw));
	char hash[STORE_SHA_HEX + 1];
	int rc = store__sha256_hex(plain, strlen(plain), hash, e);
	if (rc)
		goto out;
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_TOKEN_INSERT, &st, e)) != 0)
		goto out;
	store__bind_text(st, 1, hash);
	store__bind_text(st, 2, tenant ? tenant : "");
	sqlite3_bind_int64(st, 3, sd_now_ms());
	sqlite3_bind_int64(st, 4, expires_ms > 0 ? expires_ms : 0);
	if ((rc = store__run(&s->w, st, e, "insert token")) != 0)
		goto out;
	memcpy(token, plain, sizeof(plain));
	if (id)
		snprintf(id, STORE_TOKEN_ID_LEN + 1, "%.12s", hash);
out:
	OPENSSL_cleanse(plain, sizeof(plain));
	return rc;
}

void store_token_clear(store_token_t *t)
{
	if (!t)
		return;
	free(t->tenant);
	memset(t, 0, sizeof(*t));
}

/* Fills t from a row of TOKEN_GET / TOKEN_LIST (hash, tenant, created, expires, last
 * used, revoked). Returns 0 or SD_ENOMEM. */
static int token_row(sqlite3_stmt *st, store_token_t *t, sd_error_t *e)
{
	memset(t, 0, sizeof(*t));
	const char *h = (const char *)sqlite3_column_text(st, 0);
	const char *ten = (const char *)sqlite3_column_text(st, 1);
	snprintf(t->hash, sizeof(t->hash), "%s", h ? h : "");
	snprintf(t->id, sizeof(t->id), "%.12s", t->hash);
	t->created_ms = sqlite3_column_int64(st, 2);
	t->expires_ms = sqlite3_column_int64(st, 3);
	t->last_used_ms = sqlite3_column_int64(st, 4);
	t->revoked_ms = sqlite3_column_int64(st, 5);
	t->tenant = strdup(ten ? ten : "");
	return t->tenant ? 0 : sd_err(e, SD_ENOMEM, "store: out of memory");
}

int store_token_check(store_reader_t *r, const char *token, int64_t now_ms, store_token_t *out,
		      sd_error_t *e)
{
	memset(out, 0, sizeof(*out));
	if (!token || strncmp(token, TOKEN_PREFIX, sizeof(TOKEN_PREFIX) - 1) != 0 ||
	    strlen(token) != STORE_TOKEN_MAX - 1)
		return sd_err(e, SD_ENOTFOUND, "unknown token");
	char hash[STORE_SHA_HEX + 1];
	int rc = store__sha256_hex(token, strlen(token), hash, e);
	if (rc)
		return rc;
	sqlite3_stmt *st;
	if ((rc = store__stmt(&r->c, STORE__SQL_TOKEN_GET, &st, e)) != 0)
		return rc;
	store__bind_text(st, 1, hash);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		rc = token_row(st, out, e);
	else if (rc == SQLITE_DONE)
		rc = sd_err(e, SD_ENOTFOUND, "unknown token");
	else
		rc = store__sqlerr(&r->c, rc, e, "check token");
	sqlite3_reset(st);
	if (rc)
		return rc;
	char when[SD_TIME_ISO_MAX];
	if (out->revoked_ms) {
		sd_time_iso(out->revoked_ms, when);
		rc = sd_err(e, SD_EAUTH, "token %s was revoked at %s", out->id, when);
	} else if (out->expires_ms && now_ms >= out->expires_ms) {
		sd_time_iso(out->expires_ms, when);
		rc = sd_err(e, SD_EAUTH, "token %s expired at %s", out->id, when);
	}
	if (rc)
		store_token_clear(out);
	return rc;
}

int store_token_list(store_reader_t *r, store_token_t **out, size_t *n, sd_error_t *e)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *st;
	int rc = store__stmt(&r->c, STORE__SQL_TOKEN_LIST, &st, e);
	if (rc)
		return rc;
	store_token_t *v = NULL;
	size_t len = 0, cap = 0;
	while (!rc && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		rc = 0;
		if (len == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			store_token_t *nv = realloc(v, ncap * sizeof(*v));
			if (!nv) {
				rc = sd_err(e, SD_ENOMEM, "store: out of memory");
				break;
			}
			v = nv;
			cap = ncap;
		}
		if (!(rc = token_row(st, &v[len], e)))
			len++;
	}
	if (rc == SQLITE_DONE)
		rc = 0;
	else if (rc > 0)
		rc = store__sqlerr(&r->c, rc, e, "list tokens");
	sqlite3_reset(st);
	if (rc) {
		for (size_t i = 0; i < len; i++)
			store_token_clear(&v[i]);
		free(v);
		return rc;
	}
	*out = v;
	*n = len;
	return 0;
}

/* The hash `which` names: a plain token's own hash, or that of the one row whose hash
 * starts with the hex prefix `which`. Inside the revoke transaction (writer). */
static int revoke_target(store_t *s, const char *which, char hash[STORE_SHA_HEX + 1],
			 sd_error_t *e)
{
	size_t len = strlen(which);
	char prefix[STORE_SHA_HEX + 1];
	int rc;
	bool plain = !strncmp(which, TOKEN_PREFIX, sizeof(TOKEN_PREFIX) - 1);
	if (plain) {
		if (len != STORE_TOKEN_MAX - 1)
			return sd_err(e, SD_EUSAGE, "'%.80s' is not a whole token (sdt_ and 64 hex digits)",
				      which);
		if ((rc = store__sha256_hex(which, len, prefix, e)))
			return rc;
	} else if (len < REVOKE_PREFIX_MIN || len > STORE_SHA_HEX ||
		   strspn(which, "0123456789abcdef") != len) {
		return sd_err(e, SD_EUSAGE,
			      "'%.80s' is neither a token nor a token id (%d to %d lowercase hex "
			      "digits, as `token list` shows)",
			      which, REVOKE_PREFIX_MIN, STORE_SHA_HEX);
	} else {
		memcpy(prefix, which, len + 1);
	}
	sqlite3_stmt *st;
	if ((rc = store__stmt(&s->w, STORE__SQL_TOKEN_FIND, &st, e)))
		return rc;
	store__bind_text(st, 1, prefix);
	int found = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *h = (const char *)sqlite3_column_text(st, 0);
		snprintf(hash, STORE_SHA_HEX + 1, "%s", h ? h : "");
		found++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return store__sqlerr(&s->w, rc, e, "find token");
	if (found > 1)
		return sd_err(e, SD_ECONFLICT, "token id '%s' names several tokens; give more digits",
			      which);
	if (!found)
		return plain ? sd_err(e, SD_ENOTFOUND, "no such token")
			     : sd_err(e, SD_ENOTFOUND, "no token with id '%s'", which);
	return 0;
}

int store_token_revoke(store_t *s, const char *which, char id[STORE_TOKEN_ID_LEN + 1],
		       sd_error_t *e)
{
	char hash[STORE_SHA_HEX + 1] = "";
	int rc = store__begin(&s->w, true, e);
	if (rc)
		return rc;
	sqlite3_stmt *st;
	if (!(rc = revoke_target(s, which, hash, e)) &&
	    !(rc = store__stmt(&s->w, STORE__SQL_TOKEN_REVOKE, &st, e))) {
		store__bind_text(st, 1, hash);
		sqlite3_bind_int64(st, 2, sd_now_ms());
		if (!(rc = store__run(&s->w, st, e, "revoke token")) && !sqlite3_changes(s->w.db))
			rc = sd_err(e, SD_ECONFLICT, "token %.12s was revoked already", hash);
	}
	if (rc) {
		store__rollback(&s->w);
		return rc;
	}
	if ((rc = store__commit(&s->w, e)))
		return rc;
	if (id)
		snprintf(id, STORE_TOKEN_ID_LEN + 1, "%.12s", hash);
	return 0;
}

int store_token_touch(store_t *s, const char *hash, int64_t ms, sd_error_t *e)
{
	sqlite3_stmt *st;
	int rc = store__stmt(&s->w, STORE__SQL_TOKEN_TOUCH, &st, e);
	if (rc)
		return rc;
	store__bind_text(st, 1, hash);
	sqlite3_bind_int64(st, 2, ms);
	return store__run(&s->w, st, e, "record token use");
}

int store_tokens_exist(store_reader_t *r, bool *exist, sd_error_t *e)
{
	int64_t any;
	int rc = store__scalar(&r->c, STORE__SQL_TOKENS_EXIST, NULL, &any, e, "check tokens");
	*exist = any != 0;
	return rc;
}
