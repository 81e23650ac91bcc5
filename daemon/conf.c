/*
 * conf: settings table, flags, config file and --print-config (see conf.h).
 */
#include "daemon/conf.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sd_log.h"
#include "common/sd_str.h"

typedef enum { T_STR, T_INT, T_BOOL, T_LEVEL, T_LOGFMT } type_t;

/* X(name, type, default, min, max, reloadable, help) */
#define CONF_MAP(X)                                                                       \
	X(listen, T_STR, "127.0.0.1:8080", 0, 0, false,                                   \
	  "address:port to listen on; non-loopback needs API tokens and TLS, or insecure") \
	X(tls_cert, T_STR, "", 0, 0, false,                                               \
	  "PEM certificate chain (leaf first) for HTTPS, re-read on SIGHUP; empty: HTTP")  \
	X(tls_key, T_STR, "", 0, 0, false,                                                \
	  "PEM private key of tls_cert (unencrypted), re-read on SIGHUP")                  \
	X(data_dir, T_STR, "./var", 0, 0, false,                                          \
	  "directory for the SQLite database and the blobs; under systemd the default "   \
	  "is $STATE_DIRECTORY (StateDirectory=)")                                        \
	X(workers, T_INT, "2", 1, 64, false, "stage worker threads (jobs run at once)")     \
	X(http_threads, T_INT, "2", 1, 64, false, "HTTP threads (libmicrohttpd pool)")      \
	X(max_upload, T_INT, "2147483648", 1, INT64_MAX, false,                            \
	  "largest request body in bytes (a model and its config)")                       \
	X(max_connections, T_INT, "1024", 8, 65536, false,                                \
	  "open client connections at most; new ones are refused beyond")                 \
	X(max_uploads, T_INT, "16", 1, 4096, false,                                       \
	  "request bodies streaming at once; POST /v1/jobs answers 429 beyond")           \
	X(hash_threads, T_INT, "2", 1, 64, false,                                         \
	  "threads writing and hashing uploads and outputs, shared by all")               \
	X(direct_uploads, T_BOOL, "false", 0, 0, false,                                   \
	  "write uploaded files around the page cache (O_DIRECT): less CPU per GB, but "  \
	  "each job then reads its input from the disk")                                  \
	X(idle_timeout, T_INT, "30", 1, 3600, false,                                      \
	  "seconds a connection may send nothing before it is closed")                    \
	X(max_event_streams, T_INT, "512", 1, 65536, false,                               \
	  "GET /v1/events streams open at once (each holds a connection); 503 beyond")    \
	X(event_heartbeat, T_INT, "15", 1, 3600, false,                                   \
	  "seconds between heartbeat comments on an event stream; a client that can "     \
	  "take no byte for twice this is dropped")                                       \
	X(queue_max, T_INT, "1000", 1, 1000000, true,                                     \
	  "queued jobs beyond which POST /v1/jobs answers 429")                           \
	X(max_attempts, T_INT, "2", 1, 100, false,                                        \
	  "runs of a job interrupted by a crash or kill before it fails")                 \
	X(retention_hours, T_INT, "168", 0, 876000, true,                                 \
	  "finished jobs older than this are deleted; 0 keeps them")                      \
	X(log_level, T_LEVEL, "info", 0, 0, true, "error, warn, info or debug")             \
	X(log_file, T_STR, "", 0, 0, false, "log file (reopened on SIGHUP); empty: stderr") \
	X(log_format, T_LOGFMT, "text", 0, 0, true,                                        \
	  "text, or json: one object per line (time, level, component, job, message)")    \
	X(access_log, T_BOOL, "true", 0, 0, false,                                        \
	  "a line per HTTP request at info (component access): method, route, status, "  \
	  "bytes, duration, tenant")                                                      \
	X(insecure, T_BOOL, "false", 0, 0, false,                                         \
	  "allow a non-loopback listen address without API tokens or TLS")

typedef struct row {
	const char *name;
	type_t type;
	const char *def;
	int64_t min, max;
	bool reload;
	const char *help;
	size_t off;
	size_t cap; /* for strings */
} row_t;

