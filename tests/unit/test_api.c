/*
 * Unit tests of the API's socket-free parts: the multipart parser (every chunking of a
 * body must parse the same), the upload form rules, and the header and path parsers.
 */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api_mpart.h"
#include "api/api_parse.h"
#include "api/api_upload.h"
#include "api/api_vmap.h"
#include "common/sd_err.h"
#include "store/store.h"
#include "testutil.h"

/* ---- multipart: a recorder of what the parser reports ---- */

typedef struct rec {
	char log[8192];
	size_t len;
} rec_t;

static void logf_(rec_t *r, const char *s, size_t n)
{
	ck_assert(r->len + n < sizeof(r->log));
	memcpy(r->log + r->len, s, n);
	r->len += n;
	r->log[r->len] = 0;
}

static int on_begin(void *ud, const char *name, const char *filename, sd_error_t *e)
{
	(void)e;
	char buf[600];
	int n = snprintf(buf, sizeof(buf), "[%s|%s]", name, filename ? filename : "-");
	logf_(ud, buf, (size_t)n);
	return 0;
}

static int on_data(void *ud, const char *d, size_t n, sd_error_t *e)
{
	(void)e;
	logf_(ud, d, n);
	return 0;
}

static int on_end(void *ud, sd_error_t *e)
{
	(void)e;
	logf_(ud, "<end>", 5);
	return 0;
}

static const api_mpart_cb_t cbs = {on_begin, on_data, on_end};

#define CT "multipart/form-data; boundary=XyZ"

/* Parses body in chunks of `step` bytes (0: whole); returns the parse's result. */
static int parse(const char *ct, const char *body, size_t len, size_t step, rec_t *r,
		 sd_error_t *e)
{
	api_mpart_t m;
	memset(r, 0, sizeof(*r));
	int rc = api_mpart_init(&m, ct, &cbs, r, e);
	if (rc)
		return rc;
	for (size_t off = 0; off < len;) {
		size_t n = step && step < len - off ? step : len - off;
		if ((rc = api_mpart_feed(&m, body + off, n, e)))
			return rc;
		off += n;
	}
	return api_mpart_finish(&m, e);
}

START_TEST(mpart_every_chunking)
{
	/* A part whose bytes hold pieces of the delimiter, CRs and a false boundary. */
	static const char body[] =
		"preamble text\r\n"
		"--XyZ\r\n"
		"Content-Disposition: form-data; name=\"stage\"\r\n\r\n"
		"check\r\n"
		"--XyZ  \r\n"
		"content-disposition: form-data; filename=\"m.pb\"; name=model\r\n"
		"Content-Type: application/octet-stream\r\n\r\n"
		"a\r\n--Xy\r\r\n-\r\n--XyA\rb\r\n"
		"--XyZ--\r\nepilogue";
	static const char want[] = "[stage|-]check<end>[model|m.pb]a\r\n--Xy\r\r\n-\r\n--XyA\rb<end>";
	sd_error_t e;
	rec_t r;
	for (size_t step = 0; step <= 40; step++) {
		ck_assert_msg(parse(CT, body, sizeof(body) - 1, step, &r, &e) == 0,
			      "step %zu: %s", step, e.msg);
		ck_assert_msg(!strcmp(r.log, want), "step %zu: %s", step, r.log);
	}
	/* Without a preamble the body opens with the delimiter minus its CRLF. */
	static const char bare[] = "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--XyZ--";
	ck_assert_int_eq(parse(CT, bare, sizeof(bare) - 1, 1, &r, &e), 0);
	ck_assert_str_eq(r.log, "[a|-]<end>");
}
END_TEST

