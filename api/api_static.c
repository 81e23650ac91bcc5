/*
 * api_static: the dashboard (web/) served by the daemon: GET / and GET /assets/{name};
 * and GET /openapi.yaml.
 *
 * The files are compiled into the binary (api/embed.py --assets and --file,
 * api_static.h), so an installed daemon needs no file beside it and always serves the
 * page and the API document matching its own API. The page and openapi.yaml keep their
 * paths across builds, so they are answered with no-cache and an ETag (a reload or a
 * client's refetch costs a 304); every asset's path carries a hash of its bytes, so
 * assets are cached for a year as immutable, and a new build names new paths instead
 * of fighting old caches.
 *
 * Headers for a page on the web: a Content-Security-Policy that allows only this
 * origin's scripts, styles, images and fetches (no inline script or style, no eval,
 * no framing: frame-ancestors 'none'), and no referrer. X-Content-Type-Options:
 * nosniff is on every answer of the daemon (api_reply.c). The bytes are static, so
 * responses point at them without a copy. Any HTTP thread; no state.
 */
#include "api/api_int.h"
#include "api/api_static.h"

#include <string.h>

/* The page loads only what this origin serves: its script, its stylesheet, its icon,
 * and the API through fetch(). */
#define PAGE_CSP                                                                          \
	"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "       \
	"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"

static int send_asset(api_t *a, req_t *r, struct MHD_Connection *c, const api_asset_t *as)
{
	bool fresh = api_etag_match(api__header(c, "If-None-Match"), as->etag);
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		fresh ? 0 : as->len, fresh ? NULL : (void *)as->data, MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	if (!fresh)
		MHD_add_response_header(resp, "Content-Type", as->type);
	MHD_add_response_header(resp, "ETag", as->etag);
	MHD_add_response_header(resp, "Cache-Control", as->immutable
				? "public, max-age=31536000, immutable" : "no-cache");
	MHD_add_response_header(resp, "Content-Security-Policy", PAGE_CSP);
	MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
	return api__queue(a, r, c, fresh ? 304 : 200, resp, fresh ? 0 : as->len);
}

int api__h_page(api_t *a, req_t *r, struct MHD_Connection *c)
{
	return send_asset(a, r, c, &api__assets[0]);
}

int api__h_openapi(api_t *a, req_t *r, struct MHD_Connection *c)
{
	return send_asset(a, r, c, &api__openapi);
}

int api__h_asset(api_t *a, req_t *r, struct MHD_Connection *c)
{
	for (size_t i = 1; i < api__n_assets; i++)
		if (!strcmp(api__assets[i].path + strlen("/assets/"), r->params[0]))
			return send_asset(a, r, c, &api__assets[i]);
	/* An old page's asset after an upgrade lands here: the page itself is no-cache, so
	 * a reload fetches the names this build serves. */
	return api__fail(a, r, c, SD_ENOTFOUND, "no asset '%s' (reload the page)", r->params[0]);
}
