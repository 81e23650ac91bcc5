/*
 * Fuzz target: the POST /v1/jobs body path without a socket (api_upload over
 * api_mpart), into a real store in a temporary directory.
 *
 * Input: the Content-Type header up to the first '\n', then the body. The body is fed
 * in chunks whose sizes come from the Content-Type's bytes, so chunk edges fall
 * everywhere, including inside delimiters. Blobs are never committed (the store would
 * grow run after run); api_upload_free removes them, which the target also checks.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api_upload.h"
#include "store/store.h"

static store_t *g_store;
static char g_tmp[128];

static void store_once(void)
{
	if (g_store)
		return;
	char dir[96];
	snprintf(dir, sizeof(dir), "%s/sd-fuzz-XXXXXX",
		 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
	sd_error_t e;
	if (!mkdtemp(dir) || store_open(dir, &g_store, &e)) {
		fprintf(stderr, "fuzz_upload: cannot open a store in %s\n", dir);
		abort();
	}
	snprintf(g_tmp, sizeof(g_tmp), "%s/tmp", dir);
}

/* Every upload's temporary files are gone once it is freed. */
static void tmp_is_empty(void)
{
	DIR *d = opendir(g_tmp);
	if (!d)
		abort();
	for (struct dirent *de; (de = readdir(d));)
		if (de->d_name[0] != '.')
			abort();
	closedir(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	store_once();
	const uint8_t *nl = memchr(data, '\n', size < 256 ? size : 256);
	size_t ct_len = nl ? (size_t)(nl - data) : 0;
	char ct[257];
	memcpy(ct, data, ct_len);
	ct[ct_len] = 0;
	const char *body = (const char *)data + (nl ? ct_len + 1 : 0);
	size_t len = size - (size_t)(body - (const char *)data);
	api_upload_t *u;
	sd_error_t e;
	if (api_upload_begin(g_store, 1 << 20, ct[0] & 1, nl ? ct : NULL, &u, &e) == 0) {
		int rc = 0;
		for (size_t off = 0, k = 0; off < len && !rc; k++) {
			size_t step = ct_len ? 1 + (size_t)(unsigned char)ct[k % ct_len] * 7 : len;
			size_t n = step < len - off ? step : len - off;
			rc = api_upload_feed(u, body + off, n, &e);
			off += n;
		}
		api_form_t f;
		if (!rc && api_upload_finish(u, &f, &e) == 0) {
			/* A form that passed holds what the store can show as JSON. */
			if (!f.stage || (f.name && strlen(f.name) > API_UPLOAD_TEXT_MAX))
				abort();
		}
		api_upload_free(u);
	}
	tmp_is_empty();
	return 0;
}
