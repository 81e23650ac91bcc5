/*
 * store_token: API bearer tokens (see store.h).
 *
 * A token is "sdt_" followed by 32 random bytes in hex. The prefix makes a leaked
 * token recognisable to secret scanners and in logs. Only the SHA-256 of the whole
 * token string is stored, so a copy of the database does not grant access. 256 random
 * bits need no slow password hash: guessing is hopeless, and the lookup by hash needs
 * no constant-time compare (timing can at most reveal bits of a hash, not the token).
 */
#include "store/store_int.h"

#include "common/sd_str.h"
#include "common/sd_time.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#define TOKEN_PREFIX "sdt_"
#define TOKEN_RANDOM 32

int store_token_create(store_t *s, const char *tenant, char *token, size_t cap,
		       sd_error_t *e)
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
	if ((rc = store__run(&s->w, st, e, "insert token")) != 0)
		goto out;
	memcpy(token, plain, sizeof(plain));
out:
	OPENSSL_cleanse(plain, sizeof(plain));
	return rc;
}

int store_token_check(store_reader_t *r, const char *token, char **tenant, sd_error_t *e)
{
	*tenant = NULL;
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
	if (rc == SQLITE_ROW) {
		const char *t = (const char *)sqlite3_column_text(st, 0);
		*tenant = strdup(t ? t : "");
		rc = *tenant ? 0 : sd_err(e, SD_ENOMEM, "store: out of memory");
	} else if (rc == SQLITE_DONE) {
		rc = sd_err(e, SD_ENOTFOUND, "unknown token");
	} else {
		rc = store__sqlerr(&r->c, rc, e, "check token");
	}
	sqlite3_reset(st);
	return rc;
}

int store_tokens_exist(store_reader_t *r, bool *exist, sd_error_t *e)
{
	*exist = false;
	sqlite3_stmt *st;
	int rc = store__stmt(&r->c, STORE__SQL_TOKENS_EXIST, &st, e);
	if (rc)
		return rc;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*exist = sqlite3_column_int(st, 0) != 0;
	sqlite3_reset(st);
	return rc == SQLITE_ROW ? 0 : store__sqlerr(&r->c, rc, e, "check tokens");
}
