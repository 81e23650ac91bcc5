/*
 * api_upload: the body of POST /v1/jobs, from bytes to a validated job form, without a
 * socket (the HTTP layer feeds it; the fuzz target and unit tests do the same).
 *
 * File parts (model, config, record) stream into store blobs; text parts (stage,
 * outputs, format, name, record_from, emit_record) are kept, each at most
 * API_UPLOAD_TEXT_MAX bytes. `outputs` may be given several times (a list, as HTTP
 * clients send one), every other part once. Text must be UTF-8 without NUL or control
 * characters, so what a job stores can always be shown as JSON.
 *
 * Memory per upload: the struct, the text parts (<= 6 x 64 KiB) and the blobs' write
 * buffers (store_blob: at most 2 MiB each, one blob filling at a time).
 * Thread safety: an upload belongs to one request (one HTTP thread at a time).
 */
#ifndef API_UPLOAD_H
#define API_UPLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/sd_err.h"
#include "prune/stage.h"
#include "store/store.h"

#define API_UPLOAD_TEXT_MAX 65536

/* The file parts, in the order their input artifacts are listed. */
typedef enum api_file {
	API_FILE_MODEL,
	API_FILE_CONFIG,
	API_FILE_RECORD,
	API_FILE__COUNT
} api_file_t;

typedef struct api_upload api_upload_t;

/* The validated form: strings are owned by the upload (NULL when the part was absent;
 * outputs of repeated parts are joined with ','). */
typedef struct api_form {
	const char *stage, *outputs, *format, *name, *record_from;
	prune_stage_t stage_id;
	bool emit_record;
	bool has_file[API_FILE__COUNT];
} api_form_t;

/*
 * Starts an upload for a body of the given Content-Type (may be NULL); blobs go to s,
 * each at most max_bytes, written around the page cache when uncached
 * (store_blob_uncached). Returns 0 with *out (free with api_upload_free), SD_EUSAGE
 * (not multipart/form-data, bad boundary), SD_ENOMEM.
 */
SD_MUST_CHECK int api_upload_begin(store_t *s, int64_t max_bytes, bool uncached,
				   const char *content_type, api_upload_t **out, sd_error_t *e);

/* Feeds body bytes. Returns 0 or the first error (SD_EUSAGE for a malformed body or a
 * refused part, SD_ETOOBIG, SD_ENOSPACE, SD_EIO, SD_ENOMEM from the blob store); after
 * an error the upload only accepts api_upload_free. */
SD_MUST_CHECK int api_upload_feed(api_upload_t *u, const char *data, size_t n,
				  sd_error_t *e);

/* Whether api_upload_feed of n bytes now would return without waiting for the blob
 * store (store_blob_ready); if not, wake(ud) is called once, from another thread, when
 * it has room again. */
bool api_upload_ready(api_upload_t *u, size_t n, void (*wake)(void *), void *ud);

/*
 * The body is complete: checks the closing boundary and the form (a known stage, the
 * parts that stage needs, outputs as node names, format, emit_record, export's record
 * or record_from). Returns 0 with *f filled, or SD_EUSAGE naming the part. Does not look
 * up record_from (the caller does, in the store).
 */
SD_MUST_CHECK int api_upload_finish(api_upload_t *u, api_form_t *f, sd_error_t *e);

/*
 * Commits the file parts to the blob store and describes them as input artifacts
 * (input_model, input_config, input_record) in in[0..*n). Call after finish. Returns 0,
 * SD_ENOSPACE, SD_EIO, SD_ENOMEM; on failure in[0..*n) are the blobs committed before
 * it, which no job names: the caller releases them (store_blob_release).
 */
SD_MUST_CHECK int api_upload_commit(api_upload_t *u, store_artifact_t in[API_FILE__COUNT],
				    size_t *n, sd_error_t *e);

/* Frees the upload; blobs not committed are removed. Safe on NULL. */
void api_upload_free(api_upload_t *u);

#endif
