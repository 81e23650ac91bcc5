/*
 * token: the `sparsityd token` subcommands (see token.h).
 *
 *   create --tenant NAME [--expires DURATION]   prints the new token, once, on stdout
 *   list [--json]                                every token: id, tenant, times, state
 *   revoke ID|TOKEN                              refused from the daemon's next request
 *
 * Each takes the data directory as `serve` finds it: --data-dir, else data_dir from
 * --config FILE, else the default (./var, or $STATE_DIRECTORY under systemd), so
 * `sparsityd token list --config /etc/sparsityd/sparsityd.conf` reads the database the
 * service uses. A token is never shown again after create: list and revoke name it by
 * its id, a prefix of its SHA-256 (revoke also takes the token itself).
 */
#include "daemon/token.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/sd_err.h"
#include "common/sd_time.h"
#include "daemon/conf.h"
#include "store/store.h"

#define TENANT_MAX 64

static const char usage[] =
	"usage: sparsityd token create --tenant NAME [--expires DURATION] [--data-dir DIR | --config FILE]\n"
	"       sparsityd token list [--json] [--data-dir DIR | --config FILE]\n"
	"       sparsityd token revoke ID|TOKEN [--data-dir DIR | --config FILE]\n"
	"DURATION is a whole number and a unit, s, m, h, d or w (30d); after it the token is\n"
	"refused. ID is the id `token list` shows (or at least its first 8 hex digits).\n";

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("sparsityd token: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	return sd_err_exit(code);
}

/* "30d" -> milliseconds. Returns 0 or SD_EUSAGE. */
static int duration_parse(const char *s, int64_t *ms, sd_error_t *e)
{
	static const struct {
		char unit;
		int64_t ms;
	} units[] = {{'s', 1000}, {'m', 60000}, {'h', 3600000}, {'d', 86400000}, {'w', 604800000}};
	char *end;
	errno = 0;
	long long n = strtoll(s, &end, 10);
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		/* at most about 100 years, so now + duration cannot overflow */
		if (!errno && end != s && s[0] != '-' && s[0] != '+' && n > 0 && end[0] == units[i].unit &&
		    !end[1] && n <= 36500LL * 86400000 / units[i].ms) {
			*ms = n * units[i].ms;
			return 0;
		}
	}
	return sd_err(e, SD_EUSAGE,
		      "--expires '%.40s' is not a duration: a whole number > 0 and a unit, s, m, h, d "
		      "or w (30d), at most 100 years",
		      s);
}

/* Tenants appear in logs, tables and job rows: a plain name keeps them all readable. */
static bool tenant_ok(const char *t)
{
	size_t n = strlen(t);
	return n >= 1 && n <= TENANT_MAX &&
	       strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static void when(int64_t ms, char out[SD_TIME_ISO_MAX])
{
	if (ms)
		sd_time_iso(ms, out);
	else
		snprintf(out, SD_TIME_ISO_MAX, "-");
}

static const char *state(const store_token_t *t, int64_t now)
{
	return t->revoked_ms ? "revoked" : t->expires_ms && now >= t->expires_ms ? "expired" : "active";
}

static json_t *time_json(int64_t ms)
{
	char buf[SD_TIME_ISO_MAX];
	sd_time_iso(ms, buf);
	return ms ? json_string(buf) : json_null();
}

static int print_list(store_t *s, bool as_json)
{
	sd_error_t e;
	store_reader_t *r;
	store_token_t *v = NULL;
	size_t n = 0;
	if (store_reader_open(s, &r, &e))
		return fail(e.code, "%s", e.msg);
	int rc = store_token_list(r, &v, &n, &e);
	store_reader_close(r);
	if (rc)
		return fail(rc, "%s", e.msg);
	int64_t now = sd_now_ms();
	if (as_json) {
		json_t *a = json_array();
		for (size_t i = 0; a && i < n; i++)
			json_array_append_new(
				a, json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:s}", "id", v[i].id, "tenant",
					     v[i].tenant, "created", time_json(v[i].created_ms), "last_used",
					     time_json(v[i].last_used_ms), "expires",
					     time_json(v[i].expires_ms), "revoked",
					     time_json(v[i].revoked_ms), "state", state(&v[i], now)));
		char *out = a ? json_dumps(a, JSON_INDENT(1) | JSON_ENSURE_ASCII) : NULL;
		json_decref(a);
		if (!out)
			rc = SD_ENOMEM;
		else
			printf("%s\n", out);
		free(out);
	} else {
		int tw = (int)strlen("TENANT");
		for (size_t i = 0; i < n; i++)
			if ((int)strlen(v[i].tenant) > tw)
				tw = (int)strlen(v[i].tenant);
		printf("%-12s  %-*s  %-20s  %-20s  %-20s  %s\n", "ID", tw, "TENANT", "CREATED",
		       "LAST-USED", "EXPIRES", "STATE");
		for (size_t i = 0; i < n; i++) {
			char c[SD_TIME_ISO_MAX], u[SD_TIME_ISO_MAX], x[SD_TIME_ISO_MAX];
			when(v[i].created_ms, c);
			when(v[i].last_used_ms, u);
			when(v[i].expires_ms, x);
			printf("%-12s  %-*s  %-20s  %-20s  %-20s  %s\n", v[i].id, tw,
			       v[i].tenant[0] ? v[i].tenant : "-", c, u, x, state(&v[i], now));
		}
	}
	for (size_t i = 0; i < n; i++)
		store_token_clear(&v[i]);
	free(v);
	return rc ? fail(rc, "out of memory") : 0;
}

