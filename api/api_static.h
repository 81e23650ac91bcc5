/*
 * api_static: the dashboard's files (web/) and openapi.yaml, compiled into the binary by
 * api/embed.py (`--assets`, `--file`) and served by api_static.c. Only the generated
 * files and api_static.c include this header.
 */
#ifndef API_STATIC_H
#define API_STATIC_H

#include <stdbool.h>
#include <stddef.h>

typedef struct api_asset {
	const char *path;          /* "/", "/openapi.yaml" or "/assets/<stem>.<hash>.<ext>" */
	const char *type;          /* Content-Type */
	const char *etag;          /* quoted: a prefix of the bytes' SHA-256 */
	const unsigned char *data; /* static, NUL after the last byte */
	size_t len;
	bool immutable;            /* the path carries its content's hash */
} api_asset_t;

/* The page first, then the assets it names (generated: web_assets.c). */
extern const api_asset_t api__assets[];
extern const size_t api__n_assets;

/* openapi.yaml at "/openapi.yaml" (generated: openapi_spec.c). */
extern const api_asset_t api__openapi;

#endif