#define CONF__ROW(n, t, d, lo, hi, rl, h) \
	{#n, t, d, lo, hi, rl, h, offsetof(conf_t, n), sizeof(((conf_t *)0)->n)},
static const row_t rows[] = {CONF_MAP(CONF__ROW)};
#undef CONF__ROW
#define N_ROWS (sizeof(rows) / sizeof(rows[0]))

static int set(conf_t *c, const row_t *r, const char *v, const char *where, sd_error_t *e)
{
	void *p = (char *)c + r->off;
	switch (r->type) {
	case T_STR:
	case T_LEVEL:
	case T_LOGFMT:
		if (strlen(v) >= r->cap)
			return sd_err(e, SD_EUSAGE, "%s: %s is too long", where, r->name);
		if (r->type == T_LEVEL) {
			sd_log_level_t l;
			if (sd_log_level_parse(v, &l))
				return sd_err(e, SD_EUSAGE, "%s: %s must be error, warn, info or debug",
					      where, r->name);
		}
		if (r->type == T_LOGFMT) {
			sd_log_format_t f;
			if (sd_log_format_parse(v, &f))
				return sd_err(e, SD_EUSAGE, "%s: %s must be text or json", where,
					      r->name);
		}
		memcpy(p, v, strlen(v) + 1);
		return 0;
	case T_INT: {
		char *end;
		errno = 0;
		long long x = strtoll(v, &end, 10);
		if (errno || end == v || *end || x < r->min || x > r->max)
			return sd_err(e, SD_EUSAGE, "%s: %s must be an integer in %lld..%lld", where,
				      r->name, (long long)r->min, (long long)r->max);
		*(int64_t *)p = x;
		return 0;
	}
	case T_BOOL:
		if (sd_bool_parse(v, (bool *)p, e))
			return sd_err(e, SD_EUSAGE, "%s: %s must be true or false", where, r->name);
		return 0;
	}
	return 0;
}

void conf_defaults(conf_t *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < N_ROWS; i++) {
		sd_error_t e;
		int rc = set(c, &rows[i], rows[i].def, "default", &e);
		(void)rc;
	}
	/* systemd starts a service in "/", where ./var would be /var: the directory it made
	 * for the service (the first, if StateDirectory= lists several) is the default. */
	const char *state = getenv("STATE_DIRECTORY");
	size_t n = state ? strcspn(state, ":") : 0;
	if (n && n < sizeof(c->data_dir)) {
		memcpy(c->data_dir, state, n);
		c->data_dir[n] = 0;
	}
}

static const row_t *find(const char *name, size_t len)
{
	for (size_t i = 0; i < N_ROWS; i++)
		if (strlen(rows[i].name) == len && strncmp(rows[i].name, name, len) == 0)
			return &rows[i];
	return NULL;
}

/* Reads `name = value` lines; only_reloadable skips the others silently. */
static int read_file(conf_t *c, const char *path, bool only_reloadable, sd_error_t *e)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return sd_err(e, SD_EUSAGE, "%s: %s", path, strerror(errno));
	/* getline, not a fixed buffer: fgets would cut a long line (a comment, say) and
	 * read its rest as a line of its own. */
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int ln = 0, rc = 0;
	while (!rc && (n = getline(&line, &cap, f)) >= 0) {
		ln++;
		char *p = line, where[1100];
		snprintf(where, sizeof(where), "%s:%d", path, ln);
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '#')
			continue;
		if (memchr(line, 0, (size_t)n)) {
			rc = sd_err(e, SD_EUSAGE, "%s: the line holds a NUL byte", where);
			break;
		}
		if (*p == '\n' || !*p)
			continue;
		char *eq = strchr(p, '=');
		if (!eq) {
			rc = sd_err(e, SD_EUSAGE, "%s: expected 'name = value'", where);
			break;
		}
		char *ke = eq;
		while (ke > p && (ke[-1] == ' ' || ke[-1] == '\t'))
			ke--;
		char *v = eq + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		size_t vl = strcspn(v, "\n");
		while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t' || v[vl - 1] == '\r'))
			vl--;
		v[vl] = 0;
		const row_t *r = find(p, (size_t)(ke - p));
		if (!r)
			rc = sd_err(e, SD_EUSAGE, "%s: unknown setting '%.*s'", where, (int)(ke - p), p);
		else if (!only_reloadable || r->reload)
			rc = set(c, r, v, where, e);
	}
	free(line);
	fclose(f);
	return rc;
}