START_TEST(mpart_refusals)
{
	static const struct {
		const char *ct, *body, *why;
	} bad[] = {
		{CT, "--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n", "no name"},
		{CT, "--XyZ\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nx\r\n--XyZ--", "no name"},
		{CT, "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--", "no Content-Disposition"},
		{CT, "--XyZ\r\n\r\nx\r\n--XyZ--", "no headers"},
		{CT, "--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--XyZ--", "not form-data"},
		{CT, "--XyZ\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--XyZ--", "malformed"},
		{CT, "--XyZ\r\nContent-Disposition: form-data; name=\"a\x01\"\r\n\r\nx\r\n--XyZ--",
		 "control character"},
		{CT, "--XyZ\r\nbroken header\r\n\r\nx\r\n--XyZ--", "without a name"},
		{CT, "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx", "closing boundary"},
		{CT, "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ-x", "single '-'"},
		{CT, "--XyZx\r\n", "line end"},
		{CT, "", "closing boundary"},
		{CT, "no delimiter at all", "closing boundary"},
		{"multipart/form-data", "", "no boundary"},
		{"multipart/form-data; boundary=", "", "1 to 70"},
		{"multipart/form-data; boundary=\"a\"b", "", NULL},
		{"multipart/form-data; boundary=a\x01", "", "does not allow"},
		{"application/json", "{}", "must be multipart/form-data"},
		{NULL, "x", "must be multipart/form-data"},
		{"multipart/form-datax; boundary=a", "", "must be multipart/form-data"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sd_error_t e;
		rec_t r;
		int rc = parse(bad[i].ct, bad[i].body, strlen(bad[i].body), 3, &r, &e);
		if (!bad[i].why)
			continue; /* only must not crash */
		ck_assert_msg(rc == SD_EUSAGE, "case %zu accepted", i);
		ck_assert_msg(strstr(e.msg, bad[i].why), "case %zu: %s", i, e.msg);
	}
	/* Long boundaries and header blocks, many parts. */
	char ct[160], body[20000];
	snprintf(ct, sizeof(ct), "multipart/form-data; boundary=%071d", 0);
	sd_error_t e;
	rec_t r;
	ck_assert_int_eq(parse(ct, "", 0, 0, &r, &e), SD_EUSAGE);
	size_t n = (size_t)snprintf(body, sizeof(body), "--XyZ\r\nX-Pad: ");
	memset(body + n, 'p', 9000);
	n += 9000;
	n += (size_t)snprintf(body + n, sizeof(body) - n, "\r\n\r\nx\r\n--XyZ--");
	ck_assert_int_eq(parse(CT, body, n, 1000, &r, &e), SD_EUSAGE);
	ck_assert_msg(strstr(e.msg, "longer than 8192"), "%s", e.msg);
	n = 0;
	for (int i = 0; i < 33; i++)
		n += (size_t)snprintf(body + n, sizeof(body) - n,
				      "--XyZ\r\nContent-Disposition: form-data; name=p%d\r\n\r\nv\r\n", i);
	n += (size_t)snprintf(body + n, sizeof(body) - n, "--XyZ--");
	ck_assert_int_eq(parse(CT, body, n, 0, &r, &e), SD_EUSAGE);
	ck_assert_msg(strstr(e.msg, "more than 32"), "%s", e.msg);
}
END_TEST

/* ---- uploads against a real store ---- */

static char g_dir[64];
static store_t *g_s;

static void setup(void)
{
	tu_mkdtemp(g_dir, sizeof(g_dir), "api-test");
	sd_error_t e;
	ck_assert_msg(store_open(g_dir, &g_s, &e) == 0, "%s", e.msg);
}

static void teardown(void)
{
	store_close(g_s);
	ck_assert_int_eq(tu_rm_rf(g_dir), 0);
}

/* Builds a body from name/value pairs (a name starting with '@' is a file part). */
static size_t form(char *out, size_t cap, const char *const *kv, size_t n)
{
	size_t len = 0;
	for (size_t i = 0; i + 1 < n; i += 2) {
		bool file = kv[i][0] == '@';
		len += (size_t)snprintf(out + len, cap - len,
					"--XyZ\r\nContent-Disposition: form-data; name=\"%s\"%s\r\n\r\n",
					kv[i] + file, file ? "; filename=\"f\"" : "");
		size_t vl = strlen(kv[i + 1]);
		memcpy(out + len, kv[i + 1], vl);
		len += vl;
		len += (size_t)snprintf(out + len, cap - len, "\r\n");
	}
	len += (size_t)snprintf(out + len, cap - len, "--XyZ--\r\n");
	return len;
}

/* Runs an upload of kv; returns finish's (or feed's) result with *f filled. */
static int upload(const char *const *kv, size_t n, api_upload_t **u, api_form_t *f,
		  sd_error_t *e)
{
	static char body[200000];
	size_t len = form(body, sizeof(body), kv, n);
	ck_assert_int_eq(api_upload_begin(g_s, 1 << 20, false, CT, u, e), 0);
	int rc = api_upload_feed(*u, body, len, e);
	return rc ? rc : api_upload_finish(*u, f, e);
}

START_TEST(upload_form_rules)
{
	api_upload_t *u;
	api_form_t f;
	sd_error_t e;
	const char *ok[] = {"stage", "prune", "@model", "M", "@config", "C", "outputs", "a",
			    "outputs", "b/c:1", "name", "caf\xc3\xa9", "emit_record", "1"};
	ck_assert_msg(upload(ok, 14, &u, &f, &e) == 0, "%s", e.msg);
	ck_assert_str_eq(f.stage, "prune");
	ck_assert_str_eq(f.outputs, "a,b/c:1");
	ck_assert_str_eq(f.name, "caf\xc3\xa9");
	ck_assert(f.emit_record && f.has_file[API_FILE_MODEL] && f.has_file[API_FILE_CONFIG]);
	ck_assert_int_eq(f.stage_id, PRUNE_STAGE_PRUNE);
	ck_assert_ptr_null(f.format);
	store_artifact_t in[API_FILE__COUNT];
	size_t n;
	ck_assert_int_eq(api_upload_commit(u, in, &n, &e), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(in[0].name, "input_model");
	ck_assert_int_eq(in[0].size, 1);
	api_upload_free(u);
	/* The CLI's format names and booleans mean the same here. */
	const char *alias[] = {"stage", "check", "@model", "M", "format", "pb", "emit_record", "no"};
	ck_assert_msg(upload(alias, 8, &u, &f, &e) == 0, "%s", e.msg);
	ck_assert_str_eq(f.format, "graphdef");
	ck_assert(!f.emit_record);
	api_upload_free(u);

	static const struct {
		const char *kv[8];
		size_t n;
		const char *why;
	} bad[] = {
		{{"stage", "check", "stage", "check", "@model", "M"}, 6, "'stage' given twice"},
		{{"stage", "check", "@model", "M", "@model", "M"}, 6, "'model' given twice"},
		{{"stage", "check", "@model", "M", "name", "a", "name", "b"}, 8, "'name' given twice"},
		{{"stage", "prune", "@model", "M", "@config", "C", "outputs", ",,,"}, 8, "is empty"},
		{{"stage", "prune", "@model", "M", "@config", "C", "outputs", "a,,b"}, 8, "output 2 is empty"},
		{{"stage", "prune", "@model", "M", "@config", "C", "outputs", " "}, 8, "output 1 is empty"},
		{{"stage", "prune", "@model", "M", "@config", "C", "outputs", "a b"}, 8, "byte 0x20"},
		{{"stage", "prune", "@model", "M", "@config", "C", "outputs", "a:"}, 8, "output index"},
		{{"stage", "check", "@model", "M", "name", "\xff\xfe"}, 6, "not valid UTF-8"},
		{{"stage", "check", "@model", "M", "name", "a\tb"}, 6, "control character"},
		{{"stage", "bogus", "@model", "M"}, 4, "unknown stage"},
		{{"@model", "M"}, 2, "missing part 'stage'"},
		{{"stage", "check"}, 2, "missing part 'model'"},
		{{"stage", "insert", "@model", "M", "outputs", "a"}, 6, "needs a config"},
		{{"stage", "export", "@model", "M", "outputs", "a"}, 6, "exactly one"},
		{{"stage", "check", "@model", "M", "format", "onnx"}, 6, "unknown model format"},
		{{"stage", "check", "@model", "M", "emit_record", "maybe"}, 6, "true or false"},
		{{"stage", "check", "@model", "M", "emit_record", "true"}, 6, "check does not"},
		{{"stage", "check", "@model", "M", "bogus", "x"}, 6, "unknown part 'bogus'"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = upload(bad[i].kv, bad[i].n, &u, &f, &e);
		ck_assert_msg(rc == SD_EUSAGE, "case %zu: rc %d", i, rc);
		ck_assert_msg(strstr(e.msg, bad[i].why), "case %zu: %s", i, e.msg);
		api_upload_free(u);
	}
	/* A NUL byte in a text part (the form builder cannot write one). */
	static const char nul[] = "--XyZ\r\nContent-Disposition: form-data; name=stage\r\n\r\nche\0ck"
				  "\r\n--XyZ--";
	ck_assert_int_eq(api_upload_begin(g_s, 1 << 20, true, CT, &u, &e), 0);
	ck_assert_int_eq(api_upload_feed(u, nul, sizeof(nul) - 1, &e), SD_EUSAGE);
	ck_assert_msg(strstr(e.msg, "NUL"), "%s", e.msg);
	api_upload_free(u);
	/* Text parts are capped; file parts are capped by the blob limit. */
	static char big[70000];
	memset(big, 'n', sizeof(big) - 1);
	const char *longname[] = {"stage", "check", "@model", "M", "name", big};
	ck_assert_int_eq(upload(longname, 6, &u, &f, &e), SD_EUSAGE);
	ck_assert_msg(strstr(e.msg, "longer than 65536"), "%s", e.msg);
	api_upload_free(u);
	/* A list part (outputs) repeated: the cap is on the joined value, so a full first
	 * part and a second one (which used to pass the cap and grow without a bound)
	 * are refused; 65535 bytes and one more part fill it exactly. */
	for (size_t i = 1; i < sizeof(big); i += 2)
		big[i] = ','; /* "n,n,n...": each output is short */
	big[65536] = 0;
	const char *twice[] = {"stage", "prune", "@model", "M", "@config", "C",
			       "outputs", big, "outputs", "o"};
	ck_assert_int_eq(upload(twice, 10, &u, &f, &e), SD_EUSAGE);
	ck_assert_msg(strstr(e.msg, "parts 'outputs' are longer than 65536 bytes together"), "%s",
		      e.msg);
	api_upload_free(u);
	big[65535] = 0;
	twice[9] = "";
	ck_assert_int_eq(upload(twice, 10, &u, &f, &e), SD_EUSAGE);
	ck_assert_msg(strstr(e.msg, "output 32769 is empty"), "%s", e.msg);
	api_upload_free(u);
	twice[9] = "o";
	ck_assert_int_eq(upload(twice, 10, &u, &f, &e), SD_EUSAGE);
	ck_assert_msg(strstr(e.msg, "'outputs' is longer than 65536"), "%s", e.msg);
	api_upload_free(u);
	ck_assert_int_eq(api_upload_begin(g_s, 10, false, CT, &u, &e), 0);
	static const char toolong[] = "--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\n"
				      "0123456789ABCDEF\r\n--XyZ--";
	ck_assert_int_eq(api_upload_feed(u, toolong, sizeof(toolong) - 1, &e), SD_ETOOBIG);
	api_upload_free(u);
	/* Every abandoned upload left nothing in tmp/. */
	char tmp[96];
	snprintf(tmp, sizeof(tmp), "%s/tmp", g_dir);
	DIR *d = opendir(tmp);
	ck_assert(d != NULL);
	int entries = 0;
	for (struct dirent *de; (de = readdir(d));)
		entries += de->d_name[0] != '.';
	closedir(d);
	ck_assert_int_eq(entries, 0);
}
END_TEST

/* ---- header and path parsers ---- */

START_TEST(parse_headers)
{
	/* Against a 10-byte file: 1 and the range, 0 for the whole file, -1 for a 416. */
	static const struct {
		const char *h;
		int rc;
		int64_t from, to;
	} ranges[] = {
		{NULL, 0, 0, 0},
		{"bytes=2-5", 1, 2, 5},
		{"bytes=2-", 1, 2, 9},
		{"bytes=-3", 1, 7, 9},
		{"bytes=0-99", 1, 0, 9},
		/* numbers past INT64_MAX are ranges past the end, clamped like any other */
		{"bytes=3-99999999999999999999", 1, 3, 9},
		{"bytes=-99999999999999999999", 1, 0, 9},
		{"bytes= 1-2 ", 1, 1, 2},
		{"bytes=\t4- ", 1, 4, 9},
		/* ignored (RFC 9110 14.2) */
		{"items=0-1", 0, 0, 0},
		{"bytes=0-0,2-3", 0, 0, 0},
		{"bytes=abc", -1, 0, 0},
		{"bytes=5-1", -1, 0, 0},
		{"bytes=-0", -1, 0, 0},
		{"bytes=10-", -1, 0, 0},
		{"bytes=", -1, 0, 0},
		{"bytes=-", -1, 0, 0},
		{"bytes=+1-2", -1, 0, 0},
		{"bytes=99999999999999999999-", -1, 0, 0},
		{"bytes=1-2x", -1, 0, 0},
		{"bytes=1 -2", -1, 0, 0},
		{"bytes=--1", -1, 0, 0},
		{"bytes=1-2-3", -1, 0, 0},
	};
	for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
		int64_t a = -7, b = -7;
		int rc = api_range_parse(ranges[i].h, 10, &a, &b);
		const char *h = ranges[i].h ? ranges[i].h : "(no header)";
		ck_assert_msg(rc == ranges[i].rc, "%s: %d", h, rc);
		ck_assert_msg(rc != 1 || (a == ranges[i].from && b == ranges[i].to),
			      "%s: %lld-%lld", h, (long long)a, (long long)b);
	}

	ck_assert(api_etag_match("\"x\"", "\"x\""));
	ck_assert(api_etag_match("\"a\", W/\"x\"", "\"x\""));
	ck_assert(api_etag_match("*", "\"x\""));
	ck_assert(!api_etag_match("\"xy\"", "\"x\""));
	ck_assert(!api_etag_match(NULL, "\"x\""));
	ck_assert(!api_etag_match("W/,W/", "\"x\""));

	ck_assert(api_if_range_holds(NULL, "\"x\""));
	ck_assert(api_if_range_holds("\"x\"", "\"x\""));
	ck_assert(api_if_range_holds(" \"x\"\t", "\"x\""));
	ck_assert(!api_if_range_holds("W/\"x\"", "\"x\""));
	ck_assert(!api_if_range_holds("\"y\"", "\"x\""));
	ck_assert(!api_if_range_holds("\"x\"x", "\"x\""));
	ck_assert(!api_if_range_holds("", "\"x\""));
	ck_assert(!api_if_range_holds("Wed, 21 Oct 2015 07:28:00 GMT", "\"x\""));

	ck_assert_str_eq(api_bearer_token("Bearer abc"), "abc");
	ck_assert_str_eq(api_bearer_token("bearer  abc=="), "abc==");
	ck_assert_ptr_null(api_bearer_token("Bearer "));
	ck_assert_ptr_null(api_bearer_token("Basic abc"));
	ck_assert_ptr_null(api_bearer_token("Bearer a b"));
	ck_assert_ptr_null(api_bearer_token("Bearer \xc3\xa9"));
	ck_assert_ptr_null(api_bearer_token(NULL));
	char longtok[700] = "Bearer ";
	memset(longtok + 7, 'a', 600);
	ck_assert_ptr_null(api_bearer_token(longtok));

	char p[2][API_PARAM_MAX];
	ck_assert(api_route_match("/v1/jobs/{id}/artifacts/{name}", "/v1/jobs/J/artifacts/model",
				  26, p));
	ck_assert_str_eq(p[0], "J");
	ck_assert_str_eq(p[1], "model");
	ck_assert(!api_route_match("/v1/jobs/{id}", "/v1/jobs/J\0x", 12, p));
	ck_assert(!api_route_match("/v1/jobs/{id}", "/v1/jobs/", 9, p));
	ck_assert(!api_route_match("/v1/jobs/{id}", "/v1/jobs/a/b", 12, p));
	ck_assert(!api_route_match("/v1/jobs", "/v1/jobsx", 9, p));
	char longpath[300] = "/v1/jobs/";
	memset(longpath + 9, 'a', 200);
	ck_assert(!api_route_match("/v1/jobs/{id}", longpath, strlen(longpath), p));
}
END_TEST

/* The polls' version map: what it answers must be what the store would (a version, or
 * not found for another tenant's job), and what it does not know it must say so. */
START_TEST(vmap_answers_as_the_store)
{
	sd_error_t e;
	api_vmap_t *m;
	ck_assert_int_eq(api_vmap_new(&m, &e), 0);
	int64_t v = -1;
	ck_assert_int_eq(api_vmap_get(m, "01J", NULL, &v), 0);
	api_vmap_set(m, "01J", "acme", 3);
	ck_assert_int_eq(api_vmap_get(m, "01J", NULL, &v), 1);
	ck_assert_int_eq(v, 3);
	ck_assert_int_eq(api_vmap_get(m, "01J", "acme", &v), 1);
	ck_assert_int_eq(api_vmap_get(m, "01J", "acm", &v), -1);
	ck_assert_int_eq(api_vmap_get(m, "01J", "", &v), -1);
	/* a job with no tenant is seen only where no auth is in force */
	api_vmap_set(m, "01K", NULL, 7);
	ck_assert_int_eq(api_vmap_get(m, "01K", "", &v), -1);
	ck_assert_int_eq(api_vmap_get(m, "01K", NULL, &v), 1);
	ck_assert_int_eq(v, 7);
	/* a later version replaces; a different tenant (never so for a job) too */
	api_vmap_set(m, "01J", "acme", 9);
	api_vmap_set(m, "01K", "other-tenant", 10);
	ck_assert_int_eq(api_vmap_get(m, "01J", "acme", &v), 1);
	ck_assert_int_eq(v, 9);
	ck_assert_int_eq(api_vmap_get(m, "01K", "other-tenant", &v), 1);
	ck_assert_int_eq(v, 10);
	ck_assert_uint_eq(api_vmap_size(m), 2);
	api_vmap_drop(m, "01J");
	api_vmap_drop(m, "never-there");
	ck_assert_int_eq(api_vmap_get(m, "01J", NULL, &v), 0);
	ck_assert_uint_eq(api_vmap_size(m), 1);
	/* an id no job has is not kept (ids are 26 characters) */
	char longid[200];
	memset(longid, 'a', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = 0;
	api_vmap_set(m, longid, NULL, 1);
	ck_assert_int_eq(api_vmap_get(m, longid, NULL, &v), 0);
	/* many: the buckets grow and every entry stays findable; then the cap holds */
	char id[32];
	for (int i = 0; i < API_VMAP_MAX + 100; i++) {
		snprintf(id, sizeof(id), "J%08d", i);
		api_vmap_set(m, id, i % 2 ? "t" : NULL, i);
	}
	ck_assert_uint_eq(api_vmap_size(m), API_VMAP_MAX);
	for (int i = 0; i < API_VMAP_MAX + 100; i += 997) {
		snprintf(id, sizeof(id), "J%08d", i);
		int want = i < API_VMAP_MAX - 1 ? 1 : 0;
		ck_assert_int_eq(api_vmap_get(m, id, i % 2 ? "t" : NULL, &v), want);
		if (want)
			ck_assert_int_eq(v, i);
	}
	/* full, an existing entry still updates, so it never goes stale */
	api_vmap_set(m, "J00000005", "t", 99);
	ck_assert_int_eq(api_vmap_get(m, "J00000005", "t", &v), 1);
	ck_assert_int_eq(v, 99);
	api_vmap_clear(m);
	ck_assert_uint_eq(api_vmap_size(m), 0);
	ck_assert_int_eq(api_vmap_get(m, "01K", NULL, &v), 0);
	api_vmap_set(m, "01K", NULL, 11);
	ck_assert_int_eq(api_vmap_get(m, "01K", NULL, &v), 1);
	api_vmap_free(m);
	api_vmap_free(NULL);
}
END_TEST

int main(void)
{
	const tu_case_t cases[] = {
		{"parsers", TU_TESTS(mpart_every_chunking, mpart_refusals, parse_headers)},
		{"vmap", TU_TESTS(vmap_answers_as_the_store)},
		{"uploads", TU_TESTS(upload_form_rules), .setup = setup, .teardown = teardown},
		{NULL},
	};
	return tu_main("api", cases);
}