int token_main(int argc, char **argv)
{
	const char *sub = argc >= 2 ? argv[1] : "";
	bool create = !strcmp(sub, "create"), list = !strcmp(sub, "list"),
	     revoke = !strcmp(sub, "revoke");
	if (!create && !list && !revoke) {
		fputs(usage, stderr);
		return sd_err_exit(SD_EUSAGE);
	}
	const char *tenant = NULL, *dir = NULL, *config = NULL, *expires = NULL, *which = NULL;
	bool as_json = false;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		bool has_value = i + 1 < argc;
		if (create && !strcmp(a, "--tenant") && has_value)
			tenant = argv[++i];
		else if (create && !strcmp(a, "--expires") && has_value)
			expires = argv[++i];
		else if (!strcmp(a, "--data-dir") && has_value)
			dir = argv[++i];
		else if (!strcmp(a, "--config") && has_value)
			config = argv[++i];
		else if (list && !strcmp(a, "--json"))
			as_json = true;
		else if (revoke && !which && a[0] != '-')
			which = a;
		else
			return fail(SD_EUSAGE, "%s: unexpected argument '%s'\n%s", sub, a, usage);
	}
	sd_error_t e;
	int64_t ttl = 0;
	if (create && (!tenant || !tenant_ok(tenant)))
		return fail(SD_EUSAGE,
			    "create: --tenant NAME is required: 1 to %d letters, digits, '.', '_' or '-'",
			    TENANT_MAX);
	if (expires && duration_parse(expires, &ttl, &e))
		return fail(e.code, "%s", e.msg);
	if (revoke && !which)
		return fail(SD_EUSAGE, "revoke: name the token: its id (see `token list`) or the token");

	conf_t c;
	conf_defaults(&c);
	if (config) {
		char *cargv[] = {"token", "--config", (char *)config};
		bool print;
		if (conf_parse(&c, 3, cargv, &print, &e))
			return fail(e.code, "%s", e.msg);
	}
	if (!dir)
		dir = c.data_dir;
	/* Listing or revoking in a directory that holds no database is a wrong path, not
	 * an empty list: say so rather than create one. */
	char db[1100];
	struct stat st;
	snprintf(db, sizeof(db), "%s/sparsityd.db", dir);
	if (!create && stat(db, &st))
		return fail(SD_EUSAGE, "no database in %s (%s): give the daemon's --data-dir or --config",
			    dir, strerror(errno));

	store_t *s;
	if (store_open(dir, &s, &e))
		return fail(e.code, "%s", e.msg);
	int rc = 0;
	char id[STORE_TOKEN_ID_LEN + 1];
	if (create) {
		char token[STORE_TOKEN_MAX];
		int64_t exp_ms = ttl ? sd_now_ms() + ttl : 0;
		if (!(rc = store_token_create(s, tenant, exp_ms, token, sizeof(token), id, &e))) {
			printf("%s\n", token);
			char x[SD_TIME_ISO_MAX];
			when(exp_ms, x);
			fprintf(stderr, "sparsityd token: created token %s for tenant %s%s%s\n", id, tenant,
				exp_ms ? ", expires " : "", exp_ms ? x : "");
		}
	} else if (list) {
		int out = print_list(s, as_json);
		store_close(s);
		return out;
	} else if (!(rc = store_token_revoke(s, which, id, &e))) {
		fprintf(stderr, "sparsityd token: revoked token %s\n", id);
	}
	store_close(s);
	return rc ? fail(rc, "%s", e.msg) : 0;
}