int conf_parse(conf_t *c, int argc, char **argv, bool *print, sd_error_t *e)
{
	*print = false;
	/* The config file first, so flags override it. */
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config") && i + 1 < argc) {
			snprintf(c->config, sizeof(c->config), "%s", argv[i + 1]);
			int rc = read_file(c, c->config, false, e);
			if (rc)
				return rc;
		}
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--print-config")) {
			*print = true;
			continue;
		}
		if (!strcmp(a, "--config")) {
			i++;
			continue;
		}
		if (strncmp(a, "--", 2))
			return sd_err(e, SD_EUSAGE, "unexpected argument '%s'", a);
		char name[64];
		const char *val = strchr(a, '=');
		size_t n = val ? (size_t)(val - a - 2) : strlen(a + 2);
		if (n >= sizeof(name))
			return sd_err(e, SD_EUSAGE, "unknown option '%s'", a);
		for (size_t k = 0; k < n; k++)
			name[k] = a[2 + k] == '-' ? '_' : a[2 + k];
		name[n] = 0;
		const row_t *r = find(name, n);
		if (!r)
			return sd_err(e, SD_EUSAGE, "unknown option '%s' (see --print-config)", a);
		if (r->type == T_BOOL && !val) {
			*(bool *)((char *)c + r->off) = true;
			continue;
		}
		if (!val) {
			if (i + 1 >= argc)
				return sd_err(e, SD_EUSAGE, "option '%s' needs a value", a);
			val = argv[++i];
		} else {
			val++;
		}
		int rc = set(c, r, val, "command line", e);
		if (rc)
			return rc;
	}
	return 0;
}

int conf_reload(conf_t *c, sd_error_t *e)
{
	/* All or nothing: the file is applied to a copy, which replaces the settings only
	 * when every line was good (a reload that fails on line 3 changes nothing). */
	conf_t next = *c;
	int rc = c->config[0] ? read_file(&next, c->config, true, e) : 0;
	if (!rc)
		*c = next;
	return rc;
}

void conf_print(const conf_t *c, bool flags)
{
	for (size_t i = 0; i < N_ROWS; i++) {
		const row_t *r = &rows[i];
		const void *p = (const char *)c + r->off;
		if (flags) {
			char flag[64];
			snprintf(flag, sizeof(flag), "--%s", r->name);
			for (char *f = flag; *f; f++)
				if (*f == '_')
					*f = '-';
			printf("  %-18s %s%s (default: %s)\n", flag, r->help,
			       r->reload ? "; reloaded on SIGHUP" : "", r->def[0] ? r->def : "\"\"");
			continue;
		}
		printf("# %s%s (default: %s)\n", r->help, r->reload ? "; reloaded on SIGHUP" : "",
		       r->def[0] ? r->def : "\"\"");
		switch (r->type) {
		case T_STR:
		case T_LEVEL:
		case T_LOGFMT: printf("%s = %s\n", r->name, (const char *)p); break;
		case T_INT: printf("%s = %lld\n", r->name, (long long)*(const int64_t *)p); break;
		case T_BOOL: printf("%s = %s\n", r->name, *(const bool *)p ? "true" : "false"); break;
		}
	}
}

int conf_listen_split(const char *listen, char *host, size_t cap, int *port, sd_error_t *e)
{
	const char *colon = strrchr(listen, ':');
	if (!colon)
		return sd_err(e, SD_EUSAGE, "listen '%s' must be host:port", listen);
	const char *h = listen;
	size_t hl = (size_t)(colon - listen);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	char *end;
	long p = strtol(colon + 1, &end, 10);
	if (*end || p < 0 || p > 65535 || hl == 0 || hl >= cap)
		return sd_err(e, SD_EUSAGE, "listen '%s' must be host:port with port 0..65535",
			      listen);
	memcpy(host, h, hl);
	host[hl] = 0;
	if (!strcmp(host, "localhost"))
		snprintf(host, cap, "127.0.0.1");
	*port = (int)p;
	return 0;
}
